"""A 20,000 x 20,000 px slide prediction as QuPath GeoJSON (`oeem export-slide`): file size, vertices, time and
peak memory, at two simplification tolerances.

    python benchmarks/slide_geojson.py [--side 20000] [--workdir /tmp/oeem-geojson-bench]

The prediction is made of real gland shapes without a model: an ellipse of tissue covering about half the slide,
tiled with the GlaS testA masks ($OEEM_GLAS_ROOT; without it, the glands of ``pipeline.io.synth.synth_tissue``),
written into an OME-Zarr laid out as `oeem predict-slide` writes it (1024 px chunks). Each export runs as its own
process (`oeem export-slide`), so its peak memory is its own. Prints a table and writes
``benchmarks/results/slide_geojson.json``.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, write_json

BLOCK = 1024


def tiles() -> tuple[list[np.ndarray], str]:
    """Gland masks to tile the slide with, and what they are: GlaS testA's when available, else synthetic ones."""
    import os

    root = os.environ.get("OEEM_GLAS_ROOT")
    if root and (Path(root) / "testA").is_dir():
        from pipeline.io.data import read_mask

        masks = [read_mask(p) for p in sorted((Path(root) / "testA").glob("testA_*_anno.*"))]
        masks = [m for m in masks if m.shape[0] >= 512 and m.shape[1] >= 768]  # the 775 x 522 px ones
        return masks, f"{len(masks)} GlaS testA masks"
    from pipeline.io.synth import synth_tissue

    return [synth_tissue(522, 775, seed=k)[1] for k in range(20)], "synthetic glands"


def make_prediction(path: Path, side: int) -> tuple[int, str]:
    import zarr

    masks, source = tiles()
    root = zarr.open_group(str(path), mode="w")
    root.attrs["oeem_slide_prediction"] = {"slide": "synthetic", "resampled_by": 1.0}
    pred = root.create_group("labels").create_group("prediction").create_array(
        "0", shape=(side, side), dtype="uint8", chunks=(BLOCK, BLOCK), fill_value=0)
    th, tw = 512, 768  # every mask cropped to one size: a regular grid
    k = 0
    for y in range(0, side - th + 1, th):
        band = np.zeros((th, side), np.uint8)
        for x in range(0, side - tw + 1, tw):
            cy, cx = (y + th / 2) / side - 0.5, (x + tw / 2) / side - 0.5
            if (cy / 0.4) ** 2 + (cx / 0.4) ** 2 <= 1:  # tissue; glass elsewhere
                band[:, x:x + tw] = masks[k % len(masks)][:th, :tw] > 0
                k += 1
        pred[y:y + th, :] = band
    return k, source


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/oeem-geojson-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pred = work / f"synthetic-{args.side}.ome.zarr"
    t = time.perf_counter()
    count, source = make_prediction(pred, args.side)
    print(f"prediction: {count} tiles of {source} in {time.perf_counter() - t:.0f} s")
    rows = []
    for tol in (0.25, 1.0):
        out = work / f"glands-{tol}.geojson"
        t = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run([sys.executable, "-m", "pipeline", "export-slide", str(pred), str(out), "--tolerance",
                               str(tol)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(done.stderr[-2000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        obj_glands = int(done.stdout.split(": ")[1].split(" glands")[0])
        vertices = int(done.stdout.split("glands, ")[1].split(" vertices")[0])
        rows.append({"tolerance_px": tol, "glands": obj_glands, "vertices": vertices,
                     "MB": round(out.stat().st_size / 1e6, 1), "seconds": round(time.perf_counter() - t, 1),
                     "peak_rss_mb": round(max(peak, before) / 1024)})
    print_table([(r["tolerance_px"], r["glands"], r["vertices"], r["MB"], r["seconds"], r["peak_rss_mb"])
                 for r in rows], ("tolerance px", "glands", "vertices", "file MB", "seconds", "peak RSS MB"))
    print(f"(the mask itself is {args.side ** 2 / 1e6:.0f} MB as uint8; each export ran as its own process)")
    write_json("slide_geojson.json", {"machine": machine(), "side": args.side, "block": BLOCK, "tiles": count,
                                      "source": source, "rows": rows})


if __name__ == "__main__":
    main()
