"""The OEEM dock's group boxes, one class each, around one shared ``DockState`` (``state.py``).

project, weak_labels (patch tags), settings, run, corrections, review (label review), export, model (a model
file), slides: each builds its own widgets, acts through the state and redraws itself from the state's signals; no
panel calls another.
``oeem_napari._widget`` composes them into the dock."""
