"""Every bad input, tried by a machine (hypothesis): each outcome is success or a one-line OEEMError - never
another exception, never a half-written store."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import PipelineConfig, apply_overrides, check, preset
from pipeline.errors import OEEMError
from pipeline.io.geojson import mask_to_geojson, rasterise_geojson

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
coordinate = st.one_of(st.floats(-50, 150, allow_nan=False), st.integers(-50, 150), st.just(float("nan")),
                       st.text(max_size=2), st.none())
ring = st.lists(st.lists(coordinate, min_size=0, max_size=3), min_size=0, max_size=8)
geometry = st.fixed_dictionaries({
    "type": st.sampled_from(["Polygon", "MultiPolygon", "Point", "LineString", "GeometryCollection", "Nope"]),
    "coordinates": st.one_of(st.lists(ring, max_size=3), st.lists(st.lists(ring, max_size=2), max_size=2),
                             json_values)})
feature = st.fixed_dictionaries({"type": st.just("Feature"), "geometry": st.one_of(geometry, st.none(), json_values),
                                 "properties": st.one_of(st.none(), st.fixed_dictionaries(
                                     {"classification": st.one_of(st.none(), st.text(max_size=8), st.fixed_dictionaries(
                                         {"name": st.sampled_from(["Gland", "Stroma", "Tumor", ""])}))}))})
documents = st.one_of(json_values, st.lists(feature, max_size=4),
                      st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                                             "features": st.lists(feature, max_size=4)}))


@FUZZ
@given(documents)
def test_any_geojson_imports_or_says_why(doc):
    try:
        r = rasterise_geojson(doc, (40, 60), "fuzz.geojson")
    except OEEMError as exc:
        assert "\n" not in str(exc)
        return
    assert r.gland.shape == (40, 60) and not (r.gland & r.non_gland).any()


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(4, 40), st.integers(4, 40), st.floats(0.2, 0.8))
def test_round_trip_of_random_masks_keeps_the_pixels(seed, h, w, density):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    # blobs rather than salt noise: what a gland mask looks like at any scale
    field = ndi.gaussian_filter(rng.random((h, w)), 1.5)
    m = field > np.quantile(field, 1 - density)
    back = rasterise_geojson(json.loads(json.dumps(mask_to_geojson(m))), m.shape).gland
    wrong = int((back != m).sum())
    assert wrong <= max(2, 0.02 * m.sum()), (wrong, int(m.sum()))


setting_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                           st.text(max_size=6), st.lists(st.one_of(st.floats(0, 4), st.text(max_size=2)), max_size=4))


def _keys(obj, prefix=""):
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")
        yield f"{prefix}{f.name}"


SETTING_KEYS = sorted(_keys(PipelineConfig())) + ["segmentation.depth", "nope", "classifier."]


@FUZZ
@given(st.dictionaries(st.sampled_from(SETTING_KEYS), setting_values, min_size=1, max_size=3),
       st.sampled_from(["cpu", "tiny", "paper"]))
def test_any_setting_is_taken_or_refused_in_one_line(overrides, name):
    cfg = preset(name)
    try:
        check(apply_overrides(cfg, overrides))
    except OEEMError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.one_of(
    st.builds(lambda s, h, w: np.random.default_rng(s).integers(0, 3, (h, w)).astype(np.uint8),
              st.integers(0, 99), st.integers(1, 200), st.integers(1, 200)),
    st.builds(lambda s, dt: np.random.default_rng(s).integers(-2, 3, (160, 192)).astype(dt),
              st.integers(0, 99), st.sampled_from(["int8", "int64", "float32", "bool"])),
    st.just(np.zeros((160, 192, 3), np.uint8)), st.just(np.array(3))))
def test_any_correction_is_saved_or_refused_and_the_store_stays_whole(fuzz_project, labels):
    store, name = fuzz_project
    before = store.correction(name)
    try:
        store.save_correction(name, labels)
    except OEEMError as exc:
        assert "\n" not in str(exc)
        after = store.correction(name)
        assert (before is None and after is None) or all(np.array_equal(a, b) for a, b in zip(before, after))
        return
    corrected, verified = store.correction(name)
    assert np.array_equal(corrected, np.asarray(labels).astype(np.uint8))


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory):
    from pipeline.store.project import create_project

    path = tmp_path_factory.mktemp("fuzz") / "p.oeem.zarr"
    store = create_project("sample", path)
    name = store.names("train")[0]
    store.write(name, "pseudo", np.zeros(store.shape(name), np.uint8))
    return store, name


file_bytes = st.one_of(st.binary(max_size=64), st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), st.just(b"BM"))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["train_1", "train_2", "testA_1", "a b", "x#", "train_1_anno"]),
                          st.sampled_from([".png", ".bmp", ".tif", ".txt", ".PNG"]),
                          st.one_of(file_bytes, st.sampled_from(["rgb", "gray", "rgba", "tiny", "mask"]))),
                min_size=0, max_size=5))
def test_any_data_folder_makes_a_project_or_says_why(tmp_path_factory, files):
    from pipeline.store.project import create_project

    root = tmp_path_factory.mktemp("folder")
    data = root / "data"
    data.mkdir()
    for stem, suffix, content in files:
        path = data / f"{stem}{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
            continue
        shape = {"rgb": (40, 50, 3), "gray": (40, 50), "rgba": (40, 50, 4), "tiny": (2, 2, 3), "mask": (40, 50)}
        arr = np.random.default_rng(0).integers(0, 256, shape[content], dtype=np.uint8)
        if content == "mask":
            arr = (arr > 128).astype(np.uint8) * 255
        fmt = {".png": "PNG", ".PNG": "PNG", ".bmp": "BMP", ".tif": "TIFF"}.get(suffix)
        if fmt is None:
            path.write_bytes(b"text")
        else:
            Image.fromarray(arr).save(path, format=fmt)
    project = root / "p.oeem.zarr"
    try:
        create_project(data, project)
    except OEEMError as exc:
        assert "\n" not in str(exc)
        assert not project.exists()  # nothing half-made
        assert not [p for p in root.iterdir() if p.name.startswith(".p.oeem.zarr")]
    shutil.rmtree(root)


@FUZZ
@given(st.sampled_from(["zarr.json", "images/zarr.json", "image", "pseudo", "corrections"]),
       st.sampled_from(["truncate", "garbage", "delete", "json"]), st.integers(0, 10**6))
def test_any_tampered_store_opens_or_says_why(fuzz_project, tmp_path_factory, target, how, seed):
    from pipeline.store import ProjectStore

    src, name = fuzz_project
    if src.correction(name) is None:
        src.save_correction(name, np.ones(src.shape(name), np.uint8))
    path = tmp_path_factory.mktemp("tamper") / "p.oeem.zarr"
    shutil.copytree(src.path, path)
    if target in ("zarr.json", "images/zarr.json"):
        victims = [path / target]
    elif target == "corrections":
        victims = sorted((path / "corrections").glob("*.json"))
    else:
        victims = sorted(p for p in (path / "images" / name / target).rglob("*") if p.is_file())
    rng = np.random.default_rng(seed)
    victim = victims[int(rng.integers(len(victims)))]
    data = victim.read_bytes()
    if how == "truncate":
        victim.write_bytes(data[: int(rng.integers(0, max(len(data), 1)))])
    elif how == "garbage":
        victim.write_bytes(rng.integers(0, 256, max(len(data), 8), dtype=np.uint8).tobytes())
    elif how == "delete":
        victim.unlink()
    else:
        victim.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"x": 1}}))
    try:
        store = ProjectStore.open(path)
        for n in store.names():
            for key in ("image", "pseudo", "corrected"):
                if store.has(n, key):
                    store.read(n, key)
    except OEEMError as exc:
        assert "\n" not in str(exc)
    shutil.rmtree(path.parent)
