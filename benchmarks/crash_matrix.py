"""Native crashes of the convolution kernels on this CPU, each case in its own child process.

    python benchmarks/crash_matrix.py [--isa native AVX2 AVX512_CORE ...] [--skip-convs] [--skip-networks]

Two parts, each under every oneDNN ISA cap given (``ONEDNN_MAX_CPU_ISA``; ``native`` = no cap), which is how one
CPU stands in for the kinds it is not (an AVX2-only CPU, an AVX-512 one without bf16):

- **convs**: single convolutions (kernel 1 / 3, stride 1 / 2, 3-24 input and 8-32 output channels, 56 / 112 px,
  channels-last, fp32 and bf16), one training step each: where exactly oneDNN's kernels crash;
- **networks**: every preset's classifier and segmentation network, channels-last and contiguous, one training step
  and one prediction (the product's self-check probe, ``pipeline.stages.selfcheck``), in fp32, and in bf16 without
  an ISA cap where the CPU has it natively (``auto`` never picks bf16 on the capped kinds: they have no native bf16).

Prints a table per part and writes ``benchmarks/results/crash_matrix.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, print_table, write_json  # noqa: E402

from pipeline.config import preset  # noqa: E402
from pipeline.device import _cpu_has_native_bf16  # noqa: E402
from pipeline.stages.selfcheck import cpu_identity, outcome_of, probe_for  # noqa: E402

CONV_CHILD = """
import sys, torch
ic, oc, hw, s, k, bf16 = (int(v) for v in sys.argv[1:7])
torch.set_num_threads(2)
conv = torch.nn.Conv2d(ic, oc, k, stride=s, padding=k // 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(8, ic, hw, hw).contiguous(memory_format=torch.channels_last)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16)):
        y = conv(x)
    y.float().sum().backward()
"""


def child(cmd: list[str], isa: str, timeout: float) -> tuple[bool, str]:
    """(ran, what went wrong): a signal, an exit code, or a hang (a heap corruption may deadlock, not crash)."""
    env = dict(os.environ)
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "native":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False,
                              cwd=str(Path(__file__).resolve().parents[1]))
    except subprocess.TimeoutExpired:
        return False, f"hung ({timeout:.0f} s)"
    outcome = outcome_of(done.returncode, done.stderr, 0.0)
    return outcome.ok, outcome.detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", nargs="+", default=["native", "AVX2"])
    ap.add_argument("--skip-convs", action="store_true")
    ap.add_argument("--skip-networks", action="store_true")
    ap.add_argument("--out", default="crash_matrix.json", help="JSON name under benchmarks/results")
    args = ap.parse_args()
    precisions = ["fp32", "bf16"]
    result = {"machine": machine(), "cpu": cpu_identity(), "native_bf16": _cpu_has_native_bf16(),
              "convs": [], "networks": []}
    if not args.skip_convs:
        crashes = []
        for isa, bf16, k, s, ic, oc, hw in itertools.product(args.isa, (0, 1), (1, 3), (1, 2), (3, 8, 12, 16, 24),
                                                             (8, 16, 32), (56, 112)):
            ok, detail = child([sys.executable, "-c", CONV_CHILD, *map(str, (ic, oc, hw, s, k, bf16))], isa, 20)
            row = {"isa": isa, "precision": precisions[bf16], "kernel": k, "stride": s, "in": ic, "out": oc,
                   "size": hw, "ok": ok, "detail": detail}
            result["convs"].append(row)
            if not ok:
                crashes.append(row)
                print(row, flush=True)
        print(f"\nconvolutions: {len(result['convs'])} cases, {len(crashes)} crashed")
        print_table([(r["isa"], r["precision"], f"{r['kernel']}x{r['kernel']}", r["stride"], r["in"], r["out"],
                      r["size"], r["detail"]) for r in crashes],
                    ("ISA cap", "precision", "kernel", "stride", "in ch", "out ch", "px", "crash"))
    if not args.skip_networks:
        from pipeline.stages.selfcheck import Probe

        native = ["fp32", "bf16"] if _cpu_has_native_bf16() else ["fp32"]
        for isa, name, kind, precision, layout in itertools.product(
                args.isa, ("tiny", "cpu", "paper"), ("classifier", "segmentation"), precisions,
                ("channels_last", "contiguous")):
            if precision not in (native if isa == "native" else ["fp32"]):
                continue
            cfg = preset(name)
            stage = cfg.classifier if kind == "classifier" else cfg.segmentation
            probe: Probe = probe_for(kind, stage, precision, layout,
                                     predict_size=cfg.inference.crop_size if kind == "segmentation" else None)
            ok, detail = child([sys.executable, "-m", "pipeline.stages.selfcheck",
                                json.dumps(probe.__dict__)], isa, 300)
            result["networks"].append({"isa": isa, "preset": name, "kind": kind, "precision": precision,
                                       "layout": layout, "ok": ok, "detail": detail})
            print(result["networks"][-1], flush=True)
        print_table([(r["isa"], r["preset"], r["kind"], r["precision"], r["layout"], "ok" if r["ok"] else r["detail"])
                     for r in result["networks"]], ("ISA cap", "preset", "network", "precision", "layout", "outcome"))
    result["command"] = "python benchmarks/crash_matrix.py " + " ".join(sys.argv[1:])
    write_json(args.out, result)


if __name__ == "__main__":
    main()
