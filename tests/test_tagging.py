"""The tagging actions behind the Weak labels panel's keys: the patch under a point, strokes, shapes, whole
images, proposals from a model, undo - each saved at once."""
import numpy as np

from pipeline.config import preset
from pipeline.io.patch_labels import BOTH, GLAND, NON_GLAND, UNLABELLED
from pipeline.review.tagging import Tagger, proposals_from_probs
from pipeline.store import ProjectStore


def test_the_patch_under_a_point_is_the_nearest_centre_and_cells_tile_the_image(own_project):
    t = Tagger(own_project, "a", preset("tiny").patches)
    size, stride = t.cfg.size, t.cfg.stride
    assert t.patch_at(0, 0) == 0 and t.patch_at(-1, 5) is None and t.patch_at(224, 5) is None
    for k, (y, x) in enumerate(t.corners):  # a patch's centre is under that patch
        assert t.patch_at(y + size / 2, x + size / 2) == k
    cells = t.cells()
    covered = np.zeros((224, 280), int)
    for y0, x0, y1, x1 in cells.astype(int):
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1  # every pixel belongs to some patch's cell
    assert covered.max() == 1 and (cells[:, 2] - cells[:, 0]).max() <= stride + size // 4


def test_keys_strokes_shapes_whole_image_and_undo_are_saved_at_once(own_project):
    cfg = preset("tiny").patches
    t = Tagger(own_project, "a", cfg)
    n = len(t.corners)
    assert t.set_at(10, 10, GLAND) and not t.set_at(10, 10, GLAND)  # the same tag twice: one save
    assert ProjectStore.open(own_project.path).patch_tags("a")[0][0] == GLAND
    stroke = t.patches_along(np.array([[10, 10], [10, 270]]))  # along the top row, left to right
    assert list(stroke) == [k for k in range(n) if t.corners[k][0] == 0]
    t.set_patches(stroke, NON_GLAND)
    inside = np.zeros((224, 280), bool)
    inside[100:224, :] = True  # a rectangle over the lower half
    lower = t.patches_in(inside)
    assert len(lower) and all(t.centres[k][0] >= 100 for k in lower)
    t.set_patches(lower, BOTH)
    saved = ProjectStore.open(own_project.path).patch_tags("a")[0]
    assert (saved[stroke] == NON_GLAND).all() and (saved[lower] == BOTH).all()
    assert t.set_image(GLAND) and (ProjectStore.open(own_project.path).patch_tags("a")[0] == GLAND).all()
    assert t.undo() and np.array_equal(t.tags, saved)  # back one step: the shapes' tags again
    for _ in range(3):
        t.undo()
    assert (t.tags == UNLABELLED).all() and not t.undo()  # nothing left to undo
    assert ProjectStore.open(own_project.path).patch_tags("b") is None  # the other image untouched


def test_proposals_fill_only_unlabelled_patches():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.3, 0.4], [0.45, 0.2]])
    assert proposals_from_probs(probs).tolist() == [NON_GLAND, GLAND, BOTH, GLAND, NON_GLAND]


def test_accepting_proposals_keeps_the_pathologists_tags(own_project):
    cfg = preset("tiny").patches
    t = Tagger(own_project, "a", cfg)
    assert t.propose() is None and not t.accept_proposals()  # no model yet: nothing to propose
    mask = np.zeros(own_project.shape("a"), np.uint8)
    mask[:, :140] = 1  # a "prediction": gland on the left half
    own_project.write("a", "prediction", mask)
    proposals = t.propose()
    assert t.proposal_source == "segmentation"
    assert proposals[t.patch_at(50, 20)] == GLAND and proposals[t.patch_at(50, 270)] == NON_GLAND
    assert proposals[t.patch_at(50, 140)] == BOTH
    t.set_at(50, 20, NON_GLAND)  # the pathologist disagrees here
    assert t.accept_proposals()
    k = t.patch_at(50, 20)
    assert t.tags[k] == NON_GLAND and (np.delete(t.tags, k) == np.delete(proposals, k)).all()
    assert t.undo() and (np.delete(t.tags, k) == UNLABELLED).all()  # accepting all is one undo step


def test_a_kill_during_tag_saves_leaves_the_last_saved_tags_or_the_ones_being_saved(own_project):
    """SIGKILL in the middle of a stream of saves (a crash, a power cut): the tags file reads, holding the last
    save reported or the one under way, never a mix; its undo stack is whole; the lock is free again."""
    import subprocess
    import sys
    import textwrap
    import time

    cfg = preset("tiny").patches
    n = len(Tagger(own_project, "a", cfg).corners)
    code = textwrap.dedent(f"""
        import numpy as np
        from pipeline.store import ProjectStore

        store = ProjectStore.open({str(own_project.path)!r})
        for i in range(10**6):
            store.save_patch_tags("a", np.random.default_rng(i).integers(0, 4, {n}), {cfg.size}, {cfg.stride})
            print(i, flush=True)
    """)

    def tags_of(i: int) -> np.ndarray:
        return np.random.default_rng(i).integers(0, 4, n).astype(np.uint8)

    for delay in (0.0, 0.05, 0.23):  # killed at moments that vary against the saves' rhythm
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(5):  # a few saves done
            assert proc.stdout.readline(), "the saving process died on its own"
        time.sleep(delay)
        proc.kill()
        rest, _ = proc.communicate(timeout=60)
        reported = [int(line) for line in rest.split()]
        last = reported[-1] if reported else 4
        store = ProjectStore.open(own_project.path)
        tags, size, stride = store.patch_tags("a")
        found = next((i for i in (last, last + 1) if np.array_equal(tags, tags_of(i))), None)
        assert found is not None, f"after save {last}: neither it nor the next one is on disk"
        assert (size, stride) == (cfg.size, cfg.stride)
        assert store.undo_patch_tags("a")  # the stack behind it reads too, and the lock was let go
        previous = store.patch_tags("a")
        assert previous is not None and np.array_equal(previous[0], tags_of(found - 1))
