"""Speed where it comes from (issue 32, item 3): for the `cpu` preset's real networks, FLOPs per step, seconds per
step and achieved GFLOP/s against this machine's float32 matmul peak measured in the same run, and the levers
(channels-last, torch.compile, threads, oneDNN, conv+BN folding, the allocator) side by side.

    python benchmarks/speed.py [--steps 5] [--quick] [--out PATH] [--note "alone on the machine"]

Four works, at the preset's sizes: the classifier's training step (forward + backward + SGD, batch x input size),
the segmentation training step (batch x crop, main + auxiliary loss as stage 2 computes it), a CAM forward (one
batch of patch crops, as `cams` feeds them) and an inference forward (one sliding window). The baseline of each
is what the pipeline runs: channels-last, eager, torch's default threads, oneDNN on; fp32, plus bf16 rows where
the CPU computes it natively (`pipeline.device._cpu_has_native_bf16`). FLOPs are counted once per work with
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, forward and backward); seconds are the
median of ``--steps`` after warm-up. `torch.compile` runs in a child process bounded by ``--compile-timeout``,
with an empty inductor cache (a cold compile, as a first run pays it). The allocator lever changes glibc's malloc
for the whole process, so it is measured last. ``--quick`` (about a minute alone on 2 cores) only checks that
everything runs: one step per row, no warm-up, torch.compile on the segmentation step only, within 45 s. Time
rows alone on the machine; ``--note`` says how it was used. Writes ``benchmarks/results/speed.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from _common import RESULTS, machine, matmul_peak_gflops, print_table, write_json
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import preset
from pipeline.device import _cpu_has_native_bf16, autocast
from pipeline.stages.losses import segmentation_loss
from pipeline.stages.models import build_classifier, build_segmenter, fold_batchnorm

CHILD_TAG = "SPEED_CHILD_RESULT "
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class Work:
    key: str
    title: str
    build: Callable[[], nn.Module]
    x: torch.Tensor
    train: bool
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # the forward (train: returns the loss)


def works(cfg) -> dict[str, Work]:
    """The four measured works at the preset's sizes, on fixed random inputs (speed does not depend on them)."""
    cls, seg, cam, inf = cfg.classifier, cfg.segmentation, cfg.cam, cfg.inference
    g = torch.Generator().manual_seed(0)
    cls_x = torch.randn(cls.batch_size, 3, cls.input_size, cls.input_size, generator=g)
    cls_y = torch.randint(0, 2, (cls.batch_size, 2), generator=g).float()
    seg_x = torch.randn(seg.batch_size, 3, seg.crop_size, seg.crop_size, generator=g)
    seg_y = torch.randint(0, 2, (seg.batch_size, seg.crop_size, seg.crop_size), generator=g)

    def cls_loss(model, x):
        return F.binary_cross_entropy_with_logits(model(x).float(), cls_y)

    def seg_loss(model, x):  # as pipeline.stages.segment's loss: fp32 losses on both heads
        main, aux = model(x, with_aux=True)
        return (segmentation_loss(main.float(), seg_y, kind=seg.loss)
                + seg.aux_weight * segmentation_loss(aux.float(), seg_y, kind=seg.loss))

    return {
        "cls_train": Work("cls_train", f"classifier train step ({cls.backbone.name}, {cls.batch_size} x "
                          f"{cls.input_size} px)", lambda: build_classifier(cls), cls_x, True, cls_loss),
        "seg_train": Work("seg_train", f"segmentation train step ({seg.decoder} on {seg.backbone.name}, "
                          f"{seg.batch_size} x {seg.crop_size} px)", lambda: build_segmenter(seg), seg_x, True,
                          seg_loss),
        "cam_fwd": Work("cam_fwd", f"CAM forward ({cam.batch_size} crops x {cls.input_size} px)",
                        lambda: build_classifier(cls),
                        torch.randn(cam.batch_size, 3, cls.input_size, cls.input_size, generator=g), False,
                        lambda model, x: model.cam(x)),
        "infer_fwd": Work("infer_fwd", f"inference forward (1 window x {inf.crop_size} px)",
                          lambda: build_segmenter(seg), torch.randn(1, 3, inf.crop_size, inf.crop_size, generator=g),
                          False, lambda model, x: model(x)),
    }


def prepared(work: Work, nhwc: bool = True, fold: bool = False) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = work.build().train(work.train)
    if fold:
        model = fold_batchnorm(model)  # what prediction and CAMs run (pipeline.stages.models)
    model = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    return model, work.x.contiguous(memory_format=torch.channels_last) if nhwc else work.x.contiguous()


def step_fn(work: Work, model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    """One step as the stage runs it: training = forward + backward + SGD step; forward = no_grad, eval mode."""
    if work.train:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast(x.device, dtype):
                loss = work.run(model, x)
            loss.backward()
            opt.step()
    else:
        @torch.no_grad()
        def step():
            with autocast(x.device, dtype):
                work.run(model, x).float()
    return step


def count_flops(work: Work, dtype: torch.dtype | None) -> float:
    model, x = prepared(work)
    step = step_fn(work, model, x, dtype)
    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def median_seconds(step: Callable[[], None], steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds of ``steps`` timed calls after ``warmup`` untimed ones, seconds of the very first call)."""
    times = []
    for k in range(warmup + steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:]), times[0]


def matmul_peak(prec: str, n: int, repeats: int) -> float:
    """GFLOP/s of an n x n torch.mm in ``prec`` at the current thread count (_common's yardstick)."""
    return matmul_peak_gflops(n, repeats, torch.float32 if prec == "fp32" else torch.bfloat16)


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def glibc_keep_heap() -> str | None:
    """Large tensors come from mmap and go back to the kernel on every free (page faults on every step): keep them
    on the heap instead (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB). Process-wide and kept: measured last.
    Returns why it could not be set, or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError) as e:
        return f"no glibc mallopt ({e})"
    return None if ok else "mallopt refused"


def cpu_model() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", []
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return name, [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]


# ---------------------------------------------------------------------------- torch.compile, in a child process
def child_compile(args) -> None:
    """Run by the parent in a fresh process: compile one work's model with inductor and time its steps. Prints
    one JSON line tagged CHILD_TAG (an error is a result too)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out: dict = {}
    try:
        work = works(preset("cpu"))[args.child_compile]
        model, x = prepared(work)
        step = step_fn(work, torch.compile(model), x, DTYPES[args.dtype])
        # the first call compiles: never timed, whatever --warmup says
        out["s_per_step"], out["first_step_s"] = median_seconds(step, args.steps, max(1, args.warmup))
    except Exception as e:  # noqa: BLE001 - the parent records any failure in its table
        out["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
    print(CHILD_TAG + json.dumps(out), flush=True)


def run_compile(work_key: str, dtype: str, args) -> dict:
    if args.compile_timeout <= 0:
        return {"skipped": "--compile-timeout 0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-compile", work_key, "--dtype", dtype,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(torch.get_num_threads())]
    with tempfile.TemporaryDirectory(prefix="speed-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child and its inductor compile workers
            proc.communicate()
            return {"error": f"compile + steps not done within {args.compile_timeout:g} s (--compile-timeout)",
                    "timed_out": True}
    wall = time.perf_counter() - t0
    line = next((ln for ln in stdout.splitlines() if ln.startswith(CHILD_TAG)), None)
    if line is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail[:200]}"}
    return {**json.loads(line[len(CHILD_TAG):]), "child_wall_s": wall}


# ---------------------------------------------------------------------------- the parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row (median); default 5")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (oneDNN picks kernels); default 2")
    ap.add_argument("--quick", action="store_true",
                    help="a short validation run: 1 step per row with no warm-up, a smaller peak matmul, "
                         "torch.compile on the segmentation step only, bounded by 45 s; figures are rough")
    ap.add_argument("--compile-timeout", type=float, default=None,
                    help="seconds one torch.compile child may take, compile and steps included (default 600, "
                         "--quick 45; 0 skips the lever)")
    ap.add_argument("--out", type=Path, default=RESULTS / "speed.json", help="JSON written (default %(default)s)")
    ap.add_argument("--note", default="", help='how the machine was used, e.g. "alone" or "cores shared with ..."')
    ap.add_argument("--child-compile", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_compile:
        return child_compile(args)
    if args.quick:
        args.steps, args.warmup = 1, 0
    if args.compile_timeout is None:
        args.compile_timeout = 45.0 if args.quick else 600.0
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be at least 1 and --warmup at least 0")
    warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # mkldnn.flags() says it

    started = time.perf_counter()
    cfg = preset("cpu")
    w = works(cfg)
    default_threads = torch.get_num_threads()
    lever_threads = sorted({1, 2} - {default_threads})
    native_bf16 = _cpu_has_native_bf16()
    precisions = ["fp32", "bf16"] if native_bf16 else ["fp32"]
    cpu, flags = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    # the yardstick, per precision and per thread count a row runs at
    n, reps = (1536, 3) if args.quick else (3072, 7)
    peak = {(p, default_threads): matmul_peak(p, n, reps) for p in precisions}
    for t in lever_threads:
        with threads(t):
            peak[("fp32", t)] = matmul_peak("fp32", n, reps)
    flops = {(k, p): count_flops(work, DTYPES[p]) for k, work in w.items() for p in precisions}

    rows: list[dict] = []
    base: dict[tuple[str, str], float] = {}

    def record(key: str, prec: str, lever: str, s: float | None, note: str = "", n_threads: int = default_threads,
               **extra) -> None:
        f = flops[(key, prec)]
        row = {"work": key, "title": w[key].title, "precision": prec, "lever": lever, "threads": n_threads,
               "s_per_step": s, "gflop_per_step": f / 1e9, "note": note, **extra}
        if s is not None:
            row["gflop_per_s"] = f / s / 1e9
            row["fraction_of_peak"] = row["gflop_per_s"] / peak[(prec, n_threads)]
            row["speedup_vs_baseline"] = base[(key, prec)] / s if (key, prec) in base else 1.0
        rows.append(row)
        print(f"  {key:9} {prec} {lever:30} " + (f"{s:.3f} s" if s is not None else note), flush=True)

    def measure(key: str, prec: str, nhwc: bool = True, fold: bool = False) -> float:
        model, x = prepared(w[key], nhwc, fold)
        return median_seconds(step_fn(w[key], model, x, DTYPES[prec]), args.steps, args.warmup)[0]

    print(f"measuring: {args.warmup} warm-up + {args.steps} timed step(s) per row", flush=True)
    # baselines: what the pipeline runs
    for prec in precisions:
        for key in w:
            base[(key, prec)] = measure(key, prec)
            record(key, prec, "baseline", base[(key, prec)],
                   f"channels-last, eager, {default_threads} threads, oneDNN on")
    # levers, in fp32 (what a CPU without native bf16 computes in)
    for key in w:
        record(key, "fp32", "channels-last off (NCHW)", measure(key, "fp32", nhwc=False))
    for t in lever_threads:
        with threads(t):
            for key in w:
                record(key, "fp32", f"{t} thread{'s' if t > 1 else ''}", measure(key, "fp32"),
                       f"% of the {t}-thread peak", n_threads=t)
    with torch.backends.mkldnn.flags(enabled=False):
        for key in ("seg_train", "cls_train"):
            record(key, "fp32", "oneDNN off (mkldnn disabled)", measure(key, "fp32"), "aten's own convolutions")
    for key in ("cam_fwd", "infer_fwd"):
        record(key, "fp32", "conv+BN folded", measure(key, "fp32", fold=True), "eval only: BN folded into conv")
    for key in ("seg_train",) if args.quick else ("seg_train", "cls_train"):
        res = run_compile(key, "fp32", args)
        if "s_per_step" in res:
            note = f"first step incl. cold compile {res['first_step_s']:.0f} s"
        else:
            note = ("skipped: " + res["skipped"] if "skipped" in res else
                    f"not measured: {res['error']}" if res.get("timed_out") else f"failed: {res['error']}")
        record(key, "fp32", "torch.compile (inductor)", res.get("s_per_step"), note, compile=res)
    why_not = glibc_keep_heap()  # process-wide and not undone: measured last
    for key in ("seg_train", "cls_train"):
        record(key, "fp32", "allocator: glibc keeps heap", None if why_not else measure(key, "fp32"),
               f"not measured: {why_not}" if why_not else "mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB")

    header = ("work", "precision", "lever", "s/step", "GFLOP/step", "GFLOP/s", "% of peak", "vs baseline", "note")
    table = []
    for r in rows:
        s = r["s_per_step"]
        table.append((r["work"], r["precision"], r["lever"], f"{s:.3f}" if s is not None else "-",
                      f"{r['gflop_per_step']:.2f}", f"{r['gflop_per_s']:.1f}" if s is not None else "-",
                      f"{100 * r['fraction_of_peak']:.0f}" if s is not None else "-",
                      f"x{r['speedup_vs_baseline']:.2f}" if s is not None else "-", r["note"]))
    info = {"cpu": cpu, "cpu_flags": flags, "native_bf16": native_bf16, "threads": default_threads,
            "cores": os.cpu_count(), "load_1min_at_start": load, "note": args.note or "(none given)",
            "steps": args.steps, "warmup": args.warmup, "quick": args.quick, "matmul_n": n,
            "matmul_peak_gflop_per_s": {f"{p} at {t} thread{'s' if t > 1 else ''}": v for (p, t), v in peak.items()}}
    print(f"\nSpeed, cpu preset: torch {torch.__version__}; CPU {cpu} ({' '.join(flags) or 'no AVX flags'}); "
          f"{default_threads} threads on {os.cpu_count()} cores; load {load:.2f} at start; note: {info['note']}")
    print("matmul peak (" + f"{n} x {n} torch.mm, best of {reps}): "
          + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in info["matmul_peak_gflop_per_s"].items())
          + f"; native bf16: {native_bf16}" + ("" if native_bf16 else " (no bf16 rows: emulated bf16 is slower)"))
    for key, work in w.items():
        print(f"  {key}: {work.title}")
    print(f"s/step: median of {args.steps} after {args.warmup} warm-up; % of peak: achieved / the matmul peak of the "
          "same precision and threads; vs baseline: baseline s / row s (> 1 is faster)\n")
    print_table(table, header)
    write_json(args.out.resolve(), {"machine": machine(), **info, "works": {k: v.title for k, v in w.items()},
                                    "rows": rows, "seconds_total": time.perf_counter() - started})
    print(f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
