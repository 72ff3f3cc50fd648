"""Multi-scale, flipped, sliding-window inference at the original image size, and evaluation."""
from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import NORMS, InferConfig, SegConfig
from pipeline.device import autocast, in_layout, precision_name, resolve_device, resolve_precision, to_tensor_image
from pipeline.errors import OEEMError
from pipeline.metrics import ObjectCounts, confusion, from_confusion, label_objects, object_counts
from pipeline.progress import Job, Progress
from pipeline.stages.losses import weight_map
from pipeline.stages.models import fold_batchnorm
from pipeline.stages.patches import grid_starts
from pipeline.stages.postprocess import clean_mask
from pipeline.stages.segment import load_segmenter, stage_name
from pipeline.stages.selfcheck import check_stage_network
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project


def _available_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def check_memory(shape: tuple[int, int], cfg: InferConfig, working_scale: float = 1.0) -> None:
    """Refuse, with what to do, an image whose largest scale would not fit in memory."""
    h, w = shape
    s = max(cfg.scales) * working_scale
    need = h * w * (s * s * 3 * 4 * 3 + 2 * 4 * 4)  # scaled input, its logits and accumulators, float32
    if need > 0.6 * _available_bytes():
        raise OEEMError(f"an image of {w}x{h} px at scale {s} needs about {need / 2**30:.1f} GiB; use fewer or "
                        "smaller scales (--scales 1) or cut the image into tiles (e.g. 2048 px) first")


def window_weight(crop: int, blend: str, device) -> torch.Tensor:
    """1 everywhere (plain average) or a Gaussian centred on the window (sigma = crop / 8, floored) so a pixel
    is decided mostly by windows that see it with context on every side."""
    if blend == "mean":
        return torch.ones(1, 1, crop, crop, device=device)
    if blend != "gaussian":
        raise OEEMError(f"inference.blend must be mean or gaussian, not {blend!r}")
    r = torch.arange(crop, device=device, dtype=torch.float32) - (crop - 1) / 2
    g = torch.exp(-0.5 * (r / (crop / 8)) ** 2)
    w = g[:, None] * g[None, :]
    return (w / w.max()).clamp_min(1e-3).view(1, 1, crop, crop)


@torch.no_grad()
def sliding_logits(model, x: torch.Tensor, crop: int, stride: int, batch_size: int,
                   blend: str = "mean", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits (1, C, H, W) from overlapping windows, averaged (weighted by ``blend``) where they overlap;
    windows run in batches (under autocast to ``dtype`` when given; the blend is fp32)."""
    _, _, h, w = x.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    H, W = x.shape[-2:]
    boxes = [(y, xx) for y in grid_starts(H, crop, stride) for xx in grid_starts(W, crop, stride)]
    weight = window_weight(crop, blend, x.device)
    out = None
    count = torch.zeros(1, 1, H, W, device=x.device)
    for b in range(0, len(boxes), batch_size):
        chunk = boxes[b:b + batch_size]
        with autocast(x.device, dtype):
            logits = model(in_layout(torch.cat([x[:, :, y:y + crop, xx:xx + crop] for y, xx in chunk])))
        logits = logits.float()
        if out is None:
            out = torch.zeros(1, logits.shape[1], H, W, device=x.device)
        for k, (y, xx) in enumerate(chunk):
            out[:, :, y:y + crop, xx:xx + crop] += logits[k:k + 1] * weight
            count[:, :, y:y + crop, xx:xx + crop] += weight
    return (out / count)[:, :, :h, :w]


def orient(x: torch.Tensor, turn: bool, flip_rows: bool, flip_cols: bool, back: bool = False) -> torch.Tensor:
    """``x`` (..., H, W) transposed, then flipped as asked; ``back``: the inverse (flips, then the transpose).
    TorchScript compiles it as it is, so a bioimage.io package turns the image exactly as ``oeem`` does."""
    if turn and not back:
        x = x.transpose(-2, -1)
    if flip_rows:
        x = x.flip([-2])
    if flip_cols:
        x = x.flip([-1])
    if turn and back:
        x = x.transpose(-2, -1)
    return x


@torch.no_grad()
def predict_probs(model, image: np.ndarray, cfg: InferConfig, device: torch.device,
                  seg_cfg: SegConfig | None = None,
                  activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Class probabilities (C, H, W) at the image's own size: softmax averaged over scales and orientations.
    ``activation`` replaces the softmax (logits (1, C, H, W) -> probabilities) for a network with other outputs.

    ``seg_cfg`` (the model's training settings) gives the input normalisation and the working resolution: each
    test scale is relative to it, and the logits are upsampled to the original size before the softmax."""
    seg_cfg = seg_cfg or SegConfig()
    device = torch.device(device)
    amp = resolve_precision(cfg.precision, device)
    check_memory(image.shape[:2], cfg, seg_cfg.working_scale)
    h, w = image.shape[:2]
    x = to_tensor_image(image, *NORMS[seg_cfg.input_norm], device)
    acc = None
    n = 0
    for s in cfg.scales:
        s = s * seg_cfg.working_scale
        size = (max(8, round(h * s)), max(8, round(w * s)))
        # anti-aliased when shrinking, as the training images were made (skimage resize with anti-aliasing)
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                    antialias=s < 1)
        for turn, flip_rows, flip_cols in cfg.orientations():
            inp = orient(xs, turn, flip_rows, flip_cols)
            logits = sliding_logits(model, inp, cfg.crop_size, cfg.stride, cfg.batch_size, cfg.blend, amp)
            logits = orient(logits, turn, flip_rows, flip_cols, back=True)
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            prob = logits.softmax(1) if activation is None else activation(logits)
            acc = prob if acc is None else acc + prob
            n += 1
    return (acc[0] / n).cpu().numpy()


def mask_from_probs(prob: np.ndarray, cfg: InferConfig) -> np.ndarray:
    """The predicted gland mask (uint8 0/1): the most likely class per pixel, cleaned as ``cfg`` says."""
    return clean_mask(prob.argmax(0), cfg.drop_glands_below, cfg.fill_holes_below)


def oeem_weight_of(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The l_norm weight the current model gives each pixel of ``label`` (what OEEM would train on)."""
    logits = torch.from_numpy(np.log(np.clip(prob, 1e-6, 1)))[None]
    return weight_map(logits, torch.from_numpy(label.astype(np.int64))[None], "l_norm")[0].numpy()


@writes_project("predicting")
def predict(store: ProjectStore, cfg: InferConfig, names: list[str] | None = None, device: str = "auto",
            run_name: str | None = None) -> Job[dict]:
    """Predict every image (default: all), writing ``prob`` (gland), ``prediction`` and, where a pseudo-mask
    exists, the OEEM ``weight`` map of the current model to the store."""
    dev = resolve_device(device)
    model, seg_cfg = load_segmenter(store, run_name, dev)
    yield from check_stage_network("segmentation", seg_cfg, dev, resolve_precision(cfg.precision, dev),
                                   predict_size=cfg.crop_size)
    model = fold_batchnorm(model)  # (in the layout the check left)
    names = names or store.names()
    t0 = time.perf_counter()
    for k, n in enumerate(names):
        prob = predict_probs(model, store.image(n), cfg, dev, seg_cfg)
        store.write(n, "prob", prob[1].astype(np.float32))
        store.write(n, "prediction", mask_from_probs(prob, cfg))
        if store.has(n, "pseudo"):
            store.write(n, "weight", oeem_weight_of(prob, store.labels(n)[0]).astype(np.float32))
        yield Progress("predict", k + 1, len(names), n)
    seconds = time.perf_counter() - t0
    labels_round = load_run_round(store, run_name)
    record = {"config": asdict(cfg), "model": stage_name(run_name), "labels_round": labels_round,
              "run_id": uuid.uuid4().hex,  # the prediction the instances step cut into glands
              "images": len(names), "seconds": seconds,
              "seconds_per_image": seconds / max(1, len(names)), "device": str(dev),
              "precision": precision_name(resolve_precision(cfg.precision, dev)),
              "segmentation_run_id": (store.load_run(stage_name(run_name)) or {}).get("run_id")}
    store.save_run("predict", record)
    return record


def load_run_round(store: ProjectStore, run_name: str | None) -> int:
    """The self-training round of the labels the model was trained on (0 when unknown)."""
    rec = store.load_run(stage_name(run_name)) or {}
    return int(rec.get("labels_round", 0))


def glas_part(name: str) -> str | None:
    """The GlaS test part an image's name says (``testA_3`` -> ``testA``), else None."""
    match = re.match(r"(test[AB])_", name)
    return match.group(1) if match else None


def objects_source(store: ProjectStore, names: list[str], key: str) -> str:
    """``instances`` when the prediction's glands were cut by the instances step from this very prediction (the
    objects a user sees and exports), else ``components`` (each 8-connected region one object)."""
    if key != "prediction" or not all(store.has(n, "instances") for n in names):
        return "components"
    rec, pred = store.load_run("instances") or {}, store.load_run("predict") or {}
    return "instances" if rec.get("predict_run_id") is not None and rec["predict_run_id"] == pred.get("run_id") \
        else "components"


def score_groups(store: ProjectStore, name: str) -> set[str | None]:
    """The groups an image's scores add to: the split (None), its GlaS test part (testA, testB), its grade (benign,
    malignant: where the data said) and both (``testA malignant``)."""
    part, grade = glas_part(name), store.grade(name)
    return {None, part, grade, f"{part} {grade}" if part and grade else None}


def evaluate(store: ProjectStore, split: str = "test", key: str = "prediction") -> dict:
    """Scores (:mod:`pipeline.metrics`) of ``key`` against the gland masks of ``split``: pixel mIoU / pixel Dice /
    F1 and the GlaS challenge's object F1 / object Dice / object Hausdorff, for the split, for each GlaS test part
    its image names show (``parts``: testA, testB and, with both, A+B, as the challenge reports them), for each
    grade where the data gave one (benign, malignant, and per part) and per image. Predicted objects are the
    instances step's glands (``objects``: instances) or else 8-connected regions (components); the truth's are
    its mask's ids where it has them (``truth_objects``: ids), else its 8-connected regions (components)."""
    names = [n for n in store.names(split) if store.has(n, "mask")]
    if not names:
        raise OEEMError(f"{store.path}: no {split} images with gland masks to evaluate against")
    missing = [n for n in names if not store.has(n, key)]
    if missing:
        raise OEEMError(f"{store.path}: {len(missing)} {split} image(s) have no {key!r} yet (e.g. {missing[0]}); "
                        f"run `oeem predict {store.path}` first")
    source = objects_source(store, names, key)
    sums: dict[str | None, tuple[int, np.ndarray, ObjectCounts]] = {}
    per_image, truth_ids = {}, True
    for n in names:
        pred, truth = store.read(n, key), store.mask(n)
        truth_objects, has_ids = store.truth_objects(n)
        truth_ids = truth_ids and has_ids
        pred_objects = store.read(n, "instances") if source == "instances" else label_objects(pred)
        cm, objects = confusion(pred, truth), object_counts(pred_objects, truth_objects)
        per_image[n] = {**from_confusion(cm), **objects.scores()}
        for group in score_groups(store, n):
            images, cm_sum, obj_sum = sums.get(group, (0, np.zeros((2, 2), np.int64), ObjectCounts()))
            sums[group] = (images + 1, cm_sum + cm, obj_sum + objects)
    if "testA" in sums and "testB" in sums:
        (na, cma, oa), (nb, cmb, ob) = sums["testA"], sums["testB"]
        sums["A+B"] = (na + nb, cma + cmb, oa + ob)
    scores = {group: {"images": images, **from_confusion(cm), **objects.scores()}
              for group, (images, cm, objects) in sums.items()}
    result = {"split": split, "key": key, "objects": source, "truth_objects": "ids" if truth_ids else "components",
              **scores.pop(None), "parts": scores, "per_image": per_image}
    store.save_run(f"evaluation-{split}", result)
    return result


def evaluate_all(store: ProjectStore, key: str = "prediction") -> dict[str, dict]:
    """:func:`evaluate` of every split that has gland masks (a project without masks has nothing to score)."""
    return {split: evaluate(store, split, key) for split in ("train", "val", "test")
            if any(store.has(n, "mask") for n in store.names(split))}
