"""Issue 10's ablation on real GlaS: each quality lever on/off, scored on the validation split (10 training images
held out, used only to choose settings) and reported on testA, with minutes per run.

    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py stage1           # project + stage 1 once
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py stage2 NAME [--set KEY=VALUE ...] [--seed S]
                                                                        [--warm-from MODEL.pt]
    python benchmarks/ablation.py report [--paired ce lnorm]                            # the table, from JSON
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py weights RUN [RUN ...]  # weights vs wrong labels
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/ablation.py gap RUN [RUN ...]      # model vs its labels

Every stage-2 run is a named checkpoint in the project (``segmentation-abl-NAME-rROUND-sSEED``), so an interrupted
run resumes and a finished one is only scored again. Rows accumulate in ``benchmarks/results/ablation.json``.
``OEEM_ABLATION_PROJECT`` and ``OEEM_ABLATION_JSON`` point both elsewhere, e.g. at the end-to-end benchmark's
project to compare losses on its labels; ``--warm-from MODEL.pt`` starts a fresh run from the model whose
prediction made those labels (trained on the round before), as ``oeem run`` warm-starts its rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, glas_root, machine, print_table
from _common import print_table as plain_table

from pipeline.config import apply_overrides, parse_settings, preset, to_dict
from pipeline.progress import run
from pipeline.store import ProjectStore, atomic_write_bytes, atomic_write_json

PROJECT = Path(os.environ.get("OEEM_ABLATION_PROJECT", RESULTS / "ablation.oeem.zarr"))
OUT = Path(os.environ.get("OEEM_ABLATION_JSON", RESULTS / "ablation.json"))
VAL_IMAGES = 10


def load_rows() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"machine": machine(), "stage1": None, "rows": []}


def save_rows(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, data)


def cmd_stage1(args) -> None:
    from pipeline.stages.cams import make_cams
    from pipeline.stages.classify import make_patch_labels, train_classifier
    from pipeline.store.project import create_project

    root = glas_root()
    cfg = preset("cpu")
    if args.set:
        apply_overrides(cfg, parse_settings(args.set))
    t0 = time.perf_counter()
    store = create_project(root, PROJECT, overwrite=True, val_images=VAL_IMAGES, seed=0)
    labels = make_patch_labels(store, cfg.patches)
    t1 = time.perf_counter()
    run(train_classifier(store, cfg.classifier, cfg.patches, "cpu", restart=True))
    t2 = time.perf_counter()
    cams = run(make_cams(store, cfg.cam, cfg.patches, "cpu"))
    t3 = time.perf_counter()
    data = load_rows()
    data["stage1"] = {"config": {"classifier": to_dict(cfg.classifier), "cam": to_dict(cfg.cam)},
                      "patches": labels, "setup_s": t1 - t0, "classifier_s": t2 - t1, "cams_s": t3 - t2,
                      "cam_mIoU": cams["cam"]["mIoU"], "pseudo_mIoU": cams["pseudo"]["mIoU"],
                      "val": cams.get("val"), "validation_images": store.root.attrs.get("validation")}
    save_rows(data)
    print(json.dumps(data["stage1"], indent=2))


def scores(store: ProjectStore, run_name: str, infer_cfg, splits=("val", "test", "train")) -> dict:
    """Dataset-level mIoU / Dice / F1 of one model per split, in memory (the store's predictions are untouched),
    plus the current pseudo-masks' scores on the train and val splits for comparison. The mask is cleaned as
    ``infer_cfg`` says (what ``oeem predict`` writes); ``mIoU_raw`` is the uncleaned argmax. ``current`` is the
    project's own model (what ``oeem run`` trained)."""
    from pipeline.metrics import confusion, from_confusion
    from pipeline.stages.infer import mask_from_probs, predict_probs
    from pipeline.stages.segment import load_segmenter

    model, seg_cfg = load_segmenter(store, None if run_name == "current" else run_name, "cpu")
    out = {}
    for split in splits:
        names = [n for n in store.names(split) if store.has(n, "mask")]
        cm, cm_raw, cm_pseudo = (np.zeros((2, 2), np.int64) for _ in range(3))
        t0 = time.perf_counter()
        for n in names:
            prob = predict_probs(model, store.image(n), infer_cfg, torch.device("cpu"), seg_cfg)
            cm += confusion(mask_from_probs(prob, infer_cfg), store.mask(n))
            cm_raw += confusion(prob.argmax(0), store.mask(n))
            if store.has(n, "pseudo"):
                cm_pseudo += confusion(store.read(n, "pseudo"), store.mask(n))
        out[split] = {**from_confusion(cm), "mIoU_raw": from_confusion(cm_raw)["mIoU"],
                      "s_per_image": (time.perf_counter() - t0) / len(names)}
        if cm_pseudo.sum():
            out[split]["pseudo_mIoU"] = from_confusion(cm_pseudo)["mIoU"]
    return out


def cmd_stage2(args) -> None:
    from pipeline.stages.segment import train_segmenter

    store = ProjectStore.open(PROJECT)
    cfg = preset("cpu")
    sets = parse_settings(args.set)
    apply_overrides(cfg, sets)
    cfg.segmentation.seed = args.seed
    rnd = store.pseudo_round if cfg.segmentation.label_source != "mask" else 0
    name = f"abl-{args.name}-r{rnd}-s{args.seed}"
    staged = stage_warm_start(store, name, Path(args.warm_from), rnd) if args.warm_from else None
    if args.warm_from:
        cfg.segmentation.warm_start = True
    t0 = time.perf_counter()
    rec = run(train_segmenter(store, cfg.segmentation, "cpu", run_name=name, on_mismatch="restart"))
    train_s = time.perf_counter() - t0
    if staged is not None and rec.get("initialised_from") != str(staged):
        raise SystemExit(f"{name} trained afresh without the --warm-from model (its old checkpoint of other settings "
                         "replaced it): run the same command again")
    row = {"name": args.name, "run_name": name, "seed": args.seed, "round": rnd, "overrides": sets,
           "warm_from": args.warm_from, "train_s": train_s, "iterations_run": rec["iterations_run"],
           "config": rec["config"], "final_loss": rec["final_loss"], **scores(store, name, cfg.inference)}
    data = load_rows()
    data["rows"] = [r for r in data["rows"] if r["run_name"] != name] + [row]
    save_rows(data)
    print(f"{name}: val {row['val']['mIoU']:.2f}  testA {row['test']['mIoU']:.2f}  train {row['train']['mIoU']:.2f}"
          f" (pseudo {row['train'].get('pseudo_mIoU', float('nan')):.2f})  {train_s / 60:.1f} min", flush=True)


def stage_warm_start(store: ProjectStore, name: str, model: Path, rnd: int) -> Path | None:
    """Put ``model`` where ``segmentation.warm_start`` looks for the run's previous-round model
    (``checkpoints/segmentation-NAME.previous.pt``), after checking that it made this round's labels; None when
    the run resumes from its own checkpoint instead."""
    from pipeline.stages.models import safe_torch_load
    from pipeline.stages.segment import stage_name

    if store.checkpoint_path(stage_name(name)).is_file():
        print(f"{name} has a checkpoint: it resumes from it (--warm-from applies to a fresh run)", flush=True)
        return None
    if not model.is_file():
        raise SystemExit(f"--warm-from {model}: no such file")
    ck = safe_torch_load(model)
    if ck.get("kind") != "segmentation":
        raise SystemExit(f"--warm-from {model}: not a segmentation checkpoint")
    if rnd == 0 or ck.get("labels_round", 0) != rnd - 1:
        raise SystemExit(f"--warm-from {model}: trained on round {ck.get('labels_round', 0)} labels, but the project's "
                         f"labels are round {rnd}; give the model whose prediction made them (round {rnd - 1})")
    dst = store.checkpoint_path(stage_name(name)).with_name(f"{stage_name(name)}.previous.pt")
    atomic_write_bytes(dst, model.read_bytes())
    return dst


def weight_maps(store: ProjectStore, run_name: str, names: list[str], key: str):
    """(name, labels, per-pixel weight, the model's label or None) per image: a model's one-scale l_norm weights on the
    ``key`` labels, or for ``review`` the label review's trust 1 - P(wrong) (what error_prob_weight=1 trains with;
    it scores the current labels only)."""
    from dataclasses import replace

    from pipeline.review.regions import label_trust
    from pipeline.stages.infer import oeem_weight_of, predict_probs
    from pipeline.stages.segment import load_segmenter

    if run_name == "review":
        if key != "pseudo":
            raise SystemExit("the label review ranks the current labels: leave out --stage1-labels for 'review'")
        for n in names:
            yield n, store.read(n, key).astype(np.int64), label_trust(store, n, 1.0, "pseudo"), None
        return
    one_scale = replace(preset("cpu").inference, scales=(1.0,), flip=False)
    model, seg_cfg = load_segmenter(store, None if run_name == "current" else run_name, "cpu")
    for n in names:
        labels = store.read(n, key).astype(np.int64)
        prob = predict_probs(model, store.image(n), one_scale, torch.device("cpu"), seg_cfg)
        yield n, labels, oeem_weight_of(prob, labels), prob.argmax(0)


def cmd_weights(args) -> None:
    """Where the OEEM (l_norm) weights of a model fall on the project's current pseudo-masks: on the wrong labels
    (what OEEM should down-weight) or on the right ones. The weight is computed on the whole image at one scale
    (training softmaxes over each tile instead, which only rescales it within a tile). ``review`` stands for the
    label review's out-of-sample trust instead of a model's weights."""
    from sklearn.metrics import roc_auc_score

    store = ProjectStore.open(PROJECT)
    key = "pseudo_cam" if args.stage1_labels else "pseudo"
    names = [n for n in store.names("train") if store.has(n, "mask") and store.has(n, key)]
    rng = np.random.default_rng(0)
    data = load_rows()
    for run_name in args.runs:
        n_wrong = n_all = copied = 0
        w_wrong = w_all = 0.0
        sample_w, sample_y = [], []
        for n, pseudo, w, predicted in weight_maps(store, run_name, names, key):
            mask = store.mask(n).astype(np.int64)
            valid = pseudo < 2  # 255: ignored, no weight
            wrong, w = (pseudo != mask)[valid], w[valid]
            n_wrong += int(wrong.sum())
            n_all += wrong.size
            w_wrong += float(w[wrong].sum())
            w_all += float(w.sum())
            if predicted is not None:  # wrong labels the model reproduces
                copied += int((predicted == pseudo)[valid][wrong].sum())
            pick = rng.choice(wrong.size, size=min(20000, wrong.size), replace=False)
            sample_w.append(w[pick])
            sample_y.append(wrong[pick])
        y, w_s = np.concatenate(sample_y), np.concatenate(sample_w)
        row = {"run": run_name, "labels": key, "wrong_share": 100 * n_wrong / n_all,
               "weight_on_wrong": 100 * w_wrong / w_all,
               "mean_weight_wrong": w_wrong / max(n_wrong, 1),
               "mean_weight_right": (w_all - w_wrong) / max(n_all - n_wrong, 1),
               "auc_low_weight_is_wrong": float(roc_auc_score(y, -w_s)) if 0 < y.sum() < y.size else float("nan"),
               "wrong_reproduced": 100 * copied / max(n_wrong, 1) if run_name != "review" else None}
        data.setdefault("weights", {})[f"{run_name} on {key}"] = row
        reproduced = ("" if row["wrong_reproduced"] is None
                      else f"; the model reproduces {row['wrong_reproduced']:.1f} % of them")
        print(f"{run_name} on {key}: {row['wrong_share']:.1f} % of train labels wrong hold "
              f"{row['weight_on_wrong']:.1f} % of the weight (mean {row['mean_weight_wrong']:.2f} vs "
              f"{row['mean_weight_right']:.2f}); AUC {row['auc_low_weight_is_wrong']:.3f}{reproduced}", flush=True)
    save_rows(data)


def patch_decided(corners: np.ndarray, labels: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, the class Eq. 2 gives whatever the margin says (0 / 1), or -1 where the margin decides (mixed
    patches) or no patch covers. On the 0 / 1 pixels a pseudo-mask carries the pathologist's patch labels, not
    the CAM's or the network's guess (``gap`` compares a model with its labels on each)."""
    from pipeline.stages.cams import restricted_pseudo

    ones = np.ones(shape, np.float32)
    gland_wins = restricted_pseudo(ones, corners, labels, size)
    gland_loses = restricted_pseudo(-ones, corners, labels, size)
    covered = np.zeros(shape, bool)
    for y, x in corners:
        covered[y:y + size, x:x + size] = True
    return np.where(covered & (gland_wins == gland_loses), gland_wins, -1).astype(np.int8)


def cmd_gap(args) -> None:
    """Where a model's train prediction falls short of the labels it learned from: on the pixels whose label the
    patch labels alone decide (there the labels are the pathologist's) and on the rest (there they are the CAM's or
    an earlier network's guess). The prediction is cleaned as ``oeem predict`` cleans it."""
    from pipeline.metrics import confusion, from_confusion
    from pipeline.stages.infer import mask_from_probs, predict_probs
    from pipeline.stages.segment import load_segmenter
    from pipeline.store.project import project_config

    store = ProjectStore.open(PROJECT)
    infer_cfg = preset("cpu").inference  # as every row of this benchmark is scored
    size = project_config(store, save=False).patches.size  # what the patch labels were cut with, as `oeem` reads it
    data = load_rows()
    for run_name in args.runs:
        model, seg_cfg = load_segmenter(store, None if run_name == "current" else run_name, "cpu")
        cms = {(who, part): np.zeros((2, 2), np.int64) for who in ("model", "labels") for part in ("decided", "guessed")}
        for n in store.names("train"):
            if not (store.has(n, "mask") and store.has(n, "patch_labels")):
                continue
            mask, labels = store.mask(n), store.read(n, "pseudo")
            decided = patch_decided(store.read(n, "patch_corners"), store.read(n, "patch_labels"), size,
                                    mask.shape) >= 0
            pred = mask_from_probs(predict_probs(model, store.image(n), infer_cfg, torch.device("cpu"), seg_cfg),
                                   infer_cfg)
            valid = labels < 2
            for part, sel in (("decided", valid & decided), ("guessed", valid & ~decided)):
                cms["model", part] += confusion(pred[sel], mask[sel])
                cms["labels", part] += confusion(labels[sel], mask[sel])
        row = {"run": run_name, "decided_share": 100 * cms["labels", "decided"].sum()
               / (cms["labels", "decided"].sum() + cms["labels", "guessed"].sum())}
        for who in ("model", "labels"):
            for part in ("decided", "guessed", "all"):
                cm = cms[who, "decided"] + cms[who, "guessed"] if part == "all" else cms[who, part]
                row[f"{who}_{part}_mIoU"] = from_confusion(cm)["mIoU"]
                row[f"{who}_{part}_wrong_px"] = int(cm.sum() - np.trace(cm))
        data.setdefault("gap", {})[run_name] = row
        print(f"{run_name}: the patch labels decide {row['decided_share']:.1f} % of the train labels; mIoU model / "
              f"labels there {row['model_decided_mIoU']:.2f} / {row['labels_decided_mIoU']:.2f}, on the guessed rest "
              f"{row['model_guessed_mIoU']:.2f} / {row['labels_guessed_mIoU']:.2f}, all "
              f"{row['model_all_mIoU']:.2f} / {row['labels_all_mIoU']:.2f}", flush=True)
    save_rows(data)


def cmd_refine(args) -> None:
    """One self-training round from a finished ablation run (its prediction refines the pseudo-masks)."""
    from pipeline.stages.infer import predict
    from pipeline.stages.selftrain import refine_round

    store = ProjectStore.open(PROJECT)
    cfg = preset("cpu")
    if len(args.source) > 1:  # choose the source on the validation split, never on testA
        rows = {r["run_name"]: r for r in load_rows()["rows"]}
        args.source = [max(args.source, key=lambda n: rows[n]["val"]["mIoU"])]
        print(f"refining with {args.source[0]} (best validation mIoU)", flush=True)
    args.source = args.source[0]
    t0 = time.perf_counter()
    run(predict(store, cfg.inference, names=store.labelled_images(), device="cpu", run_name=args.source))
    entry = run(refine_round(store, cfg.patches.size, cam_cfg=cfg.cam))
    entry["source"] = args.source
    entry["total_s"] = time.perf_counter() - t0
    data = load_rows()
    data.setdefault("selftrain", []).append(entry)
    save_rows(data)
    print(json.dumps(entry, indent=1), flush=True)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} +- {statistics.stdev(values):.2f}"


def markdown_table(rows: list[tuple], header: tuple) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


def cmd_report(args) -> None:
    print_table = markdown_table if args.markdown else plain_table  # markdown: the README's tables
    data = load_rows()
    s1 = data.get("stage1")
    rows = data["rows"]
    if s1:
        print("\nStage 1 (cpu preset, 75 training images, 10 held out for validation)\n")
        val = s1.get("val") or {}
        print_table([
            ("classifier training", f"{s1['classifier_s'] / 60:.1f} min", ""),
            ("CAMs + pseudo-masks", f"{s1['cams_s'] / 60:.1f} min", ""),
            ("CAM mIoU", f"{s1['cam_mIoU']:.2f}", f"{val.get('cam', {}).get('mIoU', float('nan')):.2f}"),
            ("pseudo-mask mIoU", f"{s1['pseudo_mIoU']:.2f}", f"{val.get('pseudo', {}).get('mIoU', float('nan')):.2f}"),
        ], ("what", "train", "validation"))
    gb = data.get("gland_bias")
    if gb:
        print("\nGland bias of the pseudo-mask (stitched CAM), chosen on validation\n")
        print_table([(f"{b:g}", f"{v:.2f}", f"{t:.2f}") for b, v, t in zip(gb["biases"], gb["val"], gb["train"])],
                    ("gland bias", "validation pseudo mIoU", "train pseudo mIoU"))
        if s1 and "patch_votes" in s1:
            print(f"(reference per-patch votes, no bias: validation {s1['patch_votes']['val']['pseudo']['mIoU']:.2f}, "
                  f"train {s1['patch_votes']['pseudo_mIoU']:.2f})")
    for entry in data.get("selftrain", []):
        print(f"\nself-training round {entry['round']} from {entry['source']} ({entry['total_s'] / 60:.1f} min): "
              f"pseudo-mask mIoU train {entry['train']['before']['mIoU']:.2f} -> {entry['train']['after']['mIoU']:.2f}"
              f", validation {entry['val']['before']['mIoU']:.2f} -> {entry['val']['after']['mIoU']:.2f}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["round"]), []).append(r)
    table = []
    for (name, rnd), rs in groups.items():
        table.append((name, str(rnd), fmt([r["val"]["mIoU"] for r in rs]), fmt([r["test"]["mIoU"] for r in rs]),
                      fmt([r["train"]["mIoU"] for r in rs]),
                      "(gland masks)" if rs[0]["overrides"].get("segmentation.label_source") == "mask"
                      else fmt([r["train"]["pseudo_mIoU"] for r in rs]),
                      f"{statistics.fmean(r['train_s'] for r in rs) / 60:.1f}", str(len(rs))))
    print("\nStage 2 (mIoU; round = self-training round of the labels; train = prediction vs the train masks, "
          "pseudo = the labels it learned from)\n")
    print_table(table, ("run", "round", "validation", "testA", "train", "pseudo (train)", "min", "seeds"))
    if args.paired:
        paired_table(rows, *args.paired, print_table)
    for speed in scale_tables(data).values():
        print(f"\nTest-time scales ({speed['model']}; + flip)\n")
        print_table([(",".join(f"{x:g}" for x in r["scales"]), f"{r['val']:.2f}", f"{r['test']:.2f}",
                      f"{r['s_per_image']:.2f}") for r in speed["rows"]],
                    ("scales", "validation", "testA", "s / image"))


def paired_table(rows: list[dict], a: str, b: str, print_table) -> None:
    """Run ``b`` minus run ``a``, seed by seed on the same labels (same round): the seeds share the data order and
    augmentation, so the paired difference is what tells a loss from the seed noise."""
    by = {(r["name"], r["round"], r["seed"]): r for r in rows}
    pairs = sorted((rnd, seed) for (name, rnd, seed) in by if name == a and (b, rnd, seed) in by)
    if not pairs:
        print(f"\nno seeds with both {a!r} and {b!r} on the same labels")
        return
    table = []
    for split in ("val", "test", "train"):
        d = [by[(b, rnd, s)][split]["mIoU"] - by[(a, rnd, s)][split]["mIoU"] for rnd, s in pairs]
        table.append(({"val": "validation", "test": "testA", "train": "train"}[split],
                      " / ".join(f"{x:+.2f}" for x in d), fmt(d)))
    print(f"\n{b} minus {a}, paired by seed ({', '.join(f'round {r} seed {s}' for r, s in pairs)})\n")
    print_table(table, ("split", "per seed", "mean +- sd"))


def scale_tables(data: dict) -> dict:
    """The test-time scale tables by model (the first results file held one table for one model)."""
    tables = data.get("scales") or {}
    return {tables["model"]: tables} if "model" in tables else tables


def cmd_scales(args) -> None:
    """What each test-time scale buys (mIoU on validation and testA) and costs (s / image)."""
    from pipeline.config import InferConfig

    store = ProjectStore.open(PROJECT)
    out = {"model": args.run, "rows": []}
    for text in args.sets:
        scales = tuple(float(x) for x in text.split(","))
        infer = InferConfig(scales=scales, flip=True, crop_size=384, stride=320)
        sc = scores(store, args.run, infer, splits=("val", "test"))
        n_val, n_test = len(store.names("val")), len(store.names("test"))
        s_img = (sc["val"]["s_per_image"] * n_val + sc["test"]["s_per_image"] * n_test) / (n_val + n_test)
        out["rows"].append({"scales": scales, "val": sc["val"]["mIoU"], "test": sc["test"]["mIoU"],
                            "s_per_image": s_img})
        print(f"{text}: val {sc['val']['mIoU']:.2f} testA {sc['test']['mIoU']:.2f} {s_img:.2f} s/image", flush=True)
    data = load_rows()
    data["scales"] = {**scale_tables(data), args.run: out}
    save_rows(data)


def cmd_bias(args) -> None:
    """Pseudo-mask mIoU on the validation split for each gland bias, from the stored CAMs (seconds, no network):
    how the cpu preset's ``cam.gland_bias`` was chosen. testA plays no part; train is shown for reference."""
    from pipeline.metrics import confusion, from_confusion
    from pipeline.stages.cams import pseudo_from_cam

    store = ProjectStore.open(PROJECT)
    size = preset("cpu").patches.size
    out = {"biases": args.biases, "val": [], "train": []}
    for split in ("val", "train"):
        items = [(store.read(n, "cam"), store.read(n, "patch_corners"), store.read(n, "patch_labels"), store.mask(n))
                 for n in store.names(split)]
        for b in args.biases:
            cm = np.zeros((2, 2), np.int64)
            for cam, corners, labels, mask in items:
                cm += confusion(pseudo_from_cam(cam, corners, labels, size, b), mask)
            out[split].append(from_confusion(cm)["mIoU"])
    print_table([(f"{b:g}", f"{v:.2f}", f"{t:.2f}") for b, v, t in zip(args.biases, out["val"], out["train"])],
                ("gland bias", "validation pseudo mIoU", "train pseudo mIoU"))
    # the smallest bias within 0.05 mIoU of the best: the least change that does as well
    top = max(out["val"])
    best = min(b for b, v in zip(args.biases, out["val"]) if v >= top - 0.05)
    print(f"chosen on validation: {best:g} (the smallest bias within 0.05 mIoU of the best, {top:.2f})")
    data = load_rows()
    data["gland_bias"] = {**out, "best_on_val": best}
    save_rows(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("stage1")
    s1.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. classifier.epochs=6")
    s2 = sub.add_parser("stage2")
    s2.add_argument("name")
    s2.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. segmentation.loss=ce")
    s2.add_argument("--seed", type=int, default=0)
    s2.add_argument("--warm-from", metavar="MODEL.pt",
                    help="start a fresh run from this segmentation checkpoint (the model that made the labels)")
    wt = sub.add_parser("weights", help="where a model's OEEM weights fall: on the wrong labels or the right ones")
    wt.add_argument("runs", nargs="+", help="run names (abl-NAME-rROUND-sSEED), current for the project's model, "
                    "or review for the label review's trust (oeem regions)")
    wt.add_argument("--stage1-labels", action="store_true",
                    help="score the weights on the stage-1 pseudo-masks instead of the current round's")
    gp = sub.add_parser("gap", help="a model's train prediction against its labels, where the patch labels decide "
                        "them and where they were guessed")
    gp.add_argument("runs", nargs="+", help="run names (abl-NAME-rROUND-sSEED) or current for the project's model")
    rf = sub.add_parser("refine")
    rf.add_argument("source", nargs="+", help="run name(s) of the model whose prediction refines the pseudo-masks;"
                    " with several, the best on the validation split")
    rp = sub.add_parser("report")
    rp.add_argument("--markdown", action="store_true", help="tables as markdown (for the README)")
    rp.add_argument("--paired", nargs=2, metavar=("A", "B"), help="B minus A seed by seed, e.g. ce lnorm")
    bs = sub.add_parser("bias")
    bs.add_argument("biases", nargs="*", type=float, default=[0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8])
    sc = sub.add_parser("scales")
    sc.add_argument("run", help="run name of the model to predict with, or current for the project's model")
    sc.add_argument("sets", nargs="+", help="comma lists of scales, e.g. 1 0.75,1,1.25")
    args = ap.parse_args()
    {"stage1": cmd_stage1, "stage2": cmd_stage2, "refine": cmd_refine, "report": cmd_report,
     "scales": cmd_scales, "bias": cmd_bias,
     "weights": cmd_weights, "gap": cmd_gap}[args.cmd](args)


if __name__ == "__main__":
    main()
