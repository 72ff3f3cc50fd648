"""Test-time orientations: what predicting each image in all 8 orientations (``inference.dihedral``) buys and costs
beside the preset's one scale + flip and beside three scales + flip - pixel mIoU on validation, the training
images (a weak model never sees their masks) and testA, the glands (the shipped ``instances`` cut, and the ``core``
cut chosen on validation) and the seconds per image, all measured in this run on the same machine.

The project's own model and inference settings (cleaning included) predict every image with a masked truth once
per setting, in memory (the project is only read). Truth objects as in ``benchmarks/instances.py``.

    python benchmarks/orientations.py PROJECT [--name NAME]

Writes ``benchmarks/results/orientations-NAME.json`` (NAME: the project's folder name without ``end_to_end-``).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict, replace

from _common import object_rank_on_val, print_table, project_parser, results_name, scored_splits, write_json

from pipeline.config import InstanceConfig
from pipeline.device import precision_name, resolve_device, resolve_precision
from pipeline.metrics import ObjectCounts, confusion, from_confusion, object_counts
from pipeline.stages.infer import mask_from_probs, predict_probs
from pipeline.stages.instances import instances_of
from pipeline.stages.models import fold_batchnorm
from pipeline.stages.segment import load_segmenter
from pipeline.store import ProjectStore
from pipeline.store.project import project_config

SPLITS = ("val", "train", "test")
SETTINGS = {"1 scale + flip (the preset)": {"scales": (1.0,), "flip": True, "dihedral": False},
            "1 scale, all 8 orientations": {"scales": (1.0,), "flip": True, "dihedral": True},
            "3 scales (1, 1.25, 1.5) + flip": {"scales": (1.0, 1.25, 1.5), "flip": True, "dihedral": False}}
CUTS = [{"core_threshold": t, "min_core_area": a} for t, a in itertools.product((0.95, 0.97, 0.98), (500, 1000))]


def main() -> None:
    ap = project_parser(__doc__)
    args = ap.parse_args()
    store = ProjectStore.open(args.project, mode="r")
    name = results_name(args.project, args.name)
    splits = scored_splits(store, SPLITS)
    if not splits["val"] or not splits["test"]:
        raise SystemExit(f"{args.project}: needs validation and test images with masks (an `oeem run` on GlaS)")
    names = [n for s in SPLITS for n in splits[s]]
    device = resolve_device("cpu")
    model, seg = load_segmenter(store, None, device)
    model = fold_batchnorm(model).eval()
    base = project_config(store, save=False).inference
    truth = {n: store.truth_objects(n)[0] for n in names}
    shipped = InstanceConfig()
    rows = []
    for label, change in SETTINGS.items():
        infer = replace(base, **change)
        masks, probs = {}, {}
        t0 = time.perf_counter()
        for k, n in enumerate(names):
            prob = predict_probs(model, store.image(n), infer, device, seg)
            masks[n], probs[n] = mask_from_probs(prob, infer), prob[1]
            if k % 25 == 0:
                print(f"{label}: {k}/{len(names)} images", flush=True)
        seconds = (time.perf_counter() - t0) / len(names)
        row = {"setting": label, **{k: list(v) if isinstance(v, tuple) else v for k, v in change.items()},
               "orientations": len(infer.orientations()), "s_per_image": seconds,
               "precision": precision_name(resolve_precision(infer.precision, device)),
               "pixel_mIoU": {s: from_confusion(sum(confusion(masks[n], store.mask(n)) for n in splits[s]))["mIoU"]
                              for s in SPLITS}}
        cuts = []
        for cut in CUTS:
            cfg = replace(shipped, **cut)
            scored = {"cut": cut}
            for s in SPLITS:
                total = ObjectCounts()
                for n in splits[s]:
                    total += object_counts(instances_of(masks[n], probs[n], cfg), truth[n])
                scored[s] = total.scores()
            cuts.append(scored)
        row["cuts"] = cuts
        row["shipped_cut"] = next(c for c in cuts if c["cut"] == {"core_threshold": shipped.core_threshold,
                                                                  "min_core_area": shipped.min_core_area})
        row["chosen_cut"] = max(cuts, key=lambda c: (*object_rank_on_val(c), c["cut"]["min_core_area"]))
        rows.append(row)
        print(f"{label}: {seconds:.2f} s/image, mIoU " + ", ".join(f"{s} {row['pixel_mIoU'][s]:.2f}" for s in SPLITS),
              flush=True)
    preset_s = rows[0]["s_per_image"]
    for r in rows:
        r["time_vs_preset"] = r["s_per_image"] / preset_s

    def objects(c: dict, s: str) -> str:
        return f"{c[s]['object_F1']:.1f} / {c[s]['object_Dice']:.1f} / {c[s]['object_Hausdorff']:.1f}"
    print_table([(r["setting"], *(f"{r['pixel_mIoU'][s]:.2f}" for s in SPLITS), objects(r["shipped_cut"], "test"),
                  objects(r["chosen_cut"], "test"), f"{r['s_per_image']:.2f} ({r['time_vs_preset']:.1f}x)")
                 for r in rows],
                ("prediction", "val mIoU", "train mIoU", "testA mIoU", "testA glands, shipped cut",
                 "testA glands, cut chosen on val", "s / image"))
    write_json(f"orientations-{name}.json", {
        "project": str(args.project), "images": {s: len(v) for s, v in splits.items()},
        "truth_objects": "ids" if all(store.truth_objects(n)[1] for n in names) else "components",
        "inference": asdict(base), "shipped_cut": asdict(shipped), "rows": rows})


if __name__ == "__main__":
    main()
