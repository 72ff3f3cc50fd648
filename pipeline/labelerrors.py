"""Where the pseudo-mask is probably wrong, ranked by how many wrong pixels one stroke would fix.

A model trained on the pseudo-masks reproduces them where it can and fails where it cannot, so its disagreement
with them is mostly its own error. The evidence here is *out of sample* or independent of the pixel labels:

- an out-of-fold pixel classifier (a random forest on scikit-image's multi-scale intensity / edge / texture
  features): each training image's gland probability comes from a forest that never saw that image's labels;
- the stage-1 CAM margin (the classifier saw patch labels only): near-ties are where Eq. 2 had to guess;
- where the patch labels leave room for error at all: a pixel covered only by patches with one class cannot be
  wrong (Eq. 2 forces it), one covered by mixed patches can;
- the distance to the pseudo-mask's boundary, and the segmentation's probability.

A small gradient-boosted model (or a logistic regression) turns them into a per-pixel probability that the
label is wrong. It is fitted on the validation split - whose masks exist only to choose settings - when the
project has one; else a logistic regression with the coefficients fitted on GlaS's validation split is used, and
the record says so. (On GlaS's validation split, cross-validated by image, boosting found more wrong labels in
its top 3 % of pixels than the logistic regression: 61.5 % vs 53.2 %.) Regions are connected areas where the
smoothed probability exceeds a threshold; each is ranked by its *expected wrong pixels* (the sum of the
probability over it) and suggests the label opposite to the one most of it has.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from pipeline.config import PipelineConfig, RankConfig, to_dict
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.store import ProjectStore, atomic_write_json

STAGE = "regions"
REVIEW = "review"
FEATURES = ("cam_margin", "oof_agree", "seg_agree", "log_boundary_distance", "mixed_patches",
            "cam_margin_smooth", "oof_agree_smooth", "label")
# Fitted by `benchmarks/annotation_gain.py calibrate` on GlaS's validation split (10 training images held out,
# cpu preset); used when a project has no validation images with masks to fit its own.
DEFAULT_CALIBRATION = {"kind": "logistic", "source": "GlaS validation split (default; this project has none)",
                       "coef": [-0.0221, -1.1244, 1.0655, -0.9325, 2.4290, -0.0787, -3.2043, -0.4033],
                       "intercept": 0.0}
_FITTED: dict[str, Any] = {}  # boosting calibrators refitted from the validation images, per ranking
SMOOTH_FEATURE_SIGMA = 8.0


@dataclass
class LabelRegion:
    image: str
    id: int  # within its image: the value of the image's ``regions`` map
    area: int
    expected_wrong: float  # sum over the region of P(label wrong)
    suggested_label: int  # 1 = gland, 0 = non-gland: what accepting paints
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1
    centroid: tuple[float, float]

    @property
    def key(self) -> str:
        return f"{self.image}:{self.id}"

    def as_dict(self) -> dict:
        return {**asdict(self), "key": self.key}


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


def current_labels(store: ProjectStore, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels training uses now (corrections where painted) and the pathologist-verified pixels."""
    state = store.correction(name)
    if state is not None:
        return state[0], state[1].astype(bool)
    return store.read(name, "pseudo"), np.zeros(store.shape(name), bool)


def label_fingerprint(store: ProjectStore, name: str) -> str:
    """Changes whenever the image's labels change: the self-training round and the correction version."""
    return f"{store.root.attrs.get('pseudo_round', 0)}:{store.correction_version(name) or 0}"


def label_trust(store: ProjectStore, name: str, strength: float, source: str) -> np.ndarray:
    """1 - ``strength`` * P(label wrong) per pixel of the labels a ``source`` run trains on: the weight that
    ``segmentation.error_prob_weight`` gives each pseudo-label. Refused when the ranking scored other labels."""
    ranking = load_ranking(store)
    if ranking is None or not store.has(name, "error_prob"):
        raise OEEMError(f"{store.path}: segmentation.error_prob_weight needs the label review's P(wrong) of every "
                        f"training image; run `oeem regions {store.path}` first, or set it to 0")
    if ranking.get("labels", {}).get(name) != label_fingerprint(store, name):
        raise OEEMError(f"{store.path}: the labels of {name!r} changed since the label review ranked them "
                        f"(self-training or corrections); run `oeem regions {store.path} --refresh`, or set "
                        "segmentation.error_prob_weight to 0")
    if source == "pseudo" and store.correction_version(name) is not None:
        raise OEEMError(f"{store.path}: the label review scored the corrected labels of {name!r}, not its "
                        "pseudo-mask; train on the corrected labels (--labels corrected) or set "
                        "segmentation.error_prob_weight to 0")
    return 1.0 - strength * np.clip(store.read(name, "error_prob").astype(np.float32), 0.0, 1.0)


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
        lab = _labels_at(current_labels(store, n)[0], f.shape[:2]).ravel()
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
    """Share of the patches covering each pixel whose label has both classes (only there can Eq. 2 err)."""
    corners, labels = store.read(name, "patch_corners"), store.read(name, "patch_labels")
    mix = np.zeros(store.shape(name), np.float32)
    cnt = np.zeros(store.shape(name), np.float32)
    for (y, x), lab in zip(corners, labels):
        mix[y:y + size, x:x + size] += float(lab[0] and lab[1])
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


def error_probability(sig: np.ndarray, predict, verified: np.ndarray | None = None) -> np.ndarray:
    """P(label wrong) per pixel from the evidence (``predict``: rows of FEATURES → probabilities)."""
    p = predict(sig.reshape(len(FEATURES), -1).T).reshape(sig.shape[1:]).astype(np.float32)
    if verified is not None:
        p[verified] = 0  # a pathologist's pixel is not doubted
    return p


def _validation_rows(store: ProjectStore, names: list[str], pcfg: PipelineConfig, seed: int, per_image: int):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for n in names:
        labels, _ = current_labels(store, n)
        sig = signals(store, n, labels, store.read(n, "oof_prob"), pcfg).reshape(len(FEATURES), -1).T
        wrong = (labels != store.mask(n)).ravel()
        idx = rng.choice(wrong.size, min(per_image, wrong.size), replace=False)
        xs.append(sig[idx])
        ys.append(wrong[idx])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.all() or not y.any():
        raise OEEMError("the validation images' pseudo-masks are all right or all wrong; cannot calibrate - "
                        "set ranking.calibrator=logistic with no validation split, or add validation images")
    return x, y


def fit_calibration(store: ProjectStore, names: list[str], pcfg: PipelineConfig, seed: int = 0,
                    per_image: int = 20_000) -> dict:
    """"Pseudo-label wrong" (pseudo != mask) against the evidence, on validation images (their ``oof_prob``)."""
    from sklearn.linear_model import LogisticRegression

    calibration = {"kind": pcfg.ranking.calibrator, "fit_on": list(names), "seed": seed, "per_image": per_image,
                   "source": f"this project's validation split ({len(names)} images)", "features": list(FEATURES)}
    x, y = _validation_rows(store, names, pcfg, seed, per_image)
    if calibration["kind"] == "logistic":
        model = LogisticRegression(max_iter=1000).fit(x, y)
        calibration.update(coef=model.coef_[0].round(5).tolist(), intercept=float(model.intercept_[0]))
    else:
        calibration["wrong_rate"] = float(y.mean())
    return calibration


def calibrator(store: ProjectStore, calibration: dict, pcfg: PipelineConfig):
    """The function evidence rows → P(label wrong) that a ranking was made with. A boosting model is not saved
    (no pickles in a project: loading one could run code); it is refitted, deterministically, from the same
    validation images, and kept for the session."""
    if calibration["kind"] == "logistic":
        coef = np.asarray(calibration["coef"], np.float32)
        return lambda rows: 1 / (1 + np.exp(-(rows @ coef + calibration["intercept"])))
    key = f"{store.path.resolve()}|{calibration['fit_on']}|{calibration['seed']}"
    if key not in _FITTED:
        from sklearn.ensemble import HistGradientBoostingClassifier

        x, y = _validation_rows(store, calibration["fit_on"], pcfg, calibration["seed"], calibration["per_image"])
        model = HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15, random_state=calibration["seed"])
        _FITTED[key] = model.fit(x, y)
    model = _FITTED[key]
    return lambda rows: model.predict_proba(rows)[:, 1]


# ---------------------------------------------------------------------------- regions
def regions_of(name: str, p_wrong: np.ndarray, labels: np.ndarray, cfg: RankConfig
               ) -> tuple[np.ndarray, list[LabelRegion]]:
    """The image's id map (0 = none; ids by expected wrong pixels, largest first) and its regions."""
    smooth = ndi.gaussian_filter(p_wrong, cfg.smooth_sigma) if cfg.smooth_sigma > 0 else p_wrong
    lab, n = ndi.label(smooth > cfg.threshold)
    found = []
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        inside = lab[sl] == k
        area = int(inside.sum())
        if area < cfg.min_area:
            continue
        expected = float(p_wrong[sl][inside].sum())
        majority = int(labels[sl][inside].mean() >= 0.5)
        cy, cx = ndi.center_of_mass(inside)
        found.append((expected, k, area, 1 - majority, (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                      (float(cy + sl[0].start), float(cx + sl[1].start))))
    found.sort(key=lambda r: -r[0])
    ids = np.zeros(lab.shape, np.int32)
    regions = []
    for new_id, (expected, k, area, suggested, bbox, centroid) in enumerate(found, start=1):
        ids[lab == k] = new_id
        regions.append(LabelRegion(name, new_id, area, round(expected, 1), suggested, bbox, centroid))
    return ids, regions


def rank_label_errors(store: ProjectStore, pcfg: PipelineConfig, split: str = "train",
                      calibrate: bool = True) -> Job[dict]:
    """Evidence, calibration and regions for every image of ``split``; writes ``oof_prob``, ``error_prob`` and
    ``regions`` per image and the ranking (``runs/regions.json``). A new ranking starts a new review."""
    cfg = pcfg.ranking
    t0 = time.perf_counter()
    names = [n for n in store.names(split) if store.has(n, "pseudo")]
    if not names:
        raise OEEMError(f"{store.path}: no {split} image has a pseudo-mask; run `oeem cams {store.path}` first")
    if len(names) < 2:
        raise OEEMError(f"{store.path}: ranking needs at least 2 {split} images (out-of-fold evidence)")
    for n in names:
        signals_ready(store, n)
    val = [n for n in store.names("val") if all(store.has(n, k) for k in ("pseudo", "mask", "cam", "prob",
                                                                          "patch_labels"))] if calibrate else []
    probs: dict[str, np.ndarray] = {}
    for done, total, what, result in out_of_fold_probs(store, names, val, cfg, pcfg.segmentation.seed):
        yield Progress(STAGE, done, total, message=f"out-of-fold evidence ({what})")
        if result is not None:
            probs = result
    for n in val:
        store.write(n, "oof_prob", probs[n].astype(np.float32))
    calibration = fit_calibration(store, val, pcfg, pcfg.segmentation.seed) if val else dict(DEFAULT_CALIBRATION)
    ranking = {"ranking_id": uuid.uuid4().hex, "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "split": split,
               "config": to_dict(cfg), "calibration": calibration, "labels": {}, "regions": []}
    for k, n in enumerate(names):
        store.write(n, "oof_prob", probs[n].astype(np.float32))
        ranking["regions"] += _rank_image(store, n, calibration, pcfg, ranking)
        yield Progress(STAGE, k + 1, len(names), message=f"regions of {n}")
    _sort(ranking)
    ranking["seconds"] = time.perf_counter() - t0
    store.save_run(STAGE, ranking)
    return ranking


def signals_ready(store: ProjectStore, name: str) -> None:
    for key in ("cam", "prob", "patch_labels"):
        if not store.has(name, key):
            raise OEEMError(f"{store.path}: image {name!r} has no {key!r}; label errors are ranked from the CAMs "
                            f"and a prediction: run `oeem cams` and `oeem predict {store.path}` first")


def _rank_image(store: ProjectStore, name: str, calibration: dict, pcfg: PipelineConfig, ranking: dict) -> list:
    labels, verified = current_labels(store, name)
    predict = calibrator(store, calibration, pcfg)
    p = error_probability(signals(store, name, labels, store.read(name, "oof_prob"), pcfg), predict, verified)
    ids, regions = regions_of(name, p, labels, pcfg.ranking)
    store.write(name, "error_prob", p)
    store.write(name, "regions", ids)
    ranking["labels"][name] = label_fingerprint(store, name)
    return [r.as_dict() for r in regions]


def _sort(ranking: dict) -> None:
    ranking["regions"].sort(key=lambda r: -r["expected_wrong"])


def rerank_image(store: ProjectStore, name: str, pcfg: PipelineConfig) -> dict:
    """Cheap update after the labels of one image changed: no forest is trained again, the stored out-of-fold
    evidence is reused with the current labels (verified pixels no longer doubted). Keeps the review of the
    other images; this image's regions are new, so their review states go."""
    ranking = load_ranking(store)
    if ranking is None:
        raise OEEMError(f"{store.path}: no ranking yet; run `oeem regions {store.path}` first")
    ranking["regions"] = [r for r in ranking["regions"] if r["image"] != name]
    ranking["regions"] += _rank_image(store, name, ranking["calibration"], pcfg, ranking)
    _sort(ranking)
    store.save_run(STAGE, ranking)
    review = _load_review(store, ranking)
    review["state"] = {k: v for k, v in review["state"].items() if not k.startswith(f"{name}:")}
    review["actions"] = [a for a in review["actions"] if not a["key"].startswith(f"{name}:")]
    _save_review(store, review)
    return ranking


def load_ranking(store: ProjectStore) -> dict | None:
    return store.load_run(STAGE)


def ranked_regions(store: ProjectStore, top: int | None = None, image: str | None = None) -> list[LabelRegion]:
    ranking = load_ranking(store) or {"regions": []}
    rows = [r for r in ranking["regions"] if image is None or r["image"] == image]
    rows = rows[:top] if top else rows
    return [LabelRegion(**{k: (tuple(v) if k in ("bbox", "centroid") else v) for k, v in r.items() if k != "key"})
            for r in rows]


# ---------------------------------------------------------------------------- review
def _load_review(store: ProjectStore, ranking: dict | None) -> dict:
    fresh = {"ranking_id": ranking and ranking["ranking_id"], "state": {}, "actions": [], "notice": ""}
    review = store.load_run(REVIEW)
    if review is None or ranking is None:
        return fresh
    if review.get("ranking_id") != ranking["ranking_id"]:
        fresh["notice"] = ("the saved review belongs to an earlier ranking and was set aside; this ranking's "
                           "review starts afresh")
        return fresh
    review.setdefault("actions", [])
    review["notice"] = ""
    return review


def _save_review(store: ProjectStore, review: dict) -> None:
    atomic_write_json(store.path / "runs" / f"{REVIEW}.json", {k: v for k, v in review.items() if k != "notice"})


def review_state(store: ProjectStore) -> dict:
    """{region key: "accepted" | "skipped"}, counts and a notice when a saved review did not fit the ranking."""
    ranking = load_ranking(store)
    review = _load_review(store, ranking)
    total = len(ranking["regions"]) if ranking else 0
    states = list(review["state"].values())
    return {"state": review["state"], "total": total, "reviewed": len(states),
            "accepted": states.count("accepted"), "skipped": states.count("skipped"), "notice": review["notice"]}


def accept_region(store: ProjectStore, key: str, pcfg: PipelineConfig) -> dict[str, Any]:
    """Fill the region with its suggested label as a pathologist-verified (undoable) correction.

    If the image's labels changed since the ranking (a stroke painted by hand), nothing is filled: the image
    is re-ranked and the result says so, because the region may no longer be where the error is."""
    ranking = load_ranking(store)
    region = _find(ranking, key, store)
    name = region["image"]
    if ranking["labels"].get(name) != label_fingerprint(store, name):
        rerank_image(store, name, pcfg)
        return {"accepted": False, "reranked": True,
                "notice": f"{name}: its labels changed since the ranking; re-ranked it - look at the new regions"}
    ids = store.read(name, "regions")
    pixels = ids == region["id"]
    labels, _ = current_labels(store, name)
    labels = labels.copy()
    changed = int((labels[pixels] != region["suggested_label"]).sum())
    labels[pixels] = region["suggested_label"]
    store.save_correction(name, labels, painted=pixels)
    ranking["labels"][name] = label_fingerprint(store, name)  # our own change: the other regions stay valid
    store.save_run(STAGE, ranking)
    _record(store, ranking, key, "accepted", store.correction_version(name))
    return {"accepted": True, "reranked": False, "pixels": int(pixels.sum()), "changed": changed}


def skip_region(store: ProjectStore, key: str) -> None:
    ranking = load_ranking(store)
    _find(ranking, key, store)
    _record(store, ranking, key, "skipped", None)


def _find(ranking: dict | None, key: str, store: ProjectStore) -> dict:
    if ranking is None:
        raise OEEMError(f"{store.path}: no ranking yet; run `oeem regions {store.path}` first")
    for r in ranking["regions"]:
        if r["key"] == key:
            return r
    raise OEEMError(f"{store.path}: no region {key!r} in the current ranking")


def _record(store: ProjectStore, ranking: dict, key: str, status: str, version: int | None) -> None:
    review = _load_review(store, ranking)
    review["state"][key] = status
    review["actions"].append({"key": key, "status": status, "correction_version": version,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    _save_review(store, review)


def undo_review(store: ProjectStore) -> dict | None:
    """Take back the last accept (its correction is undone) or skip. None when there is nothing to undo."""
    ranking = load_ranking(store)
    review = _load_review(store, ranking)
    if not review["actions"]:
        return None
    last = review["actions"][-1]
    name = last["key"].split(":")[0]
    if last["status"] == "accepted":
        if store.correction_version(name) != last["correction_version"]:
            raise OEEMError(f"{name}: painted since that region was accepted; undo the strokes first "
                            "(Undo last correction)")
        store.undo_correction(name)
        ranking["labels"][name] = label_fingerprint(store, name)
        store.save_run(STAGE, ranking)
    review["actions"].pop()
    review["state"].pop(last["key"], None)
    _save_review(store, review)
    return last


def write_region_files(store: ProjectStore, regions: list[LabelRegion], folder: str) -> int:
    """``NAME_regions.png`` (0/255, the listed regions' pixels) per image, and ``regions.json``; all or nothing."""
    import io
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from PIL import Image

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".oeem-regions-"))
    try:
        by_image: dict[str, list] = {}
        for r in regions:
            by_image.setdefault(r.image, []).append(r.id)
        for name, ids in by_image.items():
            mask = np.isin(store.read(name, "regions"), ids).astype(np.uint8) * 255
            buf = io.BytesIO()
            Image.fromarray(mask).save(buf, format="PNG")
            (staging / f"{name}_regions.png").write_bytes(buf.getvalue())
        (staging / "regions.json").write_text(json.dumps([r.as_dict() for r in regions], indent=2))
        for p in staging.iterdir():
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(by_image)
