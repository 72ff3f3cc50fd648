"""Saving a pathologist's paint strokes on the pseudo-mask straight into the project store.

There is no save button to forget: every stroke (paint, erase, fill) is written shortly after it ends, the state
before it goes into the store's history (undo), and painted pixels become pathologist-verified.
Labels other than 0 (non-gland) and 1 (gland) are refused: the stroke is reverted and a warning says why.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from pipeline.errors import OEEMError
from pipeline.store import ProjectStore
from pipeline.store.lock import ProjectBusy

SAVE_DELAY_MS = 300
BUSY_RETRY_MS = 5000  # another process writes the project: the strokes stay in the layer and are saved later


class CorrectionKeeper:
    def __init__(self, store: ProjectStore, name: str, layer, on_saved: Callable[[], None] | None = None):
        self.store, self.name, self.layer = store, name, layer
        self.on_saved = on_saved
        self._saved = np.array(layer.data, copy=True)
        self._warned_busy = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(SAVE_DELAY_MS)
        self._timer.timeout.connect(self.save)
        layer.events.paint.connect(self._schedule)
        layer.events.selected_label.connect(self._clamp_label)

    def disconnect(self) -> None:
        self.flush()
        self.layer.events.paint.disconnect(self._schedule)
        self.layer.events.selected_label.disconnect(self._clamp_label)

    def _schedule(self, event=None) -> None:
        self._timer.start(SAVE_DELAY_MS)

    def _clamp_label(self, event=None) -> None:
        if self.layer.selected_label > 1:
            show_warning("only two classes exist: 1 = gland, 0 = non-gland (erase); painting label 1")
            self.layer.selected_label = 1

    def flush(self) -> None:
        if self._timer.isActive():
            self._timer.stop()
            self.save()

    def save(self) -> int | None:
        data = np.asarray(self.layer.data)
        bad = (data != 0) & (data != 1)
        if bad.any():
            values = sorted(set(np.unique(data[bad]).tolist()))
            data = data.copy()
            data[bad] = self._saved[bad]
            self.layer.data = data
            show_warning(f"label(s) {values} are not classes (1 = gland, 0 = non-gland); that stroke was undone")
        if np.array_equal(data, self._saved):
            return None
        try:
            count = self.store.save_correction(self.name, data)
        except ProjectBusy as exc:
            if not self._warned_busy:
                show_warning(f"{exc}. Your strokes stay in the layer and are saved as soon as it is free.")
                self._warned_busy = True
            self._timer.start(BUSY_RETRY_MS)
            return None
        except OEEMError as exc:  # e.g. disk full: the saved state is intact, the strokes stay in the layer
            if not self._warned_busy:
                show_error(f"{exc}")
                self._warned_busy = True
            self._timer.start(BUSY_RETRY_MS)
            return None
        self._warned_busy = False
        self._saved = np.array(data, copy=True)
        if self.on_saved:
            self.on_saved()
        return count

    def reload(self, data: np.ndarray) -> None:
        """Show ``data`` (e.g. after an undo) without treating it as a new stroke."""
        self._timer.stop()
        self._saved = np.array(data, copy=True)
        self.layer.data = data
