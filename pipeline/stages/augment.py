"""Batched geometric and photometric augmentation on tensors (one ``grid_sample`` per batch, no per-sample loops
over pixels), so data preparation costs little next to the network on 2 CPU cores."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def random_affine_grid(n: int, out_size: int, scale: torch.Tensor, aspect: torch.Tensor, flip_h: torch.Tensor,
                       flip_v: torch.Tensor, gen: torch.Generator, device) -> torch.Tensor:
    """Sampling grids for crops covering ``scale`` of the source area (``aspect`` w/h), at random positions.

    ``scale`` > 1 samples beyond the source (used to zoom out; those pixels are padding)."""
    sw = torch.sqrt(scale * aspect).clamp(max=4.0)
    sh = torch.sqrt(scale / aspect).clamp(max=4.0)
    # centre offsets so the crop stays inside [-1, 1] when it fits, free placement otherwise
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw).abs()
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh).abs()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * torch.where(flip_h, -1.0, 1.0)
    theta[:, 1, 1] = sh * torch.where(flip_v, -1.0, 1.0)
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return F.affine_grid(theta.to(device), [n, 1, out_size, out_size], align_corners=False)


def random_resized_crop(x: torch.Tensor, out_size: int, scale_range: tuple[float, float], gen: torch.Generator,
                        vflip: bool = True) -> torch.Tensor:
    """RandomResizedCrop (area fraction in ``scale_range``, aspect 3/4-4/3) with horizontal/vertical flips."""
    n = x.shape[0]
    scale = torch.empty(n).uniform_(*scale_range, generator=gen)
    aspect = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
    fh = torch.rand(n, generator=gen) < 0.5
    fv = (torch.rand(n, generator=gen) < 0.5) if vflip else torch.zeros(n, dtype=torch.bool)
    grid = random_affine_grid(n, out_size, scale, aspect, fh, fv, gen, x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_zoom_crop(img: torch.Tensor, label: torch.Tensor, out_size: int, ratio_range: tuple[float, float],
                     gen: torch.Generator, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """The segmentation augmentation: resize by a ratio in ``ratio_range``, random crop ``out_size``, flip.

    Zooming out (ratio < 1) leaves a border that is padded with 0 in the image and ``ignore_index`` in the label.
    """
    n, _, h, _ = img.shape
    ratio = torch.empty(n).uniform_(*ratio_range, generator=gen)
    frac = (out_size / (h * ratio)) ** 2  # area fraction of the source the output covers
    fh = torch.rand(n, generator=gen) < 0.5
    grid = random_affine_grid(n, out_size, frac, torch.ones(n), fh, torch.zeros(n, dtype=torch.bool), gen,
                              img.device)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(label[:, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[:, 0].long() - 1
    lab[lab < 0] = ignore_index
    return out, lab


def random_rot90(img: torch.Tensor, label: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each (square) sample by a random multiple of 90 degrees; with a horizontal flip before it this
    gives all eight orientations, which tissue sections take with no preference."""
    k = torch.randint(0, 4, (img.shape[0],), generator=gen)
    img, label = img.clone(), label.clone()
    for r in (1, 2, 3):
        sel = (k == r).nonzero().flatten().to(img.device)
        if len(sel):
            img[sel] = torch.rot90(img[sel], r, dims=(-2, -1))
            label[sel] = torch.rot90(label[sel], r, dims=(-2, -1))
    return img, label


def _hed_matrices(device) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    return (torch.tensor(hed_from_rgb, dtype=torch.float32, device=device),
            torch.tensor(rgb_from_hed, dtype=torch.float32, device=device))


# Stain densities in scikit-image's rgb2hed units are small: on GlaS the 95th percentile of haematoxylin and eosin
# is ~0.085-0.095. Shifts are scaled to that level; a shift of 0.05 itself would change RGB by ~0.35 on average.
STAIN_LEVEL = 0.1


def apply_stain_change(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """RGB (N, 3, H, W) in [0, 1] with its H / E / DAB densities (scikit-image's Ruifrok-Johnston deconvolution,
    as ``skimage.color.rgb2hed``) scaled by ``alpha`` and shifted by ``beta`` (each (N, 3)). Applied as a change
    in optical density, so alpha = 1, beta = 0 gives the input back exactly, even for colours the deconvolution
    cannot represent with non-negative stains."""
    to_hed, to_rgb = _hed_matrices(x.device)
    log_adjust = float(np.log(1e-6))
    log_rgb = torch.log(x.clamp(min=1e-6)).permute(0, 2, 3, 1)  # N, H, W, 3
    stains = (log_rgb / log_adjust) @ to_hed
    delta = stains * (alpha[:, None, None] - 1) + beta[:, None, None]
    out = torch.exp(log_rgb + (delta * log_adjust) @ to_rgb)
    return out.clamp(0, 1).permute(0, 3, 1, 2).contiguous()


def stain_jitter(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """H&E stain augmentation after Tellez et al. (2018): each stain density of each sample scaled by
    U(1 - sigma, 1 + sigma) and shifted by U(-sigma, sigma) * STAIN_LEVEL. Mimics the staining differences
    between labs and batches that colour jitter in RGB only roughly imitates."""
    if sigma <= 0:
        return x
    n = x.shape[0]
    alpha = torch.empty(n, 3).uniform_(1 - sigma, 1 + sigma, generator=gen).to(x.device)
    beta = torch.empty(n, 3).uniform_(-sigma, sigma, generator=gen).to(x.device) * STAIN_LEVEL
    return apply_stain_change(x, alpha, beta)


def photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness +-32/255, contrast and saturation 0.5-1.5, hue +-18 deg, on [0, 1] RGB (N, 3, H, W)."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(lo, hi, generator=gen).to(x.device)

    x = x + u(-32 / 255, 32 / 255)
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * u(0.5, 1.5) + x.mean(dim=(1, 2, 3), keepdim=True)
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * u(0.5, 1.5)
    # hue rotation about the grey axis (Rodrigues), angle +-18 deg
    ang = torch.empty(n).uniform_(-math.pi / 10, math.pi / 10, generator=gen)
    c, s = torch.cos(ang), torch.sin(ang)
    k = 1 / 3
    sq = math.sqrt(k)
    rot = torch.stack([
        torch.stack([c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s], -1),
        torch.stack([k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s], -1),
        torch.stack([k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)], -1),
    ], 1).to(x.device)
    x = torch.einsum("nij,njhw->nihw", rot, x)
    return x.clamp(0, 1)
