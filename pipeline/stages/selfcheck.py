"""A native crash in a convolution kernel costs one line, never the run or the napari window.

Some oneDNN kernels crash the process outright on some CPUs (a heap corruption or a segmentation fault, no Python
exception to catch): the strided 1x1 backward-weights kernel for AVX-512 did so with channels-last tensors of
fewer than 16 channels (docs/benchmarks.md#native-crashes-on-avx-512-cpus; the networks now avoid that one). So
before a network trains or predicts on a CPU, one training step and one prediction of it run in a **child
process**, first in the fast layout (channels-last), then, if the child died, in the plain layout, then with oneDNN
switched off. The first layout that survives is the one this process computes in, and the user is told in one line
what was switched off and why. The outcome is cached per CPU (model name and instruction-set flags), torch version,
oneDNN ISA cap, network, input size and precision, so the check costs a few seconds once per machine and network.

Run as ``python -m pipeline.stages.selfcheck PROBE_JSON``, the module is that child: it exits 0 when the step
and the prediction ran.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.config import ClassifierConfig, PipelineConfig, SegConfig, from_dict
from pipeline.device import LAYOUTS, layout, precision_name, use_layout
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress

log = logging.getLogger("oeem")

CACHE_VERSION = 1
# a probe takes seconds (ResNet38d in fp32: about 13 s on 2 cores); a heap corruption can also hang the child
# instead of killing it, which counts as a crash
CHILD_TIMEOUT_S = 300.0
PROBE_BATCH = 2  # the crash seen needed no particular batch (one crashed too); two keeps ResNet38d to seconds
_CACHE_FILE = "kernel-checks.json"


@dataclass(frozen=True)
class Probe:
    """One network at its training and prediction input sizes, in one precision and layout."""

    kind: str  # "classifier" or "segmentation"
    network: str  # JSON of the settings that build the network (backbone, decoder, head)
    train_size: int
    predict_size: int
    batch: int
    precision: str  # "fp32" or "bf16"
    layout: str  # one of pipeline.device.LAYOUTS
    threads: int = 0  # 0: torch's default

    def describe(self) -> str:
        net = json.loads(self.network)
        bb = net["backbone"]
        widths = "-".join(str(w) for w in bb.get("widths") or ()) or "default widths"
        head = f" + {net['decoder']}" if self.kind == "segmentation" else ""
        return f"the {self.kind} network ({bb['name']} {widths}{head}, {self.precision})"


def probe_for(kind: str, cfg: ClassifierConfig | SegConfig, precision: str, layout_name: str = "channels_last",
              predict_size: int | None = None) -> Probe:
    """The probe of a stage's network: its training input (a patch, a segmentation crop) and its prediction
    window. A pretrained backbone's file is left out: the layout is a property of the shapes, not of weights."""
    if kind == "classifier":
        assert isinstance(cfg, ClassifierConfig)
        network = {"backbone": {**asdict(cfg.backbone), "pretrained": None}}
        size = cfg.input_size
    elif kind == "segmentation":
        assert isinstance(cfg, SegConfig)
        network = {"backbone": {**asdict(cfg.backbone), "pretrained": None}, "decoder": cfg.decoder,
                   "head_channels": cfg.head_channels, "decoder_full_res": cfg.decoder_full_res}
        size = cfg.crop_size
    else:
        raise ValueError(f"unknown network kind {kind!r}")
    return Probe(kind, json.dumps(network, sort_keys=True), size, predict_size or size,
                 min(cfg.batch_size, PROBE_BATCH), precision, layout_name, cfg.threads)


# ---------------------------------------------------------------------------------------------- the child's work
def run_probe(probe: Probe) -> None:
    """One SGD step and one prediction of the probe's network (random weights and inputs): what a training and a
    prediction ask of the convolution kernels."""
    from pipeline.device import autocast, in_layout, place
    from pipeline.stages.models import build_classifier, build_segmenter

    if probe.threads > 0:
        torch.set_num_threads(probe.threads)
    use_layout(probe.layout)
    net_settings = json.loads(probe.network)
    if probe.kind == "classifier":
        net = build_classifier(from_dict(ClassifierConfig, net_settings))
    else:
        net = build_segmenter(from_dict(SegConfig, net_settings))
    net = place(net).train()
    dtype = torch.bfloat16 if probe.precision == "bf16" else None
    cpu = torch.device("cpu")
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(probe.batch, 3, probe.train_size, probe.train_size)
    with autocast(cpu, dtype):
        out = net(in_layout(x), with_aux=True) if probe.kind == "segmentation" else net(in_layout(x))
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().square().mean() for o in outs if o is not None)
    opt.zero_grad()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad(), autocast(cpu, dtype):
        y = torch.randn(1, 3, probe.predict_size, probe.predict_size)
        (net.cam(in_layout(y)) if probe.kind == "classifier" else net(in_layout(y))).float().sum().item()


# ---------------------------------------------------------------------------------------------- the parent's side
@dataclass
class Outcome:
    ok: bool  # the child ran the step and the prediction
    crashed: bool  # the child died natively (a signal, or a C-level abort)
    detail: str  # "SIGSEGV", "exit 1: <last line>", ...
    seconds: float


def probe_in_child(probe: Probe, timeout: float = CHILD_TIMEOUT_S) -> Outcome:
    """Run :func:`run_probe` in a fresh Python process; a native crash there is only a return code here."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.selfcheck", json.dumps(asdict(probe))],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=str(Path(__file__).resolve().parents[2]))
    except subprocess.TimeoutExpired:
        return Outcome(False, True, f"hung: no answer within {timeout:.0f} s", time.perf_counter() - t0)
    return outcome_of(done.returncode, done.stderr, time.perf_counter() - t0)


def outcome_of(returncode: int, stderr: str, seconds: float) -> Outcome:
    """A child's end as an :class:`Outcome`: killed by a signal (a segmentation fault, glibc's abort on a heap
    corruption) is a native crash; a Python traceback is an ordinary error the parent will meet and report."""
    if returncode == 0:
        return Outcome(True, False, "", seconds)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Outcome(False, True, name, seconds)
    last = (stderr.strip().splitlines() or ["no message"])[-1][:300]
    native = returncode in (134, 139) or "Traceback" not in stderr  # 128 + SIGABRT / SIGSEGV through a shell
    return Outcome(False, native, f"exit {returncode}: {last}", seconds)


def cpu_identity() -> dict[str, str]:
    """What decides which kernels oneDNN picks: the CPU's model and instruction-set flags, torch's version and an
    ISA cap in the environment."""
    model, flags = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = " ".join(sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4"))))
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return {"cpu": model, "flags": flags, "torch": torch.__version__,
            "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "threads": str(torch.get_num_threads())}


def cache_path() -> Path:
    """Where the outcomes are kept: ``$OEEM_CACHE_DIR``, else the user's cache folder (``~/.cache/oeem-napari``)."""
    root = os.environ.get("OEEM_CACHE_DIR")
    if root:
        return Path(root) / _CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "oeem-napari" / _CACHE_FILE


def _key(probe: Probe) -> str:
    blob = json.dumps({"cpu": cpu_identity(), "probe": {**asdict(probe), "threads": None}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION, "checks": {}}
    except (OSError, ValueError):
        return {"version": CACHE_VERSION, "checks": {}}


def _remember(probe: Probe, outcome: Outcome) -> None:
    """Keep an outcome (best effort: a read-only home only means the check runs again next time)."""
    from pipeline.store.project_store import atomic_write_json

    data = _read_cache()
    data["checks"][_key(probe)] = {"ok": outcome.ok, "crashed": outcome.crashed, "detail": outcome.detail,
                                   "what": probe.describe(), "layout": probe.layout, **cpu_identity(),
                                   "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_path(), data)
    except OSError as exc:
        log.debug("kernel self-check: could not keep the outcome in %s (%s)", cache_path(), exc)


def known_outcome(probe: Probe) -> Outcome | None:
    entry = _read_cache()["checks"].get(_key(probe))
    if entry is None:
        return None
    return Outcome(bool(entry["ok"]), bool(entry["crashed"]), str(entry.get("detail", "")), 0.0)


def safe_layout(probe: Probe) -> Job[tuple[str, str]]:
    """The fastest layout in which ``probe``'s network survives a training step and a prediction on this CPU, and
    a notice when it is not channels-last. Layouts slower than the process's current one are the only ones tried
    (a layout once given up is not taken back). An error when the network crashes in every layout."""
    start = LAYOUTS.index(layout())
    crashes = []
    for name in LAYOUTS[start:]:
        p = dataclasses.replace(probe, layout=name)
        outcome = known_outcome(p)
        if outcome is None:
            yield Progress("self-check", 0, 1, f"checking {p.describe()} in a child process ({name}; once per "
                                               "machine)")
            outcome = probe_in_child(p)
            if outcome.ok or outcome.crashed:  # a Python error proves nothing about the kernels
                _remember(p, outcome)
        if outcome.ok or not outcome.crashed:
            if not crashes:
                return name, ""
            cpu = cpu_identity()
            return name, (f"{probe.describe()} crashed natively in a self-check on this CPU ({cpu['cpu']}, torch "
                          f"{cpu['torch']}) with {', '.join(crashes)}; computing with {_WHAT[name]} instead "
                          f"(slower, safe). Cached in {cache_path()}")
        crashes.append(f"{_WHAT[name]} ({outcome.detail})")
    raise OEEMError(f"{probe.describe()} crashes natively on this CPU in every layout ({'; '.join(crashes)}): try "
                    "--precision fp32 (or bf16), or cap oneDNN's instruction set with ONEDNN_MAX_CPU_ISA=AVX2")


_WHAT = {"channels_last": "channels-last tensors", "contiguous": "contiguous (NCHW) tensors",
         "no_onednn": "oneDNN switched off"}


def check_networks(probes: list[Probe], device: torch.device) -> Job[list[str]]:
    """Make this process compute in a layout every one of ``probes`` survives (CPUs only: GPU kernels are not
    oneDNN's); the notices say what was switched off. Cheap when every outcome is cached."""
    if device.type != "cpu" or os.environ.get("OEEM_SELF_CHECK", "1") == "0":
        return []
    notices = []
    for probe in probes:
        name, notice = yield from safe_layout(probe)
        if LAYOUTS.index(name) > LAYOUTS.index(layout()):
            use_layout(name)
        if notice:
            log.warning("%s", notice)
            notices.append(notice)
            yield Progress("self-check", 1, 1, notice=notice)
    return notices


def run_probes(cfg: PipelineConfig, device: torch.device) -> list[Probe]:
    """The networks a whole run trains and predicts with, each in the precision its stage computes in."""
    from pipeline.device import resolve_precision

    def precision(name: str) -> str:
        return precision_name(resolve_precision(name, device))

    return [probe_for("classifier", cfg.classifier, precision(cfg.classifier.precision)),
            probe_for("segmentation", cfg.segmentation, precision(cfg.segmentation.precision),
                      predict_size=cfg.inference.crop_size)]


def check_stage_network(kind: str, cfg: ClassifierConfig | SegConfig, device: torch.device,
                        dtype: torch.dtype | None, predict_size: int | None = None) -> Job[list[str]]:
    """:func:`check_networks` for the one network a stage is about to build."""
    return (yield from check_networks([probe_for(kind, cfg, precision_name(dtype), predict_size=predict_size)],
                                      device))


if __name__ == "__main__":  # the child
    run_probe(Probe(**json.loads(sys.argv[1])))
