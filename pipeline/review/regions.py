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
probability over it) and suggests the label opposite to the one most of it has. Without validation masks, the
review re-orders them by the patch tags and by each accept / skip (:mod:`pipeline.review.online`)."""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage as ndi

from pipeline.config import PipelineConfig, RankConfig, to_dict
from pipeline.errors import OEEMError
from pipeline.progress import Job, Progress
from pipeline.review.calibration import DEFAULT_CALIBRATION, calibrator, error_probability, fit_calibration
from pipeline.review.evidence import out_of_fold_probs, signals, signals_ready
from pipeline.review.online import REGION_FEATURES, add_region_features
from pipeline.store import ProjectStore

STAGE = "regions"


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


def region_image(key: str) -> str:
    """The image a region key (``IMAGE:ID``, :attr:`LabelRegion.key`) names."""
    return key.rsplit(":", 1)[0]


def label_fingerprint(store: ProjectStore, name: str) -> str:
    """Changes whenever the image's labels change: the self-training round and the correction version."""
    return f"{store.pseudo_round}:{store.correction_version(name) or 0}"


def label_trust(store: ProjectStore, name: str, strength: float, source: str) -> np.ndarray:
    """1 - ``strength`` * P(label wrong) per pixel of the labels a ``source`` run trains on: the weight that
    ``segmentation.error_prob_weight`` gives each pseudo-label. Refused when the ranking scored other labels."""
    ranking = load_ranking(store)
    if ranking is None or not store.has(name, "error_prob"):
        raise OEEMError(f"{store.path}: segmentation.error_prob_weight needs the label review's P(wrong) of every "
                        f"training image; run `oeem regions {store.path}` first, or set it to 0")
    if ranking.get("labels", {}).get(name) != label_fingerprint(store, name):
        raise OEEMError(f"{store.path}: the labels of {name!r} changed since the label review ranked them "
                        f"(self-training or corrections); run `oeem regions {store.path} --redo`, or set "
                        "segmentation.error_prob_weight to 0")
    if source == "pseudo" and store.correction_version(name) is not None:
        raise OEEMError(f"{store.path}: the label review scored the corrected labels of {name!r}, not its "
                        "pseudo-mask; train on the corrected labels (--labels corrected) or set "
                        "segmentation.error_prob_weight to 0")
    return 1.0 - strength * np.clip(store.read(name, "error_prob").astype(np.float32), 0.0, 1.0)


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
    # untagged images that a self-training round labelled (selftrain.untagged_images) have no CAM or patch labels
    # to weigh their labels against: the ranking leaves them out and says so, rather than refusing the project
    left_out = [n for n in names if not (store.has(n, "cam") and store.has(n, "patch_labels"))]
    if len(left_out) < len(names):
        names = [n for n in names if n not in left_out]
    else:
        left_out = []  # no image has its CAM yet: signals_ready below says what to run
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
               "config": to_dict(cfg), "calibration": calibration, "labels": {}, "regions": [],
               "left_out": left_out}
    for k, n in enumerate(names):
        store.write(n, "oof_prob", probs[n].astype(np.float32))
        ranking["regions"] += rank_image(store, n, calibration, pcfg, ranking)
        yield Progress(STAGE, k + 1, len(names), message=f"regions of {n}")
    sort_regions(ranking)
    ranking["seconds"] = time.perf_counter() - t0
    store.save_run(STAGE, ranking)
    return ranking


def rank_image(store: ProjectStore, name: str, calibration: dict, pcfg: PipelineConfig, ranking: dict) -> list:
    labels, verified = store.labels(name)
    predict = calibrator(store, calibration, pcfg)
    sig = signals(store, name, labels, store.read(name, "oof_prob"), pcfg)
    p = error_probability(sig, predict, verified)
    ids, regions = regions_of(name, p, labels, pcfg.ranking)
    store.write(name, "error_prob", p)
    store.write(name, "regions", ids)
    ranking["labels"][name] = label_fingerprint(store, name)
    rows = [r.as_dict() for r in regions]
    add_region_features(store, name, rows, sig, p, ids, labels, pcfg)  # what the review learns from
    ranking["region_features"] = list(REGION_FEATURES)
    return rows


def sort_regions(ranking: dict) -> None:
    ranking["regions"].sort(key=lambda r: -r["expected_wrong"])


def load_ranking(store: ProjectStore) -> dict | None:
    return store.load_run(STAGE)


def ranked_regions(store: ProjectStore, top: int | None = None, image: str | None = None) -> list[LabelRegion]:
    ranking = load_ranking(store) or {"regions": []}
    rows = [r for r in ranking["regions"] if image is None or r["image"] == image]
    rows = rows[:top] if top else rows
    return [as_region(r) for r in rows]


def as_region(row: dict) -> LabelRegion:
    """A ranking's row as a region (its other keys - the key, the review's features - left out)."""
    return LabelRegion(**{f.name: (tuple(row[f.name]) if f.name in ("bbox", "centroid") else row[f.name])
                          for f in fields(LabelRegion)})


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
