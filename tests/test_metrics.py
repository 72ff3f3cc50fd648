import numpy as np
import pytest

from pipeline.errors import OEEMError
from pipeline.metrics import score


def test_dataset_level_scores_by_hand():
    gt1 = np.array([[1, 1], [0, 0]])
    pr1 = np.array([[1, 0], [0, 0]])
    gt2 = np.array([[1, 1, 1, 1]])
    pr2 = np.array([[1, 1, 1, 0]])
    s = score([pr1, pr2], [gt1, gt2])
    # pooled: gland TP=4 FP=0 FN=2 ; non-gland TP=2 FP=2 FN=0
    iou_g, iou_n = 4 / 6, 2 / 4
    miou = (iou_g + iou_n) / 2
    assert s["mIoU"] == pytest.approx(100 * miou)
    assert s["pixel_Dice"] == pytest.approx(100 * 2 * 4 / (2 * 4 + 0 + 2))  # gland class: 2TP / (2TP + FP + FN)
    assert s["F1"] == pytest.approx(100 * (4 / (4 + 1) + 2 / (2 + 1)) / 2)


def test_perfect_and_inverted():
    gt = np.array([[0, 1], [1, 0]])
    assert score([gt], [gt])["mIoU"] == pytest.approx(100)
    assert score([1 - gt], [gt])["mIoU"] == pytest.approx(0)


def test_shape_mismatch_and_empty():
    with pytest.raises(OEEMError, match="shape"):
        score([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(OEEMError, match="nothing to score"):
        score([], [])
