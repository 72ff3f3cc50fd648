"""The ``oeem`` command: every stage of the method from a terminal, on a project store.

Errors a user can fix are printed as one line (exit code 2); Ctrl-C stops cleanly and keeps the last checkpoint.

``train-seg`` and ``train-cls`` also run data-parallel under torchrun, e.g.
``torchrun --standalone --nproc-per-node 2 -m pipeline train-seg PROJECT``: rank 0 takes the writer lock, writes
the project and prints; the other ranks only read it and train.

One module per command group (``stages``, ``project``, ``review``, ``slides``); each registers its commands;
``common`` holds what they share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.cli import labels, models, project, review, slides, stages
from pipeline.cli.common import is_main
from pipeline.errors import OEEMError

# commands that write into the project: one at a time per project (the writer lock)
WRITERS = {"patches", "train-cls", "cams", "train-seg", "selftrain", "predict", "instances", "run", "import-geojson",
           "undo", "doctor", "regions", "add-regions", "labels", "update"}
# commands that may run as several processes under torchrun (data-parallel training)
DISTRIBUTED = {"train-seg", "train-cls"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="oeem", description="Weakly-supervised gland segmentation with OEEM "
                                 "(MICCAI 2022). Stages: init -> patches -> train-cls -> cams -> train-seg -> "
                                 "predict [-> selftrain -> train-seg -> predict] -> evaluate; `run` does them "
                                 "all; `export` writes masks out.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_, project=True):
        p = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"))
        if project:
            p.add_argument("project", help="project store (a .zarr folder made by `oeem init`)")
        p.set_defaults(func=func)
        return p

    for group in (project, labels, stages, models, review, slides):
        group.register(add)
    return ap


def main(argv: list[str] | None = None) -> int:
    from pipeline.stages.distributed import env_world_size, launched

    args = build_parser().parse_args(argv)
    # under torchrun every rank runs this; rank 0 alone locks, writes and speaks (the others fail with it: every
    # rank checks the same project and settings, and torchrun stops the others when one exits with an error)
    main_rank = is_main()
    try:
        if launched() and args.command not in DISTRIBUTED:
            raise OEEMError(f"`oeem {args.command}` runs as one process; only {' and '.join(sorted(DISTRIBUTED))} "
                            f"run under torchrun (here with {env_world_size()} processes)")
        if args.command in WRITERS and Path(args.project).is_dir() and main_rank:
            from pipeline.store.lock import project_writer

            with project_writer(args.project, f"oeem {args.command}"):
                args.func(args)
        else:
            args.func(args)
    except OEEMError as exc:
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if main_rank:
            print("\ninterrupted: the last checkpoint is kept; run the same command again to resume",
                  file=sys.stderr)
        return 130
    finally:
        if "pipeline.stages.distributed" in sys.modules:
            from pipeline.stages.distributed import shutdown

            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
