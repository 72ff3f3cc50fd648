"""Corrections box: how much has been painted, undo of the last stroke (strokes save themselves), and *Update
model*: the model fine-tuned on the changes in about a minute, the image re-predicted, before / after one click
apart, and the update revertible."""
from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QCheckBox, QGridLayout, QLabel, QPushButton

from oeem_napari import _layers
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState


class CorrectionsPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Corrections", unfolded=True)
        self.state = state
        grid = self.body_layout(QGridLayout)
        self.undo_btn = QPushButton("Undo last correction")
        self.undo_btn.clicked.connect(self.undo)
        self.corrections_label = QLabel("")
        self.update_btn = QPushButton("Update model")
        self.update_btn.setToolTip("fine-tune the segmentation model on the images corrected or tagged since it was "
                                   "trained (about a minute on 2 cores), then re-predict this image; the model "
                                   "from before is kept")
        self.update_btn.clicked.connect(self.update_model)
        self.revert_btn = QPushButton("Revert update")
        self.revert_btn.setToolTip("put back the model from before the last update and re-predict this image")
        self.revert_btn.clicked.connect(self.revert)
        self.before_box = QCheckBox("show before update")
        self.before_box.setToolTip("the prediction as it was before the last update, in place of the new one")
        self.before_box.toggled.connect(self._show_before)
        self.before_box.setEnabled(False)
        grid.addWidget(self.undo_btn, 0, 0)
        grid.addWidget(self.corrections_label, 0, 1)
        grid.addWidget(self.update_btn, 1, 0)
        grid.addWidget(self.revert_btn, 1, 1)
        grid.addWidget(self.before_box, 2, 0, 1, 2)
        state.changed.connect(self._on_changed)
        state.shown.connect(lambda _name: self._reset_before())
        state.busy.connect(self._set_busy)

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

    # ------------------------------------------------------------------ Update model
    def _set_busy(self, busy: bool) -> None:
        self.update_btn.setEnabled(not busy)
        self.revert_btn.setEnabled(not busy)

    def _reset_before(self) -> None:
        """A new image (or the same one redrawn): its before layer is gone, so the toggle starts off."""
        has = _layers.BEFORE_UPDATE in self.state.viewer.layers
        self.before_box.blockSignals(True)
        self.before_box.setChecked(False)
        self.before_box.blockSignals(False)
        self.before_box.setEnabled(has)

    def update_model(self):
        """Fine-tune on what changed and re-predict the image on screen (a background job; Cancel keeps the
        model as it was). Returns the worker, None when it could not start."""
        from pipeline.errors import OEEMError
        from pipeline.stages.update import update_model
        from pipeline.store.lock import holding_writer

        state = self.state
        if not (state.store and state.current):
            show_error("open a project first")
            return None
        state.flush()  # the update must see the latest strokes
        name, store = state.current, state.store
        before = store.read(name, "prediction") if store.has(name, "prediction") else None
        try:
            job = update_model(store, state.run_config(), state.device(), predict_names=[name])
        except OEEMError as exc:
            show_error(str(exc))
            return None

        def after(ok: bool, result) -> None:
            state.show(name)
            state.changed.emit()
            if not ok:
                return
            if not result["kept"]:
                show_info(f"update not kept: {result['verdict']}")
                return
            self._show_result(name, before)
            show_info(f"model updated on {len(result['images'])} changed image(s) in {result['seconds']:.0f} s: "
                      f"{result['verdict']}; the model from before is kept (Revert update)")

        return state.start("Update model", holding_writer(store.path, "napari: Update model", job), after=after)

    def revert(self):
        """Put the model from before the last update back and re-predict the image on screen."""
        from pipeline.stages.update import revert_update
        from pipeline.store.lock import holding_writer

        state = self.state
        if not (state.store and state.current):
            show_error("open a project first")
            return None
        name, store, cfg = state.current, state.store, state.run_config()
        before = store.read(name, "prediction") if store.has(name, "prediction") else None

        def after(ok: bool, result) -> None:
            state.show(name)
            state.changed.emit()
            if ok:
                self._show_result(name, before)
                show_info(f"reverted to the model kept {result['saved_at']} ({result['why']})")

        job = revert_update(store, cfg, state.device(), [name])
        return state.start("Revert update", holding_writer(store.path, "napari: Revert update", job), after=after)

    def _show_result(self, name: str, before: np.ndarray | None) -> None:
        """The new prediction shown; the one it replaced as a hidden layer the toggle swaps in."""
        viewer = self.state.viewer
        if _layers.PREDICTION in viewer.layers:
            viewer.layers[_layers.PREDICTION].visible = True
        if before is not None:
            viewer.add_labels(before, name=_layers.BEFORE_UPDATE, opacity=0.5, visible=False,
                              colormap=_layers.label_colormap(_layers.BEFORE_UPDATE))
            viewer.layers[_layers.BEFORE_UPDATE].editable = False
            if _layers.PSEUDO in viewer.layers:  # painting goes on where it was
                viewer.layers.selection.active = viewer.layers[_layers.PSEUDO]
        self._reset_before()

    def _show_before(self, on: bool) -> None:
        layers = self.state.viewer.layers
        if _layers.BEFORE_UPDATE in layers:
            layers[_layers.BEFORE_UPDATE].visible = on
        if _layers.PREDICTION in layers:
            layers[_layers.PREDICTION].visible = not on
