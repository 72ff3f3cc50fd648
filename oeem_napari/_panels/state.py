"""The one object the dock's panels share: the viewer, the open project, the image shown and its correction keeper,
the running job and the configuration the next job runs with. Panels act through it and redraw themselves from its
signals, so none of them needs to know another."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from oeem_napari import _layers
from oeem_napari._corrections import CorrectionKeeper
from oeem_napari._jobs import JobRunner
from oeem_napari._panels.stages import JOB_LABELS, make_job, summary
from pipeline.config import PipelineConfig, apply_overrides
from pipeline.errors import OEEMError
from pipeline.store import ProjectStore
from pipeline.store.lock import holding_writer

# The one job that gives way: any job asked for while it runs stops it (its last chunk's checkpoint kept) and starts
# then; after a job other than a stage it starts again (DockState.start)
LIVE_JOB = "Training while tagging"


class RunSettings(Protocol):
    """What the settings panel tells the state: the chosen preset, every setting, the device, and what the chosen
    prediction (fast, as set, best) overrides."""

    def preset(self) -> str: ...
    def values(self) -> dict[str, Any]: ...
    def device(self) -> str: ...
    def prediction(self) -> dict[str, Any]: ...


class DockState(QObject):
    opened = Signal()  # a project was opened: ``store`` is new
    shown = Signal(str)  # the layers of this image are in the viewer (``current``)
    changed = Signal()  # the project's images or corrections changed (counts to redraw)
    busy = Signal(bool)  # a job started (True) or ended (False)
    started = Signal(str)  # the label of the job that started
    progressed = Signal(object)  # pipeline.progress.Progress of the running job
    finished = Signal(str)  # "done", "cancelled" or "failed", before the job's follow-up runs
    live_resumed = Signal()  # a job that stopped the training while tagging has ended: start it again

    def __init__(self, viewer, parent: QObject | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.store: ProjectStore | None = None
        self.current: str | None = None
        self.keeper: CorrectionKeeper | None = None
        self.settings: RunSettings | None = None  # the settings panel registers itself
        self.top = 10  # ranked regions outlined per image
        self.model = None  # a model file loaded in the Model file box (pipeline.stages.model_file.TrainedModel)
        self.last_result = None
        self.budget_s: float | None = None  # Run all's time budget (the Run box's Budget field; None: off)
        self.runner = JobRunner(self)
        self.runner.progressed.connect(self.progressed)
        self.runner.finished.connect(lambda ok, result: self._on_job_finished(self._running, ok, result))
        self.started.connect(self._started)
        self._running = ""
        self._after = None
        self._queued: tuple | None = None  # (label, job, after, resume): to start once the live training stopped
        self._resume_live = False  # the running job stopped the training while tagging, which starts again after

    # ------------------------------------------------------------------ project and image
    def open(self, path: str | Path) -> bool:
        """Open a project (a notification and no change when it cannot be), show its first training image."""
        try:
            store = ProjectStore.open(path)
        except OEEMError as exc:
            show_error(str(exc))
            return False
        self.release_keeper()
        if self.runner.label == LIVE_JOB:  # it trains the project closed: stopped, its checkpoint kept
            self.drop_live_resume()
            self.cancel()
        self.store, self.current = store, None
        self.opened.emit()
        first = store.names("train")[:1] or store.names()[:1]
        if first:
            self.show(first[0])
        self.changed.emit()
        return True

    def show(self, name: str) -> None:
        """The layers of image ``name``; its pseudo-mask is editable and every stroke saved."""
        self.release_keeper()
        self.current = name
        _layers.show_image(self.viewer, self.store, name, self.top)
        if _layers.PSEUDO in self.viewer.layers:
            self.keeper = CorrectionKeeper(self.store, name, self.viewer.layers[_layers.PSEUDO],
                                           on_saved=self.changed.emit)
        self.shown.emit(name)

    def reshow(self) -> None:
        if self.store and self.current:
            self.show(self.current)

    def release_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.disconnect()
            self.keeper = None

    def flush(self) -> None:
        """Save pending strokes now (before a job, an export, a review step reads the labels)."""
        if self.keeper is not None:
            self.keeper.flush()

    # ------------------------------------------------------------------ configuration
    def config(self, save: bool = True) -> PipelineConfig:
        """``save=False``: what the project holds. Else the settings form's values: checked, saved with the
        project, and returned (raises OEEMError for a bad value)."""
        from pipeline.store.project import project_config

        if not save or self.settings is None:
            return project_config(self.store, None, None, save=False)
        return project_config(self.store, self.settings.preset(), self.settings.values(), save=True)

    def run_config(self) -> PipelineConfig:
        """The configuration a job runs with: the saved one, with the chosen prediction's (*fast*: one scale; *best*:
        all 8 orientations)."""
        cfg = self.config()
        if self.settings is not None:
            apply_overrides(cfg, self.settings.prediction())
        return cfg

    def model_config(self, trained) -> PipelineConfig:
        """The configuration a loaded model file predicts with (:func:`pipeline.stages.model_file.model_config`):
        the dock's settings other than the prediction's, which are the model's, changed as the chosen prediction says
        (*fast*: one scale; *best*: all 8 orientations)."""
        from pipeline.stages.model_file import model_config

        if self.settings is None:
            return model_config(trained)
        overrides = {k: v for k, v in self.settings.values().items() if not k.startswith("inference.")}
        overrides.update(self.settings.prediction())
        return model_config(trained, self.settings.preset(), overrides)

    def device(self) -> str:
        return self.settings.device() if self.settings is not None else "auto"

    # ------------------------------------------------------------------ jobs
    def run_stage(self, stage: str):
        """Start a stage in the background; returns the worker (None if it could not start). The training while
        tagging gives way to it for good: the stage continues from its checkpoint."""
        if self.store is None:
            show_error("open or create a project first")
            return None
        self.flush()  # the next training run must see the latest strokes
        try:
            job = make_job(stage, self.store, self.run_config(), self.device(), budget_s=self.budget_s)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        # one writer per project: a CLI run on the same project makes this job stop at once with who holds it
        label = JOB_LABELS[stage]
        return self.start(label, holding_writer(self.store.path, f"napari: {label}", job), resume_live=False)

    def start(self, label: str, job, after=None, resume_live: bool = True):
        """Run ``job`` in the background; ``after(ok, result)`` replaces the default follow-up (show what the job
        wrote). While the training while tagging runs, it stops (its last chunk's checkpoint kept), the job runs,
        and with ``resume_live`` the training starts again after it (``live_resumed``); the returned worker is then
        the training's, the job's own starts when it has stopped."""
        if self.runner.label == LIVE_JOB:
            if self._queued and self._queued[0] != LIVE_JOB:
                show_error(f"'{self._queued[0]}' starts as soon as the training while tagging has stopped; "
                           "wait for it")
                return None
            self._queued = (label, job, after, resume_live and label != LIVE_JOB)
            self.cancel()
            return self.runner.worker
        try:
            worker = self.runner.start(label, job)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        self._after = after
        if label != LIVE_JOB:  # the training while tagging blocks no button: any job makes it give way
            self.busy.emit(True)
        self.started.emit(label)
        return worker

    def _started(self, label: str) -> None:
        self._running = label

    def pending(self) -> str:
        """The label of the job waiting for the training while tagging to stop ("" when none)."""
        return self._queued[0] if self._queued else ""

    def resumes_live(self) -> bool:
        """Whether the training while tagging starts again after the job that stopped it."""
        return bool(self._queued and self._queued[3]) or self._resume_live

    def drop_live_resume(self) -> None:
        """The switch went off while a job had paused the training: it does not start again."""
        self._resume_live = False
        if self._queued:
            self._queued = (*self._queued[:3], False)

    def cancel(self) -> None:
        self.runner.cancel()

    def _on_job_finished(self, label: str, ok: bool, result) -> None:
        if label != LIVE_JOB:
            self.busy.emit(False)
        self.last_result = result if ok else None
        self.finished.emit("done" if ok else ("cancelled" if self.runner.cancelled else "failed"))
        after, self._after = self._after, None
        resume, self._resume_live = self._resume_live, False
        if after is not None:  # before the queued job leaves: the training's follow-up asks what waits
            after(ok, result)
        elif self.store and self.current:
            self.show(self.current)  # what the job wrote
            self.changed.emit()
        if ok and isinstance(result, dict) and "mIoU" in str(result)[:2000]:
            show_info(summary(result))
        queued, self._queued = self._queued, None
        if queued is not None:
            label, job, after, self._resume_live = queued
            self.start(label, job, after)
        elif resume and self.store is not None:
            self.live_resumed.emit()

    def shutdown(self) -> None:
        """Stop a running job (its checkpoint is kept) and save pending strokes; napari is closing."""
        self.flush()
        self.runner.shutdown()
