"""Cleaning the predicted gland mask: small fragments dropped, lumens filled, large stroma kept."""
import numpy as np
import pytest

from pipeline.config import apply_overrides, check, preset
from pipeline.errors import OEEMError
from pipeline.stages.infer import mask_from_probs
from pipeline.stages.postprocess import clean_mask


def glands() -> np.ndarray:
    """Two glands with lumens (one cut by the image border), a speck, and stroma enclosed by a ring of gland."""
    m = np.zeros((120, 160), np.uint8)
    m[10:50, 10:50] = 1
    m[25:35, 25:35] = 0  # lumen, 100 px
    m[0:30, 100:140] = 1
    m[0:8, 115:125] = 0  # lumen open to the image border, 80 px
    m[90:93, 20:23] = 1  # speck, 9 px
    m[60:120, 60:120] = 1
    m[70:110, 70:110] = 0  # stroma inside a ring of gland, 1600 px
    return m


def test_specks_dropped_lumens_filled_stroma_kept():
    m = glands()
    out = clean_mask(m, drop_glands_below=20, fill_holes_below=500)
    assert out.dtype == np.uint8 and out.shape == m.shape
    assert out[25:35, 25:35].all() and out[0:8, 115:125].all()  # both lumens filled, the border one too
    assert not out[90:93, 20:23].any()  # the speck is gone
    assert not out[70:110, 70:110].any()  # stroma larger than the limit stays non-gland
    changed = out != m
    assert changed.sum() == 100 + 80 + 9  # nothing else moved


def test_each_step_is_off_at_zero_and_bounds_are_strict():
    m = glands()
    np.testing.assert_array_equal(clean_mask(m, 0, 0), m)
    only_fill = clean_mask(m, 0, 101)
    assert only_fill[90:93, 20:23].all() and only_fill[25:35, 25:35].all()
    assert not clean_mask(m, 0, 100)[25:35, 25:35].any()  # "below": a 100 px lumen is not below 100
    # the 9 px speck is below 10, not below 9
    assert not clean_mask(m, 10, 0)[90:93, 20:23].any() and clean_mask(m, 9, 0)[90:93, 20:23].all()


def test_scikit_image_cleans_as_the_scipy_labelling_it_replaced():
    """clean_mask is scikit-image's remove_small_objects then remove_small_holes; it gives what the hand-written
    scipy labelling gave before (4-connected, "smaller than", holes at the border filled too)."""
    from scipy import ndimage as ndi

    def small_components(mask, below):
        labels, _ = ndi.label(mask)
        small = np.bincount(labels.ravel()) < below
        small[0] = False
        return small[labels]

    rng = np.random.default_rng(0)
    for _ in range(5):
        m = ndi.gaussian_filter(rng.random((150, 200)), 4) > 0.5
        for drop, fill in ((60, 80), (1, 1), (0, 300), (500, 0)):
            expected = m.copy()
            if drop:
                expected &= ~small_components(expected, drop)
            if fill:
                expected |= small_components(~expected, fill)
            np.testing.assert_array_equal(clean_mask(m, drop, fill), expected.astype(np.uint8))


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(OEEMError, match=">= 0"):
        clean_mask(glands(), -1, 0)
    with pytest.raises(OEEMError, match="two dimensions"):
        clean_mask(np.zeros((2, 8, 8)), 1, 1)
    cfg = preset("cpu")
    apply_overrides(cfg, {"inference.fill_holes_below": -5})
    with pytest.raises(OEEMError, match="inference.fill_holes_below must be >= 0"):
        check(cfg)


def test_the_cpu_preset_cleans_and_the_paper_preset_does_not():
    prob = np.stack([1 - glands(), glands()]).astype(np.float32)
    cpu, paper = preset("cpu").inference, preset("paper").inference
    assert cpu.drop_glands_below > 0 and cpu.fill_holes_below > 0
    np.testing.assert_array_equal(mask_from_probs(prob, paper), glands())  # the paper's plain argmax
    np.testing.assert_array_equal(mask_from_probs(prob, cpu),
                                  clean_mask(glands(), cpu.drop_glands_below, cpu.fill_holes_below))
