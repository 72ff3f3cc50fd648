"""Prediction on a ``dask.distributed`` cluster: a slide's blocks, or ``oeem predict-images``' images, are the tasks;
each worker loads the model once.

Only imported when ``--scheduler`` is given, so dask.distributed stays an optional dependency.
"""
from __future__ import annotations

from pathlib import Path

from distributed import Client, WorkerPlugin, as_completed, get_worker

from pipeline.device import resolve_device
from pipeline.errors import OEEMError
from pipeline.slides.blocks import SlideJob, write_blocks


class ModelPlugin(WorkerPlugin):
    """A dask worker plugin: each worker loads the model once (not once per task) and keeps one thread count."""

    name = "oeem-model"

    def __init__(self, checkpoint: str, device: str = "auto"):
        self.checkpoint = checkpoint
        self.device = device
        self.model = None
        self.seg_cfg = None

    def setup(self, worker) -> None:
        import torch

        from pipeline.stages.model_file import load_network

        torch.set_num_threads(max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
        self.dev = resolve_device(self.device)
        self.model, self.seg_cfg = load_network(Path(self.checkpoint), self.dev)

    def teardown(self, worker) -> None:
        self.model = None


def _cluster_task(job: SlideJob, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    plugin = get_worker().plugins[ModelPlugin.name]
    return write_blocks(job, plugin.model, plugin.seg_cfg, blocks, plugin.dev)


def connect(scheduler: str, timeout: float = 10.0):
    """A client of the cluster at ``scheduler``; one line, never a hang, when nothing answers."""
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise OEEMError(f"no dask scheduler answered at {scheduler} within {timeout:g} s ({type(exc).__name__}); "
                        "start one with `dask scheduler` and workers with `dask worker ADDRESS`, or leave out "
                        "--scheduler to predict here") from None


def run_on_cluster(client: Client, job: SlideJob, checkpoint: Path, todo: list[tuple[int, int]],
                    per_task: int, device: str):
    """Yield lists of finished blocks as the cluster's tasks finish. A task lost with its worker is run again
    by the scheduler (blocks are idempotent); a task that fails is retried twice, then the error is told."""
    futures = []
    try:
        client.register_plugin(ModelPlugin(str(checkpoint), device), name=ModelPlugin.name)
        batches = [todo[i:i + per_task] for i in range(0, len(todo), per_task)]
        futures = [client.submit(_cluster_task, job, b, pure=False, retries=2) for b in batches]
        # this client's loop, not the default client's: a process may hold another client (a notebook's, a
        # test's), and futures waited on from another client's loop fail at random ("bound to a different loop")
        for fut in as_completed(futures, loop=client.loop):
            try:
                yield fut.result()
            except OEEMError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker error, after the scheduler's retries
                raise OEEMError(f"a cluster task failed after 2 retries ({type(exc).__name__}: {exc}); the blocks "
                                "written so far are kept - run the same command again to resume") from None
    finally:
        if futures:
            client.cancel(futures)


class TrainedModelPlugin(WorkerPlugin):
    """A dask worker plugin for ``oeem predict-images``: each worker opens the model file (or project) once."""

    name = "oeem-trained-model"

    def __init__(self, source: str, inference: dict, device: str = "auto"):
        self.source, self.inference, self.device = source, inference, device
        self.trained = None

    def setup(self, worker) -> None:
        import torch

        from pipeline.config import InferConfig, from_dict
        from pipeline.stages.model_file import open_model

        torch.set_num_threads(max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
        self.dev = resolve_device(self.device)
        self.trained = open_model(self.source, self.dev)
        self.trained.inference = from_dict(InferConfig, self.inference)  # the settings the client asked for

    def teardown(self, worker) -> None:
        self.trained = None


def worker_model():
    """(trained model, device) of the worker running the current task."""
    plugin = get_worker().plugins[TrainedModelPlugin.name]
    return plugin.trained, plugin.dev


def predict_images_on_cluster(client: Client, source: str, inference: dict, todo: list[tuple[Path, Path]],
                              mpp: float | None, device: str, task):
    """Yield (image, target, record entry) as the cluster's workers finish images: ``task(image, target, mpp)``
    per image (it takes its model from :func:`worker_model`), retried twice; a failure after that is one line, the
    images written so far kept."""
    futures = {}
    try:
        client.register_plugin(TrainedModelPlugin(source, inference, device), name=TrainedModelPlugin.name)
        futures = {client.submit(task, str(i), str(t), mpp, pure=False, retries=2): (i, t) for i, t in todo}
        for fut in as_completed(list(futures), loop=client.loop):
            try:
                entry = fut.result()
            except OEEMError:
                raise
            except Exception as exc:  # noqa: BLE001 - a worker error, after the scheduler's retries
                raise OEEMError(f"a cluster task failed after 2 retries ({type(exc).__name__}: {exc}); the masks "
                                "written so far are kept - run the same command again to resume") from None
            yield (*futures[fut], entry)
    finally:
        if futures:
            client.cancel(list(futures))
