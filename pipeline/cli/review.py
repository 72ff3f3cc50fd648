"""``oeem regions``: the label review from a terminal.
"""
from __future__ import annotations

import sys

from pipeline.cli.common import add_common, add_redo, config_for, drive, open_project

# commands that write into the project: one at a time per project (the writer lock)


def cmd_regions(args) -> None:
    from pipeline.review.regions import label_fingerprint, load_ranking, rank_label_errors, write_region_files
    from pipeline.review.state import ordered_regions, rerank_image, review_state

    store = open_project(args.project)
    ranking = load_ranking(store)
    stale = [n for n, fp in (ranking or {}).get("labels", {}).items() if fp != label_fingerprint(store, n)]
    new_round = any(fp.split(":")[0] != label_fingerprint(store, n).split(":")[0] for n, fp in
                    (ranking or {}).get("labels", {}).items())
    if new_round:
        print("note: the pseudo-masks changed since the ranking (self-training or new CAMs): ranking again",
              file=sys.stderr)
    elif stale and not args.redo:
        cfg = config_for(args, store)
        for n in stale:
            rerank_image(store, n, cfg)
        print(f"note: re-ranked {len(stale)} image(s) whose corrections changed", file=sys.stderr)
    if args.redo or new_round or ranking is None or ranking.get("split") != args.split:
        cfg = config_for(args, store)
        ranking = drive(rank_label_errors(store, cfg, args.split), "regions")
        print(f"ranked {len(ranking['regions'])} regions in {ranking['seconds']:.0f} s "
              f"(calibration: {ranking['calibration']['source']})", file=sys.stderr)
        if ranking.get("left_out"):
            print(f"note: {len(ranking['left_out'])} untagged image(s) labelled by the model are not ranked: they have "
                  "no CAM or patch labels to weigh their labels against (tag them to have them ranked)",
                  file=sys.stderr)
    regions = ordered_regions(store, args.top)  # as the review shows them (re-ordered when it learns from it)
    state = review_state(store)
    if state["notice"]:
        print(f"note: {state['notice']}", file=sys.stderr)
    print(f"{'rank':>4}  {'image':<14} {'box y0,x0,y1,x1':<22} {'area':>7} {'exp. wrong':>10}  suggested  review")
    for k, r in enumerate(regions, start=1):
        print(f"{k:>4}  {r.image:<14} {','.join(map(str, r.bbox)):<22} {r.area:>7} {r.expected_wrong:>10.0f}  "
              f"{'gland' if r.suggested_label else 'non-gland':<9}  {state['state'].get(r.key, '-')}")
    print(f"{state['reviewed']} of {state['total']} regions reviewed ({state['accepted']} accepted, "
          f"{state['skipped']} skipped)")
    if args.out:
        written = write_region_files(store, regions, args.out)
        print(f"wrote {written} region masks and regions.json to {args.out}")


def register(add) -> None:
    p = add("regions", cmd_regions, "rank the regions whose pseudo-label is probably wrong (out-of-fold evidence, "
            "calibrated on the validation split) and print them, best first")
    add_common(p, "regions")
    p.add_argument("--top", type=int, default=20, help="how many regions to list (default: 20)")
    p.add_argument("--split", default="train", choices=("train", "val"), help="the images to rank (default: train)")
    p.add_argument("--out", default=None,
                   help="write NAME_regions.png (0/255) per image and regions.json here (default: print only)")
    add_redo(p, "rank again from scratch (e.g. after new pseudo-masks)", "--refresh")
