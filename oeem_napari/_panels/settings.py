"""Settings box: preset, device, prediction mode, the few settings a pathologist changes, and every other setting
of the pipeline folded under *Advanced* (one tab per stage)."""
from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QFormLayout, QScrollArea, QTabWidget, QVBoxLayout

from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from oeem_napari._settings import SECTIONS, SettingsForm
from pipeline.config import BEST_INFERENCE, DEFAULT_PRESET, FAST_INFERENCE, PRESETS, preset

PREDICTION_MODES = {"fast (1 scale)": FAST_INFERENCE, "as set (Advanced, Prediction)": {},
                    "best (all 8 orientations, ~3x the time)": BEST_INFERENCE}  # what each choice overrides


class DeviceCombo(QComboBox):
    """auto, cpu, and cuda or mps when torch sees such a GPU: asked the first time the list opens, so that loading
    the plugin does not import torch."""

    def __init__(self):
        super().__init__()
        self.addItems(["auto", "cpu"])
        self._asked = False

    def showPopup(self) -> None:  # noqa: N802 - Qt name
        if not self._asked:
            self._asked = True
            import torch

            if torch.cuda.is_available():
                self.addItem("cuda")
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                self.addItem("mps")
        super().showPopup()


class SettingsPanel(FoldingBox):
    """The configuration the next job runs with (the state's ``settings``); reloaded from a project it opens."""

    def __init__(self, state: DockState):
        super().__init__("Settings", unfolded=True)
        self.state = state
        lay = self.body_layout(QVBoxLayout)
        form = QFormLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESETS)
        self.preset_combo.setCurrentText(DEFAULT_PRESET)
        self.preset_combo.setToolTip("picking a preset sets every setting below to its values")
        self.device_combo = DeviceCombo()
        self.predict_combo = QComboBox()
        self.predict_combo.addItems(PREDICTION_MODES)
        for label, w in (("preset", self.preset_combo), ("device", self.device_combo),
                         ("prediction", self.predict_combo)):
            form.addRow(label, w)
        lay.addLayout(form)
        # every other setting, generated from pipeline.config (magicgui): the basic ones on top, the rest folded
        self.form = SettingsForm(preset(DEFAULT_PRESET))
        lay.addWidget(self.form.basic.native)
        self.advanced = FoldingBox("Advanced (every setting, by stage)")
        self.tabs = QTabWidget()
        for section, box in self.form.sections.items():
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(box.native)
            self.tabs.addTab(scroll, SECTIONS[section])
        self.tabs.setMinimumHeight(220)
        self.advanced.body_layout(QVBoxLayout).addWidget(self.tabs)
        lay.addWidget(self.advanced)
        self.preset_combo.textActivated.connect(lambda name: self.form.set_values(preset(name)))
        state.settings = self
        state.opened.connect(self._on_opened)

    def field(self, key: str):
        """The Qt widget of one setting (``segmentation.iterations`` ...)."""
        return self.form.fields[key].native

    # ------------------------------------------------------------------ what the state asks (RunSettings)
    def preset(self) -> str:
        return self.preset_combo.currentText()

    def values(self) -> dict[str, Any]:
        return self.form.values()

    def device(self) -> str:
        return self.device_combo.currentText()

    def prediction(self) -> dict[str, Any]:
        return dict(PREDICTION_MODES[self.predict_combo.currentText()])

    def _on_opened(self) -> None:
        cfg = self.state.config(save=False)
        self.preset_combo.setCurrentText(cfg.preset)
        self.form.set_values(cfg)
