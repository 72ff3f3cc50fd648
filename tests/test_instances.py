"""Glands as objects: two touching glands come out as two ids - from the separation itself, the project's stage,
predict-images, a slide across a tile seam - and every export keeps the ids."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline.config import InstanceConfig
from pipeline.errors import OEEMError
from pipeline.progress import run
from pipeline.stages.instances import instances_of, separate

R = 45  # gland radius (px): GlaS-sized (6,400 px), so the default seed size (1,000 px) keeps both seeds


def touching_glands(shape=(120, 200), centres=((60, 60), (60, 140))) -> tuple[np.ndarray, np.ndarray]:
    """Two round glands whose outlines overlap by 10 px (one connected region), and a gland probability that
    is near 1 in each gland's middle and falls towards its edge, as a trained network's does."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dist = np.min([np.hypot(yy - cy, xx - cx) for cy, cx in centres], axis=0)
    mask = (dist < R).astype(np.uint8)
    prob = np.clip(1.5 - dist / R, 0, 1).astype(np.float32)
    return mask, prob


def test_two_touching_glands_are_two_ids_and_the_mask_is_kept():
    mask, prob = touching_glands()
    assert separate(mask, prob, "components").max() == 1  # one connected region: one "gland" before
    for method in ("core", "distance"):
        ids = separate(mask, prob, method)
        assert ids.dtype == np.int32 and ids.max() == 2, method
        np.testing.assert_array_equal(ids > 0, mask > 0)  # pixel scores cannot change
        left, right = ids[60, 30], ids[60, 170]
        assert {left, right} == {1, 2}, method
        border = np.nonzero(ids[60] == right)[0].min()
        assert 95 <= border <= 105, (method, border)  # cut at the neck, not through a gland
    # the same at full resolution (instances.scale 1)
    np.testing.assert_array_equal(separate(mask, prob, "core", working_scale=1.0) > 0, mask > 0)


def test_a_gland_without_a_seed_stays_one_and_regions_never_share_an_id():
    mask, prob = touching_glands()
    prob[:, 100:] = np.minimum(prob[:, 100:], 0.9)  # the right gland: nowhere sure enough to seed
    assert separate(mask, prob, "core").max() == 1  # one seed in the region: not cut
    apart = np.pad(mask, ((0, 0), (0, 120)))
    apart[:, 200:] = mask[:, 80:]  # and a separate region with no seed at all: a gland of its own
    ids = separate(apart, np.pad(prob, ((0, 0), (0, 120))) * (np.arange(320) < 200), "core")
    assert ids.max() == 2 and len(np.unique(ids[:, 200:][apart[:, 200:] > 0])) == 1
    # two glands 1 px apart: the half-scale grid sees one region, the ids still follow the full-size regions
    gap = np.zeros((60, 61), np.uint8)
    gap[10:50, 5:30] = 1
    gap[10:50, 31:56] = 1
    ids = separate(gap, gap.astype(np.float32), "core", min_core_area=0)
    assert ids.max() == 2 and ids[30, 29] != ids[30, 31]
    assert separate(np.zeros((8, 8)), np.zeros((8, 8)), "core").max() == 0


def test_bad_input_is_one_line():
    mask, prob = touching_glands()
    with pytest.raises(OEEMError, match="instances.method"):
        separate(mask, prob, "magic")
    with pytest.raises(OEEMError, match="needs the gland probability"):
        separate(mask, None, "core")
    with pytest.raises(OEEMError, match="differs from the mask"):
        separate(mask, prob[:10], "core")
    with pytest.raises(OEEMError, match="two dimensions"):
        separate(np.zeros((2, 2, 2)), None, "components")


def _plant(store, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Two touching glands as an image's prediction, as `oeem predict` writes it (the tiny test model cannot be
    made to draw them)."""
    h, w = store.shape(name)
    mask, prob = touching_glands((h, w), ((h // 2, w // 2 - 40), (h // 2, w // 2 + 40)))
    store.write(name, "prediction", mask)
    store.write(name, "prob", prob)
    return mask, prob


def test_the_stage_follows_the_prediction_and_its_settings(project_copy):
    from pipeline.stages.graph import plan, predict_job
    from pipeline.stages.infer import evaluate
    from pipeline.stages.instances import make_instances

    store, cfg = project_copy
    cfg = copy.deepcopy(cfg)  # (the session's trained project shares its settings with other tests)
    planned = {s.key: done for s, done in plan(store, cfg)}
    assert planned["instances"] and not planned["evaluate"]  # `oeem run` cut the glands after its prediction
    name = store.names("test")[0]
    mask, prob = _plant(store, name)
    run(make_instances(store, cfg.instances))
    ids = store.read(name, "instances")
    assert ids.max() == 2 and ids.dtype == np.int32
    np.testing.assert_array_equal(ids, instances_of(mask, prob, cfg.instances))
    ev = evaluate(store, "test")
    assert ev["objects"] == "instances" and ev["truth_objects"] == "components"
    assert ev["per_image"][name]["segmented"] == 2
    # another separation: only the instances step (and the evaluation) is to do again, no network
    cfg.instances.method = "components"
    assert [s.key for s, done in plan(store, cfg) if not done] == ["instances", "evaluate"]
    run(make_instances(store, cfg.instances))
    assert store.read(name, "instances").max() == 1
    # a new prediction makes the instances stale: `predict` (CLI, dock) cuts them again, evaluate never mixes
    run(predict_job(store, cfg, "cpu"))
    assert evaluate(store, "test")["objects"] == "instances"
    from pipeline.stages.infer import predict

    run(predict(store, cfg.inference, device="cpu"))
    assert evaluate(store, "test")["objects"] == "components"


def test_truth_ids_and_grades_are_read_at_init(tmp_path):
    """A GlaS `_anno.bmp` numbers its glands: two touching true glands stay two objects; Grade.csv splits the
    scores into benign and malignant."""
    from pipeline.io.synth import synth_tissue
    from pipeline.stages.infer import evaluate
    from pipeline.store.project import create_project

    folder = tmp_path / "data"
    folder.mkdir()
    mask, prob = touching_glands()
    truth = np.where(np.arange(200)[None, :] < 100, 1, 2) * mask  # the two glands, numbered
    for k, name in enumerate(["testA_1", "testA_2"]):
        image, _ = synth_tissue(120, 200, seed=k)
        Image.fromarray(image).save(folder / f"{name}.png")
        Image.fromarray(truth.astype(np.uint8)).save(folder / f"{name}_anno.bmp")
    (folder / "Grade.csv").write_text("name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)\n"
                                      "testA_1,1, benign,healthy\ntestA_2,2, malignant,adenocarcinoma\n")
    store = create_project(folder, tmp_path / "p.oeem.zarr")
    assert store.grade("testA_1") == "benign" and store.grade("testA_2") == "malignant"
    ids, own = store.truth_objects("testA_1")
    assert own and ids.max() == 2
    np.testing.assert_array_equal(store.mask("testA_1"), mask)  # the mask itself stays 0/1
    for name in store.names():
        store.write(name, "prediction", mask)
        store.write(name, "prob", prob)
    ev = evaluate(store, "test")  # no instances step yet: components, one object for two glands
    assert ev["truth_objects"] == "ids" and ev["objects"] == "components" and ev["object_F1"] < 100
    assert set(ev["parts"]) == {"testA", "benign", "malignant", "testA benign", "testA malignant"}
    assert ev["parts"]["malignant"]["images"] == 1
    for name in store.names():
        store.write(name, "instances", separate(mask, prob))
    store.save_run("predict", {"run_id": "p1", "images": 2})
    store.save_run("instances", {"predict_run_id": "p1", "images": 2, "config": {}})
    ev = evaluate(store, "test")
    assert ev["objects"] == "instances" and ev["object_F1"] == 100 and ev["object_Dice"] > 95


@pytest.mark.parametrize("fmt", ["png", "tiff", "zarr", "geojson"])
def test_every_export_keeps_the_ids(project_copy, tmp_path, fmt):
    from pipeline.io.export import export_masks, read_exported_ids
    from pipeline.stages.instances import make_instances

    store, cfg = project_copy
    name = store.names("test")[0]
    _plant(store, name)
    run(make_instances(store, cfg.instances))
    ids = store.read(name, "instances")
    written = export_masks(store, tmp_path / fmt, fmt, "instances", names=[name])
    back = read_exported_ids(written[0], store.shape(name))
    assert len(np.unique(back[back > 0])) == 2
    if fmt == "geojson":
        obj = json.loads(written[0].read_text())
        from tests.conftest import assert_valid_geojson

        assert_valid_geojson(obj)
        feats = obj["features"]
        import uuid

        assert [f["properties"]["measurements"]["gland id"] for f in feats] == [1, 2]
        assert all(uuid.UUID(f["id"]).version == 5 for f in feats)  # QuPath keeps only UUID ids
        area = feats[0]["properties"]["measurements"]["area µm^2"]
        assert area == pytest.approx((ids == 1).sum() * 0.62 ** 2, rel=1e-3)
        for k in (1, 2):  # each gland drawn back within its outline's quarter-pixel simplification
            a, b = back == k, ids == k
            assert (a & b).sum() / (a | b).sum() > 0.97
        # QuPath's import rules as import-geojson applies them: both glands become gland pixels
        from pipeline.io.geojson import rasterise_geojson

        assert (rasterise_geojson(obj, store.shape(name)).gland == (ids > 0)).mean() > 0.99
    else:
        np.testing.assert_array_equal(back, ids)
        from oeem_napari._reader import get_reader  # dropped onto napari: a Labels layer with the ids

        (data, _, kind), = get_reader(str(written[0]))(str(written[0]))
        assert kind == "labels"
        np.testing.assert_array_equal(data, ids)
    if fmt == "png":
        assert Image.open(written[0]).mode.startswith("I;16") or Image.open(written[0]).mode == "I"
    if fmt == "zarr":
        from ome_zarr_models.v05.image_label import ImageLabel

        ImageLabel.from_zarr(zarr.open_group(str(written[0]), mode="r"))
        props = zarr.open_group(str(written[0]), mode="r").attrs["ome"]["image-label"]["properties"]
        assert [p["label-value"] for p in props] == [1, 2]


def test_too_many_ids_for_a_png_is_one_line(tmp_path):
    from pipeline.io.export import write_mask_file

    ids = np.arange(70_000 * 2, dtype=np.int64).reshape(280, 500)
    with pytest.raises(OEEMError, match="16-bit PNG"):
        write_mask_file(tmp_path / "x_anno.png", ids, "x", ids=True)
    path = write_mask_file(tmp_path / "x_anno.tif", ids, "x", ids=True)
    import tifffile

    assert tifffile.imread(path).dtype == np.uint32


def test_predict_images_writes_ids_the_model_file_cuts_as_its_project(model_file, trained_project, tmp_path):
    """`predict-images --instances` with a model file: each image's glands, cut with the project's instance
    settings (kept in the file), on exactly the mask the plain run writes."""
    import dataclasses

    from pipeline.io.export import read_exported_ids
    from pipeline.stages.model_file import load_model_file
    from pipeline.stages.predict_files import predict_files

    store, cfg, _ = trained_project
    trained = load_model_file(model_file)
    assert trained.instances == cfg.instances
    folder = tmp_path / "tiles"
    folder.mkdir()
    name = store.names("test")[0]
    Image.fromarray(store.image(name)).save(folder / "tile.png")
    run(predict_files(trained, [folder], tmp_path / "masks", "png", device="cpu"))
    rec = run(predict_files(trained, [folder], tmp_path / "ids", "tiff", device="cpu", instances=True))
    assert rec["instances"]["method"] == cfg.instances.method
    ids = read_exported_ids(tmp_path / "ids" / "tile_anno.tif")
    mask = np.asarray(Image.open(tmp_path / "masks" / "tile_anno.png")) > 0
    np.testing.assert_array_equal(ids > 0, mask)
    assert ids.max() == len(np.unique(ids[ids > 0]))  # 1..n
    # a model file from a project whose glands are cut otherwise carries that setting
    other = dataclasses.replace(trained, instances=InstanceConfig(method="components"))
    rec = run(predict_files(other, [folder], tmp_path / "comp", "tiff", device="cpu", instances=True))
    assert rec["instances"]["method"] == "components"


def _slide_prediction(path, mask: np.ndarray, prob: np.ndarray, block: int) -> None:
    """An OME-Zarr laid out as `oeem predict-slide` writes it (probability 0-255, labels/prediction)."""
    from pipeline.io.omezarr import create_level

    root = zarr.open_group(str(path), mode="w")
    create_level(root, "0", mask.shape, "uint8", (block, block), fill_value=0)[...] = np.round(prob * 255)
    pred = root.require_group("labels").require_group("prediction")
    create_level(pred, "0", mask.shape, "uint8", (block, block), fill_value=0)[...] = mask
    root.attrs["oeem_slide_prediction"] = {"project_mpp": 0.62}


def test_a_slide_cut_in_tiles_gives_the_whole_image_glands(tmp_path):
    """Glands across a tile seam are cut as the whole image would be: never split by the seam, each id once."""
    from pipeline.slides.instances import slide_instances

    # touching pairs across the seams x = 256 and y = 256 (tiles of 128 px), a pair cut apart by a gap on x = 128
    centres = [(70, 88), (70, 168), (200, 236), (200, 316), (215, 450), (295, 450), (330, 120)]
    mask, prob = touching_glands((400, 520), centres)
    mask[:, 128] = 0
    out = tmp_path / "s.ome.zarr"
    _slide_prediction(out, mask, prob, 64)
    cfg = InstanceConfig()
    rec = run(slide_instances(out, cfg, tile=128, halo=128))
    root = zarr.open_group(str(out), mode="r")
    tiled = np.asarray(root["labels/glands/0"]).astype(np.int64)
    whole = instances_of(mask, np.round(prob * 255) / 255, cfg)
    np.testing.assert_array_equal(tiled > 0, mask > 0)
    assert rec["glands"] == whole.max() == len(np.unique(tiled[tiled > 0])) and rec["too_large"] == 0
    # the same partition of the pixels: each whole-image gland is exactly one slide gland
    pairs = set(zip(whole[mask > 0].tolist(), tiled[mask > 0].tolist()))
    assert len(pairs) == whole.max()
    from ome_zarr_models.v05.image_label import ImageLabel

    ImageLabel.from_zarr(root["labels/glands"])
    assert "glands" in root["labels"].attrs["ome"]["labels"]
    # a halo narrower than a gland: that region is kept whole and counted, never split by the seam
    rec = run(slide_instances(out, cfg, tile=64, halo=16))
    tiled = np.asarray(zarr.open_group(str(out), mode="r")["labels/glands/0"]).astype(np.int64)
    assert rec["too_large"] > 0 and len(np.unique(tiled[tiled > 0])) == rec["glands"]
    np.testing.assert_array_equal(tiled > 0, mask > 0)


def test_a_region_wider_than_the_halo_stays_one_gland_across_blocks_and_corners(tmp_path):
    """The last pass follows a large region into blocks no tile saw it in, and joins parts that meet only
    diagonally at a block corner."""
    from pipeline.slides.instances import slide_instances

    mask = np.zeros((128, 256), np.uint8)
    mask[10:15, 5:250] = 1  # a bar far wider than tile + halo: it reaches blocks its owner tile never read
    mask[10:32, 20:25] = 1
    mask[20:32, 20:32] = 1  # ends at the corner of block (0, 0) ...
    mask[32:44, 32:44] = 1  # ... and goes on from the corner of block (1, 1): 8-connected there only
    mask[80:90, 200:210] = 1  # a small gland elsewhere, cut by its tile
    out = tmp_path / "s.ome.zarr"
    _slide_prediction(out, mask, mask * 0.99, 32)
    rec = run(slide_instances(out, InstanceConfig(), tile=64, halo=16))
    ids = np.asarray(zarr.open_group(str(out), mode="r")["labels/glands/0"]).astype(np.int64)
    np.testing.assert_array_equal(ids > 0, mask > 0)
    assert rec["too_large"] == 1 and rec["glands"] == 2
    assert len(np.unique(ids[10:44, :250][mask[10:44, :250] > 0])) == 1
    assert ids[85, 205] not in (0, ids[12, 100])


def test_slide_geojson_has_one_feature_per_gland_id(tmp_path):
    from pipeline.slides.geojson_export import export_slide_geojson
    from pipeline.slides.instances import slide_instances

    mask, prob = touching_glands((200, 260), ((100, 90), (100, 170)))
    out = tmp_path / "s.ome.zarr"
    _slide_prediction(out, mask, prob, 64)
    run(slide_instances(out, InstanceConfig(), tile=128, halo=128))
    rec = run(export_slide_geojson(out, tmp_path / "s.geojson", level0=False))
    feats = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert rec["glands"] == len(feats) == 2 and rec["objects"] == "instances"
    ids = {f["properties"]["measurements"]["gland id"] for f in feats}
    assert len(ids) == 2 and len({f["id"] for f in feats}) == 2


def test_a_pathologist_splits_and_merges_glands_in_napari(widget, project_copy, qtbot, notes):
    """Glands shown one colour each; a line drawn across a gland splits it, M on a border merges two; each edit is
    saved in the project, exported, and kept by the next instances step while the prediction stays the same."""
    from oeem_napari import _layers
    from pipeline.io.export import export_masks, read_exported_ids
    from pipeline.stages.instances import make_instances

    store, cfg = project_copy
    name = store.names("test")[0]
    mask, _ = _plant(store, name)
    run(make_instances(store, cfg.instances))
    assert widget.open_project(store.path)
    widget.image_combo.setCurrentText(name)
    layers = widget.viewer.layers
    glands = layers[_layers.GLANDS]
    assert len(np.unique(glands.data[glands.data > 0])) == 2
    panel = widget.glands
    assert panel.count_label.text() == "2 glands"
    h, w = store.shape(name)
    left_id = int(glands.data[h // 2, w // 2 - 40])
    # split: a vertical line through the left gland's middle
    panel.draw_cut()
    cuts = layers[_layers.CUTS]
    cuts.add_paths([np.array([[h // 2 - 60, w // 2 - 40], [h // 2 + 60, w // 2 - 40]])])
    made = panel.split()
    assert len(made) == 1 and panel.count_label.text() == "3 glands"
    saved = store.read(name, "instances")
    np.testing.assert_array_equal(saved, glands.data)
    np.testing.assert_array_equal(saved > 0, mask > 0)  # the mask is untouched
    assert len(cuts.data) == 0 and name in store.load_run("instances")["edited"]
    # merge: the cursor on the new border, M
    widget.viewer.cursor.position = (h // 2, w // 2 - 40)
    merged = panel.merge()
    assert len(merged) == 2 and left_id in merged and panel.count_label.text() == "2 glands"
    # and three: the cursor at the neck between the two original glands
    widget.viewer.cursor.position = (h // 2, w // 2)
    assert len(panel.merge()) == 2 and panel.count_label.text() == "1 gland"
    edited = store.read(name, "instances")
    out = export_masks(store, store.path.parent / "out", "tiff", "instances", names=[name])
    np.testing.assert_array_equal(read_exported_ids(out[0]), edited)
    run(make_instances(store, cfg.instances))  # same prediction: the edit stays
    np.testing.assert_array_equal(store.read(name, "instances"), edited)
    widget.viewer.cursor.position = (0, 0)
    assert panel.merge() == [] and any("border between two glands" in n for n in notes)
