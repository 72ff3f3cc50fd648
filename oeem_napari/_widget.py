"""The OEEM dock widget: open a project, run the stages in the background, browse images and confusing regions,
correct pseudo-masks (auto-saved), export. All computation is in ``pipeline``; this is only the interface."""
from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
import torch
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from oeem_napari import _layers
from oeem_napari._corrections import CorrectionKeeper
from oeem_napari._jobs import JobRunner, run_step
from oeem_napari._settings import SECTIONS, SettingsForm
from pipeline.config import PRESETS, preset
from pipeline.errors import OEEMError
from pipeline.io.export import FORMATS, SOURCES, export_masks
from pipeline.progress import Progress
from pipeline.slides.regions import REGION_LABELS
from pipeline.store import ProjectStore
from pipeline.store.lock import holding_writer

STAGES = {
    "classifier": "Train classifier",
    "cams": "CAMs + pseudo-masks",
    "segmentation": "Train segmentation",
    "predict": "Predict",
    "selftrain": "Self-train round",
    "evaluate": "Evaluate",
    "all": "Run all",
}
JOB_LABELS = {**STAGES, "rank": "Rank regions"}  # every background job; STAGES are the Run box's buttons


class OEEMWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.store: ProjectStore | None = None
        self.current: str | None = None
        self.keeper: CorrectionKeeper | None = None
        self.regions: list = []
        self.last_result = None
        self.runner = JobRunner(self)
        self.runner.progressed.connect(self._on_progress)
        self.runner.finished.connect(self._on_job_finished)
        self._watching_window = False
        self._build()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt name
        self._watch_main_window()
        super().showEvent(event)

    def _watch_main_window(self) -> None:
        """Once docked, watch napari's main window so a running job stops cleanly when napari closes."""
        if not self._watching_window and self.window() is not self:
            self.window().installEventFilter(self)
            self._watching_window = True

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        box = QGroupBox("Project")
        grid = QGridLayout(box)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path/to/project.oeem.zarr")
        open_btn, new_btn = QPushButton("Open…"), QPushButton("New from folder…")
        open_btn.clicked.connect(self._browse_open)
        new_btn.clicked.connect(self._browse_new)
        self.path_edit.returnPressed.connect(lambda: self.open_project(self.path_edit.text()))
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.info_label = QLabel("no project open")
        self.info_label.setWordWrap(True)
        grid.addWidget(self.path_edit, 0, 0, 1, 2)
        grid.addWidget(open_btn, 1, 0)
        grid.addWidget(new_btn, 1, 1)
        grid.addWidget(QLabel("image"), 2, 0)
        grid.addWidget(self.image_combo, 2, 1)
        grid.addWidget(self.info_label, 3, 0, 1, 2)
        root.addWidget(box)

        box = QGroupBox("Settings")
        form = QFormLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(PRESETS)
        self.preset_combo.setCurrentText("cpu")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []))
        self.predict_combo = QComboBox()
        self.predict_combo.addItems(["fast (1 scale)", "multi-scale + flip"])
        for label, w in (("preset", self.preset_combo), ("device", self.device_combo),
                         ("prediction", self.predict_combo)):
            form.addRow(label, w)
        # every other setting, generated from pipeline.config (magicgui): one tab per stage
        self.settings = SettingsForm(preset("cpu"))
        self.settings_tabs = QTabWidget()
        for title, box_ in [("Basic", self.settings.basic),
                            *((SECTIONS[s], b) for s, b in self.settings.sections.items())]:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(box_.native)
            self.settings_tabs.addTab(scroll, title)
        self.settings_tabs.setCurrentIndex(0)
        self.settings_tabs.setMinimumHeight(220)
        form.addRow(self.settings_tabs)
        # the settings changed most often, by their old names (scripts and tests use them)
        self.loss_combo = self.settings.fields["segmentation.loss"].native
        self.labels_combo = self.settings.fields["segmentation.label_source"].native
        self.epochs_spin = self.settings.fields["classifier.epochs"].native
        self.iter_spin = self.settings.fields["segmentation.iterations"].native
        self.preset_combo.textActivated.connect(lambda name: self.settings.set_values(preset(name)))
        root.addWidget(box)

        box = QGroupBox("Run")
        grid = QGridLayout(box)
        self.stage_buttons: dict[str, QPushButton] = {}
        for k, (stage, text) in enumerate(STAGES.items()):
            btn = QPushButton(text)
            btn.clicked.connect(lambda _=False, s=stage: self.run_stage(s))
            grid.addWidget(btn, k // 2, k % 2)
            self.stage_buttons[stage] = btn
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        first = (len(STAGES) + 1) // 2
        grid.addWidget(self.progress_bar, first, 0)
        grid.addWidget(self.cancel_btn, first, 1)
        grid.addWidget(self.status_label, first + 1, 0, 1, 2)
        root.addWidget(box)

        box = QGroupBox("Corrections")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.undo_btn = QPushButton("Undo last correction")
        self.undo_btn.clicked.connect(self.undo)
        self.corrections_label = QLabel("")
        row.addWidget(self.undo_btn)
        row.addWidget(self.corrections_label)
        lay.addLayout(row)
        root.addWidget(box)

        box = QGroupBox("Label review: regions whose pseudo-label is probably wrong")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.rank_btn = QPushButton("Rank regions")
        self.rank_btn.setToolTip("out-of-fold evidence + CAM margin, calibrated on the validation split "
                                 "(`oeem regions`); a few minutes")
        self.rank_btn.clicked.connect(lambda: self.run_stage("rank"))
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 200)
        self.top_spin.setValue(10)
        self.top_spin.setPrefix("show top ")
        self.top_spin.setSuffix(" per image")
        self.top_spin.valueChanged.connect(lambda _v: self.current and self.set_image(self.current))
        row.addWidget(self.rank_btn)
        row.addWidget(self.top_spin)
        lay.addLayout(row)
        self.review_label = QLabel("no ranking yet")
        lay.addWidget(self.review_label)
        self.region_table = QTableWidget(0, 4)
        self.region_table.setHorizontalHeaderLabels(["suggested", "expected wrong px", "area px", "review"])
        self.region_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.region_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.region_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.region_table.cellClicked.connect(lambda row, _col: self.zoom_to_region(row))
        lay.addWidget(self.region_table)
        row = QHBoxLayout()
        for text, key, slot in (("Accept", "Shift-A", self.accept_region), ("Skip", "Shift-S", self.skip_region),
                                ("Next", "Shift-N", self.next_region), ("Undo review", "Shift-U", self.undo_review)):
            btn = QPushButton(f"{text} ({key})")
            btn.clicked.connect(lambda _=False, f=slot: f())
            row.addWidget(btn)
            self.viewer.bind_key(key, lambda _viewer, f=slot: f(), overwrite=True)
        lay.addLayout(row)
        root.addWidget(box)

        box = QGroupBox("Export masks")
        row = QHBoxLayout(box)
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
        row.addWidget(self.format_combo)
        row.addWidget(self.source_combo)
        row.addWidget(export_btn)
        row.addWidget(import_btn)
        root.addWidget(box)
        box = QGroupBox("Whole slides")
        grid = QGridLayout(box)
        open_slide_btn = QPushButton("Open slide…")
        open_slide_btn.clicked.connect(self._browse_slide)
        self.slide_mpp_spin = QDoubleSpinBox()
        self.slide_mpp_spin.setRange(0.0, 100.0)
        self.slide_mpp_spin.setDecimals(4)
        self.slide_mpp_spin.setSpecialValueText("µm/px from the file")
        self.slide_mpp_spin.setSuffix(" µm/px")
        self.slide_mpp_spin.setToolTip("the slide's microns per pixel, when the file does not say it")
        self.predict_slide_btn = QPushButton("Predict slide")
        self.predict_slide_btn.setToolTip("tissue blocks at the project's resolution into an OME-Zarr pyramid "
                                          "beside the project (`oeem predict-slide`); resumable")
        self.predict_slide_btn.clicked.connect(self.predict_slide)
        self.region_label_combo = QComboBox()
        self.region_label_combo.addItems(list(REGION_LABELS))
        self.region_label_combo.setToolTip("the weak label every patch of the drawn regions takes")
        add_regions_btn = QPushButton("Add drawn regions")
        add_regions_btn.setToolTip(f"rectangles of the '{_layers.SLIDE_REGIONS}' layer become training images "
                                   "(`oeem add-regions`)")
        add_regions_btn.clicked.connect(self.add_drawn_regions)
        grid.addWidget(open_slide_btn, 0, 0)
        grid.addWidget(self.slide_mpp_spin, 0, 1)
        grid.addWidget(self.predict_slide_btn, 1, 0, 1, 2)
        grid.addWidget(self.region_label_combo, 2, 0)
        grid.addWidget(add_regions_btn, 2, 1)
        root.addWidget(box)
        root.addStretch()
        self._set_busy(False)

    # ------------------------------------------------------------------ project
    def _browse_open(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open an OEEM project (.zarr folder)")
        if path:
            self.open_project(path)

    def _browse_new(self) -> None:
        data = QFileDialog.getExistingDirectory(self, "Folder with H&E images and NAME_anno masks")
        if not data:
            return
        target, _ = QFileDialog.getSaveFileName(self, "Create the project as", str(Path(data).parent /
                                                                                   "project.oeem.zarr"))
        if target:
            self.create_project(data, target)

    def create_project(self, data: str, target: str):
        from pipeline.store.project import create_project

        return self._start("Create project", run_step("create", lambda: create_project(data, target)),
                           after=lambda ok, store: ok and self.open_project(target))

    def open_project(self, path: str | Path) -> bool:
        try:
            store = ProjectStore.open(path)
        except OEEMError as exc:
            show_error(str(exc))
            return False
        self._release_keeper()
        self.store = store
        self.path_edit.setText(str(path))
        cfg = self._config(save=False)
        self.preset_combo.setCurrentText(cfg.preset)
        self.settings.set_values(cfg)
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(store.names())
        self.image_combo.blockSignals(False)
        first = store.names("train")[:1] or store.names()[:1]
        if first:
            self.image_combo.setCurrentText(first[0])
            self.set_image(first[0])
        self._update_info()
        return True

    def _config(self, save: bool = True):
        from pipeline.store.project import project_config

        if not save:  # what the project holds
            return project_config(self.store, None, None, save=False)
        # the form holds every setting: it is the configuration, checked and saved with the project
        return project_config(self.store, self.preset_combo.currentText(), self.settings.values(), save=True)

    def _update_info(self) -> None:
        if not self.store:
            return
        s = self.store.correction_summary()
        tr, te = len(self.store.names("train")), len(self.store.names("test"))
        self.info_label.setText(f"{tr} train / {te} test images")
        self.corrections_label.setText(f"{s['pixels']:,} px corrected in {s['images']} image(s)")

    # ------------------------------------------------------------------ images and layers
    def _on_image_changed(self, name: str) -> None:
        if name and self.store:
            self.set_image(name)

    def set_image(self, name: str) -> None:
        self._release_keeper()
        self.current = name
        _layers.show_image(self.viewer, self.store, name, self.top_spin.value())
        if _layers.PSEUDO in self.viewer.layers:
            self.keeper = CorrectionKeeper(self.store, name, self.viewer.layers[_layers.PSEUDO],
                                           on_saved=self._update_info)
        self._fill_regions()

    def _release_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.disconnect()
            self.keeper = None

    def _fill_regions(self) -> None:
        from pipeline.review.regions import ranked_regions
        from pipeline.review.state import review_state

        if not (self.store and self.current):
            self.regions = []
            return
        self.regions = ranked_regions(self.store, self.top_spin.value(), self.current)
        state = review_state(self.store)
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
        h, w = self.store.shape(self.current)
        self.viewer.reset_view()  # zoom that fits the whole image, as the reference
        cam = _layers.camera(self.viewer)
        fit = cam.zoom
        cam.center = ((y0 + y1) / 2, (x0 + x1) / 2)
        cam.zoom = fit * max(1.0, 0.6 * min(h / max(y1 - y0, 1), w / max(x1 - x0, 1)))

    def accept_region(self) -> dict | None:
        """Fill the selected region with its suggested label (pathologist-verified, undoable), then go on."""
        from pipeline.review.state import accept_region

        r = self._selected_region()
        if r is None:
            return None
        if self.keeper is not None:
            self.keeper.flush()  # strokes painted by hand count as a change of the labels
        try:
            result = accept_region(self.store, r.key, self._config(save=False))
        except OEEMError as exc:
            show_error(str(exc))
            return None
        if result["reranked"]:
            show_info(result["notice"])
        self.set_image(self.current)
        self._update_info()
        if result["accepted"]:
            self.next_region()
        return result

    def skip_region(self) -> None:
        from pipeline.review.state import skip_region

        r = self._selected_region()
        if r is None:
            return
        try:
            skip_region(self.store, r.key)
        except OEEMError as exc:
            show_error(str(exc))
            return
        self._fill_regions()
        self.next_region()

    def next_region(self) -> None:
        """The best-ranked region not yet reviewed (any image): switch to its image, select it and zoom."""
        from pipeline.review.regions import ranked_regions
        from pipeline.review.state import review_state

        if not self.store:
            return
        done = review_state(self.store)["state"]
        top = self.top_spin.value()
        for r in ranked_regions(self.store):
            if r.key in done or r.id > top:
                continue
            if r.image != self.current:
                self.image_combo.setCurrentText(r.image)
            row = next((k for k, x in enumerate(self.regions) if x.key == r.key), None)
            if row is not None:
                self.zoom_to_region(row)
                return
        show_info("every listed region has been reviewed")

    def undo_review(self) -> None:
        from pipeline.review.state import undo_review

        if not self.store:
            return
        if self.keeper is not None:
            self.keeper.flush()
        try:
            last = undo_review(self.store)
        except OEEMError as exc:
            show_error(str(exc))
            return
        if last is None:
            show_info("nothing to undo in the review")
            return
        name = last["key"].split(":")[0]
        if name == self.current:
            self.set_image(name)
        else:
            self.image_combo.setCurrentText(name)
        self._update_info()
        show_info(f"{last['key']}: {last['status']} taken back")

    def undo(self) -> None:
        if not (self.store and self.current and self.keeper):
            return
        self.keeper.flush()
        if self.store.undo_correction(self.current):
            self.keeper.reload(_layers.editable_labels(self.store, self.current))
            self._update_info()
            show_info(f"{self.current}: last correction undone")
        else:
            show_info(f"{self.current}: no correction to undo")

    # ------------------------------------------------------------------ jobs
    def run_stage(self, stage: str):
        """Start a stage in the background; returns the worker (None if it could not start)."""
        if self.store is None:
            show_error("open or create a project first")
            return None
        if self.keeper is not None:
            self.keeper.flush()  # the next training run must see the latest strokes
        try:
            job = self._make_job(stage)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        # one writer per project: a CLI run on the same project makes this job stop at once with who holds it
        label = JOB_LABELS[stage]
        return self._start(label, holding_writer(self.store.path, f"napari: {label}", job))

    def _make_job(self, stage: str):
        from pipeline.stages.cams import make_cams
        from pipeline.stages.classify import make_patch_labels, train_classifier
        from pipeline.stages.infer import evaluate, predict
        from pipeline.stages.run import run_all, segmentation_settings
        from pipeline.stages.segment import train_segmenter

        cfg = self._config()
        if self.predict_combo.currentIndex() == 0:
            cfg.inference.scales, cfg.inference.flip = (1.0,), False
        store, device = self.store, self.device_combo.currentText()
        if stage == "classifier":
            def job():
                make_patch_labels(store, cfg.patches)
                return (yield from train_classifier(store, cfg.classifier, cfg.patches, device, on_mismatch="restart"))
            return job()
        if stage == "cams":
            return make_cams(store, cfg.cam, cfg.patches, device)
        if stage == "segmentation":
            return train_segmenter(store, segmentation_settings(store, cfg), device, on_mismatch="restart")
        if stage == "predict":
            return predict(store, cfg.inference, device=device)
        if stage == "selftrain":
            from pipeline.stages.selftrain import refine_round

            return refine_round(store, cfg.patches.size, cam_cfg=cfg.cam)
        if stage == "evaluate":
            return run_step("evaluate", lambda: {s: evaluate(store, s) for s in ("train", "val", "test")
                                                 if any(store.has(n, "mask") for n in store.names(s))})
        if stage == "all":
            return run_all(store, cfg, device)
        if stage == "rank":
            from pipeline.review.regions import rank_label_errors

            return rank_label_errors(store, cfg, "train")
        raise OEEMError(f"unknown stage {stage!r}")

    def _start(self, label: str, job, after=None):
        self._watch_main_window()
        try:
            worker = self.runner.start(label, job)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        self._after = after
        self._set_busy(True)
        self.status_label.setText(f"{label}…")
        return worker

    def cancel(self) -> None:
        self.runner.cancel()

    def _set_busy(self, busy: bool) -> None:
        for btn in [*self.stage_buttons.values(), self.rank_btn, self.predict_slide_btn]:
            btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def _on_progress(self, p: Progress) -> None:
        self.progress_bar.setMaximum(max(p.total, 1))
        self.progress_bar.setValue(p.step)
        metrics = "  ".join(f"{k} {v:.3g}" for k, v in p.metrics.items())
        self.status_label.setText(f"{p.stage} {p.message} {metrics}".strip())

    def _on_job_finished(self, ok: bool, result) -> None:
        self._set_busy(False)
        self.last_result = result if ok else None
        self.status_label.setText("done" if ok else ("cancelled" if self.runner.cancelled else "failed"))
        after, self._after = getattr(self, "_after", None), None
        if after is not None:
            after(ok, result)
        elif self.store and self.current:
            self.set_image(self.current)  # show what the job wrote
            self._update_info()
        if ok and isinstance(result, dict) and "mIoU" in str(result)[:2000]:
            show_info(_summary(result))

    # ------------------------------------------------------------------ whole slides
    def _browse_slide(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a whole slide", "",
                                              "Slides (*.svs *.ndpi *.tif *.tiff *.btf *.scn *.bif *.qptiff)")
        if path:
            self.open_slide(path)

    def open_slide(self, path: str | Path):
        """The slide as a lazy multiscale layer (microns), with an empty rectangle layer to draw regions on."""
        try:
            data, kwargs, _kind = _layers.slide_layer_spec(path)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        layer = self.viewer.add_image(data, **kwargs)
        meta = kwargs["metadata"]
        for note in meta["notes"]:
            show_info(note)
        if meta["mpp"] is None:
            show_info(f"{Path(path).name}: the file does not say its microns per pixel; set µm/px in Whole "
                      "slides before predicting")
        else:
            _layers.scale_bar(self.viewer).visible = True  # in µm: the layers carry their units
        if _layers.SLIDE_REGIONS not in self.viewer.layers:
            extra = {"units": kwargs["units"]} if "units" in kwargs else {}
            self.viewer.add_shapes(name=_layers.SLIDE_REGIONS, scale=kwargs["scale"], edge_color="yellow",
                                   face_color="transparent", edge_width=4, **extra)
        self.viewer.layers.selection.active = layer
        self.viewer.reset_view()
        return layer

    def _slide_layer(self):
        active = self.viewer.layers.selection.active
        if active is not None and "oeem_slide" in active.metadata:
            return active
        slides = [lyr for lyr in self.viewer.layers if "oeem_slide" in lyr.metadata]
        return slides[-1] if slides else None

    def _slide_mpp(self) -> float | None:
        return self.slide_mpp_spin.value() or None

    def predict_slide(self):
        """Predict the open slide in the background; the mask appears over it as multiscale Labels."""
        from pipeline.slides.predict import predict_slide

        layer = self._slide_layer()
        if layer is None:
            show_error("open a slide first (Whole slides > Open slide…)")
            return None
        if self.store is None:
            show_error("open a project with a trained segmentation model first")
            return None
        cfg = self._config()
        if self.predict_combo.currentIndex() == 0:
            cfg.inference.scales, cfg.inference.flip = (1.0,), False
        try:
            job = predict_slide(self.store, layer.metadata["oeem_slide"], cfg.slide, cfg.inference,
                                self._slide_mpp(), device=self.device_combo.currentText(), restart=True)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        return self._start("Predict slide", job, after=self._show_slide_prediction)

    def _show_slide_prediction(self, ok: bool, record) -> None:
        if not ok or not isinstance(record, dict):
            return
        for lyr in [lyr for lyr in self.viewer.layers if lyr.name in (_layers.SLIDE_PREDICTION,
                                                                        "slide gland probability")]:
            self.viewer.layers.remove(lyr)
        for data, kwargs, kind in _layers.slide_prediction_specs(record["output"]):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        b = record["blocks"]
        show_info(f"slide predicted: {b['tissue']} tissue blocks ({b['resumed']} resumed), "
                  f"{b['skipped_as_glass']} glass blocks skipped; {record['resampling']}")

    def add_drawn_regions(self) -> list[str]:
        """Every rectangle of the regions layer becomes a training image with the chosen weak label."""
        from pipeline.slides.regions import SlideRegion, add_slide_regions
        from pipeline.store.lock import project_writer

        slide, shapes = self._slide_layer(), self.viewer.layers[_layers.SLIDE_REGIONS] \
            if _layers.SLIDE_REGIONS in self.viewer.layers else None
        if slide is None or shapes is None or not len(shapes.data):
            show_error(f"open a slide and draw rectangles on its '{_layers.SLIDE_REGIONS}' layer first")
            return []
        if self.store is None:
            show_error("open or create a project first")
            return []
        label = self.region_label_combo.currentText()
        regions = []
        for verts in shapes.data:
            pts = np.array([slide.world_to_data(shapes.data_to_world(v)) for v in verts])[:, -2:]
            (y0, x0), (y1, x1) = np.floor(pts.min(0)), np.ceil(pts.max(0))
            regions.append(SlideRegion(int(x0), int(y0), int(x1 - x0), int(y1 - y0), label))
        try:
            cfg = self._config()
            with project_writer(self.store.path, "napari: add slide regions"):
                names = add_slide_regions(self.store, slide.metadata["oeem_slide"], regions, cfg.patches,
                                          cfg.slide.project_mpp, self._slide_mpp(), reader=cfg.slide.reader)
        except OEEMError as exc:
            show_error(str(exc))
            return []
        shapes.data = []
        self.image_combo.addItems(names)
        self._update_info()
        show_info(f"added {len(names)} region(s) as training images ({label})")
        return names

    # ------------------------------------------------------------------ export
    def _browse_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export masks to")
        if folder:
            self.export(folder)

    def export(self, folder: str, fmt: str | None = None, source: str | None = None) -> list[Path]:
        if self.store is None:
            show_error("open a project first")
            return []
        if self.keeper is not None:
            self.keeper.flush()
        try:
            paths = export_masks(self.store, folder, fmt or self.format_combo.currentText(),
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

        if self.store is None or self.current is None:
            show_error("open a project first")
            return None
        if self.keeper is not None:
            self.keeper.flush()
        if image is None:
            named = image_name_of(Path(path))
            image = named if named in self.store.names() else self.current
        try:
            report = import_geojson(self.store, path, image)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        pixels = report["images"].get(image, 0)
        skipped = "; skipped " + ", ".join(f"{c} {w}" for w, c in report["skipped"].items()) \
            if report["skipped"] else ""
        show_info(f"{image}: {pixels:,} px imported as pathologist-verified (undo takes them back){skipped}")
        self.set_image(image)
        self._update_info()
        return report

    # ------------------------------------------------------------------ closing
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def shutdown(self) -> None:
        """Stop a running job (its checkpoint is kept) and save pending strokes; napari is closing."""
        if self.keeper is not None:
            self.keeper.flush()
        self.runner.shutdown()


def _summary(result: dict) -> str:
    parts = []
    for key, val in result.items():
        if isinstance(val, dict) and "mIoU" in val:
            parts.append(f"{key}: mIoU {val['mIoU']:.1f}")
        elif key in ("train", "test") and isinstance(val, dict):
            parts.append(f"{key}: mIoU {val.get('mIoU', float('nan')):.1f}")
    return "; ".join(parts) or "done"
