"""How a project image appears in napari: fixed layer names and colours, so users can toggle them by habit."""
from __future__ import annotations

from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from pipeline.io.patch_labels import GEOJSON_COLORS
from pipeline.store import ProjectStore

if TYPE_CHECKING:
    import napari

IMAGE = "H&E"
MASK = "gland mask (truth)"
CAM_GLAND = "CAM gland"
CAM_NON_GLAND = "CAM non-gland"
PSEUDO = "pseudo-mask (editable)"
WEIGHT = "OEEM weight"
PREDICTION = "prediction"
CONFUSING = "probably wrong labels"  # outlines of the ranked regions (label review)
BEFORE_UPDATE = "prediction before update"  # the prediction an *Update model* replaced, for the before/after toggle
GLANDS = "glands (objects)"  # the prediction's glands, one colour per id: split and merge them in the Glands box
CUTS = "gland cuts"  # lines drawn across glands to split them
ORDER = (IMAGE, MASK, CAM_NON_GLAND, CAM_GLAND, WEIGHT, BEFORE_UPDATE, PREDICTION, GLANDS, PSEUDO, CONFUSING, CUTS)

_TRANSPARENT = (0, 0, 0, 0)
GLAND_COLOURS = {
    PSEUDO: (1.0, 0.85, 0.0, 1.0),     # yellow: the label being corrected
    MASK: (0.0, 0.9, 0.3, 1.0),        # green: ground truth
    PREDICTION: (0.2, 0.6, 1.0, 1.0),  # blue: the model's answer
    BEFORE_UPDATE: (1.0, 0.4, 0.9, 1.0),  # pink: the answer before the last update
}
PREVIEW = "preview (from tags)"  # the pixel classifier learned from the tags in seconds (pipeline.review.preview)
GLAND_COLOURS[PREVIEW] = (1.0, 0.55, 0.0, 1.0)  # orange: a first guess, redrawn after every tag
REGION_COLOUR = (1.0, 0.15, 0.15, 1.0)


def label_colormap(layer_name: str) -> DirectLabelColormap:
    """Only gland (1) is drawn; non-gland (0) stays transparent so the tissue shows through."""
    return DirectLabelColormap(color_dict={0: _TRANSPARENT, 1: GLAND_COLOURS[layer_name], None: _TRANSPARENT})


def editable_labels(store: ProjectStore, name: str) -> np.ndarray | None:
    """The pseudo-mask with any saved corrections (in memory: napari paints on numpy arrays)."""
    return store.labels(name)[0] if store.has(name, "pseudo") else None


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
        # additive: black adds nothing, so the lower 40 % of the range leaves the H&E as it is
        strong = [lo + 0.4 * (limits[1] - lo), limits[1]]
        specs.append((cam[1], {"name": CAM_GLAND, "colormap": "inferno", "blending": "additive",
                               "opacity": 0.45, "contrast_limits": strong}, "image"))
    if store.has(name, "weight"):
        specs.append((da.from_zarr(store.array(name, "weight")),
                      {"name": WEIGHT, "colormap": "viridis", "contrast_limits": [0.0, 2.0], "opacity": 0.7,
                       "blending": "translucent", "visible": False}, "image"))
    if store.has(name, "prediction"):
        specs.append((da.from_zarr(store.array(name, "prediction")),
                      {"name": PREDICTION, "colormap": label_colormap(PREDICTION), "opacity": 0.5,
                       "visible": False}, "labels"))
    if store.has(name, "instances"):  # in memory: split and merge edit it
        specs.append((store.read(name, "instances"), {"name": GLANDS, "opacity": 0.5, "visible": False}, "labels"))
    labels = editable_labels(store, name)
    if labels is not None:
        specs.append((labels, {"name": PSEUDO, "colormap": label_colormap(PSEUDO), "opacity": 0.45}, "labels"))
    return specs


def region_outlines(store: ProjectStore, name: str, top: int) -> np.ndarray | None:
    """The image's regions listed in the review's table (its first ``top`` in the review's order) as a label image
    (drawn as outlines), or None before any ranking."""
    from pipeline.review.state import ordered_regions

    if not store.has(name, "regions"):
        return None
    ids = store.read(name, "regions")
    ids[~np.isin(ids, [r.id for r in ordered_regions(store, top, name)])] = 0
    return ids if ids.any() else None


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def show_image(viewer, store: ProjectStore, name: str, top: int = 10) -> None:
    """Show the project layers of ``name``; other layers the user added are left alone.

    A layer both images have gets the new image's data in place, so it keeps the visibility and opacity the user
    gave it (toggling works by habit across images) and switching is quick: napari collects garbage on every layer
    it removes, a few tenths of a second each in a process that holds torch. Only the editable pseudo-mask is made
    anew, so its undo history is this image's alone."""
    specs = layer_specs(store, name)
    outlines = region_outlines(store, name, top)
    if outlines is not None:
        specs.append((outlines, {"name": CONFUSING, "opacity": 1.0, "colormap": DirectLabelColormap(
            color_dict={0: _TRANSPARENT, None: REGION_COLOUR})}, "labels"))
    wanted = {kwargs["name"] for _, kwargs, _ in specs}
    habits = {}
    for layer in [lyr for lyr in viewer.layers if lyr.name in ORDER]:
        if layer.name not in wanted or layer.name == PSEUDO:
            habits[layer.name] = {"visible": layer.visible, "opacity": layer.opacity}
            viewer.layers.remove(layer)
    for data, kwargs, kind in specs:
        if kwargs["name"] in viewer.layers:
            layer = viewer.layers[kwargs["name"]]
            layer.data = data
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
        else:
            layer = getattr(viewer, f"add_{kind}")(data, **{**kwargs, **habits.get(kwargs["name"], {})})
            _place(viewer, layer)
    if WEIGHT in viewer.layers:
        viewer.layers[WEIGHT].colorbar.visible = True
    if CONFUSING in viewer.layers:
        viewer.layers[CONFUSING].contour = 2
        viewer.layers[CONFUSING].editable = False
    if PSEUDO in viewer.layers:
        viewer.layers.selection.active = viewer.layers[PSEUDO]
    viewer.reset_view()


def _place(viewer, layer) -> None:
    """A project layer just added (on top) moved to its place in ``ORDER`` among the project layers shown."""
    rank = ORDER.index(layer.name)
    project = [k for k, lyr in enumerate(viewer.layers) if lyr.name in ORDER and lyr.name != layer.name]
    below = [k for k in project if ORDER.index(viewer.layers[k].name) < rank]
    dest = max(below) + 1 if below else (project[0] if project else None)
    src = viewer.layers.index(layer)
    if dest is not None and dest < src:
        viewer.layers.move(src, dest)


# ---------------------------------------------------------------------------- weak labels (patch tags)
# Two Labels layers over one array that numbers each patch's cell (``Tagger.cells``, which tile the image): a tag
# changes a colour of the colormap, never a pixel, so a key press redraws at once on any image size, and Labels
# stay crisp at every zoom. The fills show the tags (and the model's proposals, faint); the grid outlines every
# cell, so unlabelled patches are visible too, a proposal in its tag's colour, the patches suggested next in magenta.
WEAK_LABELS = "weak labels"
WEAK_GRID = "weak-label grid"
WEAK_SHAPES = "weak-label shapes"  # a rectangle or lasso drawn here tags the patches inside, then disappears
WEAK_LAYERS = (PREVIEW, WEAK_LABELS, WEAK_GRID, WEAK_SHAPES)
TAG_COLOURS = {tag: (r / 255, g / 255, b / 255, 1.0) for tag, (r, g, b) in GEOJSON_COLORS.items()}  # as in QuPath
PROPOSAL_ALPHA = 0.35  # a proposal: its tag's colour, this much of a tag's
GRID_COLOUR = (1.0, 1.0, 1.0, 0.35)
SUGGESTED_COLOUR = (1.0, 0.0, 1.0, 1.0)


def cell_ids(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel's patch: 1 + the index of the cell (y0, x0, y1, x1 rows of ``cells``) it lies in. The smallest
    integer type that holds them: napari maps a Labels colormap over the type's whole range on every change of
    tags, 256 values for uint8 against 65,536 for uint16 (38 ms of the GUI thread per layer on a GlaS image)."""
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if len(cells) < np.iinfo(t).max)
    ids = np.zeros(shape, dtype)
    for k, (y0, x0, y1, x1) in enumerate(np.round(cells).astype(int)):
        ids[y0:y1, x0:x1] = k + 1
    return ids


def tag_colormap(tags: np.ndarray, proposals: np.ndarray | None = None) -> DirectLabelColormap:
    """The fills: each tagged patch in its tag's colour, an unlabelled one in its proposal's, faint, or not at all."""
    colours = {0: _TRANSPARENT, None: _TRANSPARENT}
    for k, tag in enumerate(tags):
        if tag:
            colours[k + 1] = TAG_COLOURS[int(tag)]
        elif proposals is not None and proposals[k]:
            colours[k + 1] = (*TAG_COLOURS[int(proposals[k])][:3], PROPOSAL_ALPHA)
    return DirectLabelColormap(color_dict=colours)


def grid_colormap(tags: np.ndarray, proposals: np.ndarray | None = None, suggested=()) -> DirectLabelColormap:
    """The outlines: every cell faint; an unlabelled one in its proposal's colour (so a faint fill still reads
    over pink tissue), or in magenta when ``suggested`` (indices) names it."""
    colours = {0: _TRANSPARENT, None: _TRANSPARENT, **{k + 1: GRID_COLOUR for k in range(len(tags))}}
    if proposals is not None:
        open_ = np.flatnonzero((tags == 0) & (proposals > 0))
        colours.update({int(k) + 1: TAG_COLOURS[int(proposals[k])] for k in open_})
    colours.update({int(k) + 1: SUGGESTED_COLOUR for k in suggested if not tags[k]})
    return DirectLabelColormap(color_dict=colours)


# ---------------------------------------------------------------------------- whole slides
def _micrometres(kwargs: dict) -> dict:
    """Layer units in µm where napari has them (0.6+), so the scale bar reads microns."""
    import inspect

    from napari.layers import Image

    if "units" in inspect.signature(Image.__init__).parameters:
        kwargs["units"] = ("um", "um")
    return kwargs


SLIDE_REGIONS = "slide regions"  # rectangles drawn on a slide, added to the project as training images
SLIDE_PREDICTION = "slide prediction"
SLIDE_GLANDS = "slide glands (objects)"


def slide_layer_spec(path) -> tuple:
    """A slide as a lazy multiscale RGB layer in microns (when its pixel size is known), its path and pixel size
    in the metadata the widget reads back."""
    from pipeline.slides.reader import open_slide

    slide = open_slide(path)
    mpp = slide.info.mpp or 1.0
    name = f"slide: {slide.path.name}"
    meta = {"oeem_slide": str(slide.path), "mpp": slide.info.mpp, "mpp_source": slide.info.mpp_source,
            "levels": slide.info.level_dimensions, "notes": slide.info.notes}
    kwargs = {"name": name, "rgb": True, "multiscale": True, "scale": (mpp, mpp), "metadata": meta}
    return (slide.pyramid(), _micrometres(kwargs) if slide.info.mpp else kwargs, "image")


def slide_prediction_specs(out) -> list[tuple]:
    """The gland probability (hidden) and mask of a slide prediction as multiscale layers, in microns."""
    import zarr

    root = zarr.open_group(str(out), mode="r")
    mpp = float(root.attrs["oeem_slide_prediction"]["project_mpp"])
    levels = [d["path"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
    pred = root["labels/prediction"]
    probs = [da.from_zarr(root[k]) for k in levels]
    masks = [da.from_zarr(pred[k]) for k in levels]
    if len(levels) == 1:  # a small slide: one level, which napari takes as a plain array
        probs, masks = probs[0], masks[0]
    multi = len(levels) > 1
    glands = []
    if "glands" in root["labels"]:  # the glands as objects, one colour per id
        ids = [da.from_zarr(root["labels/glands"][k]) for k in levels]
        glands = [(ids if multi else ids[0], _micrometres({"name": SLIDE_GLANDS, "multiscale": multi,
                                                           "scale": (mpp, mpp), "opacity": 0.5, "visible": False}),
                   "labels")]
    return glands + [(probs, _micrometres({"name": "slide gland probability", "multiscale": multi, "scale": (mpp, mpp),
                                  "colormap": "inferno", "contrast_limits": [0, 255], "blending": "additive",
                                  "visible": False}), "image"),
            (masks, _micrometres({"name": SLIDE_PREDICTION, "multiscale": multi, "scale": (mpp, mpp),
                                  "colormap": label_colormap(PREDICTION), "opacity": 0.5,
                                  "metadata": {"oeem_slide_prediction": str(out)}}), "labels")]


def scale_bar(viewer: napari.Viewer):
    """The viewer's scale bar overlay: ``viewer.canvas.overlays`` holds it since napari 0.9 (``viewer.scale_bar``
    is deprecated there), the older releases this plugin supports only have the attribute."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "scale_bar", None) or viewer.scale_bar
