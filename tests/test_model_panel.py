"""The dock's Model file box in a real (headless, Xvfb) viewer with no project: a colleague's model file loaded,
the images on screen predicted with it (the same masks as ``predict_image``), a damaged file named in one
notification, cancel, and a slide predicted with the file."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.layers import Labels  # noqa: E402

from oeem_napari import _layers  # noqa: E402
from pipeline.io.data import read_image  # noqa: E402
from pipeline.stages.model_file import load_model_file  # noqa: E402
from pipeline.stages.predict_files import predict_image  # noqa: E402
from pipeline.store.project import sample_data_folder  # noqa: E402

JOB_TIMEOUT_MS = 300_000




@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    w.device_combo.setCurrentText("cpu")  # the same device as the reference masks
    w.predict_combo.setCurrentIndex(1)  # the model's own prediction settings, not the one-scale "fast"
    yield w
    w.runner.shutdown()


def wait_job(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=JOB_TIMEOUT_MS)


def loaded(widget, qtbot, path):
    assert widget.load_model(path) is not None
    wait_job(qtbot, widget)
    return widget.state.model


def test_a_model_file_predicts_the_images_shown_without_a_project(widget, model_file, qtbot, notes):
    image = read_image(sample_data_folder() / "testA_1.png")
    viewer = widget.viewer
    viewer.add_image(image, name="testA_1")
    assert widget.store is None
    trained = loaded(widget, qtbot, model_file)
    assert trained is not None and trained.source == str(model_file)
    text = widget.model_panel.model_label.text()
    for part in ("sample.oeem-model", f"{trained.mpp:g} µm/px", f"{trained.record['iterations']} iterations",
                 "mIoU"):
        assert part in text, (part, text)
    assert "the model's" in widget.model_panel.mpp_spin.text()
    assert widget.predict_shown_images() is not None
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "done"
    layer = viewer.layers["testA_1 prediction"]
    assert isinstance(layer, Labels)
    assert np.allclose(layer.colormap.color_dict[1], _layers.GLAND_COLOURS[_layers.PREDICTION])  # as the project's
    reference = load_model_file(model_file)
    assert np.array_equal(layer.data, predict_image(reference, image.copy(), reference.mpp, "cpu"))
    assert any("predicted 1 image(s)" in n for n in notes)
    # µm/px given: resampled to the model's and back; the same layer takes the new mask, keeping its opacity
    layer.opacity = 0.8
    widget.model_panel.mpp_spin.setValue(trained.mpp / 2)
    widget.predict_shown_images()
    wait_job(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers].count("testA_1 prediction") == 1
    half = predict_image(reference, image.copy(), trained.mpp / 2, "cpu")
    layer = viewer.layers["testA_1 prediction"]
    assert layer.opacity == pytest.approx(0.8) and np.array_equal(layer.data, half)
    assert layer.data.shape == image.shape[:2] and not np.array_equal(half, predict_image(
        reference, image.copy(), reference.mpp, "cpu"))  # really another prediction


def test_best_prediction_is_the_model_in_all_eight_orientations(widget, model_file, qtbot):
    """The dock's *best* prediction: the model file's own settings in all 8 orientations (``inference.dihedral``)."""
    from dataclasses import replace

    from oeem_napari._panels.settings import PREDICTION_MODES

    image = read_image(sample_data_folder() / "testA_1.png")
    widget.viewer.add_image(image, name="testA_1")
    trained = loaded(widget, qtbot, model_file)
    assert not trained.inference.dihedral and not widget.state.model_config(trained).inference.dihedral
    widget.predict_combo.setCurrentText(next(m for m in PREDICTION_MODES if m.startswith("best")))
    cfg = widget.state.model_config(trained)
    assert cfg.inference.dihedral and cfg.inference.scales == trained.inference.scales
    widget.predict_shown_images()
    wait_job(qtbot, widget)
    reference = load_model_file(model_file)
    best = replace(reference, inference=replace(reference.inference, dihedral=True))
    mask = widget.viewer.layers["testA_1 prediction"].data
    assert np.array_equal(mask, predict_image(best, image.copy(), reference.mpp, "cpu"))


def test_with_a_project_open_its_image_shown_is_predicted_by_name(widget, model_file, project_copy, qtbot):
    store, _ = project_copy
    assert widget.open_project(store.path)
    loaded(widget, qtbot, model_file)
    widget.predict_shown_images()
    wait_job(qtbot, widget)
    name = widget.current
    # the model file is the project's model: its mask is the project's own prediction
    assert np.array_equal(widget.viewer.layers[f"{name} prediction"].data, store.read(name, "prediction"))


def test_a_damaged_model_file_is_one_notification_naming_it(widget, model_file, tmp_path, qtbot, notes):
    widget.viewer.add_image(read_image(sample_data_folder() / "testA_1.png"), name="testA_1")
    bad = tmp_path / "from-a-colleague.oeem-model"
    data = model_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    loaded(widget, qtbot, bad)
    assert widget.state.model is None
    (note,) = [n for n in notes if "failed" in n]
    assert str(bad) in note and "damaged" in note and "Traceback" not in note and "\n" not in note
    assert widget.predict_shown_images() is None  # no model: told so, nothing runs
    assert any("load a model file first" in n for n in notes)
    assert not [lyr for lyr in widget.viewer.layers if isinstance(lyr, Labels)]


def test_cancel_keeps_the_images_already_predicted(widget, model_file, qtbot, notes, monkeypatch):
    import time

    from pipeline.stages import predict_files

    real = predict_files.predict_image

    def slow(*args):  # a large image on a large network: cancel comes while one is being predicted
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(predict_files, "predict_image", slow)
    image = read_image(sample_data_folder() / "testA_1.png")
    names = [f"tile {k}" for k in range(6)]
    for name in names:
        widget.viewer.add_image(image, name=name)
    loaded(widget, qtbot, model_file)
    widget.state.progressed.connect(lambda p: p.step == 1 and widget.cancel())  # the first image is shown
    widget.predict_shown_images()
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "cancelled"
    done = [n for n in names if f"{n} prediction" in widget.viewer.layers]
    assert 1 <= len(done) <= 2 and done == names[: len(done)]  # the one shown, and the one under way
    assert any("cancelled" in n for n in notes)


def test_a_slide_is_predicted_with_the_model_file_and_no_project(widget, model_file, tmp_path, qtbot):
    from pipeline.io.synth import write_synthetic_slide

    slide = tmp_path / "scan.tif"
    write_synthetic_slide(slide, (768, 1024), 0.6, mpp=0.31, tile=256, min_side=256)
    widget.open_slide(slide)
    assert widget.predict_slide(with_model=True) is None  # no model yet
    loaded(widget, qtbot, model_file)
    assert widget.predict_slide(with_model=True) is not None
    wait_job(qtbot, widget)
    pred = widget.viewer.layers[_layers.SLIDE_PREDICTION]
    assert pred.data.shape == (384, 512)  # the model's 0.62 µm/px: half the scan's pixels
    assert (tmp_path / "scan.prediction.ome.zarr").is_dir()  # beside the slide


def test_export_model_writes_the_open_projects_model_in_either_format(widget, project_copy, tmp_path, qtbot, notes):
    store, _ = project_copy
    assert widget.model_panel.export_model(tmp_path / "none.oeem-model") is None  # no project: told, nothing runs
    assert any("open a project first" in n for n in notes)
    assert widget.open_project(store.path)
    widget.model_panel.export_model(tmp_path / "shared")  # the suffix added
    wait_job(qtbot, widget)
    assert load_model_file(tmp_path / "shared.oeem-model").record["iterations"] > 0
    pytest.importorskip("bioimageio.spec", reason="the bioimageio extra")
    widget.model_panel.export_model(tmp_path / "shared.zip", "bioimageio")
    wait_job(qtbot, widget)
    assert any("model written to" in n and "shared.zip" in n for n in notes)
    loaded(widget, qtbot, tmp_path / "shared.zip")  # Load model… takes the package back
    assert widget.state.model.seg == load_model_file(tmp_path / "shared.oeem-model").seg
