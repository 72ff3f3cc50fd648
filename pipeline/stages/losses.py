"""The OEEM loss (Eq. 3-8 of the paper) and its ablations.

A per-pixel weight map, computed online from the current prediction without gradient, scales the cross-entropy
so that credible ("easy") pixels of a noisy pseudo-mask count more. ``l_norm`` is the paper's choice:
W = softmax(-L) / mean(softmax(-L)) over the valid pixels of each image, i.e. W_i = N_valid * exp(-L_i) / sum_j exp(-L_j).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import LOSS_DIVISORS, LOSS_KINDS
from pipeline.errors import OEEMError

WEIGHT_KINDS = ("c_max", "c_diff", "l_norm", "lc_mix")


def _check_kind(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise OEEMError(f"unknown loss {kind!r}: choose one of {', '.join(allowed)}")


def _multi_class(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N,) bool: does the valid part of each image hold at least two classes? (Eq. 8)"""
    n = target.shape[0]
    t = torch.where(valid, target, torch.zeros_like(target)).reshape(n, -1)
    v = valid.reshape(n, -1)
    big = torch.iinfo(torch.long).max
    lo = torch.where(v, t, torch.full_like(t, big)).min(dim=1).values
    hi = torch.where(v, t, torch.full_like(t, -1)).max(dim=1).values
    return (hi > lo) & v.any(dim=1)


@torch.no_grad()
def weight_map(logits: torch.Tensor, target: torch.Tensor, kind: str = "l_norm",
               ignore_index: int = 255, temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel weights [N, H, W] for ``kind`` in c_max, c_diff, l_norm, lc_mix (Eq. 4-7).

    Ignored pixels get 0; an image whose valid target holds fewer than two classes gets 1 on its valid pixels.
    ``temperature`` T > 0 makes the l_norm softmax softmax(-L / T): T = 1 is the paper; a larger T flattens the
    weights (all 1 as T grows), which matters when a weak model's losses spread widely.
    """
    if not temperature > 0:
        raise OEEMError(f"the weight temperature must be > 0, not {temperature}")
    _check_kind(kind, WEIGHT_KINDS)
    if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0] \
            or logits.shape[2:] != target.shape[1:]:
        raise OEEMError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match "
                        "([N, C, H, W] and [N, H, W])")
    logits = logits.detach().float()
    valid = target != ignore_index
    prob = logits.softmax(dim=1)
    c_max = prob.max(dim=1).values
    if kind == "c_max":
        w = c_max
    elif kind == "c_diff":
        w = c_max - prob.min(dim=1).values
    else:
        safe_t = torch.where(valid, target, torch.zeros_like(target)).long()
        ce = F.cross_entropy(logits, safe_t, reduction="none")  # L, the per-pixel loss map
        n = ce.shape[0]
        neg = torch.where(valid, -ce / temperature, torch.full_like(ce, float("-inf"))).reshape(n, -1)
        log_sm = neg - torch.logsumexp(neg, dim=1, keepdim=True)  # log softmax over valid positions
        n_valid = valid.reshape(n, -1).sum(dim=1, keepdim=True).clamp(min=1)
        w = (log_sm.exp() * n_valid).reshape(ce.shape)  # divide by the mean (= 1 / N_valid)
        w = torch.nan_to_num(w, nan=0.0)
        if kind == "lc_mix":
            w = w * c_max
    w = torch.where(_multi_class(target, valid)[:, None, None], w, torch.ones_like(w))
    return torch.where(valid, w, torch.zeros_like(w))


@torch.no_grad()
def ohem_weight(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: float = 0.1,
                ignore_index: int = 255) -> torch.Tensor:
    """Online hard example mining as a weight: keep pixels whose target-class probability is below ``thresh``
    (at least the ``min_kept`` fraction of the hardest ones), scaled so the loss is the mean over kept pixels."""
    valid = target != ignore_index
    safe_t = torch.where(valid, target, torch.zeros_like(target)).long()
    p_t = logits.detach().float().softmax(1).gather(1, safe_t[:, None])[:, 0]
    p_t = torch.where(valid, p_t, torch.full_like(p_t, 2.0))
    flat = p_t.reshape(-1)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return torch.zeros_like(p_t)
    k = min(n_valid, max(1, int(min_kept * n_valid)))
    kth = flat.kthvalue(k).values
    keep = (p_t < max(thresh, float(kth)) + 1e-12) & valid
    keep |= (p_t <= kth) & valid
    return keep.float() * (n_valid / keep.sum().clamp(min=1))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "l_norm", ignore_index: int = 255,
                      clean: torch.Tensor | None = None, ohem_thresh: float = 0.7,
                      ohem_min_kept: float = 0.1, temperature: float = 1.0,
                      clean_weight: float = 1.0, prior: torch.Tensor | None = None,
                      divide_by: str = "pixels") -> torch.Tensor:
    """sum(W * CE) over valid pixels / number of valid pixels, W from :func:`weight_map` (W = 1 for ``ce``).

    ``divide_by="weights"`` divides by sum(W) instead: a weighted mean, whose size does not grow with
    ``clean_weight``, so a batch cut mostly from corrected pixels takes a normal-sized step (measured, not the
    default: at weight 25 it halved the damage to a retrain but did not prevent it; docs/benchmarks.md).

    ``prior``: optional [N, H, W] weights known before training (the label review's trust in each label), which
    multiply W. ``clean``: optional [N, H, W] bool of pathologist-verified pixels, which weigh ``clean_weight``
    whatever the weighting says (a corrected label is not noise to be down-weighted; above 1 it counts for more
    than a guess).
    """
    _check_kind(kind, LOSS_KINDS)
    valid = target != ignore_index
    safe_t = torch.where(valid, target, torch.zeros_like(target)).long()
    ce = F.cross_entropy(logits.float(), safe_t, reduction="none")
    if kind == "ce":
        w = valid.float()
    elif kind == "ohem":
        w = ohem_weight(logits, target, ohem_thresh, ohem_min_kept, ignore_index)
    else:
        w = weight_map(logits, target, kind, ignore_index, temperature)
    if prior is not None:
        w = w * prior
    if clean is not None:
        w = torch.where(clean & valid, torch.full_like(w, clean_weight), w)
    if divide_by not in LOSS_DIVISORS:
        raise ValueError(f"divide_by must be one of {LOSS_DIVISORS}, not {divide_by!r}")
    w = w * valid
    denominator = w.sum().clamp(min=1e-6) if divide_by == "weights" else valid.sum().clamp(min=1)
    return (w * ce).sum() / denominator
