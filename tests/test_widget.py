"""The napari plugin in a real (headless, Xvfb) viewer: docking, layers, jobs, corrections, cancel, export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


from oeem_napari import _layers  # noqa: E402
from pipeline.store import ProjectStore  # noqa: E402

JOB_TIMEOUT_MS = 300_000





def wait_job(qtbot, w):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=JOB_TIMEOUT_MS)


def test_bad_project_path_shows_a_notification(widget, tmp_path, notes):
    assert not widget.open_project(tmp_path / "nothing.zarr")
    assert any("no project here" in n for n in notes)
    (tmp_path / "plain").mkdir()
    assert not widget.open_project(tmp_path / "plain")
    assert any("not an oeem project" in n for n in notes)
    import zarr

    from pipeline.store.project_store import STORE_VERSION

    zarr.open_group(str(tmp_path / "new.zarr"), mode="w").attrs["oeem_store_version"] = STORE_VERSION + 1
    assert not widget.open_project(tmp_path / "new.zarr")
    assert any("newer oeem-napari" in n for n in notes)
    assert widget.store is None  # nothing half-opened


def test_project_layers_have_fixed_names_shapes_and_dtypes(widget, project_copy):
    store, _ = project_copy
    assert widget.open_project(store.path)
    name = store.names("train")[0]
    widget.image_combo.setCurrentText(name)
    layers = widget.viewer.layers
    h, w = store.shape(name)
    for layer_name in (_layers.IMAGE, _layers.MASK, _layers.CAM_GLAND, _layers.CAM_NON_GLAND, _layers.PSEUDO,
                       _layers.WEIGHT, _layers.PREDICTION):
        assert layer_name in layers, layer_name
    assert layers[_layers.IMAGE].data.shape == (h, w, 3)
    assert layers[_layers.CAM_GLAND].data.dtype == np.float32 and layers[_layers.CAM_GLAND].data.shape == (h, w)
    assert layers[_layers.CAM_GLAND].blending == "additive"
    assert layers[_layers.PSEUDO].data.dtype == np.uint8 and isinstance(layers[_layers.PSEUDO].data, np.ndarray)
    assert layers[_layers.WEIGHT].colorbar.visible
    assert layers[_layers.PREDICTION].data.shape == (h, w)
    # the same names on another image (one layer per name, not duplicated), keeping the user's toggles
    layers[_layers.PREDICTION].visible = True
    layers[_layers.CAM_GLAND].opacity = 0.25
    other = store.names("train")[1]
    widget.image_combo.setCurrentText(other)
    assert [lyr.name for lyr in layers].count(_layers.PSEUDO) == 1
    assert layers[_layers.PREDICTION].visible and layers[_layers.CAM_GLAND].opacity == 0.25
    assert layers[_layers.IMAGE].data.shape[:2] == store.shape(other)


def test_switching_images_fills_the_same_layers_and_the_editable_one_anew(widget, project_copy):
    """A layer both images have gets the new data in place (no napari layer removal, each of which collects
    garbage); the pseudo-mask is a new layer, so an undo never reaches into the image before; a layer that comes
    back takes its place in the fixed order."""
    store, _ = project_copy
    assert widget.open_project(store.path)
    first, other = store.names("train")[:2]
    widget.image_combo.setCurrentText(first)
    layers = widget.viewer.layers
    for lyr in layers:  # a mark on each layer object (the dock's viewer hands out proxies: `is` cannot tell)
        lyr.metadata["test-mark"] = lyr.name
    widget.image_combo.setCurrentText(other)
    for name in (_layers.IMAGE, _layers.CAM_GLAND, _layers.PREDICTION, _layers.GLANDS):
        assert layers[name].metadata.get("test-mark") == name, name
    assert "test-mark" not in layers[_layers.PSEUDO].metadata
    assert np.array_equal(np.asarray(layers[_layers.PREDICTION].data), store.read(other, "prediction"))
    assert np.array_equal(layers[_layers.GLANDS].data, store.read(other, "instances"))
    assert np.array_equal(layers[_layers.PSEUDO].data, store.labels(other)[0])
    cam = store.read(other, "cam")[1]
    assert layers[_layers.CAM_GLAND].contrast_limits[1] == pytest.approx(float(cam.max()), rel=1e-5)
    layers.remove(_layers.PREDICTION)  # as if the first image had none: it comes back between its neighbours
    widget.image_combo.setCurrentText(first)
    shown = [lyr.name for lyr in layers if lyr.name in _layers.ORDER]
    assert _layers.PREDICTION in shown and shown == sorted(shown, key=_layers.ORDER.index)


def test_tiny_preset_end_to_end_from_the_widget(widget, small_folder, tmp_path, qtbot):
    target = tmp_path / "w.oeem.zarr"
    widget.create_project(str(small_folder), str(target))
    wait_job(qtbot, widget)
    assert widget.store is not None and widget.store.path == target
    widget.preset_combo.setCurrentText("tiny")
    widget.preset_combo.textActivated.emit("tiny")  # what picking it does: the form takes the preset's values
    widget.epochs_spin.setValue(1)
    widget.iter_spin.setValue(4)
    widget.run_stage("all")
    assert not widget.stage_buttons["all"].isEnabled()  # one job at a time
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "done"
    assert "evaluation-test" in widget.last_result
    saved = json.loads((target / "runs" / "config.json").read_text())
    assert saved["preset"] == "tiny" and saved["selftrain"]["rounds"] == 0 and saved["classifier"]["epochs"] == 1
    assert widget.store.load_run("segmentation")["iterations_run"] == 4
    layers = widget.viewer.layers
    for layer_name in (_layers.CAM_GLAND, _layers.PSEUDO, _layers.PREDICTION, _layers.WEIGHT):
        assert layer_name in layers


def _pixel_with(labels: np.ndarray, value: int, away_from=None, margin: int = 12) -> tuple[int, int]:
    """A pixel holding ``value`` whose whole brush neighbourhood holds it too (so a stroke there changes it)."""
    from scipy import ndimage

    inside = ndimage.binary_erosion(labels == value, iterations=margin)
    ys, xs = np.nonzero(inside)
    order = np.argsort((ys - labels.shape[0] / 2) ** 2 + (xs - labels.shape[1] / 2) ** 2)
    for k in order:
        if away_from is None or max(abs(ys[k] - away_from[0]), abs(xs[k] - away_from[1])) > 3 * margin:
            return int(ys[k]), int(xs[k])
    raise AssertionError(f"no pixel of class {value} with room for a brush")


def test_painted_correction_is_saved_and_used_by_retraining(widget, project_copy, qtbot):
    store, _ = project_copy
    widget.open_project(store.path)
    name = widget.current
    layer = widget.viewer.layers[_layers.PSEUDO]
    before = layer.data.copy()
    first = _pixel_with(before, 0)
    layer.selected_label = 1
    layer.brush_size = 9
    layer.paint(first, 1)  # mark a missed gland
    qtbot.waitUntil(lambda: store.has(name, "corrected"), timeout=5000)
    reopened = ProjectStore.open(store.path)  # as after closing napari
    corrected = reopened.read(name, "corrected")
    assert corrected[first] == 1
    changed = corrected != before
    assert 20 < changed.sum() < 200  # one brush dab, nothing else
    verified = reopened.read(name, "verified")
    assert np.array_equal(verified.astype(bool), changed)
    assert f"{int(changed.sum()):,} px corrected in 1 image" in widget.corrections_label.text()
    # a second stroke (erase a gland elsewhere), then undo restores the first state
    second = _pixel_with(corrected, 1, away_from=first)
    layer.paint(second, 0)
    qtbot.waitUntil(lambda: len(store.correction_history(name)) == 2, timeout=5000)
    assert ProjectStore.open(store.path).read(name, "corrected")[second] == 0
    widget.undo()
    assert np.array_equal(widget.viewer.layers[_layers.PSEUDO].data, corrected)
    assert np.array_equal(ProjectStore.open(store.path).read(name, "corrected"), corrected)
    # retraining on corrected labels sees the painted pixels as clean
    widget.labels_combo.setCurrentText("corrected")
    widget.iter_spin.setValue(2)
    # two iterations cannot match the trained model: the guard would put it back; a tolerance this wide insists
    widget.settings.fields["update.tolerance"].value = "100"
    widget.run_stage("segmentation")
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "done"
    rec = store.load_run("segmentation")
    assert rec["config"]["label_source"] == "corrected"
    assert rec["clean_pixels_in_tiles"] >= int(changed.sum())


def test_label_values_other_than_the_two_classes_are_refused(widget, project_copy, qtbot, notes):
    store, _ = project_copy
    widget.open_project(store.path)
    layer = widget.viewer.layers[_layers.PSEUDO]
    layer.selected_label = 5
    assert layer.selected_label == 1
    data = layer.data.copy()
    data[:5, :5] = 7
    layer.data = data
    layer.events.paint()  # as a stroke would
    widget.keeper.flush()
    assert not (widget.viewer.layers[_layers.PSEUDO].data == 7).any()
    assert any("not classes" in n for n in notes)


def start_long_training(w, store, qtbot, steps_before: int) -> None:
    """Open the project, start a segmentation run far too long to finish, and wait until it is under way."""
    w.open_project(store.path)
    w.iter_spin.setValue(100_000)
    steps = []
    w.runner.progressed.connect(lambda p: steps.append(p.step))
    w.run_stage("segmentation")
    qtbot.waitUntil(lambda: len(steps) >= steps_before, timeout=JOB_TIMEOUT_MS)


def test_cancel_keeps_the_checkpoint(widget, project_copy, qtbot):
    store, _ = project_copy
    start_long_training(widget, store, qtbot, 2)
    widget.cancel()
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "cancelled"
    ck = torch.load(store.checkpoint_path("segmentation"), weights_only=True)
    assert 2 <= ck["iteration"] < 100_000


def test_closing_napari_during_training_leaves_a_valid_store(make_napari_viewer, project_copy, qtbot):
    store, _ = project_copy
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    start_long_training(w, store, qtbot, 1)
    viewer.close()
    worker = w.runner.worker
    assert worker is None or not worker.is_running  # stopped before napari finished closing
    again = ProjectStore.open(store.path)
    ck = torch.load(again.checkpoint_path("segmentation"), weights_only=True)
    assert 1 <= ck["iteration"] < 100_000
    assert again.read(again.names("train")[0], "pseudo").dtype == np.uint8


def test_export_then_reopen_gives_the_same_mask(widget, project_copy, tmp_path):
    store, _ = project_copy
    widget.open_project(store.path)
    name = widget.current
    for fmt, suffix in (("png", "_anno.png"), ("tiff", "_anno.tif"), ("zarr", "_anno.zarr")):
        paths = widget.export(str(tmp_path / fmt), fmt, "corrected")
        path = next(p for p in paths if p.name == f"{name}{suffix}")
        layers = widget.viewer.open(path, plugin="oeem-napari")
        assert np.array_equal(np.asarray(layers[-1].data), store.read(name, "pseudo"))


def test_exporting_to_an_unwritable_place_notifies(widget, project_copy, tmp_path, notes):
    store, _ = project_copy
    widget.open_project(store.path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert widget.export(str(blocker / "sub"), "png") == []
    assert any("cannot create the export folder" in n for n in notes)


def test_sample_data_and_reader_are_registered(make_napari_viewer, project_copy):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("oeem-napari", "synthetic_glands")
    assert [lyr.name for lyr in layers] == ["H&E (synthetic)", _layers.MASK]
    store, _ = project_copy
    layers = viewer.open(store.path, plugin="oeem-napari")
    assert _layers.IMAGE in [lyr.name for lyr in layers]


def test_images_of_different_sizes_switch_cleanly(widget, tmp_path, qtbot, notes):
    """GlaS images differ in size; switching images must never mix shapes between layers."""
    from conftest import write_pair

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_pair(folder, "train_1", seed=1, size=(160, 192))
    write_pair(folder, "train_2", seed=2, size=(224, 130))
    widget.create_project(str(folder), str(tmp_path / "mixed.oeem.zarr"))
    wait_job(qtbot, widget)
    qtbot.waitUntil(lambda: any("2 training images: 2 named train_*" in n for n in notes), timeout=5000)
    for name, shape in (("train_2", (224, 130)), ("train_1", (160, 192)), ("train_2", (224, 130))):
        widget.image_combo.setCurrentText(name)
        for layer in widget.viewer.layers:
            if layer.name in (_layers.IMAGE, _layers.MASK):
                assert tuple(layer.data.shape[:2]) == shape, (name, layer.name)


def test_settings_form_covers_every_setting_and_drives_the_next_run(widget, project_copy, qtbot, notes):
    import dataclasses

    from pipeline.config import PipelineConfig

    store, _ = project_copy
    widget.open_project(store.path)

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            yield from leaves(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [f"{prefix}{f.name}"]

    expected = {k for k in leaves(PipelineConfig()) if k.split(".")[0] != "preset"}
    assert set(widget.settings.fields) == expected  # generated: a new setting appears without Qt code
    assert "stain" in widget.settings.fields["segmentation.stain_jitter"].tooltip  # config.py's comment
    # the form shows the project's saved settings
    saved = json.loads((store.path / "runs" / "config.json").read_text())
    assert widget.settings.fields["segmentation.iterations"].value == saved["segmentation"]["iterations"]
    # a bad value: one notification, no job
    widget.settings.fields["segmentation.lr"].value = "fast"
    assert widget.run_stage("segmentation") is None
    assert any("'segmentation.lr'" in n and "not a number" in n for n in notes)
    # change values -> saved with the project -> used by the next run
    widget.settings.fields["segmentation.lr"].value = "0.02"
    widget.settings.fields["segmentation.stain_jitter"].value = "0.1"
    widget.settings.fields["segmentation.rotate90"].value = False
    widget.settings.fields["inference.scales"].value = "1, 1.25"
    widget.iter_spin.setValue(2)
    widget.loss_combo.setCurrentText("ce")
    widget.run_stage("segmentation")
    wait_job(qtbot, widget)
    cfg = json.loads((store.path / "runs" / "config.json").read_text())
    assert cfg["segmentation"]["lr"] == 0.02 and cfg["inference"]["scales"] == [1.0, 1.25]
    record = store.load_run("segmentation")
    assert record["config"]["stain_jitter"] == 0.1 and record["config"]["rotate90"] is False
    assert record["config"]["loss"] == "ce" and record["iterations_run"] == 2
    # reopening shows them again
    widget.open_project(store.path)
    assert widget.settings.fields["segmentation.stain_jitter"].value == "0.1"


def press(widget, key: str) -> None:
    """A key press as the canvas delivers it (napari's keymap handler, the same path as a real key)."""
    handler = widget.viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_label_review_with_keyboard_shortcuts_survives_a_reopen(widget, project_copy, qtbot):
    from pipeline.review.state import review_state

    store, _ = project_copy
    widget.open_project(store.path)
    assert "no ranking yet" in widget.review_label.text()
    widget.settings.fields["ranking.threshold"].value = "0.2"  # the tiny model's evidence is weak
    widget.settings.fields["ranking.trees"].value = 10
    widget.run_stage("rank")
    wait_job(qtbot, widget)
    assert widget.status_label.text() == "done"
    widget.next_region()
    assert widget.regions, "no region ranked on the sample data"
    first = widget.regions[widget.region_table.currentRow()]
    assert widget.region_table.item(widget.region_table.currentRow(), 0).text() in ("gland", "non-gland")
    outlines = widget.viewer.layers[_layers.CONFUSING]
    assert outlines.contour == 2 and not outlines.editable
    cy, cx = _layers.camera(widget.viewer).center[-2:]
    assert abs(cy - (first.bbox[0] + first.bbox[2]) / 2) < 1 and abs(cx - (first.bbox[1] + first.bbox[3]) / 2) < 1
    press(widget, "Shift-A")  # accept
    state = review_state(store)
    assert state["state"] == {first.key: "accepted"}
    pixels = store.read(first.image, "regions") == first.id
    corrected, verified = store.correction(first.image)
    assert (corrected[pixels] == first.suggested_label).all() and verified[pixels].all()
    assert "reviewed 1 of" in widget.review_label.text()
    second = widget.regions[widget.region_table.currentRow()]  # accept moved on to the next region
    assert second.key != first.key
    press(widget, "Shift-S")  # skip
    assert review_state(store)["state"] == {first.key: "accepted", second.key: "skipped"}
    # as after restarting napari
    widget.open_project(store.path)
    widget.image_combo.setCurrentText(first.image)
    row = next(k for k, r in enumerate(widget.regions) if r.key == first.key)
    assert widget.region_table.item(row, 3).text() == "accepted"
    assert "reviewed 2 of" in widget.review_label.text()
    press(widget, "Shift-U")
    press(widget, "Shift-U")
    assert review_state(store)["reviewed"] == 0
    assert not store.has(first.image, "corrected")


def test_a_slide_opens_lazily_is_predicted_and_gives_training_regions(widget, project_copy, tmp_path, qtbot,
                                                                     notes):
    from pipeline.io.synth import write_synthetic_slide

    store, _ = project_copy
    slide = tmp_path / "scan.tif"
    write_synthetic_slide(slide, (768, 1024), 0.6, mpp=0.31, tile=256, min_side=256)  # "40x": resampled x0.5
    viewer = widget.viewer
    (opened,) = viewer.open(str(slide), plugin="oeem-napari")  # the reader contribution
    assert opened.multiscale and len(opened.data) == 3 and opened.metadata["mpp"] == pytest.approx(0.31)
    assert tuple(opened.scale) == pytest.approx((0.31, 0.31))
    viewer.layers.clear()
    assert widget.open_project(store.path)
    layer = widget.open_slide(slide)
    assert layer.multiscale and _layers.SLIDE_REGIONS in viewer.layers
    assert _layers.scale_bar(viewer).visible
    if hasattr(layer, "units"):  # napari 0.6+: the scale bar reads microns
        assert str(layer.units[-1]) == "micrometer"
    widget.predict_combo.setCurrentIndex(0)  # fast prediction
    assert widget.predict_slide() is not None
    wait_job(qtbot, widget)
    pred = viewer.layers[_layers.SLIDE_PREDICTION]
    assert tuple(pred.scale) == pytest.approx((0.62, 0.62))
    assert pred.data.shape == (384, 512)  # the project's 0.62 µm/px: half the scan's pixels
    assert any("resampled" in n for n in notes)
    from napari.layers import Labels

    opened = [lyr for lyr in viewer.open(str(pred.metadata["oeem_slide_prediction"]), plugin="oeem-napari")
              if isinstance(lyr, Labels)]
    (again,) = [lyr for lyr in opened if lyr.name.startswith(_layers.SLIDE_PREDICTION)]
    assert again.data.shape == (384, 512)
    # its glands as objects too, one id each, on exactly the mask's pixels
    (glands,) = [lyr for lyr in opened if lyr.name.startswith(_layers.SLIDE_GLANDS)]
    np.testing.assert_array_equal(np.asarray(glands.data) > 0, np.asarray(again.data) > 0)
    # a rectangle drawn on the regions layer (its data are level-0 pixels) becomes a training image
    shapes = viewer.layers[_layers.SLIDE_REGIONS]
    shapes.add_rectangles(np.array([[100, 200], [500, 700]]))
    widget.region_label_combo.setCurrentText("non-gland")
    (name,) = widget.add_drawn_regions()
    assert name == "scan_x200_y100" and store.shape(name) == (200, 250)
    assert (store.read(name, "patch_labels") == [1, 0]).all()
    assert len(shapes.data) == 0 and widget.image_combo.findText(name) >= 0


def test_the_dock_fits_a_1000_px_screen_and_its_table_headers_read_whole(make_napari_viewer, project_copy, qtbot):
    """On a 1600x1000 screen (the Xvfb of `make test`) napari's window must not grow past the screen: the panels
    scroll, the rarely used ones start folded. Measured: 1222 px when the dock was one column of group boxes."""
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    window = w.window()  # napari's main window, the dock's top level
    assert window is not w
    screen = window.screen().availableGeometry()
    store, _ = project_copy
    assert w.open_project(store.path)
    qtbot.wait(50)
    assert window.frameGeometry().height() <= min(screen.height(), 1000)
    assert not w.export_panel.unfolded and not w.slides.unfolded and not w.model_panel.unfolded  # now and then
    assert not w.weak_labels.unfolded  # every image has a mask: nothing to tag
    # the pathologist's settings on top, the rest under Advanced
    assert w.settings.basic.native.isVisibleTo(w) and not w.settings_panel.tabs.isVisibleTo(w)
    for panel in (w.settings_panel.advanced, w.export_panel, w.model_panel, w.slides, w.weak_labels):  # it scrolls
        panel.unfold()
    qtbot.wait(50)
    assert w.settings_panel.tabs.isVisibleTo(w)
    assert window.frameGeometry().height() <= min(screen.height(), 1000)
    assert window.frameGeometry().width() <= screen.width()
    header = w.region_table.horizontalHeader()
    for col in range(w.region_table.columnCount()):
        text = w.region_table.horizontalHeaderItem(col).text()
        assert header.sectionSize(col) >= header.fontMetrics().horizontalAdvance(text), text
    w.runner.shutdown()


def test_review_keys_are_on_the_project_layers_and_the_review_box_never_the_viewer(widget, project_copy):
    import napari
    from napari.components import ViewerModel
    from napari.utils.key_bindings import coerce_keybinding
    from qtpy.QtGui import QShortcut

    from oeem_napari._panels.review import KEYS

    keys = {coerce_keybinding(k) for k in KEYS}
    viewer = widget.viewer
    store, _ = project_copy
    widget.open_project(store.path)
    for keymap in (viewer.keymap, napari.Viewer.class_keymap, ViewerModel.class_keymap):
        assert not keys & set(keymap)  # napari's and other plugins' keys are left alone
    project_layers = [lyr for lyr in viewer.layers if lyr.name in _layers.ORDER]
    assert _layers.PSEUDO in [lyr.name for lyr in project_layers]
    for layer in project_layers:
        assert keys <= set(layer.keymap), layer.name
    assert not keys & set(viewer.add_points(name="mine").keymap)  # a layer of the user's keeps its own keys
    # on the review box too (after clicking a row the focus is there, not on the canvas)
    shortcuts = widget.review.findChildren(QShortcut)
    assert {s.key().toString() for s in shortcuts} == {k.replace("-", "+") for k in KEYS}
    press(widget, "Shift-N")  # through the active layer (the pseudo-mask): no ranking yet, nothing breaks


def test_loading_the_plugin_does_not_import_torch():
    """torch takes seconds and a lot of memory to import: only a job that runs needs it."""
    import subprocess
    import sys

    code = "import sys, oeem_napari._widget; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
