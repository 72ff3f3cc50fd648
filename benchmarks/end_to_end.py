"""The whole method as a user runs it: ``oeem run`` on real GlaS with a preset, timed end to end (stage 1, both
self-training rounds of stage 2, every prediction), with the quality of each stage on the validation split
(10 training images held out), the training images and testA.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/end_to_end.py [--preset cpu] [--set KEY=VALUE ...]
        [--budget 30m] [--precision fp32] [--data sample --val-images 0]

Resumable: the project (``benchmarks/results/end_to_end-NAME.oeem.zarr``) keeps every finished stage, so a
second call only scores again; ``--fresh`` starts over. Writes ``benchmarks/results/end_to_end-NAME.json`` (NAME:
``--name``, by default the preset).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from dataclasses import asdict

import numpy as np
from _common import RESULTS, glas_root, machine, print_table, write_json

from pipeline.budget import parse_duration
from pipeline.config import PRECISION_SECTIONS, PRECISIONS, PipelineConfig, parse_settings
from pipeline.metrics import confusion, from_confusion
from pipeline.progress import run
from pipeline.stages.run import run_all
from pipeline.stages.selftrain import next_round_labels
from pipeline.store import ProjectStore
from pipeline.store.project import create_project, project_config

VAL_IMAGES = 10  # the same seeded split as benchmarks/ablation.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. segmentation.loss=l_norm")
    ap.add_argument("--fresh", action="store_true", help="delete the project and start over")
    ap.add_argument("--name", help="name of the project and JSON (default: the preset), so variants can sit side "
                                   "by side, e.g. --name cpu-rounds2")
    ap.add_argument("--budget", default=None, help="as `oeem run --budget`: the planner fits the run into it")
    ap.add_argument("--precision", choices=PRECISIONS, default=None,
                    help="every stage's precision (default: the preset's, auto: bf16 where native)")
    ap.add_argument("--data", default=None, help="image folder, or `sample` (default: $OEEM_GLAS_ROOT)")
    ap.add_argument("--val-images", type=int, default=VAL_IMAGES, help="training images held out (default: 10)")
    args = ap.parse_args()
    budget_s = parse_duration(args.budget) if args.budget else None
    overrides = parse_settings(args.set)
    if args.precision:
        overrides.update({f"{section}.precision": args.precision for section in PRECISION_SECTIONS})
    name = args.name or args.preset
    path = RESULTS / f"end_to_end-{name}.oeem.zarr"
    if args.fresh and path.exists():
        shutil.rmtree(path)
    t0 = time.perf_counter()
    resumed = path.exists()  # then the wall time is only what this call ran
    if resumed:
        store = ProjectStore.open(path)
    else:
        store = create_project(args.data or glas_root(), path, val_images=args.val_images, seed=0)
    cfg = project_config(store, args.preset, overrides)
    stage_seconds: dict[str, float] = {}
    current: list = [None, time.perf_counter()]  # the stage now running and when it started

    def switch_to(stage: str | None) -> None:  # wall time per stage, as the progress reports it
        now = time.perf_counter()
        if current[0] is not None:
            stage_seconds[current[0]] = stage_seconds.get(current[0], 0.0) + now - current[1]
        current[:] = [stage, now]

    report = run(run_all(store, cfg, "auto", budget_s=budget_s), lambda p: switch_to(p.stage))
    switch_to(None)
    wall = time.perf_counter() - t0
    rounds = (store.load_run("selftrain") or {}).get("rounds", [])
    nan = float("nan")
    cam_val = report["cams"].get("val", {}).get("pseudo", {}).get("mIoU", nan)  # no validation images: nan
    rows = [("stage 1: pseudo-masks (train / val)", f"{report['cams']['pseudo']['mIoU']:.2f}", f"{cam_val:.2f}", "")]
    for r in rounds:
        rows.append((f"self-training round {r['round']}: pseudo-masks (train / val)",
                     f"{r['train']['after']['mIoU']:.2f}", f"{r.get('val', {}).get('after', {}).get('mIoU', nan):.2f}",
                     ""))
    ev = {s: report.get(f"evaluation-{s}", {}) for s in ("train", "val", "test")}
    rows.append(("prediction (train / val / testA)", f"{ev['train'].get('mIoU', float('nan')):.2f}",
                 f"{ev['val'].get('mIoU', float('nan')):.2f}", f"{ev['test'].get('mIoU', float('nan')):.2f}"))
    restricted = restricted_prediction(store, cfg)
    rows.append(("prediction restricted by the patch labels (train / val)",
                 f"{restricted['train']['mIoU']:.2f}", f"{restricted['val']['mIoU']:.2f}", ""))
    print_table(rows, ("mIoU", "train", "validation", "testA"))
    print()
    print_table([(split, f"{e.get('object_F1', float('nan')):.2f}", f"{e.get('object_Dice', float('nan')):.2f}",
                  f"{e.get('object_Hausdorff', float('nan')):.1f}") for split, e in ev.items() if e],
                ("prediction as glands", "object F1", "object Dice", "object Hausdorff"))
    print()
    print_table([(k, f"{v / 60:.1f}") for k, v in stage_seconds.items()] + [("whole run", f"{wall / 60:.1f}")],
                ("stage", "min"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak_mb:.0f} MB")
    write_json(f"end_to_end-{name}.json", {
        "machine": machine(), "preset": args.preset, "overrides": overrides, "budget_s": budget_s,
        "data": args.data or "GlaS", "val_images": args.val_images, "config": asdict(cfg),
        "wall_seconds": wall, "resumed": resumed, "stage_seconds": stage_seconds, "peak_rss_mb": peak_mb,
        "precision": {k: (report.get(k) or {}).get("precision") for k in ("classifier", "cams", "segmentation")},
        "pseudo": {"train": report["cams"]["pseudo"]["mIoU"], "val": cam_val},
        "selftrain": [{"round": r["round"], "train": r["train"]["after"]["mIoU"],
                       "val": r.get("val", {}).get("after", {}).get("mIoU", nan)} for r in rounds],
        "evaluation": ev, "restricted_prediction": restricted, "schedule": budget_schedule(store)})


def budget_schedule(store: ProjectStore) -> dict | None:
    """What a budgeted run's planner kept (its record in the project): classifier epochs, CAM scales, segmentation
    iterations (as resized before each training), self-training rounds and the time it expected; None without a
    budget."""
    rec = store.load_run("budget")
    if not rec:
        return None
    cfg = rec["config"]
    return {"budget_s": rec.get("budget_s"), "classifier_epochs": cfg["classifier"]["epochs"],
            "cam_scales": cfg["cam"]["scales"], "segmentation_iterations": cfg["segmentation"]["iterations"],
            "rounds": cfg["selftrain"]["rounds"], "resized": rec.get("resized"),
            "expected_s": (rec.get("estimate") or {}).get("total_s")}


def restricted_prediction(store: ProjectStore, cfg: PipelineConfig) -> dict[str, dict]:
    """The final model's prediction with the information its labels had (the patch labels), as a further
    self-training round would make it; scored here, nothing written."""
    out = {}
    for split in ("train", "val"):
        cm = np.zeros((2, 2), np.int64)
        for n in store.names(split):
            truth = store.mask(n)
            if truth is None or not (store.has(n, "patch_labels") and store.has(n, "prob")):
                continue
            cm += confusion(next_round_labels(store, n, cfg.patches.size, cfg.cam), truth)
        out[split] = from_confusion(cm) if cm.sum() else {"mIoU": float("nan")}
    return out


if __name__ == "__main__":
    main()
