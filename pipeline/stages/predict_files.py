"""Segment image files that are in no project (``oeem predict-images``): this week's tiles with last month's model.

One image at a time - read, resample to the model's microns per pixel, predict, resample the mask back to the
image's own size, write atomically - so memory is bounded by the largest image, not the count. An image whose
output already exists is skipped (a rerun after a crash or a cancel resumes; ``overwrite`` redoes), and a record
of what made the files (``oeem-predictions.json``) is kept beside them.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import OEEMError
from pipeline.io.data import image_mpp, list_image_files, load_image
from pipeline.io.export import FORMATS, SUFFIXES, write_mask_file
from pipeline.progress import Job, Progress
from pipeline.stages.model_file import TrainedModel

RECORD = "oeem-predictions.json"
SAME_RESOLUTION = 0.03  # relative difference of µm/px under which an image is used as it is


def output_for(image: Path, roots: list[Path], out: Path, fmt: str) -> Path:
    """Where an image's mask goes: under ``out``, with the image's path below the folder it was found in."""
    for root in roots:
        if root.is_dir() and image.is_relative_to(root):
            rel = image.relative_to(root)
            return out / rel.parent / f"{rel.stem}{SUFFIXES[fmt]}"
    return out / f"{image.stem}{SUFFIXES[fmt]}"


def resolution_of(path: Path, given: float | None, model_mpp: float) -> tuple[float, str]:
    """µm/px of an image and where it came from: the file, ``--mpp``, or (neither) assumed to be the model's."""
    own = image_mpp(path)
    if own is not None:
        return own, "file"
    if given is not None:
        return given, "--mpp"
    return model_mpp, "assumed (the model's; give --mpp if it differs)"


def predict_image(trained: TrainedModel, image: np.ndarray, mpp: float, device,
                  instances: bool = False) -> np.ndarray:
    """The gland mask (uint8 0/1) of one image at its own size, predicted at the model's resolution; with
    ``instances`` its glands as objects (int32 ids, cut as the model's ``instances`` settings say, at the model's
    resolution as in its project)."""
    from pipeline.stages.infer import mask_from_probs, predict_probs
    from pipeline.stages.instances import instances_of

    scale = mpp / trained.mpp  # model px per image px
    h, w = image.shape[:2]
    resample = abs(scale - 1) > SAME_RESOLUTION
    if resample:
        from skimage.transform import resize

        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        image = (resize(image, size, order=1, anti_aliasing=scale < 1, preserve_range=True) + 0.5).astype(np.uint8)
    prob = predict_probs(trained.model, image, trained.inference, device, trained.seg)
    mask = mask_from_probs(prob, trained.inference)
    out = instances_of(mask, prob[1], trained.instances) if instances else mask
    if resample:
        out = resize(out, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(out.dtype)
    return out


def predict_one(trained: TrainedModel, image_path: Path, target: Path, mpp: float | None, device,
                instances: bool = False) -> dict:
    """Read, predict and write one image (atomically); its entry of the run's record."""
    t = time.perf_counter()
    image = np.require(load_image(image_path), requirements="W")  # torch wants a writable array
    res, source = resolution_of(image_path, mpp, trained.mpp)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_mask_file(target, predict_image(trained, image, res, device, instances), image_path.stem, ids=instances,
                    mpp=res)
    return {"image": str(image_path), "mpp": round(res, 4), "mpp_from": source,
            "seconds": round(time.perf_counter() - t, 3)}


def predict_files(trained: TrainedModel, paths: list[str | Path], out: str | Path, fmt: str = "png",
                  overwrite: bool = False, mpp: float | None = None, device: str = "auto",
                  scheduler: str | None = None, instances: bool = False) -> Job[dict]:
    """Predict every image among ``paths`` into ``out`` (see the module's doc); returns the run's record.
    ``instances``: write each image's glands as objects (ids kept: :mod:`pipeline.io.export`) instead of its mask.
    With
    ``scheduler`` (a dask.distributed address) the images go to that cluster's workers, which open the model
    (``trained.source``) once each and write into ``out``, so ``out`` and the images must be visible to them."""
    from pipeline.device import place, precision_name, resolve_device, resolve_precision
    from pipeline.stages.selfcheck import check_stage_network

    if fmt not in FORMATS:
        raise OEEMError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if mpp is not None and not (0.01 <= mpp <= 100):
        raise OEEMError(f"--mpp {mpp}: microns per pixel are between 0.01 and 100 (0.25 at 40x, 0.5 at 20x)")
    images = list_image_files(list(paths))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    roots = [Path(p) for p in paths]
    dev = resolve_device(device)
    todo = [(i, output_for(i, roots, out, fmt)) for i in images]
    clash: dict[Path, Path] = {}
    for image, target in todo:
        if target in clash:
            raise OEEMError(f"{image} and {clash[target]} would both be written to {target}; predict them into "
                            "separate --out folders")
        clash[target] = image
    if instances and scheduler:
        raise OEEMError("--instances on a dask cluster is not supported yet; predict the instances on this machine "
                        "(leave out --scheduler)")
    record: dict[str, Any] = {"model": trained.source, "model_mpp": trained.mpp, "format": fmt,
                              "instances": asdict(trained.instances) if instances else None,
                              "device": str(dev), "precision": precision_name(resolve_precision(
                                  trained.inference.precision, dev)), "scheduler": scheduler, "images": {}}
    previous = out / RECORD
    if previous.is_file() and not overwrite:
        try:
            record["images"] = json.loads(previous.read_text()).get("images", {})
        except ValueError:
            pass
    skipped = [(i, t) for i, t in todo if t.exists() and not overwrite]
    pending = [(i, t) for i, t in todo if not (t.exists() and not overwrite)]
    t0 = time.perf_counter()
    if skipped:
        yield Progress("predict-images", len(skipped), len(todo), f"{len(skipped)} done before",
                       notice=f"resuming: {len(skipped)} of {len(todo)} images already have a mask")
    if scheduler:
        from pipeline.slides.cluster import connect, predict_images_on_cluster

        client = connect(scheduler)
        try:
            resolved = {(i.resolve(), t.resolve()): (i, t) for i, t in pending}  # as the workers see them
            runner = predict_images_on_cluster(client, str(Path(trained.source).resolve()),
                                               asdict(trained.inference), list(resolved), mpp, device,
                                               cluster_image_task)
            finished = ((*resolved[(i, t)], e) for i, t, e in runner)
            yield from _recorded(finished, out, record, len(skipped), len(todo))
        finally:
            client.close()
    else:
        if pending:
            yield from check_stage_network("segmentation", trained.seg, dev,
                                           resolve_precision(trained.inference.precision, dev),
                                           predict_size=trained.inference.crop_size)
            place(trained.model)  # (in the layout the check left; a module moves in place)
        here = ((i, t, predict_one(trained, i, t, mpp, dev, instances)) for i, t in pending)
        yield from _recorded(here, out, record, len(skipped), len(todo))
    record.update(predicted=len(pending), skipped=len(skipped), seconds=round(time.perf_counter() - t0, 2))
    _save_record(out, record)
    return record


def cluster_image_task(image: str, target: str, mpp: float | None) -> dict:
    """One image on a dask worker, with the model the worker opened once."""
    from pipeline.slides.cluster import worker_model

    trained, dev = worker_model()
    return predict_one(trained, Path(image), Path(target), mpp, dev)


def _recorded(finished, out: Path, record: dict, start: int, total: int) -> Job[None]:
    """Keep each finished image in the record (saved as it goes: a kill loses nothing written) with progress."""
    step = start
    for image_path, target, entry in finished:
        record["images"][str(Path(target).relative_to(out))] = entry
        step += 1
        _save_record(out, record)
        yield Progress("predict-images", step, total, Path(image_path).name)


def _save_record(out: Path, record: dict) -> None:
    from pipeline.store import atomic_write_json

    atomic_write_json(out / RECORD, record)
