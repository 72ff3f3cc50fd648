"""Whole slides: reading them, predicting them block by block (here or on a dask cluster), and weak labels
drawn as regions on them."""
