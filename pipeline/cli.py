"""The ``oeem`` command: every stage of the method from a terminal, on a project store.

Errors a user can fix are printed as one line (exit code 2); Ctrl-C stops cleanly and keeps the last checkpoint.

``train-seg`` and ``train-cls`` also run data-parallel under torchrun, e.g.
``torchrun --standalone --nproc-per-node 2 -m pipeline train-seg PROJECT``: rank 0 takes the writer lock, writes
the project and prints; the other ranks only read it and train.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import LOSS_KINDS, PRECISION_SECTIONS, PRECISIONS, PRESETS, SLIDE_READERS, parse_settings
from pipeline.errors import OEEMError

# commands that write into the project: one at a time per project (the writer lock)
WRITERS = {"patches", "train-cls", "cams", "train-seg", "selftrain", "predict", "run", "import-geojson", "undo",
           "doctor", "regions", "add-regions"}
# commands that may run as several processes under torchrun (data-parallel training)
DISTRIBUTED = {"train-seg", "train-cls"}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _is_main() -> bool:
    """Rank 0 of a torchrun launch, or a plain run: the process that writes the project and prints."""
    from pipeline.stages.distributed import env_is_main

    try:
        return env_is_main()
    except OEEMError:  # a malformed RANK is reported by the stage itself
        return True


def _drive(job, desc: str):
    """Run a stage generator with a tqdm progress bar showing its metrics (loss, throughput); under torchrun
    only rank 0 shows one."""
    from tqdm import tqdm

    from pipeline.progress import run

    if not _is_main():
        return run(job)
    bars: dict[str, Any] = {}

    def show(p):
        if p.notice:
            tqdm.write(f"note: {p.notice}", file=sys.stderr)
        bar = bars.get(p.stage)
        if bar is None:
            for b in bars.values():
                b.close()
            bar = bars[p.stage] = tqdm(total=p.total, desc=p.stage, unit="step", dynamic_ncols=True,
                                       file=sys.stderr)
        if bar.total != p.total:
            bar.total = p.total
        bar.n = p.step
        bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in p.metrics.items()},
                        refresh=False)
        if p.message:
            bar.set_description(f"{p.stage} {p.message}", refresh=False)
        bar.refresh()

    try:
        return run(job, show)
    finally:
        for b in bars.values():
            b.close()


def _open(path: str):
    from pipeline.store import ProjectStore

    # the other ranks of a torchrun launch only read the project: rank 0 writes it, under the writer lock
    return ProjectStore.open(path, mode="r+" if _is_main() else "r")


def _config(args, store):
    from pipeline.store.project import project_config

    over = {
        "classifier.epochs": getattr(args, "epochs", None), "classifier.lr": getattr(args, "cls_lr", None),
        "classifier.backbone.pretrained": getattr(args, "pretrained", None),
        "segmentation.backbone.pretrained": getattr(args, "pretrained", None),
        "cam.mode": getattr(args, "mode", None), "cam.scales": getattr(args, "cam_scales", None),
        "segmentation.loss": getattr(args, "loss", None),
        "segmentation.iterations": getattr(args, "iterations", None),
        # asked for on the command line, it is what this training runs, on pseudo-masks or gland masks alike (the
        # last self-training round runs selftrain.last_round_scale times as many)
        "segmentation.full_iterations": getattr(args, "iterations", None),
        "segmentation.label_source": getattr(args, "labels", None),
        "segmentation.warmup_ce_iters": getattr(args, "warmup_ce", None),
        "segmentation.weight_temperature": getattr(args, "temperature", None),
        "segmentation.verified_weight": getattr(args, "verified_weight", None),
        "segmentation.error_prob_weight": getattr(args, "error_prob_weight", None),
        "segmentation.lr": getattr(args, "seg_lr", None),
        "segmentation.seed": getattr(args, "seed", None),
        "inference.scales": getattr(args, "scales", None),
        "slide.block": getattr(args, "block", None),
    }
    if getattr(args, "rounds", None) is not None:
        over["selftrain.rounds"] = args.rounds
    if getattr(args, "precision", None) is not None:
        over.update({f"{section}.precision": args.precision
                     for section in PRECISION_SECTIONS})
    if getattr(args, "fast", False):
        over["inference.scales"] = (1.0,)
        over["inference.flip"] = False
    over.update(parse_settings(getattr(args, "set", None) or []))
    return project_config(store, getattr(args, "preset", None), over, save=_is_main())


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_init(args) -> None:
    from pipeline.store.project import create_project

    store = create_project(args.data, args.project, overwrite=args.overwrite, val_images=args.val_images)
    tr, va, te = store.names("train"), store.names("val"), store.names("test")
    print(f"created {store.path}: {len(tr)} train, {len(va)} validation and {len(te)} test images, "
          f"{sum(store.has(n, 'mask') for n in store.names())} with gland masks")


def cmd_patches(args) -> None:
    from pipeline.stages.classify import make_patch_labels

    store = _open(args.project)
    cfg = _config(args, store)
    s = make_patch_labels(store, cfg.patches)
    print(f"{s['patches']} patches from {s['images']} images: {s['with_gland']} with gland, "
          f"{s['with_non_gland']} with non-gland")


def cmd_train_cls(args) -> None:
    from pipeline.stages.classify import train_classifier

    store = _open(args.project)
    cfg = _config(args, store)
    rec = _drive(train_classifier(store, cfg.classifier, cfg.patches, args.device, args.restart), "classifier")
    if not _is_main():
        return
    print(f"classifier trained: {rec['n_patches']} patches, {rec['epochs_run']} epochs in {rec['seconds']:.0f} s "
          f"({rec['patches_per_s']:.0f} patches/s), final loss {rec['final_loss']:.4f}")


def cmd_cams(args) -> None:
    from pipeline.stages.cams import make_cams

    store = _open(args.project)
    cfg = _config(args, store)
    rec = _drive(make_cams(store, cfg.cam, cfg.patches, args.device), "cams")
    print(f"CAMs and pseudo-masks for {rec['images']} images ({rec['seconds_per_image']:.2f} s/image)")
    if "cam" in rec:
        print(f"CAM mIoU {rec['cam']['mIoU']:.2f}  pseudo-mask mIoU {rec['pseudo']['mIoU']:.2f} (train, vs masks)")


def cmd_train_seg(args) -> None:
    from pipeline.stages.run import segmentation_settings
    from pipeline.stages.segment import train_segmenter

    store = _open(args.project)
    cfg = _config(args, store)
    seg = segmentation_settings(store, cfg)
    rec = _drive(train_segmenter(store, seg, args.device, args.name, args.restart), "segmentation")
    if not _is_main():
        return
    print(f"segmentation trained with loss {seg.loss} on {seg.label_source} labels: "
          f"{rec['iterations_run']} iterations in {rec['seconds']:.0f} s, final loss {rec['final_loss']:.4f}")


def cmd_selftrain(args) -> None:
    from pipeline.stages.selftrain import refine_round, reset_rounds

    store = _open(args.project)
    if args.reset:
        print(f"restored the stage-1 pseudo-masks of {reset_rounds(store)} images (round 0)")
        return
    cfg = _config(args, store)
    entry = _drive(refine_round(store, cfg.patches.size, cam_cfg=cfg.cam), "selftrain")
    line = f"self-training round {entry['round']}: {entry['pixels_changed']} pseudo-mask pixels changed"
    for split in ("train", "val"):
        if split in entry:
            line += (f"; {split} pseudo-mask mIoU {entry[split]['before']['mIoU']:.2f} -> "
                     f"{entry[split]['after']['mIoU']:.2f}")
    print(line)
    print(f"next: `oeem train-seg {store.path}` trains on the refined pseudo-masks")


def cmd_predict(args) -> None:
    from pipeline.stages.infer import predict

    store = _open(args.project)
    cfg = _config(args, store)
    names = store.names(args.split) if args.split != "all" else None
    rec = _drive(predict(store, cfg.inference, names, args.device, args.name), "predict")
    print(f"predicted {rec['images']} images ({rec['seconds_per_image']:.2f} s/image)")


def cmd_evaluate(args) -> None:
    from pipeline.stages.infer import evaluate

    store = _open(args.project)
    res = evaluate(store, args.split, args.key)
    print(f"{args.key} on {res['images']} {args.split} images: mIoU {res['mIoU']:.2f}  Dice {res['Dice']:.2f}  "
          f"F1 {res['F1']:.2f}")
    if args.per_image:
        for n, r in res["per_image"].items():
            print(f"  {n:<16} mIoU {r['mIoU']:6.2f}  Dice {r['Dice']:6.2f}  F1 {r['F1']:6.2f}")


def cmd_run(args) -> None:
    from pipeline.stages.run import run_all
    from pipeline.store import ProjectStore
    from pipeline.store.lock import project_writer
    from pipeline.store.project import create_project

    if args.data is not None and not Path(args.project).exists():
        create_project(args.data, args.project, val_images=args.val_images)
    with project_writer(args.project, "oeem run"):  # re-entrant: main() may hold it already
        store = ProjectStore.open(args.project)
        cfg = _config(args, store)
        report = _drive(run_all(store, cfg, args.device), "run")
    print_report(report)


def print_report(report: dict) -> None:
    p = report["patches"]
    print("\n== OEEM report ==")
    print(f"patches: {p['patches']} from {p['images']} train images")
    c = report["classifier"]
    print(f"classifier: {c['config']['epochs']} epochs, {c.get('patches_per_s') or 0:.0f} patches/s")
    cams = report["cams"]
    if "cam" in cams:
        print(f"stage 1 (train): CAM mIoU {cams['cam']['mIoU']:.2f}, pseudo-mask mIoU {cams['pseudo']['mIoU']:.2f}")
    for key in sorted(k for k in report if k.startswith("selftrain-round-")):
        r = report[key]
        if "train" in r:
            print(f"self-training round {r['round']}: pseudo-mask mIoU (train) {r['train']['before']['mIoU']:.2f} "
                  f"-> {r['train']['after']['mIoU']:.2f}")
    from pipeline.config import SegConfig, from_dict

    s = report["segmentation"]
    print(f"segmentation: {s['config'].get('decoder', 'psp')}, loss {s['config']['loss']}, "
          f"{from_dict(SegConfig, s['config']).training_iterations()} iterations")
    for split in ("train", "val", "test"):
        ev = report.get(f"evaluation-{split}")
        if ev:
            print(f"prediction ({split}, {ev['images']} images): mIoU {ev['mIoU']:.2f}  Dice {ev['Dice']:.2f}  "
                  f"F1 {ev['F1']:.2f}")


def cmd_export(args) -> None:
    from pipeline.io.export import export_masks

    store = _open(args.project)
    paths = export_masks(store, args.folder, args.format, args.source)
    print(f"wrote {len(paths)} {args.format} masks ({args.source}) to {args.folder}")


def cmd_import_geojson(args) -> None:
    from pipeline.io.geojson import import_geojson

    store = _open(args.project)
    rep = import_geojson(store, args.path, args.image)
    for name, pixels in rep["images"].items():
        print(f"{name}: {pixels:,} px imported as pathologist-verified" if pixels else f"{name}: no polygons")
    for why, count in rep["skipped"].items():
        print(f"skipped {count} feature(s): {why}", file=sys.stderr)
    print(f"next: `oeem train-seg {store.path} --labels corrected` trains on them; "
          f"`oeem undo {store.path} NAME` takes one back")


def cmd_undo(args) -> None:
    store = _open(args.project)
    if store.undo_correction(args.image):
        left = len(store.correction_history(args.image))
        print(f"{args.image}: last correction undone ({left} saved state(s) left)")
    else:
        print(f"{args.image}: no correction to undo")


def cmd_doctor(args) -> None:
    from pipeline.store.doctor import check_project, format_report

    store = _open(args.project)
    rep = check_project(store, repair=not args.check_only)
    print("\n".join(format_report(rep, store)))
    if rep.unfixed:
        raise OEEMError(f"{len(rep.unfixed)} problem(s) need the command named above")


def cmd_regions(args) -> None:
    from pipeline.review.regions import (
        label_fingerprint,
        load_ranking,
        rank_label_errors,
        ranked_regions,
        write_region_files,
    )
    from pipeline.review.state import rerank_image, review_state

    store = _open(args.project)
    ranking = load_ranking(store)
    stale = [n for n, fp in (ranking or {}).get("labels", {}).items() if fp != label_fingerprint(store, n)]
    new_round = any(fp.split(":")[0] != label_fingerprint(store, n).split(":")[0] for n, fp in
                    (ranking or {}).get("labels", {}).items())
    if new_round:
        print("note: the pseudo-masks changed since the ranking (self-training or new CAMs): ranking again",
              file=sys.stderr)
    elif stale and not args.refresh:
        cfg = _config(args, store)
        for n in stale:
            rerank_image(store, n, cfg)
        print(f"note: re-ranked {len(stale)} image(s) whose corrections changed", file=sys.stderr)
    if args.refresh or new_round or ranking is None or ranking.get("split") != args.split:
        cfg = _config(args, store)
        ranking = _drive(rank_label_errors(store, cfg, args.split), "regions")
        print(f"ranked {len(ranking['regions'])} regions in {ranking['seconds']:.0f} s "
              f"(calibration: {ranking['calibration']['source']})", file=sys.stderr)
    regions = ranked_regions(store, args.top)
    state = review_state(store)
    if state["notice"]:
        print(f"note: {state['notice']}", file=sys.stderr)
    print(f"{'rank':>4}  {'image':<14} {'box y0,x0,y1,x1':<22} {'area':>7} {'exp. wrong':>10}  suggested  review")
    for k, r in enumerate(regions, start=1):
        print(f"{k:>4}  {r.image:<14} {','.join(map(str, r.bbox)):<22} {r.area:>7} {r.expected_wrong:>10.0f}  "
              f"{'gland' if r.suggested_label else 'non-gland':<9}  {state['state'].get(r.key, '-')}")
    print(f"{state['reviewed']} of {state['total']} regions reviewed ({state['accepted']} accepted, "
          f"{state['skipped']} skipped)")
    if args.out:
        written = write_region_files(store, regions, args.out)
        print(f"wrote {written} region masks and regions.json to {args.out}")


def cmd_slide_info(args) -> None:
    from pipeline.slides.reader import open_slide, tissue_mask

    with open_slide(args.slide, args.mpp, args.reader) as slide:
        info = slide.info
        print(f"{info.path}: {info.width} x {info.height} px, {len(info.level_dimensions)} level(s) "
              f"(read with {slide.backend}{', ' + info.vendor if info.vendor else ''})")
        for k, ((w, h), d) in enumerate(zip(info.level_dimensions, info.level_downsamples)):
            print(f"  level {k}: {w} x {h} px (downsample {d:g})")
        mpp = f"{info.mpp:.4g} µm/px ({info.mpp_source})" if info.mpp else "unknown: give it with --mpp"
        print(f"microns per pixel: {mpp}")
        thumb, _ = slide.thumbnail(1024)
        print(f"tissue: {100 * tissue_mask(thumb).mean():.1f} % of the slide")
        for note in info.notes:
            print(f"note: {note}")


def cmd_predict_slide(args) -> None:
    from pipeline.slides.predict import predict_slide

    store = _open(args.project)
    cfg = _config(args, store)
    rec = _drive(predict_slide(store, args.slide, cfg.slide, cfg.inference, args.mpp, args.out, args.device,
                               args.name, args.restart, args.scheduler), "predict-slide")
    b = rec["blocks"]
    print(f"{rec['output']}: {rec['size'][1]} x {rec['size'][0]} px at {rec['project_mpp']:.4g} µm/px, "
          f"{rec['levels']} level(s); {b['tissue']} tissue blocks ({b['resumed']} resumed), "
          f"{b['skipped_as_glass']} skipped as glass; {rec['seconds']:.1f} s, peak memory "
          f"{rec['peak_rss_mb']:.0f} MB")
    print(f"note: {rec['resampling']}")
    print(f"open it over the slide: napari {args.slide} {rec['output']}")


def cmd_add_regions(args) -> None:
    from pipeline.io.geojson import read_geojson
    from pipeline.slides.regions import add_slide_regions, parse_box, regions_from_geojson

    store = _open(args.project)
    cfg = _config(args, store)
    regions = [parse_box(b, args.label) for b in args.box or []]
    if args.geojson:
        regions += regions_from_geojson(read_geojson(args.geojson), args.label, args.geojson)
    if not regions:
        raise OEEMError("no regions: give --box X,Y,W,H (level-0 pixels) or --geojson ROIS.geojson")
    names = add_slide_regions(store, args.slide, regions, cfg.patches, cfg.slide.project_mpp, args.mpp,
                              args.split, cfg.slide.reader)
    for n in names:
        print(f"added {n}")
    print(f"next: `oeem run {store.path}` trains on them with the other images")


def cmd_info(args) -> None:
    store = _open(args.project)
    names = store.names()
    have = {k: sum(store.has(n, k) for n in names) for k in ("mask", "cam", "pseudo", "prediction", "corrected")}
    _print({"project": str(store.path), "train": len(store.names("train")), "val": len(store.names("val")),
            "test": len(store.names("test")),
            "arrays": have, "corrections": store.correction_summary(),
            "runs": sorted(p.stem for p in (store.path / "runs").glob("*.json")),
            "metrics": _last_metrics(store)})


def _last_metrics(store) -> dict:
    """The latest figures a project holds: CAM / pseudo-mask mIoU and the evaluations of the prediction."""
    out = {}
    cams = store.load_run("cams")
    if cams:
        out["cam_mIoU (train)"] = cams.get("cam", {}).get("mIoU")
        out["pseudo_mIoU (train)"] = cams.get("pseudo", {}).get("mIoU")
    st = store.load_run("selftrain")
    if st and st.get("rounds") and "train" in st["rounds"][-1]:
        out["pseudo_mIoU (train, self-trained)"] = st["rounds"][-1]["train"]["after"]["mIoU"]
    for split in ("train", "val", "test"):
        ev = store.load_run(f"evaluation-{split}")
        if ev:
            out[f"prediction ({split})"] = {k: ev[k] for k in ("mIoU", "Dice", "F1") if k in ev}
    return out


def cmd_fetch_glas(args) -> None:
    from pipeline.io.download import fetch_glas

    path = fetch_glas(args.dest, args.sha256)
    print(f"GlaS is in {path}; make a project with `oeem init {path} glas.oeem.zarr`")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="oeem", description="Weakly-supervised gland segmentation with OEEM "
                                 "(MICCAI 2022). Stages: init -> patches -> train-cls -> cams -> train-seg -> "
                                 "predict [-> selftrain -> train-seg -> predict] -> evaluate; `run` does them "
                                 "all; `export` writes masks out.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_, project=True):
        p = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"))
        if project:
            p.add_argument("project", help="project store (a .zarr folder made by `oeem init`)")
        p.set_defaults(func=func)
        return p

    def common(p, train=False):
        p.add_argument("--preset", choices=PRESETS, default=None,
                       help="start from a preset (default: the project's saved settings, else cpu)")
        p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
        p.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="arithmetic of every stage: auto (default: bf16 where the CPU or GPU computes it "
                            "natively, about twice as fast; else fp32), fp32 or bf16")
        p.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=None,
                       help="any setting by name, e.g. segmentation.working_scale=0.5 selftrain.rounds=0 "
                            "(saved with the project like the other options)")
        if train:
            p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
            p.add_argument("--pretrained", default=None, help="local checkpoint with backbone weights")

    p = add("init", cmd_init, "create a project from a GlaS-style folder, or `sample` for the embedded data",
            project=False)
    p.add_argument("data", help="folder with NAME.png/.bmp and NAME_anno.png/.bmp, or `sample`")
    p.add_argument("project", help="where to create the project (e.g. glas.oeem.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing project at that path")
    p.add_argument("--val-images", type=int, default=0,
                   help="hold this many training images out as a validation split (no stage trains on them; "
                        "their masks only choose settings)")

    p = add("patches", cmd_patches, "cut 112 px patches (stride 56) and compute their weak labels (>5%% rule)")
    common(p)
    p = add("train-cls", cmd_train_cls, "train the multi-label patch classifier (resumable)")
    common(p, train=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", dest="cls_lr", type=float)
    p = add("cams", cmd_cams, "multi-scale CAMs and pseudo-masks for the training images, scored against masks")
    common(p)
    p.add_argument("--mode", choices=("image", "patch"), help="whole-image CAM or the reference's per-patch crops")
    p.add_argument("--scales", dest="cam_scales", type=_floats, help="e.g. 1,1.25,1.5,1.75,2")
    p = add("train-seg", cmd_train_seg,
            "train the segmentation network on the pseudo-masks with the OEEM loss (resumable)")
    common(p, train=True)
    p.add_argument("--loss", choices=LOSS_KINDS, help="weighting (paper preset: l_norm, the paper's OEEM; "
                   "cpu preset: ce, which beat l_norm on the validation split from random init)")
    p.add_argument("--iterations", type=int,
                   help="segmentation iterations (cpu preset: 2000 per round, 1.5x that for the last "
                   "round, 4000 on gland masks)")
    p.add_argument("--labels", choices=("pseudo", "corrected", "mask"),
                   help="pseudo-masks, pseudo-masks with painted corrections, or gland masks (full supervision)")
    p.add_argument("--warmup-ce", type=int, help="iterations of plain CE before the chosen loss")
    p.add_argument("--temperature", type=float,
                   help="l_norm/lc_mix weight softmax(-loss / T); 1 (default) is the paper, larger is flatter")
    p.add_argument("--verified-weight", type=float,
                   help="with --labels corrected: loss weight of the pathologist-verified pixels (others: 1)")
    p.add_argument("--error-prob-weight", type=float, metavar="W",
                   help="weigh each pseudo-label 1 - W x P(wrong) from the label review (oeem regions first); "
                   "0 (default): off, 1: its probability of being right")
    p.add_argument("--lr", dest="seg_lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--name", default=None, help="keep this model apart (checkpoints/segmentation-NAME.pt)")
    p = add("selftrain", cmd_selftrain, "one self-training round: refine the pseudo-masks with the current "
            "prediction (restricted by the patch labels); then train-seg again")
    common(p)
    p.add_argument("--reset", action="store_true", help="put the stage-1 pseudo-masks back instead")
    p = add("predict", cmd_predict, "multi-scale sliding-window prediction at the original size")
    common(p)
    p.add_argument("--fast", action="store_true", help="single scale, no flip (interactive use)")
    p.add_argument("--scales", type=_floats, help="e.g. 0.75,1,1.25,1.5,1.75,2,2.5,3")
    p.add_argument("--split", default="all", choices=("all", "train", "val", "test"))
    p.add_argument("--name", default=None, help="use the model trained with --name")
    p = add("evaluate", cmd_evaluate, "mIoU, Dice and F1 (percent, dataset level) against the gland masks")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--key", default="prediction", choices=("prediction", "pseudo", "corrected"))
    p.add_argument("--per-image", action="store_true")
    p = add("run", cmd_run, "the whole pipeline (stage 1, stage 2, evaluation), resuming what is done")
    common(p)
    p.add_argument("--data", default=None, help="create the project from this folder (or `sample`) if needed")
    p.add_argument("--val-images", type=int, default=0, help="with --data: validation images held out")
    p.add_argument("--rounds", type=int, help="self-training rounds (cpu preset: 2)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iterations", type=int,
                   help="segmentation iterations (cpu preset: 2000 per round, 1.5x that for the last "
                   "round, 4000 on gland masks)")
    p.add_argument("--loss", choices=LOSS_KINDS)
    p.add_argument("--fast", action="store_true", help="single-scale prediction")
    p = add("export", cmd_export, "write masks as GlaS-style PNG, TIFF, OME-Zarr or QuPath GeoJSON (all or nothing)")
    p.add_argument("folder")
    p.add_argument("--format", choices=("png", "tiff", "zarr", "geojson"), default="png")
    p.add_argument("--source", choices=("corrected", "pseudo", "prediction"), default="corrected")
    p = add("regions", cmd_regions, "rank the regions whose pseudo-label is probably wrong (out-of-fold evidence, "
            "calibrated on the validation split) and print them, best first")
    common(p)
    p.add_argument("--top", type=int, default=20, help="how many regions to list (default 20)")
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--out", default=None, help="write NAME_regions.png (0/255) per image and regions.json here")
    p.add_argument("--refresh", action="store_true", help="rank again (e.g. after new pseudo-masks)")
    p = add("import-geojson", cmd_import_geojson, "import QuPath GeoJSON annotations (a file or a folder of "
            "NAME.geojson) as pathologist-verified corrections (undoable)")
    p.add_argument("path", help="a .geojson file or a folder of them")
    p.add_argument("--image", default=None, help="the image a single file annotates (default: its file name)")
    p = add("undo", cmd_undo, "undo the last correction of an image")
    p.add_argument("image")
    p = add("doctor", cmd_doctor, "read every array; restore damaged corrections from their history")
    p.add_argument("--check-only", action="store_true", help="report, change nothing")
    p = add("slide-info", cmd_slide_info, "levels, microns per pixel and tissue of a whole-slide image",
            project=False)
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel, when the file does not say")
    p.add_argument("--reader", choices=SLIDE_READERS, default="auto",
                   help="auto: tiffslide, OpenSlide (when installed) for what it cannot read")
    p = add("predict-slide", cmd_predict_slide, "predict a whole slide block by block into an OME-Zarr pyramid "
            "beside the project (bounded memory, resumable, optionally on a dask cluster)")
    common(p)
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel, when the file does not say")
    p.add_argument("--out", default=None, help="output .ome.zarr (default: PROJECT.slides/NAME.ome.zarr)")
    p.add_argument("--restart", action="store_true", help="replace an earlier prediction of other settings")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler "
                   "(e.g. tcp://10.0.0.5:8786): its workers predict the blocks")
    p.add_argument("--block", type=int, default=None, help="block size in px (default: slide.block)")
    p.add_argument("--fast", action="store_true", help="single scale, no flip")
    p.add_argument("--name", default=None, help="use the model trained with --name")
    p = add("add-regions", cmd_add_regions, "cut regions of a slide into the project as training images, each "
            "with one weak label (gland, non-gland or mixed) that all its patches take")
    common(p)
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    p.add_argument("--box", action="append", metavar="X,Y,W,H", help="a region in level-0 pixels (repeatable)")
    p.add_argument("--geojson", default=None, help="QuPath GeoJSON ROIs; their classification is the label")
    p.add_argument("--label", default=None, help="gland, non-gland or mixed (for --box, and unclassified ROIs)")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel, when the file does not say")
    p.add_argument("--split", default="train", choices=("train", "val"))
    add("info", cmd_info, "what a project holds")
    p = add("fetch-glas", cmd_fetch_glas, "download GlaS (needs internet) into a cache folder", project=False)
    p.add_argument("--dest", default=None, help="where to unpack (default: the user cache)")
    p.add_argument("--sha256", default=None, help="expected checksum of the archive")
    return ap


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages.distributed import env_world_size, launched

    args = build_parser().parse_args(argv)
    # under torchrun every rank runs this; rank 0 alone locks, writes and speaks (the others fail with it: every
    # rank checks the same project and settings, and torchrun stops the others when one exits with an error)
    main_rank = _is_main()
    try:
        if launched() and args.command not in DISTRIBUTED:
            raise OEEMError(f"`oeem {args.command}` runs as one process; only {' and '.join(sorted(DISTRIBUTED))} "
                            f"run under torchrun (here with {env_world_size()} processes)")
        if args.command in WRITERS and Path(args.project).is_dir() and main_rank:
            from pipeline.store.lock import project_writer

            with project_writer(args.project, f"oeem {args.command}"):
                args.func(args)
        else:
            args.func(args)
    except OEEMError as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            print("\ninterrupted: the last checkpoint is kept; run the same command again to resume",
                  file=sys.stderr)
        return 130
    finally:
        if "pipeline.stages.distributed" in sys.modules:
            from pipeline.stages.distributed import shutdown

            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
