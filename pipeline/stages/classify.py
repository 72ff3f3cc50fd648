"""Stage 1a: patch labels and the multi-label patch classifier."""
from __future__ import annotations

import functools
import uuid
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import GLAS_MEAN, GLAS_STD, ClassifierConfig, PatchConfig
from pipeline.device import autocast, channels_last, precision_name, resolve_precision
from pipeline.errors import OEEMError
from pipeline.progress import Job
from pipeline.stages.augment import random_resized_crop
from pipeline.stages.models import PatchClassifier, build_backbone, load_model_state, safe_torch_load
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.stages.training import Loop, prepare, resume, train
from pipeline.store import ProjectStore

STAGE = "classifier"


def make_patch_labels(store: ProjectStore, cfg: PatchConfig,
                      splits: tuple[str, ...] = ("train", "val")) -> dict[str, int]:
    """Cut the edge-flush patch grid of every image of ``splits`` that has a mask and store its weak labels.

    Only ``train`` patches train the classifier; ``val`` ones give held-out pseudo-masks to choose settings on.
    """
    names = [n for split in splits for n in store.names(split) if store.has(n, "mask")]
    given = [n for n in store.names("train") if not store.has(n, "mask") and store.has(n, "patch_labels")]
    if not any(store.split(n) == "train" for n in names) and not given:
        raise OEEMError(f"{store.path}: no train image has a gland mask to derive patch labels from, nor patch "
                        "labels of its own (slide regions: `oeem add-regions`)")
    counts = np.zeros(2, np.int64)
    total = 0
    held_out = 0
    for n in names:
        corners = patch_grid(store.shape(n), cfg.size, cfg.stride)
        labels = patch_labels(store.mask(n), corners, cfg.size, cfg.min_fraction)
        store.write(n, "patch_corners", corners)
        store.write(n, "patch_labels", labels)
        if store.split(n) != "train":
            held_out += len(labels)
            continue
        counts += labels.sum(0, dtype=np.int64)
        total += len(labels)
    for n in given:  # labels a pathologist gave (slide regions) are kept as they are
        labels = store.read(n, "patch_labels")
        counts += labels.sum(0, dtype=np.int64)
        total += len(labels)
    n_train = sum(store.split(n) == "train" for n in names) + len(given)
    summary = {"images": n_train, "patches": total, "with_non_gland": int(counts[0]),
               "with_gland": int(counts[1]), "val_images": len(names) - n_train, "val_patches": held_out}
    store.save_run("patches", {"config": asdict(cfg), "summary": summary})
    return summary


def patch_dataset(store: ProjectStore, size: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """All labelled patches of ``split`` as uint8 (N, S, S, 3) and float labels (N, 2), held in memory."""
    images, labels = [], []
    for n in store.labelled_images((split,)):
        img = store.image(n)
        corners = store.read(n, "patch_corners")
        images += [img[y:y + size, x:x + size] for y, x in corners]
        labels.append(store.read(n, "patch_labels"))
    if not images:
        raise OEEMError(f"{store.path}: no patch labels yet; run `oeem patches {store.path}` first")
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.concatenate(labels)).float()


def build_classifier(cfg: ClassifierConfig) -> PatchClassifier:
    return PatchClassifier(build_backbone(cfg.backbone))


def load_classifier(store: ProjectStore, device: str | torch.device = "cpu") -> tuple[PatchClassifier,
                                                                                       ClassifierConfig]:
    from pipeline.config import from_dict

    path = store.checkpoint_path(STAGE)
    if not path.is_file():
        raise OEEMError(f"{store.path}: no trained classifier; run `oeem train-cls {store.path}` first")
    ck = safe_torch_load(path)
    if ck.get("kind") != STAGE:
        raise OEEMError(f"{path}: not a classifier checkpoint")
    cfg = from_dict(ClassifierConfig, ck["config"])
    model = build_classifier(cfg)
    load_model_state(model, ck["model"], path)
    return model.to(device, memory_format=torch.channels_last).eval(), cfg


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
    model = build_classifier(cfg).to(dev, memory_format=torch.channels_last)
    amp = resolve_precision(cfg.precision, dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    settings = {"config": asdict(cfg), "patches": asdict(patch_cfg)}
    ck, notice = resume(store, STAGE, dist, settings, model, opt, restart, on_mismatch)
    n = len(patches)
    if n < dist.world_size:
        raise OEEMError(f"{n} training patches cannot be shared by {dist.world_size} torchrun processes")
    steps_per_epoch = max(1, n // cfg.batch_size)
    start_epoch = int(ck["epoch"]) if ck is not None else 0
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

    def loss(net: torch.nn.Module, xy: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        x, y = xy
        with autocast(dev, amp):
            logits = net(channels_last(x))
        return F.binary_cross_entropy_with_logits(logits.float(), y)

    def checkpoint(steps: int, history: list) -> dict:
        return {"kind": STAGE, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "epoch": steps // steps_per_epoch, **settings}

    def message(step: int) -> str | None:
        epoch, it = divmod(step, steps_per_epoch)
        return f"epoch {epoch + 1}/{cfg.epochs}" if it % 5 == 0 or it == steps_per_epoch - 1 else None

    loop = Loop(STAGE, "classifier", steps_per_epoch * cfg.epochs, batch, loss, checkpoint,
                checkpoint_every=steps_per_epoch, save_on_cancel=False,  # a checkpoint marks a whole epoch
                where=lambda step: f"epoch {step // steps_per_epoch + 1}", message=message, lr=cfg.lr,
                poly_power=cfg.poly_power, loss_weight=0.1, rate="patches_per_s")
    done = yield from train(store, loop, dist, model, opt, start_epoch * steps_per_epoch, notice)
    record = {**settings, "device": str(dev), "n_patches": n,
              "run_id": uuid.uuid4().hex,  # lets the CAM stage tell whether its CAMs came from this model
              "epochs_run": cfg.epochs - start_epoch, "seconds": done.seconds, "final_loss": done.final_loss,
              "patches_per_s": done.per_second(done.samples), "world_size": dist.world_size,
              "precision": precision_name(amp)}
    if dist.is_main:
        store.save_run(STAGE, record)
    return record
