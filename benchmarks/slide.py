"""Whole-slide benchmarks: peak memory and time of `oeem predict-slide` on synthetic slides of two sizes, blocks/s
with 1 vs 2 dask workers, and DDP training with 1 vs 2 torchrun processes.

    python benchmarks/slide.py [--sizes 10000,20000] [--tissue 0.5] [--workdir /tmp/oeem-slide-bench]

The model is the `cpu` preset's segmentation network (random weights: speed and memory do not depend on them) in a
project made from the embedded sample data, so nothing here needs GlaS. Slides are made by
``pipeline.io.synth.write_synthetic_slide`` (tiled pyramidal TIFF, 0.62 µm/px, an ellipse of tissue on glass) and kept
in ``--workdir`` for the next run. Each prediction runs as its own process (``oeem predict-slide --fast``): its
peak RSS is the kernel's (``wait4``). Prints tables and writes ``benchmarks/results/slide.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, write_json  # noqa: E402


def make_project(work: Path) -> Path:
    """The sample project with a random-init `cpu`-preset segmentation checkpoint."""
    import torch

    from pipeline.config import preset
    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import segmentation_checkpoint, stage_name
    from pipeline.store import ProjectStore
    from pipeline.store.project import create_project

    path = work / "bench.oeem.zarr"
    if not path.exists():
        create_project("sample", path)
    store = ProjectStore.open(path)
    cfg = preset("cpu").segmentation
    torch.manual_seed(0)
    model = build_segmenter(cfg).eval()
    if not store.checkpoint_path(stage_name(None)).exists():
        store.save_checkpoint(stage_name(None), segmentation_checkpoint(
            model, torch.optim.SGD(model.parameters(), lr=0.01), 1, cfg))
    return path


def make_slide(work: Path, side: int, tissue: float) -> Path:
    from pipeline.io.synth import write_synthetic_slide

    path = work / f"synthetic_{side}_{int(tissue * 100)}.tif"
    if not path.exists():
        t = time.perf_counter()
        write_synthetic_slide(path, (side, side), tissue, mpp=0.62, tile=256, seed=side)
        print(f"made {path.name} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.0f} s")
    return path


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the process and its output."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024, out


def bench_sizes(project: Path, work: Path, sizes: list[int], tissue: float) -> list[dict]:
    rows = []
    for side in sizes:
        slide = make_slide(work, side, tissue)
        out = work / f"pred_{side}.ome.zarr"
        seconds, rss, _ = measured([sys.executable, "-m", "pipeline", "predict-slide", str(project), str(slide),
                                    "--fast", "--redo", "--out", str(out)])
        rec = json.loads((work / f"pred_{side}.ome.zarr.record.json").read_text())
        block_px = rec["config"]["block"] ** 2
        tissue_mpx = rec["blocks"]["tissue"] * block_px / 1e6
        rows.append({"side": side, "slide_mb": slide.stat().st_size / 2**20, "seconds": seconds,
                     "peak_rss_mb": rss, "tissue_blocks": rec["blocks"]["tissue"],
                     "glass_blocks": rec["blocks"]["skipped_as_glass"], "tissue_mpx": tissue_mpx,
                     "s_per_tissue_mpx": seconds / tissue_mpx, "levels": rec["levels"]})
    return rows


def bench_dask(project: Path, work: Path, side: int, tissue: float) -> list[dict]:
    from distributed import LocalCluster

    from pipeline.config import InferConfig, SlideConfig
    from pipeline.progress import run
    from pipeline.slides.predict import predict_slide
    from pipeline.store import ProjectStore

    store = ProjectStore.open(project)
    slide = make_slide(work, side, tissue)
    infer = InferConfig(scales=(1.0,), flip=False, crop_size=384, stride=320)
    rows = []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            t = time.perf_counter()
            rec = run(predict_slide(store, slide, SlideConfig(block=512), infer, out=work / f"dask{workers}.ome.zarr",
                                    restart=True, scheduler=cluster.scheduler_address, tasks_per_worker=2))
            seconds = time.perf_counter() - t
        rows.append({"workers": workers, "seconds": seconds, "blocks": rec["blocks"]["tissue"],
                     "blocks_per_s": rec["blocks"]["tissue"] / seconds})
    return rows


def bench_ddp(work: Path, iterations: int) -> list[dict]:
    """Full supervision on the sample images (no stage 1 needed), the cpu preset's network, global batch 8."""
    from pipeline.store.project import create_project

    rows = []
    for procs in (1, 2):
        project = work / f"ddp{procs}.oeem.zarr"
        if not project.exists():
            create_project("sample", project)
        sets = ["segmentation.label_source=mask", "segmentation.init_from_classifier=false",
                f"segmentation.threads={2 // procs}", "segmentation.checkpoint_every=1000"]
        cmd = ["torchrun", "--standalone", f"--nproc-per-node={procs}", "-m", "pipeline", "train-seg",
               str(project), "--preset", "cpu", "--device", "cpu", "--iterations", str(iterations), "--redo",
               *[arg for s in sets for arg in ("--set", s)]]
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        seconds, _, _ = measured([torchrun, *cmd[1:]], env={"OMP_NUM_THREADS": str(2 // procs)})
        rec = json.loads((project / "runs" / "segmentation.json").read_text())
        rows.append({"processes": procs, "seconds": seconds, "it_per_s": rec["it_per_s"],
                     "world_size": rec.get("world_size"), "loss_history": rec.get("loss_history")})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,20000", help="slide sides in px, comma-separated")
    ap.add_argument("--tissue", type=float, default=0.5, help="tissue fraction of each slide")
    ap.add_argument("--dask-side", type=int, default=6000, help="slide side for the 1 vs 2 worker comparison")
    ap.add_argument("--ddp-iterations", type=int, default=30)
    ap.add_argument("--workdir", default="/tmp/oeem-slide-bench")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: sizes,dask,ddp")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {"machine": machine(), "tissue_fraction": args.tissue}
    project = make_project(work)
    if "sizes" not in skip:
        rows = bench_sizes(project, work, [int(s) for s in args.sizes.split(",")], args.tissue)
        result["sizes"] = rows
        print_table([(f"{r['side']}²", f"{r['slide_mb']:.0f}", r["tissue_blocks"], r["glass_blocks"],
                      f"{r['tissue_mpx']:.0f}", f"{r['seconds']:.0f}", f"{r['s_per_tissue_mpx']:.2f}",
                      f"{r['peak_rss_mb']:.0f}") for r in rows],
                    ("slide", "file MB", "tissue blocks", "glass blocks", "tissue Mpx", "s", "s / tissue Mpx",
                     "peak RSS MB"))
        if len(rows) > 1:
            a, b = rows[0], rows[-1]
            print(f"\ntissue area x{b['tissue_mpx'] / a['tissue_mpx']:.2f} -> time x{b['seconds'] / a['seconds']:.2f},"
                  f" peak memory x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")
    if "dask" not in skip:
        rows = bench_dask(project, work, args.dask_side, args.tissue)
        result["dask"] = rows
        print()
        print_table([(r["workers"], r["blocks"], f"{r['seconds']:.1f}", f"{r['blocks_per_s']:.2f}") for r in rows],
                    ("dask workers", "blocks", "s", "blocks / s"))
        print(f"2 workers vs 1: x{rows[1]['blocks_per_s'] / rows[0]['blocks_per_s']:.2f} blocks / s")
    if "ddp" not in skip:
        rows = bench_ddp(work, args.ddp_iterations)
        import numpy as np

        one, two = (np.asarray(r["loss_history"]) for r in rows)
        rel = float(abs(two.mean() - one.mean()) / one.mean())
        result["ddp"] = {"rows": rows, "mean_loss_relative_difference": rel}
        print()
        print_table([(r["processes"], f"{r['seconds']:.1f}", f"{r['it_per_s']:.2f}",
                      f"{np.mean(r['loss_history']):.4f}") for r in rows],
                    ("torchrun processes", "s (incl. start)", "it / s", "mean loss"))
        print(f"2 processes vs 1: x{rows[1]['it_per_s'] / rows[0]['it_per_s']:.2f} it / s; mean loss differs by "
              f"{100 * rel:.1f} %")
    write_json("slide.json", result)


if __name__ == "__main__":
    main()
