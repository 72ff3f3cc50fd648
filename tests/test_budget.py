"""The time budget (issue 32): durations, the speed probe, the estimate of each stage, a schedule that fits a budget
(or one line naming the smallest that works), and the plan every `oeem run` and the plugin's *Run all* say at
their start."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from datetime import datetime

import pytest

from pipeline.budget import (
    SAFETY,
    ProjectFacts,
    Speeds,
    estimate,
    measure_segmentation,
    measure_speeds,
    parse_duration,
    plan_for_budget,
    plan_text,
    project_facts,
    sized_settings,
)
from pipeline.config import preset
from pipeline.errors import OEEMError
from pipeline.progress import run

# a GlaS-sized project: 85 training images (117 patches each on the 112/56 grid), 60 test images with masks
GLAS = ProjectFacts(train_patches=85 * 117, cam_images=((522, 775, 117),) * 85, images=((522, 775),) * 145,
                    scored=((522, 775),) * 145)
# fp32 on 2 AVX2 cores, as docs/benchmarks.md measured the stages: classifier 71 patches/s, 1.6 s per segmentation
# step, CAMs ~10 min, 0.63 s per prediction
FP32 = Speeds(classifier_step=0.28, segmentation_step=1.6, cam_per_mpx=0.3, predict_per_mpx=0.8,
              evaluate_per_mpx=0.1)


@pytest.mark.parametrize("text, seconds", [("60m", 3600), ("1h30m", 5400), ("90s", 90), ("2h", 7200), ("45", 2700),
                                           ("1.5h", 5400), (" 2h 5m ", 7500), ("10min", 600), (30, 1800)])
def test_a_duration_is_read_as_people_write_it(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "m", "-5m", "0", "5x", "1h-30m", "1m1h", "nan"])
def test_a_budget_that_is_not_a_duration_is_one_line_naming_the_forms(text):
    with pytest.raises(OEEMError) as exc:
        parse_duration(text)
    message = str(exc.value)
    assert "\n" not in message and "90s, 45m, 2h, 1h30m" in message


def test_the_estimate_counts_each_stages_real_steps():
    cfg = preset("cpu")  # 8 epochs of batch 20, 3 CAM scales, 2000 iterations, 2 rounds, the last 1.5 x as long
    est = estimate(cfg, FP32, GLAS)
    by = {s.key: s for s in est.stages}
    assert [s.key for s in est.stages] == ["patches", "classifier", "cams", "segmentation", "round-1", "round-2",
                                           "predict", "instances", "evaluate"]
    assert by["classifier"].seconds == pytest.approx(8 * (85 * 117 // 20) * 0.28)
    assert by["classifier"].detail == "8 epochs x 497 steps"
    assert by["segmentation"].detail == "2000 iterations"
    assert by["round-2"].detail.endswith("3000 iterations")  # selftrain.last_round_scale
    assert by["round-2"].seconds - by["round-1"].seconds == pytest.approx(1000 * 1.6, rel=1e-6)
    # patch-mode CAMs: per patch 1 + 4 + 9 crops of 112 px for scales 1, 1.5, 2
    cam_network = 85 * 117 * 14 * 112 * 112 / 1e6 * 0.3
    assert by["cams"].seconds > cam_network and by["cams"].seconds < cam_network + 60
    assert est.total == pytest.approx(sum(s.seconds for s in est.stages))
    # the fp32 cpu preset on GlaS: about 4 h, as measured stage by stage
    assert 3.5 * 3600 < est.total < 4.5 * 3600
    # stages already done cost nothing
    done = estimate(cfg, FP32, GLAS, done={"patches", "classifier", "cams"})
    assert done.seconds()["classifier"] == 0 and done.stages[1].done
    assert done.total == pytest.approx(est.total - sum(by[k].seconds for k in ("patches", "classifier", "cams")))


def test_a_few_tagged_images_train_the_classifier_as_long_as_a_whole_dataset():
    """The cpu preset's epochs train at least 430 steps each: on 19 tagged GlaS images (111 steps a pass) an epoch
    makes several passes, and the estimate and a budget's fewer epochs count them."""
    cfg = preset("cpu")
    few = dataclasses.replace(GLAS, train_patches=19 * 117, cam_images=GLAS.cam_images[:19])
    by = {s.key: s for s in estimate(cfg, FP32, few).stages}
    assert by["classifier"].detail == "8 epochs of 430+ steps: 31 passes x 111 steps"  # ceil(8 * 430 / 111)
    assert by["classifier"].seconds == pytest.approx(31 * 111 * 0.28)
    assert estimate(cfg, FP32, GLAS).stages[1].detail == "8 epochs x 497 steps"  # a whole dataset: one pass each
    two = dataclasses.replace(cfg, classifier=dataclasses.replace(cfg.classifier, epochs=2))  # as a budget shrinks
    assert {s.key: s for s in estimate(two, FP32, few).stages}["classifier"].detail.endswith("8 passes x 111 steps")


def test_a_schedule_sized_to_a_budget_fits_it_and_shrinks_in_the_documented_order():
    cfg = preset("cpu")
    two_scales = (1.0, 1.5)
    full = estimate(cfg, FP32, GLAS).total

    def iterations(c, n):
        return dataclasses.replace(c, segmentation=dataclasses.replace(c.segmentation, iterations=n))

    # an hour in fp32: CAM scale 2 and the self-training rounds go, the iterations shrink but stay at half the
    # preset's or more, the classifier keeps its epochs
    sized, est = plan_for_budget(cfg, FP32, GLAS, 3600)
    assert est.total <= SAFETY * 3600 and est.total == pytest.approx(estimate(sized, FP32, GLAS).total)
    assert sized.selftrain.rounds == 0 and sized.cam.scales == two_scales and sized.classifier.epochs == 8
    assert 1000 <= sized.segmentation.iterations < 2000 and sized.segmentation.iterations % 10 == 0
    assert cfg.selftrain.rounds == 2 and cfg.segmentation.iterations == 2000  # the preset is not changed
    assert set(sized_settings(cfg, sized)) == {"selftrain.rounds", "segmentation.iterations", "cam.scales"}
    # the budget fills up: 10 % more iterations would not fit
    more = iterations(sized, int(sized.segmentation.iterations * 1.1))
    assert estimate(more, FP32, GLAS).total > SAFETY * 3600
    # a little short of the preset: scale 2 goes first, the rounds stay and their iterations shrink by at most a
    # quarter
    sized, est = plan_for_budget(cfg, FP32, GLAS, 0.9 * full / SAFETY)
    assert sized.cam.scales == two_scales and sized.selftrain.rounds == 2
    assert 1500 <= sized.segmentation.iterations <= 2000 and est.total <= 0.9 * full
    # plenty of time: the preset's schedule as it is, never longer
    sized, est = plan_for_budget(cfg, FP32, GLAS, 10 * full)
    assert sized is cfg and est.total == pytest.approx(full)
    # 45 min: iterations at half the preset's, then fewer classifier epochs; what a whole epoch leaves over goes
    # back to the iterations
    sized, est = plan_for_budget(cfg, FP32, GLAS, 45 * 60)
    assert 2 < sized.classifier.epochs < 8 and 1000 <= sized.segmentation.iterations < 2000
    more = iterations(sized, sized.segmentation.iterations + 20)
    assert est.total <= SAFETY * 45 * 60 < estimate(more, FP32, GLAS).total
    assert "segmentation.full_iterations" not in sized_settings(cfg, sized)  # pseudo-labels: not what trains
    # 30 min: epochs at their floor (a quarter), iterations below half, down to their floor (a quarter)
    sized, est = plan_for_budget(cfg, FP32, GLAS, 30 * 60)
    assert sized.classifier.epochs == 2 and 500 <= sized.segmentation.iterations < 1000
    assert sized.cam.scales == two_scales
    # tighter still: the last CAM scales go, the largest first, down to 1
    floor = dataclasses.replace(iterations(cfg, 500), selftrain=dataclasses.replace(cfg.selftrain, rounds=0),
                                classifier=dataclasses.replace(cfg.classifier, epochs=2),
                                cam=dataclasses.replace(cfg.cam, scales=two_scales))
    at_floor = estimate(floor, FP32, GLAS).total
    sized, est = plan_for_budget(cfg, FP32, GLAS, (at_floor - 1) / SAFETY)
    assert sized.cam.scales == (1.0,) and sized.classifier.epochs == 2 and est.total <= at_floor - 1


def test_too_small_a_budget_names_the_smallest_that_works():
    cfg = preset("cpu")
    with pytest.raises(OEEMError) as exc:
        plan_for_budget(cfg, FP32, GLAS, 5 * 60)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("a 5 min budget is too small on this machine: the smallest schedule takes about ")
    smallest = int(message.rsplit("give --budget ", 1)[1].split("m or more")[0])
    sized, est = plan_for_budget(cfg, FP32, GLAS, smallest * 60)  # the budget it names works ...
    assert sized.selftrain.rounds == 0 and 500 <= sized.segmentation.iterations < 600 and sized.classifier.epochs == 2
    assert est.total <= SAFETY * smallest * 60
    with pytest.raises(OEEMError):  # ... and a minute less does not
        plan_for_budget(cfg, FP32, GLAS, (smallest - 1) * 60)
    # what the run has spent before sizing counts
    with pytest.raises(OEEMError):
        plan_for_budget(cfg, FP32, GLAS, smallest * 60, spent_s=120)


def test_the_plan_has_one_line_per_stage_with_its_end_time():
    cfg = preset("cpu")
    sized, est = plan_for_budget(cfg, FP32, GLAS, 3600)
    now = datetime(2025, 3, 4, 12, 0)
    text = plan_text(est, now, FP32, 3600, sized_settings(cfg, sized))
    lines = text.splitlines()
    assert lines[0].startswith("expected duration of each stage (speed measured in") and "fp32" in lines[0]
    for label in ("patches", "classifier", "CAMs", "segmentation", "prediction", "evaluation"):
        assert any(line.strip().startswith(label) and " ends ~1" in line for line in lines), label
    assert not any("self-training round" in line for line in lines)  # sized away
    total = next(line for line in lines if line.strip().startswith("total"))
    end = now.timestamp() + est.total
    assert f"expected end {datetime.fromtimestamp(end):%H:%M} (budget 60 min)" in total
    assert "sized to the budget: selftrain.rounds 2 -> 0, segmentation.iterations 2000 -> " in text
    # without a budget: the preset's schedule, no sizing line; a stage done says so
    text = plan_text(estimate(cfg, FP32, GLAS, done={"patches"}), now)
    assert "  patches" in text and text.splitlines()[1].split()[-1] == "done" and "sized" not in text
    assert "self-training round 2" in text and "budget" not in text


def test_the_probe_times_real_steps_with_an_injected_clock():
    import torch

    ticks = itertools.count()
    cfg = preset("tiny")
    cfg.classifier.threads = cfg.segmentation.threads = 2
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    speeds = measure_speeds(cfg, "cpu", clock=lambda: float(next(ticks)))
    # each timing: the start, one step (1 tick passed: more than enough), the end -> 2 ticks for one step
    assert speeds.classifier_step == speeds.segmentation_step == 2.0
    assert speeds.cam_per_mpx == pytest.approx(2.0 / (512 * 512 / 1e6))  # tiny: whole-image CAMs of 512 px
    assert speeds.predict_per_mpx == pytest.approx(2.0 / (8 * 128 * 128 / 1e6))  # a batch of 8 windows of 128 px
    assert speeds.precision in ("fp32", "bf16") and speeds.probe_seconds > 0
    assert torch.equal(torch.get_rng_state(), state)  # the run's seeds are not disturbed
    # the second measurement, at the segmentation's start: only the segmentation's figures change; 8 steps of a
    # tick each do not reach the 10 s it may take, so all 8 are timed (9 ticks: the end reads the clock once more)
    again = measure_segmentation(cfg, dataclasses.replace(speeds, classifier_step=7.0), "cpu", steps=8,
                                 enough_s=10.0, clock=lambda: float(next(ticks)))
    assert again.segmentation_step == 9 / 8 and again.classifier_step == 7.0
    assert again.cam_per_mpx == speeds.cam_per_mpx and again.probe_seconds > 0
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


def test_facts_of_a_project_follow_its_patch_labels(tmp_path):
    from pipeline.stages.classify import make_patch_labels
    from pipeline.store.project import create_project

    store = create_project("sample", tmp_path / "p.oeem.zarr")
    cfg = preset("tiny")
    grid = project_facts(store, cfg)  # before `oeem patches`: the grid of every training image
    summary = make_patch_labels(store, cfg.patches)
    facts = project_facts(store, cfg)
    assert facts.train_patches == summary["patches"] == grid.train_patches
    assert len(facts.cam_images) == len(store.labelled_images())
    assert sum(p for *_, p in facts.cam_images) == sum(len(store.read(n, "patch_corners"))
                                                        for n in store.labelled_images())
    assert len(facts.images) == len(store.names()) and len(facts.scored) == len(store.names())


def test_run_all_runs_the_sized_schedule_and_keeps_it(tmp_path):
    """A budget the preset does not fit at the given speed: the run trains the sized schedule, says so at its start,
    records it, and the same budget again resumes it instead of sizing afresh."""
    from pipeline.stages.run import run_all
    from pipeline.store.project import create_project, project_config

    store = create_project("sample", tmp_path / "p.oeem.zarr")
    cfg = project_config(store, "tiny", {"classifier.epochs": 1, "segmentation.iterations": 20,
                                         "inference.flip": False, "classifier.threads": 2,
                                         "segmentation.threads": 2})
    slow = Speeds(classifier_step=0.5, segmentation_step=5.0, cam_per_mpx=0.01, predict_per_mpx=0.01,
                  evaluate_per_mpx=0.01, probe_seconds=1.0)
    notices = []
    report = run(run_all(store, cfg, "cpu", budget_s=90, speeds=slow), lambda p: notices.append(p))
    plan = [p for p in notices if p.stage == "estimate" and p.notice]
    assert len(plan) == 2 and plan[0].metrics["expected_s"] == report["estimate"]["total_s"] <= SAFETY * 90
    assert notices[0].notice.startswith("computing on the CPU")  # the device line stays first
    sized = report["estimate"]["sized"]
    assert sized["segmentation.iterations"][0] == 20 and 5 <= sized["segmentation.iterations"][1] < 20
    assert "segmentation.iterations 20 -> " in plan[0].notice and "evaluation" in plan[0].notice
    # at the segmentation's start the iterations are sized again from the time left: the classifier took a few
    # real seconds, not the 0.5 s per step planned, so the segmentation gets that time
    [resized] = report["estimate"]["resized"]  # no self-training round: one training, one second sizing
    assert resized["planned_iterations"] == sized["segmentation.iterations"][1] < resized["iterations"] <= 20
    assert resized["spent_s"] < report["estimate"]["seconds"]["classifier"]  # less than the classifier's plan
    assert plan[1].notice.startswith("at the segmentation's start, ") and "expected end" in plan[1].notice
    assert plan[1].metrics["expected_s"] == resized["total_s"] <= SAFETY * (90 - resized["spent_s"])
    ran = store.load_run("segmentation")
    assert ran["iterations_run"] == ran["config"]["iterations"] == resized["iterations"]
    assert 0 < resized["actual_s"] <= report["estimate"]["actual_s"]
    saved = store.load_run("budget")
    assert saved["budget_s"] == 90 and saved["config"]["segmentation"]["iterations"] == ran["iterations_run"]
    assert json.loads((store.path / "runs" / "config.json").read_text())["segmentation"]["iterations"] == 20
    # the same budget again: the kept schedule, nothing trained again, whatever the speed now
    again = []
    run(run_all(store, cfg, "cpu", budget_s=90, speeds=dataclasses.replace(slow, segmentation_step=4.0)),
        lambda p: again.append(p.stage))
    assert not {"classifier", "segmentation", "predict"} & set(again)
    assert store.load_run("segmentation")["run_id"] == ran["run_id"]
    # what is left to do, as run_all will see it
    from pipeline.budget import done_stages
    from pipeline.config import apply_overrides

    kept = copy.deepcopy(cfg)
    apply_overrides(kept, {"segmentation.iterations": ran["iterations_run"]})
    assert {"patches", "classifier", "cams", "segmentation", "predict"} <= done_stages(store, kept)
    assert estimate(kept, slow, project_facts(store, kept), done_stages(store, kept)).nothing_to_do
    assert done_stages(store, cfg) == {"patches", "classifier", "cams"}  # the preset's 20 iterations: train again
    apply_overrides(kept, {"selftrain.rounds": 1})  # one round more: round 0's model is done, the round is not
    left = done_stages(store, kept)
    assert "segmentation" in left and not {"round-1", "round-1-labels", "predict"} & left
    by = {s.key: s for s in estimate(kept, slow, project_facts(store, kept), left).stages}
    assert by["segmentation"].done and by["round-1"].seconds > 0 and "images predicted" in by["round-1"].detail



def test_the_segmentation_is_sized_again_from_the_time_left(tmp_path):
    """At the segmentation's start a budgeted run re-measures the segmentation step and sizes the iterations to the
    time actually left: fewer on a machine slower than planned, the fewest (and one line saying the run will
    overrun) when almost nothing is left, and only once per budget."""
    from pipeline.budget import precision_name_for, resize_segmentation, start_of_run
    from pipeline.stages.cams import make_cams
    from pipeline.stages.classify import make_patch_labels, train_classifier
    from pipeline.store.project import create_project, project_config

    store = create_project("sample", tmp_path / "p.oeem.zarr")
    cfg = project_config(store, "tiny", {"classifier.epochs": 1, "segmentation.iterations": 20,
                                         "classifier.threads": 2, "segmentation.threads": 2})
    make_patch_labels(store, cfg.patches)
    run(train_classifier(store, cfg.classifier, cfg.patches, "cpu"))
    run(make_cams(store, cfg.cam, cfg.patches, "cpu"))
    slow = Speeds(classifier_step=0.5, segmentation_step=2.0, cam_per_mpx=0.01, predict_per_mpx=0.01,
                  evaluate_per_mpx=0.01, precision=precision_name_for(cfg, "cpu"), probe_seconds=1.0)
    planned, _ = run(start_of_run(store, cfg, "cpu", budget_s=60, speeds=slow))
    assert planned.segmentation.iterations == 20  # classifier and CAMs are done: the preset's iterations fit
    measured = []

    def slower(c, speeds, device):  # the second measurement: a machine twice as slow as the first said
        measured.append(device)
        return dataclasses.replace(speeds, segmentation_step=4.0, probe_seconds=0.5)

    notices = []
    one_round = copy.deepcopy(planned)  # as if the plan had kept a self-training round
    one_round.selftrain = dataclasses.replace(planned.selftrain, rounds=1)
    new, resized = run(resize_segmentation(store, one_round, "cpu", 60, spent_s=10.0, measure=slower),
                       notices.append)
    assert measured == ["cpu"] and resized["spent_s"] == 10.5 and resized["planned_iterations"] == 20
    assert resized["planned_rounds"] == 1 and resized["rounds"] == 0 and new.selftrain.rounds == 0  # it goes first
    assert f"selftrain.rounds 1 -> 0, segmentation.iterations 20 -> {resized['iterations']}" in resized["lines"]
    assert 5 <= resized["iterations"] < 20 and resized["total_s"] <= SAFETY * (60 - 10.5)
    assert resized["total_s"] + 4.0 * 10 > SAFETY * (60 - 10.5)  # not needlessly short: 10 more would not fit
    assert new.segmentation.iterations == resized["iterations"] and one_round.segmentation.iterations == 20
    saved = store.load_run("budget")
    kept = saved["config"]
    assert kept["segmentation"]["iterations"] == resized["iterations"] and kept["selftrain"]["rounds"] == 0
    assert saved["resized"] == {"0": resized} and resized["round"] == 0
    assert notices[-1].notice == resized["lines"] and notices[-1].metrics["expected_s"] == resized["total_s"]
    # once per budget: a resumed run keeps what was chosen, without measuring again
    assert run(resize_segmentation(store, new, "cpu", 60, 10.0, measure=slower)) == (new, {}) and len(measured) == 1

    def forget() -> None:
        rec = store.load_run("budget")
        del rec["resized"]
        store.save_run("budget", rec)

    # a machine faster than the plan said: the round stays, at the preset's iterations (never more)
    forget()
    fast = run(resize_segmentation(store, one_round, "cpu", 60, 10.0,
                                   measure=lambda c, sp, d: dataclasses.replace(sp, segmentation_step=0.05)))[1]
    assert (fast["rounds"], fast["iterations"]) == (1, 20) and "20 iterations as planned" in fast["lines"]
    # almost nothing left: the fewest iterations (a quarter of the preset's), and it says the run goes on
    forget()
    _, late = run(resize_segmentation(store, planned, "cpu", 60, 58.0, measure=slower))
    assert late["iterations"] == 5 and "past the budget even at the fewest iterations (5): the run goes on" in \
        late["lines"]
    # before a self-training round's training: the speed the training before it ran at (its loop, checkpoints
    # and data included), nothing measured; the round whose labels are made stays even when late
    from pipeline.budget import with_iterations
    from pipeline.stages.graph import segmentation_settings
    from pipeline.stages.infer import predict
    from pipeline.stages.segment import train_segmenter
    from pipeline.stages.selftrain import refine_round

    first = with_iterations(planned, 5)
    run(train_segmenter(store, segmentation_settings(store, first), "cpu"))
    run(predict(store, first.inference, names=store.labelled_images(), device="cpu"))
    run(refine_round(store, first.patches.size, cam_cfg=first.cam))
    assert store.pseudo_round == 1
    two_rounds = copy.deepcopy(first)
    two_rounds.selftrain = dataclasses.replace(first.selftrain, rounds=2)
    measured.clear()
    _, round1 = run(resize_segmentation(store, two_rounds, "cpu", 60, 60.0, measure=slower))
    assert measured == [] and round1["round"] == 1 and store.load_run("budget")["resized"].keys() == {"0", "1"}
    it_s = 1 / store.load_run("segmentation")["it_per_s"]
    assert round1["speeds"]["segmentation_step"] == pytest.approx(it_s)
    assert round1["lines"].startswith("at self-training round 1's training, 60 s of the 60 s budget used (the last "
                                      f"training ran {it_s:.3g} s/step): selftrain.rounds 2 -> 1")
    assert (round1["rounds"], round1["iterations"]) == (1, 5) and "past the budget" in round1["lines"]


def test_oeem_run_says_each_stages_expected_duration_at_its_start(tmp_path, capsys):
    from pipeline.cli import main

    p = str(tmp_path / "p.oeem.zarr")
    tiny = ["--preset", "tiny", "--device", "cpu", "--epochs", "1", "--iterations", "3", "--fast"]
    # a budget that is not a duration: one line, before anything is made
    assert main(["run", p, "--data", "sample", *tiny, "--budget", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: 'soon' is not a duration: accepted forms are 90s, 45m, 2h, 1h30m, "
                                        "or a number of minutes (60)"]
    assert not (tmp_path / "p.oeem.zarr").exists()
    assert main(["run", p, "--data", "sample", *tiny]) == 0
    out, err = capsys.readouterr()
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes[0].startswith("note: computing on the CPU")  # where and in what precision, first
    assert notes[1].startswith("note: expected duration of each stage (speed measured in ")
    plan = err[err.index("note: expected duration"):].splitlines()
    for label in ("patches", "classifier", "CAMs", "segmentation", "prediction", "evaluation"):
        assert any(line.startswith(f"  {label} ") and (" ends ~" in line or line.endswith(" done"))
                   for line in plan), label
    assert any(line.startswith("  total ") and "expected end" in line for line in plan)
    assert "time: " in out and ", expected " in out
    # another schedule and too short a budget: the one line naming the smallest that works, nothing trained
    before = json.loads((tmp_path / "p.oeem.zarr" / "runs" / "segmentation.json").read_text())["run_id"]
    assert main(["run", p, *tiny[:-3], "--iterations", "4", "--fast", "--budget", "1s"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: a 1 s budget is too small on this machine: the smallest schedule takes about ")
    assert last.endswith("m or more") and "give --budget " in last
    assert json.loads((tmp_path / "p.oeem.zarr" / "runs" / "segmentation.json").read_text())["run_id"] == before
    # nothing left to do: no probe, and it says so
    assert main(["run", p, *tiny]) == 0
    assert "note: every stage is done with these settings: only the evaluation runs" in capsys.readouterr().err
    # a budget it fits: the segmentation measured again at its start, and the report's time against both plans
    assert main(["run", p, *tiny[:-3], "--iterations", "4", "--fast", "--budget", "60m"]) == 0
    out, err = capsys.readouterr()
    assert "note: at the segmentation's start, " in err and "4 iterations as planned" in err
    assert ", expected " in out and "; from the segmentation's start " in out
