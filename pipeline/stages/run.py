"""The whole method as one resumable job (``oeem run``, the plugin's *Run all*): each stage runs only
when its result is missing or was made with other settings.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.stages.status import segmentation_settings, stage_done
from pipeline.store import ProjectStore

if TYPE_CHECKING:
    from pipeline.budget import Speeds


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
    from pipeline.device import compute_plan
    from pipeline.stages.cams import make_cams
    from pipeline.stages.classify import make_patch_labels, train_classifier
    from pipeline.stages.infer import evaluate_all, predict
    from pipeline.stages.segment import train_segmenter

    t0 = time.perf_counter()
    report: dict[str, Any] = {"plan": compute_plan(device, cfg.segmentation.precision)}
    yield Progress("plan", 0, 1, notice=report["plan"])
    from pipeline.device import resolve_device
    from pipeline.stages.selfcheck import check_networks, run_probes

    # before anything long: a kernel that crashes natively on this CPU is found in a child process, not here
    report["self_check"] = yield from check_networks(run_probes(cfg, resolve_device(device)), resolve_device(device))
    if not stage_done(store, "patches", cfg):
        yield Progress("patches", 0, 1, "cutting patches")
        make_patch_labels(store, cfg.patches)
    report["patches"] = store.load_run("patches")["summary"]
    if estimate or budget_s is not None:
        from pipeline.budget import start_of_run

        cfg, report["estimate"] = yield from start_of_run(store, cfg, device, budget_s, speeds,
                                                          time.perf_counter() - t0)
    t_plan = time.perf_counter()
    if not stage_done(store, "classifier", cfg):
        yield from train_classifier(store, cfg.classifier, cfg.patches, device, on_mismatch="restart")
    report["classifier"] = store.load_run("classifier")
    if not stage_done(store, "cams", cfg):
        yield from make_cams(store, cfg.cam, cfg.patches, device)
    report["cams"] = store.load_run("cams")
    from pipeline.stages.selftrain import join_untagged, refine_round

    resized: list[tuple[dict, float]] = []  # each training's second sizing, and when it was made
    for r in range(cfg.selftrain.rounds + 1):
        if not stage_done(store, "segmentation", cfg):
            if budget_s is not None:
                cfg, entry = yield from _resized(store, cfg, device, budget_s, time.perf_counter() - t0, speeds)
                if entry:
                    resized.append((entry, time.perf_counter()))
            yield from train_segmenter(store, segmentation_settings(store, cfg), device, on_mismatch="restart")
        if r < cfg.selftrain.rounds and store.pseudo_round == r:
            untagged = cfg.patches if cfg.selftrain.untagged_images else None
            if untagged is not None:
                join_untagged(store, untagged)  # before the prediction: the round labels them with it
            yield from predict(store, cfg.inference, names=store.labelled_images(), device=device)
            report[f"selftrain-round-{r + 1}"] = yield from refine_round(store, cfg.patches.size, cam_cfg=cfg.cam,
                                                                         untagged=untagged)
    report["segmentation"] = store.load_run("segmentation")
    if not stage_done(store, "predict", cfg) or store.load_run("predict").get("images") != len(store.names()):
        yield from predict(store, cfg.inference, device=device)
    for split, ev in evaluate_all(store).items():
        report[f"evaluation-{split}"] = {k: v for k, v in ev.items() if k != "per_image"}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if "estimate" in report:  # what the plan foresaw, against what it took
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
