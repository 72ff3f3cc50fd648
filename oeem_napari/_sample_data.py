"""File > Open Sample: one synthetic H&E image with its gland mask, from the embedded sample data."""
from __future__ import annotations

from oeem_napari._layers import MASK, label_colormap
from pipeline.io.data import load_image, read_mask
from pipeline.store.project import sample_data_folder


def make_sample_data():
    folder = sample_data_folder()
    image = load_image(folder / "train_1.png")
    mask = read_mask(folder / "train_1_anno.png", image.shape[:2])
    return [(image, {"name": "H&E (synthetic)", "rgb": True}, "image"),
            (mask, {"name": MASK, "colormap": label_colormap(MASK), "opacity": 0.4}, "labels")]
