"""Writer: File > Save Selected Layers on a Labels layer writes a gland mask in the formats the dock exports
(PNG and TIFF 0/255, OME-Zarr 0/1 labels, QuPath GeoJSON polygons), chosen by the file's extension."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import OEEMError
from pipeline.io.export import write_mask_file


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    mask = np.asarray(data)
    if mask.ndim != 2:
        raise OEEMError(f"{path}: only 2-D label images can be saved as a gland mask (this layer is "
                        f"{mask.ndim}-D)")
    # any non-zero label is gland: masks hold 0/1, instance-labelled glands hold 1..N
    return [str(write_mask_file(path, mask > 0, meta.get("name")))]
