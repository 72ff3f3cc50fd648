"""The project: one zarr store per project (images, masks, CAMs, pseudo-masks, corrections, runs), its writer
lock, its repair, and the configuration it runs with."""
from pipeline.store.project_store import ProjectStore, atomic_write_bytes, atomic_write_json

__all__ = ["ProjectStore", "atomic_write_bytes", "atomic_write_json"]
