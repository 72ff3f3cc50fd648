"""Pixel-level metrics exactly as method.md defines them: dataset level, both classes, in percent.

IoU_c = sum|P_c & G_c| / sum|P_c | G_c| over all images; mIoU = mean over the two classes;
Dice = 2 mIoU / (1 + mIoU); F1 = mean over classes of TP / (TP + (FP + FN) / 2), pixels summed over all images.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.errors import OEEMError


def confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """2x2 counts [gt, pred] for binary arrays."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise OEEMError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    idx = (gt.astype(bool).ravel().astype(np.int64) * 2) + pred.astype(bool).ravel()
    return np.bincount(idx, minlength=4).reshape(2, 2)


def from_confusion(cm: np.ndarray) -> dict[str, float]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0)
        f1 = np.where(tp + fp + fn > 0, tp / (tp + (fp + fn) / 2), 1.0)
    miou = float(iou.mean())
    return {"mIoU": 100 * miou, "Dice": 100 * 2 * miou / (1 + miou), "F1": 100 * float(f1.mean()),
            "IoU_non_gland": 100 * float(iou[0]), "IoU_gland": 100 * float(iou[1])}


def score(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> dict[str, float]:
    """mIoU, Dice and F1 (percent) over paired binary (0/1) arrays."""
    cm = np.zeros((2, 2), np.int64)
    n = 0
    for p, g in zip(preds, gts, strict=True):
        cm += confusion(p, g)
        n += 1
    if n == 0:
        raise OEEMError("nothing to score: no (prediction, ground truth) pairs")
    return from_confusion(cm)
