"""Confusing regions: where a pathologist's minutes buy the most.

A pixel is confusing when the segmentation disagrees with the pseudo-mask, or when the OEEM weight says the
model finds the pseudo-label hard to believe (weight < 1 means below the image's average credibility).
Connected confusing areas are ranked by size x mean confusion.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Region:
    image: str
    label: int
    area: int
    confusion: float  # mean per-pixel confusion in [0, 1]
    score: float  # area x confusion
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1
    centroid: tuple[float, float]

    def as_dict(self) -> dict:
        return asdict(self)


def confusion_map(prediction: np.ndarray | None, pseudo: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Per-pixel confusion in [0, 1]: 1 where prediction != pseudo-mask, else 1 - min(weight, 1)."""
    conf = np.zeros(pseudo.shape, np.float32)
    if weight is not None:
        conf = 1 - np.clip(weight, 0, 1).astype(np.float32)
    if prediction is not None:
        conf = np.maximum(conf, (prediction != pseudo).astype(np.float32))
    return conf


def confusing_regions(name: str, prediction: np.ndarray | None, pseudo: np.ndarray, weight: np.ndarray | None,
                      threshold: float = 0.5, min_area: int = 64) -> list[Region]:
    """Connected regions where confusion > ``threshold``, largest score first."""
    conf = confusion_map(prediction, pseudo, weight)
    lab, n = ndi.label(conf > threshold)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = ndi.sum(np.ones_like(conf), lab, idx)
    means = ndi.mean(conf, lab, idx)
    slices = ndi.find_objects(lab)
    centroids = ndi.center_of_mass(np.ones_like(conf), lab, idx)
    regions = []
    for k, (a, m, sl, c) in enumerate(zip(areas, means, slices, centroids), start=1):
        if a < min_area:
            continue
        regions.append(Region(name, k, int(a), float(m), float(a * m),
                              (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), (float(c[0]), float(c[1]))))
    return sorted(regions, key=lambda r: -r.score)


def region_mask(prediction, pseudo, weight, region: Region, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of one region's pixels (for simulated or real corrections)."""
    lab, _ = ndi.label(confusion_map(prediction, pseudo, weight) > threshold)
    return lab == region.label
