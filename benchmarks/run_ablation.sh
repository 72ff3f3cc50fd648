#!/usr/bin/env bash
# Issue 10's ablation, in the order its decisions need (each choice made on the validation split):
# stage 1 once; CE and OEEM on the stage-1 pseudo-masks; a self-training round from the better of the two; both
# losses again on the refined pseudo-masks; full supervision; seeds; each lever switched off.
# Uncontended on 2 cores: about 2 hours. Resumable: finished runs are only scored again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
A="$PY benchmarks/ablation.py"
[ "${SKIP_STAGE1:-0}" = 1 ] || { $A stage1; $A bias; }
$A stage2 ce --set segmentation.loss=ce
$A stage2 l_norm --set segmentation.loss=l_norm
$A bias
$A refine abl-ce-r0-s0 abl-l_norm-r0-s0
$A stage2 ce --set segmentation.loss=ce
$A stage2 l_norm --set segmentation.loss=l_norm
$A stage2 full --set segmentation.loss=ce segmentation.label_source=mask
for seed in 1 2; do
    $A stage2 ce --set segmentation.loss=ce --seed $seed
    $A stage2 l_norm --set segmentation.loss=l_norm --seed $seed
done
$A stage2 ce-random-init --set segmentation.loss=ce segmentation.init_from_classifier=false
$A stage2 ce-no-stain --set segmentation.loss=ce segmentation.stain_jitter=0
