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

from pipeline.config import InstanceConfig
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

METHODS = ("components", "distance", "core")


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
    if method not in METHODS:
        raise OEEMError(f"instances.method must be one of {', '.join(METHODS)}, not {method!r}")
    regions = label(fg, connectivity=2)
    if method == "components" or not fg.any():
        return regions.astype(np.int32)
    if prob is None and method == "core":
        raise OEEMError("the core method needs the gland probability; run `oeem predict` first")
    s = float(working_scale)
    small_regions = _sample(regions, s)
    small_shape = small_regions.shape
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
    component. Only foreground pixels are touched (a slide's windows are mostly glass)."""
    rows, cols = (np.minimum(((np.arange(n) + 0.5) * scale).astype(np.intp), m - 1)
                  for n, m in zip(fg.shape, ids.shape, strict=True))  # the inverse of _sample's grid
    full = np.where(fg, ids[rows[:, None], cols[None, :]], 0).astype(np.int64)
    rr, cc = np.nonzero(fg)
    h, w = fg.shape
    for _ in range(2):
        rim = np.nonzero(full[rr, cc] == 0)[0]
        if not len(rim):
            break
        r, c = rr[rim], cc[rim]
        best = np.zeros(len(rim), np.int64)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                best = np.maximum(best, full[np.clip(r + dr, 0, h - 1), np.clip(c + dc, 0, w - 1)])
        full[r, c] = best
    values = full[rr, cc]
    comp = components[rr, cc].astype(np.int64)
    top = int(values.max(initial=0))
    values = np.where(values == 0, top + comp, values)  # components without a seed: a gland each
    pair = comp * (int(values.max(initial=0)) + 1) + values  # (component, id): unique per gland
    present = np.zeros(int(pair.max(initial=0)) + 1, bool)
    present[pair] = True
    present[0] = False
    out = np.zeros(fg.shape, np.int32)
    out[rr, cc] = (np.cumsum(present) * present).astype(np.int32)[pair]  # ids 1..n
    return out


def _sample(a: np.ndarray, scale: float) -> np.ndarray:
    """``a`` on the coarser grid of ``scale``: coarse pixel i takes the full-size pixel floor((i + 0.5) / scale)
    (at 0.5: 1, 3, 5...). The grid follows from the scale alone, not from the image's size, so any crop that starts
    on it (a slide's tile) samples the same pixels as the whole image; ids and masks stay exact, and an index
    lookup is far cheaper than an interpolating resize."""
    if scale == 1:
        return a
    rows = [np.minimum(((np.arange(math.ceil(n * scale)) + 0.5) / scale).astype(np.intp), n - 1) for n in a.shape]
    return a[rows[0][:, None], rows[1][None, :]]
