#!/usr/bin/env bash
# Strong scaling of `saegap run` on the embedded demo (jobs/demo.job: 4 layers, d_model 128,
# GPT-2's 50257-token vocabulary, 9 SAEs, all 11 interventions): the same sweep on
#   1 rank x 1 BLIS thread, 2 ranks x 1 thread, 1 rank x 2 threads
# and the speedups over the first. Also checks that the three results are byte-identical under
# /sites (they must be: any rank or thread count gives the same numbers).
# With WORKLOAD gpt2-small: the sweep of bench/sweep.sh instead (GPT-2-small shape, 3 SAEs of
# d_sae 24576 at blocks.{2,6,10}.hook_resid_pre, sae + eps_random + zero_ablation; written once
# by bench/sweep.sh into $SAEGAP_BENCH_DIR).
# Numbers: docs/performance.md.
#   Usage: bash bench/scaling.sh [CONTEXTS (default 32)] [REPEATS (default 2)] [WORKLOAD: demo (default) | gpt2-small]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-32}
REPEATS=${2:-2}
WORKLOAD=${3:-demo}
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
case $WORKLOAD in
  demo) JOB=(jobs/demo.job) ;;
  gpt2-small)
    [ -f "$W/saes/blocks.10.hook_resid_pre/sae_weights.safetensors" ] ||
      { echo "bench/scaling.sh: no model in $W: run bash bench/sweep.sh once (it writes it)" >&2; exit 1; }
    JOB=(--model "$W" --sae "$W/saes" --tokens "$W/tokens.npy" --interventions sae,eps_random,zero_ablation
         --allow-model-mismatch) ;;
  *) echo "bench/scaling.sh: WORKLOAD is demo or gpt2-small" >&2; exit 2 ;;
esac
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d /tmp/saegap-scaling.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

run() {  # run RANKS THREADS OUT -> seconds (best of REPEATS)
  local np=$1 th=$2 out=$3 best="" t0 t1 s i
  for i in $(seq 1 "$REPEATS"); do
    rm -f "$out"
    t0=$(date +%s%N)
    mpirun --oversubscribe --bind-to none -np "$np" build/saegap run "${JOB[@]}" --contexts "$N" \
      --examples 0 --out "$out" --threads-per-rank "$th" --quiet
    t1=$(date +%s%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
    if [ -z "$best" ] || awk -v s="$s" -v b="$best" 'BEGIN {exit !(s < b)}'; then best=$s; fi
  done
  echo "$best"
}

echo "saegap scaling: $WORKLOAD, $N contexts x 128 tokens, best of $REPEATS, $(nproc) cores, $(date -u +%F)"
t11=$(run 1 1 "$TMP/r11.h5")
t21=$(run 2 1 "$TMP/r21.h5")
t12=$(run 1 2 "$TMP/r12.h5")
tokens=$((N * 127))
printf "| configuration | wall time | tokens/s | speedup |\n|---|---|---|---|\n"
for row in "1 rank x 1 thread:$t11" "2 ranks x 1 thread:$t21" "1 rank x 2 threads:$t12"; do
  name=${row%%:*}; t=${row##*:}
  awk -v n="$name" -v t="$t" -v b="$t11" -v k="$tokens" 'BEGIN {printf "| %s | %.1f s | %.0f | %.2fx |\n", n, t, k / t, b / t}'
done
/usr/bin/python3 - "$TMP/r11.h5" "$TMP/r21.h5" "$TMP/r12.h5" <<'EOF'
import sys, h5py
def sites(p):
    out = {}
    with h5py.File(p, "r") as f:
        f["sites"].visititems(lambda n, o: out.__setitem__(n, o[()].tobytes()) if isinstance(o, h5py.Dataset) else None)
    return out
a = sites(sys.argv[1])
for p in sys.argv[2:]:
    b = sites(p)
    bad = [k for k in a if a[k] != b.get(k)]
    print("results identical under /sites: %s" % ("yes" if not bad and a.keys() == b.keys() else "NO: " + ", ".join(bad[:5])))
EOF
