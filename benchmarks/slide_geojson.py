"""A 20,000 x 20,000 px slide prediction as QuPath GeoJSON (`oeem export-slide`): file size, vertices, time and
peak memory, at two simplification tolerances.

    python benchmarks/slide_geojson.py [--side 20000] [--workdir /tmp/oeem-geojson-bench]

The prediction is synthetic (no model, no GlaS needed): an ellipse of tissue covering about half the slide, each
1024 px block inside it filled with the glands of ``pipeline.io.synth.synth_tissue`` (GlaS-like sizes and
lumens), written block by block into an OME-Zarr laid out as `oeem predict-slide` writes it. Prints a table and
writes ``benchmarks/results/slide_geojson.json``.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, write_json

BLOCK = 1024


def make_prediction(path: Path, side: int) -> int:
    import zarr

    from pipeline.io.synth import synth_tissue

    root = zarr.open_group(str(path), mode="w")
    root.attrs["oeem_slide_prediction"] = {"slide": "synthetic", "resampled_by": 1.0}
    pred = root.create_group("labels").create_group("prediction").create_array(
        "0", shape=(side, side), dtype="uint8", chunks=(BLOCK, BLOCK), fill_value=0)
    n = -(-side // BLOCK)
    filled = 0
    for by in range(n):
        for bx in range(n):
            cy, cx = (by + 0.5) * BLOCK / side - 0.5, (bx + 0.5) * BLOCK / side - 0.5
            if (cy / 0.4) ** 2 + (cx / 0.4) ** 2 > 1:  # glass
                continue
            h, w = min(BLOCK, side - by * BLOCK), min(BLOCK, side - bx * BLOCK)
            _, mask = synth_tissue(h, w, seed=by * n + bx)
            pred[by * BLOCK:by * BLOCK + h, bx * BLOCK:bx * BLOCK + w] = mask
            filled += 1
    return filled


def main() -> None:
    from pipeline.progress import run
    from pipeline.slides.geojson_export import export_slide_geojson

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--workdir", default="/tmp/oeem-geojson-bench")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    pred = work / f"synthetic-{args.side}.ome.zarr"
    t = time.perf_counter()
    blocks = make_prediction(pred, args.side)
    print(f"prediction: {blocks} tissue blocks of {BLOCK} px in {time.perf_counter() - t:.0f} s")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for tol in (0.25, 1.0):
        rec = run(export_slide_geojson(pred, work / f"glands-{tol}.geojson", tolerance=tol))
        rows.append({"tolerance_px": tol, "glands": rec["glands"], "vertices": rec["vertices"],
                     "MB": round(rec["bytes"] / 1e6, 1), "seconds": round(rec["seconds"], 1),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    print_table([(r["tolerance_px"], r["glands"], r["vertices"], r["MB"], r["seconds"], r["peak_rss_mb"])
                 for r in rows], ("tolerance px", "glands", "vertices", "file MB", "seconds", "peak RSS MB"))
    print(f"(peak RSS before the exports, the prediction written: {rss_before:.0f} MB; the mask itself is "
          f"{args.side ** 2 / 1e6:.0f} MB as uint8)")
    write_json("slide_geojson.json", {"machine": machine(), "side": args.side, "block": BLOCK,
                                      "tissue_blocks": blocks, "rss_before_mb": rss_before, "rows": rows})


if __name__ == "__main__":
    main()
