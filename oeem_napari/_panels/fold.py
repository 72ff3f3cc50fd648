"""A group box whose body folds away under its title: the panels used now and then start folded, so the dock fits
the screen."""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QLayout, QSizePolicy, QToolButton, QVBoxLayout, QWidget


class FoldingBox(QGroupBox):
    """``body`` takes the box's widgets (``body_layout``); clicking the title, an arrow button, shows or hides it.
    Every panel of the dock is one: those used now and then start folded."""

    def __init__(self, title: str, unfolded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = QWidget()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.toggle)
        lay.addWidget(self.body)
        self.toggle.toggled.connect(self.unfold)
        self.toggle.setChecked(unfolded)
        self.unfold(unfolded)

    def body_layout(self, kind: type[QLayout]) -> QLayout:
        """A layout of ``kind`` for the body, flush with the title."""
        lay = kind(self.body)
        lay.setContentsMargins(0, 0, 0, 0)
        return lay

    @property
    def unfolded(self) -> bool:
        return self.toggle.isChecked()

    def unfold(self, on: bool = True) -> None:
        if self.toggle.isChecked() != on:
            self.toggle.setChecked(on)  # comes back here through `toggled`
            return
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)
