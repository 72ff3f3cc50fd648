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
from pipeline.stages.classify import load_classifier, make_patch_labels, train_classifier
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


def trained_live(store, cfg, chunk_steps: int, chunks: int) -> dict:
    """The first training image tagged, then ``chunks`` chunks trained while tagging: the checkpoint's record."""
    tag(store, store.names("train")[0])
    run(train_while_tagging(store, cfg, "cpu", chunk_steps=chunk_steps, stop=lambda s: s.checkpoints >= chunks))
    return checkpoint(store)["live"]


def test_oeem_run_continues_from_it_by_the_credit_rule(untagged):
    store, cfg = untagged
    live = trained_live(store, cfg, 10, 1)
    steps_per_epoch = max(1, live["patches"] // cfg.classifier.batch_size)
    done_epochs = checkpoint(store)["epoch"]
    assert live["credit"] == 10 and done_epochs == min(10 // steps_per_epoch, cfg.classifier.passes_for(live["patches"]))
    record = run(classifier_job(store, cfg, "cpu"))  # the classifier step of `oeem run`, no tag since
    assert record["epochs_run"] == record["passes"] - done_epochs and record["continued_from_live"] is None


def test_a_tag_after_the_last_chunk_continues_with_the_steps_credited_by_their_share(untagged):
    store, cfg = untagged
    live = trained_live(store, cfg, 40, 2)
    assert live["credit"] == 80 and live["patches"] > 0
    weights = {k: v.clone() for k, v in checkpoint(store)["model"].items()}
    tag(store, store.names("train")[1])  # a tag the live training never saw: the patches roughly double
    record = run(classifier_job(store, cfg, "cpu"))
    n = record["n_patches"]
    credited = min(int(80 * min(1.0, live["patches"] / n)) // max(1, n // cfg.classifier.batch_size),
                   record["passes"] - 1)
    assert n > live["patches"] and credited >= 1  # the tiny preset: few patches, many steps per epoch credited
    assert record["epochs_run"] == record["passes"] - credited
    assert "continuing the classifier trained while tagging" in record["continued_from_live"]
    assert not store.checkpoint_path("classifier").with_name("classifier.previous.pt").is_file()
    changed = checkpoint(store)["model"]
    assert any(not torch.equal(weights[k], changed[k]) for k in weights if weights[k].is_floating_point())


def test_redo_trains_afresh_whatever_was_trained_while_tagging(untagged):
    store, cfg = untagged
    trained_live(store, cfg, 10, 1)
    tag(store, store.names("train")[1])
    make_patch_labels(store, cfg.patches)
    record = run(train_classifier(store, cfg.classifier, cfg.patches, "cpu", restart=True))  # --redo
    assert record["epochs_run"] == record["passes"] and record["continued_from_live"] is None

