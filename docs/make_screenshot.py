"""Save docs/screenshot.png: the whole napari window with the OEEM dock and every layer of one image.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py [--project runs/sample.oeem.zarr]

Uses the project made by `make demo` (the whole method on the sample data).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from oeem_napari import _layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default="runs/sample.oeem.zarr")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "screenshot.png"))
    args = ap.parse_args()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    if not widget.open_project(args.project):
        raise SystemExit(f"{args.project}: no project; run `make demo` first")
    from pipeline.progress import run
    from pipeline.review.regions import load_ranking, rank_label_errors, ranked_regions

    if load_ranking(widget.store) is None:
        run(rank_label_errors(widget.store, widget._config(save=False), "train"))
    best = max(widget.store.names("train"), key=lambda n: len(ranked_regions(widget.store, image=n)))
    widget.image_combo.setCurrentText(best)
    layers = viewer.layers
    for name in (_layers.PREDICTION,):
        if name in layers:
            layers[name].visible = False
    if _layers.WEIGHT in layers:
        layers[_layers.WEIGHT].visible = False
    layers.selection.active = layers[_layers.PSEUDO]
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
