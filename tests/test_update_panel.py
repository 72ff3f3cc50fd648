"""The dock's *Update model*: paint, update, see the prediction change, toggle before / after, revert."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from oeem_napari import _layers  # noqa: E402

JOB_TIMEOUT_MS = 300_000




def test_update_from_the_dock_shows_before_and_after_and_reverts(widget, project_copy, qtbot, notes):
    store, _ = project_copy
    widget.open_project(store.path)
    panel = widget.corrections
    # nothing painted yet: one line, no job
    assert panel.update_model() is None
    assert any("nothing changed since the model was trained" in n for n in notes)
    name = widget.current
    ck_before = store.checkpoint_path("segmentation").read_bytes()
    widget.settings.fields["update.iterations"].value = "12"
    widget.settings.fields["update.lr"].value = "0.05"
    widget.settings.fields["update.tolerance"].value = "100"  # a made-up gland: kept whatever the guard says
    layer = widget.viewer.layers[_layers.PSEUDO]
    h, w = layer.data.shape
    layer.selected_label, layer.brush_size = 1, 24
    for y in range(0, h // 3, 8):  # a gland the pseudo-mask missed, painted in dabs as a hand would
        for x in range(0, w // 3, 8):
            layer.paint((y, x), 1)
    widget.state.flush()
    assert store.correction_version(name) is not None
    old_prediction = store.read(name, "prediction")

    assert panel.update_model() is not None
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert widget.status_label.text() == "done"
    layers = widget.viewer.layers
    new_prediction = np.asarray(layers[_layers.PREDICTION].data)
    region = np.zeros((h, w), bool)
    region[: h // 3, : w // 3] = True
    assert new_prediction[region].mean() > old_prediction[region].mean() + 0.1  # toward the correction
    assert np.array_equal(np.asarray(layers[_layers.BEFORE_UPDATE].data), old_prediction)
    assert layers[_layers.PREDICTION].visible and not layers[_layers.BEFORE_UPDATE].visible
    assert any("model updated on 1 changed image(s)" in n for n in notes)
    # the toggle swaps the two
    assert panel.before_box.isEnabled()
    panel.before_box.setChecked(True)
    assert layers[_layers.BEFORE_UPDATE].visible and not layers[_layers.PREDICTION].visible
    panel.before_box.setChecked(False)
    assert layers[_layers.PREDICTION].visible and not layers[_layers.BEFORE_UPDATE].visible
    # painting still goes to the pseudo-mask
    assert layers.selection.active.name == _layers.PSEUDO

    assert panel.revert() is not None
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert store.checkpoint_path("segmentation").read_bytes() == ck_before
    assert np.array_equal(store.read(name, "prediction"), old_prediction)  # same model, same prediction
    assert any("reverted to the model kept" in n for n in notes)


def test_a_harmful_update_from_the_dock_is_not_kept_and_says_why(widget, project_copy, qtbot, notes):
    store, _ = project_copy
    widget.open_project(store.path)
    name = widget.current
    ck_before = store.checkpoint_path("segmentation").read_bytes()
    shape = store.shape(name)
    store.save_correction(name, np.ones(shape, np.uint8), painted=np.ones(shape, bool))  # all gland: wrong
    widget.settings.fields["update.iterations"].value = "30"
    widget.settings.fields["update.lr"].value = "0.05"
    widget.settings.fields["update.focus"].value = "1"
    old_prediction = store.read(name, "prediction")
    assert widget.corrections.update_model() is not None
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=JOB_TIMEOUT_MS)
    line = next(n for n in notes if "update not kept" in n)
    assert "held-out tag agreement" in line and "->" in line and "the previous model stays" in line
    assert store.checkpoint_path("segmentation").read_bytes() == ck_before
    assert np.array_equal(store.read(name, "prediction"), old_prediction)
    assert _layers.BEFORE_UPDATE not in widget.viewer.layers
