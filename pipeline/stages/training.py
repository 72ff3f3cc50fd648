"""What the two trainings share: one loop. The patch classifier (stage 1) and the segmentation network (stage 2)
each say how to draw and augment a batch, how to compute its loss and what their checkpoint holds (a
:class:`Loop`); everything else is here, once: threads, torchrun / DDP and the seeds (:func:`prepare`), resuming
from the stage's checkpoint (:func:`resume`), and in :func:`train` the poly learning-rate schedule, the guard
against a non-finite loss, the checkpoints (every few steps, at the end, and when cancelled), the running loss and
the progress.

Under ``torchrun`` every rank draws and augments the same global batch with the shared seeded generator - the
random stream of a one-process run - and trains on its slice ``[rank::world_size]`` through
DistributedDataParallel; only rank 0 writes the checkpoint, and no rank goes on before it is whole.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.device import resolve_device, set_threads
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.stages.distributed import Dist
from pipeline.stages.distributed import setup as setup_distributed
from pipeline.stages.models import resume_training
from pipeline.store import ProjectStore

log = logging.getLogger("oeem")


def poly_lr(base: float, step: int, total: int, power: float = 0.9, min_lr: float = 0.0) -> float:
    return (base - min_lr) * (1 - step / max(total, 1)) ** power + min_lr


def prepare(threads: int, device: str, batch_size: int, batch_setting: str, seed: int) -> tuple[Dist, torch.Generator]:
    """CPU threads, torchrun's process group and this rank's device, the global batch checked against the ranks,
    then the seeds: torch's own (the network's initial weights) and the generator every batch is drawn and
    augmented with (the same stream on every rank)."""
    set_threads(threads)
    dist = setup_distributed(resolve_device(device))
    dist.shard(batch_size, batch_setting)
    torch.manual_seed(seed)
    return dist, torch.Generator().manual_seed(seed)


def resume(store: ProjectStore, stage: str, dist: Dist, settings: dict, model: torch.nn.Module,
           opt: torch.optim.Optimizer, restart: bool, on_mismatch: str,
           defaults: dict | None = None) -> tuple[dict | None, str]:
    """The stage's checkpoint loaded into ``model`` and ``opt`` when it was made with the same ``settings``
    (:func:`pipeline.stages.models.resume_training`): (checkpoint or None, notice for the user). Rank 0 first: it
    may move a checkpoint of other settings aside; the others then load what it left."""
    return dist.main_first(lambda: resume_training(store, stage, settings, model, opt, restart, on_mismatch,
                                                   defaults=defaults))


@dataclass
class Loop:
    """One training's part of :func:`train`."""

    stage: str  # the checkpoint, run record and progress name
    what: str  # the network, in messages: "classifier", "segmentation"
    total: int  # optimiser steps of the whole run
    batch: Callable[[int], tuple[torch.Tensor, ...]]  # step -> the global batch, drawn and augmented
    loss: Callable[[torch.nn.Module, tuple[torch.Tensor, ...], int], torch.Tensor]  # (net, this rank's batch, step)
    # (steps done, loss history) -> what the checkpoint holds; None: the loop writes nothing (an update: its caller
    # decides whether the model is kept)
    checkpoint: Callable[[int, list], dict] | None
    checkpoint_every: int  # steps; and after the last one
    save_on_cancel: bool  # False where a checkpoint can only mark a whole epoch
    where: Callable[[int], str]  # step -> "epoch 3", "iteration 12" (for the user)
    message: Callable[[int], str | None]  # step -> the progress message after it, None: no progress then
    lr: float
    poly_power: float
    min_lr: float = 0.0
    loss_weight: float = 0.05  # of each step's loss in the running loss that progress and the record show
    rate: str = "it_per_s"  # or "samples_per_s" under another name, e.g. "patches_per_s"
    after_step: Callable[[int], None] | None = None  # e.g. the weight average's update


@dataclass
class Trained:
    """What :func:`train` did: the steps and samples of this run, its seconds, the running loss at the end and the
    global loss of every step so far (a resumed run's history continues the checkpoint's)."""

    steps: int
    samples: int
    seconds: float
    final_loss: float | None
    history: list[float | None] = field(default_factory=list)

    def per_second(self, count: int) -> float | None:
        return count / self.seconds if self.seconds > 0 else None


def train(store: ProjectStore, loop: Loop, dist: Dist, model: torch.nn.Module, opt: torch.optim.Optimizer,
          start: int = 0, notice: str = "", history: list[float | None] | None = None) -> Job[Trained]:
    """Steps ``start`` .. ``loop.total`` of a training. ``model`` is what the checkpoints save (the stage's
    ``checkpoint`` takes its own state); the step runs through its DDP wrapper under torchrun. ``notice`` (a
    checkpoint of other settings was moved aside) is told first."""
    if notice:
        log.info("%s", notice)
        yield Progress(loop.stage, 0, 0, "starting afresh", notice=notice)
    net = dist.wrap(model)
    history = list(history or [])
    t0 = time.perf_counter()
    loss_ema = None
    samples = 0
    done = start
    try:
        while done < loop.total:
            step = done
            batch = loop.batch(step)
            samples += len(batch[0])
            if dist.enabled:  # the whole global batch was drawn and augmented: keep this rank's slice
                batch = tuple(t[dist.rank::dist.world_size] for t in batch)
            for g in opt.param_groups:
                g["lr"] = poly_lr(loop.lr, step, loop.total, loop.poly_power, loop.min_lr)
            net.train()
            loss = loop.loss(net, batch, step)
            # the global batch's loss; a non-finite loss on any rank makes it non-finite on all, so all stop
            value = dist.all_reduce_mean(loss.item())
            if not np.isfinite(value):
                if loop.checkpoint is None:
                    raise OEEMError(f"the {loop.what} loss became {value} at {loop.where(step)}; stopped, nothing was "
                                    "changed: lower the learning rate (--lr) and run it again")
                raise OEEMError(f"the {loop.what} loss became {value} at {loop.where(step)}; stopped. The last good "
                                f"checkpoint is kept in {store.checkpoint_path(loop.stage)}: lower the learning "
                                "rate (--lr) and resume")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if loop.after_step is not None:
                loop.after_step(step)
            done += 1
            history.append(value)
            loss_ema = value if loss_ema is None else (1 - loop.loss_weight) * loss_ema + loop.loss_weight * value
            if loop.checkpoint is not None and (done % loop.checkpoint_every == 0 or done == loop.total):
                if dist.is_main:
                    store.save_checkpoint(loop.stage, loop.checkpoint(done, history))
                dist.barrier()  # no rank goes on (or resumes later) before the checkpoint is whole
            message = loop.message(step)
            if message is not None:
                elapsed = time.perf_counter() - t0
                rate = samples / elapsed if loop.rate != "it_per_s" else (done - start) / elapsed
                yield Progress(loop.stage, done, loop.total, message, {"loss": loss_ema, loop.rate: rate})
    except (GeneratorExit, KeyboardInterrupt):  # cancelled: keep what was learnt so far
        # no barrier: the other ranks may be gone
        if loop.checkpoint is not None and loop.save_on_cancel and done > start and dist.is_main:
            store.save_checkpoint(loop.stage, loop.checkpoint(done, history))
        raise
    return Trained(done - start, samples, time.perf_counter() - t0, loss_ema, history)
