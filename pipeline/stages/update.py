"""*Update model* (``oeem update``, the dock's button): the interactive loop.

After a pathologist paints corrections, accepts review regions or tags patches, a full retrain takes half an hour
or more on a CPU. An update fine-tunes the current segmentation model for a few dozen steps on batches cut mostly
from the images that changed (tiles with verified pixels drawn more often; the rest replays other training images
so the model does not forget them), then re-predicts. The model from before is kept as a version, so an update
that made things worse is one ``oeem update --revert`` away.

What changed is judged against the label state the model learned from (each image's correction version and a
digest of its patch tags), recorded by every training and every update.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import NORMS, PipelineConfig, SegConfig, UpdateConfig
from pipeline.device import autocast, in_layout, place, resolve_device, resolve_precision, set_threads
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore
from pipeline.store.project_store import atomic_write_bytes, atomic_write_json

STAGE = "segmentation"
VERSIONS = "model-versions"  # runs/model-versions.json: the kept models, oldest first


# ---------------------------------------------------------------------------------------------- what changed
def changed_images(store: ProjectStore) -> list[str]:
    """The training images whose corrections or tags differ from those the current model learned from. A model
    from before the record kept them counts every corrected or tagged image as changed."""
    learned = (store.load_run(STAGE) or {}).get("label_state")
    changed = []
    for n in store.names("train"):  # as a full training, an update never learns from the validation split
        now = store.label_state(n)
        if learned is None:
            if now["correction"] or now["tags"]:
                changed.append(n)
        elif learned.get(n, {"correction": None, "tags": None}) != now:
            changed.append(n)
    return changed


# ---------------------------------------------------------------------------------------------- what it trains on
def tag_constraints(store: ProjectStore, name: str) -> np.ndarray | None:
    """Pixel labels the patch tags alone decide (Eq. 2 for one-class patches): 1 where every tagged patch covering
    the pixel is *gland only*, 0 where every one is *no gland*, 255 elsewhere; None when the image has no tags."""
    from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND
    from pipeline.stages.patches import patch_grid

    found = store.patch_tags(name)
    if found is None or not found[0].any():
        return None
    tags, size, stride = found
    shape = store.shape(name)
    tagged = np.zeros(shape, np.int32)
    gland_ok = np.zeros(shape, np.int32)
    non_gland_ok = np.zeros(shape, np.int32)
    for (y, x), t in zip(patch_grid(shape, size, stride), tags):
        if t == 0:
            continue
        tagged[y:y + size, x:x + size] += 1
        gland_ok[y:y + size, x:x + size] += t in (GLAND, BOTH)
        non_gland_ok[y:y + size, x:x + size] += t in (NON_GLAND, BOTH)
    out = np.full(shape, 255, np.uint8)
    out[(tagged > 0) & (non_gland_ok == 0)] = 1
    out[(tagged > 0) & (gland_ok == 0)] = 0
    return out


def update_labels(store: ProjectStore, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels an update trains ``name`` on (0/1, 255 = unknown) and the pixels a pathologist verified: the
    corrected pseudo-mask, with the tags' one-class patches on top of machine labels (never of verified pixels).
    An image tagged after the pseudo-masks were made has labels only where its tags decide them."""
    if store.has(name, "pseudo"):
        labels, verified = store.labels(name, "corrected")
        labels = labels.astype(np.uint8)
    else:
        labels, verified = np.full(store.shape(name), 255, np.uint8), np.zeros(store.shape(name), bool)
    decided = tag_constraints(store, name)
    if decided is not None:
        use = (decided != 255) & ~verified
        labels = np.where(use, decided, labels)
    return labels, verified


def _tiles(store: ProjectStore, names: list[str], seg: SegConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training tiles (as :func:`pipeline.stages.segment.tile_dataset` cuts them) of ``names``: images and codes
    (label + 2 x verified, 255 ignored)."""
    from pipeline.stages.segment import cut_tiles, resize_to_working

    ims, codes = [], []
    for n in names:
        labels, verified = update_labels(store, n)
        code = np.where(labels == 255, 255, labels + 2 * verified.astype(np.uint8)).astype(np.uint8)
        image, code = resize_to_working(store.image(n), code, seg.working_scale)
        a, b = cut_tiles(image, code, seg.tile_size, seg.tile_stride)
        keep = [k for k, c in enumerate(b) if (c != 255).any()]
        ims += [a[k] for k in keep]
        codes += [b[k] for k in keep]
    return ims, codes


def tile_weights(codes: np.ndarray) -> np.ndarray:
    """Sampling weights of the changed images' tiles: a tile with verified pixels is drawn more often, in
    proportion to how much of it the pathologist fixed (1 + 10 x its verified share)."""
    verified = ((codes >> 1) & 1).astype(bool) & (codes != 255)
    share = verified.reshape(len(codes), -1).mean(1)
    w = 1.0 + 10.0 * share
    return w / w.sum()


# ---------------------------------------------------------------------------------------------- versions
def _versions_path(store: ProjectStore) -> Path:
    return store.path / "runs" / f"{VERSIONS}.json"


def model_versions(store: ProjectStore) -> list[dict[str, Any]]:
    """The kept models (oldest first): what ``--revert`` can go back to."""
    path = _versions_path(store)
    return json.loads(path.read_text()) if path.is_file() else []


def _version_files(store: ProjectStore, version: int) -> tuple[Path, Path]:
    folder = store.path / "checkpoints" / "versions"
    return folder / f"{STAGE}.v{version:04d}.pt", folder / f"{STAGE}.v{version:04d}.json"


def keep_version(store: ProjectStore, why: str, keep: int) -> int:
    """Copy the current model and its record aside as a new version (the oldest beyond ``keep`` are deleted)."""
    versions = model_versions(store)
    version = max([v["version"] for v in versions] + [0]) + 1
    ck, rec = _version_files(store, version)
    ck.parent.mkdir(parents=True, exist_ok=True)
    tmp = ck.with_name(ck.name + f".{os.getpid()}.tmp")
    shutil.copyfile(store.checkpoint_path(STAGE), tmp)
    os.replace(tmp, ck)
    atomic_write_json(rec, store.load_run(STAGE) or {})
    versions.append({"version": version, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "why": why,
                     "run_id": (store.load_run(STAGE) or {}).get("run_id")})
    for old in versions[:-keep]:
        for f in _version_files(store, old["version"]):
            f.unlink(missing_ok=True)
    atomic_write_json(_versions_path(store), versions[-keep:])
    return version


def revert_model(store: ProjectStore) -> dict[str, Any]:
    """Put back the model from before the last update (each revert goes one version further back). The model
    being replaced is not kept: an update is cheap to make again."""
    versions = model_versions(store)
    if not versions:
        raise OEEMError(f"{store.path}: no earlier model kept to revert to (versions are kept by `oeem update`)")
    last = versions[-1]
    ck, rec = _version_files(store, last["version"])
    if not ck.is_file():
        raise OEEMError(f"{ck}: the kept model is missing; nothing was changed")
    atomic_write_bytes(store.checkpoint_path(STAGE), ck.read_bytes())
    store.save_run(STAGE, json.loads(rec.read_text()) if rec.is_file() else {})
    atomic_write_json(_versions_path(store), versions[:-1])
    ck.unlink(missing_ok=True)
    rec.unlink(missing_ok=True)
    return last


# ---------------------------------------------------------------------------------------------- the update
def update_model(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", names: list[str] | None = None,
                 predict_names: list[str] | None = None) -> Job[dict]:
    """Fine-tune the project's segmentation model on what changed (``names``; default :func:`changed_images`),
    keep the previous model as a version, and re-predict ``predict_names`` (default: the changed images).

    What cannot work (no model, nothing changed, an unknown image) is refused here, before a job starts.
    Cancelled before its end, nothing is written: the model stays as it was."""
    path = store.checkpoint_path(STAGE)
    if not path.is_file():
        raise OEEMError(f"{store.path}: no segmentation model to update yet; make one with `oeem run {store.path}` "
                        f"(or `oeem train-seg {store.path}`), then correct and update")
    changed = names if names is not None else changed_images(store)
    if not changed:
        raise OEEMError(f"{store.path}: nothing changed since the model was trained; paint corrections, accept "
                        "review regions or tag patches first (or name images with --images)")
    unknown = [n for n in changed if n not in store.names()]
    if unknown:
        raise OEEMError(f"{store.path}: no image {unknown[0]!r} in the project")
    held_out = [n for n in changed if store.split(n) != "train"]
    if held_out:
        raise OEEMError(f"{store.path}: {held_out[0]!r} is a {store.split(held_out[0])} image; an update learns from "
                        "training images only, as a full training does")
    return _fine_tune(store, cfg, device, changed, predict_names if predict_names is not None else changed)


def _fine_tune(store: ProjectStore, cfg: PipelineConfig, device: str, changed: list[str],
               to_predict: list[str]) -> Job[dict]:
    from pipeline.stages.augment import photometric, random_rot90, random_zoom_crop, stain_jitter
    from pipeline.stages.infer import predict
    from pipeline.stages.losses import segmentation_loss
    from pipeline.stages.models import safe_torch_load
    from pipeline.stages.segment import IGNORE, decode, load_segmenter_file
    from pipeline.stages.selfcheck import check_stage_network

    ucfg: UpdateConfig = cfg.update
    path = store.checkpoint_path(STAGE)
    t0 = time.perf_counter()
    set_threads(cfg.segmentation.threads)
    dev = resolve_device(device)
    model, seg = load_segmenter_file(path, dev)
    amp = resolve_precision(cfg.segmentation.precision, dev)  # this run's choice, not the training's
    yield from check_stage_network("segmentation", seg, dev, amp)
    model = place(model)  # (in the layout the check left)
    yield Progress("update", 0, ucfg.iterations, f"cutting tiles of {len(changed)} changed image(s)")
    focus_ims, focus_codes = _tiles(store, changed, seg)
    if not focus_ims:
        raise OEEMError(f"{store.path}: the changed image(s) {', '.join(changed[:3])} have no labels to learn from "
                        f"yet; make their pseudo-masks (`oeem run {store.path}`) or tag their patches")
    gen = torch.Generator().manual_seed(seg.seed)
    others = [n for n in store.labelled_images(("train",)) or store.names("train") if n not in changed
              and store.has(n, "pseudo")]
    pick = torch.randperm(len(others), generator=gen)[:ucfg.replay_images].tolist()
    replay_ims, replay_codes = _tiles(store, [others[k] for k in sorted(pick)], seg)
    focus_x, focus_c = torch.from_numpy(np.stack(focus_ims)), np.stack(focus_codes)
    focus_p = torch.from_numpy(tile_weights(focus_c))
    focus_c = torch.from_numpy(focus_c)
    replay_x = torch.from_numpy(np.stack(replay_ims)) if replay_ims else None
    replay_c = torch.from_numpy(np.stack(replay_codes)) if replay_codes else None
    n_focus = seg.batch_size if replay_x is None else max(1, round(seg.batch_size * ucfg.focus))
    mean = torch.tensor(NORMS[seg.input_norm][0], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(NORMS[seg.input_norm][1], device=dev).view(1, 3, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=ucfg.lr, momentum=seg.momentum, weight_decay=seg.weight_decay)
    losses = []
    for step in range(ucfg.iterations):
        idx = torch.multinomial(focus_p, n_focus, replacement=True, generator=gen)
        x, code = focus_x[idx], focus_c[idx]
        if n_focus < seg.batch_size:
            ridx = torch.randint(0, len(replay_x), (seg.batch_size - n_focus,), generator=gen)
            x, code = torch.cat([x, replay_x[ridx]]), torch.cat([code, replay_c[ridx]])
        x = x.to(dev).permute(0, 3, 1, 2).float().div_(255)
        code = code.to(dev).long()
        x, code = random_zoom_crop(x, code, seg.crop_size, seg.ratio_range, gen, IGNORE)
        if seg.rotate90:
            x, code = random_rot90(x, code, gen)
        x = (photometric(stain_jitter(x, seg.stain_jitter, gen), gen) - mean) / std
        target, clean, _ = decode(code)
        model.train()
        with autocast(dev, amp):
            main, aux = model(in_layout(x), with_aux=True)
        kw = dict(kind=seg.loss, ignore_index=IGNORE, clean=clean if clean.any() else None,
                  ohem_thresh=seg.ohem_thresh, ohem_min_kept=seg.ohem_min_kept, temperature=seg.weight_temperature,
                  clean_weight=ucfg.verified_weight)
        loss = segmentation_loss(main.float(), target, **kw) + seg.aux_weight * segmentation_loss(aux.float(),
                                                                                                  target, **kw)
        if not torch.isfinite(loss):
            raise OEEMError(f"the update's loss became {loss.item()} at step {step + 1}; the model was not changed. "
                            "Lower update.lr (--lr) and update again")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        yield Progress("update", step + 1, ucfg.iterations, "fine-tuning", {"loss": losses[-1]})
    model.eval()
    train_seconds = time.perf_counter() - t0
    # the update is whole: keep the model from before as a version, then write the new one in its place
    version = keep_version(store, f"before the update of {len(changed)} image(s)", ucfg.keep_versions)
    ck = safe_torch_load(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ck["model"] = state
    if "train_model" in ck:
        ck["train_model"] = state
    store.save_checkpoint(STAGE, ck)
    previous = store.load_run(STAGE) or {}
    record = {**previous, "run_id": uuid.uuid4().hex, "label_state": store.label_states(),
              "updates": list(previous.get("updates", [])) + [{
                  "images": changed, "steps": ucfg.iterations, "lr": ucfg.lr, "focus": ucfg.focus,
                  "verified_weight": ucfg.verified_weight,
                  "replayed": len(pick), "tiles": len(focus_ims), "seconds": train_seconds,
                  "first_loss": losses[0], "last_loss": losses[-1], "kept_version": version,
                  "at": time.strftime("%Y-%m-%dT%H:%M:%S")}]}
    store.save_run(STAGE, record)
    if to_predict:
        yield from predict(store, cfg.inference, names=to_predict, device=device)
    return {"images": changed, "steps": ucfg.iterations, "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds, "kept_version": version, "predicted": to_predict,
            "first_loss": losses[0], "last_loss": losses[-1]}
