"""Mixed precision (bf16 autocast + channels-last): what ``auto`` picks, that every stage records what it used,
and that bf16 predictions agree with fp32 ones on the same weights."""
import numpy as np
import pytest
import torch

from pipeline import device as progress
from pipeline.config import BackboneConfig, InferConfig, SegConfig, check, preset
from pipeline.device import resolve_precision
from pipeline.errors import OEEMError
from pipeline.progress import run


def test_auto_follows_the_hardware_and_explicit_choices_are_kept(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(progress, "_cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) is None  # emulated bf16 is slower than fp32: auto keeps fp32
    monkeypatch.setattr(progress, "_cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) is torch.bfloat16
    with pytest.raises(OEEMError, match="fp32"):
        resolve_precision("half", cpu)


def test_a_bad_precision_setting_is_refused_before_a_run():
    cfg = preset("cpu")
    cfg.inference.precision = "fp16"
    with pytest.raises(OEEMError, match="inference.precision must be one of auto, fp32, bf16"):
        check(cfg)


def small_unet() -> SegConfig:
    return SegConfig(backbone=BackboneConfig(name="unet", widths=(8, 16, 32)), decoder="unet", head_channels=16,
                     working_scale=0.5, input_norm="glas")


def test_training_in_bf16_learns_and_records_its_precision(tmp_path, small_folder):
    from pipeline.stages.segment import load_segmenter, train_segmenter
    from pipeline.store.project import create_project

    store = create_project(small_folder, tmp_path / "p.zarr")
    seg = small_unet()
    seg.label_source, seg.precision, seg.loss = "mask", "bf16", "ce"
    seg.tile_size, seg.tile_stride, seg.crop_size, seg.ratio_range = 64, 48, 64, (0.75, 1.25)
    seg.iterations, seg.batch_size, seg.checkpoint_every, seg.lr = 30, 4, 10, 0.05
    record = run(train_segmenter(store, seg, "cpu"))
    assert record["precision"] == "bf16"
    history = record["loss_history"]
    assert all(np.isfinite(history)) and np.mean(history[-10:]) < np.mean(history[:10])
    model, saved = load_segmenter(store)
    assert saved.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32; only the maths is bf16

    # the same weights predict alike in both precisions
    from pipeline.stages.infer import predict_probs

    image = store.image(store.names("test")[0])
    cfg = InferConfig(scales=(1.0,), flip=True, crop_size=64, stride=48, precision="fp32")
    fp32 = predict_probs(model, image, cfg, "cpu", saved)
    cfg.precision = "bf16"
    bf16 = predict_probs(model, image, cfg, "cpu", saved)
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (2, *image.shape[:2])
    assert fp32[1].std() > 0.05  # a prediction with structure, not a constant
    assert np.abs(fp32 - bf16).max() < 0.1
    assert (fp32.argmax(0) == bf16.argmax(0)).mean() > 0.98
