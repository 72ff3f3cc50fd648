"""The preview learned from tags in seconds (``pipeline.review.preview``): it finds glands from a few tags, learns
from each new tag, keeps its features between tags, stands in for proposals without a model, and ``oeem preview``
writes a mask for every image from the best model there is."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.config import PatchConfig, PreviewConfig
from pipeline.errors import OEEMError
from pipeline.io.patch_labels import GLAND, NON_GLAND, vectors_to_tags
from pipeline.io.synth import synth_tissue
from pipeline.metrics import score
from pipeline.review import preview as pv
from pipeline.review.preview import ProjectPreview
from pipeline.review.tagging import Tagger
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.store.project import create_project

SIZE = (336, 448)
PATCHES = PatchConfig()


@pytest.fixture
def tissue_project(tmp_path):
    """Three synthetic H&E images without masks (the truth kept aside) in a project."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    truth = {}
    for k in range(3):
        image, mask = synth_tissue(*SIZE, seed=40 + k)
        Image.fromarray(image).save(folder / f"t{k}.png")
        truth[f"t{k}"] = mask
    return create_project(folder, tmp_path / "p.oeem.zarr"), truth


def truth_tags(store, name: str, mask: np.ndarray) -> np.ndarray:
    corners = patch_grid(store.shape(name), PATCHES.size, PATCHES.stride)
    return vectors_to_tags(patch_labels(mask, corners, PATCHES.size, PATCHES.min_fraction))


def test_no_tags_gives_one_line_saying_what_to_tag(tissue_project):
    store, _ = tissue_project
    with pytest.raises(OEEMError, match="tag some patches 'gland only' .1. and some 'no gland' .2."):
        ProjectPreview(store, PATCHES).predict("t0")
    store.save_patch_tags("t0", np.full(len(patch_grid(SIZE, 112, 56)), GLAND, np.uint8), 112, 56)
    with pytest.raises(OEEMError, match="no 'no gland' patch"):
        ProjectPreview(store, PATCHES).predict("t0")


def test_tags_of_two_images_find_the_glands_of_the_third(tissue_project):
    store, truth = tissue_project
    for name in ("t0", "t1"):
        store.save_patch_tags(name, truth_tags(store, name, truth[name]), 112, 56)
    found = ProjectPreview(store, PATCHES).predict("t2")
    assert found.probability.shape == SIZE and found.probability.dtype == np.float32
    assert 0 <= found.probability.min() and found.probability.max() <= 1
    got = score([found.mask], [truth["t2"]])["mIoU"]
    assert got > 80, got  # an untagged image (92 here): far above chance (all gland or all background: 16-34)
    assert "forest" in found.source


def test_a_new_tag_refits_on_cached_features(tissue_project, monkeypatch):
    store, truth = tissue_project
    calls = []
    real = pv.pixel_features
    monkeypatch.setattr(pv, "pixel_features", lambda image, cfg: calls.append(1) or real(image, cfg))
    tags = truth_tags(store, "t0", truth["t0"])
    store.save_patch_tags("t0", tags, 112, 56)
    model = ProjectPreview(store, PATCHES)
    first = model.predict("t0")
    assert len(calls) == 1 and model.pixels == np.isin(tags, (GLAND, NON_GLAND)).sum() * 30
    # the pathologist calls a gland-only patch "no gland": the forest learns it at once, no feature recomputed
    k = int(np.flatnonzero(tags == GLAND)[0])
    tagger = Tagger(store, "t0", PATCHES)
    assert tagger.set_patches([k], NON_GLAND)
    second = model.predict("t0")
    assert len(calls) == 1
    assert model._samples["t0"].labels[k].tolist() == [0] * 30
    assert not np.array_equal(first.probability, second.probability)
    # nothing changed: no re-fit (the same forest object answers)
    forest = model._model
    model.predict("t0")
    assert model._model is forest and len(calls) == 1


def test_a_changed_image_rebuilds_its_features(tissue_project):
    store, truth = tissue_project
    store.save_patch_tags("t0", truth_tags(store, "t0", truth["t0"]), 112, 56)
    model = ProjectPreview(store, PATCHES)
    before = model.features("t0").copy()
    store.write("t0", "image", np.ascontiguousarray(store.image("t0")[:, ::-1]))  # re-imported, mirrored
    after = model.features("t0")
    assert not np.array_equal(before, after)
    assert "t0" not in model._samples  # its sampled pixels go with it


def test_masks_count_as_labels(tissue_project):
    store, truth = tissue_project
    store.write("t0", "mask", truth["t0"])
    model = ProjectPreview(store, PATCHES, PreviewConfig(max_samples=100_000))
    model.fit()
    assert model.images == 1 and model.pixels == len(patch_grid(SIZE, 112, 56)) * 30


def test_proposals_without_a_model_come_from_the_preview(tissue_project):
    store, truth = tissue_project
    store.save_patch_tags("t0", truth_tags(store, "t0", truth["t0"]), 112, 56)
    tagger = Tagger(store, "t1", PATCHES)
    proposals = tagger.propose()
    assert tagger.proposal_source == "preview" and proposals is not None
    agree = (proposals == truth_tags(store, "t1", truth["t1"])).mean()
    assert agree > 0.6, agree
    assert tagger.accept_proposals() and (tagger.tags == proposals).all()


def test_cli_preview_writes_a_mask_for_every_image(tissue_project, tmp_path, capsys):
    store, truth = tissue_project
    assert main(["preview", str(store.path)]) == 2
    assert "tag some patches" in capsys.readouterr().err
    store.save_patch_tags("t0", truth_tags(store, "t0", truth["t0"]), 112, 56)
    out = tmp_path / "masks"
    assert main(["preview", str(store.path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 3 preview mask(s)" in text and text.count(" s (pixel classifier") == 3
    for name in ("t0", "t1", "t2"):
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == SIZE and set(np.unique(mask)) <= {0, 255}
    assert score([np.asarray(Image.open(out / "t2.png")) > 0], [truth["t2"]])["mIoU"] > 55
    assert main(["preview", str(store.path), "--images", "t1"]) == 0
    assert (store.path / "preview" / "t1.png").is_file()
    assert main(["preview", str(store.path), "--images", "nope"]) == 2
    assert "no image named nope" in capsys.readouterr().err


def test_suggest_asked_to_use_the_preview_picks_where_it_is_least_sure(tissue_project):
    from pipeline.stages.patches import patch_means
    from pipeline.review.suggest import PER_IMAGE, suggest

    store, truth = tissue_project
    model = ProjectPreview(store, PATCHES)
    picks = suggest(store, PATCHES, top=3, preview=model)  # no tags: nothing to learn from, spread over the images
    assert [p.image for p in picks] and all("spread" in p.reason for p in picks)
    store.save_patch_tags("t0", truth_tags(store, "t0", truth["t0"]), 112, 56)
    assert all("spread" in p.reason for p in suggest(store, PATCHES, top=3))  # the default: not the preview
    picks = suggest(store, PATCHES, top=3, preview=model)
    assert {p.image for p in picks} == {"t1", "t2"}  # t0 is fully tagged
    assert all("preview" in p.reason for p in picks) and picks[0].score >= picks[1].score
    for p in picks:  # the patches shown are the ones the preview is least sure about
        corners = patch_grid(SIZE, 112, 56)
        prob = model.predict(p.image).probability
        unsure = patch_means(1 - np.abs(2 * prob - 1), corners, 112)
        chosen = [unsure[int(np.flatnonzero((corners == c).all(1))[0])] for c in p.patches]
        assert len(chosen) == PER_IMAGE and min(chosen) >= np.sort(unsure)[-PER_IMAGE] - 1e-6
        assert abs(p.score - float(np.mean(chosen))) < 1e-5
