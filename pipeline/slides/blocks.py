"""One block of a slide: the unit of work that one process, or one dask worker, predicts and writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import InferConfig
from pipeline.errors import OEEMError
from pipeline.slides.reader import Slide, open_slide


@dataclass(frozen=True)
class SlideJob:
    """Everything a process needs to predict blocks of one slide (picklable: sent to dask workers)."""

    slide: str
    slide_mpp: float
    project_mpp: float
    out: str
    height: int  # output size, px at the project's resolution
    width: int
    block: int
    margin: int
    infer: dict
    reader: str = "auto"

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.block), math.ceil(self.width / self.block)


# ---------------------------------------------------------------------------- one block
def predict_block(model, seg_cfg, infer_cfg: InferConfig, slide: Slide, job: SlideJob, by: int, bx: int,
                  device) -> tuple[np.ndarray, np.ndarray]:
    """Gland probability (uint8 0-255) and mask of block (by, bx), from the block plus its margin (the mask is
    cleaned with the margin in view, so a gland cut by the block's edge keeps its size)."""
    from pipeline.stages.infer import mask_from_probs, predict_probs

    y, x = by * job.block, bx * job.block
    h, w = min(job.block, job.height - y), min(job.block, job.width - x)
    m = job.margin
    region = slide.read_at(job.project_mpp, y - m, x - m, h + 2 * m, w + 2 * m)
    prob = predict_probs(model, region, infer_cfg, device, seg_cfg)
    mask = mask_from_probs(prob, infer_cfg)[m:m + h, m:m + w]
    prob = prob[1, m:m + h, m:m + w]
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8), mask


def write_blocks(job: SlideJob, model, seg_cfg, blocks: list[tuple[int, int]], device, slide: Slide | None = None
                 ) -> list[tuple[int, int]]:
    """Predict and write ``blocks``; returns them. Each block is exactly one chunk of each array, so two
    processes never write the same chunk and a block written twice (a retried task) gives the same bytes."""
    import zarr

    infer_cfg = InferConfig(**{**job.infer, "scales": tuple(job.infer["scales"])})
    own = slide is None
    slide = slide or open_slide(job.slide, job.slide_mpp, job.reader)
    try:
        root = zarr.open_group(job.out, mode="r+")
        prob_arr, mask_arr = root["0"], root["labels/prediction/0"]
        for by, bx in blocks:
            prob, mask = predict_block(model, seg_cfg, infer_cfg, slide, job, by, bx, device)
            y, x = by * job.block, bx * job.block
            try:
                prob_arr[y:y + prob.shape[0], x:x + prob.shape[1]] = prob
                mask_arr[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
            except OSError as exc:
                raise OEEMError(f"{job.out}: block ({by}, {bx}) could not be written ({exc.strerror or exc}); "
                                "the blocks written so far are kept - free some space and run the same command "
                                "again to resume") from None
    finally:
        if own:
            slide.close()
    return blocks
