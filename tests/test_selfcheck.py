"""A native crash costs one line, not the run: the self-check's child process, its fallbacks and its cache; and the
crash matrix - every preset's two networks, each precision this CPU computes natively and both memory layouts,
one training step and one prediction, each in its own process so a crash fails one test by name."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.config import preset
from pipeline.device import _cpu_has_native_bf16, layout, use_layout
from pipeline.errors import OEEMError
from pipeline.progress import run
from pipeline.stages import selfcheck
from pipeline.stages.selfcheck import Outcome, check_networks, outcome_of, probe_for, probe_in_child

CPU = torch.device("cpu")


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A private outcome cache, and the process's layout put back as it was afterwards."""
    monkeypatch.setenv("OEEM_CACHE_DIR", str(tmp_path / "cache"))
    before = layout()
    yield tmp_path / "cache" / "kernel-checks.json"
    use_layout(before)


def test_a_segfault_in_the_child_is_an_outcome_not_a_dead_parent():
    child = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], capture_output=True,
                           text=True, check=False)
    outcome = outcome_of(child.returncode, child.stderr, 0.1)
    assert not outcome.ok and outcome.crashed and outcome.detail == "SIGSEGV"
    error = subprocess.run([sys.executable, "-c", "raise ValueError('bad setting')"], capture_output=True, text=True,
                           check=False)
    outcome = outcome_of(error.returncode, error.stderr, 0.1)
    assert not outcome.ok and not outcome.crashed and "ValueError: bad setting" in outcome.detail


def test_a_child_that_hangs_counts_as_a_crash(monkeypatch):
    def hang(*args, **kwargs):  # a heap corruption can deadlock the child instead of killing it
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(selfcheck.subprocess, "run", hang)
    outcome = probe_in_child(probe_for("classifier", preset("tiny").classifier, "fp32"), timeout=5)
    assert not outcome.ok and outcome.crashed and outcome.detail == "hung: no answer within 5 s"


def test_the_real_child_runs_a_network_and_its_outcome_is_cached(own_cache):
    probe = probe_for("classifier", preset("tiny").classifier, "fp32")
    notices = run(check_networks([probe], CPU))
    assert notices == [] and layout() == "channels_last"
    kept = json.loads(own_cache.read_text())["checks"]
    assert len(kept) == 1 and next(iter(kept.values()))["ok"] is True
    assert "resnet_os8 8-16-24-32" in next(iter(kept.values()))["what"]


def test_a_crash_in_channels_last_switches_the_layout_with_one_line(own_cache, monkeypatch):
    calls = []

    def crashing_in_channels_last(probe, timeout=0):
        calls.append(probe.layout)
        return Outcome(probe.layout != "channels_last", probe.layout == "channels_last", "SIGSEGV", 0.0)

    monkeypatch.setattr(selfcheck, "probe_in_child", crashing_in_channels_last)
    probe = probe_for("segmentation", preset("tiny").segmentation, "fp32")
    notices = run(check_networks([probe], CPU))
    assert calls == ["channels_last", "contiguous"] and layout() == "contiguous"
    assert len(notices) == 1
    assert "crashed natively" in notices[0] and "channels-last tensors (SIGSEGV)" in notices[0]
    assert "computing with contiguous (NCHW) tensors instead" in notices[0]
    # the next run on this machine knows it without a child
    use_layout("channels_last")
    assert run(check_networks([probe], CPU)) == notices and calls == ["channels_last", "contiguous"]
    assert layout() == "contiguous"


def test_a_network_that_crashes_in_every_layout_is_one_error_line(own_cache, monkeypatch):
    monkeypatch.setattr(selfcheck, "probe_in_child", lambda probe, timeout=0: Outcome(False, True, "SIGABRT", 0.0))
    with pytest.raises(OEEMError, match="crashes natively on this CPU in every layout.*ONEDNN_MAX_CPU_ISA"):
        run(check_networks([probe_for("classifier", preset("tiny").classifier, "fp32")], CPU))


def test_a_python_error_in_the_child_switches_nothing(own_cache, monkeypatch):
    monkeypatch.setattr(selfcheck, "probe_in_child",
                        lambda probe, timeout=0: Outcome(False, False, "exit 1: MemoryError", 0.0))
    assert run(check_networks([probe_for("classifier", preset("tiny").classifier, "fp32")], CPU)) == []
    assert layout() == "channels_last" and not own_cache.exists()  # nothing learned, nothing kept


PRECISIONS = ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    not _cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX): auto never picks it"))]


@pytest.mark.parametrize("layout_name", ["channels_last", "contiguous"])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", ["classifier", "segmentation"])
@pytest.mark.parametrize("preset_name", ["tiny", "cpu", "paper"])
def test_crash_matrix(preset_name, kind, precision, layout_name):
    cfg = preset(preset_name)
    stage_cfg = cfg.classifier if kind == "classifier" else cfg.segmentation
    predict = cfg.inference.crop_size if kind == "segmentation" else None
    probe = probe_for(kind, stage_cfg, precision, layout_name, predict_size=predict)
    outcome = probe_in_child(probe)
    assert outcome.ok, f"{probe.describe()} in {layout_name}: {outcome.detail}"
