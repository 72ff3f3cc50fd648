"""*Update model* on a well-trained model: does an update ever leave it worse, and what does it gain?

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/update_safety.py --project P [--counts 1 3 10]
        [--seeds 0 1 2] [--arms frozen-bn train-bn] [--precision auto|fp32|bf16] [--name NAME]

The protocol: the label review ranks the project's training regions (``oeem regions``; its own ranking, not the
truth, picks the images), and the first 1 / 3 / 10 images in its order are corrected to their GlaS mask by a
perfect pathologist (every pixel verified). Each update then starts from the same trained model and is scored
against the masks - the corrected images themselves, the validation split and testA - next to the model before
it. Arms: ``frozen-bn`` (the product: batch norms keep the trained model's statistics) and ``train-bn`` (what
updates did before: the statistics re-estimated from the update's batches). Every update runs with
``--keep-worse`` so its raw effect is seen; ``guard`` says whether the product's guard (validation, tolerance
``update.tolerance``) would have kept it.

One working copy of the project (``runs/bench/update-safety-NAME.oeem.zarr``); after each update the model is
reverted and the corrections undone, so every row starts from the same state. Rows go to
``benchmarks/results/update_safety-NAME.json``.
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import glas_root, machine, print_table, write_json  # noqa: E402

from pipeline.progress import run  # noqa: E402
from pipeline.store import ProjectStore  # noqa: E402

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench"


def review_order(store: ProjectStore, cfg) -> list[str]:
    """Training images in the order the label review first shows one of their regions (ranking made if missing)."""
    from pipeline.review.regions import load_ranking, rank_label_errors
    from pipeline.review.state import ordered_regions

    if load_ranking(store) is None:
        run(rank_label_errors(store, cfg, "train"))
    order: list[str] = []
    for r in ordered_regions(store):
        if r.image not in order:
            order.append(r.image)
    return order


def scores(store: ProjectStore, cfg, groups: dict[str, list[str]], truth) -> dict[str, float]:
    """Pixel mIoU (pooled) of the current model on each group of images, predicted in memory (the store's
    predictions are left alone)."""
    from pipeline.device import resolve_device
    from pipeline.metrics import confusion, from_confusion
    from pipeline.stages.infer import mask_from_probs, predict_probs
    from pipeline.stages.models import fold_batchnorm
    from pipeline.stages.segment import load_segmenter

    dev = resolve_device("cpu")
    model, seg = load_segmenter(store, device=dev)
    net = fold_batchnorm(model)
    out = {}
    for group, names in groups.items():
        cm = np.zeros((2, 2), np.int64)
        for n in names:
            pred = mask_from_probs(predict_probs(net, store.image(n), cfg.inference, dev, seg), cfg.inference)
            cm += confusion(pred, truth(n))
        out[group] = round(from_confusion(cm)["mIoU"], 2)
    return out


def arm_config(cfg, arm: str):
    """The project's settings with an arm's update settings: ``frozen-bn`` / ``train-bn`` and ``key=value`` parts
    (lr, steps, focus, weight) joined by '+'."""
    ucfg = copy.deepcopy(cfg)
    keys = {"lr": "lr", "steps": "iterations", "focus": "focus", "weight": "verified_weight"}
    for part in arm.split("+"):
        if part in ("frozen-bn", "train-bn"):
            ucfg.update.freeze_batchnorm = part == "frozen-bn"
        else:
            key, value = part.split("=")
            setattr(ucfg.update, keys[key], int(value) if key == "steps" else float(value))
    return ucfg


def undo_all(store: ProjectStore, names: list[str]) -> None:
    for n in names:
        while store.correction_version(n) is not None and store.undo_correction(n):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True, help="a trained GlaS project (e.g. end_to_end.py's)")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["frozen-bn", "train-bn"],
                    help="each an update variant: frozen-bn, train-bn, or settings joined by '+', e.g. "
                         "frozen-bn+lr=0.0003+steps=30+focus=0.5+weight=4 (default: frozen-bn train-bn)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--name", required=True, help="names the working copy and the JSON")
    ap.add_argument("--truth", type=Path, default=None,
                    help="a project holding the GlaS masks of the training images, for a project without them "
                         "(benchmarks/weak_labels.py's glas-truth; default: the project's own masks)")
    ap.add_argument("--note", default="", help="e.g. whether the cores were shared")
    args = ap.parse_args()
    glas_root()
    from pipeline.device import precision_name, resolve_device, resolve_precision
    from pipeline.stages.guard import judge
    from pipeline.stages.update import update_model
    from pipeline.store.project import project_config
    from pipeline.store.versions import revert_model

    work = WORK / f"update-safety-{args.name}.oeem.zarr"
    if not work.exists():
        shutil.copytree(args.project, work)
    store = ProjectStore.open(work)
    truth_store = ProjectStore.open(args.truth, mode="r") if args.truth else store

    def truth(name: str) -> np.ndarray:
        return truth_store.mask(name)

    cfg = project_config(store, None, None, save=False)
    for section in (cfg.segmentation, cfg.inference):
        section.precision = args.precision
    precision = precision_name(resolve_precision(args.precision, resolve_device("cpu")))
    order = review_order(store, cfg)
    print(f"label review order: {order[:max(args.counts)]}", flush=True)
    base_groups = {"val": store.names("val"), "testA": store.names("test")}
    base = scores(store, cfg, base_groups, truth)
    print(f"model before any update: {base}", flush=True)
    rows = []
    for count in args.counts:
        chosen = order[:count]
        before = {**base, **scores(store, cfg, {"corrected": chosen}, truth)}
        for arm in args.arms:
            for seed in args.seeds:
                ucfg = arm_config(cfg, arm)
                ucfg.update.seed = seed
                for n in chosen:
                    mask = truth(n).astype(np.uint8)
                    store.save_correction(n, mask, painted=np.ones(mask.shape, bool))
                t = time.perf_counter()
                result = run(update_model(store, ucfg, "cpu", names=chosen, predict_names=[], keep_worse=True))
                seconds = time.perf_counter() - t
                after = scores(store, cfg, {**base_groups, "corrected": chosen}, truth)
                verdict = judge(result["before"], result["after"], cfg.update.tolerance)
                rows.append({"images": count, "arm": arm, "seed": seed, "precision": precision,
                             "before": before, "after": after,
                             "delta": {k: round(after[k] - before[k], 2) for k in after},
                             "guard_before": result["before"], "guard_after": result["after"],
                             "guard_keeps": verdict.keep, "seconds": round(seconds, 1),
                             "train_seconds": round(result["train_seconds"], 1), "chosen": chosen})
                print(rows[-1], flush=True)
                revert_model(store)
                undo_all(store, chosen)
    table = []
    for count in args.counts:
        for arm in args.arms:
            rs = [r for r in rows if r["images"] == count and r["arm"] == arm]
            mean = {k: float(np.mean([r["delta"][k] for r in rs])) for k in ("corrected", "val", "testA")}
            table.append((count, arm, len(rs), f"{rs[0]['before']['corrected']:.2f}", f"{mean['corrected']:+.2f}",
                          f"{rs[0]['before']['val']:.2f}", f"{mean['val']:+.2f}",
                          f"{min(r['delta']['val'] for r in rs):+.2f}", f"{rs[0]['before']['testA']:.2f}",
                          f"{mean['testA']:+.2f}", f"{min(r['delta']['testA'] for r in rs):+.2f}",
                          sum(r["guard_keeps"] for r in rs), f"{np.mean([r['seconds'] for r in rs]):.0f}"))
    print_table(table, ("images", "arm", "seeds", "corrected before", "mean change", "val before", "mean change",
                        "worst", "testA before", "mean change", "worst", "guard keeps", "s per update"))
    write_json(f"update_safety-{args.name}.json", {
        "machine": machine(), "note": args.note, "project": str(args.project), "precision": precision,
        "tolerance": cfg.update.tolerance, "steps": cfg.update.iterations, "lr": cfg.update.lr,
        "review_order": order[:max(args.counts)], "base": base, "rows": rows,
        "command": "python benchmarks/update_safety.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
