"""*Update model*: a short fine-tune on what the pathologist changed, kept as a new version that can be reverted."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import OEEMError
from pipeline.progress import run


def _paint_gland(store, name: str) -> np.ndarray:
    """A correction that calls the top-left third of the image gland (a clear, checkable change)."""
    labels, _ = store.labels(name)
    h, w = labels.shape
    fixed = labels.copy()
    fixed[: h // 3, : w // 3] = 1
    store.save_correction(name, fixed)
    return fixed


def _update_cfg(cfg, steps: int = 12, lr: float = 0.05):
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.update.iterations, cfg.update.lr = steps, lr
    return cfg


def test_update_moves_the_prediction_toward_the_correction_and_reverts(project_copy):
    from pipeline.stages.update import changed_images, update_model
    from pipeline.store.versions import model_versions, revert_model

    store, cfg = project_copy
    name = store.names("train")[0]
    assert changed_images(store) == []  # the trained model learned from every label there is
    before_ck = store.checkpoint_path("segmentation").read_bytes()
    before_run = store.load_run("segmentation")["run_id"]
    fixed = _paint_gland(store, name)
    assert changed_images(store) == [name]
    region = np.zeros(fixed.shape, bool)
    region[: fixed.shape[0] // 3, : fixed.shape[1] // 3] = True
    before = (store.read(name, "prediction")[region] == 1).mean()

    # a third of an image painted gland is a made-up correction: kept as asked, whatever the guard says of it
    result = run(update_model(store, _update_cfg(cfg), "cpu", keep_worse=True))

    after = (store.read(name, "prediction")[region] == 1).mean()
    assert result["images"] == [name] and result["predicted"] == [name] and result["steps"] == 12
    assert after > before + 0.1, (before, after)  # the painted gland is learned
    rec = store.load_run("segmentation")
    assert rec["run_id"] != before_run and rec["updates"][-1]["images"] == [name]
    assert changed_images(store) == []  # the update learned from it
    assert [v["version"] for v in model_versions(store)] == [1]
    assert store.checkpoint_path("segmentation").read_bytes() != before_ck

    back = revert_model(store)
    assert back["version"] == 1 and model_versions(store) == []
    assert store.checkpoint_path("segmentation").read_bytes() == before_ck
    assert store.load_run("segmentation")["run_id"] == before_run
    with pytest.raises(OEEMError, match="no earlier model kept"):
        revert_model(store)


def test_versions_beyond_keep_are_dropped(project_copy):
    from pipeline.store.versions import keep_version, model_versions

    store, _ = project_copy
    for _ in range(4):
        keep_version(store, "test", keep=2)
    kept = model_versions(store)
    assert [v["version"] for v in kept] == [3, 4]
    files = sorted(p.name for p in (store.path / "checkpoints" / "versions").iterdir())
    assert files == ["segmentation.v0003.json", "segmentation.v0003.pt", "segmentation.v0004.json",
                     "segmentation.v0004.pt"]


def test_tags_decide_labels_where_one_class_patches_cover_a_pixel(project_copy):
    from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND
    from pipeline.stages.patches import patch_grid
    from pipeline.stages.update import changed_images, tag_constraints, update_labels

    store, cfg = project_copy
    name = store.names("train")[1]
    size, stride = cfg.patches.size, cfg.patches.stride
    grid = patch_grid(store.shape(name), size, stride)
    tags = np.zeros(len(grid), np.uint8)
    tags[0], tags[1] = NON_GLAND, GLAND  # neighbours overlapping by half a patch
    tags[-1] = BOTH
    store.save_patch_tags(name, tags, size, stride)
    decided = tag_constraints(store, name)
    (y0, x0), (y1, x1) = grid[0], grid[1]
    assert (decided[y0:y0 + size, x0:x1] == 0).all()  # only the no-gland patch covers it
    assert (decided[y1:y1 + size, x0 + size:x1 + size] == 1).all()  # only the gland-only patch
    assert (decided[y0:y0 + size, x1:x0 + size] == 255).all()  # both cover it: they disagree, nothing decided
    y, x = grid[-1]
    assert (decided[y + size - 1, x + size - 1] == 255)  # a "both" patch decides nothing
    labels, verified = update_labels(store, name)
    assert (labels[y0:y0 + size, x0:x1] == 0).all() and not verified.any()
    assert changed_images(store) == [name]


def test_update_refuses_what_it_cannot_do(project_copy, own_project):
    from pipeline.stages.update import update_model

    store, cfg = project_copy
    with pytest.raises(OEEMError, match="nothing changed since the model was trained"):
        run(update_model(store, cfg, "cpu"))
    with pytest.raises(OEEMError, match="no segmentation model to update yet.*oeem run"):
        run(update_model(own_project, cfg, "cpu"))


def test_cancelled_update_changes_nothing(project_copy):
    from pipeline.stages.update import update_model
    from pipeline.store.versions import model_versions

    store, cfg = project_copy
    name = store.names("train")[0]
    _paint_gland(store, name)
    before = store.checkpoint_path("segmentation").read_bytes()
    job = update_model(store, _update_cfg(cfg, steps=20), "cpu")
    for p in job:
        if p.stage == "update" and p.step == 3:
            job.close()  # what the plugin's Cancel does
            break
    assert store.checkpoint_path("segmentation").read_bytes() == before
    assert model_versions(store) == []


def test_cli_update_and_revert(project_copy, capsys):
    from pipeline.cli import main

    store, _ = project_copy
    name = store.names("train")[0]
    assert main(["update", str(store.path)]) == 2
    assert "nothing changed since the model was trained" in capsys.readouterr().err
    _paint_gland(store, name)
    assert main(["update", str(store.path), "--steps", "4", "--fast", "--keep-worse"]) == 0
    out = capsys.readouterr().out
    assert "updated the model on 1 changed image(s)" in out and "--revert" in out
    assert "held-out tag agreement" in out  # the judgement, with both figures
    assert main(["update", str(store.path), "--revert"]) == 0
    assert "reverted to the model kept" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse: "--steps: invalid int value"
        main(["update", str(store.path), "--steps", "x"])


def test_cli_update_while_another_process_writes(project_copy, capsys):
    import subprocess
    import sys

    from pipeline.cli import main

    store, _ = project_copy
    _paint_gland(store, store.names("train")[0])
    code = ("import time; from pipeline.store.lock import project_writer\n"
            f"with project_writer({str(store.path)!r}, 'test holder'):\n"
            "    print('held', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert main(["update", str(store.path), "--steps", "2"]) == 2
        assert "being written by test holder" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- the guard
def _hold_out(store, k: int = 3) -> list[str]:
    """The last ``k`` training images become the validation split: the guard then judges on their masks."""
    names = store.names("train")[-k:]
    for n in names:
        store.set_split(n, "val")
    return names


def _correct_to_truth(store, name: str) -> None:
    """What a perfect pathologist paints: the gland mask, every pixel verified."""
    truth = store.mask(name).astype(np.uint8)
    store.save_correction(name, truth, painted=np.ones(truth.shape, bool))


def _val_miou(store, cfg) -> float:
    from pipeline.stages.infer import evaluate, predict

    run(predict(store, cfg.inference, names=store.names("val"), device="cpu"))
    return evaluate(store, "val")["mIoU"]


def _worst_pseudo_mask(store) -> str:
    return max(store.names("train"), key=lambda n: int((store.read(n, "pseudo") != store.mask(n)).sum()))


def test_an_update_never_leaves_the_model_worse_on_validation(project_copy):
    from pipeline.stages.update import update_model
    from pipeline.store.versions import model_versions

    store, cfg = project_copy
    _hold_out(store)
    before = _val_miou(store, cfg)
    name = _worst_pseudo_mask(store)
    _correct_to_truth(store, name)
    result = run(update_model(store, cfg, "cpu"))
    assert result["judged_on"] == "validation"
    assert result["before"]["validation mIoU"] == pytest.approx(before, abs=0.01)
    after = _val_miou(store, cfg)  # the model the project now has, scored on its own
    assert after >= before - cfg.update.tolerance, (before, after, result["verdict"])
    assert len(model_versions(store)) == (1 if result["kept"] else 0)


def _paint_everything_gland(store, name: str) -> None:
    """A deliberately wrong correction: the whole image called gland, every pixel verified."""
    shape = store.shape(name)
    store.save_correction(name, np.ones(shape, np.uint8), painted=np.ones(shape, bool))


HARMFUL = ["--steps", "30", "--lr", "0.05", "--set", "update.focus=1"]  # nothing but the wrong image, long enough


def test_a_harmful_update_is_refused_and_the_model_stays(project_copy, capsys):
    from pipeline.cli import main
    from pipeline.store.versions import model_versions

    store, cfg = project_copy
    _hold_out(store)
    _paint_everything_gland(store, store.names("train")[0])
    ck = store.checkpoint_path("segmentation").read_bytes()
    record = store.load_run("segmentation")
    assert main(["update", str(store.path), *HARMFUL]) == 0
    out = capsys.readouterr().out
    assert "not kept" in out and "validation mIoU" in out and "the previous model stays" in out
    assert store.checkpoint_path("segmentation").read_bytes() == ck
    assert store.load_run("segmentation") == record and model_versions(store) == []


def test_the_guard_judges_on_held_out_tags_without_any_mask(project_copy):
    from pipeline.stages.guard import guard_set
    from pipeline.stages.update import update_model

    store, cfg = project_copy
    name = store.names("train")[0]
    _paint_everything_gland(store, name)
    for n in store.names():  # a pathologist's own images: no mask anywhere, only patch labels
        store.delete(n, "mask")
    guard = guard_set(store, [name])
    assert guard.kind == "held-out tags" and name not in guard.names and len(guard.names) == 11
    ck = store.checkpoint_path("segmentation").read_bytes()
    harmful = _update_cfg(cfg, steps=30, lr=0.05)
    harmful.update.focus = 1.0
    result = run(update_model(store, harmful, "cpu"))
    assert not result["kept"] and "held-out tag agreement" in result["verdict"]
    assert result["after"]["held-out tag agreement"] < result["before"]["held-out tag agreement"] - 0.3
    assert store.checkpoint_path("segmentation").read_bytes() == ck


def test_a_retrain_on_corrections_worse_than_the_model_is_reverted(project_copy, capsys):
    from pipeline.cli import main
    from pipeline.store.versions import model_versions

    store, cfg = project_copy
    _hold_out(store)
    _correct_to_truth(store, _worst_pseudo_mask(store))
    ck = store.checkpoint_path("segmentation").read_bytes()
    # two iterations from scratch cannot match the trained model: the retrain is reported and reverted
    assert main(["train-seg", str(store.path), "--labels", "corrected", "--iterations", "2"]) == 0
    err = capsys.readouterr().err
    assert "the retrained model was worse" in err and "validation mIoU" in err and "--keep-worse" in err
    assert store.checkpoint_path("segmentation").read_bytes() == ck and model_versions(store) == []
    # insisted on, it is kept, and the model before stays one revert away
    assert main(["train-seg", str(store.path), "--labels", "corrected", "--iterations", "2", "--keep-worse"]) == 0
    assert "kept the retrained model as asked although it is worse" in capsys.readouterr().err
    assert store.checkpoint_path("segmentation").read_bytes() != ck and len(model_versions(store)) == 1


def test_a_retrain_on_corrections_at_the_cpu_presets_weight_never_leaves_a_small_project_worse(project_copy):
    """Corrections never make a project's model worse by a default: the `cpu` preset's verified-pixel weight on a
    small project (one image of nine corrected, 150 iterations from scratch), three seeds. No weight keeps every
    retrain above the model before (a retrain's validation spreads over seeds: GlaS figures in
    benchmarks/results/update_gain-*.json); the guard does - the model a seed leaves is never worse on validation
    than the one before by more than the tolerance, whether it kept the retrain, put the old model back, or the
    retrain diverged (on some machines this tiny model's loss does at this weight) and the old model came back."""
    import copy

    from pipeline.config import preset
    from pipeline.stages.update import retrain_on_corrections

    store, cfg = project_copy
    _hold_out(store)
    before = _val_miou(store, cfg)
    _correct_to_truth(store, _worst_pseudo_mask(store))
    shipped = preset("cpu").segmentation
    for seed in (0, 1, 2):
        seg = copy.deepcopy(cfg.segmentation)
        seg.label_source, seg.seed = "corrected", seed
        seg.verified_weight, seg.verified_divisor = shipped.verified_weight, shipped.verified_divisor
        try:
            result = run(retrain_on_corrections(store, cfg, seg, "cpu"))
        except OEEMError as exc:  # a retrain that diverged: said in one line, the model before is back
            assert "the model before it is back" in str(exc)
            assert _val_miou(store, cfg) == pytest.approx(before, abs=1e-6)
            continue
        guard = result["guard"]
        assert guard["judged_on"] == "validation"
        assert guard["before"]["validation mIoU"] == pytest.approx(before, abs=0.01)  # (it rounds to 0.01)
        after = _val_miou(store, cfg)
        # what is left is the better of the two, within the tolerance, and the record says which it is
        assert after >= before - cfg.update.tolerance - 0.01, (seed, guard)
        assert guard["kept"] == (guard["after"]["validation mIoU"] >= guard["before"]["validation mIoU"]
                                 - cfg.update.tolerance)
        assert after == pytest.approx(guard["after"]["validation mIoU"] if guard["kept"] else before, abs=0.01)
        if guard["kept"]:
            break  # the project has a new model: the next seed would be judged against it


def test_a_retrain_on_corrections_that_diverges_puts_the_model_back(project_copy, capsys):
    from pipeline.cli import main
    from pipeline.store.versions import model_versions

    store, cfg = project_copy
    _hold_out(store)
    _correct_to_truth(store, _worst_pseudo_mask(store))
    ck = store.checkpoint_path("segmentation").read_bytes()
    # a learning rate no network survives: the loss turns nan within a few iterations
    assert main(["train-seg", str(store.path), "--labels", "corrected", "--lr", "1e6", "--iterations", "20"]) == 2
    err = capsys.readouterr().err
    assert "loss became nan" in err and "the model before it is back" in err and "Traceback" not in err
    assert store.checkpoint_path("segmentation").read_bytes() == ck and model_versions(store) == []
