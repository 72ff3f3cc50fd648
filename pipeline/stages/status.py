"""Which stage of the method is done with which settings: what ``oeem run`` skips when it resumes, and what the
budget planner (:mod:`pipeline.budget`) leaves out of its estimate. Below both, so neither imports the other."""
from __future__ import annotations

import json

from pipeline.config import PipelineConfig, SegConfig, to_dict
from pipeline.store import ProjectStore


def segmentation_settings(store: ProjectStore, cfg: PipelineConfig) -> SegConfig:
    """The segmentation settings a training on this project's current pseudo-masks runs with (the last
    self-training round may train longer: ``selftrain.last_round_scale``)."""
    return cfg.segmentation_for_round(store.pseudo_round)


def stage_done(store: ProjectStore, stage: str, cfg: PipelineConfig) -> bool:
    """Has ``stage`` finished with the current configuration? (Lets ``oeem run`` resume.)"""
    rec = store.load_run(stage)
    if rec is None:
        return False
    from pipeline.stages.models import settings_as_now

    want = {"patches": to_dict(cfg.patches), "classifier": to_dict(cfg.classifier), "cams": to_dict(cfg.cam),
            "segmentation": to_dict(segmentation_settings(store, cfg)), "predict": to_dict(cfg.inference)}.get(stage)
    if want is None:
        return True
    want = json.loads(json.dumps(want))  # tuples -> lists, as saved
    if settings_as_now(json.loads(json.dumps(rec.get("config"))), want) != want:
        return False
    if stage == "patches" and rec.get("tags") != store.tags_fingerprint():
        return False  # the pathologist's tags changed since
    # each stage names the run of the stage it learned from: a redone upstream stage makes it stale
    upstream = {"classifier": ("patches", "patches_run_id"), "cams": ("classifier", "classifier_run_id"),
                "predict": ("segmentation", "segmentation_run_id")}
    if stage == "segmentation" and cfg.segmentation.label_source != "mask":
        upstream["segmentation"] = ("cams", "cams_run_id")
    if stage in upstream:
        source = store.load_run(upstream[stage][0]) or {}
        if source.get("run_id") is not None and rec.get(upstream[stage][1]) != source["run_id"]:
            return False
    if stage in ("segmentation", "predict") and cfg.segmentation.label_source != "mask":
        # trained on (or predicted with a model of) the current self-training round's pseudo-masks?
        return rec.get("labels_round", 0) == store.pseudo_round
    return True
