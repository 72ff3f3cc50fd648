"""Project box: open or create a project, pick the image shown."""
from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QComboBox, QFileDialog, QGridLayout, QLabel, QLineEdit, QPushButton

from oeem_napari._jobs import run_step
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState


class ProjectPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Project", unfolded=True)
        self.state = state
        grid = self.body_layout(QGridLayout)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path/to/project.oeem.zarr")
        self.path_edit.returnPressed.connect(lambda: self.open_project(self.path_edit.text()))
        open_btn, new_btn = QPushButton("Open…"), QPushButton("New from folder…")
        open_btn.clicked.connect(self._browse_open)
        new_btn.clicked.connect(self._browse_new)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_picked)
        self.info_label = QLabel("no project open")
        self.info_label.setWordWrap(True)
        grid.addWidget(self.path_edit, 0, 0, 1, 2)
        grid.addWidget(open_btn, 1, 0)
        grid.addWidget(new_btn, 1, 1)
        grid.addWidget(QLabel("image"), 2, 0)
        grid.addWidget(self.image_combo, 2, 1)
        grid.addWidget(self.info_label, 3, 0, 1, 2)
        state.opened.connect(self._on_opened)
        state.shown.connect(self._on_shown)
        state.changed.connect(self._on_changed)

    def open_project(self, path: str | Path) -> bool:
        ok = self.state.open(path)
        if ok:
            self.path_edit.setText(str(path))
        return ok

    def create_project(self, data: str, target: str):
        """Make a project of a GlaS-style folder in the background, then open it and say how the images split."""
        from pipeline.store.project import create_project, split_lines

        def opened(ok: bool, store) -> None:
            if ok and self.open_project(target):
                show_info("\n".join([f"created {Path(target).name}:", *split_lines(store)]))

        return self.state.start("Create project", run_step("create", lambda: create_project(data, target)),
                                after=opened)

    def _browse_open(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open an OEEM project (.zarr folder)")
        if path:
            self.open_project(path)

    def _browse_new(self) -> None:
        data = QFileDialog.getExistingDirectory(self, "Folder with H&E images and NAME_anno masks")
        if not data:
            return
        target, _ = QFileDialog.getSaveFileName(self, "Create the project as",
                                                str(Path(data).parent / "project.oeem.zarr"))
        if target:
            self.create_project(data, target)

    # ------------------------------------------------------------------ from the state
    def _on_image_picked(self, name: str) -> None:
        if name and self.state.store and name != self.state.current:
            self.state.show(name)

    def _fill_images(self) -> None:
        names = self.state.store.names()
        if [self.image_combo.itemText(k) for k in range(self.image_combo.count())] == names:
            return
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if self.state.current:
            self.image_combo.setCurrentText(self.state.current)
        self.image_combo.blockSignals(False)

    def _on_opened(self) -> None:
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.blockSignals(False)
        self._fill_images()

    def _on_shown(self, name: str) -> None:
        self.image_combo.blockSignals(True)
        self.image_combo.setCurrentText(name)
        self.image_combo.blockSignals(False)

    def _on_changed(self) -> None:
        store = self.state.store
        if store is None:
            return
        self._fill_images()  # e.g. regions of a slide added as training images
        tr, te = len(store.names("train")), len(store.names("test"))
        self.info_label.setText(f"{tr} train / {te} test images")
