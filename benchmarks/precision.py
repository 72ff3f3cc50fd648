"""What bf16 autocast and channels-last memory buy on this machine, side by side in one run: seconds per training
step of each network the presets use (the cpu preset's batch and crop) and seconds per GlaS-sized prediction.

    python benchmarks/precision.py [--repeats 5]

The accuracy side (same weights, same run, fp32 vs bf16) is in benchmarks/ablation.py (`ce-plain` vs
`ce-plain-bf16`). Writes ``benchmarks/results/precision.json``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine, print_table, write_json

from pipeline.config import preset
from pipeline.device import _cpu_has_native_bf16, autocast
from pipeline.stages.infer import predict_probs
from pipeline.stages.models import build_classifier, build_segmenter

MODES = (("fp32", False, None), ("fp32 + channels-last", True, None), ("bf16 + channels-last", True, torch.bfloat16))


def step_seconds(model, x, loss_fn, nhwc: bool, dtype, repeats: int) -> float:
    model = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    inp = x.contiguous(memory_format=torch.channels_last) if nhwc else x

    def step():
        with autocast(x.device, dtype):
            out = model(inp)
        loss = loss_fn(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = preset("cpu")
    seg = cfg.segmentation
    resnet_unet = replace(seg, backbone=replace(cfg.classifier.backbone, output_stride=16), head_channels=32)
    b, c = seg.batch_size, seg.crop_size
    seg_x, seg_y = torch.randn(b, 3, c, c), torch.randint(0, 2, (b, c, c))
    cls_x = torch.randn(cfg.classifier.batch_size, 3, cfg.classifier.input_size, cfg.classifier.input_size)
    cls_y = torch.randint(0, 2, (cfg.classifier.batch_size, 2)).float()
    nets = {
        "classifier (resnet_os8, batch 20 x 112 px)":
            (lambda: build_classifier(cfg.classifier), cls_x,
             lambda out: F.binary_cross_entropy_with_logits(out.float(), cls_y)),
        "plain U-Net (the cpu preset, batch 8 x 192 px)":
            (lambda: build_segmenter(seg), seg_x, lambda out: F.cross_entropy(out.float(), seg_y)),
        "U-Net on the classifier's ResNet (earlier preset)":
            (lambda: build_segmenter(resnet_unet), seg_x, lambda out: F.cross_entropy(out.float(), seg_y)),
    }
    rows, out = [], {"machine": machine(), "native_bf16": _cpu_has_native_bf16(), "train_step_s": {},
                     "predict_s": {}}
    for name, (build, x, loss_fn) in nets.items():
        times = {}
        for mode, nhwc, dtype in MODES:
            torch.manual_seed(0)
            times[mode] = step_seconds(build(), x, loss_fn, nhwc, dtype, args.repeats)
        out["train_step_s"][name] = times
        base = times["fp32"]
        rows.append((f"train step: {name}", *(f"{times[m]:.3f} (x{base / times[m]:.2f})" for m, _, _ in MODES)))
    # one GlaS-sized image (775 x 522) through the cpu preset's prediction (one scale + flip, half resolution),
    # channels-last as the pipeline loads every model
    image = (np.random.default_rng(0).random((522, 775, 3)) * 255).astype(np.uint8)
    model = build_segmenter(seg).eval().to(memory_format=torch.channels_last)
    times = {}
    for precision in ("fp32", "bf16"):
        infer = replace(cfg.inference, precision=precision)
        predict_probs(model, image, infer, "cpu", seg)
        t = time.perf_counter()
        for _ in range(args.repeats):
            predict_probs(model, image, infer, "cpu", seg)
        times[precision] = (time.perf_counter() - t) / args.repeats
    out["predict_s"] = times
    rows.append(("predict one GlaS image (plain U-Net, 1 scale + flip)", "-", f"{times['fp32']:.3f}",
                 f"{times['bf16']:.3f} (x{times['fp32'] / times['bf16']:.2f} over channels-last fp32)"))
    print(f"native bf16 on this CPU: {out['native_bf16']}; seconds (median), speed-up over fp32 in brackets\n")
    print_table(rows, ("what", *(m for m, _, _ in MODES)))
    write_json("precision.json", out)


if __name__ == "__main__":
    main()
