"""Run box: one button per stage, *Run all*'s time budget, the running job's progress and expected end, Cancel."""
from __future__ import annotations

from datetime import datetime, timedelta

from qtpy.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSpinBox

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
        singles = [s for s in STAGES if s != "all"]
        for k, stage in enumerate([*singles, "all"]):
            btn = QPushButton(STAGES[stage])
            btn.clicked.connect(lambda _=False, s=stage: state.run_stage(s))
            # two columns; Run all alone in the row after them, its budget beside it
            grid.addWidget(btn, *((k // 2, k % 2) if stage != "all" else ((len(singles) + 1) // 2, 0)))
            self.stage_buttons[stage] = btn
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(0, 7 * 24 * 60)
        self.budget_spin.setSingleStep(15)
        self.budget_spin.setPrefix("budget ")
        self.budget_spin.setSuffix(" min")
        self.budget_spin.setSpecialValueText("no budget")
        self.budget_spin.setToolTip("Run all within this many minutes: the speed of this machine is measured first "
                                    "and classifier epochs, CAM scales, segmentation iterations and self-training "
                                    "rounds shrink to fit (never grow). No budget: the preset's schedule; either "
                                    "way the expected end is shown beside the progress bar.")
        self.budget_spin.valueChanged.connect(self._set_budget)
        first = (len(singles) + 1) // 2  # Run all's row
        grid.addWidget(self.budget_spin, first, 1)
        first += 1
        self.progress_bar = QProgressBar()
        self.end_label = QLabel("")  # the expected end of Run all, from the plan its first steps measure
        self.end_label.setToolTip("when the run should end, from the speed measured at its start")
        self._expected_end: datetime | None = None
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(state.cancel)
        bar = QHBoxLayout()
        bar.addWidget(self.progress_bar, 1)
        bar.addWidget(self.end_label)
        grid.addLayout(bar, first, 0)
        grid.addWidget(self.cancel_btn, first, 1)
        grid.addWidget(self.status_label, first + 1, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        state.busy.connect(self._set_busy)
        state.started.connect(self._on_started)
        state.progressed.connect(self._on_progress)
        state.finished.connect(self._on_finished)
        self._set_busy(False)

    def _set_budget(self, minutes: int) -> None:
        self.state.budget_s = minutes * 60.0 if minutes > 0 else None

    def _on_started(self, label: str) -> None:
        self.status_label.setText(f"{label}…")
        self._expected_end = None
        self.end_label.setText("")

    def _on_finished(self, outcome: str) -> None:
        self.status_label.setText(outcome)
        if self._expected_end is not None:
            done = outcome == "done"
            self.end_label.setText(f"ended {datetime.now():%H:%M} (expected {self._expected_end:%H:%M})" if done
                                   else "")
            self._expected_end = None

    def _set_busy(self, busy: bool) -> None:
        for btn in self.stage_buttons.values():
            btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _on_progress(self, p: Progress) -> None:
        # the plan at the start of Run all (pipeline.budget.start_of_run), and with a budget each second sizing
        # before a segmentation training (pipeline.budget.resize_segmentation): the end time follows the latest
        if "expected_s" in p.metrics:
            self._expected_end = datetime.now() + timedelta(seconds=p.metrics["expected_s"])
            self.end_label.setText(f"ends ~{self._expected_end:%H:%M}")
            self.end_label.setToolTip(p.notice)
            return
        self.progress_bar.setMaximum(max(p.total, 1))
        self.progress_bar.setValue(p.step)
        metrics = "  ".join(f"{k} {v:.3g}" for k, v in p.metrics.items())
        self.status_label.setText(f"{p.stage} {p.message} {metrics}".strip())
