"""``oeem export-model`` and ``oeem predict-images``: a trained model out of its project, and onto any images;
``oeem update``: the model fine-tuned on a pathologist's latest changes (and ``--revert``)."""
from __future__ import annotations

from pipeline.cli.common import (
    add_common,
    add_device,
    add_fast,
    add_model_name,
    add_mpp,
    config_for,
    drive,
    open_project,
)


def cmd_update(args) -> None:
    from pipeline.stages.update import revert_update, update_model
    from pipeline.store.versions import model_versions

    store = open_project(args.project)
    cfg = config_for(args, store)
    if args.revert:
        back = drive(revert_update(store, cfg, args.device), "revert")
        print(f"reverted to the model kept {back['saved_at']} ({back['why']}); {len(model_versions(store))} earlier "
              f"version(s) left; re-predicted {len(back['predicted'])} image(s) the update had predicted")
        return
    names = [n.strip() for n in args.images.split(",") if n.strip()] if args.images else None
    predict_names = None if args.predict == "changed" else [] if args.predict == "none" else store.names()
    r = drive(update_model(store, cfg, args.device, names, predict_names, keep_worse=args.keep_worse), "update")
    if not r["kept"]:
        print(f"update of {len(r['images'])} image(s) not kept: {r['verdict']} ({r['seconds']:.0f} s; "
              "--keep-worse keeps such an update anyway)")
        return
    print(f"updated the model on {len(r['images'])} changed image(s) in {r['train_seconds']:.0f} s "
          f"({r['steps']} steps, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}): {r['verdict']}; re-predicted "
          f"{len(r['predicted'])} image(s), {r['seconds']:.0f} s in all. The model from before is kept: "
          f"`oeem update {store.path} --revert` puts it back")


def cmd_export_model(args) -> None:
    from pipeline.stages.model_file import SUFFIX, export_model, load_model_file
    from pipeline.store.project import project_config

    store = open_project(args.project)
    cfg = project_config(store, save=False)  # the settings the model was trained and scored with
    if args.format == "bioimageio":
        export_package(store, args)
        return
    path = export_model(store, args.file, cfg.inference, cfg.slide.project_mpp, args.name)
    trained = load_model_file(path)  # what a colleague will load: checked before we say it is done
    size = path.stat().st_size / 1e6
    hint = "" if path.name.endswith(SUFFIX) else f" (the usual suffix is {SUFFIX})"
    print(f"wrote {path} ({size:.1f} MB{hint}): {trained.seg.decoder} on {trained.seg.backbone.name}, "
          f"{trained.mpp:g} µm/px, trained {trained.record.get('iterations')} iterations; use it with "
          f"`oeem predict-images {path} IMAGES... --out DIR`")


def export_package(store, args) -> None:
    """``--format bioimageio``: the model as a bioimage.io package, checked by reading it back."""
    from pipeline.io.bioimageio import export_project
    from pipeline.stages.model_file import open_model

    path = export_project(store, args.file, args.author, args.name)
    trained = open_model(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), a bioimage.io model (spec 0.5, TorchScript and "
          f"state dict), validated: {trained.seg.decoder} on {trained.seg.backbone.name}, {trained.mpp:g} µm/px; "
          f"test it with `bioimageio test {path}`, use it with `oeem predict-images {path} IMAGES...`, in QuPath "
          "or any bioimage.io consumer")


def cmd_predict_images(args) -> None:
    from pipeline.config import FAST_INFERENCE
    from pipeline.stages.model_file import open_model
    from pipeline.stages.predict_files import predict_files

    overrides = {k.split(".", 1)[1]: v for k, v in FAST_INFERENCE.items()} if args.fast else None
    trained = open_model(args.model, "cpu", overrides)
    rec = drive(predict_files(trained, args.paths, args.out, args.format, args.overwrite, args.mpp, args.device,
                              args.scheduler, args.instances),
                "predict-images")
    assumed = sum(1 for r in rec["images"].values() if r["mpp_from"].startswith("assumed"))
    note = (f"; {assumed} image(s) state no µm/px and were taken to be at the model's {trained.mpp:g} "
            "(give --mpp if they are not)") if assumed else ""
    print(f"predicted {rec['predicted']} image(s), {rec['skipped']} already done (--overwrite redoes them), into "
          f"{args.out} ({args.format}{', one id per gland' if args.instances else ''}){note}")


def register(add) -> None:
    from pipeline.io.export import FORMATS

    p = add("update", cmd_update, "fine-tune the segmentation model briefly on the images whose corrections, accepted "
            "review regions or patch tags changed since it was trained, then re-predict them (about a minute on "
            "2 cores); the previous model is kept")
    add_common(p, "update")
    p.add_argument("--images", default=None, metavar="NAMES",
                   help="comma-separated image names to learn from (default: those changed since the model)")
    p.add_argument("--predict", default="changed", choices=("changed", "all", "none"),
                   help="which images to re-predict afterwards (default: changed)")
    add_fast(p)
    p.add_argument("--revert", action="store_true",
                   help="put back the model from before the last update instead (default: update)")
    p.add_argument("--keep-worse", action="store_true",
                   help="keep the updated model even when it scores worse than the one before by more than "
                        "--tolerance (default: such an update is not kept)")
    p = add("export-model", cmd_export_model, "write the project's segmentation model to one file (weights, "
            "settings, µm/px, training record, checksum) to use on other images, projects and machines")
    p.add_argument("file", help="the model file to write, e.g. glas-cpu.oeem-model (a .zip with --format "
                   "bioimageio)")
    p.add_argument("--format", default="oeem", choices=("oeem", "bioimageio"),
                   help="oeem: the tool's own model file (default); bioimageio: a bioimage.io model package "
                        "(spec 0.5; needs `pip install 'oeem-napari[bioimageio]'`) for the model zoo, QuPath, "
                        "deepImageJ, ilastik")
    p.add_argument("--author", action="append", help="an author of the bioimage.io package (repeat for more; "
                   "default: your user name)")
    add_model_name(p)
    p = add("predict-images", cmd_predict_images, "segment image files or folders that are in no project, with a "
            "model file or a project's model; one image at a time, resumable", project=False)
    p.add_argument("model", help="a .oeem-model file (from `oeem export-model`) or a project folder")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively; masks left out)")
    p.add_argument("--out", default="predictions", help="folder for the masks, made if missing (default: "
                   "./predictions)")
    p.add_argument("--format", default="png", choices=FORMATS, help="mask format (default: png)")
    p.add_argument("--instances", action="store_true",
                   help="write each gland's own id instead of a 0/255 mask: 16-bit PNG, TIFF and OME-Zarr labels, "
                        "one GeoJSON feature per gland with its id and area in µm² (default: the mask)")
    p.add_argument("--overwrite", action="store_true", help="predict images whose mask exists again (default: "
                   "skip them, so a rerun resumes)")
    add_mpp(p, "what each file says, else the model's")
    add_fast(p, "the model's settings")
    add_device(p)
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler (e.g. "
                   "tcp://10.0.0.5:8786) whose workers predict the images; the images and --out must be visible "
                   "to them (default: this process)")
