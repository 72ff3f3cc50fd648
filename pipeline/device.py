"""Where and in what precision torch computes: the device, bf16 autocast where the hardware does it
natively, the memory layout (channels-last unless a self-check found it crashes), threads, and images as
normalised tensors.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from pipeline.config import PRECISIONS
from pipeline.errors import OEEMError


DEVICES = ("auto", "cpu", "cuda", "mps")


def _has_mps() -> bool:
    """An Apple GPU (Metal) that torch can compute on."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks an NVIDIA GPU (cuda), else an Apple GPU (mps), else the CPU; asking for a GPU that is not
    there is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _has_mps() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OEEMError("a GPU (cuda) was asked for but none is available; use --device cpu")
    if name == "mps" and not _has_mps():
        raise OEEMError("an Apple GPU (mps) was asked for but this machine has no Metal GPU that torch can use "
                        "(a Mac with Apple silicon and macOS 12.3 or later); use --device cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise OEEMError(f"unknown device {name!r}: use {', '.join(DEVICES)}")
    return torch.device(name)


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX (Linux flags): there bf16 convolutions run about twice as fast as
    fp32; elsewhere bf16 is emulated and slower, so ``auto`` keeps fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a stage, or None for plain fp32. ``auto`` uses bf16 where the hardware computes it
    natively (a CUDA GPU that supports it, a CPU with AVX512-BF16/AMX); weights, optimiser and losses stay fp32."""
    if name not in PRECISIONS:
        raise OEEMError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:  # an Apple GPU (mps): fp32 unless asked - bf16 there has not been measured faster and agreeing
        native = device.type == "cpu" and _cpu_has_native_bf16()
    if name == "auto":
        return torch.bfloat16 if native else None
    return torch.bfloat16


def compute_plan(device_name: str, precision: str) -> str:
    """One line said at the start of every run: where it computes, with how many threads, in which precision and
    why (``auto`` picks bf16 only where the hardware computes it natively)."""
    device = resolve_device(device_name)
    dtype = resolve_precision(precision, device)
    where = {"cuda": lambda: f"GPU {torch.cuda.get_device_name(device)}",
             "mps": lambda: "Apple GPU (mps; an operation Metal lacks runs on the CPU)"}.get(
        device.type, lambda: f"CPU ({torch.get_num_threads()} threads)")()
    if precision == "fp32":
        why = "asked for"
    elif precision == "bf16":
        why = "asked for" + ("" if device.type in ("cuda", "mps") or _cpu_has_native_bf16() else
                             "; this CPU has no native bf16 (AVX512-BF16/AMX), so it is emulated and slower than fp32")
    elif dtype is None:
        why = {"cpu": "auto: this CPU has no native bf16 (AVX512-BF16/AMX); emulated bf16 would be slower",
               "mps": "auto: bf16 on Apple GPUs is not measured faster here"}.get(device.type,
                                                                                  "auto: this GPU has no bf16")
    else:
        why = "auto: native bf16 here (about twice as fast as fp32; weights and losses stay fp32)"
    return f"computing on the {where} in {precision_name(dtype)} ({why})"


def precision_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else "bf16"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# The memory layout every network and its inputs compute in. Channels-last is faster (~25 % on 2 cores in fp32,
# more in bf16); the self-check (pipeline.stages.selfcheck) turns it off, or oneDNN altogether, for the rest of the
# process where a kernel crashed natively on this CPU.
_LAYOUT: dict[str, torch.memory_format] = {"format": torch.channels_last}
LAYOUTS = ("channels_last", "contiguous", "no_onednn")  # fastest first; the self-check's fallbacks in order


def layout() -> str:
    """The layout this process computes in: one of :data:`LAYOUTS`."""
    if not torch.backends.mkldnn.enabled:
        return "no_onednn"
    return "channels_last" if _LAYOUT["format"] == torch.channels_last else "contiguous"


def use_layout(name: str) -> None:
    """Compute in ``name`` from now on (models placed before keep their weights' layout: place them again)."""
    if name not in LAYOUTS:
        raise OEEMError(f"unknown layout {name!r}: choose one of {', '.join(LAYOUTS)}")
    _LAYOUT["format"] = torch.channels_last if name == "channels_last" else torch.contiguous_format
    torch.backends.mkldnn.enabled = name != "no_onednn"


def memory_format() -> torch.memory_format:
    return _LAYOUT["format"]


def in_layout(x: torch.Tensor) -> torch.Tensor:
    """An input batch in the process's layout (models are moved once with :func:`place`)."""
    return x.contiguous(memory_format=_LAYOUT["format"]) if x.dim() == 4 else x


def place(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.nn.Module:
    """``model`` on ``device`` with its weights in the process's layout."""
    return model.to(device, memory_format=_LAYOUT["format"])


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def to_tensor_image(image, mean: tuple[float, ...], std: tuple[float, ...], device=None) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> normalised float (N, 3, H, W)."""
    t = torch.as_tensor(image, device=device)
    if t.dim() == 3:
        t = t[None]
    t = t.permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, device=t.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=t.device).view(1, 3, 1, 1)
    return (t - m) / s
