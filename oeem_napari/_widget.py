"""The OEEM dock: open a project, run the stages in the background, browse images and confusing regions,
correct pseudo-masks (auto-saved), export. All computation is in ``pipeline``; this is only the interface.

The dock is a column of panels (``oeem_napari._panels``), one per group box, sharing one ``DockState``; it scrolls,
so it fits any screen. Its methods below are the dock's public face (scripts, tests, the docs) and hand over to the
panel that does the work."""
from __future__ import annotations

from pathlib import Path

import napari
from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from oeem_napari._panels.corrections import CorrectionsPanel
from oeem_napari._panels.export import ExportPanel
from oeem_napari._panels.glands import GlandsPanel
from oeem_napari._panels.model import ModelPanel
from oeem_napari._panels.project import ProjectPanel
from oeem_napari._panels.review import ReviewPanel
from oeem_napari._panels.run import RunPanel
from oeem_napari._panels.settings import SettingsPanel
from oeem_napari._panels.slides import SlidesPanel
from oeem_napari._panels.state import DockState
from oeem_napari._panels.weak_labels import WeakLabelsPanel


class PanelColumn(QScrollArea):
    """The panels, one under the other, scrolling: as wide as they need, never taller than the screen allows."""

    def __init__(self, panels):
        super().__init__()
        column = QWidget()
        lay = QVBoxLayout(column)
        lay.setContentsMargins(0, 0, 0, 0)
        for panel in panels:
            lay.addWidget(panel)
        lay.addStretch()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(column)
        column.installEventFilter(self)

    def _width(self, inner: int) -> int:
        return inner + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(self._width(self.widget().minimumSizeHint().width()), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(self._width(self.widget().sizeHint().width()), super().sizeHint().height())

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt name
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # a panel (un)folded or restyled: the width it needs may have changed
        return super().eventFilter(obj, event)


class OEEMWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.state = DockState(napari_viewer, self)
        self.project = ProjectPanel(self.state)
        self.weak_labels = WeakLabelsPanel(self.state)
        self.settings_panel = SettingsPanel(self.state)
        self.run = RunPanel(self.state)
        self.corrections = CorrectionsPanel(self.state)
        self.review = ReviewPanel(self.state)
        self.glands = GlandsPanel(self.state)
        self.export_panel = ExportPanel(self.state)
        self.model_panel = ModelPanel(self.state)
        self.slides = SlidesPanel(self.state)
        self.panels = (self.project, self.weak_labels, self.settings_panel, self.run, self.corrections, self.review,
                       self.glands, self.export_panel, self.model_panel, self.slides)
        self._layout()
        self._alias_widgets()
        self._watching_window = False
        self.state.started.connect(self._watch_main_window)

    def _layout(self) -> None:
        # the panels scroll: the dock never asks napari's window to be taller than the screen
        self.scroll = PanelColumn(self.panels)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.scroll)

    def _alias_widgets(self) -> None:
        """The widgets scripts and tests reach, by the names they had when the dock was one class."""
        p, s, r, v, x, w = (self.project, self.settings_panel, self.run, self.review, self.export_panel,
                            self.slides)
        self.path_edit, self.image_combo, self.info_label = p.path_edit, p.image_combo, p.info_label
        self.preset_combo, self.device_combo, self.predict_combo = s.preset_combo, s.device_combo, s.predict_combo
        self.settings = s.form  # every setting: .fields, .values(), .set_values(cfg)
        self.loss_combo = s.field("segmentation.loss")
        self.labels_combo = s.field("segmentation.label_source")
        self.epochs_spin = s.field("classifier.epochs")
        self.iter_spin = s.field("segmentation.iterations")
        self.stage_buttons, self.progress_bar = r.stage_buttons, r.progress_bar
        self.status_label, self.cancel_btn = r.status_label, r.cancel_btn
        self.undo_btn, self.corrections_label = self.corrections.undo_btn, self.corrections.corrections_label
        self.rank_btn, self.top_spin, self.review_label = v.rank_btn, v.top_spin, v.review_label
        self.region_table = v.region_table
        self.format_combo, self.source_combo = x.format_combo, x.source_combo
        self.slide_mpp_spin, self.predict_slide_btn = w.slide_mpp_spin, w.predict_slide_btn
        self.region_label_combo = w.region_label_combo

    # ------------------------------------------------------------------ the state, read through
    @property
    def viewer(self) -> napari.viewer.Viewer:
        return self.state.viewer

    @property
    def store(self):
        return self.state.store

    @property
    def current(self) -> str | None:
        return self.state.current

    @property
    def keeper(self):
        return self.state.keeper

    @property
    def runner(self):
        return self.state.runner

    @property
    def last_result(self):
        return self.state.last_result

    @property
    def regions(self) -> list:
        return self.review.regions

    # ------------------------------------------------------------------ project, settings, jobs
    def open_project(self, path: str | Path) -> bool:
        return self.project.open_project(path)

    def create_project(self, data: str, target: str):
        return self.project.create_project(data, target)

    def set_image(self, name: str) -> None:
        self.state.show(name)

    def _config(self, save: bool = True):
        return self.state.config(save)

    def run_stage(self, stage: str):
        """Start a stage (a key of ``_panels.stages.JOB_LABELS``) in the background; the worker, or None if it
        could not start."""
        return self.state.run_stage(stage)

    def cancel(self) -> None:
        self.state.cancel()

    # ------------------------------------------------------------------ corrections and label review
    def undo(self) -> None:
        self.corrections.undo()

    def zoom_to_region(self, row: int) -> None:
        self.review.zoom_to_region(row)

    def accept_region(self) -> dict | None:
        return self.review.accept_region()

    def skip_region(self) -> None:
        self.review.skip_region()

    def next_region(self) -> None:
        self.review.next_region()

    def undo_review(self) -> None:
        self.review.undo_review()

    # ------------------------------------------------------------------ export and whole slides
    def export(self, folder: str, fmt: str | None = None, source: str | None = None) -> list[Path]:
        return self.export_panel.export(folder, fmt, source)

    def import_geojson(self, path: str, image: str | None = None) -> dict | None:
        return self.export_panel.import_geojson(path, image)

    def load_model(self, path: str | Path):
        return self.model_panel.load_model(path)

    def predict_shown_images(self):
        return self.model_panel.predict_shown_images()

    def open_slide(self, path: str | Path):
        return self.slides.open_slide(path)

    def predict_slide(self, with_model: bool = False):
        return self.slides.predict_slide(with_model)

    def add_drawn_regions(self) -> list[str]:
        return self.slides.add_drawn_regions()

    # ------------------------------------------------------------------ closing
    def showEvent(self, event) -> None:  # noqa: N802 - Qt name
        self._watch_main_window()
        super().showEvent(event)

    def _watch_main_window(self, *_args) -> None:
        """Once docked, watch napari's main window so a running job stops cleanly when napari closes."""
        if not self._watching_window and self.window() is not self:
            self.window().installEventFilter(self)
            self._watching_window = True

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt name
        if event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def shutdown(self) -> None:
        """Stop a running job (its checkpoint is kept) and save pending strokes; napari is closing."""
        self.weak_labels.shutdown()
        self.state.shutdown()
