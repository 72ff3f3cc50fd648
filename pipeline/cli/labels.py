"""``oeem labels``: a pathologist's patch labels in and out of a project, as CSV or QuPath GeoJSON."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.common import config_for, open_project
from pipeline.errors import OEEMError


def cmd_labels_import(args) -> None:
    from pipeline.io.patch_labels import check_rows, read_label_file, tags_on_grid
    from pipeline.stages.patches import patch_grid

    store = open_project(args.project)
    cfg = config_for(args, store)
    size, stride = cfg.patches.size, cfg.patches.stride
    by_image = check_rows(read_label_file(args.file), {n: store.shape(n) for n in store.names()})
    planned = {}
    for name, rows in by_image.items():  # every image's new tags first: a bad file changes nothing
        tags = tags_on_grid(rows, patch_grid(store.shape(name), size, stride), size)
        if not tags.any():
            raise OEEMError(f"{rows[0].where}: none of the {len(rows)} square(s) of image {name!r} covers more than "
                            f"half of a {size} px patch of the project's grid; give squares of about {size} px")
        current = store.patch_tags(name)
        if current is not None and current[1:] == (size, stride) and not args.replace:
            tags = tags.copy()
            keep = tags == 0
            tags[keep] = current[0][keep]  # patches the file does not label keep their tags
        planned[name] = tags
    for name, tags in planned.items():
        store.save_patch_tags(name, tags, size, stride)
    total = sum(int((t > 0).sum()) for t in planned.values())
    print(f"imported tags for {len(planned)} image(s): {total} labelled patches; `oeem labels undo "
          f"{store.path} IMAGE` takes an image's import back")


def cmd_labels_export(args) -> None:
    from pipeline.io.patch_labels import grid_rows, image_key, write_label_csv, write_label_geojson
    from pipeline.stages.patches import patch_grid

    store = open_project(args.project)
    rows = []
    for name in store.names():
        found = store.patch_tags(name)
        if found is not None:
            tags, size, stride = found
            source = Path(str(store.group(name).attrs.get("source", name))).name  # the file the lab knows
            rows += grid_rows(source if image_key(source) == name else name,
                              patch_grid(store.shape(name), size, stride), size, tags)
    if not rows:
        raise OEEMError(f"{store.path}: no patch tags yet; tag patches in napari's Weak labels panel or "
                        f"`oeem labels import {store.path} FILE`")
    fmt = args.format or ("geojson" if Path(args.file).suffix.lower() in (".geojson", ".json") else "csv")
    count = (write_label_geojson if fmt == "geojson" else write_label_csv)(args.file, rows)
    print(f"wrote {count} labelled patches of {len({r.image for r in rows})} image(s) to {args.file} ({fmt})")


def cmd_labels_undo(args) -> None:
    store = open_project(args.project)
    store.shape(args.image)  # a one-line error for an unknown image
    if store.undo_patch_tags(args.image):
        print(f"{args.image}: last change of the patch tags undone")
    else:
        print(f"{args.image}: no patch tags to undo")


def register(add) -> None:
    import argparse

    group = add("labels", None, "a pathologist's patch labels: import, export (CSV or QuPath GeoJSON), undo",
                project=False)
    actions = group.add_subparsers(dest="labels_command", required=True, metavar="ACTION")

    def action(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("project", help="project store (a .zarr folder made by `oeem init`)")
        p.set_defaults(func=func)
        return p

    p = action("import", cmd_labels_import, "import patch labels, all or nothing: CSV with the header "
               "image,x,y,size,gland,non_gland, or QuPath GeoJSON squares classified Gland, Non-gland or "
               "Gland+Non-gland")
    p.add_argument("file", help="a .csv or .geojson file of labelled patches")
    p.add_argument("--replace", action="store_true",
                   help="an imported image's tags become the file's alone (default: patches the file does not "
                        "label keep their tags)")
    p = action("export", cmd_labels_export, "write the project's patch tags as CSV or QuPath GeoJSON")
    p.add_argument("file", help="the .csv or .geojson file to write")
    p.add_argument("--format", choices=("csv", "geojson"), default=None,
                   help="file format (default: from the file's suffix, else csv)")
    p = action("undo", cmd_labels_undo, "undo the last change of an image's patch tags")
    p.add_argument("image", help="the image's name in the project")
    register_suggest(add)
    register_preview(add)


def cmd_suggest(args) -> None:
    from pipeline.review.suggest import suggest

    store = open_project(args.project)
    cfg = config_for(args, store)
    picks = suggest(store, cfg.patches, args.top, args.device)
    if not picks:
        print("every training image is labelled (tags or a gland mask): nothing to suggest")
        return
    print(f"{'rank':>4}  {'image':<24} {'score':>5}  {'labelled':>9}  patches to label (x,y)  [{picks[0].reason}]")
    for k, s in enumerate(picks, start=1):
        where = " ".join(f"{x},{y}" for y, x in s.patches)
        print(f"{k:>4}  {s.image:<24} {s.score:5.2f}  {s.labelled:>4}/{s.total:<4}  {where}")


def register_suggest(add) -> None:
    from pipeline.cli.common import add_common

    p = add("suggest", cmd_suggest, "the training images (and patches in them) to label next: where the classifier "
            "is least sure or disagrees with the segmentation; before any model, spread over the images")
    p.add_argument("--top", type=int, default=10, help="how many images to list (default: 10)")
    add_common(p, "suggest")


def cmd_preview(args) -> None:
    from pipeline.io.export import write_mask_file
    from pipeline.review.preview import best_masks

    store = open_project(args.project)
    cfg = config_for(args, store)
    names = args.images or store.names()
    unknown = sorted(set(names) - set(store.names()))
    if unknown:
        raise OEEMError(f"{store.path}: no image named {', '.join(unknown)}; `oeem info {store.path}` lists them")
    out = Path(args.out) if args.out else store.path / "preview"
    out.mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(best_masks(store, cfg, names, args.device), start=1):
        write_mask_file(out / f"{p.image}.png", p.mask, p.image)
        print(f"[{k}/{len(names)}] {p.image}: {100 * p.mask.mean():.0f} % gland, {p.seconds:.2f} s ({p.source})")
    print(f"wrote {len(names)} preview mask(s) (PNG, 0/255) to {out}")


def register_preview(add) -> None:
    from pipeline.cli.common import add_common

    p = add("preview", cmd_preview, "a gland mask for every image now, from the best model the project has: the "
            "segmentation network, else stage 1's pseudo-masks, else a pixel classifier learned in seconds from the "
            "tags (no training run needed)")
    p.add_argument("--images", nargs="+", default=None, metavar="NAME",
                   help="only these images (default: every image of the project)")
    p.add_argument("--out", default=None, help="folder for NAME.png (default: PROJECT/preview)")
    add_common(p, "preview")
