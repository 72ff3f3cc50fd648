"""Does napari stay responsive while the plugin trains? Event-loop latency measured in a real viewer.

A 20 ms QTimer runs in napari's GUI thread; its lateness (actual minus expected interval) is the time the user
would wait for a repaint or a click. Measured idle, then while the dock widget trains the segmentation network
on the embedded sample data (cpu preset) in its background worker. Run under a display (Xvfb):

    xvfb-run -a python benchmarks/gui_latency.py [--seconds 30]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, print_table, write_json

TICK_MS = 20


def measure(app, seconds: float) -> np.ndarray:
    from qtpy.QtCore import QElapsedTimer, QTimer

    late: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick():
        now = clock.elapsed()
        late.append(max(0.0, now - last[0] - TICK_MS))
        last[0] = now

    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(tick)
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return np.array(late[1:])


def stats(late: np.ndarray) -> dict:
    return {"ticks": int(late.size), "p50_ms": float(np.percentile(late, 50)),
            "p95_ms": float(np.percentile(late, 95)), "p99_ms": float(np.percentile(late, 99)),
            "max_ms": float(late.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from pipeline.progress import run
    from pipeline.stages.cams import make_cams
    from pipeline.stages.classify import make_patch_labels, train_classifier
    from pipeline.store.project import create_project, project_config

    tmp = Path(tempfile.mkdtemp())
    store = create_project("sample", tmp / "sample.oeem.zarr")
    cfg = project_config(store, "cpu", {"classifier.epochs": 1})
    make_patch_labels(store, cfg.patches)
    run(train_classifier(store, cfg.classifier, cfg.patches, "cpu"))
    run(make_cams(store, cfg.cam, cfg.patches, "cpu"))

    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    app = QApplication.instance()
    widget.open_project(store.path)
    idle = measure(app, min(10.0, args.seconds))
    widget.iter_spin.setValue(100_000)
    widget.run_stage("segmentation")
    steps = []
    widget.runner.progressed.connect(lambda p: steps.append(p.step))
    while not steps:  # training has started
        app.processEvents()
        time.sleep(0.01)
    busy = measure(app, args.seconds)
    iterations = steps[-1]
    widget.cancel()
    while widget.runner.busy:
        app.processEvents()
        time.sleep(0.01)
    viewer.close()

    res = {"idle": stats(idle), "training": stats(busy), "iterations_during_measure": iterations}
    print(f"\nnapari event-loop lateness ({TICK_MS} ms timer), {args.seconds:.0f} s of segmentation training\n")
    print_table([(k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['max_ms']:.1f}")
                 for k, v in (("idle", res["idle"]), ("while training", res["training"]))],
                ("state", "p50 ms", "p95 ms", "p99 ms", "max ms"))
    print(f"\naim: p95 < 100 ms while training; {iterations} training iterations ran meanwhile")
    write_json("gui_latency.json", {"machine": machine(), **res})


if __name__ == "__main__":
    main()
