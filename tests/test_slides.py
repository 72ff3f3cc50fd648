"""Whole slides: lazy opening, pixel sizes, bad files, tiled prediction into OME-Zarr (= whole-image prediction
within blending tolerance), resume, a 2-worker dask LocalCluster, slide regions as training images."""
from __future__ import annotations

import json
import time
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

from pipeline.config import InferConfig, SlideConfig
from pipeline.errors import OEEMError
from pipeline.io.synth import synth_tissue, write_synthetic_slide
from pipeline.progress import run
from pipeline.slides.predict import predict_slide, progress_path, read_done, record_path
from pipeline.slides.reader import open_slide
from pipeline.stages.postprocess import clean_mask

FAST = InferConfig(scales=(1.0,), flip=False, crop_size=128, stride=96)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    """A 1536 x 2048 px pyramidal TIFF at the project's 0.62 µm/px, half of it tissue."""
    path = tmp_path_factory.mktemp("slides") / "synthetic.tif"
    write_synthetic_slide(path, (1536, 2048), tissue_fraction=0.5, mpp=0.62, tile=256, seed=3)
    return path


def test_a_slide_opens_lazily_with_its_levels_and_pixel_size(slide_path):
    open_slide(slide_path).pyramid()  # imports and caches are not the slide's pixels
    tracemalloc.start()
    slide = open_slide(slide_path)
    pyramid = slide.pyramid()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = 1536 * 2048 * 3
    assert peak < full / 10, f"opening read {peak} bytes of a {full}-byte slide"
    assert slide.info.mpp == pytest.approx(0.62) and slide.info.mpp_source == "file"
    assert [p.shape for p in pyramid] == [(1536, 2048, 3), (768, 1024, 3), (384, 512, 3)]
    assert slide.info.level_downsamples == [1.0, 2.0, 4.0]
    region = slide.read_at(1.24, 100, 200, 64, 80)  # a region at half resolution comes from level 1
    assert region.shape == (64, 80, 3) and slide.level_for(2.0) == 1
    np.testing.assert_array_equal(region, np.asarray(pyramid[1][100:164, 200:280]))
    beyond = slide.read(0, 1500, 2000, 100, 100)  # beyond the edge: glass, not an error
    assert beyond.shape == (100, 100, 3) and beyond[-1, -1].min() > 200
    slide.close()


def test_pixel_size_from_ome_xml_from_the_user_or_refused(tmp_path):
    image, _ = synth_tissue(600, 800, seed=1)
    ome = tmp_path / "a.ome.tif"
    tifffile.imwrite(ome, image, photometric="rgb", tile=(256, 256), ome=True,
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.25})
    assert open_slide(ome).info.mpp == pytest.approx(0.25)
    assert open_slide(ome).info.mpp_source == "OME-XML"
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="rgb")
    with pytest.raises(OEEMError, match="--mpp"):
        open_slide(plain).require_mpp()
    given = open_slide(plain, mpp=0.5)
    assert given.info.mpp == 0.5 and given.info.mpp_source == "--mpp"
    overridden = open_slide(ome, mpp=0.5)
    assert overridden.info.mpp == 0.5 and any("overrides" in n for n in overridden.info.notes)
    with pytest.raises(OEEMError, match="between 0.01 and 100"):
        open_slide(plain, mpp=0)


def test_an_aperio_svs_gives_its_pixel_size_and_pixels(tmp_path):
    image, _ = synth_tissue(512, 768, seed=2)
    head = "Aperio Image Library v12.0.15\r\n768x512 [0,0 768x512] (256x256) JPEG/RGB Q=70|AppMag = 20"
    path = tmp_path / "scan.svs"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), photometric="rgb", compression="zlib",
                 description=f"{head}|MPP = 0.5021|Filename = scan")
        tw.write(image[::8, ::8], photometric="rgb", description=f"{head}|MPP = 0.5021")  # the thumbnail
    with open_slide(path) as slide:
        assert slide.info.vendor == "aperio"
        assert slide.info.mpp == pytest.approx(0.5021) and slide.info.mpp_source == "file"
        np.testing.assert_array_equal(slide.read(0, 10, 20, 30, 40), image[10:40, 20:60])


def test_openslide_reads_the_same_pixels_when_installed(slide_path):
    pytest.importorskip("openslide")
    with open_slide(slide_path) as a, open_slide(slide_path, backend="openslide") as b:
        assert (a.backend, b.backend) == ("tiffslide", "openslide")
        assert b.info.mpp == pytest.approx(0.62)
        np.testing.assert_array_equal(a.read(0, 100, 200, 64, 96), b.read(0, 100, 200, 64, 96))
        np.testing.assert_array_equal(np.asarray(a.pyramid()[0][:300, :200]), np.asarray(b.pyramid()[0][:300, :200]))
    with pytest.raises(OEEMError, match="unknown slide reader"):
        open_slide(slide_path, backend="bioformats")


def test_files_that_are_not_slides_give_one_line(tmp_path, slide_path):
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(OEEMError, match="not a slide this tool can read"):
        open_slide(tmp_path / "text.tif")
    data = slide_path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(OEEMError, match="truncated"):
        open_slide(tmp_path / "cut.tif")
    with pytest.raises(OEEMError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((300, 300), np.uint16))
    with pytest.raises(OEEMError, match="8-bit RGB"):
        open_slide(gray, mpp=0.5)


def _mask(out) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out), mode="r")["labels/prediction/0"])


def _varied_model(store, image, run_name: str = "local") -> None:
    """A random-init U-Net whose BatchNorm statistics are measured on ``image`` and whose output is scaled to
    about half gland: probabilities that vary everywhere, so tiled and whole predictions are really compared
    (the tiny trained model of the fixtures predicts nearly one class on a slide)."""
    import torch

    from pipeline.config import NORMS, BackboneConfig, SegConfig
    from pipeline.device import to_tensor_image
    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import segmentation_checkpoint, stage_name

    torch.manual_seed(0)
    cfg = SegConfig(backbone=BackboneConfig(name="unet", widths=(8, 16, 32)), decoder="unet", head_channels=8)
    model = build_segmenter(cfg)
    x = to_tensor_image(image, *NORMS[cfg.input_norm])
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # a plain average over the calibration crops
    with torch.no_grad():
        model.train()
        for y0 in range(0, x.shape[2] - 128, 128):
            model(x[:, :, y0:y0 + 128, :512])
        model.eval()
        out = model(x[:, :, :256, :256])
        diff = (out[:, 1] - out[:, 0]).flatten()
        model.cls[1].bias[1] -= diff.median()
        model.cls[1].weight.mul_(3 / (diff.std() + 1e-6))
    store.save_checkpoint(stage_name(run_name),
                          segmentation_checkpoint(model, torch.optim.SGD(model.parameters(), lr=0.1), 1, cfg))


def test_tiled_prediction_equals_whole_image_prediction(project_copy, slide_path, tmp_path):
    """Blocks read with a margin, their windows blended with Gaussian weights, give the whole-image prediction
    (to the last uint8 step) wherever the block saw the same context: everywhere but a margin-wide band at the
    slide's edge, where a block sees padding glass."""
    from pipeline.stages.infer import predict_probs
    from pipeline.stages.segment import load_segmenter

    store, _ = project_copy
    with open_slide(slide_path) as slide:
        image = slide.read(0, 0, 0, 1536, 2048)
    _varied_model(store, image)
    # block - margin is a multiple of the stride: the same window grid; fp32 because this checks the tiling, and
    # bf16's rounding differs with what else is in a batch (the random model's large logits amplify it)
    aligned = replace(FAST, stride=64, precision="fp32")
    cfg = SlideConfig(block=256, margin=64, min_tissue=0.0)  # every block: compare the whole image
    rec = run(predict_slide(store, slide_path, cfg, aligned, out=tmp_path / "tiled.ome.zarr", device="cpu",
                            run_name="local"))
    assert rec["blocks"]["tissue"] == 48 and rec["levels"] == 3
    model, seg_cfg = load_segmenter(store, "local", "cpu")
    whole = predict_probs(model, image, replace(aligned, blend="gaussian"), "cpu", seg_cfg)
    root = zarr.open_group(rec["output"], mode="r")
    tiled_prob = np.asarray(root["0"]).astype(float)
    tiled = _mask(rec["output"])
    assert tiled.shape == whole.shape[1:]
    assert 0.1 < whole.argmax(0).mean() < 0.9 and whole[1].std() > 0.1  # a varied prediction
    inner = (slice(64, -64), slice(64, -64))
    diff = np.abs(tiled_prob - whole[1] * 255)[inner]
    assert diff.max() <= 1.0, diff.max()
    assert (tiled[inner] == whole.argmax(0)[inner]).mean() > 0.999
    scales = [d["coordinateTransformations"][0]["scale"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[0.62, 0.62], [1.24, 1.24], [2.48, 2.48]]
    # valid OME-Zarr 0.5 by an independent validator, the probability and its labels, every level
    from ome_zarr_models.v05.image import Image as OmeImage
    from ome_zarr_models.v05.image_label import ImageLabel

    OmeImage.from_zarr(root)
    ImageLabel.from_zarr(root["labels/prediction"])
    assert root["labels/prediction/1"].shape == (768, 1024)
    np.testing.assert_array_equal(root["labels/prediction/1"][...], tiled[::2, ::2])
    assert json.loads(record_path(rec["output"]).read_text())["blocks"]["tissue"] == 48

    # a cleaned mask (the cpu preset's kind) is cleaned with each block's margin in view: the same as cleaning
    # the whole image, but for components larger than a block's context that a seam cuts
    cleaning = replace(aligned, drop_glands_below=200, fill_holes_below=200)
    rec = run(predict_slide(store, slide_path, cfg, cleaning, out=tmp_path / "clean.ome.zarr", device="cpu",
                            run_name="local"))
    cleaned = _mask(rec["output"])
    expected = clean_mask(whole.argmax(0), 200, 200)
    assert (expected != whole.argmax(0))[inner].mean() > 0.01  # the random model leaves specks to clean
    assert (cleaned[inner] == expected[inner]).mean() > 0.995


def test_glass_is_skipped_and_a_cancelled_run_resumes(trained_project, slide_path, tmp_path):
    store, _, _ = trained_project
    cfg = SlideConfig(block=256, margin=32)
    out = tmp_path / "resume.ome.zarr"
    job = predict_slide(store, slide_path, cfg, FAST, out=out, device="cpu")
    seen = 0
    for p in job:
        seen += p.step > 0
        if seen == 3:
            job.close()  # what the plugin's Cancel and Ctrl-C do
            break
    done = read_done(out, (6, 8))
    assert done.sum() == 3
    rec = run(predict_slide(store, slide_path, cfg, FAST, out=out, device="cpu"))
    assert rec["blocks"]["resumed"] == 3
    assert 0 < rec["blocks"]["skipped_as_glass"] < 48  # the corners are glass
    assert rec["blocks"]["tissue"] + rec["blocks"]["skipped_as_glass"] == 48
    fresh = run(predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "fresh.ome.zarr", device="cpu"))
    np.testing.assert_array_equal(_mask(out), _mask(fresh["output"]))
    assert json.loads(progress_path(out).read_text())["complete"] is True
    # another model or settings: refused unless --redo
    with pytest.raises(OEEMError, match="--redo"):
        run(predict_slide(store, slide_path, replace(cfg, margin=16), FAST, out=out, device="cpu"))


def test_a_local_cluster_of_two_workers_gives_the_same_mask(trained_project, slide_path, tmp_path):
    distributed = pytest.importorskip("distributed")
    store, _, _ = trained_project
    cfg = SlideConfig(block=512, margin=32)
    one = run(predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "one.ome.zarr", device="cpu"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        two = run(predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "two.ome.zarr", device="cpu",
                                scheduler=cluster.scheduler_address, tasks_per_worker=1))
    assert two["scheduler"] == cluster.scheduler_address
    a, b = _mask(one["output"]), _mask(two["output"])
    assert (a == b).mean() > 0.9999
    pa = np.asarray(zarr.open_group(one["output"], mode="r")["0"]).astype(int)
    pb = np.asarray(zarr.open_group(two["output"], mode="r")["0"]).astype(int)
    assert np.abs(pa - pb).max() <= 1  # probabilities to the last uint8 step


def test_a_scheduler_that_does_not_answer_is_one_line_and_no_hang(trained_project, slide_path, tmp_path):
    pytest.importorskip("distributed")
    from pipeline.slides.cluster import connect

    t0 = time.perf_counter()
    with pytest.raises(OEEMError, match="no dask scheduler answered"):
        connect("tcp://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - t0 < 15


def test_slide_regions_become_training_images_with_patch_labels(project_copy, slide_path):
    from pipeline.slides.regions import SlideRegion, add_slide_regions, regions_from_geojson
    from pipeline.stages.classify import make_patch_labels

    store, cfg = project_copy
    before = len(store.names())
    regions = [SlideRegion(700, 500, 400, 300, "gland"), SlideRegion(50, 50, 200, 200, "non-gland")]
    names = add_slide_regions(store, slide_path, regions, cfg.patches, 0.62, split="train")
    assert names == ["synthetic_x700_y500", "synthetic_x50_y50"]
    assert len(store.names()) == before + 2
    assert store.shape(names[0]) == (300, 400)  # same pixel size as the project: no resampling
    labels = store.read(names[0], "patch_labels")
    assert labels.shape[0] == len(store.read(names[0], "patch_corners")) > 1
    assert (labels == [0, 1]).all() and (store.read(names[1], "patch_labels") == [1, 0]).all()
    assert store.group(names[0]).attrs["slide_region"]["label"] == "gland"
    make_patch_labels(store, cfg.patches)  # the patch labels of masked images are remade; these are kept
    assert (store.read(names[0], "patch_labels") == [0, 1]).all()
    # a 40x-like resolution: the region is resampled to the project's pixel size
    half = add_slide_regions(store, slide_path, [SlideRegion(1200, 900, 400, 400, "mixed")], cfg.patches,
                             1.24, split="train")
    assert store.shape(half[0]) == (200, 200)
    with pytest.raises(OEEMError, match="smaller than a 112 px patch"):
        add_slide_regions(store, slide_path, [SlideRegion(0, 0, 100, 100, "gland")], cfg.patches, 0.62)
    with pytest.raises(OEEMError, match="outside the slide"):
        add_slide_regions(store, slide_path, [SlideRegion(1900, 0, 400, 400, "gland")], cfg.patches, 0.62)
    with pytest.raises(OEEMError, match="already has the region"):
        add_slide_regions(store, slide_path, regions[:1], cfg.patches, 0.62)
    rois = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Stroma"}},
         "geometry": {"type": "Polygon", "coordinates": [[[300, 300], [600, 300], [600, 500], [300, 500],
                                                          [300, 300]]]}}]}
    (roi,) = regions_from_geojson(rois, None)
    assert (roi.x, roi.y, roi.w, roi.h, roi.label) == (300, 300, 300, 200, "non-gland")


def test_a_worker_killed_mid_run_loses_nothing(trained_project, slide_path, tmp_path):
    """kill -9 one of two dask workers after the first finished task: its tasks run again elsewhere and the mask
    is the one a single process makes."""
    import os
    import signal

    distributed = pytest.importorskip("distributed")
    store, _, _ = trained_project
    cfg = SlideConfig(block=256, margin=32)
    one = run(predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "one.ome.zarr", device="cpu"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        job = predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "two.ome.zarr", device="cpu",
                            scheduler=cluster.scheduler_address, tasks_per_worker=1)
        next(job)  # the plan
        next(job)  # one task finished
        os.kill(pids[0], signal.SIGKILL)
        two = run(job)
    assert two["blocks"]["tissue"] == one["blocks"]["tissue"]
    np.testing.assert_array_equal(_mask(one["output"]), _mask(two["output"]))


def test_a_full_disk_while_streaming_is_one_line_and_resumable(trained_project, slide_path, tmp_path,
                                                               monkeypatch):
    import errno

    from zarr.core.array import Array

    store, _, _ = trained_project
    cfg = SlideConfig(block=256, margin=32)
    out = tmp_path / "full.ome.zarr"
    real = Array.__setitem__
    writes = {"n": 0}

    def fills_up(self, key, value):
        writes["n"] += 1
        if writes["n"] > 4:  # two blocks (probability + mask each), then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, key, value)

    monkeypatch.setattr(Array, "__setitem__", fills_up)
    with pytest.raises(OEEMError, match="No space left on device.*resume"):
        run(predict_slide(store, slide_path, cfg, FAST, out=out, device="cpu"))
    monkeypatch.setattr(Array, "__setitem__", real)
    assert read_done(out, (6, 8)).sum() == 2
    rec = run(predict_slide(store, slide_path, cfg, FAST, out=out, device="cpu"))
    assert rec["blocks"]["resumed"] == 2
    fresh = run(predict_slide(store, slide_path, cfg, FAST, out=tmp_path / "fresh.ome.zarr", device="cpu"))
    np.testing.assert_array_equal(_mask(out), _mask(fresh["output"]))
