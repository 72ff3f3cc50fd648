"""The method as a graph of stages, declared once: what runs in which order, when each step is done, and how it
runs. ``oeem run`` (:func:`pipeline.stages.run.run_all`) walks it; the budget planner (:mod:`pipeline.budget`)
asks it which steps are done and prices the rest; the single-stage commands and the dock's buttons run its
steps. Nothing else decides "done".

The order is a chain: patches -> classifier -> CAMs -> segmentation, then per self-training round r new labels
(the prediction, restricted by the patch labels) and a training on them, then the final prediction, its glands as
objects (instances) and the evaluation. A step is done when its record says it was made with the current settings
from the current run of the step before it (:func:`stage_done`); once a step is not done, none after it is, since
running it makes every later result stale.

Adding a stage (as the instances step was) is one entry in :func:`steps`, its rule in
:func:`step_done`, its runner in :func:`run_step` and its price in ``pipeline.budget.work`` (docs/architecture.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config import PipelineConfig, SegConfig, to_dict
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore


@dataclass(frozen=True)
class Step:
    """One step of the graph. ``key`` is what the plan and the records call it; ``line`` the plan line it is priced
    on (a round's labels and training share one); ``labels_round`` the self-training round of a labels or
    training step (0: stage 1's pseudo-masks)."""

    key: str
    kind: str  # patches | classifier | cams | labels | train | predict | instances | evaluate
    line: str
    labels_round: int = 0

    def describe(self, cfg: PipelineConfig) -> str:
        """What the step does, as progress and notices say it."""
        if self.kind == "train":
            seg = cfg.segmentation_for_round(self.labels_round)
            what = f"training, {seg.training_iterations()} iterations"
            return what if self.labels_round == 0 else f"round {self.labels_round}: {what}"
        if self.kind == "labels":
            return f"round {self.labels_round}: new labels from the prediction"
        return {"patches": "cutting patches", "classifier": "training the classifier", "cams": "CAMs and pseudo-masks",
                "predict": "predicting every image", "instances": "separating glands",
                "evaluate": "scoring against the masks"}[self.kind]


def round_line(labels_round: int) -> str:
    """The plan line (and budget key) of a self-training round: ``segmentation`` for round 0, ``round-r`` after."""
    return "segmentation" if labels_round == 0 else f"round-{labels_round}"


def steps(cfg: PipelineConfig) -> list[Step]:
    """The graph of ``cfg``, in the order it runs."""
    out = [Step("patches", "patches", "patches"), Step("classifier", "classifier", "classifier"),
           Step("cams", "cams", "cams")]
    for r in range(cfg.selftrain.rounds + 1):
        line = round_line(r)
        if r > 0:
            out.append(Step(f"{line}-labels", "labels", line, r))
        out.append(Step(f"{line}-train", "train", line, r))
    return out + [Step("predict", "predict", "predict"), Step("instances", "instances", "instances"),
                  Step("evaluate", "evaluate", "evaluate")]


# ---------------------------------------------------------------------------------------------- done
def segmentation_settings(store: ProjectStore, cfg: PipelineConfig) -> SegConfig:
    """The segmentation settings a training on this project's current pseudo-masks runs with (the last
    self-training round may train longer: ``selftrain.last_round_scale``)."""
    return cfg.segmentation_for_round(store.pseudo_round)


def stage_done(store: ProjectStore, stage: str, cfg: PipelineConfig) -> bool:
    """Has ``stage``'s record (patches, classifier, cams, segmentation, predict) been made with the current
    configuration, from the current run of the stage it learned from?"""
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


def step_done(step: Step, store: ProjectStore, cfg: PipelineConfig) -> bool:
    """The one rule per kind of step. A round's training is done when a later round's labels exist (it made
    them), or when the model of the labels the project holds now is trained; on the gland masks the network is
    trained once and the rounds only refine labels."""
    if step.kind in ("patches", "classifier", "cams"):
        return stage_done(store, step.kind, cfg)
    if step.kind == "labels":
        return store.pseudo_round >= step.labels_round
    if step.kind == "train":
        if cfg.segmentation.label_source != "mask" and step.labels_round < min(store.pseudo_round,
                                                                               cfg.selftrain.rounds):
            return True
        return stage_done(store, "segmentation", cfg)
    if step.kind == "predict":
        return stage_done(store, "predict", cfg) and (store.load_run("predict") or {}).get("images") == \
            len(store.names())
    if step.kind == "instances":
        from pipeline.stages.instances import instances_current

        return instances_current(store, cfg.instances)
    return False  # the evaluation always runs


def plan(store: ProjectStore, cfg: PipelineConfig) -> list[tuple[Step, bool]]:
    """Every step with whether ``oeem run`` will skip it: done by :func:`step_done`, and only until the first
    step that is not (running it makes everything after it stale)."""
    out, going = [], True
    for step in steps(cfg):
        going = going and step_done(step, store, cfg)
        out.append((step, going))
    return out


def done_keys(store: ProjectStore, cfg: PipelineConfig) -> set[str]:
    """The keys of the steps a run will skip, and of each plan line all of whose steps it will skip."""
    planned = plan(store, cfg)
    done = {s.key for s, d in planned if d}
    lines = {s.line for s, _ in planned}
    return done | {line for line in lines if all(d for s, d in planned if s.line == line)}


# ---------------------------------------------------------------------------------------------- running
def classifier_job(store: ProjectStore, cfg: PipelineConfig, device: str = "auto") -> Job[dict | None]:
    """Stage 1's training as the dock's button starts it: the patch labels again when the tags changed since
    (:func:`step_done`), then the classifier (``oeem train-cls`` leaves the patches to ``oeem patches``, as the
    ranks of a torchrun launch must not write)."""
    for step in steps(cfg)[:2]:
        if step.kind == "patches" and step_done(step, store, cfg):
            continue
        result = yield from run_step(step, store, cfg, device)
    return result


def predict_job(store: ProjectStore, cfg: PipelineConfig, device: str = "auto") -> Job[dict]:
    """The prediction as ``oeem predict`` and the dock's Predict start it: every image predicted, then cut into
    glands (the instances step), so the objects never lag behind the masks."""
    graph = {s.kind: s for s in steps(cfg)}
    result = yield from run_step(graph["predict"], store, cfg, device)
    yield from run_step(graph["instances"], store, cfg, device)
    return result


def run_step(step: Step, store: ProjectStore, cfg: PipelineConfig, device: str = "auto") -> Job[dict | None]:
    """Run one step as ``oeem run`` does (a checkpoint of other settings is moved aside, not an error); returns
    what the step reports."""
    if step.kind == "patches":
        from pipeline.stages.classify import make_patch_labels

        yield Progress("patches", 0, 1, step.describe(cfg))
        make_patch_labels(store, cfg.patches)
        return store.load_run("patches")
    if step.kind == "classifier":
        from pipeline.stages.classify import train_classifier

        return (yield from train_classifier(store, cfg.classifier, cfg.patches, device, on_mismatch="restart"))
    if step.kind == "cams":
        from pipeline.stages.cams import make_cams

        return (yield from make_cams(store, cfg.cam, cfg.patches, device))
    if step.kind == "train":
        from pipeline.stages.segment import train_segmenter

        seg = segmentation_settings(store, cfg)  # the labels the project holds: the step's round, or a later one
        what = Step(step.key, "train", step.line, store.pseudo_round).describe(cfg)
        yield Progress("segmentation", 0, seg.training_iterations(), what)
        return (yield from train_segmenter(store, seg, device, on_mismatch="restart"))
    if step.kind == "labels":
        from pipeline.stages.infer import predict
        from pipeline.stages.selftrain import join_untagged, refine_round, untagged_join

        untagged = untagged_join(cfg)
        if untagged is not None:
            join_untagged(store, untagged)  # before the prediction: the round labels them with it
        yield Progress("selftrain", 0, 1, step.describe(cfg))
        yield from predict(store, cfg.inference, names=store.labelled_images(), device=device)
        return (yield from refine_round(store, cfg.patches.size, cam_cfg=cfg.cam, untagged=untagged))
    if step.kind == "predict":
        from pipeline.stages.infer import predict

        return (yield from predict(store, cfg.inference, device=device))
    if step.kind == "instances":
        from pipeline.stages.instances import make_instances

        return (yield from make_instances(store, cfg.instances))
    if step.kind == "evaluate":
        from pipeline.stages.infer import evaluate_all

        return evaluate_all(store)
    raise ValueError(f"unknown step kind {step.kind!r}")
