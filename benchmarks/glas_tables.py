"""The paper's Tables 1-3 regenerated on real GlaS (train -> testA) with the ``cpu`` preset, from one stage-1
result, printed next to the paper's numbers.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/stage1_glas.py        # stage 1 once (makes the project)
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/glas_tables.py --quick  # CE vs l_norm, one seed
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/glas_tables.py --seeds 3  # all rows, mean +- std

Every training run is a named checkpoint in the project (``segmentation-tables-<loss>[-<variant>]-s<seed>``),
so an interrupted run resumes and a finished one is only scored again. A run that changes the schedule
(``--iterations``, ``--warmup-ce``, ``--temperature``) is a *variant*: its checkpoints and JSON carry the variant's name
(e.g. ``-it3000-w500``, ``glas_tables-it3000-w500.json``), so the main tables are never overwritten by it. Test-time scales default to 1 (+ flip) to fit the CPU budget; ``--scales`` takes the
paper's ``0.75,1,1.25,1.5,1.75,2,2.5,3``. No setting is chosen on testA: every row uses the preset as it is.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import numpy as np
import torch
from _common import RESULTS, glas_root, machine, print_table, write_json

from pipeline.config import LOSS_KINDS, preset
from pipeline.metrics import ObjectCounts, confusion, from_confusion, label_objects, object_counts
from pipeline.progress import run
from pipeline.stages.infer import mask_from_probs, predict_probs
from pipeline.stages.segment import load_segmenter, train_segmenter
from pipeline.store import ProjectStore

PAPER = {
    "table1": {"full": 86.84, "ce": 75.64, "l_norm": 77.56},
    "table2": {"cam": 67.02, "pseudo": 70.04, "ce": 75.64, "l_norm": 77.56},
    "table3": {"ce": 75.64, "ohem": 75.49, "c_max": 75.93, "c_diff": 75.43, "l_norm": 77.56, "lc_mix": 77.19},
}


SCORES = ("mIoU", "pixel_Dice", "F1", "object_F1", "object_Dice", "object_Hausdorff")


def test_scores(store: ProjectStore, run_name: str, infer_cfg) -> dict:
    """Dataset-level mIoU / pixel Dice / F1 and GlaS object F1 / Dice / Hausdorff of one trained model on testA,
    computed in memory (the store's own predictions are left alone)."""
    model, seg_cfg = load_segmenter(store, run_name, "cpu")
    total = np.zeros((2, 2), np.int64)
    objects = ObjectCounts()
    t0 = time.perf_counter()
    names = [n for n in store.names("test") if store.has(n, "mask")]
    for n in names:
        prob = predict_probs(model, store.image(n), infer_cfg, torch.device("cpu"), seg_cfg)
        mask = mask_from_probs(prob, infer_cfg)
        total += confusion(mask, store.mask(n))
        objects += object_counts(label_objects(mask), label_objects(store.mask(n)))
    return {**from_confusion(total), **objects.scores(), "predict_s_per_image": (time.perf_counter() - t0) / len(names)}


def variant_of(iterations: int | None, warmup_ce: int | None, temperature: float | None = None) -> str:
    """The suffix naming a schedule other than the preset's ("" for the preset itself)."""
    return ((f"-it{iterations}" if iterations else "") + (f"-w{warmup_ce}" if warmup_ce else "")
            + (f"-t{temperature:g}" if temperature else ""))


def earlier_timing(path, run_name: str) -> tuple[float, int] | None:
    """(seconds, iterations timed) when a finished run was trained: reusing it later takes ~0 s."""
    if not path.is_file():
        return None
    for row in json.loads(path.read_text()).get("rows", []):
        if row.get("run_name", f"tables-{row['setting']}-s{row['seed']}") == run_name and row.get("train_s", 0) > 60:
            return row["train_s"], row.get("iterations_timed", row["iterations"])
    return None


def train_and_score(store, base_cfg, setting: str, seed: int, infer_cfg, log: list, variant: str = "",
                    earlier=None) -> dict:
    cfg = copy.deepcopy(base_cfg.segmentation)
    cfg.seed = seed
    if setting == "full":
        cfg.loss, cfg.label_source = "ce", "mask"
    else:
        cfg.loss, cfg.label_source = setting, "pseudo"
    name = f"tables-{setting}{variant}-s{seed}"
    t0 = time.perf_counter()
    last = {}
    rec = run(train_segmenter(store, cfg, "cpu", run_name=name, on_mismatch="restart"),
              lambda p: last.update(p.metrics))
    train_s = time.perf_counter() - t0
    iterations_timed = rec["iterations_run"]
    if iterations_timed == 0 and earlier is not None:
        train_s, iterations_timed = earlier_timing(earlier, name) or (train_s, 0)
    scores = test_scores(store, name, infer_cfg)
    row = {"setting": setting, "seed": seed, "run_name": name, "warmup_ce_iters": cfg.warmup_ce_iters, "train_s": train_s,
           "iterations_timed": iterations_timed, "iterations": cfg.training_iterations(),
           "final_loss": last.get("loss"), "config": rec["config"], **scores}
    log.append(row)
    print(f"  {setting:7s} seed {seed}: testA mIoU {scores['mIoU']:.2f}  pixel Dice {scores['pixel_Dice']:.2f}  "
          f"F1 {scores['F1']:.2f}  object F1 {scores['object_F1']:.2f}  object Dice {scores['object_Dice']:.2f}  "
          f"({train_s / 60:.1f} min training)", flush=True)
    return row


def summary(rows: list[dict], key: str) -> tuple[float, float]:
    vals = [r[key] for r in rows]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(rows: list[dict], key: str = "mIoU") -> str:
    if not rows:
        return "-"
    m, s = summary(rows, key)
    return f"{m:.2f}" if len(rows) == 1 else f"{m:.2f} +- {s:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(RESULTS / "glas.oeem.zarr"), help="made by stage1_glas.py")
    ap.add_argument("--quick", action="store_true", help="only CE and l_norm (Table 1/2 weak rows), one seed")
    ap.add_argument("--losses", default=None, help=f"comma list from {','.join(LOSS_KINDS)} (default: all six)")
    ap.add_argument("--no-full", action="store_true", help="skip the fully-supervised upper bound")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=None, help="override the preset's segmentation iterations")
    ap.add_argument("--warmup-ce", type=int, default=None, help="CE iterations before the chosen loss")
    ap.add_argument("--temperature", type=float, default=None, help="l_norm/lc_mix weight temperature (paper: 1)")
    ap.add_argument("--scales", default="1.0", help="test scales, comma list (paper: 0.75,1,1.25,1.5,1.75,2,2.5,3)")
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--json", default=None, help="result file name in benchmarks/results (default: glas_tables"
                    "[-variant].json); give one for partial runs so the main tables are kept")
    args = ap.parse_args()
    glas_root()  # a clear exit when the data is absent
    store = ProjectStore.open(args.project)
    cams = store.load_run("cams")
    if cams is None:
        raise SystemExit(f"{args.project} has no stage-1 result; run benchmarks/stage1_glas.py first")
    cfg = preset("cpu")
    if args.iterations:
        cfg.segmentation.iterations = cfg.segmentation.full_iterations = args.iterations
    if args.warmup_ce is not None:
        cfg.segmentation.warmup_ce_iters = args.warmup_ce
    if args.temperature is not None:
        cfg.segmentation.weight_temperature = args.temperature
    variant = variant_of(args.iterations, args.warmup_ce, args.temperature)
    infer = copy.deepcopy(cfg.inference)
    infer.scales = tuple(float(s) for s in args.scales.split(","))
    infer.flip = not args.no_flip
    losses = ["ce", "l_norm"] if args.quick else (args.losses.split(",") if args.losses else list(LOSS_KINDS))
    settings = losses + ([] if args.quick or args.no_full else ["full"])
    seeds = 1 if args.quick else args.seeds
    print(f"{len(settings)} settings x {seeds} seed(s), {cfg.segmentation.iterations} iterations each, "
          f"test scales {infer.scales} flip {infer.flip}", flush=True)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in range(seeds):
        for setting in settings:
            train_and_score(store, cfg, setting, seed, infer, rows, variant, RESULTS / f"glas_tables{variant}.json")
    by = {s: [r for r in rows if r["setting"] == s] for s in settings}

    print(f"\nTable 1 - GlaS testA, {seeds} seed(s), cpu preset from random init (paper: ImageNet ResNet38)\n")
    t1 = [(name, *(fmt(by.get(key, []), m) for m in SCORES), f"{PAPER['table1'][key]:.2f}") for name, key in
          (("fully supervised (CE on masks)", "full"), ("weak, CE", "ce"), ("weak, OEEM (l_norm)", "l_norm"))
          if by.get(key)]
    print_table(t1, ("method", "mIoU", "pixel Dice", "F1", "object F1", "object Dice", "object Hausdorff",
                     "paper mIoU"))

    print("\nTable 2 - framework (mIoU)\n")
    t2 = [("CAM (train)", f"{cams['cam']['mIoU']:.2f}", f"{PAPER['table2']['cam']:.2f}"),
          ("pseudo-mask (train)", f"{cams['pseudo']['mIoU']:.2f}", f"{PAPER['table2']['pseudo']:.2f}")]
    for key, name in (("ce", "prediction, CE (testA)"), ("l_norm", "prediction, OEEM (testA)")):
        if by.get(key):
            t2.append((name, fmt(by[key]), f"{PAPER['table2'][key]:.2f}"))
    print_table(t2, ("stage", "ours", "paper"))

    print("\nTable 3 - loss weightings on the same pseudo-masks (testA mIoU)\n")
    print_table([(k, fmt(by[k]), f"{PAPER['table3'][k]:.2f}") for k in losses], ("loss", "ours", "paper"))
    if by.get("ce") and by.get("l_norm"):
        gap = summary(by["l_norm"], "mIoU")[0] - summary(by["ce"], "mIoU")[0]
        spread = max(summary(by["l_norm"], "mIoU")[1], summary(by["ce"], "mIoU")[1])
        print(f"\nOEEM - CE: {gap:+.2f} mIoU (seed spread {spread:.2f}; paper +1.92)")
    total_min = (time.perf_counter() - t0) / 60
    print(f"total {total_min:.1f} min")
    write_json(args.json or f"glas_tables{variant}.json", {
        "machine": machine(), "command": " ".join(["python benchmarks/glas_tables.py", *sys.argv[1:]]),
        "variant": variant, "quick": args.quick, "seeds": seeds, "settings": settings,
        "iterations": cfg.segmentation.iterations, "warmup_ce_iters": cfg.segmentation.warmup_ce_iters,
        "weight_temperature": cfg.segmentation.weight_temperature,
        "test_scales": infer.scales, "flip": infer.flip, "total_min": total_min,
        "stage1": {"cam_mIoU": cams["cam"]["mIoU"], "pseudo_mIoU": cams["pseudo"]["mIoU"]},
        "rows": rows, "paper": PAPER,
        "summary": {k: {m: summary(v, m) for m in SCORES} for k, v in by.items() if v},
    })


if __name__ == "__main__":
    main()
