"""Data-parallel training under ``torchrun``: one process per GPU (or several CPU processes), one global batch.

Why a module of its own: the training loops stay plain single-process code that asks a :class:`Dist` who it is
(``rank``, ``world_size``, ``is_main``) and how to agree (``barrier``, ``all_reduce_mean``). Without torchrun's
environment (``WORLD_SIZE`` > 1) nothing here creates a process group, so ordinary runs, the plugin and the tests
are unaffected. The environment helpers do not import torch, so the CLI can ask "am I rank 0?" cheaply before it
takes the project's writer lock.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pipeline.errors import OEEMError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

T = TypeVar("T")

# set when this module created the process group, so shutdown() never destroys one a caller made
_OWNED = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise OEEMError(f"the environment variable {name}={value!r} is not a whole number; launch with "
                        "torchrun (or unset it)") from None


def env_world_size() -> int:
    """Processes in the launch (torchrun's ``WORLD_SIZE``); 1 when not launched by torchrun."""
    return max(1, _env_int("WORLD_SIZE", 1))


def env_rank() -> int:
    """This process's global rank (torchrun's ``RANK``); 0 when not launched by torchrun."""
    return _env_int("RANK", 0) if env_world_size() > 1 else 0


def launched() -> bool:
    """True under a multi-process torchrun launch; a one-process torchrun launch counts as a plain run."""
    return env_world_size() > 1


def env_is_main() -> bool:
    """Rank 0, or not distributed: the one process that writes the project and talks to the user."""
    return env_rank() == 0


@dataclass(frozen=True)
class Dist:
    """Who this process is in the run and the device it trains on; a plain run is rank 0 of 1."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank, e.g. so none reads a checkpoint rank 0 is still writing. No-op in a plain run."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (every rank gets it), e.g. the loss of the global batch."""
        if not self.enabled:
            return float(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks: rank 0 may change a shared file (move a checkpoint of
        other settings aside) before the others read it. Only rank 0's result carries a notice for the user."""
        out = fn() if self.is_main else None
        self.barrier()
        return fn() if not self.is_main else out  # type: ignore[return-value]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` itself in a plain run; under torchrun wrapped in DistributedDataParallel, which averages
        the gradients over the ranks in ``backward()`` so every rank takes the same optimiser step."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, batch_size: int, what: str = "batch_size") -> int:
        """This rank's share of a global batch; refused when it does not divide evenly (every rank must take
        the same number of samples for the averaged gradient to be the global batch's)."""
        if batch_size % self.world_size:
            up = -(-batch_size // self.world_size) * self.world_size
            raise OEEMError(f"{what} {batch_size} is the global batch and must be divisible by the "
                            f"{self.world_size} torchrun processes; choose a multiple of {self.world_size} "
                            f"(e.g. --set {what}={up})")
        return batch_size // self.world_size


def setup(device: torch.device) -> Dist:
    """Join torchrun's process group (created once per process) and pick this rank's device.

    ``nccl`` on GPUs (each local rank takes ``cuda:LOCAL_RANK``, whatever GPU index was asked for), ``gloo`` on
    CPUs. In a plain run: no process group, ``device`` unchanged."""
    if not launched():
        return Dist(device=device)
    global _OWNED
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise OEEMError("this PyTorch build has no torch.distributed; run with one process (without torchrun)")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise OEEMError(f"WORLD_SIZE={env_world_size()} is set but {name} is not: launch multi-process "
                            "training with torchrun (e.g. torchrun --standalone --nproc-per-node 2 -m pipeline "
                            "train-seg PROJECT)")
    local_rank = _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise OEEMError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): start "
                            "at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWNED = True
        atexit.register(shutdown)  # library use without the CLI (which shuts down itself) also exits cleanly
    elif dist.get_backend() == "nccl" and device.type != "cuda":
        raise OEEMError("the process group uses nccl (GPUs) but this stage runs on the CPU; use the same "
                        "--device for every stage of one torchrun launch")
    return Dist(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown() -> None:
    """Leave the process group this module created (a clean exit; torchrun warns about groups left open)."""
    global _OWNED
    if not _OWNED:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False
