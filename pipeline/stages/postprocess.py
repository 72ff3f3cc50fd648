"""Cleaning a binary gland mask: drop fragments too small to be a gland, fill holes too small to be stroma.

Why: GlaS's gland masks include the lumen, but the lumen is white space that the classifier's CAMs and the
segmentation network both call non-gland, so the raw prediction (and the pseudo-masks) are glands with holes. And a
few hundred scattered pixels are never a gland at 20x. On the validation split of the training images both steps
lift the mIoU of the cpu preset's prediction by about 4 points (benchmarks/postprocess.py).
"""
from __future__ import annotations

import inspect

import numpy as np
from skimage.morphology import remove_small_holes, remove_small_objects

from pipeline.errors import OEEMError

# scikit-image 0.26 sizes by ``max_size`` (inclusive); before it by ``min_size`` / ``area_threshold`` (exclusive)
_MAX_SIZE = "max_size" in inspect.signature(remove_small_objects).parameters


def _drop(mask: np.ndarray, below: int) -> np.ndarray:
    """``mask`` without its 4-connected components of fewer than ``below`` pixels."""
    return remove_small_objects(mask, max_size=below - 1) if _MAX_SIZE else remove_small_objects(mask, below)


def _fill(mask: np.ndarray, below: int) -> np.ndarray:
    """``mask`` with its holes (4-connected components outside it, at the border too) of fewer than ``below``
    pixels filled."""
    return remove_small_holes(mask, max_size=below - 1) if _MAX_SIZE else remove_small_holes(mask, below)


def clean_mask(mask: np.ndarray, drop_glands_below: int = 0, fill_holes_below: int = 0) -> np.ndarray:
    """``mask`` (H x W, non-zero = gland) as uint8 0/1, with glands smaller than ``drop_glands_below`` pixels
    removed, then non-gland regions smaller than ``fill_holes_below`` pixels filled (0: that step is off), by
    scikit-image's ``remove_small_objects`` and ``remove_small_holes``.

    Areas are in pixels of the mask itself (the project's resolution: GlaS is 20x, 0.62 µm per pixel). A non-gland
    region touching the image border counts as a hole too: a gland cut by the border keeps its lumen."""
    if drop_glands_below < 0 or fill_holes_below < 0:
        raise OEEMError(f"areas to drop or fill must be >= 0 pixels (0: off), not {drop_glands_below} and "
                        f"{fill_holes_below}")
    gland = np.asarray(mask).astype(bool)
    if gland.ndim != 2:
        raise OEEMError(f"a gland mask has two dimensions (H x W), not shape {gland.shape}")
    if drop_glands_below:
        gland = _drop(gland, drop_glands_below)
    if fill_holes_below:
        gland = _fill(gland, fill_holes_below)
    return gland.astype(np.uint8)
