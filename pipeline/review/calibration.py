"""From evidence to a per-pixel probability that the label is wrong: a small model fitted on the
validation split's masks, or coefficients fitted on GlaS when the project has none.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.review.evidence import FEATURES, signals
from pipeline.store import ProjectStore

# Fitted by `python benchmarks/review_heldout.py benchmarks/results/end_to_end-cpu.oeem.zarr` (logistic, as
# fit_calibration; 20,000 pixels per image, seed 0) on half A of the cpu preset's 75 GlaS training images (train_1,
# train_3, ... in natural order) and judged on the other half only (benchmarks/results/review_heldout.json); used
# when a project has no validation images with masks to fit its own.
DEFAULT_CALIBRATION = {"kind": "logistic", "source": "GlaS, half the cpu preset's training images (default; "
                                                     "this project has no validation masks)",
                       "coef": [-0.0232, 0.4385, -2.9572, -0.4096, 4.4717, -0.0272, -3.5105, 1.0279],
                       "intercept": -0.8538}


_FITTED: dict[str, Any] = {}  # boosting calibrators refitted from the validation images, per ranking


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
        labels, _ = store.labels(n)
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
