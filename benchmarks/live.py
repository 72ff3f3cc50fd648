"""Training while tagging (``pipeline.stages.live``): how good the background classifier's pseudo-masks are after how
many minutes, beside the batch stage 1 at the same tags.

GlaS with the 19 training images `oeem suggest` picked for the 25 % budget (``weak_labels.json``'s
``suggested-25-s0-cpu``) tagged by the 5 % rule on their masks, the training masks removed, the `cpu` preset. The
classifier trains in chunks as the dock's *Train while tagging* does; about every ``--every`` seconds the
pseudo-masks of the 10 validation images are made from the checkpoint as stage 1 makes them (their patch labels
from their masks, the protocol of stage 1's validation pseudo-mask figure) and scored. The tags are all there from
the start: this measures how fast the background training gets good, not a tagging session. The scoring pauses
the training; ``train_s`` is the training's own time.

    python benchmarks/live.py --minutes 8 [--precision fp32] [--threads 1]   # 1: as the dock trains on 2 cores
    python benchmarks/live.py --peer          # the forest preview on the same tags, added to the result file

The peer: the preview (``pipeline.review.preview``, the ilastik-style forest) learned from the same tags, scored on
the same validation images - what the dock shows before the classifier's first checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, print_table, write_json
from weak_labels import TRUTH, truth_tags

from pipeline.metrics import score
from pipeline.progress import run
from pipeline.stages.live import pseudo_mask_now, train_while_tagging
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench" / "live.oeem.zarr"


def peer() -> None:
    from pipeline.review.preview import ProjectPreview

    store = ProjectStore.open(WORK)
    cfg = project_config(store, save=False)
    preview = ProjectPreview(store, cfg.patches, cfg.preview)
    val = store.names("val")
    t = time.perf_counter()
    preds = [preview.predict(n).mask for n in val]
    found = {"val_mIoU": round(score(preds, [store.mask(n) for n in val])["mIoU"], 2),
             "seconds": round(time.perf_counter() - t, 1), "pixels": preview.pixels, "images": preview.images}
    print("forest preview on the same tags:", found)
    for path in sorted(RESULTS.glob("live-*.json")):
        data = json.loads(path.read_text())
        data["forest_peer"] = found
        last = data.pop("provenance")  # the training run's (kept once); this file's is then the --peer's
        data.setdefault("run_provenance", last)
        write_json(path.name, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--every", type=float, default=60.0, help="seconds of training between scorings")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of the training (default: the classifier's; the dock uses all but one)")
    ap.add_argument("--peer", action="store_true", help="only the forest preview on the same tags (after a run)")
    args = ap.parse_args()
    if args.peer:
        peer()
        return
    picks = json.loads((RESULTS / "weak_labels.json").read_text())["runs"]["suggested-25-s0-cpu"]["images"]
    truth = ProjectStore.open(TRUTH)
    if WORK.exists():
        shutil.rmtree(WORK)
    shutil.copytree(TRUTH, WORK)
    store = ProjectStore.open(WORK)
    cfg = project_config(store, "cpu", {"classifier.precision": args.precision, "cam.precision": args.precision})
    for n in store.names("train"):
        store.delete(n, "mask")
    for n in picks:
        store.save_patch_tags(n, truth_tags(truth, n, cfg.patches), cfg.patches.size, cfg.patches.stride)
    val = store.names("val")
    rows: list[dict] = []
    clock = {"train": 0.0, "since": 0.0, "last": time.perf_counter()}

    def on_checkpoint(model, live) -> None:
        now = time.perf_counter()
        clock["train"] += now - clock["last"]
        clock["since"] += now - clock["last"]
        if clock["since"] >= args.every or clock["train"] >= args.minutes * 60:
            clock["since"] = 0.0
            t = time.perf_counter()
            preds = [pseudo_mask_now(model, store, n, cfg, "cpu") for n in val]
            row = {"train_s": round(clock["train"], 1), "steps": live.steps, "images": live.images,
                   "val_pseudo_mIoU": round(score(preds, [store.mask(n) for n in val])["mIoU"], 2),
                   "scoring_s": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(row, flush=True)
        clock["last"] = time.perf_counter()

    run(train_while_tagging(store, cfg, "cpu", chunk_steps=args.chunk, on_checkpoint=on_checkpoint,
                            stop=lambda live: clock["train"] >= args.minutes * 60, threads=args.threads))
    print_table([(r["train_s"], r["steps"], r["val_pseudo_mIoU"]) for r in rows],
                ("training s", "steps", "val pseudo-mask mIoU"))
    import torch

    from pipeline.device import precision_name, resolve_precision

    precision = precision_name(resolve_precision(args.precision, torch.device("cpu")))
    threads = f"-{args.threads}thread" if args.threads else ""
    write_json(f"live-{precision}{threads}.json", {
        "rows": rows, "images_tagged": len(picks), "chunk": args.chunk, "machine": machine(),
        "precision": precision, "minutes": args.minutes, "threads": args.threads or "the classifier's (2 here)",
        "batch_stage1": {"file": "weak_labels.json", "run": "suggested-25-s0-cpu", "classifier_s": 276.4,
                         "passes": 32, "precision": "bf16", "val_pseudo_mIoU": 70.59}})

if __name__ == "__main__":
    main()
