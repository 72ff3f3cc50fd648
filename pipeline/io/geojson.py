"""Gland masks as QuPath GeoJSON annotations, out and in.

QuPath reads and writes a ``FeatureCollection`` of ``Feature``s whose ``properties`` hold ``objectType:
"annotation"`` and ``classification: {name, color}``; coordinates are ``[x, y]`` in full-resolution pixels, with
the pixel ``(row, col)`` covering ``[col, col + 1] x [row, row + 1]``. A gland with lumen holes is one Polygon
whose inner rings are the holes. Import also takes what QuPath and other tools write besides: a bare list of
features, a single feature or geometry, MultiPolygons, features without a classification (read as glands).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.validation import make_valid
from skimage.draw import polygon as draw_polygon
from skimage.measure import find_contours, label

from pipeline.errors import OEEMError

GLAND_CLASS = "Gland"
GLAND_COLOR = [0, 200, 80]
# classifications read as "not gland" on import; features without a classification are glands
NON_GLAND_CLASSES = {"non-gland", "non gland", "nongland", "background", "stroma", "negative"}
SIMPLIFY_PX = 0.25  # drop near-collinear contour points; keeps the outline within a quarter pixel


def _ring(contour: np.ndarray, offset: tuple[int, int]) -> list[tuple[float, float]]:
    """A find_contours (row, col) loop on a padded crop → closed ``(x, y)`` ring in image pixel coordinates
    (pixel centres at +0.5, QuPath's convention)."""
    r0, c0 = offset
    return [(float(c + c0 + 0.5), float(r + r0 + 0.5)) for r, c in contour]


def component_polygon(component: np.ndarray, offset: tuple[int, int]) -> Polygon | MultiPolygon | None:
    """One gland (a 0/1 crop whose top-left pixel is at ``offset`` - 1) as a Polygon with its lumens as holes."""
    filled = ndi.binary_fill_holes(component)
    shells = [Polygon(_ring(c, offset)) for c in find_contours(np.pad(filled, 1).astype(np.float32), 0.5)
              if len(c) >= 4]
    if not shells:
        return None
    outer = make_valid(max(shells, key=lambda p: p.area))
    holes = label(filled & ~component, connectivity=2)
    for k in range(1, int(holes.max()) + 1):
        for c in find_contours(np.pad(holes == k, 1).astype(np.float32), 0.5):
            if len(c) >= 4:
                outer = outer.difference(make_valid(Polygon(_ring(c, offset))))
    return outer.simplify(SIMPLIFY_PX, preserve_topology=True)


def outlines(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray, Polygon | MultiPolygon]]:
    """(id, its pixels in its bounding box, its outline) for every object of a label image (0 = background)."""
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        crop = labels[sl] == k
        geom = component_polygon(crop, (sl[0].start - 1, sl[1].start - 1))
        if geom is not None and not geom.is_empty:
            yield k, crop, geom


def mask_to_polygons(mask: np.ndarray) -> list[Polygon]:
    """One Polygon (holes as inner rings) per 4-connected gland of a 0/1 mask."""
    polys: list[Polygon] = []
    for _, _, geom in outlines(label(np.asarray(mask) > 0, connectivity=1)):
        polys.extend(g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area > 0)
    return polys


def mask_to_geojson(mask: np.ndarray, image_name: str | None = None) -> dict[str, Any]:
    """A QuPath-readable FeatureCollection of "Gland" annotations."""
    features = []
    for poly in mask_to_polygons(mask):
        props: dict[str, Any] = {"objectType": "annotation",
                                 "classification": {"name": GLAND_CLASS, "color": GLAND_COLOR}}
        if image_name:
            props["image"] = image_name
        features.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(poly),
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


GLAND_ID_NAMESPACE = uuid.UUID("5c1f3e2a-6d0b-4f57-9a43-0e6f0b8d2c11")  # gland feature ids: uuid5 of image:id


def gland_feature_id(image_name: str | None, gland: int) -> str:
    """A gland's GeoJSON feature id: a UUID (QuPath keeps only UUIDs and makes up a new one otherwise) derived from
    the image and the gland id, so a second export of the same glands gives the same ids."""
    return str(uuid.uuid5(GLAND_ID_NAMESPACE, f"{image_name or ''}:{int(gland)}"))


def instances_to_geojson(ids: np.ndarray, image_name: str | None = None,
                         mpp: float | None = None) -> dict[str, Any]:
    """One "Gland" feature per gland of a label image, which QuPath imports as one object each: its id as the
    feature id (:func:`gland_feature_id`), its name (``gland 12``) and measurements ``gland id``, ``area px`` and,
    with ``mpp``, ``area µm^2``."""
    features = []
    for k, crop, geom in outlines(np.asarray(ids).astype(np.int64)):
        area = int(crop.sum())
        measurements = {"gland id": k, "area px": area}
        if mpp:
            measurements["area µm^2"] = round(area * mpp * mpp, 2)
        props: dict[str, Any] = {"objectType": "annotation", "name": f"gland {k}",
                                 "classification": {"name": GLAND_CLASS, "color": GLAND_COLOR},
                                 "measurements": measurements}
        if image_name:
            props["image"] = image_name
        features.append({"type": "Feature", "id": gland_feature_id(image_name, k), "geometry": mapping(geom),
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def gland_id_of(feature: dict) -> int | None:
    """The gland id a feature carries: its ``gland id`` measurement (as a map, or QuPath's list of name/value
    pairs), else a name ``gland N``; None when it has neither."""
    props = feature.get("properties") or {}
    meas = props.get("measurements")
    if isinstance(meas, list):
        meas = {m.get("name"): m.get("value") for m in meas if isinstance(m, dict)}
    value = (meas or {}).get("gland id") if isinstance(meas, dict) else None
    if value is None and isinstance(props.get("name"), str) and props["name"].startswith("gland "):
        value = props["name"][6:]
    try:
        return int(float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def geojson_instances(obj: Any, shape_hw: tuple[int, int], source: str = "GeoJSON") -> np.ndarray:
    """The glands of a GeoJSON file as a label image, each feature drawn with its own gland id
    (:func:`gland_id_of`); features without one get the ids after the largest."""
    out = np.zeros(shape_hw, np.int64)
    features = [f for f in geojson_features(obj, source) if f.get("geometry")]
    given = [gland_id_of(f) for f in features]
    next_id = max([g for g in given if g is not None], default=0) + 1
    for feat, gid in zip(features, given, strict=True):
        if gid is None:
            gid, next_id = next_id, next_id + 1
        try:
            geom = make_valid(shape(feat["geometry"]))
        except Exception:  # noqa: BLE001 - malformed coordinates: that gland is left out, the rest read
            continue
        inside = np.zeros(shape_hw, bool)
        for p in (g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon)):
            _fill(inside, p)
        out[inside] = gid
    return out


@dataclass
class Rasterised:
    """An imported annotation file, as pixels: which to set to gland, which to non-gland, what was skipped."""

    gland: np.ndarray
    non_gland: np.ndarray
    features: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def painted(self) -> np.ndarray:
        return self.gland | self.non_gland


def geojson_features(obj: Any, source: str) -> list[dict]:
    if isinstance(obj, list):
        return [f for f in obj if isinstance(f, dict)]
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            return [f for f in obj.get("features") or [] if isinstance(f, dict)]
        if kind == "Feature":
            return [obj]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": obj, "properties": {}}]
    raise OEEMError(f"{source}: not GeoJSON annotations (expected a FeatureCollection, a list of features, a "
                    "Feature or a Polygon); export annotations from QuPath with File > Export objects as GeoJSON")


def class_of(feature: dict) -> str | None:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return None


def _fill(target: np.ndarray, poly: Polygon) -> None:
    """Set the pixels whose centres fall inside ``poly`` (its holes excluded)."""
    h, w = target.shape
    inside = np.zeros_like(target)

    def draw(ring, value: bool) -> None:
        xy = np.asarray(ring.coords)
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(h, w))
        inside[rr, cc] = value

    draw(poly.exterior, True)
    for hole in poly.interiors:
        draw(hole, False)
    target |= inside


def rasterise_geojson(obj: Any, shape_hw: tuple[int, int], source: str = "GeoJSON") -> Rasterised:
    """Pixels of every polygon annotation; "Gland" (or unclassified) → gland, non-gland classes → non-gland.
    Other classes and non-area geometries (points, lines) are counted as skipped, never guessed."""
    gland = np.zeros(shape_hw, bool)
    non_gland = np.zeros(shape_hw, bool)
    out = Rasterised(gland, non_gland)
    for feat in geojson_features(obj, source):
        name = class_of(feat)
        key = (name or "").strip().lower()
        if name is not None and key != GLAND_CLASS.lower() and key not in NON_GLAND_CLASSES:
            out.skipped[f"class {name!r}"] = out.skipped.get(f"class {name!r}", 0) + 1
            continue
        try:
            geom = shape(feat.get("geometry")) if feat.get("geometry") else None
        except Exception:  # noqa: BLE001 - malformed coordinates: skipped and counted, the rest imported
            geom = None
        if geom is None or geom.is_empty:
            out.skipped["no or bad geometry"] = out.skipped.get("no or bad geometry", 0) + 1
            continue
        polys = [g for g in getattr(make_valid(geom), "geoms", [make_valid(geom)]) if isinstance(g, Polygon)]
        if not polys:
            out.skipped[geom.geom_type] = out.skipped.get(geom.geom_type, 0) + 1
            continue
        for p in polys:
            _fill(non_gland if key in NON_GLAND_CLASSES else gland, p)
        out.features += 1
    out.non_gland &= ~out.gland  # a pixel inside both: the gland annotation wins
    return out


def read_geojson(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OEEMError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OEEMError(f"{path}: not valid GeoJSON ({exc}); export it again from QuPath") from None


def image_name_of(path: Path) -> str:
    """``NAME.geojson`` / ``NAME_anno.geojson`` / ``NAME.json`` → ``NAME``."""
    stem = path.name
    for suffix in (".geojson", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem[: -len("_anno")] if stem.endswith("_anno") else stem


def import_geojson(store, path: str | Path, image: str | None = None) -> dict[str, Any]:
    """Import annotation files as corrections: one file (``image`` names its image, else the file name does) or
    a folder of ``NAME.geojson`` files. Each file becomes one undoable correction whose polygons are
    pathologist-verified. Every file is read and matched to an image before anything is saved."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".geojson", ".json"))
        if not files:
            raise OEEMError(f"{path}: no .geojson files in this folder")
        if image is not None:
            raise OEEMError("--image names the image of one file; for a folder the file names do")
    elif path.is_file():
        files = [path]
    else:
        raise OEEMError(f"{path}: no such file or folder")
    known = set(store.names())
    plan = []
    for f in files:
        name = image or image_name_of(f)
        if name not in known:
            raise OEEMError(f"{f}: no image {name!r} in {store.path}; name the file NAME.geojson after its image "
                            "or pass --image NAME - nothing was imported")
        if not store.has(name, "pseudo"):
            raise OEEMError(f"{f}: image {name!r} has no pseudo-mask to correct yet; run `oeem cams {store.path}` "
                            "first - nothing was imported")
        plan.append((f, name, rasterise_geojson(read_geojson(f), store.shape(name), str(f))))
    report = {"files": len(plan), "images": {}, "skipped": {}}
    for f, name, r in plan:
        if not r.painted.any():
            report["images"][name] = 0
        else:
            labels = store.labels(name)[0].copy()
            labels[r.gland] = 1
            labels[r.non_gland] = 0
            store.save_correction(name, labels, painted=r.painted)
            report["images"][name] = int(r.painted.sum())
        for why, count in r.skipped.items():
            report["skipped"][why] = report["skipped"].get(why, 0) + count
    return report
