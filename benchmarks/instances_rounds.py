"""Glands apart in the labels: can one more self-training round teach the network the stroma between touching
glands, so that the glands come out as objects better than the shipped cut makes them of today's model?

Each arm starts from a copy of the project (its model and stored prediction, e.g. the ``cpu`` preset's
end-to-end run) and runs one more self-training round as ``oeem selftrain`` makes it, then trains ``--iters``
iterations warm-started from the project's model, predicts every image as ``oeem predict`` does and cuts the glands:

- ``plain``: the round's pseudo-masks as they are;
- ``apart``: the same pseudo-masks with a background band where the shipped cut separates two glands in the
  prediction the round learns from (pixels within ``--band`` px, full size, of two different glands): the border
  the cut found, taught to the network - a contour learned from the pseudo-masks' own glands, no gland mask used;

each at the project's working scale and at full resolution (``segmentation.working_scale`` 1: the same crop and
iteration cost, a longer prediction: the file records both per arm). The project's own model (no further round) is
the first row. Every arm is cut by the shipped ``core`` settings and by the best of a small grid on validation;
pixel mIoU of the mask, object F1 / Dice / Hausdorff on validation, the training images (whose masks a weak model
never sees) and testA, and what the chosen cut gets wrong, by kind (``instances_limits.py``'s kinds: glands missed,
merged, split; objects that are pieces, on background, over several glands).
Truth objects: the masks' connected regions (the GlaS copy here is binary).

    python benchmarks/instances_rounds.py PROJECT [--iters 1000] [--band 3] [--name NAME]

Writes ``benchmarks/results/instances_rounds-NAME.json``; the arms' copies live in ``runs/bench/`` while they run.
"""
from __future__ import annotations

import itertools
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import (
    REPO,
    machine,
    object_rank_on_val,
    print_table,
    project_parser,
    results_name,
    scored_splits,
    write_json,
)
from instances_limits import error_kinds
from scipy import ndimage
from skimage.morphology import disk

from pipeline.config import InstanceConfig, PipelineConfig
from pipeline.device import precision_name, resolve_precision
from pipeline.metrics import ObjectCounts, confusion, from_confusion, object_counts
from pipeline.progress import run
from pipeline.stages.infer import predict
from pipeline.stages.instances import instances_of
from pipeline.stages.segment import train_segmenter
from pipeline.stages.selftrain import selftrain_round
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

SPLITS = ("val", "train", "test")
CUTS = [{"core_threshold": t, "min_core_area": a} for t, a in itertools.product((0.95, 0.97), (1000, 3000))]


def apart_band(ids: np.ndarray, radius: int) -> np.ndarray:
    """Pixels with two different glands of ``ids`` within ``radius`` px: where the cut put a border."""
    none = np.iinfo(np.int32).max
    footprint = disk(radius).astype(bool)
    ids = ids.astype(np.int32)
    highest = ndimage.maximum_filter(ids, footprint=footprint)
    lowest = ndimage.minimum_filter(np.where(ids > 0, ids, none), footprint=footprint)
    return (highest > 0) & (lowest < none) & (highest != lowest)


def shipped_cut(instances: InstanceConfig) -> dict:
    """The project's own ``core`` settings, as :data:`CUTS` names them."""
    return {"core_threshold": instances.core_threshold, "min_core_area": instances.min_core_area}


def scores(store: ProjectStore, names: dict[str, list[str]], instances: InstanceConfig) -> dict:
    """Pixel mIoU per split and object scores per split for the project's cut and each of :data:`CUTS`, cut as
    ``instances`` says otherwise (its scale, its opening)."""
    shipped = shipped_cut(instances)
    out: dict = {"mIoU": {}, "cuts": []}
    data = {n: (store.read(n, "prediction"), store.read(n, "prob"), store.truth_objects(n)[0])
            for s in SPLITS for n in names[s]}
    for s in SPLITS:
        cm = sum(confusion(data[n][0], store.mask(n)) for n in names[s])
        out["mIoU"][s] = from_confusion(cm)["mIoU"]
    for cut in [shipped] + [c for c in CUTS if c != shipped]:
        row = {**cut}
        for s in SPLITS:
            total = ObjectCounts()
            for n in names[s]:
                mask, prob, truth = data[n]
                total += object_counts(instances_of(mask, prob, replace(instances, method="core", **cut)), truth)
            row[s] = total.scores()
        out["cuts"].append(row)
    best = out["best_on_val"] = max(out["cuts"], key=object_rank_on_val)
    chosen = replace(instances, method="core", **{k: best[k] for k in shipped})
    out["kinds"] = {}  # what the chosen cut gets wrong, by kind (as instances_limits.py counts)
    for s in SPLITS:
        kinds: Counter = Counter()
        for n in names[s]:
            mask, prob, truth = data[n]
            kinds += error_kinds(instances_of(mask, prob, chosen), truth, prob)[0]
        out["kinds"][s] = dict(kinds)
    return out


def run_arm(source: Path, work: Path, cfg: PipelineConfig, band: int, scale: float, iters: int,
            names: dict[str, list[str]]) -> dict:
    """One more round on a copy of ``source``: labels with or without the band, trained at ``scale``."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    try:
        store = ProjectStore.open(work)
        bands = {n: apart_band(store.read(n, "instances"), band) for n in store.labelled_images(("train",))} \
            if band else {}
        run(selftrain_round(store, cfg))
        moved = 0
        for n, b in bands.items():
            labels = store.read(n, "pseudo").copy()
            apart = b & (labels == 1)
            labels[apart] = 0
            moved += int(apart.sum())
            store.write(n, "pseudo", labels)
        seg = replace(cfg.segmentation, iterations=iters, working_scale=scale)
        trained = run(train_segmenter(store, seg, on_mismatch="restart"))
        predicted = run(predict(store, cfg.inference, [n for s in SPLITS for n in names[s]]))
        return {"band_px": band, "working_scale": scale, "band_pixels": moved,
                "initialised_from": Path(trained["initialised_from"] or "").name, "train_seconds": trained["seconds"],
                "predict_ms_per_image": 1000 * predicted["seconds_per_image"], **scores(store, names, cfg.instances)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = project_parser(__doc__)
    ap.add_argument("--iters", type=int, default=1000, help="iterations of the further round (default: 1000)")
    ap.add_argument("--band", type=int, default=3, help="the band's reach in px at full size (default: 3)")
    args = ap.parse_args()
    source = Path(args.project)
    name = results_name(source, args.name)
    store = ProjectStore.open(source, mode="r")
    cfg = project_config(store, save=False)
    names = scored_splits(store, SPLITS)
    if not all(store.has(n, "instances") for n in store.labelled_images(("train",))):
        raise SystemExit(f"{source}: the band needs the glands of the stored prediction; run "
                         f"`oeem instances {source}` first")
    t0 = time.perf_counter()
    arms = {"no further round": {"band_px": 0, "working_scale": cfg.segmentation.working_scale,
                                 **scores(store, names, cfg.instances)}}
    scales = dict.fromkeys((cfg.segmentation.working_scale, 1.0))  # (once where the project is at full size)
    for band, scale in itertools.product((0, args.band), scales):
        label = f"{'apart' if band else 'plain'} round, working scale {scale:g}"
        print(f"{label} ...", flush=True)
        arms[label] = run_arm(source, REPO / "runs" / "bench" / f"rounds-{name}.oeem.zarr", cfg, band, scale,
                              args.iters, names)

    def cells(r: dict, s: str) -> str:
        return f"{r[s]['object_F1']:.1f} / {r[s]['object_Dice']:.1f} / {r[s]['object_Hausdorff']:.1f}"
    precision = precision_name(resolve_precision(cfg.segmentation.precision, torch.device("cpu")))
    print(f"\n{source}: pixel mIoU, then object F1 / object Dice / object Hausdorff (px) of the cut best on "
          f"validation; {args.iters} iterations per round ({precision})")
    print_table([(label, f"{a['mIoU']['val']:.2f} / {a['mIoU']['test']:.2f}",
                  ", ".join(f"{k} {v:g}" for k, v in a["best_on_val"].items() if k not in SPLITS),
                  cells(a["best_on_val"], "val"), cells(a["best_on_val"], "train"), cells(a["best_on_val"], "test"))
                 for label, a in arms.items()],
                ("model", "mIoU val / testA", "cut", "val", "training images", "testA"))
    write_json(f"instances_rounds-{name}.json", {
        "machine": machine(), "project": str(source), "images": {s: len(v) for s, v in names.items()},
        "truth_objects": "ids" if all(store.truth_objects(n)[1] for s in SPLITS for n in names[s]) else "components",
        "iterations": args.iters, "band_px": args.band, "precision": precision,
        "shipped_cut": shipped_cut(cfg.instances),
        "seconds": time.perf_counter() - t0, "arms": arms})


if __name__ == "__main__":
    main()
