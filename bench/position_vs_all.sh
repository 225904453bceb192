#!/usr/bin/env bash
# Issue 14, point 4: what --scope position costs against --scope all, in one run, on the model
# and SAEs of bench/sweep.sh (GPT-2-small shape, 3 SAEs of d_sae 24576 at
# blocks.{2,6,10}.hook_resid_pre), interventions sae, eps_random, zero_ablation:
#   A: --scope all --samples 1
#   B: --scope position --position 96 --window 16 --samples 16
# B's intervened passes compute positions [96, 128) only (suffix passes, src/forward.c), so B's
# 16 samples should cost about what A's single pass over all 128 positions does.
#   Usage: bash bench/position_vs_all.sh [THREADS (default 2)] [CONTEXTS (default 8)]   (SAEGAP_BIN: another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
TH=${1:-2}
N=${2:-8}
BIN=${SAEGAP_BIN:-build/saegap}
[ -x "$BIN" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
[ -f "$W/saes/blocks.10.hook_resid_pre/sae_weights.safetensors" ] ||
  { echo "bench/position_vs_all.sh: no model in $W: run bash bench/sweep.sh once (it writes it)" >&2; exit 1; }
ARGS=(--model "$W" --sae "$W/saes" --tokens "$W/tokens.npy" --contexts "$N" --interventions sae,eps_random,zero_ablation
      --examples 0 --threads-per-rank "$TH" --allow-model-mismatch --quiet)
OUT=$(mktemp -u /tmp/saegap-bench-pos.XXXXXX)
trap 'rm -f "$OUT".a.h5 "$OUT".b.h5' EXIT
t0=$(date +%s%N)
"$BIN" run "${ARGS[@]}" --scope all --samples 1 --out "$OUT.a.h5" 2> /dev/null
t1=$(date +%s%N)
"$BIN" run "${ARGS[@]}" --scope position --position 96 --window 16 --samples 16 --out "$OUT.b.h5" 2> /dev/null
t2=$(date +%s%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v n="$N" 'BEGIN {
  A = (b - a) / 1e9; B = (c - b) / 1e9;
  printf "%d contexts x 128 tokens: --scope all --samples 1: %.1f s; --scope position --position 96 --window 16 --samples 16: %.1f s; ratio %.2f (issue 14 asks <= 1.5)\n", n, A, B, B / A }'
