#!/usr/bin/env bash
# The main job: builds saegap, runs the demo sweep (jobs/demo.job: the embedded model, its 9
# SAEs, all 11 interventions) on 2 MPI ranks into out/demo/result.h5, checks the file, and
# writes the report (out/demo/report/report.html). Usage: bash jobs/run-demo.sh [saegap run options]
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$JOBS" > /dev/null
mkdir -p out/demo
rm -f out/demo/result.h5            # saegap never overwrites a result; the demo starts afresh
RANKS=2
[ "$JOBS" -lt 2 ] && RANKS=1
build/saegap plan jobs/demo.job --ranks "$RANKS" --threads-per-rank 1 "$@" | sed 's/^/  /'
mpirun --oversubscribe --allow-run-as-root -np "$RANKS" build/saegap run jobs/demo.job \
  --out out/demo/result.h5 --threads-per-rank 1 "$@"
build/saegap verify out/demo/result.h5
if [ -f analysis/report.py ]; then
  /usr/bin/python3 analysis/report.py out/demo/result.h5 -o out/demo/report
  echo "result: out/demo/result.h5; report: out/demo/report/report.html (and report.md, headline.csv, one PNG per figure)"
fi
