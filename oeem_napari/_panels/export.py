"""Export masks box (folded until needed): masks out as PNG / TIFF / OME-Zarr, QuPath annotations in."""
from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QFileDialog, QGridLayout, QPushButton

from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from pipeline.errors import OEEMError
from pipeline.io.export import FORMATS, SOURCES


class ExportPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Export masks")
        self.state = state
        grid = self.body_layout(QGridLayout)
        self.format_combo = QComboBox()
        self.format_combo.addItems(FORMATS)
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        export_btn = QPushButton("Export…")
        export_btn.clicked.connect(self._browse_export)
        import_btn = QPushButton("Import GeoJSON…")
        import_btn.setToolTip("QuPath annotations (NAME.geojson, or any file for the image shown) become "
                              "pathologist-verified corrections; undoable")
        import_btn.clicked.connect(self._browse_import)
        grid.addWidget(self.format_combo, 0, 0)
        grid.addWidget(self.source_combo, 0, 1)
        grid.addWidget(export_btn, 1, 0)
        grid.addWidget(import_btn, 1, 1)

    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export(folder)

    def export(self, folder: str, fmt: str | None = None, source: str | None = None) -> list[Path]:
        from pipeline.io.export import export_masks

        if self.state.store is None:
            show_error("open a project first")
            return []
        self.state.flush()
        try:
            paths = export_masks(self.state.store, folder, fmt or self.format_combo.currentText(),
                                 source or self.source_combo.currentText())
        except OEEMError as exc:
            show_error(str(exc))
            return []
        show_info(f"exported {len(paths)} masks to {folder}")
        return paths

    def _browse_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import QuPath annotations", "", "GeoJSON (*.geojson *.json)")
        if path:
            self.import_geojson(path)

    def import_geojson(self, path: str, image: str | None = None) -> dict | None:
        """Import one annotation file as a correction of ``image`` (default: the file's name if it is an image
        of the project, else the image shown)."""
        from pipeline.io.geojson import image_name_of, import_geojson

        store, current = self.state.store, self.state.current
        if store is None or current is None:
            show_error("open a project first")
            return None
        self.state.flush()
        if image is None:
            named = image_name_of(Path(path))
            image = named if named in store.names() else current
        try:
            report = import_geojson(store, path, image)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        pixels = report["images"].get(image, 0)
        skipped = "; skipped " + ", ".join(f"{c} {w}" for w, c in report["skipped"].items()) \
            if report["skipped"] else ""
        show_info(f"{image}: {pixels:,} px imported as pathologist-verified (undo takes them back){skipped}")
        self.state.show(image)
        self.state.changed.emit()
        return report
