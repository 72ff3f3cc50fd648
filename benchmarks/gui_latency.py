"""Does napari stay responsive while the plugin trains? Event-loop latency measured in a real viewer.

A 20 ms QTimer runs in napari's GUI thread; its lateness (actual minus expected interval) is the time the user
would wait for a repaint or a click. Measured idle, then while the dock widget trains the segmentation network
on the embedded sample data (cpu preset) in its background worker. Before that, the time to switch images in the
dock (its layers filled with the next image's). Run under a display (Xvfb):

    xvfb-run -a python benchmarks/gui_latency.py [--seconds 30]

``--preview``: instead of a training, a pathologist tags GlaS-sized (775 x 522) synthetic H&E images at ``--pace``
(a key every 0.25 s by default, faster than anyone tags) with the *preview* layer redrawn after every key; measured
are the event loop's lateness and the time from a key to the preview on screen that has learned from it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, print_table, write_json

TICK_MS = 20


def switch_seconds(app, widget, names: list[str], switches: int = 10) -> dict:
    """Seconds from picking another image in the dock to its layers drawn (the events processed): as the dock does
    it (layers both images have filled in place), and, interleaved in the same run, with every project and tagging
    layer removed first and so made anew (how the dock did it before: napari collects garbage on each removal). Two
    switches of each to warm up."""
    from oeem_napari._layers import ORDER, WEAK_LAYERS

    viewer = widget.viewer
    times: dict[str, list[float]] = {"in_place": [], "made_anew": []}
    for k in range(2 * (switches + 2)):
        way = "made_anew" if k % 2 else "in_place"
        t = time.perf_counter()
        if way == "made_anew":
            for lyr in [lyr for lyr in viewer.layers if lyr.name in ORDER + WEAK_LAYERS]:
                viewer.layers.remove(lyr)
        widget.image_combo.setCurrentText(names[(k + 1) % len(names)])
        app.processEvents()
        times[way].append(time.perf_counter() - t)
    out = {way: {"median_s": float(np.median(ts[2:])), "max_s": float(max(ts[2:]))} for way, ts in times.items()}
    return {**out, "switches": switches, "layers": sum(lyr.name in ORDER + WEAK_LAYERS for lyr in viewer.layers)}


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


def process_until(app, done, what: str, timeout: float = 600.0) -> None:
    """Run napari's event loop until ``done()``; a benchmark that waits longer than ``timeout`` s stops and says for
    what (a stuck worker must not hang an unattended ``make bench``)."""
    end = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > end:
            raise SystemExit(f"gui_latency: waited {timeout:.0f} s for {what}")
        app.processEvents()
        time.sleep(0.01)


def stats(late: np.ndarray) -> dict:
    return {"ticks": int(late.size), "p50_ms": float(np.percentile(late, 50)),
            "p95_ms": float(np.percentile(late, 95)), "p99_ms": float(np.percentile(late, 99)),
            "max_ms": float(late.max())}


def preview_phase(seconds: float, pace: float, live: bool = False) -> None:
    """Tag keys at ``pace`` seconds while the preview redraws; event-loop lateness and key-to-preview times.
    ``live``: a third phase, the same with *Train while tagging* on (the `cpu` preset's classifier)."""
    import napari
    from PIL import Image
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from pipeline.io.patch_labels import vectors_to_tags
    from pipeline.io.synth import synth_tissue
    from pipeline.stages.patches import patch_grid, patch_labels
    from pipeline.store.project import create_project

    tmp = Path(tempfile.mkdtemp())
    (tmp / "tiles").mkdir()
    truth = {}
    for k in range(5):
        image, truth[f"t{k}"] = synth_tissue(522, 775, seed=900 + k)
        Image.fromarray(image).save(tmp / "tiles" / f"t{k}.png")
    store = create_project(tmp / "tiles", tmp / "own.oeem.zarr")
    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("oeem-napari", "OEEM")
    app = QApplication.instance()
    widget.open_project(store.path)
    panel = widget.weak_labels
    for name in ("t1", "t2"):  # two images tagged already, so the preview can learn from the first key on
        corners = patch_grid(store.shape(name), 112, 56)
        store.save_patch_tags(name, vectors_to_tags(patch_labels(truth[name], corners, 112, 0.05)), 112, 56)
    # opening a project being tagged starts Train while tagging (the default): off, so that the phases before the
    # live one measure what they say (the live phase turns it on)
    panel.set_live(False)
    process_until(app, lambda: not widget.runner.busy, "Train while tagging to stop")
    widget.state.show("t0")
    idle = measure(app, min(10.0, seconds))
    current = {}
    pressed: dict[int, float] = {}  # request number -> when its key was pressed, until a preview shows it
    keys_pressed = [0]
    shown: list[float] = []

    def press():
        k = next(current["order"], None)
        if k is None:
            return
        t = time.perf_counter()
        if panel._act(lambda: panel.tagger.set_patches([k], int(current["truth"][k]))):
            pressed[panel._preview_wanted] = t
            keys_pressed[0] += 1

    real = panel._on_preview

    def on_preview(preview, model):
        real(preview, model)
        answered, now = panel._preview_running, time.perf_counter()
        for request in [r for r in pressed if r <= answered]:  # every key this preview has learned from
            shown.append(now - pressed.pop(request))

    panel._on_preview = on_preview
    keys = QTimer()
    keys.setInterval(int(pace * 1000))
    keys.timeout.connect(press)

    def tagging(with_preview: bool, name: str) -> np.ndarray:
        """Tag ``name`` (untagged, shown) patch by patch, row after row."""
        widget.state.show(name)
        current["truth"] = vectors_to_tags(patch_labels(truth[name], panel.tagger.corners, 112, 0.05))
        current["order"] = iter(range(len(current["truth"])))
        model = panel.preview_model
        if not with_preview:
            panel.preview_model = None  # the same keys with no preview: what the tagging itself costs
        keys.start()
        late = measure(app, seconds / 2)
        keys.stop()
        process_until(app, lambda: not panel._preview_running, "the preview to finish")
        panel.preview_model = model
        return late

    plain = tagging(False, "t3")
    pressed.clear()
    keys_pressed[0] = 0
    busy = tagging(True, "t0")
    extra = {}
    if live:
        shown_before, keys_before = list(shown), keys_pressed[0]
        panel.set_live(True)
        # it trains (its first chunk is done)
        process_until(app, store.checkpoint_path("classifier").is_file, "the first training chunk")
        training = tagging(True, "t4")
        panel.set_live(False)
        process_until(app, lambda: not widget.runner.busy, "Train while tagging to stop")
        extra = {"tagging_while_training": stats(training), "keys_while_training": keys_pressed[0] - keys_before}
        shown[:] = shown_before  # the key-to-preview times are the preview phase's: the classifier's take over
        keys_pressed[0] = keys_before
    viewer.close()
    shown_s = np.array(shown)
    res = {"idle": stats(idle), "tagging_no_preview": stats(plain), "tagging": stats(busy), "keys": keys_pressed[0],
           "keys_shown": int(shown_s.size),
           "key_to_preview_p50_s": round(float(np.percentile(shown_s, 50)), 3),
           "key_to_preview_p95_s": round(float(np.percentile(shown_s, 95)), 3), "pace_s": pace,
           "image": "775 x 522 synthetic H&E, 2 other images tagged", **extra}
    print(f"\nnapari event-loop lateness ({TICK_MS} ms timer), 2 x {seconds / 2:.0f} s of tagging, a key every "
          f"{pace} s\n")
    print_table([(k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['max_ms']:.1f}")
                 for k, v in (("idle", res["idle"]), ("tagging, no preview", res["tagging_no_preview"]),
                              ("tagging, preview redrawn", res["tagging"]),
                              *((("tagging, preview, classifier training", extra["tagging_while_training"]),)
                                if live else ()))],
                ("state", "p50 ms", "p95 ms", "p99 ms", "max ms"))
    print(f"\n{res['keys']} keys, {res['keys_shown']} of them shown in a preview; key -> preview on screen p50 "
          f"{res['key_to_preview_p50_s']} s, p95 {res['key_to_preview_p95_s']} s")
    write_json("gui_latency-preview.json", {"machine": machine(), **res})  # --live adds its phase here


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--preview", action="store_true", help="tagging with the preview, not a training")
    ap.add_argument("--pace", type=float, default=0.25, help="seconds between keys with --preview")
    ap.add_argument("--live", action="store_true", help="with --preview: a third phase with Train while tagging on")
    args = ap.parse_args()
    if args.preview:
        preview_phase(args.seconds, args.pace, args.live)
        return
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
    switch = switch_seconds(app, widget, store.names("train"))
    widget.weak_labels.unfold()  # the tagging box open: its overlay's four layers too
    switch["tagging"] = switch_seconds(app, widget, store.names("train"))
    widget.weak_labels.unfold(False)
    idle = measure(app, min(10.0, args.seconds))
    widget.iter_spin.setValue(100_000)
    widget.run_stage("segmentation")
    steps = []
    widget.runner.progressed.connect(lambda p: steps.append(p.step))
    process_until(app, lambda: bool(steps), "segmentation training to start")
    busy = measure(app, args.seconds)
    iterations = steps[-1]
    widget.cancel()
    process_until(app, lambda: not widget.runner.busy, "the cancelled training to stop")
    viewer.close()

    res = {"idle": stats(idle), "training": stats(busy), "iterations_during_measure": iterations,
           "image_switch": switch}
    print(f"\nnapari event-loop lateness ({TICK_MS} ms timer), {args.seconds:.0f} s of segmentation training\n")
    print_table([(k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}", f"{v['p99_ms']:.1f}", f"{v['max_ms']:.1f}")
                 for k, v in (("idle", res["idle"]), ("while training", res["training"]))],
                ("state", "p50 ms", "p95 ms", "p99 ms", "max ms"))
    print(f"\naim: p95 < 100 ms while training; {iterations} training iterations ran meanwhile")
    for sw, box in ((switch, ""), (switch["tagging"], ", tagging box open")):
        for way in ("in_place", "made_anew"):
            print(f"switching images in the dock ({sw['layers']} layers{box}, {way.replace('_', ' ')}): median "
                  f"{sw[way]['median_s']:.2f} s, at most {sw[way]['max_s']:.2f} s over {sw['switches']}")
    write_json("gui_latency.json", {"machine": machine(), **res})


if __name__ == "__main__":
    main()
