"""Markdown tables of every benchmark result in benchmarks/results/*.json (what the README shows).

    python benchmarks/report.py
"""
from __future__ import annotations

import json
import statistics

from _common import RESULTS


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def stage1(d: dict) -> str:
    c = d["cam_mode_comparison"]
    cfg = d["config"]["cam"]
    out = [f"**Stage 1** (`python benchmarks/stage1_glas.py`): `cpu` preset, GlaS train "
           f"({d['patches']['images']} images, {d['patches']['patches']} patches), random init.", "",
           table(("what", "measured", "note"), [
               ("classifier training", f"{d['classifier_train_s'] / 60:.1f} min", f"{d['patches_per_s']:.0f} patches/s"),
               ("achieved training FLOP/s", f"{d['train_gflop_per_s']:.0f} GFLOP/s",
                f"{100 * d['train_gflop_per_s'] / d['matmul_peak_gflop_per_s']:.0f} % of the measured matmul peak "
                f"({d['matmul_peak_gflop_per_s']:.0f} GFLOP/s)"),
               (f"CAMs + pseudo-masks ({cfg['mode']}, scales {tuple(cfg['scales'])})", f"{d['cam_s'] / 60:.1f} min", ""),
               ("**stage 1 total**", f"**{d['stage1_total_s'] / 60:.1f} min**", "aim ≤ 30 min"),
               ("CAM mIoU (train)", f"{d['cam_mIoU']:.2f}", "paper 67.02 (ImageNet init); naive probe 55.4"),
               ("pseudo-mask mIoU (train)", f"**{d['pseudo_mIoU']:.2f}**", "paper 70.04 (ImageNet init); naive probe 58.6"),
           ]), "",
           f"Per-patch vs whole-image CAMs, same model, first {c['images']} training images:", "",
           table(("CAM mode", "s / image", "CAM mIoU", "pseudo-mask mIoU"), [
               ("per patch (reference, default)", f"{c['patch']['seconds_per_image']:.2f}",
                f"{c['patch']['cam_mIoU']:.2f}", f"{c['patch']['pseudo_mIoU']:.2f}"),
               ("whole image (fully convolutional)", f"{c['image']['seconds_per_image']:.2f}",
                f"{c['image']['cam_mIoU']:.2f}", f"{c['image']['pseudo_mIoU']:.2f}"),
           ])]
    return "\n".join(out)


def metric(row: dict, m: str) -> float | None:
    """One score of a result row. ``pixel_Dice`` is the measured Dice of the gland class; rows written before it
    was measured (issue 31) hold only "Dice" = 2 mIoU / (1 + mIoU), which is no Dice, so it is recomputed from their
    IoU_gland (Dice = 2J / (1 + J) for one class, exact). A score a row lacks is None."""
    if m == "pixel_Dice" and m not in row and "IoU_gland" in row:
        j = row["IoU_gland"] / 100
        return 100 * 2 * j / (1 + j)
    return row.get(m)


def mean_cell(rows: list[dict], m: str = "mIoU") -> str:
    """Mean (± standard deviation over seeds) of a score over rows, '-' when a row lacks it."""
    vals = [metric(r, m) for r in rows]
    if not vals or None in vals:
        return "-"
    mean = statistics.fmean(vals)
    return f"{mean:.2f}" if len(vals) == 1 else f"{mean:.2f} ± {statistics.stdev(vals):.2f}"


def tables(d: dict) -> str:
    s = d["summary"]

    def cell(k, m="mIoU"):
        return mean_cell([r for r in d["rows"] if r["setting"] == k], m) if k in s else "-"

    p = d["paper"]
    rows1 = [(name, cell(k), cell(k, "pixel_Dice"), cell(k, "F1"), cell(k, "object_F1"), cell(k, "object_Dice"),
              cell(k, "object_Hausdorff"), f"{p['table1'][k]:.2f}")
             for name, k in (("fully supervised (CE on the gland masks)", "full"), ("weak, CE", "ce"),
                             ("weak, OEEM (l_norm)", "l_norm")) if k in s]
    rows2 = [("CAM (train)", f"{d['stage1']['cam_mIoU']:.2f}", "67.02"),
             ("pseudo-mask (train)", f"{d['stage1']['pseudo_mIoU']:.2f}", "70.04")]
    rows2 += [(f"prediction, {name} (testA)", cell(k), f"{p['table2'][k]:.2f}")
              for name, k in (("CE", "ce"), ("OEEM", "l_norm")) if k in s]
    rows3 = [(k, cell(k), f"{p['table3'][k]:.2f}") for k in p["table3"] if k in s]
    cmd = d.get("command") or ("python benchmarks/glas_tables.py" + (" --quick" if d["quick"] else f" --seeds {d['seeds']}"))
    head = (f"**Tables 1-3** (`{cmd}`): `cpu` preset, {d['iterations']} iterations, batch 8, 256 px tiles, "
            f"test scales {tuple(d['test_scales'])} + flip, {d['seeds']} seed(s); training time per run: "
            + ", ".join(f"{r['setting']} {train_time(r)}" for r in d["rows"])
            + f"; prediction {statistics.fmean(r['predict_s_per_image'] for r in d['rows']):.2f} s / testA image. "
            "Paper: ImageNet-initialised ResNet38, GPU.")
    return "\n".join([head, "", table(("Table 1: method", "mIoU", "pixel Dice", "F1", "object F1", "object Dice",
                                       "object Hausdorff", "paper mIoU"), rows1), "",
                      table(("Table 2: stage", "ours", "paper"), rows2), "",
                      table(("Table 3: loss", "testA mIoU", "paper"), rows3)])


def train_time(row: dict) -> str:
    """Training time of one run; a run resumed from a checkpoint only timed the iterations it ran."""
    timed = row.get("iterations_timed", row["iterations"])
    if timed >= row["iterations"]:
        return f"{row['train_s'] / 60:.1f} min"
    if timed == 0:
        return "not timed (reused)"
    return f"{row['train_s'] / timed:.2f} s / iteration over the last {timed} (resumed)"


def variants(main: dict | None) -> str | None:
    """One row per schedule experiment (glas_tables-<variant>.json) next to the preset's row of the same loss."""
    found = sorted(RESULTS.glob("glas_tables-*.json"))
    if not found:
        return None
    ref = (main or {}).get("summary", {})
    rows = []
    for path in found:
        d = json.loads(path.read_text())
        for k, v in d["summary"].items():
            base = f"{ref[k]['mIoU'][0]:.2f}" if k in ref else "-"
            delta = f"{v['mIoU'][0] - ref[k]['mIoU'][0]:+.2f}" if k in ref else "-"
            rows.append((f"`{d.get('command', path.stem)}`", k, f"{d['iterations']}", f"{d['warmup_ce_iters']}",
                         f"{d.get('weight_temperature', 1.0):g}",
                         f"{v['mIoU'][0]:.2f}", mean_cell([r for r in d["rows"] if r["setting"] == k], "pixel_Dice"),
                         base, delta,
                         "; ".join(train_time(r) for r in d["rows"] if r["setting"] == k)))
    return "\n".join(["**Schedule experiments** (same stage-1 pseudo-masks, same test protocol; chosen before "
                      "looking at testA, one seed each):", "",
                      table(("command", "loss", "iterations", "CE warm-up", "temperature", "testA mIoU", "pixel Dice",
                             "preset schedule mIoU", "difference", "training"), rows)])


def speed(d: dict, g: dict | None) -> str:
    t, i = d["train"], d["inference_s_per_image"]
    rows = [("segmentation training", f"{t['s_per_iteration']:.2f} s / iteration",
             f"{t['gflop_per_s']:.0f} GFLOP/s, {100 * t['gflop_per_s'] / t['matmul_peak_gflop_per_s']:.0f} % of the "
             f"matmul peak measured in the same run ({t['matmul_peak_gflop_per_s']:.0f} GFLOP/s)"),
            (f"inference, {len(d['scales'])} scales + flip, windows batched", f"{i['batched']:.1f} s / image",
             f"GlaS testA, {d['images']} images"),
            ("inference, one window at a time", f"{i['one window at a time']:.1f} s / image",
             f"batched is {d['batched_speedup']:.2f}x faster")]
    if g:
        rows.append(("napari event loop while training (p95 / max lateness)",
                     f"{g['training']['p95_ms']:.0f} / {g['training']['max_ms']:.0f} ms",
                     f"idle: {g['idle']['p95_ms']:.0f} / {g['idle']['max_ms']:.0f} ms; aim p95 < 100 ms"))
    return "\n".join(["**Speed** (`python benchmarks/stage2_speed.py`, `xvfb-run -a python benchmarks/gui_latency.py`):",
                      "", table(("what", "measured", "note"), rows)])


def ranking(q: dict) -> str:
    return (f"How well the ranking finds wrong pseudo-labels on the training images: {100 * q['pseudo_error_rate']:.1f} % "
            f"of pseudo-mask pixels are wrong and the baseline model's own prediction is wrong on "
            f"{100 * q['model_error_rate']:.1f} %; {100 * q['flagged_precision']:.1f} % of the pixels flagged as "
            f"confusing ({100 * q['flagged_share']:.1f} % of all) are wrong pseudo-labels, but only "
            f"{100 * q['chosen_precision']:.1f} % of those inside the top-ranked regions.")


def gain(d: dict) -> str:
    r = d["results"]
    base = r["none"]["mIoU"]
    rows = [(label, f"{r[k]['pixels']:,}", f"{100 * r[k]['pixels'] / d['train_pixels']:.2f} %",
             f"{r[k]['wrong_pseudo_pixels_fixed']:,}", f"{r[k]['mIoU']:.2f}", f"{r[k]['mIoU'] - base:+.2f}")
            for k, label in (("none", "no corrections"), ("top", f"top-{d['top_k']} confusing regions fixed"),
                             ("random", "same pixel count at random places"))]
    its = f" --iterations {d['iterations']}" if d["baseline_run"].startswith("gain-") else ""
    return "\n".join([f"**Annotation gain** (`python benchmarks/annotation_gain.py{its} --top-k {d['top_k']}`, "
                      f"{d['iterations']} iterations each): a simulated pathologist replaces the pseudo-mask by the truth "
                      "inside the regions the tool ranks, then the segmentation is retrained (testA mIoU).", "",
                      table(("corrections", "pixels", "of train pixels", "wrong labels fixed", "testA mIoU", "gain"),
                            rows)] + (["", ranking(d["ranking"])] if "ranking" in d else []))


def main() -> None:
    machine = None
    parts = []
    for name, fn in (("stage1_glas.json", stage1), ("glas_tables.json", tables), ("annotation_gain.json", gain)):
        d = load(name)
        if d:
            machine = machine or d["machine"]
            parts.append(fn(d))
    q = load("annotation_ranking.json")
    if q and not (load("annotation_gain.json") or {}).get("ranking"):
        parts.append("**Ranking quality** (`python benchmarks/annotation_gain.py --rank-only`): " + ranking(q))
    seeds = load("glas_tables_seeds.json")
    if seeds:
        parts.append(f"**Seed spread** (`{seeds['command']}`): " + "; ".join(
            f"{k} testA mIoU {v['mIoU'][0]:.2f} ± {v['mIoU'][1]:.2f} over {seeds['seeds']} seeds ("
            + ", ".join(f"{r['mIoU']:.2f}" for r in seeds["rows"] if r["setting"] == k) + ")"
            for k, v in seeds["summary"].items()) + ".")
    extra = variants(load("glas_tables.json"))
    if extra:
        parts.append(extra)
    d = load("stage2_speed.json")
    if d:
        parts.append(speed(d, load("gui_latency.json")))
    if machine:
        parts.insert(0, f"Machine: {machine['cpus']} CPU cores ({machine['processor']}), torch {machine['torch']}, "
                        f"{machine['threads']} threads, no GPU.")
    print("\n\n".join(parts) if parts else "no results yet: run the benchmarks first")


if __name__ == "__main__":
    main()
