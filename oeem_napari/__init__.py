"""napari plugin for OEEM: a thin layer of widgets, layers and background workers over ``pipeline``."""
from pipeline import __version__

__all__ = ["__version__"]
