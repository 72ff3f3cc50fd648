"""The dock's *Budget* beside *Run all* and the expected end beside the progress bar (issue 32), in a real headless
viewer."""
from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def test_run_all_with_a_budget_shows_the_expected_end(make_napari_viewer, small_folder, tmp_path, qtbot):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    try:
        target = tmp_path / "w.oeem.zarr"
        w.create_project(str(small_folder), str(target))
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
        w.preset_combo.setCurrentText("tiny")
        w.preset_combo.textActivated.emit("tiny")
        w.epochs_spin.setValue(1)
        w.iter_spin.setValue(2)
        spin, end = w.run.budget_spin, w.run.end_label
        assert spin.text() == "no budget" and w.state.budget_s is None  # off: the preset's schedule
        grid = w.run.body.layout()  # beside Run all, in its row
        assert len({grid.getItemPosition(grid.indexOf(x))[0] for x in (w.stage_buttons["all"], spin)}) == 1
        spin.setValue(30)
        assert w.state.budget_s == 1800
        w.run_stage("all")
        qtbot.waitUntil(lambda: end.text().startswith("ends ~"), timeout=120_000)
        assert "expected duration of each stage" in end.toolTip()
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=300_000)
        assert w.status_label.text() == "done"
        assert end.text().startswith("ended ") and "(expected " in end.text()
        assert w.store.load_run("budget")["budget_s"] == 1800
        assert w.last_result["estimate"]["budget_s"] == 1800
    finally:
        w.runner.shutdown()
