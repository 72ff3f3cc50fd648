"""Stage 1a: patch labels and the multi-label patch classifier."""
from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import GLAS_MEAN, GLAS_STD, ClassifierConfig, PatchConfig
from pipeline.device import autocast, in_layout, place, precision_name, resolve_precision
from pipeline.errors import OEEMError
from pipeline.io.patch_labels import project_tags, tags_to_vectors
from pipeline.progress import Job
from pipeline.stages.augment import random_resized_crop
from pipeline.stages.models import (
    PatchClassifier,
    build_classifier,
    load_model_state,
    load_network,
    safe_torch_load,
    settings_as_now,
)
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.stages.selfcheck import check_stage_network
from pipeline.stages.training import Loop, prepare, resume, train
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

STAGE = "classifier"


def image_patch_labels(store: ProjectStore, name: str, cfg: PatchConfig) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(corners, [non-gland, gland] vectors, where from) of one image on the grid of ``cfg``, or None when the image
    has no weak label at all. A pathologist's tags come first (an unlabelled patch is [0, 0]); else the gland mask's
    5 % rule; else the labels a slide region was cut with."""
    corners = patch_grid(store.shape(name), cfg.size, cfg.stride)
    tags = project_tags(store, name, cfg.size, cfg.stride)
    if tags is not None and tags.any():
        return corners, tags_to_vectors(tags), "tags"
    if store.has(name, "mask"):
        return corners, patch_labels(store.mask(name), corners, cfg.size, cfg.min_fraction), "mask"
    if store.has(name, "patch_labels") and "slide_region" in store.group(name).attrs:
        return store.read(name, "patch_corners"), store.read(name, "patch_labels"), "slide region"
    return None


def make_patch_labels(store: ProjectStore, cfg: PatchConfig,
                      splits: tuple[str, ...] = ("train", "val")) -> dict[str, int]:
    """Cut the edge-flush patch grid of every image of ``splits`` that has weak labels and store them: the
    pathologist's patch tags, else labels derived from the gland mask, else a slide region's label. With
    ``cfg.untagged_images`` a training image without any gets its grid with every patch unlabelled, so stage 1
    makes its pseudo-mask too (a few tagged images then teach the segmentation on all of them).

    Only ``train`` patches train the classifier, and only labelled ones ([0, 0] marks an unlabelled patch);
    ``val`` ones give held-out pseudo-masks to choose settings on.
    """
    counts = np.zeros(2, np.int64)
    total = unlabelled = held_out = val_images = untagged = 0
    sources: dict[str, int] = {}
    for n in [n for split in splits for n in store.names(split)]:
        store.set_joined_round(n, None)  # what self-training took in becomes stage 1's (or nothing) again
        made = image_patch_labels(store, n, cfg)
        if cfg.untagged_images and store.split(n) == "train" and (made is None or not made[1].any()):
            # every patch unlabelled: the classifier learns nothing here, stage 1 still makes a pseudo-mask
            corners = patch_grid(store.shape(n), cfg.size, cfg.stride)
            made = corners, np.zeros((len(corners), 2), np.uint8), "untagged"
            untagged += 1
        if made is None or not made[1].any() and made[2] != "untagged":
            for key in ("patch_labels", "patch_corners"):  # labels of an earlier run (e.g. tags since undone)
                if store.has(n, key):
                    store.delete(n, key)
            continue
        corners, labels, source = made
        store.write(n, "patch_corners", corners)
        store.write(n, "patch_labels", labels)
        labelled = labels.any(1)
        if store.split(n) != "train":
            held_out += int(labelled.sum())
            val_images += 1
            continue
        if source != "untagged":
            sources[source] = sources.get(source, 0) + 1
        counts += labels.sum(0, dtype=np.int64)
        total += int(labelled.sum())
        unlabelled += int((~labelled).sum())
    if not total:
        raise OEEMError(f"{store.path}: no weak labels on the training images yet: tag patches in napari's Weak "
                        f"labels panel, import them with `oeem labels import {store.path} FILE` (CSV or QuPath "
                        "GeoJSON), give the images gland masks (NAME_anno.png), or add slide regions "
                        "(`oeem add-regions`)")
    summary = {"images": sum(sources.values()), "patches": total, "with_non_gland": int(counts[0]),
               "with_gland": int(counts[1]), "unlabelled_patches": unlabelled, "labels_from": sources,
               "val_images": val_images, "val_patches": held_out, "untagged_images": untagged}
    # the classifier and the CAMs made from these labels name this run: new tags make them stale
    store.save_run("patches", {"config": asdict(cfg), "summary": summary, "run_id": uuid.uuid4().hex,
                               "tags": store.tags_fingerprint()})
    return summary


def patch_dataset(store: ProjectStore, size: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """All labelled patches of ``split`` as uint8 (N, S, S, 3) and float labels (N, 2), held in memory; unlabelled
    patches are left out, so their loss is zero."""
    images, labels = [], []
    for n in store.labelled_images((split,)):
        img = store.image(n)
        corners, vectors = store.read(n, "patch_corners"), store.read(n, "patch_labels")
        keep = vectors.any(1)  # [0, 0]: a patch the pathologist left unlabelled trains nothing
        images += [img[y:y + size, x:x + size] for y, x in corners[keep]]
        labels.append(vectors[keep])
    if not images:
        raise OEEMError(f"{store.path}: no patch labels yet; run `oeem patches {store.path}` first")
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.concatenate(labels)).float()


def load_classifier(store: ProjectStore, device: str | torch.device = "cpu") -> tuple[PatchClassifier,
                                                                                       ClassifierConfig]:
    path = store.checkpoint_path(STAGE)
    if not path.is_file():
        raise OEEMError(f"{store.path}: no trained classifier; run `oeem train-cls {store.path}` first")
    return load_network(path, STAGE, device)


def classifier_batches(patches: torch.Tensor, labels: torch.Tensor, cfg: ClassifierConfig, dev: torch.device,
                       gen: torch.Generator) -> tuple[int, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    """(steps per epoch, step -> the step's batch): each epoch its own shuffle of the labelled patches, cropped,
    resized and normalised as the classifier trains on them (the batch training and the training while tagging)."""
    n = len(patches)
    steps_per_epoch = max(1, n // cfg.batch_size)
    mean = torch.tensor(GLAS_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(GLAS_STD, device=dev).view(1, 3, 1, 1)

    @functools.lru_cache(maxsize=1)
    def epoch_order(epoch: int) -> torch.Tensor:  # each epoch's own shuffle, whatever epoch a run resumes at
        return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, it = divmod(step, steps_per_epoch)
        idx = epoch_order(epoch)[it * cfg.batch_size:(it + 1) * cfg.batch_size]
        x = patches[idx].to(dev).permute(0, 3, 1, 2).float().div_(255)
        x = random_resized_crop(x, cfg.input_size, cfg.crop_scale, gen)
        return (x - mean) / std, labels[idx].to(dev)

    return steps_per_epoch, batch


def classifier_loss(dev: torch.device, amp: torch.dtype | None):
    """The multi-label loss of a batch: binary cross-entropy per class."""
    def loss(net: torch.nn.Module, xy: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        x, y = xy
        with autocast(dev, amp):
            logits = net(in_layout(x))
        return F.binary_cross_entropy_with_logits(logits.float(), y)
    return loss


def classifier_checkpoint(model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, settings: dict,
                          **extra) -> dict:
    """What a classifier checkpoint holds; ``epoch``: whole passes over the labelled patches done, where
    :func:`train_classifier` resumes."""
    return {"kind": STAGE, "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            **settings, **extra}


def classifier_settings(store: ProjectStore, cfg: ClassifierConfig, patch_cfg: PatchConfig) -> dict:
    """What a checkpoint must match to be resumed: the settings, and the patch labels it learned from (after new
    tags - a new patches run - a finished model would otherwise be "resumed" at its last epoch and train nothing
    on them)."""
    return {"config": asdict(cfg), "patches": asdict(patch_cfg),
            "labels_id": (store.load_run("patches") or {}).get("run_id")}


def continue_after_new_tags(store: ProjectStore, settings: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
                            n_patches: int, steps_per_epoch: int, passes: int) -> tuple[int, str] | None:
    """The batch classifier's warm start from a checkpoint trained while tagging whose labels are older than the
    current ones (same settings otherwise): its weights and optimiser loaded into ``model`` and ``opt``, and
    (epoch to resume at, notice). None where the checkpoint is not such a one (the usual resume rules apply). The
    rule is ``pipeline.stages.live``'s: a live step counts as the share of today's labelled patches it learned from."""
    path = store.checkpoint_path(STAGE)
    if not path.is_file():
        return None
    ck = safe_torch_load(path)
    live = ck.get("live")
    if not live or ck.get("labels_id") == settings["labels_id"]:
        return None
    if any(settings_as_now(ck.get(key), None) != value for key, value in settings.items() if key != "labels_id"):
        return None
    credit = float(live.get("credit", live.get("steps_on_labels", 0)))
    credit *= min(1.0, int(live.get("patches", 0)) / max(1, n_patches))  # the rule: a step counts its share
    epoch = min(int(credit) // steps_per_epoch, passes - 1)  # at least the last epoch on the new labels
    load_model_state(model, ck["model"], path)
    opt.load_state_dict(ck["optimizer"])
    return epoch, (f"continuing the classifier trained while tagging ({live.get('steps', 0)} steps, {credit:.0f} "
                   f"of them credited by the share of today's {n_patches} labelled patches they learned from: "
                   f"{epoch} of {passes} epochs)")


@writes_project("training the classifier")
def train_classifier(store: ProjectStore, cfg: ClassifierConfig, patch_cfg: PatchConfig, device: str = "auto",
                     restart: bool = False, on_mismatch: str = "error") -> Job[dict]:
    """Train (or resume) the patch classifier; checkpoint after every epoch. Yields progress every few steps.

    A checkpoint made with other settings is an error with ``on_mismatch="error"`` (the CLI's train commands,
    which offer ``--redo``); with ``"restart"`` (``oeem run``, the plugin) it is moved aside and training
    starts afresh. The loop, torchrun included, is :func:`pipeline.stages.training.train`'s; only rank 0 writes
    the checkpoint and the run record."""
    dist, gen = prepare(cfg.threads, device, cfg.batch_size, "classifier.batch_size", cfg.seed)
    dev = dist.device
    patches, labels = patch_dataset(store, patch_cfg.size)
    amp = resolve_precision(cfg.precision, dev)
    yield from check_stage_network("classifier", cfg, dev, amp)
    model = place(build_classifier(cfg), dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    settings = classifier_settings(store, cfg, patch_cfg)
    n = len(patches)
    if n < dist.world_size:
        raise OEEMError(f"{n} training patches cannot be shared by {dist.world_size} torchrun processes")
    steps_per_epoch, batch = classifier_batches(patches, labels, cfg, dev, gen)
    passes = cfg.passes_for(n)  # several per epoch on few labelled patches (cfg.min_epoch_steps)
    # trained while tagging, on older tags: continued by the rule in pipeline.stages.live, not trained afresh
    warm = None if restart else continue_after_new_tags(store, settings, model, opt, n, steps_per_epoch, passes)
    if warm is not None:
        start_epoch, notice = warm
    else:
        ck, notice = resume(store, STAGE, dist, settings, model, opt, restart, on_mismatch,
                            defaults={"labels_id": None})
        start_epoch = int(ck["epoch"]) if ck is not None else 0
    loss = classifier_loss(dev, amp)
    unit = "epoch" if passes == cfg.epochs else "pass"

    def checkpoint(steps: int, history: list) -> dict:
        return classifier_checkpoint(model, opt, steps // steps_per_epoch, settings)

    def message(step: int) -> str | None:
        epoch, it = divmod(step, steps_per_epoch)
        return f"{unit} {epoch + 1}/{passes}" if it % 5 == 0 or it == steps_per_epoch - 1 else None

    loop = Loop(STAGE, "classifier", steps_per_epoch * passes, batch, loss, checkpoint,
                checkpoint_every=steps_per_epoch, save_on_cancel=False,  # a checkpoint marks a whole epoch
                where=lambda step: f"{unit} {step // steps_per_epoch + 1}", message=message, lr=cfg.lr,
                poly_power=cfg.poly_power, loss_weight=0.1, rate="patches_per_s")
    done = yield from train(store, loop, dist, model, opt, start_epoch * steps_per_epoch, notice)
    record = {**settings, "device": str(dev), "n_patches": n,
              "run_id": uuid.uuid4().hex,  # lets the CAM stage tell whether its CAMs came from this model
              "patches_run_id": (store.load_run("patches") or {}).get("run_id"),  # the labels it learned
              "epochs_run": max(0, passes - start_epoch), "passes": passes,  # passes over the patches; more than epochs
              "continued_from_live": notice if warm is not None else None,  # trained while tagging, older tags
              "seconds": done.seconds, "final_loss": done.final_loss,  # where an epoch must train min_epoch_steps
              "patches_per_s": done.per_second(done.samples), "world_size": dist.world_size,
              "precision": precision_name(amp)}
    if dist.is_main:
        store.save_run(STAGE, record)
    return record
