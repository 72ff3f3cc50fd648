"""A project from a folder of images, and the configuration it runs with.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_PRESET, PipelineConfig, apply_overrides, check, from_dict, preset, to_dict
from pipeline.errors import OEEMError
from pipeline.io.data import find_samples, read_grades
from pipeline.store import ProjectStore, atomic_write_json

# installed: the wheel ships the repository's sample_data/ as pipeline/sample_data; in a checkout it is at the top
CONFIG = "config"  # runs/config.json: the settings every later command of the project runs with
SAMPLE_DATA_PLACES = (Path(__file__).resolve().parents[1] / "sample_data" / "glas_synth",
                      Path(__file__).resolve().parents[2] / "sample_data" / "glas_synth")


def sample_data_folder() -> Path:
    for folder in SAMPLE_DATA_PLACES:
        if folder.is_dir():
            return folder
    raise OEEMError(f"the embedded sample data is missing (looked in {', '.join(map(str, SAMPLE_DATA_PLACES))}); "
                    "reinstall oeem-napari")


def create_project(data: str | Path, path: str | Path, overwrite: bool = False, progress=None,
                   val_images: int = 0, seed: int = 0, train: str | None = None,
                   test: str | None = None) -> ProjectStore:
    """Make a project from a folder of images, or from the embedded sample data when ``data`` is ``sample``.

    Masks are optional (``NAME_anno.png`` beside an image): without them the weak labels are patch tags. ``train``
    / ``test`` are file-name patterns choosing the splits (see :func:`pipeline.io.data.find_samples`).
    ``val_images`` training images (with masks) are held out as the ``val`` split: no stage trains on them, and
    their masks are only used to choose settings, so the test split stays untouched until it is reported."""
    folder = sample_data_folder() if str(data) == "sample" else Path(data)
    samples = find_samples(folder, train=train, test=test)
    store = ProjectStore.create(path, samples, overwrite=overwrite, progress=progress)
    for name, grade in read_grades(folder).items():  # the object scores are reported per grade where known
        if name in store.names():
            store.group(name).attrs["grade"] = grade
    held = set(hold_out_validation(store, val_images, seed)) if val_images else set()
    why = {s.name: ("val", f"held out by --val-images {val_images} (seed {seed})") if s.name in held
           else (s.split, s.why) for s in samples}
    reasons: dict[str, dict[str, int]] = {}
    for split, rule in why.values():
        reasons.setdefault(split, {}).setdefault(rule, 0)
        reasons[split][rule] += 1
    store.root.attrs["split_reasons"] = reasons
    return store


def split_lines(store: ProjectStore) -> list[str]:
    """One line per split: how many images, and which rule put them there (names, folders, flags)."""
    reasons = store.root.attrs.get("split_reasons", {})
    lines = []
    for split, label in (("train", "training"), ("val", "validation"), ("test", "test")):
        count = len(store.names(split))
        rules = reasons.get(split, {})
        told = "; ".join(f"{n} {rule}" for rule, n in sorted(rules.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"  {count} {label} images" + (f": {told}" if told else ""))
    return lines


def hold_out_validation(store: ProjectStore, count: int, seed: int = 0) -> list[str]:
    """Move ``count`` randomly chosen (seeded) training images with gland masks to the ``val`` split."""
    import numpy as np

    candidates = [n for n in store.names("train") if store.has(n, "mask")]
    if count < 0 or count >= len(candidates):
        raise OEEMError(f"cannot hold out {count} validation images: {len(candidates)} training images have "
                        f"masks and at least one must stay for training; choose 0 to {len(candidates) - 1}")
    rng = np.random.default_rng(seed)
    chosen = sorted((candidates[i] for i in rng.choice(len(candidates), count, replace=False)))
    for n in chosen:
        store.set_split(n, "val")
    store.root.attrs["validation"] = {"images": chosen, "seed": seed}
    return chosen


def has_saved_config(store: ProjectStore) -> bool:
    """Whether the project has settings of its own yet (the first command saves its preset's)."""
    return store.run_path(CONFIG).is_file()


def project_config(store: ProjectStore, preset_name: str | None = None,
                   overrides: dict[str, Any] | None = None, save: bool = True) -> PipelineConfig:
    """The project's saved configuration (or a preset's), with overrides applied and saved back, so every later
    command - from the CLI or the plugin - runs with the same settings unless told otherwise."""
    path = store.run_path(CONFIG)
    if preset_name is None and path.is_file():
        cfg = from_dict(PipelineConfig, json.loads(path.read_text()))
    else:
        cfg = preset(preset_name or DEFAULT_PRESET)
    if overrides:
        apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None})
    check(cfg)
    if save:
        atomic_write_json(path, to_dict(cfg))
    return cfg
