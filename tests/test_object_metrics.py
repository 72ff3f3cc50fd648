"""GlaS object-level metrics (pipeline.metrics): hand-checked cases, the challenge's empty-image rules, summing over a
test part, an independent per-object computation on real GlaS masks, and what `oeem evaluate` reports.

Definitions checked against the challenge's evaluation page and official MATLAB code (F1score.m, ObjectDice.m,
ObjectHausdorff.m, Sirinukunwattana 2015): partner = the object of the other side with the largest overlap; a
segmented object is a TP when |S & G| / |G| > 0.5 for its partner G; FN = glands - TP; object Dice / Hausdorff are
the area-weighted means over both sides; an object without overlap takes Dice 0, and for the Hausdorff distance the
nearest object of the other side by Hausdorff distance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label
from skimage.metrics import hausdorff_distance

from pipeline.metrics import ObjectCounts, label_objects, object_counts, object_scores, score


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    return object_counts(label_objects(pred), label_objects(truth)).scores()


def canvas(h: int = 6, w: int = 10) -> np.ndarray:
    return np.zeros((h, w), np.uint8)


def test_perfect_match():
    truth = canvas(10, 10)
    truth[1:4, 1:4] = 1  # G1, 9 px
    truth[6:8, 5:9] = 1  # G2, 8 px
    s = scores(truth, truth)
    assert (s["TP"], s["FP"], s["FN"], s["glands"], s["segmented"]) == (2, 0, 0, 2, 2)
    assert s["object_F1"] == 100 and s["object_Dice"] == 100 and s["object_Hausdorff"] == 0


def test_split_gland():
    """One 4x6 gland (24 px) segmented as two halves with a gap column: S1 = cols 0-1 (8 px), S2 = cols 3-5 (12 px)."""
    truth = canvas()
    truth[0:4, 0:6] = 1
    pred = canvas()
    pred[0:4, 0:2] = 1
    pred[0:4, 3:6] = 1
    s = scores(pred, truth)
    # S1 covers 8/24 of G, S2 exactly 12/24 = 0.5: not more than half (the official code's strict test) -> both FP
    assert (s["TP"], s["FP"], s["FN"]) == (0, 2, 1) and s["object_F1"] == 0
    # G's partner is S2 (12 > 8 px): Dice 2*12/(24+12) = 2/3, weight 1.
    # S side: S1 (weight 8/20) Dice 2*8/(24+8) = 1/2; S2 (weight 12/20) Dice 2/3 -> 0.2 + 0.4 = 0.6
    assert s["object_Dice"] == pytest.approx(100 * (2 / 3 + 0.6) / 2)  # 63.33
    # H(G, S2) = 3 (G's column 0 to S2's column 3; S2 lies inside G); H(G, S1) = 4 (column 5 to column 1)
    # G side: 3; S side: 0.4 * 4 + 0.6 * 3 = 3.4 -> (3 + 3.4) / 2
    assert s["object_Hausdorff"] == pytest.approx(3.2)


def test_merged_glands():
    """Two 3x3 glands (cols 0-2 and 4-6) segmented as one 3x7 object (21 px)."""
    truth = canvas()
    truth[0:3, 0:3] = 1
    truth[0:3, 4:7] = 1
    pred = canvas()
    pred[0:3, 0:7] = 1
    s = scores(pred, truth)
    # S overlaps both by 9 px; its partner is the first (tie -> lower label); 9/9 > 0.5 -> TP; the other gland: FN
    assert (s["TP"], s["FP"], s["FN"]) == (1, 0, 1)
    assert s["object_F1"] == pytest.approx(100 * 2 / 3)  # 2TP / (2TP + FP + FN) = 2/3
    # every Dice is 2*9/(9+21) = 0.6, on both sides
    assert s["object_Dice"] == pytest.approx(60)
    # each gland lies inside S; S's farthest pixel is 4 columns from either gland -> every H is 4
    assert s["object_Hausdorff"] == pytest.approx(4)


def test_missed_gland():
    """Two 3x3 glands (cols 0-2 and 6-8); only the first segmented, exactly."""
    truth = canvas()
    truth[0:3, 0:3] = 1
    truth[0:3, 6:9] = 1
    pred = canvas()
    pred[0:3, 0:3] = 1
    s = scores(pred, truth)
    assert (s["TP"], s["FP"], s["FN"]) == (1, 0, 1)
    assert s["object_F1"] == pytest.approx(100 * 2 / 3)
    # G side: 0.5 * 1 + 0.5 * 0 (no overlapping partner: Dice 0); S side: 1 -> (0.5 + 1) / 2
    assert s["object_Dice"] == pytest.approx(75)
    # the missed gland's nearest segmented object is S, 6 columns to the left (a translation): H = 6
    # G side: 0.5 * 0 + 0.5 * 6 = 3; S side: 0 -> 1.5
    assert s["object_Hausdorff"] == pytest.approx(1.5)


def test_extra_gland():
    """One 3x3 gland segmented exactly, plus a 2x2 object (rows 0-1, cols 6-7) where there is none."""
    truth = canvas()
    truth[0:3, 0:3] = 1
    pred = truth.copy()
    pred[0:2, 6:8] = 1
    s = scores(pred, truth)
    assert (s["TP"], s["FP"], s["FN"]) == (1, 1, 0)
    assert s["object_F1"] == pytest.approx(100 * 2 / 3)
    # G side: 1; S side: 9/13 * 1 + 4/13 * 0 -> (1 + 9/13) / 2 = 11/13
    assert s["object_Dice"] == pytest.approx(100 * 11 / 13)  # 84.62
    # the extra object's nearest gland is G: from G, pixel (2, 0) is sqrt(1 + 36) from the extra's (1, 6); from the
    # extra, (0, 7) is 5 from (0, 2) -> H = sqrt(37). G side 0; S side 4/13 * sqrt(37) -> half of that
    assert s["object_Hausdorff"] == pytest.approx(2 * math.sqrt(37) / 13)  # 0.936


def test_empty_images():
    """The official code: no glands and no segmented object scores F1 = Dice = 1 and Hausdorff 0; glands without a
    segmented object or the reverse score F1 = Dice = 0; its Hausdorff of an empty set is infinite, and so is ours
    for an object with nothing on the other side of its image to be measured against."""
    empty = canvas()
    s = scores(empty, empty)
    assert (s["TP"], s["FP"], s["FN"]) == (0, 0, 0)
    assert (s["object_F1"], s["object_Dice"], s["object_Hausdorff"]) == (100, 100, 0)
    blob = canvas()
    blob[1:3, 1:3] = 1
    s = scores(blob, empty)  # a prediction where there are no glands
    assert (s["TP"], s["FP"], s["FN"]) == (0, 1, 0)
    assert (s["object_F1"], s["object_Dice"], s["object_Hausdorff"]) == (0, 0, math.inf)
    s = scores(empty, blob)  # glands and no prediction
    assert (s["TP"], s["FP"], s["FN"]) == (0, 0, 1)
    assert (s["object_F1"], s["object_Dice"], s["object_Hausdorff"]) == (0, 0, math.inf)


def test_part_is_scored_as_one_set_of_objects():
    """The challenge sums TP / FP / FN over a test part and weighs Dice and Hausdorff by areas over the whole part,
    not the mean of per-image scores."""
    perfect = canvas(10, 10)
    perfect[1:4, 1:4] = 1  # 9 px
    perfect[6:8, 5:9] = 1  # 8 px
    truth = canvas()
    truth[0:3, 0:3] = 1
    truth[0:3, 6:9] = 1
    pred = canvas()
    pred[0:3, 0:3] = 1  # the missed-gland case: TP 1, FN 1
    s = object_scores([perfect, pred], [perfect, truth])
    assert (s["TP"], s["FP"], s["FN"]) == (3, 0, 1)
    assert s["object_F1"] == pytest.approx(100 * 6 / 7)  # not the per-image mean (100 + 66.67) / 2
    # truth areas 17 + 18 = 35, of which 17 + 9 matched exactly; predicted 17 + 9, all exact: (26/35 + 1) / 2
    assert s["object_Dice"] == pytest.approx(100 * 61 / 70)
    # only the missed gland (9 px of 35) has a distance, 6 -> (9 * 6 / 35 + 0) / 2
    assert s["object_Hausdorff"] == pytest.approx(27 / 35)
    a = object_counts(label_objects(perfect), label_objects(perfect))
    b = object_counts(label_objects(pred), label_objects(truth))
    assert (a + b).scores() == s and sum([a, b], ObjectCounts()).scores() == s


def test_objects_are_8_connected_and_labels_may_be_any_ids():
    diagonal = np.array([[1, 0], [0, 1]])
    assert label_objects(diagonal).max() == 1
    truth = np.array([[0, 7, 7, 0, 3]])  # ids need not be 1..n
    pred = np.array([[0, 2, 2, 0, 0]])
    assert object_counts(pred, truth).scores()["TP"] == 1 and object_counts(pred, truth).fn == 1


def test_pixel_dice_is_measured():
    """pixel_Dice = 2|P & G| / (|P| + |G|) of the gland class over all images (no longer derived from mIoU)."""
    gt1, pr1 = np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]])
    gt2, pr2 = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 0]])
    assert score([pr1, pr2], [gt1, gt2])["pixel_Dice"] == pytest.approx(100 * 2 * 4 / (4 + 6))


# -- an independent computation on real GlaS masks ------------------------------------------------------------


def reference(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """The challenge's definitions written out object by object, differently from pipeline.metrics: boolean masks,
    overlap counts from np.unique, Hausdorff distances from scikit-image (k-d trees of every pixel)."""
    tp = fp = fn = 0
    g_terms, s_terms, g_haus, s_haus, g_total, s_total = [], [], [], [], 0, 0

    def haus(a, b):
        return hausdorff_distance(a, b)

    def partner(obj, other_labels):
        ids, counts = np.unique(other_labels[obj], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        return int(ids[np.argmax(counts)]) if len(ids) else 0  # np.unique sorts: ties go to the lower id

    for p, t in zip(preds, truths, strict=True):
        sl, gl = label(p > 0, connectivity=2), label(t > 0, connectivity=2)
        gs = [gl == k for k in range(1, gl.max() + 1)]
        ss = [sl == k for k in range(1, sl.max() + 1)]
        g_total += sum(int(g.sum()) for g in gs)
        s_total += sum(int(s.sum()) for s in ss)
        hits = 0
        for s in ss:
            k = partner(s, gl)
            g = gl == k if k else None
            if g is not None and (s & g).sum() / g.sum() > 0.5:
                hits += 1
            s_terms.append(s.sum() * (2 * (s & g).sum() / (s.sum() + g.sum()) if g is not None else 0.0))
            s_haus.append(s.sum() * (haus(g, s) if g is not None else min(haus(x, s) for x in gs)))
        for g in gs:
            k = partner(g, sl)
            s = sl == k if k else None
            g_terms.append(g.sum() * (2 * (s & g).sum() / (s.sum() + g.sum()) if s is not None else 0.0))
            g_haus.append(g.sum() * (haus(g, s) if s is not None else min(haus(g, x) for x in ss)))
        tp, fp, fn = tp + hits, fp + len(ss) - hits, fn + len(gs) - hits
    return {"TP": tp, "FP": fp, "FN": fn, "object_F1": 100 * 2 * tp / (2 * tp + fp + fn),
            "object_Dice": 50 * (sum(g_terms) / g_total + sum(s_terms) / s_total),
            "object_Hausdorff": (sum(g_haus) / g_total + sum(s_haus) / s_total) / 2}


def test_matches_an_independent_computation_on_glas(glas_root):
    from skimage.morphology import dilation, disk, erosion

    truths = [np.array(Image.open(glas_root / "train" / f"train_{k}_anno.png")) > 0 for k in (1, 2, 5, 10)]
    rng = np.random.default_rng(0)
    preds = []
    for k, t in enumerate(truths):
        p = (erosion if k % 2 else dilation)(t, disk(4 + 3 * k)).astype(bool)  # some glands merge, some vanish
        p = np.roll(p, (3 * k, -2 * k), axis=(0, 1))
        glands = label(p, connectivity=2)
        if glands.max() > 2:
            p[glands == 2] = False  # a missed gland
        y, x = rng.integers(0, t.shape[0] - 20), rng.integers(0, t.shape[1] - 20)
        p[y:y + 15, x:x + 12] = True  # an extra object (or a piece added to one)
        preds.append(p)
    ours, ref = object_scores(preds, truths), reference(preds, truths)
    assert (ours["TP"], ours["FP"], ours["FN"]) == (ref["TP"], ref["FP"], ref["FN"])
    assert ref["FP"] > 0 and ref["FN"] > 0
    for key in ("object_F1", "object_Dice", "object_Hausdorff"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12), key
    same = object_scores(truths, truths)
    assert (same["object_F1"], same["object_Dice"], same["object_Hausdorff"]) == (100, 100, 0)


# -- what evaluate reports --------------------------------------------------------------------------------------

OBJECT_KEYS = {"object_F1", "object_Dice", "object_Hausdorff", "TP", "FP", "FN", "glands", "segmented"}


def test_evaluate_reports_object_scores(trained_project):
    from pipeline.stages.infer import evaluate

    store, _, _ = trained_project
    ev = evaluate(store, "test")
    assert OBJECT_KEYS | {"mIoU", "pixel_Dice", "F1"} <= set(ev)
    assert set(ev["parts"]) == {"testA"} and ev["parts"]["testA"]["images"] == ev["images"]
    assert all(OBJECT_KEYS <= set(r) for r in ev["per_image"].values())
    assert 0 <= ev["object_F1"] <= 100 and 0 <= ev["object_Dice"] <= 100 and ev["object_Hausdorff"] >= 0
    assert store.load_run("evaluation-test")["object_F1"] == ev["object_F1"]


def test_evaluate_reports_glas_parts(tmp_path):
    """testA_* and testB_* are the challenge's two test parts: each is scored, and A+B as one set of objects."""
    from pipeline.stages.infer import evaluate
    from pipeline.store.project import create_project
    from tests.conftest import write_pair

    folder = tmp_path / "data"
    folder.mkdir()
    for k, name in enumerate(("train_1", "testA_1", "testA_2", "testB_1")):
        write_pair(folder, name, seed=300 + k)
    store = create_project(folder, tmp_path / "p.oeem.zarr")
    for n in store.names("test"):
        pred = store.mask(n).copy()
        if n == "testB_1":
            pred[label_objects(pred) == 1] = 0  # miss one gland in part B
        store.write(n, "prediction", pred)
    ev = evaluate(store, "test")
    parts = ev["parts"]
    assert set(parts) == {"testA", "testB", "A+B"}
    assert (parts["testA"]["images"], parts["testB"]["images"], parts["A+B"]["images"]) == (2, 1, 3)
    assert parts["testA"]["object_F1"] == 100 and parts["testB"]["FN"] == 1 and parts["A+B"]["FN"] == 1
    assert parts["A+B"]["TP"] == parts["testA"]["TP"] + parts["testB"]["TP"]
    assert {k: parts["A+B"][k] for k in OBJECT_KEYS} == {k: ev[k] for k in OBJECT_KEYS}
