"""The label review without masks: the patch tags and each accept / skip re-order the regions not yet reviewed
(pipeline.review.online); undo restores the order; a ranking calibrated on validation masks keeps its order unless
told otherwise; the simulated review of benchmarks/review_no_masks.py runs on a project."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import plant_errors
from scipy import ndimage as ndi

from pipeline.config import preset
from pipeline.io.patch_labels import GLAND, NON_GLAND
from pipeline.progress import run
from pipeline.review.online import REGION_FEATURES, design, learns, review_order
from pipeline.review.regions import load_ranking, rank_label_errors, ranked_regions
from pipeline.review.state import accept_region, ordered_regions, rerank_image, skip_region, undo_review
from pipeline.stages.patches import patch_grid
from pipeline.store import ProjectStore

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Six synthetic training images (two of them held out as validation) with patch labels from their masks,
    planted pseudo-mask errors, a CAM that agrees with the pseudo-mask and a prediction that half knows the truth;
    nothing trained."""
    from conftest import write_pair

    from pipeline.stages.classify import make_patch_labels
    from pipeline.store.project import create_project

    root = tmp_path_factory.mktemp("online")
    folder = root / "data"
    folder.mkdir()
    for k in range(8):
        write_pair(folder, f"train_{k + 1}", seed=300 + k, size=(224, 280))
    store = create_project(folder, root / "p.oeem.zarr", val_images=2, seed=0)
    cfg = preset("tiny")
    make_patch_labels(store, cfg.patches)
    rng = np.random.default_rng(0)
    for n in store.names("train") + store.names("val"):
        mask = store.mask(n)
        pseudo = plant_errors(mask, rng)
        store.write(n, "pseudo", pseudo)
        margin = ndi.gaussian_filter(pseudo.astype(np.float32), 6) - 0.5
        store.write(n, "cam", np.stack([-margin, margin]).astype(np.float32))
        store.write(n, "prob", ndi.gaussian_filter(mask.astype(np.float32), 4))
    cfg.cam.gland_bias = 0.0
    cfg.ranking.trees, cfg.ranking.threshold, cfg.ranking.min_area = 10, 0.15, 50
    return store, cfg


@pytest.fixture(scope="module")
def no_masks(planted, tmp_path_factory):
    """The project ranked as one without validation masks is (the default calibration): the review learns."""
    src, cfg = planted
    dst = tmp_path_factory.mktemp("no_masks") / "p.oeem.zarr"
    shutil.copytree(src.path, dst)
    store = ProjectStore.open(dst)
    run(rank_label_errors(store, cfg, "train", calibrate=False))
    return store, cfg


@pytest.fixture
def copy(no_masks, tmp_path):
    src, cfg = no_masks
    shutil.copytree(src.path, tmp_path / "p.oeem.zarr")
    return ProjectStore.open(tmp_path / "p.oeem.zarr"), cfg


def keys(store: ProjectStore) -> list[str]:
    return [r.key for r in ordered_regions(store)]


def similarity(store: ProjectStore, key: str) -> dict[str, float]:
    """Cosine similarity of each region's standardised features to those of ``key``."""
    rows = load_ranking(store)["regions"]
    z = design(rows, use_tags=True)[0]
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    me = z[[r["key"] for r in rows].index(key)]
    return {r["key"]: float(z[k] @ me) for k, r in enumerate(rows)}


def test_a_ranking_without_validation_masks_learns_and_keeps_its_region_features(no_masks):
    store, _ = no_masks
    ranking = load_ranking(store)
    assert ranking["config"]["learn_from_review"] == "auto" and "fit_on" not in ranking["calibration"]
    assert learns(ranking) and len(ranking["regions"]) >= 10
    assert ranking["region_features"] == list(REGION_FEATURES)
    assert all(len(r["features"]) == len(REGION_FEATURES) for r in ranking["regions"])
    # the listing of the ranking as made is untouched, and the review's order holds the same regions
    assert sorted(keys(store)) == sorted(r.key for r in ranked_regions(store))
    assert [r.expected_wrong for r in ranked_regions(store)] == sorted((r.expected_wrong for r in
                                                                         ranked_regions(store)), reverse=True)


@pytest.mark.parametrize("decision", ["skip", "accept"])
def test_a_decision_moves_the_regions_that_look_like_it(copy, decision, monkeypatch):
    """A skip says "right": undecided regions with the same feature profile go down, those unlike it up; an accept
    the other way round. The decided region keeps its place; the same decisions give the same order. (The
    direction, at a weak pull (0.3): the shipped PRIOR_STRENGTH of 30 lets one decision on this small project move
    nothing, many decisions move the order.)"""
    import functools

    import pipeline.review.state as review_state_module
    from pipeline.review.online import review_order

    monkeypatch.setattr(review_state_module, "review_order", functools.partial(review_order, strength=0.3))
    store, cfg = copy
    before = keys(store)

    def partners(key):  # the undecided regions most and least like ``key``
        sim = similarity(store, key)
        others = [k for k in before if k != key]
        return sim, max(others, key=lambda k: sim[k]), min(others, key=lambda k: sim[k])

    # the best-ranked region with a region clearly like it and one clearly unlike it
    first = next(k for k in before if (lambda s, a, u: s[a] > 0.5 > -0.3 > s[u])(*partners(k)))
    sim, alike, unlike = partners(first)
    undecided = [k for k in before if k != first]
    if decision == "skip":
        skip_region(store, first)
    else:
        assert accept_region(store, first, cfg)["accepted"]
    after = keys(store)
    assert after.index(first) == before.index(first) and sorted(after) == sorted(before)
    moved = {k: after.index(k) - before.index(k) for k in undecided}  # > 0: further down the list
    if decision == "skip":
        assert moved[alike] > 0 > moved[unlike], moved
    else:
        assert moved[alike] < 0 < moved[unlike], moved
    assert keys(ProjectStore.open(store.path)) == after


def test_undo_restores_the_order_before_the_decision(copy):
    store, cfg = copy
    start = keys(store)
    skip_region(store, start[0])
    one = keys(store)
    second = next(k for k in one if k != start[0])
    assert accept_region(store, second, cfg)["accepted"]
    two = keys(store)
    assert two != one != start
    assert undo_review(store)["key"] == second
    assert keys(store) == one
    assert undo_review(store)["key"] == start[0]
    assert keys(store) == start


def tag_around(store: ProjectStore, key: str, tag: int, cfg) -> None:
    """Tag every patch that overlaps region ``key`` with ``tag``, the others as their patch labels say."""
    from pipeline.io.patch_labels import vectors_to_tags

    name, rid = key.split(":")
    inside = store.read(name, "regions") == int(rid)
    size, stride = cfg.patches.size, cfg.patches.stride
    corners = patch_grid(store.shape(name), size, stride)
    tags = vectors_to_tags(store.read(name, "patch_labels")).copy()
    for k, (y, x) in enumerate(corners):
        if inside[y:y + size, x:x + size].any():
            tags[k] = tag
    store.save_patch_tags(name, tags, size, stride)


@pytest.mark.parametrize("against", ["suggestion", "labels"])
def test_tags_against_the_suggestion_push_a_region_down_against_its_labels_up(copy, against):
    store, cfg = copy
    before = keys(store)
    rows = {r["key"]: r for r in load_ranking(store)["regions"]}
    names = list(REGION_FEATURES)
    # a region halfway down the list that its tags say nothing about yet
    middle = [k for k in before[len(before) // 4: 3 * len(before) // 4]
              if rows[k]["features"][names.index("tags_against_suggestion")] == 0
              and rows[k]["features"][names.index("tags_against_label")] == 0]
    key = middle[0]
    suggested = rows[key]["suggested_label"]
    contradicts = {"suggestion": NON_GLAND if suggested == 1 else GLAND,  # "no gland" where it would paint gland
                   "labels": GLAND if suggested == 1 else NON_GLAND}[against]  # its labels are the other class
    tag_around(store, key, contradicts, cfg)
    rerank_image(store, key.split(":")[0], cfg)
    row = next(r for r in load_ranking(store)["regions"] if r["key"] == key)
    feature = "tags_against_suggestion" if against == "suggestion" else "tags_against_label"
    assert row["features"][names.index(feature)] > 0.5
    after = keys(store)
    if against == "suggestion":
        assert after.index(key) > before.index(key), (before.index(key), after.index(key))
    else:
        assert after.index(key) < before.index(key), (before.index(key), after.index(key))


def test_a_ranking_calibrated_on_validation_masks_keeps_its_order_unless_told(planted, tmp_path):
    src, cfg = planted
    shutil.copytree(src.path, tmp_path / "p.oeem.zarr")
    store = ProjectStore.open(tmp_path / "p.oeem.zarr")
    ranking = run(rank_label_errors(store, cfg, "train"))
    assert "fit_on" in ranking["calibration"] and not learns(ranking)
    static = [r.key for r in ranked_regions(store)]
    assert keys(store) == static
    skip_region(store, static[0])
    skip_region(store, static[1])
    assert keys(store) == static and ordered_regions(store) == ranked_regions(store)
    # the same ranking, had it been made with ranking.learn_from_review=on, re-orders after the same skips
    ranking = load_ranking(store)
    ranking["config"]["learn_from_review"] = "on"
    store.save_run("regions", ranking)
    assert learns(load_ranking(store))
    learned = keys(store)
    actions = [{"key": k, "status": "skipped"} for k in static[:2]]
    assert learned != static and learned == [r["key"] for r in review_order(ranking["regions"], actions)]
    undo_review(store)
    undo_review(store)
    assert keys(store) == [r["key"] for r in review_order(ranking["regions"], [])]


def test_review_order_is_a_pure_function_of_the_decisions():
    rng = np.random.default_rng(1)
    rows = [{"key": f"a:{k}", "area": int(rng.integers(200, 5000)),
             "features": rng.normal(size=len(REGION_FEATURES)).round(3).tolist()} for k in range(30)]
    for r in rows:
        r["features"][list(REGION_FEATURES).index("prior_logit")] = float(rng.normal())
    actions = [{"key": "a:3", "status": "skipped"}, {"key": "a:7", "status": "accepted"},
               {"key": "gone:1", "status": "accepted"}]  # a region no longer ranked is ignored
    one = review_order(rows, actions)
    assert one == review_order([dict(r) for r in rows], [dict(a) for a in actions])
    assert sorted(r["key"] for r in one) == sorted(r["key"] for r in rows)
    # no decision, no tags, no learning: most probably wrong first
    plain = review_order(rows, [], use_tags=False, learn=False)
    q = [1 / (1 + np.exp(-r["features"][list(REGION_FEATURES).index("prior_logit")])) for r in plain]
    assert q == sorted(q, reverse=True)


def test_cli_lists_the_review_order(copy, capsys):
    from pipeline.cli import main

    store, _ = copy
    skip_region(store, keys(store)[0])
    assert main(["regions", str(store.path), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = [line.split()[1:3] for line in lines[1:4]]
    expected = [[r.image, ",".join(map(str, r.bbox))] for r in ordered_regions(store, 3)]
    assert listed == expected and "skipped" in lines[1]


def test_the_simulated_review_runs_on_a_project(copy, tmp_path):
    store, _ = copy
    out = tmp_path / "review.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "review_no_masks.py"), str(store.path),
                           "--decisions", "8", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "regions@10" in done.stdout and "tags+online" in done.stdout
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"static", "tags", "online", "tags+online", "tags+online by pixels"}
    for result in data["results"].values():
        assert result["decisions"] == 8 and len(result["curve"]) == 8 and 0 <= result["curve"][-1] <= 1
