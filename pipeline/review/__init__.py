"""The label review: where the pseudo-mask is probably wrong (evidence -> calibration -> ranked regions), and the
pathologist's accept / skip / undo on those regions (state)."""
