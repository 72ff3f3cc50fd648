"""Whole slides box (folded until needed): open a slide lazily in microns, predict it block by block, turn drawn
rectangles into weakly labelled training images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFileDialog, QGridLayout, QPushButton

from oeem_napari import _layers
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from pipeline.errors import OEEMError
from pipeline.slides.regions import REGION_LABELS


class SlidesPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Whole slides")
        self.state = state
        grid = self.body_layout(QGridLayout)
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
        self.predict_slide_btn.clicked.connect(lambda: self.predict_slide())
        self.predict_model_btn = QPushButton("Predict with model file")
        self.predict_model_btn.setToolTip("with the model loaded in Model file, no project needed; the pyramid "
                                          "goes beside the slide (NAME.prediction.ome.zarr)")
        self.predict_model_btn.clicked.connect(lambda: self.predict_slide(with_model=True))
        self.region_label_combo = QComboBox()
        self.region_label_combo.addItems(list(REGION_LABELS))
        self.region_label_combo.setToolTip("the weak label every patch of the drawn regions takes")
        add_regions_btn = QPushButton("Add drawn regions")
        add_regions_btn.setToolTip(f"rectangles of the '{_layers.SLIDE_REGIONS}' layer become training images "
                                   "(`oeem add-regions`)")
        add_regions_btn.clicked.connect(self.add_drawn_regions)
        grid.addWidget(open_slide_btn, 0, 0)
        grid.addWidget(self.slide_mpp_spin, 0, 1)
        grid.addWidget(self.predict_slide_btn, 1, 0)
        grid.addWidget(self.predict_model_btn, 1, 1)
        grid.addWidget(self.region_label_combo, 2, 0)
        grid.addWidget(add_regions_btn, 2, 1)
        state.busy.connect(self._set_busy)

    def _set_busy(self, busy: bool) -> None:
        self.predict_slide_btn.setEnabled(not busy)
        self.predict_model_btn.setEnabled(not busy)

    @property
    def viewer(self):
        return self.state.viewer

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
            self.unfold()
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

    def predict_slide(self, with_model: bool = False):
        """Predict the open slide in the background (with the project's model, or ``with_model`` the model file
        loaded in the Model file box); the mask appears over it as multiscale Labels."""
        from pipeline.slides.predict import predict_slide

        layer = self._slide_layer()
        if layer is None:
            show_error("open a slide first (Whole slides > Open slide…)")
            return None
        trained = self.state.model if with_model else None
        if with_model and trained is None:
            show_error("load a model file first (Model file > Load model…)")
            return None
        if not with_model and self.state.store is None:
            show_error("open a project with a trained segmentation model first")
            return None
        try:
            cfg = self.state.model_config(trained) if with_model else self.state.run_config()
            job = predict_slide(None if with_model else self.state.store, layer.metadata["oeem_slide"], cfg.slide,
                                cfg.inference, self._slide_mpp(), device=self.state.device(), restart=True,
                                model=trained.source if with_model else None, instances=cfg.instances)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        return self.state.start("Predict slide", job, after=self._show_slide_prediction)

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
        store = self.state.store
        if store is None:
            show_error("open or create a project first")
            return []
        label = self.region_label_combo.currentText()
        regions = []
        for verts in shapes.data:
            pts = np.array([slide.world_to_data(shapes.data_to_world(v)) for v in verts])[:, -2:]
            (y0, x0), (y1, x1) = np.floor(pts.min(0)), np.ceil(pts.max(0))
            regions.append(SlideRegion(int(x0), int(y0), int(x1 - x0), int(y1 - y0), label))
        try:
            cfg = self.state.config()
            with project_writer(store.path, "napari: add slide regions"):
                names = add_slide_regions(store, slide.metadata["oeem_slide"], regions, cfg.patches,
                                          cfg.slide.project_mpp, self._slide_mpp(), reader=cfg.slide.reader)
        except OEEMError as exc:
            show_error(str(exc))
            return []
        shapes.data = []
        self.state.changed.emit()  # the project box lists the new images
        show_info(f"added {len(names)} region(s) as training images ({label})")
        return names
