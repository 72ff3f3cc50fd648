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

import time
import uuid
from typing import Any

import numpy as np
import torch

from pipeline.config import PipelineConfig, SegConfig, UpdateConfig
from pipeline.device import place, resolve_device, resolve_precision
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project
from pipeline.store.versions import keep_version, revert_model

STAGE = "segmentation"


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


def revert_update(store: ProjectStore, cfg: PipelineConfig, device: str = "auto",
                  predict_names: list[str] | None = None) -> Job[dict[str, Any]]:
    """*Revert update* as the CLI and the dock do it: the model from before the last update back
    (:func:`revert_model`), then ``predict_names`` predicted again with it (default: the images the reverted
    update had re-predicted, so no prediction on screen or on disk is left from the model that is gone)."""
    latest = (store.load_run(STAGE) or {}).get("updates") or [{}]
    back = revert_model(store)
    names = predict_names if predict_names is not None else [
        n for n in latest[-1].get("predicted", latest[-1].get("images", [])) if n in store.names()]
    if names:
        from pipeline.stages.infer import predict

        yield from predict(store, cfg.inference, names=names, device=device)
    return {**back, "predicted": names}


# ---------------------------------------------------------------------------------------------- the update
def update_model(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", names: list[str] | None = None,
                 predict_names: list[str] | None = None, keep_worse: bool = False) -> Job[dict]:
    """Fine-tune the project's segmentation model on what changed (``names``; default :func:`changed_images`),
    keep the previous model as a version, and re-predict ``predict_names`` (default: the changed images).

    The model before and after are scored on what the project can measure (:mod:`pipeline.stages.guard`); an
    update worse by more than ``update.tolerance`` points is not kept (unless ``keep_worse``): the model stays as
    it was and the result's ``verdict`` says why, with both figures.

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
    return _fine_tune(store, cfg, device, changed, predict_names if predict_names is not None else changed,
                      keep_worse)


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    """Batch norms normalise with the trained model's running statistics and leave them as they are: an update's
    few batches, half of them from one to three images, are no estimate of the whole project's tissue."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class _UpdateBatches:
    """The update's batches: ``focus`` of each from the changed images' tiles (those with more verified pixels
    drawn more often), the rest replaying tiles of ``replay_images`` other training images so the model does not
    forget them; augmented by the training's own step."""

    def __init__(self, store: ProjectStore, changed: list[str], seg: SegConfig, ucfg: UpdateConfig,
                 gen: torch.Generator, augment):
        focus_ims, focus_codes = _tiles(store, changed, seg)
        if not focus_ims:
            raise OEEMError(f"{store.path}: the changed image(s) {', '.join(changed[:3])} have no labels to learn "
                            f"from yet; make their pseudo-masks (`oeem run {store.path}`) or tag their patches")
        others = [n for n in store.labelled_images(("train",)) or store.names("train") if n not in changed
                  and store.has(n, "pseudo")]
        self.replayed = torch.randperm(len(others), generator=gen)[:ucfg.replay_images].tolist()
        replay_ims, replay_codes = _tiles(store, [others[k] for k in sorted(self.replayed)], seg)
        self.tiles = len(focus_ims)
        codes = np.stack(focus_codes)
        self.focus_x, self.focus_c = torch.from_numpy(np.stack(focus_ims)), torch.from_numpy(codes)
        self.focus_p = torch.from_numpy(tile_weights(codes))
        self.replay_x = torch.from_numpy(np.stack(replay_ims)) if replay_ims else None
        self.replay_c = torch.from_numpy(np.stack(replay_codes)) if replay_codes else None
        self.size = seg.batch_size
        self.n_focus = self.size if self.replay_x is None else max(1, round(self.size * ucfg.focus))
        self.gen, self.augment = gen, augment

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.multinomial(self.focus_p, self.n_focus, replacement=True, generator=self.gen)
        x, code = self.focus_x[idx], self.focus_c[idx]
        if self.n_focus < self.size:
            ridx = torch.randint(0, len(self.replay_x), (self.size - self.n_focus,), generator=self.gen)
            x, code = torch.cat([x, self.replay_x[ridx]]), torch.cat([code, self.replay_c[ridx]])
        return self.augment(x, code)


@writes_project("updating the model")
def _fine_tune(store: ProjectStore, cfg: PipelineConfig, device: str, changed: list[str],
               to_predict: list[str], keep_worse: bool) -> Job[dict]:
    from pipeline.stages.guard import guard_set, judge, score_model
    from pipeline.stages.infer import predict
    from pipeline.stages.segment import SegmentationStep, load_segmenter_file
    from pipeline.stages.selfcheck import check_stage_network
    from pipeline.stages.training import Loop, prepare, train

    ucfg: UpdateConfig = cfg.update
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model, seg = load_segmenter_file(store.checkpoint_path(STAGE), dev)
    amp = resolve_precision(cfg.segmentation.precision, dev)  # this run's choice, not the training's
    yield from check_stage_network("segmentation", seg, dev, amp)
    model = place(model)  # (in the layout the check left)
    guard = guard_set(store, changed)
    scored = (seg, cfg.inference, store, guard, dev, cfg.patches.size, cfg.patches.min_fraction)
    before = (yield from score_model(model, *scored, what="model before the update")) if guard else {}
    yield Progress("update", 0, ucfg.iterations, f"cutting tiles of {len(changed)} changed image(s)")
    t_train = time.perf_counter()
    dist, gen = prepare(cfg.segmentation.threads, device, seg.batch_size, "segmentation.batch_size", ucfg.seed)
    # the training's own step, past its CE warm-up, with the update's weight of a verified pixel
    seg_step = SegmentationStep(seg, dev, amp, gen, ucfg.verified_weight)
    batches = _UpdateBatches(store, changed, seg, ucfg, gen, seg_step.augment)
    late = seg.training_iterations()

    def loss(net: torch.nn.Module, xc: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        if ucfg.freeze_batchnorm:
            _freeze_batchnorm(net)
        return seg_step.loss(net, *xc, late + step)

    opt = torch.optim.SGD(model.parameters(), lr=ucfg.lr, momentum=seg.momentum, weight_decay=seg.weight_decay)
    # a constant learning rate (poly power 0), no checkpoint: the update is kept, or not, as a whole at its end
    loop = Loop("update", "update's", ucfg.iterations, batches, loss, checkpoint=None, checkpoint_every=1,
                save_on_cancel=False, where=lambda step: f"step {step + 1}", message=lambda step: "fine-tuning",
                lr=ucfg.lr, poly_power=0.0, loss_weight=1.0)
    done = yield from train(store, loop, dist, model, opt)
    losses = [v for v in done.history if v is not None]
    model.eval()
    train_seconds = time.perf_counter() - t_train
    after = (yield from score_model(model, *scored, what="updated model")) if guard else {}
    verdict = judge(before, after, ucfg.tolerance, keep_worse)
    summary = {"images": changed, "steps": ucfg.iterations, "train_seconds": train_seconds,
               "first_loss": losses[0], "last_loss": losses[-1], "kept": verdict.keep, "verdict": verdict.line(),
               "before": before, "after": after, "judged_on": guard.kind if guard else None}
    if not verdict.keep:
        return {**summary, "seconds": time.perf_counter() - t0, "kept_version": None, "predicted": []}
    version = _keep_update(store, model, ucfg, {**summary, "replayed": len(batches.replayed), "tiles": batches.tiles,
                                                "predicted": to_predict})
    if to_predict:
        yield from predict(store, cfg.inference, names=to_predict, device=device)
    return {**summary, "seconds": time.perf_counter() - t0, "kept_version": version, "predicted": to_predict}


def _keep_update(store: ProjectStore, model: torch.nn.Module, ucfg: UpdateConfig, entry: dict[str, Any]) -> int:
    """The update is whole: the model from before is kept as a version, the new one written in its place, and the
    run record says what it learned from (its label state) and how (``updates``)."""
    from pipeline.stages.models import safe_torch_load

    version = keep_version(store, f"before the update of {len(entry['images'])} image(s)", ucfg.keep_versions)
    ck = safe_torch_load(store.checkpoint_path(STAGE))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ck["model"] = state
    if "train_model" in ck:
        ck["train_model"] = state
    store.save_checkpoint(STAGE, ck)
    previous = store.load_run(STAGE) or {}
    keys = ("images", "steps", "first_loss", "last_loss", "before", "after", "judged_on", "replayed", "tiles",
            "predicted")
    store.save_run(STAGE, {**previous, "run_id": uuid.uuid4().hex, "label_state": store.label_states(),
                           "updates": list(previous.get("updates", [])) + [{
                               **{k: entry[k] for k in keys}, "lr": ucfg.lr, "focus": ucfg.focus,
                               "verified_weight": ucfg.verified_weight, "freeze_batchnorm": ucfg.freeze_batchnorm,
                               "seconds": entry["train_seconds"], "kept_version": version,
                               "at": time.strftime("%Y-%m-%dT%H:%M:%S")}]})
    return version


# ---------------------------------------------------------------------------------------------- the full retrain
@writes_project("retraining on corrections")
def retrain_on_corrections(store: ProjectStore, cfg: PipelineConfig, seg: SegConfig, device: str = "auto",
                           keep_worse: bool = False, **train_kw: Any) -> Job[dict]:
    """:func:`pipeline.stages.segment.train_segmenter` for ``--labels corrected``, guarded as an update is.

    When a trained model exists that did not learn from the current corrections, it is kept as a version first
    (``oeem update --revert`` can bring it back) and scored with the new one on what the project can measure
    (:mod:`pipeline.stages.guard`); a retrain worse by more than ``update.tolerance`` points is reverted unless
    ``keep_worse``. The record gains ``guard`` (before, after, kept, the one-line verdict)."""
    from pipeline.stages.guard import guard_set, judge, score_model
    from pipeline.stages.segment import load_segmenter_file, stage_name, train_segmenter

    stage = stage_name(train_kw.get("run_name"))
    path = store.checkpoint_path(stage)
    previous = store.load_run(stage) or {}
    guarded = (seg.label_source == "corrected" and stage == STAGE and path.is_file()
               and previous.get("label_state") != store.label_states())
    if not guarded:
        return (yield from train_segmenter(store, seg, device, **train_kw))
    corrected = [n for n in store.names("train") if store.correction_version(n) is not None]
    guard = guard_set(store, corrected)
    dev = resolve_device(device)
    before: dict[str, float] = {}
    if guard is not None:
        model, old_seg = load_segmenter_file(path, dev)
        before = yield from score_model(model, old_seg, cfg.inference, store, guard, dev, cfg.patches.size,
                                        cfg.patches.min_fraction, stage="segmentation",
                                        what="model before the retrain")
    keep_version(store, "before the retrain on corrections", cfg.update.keep_versions)
    try:
        record = yield from train_segmenter(store, seg, device, **{**train_kw, "restart": True})
    except OEEMError as exc:  # e.g. the loss diverged: the half-trained model must not replace the good one
        revert_model(store)
        raise OEEMError(f"{exc}. The retrain on corrections did not finish; the model before it is back "
                        "(a lower --verified-weight or --lr may let it finish)") from None
    after: dict[str, float] = {}
    if guard is not None:
        model, _ = load_segmenter_file(path, dev)
        after = yield from score_model(model, seg, cfg.inference, store, guard, dev, cfg.patches.size,
                                       cfg.patches.min_fraction, stage="segmentation", what="retrained model")
    verdict = judge(before, after, cfg.update.tolerance, keep_worse)
    summary = {"before": before, "after": after, "kept": verdict.keep,
               "verdict": verdict.line("the retrained model"), "judged_on": guard.kind if guard else None}
    yield Progress("segmentation", 1, 1, notice=summary["verdict"] + (
        "" if verdict.keep else "; train with --keep-worse (or set it aside with --name) to keep it anyway"))
    if not verdict.keep:
        revert_model(store)
        return {**record, "guard": summary}
    record = {**record, "guard": summary}
    store.save_run(stage, record)
    return record
