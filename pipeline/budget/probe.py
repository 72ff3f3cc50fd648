"""The speed probe: a few real steps of each network of a run on random tensors, in the precision and with
the threads the run will use (torch is imported here only, when a probe runs)."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.config import PipelineConfig


@dataclass(frozen=True)
class Speeds:
    """What one unit of each kind of work costs on this machine, in seconds."""

    classifier_step: float  # one optimiser step of the classifier (classifier.batch_size patches)
    segmentation_step: float  # one optimiser step of the segmentation network (segmentation.batch_size crops)
    cam_per_mpx: float  # a megapixel of network input through the classifier for CAMs (every scale counts)
    predict_per_mpx: float  # a megapixel of sliding windows through the segmentation network
    evaluate_per_mpx: float  # a megapixel of prediction scored (pixel and object metrics)
    precision: str = "fp32"  # what the segmentation step computed in
    probe_seconds: float = 0.0  # what measuring took

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ZERO = Speeds(0.0, 0.0, 0.0, 0.0, 0.0)  # for questions that need no speed (what is left to do)


def _timed(fn: Callable[[], Any], steps: int, clock: Callable[[], float], sync: Callable[[], None],
           enough_s: float = 0.5, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls (oneDNN and cuDNN pick their kernels on the
    first; in bf16 the second call is still about 1.5x slower than the ones after it): up to ``steps`` timed calls,
    fewer once ``enough_s`` have passed (one 1.6 s step says enough; 0.05 s steps do not)."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = clock()
    n = 0
    while n < steps:
        fn()
        sync()
        n += 1
        if clock() - t0 >= enough_s:
            break
    return max(clock() - t0, 0.0) / n


def measure_speeds(cfg: PipelineConfig, device: Any = "auto", steps: int = 3,
                   clock: Callable[[], float] = time.perf_counter) -> Speeds:
    """Time real steps of each network of ``cfg`` on random tensors of the shapes the run uses, in the precision it
    will use (:func:`pipeline.device.resolve_precision`), with its threads: a classifier training step, a
    segmentation training step (its augmentation, loss, backward and SGD step), a CAM forward pass, a prediction
    window, and the scoring of one synthetic mask. Each after two warm-up calls, then up to ``steps`` timed calls
    or half a second of them, whichever comes first.

    Cost: about three segmentation steps and a second of the rest: 5-10 s on the cpu preset in fp32 on 2 cores,
    about a second on ``tiny`` (more while other jobs share the cores - as the run itself will be). Torch's global
    random state is left as it was."""
    t_start = clock()
    with _probing(device) as (dev, sync, gen):
        classifier_step, cam_per_mpx = _classifier_speeds(cfg, dev, steps, clock, sync, gen)
        segmentation_step, predict_per_mpx = _segmentation_speeds(cfg, dev, steps, clock, sync, gen)
    evaluate_per_mpx = _evaluate_speed(clock)
    return Speeds(classifier_step, segmentation_step, cam_per_mpx, predict_per_mpx, evaluate_per_mpx,
                  precision_name_for(cfg, dev), max(clock() - t_start, 0.0))


def measure_segmentation(cfg: PipelineConfig, speeds: Speeds, device: Any = "auto", steps: int = 8,
                         enough_s: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> Speeds:
    """``speeds`` with the segmentation step and the prediction re-measured, longer than at the run's start (up to
    ``steps`` calls or ``enough_s``): what :func:`resize_segmentation` sizes the rest of a run with, under the
    conditions of that moment."""
    t_start = clock()
    with _probing(device) as (dev, sync, gen):
        segmentation_step, predict_per_mpx = _segmentation_speeds(cfg, dev, steps, clock, sync, gen, enough_s)
    return dataclasses.replace(speeds, segmentation_step=segmentation_step, predict_per_mpx=predict_per_mpx,
                               probe_seconds=max(clock() - t_start, 0.0))


def precision_name_for(cfg: PipelineConfig, device: Any) -> str:
    """``fp32`` or ``bf16``: what the segmentation of ``cfg`` computes in on ``device`` (a name or a device)."""
    from pipeline.device import precision_name, resolve_device, resolve_precision

    dev = resolve_device(device) if isinstance(device, str) else device
    return precision_name(resolve_precision(cfg.segmentation.precision, dev))


@contextlib.contextmanager
def _probing(device: Any) -> Iterator[tuple[Any, Callable[[], None], Any]]:
    """(device, a sync for its timings, a seeded generator), with torch's random state and thread count put back
    afterwards: a probe must not change the run it measures."""
    import torch

    from pipeline.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(0)
            yield dev, sync, torch.Generator().manual_seed(0)
    finally:
        torch.set_num_threads(threads)


def _classifier_speeds(cfg: PipelineConfig, dev: Any, steps: int, clock: Callable[[], float],
                       sync: Callable[[], None], gen: Any) -> tuple[float, float]:
    """(s per training step, s per megapixel of CAM input), with the threads the classifier trains with."""
    import torch
    import torch.nn.functional as F

    from pipeline.device import autocast, in_layout, place, resolve_precision, set_threads
    from pipeline.stages.augment import random_resized_crop
    from pipeline.stages.models import build_classifier

    cc = cfg.classifier
    set_threads(cc.threads)
    net = place(build_classifier(cc), dev)
    opt = torch.optim.SGD(net.parameters(), lr=cc.lr, momentum=cc.momentum, weight_decay=cc.weight_decay)
    amp = resolve_precision(cc.precision, dev)
    size = cfg.patches.size
    patches = torch.randint(0, 256, (cc.batch_size, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 2, (cc.batch_size, 2)).float().to(dev)

    def step() -> None:
        x = random_resized_crop(patches.to(dev).float().div_(255), cc.input_size, cc.crop_scale, gen)
        with autocast(dev, amp):
            logits = net(in_layout(x))
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    net.train()
    per_step = _timed(step, steps, clock, sync)
    net.eval()
    cam_amp = resolve_precision(cfg.cam.precision, dev)
    if cfg.cam.mode == "patch":  # a batch of crops at the classifier's input size
        x = torch.randn(cfg.cam.batch_size, 3, cc.input_size, cc.input_size, device=dev)
    else:  # one whole image, as large as a GlaS image, at the classifier's zoom
        side = max(8, round(512 * cc.input_size / size))
        x = torch.randn(1, 3, side, side, device=dev)

    @torch.no_grad()
    def cam() -> None:
        with autocast(dev, cam_amp):
            out = net.cam(in_layout(x)).float()
        F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return per_step, _timed(cam, steps, clock, sync) / (x[:, 0].numel() / 1e6)


def _segmentation_speeds(cfg: PipelineConfig, dev: Any, steps: int, clock: Callable[[], float],
                         sync: Callable[[], None], gen: Any, enough_s: float = 0.5) -> tuple[float, float]:
    """(s per training step, s per megapixel of prediction windows), with the segmentation's threads."""
    import torch

    from pipeline.device import autocast, in_layout, place, resolve_precision, set_threads
    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import SegmentationStep, WeightAverage

    sc = cfg.segmentation
    set_threads(sc.threads)
    net = place(build_segmenter(sc), dev)
    opt = torch.optim.SGD(net.parameters(), lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay)
    amp = resolve_precision(sc.precision, dev)
    tiles = torch.randint(0, 256, (sc.batch_size, sc.tile_size, sc.tile_size, 3), dtype=torch.uint8)
    codes = torch.randint(0, 2, (sc.batch_size, sc.tile_size, sc.tile_size))
    average = WeightAverage(net, sc.ema_decay) if sc.ema_decay > 0 else None
    # the training's own step (after its CE warm-up), every pixel a pseudo-label
    seg_step = SegmentationStep(sc, dev, amp, gen, sc.verified_weight)
    late = sc.warmup_ce_iters

    def step() -> None:
        loss = seg_step.loss(net, *seg_step.augment(tiles, codes), late)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average is not None:
            average.update(net, 100)

    net.train()
    per_step = _timed(step, steps, clock, sync, enough_s)
    net.eval()
    ic = cfg.inference
    pred_amp = resolve_precision(ic.precision, dev)
    # about 0.3 megapixels of windows: a few small ones amortise each call as a run's batches do, one large one is
    # work enough
    n = min(ic.batch_size, max(1, round(0.3e6 / ic.crop_size ** 2)))
    windows = torch.randn(n, 3, ic.crop_size, ic.crop_size, device=dev)

    @torch.no_grad()
    def window() -> None:
        with autocast(dev, pred_amp):
            net(in_layout(windows)).float()

    return per_step, _timed(window, steps, clock, sync) / (windows[:, 0].numel() / 1e6)


def _evaluate_speed(clock: Callable[[], float], side: int = 384) -> float:
    """Seconds per megapixel of :func:`pipeline.stages.infer.evaluate`'s work (pixel confusion, object matching) on
    a synthetic gland mask against a shifted copy of itself."""
    import numpy as np

    from pipeline.io.synth import synth_tissue
    from pipeline.metrics import confusion, label_objects, object_counts

    _, truth = synth_tissue(side, side, seed=0)
    pred = np.roll(truth, 3, axis=1)
    t0 = clock()
    confusion(pred, truth)
    object_counts(label_objects(pred), label_objects(truth))
    return max(clock() - t0, 0.0) / (side * side / 1e6)
