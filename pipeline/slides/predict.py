"""Predict a whole slide block by block into an OME-Zarr pyramid beside the project.

Why blocks with a margin: each output block (``slide.block`` px at the project's resolution, one zarr chunk) is
predicted from the block plus ``slide.margin`` px of context on every side, with centre-weighted (Gaussian)
windows inside. Memory is therefore fixed by the block size - never by the slide (TIAToolbox and MONAI merge
into slide-sized canvases and run out of memory) - and a block is finished, written and recorded on its own, so a
killed run resumes where it stopped, and blocks are natural tasks for a ``dask.distributed`` cluster.

Layout of ``NAME.ome.zarr`` (OME-Zarr 0.5 on zarr v3): the gland probability (uint8, 0-255) as the multiscale
image, ``labels/prediction`` the 0/1 mask and ``labels/glands`` one id per gland (:mod:`pipeline.slides.instances`)
as multiscale labels, all at the project's microns per pixel.
``NAME.ome.zarr.progress.json`` beside it lists the finished blocks (written atomically after each one);
``NAME.ome.zarr.record.json`` says what was done, resampling included (also in the root's attributes)."""
from __future__ import annotations

import base64
import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pipeline.config import InferConfig, InstanceConfig, SlideConfig
from pipeline.device import resolve_device
from pipeline.errors import OEEMError
from pipeline.io.omezarr import (
    LEVELS_MIN_SIDE,
    add_levels,
    create_level,
    image_metadata,
    label_metadata,
    labels_group_metadata,
)
from pipeline.progress import Job, Progress
from pipeline.slides.blocks import SlideJob, write_blocks
from pipeline.slides.reader import Slide, open_slide, tissue_mask
from pipeline.store import ProjectStore, atomic_write_json


def default_output(store: ProjectStore | None, slide_path: str | Path) -> Path:
    """``PROJECT.slides/NAME.ome.zarr`` beside the project (not inside its store); without a project (a model
    file), ``NAME.prediction.ome.zarr`` beside the slide."""
    stem = Path(slide_path).name.split(".")[0] or "slide"
    if store is None:
        return Path(slide_path).parent / f"{stem}.prediction.ome.zarr"
    return store.path.parent / f"{store.path.name}.slides" / f"{stem}.ome.zarr"


# ---------------------------------------------------------------------------- bookkeeping
def _fingerprint(job: SlideJob, checkpoint: Path) -> dict:
    """What the output depends on, as saved (JSON: tuples become lists), to tell a resumable run from a new one."""
    st = Path(job.slide).stat()
    ck = checkpoint.stat()
    return json.loads(json.dumps({
        "slide": str(Path(job.slide).resolve()), "slide_bytes": st.st_size, "slide_mpp": job.slide_mpp,
        "project_mpp": job.project_mpp, "block": job.block, "margin": job.margin, "infer": job.infer,
        "model": str(checkpoint.resolve()), "model_bytes": ck.st_size, "model_mtime": int(ck.st_mtime)}))


def progress_path(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.progress.json"


def record_path(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.record.json"


def read_done(out: Path, grid: tuple[int, int]) -> np.ndarray:
    p = progress_path(out)
    done = np.zeros(grid, bool)
    if p.is_file():
        rec = json.loads(p.read_text())
        bits = np.unpackbits(np.frombuffer(base64.b64decode(rec["done"]), np.uint8))[: grid[0] * grid[1]]
        done = bits.reshape(grid).astype(bool)
    return done


def _write_done(out: Path, done: np.ndarray, fingerprint: dict, complete: bool = False) -> None:
    atomic_write_json(progress_path(out), {"grid": list(done.shape), "fingerprint": fingerprint, "complete": complete,
                                       "done": base64.b64encode(np.packbits(done.ravel())).decode()})


def _create_output(out: Path, job: SlideJob, fingerprint: dict) -> None:
    """An empty output (unwritten chunks read as 0: glass costs nothing), made in a temporary folder first."""
    import zarr

    tmp = out.parent / f".{out.name}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(tmp), mode="w")
        chunks = (job.block, job.block)
        create_level(root, "0", (job.height, job.width), "uint8", chunks, fill_value=0)
        labels = root.require_group("labels")
        labels.attrs["ome"] = labels_group_metadata(["prediction"])
        pred = labels.require_group("prediction")
        create_level(pred, "0", (job.height, job.width), "uint8", chunks, fill_value=0)
        root.attrs["ome"] = image_metadata("gland probability", 1, job.project_mpp)
        pred.attrs["ome"] = label_metadata("prediction", 1, job.project_mpp)
        root.attrs["oeem_slide_prediction"] = {"slide": job.slide, "project_mpp": job.project_mpp}
        os.replace(tmp, out)
        _write_done(out, np.zeros(job.grid, bool), fingerprint)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OEEMError(f"{out}: cannot be created ({exc.strerror or exc}); choose another place with --out") \
            from None


def build_pyramid(out: Path, project_mpp: float) -> int:
    """Levels 1.. of both arrays from level 0 (:func:`pipeline.io.omezarr.add_levels`) until a level fits
    LEVELS_MIN_SIDE: the probability averaged 2x2, the mask taken every second pixel (labels are never averaged)."""
    import zarr

    root = zarr.open_group(str(out), mode="r+")
    pred = root["labels/prediction"]
    levels = add_levels(root, LEVELS_MIN_SIDE)
    add_levels(pred, LEVELS_MIN_SIDE, labels=True)
    root.attrs["ome"] = image_metadata("gland probability", levels, project_mpp)
    pred.attrs["ome"] = label_metadata("prediction", levels, project_mpp)
    return levels


# ---------------------------------------------------------------------------- the whole slide
def plan(slide: Slide, cfg: SlideConfig, infer_cfg: InferConfig, out: Path) -> tuple[SlideJob, np.ndarray,
                                                                                      float]:
    """The job, which blocks hold tissue, and the tissue fraction of the slide (on its overview)."""
    mpp = slide.require_mpp()
    scale = mpp / cfg.project_mpp  # output px per level-0 px
    height, width = max(1, round(slide.info.height * scale)), max(1, round(slide.info.width * scale))
    infer = asdict(replace(infer_cfg, blend="gaussian"))
    job = SlideJob(str(slide.path), mpp, cfg.project_mpp, str(out), height, width, cfg.block, cfg.margin, infer,
                   slide.backend)
    thumb, factor = slide.thumbnail(2048)
    tissue = tissue_mask(thumb)
    ny, nx = job.grid
    wanted = np.zeros((ny, nx), bool)
    per_block = cfg.block / scale / factor  # thumbnail px per block
    for by in range(ny):
        for bx in range(nx):
            y0, x0 = int(by * per_block), int(bx * per_block)
            y1, x1 = max(y0 + 1, int(math.ceil((by + 1) * per_block))), max(x0 + 1,
                                                                             int(math.ceil((bx + 1) * per_block)))
            patch = tissue[y0:y1, x0:x1]
            wanted[by, bx] = patch.size > 0 and patch.mean() >= cfg.min_tissue
    return job, wanted, float(tissue.mean())


def predict_slide(store: ProjectStore | None, slide_path: str | Path, cfg: SlideConfig, infer_cfg: InferConfig,
                  mpp: float | None = None, out: str | Path | None = None, device: str = "auto",
                  run_name: str | None = None, restart: bool = False, scheduler: str | None = None,
                  tasks_per_worker: int = 4, model: str | Path | None = None,
                  instances: InstanceConfig | None = None) -> Job[dict]:
    """Predict ``slide_path`` with the project's segmentation model (or the model file ``model``; then ``store``
    may be None and ``cfg.project_mpp`` should be the model's) into an OME-Zarr pyramid; resumable. Once every
    block is written, its glands are cut into objects as ``instances`` says (None: not).

    With ``scheduler`` (a dask.distributed address) the blocks are sent to that cluster's workers, which load the
    model once each; results land in the same zarr, so the output path must be visible to every worker."""
    from pipeline.stages.segment import stage_name

    t0 = time.perf_counter()
    if model is not None:
        from pipeline.stages.model_file import load_model_file

        checkpoint = Path(model)
        load_model_file(checkpoint)  # a bad file is one line now, not a failure in every block
    else:
        checkpoint = store.checkpoint_path(stage_name(run_name))
        if not checkpoint.is_file():
            raise OEEMError(f"{store.path}: no trained segmentation model; run `oeem train-seg {store.path}` first")
    out = Path(out) if out else default_output(store, slide_path)
    client = None
    if scheduler:  # before anything is touched: an address that does not answer changes nothing
        from pipeline.slides.cluster import connect

        client = connect(scheduler)
    with open_slide(slide_path, mpp, cfg.reader) as slide:
        job, wanted, tissue_fraction = plan(slide, cfg, infer_cfg, out)
        fingerprint = _fingerprint(job, checkpoint)
        notice = ""
        if out.exists():
            p = progress_path(out)
            previous = json.loads(p.read_text()) if p.is_file() else {}
            if previous.get("fingerprint") != fingerprint:
                if not restart:
                    raise OEEMError(f"{out}: holds a prediction of another slide, model or settings; pass "
                                    "--redo to replace it, or --out to write elsewhere")
                shutil.rmtree(out)
                progress_path(out).unlink(missing_ok=True)
        if not out.exists():
            _create_output(out, job, fingerprint)
        done = read_done(out, job.grid)
        resumed = int((done & wanted).sum())
        todo = [(int(by), int(bx)) for by, bx in zip(*np.nonzero(wanted & ~done))]
        total = int(wanted.sum())
        if resumed:
            notice = f"resuming: {resumed} of {total} blocks were already written"
        scale_note = (f"the slide ({job.slide_mpp:.4g} µm/px) is resampled x{job.slide_mpp / job.project_mpp:.3f} "
                      f"to the project's {job.project_mpp:.4g} µm/px")
        yield Progress("predict-slide", resumed, total, scale_note, notice=notice or scale_note)
        dev = resolve_device(device)
        step = resumed
        try:
            if client is not None:
                from pipeline.slides.cluster import run_on_cluster

                runner = run_on_cluster(client, job, checkpoint, todo, tasks_per_worker, device)
            else:
                runner = _run_here(job, checkpoint, todo, dev, slide)
            for finished in runner:
                for by, bx in finished:
                    done[by, bx] = True
                step += len(finished)
                _write_done(out, done, fingerprint)
                yield Progress("predict-slide", step, total, f"{step}/{total} tissue blocks")
        finally:
            if "runner" in locals():
                runner.close()  # a cancelled cluster run cancels its tasks
            if client is not None:
                client.close()
    complete = bool((done | ~wanted).all())
    try:
        levels = build_pyramid(out, job.project_mpp) if complete else 1
    except OSError as exc:
        raise OEEMError(f"{out}: the pyramid levels could not be written ({exc.strerror or exc}); every block is "
                        "kept - free some space and run the same command again to finish") from None
    glands = None
    if complete and instances is not None:
        from pipeline.slides.instances import slide_instances

        glands = yield from slide_instances(out, instances)
    _write_done(out, done, fingerprint, complete)
    seconds = time.perf_counter() - t0
    record = {"slide": slide.info.as_dict(), "output": str(out), "size": [job.height, job.width],
              "project_mpp": job.project_mpp, "resampled_by": job.slide_mpp / job.project_mpp,
              "resampling": scale_note, "blocks": {"grid": list(job.grid), "tissue": total,
                                                   "skipped_as_glass": int((~wanted).sum()),
                                                   "resumed": resumed, "predicted": total - resumed},
              "tissue_fraction": tissue_fraction, "levels": levels, "model": str(checkpoint),
              "config": asdict(cfg), "inference": job.infer, "instances": glands, "scheduler": scheduler,
              "device": str(dev),
              "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    atomic_write_json(record_path(out), record)
    import zarr

    root = zarr.open_group(str(out), mode="r+")
    root.attrs["oeem_slide_prediction"] = json.loads(json.dumps(record, default=str))
    return record


def _run_here(job: SlideJob, checkpoint: Path, todo: list[tuple[int, int]], dev, slide: Slide):
    """Blocks one by one in this process: yields each finished block as a one-element list."""
    from pipeline.stages.model_file import load_network

    model, seg_cfg = load_network(checkpoint, dev)
    for block in todo:
        yield write_blocks(job, model, seg_cfg, [block], dev, slide)
