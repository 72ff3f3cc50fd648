"""The preview (``pipeline.review.preview``): how good it is with few tags, and how fast a tag shows on screen.

Quality: GlaS training images tagged by the 5 % rule on their masks (10 / 25 / 100 % of them, picked at random per
seed), the masks of the training images removed; the preview of the 10 validation images and the 60 testA images
against their masks. The settings are chosen on validation (``--sweep`` lists the candidates); testA is reported for
the shipped settings only. Latency: in the same project with 25 % tagged, one image is tagged patch by patch with
the Weak labels panel's own action (``Tagger.set_at``, saved to disk as a key press saves it); after each key the
preview of that image is made again, timed from the key to the finished probability map (p50 / p95). The first
refresh of an image (its features not yet cached) is reported apart. No torch: the same in fp32 and bf16.

    python benchmarks/preview.py                 # quality (3 seeds) + latency, writes results/preview.json
    python benchmarks/preview.py --sweep         # + the candidate settings on validation
    python benchmarks/preview.py --suggest       # only: does `oeem suggest` with the preview pick better images?

``--suggest``: before the classifier exists, `oeem suggest` asks the preview where it is least sure. Measured on
what it can change at that moment - the preview itself: from 4 random tagged images (per seed), 4 more at a time
are picked by `oeem suggest` with the preview, by its older order without it (spread over the images), or at
random, tagged, and the preview of the validation images scored at 8 (10 %) and 19 (25 %) images. Its effect on
the trained model would need a training run per arm and seed; not measured here.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import glas_root, machine, print_table, write_json
from weak_labels import truth_tags  # the tags a careful pathologist gives: the 5 % rule on the mask

from pipeline.config import PatchConfig, PreviewConfig
from pipeline.metrics import score
from pipeline.review.preview import ProjectPreview
from pipeline.review.tagging import Tagger
from pipeline.store import ProjectStore

WORK = Path(__file__).resolve().parents[1] / "runs" / "bench"
TRUTH, BASE = WORK / "glas-truth.oeem.zarr", WORK / "preview-base.oeem.zarr"
FRACTIONS = (10, 25, 100)
CANDIDATES = {  # settings compared on validation (--sweep); the first is what ships (PreviewConfig's defaults)
    "shipped": {},
    "scale 0.25": {"scale": 0.25},
    "50 trees, 20k px": {"trees": 50, "max_samples": 20000},
    "stain channels": {"stains": True},
    "no texture": {"texture": False},
    "sigma up to 32": {"sigma_max": 32.0},
    "unlimited depth": {"max_depth": 10_000},
}


def build() -> ProjectStore:
    if not TRUTH.exists():
        from pipeline.store.project import create_project

        create_project(glas_root(), TRUTH, val_images=10, seed=0)
    if BASE.exists():
        shutil.rmtree(BASE)
    shutil.copytree(TRUTH, BASE)
    base = ProjectStore.open(BASE)
    for n in base.names("train"):
        base.delete(n, "mask")
    return base


def tag(base: ProjectStore, truth: ProjectStore, names: list[str], cfg: PatchConfig) -> None:
    shutil.rmtree(BASE / "tags", ignore_errors=True)
    for n in names:
        base.save_patch_tags(n, truth_tags(truth, n, cfg), cfg.size, cfg.stride)


def picks(names: list[str], percent: int, seed: int) -> list[str]:
    k = max(1, round(len(names) * percent / 100))
    return sorted(np.random.default_rng(seed).permutation(names)[:k].tolist())


def quality(preview: ProjectPreview, truth: ProjectStore, split: str) -> float:
    names = truth.names(split)
    preds = [preview.predict(n).mask for n in names]
    return round(score(preds, [truth.mask(n) for n in names])["mIoU"], 2)


def latency(base: ProjectStore, truth: ProjectStore, cfg: PatchConfig, keys: int) -> dict:
    """Tag untagged training images patch by patch; the preview of the image after every key."""
    preview = ProjectPreview(base, cfg)
    preview.fit()
    untagged = [n for n in base.names("train") if base.patch_tags(n) is None][:3]
    first, after_key = [], []
    for name in untagged:
        tagger, truth_t = Tagger(base, name, cfg), truth_tags(truth, name, cfg)
        t = time.perf_counter()
        preview.predict(name)
        first.append(time.perf_counter() - t)
        for k in range(min(keys, len(truth_t))):
            y, x = tagger.centres[k]
            t = time.perf_counter()
            tagger.set_at(y, x, int(truth_t[k]))
            preview.predict(name)
            after_key.append(time.perf_counter() - t)
    return {"first_refresh_s": [round(v, 3) for v in first],
            "key_to_preview_p50_s": round(float(np.percentile(after_key, 50)), 3),
            "key_to_preview_p95_s": round(float(np.percentile(after_key, 95)), 3),
            "key_to_preview_max_s": round(float(np.max(after_key)), 3), "keys": len(after_key)}


def suggest_arms(base: ProjectStore, truth: ProjectStore, cfg: PatchConfig, seeds: int) -> list[dict]:
    from pipeline.review.suggest import suggest

    train, rows = base.names("train"), []
    for seed in range(seeds):
        start = picks(train, 5, seed)[:4]
        for arm in ("preview", "spread", "random"):
            tag(base, truth, start, cfg)
            tagged, rng = list(start), np.random.default_rng(1000 + seed)
            preview = ProjectPreview(base, cfg)
            while len(tagged) < 19:
                k = min(4, 19 - len(tagged), 8 - len(tagged) if len(tagged) < 8 else 4)
                if arm == "random":
                    new = rng.choice(sorted(set(train) - set(tagged)), k, replace=False).tolist()
                else:
                    new = [s.image for s in suggest(base, cfg, k, "cpu", preview if arm == "preview" else None)]
                for n in new:
                    base.save_patch_tags(n, truth_tags(truth, n, cfg), cfg.size, cfg.stride)
                tagged += new
                if len(tagged) in (8, 19):
                    row = {"arm": arm, "seed": seed, "images": len(tagged),
                           "val_mIoU": quality(ProjectPreview(base, cfg), truth, "val")}
                    rows.append(row)
                    print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", action="store_true", help="also the candidate settings, on validation")
    ap.add_argument("--keys", type=int, default=40, help="key presses timed per image (3 images)")
    ap.add_argument("--suggest", action="store_true", help="only the picks of `oeem suggest` with the preview")
    args = ap.parse_args()
    cfg = PatchConfig()
    base, truth = build(), ProjectStore.open(TRUTH)
    if args.suggest:
        rows = suggest_arms(base, truth, cfg, args.seeds)
        table = []
        for arm in ("preview", "spread", "random"):
            for images in (8, 19):
                vals = [r["val_mIoU"] for r in rows if r["arm"] == arm and r["images"] == images]
                table.append((arm, images, round(float(np.mean(vals)), 2), " / ".join(f"{v:.1f}" for v in vals)))
        print_table(table, ("picked by", "images tagged", "val mIoU of the preview (mean)", "per seed"))
        write_json("preview_suggest.json", {"rows": rows, "machine": machine(),
                                            "precision": "none (no torch: scikit-learn on the CPU)"})
        return
    train = base.names("train")
    rows, table = [], []
    candidates = CANDIDATES if args.sweep else {"shipped": {}}
    for percent in FRACTIONS:
        for seed in range(args.seeds if percent < 100 else 1):
            tag(base, truth, picks(train, percent, seed), cfg)
            for label, change in candidates.items():
                preview = ProjectPreview(base, cfg, dataclasses.replace(PreviewConfig(), **change))
                t = time.perf_counter()
                preview.fit()
                first_fit = time.perf_counter() - t
                row = {"percent": percent, "seed": seed, "settings": label, "change": change,
                       "images": preview.images, "pixels": preview.pixels, "first_fit_s": round(first_fit, 2),
                       "val_mIoU": quality(preview, truth, "val")}
                if label == "shipped":
                    row["testA_mIoU"] = quality(preview, truth, "test")
                rows.append(row)
                table.append((percent, seed, label, row["images"], row["first_fit_s"], row["val_mIoU"],
                              row.get("testA_mIoU", "-")))
                print(*table[-1], flush=True)
    print_table(table, ("% tagged", "seed", "settings", "images", "first fit s", "val mIoU", "testA mIoU"))
    tag(base, truth, picks(train, 25, 0), cfg)
    lat = latency(base, truth, cfg, args.keys)
    print(f"\nlatency, 25 % tagged: key -> preview p50 {lat['key_to_preview_p50_s']} s, "
          f"p95 {lat['key_to_preview_p95_s']} s ({lat['keys']} keys); first refresh of an image "
          f"{lat['first_refresh_s']} s")
    summary = {}
    for percent in FRACTIONS:
        mine = [r for r in rows if r["percent"] == percent and r["settings"] == "shipped"]
        summary[str(percent)] = {k: round(float(np.mean([r[k] for r in mine])), 2) for k in ("val_mIoU", "testA_mIoU")}
    write_json("preview.json", {"rows": rows, "shipped": summary, "latency": lat, "settings":
                                dataclasses.asdict(PreviewConfig()), "machine": machine(),
                                "precision": "none (no torch: scikit-learn on the CPU)"})


if __name__ == "__main__":
    main()
