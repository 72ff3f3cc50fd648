"""Reading H&E images and gland masks, and finding (image, mask) pairs in a GlaS-style folder.

Every check happens here, at the boundary, so the rest of the pipeline can trust its arrays:
images are ``uint8`` RGB ``(H, W, 3)``, masks are ``uint8`` ``(H, W)`` with 1 = gland, 0 = non-gland.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import OEEMError

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
MASK_TAGS = ("_anno", "_mask")
# GlaS file names say their split: train_12.png, testA_3.bmp, testB_7.bmp
_SPLIT_PATTERN = re.compile(r"^(train|testA|testB|test|val)_", re.IGNORECASE)

Image.MAX_IMAGE_PIXELS = 400_000_000  # large tiles are fine; the decompression-bomb guard is still there above


@dataclass(frozen=True)
class Sample:
    """One image of a data set and, when known, its gland mask."""

    name: str
    split: str
    image_path: Path
    mask_path: Path | None
    why: str = ""  # what put the image in its split, told by `oeem init` ("--test 'case9_*'", "named testA_*")


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise OEEMError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise OEEMError(f"{path}: cannot be read as an image ({exc}); re-export it as PNG or TIFF") from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """Read an H&E image as ``uint8`` RGB.

    RGBA is converted (alpha dropped; refused if the alpha is not opaque), 16-bit RGB is scaled to 8 bit,
    palette images are converted; grayscale is refused, because H&E colour is what the method learns from.
    """
    path = Path(path)
    img = _open(path)
    if img.mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        raise OEEMError(f"{path}: grayscale image (mode {img.mode}); OEEM needs RGB H&E images - "
                        "export the slide region in colour")
    if img.mode == "RGBA":
        alpha = np.asarray(img)[..., 3]
        if alpha.min() < 255:
            raise OEEMError(f"{path}: RGBA image with transparent pixels; flatten it onto white and save as RGB")
        img = img.convert("RGB")
    if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype == np.uint16 or (arr.ndim == 3 and arr.dtype != np.uint8):
        arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255 + 0.5).astype(np.uint8) \
            if np.issubdtype(arr.dtype, np.integer) else np.clip(arr * 255, 0, 255).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise OEEMError(f"{path}: expected an RGB image, got array shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_image_16bit_aware(path: str | Path) -> np.ndarray:
    """16-bit RGB files (PIL cannot hold them) go through tifffile/imageio, then to 8 bit."""
    import tifffile

    path = Path(path)
    arr = tifffile.imread(path)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise OEEMError(f"{path}: expected an RGB image, got array shape {arr.shape}; grayscale is not supported")
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255 + 0.5).astype(np.uint8)
    return arr


def load_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            return read_image_16bit_aware(path)
        except OEEMError:
            raise
        except Exception:  # not a plain TIFF tifffile reads: fall back to PIL's checks
            pass
    return read_image(path)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a gland mask: every value > 0 is gland (0/255 PNGs and GlaS instance-id BMPs alike)."""
    return (read_mask_labels(path, shape) > 0).astype(np.uint8)


def gland_ids(labels: np.ndarray) -> np.ndarray | None:
    """The truth's glands as objects when a mask carries them: an instance-id mask (the GlaS challenge's
    ``_anno.bmp``: one value per gland) as int32 ids, None for a binary mask (one value for every gland, e.g. 0/255),
    whose objects can only be its connected regions."""
    values = np.unique(labels)
    return labels.astype(np.int32) if len(values[values > 0]) > 1 else None


def read_mask_labels(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file's values as they are (0 = non-gland; a binary mask or one id per gland), checked against the
    image's ``shape``."""
    path = Path(path)
    img = _open(path)
    arr = np.asarray(img)
    if arr.ndim == 3:
        if arr.shape[2] >= 3 and not (np.array_equal(arr[..., 0], arr[..., 1])
                                      and np.array_equal(arr[..., 0], arr[..., 2])):
            raise OEEMError(f"{path}: the mask is a colour image; save it as a single-channel label image "
                            "(0 = non-gland, >0 = gland)")
        arr = arr[..., 0]
    if shape is not None and arr.shape != tuple(shape):
        raise OEEMError(f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} differs from its image "
                        f"{shape[1]}x{shape[0]}; masks must match their image pixel for pixel")
    if arr.dtype.kind not in "uib":
        raise OEEMError(f"{path}: a mask holds whole numbers (0 = non-gland), not {arr.dtype}")
    return arr


def read_grades(folder: str | Path) -> dict[str, str]:
    """Each image's grade from a GlaS-style ``Grade.csv`` in ``folder`` (columns ``name`` and ``grade (GlaS)``,
    values benign / malignant), by image name; empty when there is none. Why: the challenge reports benign and
    malignant glands apart, and malignant ones are where a method fails."""
    import csv

    path = Path(folder) / "Grade.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    grade_col = next((k for k, h in enumerate(header) if h.startswith("grade")), None)
    if "name" not in header or grade_col is None:
        raise OEEMError(f"{path}: expected the columns 'name' and 'grade (GlaS)' (GlaS's Grade.csv)")
    name_col = header.index("name")
    grades = {}
    for row in rows[1:]:
        if len(row) > max(name_col, grade_col):
            grade = row[grade_col].strip().lower()
            if grade not in ("benign", "malignant"):
                raise OEEMError(f"{path}: grade {row[grade_col]!r} of {row[name_col]!r} is neither benign nor "
                                "malignant")
            grades[safe_name(row[name_col].strip())] = grade
    return grades


def image_mpp(path: str | Path) -> float | None:
    """Microns per pixel an image file states (TIFF resolution tags, PNG pHYs / JPEG density in dots per inch or
    cm); None when it says nothing usable. 72 and 96 dpi are screen defaults written by many tools, not a scanner's
    pixel size, so they count as nothing said."""
    path = Path(path)
    per_inch = None
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                tags = tif.pages[0].tags
                res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
                if res is not None and res.value[1]:
                    value = res.value[0] / res.value[1]
                    unit_value = int(getattr(unit, "value", 2)) if unit is not None else 2
                    per_inch = value * 2.54 if unit_value == 3 else (value if unit_value == 2 else None)
        except Exception:  # noqa: BLE001 - unreadable tags: the image says nothing
            return None
    else:
        try:
            with Image.open(path) as img:
                dpi = img.info.get("dpi")
                per_inch = float(dpi[0]) if dpi else None
        except (OSError, UnidentifiedImageError):
            return None
    if not per_inch or per_inch <= 1 or round(per_inch) in (72, 96):
        return None
    mpp = 25_400.0 / per_inch
    return mpp if 0.01 <= mpp <= 100 else None


def list_image_files(paths: list[str | Path]) -> list[Path]:
    """The image files among ``paths`` (files, or folders searched recursively), masks (``NAME_anno.png``...)
    left out, in natural order, each once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                             and not f.name.startswith(".")), key=lambda f: natural_key(str(f.relative_to(p))))
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise OEEMError(f"{p}: not an image file this tool reads ({', '.join(IMAGE_SUFFIXES)})")
            found.append(p)
        else:
            raise OEEMError(f"{p}: no such file or folder")
    images = [f for f in dict.fromkeys(found) if not any(f.stem.endswith(t) for t in MASK_TAGS)]
    if not images:
        raise OEEMError(f"no images in {', '.join(map(str, paths))} ({', '.join(IMAGE_SUFFIXES)})")
    return images


def safe_name(stem: str) -> str:
    """A file's name as a project names the image: characters other than letters, digits, '_', '-' and '.' become
    '_' (a zarr key must not hold them); the file name itself is kept as the image's source."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem.strip())
    return name if name[:1].isalnum() else f"image{name}"


def _split_of(name: str, folder: str | None) -> tuple[str, str]:
    """The split GlaS naming gives a file (or a sub-folder: ``folder`` is its name), and why."""
    for candidate, why in ((name, "named {}_*"), (folder, "in a folder {}/")):
        m = _SPLIT_PATTERN.match(candidate + "_") if candidate is not None else None
        if m:
            s = m.group(1).lower()
            return ("train" if s == "train" else "val" if s == "val" else "test"), why.format(m.group(1))
    return "train", "no split in the name (training by default)"


def _mask_for(image_path: Path) -> Path | None:
    for tag in MASK_TAGS:
        for suffix in IMAGE_SUFFIXES:
            candidate = image_path.with_name(image_path.stem + tag + suffix)
            if candidate.is_file():
                return candidate
    return None


def find_samples(folder: str | Path, require_masks: bool = False, train: str | None = None,
                 test: str | None = None) -> list[Sample]:
    """List the images of a folder (PNG, BMP, TIFF, JPEG), each with its gland mask when one lies beside it
    (``NAME_anno.png`` / ``NAME_mask.png``...); masks are optional.

    Which images are for training: with ``train`` / ``test`` (shell patterns on the file name, e.g. ``"*.tif"``,
    ``"case1_*"``) an image matching ``test`` is a test image, one matching ``train`` a training image, and the
    others are left out (the names' split prefixes are then ignored); without them, the GlaS naming decides
    (``train_*`` / ``testA_*`` / ``testB_*`` / ``test_*`` / ``val_*`` files, or sub-folders of those names), and
    every other image is a training image. Each sample says why (:attr:`Sample.why`). Raises :class:`OEEMError` for a missing
    or empty folder, or for missing masks when required.
    """
    folder = Path(folder)
    if not folder.exists():
        raise OEEMError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise OEEMError(f"{folder}: not a folder; give the folder that holds the images")
    candidates: list[tuple[Path, str | None]] = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and _SPLIT_PATTERN.match(path.name + "_"):
            candidates += [(p, path.name) for p in sorted(path.iterdir()) if p.is_file()]
        elif path.is_file():
            candidates.append((path, None))
    samples = []
    for path, sub_folder in candidates:
        if path.suffix.lower() not in IMAGE_SUFFIXES or any(path.stem.endswith(t) for t in MASK_TAGS):
            continue
        if train is not None or test is not None:  # the patterns decide alone: a name's split prefix is ignored
            if test is not None and fnmatch.fnmatch(path.name, test):
                split, why = "test", f"--test {test!r}"
            elif train is not None and fnmatch.fnmatch(path.name, train):
                split, why = "train", f"--train {train!r}"
            elif train is None:
                split, why = "train", f"not matching --test {test!r}"
            else:
                continue
        else:
            split, why = _split_of(path.stem, sub_folder)
        mask = _mask_for(path)
        if require_masks and mask is None:
            raise OEEMError(f"{path}: no gland mask found (expected {path.stem}_anno.png or .bmp beside it); "
                            "add the masks or create the project without them")
        samples.append(Sample(safe_name(path.stem), split, path, mask, why))
    if not samples:
        given = [f"--{flag} {value!r}" for flag, value in (("train", train), ("test", test)) if value is not None]
        chosen = f" matching {' or '.join(given)}" if given else ""
        raise OEEMError(f"{folder}: no images found{chosen} (looked for {', '.join(IMAGE_SUFFIXES)} files; masks, "
                        "optional, are named NAME_anno.png)")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise OEEMError(f"{folder}: image names occur twice ({', '.join(dup[:5])}; characters other than letters, "
                        "digits, '_', '-' and '.' count as '_'); names must be unique")
    return samples


def natural_key(name: str) -> tuple:
    """Sort ``train_2`` before ``train_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
