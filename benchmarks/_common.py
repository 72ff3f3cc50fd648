"""Shared helpers for the benchmark scripts: data location, machine peak, table printing, JSON output."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parents[1]
STARTED = time.time()  # this process's start: the wall time a result file records
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")  # what decides speed and precision


def glas_root() -> Path:
    root = os.environ.get("OEEM_GLAS_ROOT")
    if not root or not (Path(root) / "train").is_dir():
        sys.exit("OEEM_GLAS_ROOT is not set to a GlaS folder with train/ and testA/ "
                 "(e.g. export OEEM_GLAS_ROOT=../shared/data/glas); nothing measured")
    return Path(root)


def matmul_peak_gflops(n: int = 3072, repeats: int = 7, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul throughput (float32 unless ``dtype`` says), the yardstick for achieved FLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`FLAGS` it has (Linux; elsewhere the platform's processor)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    have = set(fields.get("flags", "").split())
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:  # virtual machines often hide the product name; family and model still tell it
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name, [f for f in FLAGS if f in have]


def machine() -> dict:
    from pipeline.device import precision_name, resolve_device, resolve_precision

    model, flags = cpu_model()
    device = resolve_device("auto")
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": model, "cpu_flags": flags, "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "precision_auto": precision_name(resolve_precision("auto", device)),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def commit() -> str:
    """The repository's commit, with ``+changes`` when tracked code differs from it (results files not counted)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return head + ("+changes" if changed else "")


def provenance() -> dict:
    """What a reviewer needs to remake a figure: the command, the commit, the machine, when and how long."""
    return {"command": shlex.join(["python", *[str(a) for a in sys.argv]]), "commit": commit(),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - STARTED, 1), "machine": machine()}


def project_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line of a benchmark that reads a project: ``PROJECT [--name NAME]`` (then its own options)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project")
    ap.add_argument("--name", default=None, help="results file suffix (default: from the project's folder name)")
    return ap


def results_name(project: str | Path, name: str | None = None) -> str:
    """A project benchmark's results-file suffix: ``--name``, else the project's folder name without
    ``end_to_end-`` and ``.oeem.zarr`` (``end_to_end-cpu.oeem.zarr`` -> ``cpu``)."""
    return name or Path(project).name.removesuffix(".oeem.zarr").removeprefix("end_to_end-")


def scored_splits(store, splits: tuple[str, ...], *also: str) -> dict[str, list[str]]:
    """The images of each split that have a mask to score against (and each of ``also``, e.g. ``prob``)."""
    return {s: [n for n in store.names(s) if all(store.has(n, k) for k in ("mask", *also))] for s in splits}


def object_rank_on_val(row: dict) -> tuple[float, float, float]:
    """How the glands benchmarks rank a cut on validation: object F1, then object Dice, then the lower Hausdorff
    (rounded, so that float noise never decides)."""
    v = row["val"]
    return round(v["object_F1"], 2), round(v["object_Dice"], 2), -round(v["object_Hausdorff"], 2)


def print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*[str(x) for x in r]))


def write_json(name: str | Path, data: dict) -> Path:
    """Write a result file atomically (under ``results/``; an absolute path goes where it says), stamped with its
    :func:`provenance`; the tracked files are what the docs' figures are checked against."""
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**data, "provenance": provenance()}, indent=2, default=str))
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None (said in one line) where matplotlib is missing:
    only the benchmarks' plots use it, so it is no dependency of the project."""
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib; only the benchmarks' plots use it)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
