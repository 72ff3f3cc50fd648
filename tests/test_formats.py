"""QuPath GeoJSON out and in, all-or-nothing export, and the napari writer."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import assert_valid_geojson

from pipeline.cli import main
from pipeline.errors import OEEMError
from pipeline.io.export import export_masks, read_exported_mask, write_mask_file
from pipeline.io.geojson import GLAND_CLASS, import_geojson, mask_to_geojson, rasterise_geojson, read_geojson


def ring_mask() -> np.ndarray:
    """A gland with a lumen (one hole) and a separate small gland."""
    m = np.zeros((80, 120), np.uint8)
    m[10:50, 20:70] = 1
    m[25:35, 35:55] = 0  # the lumen
    m[60:70, 90:110] = 1
    return m


def iou(a, b) -> float:
    a, b = a > 0, b > 0
    return (a & b).sum() / max((a | b).sum(), 1)


def test_geojson_is_what_qupath_reads():
    gj = json.loads(json.dumps(mask_to_geojson(ring_mask(), "img_1")))
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    by_area = sorted(gj["features"], key=lambda f: -len(f["geometry"]["coordinates"]))
    gland = by_area[0]
    assert gland["geometry"]["type"] == "Polygon"  # holes are inner rings of one Polygon, not other polygons
    assert len(gland["geometry"]["coordinates"]) == 2
    assert gland["properties"]["objectType"] == "annotation"
    assert gland["properties"]["classification"]["name"] == GLAND_CLASS
    for ring in gland["geometry"]["coordinates"]:
        assert ring[0] == ring[-1]  # closed
    xs = [p[0] for p in gland["geometry"]["coordinates"][0]]
    ys = [p[1] for p in gland["geometry"]["coordinates"][0]]
    # [x, y] in pixel coordinates, pixel (r, c) covering [c, c+1] x [r, r+1]: the gland spans x 20-70, y 10-50
    assert 19.5 <= min(xs) <= 20.5 and 69.5 <= max(xs) <= 70.5
    assert 9.5 <= min(ys) <= 10.5 and 49.5 <= max(ys) <= 50.5


def test_round_trip_is_exact_on_a_gland_with_a_lumen():
    m = ring_mask()
    back = rasterise_geojson(mask_to_geojson(m), m.shape)
    assert np.array_equal(back.gland, m > 0)
    assert not back.non_gland.any()


def test_round_trip_on_real_glas_masks(glas_root):
    from pipeline.io.data import read_mask

    files = sorted((glas_root / "testA").glob("*_anno.*"))[:10]
    assert files
    scores = []
    for f in files:
        m = read_mask(f)
        scores.append(iou(rasterise_geojson(json.loads(json.dumps(mask_to_geojson(m))), m.shape).gland, m))
    assert min(scores) >= 0.99, scores


def test_import_accepts_what_qupath_and_others_write():
    shape = (60, 60)
    square = {"type": "Polygon", "coordinates": [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]}
    two = {"type": "MultiPolygon", "coordinates": [[[[40, 40], [50, 40], [50, 50], [40, 50], [40, 40]]],
                                                   [[[0, 40], [5, 40], [5, 45], [0, 45], [0, 40]]]]}
    features = [
        {"type": "Feature", "geometry": square, "properties": {}},  # no classification: a gland
        {"type": "Feature", "geometry": two, "properties": {"classification": {"name": "Gland"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}},
        {"type": "Feature", "geometry": square, "properties": {"classification": {"name": "Immune cells"}}},
    ]
    bare = rasterise_geojson(features, shape)  # a bare list, as QuPath also writes
    wrapped = rasterise_geojson({"type": "FeatureCollection", "features": features}, shape)
    assert np.array_equal(bare.gland, wrapped.gland)
    assert bare.gland[20, 20] and bare.gland[45, 45] and bare.gland[42, 2]
    assert bare.gland.sum() == 400 + 100 + 25
    assert bare.features == 2
    assert bare.skipped == {"Point": 1, "class 'Immune cells'": 1}
    stroma = rasterise_geojson({"type": "Feature", "geometry": square,
                                "properties": {"classification": {"name": "Stroma"}}}, shape)
    assert stroma.non_gland.sum() == 400 and not stroma.gland.any()


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid GeoJSON"),
    ('{"type": "Topology"}', "not GeoJSON annotations"),
    ('"a string"', "not GeoJSON annotations"),
])
def test_bad_geojson_is_one_clear_error(tmp_path, text, fragment):
    f = tmp_path / "x.geojson"
    f.write_text(text)
    with pytest.raises(OEEMError, match=fragment):
        rasterise_geojson(read_geojson(f), (10, 10), str(f))


def test_import_is_an_undoable_verified_correction(project_copy, tmp_path):
    store, _ = project_copy
    name = store.names("train")[0]
    h, w = store.shape(name)
    pseudo = store.read(name, "pseudo")
    square = {"type": "Polygon", "coordinates": [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]]}
    f = tmp_path / f"{name}.geojson"
    f.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": square, "properties": {"classification": {"name": "Gland"}}}]}))
    report = import_geojson(store, f)
    assert report["images"] == {name: 400}
    corrected, verified = store.correction(name)
    assert corrected[:20, :20].all() and np.array_equal(corrected[20:], pseudo[20:])
    assert verified[:20, :20].all() and verified.sum() == 400
    assert store.undo_correction(name)
    assert not store.has(name, "corrected")
    with pytest.raises(OEEMError, match="no image 'nope'"):
        import_geojson(store, f, image="nope")


def test_cli_export_geojson_then_import_round_trip(project_copy, tmp_path):
    store, _ = project_copy
    p = str(store.path)
    name = store.names("train")[0]
    edit = store.read(name, "pseudo").copy()
    edit[5:40, 5:40] = 1 - edit[5:40, 5:40]
    store.save_correction(name, edit)
    out = tmp_path / "gj"
    assert main(["export", p, str(out), "--format", "geojson"]) == 0
    assert (out / f"{name}.geojson").is_file()
    assert store.undo_correction(name)
    assert main(["import-geojson", p, str(out / f"{name}.geojson")]) == 0
    corrected, _ = store.correction(name)
    assert iou(corrected, edit) >= 0.99 and iou(1 - corrected, 1 - edit) >= 0.99
    assert main(["undo", p, name]) == 0
    assert not store.has(name, "corrected")


def test_failed_export_writes_nothing(trained_project, tmp_path, capsys):
    """Some images lack a prediction (the test images were never predicted): nothing is written."""
    import shutil

    from pipeline.store import ProjectStore

    src, _, _ = trained_project
    dst = tmp_path / "p.zarr"
    shutil.copytree(src.path, dst)
    store = ProjectStore.open(dst)
    victim = store.names()[-1]
    store.delete(victim, "prediction")
    out = tmp_path / "out"
    with pytest.raises(OEEMError, match="nothing was exported"):
        export_masks(store, out, "png", "prediction")
    assert [p.name for p in out.iterdir()] == []
    assert main(["export", str(dst), str(out), "--source", "prediction"]) == 2
    assert "nothing was exported" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == []


def test_disk_full_during_export_leaves_the_folder_as_it_was(project_copy, tmp_path, monkeypatch):
    import pipeline.io.export as export

    store, _ = project_copy
    out = tmp_path / "out"
    export_masks(store, out, "png", "pseudo")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = export._write_one

    def full(path, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path, *args)

    monkeypatch.setattr(export, "_write_one", full)
    first = store.names("train")[0]
    store.write(first, "pseudo", 1 - store.read(first, "pseudo"))
    with pytest.raises(OEEMError, match="No space left on device"):
        export_masks(store, out, "png", "pseudo")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging left, nothing replaced


@pytest.mark.parametrize("suffix", [".png", ".tif", ".zarr", ".geojson"])
def test_write_mask_file_each_format(tmp_path, suffix):
    m = ring_mask()
    path = write_mask_file(tmp_path / f"x_anno{suffix}", m)
    if suffix == ".geojson":
        back = rasterise_geojson(read_geojson(path), m.shape).gland
    else:
        back = read_exported_mask(path)
    assert np.array_equal(back > 0, m > 0)
    with pytest.raises(OEEMError, match="unknown mask format"):
        write_mask_file(tmp_path / "x.jpg", m)


@pytest.mark.gui
def test_napari_save_selected_layers_uses_the_writer(make_napari_viewer, tmp_path):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    layer = viewer.add_labels(ring_mask().astype(np.int32), name="pseudo-mask")
    viewer.layers.selection = {layer}
    for suffix in (".png", ".tif", ".zarr", ".geojson"):
        path = tmp_path / f"img_anno{suffix}"
        written = viewer.layers.save(str(path), selected=True, plugin="oeem-napari")
        assert [str(path)] == [str(p) for p in written]
        back = rasterise_geojson(read_geojson(path), layer.data.shape).gland if suffix == ".geojson" \
            else read_exported_mask(path)
        assert np.array_equal(back > 0, layer.data > 0)


@pytest.mark.gui
def test_widget_imports_geojson_for_the_image_shown(make_napari_viewer, project_copy, tmp_path):
    pytest.importorskip("napari")
    from oeem_napari import _layers

    store, _ = project_copy
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    widget.open_project(store.path)
    name = widget.current
    f = tmp_path / "from_qupath.geojson"  # not named after an image: goes to the one shown
    f.write_text(json.dumps([{"type": "Feature", "properties": {},
                              "geometry": {"type": "Polygon",
                                           "coordinates": [[[2, 2], [12, 2], [12, 12], [2, 12], [2, 2]]]}}]))
    report = widget.import_geojson(str(f))
    assert report["images"] == {name: 100}
    assert viewer.layers[_layers.PSEUDO].data[2:12, 2:12].all()
    widget.undo()
    assert not store.has(name, "corrected")
    widget.runner.shutdown()


def test_pipeline_geojson_does_not_import_napari():
    import subprocess

    code = ("import sys, pipeline.io.geojson, pipeline.store.lock, pipeline.store.doctor; "
            "sys.exit(any(m.split('.')[0] in ('napari', 'qtpy') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_exported_polygon_is_valid_by_other_validators(glas_root):
    from pipeline.io.data import read_mask

    tricky = np.zeros((60, 60), np.uint8)
    tricky[5:20, 5:20] = 1
    tricky[20:35, 20:35] = 1  # touches the first at one corner only: the classic self-touching ring
    tricky[40:55, 5:50] = 1
    tricky[44:51, 9:16] = tricky[44:51, 30:40] = 0  # two lumens
    tricky[47, 12] = 1  # an island in a lumen
    tricky[0, 59] = tricky[59, 0] = 1  # one-pixel glands on the border
    rng = np.random.default_rng(0)
    speckle = (rng.random((60, 60)) > 0.6).astype(np.uint8)  # many small, touching, holed shapes
    masks = [ring_mask(), tricky, speckle]
    masks += [read_mask(p) for p in sorted((glas_root / "testA").glob("*_anno.*"))[:5]]
    for mask in masks:
        gj = mask_to_geojson(mask, "img")
        assert gj["features"]
        assert_valid_geojson(gj)
