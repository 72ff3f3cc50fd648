"""Whole-slide images: open lazily, know their microns per pixel, find the tissue, read regions at a resolution.

A slide (SVS, generic tiled / pyramidal TIFF, OME-TIFF; NDPI as far as ``tiffslide`` reads it) is opened with
``tiffslide`` (pure Python, on ``tifffile``): its pyramid levels are zarr arrays read tile by tile, so nothing is
loaded until a region is asked for. OpenSlide (``pip install oeem-napari[openslide]``) is not needed for these
formats. Pixel sizes are read from where the formats put them (Aperio ``MPP``, TIFF resolution tags, OME
``PhysicalSizeX``); when none is there the caller must give one - a guessed magnification makes every gland the
wrong size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import SLIDE_READERS
from pipeline.errors import OEEMError

SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".btf", ".scn", ".bif", ".qptiff")
_UNITS_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
GLASS = 242  # the grey level of empty glass used to pad regions read beyond a slide's edge


@dataclass(frozen=True)
class SlideInfo:
    path: str
    width: int
    height: int
    level_dimensions: list[tuple[int, int]]  # (width, height) per level, as OpenSlide gives them
    level_downsamples: list[float]
    mpp: float | None  # microns per pixel of level 0
    mpp_source: str  # where the pixel size came from: "file", "OME-XML", "--mpp" or "unknown"
    vendor: str | None
    notes: list[str] = field(default_factory=list)  # what was done to make the file usable (told to the user)

    def as_dict(self) -> dict:
        return {"path": self.path, "width": self.width, "height": self.height,
                "level_dimensions": [list(d) for d in self.level_dimensions],
                "level_downsamples": self.level_downsamples, "mpp": self.mpp, "mpp_source": self.mpp_source,
                "vendor": self.vendor, "notes": list(self.notes)}


def _ome_mpp(tif) -> float | None:
    xml = getattr(tif, "ome_metadata", None)
    if not xml:
        return None
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if not m:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    scale = _UNITS_TO_UM.get(unit.group(1) if unit else "µm")
    value = float(m.group(1))
    return value * scale if scale and value > 0 else None


def _check_complete(path: Path, tif) -> None:
    """A slide cut short by a failed copy opens fine and fails tile by tile later: refuse it at once."""
    size = path.stat().st_size
    for page in tif.pages:
        offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
        if offsets and counts and max(o + c for o, c in zip(offsets, counts)) > size:
            raise OEEMError(f"{path}: the file is truncated (its tiles point past the end of the file, "
                            f"{size} bytes); copy the slide again")


class _OpenSlideLevel:
    """One OpenSlide level as an array (H, W, 3) uint8 that reads only the region sliced - what dask and
    :meth:`Slide.read` need from a level."""

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, osr, level: int):
        self._osr, self._level = osr, level
        w, h = osr.level_dimensions[level]
        self.shape = (h, w, 3)
        self._down = osr.level_downsamples[level]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (list(key) + [slice(None), slice(None)])[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        region = self._osr.read_region((int(x0 * self._down), int(y0 * self._down)), self._level,
                                       (x1 - x0, y1 - y0))
        rgba = np.asarray(region)
        out = rgba[..., :3].copy()
        out[rgba[..., 3] == 0] = GLASS  # OpenSlide gives transparent pixels outside scanned areas
        return out[(slice(None), slice(None), *key[2:])] if len(key) > 2 else out


class Slide:
    """A whole-slide image opened lazily. ``levels[k]`` is an array (H, W, 3) of pyramid level ``k`` (zarr with
    tiffslide, a region reader with OpenSlide) from which only what is sliced is read."""

    def __init__(self, path: str | Path, mpp: float | None = None, backend: str = "auto"):
        path = Path(path)
        if not path.exists():
            raise OEEMError(f"{path}: no such file")
        if path.is_dir():
            raise OEEMError(f"{path}: a folder, not a slide; give a slide file (SVS, NDPI, pyramidal TIFF, "
                            "OME-TIFF)")
        if mpp is not None and not (0.01 <= mpp <= 100):
            raise OEEMError(f"--mpp {mpp}: microns per pixel are between 0.01 and 100 (0.25 at 40x, 0.5 at 20x)")
        if backend not in SLIDE_READERS:
            raise OEEMError(f"unknown slide reader {backend!r}: choose {', '.join(SLIDE_READERS)}")
        self.backend = "tiffslide"
        try:
            if backend == "openslide":
                raise _UseOpenSlide
            import tiffslide

            self._slide = tiffslide.TiffSlide(str(path))
            _check_complete(path, self._slide.ts_tifffile)
            group = self._slide.zarr_group
            keys = sorted((k for k in group.keys() if k.isdigit()), key=int) if hasattr(group, "keys") else []
            arrays = [group[k] for k in keys] if keys else [group]
        except OEEMError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile/tiffslide raise many kinds for a bad file
            arrays = self._open_with_openslide(path, exc, asked=backend == "openslide")
        self.path = path
        notes: list[str] = []
        self.levels = []
        for a in arrays:
            if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
                raise OEEMError(f"{path}: pixels of shape {a.shape} and type {a.dtype}; only 8-bit RGB "
                                "(brightfield H&E) slides are supported")
            self.levels.append(a)
        props = self._slide.properties
        prefix = self.backend  # "tiffslide.mpp-x" / "openslide.mpp-x"
        own = props.get(f"{prefix}.mpp-x")
        file_mpp = float(own) if own else (_ome_mpp(self._slide.ts_tifffile) if self.backend == "tiffslide" else None)
        source = "file" if own else ("OME-XML" if file_mpp else "unknown")
        if mpp is not None:
            if file_mpp and abs(file_mpp - mpp) / file_mpp > 0.05:
                notes.append(f"--mpp {mpp} overrides the file's {float(file_mpp):.4g} µm/px")
            file_mpp, source = mpp, "--mpp"
        if len(self.levels) == 1 and max(self.levels[0].shape[:2]) > 4096:
            notes.append("the file has no pyramid levels: zoomed-out views are computed from full resolution "
                         "(slow); save it as a pyramidal TIFF for fast viewing")
        dims = [(int(w), int(h)) for w, h in self._slide.level_dimensions]
        self.info = SlideInfo(str(path), dims[0][0], dims[0][1], dims, [float(d) for d in
                              self._slide.level_downsamples], float(file_mpp) if file_mpp else None, source,
                              props.get(f"{prefix}.vendor"), notes)

    def _open_with_openslide(self, path: Path, first: BaseException, asked: bool) -> list:
        """OpenSlide (``pip install 'oeem-napari[openslide]'``) for what tiffslide cannot read (NDPI fully,
        MIRAX, Hamamatsu VMS, ...), or when asked for with ``backend="openslide"``."""
        try:
            import openslide
        except ImportError:
            hint = ("install OpenSlide with pip install 'oeem-napari[openslide]'" if asked else
                    "give an SVS, NDPI, pyramidal TIFF or OME-TIFF file, or install OpenSlide for other formats "
                    "(pip install 'oeem-napari[openslide]')")
            reason = "" if asked else f" ({type(first).__name__}: {first})"
            raise OEEMError(f"{path}: not a slide this tool can read{reason}; {hint}") from None
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenSlideError, OpenSlideUnsupportedFormatError, OSError
            reason = exc if asked else first
            raise OEEMError(f"{path}: not a slide this tool can read ({type(reason).__name__}: {reason}); give an "
                            "SVS, NDPI, pyramidal TIFF or OME-TIFF file") from None
        self.backend = "openslide"
        return [_OpenSlideLevel(self._slide, k) for k in range(self._slide.level_count)]

    # ------------------------------------------------------------------ lazy access
    def require_mpp(self) -> float:
        if self.info.mpp is None:
            raise OEEMError(f"{self.path}: the file does not say its microns per pixel; give it with --mpp "
                            "(e.g. 0.25 for a 40x scan, 0.5 for 20x)")
        return self.info.mpp

    def pyramid(self, min_side: int = 1024) -> list:
        """Dask arrays (H, W, 3), one per level, for napari's multiscale layers; a file without levels gets
        lazily coarsened ones so a zoomed-out view never holds the full image."""
        import dask.array as da

        from pipeline.io.omezarr import half

        out = [(da.from_zarr(a) if self.backend == "tiffslide" else da.from_array(a, chunks=(512, 512, 3)))[..., :3]
               for a in self.levels]
        while len(self.levels) == 1 and max(out[-1].shape[:2]) > 2 * min_side:
            out.append(half(out[-1]))
        return out

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of ``level`` (level coordinates); glass beyond the edges."""
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out = np.full((h, w, 3), GLASS, np.uint8)
        y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
        if y1 > y0 and x1 > x0:
            try:
                out[y0 - y:y1 - y, x0 - x:x1 - x] = np.asarray(arr[y0:y1, x0:x1])[..., :3]
            except Exception as exc:  # noqa: BLE001 - a damaged tile: decoding errors of many kinds
                raise OEEMError(f"{self.path}: level {level} cannot be read at x={x0}, y={y0} ({exc}); the "
                                "file is damaged") from None
        return out

    def read_at(self, mpp: float, y: int, x: int, h: int, w: int) -> np.ndarray:
        """A region in the pixel grid of resolution ``mpp`` (µm/px): read from the finest level that is not
        coarser than ``mpp`` and resized (anti-aliased) to exactly (h, w)."""
        from skimage.transform import resize

        factor = mpp / self.require_mpp()  # level-0 pixels per target pixel
        level = self.level_for(factor)
        down = self.info.level_downsamples[level]
        f = factor / down  # level pixels per target pixel
        ly, lx = int(np.floor(y * f)), int(np.floor(x * f))
        lh, lw = max(1, int(np.ceil((y + h) * f)) - ly), max(1, int(np.ceil((x + w) * f)) - lx)
        region = self.read(level, ly, lx, lh, lw)
        if (lh, lw) == (h, w):
            return region
        img = resize(region, (h, w, 3), order=1, anti_aliasing=f > 1, preserve_range=True)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def level_for(self, factor: float) -> int:
        """The coarsest level whose downsample does not exceed ``factor`` (never upsample a coarser level)."""
        best = 0
        for k, d in enumerate(self.info.level_downsamples):
            if d <= factor * 1.01:
                best = k
        return best

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """An RGB overview and its downsample from level 0, read from the smallest level big enough."""
        from skimage.transform import resize

        W, H = self.info.width, self.info.height
        factor = max(1.0, max(W, H) / max_side)
        level = self.level_for(factor)
        arr = self.levels[level]
        down = self.info.level_downsamples[level]
        region = self.read(level, 0, 0, arr.shape[0], arr.shape[1])
        size = (max(1, round(H / factor)), max(1, round(W / factor)))
        if region.shape[:2] != size:
            region = np.clip(np.rint(resize(region, (*size, 3), order=1, anti_aliasing=factor > down,
                                            preserve_range=True)), 0, 255).astype(np.uint8)
        return region, factor

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _UseOpenSlide(Exception):
    """Internal: go straight to OpenSlide."""


def open_slide(path: str | Path, mpp: float | None = None, backend: str = "auto") -> Slide:
    return Slide(path, mpp, backend)


def is_slide_file(path: str | Path) -> bool:
    """A TIFF-family file big or pyramidal enough to be a slide (small TIFFs are left to other readers)."""
    path = Path(path)
    if path.suffix.lower() not in SLIDE_SUFFIXES or not path.is_file():
        return False
    if path.suffix.lower() in (".svs", ".ndpi", ".scn", ".bif", ".qptiff"):
        return True
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.levels) > 1 or max(series.shape[:2]) > 4096
    except Exception:  # noqa: BLE001 - not readable as TIFF: not ours
        return False


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Tissue (True) vs glass on an overview: stained pixels are saturated, glass is bright and grey. Otsu on
    saturation, small specks removed and gaps closed so a block at a tissue edge is never skipped."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    hsv = rgb2hsv(thumbnail)
    sat, val = hsv[..., 1], hsv[..., 2]
    if float(sat.max() - sat.min()) < 1e-3:
        return np.zeros(sat.shape, bool)
    t = max(0.05, float(threshold_otsu(sat)))
    mask = (sat > t) & (val > 0.1)
    labels, n = ndi.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes > max(4, mask.size // 20000)
        keep[0] = False
        mask = keep[labels]
    return ndi.binary_dilation(mask, iterations=2)
