"""Reading images and masks, finding pairs, and the clear errors for bad input."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.errors import OEEMError
from pipeline.io.data import find_samples, load_image, read_image, read_mask
from tests.conftest import rgb


def test_finds_glas_png_layout_with_splits(small_folder):
    samples = find_samples(small_folder, require_masks=True)
    assert [s.name for s in samples if s.split == "train"] == ["train_1", "train_2", "train_3", "train_4"]
    assert {s.name for s in samples if s.split == "test"} == {"testA_1", "testA_2"}
    assert all(s.mask_path.name == f"{s.name}_anno.png" for s in samples)


def test_each_image_says_why_it_is_in_its_split_and_patterns_override_the_names(tmp_path, capsys):
    from pipeline.cli import main

    for name in ("train_1", "testA_2", "val_3", "case_4", "TESTB_5"):
        Image.fromarray(rgb()).save(tmp_path / f"{name}.png")
    (tmp_path / "test").mkdir()
    Image.fromarray(rgb()).save(tmp_path / "test" / "case_6.png")
    got = {s.name: (s.split, s.why) for s in find_samples(tmp_path)}
    assert got == {"train_1": ("train", "named train_*"), "testA_2": ("test", "named testA_*"),
                   "val_3": ("val", "named val_*"), "case_4": ("train", "no split in the name (training by default)"),
                   "TESTB_5": ("test", "named TESTB_*"), "case_6": ("test", "in a folder test/")}
    # a pattern decides alone: the GlaS prefixes no longer send an image anywhere
    assert {s.name: s.split for s in find_samples(tmp_path, train="*")} == dict.fromkeys(got, "train")
    assert {s.split for s in find_samples(tmp_path, test="case_*") if s.name in ("testA_2", "val_3")} == {"train"}
    assert main(["init", str(tmp_path), str(tmp_path / "p.zarr")]) == 0
    told = capsys.readouterr().out
    assert "  2 training images: 1 named train_*; 1 no split in the name (training by default)\n" in told
    assert "  1 validation images: 1 named val_*\n" in told and "--train '*' for all" in told
    assert main(["init", str(tmp_path), str(tmp_path / "q.zarr"), "--train", "*"]) == 0
    assert "  6 training images: 6 --train '*'\n  0 validation images\n  0 test images\n" in capsys.readouterr().out


def test_official_bmp_layout_with_instance_ids(tmp_path):
    inst = np.zeros((40, 50), np.uint8)
    inst[5:15, 5:15] = 1
    inst[20:30, 20:40] = 7
    Image.fromarray(rgb(40, 50)).save(tmp_path / "train_1.bmp")
    Image.fromarray(inst).save(tmp_path / "train_1_anno.bmp")
    (s,) = find_samples(tmp_path)
    mask = read_mask(s.mask_path, (40, 50))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 100 + 200


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "no images found"),
    (lambda p: (p / "notes.txt").write_text("x"), "no images found"),
])
def test_empty_folder_is_refused(tmp_path, setup, fragment):
    setup(tmp_path)
    with pytest.raises(OEEMError, match=fragment):
        find_samples(tmp_path)


def test_missing_folder_and_missing_masks(tmp_path):
    with pytest.raises(OEEMError, match="folder not found"):
        find_samples(tmp_path / "nope")
    Image.fromarray(rgb()).save(tmp_path / "train_1.png")
    assert find_samples(tmp_path)[0].mask_path is None
    with pytest.raises(OEEMError, match="train_1.png: no gland mask found"):
        find_samples(tmp_path, require_masks=True)


def test_mask_size_must_match_image(tmp_path):
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(OEEMError, match=r"m.png: mask size 30x30 differs from its image 32x20"):
        read_mask(tmp_path / "m.png", (20, 32))


def test_grayscale_refused_rgba_converted(tmp_path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(OEEMError, match="g.png: grayscale image"):
        read_image(tmp_path / "g.png")
    rgba = np.dstack([rgb(10, 10), np.full((10, 10), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "t.png")
    with pytest.raises(OEEMError, match="transparent"):
        read_image(tmp_path / "t.png")


def test_16bit_tiff_is_scaled_to_8bit(tmp_path):
    arr16 = (rgb(8, 8).astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "x.tif", arr16)
    out = load_image(tmp_path / "x.tif")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb(8, 8))


def test_corrupt_file_names_the_file(tmp_path):
    (tmp_path / "train_1.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(OEEMError, match="train_1.png: cannot be read as an image"):
        read_image(tmp_path / "train_1.png")


def test_colour_mask_refused(tmp_path):
    Image.fromarray(rgb(8, 8)).save(tmp_path / "m.png")
    with pytest.raises(OEEMError, match="colour image"):
        read_mask(tmp_path / "m.png")


@pytest.mark.glas
def test_real_glas_layout(glas_root):
    train = find_samples(glas_root / "train", require_masks=True)
    test = find_samples(glas_root / "testA", require_masks=True)
    assert len(train) == 85 and len(test) == 60
    assert {s.split for s in train} == {"train"} and {s.split for s in test} == {"test"}
    image = load_image(train[0].image_path)
    mask = read_mask(train[0].mask_path, image.shape[:2])
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert 0.2 < mask.mean() < 0.9  # glands cover a good part of a GlaS image
