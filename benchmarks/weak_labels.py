"""Weak labels only: what a pathologist's tagging costs with the tool's proposals, and what each labelling budget buys.

A simulated pathologist tags GlaS training images with the tool's own actions (``pipeline.review.tagging.Tagger``,
the functions the Weak labels panel's keys call; each call counted). The truth of a patch is the 5 % rule on the
GlaS mask; the masks of the training images are removed from the projects the pipeline trains on (they are read
only by the simulated pathologist), 10 training images with masks are held out for validation, testA is scored.

    python benchmarks/weak_labels.py build                       # truth project + the mask-free base
    python benchmarks/weak_labels.py budget --picker suggested   # 10, 25, 50, 100 % picked by `oeem suggest`
    python benchmarks/weak_labels.py budget --picker random --budgets 10 25
    python benchmarks/weak_labels.py budget --picker image-tags --budgets 25
    python benchmarks/weak_labels.py budget --picker suggested --budgets 25 --untagged-images
    python benchmarks/weak_labels.py budget --picker random --budgets 25 --untagged-images
    python benchmarks/weak_labels.py round suggested-25-s0-it1000-es430 --untagged-images  # + one round
    python benchmarks/weak_labels.py budget --budgets 25 100 --preset-schedule  # as `oeem run --preset cpu` runs
    python benchmarks/weak_labels.py actions                     # the action counts (needs the suggested runs)
    python benchmarks/weak_labels.py table                       # table + plot from the saved results

*Suggested* budgets grow as a pathologist would use the tool: the first 10 % are `oeem suggest`'s picks before any
model (spread over the images); each later step adds the images `oeem suggest` ranks first with the model trained
on the step before. *Random* picks the same counts at random (seeded). *Image tags* gives each picked image one tag
for all its patches (the classes present anywhere in it), the same images as *suggested*. ``--untagged-images``
trains the same picks with ``patches.untagged_images`` (the untagged training images get CAM pseudo-masks too).
*round* adds one self-training round (the run's own iterations) to a copy of a finished budget run's project, as
``oeem run --rounds 1`` would have continued it; ``--untagged-images`` lets the untagged training images join the
round (``selftrain.untagged_images``: the round-0 model's prediction is their label).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, glas_root, machine, print_table, provenance, pyplot, write_json

from pipeline.io.patch_labels import UNLABELLED, vectors_to_tags
from pipeline.progress import run
from pipeline.review.tagging import Tagger
from pipeline.stages.patches import patch_grid, patch_labels
from pipeline.store import ProjectStore

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench"
TRUTH, BASE = WORK / "glas-truth.oeem.zarr", WORK / "weak-base.oeem.zarr"
OUT = "weak_labels.json"
VAL_IMAGES = 10
# One schedule for every budget (chosen to fit the budget sweep into about 1.5 h on 2 cores in fp32; the budgets are
# compared with each other, not with the full `cpu` preset - see docs/benchmarks.md for that run).
SCHEDULE = {"classifier.epochs": 4, "classifier.min_epoch_steps": 0, "cam.scales": (1.0, 1.5),
            "segmentation.iterations": 300, "selftrain.rounds": 0, "inference.scales": (1.0,), "inference.flip": False}
# ``--epoch-steps 430`` (the `cpu` preset's classifier.min_epoch_steps): an epoch trains at least one pass over all
# 75 images (8,607 patches // 20), so a budget's classifier trains as long as the 100 % one


def load() -> dict:
    path = RESULTS / OUT
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def save(data: dict) -> None:
    data["machine"] = machine()
    data["schedule"] = {k: list(v) if isinstance(v, tuple) else v for k, v in SCHEDULE.items()}
    write_json(OUT, data)


def truth_tags(truth: ProjectStore, name: str, cfg) -> np.ndarray:
    """The tags a careful pathologist gives: the 5 % rule on the GlaS mask."""
    corners = patch_grid(truth.shape(name), cfg.size, cfg.stride)
    return vectors_to_tags(patch_labels(truth.mask(name), corners, cfg.size, cfg.min_fraction))


# ---------------------------------------------------------------------------- build
def cmd_build(args) -> None:
    from pipeline.store.project import create_project

    WORK.mkdir(parents=True, exist_ok=True)
    root = glas_root()
    if not TRUTH.exists():
        t = time.perf_counter()
        create_project(root, TRUTH, val_images=VAL_IMAGES, seed=0)
        print(f"truth project: {time.perf_counter() - t:.0f} s")
    if BASE.exists():
        shutil.rmtree(BASE)
    shutil.copytree(TRUTH, BASE)
    base = ProjectStore.open(BASE)
    for n in base.names("train"):
        base.delete(n, "mask")  # the pipeline never sees a training mask
    print(f"base: {len(base.names('train'))} training images without masks, {len(base.names('val'))} validation, "
          f"{len(base.names('test'))} testA")


# ---------------------------------------------------------------------------- budgets
def bench_config(store: ProjectStore, preset_schedule: bool = False):
    """The sweep's schedule, or (``preset_schedule``) the `cpu` preset as ``oeem run --preset cpu`` runs it."""
    from pipeline.store.project import project_config

    return project_config(store, "cpu", {} if preset_schedule else dict(SCHEDULE))


def run_name(picker: str, budget: int, seed: int, iterations: int | None = None, epoch_steps: int = 0,
             preset_schedule: bool = False) -> str:
    """The key of a run; a segmentation schedule other than the sweep's adds ``-itN``, a classifier epoch of at
    least N steps ``-esN``, the whole `cpu` preset ``-cpu``."""
    if preset_schedule:
        return f"{picker}-{budget}-s{seed}-cpu"
    longer = iterations is not None and iterations != SCHEDULE["segmentation.iterations"]
    return (f"{picker}-{budget}-s{seed}" + (f"-it{iterations}" if longer else "")
            + (f"-es{epoch_steps}" if epoch_steps else ""))


def counts(n: int, budgets: list[int]) -> list[int]:
    return [max(1, round(n * b / 100)) for b in budgets]


def picks_for(picker: str, budgets: list[int], seed: int, truth: ProjectStore, data: dict, cfg) -> list[list[str]]:
    """The images tagged at each budget (each list contains the previous one)."""
    names = truth.names("train")
    sizes = counts(len(names), budgets)
    if picker == "random":
        order = list(np.random.default_rng(seed).permutation(names))
        return [order[:k] for k in sizes]
    return [data["runs"][run_name("suggested", b, seed)]["images"] for b in budgets]  # image-tags: same images


def next_suggested(prev: Path | None, k: int, cfg) -> list[str]:
    """``k`` more images in `oeem suggest`'s order, with the model of the previous step (none before the first)."""
    from pipeline.review.suggest import suggest

    store = ProjectStore.open(prev if prev is not None else BASE)
    return [s.image for s in suggest(store, cfg.patches, top=k, device="cpu")]


def tag_images(store: ProjectStore, truth: ProjectStore, names: list[str], cfg, image_tags: bool) -> None:
    for n in names:
        tags = truth_tags(truth, n, cfg.patches)
        if image_tags:  # one tag for the whole image: the classes present anywhere in it
            tags = np.full_like(tags, np.bitwise_or.reduce(tags))
        store.save_patch_tags(n, tags, cfg.patches.size, cfg.patches.stride)


def train_budget(picker: str, budget: int, seed: int, names: list[str], truth: ProjectStore, data: dict,
                 untagged: bool = False, iterations: int | None = None, epoch_steps: int = 0,
                 preset_schedule: bool = False) -> dict:
    from pipeline.stages.infer import evaluate
    from pipeline.stages.run import run_all

    tagged_by = picker
    picker = picker + "+untagged" if untagged else picker
    key = run_name(picker, budget, seed, iterations, epoch_steps, preset_schedule)
    path = WORK / f"{key}.oeem.zarr"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(BASE, path)
    store = ProjectStore.open(path)
    cfg = bench_config(store, preset_schedule)
    cfg.classifier.seed = cfg.segmentation.seed = seed
    cfg.patches.untagged_images = untagged
    if not preset_schedule:
        if iterations is not None:
            cfg.segmentation.iterations = iterations
        cfg.classifier.min_epoch_steps = epoch_steps
    tag_images(store, truth, names, cfg, image_tags=tagged_by == "image-tags")
    t = time.perf_counter()
    report = run(run_all(store, cfg, "cpu"), lambda p: None)
    minutes = (time.perf_counter() - t) / 60
    pseudo_val = evaluate(store, "val", "pseudo")
    row = {"picker": picker, "budget": budget, "seed": seed, "images": names,
           "iterations": cfg.segmentation.iterations, "min_epoch_steps": cfg.classifier.min_epoch_steps,
           "classifier_passes": store.load_run("classifier")["passes"],
           "precision": (report.get("segmentation") or {}).get("precision"), "minutes": round(minutes, 1),
           "labelled_patches": int(store.tag_summary()["patches"]),
           "val_mIoU": report["evaluation-val"]["mIoU"], "testA_mIoU": report["evaluation-test"]["mIoU"],
           "val_pseudo_mIoU": pseudo_val["mIoU"], "project": str(path)}
    if preset_schedule:  # every round, and how many untagged images joined them
        row.update(schedule="cpu preset", rounds=cfg.selftrain.rounds,
                   joined_images=max((v.get("untagged_images", 0) for k, v in report.items()
                                      if k.startswith("selftrain-round")), default=0))
    print(f"{key}: {len(names)} images, testA {row['testA_mIoU']:.2f}, validation {row['val_mIoU']:.2f} "
          f"(pseudo {row['val_pseudo_mIoU']:.2f}), {minutes:.1f} min", flush=True)
    return row


def cmd_budget(args) -> None:
    if args.preset_schedule and (args.iterations is not None or args.epoch_steps):
        sys.exit("--preset-schedule trains the `cpu` preset's own schedule: leave out --iterations and --epoch-steps")
    truth = ProjectStore.open(TRUTH)
    data = load()
    cfg = bench_config(ProjectStore.open(BASE))
    names = truth.names("train")
    sizes = counts(len(names), args.budgets)
    chosen: list[str] = []
    prev: Path | None = None
    for budget, k in zip(args.budgets, sizes):
        key = run_name(args.picker + ("+untagged" if args.untagged_images else ""), budget, args.seed,
                       args.iterations, args.epoch_steps, args.preset_schedule)
        variant = args.untagged_images or key != run_name(args.picker, budget, args.seed)
        if k == len(names):  # every image, whoever picks
            picked = names
        elif variant and args.picker != "random":  # the plain run's picks (random ones are seeded)
            plain = data["runs"].get(run_name(args.picker, budget, args.seed))
            if plain is None:
                sys.exit(f"run `budget --picker {args.picker} --budgets {budget} --seed {args.seed}` first: "
                         "--untagged-images, --iterations, --epoch-steps and --preset-schedule train its picks")
            picked = plain["images"]
        elif args.picker == "suggested":
            done = data["runs"].get(key)
            chosen = done["images"] if done and not args.redo else chosen + next_suggested(prev, k - len(chosen), cfg)
            picked = chosen
        else:
            picked = picks_for(args.picker, args.budgets, args.seed, truth, data, cfg)[args.budgets.index(budget)]
        if key in data["runs"] and not args.redo:
            print(f"{key}: done (--redo to measure again)")
        else:
            data["runs"][key] = train_budget(args.picker, budget, args.seed, list(picked), truth, data,
                                             args.untagged_images, args.iterations, args.epoch_steps,
                                             args.preset_schedule)
            data["runs"][key]["provenance"] = provenance()  # each row its own command, commit and machine
            save(data)
        prev = Path(data["runs"][key]["project"])


# ---------------------------------------------------------------------------- a self-training round
def round_config(store: ProjectStore):
    """The settings a finished budget run trained with (each stage's record), one self-training round more at the
    run's own iterations."""
    from pipeline.config import CamConfig, ClassifierConfig, InferConfig, PatchConfig, SegConfig, from_dict

    cfg = bench_config(store)
    for section, cls, stage in (("patches", PatchConfig, "patches"), ("classifier", ClassifierConfig, "classifier"),
                                ("cam", CamConfig, "cams"), ("segmentation", SegConfig, "segmentation"),
                                ("inference", InferConfig, "predict")):
        setattr(cfg, section, from_dict(cls, store.load_run(stage)["config"]))
    cfg.selftrain.rounds, cfg.selftrain.last_round_scale = 1, 1.0
    return cfg


def cmd_round(args) -> None:
    from pipeline.stages.infer import evaluate
    from pipeline.stages.run import run_all

    data = load()
    base = data["runs"].get(args.run)
    if base is None:
        sys.exit(f"no budget run {args.run!r}: run `budget` first (`table` lists them)")
    key = f"{args.run}-round1" + ("-untagged" if args.untagged_images else "")
    if key in data.get("rounds", {}) and not args.redo:
        print(f"{key}: done (--redo to measure again)")
        return
    path = WORK / f"{key}.oeem.zarr"
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(base["project"], path)
    store = ProjectStore.open(path)
    cfg = round_config(store)
    cfg.selftrain.untagged_images = args.untagged_images
    t = time.perf_counter()
    report = run(run_all(store, cfg, "cpu", estimate=False), lambda p: None)
    minutes = (time.perf_counter() - t) / 60
    entry = report["selftrain-round-1"]
    row = {**{k: base.get(k) for k in ("picker", "budget", "seed", "iterations", "min_epoch_steps")}, "base": args.run,
           "untagged_images": args.untagged_images, "joined_images": entry.get("untagged_images", 0),
           "val_mIoU": report["evaluation-val"]["mIoU"], "testA_mIoU": report["evaluation-test"]["mIoU"],
           "val_pseudo_mIoU": evaluate(store, "val", "pseudo")["mIoU"], "minutes": round(minutes, 1),
           "project": str(path)}
    data.setdefault("rounds", {})[key] = row
    save(data)
    print(f"{key}: testA {row['testA_mIoU']:.2f} (round 0: {base['testA_mIoU']:.2f}), validation {row['val_mIoU']:.2f} "
          f"({base['val_mIoU']:.2f}), pseudo {row['val_pseudo_mIoU']:.2f}, {minutes:.1f} min", flush=True)


# ---------------------------------------------------------------------------- actions
def cmd_actions(args) -> None:
    """Replay the suggested order with the Tagger: patch by patch against proposals + fixes."""
    from pipeline.stages.classify import load_classifier

    truth = ProjectStore.open(TRUTH)
    data = load()
    its, es = args.iterations or SCHEDULE["segmentation.iterations"], args.epoch_steps

    def runs_with(epoch_steps: int) -> dict[int, dict]:
        return {r["budget"]: r for r in data["runs"].values() if r["picker"] == "suggested" and r["seed"] == args.seed
                and r.get("iterations", SCHEDULE["segmentation.iterations"]) == its
                and r.get("min_epoch_steps", 0) == epoch_steps}

    by_budget = runs_with(es)
    if 100 not in by_budget and 100 in runs_with(0):  # the last step's model proposes nothing: only its images count
        by_budget[100] = runs_with(0)[100]
    steps = [by_budget[b] for b in sorted(by_budget)]
    if not steps:
        sys.exit("no suggested budget runs yet: run `weak_labels.py budget --picker suggested` first")
    scratch = WORK / "actions.oeem.zarr"
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(BASE, scratch)
    store = ProjectStore.open(scratch)
    cfg = bench_config(store).patches
    one_by_one = proposal_flow = keys_flow = no_proposal_flow = best_flow = patches_total = wrong_total = 0
    costlier = cheaper = 0  # images where the proposals cost more / fewer actions than the whole-image key
    per_step, done, model_from = [], [], None
    for step in steps:
        model = None
        if model_from is not None:
            model = load_classifier(ProjectStore.open(model_from["project"]), "cpu")
        new = [n for n in step["images"] if n not in done]
        acts = wrong = keys = stroke_count = no_proposals = 0
        for n in new:
            truth_t = truth_tags(truth, n, cfg)
            tagger = Tagger(store, n, cfg)
            patches_total += len(truth_t)
            one_by_one += len(truth_t)  # one key per patch
            commonest = int(np.bincount(truth_t, minlength=4)[1:].argmax() + 1)
            # the peer without proposals: the whole-image key with the image's commonest tag, then brush strokes
            plain = 1 + len(stroke_groups(np.full_like(truth_t, commonest), truth_t, tagger))
            no_proposals += plain
            # the panel's keys: P shows the proposals and A accepts them (2 keys); without a model, one key
            if model is not None and tagger.propose(model, "cpu") is not None:
                tagger.accept_proposals()
                first = 2
            else:  # no model yet: the whole-image key
                tagger.set_image(commonest)
                first = 1
            bad = int((tagger.tags != truth_t).sum())
            wrong += bad
            keys += first + bad  # the same flow fixing each wrong patch with the patch key
            strokes = fix_with_strokes(tagger, truth_t)
            acts += first + strokes
            stroke_count += strokes
            best_flow += min(first + strokes, plain)  # a pathologist who knows which flow is cheaper per image
            costlier += first == 2 and first + strokes > plain
            cheaper += first == 2 and first + strokes < plain
            assert np.array_equal(tagger.tags, truth_t) and (tagger.tags != UNLABELLED).all()
        proposal_flow += acts
        keys_flow += keys
        no_proposal_flow += no_proposals
        wrong_total += wrong
        per_step.append({"budget": step["budget"], "images": len(new), "actions": acts, "wrong_proposals": wrong,
                         "strokes": stroke_count, "actions_keys_only": keys, "actions_no_proposals": no_proposals,
                         "model_from": model_from and model_from["budget"]})
        done += new
        model_from = step
    vertices = mask_vertices(truth, done)
    key = "actions" + (f"-it{its}-es{es}" if (its, es) != (SCHEDULE["segmentation.iterations"], 0) else "")
    data[key] = {"images": len(done), "patches": patches_total, "one_by_one": one_by_one,
                 "with_proposals": proposal_flow, "ratio": one_by_one / max(1, proposal_flow),
                 "with_proposals_keys_only": keys_flow, "ratio_keys_only": one_by_one / max(1, keys_flow),
                 "no_proposals": no_proposal_flow, "ratio_no_proposals": one_by_one / max(1, no_proposal_flow),
                 "best_per_image": best_flow, "images_proposals_cost_more": int(costlier),
                 "images_proposals_save": int(cheaper), "wrong_proposals": wrong_total, "steps": per_step,
                 # every flow asks the pathologist to look at every patch of an image once: the keys differ
                 "patches_looked_at": patches_total, "mask_polygon_vertices": vertices,
                 "counting": "P then A = 2 keys, whole-image key = 1, one brush stroke = 1, patch key = 1"}
    save(data)
    print_table([(s["budget"], s["images"], s["model_from"] or "-", s["wrong_proposals"], s["strokes"],
                  s["actions"], s["actions_keys_only"], s["actions_no_proposals"]) for s in per_step],
                ("up to budget %", "images", "proposals from", "patches wrong", "fix strokes", "actions",
                 "actions (fix by key)", "actions (no proposals)"))
    print(f"\n{len(done)} images, {patches_total} patches: one by one {one_by_one} actions; with proposals and "
          f"brush strokes {proposal_flow} ({one_by_one / max(1, proposal_flow):.1f}x fewer); with proposals and "
          f"a key per wrong patch {keys_flow} ({one_by_one / max(1, keys_flow):.1f}x); without proposals (whole-image "
          f"key and strokes) {no_proposal_flow} ({one_by_one / max(1, no_proposal_flow):.1f}x); the cheaper of the two "
          f"per image {best_flow}; the proposals cost more than the whole-image key on {int(costlier)} images and "
          f"saved on {int(cheaper)}; every flow looks at all {patches_total} patches; drawing the masks: "
          f"{vertices} polygon vertices")


def fix_with_strokes(tagger: Tagger, truth_t: np.ndarray) -> int:
    """Fix the patches whose tag is wrong with the brush, as the panel's brush does (``patches_along`` then
    ``set_patches``): one stroke per 4-connected group of wrong patches that need the same tag. The stroke walks
    from cell centre to neighbouring cell centre through the group only (a depth-first walk, back-tracking over
    cells already painted), so it touches no other patch - checked. Returns the strokes."""
    rows, cols, _ = tagger._axes()
    groups = stroke_groups(tagger.tags, truth_t, tagger)
    for tag, cells in groups:
        path = np.array([(rows[r], cols[c]) for r, c in _walk(cells)])
        touched = tagger.patches_along(path)
        assert {int(k) for k in touched} == {r * len(cols) + c for r, c in cells}
        tagger.set_patches(touched, tag)
    return len(groups)


def stroke_groups(tags: np.ndarray, truth_t: np.ndarray, tagger: Tagger) -> list[tuple[int, set]]:
    """The 4-connected groups (tag, grid cells) of wrong patches that need the same tag: one brush stroke each."""
    from skimage.measure import label

    rows, cols, _ = tagger._axes()
    out = []
    for tag in np.unique(truth_t[tags != truth_t]):
        groups = label(((tags != truth_t) & (truth_t == tag)).reshape(len(rows), len(cols)), connectivity=1)
        out += [(int(tag), {tuple(c) for c in np.argwhere(groups == g)}) for g in range(1, groups.max() + 1)]
    return out


def _walk(cells: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """A walk through every cell of a 4-connected set, moving only between neighbours (one brush drag)."""
    start = min(cells)
    walk, seen, stack = [start], {start}, [start]
    while stack:
        r, c = stack[-1]
        nxt = next(((r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
                    if (r + dr, c + dc) in cells and (r + dr, c + dc) not in seen), None)
        if nxt is None:
            stack.pop()
            if stack:
                walk.append(stack[-1])  # back over a painted cell
        else:
            seen.add(nxt)
            stack.append(nxt)
            walk.append(nxt)
    return walk


def mask_vertices(truth: ProjectStore, names: list[str], tolerance: float = 1.0) -> int:
    """Vertices of the GlaS masks' outlines (simplified to ``tolerance`` px): the clicks of drawing them."""
    from skimage.measure import approximate_polygon, find_contours

    total = 0
    for n in names:
        for c in find_contours(np.pad(truth.mask(n), 1).astype(np.uint8), 0.5):
            total += len(approximate_polygon(c, tolerance)) - 1
    return total


# ---------------------------------------------------------------------------- table
def groups(data: dict) -> dict[tuple[str, int, int, int], list[dict]]:
    """The runs by (picker, budget, segmentation iterations, classifier.min_epoch_steps), seeds together."""
    out: dict[tuple[str, int, int, int], list[dict]] = {}
    for r in data["runs"].values():
        # a minimum an epoch's one pass already has (100 %: 430 steps) trains the same run as one-pass epochs
        same = r.get("classifier_passes", SCHEDULE["classifier.epochs"]) == SCHEDULE["classifier.epochs"]
        key = (r["picker"], r["budget"], r.get("iterations", SCHEDULE["segmentation.iterations"]),
               0 if same else r.get("min_epoch_steps", 0))
        out.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in sorted(out.items())}


def cmd_table(args) -> None:
    data = load()
    by = groups(data)
    mean = {k: float(np.mean([r["testA_mIoU"] for r in rs])) for k, rs in by.items()}
    rows = []
    for (picker, budget, its, es), rs in by.items():
        # an epoch of all 75 images is 430 steps: a minimum up to that leaves the 100 % run as it is
        full = mean.get(("suggested", 100, its, es)) or (mean.get(("suggested", 100, its, 0)) if es <= 430
                                                          else None)
        per_seed = " / ".join(f"{r['testA_mIoU']:.2f}" for r in rs)
        rows.append((picker, f"{budget} %", its, es or "-", ", ".join(str(r["seed"]) for r in rs), len(rs[0]["images"]),
                     f"{np.mean([r['val_pseudo_mIoU'] for r in rs]):.2f}",
                     f"{np.mean([r['val_mIoU'] for r in rs]):.2f}",
                     f"{mean[(picker, budget, its, es)]:.2f}" + (f" ({per_seed})" if len(rs) > 1 else ""),
                     f"{100 * mean[(picker, budget, its, es)] / full:.1f} %" if full else "-",
                     f"{np.mean([r['minutes'] for r in rs]):.1f}"))
    print_table(rows, ("picked by", "budget", "iterations", "epoch steps at least", "seeds", "images", "val pseudo",
                       "val mIoU", "testA mIoU (per seed)", "of 100 %", "min"))
    if data.get("rounds"):
        print_rounds(data)
    if "actions" in data:
        a = data["actions"]
        print(f"\nactions: one by one {a['one_by_one']}, with proposals {a['with_proposals']} ({a['ratio']:.1f}x); "
              f"mask vertices {a['mask_polygon_vertices']}")
    plot(data)


def print_rounds(data: dict) -> None:
    """The budget runs with one self-training round more, seeds together, against the 100 % runs' round."""
    by: dict[tuple, list[dict]] = {}
    for r in data["rounds"].values():
        by.setdefault((r["picker"], r["budget"], r["iterations"], r["untagged_images"]), []).append(r)
    full = {k[2]: float(np.mean([r["testA_mIoU"] for r in rs])) for k, rs in by.items()
            if k[:2] == ("suggested", 100) and not k[3]}
    rows = []
    for (picker, budget, its, untagged), rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        base = [data["runs"][r["base"]] for r in rs]
        m = float(np.mean([r["testA_mIoU"] for r in rs]))
        rows.append((picker, f"{budget} %", its, "joined" if untagged else "-", ", ".join(str(r["seed"]) for r in rs),
                     f"{np.mean([r['val_pseudo_mIoU'] for r in rs]):.2f}",
                     f"{np.mean([b['val_mIoU'] for b in base]):.2f} -> {np.mean([r['val_mIoU'] for r in rs]):.2f}",
                     f"{np.mean([b['testA_mIoU'] for b in base]):.2f} -> {m:.2f} ("
                     + " / ".join(f"{r['testA_mIoU']:.2f}" for r in rs) + ")",
                     f"{100 * m / full[its]:.1f} %" if its in full else "-",
                     f"{np.mean([r['minutes'] for r in rs]):.1f}"))
    print("\none self-training round more (round 0 -> round 1)")
    print_table(rows, ("picked by", "budget", "iterations", "untagged images", "seeds", "val pseudo (round 1)",
                       "val mIoU", "testA mIoU (per seed)", "of 100 % (round 1)", "min"))


def plot(data: dict) -> None:
    """Two panels: the sweep's schedule, and the longer one (1000 iterations, epochs of at least 430 steps)."""
    plt = pyplot()
    if plt is None:
        return
    by = groups(data)
    panels = (((SCHEDULE["segmentation.iterations"], 0), "300 iterations, epochs of one pass"),
              ((1000, 430), "1000 iterations, epochs of 430+ steps"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharey=True)
    for ax, ((its, es), title) in zip(axes, panels):
        for picker, style in (("suggested", "o-"), ("random", "s--"), ("image-tags", "^:"),
                              ("suggested+untagged", "D-."), ("random+untagged", "v-.")):
            keys = [k for k in by if k[0] == picker and k[2:] == (its, es)]
            if picker == "suggested" and es and ("suggested", 100, its, es) not in by \
                    and ("suggested", 100, its, 0) in by:
                keys.append(("suggested", 100, its, 0))  # 100 %: an epoch of all images already has 430 steps
            if not keys:
                continue
            keys.sort(key=lambda k: k[1])
            budgets = [k[1] for k in keys]
            for field, alpha, what in (("testA_mIoU", 1.0, "testA"), ("val_pseudo_mIoU", 0.45, "val. pseudo-masks")):
                values = [[r[field] for r in by[k]] for k in keys]  # seeds: the mean, bars from lowest to highest
                m = np.array([np.mean(v) for v in values])
                err = np.array([[m[i] - min(v), max(v) - m[i]] for i, v in enumerate(values)]).T
                ax.errorbar(budgets, m, yerr=err, fmt=style, alpha=alpha, capsize=3, label=f"{picker}: {what}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training images with patch tags (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("mIoU (mean over seeds, bars: range)")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "weak_labels.png"
    fig.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build").set_defaults(func=cmd_build)
    b = sub.add_parser("budget")
    b.add_argument("--picker", choices=("suggested", "random", "image-tags"), default="suggested")
    b.add_argument("--budgets", type=int, nargs="+", default=[10, 25, 50, 100])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--redo", action="store_true")
    b.add_argument("--untagged-images", action="store_true",
                   help="train the picker's images with patches.untagged_images (the others get pseudo-masks too)")
    b.add_argument("--iterations", type=int,
                   help=f"segmentation iterations (default: the sweep's {SCHEDULE['segmentation.iterations']}); "
                        "another number trains the plain run's picks and is kept as its own row")
    b.add_argument("--epoch-steps", type=int, default=0,
                   help="classifier.min_epoch_steps (default 0: an epoch is one pass); the plain run's picks, a "
                        "row of its own")
    b.add_argument("--preset-schedule", action="store_true",
                   help="train as `oeem run --preset cpu` does (its classifier, 2000-iteration segmentation and "
                        "two self-training rounds) instead of the sweep's schedule; the plain run's picks, a row of "
                        "its own")
    b.set_defaults(func=cmd_budget)
    r = sub.add_parser("round")
    r.add_argument("run", help="a finished budget run's key, e.g. suggested-25-s0-it1000-es430")
    r.add_argument("--untagged-images", action="store_true",
                   help="selftrain.untagged_images: the untagged training images join the round")
    r.add_argument("--redo", action="store_true")
    r.set_defaults(func=cmd_round)
    a = sub.add_parser("actions")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--iterations", type=int, help="replay the proposals of the runs with these iterations")
    a.add_argument("--epoch-steps", type=int, default=0, help="... and this classifier.min_epoch_steps")
    a.set_defaults(func=cmd_actions)
    sub.add_parser("table").set_defaults(func=cmd_table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
