"""Glands as objects from a learned interior: can the network itself say where a gland's inside is, and do its
interiors seed the glands better than the probability core that ``oeem`` ships?

A 1x1 head is trained on the project's segmentation network, frozen (eval mode: its prediction stays exactly
what the project stored), to predict each label's interior - the gland pixels at least ``r`` px (working scale)
from the non-gland ones, for several ``r`` at once - from the last decoder features. The labels are the project's
own training labels (the last self-training round's pseudo-masks for a weak model): no gland mask is used. The
stored mask is then cut with the interior as seeds and as the flood surface, beside the shipped ``core``
separation (seeds where the stored probability is high) on the same mask; each method is chosen on validation
(object F1, object Dice, the lower Hausdorff) and reported on the training images (whose masks a weak model
never sees: a second, larger check that is not testA) and testA. Truth objects as in
``benchmarks/instances.py``.

    python benchmarks/instances_learned.py PROJECT [--iters 600] [--radii 3 6 10] [--name NAME]

Writes ``benchmarks/results/instances_learned-NAME.json``.
"""
from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F
from _common import machine, object_rank_on_val, print_table, project_parser, results_name, scored_splits, write_json

from pipeline.config import SegConfig
from pipeline.device import autocast, in_layout, resolve_precision
from pipeline.metrics import ObjectCounts, object_counts
from pipeline.stages.infer import predict_probs
from pipeline.stages.instances import separate
from pipeline.stages.segment import IGNORE, SegmentationStep, decode, load_segmenter, tile_dataset
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

SPLITS = ("val", "train", "test")  # the training images: their masks a weak model never saw


class WithInterior(torch.nn.Module):
    """The frozen segmenter and an interior head on the input of its last classifier (the decoder's features):
    ``forward`` returns the segmenter's logits and one interior logit per radius, at the input's size."""

    def __init__(self, segmenter: torch.nn.Module, radii: int):
        super().__init__()
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.head = torch.nn.Conv2d(segmenter.cls[1].in_channels, radii, 1)
        self._features: torch.Tensor | None = None
        segmenter.cls.register_forward_pre_hook(lambda _m, args: setattr(self, "_features", args[0]))

    def interior(self, x: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), autocast(x.device, dtype):
            logits = self.segmenter(in_layout(x))
        inner = self.head(self._features.float())
        return logits.float(), F.interpolate(inner, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, inner = self.interior(x, None)
        return torch.cat([logits, inner], 1)


def erode(fg: torch.Tensor, r: int) -> torch.Tensor:
    """Pixels of ``fg`` (N, 1, H, W, 0/1) whose (2r+1)-square holds no 0 (the tile's edge is no border)."""
    return -F.max_pool2d(-fg, 2 * r + 1, 1, r)


def train_head(net: WithInterior, store: ProjectStore, cfg: SegConfig, radii: list[int], iters: int, lr: float,
               amp: torch.dtype | None) -> float:
    """The interior head trained on the project's training tiles, augmented as the segmentation trains; seconds."""
    images, codes, _ = tile_dataset(store, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = SegmentationStep(cfg, torch.device("cpu"), amp, gen, cfg.verified_weight)
    opt = torch.optim.SGD(net.head.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    for it in range(iters):
        opt.param_groups[0]["lr"] = lr * (1 - it / iters) ** 0.9
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        x, code = step.augment(images[idx], codes[idx])
        target, _, _ = decode(code)
        valid = target != IGNORE
        fg = (target == 1).float()[:, None]
        _, inner = net.interior(x, amp)
        loss = sum(F.binary_cross_entropy_with_logits(inner[:, j], erode(fg, r)[:, 0], reduction="none")[valid]
                   .mean() for j, r in enumerate(radii))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 100 == 0:
            print(f"iteration {it}: loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = project_parser(__doc__)
    ap.add_argument("--iters", type=int, default=600, help="training steps of the interior head (default: 600)")
    ap.add_argument("--radii", type=int, nargs="+", default=[3, 6, 10],
                    help="interior depths in px at the working scale (default: 3 6 10)")
    ap.add_argument("--lr", type=float, default=0.02, help="the head's learning rate (default: 0.02)")
    args = ap.parse_args()
    torch.manual_seed(0)
    store = ProjectStore.open(args.project, mode="r")
    name = results_name(args.project, args.name)
    segmenter, cfg = load_segmenter(store)
    icfg = project_config(store, save=False).inference
    amp = resolve_precision(cfg.precision, torch.device("cpu"))
    net = WithInterior(segmenter, len(args.radii))
    train_s = train_head(net, store, cfg, args.radii, args.iters, args.lr, amp)
    net.eval()

    splits = scored_splits(store, SPLITS)
    data, t0 = {}, time.perf_counter()
    for n in (n for s in SPLITS for n in splits[s]):
        # as `oeem predict` predicts (the project's scales, windows, flips), the interior logits through a sigmoid
        inner = predict_probs(net, store.image(n), icfg, torch.device("cpu"), cfg,
                              activation=lambda lg: lg[:, 2:].sigmoid())
        data[n] = (store.read(n, "prediction"), store.read(n, "prob"), inner, store.truth_objects(n)[0])
    interior_ms = 1000 * (time.perf_counter() - t0) / len(data)

    grid = [("components", None, {})]
    grid += [("core", "prob", {"core_threshold": t, "min_core_area": a})
             for t, a in itertools.product((0.95, 0.97), (500, 1000))]
    grid += [("interior", j, {"radius": r, "core_threshold": t, "min_core_area": a})
             for (j, r), t, a in itertools.product(enumerate(args.radii), (0.3, 0.5, 0.7, 0.85), (200, 500, 1000))]
    rows = []
    for method, source, params in grid:
        cut = {k: v for k, v in params.items() if k != "radius"}
        row = {"method": method, **params}
        for split in SPLITS:
            total = ObjectCounts()
            for n in splits[split]:
                mask, prob, inner, truth = data[n]
                seeds = prob if source == "prob" else inner[source] if source is not None else None
                total += object_counts(separate(mask, seeds, "components" if source is None else "core", **cut),
                                       truth)
            row[split] = total.scores()
        rows.append(row)

    def key(r: dict) -> tuple:
        return *object_rank_on_val(r), r.get("min_core_area", 0)
    best = {m: max((r for r in rows if r["method"] == m), key=key) for m in ("components", "core", "interior")}

    def cells(s: dict) -> str:
        return f"{s['object_F1']:.1f} / {s['object_Dice']:.1f} / {s['object_Hausdorff']:.0f}"
    print(f"\n{args.project}: object F1 / object Dice / object Hausdorff (px), each method chosen on val; interior "
          f"head {args.iters} steps in {train_s:.0f} s ({'bf16' if amp else 'fp32'})")
    print_table([(m, ", ".join(f"{k}={r[k]}" for k in r if k not in ("method", *SPLITS)), cells(r["val"]),
                  cells(r["train"]), cells(r["test"])) for m, r in best.items()],
                ("method", "setting", "val", "training images", "testA"))
    write_json(f"instances_learned-{name}.json", {
        "machine": machine(), "project": str(args.project), "images": {s: len(v) for s, v in splits.items()},
        "truth_objects": "ids" if all(store.truth_objects(n)[1] for n in data) else "components",
        "head": {"iterations": args.iters, "radii": args.radii, "lr": args.lr, "train_seconds": train_s,
                 "precision": "bf16" if amp else "fp32", "labels": cfg.label_source,
                 "interior_ms_per_image": interior_ms},
        "rows": rows, "best_of_each_method": best})


if __name__ == "__main__":
    main()
