#!/usr/bin/env bash
# The main job: builds saegap, runs the demo sweep (jobs/demo.job: the embedded GPT-2, its 9
# SAEs, all 11 interventions at every position) on 2 MPI ranks into out/demo/result.h5, then
# the post's single-position sweep (jobs/demo-position.job: sae and eps_random at position 32
# only, KL there and at the 15 positions after, 16 eps_random draws per token for the
# z-scores) into out/demo/position.h5, checks both files, and writes one report from both
# (out/demo/report/report.html: every part of the post).
#   bash jobs/run-demo.sh [saegap run options]          the GPT-2 demo (jobs/demo)
#   bash jobs/run-demo.sh pythia [saegap run options]   the Pythia-architecture demo (jobs/demo-pythia:
#                                                       one SAELens, one sparsify, one Gemma Scope SAE)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=demo
if [ "${1:-}" = pythia ]; then NAME=demo-pythia; shift; fi
JOB=jobs/$NAME.job OUT=out/$NAME
POSJOB=jobs/$NAME-position.job          # the single-position sweep, where the demo has one
JOBS=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$JOBS" > /dev/null
mkdir -p "$OUT"
rm -f "$OUT/result.h5" "$OUT/position.h5"   # saegap never overwrites a result; the demo starts afresh
RANKS=2
[ "$JOBS" -lt 2 ] && RANKS=1
build/saegap plan "$JOB" --ranks "$RANKS" --threads-per-rank 1 "$@" | sed 's/^/  /'
mpirun --oversubscribe --allow-run-as-root -np "$RANKS" build/saegap run "$JOB" \
  --out "$OUT/result.h5" --threads-per-rank 1 "$@"
build/saegap verify "$OUT/result.h5"
RESULTS=("$OUT/result.h5")
if [ -f "$POSJOB" ]; then
  mpirun --oversubscribe --allow-run-as-root -np "$RANKS" build/saegap run "$POSJOB" \
    --out "$OUT/position.h5" --threads-per-rank 1 "$@"
  build/saegap verify "$OUT/position.h5"
  RESULTS+=("$OUT/position.h5")
fi
if [ -f analysis/report.py ]; then
  # the report decodes tokens with the tokenizer in the model folder the result records;
  # each part comes from the first file that holds its data
  /usr/bin/python3 analysis/report.py "${RESULTS[@]}" -o "$OUT/report"
  echo "results: ${RESULTS[*]}; report: $OUT/report/report.html (and report.md, headline.csv, one PNG per figure)"
fi
