"""Regions of a slide become training images with the weak labels a pathologist gives fastest: one label per
region ("only glands here", "no gland here", "both"), which every 112 px patch of the region inherits.

Regions come as boxes in level-0 pixels (drawn in napari, typed on the command line) or as QuPath GeoJSON
annotations (their bounding boxes, the label from their classification). Each is cut at the project's resolution
(``slide.project_mpp``), so a 40x slide and a 20x one give glands of the same size in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PatchConfig
from pipeline.errors import OEEMError
from pipeline.slides.reader import open_slide
from pipeline.stages.patches import patch_grid

# label -> patch label [non-gland, gland]
REGION_LABELS = {"gland": (0, 1), "non-gland": (1, 0), "mixed": (1, 1)}
_ALIASES = {"gland": "gland", "glands": "gland", "non-gland": "non-gland", "non gland": "non-gland",
            "nongland": "non-gland", "stroma": "non-gland", "background": "non-gland", "negative": "non-gland",
            "mixed": "mixed", "both": "mixed"}
MAX_SIDE = 8192  # px at the project's resolution: larger regions are cut into several


@dataclass(frozen=True)
class SlideRegion:
    x: int  # level-0 pixels
    y: int
    w: int
    h: int
    label: str  # gland, non-gland or mixed


def region_label(name: str | None, default: str | None) -> str:
    """A classification or a typed label as one of REGION_LABELS."""
    if name is None:
        if default is None:
            raise OEEMError("a region has no label; give one with --label gland|non-gland|mixed")
        name = default
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise OEEMError(f"unknown region label {name!r}: use gland, non-gland or mixed")
    return key


def parse_box(text: str, label: str | None) -> SlideRegion:
    """``X,Y,W,H`` in level-0 pixels."""
    try:
        x, y, w, h = (int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise OEEMError(f"--box {text!r}: expected X,Y,W,H in level-0 pixels, e.g. 12000,8000,2048,2048") from None
    return SlideRegion(x, y, w, h, region_label(None, label))


def regions_from_geojson(obj: Any, default_label: str | None, source: str = "GeoJSON") -> list[SlideRegion]:
    """The bounding box of every polygon annotation; its classification (Gland / Non-gland / Stroma / Mixed)
    is the label, an unclassified one takes ``default_label``."""
    from shapely.geometry import shape

    from pipeline.io.geojson import class_of, geojson_features

    out = []
    for feat in geojson_features(obj, source):
        try:
            geom = shape(feat["geometry"])
        except Exception:  # noqa: BLE001 - malformed geometry
            raise OEEMError(f"{source}: a feature has no readable geometry; export the ROIs again") from None
        if geom.is_empty or geom.area <= 0:
            continue
        x0, y0, x1, y1 = geom.bounds
        out.append(SlideRegion(int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1 - x0)), int(np.ceil(y1 - y0)),
                               region_label(class_of(feat), default_label)))
    if not out:
        raise OEEMError(f"{source}: no polygon or rectangle annotations to use as regions")
    return out


def add_slide_regions(store, slide_path: str | Path, regions: list[SlideRegion], patch_cfg: PatchConfig,
                      project_mpp: float, mpp: float | None = None, split: str = "train",
                      reader: str = "auto") -> list[str]:
    """Cut ``regions`` from the slide into the project as images with patch labels; all are checked before any
    is written. Returns the new image names (``SLIDE_xX_yY``)."""
    with open_slide(slide_path, mpp, reader) as slide:
        slide_mpp = slide.require_mpp()
        s = slide_mpp / project_mpp  # project px per level-0 px
        stem = Path(slide_path).name.split(".")[0]
        existing = set(store.names())
        plans = []
        for r in regions:
            name = f"{stem}_x{r.x}_y{r.y}"
            if r.x < 0 or r.y < 0 or r.x + r.w > slide.info.width or r.y + r.h > slide.info.height:
                raise OEEMError(f"region {r.x},{r.y},{r.w},{r.h} lies outside the slide ({slide.info.width} x "
                                f"{slide.info.height} px at level 0)")
            h, w = round(r.h * s), round(r.w * s)
            if min(h, w) < patch_cfg.size:
                need = int(np.ceil(patch_cfg.size / s))
                raise OEEMError(f"region {r.x},{r.y},{r.w},{r.h} is {w} x {h} px at the project's resolution, "
                                f"smaller than a {patch_cfg.size} px patch; draw it at least {need} px wide and "
                                "high (level 0)")
            if max(h, w) > MAX_SIDE:
                raise OEEMError(f"region {r.x},{r.y},{r.w},{r.h} is {w} x {h} px at the project's resolution; "
                                f"draw regions of at most {MAX_SIDE} px a side (several smaller ones)")
            if name in existing or any(p[0] == name for p in plans):
                raise OEEMError(f"{store.path}: already has the region {name}; remove it from the list")
            plans.append((name, r, h, w))
        names = []
        for name, r, h, w in plans:
            image = slide.read_at(project_mpp, round(r.y * s), round(r.x * s), h, w)
            store.add_image(name, split, image, source=str(slide.path),
                            slide_region={"x": r.x, "y": r.y, "w": r.w, "h": r.h, "label": r.label,
                                          "slide_mpp": slide_mpp, "mpp_source": slide.info.mpp_source,
                                          "project_mpp": project_mpp, "resampled_by": s})
            corners = patch_grid((h, w), patch_cfg.size, patch_cfg.stride)
            labels = np.tile(np.asarray(REGION_LABELS[r.label], np.uint8), (len(corners), 1))
            store.write(name, "patch_corners", corners)
            store.write(name, "patch_labels", labels)
            names.append(name)
    return names
