"""Stage 1b: multi-scale class activation maps and pseudo-masks.

Two ways to get the CAM of an image (``cam.mode``):
``patch`` (the reference): every patch is resized per scale, cut into crops, each crop classified, crop CAMs
overlap-averaged; ``image``: the fully convolutional classifier runs once per scale over the whole image.
Either way the pseudo-mask is the per-patch argmax over the classes that patch's label says are present
(Eq. 2), stitched into the image by majority vote of overlapping patches (ties -> non-gland).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import GLAS_MEAN, GLAS_STD, CamConfig, ClassifierConfig, PatchConfig
from pipeline.device import autocast, in_layout, precision_name, resolve_device, resolve_precision, to_tensor_image
from pipeline.errors import OEEMError
from pipeline.metrics import confusion, from_confusion
from pipeline.progress import Job, Progress
from pipeline.stages.classify import load_classifier
from pipeline.stages.models import PatchClassifier, fold_batchnorm
from pipeline.stages.patches import grid_starts
from pipeline.stages.postprocess import clean_mask
from pipeline.stages.selfcheck import check_stage_network
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

STAGE = "cams"


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


def _cam(model: PatchClassifier, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The classifier's CAM of a batch, under autocast to ``dtype`` when given, returned as fp32."""
    with autocast(x.device, dtype):
        return model.cam(in_layout(x)).float()


@torch.no_grad()
def image_cam(model: PatchClassifier, image: np.ndarray, scales: Iterable[float], zoom: float,
              device: torch.device, dtype: torch.dtype | None = None) -> np.ndarray:
    """Whole-image CAM (2, H, W): the mean over scales of the classifier run fully convolutionally."""
    h, w = image.shape[:2]
    x = to_tensor_image(image, GLAS_MEAN, GLAS_STD, device)
    acc = torch.zeros(1, 2, h, w, device=device)
    scales = list(scales)
    for s in scales:
        size = (max(8, round(h * s * zoom)), max(8, round(w * s * zoom)))
        acc += _resize(_cam(model, _resize(x, size), dtype), (h, w))
    return (acc[0] / len(scales)).cpu().numpy()


@torch.no_grad()
def patch_cams(model: PatchClassifier, image: np.ndarray, corners: np.ndarray, patch: int, input_size: int,
               scales: Iterable[float], batch_size: int, device: torch.device,
               dtype: torch.dtype | None = None) -> np.ndarray:
    """Reference-style CAM of each patch, (N, 2, patch, patch): per scale the patch is resized, cut into
    ``patch``-px crops (stride patch/2, edge flush), each crop fed at ``input_size``, crop CAMs averaged."""
    x = to_tensor_image(image, GLAS_MEAN, GLAS_STD, device)
    tiles = torch.stack([x[0, :, y:y + patch, xx:xx + patch] for y, xx in corners])
    out = torch.zeros(len(tiles), 2, patch, patch, device=device)
    scales = list(scales)
    for s in scales:
        side = max(patch, round(patch * s))
        scaled = _resize(tiles, (side, side))
        starts = grid_starts(side, patch, patch // 2)
        acc = torch.zeros(len(tiles), 2, side, side, device=device)
        cnt = torch.zeros(1, 1, side, side, device=device)
        crops = [(cy, cx) for cy in starts for cx in starts]
        for cy, cx in crops:
            cnt[..., cy:cy + patch, cx:cx + patch] += 1
        # every (patch, crop) pair as one batch of network inputs
        for cy, cx in crops:
            crop = scaled[:, :, cy:cy + patch, cx:cx + patch]
            cams = []
            for b in range(0, len(crop), batch_size):
                inp = _resize(crop[b:b + batch_size], (input_size, input_size))
                cams.append(_resize(_cam(model, inp, dtype), (patch, patch)))
            acc[:, :, cy:cy + patch, cx:cx + patch] += torch.cat(cams)
        out += _resize(acc / cnt, (patch, patch))
    return (out / len(scales)).cpu().numpy()


def refine_patches(patch_cam: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Eq. 2: per-patch argmax after setting classes absent from the patch label to -inf. (N, S, S) uint8.

    An unlabelled patch ([0, 0]: the pathologist has not tagged it) rules nothing out: there the plain argmax of
    the CAM decides."""
    allowed = labels.astype(bool)
    allowed[~allowed.any(1)] = True
    masked = np.where(allowed[:, :, None, None], patch_cam, -np.inf)
    return masked.argmax(axis=1).astype(np.uint8)


def stitch_votes(patch_masks: np.ndarray, corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Majority vote of overlapping patch pseudo-masks; ties (and uncovered pixels) are non-gland."""
    size = patch_masks.shape[-1]
    gland = np.zeros(shape, np.int32)
    total = np.zeros(shape, np.int32)
    for m, (y, x) in zip(patch_masks, corners):
        gland[y:y + size, x:x + size] += m
        total[y:y + size, x:x + size] += 1
    return (2 * gland > total).astype(np.uint8)


def restricted_pseudo(margin: np.ndarray, corners: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """Eq. 2 from a per-pixel gland margin (gland score minus non-gland score, H x W): in each patch the classes
    its label says are absent cannot win, mixed patches take the sign of the margin; patches are then stitched by
    majority vote. Used on the stitched CAM and, in self-training, on the segmentation's logit margin."""
    pm = np.stack([margin[y:y + size, x:x + size] for y, x in corners])
    return stitch_votes(refine_patches(np.stack([np.zeros_like(pm), pm], 1), labels), corners, margin.shape)


def stitch_mean(patch_cam: np.ndarray, corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    size = patch_cam.shape[-1]
    acc = np.zeros((patch_cam.shape[1], *shape), np.float32)
    cnt = np.zeros(shape, np.float32)
    for c, (y, x) in zip(patch_cam, corners):
        acc[:, y:y + size, x:x + size] += c
        cnt[y:y + size, x:x + size] += 1
    return acc / np.maximum(cnt, 1)


def cam_and_pseudo(model: PatchClassifier, image: np.ndarray, corners: np.ndarray, labels: np.ndarray,
                   patch_cfg: PatchConfig, cls_cfg: ClassifierConfig, cam_cfg: CamConfig,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """CAM (2, H, W) float32 and pseudo-mask (H, W) uint8 of one image."""
    size = patch_cfg.size
    shape = image.shape[:2]
    bias = np.array([0.0, cam_cfg.gland_bias], np.float32)[None, :, None, None]
    dtype = resolve_precision(cam_cfg.precision, torch.device(device))
    if cam_cfg.mode == "image":
        cam = image_cam(model, image, cam_cfg.scales, cls_cfg.input_size / size, device, dtype)
        pcam = np.stack([cam[:, y:y + size, x:x + size] for y, x in corners])
    elif cam_cfg.mode == "patch":
        pcam = patch_cams(model, image, corners, size, cls_cfg.input_size, cam_cfg.scales, cam_cfg.batch_size,
                          device, dtype)
        cam = stitch_mean(pcam, corners, shape)
    else:
        raise OEEMError(f"unknown CAM mode {cam_cfg.mode!r}: choose image or patch")
    if cam_cfg.pseudo_from == "stitched":
        pseudo = pseudo_from_cam(cam, corners, labels, size, cam_cfg.gland_bias)
    else:
        pseudo = stitch_votes(refine_patches(pcam + bias, labels), corners, shape)
    return cam.astype(np.float32), pseudo


def pseudo_from_cam(cam: np.ndarray, corners: np.ndarray, labels: np.ndarray, size: int,
                    gland_bias: float = 0.0) -> np.ndarray:
    """The pseudo-mask of a stitched CAM (2, H, W): Eq. 2 on the margin CAM_gland + bias - CAM_non-gland."""
    return restricted_pseudo(cam[1] + gland_bias - cam[0], corners, labels, size)


CAM_SETTINGS = ("scales", "mode")  # what the CAM itself depends on (the pseudo-mask settings are applied after)


def cams_reusable(store: ProjectStore, cam_cfg: CamConfig) -> bool:
    """Were the stored CAMs made by the same classifier run with the same CAM settings?"""
    rec = store.load_run(STAGE)
    cls = store.load_run("classifier")
    if rec is None or cls is None:
        return False
    same = all(json.loads(json.dumps(rec["config"].get(k))) == json.loads(json.dumps(getattr(cam_cfg, k)))
               for k in CAM_SETTINGS)
    return same and cls.get("run_id") is not None and rec.get("classifier_run_id") == cls.get("run_id")


@writes_project("making CAMs and pseudo-masks")
def make_cams(store: ProjectStore, cam_cfg: CamConfig, patch_cfg: PatchConfig, device: str = "auto",
              names: list[str] | None = None) -> Job[dict]:
    """CAMs and pseudo-masks for every training image with patch labels; scores them where masks exist."""
    dev = resolve_device(device)
    model, cls_cfg = load_classifier(store, dev)
    yield from check_stage_network("classifier", cls_cfg, dev, resolve_precision(cam_cfg.precision, dev))
    model = fold_batchnorm(model)  # (in the layout the check left)
    if not names:
        store.drop_joined_images()  # a new stage 1 starts self-training over, without the images rounds took in
    names = names or store.labelled_images()
    if not names:
        raise OEEMError(f"{store.path}: no patch labels yet; run `oeem patches {store.path}` first")
    cms = {split: (np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64)) for split in ("train", "val")}
    reuse = cam_cfg.pseudo_from == "stitched" and cams_reusable(store, cam_cfg)
    t0 = time.perf_counter()
    for k, n in enumerate(names):
        corners, labels = store.read(n, "patch_corners"), store.read(n, "patch_labels")
        if reuse and store.has(n, "cam"):  # same CAMs, other pseudo-mask settings: no network needed
            cam = store.read(n, "cam")
            pseudo = pseudo_from_cam(cam, corners, labels, patch_cfg.size, cam_cfg.gland_bias)
        else:
            cam, pseudo = cam_and_pseudo(model, store.image(n), corners, labels, patch_cfg, cls_cfg, cam_cfg, dev)
        pseudo = clean_mask(pseudo, cam_cfg.drop_glands_below, cam_cfg.fill_holes_below)
        store.write(n, "cam", cam)
        store.write(n, "pseudo", pseudo)
        store.delete(n, "pseudo_cam")  # a new stage 1 starts self-training over
        mask = store.mask(n)
        if mask is not None and store.split(n) in cms:
            cm_cam, cm_pseudo = cms[store.split(n)]
            cm_cam += confusion(cam.argmax(0), mask)
            cm_pseudo += confusion(pseudo, mask)
        yield Progress(STAGE, k + 1, len(names), n)
    store.pseudo_round = 0
    seconds = time.perf_counter() - t0
    record: dict = {"config": asdict(cam_cfg), "images": len(names), "seconds": seconds, "reused_cams": reuse,
                    "seconds_per_image": seconds / len(names), "device": str(dev),
                    "precision": precision_name(resolve_precision(cam_cfg.precision, dev))}
    cm_cam, cm_pseudo = cms["train"]
    if cm_cam.sum():  # the paper's Table 2 figures: CAM and pseudo-mask against the training masks
        record["cam"] = from_confusion(cm_cam)
        record["pseudo"] = from_confusion(cm_pseudo)
    cm_cam, cm_pseudo = cms["val"]
    if cm_cam.sum():
        record["val"] = {"cam": from_confusion(cm_cam), "pseudo": from_confusion(cm_pseudo)}
    record["classifier_run_id"] = (store.load_run("classifier") or {}).get("run_id")
    record["run_id"] = uuid.uuid4().hex  # the pseudo-masks a segmentation run trains on (its labels_id)
    store.save_run(STAGE, record)
    return record
