#!/usr/bin/env bash
# OEEM against plain CE with the current cpu preset, as the paper compares them: stage 1 once (and the gland bias
# of its pseudo-masks, re-derived from the stored CAMs), then the segmentation network trained from scratch on the
# stage-1 pseudo-masks (2000 iterations, the preset's first training), each loss with the same seeds so the
# difference is paired. WEIGHTINGS=1 adds the paper's other weightings (ohem, c_max, c_diff, lc_mix), one seed
# each. Chosen on validation (10 training images held out), reported on testA. Resumable: a finished run is only
# scored again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OEEM_ABLATION_PROJECT=${OEEM_ABLATION_PROJECT:-benchmarks/results/losses.oeem.zarr}
export OEEM_ABLATION_JSON=${OEEM_ABLATION_JSON:-benchmarks/results/losses.json}
A="$PY benchmarks/ablation.py"
if [ "${WEIGHTINGS:-0}" = 1 ]; then
    for loss in ohem c_max c_diff lc_mix; do
        $A stage2 "$loss" --set segmentation.loss="$loss" --seed 0
    done
else
    [ -e "$OEEM_ABLATION_PROJECT" ] || $A stage1
    $A bias
    for seed in 0 1 2; do
        $A stage2 ce --set segmentation.loss=ce --seed "$seed"
        $A stage2 l_norm --set segmentation.loss=l_norm --seed "$seed"
    done
fi
$A report --paired ce l_norm
