"""Training the classifier while the pathologist tags (``pipeline.stages.live``, ``oeem train-live``): tags made
during the training are in the next checkpoint, the checkpoint is the batch training's own and loadable after a
cancel, the project is free between chunks, and ``oeem run`` continues from it by the stated rule."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.progress import run
from pipeline.stages.classify import load_classifier
from pipeline.stages.graph import classifier_job
from pipeline.stages.live import train_while_tagging
from pipeline.stages.patches import patch_grid
from pipeline.store.project import create_project, project_config


@pytest.fixture
def untagged(tmp_path, monkeypatch):
    """The sample data as a pathologist's own images: no masks on the training images, no tags yet."""
    monkeypatch.setenv("OEEM_SELF_CHECK", "0")  # the crash self-check has its own tests
    store = create_project("sample", tmp_path / "s.oeem.zarr")
    for n in store.names("train"):
        store.delete(n, "mask")
    return store, project_config(store, "tiny", {})


def tag(store, name: str) -> None:
    """Half the patches gland only, half no gland."""
    grid = patch_grid(store.shape(name), 112, 56)
    tags = np.where(np.arange(len(grid)) % 2 == 0, 1, 2).astype(np.uint8)
    store.save_patch_tags(name, tags, 112, 56)


def tag_elsewhere(store, name: str) -> int:
    """:func:`tag` from another process (napari's, say) under the writer lock, as the dock saves a tag; its exit
    status (2: the project was held)."""
    code = ("import sys, numpy as np\n"
            "from pipeline.store import ProjectStore\n"
            "from pipeline.stages.patches import patch_grid\n"
            "from pipeline.errors import OEEMError\n"
            "store = ProjectStore.open(sys.argv[1])\n"
            "grid = patch_grid(store.shape(sys.argv[2]), 112, 56)\n"
            "try:\n"
            "    store.save_patch_tags(sys.argv[2], np.where(np.arange(len(grid)) % 2 == 0, 1, 2).astype(np.uint8), "
            "112, 56)\n"
            "except OEEMError:\n"
            "    sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, str(store.path), name], check=False).returncode


def checkpoint(store) -> dict:
    return torch.load(store.checkpoint_path("classifier"), weights_only=True)


def test_tags_made_during_the_training_are_in_the_next_checkpoint(untagged):
    store, cfg = untagged
    names = store.names("train")
    seen, free = [], []

    def stop(state) -> bool:  # between chunks: the pathologist tags one more image, from another process
        if state.checkpoints:
            seen.append((state.images, checkpoint(store)["live"]["tags"], store.tags_fingerprint()))
        if state.checkpoints < 3:
            free.append(tag_elsewhere(store, names[state.checkpoints]))
        return state.checkpoints >= 4

    rec = run(train_while_tagging(store, cfg, "cpu", chunk_steps=10, stop=stop, poll_s=0.05))
    assert [images for images, _, _ in seen] == [1, 2, 3, 3]  # each chunk learned the image tagged before it
    assert all(made == now for _, made, now in seen[:1]) and seen[-1][1] == seen[-1][2]
    assert rec["steps"] == 40 and rec["steps_on_labels"] == 20 and rec["checkpoints"] == 4
    assert free == [0, 0, 0]  # another process could write: the lock was held only while writing
    ck = checkpoint(store)
    assert ck["labels_id"] == store.load_run("patches")["run_id"] and ck["live"]["images"] == 3
    model, _ = load_classifier(store, "cpu")  # the batch training's own format
    assert sum(p.numel() for p in model.parameters()) > 0


def test_no_tags_waits_and_a_cancel_keeps_a_loadable_checkpoint(untagged):
    store, cfg = untagged
    job = train_while_tagging(store, cfg, "cpu", chunk_steps=10, poll_s=0.01)
    messages = [next(job).message for _ in range(3)]
    assert all("waiting for the first tags" in m for m in messages[-2:])
    assert not store.checkpoint_path("classifier").is_file()
    tag(store, store.names("train")[0])
    while not store.checkpoint_path("classifier").is_file():
        next(job)
    next(job)  # into the next chunk
    job.close()  # cancelled mid-chunk (napari closed, Ctrl-C)
    ck = checkpoint(store)
    assert ck["live"]["checkpoints"] >= 1 and ck["live"]["steps"] % 10 == 0
    load_classifier(store, "cpu")


def test_oeem_run_continues_from_it_while_no_tag_changed_and_trains_afresh_after(untagged):
    store, cfg = untagged
    names = store.names("train")
    tag(store, names[0])
    run(train_while_tagging(store, cfg, "cpu", chunk_steps=10, stop=lambda s: s.checkpoints >= 1))
    steps_per_epoch = max(1, checkpoint(store)["live"]["patches"] // cfg.classifier.batch_size)
    done_epochs = checkpoint(store)["epoch"]
    assert done_epochs == min(10 // steps_per_epoch, cfg.classifier.passes_for(checkpoint(store)["live"]["patches"]))
    record = run(classifier_job(store, cfg, "cpu"))  # the classifier step of `oeem run`, no tag since
    assert record["epochs_run"] == record["passes"] - done_epochs
    # a tag after the live training: new labels, the classifier trains afresh (the live model kept aside)
    run(train_while_tagging(store, cfg, "cpu", chunk_steps=10, stop=lambda s: s.checkpoints >= 1))
    tag(store, names[1])
    record = run(classifier_job(store, cfg, "cpu"))
    assert record["epochs_run"] == record["passes"]
    assert store.checkpoint_path("classifier").with_name("classifier.previous.pt").is_file()


def test_cli_train_live_prints_one_line_per_checkpoint(untagged, capsys):
    store, _ = untagged
    tag(store, store.names("train")[0])
    assert main(["train-live", str(store.path), "--preset", "tiny", "--device", "cpu", "--chunk", "5",
                 "--minutes", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "training the classifier while you tag" in out and "checkpoint saved" in out
    assert "`oeem run` continues from the last one" in out
    assert checkpoint(store)["live"]["checkpoints"] >= 1
    # `oeem preview` now asks the classifier trained while tagging, before the forest
    assert main(["preview", str(store.path), "--preset", "tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("(classifier's pseudo-mask)") == len(store.names())


def test_the_dock_leaves_a_core_to_napari_and_the_process_gets_its_threads_back(untagged):
    store, cfg = untagged
    tag(store, store.names("train")[0])
    torch.set_num_threads(2)
    during = []
    run(train_while_tagging(store, cfg, "cpu", chunk_steps=5, threads=1, stop=lambda s: s.checkpoints >= 1,
                            on_checkpoint=lambda model, live: during.append(torch.get_num_threads())))
    assert during == [1] and torch.get_num_threads() == 2
