"""Export (corrected) masks in formats other tools read: GlaS-style PNG, TIFF, and OME-Zarr-style zarr."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
import zarr
from PIL import Image

from pipeline.errors import OEEMError
from pipeline.store import ProjectStore, atomic_write_bytes

FORMATS = ("png", "tiff", "zarr")
SOURCES = ("corrected", "pseudo", "prediction")


def mask_for_export(store: ProjectStore, name: str, source: str) -> np.ndarray:
    if source == "corrected":  # corrections where painted, the pseudo-mask elsewhere
        return store.read(name, "corrected") if store.has(name, "corrected") else store.read(name, "pseudo")
    if source in ("pseudo", "prediction"):
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
    """Write one mask per image; 0/255 in PNG (GlaS ``NAME_anno.png``) and TIFF, 0/1 labels in zarr."""
    if fmt not in FORMATS:
        raise OEEMError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    folder = Path(folder)
    _check_writable(folder)
    names = names or [n for n in store.names() if store.has(n, "pseudo") or store.has(n, source)]
    if not names:
        raise OEEMError(f"{store.path}: nothing to export yet; run `oeem cams {store.path}` first")
    written = []
    for n in names:
        mask = mask_for_export(store, n, source).astype(np.uint8)
        if fmt == "png":
            path = folder / f"{n}_anno.png"
            import io

            buf = io.BytesIO()
            Image.fromarray(mask * 255).save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
        elif fmt == "tiff":
            path = folder / f"{n}_anno.tif"
            import io

            buf = io.BytesIO()
            tifffile.imwrite(buf, mask * 255, compression="zlib", metadata={"axes": "YX"})
            atomic_write_bytes(path, buf.getvalue())
        else:
            path = folder / f"{n}_anno.zarr"
            write_ome_labels(path, mask, n)
        written.append(path)
    return written


def write_ome_labels(path: Path, mask: np.ndarray, name: str) -> None:
    """A single-scale OME-Zarr (NGFF 0.5 'multiscales' on zarr v3) holding the label image as ``0``."""
    g = zarr.open_group(str(path), mode="w")
    arr = g.create_array("0", shape=mask.shape, dtype="uint8", chunks=(min(512, mask.shape[0]),
                                                                       min(512, mask.shape[1])))
    arr[...] = mask
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": name, "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}]}],
        "image-label": {"colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]},
                                   {"label-value": 1, "rgba": [0, 200, 80, 255]}]}}


def read_exported_mask(path: str | Path) -> np.ndarray:
    """Read back a mask written by :func:`export_masks` (any of the three formats) as 0/1 uint8."""
    path = Path(path)
    if path.is_dir() and (path / "zarr.json").is_file():
        return (np.asarray(zarr.open_group(str(path), mode="r")["0"][...]) > 0).astype(np.uint8)
    if path.suffix.lower() in (".tif", ".tiff"):
        return (tifffile.imread(path) > 0).astype(np.uint8)
    from pipeline.data import read_mask

    return read_mask(path)
