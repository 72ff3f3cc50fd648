"""The patch grid and the weak labels: what a pathologist would tick per patch ("gland here", "stroma here")."""
from __future__ import annotations

import numpy as np

from pipeline.errors import OEEMError

GLAND, NON_GLAND = 1, 0  # class index in CAMs / masks; patch label vectors are [non-gland, gland]


def grid_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis, with a last window flush with the edge so every pixel is covered."""
    if size > length:
        raise OEEMError(f"patch size {size} px is larger than the image side {length} px; "
                        "use a smaller --patch-size or larger images")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def patch_grid(shape: tuple[int, int], size: int, stride: int) -> np.ndarray:
    """(N, 2) array of (y, x) top-left corners covering an image of ``shape`` (H, W)."""
    ys = grid_starts(shape[0], size, stride)
    xs = grid_starts(shape[1], size, stride)
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int32)


def patch_means(values: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """(N,) float64 mean of ``values`` (H, W) over each patch at ``corners`` (an integral image: one pass)."""
    integral = np.pad(values.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    y, x = corners[:, 0], corners[:, 1]
    total = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
    return total / float(size * size)


def patch_labels(mask: np.ndarray, corners: np.ndarray, size: int, min_fraction: float = 0.05) -> np.ndarray:
    """(N, 2) uint8 multi-label vectors [non-gland present, gland present] for each patch.

    A class is present when it covers *more than* ``min_fraction`` of the patch (the reference's 5 % rule).
    """
    frac = patch_means(mask, corners, size)
    return np.stack([(1 - frac) > min_fraction, frac > min_fraction], axis=1).astype(np.uint8)
