"""Issue 10's levers: the U-Net at a working resolution, weight transfer from the stage-1 classifier, H&E stain
augmentation, the validation split and self-training rounds - each checked for what it must do."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import GLAS_MEAN, GLAS_STD, IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, InferConfig, preset
from pipeline.errors import OEEMError
from pipeline.progress import run
from pipeline.stages.postprocess import clean_mask

SMALL = dict(widths=(8, 16, 24, 32), blocks=(1, 1, 1, 1))


def tiny_cpu_config():
    """The cpu preset's structure (plain U-Net at half resolution, one self-training round) at test size."""
    cfg = preset("cpu")
    cfg.classifier.backbone = BackboneConfig(**SMALL)
    cfg.classifier.epochs = 2
    cfg.classifier.min_epoch_steps = 0  # one pass per epoch over the sample's few patches
    cfg.classifier.batch_size = 16
    cfg.cam.scales = (1.0,)
    seg = cfg.segmentation
    seg.backbone = BackboneConfig(name="unet", widths=(8, 16, 24, 32))
    seg.head_channels, seg.iterations, seg.batch_size, seg.checkpoint_every = 16, 40, 4, 20
    seg.full_iterations = 60  # fully supervised trains longer, as in the preset
    cfg.selftrain.last_round_scale = 1.25  # and so does the last self-training round: 50 iterations
    seg.tile_size, seg.tile_stride, seg.crop_size = 96, 64, 96
    cfg.classifier.threads = seg.threads = 2
    return cfg


@pytest.fixture(scope="module")
def cpu_project(tmp_path_factory):
    """The sample data through `run_all` with the cpu preset's structure: validation split, plain U-Net, the
    preset's self-training rounds."""
    from pipeline.stages.run import run_all
    from pipeline.store.project import create_project

    store = create_project("sample", tmp_path_factory.mktemp("cpu") / "p.oeem.zarr", val_images=2)
    cfg = tiny_cpu_config()
    report = run(run_all(store, cfg, "cpu"))
    return store, cfg, report


@pytest.fixture
def cpu_copy(cpu_project, tmp_path):
    """A private copy of the cpu-structured project that a test may change."""
    import shutil

    from pipeline.store import ProjectStore

    src, cfg, _ = cpu_project
    shutil.copytree(src.path, tmp_path / "p.zarr")
    return ProjectStore.open(tmp_path / "p.zarr"), cfg


def test_cpu_preset_end_to_end_with_validation_and_self_training(cpu_project):
    store, cfg, report = cpu_project
    val = store.names("val")
    assert len(val) == 2 and not set(val) & set(store.names("train"))
    # no stage trained on the validation images, but they are scored
    assert store.load_run("patches")["summary"]["val_images"] == 2
    assert report["evaluation-val"]["images"] == 2 and report["evaluation-test"]["images"] == 4
    assert "val" in report["cams"] and 0 < report["cams"]["val"]["pseudo"]["mIoU"] <= 100
    # the preset's self-training rounds, and the final model trained on the last round's labels - longer, and
    # starting from the model that made them
    rounds = cfg.selftrain.rounds
    assert rounds >= 1 and store.pseudo_round == rounds
    assert all(f"selftrain-round-{r}" in report for r in range(1, rounds + 1))
    assert [r["round"] for r in store.load_run("selftrain")["rounds"]] == list(range(1, rounds + 1))
    seg = store.load_run("segmentation")
    assert seg["labels_round"] == rounds and seg["initialised_from"].endswith("segmentation.previous.pt")
    assert seg["config"]["iterations"] == seg["iterations_run"] == 50
    previous = torch.load(store.path / "checkpoints" / "segmentation.previous.pt", weights_only=True)
    assert previous["labels_round"] == rounds - 1 and previous["config"]["iterations"] == 40
    assert seg["precision"] in ("fp32", "bf16") and seg["config"]["backbone"]["name"] == "unet"
    assert store.load_run("predict")["images"] == len(store.names())
    inf = cfg.inference
    assert inf.drop_glands_below > 0 and inf.fill_holes_below > 0
    for n in store.names():
        prediction = store.read(n, "prediction")
        assert prediction.shape == store.shape(n)  # scored at the original size
        # what is written is the preset's cleaned mask of the stored probability
        cleaned = clean_mask(store.read(n, "prob") > 0.5, inf.drop_glands_below, inf.fill_holes_below)
        assert (prediction == cleaned).mean() > 0.9999
    assert report["evaluation-test"]["mIoU"] > 45  # one class everywhere scores < 35 on the sample


def test_run_all_again_does_nothing_new(cpu_project):
    from pipeline.stages.run import run_all

    store, cfg, _ = cpu_project
    stages = []
    run(run_all(store, cfg, "cpu"), lambda p: stages.append(p.stage))
    assert not {"classifier", "segmentation", "selftrain", "predict"} & set(stages)


def test_encoder_starts_from_the_classifier_weights(cpu_project):
    """Selectable (segmentation.init_from_classifier): a ResNet encoder of the classifier's widths starts from it."""
    from dataclasses import replace

    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import init_from_classifier

    store, cfg, _ = cpu_project
    resnet = replace(cfg.segmentation, backbone=BackboneConfig(**SMALL, output_stride=16), init_from_classifier=True)
    model = build_segmenter(resnet)
    init_from_classifier(model, store, resnet)
    cls = torch.load(store.checkpoint_path("classifier"), weights_only=True)["model"]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, cls[f"backbone.{key}"]), key
    # OS 8 (classifier) and OS 16 (U-Net encoder) share every weight shape; only strides differ
    assert model.backbone.stages[3][0].conv1.stride == (2, 2)


def test_mismatched_classifier_is_refused_naming_both(cpu_project):
    from dataclasses import replace

    from pipeline.stages.models import build_segmenter
    from pipeline.stages.segment import init_from_classifier

    store, cfg, _ = cpu_project
    wide = replace(cfg.segmentation, init_from_classifier=True,
                   backbone=BackboneConfig(widths=(16, 32, 48, 64), blocks=(1, 1, 1, 1), output_stride=16))
    with pytest.raises(OEEMError, match=r"classifier checkpoint .*classifier\.pt .*widths.* does not fit the "
                                        r"segmentation backbone .*widths \[16, 32, 48, 64\]"):
        init_from_classifier(build_segmenter(wide), store, wide)


def test_plain_unet_encoder_keeps_full_resolution_and_refuses_classifier_weights(cpu_project):
    """The plain U-Net encoder (the strongest network measured on GlaS, benchmarks/ablation.py) has a stage at
    the input's resolution, gives logits at the input size, and cannot start from the ResNet classifier."""
    from dataclasses import replace

    from pipeline.stages.models import PlainEncoder, build_segmenter
    from pipeline.stages.segment import init_from_classifier

    store, cfg, _ = cpu_project
    plain = replace(cfg.segmentation, backbone=BackboneConfig(name="unet", widths=(8, 16, 32, 64)),
                    head_channels=16)
    model = build_segmenter(plain).eval()
    assert isinstance(model.backbone, PlainEncoder)
    feats = model.backbone(torch.zeros(1, 3, 96, 128))
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16]  # stride 1, 2, 4, 8
    assert len(model.decoders) == 3 and model(torch.zeros(2, 3, 96, 128)).shape == (2, 2, 96, 128)
    with pytest.raises(OEEMError, match="does not fit the segmentation backbone \\(unet"):
        init_from_classifier(model, store, plain)
    with pytest.raises(OEEMError, match="at least three widths"):
        build_segmenter(replace(plain, backbone=BackboneConfig(name="unet", widths=(8, 16))))


def test_input_normalisation_follows_the_model_settings():
    """A model trained on GlaS-normalised input must be fed GlaS-normalised input at prediction."""
    from pipeline.config import SegConfig
    from pipeline.stages.infer import predict_probs

    def red_channel(x):  # logits (value, 0): the softmax tells the normalised red value back
        return torch.stack([x[:, 0], torch.zeros_like(x[:, 0])], 1)

    image = np.full((40, 50, 3), 128, np.uint8)
    for norm, (mean, std) in (("glas", (GLAS_MEAN, GLAS_STD)), ("imagenet", (IMAGENET_MEAN, IMAGENET_STD))):
        prob = predict_probs(red_channel, image, InferConfig(scales=(1.0,), flip=False, crop_size=64, stride=48),
                             torch.device("cpu"), SegConfig(input_norm=norm))
        value = (128 / 255 - mean[0]) / std[0]
        np.testing.assert_allclose(prob[0], 1 / (1 + np.exp(-value)), atol=1e-5)


def test_prediction_at_the_original_size_from_half_resolution():
    from pipeline.config import SegConfig
    from pipeline.stages.infer import predict_probs

    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    image = np.zeros((101, 77, 3), np.uint8)
    prob = predict_probs(model, image, InferConfig(scales=(1.0,), flip=False, crop_size=128, stride=96),
                         torch.device("cpu"), SegConfig(working_scale=0.5))
    assert prob.shape == (2, 101, 77)
    assert seen == [(128, 128)]  # one window: the 51 x 38 half-size image padded to the crop


def test_training_tiles_at_the_working_scale_and_padding_recorded(tmp_path, small_folder):
    from pipeline.stages.segment import tile_dataset
    from pipeline.store.project import create_project

    store = create_project(small_folder, tmp_path / "p.zarr")
    cfg = tiny_cpu_config().segmentation
    cfg.label_source = "mask"
    cfg.tile_size, cfg.tile_stride, cfg.working_scale = 64, 48, 0.5  # images are 160 x 192 -> 80 x 96
    images, codes, padded = tile_dataset(store, cfg)
    assert images.shape[1:] == (64, 64, 3) and codes.shape[1:] == (64, 64) and padded == []
    assert len(images) == 4 * 2 * 2
    cfg.tile_size = 90  # larger than the 80 px side at half scale: padded with ignored pixels, and named
    images, codes, padded = tile_dataset(store, cfg)
    assert len(padded) == 4 and (codes == 255).any()


def test_full_supervision_trains_its_own_iterations(tmp_path, small_folder):
    from pipeline.config import check
    from pipeline.stages.segment import train_segmenter
    from pipeline.store.project import create_project

    cpu = preset("cpu").segmentation
    assert cpu.training_iterations() == cpu.iterations < cpu.full_iterations  # weak runs keep their schedule
    cpu.label_source = "mask"
    assert cpu.training_iterations() == cpu.full_iterations
    store = create_project(small_folder, tmp_path / "p.zarr")
    cfg = tiny_cpu_config().segmentation
    cfg.label_source, cfg.iterations, cfg.full_iterations = "mask", 3, 5
    seen = []
    rec = run(train_segmenter(store, cfg, "cpu", run_name="full"), lambda p: seen.append((p.step, p.total)))
    assert rec["iterations_run"] == 5 and len(rec["loss_history"]) == 5 and seen[-1] == (5, 5)
    cfg.full_iterations = 0  # 0: as iterations
    assert run(train_segmenter(store, cfg, "cpu", run_name="full0"))["iterations_run"] == 3
    bad = tiny_cpu_config()
    bad.segmentation.full_iterations = -1
    with pytest.raises(OEEMError, match="full_iterations must be >= 0"):
        check(bad)


def test_only_the_last_round_trains_longer():
    """selftrain.last_round_scale multiplies segmentation.iterations for the training on the last round's labels
    only; the check whether a training is done asks the same question (test_run_all_again_does_nothing_new)."""
    from pipeline.config import check

    cfg = tiny_cpu_config()
    cfg.selftrain.rounds = 2
    assert [cfg.segmentation_for_round(r).iterations for r in range(4)] == [40, 40, 50, 50]
    assert cfg.segmentation.iterations == 40  # the saved settings are not changed
    cfg.segmentation.iterations = 4  # a quick run stays quick: the last round scales with it
    assert cfg.segmentation_for_round(2).iterations == 5
    cfg.segmentation.iterations, cfg.selftrain.last_round_scale = 40, 1.0  # 1: as the other rounds
    assert cfg.segmentation_for_round(2) is cfg.segmentation
    cfg.selftrain.last_round_scale, cfg.selftrain.rounds = 1.25, 0  # no rounds: no last round to lengthen
    assert cfg.segmentation_for_round(0).iterations == 40
    cfg.selftrain.rounds, cfg.segmentation.label_source = 2, "mask"  # the gland masks have no rounds either
    assert cfg.segmentation_for_round(2).iterations == 40
    cfg.selftrain.last_round_scale = 0
    with pytest.raises(OEEMError, match="last_round_scale must be between 0 and 10"):
        check(cfg)


def test_self_training_round_bookkeeping(cpu_copy):
    from pipeline.stages.segment import train_segmenter
    from pipeline.stages.selftrain import next_round_labels, refine_round, refined_pseudo, reset_rounds

    store, cfg = cpu_copy
    n = store.names("train")[0]
    stage1 = store.read(n, "pseudo_cam")
    before = store.read(n, "pseudo")
    done = store.pseudo_round  # the preset's rounds, already run by the fixture
    preview = next_round_labels(store, n, cfg.patches.size, cfg.cam)  # what the round will write, nothing written
    assert np.array_equal(store.read(n, "pseudo"), before)
    entry = run(refine_round(store, cfg.patches.size, cam_cfg=cfg.cam))
    assert entry["round"] == store.pseudo_round == done + 1
    assert np.array_equal(store.read(n, "pseudo_cam"), stage1)  # stage 1's own is never overwritten
    refined = refined_pseudo(store.read(n, "prob"), store.read(n, "patch_corners"),
                             store.read(n, "patch_labels"), cfg.patches.size)
    # cleaned as stage 1's pseudo-masks are (the preset drops specks and fills lumens), and recorded
    assert cfg.cam.drop_glands_below > 0 and cfg.cam.fill_holes_below > 0
    assert entry["cleaning"] == {"drop_glands_below": cfg.cam.drop_glands_below,
                                 "fill_holes_below": cfg.cam.fill_holes_below}
    assert np.array_equal(store.read(n, "pseudo"),
                          clean_mask(refined, cfg.cam.drop_glands_below, cfg.cam.fill_holes_below))
    assert np.array_equal(store.read(n, "pseudo"), preview)
    rounds = store.load_run("selftrain")["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, done + 2)) and "train" in rounds[-1] and "val" in rounds[-1]
    assert entry["pixels_changed"] >= int((store.read(n, "pseudo") != before).sum())
    # a model trained on the previous round's labels is not silently resumed on the new round's
    with pytest.raises(OEEMError, match="a checkpoint made with other (settings|labels)"):
        run(train_segmenter(store, cfg.segmentation, "cpu"))
    assert reset_rounds(store) == len(store.names("train")) + len(store.names("val"))
    assert store.pseudo_round == 0 and np.array_equal(store.read(n, "pseudo"), stage1)


def test_refinement_obeys_the_patch_labels():
    from pipeline.stages.selftrain import refined_pseudo

    prob = np.full((8, 16), 0.9, np.float32)  # the network says gland everywhere
    corners = np.array([[0, 0], [0, 4], [0, 8]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])  # non-gland only, mixed, gland only
    out = refined_pseudo(prob, corners, labels, 8)
    assert (out[:, :4] == 0).all() and (out[:, 12:] == 1).all()
    assert (out[:, 8:12] == 1).all()  # mixed + gland-only agree; 4-8 is a tie (non-gland only vs mixed)
    assert (out[:, 4:8] == 0).all()


def test_self_training_before_a_prediction_names_the_command(tmp_path, small_folder):
    from pipeline.stages.classify import make_patch_labels
    from pipeline.stages.selftrain import refine_round
    from pipeline.store.project import create_project

    store = create_project(small_folder, tmp_path / "p.zarr")
    make_patch_labels(store, tiny_cpu_config().patches)
    with pytest.raises(OEEMError, match=r"no prediction yet .*run `oeem train-seg .*` and `oeem predict"):
        run(refine_round(store, 112))


def test_validation_split_is_seeded_and_bounded(tmp_path, small_folder):
    from pipeline.store.project import create_project, hold_out_validation

    a = create_project(small_folder, tmp_path / "a.zarr", val_images=1, seed=3)
    b = create_project(small_folder, tmp_path / "b.zarr", val_images=1, seed=3)
    assert a.names("val") == b.names("val") and len(a.names("train")) == 3
    with pytest.raises(OEEMError, match="at least one must stay for training"):
        hold_out_validation(a, 3)


def test_stain_change_matches_scikit_image_and_jitter_is_mild():
    from skimage.color import hed2rgb, rgb2hed

    from pipeline.io.synth import synth_tissue
    from pipeline.stages.augment import apply_stain_change, stain_jitter

    image, _ = synth_tissue(48, 48, seed=1)
    x = torch.tensor(image / 255, dtype=torch.float32).permute(2, 0, 1)[None]
    one, zero = torch.ones(1, 3), torch.zeros(1, 3)
    np.testing.assert_allclose(apply_stain_change(x, one, zero).numpy(), x.numpy(), atol=1e-5)  # exact identity
    # where the deconvolution holds (non-negative stains), the change is scikit-image's
    hed = rgb2hed(image / 255)
    alpha, beta = torch.tensor([[1.05, 0.95, 1.0]]), torch.tensor([[0.004, -0.003, 0.0]])
    ok = (hed >= 0).all(-1) & (hed * alpha.numpy() + beta.numpy() >= 0).all(-1) \
        & (np.abs(hed2rgb(hed) - image / 255) < 1e-4).all(-1)  # scikit-image's own round trip exact there
    assert ok.mean() > 0.5
    ours = apply_stain_change(x, alpha, beta)[0].permute(1, 2, 0).numpy()
    ref = hed2rgb(hed * alpha.numpy() + beta.numpy())
    np.testing.assert_allclose(ours[ok], ref[ok], atol=2e-3)
    jittered = stain_jitter(x.repeat(4, 1, 1, 1), 0.05, torch.Generator().manual_seed(0))
    change = float((jittered - x).abs().mean())
    assert jittered.shape == (4, 3, 48, 48) and 1e-3 < change < 0.08  # visible, but still the same tissue


def test_rot90_keeps_image_and_label_aligned():
    from pipeline.stages.augment import random_rot90

    label = torch.zeros(16, 8, 8, dtype=torch.long)
    label[:, :3, :2] = 1
    img = label[:, None].float().repeat(1, 3, 1, 1)
    out, lab = random_rot90(img, label, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0].long(), lab)
    assert len({tuple(l.nonzero()[0].tolist()) for l in lab}) > 1  # several orientations drawn


def test_old_projects_predict_with_the_model_they_hold(tmp_path, trained_project):
    """A checkpoint and run records written before these settings existed read as the paper's PSPNet."""
    import shutil

    from pipeline.stages.graph import stage_done
    from pipeline.stages.infer import predict
    from pipeline.stages.segment import load_segmenter
    from pipeline.store import ProjectStore
    from pipeline.store.project import project_config

    src, _, _ = trained_project
    shutil.copytree(src.path, tmp_path / "old.zarr")
    store = ProjectStore.open(tmp_path / "old.zarr")
    path = store.checkpoint_path("segmentation")
    ck = torch.load(path, weights_only=True)
    new_keys = ("decoder", "working_scale", "input_norm", "init_from_classifier", "rotate90", "stain_jitter")
    for key in new_keys:
        ck["config"].pop(key)
    ck["config"]["backbone"].pop("output_stride")
    ck.pop("labels_round")
    torch.save(ck, path)
    rec = json.loads((store.path / "runs" / "segmentation.json").read_text())
    for key in new_keys:
        rec["config"].pop(key)
    rec["config"]["backbone"].pop("output_stride")
    rec.pop("labels_round")
    (store.path / "runs" / "segmentation.json").write_text(json.dumps(rec))
    cfg_path = store.path / "runs" / "config.json"
    old_cfg = json.loads(cfg_path.read_text())
    old_cfg.pop("selftrain")
    for key in ("drop_glands_below", "fill_holes_below"):
        old_cfg["inference"].pop(key)
    cfg_path.write_text(json.dumps(old_cfg))

    model, seg_cfg = load_segmenter(store)
    assert seg_cfg.decoder == "psp" and seg_cfg.working_scale == 1.0 and seg_cfg.input_norm == "imagenet"
    cfg = project_config(store)
    assert stage_done(store, "segmentation", cfg)  # not retrained just because the code is newer
    assert cfg.inference.drop_glands_below == cfg.inference.fill_holes_below == 0  # its masks are not cleaned
    name = store.names("test")[0]
    rec = run(predict(store, cfg.inference, names=[name], device="cpu"))
    assert rec["images"] == 1
    assert ((store.read(name, "prob") > 0.5) == store.read(name, "prediction")).mean() > 0.9999


def test_gland_bias_moves_only_mixed_patches_toward_gland():
    from pipeline.stages.cams import pseudo_from_cam

    rng = np.random.default_rng(0)
    cam = rng.normal(size=(2, 16, 24)).astype(np.float32)
    corners = np.array([[0, 0], [0, 8], [0, 16], [8, 0], [8, 8], [8, 16]])
    labels = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [1, 1], [1, 1]])  # mixed, non-gland only, gland only...
    base = pseudo_from_cam(cam, corners, labels, 8, 0.0)
    more = pseudo_from_cam(cam, corners, labels, 8, 1.0)
    assert (more >= base).all() and more.sum() > base.sum()  # monotone: a bias only adds gland
    assert (base[:8, 8:16] == 0).all() and (more[:8, 8:16] == 0).all()  # the patch label still rules
    assert (base[:8, 16:] == 1).all()
    np.testing.assert_array_equal(base[8:], (cam[1] - cam[0] > 0)[8:])  # mixed patches: the CAM margin's sign
    assert (pseudo_from_cam(cam, corners, labels, 8, 100.0)[8:] == 1).all()


def test_new_pseudo_mask_settings_reuse_the_stored_cams(cpu_copy):
    import copy

    from pipeline.stages.cams import make_cams, pseudo_from_cam
    from pipeline.stages.classify import train_classifier

    store, cfg = cpu_copy
    n = store.names("train")[0]
    cam = store.read(n, "cam")
    cam_cfg = copy.deepcopy(cfg.cam)
    cam_cfg.gland_bias += 5.0
    cam_cfg.drop_glands_below = int(np.prod(store.shape(n))) + 1  # and other cleaning: every gland dropped
    rec = run(make_cams(store, cam_cfg, cfg.patches, "cpu"))
    assert rec["reused_cams"] and np.array_equal(store.read(n, "cam"), cam)
    raw = pseudo_from_cam(cam, store.read(n, "patch_corners"), store.read(n, "patch_labels"), cfg.patches.size,
                          cam_cfg.gland_bias)
    expected = clean_mask(raw, cam_cfg.drop_glands_below, cam_cfg.fill_holes_below)
    assert np.array_equal(store.read(n, "pseudo"), expected) and raw.any() and not expected.any()
    assert not store.has(n, "pseudo_cam")  # a new stage 1 result starts self-training over
    # a retrained classifier makes new CAMs
    run(train_classifier(store, cfg.classifier, cfg.patches, "cpu", restart=True))
    rec = run(make_cams(store, cam_cfg, cfg.patches, "cpu"))
    assert not rec["reused_cams"]


def test_weight_average_is_what_predicts_and_training_resumes_from_its_own_weights(cpu_copy):
    """segmentation.ema_decay: the checkpoint's model is the running average (decay ramped up from 0.1 at the first
    step), and a cancelled run resumes both the weights and their average."""
    from dataclasses import replace

    from pipeline.stages.segment import WeightAverage, load_segmenter, train_segmenter

    # the average by hand: decay min(0.9, (1 + step) / (10 + step)), buffers averaged, counters copied
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    for step, value in enumerate((1.0, 2.0)):
        for v in net.state_dict().values():
            v.fill_(value) if v.is_floating_point() else v.add_(1)
        avg.update(net, step)
    d0, d1 = 1 / 10, 2 / 11
    for key, v in avg.module.state_dict().items():
        expect = ((start[key] * d0 + (1 - d0) * 1.0) * d1 + (1 - d1) * 2.0) if v.is_floating_point() else start[key] + 2
        assert torch.allclose(v, expect.to(v.dtype)), key
    store, cfg = cpu_copy
    seg = replace(cfg.segmentation, ema_decay=0.9, iterations=2, full_iterations=0, checkpoint_every=100,
                  label_source="mask")
    run(train_segmenter(store, seg, "cpu", run_name="ema1"))
    ck = torch.load(store.checkpoint_path("segmentation-ema1"), weights_only=True)
    assert not all(torch.equal(v, ck["train_model"][k]) for k, v in ck["model"].items())
    model, _ = load_segmenter(store, "ema1")
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())
    # cancelled after 3 of 4 steps, resumed: the last step moves the saved average towards the resumed weights
    seg = replace(seg, iterations=4)
    job = train_segmenter(store, seg, "cpu", run_name="ema-cut")
    for p in job:
        if p.step == 3:
            break
    job.close()
    cut = torch.load(store.checkpoint_path("segmentation-ema-cut"), weights_only=True)
    assert cut["iteration"] == 3 and "train_model" in cut
    assert run(train_segmenter(store, seg, "cpu", run_name="ema-cut"))["iterations_run"] == 1
    end = torch.load(store.checkpoint_path("segmentation-ema-cut"), weights_only=True)
    d = 4 / 13  # the decay at step 3
    for key, v in end["model"].items():
        if v.is_floating_point():
            assert torch.allclose(v, d * cut["model"][key] + (1 - d) * end["train_model"][key], atol=1e-6), key
    bad = tiny_cpu_config()
    bad.segmentation.ema_decay = 1.0
    with pytest.raises(OEEMError, match=r"ema_decay must be between 0 and 1 \(\[0, 1\)\)"):
        from pipeline.config import check

        check(bad)


def test_warm_start_begins_from_the_model_that_made_the_labels(cpu_copy):
    """segmentation.warm_start: a self-training round's training starts from the previous round's model (moved
    aside as segmentation.previous.pt); without a previous round it starts from random init."""
    from dataclasses import replace

    from pipeline.stages.segment import train_segmenter
    from pipeline.stages.selftrain import refine_round

    store, cfg = cpu_copy
    before = torch.load(store.checkpoint_path("segmentation"), weights_only=True)
    run(refine_round(store, cfg.patches.size))  # the labels move on a round; the model made them
    seg = replace(cfg.segmentation, warm_start=True, iterations=1, lr=1e-9, min_lr=1e-10, checkpoint_every=100)
    rec = run(train_segmenter(store, seg, "cpu", on_mismatch="restart"))
    assert rec["initialised_from"].endswith("segmentation.previous.pt")
    after = torch.load(store.checkpoint_path("segmentation"), weights_only=True)
    assert after["labels_round"] == before["labels_round"] + 1
    from pipeline.stages.models import build_segmenter

    names = dict(build_segmenter(seg).named_parameters())
    for key in names:  # one step at a vanishing learning rate: still the previous round's weights
        assert torch.allclose(after["model"][key], before["model"][key], atol=1e-5), key
    # a previous round of another network is refused with what to do, not a state-dict traceback
    run(refine_round(store, cfg.patches.size))
    with pytest.raises(OEEMError, match="warm_start: the previous round's model .* is another network.*"
                                        "warm_start to false"):
        run(train_segmenter(store, replace(seg, head_channels=8), "cpu", on_mismatch="restart"))
    # the gland masks have no previous round: random init
    full = replace(seg, label_source="mask")
    assert run(train_segmenter(store, full, "cpu", run_name="full-ws"))["initialised_from"] is None


def test_patch_decided_marks_only_what_the_patch_labels_decide(monkeypatch):
    """A pixel is decided where Eq. 2 gives the same class whatever the margin; mixed patches that can swing the
    vote, and pixels no patch covers, are left to the margin (-1). (benchmarks/ablation.py gap's helper.)"""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from ablation import patch_decided

    corners = np.array([[0, 0], [0, 4], [0, 8]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])  # non-gland only, mixed, gland only
    out = patch_decided(corners, labels, 8, (8, 20))
    expected = [0] * 4 + [0] * 4 + [-1] * 4 + [1] * 4 + [-1] * 4  # 4-8: a tie is non-gland either way
    assert (out == np.array(expected)[None, :]).all()
