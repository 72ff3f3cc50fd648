"""The OEEM weight maps and loss against independent (numpy) computations of Eq. 3-8."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import OEEMError
from pipeline.stages.losses import segmentation_loss, weight_map


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 2, 6, 7, generator=g) * 2
    target = torch.randint(0, 2, (3, 6, 7), generator=g)
    target[0, 0, :4] = 255  # some ignored pixels
    target[2] = 1  # one single-class image
    target[2, 0, 0] = 255
    return logits, target


def _np_lnorm(logits, target, ignore=255, temperature=1.0):
    out = np.zeros(target.shape)
    for i in range(target.shape[0]):
        lg = logits[i].numpy().astype(np.float64)
        t = target[i].numpy()
        valid = t != ignore
        p = np.exp(lg - lg.max(0)) / np.exp(lg - lg.max(0)).sum(0)
        ce = -np.log(np.take_along_axis(p, np.where(valid, t, 0)[None], 0)[0])
        if len(np.unique(t[valid])) < 2:
            out[i][valid] = 1
            continue
        sm = np.exp(-ce[valid] / temperature) / np.exp(-ce[valid] / temperature).sum()
        out[i][valid] = sm / sm.mean()
    return out


def test_l_norm_matches_equation_6_on_valid_pixels():
    logits, target = _case()
    w = weight_map(logits, target, "l_norm")
    assert w.shape == target.shape
    np.testing.assert_allclose(w.numpy(), _np_lnorm(logits, target), rtol=1e-5, atol=1e-6)
    valid = target[0] != 255
    assert w[0][valid].mean().item() == pytest.approx(1.0, abs=1e-5)  # divided by its mean
    assert (w[0][~valid] == 0).all()  # ignored pixels take no weight


def test_temperature_flattens_the_l_norm_weights():
    """softmax(-L / T): T = 1 is Eq. 6 itself; a larger T narrows the weights towards 1 (plain CE)."""
    logits, target = _case()
    assert torch.equal(weight_map(logits, target, "l_norm", temperature=1.0), weight_map(logits, target, "l_norm"))
    w3 = weight_map(logits, target, "l_norm", temperature=3.0)
    np.testing.assert_allclose(w3.numpy(), _np_lnorm(logits, target, temperature=3.0), rtol=1e-5, atol=1e-6)
    valid = target[0] != 255
    spread = [weight_map(logits, target, "l_norm", temperature=t)[0][valid].std().item() for t in (0.5, 1, 3, 100)]
    assert spread == sorted(spread, reverse=True) and spread[-1] < 0.05
    assert segmentation_loss(logits, target, "l_norm", temperature=1e4).item() == pytest.approx(
        segmentation_loss(logits, target, "ce").item(), rel=1e-3)
    with pytest.raises(OEEMError, match="temperature must be > 0"):
        weight_map(logits, target, "l_norm", temperature=0)


def test_single_class_images_get_weight_one():
    logits, target = _case()
    for kind in ("c_max", "c_diff", "l_norm", "lc_mix"):
        w = weight_map(logits, target, kind)
        valid = target[2] != 255
        assert torch.all(w[2][valid] == 1) and w[2][0, 0] == 0


def test_confidence_weights_and_mix():
    logits, target = _case(1)
    p = logits.softmax(1)
    multi = slice(0, 2)
    valid = target[multi] != 255
    cmax = weight_map(logits, target, "c_max")[multi]
    cdiff = weight_map(logits, target, "c_diff")[multi]
    assert torch.allclose(cmax[valid], p.max(1).values[multi][valid])
    assert torch.allclose(cdiff[valid], (p.max(1).values - p.min(1).values)[multi][valid])
    mix = weight_map(logits, target, "lc_mix")[multi]
    assert torch.allclose(mix, weight_map(logits, target, "l_norm")[multi] * cmax, atol=1e-6)


def test_ce_loss_equals_torch_cross_entropy():
    logits, target = _case()
    ours = segmentation_loss(logits, target, "ce")
    ref = F.cross_entropy(logits, target, ignore_index=255)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_loss_is_mean_of_weighted_ce_and_weights_carry_no_gradient():
    logits, target = _case()
    logits.requires_grad_(True)
    loss = segmentation_loss(logits, target, "l_norm")
    w = torch.from_numpy(_np_lnorm(logits.detach(), target)).float()
    valid = target != 255
    ce = F.cross_entropy(logits, torch.where(valid, target, 0), reduction="none")
    manual = (w * ce)[valid].sum() / valid.sum()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(manual, logits)
    assert torch.allclose(g1, g2, atol=1e-6)  # W is a constant: gradient flows through CE only


def test_oeem_down_weights_hard_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])  # pixel 0 confidently gland ... 3 confidently not
    target = torch.tensor([[[1, 1, 1, 0]]])
    w = weight_map(logits, target, "l_norm")[0, 0]
    assert w[0] > w[1] > w[2]  # the more the model disagrees with the label, the less it counts
    assert w.sum().item() == pytest.approx(4.0, rel=1e-6)


def test_clean_pixels_keep_full_weight():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])
    target = torch.tensor([[[1, 1, 1, 0]]])
    clean = torch.tensor([[[False, False, True, False]]])
    ce = F.cross_entropy(logits, target, reduction="none")
    w = weight_map(logits, target, "l_norm")
    w[clean] = 1
    expected = (w * ce).sum() / 4
    assert segmentation_loss(logits, target, "l_norm", clean=clean).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("kind", ["ce", "l_norm"])
def test_verified_pixels_weigh_the_verified_weight(kind):
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])
    target = torch.tensor([[[1, 1, 1, 0]]])
    clean = torch.tensor([[[False, False, True, False]]])
    ce = F.cross_entropy(logits, target, reduction="none")
    w = weight_map(logits, target, kind) if kind != "ce" else torch.ones_like(ce)
    w[clean] = 5.0
    expected = (w * ce).sum() / 4  # still divided by the valid pixels: the others keep their scale
    got = segmentation_loss(logits, target, kind, clean=clean, clean_weight=5.0).item()
    assert got == pytest.approx(expected.item())
    assert got > segmentation_loss(logits, target, kind, clean=clean).item()  # the verified pixel is a wrong guess


@pytest.mark.parametrize("kind", ["ce", "l_norm"])
def test_divided_by_the_weights_the_loss_is_a_weighted_mean_whose_size_does_not_grow_with_the_weight(kind):
    logits = torch.zeros(2, 2, 1, 4)
    logits[:, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])
    target = torch.tensor([[[1, 1, 1, 0]], [[1, 1, 1, 0]]])
    clean = torch.zeros(2, 1, 4, dtype=torch.bool)
    clean[0] = True  # one tile of the batch wholly corrected, as when a batch is cut from a painted region
    ce = F.cross_entropy(logits, target, reduction="none")
    w = weight_map(logits, target, kind) if kind != "ce" else torch.ones_like(ce)
    w[clean] = 25.0
    got = segmentation_loss(logits, target, kind, clean=clean, clean_weight=25.0, divide_by="weights").item()
    assert got == pytest.approx(((w * ce).sum() / w.sum()).item())
    # a weighted mean of the pixels' losses: never above the largest one, whatever the weight ...
    assert got <= ce.max().item()
    by_pixels = segmentation_loss(logits, target, kind, clean=clean, clean_weight=25.0).item()
    assert by_pixels > 5 * got  # ... while divided by the pixels, the step grows with it
    # without verified pixels both divisors agree (the weights of ce and l_norm average 1)
    assert segmentation_loss(logits, target, kind, divide_by="weights").item() == pytest.approx(
        segmentation_loss(logits, target, kind).item())
    with pytest.raises(ValueError, match="divide_by"):
        segmentation_loss(logits, target, kind, divide_by="images")


@pytest.mark.parametrize("kind", ["ce", "l_norm"])
def test_a_prior_multiplies_the_weights_and_verified_pixels_ignore_it(kind):
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])
    target = torch.tensor([[[1, 1, 1, 0]]])
    prior = torch.tensor([[[1.0, 0.5, 0.2, 0.0]]])
    clean = torch.tensor([[[False, False, False, True]]])
    ce = F.cross_entropy(logits, target, reduction="none")
    w = weight_map(logits, target, kind) if kind != "ce" else torch.ones_like(ce)
    expected = (w * prior * ce).sum() / 4
    assert segmentation_loss(logits, target, kind, prior=prior).item() == pytest.approx(expected.item())
    w2 = w * prior
    w2[clean] = 3.0  # a pathologist's pixel is not doubted, whatever the ranking said before
    got = segmentation_loss(logits, target, kind, prior=prior, clean=clean, clean_weight=3.0).item()
    assert got == pytest.approx(((w2 * ce).sum() / 4).item())


def test_ohem_is_the_mean_over_hard_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([4.0, 2.0, -2.0, -4.0])
    target = torch.tensor([[[1, 1, 1, 0]]])  # p(target): .98, .88, .12, .98 -> only pixel 2 is below 0.7
    ce = F.cross_entropy(logits, target, reduction="none")[0, 0]
    loss = segmentation_loss(logits, target, "ohem", ohem_thresh=0.7, ohem_min_kept=0.25)
    assert loss.item() == pytest.approx(ce[2].item(), rel=1e-5)


def test_every_kind_is_differentiable_and_unknown_names_are_listed():
    logits, target = _case()
    for kind in ("ce", "ohem", "c_max", "c_diff", "l_norm", "lc_mix"):
        x = logits.clone().requires_grad_(True)
        segmentation_loss(x, target, kind).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(OEEMError, match="choose one of ce, ohem, c_max, c_diff, l_norm, lc_mix"):
        segmentation_loss(logits, target, "focal")
    with pytest.raises(OEEMError, match="unknown loss"):
        weight_map(logits, target, "ce")
