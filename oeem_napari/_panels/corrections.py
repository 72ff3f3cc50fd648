"""Corrections box: how much has been painted, and undo of the last stroke (strokes save themselves)."""
from __future__ import annotations

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton

from oeem_napari import _layers
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState


class CorrectionsPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Corrections", unfolded=True)
        self.state = state
        row = self.body_layout(QHBoxLayout)
        self.undo_btn = QPushButton("Undo last correction")
        self.undo_btn.clicked.connect(self.undo)
        self.corrections_label = QLabel("")
        row.addWidget(self.undo_btn)
        row.addWidget(self.corrections_label, 1)
        state.changed.connect(self._on_changed)

    def undo(self) -> None:
        state = self.state
        if not (state.store and state.current and state.keeper):
            return
        state.keeper.flush()
        if state.store.undo_correction(state.current):
            state.keeper.reload(_layers.editable_labels(state.store, state.current))
            state.changed.emit()
            show_info(f"{state.current}: last correction undone")
        else:
            show_info(f"{state.current}: no correction to undo")

    def _on_changed(self) -> None:
        if self.state.store is not None:
            s = self.state.store.correction_summary()
            self.corrections_label.setText(f"{s['pixels']:,} px corrected in {s['images']} image(s)")
