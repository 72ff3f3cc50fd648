"""Weak labels box: tag the patches of the image shown - gland only, no gland, both - by key, brush stroke,
rectangle or lasso, or the whole image at once; the model's proposals to accept; the image to label next.

Every action is one call of ``pipeline.review.tagging.Tagger`` (saved at once, crash-safe, undoable) or of
``pipeline.review.suggest``; this box only draws and routes keys and mouse strokes. Unfolded, it shows the
overlay (``_layers.WEAK_LAYERS``) and its keys work on it and on the H&E; folded, both are gone.

After every change of tags the *preview* layer is redrawn from ``pipeline.review.preview`` in a thread: one
refresh at a time, and the newest request wins (requests made while one runs collapse into one), so a key press
never waits on it."""
from __future__ import annotations

import os

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QThreadPool, QTimer
from qtpy.QtWidgets import QButtonGroup, QCheckBox, QGridLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from oeem_napari import _layers
from oeem_napari._jobs import run_step
from oeem_napari._panels.fold import FoldingBox
from oeem_napari._panels.state import LIVE_JOB, DockState
from pipeline.errors import OEEMError
from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND, TAG_NAMES, UNLABELLED
from pipeline.review.preview import Preview, ProjectPreview
from pipeline.review.tagging import Tagger

# one key per tag for the patch under the cursor; with Ctrl the whole image (napari reads Shift+digit as another
# character on most keyboards, and Ctrl+0 is its fit-to-view, so there is no whole-image key for unlabelled)
TAG_KEYS = {"1": GLAND, "2": NON_GLAND, "3": BOTH, "0": UNLABELLED}
IMAGE_KEYS = {"Control-1": GLAND, "Control-2": NON_GLAND, "Control-3": BOTH}
# none of these is napari's own on an Image layer; on the weak-label layers (not editable) they replace the
# Labels keys that would only paint
ACTION_KEYS = {"A": "accept all proposals", "P": "proposals", "U": "undo", "N": "next image to label",
               "B": "brush on/off"}
HELP = ("Over the image: <b>1</b> gland only, <b>2</b> no gland, <b>3</b> both, <b>0</b> unlabelled: the patch "
        "under the cursor; <b>Ctrl+1/2/3</b> the whole image. <b>B</b> brush: a drag tags every patch it "
        "crosses. <b>Rectangle</b> / <b>Lasso</b>: the patches inside. <b>P</b> proposals, <b>A</b> accept "
        "them all, <b>U</b> undo, <b>N</b> next image to label.")


def ellipse_outline(corners: np.ndarray, points: int = 64) -> np.ndarray:
    """The ellipse napari draws inside its four bounding-box ``corners`` (in order), as a polygon."""
    c = corners.mean(axis=0)
    a, b = (corners[1] + corners[2]) / 2 - c, (corners[0] + corners[1]) / 2 - c
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)[:, None]
    return c + np.cos(t) * a + np.sin(t) * b


class WeakLabelsPanel(FoldingBox):
    def __init__(self, state: DockState):
        super().__init__("Weak labels: tag patches")
        self.state = state
        self.tagger: Tagger | None = None
        self.tag = GLAND  # what the brush, the shapes and the whole-image button give
        self.suggested: list[int] = []  # patches of the image shown that `suggest` picked
        self._habits: dict[str, dict] = {}  # visibility and opacity of the overlay, kept across images
        self._image_layer = None  # the H&E the keys are bound on
        self.preview_model: ProjectPreview | None = None  # the project's, kept between tags (its caches)
        self.preview: Preview | None = None  # the newest preview of the image shown
        self._preview_wanted = 0  # requests made; the one running answers request `_preview_running`
        self._preview_running = 0  # 0: none running
        self.preview_worker = None
        self.live_chunk = 50  # steps between the background classifier's checkpoints
        self._live_store = None  # the project the training while tagging trains
        self._live_result = None  # (image, mask, steps, images): the last checkpoint's pseudo-mask, from its thread
        self._live_shown: str | None = None  # the image whose preview layer the classifier took over
        lay = self.body_layout(QVBoxLayout)
        grid = QGridLayout()
        self.tag_buttons = QButtonGroup(self)
        for col, (key, tag) in enumerate(TAG_KEYS.items()):
            btn = QPushButton(f"{key} {TAG_NAMES[tag]}")
            btn.setCheckable(True)
            btn.setToolTip(f"{key}: this tag for the patch under the cursor; also what the brush, the shapes "
                           "and Whole image give")
            if tag in _layers.TAG_COLOURS:
                r, g, b, _ = (int(255 * c) for c in _layers.TAG_COLOURS[tag])
                btn.setStyleSheet(f"QPushButton:checked {{ border: 2px solid rgb({r},{g},{b}); }}")
            self.tag_buttons.addButton(btn, tag)
            grid.addWidget(btn, 0, col)
        self.tag_buttons.button(self.tag).setChecked(True)
        self.tag_buttons.idClicked.connect(self.set_tag)
        self.brush_btn = QPushButton("Brush (B)")
        self.brush_btn.setCheckable(True)
        self.brush_btn.setToolTip("on: a drag over the image tags every patch it crosses (hold Space to pan)")
        self.brush_btn.toggled.connect(self.set_brush)
        rect_btn, lasso_btn = QPushButton("Rectangle"), QPushButton("Lasso")
        rect_btn.setToolTip("draw one rectangle: the patches whose centre is inside take the chosen tag")
        lasso_btn.setToolTip("draw one lasso: the patches whose centre is inside take the chosen tag")
        rect_btn.clicked.connect(lambda: self.draw("add_rectangle"))
        lasso_btn.clicked.connect(lambda: self.draw("add_polygon_lasso"))
        whole_btn = QPushButton("Whole image")
        whole_btn.setToolTip("every patch of the image takes the chosen tag (Ctrl+1/2/3)")
        whole_btn.clicked.connect(lambda: self.tag_image(self.tag))
        for col, btn in enumerate((self.brush_btn, rect_btn, lasso_btn, whole_btn)):
            grid.addWidget(btn, 1, col)
        lay.addLayout(grid)
        row = QHBoxLayout()
        self.proposals_btn = QPushButton("Proposals (P)")
        self.proposals_btn.setToolTip("the tag the current model gives each unlabelled patch, shown faint: the "
                                      "segmentation's prediction when the image has one, else the classifier's, "
                                      "else the preview's (learned from the tags)")
        self.proposals_btn.clicked.connect(self.propose)
        accept_btn, undo_btn = QPushButton("Accept all (A)"), QPushButton("Undo (U)")
        accept_btn.setToolTip("every unlabelled patch takes its proposal; tagged patches keep theirs")
        accept_btn.clicked.connect(self.accept_proposals)
        undo_btn.setToolTip("take back the last change of this image's tags")
        undo_btn.clicked.connect(self.undo)
        self.next_btn = QPushButton("Next to label (N)")
        self.next_btn.setToolTip("the training image most worth labelling now (`oeem suggest`), its patches to "
                                 "look at outlined in magenta")
        self.next_btn.clicked.connect(self.next_image)
        for btn in (self.proposals_btn, accept_btn, undo_btn, self.next_btn):
            row.addWidget(btn)
        lay.addLayout(row)
        self.progress_label = QLabel("no project open")
        self.progress_label.setWordWrap(True)
        lay.addWidget(self.progress_label)
        self.live_box = QCheckBox("Train while tagging")
        self.live_box.setToolTip("train the patch classifier in the background from the tags so far, picking up "
                                 "new ones as you tag; the preview layer shows its pseudo-mask of the image on "
                                 "screen after each checkpoint. Run all stops it and continues from it, its "
                                 "steps credited by the share of today's tags they learned from (`oeem "
                                 "train-live` from a terminal)")
        self.live_box.toggled.connect(self.set_live)
        lay.addWidget(self.live_box)
        self.preview_label = QLabel("")
        self.preview_label.setWordWrap(True)
        self.preview_label.setToolTip("the orange layer: a pixel classifier learned from the tags (and masks) in a "
                                      "second, redrawn after every change; a first guess until the classifier has "
                                      "trained")
        lay.addWidget(self.preview_label)
        self.help_label = QLabel(HELP)
        self.help_label.setWordWrap(True)
        lay.addWidget(self.help_label)
        self.actions = {
            **{key: (lambda t=tag: self.tag_at_cursor(t)) for key, tag in TAG_KEYS.items()},
            **{key: (lambda t=tag: self.tag_image(t)) for key, tag in IMAGE_KEYS.items()},
            "A": self.accept_proposals, "P": self.propose, "U": self.undo, "N": self.next_image,
            "B": lambda: self.brush_btn.toggle(),
        }
        self.toggle.toggled.connect(lambda _on: self._show())
        state.opened.connect(self._on_opened)
        state.shown.connect(lambda _name: self._show())
        state.changed.connect(self.update_progress)
        state.busy.connect(lambda busy: self.proposals_btn.setEnabled(not busy))
        state.progressed.connect(lambda _p: self._show_live())
        state.live_resumed.connect(lambda: self.set_live(True))

    # ------------------------------------------------------------------ the overlay
    @property
    def viewer(self):
        return self.state.viewer

    def layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_opened(self) -> None:
        """A project with images that have no mask needs tags: open the box (and so its overlay)."""
        store = self.state.store
        cfg = self.state.config(save=False)
        self.preview_model, self.preview = ProjectPreview(store, cfg.patches, cfg.preview), None
        self.update_progress()
        if any(not store.has(n, "mask") for n in store.names("train")):
            self.unfold()
            # a project being tagged with no classifier yet: train one from the first tags on, by default
            fresh = store.load_run("classifier") is None  # no batch-trained one (a live checkpoint does not count)
            if fresh and cfg.preview.train_while_tagging and self.state.runner.label in ("", LIVE_JOB):
                self.set_live(True)

    def _remove_overlay(self) -> None:
        for name in _layers.WEAK_LAYERS:
            layer = self.layer(name)
            if layer is not None:
                self._habits[name] = {"visible": layer.visible, "opacity": layer.opacity}
                self.viewer.layers.remove(layer)
        if self._image_layer is not None:
            for key in self.actions:
                self._image_layer.bind_key(key, None)  # napari's own keys of the H&E are back
            self._image_layer = None

    def _show(self) -> None:
        """The overlay of the image shown, on top, made active; none while the box is folded. An overlay already
        shown gets the new image's cells in place: napari collects garbage on every layer it removes (a few tenths
        of a second each), so tagging image after image stays quick."""
        state = self.state
        self.tagger, self.suggested = None, []
        if not (self.unfolded and state.store and state.current):
            self._remove_overlay()
            self.update_progress()
            return
        try:
            self.tagger = Tagger(state.store, state.current, state.config(save=False).patches)
        except OEEMError as exc:
            self._remove_overlay()
            show_error(str(exc))
            return
        ids = _layers.cell_ids(self.tagger.cells(), state.store.shape(state.current))
        self.preview, self._live_shown = None, None
        shown = [self.layer(name) for name in _layers.WEAK_LAYERS]
        if all(layer is not None for layer in shown):
            preview, fills, grid, _shapes = shown
            preview.data = np.zeros(ids.shape, np.uint8)
            fills.data = grid.data = ids
        else:
            self._remove_overlay()
            fills, grid = self._add_overlay(ids)
        targets = [fills, grid]
        if _layers.IMAGE in self.viewer.layers:
            self._image_layer = self.viewer.layers[_layers.IMAGE]
            targets.append(self._image_layer)
        for layer in targets:  # on these layers only: never the viewer's, so no other key of napari is taken
            for key, action in self.actions.items():
                layer.bind_key(key, lambda _layer, act=action: act(), overwrite=True)
        self.redraw()
        self.set_brush(self.brush_btn.isChecked())
        self.viewer.layers.selection.active = fills
        self.request_preview()

    def _add_overlay(self, ids: np.ndarray) -> tuple:
        """The overlay's four layers on top, with the visibility and opacity the user last gave them."""
        self.viewer.add_labels(np.zeros(ids.shape, np.uint8), name=_layers.PREVIEW,
                               colormap=_layers.label_colormap(_layers.PREVIEW),
                               **{"opacity": 0.4, **self._habits.get(_layers.PREVIEW, {})}).editable = False
        fills = self.viewer.add_labels(ids, name=_layers.WEAK_LABELS, colormap=self._fills(),
                                       **{"opacity": 0.5, **self._habits.get(_layers.WEAK_LABELS, {})})
        grid = self.viewer.add_labels(ids, name=_layers.WEAK_GRID, colormap=_layers.grid_colormap(self.tagger.tags),
                                      **{"opacity": 1.0, **self._habits.get(_layers.WEAK_GRID, {})})
        grid.contour = 1
        shapes = self.viewer.add_shapes(name=_layers.WEAK_SHAPES, edge_color="yellow", face_color="transparent",
                                        edge_width=3, **self._habits.get(_layers.WEAK_SHAPES, {}))
        shapes.events.data.connect(self._on_shapes)
        for layer in (fills, grid):
            layer.editable = False  # the numbers are cells, not labels to paint
        fills.mouse_drag_callbacks.append(self._stroke)
        return fills, grid

    def _fills(self, tags: np.ndarray | None = None):
        t = self.tagger
        return _layers.tag_colormap(t.tags if tags is None else tags, t.proposals)

    def redraw(self) -> None:
        """The colours of the tags, the proposals and the suggested patches; the counts."""
        fills, grid = self.layer(_layers.WEAK_LABELS), self.layer(_layers.WEAK_GRID)
        if self.tagger is not None and fills is not None and grid is not None:
            fills.colormap = self._fills()
            grid.colormap = _layers.grid_colormap(self.tagger.tags, self.tagger.proposals, self.suggested)
        self.update_progress()

    def update_progress(self) -> None:
        store = self.state.store
        if store is None:
            self.progress_label.setText("no project open")
            return
        try:
            s = store.tag_summary()
        except OEEMError as exc:
            self.progress_label.setText(str(exc))
            return
        text = (f"tagged: {s['patches']} patches in {s['images']} of {len(store.names())} images - "
                f"{s['gland_only']} gland only, {s['no_gland']} no gland, {s['both']} both")
        if self.tagger is not None:
            text += (f"; this image: {int(np.count_nonzero(self.tagger.tags))} of {len(self.tagger.tags)} "
                     "patches")
        self.progress_label.setText(text)

    # ------------------------------------------------------------------ actions (each one save)
    def _act(self, change) -> bool:
        """Run one tagging action on the image shown (re-read first: the CLI may have imported tags meanwhile)."""
        if self.tagger is None:
            show_info("open a project and unfold Weak labels to tag its patches")
            return False
        try:
            self.tagger.reload()
            changed = change()
        except OEEMError as exc:
            show_error(str(exc))
            changed = False
        self.redraw()
        if changed:
            self.request_preview()
        return changed

    # ------------------------------------------------------------------ training while tagging
    def set_live(self, on: bool) -> None:
        """Start or stop the background classifier (``pipeline.stages.live``) as the dock's job."""
        if self.live_box.isChecked() != on:
            self.live_box.setChecked(on)  # back here through `toggled`
            return
        running = self.state.runner.label == LIVE_JOB and self._live_store is self.state.store
        if not on:
            self.state.drop_live_resume()  # switched off while a job had paused it: it stays off
            if running:
                self.state.cancel()
            return
        if running:
            return
        store = self.state.store
        if store is None:
            show_info("open a project first")
            self.live_box.setChecked(False)
            return
        from pipeline.stages.live import train_while_tagging

        try:
            cfg = self.state.run_config()
        except OEEMError as exc:
            show_error(str(exc))
            self.live_box.setChecked(False)
            return
        device = self.state.device()
        # one core left to napari and the preview: tagging stays under 100 ms p95 on 2 cores (gui_latency.py --live)
        threads = max(1, (os.cpu_count() or 2) - 1)
        job = train_while_tagging(store, cfg, device, chunk_steps=self.live_chunk, threads=threads,
                                  on_checkpoint=lambda model, live: self._live_checkpoint(model, live, cfg, device))
        self._live_store = store
        if self.state.start(LIVE_JOB, job, after=self._live_ended) is None:
            self.live_box.setChecked(False)

    def _live_checkpoint(self, model, live, cfg, device) -> None:
        """In the training's thread, after each checkpoint: the pseudo-mask of the image on screen."""
        from pipeline.device import resolve_device
        from pipeline.stages.live import pseudo_mask_now

        name = self.state.current
        if name:
            mask = pseudo_mask_now(model, self.state.store, name, cfg, resolve_device(device))
            self._live_result = (name, mask, live.steps, live.images)

    def _show_live(self) -> None:
        found, self._live_result = self._live_result, None
        if found is None:
            return
        name, mask, steps, images = found
        layer = self.layer(_layers.PREVIEW)
        if name != self.state.current or layer is None:
            return
        layer.data = mask
        self._live_shown = name
        self.preview_label.setText(f"preview: {100 * float(mask.mean()):.0f} % gland, the pseudo-mask of the "
                                   f"classifier training in the background ({steps} steps, {images} tagged images)")

    def _live_ended(self, ok: bool, result) -> None:
        if self.state.pending() == LIVE_JOB or self.state.resumes_live():
            return  # paused for another job, or starting again on the project just opened: the switch stays on
        self.live_box.blockSignals(True)
        self.live_box.setChecked(False)
        self.live_box.blockSignals(False)
        if ok and isinstance(result, dict):
            show_info(f"training while tagging stopped: {result['steps']} steps; Run all continues from its last "
                      "checkpoint")

    # ------------------------------------------------------------------ the preview (in a thread, newest wins)
    def request_preview(self) -> None:
        """Ask for the preview of the image shown; returns at once."""
        if self.preview_model is None or self.tagger is None:
            return
        self._preview_wanted += 1
        if not self._preview_running:
            self._start_preview()

    def _start_preview(self) -> None:
        name, self._preview_for, request = self.state.current, self.preview_model, self._preview_wanted
        self._preview_running = request
        worker = create_worker(self.preview_model.predict, name, _start_thread=False, _ignore_errors=True)
        # bound methods of this widget: Qt drops them if it is deleted before the thread ends
        worker.returned.connect(self._preview_returned)
        worker.errored.connect(self._preview_errored)
        worker.finished.connect(self._preview_finished)
        self.preview_worker = worker
        worker.start()

    def _preview_returned(self, preview: Preview) -> None:
        self._on_preview(preview, self._preview_for)

    def _preview_errored(self, exc: BaseException) -> None:
        self._on_preview_error(exc, self._preview_for)

    def _preview_finished(self) -> None:
        answered, self._preview_running, self.preview_worker = self._preview_running, 0, None
        if self._preview_wanted != answered and self.tagger is not None and self.preview_model is not None:
            self._start_preview()  # tags changed while it ran: once more, with all of them

    def shutdown(self, msecs: int = 10_000) -> None:
        """No new preview, and the one running finished (napari is closing)."""
        self.preview_model = None
        if self.preview_worker is not None:
            QThreadPool.globalInstance().waitForDone(msecs)

    def _on_preview(self, preview: Preview, model: ProjectPreview) -> None:
        if model is not self.preview_model or preview.image != self.state.current:
            return  # another project or image by now
        self.preview = preview
        if self._live_shown == preview.image:
            return  # the background classifier's pseudo-mask is shown: the forest's stands in for proposals only
        layer = self.layer(_layers.PREVIEW)
        if layer is not None:
            layer.data = preview.mask
        self.preview_label.setText(f"preview: {100 * float(preview.mask.mean()):.0f} % gland, from a "
                                   f"{preview.source} ({preview.seconds:.1f} s)")

    def _on_preview_error(self, exc: BaseException, model: ProjectPreview) -> None:
        if model is not self.preview_model:
            return
        from oeem_napari._jobs import error_message

        self.preview = None
        layer = self.layer(_layers.PREVIEW)
        if layer is not None and layer.data.any():
            layer.data = np.zeros_like(layer.data)
        self.preview_label.setText(error_message(exc))

    def set_tag(self, tag: int) -> None:
        self.tag = tag
        self.tag_buttons.button(tag).setChecked(True)

    def tag_at_cursor(self, tag: int) -> bool:
        """``tag`` for the patch under the mouse; it becomes the tag the brush and the shapes give."""
        self.set_tag(tag)
        fills = self.layer(_layers.WEAK_LABELS)
        if fills is None:
            return False
        y, x = fills.world_to_data(self.viewer.cursor.position)[-2:]
        return self._act(lambda: self.tagger.set_at(y, x, tag))

    def tag_image(self, tag: int) -> bool:
        self.set_tag(tag)
        return self._act(lambda: self.tagger.set_image(tag))

    def tag_patches(self, indices) -> bool:
        return self._act(lambda: self.tagger.set_patches(np.asarray(list(indices), np.int64), self.tag))

    def undo(self) -> bool:
        done = self._act(lambda: self.tagger.undo())
        if self.tagger is not None and not done:
            show_info(f"{self.state.current}: no tag change to undo")
        return done

    def accept_proposals(self) -> bool:
        if self.tagger is not None and self.tagger.proposals is None:
            show_info("no proposals yet: press Proposals (P); they need a trained model")
            return False
        return self._act(lambda: self.tagger.accept_proposals())

    # ------------------------------------------------------------------ brush and shapes
    def set_brush(self, on: bool) -> None:
        """Brush on: a drag on the weak labels tags (no panning: hold Space for that); off: a drag pans."""
        if self.brush_btn.isChecked() != on:
            self.brush_btn.setChecked(on)  # comes back here through `toggled`
            return
        fills = self.layer(_layers.WEAK_LABELS)
        if fills is None:
            return
        fills.mouse_pan = not on
        fills.cursor = "crosshair" if on else "standard"
        if on:
            self.viewer.layers.selection.active = fills

    def _stroke(self, layer, event):
        """A drag with the brush on: the patches under the stroke light up as it goes, and take the chosen tag,
        all in one save, when the button is released."""
        if not self.brush_btn.isChecked() or self.tagger is None:
            return
        points = [layer.world_to_data(event.position)[-2:]]
        yield
        while event.type == "mouse_move":
            points.append(layer.world_to_data(event.position)[-2:])
            preview = self.tagger.tags.copy()
            preview[self.tagger.patches_along(np.array(points))] = self.tag
            layer.colormap = self._fills(preview)
            yield
        points.append(layer.world_to_data(event.position)[-2:])
        self.tag_patches(self.tagger.patches_along(np.array(points)))

    def draw(self, mode: str) -> None:
        """Draw one shape on the weak-label shapes (``mode``: napari's add_rectangle, add_polygon_lasso...)."""
        shapes = self.layer(_layers.WEAK_SHAPES)
        if shapes is None:
            show_info("open a project and unfold Weak labels to tag its patches")
            return
        self.set_brush(False)
        self.viewer.layers.selection.active = shapes
        shapes.mode = mode

    def _on_shapes(self, event) -> None:
        """A shape finished: the patches inside a rectangle, polygon or ellipse (their centre), or along a line,
        take the chosen tag; then the shape goes and the keys work again."""
        shapes = self.layer(_layers.WEAK_SHAPES)
        if getattr(event, "action", None) != "added" or shapes is None or self.tagger is None or not shapes.data:
            return
        from skimage.draw import polygon2mask

        shape = self.state.store.shape(self.state.current)
        picked: set[int] = set()
        for vertices, kind in zip(shapes.data, shapes.shape_type):
            yx = np.asarray(vertices, float)[:, -2:]
            if kind in ("line", "path", "polyline"):
                picked.update(self.tagger.patches_along(yx).tolist())
                continue
            if kind == "ellipse":
                yx = ellipse_outline(yx)
            picked.update(self.tagger.patches_in(polygon2mask(shape, yx)).tolist())
        self.tag_patches(sorted(picked))
        QTimer.singleShot(0, self._clear_shapes)

    def _clear_shapes(self) -> None:
        shapes = self.layer(_layers.WEAK_SHAPES)
        if shapes is not None and len(shapes.data):
            shapes.data = []
        fills = self.layer(_layers.WEAK_LABELS)
        if fills is not None:
            self.viewer.layers.selection.active = fills

    # ------------------------------------------------------------------ the model: proposals, what to label next
    def propose(self):
        """The model's tag for each patch of the image shown, in the background (a classifier runs on every
        patch); the worker, or None."""
        if self.tagger is None:
            show_info("open a project and unfold Weak labels to tag its patches")
            return None
        store, name, cfg, device = self.state.store, self.state.current, self.tagger.cfg, self.state.device()
        no_model = not (store.has(name, "prediction") or store.checkpoint_path("classifier").is_file())
        if no_model and self.preview is not None and self.preview.image == name:
            self._on_proposals(name, self.tagger.propose_from_mask(self.preview.mask, "preview"), "preview")
            return None

        def compute():
            tagger = Tagger(store, name, cfg)
            if store.checkpoint_path("classifier").is_file():  # torch only when the classifier may run
                from pipeline.device import resolve_device

                return tagger.propose(device=resolve_device(device)), tagger.proposal_source
            return tagger.propose(), tagger.proposal_source

        return self.state.start("Proposals", run_step("proposals", compute),
                                after=lambda ok, result: ok and self._on_proposals(name, *result))

    def _on_proposals(self, name: str, proposals: np.ndarray | None, source: str) -> None:
        if name != self.state.current or self.tagger is None:
            return  # another image is shown now
        if proposals is None:
            show_info("no proposals yet: tag some patches 'gland only' (1) and some 'no gland' (2) - the preview "
                      "learns from them in a second - or train the classifier (Run)")
            return
        self.tagger.proposals, self.tagger.proposal_source = proposals, source
        self.redraw()
        open_ = int(np.count_nonzero(self.tagger.tags == UNLABELLED))
        show_info(f"{name}: proposals from the {source} for {open_} unlabelled patches, shown faint; "
                  "A accepts them all")

    def next_image(self):
        """Show the training image most worth labelling and outline its patches to look at (in the background
        when a classifier has to score them)."""
        from pipeline.review.suggest import suggest

        store = self.state.store
        if store is None:
            show_info("open a project first")
            return None
        cfg = self.state.config(save=False).patches
        if store.checkpoint_path("classifier").is_file():
            device = self.state.device()
            return self.state.start("Next to label", run_step("suggest", lambda: suggest(store, cfg, 1, device)),
                                    after=lambda ok, found: ok and self._go_to(found))
        try:
            self._go_to(suggest(store, cfg, 1))
        except OEEMError as exc:
            show_error(str(exc))
        return None

    def _go_to(self, found: list) -> None:
        if not found:
            show_info("every training image is labelled")
            return
        s = found[0]
        if s.image != self.state.current:
            self.state.show(s.image)
        if self.tagger is None:
            return
        half = self.tagger.cfg.size / 2
        self.suggested = [k for y, x in s.patches if (k := self.tagger.patch_at(y + half, x + half)) is not None]
        self.redraw()
        show_info(f"{s.image}: {s.labelled} of {s.total} patches labelled; look at the {len(self.suggested)} "
                  f"outlined in magenta ({s.reason})")
