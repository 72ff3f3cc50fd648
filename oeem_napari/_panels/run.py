"""Run box: one button per stage, the running job's progress, Cancel."""
from __future__ import annotations

from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QPushButton

from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.stages import STAGES
from oeem_napari._panels.state import DockState
from pipeline.progress import Progress


class RunPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Run", unfolded=True)
        self.state = state
        grid = self.body_layout(QGridLayout)
        self.stage_buttons: dict[str, QPushButton] = {}
        for k, (stage, text) in enumerate(STAGES.items()):
            btn = QPushButton(text)
            btn.clicked.connect(lambda _=False, s=stage: state.run_stage(s))
            grid.addWidget(btn, k // 2, k % 2)
            self.stage_buttons[stage] = btn
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(state.cancel)
        first = (len(STAGES) + 1) // 2
        grid.addWidget(self.progress_bar, first, 0)
        grid.addWidget(self.cancel_btn, first, 1)
        grid.addWidget(self.status_label, first + 1, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        state.busy.connect(self._set_busy)
        state.started.connect(lambda label: self.status_label.setText(f"{label}…"))
        state.progressed.connect(self._on_progress)
        state.finished.connect(self.status_label.setText)
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        for btn in self.stage_buttons.values():
            btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _on_progress(self, p: Progress) -> None:
        self.progress_bar.setMaximum(max(p.total, 1))
        self.progress_bar.setValue(p.step)
        metrics = "  ".join(f"{k} {v:.3g}" for k, v in p.metrics.items())
        self.status_label.setText(f"{p.stage} {p.message} {metrics}".strip())
