"""Shared fixtures: small synthetic GlaS-style folders, a tiny trained project, and the real GlaS when present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import preset
from pipeline.io.synth import synth_tissue

GLAS_ROOT = os.environ.get("OEEM_GLAS_ROOT")


@pytest.fixture(scope="session", autouse=True)
def _kernel_check_cache(tmp_path_factory):
    """The self-check's outcomes go to a folder of the test session, not the user's cache (child processes the
    tests start inherit it)."""
    os.environ["OEEM_CACHE_DIR"] = str(tmp_path_factory.mktemp("oeem-cache"))
    yield


@pytest.fixture
def glas_root() -> Path:
    if not GLAS_ROOT or not (Path(GLAS_ROOT) / "train").is_dir():
        pytest.skip("real GlaS not available: set OEEM_GLAS_ROOT to a folder with train/ and testA/")
    return Path(GLAS_ROOT)


def write_pair(folder: Path, name: str, seed: int, size=(160, 192)) -> None:
    image, mask = synth_tissue(*size, seed=seed)
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask * 255).save(folder / f"{name}_anno.png")


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """Four train and two test synthetic images, GlaS PNG layout."""
    folder = tmp_path / "data"
    folder.mkdir()
    for k in range(4):
        write_pair(folder, f"train_{k + 1}", seed=100 + k)
    for k in range(2):
        write_pair(folder, f"testA_{k + 1}", seed=200 + k)
    return folder


def tiny_config():
    cfg = preset("tiny")
    cfg.classifier.threads = cfg.segmentation.threads = 2
    return cfg


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A project on the embedded sample data taken through every stage with the tiny preset (built once), in the
    precision ``auto`` picks on this CPU. Tests compare its predictions, so it must predict glands: an empty
    model fails here, loudly, instead of making comparisons elsewhere trivially equal."""
    from pipeline.progress import run
    from pipeline.stages.run import run_all
    from pipeline.store.project import create_project, project_config

    path = tmp_path_factory.mktemp("proj") / "sample.oeem.zarr"
    store = create_project("sample", path)
    cfg = project_config(store, "tiny")
    report = run(run_all(store, cfg, "cpu"))
    assert_predicts_glands(store, report)
    return store, cfg, report


def assert_predicts_glands(store, report) -> None:
    """Every test image has gland and non-gland pixels in its prediction, and the test mIoU is well above chance."""
    for n in store.names("test"):
        share = float(store.read(n, "prediction").mean())
        assert 0.05 < share < 0.95, f"the fixture model predicts {share:.1%} gland on {n}: it learned nothing"
    assert report["evaluation-test"]["mIoU"] > 70, report["evaluation-test"]


@pytest.fixture
def project_copy(trained_project, tmp_path):
    """A private copy of the trained project that a test may change."""
    import shutil

    from pipeline.store import ProjectStore

    store, cfg, _ = trained_project
    dst = tmp_path / "copy.oeem.zarr"
    shutil.copytree(store.path, dst)
    return ProjectStore.open(dst), cfg


def rgb(h=32, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def own_project(tmp_path):
    """Two H&E images of a pathologist's own (224 x 280 px), no masks: a project made from images alone."""
    from PIL import Image

    from pipeline.io.synth import synth_tissue
    from pipeline.store.project import create_project

    folder = tmp_path / "tiles"
    folder.mkdir()
    for k, name in enumerate(["a.png", "b.png"]):
        image, _ = synth_tissue(224, 280, seed=500 + k)
        Image.fromarray(image).save(folder / name)
    store = create_project(folder, tmp_path / "own.oeem.zarr")
    # the dock would start training the classifier on opening it (preview.train_while_tagging): tests of other
    # things keep the CPU to themselves; tests/test_weak_labels_panel.py checks the default
    from pipeline.store.project import project_config

    project_config(store, None, {"preview.train_while_tagging": False}, save=True)
    return store


@pytest.fixture(scope="session")
def model_file(trained_project, tmp_path_factory):
    """The trained project's segmentation model exported as a model file."""
    from pipeline.stages.model_file import export_model

    store, cfg, _ = trained_project
    path = tmp_path_factory.mktemp("model") / "sample.oeem-model"
    return export_model(store, path, cfg.inference, cfg.slide.project_mpp)


@pytest.fixture
def widget(make_napari_viewer):
    """The OEEM dock in a real (headless) napari viewer; its background job is stopped afterwards."""
    from oeem_napari._widget import OEEMWidget

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    assert isinstance(w, OEEMWidget)
    yield w
    w.runner.shutdown()


@pytest.fixture
def notes():
    """The messages of the napari notifications shown during a test."""
    from napari.utils.notifications import notification_manager

    seen = []

    def grab(event):
        seen.append(str(event.message if hasattr(event, "message") else event))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


def plant_errors(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-mask as stage 1 gets them wrong, in blobs: half the glands grown into the stroma, or their rim
    cut off."""
    from scipy import ndimage as ndi

    pseudo = mask.copy()
    glands, n = ndi.label(mask)
    for k in rng.choice(np.arange(1, n + 1), size=max(1, n // 2), replace=False):
        g = glands == k
        if rng.random() < 0.5:
            pseudo[ndi.binary_dilation(g, iterations=8)] = 1
        else:
            pseudo[g & ~ndi.binary_erosion(g, iterations=6)] = 0
    return pseudo


def assert_valid_geojson(obj: dict) -> None:
    """Valid by two independent validators: the ``geojson`` package (RFC 7946 structure) and shapely / GEOS (OGC
    validity of every polygon: closed rings, no self-intersection, holes inside their shell)."""
    import json

    import geojson
    from shapely.geometry import shape

    parsed = geojson.loads(json.dumps(obj))
    assert parsed.is_valid, parsed.errors()
    for feature in obj["features"]:
        geom = shape(feature["geometry"])
        assert geom.is_valid and not geom.is_empty, feature["geometry"]["type"]
