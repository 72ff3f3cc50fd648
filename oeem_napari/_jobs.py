"""Running pipeline stages off the GUI thread with progress, cancel and notifications.

A pipeline stage is a generator of ``Progress``; napari's generator worker drives it in a thread. Cancelling asks
the worker to stop at the next step, then closes the stage generator, which raises ``GeneratorExit`` at its
``yield`` so the stage keeps its last checkpoint.
"""
from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QThreadPool, Signal

from pipeline.errors import OEEMError
from pipeline.progress import Progress

log = logging.getLogger("oeem_napari")


def _drive(job):
    """The worker's generator: forwards the stage's progress and returns its result."""
    return (yield from job)


def error_message(exc: BaseException) -> str:
    if isinstance(exc, OEEMError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (details in the log)"


class JobRunner(QObject):
    """At most one job at a time; emits ``progressed`` and ``finished(ok: bool, result)`` in the GUI thread."""

    progressed = Signal(object)
    finished = Signal(bool, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.worker = None
        self._job = None
        self._pbar = None
        self._label = ""
        self.cancelled = False

    @property
    def busy(self) -> bool:
        return self.worker is not None

    @property
    def label(self) -> str:
        """The running job's label ("" when none runs)."""
        return self._label if self.busy else ""

    def start(self, label: str, job) -> Any:
        if self.busy:
            raise OEEMError(f"'{self._label}' is still running; wait for it or cancel it first")
        self._label = label
        self._job = job
        self.cancelled = False
        # errors: one notification from `_on_errored`, not also napari's traceback of an uncaught exception
        worker = create_worker(_drive, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._pbar = napari_progress(total=0, desc=label)
        worker.start()
        return worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def shutdown(self, msecs: int = 30_000) -> None:
        """Stop the running job and wait for it (used when napari closes), so the store stays valid."""
        if self.worker is None:
            return
        self.worker.quit()
        QThreadPool.globalInstance().waitForDone(msecs)
        self._close_job()

    # --- signal handlers, in the GUI thread
    def _on_progress(self, p: Progress) -> None:
        if self.worker is None:
            return  # a queued update that arrived after the job finished
        self.progressed.emit(p)  # first: updating napari's bar below may run a nested `finished`
        if p.notice:
            show_info(p.notice)
        # A local reference: a nested `finished` clears `self._pbar`.
        pbar = self._pbar
        if pbar is not None:
            if pbar.total != p.total:
                pbar.total = p.total
            pbar.n = p.step
            metrics = " ".join(f"{k}={v:.3g}" for k, v in p.metrics.items())
            pbar.set_description(f"{self._label}: {p.message} {metrics}".strip())
            pbar.refresh()

    def _on_returned(self, result) -> None:
        self._result = (True, result)

    def _on_errored(self, exc: BaseException) -> None:
        log.error("job %r failed:\n%s", self._label, "".join(traceback.format_exception(exc)))
        show_error(f"{self._label} failed: {error_message(exc)}")
        self._result = (False, exc)

    def _on_aborted(self) -> None:
        self._result = (False, None)
        show_info(f"{self._label} cancelled; the last checkpoint is kept")

    def _close_job(self) -> None:
        if self._job is not None:
            try:
                self._job.close()  # GeneratorExit at the stage's yield: it saves its checkpoint
            except Exception as exc:  # noqa: BLE001
                log.error("closing %r: %s", self._label, exc)
            self._job = None

    def _on_finished(self) -> None:
        self._close_job()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        ok, result = getattr(self, "_result", (False, None))
        self._result = (False, None)
        self.worker = None
        self.finished.emit(ok, result)


def run_step(label: str, fn: Callable[[], Any]):
    """A quick, non-generator step shaped as a job (one progress event), so every action runs the same way."""
    yield Progress(label, 0, 1, "")
    result = fn()
    yield Progress(label, 1, 1, "")
    return result
