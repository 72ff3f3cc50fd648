"""Stage 2: a segmentation network (PSPNet as in the paper, or a U-Net for CPUs) trained on the pseudo-masks (or
corrected / full masks) with the OEEM loss, optionally at a reduced working resolution and started from the
stage-1 classifier's backbone."""
from __future__ import annotations

import logging
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.config import LOSS_KINDS, NORMS, SegConfig
from pipeline.device import autocast, in_layout, place, precision_name, resolve_precision
from pipeline.errors import OEEMError
from pipeline.progress import Job
from pipeline.stages.augment import photometric, random_rot90, random_zoom_crop, stain_jitter
from pipeline.stages.losses import segmentation_loss
from pipeline.stages.models import PSPNet, UNet, build_segmenter, load_model_state, load_network, safe_torch_load
from pipeline.stages.patches import grid_starts
from pipeline.stages.selfcheck import check_stage_network
from pipeline.stages.training import Loop, prepare, resume, train
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

log = logging.getLogger("oeem")

IGNORE = 255
TRUST_LEVELS = 15  # a label's trust is packed into its training code in 1/15 steps (codes stay below IGNORE)


def stage_name(run_name: str | None = None) -> str:
    return "segmentation" if not run_name else f"segmentation-{run_name}"


def resize_to_working(image: np.ndarray, label: np.ndarray | None, scale: float):
    """Image (anti-aliased, bilinear) and label (nearest) at the working resolution."""
    if scale == 1.0:
        return image, label
    from skimage.transform import resize

    h, w = image.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    img = resize(image, (*size, image.shape[2]), order=1, anti_aliasing=scale < 1, preserve_range=True)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if label is None:
        return img, None
    lab = resize(label, size, order=0, anti_aliasing=False, preserve_range=True).astype(label.dtype)
    return img, lab


def init_from_classifier(model: PSPNet | UNet, store: ProjectStore, seg_cfg: SegConfig) -> str:
    """Copy the stage-1 classifier's backbone into the segmenter: in-domain weights for a network that cannot get
    ImageNet ones. Refused, naming both, when the classifier's backbone is another network or width."""
    cls_path = store.checkpoint_path("classifier")
    if not cls_path.is_file():
        raise OEEMError(f"{store.path}: segmentation.init_from_classifier needs a trained classifier; run "
                        f"`oeem train-cls {store.path}` first, or set init_from_classifier to false")
    ck = safe_torch_load(cls_path)
    cls_bb = ck.get("config", {}).get("backbone", {})
    state = {k.removeprefix("backbone."): v for k, v in ck.get("model", {}).items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    mismatched = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if cls_bb.get("name") != seg_cfg.backbone.name or mismatched:
        raise OEEMError(
            f"the classifier checkpoint {cls_path} ({cls_bb.get('name')} widths {cls_bb.get('widths')}) does not "
            f"fit the segmentation backbone ({seg_cfg.backbone.name} widths {list(seg_cfg.backbone.widths)}): "
            "give both stages the same backbone widths and blocks, or set segmentation.init_from_classifier "
            "to false")
    model.backbone.load_state_dict(state)
    return str(cls_path)


def cut_tiles(image: np.ndarray, label: np.ndarray, size: int, stride: int) -> tuple[list, list]:
    """Edge-flush tiles; an image smaller than a tile is padded (label 255, ignored)."""
    h, w = label.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        h, w = label.shape
    ims, labs = [], []
    for y in grid_starts(h, size, stride):
        for x in grid_starts(w, size, stride):
            ims.append(image[y:y + size, x:x + size])
            labs.append(label[y:y + size, x:x + size])
    return ims, labs


def tile_dataset(store: ProjectStore, cfg: SegConfig, split: str = "train") -> tuple[torch.Tensor, torch.Tensor,
                                                                                       list[str]]:
    """Training tiles at the working resolution: uint8 images (N, T, T, 3) and codes (N, T, T) = label + 2 * clean
    + 4 * trust level (255 = ignore; see :func:`decode`), and the names of images smaller than a tile (padded
    with ignored pixels).

    Packing the clean (pathologist-verified) flag and the label's trust into the label lets one nearest-neighbour
    warp move all three."""
    from pipeline.review.regions import label_trust

    weigh = cfg.weighs_by_error_prob()
    ims, codes, padded = [], [], []
    # weak labels: the images with patch labels (an untagged image of a weak-labels project has no pseudo-mask);
    # none yet: every image, so the first one says which command makes its labels
    names = store.names(split) if cfg.label_source == "mask" else \
        (store.labelled_images((split,)) or store.names(split))
    for n in names:
        label, clean = store.labels(n, cfg.label_source)
        code = label.astype(np.uint8) + 2 * clean.astype(np.uint8)
        if weigh:
            trust = label_trust(store, n, cfg.error_prob_weight, cfg.label_source)
            levels = np.rint(trust * TRUST_LEVELS).astype(np.uint8)
            code = np.where(label == IGNORE, code, code + 4 * levels)  # an ignored pixel stays ignored
        image, code = resize_to_working(store.image(n), code, cfg.working_scale)
        if min(code.shape) < cfg.tile_size:
            padded.append(n)
        a, b = cut_tiles(image, code, cfg.tile_size, cfg.tile_stride)
        ims += a
        codes += b
    if not ims:
        raise OEEMError(f"{store.path}: no {split} images to train on")
    return torch.from_numpy(np.stack(ims)), torch.from_numpy(np.stack(codes)), padded


def decode(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target (255 = ignore), the pathologist-verified pixels and each label's trust in [0, 1] of a batch of
    :func:`tile_dataset` codes (the trust is 0 where the codes carry none: training then ignores it)."""
    valid = code != IGNORE
    target = torch.where(valid, code & 1, torch.full_like(code, IGNORE))
    clean = valid & ((code >> 1) & 1).bool()
    trust = torch.where(valid, (code >> 2).float() / TRUST_LEVELS, torch.zeros_like(code, dtype=torch.float32))
    return target, clean, trust


def labels_round_of(store: ProjectStore, cfg: SegConfig) -> int:
    """The self-training round of the labels a run trains on (0 for the gland masks and stage-1 pseudo-masks)."""
    return 0 if cfg.label_source == "mask" else store.pseudo_round


def labels_id_of(store: ProjectStore, cfg: SegConfig) -> str | None:
    """Which CAM run made the pseudo-masks a run trains on (None for the gland masks): new patch labels make new
    CAMs, and a model of the old ones must not pass for trained on the new."""
    return None if cfg.label_source == "mask" else (store.load_run("cams") or {}).get("run_id")


class SegmentationStep:
    """One segmentation training step - a batch of uint8 tiles augmented, the forward pass in the run's precision,
    the loss of the main and auxiliary heads - shared by the training, *Update model* and the budget's speed probe,
    so the three cannot drift apart. ``clean_weight`` is what a pathologist-verified pixel weighs; ``use_trust``
    applies the label review's trust (the codes carry it: :func:`tile_dataset`)."""

    def __init__(self, cfg: SegConfig, device: torch.device, amp: torch.dtype | None, gen: torch.Generator,
                 clean_weight: float, use_trust: bool = False, divide_by: str = "pixels"):
        self.cfg, self.device, self.amp, self.gen = cfg, device, amp, gen
        self.clean_weight, self.use_trust, self.divide_by = clean_weight, use_trust, divide_by
        self.mean = torch.tensor(NORMS[cfg.input_norm][0], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(NORMS[cfg.input_norm][1], device=device).view(1, 3, 1, 1)

    def augment(self, tiles: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T, T, 3) uint8 tiles and their (N, T, T) codes -> a normalised, augmented crop batch and its codes."""
        cfg, gen = self.cfg, self.gen
        x = tiles.to(self.device).permute(0, 3, 1, 2).float().div_(255)
        code = codes.to(self.device).long()
        x, code = random_zoom_crop(x, code, cfg.crop_size, cfg.ratio_range, gen, IGNORE)
        if cfg.rotate90:
            x, code = random_rot90(x, code, gen)
        x = stain_jitter(x, cfg.stain_jitter, gen)
        return (photometric(x, gen) - self.mean) / self.std, code

    def kind(self, step: int) -> str:
        """The loss weighting at ``step``: plain CE for the first ``warmup_ce_iters``, then the chosen one."""
        return "ce" if step < self.cfg.warmup_ce_iters else self.cfg.loss

    def loss(self, net: torch.nn.Module, x: torch.Tensor, code: torch.Tensor, step: int) -> torch.Tensor:
        cfg = self.cfg
        target, clean, trust = decode(code)
        with autocast(self.device, self.amp):
            main, aux = net(in_layout(x), with_aux=True)
        main, aux = main.float(), aux.float()  # losses (and OEEM's weights) in fp32
        kw = dict(kind=self.kind(step), ignore_index=IGNORE, clean=clean if clean.any() else None,
                  ohem_thresh=cfg.ohem_thresh, ohem_min_kept=cfg.ohem_min_kept,
                  temperature=cfg.weight_temperature, clean_weight=self.clean_weight,
                  prior=trust if self.use_trust else None, divide_by=self.divide_by)
        return segmentation_loss(main, target, **kw) + cfg.aux_weight * segmentation_loss(aux, target, **kw)


class WeightAverage:
    """An exponential moving average of a model's weights (and batch-norm statistics): on noisy labels the average
    of the last few hundred steps predicts more smoothly than the last step. The decay ramps up from 0 (as in
    timm's ModelEmaV2 warm-up) so the random initial weights are forgotten within the first steps."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1 - d)
            else:
                avg.copy_(cur)


def segmentation_checkpoint(model, opt, it: int, cfg: SegConfig, labels_round: int = 0,
                            loss_history: list[float | None] | None = None,
                            average: WeightAverage | None = None, labels_id: str | None = None) -> dict:
    """What a segmentation checkpoint holds (:meth:`ProjectStore.save_checkpoint` writes it): ``model`` what
    predicts (the weight average when there is one), ``train_model`` what training resumes from."""
    state = {"kind": "segmentation", "model": (average.module if average else model).state_dict(),
             "optimizer": opt.state_dict(), "iteration": it, "config": asdict(cfg), "labels_round": labels_round,
             "labels_id": labels_id, "loss_history": list(loss_history or [])}
    if average is not None:
        state["train_model"] = model.state_dict()
    return state


def load_segmenter(store: ProjectStore, run_name: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[PSPNet | UNet, SegConfig]:
    path = store.checkpoint_path(stage_name(run_name))
    if not path.is_file():
        raise OEEMError(f"{store.path}: no trained segmentation model; run `oeem train-seg {store.path}` first")
    return load_segmenter_file(path, device)


def previous_round_weights(store: ProjectStore, stage: str, labels_round: int) -> tuple[dict, str] | None:
    """The weights of the model whose prediction made this round's labels (``warm_start``), and where they are: the
    stage's checkpoint, or the one a fresh start moved aside, when it was trained on the previous round's labels."""
    for path in (store.checkpoint_path(stage), store.checkpoint_path(stage).with_name(f"{stage}.previous.pt")):
        if labels_round > 0 and path.is_file():
            ck = safe_torch_load(path)
            if ck.get("kind") == "segmentation" and ck.get("labels_round", 0) == labels_round - 1:
                return ck["model"], str(path)
    return None


def load_segmenter_file(path: Path, device: str | torch.device = "cpu") -> tuple[PSPNet | UNet, SegConfig]:
    """A segmentation checkpoint file as an eval-mode model and the settings it was trained with (what a
    distributed worker loads once)."""
    return load_network(path, "segmentation", device)


@writes_project("training the segmentation")
def train_segmenter(store: ProjectStore, cfg: SegConfig, device: str = "auto", run_name: str | None = None,
                    restart: bool = False, on_mismatch: str = "error",
                    init_weights: tuple[dict, str] | None = None) -> Job[dict]:
    """Train (or resume) the segmentation network (``cfg.decoder``: PSPNet as in the paper, or a U-Net).
    Checkpoints every ``checkpoint_every`` iterations and when cancelled; the run uses the *last* checkpoint (no
    selection on test data). ``on_mismatch`` as in ``train_classifier``. The loop, torchrun included, is
    :func:`pipeline.stages.training.train`'s: every rank resumes from the one checkpoint rank 0 wrote.
    ``init_weights`` (weights, where from: e.g. a model file's) starts a fresh run from them instead of random
    initialisation; a resumed run ignores them."""
    if cfg.loss not in LOSS_KINDS:
        raise OEEMError(f"unknown loss {cfg.loss!r}: choose one of {', '.join(LOSS_KINDS)}")
    if not cfg.weight_temperature > 0:
        raise OEEMError(f"the weight temperature must be > 0 (1 is the paper's), not {cfg.weight_temperature}")
    dist, gen = prepare(cfg.threads, device, cfg.batch_size, "segmentation.batch_size", cfg.seed)
    dev = dist.device
    images, codes, padded = tile_dataset(store, cfg)
    weigh = cfg.weighs_by_error_prob()
    if padded and dist.is_main:
        log.info("%d image(s) are smaller than a %d px tile at working scale %g and were padded (ignored pixels)",
                 len(padded), cfg.tile_size, cfg.working_scale)
    amp = resolve_precision(cfg.precision, dev)
    yield from check_stage_network("segmentation", cfg, dev, amp)
    model = build_segmenter(cfg)
    initialised_from = init_from_classifier(model, store, cfg) if cfg.init_from_classifier else None
    model = place(model, dev)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    stage = stage_name(run_name)
    start = 0
    labels_round, labels_id = labels_round_of(store, cfg), labels_id_of(store, cfg)
    ck, notice = resume(store, stage, dist, {"config": asdict(cfg), "labels_round": labels_round,
                                             "labels_id": labels_id}, model, opt, restart, on_mismatch,
                        defaults={"config": asdict(SegConfig()), "labels_round": 0, "labels_id": None})
    loss_history: list[float | None] = []
    warm = previous_round_weights(store, stage, labels_round) if cfg.warm_start and ck is None else None
    if warm is not None:
        try:
            load_model_state(model, *warm)
        except OEEMError:
            raise OEEMError(f"segmentation.warm_start: the previous round's model {warm[1]} is another network than "
                            "this configuration's; train this round from scratch (set segmentation.warm_start to "
                            "false) or keep the previous round's network settings") from None
        initialised_from = warm[1]
        # the checkpoint moved aside is the last round's model, not a setting changed by hand: say what happens
        notice = f"round {labels_round} starts from round {labels_round - 1}'s model ({Path(warm[1]).name})"
    elif notice and ck is None and labels_round > 0:
        notice = f"round {labels_round}: training afresh on its new labels ({notice.split('(', 1)[-1].rstrip(')')})"
    if init_weights is not None and ck is None:
        load_model_state(model, *init_weights)
        initialised_from = init_weights[1]
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ck is not None:
        start = int(ck["iteration"])
        if average is not None:  # "model" held the average; training resumes from its own weights
            average.module.load_state_dict(ck["model"])
            load_model_state(model, ck["train_model"], store.checkpoint_path(stage))
        # the global-mean loss of every iteration so far; None for those of a checkpoint that predates the list
        loss_history = list(ck.get("loss_history") or [])[:start]
        loss_history = [None] * (start - len(loss_history)) + loss_history
    n = len(images)
    # the generator state must not depend on where a resumed run starts
    for _ in range(start):
        torch.randint(0, n, (cfg.batch_size,), generator=gen)
    seg_step = SegmentationStep(cfg, dev, amp, gen, cfg.verified_weight, use_trust=weigh,
                                divide_by=cfg.verified_divisor)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        return seg_step.augment(images[idx], codes[idx])

    def loss(net: torch.nn.Module, xc: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        return seg_step.loss(net, *xc, step)

    kind = seg_step.kind

    loop = Loop(stage, "segmentation", cfg.training_iterations(), batch, loss,
                checkpoint=lambda it, history: segmentation_checkpoint(model, opt, it, cfg, labels_round, history,
                                                                       average, labels_id),
                checkpoint_every=cfg.checkpoint_every, save_on_cancel=True,
                where=lambda step: f"iteration {step + 1}", message=lambda step: f"{kind(step)} loss", lr=cfg.lr,
                poly_power=cfg.poly_power, min_lr=cfg.min_lr, loss_weight=0.05, rate="it_per_s",
                after_step=(lambda step: average.update(model, step)) if average is not None else None)
    done = yield from train(store, loop, dist, model, opt, start, notice, loss_history)
    record = {"config": asdict(cfg), "device": str(dev), "tiles": n, "iterations_run": done.steps,
              "padded_images": padded, "initialised_from": initialised_from, "labels_round": labels_round,
              "cams_run_id": labels_id, "run_id": uuid.uuid4().hex,
              "clean_pixels_in_tiles": int((((codes >> 1) & 1).bool() & (codes != IGNORE)).sum()),
              "seconds": done.seconds, "it_per_s": done.per_second(done.steps), "final_loss": done.final_loss,
              "checkpoint": "last iteration (no model selection)", "world_size": dist.world_size,
              "precision": precision_name(amp), "loss_history": done.history,
              # the corrections and tags it learned from: what `oeem update` later calls changed
              "label_state": store.label_states()}
    if weigh:  # how much of the labels' weight the review's doubt left them, over the tiles' valid pixels
        record["label_trust_mean"] = float((codes[codes != IGNORE] >> 2).float().mean()) / TRUST_LEVELS
    if dist.is_main:
        store.save_run(stage, record)
    return record
