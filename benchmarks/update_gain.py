"""*Update model* against a full retrain: the share of the retrain's gain an update reaches, and its seconds.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/update_gain.py [--project P] [--budget 3]
        [--steps 30] [--lr 0.005 0.01] [--focus 0.25 0.5] [--weight 1 4] [--no-retrain] [--no-test]

Choosing settings: ``--no-retrain --no-test`` with grids of ``--lr`` / ``--focus`` / ``--weight`` scores each
update on the validation split only (every combination, from the same corrected copy).

On a project the pipeline trained, a simulated
pathologist corrects the largest wrong regions of the training pseudo-masks (the GlaS training masks play the
pathologist) up to ``--budget`` percent of the training pixels. Then, each from the same model and pseudo-masks:

- *base*: the model as it is;
- *update*: ``oeem update`` (each ``--steps`` x ``--lr``), the changed images learned in about a minute;
- *retrain*: the same training as the base model's (settings, iterations, seed) on the corrected labels.

Validation (never corrected) decides the update's settings; testA is reported. Default project: the weak-labels
benchmark's 25 % run (``benchmarks/weak_labels.py``: 19 tagged GlaS images, 300 iterations, 10 validation images),
copied so it stays as it was. Rows go to ``benchmarks/results/update_gain.json``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import glas_root, machine, print_table, write_json  # noqa: E402

from pipeline.progress import run  # noqa: E402
from pipeline.store import ProjectStore  # noqa: E402

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench"
DEFAULT_PROJECT = WORK / "suggested-25-s0.oeem.zarr"
TRUTH = WORK / "glas-truth.oeem.zarr"
OUT = "update_gain.json"


def truth_mask(name: str) -> np.ndarray:
    """The GlaS training mask of ``name`` (the simulated pathologist's eye), from the weak-labels benchmark's truth
    project (``benchmarks/weak_labels.py build``); the project trained on never holds it."""
    glas_root()  # skips with a clear reason where GlaS is not available
    return ProjectStore.open(TRUTH).mask(name)


def plant_corrections(store: ProjectStore, budget_pct: float) -> dict:
    """Paint the truth over the largest wrong regions of the training pseudo-masks, biggest first, until
    ``budget_pct`` % of the labelled training pixels are corrected (what a pathologist fixes first)."""
    from skimage.measure import label, regionprops

    names = [n for n in store.labelled_images(("train",)) if store.has(n, "pseudo")]
    total = sum(int(np.prod(store.shape(n))) for n in names)
    candidates = []
    truths = {}
    for n in names:
        truth = truth_mask(n).astype(np.uint8)
        truths[n] = truth
        wrong = store.read(n, "pseudo") != truth
        for r in regionprops(label(wrong, connectivity=2)):
            candidates.append((r.area, n, r.coords))
    candidates.sort(key=lambda c: -c[0])
    budget, used, fixed = total * budget_pct / 100, 0, {}
    for area, n, coords in candidates:
        if used + area > budget:
            continue
        fixed.setdefault(n, []).append(coords)
        used += area
    for n, regions in fixed.items():
        labels = store.read(n, "pseudo").copy()
        for coords in regions:
            labels[coords[:, 0], coords[:, 1]] = truths[n][coords[:, 0], coords[:, 1]]
        store.save_correction(n, labels)
    return {"images": sorted(fixed), "pixels": int(used), "pct": 100 * used / total,
            "regions": sum(len(v) for v in fixed.values())}


def scores(store: ProjectStore, cfg, splits: tuple[str, ...] = ("val", "test")) -> dict:
    from pipeline.stages.infer import evaluate, predict

    names = [n for split in splits for n in store.names(split)]
    run(predict(store, cfg.inference, names=names, device="cpu"))
    return {split: round(evaluate(store, split)["mIoU"], 2) if split in splits else float("nan")
            for split in ("val", "test")}


def fresh_copy(src: Path, name: str) -> ProjectStore:
    dst = WORK / f"update-gain-{name}.oeem.zarr"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return ProjectStore.open(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=DEFAULT_PROJECT)
    ap.add_argument("--budget", type=float, default=3.0, help="percent of the training pixels corrected")
    ap.add_argument("--steps", type=int, nargs="+", default=[30])
    ap.add_argument("--lr", type=float, nargs="+", default=[None], help="update.lr values (default: the preset's)")
    ap.add_argument("--focus", type=float, nargs="+", default=[None],
                    help="update.focus values (default: the preset's)")
    ap.add_argument("--weight", type=float, nargs="+", default=[None],
                    help="update.verified_weight values (default: the preset's)")
    ap.add_argument("--no-test", action="store_true", help="score the validation split only (choosing settings)")
    ap.add_argument("--no-retrain", action="store_true", help="skip the full retrain")
    ap.add_argument("--retrain-weight", type=float, nargs="+", default=[None],
                    help="verified weights of the full retrain (default: the project's segmentation.verified_weight)")
    ap.add_argument("--retrain-divisor", nargs="+", default=[None], choices=("pixels", "weights"),
                    help="segmentation.verified_divisor values of the retrain (default: the project's)")
    ap.add_argument("--retrain-seeds", type=int, nargs="+", default=[None],
                    help="seeds of the retrains (default: the base model's)")
    ap.add_argument("--uncorrected", action="store_true",
                    help="also retrain each seed on the uncorrected labels: what a retrain without corrections "
                         "scores, the bar a retrain on corrections must not fall below")
    ap.add_argument("--control", action="store_true",
                    help="also the update on the same images without their corrections")
    ap.add_argument("--out", default=OUT, help="JSON name under benchmarks/results (default: %(default)s)")
    ap.add_argument("--note", default="", help="e.g. whether the cores were shared")
    args = ap.parse_args()
    from pipeline.stages.segment import train_segmenter
    from pipeline.stages.update import update_model
    from pipeline.store.project import project_config

    corrected = fresh_copy(args.project, "corrected")
    cfg = project_config(corrected, None, None, save=False)
    planted = plant_corrections(corrected, args.budget)
    print(f"corrected {planted['pixels']:,} px ({planted['pct']:.2f} % of the labelled training pixels) in "
          f"{planted['regions']} regions of {len(planted['images'])} images", flush=True)
    rows = []
    splits = ("val",) if args.no_test else ("val", "test")
    base = scores(corrected, cfg, splits)
    rows.append({"arm": "base", **base, "seconds": 0.0})
    print(f"base: {base}", flush=True)
    for steps, lr, focus, weight in itertools.product(args.steps, args.lr, args.focus, args.weight):
        store = fresh_copy(corrected.path, f"s{steps}-lr{lr}")
        ucfg = copy.deepcopy(cfg)
        ucfg.update.iterations = steps
        if lr is not None:
            ucfg.update.lr = lr
        if focus is not None:
            ucfg.update.focus = focus
        if weight is not None:
            ucfg.update.verified_weight = weight
        t = time.perf_counter()
        result = run(update_model(store, ucfg, "cpu", predict_names=[]))
        seconds = time.perf_counter() - t
        s = scores(store, cfg, splits)
        rows.append({"arm": f"update {steps} steps lr {ucfg.update.lr:g} focus {ucfg.update.focus:g} weight "
                            f"{ucfg.update.verified_weight:g}", **s, "seconds": round(seconds, 1),
                     "train_seconds": round(result["train_seconds"], 1)})
        print(rows[-1], flush=True)
        shutil.rmtree(store.path)
    if args.control:
        # the same update on the same images with their corrections left out: what the fine-tune alone does
        store = fresh_copy(args.project, "control")
        ucfg = copy.deepcopy(cfg)
        ucfg.update.iterations = args.steps[0]
        if args.lr[0] is not None:
            ucfg.update.lr = args.lr[0]
        t = time.perf_counter()
        run(update_model(store, ucfg, "cpu", names=planted["images"], predict_names=[]))
        s = scores(store, cfg, splits)
        rows.append({"arm": f"control: update {args.steps[0]} steps lr {ucfg.update.lr:g}, no corrections", **s,
                     "seconds": round(time.perf_counter() - t, 1)})
        print(rows[-1], flush=True)
        shutil.rmtree(store.path)
    if not args.no_retrain:
        from pipeline.config import SegConfig, from_dict

        base_seg = from_dict(SegConfig, corrected.load_run("segmentation")["config"])
        arms = [(source, weight, divisor, seed) for seed in args.retrain_seeds
                for source, weight, divisor in
                ([("pseudo", None, None)] if args.uncorrected else [])
                + [("corrected", w, d) for w in args.retrain_weight for d in args.retrain_divisor]]
        for source, weight, divisor, seed in arms:
            # every retrain starts from the same copy: the same model before it (a warm start reads it) and labels
            store = fresh_copy(corrected.path, "retrain")
            seg = copy.deepcopy(base_seg)
            seg.label_source = source
            if weight is not None:
                seg.verified_weight = weight
            if divisor is not None:
                seg.verified_divisor = divisor
            if seed is not None:
                seg.seed = seed
            t = time.perf_counter()
            run(train_segmenter(store, seg, "cpu", restart=True))
            seconds = time.perf_counter() - t
            s = scores(store, cfg, splits)
            arm = (f"retrain {seg.iterations} iterations, uncorrected labels" if source == "pseudo" else
                   f"retrain {seg.iterations} iterations, verified weight {seg.verified_weight:g}, "
                   f"divided by {seg.verified_divisor}")
            rows.append({"arm": arm, "seed": seg.seed, "verified_weight": seg.verified_weight,
                         "verified_divisor": seg.verified_divisor, "labels": source, **s,
                         "seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
            shutil.rmtree(store.path)
    # the update's share of the gain of the retrain a user gets: the cpu preset's weight, the model's own seed
    from pipeline.config import preset

    corrected_rows = [r for r in rows if r["arm"].startswith("retrain") and r["labels"] == "corrected"]
    shipped = preset("cpu").segmentation
    retrain = next((r for r in corrected_rows if r["verified_weight"] == shipped.verified_weight
                    and r["verified_divisor"] == shipped.verified_divisor and r["seed"] == cfg.segmentation.seed),
                   corrected_rows[0] if corrected_rows else None)
    for r in rows:
        if retrain is not None and r["arm"].startswith("update"):
            for split in ("val", "test"):
                gain = retrain[split] - base[split]
                r[f"{split}_share"] = round((r[split] - base[split]) / gain, 2) if abs(gain) > 1e-9 else None
    print_table([(r["arm"], r.get("seed", ""), f"{r['val']:.2f}", f"{r['test']:.2f}", f"{r['seconds']:.0f}",
                  r.get("val_share", ""), r.get("test_share", "")) for r in rows],
                ("arm", "seed", "validation mIoU", "testA mIoU", "seconds", "share of gain (val)", "share (testA)"))
    write_json(args.out, {"machine": machine(), "note": args.note, "project": str(args.project),
                     "budget_pct": args.budget, "planted": {k: v for k, v in planted.items() if k != "images"},
                     "images": planted["images"], "rows": rows})


if __name__ == "__main__":
    main()
