import numpy as np
import pytest

from pipeline.errors import OEEMError
from pipeline.io.data import find_samples, read_mask
from pipeline.stages.patches import grid_starts, patch_grid, patch_labels


def test_grid_is_edge_flush():
    assert grid_starts(300, 112, 56) == [0, 56, 112, 168, 188]
    assert grid_starts(224, 112, 56) == [0, 56, 112]
    assert grid_starts(112, 112, 56) == [0]
    corners = patch_grid((300, 224), 112, 56)
    assert len(corners) == 5 * 3 and corners.max(0).tolist() == [188, 112]


def test_patch_larger_than_image_is_refused():
    with pytest.raises(OEEMError, match="patch size 112 px is larger than the image side 100 px"):
        patch_grid((100, 400), 112, 56)


def test_five_percent_rule_is_strict():
    size = 20  # 400 px per patch: 5 % = 20 px
    mask = np.zeros((20, 20), np.uint8)
    corners = np.array([[0, 0]])
    mask.flat[:20] = 1  # exactly 5 %: not present
    assert patch_labels(mask, corners, size).tolist() == [[1, 0]]
    mask.flat[:21] = 1  # just above: present
    assert patch_labels(mask, corners, size).tolist() == [[1, 1]]
    mask[:] = 1
    assert patch_labels(mask, corners, size).tolist() == [[0, 1]]


def test_labels_match_a_direct_count():
    rng = np.random.default_rng(0)
    mask = (rng.random((150, 170)) < 0.3).astype(np.uint8)
    mask[:60, :60] = 1
    corners = patch_grid(mask.shape, 56, 28)
    labels = patch_labels(mask, corners, 56)
    for (y, x), lab in zip(corners, labels):
        frac = mask[y:y + 56, x:x + 56].mean()
        assert lab.tolist() == [int(1 - frac > 0.05), int(frac > 0.05)]


@pytest.mark.glas
def test_real_glas_patch_counts(glas_root):
    total = np.zeros(2, int)
    n = 0
    for s in find_samples(glas_root / "train"):
        mask = read_mask(s.mask_path)
        labels = patch_labels(mask, patch_grid(mask.shape, 112, 56), 112)
        total += labels.sum(0, dtype=np.int64)
        n += len(labels)
    assert n == 9703  # 85 images, edge-flush grid
    assert total.tolist() == [8580, 8079]
