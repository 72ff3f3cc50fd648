"""The decisions the CUDA path makes, run on a CPU (issue 32: no GPU has been lent to this project yet): which
device ``auto`` takes, what precision a GPU computes in and what the run says about it, the one line for a GPU
asked for where there is none, and one torchrun process per GPU. torch.cuda is replaced where a GPU would answer;
the training itself on a GPU is not covered here."""
from __future__ import annotations

import pytest
import torch

from pipeline import device as device_mod
from pipeline.device import compute_plan, resolve_device, resolve_precision
from pipeline.errors import OEEMError


@pytest.fixture
def gpu(monkeypatch):
    """A machine that reports one CUDA GPU (an H200) with bf16; ``gpu(bf16=False)`` makes it an older one."""
    def make(bf16: bool = True, count: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H200" if bf16 else "Tesla V100")
    return make


def test_auto_takes_the_gpu_when_there_is_one(gpu):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    gpu()
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")  # asked for: kept


def test_a_gpu_asked_for_where_there_is_none_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OEEMError, match=r"^a GPU \(cuda\) was asked for but none is available; use --device cpu$"):
        resolve_device("cuda")
    with pytest.raises(OEEMError, match="unknown device 'tpu': use auto, cpu, cuda, mps"):
        resolve_device("tpu")
    from pipeline.cli import main

    assert main(["run", str(tmp_path / "p.oeem.zarr"), "--data", "sample", "--preset", "tiny",
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: a GPU (cuda) was asked for but none is available; use --device cpu"
    assert "Traceback" not in "\n".join(err)


def test_a_gpu_computes_in_bf16_where_it_has_it_and_the_run_says_so(gpu, monkeypatch):
    cuda = torch.device("cuda")
    gpu(bf16=True)
    monkeypatch.setattr(device_mod, "_cpu_has_native_bf16", lambda: False)  # the GPU's answer, not the CPU's
    assert resolve_precision("auto", cuda) is torch.bfloat16
    assert resolve_precision("fp32", cuda) is None
    assert compute_plan("auto", "auto") == ("computing on the GPU NVIDIA H200 in bf16 (auto: native bf16 here "
                                            "(about twice as fast as fp32; weights and losses stay fp32))")
    assert compute_plan("cuda", "bf16") == "computing on the GPU NVIDIA H200 in bf16 (asked for)"
    gpu(bf16=False)
    assert resolve_precision("auto", cuda) is None
    assert compute_plan("cuda", "auto") == "computing on the GPU Tesla V100 in fp32 (auto: this GPU has no bf16)"


def test_torchrun_takes_one_gpu_per_process(gpu, monkeypatch):
    from pipeline.stages import distributed

    gpu(count=2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(OEEMError, match=r"local rank 2 has no GPU \(2 visible\): start at most one process per GPU"):
        distributed.setup(torch.device("cuda"))
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(OEEMError, match="MASTER_PORT is not: launch multi-process training with torchrun"):
        distributed.setup(torch.device("cuda"))


@pytest.fixture
def apple_gpu(monkeypatch):
    """A Mac with Apple silicon: no CUDA, a Metal GPU torch can use."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_takes_an_apple_gpu_after_cuda_and_computes_in_fp32_there(apple_gpu, monkeypatch, gpu):
    mps = torch.device("mps")
    assert resolve_device("auto") == mps and resolve_device("mps") == mps
    assert resolve_device("cpu") == torch.device("cpu")  # asked for: kept
    monkeypatch.setattr(device_mod, "_cpu_has_native_bf16", lambda: True)  # the GPU's answer, not the CPU's
    assert resolve_precision("auto", mps) is None  # bf16 there not measured faster: fp32
    assert resolve_precision("bf16", mps) is torch.bfloat16  # asked for: given
    assert compute_plan("auto", "auto") == ("computing on the Apple GPU (mps; an operation Metal lacks runs on the "
                                            "CPU) in fp32 (auto: bf16 on Apple GPUs is not measured faster here)")
    assert compute_plan("mps", "bf16").endswith("in bf16 (asked for)")
    gpu()  # an NVIDIA GPU too: it comes first
    assert resolve_device("auto") == torch.device("cuda")


def test_an_apple_gpu_asked_for_where_there_is_none_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(OEEMError, match=r"^an Apple GPU \(mps\) was asked for but this machine has no Metal GPU"):
        resolve_device("mps")
    from pipeline.cli import main

    assert main(["run", str(tmp_path / "p.oeem.zarr"), "--data", "sample", "--preset", "tiny",
                 "--device", "mps"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: an Apple GPU (mps) was asked for") and err[-1].endswith("use --device cpu")
    assert "Traceback" not in "\n".join(err)


def test_the_mps_fallback_is_on_before_torch_loads_on_a_mac():
    import subprocess
    import sys

    code = ("import sys; sys.platform = 'darwin'; import os; os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None); "
            "import pipeline; print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
