"""A slide prediction as QuPath GeoJSON: glands cut by block edges come out whole, lumens as holes, level-0
coordinates, and rasterised back (as `oeem import-geojson` does) the same mask."""
import json

import numpy as np
import pytest
import zarr
from skimage.draw import disk
from skimage.measure import label

from pipeline.cli import main
from pipeline.errors import OEEMError
from pipeline.io.geojson import rasterise_geojson
from pipeline.progress import run
from pipeline.slides.geojson_export import export_slide_geojson


def _prediction(path, mask: np.ndarray, block: int, resampled_by: float = 1.0) -> None:
    root = zarr.open_group(str(path), mode="w")
    root.attrs["oeem_slide_prediction"] = {"slide": "synthetic", "resampled_by": resampled_by}
    pred = root.create_group("labels").create_group("prediction")
    pred.create_array("0", shape=mask.shape, dtype="uint8", chunks=(block, block), fill_value=0)
    pred["0"][...] = mask


def _glands(shape=(300, 420), seed=0) -> np.ndarray:
    """Ring-shaped glands (a lumen each) and plain ones, many across the 64 px block edges, one snake that
    crosses several blocks, and one touching the slide's edge."""
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    for _ in range(14):
        cy, cx, r = rng.integers(20, shape[0] - 20), rng.integers(20, shape[1] - 20), rng.integers(8, 18)
        m[disk((cy, cx), r, shape=shape)] = 1
        if r > 12:
            m[disk((cy, cx), r // 3, shape=shape)] = 0  # a lumen
    m[100:106, 30:400] = 1  # a long gland across six blocks
    m[130:160, 0:8] = 1  # at the edge
    return m


def test_glands_across_block_edges_come_out_whole_with_their_lumens(tmp_path):
    mask = _glands()
    _prediction(tmp_path / "p.ome.zarr", mask, block=64)
    rec = run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "g.geojson", tolerance=0.25))
    assert rec["glands"] == label(mask, connectivity=1).max()  # one polygon per gland: none split at a seam
    obj = json.loads((tmp_path / "g.geojson").read_text())
    assert len(obj["features"]) == rec["glands"]
    assert all(f["properties"]["classification"]["name"] == "Gland" for f in obj["features"])
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in obj["features"])  # lumens are holes
    from conftest import assert_valid_geojson

    assert_valid_geojson(obj)  # by the geojson package and shapely, not only by our own reader
    back = rasterise_geojson(obj, mask.shape).gland
    iou = (back & (mask > 0)).sum() / (back | (mask > 0)).sum()
    assert iou >= 0.99, iou


def test_coordinates_are_the_slides_level_0(tmp_path):
    mask = _glands(seed=1)
    _prediction(tmp_path / "p.ome.zarr", mask, block=64, resampled_by=0.5)  # the slide is at twice the detail
    rec = run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "g.geojson", tolerance=0.25))
    assert rec["scale"] == 2.0 and rec["coordinates"] == "slide level 0"
    obj = json.loads((tmp_path / "g.geojson").read_text())
    big = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1) > 0
    back = rasterise_geojson(obj, big.shape).gland
    # the outline cuts each staircase corner of the prediction's pixels; at twice the detail a cut corner covers
    # a level-0 pixel centre more often than at 1:1
    assert (back & big).sum() / (back | big).sum() >= 0.98
    own = run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "own.geojson", 0.25, level0=False))
    assert own["scale"] == 1.0 and own["glands"] == rec["glands"]


def test_simplification_keeps_the_file_small_and_the_outline(tmp_path):
    mask = _glands(seed=2)
    _prediction(tmp_path / "p.ome.zarr", mask, block=64)
    fine = run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "fine.geojson", tolerance=0.25))
    coarse = run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "coarse.geojson", tolerance=1.0))
    assert coarse["vertices"] < 0.7 * fine["vertices"] and coarse["bytes"] < fine["bytes"]
    back = rasterise_geojson(json.loads((tmp_path / "coarse.geojson").read_text()), mask.shape).gland
    assert (back & (mask > 0)).sum() / (back | (mask > 0)).sum() >= 0.97


def test_export_slide_cli_and_bad_inputs(tmp_path, capsys):
    _prediction(tmp_path / "p.ome.zarr", _glands(), block=64)
    assert main(["export-slide", str(tmp_path / "p.ome.zarr"), str(tmp_path / "g.geojson")]) == 0
    assert "glands" in capsys.readouterr().out
    assert main(["export-slide", str(tmp_path / "nothing.ome.zarr"), str(tmp_path / "g.geojson")]) == 2
    assert "not a slide prediction" in capsys.readouterr().err
    assert main(["export-slide", str(tmp_path / "p.ome.zarr"), str(tmp_path / "no" / "g.geojson")]) == 2
    (tmp_path / "p.ome.zarr.progress.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(OEEMError, match="not finished"):
        run(export_slide_geojson(tmp_path / "p.ome.zarr", tmp_path / "g2.geojson"))
