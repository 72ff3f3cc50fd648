"""The OME-Zarr writer of ``pipeline.io.omezarr`` against ome-zarr-py and ngff-zarr: seconds, and whether they
write the same pyramid (the decision in that module's docstring).

A synthetic gland probability (uint8) and its mask (prob > 127) of SIDE x SIDE-3 px (an odd width on purpose) are
written as a slide prediction is: the probability as a multiscale image, the mask as ``labels/prediction``, both
in micrometres, levels halving until one fits 512 px. The libraries are optional here (``pip install ome-zarr
ngff-zarr dask-image``); one that is missing is skipped.

    python benchmarks/omezarr.py [SIDE]      # e.g. 20000; prints JSON
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

from pipeline.io.omezarr import add_levels, image_metadata, label_metadata, labels_group_metadata

MPP, BLOCK, MIN_SIDE = 0.62, 1024, 512


def synthetic(side: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    small = ndi.gaussian_filter(rng.random((side // 16 + 1, side // 16 + 1)).astype(np.float32), 2)
    small = (small - small.min()) / (small.max() - small.min())
    prob = np.kron(small, np.ones((16, 16), np.float32))[:side, :side - 3]
    prob = np.clip(prob * 255 + rng.normal(0, 10, prob.shape).astype(np.float32), 0, 255).astype(np.uint8)
    return prob, (prob > 127).astype(np.uint8)


def ours(out: Path, prob: np.ndarray, mask: np.ndarray) -> None:
    root = zarr.open_group(str(out), mode="w")
    root.create_array("0", shape=prob.shape, dtype="uint8", chunks=(BLOCK, BLOCK), fill_value=0)[...] = prob
    labels = root.require_group("labels")
    labels.attrs["ome"] = labels_group_metadata(["prediction"])
    pred = labels.require_group("prediction")
    pred.create_array("0", shape=mask.shape, dtype="uint8", chunks=(BLOCK, BLOCK), fill_value=0)[...] = mask
    levels = add_levels(root, MIN_SIDE)
    add_levels(pred, MIN_SIDE, labels=True)
    root.attrs["ome"] = image_metadata("gland probability", levels, MPP)
    pred.attrs["ome"] = label_metadata("prediction", levels, MPP)


def ome_zarr_py(out: Path, prob: np.ndarray, mask: np.ndarray, levels: int) -> None:
    import dask.array as da
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image, write_labels

    root = zarr.open_group(str(out), mode="w")
    common = dict(scale_factors=[2 ** k for k in range(1, levels)], axes="yx", scale={"y": MPP, "x": MPP},
                  axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": (BLOCK, BLOCK)})
    write_image(da.from_array(prob, chunks=BLOCK), root, method=Methods.LOCAL_MEAN, name="gland probability",
                **common)
    write_labels(da.from_array(mask, chunks=BLOCK), root, name="prediction", method=Methods.NEAREST,
                 label_metadata={"colors": label_metadata("x")["image-label"]["colors"]}, **common)


def ngff_zarr(out: Path, prob: np.ndarray, mask: np.ndarray, levels: int) -> None:
    import ngff_zarr as nz

    for data, name, method, where in ((prob, "gland probability", nz.Methods.DASK_BIN_SHRINK, out),
                                      (mask, "prediction", nz.Methods.DASK_IMAGE_NEAREST,
                                       out / "labels" / "prediction")):
        image = nz.to_ngff_image(data, dims=["y", "x"], scale={"y": MPP, "x": MPP}, name=name,
                                 axes_units={"y": "micrometer", "x": "micrometer"})
        multi = nz.to_multiscales(image, scale_factors=[2 ** k for k in range(1, levels)], method=method,
                                  chunks=BLOCK)
        nz.to_ngff_zarr(str(where), multi, version="0.5")


def levels_of(group: zarr.Group) -> list[np.ndarray]:
    return [np.asarray(group[d["path"]][...]) for d in group.attrs["ome"]["multiscales"][0]["datasets"]]


def compare(ref: Path, other: Path) -> dict:
    """Per level of both arrays: the shapes, and the pixels that differ (of how many) where the shapes agree."""
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(other), mode="r", use_consolidated=False)
    out = {"paths": [d["path"] for d in b.attrs["ome"]["multiscales"][0]["datasets"]]}
    for what, key in (("probability", None), ("mask", "labels/prediction")):
        mine, theirs = levels_of(a[key] if key else a), levels_of(b[key] if key else b)
        rows = []
        for k in range(max(len(mine), len(theirs))):
            x = mine[k] if k < len(mine) else None
            y = theirs[k] if k < len(theirs) else None
            row = {"level": k, "shapes": [None if x is None else list(x.shape), None if y is None else list(y.shape)]}
            if x is not None and y is not None and x.shape == y.shape:
                d = np.abs(x.astype(int) - y.astype(int))
                row.update(differing=int((d > 0).sum()), of=int(d.size), max_abs=int(d.max()))
            rows.append(row)
        out[what] = rows
    return out


def main(side: int) -> dict:
    prob, mask = synthetic(side)
    work = Path(tempfile.mkdtemp(prefix="oeem-omezarr-"))
    try:
        t0 = time.perf_counter()
        ours(work / "ours.ome.zarr", prob, mask)
        report = {"shape": list(prob.shape), "pipeline.io.omezarr": {"seconds": time.perf_counter() - t0}}
        levels = len(zarr.open_group(str(work / "ours.ome.zarr"), mode="r").attrs["ome"]["multiscales"][0]
                     ["datasets"])
        for name, write in (("ome-zarr-py", ome_zarr_py), ("ngff-zarr", ngff_zarr)):
            try:
                t0 = time.perf_counter()
                write(work / f"{name}.ome.zarr", prob, mask, levels)
            except ImportError as exc:
                report[name] = {"skipped": str(exc)}
                continue
            report[name] = {"seconds": time.perf_counter() - t0,
                            **compare(work / "ours.ome.zarr", work / f"{name}.ome.zarr")}
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4096), indent=1))
