"""A pathologist's own images with weak labels only: projects from images without masks, and patch labels as
CSV / QuPath GeoJSON files (the grid rule, every bad row refused, round trips)."""
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import OEEMError
from pipeline.io.data import find_samples
from pipeline.io.patch_labels import (
    BOTH,
    GLAND,
    NON_GLAND,
    UNLABELLED,
    PatchLabel,
    check_rows,
    grid_rows,
    read_label_csv,
    read_label_file,
    read_label_geojson,
    tags_on_grid,
    tags_to_vectors,
    vectors_to_tags,
    write_label_csv,
    write_label_geojson,
)
from pipeline.io.synth import synth_tissue
from pipeline.stages.patches import patch_grid


@pytest.fixture
def own_folder(tmp_path):
    """H&E tiles as a lab has them: no masks, any names, mixed formats."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    for k, name in enumerate(["case1 tile A.tif", "case1_tile_B.jpg", "case2-001.png", "case9_x.bmp"]):
        image, _ = synth_tissue(160, 192, seed=300 + k)
        Image.fromarray(image).save(folder / name)
    return folder


def test_a_folder_without_masks_or_glas_names_is_all_training_images(own_folder):
    samples = find_samples(own_folder)
    assert sorted(s.name for s in samples) == ["case1 tile A", "case1_tile_B", "case2-001", "case9_x"]
    assert {s.split for s in samples} == {"train"} and all(s.mask_path is None for s in samples)


def test_train_and_test_patterns_choose_the_splits(own_folder):
    samples = {s.name: s.split for s in find_samples(own_folder, test="case9_*")}
    assert samples == {"case1 tile A": "train", "case1_tile_B": "train", "case2-001": "train", "case9_x": "test"}
    samples = {s.name: s.split for s in find_samples(own_folder, train="case1*", test="case9_*")}
    assert samples == {"case1 tile A": "train", "case1_tile_B": "train", "case9_x": "test"}  # case2 left out
    with pytest.raises(OEEMError, match=r"no images found matching --train 'nothing_\*' \(looked for"):
        find_samples(own_folder, train="nothing_*")


def test_glas_folders_keep_their_splits(small_folder):
    splits = {s.name: s.split for s in find_samples(small_folder)}
    assert splits["train_1"] == "train" and splits["testA_1"] == "test"


def test_tags_are_the_multi_label_vectors():
    tags = np.array([UNLABELLED, GLAND, NON_GLAND, BOTH], np.uint8)
    assert tags_to_vectors(tags).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert vectors_to_tags(tags_to_vectors(tags)).tolist() == tags.tolist()


def test_a_square_off_the_grid_labels_the_patches_it_mostly_covers():
    corners = patch_grid((224, 224), 112, 56)  # 3 x 3 patches at 0, 56, 112
    # a square at x=60, y=0 covers 108/112 of the patch at x=56 and 60/112 of the one at x=112 (labelled), 52/112
    # of the one at x=0 and 56 x 108 px of the one at (56, 56) (not more than half: unlabelled)
    tags = tags_on_grid([PatchLabel("a", 60, 0, 112, GLAND)], corners, 112)
    labelled = {tuple(c) for c, t in zip(corners.tolist(), tags) if t}
    assert labelled == {(0, 56), (0, 112)}
    # two squares over one patch: the union of their classes
    tags = tags_on_grid([PatchLabel("a", 56, 0, 112, GLAND), PatchLabel("a", 56, 10, 112, NON_GLAND)], corners, 112)
    assert tags[1] == BOTH


def test_csv_and_geojson_round_trip(tmp_path):
    corners = patch_grid((224, 336), 112, 56)
    rng = np.random.default_rng(0)
    tags = rng.integers(0, 4, len(corners)).astype(np.uint8)
    rows = grid_rows("img 1", corners, 112, tags)
    for path, write, read in ((tmp_path / "t.csv", write_label_csv, read_label_csv),
                              (tmp_path / "t.geojson", write_label_geojson, read_label_geojson)):
        assert write(path, rows) == int((tags > 0).sum())
        back = read(path)
        by_image = check_rows(back, {"img 1": (224, 336)})
        assert np.array_equal(tags_on_grid(by_image["img 1"], corners, 112), tags)
        assert read_label_file(path) == back


@pytest.mark.parametrize("line, fragment", [
    ("nope.png,0,0,112,1,0", "line 3: no image 'nope' in the project"),
    ("a.png,200,0,112,1,0", "line 3: the square at x=200, y=0 of 112 px lies outside image 'a'"),
    ("a.png,-1,0,112,1,0", "lies outside"),
    ("a.png,0,0,500,1,0", "line 3: size 500 px does not fit image 'a'"),
    ("a.png,0,0,112,2,0", "line 3: gland must be 1 (present) or 0 (absent), not '2'"),
    ("a.png,0,0,112,0,0", "line 3: gland and non_gland are both 0"),
    ("a.png,0,0,11.5,1,0", "line 3: size '11.5' is not a whole number"),
    ("a.png,zero,0,112,1,0", "line 3: x 'zero' is not a number"),
    ("a.png,0,0,112,1", "line 3: 5 values"),
    ("a.png,0,0,112,0,1", "line 3: the same patch (a, x=0, y=0, size=112) as t.csv line 2"),
])
def test_every_bad_row_is_one_line_naming_it(tmp_path, line, fragment):
    path = tmp_path / "t.csv"
    path.write_text(f"image,x,y,size,gland,non_gland\na.png,0,0,112,1,0\n{line}\n")
    with pytest.raises(OEEMError, match=None) as err:
        check_rows(read_label_csv(path), {"a": (224, 224)})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_files_are_one_line(tmp_path):
    (tmp_path / "h.csv").write_text("img,x,y\n")
    with pytest.raises(OEEMError, match="the first line must be the header image,x,y,size,gland,non_gland"):
        read_label_csv(tmp_path / "h.csv")
    (tmp_path / "c.geojson").write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                                        '"geometry": {"type": "Polygon", "coordinates": [[[0,0],[10,0],[10,10],'
                                        '[0,10],[0,0]]]}, "properties": {"classification": {"name": "Tumor"}}}]}')
    with pytest.raises(OEEMError, match="c.geojson feature 1: classification 'Tumor'"):
        read_label_geojson(tmp_path / "c.geojson")
    (tmp_path / "r.geojson").write_text('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
                                        '[[[0,0],[20,0],[20,10],[0,10],[0,0]]]}, "properties": '
                                        '{"classification": {"name": "Gland"}}}')
    with pytest.raises(OEEMError, match="not an axis-aligned square"):
        read_label_geojson(tmp_path / "r.geojson")
    with pytest.raises(OEEMError, match="a .csv .* or a QuPath .geojson"):
        read_label_file(tmp_path / "labels.xlsx")
