"""The schedule search: the preset's schedule shrunk, knob by knob in a fixed order, until its estimate fits a
budget."""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pipeline.budget.durations import fmt_duration
from pipeline.budget.probe import Speeds
from pipeline.budget.work import Estimate, ProjectFacts, estimate
from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError

# the schedule is sized to this share of the budget: the probe sees the networks, not the disk, and shared cores
# slow a run down after it was measured
SAFETY = 0.9
KEEP_ITERATIONS = 0.75  # a self-training round is kept while its iterations stay above this share of the preset's
# segmentation iterations shrink to this share of the preset's before classifier epochs do: above it more iterations
# buy little (1000 -> 2000: +2 validation points), below it much (500 -> 650: +5, docs/benchmarks.md)
ITERATION_KEEP = 0.5
ITERATION_FLOOR = 0.25  # segmentation iterations never go below this share of the preset's
EPOCH_FLOOR = 0.25  # nor classifier epochs
CAM_SCALES_KEPT = 2  # CAM scales beyond the two nearest 1 go early: scale 2 costs 2.3x scales 1 + 1.5 and added nothing


def round_kept(most: int, floor: int) -> int:
    """The fewest iterations a training may shrink to while a self-training round after it is kept: a round on an
    underfitted model makes worse labels, so the round goes first (``KEEP_ITERATIONS`` of the preset's)."""
    return max(floor, math.ceil(most * KEEP_ITERATIONS))


@dataclass(frozen=True)
class Schedule:
    """The knobs a budget turns."""

    rounds: int
    iterations: int
    epochs: int
    scales: tuple[float, ...]


def _apply(cfg: PipelineConfig, base: PipelineConfig, s: Schedule) -> PipelineConfig:
    new = with_iterations(cfg, s.iterations, base)
    new.selftrain = dataclasses.replace(cfg.selftrain, rounds=s.rounds)
    new.classifier = dataclasses.replace(cfg.classifier, epochs=s.epochs)
    new.cam = dataclasses.replace(cfg.cam, scales=s.scales)
    return new


def nice_iterations(iterations: int) -> int:
    """Iterations rounded down to tens above 100 (plans read better, and a re-plan moves less)."""
    return iterations if iterations <= 100 else iterations - iterations % 10


def _ladder(base: PipelineConfig) -> list[tuple[Schedule, str | None, int]]:
    """The schedules a budget tries, in order: (schedule, the knob sized continuously or None, its floor)."""
    rounds, its, epochs = base.selftrain.rounds, base.segmentation.iterations, base.classifier.epochs
    scales = tuple(base.cam.scales)
    floor_i, floor_e = max(1, math.ceil(its * ITERATION_FLOOR)), max(1, math.ceil(epochs * EPOCH_FLOOR))
    keep_i = max(floor_i, math.ceil(its * ITERATION_KEEP))
    # CAM scales by how cheap they are: the nearest 1 first, then the smaller of two equally far
    by_cost = sorted(scales, key=lambda s: (abs(math.log(s)), s))

    def keeping(k: int) -> tuple[float, ...]:
        return tuple(s for s in scales if s in by_cost[:k])

    two = keeping(CAM_SCALES_KEPT)
    steps: list[tuple[Schedule, str | None, int]] = []
    # 1. CAM scales beyond the two nearest 1; 2. self-training rounds, each kept while its iterations stay near
    # the preset's
    for r in range(rounds, 0, -1):
        steps.append((Schedule(r, its, epochs, two), "iterations", round_kept(its, floor_i)))
    steps.append((Schedule(0, its, epochs, two), "iterations", keep_i))  # 3. iterations down to half the preset's
    steps.append((Schedule(0, keep_i, epochs, two), "epochs", floor_e))  # 4. classifier epochs, down to their floor
    # 5. iterations down to their floor with the preset's epochs (where the classifier is cheap, as on a few small
    # images, keeping its epochs costs a few iterations), else with epochs at their floor
    steps.append((Schedule(0, keep_i, epochs, two), "iterations", floor_i))
    steps.append((Schedule(0, keep_i, floor_e, two), "iterations", floor_i))
    for k in range(len(two) - 1, 0, -1):  # 6. the last CAM scales, the costliest first, down to the one nearest 1
        steps.append((Schedule(0, floor_i, floor_e, keeping(k)), None, 0))
    return steps


def plan_for_budget(cfg: PipelineConfig, speeds: Speeds, facts: ProjectFacts, budget_s: float,
                    done_for: Callable[[PipelineConfig], Collection[str]] = lambda c: (),
                    spent_s: float = 0.0) -> tuple[PipelineConfig, Estimate]:
    """The configuration whose :func:`estimate` fits ``SAFETY`` x (``budget_s`` - ``spent_s``, what the run has
    used already), and that estimate. A budget never lengthens the preset's schedule; when it is too short, the
    schedule shrinks in this order, each step only when the one before cannot fit:

    1. CAM scales beyond the two nearest 1 (``CAM_SCALES_KEPT``);
    2. self-training rounds, one by one; while a round is kept its segmentation iterations may shrink to
       ``KEEP_ITERATIONS`` of the preset's (a round on an underfitted model makes worse labels);
    3. segmentation iterations, down to ``ITERATION_KEEP`` of the preset's;
    4. classifier epochs, down to ``EPOCH_FLOOR`` of the preset's;
    5. segmentation iterations, down to ``ITERATION_FLOOR`` of the preset's: with the preset's epochs where that
       fits (a cheap classifier, as on a few small images), else with epochs at their floor;
    6. the last CAM scales, largest first, down to the one nearest 1.

    After 4 or 6 the time a whole epoch or scale leaves over goes back to segmentation iterations
    (:func:`fill_iterations`). The order follows what each knob bought per minute on GlaS in fp32
    (docs/benchmarks.md, *Quality against a time budget*).

    ``done_for(cfg)`` names the stages already done with ``cfg`` (:func:`done_stages`): they cost nothing. Too
    short a budget is an :class:`OEEMError` naming the smallest that works."""
    room = SAFETY * (budget_s - spent_s)

    def cost(c: PipelineConfig) -> Estimate:
        return estimate(c, speeds, facts, done_for(c))

    est = cost(cfg)
    if est.total <= room:
        return cfg, est
    smallest = None
    for schedule, knob, floor in _ladder(cfg):
        if knob is None:
            c = _apply(cfg, cfg, schedule)
            smallest = cost(c)
            if smallest.total <= room:
                c = fill_iterations(c, cost, room, cfg.segmentation.iterations)
                return c, cost(c)
            continue
        top = getattr(schedule, knob)

        def at(v: int) -> PipelineConfig:
            return _apply(cfg, cfg, dataclasses.replace(schedule, **{knob: v}))

        low = cost(at(floor))
        smallest = low
        if low.total > room:
            continue
        lo = largest_fitting(floor, top, lambda v: cost(at(v)).total <= room)
        value = nice_iterations(lo) if knob == "iterations" else lo
        value = max(value, floor)
        c = at(value)
        if knob != "iterations":
            c = fill_iterations(c, cost, room, cfg.segmentation.iterations)
        return c, cost(c)
    need = spent_s + (smallest.total if smallest else est.total) / SAFETY
    raise OEEMError(f"a {fmt_duration(budget_s)} budget is too small on this machine: the smallest schedule takes "
                    f"about {fmt_duration(spent_s + (smallest or est).total)}; give --budget "
                    f"{math.ceil(need / 60)}m or more")


def fill_iterations(c: PipelineConfig, cost: Callable[[PipelineConfig], Estimate], room: float,
                    most: int) -> PipelineConfig:
    """``c`` with as many segmentation iterations (up to ``most``, the preset's) as still fit ``room``: once
    epochs or CAM scales had to shrink, the time a whole epoch or scale left over goes to the segmentation."""
    seg = c.segmentation
    lo = largest_fitting(seg.iterations, most, lambda v: cost(with_iterations(c, v)).total <= room)
    value = max(seg.iterations, nice_iterations(lo))
    return c if value == seg.iterations else with_iterations(c, value)


def with_iterations(c: PipelineConfig, v: int, base: PipelineConfig | None = None) -> PipelineConfig:
    """``c`` with ``v`` segmentation iterations; what trains on the gland masks (``full_iterations``) grows or
    shrinks alike, in proportion to ``base``'s (default ``c``'s) - the one place a schedule scales them."""
    seg, ref = c.segmentation, (base or c).segmentation
    new = copy.deepcopy(c)
    full = ref.full_iterations
    if ref.label_source == "mask" and full > 0 and v != ref.iterations:
        full = max(1, round(full * v / ref.iterations))
    new.segmentation = dataclasses.replace(seg, iterations=v, full_iterations=full)
    return new


def largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest value in [lo, hi] that ``fits`` (lo when none above it does): a schedule's cost grows with each
    knob, so a bisection finds it in a few estimates."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def sized_settings(before: PipelineConfig, after: PipelineConfig) -> dict[str, list]:
    """The settings a budget changed: dotted key -> [preset's, sized]."""
    pairs = {"selftrain.rounds": (before.selftrain.rounds, after.selftrain.rounds),
             "segmentation.iterations": (before.segmentation.iterations, after.segmentation.iterations),
             "segmentation.full_iterations": (before.segmentation.full_iterations,
                                              after.segmentation.full_iterations),
             "classifier.epochs": (before.classifier.epochs, after.classifier.epochs),
             "cam.scales": (list(before.cam.scales), list(after.cam.scales))}
    return {k: [a, b] for k, (a, b) in pairs.items() if a != b}
