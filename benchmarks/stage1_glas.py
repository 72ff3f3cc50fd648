"""Stage 1 on real GlaS train (85 images) with the ``cpu`` preset: classifier training speed and FLOP/s,
CAM and pseudo-mask mIoU, and per-patch vs whole-image CAM generation side by side.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/stage1_glas.py [--epochs N] [--project PATH]

The project it makes (default benchmarks/results/glas.oeem.zarr) is reused by glas_tables.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from _common import RESULTS, glas_root, machine, matmul_peak_gflops, print_table, write_json
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import preset
from pipeline.io.data import find_samples
from pipeline.metrics import confusion, from_confusion
from pipeline.progress import run
from pipeline.stages.cams import cam_and_pseudo, make_cams
from pipeline.stages.classify import load_classifier, make_patch_labels, train_classifier
from pipeline.stages.models import build_classifier
from pipeline.store import ProjectStore


def train_flops_per_patch(cfg) -> float:
    model = build_classifier(cfg)
    x = torch.randn(4, 3, cfg.input_size, cfg.input_size)
    with FlopCounterMode(display=False) as fc:
        F.binary_cross_entropy_with_logits(model(x), torch.ones(4, 2)).backward()
    return fc.get_total_flops() / 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's classifier epochs")
    ap.add_argument("--project", default=str(RESULTS / "glas.oeem.zarr"))
    ap.add_argument("--compare-images", type=int, default=8, help="images for the patch-vs-image CAM comparison")
    ap.add_argument("--reuse-classifier", action="store_true",
                    help="keep the project and its finished classifier (same settings); redo CAMs only")
    args = ap.parse_args()
    root = glas_root()
    cfg = preset("cpu")
    if args.epochs:
        cfg.classifier.epochs = args.epochs
    peak = matmul_peak_gflops()
    samples = [s for s in find_samples(root / "train")] + [s for s in find_samples(root / "testA")]
    old = ProjectStore.open(args.project).load_run("classifier") if args.reuse_classifier else None
    same = old is not None and old["config"] == json.loads(json.dumps(asdict(cfg.classifier)))  # tuples -> lists
    if same and old["epochs_run"] == cfg.classifier.epochs:
        store, rec = ProjectStore.open(args.project), old
        labels = store.load_run("patches")["summary"]
        train_s = rec["seconds"]  # measured when it was trained
    else:
        store = ProjectStore.create(args.project, samples, overwrite=True)
        labels = make_patch_labels(store, cfg.patches)
        t = time.perf_counter()
        rec = run(train_classifier(store, cfg.classifier, cfg.patches, restart=True))
        train_s = time.perf_counter() - t
    flops = train_flops_per_patch(cfg.classifier) * rec["n_patches"] * cfg.classifier.epochs
    cams = run(make_cams(store, cfg.cam, cfg.patches))

    # per-patch (reference) vs whole-image CAMs on the same images, same model
    model, cls_cfg = load_classifier(store)
    names = store.names("train")[: args.compare_images]
    compare = {}
    for mode in ("patch", "image"):
        cam_cfg = copy.deepcopy(cfg.cam)
        cam_cfg.mode = mode
        cm_c, cm_p = np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64)
        t0 = time.perf_counter()
        for n in names:
            cam, pseudo = cam_and_pseudo(model, store.image(n), store.read(n, "patch_corners"),
                                         store.read(n, "patch_labels"), cfg.patches, cls_cfg, cam_cfg,
                                         torch.device("cpu"))
            cm_c += confusion(cam.argmax(0), store.mask(n))
            cm_p += confusion(pseudo, store.mask(n))
        compare[mode] = {"seconds_per_image": (time.perf_counter() - t0) / len(names),
                         "cam_mIoU": from_confusion(cm_c)["mIoU"], "pseudo_mIoU": from_confusion(cm_p)["mIoU"]}

    stage1_s = train_s + cams["seconds"]
    result = {
        "machine": machine(), "preset": "cpu", "config": {"classifier": rec["config"], "cam": cams["config"]},
        "patches": labels, "classifier_train_s": train_s, "patches_per_s": rec["patches_per_s"],
        "train_gflop_per_s": flops / train_s / 1e9, "matmul_peak_gflop_per_s": peak,
        "cam_s": cams["seconds"], "stage1_total_s": stage1_s,
        "cam_mIoU": cams["cam"]["mIoU"], "pseudo_mIoU": cams["pseudo"]["mIoU"],
        "paper": {"cam_mIoU": 67.02, "pseudo_mIoU": 70.04},
        "cam_mode_comparison": {"images": len(names), **compare},
        "project": args.project,
    }
    print(f"\nStage 1, cpu preset, GlaS train ({labels['images']} images, {labels['patches']} patches)\n")
    print_table([
        ("classifier training", f"{train_s / 60:.1f} min", f"{rec['patches_per_s']:.0f} patches/s"),
        ("achieved training FLOP/s", f"{result['train_gflop_per_s']:.1f} GFLOP/s",
         f"{100 * result['train_gflop_per_s'] / peak:.0f}% of matmul peak {peak:.0f} GFLOP/s"),
        (f"CAM generation ({cfg.cam.mode}, scales {cfg.cam.scales})", f"{cams['seconds'] / 60:.1f} min",
         f"{cams['seconds_per_image']:.2f} s/image"),
        ("stage 1 total", f"{stage1_s / 60:.1f} min", "aim <= 30 min"),
        ("CAM mIoU (train)", f"{result['cam_mIoU']:.2f}", "paper 67.02 (ImageNet init)"),
        ("pseudo-mask mIoU (train)", f"{result['pseudo_mIoU']:.2f}", "paper 70.04 (ImageNet init)"),
    ], ("what", "value", "note"))
    print(f"\nCAM generation, {len(names)} images, same model\n")
    p, i = compare["patch"], compare["image"]
    print_table([
        ("per patch (reference)", f"{p['seconds_per_image']:.2f}", f"{p['cam_mIoU']:.2f}", f"{p['pseudo_mIoU']:.2f}"),
        ("whole image (FCN)", f"{i['seconds_per_image']:.2f}", f"{i['cam_mIoU']:.2f}", f"{i['pseudo_mIoU']:.2f}"),
        ("ratio patch/image", f"{p['seconds_per_image'] / i['seconds_per_image']:.1f}x", "", ""),
    ], ("mode", "s/image", "CAM mIoU", "pseudo mIoU"))
    write_json("stage1_glas.json", result)


if __name__ == "__main__":
    main()
