"""OEEM weakly-supervised gland segmentation: the method, with no napari or Qt dependency.

Stages: ``data`` -> ``patches`` -> ``models`` -> ``classify`` -> ``cams`` -> ``segment`` ->
``infer`` -> ``metrics``; everything is kept in a project ``store``.
"""
from pipeline.errors import OEEMError

__version__ = "0.1.0"
__all__ = ["OEEMError", "__version__"]
