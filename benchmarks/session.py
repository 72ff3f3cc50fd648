"""A tagging session at a pathologist's pace with the classifier training meanwhile, then *Run all*: how many minutes
from the last tag to the pseudo-masks, and to the end of the run, beside the batch run on the same tags.

GlaS's training masks are removed; the 19 images `oeem suggest` picked for the 25 % budget (``weak_labels.json``'s
``suggested-25-s0-cpu``, the batch peer) are tagged in that order by a simulated pathologist with the panel's own
actions (``pipeline.review.tagging.Tagger``): the whole-image key with the image's commonest tag, then one brush
stroke per group of patches that need another tag (``weak_labels.py``'s flow without proposals), one action every
``--pace`` seconds, the truth being the 5 % rule on the mask. Meanwhile *Train while tagging* runs as the dock runs
it on 2 cores (one thread, chunks of 50 steps, in a thread of the same process). After the last action *Run all*
starts at once: it stops the training (a chunk cut short is lost) and continues from its checkpoint by the credit
rule (``pipeline.stages.live``). The clock runs from the last tag; ``--until cams`` stops after stage 1.

    python benchmarks/session.py [--precision fp32] [--until cams]

The pseudo-masks' quality: the 10 validation images' pseudo-masks from the final classifier, made as stage 1 makes
them (``pseudo_mask_now``, the protocol of ``live.py``'s batch figure, 70.59 after the batch stage 1).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, print_table, write_json
from weak_labels import TRUTH, _walk, stroke_groups, truth_tags

from pipeline.errors import OEEMError
from pipeline.metrics import score
from pipeline.progress import run
from pipeline.review.tagging import Tagger
from pipeline.stages.live import pseudo_mask_now, train_while_tagging
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench" / "session.oeem.zarr"
BATCH_RUN = "suggested-25-s0-cpu"  # weak_labels.json's batch run at the same tags; its stage 1 in live-bf16.json


def batch_peer() -> dict:
    """The batch run at the same tags, from the tracked files: its stage 1's validation pseudo-masks and whole run."""
    stage1 = json.loads((RESULTS / "live-bf16.json").read_text())["batch_stage1"]
    return {"file": "weak_labels.json", "run": BATCH_RUN, "val_pseudo_mIoU_stage1": stage1["val_pseudo_mIoU"],
            "stage1_source": f"live-bf16.json's batch_stage1 (classifier {stage1['classifier_s']} s, "
                             f"{stage1['precision']})"}


def actions(truth: ProjectStore, store: ProjectStore, name: str, cfg) -> list:
    """The pathologist's actions on ``name``, each a callable that tags through the panel's Tagger."""
    truth_t = truth_tags(truth, name, cfg)
    tagger = Tagger(store, name, cfg)
    commonest = int(np.bincount(truth_t, minlength=4)[1:].argmax() + 1)
    after_key = np.full_like(truth_t, commonest)
    rows, cols, _ = tagger._axes()
    out = [lambda: tagger.set_image(commonest)]
    for tag, cells in stroke_groups(after_key, truth_t, tagger):
        path = np.array([(rows[r], cols[c]) for r, c in _walk(cells)])
        out.append(lambda path=path, tag=tag: tagger.set_patches(tagger.patches_along(path), tag))
    return out


def retried(action) -> None:
    """An action, again while another writer (the training's checkpoint) holds the project for a moment."""
    for _ in range(100):
        try:
            action()
            return
        except OEEMError:
            time.sleep(0.05)
    raise SystemExit("the project stayed busy for 5 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--pace", type=float, default=3.0, help="seconds per action")
    ap.add_argument("--until", default="all", choices=("all", "cams"))
    args = ap.parse_args()
    import torch

    from pipeline.device import precision_name, resolve_precision
    from pipeline.stages.classify import load_classifier
    from pipeline.stages.run import run_all

    picks = json.loads((RESULTS / "weak_labels.json").read_text())["runs"][BATCH_RUN]["images"]
    truth = ProjectStore.open(TRUTH)
    if WORK.exists():
        shutil.rmtree(WORK)
    shutil.copytree(TRUTH, WORK)
    store = ProjectStore.open(WORK)
    cfg = project_config(store, "cpu", {"classifier.precision": args.precision, "cam.precision": args.precision,
                                        "segmentation.precision": args.precision}, save=True)
    for n in store.names("train"):
        store.delete(n, "mask")
    precision = precision_name(resolve_precision(args.precision, torch.device("cpu")))

    # the background training, as the dock runs it: one thread, cancelled within a step by Run all
    cancel, live_log = threading.Event(), []

    def background() -> None:
        job = train_while_tagging(store, cfg, "cpu", chunk_steps=50, threads=1,
                                  on_checkpoint=lambda model, s: live_log.append((time.perf_counter(), s.record())))
        for _ in job:
            if cancel.is_set():
                job.close()
                return

    plan = [a for n in picks for a in actions(truth, store, n, cfg.patches)]
    trainer = threading.Thread(target=background)
    t0 = time.perf_counter()
    trainer.start()
    next_at = time.perf_counter()
    for i, action in enumerate(plan):
        time.sleep(max(0.0, next_at - time.perf_counter()))
        retried(action)
        next_at += args.pace
        if i % 20 == 0:
            print(f"{time.perf_counter() - t0:6.0f} s  action {i + 1}/{len(plan)}; training: "
                  f"{live_log[-1][1]['steps'] if live_log else 0} steps", flush=True)
    last_tag = time.perf_counter()
    cancel.set()  # Run all: the training stops within a step
    trainer.join()
    live = live_log[-1][1] if live_log else {}
    print(f"last tag at {last_tag - t0:.0f} s: {len(plan)} actions on {len(picks)} images; the training had saved "
          f"{len(live_log)} checkpoints, {live.get('steps', 0)} steps", flush=True)

    marks: dict[str, float] = {}

    def on_progress(p) -> None:
        marks.setdefault(p.stage, time.perf_counter() - last_tag)  # when each step started, from the last tag

    job = run_all(store, cfg, "cpu")
    if args.until == "cams":
        from pipeline.stages.graph import run_step, steps

        def stage1():
            for step in steps(cfg)[:3]:
                yield from run_step(step, store, cfg, "cpu")
        job = stage1()
    report = run(job, on_progress)
    end = time.perf_counter() - last_tag
    cls = store.load_run("classifier")
    order = list(marks)  # the step after the CAMs started when they ended
    after_cams = order[order.index("cams") + 1:] if "cams" in order else []
    cams_end = marks[after_cams[0]] if after_cams else end
    model, _ = load_classifier(store, "cpu")
    val = store.names("val")
    val_pseudo = score([pseudo_mask_now(model, store, n, cfg, "cpu") for n in val],
                       [store.mask(n) for n in val])["mIoU"]
    result = {
        "precision": precision, "pace_s": args.pace, "images_tagged": len(picks), "actions": len(plan),
        "tagging_s": round(last_tag - t0, 1), "live": live, "live_checkpoints": len(live_log),
        "classifier": {k: cls.get(k) for k in ("epochs_run", "passes", "seconds", "continued_from_live")},
        "from_last_tag_s": {"steps_started": {k: round(v, 1) for k, v in marks.items()},
                            "pseudo_masks": round(cams_end, 1), "end": round(end, 1), "until": args.until},
        "val_pseudo_mIoU": round(val_pseudo, 2), "batch_peer": batch_peer(), "machine": machine(),
    }
    if args.until == "all":
        result["val_mIoU"] = round(report["evaluation-val"]["mIoU"], 2)
        result["testA_mIoU"] = round(report["evaluation-test"]["mIoU"], 2)
    print_table([(precision, f"{last_tag - t0:.0f}", f"{cams_end / 60:.1f}",
                  f"{end / 60:.1f}" if args.until == "all" else "-", f"{val_pseudo:.2f}",
                  result.get("testA_mIoU", "-"))],
                ("precision", "tagging s", "min to pseudo-masks", "min to end of run", "val pseudo mIoU", "testA mIoU"))
    write_json(f"session-{precision}.json", result)


if __name__ == "__main__":
    main()
