"""Issue 10's ablation on real GlaS: each quality lever on/off, scored on the validation split (10 training images
held out, used only to choose settings) and reported on testA, with minutes per run.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py stage1           # project + stage 1 once
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py stage2 NAME [--set KEY=VALUE ...] [--seed S]
    python benchmarks/ablation.py report                                                # the table, from JSON

Every stage-2 run is a named checkpoint in the project (``segmentation-abl-NAME-sSEED``), so an interrupted run
resumes and a finished one is only scored again. Rows accumulate in ``benchmarks/results/ablation.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import numpy as np
import torch

from _common import RESULTS, glas_root, machine, print_table
from pipeline.config import apply_overrides, preset, to_dict
from pipeline.progress import run
from pipeline.store import ProjectStore, atomic_write_json

PROJECT = RESULTS / "ablation.oeem.zarr"
OUT = RESULTS / "ablation.json"
VAL_IMAGES = 10


def load_rows() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"machine": machine(), "stage1": None, "rows": []}


def save_rows(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, data)


def cmd_stage1(args) -> None:
    from pipeline.cams import make_cams
    from pipeline.classify import make_patch_labels, train_classifier
    from pipeline.project import create_project

    root = glas_root()
    cfg = preset("cpu")
    if args.set:
        apply_overrides(cfg, parse_sets(args.set))
    t0 = time.perf_counter()
    store = create_project(root, PROJECT, overwrite=True, val_images=VAL_IMAGES, seed=0)
    labels = make_patch_labels(store, cfg.patches)
    t1 = time.perf_counter()
    cls = run(train_classifier(store, cfg.classifier, cfg.patches, "cpu", restart=True))
    t2 = time.perf_counter()
    cams = run(make_cams(store, cfg.cam, cfg.patches, "cpu"))
    t3 = time.perf_counter()
    data = load_rows()
    data["stage1"] = {"config": {"classifier": to_dict(cfg.classifier), "cam": to_dict(cfg.cam)},
                      "patches": labels, "setup_s": t1 - t0, "classifier_s": t2 - t1, "cams_s": t3 - t2,
                      "cam_mIoU": cams["cam"]["mIoU"], "pseudo_mIoU": cams["pseudo"]["mIoU"],
                      "val": cams.get("val"), "validation_images": store.root.attrs.get("validation")}
    save_rows(data)
    print(json.dumps(data["stage1"], indent=2))


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1] in "[{0123456789-tfn\"" else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("stage1")
    s1.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. classifier.epochs=6")
    args = ap.parse_args()
    {"stage1": cmd_stage1}[args.cmd](args)


if __name__ == "__main__":
    main()
