"""Kept models: each *Update model* (and each guarded retrain) keeps the model it replaces, so it is one
``oeem update --revert`` away. The files are the store's: ``runs/model-versions.json`` lists the kept versions
(oldest first), ``checkpoints/versions/<stage>.vNNNN.pt`` and ``.json`` hold each model and its run record."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.errors import OEEMError
from pipeline.store.project_store import ProjectStore, atomic_write_bytes, atomic_write_json

STAGE = "segmentation"
VERSIONS = "model-versions"  # runs/model-versions.json


def _versions_path(store: ProjectStore) -> Path:
    return store.run_path(VERSIONS)


def model_versions(store: ProjectStore) -> list[dict[str, Any]]:
    """The kept models (oldest first): what ``--revert`` can go back to."""
    path = _versions_path(store)
    return json.loads(path.read_text()) if path.is_file() else []


def _version_files(store: ProjectStore, version: int) -> tuple[Path, Path]:
    folder = store.checkpoint_path(STAGE).parent / "versions"
    return folder / f"{STAGE}.v{version:04d}.pt", folder / f"{STAGE}.v{version:04d}.json"


def keep_version(store: ProjectStore, why: str, keep: int) -> int:
    """Copy the current model and its record aside as a new version (the oldest beyond ``keep`` are deleted)."""
    versions = model_versions(store)
    version = max([v["version"] for v in versions] + [0]) + 1
    ck, rec = _version_files(store, version)
    ck.parent.mkdir(parents=True, exist_ok=True)
    tmp = ck.with_name(ck.name + f".{os.getpid()}.tmp")
    shutil.copyfile(store.checkpoint_path(STAGE), tmp)
    os.replace(tmp, ck)
    atomic_write_json(rec, store.load_run(STAGE) or {})
    versions.append({"version": version, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "why": why,
                     "run_id": (store.load_run(STAGE) or {}).get("run_id")})
    for old in versions[:-keep]:
        for f in _version_files(store, old["version"]):
            f.unlink(missing_ok=True)
    atomic_write_json(_versions_path(store), versions[-keep:])
    return version


def revert_model(store: ProjectStore) -> dict[str, Any]:
    """Put back the model from before the last update (each revert goes one version further back). The model
    being replaced is not kept: an update is cheap to make again."""
    versions = model_versions(store)
    if not versions:
        raise OEEMError(f"{store.path}: no earlier model kept to revert to (versions are kept by `oeem update`)")
    last = versions[-1]
    ck, rec = _version_files(store, last["version"])
    if not ck.is_file():
        raise OEEMError(f"{ck}: the kept model is missing; nothing was changed")
    atomic_write_bytes(store.checkpoint_path(STAGE), ck.read_bytes())
    store.save_run(STAGE, json.loads(rec.read_text()) if rec.is_file() else {})
    atomic_write_json(_versions_path(store), versions[:-1])
    ck.unlink(missing_ok=True)
    rec.unlink(missing_ok=True)
    return last
