"""The whole method on the embedded sample data with the tiny preset: numbers, resume, cancel, bad input."""
import numpy as np
import pytest
import torch

from pipeline.errors import OEEMError
from pipeline.progress import run
from pipeline.stages.cams import make_cams
from pipeline.stages.classify import train_classifier
from pipeline.stages.infer import evaluate, predict_probs, sliding_logits
from pipeline.stages.segment import load_segmenter, train_segmenter


def test_every_stage_wrote_its_arrays(trained_project):
    store, _, report = trained_project
    for n in store.names("train"):
        h, w = store.shape(n)
        cam = store.read(n, "cam")
        assert cam.shape == (2, h, w) and cam.dtype == np.float32 and np.isfinite(cam).all()
        assert store.read(n, "pseudo").dtype == np.uint8
        assert set(np.unique(store.read(n, "pseudo"))) <= {0, 1}
    for n in store.names():
        assert store.read(n, "prob").shape == store.shape(n)
        assert store.read(n, "prediction").shape == store.shape(n)
    for stage in ("patches", "classifier", "cams", "segmentation", "predict", "config"):
        assert (store.path / "runs" / f"{stage}.json").is_file()
    assert store.checkpoint_path("classifier").is_file() and store.checkpoint_path("segmentation").is_file()


def test_pseudo_masks_beat_chance_and_the_segmentation_learns(trained_project):
    store, _, report = trained_project
    # the sample's glands cover ~40 %: predicting one class everywhere scores mIoU < 35
    assert report["cams"]["pseudo"]["mIoU"] > 55
    assert report["evaluation-test"]["mIoU"] > 45
    ev = evaluate(store, "test")
    assert ev["mIoU"] == pytest.approx(report["evaluation-test"]["mIoU"])
    assert set(ev["per_image"]) == set(store.names("test"))


def test_refined_pseudo_mask_respects_patch_labels(trained_project):
    """Eq. 2: inside a patch labelled gland-only (or non-gland-only) the pseudo-mask can only hold that class
    where no overlapping patch votes otherwise; a whole image of single-class patches is that class."""
    from pipeline.stages.cams import refine_patches

    cam = np.random.default_rng(0).normal(size=(3, 2, 4, 4))
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    out = refine_patches(cam, labels)
    assert (out[0] == 0).all() and (out[1] == 1).all()
    assert np.array_equal(out[2], cam[2].argmax(0))


def test_classifier_resumes_from_its_checkpoint(project_copy):
    store, cfg = project_copy
    rec = run(train_classifier(store, cfg.classifier, cfg.patches, "cpu"))
    assert rec["epochs_run"] == 0  # all epochs were done: nothing to repeat
    cfg.classifier.lr = 0.123
    with pytest.raises(OEEMError, match="a checkpoint made with other settings exists; pass --redo"):
        run(train_classifier(store, cfg.classifier, cfg.patches, "cpu"))
    with pytest.raises(OEEMError, match="'overwrite' is not one of error, restart"):
        run(train_classifier(store, cfg.classifier, cfg.patches, "cpu", on_mismatch="overwrite"))
    assert store.checkpoint_path("classifier").is_file()  # a typo never touches the model


def test_an_epoch_on_few_patches_passes_over_them_until_it_has_its_steps(project_copy):
    """A few tagged images: each epoch makes whole passes until it has trained ``min_epoch_steps`` steps, so the
    classifier trains as long as on a whole dataset (docs/benchmarks.md, weak labels)."""
    store, cfg = project_copy
    n = store.load_run("classifier")["n_patches"]
    per_pass = n // cfg.classifier.batch_size
    cls = cfg.classifier
    assert cls.passes_for(n) == cls.epochs  # the fixture's setting: an epoch is one pass
    cls.min_epoch_steps = per_pass + per_pass // 2  # 1.5 passes per epoch: 3 epochs -> 4.5 -> 5 whole passes
    messages = []
    rec = run(train_classifier(store, cls, cfg.patches, "cpu", on_mismatch="restart"),
              lambda p: p.message and messages.append(p.message))
    assert cls.epochs == 3 and rec["passes"] == rec["epochs_run"] == 5
    assert "pass 5/5" in messages and not any(m.startswith("epoch ") for m in messages)
    assert torch.load(store.checkpoint_path("classifier"), weights_only=True)["epoch"] == 5
    assert run(train_classifier(store, cls, cfg.patches, "cpu"))["epochs_run"] == 0  # done: resumes to nothing
    cls.min_epoch_steps = per_pass - 1  # a pass already has the steps: nothing added
    assert cls.passes_for(n) == 3


def test_changed_settings_restart_and_keep_the_previous_model(project_copy):
    """`oeem run` and the plugin train afresh when the settings changed, keeping the old model aside."""
    store, cfg = project_copy
    old = torch.load(store.checkpoint_path("segmentation"), weights_only=True)
    cfg.segmentation.iterations = 2
    notes = []
    rec = run(train_segmenter(store, cfg.segmentation, "cpu", on_mismatch="restart"),
              lambda p: p.notice and notes.append(p.notice))
    assert rec["iterations_run"] == 2
    assert notes and "previous model kept as segmentation.previous.pt" in notes[0]
    kept = torch.load(store.path / "checkpoints" / "segmentation.previous.pt", weights_only=True)
    assert kept["iteration"] == old["iteration"] and kept["config"] == old["config"]
    assert torch.load(store.checkpoint_path("segmentation"), weights_only=True)["iteration"] == 2


def test_cancel_keeps_a_checkpoint_and_resume_finishes(project_copy):
    store, cfg = project_copy
    cfg.segmentation.iterations = 8
    cfg.segmentation.checkpoint_every = 100
    job = train_segmenter(store, cfg.segmentation, "cpu", run_name="cancel", restart=True)
    for p in job:
        if p.step == 3:
            break
    job.close()  # what napari's worker.quit() does
    ck = torch.load(store.checkpoint_path("segmentation-cancel"), weights_only=True)
    assert ck["iteration"] == 3
    rec = run(train_segmenter(store, cfg.segmentation, "cpu", run_name="cancel"))
    assert rec["iterations_run"] == 5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(project_copy):
    store, cfg = project_copy
    cfg.segmentation.lr = 1e12
    cfg.segmentation.iterations = 30
    cfg.segmentation.checkpoint_every = 1
    with pytest.raises(OEEMError, match="loss became .* stopped. The last good checkpoint"):
        run(train_segmenter(store, cfg.segmentation, "cpu", run_name="nan", restart=True))
    ck = torch.load(store.checkpoint_path("segmentation-nan"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_training_before_pseudo_masks_says_which_command(small_folder, tmp_path):
    from pipeline.store.project import create_project
    from tests.conftest import tiny_config

    store = create_project(small_folder, tmp_path / "p.zarr")
    with pytest.raises(OEEMError, match="run `oeem cams"):
        run(train_segmenter(store, tiny_config().segmentation, "cpu"))
    with pytest.raises(OEEMError, match="run `oeem patches"):
        run(train_classifier(store, tiny_config().classifier, tiny_config().patches, "cpu"))
    with pytest.raises(OEEMError, match="run `oeem train-cls"):
        run(make_cams(store, tiny_config().cam, tiny_config().patches, "cpu"))


def test_batched_windows_equal_one_at_a_time(trained_project):
    store, cfg, _ = trained_project
    model, _ = load_segmenter(store)
    x = torch.randn(1, 3, 150, 230)
    a = sliding_logits(model, x, 96, 64, batch_size=8)
    b = sliding_logits(model, x, 96, 64, batch_size=1)
    assert a.shape == (1, 2, 150, 230)
    assert torch.allclose(a, b, atol=1e-4)


def test_multiscale_flip_prediction_is_a_distribution(trained_project):
    from pipeline.config import InferConfig

    store, _, _ = trained_project
    model, _ = load_segmenter(store)
    image = store.image(store.names("test")[0])
    prob = predict_probs(model, image, InferConfig(scales=(0.75, 1.0, 1.5), flip=True, crop_size=96, stride=64),
                         torch.device("cpu"))
    assert prob.shape == (2, *image.shape[:2])
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)


def test_all_eight_orientations_average_the_predictions_of_the_turned_images(trained_project):
    """``inference.dihedral``: the prediction of an image is the average of the network's predictions of its 8
    mirrored and turned copies, each put back in place - so it does not change when the image is turned."""
    from pipeline.config import InferConfig
    from pipeline.stages.infer import orient

    store, _, _ = trained_project
    model, seg = load_segmenter(store)
    image = store.image(store.names("test")[0])[:150, :230]  # not square: a turn swaps height and width
    one = InferConfig(scales=(1.0,), flip=False, crop_size=96, stride=64, precision="fp32")
    eight = InferConfig(scales=(1.0,), dihedral=True, crop_size=96, stride=64, precision="fp32")
    assert len(eight.orientations()) == 8 == len(set(eight.orientations()))
    prob = predict_probs(model, image, eight, torch.device("cpu"), seg)
    by_hand = np.mean([orient(torch.from_numpy(predict_probs(
        model, np.ascontiguousarray(orient(torch.from_numpy(image).permute(2, 0, 1), *o).permute(1, 2, 0).numpy()),
        one, torch.device("cpu"), seg)), *o, back=True).numpy() for o in eight.orientations()], axis=0)
    assert prob.shape == (2, 150, 230)
    np.testing.assert_allclose(prob, by_hand, atol=1e-4)
    turned = predict_probs(model, np.ascontiguousarray(image.transpose(1, 0, 2)[::-1]), eight, torch.device("cpu"),
                           seg)
    np.testing.assert_allclose(turned, prob.transpose(0, 2, 1)[:, ::-1], atol=1e-4)
    assert np.abs(prob - predict_probs(model, image, one, torch.device("cpu"), seg)).max() > 1e-3


def test_too_large_an_image_is_refused_with_advice():
    from pipeline.config import InferConfig
    from pipeline.stages.infer import check_memory

    with pytest.raises(OEEMError, match="--scales 1"):
        check_memory((200_000, 200_000), InferConfig())


@pytest.mark.glas
def test_whole_method_on_a_few_real_glas_images(glas_root, tmp_path):
    """Real GlaS sizes (not multiples of the patch grid, differing between images) through every stage."""
    from PIL import Image

    from pipeline.config import preset
    from pipeline.io.data import find_samples
    from pipeline.stages.run import run_all
    from pipeline.store import ProjectStore

    train = find_samples(glas_root / "train")
    first = Image.open(train[0].image_path).size
    other = next(s for s in train if Image.open(s.image_path).size != first)
    samples = [train[0], train[1], other] + find_samples(glas_root / "testA")[:2]
    store = ProjectStore.create(tmp_path / "glas.oeem.zarr", samples)
    assert len({store.shape(n) for n in store.names()}) > 1  # mixed sizes
    cfg = preset("tiny")
    cfg.classifier.epochs = 1
    cfg.segmentation.iterations = 3
    report = run(run_all(store, cfg, "cpu"))
    for n in store.names("train"):
        assert store.read(n, "cam").shape == (2, *store.shape(n))
        assert store.read(n, "pseudo").shape == store.shape(n)
    for n in store.names():
        assert store.read(n, "prediction").shape == store.shape(n)
    assert 0 < report["cams"]["pseudo"]["mIoU"] <= 100
    assert 0 < report["evaluation-test"]["mIoU"] <= 100 and report["evaluation-test"]["images"] == 2


def test_a_run_says_where_and_in_what_precision_it_computes(trained_project):
    from pipeline.device import compute_plan

    _, _, report = trained_project
    assert report["plan"].startswith("computing on the CPU (") and ("in fp32 (" in report["plan"]
                                                                   or "in bf16 (" in report["plan"])
    assert "asked for" in compute_plan("cpu", "fp32")
    assert "auto: " in compute_plan("cpu", "auto")
