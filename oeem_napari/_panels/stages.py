"""What each Run button starts: a stage of ``pipeline`` as a job (a generator of ``Progress``). No Qt here."""
from __future__ import annotations

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.store import ProjectStore

STAGES = {
    "classifier": "Train classifier",
    "cams": "CAMs + pseudo-masks",
    "segmentation": "Train segmentation",
    "predict": "Predict",
    "instances": "Separate glands",
    "selftrain": "Self-train round",
    "evaluate": "Evaluate",
    "all": "Run all",
}
JOB_LABELS = {**STAGES, "rank": "Rank regions"}  # every background job; STAGES are the Run box's buttons


def make_job(stage: str, store: ProjectStore, cfg: PipelineConfig, device: str, budget_s: float | None = None):
    """The job of ``stage`` (a key of JOB_LABELS); torch and the stages are imported only here, when one runs.
    ``budget_s``: *Run all*'s time budget (None: the preset's schedule)."""
    from oeem_napari._jobs import run_step
    from pipeline.stages.cams import make_cams
    from pipeline.stages.graph import classifier_job, predict_job, segmentation_settings
    from pipeline.stages.infer import evaluate_all
    from pipeline.stages.instances import make_instances
    from pipeline.stages.run import run_all
    from pipeline.stages.update import retrain_on_corrections

    if stage == "classifier":
        return classifier_job(store, cfg, device)
    if stage == "cams":
        return make_cams(store, cfg.cam, cfg.patches, device)
    if stage == "segmentation":
        return retrain_on_corrections(store, cfg, segmentation_settings(store, cfg), device, on_mismatch="restart")
    if stage == "predict":  # and its glands cut, so the Glands layer never lags behind
        return predict_job(store, cfg, device)
    if stage == "instances":
        return make_instances(store, cfg.instances)
    if stage == "selftrain":
        from pipeline.stages.selftrain import selftrain_round

        return selftrain_round(store, cfg)
    if stage == "evaluate":
        return run_step("evaluate", lambda: evaluate_all(store))
    if stage == "all":
        return run_all(store, cfg, device, budget_s=budget_s)
    if stage == "rank":
        from pipeline.review.regions import rank_label_errors

        return rank_label_errors(store, cfg, "train")
    raise OEEMError(f"unknown stage {stage!r}")


def summary(result: dict) -> str:
    """One line of the scores a job returned (Evaluate, Run all)."""
    parts = []
    for key, val in result.items():
        if isinstance(val, dict) and "mIoU" in val:
            objects = (f", object F1 {val['object_F1']:.1f}, object Dice {val['object_Dice']:.1f}"
                       if "object_F1" in val else "")
            parts.append(f"{key}: mIoU {val['mIoU']:.1f}{objects}")
        elif key in ("train", "test") and isinstance(val, dict):
            parts.append(f"{key}: mIoU {val.get('mIoU', float('nan')):.1f}")
    if result.get("left_out"):  # a ranking: the untagged images a round labelled have no CAM to weigh against
        parts.append(f"{len(result['left_out'])} untagged image(s) labelled by the model not ranked (no CAM)")
    return "; ".join(parts) or "done"
