"""Reader: an OEEM project (its first image's layers), an exported mask (PNG, TIFF, OME-Zarr) as Labels, a whole
slide (SVS, NDPI, pyramidal TIFF, OME-TIFF) as a lazy multiscale image, or a slide prediction as multiscale
Labels."""
from __future__ import annotations

from pathlib import Path

from oeem_napari._layers import PSEUDO, label_colormap
from pipeline.io.data import gland_ids
from pipeline.io.export import read_exported_ids, read_exported_mask


def _is_project(path: Path) -> bool:
    import json

    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "oeem_store_version" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def _is_exported(path: Path) -> bool:
    stem = path.name
    if path.is_dir():
        return stem.endswith("_anno.zarr") and (path / "0").exists()
    return path.suffix.lower() in (".png", ".tif", ".tiff") and path.stem.endswith("_anno")


def get_reader(path):
    if isinstance(path, list):
        path = path[0]
    path = Path(path)
    if path.is_dir() and _is_project(path):
        return read_project
    if _is_exported(path):
        return read_mask_file
    if path.is_dir() and _is_slide_prediction(path):
        return read_slide_prediction
    from pipeline.slides.reader import is_slide_file

    if is_slide_file(path):
        return read_slide
    return None


def _is_slide_prediction(path: Path) -> bool:
    import json

    try:
        return "oeem_slide_prediction" in json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def read_slide(path):
    from oeem_napari._layers import slide_layer_spec

    return [slide_layer_spec(p) for p in (path if isinstance(path, list) else [path])]


def read_slide_prediction(path):
    from oeem_napari._layers import slide_prediction_specs

    return slide_prediction_specs(path[0] if isinstance(path, list) else path)


def read_mask_file(path):
    paths = path if isinstance(path, list) else [path]
    out = []
    for p in paths:
        p = Path(p)
        ids = gland_ids(read_exported_ids(p))  # None for a mask (one value for every gland)
        name = p.name.split("_anno")[0] + "_anno"
        if ids is not None:  # exported glands as objects: one id (colour) per gland
            out.append((ids, {"name": name, "opacity": 0.5}, "labels"))
        else:
            out.append((read_exported_mask(p), {"name": name, "colormap": label_colormap(PSEUDO), "opacity": 0.5},
                        "labels"))
    return out


def read_project(path):
    from oeem_napari._layers import layer_specs
    from pipeline.store import ProjectStore

    store = ProjectStore.open(path, mode="r")
    names = store.names()
    return [(data, kwargs, kind) for data, kwargs, kind in layer_specs(store, names[0])] if names else []
