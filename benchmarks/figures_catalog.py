"""Every figure the README and docs quote: the command that makes its result file, how long it takes on 2 cores,
what the docs quote from it and the tables made from it (``figures.py`` checks, writes and runs them)."""
from __future__ import annotations

import statistics

from figures_core import BENCH_DOC, README, Figure, Quote, Table
from figures_tables import (
    LR,
    actions_table,
    base_row,
    bias_table,
    budget_table,
    chosen_row,
    cleaning_table,
    crash_table,
    end_to_end_table,
    faults_table,
    headline_table,
    instances_table,
    limits_errors_table,
    limits_table,
    live_table,
    losses_table,
    minute_label,
    orientations_table,
    paired_mean,
    precision_table,
    preview_table,
    remade_quote,
    reproduced_table,
    retrain_table,
    review_hits,
    review_table,
    rounds_errors_table,
    rounds_table,
    scales_table,
    seeds_mean,
    seeds_table,
    session_table,
    shipped_row,
    slide_scale_out_table,
    slide_sizes_table,
    suggest_table,
    targets_table,
    testa,
    update_mean,
    update_row,
    update_safety_table,
    update_seconds,
    weak25_table,
    weak_budget_table,
    weak_row,
)

FIGURES: tuple[Figure, ...] = (
    Figure("end-to-end-cpu", "PY benchmarks/end_to_end.py --preset cpu --fresh", "end_to_end-cpu.json", 37,
           "`oeem run --preset cpu` on GlaS (75 training images, 10 for validation), timed, scored on testA",
           (Quote(README, lambda d: testa(d, "mIoU"), what="testA mIoU"),
            Quote(README, lambda d: d["evaluation"]["val"]["mIoU"], what="validation mIoU"),
            Quote(README, lambda d: testa(d, "object_F1"), "{:.1f}", "testA object F1"),
            Quote(README, lambda d: testa(d, "object_Dice"), "{:.1f}", "testA object Dice"),
            Quote(README, lambda d: testa(d, "object_Hausdorff"), "{:.1f}", "testA object Hausdorff"),
            Quote(README, lambda d: d["wall_seconds"] / 60, "{:.1f} min", "wall time"),
            Quote(BENCH_DOC, lambda d: d["pseudo"]["train"], what="stage-1 pseudo-masks"),
            Quote(BENCH_DOC, lambda d: d["selftrain"][-1]["train"], what="pseudo-masks after the rounds")),
           tables=(Table(BENCH_DOC, "end-to-end-cpu", end_to_end_table),
                   Table(BENCH_DOC, "headline", headline_table(BENCH_DOC)),
                   Table(README, "headline", headline_table(README)), Table(BENCH_DOC, "targets", targets_table))),
    Figure("end-to-end-supervised", "PY benchmarks/end_to_end.py --preset cpu --set segmentation.label_source=mask "
           "--name cpu-supervised", "end_to_end-cpu-supervised.json", 50,
           "the fully supervised reference: the cpu preset's U-Net trained on the gland masks",
           (Quote(README, lambda d: testa(d, "mIoU"), what="testA mIoU"),
            Quote(README, lambda d: d["evaluation"]["val"]["mIoU"], what="validation mIoU"),
            Quote(README, lambda d: d["stage_seconds"]["segmentation"] / 60, "{:.1f} min of training",
                  "segmentation time"),
            *(Quote(BENCH_DOC, v, f, w) for v, f, w in (
                (lambda d: testa(d, "mIoU"), "{:.2f}", "testA mIoU"),
                (lambda d: d["evaluation"]["val"]["mIoU"], "{:.2f}", "validation mIoU"))))),
    Figure("instances-cpu", "PY benchmarks/end_to_end.py --preset cpu && PY benchmarks/instances.py "
           "benchmarks/results/end_to_end-cpu.oeem.zarr", "instances-cpu.json", 42,
           "glands as objects: every separation of the cpu model's prediction, chosen on validation, on testA",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: chosen_row(d)["test"]["object_F1"], "{:.1f}", "testA object F1"),
               (lambda d: chosen_row(d)["test"]["object_Dice"], "{:.1f}", "testA object Dice"),
               (lambda d: chosen_row(d)["test"]["object_Hausdorff"], "{:.1f}", "testA object Hausdorff"),
               (lambda d: chosen_row(d)["val"]["object_F1"], "{:.1f}", "validation object F1"))) + (
               Quote(BENCH_DOC, lambda d: chosen_row(d)["ms_per_image"], "{:.1f} ms", "ms per image"),
               Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
               Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % of the slide",
                     "share of the slide's prediction"),
               Quote(BENCH_DOC, lambda d: d["predict"]["ms_per_image"], "{:.0f} ms", "bf16 prediction per image"),
               Quote(README, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % on a slide",
                     "share of the slide's prediction"),
               Quote(README, lambda d: 100 * chosen_row(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                     "{:.0f} % of the bf16 prediction", "share of the image prediction")),
           tables=(Table(BENCH_DOC, "instances-cpu", instances_table),)),
    Figure("instances-cpu-fp32", "PY benchmarks/instances.py benchmarks/results/end_to_end-cpu.oeem.zarr "
           "--precision fp32 --name cpu-fp32", "instances-cpu-fp32.json", 8,
           "the shipped separation's share of an fp32 prediction, on images and on a slide (after end-to-end-cpu)",
           (Quote(BENCH_DOC, lambda d: d["predict"]["ms_per_image"], "{:.0f} ms", "fp32 prediction per image"),
            Quote(BENCH_DOC, lambda d: 100 * shipped_row(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                  "{:.0f} % of it", "share of the fp32 image prediction"),
            Quote(BENCH_DOC, lambda d: d["slide"]["prediction_seconds"], "{:.1f} s", "fp32 slide prediction"),
            Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
            Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % of the slide",
                  "share of the fp32 slide's prediction"),
            Quote(README, lambda d: 100 * shipped_row(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                  "fp32: {:.0f} %", "share of the fp32 image prediction"),
            Quote(README, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % on a slide",
                  "share of the fp32 slide's prediction"))),
    Figure("instances-supervised", "PY benchmarks/end_to_end.py --preset cpu --set segmentation.label_source=mask "
           "--name cpu-supervised && PY benchmarks/instances.py benchmarks/results/end_to_end-cpu-supervised.oeem.zarr "
           "--name cpu-supervised", "instances-cpu-supervised.json", 55,
           "the same separation on the fully supervised reference (trained on the gland masks)",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: chosen_row(d)["test"]["object_F1"], "{:.1f}", "testA object F1"),
               (lambda d: chosen_row(d)["test"]["object_Dice"], "{:.1f}", "testA object Dice"),
               (lambda d: chosen_row(d)["test"]["object_Hausdorff"], "{:.1f}", "testA object Hausdorff"))) + (
               Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
               Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.0f} % of the slide",
                     "share of the slide's prediction"))),
    Figure("instances-cpu-s1", "PY benchmarks/end_to_end.py --preset cpu --set classifier.seed=1 segmentation.seed=1 "
           "--name cpu-s1 && PY benchmarks/instances.py benchmarks/results/end_to_end-cpu-s1.oeem.zarr",
           "instances-cpu-s1.json", 50, "the cpu preset trained from seed 1, its glands cut as instances-cpu's"),
    Figure("instances-cpu-s2", "PY benchmarks/end_to_end.py --preset cpu --set classifier.seed=2 segmentation.seed=2 "
           "--name cpu-s2 && PY benchmarks/instances.py benchmarks/results/end_to_end-cpu-s2.oeem.zarr",
           "instances-cpu-s2.json", 50,
           "the cpu preset trained from seed 2, its glands cut as instances-cpu's; the three draws side by side",
           tuple(Quote(doc, seeds_mean(lambda d, k=k: shipped_row(d)["test"][k]), "{:.1f}",
                       f"testA {k}, mean of the seeds") for doc in (README, BENCH_DOC)
                 for k in ("object_F1", "object_Dice", "object_Hausdorff")) + (
               Quote(BENCH_DOC, seeds_mean(lambda d: 100 * d["slide"]["share_of_prediction"]), "{:.1f} %",
                     "the slide's share, mean of the seeds"),
               Quote(BENCH_DOC, seeds_mean(lambda d: d["pixel"]["test"]["mIoU"]), "{:.2f}",
                     "testA pixel mIoU, mean of the seeds")),
           tables=(Table(BENCH_DOC, "instances-seeds", seeds_table),)),
    Figure("instances-learned", "PY benchmarks/instances_learned.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_learned-cpu.json", 8,
           "glands seeded by a learned interior (a head on the frozen cpu model, trained on its own labels) against "
           "the shipped probability core (after end-to-end-cpu)",
           tuple(Quote(BENCH_DOC, lambda d, m=m, s=s, k=k: d["best_of_each_method"][m][s][k], "{:.1f}", f"{m}: {s} {k}")
                 for m, s, k in (("interior", "val", "object_F1"), ("interior", "test", "object_F1"),
                                 ("interior", "test", "object_Dice"), ("interior", "test", "object_Hausdorff"),
                                 ("core", "val", "object_F1"), ("core", "test", "object_F1")))),
    Figure("instances-limits", "PY benchmarks/instances_limits.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_limits-cpu.json", 5,
           "where the shipped gland cut loses glands, and five other cuts of the cpu model's output (after "
           "end-to-end-cpu)",
           (Quote(BENCH_DOC, lambda d: d["pixel_mIoU"]["val"]["3 scales"], "{:.2f}", "3-scale validation mIoU"),
            Quote(BENCH_DOC, lambda d: d["pixel_mIoU"]["test"]["3 scales"], "{:.2f}", "3-scale testA mIoU")),
           tables=(Table(BENCH_DOC, "instances-limits-errors", limits_errors_table),
                   Table(BENCH_DOC, "instances-limits", limits_table))),
    Figure("instances-rounds", "PY benchmarks/instances_rounds.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_rounds-cpu.json", 26,
           "one more self-training round - plain, with the cut's borders in its labels, at full resolution - against "
           "the cpu model's glands (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "instances-rounds", rounds_table),
                   Table(BENCH_DOC, "instances-rounds-errors", rounds_errors_table))),
    *(Figure(f"demo{suffix}", "PY benchmarks/end_to_end.py --data sample --val-images 0 --fresh --set "
             "classifier.epochs=4 classifier.min_epoch_steps=0 'cam.scales=[1,1.5]' segmentation.iterations=120 "
             f"selftrain.rounds=0 'inference.scales=[1]' inference.flip=false --name demo{suffix}{flag}",
             f"end_to_end-demo{suffix}.json", 2, f"`make demo`'s schedule on the embedded sample data{what}",
             (Quote(README, lambda d: d["wall_seconds"], "{:.0f} s", "wall time"),
              Quote(README, lambda d: testa(d, "mIoU"), "{:.2f}", "testA mIoU")), needs_glas=False)
      for suffix, flag, what in (("", "", ""), ("-fp32", " --precision fp32", ", in fp32"))),
    *(Figure(f"budget-{b}-{p}", f"PY benchmarks/end_to_end.py --preset cpu --budget {b} --precision {p} "
             f"--name budget-{b}-{p} --fresh", f"end_to_end-budget-{b}-{p}.json", int(b[:-1]),
             f"`oeem run --budget {b}` in {p}: what the planner keeps, the score and the time",
             (*(Quote(doc, lambda d: testa(d, "mIoU"), "{:.2f}", "testA mIoU") for doc in (README, BENCH_DOC)),
              Quote(README, lambda d: d["wall_seconds"] / 60, "{:.1f} min", "wall time"),
              Quote(BENCH_DOC, lambda d: d["wall_seconds"] / 60, "{:.1f}", "wall time"),
              Quote(BENCH_DOC, lambda d: d["evaluation"]["val"]["mIoU"], "{:.2f}", "validation mIoU"),
              Quote(BENCH_DOC, lambda d: d["pseudo"]["train"], "{:.2f}", "stage-1 pseudo-masks"),
              Quote(BENCH_DOC, lambda d: testa(d, "object_F1"), "{:.2f}", "testA object F1"),
              Quote(BENCH_DOC, lambda d: d["schedule"]["segmentation_iterations"], "{}", "iterations")),
             # the four runs in one table, with the last of them
             tables=(Table(BENCH_DOC, "budgets", budget_table),) if (b, p) == ("60m", "bf16") else ())
      for b in ("30m", "60m") for p in ("fp32", "bf16")),
    Figure("update-safety", "PY benchmarks/update_safety.py --project benchmarks/results/end_to_end-cpu.oeem.zarr "
           "--name cpu-bf16-lr --arms train-bn+lr=0.0003 train-bn+lr=0.0001", "update_safety-cpu-bf16-lr.json", 12,
           "*Update model* on the well-trained cpu model: 1, 3, 10 reviewed images corrected, 3 seeds each",
           tuple(Quote(README, update_mean(LR, n, part), "{:+.2f}", f"{part}, {n} images")
                 for n in (1, 3, 10) for part in ("val", "testA"))
           + tuple(Quote(BENCH_DOC, update_mean(LR, n, "corrected"), "{:+.1f}", f"corrected, {n} images")
                   for n in (1, 3, 10))
           + (Quote(README, update_seconds, "{:.0f} s", "median seconds per update"),),
           tables=(Table(BENCH_DOC, "update-safety", update_safety_table),)),
    Figure("update-safety-fp32", "PY benchmarks/update_safety.py --project benchmarks/results/end_to_end-cpu.oeem.zarr"
           " --name cpu-fp32 --counts 1 3 10 --seeds 0 --arms train-bn+lr=0.0001 --precision fp32",
           "update_safety-cpu-fp32.json", 3, "the same updates in fp32, for their time",
           (Quote(README, lambda d: f"{min(r['seconds'] for r in d['rows']):.0f}-"
                                    f"{max(r['seconds'] for r in d['rows']):.0f} s", "{}", "seconds per update"),)),
    Figure("update-safety-weak", "PY benchmarks/update_safety.py --project runs/bench/suggested-25-s0-cpu.oeem.zarr "
           "--truth runs/bench/glas-truth.oeem.zarr --name weak25-bf16 --arms train-bn+lr=0.0001",
           "update_safety-weak25-bf16.json", 5, "*Update model* on the 25 %-tagged project (after "
           "weak-labels-25-preset: its project)",
           tuple(Quote(BENCH_DOC, update_mean(LR, n, part), fmt, f"{part}, {n} images")
                 for n in (1, 3, 10) for part, fmt in (("val", "{:+.2f}"), ("testA", "{:+.2f}"),
                                                       ("corrected", "{:+.2f}")))
           + tuple(Quote(README, update_mean(LR, n, "testA"), "{:+.2f}", f"testA, {n} images") for n in (1, 3, 10))),
    Figure("update-safety-weak-fp32", "PY benchmarks/update_safety.py --project "
           "runs/bench/suggested-25-s0-cpu.oeem.zarr --truth runs/bench/glas-truth.oeem.zarr --name weak25-fp32 "
           "--counts 1 3 10 --seeds 0 --arms train-bn+lr=0.0001 --precision fp32", "update_safety-weak25-fp32.json", 2,
           "the same in fp32, for their time",
           (Quote(BENCH_DOC, lambda d: f"{min(r['seconds'] for r in d['rows']):.0f}-"
                                       f"{max(r['seconds'] for r in d['rows']):.0f} s", "{}", "seconds per update"),
            *(Quote(BENCH_DOC, update_mean(LR, n, "testA"), "{:+.2f}", f"testA, {n} images") for n in (1, 3, 10)))),
    Figure("update-gain-weak", "PY benchmarks/weak_labels.py build && PY benchmarks/weak_labels.py budget --picker "
           "suggested --budgets 25 && PY benchmarks/update_gain.py --retrain-weight 25 4 --retrain-divisor pixels "
           "weights --retrain-seeds 0 1 2 --uncorrected --out update_gain-weak25-bf16.json && PY "
           "benchmarks/update_gain.py --retrain-weight 10 1 --retrain-divisor pixels --retrain-seeds 0 1 2 --out "
           "update_gain-weak25-bf16-weights.json", "update_gain-weak25-bf16.json", 50,
           "a retrain on corrections at each verified-pixel weight, small project, 3 seeds; oeem update once",
           (Quote(BENCH_DOC, lambda d: update_row(d)["seconds"], "{:.1f} s", "seconds of the update"),
            Quote(BENCH_DOC, lambda d: update_row(d)["val"] - base_row(d)["val"], "{:+.2f}",
                  "validation change of the update"),
            Quote(BENCH_DOC, lambda d: update_row(d)["test"] - base_row(d)["test"], "{:+.2f}",
                  "testA change of the update")),
           tables=(Table(BENCH_DOC, "update-gain-weak",
                         lambda d: retrain_table(d, "update_gain-weak25-bf16-weights.json")),)),
    Figure("update-gain-cpu", "PY benchmarks/end_to_end.py --preset cpu && PY benchmarks/update_gain.py --project "
           "benchmarks/results/end_to_end-cpu.oeem.zarr --retrain-weight 25 10 4 --retrain-divisor pixels --out "
           "update_gain-cpu-bf16.json && PY benchmarks/update_gain.py --project "
           "benchmarks/results/end_to_end-cpu.oeem.zarr --retrain-weight 1 --retrain-divisor pixels --out "
           "update_gain-cpu-bf16-weights.json", "update_gain-cpu-bf16.json", 90,
           "a retrain on corrections at each verified-pixel weight, the cpu preset's whole GlaS run",
           tables=(Table(BENCH_DOC, "update-gain-cpu",
                         lambda d: retrain_table(d, "update_gain-cpu-bf16-weights.json")),)),
    Figure("weak-labels-25-preset", "PY benchmarks/weak_labels.py build && PY benchmarks/weak_labels.py budget "
           "--picker suggested --budgets 10 25 && PY benchmarks/weak_labels.py budget --budgets 25 --preset-schedule",
           "weak_labels.json", 50,
           "25 % of the training images tagged (picked by `oeem suggest`), the whole cpu preset",
           (Quote(README, weak_row("suggested-25-s0-cpu", "testA_mIoU"), what="testA mIoU"),
            Quote(BENCH_DOC, weak_row("suggested-25-s0-cpu", "val_mIoU"), what="validation mIoU"),
            Quote(README, weak_row("suggested-25-s0-cpu", "minutes"), "{:.1f} min", "minutes"),
            Quote(BENCH_DOC, weak_row("suggested-25-s0-cpu", "testA_mIoU"), what="testA mIoU")),
           tables=(Table(BENCH_DOC, "weak-25-preset", weak25_table),)),
    Figure("tagging-actions", "PY benchmarks/weak_labels.py budget --picker suggested --budgets 10 25 50 100 && "
           "PY benchmarks/weak_labels.py actions", "weak_labels.json", 20,
           "keys and strokes to tag all 75 training images, with and without the model's proposals",
           tuple(Quote(doc, (lambda k: lambda d: d["actions"][k])(key), fmt, key)
                 for doc in (README, BENCH_DOC)
                 for key, fmt in (("no_proposals", "{:,}"), ("ratio_no_proposals", "{:.1f}x"),
                                  ("with_proposals", "{:,}"), ("ratio", "{:.1f}x"),
                                  ("images_proposals_cost_more", "{} of the"), ("patches", "{:,}"))
                 if doc == BENCH_DOC or key != "patches"),
           tables=(Table(BENCH_DOC, "weak-budgets", weak_budget_table), Table(BENCH_DOC, "actions", actions_table))),
    Figure("preview", "PY benchmarks/preview.py --sweep", "preview.json", 8,
           "the preview learned from tags in a second: validation / testA with 10 / 25 / 100 % tagged, key to "
           "preview",
           (*(Quote(doc, (lambda p, k: lambda d: d["shipped"][p][k])(p, k), "{:.1f}", f"{k}, {p} % tagged")
              for doc in (README, BENCH_DOC) for p in ("25", "100") for k in ("val_mIoU", "testA_mIoU")),
            *(Quote(BENCH_DOC, (lambda p, k: lambda d: d["shipped"][p][k])("10", k), "{:.1f}", f"{k}, 10 % tagged")
              for k in ("val_mIoU", "testA_mIoU")),
            *(Quote(doc, (lambda k: lambda d: d["latency"][k])(k), "{:.2f} s", k)
              for doc in (README, BENCH_DOC) for k in ("key_to_preview_p50_s", "key_to_preview_p95_s")
              if doc == BENCH_DOC or k.endswith("p95_s"))),
           tables=(Table(BENCH_DOC, "preview", preview_table),)),
    Figure("preview-suggest", "PY benchmarks/preview.py --suggest", "preview_suggest.json", 6,
           "does `oeem suggest` pick better images when it asks the preview (the preview's own validation mIoU)",
           tuple(Quote(BENCH_DOC, (lambda a, n: lambda d: statistics.mean(
               r["val_mIoU"] for r in d["rows"] if r["arm"] == a and r["images"] == n))(arm, n), "{:.1f}",
               f"{arm}, {n} images") for arm in ("preview", "spread", "random") for n in (8, 19)),
           tables=(Table(BENCH_DOC, "preview-suggest", suggest_table),)),
    Figure("live", "PY benchmarks/live.py --minutes 8 && PY benchmarks/live.py --peer", "live-bf16.json", 11,
           "training while tagging: validation pseudo-masks of the background classifier after 1-8 minutes",
           (*(Quote(BENCH_DOC, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", minute_label(k))
              for k in (0, 1, 3, 7)),

            Quote(BENCH_DOC, lambda d: d["forest_peer"]["val_mIoU"], "{:.2f}", "the forest on the same tags")),
           tables=(Table(BENCH_DOC, "live", live_table),)),
    Figure("live-1thread", "PY benchmarks/live.py --minutes 8 --threads 1", "live-bf16-1thread.json", 13,
           "training while tagging as the dock runs it on 2 cores (one thread), bf16",
           tuple(Quote(doc, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", minute_label(k))
                 for doc in (README, BENCH_DOC) for k in (0, 1, 3, 7) if doc == BENCH_DOC or k in (0, 3))),
    Figure("live-fp32", "PY benchmarks/live.py --minutes 10 --threads 1 --precision fp32", "live-fp32-1thread.json",
           18, "training while tagging as the dock runs it on 2 cores (one thread), fp32",
           tuple(Quote(BENCH_DOC, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", minute_label(k))
                 for k in (0, 1, 3, 6, 7))),
    Figure("session", "PY benchmarks/session.py", "session-bf16.json", 40,
           "a tagging session at a pathologist's pace with the classifier training meanwhile, then Run all, bf16",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: d["from_last_tag_s"]["pseudo_masks"] / 60, "{:.1f} min", "last tag to pseudo-masks"),
               (lambda d: d["val_pseudo_mIoU"], "{:.2f}", "validation pseudo-mask mIoU"))) + (
               Quote(BENCH_DOC, lambda d: d["from_last_tag_s"]["end"] / 60, "{:.1f} min", "last tag to end of run"),
               Quote(BENCH_DOC, lambda d: d["testA_mIoU"], "{:.2f}", "testA mIoU at the end")),
           tables=(Table(BENCH_DOC, "session", session_table),)),
    Figure("session-fp32", "PY benchmarks/session.py --precision fp32 --until cams", "session-fp32.json", 20,
           "the same session in fp32 (CPUs without native bf16), until the pseudo-masks",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: d["from_last_tag_s"]["pseudo_masks"] / 60, "{:.1f} min", "last tag to pseudo-masks"),
               (lambda d: d["val_pseudo_mIoU"], "{:.2f}", "validation pseudo-mask mIoU")))),
    Figure("gui-latency-preview", "xvfb-run -a PY benchmarks/gui_latency.py --preview --live --seconds 40",
           "gui_latency-preview.json", 2, "napari stays responsive while the preview redraws after every key",
           (Quote(BENCH_DOC, lambda d: d["tagging"]["p95_ms"], "{:.0f} ms", "event-loop lateness p95"),
            Quote(BENCH_DOC, lambda d: d["key_to_preview_p95_s"], "{:.2f} s", "key to preview p95, in napari"),
            Quote(BENCH_DOC, lambda d: d["tagging_while_training"]["p95_ms"], "{:.0f} ms",
                  "event-loop lateness p95 while the classifier trains")),
           needs_glas=False),
    Figure("crash-matrix", "PY benchmarks/crash_matrix.py --isa native AVX2 AVX512_CORE --skip-networks "
           "--out crash_matrix-convs.json",
           "crash_matrix-convs.json", 25, "which single convolutions crash oneDNN on this CPU", needs_glas=False,
           tables=(Table(BENCH_DOC, "crash-matrix", crash_table),)),
    Figure("crash-networks", "PY benchmarks/crash_matrix.py --isa native AVX2 AVX512_CORE --skip-convs "
           "--out crash_matrix-networks.json",
           "crash_matrix-networks.json", 10, "every preset's networks, both layouts, each ISA cap",
           needs_glas=False),
    Figure("precision", "PY benchmarks/precision.py --repeats 7", "precision.json", 1,
           "fp32 against bf16: speed of each stage and agreement of the outputs", needs_glas=False,
           tables=(Table(BENCH_DOC, "precision", precision_table),)),
    Figure("faults", "PY benchmarks/faults.py --kills 200", "faults.json", 11,
           "kill -9 at random moments while writing: nothing lost, nothing half-written", needs_glas=False,
           tables=(Table(BENCH_DOC, "faults", faults_table),)),
    Figure("slide", "PY benchmarks/slide.py", "slide.json", 8, "a whole slide: memory and speed",
           needs_glas=False,
           quotes=(Quote(BENCH_DOC, lambda d: (d["sizes"][-1]["seconds"] - d["sizes"][0]["seconds"])
                         / (d["sizes"][-1]["tissue_mpx"] - d["sizes"][0]["tissue_mpx"]),
                         "{:.2f} s per tissue megapixel", "seconds per tissue Mpx"),
                   Quote(BENCH_DOC, lambda d: d["sizes"][-1]["seconds"] / d["sizes"][0]["seconds"], "x{:.2f} time",
                         "time ratio"),
                   Quote(BENCH_DOC, lambda d: d["dask"][1]["blocks_per_s"] / d["dask"][0]["blocks_per_s"],
                         "x{:.2f} the slide throughput", "dask ratio"),
                   Quote(BENCH_DOC, lambda d: d["ddp"]["rows"][1]["it_per_s"] / d["ddp"]["rows"][0]["it_per_s"],
                         "(x{:.2f})", "ddp ratio"),
                   Quote("docs/slides.md", lambda d: d["sizes"][-1]["peak_rss_mb"], "{:.0f} MB", "peak RSS"),
                   Quote("docs/slides.md", lambda d: d["dask"][1]["blocks_per_s"] / d["dask"][0]["blocks_per_s"],
                         "x{:.2f} the", "dask ratio"),
                   Quote(BENCH_DOC, lambda d: 100 * d["ddp"]["mean_loss_relative_difference"],
                         "differs by {:.1f} %", "mean loss difference")),
           tables=(Table(BENCH_DOC, "slide-sizes", slide_sizes_table),
                                     Table(BENCH_DOC, "slide-scale-out", slide_scale_out_table))),
    Figure("gui-latency", "xvfb-run -a PY benchmarks/gui_latency.py --seconds 30", "gui_latency.json", 3,
           "napari stays responsive while a training runs", tuple(
               Quote(BENCH_DOC, lambda d, s=s, k=k: d[s][k], fmt, f"{s} {k}") for s, k, fmt in (
                   ("training", "p95_ms", "{:.0f} ms at p95"), ("training", "max_ms", "{:.0f} ms at most"),
                   ("idle", "p95_ms", "idle: {:.0f} /"), ("idle", "max_ms", "/ {:.0f} ms"))) + (
               Quote(BENCH_DOC, lambda d: d["iterations_during_measure"], "{} training iterations", "iterations"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["in_place"]["median_s"], "takes {:.2f} s",
                     "image switch"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["made_anew"]["median_s"], "took {:.2f} s",
                     "image switch, every layer made anew"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["tagging"]["in_place"]["median_s"], "{:.2f} s with the "
                     "tagging box open", "image switch, tagging"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["tagging"]["made_anew"]["median_s"], "{:.2f} s per switch",
                     "image switch, tagging, every layer made anew")),
           needs_glas=False),
    Figure("review-heldout", "PY benchmarks/review_heldout.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "review_heldout.json", 5, "the label review without masks, refit and chosen on half the training "
           "images, judged on the other half (after end-to-end-cpu: its project)",
           (Quote(README, review_hits("refit on A: review, settings chosen on A", 20), "{:.0f} of the first 20",
                  "shipped review, held out"),
            Quote(BENCH_DOC, review_hits("refit on A: ranking before learning", 20), "{:.0f} of 20",
                  "before decisions"),
            Quote(BENCH_DOC, review_hits("earlier: review, earlier strength", 20), "{:.0f} of 20", "earlier defaults"),
            Quote(README, lambda d: 100 * d["half_B"]["random_order"]["refit on A"], "{:.1f} %", "random order"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["random_order"]["earlier"], "{:.1f} %", "random, earlier"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["wrong_pixel_share"], "{:.1f} %", "pixel base rate"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["results"]["refit on A: review, settings chosen on A"]
                  ["pixel_precision@20"], "{:.1f} %", "wrong pixels in the first 20"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["results"]["refit on A: review, settings chosen on A"]
                  ["precision@20"], "**{:.0f} %**", "shipped review, held out"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["random_order"]["refit on A"], "{:.1f} %", "random"),
            Quote(BENCH_DOC, lambda d: 100 * d["choice_on_A"]["grid"]["tags+decisions/30/probability"],
                  "{:.1f} %", "chosen on A")),
           tables=(Table(BENCH_DOC, "review-heldout", review_table),)),
    Figure("losses", "PY=PY benchmarks/run_losses.sh", "losses.json", 55,
           "OEEM (l_norm) against CE on the stage-1 pseudo-masks of the cpu preset, 3 paired seeds; the gland bias",
           (Quote(BENCH_DOC, lambda d: d["stage1"]["pseudo_mIoU"], what="stage-1 pseudo-masks"),
            *(Quote(doc, paired_mean("val"), "{:+.2f} validation" if doc == README else "{:+.2f} ±",
                    "l_norm minus CE, validation") for doc in (README, BENCH_DOC)),
            *(Quote(doc, paired_mean("test"), "{:+.2f} testA" if doc == README else "{:+.2f} ±",
                    "l_norm minus CE, testA") for doc in (README, BENCH_DOC)),
            Quote(BENCH_DOC, paired_mean("train"), "{:+.2f} ±", "l_norm minus CE, train"),
            Quote(BENCH_DOC, lambda d: d["gland_bias"]["best_on_val"], "bias of {:g}", "gland bias chosen")),
           tables=(Table(BENCH_DOC, "losses", losses_table), Table(BENCH_DOC, "gland-bias", bias_table))),
    Figure("losses-weightings", "WEIGHTINGS=1 PY=PY benchmarks/run_losses.sh", "losses.json", 32,
           "the paper's other weightings (ohem, c_max, c_diff, lc_mix), one seed each (after losses: its project)"),
    Figure("cleaning", "PY benchmarks/postprocess.py benchmarks/results/end_to_end-cpu.oeem.zarr --json "
           "postprocess-cpu.json", "postprocess-cpu.json", 4,
           "what cleaning the cpu model's prediction buys, each pair chosen on validation (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "cleaning", cleaning_table),)),
    Figure("scales", "OEEM_ABLATION_PROJECT=benchmarks/results/end_to_end-cpu.oeem.zarr "
           "OEEM_ABLATION_JSON=benchmarks/results/scales-cpu.json PY benchmarks/ablation.py scales current "
           "1 0.75,1,1.25 1,1.25,1.5", "scales-cpu.json", 8,
           "what each test-time scale buys and costs, the cpu model (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "scales", scales_table),)),
    Figure("orientations", "PY benchmarks/orientations.py benchmarks/results/end_to_end-cpu.oeem.zarr --name cpu",
           "orientations-cpu.json", 9,
           "what predicting in all 8 orientations buys and costs beside 1 scale + flip and 3 scales, pixels and "
           "glands, the cpu model (after end-to-end-cpu)",
           (Quote(README, lambda d: d["rows"][1]["pixel_mIoU"]["test"], what="8 orientations, testA mIoU"),
            Quote(README, lambda d: d["rows"][1]["time_vs_preset"], "{:.1f}x", "8 orientations, time"),
            Quote(BENCH_DOC, lambda d: d["rows"][1]["pixel_mIoU"]["val"] - d["rows"][0]["pixel_mIoU"]["val"],
                  "{:+.2f} on validation", "8 orientations minus the preset, validation"),
            Quote(BENCH_DOC, lambda d: d["rows"][1]["pixel_mIoU"]["train"] - d["rows"][0]["pixel_mIoU"]["train"],
                  "{:+.2f} on the training images", "8 orientations minus the preset, training images"),
            Quote(BENCH_DOC, lambda d: d["rows"][1]["pixel_mIoU"]["test"] - d["rows"][0]["pixel_mIoU"]["test"],
                  "{:+.2f} on testA", "8 orientations minus the preset, testA"),
            Quote(BENCH_DOC, lambda d: d["rows"][1]["time_vs_preset"], "{:.1f}x the time", "8 orientations, time")),
           tables=(Table(BENCH_DOC, "orientations", orientations_table),)),
    Figure("orientations-rounds", "PY benchmarks/end_to_end.py --preset cpu --set inference.dihedral=true --name "
           "cpu-dihedral", "end_to_end-cpu-dihedral.json", 52,
           "the cpu preset with every prediction in all 8 orientations, the self-training rounds' included",
           tuple(Quote(BENCH_DOC, lambda d, s=s: d["selftrain"][-1][s], what=f"round-2 labels in 8 orientations, {s}")
                 for s in ("train", "val"))),
    Figure("orientations-rounds-model", "PY benchmarks/orientations.py "
           "benchmarks/results/end_to_end-cpu-dihedral.oeem.zarr --name cpu-dihedral",
           "orientations-cpu-dihedral.json", 7,
           "the model trained on labels in 8 orientations, predicted as the preset and in 8 orientations (after "
           "orientations-rounds)",
           tuple(Quote(BENCH_DOC, lambda d, k=k, s=s: d["rows"][k]["pixel_mIoU"][s], what=f"{what}, {s}")
                 for k, what in ((0, "that model at 1 scale + flip"), (1, "that model in 8 orientations"))
                 for s in ("val", "test"))),
    Figure("speed", "PY benchmarks/speed.py --steps 5", "speed.json", 15,
           "where the training and prediction time goes: each work against the matmul peak, each lever"),
    Figure("predict-images", "PY benchmarks/predict_images.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "predict_images.json", 3,
           "`oeem predict-images` on testA copies outside any project (after end-to-end-cpu)"),
    Figure("slide-geojson", "PY benchmarks/slide_geojson.py", "slide_geojson.json", 5,
           "a 20,000 px slide prediction exported to QuPath GeoJSON: time, memory, vertices"),
    Figure("reproduced", "PY benchmarks/figures.py compare --json reproduced.json", "reproduced.json", 0.1,
           "each quoted figure the commands before it remade, beside the committed one (last: `make bench-quick` "
           "on a fresh clone)",
           (*(Quote(README, remade_quote("live-1thread", minute_label(k)), "{}",
                    f"live, one thread, {minute_label(k)}, remade") for k in (0, 3)),
            *(Quote(BENCH_DOC, remade_quote("gui-latency-preview", what), "{}", f"{what}, remade")
              for what in ("key to preview p95, in napari", "event-loop lateness p95")),
            *(Quote(BENCH_DOC, remade_quote(fig, what), "{}", f"{fig}: {what}, remade") for fig, what in (
                ("instances-cpu", "share of the slide's prediction"),
                ("instances-cpu-fp32", "share of the fp32 slide's prediction")))),
           needs_glas=False, tables=(Table(BENCH_DOC, "reproduced", reproduced_table),)),
)


# what a figure's command reads that another figure makes (git-ignored projects): `run` skips the figure, and says
# which to run first, when they are missing - as on a fresh clone
_E2E = ("benchmarks/results/end_to_end-cpu.oeem.zarr",)
_WEAK25 = ("runs/bench/suggested-25-s0-cpu.oeem.zarr", "runs/bench/glas-truth.oeem.zarr")
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    **{name: (_E2E, "end-to-end-cpu") for name in (
        "instances-cpu-fp32", "instances-learned", "instances-limits", "instances-rounds", "update-safety",
        "update-safety-fp32", "review-heldout", "cleaning", "scales", "orientations", "predict-images")},
    **{name: (_WEAK25, "weak-labels-25-preset") for name in ("update-safety-weak", "update-safety-weak-fp32")},
    "losses-weightings": (("benchmarks/results/losses.oeem.zarr",), "losses"),
    "orientations-rounds-model": (("benchmarks/results/end_to_end-cpu-dihedral.oeem.zarr",), "orientations-rounds"),
}
