"""Project-level glue: the configuration a project runs with, and the whole pipeline as one resumable job."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, SegConfig, apply_overrides, check, from_dict, preset, to_dict
from pipeline.data import find_samples
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore, atomic_write_json

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data" / "glas_synth"


def sample_data_folder() -> Path:
    if not SAMPLE_DATA.is_dir():
        raise OEEMError(f"the embedded sample data is missing ({SAMPLE_DATA}); reinstall oeem-napari from source")
    return SAMPLE_DATA


def create_project(data: str | Path, path: str | Path, overwrite: bool = False, progress=None,
                   val_images: int = 0, seed: int = 0) -> ProjectStore:
    """Make a project from a GlaS-style folder, or from the embedded sample data when ``data`` is ``sample``.

    ``val_images`` training images (with masks) are held out as the ``val`` split: no stage trains on them, and
    their masks are only used to choose settings, so the test split stays untouched until it is reported."""
    folder = sample_data_folder() if str(data) == "sample" else Path(data)
    store = ProjectStore.create(path, find_samples(folder), overwrite=overwrite, progress=progress)
    if val_images:
        hold_out_validation(store, val_images, seed)
    return store


def hold_out_validation(store: ProjectStore, count: int, seed: int = 0) -> list[str]:
    """Move ``count`` randomly chosen (seeded) training images with gland masks to the ``val`` split."""
    import numpy as np

    candidates = [n for n in store.names("train") if store.has(n, "mask")]
    if count < 0 or count >= len(candidates):
        raise OEEMError(f"cannot hold out {count} validation images: {len(candidates)} training images have "
                        f"masks and at least one must stay for training; choose 0 to {len(candidates) - 1}")
    rng = np.random.default_rng(seed)
    chosen = sorted((candidates[i] for i in rng.choice(len(candidates), count, replace=False)))
    for n in chosen:
        store.set_split(n, "val")
    store.root.attrs["validation"] = {"images": chosen, "seed": seed}
    return chosen


def project_config(store: ProjectStore, preset_name: str | None = None,
                   overrides: dict[str, Any] | None = None, save: bool = True) -> PipelineConfig:
    """The project's saved configuration (or a preset's), with overrides applied and saved back, so every later
    command - from the CLI or the plugin - runs with the same settings unless told otherwise."""
    path = store.path / "runs" / "config.json"
    if preset_name is None and path.is_file():
        cfg = from_dict(PipelineConfig, json.loads(path.read_text()))
    else:
        cfg = preset(preset_name or "cpu")
    if overrides:
        apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None})
    check(cfg)
    if save:
        atomic_write_json(path, to_dict(cfg))
    return cfg


def segmentation_settings(store: ProjectStore, cfg: PipelineConfig) -> SegConfig:
    """The segmentation settings a training on this project's current pseudo-masks runs with (the last
    self-training round may train longer: ``selftrain.last_round_scale``)."""
    from pipeline.selftrain import pseudo_round

    return cfg.segmentation_for_round(pseudo_round(store))


def stage_done(store: ProjectStore, stage: str, cfg: PipelineConfig) -> bool:
    """Has ``stage`` finished with the current configuration? (Lets ``oeem run`` resume.)"""
    rec = store.load_run(stage)
    if rec is None:
        return False
    from pipeline.models import settings_as_now
    from pipeline.selftrain import pseudo_round

    want = {"patches": to_dict(cfg.patches), "classifier": to_dict(cfg.classifier), "cams": to_dict(cfg.cam),
            "segmentation": to_dict(segmentation_settings(store, cfg)), "predict": to_dict(cfg.inference)}.get(stage)
    if want is None:
        return True
    want = json.loads(json.dumps(want))  # tuples -> lists, as saved
    if settings_as_now(json.loads(json.dumps(rec.get("config"))), want) != want:
        return False
    if stage in ("segmentation", "predict") and cfg.segmentation.label_source != "mask":
        # trained on (or predicted with a model of) the current self-training round's pseudo-masks?
        return rec.get("labels_round", 0) == pseudo_round(store)
    return True


def run_all(store: ProjectStore, cfg: PipelineConfig, device: str = "auto") -> Job[dict]:
    """Stage 1 + stage 2 + evaluation, skipping what is already done with this configuration."""
    if cfg.segmentation.weighs_by_error_prob():
        raise OEEMError("segmentation.error_prob_weight weighs the labels a label review has ranked, and `oeem run` "
                        "makes new labels in every self-training round: run it with the setting at 0, then "
                        "`oeem regions` and `oeem train-seg --error-prob-weight W`")
    from pipeline.cams import make_cams
    from pipeline.classify import make_patch_labels, train_classifier
    from pipeline.infer import evaluate, predict
    from pipeline.segment import train_segmenter

    report: dict[str, Any] = {}
    if not stage_done(store, "patches", cfg):
        yield Progress("patches", 0, 1, "cutting patches")
        make_patch_labels(store, cfg.patches)
    report["patches"] = store.load_run("patches")["summary"]
    if not stage_done(store, "classifier", cfg):
        yield from train_classifier(store, cfg.classifier, cfg.patches, device, on_mismatch="restart")
    report["classifier"] = store.load_run("classifier")
    if not stage_done(store, "cams", cfg):
        yield from make_cams(store, cfg.cam, cfg.patches, device)
    report["cams"] = store.load_run("cams")
    from pipeline.selftrain import pseudo_round, refine_round

    for r in range(cfg.selftrain.rounds + 1):
        if not stage_done(store, "segmentation", cfg):
            yield from train_segmenter(store, segmentation_settings(store, cfg), device, on_mismatch="restart")
        if r < cfg.selftrain.rounds and pseudo_round(store) == r:
            labelled = [n for s in ("train", "val") for n in store.names(s) if store.has(n, "patch_labels")]
            yield from predict(store, cfg.inference, names=labelled, device=device)
            report[f"selftrain-round-{r + 1}"] = yield from refine_round(store, cfg.patches.size, cam_cfg=cfg.cam)
    report["segmentation"] = store.load_run("segmentation")
    if not stage_done(store, "predict", cfg) or store.load_run("predict").get("images") != len(store.names()):
        yield from predict(store, cfg.inference, device=device)
    for split in ("train", "val", "test"):
        if any(store.has(n, "mask") for n in store.names(split)):
            ev = evaluate(store, split)
            report[f"evaluation-{split}"] = {k: v for k, v in ev.items() if k != "per_image"}
    return report
