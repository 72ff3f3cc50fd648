"""Every measured figure the README and docs quote: the command that makes it, how long it takes, the tracked
result file it lands in, and the figures of that file the docs quote.

    python benchmarks/figures.py list              # what exists, what is tracked, minutes on 2 cores
    python benchmarks/figures.py check             # do the docs quote what the tracked files hold?
    python benchmarks/figures.py tables            # write the docs' generated tables from the files
    OEEM_GLAS_ROOT=../shared/data/glas python benchmarks/figures.py run [--quick] [--only NAME ...]
    python benchmarks/figures.py compare           # the figures remade here against the committed files

``make bench`` runs every command one after the other (2 cores: one torch job at a time, or every timing is
off); ``make bench-quick`` only those the docs quote that are expected under 15 minutes. ``run`` ends with
``compare``: each quoted figure and table row as committed and as remade, side by side. A quoted figure must
stand in the same paragraph (or table row) as the name of its file, so a reader of the docs can tell where it
comes from; ``check`` (and ``tests/test_figures.py``) fails when the docs and the files disagree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
QUICK_MINUTES = 15.0


@dataclass(frozen=True)
class Quote:
    """One figure a doc quotes: the text it must read, computed from the result file."""

    doc: str  # path from the repository root
    value: Callable[[dict], float]
    fmt: str = "{:.2f}"
    what: str = ""

    def text(self, data: dict) -> str:
        return self.fmt.format(self.value(data))


@dataclass(frozen=True)
class Table:
    """A docs table made from a result file, never typed: ``figures.py tables`` writes it between
    ``<!-- table: NAME -->`` and ``<!-- /table -->`` in ``doc``, and ``check`` fails when the two differ."""

    doc: str  # path from the repository root
    name: str
    render: Callable[[dict], list[str]]  # the table's markdown lines

    def markers(self) -> tuple[str, str]:
        return f"<!-- table: {self.name} -->", "<!-- /table -->"


@dataclass(frozen=True)
class Figure:
    name: str
    command: str  # from the repository root; PY is the project's Python
    result: str  # under benchmarks/results/
    minutes: float  # expected on 2 cores (AMD EPYC Zen 5, bf16 where native), alone
    about: str
    quotes: tuple[Quote, ...] = field(default=())
    needs_glas: bool = True
    tables: tuple[Table, ...] = field(default=())


def markdown(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _chosen(d: dict) -> dict:
    """The row of an instances result file its validation chose."""
    return next(r for r in d["rows"] if all(r.get(k) == v for k, v in d["chosen_on_val"].items()))


def _shipped(d: dict) -> dict:
    """The row of an instances result file with the setting `oeem` ships (the one its slide was timed with)."""
    ship = {("working_scale" if k == "scale" else k): v for k, v in d["slide"]["setting"].items() if k != "h"}
    return next(r for r in d["rows"] if all(r.get(k) == v for k, v in ship.items()))


def _testa(d: dict, key: str) -> float:
    return d["evaluation"]["test"][key]


def _update_mean(arm: str, images: int, part: str) -> Callable[[dict], float]:
    def value(d: dict) -> float:
        rows = [r for r in d["rows"] if r["arm"] == arm and r["images"] == images]
        if not rows:
            raise KeyError(f"no rows for {arm}, {images} images")
        return statistics.mean(r["delta"][part] for r in rows)
    return value


def _update_seconds(d: dict) -> float:
    return statistics.median(r["seconds"] for r in d["rows"])


def _weak_row(key: str, part: str) -> Callable[[dict], float]:
    return lambda d: d["runs"][key][part]


def _review(row: str, at: int) -> Callable[[dict], float]:
    return lambda d: d["half_B"]["results"][row][f"precision@{at}"] * at


LR = "train-bn+lr=0.0001"
README = "README.md"
BENCH_DOC = "docs/benchmarks.md"

# the kinds benchmarks/instances_limits.py's error_kinds counts, as the tables name them
ERROR_KINDS = {"gland: found": "true glands found (an object holds more than half)",
               "gland: merged": "merged: the object over it is another gland's",
               "gland: missed": "missed: the mask covers less than half",
               "gland: missed, under 1000 px": "... of which under 1000 px (the prediction drops such regions)",
               "gland: split": "split: covered by pieces, none holding half",
               "object: piece": "objects that are a piece of one gland",
               "object: background": "objects mostly on the truth's background",
               "object: spans several": "objects over several glands, none held by half"}


def _limits_errors_table(d: dict) -> list[str]:
    """The shipped cut's true glands and predicted objects by kind per split, and what the merged glands' bridges
    hold."""
    splits = ("val", "train", "test")
    kinds = d["error_kinds"]
    rows = [(w, *(kinds[s].get(k, 0) for s in splits)) for k, w in ERROR_KINDS.items()]
    merged = d["merged"]
    rows.append(("merged glands: median gap to the other gland (px)",
                 *("-" if merged[s]["gap_px_median"] is None else f"{merged[s]['gap_px_median']:.1f}" for s in splits)))
    rows.append(("merged glands: median gland probability on the bridge",
                 *("-" if merged[s]["bridge_prob_median"] is None else f"{merged[s]['bridge_prob_median']:.3f}"
                   for s in splits)))
    rows.append((f"bridges above the cut's p > {d['shipped']['core_threshold']:g}",
                 *(f"{merged[s]['bridges_above_core_threshold']} of {merged[s]['bridges_measured']}" for s in splits)))
    return markdown(("shipped `core` cut", "validation", "training images", "testA"), rows)


def _limits_table(d: dict) -> list[str]:
    """Each alternative cut at its best on validation beside the shipped one: object F1 / Dice / Hausdorff."""
    what = {"core (shipped)": "the shipped `core` cut", "lumens": "split at lumens",
            "colour": "seeds where colour agrees", "merge": "long borders joined",
            "small left out": "small glands left out of the labels", "3 scales": "3-scale prediction, then the cut"}

    def cells(r: dict, split: str) -> str:
        s = r[split]
        return f"{s['object_F1']:.1f} / {s['object_Dice']:.1f} / {s['object_Hausdorff']:.1f}"
    rows = []
    for method, r in d["best_of_each_method"].items():
        setting = ", ".join(f"{k} {v:g}" for k, v in r.items() if k not in ("method", "val", "train", "test")) or "-"
        rows.append((what.get(method, method), setting, cells(r, "val"), cells(r, "train"), cells(r, "test")))
    return markdown(("cut (best on validation)", "setting", "validation", "training images", "testA"), rows)


def _rounds_table(d: dict) -> list[str]:
    """Each model (no further round, then the four further rounds): its pixel mIoU and the cut best on validation,
    object F1 / Dice / Hausdorff per split."""
    def cells(r: dict, split: str) -> str:
        s = r[split]
        return f"{s['object_F1']:.1f} / {s['object_Dice']:.1f} / {s['object_Hausdorff']:.1f}"
    rows = []
    for label, arm in d["arms"].items():
        best = arm["best_on_val"]
        cut = f"p > {best['core_threshold']:g}, >= {best['min_core_area']} px"
        rows.append((label, f"{arm['mIoU']['val']:.2f} / {arm['mIoU']['test']:.2f}", cut, cells(best, "val"),
                     cells(best, "train"), cells(best, "test")))
    return markdown(("model", "pixel mIoU validation / testA", "cut (best on validation)", "validation",
                     "training images", "testA"), rows)


def _rounds_errors_table(d: dict) -> list[str]:
    """What each model's chosen cut gets wrong, by kind: training images / testA."""
    arms = d["arms"]
    short = {label: label.replace(" round, working scale ", " ") for label in arms}
    rows = [(w, *(f"{a['kinds']['train'].get(k, 0)} / {a['kinds']['test'].get(k, 0)}" for a in arms.values()))
            for k, w in ERROR_KINDS.items()]
    return markdown(("training images / testA", *short.values()), rows)


def _instances_table(d: dict) -> list[str]:
    """Each separation method at its best on validation, the chosen row in bold, and the best core row at the
    other scale: object F1 / object Dice / object Hausdorff per split, and the time against the prediction's."""
    chosen = _chosen(d)
    predict_ms = d["predict"]["ms_per_image"]
    other = [r for r in d["rows"] if r["method"] == "core" and r["working_scale"] != chosen["working_scale"]]
    picks = [("`components` (each connected region one gland)", d["best_of_each_method"]["components"]),
             ("`distance` (h-maxima watershed of the distance transform)", d["best_of_each_method"]["distance"]),
             ("**`core`** (seeds where p > threshold, grown over p): chosen", chosen)]
    if other:
        best_other = max(other, key=lambda r: (round(r["val"]["object_F1"], 2), round(r["val"]["object_Dice"], 2)))
        picks.append((f"`core` at scale {best_other['working_scale']:g}", best_other))

    def setting(r: dict) -> str:
        if r["method"] == "distance":
            return f"h = {r['h']:g} px, scale {r['working_scale']:g}"
        if r["method"] == "core":
            return (f"p > {r['core_threshold']:g}, seeds >= {r['min_core_area']:g} px, opening {r['core_opening']:g} "
                    f"px, scale {r['working_scale']:g}")
        return "-"

    def cells(r: dict, split: str) -> str:
        s = r[split]
        return f"{s['object_F1']:.1f} / {s['object_Dice']:.1f} / {s['object_Hausdorff']:.1f}"
    rows = [(what, setting(r), cells(r, "val"), cells(r, "train"), cells(r, "test"), f"{r['ms_per_image']:.1f}",
             f"{100 * r['ms_per_image'] / predict_ms:.0f} %") for what, r in picks]
    return markdown(("method", "setting", "validation", "training images", "testA", "ms / image",
                     "of the prediction"), rows)


def _precision_table(d: dict) -> list[str]:
    """Seconds per training step and per predicted image in each mode, the speed-up over fp32 in brackets and the
    fastest in bold."""
    def cell(t: float, base: float | None, best: float) -> str:
        text = f"{t:.3f}" + (f" (x{base / t:.2f})" if base is not None and t != base else "")
        return f"**{text}**" if t == best else text
    rows = []
    for name, times in d["train_step_s"].items():
        ts = list(times.values())
        rows.append((f"train step: {name}", *(cell(t, ts[0], min(ts)) for t in ts)))
    fp32, bf16 = d["predict_s"]["fp32"], d["predict_s"]["bf16"]
    rows.append(("predict one GlaS image (plain U-Net, 1 scale + flip)", "-", cell(fp32, None, min(fp32, bf16)),
                 cell(bf16, fp32, min(fp32, bf16))))
    return markdown(("what", *next(iter(d["train_step_s"].values()))), rows)


def _faults_table(d: dict) -> list[str]:
    names = {"corrections": "saving corrections", "checkpoint": "training checkpoints",
             "export": "exporting (PNG, TIFF, OME-Zarr, GeoJSON)"}
    return markdown(("scenario", "kills", "problems"), [(names.get(r["scenario"], r["scenario"]), r["kills"],
                                                         f"**{r['problems']}**") for r in d["rows"]])


def _slide_sizes_table(d: dict) -> list[str]:
    return markdown(("slide", "file", "tissue blocks (1024 px)", "glass blocks skipped", "tissue Mpx", "time",
                     "peak RSS"), [(f"{r['side']:,} x {r['side']:,} px", f"{r['slide_mb']:.0f} MB", r["tissue_blocks"],
                                    r["glass_blocks"], f"{r['tissue_mpx']:.0f}", f"{r['seconds']:.1f} s",
                                    f"{r['peak_rss_mb']:.0f} MB") for r in d["sizes"]])


def _slide_scale_out_table(d: dict) -> list[str]:
    one, two = d["dask"]
    ddp1, ddp2 = d["ddp"]["rows"]
    return markdown(("scale-out (same run)", "1", "2", "ratio"), [
        (f"dask `LocalCluster` workers (1 thread each), {one['blocks']} blocks of 512 px",
         f"{one['blocks_per_s']:.2f} blocks / s", f"{two['blocks_per_s']:.2f} blocks / s",
         f"x{two['blocks_per_s'] / one['blocks_per_s']:.2f}"),
        ("`torchrun` processes (cpu preset, full supervision on the sample images, global batch 8; 1 x 2 threads "
         "vs 2 x 1 thread)", f"{ddp1['it_per_s']:.2f} it / s", f"{ddp2['it_per_s']:.2f} it / s",
         f"x{ddp2['it_per_s'] / ddp1['it_per_s']:.2f}")])


def _end_to_end_table(d: dict) -> list[str]:
    """Each stage's labels and the final model's prediction, per split, and the minutes each stage took."""
    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"
    ev, restricted = d["evaluation"], d["restricted_prediction"]
    rows = [("stage 1: pseudo-masks", f(d["pseudo"]["train"]), f(d["pseudo"]["val"]), "")]
    rows += [(f"self-training round {r['round']}: pseudo-masks", f(r["train"]), f(r["val"]), "")
             for r in d["selftrain"]]
    rows.append(("**prediction** (the final model)", f(ev["train"]["mIoU"]), f(ev["val"]["mIoU"]),
                 f"**{ev['test']['mIoU']:.2f}**"))
    rows.append(("the prediction restricted by the patch labels and cleaned (what a next round trains on)",
                 f(restricted["train"]["mIoU"]), f(restricted["val"]["mIoU"]), ""))
    rows.append((f"glands as objects ({_glands(ev['test'])}): object F1 / Dice / Hausdorff",
                 *(f"{ev[s]['object_F1']:.1f} / {ev[s]['object_Dice']:.1f} / {ev[s]['object_Hausdorff']:.1f}"
                   for s in ("train", "val", "test"))))
    sec = d["stage_seconds"]
    minutes = ", ".join(f"{k} {v / 60:.1f}" for k, v in sec.items() if v >= 30)
    rows.append((f"minutes, {d['precision']['segmentation']}: {minutes}; peak memory "
                 f"{d['peak_rss_mb'] / 1024:.1f} GB", "", "", f"**{d['wall_seconds'] / 60:.1f}** in all"))
    return markdown(("mIoU", "train", "validation", "testA"), rows)


def _weak_budget_table(d: dict) -> list[str]:
    """The short-schedule budget sweep: what tagging 10-100 % of the images (picked by `oeem suggest`) buys."""
    runs = [r for r in d["runs"].values() if r.get("schedule") != "cpu preset"]
    full = next(r for r in runs if r["budget"] == 100)
    rows = [(f"{r['budget']} %", f"{r['labelled_patches']:,}", f"{r['val_pseudo_mIoU']:.2f}", f"{r['val_mIoU']:.2f}",
             f"{r['testA_mIoU']:.2f}", f"{100 * r['testA_mIoU'] / full['testA_mIoU']:.1f} %", f"{r['minutes']:.1f}")
            for r in sorted(runs, key=lambda r: r["budget"])]
    return markdown(("tagged (`oeem suggest`)", "labelled patches", "validation pseudo-masks", "validation mIoU",
                     "testA mIoU", "of the 100 % testA", "min"), rows)


def _mean_sd(xs: list[float]) -> str:
    return f"{xs[0]:.2f}" if len(xs) == 1 else f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def _losses_table(d: dict) -> list[str]:
    """Each loss on the stage-1 pseudo-masks (mean ± sd over its seeds, each seed's figure in brackets), then
    l_norm minus CE paired seed by seed."""
    by: dict[str, list[dict]] = {}
    for r in d["rows"]:
        by.setdefault(r["name"], []).append(r)
    names = sorted(by, key=lambda n: (n not in ("ce", "l_norm"), n != "ce", n))

    def cell(rs: list[dict], split: str) -> str:
        xs = [r[split]["mIoU"] for r in sorted(rs, key=lambda r: r["seed"])]
        return _mean_sd(xs) + (" (" + " / ".join(f"{x:.2f}" for x in xs) + ")" if len(xs) > 1 else "")
    rows = [(f"`{n}`", ", ".join(str(r["seed"]) for r in sorted(by[n], key=lambda r: r["seed"])),
             cell(by[n], "val"), cell(by[n], "test"), cell(by[n], "train"),
             f"{statistics.mean(r['train_s'] for r in by[n]) / 60:.1f}") for n in names]
    seeds = _paired_seeds(d)
    if seeds:
        def diff(split: str) -> str:
            xs = _paired_diffs(d, split)
            sd = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
            return f"{statistics.mean(xs):+.2f}{sd} (" + " / ".join(f"{x:+.2f}" for x in xs) + ")"
        rows.append(("`l_norm` minus `ce`, paired by seed", ", ".join(map(str, seeds)), diff("val"),
                     diff("test"), diff("train"), ""))
    labels = d["stage1"]["pseudo_mIoU"]
    return markdown(("loss", "seeds", "validation mIoU", "testA mIoU", f"train (labels {labels:.2f})",
                     "min per training"), rows)


def _paired_seeds(d: dict) -> list[int]:
    """The seeds both CE and l_norm ran, in order."""
    ran = {(r["name"], r["seed"]) for r in d["rows"]}
    return sorted(s for (n, s) in ran if n == "ce" and ("l_norm", s) in ran)


def _paired_diffs(d: dict, split: str) -> list[float]:
    """l_norm minus CE on one split, seed by seed (same seed: same initialisation, data order, augmentation)."""
    by = {(r["name"], r["seed"]): r[split]["mIoU"] for r in d["rows"]}
    return [by["l_norm", s] - by["ce", s] for s in _paired_seeds(d)]


def _paired(split: str) -> Callable[[dict], float]:
    """l_norm minus CE on one split, the mean over the seeds both ran."""
    def value(d: dict) -> float:
        xs = _paired_diffs(d, split)
        if not xs:
            raise KeyError("no seed with both ce and l_norm")
        return statistics.mean(xs)
    return value


def _bias_table(d: dict) -> list[str]:
    g = d["gland_bias"]
    return markdown(("gland bias", "validation pseudo mIoU", "train pseudo mIoU"),
                    [(f"**{b:g}** (chosen)" if b == g["best_on_val"] else f"{b:g}", f"{v:.2f}", f"{t:.2f}")
                     for b, v, t in zip(g["biases"], g["val"], g["train"])])


def _cleaning_table(d: dict) -> list[str]:
    """The prediction cleaned by each (drop, fill) pair with nothing dropped or with the preset's drop, the
    pair validation chose in bold, the preset's marked."""
    sys.path.insert(0, str(REPO))
    from pipeline.config import preset

    infer = preset("cpu").inference
    ours = (infer.drop_glands_below, infer.fill_holes_below)
    chosen = (d["chosen_on_val"]["drop_glands_below"], d["chosen_on_val"]["fill_holes_below"])
    rows = []
    for r in d["rows"]:
        pair = (r["drop_glands_below"], r["fill_holes_below"])
        if pair[0] not in (0, ours[0]):
            continue
        text = f"{pair[0]} / {pair[1]}" + (" (the preset)" if pair == ours else "") + (
            " (chosen)" if pair == chosen else "")
        rows.append((f"**{text}**" if pair == chosen else text, f"{r['val']['mean']:.2f}",
                     f"{r['train']['mean']:.2f}", f"{r['test']['mean']:.2f}"))
    return markdown(("drop glands < / fill holes < (px)", "validation mIoU", "train mIoU", "testA mIoU"), rows)


def _scales_table(d: dict) -> list[str]:
    t = d["scales"]["current"]
    return markdown(("scales (+ flip)", "validation mIoU", "testA mIoU", "s per image"),
                    [(" + ".join(f"{x:g}" for x in r["scales"]), f"{r['val']:.2f}", f"{r['test']:.2f}",
                      f"{r['s_per_image']:.2f}") for r in t["rows"]])


def _review_table(d: dict) -> list[str]:
    """The label review on half B: each review's share of mostly-wrong regions among the first 10 / 20 / 50 and
    the wrong labels in the first 20's pixels, beside random order."""
    b = d["half_B"]

    def pct(x: float | None, fmt: str = "{:.0f} %") -> str:
        return "-" if x is None else fmt.format(100 * x)

    def row(what: str, key: str, bold: bool = False) -> tuple:
        r = b["results"][key]
        at20 = pct(r["precision@20"])
        return (what, pct(r["precision@10"]), f"**{at20}**" if bold else at20, pct(r["precision@50"]),
                pct(r["pixel_precision@20"], "{:.1f} %"))

    def random(what: str, key: str, base: str) -> tuple:
        share = pct(b["random_order"][key], "{:.1f} %")
        return (what, share, share, share, pct(b["wrong_pixel_share"], "{:.1f} %") + base)
    rows = [row("**the review as shipped now** (refit on A, tags + decisions, pull 30)",
                "refit on A: review, settings chosen on A", bold=True),
            row("the same coefficients, the ranking before any decision", "refit on A: ranking before learning"),
            row("the same coefficients, the earlier pull (3)", "refit on A: review, earlier strength"),
            row("the same coefficients, tags only", "refit on A: tags only"),
            random("regions in random order (the same coefficients' regions)", "refit on A", " (pixel base rate)"),
            row("the earlier coefficients, the earlier review (pull 3)", "earlier: review, earlier strength"),
            row("the earlier coefficients, the ranking before any decision", "earlier: ranking before learning"),
            random("regions in random order (the earlier coefficients' regions)", "earlier", "")]
    return markdown(("half B, 37 images", "mostly wrong, first 10", "first 20", "first 50",
                     "wrong labels in the first 20's pixels"), rows)


def _update_safety_table(d: dict) -> list[str]:
    """Each update rule (the earlier default's two arms from ``update_safety-cpu-bf16.json``, the learning rates from
    this file) per number of corrected images: the corrected images before and their gain, the mean (worst) change of
    validation and testA over the seeds, and how many the guard keeps."""
    rows = _result("update_safety-cpu-bf16.json")["rows"] + d["rows"]
    arms = (("train-bn", "lr 0.001, batch norms re-estimated (the earlier default)", "lr 0.001, re-estimated"),
            ("frozen-bn", "lr 0.001, batch norms frozen", "lr 0.001, frozen"),
            ("train-bn+lr=0.0003", "lr 0.0003", "lr 0.0003"),
            (LR, "**lr 0.0001 (now the default)**", "**lr 0.0001**"))

    def change(rs: list[dict], part: str, bold: bool) -> str:
        xs = [r["delta"][part] for r in rs]
        text = f"{statistics.mean(xs):+.2f} ({min(xs):+.2f})"
        return f"**{statistics.mean(xs):+.2f} ({min(xs):+.2f})**" if bold else text
    out = []
    for images in sorted({r["images"] for r in rows}):
        for arm, first, later in arms:
            rs = [r for r in rows if r["arm"] == arm and r["images"] == images]
            if not rs:
                continue
            bold = arm == LR
            gain = f"{statistics.mean(r['delta']['corrected'] for r in rs):+.2f}"
            out.append((str(images), first if images == 1 else later,
                        f"{rs[0]['before']['corrected']:.2f} " + (f"**{gain}**" if bold else gain),
                        change(rs, "val", bold), change(rs, "testA", bold),
                        f"{sum(r['guard_keeps'] for r in rs)}/{len(rs)}"))
    return markdown(("images", "update", "corrected images", "validation: mean (worst)", "testA: mean (worst)",
                     "keeps"), out)


def _actions_table(d: dict) -> list[str]:
    """Keys and strokes to tag every training image in each flow, against one key per patch."""
    a = d["actions"]

    def ratio(n: int) -> str:
        return f"{a['one_by_one'] / n:.1f}x"
    return markdown(("flow", "actions", "fewer than one key per patch"), [
        ("one key per patch", f"{a['one_by_one']:,}", "1x"),
        ("no proposals: the whole-image key with the commonest tag, then brush strokes",
         f"**{a['no_proposals']:,}**", f"**{ratio(a['no_proposals'])}**"),
        ("proposals accepted (`P`, `A`; before any model, the whole-image key), wrong patches fixed with brush "
         "strokes", f"{a['with_proposals']:,}", ratio(a["with_proposals"])),
        ("the same, wrong patches fixed one key each", f"{a['with_proposals_keys_only']:,}",
         ratio(a["with_proposals_keys_only"])),
        ("the cheaper of the first two, image by image", f"{a['best_per_image']:,}", ratio(a["best_per_image"])),
        ("drawing the masks instead (polygon vertices of the GlaS masks at 1 px tolerance)",
         f"{a['mask_polygon_vertices']:,} vertices", "")])


def _base_row(d: dict) -> dict:
    return next(r for r in d["rows"] if r["arm"] == "base")


def _update_row(d: dict) -> dict:
    return next(r for r in d["rows"] if r["arm"].startswith("update"))


def _retrain_table(d: dict, extra: str | None = None) -> list[str]:
    """``update_gain.py``'s retrains (and those of the ``extra`` file of the same project): each verified-pixel
    rule against the retrain on the uncorrected labels with the same seed - or, without one, the model before."""
    rows = [r for r in d["rows"] if r["arm"].startswith("retrain")]
    if extra:
        rows += [r for r in _result(extra)["rows"] if r["arm"].startswith("retrain")]
    base = next(r for r in d["rows"] if r["arm"] == "base")
    bar = {r["seed"]: r for r in rows if r["labels"] == "pseudo"}
    arms: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["labels"] == "corrected":
            arms.setdefault((r["verified_weight"], r["verified_divisor"]), []).append(r)

    def change(rs: list[dict], split: str) -> str:
        deltas = [r[split] - bar.get(r["seed"], base)[split] for r in rs]
        return f"{statistics.mean(deltas):+.2f} ({min(deltas):+.2f})"

    out = []
    if bar:
        seeds = sorted(bar)
        out.append(("uncorrected labels (the bar)", "-", ", ".join(map(str, seeds)),
                    " / ".join(f"{bar[k]['val']:.2f}" for k in seeds), "-", "-",
                    f"{statistics.median(r['seconds'] for r in bar.values()):.0f}"))
    else:
        out.append(("the model before (the bar)", "-", "-", f"{base['val']:.2f}", "-", "-", "-"))
    for (weight, divisor), rs in sorted(arms.items(), key=lambda kv: (kv[0][1], -kv[0][0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        out.append((f"{weight:g}", divisor, ", ".join(str(r["seed"]) for r in rs),
                    " / ".join(f"{r['val']:.2f}" for r in rs), change(rs, "val"), change(rs, "test"),
                    f"{statistics.median(r['seconds'] for r in rs):.0f}"))
    return markdown(("a corrected pixel weighs", "loss divided by", "seeds", "validation mIoU",
                     "validation change: mean (worst)", "testA change: mean (worst)", "s per retrain"), out)


_FILES_AT: str | None = None  # a git revision: `_result` reads the files as committed there (for `compare`)


def _at_revision(name: str, rev: str) -> dict | None:
    """A result file as the git revision ``rev`` holds it, or None where it has none."""
    rel = (RESULTS / name).relative_to(REPO).as_posix()
    done = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{rel}"], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None


def _result(name: str) -> dict:
    """Another tracked result file, for a table that sets several side by side."""
    if _FILES_AT is not None:
        data = _at_revision(name, _FILES_AT)
        if data is None:
            raise KeyError(f"{name} at {_FILES_AT}")
        return data
    return json.loads((RESULTS / name).read_text())


def _link(name: str, doc: str = BENCH_DOC) -> str:
    up = "../" * doc.count("/")
    return f"[`{name}`]({up}benchmarks/results/{name})"


def _objects(ev: dict, fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(ev[k]) for k in ("object_F1", "object_Dice", "object_Hausdorff"))


def _glands(ev: dict) -> str:
    """How an evaluation cut its prediction into glands: runs before the instances step scored connected regions."""
    return "glands from the instances step" if ev.get("objects") == "instances" else "each connected region a gland"


def _schedule(d: dict) -> str:
    """What the planner kept of the preset, from an ``end_to_end.py --budget`` file: classifier epochs, CAM scales,
    the iterations of each training (the last self-training round trains ``last_round_scale`` times longer) and
    where the planner sized them again with the speed it had measured."""
    s, cfg = d["schedule"], d["config"]
    resized = [s["resized"][k] for k in sorted(s.get("resized", {}), key=int)]
    trainings = [r["iterations"] for r in resized] or [s["segmentation_iterations"]] * (s["rounds"] + 1)
    if s["rounds"] and len(trainings) == s["rounds"] + 1:
        trainings[-1] = round(trainings[-1] * cfg["selftrain"]["last_round_scale"])
    whole = (s["classifier_epochs"] == cfg["classifier"]["epochs"] and s["cam_scales"] == cfg["cam"]["scales"]
             and s["segmentation_iterations"] == cfg["segmentation"]["iterations"]
             and s["rounds"] == cfg["selftrain"]["rounds"])
    sized = [f"{r['planned_iterations']} -> {r['iterations']}" for r in resized
             if r["planned_iterations"] != r["iterations"]]
    rounds = {0: "no round", 1: "one round", 2: "two rounds"}.get(s["rounds"], f"{s['rounds']} rounds")
    return ("the whole preset: " if whole else "") + (
        f"{s['classifier_epochs']} epochs, CAM scales {' + '.join(f'{x:g}' for x in s['cam_scales'])}, "
        f"{' + '.join(map(str, trainings))} iterations" + (f" (sized again: {', '.join(sized)})" if sized else "")
        + f", {rounds}")


BUDGETS = tuple(f"end_to_end-budget-{b}-{p}.json" for b in ("30m", "60m") for p in ("bf16", "fp32"))


def _budget_table(_d: dict) -> list[str]:
    """Each ``--budget`` run: what the planner kept, its time against the time it expected, and the scores."""
    rows = []
    for name in BUDGETS:
        d = _result(name)
        ev = d["evaluation"]
        rows.append((f"{d['budget_s'] / 60:.0f} min, **{d['precision']['segmentation']}** ({_link(name)})",
                     _schedule(d), f"{d['wall_seconds'] / 60:.1f} ({d['schedule']['expected_s'] / 60:.1f})",
                     f"{d['pseudo']['train']:.2f}", f"{ev['val']['mIoU']:.2f}", f"**{ev['test']['mIoU']:.2f}**",
                     _objects(ev["test"], "{:.2f}")))
    return markdown(("budget", "schedule it ran", "minutes (expected)", "stage-1 pseudo-masks (train)",
                     "validation mIoU", "testA mIoU", "testA object F1 / object Dice / object Hausdorff"), rows)


def _headline_rows(d: dict, doc: str) -> list[tuple]:
    """The README's results: the preset end to end, each time budget, the supervised reference (and, in the docs,
    the pseudo-masks and the prediction's speed); every row names its file."""
    ev, sup = d["evaluation"], _result("end_to_end-cpu-supervised.json")
    short = doc == README
    rows = [(f"weakly supervised: `oeem run --preset cpu` end to end ({ev['train']['images']} training images, "
             f"{ev['val']['images']} held out for validation; validation {ev['val']['mIoU']:.2f}; testA object F1 / "
             f"object Dice / object Hausdorff {_objects(ev['test'])} ({_glands(ev['test'])}); "
             f"{_link('end_to_end-cpu.json', doc)})", f"**{ev['test']['mIoU']:.2f}**",
             f"**{d['wall_seconds'] / 60:.1f} min** ({d['precision']['segmentation']})")]
    budgets = [_result(n) for n in BUDGETS]
    if short:
        rows.append(("`--budget 30m` / `--budget 60m`: the planner shrinks the schedule to fit, in bf16 / fp32 ("
                     + ", ".join(_link(n, doc) for n in BUDGETS) + "; [details](docs/benchmarks.md#quality-against-a"
                     "-time-budget))",
                     "; ".join(f"{budgets[i]['budget_s'] / 60:.0f} min: {budgets[i]['evaluation']['test']['mIoU']:.2f}"
                               f" / {budgets[i + 1]['evaluation']['test']['mIoU']:.2f}" for i in (0, 2)),
                     "; ".join(f"{budgets[i]['wall_seconds'] / 60:.1f} min / {budgets[i + 1]['wall_seconds'] / 60:.1f}"
                               " min" for i in (0, 2))))
    else:
        for name, b in zip(BUDGETS, budgets):
            prec = b["precision"]["segmentation"]
            rows.append((f"the same with `--budget {b['budget_s'] / 60:.0f}m` in {prec}: {_schedule(b)} (expected "
                         f"{b['schedule']['expected_s'] / 60:.1f} min); validation {b['evaluation']['val']['mIoU']:.2f}"
                         f", testA object F1 / Dice / Hausdorff {_objects(b['evaluation']['test'])} from the instances "
                         f"step ({_link(name, doc)})", f"{b['evaluation']['test']['mIoU']:.2f}",
                         f"{b['wall_seconds'] / 60:.1f} min ({prec})"))
    rows.append((f"fully supervised reference: the same U-Net trained on the gland masks (validation "
                 f"{sup['evaluation']['val']['mIoU']:.2f}; {_link('end_to_end-cpu-supervised.json', doc)})",
                 f"{sup['evaluation']['test']['mIoU']:.2f}",
                 f"{sup['stage_seconds']['segmentation'] / 60:.1f} min of training "
                 f"({sup['precision']['segmentation']})"))
    if not short:
        bf16, fp32 = _result("instances-cpu.json")["predict"], _result("instances-cpu-fp32.json")["predict"]
        rows += [(f"pseudo-masks, train mIoU ({_link('end_to_end-cpu.json', doc)})",
                  f"{d['pseudo']['train']:.2f} after stage 1, {d['selftrain'][-1]['train']:.2f} after "
                  f"{len(d['selftrain'])} self-training rounds", ""),
                 (f"prediction of one GlaS image, one scale + flip ({_link('instances-cpu.json', doc)}, "
                  f"{_link('instances-cpu-fp32.json', doc)})", "",
                  f"{bf16['ms_per_image']:.0f} ms ({bf16['precision']}), {fp32['ms_per_image']:.0f} ms "
                  f"({fp32['precision']})")]
    return rows


def _headline_table(doc: str) -> Callable[[dict], list[str]]:
    return lambda d: markdown(("GlaS (85 training, 60 testA images), 2 CPU cores, random initialisation",
                               "testA mIoU", "time"), _headline_rows(d, doc))


def _targets_table(d: dict) -> list[str]:
    """The project's targets for the cpu preset, each judged from its file."""
    sup, fp32 = _result("end_to_end-cpu-supervised.json"), _result("end_to_end-budget-60m-fp32.json")
    losses, inst, inst32 = _result("losses.json"), _result("instances-cpu.json"), _result("instances-cpu-fp32.json")
    e2e = _link("end_to_end-cpu.json")

    def met(ok: bool) -> str:
        return "met" if ok else "not met"
    weak = [(p, r) for p, r in ((d["precision"]["segmentation"], d), (fp32["precision"]["segmentation"], fp32))
            if r["evaluation"]["test"]["mIoU"] >= 70 and r["wall_seconds"] <= 3600]
    diffs = {s: _paired_diffs(losses, s) for s in ("val", "test")}
    gain = statistics.mean(diffs["val"])
    ms = (inst["predict"]["ms_per_image"], inst32["predict"]["ms_per_image"])
    objects = _chosen(inst)["test"]
    rows = [
        ("fully supervised ≥ 85", met(sup["evaluation"]["test"]["mIoU"] >= 85),
         f"**{sup['evaluation']['test']['mIoU']:.2f}** testA ({sup['evaluation']['val']['mIoU']:.2f} validation, "
         f"{sup['precision']['segmentation']}; {_link('end_to_end-cpu-supervised.json')})"),
        ("weak (CE) ≥ 70 within 60 min", "met in " + " and in ".join(p for p, _ in weak) if weak else "not met",
         f"**{d['evaluation']['test']['mIoU']:.2f}** in {d['wall_seconds'] / 60:.1f} min, "
         f"{d['precision']['segmentation']} ({e2e}); {fp32['evaluation']['test']['mIoU']:.2f} in "
         f"{fp32['wall_seconds'] / 60:.1f} min with `--budget 60m` in {fp32['precision']['segmentation']} "
         f"({_link('end_to_end-budget-60m-fp32.json')})"),
        ("pseudo-masks ≥ 70", met(d["pseudo"]["train"] >= 70),
         f"{d['pseudo']['train']:.2f} train from stage 1, {d['selftrain'][-1]['train']:.2f} after "
         f"{len(d['selftrain'])} rounds ({e2e})"),
        ("OEEM l_norm ≥ CE + 1", met(gain >= 1) + ("; CE is the `cpu` preset's loss" if gain < 1 else ""),
         f"l_norm minus CE on the stage-1 pseudo-masks, {len(diffs['val'])} paired seeds: validation "
         + ", testA ".join(f"{statistics.mean(x):+.2f} ± {statistics.stdev(x):.2f}" for x in diffs.values())
         + f" ({_link('losses.json')})"),
        ("prediction ≤ 2 s per GlaS image", met(max(ms) <= 2000),
         f"{ms[0]:.0f} ms {inst['predict']['precision']}, {ms[1]:.0f} ms {inst32['predict']['precision']}, "
         f"one scale + flip ({_link('instances-cpu.json')}, {_link('instances-cpu-fp32.json')})"),
        ("glands as objects: testA object F1 ≥ 88, object Dice ≥ 88, Hausdorff ≤ 60",
         met(objects["object_F1"] >= 88 and objects["object_Dice"] >= 88 and objects["object_Hausdorff"] <= 60),
         f"{_objects(objects)} ({_link('instances-cpu.json')})")]
    return markdown(("target", "status", "figure"), rows)


def _weak25_table(d: dict) -> list[str]:
    """A quarter of the images tagged, the whole cpu preset, against every image tagged."""
    r, full = d["runs"]["suggested-25-s0-cpu"], _result("end_to_end-cpu.json")
    fv, ft = full["evaluation"]["val"]["mIoU"], full["evaluation"]["test"]["mIoU"]
    return markdown(("tagged, picked by", "images tagged / joined", "validation labels after round 2",
                     "validation mIoU", "testA mIoU", "of the 100 %", "min"), [
        (f"{r['budget']} %, `oeem suggest`", f"{len(r['images'])} / {r['joined_images']}",
         f"{r['val_pseudo_mIoU']:.2f}", f"{r['val_mIoU']:.2f}", f"**{r['testA_mIoU']:.2f}**",
         f"**{100 * r['testA_mIoU'] / ft:.1f} %** testA, {100 * r['val_mIoU'] / fv:.1f} % validation",
         f"{r['minutes']:.1f}"),
        ("100 % (`end_to_end.py --preset cpu`)", f"{full['evaluation']['train']['images']} / 0", "", f"{fv:.2f}",
         f"{ft:.2f}", "100 %", f"{full['wall_seconds'] / 60:.1f}")])


def _preview_table(d: dict) -> list[str]:
    """The shipped preview at each share of tagged images: seeds, images, validation and testA."""
    rows = []
    for pct, scores in sorted(d["shipped"].items(), key=lambda kv: int(kv[0])):
        runs = [r for r in d["rows"] if r["settings"] == "shipped" and r["percent"] == int(pct)]
        n = sorted({r["images"] for r in runs})
        images = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        rows.append((f"{pct} % ({images} images)", len({r["seed"] for r in runs}), f"{scores['val_mIoU']:.1f}",
                     f"{scores['testA_mIoU']:.1f}"))
    return markdown(("training images tagged", "seeds", "validation mIoU", "testA mIoU"), rows)


def _suggest_table(d: dict) -> list[str]:
    names = {"preview": "suggest, asking the preview", "spread": "suggest, spread over the images (the default)",
             "random": "at random"}
    sizes = sorted({r["images"] for r in d["rows"]})

    def mean(arm: str, n: int) -> str:
        return f"{statistics.mean(r['val_mIoU'] for r in d['rows'] if r['arm'] == arm and r['images'] == n):.1f}"
    return markdown(("picked by", *(f"{n} images" for n in sizes)),
                    [(names.get(a, a), *(mean(a, n) for n in sizes)) for a in names])


LIVE = (("both cores (`oeem train-live`)", "live-bf16.json"), ("one core (the dock on 2 cores)",
                                                               "live-bf16-1thread.json"),
        ("one core (CPUs without native bf16 train so)", "live-fp32-1thread.json"))


def _live_table(_d: dict) -> list[str]:
    """The background classifier's validation pseudo-masks at the checkpoint nearest each minute mark."""
    marks = (1, 2, 4, 8)
    rows = []
    for what, name in LIVE:
        d = _result(name)
        at = [min(d["rows"], key=lambda r: abs(r["train_s"] / 60 - m)) for m in marks]
        rows.append((f"{what}, {d['precision']}: `{name}`", *(f"{r['val_pseudo_mIoU']:.2f}" for r in at)))
    return markdown(("validation pseudo-mask mIoU after about ... of training", *(f"{m} min" for m in marks)), rows)


def _session_table(d: dict) -> list[str]:
    """Last tag to pseudo-masks (and to the end of Run all) in each precision, beside the batch stage 1."""
    import re

    rows = []
    for name, s in (("session-bf16.json", d), ("session-fp32.json", _result("session-fp32.json"))):
        t = s["from_last_tag_s"]
        credited = re.search(r"(\d+) of (\d+) epochs credited", s["classifier"]["continued_from_live"])
        whole = t["until"] == "all"
        rows.append((f"{s['precision']}, `{name}`", f"{s['live']['steps']:,} ({credited[1]} of {credited[2]})",
                     f"**{t['pseudo_masks'] / 60:.1f} min**", f"{s['val_pseudo_mIoU']:.2f}",
                     f"{t['end'] / 60:.1f} min" if whole else "not run (stage 1 only)",
                     f"{s['testA_mIoU']:.2f}" if whole else "-"))
    batch, live = _result("weak_labels.json")["runs"]["suggested-25-s0-cpu"], _result("live-bf16.json")
    cams = (d["from_last_tag_s"]["pseudo_masks"] - d["from_last_tag_s"]["steps_started"]["cams"]) / 60
    classifier = live["batch_stage1"]["classifier_s"] / 60
    rows.append((f"batch stage 1 at the same tags, afresh, {batch['precision']}", "-",
                 f"about {classifier + cams:.1f} min (classifier {classifier:.1f}, CAMs {cams:.1f} as in the session)",
                 f"{live['batch_stage1']['val_pseudo_mIoU']:.2f}", f"{batch['minutes']:.1f} min",
                 f"{batch['testA_mIoU']:.2f}"))
    return markdown(("", "steps while tagging (credited epochs)", "last tag to pseudo-masks",
                     "their validation mIoU", "last tag to end of *Run all*", "testA mIoU"), rows)


def _crash_table(d: dict) -> list[str]:
    """Per oneDNN ISA cap: how many single-convolution cases crashed, and what they had in common."""
    names = {"native": "native (this CPU: AVX-512 + BF16)", "AVX2": "`AVX2` (an AVX2-only CPU)",
             "AVX512_CORE": "`AVX512_CORE` (an AVX-512 CPU without bf16)"}

    def values(cases: list[dict], key: str) -> str:
        return " / ".join(str(v) for v in sorted({c[key] for c in cases}))
    rows = []
    for isa in d["isas"]:
        cases = [c for c in d["failed"] if c["isa"] == isa]
        common = (f"kernel {values(cases, 'kernel')}, stride {values(cases, 'stride')}, {values(cases, 'in')} "
                  "input channels; " + ", ".join(
                      f"{p} at {values([c for c in cases if c['precision'] == p], 'size')} px"
                      for p in d["sweep"]["precision"] if any(c["precision"] == p for c in cases))) if cases else "-"
        rows.append((names.get(isa, isa), f"{len(cases)} of {d['cases_per_isa']}", common))
    return markdown(("ISA (cap)", "cases that crashed or hung", "what they share"), rows)


def _minute(k: int) -> str:
    """What a live benchmark's row ``k`` is: its checkpoints come about a minute of training apart."""
    return f"checkpoint {k + 1} (about minute {k + 1})"


def _remade(figure: str, what: str) -> Callable[[dict], str]:
    """A quoted figure as a rerun remade it (``compare``'s file)."""
    return lambda d: next(r["remade"] for r in d["rows"] if r["figure"] == figure and r["what"] == what)


def _reproduced_table(d: dict) -> list[str]:
    """``compare``'s file: each quoted figure a rerun changed, committed beside remade, then how many came out the
    same."""
    rows = [(f"`{r['figure']}`", r["what"], r["committed"], r["remade"],
             f"{r['change_%']:+.1f} %" if "change_%" in r else "") for r in d["rows"]
            if not r["what"].startswith("table ")]
    tables = sum(r["what"].startswith("table ") for r in d["rows"])
    rows.append((f"{len(d['remade'])} figures remade", f"{d['quotes_unchanged']} quoted figures as committed",
                 "", "", f"{tables} generated table rows changed"))
    return markdown(("figure", "quoted figure", "committed", "remade", "change"), rows)


FIGURES: tuple[Figure, ...] = (
    Figure("end-to-end-cpu", "PY benchmarks/end_to_end.py --preset cpu --fresh", "end_to_end-cpu.json", 37,
           "`oeem run --preset cpu` on GlaS (75 training images, 10 for validation), timed, scored on testA",
           (Quote(README, lambda d: _testa(d, "mIoU"), what="testA mIoU"),
            Quote(README, lambda d: d["evaluation"]["val"]["mIoU"], what="validation mIoU"),
            Quote(README, lambda d: _testa(d, "object_F1"), "{:.1f}", "testA object F1"),
            Quote(README, lambda d: _testa(d, "object_Dice"), "{:.1f}", "testA object Dice"),
            Quote(README, lambda d: _testa(d, "object_Hausdorff"), "{:.1f}", "testA object Hausdorff"),
            Quote(README, lambda d: d["wall_seconds"] / 60, "{:.1f} min", "wall time"),
            Quote(BENCH_DOC, lambda d: d["pseudo"]["train"], what="stage-1 pseudo-masks"),
            Quote(BENCH_DOC, lambda d: d["selftrain"][-1]["train"], what="pseudo-masks after the rounds")),
           tables=(Table(BENCH_DOC, "end-to-end-cpu", _end_to_end_table),
                   Table(BENCH_DOC, "headline", _headline_table(BENCH_DOC)),
                   Table(README, "headline", _headline_table(README)), Table(BENCH_DOC, "targets", _targets_table))),
    Figure("end-to-end-supervised", "PY benchmarks/end_to_end.py --preset cpu --set segmentation.label_source=mask "
           "--name cpu-supervised", "end_to_end-cpu-supervised.json", 50,
           "the fully supervised reference: the cpu preset's U-Net trained on the gland masks",
           (Quote(README, lambda d: _testa(d, "mIoU"), what="testA mIoU"),
            Quote(README, lambda d: d["evaluation"]["val"]["mIoU"], what="validation mIoU"),
            Quote(README, lambda d: d["stage_seconds"]["segmentation"] / 60, "{:.1f} min of training",
                  "segmentation time"),
            *(Quote(BENCH_DOC, v, f, w) for v, f, w in (
                (lambda d: _testa(d, "mIoU"), "{:.2f}", "testA mIoU"),
                (lambda d: d["evaluation"]["val"]["mIoU"], "{:.2f}", "validation mIoU"))))),
    Figure("instances-cpu", "PY benchmarks/end_to_end.py --preset cpu && PY benchmarks/instances.py "
           "benchmarks/results/end_to_end-cpu.oeem.zarr", "instances-cpu.json", 42,
           "glands as objects: every separation of the cpu model's prediction, chosen on validation, on testA",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: _chosen(d)["test"]["object_F1"], "{:.1f}", "testA object F1"),
               (lambda d: _chosen(d)["test"]["object_Dice"], "{:.1f}", "testA object Dice"),
               (lambda d: _chosen(d)["test"]["object_Hausdorff"], "{:.1f}", "testA object Hausdorff"),
               (lambda d: _chosen(d)["val"]["object_F1"], "{:.1f}", "validation object F1"))) + (
               Quote(BENCH_DOC, lambda d: _chosen(d)["ms_per_image"], "{:.1f} ms", "ms per image"),
               Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
               Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % of the slide",
                     "share of the slide's prediction"),
               Quote(BENCH_DOC, lambda d: d["predict"]["ms_per_image"], "{:.0f} ms", "bf16 prediction per image"),
               Quote(README, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % on a slide",
                     "share of the slide's prediction"),
               Quote(README, lambda d: 100 * _chosen(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                     "{:.0f} % of the bf16 prediction", "share of the image prediction")),
           tables=(Table(BENCH_DOC, "instances-cpu", _instances_table),)),
    Figure("instances-cpu-fp32", "PY benchmarks/instances.py benchmarks/results/end_to_end-cpu.oeem.zarr "
           "--precision fp32 --name cpu-fp32", "instances-cpu-fp32.json", 8,
           "the shipped separation's share of an fp32 prediction, on images and on a slide (after end-to-end-cpu)",
           (Quote(BENCH_DOC, lambda d: d["predict"]["ms_per_image"], "{:.0f} ms", "fp32 prediction per image"),
            Quote(BENCH_DOC, lambda d: 100 * _shipped(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                  "{:.0f} % of it", "share of the fp32 image prediction"),
            Quote(BENCH_DOC, lambda d: d["slide"]["prediction_seconds"], "{:.1f} s", "fp32 slide prediction"),
            Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
            Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % of the slide",
                  "share of the fp32 slide's prediction"),
            Quote(README, lambda d: 100 * _shipped(d)["ms_per_image"] / d["predict"]["ms_per_image"],
                  "fp32: {:.0f} %", "share of the fp32 image prediction"),
            Quote(README, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.1f} % on a slide",
                  "share of the fp32 slide's prediction"))),
    Figure("instances-supervised", "PY benchmarks/end_to_end.py --preset cpu --set segmentation.label_source=mask "
           "--name cpu-supervised && PY benchmarks/instances.py benchmarks/results/end_to_end-cpu-supervised.oeem.zarr "
           "--name cpu-supervised", "instances-cpu-supervised.json", 55,
           "the same separation on the fully supervised reference (trained on the gland masks)",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: _chosen(d)["test"]["object_F1"], "{:.1f}", "testA object F1"),
               (lambda d: _chosen(d)["test"]["object_Dice"], "{:.1f}", "testA object Dice"),
               (lambda d: _chosen(d)["test"]["object_Hausdorff"], "{:.1f}", "testA object Hausdorff"))) + (
               Quote(BENCH_DOC, lambda d: d["slide"]["seconds_per_mm2"], "{:.2f} s/mm²", "seconds per mm² of slide"),
               Quote(BENCH_DOC, lambda d: 100 * d["slide"]["share_of_prediction"], "{:.0f} % of the slide",
                     "share of the slide's prediction"))),
    Figure("instances-learned", "PY benchmarks/instances_learned.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_learned-cpu.json", 8,
           "glands seeded by a learned interior (a head on the frozen cpu model, trained on its own labels) against "
           "the shipped probability core (after end-to-end-cpu)",
           tuple(Quote(BENCH_DOC, lambda d, m=m, s=s, k=k: d["best_of_each_method"][m][s][k], "{:.1f}", f"{m}: {s} {k}")
                 for m, s, k in (("interior", "val", "object_F1"), ("interior", "test", "object_F1"),
                                 ("interior", "test", "object_Dice"), ("interior", "test", "object_Hausdorff"),
                                 ("core", "val", "object_F1"), ("core", "test", "object_F1")))),
    Figure("instances-limits", "PY benchmarks/instances_limits.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_limits-cpu.json", 5,
           "where the shipped gland cut loses glands, and five other cuts of the cpu model's output (after "
           "end-to-end-cpu)",
           (Quote(BENCH_DOC, lambda d: d["pixel_mIoU"]["val"]["3 scales"], "{:.2f}", "3-scale validation mIoU"),
            Quote(BENCH_DOC, lambda d: d["pixel_mIoU"]["test"]["3 scales"], "{:.2f}", "3-scale testA mIoU")),
           tables=(Table(BENCH_DOC, "instances-limits-errors", _limits_errors_table),
                   Table(BENCH_DOC, "instances-limits", _limits_table))),
    Figure("instances-rounds", "PY benchmarks/instances_rounds.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "instances_rounds-cpu.json", 26,
           "one more self-training round - plain, with the cut's borders in its labels, at full resolution - against "
           "the cpu model's glands (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "instances-rounds", _rounds_table),
                   Table(BENCH_DOC, "instances-rounds-errors", _rounds_errors_table))),
    *(Figure(f"demo{suffix}", "PY benchmarks/end_to_end.py --data sample --val-images 0 --fresh --set "
             "classifier.epochs=4 classifier.min_epoch_steps=0 'cam.scales=[1,1.5]' segmentation.iterations=120 "
             f"selftrain.rounds=0 'inference.scales=[1]' inference.flip=false --name demo{suffix}{flag}",
             f"end_to_end-demo{suffix}.json", 2, f"`make demo`'s schedule on the embedded sample data{what}",
             (Quote(README, lambda d: d["wall_seconds"], "{:.0f} s", "wall time"),
              Quote(README, lambda d: _testa(d, "mIoU"), "{:.2f}", "testA mIoU")), needs_glas=False)
      for suffix, flag, what in (("", "", ""), ("-fp32", " --precision fp32", ", in fp32"))),
    *(Figure(f"budget-{b}-{p}", f"PY benchmarks/end_to_end.py --preset cpu --budget {b} --precision {p} "
             f"--name budget-{b}-{p} --fresh", f"end_to_end-budget-{b}-{p}.json", int(b[:-1]),
             f"`oeem run --budget {b}` in {p}: what the planner keeps, the score and the time",
             (*(Quote(doc, lambda d: _testa(d, "mIoU"), "{:.2f}", "testA mIoU") for doc in (README, BENCH_DOC)),
              Quote(README, lambda d: d["wall_seconds"] / 60, "{:.1f} min", "wall time"),
              Quote(BENCH_DOC, lambda d: d["wall_seconds"] / 60, "{:.1f}", "wall time"),
              Quote(BENCH_DOC, lambda d: d["evaluation"]["val"]["mIoU"], "{:.2f}", "validation mIoU"),
              Quote(BENCH_DOC, lambda d: d["pseudo"]["train"], "{:.2f}", "stage-1 pseudo-masks"),
              Quote(BENCH_DOC, lambda d: _testa(d, "object_F1"), "{:.2f}", "testA object F1"),
              Quote(BENCH_DOC, lambda d: d["schedule"]["segmentation_iterations"], "{}", "iterations")),
             # the four runs in one table, with the last of them
             tables=(Table(BENCH_DOC, "budgets", _budget_table),) if (b, p) == ("60m", "bf16") else ())
      for b in ("30m", "60m") for p in ("fp32", "bf16")),
    Figure("update-safety", "PY benchmarks/update_safety.py --project benchmarks/results/end_to_end-cpu.oeem.zarr "
           "--name cpu-bf16-lr --arms train-bn+lr=0.0003 train-bn+lr=0.0001", "update_safety-cpu-bf16-lr.json", 12,
           "*Update model* on the well-trained cpu model: 1, 3, 10 reviewed images corrected, 3 seeds each",
           tuple(Quote(README, _update_mean(LR, n, part), "{:+.2f}", f"{part}, {n} images")
                 for n in (1, 3, 10) for part in ("val", "testA"))
           + tuple(Quote(BENCH_DOC, _update_mean(LR, n, "corrected"), "{:+.1f}", f"corrected, {n} images")
                   for n in (1, 3, 10))
           + (Quote(README, _update_seconds, "{:.0f} s", "median seconds per update"),),
           tables=(Table(BENCH_DOC, "update-safety", _update_safety_table),)),
    Figure("update-safety-fp32", "PY benchmarks/update_safety.py --project benchmarks/results/end_to_end-cpu.oeem.zarr"
           " --name cpu-fp32 --counts 1 3 10 --seeds 0 --arms train-bn+lr=0.0001 --precision fp32",
           "update_safety-cpu-fp32.json", 3, "the same updates in fp32, for their time",
           (Quote(README, lambda d: f"{min(r['seconds'] for r in d['rows']):.0f}-"
                                    f"{max(r['seconds'] for r in d['rows']):.0f} s", "{}", "seconds per update"),)),
    Figure("update-safety-weak", "PY benchmarks/update_safety.py --project runs/bench/suggested-25-s0-cpu.oeem.zarr "
           "--truth runs/bench/glas-truth.oeem.zarr --name weak25-bf16 --arms train-bn+lr=0.0001",
           "update_safety-weak25-bf16.json", 5, "*Update model* on the 25 %-tagged project (after "
           "weak-labels-25-preset: its project)",
           tuple(Quote(BENCH_DOC, _update_mean(LR, n, part), fmt, f"{part}, {n} images")
                 for n in (1, 3, 10) for part, fmt in (("val", "{:+.2f}"), ("testA", "{:+.2f}"),
                                                       ("corrected", "{:+.2f}")))
           + tuple(Quote(README, _update_mean(LR, n, "testA"), "{:+.2f}", f"testA, {n} images") for n in (1, 3, 10))),
    Figure("update-safety-weak-fp32", "PY benchmarks/update_safety.py --project "
           "runs/bench/suggested-25-s0-cpu.oeem.zarr --truth runs/bench/glas-truth.oeem.zarr --name weak25-fp32 "
           "--counts 1 3 10 --seeds 0 --arms train-bn+lr=0.0001 --precision fp32", "update_safety-weak25-fp32.json", 2,
           "the same in fp32, for their time",
           (Quote(BENCH_DOC, lambda d: f"{min(r['seconds'] for r in d['rows']):.0f}-"
                                       f"{max(r['seconds'] for r in d['rows']):.0f} s", "{}", "seconds per update"),
            *(Quote(BENCH_DOC, _update_mean(LR, n, "testA"), "{:+.2f}", f"testA, {n} images") for n in (1, 3, 10)))),
    Figure("update-gain-weak", "PY benchmarks/weak_labels.py build && PY benchmarks/weak_labels.py budget --picker "
           "suggested --budgets 25 && PY benchmarks/update_gain.py --retrain-weight 25 4 --retrain-divisor pixels "
           "weights --retrain-seeds 0 1 2 --uncorrected --out update_gain-weak25-bf16.json && PY "
           "benchmarks/update_gain.py --retrain-weight 10 1 --retrain-divisor pixels --retrain-seeds 0 1 2 --out "
           "update_gain-weak25-bf16-weights.json", "update_gain-weak25-bf16.json", 50,
           "a retrain on corrections at each verified-pixel weight, small project, 3 seeds; oeem update once",
           (Quote(BENCH_DOC, lambda d: _update_row(d)["seconds"], "{:.1f} s", "seconds of the update"),
            Quote(BENCH_DOC, lambda d: _update_row(d)["val"] - _base_row(d)["val"], "{:+.2f}",
                  "validation change of the update"),
            Quote(BENCH_DOC, lambda d: _update_row(d)["test"] - _base_row(d)["test"], "{:+.2f}",
                  "testA change of the update")),
           tables=(Table(BENCH_DOC, "update-gain-weak",
                         lambda d: _retrain_table(d, "update_gain-weak25-bf16-weights.json")),)),
    Figure("update-gain-cpu", "PY benchmarks/end_to_end.py --preset cpu && PY benchmarks/update_gain.py --project "
           "benchmarks/results/end_to_end-cpu.oeem.zarr --retrain-weight 25 10 4 --retrain-divisor pixels --out "
           "update_gain-cpu-bf16.json && PY benchmarks/update_gain.py --project "
           "benchmarks/results/end_to_end-cpu.oeem.zarr --retrain-weight 1 --retrain-divisor pixels --out "
           "update_gain-cpu-bf16-weights.json", "update_gain-cpu-bf16.json", 90,
           "a retrain on corrections at each verified-pixel weight, the cpu preset's whole GlaS run",
           tables=(Table(BENCH_DOC, "update-gain-cpu",
                         lambda d: _retrain_table(d, "update_gain-cpu-bf16-weights.json")),)),
    Figure("weak-labels-25-preset", "PY benchmarks/weak_labels.py build && PY benchmarks/weak_labels.py budget "
           "--picker suggested --budgets 10 25 && PY benchmarks/weak_labels.py budget --budgets 25 --preset-schedule",
           "weak_labels.json", 50,
           "25 % of the training images tagged (picked by `oeem suggest`), the whole cpu preset",
           (Quote(README, _weak_row("suggested-25-s0-cpu", "testA_mIoU"), what="testA mIoU"),
            Quote(BENCH_DOC, _weak_row("suggested-25-s0-cpu", "val_mIoU"), what="validation mIoU"),
            Quote(README, _weak_row("suggested-25-s0-cpu", "minutes"), "{:.1f} min", "minutes"),
            Quote(BENCH_DOC, _weak_row("suggested-25-s0-cpu", "testA_mIoU"), what="testA mIoU")),
           tables=(Table(BENCH_DOC, "weak-25-preset", _weak25_table),)),
    Figure("tagging-actions", "PY benchmarks/weak_labels.py budget --picker suggested --budgets 10 25 50 100 && "
           "PY benchmarks/weak_labels.py actions", "weak_labels.json", 20,
           "keys and strokes to tag all 75 training images, with and without the model's proposals",
           tuple(Quote(doc, (lambda k: lambda d: d["actions"][k])(key), fmt, key)
                 for doc in (README, BENCH_DOC)
                 for key, fmt in (("no_proposals", "{:,}"), ("ratio_no_proposals", "{:.1f}x"),
                                  ("with_proposals", "{:,}"), ("ratio", "{:.1f}x"),
                                  ("images_proposals_cost_more", "{} of the"), ("patches", "{:,}"))
                 if doc == BENCH_DOC or key != "patches"),
           tables=(Table(BENCH_DOC, "weak-budgets", _weak_budget_table), Table(BENCH_DOC, "actions", _actions_table))),
    Figure("preview", "PY benchmarks/preview.py --sweep", "preview.json", 8,
           "the preview learned from tags in a second: validation / testA with 10 / 25 / 100 % tagged, key to "
           "preview",
           (*(Quote(doc, (lambda p, k: lambda d: d["shipped"][p][k])(p, k), "{:.1f}", f"{k}, {p} % tagged")
              for doc in (README, BENCH_DOC) for p in ("25", "100") for k in ("val_mIoU", "testA_mIoU")),
            *(Quote(BENCH_DOC, (lambda p, k: lambda d: d["shipped"][p][k])("10", k), "{:.1f}", f"{k}, 10 % tagged")
              for k in ("val_mIoU", "testA_mIoU")),
            *(Quote(doc, (lambda k: lambda d: d["latency"][k])(k), "{:.2f} s", k)
              for doc in (README, BENCH_DOC) for k in ("key_to_preview_p50_s", "key_to_preview_p95_s")
              if doc == BENCH_DOC or k.endswith("p95_s"))),
           tables=(Table(BENCH_DOC, "preview", _preview_table),)),
    Figure("preview-suggest", "PY benchmarks/preview.py --suggest", "preview_suggest.json", 6,
           "does `oeem suggest` pick better images when it asks the preview (the preview's own validation mIoU)",
           tuple(Quote(BENCH_DOC, (lambda a, n: lambda d: statistics.mean(
               r["val_mIoU"] for r in d["rows"] if r["arm"] == a and r["images"] == n))(arm, n), "{:.1f}",
               f"{arm}, {n} images") for arm in ("preview", "spread", "random") for n in (8, 19)),
           tables=(Table(BENCH_DOC, "preview-suggest", _suggest_table),)),
    Figure("live", "PY benchmarks/live.py --minutes 8 && PY benchmarks/live.py --peer", "live-bf16.json", 11,
           "training while tagging: validation pseudo-masks of the background classifier after 1-8 minutes",
           (*(Quote(BENCH_DOC, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", _minute(k))
              for k in (0, 1, 3, 7)),

            Quote(BENCH_DOC, lambda d: d["forest_peer"]["val_mIoU"], "{:.2f}", "the forest on the same tags")),
           tables=(Table(BENCH_DOC, "live", _live_table),)),
    Figure("live-1thread", "PY benchmarks/live.py --minutes 8 --threads 1", "live-bf16-1thread.json", 13,
           "training while tagging as the dock runs it on 2 cores (one thread), bf16",
           tuple(Quote(doc, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", _minute(k))
                 for doc in (README, BENCH_DOC) for k in (0, 1, 3, 7) if doc == BENCH_DOC or k in (0, 3))),
    Figure("live-fp32", "PY benchmarks/live.py --minutes 10 --threads 1 --precision fp32", "live-fp32-1thread.json",
           18, "training while tagging as the dock runs it on 2 cores (one thread), fp32",
           tuple(Quote(BENCH_DOC, (lambda k: lambda d: d["rows"][k]["val_pseudo_mIoU"])(k), "{:.2f}", _minute(k))
                 for k in (0, 1, 3, 6, 7))),
    Figure("session", "PY benchmarks/session.py", "session-bf16.json", 40,
           "a tagging session at a pathologist's pace with the classifier training meanwhile, then Run all, bf16",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: d["from_last_tag_s"]["pseudo_masks"] / 60, "{:.1f} min", "last tag to pseudo-masks"),
               (lambda d: d["val_pseudo_mIoU"], "{:.2f}", "validation pseudo-mask mIoU"))) + (
               Quote(BENCH_DOC, lambda d: d["from_last_tag_s"]["end"] / 60, "{:.1f} min", "last tag to end of run"),
               Quote(BENCH_DOC, lambda d: d["testA_mIoU"], "{:.2f}", "testA mIoU at the end")),
           tables=(Table(BENCH_DOC, "session", _session_table),)),
    Figure("session-fp32", "PY benchmarks/session.py --precision fp32 --until cams", "session-fp32.json", 20,
           "the same session in fp32 (CPUs without native bf16), until the pseudo-masks",
           tuple(Quote(doc, v, f, w) for doc in (README, BENCH_DOC) for v, f, w in (
               (lambda d: d["from_last_tag_s"]["pseudo_masks"] / 60, "{:.1f} min", "last tag to pseudo-masks"),
               (lambda d: d["val_pseudo_mIoU"], "{:.2f}", "validation pseudo-mask mIoU")))),
    Figure("gui-latency-preview", "xvfb-run -a PY benchmarks/gui_latency.py --preview --live --seconds 40",
           "gui_latency-preview.json", 2, "napari stays responsive while the preview redraws after every key",
           (Quote(BENCH_DOC, lambda d: d["tagging"]["p95_ms"], "{:.0f} ms", "event-loop lateness p95"),
            Quote(BENCH_DOC, lambda d: d["key_to_preview_p95_s"], "{:.2f} s", "key to preview p95, in napari"),
            Quote(BENCH_DOC, lambda d: d["tagging_while_training"]["p95_ms"], "{:.0f} ms",
                  "event-loop lateness p95 while the classifier trains")),
           needs_glas=False),
    Figure("crash-matrix", "PY benchmarks/crash_matrix.py --isa native AVX2 AVX512_CORE --skip-networks "
           "--out crash_matrix-convs.json",
           "crash_matrix-convs.json", 25, "which single convolutions crash oneDNN on this CPU", needs_glas=False,
           tables=(Table(BENCH_DOC, "crash-matrix", _crash_table),)),
    Figure("crash-networks", "PY benchmarks/crash_matrix.py --isa native AVX2 AVX512_CORE --skip-convs "
           "--out crash_matrix-networks.json",
           "crash_matrix-networks.json", 10, "every preset's networks, both layouts, each ISA cap",
           needs_glas=False),
    Figure("precision", "PY benchmarks/precision.py --repeats 7", "precision.json", 1,
           "fp32 against bf16: speed of each stage and agreement of the outputs", needs_glas=False,
           tables=(Table(BENCH_DOC, "precision", _precision_table),)),
    Figure("faults", "PY benchmarks/faults.py --kills 200", "faults.json", 11,
           "kill -9 at random moments while writing: nothing lost, nothing half-written", needs_glas=False,
           tables=(Table(BENCH_DOC, "faults", _faults_table),)),
    Figure("slide", "PY benchmarks/slide.py", "slide.json", 8, "a whole slide: memory and speed",
           needs_glas=False,
           quotes=(Quote(BENCH_DOC, lambda d: (d["sizes"][-1]["seconds"] - d["sizes"][0]["seconds"])
                         / (d["sizes"][-1]["tissue_mpx"] - d["sizes"][0]["tissue_mpx"]),
                         "{:.2f} s per tissue megapixel", "seconds per tissue Mpx"),
                   Quote(BENCH_DOC, lambda d: d["sizes"][-1]["seconds"] / d["sizes"][0]["seconds"], "x{:.2f} time",
                         "time ratio"),
                   Quote(BENCH_DOC, lambda d: d["dask"][1]["blocks_per_s"] / d["dask"][0]["blocks_per_s"],
                         "x{:.2f} the slide throughput", "dask ratio"),
                   Quote(BENCH_DOC, lambda d: d["ddp"]["rows"][1]["it_per_s"] / d["ddp"]["rows"][0]["it_per_s"],
                         "(x{:.2f})", "ddp ratio"),
                   Quote("docs/slides.md", lambda d: d["sizes"][-1]["peak_rss_mb"], "{:.0f} MB", "peak RSS"),
                   Quote("docs/slides.md", lambda d: d["dask"][1]["blocks_per_s"] / d["dask"][0]["blocks_per_s"],
                         "x{:.2f} the", "dask ratio"),
                   Quote(BENCH_DOC, lambda d: 100 * d["ddp"]["mean_loss_relative_difference"],
                         "differs by {:.1f} %", "mean loss difference")),
           tables=(Table(BENCH_DOC, "slide-sizes", _slide_sizes_table),
                                     Table(BENCH_DOC, "slide-scale-out", _slide_scale_out_table))),
    Figure("gui-latency", "xvfb-run -a PY benchmarks/gui_latency.py --seconds 30", "gui_latency.json", 3,
           "napari stays responsive while a training runs", tuple(
               Quote(BENCH_DOC, lambda d, s=s, k=k: d[s][k], fmt, f"{s} {k}") for s, k, fmt in (
                   ("training", "p95_ms", "{:.0f} ms at p95"), ("training", "max_ms", "{:.0f} ms at most"),
                   ("idle", "p95_ms", "idle: {:.0f} /"), ("idle", "max_ms", "/ {:.0f} ms"))) + (
               Quote(BENCH_DOC, lambda d: d["iterations_during_measure"], "{} training iterations", "iterations"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["in_place"]["median_s"], "takes {:.2f} s",
                     "image switch"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["made_anew"]["median_s"], "took {:.2f} s",
                     "image switch, every layer made anew"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["tagging"]["in_place"]["median_s"], "{:.2f} s with the "
                     "tagging box open", "image switch, tagging"),
               Quote(BENCH_DOC, lambda d: d["image_switch"]["tagging"]["made_anew"]["median_s"], "{:.2f} s per switch",
                     "image switch, tagging, every layer made anew")),
           needs_glas=False),
    Figure("review-heldout", "PY benchmarks/review_heldout.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "review_heldout.json", 5, "the label review without masks, refit and chosen on half the training "
           "images, judged on the other half (after end-to-end-cpu: its project)",
           (Quote(README, _review("refit on A: review, settings chosen on A", 20), "{:.0f} of the first 20",
                  "shipped review, held out"),
            Quote(BENCH_DOC, _review("refit on A: ranking before learning", 20), "{:.0f} of 20", "before decisions"),
            Quote(BENCH_DOC, _review("earlier: review, earlier strength", 20), "{:.0f} of 20", "earlier defaults"),
            Quote(README, lambda d: 100 * d["half_B"]["random_order"]["refit on A"], "{:.1f} %", "random order"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["random_order"]["earlier"], "{:.1f} %", "random, earlier"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["wrong_pixel_share"], "{:.1f} %", "pixel base rate"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["results"]["refit on A: review, settings chosen on A"]
                  ["pixel_precision@20"], "{:.1f} %", "wrong pixels in the first 20"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["results"]["refit on A: review, settings chosen on A"]
                  ["precision@20"], "**{:.0f} %**", "shipped review, held out"),
            Quote(BENCH_DOC, lambda d: 100 * d["half_B"]["random_order"]["refit on A"], "{:.1f} %", "random"),
            Quote(BENCH_DOC, lambda d: 100 * d["choice_on_A"]["grid"]["tags+decisions/30/probability"],
                  "{:.1f} %", "chosen on A")),
           tables=(Table(BENCH_DOC, "review-heldout", _review_table),)),
    Figure("losses", "PY=PY benchmarks/run_losses.sh", "losses.json", 55,
           "OEEM (l_norm) against CE on the stage-1 pseudo-masks of the cpu preset, 3 paired seeds; the gland bias",
           (Quote(BENCH_DOC, lambda d: d["stage1"]["pseudo_mIoU"], what="stage-1 pseudo-masks"),
            *(Quote(doc, _paired("val"), "{:+.2f} validation" if doc == README else "{:+.2f} ±",
                    "l_norm minus CE, validation") for doc in (README, BENCH_DOC)),
            *(Quote(doc, _paired("test"), "{:+.2f} testA" if doc == README else "{:+.2f} ±",
                    "l_norm minus CE, testA") for doc in (README, BENCH_DOC)),
            Quote(BENCH_DOC, _paired("train"), "{:+.2f} ±", "l_norm minus CE, train"),
            Quote(BENCH_DOC, lambda d: d["gland_bias"]["best_on_val"], "bias of {:g}", "gland bias chosen")),
           tables=(Table(BENCH_DOC, "losses", _losses_table), Table(BENCH_DOC, "gland-bias", _bias_table))),
    Figure("losses-weightings", "WEIGHTINGS=1 PY=PY benchmarks/run_losses.sh", "losses.json", 32,
           "the paper's other weightings (ohem, c_max, c_diff, lc_mix), one seed each (after losses: its project)"),
    Figure("cleaning", "PY benchmarks/postprocess.py benchmarks/results/end_to_end-cpu.oeem.zarr --json "
           "postprocess-cpu.json", "postprocess-cpu.json", 4,
           "what cleaning the cpu model's prediction buys, each pair chosen on validation (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "cleaning", _cleaning_table),)),
    Figure("scales", "OEEM_ABLATION_PROJECT=benchmarks/results/end_to_end-cpu.oeem.zarr "
           "OEEM_ABLATION_JSON=benchmarks/results/scales-cpu.json PY benchmarks/ablation.py scales current "
           "1 0.75,1,1.25 1,1.25,1.5", "scales-cpu.json", 8,
           "what each test-time scale buys and costs, the cpu model (after end-to-end-cpu)",
           tables=(Table(BENCH_DOC, "scales", _scales_table),)),
    Figure("speed", "PY benchmarks/speed.py --steps 5", "speed.json", 15,
           "where the training and prediction time goes: each work against the matmul peak, each lever"),
    Figure("predict-images", "PY benchmarks/predict_images.py benchmarks/results/end_to_end-cpu.oeem.zarr",
           "predict_images.json", 3,
           "`oeem predict-images` on testA copies outside any project (after end-to-end-cpu)"),
    Figure("slide-geojson", "PY benchmarks/slide_geojson.py", "slide_geojson.json", 5,
           "a 20,000 px slide prediction exported to QuPath GeoJSON: time, memory, vertices"),
    Figure("reproduced", "PY benchmarks/figures.py compare --json reproduced.json", "reproduced.json", 0.1,
           "each quoted figure the commands before it remade, beside the committed one (last: `make bench-quick` "
           "on a fresh clone)",
           (*(Quote(README, _remade("live-1thread", _minute(k)), "{}", f"live, one thread, {_minute(k)}, remade")
              for k in (0, 3)),
            *(Quote(BENCH_DOC, _remade("gui-latency-preview", what), "{}", f"{what}, remade")
              for what in ("key to preview p95, in napari", "event-loop lateness p95")),
            *(Quote(BENCH_DOC, _remade(fig, what), "{}", f"{fig}: {what}, remade") for fig, what in (
                ("instances-cpu", "share of the slide's prediction"),
                ("instances-cpu-fp32", "share of the fp32 slide's prediction")))),
           needs_glas=False, tables=(Table(BENCH_DOC, "reproduced", _reproduced_table),)),
)


# what a figure's command reads that another figure makes (git-ignored projects): `run` skips the figure, and says
# which to run first, when they are missing - as on a fresh clone
_E2E = ("benchmarks/results/end_to_end-cpu.oeem.zarr",)
_WEAK25 = ("runs/bench/suggested-25-s0-cpu.oeem.zarr", "runs/bench/glas-truth.oeem.zarr")
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    **{name: (_E2E, "end-to-end-cpu") for name in (
        "instances-cpu-fp32", "instances-learned", "instances-limits", "instances-rounds", "update-safety",
        "update-safety-fp32", "review-heldout", "cleaning", "scales", "predict-images")},
    **{name: (_WEAK25, "weak-labels-25-preset") for name in ("update-safety-weak", "update-safety-weak-fp32")},
    "losses-weightings": (("benchmarks/results/losses.oeem.zarr",), "losses"),
}

def load(fig: Figure) -> dict | None:
    path = RESULTS / fig.result
    return json.loads(path.read_text()) if path.is_file() else None


def tracked(path: Path) -> bool:
    done = subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", str(path)], capture_output=True)
    return done.returncode == 0


def blocks(text: str) -> list[tuple[str, str]]:
    """(block, where it stands) pairs: each paragraph, list item and table row, with the text that introduces it -
    a table row its table's intro paragraph, an indented paragraph the list item it continues. A quoted figure must
    stand in a block; its file's name in the block or its introduction."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("<!-- "))  # a table's markers
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out: list[tuple[str, str]] = []
    intro = ""
    for para in paragraphs:
        lines = para.splitlines()
        is_table = all(line.lstrip().startswith("|") for line in lines)
        # an indented paragraph continues the list item above; a list belongs to the paragraph that introduces it
        continues = para.startswith((" ", "\t", "- ", "* "))
        if is_table:
            out += [(row, row + "\n" + intro) for row in lines]
            continue
        items, current = [], []
        for line in lines:
            if line.lstrip().startswith(("- ", "* ")) and current:
                items.append("\n".join(current))
                current = []
            current.append(line)
        items.append("\n".join(current))
        for item in items:
            out.append((item, item + "\n" + (intro if continues else "")))
        if not continues:
            intro = items[-1]
        else:
            intro = intro + "\n" + para
    return [(" ".join(b.split()), " ".join(c.split())) for b, c in out]


def table_span(text: str, table: Table) -> tuple[int, int] | None:
    """Where ``table``'s lines stand in a doc's text (between its markers), or None."""
    start, end = table.markers()
    i = text.find(start + "\n")
    j = text.find(end, i) if i >= 0 else -1
    return None if i < 0 or j < 0 else (i + len(start) + 1, j)


def check_tables(fig: Figure, data: dict) -> list[str]:
    problems = []
    for table in fig.tables:
        text = (REPO / table.doc).read_text()
        span = table_span(text, table)
        if span is None:
            problems.append(f"{fig.name}: {table.doc} has no {table.markers()[0]} ... {table.markers()[1]}")
            continue
        try:
            lines = table.render(data)
        except (KeyError, IndexError, TypeError, StopIteration) as exc:
            problems.append(f"{fig.name}: {fig.result} holds no table {table.name} ({exc!r}); rerun: {fig.command}")
            continue
        if text[span[0]:span[1]] != "\n".join(lines) + "\n":
            problems.append(f"{fig.name}: the table {table.name} in {table.doc} is not what {fig.result} holds; "
                            "`python benchmarks/figures.py tables` writes it")
    return problems


def write_tables(figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Write every table from its result file into its doc; the docs changed."""
    sys.path.insert(0, str(REPO))
    from pipeline.store.project_store import atomic_write_bytes

    changed = []
    for fig in figures:
        data = load(fig) if fig.tables else None
        for table in fig.tables if data is not None else ():
            path = REPO / table.doc
            text = path.read_text()
            span = table_span(text, table)
            if span is None:
                raise SystemExit(f"{table.doc}: put {table.markers()[0]} and {table.markers()[1]} (each on its own "
                                 "line) where the table goes")
            try:
                lines = table.render(data)
            except (KeyError, IndexError, TypeError, StopIteration):
                continue  # not measured yet: `check` says so
            new = text[:span[0]] + "\n".join(lines) + "\n" + text[span[1]:]
            if new != text:
                atomic_write_bytes(path, new.encode())
                changed.append(table.doc)
    return sorted(set(changed))


def check(figures: tuple[Figure, ...] = FIGURES) -> list[str]:
    """Every quote stands in a block of its doc that names its result file, every table is what its file holds;
    the problems, one line each."""
    problems = []
    for fig in figures:
        if not fig.quotes and not fig.tables:
            continue
        data = load(fig)
        if data is None:
            problems.append(f"{fig.name}: the docs quote benchmarks/results/{fig.result}, which is missing")
            continue
        problems += check_tables(fig, data)
        for q in fig.quotes:
            try:
                want = q.text(data)
            except (KeyError, IndexError, TypeError, StopIteration) as exc:
                problems.append(f"{fig.name}: {fig.result} holds no {q.what} ({exc!r}); rerun: {fig.command}")
                continue
            near = [b for b, where in blocks((REPO / q.doc).read_text()) if fig.result in where]
            if not near:
                problems.append(f"{fig.name}: {q.doc} never names {fig.result} (it quotes {q.what} {want})")
            elif not any(want in b for b in near):
                problems.append(f"{fig.name}: {q.doc} does not say {want!r} ({q.what}) beside {fig.result}")
    return problems


def quick(fig: Figure) -> bool:
    """In ``bench-quick``: short, and the docs quote it (a figure nobody quotes reproduces nothing)."""
    return fig.minutes <= QUICK_MINUTES and bool(fig.quotes or fig.tables)


def committed(fig: Figure, rev: str = "HEAD") -> dict | None:
    """The figure's result file as ``rev`` holds it, or None where it has none."""
    return _at_revision(fig.result, rev)


def compare(figures: tuple[Figure, ...] = FIGURES, rev: str = "HEAD") -> dict:
    """Each figure whose result file was remade here (it differs from ``rev``'s): every quoted figure and generated
    table row it changed, committed beside remade, as the docs print them - what a reviewer reads to judge whether
    a rerun reproduced the docs within their noise - and how many quoted figures came out the same."""
    global _FILES_AT
    remade, rows, same = [], [], 0
    for fig in figures:
        old, new = committed(fig, rev), load(fig)
        if old is None or new is None or old == new:
            continue
        remade.append(fig.name)
        seen = set()
        for q in fig.quotes:
            try:
                before, after = q.value(old), q.value(new)
            except (KeyError, IndexError, TypeError, StopIteration):
                continue
            if q.what and q.what in seen:  # the same figure quoted in the README and the docs: once
                continue
            seen.add(q.what)
            if q.fmt.format(before) == q.fmt.format(after):
                same += 1
                continue
            row = {"figure": fig.name, "what": q.what or q.fmt, "committed": q.fmt.format(before),
                   "remade": q.fmt.format(after)}
            if isinstance(before, (int, float)) and before:
                row["change_%"] = round(100 * (after - before) / abs(before), 1)
            rows.append(row)
        for table in fig.tables:
            try:
                _FILES_AT = rev  # a table that sets other files beside its own reads them as committed
                before_rows = table.render(old)[2:]
                _FILES_AT = None
                after_rows = table.render(new)[2:]
            except (KeyError, IndexError, TypeError, StopIteration, json.JSONDecodeError):
                continue
            finally:
                _FILES_AT = None
            rows += [{"figure": fig.name, "what": f"table {table.name}", "committed": b, "remade": a}
                     for b, a in zip(before_rows, after_rows) if a != b]
    return {"against": rev, "remade": remade, "quotes_unchanged": same, "rows": rows}


def cmd_compare(args) -> int:
    from _common import print_table

    result = compare(rev=args.rev)
    rows = result["rows"]
    quoted = [r for r in rows if not r["what"].startswith("table ")]
    print(f"remade: {', '.join(result['remade']) or 'none'}; quoted figures as committed: "
          f"{result['quotes_unchanged']}, changed: {len(quoted)}")
    if quoted:
        print_table([(r["figure"], r["what"], r["committed"], r["remade"], r.get("change_%", ""))
                     for r in quoted], ("figure", "quoted figure", f"at {args.rev}", "remade", "change %"))
    for r in rows:
        if r["what"].startswith("table "):
            print(f"\n{r['figure']}, {r['what']}:\n  {args.rev}: {r['committed']}\n  remade: {r['remade']}")
    if args.json:
        from _common import write_json

        write_json(args.json, result)
    return 0


def cmd_list(_args) -> int:
    from _common import print_table

    rows = []
    for fig in FIGURES:
        path = RESULTS / fig.result
        state = ("tracked" if tracked(path) else "not committed") if path.is_file() else "not measured"
        rows.append((fig.name, f"{fig.minutes:g}", fig.result, state, len(fig.quotes), fig.about))
    print_table(rows, ("figure", "min", "result", "state", "quotes", "what"))
    total = sum(f.minutes for f in FIGURES)
    quick_min = sum(f.minutes for f in FIGURES if quick(f))
    print(f"\nall: {total / 60:.1f} h on 2 cores; --quick: {quick_min:.0f} min")
    return 0


def cmd_check(_args) -> int:
    problems = check()
    print("\n".join(problems) if problems else
          f"{sum(len(f.quotes) for f in FIGURES)} quoted figures and {sum(len(f.tables) for f in FIGURES)} "
          "tables match their result files")
    return 1 if problems else 0


def cmd_tables(_args) -> int:
    changed = write_tables()
    print(f"rewrote the tables of {', '.join(changed)}" if changed else
          f"{sum(len(f.tables) for f in FIGURES)} tables already match their result files")
    return 0


def cmd_run(args) -> int:
    import os
    import shlex

    chosen = [f for f in FIGURES if (not args.only or f.name in args.only)
              and (not args.quick or quick(f))]
    unknown = set(args.only or ()) - {f.name for f in FIGURES}
    if unknown:
        print(f"unknown figures: {', '.join(sorted(unknown))}; `list` names them", file=sys.stderr)
        return 2
    if any(f.needs_glas for f in chosen) and not os.environ.get("OEEM_GLAS_ROOT") and not args.dry_run:
        print("set OEEM_GLAS_ROOT to the GlaS folder (train/ and testA/), e.g. ../shared/data/glas",
              file=sys.stderr)
        return 2
    py = shlex.quote(os.environ.get("PYTHON") or sys.executable)
    failed, skipped = [], []
    for fig in chosen:
        command = fig.command.replace("PY ", py + " ").replace("PY=PY", f"PY={py}")
        print(f"\n== {fig.name} (about {fig.minutes:g} min): {command}", flush=True)
        paths, maker = NEEDS.get(fig.name, ((), ""))
        missing = [p for p in paths if not (REPO / p).exists()]
        if missing and not args.dry_run:
            print(f"== {fig.name}: skipped - it reads {', '.join(missing)}, which `run --only {maker}` makes "
                  "(not here yet)", flush=True)
            skipped.append(fig.name)
            continue
        if args.dry_run:
            continue
        t = time.perf_counter()
        if subprocess.run(command, shell=True, cwd=REPO).returncode != 0:
            failed.append(fig.name)
        print(f"== {fig.name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
    if args.dry_run:
        print(f"\n{len(chosen)} commands, about {sum(f.minutes for f in chosen):g} min on 2 cores (nothing run)")
        return 0
    if skipped:
        print(f"skipped (their inputs are missing): {', '.join(skipped)}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if "reproduced" not in {f.name for f in chosen}:  # that figure compares (and writes its file)
        cmd_compare(argparse.Namespace(rev="HEAD", json=None))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every figure: command time, result file, tracked or not").set_defaults(func=cmd_list)
    sub.add_parser("check", help="the docs quote what the result files hold").set_defaults(func=cmd_check)
    sub.add_parser("tables", help="write the docs' tables from the result files").set_defaults(func=cmd_tables)
    r = sub.add_parser("run", help="run the figures' commands, one at a time")
    r.add_argument("--quick", action="store_true",
                   help=f"only those the docs quote that are expected under {QUICK_MINUTES:g} min")
    r.add_argument("--only", nargs="+", help="these figures only (names from `list`)")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("compare", help="the figures remade here against the committed result files")
    c.add_argument("--rev", default="HEAD", help="the git revision to compare with (default HEAD)")
    c.add_argument("--json", help="also write the comparison to this file")
    c.set_defaults(func=cmd_compare)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
