"""Fault injection: kill -9 a process at random moments while it saves corrections, writes training checkpoints
or exports masks, then check what it left.

    python benchmarks/faults.py [--kills 200] [--scenarios corrections,checkpoint,export] [--seed 0]

After every kill the project must open; the current correction must equal the last saved state or the one in
flight, its verified pixels must cover every pixel that differs from the pseudo-mask, and every state on the undo
stack must read; a checkpoint must load (weights-only) or not exist yet; every exported file must read back whole.
Prints a table and writes ``benchmarks/results/faults.json``. ``tests/test_faults.py`` runs a short version.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPE = (522, 775)  # a GlaS image: 2 x 2 chunks of 512 px
SCENARIOS = ("corrections", "checkpoint", "export")


# ---------------------------------------------------------------------------- project
def make_project(folder: Path, shape: tuple[int, int] = SHAPE, images: int = 2) -> Path:
    """A project of synthetic H&E images of GlaS size, with pseudo-masks (what corrections edit)."""
    from PIL import Image

    from pipeline.io.synth import synth_tissue
    from pipeline.store.project import create_project

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for k in range(images):
        img, mask = synth_tissue(*shape, seed=k)
        Image.fromarray(img).save(data / f"train_{k + 1}.png")
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(data / f"train_{k + 1}_anno.png")
    store = create_project(data, folder / "p.oeem.zarr")
    for n in store.names():
        store.write(n, "pseudo", np.zeros(store.shape(n), np.uint8))
    return store.path


def state(k: int, shape: tuple[int, int]) -> np.ndarray:
    """The k-th correction the child saves: a few random rectangles painted as gland (deterministic in k)."""
    rng = np.random.default_rng(k)
    labels = np.zeros(shape, np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, shape[0] - 60), rng.integers(0, shape[1] - 60)
        labels[y:y + rng.integers(10, 60), x:x + rng.integers(10, 60)] = 1
    return labels


# ---------------------------------------------------------------------------- children (killed)
def child_corrections(project: str, log: str) -> None:
    from pipeline.store import ProjectStore

    store = ProjectStore.open(project)
    name = store.names()[0]
    done = [int(x) for x in Path(log).read_text().split()] if Path(log).is_file() else []
    k = (max(done) if done else 0) + 1
    with open(log, "a") as fh:
        print("ready", flush=True)
        while True:
            store.save_correction(name, state(k, store.shape(name)))
            fh.write(f"{k}\n")
            fh.flush()
            os.fsync(fh.fileno())
            k += 1


def child_checkpoint(project: str, log: str) -> None:
    from pipeline.config import preset
    from pipeline.progress import run
    from pipeline.stages.segment import train_segmenter
    from pipeline.store import ProjectStore

    store = ProjectStore.open(project)
    cfg = preset("tiny").segmentation
    cfg.iterations, cfg.checkpoint_every, cfg.threads = 100_000, 1, 1
    print("ready", flush=True)
    run(train_segmenter(store, cfg, "cpu", run_name="faults", on_mismatch="restart"))


def child_export(project: str, out: str) -> None:
    from pipeline.io.export import export_masks
    from pipeline.store import ProjectStore

    store = ProjectStore.open(project)
    print("ready", flush=True)
    fmts = ("png", "tiff", "zarr", "geojson")
    k = 0
    while True:
        export_masks(store, out, fmts[k % len(fmts)], "pseudo")
        k += 1


# ---------------------------------------------------------------------------- checks (after a kill)
def check_corrections(project: Path, log: Path) -> str | None:
    from pipeline.store import ProjectStore

    try:
        store = ProjectStore.open(project)
        name = store.names()[0]
        saved = [int(x) for x in log.read_text().split()] if log.is_file() else []
        last = max(saved) if saved else 0
        current = store.correction(name)
        pseudo = store.read(name, "pseudo")
        if current is None:
            return None if last == 0 else f"no correction after {last} saves"
        labels, verified = current
        allowed = [state(k, labels.shape) for k in (last, last + 1) if k > 0]
        if not any(np.array_equal(labels, a) for a in allowed):
            return f"corrected matches neither save {last} nor {last + 1}"
        if np.any((labels != pseudo) & (verified == 0)):
            return "verified disagrees with corrected"
        for v in store.correction_history(name):
            store._read_version(name, v)
    except Exception as exc:  # noqa: BLE001 - any failure is what this benchmark counts
        return f"{type(exc).__name__}: {exc}"
    return None


def check_checkpoint(project: Path, log: Path) -> str | None:
    from pipeline.stages.models import safe_torch_load

    ck = project / "checkpoints" / "segmentation-faults.pt"
    if not ck.is_file():
        return None
    try:
        state_dict = safe_torch_load(ck)
        assert "model" in state_dict
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def check_export(project: Path, out: Path) -> str | None:
    from pipeline.io.export import read_exported_mask
    from pipeline.io.geojson import rasterise_geojson, read_geojson

    try:
        for p in out.iterdir():
            if p.name.startswith("."):
                continue  # a killed export's staging folder: hidden, never mistaken for a result
            if p.suffix == ".geojson":
                rasterise_geojson(read_geojson(p), SHAPE, str(p))
            else:
                m = read_exported_mask(p)
                assert m.shape == SHAPE, m.shape
    except Exception as exc:  # noqa: BLE001
        return f"{p.name}: {type(exc).__name__}: {exc}"
    return None


CHECKS = {"corrections": check_corrections, "checkpoint": check_checkpoint, "export": check_export}


def run_scenario(scenario: str, kills: int, folder: Path, seed: int = 0, max_delay: float = 0.6) -> dict:
    """Start the child, kill -9 it after a random delay once it is ready, check, repeat ``kills`` times."""
    rng = random.Random(seed)
    project = make_project(folder / scenario)
    if scenario == "checkpoint":  # a tiny project trains in a blink: the kills land in checkpoint writes
        from pipeline.store import ProjectStore

        store = ProjectStore.open(project)
        for n in store.names():
            store.write(n, "pseudo", store.read(n, "mask"))
    aux = folder / f"{scenario}.aux"
    if scenario == "export":
        aux.mkdir(exist_ok=True)
    problems, t0 = [], time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, __file__, f"child-{scenario}", str(project), str(aux)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"{scenario} child did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(rng.uniform(0.0, max_delay))
        if proc.poll() is not None:
            raise RuntimeError(f"{scenario} child ended by itself: {proc.stderr.read()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        problem = CHECKS[scenario](project, aux)
        if problem:
            problems.append({"kill": k, "problem": problem})
    return {"scenario": scenario, "kills": kills, "problems": len(problems), "details": problems[:20],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = ap.parse_args()
    from _common import machine, print_table, write_json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sc in args.scenarios.split(","):
            rows.append(run_scenario(sc, args.kills, Path(tmp), args.seed))
            r = rows[-1]
            print(f"{sc}: {r['kills']} kills, {r['problems']} problems, {r['seconds']:.0f} s", flush=True)
    print_table([(r["scenario"], r["kills"], r["problems"], f"{r['seconds']:.0f}") for r in rows],
                ("scenario", "kills", "problems", "seconds"))
    write_json(Path(args.json).resolve(), {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("child-"):
        {"child-corrections": child_corrections, "child-checkpoint": child_checkpoint,
         "child-export": child_export}[sys.argv[1]](sys.argv[2], sys.argv[3])
    else:
        main()
