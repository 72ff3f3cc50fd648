"""What to label next: the training images, and the patches within them, whose weak labels would help most.

With a trained classifier, an unlabelled patch is worth labelling where the classifier is least sure (a class
probability near 0.5) or where it disagrees with the segmentation's prediction (the classes the prediction shows
in the patch, by the same 5 % rule the masks use). An image is worth as much as the mean of its best ``PER_IMAGE``
patches. Before any model exists the picks are spread over the images (the least labelled first, then evenly across
the list) and over each image's grid. Asking the preview learned from the tags (``preview=``: where it is least
sure) is there to be measured, not the default: it picked worse images than the spread at 8 tagged images and
within the seeds' spread at 19 (``benchmarks/preview.py --suggest``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.config import GLAS_MEAN, GLAS_STD, PatchConfig
from pipeline.io.patch_labels import project_tags
from pipeline.stages.patches import patch_grid, patch_labels, patch_means
from pipeline.store import ProjectStore

PER_IMAGE = 5  # patches suggested per image, and averaged into its score


@dataclass
class Suggestion:
    """One image to label: its score (0-1, higher first), the patches to look at ((y, x) corners), and why."""

    image: str
    score: float
    patches: list[tuple[int, int]] = field(default_factory=list)
    reason: str = ""
    labelled: int = 0  # patches already labelled in it
    total: int = 0  # patches of its grid


def _unlabelled(store: ProjectStore, name: str, corners: np.ndarray, cfg: PatchConfig) -> np.ndarray:
    """Which grid patches have no tag (a mask counts as labels: an image with one needs no tags)."""
    if store.has(name, "mask"):
        return np.zeros(len(corners), bool)
    tags = project_tags(store, name, cfg.size, cfg.stride)
    if tags is None:
        return np.ones(len(corners), bool)
    return tags == 0


def _spread(indices: np.ndarray, k: int) -> list[int]:
    """``k`` of ``indices`` evenly spaced along them."""
    if len(indices) <= k:
        return [int(i) for i in indices]
    return [int(indices[round(j)]) for j in np.linspace(0, len(indices) - 1, k)]


def classifier_probs(model, image: np.ndarray, corners: np.ndarray, size: int, input_size: int, device,
                     batch: int = 64) -> np.ndarray:
    """(N, 2) sigmoid probabilities [non-gland, gland] of the classifier on the patches at ``corners``."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(GLAS_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(GLAS_STD, device=device).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for b in range(0, len(corners), batch):
            tiles = np.stack([image[y:y + size, x:x + size] for y, x in corners[b:b + batch]])
            x = torch.from_numpy(tiles).to(device).permute(0, 3, 1, 2).float().div_(255)
            if input_size != size:
                x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
            out.append(torch.sigmoid(model((x - mean) / std).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def suggest(store: ProjectStore, cfg: PatchConfig, top: int = 10, device: str = "auto",
            preview=None) -> list[Suggestion]:
    """The ``top`` training images most worth labelling next, best first, each with its ``PER_IMAGE`` patches.
    ``preview``: a ``ProjectPreview`` to ask before the classifier exists (default: none, see the module's doc)."""
    names = store.names("train")
    has_model = store.checkpoint_path("classifier").is_file()
    model = dev = cls_cfg = None
    if has_model or preview is None or not preview.fit():
        preview = None
    if has_model:
        from pipeline.device import resolve_device
        from pipeline.stages.classify import load_classifier

        dev = resolve_device(device)
        model, cls_cfg = load_classifier(store, dev)
    out = []
    for rank, name in enumerate(names):
        corners = patch_grid(store.shape(name), cfg.size, cfg.stride)
        open_ = _unlabelled(store, name, corners, cfg)
        if not open_.any():
            continue
        idx = np.flatnonzero(open_)
        s = Suggestion(name, 0.0, labelled=int((~open_).sum()), total=len(corners))
        if model is None and preview is not None:
            prob = preview.predict(name).probability
            score = patch_means(1.0 - np.abs(2.0 * prob - 1.0), corners[idx], cfg.size)
            best = np.argsort(-score, kind="stable")[:PER_IMAGE]
            s.patches = [tuple(map(int, corners[idx[i]])) for i in best]
            s.score = float(score[best].mean())
            s.reason = "no classifier yet: where the preview learned from the tags is least sure"
        elif model is None:
            s.patches = [tuple(map(int, corners[i])) for i in _spread(idx, PER_IMAGE)]
            s.reason = "no model yet: spread over the images"
            s.score = 1.0 - s.labelled / max(1, s.total)
        else:
            probs = classifier_probs(model, store.image(name), corners[idx], cfg.size, cls_cfg.input_size, dev)
            unsure = 1.0 - 2.0 * np.abs(probs - 0.5).min(axis=1)  # 1: a class at 0.5
            score = unsure
            reason = "classifier unsure"
            if store.has(name, "prediction"):
                seg = patch_labels(store.read(name, "prediction"), corners[idx], cfg.size, cfg.min_fraction)
                disagree = ((probs > 0.5).astype(np.uint8) != seg).any(axis=1).astype(np.float32)
                score = np.maximum(unsure, disagree)
                reason = "classifier unsure or disagrees with the segmentation"
            best = np.argsort(-score, kind="stable")[:PER_IMAGE]
            s.patches = [tuple(map(int, corners[idx[i]])) for i in best]
            s.score = float(score[best].mean())
            s.reason = reason
        out.append((s, rank))
    if model is None and preview is None:
        # the least labelled first; among equals, evenly across the list so the picks cover the data set
        order = sorted(out, key=lambda sr: (-round(sr[0].score, 6), _interleaved(sr[1], len(names))))
    else:
        order = sorted(out, key=lambda sr: (-sr[0].score, sr[1]))
    return [s for s, _ in order[:top]]


def _interleaved(rank: int, n: int) -> float:
    """A position that puts 0, n/2, n/4, 3n/4, ... first: the bit-reversed order of the rank."""
    bits = max(1, int(np.ceil(np.log2(max(2, n)))))
    return int(f"{rank:0{bits}b}"[::-1], 2)
