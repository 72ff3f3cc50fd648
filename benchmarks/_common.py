"""Shared helpers for the benchmark scripts: data location, machine peak, table printing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*[str(x) for x in r]))


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, default=str))
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
