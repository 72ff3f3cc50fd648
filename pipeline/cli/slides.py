"""``oeem`` commands for whole slides: slide-info, predict-slide, add-regions.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.common import add_common, add_fast, add_model_name, add_mpp, add_redo, config_for, drive, open_project
from pipeline.config import SLIDE_READERS
from pipeline.errors import OEEMError

# commands that write into the project: one at a time per project (the writer lock)


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

    model = args.model
    if Path(args.project).is_file():  # a model file in place of the project
        model, store = args.project, None
    else:
        store = open_project(args.project)
    if model is not None:
        from pipeline.cli.common import config_for_model
        from pipeline.stages.model_file import load_model_file

        cfg = config_for_model(args, load_model_file(model))
    else:
        cfg = config_for(args, store)
    rec = drive(predict_slide(store, args.slide, cfg.slide, cfg.inference, args.mpp, args.out, args.device,
                               args.name, args.redo, args.scheduler, model=model, instances=cfg.instances),
                "predict-slide")
    b = rec["blocks"]
    print(f"{rec['output']}: {rec['size'][1]} x {rec['size'][0]} px at {rec['project_mpp']:.4g} µm/px, "
          f"{rec['levels']} level(s); {b['tissue']} tissue blocks ({b['resumed']} resumed), "
          f"{b['skipped_as_glass']} skipped as glass; {rec['seconds']:.1f} s, peak memory "
          f"{rec['peak_rss_mb']:.0f} MB")
    if rec.get("instances"):
        g = rec["instances"]
        print(f"glands as objects (labels/glands): {g['glands']} glands, {g['seconds']:.1f} s"
              + (f"; {g['too_large']} region(s) larger than the tiles' halo kept whole" if g["too_large"] else ""))
    print(f"note: {rec['resampling']}")
    print(f"open it over the slide: napari {args.slide} {rec['output']}")


def cmd_export_slide(args) -> None:
    from pipeline.slides.geojson_export import export_slide_geojson

    rec = drive(export_slide_geojson(args.prediction, args.out, args.tolerance, not args.prediction_pixels),
                "export-slide")
    print(f"wrote {rec['output']}: {rec['glands']} glands, {rec['vertices']} vertices, {rec['bytes'] / 1e6:.1f} MB, "
          f"coordinates in {rec['coordinates']} pixels; in QuPath: File > Import objects")


def cmd_add_regions(args) -> None:
    from pipeline.io.geojson import read_geojson
    from pipeline.slides.regions import add_slide_regions, parse_box, regions_from_geojson

    store = open_project(args.project)
    cfg = config_for(args, store)
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


def register(add) -> None:
    p = add("slide-info", cmd_slide_info, "levels, microns per pixel and tissue of a whole-slide image",
            project=False)
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    add_mpp(p)
    p.add_argument("--reader", choices=SLIDE_READERS, default="auto",
                   help="auto (default): tiffslide, OpenSlide (when installed) for what it cannot read")
    p = add("predict-slide", cmd_predict_slide, "predict a whole slide block by block into an OME-Zarr pyramid "
            "beside the project (bounded memory, resumable, optionally on a dask cluster)", project=False)
    p.add_argument("project", help="project store (a .zarr folder made by `oeem init`), or a .oeem-model file")
    add_common(p, "predict-slide")
    p.add_argument("--model", default=None, help="a .oeem-model file (`oeem export-model`) to predict with "
                   "instead of the project's model (default: the project's)")
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    add_mpp(p)
    p.add_argument("--out", default=None, help="output .ome.zarr (default: PROJECT.slides/NAME.ome.zarr)")
    add_redo(p, "replace an earlier prediction of other settings", "--restart")
    p.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler "
                   "(e.g. tcp://10.0.0.5:8786) whose workers predict the blocks (default: this process)")
    add_fast(p)
    add_model_name(p)
    p = add("export-slide", cmd_export_slide, "a slide prediction (.ome.zarr of `oeem predict-slide`) as QuPath "
            "GeoJSON: one Gland polygon per gland, lumens as holes, in the slide's level-0 pixels", project=False)
    p.add_argument("prediction", help="the .ome.zarr that `oeem predict-slide` wrote")
    p.add_argument("out", help="the .geojson file to write")
    p.add_argument("--tolerance", type=float, default=1.0, help="outline simplification in pixels of the "
                   "prediction: larger gives smaller files (default: 1.0)")
    p.add_argument("--prediction-pixels", action="store_true", help="coordinates in the prediction's pixels "
                   "instead of the slide's level 0 (default: level 0)")
    p = add("add-regions", cmd_add_regions, "cut regions of a slide into the project as training images, each "
            "with one weak label (gland, non-gland or mixed) that all its patches take")
    add_common(p, "add-regions")
    p.add_argument("slide", help="SVS, NDPI, pyramidal TIFF or OME-TIFF")
    p.add_argument("--box", action="append", metavar="X,Y,W,H",
                   help="a region in level-0 pixels (repeatable; default: none)")
    p.add_argument("--geojson", default=None,
                   help="QuPath GeoJSON ROIs; their classification is the label (default: none)")
    p.add_argument("--label", default=None,
                   help="gland, non-gland or mixed (for --box, and unclassified ROIs; default: none)")
    add_mpp(p)
    p.add_argument("--split", default="train", choices=("train", "val"), help="where they go (default: train)")
