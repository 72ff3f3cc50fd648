"""Glands box: the prediction's glands as objects, and the two edits a pathologist needs when the separation got
one wrong - split a gland along a line drawn across it, merge the glands under the cursor. Each edit is saved in
the project at once (``pipeline.stages.instances.save_edited_instances``) and exports keep it."""
from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton

from oeem_napari import _layers
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from pipeline.errors import OEEMError


class GlandsPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Glands")
        self.state = state
        grid = self.body_layout(QGridLayout)
        self.cut_btn = QPushButton("Draw a cut")
        self.cut_btn.setToolTip("draw a line across a gland (click its points, double-click to end), then Split "
                                "along lines (or press X)")
        self.cut_btn.clicked.connect(self.draw_cut)
        self.split_btn = QPushButton("Split along lines")
        self.split_btn.clicked.connect(self.split)
        self.merge_btn = QPushButton("Merge under cursor")
        self.merge_btn.setToolTip("hold the cursor on the border of two glands and press M: they become one")
        self.merge_btn.clicked.connect(self.merge)
        self.count_label = QLabel("")
        grid.addWidget(self.cut_btn, 0, 0)
        grid.addWidget(self.split_btn, 0, 1)
        grid.addWidget(self.merge_btn, 1, 0)
        grid.addWidget(self.count_label, 1, 1)
        state.shown.connect(self._on_shown)
        state.busy.connect(lambda busy: [b.setEnabled(not busy) for b in (self.split_btn, self.merge_btn)])

    def _layer(self):
        return self.state.viewer.layers[_layers.GLANDS] if _layers.GLANDS in self.state.viewer.layers else None

    def _on_shown(self, _name: str) -> None:
        layer = self._layer()
        self._count()
        if layer is None:
            return
        layer.bind_key("m", lambda _layer: self.merge(), overwrite=True)
        layer.bind_key("x", lambda _layer: self.split(), overwrite=True)

    def _count(self) -> None:
        layer = self._layer()
        n = 0 if layer is None else len(np.unique(np.asarray(layer.data)[np.asarray(layer.data) > 0]))
        self.count_label.setText(f"{n} gland{'' if n == 1 else 's'}" if layer is not None else
                                 "no glands yet: Predict")

    def draw_cut(self) -> None:
        """A path layer to draw the cut on, over the glands (made once per image, kept for the next cut)."""
        viewer = self.state.viewer
        if self._layer() is None:
            show_error("no glands on this image yet: run Predict (or Separate glands) first")
            return
        layer = self._layer()
        layer.visible = True
        if _layers.CUTS not in viewer.layers:
            cuts = viewer.add_shapes(name=_layers.CUTS, edge_color="red", edge_width=2, face_color="transparent")
            cuts.bind_key("x", lambda _layer: self.split(), overwrite=True)
        cuts = viewer.layers[_layers.CUTS]
        viewer.layers.selection.active = cuts
        cuts.mode = "add_path"

    def split(self) -> list[int]:
        """Split the glands every drawn line crosses; the lines are used up. Returns the ids made."""
        from pipeline.stages.instances import split_along

        layer, viewer = self._layer(), self.state.viewer
        if layer is None or _layers.CUTS not in viewer.layers or not len(viewer.layers[_layers.CUTS].data):
            show_error("draw a line across the gland first (Draw a cut)")
            return []
        cuts = viewer.layers[_layers.CUTS]
        ids, made = np.asarray(layer.data), []
        try:
            for line in cuts.data:
                ids, new = split_along(ids, np.asarray(line)[:, -2:])
                made += new
        except OEEMError as exc:
            show_error(str(exc))
            return []
        cuts.data = []
        if not made:
            show_info("the line crosses no gland from side to side: nothing split")
            return []
        self._save(ids, f"split into {len(made) + 1} glands" if len(made) == 1 else f"{len(made)} glands made")
        return made

    def merge(self) -> list[int]:
        """Merge the glands within a few pixels of the cursor. Returns the ids merged."""
        from pipeline.stages.instances import merge_at

        layer = self._layer()
        if layer is None:
            show_error("no glands on this image yet: run Predict (or Separate glands) first")
            return []
        point = layer.world_to_data(self.state.viewer.cursor.position)[-2:]
        ids, merged = merge_at(np.asarray(layer.data), point)
        if not merged:
            show_info("put the cursor on the border between two glands to merge them")
            return []
        self._save(ids, f"glands {', '.join(map(str, merged))} merged")
        return merged

    def _save(self, ids: np.ndarray, what: str) -> None:
        from pipeline.stages.instances import save_edited_instances

        state = self.state
        try:
            save_edited_instances(state.store, state.current, ids)
        except OEEMError as exc:
            show_error(str(exc))
            return
        self._layer().data = ids
        self._count()
        show_info(f"{state.current}: {what} (saved)")
