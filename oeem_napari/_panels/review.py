"""Label review box: the ranked regions whose pseudo-label is probably wrong, of the image shown, to accept (fill
with the suggested label), skip, or take back; with keys on the project's layers and on this box."""
from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from oeem_napari import _layers
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from pipeline.errors import OEEMError

# (header, its tooltip): short headers, so the table reads in a narrow dock
COLUMNS = (("suggested", "the label the region probably should have (accept fills it with this)"),
           ("wrong px", "expected wrong pixels: the region's area × the probability its pseudo-label is wrong"),
           ("area px", "the region's area in pixels"),
           ("review", "accepted or skipped; empty: not reviewed yet"))
KEYS = ("Shift-A", "Shift-S", "Shift-N", "Shift-U")  # accept, skip, next, undo review (napari's key names)


class ReviewPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Label review: regions whose pseudo-label is probably wrong", unfolded=True)
        self.state = state
        self.regions: list = []
        lay = self.body_layout(QVBoxLayout)
        row = QHBoxLayout()
        self.rank_btn = QPushButton("Rank regions")
        self.rank_btn.setToolTip("out-of-fold evidence + CAM margin, calibrated on the validation split "
                                 "(`oeem regions`); a few minutes")
        self.rank_btn.clicked.connect(lambda: state.run_stage("rank"))
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 200)
        self.top_spin.setValue(state.top)
        self.top_spin.setPrefix("show top ")
        self.top_spin.setSuffix(" per image")
        self.top_spin.valueChanged.connect(self._on_top_changed)
        row.addWidget(self.rank_btn)
        row.addWidget(self.top_spin)
        lay.addLayout(row)
        self.review_label = QLabel("no ranking yet")
        self.review_label.setWordWrap(True)
        lay.addWidget(self.review_label)
        self.region_table = QTableWidget(0, len(COLUMNS))
        for col, (text, tip) in enumerate(COLUMNS):
            item = QTableWidgetItem(text)
            item.setToolTip(tip)
            self.region_table.setHorizontalHeaderItem(col, item)
        header = self.region_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.region_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.region_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.region_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.region_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.region_table.setMinimumHeight(160)
        self.region_table.cellClicked.connect(lambda row, _col: self.zoom_to_region(row))
        lay.addWidget(self.region_table)
        row = QHBoxLayout()
        self.actions = dict(zip(KEYS, (self.accept_region, self.skip_region, self.next_region, self.undo_review)))
        for text, key in zip(("Accept", "Skip", "Next", "Undo review"), KEYS):
            btn = QPushButton(f"{text} ({key})")
            btn.clicked.connect(lambda _=False, k=key: self.actions[k]())
            row.addWidget(btn)
            # on this box: the keys work while it has the focus (after clicking a row), not while typing elsewhere
            shortcut = QShortcut(QKeySequence(key.replace("-", "+")), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda k=key: self.actions[k]())
        lay.addLayout(row)
        state.shown.connect(self._on_shown)
        state.busy.connect(lambda busy: self.rank_btn.setEnabled(not busy))

    # ------------------------------------------------------------------ from the state
    def _on_shown(self, _name: str) -> None:
        self.bind_keys()
        self.fill()

    def bind_keys(self) -> None:
        """The review keys on every layer of the project image (the canvas has the focus, one of them is active);
        never on the viewer, so no other plugin's or napari's key is taken."""
        for layer in self.state.viewer.layers:
            if layer.name in _layers.ORDER:
                for key in KEYS:
                    layer.bind_key(key, lambda _layer, k=key: self.actions[k](), overwrite=True)

    def _on_top_changed(self, value: int) -> None:
        self.state.top = value
        self.state.reshow()

    def fill(self) -> None:
        """The table: the ranked regions of the image shown, with their review status."""
        from pipeline.review.state import ordered_regions, review_state

        store, current = self.state.store, self.state.current
        if not (store and current):
            self.regions = []
            return
        self.regions = ordered_regions(store, self.top_spin.value(), current)
        state = review_state(store)
        if state["notice"]:
            show_info(state["notice"])
        self.region_table.setRowCount(len(self.regions))
        for row, r in enumerate(self.regions):
            texts = ("gland" if r.suggested_label else "non-gland", f"{r.expected_wrong:,.0f}", f"{r.area:,}",
                     state["state"].get(r.key, ""))
            for col, text in enumerate(texts):
                self.region_table.setItem(row, col, QTableWidgetItem(text))
        if state["total"]:
            self.review_label.setText(f"reviewed {state['reviewed']} of {state['total']} regions "
                                      f"({state['accepted']} accepted, {state['skipped']} skipped)")
        else:
            self.review_label.setText("no ranking yet: press Rank regions (needs CAMs and a prediction)")

    # ------------------------------------------------------------------ actions
    def _selected_region(self):
        rows = self.region_table.selectionModel().selectedRows() if self.regions else []
        if not rows:
            show_info("select a region first (click a row, or Next)")
            return None
        return self.regions[rows[0].row()]

    def zoom_to_region(self, row: int) -> None:
        r = self.regions[row]
        self.region_table.selectRow(row)
        y0, x0, y1, x1 = r.bbox
        h, w = self.state.store.shape(self.state.current)
        viewer = self.state.viewer
        viewer.reset_view()  # zoom that fits the whole image, as the reference
        cam = _layers.camera(viewer)
        fit = cam.zoom
        cam.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        cam.zoom = fit * max(1.0, 0.6 * min(h / max(y1 - y0, 1), w / max(x1 - x0, 1)))

    def accept_region(self) -> dict | None:
        """Fill the selected region with its suggested label (pathologist-verified, undoable), then go on."""
        from pipeline.review.state import accept_region

        r = self._selected_region()
        if r is None:
            return None
        self.state.flush()  # strokes painted by hand count as a change of the labels
        try:
            result = accept_region(self.state.store, r.key, self.state.config(save=False))
        except OEEMError as exc:
            show_error(str(exc))
            return None
        if result["reranked"]:
            show_info(result["notice"])
        self.state.reshow()
        self.state.changed.emit()
        if result["accepted"]:
            self.next_region()
        return result

    def skip_region(self) -> None:
        from pipeline.review.state import skip_region

        r = self._selected_region()
        if r is None:
            return
        try:
            skip_region(self.state.store, r.key)
        except OEEMError as exc:
            show_error(str(exc))
            return
        self.fill()
        self.outline_listed()
        self.next_region()

    def outline_listed(self) -> None:
        """Outline the regions the table lists: after a skip they may be others, when the review re-orders."""
        viewer, store, current = self.state.viewer, self.state.store, self.state.current
        outlines = _layers.region_outlines(store, current, self.top_spin.value())
        if outlines is not None and _layers.CONFUSING in viewer.layers:
            viewer.layers[_layers.CONFUSING].data = outlines

    def next_region(self) -> None:
        """The best-ranked region not yet reviewed (any image): switch to its image, select it and zoom."""
        from pipeline.review.state import next_unreviewed

        store = self.state.store
        if not store:
            return
        r = next_unreviewed(store, self.top_spin.value())
        if r is None:
            show_info("every listed region has been reviewed")
            return
        if r.image != self.state.current:
            self.state.show(r.image)
        row = next((k for k, x in enumerate(self.regions) if x.key == r.key), None)
        if row is not None:
            self.zoom_to_region(row)

    def undo_review(self) -> None:
        from pipeline.review.regions import region_image
        from pipeline.review.state import undo_review

        store = self.state.store
        if not store:
            return
        self.state.flush()
        try:
            last = undo_review(store)
        except OEEMError as exc:
            show_error(str(exc))
            return
        if last is None:
            show_info("nothing to undo in the review")
            return
        self.state.show(region_image(last["key"]))
        self.state.changed.emit()
        show_info(f"{last['key']}: {last['status']} taken back")
