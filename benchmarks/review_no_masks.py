"""The label review without masks: a simulated pathologist reviews the regions in the tool's order.

    python benchmarks/review_no_masks.py runs/bench/PROJECT.oeem.zarr                  # the store's gland masks
    python benchmarks/review_no_masks.py PROJECT --masks $OEEM_GLAS_ROOT/train         # NAME_anno.png from a folder
    python benchmarks/review_no_masks.py PROJECT --cv                                  # + the L2 strength, chosen
                                                                                       #   on half the images

Runs on any project with a ranking (``oeem regions``; made before the review kept region features, they are
computed here from the stored evidence, nothing is written to the project). The pathologist looks at the first
region not yet reviewed in the tool's current order, accepts it when most of its pixels' labels are really wrong
(the gland masks are the truth: only here, never in the tool) and skips it otherwise, for ``--decisions`` regions.
Orders: (a) the ranking as made (its calibration), (b) shifted by the patch tags, (c) re-ordered after each
decision, (d) both - what ``ranking.learn_from_review`` does - and (d) ordered by expected wrong pixels instead of
probability (``pipeline.review.online.ORDER_BY``). Reported: the share of accepted regions among the
first 10 / 20 / 50 (region precision), the share of wrong labels inside them (pixel precision, as
the area's share of wrong labels), the wrong labels the accepted regions fix, and the precision
curve over the number of reviewed regions. ``--cv`` chooses the L2 strength on one half of the images (alternate
names) and reports it on the other half, both ways round. JSON: ``benchmarks/results/review_no_masks.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import machine, print_table, pyplot, write_json
from PIL import Image

from pipeline.review.online import ORDER_BY, PRIOR_STRENGTH, ensure_region_features, learns, review_order
from pipeline.review.regions import load_ranking
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

# (use the tags, learn from the decisions, order by); None: the ranking's own order (expected wrong pixels, its
# calibration); "tags+online" is what ranking.learn_from_review does
VARIANTS = {"static": None, "tags": (True, False, ORDER_BY), "online": (False, True, ORDER_BY),
            "tags+online": (True, True, ORDER_BY), "tags+online by pixels": (True, True, "pixels")}
STRENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0)
AT = (10, 20, 50)


def gland_mask(store: ProjectStore, name: str, masks: Path | None) -> np.ndarray:
    """The truth of ``name`` (bool): NAME_anno.png from ``masks``, else the project's own mask."""
    if masks is not None:
        path = masks / f"{name}_anno.png"
        if not path.is_file():
            raise SystemExit(f"{path}: no gland mask for {name}")
        mask = np.asarray(Image.open(path)) > 0
        return mask if mask.ndim == 2 else mask.any(-1)
    mask = store.mask(name)
    if mask is None:
        raise SystemExit(f"{store.path}: {name} has no gland mask; give a folder of NAME_anno.png with --masks")
    return mask > 0


def wrong_share(store: ProjectStore, names: list[str], masks: Path | None) -> float:
    """Share of the ranked images' pixels whose label is wrong: what the same area placed at random holds."""
    wrong = total = 0
    for name in names:
        mask = gland_mask(store, name, masks)
        wrong += int(((store.labels(name)[0] == 1) != mask).sum())
        total += mask.size
    return wrong / total


def truth(store: ProjectStore, rows: list[dict], masks: Path | None) -> dict[str, tuple[int, int]]:
    """(wrong pixels, area) of each region: its pixels whose current label differs from the gland mask."""
    out: dict[str, tuple[int, int]] = {}
    for name in sorted({r["image"] for r in rows}):
        mask = gland_mask(store, name, masks)
        labels = store.labels(name)[0] == 1
        ids = store.read(name, "regions")
        wrong = np.bincount(ids.ravel(), weights=(labels != mask).ravel(), minlength=int(ids.max()) + 1)
        for r in rows:
            if r["image"] == name:
                out[r["key"]] = (int(wrong[r["id"]]), int(r["area"]))
    return out


def simulate(rows: list[dict], wrong: dict[str, tuple[int, int]], variant: tuple[bool, bool, str] | None,
             strength: float, decisions: int) -> list[dict]:
    """The pathologist's decisions, in order: each on the first region not yet decided in the tool's order."""
    actions: list[dict] = []
    steps = []
    for _ in range(min(decisions, len(rows))):
        done = {a["key"] for a in actions}
        order = rows if variant is None else review_order(rows, actions, use_tags=variant[0], learn=variant[1],
                                                          strength=strength, by=variant[2])
        key = next(r["key"] for r in order if r["key"] not in done)
        bad, area = wrong[key]
        accepted = 2 * bad > area
        actions.append({"key": key, "status": "accepted" if accepted else "skipped"})
        steps.append({"key": key, "accepted": accepted, "wrong": bad, "area": area})
    return steps


def summary(steps: list[dict]) -> dict:
    acc = np.cumsum([s["accepted"] for s in steps])
    k = np.arange(1, len(steps) + 1)
    out = {"decisions": len(steps), "curve": (acc / k).round(4).tolist()}
    for n in AT:
        first = steps[:n]
        out[f"precision@{n}"] = float(np.mean([s["accepted"] for s in first])) if len(first) == n else None
        out[f"pixel_precision@{n}"] = (sum(s["wrong"] for s in first) / max(1, sum(s["area"] for s in first))
                                       if len(first) == n else None)
    out["wrong_fixed"] = int(sum(s["wrong"] for s in steps if s["accepted"]))
    out["mean_precision"] = float(np.mean(acc / k)) if steps else 0.0
    return out


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def cross_validate(rows: list[dict], wrong: dict, decisions: int) -> list[dict]:
    """Per half of the images: the strength with the best mean precision over its own review, scored on the
    other half (tags + online)."""
    names = sorted({r["image"] for r in rows})
    halves = [set(names[0::2]), set(names[1::2])]
    out = []
    for k, (choose_on, score_on) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        pick = [r for r in rows if r["image"] in choose_on]
        held = [r for r in rows if r["image"] in score_on]
        if not pick or not held:
            continue
        means = {s: summary(simulate(pick, wrong, VARIANTS["tags+online"], s, decisions))["mean_precision"]
                 for s in STRENGTHS}
        best = max(STRENGTHS, key=lambda s: (means[s], -abs(np.log(s / PRIOR_STRENGTH))))
        scored = {v: summary(simulate(held, wrong, VARIANTS[v], best, decisions)) for v in ("static", "tags+online")}
        out.append({"fold": k, "chosen_on_images": len(choose_on), "scored_on_images": len(score_on),
                    "mean_precision_by_strength": means, "strength": best, "held_out": scored})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", help="a project with a ranking (`oeem regions`)")
    ap.add_argument("--masks", type=Path, default=None,
                    help="folder of NAME_anno.png gland masks (default: the project's own masks)")
    ap.add_argument("--decisions", type=int, default=50, help="regions the pathologist decides (default: 50)")
    ap.add_argument("--strength", type=float, default=PRIOR_STRENGTH,
                    help=f"L2 pull towards the prior (default: the tool's, {PRIOR_STRENGTH:g})")
    ap.add_argument("--cv", action="store_true", help="also choose the strength on half the images (default: off)")
    ap.add_argument("--out", default="review_no_masks.json", help="JSON in benchmarks/results/ (default: %(default)s)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="also draw the precision curves into this PNG (needs matplotlib; default: no plot)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    store = ProjectStore.open(args.project)
    ranking = load_ranking(store)
    if ranking is None or not ranking["regions"]:
        raise SystemExit(f"{args.project}: no ranked regions; run `oeem regions {args.project}` first")
    had_features = "region_features" in ranking
    ranking = ensure_region_features(store, ranking, project_config(store, save=False))
    rows = sorted(ranking["regions"], key=lambda r: -r["expected_wrong"])
    wrong = truth(store, rows, args.masks)
    names = list(ranking["labels"])
    pixels = sum(int(np.prod(store.shape(n))) for n in names)
    tagged = sum(store.patch_tags(n) is not None for n in names)
    results = {v: summary(simulate(rows, wrong, VARIANTS[v], args.strength, args.decisions)) for v in VARIANTS}
    print(f"{args.project}: {len(rows)} regions on {len(names)} images ({tagged} with the pathologist's tags, the "
          f"others their patch labels); calibration: {ranking['calibration']['source']}; the tool learns from the "
          f"review here: {'yes' if learns(ranking) else 'no'}; L2 strength {args.strength:g}")
    mostly_wrong = sum(2 * b > a for b, a in wrong.values())
    base_rate = wrong_share(store, names, args.masks)
    print(f"regions whose labels are mostly wrong: {mostly_wrong} of {len(rows)} (what regions in random order "
          f"give); wrong labels: {100 * base_rate:.1f} % of the pixels (what the same area at random holds)\n")
    print_table([(v, *(pct(r[f"precision@{n}"]) for n in AT), *(pct(r[f"pixel_precision@{n}"]) for n in AT),
                  f"{r['wrong_fixed']:,}") for v, r in results.items()],
                ("order", *(f"regions@{n}" for n in AT), *(f"pixels@{n}" for n in AT),
                 f"wrong px fixed in {args.decisions}"))
    marks = [k for k in (1, 5, 10, 15, 20, 30, 40, 50, 75, 100) if k <= args.decisions]
    print("\nprecision after k reviewed regions")
    print_table([(v, *(pct(r["curve"][k - 1]) if k <= len(r["curve"]) else "-" for k in marks))
                 for v, r in results.items()], ("order", *(f"k={k}" for k in marks)))
    cv = cross_validate(rows, wrong, args.decisions) if args.cv else []
    if cv:
        print("\nL2 strength chosen on half the images (mean precision over the review), scored on the other half")
        print_table([(c["fold"], c["strength"], *(pct(c["held_out"][v][f"precision@{n}"]) for v in
                                                  ("static", "tags+online") for n in (10, 20)))
                     for c in cv], ("fold", "strength", "static@10", "static@20", "learned@10", "learned@20"))
    write_json(args.out, {"project": str(args.project), "regions": len(rows), "images": len(names),
                          "tagged_images": tagged, "pixels": pixels, "calibration": ranking["calibration"],
                          "region_features_computed_here": not had_features, "strength": args.strength,
                          "decisions": args.decisions, "results": results, "cv": cv,
                          "mostly_wrong_regions": mostly_wrong, "wrong_pixel_share": base_rate,
                          "seconds": time.perf_counter() - t0, "machine": machine()})

    if args.plot is not None:
        plot(results, mostly_wrong / len(rows), args.plot)


def plot(results: dict, random_order: float, out: Path) -> None:
    """Share of mostly-wrong regions among the first k reviewed, per order, against regions in random order."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    for variant, label in (("static", "the ranking as made"),
                           ("tags+online", "what the review does (tags + decisions)"),
                           ("tags+online by pixels", "tags + decisions, by expected wrong pixels")):
        curve = results[variant]["curve"]
        ax.plot(range(1, len(curve) + 1), [100 * c for c in curve], label=label)
    ax.axhline(100 * random_order, color="grey", linestyle=":", label="regions in random order")
    ax.set_xlabel("regions reviewed")
    ax.set_ylabel("mostly wrong among them (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
