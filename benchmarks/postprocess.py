"""What cleaning the predicted mask buys (``inference.drop_glands_below`` / ``inference.fill_holes_below``).

Each trained model of a project predicts every image once (the cpu preset's scales and flip, probabilities kept in
memory); then each (drop, fill) pair is scored per split, as the mean over the models (e.g. seeds). The pair is
chosen on the validation split; train and testA are reported. The pseudo-masks the models learned from are scored
cleaned the same way, so "the prediction beats its labels" is checked against labels given the same help.

    python benchmarks/postprocess.py PROJECT [RUN ...] [--drop 0,500,1000,2000] [--fill 0,1000,2000,4000,8000]

RUN is a named segmentation run of the project (``-`` or nothing: the project's own model). Writes
``benchmarks/results/postprocess.json`` (``--json NAME`` for another name).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
import torch
from _common import machine, print_table, scored_splits, write_json

from pipeline.config import preset
from pipeline.metrics import confusion, from_confusion
from pipeline.stages.infer import predict_probs
from pipeline.stages.postprocess import clean_mask
from pipeline.stages.segment import load_segmenter
from pipeline.store import ProjectStore

SPLITS = ("val", "train", "test")


def gland_probs(store: ProjectStore, run: str | None, names: list[str]) -> dict[str, np.ndarray]:
    """Each image's gland probability from one model (float16 to keep 145 GlaS images in ~150 MB)."""
    model, seg_cfg = load_segmenter(store, run, "cpu")
    infer = preset("cpu").inference
    return {n: predict_probs(model, store.image(n), infer, torch.device("cpu"), seg_cfg)[1].astype(np.float16)
            for n in names}


def miou(masks: dict[str, np.ndarray], truth: dict[str, np.ndarray], names: list[str]) -> float:
    return from_confusion(sum(confusion(masks[n], truth[n]) for n in names))["mIoU"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project")
    ap.add_argument("runs", nargs="*", default=["-"])
    ap.add_argument("--drop", default="0,500,1000,2000", help="drop_glands_below values (px)")
    ap.add_argument("--fill", default="0,1000,2000,4000,8000,16000", help="fill_holes_below values (px)")
    ap.add_argument("--json", default="postprocess.json", help="results file name in benchmarks/results/")
    args = ap.parse_args()
    store = ProjectStore.open(args.project, mode="r")
    splits = scored_splits(store, SPLITS)
    names = [n for s in SPLITS for n in splits[s]]
    truth = {n: store.mask(n) for n in names}
    pseudo = {n: store.read(n, "pseudo") for n in splits["train"] + splits["val"] if store.has(n, "pseudo")}
    runs = [None if r == "-" else r for r in args.runs]
    t0 = time.perf_counter()
    probs = {r: gland_probs(store, r, names) for r in runs}
    predict_s = time.perf_counter() - t0
    drops = [int(v) for v in args.drop.split(",")]
    fills = [int(v) for v in args.fill.split(",")]

    rows, t0 = [], time.perf_counter()
    for drop, fill in itertools.product(drops, fills):
        row = {"drop_glands_below": drop, "fill_holes_below": fill}
        for split in SPLITS:
            per_run = [miou({n: clean_mask(probs[r][n] > 0.5, drop, fill) for n in splits[split]}, truth,
                            splits[split]) for r in runs]
            row[split] = {"per_run": per_run, "mean": statistics.mean(per_run),
                          "sd": statistics.stdev(per_run) if len(per_run) > 1 else 0.0}
        for split in ("train", "val"):
            if pseudo and all(n in pseudo for n in splits[split]):
                row[f"labels_{split}"] = miou({n: clean_mask(pseudo[n], drop, fill) for n in splits[split]}, truth,
                                              splits[split])
        rows.append(row)
    clean_s = (time.perf_counter() - t0) / (len(rows) * len(runs) * len(names))
    best = max(rows, key=lambda r: r["val"]["mean"])

    def fmt(r, split):
        return f"{r[split]['mean']:.2f} ± {r[split]['sd']:.2f}"
    print(f"{len(runs)} model(s) of {args.project}; mean ± sd over them; labels = the pseudo-masks cleaned the "
          f"same way")
    print_table([(r["drop_glands_below"], r["fill_holes_below"], fmt(r, "val"), fmt(r, "train"),
                  f"{r.get('labels_train', float('nan')):.2f}", fmt(r, "test")) for r in rows],
                ("drop <", "fill <", "val", "train", "labels train", "testA"))
    print(f"chosen on validation: drop < {best['drop_glands_below']} px, fill < {best['fill_holes_below']} px; "
          f"cleaning takes {1000 * clean_s:.1f} ms per image")
    write_json(args.json, {"machine": machine(), "project": str(args.project), "runs": args.runs,
                           "predict_s": predict_s, "clean_ms_per_image": 1000 * clean_s, "rows": rows,
                           "chosen_on_val": {k: best[k] for k in ("drop_glands_below", "fill_holes_below")}})


if __name__ == "__main__":
    main()
