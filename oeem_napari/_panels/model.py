"""Model file box (folded until needed): a trained model from a colleague (``*.oeem-model`` or a bioimage.io package,
made by ``oeem export-model``) segments the images on screen - tiles dragged onto napari, or the project's image
shown - with no training; *Whole slides > Predict with model file* does a slide. *Export model…* writes the open
project's model in either format. The model is loaded and used in background jobs
(torch is imported there, when one runs)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QDoubleSpinBox, QFileDialog, QGridLayout, QLabel, QPushButton

from oeem_napari import _layers
from oeem_napari._jobs import run_step
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import DockState
from pipeline.errors import OEEMError
from pipeline.progress import Progress

OEEM_FILTER, BIOIMAGEIO_FILTER = "OEEM model (*.oeem-model)", "bioimage.io package (*.zip)"
NO_MODEL = "no model loaded: Load model… a *.oeem-model file (`oeem export-model PROJECT FILE`)"


def describe(trained) -> str:
    """What a loaded model is: its file, network, µm/px, training length and the scores its record holds."""
    rec = trained.record or {}
    head = (f"{Path(trained.source).name}: {trained.seg.decoder} on {trained.seg.backbone.name}, "
            f"{trained.mpp:g} µm/px, {rec.get('iterations', '?')} iterations")
    scores = []
    for split, s in (rec.get("scores") or {}).items():
        if "mIoU" in s:
            obj = f", object F1 {s['object_F1']:.1f}" if isinstance(s.get("object_F1"), (int, float)) else ""
            scores.append(f"{split}: mIoU {s['mIoU']:.1f}{obj}")
    return f"{head}\n{'; '.join(scores) or 'no validation or test scores in the file'}"


def rgb8(data) -> np.ndarray:
    """An image layer's data as writable uint8 RGB (alpha dropped, 16-bit and 0-1 float scaled)."""
    image = np.asarray(data)[..., :3]
    if image.dtype == np.uint16:
        image = image // 257
    elif image.dtype.kind == "f":
        image = np.clip(image * (255 if image.max() <= 1 else 1) + 0.5, 0, 255)
    return np.array(image, dtype=np.uint8)


def predict_layers(trained, todo: list[tuple], device: str, done: list):
    """The job: each (name, image, µm/px, placement) of ``todo`` predicted in turn; each mask is put in ``done``
    before the progress event that announces it, so the box shows it as soon as it is ready."""

    from pipeline.device import place, resolve_device
    from pipeline.stages.predict_files import predict_image

    dev = resolve_device(device)
    place(trained.model, dev)
    for k, (name, image, mpp, placement) in enumerate(todo):
        yield Progress("predict", k, len(todo), name)
        done.append((name, placement, predict_image(trained, image, mpp, dev)))
        yield Progress("predict", k + 1, len(todo), name)
    return len(todo)


class ModelPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Model file")
        self.state = state
        self._done: list = []  # masks the running prediction finished, not yet shown
        grid = self.body_layout(QGridLayout)
        load_btn = QPushButton("Load model…")
        load_btn.setToolTip("a trained model file (*.oeem-model, or a bioimage.io package .zip, made by `oeem "
                            "export-model PROJECT FILE [--format bioimageio]`); no project needed")
        load_btn.clicked.connect(self._browse_model)
        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(0.0, 100.0)
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setSpecialValueText("µm/px: the model's")
        self.mpp_spin.setToolTip("microns per pixel of the images shown; left at the model's, they are predicted "
                                 "as they are (a project's image: at the project's µm/px); else resampled to the "
                                 "model's and the mask back to the image's size")
        self.model_label = QLabel(NO_MODEL)
        self.model_label.setWordWrap(True)
        self.predict_btn = QPushButton("Predict shown images")
        self.predict_btn.setToolTip("every RGB image layer (or the project's image shown) with the loaded model, "
                                    "one by one, each into a Labels layer '<image> prediction'")
        self.predict_btn.clicked.connect(self.predict_shown_images)
        grid.addWidget(load_btn, 0, 0)
        grid.addWidget(self.mpp_spin, 0, 1)
        grid.addWidget(self.model_label, 1, 0, 1, 2)
        grid.addWidget(self.predict_btn, 2, 0, 1, 2)
        self.export_btn = QPushButton("Export model…")
        self.export_btn.setToolTip("the open project's segmentation model to one file: an .oeem-model for oeem, or "
                                   "a bioimage.io package (.zip: the model zoo, QuPath, deepImageJ, ilastik; needs "
                                   "`pip install 'oeem-napari[bioimageio]'`)")
        self.export_btn.clicked.connect(self._browse_export)
        grid.addWidget(self.export_btn, 3, 0, 1, 2)
        state.busy.connect(lambda busy: self.predict_btn.setEnabled(not busy))
        state.busy.connect(lambda busy: self.export_btn.setEnabled(not busy))
        state.progressed.connect(self._show_done)

    @property
    def viewer(self):
        return self.state.viewer

    # ------------------------------------------------------------------ loading
    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a trained model", "", "OEEM models (*.oeem-model *.zip)")
        if path:
            self.load_model(path)

    def load_model(self, path: str | Path):
        """Read and check the model file in the background; the box then says what it is."""
        def load():
            from pipeline.stages.model_file import load_model_file

            return load_model_file(path, "cpu")

        return self.state.start("Load model", run_step("load model", load), after=self._on_loaded)

    def _on_loaded(self, ok: bool, trained) -> None:
        if not ok or trained is None:
            return  # the job's notification names the file and what is wrong with it
        self.state.model = trained
        self.model_label.setText(describe(trained))
        self.mpp_spin.setSpecialValueText(f"{trained.mpp:g} µm/px (the model's)")
        show_info(f"model loaded: {Path(trained.source).name}")

    # ------------------------------------------------------------------ exporting the project's model
    def _browse_export(self) -> None:
        path, chosen = QFileDialog.getSaveFileName(self, "Export the project's model", "",
                                                   f"{OEEM_FILTER};;{BIOIMAGEIO_FILTER}")
        if path:
            self.export_model(path, "bioimageio" if chosen == BIOIMAGEIO_FILTER or path.endswith(".zip") else "oeem")

    def export_model(self, path: str | Path, fmt: str = "oeem"):
        """Write the open project's model (``oeem export-model``) in the background; a notification says where."""
        store = self.state.store
        if store is None:
            show_error("open a project first: its model is what is exported")
            return None

        def export():
            if fmt == "bioimageio":
                from pipeline.io.bioimageio import export_project

                return export_project(store, Path(path).with_suffix(".zip"))
            from pipeline.stages.model_file import SUFFIX, export_model
            from pipeline.store.project import project_config

            cfg = project_config(store, save=False)
            target = Path(path) if str(path).endswith(SUFFIX) else Path(str(path) + SUFFIX)
            return export_model(store, target, cfg.inference, cfg.slide.project_mpp)

        return self.state.start("Export model", run_step("export model", export), after=self._on_exported)

    def _on_exported(self, ok: bool, path) -> None:
        if ok and path is not None:
            show_info(f"model written to {path}")

    # ------------------------------------------------------------------ predicting what is shown
    def shown_images(self) -> list[tuple]:
        """(name, uint8 RGB, µm/px, placement) of every 2-D RGB image layer; the project's H&E by its image's name.
        Multiscale layers (slides) are left to *Whole slides*."""
        given, out = self.mpp_spin.value() or None, []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or not layer.rgb or layer.multiscale or layer.data.ndim != 3:
                continue
            name, mpp = layer.name, given or self.state.model.mpp
            if layer.name == _layers.IMAGE and self.state.store is not None and self.state.current:
                name, mpp = self.state.current, given or self.state.config(save=False).slide.project_mpp
            out.append((name, rgb8(layer.data), mpp, {"scale": tuple(layer.scale), "translate":
                                                      tuple(layer.translate)}))
        return out

    def predict_shown_images(self):
        """Predict every image shown with the loaded model, in the background; each mask appears when ready."""
        trained = self.state.model
        if trained is None:
            show_error("load a model file first (Model file > Load model…)")
            return None
        try:
            todo = self.shown_images()
            cfg = self.state.model_config(trained)
        except OEEMError as exc:
            show_error(str(exc))
            return None
        if not todo:
            show_error("no H&E image to predict: drag RGB images (PNG, TIFF, JPEG) onto napari or open a project")
            return None
        self._done = []
        job = predict_layers(dataclasses.replace(trained, inference=cfg.inference), todo, self.state.device(),
                             self._done)
        return self.state.start("Predict with model", job, after=self._on_predicted)

    def _show_done(self, *_args) -> None:
        while self._done:
            name, placement, mask = self._done.pop(0)
            target = f"{name} prediction"
            if target in self.viewer.layers and not isinstance(self.viewer.layers[target], Labels):
                self.viewer.layers.remove(self.viewer.layers[target])
            if target in self.viewer.layers:
                layer = self.viewer.layers[target]
                layer.data = mask
                layer.scale, layer.translate = placement["scale"], placement["translate"]
            else:
                self.viewer.add_labels(mask, name=target, colormap=_layers.label_colormap(_layers.PREDICTION),
                                       opacity=0.5, **placement)

    def _on_predicted(self, ok: bool, count) -> None:
        self._show_done()  # a cancelled run keeps the images it finished
        if ok:
            show_info(f"predicted {count} image(s) with {Path(self.state.model.source).name}")
