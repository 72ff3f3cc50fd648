"""A pathologist's tagging actions on one image's patch grid: what each key, stroke and shape of napari's *Weak
labels* panel does, as plain functions (the panel calls them; ``benchmarks/weak_labels.py`` counts them).

Patches of side ``size`` overlap (stride ``size / 2``), so a point lies in up to four of them. The patch *under*
a point is the one whose centre is nearest: each patch owns the stride-sized cell around its centre, the cells
tile the image, and the panel draws those cells. Every action saves at once (crash-safe, on the image's undo
stack, under the project's writer lock: :meth:`ProjectStore.save_patch_tags`).

Proposals: each unlabelled patch shows the tag the best model so far would give it - the segmentation's prediction
by the 5 % rule when the image has one, else the classifier's (a class present when its probability exceeds 0.5; the
likelier class when neither does), else the preview learned from the tags in seconds (``pipeline.review.preview``,
by the 5 % rule). Accepting them tags every unlabelled patch at once; the pathologist then fixes the wrong ones.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import PatchConfig
from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND, UNLABELLED, project_tags, vectors_to_tags
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.store import ProjectStore

TAGS = (UNLABELLED, GLAND, NON_GLAND, BOTH)


@dataclass
class Tagger:
    """The tags of one image of a project on its grid, and the actions that change them (each one saved)."""

    store: ProjectStore
    name: str
    cfg: PatchConfig
    corners: np.ndarray = field(init=False)
    tags: np.ndarray = field(init=False)
    proposals: np.ndarray | None = None  # (N,) the model's tag per patch; None: no model yet
    proposal_source: str = ""

    def __post_init__(self) -> None:
        self.corners = patch_grid(self.store.shape(self.name), self.cfg.size, self.cfg.stride)
        self.reload()

    # ------------------------------------------------------------------ where
    @property
    def centres(self) -> np.ndarray:
        return self.corners + self.cfg.size / 2.0

    def _axes(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """The grid's centre rows and columns, and the image's shape."""
        c = self.centres
        return np.unique(c[:, 0]), np.unique(c[:, 1]), self.store.shape(self.name)

    def patch_at(self, y: float, x: float) -> int | None:
        """The patch under a point (the nearest centre along each axis); None outside the image."""
        rows, cols, (h, w) = self._axes()
        if not (0 <= y < h and 0 <= x < w):
            return None
        return int(np.argmin(np.abs(rows - y))) * len(cols) + int(np.argmin(np.abs(cols - x)))

    def cells(self) -> np.ndarray:
        """(N, 4) y0, x0, y1, x1 of each patch's own cell: the points nearer its centre than any other's. The
        cells tile the image; the overlay draws them."""
        rows, cols, (h, w) = self._axes()

        def bounds(c: np.ndarray, end: int) -> np.ndarray:
            mids = (c[1:] + c[:-1]) / 2.0
            return np.concatenate([[0.0], mids, [float(end)]])

        by, bx = bounds(rows, h), bounds(cols, w)
        iy, ix = np.divmod(np.arange(len(self.corners)), len(cols))
        return np.stack([by[iy], bx[ix], by[iy + 1], bx[ix + 1]], axis=1)

    def patches_in(self, inside: np.ndarray) -> np.ndarray:
        """Indices of the patches whose centre falls in the boolean image ``inside`` (a lasso, a rectangle)."""
        cy = np.clip(self.centres[:, 0].astype(int), 0, inside.shape[0] - 1)
        cx = np.clip(self.centres[:, 1].astype(int), 0, inside.shape[1] - 1)
        return np.flatnonzero(inside[cy, cx])

    def patches_along(self, points: np.ndarray) -> np.ndarray:
        """Indices of the patches a stroke through ``points`` ((M, 2) y, x) passes over, in order."""
        points = np.asarray(points, float).reshape(-1, 2)
        if len(points) > 1:  # sample the segments densely enough that no cell is jumped over
            steps = [np.linspace(a, b, max(2, int(np.abs(b - a).max() / (self.cfg.stride / 4)) + 1))
                     for a, b in itertools.pairwise(points)]
            points = np.concatenate(steps)
        hit = [self.patch_at(y, x) for y, x in points]
        return np.array(list(dict.fromkeys(k for k in hit if k is not None)), np.int64)

    # ------------------------------------------------------------------ actions (each is one save)
    def reload(self) -> None:
        found = project_tags(self.store, self.name, self.cfg.size, self.cfg.stride)
        self.tags = np.zeros(len(self.corners), np.uint8) if found is None else found.copy()

    def _save(self, tags: np.ndarray) -> bool:
        if np.array_equal(tags, self.tags):
            return False
        self.store.save_patch_tags(self.name, tags, self.cfg.size, self.cfg.stride)
        self.tags = tags
        return True

    def set_patches(self, indices, tag: int) -> bool:
        """Give ``tag`` to the patches ``indices``; False when nothing changed (nothing saved)."""
        if tag not in TAGS:
            raise ValueError(f"tag {tag} is not one of {TAGS}")
        tags = self.tags.copy()
        tags[np.asarray(indices, np.int64)] = tag
        return self._save(tags)

    def set_at(self, y: float, x: float, tag: int) -> bool:
        k = self.patch_at(y, x)
        return k is not None and self.set_patches([k], tag)

    def set_image(self, tag: int) -> bool:
        """The whole image at once (*all gland*, *no gland*)."""
        return self.set_patches(np.arange(len(self.tags)), tag)

    def accept_proposals(self) -> bool:
        """Every unlabelled patch takes the model's proposal; tagged patches keep theirs."""
        if self.proposals is None:
            return False
        tags = self.tags.copy()
        open_ = tags == UNLABELLED
        tags[open_] = self.proposals[open_]
        return self._save(tags)

    def undo(self) -> bool:
        done = self.store.undo_patch_tags(self.name)
        self.reload()
        return done

    # ------------------------------------------------------------------ proposals
    def propose_from_mask(self, mask: np.ndarray, source: str) -> np.ndarray:
        """Proposals from a gland mask of the image, by the 5 % rule the tags follow."""
        vectors = patch_labels(mask, self.corners, self.cfg.size, self.cfg.min_fraction)
        self.proposals, self.proposal_source = vectors_to_tags(vectors), source
        return self.proposals

    def propose(self, classifier=None, device="cpu", preview=None) -> np.ndarray | None:
        """The model's tag for every patch (see the module's doc); kept in ``proposals``; None when there is no
        model and no tag to learn a preview from. ``classifier``: a loaded ``(model, ClassifierConfig)`` to reuse
        across images; else loaded from the project when it has one. ``preview``: a ``ProjectPreview`` to reuse."""
        if self.store.has(self.name, "prediction"):
            return self.propose_from_mask(self.store.read(self.name, "prediction"), "segmentation")
        if classifier is None and self.store.checkpoint_path("classifier").is_file():
            from pipeline.stages.classify import load_classifier

            classifier = load_classifier(self.store, device)
        if classifier is None:
            from pipeline.errors import OEEMError
            from pipeline.review.preview import ProjectPreview

            try:
                if preview is None:  # the project's preview settings, as the dock's and `oeem preview`'s
                    from pipeline.store.project import project_config

                    preview = ProjectPreview(self.store, self.cfg, project_config(self.store, save=False).preview)
                mask = preview.predict(self.name).mask
            except OEEMError:  # not even the preview has tags to learn from
                self.proposals, self.proposal_source = None, ""
                return None
            return self.propose_from_mask(mask, "preview")
        from pipeline.review.suggest import classifier_probs

        model, cls_cfg = classifier
        probs = classifier_probs(model, self.store.image(self.name), self.corners, self.cfg.size,
                                 cls_cfg.input_size, next(model.parameters()).device)
        self.proposals, self.proposal_source = proposals_from_probs(probs), "classifier"
        return self.proposals


def proposals_from_probs(probs: np.ndarray) -> np.ndarray:
    """(N, 2) [non-gland, gland] probabilities -> (N,) tags: classes above 0.5, else the likelier one alone."""
    present = probs > 0.5
    none = ~present.any(axis=1)
    present[none, np.argmax(probs[none], axis=1)] = True
    return vectors_to_tags(present.astype(np.uint8))


def tag_name(tag: int) -> str:
    from pipeline.io.patch_labels import TAG_NAMES

    return TAG_NAMES[int(tag)]


__all__ = ["BOTH", "GLAND", "NON_GLAND", "TAGS", "UNLABELLED", "Tagger", "proposals_from_probs", "tag_name"]
