"""The project store: creation, version checks, corrections with history, runs and checkpoints."""
import json

import numpy as np
import pytest
import torch
import zarr

from pipeline.errors import OEEMError
from pipeline.io.data import find_samples
from pipeline.store.project_store import STORE_VERSION, ProjectStore


def test_create_and_reopen(small_folder, tmp_path):
    store = ProjectStore.create(tmp_path / "p.zarr", find_samples(small_folder))
    again = ProjectStore.open(tmp_path / "p.zarr")
    assert again.names("train") == ["train_1", "train_2", "train_3", "train_4"]
    assert again.image("train_1").shape == (160, 192, 3) and again.image("train_1").dtype == np.uint8
    assert set(np.unique(again.mask("train_1"))) <= {0, 1}
    assert store.shape("testA_1") == (160, 192)
    with pytest.raises(OEEMError, match="already exists"):
        ProjectStore.create(tmp_path / "p.zarr", find_samples(small_folder))


def test_failed_create_leaves_nothing(small_folder, tmp_path):
    (small_folder / "train_9.png").write_bytes(b"broken")
    with pytest.raises(OEEMError, match="train_9.png"):
        ProjectStore.create(tmp_path / "p.zarr", find_samples(small_folder))
    assert list(tmp_path.iterdir()) == [small_folder]  # no half-made project, no temp folder


def test_refuses_other_folders_and_versions(tmp_path):
    with pytest.raises(OEEMError, match="no project here"):
        ProjectStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(OEEMError, match="not an oeem project"):
        ProjectStore.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(OEEMError, match="not an oeem project"):
        ProjectStore.open(tmp_path / "other.zarr")
    g = zarr.open_group(str(tmp_path / "new.zarr"), mode="w")
    g.attrs["oeem_store_version"] = STORE_VERSION + 1
    with pytest.raises(OEEMError, match="newer oeem-napari"):
        ProjectStore.open(tmp_path / "new.zarr")


def test_corrections_are_kept_with_history_and_undo(project_copy):
    store, _ = project_copy
    name = store.names("train")[0]
    pseudo = store.read(name, "pseudo")
    edit1 = pseudo.copy()
    edit1[:10, :10] = 1 - edit1[:10, :10]
    assert store.save_correction(name, edit1) == 100
    edit2 = edit1.copy()
    edit2[50:60, 50:55] = 1 - edit2[50:60, 50:55]
    n2 = store.save_correction(name, edit2)
    assert n2 == 150
    label, clean = store.labels(name, "corrected")
    assert np.array_equal(label, edit2) and clean.sum() == 150
    assert store.correction_summary() == {"images": 1, "pixels": 150, "per_image": {name: 150}}
    # survives reopening
    reopened = ProjectStore.open(store.path)
    assert np.array_equal(reopened.read(name, "corrected"), edit2)
    assert reopened.undo_correction(name)
    assert np.array_equal(reopened.read(name, "corrected"), edit1)
    assert reopened.undo_correction(name)
    assert not reopened.has(name, "corrected")
    assert not reopened.undo_correction(name)
    label, clean = reopened.labels(name, "corrected")
    assert np.array_equal(label, pseudo) and not clean.any()


def test_corrections_refuse_other_labels(project_copy):
    store, _ = project_copy
    name = store.names("train")[0]
    bad = store.read(name, "pseudo").copy()
    bad[0, 0] = 3
    with pytest.raises(OEEMError, match=r"label\(s\) \[3\]"):
        store.save_correction(name, bad)


def test_runs_are_written_atomically_as_json(project_copy):
    store, _ = project_copy
    store.save_run("demo", {"x": np.float32(1.5), "arr": np.arange(3)})
    assert json.loads((store.path / "runs" / "demo.json").read_text()) == {"x": 1.5, "arr": [0, 1, 2]}
    assert not list((store.path / "runs").glob(".*tmp"))


def test_checkpoint_errors_are_clear(project_copy, tmp_path):
    from pipeline.stages.classify import load_classifier

    store, _ = project_copy
    ck = torch.load(store.checkpoint_path("classifier"), weights_only=True)
    ck["model"] = {k: v[..., :1] if v.dim() > 1 else v for k, v in ck["model"].items()}
    torch.save(ck, store.checkpoint_path("classifier"))
    with pytest.raises(OEEMError, match="does not match the model"):
        load_classifier(store)
    store.checkpoint_path("classifier").write_bytes(b"not a checkpoint")
    with pytest.raises(OEEMError, match="not a readable weights-only checkpoint"):
        load_classifier(store)
