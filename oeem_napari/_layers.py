"""How a project image appears in napari: fixed layer names and colours, so users can toggle them by habit."""
from __future__ import annotations

import dask.array as da
import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from pipeline.regions import confusing_regions
from pipeline.store import ProjectStore

IMAGE = "H&E"
MASK = "gland mask (truth)"
CAM_GLAND = "CAM gland"
CAM_NON_GLAND = "CAM non-gland"
PSEUDO = "pseudo-mask (editable)"
WEIGHT = "OEEM weight"
PREDICTION = "prediction"
CONFUSING = "confusing regions"
ORDER = (IMAGE, MASK, CAM_NON_GLAND, CAM_GLAND, WEIGHT, PREDICTION, PSEUDO, CONFUSING)

_TRANSPARENT = (0, 0, 0, 0)
GLAND_COLOURS = {
    PSEUDO: (1.0, 0.85, 0.0, 1.0),     # yellow: the label being corrected
    MASK: (0.0, 0.9, 0.3, 1.0),        # green: ground truth
    PREDICTION: (0.2, 0.6, 1.0, 1.0),  # blue: the model's answer
}


def label_colormap(layer_name: str) -> DirectLabelColormap:
    """Only gland (1) is drawn; non-gland (0) stays transparent so the tissue shows through."""
    return DirectLabelColormap(color_dict={0: _TRANSPARENT, 1: GLAND_COLOURS[layer_name], None: _TRANSPARENT})


def editable_labels(store: ProjectStore, name: str) -> np.ndarray | None:
    """The pseudo-mask with any saved corrections (in memory: napari paints on numpy arrays)."""
    if store.has(name, "corrected"):
        return store.read(name, "corrected")
    if store.has(name, "pseudo"):
        return store.read(name, "pseudo")
    return None


def layer_specs(store: ProjectStore, name: str) -> list[tuple]:
    """(data, kwargs, layer type) for every layer the image has. Large arrays stay lazy (dask over zarr)."""
    specs: list[tuple] = [(da.from_zarr(store.array(name, "image")), {"name": IMAGE, "rgb": True}, "image")]
    if store.has(name, "mask"):
        specs.append((da.from_zarr(store.array(name, "mask")),
                      {"name": MASK, "colormap": label_colormap(MASK), "opacity": 0.4, "visible": False}, "labels"))
    if store.has(name, "cam"):
        cam = da.from_zarr(store.array(name, "cam"))
        lo, hi = float(cam.min().compute()), float(cam.max().compute())
        limits = [lo, hi] if hi > lo else [lo, lo + 1]
        specs.append((cam[0], {"name": CAM_NON_GLAND, "colormap": "cyan", "blending": "additive",
                               "opacity": 0.5, "contrast_limits": limits, "visible": False}, "image"))
        specs.append((cam[1], {"name": CAM_GLAND, "colormap": "inferno", "blending": "additive",
                               "opacity": 0.6, "contrast_limits": limits}, "image"))
    if store.has(name, "weight"):
        specs.append((da.from_zarr(store.array(name, "weight")),
                      {"name": WEIGHT, "colormap": "viridis", "contrast_limits": [0.0, 2.0], "opacity": 0.7,
                       "blending": "translucent", "visible": False}, "image"))
    if store.has(name, "prediction"):
        specs.append((da.from_zarr(store.array(name, "prediction")),
                      {"name": PREDICTION, "colormap": label_colormap(PREDICTION), "opacity": 0.5,
                       "visible": False}, "labels"))
    labels = editable_labels(store, name)
    if labels is not None:
        specs.append((labels, {"name": PSEUDO, "colormap": label_colormap(PSEUDO), "opacity": 0.45}, "labels"))
    return specs


def regions_for(store: ProjectStore, name: str) -> list:
    """Confusing regions of one image, from the prediction, the (corrected) pseudo-mask and the OEEM weight."""
    labels = editable_labels(store, name)
    if labels is None or not (store.has(name, "prediction") or store.has(name, "weight")):
        return []
    pred = store.read(name, "prediction") if store.has(name, "prediction") else None
    weight = store.read(name, "weight") if store.has(name, "weight") else None
    return confusing_regions(name, pred, labels, weight)


def region_rectangles(regions: list) -> list[np.ndarray]:
    return [np.array([[r.bbox[0], r.bbox[1]], [r.bbox[2], r.bbox[3]]], float) for r in regions]


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def show_image(viewer, store: ProjectStore, name: str) -> None:
    """Replace the project layers with those of ``name``; other layers the user added are left alone.

    Each layer keeps the visibility and opacity the user last gave it, so toggling works by habit across images."""
    habits = {}
    for layer in [lyr for lyr in viewer.layers if lyr.name in ORDER]:
        habits[layer.name] = {"visible": layer.visible, "opacity": layer.opacity}
        viewer.layers.remove(layer)
    for data, kwargs, kind in layer_specs(store, name):
        getattr(viewer, f"add_{kind}")(data, **{**kwargs, **habits.get(kwargs["name"], {})})
    if WEIGHT in viewer.layers:
        viewer.layers[WEIGHT].colorbar.visible = True
    regions = regions_for(store, name)
    if regions:
        viewer.add_shapes(region_rectangles(regions), shape_type="rectangle", name=CONFUSING, edge_color="red",
                          face_color="transparent", edge_width=3, features={"score": [r.score for r in regions]})
    if PSEUDO in viewer.layers:
        viewer.layers.selection.active = viewer.layers[PSEUDO]
    viewer.reset_view()
