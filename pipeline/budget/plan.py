"""A run's plan: what ``oeem run`` says at its start (and records), the schedule a budget sized, and its
re-sizing before each segmentation training from the time really left."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipeline.budget.durations import fmt_clock, fmt_duration
from pipeline.budget.probe import ZERO, Speeds, measure_segmentation, measure_speeds
from pipeline.budget.schedule import (
    ITERATION_FLOOR,
    SAFETY,
    largest_fitting,
    nice_iterations,
    plan_for_budget,
    round_kept,
    sized_settings,
    with_iterations,
)
from pipeline.budget.work import Estimate, done_stages, estimate, project_facts
from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError

if TYPE_CHECKING:
    from pipeline.progress import Job
    from pipeline.store import ProjectStore

def plan_text(est: Estimate, now: datetime, speeds: Speeds | None = None, budget_s: float | None = None,
              sized: dict[str, list] | None = None) -> str:
    """What a run says at its start: one line per stage with its expected duration and the wall-clock time it
    should end, then the total and the expected end (and the budget, with what it changed)."""
    head = "expected duration of each stage"
    if speeds is not None:
        head += (f" (speed measured in {speeds.probe_seconds:.1f} s, {speeds.precision}: classifier "
                 f"{speeds.classifier_step:.3g} s/step, segmentation {speeds.segmentation_step:.3g} s/step)")
    lines = [head + ":"]
    t = now
    for s in est.stages:
        if s.done:
            lines.append(f"  {s.label:<22} done")
            continue
        t = t + timedelta(seconds=s.seconds)
        lines.append(f"  {s.label:<22} {fmt_duration(s.seconds):>10}  ends ~{fmt_clock(t, now)}  ({s.detail})")
    end = now + timedelta(seconds=est.total)
    total = f"  {'total':<22} {fmt_duration(est.total):>10}  expected end {fmt_clock(end, now)}"
    if budget_s is not None:
        total += f" (budget {fmt_duration(budget_s)})"
    lines.append(total)
    if budget_s is not None:
        if sized:
            lines.append("  sized to the budget: " + ", ".join(f"{k} {_shown(a)} -> {_shown(b)}"
                                                             for k, (a, b) in sized.items()))
        else:
            lines.append("  the preset's schedule fits the budget")
    return "\n".join(lines)


def _shown(v: Any) -> str:
    return ",".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else str(v)


def _plain(obj: Any) -> Any:
    """JSON's view of a configuration (tuples become lists), to compare it with a saved one."""
    import json

    return json.loads(json.dumps(obj))


def start_of_run(store: ProjectStore, cfg: PipelineConfig, device: str = "auto", budget_s: float | None = None,
                 speeds: Speeds | None = None, spent_s: float = 0.0,
                 now: Callable[[], datetime] = datetime.now) -> Job[tuple[PipelineConfig, dict]]:
    """What ``oeem run`` does before its first training: measure the speed (unless ``speeds`` is given), estimate
    what is left to do, and with ``budget_s`` size the schedule to fit it (``spent_s``: seconds the run has used
    already). Yields the plan as a notice (its ``expected_s`` metric is the total, for the plugin's end time) and
    returns the configuration to run with and the report's ``estimate`` entry.

    A budget's schedule is kept in the run record ``budget``: the same budget on the same settings resumes it
    instead of sizing afresh from a new measurement (which would move the settings a little and redo the stages
    already trained)."""
    from pipeline.config import from_dict, to_dict
    from pipeline.progress import Progress

    base, resumed = cfg, None
    if budget_s is not None:
        rec = store.load_run("budget") or {}
        if rec.get("budget_s") == budget_s and rec.get("base") == _plain(to_dict(cfg)):
            try:
                cfg, resumed = from_dict(PipelineConfig, rec["config"]), rec
            except (OEEMError, KeyError, TypeError):  # saved by another version: size afresh
                cfg, resumed = base, None
    facts = project_facts(store, cfg)
    if speeds is None and estimate(cfg, ZERO, facts, done_stages(store, cfg)).nothing_to_do:
        text = "every stage is done with these settings: only the evaluation runs"
        yield Progress("estimate", 1, 1, "", notice=text)
        return cfg, {"seconds": {}, "total_s": 0.0, "lines": text, "budget_s": budget_s}
    if speeds is None:
        yield Progress("estimate", 0, 1, "measuring this machine's speed")
        speeds = measure_speeds(cfg, device)
        spent_s += speeds.probe_seconds
    if budget_s is not None and resumed is None:
        cfg, est = plan_for_budget(cfg, speeds, facts, budget_s, lambda c: done_stages(store, c), spent_s)
    else:
        est = estimate(cfg, speeds, facts, done_stages(store, cfg))
    sized = sized_settings(base, cfg) if budget_s is not None else None
    started = now()
    text = plan_text(est, started, speeds, budget_s, sized)
    if resumed is not None:
        text += f"\n  (the schedule sized for this budget on {resumed.get('made', '?')[:16]}, resumed)"
    entry = {"seconds": est.seconds(), "total_s": round(est.total, 1),
             "ends_at": (started + timedelta(seconds=est.total)).isoformat(timespec="seconds"),
             "speeds": speeds.as_dict(), "budget_s": budget_s, "sized": sized, "lines": text}
    if budget_s is not None and resumed is None:
        store.save_run("budget", {"budget_s": budget_s, "base": _plain(to_dict(base)),
                                  "config": _plain(to_dict(cfg)), "made": started.isoformat(timespec="seconds"),
                                  "estimate": entry})
    yield Progress("estimate", 1, 1, "", {"expected_s": round(est.total, 1)}, notice=text)
    return cfg, entry


def resize_segmentation(store: ProjectStore, cfg: PipelineConfig, device: str, budget_s: float, spent_s: float,
                        now: Callable[[], datetime] = datetime.now,
                        measure: Callable[..., Speeds] = measure_segmentation) -> Job[tuple[PipelineConfig, dict]]:
    """Before each segmentation training a budgeted run sizes the iterations again, from the time actually left
    (``budget_s`` - ``spent_s``) and the segmentation's speed: before the first training measured once more
    (:func:`measure_segmentation`), before a self-training round's training the speed the training before it
    ran at, checkpoints and data included.

    Why: the start's probe times a few steps in a few seconds, and on a shared or throttled machine those can be
    25 % off either way (bf16 on 2 Xeon cores: 0.36-0.62 s for a step that took 0.45 in the run), so a run ended
    30 % early; and a probe times the network, not the loop around it (about 0.05 s a step there). By now the
    classifier and the CAMs have taken what they took; left to size are the iterations (between
    ``ITERATION_FLOOR`` and the preset's) and the self-training rounds still to come, which go first as in
    :func:`plan_for_budget` (none is added). Once per training: each choice is kept in the run record ``budget``
    so a resumed run trains the same schedule. Returns the configuration and the report's entry for this
    training (empty when there was nothing to resize)."""
    from pipeline.config import from_dict, to_dict
    from pipeline.progress import Progress

    rec = store.load_run("budget") or {}
    labels_round = store.pseudo_round  # the labels the next training learns from: its round
    sizes = rec.get("resized") or {}
    if rec.get("budget_s") != budget_s or str(labels_round) in sizes or "estimate" not in rec:
        return cfg, {}
    try:
        base = from_dict(PipelineConfig, rec["base"])
        speeds = Speeds(**rec["estimate"]["speeds"])
    except (OEEMError, KeyError, TypeError):  # saved by another version: keep the plan
        return cfg, {}
    last = (store.load_run("segmentation") or {}) if labels_round > 0 else {}
    if last.get("it_per_s") and last.get("precision", speeds.precision) == speeds.precision:
        speeds = dataclasses.replace(speeds, segmentation_step=1.0 / last["it_per_s"], probe_seconds=0.0)
        how = f"the last training ran {speeds.segmentation_step:.3g} s/step"
    else:
        yield Progress("estimate", 0, 1, "measuring the segmentation's speed again")
        speeds = measure(cfg, speeds, device)
        spent_s += speeds.probe_seconds
        how = f"segmentation measured again: {speeds.segmentation_step:.3g} s/step"
    facts = project_facts(store, cfg)
    room = SAFETY * (budget_s - spent_s)

    def at(rounds: int, v: int) -> PipelineConfig:
        c = with_iterations(cfg, v)
        c.selftrain = dataclasses.replace(c.selftrain, rounds=rounds)
        return c

    def cost(c: PipelineConfig) -> Estimate:
        return estimate(c, speeds, facts, done_stages(store, c))

    most = base.segmentation.iterations
    floor = max(1, math.ceil(most * ITERATION_FLOOR))
    planned, planned_rounds = cfg.segmentation.iterations, cfg.selftrain.rounds
    # as the plan: a round still to come is kept only while the training it refines stays near the preset's
    # iterations, so a round goes before the iterations fall below that; the round whose labels are made stays
    rounds, low = labels_round, floor
    for r in range(planned_rounds, labels_round, -1):
        keep = round_kept(most, floor)
        if cost(at(r, keep)).total <= room:
            rounds, low = r, keep
            break
    iterations = max(low, nice_iterations(largest_fitting(low, most, lambda v: cost(at(rounds, v)).total <= room)))
    new = cfg if (iterations, rounds) == (planned, planned_rounds) else at(rounds, iterations)
    est = cost(new)
    started = now()
    left = budget_s - spent_s
    where = "the segmentation's start" if labels_round == 0 else f"self-training round {labels_round}'s training"
    head = f"at {where}, {fmt_duration(spent_s)} of the {fmt_duration(budget_s)} budget used ({how}): "
    changes = [f"{k} {a} -> {b}" for k, a, b in (("selftrain.rounds", planned_rounds, rounds),
                                                 ("segmentation.iterations", planned, iterations)) if a != b]
    head += ", ".join(changes) if changes else f"{planned} iterations as planned"
    end = fmt_clock(started + timedelta(seconds=est.total), started)
    text = head + f"; the rest takes about {fmt_duration(est.total)}, expected end {end}"
    if est.total > left:
        text += (f" - {fmt_duration(est.total - left)} past the budget even at the fewest iterations "
                 f"({floor}): the run goes on")
    entry = {"round": labels_round, "spent_s": round(spent_s, 1), "left_s": round(left, 1),
             "planned_iterations": planned, "iterations": iterations, "planned_rounds": planned_rounds,
             "rounds": rounds, "speeds": speeds.as_dict(), "seconds": est.seconds(), "total_s": round(est.total, 1),
             "lines": text}
    store.save_run("budget", {**rec, "config": _plain(to_dict(new)), "resized": {**sizes, str(labels_round): entry}})
    yield Progress("estimate", 1, 1, "", {"expected_s": round(est.total, 1)}, notice=text)
    return new, entry
