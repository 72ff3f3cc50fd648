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
    # names a project cannot hold as they are become '_'; the file stays the image's source
    assert sorted(s.name for s in samples) == ["case1_tile_A", "case1_tile_B", "case2-001", "case9_x"]
    assert {s.split for s in samples} == {"train"} and all(s.mask_path is None for s in samples)


def test_train_and_test_patterns_choose_the_splits(own_folder):
    samples = {s.name: s.split for s in find_samples(own_folder, test="case9_*")}
    assert samples == {"case1_tile_A": "train", "case1_tile_B": "train", "case2-001": "train", "case9_x": "test"}
    samples = {s.name: s.split for s in find_samples(own_folder, train="case1*", test="case9_*")}
    assert samples == {"case1_tile_A": "train", "case1_tile_B": "train", "case9_x": "test"}  # case2 left out
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
    # two squares off the grid over one patch: the union of their classes
    tags = tags_on_grid([PatchLabel("a", 60, 0, 112, GLAND), PatchLabel("a", 56, 10, 112, NON_GLAND)], corners, 112)
    assert tags[1] == BOTH
    # a square exactly on a patch is its label, whatever else covers it
    tags = tags_on_grid([PatchLabel("a", 56, 0, 112, GLAND), PatchLabel("a", 56, 10, 112, NON_GLAND)], corners, 112)
    assert tags[1] == GLAND


@pytest.mark.parametrize("shape", [(224, 336), (160, 197)])  # the second grid's edge patches overlap > half
def test_csv_and_geojson_round_trip(tmp_path, shape):
    corners = patch_grid(shape, 112, 56)
    rng = np.random.default_rng(0)
    tags = rng.integers(0, 4, len(corners)).astype(np.uint8)
    rows = grid_rows("img 1.png", corners, 112, tags)  # a file name; the project calls the image img_1
    for path, write, read in ((tmp_path / "t.csv", write_label_csv, read_label_csv),
                              (tmp_path / "t.geojson", write_label_geojson, read_label_geojson)):
        assert write(path, rows) == int((tags > 0).sum())
        back = read(path)
        by_image = check_rows(back, {"img_1": shape})
        assert np.array_equal(tags_on_grid(by_image["img_1"], corners, 112), tags)
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


# ---------------------------------------------------------------------------- a project with weak labels only
def test_own_images_tagged_by_file_train_end_to_end(tmp_path, own_folder, capsys):
    import json

    from pipeline.cli import main
    from pipeline.stages.classify import patch_dataset
    from pipeline.store import ProjectStore

    p = str(tmp_path / "own.oeem.zarr")
    assert main(["init", str(own_folder), p, "--test", "case9_*"]) == 0
    told = capsys.readouterr().out
    assert "4 images, 0 with gland masks" in told and "  3 training images: 3 not matching --test 'case9_*'\n" in told
    assert main(["run", p, "--preset", "tiny", "--device", "cpu"]) == 2  # nothing to learn from yet
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "no weak labels on the training images yet" in errors[0] and "oeem labels import" in errors[0]
    # a lab's CSV: gland-only and no-gland patches on two images, one patch with both; the third image untagged
    rows = ["image,x,y,size,gland,non_gland", "case1 tile A.tif,0,0,112,1,0", "case1 tile A.tif,80,48,112,0,1",
            "case1_tile_B.jpg,0,0,112,1,1", "case1_tile_B.jpg,56,0,112,0,1"]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    assert main(["labels", "import", p, str(tmp_path / "tags.csv")]) == 0
    assert "imported tags for 2 image(s): 4 labelled patches" in capsys.readouterr().out
    assert main(["run", p, "--preset", "tiny", "--device", "cpu"]) == 0
    assert "== OEEM report ==" in capsys.readouterr().out
    store = ProjectStore.open(p, mode="r")
    patches = store.load_run("patches")["summary"]
    assert patches["images"] == 2 and patches["patches"] == 4 and patches["labels_from"] == {"tags": 2}
    assert patches["unlabelled_patches"] == 2 * len(store.read("case1_tile_B", "patch_labels")) - 4
    images, labels = patch_dataset(store, 112)  # the classifier sees the labelled patches only
    assert len(images) == 4 and labels.sum(1).min() >= 1
    assert store.load_run("classifier")["n_patches"] == 4
    assert store.has("case1_tile_B", "pseudo") and not store.has("case2-001", "pseudo")  # untagged: no pseudo-mask
    assert store.has("case9_x", "prediction")
    first = {s: store.load_run(s)["run_id"] for s in ("patches", "classifier", "cams", "segmentation")}
    # more tags: the next run remakes the labels and everything learned from them
    (tmp_path / "more.csv").write_text("image,x,y,size,gland,non_gland\ncase2-001.png,0,0,112,0,1\n")
    assert main(["labels", "import", p, str(tmp_path / "more.csv")]) == 0
    assert main(["run", p, "--preset", "tiny", "--device", "cpu"]) == 0
    store = ProjectStore.open(p, mode="r")
    assert store.load_run("patches")["summary"]["images"] == 3
    assert all(store.load_run(s)["run_id"] != first[s] for s in first)
    assert store.load_run("predict")["segmentation_run_id"] == store.load_run("segmentation")["run_id"]
    capsys.readouterr()
    assert main(["info", p]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["patch_tags"] == {"images": 3, "patches": 5, "gland_only": 1, "no_gland": 3, "both": 1}


def test_labels_export_import_undo_and_all_or_nothing(tmp_path, own_folder, capsys):
    from pipeline.cli import main
    from pipeline.store import ProjectStore

    p = str(tmp_path / "own.oeem.zarr")
    assert main(["init", str(own_folder), p]) == 0
    assert main(["labels", "export", p, str(tmp_path / "none.csv")]) == 2
    assert "no patch tags yet" in capsys.readouterr().err
    store = ProjectStore.open(p)
    n = len(patch_grid(store.shape("case2-001"), 112, 56))
    tags = np.arange(n, dtype=np.uint8) % 4
    store.save_patch_tags("case2-001", tags, 112, 56)
    for fmt in ("csv", "geojson"):
        out = tmp_path / f"tags.{fmt}"
        assert main(["labels", "export", p, str(out)]) == 0
        assert main(["labels", "import", p, str(out), "--replace"]) == 0
        assert np.array_equal(ProjectStore.open(p).patch_tags("case2-001")[0], tags)
    # a bad row anywhere: one line naming it, and no image's tags change
    (tmp_path / "bad.csv").write_text("image,x,y,size,gland,non_gland\ncase1 tile A.tif,0,0,112,1,0\n"
                                      "case2-001.png,0,0,112,1,0\nghost.png,0,0,112,1,0\n")
    capsys.readouterr()
    assert main(["labels", "import", p, str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv line 4: no image 'ghost'" in capsys.readouterr().err
    store = ProjectStore.open(p)
    assert store.patch_tags("case1_tile_A") is None and np.array_equal(store.patch_tags("case2-001")[0], tags)
    # undo goes back one step at a time, to untagged
    store.save_patch_tags("case2-001", np.zeros(n, np.uint8) + 1, 112, 56)
    assert main(["labels", "undo", p, "case2-001"]) == 0
    assert np.array_equal(ProjectStore.open(p).patch_tags("case2-001")[0], tags)
    with pytest.raises(OEEMError, match="tags for"):
        store.save_patch_tags("case2-001", np.zeros(n + 1, np.uint8), 112, 56)


def test_suggest_before_and_after_a_model(tmp_path, own_folder, capsys):
    from pipeline.cli import main
    from pipeline.config import preset
    from pipeline.review.suggest import suggest
    from pipeline.stages.patches import patch_grid
    from pipeline.store import ProjectStore

    p = str(tmp_path / "own.oeem.zarr")
    assert main(["init", str(own_folder), p]) == 0
    store = ProjectStore.open(p)
    cfg = preset("tiny").patches
    n = len(patch_grid(store.shape("case2-001"), cfg.size, cfg.stride))
    tags = np.zeros(n, np.uint8)
    tags[:2] = [1, 2]
    store.save_patch_tags("case2-001", tags, cfg.size, cfg.stride)
    # no model: the untagged images first, spread over the list; the tagged one last, with its open patches only
    picks = suggest(store, cfg, top=10)
    assert [s.image for s in picks][-1] == "case2-001" and len(picks) == 4
    assert {s.image for s in picks[:3]} == {"case1_tile_A", "case1_tile_B", "case9_x"}
    assert "no model yet" in picks[0].reason
    tagged = {tuple(c) for c in patch_grid(store.shape("case2-001"), cfg.size, cfg.stride)[:2].tolist()}
    assert not tagged & set(picks[-1].patches)
    # asked to (not the default), the preview learned from the tags ranks the images, never a labelled patch
    from pipeline.review.preview import ProjectPreview

    picks = suggest(store, cfg, top=10, preview=ProjectPreview(store, cfg))
    assert len(picks) == 4 and all("preview" in s.reason for s in picks)
    assert not tagged & set(next(s for s in picks if s.image == "case2-001").patches)
    # a classifier trained on the tags: scores from it, best first, never a labelled patch
    rows = "image,x,y,size,gland,non_gland\ncase1 tile A.tif,0,0,112,1,0\ncase1_tile_B.jpg,0,0,112,0,1\n"
    (tmp_path / "t.csv").write_text(rows)
    assert main(["labels", "import", p, str(tmp_path / "t.csv")]) == 0
    assert main(["patches", p, "--preset", "tiny"]) == 0
    assert main(["train-cls", p, "--preset", "tiny", "--device", "cpu"]) == 0  # cpu: 8 epochs of 430+ steps
    picks = suggest(ProjectStore.open(p), cfg, top=2, device="cpu")
    assert len(picks) == 2 and picks[0].score >= picks[1].score and 0 <= picks[1].score <= 1
    assert "classifier unsure" in picks[0].reason
    for s in picks:
        assert len(s.patches) == min(5, s.total - s.labelled) and s.labelled < s.total
        if s.image == "case2-001":
            assert not tagged & set(s.patches)
    capsys.readouterr()
    assert main(["suggest", p, "--top", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 4 and "classifier unsure" in out


def test_tags_made_on_another_grid_follow_what_covers_each_patch(tmp_path, own_folder):
    from pipeline.io.patch_labels import project_tags
    from pipeline.store.project import create_project

    store = create_project(own_folder, tmp_path / "p.oeem.zarr")
    old = patch_grid(store.shape("case2-001"), 112, 56)
    tags = np.zeros(len(old), np.uint8)
    tags[0] = GLAND  # the patch at the top-left corner
    store.save_patch_tags("case2-001", tags, 112, 56)
    assert np.array_equal(project_tags(store, "case2-001", 112, 56), tags)  # its own grid: as saved
    new = patch_grid(store.shape("case2-001"), 96, 48)
    moved = project_tags(store, "case2-001", 96, 48)
    assert len(moved) == len(new) and moved[0] == GLAND  # covered wholly by the tagged square
    overlap = [max(0, min(96, 112 - y)) * max(0, min(96, 112 - x)) for y, x in new.tolist()]
    assert set(np.flatnonzero(moved).tolist()) == {k for k, area in enumerate(overlap) if area > 96 * 96 / 2}
    assert project_tags(store, "case1_tile_A", 96, 48) is None


def test_untagged_images_get_pseudo_masks_when_asked(tmp_path, own_folder, capsys):
    """`patches.untagged_images`: a training image nobody tagged gets a grid of unlabelled patches, so the classifier
    learns nothing from it but stage 1 makes its pseudo-mask and the segmentation trains on it; by default it is
    left out."""
    from pipeline.cli import main
    from pipeline.stages.classify import patch_dataset
    from pipeline.stages.segment import tile_dataset
    from pipeline.store import ProjectStore
    from pipeline.store.project import project_config

    p = str(tmp_path / "own.oeem.zarr")
    assert main(["init", str(own_folder), p, "--test", "case9_*"]) == 0
    (tmp_path / "tags.csv").write_text("image,x,y,size,gland,non_gland\ncase1 tile A.tif,0,0,112,1,0\n"
                                       "case1 tile A.tif,80,48,112,0,1\n")
    assert main(["labels", "import", p, str(tmp_path / "tags.csv")]) == 0
    tiny = ["--preset", "tiny", "--device", "cpu", "--epochs", "1", "--iterations", "2", "--fast"]
    assert main(["run", p, *tiny]) == 0
    store = ProjectStore.open(p, mode="r")
    assert store.labelled_images(("train",)) == ["case1_tile_A"]
    assert not store.has("case2-001", "pseudo")
    tiles_alone = len(tile_dataset(store, project_config(store, "tiny").segmentation)[0])
    capsys.readouterr()
    assert main(["run", p, *tiny, "--set", "patches.untagged_images=true"]) == 0
    assert "== OEEM report ==" in capsys.readouterr().out
    store = ProjectStore.open(p, mode="r")
    summary = store.load_run("patches")["summary"]
    assert summary["images"] == 1 and summary["untagged_images"] == 2 and summary["labels_from"] == {"tags": 1}
    assert summary["patches"] == 2
    assert store.labelled_images(("train",)) == ["case1_tile_A", "case1_tile_B", "case2-001"]
    for n in ("case1_tile_B", "case2-001"):
        labels = store.read(n, "patch_labels")
        assert len(labels) == len(patch_grid(store.shape(n), 112, 56)) and not labels.any()
        assert store.has(n, "pseudo") and store.read(n, "pseudo").shape == store.shape(n)
    assert not store.has("case9_x", "pseudo")  # a test image is never trained on
    images, labels = patch_dataset(store, 112)  # the classifier still sees the 2 tagged patches only
    assert len(images) == 2 and store.load_run("classifier")["n_patches"] == 2
    cfg = project_config(store, "tiny", {"patches.untagged_images": True})
    assert len(tile_dataset(store, cfg.segmentation)[0]) == 3 * tiles_alone  # three same-sized images now


def test_untagged_images_join_the_self_training_rounds_when_asked(tmp_path, own_folder, capsys):
    """`selftrain.untagged_images`: stage 1 stays on the tagged image, then each self-training round takes the
    untagged training images in with the prediction as their label (all patches unlabelled: nothing ruled out);
    going back to round 0, or tagging a joined image, undoes the join."""
    from pipeline.cli import main
    from pipeline.stages.postprocess import clean_mask
    from pipeline.stages.segment import tile_dataset
    from pipeline.stages.selftrain import next_round_labels
    from pipeline.store import ProjectStore
    from pipeline.store.project import project_config

    p = str(tmp_path / "own.oeem.zarr")
    assert main(["init", str(own_folder), p, "--test", "case9_*"]) == 0
    (tmp_path / "tags.csv").write_text("image,x,y,size,gland,non_gland\ncase1 tile A.tif,0,0,112,1,0\n"
                                       "case1 tile A.tif,80,48,112,0,1\n")
    assert main(["labels", "import", p, str(tmp_path / "tags.csv")]) == 0
    tiny = ["--preset", "tiny", "--device", "cpu", "--epochs", "1", "--iterations", "2", "--fast",
            "--set", "selftrain.rounds=1", "--set", "selftrain.untagged_images=true"]
    assert main(["run", p, *tiny]) == 0
    assert "self-training round 1: 2 untagged training images labelled by the prediction" in capsys.readouterr().out
    store = ProjectStore.open(p, mode="r")
    assert store.load_run("cams")["images"] == 1  # stage 1 made the tagged image's pseudo-mask only
    assert store.labelled_images(("train",)) == ["case1_tile_A", "case1_tile_B", "case2-001"]
    for n in ("case1_tile_B", "case2-001"):
        assert store.joined_round(n) == 1 and not store.read(n, "patch_labels").any()
        assert not store.has(n, "pseudo_cam")  # no stage-1 mask to go back to
    assert store.joined_round("case1_tile_A") is None and store.has("case1_tile_A", "pseudo_cam")
    seg = store.load_run("segmentation")
    assert seg["labels_round"] == 1
    cfg = project_config(store, "tiny", save=False)
    tiles_joined = len(tile_dataset(store, cfg.segmentation)[0])
    # with nothing ruled out, a joined image's label is the cleaned prediction itself
    prob = store.read("case2-001", "prob")
    unrestricted = clean_mask((prob >= 0.5).astype(np.uint8), cfg.cam.drop_glands_below, cfg.cam.fill_holes_below)
    assert np.array_equal(next_round_labels(store, "case2-001", 112, cfg.cam), unrestricted)

    assert main(["selftrain", p, "--reset"]) == 0
    store = ProjectStore.open(p, mode="r")
    assert store.labelled_images(("train",)) == ["case1_tile_A"] and store.pseudo_round == 0
    for n in ("case1_tile_B", "case2-001"):
        assert store.joined_round(n) is None and not store.has(n, "pseudo") and not store.has(n, "patch_labels")
    assert tiles_joined == 3 * len(tile_dataset(store, cfg.segmentation)[0])  # three same-sized images, then one

    # a joined image the pathologist then tags is stage 1's again: its tags, its CAM pseudo-mask
    assert main(["run", p, *tiny]) == 0
    (tmp_path / "more.csv").write_text("image,x,y,size,gland,non_gland\ncase2-001.png,0,0,112,0,1\n")
    assert main(["labels", "import", p, str(tmp_path / "more.csv")]) == 0
    assert main(["run", p, *tiny]) == 0
    store = ProjectStore.open(p, mode="r")
    assert store.load_run("cams")["images"] == 2
    assert store.joined_round("case2-001") is None and store.read("case2-001", "patch_labels").any()
    assert store.has("case2-001", "pseudo_cam") and store.joined_round("case1_tile_B") == 1
    assert main(["cams", p, "--device", "cpu"]) == 0  # stage 1 again: the rounds start over without the joined
    store = ProjectStore.open(p, mode="r")
    assert store.pseudo_round == 0 and store.labelled_images(("train",)) == ["case1_tile_A", "case2-001"]
    assert store.joined_round("case1_tile_B") is None and not store.has("case1_tile_B", "pseudo")
