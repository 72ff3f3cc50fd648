#!/usr/bin/env bash
# Every benchmark in order (about 6 h on 2 cores), one at a time (they share 2 cores; running two at once distorts every timing).
# Logs and JSON go to benchmarks/results/. Usage: OEEM_GLAS_ROOT=../shared/data/glas benchmarks/run_all.sh [--skip-stage1]
set -euo pipefail
cd "$(dirname "$0")"
: "${OEEM_GLAS_ROOT:?set OEEM_GLAS_ROOT to the GlaS folder (train/ and testA/)}"
PY="${PYTHON:-../.venv/bin/python}"
mkdir -p results
[ "${1:-}" = "--skip-stage1" ] || "$PY" stage1_glas.py | tee results/stage1_glas.log
"$PY" stage2_speed.py --images 3 --iterations 10 | tee results/stage2_speed.log
xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" gui_latency.py --seconds 30 | tee results/gui_latency.log
"$PY" glas_tables.py | tee results/glas_tables_all6.log                          # Tables 1-3: six losses + full
"$PY" annotation_gain.py --top-k 20 | tee results/annotation_gain.log              # reuses the l_norm run
"$PY" annotation_gain.py --rank-only | tee results/annotation_ranking.log
"$PY" glas_tables.py --losses l_norm --no-full --warmup-ce 500 | tee results/glas_tables_w500.log
"$PY" glas_tables.py --losses l_norm --no-full --temperature 3 | tee results/glas_tables_t3.log
"$PY" glas_tables.py --losses l_norm --no-full --seeds 2 --json glas_tables_seeds.json | tee results/glas_tables_seeds.log
