"""A model that learns from a pathologist's changes must never come out worse than it went in.

*Update model* and the retrain on corrections both end here: the model before and the model after are scored on
what the project can measure without the images they learned from, and the new one is kept only when it is not
worse by more than a stated tolerance. What the project can measure:

- **the validation split** when it has gland masks: pixel mIoU, as every figure of the project;
- otherwise (a pathologist's own images, no masks) **held-out tags**: the patch labels of training images the
  change did not touch, against the patch labels the prediction implies by the same 5 % rule that made them
  (agreement in %), and the pixels earlier corrections verified on such images (accuracy in %).

A measure the change cannot move (no held-out image carries it) is left out; with nothing at all to measure the
change is kept and the line says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import InferConfig, SegConfig
from pipeline.metrics import confusion, from_confusion
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore

MAX_GUARD_IMAGES = 12  # held-out training images scored without masks: a few seconds each way on 2 cores


@dataclass
class GuardSet:
    """The images a change is judged on and how."""

    kind: str  # "validation" (masks) or "held-out tags"
    names: list[str]
    verified: list[str] = field(default_factory=list)  # of ``names``: those with pathologist-verified pixels


def guard_set(store: ProjectStore, changed: list[str], max_images: int = MAX_GUARD_IMAGES) -> GuardSet | None:
    """The validation images with masks; else up to ``max_images`` training images outside ``changed`` that carry
    patch labels (spread evenly over the project's order, so the same ones are used every time)."""
    val = [n for n in store.names("val") if store.has(n, "mask")]
    if val:
        return GuardSet("validation", val)
    held = [n for n in store.names("train") if n not in changed and store.has(n, "patch_labels")
            and store.read(n, "patch_labels").any()]
    if not held:
        return None
    if len(held) > max_images:
        held = [held[int(k)] for k in np.linspace(0, len(held) - 1, max_images).round()]
    corrections = {n: store.correction(n) for n in held}
    verified = [n for n, c in corrections.items() if c is not None and c[1].any()]
    return GuardSet("held-out tags", held, verified)


def score_model(model: torch.nn.Module, seg: SegConfig, infer: InferConfig, store: ProjectStore, guard: GuardSet,
                device: torch.device, patch_size: int, min_fraction: float, stage: str = "update",
                what: str = "model") -> Job[dict[str, float]]:
    """What ``guard`` measures of ``model`` (an eval-mode network): ``{"validation mIoU": ...}`` or
    ``{"held-out tag agreement": ..., "earlier verified pixels": ...}`` (percent)."""
    from pipeline.stages.infer import mask_from_probs, predict_probs
    from pipeline.stages.models import fold_batchnorm
    from pipeline.stages.patches import patch_labels

    net = fold_batchnorm(model)
    preds = {}
    for k, n in enumerate(guard.names):
        yield Progress(stage, k, len(guard.names), f"scoring the {what} on {len(guard.names)} {guard.kind} images")
        preds[n] = mask_from_probs(predict_probs(net, store.image(n), infer, device, seg), infer)
    if guard.kind == "validation":
        cm = sum(confusion(preds[n], store.mask(n)) for n in guard.names)
        return {"validation mIoU": round(from_confusion(cm)["mIoU"], 2)}
    agree = total = 0
    for n in guard.names:
        labels, corners = store.read(n, "patch_labels"), store.read(n, "patch_corners")
        labelled = labels.any(1)
        implied = patch_labels(preds[n], corners[labelled], patch_size, min_fraction)
        agree += int((implied == labels[labelled]).all(1).sum())
        total += int(labelled.sum())
    out = {"held-out tag agreement": round(100 * agree / total, 2)}
    if guard.verified:
        right = seen = 0
        for n in guard.verified:
            labels, verified = store.correction(n)
            verified = verified.astype(bool)
            right += int((preds[n][verified] == labels[verified]).sum())
            seen += int(verified.sum())
        out["earlier verified pixels"] = round(100 * right / seen, 2)
    return out


@dataclass
class Verdict:
    """Before against after, and whether the new model is kept."""

    keep: bool
    before: dict[str, float]
    after: dict[str, float]
    tolerance: float
    forced: bool = False

    def line(self, what: str = "the updated model") -> str:
        """One line for the CLI and the dock, with both figures."""
        if not self.before:
            return f"kept {what}: nothing to judge it on (no validation masks, no tagged image it left out)"
        figures = "; ".join(f"{k} {self.before[k]:.2f} -> {self.after[k]:.2f}" for k in self.before)
        if self.keep and self.forced and self.worse():
            return f"kept {what} as asked although it is worse ({figures})"
        if self.keep:
            return f"kept {what} ({figures})"
        return (f"{what} was worse by more than {self.tolerance:g} points ({figures}): not kept, the previous "
                "model stays")

    def worse(self) -> bool:
        return any(self.after[k] < self.before[k] - self.tolerance for k in self.before)


def judge(before: dict[str, float], after: dict[str, float], tolerance: float, force: bool = False) -> Verdict:
    """Keep the new model unless any measure fell by more than ``tolerance`` points (``force`` keeps it anyway)."""
    verdict = Verdict(True, before, after, tolerance, force)
    verdict.keep = force or not verdict.worse()
    return verdict
