"""Stage-2 speed, side by side in one run: segmentation training iterations/s and achieved FLOP/s against this
machine's matmul peak; multi-scale inference (the paper's 8 scales + flip) in seconds per GlaS testA image, with
windows batched vs one window at a time.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/stage2_speed.py [--images 4] [--iterations 10]

Uses a trained model from the stage-1 project when there is one (weights do not change the speed), else a
freshly initialised PSPNet.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import glas_root, machine, matmul_peak_gflops, print_table, write_json
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import preset
from pipeline.io.data import find_samples, load_image
from pipeline.stages.infer import predict_probs
from pipeline.stages.losses import segmentation_loss
from pipeline.stages.models import build_segmenter


def train_step_flops(model, x, y) -> float:
    with FlopCounterMode(display=False) as fc:
        main, aux = model(x, with_aux=True)
        (segmentation_loss(main, y, "l_norm") + 0.4 * segmentation_loss(aux, y, "l_norm")).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4, help="testA images for the inference timing")
    ap.add_argument("--iterations", type=int, default=10, help="timed training iterations")
    args = ap.parse_args()
    root = glas_root()
    cfg = preset("cpu")
    seg = cfg.segmentation
    peak = matmul_peak_gflops()
    torch.manual_seed(0)
    model = build_segmenter(seg)

    # --- training iterations (forward + backward + SGD step, batch 8 at 256 px, OEEM loss)
    opt = torch.optim.SGD(model.parameters(), lr=seg.lr, momentum=seg.momentum)
    x = torch.randn(seg.batch_size, 3, seg.crop_size, seg.crop_size)
    y = torch.randint(0, 2, (seg.batch_size, seg.crop_size, seg.crop_size))
    flops = train_step_flops(model, x, y)
    model.train()
    for k in range(args.iterations + 2):
        if k == 2:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        main_out, aux = model(x, with_aux=True)
        (segmentation_loss(main_out, y, "l_norm") + 0.4 * segmentation_loss(aux, y, "l_norm")).backward()
        opt.step()
    s_per_it = (time.perf_counter() - t0) / args.iterations
    train = {"s_per_iteration": s_per_it, "iterations_per_s": 1 / s_per_it, "gflop_per_iteration": flops / 1e9,
             "gflop_per_s": flops / s_per_it / 1e9, "matmul_peak_gflop_per_s": peak}

    # --- inference, paper scales + flip, batched windows vs one at a time
    model.eval()
    infer = copy.deepcopy(cfg.inference)  # 8 scales, flip, crop 320 stride 256
    images = [load_image(s.image_path) for s in find_samples(root / "testA")[: args.images]]
    timings = {}
    for label, batch in (("batched", infer.batch_size), ("one window at a time", 1)):
        c = copy.deepcopy(infer)
        c.batch_size = batch
        t0 = time.perf_counter()
        for im in images:
            predict_probs(model, im, c, torch.device("cpu"), seg)
        timings[label] = (time.perf_counter() - t0) / len(images)
    ratio = timings["one window at a time"] / timings["batched"]

    print(f"\nStage 2 speed, cpu preset, {torch.get_num_threads()} threads\n")
    print_table([
        ("training", f"{s_per_it:.2f} s/it", f"{1 / s_per_it:.2f} it/s (batch {seg.batch_size} @ {seg.crop_size} px)"),
        ("achieved training FLOP/s", f"{train['gflop_per_s']:.1f} GFLOP/s",
         f"{100 * train['gflop_per_s'] / peak:.0f}% of matmul peak {peak:.0f} GFLOP/s"),
        (f"inference, {len(infer.scales)} scales + flip, batched (batch {infer.batch_size})",
         f"{timings['batched']:.1f} s/image", f"{len(images)} testA images"),
        ("inference, one window at a time", f"{timings['one window at a time']:.1f} s/image", ""),
        ("batched speed-up", f"{ratio:.2f}x", "aim >= 3x (a GPU target; on 2 CPU cores the conv is already saturated)"),
    ], ("what", "value", "note"))
    write_json("stage2_speed.json", {"machine": machine(), "train": train, "inference_s_per_image": timings,
                                     "batched_speedup": ratio, "scales": infer.scales, "flip": infer.flip,
                                     "images": len(images)})


if __name__ == "__main__":
    main()
