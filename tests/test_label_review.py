"""Ranking wrong pseudo-labels and reviewing them: planted errors are found, review state is kept, the CLI lists
and writes the regions."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import plant_errors
from scipy import ndimage as ndi

from pipeline.cli import main
from pipeline.config import preset
from pipeline.errors import OEEMError
from pipeline.progress import run
from pipeline.review.regions import label_fingerprint, rank_label_errors, ranked_regions
from pipeline.review.state import accept_region, review_state, skip_region, undo_review


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The sample data with masks, patch labels from them, a neutral CAM and prediction, and pseudo-masks with
    planted errors; 3 training images held out as validation (the calibration's)."""
    from pipeline.stages.classify import make_patch_labels
    from pipeline.store.project import create_project

    path = tmp_path_factory.mktemp("planted") / "p.oeem.zarr"
    store = create_project("sample", path, val_images=3, seed=0)
    cfg = preset("tiny")
    make_patch_labels(store, cfg.patches)
    rng = np.random.default_rng(0)
    for n in store.names("train") + store.names("val"):
        mask = store.mask(n)
        pseudo = plant_errors(mask, rng)
        store.write(n, "pseudo", pseudo)
        margin = ndi.gaussian_filter(pseudo.astype(np.float32), 6) - 0.5  # a CAM that agrees with the pseudo-mask
        store.write(n, "cam", np.stack([-margin, margin]).astype(np.float32))
        store.write(n, "prob", np.full(mask.shape, 0.5, np.float32))
    cfg.cam.gland_bias = 0.0
    cfg.ranking.trees = 30
    return store, cfg


@pytest.fixture
def ranked_copy(planted, tmp_path):
    """A private copy of the planted project, ranked (the ranking is made once, on the shared project)."""
    import shutil

    from pipeline.store import ProjectStore

    src, cfg = planted
    if not ranked_regions(src):
        run(rank_label_errors(src, cfg, "train"))
    shutil.copytree(src.path, tmp_path / "p.zarr")
    return ProjectStore.open(tmp_path / "p.zarr"), cfg


def test_planted_label_errors_are_ranked_first(planted):
    store, cfg = planted
    ranking = run(rank_label_errors(store, cfg, "train"))
    assert "validation" in ranking["calibration"]["source"]
    regions = ranked_regions(store, 20)
    assert regions
    expected = [r.expected_wrong for r in ranked_regions(store)]
    assert expected == sorted(expected, reverse=True)
    inside = wrong = 0
    for r in regions:
        pixels = store.read(r.image, "regions") == r.id
        err = store.read(r.image, "pseudo") != store.mask(r.image)
        inside += pixels.sum()
        wrong += (pixels & err).sum()
        # the suggested label is what most of the region truly is
        assert r.suggested_label == int(store.mask(r.image)[pixels].mean() >= 0.5) or (pixels & err).mean() < 0.5
    base = np.mean([np.mean(store.read(n, "pseudo") != store.mask(n)) for n in store.names("train")])
    precision = wrong / inside
    assert precision >= 0.5 and precision >= 3 * base, (precision, base)


def test_accept_skip_undo_and_the_review_survive_a_reopen(ranked_copy):
    from pipeline.store import ProjectStore

    store, cfg = ranked_copy
    first, second = ranked_regions(store, 2)
    before = store.read(first.image, "pseudo")
    result = accept_region(store, first.key, cfg)
    assert result["accepted"] and result["pixels"] == first.area
    corrected, verified = store.correction(first.image)
    pixels = store.read(first.image, "regions") == first.id
    assert (corrected[pixels] == first.suggested_label).all() and verified[pixels].all()
    assert np.array_equal(corrected[~pixels], before[~pixels])
    skip_region(store, second.key)
    reopened = ProjectStore.open(store.path)
    state = review_state(reopened)
    assert state["state"] == {first.key: "accepted", second.key: "skipped"}
    assert (state["reviewed"], state["accepted"], state["skipped"]) == (2, 1, 1)
    assert undo_review(reopened)["key"] == second.key
    assert undo_review(reopened)["key"] == first.key
    assert not reopened.has(first.image, "corrected")
    assert review_state(reopened)["reviewed"] == 0
    assert undo_review(reopened) is None


def test_accepting_after_the_labels_changed_reranks_and_says_so(ranked_copy):
    store, cfg = ranked_copy
    r = ranked_regions(store, 1)[0]
    painted = store.read(r.image, "pseudo").copy()
    painted[:5, :5] = 1 - painted[:5, :5]
    store.save_correction(r.image, painted)  # a stroke by hand
    result = accept_region(store, r.key, cfg)
    assert not result["accepted"] and result["reranked"] and "re-ranked" in result["notice"]
    assert np.array_equal(store.read(r.image, "corrected"), painted)  # nothing filled
    assert load_fp(store, r.image) == label_fingerprint(store, r.image)


def load_fp(store, name):
    return store.load_run("regions")["labels"][name]


def test_a_review_from_another_ranking_is_set_aside_with_a_notice(ranked_copy):
    store, cfg = ranked_copy
    (store.path / "runs" / "review.json").write_text(json.dumps(
        {"ranking_id": "older", "state": {"x:1": "accepted"}, "actions": []}))
    state = review_state(store)
    assert state["reviewed"] == 0 and "earlier ranking" in state["notice"]
    with pytest.raises(OEEMError, match="no region 'nope:3'"):
        skip_region(store, "nope:3")


def test_cli_regions_lists_and_writes(ranked_copy, tmp_path, capsys):
    from PIL import Image

    store, _ = ranked_copy
    out = tmp_path / "out"
    assert main(["regions", str(store.path), "--top", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exp. wrong" in text and "0 of" in text
    listed = json.loads((out / "regions.json").read_text())
    assert len(listed) == 5 and {"image", "bbox", "area", "expected_wrong", "suggested_label"} <= set(listed[0])
    for r in listed:
        png = np.asarray(Image.open(out / f"{r['image']}_regions.png"))
        assert set(np.unique(png)) <= {0, 255}
        y0, x0, y1, x1 = r["bbox"]
        assert png[y0:y1, x0:x1].max() == 255


def test_ranking_before_a_prediction_names_the_command(tmp_path):
    from pipeline.store.project import create_project

    store = create_project("sample", tmp_path / "p.zarr")
    for n in store.names("train"):
        store.write(n, "pseudo", store.mask(n))
    with pytest.raises(OEEMError, match="run `oeem cams` and `oeem predict"):
        run(rank_label_errors(store, preset("tiny"), "train"))


def test_images_a_round_labelled_without_tags_are_left_out_of_the_ranking_and_told(ranked_copy, capsys):
    """`oeem run --preset cpu` on a partly tagged project labels the untagged images in its rounds: they have a
    pseudo-mask but no CAM or patch labels. The ranking ranks the others and names them, never refuses."""
    store, cfg = ranked_copy
    untagged = store.names("train")[:2]
    for n in untagged:
        store.delete(n, "cam")
        store.delete(n, "patch_labels")
    ranking = run(rank_label_errors(store, cfg, "train"))
    assert ranking["left_out"] == untagged
    assert ranking["regions"] and not {r["image"] for r in ranking["regions"]} & set(untagged)
    assert main(["regions", str(store.path), "--redo", "--top", "3"]) == 0
    assert "note: 2 untagged image(s) labelled by the model are not ranked" in capsys.readouterr().err


def test_training_weighs_each_pseudo_label_by_the_reviews_trust(ranked_copy):
    """segmentation.error_prob_weight: every training tile carries 1 - w * P(wrong) of its labels, next to the
    unchanged label and verified flag; a short run trains with it and records how much weight the labels kept."""
    import dataclasses

    import torch

    from pipeline.stages.segment import TRUST_LEVELS, decode, tile_dataset, train_segmenter

    store, cfg = ranked_copy
    seg = dataclasses.replace(cfg.segmentation, tile_size=64, tile_stride=64, working_scale=1.0)
    n = store.names("train")[0]
    pseudo = store.read(n, "pseudo").copy()
    pseudo[:8, :8] = 255  # ignored pixels (no patch label) stay ignored whatever their trust
    store.write(n, "pseudo", pseudo)
    plain = decode(tile_dataset(store, seg)[1].long())
    assert (plain[0][0, :8, :8] == 255).all()
    images, codes, _ = tile_dataset(store, dataclasses.replace(seg, error_prob_weight=0.8))
    target, clean, trust = decode(codes.long())
    assert torch.equal(target, plain[0]) and torch.equal(clean, plain[1]) and (target[0, :8, :8] == 255).all()
    # the tiles' trust is the review's P(wrong), tile by tile as cut_tiles cuts them
    p = store.read(n, "error_prob")[:64, :64]
    ok = target[0].numpy() != 255
    assert np.abs(trust[0].numpy() - (1 - 0.8 * p))[ok].max() <= 0.5 / TRUST_LEVELS + 1e-6
    valid = target != 255
    assert trust[valid].min() >= 0.2 - 1e-6 and trust[valid].max() <= 1 and trust[valid].min() < 0.9
    # the pixels the review doubts most are mostly the planted errors
    wrong = np.concatenate([(store.read(k, "pseudo") != store.mask(k)).ravel() for k in store.names("train")])
    doubt = np.concatenate([store.read(k, "error_prob").ravel() for k in store.names("train")])
    assert doubt[wrong].mean() > 2 * doubt[~wrong].mean()
    run_cfg = dataclasses.replace(seg, error_prob_weight=0.8, iterations=2, checkpoint_every=2, crop_size=64)
    record = run(train_segmenter(store, run_cfg, "cpu", run_name="trust"))
    assert record["iterations_run"] == 2 and record["config"]["error_prob_weight"] == 0.8
    assert 0.2 < record["label_trust_mean"] < 1


def test_weighing_by_the_review_refuses_labels_it_did_not_rank(ranked_copy, tmp_path):
    import dataclasses

    from pipeline.stages.segment import tile_dataset
    from pipeline.store.project import create_project

    store, cfg = ranked_copy
    seg = dataclasses.replace(cfg.segmentation, error_prob_weight=1.0)
    name = store.names("train")[0]
    painted = store.read(name, "pseudo").copy()
    painted[:5, :5] = 1 - painted[:5, :5]
    store.save_correction(name, painted)
    with pytest.raises(OEEMError, match="changed since the label review ranked them.*--redo"):
        tile_dataset(store, dataclasses.replace(seg, label_source="corrected"))
    fresh = create_project("sample", tmp_path / "fresh.zarr")
    for n in fresh.names("train"):
        fresh.write(n, "pseudo", fresh.mask(n))
    with pytest.raises(OEEMError, match="run `oeem regions .*` first, or set it to 0"):
        tile_dataset(fresh, seg)
    assert tile_dataset(fresh, dataclasses.replace(seg, label_source="mask"))[1].max() <= 1  # masks: no doubt
