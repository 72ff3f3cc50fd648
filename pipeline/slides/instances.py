"""A whole-slide prediction's glands as objects: ``labels/glands`` (uint32 ids) beside ``labels/prediction``.

Why this gives the same glands as one image would, with no gland split by a tile seam and no id used twice: the
separation (:func:`pipeline.stages.instances.separate`) only cuts inside a connected region of the mask and sees
nothing outside it. So the slide is read in tiles with a halo (``HALO`` px on each side); a region is cut by the one
tile whose core holds its first pixel (top row, then left), and only when the region lies wholly inside that tile's
window (then the cut is exactly the one the whole slide would give). A region wider than the halo is kept as one
gland and counted (``too_large``): a last pass labels those regions in the blocks they reach (and only those) and
joins their parts across block seams (union-find, as :mod:`pipeline.slides.geojson_export` does). Ids are the tile's
index times 2^16 plus the local id (the large regions: ids after every tile's): unique without renumbering. Tiles
and halos are whole multiples of the separation's grid, so each tile samples the same pixels.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi
from skimage.measure import label

from pipeline.config import InstanceConfig
from pipeline.errors import OEEMError
from pipeline.io.omezarr import LEVELS_MIN_SIDE, add_levels, create_level, label_metadata, labels_group_metadata
from pipeline.progress import Job, Progress
from pipeline.stages.instances import instances_of

TILE = 2048  # px of the prediction per tile's core
HALO = 512  # px of context on every side: glands up to this size are cut exactly (GlaS's largest: ~450 px)
PER_TILE = 1 << 16  # ids a tile may give out
CONTEXT = 16  # px kept around the owned regions when they are cut: more than the separation looks beyond a region


def slide_instances(out: str | Path, cfg: InstanceConfig, tile: int = TILE, halo: int = HALO) -> Job[dict]:
    """Cut the slide prediction ``out`` (an ``oeem predict-slide`` OME-Zarr) into glands, writing
    ``labels/glands`` with its pyramid; returns what was done. Runs again whole when asked (seconds to minutes:
    no network)."""
    t0 = time.perf_counter()
    try:
        root = zarr.open_group(str(out), mode="r+")
        pred, prob = root["labels/prediction/0"], root["0"]
    except Exception:  # noqa: BLE001 - not a zarr, or not ours
        raise OEEMError(f"{out}: not a slide prediction (an .ome.zarr made by `oeem predict-slide`)") from None
    step = max(1, round(1 / cfg.scale))  # the separation's grid: tiles start on it
    tile, halo = -(-tile // step) * step, -(-halo // step) * step
    h, w = pred.shape
    labels_group = root["labels"]
    if "glands" in labels_group:
        del labels_group["glands"]
    glands = labels_group.require_group("glands")
    mpp = float(dict(root.attrs.get("oeem_slide_prediction", {})).get("project_mpp") or 0) or None
    ids_out = create_level(glands, "0", (h, w), "uint32", tuple(pred.chunks), fill_value=0)
    block = int(pred.chunks[0])
    ny, nx = -(-h // tile), -(-w // tile)

    def cut_tile(ty: int, tx: int) -> tuple[tuple[slice, slice] | None, np.ndarray | None, np.ndarray | None,
                                            int, int, set[tuple[int, int]]]:
        """The glands of the regions tile (ty, tx) owns: (box, which of its pixels, their ids - None when it cuts
        none -, how many glands, how many regions it leaves to the last pass, the blocks those lie in); reads
        only, so two tiles may be cut at once."""
        y0, x0 = ty * tile, tx * tile
        wy0, wx0 = max(0, y0 - halo), max(0, x0 - halo)
        wy1, wx1 = min(h, y0 + tile + halo), min(w, x0 + tile + halo)
        mask = np.asarray(pred[wy0:wy1, wx0:wx1]) > 0
        if not mask.any():
            return None, None, None, 0, 0, set()
        regions = label(mask, connectivity=2)
        owned = np.zeros(int(regions.max()) + 1, bool)
        whole = np.zeros_like(owned)
        boxes = ndi.find_objects(regions)
        for k, sl in enumerate(boxes, start=1):
            first_row = sl[0].start
            first_col = sl[1].start + int(np.argmax(regions[first_row, sl[1]] == k))
            gy, gx = first_row + wy0, first_col + wx0
            owned[k] = y0 <= gy < y0 + tile and x0 <= gx < x0 + tile
            whole[k] = ((sl[0].start > 0 or wy0 == 0) and (sl[0].stop < mask.shape[0] or wy1 == h)
                        and (sl[1].start > 0 or wx0 == 0) and (sl[1].stop < mask.shape[1] or wx1 == w))
        cut = owned & whole
        seeds = set()  # the blocks where the regions larger than the halo start: the last pass begins there
        for k in np.nonzero(owned & ~whole)[0]:
            sl = boxes[k - 1]
            seeds.update((by, bx) for by in range((wy0 + sl[0].start) // block, (wy0 + sl[0].stop - 1) // block + 1)
                         for bx in range((wx0 + sl[1].start) // block, (wx0 + sl[1].stop - 1) // block + 1))
        left = int((owned & ~whole).sum())
        if not cut.any():
            return None, None, None, 0, left, seeds
        # only the owned regions' box is cut, with CONTEXT px of whatever lies around them (a region's cut
        # depends on itself and its neighbours' pixels within a few px) and on the separation's grid
        cut_boxes = [boxes[k - 1] for k in np.nonzero(cut)[0]]
        y0c = max(0, (min(b[0].start for b in cut_boxes) - CONTEXT) // step * step)
        x0c = max(0, (min(b[1].start for b in cut_boxes) - CONTEXT) // step * step)
        crop = (slice(y0c, min(mask.shape[0], max(b[0].stop for b in cut_boxes) + CONTEXT)),
                slice(x0c, min(mask.shape[1], max(b[1].stop for b in cut_boxes) + CONTEXT)))
        mine = cut[regions[crop]]
        box = (slice(wy0 + crop[0].start, wy0 + crop[0].stop), slice(wx0 + crop[1].start, wx0 + crop[1].stop))
        probs = np.asarray(prob[box], np.float32) / 255 if cfg.method == "core" else None
        local = instances_of(mask[crop], probs, cfg) * mine
        if int(local.max()) >= PER_TILE:
            raise OEEMError(f"{out}: more than {PER_TILE - 1} glands in one {tile} px tile; lower the tile size")
        glands_here = int(np.count_nonzero(np.bincount(local.ravel())[1:]))
        ids = np.where(local > 0, local.astype(np.uint32) + np.uint32((ty * nx + tx) * PER_TILE), 0)
        return box, mine, ids, glands_here, left, seeds

    count = too_large = 0
    seeds: set[tuple[int, int]] = set()
    write_lock = threading.Lock()

    def cut_and_write(ty: int, tx: int) -> tuple[int, int, set[tuple[int, int]]]:
        box, mine, ids, glands_here, left, tile_seeds = cut_tile(ty, tx)
        if box is not None:
            # boxes overlap in the halos, but each pixel is one tile's: one write at a time, in any order, gives
            # the one-thread result
            with write_lock:
                ids_out[box] = np.where(mine, ids, np.asarray(ids_out[box]))
        return glands_here, left, tile_seeds

    # two tiles cut at once (the labelling and the watershed release the GIL: the 2 cores the prediction used),
    # each writing its own glands: the pool never waits for a write
    tiles = [(ty, tx) for ty in range(ny) for tx in range(nx)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(cut_and_write, ty, tx) for ty, tx in tiles]
        try:
            for k, future in enumerate(as_completed(futures), start=1):
                glands_here, left, tile_seeds = future.result()
                count, too_large = count + glands_here, too_large + left
                seeds |= tile_seeds
                yield Progress("glands", k, len(tiles), f"tile {k}/{len(tiles)}")
        finally:
            for future in futures:
                future.cancel()
    if too_large:
        count += yield from _label_the_rest(pred, ids_out, np.uint32(ny * nx * PER_TILE), seeds)
    levels = add_levels(glands, LEVELS_MIN_SIDE, labels=True)
    glands.attrs["ome"] = label_metadata("glands", levels, mpp, ids=True)
    names = [n for n in ("prediction", "glands") if n in labels_group]
    labels_group.attrs["ome"] = labels_group_metadata(names)
    record = {"glands": count, "too_large": too_large, "config": asdict(cfg), "tile": tile, "halo": halo,
              "seconds": time.perf_counter() - t0}
    root.attrs["oeem_slide_instances"] = record
    return record


def _label_the_rest(pred: zarr.Array, ids_out: zarr.Array, first_id: np.uint32,
                    seeds: set[tuple[int, int]]) -> Job[int]:
    """Give each region of the mask that no tile cut (wider than the halo) one id, starting at ``first_id``; returns
    how many regions. Only the blocks those regions reach are read: from the ``seeds`` (blocks where a tile saw
    one), a block whose uncut regions touch an edge or a corner adds the block beyond it. Each region's parts in
    each block (8-connected) are joined across block seams and corners (union-find, as
    :mod:`pipeline.slides.geojson_export` does). Each block is labelled once per pass: the first keeps only its
    edge lines, the second labels it again to write (memory stays one block)."""
    from pipeline.slides.geojson_export import GlandParts, link_parts

    block = int(pred.chunks[0])
    h, w = pred.shape
    ny, nx = -(-h // block), -(-w // block)
    parts = GlandParts()
    local: dict[tuple[int, int], np.ndarray] = {}  # each reached block's part index of its local labels
    edges: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}  # its top row, bottom row, left and right column

    def rest(by: int, bx: int) -> np.ndarray:
        sl = (slice(by * block, (by + 1) * block), slice(bx * block, (bx + 1) * block))
        return label((np.asarray(pred[sl]) > 0) & (np.asarray(ids_out[sl]) == 0), connectivity=2)

    def link(a: np.ndarray, b: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> None:
        n = min(len(a), len(b))  # facing pixels and, 8-connected, their diagonal neighbours
        for da, db in ((slice(0, n), slice(0, n)), (slice(1, n), slice(0, n - 1)), (slice(0, n - 1), slice(1, n))):
            link_parts(parts, a[da], b[db], ids_a, ids_b)

    todo = deque(sorted(seeds))
    while todo:
        by, bx = todo.popleft()
        if (by, bx) in local:
            continue
        labels = rest(by, bx)
        local[by, bx] = np.array([parts.add([0, 0, 0, 0], (0, 0)) if k else -1
                                  for k in range(int(labels.max()) + 1)])
        top, bottom, left, right = edges[by, bx] = (labels[0, :].copy(), labels[-1, :].copy(), labels[:, 0].copy(),
                                                    labels[:, -1].copy())
        reach = {(-1, 0): top.any(), (1, 0): bottom.any(), (0, -1): left.any(), (0, 1): right.any(),
                 (-1, -1): top[0] > 0, (-1, 1): top[-1] > 0, (1, -1): bottom[0] > 0, (1, 1): bottom[-1] > 0}
        for (dy, dx), touches in reach.items():
            if touches and 0 <= by + dy < ny and 0 <= bx + dx < nx and (by + dy, bx + dx) not in local:
                todo.append((by + dy, bx + dx))
        yield Progress("large regions", len(local), len(local) + len(todo), f"{len(local)} blocks read")
    for (by, bx), index in local.items():  # each seam and corner once: with the blocks right of and below it
        top, bottom, left, right = edges[by, bx]
        if (by, bx + 1) in local:
            link(right, edges[by, bx + 1][2], index, local[by, bx + 1])
        if (by + 1, bx) in local:
            link(bottom, edges[by + 1, bx][0], index, local[by + 1, bx])
        if (by + 1, bx + 1) in local:
            link_parts(parts, bottom[-1:], edges[by + 1, bx + 1][0][:1], index, local[by + 1, bx + 1])
        if (by + 1, bx - 1) in local:
            link_parts(parts, bottom[:1], edges[by + 1, bx - 1][0][-1:], index, local[by + 1, bx - 1])
    roots = sorted({parts.find(i) for i in range(len(parts.parent))})
    number = {r: first_id + np.uint32(k + 1) for k, r in enumerate(roots)}
    for k, ((by, bx), index) in enumerate(sorted(local.items())):
        if len(index) < 2:
            continue  # none of the regions in this block: not read again
        labels = rest(by, bx)
        lut = np.zeros(int(labels.max()) + 1, np.uint32)
        for j, part in enumerate(index[1:], start=1):
            lut[j] = number[parts.find(int(part))]
        sl = (slice(by * block, (by + 1) * block), slice(bx * block, (bx + 1) * block))
        ids_out[sl] = np.where(labels > 0, lut[labels], np.asarray(ids_out[sl]))
        yield Progress("large regions", k + 1, len(local), f"block {k + 1}/{len(local)} written")
    return len(roots)
