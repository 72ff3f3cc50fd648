"""Segmentation metrics. Pixel level (in percent, pixels pooled over all images): mIoU as method.md and the OEEM
paper define it, the mean over both classes of IoU_c = sum|P_c & G_c| / sum|P_c | G_c|; pixel_Dice = 2 sum|P & G| /
(sum|P| + sum|G|) of the gland class, measured; F1 = mean over classes of TP / (TP + (FP + FN) / 2).

Object level, because the GlaS challenge (Sirinukunwattana et al., Medical Image Analysis 35, 2017) and the gland
papers after it judge glands as objects: a split or merged gland barely moves a pixel score but is a wrong gland
count for a pathologist. See :class:`ObjectCounts`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist
from skimage.measure import label

from pipeline.errors import OEEMError


def confusion(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """2x2 counts [gt, pred] for binary arrays."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise OEEMError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    idx = (gt.astype(bool).ravel().astype(np.int64) * 2) + pred.astype(bool).ravel()
    return np.bincount(idx, minlength=4).reshape(2, 2)


def from_confusion(cm: np.ndarray) -> dict[str, float]:
    """mIoU, pixel Dice (gland class, measured), F1 and the per-class IoU, in percent, of a 2x2 confusion."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 1.0)
        f1 = np.where(tp + fp + fn > 0, tp / (tp + (fp + fn) / 2), 1.0)
    return {"mIoU": 100 * float(iou.mean()), "pixel_Dice": 100 * float(f1[1]), "F1": 100 * float(f1.mean()),
            "IoU_non_gland": 100 * float(iou[0]), "IoU_gland": 100 * float(iou[1])}


def score(preds: Iterable[np.ndarray], gts: Iterable[np.ndarray]) -> dict[str, float]:
    """mIoU, pixel Dice and F1 (percent) over paired binary (0/1) arrays."""
    cm = np.zeros((2, 2), np.int64)
    n = 0
    for p, g in zip(preds, gts, strict=True):
        cm += confusion(p, g)
        n += 1
    if n == 0:
        raise OEEMError("nothing to score: no (prediction, ground truth) pairs")
    return from_confusion(cm)


def label_objects(mask: np.ndarray) -> np.ndarray:
    """The glands of a binary mask as objects: its 8-connected components (the challenge's ``bwlabel(BW, 8)``),
    numbered 1..n, background 0."""
    return label(np.asarray(mask) > 0, connectivity=2)


@dataclass(frozen=True)
class ObjectCounts:
    """What the GlaS object metrics need from one image, as sums that add over images.

    The challenge scores a test part as one set of objects: detection counts are summed over its images and the
    Dice / Hausdorff weights are areas over the whole part, so ``sum(counts of each image).scores()`` is the
    part's score and ``counts.scores()`` of one image is the challenge's per-image MATLAB functions.

    Matching (both directions): an object's partner is the object of the other side it overlaps most (most
    pixels; ties to the lower label). Detection: a segmented object is a true positive when it covers more than
    half of its partner's area (|S & G| / |G| > 0.5, the official code's strict test), otherwise a false
    positive; ground-truth objects without a true positive are false negatives (FN = glands - TP, the evaluation
    page's rule; one release of F1score.m counted only glands no segmented object took as partner).
    """

    truth_objects: int = 0
    pred_objects: int = 0
    tp: int = 0
    truth_area: int = 0
    pred_area: int = 0
    truth_dice: float = 0.0  # sum_i |G_i| Dice(G_i, S*(G_i)); no overlapping partner: Dice 0
    pred_dice: float = 0.0  # sum_j |S_j| Dice(G*(S_j), S_j)
    truth_hausdorff: float = 0.0  # sum_i |G_i| H(G_i, S*(G_i)); no overlapping partner: the S nearest by H,
    pred_hausdorff: float = 0.0  # sum_j |S_j| H(G*(S_j), S_j)   # none in the image: inf (H of an empty set)

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def fp(self) -> int:
        return self.pred_objects - self.tp

    @property
    def fn(self) -> int:
        return self.truth_objects - self.tp

    def scores(self) -> dict[str, float | int]:
        """object_F1 = 2TP / (2TP + FP + FN), object_Dice (both percent) and object_Hausdorff (pixels):
        1/2 [sum_i gamma_i X(G_i, S*(G_i)) + sum_j sigma_j X(G*(S_j), S_j)], gamma_i = |G_i| / sum|G|,
        sigma_j = |S_j| / sum|S|. No glands and no prediction scores as the official code does for an empty
        image: F1 and Dice 100, Hausdorff 0; a prediction without glands (or glands without one) scores 0, 0, inf."""
        tp, fp, fn = self.tp, self.fp, self.fn
        f1 = 100.0 if tp + fp + fn == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)
        if self.truth_area == 0 and self.pred_area == 0:
            dice, haus = 100.0, 0.0
        else:
            dice = 50.0 * (_ratio(self.truth_dice, self.truth_area) + _ratio(self.pred_dice, self.pred_area))
            haus = 0.5 * (_ratio(self.truth_hausdorff, self.truth_area) + _ratio(self.pred_hausdorff, self.pred_area))
        return {"object_F1": f1, "object_Dice": dice, "object_Hausdorff": haus, "glands": self.truth_objects,
                "segmented": self.pred_objects, "TP": tp, "FP": fp, "FN": fn}


def _ratio(total: float, area: int) -> float:
    return total / area if area else 0.0


def overlap_table(pred_labels: np.ndarray, truth_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels each true object shares with each predicted one: a (truth objects + 1) x (predicted objects + 1)
    table (row and column 0: background), and the two label images renumbered 1..n as its rows and columns count
    them (truth id i + 1 is row i + 1)."""
    pred_labels, truth_labels = np.asarray(pred_labels), np.asarray(truth_labels)
    if pred_labels.shape != truth_labels.shape:
        raise OEEMError(f"prediction shape {pred_labels.shape} differs from ground truth {truth_labels.shape}")
    s, g = _sequential(pred_labels), _sequential(truth_labels)
    ns, ng = int(s.max()), int(g.max())
    table = np.bincount((g * (ns + 1) + s).ravel(), minlength=(ng + 1) * (ns + 1)).reshape(ng + 1, ns + 1)
    return table, s, g


def object_counts(pred_labels: np.ndarray, truth_labels: np.ndarray) -> ObjectCounts:
    """:class:`ObjectCounts` of one image from two label images (0 = background, one id per object; binary masks
    go through :func:`label_objects` first)."""
    table, s, g = overlap_table(pred_labels, truth_labels)
    ng, ns = table.shape[0] - 1, table.shape[1] - 1
    inter = table[1:, 1:]  # |G_i & S_j|
    g_area, s_area = table[1:].sum(1), table[:, 1:].sum(0)
    g_partner = inter.argmax(1) if ns else np.zeros(ng, np.int64)  # index of S*(G_i); valid where it overlaps
    s_partner = inter.argmax(0) if ng else np.zeros(ns, np.int64)
    g_hit = inter[np.arange(ng), g_partner] if ns else np.zeros(ng, np.int64)
    s_hit = inter[s_partner, np.arange(ns)] if ng else np.zeros(ns, np.int64)
    tp = int(np.sum(s_hit / np.maximum(g_area[s_partner], 1) > 0.5)) if ng else 0
    g_dice = np.where(g_hit > 0, 2 * g_hit / (g_area + s_area[g_partner] if ns else g_area), 0.0)
    s_dice = np.where(s_hit > 0, 2 * s_hit / (s_area + g_area[s_partner] if ng else s_area), 0.0)
    dist = _Hausdorff(g, s)
    g_haus = [dist.pair(i, g_partner[i]) if g_hit[i] else dist.nearest(0, i) for i in range(ng)]
    s_haus = [dist.pair(s_partner[j], j) if s_hit[j] else dist.nearest(1, j) for j in range(ns)]
    return ObjectCounts(truth_objects=ng, pred_objects=ns, tp=tp, truth_area=int(g_area.sum()),
                        pred_area=int(s_area.sum()), truth_dice=float(g_area @ g_dice),
                        pred_dice=float(s_area @ s_dice), truth_hausdorff=_weighted(g_area, g_haus),
                        pred_hausdorff=_weighted(s_area, s_haus))


def _weighted(area: np.ndarray, dist: list[float]) -> float:
    return float(sum(a * d for a, d in zip(area.tolist(), dist, strict=True)))


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in their order (0 stays background); a no-op for what :func:`label_objects` makes."""
    labels = labels.astype(np.int64, copy=False)
    if labels.size and labels.min() < 0:
        raise OEEMError("object labels must be >= 0 (0 = background)")
    present = np.zeros(int(labels.max(initial=0)) + 1, bool)
    present[labels.ravel()] = True
    present[0] = True
    if present.all():
        return labels
    return (np.cumsum(present) - 1)[labels]


_POINTWISE = 1_000_000  # pairs of pixels up to which distances are taken point to point


class _Hausdorff:
    """Exact Hausdorff distances (pixels, Euclidean, as the official code's nearest-neighbour search) between the
    objects of two sequential label images, each pair computed once. Side 0 is the truth, side 1 the prediction;
    objects are 0-based indices."""

    def __init__(self, g: np.ndarray, s: np.ndarray):
        self.labels = (g, s)
        self.boxes = (ndimage.find_objects(g), ndimage.find_objects(s))
        self.extremes: tuple[dict[int, np.ndarray], dict[int, np.ndarray]] = ({}, {})
        self.points: tuple[dict[int, tuple[np.ndarray, np.ndarray]], ...] = ({}, {})
        self.cache: dict[tuple[int, int], float] = {}

    def pair(self, i: int, j: int) -> float:
        """H(G_i, S_j)."""
        key = (int(i), int(j))
        if key not in self.cache:
            self.cache[key] = max(self._directed(0, i, 1, j), self._directed(1, j, 0, i))
        return self.cache[key]

    def _directed(self, side: int, k: int, other: int, m: int) -> float:
        """sup over object ``k`` of ``side`` of the distance to object ``m`` of ``other``. Only pixels outside the
        target count, and the nearest target pixel of one is always on the target's edge (a pixel with a
        4-neighbour outside it), so small pairs are measured point to point; larger ones by a distance
        transform of the target over the pair's joint bounding box (exact too: both lie inside it)."""
        pts = self._pixels(side, k)[0]
        pairs = list(zip(self.boxes[side][k], self.boxes[other][m], strict=True))
        if all(a.start < b.stop and b.start < a.stop for a, b in pairs):  # bounding boxes meet
            pts = pts[self.labels[other][pts[:, 0], pts[:, 1]] != m + 1]
            if not len(pts):
                return 0.0
        edge = self._pixels(other, m)[1]
        # every target pixel lies within r of the centre c of its box, so d(p, target) is |p - c| +- r: only
        # pixels with |p - c| >= max |p - c| - 2r can be the farthest
        centre = np.array([(b.start + b.stop - 1) / 2 for _, b in pairs])
        radius = float(np.hypot(*[(b.stop - 1 - b.start) / 2 for _, b in pairs]))
        far = np.hypot(*(pts - centre).T)
        pts = pts[far >= far.max() - 2 * radius]
        if len(pts) * len(edge) <= _POINTWISE:
            return float(np.sqrt(cdist(pts, edge, "sqeuclidean").min(1).max()))
        box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in pairs)
        a, b = self.labels[side][box] == k + 1, self.labels[other][box] == m + 1
        return float(ndimage.distance_transform_edt(~b)[a].max())

    def _pixels(self, side: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(every pixel, edge pixels) of an object, n x 2 image coordinates."""
        if k not in self.points[side]:
            box = self.boxes[side][k]
            mask = self.labels[side][box] == k + 1
            edge = mask & ~ndimage.binary_erosion(mask)
            offset = np.array([box[0].start, box[1].start])
            self.points[side][k] = (np.argwhere(mask) + offset, np.argwhere(edge) + offset)
        return self.points[side][k]

    def nearest(self, side: int, k: int) -> float:
        """The smallest H from object ``k`` of ``side`` to an object of the other side (inf when there is none).
        Candidates go in the order of a lower bound of H, so the search stops once no further one can be nearer."""
        other = 1 - side
        bounds = [self._bound(side, k, other, m) for m in range(len(self.boxes[other]))]
        best = float("inf")
        for m in np.argsort(bounds, kind="stable"):
            if bounds[m] >= best:
                break
            best = min(best, self.pair(k, m) if side == 0 else self.pair(m, k))
        return best

    def _bound(self, side: int, k: int, other: int, m: int) -> float:
        """H(A, B) >= d(p, B) >= d(p, box(B)) for a pixel p of A: the four extreme pixels of each object."""
        return max(_point_box(self._extremes(side, k), self.boxes[other][m]),
                   _point_box(self._extremes(other, m), self.boxes[side][k]))

    def _extremes(self, side: int, k: int) -> np.ndarray:
        """A pixel of the object on each side of its bounding box: top, bottom, left and right."""
        if k not in self.extremes[side]:
            box = self.boxes[side][k]
            mask = self.labels[side][box] == k + 1
            h, w = mask.shape
            pts = [(0, mask[0].argmax()), (h - 1, mask[-1].argmax()), (mask[:, 0].argmax(), 0),
                   (mask[:, -1].argmax(), w - 1)]
            self.extremes[side][k] = np.array(pts) + [box[0].start, box[1].start]
        return self.extremes[side][k]


def _point_box(points: np.ndarray, box: tuple[slice, ...]) -> float:
    """The largest distance from one of ``points`` (n x 2) to the pixels of ``box``."""
    lo = np.array([b.start for b in box])
    hi = np.array([b.stop - 1 for b in box])
    gap = np.maximum(0, np.maximum(lo - points, points - hi))
    return float(np.hypot(gap[:, 0], gap[:, 1]).max())


def object_scores(preds: Iterable[np.ndarray], truths: Iterable[np.ndarray]) -> dict[str, float | int]:
    """GlaS object F1, object Dice and object Hausdorff of paired binary masks, scored as one test part."""
    total = ObjectCounts()
    for p, t in zip(preds, truths, strict=True):
        total += object_counts(label_objects(p), label_objects(t))
    return total.scores()
