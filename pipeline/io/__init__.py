"""Files in and out: GlaS-style folders, exported masks (PNG, TIFF, OME-Zarr), QuPath GeoJSON, synthetic data."""
