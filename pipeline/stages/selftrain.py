"""Self-training: refine the pseudo-masks with the segmentation network's prediction, then train again.

The segmentation network, trained on noisy pseudo-masks with augmentation and limited capacity, smooths much of
their noise away; its probabilities, restricted by the patch labels exactly as the CAMs are (Eq. 2: a class the
pathologist's patch label says is absent cannot win), give the next round's pseudo-masks, cleaned as stage 1's are
(``cam.drop_glands_below`` / ``cam.fill_holes_below``). With ``selftrain.untagged_images`` the training images
nobody tagged join the rounds: their grid is all unlabelled, so their labels are the prediction itself, and the
next training learns from every training image, not only the tagged few. Each round is recorded:
the store keeps the stage-1 pseudo-mask as ``pseudo_cam``, the round number (``ProjectStore.pseudo_round``) and the
per-round scores in ``runs/selftrain.json``.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.config import CamConfig, PatchConfig, PipelineConfig
from pipeline.errors import OEEMError
from pipeline.metrics import confusion, from_confusion
from pipeline.progress import Job, Progress
from pipeline.stages.cams import restricted_pseudo
from pipeline.stages.patches import patch_grid
from pipeline.stages.postprocess import clean_mask
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

STAGE = "selftrain"


def refined_pseudo(prob: np.ndarray, corners: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """Eq. 2 on the segmentation probabilities (gland ``prob``, H x W) instead of the CAM."""
    return restricted_pseudo(prob - 0.5, corners, labels, size)


def next_round_labels(store: ProjectStore, name: str, patch_size: int, cam_cfg: CamConfig) -> np.ndarray:
    """What a self-training round makes of an image's stored prediction (``prob``): Eq. 2 with its patch labels,
    cleaned as stage 1's pseudo-masks. Also the like-for-like comparison of a model with the labels it learned
    from: both then hold the patch labels' information."""
    new = refined_pseudo(store.read(name, "prob"), store.read(name, "patch_corners"),
                         store.read(name, "patch_labels"), patch_size)
    return clean_mask(new, cam_cfg.drop_glands_below, cam_cfg.fill_holes_below)


def untagged_training_images(store: ProjectStore) -> list[str]:
    """The training images without patch labels: stage 1 made nothing for them."""
    return [n for n in store.names("train") if not store.has(n, "patch_labels")]


def join_untagged(store: ProjectStore, patch_cfg: PatchConfig) -> list[str]:
    """Take the untagged training images into the next round: a grid of unlabelled patches each, so Eq. 2 rules
    nothing out and the round's prediction becomes their label. Marked first, so an interrupted join is undone by
    :meth:`ProjectStore.drop_joined_images` like a finished one."""
    names = untagged_training_images(store)
    for n in names:
        store.set_joined_round(n, store.pseudo_round + 1)
        corners = patch_grid(store.shape(n), patch_cfg.size, patch_cfg.stride)
        store.write(n, "patch_corners", corners)
        store.write(n, "patch_labels", np.zeros((len(corners), 2), np.uint8))
    return names


def untagged_join(cfg: PipelineConfig) -> PatchConfig | None:
    """The patch settings the untagged training images join a round with (``selftrain.untagged_images``), or None
    when they stay out: what ``oeem run``, ``oeem selftrain`` and the dock's *Self-train round* pass on."""
    return cfg.patches if cfg.selftrain.untagged_images else None


def selftrain_round(store: ProjectStore, cfg: PipelineConfig) -> Job[dict]:
    """One self-training round as every front-end runs it: the prediction the project holds becomes the new
    pseudo-masks (:func:`refine_round`), the untagged images joining as the settings say."""
    return (yield from refine_round(store, cfg.patches.size, cam_cfg=cfg.cam, untagged=untagged_join(cfg)))


@writes_project("a self-training round")
def refine_round(store: ProjectStore, patch_size: int, names: list[str] | None = None,
                 cam_cfg: CamConfig | None = None, untagged: PatchConfig | None = None) -> Job[dict]:
    """One self-training round: every image with patch labels gets a new pseudo-mask from its ``prob``, cleaned
    as ``cam_cfg`` cleans stage 1's (none without it). With ``untagged`` (the project's patch settings) the
    untagged training images join first (:func:`join_untagged`); they need a prediction too."""
    cam_cfg = cam_cfg or CamConfig()
    if not (names or store.labelled_images()):
        raise OEEMError(f"{store.path}: no patch labels yet; run `oeem patches {store.path}` first")
    if untagged is not None and names is None:
        join_untagged(store, untagged)
    names = names or store.labelled_images()
    missing = [n for n in names if not store.has(n, "prob")
               or not store.has(n, "pseudo") and store.joined_round(n) is None]
    if missing:
        raise OEEMError(f"{store.path}: {len(missing)} image(s) have no prediction yet (e.g. {missing[0]}); a "
                        f"self-training round refines the pseudo-masks with one: run `oeem train-seg {store.path}` "
                        f"and `oeem predict {store.path}` first")
    before = store.pseudo_round
    cms = {s: {k: np.zeros((2, 2), np.int64) for k in ("before", "after")} for s in ("train", "val")}
    changed = 0
    t0 = time.perf_counter()
    for k, n in enumerate(names):
        new = next_round_labels(store, n, patch_size, cam_cfg)
        if store.has(n, "pseudo"):
            old = store.read(n, "pseudo")
            if not store.has(n, "pseudo_cam") and store.joined_round(n) is None:
                store.write(n, "pseudo_cam", old)  # stage 1's own, kept for comparison and to start over
        else:  # joins this round: nothing to compare with
            old = new
        store.write(n, "pseudo", new)
        changed += int((new != old).sum())
        mask = store.mask(n)
        if mask is not None and store.split(n) in cms and store.joined_round(n) is None:
            cms[store.split(n)]["before"] += confusion(old, mask)
            cms[store.split(n)]["after"] += confusion(new, mask)
        yield Progress(STAGE, k + 1, len(names), n)
    store.pseudo_round = before + 1
    joined = sum(store.joined_round(n) is not None for n in names)
    entry = {"round": before + 1, "images": len(names), "untagged_images": joined, "pixels_changed": changed,
             "cleaning": {"drop_glands_below": cam_cfg.drop_glands_below,
                          "fill_holes_below": cam_cfg.fill_holes_below},
             "seconds": time.perf_counter() - t0}
    for split, cm in cms.items():
        if cm["before"].sum():
            entry[split] = {"before": from_confusion(cm["before"]), "after": from_confusion(cm["after"])}
    history = (store.load_run(STAGE) or {}).get("rounds", [])
    record = {"rounds": [h for h in history if h["round"] <= before] + [entry]}
    store.save_run(STAGE, record)
    return entry


def reset_rounds(store: ProjectStore) -> int:
    """Put the stage-1 pseudo-masks back (round 0), without the untagged images the rounds took in; returns how
    many images were restored."""
    store.drop_joined_images()
    restored = 0
    for n in store.names():
        if store.has(n, "pseudo_cam"):
            store.write(n, "pseudo", store.read(n, "pseudo_cam"))
            restored += 1
    store.pseudo_round = 0
    return restored
