"""The work model: what a run will do on a project (counted from the project, the steps the stage graph
says are done taking nothing) and what it costs at the probe's speeds."""
from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.budget.probe import Speeds
from pipeline.config import PipelineConfig
from pipeline.stages.graph import round_line
from pipeline.stages.patches import grid_starts

if TYPE_CHECKING:
    from pipeline.store import ProjectStore

# seconds per image megapixel of what the probe does not time: reading and writing the store, stitching, the OEEM
# weight map and cleaning masks at full resolution (profiled on the sample project, 2 AVX2 cores: about 0.5 s/Mpx
# around the prediction's network, 0.6 around the CAMs')
IO_PER_MPX = {"patches": 0.2, "cams": 0.6, "segmentation": 0.2, "predict": 0.5}
# the instances step has no network: cutting the mask into glands and writing the ids, about 0.08 s per megapixel
# on 2 cores (benchmarks/instances.py: 19 ms per 0.4 Mpx GlaS image, plus the store)
INSTANCES_PER_MPX = 0.08


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
            total += windows * crop * crop * len(ic.orientations())
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
    for r in range(cfg.selftrain.rounds + 1):
        key = round_line(r)
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
    how = f"{len(ic.scales)} scale{'s' if len(ic.scales) > 1 else ''}" + (
        " x 8 orientations" if ic.dihedral else " + flip" if ic.flip else "")
    out.append(StageEstimate("predict", "prediction",
                             predict_megapixels(cfg, facts.images) * speeds.predict_per_mpx
                             + io["predict"] * _mpx(facts.images),
                             f"{len(facts.images)} images, {how}", "predict" in done))
    out.append(StageEstimate("instances", "glands as objects", INSTANCES_PER_MPX * _mpx(facts.images),
                             f"{len(facts.images)} images, {cfg.instances.method}", "instances" in done))
    out.append(StageEstimate("evaluate", "evaluation", _mpx(facts.scored) * speeds.evaluate_per_mpx,
                             f"{len(facts.scored)} images with masks"))
    return Estimate(tuple(dataclasses.replace(s, seconds=0.0) if s.done else s for s in out))


def done_stages(store: ProjectStore, cfg: PipelineConfig) -> set[str]:
    """The steps and plan lines :func:`pipeline.stages.run.run_all` will skip with ``cfg`` on this project, as the
    stage graph decides (:func:`pipeline.stages.graph.done_keys`), and ``cams-reuse`` when the CAMs must be made
    again but only their pseudo-masks change (no network then)."""
    from pipeline.stages.cams import cams_reusable
    from pipeline.stages.graph import done_keys

    done = done_keys(store, cfg)
    if "classifier" in done and "cams" not in done and cfg.cam.pseudo_from == "stitched" \
            and cams_reusable(store, cfg.cam):
        done.add("cams-reuse")
    return done
