"""Run configuration as small dataclasses, saved as JSON next to every result so a run can be reproduced.

Every setting is declared once, here, with :func:`setting`: its default, help text, allowed values or range, a
human label, whether it is *basic* (one a pathologist changes) and, where it has one, its CLI flag and the
commands that take it. :func:`check`, the plugin's settings form and the ``oeem`` flags are all made from these
declarations (:func:`settings_of`), so they cannot disagree.

Three presets share one code path: ``paper`` follows the MICCAI 2022 settings (ResNet38d, meant for a GPU),
``cpu`` (a light ResNet classifier, a plain U-Net at half resolution, short schedules) is made for 2 CPU cores,
and ``tiny`` exists for tests and the embedded sample data.
"""
from __future__ import annotations

import dataclasses
import json
import math
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
LOSS_DIVISORS = ("pixels", "weights")
PRESETS = ("paper", "cpu", "tiny")
DEFAULT_PRESET = "cpu"  # what a new project, the CLI and the dock start from when no preset is named
BACKBONES = ("resnet_os8", "resnet38d", "unet")  # unet: a plain U-Net encoder, stage 2 only
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "glas": (GLAS_MEAN, GLAS_STD)}
DECODERS = ("psp", "unet")
CALIBRATORS = ("boosting", "logistic")
LEARN_MODES = ("auto", "on", "off")  # ranking.learn_from_review
PRECISIONS = ("auto", "fp32", "bf16")  # pipeline.device.resolve_precision decides what auto means
PRECISION_SECTIONS = ("classifier", "cam", "segmentation", "inference")  # the stages with a precision setting
SLIDE_READERS = ("auto", "tiffslide", "openslide")  # pipeline.slides.reader.Slide's backends
LABEL_SOURCES = ("pseudo", "corrected", "mask")
INSTANCE_METHODS = ("core", "distance", "components")  # pipeline.stages.instances


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None, label: str | None = None,
            basic: bool = False, flag: str | None = None, commands: tuple[str, ...] = ()) -> Any:
    """Declare one setting: a dataclass field whose metadata carries everything the checks, the plugin's form and
    the CLI need. ``ge``/``gt``/``le``/``lt`` bound a number (or each number of a list); ``flag`` is the option
    the ``commands`` take for it."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "label": label,
            "basic": basic, "flag": flag, "commands": commands}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One leaf setting as the form and the CLI see it (``key`` is dotted, e.g. ``segmentation.loss``)."""

    key: str
    value: Any
    help: str
    label: str
    choices: tuple[str, ...] | None
    ge: float | None
    gt: float | None
    le: float | None
    lt: float | None
    basic: bool
    flag: str | None
    commands: tuple[str, ...]

    def bounds(self) -> str:
        """The range in words, e.g. ``between 0 and 1 ([0, 1))`` or ``> 0``; empty when unbounded."""
        lo = (f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None)
        hi = (f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None)
        if lo and hi:
            return f"between {lo[1:]} and {hi[:-1]} ({lo}, {hi})"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        return ""

    def accepts(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if (self.ge is not None and not v >= self.ge) or (self.gt is not None and not v > self.gt) \
                    or (self.le is not None and not v <= self.le) or (self.lt is not None and not v < self.lt):
                return False
        return True


def settings_of(obj: Any, prefix: str = "") -> list[Setting]:
    """Every leaf setting of a (nested) configuration dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += settings_of(value, f"{prefix}{f.name}.")
            continue
        m = f.metadata
        out.append(Setting(f"{prefix}{f.name}", value, m.get("help", ""), m.get("label") or f.name.replace("_", " "),
                           m.get("choices"), m.get("ge"), m.get("gt"), m.get("le"), m.get("lt"),
                           m.get("basic", False), m.get("flag"), m.get("commands", ())))
    return out


def _precision() -> Any:
    return setting("auto", "auto: bf16 where the hardware does it natively, else fp32 (pipeline.device)",
                   choices=PRECISIONS)


@dataclass
class BackboneConfig:
    """``resnet38d`` (the paper), ``resnet_os8`` (light basic-block ResNet, output stride 8) or ``unet`` (the plain
    U-Net encoder: two convolutions per level from full resolution; ``blocks`` unused)."""

    name: str = setting("resnet_os8", "the network: resnet38d (the paper), resnet_os8 (light) or unet (stage 2 only)",
                        choices=BACKBONES, label="network")
    widths: tuple[int, ...] = setting((24, 48, 96, 192), "channels of each stage", gt=0, label="stage widths")
    blocks: tuple[int, ...] = setting((1, 1, 2, 2), "residual blocks of each stage (resnet_os8)", gt=0,
                                      label="blocks per stage")
    pretrained: str | None = setting(None, "a local checkpoint with backbone weights (none: random init)",
                                     label="pretrained weights", flag="--pretrained",
                                     commands=("train-cls", "train-seg"))
    output_stride: int = setting(8, "resnet_os8 only: 8 (dilated last stage: classifier, PSPNet) or 16 (U-Net)",
                                 ge=8, le=16, label="output stride")


@dataclass
class PatchConfig:
    size: int = setting(112, "side of a patch in pixels (the paper: 112)", gt=0, label="patch size")
    stride: int = setting(56, "step between patches in pixels (the paper: 56)", gt=0, label="patch stride")
    min_fraction: float = setting(0.05, "a class is present in a patch when it covers more than this", ge=0, lt=1,
                                  label="class presence")
    untagged_images: bool = setting(False, "training images with no weak label at all get a CAM pseudo-mask too "
                                     "(nothing is ruled out in their patches) and the segmentation trains on them",
                                     label="untagged images too")


@dataclass
class ClassifierConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input_size: int = setting(112, "patches are resized to this before the network (paper: 224)", gt=0,
                              label="input size")
    epochs: int = setting(8, "epochs over the labelled patches: one pass each, or more (min_epoch_steps)", gt=0,
                          basic=True, label="classifier epochs",
                          flag="--epochs", commands=("train-cls", "run"))
    min_epoch_steps: int = setting(0, "an epoch trains at least this many steps: on a few tagged images it passes "
                                   "over their patches several times, so the classifier trains as long as on a "
                                   "whole dataset (0: an epoch is one pass)", ge=0, label="steps per epoch, at least")
    batch_size: int = setting(20, "patches per step", gt=0, label="batch size")
    lr: float = setting(0.05, "learning rate at the start of the poly schedule", gt=0, label="learning rate",
                        flag="--lr", commands=("train-cls",))
    momentum: float = setting(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = setting(1e-4, "SGD weight decay", ge=0, label="weight decay")
    poly_power: float = setting(0.9, "power of the poly learning-rate decay", gt=0, label="poly power")
    crop_scale: tuple[float, float] = setting((0.7, 1.0), "random crop: smallest and largest share of the patch",
                                              gt=0, le=1, label="crop scale")
    seed: int = setting(0, "random seed (weights, batches, augmentation)", ge=0)
    threads: int = setting(0, "CPU threads torch uses (0: torch's default)", ge=0)
    precision: str = _precision()

    def passes_for(self, n_patches: int) -> int:
        """The passes over ``n_patches`` labelled patches a training makes: one per epoch, or more where an epoch
        must train ``min_epoch_steps`` (whole passes, so every patch is seen as often as every other)."""
        steps_per_pass = max(1, n_patches // self.batch_size)
        return max(self.epochs, math.ceil(self.epochs * self.min_epoch_steps / steps_per_pass))


@dataclass
class CamConfig:
    scales: tuple[float, ...] = setting((1.0, 1.25, 1.5, 1.75, 2.0), "image scales the CAMs are averaged over",
                                        gt=0, label="CAM scales", flag="--scales", commands=("cams",))
    mode: str = setting("image", "image: fully convolutional on the whole image; patch: the reference's crops",
                        choices=("image", "patch"), label="CAM mode", flag="--mode", commands=("cams",))
    batch_size: int = setting(32, "patches per forward pass (mode patch)", gt=0, label="batch size")
    pseudo_from: str = setting("patches", "patches: vote the per-patch argmaxes (the reference); stitched: Eq. 2 on "
                               "the stitched multi-scale CAM (smoother patch edges)", choices=("patches", "stitched"),
                               label="pseudo-mask from")
    gland_bias: float = setting(0.0, "added to the gland CAM before the argmax: the two CAMs are not on one scale and "
                                "mixed patches under-call gland (cpu preset: chosen on the validation split)",
                                label="gland bias")
    precision: str = _precision()
    drop_glands_below: int = setting(0, "pseudo-mask glands smaller than this are dropped (px at the project's "
                                     "resolution; 0: off)", ge=0, label="drop glands below")
    fill_holes_below: int = setting(0, "pseudo-mask holes smaller than this are filled (px; 0: off)", ge=0,
                                    label="fill holes below")


@dataclass
class SegConfig:
    """Defaults are the paper's network (PSPNet at full resolution); the ``cpu`` preset swaps in a plain U-Net at
    half resolution. A checkpoint made before a field existed reads as its default.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: str = setting("psp", "psp (PSPNet, the paper) or unet (skip connections; for CPUs)", choices=DECODERS)
    head_channels: int = setting(128, "channels of the decoder head", gt=0, label="head channels")
    decoder_full_res: bool = setting(False, "unet: a last decoder step at the input's resolution (sharper borders)",
                                     label="full-resolution decoder")
    working_scale: float = setting(1.0, "images are resized by this for training and prediction; masks are scored "
                                   "at 1x", ge=0.1, le=2, label="working scale")
    input_norm: str = setting("imagenet", "imagenet (the reference) or glas (the classifier's, for its weights)",
                              choices=tuple(NORMS), label="input normalisation")
    init_from_classifier: bool = setting(False, "start the backbone from this project's stage-1 classifier",
                                         label="start from the classifier")
    rotate90: bool = setting(False, "random 90-degree rotations and vertical flips (tissue has no up)",
                             label="rotate 90")
    stain_jitter: float = setting(0.0, "HED stain augmentation strength (0: off; ~0.05 per Tellez et al.)", ge=0,
                                  label="stain jitter")
    aux_weight: float = setting(0.4, "weight of the auxiliary head's loss (PSPNet)", ge=0, label="auxiliary weight")
    ema_decay: float = setting(0.0, "> 0: predict with an exponential moving average of the weights (e.g. 0.998)",
                               ge=0, lt=1, label="weight averaging")
    warm_start: bool = setting(False, "a self-training round starts from the model whose prediction made its labels",
                               label="warm start")
    loss: str = setting("l_norm", "the loss weighting: ce (plain), l_norm (OEEM, the paper), c_max, c_diff, lc_mix "
                        "(the paper's ablations) or ohem", choices=LOSS_KINDS, basic=True, label="loss",
                        flag="--loss", commands=("train-seg", "run"))
    warmup_ce_iters: int = setting(0, "iterations of plain CE before the chosen loss takes over", ge=0,
                                   label="CE warm-up", flag="--warmup-ce", commands=("train-seg",))
    weight_temperature: float = setting(1.0, "l_norm / lc_mix use softmax(-L / T); 1 is the paper, larger is flatter",
                                        gt=0, label="weight temperature", flag="--temperature",
                                        commands=("train-seg",))
    # a few corrected pixels must outweigh the many wrong pseudo-labels around them that agree with each other
    verified_weight: float = setting(1.0, "loss weight of a pathologist-verified pixel (pseudo-labels weigh 1 on "
                                     "average)", gt=0, basic=True, label="corrected pixel weight",
                                     flag="--verified-weight", commands=("train-seg",))
    verified_divisor: str = setting("pixels", "what the loss is divided by: the labelled pixels' number ('pixels') "
                                    "or their weights' sum ('weights', a weighted mean: heavily weighted corrections "
                                    "cannot enlarge the training step)", choices=LOSS_DIVISORS,
                                    label="loss divided by", flag="--verified-divisor", commands=("train-seg",))
    # the label review's doubt is out of sample: unlike OEEM's loss, it does not come from the labels' maker
    error_prob_weight: float = setting(0.0, "a pseudo-label weighs 1 - this x P(wrong) of `oeem regions` (0: off; "
                                       "1: a label weighs the probability that it is right)", ge=0, le=1,
                                       label="label review weight", flag="--error-prob-weight",
                                       commands=("train-seg",))
    tile_size: int = setting(256, "training images are cut into tiles of this side (px, working scale)", gt=0,
                             label="tile size")
    tile_stride: int = setting(192, "step between training tiles (px)", gt=0, label="tile stride")
    crop_size: int = setting(256, "side of the random training crop (px)", gt=0, label="crop size")
    ratio_range: tuple[float, float] = setting((0.75, 3.0), "random zoom range of the training crops", gt=0,
                                               label="zoom range")
    iterations: int = setting(1500, "training steps on the pseudo-masks (per self-training round)", gt=0, basic=True,
                              label="segmentation iterations", flag="--iterations", commands=("train-seg", "run"))
    full_iterations: int = setting(0, "training steps on the gland masks (labels: mask); 0: as iterations", ge=0,
                                   label="iterations on masks")
    batch_size: int = setting(8, "crops per step", gt=0, label="batch size")
    lr: float = setting(0.01, "learning rate at the start of the poly schedule", gt=0, label="learning rate",
                        flag="--lr", commands=("train-seg",))
    min_lr: float = setting(1e-4, "the poly schedule's floor", ge=0, label="smallest learning rate")
    momentum: float = setting(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = setting(5e-4, "SGD weight decay", ge=0, label="weight decay")
    poly_power: float = setting(0.9, "power of the poly learning-rate decay", gt=0, label="poly power")
    ohem_thresh: float = setting(0.7, "OHEM keeps pixels whose true-class probability is below this", gt=0, le=1,
                                 label="OHEM threshold")
    ohem_min_kept: float = setting(0.1, "fraction of valid pixels OHEM always keeps", ge=0, le=1,
                                   label="OHEM minimum kept")
    checkpoint_every: int = setting(100, "iterations between checkpoints (a stopped training resumes from the last)",
                                    gt=0, label="checkpoint every")
    label_source: str = setting("pseudo", "pseudo (weak), corrected (pseudo + the pathologist's corrections) or mask "
                                "(full supervision)", choices=LABEL_SOURCES, basic=True, label="train on",
                                flag="--labels", commands=("train-seg",))
    seed: int = setting(0, "random seed (weights, batches, augmentation)", ge=0, flag="--seed",
                        commands=("train-seg",))
    threads: int = setting(0, "CPU threads torch uses (0: torch's default)", ge=0)
    precision: str = _precision()

    def weighs_by_error_prob(self) -> bool:
        """Whether training weighs pseudo-labels by the label review's P(wrong) (the gland masks are not doubted)."""
        return self.error_prob_weight > 0 and self.label_source != "mask"

    def training_iterations(self) -> int:
        """The iterations this training runs: a fully supervised run has no stage 1 and no self-training rounds,
        so a preset may give its time to one longer training on the clean masks (``full_iterations``)."""
        return self.full_iterations if self.label_source == "mask" and self.full_iterations > 0 else self.iterations


@dataclass
class InferConfig:
    scales: tuple[float, ...] = setting((0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0), "image scales the prediction "
                                        "is averaged over (1 alone: fastest)", gt=0, basic=True,
                                        label="prediction scales", flag="--scales", commands=("predict",))
    flip: bool = setting(True, "also predict the mirrored image and average", label="flip")
    dihedral: bool = setting(False, "predict the image in all 8 orientations (mirrored, turned by quarter turns) "
                             "and average, as the network was trained: better masks for about 3x the time of "
                             "flip (replaces flip)", label="all 8 orientations", flag="--all-orientations",
                             commands=("predict",))
    crop_size: int = setting(320, "side of the sliding window (px, working scale)", gt=0, label="window size")
    stride: int = setting(256, "step of the sliding window (px)", gt=0, label="window stride")
    batch_size: int = setting(8, "windows per forward pass", gt=0, label="batch size")
    blend: str = setting("mean", "how overlapping windows merge: mean, or gaussian (centre-weighted, no seams)",
                         choices=("mean", "gaussian"))
    precision: str = _precision()
    drop_glands_below: int = setting(0, "predicted glands smaller than this are dropped (px at the project's "
                                     "resolution; 0: off)", ge=0, label="drop glands below")
    fill_holes_below: int = setting(0, "non-gland regions smaller than this are filled (px; 0: off): the lumens "
                                    "GlaS's masks include", ge=0, label="fill holes below")

    def orientations(self) -> tuple[tuple[bool, bool, bool], ...]:
        """The orientations the prediction averages, each (transposed, rows flipped, columns flipped): all 8 of the
        square's symmetries with ``dihedral``, else the image and, with ``flip``, its mirror."""
        if self.dihedral:
            return tuple((t, r, c) for t in (False, True) for r in (False, True) for c in (False, True))
        return ((False, False, False), (False, False, True)) if self.flip else ((False, False, False),)


@dataclass
class InstanceConfig:
    """Glands as objects (``pipeline.stages.instances``): how the predicted mask is cut into one id per gland."""

    # chosen on GlaS's validation split by object F1, then object Dice, with the cpu preset's model
    # (benchmarks/instances.py, results/instances-cpu.json): core seeds beat connected components (87.3 -> 91.0
    # object F1, 83.5 -> 88.4 object Dice) and the distance watershed (82.8 at its best h)
    method: str = setting("core", "how touching glands are told apart: core (seeds where the network is sure, "
                          "flooded over its probability), distance (watershed of the distance to the background) "
                          "or components (one gland per connected region)", choices=INSTANCE_METHODS,
                          basic=True, label="gland separation")
    core_threshold: float = setting(0.97, "core: a seed is where the gland probability exceeds this", gt=0, lt=1,
                                    label="seed probability")
    core_opening: int = setting(0, "core: seeds are opened by a disk of this radius first (px; 0: off)", ge=0,
                                label="seed opening")
    min_core_area: int = setting(1000, "core: seeds smaller than this (px) seed nothing: their gland joins its "
                                 "neighbour", ge=0, label="smallest seed")
    h: float = setting(12.0, "distance: a neck must be this many px narrower than the glands' inscribed radius to "
                       "split them", gt=0, label="neck depth")
    scale: float = setting(0.5, "the separation runs at this scale of the image, then every pixel of the mask "
                           "takes its gland's id (0.5: as good on validation at half the time)", gt=0, le=1,
                           label="separation scale")


FAST_INFERENCE = {"inference.scales": (1.0,), "inference.flip": False, "inference.dihedral": False}  # `--fast`,
# the plugin's "fast": one scale, one orientation - for looking at a result now rather than scoring it
BEST_INFERENCE = {"inference.dihedral": True}  # the plugin's "best": the project's scales in all 8 orientations -
# the best masks of a few images for about 3x the time (docs/benchmarks.md, Test-time orientations)


@dataclass
class RankConfig:
    """Finding wrong pseudo-labels (``oeem regions``): out-of-fold pixel classifier + calibration on validation."""

    feature_scale: float = setting(0.25, "images are shrunk by this for the out-of-fold pixel classifier's "
                                   "features", gt=0, le=1, label="feature scale")
    folds: int = setting(5, "each training image's evidence comes from a classifier that never saw its labels", ge=2)
    samples_per_image: int = setting(2000, "labelled pixels per image the pixel classifier learns from", ge=10,
                                     label="samples per image")
    trees: int = setting(50, "trees of the out-of-fold random forest", ge=1)
    calibrator: str = setting("boosting", "how the evidence becomes P(label wrong), fitted on validation: "
                              "boosting or logistic", choices=CALIBRATORS)
    smooth_sigma: float = setting(4.0, "px; wrong labels come in patches, so regions follow the smoothed "
                                  "probability", ge=0, label="smoothing")
    threshold: float = setting(0.5, "a region is where the smoothed probability that the label is wrong exceeds "
                               "this", gt=0, lt=1)
    min_area: int = setting(200, "px; smaller fragments are dropped (not worth a stroke)", ge=0, label="smallest area")
    top_per_image: int = setting(10, "regions shown per image in the viewer", ge=0, label="regions per image")
    learn_from_review: str = setting("auto", "the patch tags and each accept / skip re-order the regions not yet "
                                     "reviewed (pipeline.review.online); auto: only when there are no validation "
                                     "masks to calibrate on; taken at ranking time", choices=LEARN_MODES,
                                     label="learn from the review")


@dataclass
class SlideConfig:
    """Whole slides (``oeem predict-slide``, ``oeem add-regions``): how they map onto the project's images."""

    project_mpp: float = setting(0.62, "µm per pixel of the project's images; slides are resampled to it (GlaS: "
                                 "20x, 0.62)", ge=0.01, le=100, label="project µm/px")
    block: int = setting(1024, "px at the project's resolution: one unit of work, one zarr chunk, resumable on its "
                         "own", ge=64, label="block size", flag="--block", commands=("predict-slide",))
    margin: int = setting(96, "px of context read around each block so neighbouring blocks agree at their seam",
                          ge=0)
    min_tissue: float = setting(0.01, "a block with less tissue than this fraction (on the overview) is skipped as "
                                "glass", ge=0, lt=1, label="least tissue")
    reader: str = setting("auto", "auto (tiffslide; OpenSlide for what it cannot read, when installed), tiffslide, "
                          "openslide", choices=SLIDE_READERS)


@dataclass
class SelfTrainConfig:
    rounds: int = setting(0, "times the pseudo-masks are refined by the segmentation network and it is trained again",
                          ge=0, le=5, basic=True, label="self-training rounds", flag="--rounds", commands=("run",))
    # the last round's model is the one that predicts, and its labels are the cleanest: it may train longer
    # a factor, not a count, so a shorter schedule (--iterations, the plugin's iterations) shortens it too
    last_round_scale: float = setting(1.0, "the training on the last round's labels runs segmentation.iterations x "
                                      "this (1: as the other rounds)", gt=0, le=10, label="last round length")
    untagged_images: bool = setting(False, "training images nobody tagged join the self-training rounds, labelled "
                                    "by the segmentation network's prediction (nothing ruled out in them)",
                                    label="untagged images join the rounds")


@dataclass
class UpdateConfig:
    """*Update model* (``oeem update``, the dock's button): a short fine-tune of the current segmentation model on
    what the pathologist changed since it was trained, so a correction shows its effect in about a minute instead
    of a full retrain's half hour."""

    iterations: int = setting(30, "fine-tuning steps (cpu preset: about 1.4 s each on 2 cores in fp32)", gt=0,
                              label="update steps", flag="--steps", commands=("update",))
    # lr: the rate the training ended at (segmentation.min_lr). On the cpu preset's GlaS model (validation 86.59),
    # 1 / 3 / 10 images corrected, 3 seeds each, validation changed on average by -1.17..+0.47 at 0.001 (testA down
    # to -3.14 on one update), -0.22..+0.33 at 0.0003 and -0.02..+0.43 at 0.0001 (testA worst -0.46), the corrected
    # images gaining +2.6..+5.0 (benchmarks/update_safety.py; docs/benchmarks.md, *Update model on a well-trained
    # model*). Focus and verified weight were chosen on validation on a weak model (benchmarks/update_gain.py)
    lr: float = setting(0.0001, "learning rate of the fine-tune, constant: about the rate the training ended at "
                        "(higher rates pull a trained model off what it learned)", gt=0,
                        label="update learning rate", flag="--lr", commands=("update",))
    focus: float = setting(0.5, "share of each batch cut from the changed images; the rest replays other training "
                           "images so the model does not forget them", ge=0, le=1, label="focus on changes")
    verified_weight: float = setting(4.0, "loss weight of a pathologist-verified pixel in an update (a full "
                                     "training's segmentation.verified_weight is for thousands of steps)", gt=0,
                                     label="corrected pixel weight")
    replay_images: int = setting(6, "other training images the replayed share of a batch comes from", ge=0,
                                 label="replayed images")
    keep_versions: int = setting(5, "models from before an update kept for `oeem update --revert`", ge=1,
                                 label="versions kept")
    seed: int = setting(0, "random seed of the update's batches and augmentation", ge=0)
    # measured, not the cause: frozen statistics did worse than re-estimated ones on the cpu preset's GlaS model
    # (validation -1.17 / -0.53 / -0.83 against +0.02 / -0.17 / +0.47 at lr 0.001, 1 / 3 / 10 images, 3 seeds)
    freeze_batchnorm: bool = setting(False, "keep the trained model's batch-norm statistics instead of re-estimating "
                                     "them on the update's batches", label="keep batch-norm statistics")
    tolerance: float = setting(0.3, "an update (or a retrain on corrections) that scores worse than the model before "
                               "by more than this many points - validation mIoU, or held-out tags without masks - "
                               "is not kept", ge=0, label="tolerance (points)", flag="--tolerance",
                               commands=("update",))


@dataclass
class PreviewConfig:
    """The preview (``pipeline.review.preview``): a pixel classifier learned from the tags in about a second, shown
    until the method's own models exist."""

    # chosen on GlaS's validation split with 10 / 25 / 100 % of the training images tagged, 3 / 3 / 1 seeds
    # (benchmarks/preview.py --sweep, results/preview.json): scale 0.5 beat 0.25 by 2.8 / 2.0 / 0.3 points; stain
    # channels, larger scales or deeper trees did not help; 30 trees on 10,000 pixels scored as 50 on 20,000 and
    # re-fit in under a second on 2 cores
    scale: float = setting(0.5, "working scale of the preview's features (0.5: half the resolution)",
                           gt=0, le=1, label="preview scale")
    sigma_max: float = setting(16.0, "largest scale of the features, in working-scale pixels", ge=1,
                               label="largest feature scale")
    texture: bool = setting(True, "texture features (Hessian eigenvalues) besides colour and edges",
                            label="texture features")
    stains: bool = setting(False, "features of the haematoxylin and eosin channels too (colour deconvolution)",
                           label="stain features")
    samples_per_patch: int = setting(30, "pixels sampled in each tagged patch", gt=0, label="pixels per patch")
    max_samples: int = setting(10000, "most labelled pixels the forest learns from (drawn evenly)", gt=0,
                               label="most pixels")
    trees: int = setting(30, "trees of the random forest", gt=0, label="trees")
    max_depth: int = setting(12, "depth limit of each tree (keeps fitting and prediction within a second)", gt=0,
                             label="tree depth")
    jobs: int = setting(2, "threads the forest fits and predicts with", gt=0, label="threads")
    train_while_tagging: bool = setting(True, "the dock starts Train while tagging when a project being tagged has "
                                        "no classifier yet (the switch in Weak labels turns it off)",
                                        label="train while tagging")
    cached_images: int = setting(8, "images whose full feature stacks stay in memory", gt=0,
                                 label="cached images")
    seed: int = setting(0, "random seed of the sampled pixels and the forest", ge=0)


@dataclass
class PipelineConfig:
    preset: str = setting(DEFAULT_PRESET, "the preset these settings started from", choices=PRESETS)
    patches: PatchConfig = field(default_factory=PatchConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    segmentation: SegConfig = field(default_factory=SegConfig)
    inference: InferConfig = field(default_factory=InferConfig)
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    ranking: RankConfig = field(default_factory=RankConfig)
    slide: SlideConfig = field(default_factory=SlideConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)

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
        # An epoch trains at least the steps of one pass over GlaS's 75 training images (8,607 patches // 20): with
        # a quarter of the images tagged the classifier otherwise trains a quarter as long, and its pseudo-masks
        # fall behind (benchmarks/weak_labels.py, 25 % of GlaS tagged, seeds 0-2: testA 58.3 -> 70.7, from 77 % to
        # 93 % of the all-tagged result)
        cfg.classifier.min_epoch_steps = 430
        # Per-patch CAMs as the reference makes them: on GlaS they beat whole-image CAMs (cam.mode=image) in runs of
        # an earlier version; three scales instead of five keep stage 1 short on 2 cores.
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
            # a pathologist's corrected pixel weighs 4 pseudo-labels, as in an update. Retrained on 3 % of the
            # training pixels corrected (benchmarks/update_gain.py), validation against the uncorrected model:
            # this preset's GlaS run +0.66 (4), +0.29 (10), +0.04 (1), -19.73 (25); a 19-image, 300-iteration
            # project, mean of 3 seeds, +1.88 (4), +0.84 (1), -7.15 (10), -19.73 (25). 25, chosen on an earlier,
            # weaker network, wrecked both
            verified_weight=4.0,
            # plain CE: on GlaS's validation split OEEM's l_norm never beat it by a clear margin (paired seeds,
            # docs/benchmarks.md); every weighting stays selectable (--loss l_norm).
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
        # On a project where only some images carry tags, the untagged training images join the rounds with the
        # prediction as their label: 25 % of GlaS tagged, one round, seeds 0-2, validation 74.3 -> 75.7 (ahead on
        # every seed), testA 73.1 -> 72.7 (benchmarks/weak_labels.py round). A fully tagged project has none. With
        # this whole preset, 25 % tagged reaches 81.06 testA, 96.8 % of the all-tagged 83.74 (seed 0, --preset-schedule)
        cfg.selftrain = SelfTrainConfig(rounds=2, last_round_scale=1.5, untagged_images=True)
    if name == "paper":
        r38 = BackboneConfig(name="resnet38d", widths=(), blocks=())
        cfg.classifier = ClassifierConfig(backbone=r38, input_size=224, epochs=20, batch_size=20, lr=0.01,
                                          weight_decay=5e-4)
        cfg.segmentation = SegConfig(backbone=dataclasses.replace(r38), head_channels=512, iterations=10_000,
                                     batch_size=32, lr=5e-3, checkpoint_every=500)
        cfg.cam = CamConfig(mode="patch")
    elif name == "tiny":
        small = BackboneConfig(widths=(8, 16, 24, 32), blocks=(1, 1, 1, 1))
        cfg.classifier = ClassifierConfig(backbone=small, epochs=3, batch_size=16, lr=0.05)
        cfg.cam = CamConfig(scales=(1.0, 1.5))
        # CE and 150 iterations: the model predicts glands on the sample data in fp32 and in bf16 (the test fixture
        # asserts it; about 8 s on 2 cores); with l_norm or 30 iterations one seed or precision in two predicted no
        # gland at all, so tests that compared such predictions compared nothing
        cfg.segmentation = SegConfig(backbone=dataclasses.replace(small), head_channels=16, iterations=150,
                                     batch_size=4, tile_size=128, tile_stride=96, crop_size=128,
                                     ratio_range=(0.75, 1.5), checkpoint_every=50, loss="ce")
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


def check(cfg: PipelineConfig) -> PipelineConfig:
    """Refuse settings no run can use, before they are saved as the project's configuration: each setting's own
    declaration (choices, range), then the few rules that tie two settings together."""
    for s in settings_of(cfg):
        if s.choices is not None and s.value not in s.choices:
            raise OEEMError(f"{s.key} must be one of {', '.join(s.choices)}, not {s.value!r}")
        if not s.accepts(s.value):
            what = "each value of " if isinstance(s.value, tuple) else ""
            raise OEEMError(f"{what}{s.key} must be {s.bounds()}, not {s.value}" + (f" ({s.help})" if s.help else ""))
    for section in ("cam", "inference"):
        if not getattr(cfg, section).scales:
            raise OEEMError(f"{section}.scales must list at least one scale, e.g. [1.0]")
    if cfg.classifier.backbone.name == "unet":
        raise OEEMError("classifier.backbone.name: unet is a segmentation encoder; the classifier takes resnet_os8 "
                        "or resnet38d")
    if not cfg.slide.margin < cfg.slide.block:
        raise OEEMError(f"slide.margin ({cfg.slide.margin}) must be smaller than slide.block ({cfg.slide.block})")
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
