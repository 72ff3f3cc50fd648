"""The label review's no-mask defaults, judged on images they were not chosen on.

    OEEM_GLAS_ROOT=... python benchmarks/review_heldout.py benchmarks/results/end_to_end-cpu.oeem.zarr

A project without validation masks ranks its regions with coefficients fitted elsewhere
(``pipeline.review.calibration.DEFAULT_CALIBRATION``) and re-orders them with the review's L2 pull
(``PRIOR_STRENGTH``) and order (``ORDER_BY``, ``pipeline.review.online``). Here the training images of a finished
project with gland masks (a copy; the original is not touched) are split into two fixed halves by their natural
order (``train_1, train_3, ...`` / ``train_2, train_5, ...``): half A refits the coefficients (the same logistic
regression as ``fit_calibration``) and chooses the strength and the order in simulated reviews; half B only scores,
with its masks used by the simulated pathologist alone (``review_no_masks.py``'s protocol: accept a region when
most of its labels are really wrong). Reported on half B, as a reviewer would compare them:

- **regions in random order**: the share of B's regions whose labels are mostly wrong (what reviewing at random
  finds), and the share of wrong pixels (the pixel base rate);
- **the ranking before any learning** (its own order, expected wrong pixels), with the default and the refitted
  coefficients;
- **the review**: the tags and the decisions, with the earlier pull and with what half A chose among the
  pulls, both orders, and the review with or without the tags and the decisions; the tags alone.

The tool ships what half A chose (``DEFAULT_CALIBRATION``, ``PRIOR_STRENGTH``, ``ORDER_BY``), so a rerun on the
same project refits the same coefficients; "earlier" is what it shipped before this protocol.

The tag prior (``TAG_LOGIT`` = log 19) encodes the 5 % rule GlaS's patch labels follow; ``--tag-rules`` also runs the
review with patch tags made by other rules (a class present above 1 % or 20 % of a patch) to show what it costs
when a pathologist tags differently. Writes ``benchmarks/results/review_heldout.json``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import RESULTS, print_table, write_json
from review_no_masks import AT, STRENGTHS, VARIANTS, pct, simulate, summary, truth, wrong_share

from pipeline.io.data import natural_key
from pipeline.io.patch_labels import vectors_to_tags
from pipeline.progress import run
from pipeline.review.calibration import DEFAULT_CALIBRATION, fit_calibration
from pipeline.review.online import ORDER_BY, PRIOR_STRENGTH
from pipeline.review.regions import rank_image, rank_label_errors
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

ORDERS = ("probability", "pixels")
# what the tool shipped before this protocol chose its defaults: coefficients fitted on the GlaS validation split of
# an earlier network, and the pull chosen on images that overlap the ones it was judged on
EARLIER = {"kind": "logistic", "source": "the coefficients shipped before review_heldout.py",
           "coef": [-0.0221, -1.1244, 1.0655, -0.9325, 2.4290, -0.0787, -3.2043, -0.4033], "intercept": 0.0}
EARLIER_STRENGTH = 3.0


def halves(names: list[str]) -> tuple[list[str], list[str]]:
    ordered = sorted(names, key=natural_key)
    return ordered[0::2], ordered[1::2]


def ranked(store: ProjectStore, names: list[str], calibration: dict, pcfg) -> tuple[list[dict], dict]:
    """The regions of ``names`` ranked with ``calibration`` (its own order), and each region's truth."""
    ranking = {"labels": {}, "regions": []}
    for n in names:
        ranking["regions"] += rank_image(store, n, calibration, pcfg, ranking)
    rows = sorted(ranking["regions"], key=lambda r: -r["expected_wrong"])
    return rows, truth(store, rows, None)  # the truth now: rank_image rewrote the images' regions


def retag(store: ProjectStore, names: list[str], rule: float, pcfg) -> None:
    """Patch tags from the gland masks by another rule: a class is present above ``rule`` of the patch."""
    size, stride = pcfg.patches.size, pcfg.patches.stride
    for n in names:
        corners = patch_grid(store.shape(n), size, stride)
        store.save_patch_tags(n, vectors_to_tags(patch_labels(store.mask(n) > 0, corners, size, rule)), size, stride)


# what the review may do with the pathologist's input: use the tags, learn from the decisions, both, or neither
# (the ranking's own order); chosen on half A with the strength and the order
USES = {"neither": (False, False), "tags": (True, False), "decisions": (False, True), "tags+decisions": (True, True)}


def review(rows: list[dict], wrong: dict, strength: float, order: str, decisions: int,
           use: str = "tags+decisions") -> dict:
    variant = None if use == "neither" else (*USES[use], order)
    return summary(simulate(rows, wrong, variant, strength, decisions))


def random_order(rows: list[dict], wrong: dict) -> float:
    return float(np.mean([2 * wrong[r["key"]][0] > wrong[r["key"]][1] for r in rows]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path, help="a finished project whose training images have gland masks")
    ap.add_argument("--decisions", type=int, default=50)
    ap.add_argument("--tag-rules", type=float, nargs="*", default=[0.01, 0.2],
                    help="other tag rules to review with (share of a patch above which a class is present)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/review-heldout.oeem.zarr"),
                    help="the working copy (replaced)")
    ap.add_argument("--out", default="review_heldout.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.work.exists():
        shutil.rmtree(args.work)
    shutil.copytree(args.project, args.work)
    store = ProjectStore.open(args.work)
    pcfg = project_config(store, save=False)
    names = [n for n in store.names("train") if store.has(n, "pseudo") and store.has(n, "mask")]
    if len(names) < 8:
        raise SystemExit(f"{args.project}: needs at least 8 training images with masks and pseudo-masks")
    print(f"out-of-fold evidence for {len(names)} training images ...", flush=True)
    run(rank_label_errors(store, pcfg, calibrate=False), lambda p: None)
    fit_on, judge_on = halves(names)
    # logistic, as DEFAULT_CALIBRATION is: the coefficients a project without masks would ship with
    logistic = replace(pcfg, ranking=replace(pcfg.ranking, calibrator="logistic"))
    refit = fit_calibration(store, fit_on, logistic, pcfg.segmentation.seed)
    refit["source"] = f"half A of the training images ({len(fit_on)}): {args.project}"
    calibrations = {"earlier": EARLIER, "refit on A": refit}

    # choose the strength and the order on half A (the refitted coefficients)
    rows_a, wrong_a = ranked(store, fit_on, refit, pcfg)
    grid = {(s, o, u): review(rows_a, wrong_a, s, o, args.decisions, u)
            for u in USES for s in (STRENGTHS if u != "neither" else (PRIOR_STRENGTH,))
            for o in (ORDERS if u != "neither" else ("pixels",))}
    # ties go to the simpler review (no learning first), then to the shipped strength
    simpler = list(USES)
    chosen = max(grid, key=lambda k: (round(grid[k]["mean_precision"], 4), -simpler.index(k[2]),
                                      -abs(np.log(k[0] / PRIOR_STRENGTH))))
    shipped = (EARLIER_STRENGTH, ORDER_BY, "tags+decisions")
    print(f"chosen on half A: {chosen[2]}, strength {chosen[0]:g}, order by {chosen[1]} (mean precision over the "
          f"review {100 * grid[chosen]['mean_precision']:.1f} %; the earlier review (strength {EARLIER_STRENGTH:g}): "
          f"{100 * grid[shipped]['mean_precision']:.1f} %; the ranking's own order: "
          f"{100 * grid[(PRIOR_STRENGTH, 'pixels', 'neither')]['mean_precision']:.1f} %)\n")

    # judge on half B
    results: dict[str, dict] = {}
    random_b: dict[str, float] = {}  # the regions differ with the coefficients: their random order too
    for cname, cal in calibrations.items():
        rows_b, wrong_b = ranked(store, judge_on, cal, pcfg)
        random_b[cname] = random_order(rows_b, wrong_b)
        results[f"{cname}: ranking before learning"] = summary(simulate(rows_b, wrong_b, VARIANTS["static"],
                                                                        PRIOR_STRENGTH, args.decisions))
        results[f"{cname}: review, earlier strength"] = review(rows_b, wrong_b, EARLIER_STRENGTH, ORDER_BY,
                                                               args.decisions)
        results[f"{cname}: review, settings chosen on A"] = review(rows_b, wrong_b, chosen[0], chosen[1],
                                                                   args.decisions, chosen[2])
        results[f"{cname}: tags only"] = review(rows_b, wrong_b, PRIOR_STRENGTH, ORDER_BY, args.decisions, "tags")
    rate_b = wrong_share(store, judge_on, None)
    tag_rules = {}
    for rule in args.tag_rules:  # the pathologist tags by another rule; the tool's prior still assumes 5 %
        retag(store, judge_on, rule, pcfg)
        rows_t, wrong_t = ranked(store, judge_on, refit, pcfg)
        tag_rules[f"{100 * rule:g} %"] = review(rows_t, wrong_t, *chosen[:2], args.decisions, chosen[2])

    print(f"half B ({len(judge_on)} images): {100 * rate_b:.1f} % of the pixels are wrong\n")
    table = [(k, *(pct(r[f"precision@{n}"]) for n in AT), pct(r["pixel_precision@20"])) for k, r in results.items()]
    table += [(f"refit on A: review chosen on A, tags by the {k} rule", *(pct(r[f"precision@{n}"]) for n in AT),
               pct(r["pixel_precision@20"])) for k, r in tag_rules.items()]
    table += [(f"{k}: regions in random order", *(pct(v),) * len(AT), pct(rate_b)) for k, v in random_b.items()]
    print_table(table, ("half B", *(f"mostly wrong, first {n}" for n in AT), "wrong pixels, first 20"))
    write_json(args.out, {
        "project": str(args.project), "decisions": args.decisions, "fit_on": fit_on, "judged_on": judge_on,
        "refit": refit, "earlier": EARLIER, "default_now": DEFAULT_CALIBRATION,
        "choice_on_A": {"strength": chosen[0], "order_by": chosen[1], "uses": chosen[2],
                        "grid": {f"{u}/{s:g}/{o}": r["mean_precision"] for (s, o, u), r in grid.items()}},
        "earlier_review": {"strength": EARLIER_STRENGTH, "order_by": ORDER_BY},
        "shipped_now": {"strength": PRIOR_STRENGTH, "order_by": ORDER_BY},
        "half_B": {"random_order": random_b, "wrong_pixel_share": rate_b,
                   "results": results, "tag_rules": tag_rules},
        "seconds": time.perf_counter() - t0})
    print(f"({(time.perf_counter() - t0) / 60:.1f} min; working copy {args.work})")


if __name__ == "__main__":
    assert RESULTS.is_dir()
    main()
