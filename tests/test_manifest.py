import pytest


def test_npe2_manifest_is_valid():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("oeem-napari")
    npe2.PluginManifest.validate(manifest.model_dump() if hasattr(manifest, "model_dump") else manifest.dict())
    assert {w.display_name for w in manifest.contributions.widgets} == {"OEEM"}
    assert manifest.contributions.sample_data and manifest.contributions.readers


def test_pipeline_never_imports_napari_or_qt():
    import subprocess
    import sys

    code = ("import sys, pipeline.cli, pipeline.store.project, pipeline.stages.run, pipeline.stages.infer, pipeline.review.state, pipeline.io.export; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', "
            "'magicgui')]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
