"""Every setting of the pipeline as a form, generated from the configuration dataclasses with magicgui.

A field added to ``pipeline.config`` appears here without any Qt code: its type picks the widget (check box,
spin box, choice list, text for numbers and lists), the comment beside it in ``config.py`` becomes the tooltip,
and the values are checked by the same code as ``oeem --set`` when a run starts.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox, Widget

from pipeline.config import (
    BACKBONES,
    CALIBRATORS,
    DECODERS,
    LOSS_KINDS,
    NORMS,
    PRECISION_SECTIONS,
    PRECISIONS,
    SLIDE_READERS,
    PipelineConfig,
    field_help,
)
from pipeline.errors import OEEMError

SECTIONS = {"patches": "Patches", "classifier": "Classifier", "cam": "CAMs", "segmentation": "Segmentation",
            "inference": "Prediction", "selftrain": "Self-training", "ranking": "Label review", "slide": "Slides"}
CHOICES: dict[str, tuple[str, ...]] = {
    "segmentation.loss": LOSS_KINDS, "segmentation.decoder": DECODERS, "segmentation.input_norm": tuple(NORMS),
    "segmentation.label_source": ("pseudo", "corrected", "mask"), "cam.mode": ("image", "patch"),
    "cam.pseudo_from": ("patches", "stitched"), "classifier.backbone.name": BACKBONES[:2],
    "ranking.calibrator": CALIBRATORS,
    "segmentation.backbone.name": BACKBONES, "slide.reader": SLIDE_READERS,
    **{f"{section}.precision": PRECISIONS for section in PRECISION_SECTIONS}}


# shown on top of the form; every other setting sits in its stage's tab under *Advanced*
BASIC = ("classifier.epochs", "segmentation.iterations", "selftrain.rounds", "segmentation.loss",
         "segmentation.label_source", "segmentation.verified_weight", "inference.scales")


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, help) of every leaf setting, nested dataclasses flattened."""
    out = []
    helps = field_help(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _flat(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value, helps.get(f.name, "")))
    return out


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


class SettingsForm:
    """``basic``: the handful of settings a pathologist changes, one container; ``sections``: every other setting,
    one container per stage (shown as tabs under *Advanced*). Each setting has exactly one widget, in ``fields``;
    ``values()`` gives dotted keys → typed values for ``project_config``."""

    def __init__(self, cfg: PipelineConfig | None = None):
        self._kinds: dict[str, Any] = {}
        self.fields: dict[str, Widget] = {}
        self.sections: dict[str, Container] = {}
        self.basic = Container(name="basic", label="Basic")
        cfg = cfg or PipelineConfig()
        basic: dict[str, Widget] = {}
        for section, title in SECTIONS.items():
            box = Container(name=section, label=title)
            for key, value, help_ in _flat(getattr(cfg, section), f"{section}."):
                w = self._make(key, value, help_)
                (basic.__setitem__(key, w) if key in BASIC else box.append(w))
                self.fields[key] = w
            self.sections[section] = box
        for key in BASIC:
            self.basic.append(basic[key])

    def _make(self, key: str, value: Any, help_: str) -> Widget:
        label = key.split(".", 1)[1].replace("_", " ")
        opts = {"name": key.replace(".", "__"), "label": label, "tooltip": f"{key}: {help_}" if help_ else key}
        self._kinds[key] = value
        if key in CHOICES:
            return ComboBox(value=value, choices=CHOICES[key], **opts)
        if isinstance(value, bool):
            return CheckBox(value=value, **opts)
        if isinstance(value, int):
            return SpinBox(value=value, min=0, max=10_000_000, **opts)
        return LineEdit(value=_text(value), **opts)

    def set_values(self, cfg: PipelineConfig) -> None:
        for key, value, _ in _flat_cfg(cfg):
            w = self.fields.get(key)
            if w is None:
                continue
            self._kinds[key] = value
            w.value = _text(value) if isinstance(w, LineEdit) else value

    def values(self) -> dict[str, Any]:
        out = {}
        for key, w in self.fields.items():
            like = self._kinds[key]
            out[key] = _parse(key, w.value, like) if isinstance(w, LineEdit) else w.value
        return out


def _flat_cfg(cfg: PipelineConfig) -> list[tuple[str, Any, str]]:
    return [row for section in SECTIONS for row in _flat(getattr(cfg, section), f"{section}.")]
