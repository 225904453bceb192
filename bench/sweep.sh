#!/usr/bin/env bash
# The sweep of issue 14 against the machine's limit, as ratios taken in one run:
#   GPT-2-small-shaped model (12 layers, d_model 768, vocab 50257; random F32 weights in the real
#   format), 3 SAEs of d_sae 24576 at blocks.{2,6,10}.hook_resid_pre, 16 contexts x 128 tokens,
#   interventions sae, eps_random, zero_ablation, 1 rank x THREADS BLIS threads.
# Prints `saegap plan`'s FLOP count, BLIS's sgemm rate and plan's time estimate (both measured
# by plan, in this run), then the run's wall time, its GFLOP/s over plan's FLOPs, the ratio to
# sgemm, and plan's estimate over the measured time. Numbers: docs/performance.md.
#   Usage: bash bench/sweep.sh [THREADS (default 2)] [CONTEXTS (default 16)]   (SAEGAP_BIN: another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
TH=${1:-2}
N=${2:-16}
BIN=${SAEGAP_BIN:-build/saegap} # another binary to compare: SAEGAP_BIN=/path/to/saegap
[ -n "${SAEGAP_BIN:-}" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
if [ ! -f "$W/model.safetensors" ] || [ ! -f "$W/saes/blocks.10.hook_resid_pre/sae_weights.safetensors" ]; then
  echo "bench/sweep.sh: writing the model and SAEs once into $W (about 1 GB)"
  /usr/bin/python3 - "$W" <<'PY'
import os, sys
import numpy as np
sys.path.insert(0, "tests/python")
import saegap_fixtures as fx, sae_fixtures as sf
w = sys.argv[1]
if not os.path.exists(os.path.join(w, "model.safetensors")):
    fx.make_gpt2_model(w, n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, dtype="F32")
# random SAEs in SAELens's v6 format (the fixtures' make_sae fits a decoder: far too slow at
# this size; the cost of a run does not depend on the weights' values)
for l in (2, 6, 10):
    hook = "blocks.%d.hook_resid_pre" % l
    d = os.path.join(w, "saes", hook)
    os.makedirs(d, exist_ok=True)
    cfg = sf._build_cfg("v6", 768, 24576, hook, "standard", True, "none", None, "gpt2", None, False, False, 128)
    sf.write_cfg(d, cfg)
    rng = np.random.default_rng(l)
    W_enc = (rng.standard_normal((768, 24576)) / np.sqrt(768)).astype(np.float32)
    fx.write_safetensors(os.path.join(d, "sae_weights.safetensors"), {
        "W_enc": W_enc, "b_enc": np.full(24576, -0.5, np.float32),
        "W_dec": np.ascontiguousarray(W_enc.T), "b_dec": np.zeros(768, np.float32)})
rng = np.random.default_rng(0)
np.save(os.path.join(w, "tokens.npy"), rng.integers(0, 50257, size=(256, 128)).astype("<i4"))
PY
fi
ARGS=(--model "$W" --sae "$W/saes" --tokens "$W/tokens.npy" --contexts "$N" --interventions sae,eps_random,zero_ablation
      --examples 0 --threads-per-rank "$TH" --allow-model-mismatch)
PLAN=$("$BIN" plan --ranks 1 "${ARGS[@]}" 2>&1)
echo "$PLAN"
flops=$(echo "$PLAN" | sed -n 's/.*; total \([0-9.e+]*\).*/\1/p')
sgemm=$(echo "$PLAN" | sed -n 's/.*measured here: sgemm \([0-9.]*\) GFLOP\/s.*/\1/p')
est=$(echo "$PLAN" | sed -n 's/.*expected wall time on [^:]*: \([0-9.]*\) \(s\|min\|h\).*/\1 \2/p')
OUT=$(mktemp -u /tmp/saegap-bench-sweep.XXXXXX.h5)
t0=$(date +%s%N)
"$BIN" run "${ARGS[@]}" --quiet --out "$OUT"
t1=$(date +%s%N)
rm -f "$OUT"
awk -v f="$flops" -v g="$sgemm" -v a="$t0" -v b="$t1" -v e="$est" 'BEGIN {
  s = (b - a) / 1e9; split(e, p, " "); es = p[1] * (p[2] == "min" ? 60 : p[2] == "h" ? 3600 : 1);
  printf "sweep: %.1f s for %.3g FLOPs = %.1f GFLOP/s = %.0f%% of sgemm (%.1f GFLOP/s); plan estimated %.0f s (%.2fx the run)\n",
         s, f, f / s / 1e9, 100 * f / s / 1e9 / g, g, es, es / s }'
