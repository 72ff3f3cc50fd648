"""The preview: a gland-probability map learned in about a second from the project's tags, for every image, long
before the classifier has trained (``oeem preview``, the dock's *preview* layer, proposals without a model).

It is the pixel classifier ilastik and napari-apoc use, made to learn from patch tags: a random forest on
scikit-image's multiscale features (colour, edges, texture at several scales) at a reduced working scale. A patch
tagged *gland only* gives its pixels the label gland, *no gland* gives non-gland; *both* says nothing about a pixel
and is left out; a mask gives every pixel its label. Each image's features are computed once and kept (with the
features of the pixels sampled in each of its patches), so a new tag costs a re-fit on cached samples and one
prediction, not a pass over the project.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import PatchConfig, PreviewConfig
from pipeline.errors import OEEMError
from pipeline.io.patch_labels import GLAND, NON_GLAND, project_tags
from pipeline.stages.patches import patch_grid

PIXEL_LABEL = {GLAND: 1, NON_GLAND: 0}  # the tags that say what every pixel of their patch is


def pixel_features(image: np.ndarray, cfg: PreviewConfig) -> np.ndarray:
    """(h, w, F) float32 features of an RGB ``uint8`` image at ``cfg.scale``: scikit-image's multiscale basic
    features of each channel (and of the haematoxylin / eosin channels when ``cfg.stains``)."""
    from skimage.color import rgb2hed
    from skimage.feature import multiscale_basic_features
    from skimage.transform import rescale

    small = rescale(image, cfg.scale, channel_axis=-1, anti_aliasing=True, preserve_range=True) / 255.0
    channels = [small]
    if cfg.stains:
        hed = rgb2hed(np.clip(small, 0, 1))[..., :2]
        channels.append((hed - hed.mean((0, 1))) / (hed.std((0, 1)) + 1e-6))
    stack = np.concatenate(channels, axis=-1).astype(np.float32)
    return multiscale_basic_features(stack, intensity=True, edges=True, texture=cfg.texture,
                                     sigma_min=1, sigma_max=cfg.sigma_max, channel_axis=-1).astype(np.float32)


def patch_samples(shape: tuple[int, int], corners: np.ndarray, size: int, scale: float, per_patch: int,
                  seed: int) -> np.ndarray:
    """(N, per_patch, 2) pixel positions (y, x) at the working scale inside each patch, the same on every call."""
    rng = np.random.default_rng(seed)
    h, w = shape
    top = np.floor(corners * scale).astype(np.int64)
    side = max(1, int(size * scale))
    offs = rng.integers(0, side, size=(len(corners), per_patch, 2))
    pos = top[:, None, :] + offs
    pos[..., 0] = np.clip(pos[..., 0], 0, h - 1)
    pos[..., 1] = np.clip(pos[..., 1], 0, w - 1)
    return pos


@dataclass
class ImageSamples:
    """The features of the pixels sampled in each patch of one image, and what they are labelled now."""

    features: np.ndarray  # (N, per_patch, F)
    labels: np.ndarray  # (N, per_patch) int8: 1 gland, 0 non-gland, -1 unknown


def forest(cfg: PreviewConfig):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=cfg.trees, max_depth=cfg.max_depth, min_samples_leaf=2,
                                  max_features="sqrt", class_weight="balanced", n_jobs=cfg.jobs,
                                  random_state=cfg.seed)


def fit_forest(x: np.ndarray, y: np.ndarray, cfg: PreviewConfig):
    """A forest on at most ``cfg.max_samples`` of the labelled pixels (drawn evenly), or None with one class."""
    if len(np.unique(y)) < 2:
        return None
    if len(y) > cfg.max_samples:
        keep = np.random.default_rng(cfg.seed).choice(len(y), cfg.max_samples, replace=False)
        x, y = x[keep], y[keep]
    return forest(cfg).fit(x, y)


def predict_forest(model, feats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 gland probability at full resolution from the working-scale features."""
    from skimage.transform import resize

    h, w, f = feats.shape
    gland = list(model.classes_).index(1)
    prob = model.predict_proba(feats.reshape(-1, f))[:, gland].reshape(h, w).astype(np.float32)
    return resize(prob, shape, order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)


@dataclass
class Preview:
    """One image's preview: gland probability (H, W), its mask by ``threshold``, and what made it."""

    image: str
    probability: np.ndarray
    threshold: float
    source: str  # what made it, for the user: "pixel classifier (random forest) on ...", "segmentation model"
    seconds: float

    @property
    def mask(self) -> np.ndarray:
        return (self.probability > self.threshold).astype(np.uint8)


@dataclass
class ProjectPreview:
    """The preview model of one project, kept alive between tags (the dock holds one; the CLI makes one per call).

    :meth:`predict` re-reads what changed, re-fits the forest when the labelled pixels changed and predicts one
    image. An image's sampled pixels are kept once computed and relabelled when its tags change (a file stamp, no
    read); the full feature stacks of the last ``cfg.cached_images`` images shown are kept and rebuilt when the image
    changes (a hash of its first chunk)."""

    store: object  # pipeline.store.ProjectStore (not imported: the store imports the review package)
    patches: PatchConfig
    cfg: PreviewConfig = field(default_factory=PreviewConfig)
    _feats: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)  # name -> (key, features)
    _samples: dict = field(default_factory=dict, init=False, repr=False)  # name -> ImageSamples
    _stamps: dict = field(default_factory=dict, init=False, repr=False)  # name -> what its labels were read from
    _model: object = field(default=None, init=False, repr=False)
    _fitted_on: object = field(default=None, init=False, repr=False)
    pixels: int = field(default=0, init=False)  # labelled pixels the forest learned from
    images: int = field(default=0, init=False)  # images they came from
    # one caller at a time (the dock's preview thread and a job's `suggest` share one model and its caches)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    # ------------------------------------------------------------------ features (cached)
    def _image_key(self, name: str) -> tuple:
        first = np.asarray(self.store.array(name, "image")[:256, :256])
        return self.store.shape(name), hashlib.blake2b(first.tobytes(), digest_size=16).digest()

    def features(self, name: str) -> np.ndarray:
        """The working-scale features of ``name``, from the cache unless the image changed."""
        key = self._image_key(name)
        hit = self._feats.get(name)
        if hit is not None and hit[0] == key:
            self._feats.move_to_end(name)
            return hit[1]
        if hit is not None:  # the image itself changed: what was sampled from it too
            self._samples.pop(name, None)
            self._stamps.pop(name, None)
        feats = pixel_features(self.store.image(name), self.cfg)
        self._feats[name] = (key, feats)
        while len(self._feats) > self.cfg.cached_images:
            self._feats.popitem(last=False)
        return feats

    def _positions(self, name: str) -> np.ndarray:
        shape = self.store.shape(name)
        corners = patch_grid(shape, self.patches.size, self.patches.stride)
        small = (max(1, round(shape[0] * self.cfg.scale)), max(1, round(shape[1] * self.cfg.scale)))
        return patch_samples(small, corners, self.patches.size, self.cfg.scale, self.cfg.samples_per_patch,
                             self.cfg.seed)

    def _labels_of(self, name: str, pos: np.ndarray) -> np.ndarray | None:
        """(N, per_patch) labels of the sampled pixels from the mask (when the image has one) or the tags."""
        mask = self.store.mask(name)
        if mask is not None:
            s = self.cfg.scale
            ys = np.clip((pos[..., 0] / s).astype(np.int64), 0, mask.shape[0] - 1)
            xs = np.clip((pos[..., 1] / s).astype(np.int64), 0, mask.shape[1] - 1)
            return (mask[ys, xs] > 0).astype(np.int8)
        tags = project_tags(self.store, name, self.patches.size, self.patches.stride)
        if tags is None:
            return None
        per_patch = np.full(len(tags), -1, np.int8)
        for tag, label in PIXEL_LABEL.items():
            per_patch[tags == tag] = label
        return np.repeat(per_patch[:, None], pos.shape[1], axis=1)

    def samples(self, name: str) -> ImageSamples | None:
        """The labelled sample pixels of ``name`` (None when it has neither tags nor a mask)."""
        stamp = ("mask",) if self.store.has(name, "mask") else self.store.tags_stamp(name)
        if stamp is None:
            self._samples.pop(name, None)
            self._stamps.pop(name, None)
            return None
        found = self._samples.get(name)
        if found is not None and self._stamps.get(name) == stamp:
            return found
        pos = self._positions(name)
        labels = self._labels_of(name, pos)
        if labels is None:
            return None
        if found is None:
            feats = self.features(name)
            ys = np.clip(pos[..., 0], 0, feats.shape[0] - 1)
            xs = np.clip(pos[..., 1], 0, feats.shape[1] - 1)
            found = ImageSamples(feats[ys, xs], labels)
            self._samples[name] = found
        found.labels = labels
        self._stamps[name] = stamp
        return found

    # ------------------------------------------------------------------ the model
    def training_set(self, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """At most ``cfg.max_samples`` labelled sample pixels of the training images (or ``names``), drawn evenly:
        features (M, F) and labels (M,)."""
        found = [(n, s) for n in (self.store.names("train") if names is None else names)
                 if (s := self.samples(n)) is not None and (s.labels >= 0).any()]
        self.images = len(found)
        if not found:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int8)
        known = [np.flatnonzero(s.labels.reshape(-1) >= 0) for _, s in found]
        total = sum(len(k) for k in known)
        chosen = np.arange(total)
        if total > self.cfg.max_samples:
            chosen = np.sort(np.random.default_rng(self.cfg.seed).choice(total, self.cfg.max_samples, replace=False))
        xs, ys, start = [], [], 0
        for (_, s), k in zip(found, known):
            mine = k[chosen[(chosen >= start) & (chosen < start + len(k))] - start]
            start += len(k)
            xs.append(s.features.reshape(-1, s.features.shape[-1])[mine])
            ys.append(s.labels.reshape(-1)[mine])
        return np.concatenate(xs), np.concatenate(ys)

    def fit(self, names: list[str] | None = None) -> bool:
        """Re-fit the forest when the labelled pixels changed; False when they cannot make one (no tags, or all
        of one class)."""
        with self._lock:
            return self._fit(self.store.names("train") if names is None else names)

    def _fit(self, names: list[str]) -> bool:
        for n in names:
            self.samples(n)
        fingerprint = tuple(sorted((n, self._stamps[n]) for n in names if n in self._stamps))
        if fingerprint == self._fitted_on:
            return self._model is not None
        x, y = self.training_set(names)
        self._model = fit_forest(x, y, self.cfg) if len(y) else None
        self._fitted_on = fingerprint
        self.pixels = len(y)
        return self._model is not None

    def predict(self, name: str) -> Preview:
        """The preview of one image (fits first when the tags changed). Raises OEEMError without usable tags."""
        t = time.perf_counter()
        with self._lock:
            if not self.fit():
                raise OEEMError(self.why_none())
            prob = predict_forest(self._model, self.features(name), self.store.shape(name))
        return Preview(name, prob, 0.5, f"pixel classifier (random forest) on {self.pixels} tagged pixels of "
                       f"{self.images} image(s)", time.perf_counter() - t)

    def why_none(self) -> str:
        """One line saying what the preview needs, when it cannot be made."""
        s = self.store.tag_summary()
        if s["gland_only"] == 0 and s["no_gland"] == 0:
            return ("no preview yet: tag some patches 'gland only' (1) and some 'no gland' (2) - the dock's Weak "
                    "labels box, or `oeem labels import`; 'both' patches say nothing about single pixels")
        missing = "gland only" if s["gland_only"] == 0 else "no gland"
        return f"no preview yet: the tags have no '{missing}' patch; tag at least one"


def best_masks(store, cfg, names: list[str], device: str = "auto"):
    """Yield a :class:`Preview` of every image in ``names`` from the best model the project has now: the
    segmentation network once it has trained; else the pseudo-mask where stage 1 made one; else the classifier's
    pseudo-mask where a classifier has trained (also while tagging); else the forest on the tags. ``cfg``: the
    project's PipelineConfig."""
    segmenter = classifier = dev = None
    if store.checkpoint_path("segmentation").is_file() or store.checkpoint_path("classifier").is_file():
        from pipeline.device import resolve_device

        dev = resolve_device(device)
    if store.checkpoint_path("segmentation").is_file():
        from pipeline.stages.model_file import project_model
        from pipeline.stages.predict_files import predict_image

        segmenter = project_model(store, cfg.inference, cfg.slide.project_mpp, dev)
    elif store.checkpoint_path("classifier").is_file():
        from pipeline.stages.classify import load_classifier
        from pipeline.stages.live import pseudo_mask_now

        classifier = load_classifier(store, dev)[0]
    forest_model = ProjectPreview(store, cfg.patches, cfg.preview)
    for name in names:
        t = time.perf_counter()
        if segmenter is not None:
            mask = predict_image(segmenter, np.require(store.image(name), requirements="W"), segmenter.mpp, dev)
            yield Preview(name, mask.astype(np.float32), 0.5, "segmentation model", time.perf_counter() - t)
        elif store.has(name, "pseudo"):
            labels = store.labels(name)[0]
            yield Preview(name, labels.astype(np.float32), 0.5, "pseudo-mask (classifier, with corrections)",
                          time.perf_counter() - t)
        elif classifier is not None:
            mask = pseudo_mask_now(classifier, store, name, cfg, dev)
            yield Preview(name, mask.astype(np.float32), 0.5, "classifier's pseudo-mask", time.perf_counter() - t)
        else:
            yield forest_model.predict(name)
