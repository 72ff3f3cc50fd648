#!/usr/bin/env bash
# Every benchmark behind the README's figures, one at a time (they share 2 cores; two at once distort every
# timing). About 9 h on 2 cores. Logs and JSON go to benchmarks/results/.
# Usage: OEEM_GLAS_ROOT=../shared/data/glas benchmarks/run_all.sh [--current]   (--current: skip the earlier figures)
set -euo pipefail
cd "$(dirname "$0")"
: "${OEEM_GLAS_ROOT:?set OEEM_GLAS_ROOT to the GlaS folder (train/ and testA/)}"
PY="${PYTHON:-$(cd .. && pwd)/.venv/bin/python}"
mkdir -p results
# the cpu preset as a user runs it, then what each of its settings buys (validation split), then precision
"$PY" end_to_end.py --preset cpu --fresh | tee results/end_to_end.log
PY="$PY" ./run_ablation.sh | tee results/ablation.log
"$PY" ablation.py scales abl-ce-plain-bf16-r1-s0 1 0.75,1,1.25 1,1.25,1.5 | tee results/scales.log
"$PY" precision.py --repeats 7 | tee results/precision.log
# label review: ranking precision, then the annotation gain against the ablation's CE baselines
"$PY" annotation_gain.py rank | tee results/annotation_rank.log
"$PY" annotation_gain.py gain --budgets 3 --seeds 0 1 2 --baseline "abl-ce-2k-r1-s{seed}" | tee results/annotation_gain.log
"$PY" annotation_gain.py plot
# robustness and whole slides (no GlaS needed for these two)
"$PY" faults.py --kills 200 | tee results/faults.log
"$PY" slide.py | tee results/slide.log
xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" gui_latency.py --seconds 30 | tee results/gui_latency.log
[ "${1:-}" = "--current" ] && exit 0
# the earlier figures (README: "Earlier figures"), with the settings of their time
"$PY" stage1_glas.py | tee results/stage1_glas.log
"$PY" stage2_speed.py --images 3 --iterations 10 | tee results/stage2_speed.log
"$PY" glas_tables.py | tee results/glas_tables_all6.log
"$PY" glas_tables.py --losses l_norm --no-full --warmup-ce 500 | tee results/glas_tables_w500.log
"$PY" glas_tables.py --losses l_norm --no-full --temperature 3 | tee results/glas_tables_t3.log
"$PY" glas_tables.py --losses l_norm --no-full --seeds 2 --json glas_tables_seeds.json | tee results/glas_tables_seeds.log
