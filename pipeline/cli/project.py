"""``oeem`` commands about the project itself: init, info, export, import-geojson, undo, doctor, fetch-glas.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.cli.common import add_redo, open_project, print_json
from pipeline.errors import OEEMError

# commands that write into the project: one at a time per project (the writer lock)


def cmd_init(args) -> None:
    from pipeline.store.project import create_project, split_lines

    store = create_project(args.data, args.project, overwrite=args.redo, val_images=args.val_images,
                           train=args.train, test=args.test)
    print(f"created {store.path}: {len(store.names())} images, "
          f"{sum(store.has(n, 'mask') for n in store.names())} with gland masks")
    print("\n".join(split_lines(store)))
    if not (args.train or args.test):
        print("  (--train / --test GLOB choose the splits by file name instead, e.g. --train '*' for all)")


def cmd_info(args) -> None:
    store = open_project(args.project)
    names = store.names()
    have = {k: sum(store.has(n, k) for n in names) for k in ("mask", "cam", "pseudo", "prediction", "corrected")}
    print_json({"project": str(store.path), "train": len(store.names("train")), "val": len(store.names("val")),
            "test": len(store.names("test")),
            "arrays": have, "patch_tags": store.tag_summary(), "corrections": store.correction_summary(),
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
            out[f"prediction ({split})"] = {k: ev[k] for k in ("mIoU", "pixel_Dice", "F1", "object_F1", "object_Dice",
                                                              "object_Hausdorff") if k in ev}
    return out


def cmd_export(args) -> None:
    from pipeline.io.export import export_masks

    store = open_project(args.project)
    paths = export_masks(store, args.folder, args.format, args.labels)
    what = "files of gland instances" if args.labels == "instances" else f"masks ({args.labels})"
    print(f"wrote {len(paths)} {args.format} {what} to {args.folder}")


def cmd_import_geojson(args) -> None:
    from pipeline.io.geojson import import_geojson

    store = open_project(args.project)
    rep = import_geojson(store, args.path, args.image)
    for name, pixels in rep["images"].items():
        print(f"{name}: {pixels:,} px imported as pathologist-verified" if pixels else f"{name}: no polygons")
    for why, count in rep["skipped"].items():
        print(f"skipped {count} feature(s): {why}", file=sys.stderr)
    print(f"next: `oeem train-seg {store.path} --labels corrected` trains on them; "
          f"`oeem undo {store.path} NAME` takes one back")


def cmd_undo(args) -> None:
    store = open_project(args.project)
    if store.undo_correction(args.image):
        left = len(store.correction_history(args.image))
        print(f"{args.image}: last correction undone ({left} saved state(s) left)")
    else:
        print(f"{args.image}: no correction to undo")


def cmd_doctor(args) -> None:
    from pipeline.store.doctor import check_project, format_report

    store = open_project(args.project)
    rep = check_project(store, repair=not args.check_only)
    print("\n".join(format_report(rep, store)))
    if rep.unfixed:
        raise OEEMError(f"{len(rep.unfixed)} problem(s) need the command named above")


def cmd_fetch_glas(args) -> None:
    from pipeline.io.download import fetch_glas

    path = fetch_glas(args.dest, args.sha256)
    print(f"GlaS is in {path}; make a project with `oeem init {path} glas.oeem.zarr`")


def register(add) -> None:
    p = add("init", cmd_init, "create a project from a GlaS-style folder, or `sample` for the embedded data",
            project=False)
    p.add_argument("data", help="a folder of images (PNG, TIFF, JPEG, BMP; gland masks NAME_anno.png beside them "
                   "are optional), or `sample` for the embedded data")
    p.add_argument("project", help="where to create the project (e.g. glas.oeem.zarr)")
    add_redo(p, "replace an existing project at that path", "--overwrite")
    p.add_argument("--train", default=None, metavar="GLOB",
                   help="file names of the training images, e.g. '*.tif' (default: GlaS names train_*/testA_* "
                        "decide, every other image is a training image)")
    p.add_argument("--test", default=None, metavar="GLOB",
                   help="file names of the test images, e.g. 'case9_*' (default: none, or GlaS's testA_*/testB_*); "
                        "with --train or --test, an image matching neither is left out")
    p.add_argument("--val-images", type=int, default=0,
                   help="hold this many training images out as a validation split (no stage trains on them; "
                        "their masks only choose settings; default: 0)")
    add("info", cmd_info, "what a project holds")
    sources = ("corrected", "pseudo", "prediction", "instances")  # pipeline.io.export.SOURCES (not imported: the
    # parser stays quick to build)
    p = add("export", cmd_export, "write masks as GlaS-style PNG, TIFF, OME-Zarr or QuPath GeoJSON (all or nothing)")
    p.add_argument("folder", help="where the files go (made if missing)")
    p.add_argument("--format", choices=("png", "tiff", "zarr", "geojson"), default="png",
                   help="file format (default: png)")
    p.add_argument("--labels", choices=sources, default="corrected",
                   help="which labels: the corrected pseudo-masks, the plain pseudo-masks, the prediction or its "
                        "glands as objects (instances: ids kept - 16-bit PNG, TIFF, OME-Zarr labels, one GeoJSON "
                        "feature per gland with its id and area) (default: corrected)")
    p.add_argument("--source", dest="labels", choices=sources, help=argparse.SUPPRESS)
    p = add("import-geojson", cmd_import_geojson, "import QuPath GeoJSON annotations (a file or a folder of "
            "NAME.geojson) as pathologist-verified corrections (undoable)")
    p.add_argument("path", help="a .geojson file or a folder of them")
    p.add_argument("--image", default=None,
                   help="the image a single file annotates (default: the file's name)")
    p = add("undo", cmd_undo, "undo the last correction of an image")
    p.add_argument("image", help="the image's name in the project")
    p = add("doctor", cmd_doctor, "read every array; restore damaged corrections from their history")
    p.add_argument("--check-only", action="store_true", help="report, change nothing (default: repair)")
    p = add("fetch-glas", cmd_fetch_glas, "download GlaS (needs internet) into a cache folder", project=False)
    p.add_argument("--dest", default=None, help="where to unpack (default: the user cache)")
    p.add_argument("--sha256", default=None, help="expected checksum of the archive (default: the known one)")
