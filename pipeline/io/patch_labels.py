"""Patch labels as files: a CSV any tool can write, and QuPath GeoJSON squares.

A *tag* says which classes a patch holds: ``GLAND`` (gland only), ``NON_GLAND`` (no gland), ``BOTH``, or
``UNLABELLED`` (the pathologist has not said; such a patch trains nothing). Bit 1 is "gland present", bit 2
"non-gland present", so a tag is also the patch's multi-label vector.

CSV: the header ``image,x,y,size,gland,non_gland``, one row per labelled patch: the image's file name without
folder, the patch's top-left corner in full-resolution pixels, its side in pixels, and 1/0 for each class
present (at least one of them 1).

GeoJSON (QuPath): one square annotation per labelled patch, classified ``Gland``, ``Non-gland`` or
``Gland+Non-gland``; the image is the ``image`` property of the feature, or the file's name for a file of one
image (``NAME.geojson``).

A square exactly on a patch of the project's grid (same corner, same side) labels that patch and no other. A
square off the grid labels each patch it covers more than half of (several squares: the union of their classes);
a patch that no square covers that much stays unlabelled. (The first rule makes an exported file come back as it left:
the grid's last row and column sit flush with the image's edge and may overlap their neighbours by more than
half.) Import is all or nothing: the first bad row is named, nothing is kept.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import OEEMError

UNLABELLED, GLAND, NON_GLAND, BOTH = 0, 1, 2, 3
TAG_NAMES = {UNLABELLED: "unlabelled", GLAND: "gland only", NON_GLAND: "no gland", BOTH: "both"}
CSV_HEADER = ("image", "x", "y", "size", "gland", "non_gland")
GEOJSON_CLASSES = {GLAND: "Gland", NON_GLAND: "Non-gland", BOTH: "Gland+Non-gland"}
GEOJSON_COLORS = {GLAND: [0, 200, 80], NON_GLAND: [60, 90, 230], BOTH: [230, 160, 0]}
COVER = 0.5  # a grid patch takes a labelled square's classes when the square covers more than this share of it


@dataclass(frozen=True)
class PatchLabel:
    """One labelled square: ``image`` (name without folder or suffix), top-left ``x``, ``y`` and side ``size``
    in full-resolution pixels, and its ``tag``. ``where`` names its place in the file for messages."""

    image: str
    x: int
    y: int
    size: int
    tag: int
    where: str = ""


def tag_of(gland: bool, non_gland: bool) -> int:
    return (GLAND if gland else 0) | (NON_GLAND if non_gland else 0)


def tags_to_vectors(tags: np.ndarray) -> np.ndarray:
    """(N,) tags -> (N, 2) uint8 [non-gland, gland] vectors, the classifier's targets (unlabelled rows: 0, 0)."""
    tags = np.asarray(tags)
    return np.stack([(tags & NON_GLAND) > 0, (tags & GLAND) > 0], axis=1).astype(np.uint8)


def vectors_to_tags(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors)
    return (vectors[:, 1].astype(np.uint8) * GLAND | vectors[:, 0].astype(np.uint8) * NON_GLAND).astype(np.uint8)


def image_key(name: str) -> str:
    """The image a row names, as the project names it: no folder, no suffix, other characters than letters,
    digits, '_', '-' and '.' as '_' (see :func:`pipeline.io.data.safe_name`)."""
    from pipeline.io.data import safe_name

    return safe_name(Path(str(name).strip().replace("\\", "/")).stem)


# ---------------------------------------------------------------------------- reading
def _whole(value: str, what: str, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OEEMError(f"{where}: {what} {value!r} is not a number") from None
    if number != int(number):
        raise OEEMError(f"{where}: {what} {value!r} is not a whole number of pixels")
    return int(number)


def _flag(value: str, what: str, where: str) -> bool:
    text = str(value).strip()
    if text not in ("0", "1"):
        raise OEEMError(f"{where}: {what} must be 1 (present) or 0 (absent), not {value!r}")
    return text == "1"


def read_label_csv(path: str | Path) -> list[PatchLabel]:
    path = Path(path)
    if not path.is_file():
        raise OEEMError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip().lower() for h in header) != CSV_HEADER:
            raise OEEMError(f"{path}: the first line must be the header {','.join(CSV_HEADER)}, not "
                            f"{','.join(header or []) or 'empty'}")
        rows = []
        for k, fields in enumerate(reader, start=2):
            where = f"{path.name} line {k}"
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(CSV_HEADER):
                raise OEEMError(f"{where}: {len(fields)} values; a row is {','.join(CSV_HEADER)}")
            image, x, y, size, gland, non_gland = fields
            if not image.strip():
                raise OEEMError(f"{where}: no image name")
            tag = tag_of(_flag(gland, "gland", where), _flag(non_gland, "non_gland", where))
            if tag == UNLABELLED:
                raise OEEMError(f"{where}: gland and non_gland are both 0; a labelled patch holds at least one class")
            rows.append(PatchLabel(image_key(image), _whole(x, "x", where), _whole(y, "y", where),
                                   _whole(size, "size", where), tag, where))
    return rows


def _square(geometry: dict, where: str) -> tuple[int, int, int]:
    """(x, y, size) of an axis-aligned square polygon, or a one-line error."""
    from shapely.geometry import shape

    try:
        geom = shape(geometry)
    except Exception:  # noqa: BLE001 - any malformed geometry
        raise OEEMError(f"{where}: the geometry is not valid GeoJSON") from None
    if geom.geom_type != "Polygon":
        raise OEEMError(f"{where}: a patch label is a square Polygon, not a {geom.geom_type}")
    x0, y0, x1, y1 = geom.bounds
    w, h = x1 - x0, y1 - y0
    if w <= 0 or abs(w - h) > 0.5 or abs(geom.area - w * h) > 0.01 * w * h:
        raise OEEMError(f"{where}: not an axis-aligned square ({w:g} x {h:g} px); a patch label is a square")
    return round(x0), round(y0), round(w)


def read_label_geojson(path: str | Path) -> list[PatchLabel]:
    from pipeline.io.geojson import class_of, geojson_features, read_geojson

    path = Path(path)
    features = geojson_features(read_geojson(path), str(path))
    names = {name.lower(): tag for tag, name in GEOJSON_CLASSES.items()}
    rows = []
    for k, feat in enumerate(features, start=1):
        where = f"{path.name} feature {k}"
        cls = class_of(feat)
        if cls is None or cls.lower() not in names:
            raise OEEMError(f"{where}: classification {cls!r}; a patch label is classified "
                            f"{', '.join(GEOJSON_CLASSES.values())}")
        image = (feat.get("properties") or {}).get("image") or path.stem
        x, y, size = _square(feat.get("geometry") or {}, where)
        rows.append(PatchLabel(image_key(image), x, y, size, names[cls.lower()], where))
    return rows


def read_label_file(path: str | Path) -> list[PatchLabel]:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_label_csv(path)
    if suffix in (".geojson", ".json"):
        return read_label_geojson(path)
    raise OEEMError(f"{path}: patch labels are a .csv (header {','.join(CSV_HEADER)}) or a QuPath .geojson")


# ---------------------------------------------------------------------------- checking and gridding
def check_rows(rows: Iterable[PatchLabel], shapes: dict[str, tuple[int, int]]) -> dict[str, list[PatchLabel]]:
    """Rows grouped by image, after checking every one against the project's images (``shapes``: name -> (H, W)):
    an unknown image, a square outside its image or a duplicate is a one-line error naming the row."""
    seen: dict[tuple, str] = {}
    by_image: dict[str, list[PatchLabel]] = {}
    for r in rows:
        if r.image not in shapes:
            raise OEEMError(f"{r.where}: no image {r.image!r} in the project (its images: "
                            f"{', '.join(sorted(shapes)[:5])}{', ...' if len(shapes) > 5 else ''})")
        h, w = shapes[r.image]
        if r.size <= 0 or r.size > min(h, w):
            raise OEEMError(f"{r.where}: size {r.size} px does not fit image {r.image!r} ({w} x {h} px)")
        if r.x < 0 or r.y < 0 or r.x + r.size > w or r.y + r.size > h:
            raise OEEMError(f"{r.where}: the square at x={r.x}, y={r.y} of {r.size} px lies outside image "
                            f"{r.image!r} ({w} x {h} px)")
        key = (r.image, r.x, r.y, r.size)
        if key in seen:
            raise OEEMError(f"{r.where}: the same patch ({r.image}, x={r.x}, y={r.y}, size={r.size}) as "
                            f"{seen[key]}")
        seen[key] = r.where or "an earlier row"
        by_image.setdefault(r.image, []).append(r)
    return by_image


def tags_on_grid(rows: Iterable[PatchLabel], corners: np.ndarray, size: int) -> np.ndarray:
    """(N,) tags of the grid patches (``corners``: (N, 2) (y, x); side ``size``) from labelled squares: a square
    exactly on a patch labels it alone; otherwise a patch takes the classes of every square off the grid covering
    more than ``COVER`` of it."""
    rows = list(rows)
    tags = np.zeros(len(corners), np.uint8)
    exact = np.zeros(len(corners), bool)
    index = {(int(y), int(x)): k for k, (y, x) in enumerate(corners)}
    off_grid = []
    for r in rows:  # a square exactly on a patch of the grid labels that patch, and only it
        k = index.get((r.y, r.x)) if r.size == size else None
        if k is None:
            off_grid.append(r)
        else:
            tags[k] |= r.tag
            exact[k] = True
    py, px = corners[:, 0].astype(np.int64), corners[:, 1].astype(np.int64)
    for r in off_grid:
        oy = np.clip(np.minimum(py + size, r.y + r.size) - np.maximum(py, r.y), 0, None)
        ox = np.clip(np.minimum(px + size, r.x + r.size) - np.maximum(px, r.x), 0, None)
        tags[(oy * ox > COVER * size * size) & ~exact] |= r.tag
    return tags


def project_tags(store, name: str, size: int, stride: int) -> np.ndarray | None:
    """A project image's current tags on the grid of ``size`` / ``stride``: as saved when they were made on it,
    else each patch takes what covers it (:func:`tags_on_grid`); None when the image was never tagged."""
    from pipeline.stages.patches import patch_grid

    found = store.patch_tags(name)
    if found is None:
        return None
    tags, old_size, old_stride = found
    if (old_size, old_stride) == (size, stride):
        return tags
    shape = store.shape(name)
    return tags_on_grid(grid_rows(name, patch_grid(shape, old_size, old_stride), old_size, tags),
                        patch_grid(shape, size, stride), size)


# ---------------------------------------------------------------------------- writing
def grid_rows(image: str, corners: np.ndarray, size: int, tags: np.ndarray) -> list[PatchLabel]:
    return [PatchLabel(image, int(x), int(y), size, int(t)) for (y, x), t in zip(corners, tags) if t != UNLABELLED]


def write_label_csv(path: str | Path, rows: Iterable[PatchLabel]) -> int:
    from pipeline.store import atomic_write_bytes

    lines = [",".join(CSV_HEADER)]
    count = 0
    for r in rows:
        lines.append(f"{r.image},{r.x},{r.y},{r.size},{int(bool(r.tag & GLAND))},{int(bool(r.tag & NON_GLAND))}")
        count += 1
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
    return count


def write_label_geojson(path: str | Path, rows: Iterable[PatchLabel]) -> int:
    from pipeline.store import atomic_write_bytes

    features: list[dict[str, Any]] = []
    for r in rows:
        ring = [[r.x, r.y], [r.x + r.size, r.y], [r.x + r.size, r.y + r.size], [r.x, r.y + r.size], [r.x, r.y]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation", "image": r.image,
                                        "classification": {"name": GEOJSON_CLASSES[r.tag],
                                                           "color": GEOJSON_COLORS[r.tag]}}})
    atomic_write_bytes(Path(path), json.dumps({"type": "FeatureCollection", "features": features}).encode())
    return len(features)
