"""The evidence that a pseudo-label is wrong, each piece out of sample or independent of the pixel labels:
an out-of-fold pixel classifier, the stage-1 CAM margin, how mixed the covering patches are, the distance to the
label's boundary and the segmentation's own probability.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipeline.config import PipelineConfig, RankConfig
from pipeline.errors import OEEMError
from pipeline.store import ProjectStore

FEATURES = ("cam_margin", "oof_agree", "seg_agree", "log_boundary_distance", "mixed_patches",
            "cam_margin_smooth", "oof_agree_smooth", "label")


SMOOTH_FEATURE_SIGMA = 8.0


# ---------------------------------------------------------------------------- evidence
def pixel_features(image: np.ndarray, scale: float) -> np.ndarray:
    """Multi-scale intensity, edge and texture features (scikit-image) of the image shrunk by ``scale``."""
    from skimage.feature import multiscale_basic_features
    from skimage.transform import resize

    h, w = image.shape[:2]
    small = resize(image, (max(8, round(h * scale)), max(8, round(w * scale))), anti_aliasing=scale < 1)
    return multiscale_basic_features(small, channel_axis=-1, sigma_min=1, sigma_max=16).astype(np.float32)


def _labels_at(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    return resize(labels.astype(np.float32), shape, order=0, anti_aliasing=False) > 0.5


def out_of_fold_probs(store: ProjectStore, train: list[str], extra: list[str], cfg: RankConfig, seed: int = 0):
    """Gland probability of every ``train`` image from a forest trained on the other folds' labels, and of every
    ``extra`` (validation) image from a forest trained on all of ``train``. A generator of (done, total, name,
    probs) - probs is filled at the end."""
    from skimage.transform import resize
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    total = len(train) + (cfg.folds + (1 if extra else 0)) + len(extra)
    done = 0
    for n in train:
        f = pixel_features(store.image(n), cfg.feature_scale)
        lab = _labels_at(store.labels(n)[0], f.shape[:2]).ravel()
        idx = rng.choice(lab.size, min(cfg.samples_per_image, lab.size), replace=False)
        samples[n] = (f.reshape(-1, f.shape[-1])[idx], lab[idx])
        done += 1
        yield done, total, n, None
    folds = np.array_split(rng.permutation(len(train)), min(cfg.folds, len(train)))
    plan = [[train[i] for i in fold] for fold in folds] + ([extra] if extra else [])
    probs: dict[str, np.ndarray] = {}
    for held_out in plan:
        fit_on = [n for n in train if n not in held_out]
        x = np.concatenate([samples[n][0] for n in fit_on])
        y = np.concatenate([samples[n][1] for n in fit_on])
        forest = RandomForestClassifier(cfg.trees, min_samples_leaf=5, n_jobs=-1, random_state=seed).fit(x, y)
        done += 1
        yield done, total, "fit", None
        for n in held_out:
            f = pixel_features(store.image(n), cfg.feature_scale)
            p = forest.predict_proba(f.reshape(-1, f.shape[-1]))
            p = p[:, list(forest.classes_).index(True)] if True in forest.classes_ else np.zeros(len(p))
            probs[n] = resize(p.reshape(f.shape[:2]).astype(np.float32), store.shape(n), order=1)
            if n in extra:
                done += 1
    yield done, total, "done", probs


def mixed_fraction(store: ProjectStore, name: str, size: int) -> np.ndarray:
    """Share of the patches covering each pixel whose label has both classes, or none (unlabelled): only there can
    Eq. 2 err."""
    corners, labels = store.read(name, "patch_corners"), store.read(name, "patch_labels")
    mix = np.zeros(store.shape(name), np.float32)
    cnt = np.zeros(store.shape(name), np.float32)
    for (y, x), lab in zip(corners, labels):
        mix[y:y + size, x:x + size] += float(lab[0] == lab[1])
        cnt[y:y + size, x:x + size] += 1
    return mix / np.maximum(cnt, 1)


def signals(store: ProjectStore, name: str, labels: np.ndarray, oof: np.ndarray, pcfg: PipelineConfig) -> np.ndarray:
    """The per-pixel evidence (len(FEATURES), H, W), each oriented towards the current label."""
    signals_ready(store, name)
    gland = labels == 1
    cam = store.read(name, "cam")
    margin = cam[1] + pcfg.cam.gland_bias - cam[0]
    cam_agree = np.where(gland, margin, -margin)
    prob = store.read(name, "prob")
    seg_agree = np.where(gland, prob, 1 - prob)
    oof_agree = np.where(gland, oof, 1 - oof)
    dist = ndi.distance_transform_edt(gland) + ndi.distance_transform_edt(~gland)
    return np.stack([cam_agree, oof_agree, seg_agree, np.log1p(dist), mixed_fraction(store, name, pcfg.patches.size),
                     ndi.gaussian_filter(cam_agree, SMOOTH_FEATURE_SIGMA),
                     ndi.gaussian_filter(oof_agree, SMOOTH_FEATURE_SIGMA), gland.astype(np.float32)]).astype(np.float32)


def signals_ready(store: ProjectStore, name: str) -> None:
    for key in ("cam", "prob", "patch_labels"):
        if not store.has(name, key):
            raise OEEMError(f"{store.path}: image {name!r} has no {key!r}; label errors are ranked from the CAMs "
                            f"and a prediction: run `oeem cams` and `oeem predict {store.path}` first")
