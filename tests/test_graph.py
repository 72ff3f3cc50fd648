"""The stage graph: one declaration of the steps, one rule for "done", the same answer for `oeem run` and the plan."""
from __future__ import annotations

import numpy as np

from pipeline.config import preset
from pipeline.stages.graph import done_keys, plan, steps


def test_the_graph_of_a_preset_in_order():
    cfg = preset("cpu")
    assert [s.key for s in steps(cfg)] == [
        "patches", "classifier", "cams", "segmentation-train", "round-1-labels", "round-1-train", "round-2-labels",
        "round-2-train", "predict", "instances", "evaluate"]
    cfg.selftrain.rounds = 0
    assert [s.kind for s in steps(cfg)] == ["patches", "classifier", "cams", "train", "predict", "instances",
                                            "evaluate"]
    said = [s.describe(preset("cpu")) for s in steps(preset("cpu"))]
    assert "round 2: training, 3000 iterations" in said and "round 1: new labels from the prediction" in said


def test_a_finished_project_skips_all_but_the_evaluation_and_new_tags_redo_everything(project_copy):
    store, cfg = project_copy
    planned = plan(store, cfg)
    assert [s.key for s, done in planned if not done] == ["evaluate"]
    assert {"patches", "classifier", "cams", "segmentation", "segmentation-train", "predict"} <= done_keys(store, cfg)
    # a pathologist tags a patch: the patch labels are stale, and everything after them with them
    name = store.names("train")[0]
    from pipeline.stages.patches import patch_grid

    grid = patch_grid(store.shape(name), cfg.patches.size, cfg.patches.stride)
    tags = np.zeros(len(grid), np.uint8)
    tags[0] = 1
    store.save_patch_tags(name, tags, cfg.patches.size, cfg.patches.stride)
    assert [done for _, done in plan(store, cfg)] == [False] * len(planned)
    assert done_keys(store, cfg) == set()


def test_the_budget_asks_the_graph(project_copy):
    from pipeline.budget import done_stages

    store, cfg = project_copy
    assert done_stages(store, cfg) == done_keys(store, cfg)
    more = preset("tiny")
    more.segmentation.iterations = 7  # another schedule: the segmentation must train again, stage 1 stays
    assert done_stages(store, more) == {"patches", "classifier", "cams"}


def test_new_tags_retrain_the_classifier_not_resume_the_finished_one(project_copy):
    """A finished classifier is not 'resumed' at its last epoch after the labels changed (it then trained nothing
    on the new tags and its record claimed it had): it trains afresh, and the old model is kept aside."""
    import torch

    from pipeline.progress import run
    from pipeline.stages.graph import classifier_job
    from pipeline.stages.patches import patch_grid

    store, cfg = project_copy
    before = store.load_run("classifier")
    name = store.names("train")[0]
    store.delete(name, "mask")  # now known by its tags alone: every patch 'no gland'
    grid = patch_grid(store.shape(name), cfg.patches.size, cfg.patches.stride)
    store.save_patch_tags(name, np.full(len(grid), 2, np.uint8), cfg.patches.size, cfg.patches.stride)
    record = run(classifier_job(store, cfg, "cpu"))
    assert record["epochs_run"] == record["passes"] >= 1  # a whole training, not zero epochs
    assert record["patches_run_id"] == store.load_run("patches")["run_id"] != before["patches_run_id"]
    ck = torch.load(store.checkpoint_path("classifier"), weights_only=True)
    assert ck["labels_id"] == record["patches_run_id"]
    assert store.checkpoint_path("classifier").with_name("classifier.previous.pt").is_file()
    assert [s.key for s, done in plan(store, cfg) if done] == ["patches", "classifier"]
