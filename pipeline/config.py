"""Run configuration as small dataclasses, saved as JSON next to every result so a run can be reproduced.

Two presets share one code path: ``paper`` follows the MICCAI 2022 settings (ResNet38d, meant for a GPU) and
``cpu`` (a light ResNet classifier, a plain U-Net at half resolution, short schedules) finishes on 2 CPU cores
in under an hour on GlaS. ``tiny`` exists for tests and the embedded sample data.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import OEEMError

# GlaS statistics on [0, 1] RGB (from the reference code); used by the classifier.
GLAS_MEAN = (0.787, 0.511, 0.785)
GLAS_STD = (0.167, 0.248, 0.131)
# ImageNet statistics: used by the segmentation stage, as the reference does.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LOSS_KINDS = ("ce", "ohem", "c_max", "c_diff", "l_norm", "lc_mix")
PRESETS = ("paper", "cpu", "tiny")
BACKBONES = ("resnet_os8", "resnet38d", "unet")  # unet: a plain U-Net encoder, stage 2 only


@dataclass
class BackboneConfig:
    """``resnet38d`` (the paper), ``resnet_os8`` (light basic-block ResNet, output stride 8) or ``unet`` (the plain
    U-Net encoder: two convolutions per level from full resolution; ``blocks`` unused)."""

    name: str = "resnet_os8"
    widths: tuple[int, ...] = (24, 48, 96, 192)
    blocks: tuple[int, ...] = (1, 1, 2, 2)
    pretrained: str | None = None  # path to a local checkpoint with backbone weights
    output_stride: int = 8  # resnet_os8 only: 8 (dilated last stage: classifier, PSPNet) or 16 (U-Net encoder)


@dataclass
class PatchConfig:
    size: int = 112
    stride: int = 56
    min_fraction: float = 0.05  # a class is present in a patch when it covers more than this


@dataclass
class ClassifierConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input_size: int = 112  # patches are resized to this before the network (paper: 224)
    epochs: int = 8
    batch_size: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    crop_scale: tuple[float, float] = (0.7, 1.0)
    seed: int = 0
    threads: int = 0  # 0: torch's default
    precision: str = "auto"  # auto (bf16 where the hardware does it natively), fp32 or bf16: see progress.py


@dataclass
class CamConfig:
    scales: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0)
    mode: str = "image"  # "image": fully convolutional on the whole image; "patch": the reference's per-patch crops
    batch_size: int = 32
    # The pseudo-mask: "patches" votes the per-patch argmaxes (the reference); "stitched" takes Eq. 2 on the
    # stitched multi-scale CAM, which smooths each patch's edge effects (and is re-derived without recomputing).
    pseudo_from: str = "patches"
    # Added to the gland CAM before the argmax: the two classes' CAMs are not on one scale, and the classifier
    # under-calls gland in mixed patches; the cpu preset's value was chosen on GlaS's validation split.
    gland_bias: float = 0.0
    precision: str = "auto"  # auto (bf16 where the hardware does it natively), fp32 or bf16
    # the pseudo-masks (stage 1's and every self-training round's) are cleaned as the prediction is
    # (pipeline.stages.postprocess; px at the project's resolution, 0 = off)
    drop_glands_below: int = 0
    fill_holes_below: int = 0


NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "glas": (GLAS_MEAN, GLAS_STD)}
DECODERS = ("psp", "unet")
CALIBRATORS = ("boosting", "logistic")
PRECISIONS = ("auto", "fp32", "bf16")  # pipeline.progress.resolve_precision decides what auto means
PRECISION_SECTIONS = ("classifier", "cam", "segmentation", "inference")  # the stages with a precision setting
SLIDE_READERS = ("auto", "tiffslide", "openslide")  # pipeline.slides.reader.Slide's backends


@dataclass
class SegConfig:
    """Defaults are the paper's network (PSPNet at full resolution); the ``cpu`` preset swaps in a plain U-Net at
    half resolution. A checkpoint made before a field existed reads as its default.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: str = "psp"  # "psp" (PSPNet, the paper) or "unet" (skip connections; for CPUs)
    head_channels: int = 128
    decoder_full_res: bool = False  # unet: a last decoder step at the input's resolution (sharper borders)
    working_scale: float = 1.0  # images are resized by this for training and prediction; masks scored at 1x
    input_norm: str = "imagenet"  # "imagenet" (the reference) or "glas" (the classifier's, for its weights)
    init_from_classifier: bool = False  # start the backbone from this project's stage-1 classifier
    rotate90: bool = False  # random 90-degree rotations and vertical flips (tissue has no up)
    stain_jitter: float = 0.0  # HED stain augmentation strength (0: off; ~0.05 per Tellez et al.)
    aux_weight: float = 0.4
    ema_decay: float = 0.0  # > 0: predict with an exponential moving average of the weights (e.g. 0.998); 0: off
    warm_start: bool = False  # a self-training round starts from the model whose prediction made its labels
    loss: str = "l_norm"
    warmup_ce_iters: int = 0  # iterations of plain CE before the chosen loss takes over
    weight_temperature: float = 1.0  # l_norm / lc_mix use softmax(-L / T); 1 is the paper, larger is flatter
    # a few corrected pixels must outweigh the many wrong pseudo-labels around them that agree with each other
    verified_weight: float = 1.0  # loss weight of pathologist-verified pixels (pseudo-labels weigh 1 on average)
    # the label review's doubt is out of sample: unlike OEEM's loss, it does not come from the labels' maker
    error_prob_weight: float = 0.0  # a pseudo-label weighs 1 - this x P(wrong) of `oeem regions` (0: off, max 1)
    tile_size: int = 256
    tile_stride: int = 192
    crop_size: int = 256
    ratio_range: tuple[float, float] = (0.75, 3.0)
    iterations: int = 1500
    full_iterations: int = 0  # iterations when training on the gland masks (label_source mask); 0: as iterations
    batch_size: int = 8
    lr: float = 0.01
    min_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    ohem_thresh: float = 0.7
    ohem_min_kept: float = 0.1  # fraction of valid pixels always kept by OHEM
    checkpoint_every: int = 100
    label_source: str = "pseudo"  # "pseudo" (weak), "corrected" (pseudo + pathologist edits) or "mask" (full)
    seed: int = 0
    threads: int = 0
    precision: str = "auto"  # auto (bf16 where the hardware does it natively), fp32 or bf16: see progress.py

    def weighs_by_error_prob(self) -> bool:
        """Whether training weighs pseudo-labels by the label review's P(wrong) (the gland masks are not doubted)."""
        return self.error_prob_weight > 0 and self.label_source != "mask"

    def training_iterations(self) -> int:
        """The iterations this training runs: a fully supervised run has no stage 1 and no self-training rounds,
        so a preset may give its time to one longer training on the clean masks (``full_iterations``)."""
        return self.full_iterations if self.label_source == "mask" and self.full_iterations > 0 else self.iterations


@dataclass
class InferConfig:
    scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
    flip: bool = True
    crop_size: int = 320
    stride: int = 256
    batch_size: int = 8
    blend: str = "mean"  # "mean" or "gaussian": centre-weighted windows (whole slides use it: no seams)
    precision: str = "auto"  # auto (bf16 where the hardware does it natively), fp32 or bf16
    # the predicted mask is cleaned (pipeline.stages.postprocess): px at the project's resolution, 0 = off
    drop_glands_below: int = 0  # predicted glands smaller than this are dropped
    fill_holes_below: int = 0  # non-gland regions smaller than this are filled (the lumens GlaS's masks include)


@dataclass
class RankConfig:
    """Finding wrong pseudo-labels (``oeem regions``): out-of-fold pixel classifier + calibration on validation."""

    feature_scale: float = 0.25  # images are shrunk by this for the out-of-fold pixel classifier's features
    folds: int = 5  # each training image's evidence comes from a classifier that never saw its labels
    samples_per_image: int = 2000  # labelled pixels per image the pixel classifier learns from
    trees: int = 50
    calibrator: str = "boosting"  # "boosting" or "logistic": how the evidence becomes P(label wrong), on validation
    smooth_sigma: float = 4.0  # px; wrong labels come in patches, so regions follow the smoothed probability
    threshold: float = 0.5  # a region is where the smoothed probability that the label is wrong exceeds this
    min_area: int = 200  # px; smaller fragments are dropped (not worth a stroke)
    top_per_image: int = 10  # regions shown per image in the viewer


@dataclass
class SlideConfig:
    """Whole slides (``oeem predict-slide``, ``oeem add-regions``): how they map onto the project's images."""

    project_mpp: float = 0.62  # µm per pixel of the project's images; slides are resampled to it (GlaS: 20x, 0.62)
    block: int = 1024  # px at the project's resolution: one unit of work, one zarr chunk, resumable on its own
    margin: int = 96  # px of context read around each block so neighbouring blocks agree at their seam
    min_tissue: float = 0.01  # a block with less tissue than this fraction (on the overview) is skipped as glass
    reader: str = "auto"  # auto (tiffslide; OpenSlide for what it cannot read, when installed), tiffslide, openslide


@dataclass
class SelfTrainConfig:
    rounds: int = 0  # times the pseudo-masks are refined by the segmentation network and it is trained again
    # the last round's model is the one that predicts, and its labels are the cleanest: it may train longer
    # a factor, not a count, so a shorter schedule (--iterations, the plugin's iterations) shortens it too
    last_round_scale: float = 1.0  # the training on the last round's labels runs segmentation.iterations x this


@dataclass
class PipelineConfig:
    preset: str = "cpu"
    patches: PatchConfig = field(default_factory=PatchConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    segmentation: SegConfig = field(default_factory=SegConfig)
    inference: InferConfig = field(default_factory=InferConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    ranking: RankConfig = field(default_factory=RankConfig)
    slide: SlideConfig = field(default_factory=SlideConfig)

    def segmentation_for_round(self, labels_round: int) -> SegConfig:
        """The segmentation settings a training on pseudo-masks of ``labels_round`` runs with: those of
        ``segmentation``, but the last self-training round's runs ``selftrain.last_round_scale`` times as many
        iterations. Every caller that trains, and the check whether a training is done, goes through here so they
        agree."""
        seg = self.segmentation
        scale = self.selftrain.last_round_scale
        if scale != 1 and self.selftrain.rounds > 0 and labels_round >= self.selftrain.rounds \
                and seg.label_source != "mask":
            return dataclasses.replace(seg, iterations=max(1, round(seg.iterations * scale)))
        return seg


def preset(name: str) -> PipelineConfig:
    """Return a fresh configuration for a named preset."""
    if name not in PRESETS:
        raise OEEMError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    cfg = PipelineConfig(preset=name)
    if name == "cpu":
        # Per-patch CAMs as the reference makes them: on GlaS they beat whole-image CAMs by ~8 mIoU points
        # (benchmarks/stage1_glas.py); three scales instead of five keep stage 1 near 30 min on 2 cores.
        # The pseudo-masks are cleaned as the prediction is (below): GlaS's masks include the lumen, which CAMs call
        # non-gland. Stage 1's pseudo-masks 69.3 -> 77.7 train, the final model 80.7 -> 87.6 validation end to end
        # (benchmarks/end_to_end.py, README)
        cfg.cam = CamConfig(mode="patch", scales=(1.0, 1.5, 2.0), pseudo_from="stitched", gland_bias=3.0,
                            drop_glands_below=1000, fill_holes_below=4000)
        # A plain U-Net (its own encoder, a stage at the full working resolution) at half resolution, from random
        # init, with H&E-specific augmentation: on GlaS's validation split it beat the U-Net on the classifier's
        # ResNet backbone by 3 points fully supervised and 2 weakly (benchmarks/ablation.py); bf16 on CPUs that
        # have it (precision auto) pays for its cost.
        cfg.segmentation = SegConfig(
            backbone=BackboneConfig(name="unet", widths=(16, 32, 64, 128, 256)), decoder="unet", head_channels=64,
            working_scale=0.5, input_norm="glas", init_from_classifier=False, rotate90=True, stain_jitter=0.05,
            tile_size=256, tile_stride=128, crop_size=192, ratio_range=(0.75, 1.5),
            # 2000 iterations: the network underfits at 1000 (validation 70.0 -> 72.2 weak, 80.9 -> 85.4 full).
            # Fully supervised there is no stage 1 and no round to pay for: 4000 iterations (30 min) lift
            # validation from 88.0 to 89.5 (benchmarks/ablation.py)
            iterations=2000, full_iterations=4000, batch_size=8, lr=0.01,
            # a pathologist's corrected pixel weighs 25 pseudo-labels: retrained on 3 % of the training pixels
            # corrected, validation gains +3.1 (weight 1), +3.9 (4), +4.5 (10), +4.7 (25) (annotation_gain.py)
            verified_weight=25.0,
            # plain CE: on GlaS's validation split it beat OEEM's l_norm in every round and seed measured from
            # random init (benchmarks/ablation.py); every weighting stays selectable (--loss l_norm).
            loss="ce",
            # each round starts from the model that made its labels: it made better round-2 labels (train 77.70 ->
            # 77.91, validation 79.64 -> 80.55, benchmarks/end_to_end.py, seed 0) and, with the longer last round
            # (below), a better final model on validation in both seed-0 pairs (benchmarks/ablation.py, round 2)
            warm_start=True)
        # glands under 1000 px dropped, holes under 4000 px (lumens) filled: on the validation split the final
        # model's prediction gains 4.6 mIoU (79.8 -> 84.4, mean of 3 seeds; benchmarks/postprocess.py)
        cfg.inference = InferConfig(scales=(1.0,), flip=True, crop_size=384, stride=320, drop_glands_below=1000,
                                    fill_holes_below=4000)
        # two self-training rounds: the second lifts the final model from 78.0 to 80.4 validation mIoU. The last
        # round trains 3000 iterations instead of 2000: on the same round-2 labels (77.70 train), warm-started,
        # validation 80.37 -> 81.39 and train 76.94 -> 78.11. End to end with both, the whole run takes 59 min on
        # 2 cores and the final model scores 80.7 validation, 78.0 train vs its labels' 77.9 (end_to_end.py);
        # over 3 seeds of that last round: 79.8 +- 0.9 validation, 77.6 +- 0.4 train (README)
        cfg.selftrain = SelfTrainConfig(rounds=2, last_round_scale=1.5)
    if name == "paper":
        r38 = BackboneConfig(name="resnet38d", widths=(), blocks=())
        cfg.classifier = ClassifierConfig(backbone=r38, input_size=224, epochs=20, batch_size=20, lr=0.01,
                                          weight_decay=5e-4)
        cfg.segmentation = SegConfig(backbone=dataclasses.replace(r38), head_channels=512, iterations=10_000,
                                     batch_size=32, lr=5e-3, checkpoint_every=500)
        cfg.cam = CamConfig(mode="patch")
    elif name == "tiny":
        small = BackboneConfig(widths=(8, 16, 24, 32), blocks=(1, 1, 1, 1))
        cfg.classifier = ClassifierConfig(backbone=small, epochs=2, batch_size=16, lr=0.05)
        cfg.cam = CamConfig(scales=(1.0, 1.5))
        cfg.segmentation = SegConfig(backbone=dataclasses.replace(small), head_channels=16, iterations=12,
                                     batch_size=4, tile_size=128, tile_stride=96, crop_size=128,
                                     ratio_range=(0.75, 1.5), checkpoint_every=5)
        cfg.inference = InferConfig(scales=(1.0,), flip=False, crop_size=128, stride=96)
    return cfg


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) dataclass from a dict, refusing unknown keys so typos do not pass silently."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise OEEMError(f"unknown setting(s) {sorted(unknown)} for {cls.__name__}; valid: {sorted(known)}")
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value)
        elif isinstance(default, tuple) and value is not None:
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    return _build(cls, data)


_POSITIVE = {"classifier": ("epochs", "batch_size", "lr"), "cam": ("batch_size",),
             "segmentation": ("iterations", "batch_size", "lr", "weight_temperature", "checkpoint_every",
                              "verified_weight"),
             "inference": ("crop_size", "stride", "batch_size")}


def check(cfg: PipelineConfig) -> PipelineConfig:
    """Refuse settings no run can use, before they are saved as the project's configuration."""
    for section, names in _POSITIVE.items():
        for name in names:
            value = getattr(getattr(cfg, section), name)
            if not value > 0:
                raise OEEMError(f"{section}.{name} must be > 0, not {value}")
    seg = cfg.segmentation
    if seg.decoder not in DECODERS:
        raise OEEMError(f"segmentation.decoder must be one of {', '.join(DECODERS)}, not {seg.decoder!r}")
    if seg.input_norm not in NORMS:
        raise OEEMError(f"segmentation.input_norm must be one of {', '.join(NORMS)}, not {seg.input_norm!r}")
    if not 0.1 <= seg.working_scale <= 2:
        raise OEEMError(f"segmentation.working_scale must be between 0.1 and 2, not {seg.working_scale}")
    if seg.stain_jitter < 0:
        raise OEEMError(f"segmentation.stain_jitter must be >= 0, not {seg.stain_jitter}")
    if not 0 <= seg.error_prob_weight <= 1:
        raise OEEMError(f"segmentation.error_prob_weight must be in [0, 1] (0: off, 1: a label weighs the "
                        f"probability that it is right), not {seg.error_prob_weight}")
    if not 0 <= seg.ema_decay < 1:
        raise OEEMError(f"segmentation.ema_decay must be in [0, 1) (0: off, e.g. 0.998), not {seg.ema_decay}")
    for section in ("cam", "inference"):
        sec = getattr(cfg, section)
        if sec.drop_glands_below < 0 or sec.fill_holes_below < 0:
            raise OEEMError(f"{section}.drop_glands_below and {section}.fill_holes_below are areas in pixels, >= 0 "
                            f"(0: off), not {sec.drop_glands_below} and {sec.fill_holes_below}")
    if cfg.cam.pseudo_from not in ("patches", "stitched"):
        raise OEEMError(f"cam.pseudo_from must be patches or stitched, not {cfg.cam.pseudo_from!r}")
    sl = cfg.slide
    if not (0.01 <= sl.project_mpp <= 100) or sl.block < 64 or not (0 <= sl.margin < sl.block) \
            or not (0 <= sl.min_tissue < 1):
        raise OEEMError("slide settings: project_mpp between 0.01 and 100 µm/px, block >= 64 px, "
                        "0 <= margin < block, 0 <= min_tissue < 1")
    if sl.reader not in SLIDE_READERS:
        raise OEEMError(f"slide.reader must be one of {', '.join(SLIDE_READERS)}, not {sl.reader!r}")
    rk = cfg.ranking
    if rk.folds < 2 or rk.trees < 1 or rk.samples_per_image < 10 or not 0 < rk.feature_scale <= 1:
        raise OEEMError("ranking needs folds >= 2, trees >= 1, samples_per_image >= 10 and 0 < feature_scale <= 1")
    if rk.calibrator not in CALIBRATORS:
        raise OEEMError(f"ranking.calibrator must be one of {', '.join(CALIBRATORS)}, not {rk.calibrator!r}")
    if not 0 < rk.threshold < 1:
        raise OEEMError(f"ranking.threshold is a probability between 0 and 1, not {rk.threshold}")
    if not 0 <= cfg.selftrain.rounds <= 5:
        raise OEEMError(f"selftrain.rounds must be between 0 and 5, not {cfg.selftrain.rounds}")
    if not 0 < cfg.selftrain.last_round_scale <= 10:
        raise OEEMError(f"selftrain.last_round_scale multiplies the last round's iterations: between 0 and 10 "
                        f"(1: as the other rounds), not {cfg.selftrain.last_round_scale}")
    if seg.full_iterations < 0:
        raise OEEMError(f"segmentation.full_iterations must be >= 0 (0: as iterations), not {seg.full_iterations}")
    if seg.warmup_ce_iters < 0:
        raise OEEMError(f"segmentation.warmup_ce_iters must be >= 0, not {cfg.segmentation.warmup_ce_iters}")
    for section in PRECISION_SECTIONS:
        precision = getattr(cfg, section).precision
        if precision not in PRECISIONS:
            raise OEEMError(f"{section}.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    for section in ("cam", "inference"):
        scales = getattr(cfg, section).scales
        if not scales or any(not s > 0 for s in scales):
            raise OEEMError(f"{section}.scales must be positive numbers, not {scales}")
    return cfg


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs: any setting of the configuration by its dotted name, the value as JSON when it
    parses (numbers, true/false, [lists]) and as a plain string otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OEEMError(f"--set expects KEY=VALUE (e.g. segmentation.working_scale=0.5), not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Set dotted keys, e.g. ``{"segmentation.loss": "ce"}``, checking that each key exists."""
    for dotted, value in overrides.items():
        target = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not hasattr(target, part):
                raise OEEMError(f"unknown setting {dotted!r}")
            target = getattr(target, part)
        if not hasattr(target, leaf):
            raise OEEMError(f"unknown setting {dotted!r}")
        setattr(target, leaf, _coerce(dotted, getattr(target, leaf), value))
    return cfg


def _coerce(dotted: str, current: Any, value: Any) -> Any:
    """``value`` as the type of the setting it replaces, or a one-line error saying what the setting takes."""
    def bad(kind: str) -> OEEMError:
        return OEEMError(f"setting {dotted!r} takes {kind}, not {value!r}")

    if dataclasses.is_dataclass(current):
        raise OEEMError(f"{dotted!r} is a group of settings; set its fields, e.g. {dotted}.<name>=...")
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad("a number")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise bad("a word")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad("a list, e.g. [1, 1.5]")
        if current:
            value = tuple(_coerce(dotted, current[0], v) for v in value)
        return tuple(value)
    if current is None:  # optional settings (e.g. a checkpoint path)
        if value is not None and not isinstance(value, str):
            raise bad("a path or null")
        return value
    return value


def field_help(cls: type) -> dict[str, str]:
    """The comment written beside each field of a settings dataclass in this file: the one place a setting is
    explained, shown as the plugin's tooltip."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, flags=re.M)
    return {name: text.strip() for name, text in found}
