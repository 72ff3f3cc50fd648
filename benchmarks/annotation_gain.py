"""How well the label review finds wrong pseudo-labels, and what fixing them buys: real GlaS, a simulated
pathologist.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/annotation_gain.py rank      # ranking + precision curve
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/annotation_gain.py gain --budgets 3 --seeds 0 1 2
    ... gain --budgets 3 --seeds 0 --kinds ranked --verified-weight W   # W = 1, 4, 10, 25: how the weight was chosen
    python benchmarks/annotation_gain.py rescore     # earlier rows scored on validation too (kept checkpoints)
    python benchmarks/annotation_gain.py table                                # the gain rows, mean ± sd, markdown
    python benchmarks/annotation_gain.py plot                                        # the PNGs in docs/

Runs on the ablation project (``benchmarks/ablation.py stage1``, its pseudo-masks after self-training, its CE
model and its validation split, on which the ranking is calibrated), or on another project with a validation split
(``OEEM_ABLATION_PROJECT``; ``rank --model current`` reads that project's own model; ``OEEM_ANNOTATION_JSON``
names the JSON). ``rank`` ranks the training images' regions
with the tool (``oeem regions``) and measures, with the gland masks playing the pathologist, the share of wrong
pseudo-labels inside the top regions at several pixel budgets - against the same areas placed at random.
``gain`` lets the simulated pathologist fix the top regions up to a budget (painting the truth inside them,
pathologist-verified as the plugin stores it) or the same number of pixels at random places, retrains the `cpu`
preset's segmentation with the settings and seed of a baseline run (``--baseline``, default
``abl-ce-2k-r1-sSEED``) - the corrected pixels weighted by ``--verified-weight`` (default: the cpu preset's) -
and scores validation (never corrected: how the weight was chosen) and testA. Rows accumulate in
``benchmarks/results/annotation_gain.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, glas_root, machine, print_table, pyplot

from pipeline.config import preset
from pipeline.progress import run
from pipeline.store import ProjectStore, atomic_write_json

PROJECT = Path(os.environ.get("OEEM_ABLATION_PROJECT", RESULTS / "ablation.oeem.zarr"))
OUT = Path(os.environ.get("OEEM_ANNOTATION_JSON", RESULTS / "annotation_gain.json"))
DOCS = Path(__file__).resolve().parent.parent / "docs"
BUDGETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0)  # percent of the training pixels


def load() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"machine": machine(), "rank": None, "gain": []}


def save(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, data)


# How the loss was divided: "pixels" (every valid pixel counts once, as pipeline/stages/losses.py does) or "weighted" (a
# verified pixel counted as verified_weight pixels: a variant measured over 3 seeds and not kept - validation gains
# were lower on average, README); rows without the field used "pixels".
DIVISOR = "pixels"


def divisor(row: dict) -> str:
    return row.get("divisor", "pixels")


def gain_key(row: dict) -> tuple:
    """One row per budget, seed, arm, verified weight (rows from before the weight existed used 1) and divisor."""
    return row["budget_pct"], row["seed"], row["kind"], row.get("verified_weight", 1.0), divisor(row)


def gain_run_name(kind: str, budget: float, seed: int, weight: float, div: str = DIVISOR) -> str:
    """The retrained model's checkpoint name (weight 1, the rows from before the weight existed, has no suffix)."""
    return (f"gain-{kind}-b{budget:g}-s{seed}" + (f"-w{weight:g}" if weight != 1 else "")
            + ("-norm" if div == "weighted" else ""))


def clear_corrections(store: ProjectStore) -> None:
    for n in store.names():
        while store.undo_correction(n):
            pass


def top_masks(store: ProjectStore, budget_px: int) -> dict[str, np.ndarray]:
    """The best-ranked regions, whole, until they cover ``budget_px`` pixels."""
    from pipeline.review.regions import ranked_regions

    masks: dict[str, np.ndarray] = {}
    ids: dict[str, list[int]] = {}
    total = 0
    for r in ranked_regions(store):
        if total >= budget_px:
            break
        ids.setdefault(r.image, []).append(r.id)
        total += r.area
    for n, chosen in ids.items():
        masks[n] = np.isin(store.read(n, "regions"), chosen)
    return masks


def random_masks(store: ProjectStore, areas: list[int], seed: int) -> dict[str, np.ndarray]:
    """Squares of the given areas at random places of random training images (the control)."""
    rng = np.random.default_rng(seed)
    names = store.names("train")
    masks: dict[str, np.ndarray] = {}
    for area in areas:
        n = names[rng.integers(len(names))]
        h, w = store.shape(n)
        side = min(int(round(np.sqrt(area))), h, w)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        masks.setdefault(n, np.zeros((h, w), bool))[y:y + side, x:x + side] = True
    return masks


def wrong_inside(store: ProjectStore, masks: dict[str, np.ndarray]) -> tuple[int, int]:
    px = wrong = 0
    for n, m in masks.items():
        err = store.read(n, "pseudo") != store.mask(n)
        px += int(m.sum())
        wrong += int((m & err).sum())
    return px, wrong


def cmd_rank(args) -> None:
    from pipeline.review.regions import rank_label_errors, ranked_regions

    glas_root()
    store = ProjectStore.open(PROJECT)
    clear_corrections(store)
    cfg = preset("cpu")
    from pipeline.stages.infer import predict

    # the prediction the ranking reads is the model's a user has after `oeem run` (on the ablation project: the
    # round-1 CE run; on an end-to-end project: its own final model, --model current)
    run(predict(store, cfg.inference, None, "cpu", None if args.model == "current" else args.model))
    t0 = time.perf_counter()
    ranking = run(rank_label_errors(store, cfg, "train"))
    rank_s = time.perf_counter() - t0
    train = store.names("train")
    train_px = sum(int(np.prod(store.shape(n))) for n in train)
    wrong_px = sum(int((store.read(n, "pseudo") != store.mask(n)).sum()) for n in train)
    rows = []
    for top in (20, 50, 100):
        regions = ranked_regions(store, top)
        masks: dict[str, np.ndarray] = {}
        for r in regions:
            m = store.read(r.image, "regions") == r.id
            masks[r.image] = masks.get(r.image, np.zeros_like(m)) | m
        px, wrong = wrong_inside(store, masks)
        rpx, rwrong = wrong_inside(store, random_masks(store, [r.area for r in regions], args.seed))
        rows.append({"top": top, "pixels": px, "share": px / train_px, "precision": wrong / max(px, 1),
                     "random_precision": rwrong / max(rpx, 1)})
    curve = []
    for b in BUDGETS:
        masks = top_masks(store, int(b / 100 * train_px))
        px, wrong = wrong_inside(store, masks)
        areas = [int(m.sum()) for m in masks.values()]
        rpx, rwrong = wrong_inside(store, random_masks(store, areas, args.seed))
        curve.append({"budget_pct": b, "pixels": px, "precision": wrong / max(px, 1),
                      "random_precision": rwrong / max(rpx, 1), "wrong_fixed": wrong, "random_wrong_fixed": rwrong})
    data = load()
    data["rank"] = {"seconds": rank_s, "regions": len(ranking["regions"]), "calibration": ranking["calibration"],
                    "train_pixels": train_px, "pseudo_error_rate": wrong_px / train_px, "top": rows, "curve": curve}
    save(data)
    print(f"ranked {len(ranking['regions'])} regions in {rank_s / 60:.1f} min; pseudo-label error rate "
          f"{100 * wrong_px / train_px:.1f} % of the training pixels\n")
    print_table([(r["top"], f"{100 * r['share']:.2f} %", f"{100 * r['precision']:.1f} %",
                  f"{100 * r['random_precision']:.1f} %") for r in rows],
                ("top regions", "of train pixels", "wrong labels inside", "same areas at random"))
    print()
    print_table([(f"{c['budget_pct']} % ({100 * c['pixels'] / train_px:.2f} %)", f"{100 * c['precision']:.1f} %", f"{100 * c['random_precision']:.1f} %",
                  f"{c['wrong_fixed']:,}", f"{c['random_wrong_fixed']:,}") for c in curve],
                ("budget (reached) of train px", "precision ranked", "precision random", "wrong fixed ranked",
                 "wrong fixed random"))


def cmd_gain(args) -> None:
    from ablation import scores

    from pipeline.config import SegConfig, from_dict
    from pipeline.review.regions import load_ranking
    from pipeline.stages.models import safe_torch_load
    from pipeline.stages.segment import train_segmenter

    glas_root()
    store = ProjectStore.open(PROJECT)
    if load_ranking(store) is None:
        raise SystemExit("no ranking in the project: run `annotation_gain.py rank` first")
    cfg = preset("cpu")
    cfg.inference.precision = "fp32"  # as the fp32 baselines and the first rows were scored
    train_px = sum(int(np.prod(store.shape(n))) for n in store.names("train"))
    data = load()
    for budget in args.budgets:
        ranked = top_masks(store, int(budget / 100 * train_px))
        areas = [int(m.sum()) for m in ranked.values()]
        for seed in args.seeds:
            base_name = args.baseline.format(seed=seed)
            if not store.checkpoint_path(f"segmentation-{base_name}").is_file():
                raise SystemExit(f"no baseline {base_name}: train it with benchmarks/ablation.py stage2 first")
            base = scores(store, base_name, cfg.inference, splits=("val", "test"))
            # retrain exactly as the baseline was trained, on the corrected labels
            base_cfg = safe_torch_load(store.checkpoint_path(f"segmentation-{base_name}"))["config"]
            arms = {"ranked": ranked, "random": random_masks(store, areas, 1000 + seed)}
            weight = args.verified_weight
            for kind in args.kinds:
                masks = arms[kind]
                name = gain_run_name(kind, budget, seed, weight)
                clear_corrections(store)
                for n, m in masks.items():
                    store.save_correction(n, np.where(m, store.mask(n), store.read(n, "pseudo")).astype(np.uint8),
                                          painted=m)
                px, wrong = wrong_inside(store, masks)
                seg = from_dict(SegConfig, base_cfg)
                seg.seed, seg.label_source = seed, "corrected"
                # a baseline saved before the precision setting existed was trained in fp32
                seg.precision = base_cfg.get("precision", "fp32")
                seg.verified_weight = weight
                t0 = time.perf_counter()
                run(train_segmenter(store, seg, "cpu", run_name=name, on_mismatch="restart"))
                train_s = time.perf_counter() - t0
                sc = scores(store, name, cfg.inference, splits=("val", "test"))
                val, test, base_val, base_test = sc["val"], sc["test"], base["val"], base["test"]
                # the validation images are never corrected: their gain is how the verified weight was chosen
                row = {"budget_pct": budget, "seed": seed, "kind": kind, "verified_weight": weight,
                       "divisor": DIVISOR, "pixels": px,
                       "wrong_fixed": wrong, "testA_mIoU": test["mIoU"], "baseline_mIoU": base_test["mIoU"],
                       "gain": test["mIoU"] - base_test["mIoU"], "val_mIoU": val["mIoU"],
                       "baseline_val_mIoU": base_val["mIoU"], "val_gain": val["mIoU"] - base_val["mIoU"],
                       "train_s": train_s}
                data["gain"] = [g for g in data["gain"] if gain_key(g) != gain_key(row)] + [row]
                save(data)
                print(f"{name}: {px:,} px fixed ({wrong:,} were wrong) -> testA {test['mIoU']:.2f} "
                      f"({row['gain']:+.2f} vs {base_test['mIoU']:.2f}), validation {row['val_gain']:+.2f} "
                      f"{train_s / 60:.1f} min", flush=True)
    clear_corrections(store)


def cmd_rescore(args) -> None:
    """Score the kept checkpoints of earlier gain rows on validation too (rows from before it was recorded)."""
    from ablation import scores

    store = ProjectStore.open(PROJECT)
    cfg = preset("cpu")
    cfg.inference.precision = "fp32"
    data = load()
    base_val: dict[int, float] = {}  # each seed's baseline is scored once
    for row in data["gain"]:
        if "val_gain" in row:
            continue
        w = row.get("verified_weight", 1.0)
        name = gain_run_name(row["kind"], row["budget_pct"], row["seed"], w, divisor(row))
        if not store.checkpoint_path(f"segmentation-{name}").is_file():
            print(f"{name}: no checkpoint kept, skipped")
            continue
        val = scores(store, name, cfg.inference, splits=("val",))["val"]["mIoU"]
        if row["seed"] not in base_val:
            base_name = args.baseline.format(seed=row["seed"])
            base_val[row["seed"]] = scores(store, base_name, cfg.inference, splits=("val",))["val"]["mIoU"]
        base = base_val[row["seed"]]
        row.update(verified_weight=w, val_mIoU=val, baseline_val_mIoU=base, val_gain=val - base)
        print(f"{name}: validation {val:.2f} ({val - base:+.2f} vs {base:.2f})", flush=True)
    save(data)


def mean_sd(values: list[float]) -> str:
    return "-" if not values else f"{np.mean(values):+.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else "")


def cmd_table(args) -> None:
    """The gain rows as one markdown table: mean ± sd over seeds per verified weight, divisor, budget and arm."""
    from ablation import markdown_table

    data = load()
    groups: dict[tuple, list[dict]] = {}
    for g in data["gain"]:
        groups.setdefault((g.get("verified_weight", 1.0), divisor(g), g["budget_pct"], g["kind"]), []).append(g)
    rows = []
    for (w, div, b, kind), gs in sorted(groups.items(),
                                        key=lambda kv: (kv[0][0], kv[0][1] != "pixels", kv[0][2], kv[0][3] != "ranked")):
        gs = sorted(gs, key=lambda g: g["seed"])
        test, val = [g["gain"] for g in gs], [g["val_gain"] for g in gs if "val_gain" in g]
        rows.append((f"{w:g}", div, f"{b:g} %", kind, ", ".join(str(g["seed"]) for g in gs),
                     f"{int(np.mean([g['wrong_fixed'] for g in gs])):,}", mean_sd(val), mean_sd(test),
                     " / ".join(f"{t:+.2f}" for t in test)))
    markdown_table(rows, ("verified weight", "loss divided by", "budget", "arm", "seeds", "wrong labels fixed", "validation gain",
                          "testA gain", "testA per seed"))


def cmd_plot(args) -> None:
    plt = pyplot()
    if plt is None:
        return
    data = load()
    if data.get("rank"):
        c = data["rank"]["curve"]
        share = [100 * x["pixels"] / data["rank"]["train_pixels"] for x in c]  # all regions may cover less
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
        ax.plot(share, [100 * x["precision"] for x in c], "o-", label="ranked regions")
        ax.plot(share, [100 * x["random_precision"] for x in c], "s--", label="same areas at random")
        ax.axhline(100 * data["rank"]["pseudo_error_rate"], color="grey", lw=0.8, ls=":",
                   label="all pseudo-labels")
        ax.set_xlabel("pixels reviewed (% of training pixels)")
        ax.set_ylabel("wrong pseudo-labels inside (%)")
        ax.set_ylim(0, 100)
        ax.legend(frameon=False, fontsize=8)
        ax.set_title("GlaS train: where the label review points", fontsize=9)
        fig.tight_layout()
        fig.savefig(DOCS / "ranking_precision.png")
        print(f"wrote {DOCS / 'ranking_precision.png'}")
    if data.get("gain"):
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
        series = sorted({(g.get("verified_weight", 1.0), divisor(g)) for g in data["gain"]})
        for colour, (weight, div) in zip(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), series):
            for kind, style in (("ranked", "o-"), ("random", "s--")):
                rows = [g for g in data["gain"] if g["kind"] == kind and g.get("verified_weight", 1.0) == weight
                        and divisor(g) == div]
                if not rows:
                    continue
                budgets = sorted({g["budget_pct"] for g in rows})
                means = [np.mean([g["gain"] for g in rows if g["budget_pct"] == b]) for b in budgets]
                spread = [np.std([g["gain"] for g in rows if g["budget_pct"] == b]) for b in budgets]
                # no correction, no gain: the curves start at the origin
                seeds = ", ".join(f"{b:g} %: {sum(g['budget_pct'] == b for g in rows)}" for b in budgets)
                note = ", divisor weighted (not kept)" if div == "weighted" else ""
                ax.errorbar([0.0, *budgets], [0.0, *means], yerr=[0.0, *spread], fmt=style, capsize=3,
                            color=colour, label=f"{kind}, verified weight {weight:g}{note} (seeds - {seeds})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("pixels corrected (% of training pixels)")
        ax.set_ylabel("testA mIoU gain (bars: sd over seeds)")
        ax.legend(frameon=False, fontsize=7)
        ax.set_title("GlaS: what correcting pseudo-labels buys", fontsize=9)
        fig.tight_layout()
        fig.savefig(DOCS / "annotation_gain.png")
        print(f"wrote {DOCS / 'annotation_gain.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rank")
    r.add_argument("--seed", type=int, default=0, help="of the random control's placement")
    r.add_argument("--model", default="abl-ce-r1-s0",
                   help="the run whose prediction the ranking reads; 'current': the project's own model (e.g. on "
                        "benchmarks/end_to_end.py's project)")
    g = sub.add_parser("gain")
    g.add_argument("--budgets", type=float, nargs="+", default=[3.0], help="percent of the training pixels")
    g.add_argument("--seeds", type=int, nargs="+", default=[0])
    g.add_argument("--baseline", default="abl-ce-2k-r1-s{seed}",
                   help="the uncorrected run (per seed) whose settings the retraining copies")
    g.add_argument("--kinds", nargs="+", choices=("ranked", "random"), default=["ranked", "random"],
                   help="which arms to retrain (both by default)")
    g.add_argument("--verified-weight", type=float, default=preset("cpu").segmentation.verified_weight,
                   help="loss weight of the corrected pixels in the retraining (default: the cpu preset's)")
    rs = sub.add_parser("rescore")
    rs.add_argument("--baseline", default="abl-ce-2k-r1-s{seed}")
    sub.add_parser("table")
    sub.add_parser("plot")
    args = ap.parse_args()
    {"rank": cmd_rank, "gain": cmd_gain, "rescore": cmd_rescore, "table": cmd_table, "plot": cmd_plot}[args.cmd](args)


if __name__ == "__main__":
    main()
