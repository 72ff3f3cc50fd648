"""The whole method as one resumable job (``oeem run``, the plugin's *Run all*): each stage runs only
when its result is missing or was made with other settings.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.stages.graph import run_step, step_done, steps
from pipeline.store import ProjectStore
from pipeline.store.lock import writes_project

if TYPE_CHECKING:
    from pipeline.budget import Speeds


@writes_project("oeem run")
def run_all(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", budget_s: float | None = None,
            speeds: Speeds | None = None, estimate: bool = True) -> Job[dict]:
    """Stage 1 + stage 2 + evaluation, skipping what is already done with this configuration.

    After the patches it says how long each stage will take (:func:`pipeline.budget.start_of_run`: a short speed
    probe, or the given ``speeds``); with ``budget_s`` it runs a schedule sized to end within that many seconds
    of its start, and sizes the segmentation's iterations once more before each training from the time left
    (:func:`pipeline.budget.resize_segmentation`). ``estimate=False`` skips the probe and the plan (without a
    budget)."""
    if cfg.segmentation.weighs_by_error_prob():
        raise OEEMError("segmentation.error_prob_weight weighs the labels a label review has ranked, and `oeem run` "
                        "makes new labels in every self-training round: run it with the setting at 0, then "
                        "`oeem regions` and `oeem train-seg --error-prob-weight W`")
    from pipeline.device import compute_plan, resolve_device
    from pipeline.stages.selfcheck import check_networks, run_probes

    t0 = time.perf_counter()
    report: dict[str, Any] = {"plan": compute_plan(device, cfg.segmentation.precision)}
    yield Progress("plan", 0, 1, notice=report["plan"])
    # before anything long: a kernel that crashes natively on this CPU is found in a child process, not here
    report["self_check"] = yield from check_networks(run_probes(cfg, resolve_device(device)), resolve_device(device))
    t_plan = None
    resized: list[tuple[dict, float]] = []  # each training's second sizing, and when it was made
    visited: set[str] = set()
    # the graph of the current settings, walked once: a budget may take rounds away on the way
    while (step := next((s for s in steps(cfg) if s.key not in visited), None)) is not None:
        visited.add(step.key)
        if step.kind == "evaluate":
            for split, ev in (yield from run_step(step, store, cfg, device)).items():
                report[f"evaluation-{split}"] = {k: v for k, v in ev.items() if k != "per_image"}
            continue
        if not step_done(step, store, cfg):
            if step.kind == "train" and budget_s is not None:
                cfg, entry = yield from _resized(store, cfg, device, budget_s, time.perf_counter() - t0, speeds)
                if entry:
                    resized.append((entry, time.perf_counter()))
            result = yield from run_step(step, store, cfg, device)
            if step.kind == "labels":
                report[f"selftrain-round-{step.labels_round}"] = result
        if step.kind == "patches":
            report["patches"] = store.load_run("patches")["summary"]
            if estimate or budget_s is not None:  # the plan, once the work is known
                from pipeline.budget import start_of_run

                cfg, report["estimate"] = yield from start_of_run(store, cfg, device, budget_s, speeds,
                                                                  time.perf_counter() - t0)
            t_plan = time.perf_counter()
        elif step.kind in ("classifier", "cams"):
            report[step.kind] = store.load_run(step.kind)
        elif step.kind == "predict":
            report["segmentation"] = store.load_run("segmentation")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if "estimate" in report and t_plan is not None:  # what the plan foresaw, against what it took
        report["estimate"]["actual_s"] = round(time.perf_counter() - t_plan, 1)
        if resized:  # and what each later sizing foresaw
            report["estimate"]["resized"] = [{**e, "actual_s": round(time.perf_counter() - t, 1)} for e, t in resized]
    return report


def _resized(store: ProjectStore, cfg: PipelineConfig, device: str, budget_s: float, spent_s: float,
             speeds: Speeds | None) -> Job[tuple[PipelineConfig, dict]]:
    """:func:`pipeline.budget.resize_segmentation`; speeds given by the caller (a test's slow machine) stand for
    its measurement too."""
    from pipeline.budget import measure_segmentation, resize_segmentation

    measure = measure_segmentation if speeds is None else (lambda *a, **k: speeds)
    return (yield from resize_segmentation(store, cfg, device, budget_s, spent_s, measure=measure))
