"""OEEM weakly-supervised gland segmentation: the method, with no napari or Qt dependency.

Stages: ``data`` -> ``patches`` -> ``models`` -> ``classify`` -> ``cams`` -> ``segment`` ->
``infer`` -> ``metrics``; everything is kept in a project ``store``.
"""
import os
import sys

from pipeline.errors import OEEMError

if sys.platform == "darwin":  # an op Metal lacks runs on the CPU instead of failing; read when torch loads
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

__version__ = "0.1.0"
__all__ = ["OEEMError", "__version__"]
