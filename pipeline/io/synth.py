"""Procedurally generated H&E-like gland tissue: the embedded sample data and small test fixtures.

Glands are irregular ellipses with a pale lumen, an epithelial ring of cytoplasm and dark basal nuclei; stroma is
pink with scattered elongated nuclei; each image gets its own stain intensity and hue. It is not real tissue: it
exists so that a fresh install runs end to end without any download and the CAMs show something meaningful.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import draw

# Colours on [0, 1] RGB, close to eosin (pink) and haematoxylin (purple) in GlaS.
_STROMA = np.array([0.90, 0.62, 0.80])
_CYTOPLASM = np.array([0.72, 0.45, 0.72])
_LUMEN = np.array([0.97, 0.92, 0.96])
_NUCLEUS = np.array([0.30, 0.16, 0.50])


def _gland_field(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Radial distance field of each gland, normalised so 1 is its boundary; returns (field, gland id, glands)."""
    field = np.full((h, w), np.inf)
    ident = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    glands: list[tuple] = []
    target = rng.integers(2, 5)
    for _ in range(60):
        if len(glands) >= target:
            break
        ry, rx = rng.uniform(0.22, 0.42, 2) * min(h, w)
        cy, cx = rng.uniform(-0.05, 1.05) * h, rng.uniform(-0.05, 1.05) * w
        if any(np.hypot(cy - g[0], cx - g[1]) < (max(ry, rx) + max(g[2], g[3])) * 0.9 for g in glands):
            continue
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        theta = np.arctan2(v, u)
        wobble = 1 + sum(rng.uniform(0, 0.08) * np.sin(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        dist = np.hypot(u / rx, v / ry) / wobble
        closer = dist < field
        field[closer] = dist[closer]
        ident[closer & (dist < 1)] = len(glands) + 1
        glands.append((cy, cx, ry, rx))
    return field, ident, glands


def synth_tissue(h: int = 256, w: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 (h, w, 3), gland mask uint8 (h, w) with 1 = gland)."""
    rng = np.random.default_rng(seed)
    field, _, glands = _gland_field(h, w, rng)
    gland = field < 1.0
    lumen_edge = rng.uniform(0.45, 0.65)
    lumen = field < lumen_edge
    epithelium = gland & ~lumen

    img = np.empty((h, w, 3))
    img[:] = _STROMA
    img[epithelium] = _CYTOPLASM
    img[lumen] = _LUMEN
    # fibrous stroma texture and cytoplasm granularity
    texture = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 1.5)
    img += 0.05 * texture[..., None] * np.where(gland[..., None], 0.6, 1.0)

    nuclei = np.zeros((h, w), bool)
    for cy, cx, ry, rx in glands:  # basal nuclei along the epithelial ring
        n = int(2 * np.pi * (ry + rx) / 2 / 5)
        for t in rng.uniform(0, 2 * np.pi, n):
            rad = rng.uniform(lumen_edge + 0.1, 0.92)
            y = cy + rad * ry * np.sin(t) + rng.normal(0, 1)
            x = cx + rad * rx * np.cos(t) + rng.normal(0, 1)
            rr, cc = draw.ellipse(y, x, rng.uniform(1.8, 3.0), rng.uniform(1.5, 2.5), shape=(h, w),
                                  rotation=rng.uniform(0, np.pi))
            keep = gland[rr, cc]
            nuclei[rr[keep], cc[keep]] = True
    n_stroma = int(h * w / 900)
    for _ in range(n_stroma):  # sparse elongated stromal nuclei (fibroblasts, lymphocytes)
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        if 0 <= int(y) < h and 0 <= int(x) < w and gland[int(y), int(x)]:
            continue
        rr, cc = draw.ellipse(y, x, rng.uniform(1.2, 2.2), rng.uniform(2.5, 5.0), shape=(h, w),
                              rotation=rng.uniform(0, np.pi))
        keep = ~gland[rr, cc]
        nuclei[rr[keep], cc[keep]] = True
    soft = ndi.gaussian_filter(nuclei.astype(float), 0.7)[..., None]
    img = img * (1 - soft) + _NUCLEUS * soft

    # stain variation: per-image intensity and a hue tilt between eosin and haematoxylin
    strength = rng.uniform(0.85, 1.15)
    tilt = rng.uniform(-0.05, 0.05, 3)
    img = 1 - (1 - img) * strength + tilt
    img += rng.normal(0, 0.008, img.shape)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, gland.astype(np.uint8)


def write_sample_folder(folder, n_train: int = 10, n_test: int = 4, size: tuple[int, int] = (320, 384),
                        seed: int = 0) -> None:
    """Write a GlaS-style folder (``train_N.png`` + ``train_N_anno.png`` with 0/255 masks)."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"train_{i + 1}" for i in range(n_train)] + [f"testA_{i + 1}" for i in range(n_test)]
    for k, name in enumerate(names):
        image, mask = synth_tissue(*size, seed=seed * 1000 + k)
        Image.fromarray(image).save(folder / f"{name}.png", optimize=True)
        Image.fromarray(mask * 255).save(folder / f"{name}_anno.png", optimize=True)


def write_synthetic_slide(path, size: tuple[int, int] = (4096, 4096), tissue_fraction: float = 0.5,
                          mpp: float = 0.5, tile: int = 256, seed: int = 0, min_side: int = 512) -> float:
    """A pyramidal tiled TIFF (levels halving until ``min_side``) of synthetic H&E glands inside an elliptical
    piece of tissue on glass, its pixel size in the resolution tags - for tests and benchmarks of whole-slide
    code. Each level is made in a temporary zarr from the one above it, then written tile by tile, so memory stays
    at a few tiles whatever the size. Returns the tissue fraction of the slide."""
    import shutil
    import tempfile
    from pathlib import Path

    import tifffile
    import zarr

    from pipeline.io.omezarr import half

    glass = 242  # empty glass on a brightfield scan
    path = Path(path)
    h, w = size
    a = np.sqrt(max(tissue_fraction, 1e-6) * h * w / np.pi * (h / w))  # ellipse semi-axes: area = fraction
    b = a * w / h
    block = 2 * tile
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        levels = [zarr.open_array(str(tmp / "0"), mode="w", shape=(h, w, 3), chunks=(block, block, 3),
                                  dtype="uint8")]
        for by in range(-(-h // block)):
            for bx in range(-(-w // block)):
                y0, x0 = by * block, bx * block
                yy, xx = np.mgrid[y0:y0 + block, x0:x0 + block]
                inside = ((yy - h / 2) / a) ** 2 + ((xx - w / 2) / b) ** 2 < 1
                rng = np.random.default_rng(seed * 7919 + by * 100003 + bx)
                out = np.clip(rng.normal(glass, 2, (block, block, 3)), 0, 255).astype(np.uint8)
                if inside.any():
                    image, _ = synth_tissue(block, block, seed=int(rng.integers(1 << 30)))
                    out = np.where(inside[..., None], image, out)
                levels[0][y0:y0 + block, x0:x0 + block] = out[:min(block, h - y0), :min(block, w - x0)]
        while max(levels[-1].shape[:2]) // 2 >= min_side:
            prev = levels[-1]
            ph, pw = prev.shape[:2]
            nh, nw = -(-ph // 2), -(-pw // 2)
            arr = zarr.open_array(str(tmp / str(len(levels))), mode="w", shape=(nh, nw, 3),
                                  chunks=(block, block, 3), dtype="uint8")
            for y0 in range(0, nh, block):
                for x0 in range(0, nw, block):
                    src = np.asarray(prev[2 * y0:2 * (y0 + block), 2 * x0:2 * (x0 + block)])
                    # an odd side is padded, not trimmed: a TIFF level covers the whole slide
                    src = np.pad(src, ((0, src.shape[0] % 2), (0, src.shape[1] % 2), (0, 0)), mode="edge")
                    small = half(src)
                    arr[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
            levels.append(arr)

        def tiles(arr):
            for y0 in range(0, arr.shape[0], tile):
                for x0 in range(0, arr.shape[1], tile):
                    t = np.asarray(arr[y0:y0 + tile, x0:x0 + tile])
                    yield np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), mode="edge")

        opts = dict(tile=(tile, tile), photometric="rgb", compression="zlib", dtype=np.uint8,
                    resolutionunit="CENTIMETER")
        with tifffile.TiffWriter(path, bigtiff=h * w * 3 > 2**31) as tw:
            for k, arr in enumerate(levels):
                extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
                tw.write(tiles(arr), shape=arr.shape, resolution=(1e4 / mpp / 2**k, 1e4 / mpp / 2**k),
                         **extra, **opts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return float(min(1.0, np.pi * a * b / (h * w)))
