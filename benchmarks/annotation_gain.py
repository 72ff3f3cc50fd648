"""What a few minutes of pathologist correction buys: a simulated annotator on real GlaS.

The tool ranks confusing regions (where the segmentation disagrees with the pseudo-mask or the OEEM weight is
low) over the training images. The simulated pathologist fixes the top-k of them (pseudo-mask := gland mask
there, all pixels marked verified, exactly what painting in the plugin stores). The control fixes the same number
of pixels at random places (squares of the same sizes in random training images). Both retrain the segmentation
(``corrected`` labels, verified pixels at full weight) with the same settings as the uncorrected baseline, and
are scored on testA.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/annotation_gain.py [--top-k 20] [--iterations N]

Needs the stage-1 project from stage1_glas.py; the baseline is glas_tables.py's l_norm run when it exists with
the same settings (otherwise it is trained here). The corrections are removed from the project afterwards.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from _common import RESULTS, glas_root, machine, print_table, write_json
from glas_tables import test_scores
from pipeline.config import preset
from pipeline.infer import oeem_weight_of, predict_probs
from pipeline.progress import run
from pipeline.regions import confusing_regions, confusion_map, region_mask
from pipeline.segment import load_segmenter, train_segmenter
from pipeline.store import ProjectStore


def clear_corrections(store: ProjectStore) -> None:
    for n in store.names("train"):
        while store.undo_correction(n):
            pass


def rank_regions(store: ProjectStore, run_name: str, infer_cfg) -> tuple[list, dict]:
    """All training images' confusing regions under the baseline model, best first, and the maps behind them."""
    model, seg_cfg = load_segmenter(store, run_name, "cpu")
    regions, maps = [], {}
    for n in store.names("train"):
        prob = predict_probs(model, store.image(n), infer_cfg, torch.device("cpu"), seg_cfg)
        pred, pseudo = prob.argmax(0).astype(np.uint8), store.read(n, "pseudo")
        weight = oeem_weight_of(prob, pseudo)
        maps[n] = (pred, pseudo, weight)
        regions += confusing_regions(n, pred, pseudo, weight)
    return sorted(regions, key=lambda r: -r.score), maps


def ranking_quality(store: ProjectStore, maps: dict, chosen: list) -> dict:
    """How well the confusion signal finds *wrong pseudo-labels* on the training images (the gland masks play
    the pathologist): base error rate, the model's own error, and the share of wrong labels among flagged
    pixels and inside the chosen regions."""
    px = wrong = model_wrong = flagged = flagged_wrong = 0
    for n, (pred, pseudo, weight) in maps.items():
        gt = store.mask(n)
        err = pseudo != gt
        flag = confusion_map(pred, pseudo, weight) > 0.5
        px, wrong, model_wrong = px + err.size, wrong + int(err.sum()), model_wrong + int((pred != gt).sum())
        flagged, flagged_wrong = flagged + int(flag.sum()), flagged_wrong + int((flag & err).sum())
    area = sum(r.area for r in chosen)
    in_chosen = sum(int((region_mask(*maps[r.image], r) & (maps[r.image][1] != store.mask(r.image))).sum())
                    for r in chosen)
    return {"pseudo_error_rate": wrong / px, "model_error_rate": model_wrong / px,
            "flagged_share": flagged / px, "flagged_precision": flagged_wrong / max(flagged, 1),
            "chosen_precision": in_chosen / max(area, 1)}


def apply(store: ProjectStore, masks: dict[str, np.ndarray]) -> int:
    """Write the simulated corrections: gland mask inside ``masks``, pseudo-mask elsewhere; all inside verified."""
    total = 0
    for n, m in masks.items():
        labels = np.where(m, store.mask(n), store.read(n, "pseudo")).astype(np.uint8)
        store.save_correction(n, labels, painted=m)
        total += int(m.sum())
    return total


def retrain(store, cfg, name: str, infer_cfg) -> dict:
    t0 = time.perf_counter()
    run(train_segmenter(store, cfg, "cpu", run_name=name, restart=True))
    return {**test_scores(store, name, infer_cfg), "train_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(RESULTS / "glas.oeem.zarr"))
    ap.add_argument("--top-k", type=int, default=20, help="confusing regions the simulated pathologist fixes")
    ap.add_argument("--iterations", type=int, default=None, help="segmentation iterations (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-only", action="store_true",
                    help="only measure how well the ranking finds wrong pseudo-labels (no retraining)")
    args = ap.parse_args()
    glas_root()
    store = ProjectStore.open(args.project)
    if store.load_run("cams") is None:
        raise SystemExit(f"{args.project} has no stage-1 result; run benchmarks/stage1_glas.py first")
    cfg = preset("cpu")
    seg = copy.deepcopy(cfg.segmentation)
    if args.iterations:
        seg.iterations = args.iterations
    infer = copy.deepcopy(cfg.inference)
    infer.scales, infer.flip = (1.0,), True
    base_name = "tables-l_norm-s0" if args.iterations is None else f"gain-none-{seg.iterations}"
    clear_corrections(store)
    t0 = time.perf_counter()
    print(f"baseline ({base_name}): training or resuming", flush=True)
    run(train_segmenter(store, seg, "cpu", run_name=base_name, on_mismatch="restart"))
    base = test_scores(store, base_name, infer)

    regions, maps = rank_regions(store, base_name, infer)
    chosen = regions[: args.top_k]
    quality = ranking_quality(store, maps, chosen)
    print("ranking: " + ", ".join(f"{k} {v:.3f}" for k, v in quality.items()), flush=True)
    if args.rank_only:
        write_json("annotation_ranking.json", {"machine": machine(), "top_k": args.top_k, "baseline_run": base_name,
                                               **quality})
        return
    top_masks: dict[str, np.ndarray] = {}
    for r in chosen:
        m = region_mask(*maps[r.image], r)
        top_masks[r.image] = top_masks.get(r.image, np.zeros_like(m)) | m
    rng = np.random.default_rng(args.seed)
    train_names = store.names("train")
    rand_masks: dict[str, np.ndarray] = {}
    for r in chosen:  # squares of the same areas at random places
        n = train_names[rng.integers(len(train_names))]
        h, w = store.shape(n)
        side = min(int(round(np.sqrt(r.area))), h, w)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        m = rand_masks.setdefault(n, np.zeros((h, w), bool))
        m[y:y + side, x:x + side] = True
    train_px = sum(int(np.prod(store.shape(n))) for n in train_names)
    wrong_in = {k: sum(int((masks[n] & (maps[n][1] != store.mask(n))).sum()) for n in masks)
                for k, masks in (("top", top_masks), ("random", rand_masks))}

    seg_c = copy.deepcopy(seg)
    seg_c.label_source = "corrected"
    results = {"none": {**base, "pixels": 0, "wrong_pseudo_pixels_fixed": 0}}
    for key, masks in (("top", top_masks), ("random", rand_masks)):
        clear_corrections(store)
        px = apply(store, masks)
        print(f"{key}: {px} px corrected in {len(masks)} images ({wrong_in[key]} of them were wrong); retraining",
              flush=True)
        results[key] = {**retrain(store, seg_c, f"gain-{key}-k{args.top_k}-{seg.iterations}", infer),
                        "pixels": px, "wrong_pseudo_pixels_fixed": wrong_in[key], "images": len(masks)}
    clear_corrections(store)

    print(f"\nAnnotation gain on GlaS testA: top-{args.top_k} confusing regions vs random, "
          f"{seg.iterations} iterations, cpu preset\n")
    rows = []
    for key, label in (("none", "no corrections"), ("top", f"top-{args.top_k} confusing regions"),
                       ("random", "same pixels at random")):
        r = results[key]
        rows.append((label, f"{r['pixels']:,}", f"{100 * r['pixels'] / train_px:.2f}%",
                     f"{r['wrong_pseudo_pixels_fixed']:,}", f"{r['mIoU']:.2f}", f"{r['mIoU'] - base['mIoU']:+.2f}"))
    print_table(rows, ("corrections", "pixels", "of train", "wrong labels fixed", "testA mIoU", "gain"))
    write_json("annotation_gain.json", {
        "machine": machine(), "top_k": args.top_k, "iterations": seg.iterations, "baseline_run": base_name,
        "train_pixels": train_px, "ranking": quality, "regions": [r.as_dict() for r in chosen], "results": results,
        "total_min": (time.perf_counter() - t0) / 60})


if __name__ == "__main__":
    main()
