"""The dock's Weak labels box in a real (headless, Xvfb) viewer, driven by real key presses and mouse drags on the
canvas: the patch under the cursor, the whole image, brush strokes, rectangles and lassos, undo, proposals,
what to label next, progress, and errors as notifications."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from qtpy.QtCore import QPoint, Qt  # noqa: E402
from qtpy.QtTest import QTest  # noqa: E402

from oeem_napari import _layers  # noqa: E402
from oeem_napari._panels.weak_labels import ACTION_KEYS, IMAGE_KEYS, TAG_KEYS  # noqa: E402
from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND, UNLABELLED  # noqa: E402
from pipeline.review.tagging import Tagger  # noqa: E402
from pipeline.store import ProjectStore  # noqa: E402
from pipeline.store.project import create_project  # noqa: E402

H, W = 224, 280
NO = Qt.KeyboardModifier.NoModifier
LEFT = Qt.MouseButton.LeftButton




@pytest.fixture
def dock(make_napari_viewer, own_project, qtbot):
    viewer = make_napari_viewer(show=True)  # shown: the canvas takes real mouse events
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    viewer.window._qt_window.resize(1500, 950)
    assert w.open_project(own_project.path)
    qtbot.wait(100)  # the window laid out: the canvas has its size
    viewer.reset_view()
    yield w
    w.runner.shutdown()


# ---------------------------------------------------------------------------- real input on the canvas
def canvas(w):
    return w.viewer.window._qt_viewer.canvas.native


def screen(w, y: float, x: float) -> QPoint:
    """The canvas pixel that shows image pixel (y, x)."""
    cam, native = _layers.camera(w.viewer), canvas(w)
    cy, cx = cam.center[-2:]
    return QPoint(round((x - cx) * cam.zoom + native.width() / 2), round((y - cy) * cam.zoom + native.height() / 2))


def hover(w, qtbot, y: float, x: float) -> None:
    QTest.mouseMove(canvas(w), screen(w, y, x))
    qtbot.wait(10)
    cy, cx = w.viewer.cursor.position[-2:]
    assert abs(cy - y) < 2 and abs(cx - x) < 2  # the mapping is right: the viewer's cursor is there


def key(w, qtbot, k, modifier=NO) -> None:
    QTest.keyClick(canvas(w), k, modifier)
    qtbot.wait(10)


def drag(w, qtbot, points) -> None:
    """Press at the first point, move through the others, release at the last."""
    native = canvas(w)
    QTest.mousePress(native, LEFT, NO, screen(w, *points[0]))
    for y, x in points[1:]:
        QTest.mouseMove(native, screen(w, y, x))
        qtbot.wait(5)
    QTest.mouseRelease(native, LEFT, NO, screen(w, *points[-1]))
    qtbot.wait(20)


def saved(store, name: str) -> np.ndarray:
    """The tags on disk, as after closing napari."""
    found = ProjectStore.open(store.path).patch_tags(name)
    return np.zeros(0, np.uint8) if found is None else found[0]


def colour(w, patch: int) -> np.ndarray:
    return np.asarray(w.viewer.layers[_layers.WEAK_LABELS].get_color(patch + 1), float)


def tag_colour(tag: int, alpha: float = 1.0) -> np.ndarray:
    return np.array([*_layers.TAG_COLOURS[tag][:3], alpha])


def progress_matches(w, store) -> None:
    s = ProjectStore.open(store.path).tag_summary()
    text = w.weak_labels.progress_label.text()
    assert (f"{s['patches']} patches in {s['images']} of 2 images - {s['gland_only']} gland only, "
            f"{s['no_gland']} no gland, {s['both']} both") in text, text


# ---------------------------------------------------------------------------- tests
def test_own_images_open_with_the_grid_and_keys_tag_the_patch_under_the_cursor(dock, own_project, qtbot):
    w, viewer, store = dock, dock.viewer, own_project
    panel = w.weak_labels
    assert panel.unfolded  # images without masks: the box opens, with its overlay
    names = [lyr.name for lyr in viewer.layers]
    assert names[-4:] == list(_layers.WEAK_LAYERS)  # on top of the H&E
    fills, grid = viewer.layers[_layers.WEAK_LABELS], viewer.layers[_layers.WEAK_GRID]
    assert viewer.layers.selection.active.name == _layers.WEAK_LABELS
    assert not fills.editable and not grid.editable
    assert grid.contour == 1
    t = Tagger(store, "a", panel.tagger.cfg)
    cells = t.cells().astype(int)
    assert fills.data.shape == (H, W) and fills.data.max() == len(cells)
    for k, (y0, x0, y1, x1) in enumerate(cells):  # one number per cell, the cells drawn where they are
        assert (fills.data[y0:y1, x0:x1] == k + 1).all()
    assert colour(w, 0)[3] == 0 and np.allclose(grid.get_color(1), _layers.GRID_COLOUR)  # unlabelled: outline

    hover(w, qtbot, 30, 40)
    first = t.patch_at(30, 40)
    key(w, qtbot, Qt.Key.Key_1)
    tags = saved(store, "a")
    assert tags[first] == GLAND and np.count_nonzero(tags) == 1
    assert np.allclose(colour(w, first), tag_colour(GLAND)) and colour(w, first + 1)[3] == 0
    assert panel.tag == GLAND and panel.tag_buttons.checkedId() == GLAND
    hover(w, qtbot, 150, 200)
    second = t.patch_at(150, 200)
    key(w, qtbot, Qt.Key.Key_3)
    hover(w, qtbot, 30, 40)
    key(w, qtbot, Qt.Key.Key_2)  # the same patch again: the new tag replaces the old
    tags = saved(store, "a")
    assert tags[first] == NON_GLAND and tags[second] == BOTH and np.count_nonzero(tags) == 2
    assert np.allclose(colour(w, second), tag_colour(BOTH)) and np.allclose(colour(w, first), tag_colour(NON_GLAND))
    progress_matches(w, store)
    assert f"this image: 2 of {len(cells)} patches" in panel.progress_label.text()
    key(w, qtbot, Qt.Key.Key_0)
    assert saved(store, "a")[first] == UNLABELLED

    key(w, qtbot, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)  # Ctrl+1: the whole image
    assert (saved(store, "a") == GLAND).all()
    progress_matches(w, store)
    key(w, qtbot, Qt.Key.Key_U)  # undo: back one step
    tags = saved(store, "a")
    assert tags[second] == BOTH and np.count_nonzero(tags) == 1
    assert colour(w, first)[3] == 0 and np.allclose(colour(w, second), tag_colour(BOTH))
    progress_matches(w, store)
    assert saved(store, "b").size == 0  # the other image untouched


def test_the_keys_live_on_the_overlay_and_the_h_and_e_never_the_viewer(dock):
    import napari
    from napari.components import ViewerModel
    from napari.utils.key_bindings import coerce_keybinding

    viewer = dock.viewer
    keys = {coerce_keybinding(k) for k in (*TAG_KEYS, *IMAGE_KEYS, *ACTION_KEYS)}
    for keymap in (viewer.keymap, napari.Viewer.class_keymap, ViewerModel.class_keymap):
        assert not keys & set(keymap)
    for name in (_layers.WEAK_LABELS, _layers.WEAK_GRID, _layers.IMAGE):
        assert keys <= set(viewer.layers[name].keymap), name
    assert not keys & set(viewer.add_points(name="mine").keymap)
    dock.weak_labels.unfold(False)  # folded: no overlay, and the H&E has napari's keys again
    assert not set(_layers.WEAK_LAYERS) & {lyr.name for lyr in viewer.layers}
    assert not keys & set(viewer.layers[_layers.IMAGE].keymap)
    dock.weak_labels.unfold()
    assert all(name in viewer.layers for name in _layers.WEAK_LAYERS)


def test_a_brush_stroke_tags_the_patches_it_crosses_and_a_plain_drag_pans(dock, own_project, qtbot):
    w, store, panel = dock, own_project, dock.weak_labels
    t = Tagger(store, "a", panel.tagger.cfg)
    cam = _layers.camera(w.viewer)
    centre = tuple(cam.center)
    drag(w, qtbot, [(20, 20), (60, 80)])  # brush off: the view moves, nothing is tagged
    assert tuple(cam.center) != centre and saved(store, "a").size == 0
    w.viewer.reset_view()
    centre = tuple(cam.center)
    hover(w, qtbot, 200, 260)
    key(w, qtbot, Qt.Key.Key_B)
    assert panel.brush_btn.isChecked() and not w.viewer.layers[_layers.WEAK_LABELS].mouse_pan
    panel.set_tag(NON_GLAND)
    stroke = [(20, 20), (20, 90), (25, 170), (20, 260)]  # along the top row
    drag(w, qtbot, stroke)
    assert tuple(cam.center) == centre  # no panning while brushing
    along = t.patches_along(np.array(stroke, float))
    tags = saved(store, "a")
    assert set(np.flatnonzero(tags)) == set(along.tolist())
    assert (tags[along] == NON_GLAND).all() and len(along) >= 4
    assert all(t.corners[k][0] == 0 for k in along)
    for k in along:
        assert np.allclose(colour(w, k), tag_colour(NON_GLAND))
    key(w, qtbot, Qt.Key.Key_U)  # a stroke is one undo step
    assert not saved(store, "a").any()
    key(w, qtbot, Qt.Key.Key_B)
    assert not panel.brush_btn.isChecked() and w.viewer.layers[_layers.WEAK_LABELS].mouse_pan


def test_a_drawn_rectangle_or_lasso_tags_the_patches_inside_then_goes(dock, own_project, qtbot):
    w, store, panel = dock, own_project, dock.weak_labels
    t = Tagger(store, "a", panel.tagger.cfg)
    shapes = w.viewer.layers[_layers.WEAK_SHAPES]
    panel.set_tag(BOTH)
    panel.draw("add_rectangle")
    assert w.viewer.layers.selection.active.name == _layers.WEAK_SHAPES and shapes.mode == "add_rectangle"
    drag(w, qtbot, [(110, 10), (150, 100), (215, 200)])  # a rectangle drawn with the mouse
    qtbot.waitUntil(lambda: len(shapes.data) == 0, timeout=5000)  # used, then removed
    inside = np.zeros((H, W), bool)
    inside[110:216, 10:201] = True
    expected = set(t.patches_in(inside).tolist())
    tags = saved(store, "a")
    assert expected and set(np.flatnonzero(tags)) == expected and (tags[list(expected)] == BOTH).all()
    assert w.viewer.layers.selection.active.name == _layers.WEAK_LABELS  # the keys work again
    # a lasso: napari hands over a polygon
    panel.set_tag(GLAND)
    lasso = np.array([[5, 5], [5, 130], [100, 60]], float)
    shapes.add_polygons([lasso])
    qtbot.waitUntil(lambda: len(shapes.data) == 0, timeout=5000)
    from skimage.draw import polygon2mask

    lassoed = t.patches_in(polygon2mask((H, W), lasso))
    tags = saved(store, "a")
    assert len(lassoed) and (tags[lassoed] == GLAND).all()
    assert set(np.flatnonzero(tags)) == expected | set(lassoed.tolist())


def test_proposals_show_faint_and_accepting_them_keeps_the_pathologists_tags(dock, own_project, qtbot, notes):
    w, store, panel = dock, own_project, dock.weak_labels
    key(w, qtbot, Qt.Key.Key_P)  # no model and no tags yet: one notification, nothing else
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
    assert any("no proposals yet: tag some patches" in n for n in notes) and panel.tagger.proposals is None
    key(w, qtbot, Qt.Key.Key_A)
    assert any("no proposals yet" in n for n in notes) and saved(store, "a").size == 0
    mask = np.zeros((H, W), np.uint8)
    mask[:, :140] = 1  # a "prediction": gland on the left half (no training needed)
    store.write("a", "prediction", mask)
    t = Tagger(store, "a", panel.tagger.cfg)
    left, right = t.patch_at(50, 20), t.patch_at(50, 270)
    hover(w, qtbot, 50, 20)
    key(w, qtbot, Qt.Key.Key_2)  # the pathologist says: no gland here
    key(w, qtbot, Qt.Key.Key_P)
    qtbot.waitUntil(lambda: panel.tagger.proposals is not None, timeout=60_000)
    proposals = t.propose()
    assert np.array_equal(panel.tagger.proposals, proposals)
    assert np.allclose(colour(w, right), tag_colour(NON_GLAND, _layers.PROPOSAL_ALPHA))  # faint
    below = t.patch_at(150, 20)
    assert np.allclose(colour(w, below), tag_colour(GLAND, _layers.PROPOSAL_ALPHA))
    assert np.allclose(colour(w, left), tag_colour(NON_GLAND))  # a tag, not a proposal: full colour
    grid = w.viewer.layers[_layers.WEAK_GRID]  # a proposal's cell is outlined in its colour, a tag's faint
    assert np.allclose(grid.get_color(below + 1), tag_colour(GLAND)) and np.allclose(grid.get_color(left + 1),
                                                                                     _layers.GRID_COLOUR)
    assert not saved(store, "a")[right]  # shown, not saved
    key(w, qtbot, Qt.Key.Key_A)
    tags = saved(store, "a")
    assert tags[left] == NON_GLAND and np.array_equal(np.delete(tags, left), np.delete(proposals, left))
    assert np.allclose(colour(w, below), tag_colour(GLAND))
    progress_matches(w, store)
    key(w, qtbot, Qt.Key.Key_U)  # accepting all is one undo step
    tags = saved(store, "a")
    assert tags[left] == NON_GLAND and np.count_nonzero(tags) == 1


def test_next_to_label_shows_the_least_labelled_image_with_its_patches_outlined(dock, own_project, qtbot, notes):
    w, store, panel = dock, own_project, dock.weak_labels
    assert w.current == "a"
    hover(w, qtbot, 100, 100)
    key(w, qtbot, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    key(w, qtbot, Qt.Key.Key_N)  # with tags, in the background (the preview may have every image to look at)
    qtbot.waitUntil(lambda: not w.runner.busy and w.current == "b", timeout=30_000)
    assert w.image_combo.currentText() == "b"
    assert len(panel.suggested) == 5 and saved(store, "b").size == 0
    grid = w.viewer.layers[_layers.WEAK_GRID]
    for k in range(len(panel.tagger.tags)):
        expected = _layers.SUGGESTED_COLOUR if k in panel.suggested else _layers.GRID_COLOUR
        assert np.allclose(grid.get_color(k + 1), expected), k
    assert any("b: 0 of" in n and "magenta" in n for n in notes)
    hover(w, qtbot, 100, 100)
    key(w, qtbot, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert np.allclose(grid.get_color(panel.suggested[0] + 1), _layers.GRID_COLOUR)  # tagged: no longer outlined
    key(w, qtbot, Qt.Key.Key_N)
    qtbot.waitUntil(lambda: any("every training image is labelled" in n for n in notes), timeout=30_000)
    progress_matches(w, store)


def test_a_project_with_masks_keeps_the_box_folded(make_napari_viewer, small_folder, tmp_path):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    store = create_project(small_folder, tmp_path / "masked.oeem.zarr")
    assert w.open_project(store.path)
    assert not w.weak_labels.unfolded
    assert not set(_layers.WEAK_LAYERS) & {lyr.name for lyr in viewer.layers}
    assert "tagged: 0 patches in 0 of 6 images" in w.weak_labels.progress_label.text()


def test_a_project_held_by_another_process_is_a_notification_not_a_traceback(dock, own_project, qtbot, notes):
    code = textwrap.dedent(f"""
        import sys, time
        from pipeline.store.lock import project_writer
        with project_writer({str(own_project.path)!r}, "oeem labels import"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        hover(dock, qtbot, 30, 40)
        key(dock, qtbot, Qt.Key.Key_1)
        assert any("being written by oeem labels import" in n for n in notes)
        assert saved(own_project, "a").size == 0
        assert dock.weak_labels.tagger.tags.sum() == 0  # the overlay shows what is saved
    finally:
        holder.kill()
        holder.wait()
    key(dock, qtbot, Qt.Key.Key_1)  # free again: saved
    assert saved(own_project, "a").sum() == GLAND


def test_each_key_redraws_the_preview_in_the_background_and_the_newest_request_wins(dock, own_project, qtbot,
                                                                                    notes):
    w, store, panel = dock, own_project, dock.weak_labels
    layer = w.viewer.layers[_layers.PREVIEW]
    assert not layer.editable and not layer.data.any()
    qtbot.waitUntil(lambda: "no preview yet" in panel.preview_label.text(), timeout=10_000)
    t = Tagger(store, "a", panel.tagger.cfg)
    cells = t.cells()
    hover(w, qtbot, 50, 40)
    key(w, qtbot, Qt.Key.Key_1)
    hover(w, qtbot, 170, 240)
    key(w, qtbot, Qt.Key.Key_2)  # both classes tagged: the preview can learn
    qtbot.waitUntil(lambda: panel.preview is not None and layer.data.any(), timeout=20_000)
    assert panel.preview_label.text().startswith("preview:")

    def inside(y, x):
        y0, x0, y1, x1 = cells[t.patch_at(y, x)].astype(int)
        return float(layer.data[y0:y1, x0:x1].mean())

    assert inside(50, 40) > inside(170, 240)  # gland where it was told gland, not where it was told no gland
    # keys faster than a refresh: each returns at once, and the last preview has learned from every one of them
    for y, x in ((50, 150), (120, 40), (170, 130), (110, 250)):
        hover(w, qtbot, y, x)
        key(w, qtbot, Qt.Key.Key_2)
    qtbot.waitUntil(lambda: not panel._preview_running, timeout=20_000)
    assert panel.preview_model._fitted_on == (("a", store.tags_stamp("a")),)
    before = layer.data.copy()
    hover(w, qtbot, 120, 40)
    key(w, qtbot, Qt.Key.Key_1)
    qtbot.waitUntil(lambda: not np.array_equal(layer.data, before), timeout=20_000)
    key(w, qtbot, Qt.Key.Key_P)  # no model: the proposals are the preview's, at once
    assert panel.tagger.proposal_source == "preview" and panel.tagger.proposals is not None
    assert any("proposals from the preview" in n for n in notes)


def training_on_two_tags(make_napari_viewer, store, qtbot, monkeypatch):
    """The dock on ``store`` (tiny preset, not started by itself), two patches tagged by key, then *Train while
    tagging* switched on with chunks of 5 steps: (widget, weak labels panel)."""
    from pipeline.store.project import project_config

    monkeypatch.setenv("OEEM_SELF_CHECK", "0")  # the crash self-check has its own tests
    project_config(store, "tiny", {"preview.train_while_tagging": False}, save=True)  # the tiny preset: quick
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    viewer.window._qt_window.resize(1500, 950)
    assert w.open_project(store.path)
    qtbot.wait(100)
    viewer.reset_view()
    panel = w.weak_labels
    hover(w, qtbot, 50, 40)
    key(w, qtbot, Qt.Key.Key_1)
    hover(w, qtbot, 170, 240)
    key(w, qtbot, Qt.Key.Key_2)
    panel.live_chunk = 5
    panel.live_box.setChecked(True)
    return w, panel


def test_train_while_tagging_takes_over_the_preview_and_learns_each_new_tag(make_napari_viewer, own_project, qtbot,
                                                                            monkeypatch):
    import torch

    from pipeline.stages.classify import load_classifier

    store = own_project
    w, panel = training_on_two_tags(make_napari_viewer, store, qtbot, monkeypatch)
    assert w.runner.busy and w.runner.label == "Training while tagging"
    qtbot.waitUntil(lambda: "classifier training in the background" in panel.preview_label.text(), timeout=120_000)
    assert panel._live_shown == "a"

    def learned() -> str | None:
        path = store.checkpoint_path("classifier")
        return torch.load(path, weights_only=True)["live"]["tags"] if path.is_file() else None

    hover(w, qtbot, 120, 250)
    key(w, qtbot, Qt.Key.Key_2)  # a tag while it trains: the next checkpoint has learned it
    assert learned() != store.tags_fingerprint()
    qtbot.waitUntil(lambda: learned() == store.tags_fingerprint(), timeout=120_000)
    w.shutdown()  # napari closes mid-training: the job stops, its last checkpoint loads
    qtbot.waitUntil(lambda: not w.runner.busy and not panel.live_box.isChecked(), timeout=10_000)
    load_classifier(store, "cpu")


def test_a_stage_started_while_it_trains_stops_it_and_continues_from_it(make_napari_viewer, own_project, qtbot,
                                                                       monkeypatch):
    store = own_project
    w, panel = training_on_two_tags(make_napari_viewer, store, qtbot, monkeypatch)
    qtbot.waitUntil(lambda: store.checkpoint_path("classifier").is_file(), timeout=120_000)
    button = w.run.stage_buttons["classifier"]
    assert button.isEnabled()  # one job at a time, but a stage may stop the training while tagging
    hover(w, qtbot, 120, 250)
    key(w, qtbot, Qt.Key.Key_2)  # the last tag, perhaps after the last chunk: credited all the same
    button.click()
    qtbot.waitUntil(lambda: w.runner.label == "Train classifier", timeout=30_000)
    assert not panel.live_box.isChecked()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=120_000)
    record = store.load_run("classifier")
    assert record["epochs_run"] < record["passes"]  # continued, not trained afresh


def test_it_starts_by_itself_on_a_project_being_tagged_and_gives_way_to_any_job(make_napari_viewer, own_project,
                                                                                qtbot, monkeypatch, tmp_path):
    from oeem_napari._jobs import run_step
    from pipeline.store.project import project_config

    monkeypatch.setenv("OEEM_SELF_CHECK", "0")
    store = own_project
    project_config(store, "tiny", {}, save=True)  # the default: train while tagging on
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    assert w.open_project(store.path)
    panel = w.weak_labels
    # no classifier yet, images without masks: the switch is on and the training waits for the first tags
    assert panel.live_box.isChecked() and w.runner.label == "Training while tagging"
    assert w.run.stage_buttons["all"].isEnabled() and panel.proposals_btn.isEnabled()  # it blocks nothing
    # another job: the training stops, the job runs, the training starts again
    assert w.state.start("Probe", run_step("probe", lambda: 42)) is not None
    qtbot.waitUntil(lambda: w.runner.label == "Training while tagging" and w.state.last_result == 42,
                    timeout=30_000)
    assert panel.live_box.isChecked()
    # switched off: it stops, and a job after it does not bring it back
    panel.live_box.setChecked(False)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=30_000)
    w.state.start("Probe", run_step("probe", lambda: 7))
    qtbot.waitUntil(lambda: not w.runner.busy and w.state.last_result == 7, timeout=30_000)
    assert not panel.live_box.isChecked() and w.runner.label == ""
    # opened again it starts again; another project that says no stops it and does not start
    other = tmp_path / "other.oeem.zarr"
    import shutil

    shutil.copytree(store.path, other)
    project_config(type(store).open(other), None, {"preview.train_while_tagging": False}, save=True)
    assert w.open_project(store.path)
    assert panel.live_box.isChecked() and w.runner.label == "Training while tagging"
    assert w.open_project(other)
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=30_000)
    assert not panel.live_box.isChecked()


def test_the_next_image_fills_the_same_overlay_and_its_keys_tag_that_image(dock, own_project, qtbot):
    """Switching images keeps the overlay's layers (napari collects garbage on every layer removed) with the new
    image's cells and tags, on top, and the keys tag the image now shown."""
    w, viewer, store = dock, dock.viewer, own_project
    hover(w, qtbot, 30, 40)
    key(w, qtbot, Qt.Key.Key_1)  # a tag on "a"
    for name in _layers.WEAK_LAYERS:  # a mark on each layer object (the dock's viewer hands out proxies)
        viewer.layers[name].metadata["test-mark"] = name
    w.image_combo.setCurrentText("b")
    assert [lyr.name for lyr in viewer.layers][-4:] == list(_layers.WEAK_LAYERS)
    assert all(viewer.layers[name].metadata.get("test-mark") == name for name in _layers.WEAK_LAYERS)
    fills = viewer.layers[_layers.WEAK_LABELS]
    t = Tagger(store, "b", w.weak_labels.tagger.cfg)
    assert np.array_equal(fills.data, _layers.cell_ids(t.cells(), store.shape("b")))
    assert colour(w, t.patch_at(30, 40))[3] == 0  # "a"'s tag is not drawn on "b"
    hover(w, qtbot, 150, 200)
    key(w, qtbot, Qt.Key.Key_2)
    assert saved(store, "b")[t.patch_at(150, 200)] == NON_GLAND and np.count_nonzero(saved(store, "b")) == 1
    assert np.count_nonzero(saved(store, "a")) == 1
