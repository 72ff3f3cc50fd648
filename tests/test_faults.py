"""A project survives kill -9, a full disk, damaged chunks and a second writer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import OEEMError
from pipeline.store import ProjectStore
from pipeline.store.lock import ProjectBusy, holder, project_writer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import faults  # noqa: E402


def edit(store, name, k):
    labels = store.read(name, "pseudo").copy()
    labels[k:k + 10, :10] = 1 - labels[k:k + 10, :10]
    return labels


def hold_lock_in_subprocess(project: Path) -> subprocess.Popen:
    code = ("import sys, time; from pipeline.store.lock import project_writer\n"
            f"with project_writer({str(project)!r}, 'oeem train-seg'):\n"
            "    print('held', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_gets_one_line_and_a_dead_holder_is_taken_over(project_copy, capsys):
    store, _ = project_copy
    name = store.names("train")[0]
    proc = hold_lock_in_subprocess(store.path)
    try:
        with pytest.raises(ProjectBusy, match=rf"being written by oeem train-seg \(pid {proc.pid} on .*\) since"):
            store.save_correction(name, edit(store, name, 0))
        assert not store.has(name, "corrected")
        # the CLI: one line, exit 2; readers are not blocked
        assert main(["train-seg", str(store.path), "--iterations", "1"]) == 2
        assert "being written by oeem train-seg" in capsys.readouterr().err
        assert main(["info", str(store.path)]) == 0
        assert store.read(name, "pseudo").shape == store.shape(name)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the holder died without releasing anything: its lock is free and is taken over
    assert store.save_correction(name, edit(store, name, 0)) > 0
    assert holder(store.path)["pid"] == os.getpid()


def test_lock_is_reentrant_across_threads_of_one_process(project_copy):
    import threading

    store, _ = project_copy
    name = store.names("train")[0]
    errors = []
    with project_writer(store.path, "a training job"):
        t = threading.Thread(target=lambda: errors.append(store.save_correction(name, edit(store, name, 0))))
        t.start()
        t.join()
    assert errors and errors[0] > 0


def test_kill_minus_9_while_saving_corrections_short_run(tmp_path):
    """The CI version of benchmarks/faults.py (the benchmark runs 200+ kills per scenario)."""
    res = faults.run_scenario("corrections", kills=12, folder=tmp_path, seed=1)
    assert res["problems"] == 0, res["details"]
    res = faults.run_scenario("export", kills=6, folder=tmp_path, seed=1)
    assert res["problems"] == 0, res["details"]


def test_the_fault_check_would_see_a_torn_correction(tmp_path):
    """The benchmark's check is not vacuous: a half-overwritten current state is reported."""
    project = faults.make_project(tmp_path)
    store = ProjectStore.open(project)
    name = store.names()[0]
    log = tmp_path / "log"
    store.save_correction(name, faults.state(1, store.shape(name)))
    log.write_text("1\n")
    assert faults.check_corrections(project, log) is None
    version = store.correction_history(name)[-1]
    arr = store.group(name)[f"corrections/v{version:06d}"]
    torn = np.asarray(arr[...])
    torn[0, :256, :256] = faults.state(2, store.shape(name))[:256, :256]  # one chunk from the next state
    torn[0, :256, :256] ^= 1
    arr[...] = torn
    assert "matches neither" in faults.check_corrections(project, log)


def test_disk_full_while_saving_a_correction_keeps_the_previous_state(project_copy, monkeypatch):
    store, _ = project_copy
    name = store.names("train")[0]
    first = edit(store, name, 0)
    store.save_correction(name, first)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ProjectStore, "_new_version", full)
    with pytest.raises(OEEMError, match="could not be saved .No space left on device.; the previous one is intact"):
        store.save_correction(name, edit(store, name, 20))
    monkeypatch.undo()
    assert np.array_equal(ProjectStore.open(store.path).read(name, "corrected"), first)


def test_disk_full_while_writing_a_checkpoint_is_one_line(project_copy, monkeypatch, capsys):
    import pipeline.store.project_store as st

    store, _ = project_copy
    ck = store.checkpoint_path("segmentation")
    before = ck.read_bytes()
    real = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(st.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    code = main(["train-seg", str(store.path), "--iterations", "2", "--redo", "--device", "cpu"])
    monkeypatch.undo()
    assert code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert ck.read_bytes() == before  # the last model is kept
    assert not list(ck.parent.glob(".*.tmp"))


def test_damaged_chunk_is_named_and_doctor_restores_the_correction(project_copy, capsys):
    store, _ = project_copy
    name = store.names("train")[0]
    first, second = edit(store, name, 0), edit(store, name, 30)
    store.save_correction(name, first)
    store.save_correction(name, second)
    current = store.correction_history(name)[-1]
    chunk_dir = store.path / "images" / name / "corrections" / f"v{current:06d}" / "c"
    chunks = [p for p in chunk_dir.rglob("*") if p.is_file()]
    assert chunks
    chunks[0].write_bytes(b"\x00garbage" * 3)
    with pytest.raises(OEEMError, match=rf"correction version {current} of image '{name}' is damaged.*oeem doctor"):
        ProjectStore.open(store.path).read(name, "corrected")
    assert main(["doctor", str(store.path), "--check-only"]) == 2  # problems found, nothing changed
    assert "restores the newest intact one" in capsys.readouterr().out
    assert main(["doctor", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "restored" in out
    restored = ProjectStore.open(store.path)
    assert np.array_equal(restored.read(name, "corrected"), first)  # the newest intact state
    assert main(["doctor", str(store.path)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_doctor_names_a_damaged_stage_output_and_the_command_that_remakes_it(project_copy, capsys):
    store, _ = project_copy
    name = store.names("train")[0]
    chunk = next(p for p in (store.path / "images" / name / "cam" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"truncated")
    with pytest.raises(OEEMError, match=rf"array 'cam' of image '{name}' cannot be read.*oeem doctor"):
        store.read(name, "cam")
    assert main(["doctor", str(store.path)]) == 2
    captured = capsys.readouterr()
    assert f"{name}: array 'cam' is damaged - NOT fixed; run `oeem cams {store.path}` first" in captured.out


def test_older_projects_corrections_still_read_and_migrate(project_copy):
    """A project saved before versioned corrections (two plain arrays) reads, undoes and saves."""
    store, _ = project_copy
    name = store.names("train")[0]
    old = edit(store, name, 0)
    g = store.group(name)
    store._write(g, "corrected", old)
    store._write(g, "verified", (old != store.read(name, "pseudo")).astype(np.uint8))
    assert np.array_equal(store.read(name, "corrected"), old)
    new = edit(store, name, 40)
    store.save_correction(name, new)
    assert "corrected" not in g and np.array_equal(store.read(name, "corrected"), new)
    assert store.undo_correction(name)
    assert np.array_equal(store.read(name, "corrected"), old)


def test_doctor_removes_what_interrupted_writes_left(project_copy, capsys):
    store, _ = project_copy
    name = store.names("train")[0]
    left = store.path / "images" / name / "pseudo" / "c" / "zarr.0123abcd.partial"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half a chunk")
    assert main(["doctor", str(store.path)]) == 0
    assert "1 temporary file(s) left by interrupted writes - restored" in capsys.readouterr().out
    assert not left.exists()
    assert main(["doctor", str(store.path)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


@pytest.fixture
def full_tmpfs(tmp_path):
    """A real, tiny filesystem (tmpfs) - needs root and a kernel that lets this container mount."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a tmpfs (ENOSPC is injected in the tests above)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (ENOSPC is injected in the tests above)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of ``folder`` up to ``leave`` free bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def test_a_really_full_disk_keeps_the_correction_and_the_export_folder(project_copy, full_tmpfs, capsys):
    import shutil

    from pipeline.io.export import export_masks

    src, _ = project_copy
    project = full_tmpfs / "p.oeem.zarr"
    shutil.copytree(src.path, project)
    store = ProjectStore.open(project)
    name = store.names("train")[0]
    first = edit(store, name, 0)
    store.save_correction(name, first)
    out = full_tmpfs / "out"
    out.mkdir()
    fill(full_tmpfs, leave=2048)
    with pytest.raises(OEEMError, match="No space left on device"):
        for k in range(1, 200):  # a few may still fit in the last blocks
            store.save_correction(name, edit(store, name, k % 100))
    current = ProjectStore.open(project).correction(name)
    assert current is not None and set(np.unique(current[0])) <= {0, 1}  # a whole state, readable
    assert np.array_equal(current[1].astype(bool) | (current[0] != store.read(name, "pseudo")), current[1] > 0)
    with pytest.raises(OEEMError, match="No space left on device"):
        export_masks(store, out, "tiff", "pseudo")
    assert list(out.iterdir()) == []
    (full_tmpfs / "filler").unlink()
    assert main(["doctor", str(project)]) == 0  # the store is whole once there is room again
