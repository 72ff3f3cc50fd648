"""The pathologist's side of the label review: accept a region (its pixels become a correction), skip it,
undo the last decision; a ranking follows the labels it was made from.
"""
from __future__ import annotations

import time
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import OEEMError
from pipeline.review.online import learns, review_order
from pipeline.review.regions import (
    STAGE,
    LabelRegion,
    as_region,
    label_fingerprint,
    load_ranking,
    rank_image,
    region_image,
    sort_regions,
)
from pipeline.store import ProjectStore

REVIEW = "review"


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
    store.save_run(REVIEW, {k: v for k, v in review.items() if k != "notice"})


def review_state(store: ProjectStore) -> dict:
    """{region key: "accepted" | "skipped"}, counts and a notice when a saved review did not fit the ranking."""
    ranking = load_ranking(store)
    review = _load_review(store, ranking)
    total = len(ranking["regions"]) if ranking else 0
    states = list(review["state"].values())
    return {"state": review["state"], "total": total, "reviewed": len(states),
            "accepted": states.count("accepted"), "skipped": states.count("skipped"), "notice": review["notice"]}


def ordered_regions(store: ProjectStore, top: int | None = None, image: str | None = None) -> list[LabelRegion]:
    """The regions in the order the review shows them: the ranking's, or - when it learns from the review
    (``ranking.learn_from_review``) - re-ordered by the patch tags and the decisions so far, each decided region
    where it was when decided. ``top`` / ``image`` as :func:`pipeline.review.regions.ranked_regions`."""
    ranking = load_ranking(store)
    if ranking is None:
        return []
    rows = ranking["regions"]
    if learns(ranking):
        rows = review_order(rows, _load_review(store, ranking)["actions"])
    rows = [r for r in rows if image is None or r["image"] == image]
    return [as_region(r) for r in (rows[:top] if top else rows)]


def rerank_image(store: ProjectStore, name: str, pcfg: PipelineConfig) -> dict:
    """Cheap update after the labels of one image changed: no forest is trained again, the stored out-of-fold
    evidence is reused with the current labels (verified pixels no longer doubted). Keeps the review of the
    other images; this image's regions are new, so their review states go."""
    ranking = load_ranking(store)
    if ranking is None:
        raise OEEMError(f"{store.path}: no ranking yet; run `oeem regions {store.path}` first")
    ranking["regions"] = [r for r in ranking["regions"] if r["image"] != name]
    ranking["regions"] += rank_image(store, name, ranking["calibration"], pcfg, ranking)
    sort_regions(ranking)
    store.save_run(STAGE, ranking)
    review = _load_review(store, ranking)
    review["state"] = {k: v for k, v in review["state"].items() if not k.startswith(f"{name}:")}
    review["actions"] = [a for a in review["actions"] if not a["key"].startswith(f"{name}:")]
    _save_review(store, review)
    return ranking


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
    labels, _ = store.labels(name)
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


def next_unreviewed(store: ProjectStore, per_image: int) -> LabelRegion | None:
    """The region the review shows next (*Next*, ``Shift-N``): the best in its order not yet accepted or skipped,
    on any image, among the first ``per_image`` regions each image lists; None when every one is reviewed."""
    done = review_state(store)["state"]
    listed: dict[str, int] = {}  # the place of each region in its image's list
    for r in ordered_regions(store):
        listed[r.image] = listed.get(r.image, 0) + 1
        if r.key not in done and listed[r.image] <= per_image:
            return r
    return None


def undo_review(store: ProjectStore) -> dict | None:
    """Take back the last accept (its correction is undone) or skip. None when there is nothing to undo."""
    ranking = load_ranking(store)
    review = _load_review(store, ranking)
    if not review["actions"]:
        return None
    last = review["actions"][-1]
    name = region_image(last["key"])
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
