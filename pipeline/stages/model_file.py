"""A trained segmentation model as one file (``*.oeem-model``) that leaves its project: shared with a colleague,
used on new images (``oeem predict-images``), on slides (``oeem predict-slide --model``), in the plugin (*Load
model…*) or as the start of another project's training (``oeem train-seg --init-from``).

The file is a ``torch.save`` archive of tensors and plain values only, read back with ``weights_only=True`` (it
cannot run code). It holds the network's weights and everything needed to use them: the network's settings
(architecture, input normalisation, working scale), the prediction settings it was scored with (scales, flip,
post-processing: ``drop_glands_below``, ``fill_holes_below``), the microns per pixel of the images it learned from,
the class names, the training record (data, iterations, validation scores, software versions) and a SHA-256 of the
weights, checked on load so a damaged file is named instead of predicting garbage.

The same model also leaves as a bioimage.io package (``pipeline.io.bioimageio``: TorchScript with the sliding-window,
multi-scale prediction scripted around the traced network, for QuPath and the model zoo); this module reads such a
package back as the model file it was made from (:func:`load_package`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import (
    DEFAULT_PRESET,
    InferConfig,
    InstanceConfig,
    PipelineConfig,
    SegConfig,
    from_dict,
    to_dict,
)
from pipeline.device import place
from pipeline.errors import OEEMError
from pipeline.stages.models import fold_batchnorm, load_model_state, safe_torch_load
from pipeline.store import ProjectStore

FORMAT = "oeem-model"
FORMAT_VERSION = 1
SUFFIX = ".oeem-model"
CLASSES = ("non-gland", "gland")


@dataclass
class TrainedModel:
    """A segmentation network ready to predict, with the settings that go with it and where it came from."""

    model: torch.nn.Module
    seg: SegConfig
    inference: InferConfig
    mpp: float  # microns per pixel of the images it learned from
    source: str  # the file or project it was loaded from
    record: dict[str, Any]
    instances: InstanceConfig = dataclasses.field(default_factory=InstanceConfig)  # how its glands are separated


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights' names, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def export_model(store: ProjectStore, path: str | Path, inference: InferConfig, mpp: float,
                 run_name: str | None = None) -> Path:
    """Write the project's current segmentation model (or run ``run_name``'s) to ``path``, atomically."""
    import io

    payload = model_payload(store, inference, mpp, run_name)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    if not path.parent.is_dir():
        raise OEEMError(f"{path.parent}: folder does not exist")
    from pipeline.store import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return path


def model_payload(store: ProjectStore, inference: InferConfig, mpp: float, run_name: str | None = None) -> dict:
    """What a model file holds (the weights as trained, batch norm unfolded): ``export_model`` writes it,
    ``pipeline.io.bioimageio`` packages it."""
    from pipeline import __version__
    from pipeline.stages.segment import stage_name

    stage = stage_name(run_name)
    ck_path = store.checkpoint_path(stage)
    if not ck_path.is_file():
        raise OEEMError(f"{store.path}: no trained segmentation model to export; run `oeem run {store.path}` "
                        f"or `oeem train-seg {store.path}` first")
    ck = safe_torch_load(ck_path)
    if ck.get("kind") != "segmentation":
        raise OEEMError(f"{ck_path}: not a segmentation checkpoint")
    run = store.load_run(stage) or {}
    evaluation = {split: {k: v for k, v in (store.load_run(f"evaluation-{split}") or {}).items()
                          if isinstance(v, (int, float))} for split in ("val", "test")}
    images = {s: len(store.names(s)) for s in ("train", "val", "test")}
    record = {"project": str(store.path.resolve()), "images": images,
              "iterations": ck.get("iteration", run.get("iterations")), "labels_round": ck.get("labels_round", 0),
              "run_id": run.get("run_id"), "trained_at": run.get("finished_at") or run.get("saved_at"),
              "scores": {s: e for s, e in evaluation.items() if e},
              "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "versions": {"oeem": __version__, "torch": str(torch.__version__), "numpy": np.__version__,
                           "python": platform.python_version()}}
    preset = (store.load_run("config") or {}).get("preset")
    from pipeline.store.project import project_config

    instances = project_config(store, save=False).instances  # a shared model cuts glands as its project does
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "segmentation", "preset": preset,
               "classes": list(CLASSES), "mpp": float(mpp), "segmentation": ck["config"],
               "inference": to_dict(inference), "instances": to_dict(instances), "record": record,
               "model": ck["model"],
               "sha256": weights_digest(ck["model"])}
    return payload


def _settings(kind, saved: Any, path: Path, what: str):
    try:
        return from_dict(kind, saved)
    except (TypeError, ValueError, KeyError, OEEMError) as exc:
        raise OEEMError(f"{path}: its {what} settings are not ones this version knows ({exc}); export the model "
                        "again with this version of oeem, or install the version that made it") from None


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Read and check a model file: format, version, checksum, and that the weights fit the network it names.
    A bioimage.io package oeem wrote (``--format bioimageio``) reads as the model file it was made from."""
    from pipeline.stages.models import build_segmenter

    path = Path(path)
    if is_package(path):
        return load_package(path, device)
    if not path.is_file():
        raise OEEMError(f"{path}: no such model file; make one with `oeem export-model PROJECT {path.name}`")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a pickle with code, not torch at all
        raise OEEMError(f"{path}: not a readable oeem model file (damaged, truncated or another kind of file: "
                        f"{type(exc).__name__}); export it again with `oeem export-model`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OEEMError(f"{path}: not an oeem model file (a project checkpoint? export one with `oeem export-model "
                        "PROJECT FILE`)")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise OEEMError(f"{path}: made by a newer oeem (model file format {version}; this one reads up to "
                        f"{FORMAT_VERSION}); upgrade oeem-napari")
    from pipeline.config import PRESETS

    if data.get("preset") not in (None, *PRESETS):
        raise OEEMError(f"{path}: made with preset {data.get('preset')!r}, which this version does not know "
                        f"({', '.join(PRESETS)}); upgrade oeem-napari")
    state = data.get("model")
    if not isinstance(state, dict) or weights_digest(state) != data.get("sha256"):
        raise OEEMError(f"{path}: the weights do not match the file's checksum (the file is damaged); copy or "
                        "export it again")
    seg = _settings(SegConfig, data.get("segmentation"), path, "network")
    inference = _settings(InferConfig, data.get("inference"), path, "prediction")
    instances = _settings(InstanceConfig, data.get("instances") or {}, path, "gland separation")
    model = build_segmenter(seg)
    load_model_state(model, state, path)
    model = fold_batchnorm(place(model, device))
    return TrainedModel(model, seg, inference, float(data.get("mpp") or 0.62), str(path), data.get("record", {}),
                        instances)


RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")  # a bioimage.io package's description


def is_package(path: str | Path) -> bool:
    """A bioimage.io package: a .zip holding an rdf, or a folder with one."""
    import zipfile

    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n in z.namelist() for n in RDF_NAMES)
    return False


def _read_member(path: Path, member: str) -> bytes:
    import zipfile

    if path.is_dir():
        target = path / member
        if not target.is_file():
            raise OEEMError(f"{path}: the package lists {member}, which is missing")
        return target.read_bytes()
    with zipfile.ZipFile(path) as z:
        try:
            return z.read(member)
        except KeyError:
            raise OEEMError(f"{path}: the package lists {member}, which is missing") from None


def load_package(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """An oeem bioimage.io package (``pipeline.io.bioimageio``) back as a :class:`TrainedModel`: the same network,
    settings and µm/px as the model file it was made from. A foreign package (no ``config.oeem``) is refused
    with what to do."""
    import io
    import zipfile

    import yaml

    from pipeline.stages.models import build_segmenter

    path = Path(path)
    rdf_name = next((n for n in RDF_NAMES if (path / n).is_file()), None) if path.is_dir() else None
    if rdf_name is None and not path.is_dir():
        with zipfile.ZipFile(path) as z:
            rdf_name = next((n for n in RDF_NAMES if n in z.namelist()), None)
    if rdf_name is None:
        raise OEEMError(f"{path}: not a bioimage.io package (no rdf.yaml)")
    try:
        rdf = yaml.safe_load(_read_member(path, rdf_name))
    except yaml.YAMLError as exc:
        raise OEEMError(f"{path}: its {rdf_name} is not valid YAML ({str(exc).splitlines()[0]})") from None
    oeem = ((rdf or {}).get("config") or {}).get("oeem")
    if not isinstance(oeem, dict) or oeem.get("format") != "oeem-bioimageio":
        raise OEEMError(f"{path}: a bioimage.io model not made by oeem; oeem reads the packages it writes (`oeem "
                        "export-model PROJECT OUT.zip --format bioimageio`); run others with bioimageio.core")
    entry = ((rdf.get("weights") or {}).get("pytorch_state_dict") or {})
    source = entry.get("source")
    if not source:
        raise OEEMError(f"{path}: the package has no pytorch_state_dict weights")
    data = _read_member(path, source)
    digest = entry.get("sha256")
    if digest and hashlib.sha256(data).hexdigest() != digest:
        raise OEEMError(f"{path}: {source} does not match the package's checksum (the file is damaged); export "
                        "it again")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise OEEMError(f"{path}: {source} is not a readable weights-only state dict ({type(exc).__name__})") from None
    try:
        seg, inference = from_dict(SegConfig, oeem["segmentation"]), from_dict(InferConfig, oeem["inference"])
        instances = from_dict(InstanceConfig, oeem.get("instances") or {})
    except (TypeError, ValueError, KeyError, OEEMError) as exc:
        raise OEEMError(f"{path}: its settings are not ones this version knows ({exc}); upgrade oeem-napari") from None
    net = build_segmenter(seg)
    load_model_state(net, {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}, path)
    model = fold_batchnorm(place(net, device))
    return TrainedModel(model, seg, inference, float(oeem.get("mpp") or 0.62), str(path), oeem.get("record") or {},
                        instances)


def project_model(store: ProjectStore, inference: InferConfig, mpp: float,
                  device: str | torch.device = "cpu") -> TrainedModel:
    """A project's current segmentation model, as a model file would give it."""
    from pipeline.stages.segment import load_segmenter
    from pipeline.store.project import project_config

    model, seg = load_segmenter(store, None, device)
    return TrainedModel(fold_batchnorm(model), seg, inference, mpp, str(store.path), {"project": str(store.path)},
                        project_config(store, save=False).instances)


def open_model(source: str | Path, device: str | torch.device = "cpu",
               inference_overrides: dict[str, Any] | None = None) -> TrainedModel:
    """A model file, a bioimage.io package made by oeem, or a project's current model (``source`` is a project
    folder): what ``oeem predict-images`` and the plugin's *Load model…* take. ``inference_overrides`` (e.g. ``--fast``) change how it predicts."""
    source = Path(source)
    if source.is_dir() and not is_package(source):
        from pipeline.store.project import project_config

        store = ProjectStore.open(source)
        cfg = project_config(store, save=False)
        trained = project_model(store, cfg.inference, cfg.slide.project_mpp, device)
    else:
        trained = load_model_file(source, device)
    if inference_overrides:
        trained.inference = dataclasses.replace(trained.inference, **inference_overrides)
    return trained


def load_network(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, SegConfig]:
    """The network of a model file or of a project's segmentation checkpoint: what slide prediction (here and on
    a cluster's workers) loads, whichever of the two it was given."""
    from pipeline.stages.segment import load_segmenter_file

    path = Path(path)
    if path.is_file() and path.name.endswith(SUFFIX) or is_package(path):
        trained = load_model_file(path, device)
        return trained.model, trained.seg
    model, seg = load_segmenter_file(path, device)
    return fold_batchnorm(model), seg


def weights_from_file(path: str | Path, seg: SegConfig) -> tuple[dict[str, torch.Tensor], str]:
    """A model file's weights to start a training from (``oeem train-seg --init-from``), and a label for the
    record; refused (one line) when the file's network is not the one ``seg`` builds."""
    trained = load_model_file(path)
    theirs = {k: v for k, v in to_dict(trained.seg).items() if k in ARCHITECTURE}
    ours = {k: v for k, v in to_dict(seg).items() if k in ARCHITECTURE}
    if theirs != ours:
        diff = "; ".join(f"{k}: file {theirs[k]} vs here {ours[k]}" for k in ARCHITECTURE if theirs[k] != ours[k])
        raise OEEMError(f"{path}: its network differs from this project's settings ({diff}); use the preset it was "
                        "trained with or set those settings to match")
    # the file's own weights: the loaded network has its batch norms folded for prediction
    return torch.load(path, map_location="cpu", weights_only=True)["model"], f"model file {Path(path).name}"


ARCHITECTURE = ("backbone", "decoder", "head_channels", "decoder_full_res")  # what must match to reuse weights

__all__ = ["FORMAT", "FORMAT_VERSION", "SUFFIX", "TrainedModel", "export_model", "is_package", "load_model_file",
           "load_network", "load_package", "model_payload", "open_model", "project_model", "weights_digest",
           "weights_from_file"]


def model_config(trained: TrainedModel, preset_name: str | None = None,
                 overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """The settings a model file predicts with outside any project (the CLI's ``--model``, the dock's *Model
    file*): a preset's, the model's prediction settings and µm/px, then ``overrides`` (a command's flags, the
    dock's *fast*) on top. Nothing is saved."""
    import dataclasses

    from pipeline.config import apply_overrides, check, preset

    cfg = preset(preset_name or DEFAULT_PRESET)
    cfg.inference, cfg.slide.project_mpp = dataclasses.replace(trained.inference), trained.mpp
    cfg.instances = dataclasses.replace(trained.instances)
    apply_overrides(cfg, {k: v for k, v in (overrides or {}).items() if v is not None})
    return check(cfg)
