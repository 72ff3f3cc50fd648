"""A whole-slide prediction as QuPath objects (``oeem export-slide``): one "Gland" polygon per gland, lumens as
holes, in the slide's level-0 pixel coordinates.

A slide's mask does not fit in memory, so it is read block by block (the prediction's zarr chunks). Pass 1 labels
each block's glands (4-connected, as :func:`pipeline.io.geojson.mask_to_polygons` does for images) and joins the
parts that touch across a block seam (union-find on the blocks' edge rows and columns), keeping only each part's
bounding box and one pixel of it. Pass 2 reads each whole gland's bounding box, traces it and writes its feature
to the file at once. Memory is bounded by a block and the largest gland, never by the slide; a gland cut by block
edges comes out whole. Where the prediction holds its glands as objects (``labels/glands``, made by
``oeem predict-slide``), each id is one feature instead, with its id and area (:func:`find_instances`).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage as ndi
from skimage.measure import label

from pipeline.errors import OEEMError
from pipeline.io.geojson import GLAND_CLASS, GLAND_COLOR, component_polygon
from pipeline.progress import Job, Progress

TOLERANCE_PX = 1.0  # outline simplification, px of the prediction: QuPath draws it the same, the file is smaller


class GlandParts:
    """Union-find over the glands' parts, each part known by its bounding box and one of its pixels."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.box: list[list[int]] = []  # y0, x0, y1, x1
        self.seed: list[tuple[int, int]] = []

    def add(self, box: list[int], seed: tuple[int, int]) -> int:
        self.parent.append(len(self.parent))
        self.box.append(box)
        self.seed.append(seed)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def glands(self) -> list[tuple[list[int], tuple[int, int]]]:
        """(bounding box, a pixel) of every whole gland, top to bottom."""
        boxes: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            r, b = self.find(i), self.box[i]
            if r in boxes:
                o = boxes[r]
                boxes[r] = [min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])]
            else:
                boxes[r] = list(b)
        return sorted(((boxes[r], self.seed[r]) for r in boxes), key=lambda g: (g[0][0], g[0][1]))


def link_parts(parts: GlandParts, a: np.ndarray, b: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> None:
    """Join the parts whose pixels face each other across a seam (``a``, ``b``: the two edge lines' labels)."""
    both = (a > 0) & (b > 0)
    for la, lb in set(zip(a[both].tolist(), b[both].tolist())):
        parts.union(int(ids_a[la]), int(ids_b[lb]))


def find_glands(pred: zarr.Array, block: int) -> Iterator[Progress | list]:
    """Pass 1: yields progress per block row, then (as the generator's last item) every gland's box and pixel."""
    h, w = pred.shape
    ny, nx = -(-h // block), -(-w // block)
    parts = GlandParts()
    above: list[tuple[np.ndarray, np.ndarray] | None] = [None] * nx  # each column's last block: bottom row, ids
    for by in range(ny):
        left: tuple[np.ndarray, np.ndarray] | None = None
        for bx in range(nx):
            y0, x0 = by * block, bx * block
            tile = np.asarray(pred[y0:y0 + block, x0:x0 + block]) > 0
            labels = label(tile, connectivity=1)
            ids = np.zeros(int(labels.max()) + 1, np.int64)
            for k, sl in enumerate(ndi.find_objects(labels), start=1):
                yy, xx = np.nonzero(labels[sl] == k)
                seed = (int(yy[0]) + sl[0].start + y0, int(xx[0]) + sl[1].start + x0)
                ids[k] = parts.add([sl[0].start + y0, sl[1].start + x0, sl[0].stop + y0, sl[1].stop + x0], seed)
            if left is not None:
                link_parts(parts, left[0], labels[:, 0], left[1], ids)
            if above[bx] is not None:
                link_parts(parts, above[bx][0], labels[0, :], above[bx][1], ids)
            left = (labels[:, -1], ids)
            above[bx] = (labels[-1, :], ids)
        yield Progress("find glands", by + 1, ny, f"block row {by + 1}/{ny}")
    yield parts.glands()


def find_instances(glands: zarr.Array, block: int) -> Iterator[Progress | list]:
    """Pass 1 over ``labels/glands``: yields progress per block row, then every gland id with its bounding box and
    area (px), in id order."""
    h, w = glands.shape
    ny, nx = -(-h // block), -(-w // block)
    boxes: dict[int, list[int]] = {}
    for by in range(ny):
        for bx in range(nx):
            y0, x0 = by * block, bx * block
            tile = np.asarray(glands[y0:y0 + block, x0:x0 + block])
            values, dense = np.unique(tile, return_inverse=True)
            dense = dense.reshape(tile.shape)
            areas = np.bincount(dense.ravel(), minlength=len(values))
            for k, sl in enumerate(ndi.find_objects(dense + 1), start=0):
                gid = int(values[k])
                if sl is None or gid == 0:
                    continue
                box = [sl[0].start + y0, sl[1].start + x0, sl[0].stop + y0, sl[1].stop + x0, int(areas[k])]
                if gid in boxes:
                    o = boxes[gid]
                    box = [min(o[0], box[0]), min(o[1], box[1]), max(o[2], box[2]), max(o[3], box[3]), o[4] + box[4]]
                boxes[gid] = box
        yield Progress("find glands", by + 1, ny, f"block row {by + 1}/{ny}")
    yield sorted(boxes.items())


def _scaled(geom: Any, factor: float) -> Any:
    from shapely.affinity import scale

    return geom if factor == 1 else scale(geom, factor, factor, origin=(0, 0))


def export_slide_geojson(prediction: str | Path, out: str | Path, tolerance: float = TOLERANCE_PX,
                         level0: bool = True) -> Job[dict]:
    """Write the glands of an ``oeem predict-slide`` output as a QuPath GeoJSON FeatureCollection, streamed
    feature by feature into a temporary file that replaces ``out`` when complete. ``level0``: coordinates in the
    slide's level-0 pixels (else the prediction's own)."""
    from shapely.geometry import Polygon, mapping

    prediction, out = Path(prediction), Path(out)
    try:
        root = zarr.open_group(str(prediction), mode="r")
        pred = root["labels/prediction/0"]
    except Exception:  # noqa: BLE001 - not a zarr, or not ours
        raise OEEMError(f"{prediction}: not a slide prediction (an .ome.zarr made by `oeem predict-slide`)") from None
    meta = dict(root.attrs.get("oeem_slide_prediction", {}))
    complete = json.loads((prediction.parent / f"{prediction.name}.progress.json").read_text()).get("complete") \
        if (prediction.parent / f"{prediction.name}.progress.json").is_file() else True
    if not complete:
        raise OEEMError(f"{prediction}: the prediction is not finished; run the same `oeem predict-slide` again to "
                        "complete it, then export")
    factor = 1.0 / float(meta.get("resampled_by") or 1.0) if level0 else 1.0  # slide level-0 px per prediction px
    if not out.parent.is_dir():
        raise OEEMError(f"{out.parent}: folder does not exist")
    t0 = time.perf_counter()
    block = int(pred.chunks[0])
    if "glands" in root["labels"]:
        return (yield from _export_instances(root["labels/glands/0"], prediction, out, factor, tolerance, level0,
                                             float(meta.get("project_mpp") or 0) or None, t0))
    finder = find_glands(pred, block)
    glands: list = []
    for item in finder:
        if isinstance(item, Progress):
            yield item
        else:
            glands = item
    tmp = out.with_name(f".{out.name}.partial")
    count = vertices = 0
    h, w = pred.shape
    with open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for k, (box, seed) in enumerate(glands):
            y0, x0, y1, x1 = box
            crop = np.asarray(pred[y0:y1, x0:x1]) > 0
            labels = label(crop, connectivity=1)
            gland = labels == labels[seed[0] - y0, seed[1] - x0]
            geom = component_polygon(gland, (y0 - 1, x0 - 1))
            if geom is None or geom.is_empty:
                continue
            geom = _scaled(geom, factor).simplify(tolerance * factor, preserve_topology=True)
            for poly in getattr(geom, "geoms", [geom]):
                if not isinstance(poly, Polygon) or poly.area <= 0:
                    continue
                feature = {"type": "Feature", "geometry": mapping(poly),
                           "properties": {"objectType": "annotation",
                                          "classification": {"name": GLAND_CLASS, "color": GLAND_COLOR}}}
                f.write((",\n" if count else "") + json.dumps(feature, separators=(",", ":")))
                count += 1
                vertices += len(poly.exterior.coords) + sum(len(r.coords) for r in poly.interiors)
            if k % 200 == 199:
                yield Progress("write glands", k + 1, len(glands))
        f.write("\n]}\n")
    tmp.replace(out)
    record = {"prediction": str(prediction), "output": str(out), "glands": count, "vertices": vertices,
              "bytes": out.stat().st_size, "coordinates": "slide level 0" if level0 else "prediction",
              "scale": factor, "tolerance_px": tolerance, "size": [h, w], "seconds": time.perf_counter() - t0}
    yield Progress("write glands", len(glands), len(glands))
    return record


def _export_instances(glands: zarr.Array, prediction: Path, out: Path, factor: float, tolerance: float,
                      level0: bool, mpp: float | None, t0: float) -> Job[dict]:
    """The glands of ``labels/glands``: one feature per id, its id a UUID of (slide, gland id), its name and
    measurements the id and area (µm² at the prediction's resolution where known)."""
    from shapely.geometry import Polygon, mapping

    from pipeline.io.geojson import gland_feature_id

    found: list = []
    for item in find_instances(glands, int(glands.chunks[0])):
        if isinstance(item, Progress):
            yield item
        else:
            found = item
    slide_name = prediction.name.split(".")[0]
    tmp = out.with_name(f".{out.name}.partial")
    count = vertices = 0
    with open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for k, (gid, (y0, x0, y1, x1, area)) in enumerate(found):
            geom = component_polygon(np.asarray(glands[y0:y1, x0:x1]) == gid, (y0 - 1, x0 - 1))
            if geom is None or geom.is_empty:
                continue
            geom = _scaled(geom, factor).simplify(tolerance * factor, preserve_topology=True)
            parts = [p for p in getattr(geom, "geoms", [geom]) if isinstance(p, Polygon) and p.area > 0]
            if not parts:
                continue
            measurements = {"gland id": gid, "area px": area}
            if mpp:
                measurements["area µm^2"] = round(area * mpp * mpp, 2)
            shape_ = parts[0] if len(parts) == 1 else geom
            feature = {"type": "Feature", "id": gland_feature_id(slide_name, gid), "geometry": mapping(shape_),
                       "properties": {"objectType": "annotation", "name": f"gland {gid}",
                                      "classification": {"name": GLAND_CLASS, "color": GLAND_COLOR},
                                      "measurements": measurements}}
            f.write((",\n" if count else "") + json.dumps(feature, separators=(",", ":")))
            count += 1
            vertices += sum(len(p.exterior.coords) + sum(len(r.coords) for r in p.interiors) for p in parts)
            if k % 200 == 199:
                yield Progress("write glands", k + 1, len(found))
        f.write("\n]}\n")
    tmp.replace(out)
    h, w = glands.shape
    yield Progress("write glands", len(found), len(found))
    return {"prediction": str(prediction), "output": str(out), "glands": count, "vertices": vertices,
            "bytes": out.stat().st_size, "coordinates": "slide level 0" if level0 else "prediction",
            "scale": factor, "tolerance_px": tolerance, "size": [h, w], "objects": "instances",
            "seconds": time.perf_counter() - t0}
