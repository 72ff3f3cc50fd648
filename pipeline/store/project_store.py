"""The project store: one zarr group per project holding every artifact of every stage.

Layout (``<project>.zarr``)::

    zarr.json                      attrs: oeem_store_version, created_with, created; pseudo_round (self-training
                                   rounds the pseudo-masks went through: :attr:`ProjectStore.pseudo_round`);
                                   validation (the held-out images and the seed that chose them)
    images/<name>/                 attrs: split, source, height, width (slide regions: slide_region, where from);
                                   selftrain_joined (an untagged training image a self-training round took in)
        image (H, W, 3) uint8      mask (H, W) uint8 0/1 (when known)
        patch_corners (N, 2) int32 patch_labels (N, 2) uint8 [non-gland, gland]
        cam (2, H, W) float32      pseudo (H, W) uint8   pseudo_cam (H, W) uint8 (stage 1's own, once self-training
                                   replaced it)
        corrections/vNNNNNN (2, H, W) uint8   a saved correction state: (corrected labels, verified = 1 where a
                                   pathologist painted); each version written whole, never modified
        weight (H, W) float32      prob (H, W) float32 (gland)   prediction (H, W) uint8
        oof_prob (H, W) float32    error_prob (H, W) float32   regions (H, W) int32   the label review: the
                                   out-of-fold pixel classifier, P(label wrong) and the ranked regions' ids
    corrections/<name>.json        which versions are the undo stack, the last one current; replaced atomically
                                   *after* its version is written, so a crash at any moment leaves the last
                                   saved (or the new) state, never a mix
    tags/<name>.json               the pathologist's patch tags (0 unlabelled, 1 gland only, 2 no gland, 3 both)
                                   on the grid of the patch size and stride it names, with their undo stack;
                                   one small file replaced atomically
    checkpoints/<stage>.pt         plain torch files (weights-only loadable), written atomically
                                   (:meth:`ProjectStore.save_checkpoint`); <stage>.previous.pt: the one a fresh
                                   run moved aside
    checkpoints/versions/          models kept by *Update model* and guarded retrains (pipeline.store.versions)
    runs/<stage>.json              config, metrics and timings of the last run of each stage (config.json: the
                                   project's settings; review.json: the pathologist's accept / skip / undo;
                                   model-versions.json: the kept models)
    .lock, .lock.json              the writer lock (one writing process at a time) and who holds it

The CLI, the Python API and the napari plugin all read and write here, so a stage can be resumed or re-run
and a correction painted in the viewer is seen by the next training run without copying anything.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline import __version__
from pipeline.errors import OEEMError
from pipeline.io.data import Sample, gland_ids, load_image, natural_key, read_mask_labels

STORE_VERSION = 1
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
HISTORY_KEEP = 50  # earlier correction states kept per image (undo)
# train: weak labels train both stages; val: held out of training, its masks only choose settings; test: reported
SPLITS = ("train", "val", "test")
CORRECTION_KEYS = ("corrected", "verified")  # read through the versioned corrections, not plain arrays
JOINED_ATTR = "selftrain_joined"  # an image attribute: the self-training round an untagged training image joined


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, permissions: the previous file is untouched
        Path(tmp).unlink(missing_ok=True)
        raise OEEMError(f"{path}: could not be written ({exc.strerror or exc}); the previous version is intact - "
                        "free some space and run the command again") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Spatial chunks of 512 px; leading channel axes whole."""
    if len(shape) == 2:
        return (min(512, shape[0]), min(512, shape[1]))
    if len(shape) == 3 and shape[2] in (3, 4):
        return (min(512, shape[0]), min(512, shape[1]), shape[2])
    if len(shape) == 3:
        return (shape[0], min(512, shape[1]), min(512, shape[2]))
    return tuple(shape)


class ProjectStore:
    """A project on disk. Open with :meth:`open`, make with :meth:`create`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.root = group

    @property
    def writable(self) -> bool:
        """Opened to write (the ranks of a torchrun launch other than 0 open it read-only)."""
        return not self.root.read_only

    # ------------------------------------------------------------------ opening and creating
    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> ProjectStore:
        path = Path(path)
        if not path.exists():
            raise OEEMError(f"{path}: no project here; create one with `oeem init DATA_FOLDER {path}`")
        if not (path / "zarr.json").is_file():
            raise OEEMError(f"{path}: not an oeem project (no zarr.json); create one with "
                            f"`oeem init DATA_FOLDER {path}`")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # noqa: BLE001 - any zarr failure means the same thing to a user
            raise OEEMError(f"{path}: cannot be opened as a zarr store ({exc})") from None
        version = group.attrs.get("oeem_store_version")
        if version is None:
            raise OEEMError(f"{path}: a zarr store, but not an oeem project (no oeem_store_version)")
        if version > STORE_VERSION:
            raise OEEMError(f"{path}: written by a newer oeem-napari (store version {version}, this one reads "
                            f"{STORE_VERSION}); upgrade with `pip install -U oeem-napari`")
        if version < STORE_VERSION:
            raise OEEMError(f"{path}: written by an older oeem-napari (store version {version}); "
                            "re-create it with `oeem init`")
        return cls(path, group)

    @classmethod
    def create(cls, path: str | Path, samples: Iterable[Sample], overwrite: bool = False,
               progress=None) -> ProjectStore:
        """Validate every file first, then write the store into a temporary folder and rename it into place,
        so a failure or an interruption never leaves a half-made project behind."""
        path = Path(path)
        samples = sorted(samples, key=lambda s: natural_key(s.name))
        if path.exists() and not overwrite:
            raise OEEMError(f"{path}: already exists; choose another path or pass --redo")
        for s in samples:
            if not _NAME_OK.match(s.name):
                raise OEEMError(f"{s.image_path}: file name {s.name!r} has characters a project cannot use; "
                                "rename it to letters, digits, '_', '-' and '.'")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.creating."))
        try:
            group = zarr.open_group(str(tmp), mode="w")
            group.attrs.update({"oeem_store_version": STORE_VERSION, "created_with": f"oeem-napari {__version__}",
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            store = cls(tmp, group)
            for k, s in enumerate(samples):
                image = load_image(s.image_path)
                labels = read_mask_labels(s.mask_path, image.shape[:2]) if s.mask_path else None
                store._add_image(s.name, s.split, image, None if labels is None else labels > 0,
                                 source=str(s.image_path))
                ids = None if labels is None else gland_ids(labels)
                if ids is not None:  # the truth's glands as objects (GlaS's _anno.bmp): kept for the object scores
                    store._write(store.group(s.name), "mask_ids", ids)
                if progress:
                    progress(k + 1, len(samples), s.name)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    def add_image(self, name: str, split: str, image: np.ndarray, source: str, **attrs: Any) -> None:
        """Add one image (no mask) to an existing project, e.g. a region cut from a slide; ``attrs`` (JSON values)
        record where it came from."""
        if not _NAME_OK.match(name):
            raise OEEMError(f"image name {name!r} has characters a project cannot use (letters, digits, '_', '-', "
                            "'.')")
        if name in self.names():
            raise OEEMError(f"{self.path}: already has an image {name!r}")
        if split not in SPLITS:
            raise OEEMError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise OEEMError(f"{name}: an image must be 8-bit RGB (H, W, 3), not {image.dtype} {image.shape}")
        self._add_image(name, split, image, None, source)
        if attrs:
            self.group(name).attrs.update(json.loads(json.dumps(attrs, default=_json_default)))

    def _add_image(self, name: str, split: str, image: np.ndarray, mask: np.ndarray | None, source: str) -> None:
        g = self.root.require_group(f"images/{name}")
        g.attrs.update({"split": split, "source": source, "height": image.shape[0], "width": image.shape[1]})
        self._write(g, "image", image)
        if mask is not None:
            self._write(g, "mask", mask.astype(np.uint8))

    # ------------------------------------------------------------------ reading
    def _damaged(self, what: str, exc: BaseException) -> OEEMError:
        return OEEMError(f"{self.path}: {what} cannot be read ({type(exc).__name__}): the store is damaged; run "
                         f"`oeem doctor {self.path}`, or re-create the project with `oeem init`")

    def names(self, split: str | None = None) -> list[str]:
        try:
            if "images" not in self.root:
                return []
            names = sorted(self.root["images"].group_keys(), key=natural_key)
        except Exception as exc:  # noqa: BLE001 - damaged metadata (zarr.json) of the image list
            raise self._damaged("the list of images", exc) from None
        if split is not None:
            names = [n for n in names if self.split(n) == split]
        return names

    def group(self, name: str) -> zarr.Group:
        try:
            return self.root[f"images/{name}"]
        except KeyError:
            raise OEEMError(f"{self.path}: no image named {name!r} in this project") from None
        except Exception as exc:  # noqa: BLE001
            raise self._damaged(f"image {name!r}", exc) from None

    def split(self, name: str) -> str:
        split = self.group(name).attrs.get("split", "train")
        if split not in SPLITS:
            raise OEEMError(f"{self.path}: image {name!r} has an unknown split {split!r}; run `oeem doctor {self.path}`")
        return split

    def set_split(self, name: str, split: str) -> None:
        """Move an image to another split, e.g. ``val``: images held out of training to choose settings on."""
        if split not in SPLITS:
            raise OEEMError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        self.group(name).attrs["split"] = split

    def joined_round(self, name: str) -> int | None:
        """The self-training round that took in ``name``, an untagged training image (``selftrain.untagged_images``),
        or None: its patch labels (all unlabelled) and pseudo-mask then belong to the rounds, not to stage 1."""
        value = self.group(name).attrs.get(JOINED_ATTR)
        return None if value is None else int(value)

    def set_joined_round(self, name: str, labels_round: int | None) -> None:
        attrs = self.group(name).attrs
        if labels_round is not None:
            attrs[JOINED_ATTR] = int(labels_round)
        elif JOINED_ATTR in attrs:
            del attrs[JOINED_ATTR]

    def drop_joined_images(self) -> int:
        """Forget the untagged images self-training took in (a new stage 1, or back to round 0): their labels came
        from rounds that are gone. Marker last, so an interrupted drop is finished by the next. Returns how many."""
        dropped = 0
        for n in self.names("train"):
            if self.joined_round(n) is not None:
                for key in ("patch_labels", "patch_corners", "pseudo", "pseudo_cam"):
                    self.delete(n, key)
                self.set_joined_round(n, None)
                dropped += 1
        return dropped

    def shape(self, name: str) -> tuple[int, int]:
        a = self.group(name).attrs
        try:
            return int(a["height"]), int(a["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(f"the size of image {name!r}", exc) from None

    def has(self, name: str, key: str) -> bool:
        if key in CORRECTION_KEYS:
            return self.correction_version(name) is not None
        try:
            return key in self.group(name)
        except OEEMError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._damaged(f"the arrays of image {name!r}", exc) from None

    def array(self, name: str, key: str) -> zarr.Array:
        """The zarr array itself (for lazy, dask-backed viewing)."""
        if not self.has(name, key):
            raise OEEMError(f"{self.path}: image {name!r} has no {key!r} yet; {MAKES.get(key, '')}".rstrip("; "))
        try:
            return self.group(name)[key]
        except Exception as exc:  # noqa: BLE001
            raise self._damaged(f"array {key!r} of image {name!r}", exc) from None

    def read(self, name: str, key: str) -> np.ndarray:
        if key in CORRECTION_KEYS:
            state = self.correction(name)
            if state is None:
                raise OEEMError(f"{self.path}: image {name!r} has no correction yet; paint one in the plugin or "
                                f"import annotations with `oeem import-geojson {self.path} FILE`")
            return state[CORRECTION_KEYS.index(key)]
        try:
            return np.asarray(self.array(name, key)[...])
        except OEEMError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged chunk or metadata: name it, say what to do
            raise OEEMError(f"{self.path}: array {key!r} of image {name!r} cannot be read ({type(exc).__name__}); "
                            f"run `oeem doctor {self.path}`") from None

    def image(self, name: str) -> np.ndarray:
        return self.read(name, "image")

    def mask(self, name: str) -> np.ndarray | None:
        return self.read(name, "mask") if self.has(name, "mask") else None

    def truth_objects(self, name: str) -> tuple[np.ndarray, bool] | None:
        """The glands of an image's mask as objects, and whether they are the mask's own ids (an instance-id mask)
        rather than its 8-connected regions (a binary mask); None without a mask."""
        from pipeline.metrics import label_objects

        if self.has(name, "mask_ids"):
            return self.read(name, "mask_ids"), True
        mask = self.mask(name)
        return None if mask is None else (label_objects(mask), False)

    def grade(self, name: str) -> str | None:
        """benign or malignant where the data said (GlaS's Grade.csv at ``oeem init``), else None."""
        return self.group(name).attrs.get("grade")

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _write(g: zarr.Group, key: str, data: np.ndarray) -> None:
        data = np.asarray(data)
        if key in g and g[key].shape == data.shape and g[key].dtype == data.dtype:
            g[key][...] = data
        else:
            arr = g.create_array(key, shape=data.shape, dtype=data.dtype, chunks=_chunks(data.shape),
                                 overwrite=True)
            arr[...] = data

    def write(self, name: str, key: str, data: np.ndarray) -> None:
        self._write(self.group(name), key, data)

    def delete(self, name: str, key: str) -> None:
        g = self.group(name)
        if key in g:
            del g[key]

    # ------------------------------------------------------------------ runs and checkpoints
    def checkpoint_path(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}.pt"

    def retire_checkpoint(self, stage: str, copy: bool = False) -> Path:
        """Move a checkpoint aside (``<stage>.previous.pt``) before a fresh run replaces it, so the last model is
        never silently lost; ``copy`` leaves it in place too (until the new run's first checkpoint replaces it)."""
        src = self.checkpoint_path(stage)
        dst = src.with_name(f"{stage}.previous.pt")
        if copy:
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        else:
            os.replace(src, dst)
        return dst

    def run_path(self, name: str) -> Path:
        """``runs/<name>.json``: a stage's run record, the project's settings (``config``), the review, the kept
        model versions."""
        return self.path / "runs" / f"{name}.json"

    def save_run(self, stage: str, record: dict[str, Any]) -> None:
        atomic_write_json(self.run_path(stage), record)

    def load_run(self, stage: str) -> dict[str, Any] | None:
        p = self.run_path(stage)
        return json.loads(p.read_text()) if p.is_file() else None

    def save_checkpoint(self, stage: str, state: dict[str, Any]) -> Path:
        """Write a stage's checkpoint (a plain torch file, loadable with ``weights_only``) atomically: a reader, or a
        run killed while it is written, sees the previous checkpoint or the new one, never half of one."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.checkpoint_path(stage)
        atomic_write_bytes(path, buf.getvalue())
        return path

    # ------------------------------------------------------------------ what training learns from
    @property
    def pseudo_round(self) -> int:
        """How many self-training rounds the current pseudo-masks have been through (0: straight from the CAMs)."""
        return int(self.root.attrs.get("pseudo_round", 0))

    @pseudo_round.setter
    def pseudo_round(self, value: int) -> None:
        self.root.attrs["pseudo_round"] = int(value)

    def labelled_images(self, splits: Sequence[str] = ("train", "val")) -> list[str]:
        """The images of ``splits`` (in that order) that have patch labels: those stage 1 makes pseudo-masks for and
        self-training refines (with ``patches.untagged_images`` also training images whose patches are all
        unlabelled)."""
        return [n for split in splits for n in self.names(split) if self.has(n, "patch_labels")]

    def labels(self, name: str, source: str = "corrected") -> tuple[np.ndarray, np.ndarray]:
        """The labels ``name`` trains on (H x W, 0/1) and the pixels among them a pathologist verified (bool).

        ``source``: ``corrected`` (the default: the current correction where there is one, else the pseudo-mask with
        nothing verified), ``pseudo`` (the pseudo-mask alone) or ``mask`` (the gland mask: the fully-supervised
        upper bound, nothing verified). Training, prediction's weight map, export, the label review and the viewer
        all ask here."""
        if source == "mask":
            m = self.mask(name)
            if m is None:
                raise OEEMError(f"{self.path}: image {name!r} has no gland mask; full supervision needs masks")
            return m, np.zeros(m.shape, bool)
        if source not in ("pseudo", "corrected"):
            raise OEEMError(f"unknown label source {source!r}: choose pseudo, corrected or mask")
        if not self.has(name, "pseudo"):
            raise OEEMError(f"{self.path}: image {name!r} has no pseudo-mask yet; run `oeem cams {self.path}` first")
        state = self.correction(name) if source == "corrected" else None
        if state is not None:
            return state[0], state[1].astype(bool)
        pseudo = self.read(name, "pseudo")
        return pseudo, np.zeros(pseudo.shape, bool)

    # ------------------------------------------------------------------ corrections
    def _index_path(self, name: str) -> Path:
        return self.path / "corrections" / f"{name}.json"

    def _correction_stack(self, name: str) -> list[int] | None:
        """The undo stack of saved versions (last = current), or None for a project that never used it."""
        p = self._index_path(name)
        if not p.is_file():
            return None
        try:
            stack = json.loads(p.read_text())["stack"]
            return [int(v) for v in stack]
        except (ValueError, KeyError, TypeError):
            raise OEEMError(f"{p}: the correction index of {name!r} is damaged; run `oeem doctor {self.path}` to "
                            "restore the last good correction") from None

    def correction_version(self, name: str) -> int | None:
        """The current correction's version (0: one from an older layout), None when there is none."""
        stack = self._correction_stack(name)
        if stack is None:
            return 0 if "corrected" in self.group(name) and "verified" in self.group(name) else None
        return stack[-1] if stack else None

    def _read_version(self, name: str, version: int) -> np.ndarray:
        if version == 0:  # the layout before versions: two separate arrays
            g = self.group(name)
            return np.stack([np.asarray(g["corrected"][...]), np.asarray(g["verified"][...])])
        try:
            state = np.asarray(self.group(name)[f"corrections/v{version:06d}"][...])
        except Exception as exc:  # noqa: BLE001
            raise OEEMError(f"{self.path}: correction version {version} of image {name!r} is damaged or missing "
                            f"({type(exc).__name__}); run `oeem doctor {self.path}`") from None
        if state.shape != (2, *self.shape(name)):
            raise OEEMError(f"{self.path}: correction version {version} of image {name!r} has shape {state.shape}; "
                            f"run `oeem doctor {self.path}`")
        return state

    def correction(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(corrected labels, verified pixels) of the current correction, or None."""
        version = self.correction_version(name)
        if version is None:
            return None
        state = self._read_version(name, version)
        return state[0], state[1]

    def _write_stack(self, name: str, stack: list[int]) -> None:
        atomic_write_json(self._index_path(name), {"image": name, "stack": stack,
                                                   "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self._collect_versions(name, keep=set(stack))

    def _collect_versions(self, name: str, keep: set[int]) -> None:
        """Delete versions the stack no longer names (and half-written ones a crash left); best effort - a
        leftover is harmless because nothing refers to it."""
        g = self.group(name)
        for key in ("corrected", "verified", "history"):  # the older layout, now migrated
            if key in g:
                del g[key]
        if "corrections" not in g:
            return
        for key in list(g["corrections"].keys()):
            if not (key.startswith("v") and key[1:].isdigit() and int(key[1:]) in keep):
                try:
                    del g["corrections"][key]
                except Exception:  # noqa: BLE001
                    pass

    def save_correction(self, name: str, labels: np.ndarray, painted: np.ndarray | None = None) -> int:
        """Store an edited pseudo-mask. Pixels that differ from the machine's pseudo-mask (plus any ``painted``
        ones) become pathologist-verified. The previous state stays on the undo stack.

        Crash-safe: the new state is written as a new version first and becomes current only when the index
        naming it is replaced (an atomic rename), so a kill at any moment leaves the previous or the new state
        - labels and verified pixels together. Returns the number of verified pixels."""
        from pipeline.store.lock import project_writer

        with project_writer(self.path, "saving a correction"):
            return self._save_correction(name, labels, painted)

    def _save_correction(self, name: str, labels: np.ndarray, painted: np.ndarray | None) -> int:
        labels = np.asarray(labels)
        if labels.shape != self.shape(name):
            raise OEEMError(f"correction for {name!r} has shape {labels.shape}, the image is {self.shape(name)}")
        bad = np.setdiff1d(np.unique(labels), [0, 1])
        if bad.size:
            raise OEEMError(f"correction for {name!r} uses label(s) {bad.tolist()}; only 0 (non-gland) and "
                            "1 (gland) are allowed")
        pseudo = self.read(name, "pseudo")
        stack = self._correction_stack(name)
        current = self.correction(name)
        if stack is None:
            stack = []
            if current is not None:  # migrate the older layout's state so it can still be undone to
                stack = [self._new_version(name, np.stack(current))]
        verified = current[1].astype(bool) if current is not None else np.zeros(labels.shape, bool)
        verified |= labels != pseudo
        if painted is not None:
            verified |= np.asarray(painted, bool)
        try:
            version = self._new_version(name, np.stack([labels.astype(np.uint8), verified.astype(np.uint8)]))
        except OSError as exc:
            raise OEEMError(f"{self.path}: the correction of {name!r} could not be saved ({exc.strerror or exc}); "
                            "the previous one is intact - free some space, the strokes are saved again") from None
        self._write_stack(name, (stack + [version])[-(HISTORY_KEEP + 1):])
        return int(verified.sum())

    def _new_version(self, name: str, state: np.ndarray) -> int:
        g = self.group(name).require_group("corrections")
        taken = [int(k[1:]) for k in g.keys() if k.startswith("v") and k[1:].isdigit()]
        version = max(taken + (self._correction_stack(name) or []) + [0]) + 1
        arr = g.create_array(f"v{version:06d}", shape=state.shape, dtype="uint8", chunks=_chunks(state.shape),
                             overwrite=True)
        arr[...] = state
        return version

    def undo_correction(self, name: str) -> bool:
        """Go back to the previous correction state (or none at all). False when there is nothing to undo."""
        from pipeline.store.lock import project_writer

        with project_writer(self.path, "undoing a correction"):
            if self.correction_version(name) is None:
                return False
            stack = self._correction_stack(name) or []
            self._write_stack(name, stack[:-1])
            return True

    def correction_history(self, name: str) -> list[int]:
        """Saved versions, oldest first; the last is current."""
        stack = self._correction_stack(name)
        if stack is None:
            return [0] if self.correction_version(name) == 0 else []
        return stack

    # ------------------------------------------------------------------ patch tags (weak labels a pathologist gives)
    def _tags_path(self, name: str) -> Path:
        return self.path / "tags" / f"{name}.json"

    def _tag_stack(self, name: str) -> dict[str, Any] | None:
        path = self._tags_path(name)
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
            state["stack"] = [np.asarray(s, np.uint8) for s in state["stack"]]
            return state
        except (ValueError, KeyError, TypeError):
            raise OEEMError(f"{path}: the patch tags of {name!r} are damaged; restore the file from a backup or "
                            f"delete it and tag the image again") from None

    def patch_tags(self, name: str) -> tuple[np.ndarray, int, int] | None:
        """The pathologist's current tags of ``name`` (``pipeline.io.patch_labels``: 0 unlabelled, 1 gland only,
        2 no gland, 3 both) on the grid of patches of side ``size`` and step ``stride``; None when never tagged."""
        state = self._tag_stack(name)
        if state is None or not state["stack"]:
            return None
        return state["stack"][-1], int(state["size"]), int(state["stride"])

    def save_patch_tags(self, name: str, tags: np.ndarray, size: int, stride: int) -> None:
        """Keep ``tags`` as the image's current tags, the previous ones on its undo stack (``TAG_UNDO`` steps).

        Crash-safe: the whole stack is one small JSON file replaced atomically, so a kill leaves the previous or
        the new tags. A grid of other patch settings starts a new stack (the old tags are on another grid)."""
        from pipeline.stages.patches import patch_grid
        from pipeline.store.lock import project_writer

        tags = np.asarray(tags, np.uint8)
        expected = len(patch_grid(self.shape(name), size, stride))
        if tags.shape != (expected,) or tags.max(initial=0) > 3:
            raise OEEMError(f"{name}: {tags.shape[0] if tags.ndim == 1 else tags.shape} tags for {expected} patches "
                            f"of {size} px (stride {stride}); each tag is 0-3")
        with project_writer(self.path, "saving patch tags"):
            state = self._tag_stack(name)
            stack = state["stack"] if state and (state["size"], state["stride"]) == (size, stride) else []
            if stack and np.array_equal(stack[-1], tags):
                return
            stack = (stack + [tags])[-TAG_UNDO:]
            atomic_write_json(self._tags_path(name), {"image": name, "size": size, "stride": stride,
                                                      "stack": [s.tolist() for s in stack],
                                                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def undo_patch_tags(self, name: str) -> bool:
        """Go back one step of ``name``'s tags (to untagged after the first); False when there is nothing to undo."""
        from pipeline.store.lock import project_writer

        with project_writer(self.path, "undoing patch tags"):
            state = self._tag_stack(name)
            if not state or not state["stack"]:
                return False
            state["stack"] = state["stack"][:-1]
            atomic_write_json(self._tags_path(name), {**state, "stack": [s.tolist() for s in state["stack"]],
                                                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return True

    def tags_stamp(self, name: str) -> tuple[int, int] | None:
        """When ``name``'s tags last changed (modification time and size of their file), None when never tagged: a
        cheap test whether something learned from them must look again (the preview)."""
        try:
            st = self._tags_path(name).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def tags_fingerprint(self) -> str | None:
        """A digest of every image's current tags (None when nothing is tagged): what the patch labels were made
        from, so ``oeem run`` remakes them, and what learned from them, after the pathologist tags more."""
        import hashlib

        digest, any_tags = hashlib.sha1(), False
        for n in self.names():
            found = self.patch_tags(n)
            if found is not None and found[0].any():
                any_tags = True
                digest.update(f"{n}:{found[1]}:{found[2]}:".encode() + found[0].tobytes())
        return digest.hexdigest() if any_tags else None

    def label_state(self, name: str) -> dict[str, Any]:
        """What a model learns from ``name`` besides its pseudo-mask: the current correction version and a digest of
        the patch tags. Every training records it for every image, so ``oeem update`` knows what changed since."""
        import hashlib

        found = self.patch_tags(name)
        digest = None
        if found is not None and found[0].any():
            digest = hashlib.sha1(f"{found[1]}:{found[2]}:".encode() + found[0].tobytes()).hexdigest()[:16]
        return {"correction": self.correction_version(name), "tags": digest}

    def label_states(self) -> dict[str, dict[str, Any]]:
        """:meth:`label_state` of every training and validation image (what a training's record keeps)."""
        return {n: self.label_state(n) for n in self.names("train") + self.names("val")}

    def tag_summary(self) -> dict[str, Any]:
        """Images and patches tagged, per tag: the pathologist's progress (``oeem info``, the plugin)."""
        per_tag = np.zeros(4, np.int64)
        images = 0
        for n in self.names():
            found = self.patch_tags(n)
            if found is None or not found[0].any():
                continue
            images += 1
            per_tag += np.bincount(found[0], minlength=4)
        return {"images": images, "patches": int(per_tag[1:].sum()), "gland_only": int(per_tag[1]),
                "no_gland": int(per_tag[2]), "both": int(per_tag[3])}

    def check_corrections(self, name: str, repair: bool = False) -> dict[str, Any]:
        """Read every saved correction version of ``name``: ``{"index", "index_ok", "read", "damaged", "intact",
        "repaired"}`` (``read``: versions tried). With ``repair``, the index is rewritten to the intact versions
        (newest last) and the others are deleted. Here, not in the doctor, because the store owns the corrections'
        layout."""
        out: dict[str, Any] = {"index": str(self._index_path(name)), "index_ok": True, "read": 0, "damaged": [],
                               "intact": [], "repaired": False}
        g = self.group(name)
        versions = g["corrections"] if "corrections" in g else None
        on_disk = sorted(int(k[1:]) for k in (versions.array_keys() if versions is not None else ())
                         if k[1:].isdigit())
        try:
            stack = self._correction_stack(name)
        except OEEMError:
            stack, out["index_ok"] = None, False
        if stack is None and out["index_ok"]:
            return out  # no corrections (or the older layout, checked as plain arrays)
        for v in (stack if out["index_ok"] else on_disk):
            out["read"] += 1
            try:
                self._read_version(name, v)
                out["intact"].append(v)
            except OEEMError:
                out["damaged"].append(v)
        if repair and (not out["index_ok"] or out["intact"] != stack):
            atomic_write_json(self._index_path(name), {"image": name, "stack": out["intact"], "repaired": True})
            self._collect_versions(name, keep=set(out["intact"]))
            out["repaired"] = True
        return out

    def correction_summary(self) -> dict[str, Any]:
        per_image = {}
        for n in self.names():
            if self.has(n, "verified"):
                count = int(np.count_nonzero(self.read(n, "verified")))
                if count:
                    per_image[n] = count
        return {"images": len(per_image), "pixels": int(sum(per_image.values())), "per_image": per_image}


TAG_UNDO = 100  # undo steps kept of an image's patch tags

# what makes each array, for the messages about a missing one (PROJECT: the project's path)
MAKES = {
    "patch_labels": "run `oeem patches PROJECT` first",
    "cam": "run `oeem cams PROJECT` first",
    "pseudo": "run `oeem cams PROJECT` first",
    "prediction": "run `oeem predict PROJECT` first",
    "prob": "run `oeem predict PROJECT` first",
    "weight": "run `oeem predict PROJECT` first",
    "instances": "run `oeem predict PROJECT` (or `oeem instances PROJECT` after a prediction) first",
    "mask": "this image has no gland mask",
}
