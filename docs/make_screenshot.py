"""Save docs/screenshot.png: the whole napari window with the OEEM dock on a real GlaS training image, its CAM, its
pseudo-mask and the label review's outlined regions.

    OEEM_GLAS_ROOT=/path/to/glas xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py

With GlaS (``--glas``, default ``$OEEM_GLAS_ROOT``: a folder with train/ and testA/) it makes a small project of a
few of its training images and takes it through every stage and the label review's ranking on a short schedule
(a few minutes on 2 CPU cores; the picture shows the interface, not a good model). Without GlaS it uses
``--project`` (e.g. the one `make demo` makes). Everything is computed before the dock opens the project, as a
user would find it, so the review table is filled.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

def glas_project(glas: Path, path: Path, images: int, settings: dict) -> Path:
    """``images`` GlaS training images (two of them held out as the validation split the ranking is calibrated
    on) through every stage; reused when it is there."""
    from pipeline.progress import run
    from pipeline.review.regions import load_ranking, rank_label_errors
    from pipeline.stages.run import run_all
    from pipeline.store import ProjectStore
    from pipeline.store.project import create_project, project_config

    if path.exists():
        store = ProjectStore.open(path)
    else:
        pick = sorted((p for p in (glas / "train").iterdir() if p.stem.startswith("train_")
                       and not p.stem.endswith("_anno")), key=lambda p: int(p.stem.split("_")[1]))[:images]
        with tempfile.TemporaryDirectory() as tmp:  # the project keeps its own copy of the images
            for image in pick:
                for src in [image, *image.parent.glob(f"{image.stem}_anno.*")]:
                    (Path(tmp) / src.name).symlink_to(src)
            store = create_project(tmp, path, val_images=2)
    cfg = project_config(store, "tiny", settings)
    run(run_all(store, cfg, "cpu"))  # resumes: only what is missing
    if load_ranking(store) is None:
        run(rank_label_errors(store, cfg, "train"))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glas", default=os.environ.get("OEEM_GLAS_ROOT"),
                    help="GlaS folder (train/, testA/); default: $OEEM_GLAS_ROOT")
    ap.add_argument("--images", type=int, default=8, help="GlaS training images in the project (default: 8)")
    ap.add_argument("--project", default=None, help="the project to show (default: runs/screenshot_glas.oeem.zarr "
                    "made from GlaS, else runs/sample.oeem.zarr from `make demo`)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "screenshot.png"),
                    help="the PNG (256 colours, a few hundred kB)")
    args = ap.parse_args()
    # a short schedule: tiny networks, a few epochs and iterations, no self-training round
    settings = {"classifier.epochs": 6, "segmentation.iterations": 60, "selftrain.rounds": 0,
                "ranking.threshold": 0.3, "ranking.trees": 20, "classifier.threads": 2, "segmentation.threads": 2}
    if args.glas:
        project = glas_project(Path(args.glas), Path(args.project or "runs/screenshot_glas.oeem.zarr"), args.images,
                               settings)
    else:
        project = Path(args.project or "runs/sample.oeem.zarr")
        from pipeline.progress import run
        from pipeline.review.regions import load_ranking, rank_label_errors
        from pipeline.store import ProjectStore
        from pipeline.store.project import project_config

        if not project.exists():
            raise SystemExit(f"{project}: no project; set OEEM_GLAS_ROOT or run `make demo` first")
        store = ProjectStore.open(project)
        if load_ranking(store) is None:  # before the dock opens the project: the table shows the ranking
            run(rank_label_errors(store, project_config(store, save=False), "train"))
    shoot(project, args.out)


def shoot(project: Path, out: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from oeem_napari import _layers
    from pipeline.review.regions import ranked_regions

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    if not widget.open_project(project):
        raise SystemExit(f"{project}: cannot open it")
    store = widget.store
    best = max(store.names("train"), key=lambda n: len(ranked_regions(store, widget.top_spin.value(), n)))
    widget.image_combo.setCurrentText(best)
    layers = viewer.layers
    for name in (_layers.PREDICTION, _layers.WEIGHT):
        if name in layers:
            layers[name].visible = False
    layers.selection.active = layers[_layers.PSEUDO]
    widget.settings_panel.unfold(False)  # room for the whole dock: project, run, review table, the folded boxes
    if widget.regions:
        widget.region_table.selectRow(0)
    for _ in range(30):
        QApplication.processEvents()
    viewer.reset_view()  # the whole image, in the canvas as the window finally is
    for _ in range(10):
        QApplication.processEvents()
    from PIL import Image

    layers = viewer.layers  # the image's layers as they finally are
    if _layers.CAM_GLAND in layers:  # the CAM under the pseudo-mask made from it
        layers[_layers.CAM_GLAND].visible = True
        layers[_layers.CAM_GLAND].opacity = 0.6
    layers[_layers.PSEUDO].opacity = 0.35
    for _ in range(10):
        QApplication.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)  # RGBA
    Image.fromarray(shot[..., :3]).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
        .save(out, optimize=True)
    print(f"wrote {out}: {best}, {len(widget.regions)} regions listed")
    viewer.close()


if __name__ == "__main__":
    main()
