"""Glands as objects: one id per gland (a label image, ``instances`` in the store) from the predicted mask and the
gland probability, the step after the prediction.

Why: the GlaS challenge and the pathologists who count and grade glands judge objects. A connected component of
the mask is not a gland: two glands that touch at a few pixels of stroma are one component. Every method here keeps
the mask's foreground exactly (pixel scores cannot change) and only decides where one gland ends and the next
begins:

- ``components``: the 8-connected components of the mask (what the project scored before).
- ``distance``: watershed of the distance to the background from its h-maxima (a neck at least ``h`` px narrower
  than the smaller gland's inscribed radius is a border), the textbook recipe for touching convex objects.
- ``core``: glands the network is sure of, ``prob > core_threshold`` opened by a disk of ``core_opening`` px, are
  the seeds; the mask is flooded from them over the falling probability (the network's own low ridge between two
  glands is the border). A component without a seed stays one gland.

The separation runs at ``instances.scale`` of the image (the cpu preset's network works at half resolution: no
finer border exists) and the ids are carried back to every foreground pixel of the full-size mask.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import disk, h_maxima
from skimage.segmentation import watershed

from pipeline.config import INSTANCE_METHODS, InstanceConfig
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project


def instances_of(mask: np.ndarray, prob: np.ndarray | None, cfg: InstanceConfig) -> np.ndarray:
    """:func:`separate` with a project's settings."""
    return separate(mask, prob, cfg.method, h=cfg.h, core_threshold=cfg.core_threshold,
                    core_opening=cfg.core_opening, min_core_area=cfg.min_core_area, working_scale=cfg.scale)


def separate(mask: np.ndarray, prob: np.ndarray | None, method: str = "core", *, h: float = 12.0,
             core_threshold: float = 0.97, core_opening: int = 0, min_core_area: int = 1000,
             working_scale: float = 0.5) -> np.ndarray:
    """The glands of ``mask`` (H x W, non-zero = gland) as a label image (int32, 0 = background, ids 1..n, one
    per gland; its foreground is exactly the mask's), separated by ``method`` (module docstring); ``prob`` is the
    gland probability (needed by ``core``). Lengths and areas are in pixels of the full-size image."""
    fg = np.asarray(mask) > 0
    if fg.ndim != 2:
        raise OEEMError(f"a gland mask has two dimensions (H x W), not shape {fg.shape}")
    if method not in INSTANCE_METHODS:
        raise OEEMError(f"instances.method must be one of {', '.join(INSTANCE_METHODS)}, not {method!r}")
    regions = label(fg, connectivity=2)
    if method == "components" or not fg.any():
        return regions.astype(np.int32)
    if prob is None and method == "core":
        raise OEEMError("the core method needs the gland probability; run `oeem predict` first")
    s = float(working_scale)
    small_regions = _sample(regions, s)
    small_fg = _within_one_region(small_regions)
    if method == "distance":
        height = ndimage.distance_transform_edt(small_fg)
        seeds = label(h_maxima(height, max(h * s, 1e-3)) & small_fg, connectivity=2)
        flood = 255 - np.minimum(height, 255).astype(np.uint8)  # (8 bits: a far quicker flood)
    else:
        p = np.asarray(prob, np.float32)
        if p.shape != fg.shape:
            raise OEEMError(f"gland probability shape {p.shape} differs from the mask's {fg.shape}")
        small_p = _sample(p, s)
        core = (small_p > core_threshold) & small_fg
        radius = max(0, round(core_opening * s))
        if radius:
            core = ndimage.binary_opening(core, disk(radius))
        seeds = label(core, connectivity=2)
        if min_core_area:
            sizes = np.bincount(seeds.ravel())
            too_small = sizes < max(1.0, min_core_area * s * s)
            too_small[0] = False
            seeds[too_small[seeds]] = 0
        flood = np.round(255 * (1 - np.clip(small_p, 0, 1))).astype(np.uint8)
    ids = _flood_each_region(flood, seeds, np.where(small_fg, small_regions, 0))
    return _to_full_size(ids, fg, regions, s)


def _flood_each_region(flood: np.ndarray, seeds: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Seed ids grown over each region: a region with one seed is that seed's gland, one with several is split by
    a watershed of its own (a watershed of the whole image breaks ties by the order it meets pixels in, so a gland
    elsewhere could move a border), one without stays 0."""
    ids = np.zeros(regions.shape, np.int32)
    if not seeds.any():
        return ids
    n = int(regions.max()) + 1
    pairs = np.unique(regions[seeds > 0].astype(np.int64) * (int(seeds.max()) + 1) + seeds[seeds > 0])
    region_of, seed_of = np.divmod(pairs, int(seeds.max()) + 1)
    per_region = np.bincount(region_of, minlength=n)
    single = np.zeros(n, np.int32)
    one = per_region[region_of] == 1
    single[region_of[one]] = seed_of[one]
    ids = single[regions]
    boxes = ndimage.find_objects(regions)
    for k in np.nonzero(per_region > 1)[0]:
        box = boxes[k - 1]
        inside = regions[box] == k
        grown = watershed(flood[box], np.where(inside, seeds[box], 0), mask=inside)
        ids[box][inside] = grown[inside]
    return ids


def _within_one_region(small_regions: np.ndarray) -> np.ndarray:
    """The foreground of the coarser grid without the pixels that touch another region (8-neighbours): two
    regions a pixel apart at full size may meet on the coarser grid, and a gland must not flood into its
    neighbour. So each region is cut on its own, whatever else is in the image (a slide's tile cuts it as the
    whole slide would)."""
    top = ndimage.grey_dilation(small_regions, size=(3, 3))
    low = ndimage.grey_erosion(np.where(small_regions > 0, small_regions, np.iinfo(np.int32).max).astype(np.int32),
                               size=(3, 3))
    return (small_regions > 0) & (top <= small_regions) & (low >= small_regions)


def _to_full_size(ids: np.ndarray, fg: np.ndarray, components: np.ndarray, scale: float) -> np.ndarray:
    """The ids of a separation at a smaller scale on every foreground pixel of the full-size mask, each gland
    inside one connected component of it: a pixel takes the id under it, the rim the coarser grid missed takes the
    largest id among its 8 neighbours (twice), and what is still unlabelled (a component without a seed) becomes
    a gland of its own. An id that spans two components (joined by the coarser grid) is split into one per
    component. A slide's tile is ~10 Mpx: the rim passes visit only the pixels they change, and the relabelling
    is whole-array arithmetic in 32 bits where the ids allow."""
    rows, cols = (np.minimum(((np.arange(n) + 0.5) * scale).astype(np.intp), m - 1)
                  for n, m in zip(fg.shape, ids.shape, strict=True))  # the inverse of _sample's grid
    full = np.take(np.take(ids.astype(np.int32, copy=False), rows, axis=0), cols, axis=1)
    full[~fg] = 0
    h, w = fg.shape
    r, c = np.nonzero(fg & (full == 0))
    for _ in range(2):
        if not len(r):
            break
        best = np.zeros(len(r), np.int32)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                np.maximum(best, full[np.clip(r + dr, 0, h - 1), np.clip(c + dc, 0, w - 1)], out=best)
        full[r, c] = best
        r, c = r[best == 0], c[best == 0]  # the second pass visits only what the first left unlabelled
    comp = components.astype(np.int32, copy=False)
    top, top_comp = int(full.max(initial=0)), int(comp.max(initial=0))
    wide = np.int64 if (top + top_comp + 1) * (top_comp + 1) >= 2**31 else np.int32
    # components without a seed: a gland each (id top + component); the background pairs to top itself
    found = np.where(full == 0, comp.astype(wide) + top, full.astype(wide))
    pair = comp.astype(wide) * (int(found.max(initial=0)) + 1) + found  # (component, id): unique per gland
    present = np.zeros(int(pair.max(initial=0)) + 1, bool)
    present[pair.ravel()] = True
    present[top] = False  # (every gland's pair is above top: the background keeps 0)
    return np.cumsum(present, dtype=np.int32)[pair]  # ids 1..n, in the order of the pairs


def _sample(a: np.ndarray, scale: float) -> np.ndarray:
    """``a`` on the coarser grid of ``scale``: coarse pixel i takes the full-size pixel floor((i + 0.5) / scale)
    (at 0.5: 1, 3, 5...). The grid follows from the scale alone, not from the image's size, so any crop that starts
    on it (a slide's tile) samples the same pixels as the whole image; ids and masks stay exact, and an index
    lookup is far cheaper than an interpolating resize."""
    if scale == 1:
        return a
    rows = [np.minimum(((np.arange(math.ceil(n * scale)) + 0.5) / scale).astype(np.intp), n - 1) for n in a.shape]
    return a[rows[0][:, None], rows[1][None, :]]


def instances_current(store: ProjectStore, cfg: InstanceConfig) -> bool:
    """Were the stored instances cut with ``cfg`` from the current prediction of every image?"""
    rec, pred = store.load_run("instances"), store.load_run("predict")
    if rec is None or pred is None or rec.get("config") != asdict(cfg):
        return False
    return rec.get("predict_run_id") == pred.get("run_id") and rec.get("images") == len(store.names())


@writes_project("separating glands")
def make_instances(store: ProjectStore, cfg: InstanceConfig, names: list[str] | None = None) -> Job[dict]:
    """Cut every predicted image (default: all) into glands, writing ``instances`` (int32 ids) to the store; no
    network runs, so a change of these settings costs seconds, not a prediction. An image whose glands a
    pathologist split or merged keeps that edit while its predicted mask is the same; a new mask replaces it
    (listed in the record's ``edits_replaced``)."""
    names = names or store.names()
    missing = [n for n in names if not store.has(n, "prediction")]
    if missing:
        raise OEEMError(f"{store.path}: {len(missing)} image(s) have no prediction yet (e.g. {missing[0]}); run "
                        f"`oeem predict {store.path}` first")
    t0, glands = time.perf_counter(), 0
    edited, kept, replaced = set((store.load_run("instances") or {}).get("edited", [])), [], []
    for k, n in enumerate(names):
        mask = store.read(n, "prediction")
        ids = store.read(n, "instances") if n in edited and store.has(n, "instances") else None
        if ids is not None and ((ids > 0) == (mask > 0)).all():
            kept.append(n)  # the pathologist's split / merge, on the same mask: kept
        else:
            if n in edited:
                replaced.append(n)
            prob = store.read(n, "prob") if cfg.method == "core" else None
            ids = instances_of(mask, prob, cfg)
            store.write(n, "instances", ids)
        glands += len(np.unique(ids[ids > 0]))
        yield Progress("instances", k + 1, len(names), n)
    seconds = time.perf_counter() - t0
    record = {"config": asdict(cfg), "images": len(names), "glands": glands, "seconds": seconds,
              "edited": sorted((edited - set(names)) | set(kept)), "edits_replaced": sorted(replaced),
              "seconds_per_image": seconds / max(1, len(names)), "run_id": uuid.uuid4().hex,
              "predict_run_id": (store.load_run("predict") or {}).get("run_id")}
    store.save_run("instances", record)
    return record


# ---------------------------------------------------------------------------------------------- editing
def split_along(ids: np.ndarray, path: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``ids`` with every gland the polyline ``path`` (n x 2, row/col, image pixels) crosses from side to side cut
    along it: the gland's pieces either side of the line become glands of their own (the largest keeps the id, the
    others take new ones) and the line's pixels join the nearest piece. A stroke that does not cross a gland
    leaves it as it is. Returns the new ids and the ids made."""
    from skimage.draw import line
    from skimage.segmentation import expand_labels

    ids = np.asarray(ids).copy()
    pts = np.round(np.asarray(path, float)).astype(int)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise OEEMError("draw a line of at least two points across the gland to split it")
    cut = np.zeros(ids.shape, bool)
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:], strict=True):
        rr, cc = line(r0, c0, r1, c1)
        keep = (rr >= 0) & (rr < ids.shape[0]) & (cc >= 0) & (cc < ids.shape[1])
        cut[rr[keep], cc[keep]] = True
    made: list[int] = []
    top = int(ids.max())
    for gid in np.unique(ids[cut]):
        if gid == 0:
            continue
        gland = ids == gid
        pieces = label(gland & ~cut, connectivity=1)  # 4-connected: an 8-connected line parts them
        if pieces.max() < 2:
            continue
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        order = np.argsort(-sizes)[: int(pieces.max())]
        lut = np.zeros(len(sizes), np.int64)
        lut[order[0]] = gid
        for k in order[1:]:
            top += 1
            lut[k] = top
            made.append(top)
        grown = expand_labels(lut[pieces], distance=2)
        ids[gland] = grown[gland]
    return ids, made


def merge_at(ids: np.ndarray, point: tuple[float, float], radius: int = 6) -> tuple[np.ndarray, list[int]]:
    """``ids`` with the glands within ``radius`` px of ``point`` (row, col) made one (the smallest id); returns
    the new ids and the ids merged (empty when fewer than two glands are there)."""
    ids = np.asarray(ids).copy()
    r, c = (int(round(v)) for v in point)
    box = ids[max(0, r - radius):r + radius + 1, max(0, c - radius):c + radius + 1]
    yy, xx = np.mgrid[max(0, r - radius):max(0, r - radius) + box.shape[0],
                      max(0, c - radius):max(0, c - radius) + box.shape[1]]
    near = np.unique(box[(np.hypot(yy - r, xx - c) <= radius) & (box > 0)])
    if len(near) < 2:
        return ids, []
    ids[np.isin(ids, near)] = near.min()
    return ids, [int(v) for v in near]


def save_edited_instances(store: ProjectStore, name: str, ids: np.ndarray) -> None:
    """Keep a pathologist's split / merge of an image's glands: its ``instances`` replaced (the store writes
    atomically per chunk) and the image listed as edited, so the next instances step keeps the edit while the
    prediction's mask stays the same."""
    ids = np.asarray(ids)
    if ids.shape != store.shape(name):
        raise OEEMError(f"{name}: glands of shape {ids.shape} do not fit the image {store.shape(name)}")
    if ids.min(initial=0) < 0:
        raise OEEMError(f"{name}: gland ids must be >= 0 (0 = background)")
    store.write(name, "instances", ids.astype(np.int32))
    rec = store.load_run("instances") or {}
    rec["edited"] = sorted(set(rec.get("edited", [])) | {name})
    store.save_run("instances", rec)
