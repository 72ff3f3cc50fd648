"""The docs' generated tables and the helpers their quotes use: each a function of a result file's data (and of
the files it sets beside its own, read by :func:`figures_core.result_file`), registered in
``figures_catalog.py``."""
from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

from figures_core import README, REPO, link, markdown, result_file


def chosen_row(d: dict) -> dict:
    """The row of an instances result file its validation chose."""
    return next(r for r in d["rows"] if all(r.get(k) == v for k, v in d["chosen_on_val"].items()))


def shipped_row(d: dict) -> dict:
    """The row of an instances result file with the setting `oeem` ships (the one its slide was timed with)."""
    ship = {("working_scale" if k == "scale" else k): v for k, v in d["slide"]["setting"].items() if k != "h"}
    return next(r for r in d["rows"] if all(r.get(k) == v for k, v in ship.items()))


def testa(d: dict, key: str) -> float:
    return d["evaluation"]["test"][key]


def update_mean(arm: str, images: int, part: str) -> Callable[[dict], float]:
    def value(d: dict) -> float:
        rows = [r for r in d["rows"] if r["arm"] == arm and r["images"] == images]
        if not rows:
            raise KeyError(f"no rows for {arm}, {images} images")
        return statistics.mean(r["delta"][part] for r in rows)
    return value


def update_seconds(d: dict) -> float:
    return statistics.median(r["seconds"] for r in d["rows"])


def weak_row(key: str, part: str) -> Callable[[dict], float]:
    return lambda d: d["runs"][key][part]


def review_hits(row: str, at: int) -> Callable[[dict], float]:
    return lambda d: d["half_B"]["results"][row][f"precision@{at}"] * at


LR = "train-bn+lr=0.0001"

# the kinds benchmarks/instances_limits.py's error_kinds counts, as the tables name them
ERROR_KINDS = {"gland: found": "true glands found (an object holds more than half)",
               "gland: merged": "merged: the object over it is another gland's",
               "gland: missed": "missed: the mask covers less than half",
               "gland: missed, under 1000 px": "... of which under 1000 px (the prediction drops such regions)",
               "gland: split": "split: covered by pieces, none holding half",
               "object: piece": "objects that are a piece of one gland",
               "object: background": "objects mostly on the truth's background",
               "object: spans several": "objects over several glands, none held by half"}


def limits_errors_table(d: dict) -> list[str]:
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


def limits_table(d: dict) -> list[str]:
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


def rounds_table(d: dict) -> list[str]:
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


def rounds_errors_table(d: dict) -> list[str]:
    """What each model's chosen cut gets wrong, by kind: training images / testA."""
    arms = d["arms"]
    short = {label: label.replace(" round, working scale ", " ") for label in arms}
    rows = [(w, *(f"{a['kinds']['train'].get(k, 0)} / {a['kinds']['test'].get(k, 0)}" for a in arms.values()))
            for k, w in ERROR_KINDS.items()]
    return markdown(("training images / testA", *short.values()), rows)


def instances_table(d: dict) -> list[str]:
    """Each separation method at its best on validation, the chosen row in bold, and the best core row at the
    other scale: object F1 / object Dice / object Hausdorff per split, and the time against the prediction's."""
    chosen = chosen_row(d)
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


def precision_table(d: dict) -> list[str]:
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


def faults_table(d: dict) -> list[str]:
    names = {"corrections": "saving corrections", "checkpoint": "training checkpoints",
             "export": "exporting (PNG, TIFF, OME-Zarr, GeoJSON)"}
    return markdown(("scenario", "kills", "problems"), [(names.get(r["scenario"], r["scenario"]), r["kills"],
                                                         f"**{r['problems']}**") for r in d["rows"]])


def slide_sizes_table(d: dict) -> list[str]:
    return markdown(("slide", "file", "tissue blocks (1024 px)", "glass blocks skipped", "tissue Mpx", "time",
                     "peak RSS"), [(f"{r['side']:,} x {r['side']:,} px", f"{r['slide_mb']:.0f} MB", r["tissue_blocks"],
                                    r["glass_blocks"], f"{r['tissue_mpx']:.0f}", f"{r['seconds']:.1f} s",
                                    f"{r['peak_rss_mb']:.0f} MB") for r in d["sizes"]])


def slide_scale_out_table(d: dict) -> list[str]:
    one, two = d["dask"]
    ddp1, ddp2 = d["ddp"]["rows"]
    return markdown(("scale-out (same run)", "1", "2", "ratio"), [
        (f"dask `LocalCluster` workers (1 thread each), {one['blocks']} blocks of 512 px",
         f"{one['blocks_per_s']:.2f} blocks / s", f"{two['blocks_per_s']:.2f} blocks / s",
         f"x{two['blocks_per_s'] / one['blocks_per_s']:.2f}"),
        ("`torchrun` processes (cpu preset, full supervision on the sample images, global batch 8; 1 x 2 threads "
         "vs 2 x 1 thread)", f"{ddp1['it_per_s']:.2f} it / s", f"{ddp2['it_per_s']:.2f} it / s",
         f"x{ddp2['it_per_s'] / ddp1['it_per_s']:.2f}")])


def end_to_end_table(d: dict) -> list[str]:
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
    rows.append((f"glands as objects ({glands_source(ev['test'])}): object F1 / Dice / Hausdorff",
                 *(f"{ev[s]['object_F1']:.1f} / {ev[s]['object_Dice']:.1f} / {ev[s]['object_Hausdorff']:.1f}"
                   for s in ("train", "val", "test"))))
    sec = d["stage_seconds"]
    minutes = ", ".join(f"{k} {v / 60:.1f}" for k, v in sec.items() if v >= 30)
    rows.append((f"minutes, {d['precision']['segmentation']}: {minutes}; peak memory "
                 f"{d['peak_rss_mb'] / 1024:.1f} GB", "", "", f"**{d['wall_seconds'] / 60:.1f}** in all"))
    return markdown(("mIoU", "train", "validation", "testA"), rows)


def weak_budget_table(d: dict) -> list[str]:
    """The short-schedule budget sweep: what tagging 10-100 % of the images (picked by `oeem suggest`) buys."""
    runs = [r for r in d["runs"].values() if r.get("schedule") != "cpu preset"]
    full = next(r for r in runs if r["budget"] == 100)
    rows = [(f"{r['budget']} %", f"{r['labelled_patches']:,}", f"{r['val_pseudo_mIoU']:.2f}", f"{r['val_mIoU']:.2f}",
             f"{r['testA_mIoU']:.2f}", f"{100 * r['testA_mIoU'] / full['testA_mIoU']:.1f} %", f"{r['minutes']:.1f}")
            for r in sorted(runs, key=lambda r: r["budget"])]
    return markdown(("tagged (`oeem suggest`)", "labelled patches", "validation pseudo-masks", "validation mIoU",
                     "testA mIoU", "of the 100 % testA", "min"), rows)


def mean_sd(xs: list[float], fmt: str = "{:.2f}") -> str:
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def losses_table(d: dict) -> list[str]:
    """Each loss on the stage-1 pseudo-masks (mean ± sd over its seeds, each seed's figure in brackets), then
    l_norm minus CE paired seed by seed."""
    by: dict[str, list[dict]] = {}
    for r in d["rows"]:
        by.setdefault(r["name"], []).append(r)
    names = sorted(by, key=lambda n: (n not in ("ce", "l_norm"), n != "ce", n))

    def cell(rs: list[dict], split: str) -> str:
        xs = [r[split]["mIoU"] for r in sorted(rs, key=lambda r: r["seed"])]
        return mean_sd(xs) + (" (" + " / ".join(f"{x:.2f}" for x in xs) + ")" if len(xs) > 1 else "")
    rows = [(f"`{n}`", ", ".join(str(r["seed"]) for r in sorted(by[n], key=lambda r: r["seed"])),
             cell(by[n], "val"), cell(by[n], "test"), cell(by[n], "train"),
             f"{statistics.mean(r['train_s'] for r in by[n]) / 60:.1f}") for n in names]
    seeds = paired_seeds(d)
    if seeds:
        def diff(split: str) -> str:
            xs = paired_diffs(d, split)
            sd = f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
            return f"{statistics.mean(xs):+.2f}{sd} (" + " / ".join(f"{x:+.2f}" for x in xs) + ")"
        rows.append(("`l_norm` minus `ce`, paired by seed", ", ".join(map(str, seeds)), diff("val"),
                     diff("test"), diff("train"), ""))
    labels = d["stage1"]["pseudo_mIoU"]
    return markdown(("loss", "seeds", "validation mIoU", "testA mIoU", f"train (labels {labels:.2f})",
                     "min per training"), rows)


def paired_seeds(d: dict) -> list[int]:
    """The seeds both CE and l_norm ran, in order."""
    ran = {(r["name"], r["seed"]) for r in d["rows"]}
    return sorted(s for (n, s) in ran if n == "ce" and ("l_norm", s) in ran)


def paired_diffs(d: dict, split: str) -> list[float]:
    """l_norm minus CE on one split, seed by seed (same seed: same initialisation, data order, augmentation)."""
    by = {(r["name"], r["seed"]): r[split]["mIoU"] for r in d["rows"]}
    return [by["l_norm", s] - by["ce", s] for s in paired_seeds(d)]


def paired_mean(split: str) -> Callable[[dict], float]:
    """l_norm minus CE on one split, the mean over the seeds both ran."""
    def value(d: dict) -> float:
        xs = paired_diffs(d, split)
        if not xs:
            raise KeyError("no seed with both ce and l_norm")
        return statistics.mean(xs)
    return value


def bias_table(d: dict) -> list[str]:
    g = d["gland_bias"]
    return markdown(("gland bias", "validation pseudo mIoU", "train pseudo mIoU"),
                    [(f"**{b:g}** (chosen)" if b == g["best_on_val"] else f"{b:g}", f"{v:.2f}", f"{t:.2f}")
                     for b, v, t in zip(g["biases"], g["val"], g["train"])])


def cleaning_table(d: dict) -> list[str]:
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


def scales_table(d: dict) -> list[str]:
    t = d["scales"]["current"]
    return markdown(("scales (+ flip)", "validation mIoU", "testA mIoU", "s per image"),
                    [(" + ".join(f"{x:g}" for x in r["scales"]), f"{r['val']:.2f}", f"{r['test']:.2f}",
                      f"{r['s_per_image']:.2f}") for r in t["rows"]])


def orientations_table(d: dict) -> list[str]:
    """Each test-time setting's pixel mIoU, testA glands (the shipped cut) and time, measured in one run."""
    return markdown(("prediction", "validation mIoU", "training images mIoU", "testA mIoU",
                     "testA object F1 / Dice / Hausdorff", "s per image"),
                    [(r["setting"], *(f"{r['pixel_mIoU'][s]:.2f}" for s in ("val", "train", "test")),
                      object_scores(r["shipped_cut"]["test"]), f"{r['s_per_image']:.2f} ({r['time_vs_preset']:.1f}x)")
                     for r in d["rows"]])


def review_table(d: dict) -> list[str]:
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


def update_safety_table(d: dict) -> list[str]:
    """Each update rule (the earlier default's two arms from ``update_safety-cpu-bf16.json``, the learning rates from
    this file) per number of corrected images: the corrected images before and their gain, the mean (worst) change of
    validation and testA over the seeds, and how many the guard keeps."""
    rows = result_file("update_safety-cpu-bf16.json")["rows"] + d["rows"]
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


def actions_table(d: dict) -> list[str]:
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


def base_row(d: dict) -> dict:
    return next(r for r in d["rows"] if r["arm"] == "base")


def update_row(d: dict) -> dict:
    return next(r for r in d["rows"] if r["arm"].startswith("update"))


def retrain_table(d: dict, extra: str | None = None) -> list[str]:
    """``update_gain.py``'s retrains (and those of the ``extra`` file of the same project): each verified-pixel
    rule against the retrain on the uncorrected labels with the same seed - or, without one, the model before."""
    rows = [r for r in d["rows"] if r["arm"].startswith("retrain")]
    if extra:
        rows += [r for r in result_file(extra)["rows"] if r["arm"].startswith("retrain")]
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


def object_scores(ev: dict, fmt: str = "{:.1f}") -> str:
    return " / ".join(fmt.format(ev[k]) for k in ("object_F1", "object_Dice", "object_Hausdorff"))


def glands_source(ev: dict) -> str:
    """How an evaluation cut its prediction into glands: runs before the instances step scored connected regions."""
    return "glands from the instances step" if ev.get("objects") == "instances" else "each connected region a gland"


def schedule_text(d: dict) -> str:
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


def budget_table(_d: dict) -> list[str]:
    """Each ``--budget`` run: what the planner kept, its time against the time it expected, and the scores."""
    rows = []
    for name in BUDGETS:
        d = result_file(name)
        ev = d["evaluation"]
        rows.append((f"{d['budget_s'] / 60:.0f} min, **{d['precision']['segmentation']}** ({link(name)})",
                     schedule_text(d), f"{d['wall_seconds'] / 60:.1f} ({d['schedule']['expected_s'] / 60:.1f})",
                     f"{d['pseudo']['train']:.2f}", f"{ev['val']['mIoU']:.2f}", f"**{ev['test']['mIoU']:.2f}**",
                     object_scores(ev["test"], "{:.2f}")))
    return markdown(("budget", "schedule it ran", "minutes (expected)", "stage-1 pseudo-masks (train)",
                     "validation mIoU", "testA mIoU", "testA object F1 / object Dice / object Hausdorff"), rows)


def headline_rows(d: dict, doc: str) -> list[tuple]:
    """The README's results: the preset end to end, each time budget, the supervised reference (and, in the docs,
    the pseudo-masks and the prediction's speed); every row names its file."""
    ev, sup = d["evaluation"], result_file("end_to_end-cpu-supervised.json")
    short = doc == README
    rows = [(f"weakly supervised: `oeem run --preset cpu` end to end ({ev['train']['images']} training images, "
             f"{ev['val']['images']} held out for validation; validation {ev['val']['mIoU']:.2f}; testA object F1 / "
             f"object Dice / object Hausdorff {object_scores(ev['test'])} ({glands_source(ev['test'])}); "
             f"{link('end_to_end-cpu.json', doc)})", f"**{ev['test']['mIoU']:.2f}**",
             f"**{d['wall_seconds'] / 60:.1f} min** ({d['precision']['segmentation']})")]
    budgets = [result_file(n) for n in BUDGETS]
    if short:
        rows.append(("`--budget 30m` / `--budget 60m`: the planner shrinks the schedule to fit, in bf16 / fp32 ("
                     + ", ".join(link(n, doc) for n in BUDGETS) + "; [details](docs/benchmarks.md#quality-against-a"
                     "-time-budget))",
                     "; ".join(f"{budgets[i]['budget_s'] / 60:.0f} min: {budgets[i]['evaluation']['test']['mIoU']:.2f}"
                               f" / {budgets[i + 1]['evaluation']['test']['mIoU']:.2f}" for i in (0, 2)),
                     "; ".join(f"{budgets[i]['wall_seconds'] / 60:.1f} min / {budgets[i + 1]['wall_seconds'] / 60:.1f}"
                               " min" for i in (0, 2))))
    else:
        for name, b in zip(BUDGETS, budgets):
            prec = b["precision"]["segmentation"]
            rows.append((f"the same with `--budget {b['budget_s'] / 60:.0f}m` in {prec}: {schedule_text(b)} "
                         f"(expected {b['schedule']['expected_s'] / 60:.1f} min); validation "
                         f"{b['evaluation']['val']['mIoU']:.2f}, testA object F1 / Dice / Hausdorff "
                         f"{object_scores(b['evaluation']['test'])} from the instances step ({link(name, doc)})",
                         f"{b['evaluation']['test']['mIoU']:.2f}",
                         f"{b['wall_seconds'] / 60:.1f} min ({prec})"))
    rows.append((f"fully supervised reference: the same U-Net trained on the gland masks (validation "
                 f"{sup['evaluation']['val']['mIoU']:.2f}; {link('end_to_end-cpu-supervised.json', doc)})",
                 f"{sup['evaluation']['test']['mIoU']:.2f}",
                 f"{sup['stage_seconds']['segmentation'] / 60:.1f} min of training "
                 f"({sup['precision']['segmentation']})"))
    if not short:
        bf16, fp32 = result_file("instances-cpu.json")["predict"], result_file("instances-cpu-fp32.json")["predict"]
        rows += [(f"pseudo-masks, train mIoU ({link('end_to_end-cpu.json', doc)})",
                  f"{d['pseudo']['train']:.2f} after stage 1, {d['selftrain'][-1]['train']:.2f} after "
                  f"{len(d['selftrain'])} self-training rounds", ""),
                 (f"prediction of one GlaS image, one scale + flip ({link('instances-cpu.json', doc)}, "
                  f"{link('instances-cpu-fp32.json', doc)})", "",
                  f"{bf16['ms_per_image']:.0f} ms ({bf16['precision']}), {fp32['ms_per_image']:.0f} ms "
                  f"({fp32['precision']})")]
    return rows


def headline_table(doc: str) -> Callable[[dict], list[str]]:
    return lambda d: markdown(("GlaS (85 training, 60 testA images), 2 CPU cores, random initialisation",
                               "testA mIoU", "time"), headline_rows(d, doc))


SEED_FILES = (("0", "instances-cpu.json"), ("1", "instances-cpu-s1.json"), ("2", "instances-cpu-s2.json"))


def seed_runs() -> list[tuple[str, dict]]:
    """(seed, instances file) of each draw of the `cpu` preset the glands benchmark cut."""
    return [(seed, result_file(name)) for seed, name in SEED_FILES]


def seeds_mean(value: Callable[[dict], float]) -> Callable[[dict], float]:
    """The mean over the seeds of ``value`` of each draw's instances file."""
    return lambda _d: statistics.mean(value(d) for _, d in seed_runs())


def targets_table(d: dict) -> list[str]:
    """The project's targets for the cpu preset, each judged from its file."""
    sup, fp32 = result_file("end_to_end-cpu-supervised.json"), result_file("end_to_end-budget-60m-fp32.json")
    losses, inst = result_file("losses.json"), result_file("instances-cpu.json")
    inst32 = result_file("instances-cpu-fp32.json")
    e2e = link("end_to_end-cpu.json")

    def met(ok: bool) -> str:
        return "met" if ok else "not met"
    weak = [(p, r) for p, r in ((d["precision"]["segmentation"], d), (fp32["precision"]["segmentation"], fp32))
            if r["evaluation"]["test"]["mIoU"] >= 70 and r["wall_seconds"] <= 3600]
    diffs = {s: paired_diffs(losses, s) for s in ("val", "test")}
    gain = statistics.mean(diffs["val"])
    ms = (inst["predict"]["ms_per_image"], inst32["predict"]["ms_per_image"])
    objects = chosen_row(inst)["test"]
    seeds_objects = {k: statistics.mean(shipped_row(s)["test"][k] for _, s in seed_runs())
                     for k in ("object_F1", "object_Dice", "object_Hausdorff")}
    rows = [
        ("fully supervised ≥ 85", met(sup["evaluation"]["test"]["mIoU"] >= 85),
         f"**{sup['evaluation']['test']['mIoU']:.2f}** testA ({sup['evaluation']['val']['mIoU']:.2f} validation, "
         f"{sup['precision']['segmentation']}; {link('end_to_end-cpu-supervised.json')})"),
        ("weak (CE) ≥ 70 within 60 min", "met in " + " and in ".join(p for p, _ in weak) if weak else "not met",
         f"**{d['evaluation']['test']['mIoU']:.2f}** in {d['wall_seconds'] / 60:.1f} min, "
         f"{d['precision']['segmentation']} ({e2e}); {fp32['evaluation']['test']['mIoU']:.2f} in "
         f"{fp32['wall_seconds'] / 60:.1f} min with `--budget 60m` in {fp32['precision']['segmentation']} "
         f"({link('end_to_end-budget-60m-fp32.json')})"),
        ("pseudo-masks ≥ 70", met(d["pseudo"]["train"] >= 70),
         f"{d['pseudo']['train']:.2f} train from stage 1, {d['selftrain'][-1]['train']:.2f} after "
         f"{len(d['selftrain'])} rounds ({e2e})"),
        ("OEEM l_norm ≥ CE + 1", met(gain >= 1) + ("; CE is the `cpu` preset's loss" if gain < 1 else ""),
         f"l_norm minus CE on the stage-1 pseudo-masks, {len(diffs['val'])} paired seeds: validation "
         + ", testA ".join(f"{statistics.mean(x):+.2f} ± {statistics.stdev(x):.2f}" for x in diffs.values())
         + f" ({link('losses.json')})"),
        ("prediction ≤ 2 s per GlaS image", met(max(ms) <= 2000),
         f"{ms[0]:.0f} ms {inst['predict']['precision']}, {ms[1]:.0f} ms {inst32['predict']['precision']}, "
         f"one scale + flip ({link('instances-cpu.json')}, {link('instances-cpu-fp32.json')})"),
        ("glands as objects: testA object F1 ≥ 88, object Dice ≥ 88, Hausdorff ≤ 60",
         met(all(o["object_F1"] >= 88 and o["object_Dice"] >= 88 and o["object_Hausdorff"] <= 60
                 for o in (objects, seeds_objects))),
         f"{object_scores(objects)} (seed 0, {link('instances-cpu.json')}); {object_scores(seeds_objects)}, the "
         f"mean of seeds 0-{len(SEED_FILES) - 1} ({', '.join(link(name) for _, name in SEED_FILES[1:])})")]
    return markdown(("target", "status", "figure"), rows)


def weak25_table(d: dict) -> list[str]:
    """A quarter of the images tagged, the whole cpu preset, against every image tagged."""
    r, full = d["runs"]["suggested-25-s0-cpu"], result_file("end_to_end-cpu.json")
    fv, ft = full["evaluation"]["val"]["mIoU"], full["evaluation"]["test"]["mIoU"]
    return markdown(("tagged, picked by", "images tagged / joined", "validation labels after round 2",
                     "validation mIoU", "testA mIoU", "of the 100 %", "min"), [
        (f"{r['budget']} %, `oeem suggest`", f"{len(r['images'])} / {r['joined_images']}",
         f"{r['val_pseudo_mIoU']:.2f}", f"{r['val_mIoU']:.2f}", f"**{r['testA_mIoU']:.2f}**",
         f"**{100 * r['testA_mIoU'] / ft:.1f} %** testA, {100 * r['val_mIoU'] / fv:.1f} % validation",
         f"{r['minutes']:.1f}"),
        ("100 % (`end_to_end.py --preset cpu`)", f"{full['evaluation']['train']['images']} / 0", "", f"{fv:.2f}",
         f"{ft:.2f}", "100 %", f"{full['wall_seconds'] / 60:.1f}")])


def preview_table(d: dict) -> list[str]:
    """The shipped preview at each share of tagged images: seeds, images, validation and testA."""
    rows = []
    for pct, scores in sorted(d["shipped"].items(), key=lambda kv: int(kv[0])):
        runs = [r for r in d["rows"] if r["settings"] == "shipped" and r["percent"] == int(pct)]
        n = sorted({r["images"] for r in runs})
        images = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        rows.append((f"{pct} % ({images} images)", len({r["seed"] for r in runs}), f"{scores['val_mIoU']:.1f}",
                     f"{scores['testA_mIoU']:.1f}"))
    return markdown(("training images tagged", "seeds", "validation mIoU", "testA mIoU"), rows)


def suggest_table(d: dict) -> list[str]:
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


def live_table(_d: dict) -> list[str]:
    """The background classifier's validation pseudo-masks at the checkpoint nearest each minute mark."""
    marks = (1, 2, 4, 8)
    rows = []
    for what, name in LIVE:
        d = result_file(name)
        at = [min(d["rows"], key=lambda r: abs(r["train_s"] / 60 - m)) for m in marks]
        rows.append((f"{what}, {d['precision']}: `{name}`", *(f"{r['val_pseudo_mIoU']:.2f}" for r in at)))
    return markdown(("validation pseudo-mask mIoU after about ... of training", *(f"{m} min" for m in marks)), rows)


def session_table(d: dict) -> list[str]:
    """Last tag to pseudo-masks (and to the end of Run all) in each precision, beside the batch stage 1."""
    import re

    rows = []
    for name, s in (("session-bf16.json", d), ("session-fp32.json", result_file("session-fp32.json"))):
        t = s["from_last_tag_s"]
        credited = re.search(r"(\d+) of (\d+) epochs credited", s["classifier"]["continued_from_live"])
        whole = t["until"] == "all"
        rows.append((f"{s['precision']}, `{name}`", f"{s['live']['steps']:,} ({credited[1]} of {credited[2]})",
                     f"**{t['pseudo_masks'] / 60:.1f} min**", f"{s['val_pseudo_mIoU']:.2f}",
                     f"{t['end'] / 60:.1f} min" if whole else "not run (stage 1 only)",
                     f"{s['testA_mIoU']:.2f}" if whole else "-"))
    batch, live = result_file("weak_labels.json")["runs"]["suggested-25-s0-cpu"], result_file("live-bf16.json")
    cams = (d["from_last_tag_s"]["pseudo_masks"] - d["from_last_tag_s"]["steps_started"]["cams"]) / 60
    classifier = live["batch_stage1"]["classifier_s"] / 60
    rows.append((f"batch stage 1 at the same tags, afresh, {batch['precision']}", "-",
                 f"about {classifier + cams:.1f} min (classifier {classifier:.1f}, CAMs {cams:.1f} as in the session)",
                 f"{live['batch_stage1']['val_pseudo_mIoU']:.2f}", f"{batch['minutes']:.1f} min",
                 f"{batch['testA_mIoU']:.2f}"))
    return markdown(("", "steps while tagging (credited epochs)", "last tag to pseudo-masks",
                     "their validation mIoU", "last tag to end of *Run all*", "testA mIoU"), rows)


def crash_table(d: dict) -> list[str]:
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


def minute_label(k: int) -> str:
    """What a live benchmark's row ``k`` is: its checkpoints come about a minute of training apart."""
    return f"checkpoint {k + 1} (about minute {k + 1})"


def remade_quote(figure: str, what: str) -> Callable[[dict], str]:
    """A quoted figure as a rerun remade it (``compare``'s file)."""
    return lambda d: next(r["remade"] for r in d["rows"] if r["figure"] == figure and r["what"] == what)


def reproduced_table(d: dict) -> list[str]:
    """``compare``'s file: each quoted figure a rerun changed, committed beside remade, then how many came out the
    same."""
    rows = [(f"`{r['figure']}`", r["what"], r["committed"], r["remade"],
             f"{r['change_%']:+.1f} %" if "change_%" in r else "") for r in d["rows"]
            if not r["what"].startswith("table ")]
    tables = sum(r["what"].startswith("table ") for r in d["rows"])
    rows.append((f"{len(d['remade'])} figures remade", f"{d['quotes_unchanged']} quoted figures as committed",
                 "", "", f"{tables} generated table rows changed"))
    return markdown(("figure", "quoted figure", "committed", "remade", "change"), rows)


def seeds_table(_d: dict) -> list[str]:
    """The `cpu` preset trained from each seed (classifier and segmentation), each model's glands cut by the shipped
    setting and by the one its own validation chose, and the shipped cut's time on a slide against the slide's
    prediction (bf16, timed in each run); then the mean and sd over the seeds."""
    runs = seed_runs()

    def core_setting(r: dict) -> str:
        return f"p > {r['core_threshold']:g}, >= {r['min_core_area']:g} px, scale {r['working_scale']:g}"
    rows = []
    for seed, d in runs:
        shipped, chosen = shipped_row(d), chosen_row(d)
        own = "the shipped one" if chosen is shipped else (
            f"{core_setting(chosen)}: {object_scores(chosen['test'])}" if chosen["method"] == "core"
            else f"`{chosen['method']}`: {object_scores(chosen['test'])}")
        rows.append((f"seed {seed}", f"{d['pixel']['val']['mIoU']:.2f} / {d['pixel']['test']['mIoU']:.2f}",
                     object_scores(d["best_of_each_method"]["components"]["test"]), object_scores(shipped["val"]),
                     object_scores(shipped["train"]), object_scores(shipped["test"]), own,
                     f"{100 * d['slide']['share_of_prediction']:.1f} %"))

    tests = [shipped_row(d)["test"] for _, d in runs]
    rows.append((f"mean ± sd of {len(runs)} seeds", mean_sd([d["pixel"]["test"]["mIoU"] for _, d in runs])
                 + " testA", "", "", "",
                 " / ".join(mean_sd([t[k] for t in tests], "{:.1f}")
                            for k in ("object_F1", "object_Dice", "object_Hausdorff")),
                 "", mean_sd([100 * d["slide"]["share_of_prediction"] for _, d in runs], "{:.1f}") + " %"))
    return markdown(("model", "pixel mIoU validation / testA", "connected regions: testA", "shipped cut: validation",
                     "training images", "testA", "the cut its own validation chose: testA",
                     "glands of a slide: of its prediction's time"), rows)
