"""The label review without masks: the pathologist's patch tags and each accept / skip re-order the regions not
yet reviewed.

A project without a validation split calibrates P(label wrong) with coefficients fitted on another project (GlaS),
which can be far off on this one (on GlaS train with the default calibration a third of the top 20 regions were
really wrong, against three quarters when calibrated on its own validation masks). Two things a pathologist gives
correct it without any mask:

- **the patch tags**: a patch tagged *no gland* holds (almost) no gland and one tagged *gland only* (almost) no
  stroma, so a region that would paint a class its patches rule out is implausible, and one whose *current* labels
  are ruled out by them is very probably wrong; patches tagged *both* (or untagged) leave room either way. This
  shifts each region's prior log-odds by ``TAG_LOGIT`` x (share of its pixels whose label the tags rule out -
  share whose suggested label they rule out).
- **the decisions**: an accept says the region was wrong, a skip that it was right. A logistic regression on a few
  region features (the mean of each evidence feature, log area, share on the image border, the prior's log-odds,
  the tag shares) with the prior log-odds as an offset and an L2 pull of ``PRIOR_STRENGTH`` towards zero is
  refitted after each decision; with no decision it is the prior. Regions not yet reviewed are ordered by the
  refitted probability that they are wrong (the table's expected wrong pixels are area x that probability);
  reviewed ones keep the place they had when decided. (Ordering by expected wrong pixels instead, as the ranking
  does, finds fewer wrong regions per decision but larger ones: ``ORDER_BY``.)

The order is a function of the ranking and the list of decisions, replayed deterministically, so undoing a
decision restores the order before it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from pipeline.config import PipelineConfig
from pipeline.io.patch_labels import GLAND, NON_GLAND, project_tags, vectors_to_tags
from pipeline.review.evidence import FEATURES, signals
from pipeline.stages.patches import patch_grid
from pipeline.store import ProjectStore

REGION_FEATURES = (*(f"mean_{f}" for f in FEATURES), "log_area", "border_share", "prior_logit",
                   "tags_against_suggestion", "tags_against_label")
# a patch tagged with one class holds at most 5 % of the other (the rule GlaS's patch labels follow): log-odds 19:1.
# The prior depends on that rule: tags made by a 1 % rule mislead it (benchmarks/review_heldout.py --tag-rules)
TAG_LOGIT = float(np.log(0.95 / 0.05))
BORDER_PX = 16  # a pixel this close to the image's edge is on its border (the CAM and the prediction see less there)
# L2 pull of the per-project correction towards the prior (features standardised), and what the undecided regions
# are ordered by ("probability": most probably wrong first; "pixels": most expected wrong pixels first, as the
# ranking): chosen by benchmarks/review_heldout.py on half A of the cpu preset's GlaS training images, among
# 0.3-30, both orders, and the review with or without the tags and the decisions; judged on half B only
# (benchmarks/results/review_heldout.json)
PRIOR_STRENGTH = 30.0
ORDER_BY = "probability"
P_CLIP = 0.01  # the prior's mean P(wrong) is kept within [P_CLIP, 1 - P_CLIP] so its log-odds stay finite


# ---------------------------------------------------------------------------- region features
def tag_bans(store: ProjectStore, name: str, pcfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """(gland ruled out, non-gland ruled out) per pixel: covered by a patch tagged *no gland* / *gland only*. The
    pathologist's current tags where the image has any, else the patch labels its pseudo-mask was made from."""
    size, stride = pcfg.patches.size, pcfg.patches.stride
    shape = store.shape(name)
    tags = project_tags(store, name, size, stride)
    if tags is not None:
        corners = patch_grid(shape, size, stride)
    else:
        corners, tags = store.read(name, "patch_corners"), vectors_to_tags(store.read(name, "patch_labels"))
    no_gland, gland_only = np.zeros(shape, bool), np.zeros(shape, bool)
    for (y, x), t in zip(corners, tags):
        if t == NON_GLAND:
            no_gland[y:y + size, x:x + size] = True
        elif t == GLAND:
            gland_only[y:y + size, x:x + size] = True
    return no_gland, gland_only


def add_region_features(store: ProjectStore, name: str, rows: list[dict], sig: np.ndarray, p: np.ndarray,
                        ids: np.ndarray, labels: np.ndarray, pcfg: PipelineConfig) -> None:
    """Each region row of the image gets ``features`` (REGION_FEATURES, in order): computed once, at ranking time,
    from the evidence already at hand, so re-ordering after a decision reads no image."""
    if not rows:
        return
    flat = ids.ravel()
    n = int(flat.max()) + 1

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=values.ravel().astype(np.float64), minlength=n) / np.maximum(area, 1)

    area = np.bincount(flat, minlength=n).astype(np.float64)
    h, w = ids.shape
    yy, xx = np.ogrid[:h, :w]
    edge = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx)) < BORDER_PX
    no_gland, gland_only = tag_bans(store, name, pcfg)
    gland = labels == 1
    per_feature = [mean(s) for s in sig]
    border, mean_p = mean(edge), mean(p)
    gland_banned, non_gland_banned = mean(no_gland), mean(gland_only)
    label_banned = mean((gland & no_gland) | (~gland & gland_only))
    for r in rows:
        k = r["id"]
        q = float(np.clip(mean_p[k], P_CLIP, 1 - P_CLIP))
        against = gland_banned[k] if r["suggested_label"] == 1 else non_gland_banned[k]
        values = [f[k] for f in per_feature] + [np.log(max(area[k], 1)), border[k], np.log(q / (1 - q)), against,
                                                label_banned[k]]
        r["features"] = [round(float(v), 4) for v in values]


def ensure_region_features(store: ProjectStore, ranking: dict, pcfg: PipelineConfig) -> dict:
    """The ranking with region features, computed from the stored evidence for a ranking made before they were
    kept (the current labels stand in for those ranked). Returns it; the project is not written."""
    if has_region_features(ranking):
        return ranking
    for name in ranking["labels"]:
        rows = [r for r in ranking["regions"] if r["image"] == name]
        if not rows:
            continue
        labels, _ = store.labels(name)
        sig = signals(store, name, labels, store.read(name, "oof_prob"), pcfg)
        add_region_features(store, name, rows, sig, store.read(name, "error_prob"), store.read(name, "regions"),
                            labels, pcfg)
    ranking["region_features"] = list(REGION_FEATURES)
    return ranking


def has_region_features(ranking: dict) -> bool:
    return ranking.get("region_features") == list(REGION_FEATURES) and all("features" in r for r in
                                                                           ranking["regions"])


def learns(ranking: dict) -> bool:
    """Whether the review re-orders this ranking (``ranking.learn_from_review`` as it was ranked with; ``auto``:
    when its calibration is the default one, i.e. the project had no validation masks). Rankings made before the
    setting existed keep their order."""
    mode = ranking.get("config", {}).get("learn_from_review", "off")
    if mode == "auto":
        mode = "off" if "fit_on" in ranking.get("calibration", {}) else "on"
    return mode == "on" and has_region_features(ranking)


# ---------------------------------------------------------------------------- the region model
def design(rows: list[dict], use_tags: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardised features (over the ranking's regions), the prior log-odds (with the tags' shift when
    ``use_tags``) and the areas."""
    x = np.asarray([r["features"] for r in rows], np.float64).reshape(len(rows), len(REGION_FEATURES))
    names = list(REGION_FEATURES)
    offset = x[:, names.index("prior_logit")].copy()
    if use_tags:
        offset += TAG_LOGIT * (x[:, names.index("tags_against_label")] - x[:, names.index("tags_against_suggestion")])
    else:
        x = np.delete(x, [names.index("tags_against_suggestion"), names.index("tags_against_label")], axis=1)
    sd = x.std(0)
    z = (x - x.mean(0)) / np.where(sd > 1e-9, sd, 1.0)
    return z, offset, np.asarray([r["area"] for r in rows], np.float64)


def fit(z: np.ndarray, offset: np.ndarray, y: np.ndarray, strength: float,
        start: np.ndarray | None = None) -> np.ndarray:
    """Coefficients (features, then intercept) of logit P(wrong) = offset + z @ w + b, by Newton's method on the
    log-loss plus strength/2 * |(w, b)|^2: strictly convex, so one answer whatever the start."""
    x = np.hstack([z, np.ones((len(z), 1))])
    beta = np.zeros(x.shape[1]) if start is None else start.copy()
    eye = strength * np.eye(x.shape[1])
    for _ in range(100):
        q = expit(offset + x @ beta)
        grad = x.T @ (q - y) + strength * beta
        step = np.linalg.solve(x.T @ (x * (q * (1 - q))[:, None]) + eye, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return beta


@dataclass(frozen=True)
class Replay:
    """Where the review stands after some of its decisions: the order, P(wrong) of each region, the place of each
    decided region, the outcomes learned from and the coefficients."""

    order: np.ndarray
    q: np.ndarray
    place: dict[int, int]
    outcome: dict[int, float]
    beta: np.ndarray | None


# identity of (regions, use_tags, learn, strength) -> (decisions replayed, the state after each prefix, design):
# the plugin asks for the order after every key press, so only new decisions are replayed (undo: a shorter prefix)
_REPLAYS: dict[str, tuple[list[tuple[str, str]], list[Replay], tuple]] = {}
REPLAYS_KEPT = 4


def review_order(rows: list[dict], actions: list[dict], *, use_tags: bool = True, learn: bool = True,
                 strength: float = PRIOR_STRENGTH, by: str = ORDER_BY) -> list[dict]:
    """The ranking's region rows in the order the review shows them after ``actions`` (each ``{"key", "status"}``,
    oldest first), with ``expected_wrong`` re-estimated (area x P(wrong)). Decided regions keep the place they had
    when decided; the others fill the remaining places, most probably wrong first (``by="pixels"``: most expected
    wrong pixels first). A pure function of its arguments, replayed from the first decision (cached): ties keep
    the ranking's order."""
    if not rows:
        return []
    ident = hashlib.sha1(json.dumps([[r["key"], r["area"], r["features"]] for r in rows]).encode()
                         + f"|{use_tags}|{learn}|{strength!r}|{by}".encode()).hexdigest()
    decisions = [(a["key"], a["status"]) for a in actions]
    if ident not in _REPLAYS:
        z, offset, area = design(rows, use_tags)
        weight = area if by == "pixels" else np.ones_like(area)
        q = expit(offset)
        _REPLAYS[ident] = ([], [Replay(np.argsort(-q * weight, kind="stable"), q, {}, {}, None)],
                           (z, offset, area, weight))
    done, states, (z, offset, area, weight) = _REPLAYS.pop(ident)
    same = next((k for k, (a, b) in enumerate(zip(done, decisions)) if a != b), min(len(done), len(decisions)))
    done, states = done[:same], states[:same + 1]
    index = {r["key"]: i for i, r in enumerate(rows)}
    for key, status in decisions[same:]:
        states.append(decide(states[-1], index.get(key), status == "accepted", z, offset, weight, learn, strength))
        done.append((key, status))
    _REPLAYS[ident] = (done, states, (z, offset, area, weight))
    while len(_REPLAYS) > REPLAYS_KEPT:
        _REPLAYS.pop(next(iter(_REPLAYS)))
    now = states[-1]
    out = []
    for i in now.order:
        row = dict(rows[i])
        row["expected_wrong"] = round(float(area[i] * now.q[i]), 1)
        out.append(row)
    return out


def decide(state: Replay, i: int | None, accepted: bool, z: np.ndarray, offset: np.ndarray, weight: np.ndarray,
           learn: bool, strength: float) -> Replay:
    """The state after one more decision on region ``i`` (None: a region no longer ranked, nothing changes)."""
    if i is None:
        return state
    place = state.place if i in state.place else {**state.place, i: int(np.flatnonzero(state.order == i)[0])}
    outcome = {**state.outcome, i: 1.0 if accepted else 0.0}
    q, beta = state.q, state.beta
    if learn:
        seen = np.fromiter(outcome, int)
        beta = fit(z[seen], offset[seen], np.fromiter(outcome.values(), float), strength, beta)
        q = expit(offset + z @ beta[:-1] + beta[-1])
    return Replay(arrange(place, q * weight), q, place, outcome, beta)


def arrange(place: dict[int, int], score: np.ndarray) -> np.ndarray:
    """Indices in review order: each decided one at its place, the rest by ``score``, highest first."""
    order = np.full(len(score), -1)
    order[list(place.values())] = list(place)
    rest = np.argsort(-score, kind="stable")
    order[order < 0] = rest[~np.isin(rest, list(place))]
    return order
