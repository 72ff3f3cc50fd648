"""Export (corrected) masks and gland instances in formats other tools read: GlaS-style PNG, TIFF, OME-Zarr and
QuPath GeoJSON. A mask is written 0/255 (PNG, TIFF), 0/1 (OME-Zarr) or as "Gland" polygons; instances (one id per
gland) keep their ids: 16-bit PNG, 16- or 32-bit TIFF and OME-Zarr labels, one GeoJSON feature per gland with its
id and area."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image

from pipeline.errors import OEEMError
from pipeline.io.omezarr import write_label_file
from pipeline.store import ProjectStore

FORMATS = ("png", "tiff", "zarr", "geojson")
SUFFIXES = {"png": "_anno.png", "tiff": "_anno.tif", "zarr": "_anno.zarr", "geojson": ".geojson"}
SOURCES = ("corrected", "pseudo", "prediction", "instances")


def mask_for_export(store: ProjectStore, name: str, source: str) -> np.ndarray:
    if source == "corrected":  # corrections where painted, the pseudo-mask elsewhere
        return store.labels(name)[0]
    if source in ("pseudo", "prediction", "instances"):
        return store.read(name, source)
    raise OEEMError(f"unknown export source {source!r}: choose {', '.join(SOURCES)}")


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OEEMError(f"{folder}: cannot create the export folder ({exc.strerror}); choose another") from None
    if not os.access(folder, os.W_OK):
        raise OEEMError(f"{folder}: the folder is read-only; choose a folder you can write to")


def export_masks(store: ProjectStore, folder: str | Path, fmt: str = "png", source: str = "corrected",
                 names: list[str] | None = None) -> list[Path]:
    """Write one mask per image: 0/255 in PNG (GlaS ``NAME_anno.png``) and TIFF, 0/1 labels in OME-Zarr, "Gland"
    polygons in QuPath GeoJSON (``NAME.geojson``); ``source="instances"``: the glands' ids (module docstring).

    All or nothing: every image is checked before anything is written, the files are made in a hidden folder
    beside the destination and only then moved into place, so a failure (a missing prediction, a full disk)
    leaves the folder as it was."""
    if fmt not in FORMATS:
        raise OEEMError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    if source not in SOURCES:
        raise OEEMError(f"unknown export source {source!r}: choose {', '.join(SOURCES)}")
    folder = Path(folder)
    _check_writable(folder)
    names = names or [n for n in store.names() if store.has(n, "pseudo") or store.has(n, source)]
    if not names:
        raise OEEMError(f"{store.path}: nothing to export yet; run `oeem cams {store.path}` first")
    needs = "pseudo" if source == "corrected" else source
    mpp = _project_mpp(store)
    missing = [n for n in names if not store.has(n, needs)]
    if missing:
        raise OEEMError(f"{store.path}: {len(missing)} of {len(names)} images have no {needs!r} yet "
                        f"(first: {missing[0]}); {_make_hint(store, needs)} - nothing was exported")
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".oeem-export-"))
    try:
        staged = []
        for n in names:
            staged.append(_write_one(staging / f"{n}{SUFFIXES[fmt]}", mask_for_export(store, n, source), n, fmt,
                                     source == "instances", mpp))
        written = []
        for path in staged:
            written.append(_move_into_place(path, folder / path.name, staging))
    except OSError as exc:
        raise OEEMError(f"{folder}: export failed ({exc.strerror or exc}); nothing was changed there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _move_into_place(src: Path, dst: Path, staging: Path) -> Path:
    """Rename ``src`` over ``dst``. A folder (OME-Zarr) cannot be swapped in one step: the old one is first
    renamed into the hidden staging folder (deleted with it), so an interruption leaves the old or the new
    folder whole - or, between the two renames, none - never one half deleted."""
    if dst.is_dir():
        os.replace(dst, staging / f".old-{dst.name}")
    os.replace(src, dst)
    return dst


def _make_hint(store: ProjectStore, key: str) -> str:
    from pipeline.store.project_store import MAKES

    return MAKES.get(key, "").replace("PROJECT", str(store.path)) or f"make {key!r} first"


def _project_mpp(store: ProjectStore) -> float | None:
    """µm per pixel of the project's images (its settings' ``slide.project_mpp``), for areas in µm²."""
    try:
        from pipeline.store.project import project_config

        return float(project_config(store).slide.project_mpp)
    except OEEMError:
        return None


def id_dtype(ids: np.ndarray) -> np.dtype:
    """The smallest unsigned type that holds every id: 16 bits for up to 65,535 glands (what most tools read)."""
    if np.min(ids, initial=0) < 0:
        raise OEEMError("gland ids must be >= 0 (0 = background)")
    return np.dtype(np.uint16 if int(np.max(ids, initial=0)) <= np.iinfo(np.uint16).max else np.uint32)


def _write_ids(path: Path, ids: np.ndarray, name: str, fmt: str, mpp: float | None) -> Path:
    """Instances, ids kept (module docstring)."""
    ids = np.asarray(ids)
    dtype = id_dtype(ids)
    if fmt == "png":
        if dtype != np.uint16:
            raise OEEMError(f"{name}: {int(ids.max())} gland ids do not fit a 16-bit PNG; export as TIFF or OME-Zarr")
        buf = io.BytesIO()
        Image.fromarray(ids.astype(np.uint16)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    elif fmt == "tiff":
        tifffile.imwrite(path, ids.astype(dtype), compression="zlib", metadata={"axes": "YX"})
    elif fmt == "zarr":
        write_label_file(path, ids.astype(dtype), name, mpp=mpp, ids=True)
    else:
        from pipeline.io.geojson import instances_to_geojson

        path.write_text(json.dumps(instances_to_geojson(ids, name, mpp)))
    return path


def _write_one(path: Path, mask: np.ndarray, name: str, fmt: str, ids: bool = False,
               mpp: float | None = None) -> Path:
    if ids:
        return _write_ids(path, mask, name, fmt, mpp)
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if fmt == "png":
        buf = io.BytesIO()
        Image.fromarray(mask * 255).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    elif fmt == "tiff":
        tifffile.imwrite(path, mask * 255, compression="zlib", metadata={"axes": "YX"})
    elif fmt == "zarr":
        write_label_file(path, mask, name)
    else:
        from pipeline.io.geojson import mask_to_geojson

        path.write_text(json.dumps(mask_to_geojson(mask, name)))
    return path


def write_mask_file(path: str | Path, mask: np.ndarray, name: str | None = None, ids: bool = False,
                    mpp: float | None = None) -> Path:
    """One mask to one file, the format from the name (``.png``, ``.tif``, ``.zarr``, ``.geojson``), written
    atomically: what napari's "Save Selected Layers" and the dock's export both use. ``ids``: ``mask`` holds one
    id per gland, kept in the file (areas in µm² with ``mpp``)."""
    path = Path(path)
    lower = path.name.lower()
    fmt = next((f for f, suffixes in (("png", (".png",)), ("tiff", (".tif", ".tiff")), ("zarr", (".zarr",)),
                                       ("geojson", (".geojson", ".json"))) if lower.endswith(suffixes)), None)
    if fmt is None:
        raise OEEMError(f"{path}: unknown mask format; use .png, .tif, .zarr or .geojson")
    if not path.parent.is_dir():
        raise OEEMError(f"{path.parent}: folder does not exist")
    name = name or path.name.split(".")[0]
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".oeem-save-"))
    try:
        _move_into_place(_write_one(staging / path.name, mask, name, fmt, ids, mpp), path, staging)
    except OSError as exc:
        raise OEEMError(f"{path}: could not be written ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_exported_mask(path: str | Path) -> np.ndarray:
    """Read back a mask written by :func:`export_masks` as 0/1 uint8 (PNG, TIFF, OME-Zarr; GeoJSON needs the
    image size: see :func:`pipeline.io.geojson.rasterise_geojson`); exported instances read as their mask."""
    return (read_exported_ids(path) > 0).astype(np.uint8)


def read_exported_ids(path: str | Path, shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read back exported instances as int64 ids (PNG, TIFF, OME-Zarr; GeoJSON: each feature's gland id, drawn
    at ``shape_hw``)."""
    path = Path(path)
    if path.suffix.lower() in (".geojson", ".json"):
        from pipeline.io.geojson import geojson_instances, read_geojson

        if shape_hw is None:
            raise OEEMError(f"{path}: GeoJSON has no image size; give the image's height and width")
        return geojson_instances(read_geojson(path), shape_hw, str(path))
    if path.is_dir() and (path / "zarr.json").is_file():
        return np.asarray(zarr.open_group(str(path), mode="r")["0"][...]).astype(np.int64)
    if path.suffix.lower() in (".tif", ".tiff"):
        return tifffile.imread(path).astype(np.int64)
    from pipeline.io.data import read_mask_labels

    return read_mask_labels(path).astype(np.int64)
