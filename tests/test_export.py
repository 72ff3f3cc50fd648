import os

import numpy as np
import pytest

from pipeline.errors import OEEMError
from pipeline.io.export import export_masks, read_exported_mask


@pytest.mark.parametrize("fmt", ["png", "tiff", "zarr"])
def test_export_round_trip(project_copy, tmp_path, fmt):
    store, _ = project_copy
    name = store.names("train")[0]
    edit = store.read(name, "pseudo").copy()
    edit[:20, :20] = 1
    store.save_correction(name, edit)
    paths = export_masks(store, tmp_path / "out", fmt, "corrected")
    by_name = {p.name.split("_anno")[0]: p for p in paths}
    assert np.array_equal(read_exported_mask(by_name[name]), edit)
    other = store.names("train")[1]
    assert np.array_equal(read_exported_mask(by_name[other]), store.read(other, "pseudo"))
    if fmt == "zarr":  # valid OME-Zarr 0.5 labels by an independent validator
        import zarr
        from ome_zarr_models.v05.image_label import ImageLabel

        for path in paths:
            ImageLabel.from_zarr(zarr.open_group(str(path), mode="r"))


def test_png_is_glas_style_0_255(project_copy, tmp_path):
    from PIL import Image

    store, _ = project_copy
    (path, *_) = export_masks(store, tmp_path, "png", "pseudo")
    assert path.name.endswith("_anno.png")
    assert set(np.unique(np.asarray(Image.open(path)))) <= {0, 255}


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder_is_refused(project_copy, tmp_path):
    store, _ = project_copy
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(OEEMError, match="read-only"):
        export_masks(store, ro, "png")


def test_unwritable_path_is_refused(project_copy, tmp_path):
    store, _ = project_copy
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OEEMError, match="cannot create the export folder"):
        export_masks(store, blocker / "sub", "png")
    with pytest.raises(OEEMError, match="unknown export format"):
        export_masks(store, tmp_path, "jpeg")
