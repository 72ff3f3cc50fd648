"""``python -m pipeline``: the ``oeem`` command, also as a module, so that
``torchrun --standalone --nproc-per-node 2 -m pipeline train-seg PROJECT`` trains data-parallel."""
import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
