"""Training the patch classifier while the pathologist tags (``oeem train-live``, the Python loop below).

The batch run waits for the last tag; this trains from the first ones on. It trains the same network, on the same
batches and loss, as ``oeem train-cls``, in chunks of ``chunk_steps`` steps. Before each chunk it looks at the tags:
when they changed, the patch labels are cut again and the chunk trains on them, warm-started from the weights so
far (the optimiser's momentum kept). After each chunk it saves the classifier's checkpoint, atomically, in the
batch training's own format, with what it learned from (``live``: the tags' fingerprint, the tagged images and
patches, the steps in all and on these labels).

It holds the project's writer lock only while it writes (the patch labels, a checkpoint), so the dock or
``oeem labels import`` can tag the same project between its chunks, from another process too.

**What ``oeem run`` does with it** (the rule): the classifier stage continues from this checkpoint. Its steps are
credited to the batch schedule in proportion to what they could learn: a step counts as the share of today's
labelled patches that were labelled when it trained (a step on the first image of twenty counts a twentieth; a
changed tag on a patch already counted does not lower the credit). The credit, in whole epochs, is where the
schedule resumes - its learning rate decayed as at that epoch - and the epochs left are trained. When no tag changed
since the last chunk, a credit beyond the schedule leaves nothing to train; after a later tag at least the last
epoch trains on the new labels (:func:`pipeline.stages.classify.continue_after_new_tags`). The pathologist tags
until the last tag and *Run all* finishes the schedule, instead of training it all after the last tag.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import PipelineConfig
from pipeline.device import place, precision_name, resolve_precision
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.stages.classify import (
    STAGE,
    classifier_batches,
    classifier_checkpoint,
    classifier_loss,
    classifier_settings,
    make_patch_labels,
    patch_dataset,
)
from pipeline.stages.models import build_classifier
from pipeline.stages.selfcheck import check_stage_network
from pipeline.stages.training import Loop, prepare, train
from pipeline.store import ProjectStore
from pipeline.store.lock import ProjectBusy, project_writer


@dataclass
class LiveState:
    """Where the training while tagging stands: what the last checkpoint learned from."""

    steps: int = 0  # optimiser steps in all
    steps_on_labels: int = 0  # of them on the current patch labels
    credit: float = 0.0  # steps credited to the schedule on the current labels (module doc: the rule)
    tags: str | None = None  # the fingerprint of the tags they were cut from
    images: int = 0  # training images with labels (tags, or a mask)
    patches: int = 0  # labelled patches
    checkpoints: int = 0
    seconds: float = 0.0

    def record(self) -> dict:
        return {"steps": self.steps, "steps_on_labels": self.steps_on_labels, "credit": round(self.credit, 1),
                "tags": self.tags,
                "images": self.images, "patches": self.patches, "checkpoints": self.checkpoints,
                "seconds": round(self.seconds, 1)}


def train_while_tagging(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", chunk_steps: int = 50,
                        minutes: float | None = None, poll_s: float = 2.0,
                        stop: Callable[[LiveState], bool] | None = None,
                        on_checkpoint: Callable[[torch.nn.Module, LiveState], None] | None = None,
                        threads: int | None = None) -> Job[dict]:
    """Train the classifier until ``minutes`` have passed, ``stop(state)`` says so, or the job is cancelled (the
    last whole chunk's checkpoint stays; a chunk cut short is not saved); ``on_checkpoint(model, state)`` after
    each saved chunk (e.g. to show a CAM). ``threads``: CPU threads instead of ``classifier.threads`` (the dock
    leaves one core to napari). Returns the last :class:`LiveState` as a dict."""
    ccfg = cfg.classifier
    before = torch.get_num_threads()
    try:
        return (yield from _train(store, cfg, device, chunk_steps, minutes, poll_s, stop, on_checkpoint,
                                  ccfg.threads if threads is None else threads))
    finally:
        torch.set_num_threads(before)  # the process's other work (a napari session's next job) as it was


def _train(store: ProjectStore, cfg: PipelineConfig, device: str, chunk_steps: int, minutes: float | None,
           poll_s: float, stop, on_checkpoint, threads: int) -> Job[dict]:
    ccfg, pcfg = cfg.classifier, cfg.patches
    dist, gen = prepare(threads, device, ccfg.batch_size, "classifier.batch_size", ccfg.seed)
    dev = dist.device
    amp = resolve_precision(ccfg.precision, dev)
    yield from check_stage_network("classifier", ccfg, dev, amp)
    model = place(build_classifier(ccfg), dev)
    opt = torch.optim.SGD(model.parameters(), lr=ccfg.lr, momentum=ccfg.momentum, weight_decay=ccfg.weight_decay)
    loss = classifier_loss(dev, amp)
    state, t0 = LiveState(), time.perf_counter()
    settings = batch = steps_per_epoch = None
    while not (minutes is not None and time.perf_counter() - t0 > minutes * 60) and not (stop and stop(state)):
        tags = store.tags_fingerprint()
        if tags != state.tags or settings is None:
            try:
                with project_writer(store.path, "training while tagging: cutting the patch labels"):
                    summary = make_patch_labels(store, pcfg)
            except ProjectBusy as exc:  # another process writes it (an import, a job): its turn first
                yield Progress(STAGE, state.steps, 0, f"waiting: {exc}")
                time.sleep(poll_s)
                continue
            except OEEMError:  # no weak label yet
                settings = None
                yield Progress(STAGE, state.steps, 0, "waiting for the first tags")
                time.sleep(poll_s)
                continue
            patches, labels = patch_dataset(store, pcfg.size)
            steps_per_epoch, batch = classifier_batches(patches, labels, ccfg, dev, gen)
            settings = classifier_settings(store, ccfg, pcfg)
            state.credit *= min(1.0, state.patches / len(patches)) if state.patches else 0.0
            state.tags, state.steps_on_labels = tags, 0
            state.images, state.patches = int(summary["images"]), len(patches)
        start, offset = state.steps, state.steps - state.steps_on_labels
        on_labels = functools.partial(_shifted, batch, offset)  # steps counted on the current labels
        # a progress after every step, without a message: a cancel stops within one step
        loop = Loop(STAGE, "classifier", start + chunk_steps, on_labels, loss, None, checkpoint_every=chunk_steps,
                    save_on_cancel=False,
                    where=lambda s: f"step {s + 1}", message=lambda s: "", lr=ccfg.lr, poly_power=0.0)
        yield from train(store, loop, dist, model, opt, start)  # a constant rate: the schedule's first
        state.steps += chunk_steps
        state.steps_on_labels += chunk_steps
        state.credit += chunk_steps
        state.seconds = time.perf_counter() - t0
        _save(store, model, opt, state, steps_per_epoch, ccfg.passes_for(state.patches), settings,
              precision_name(amp))
        if on_checkpoint is not None:
            on_checkpoint(model, state)
        yield Progress(STAGE, state.steps, 0, f"{state.steps} steps; learned from {state.patches} patches of "
                       f"{state.images} images; checkpoint saved")
    return state.record()


def _shifted(batch, offset: int, step: int):
    """The batch of ``step`` counted from the first step on the current labels."""
    return batch(step - offset)


def _save(store: ProjectStore, model: torch.nn.Module, opt: torch.optim.Optimizer, state: LiveState,
          steps_per_epoch: int, passes: int, settings: dict, precision: str) -> None:
    """The classifier's checkpoint as the batch training writes it; the credit's whole epochs are where ``oeem run``
    continues (module doc)."""
    state.checkpoints += 1
    epochs = min(int(state.credit) // steps_per_epoch, passes)  # beyond the schedule: the schedule is done
    checkpoint = classifier_checkpoint(model, opt, epochs, settings, live={**state.record(), "precision": precision})
    for _ in range(60):  # another process writing the project (an import): wait for it, up to a minute
        try:
            with project_writer(store.path, "training while tagging: saving the classifier"):
                store.save_checkpoint(STAGE, checkpoint)
            return
        except ProjectBusy:
            time.sleep(1.0)
    raise OEEMError(f"{store.path}: could not save the classifier for a minute: another process holds the project")


def pseudo_mask_now(model: torch.nn.Module, store: ProjectStore, name: str, cfg: PipelineConfig,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The pseudo-mask the classifier as it stands gives image ``name`` - its CAM, restricted by the image's tags
    where it has some (an untagged image: nothing ruled out), cleaned as stage 1 cleans it - for the viewer, not
    the project (stage 1 writes the project's). Puts the model back in training mode."""
    from pipeline.stages.cams import cam_and_pseudo
    from pipeline.stages.classify import image_patch_labels
    from pipeline.stages.patches import patch_grid
    from pipeline.stages.postprocess import clean_mask

    made = image_patch_labels(store, name, cfg.patches)
    if made is None or not made[1].any():
        corners = patch_grid(store.shape(name), cfg.patches.size, cfg.patches.stride)
        labels = np.ones((len(corners), 2), np.uint8)  # both classes possible everywhere
    else:
        corners, labels, _ = made
    model.eval()
    try:
        with torch.inference_mode():
            _, pseudo = cam_and_pseudo(model, store.image(name), corners, labels, cfg.patches, cfg.classifier,
                                       cfg.cam, torch.device(device))
    finally:
        model.train()
    return clean_mask(pseudo, cfg.cam.drop_glands_below, cfg.cam.fill_holes_below)
