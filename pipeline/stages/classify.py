"""Stage 1a: patch labels and the multi-label patch classifier."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import GLAS_MEAN, GLAS_STD, ClassifierConfig, PatchConfig
from pipeline.device import autocast, channels_last, precision_name, resolve_device, resolve_precision, set_threads
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.stages.augment import random_resized_crop
from pipeline.stages.distributed import setup as setup_distributed
from pipeline.stages.models import PatchClassifier, build_backbone, load_model_state, resume_training, safe_torch_load
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.stages.training import poly_lr
from pipeline.store import ProjectStore, atomic_write_bytes

log = logging.getLogger("oeem")

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


def _save(store: ProjectStore, model, opt, epoch: int, cfg: ClassifierConfig, patch_cfg: PatchConfig) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"kind": STAGE, "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "config": asdict(cfg), "patches": asdict(patch_cfg)}, buf)
    atomic_write_bytes(store.checkpoint_path(STAGE), buf.getvalue())


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
    starts afresh.

    Under ``torchrun`` every rank draws and augments the same global batch and trains on its slice through
    DistributedDataParallel (as ``train_segmenter``); only rank 0 writes the checkpoint and the run record."""
    set_threads(cfg.threads)
    dist = setup_distributed(resolve_device(device))
    dev = dist.device
    dist.shard(cfg.batch_size, "classifier.batch_size")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    patches, labels = patch_dataset(store, patch_cfg.size)
    model = build_classifier(cfg).to(dev, memory_format=torch.channels_last)
    amp = resolve_precision(cfg.precision, dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start_epoch = 0
    ck_path = store.checkpoint_path(STAGE)
    settings = {"config": asdict(cfg), "patches": asdict(patch_cfg)}
    # rank 0 first: it may move a checkpoint of other settings aside; the others then load what it left
    ck, notice = dist.main_first(lambda: resume_training(store, STAGE, settings, model, opt, restart, on_mismatch))
    net = dist.wrap(model)  # the training step's module; checkpoints take model's own state
    if notice:
        log.info("%s", notice)
        yield Progress(STAGE, 0, 0, "starting afresh", notice=notice)
    elif ck is not None:
        start_epoch = int(ck["epoch"])
    n = len(patches)
    if n < dist.world_size:
        raise OEEMError(f"{n} training patches cannot be shared by {dist.world_size} torchrun processes")
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    mean = torch.tensor(GLAS_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(GLAS_STD, device=dev).view(1, 3, 1, 1)
    t0 = time.perf_counter()
    seen = 0
    loss_ema = None
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        net.train()
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            idx = order[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            x = patches[idx].to(dev).permute(0, 3, 1, 2).float().div_(255)
            x = random_resized_crop(x, cfg.input_size, cfg.crop_scale, gen)
            x = (x - mean) / std
            y = labels[idx].to(dev)
            if dist.enabled:  # the whole global batch was drawn and augmented above: keep this rank's slice
                x, y = x[dist.rank::dist.world_size], y[dist.rank::dist.world_size]
            for g in opt.param_groups:
                g["lr"] = poly_lr(cfg.lr, step, total, cfg.poly_power)
            with autocast(dev, amp):
                logits = net(channels_last(x))
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            value = dist.all_reduce_mean(loss.item())  # the global batch's loss, the same on every rank
            if not np.isfinite(value):
                raise OEEMError(f"the classifier loss became {value} at epoch {epoch + 1}; the last good "
                                f"checkpoint is kept in {ck_path} - lower the learning rate (--lr) and resume")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
            if it % 5 == 0 or it == steps_per_epoch - 1:
                rate = seen / (time.perf_counter() - t0)
                yield Progress(STAGE, step + 1, total, f"epoch {epoch + 1}/{cfg.epochs}",
                               {"loss": loss_ema, "patches_per_s": rate})
        if dist.is_main:
            _save(store, model, opt, epoch + 1, cfg, patch_cfg)
        dist.barrier()  # no rank goes on (or resumes later) before the checkpoint is whole
    elapsed = time.perf_counter() - t0
    record = {"config": asdict(cfg), "patches": asdict(patch_cfg), "device": str(dev), "n_patches": n,
              "run_id": uuid.uuid4().hex,  # lets the CAM stage tell whether its CAMs came from this model
              "epochs_run": cfg.epochs - start_epoch, "seconds": elapsed, "final_loss": loss_ema,
              "patches_per_s": seen / elapsed if elapsed > 0 else None, "world_size": dist.world_size,
              "precision": precision_name(amp)}
    if dist.is_main:
        store.save_run(STAGE, record)
    return record
