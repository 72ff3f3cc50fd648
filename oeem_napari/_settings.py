"""Every setting of the pipeline as a form, generated from the declarations in ``pipeline.config`` with magicgui.

A setting declared there appears here without any Qt code: its type picks the widget (check box, spin box, choice
list, text for numbers and lists), its label and help become the row's name and tooltip, its range bounds the
spin box, and *basic* settings go on top while the rest wait in one tab per stage. Values are checked by the same
code as ``oeem --set`` when a run starts.
"""
from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox, Widget

from pipeline.config import PipelineConfig, Setting, settings_of
from pipeline.errors import OEEMError

SECTIONS = {"patches": "Patches", "classifier": "Classifier", "cam": "CAMs", "segmentation": "Segmentation",
            "inference": "Prediction", "instances": "Glands as objects", "selftrain": "Self-training",
            "ranking": "Label review", "slide": "Slides",
            "update": "Update model", "preview": "Preview"}


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def _parse(key: str, text: str, like: Any) -> Any:
    text = text.strip()
    try:
        if isinstance(like, tuple):
            kind = type(like[0]) if like else float
            return tuple(kind(t) for t in text.replace(";", ",").split(",") if t.strip())
        if isinstance(like, float):
            return float(text)
        if like is None:
            return text or None
    except ValueError:
        raise OEEMError(f"setting {key!r}: {text!r} is not "
                        f"{'a comma-separated list of numbers' if isinstance(like, tuple) else 'a number'}") from None
    return text


def _settings(cfg: PipelineConfig) -> list[Setting]:
    return [s for s in settings_of(cfg) if s.key.split(".")[0] in SECTIONS]


class SettingsForm:
    """``basic``: the handful of settings a pathologist changes, one container; ``sections``: every other setting,
    one container per stage (shown as tabs under *Advanced*). Each setting has exactly one widget, in ``fields``;
    ``values()`` gives dotted keys → typed values for ``project_config``."""

    def __init__(self, cfg: PipelineConfig | None = None):
        self._kinds: dict[str, Any] = {}
        self.fields: dict[str, Widget] = {}
        self.sections: dict[str, Container] = {name: Container(name=name, label=title)
                                               for name, title in SECTIONS.items()}
        self.basic = Container(name="basic", label="Basic")
        for s in _settings(cfg or PipelineConfig()):
            w = self._make(s)
            self.fields[s.key] = w
            (self.basic if s.basic else self.sections[s.key.split(".")[0]]).append(w)

    def _make(self, s: Setting) -> Widget:
        section = SECTIONS[s.key.split(".")[0]]
        # a basic setting stands alone on top, so its label names its stage when the label does not
        label = s.label if not s.basic or section.lower() in s.label.lower() else f"{s.label} ({section.lower()})"
        if s.key.count(".") > 1:  # e.g. segmentation.backbone.widths: say whose
            label = f"{s.key.split('.')[-2]} {label}"
        opts = {"name": s.key.replace(".", "__"), "label": label, "tooltip": f"{s.help}\n({s.key})"}
        self._kinds[s.key] = s.value
        if s.choices is not None:
            return ComboBox(value=s.value, choices=s.choices, **opts)
        if isinstance(s.value, bool):
            return CheckBox(value=s.value, **opts)
        if isinstance(s.value, int):
            low = s.ge if s.ge is not None else (s.gt + 1 if s.gt is not None else 0)
            high = s.le if s.le is not None else (s.lt - 1 if s.lt is not None else 10_000_000)
            return SpinBox(value=s.value, min=int(low), max=int(high), **opts)
        return LineEdit(value=_text(s.value), **opts)

    def set_values(self, cfg: PipelineConfig) -> None:
        for s in _settings(cfg):
            w = self.fields.get(s.key)
            if w is None:
                continue
            self._kinds[s.key] = s.value
            w.value = _text(s.value) if isinstance(w, LineEdit) else s.value

    def values(self) -> dict[str, Any]:
        out = {}
        for key, w in self.fields.items():
            like = self._kinds[key]
            out[key] = _parse(key, w.value, like) if isinstance(w, LineEdit) else w.value
        return out
