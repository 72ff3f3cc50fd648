"""``oeem`` commands that run the method's stages: patches, train-cls (and train-live, while tagging), cams,
train-seg, selftrain, predict, evaluate, and run (all of them).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.cli.common import add_common, add_fast, add_model_name, config_for, drive, is_main, open_project

# commands that write into the project: one at a time per project (the writer lock)


def cmd_patches(args) -> None:
    from pipeline.stages.classify import make_patch_labels

    store = open_project(args.project)
    cfg = config_for(args, store)
    s = make_patch_labels(store, cfg.patches)
    print(f"{s['patches']} patches from {s['images']} images: {s['with_gland']} with gland, "
          f"{s['with_non_gland']} with non-gland")


def cmd_train_cls(args) -> None:
    from pipeline.stages.classify import train_classifier

    store = open_project(args.project)
    cfg = config_for(args, store)
    rec = drive(train_classifier(store, cfg.classifier, cfg.patches, args.device, args.redo), "classifier")
    if not is_main():
        return
    print(f"classifier trained: {rec['n_patches']} patches, {rec['epochs_run']} passes over them in "
          f"{rec['seconds']:.0f} s "
          f"({rec['patches_per_s']:.0f} patches/s), final loss {rec['final_loss']:.4f}")


def cmd_train_live(args) -> None:
    from pipeline.progress import run
    from pipeline.stages.live import train_while_tagging

    store = open_project(args.project)
    cfg = config_for(args, store)
    print(f"training the classifier while you tag {store.path} (a checkpoint every {args.chunk} steps; Ctrl-C "
          "stops and keeps the last one)" + (f" for {args.minutes:g} min" if args.minutes else ""))
    said: list[str] = []

    def show(p) -> None:  # one line per checkpoint or wait, not a progress bar: it runs for as long as you tag
        if p.message and (not said or p.message != said[-1]):
            said.append(p.message)
            print(f"{time.strftime('%H:%M:%S')}  {p.message}", flush=True)

    try:
        rec = run(train_while_tagging(store, cfg, args.device, args.chunk, args.minutes), show)
    except KeyboardInterrupt:
        print("stopped; the last checkpoint is kept: `oeem run` continues from it")
        return
    print(f"{rec['steps']} steps, {rec['checkpoints']} checkpoints in {rec['seconds']:.0f} s; `oeem run` continues "
          "from the last one")


def cmd_cams(args) -> None:
    from pipeline.stages.cams import make_cams

    store = open_project(args.project)
    cfg = config_for(args, store)
    rec = drive(make_cams(store, cfg.cam, cfg.patches, args.device), "cams")
    print(f"CAMs and pseudo-masks for {rec['images']} images ({rec['seconds_per_image']:.2f} s/image)")
    if "cam" in rec:
        print(f"CAM mIoU {rec['cam']['mIoU']:.2f}  pseudo-mask mIoU {rec['pseudo']['mIoU']:.2f} (train, vs masks)")


def cmd_train_seg(args) -> None:
    from pipeline.stages.graph import segmentation_settings
    from pipeline.stages.update import retrain_on_corrections

    store = open_project(args.project)
    cfg = config_for(args, store)
    seg = segmentation_settings(store, cfg)
    init = None
    if args.init_from:
        from pipeline.stages.model_file import weights_from_file

        init = weights_from_file(args.init_from, seg)
    rec = drive(retrain_on_corrections(store, cfg, seg, args.device, args.keep_worse, run_name=args.name,
                                       restart=args.redo, init_weights=init), "segmentation")
    if not is_main():
        return
    print(f"segmentation trained with loss {seg.loss} on {seg.label_source} labels: "
          f"{rec['iterations_run']} iterations in {rec['seconds']:.0f} s, final loss {rec['final_loss']:.4f}")



def cmd_selftrain(args) -> None:
    from pipeline.stages.selftrain import reset_rounds, selftrain_round

    store = open_project(args.project)
    if args.reset:
        print(f"restored the stage-1 pseudo-masks of {reset_rounds(store)} images (round 0)")
        return
    cfg = config_for(args, store)
    entry = drive(selftrain_round(store, cfg), "selftrain")
    line = f"self-training round {entry['round']}: {entry['pixels_changed']} pseudo-mask pixels changed"
    if entry["untagged_images"]:
        line += f" ({entry['untagged_images']} untagged images labelled by the prediction)"
    for split in ("train", "val"):
        if split in entry:
            line += (f"; {split} pseudo-mask mIoU {entry[split]['before']['mIoU']:.2f} -> "
                     f"{entry[split]['after']['mIoU']:.2f}")
    print(line)
    print(f"next: `oeem train-seg {store.path}` trains on the refined pseudo-masks")


def cmd_predict(args) -> None:
    from pipeline.stages.infer import predict
    from pipeline.stages.instances import make_instances

    store = open_project(args.project)
    cfg = config_for(args, store)
    names = store.names(args.split) if args.split != "all" else None
    rec = drive(predict(store, cfg.inference, names, args.device, args.name), "predict")
    print(f"predicted {rec['images']} images ({rec['seconds_per_image']:.2f} s/image)")
    print_instances(drive(make_instances(store, cfg.instances, names), "instances"))


def cmd_instances(args) -> None:
    from pipeline.stages.instances import make_instances

    store = open_project(args.project)
    cfg = config_for(args, store)
    print_instances(drive(make_instances(store, cfg.instances), "instances"))


def print_instances(rec: dict) -> None:
    cfg = rec["config"]
    print(f"{rec['glands']} glands in {rec['images']} images, separated by {cfg['method']} "
          f"({1000 * rec['seconds_per_image']:.0f} ms/image)"
          + (f"; your split / merge kept on {len(rec['edited'])} image(s)" if rec.get("edited") else ""))
    if rec.get("edits_replaced"):
        print(f"note: the prediction of {', '.join(rec['edits_replaced'])} changed since you split or merged its "
              "glands: they were cut again from the new mask")


def cmd_evaluate(args) -> None:
    from pipeline.stages.infer import evaluate

    store = open_project(args.project)
    res = evaluate(store, args.split, args.labels)
    objects = {"instances": "the glands of the instances step", "components": "8-connected regions"}[res["objects"]]
    print(f"{args.labels} against the gland masks of the {args.split} images: pixel scores at dataset level, object "
          f"scores as the GlaS challenge's (objects: {objects}; the truth's: "
          f"{'its ids' if res['truth_objects'] == 'ids' else 'connected regions of a binary mask'}; Hausdorff in "
          "pixels)")
    print(SCORE_HEADER)
    for name, r in evaluation_rows(res):
        print(f"  {name:<16} {r['images']:>6}  {score_cells(r)}")
    if args.per_image:
        for n, r in res["per_image"].items():
            print(f"  {n:<23}  {score_cells(r)}")


SCORE_HEADER = (f"  {'':<16} {'images':>6}  {'mIoU':>6} {'pixel Dice':>10} {'F1':>6}  {'object F1':>9} "
                f"{'object Dice':>11} {'Hausdorff':>9}")


def evaluation_rows(ev: dict) -> list[tuple[str, dict]]:
    """The rows of an evaluation: each GlaS test part (and A+B) when the image names give every image one, else
    the split, then any parts and grades (benign, malignant, each part's)."""
    parts = ev.get("parts", {})
    covered = sum(r["images"] for p, r in parts.items() if p in ("testA", "testB")) == ev["images"]
    return list(parts.items()) if parts and covered else [(ev["split"], ev), *parts.items()]


def score_cells(r: dict) -> str:
    """mIoU, pixel Dice, F1, object F1, object Dice and object Hausdorff of one evaluation, as table cells."""
    return (f"{r['mIoU']:6.2f} {r['pixel_Dice']:10.2f} {r['F1']:6.2f}  {r['object_F1']:9.2f} {r['object_Dice']:11.2f} "
            f"{r['object_Hausdorff']:9.2f}")


def cmd_run(args) -> None:
    from pipeline.stages.run import run_all
    from pipeline.store import ProjectStore
    from pipeline.store.lock import project_writer
    from pipeline.store.project import create_project

    budget = None
    if args.budget is not None:
        from pipeline.budget import parse_duration

        budget = parse_duration(args.budget)  # before anything is made: a bad budget is one line
    if args.data is not None and not Path(args.project).exists():
        create_project(args.data, args.project, val_images=args.val_images)
    with project_writer(args.project, "oeem run"):  # re-entrant: main() may hold it already
        store = ProjectStore.open(args.project)
        cfg = config_for(args, store)
        report = drive(run_all(store, cfg, args.device, budget_s=budget), "run")
    print_report(report)


def print_report(report: dict) -> None:
    p = report["patches"]
    print("\n== OEEM report ==")
    print(f"patches: {p['patches']} from {p['images']} train images")
    c = report["classifier"]
    passes = c.get("passes", c["config"]["epochs"])
    over = f" ({passes} passes over the patches)" if passes != c["config"]["epochs"] else ""
    print(f"classifier: {c['config']['epochs']} epochs{over}, {c.get('patches_per_s') or 0:.0f} patches/s")
    cams = report["cams"]
    scales = ", ".join(f"{v:g}" for v in (cams.get("config") or {}).get("scales", []))
    if scales:
        print(f"CAMs: scales {scales}")
    if "cam" in cams:
        print(f"stage 1 (train): CAM mIoU {cams['cam']['mIoU']:.2f}, pseudo-mask mIoU {cams['pseudo']['mIoU']:.2f}")
    for key in sorted(k for k in report if k.startswith("selftrain-round-")):
        r = report[key]
        if "train" in r:
            print(f"self-training round {r['round']}: pseudo-mask mIoU (train) {r['train']['before']['mIoU']:.2f} "
                  f"-> {r['train']['after']['mIoU']:.2f}")
        if r.get("untagged_images"):
            print(f"self-training round {r['round']}: {r['untagged_images']} untagged training images labelled by "
                  "the prediction")
    from pipeline.config import SegConfig, from_dict

    s = report["segmentation"]
    print(f"segmentation: {s['config'].get('decoder', 'psp')}, loss {s['config']['loss']}, "
          f"{from_dict(SegConfig, s['config']).training_iterations()} iterations on the labels of self-training "
          f"round {s.get('labels_round', 0)}, {s.get('precision', 'fp32')}")
    for split in ("train", "val", "test"):
        ev = report.get(f"evaluation-{split}")
        if ev:
            print(f"prediction ({split}):")
            print(SCORE_HEADER)
            for name, r in evaluation_rows(ev):
                print(f"  {name:<16} {r['images']:>6}  {score_cells(r)}")
    est = report.get("estimate") or {}
    if "seconds" in report and est.get("total_s"):
        from pipeline.budget import fmt_duration

        line = (f"time: {fmt_duration(report['seconds'])}; after the plan {fmt_duration(est['actual_s'])}, expected "
                f"{fmt_duration(est['total_s'])}")
        for r in est.get("resized") or []:  # each training's second sizing
            where = "the segmentation's start" if r["round"] == 0 else f"round {r['round']}'s training"
            line += f"; from {where} {fmt_duration(r['actual_s'])}, expected {fmt_duration(r['total_s'])}"
        print(line)


def register(add) -> None:
    p = add("patches", cmd_patches, "cut 112 px patches (stride 56) and compute their weak labels (>5%% rule)")
    add_common(p, "patches")
    p = add("train-cls", cmd_train_cls, "train the multi-label patch classifier (resumable)")
    add_common(p, "train-cls", train=True)
    p = add("train-live", cmd_train_live, "train the patch classifier while you tag (in napari, or by `oeem labels "
            "import`): new tags are picked up between chunks, a checkpoint after each, the project is locked only "
            "while writing; `oeem run` continues from it")
    add_common(p, "train-cls")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--chunk", type=int, default=50, help="steps between checkpoints and looks at the tags "
                   "(default: 50, about 20-40 s on 2 cores)")
    p = add("cams", cmd_cams, "multi-scale CAMs and pseudo-masks for the training images, scored against masks")
    add_common(p, "cams")
    p = add("train-seg", cmd_train_seg,
            "train the segmentation network on the pseudo-masks with the OEEM loss (resumable)")
    add_common(p, "train-seg", train=True)
    add_model_name(p, trains=True)
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from the weights of a .oeem-model file (`oeem export-model`) instead of random "
                        "initialisation; its network must be this project's (default: none)")
    p.add_argument("--keep-worse", action="store_true",
                   help="--labels corrected: keep the retrained model even when it scores worse than the model "
                        "before by more than update.tolerance (default: the better one is kept)")
    p = add("selftrain", cmd_selftrain, "one self-training round: refine the pseudo-masks with the current "
            "prediction (restricted by the patch labels); then train-seg again")
    add_common(p, "selftrain")
    p.add_argument("--reset", action="store_true",
                   help="undo every round: put the stage-1 pseudo-masks back (default: run one round)")
    p = add("predict", cmd_predict, "multi-scale sliding-window prediction at the original size")
    add_common(p, "predict")
    add_fast(p)
    p.add_argument("--split", default="all", choices=("all", "train", "val", "test"),
                   help="the images to predict (default: all)")
    add_model_name(p)
    p = add("instances", cmd_instances, "cut the predicted masks into glands again (one id each), e.g. after "
            "changing instances.method; `predict` and `run` do it already")
    add_common(p, "instances")
    p = add("evaluate", cmd_evaluate, "pixel mIoU / Dice / F1 and GlaS object F1 / Dice / Hausdorff against the "
            "gland masks")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="the images to score (default: test)")
    p.add_argument("--labels", default="prediction", choices=("prediction", "pseudo", "corrected"),
                   help="what to score: the prediction, the pseudo-masks or the corrected labels (default: "
                        "prediction)")
    p.add_argument("--key", dest="labels", choices=("prediction", "pseudo", "corrected"), help=argparse.SUPPRESS)
    p.add_argument("--per-image", action="store_true", help="also print each image's scores (default: off)")
    p = add("run", cmd_run, "the whole pipeline (stage 1, stage 2, evaluation), resuming what is done")
    add_common(p, "run")
    p.add_argument("--data", default=None, help="create the project from this folder (or `sample`) if needed "
                   "(default: the project must exist)")
    p.add_argument("--val-images", type=int, default=0,
                   help="with --data: training images held out as a validation split (default: 0)")
    add_fast(p)
    p.add_argument("--budget", default=None, metavar="DURATION",
                   help="finish within this time (e.g. 60m, 1h30m, 90s; a bare number is minutes): the speed is "
                        "measured first and classifier epochs, CAM scales, segmentation iterations and "
                        "self-training rounds are shrunk to fit (default: the preset's schedule, with its "
                        "expected duration said at the start)")
