"""How long a run will take, and a schedule that fits a time budget (``oeem run --budget 60m``, the plugin's
*Budget*).

Why: the same preset takes an hour on a CPU with native bf16 and about four on one without, and nothing said so
before the run ended. So every ``oeem run`` first measures this machine (:func:`measure_speeds`: a few real steps
of each network on random tensors, in the precision the run will use), counts the work each stage will do on
this project (:func:`project_facts`, :func:`estimate`), and says at its start how long each stage will take and
when it will end (:func:`plan_text`). With a budget, :func:`plan_for_budget` shrinks the preset's schedule until
its estimate fits, in a fixed order (see there), or refuses in one line that names the smallest budget that works.

Torch is imported only by the probe, so the plugin can use the rest without loading it.
"""
from pipeline.budget.durations import DURATION_FORMS, fmt_clock, fmt_duration, parse_duration
from pipeline.budget.plan import plan_text, resize_segmentation, start_of_run
from pipeline.budget.probe import ZERO, Speeds, measure_segmentation, measure_speeds, precision_name_for
from pipeline.budget.schedule import (
                                      CAM_SCALES_KEPT,
                                      EPOCH_FLOOR,
                                      ITERATION_FLOOR,
                                      ITERATION_KEEP,
                                      KEEP_ITERATIONS,
                                      SAFETY,
                                      Schedule,
                                      fill_iterations,
                                      plan_for_budget,
                                      sized_settings,
                                      with_iterations,
)
from pipeline.budget.work import (
                                      IO_PER_MPX,
                                      Estimate,
                                      ProjectFacts,
                                      StageEstimate,
                                      cam_megapixels,
                                      done_stages,
                                      estimate,
                                      predict_megapixels,
                                      project_facts,
)

__all__ = ["CAM_SCALES_KEPT", "DURATION_FORMS", "EPOCH_FLOOR", "IO_PER_MPX", "ITERATION_FLOOR", "ITERATION_KEEP",
           "KEEP_ITERATIONS", "SAFETY", "ZERO", "Estimate", "ProjectFacts", "Schedule", "Speeds", "StageEstimate",
           "cam_megapixels", "done_stages", "estimate", "fill_iterations", "fmt_clock", "fmt_duration",
           "measure_segmentation", "measure_speeds", "parse_duration", "plan_for_budget", "plan_text",
           "precision_name_for", "predict_megapixels", "project_facts", "resize_segmentation", "sized_settings",
           "start_of_run", "with_iterations"]
