"""How long a run will take, and a schedule that fits a time budget (``oeem run --budget 60m``, the plugin's
*Budget*).

Why: the same preset takes an hour on a CPU with native bf16 and about four on one without, and nothing said so
before the run ended. So every ``oeem run`` first measures this machine (:func:`measure_speeds`: a few real steps
of each network on random tensors, in the precision the run will use), counts the work each stage will do on
this project (:func:`project_facts`, :func:`estimate`), and says at its start how long each stage will take and
when it will end (:func:`plan_text`). With a budget, :func:`plan_for_budget` shrinks the preset's schedule until
its estimate fits, in a fixed order (see there), or refuses in one line that names the smallest budget that works.

Torch is imported only by the probe, so the plugin can use the rest without loading it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.stages.patches import grid_starts

if TYPE_CHECKING:
    from pipeline.progress import Job
    from pipeline.store import ProjectStore

DURATION_FORMS = "90s, 45m, 2h, 1h30m, or a number of minutes (60)"
# the schedule is sized to this share of the budget: the probe sees the networks, not the disk, and shared cores
# slow a run down after it was measured
SAFETY = 0.9
KEEP_ITERATIONS = 0.75  # a self-training round is kept while its iterations stay above this share of the preset's
# segmentation iterations shrink to this share of the preset's before classifier epochs do: above it more iterations
# buy little (1000 -> 2000: +2 validation points), below it much (500 -> 650: +5, docs/benchmarks.md)
ITERATION_KEEP = 0.5
ITERATION_FLOOR = 0.25  # segmentation iterations never go below this share of the preset's
EPOCH_FLOOR = 0.25  # nor classifier epochs
CAM_SCALES_KEPT = 2  # CAM scales beyond the two nearest 1 go early: scale 2 costs 2.3x scales 1 + 1.5 and added nothing
# seconds per image megapixel of what the probe does not time: reading and writing the store, stitching, the OEEM
# weight map and cleaning masks at full resolution (profiled on the sample project, 2 AVX2 cores: about 0.5 s/Mpx
# around the prediction's network, 0.6 around the CAMs')
IO_PER_MPX = {"patches": 0.2, "cams": 0.6, "segmentation": 0.2, "predict": 0.5}


# ---------------------------------------------------------------------------------------------- durations
def parse_duration(text: str | float | int) -> float:
    """Seconds of a duration as a person writes it: ``90s``, ``45m``, ``2h``, ``1h30m``; a bare number is minutes
    (the plugin's field, ``--budget 60``). Anything else is an :class:`OEEMError` naming the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60
    else:
        s = str(text).strip().lower().replace(" ", "")
        number = r"(\d+(?:\.\d+)?)"
        bare = re.fullmatch(number, s)
        parts = re.fullmatch(rf"(?:{number}h)?(?:{number}m(?:in)?)?(?:{number}s)?", s)
        if bare:
            seconds = float(bare.group(1)) * 60
        elif parts and s:
            h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
            seconds = h * 3600 + m * 60 + sec
        else:
            raise OEEMError(f"{text!r} is not a duration: accepted forms are {DURATION_FORMS}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise OEEMError(f"a time budget must be longer than 0 (got {text!r}): accepted forms are {DURATION_FORMS}")
    return seconds


def fmt_duration(seconds: float) -> str:
    """``12 s``, ``4.5 min``, ``5 min``, ``1 h 32 min``: what a person reads at a glance."""
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        minutes = seconds / 60
        return f"{minutes:.0f} min" if minutes == round(minutes) else f"{minutes:.1f} min"
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min"


def fmt_clock(when: datetime, now: datetime) -> str:
    """``14:32``, or ``Tue 09:10`` when it is not today."""
    return f"{when:%H:%M}" if when.date() == now.date() else f"{when:%a %H:%M}"


# ---------------------------------------------------------------------------------------------- the probe
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

    from pipeline.config import NORMS
    from pipeline.device import autocast, in_layout, place, resolve_precision, set_threads
    from pipeline.stages.augment import photometric, random_rot90, random_zoom_crop, stain_jitter
    from pipeline.stages.losses import segmentation_loss
    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import IGNORE, WeightAverage

    sc = cfg.segmentation
    set_threads(sc.threads)
    net = place(build_segmenter(sc), dev)
    opt = torch.optim.SGD(net.parameters(), lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay)
    amp = resolve_precision(sc.precision, dev)
    mean = torch.tensor(NORMS[sc.input_norm][0], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(NORMS[sc.input_norm][1], device=dev).view(1, 3, 1, 1)
    tiles = torch.randint(0, 256, (sc.batch_size, 3, sc.tile_size, sc.tile_size), dtype=torch.uint8)
    codes = torch.randint(0, 2, (sc.batch_size, sc.tile_size, sc.tile_size))
    average = WeightAverage(net, sc.ema_decay) if sc.ema_decay > 0 else None
    kw = dict(kind=sc.loss, ignore_index=IGNORE, ohem_thresh=sc.ohem_thresh, ohem_min_kept=sc.ohem_min_kept,
              temperature=sc.weight_temperature)

    def step() -> None:
        x, target = random_zoom_crop(tiles.to(dev).float().div_(255), codes.to(dev), sc.crop_size, sc.ratio_range,
                                     gen, IGNORE)
        if sc.rotate90:
            x, target = random_rot90(x, target, gen)
        x = (photometric(stain_jitter(x, sc.stain_jitter, gen), gen) - mean) / std
        with autocast(dev, amp):
            main, aux = net(in_layout(x), with_aux=True)
        loss = segmentation_loss(main.float(), target, **kw) + sc.aux_weight * segmentation_loss(aux.float(), target,
                                                                                                 **kw)
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


# ---------------------------------------------------------------------------------------------- the work
@dataclass(frozen=True)
class ProjectFacts:
    """The counts a run's work follows from, read from the project."""

    train_patches: int  # labelled training patches: the classifier's data
    cam_images: tuple[tuple[int, int, int], ...]  # (height, width, patches) of each image with patch labels
    images: tuple[tuple[int, int], ...]  # (height, width) of every image: the final prediction
    scored: tuple[tuple[int, int], ...]  # (height, width) of every image with a gland mask: the evaluation


def project_facts(store: ProjectStore, cfg: PipelineConfig) -> ProjectFacts:
    """The counts of ``store``: from its patch labels once ``oeem patches`` made them, else from the patch grid
    of every training and validation image (as if each had labels)."""
    from pipeline.stages.patches import patch_grid

    summary = (store.load_run("patches") or {}).get("summary") or {}
    labelled = store.labelled_images()
    cam_images, grid_train = [], 0
    for n in labelled or store.names("train") + store.names("val"):
        h, w = store.shape(n)
        if labelled:
            count = len(store.read(n, "patch_corners"))
        else:
            count = len(patch_grid((h, w), cfg.patches.size, cfg.patches.stride))
            grid_train += count if store.split(n) == "train" else 0
        cam_images.append((h, w, count))
    images = tuple(store.shape(n) for n in store.names())
    scored = tuple(store.shape(n) for n in store.names() if store.has(n, "mask"))
    return ProjectFacts(int(summary.get("patches", grid_train)) if labelled else grid_train, tuple(cam_images),
                        images, scored)


def cam_megapixels(cfg: PipelineConfig, facts: ProjectFacts) -> float:
    """Megapixels the classifier sees to make every CAM: per patch and scale, the crops ``patch_cams`` cuts (mode
    ``patch``), or each whole image per scale (mode ``image``)."""
    size, inp = cfg.patches.size, cfg.classifier.input_size
    total = 0.0
    for h, w, patches in facts.cam_images:
        for s in cfg.cam.scales:
            if cfg.cam.mode == "patch":
                crops = len(grid_starts(max(size, round(size * s)), size, size // 2)) ** 2
                total += patches * crops * inp * inp
            else:
                zoom = s * inp / size
                total += max(8, round(h * zoom)) * max(8, round(w * zoom))
    return total / 1e6


def predict_megapixels(cfg: PipelineConfig, shapes: Collection[tuple[int, ...]]) -> float:
    """Megapixels of sliding windows the segmentation network sees to predict ``shapes`` (every scale, flip)."""
    ic, crop = cfg.inference, cfg.inference.crop_size
    total = 0.0
    for h, w, *_ in shapes:
        for s in ic.scales:
            s = s * cfg.segmentation.working_scale
            hh, ww = max(crop, max(8, round(h * s))), max(crop, max(8, round(w * s)))
            windows = len(grid_starts(hh, crop, ic.stride)) * len(grid_starts(ww, crop, ic.stride))
            total += windows * crop * crop * (2 if ic.flip else 1)
    return total / 1e6


def _mpx(shapes: Collection[tuple[int, ...]]) -> float:
    return sum(s[0] * s[1] for s in shapes) / 1e6


@dataclass(frozen=True)
class StageEstimate:
    key: str  # patches, classifier, cams, segmentation, round-1 ..., predict, evaluate
    label: str  # what the plan line calls it
    seconds: float  # 0 when done
    detail: str  # the work, e.g. "8 epochs x 440 steps"
    done: bool = False


@dataclass(frozen=True)
class Estimate:
    stages: tuple[StageEstimate, ...]

    @property
    def total(self) -> float:
        return sum(s.seconds for s in self.stages)

    def seconds(self) -> dict[str, float]:
        return {s.key: round(s.seconds, 1) for s in self.stages}

    @property
    def nothing_to_do(self) -> bool:
        """Only the evaluation is left (every stage that trains or predicts is done)."""
        return all(s.done for s in self.stages if s.key != "evaluate")


def round_keys(cfg: PipelineConfig) -> list[str]:
    return ["segmentation"] + [f"round-{r}" for r in range(1, cfg.selftrain.rounds + 1)]


def estimate(cfg: PipelineConfig, speeds: Speeds, facts: ProjectFacts, done: Collection[str] = ()) -> Estimate:
    """Seconds of each stage of ``oeem run`` with ``cfg`` (``run_all``'s order): patches, classifier (epochs x
    patches // batch steps), CAMs (every scale), segmentation round 0, each self-training round (the labelled
    images predicted, then the next training; the last one ``selftrain.last_round_scale`` x as long), the final
    prediction of every image and the evaluation. ``done``: the keys of stages already done with these settings
    (:func:`done_stages`), which take 0 s. A training resumed from a checkpoint is counted whole; a training's
    first step (slower: the kernels are chosen) and its checkpoints are not counted."""
    io = IO_PER_MPX
    out = []
    cam_mpx = _mpx(facts.cam_images)
    out.append(StageEstimate("patches", "patches", io["patches"] * cam_mpx,
                             f"{len(facts.cam_images)} images", "patches" in done))
    cc = cfg.classifier
    per_epoch = max(1, facts.train_patches // cc.batch_size)
    passes = cc.passes_for(facts.train_patches)
    detail = f"{cc.epochs} epoch{'s' if cc.epochs > 1 else ''} x {per_epoch} steps"
    if passes > cc.epochs:  # few labelled patches: each epoch passes over them several times
        detail = f"{cc.epochs} epochs of {cc.min_epoch_steps}+ steps: {passes} passes x {per_epoch} steps"
    out.append(StageEstimate("classifier", "classifier", passes * per_epoch * speeds.classifier_step, detail,
                             "classifier" in done))
    scales = ", ".join(f"{s:g}" for s in cfg.cam.scales)
    reuse = "cams-reuse" in done  # same CAMs, other pseudo-mask settings: no network
    cams = (0.0 if reuse else cam_megapixels(cfg, facts) * speeds.cam_per_mpx) + io["cams"] * cam_mpx
    out.append(StageEstimate("cams", "CAMs", cams, f"scales {scales}, {len(facts.cam_images)} images"
                             + (" (CAMs kept, pseudo-masks again)" if reuse else ""), "cams" in done))
    selftrain_predict = predict_megapixels(cfg, facts.cam_images) * speeds.predict_per_mpx + io["predict"] * cam_mpx
    for r, key in enumerate(round_keys(cfg)):
        seg = cfg.segmentation_for_round(r)
        iterations = seg.training_iterations() if r == 0 or seg.label_source != "mask" else 0
        train = (iterations * speeds.segmentation_step + io["segmentation"] * cam_mpx) if iterations else 0.0
        if r == 0:
            out.append(StageEstimate(key, "segmentation", train, f"{iterations} iterations", key in done))
            continue
        predict_first = f"{key}-labels" not in done  # this round's labels are made already
        seconds = (selftrain_predict if predict_first else 0.0) + (train if f"{key}-train" not in done else 0.0)
        detail = (f"{len(facts.cam_images)} images predicted, " if predict_first else "") + \
            (f"{iterations} iterations" if iterations else "labels only (trained on masks)")
        out.append(StageEstimate(key, f"self-training round {r}", seconds, detail, key in done))
    ic = cfg.inference
    how = f"{len(ic.scales)} scale{'s' if len(ic.scales) > 1 else ''}" + (" + flip" if ic.flip else "")
    out.append(StageEstimate("predict", "prediction",
                             predict_megapixels(cfg, facts.images) * speeds.predict_per_mpx
                             + io["predict"] * _mpx(facts.images),
                             f"{len(facts.images)} images, {how}", "predict" in done))
    out.append(StageEstimate("evaluate", "evaluation", _mpx(facts.scored) * speeds.evaluate_per_mpx,
                             f"{len(facts.scored)} images with masks"))
    return Estimate(tuple(dataclasses.replace(s, seconds=0.0) if s.done else s for s in out))


def done_stages(store: ProjectStore, cfg: PipelineConfig) -> set[str]:
    """The stages :func:`pipeline.stages.run.run_all` will skip with ``cfg`` on this project, as :func:`estimate`
    keys: a stage redone upstream makes everything after it redone too."""
    from pipeline.stages.cams import cams_reusable
    from pipeline.stages.status import stage_done

    done: set[str] = set()
    if not stage_done(store, "patches", cfg):
        return done
    done.add("patches")
    if not stage_done(store, "classifier", cfg):
        return done
    done.add("classifier")
    if not stage_done(store, "cams", cfg):
        if cfg.cam.pseudo_from == "stitched" and cams_reusable(store, cfg.cam):
            done.add("cams-reuse")
        return done
    done.add("cams")
    # run_all's loop: a training when the model of the labels the project holds now is not done, then, for each
    # round still to come, new labels from a prediction and a training on them. Trained on the gland masks, the
    # model is trained once; the rounds still predict and refine (their labels train nothing).
    mask = cfg.segmentation.label_source == "mask"
    now = store.pseudo_round  # the round whose labels the project holds
    keys = round_keys(cfg)
    current = 0 if mask else min(now, len(keys) - 1)  # the line whose training is the current labels' model
    trained = stage_done(store, "segmentation", cfg)
    for r, key in enumerate(keys):
        if r > 0 and r <= now:
            done.add(f"{key}-labels")
        if r < current or (r == current and trained) or (mask and r > current):
            done.add(f"{key}-train")
        if f"{key}-train" not in done or (r > 0 and f"{key}-labels" not in done):
            return done
        done.add(key)
    rec = store.load_run("predict") or {}
    if stage_done(store, "predict", cfg) and rec.get("images") == len(store.names()):
        done.add("predict")
    return done


# ---------------------------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class Schedule:
    """The knobs a budget turns."""

    rounds: int
    iterations: int
    epochs: int
    scales: tuple[float, ...]


def _apply(cfg: PipelineConfig, base: PipelineConfig, s: Schedule) -> PipelineConfig:
    new = copy.deepcopy(cfg)
    new.selftrain = dataclasses.replace(cfg.selftrain, rounds=s.rounds)
    seg = base.segmentation
    full = seg.full_iterations
    if seg.label_source == "mask" and full > 0 and s.iterations != seg.iterations:  # what trains on masks, alike
        full = max(1, round(full * s.iterations / seg.iterations))
    new.segmentation = dataclasses.replace(cfg.segmentation, iterations=s.iterations, full_iterations=full)
    new.classifier = dataclasses.replace(cfg.classifier, epochs=s.epochs)
    new.cam = dataclasses.replace(cfg.cam, scales=s.scales)
    return new


def _nice(iterations: int) -> int:
    """Iterations rounded down to tens above 100 (plans read better, and a re-plan moves less)."""
    return iterations if iterations <= 100 else iterations - iterations % 10


def _ladder(base: PipelineConfig) -> list[tuple[Schedule, str | None, int]]:
    """The schedules a budget tries, in order: (schedule, the knob sized continuously or None, its floor)."""
    rounds, its, epochs = base.selftrain.rounds, base.segmentation.iterations, base.classifier.epochs
    scales = tuple(base.cam.scales)
    floor_i, floor_e = max(1, math.ceil(its * ITERATION_FLOOR)), max(1, math.ceil(epochs * EPOCH_FLOOR))
    keep_i = max(floor_i, math.ceil(its * ITERATION_KEEP))
    # CAM scales by how cheap they are: the nearest 1 first, then the smaller of two equally far
    by_cost = sorted(scales, key=lambda s: (abs(math.log(s)), s))

    def keeping(k: int) -> tuple[float, ...]:
        return tuple(s for s in scales if s in by_cost[:k])

    two = keeping(CAM_SCALES_KEPT)
    steps: list[tuple[Schedule, str | None, int]] = []
    # 1. CAM scales beyond the two nearest 1; 2. self-training rounds, each kept while its iterations stay near
    # the preset's
    for r in range(rounds, 0, -1):
        steps.append((Schedule(r, its, epochs, two), "iterations", max(floor_i, math.ceil(its * KEEP_ITERATIONS))))
    steps.append((Schedule(0, its, epochs, two), "iterations", keep_i))  # 3. iterations down to half the preset's
    steps.append((Schedule(0, keep_i, epochs, two), "epochs", floor_e))  # 4. classifier epochs, down to their floor
    # 5. iterations down to their floor with the preset's epochs (where the classifier is cheap, as on a few small
    # images, keeping its epochs costs a few iterations), else with epochs at their floor
    steps.append((Schedule(0, keep_i, epochs, two), "iterations", floor_i))
    steps.append((Schedule(0, keep_i, floor_e, two), "iterations", floor_i))
    for k in range(len(two) - 1, 0, -1):  # 6. the last CAM scales, the costliest first, down to the one nearest 1
        steps.append((Schedule(0, floor_i, floor_e, keeping(k)), None, 0))
    return steps


def plan_for_budget(cfg: PipelineConfig, speeds: Speeds, facts: ProjectFacts, budget_s: float,
                    done_for: Callable[[PipelineConfig], Collection[str]] = lambda c: (),
                    spent_s: float = 0.0) -> tuple[PipelineConfig, Estimate]:
    """The configuration whose :func:`estimate` fits ``SAFETY`` x (``budget_s`` - ``spent_s``, what the run has
    used already), and that estimate. A budget never lengthens the preset's schedule; when it is too short, the
    schedule shrinks in this order, each step only when the one before cannot fit:

    1. CAM scales beyond the two nearest 1 (``CAM_SCALES_KEPT``);
    2. self-training rounds, one by one; while a round is kept its segmentation iterations may shrink to
       ``KEEP_ITERATIONS`` of the preset's (a round on an underfitted model makes worse labels);
    3. segmentation iterations, down to ``ITERATION_KEEP`` of the preset's;
    4. classifier epochs, down to ``EPOCH_FLOOR`` of the preset's;
    5. segmentation iterations, down to ``ITERATION_FLOOR`` of the preset's: with the preset's epochs where that
       fits (a cheap classifier, as on a few small images), else with epochs at their floor;
    6. the last CAM scales, largest first, down to the one nearest 1.

    After 4 or 6 the time a whole epoch or scale leaves over goes back to segmentation iterations
    (:func:`fill_iterations`). The order follows what each knob bought per minute on GlaS in fp32
    (docs/benchmarks.md, *Quality against a time budget*).

    ``done_for(cfg)`` names the stages already done with ``cfg`` (:func:`done_stages`): they cost nothing. Too
    short a budget is an :class:`OEEMError` naming the smallest that works."""
    room = SAFETY * (budget_s - spent_s)

    def cost(c: PipelineConfig) -> Estimate:
        return estimate(c, speeds, facts, done_for(c))

    est = cost(cfg)
    if est.total <= room:
        return cfg, est
    smallest = None
    for schedule, knob, floor in _ladder(cfg):
        if knob is None:
            c = _apply(cfg, cfg, schedule)
            smallest = cost(c)
            if smallest.total <= room:
                c = fill_iterations(c, cost, room, cfg.segmentation.iterations)
                return c, cost(c)
            continue
        top = getattr(schedule, knob)

        def at(v: int) -> PipelineConfig:
            return _apply(cfg, cfg, dataclasses.replace(schedule, **{knob: v}))

        low = cost(at(floor))
        smallest = low
        if low.total > room:
            continue
        lo = _largest_fitting(floor, top, lambda v: cost(at(v)).total <= room)
        value = _nice(lo) if knob == "iterations" else lo
        value = max(value, floor)
        c = at(value)
        if knob != "iterations":
            c = fill_iterations(c, cost, room, cfg.segmentation.iterations)
        return c, cost(c)
    need = spent_s + (smallest.total if smallest else est.total) / SAFETY
    raise OEEMError(f"a {fmt_duration(budget_s)} budget is too small on this machine: the smallest schedule takes "
                    f"about {fmt_duration(spent_s + (smallest or est).total)}; give --budget "
                    f"{math.ceil(need / 60)}m or more")


def fill_iterations(c: PipelineConfig, cost: Callable[[PipelineConfig], Estimate], room: float,
                    most: int) -> PipelineConfig:
    """``c`` with as many segmentation iterations (up to ``most``, the preset's) as still fit ``room``: once
    epochs or CAM scales had to shrink, the time a whole epoch or scale left over goes to the segmentation."""
    seg = c.segmentation
    lo = _largest_fitting(seg.iterations, most, lambda v: cost(with_iterations(c, v)).total <= room)
    value = max(seg.iterations, _nice(lo))
    return c if value == seg.iterations else with_iterations(c, value)


def with_iterations(c: PipelineConfig, v: int) -> PipelineConfig:
    """``c`` with ``v`` segmentation iterations; what trains on masks grows or shrinks alike, as :func:`_apply`
    sized it."""
    seg = c.segmentation
    new = copy.deepcopy(c)
    full = seg.full_iterations
    if seg.label_source == "mask" and full > 0:
        full = max(1, round(full * v / seg.iterations))
    new.segmentation = dataclasses.replace(seg, iterations=v, full_iterations=full)
    return new


def _largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest value in [lo, hi] that ``fits`` (lo when none above it does): a schedule's cost grows with each
    knob, so a bisection finds it in a few estimates."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def sized_settings(before: PipelineConfig, after: PipelineConfig) -> dict[str, list]:
    """The settings a budget changed: dotted key -> [preset's, sized]."""
    pairs = {"selftrain.rounds": (before.selftrain.rounds, after.selftrain.rounds),
             "segmentation.iterations": (before.segmentation.iterations, after.segmentation.iterations),
             "segmentation.full_iterations": (before.segmentation.full_iterations,
                                              after.segmentation.full_iterations),
             "classifier.epochs": (before.classifier.epochs, after.classifier.epochs),
             "cam.scales": (list(before.cam.scales), list(after.cam.scales))}
    return {k: [a, b] for k, (a, b) in pairs.items() if a != b}


# ---------------------------------------------------------------------------------------------- the plan
def plan_text(est: Estimate, now: datetime, speeds: Speeds | None = None, budget_s: float | None = None,
              sized: dict[str, list] | None = None) -> str:
    """What a run says at its start: one line per stage with its expected duration and the wall-clock time it
    should end, then the total and the expected end (and the budget, with what it changed)."""
    head = "expected duration of each stage"
    if speeds is not None:
        head += (f" (speed measured in {speeds.probe_seconds:.1f} s, {speeds.precision}: classifier "
                 f"{speeds.classifier_step:.3g} s/step, segmentation {speeds.segmentation_step:.3g} s/step)")
    lines = [head + ":"]
    t = now
    for s in est.stages:
        if s.done:
            lines.append(f"  {s.label:<22} done")
            continue
        t = t + timedelta(seconds=s.seconds)
        lines.append(f"  {s.label:<22} {fmt_duration(s.seconds):>10}  ends ~{fmt_clock(t, now)}  ({s.detail})")
    end = now + timedelta(seconds=est.total)
    total = f"  {'total':<22} {fmt_duration(est.total):>10}  expected end {fmt_clock(end, now)}"
    if budget_s is not None:
        total += f" (budget {fmt_duration(budget_s)})"
    lines.append(total)
    if budget_s is not None:
        if sized:
            lines.append("  sized to the budget: " + ", ".join(f"{k} {_shown(a)} -> {_shown(b)}"
                                                             for k, (a, b) in sized.items()))
        else:
            lines.append("  the preset's schedule fits the budget")
    return "\n".join(lines)


def _shown(v: Any) -> str:
    return ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else str(v)


# ---------------------------------------------------------------------------------------------- a run's start
def _plain(obj: Any) -> Any:
    """JSON's view of a configuration (tuples become lists), to compare it with a saved one."""
    import json

    return json.loads(json.dumps(obj))


def start_of_run(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", budget_s: float | None = None,
                 speeds: Speeds | None = None, spent_s: float = 0.0,
                 now: Callable[[], datetime] = datetime.now) -> Job[tuple[PipelineConfig, dict]]:
    """What ``oeem run`` does before its first training: measure the speed (unless ``speeds`` is given), estimate
    what is left to do, and with ``budget_s`` size the schedule to fit it (``spent_s``: seconds the run has used
    already). Yields the plan as a notice (its ``expected_s`` metric is the total, for the plugin's end time) and
    returns the configuration to run with and the report's ``estimate`` entry.

    A budget's schedule is kept in the run record ``budget``: the same budget on the same settings resumes it
    instead of sizing afresh from a new measurement (which would move the settings a little and redo the stages
    already trained)."""
    from pipeline.config import from_dict, to_dict
    from pipeline.progress import Progress

    base, resumed = cfg, None
    if budget_s is not None:
        rec = store.load_run("budget") or {}
        if rec.get("budget_s") == budget_s and rec.get("base") == _plain(to_dict(cfg)):
            try:
                cfg, resumed = from_dict(PipelineConfig, rec["config"]), rec
            except (OEEMError, KeyError, TypeError):  # saved by another version: size afresh
                cfg, resumed = base, None
    facts = project_facts(store, cfg)
    if speeds is None and estimate(cfg, ZERO, facts, done_stages(store, cfg)).nothing_to_do:
        text = "every stage is done with these settings: only the evaluation runs"
        yield Progress("estimate", 1, 1, "", notice=text)
        return cfg, {"seconds": {}, "total_s": 0.0, "lines": text, "budget_s": budget_s}
    if speeds is None:
        yield Progress("estimate", 0, 1, "measuring this machine's speed")
        speeds = measure_speeds(cfg, device)
        spent_s += speeds.probe_seconds
    if budget_s is not None and resumed is None:
        cfg, est = plan_for_budget(cfg, speeds, facts, budget_s, lambda c: done_stages(store, c), spent_s)
    else:
        est = estimate(cfg, speeds, facts, done_stages(store, cfg))
    sized = sized_settings(base, cfg) if budget_s is not None else None
    started = now()
    text = plan_text(est, started, speeds, budget_s, sized)
    if resumed is not None:
        text += f"\n  (the schedule sized for this budget on {resumed.get('made', '?')[:16]}, resumed)"
    entry = {"seconds": est.seconds(), "total_s": round(est.total, 1),
             "ends_at": (started + timedelta(seconds=est.total)).isoformat(timespec="seconds"),
             "speeds": speeds.as_dict(), "budget_s": budget_s, "sized": sized, "lines": text}
    if budget_s is not None and resumed is None:
        store.save_run("budget", {"budget_s": budget_s, "base": _plain(to_dict(base)),
                                  "config": _plain(to_dict(cfg)), "made": started.isoformat(timespec="seconds"),
                                  "estimate": entry})
    yield Progress("estimate", 1, 1, "", {"expected_s": round(est.total, 1)}, notice=text)
    return cfg, entry


def resize_segmentation(store: ProjectStore, cfg: PipelineConfig, device: str, budget_s: float, spent_s: float,
                        now: Callable[[], datetime] = datetime.now,
                        measure: Callable[..., Speeds] = measure_segmentation) -> Job[tuple[PipelineConfig, dict]]:
    """Before each segmentation training a budgeted run sizes the iterations again, from the time actually left
    (``budget_s`` - ``spent_s``) and the segmentation's speed: before the first training measured once more
    (:func:`measure_segmentation`), before a self-training round's training the speed the training before it
    ran at, checkpoints and data included.

    Why: the start's probe times a few steps in a few seconds, and on a shared or throttled machine those can be
    25 % off either way (bf16 on 2 Xeon cores: 0.36-0.62 s for a step that took 0.45 in the run), so a run ended
    30 % early; and a probe times the network, not the loop around it (about 0.05 s a step there). By now the
    classifier and the CAMs have taken what they took; left to size are the iterations (between
    ``ITERATION_FLOOR`` and the preset's) and the self-training rounds still to come, which go first as in
    :func:`plan_for_budget` (none is added). Once per training: each choice is kept in the run record ``budget``
    so a resumed run trains the same schedule. Returns the configuration and the report's entry for this
    training (empty when there was nothing to resize)."""
    from pipeline.config import from_dict, to_dict
    from pipeline.progress import Progress

    rec = store.load_run("budget") or {}
    labels_round = store.pseudo_round  # the labels the next training learns from: its round
    sizes = rec.get("resized") or {}
    if rec.get("budget_s") != budget_s or str(labels_round) in sizes or "estimate" not in rec:
        return cfg, {}
    try:
        base = from_dict(PipelineConfig, rec["base"])
        speeds = Speeds(**rec["estimate"]["speeds"])
    except (OEEMError, KeyError, TypeError):  # saved by another version: keep the plan
        return cfg, {}
    last = (store.load_run("segmentation") or {}) if labels_round > 0 else {}
    if last.get("it_per_s") and last.get("precision", speeds.precision) == speeds.precision:
        speeds = dataclasses.replace(speeds, segmentation_step=1.0 / last["it_per_s"], probe_seconds=0.0)
        how = f"the last training ran {speeds.segmentation_step:.3g} s/step"
    else:
        yield Progress("estimate", 0, 1, "measuring the segmentation's speed again")
        speeds = measure(cfg, speeds, device)
        spent_s += speeds.probe_seconds
        how = f"segmentation measured again: {speeds.segmentation_step:.3g} s/step"
    facts = project_facts(store, cfg)
    room = SAFETY * (budget_s - spent_s)

    def at(rounds: int, v: int) -> PipelineConfig:
        c = with_iterations(cfg, v)
        c.selftrain = dataclasses.replace(c.selftrain, rounds=rounds)
        return c

    def cost(c: PipelineConfig) -> Estimate:
        return estimate(c, speeds, facts, done_stages(store, c))

    most = base.segmentation.iterations
    floor = max(1, math.ceil(most * ITERATION_FLOOR))
    planned, planned_rounds = cfg.segmentation.iterations, cfg.selftrain.rounds
    # as the plan: a round still to come is kept only while the training it refines stays near the preset's
    # iterations, so a round goes before the iterations fall below that; the round whose labels are made stays
    rounds, low = labels_round, floor
    for r in range(planned_rounds, labels_round, -1):
        keep = max(floor, math.ceil(most * KEEP_ITERATIONS))
        if cost(at(r, keep)).total <= room:
            rounds, low = r, keep
            break
    iterations = max(low, _nice(_largest_fitting(low, most, lambda v: cost(at(rounds, v)).total <= room)))
    new = cfg if (iterations, rounds) == (planned, planned_rounds) else at(rounds, iterations)
    est = cost(new)
    started = now()
    left = budget_s - spent_s
    where = "the segmentation's start" if labels_round == 0 else f"self-training round {labels_round}'s training"
    head = f"at {where}, {fmt_duration(spent_s)} of the {fmt_duration(budget_s)} budget used ({how}): "
    changes = [f"{k} {a} -> {b}" for k, a, b in (("selftrain.rounds", planned_rounds, rounds),
                                                 ("segmentation.iterations", planned, iterations)) if a != b]
    head += ", ".join(changes) if changes else f"{planned} iterations as planned"
    end = fmt_clock(started + timedelta(seconds=est.total), started)
    text = head + f"; the rest takes about {fmt_duration(est.total)}, expected end {end}"
    if est.total > left:
        text += (f" - {fmt_duration(est.total - left)} past the budget even at the fewest iterations "
                 f"({floor}): the run goes on")
    entry = {"round": labels_round, "spent_s": round(spent_s, 1), "left_s": round(left, 1),
             "planned_iterations": planned, "iterations": iterations, "planned_rounds": planned_rounds,
             "rounds": rounds, "speeds": speeds.as_dict(), "seconds": est.seconds(), "total_s": round(est.total, 1),
             "lines": text}
    store.save_run("budget", {**rec, "config": _plain(to_dict(new)), "resized": {**sizes, str(labels_round): entry}})
    yield Progress("estimate", 1, 1, "", {"expected_s": round(est.total, 1)}, notice=text)
    return new, entry


ZERO = Speeds(0.0, 0.0, 0.0, 0.0, 0.0)  # for questions that need no speed (what is left to do)
