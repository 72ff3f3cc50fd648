"""`oeem predict-images` with an exported model on GlaS testA: the same masks as the project's own prediction (to
the last pixel), seconds per image, and peak memory for 10 against 60 images (flat: one image at a time).

    python benchmarks/predict_images.py PROJECT [--workdir /tmp/oeem-predict-images]

PROJECT: a project trained on GlaS whose testA images are predicted (`oeem run` does that), e.g. one of
`benchmarks/weak_labels.py`'s. Each prediction runs as its own process (`oeem predict-images`) on files copied
from $OEEM_GLAS_ROOT/testA, so its peak RSS is its own. Prints a table and writes
``benchmarks/results/predict_images.json``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import glas_root, machine, print_table, write_json


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS (MB) and stdout of one command run as its own process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    if status != 0:
        sys.exit(proc.stderr.read()[-2000:])
    return time.perf_counter() - t, usage.ru_maxrss / 1024, out


def main() -> None:
    from pipeline.io.export import read_exported_mask
    from pipeline.store import ProjectStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project")
    ap.add_argument("--workdir", default="/tmp/oeem-predict-images")
    args = ap.parse_args()
    store = ProjectStore.open(args.project)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "model.oeem-model"
    subprocess.run([sys.executable, "-m", "pipeline", "export-model", args.project, str(model)], check=True,
                   capture_output=True)
    names = store.names("test")
    rows = []
    for count in (10, len(names)):
        folder = work / f"images-{count}"
        folder.mkdir()
        for n in names[:count]:
            shutil.copy(glas_root() / "testA" / f"{n}.png", folder / f"{n}.png")
        out = work / f"masks-{count}"
        seconds, rss, _ = peak_rss_mb([sys.executable, "-m", "pipeline", "predict-images", str(model), str(folder),
                                       "--out", str(out), "--device", "cpu"])
        same = sum(np.array_equal(read_exported_mask(out / f"{n}_anno.png"), store.read(n, "prediction"))
                   for n in names[:count])
        rows.append({"images": count, "identical_to_project": same, "seconds": round(seconds, 1),
                     "seconds_per_image": round(seconds / count, 2), "peak_rss_mb": round(rss)})
    import json

    inference = json.loads((work / "masks-10" / "oeem-predictions.json").read_text())
    print_table([(r["images"], f"{r['identical_to_project']}/{r['images']}", r["seconds"], r["seconds_per_image"],
                  r["peak_rss_mb"]) for r in rows],
                ("images", "identical masks", "seconds (incl. start)", "s / image", "peak RSS MB"))
    print(f"precision {inference['precision']}, model {model.stat().st_size / 1e6:.1f} MB")
    write_json("predict_images.json", {"machine": machine(), "project": args.project, "rows": rows,
                                       "precision": inference["precision"],
                                       "model_mb": round(model.stat().st_size / 1e6, 2)})


if __name__ == "__main__":
    main()
