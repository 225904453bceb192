#!/usr/bin/env bash
# saegap against the PyTorch hooks loop a user would write (issue 14, point 3), in one run:
# the sweep of bench/sweep.sh (GPT-2-small-shaped model, 3 SAEs of d_sae 24576 at
# blocks.{2,6,10}.hook_resid_pre, interventions sae, eps_random, zero_ablation) on CONTEXTS
# contexts x 128 tokens, 1 rank x THREADS threads for saegap, torch.set_num_threads(THREADS)
# (and the BLAS threaded as many) for bench/torch_loop.py. Prints both wall times (whole
# process, model and SAE loading included), their ratio, and the mean-KL comparison (the
# script fails when torch and saegap differ by more than 1e-3 relative, or when torch would
# run on the reference BLAS).
#   Usage: bash bench/torch_vs_saegap.sh [THREADS (default 2)] [CONTEXTS (default 4)] [TORCH_BATCH (default 4)] [TOKENS]
#   TOKENS: 'bos' or a .npy token file (default the bench's tokens.npy: uniform random ids, no BOS, so
#   SAELens's ablation score pass is the zero_ablation pass; tokens-bos.npy, the same with BOS
#   at position 0 as real contexts have, makes it a pass of its own at --bos exclude).
#   Needs: bash env/setup-bench-debian.sh (python3-torch, BLIS behind libblas.so.3); the model,
#   SAEs and tokens are written once by bench/sweep.sh into $SAEGAP_BENCH_DIR
#   (default /tmp/saegap-bench-gpt2-small).  SAEGAP_BIN: another saegap binary.
set -euo pipefail
cd "$(dirname "$0")/.."
TH=${1:-2}
N=${2:-4}
TB=${3:-4}
TOK=${4:-}
BIN=${SAEGAP_BIN:-build/saegap}
[ -x "$BIN" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
if [ ! -f "$W/model.safetensors" ] || [ ! -f "$W/saes/blocks.10.hook_resid_pre/sae_weights.safetensors" ]; then
  echo "bench/torch_vs_saegap.sh: no model in $W: run bash bench/sweep.sh once (it writes it)" >&2
  exit 1
fi
IV=sae,eps_random,zero_ablation
if [ "$TOK" = bos ] || [ "$TOK" = "$W/tokens-bos.npy" ]; then
  TOK=$W/tokens-bos.npy
  [ -f "$TOK" ] || /usr/bin/python3 -c "import numpy as np, sys; t = np.load(sys.argv[1]); t[:, 0] = 50256; np.save(sys.argv[2], t)" "$W/tokens.npy" "$TOK"
fi
TOK=${TOK:-$W/tokens.npy}
OUT=$(mktemp -u /tmp/saegap-bench-torch.XXXXXX.h5)
trap 'rm -f "$OUT"' EXIT
ARGS=(--model "$W" --sae "$W/saes" --tokens "$TOK" --contexts "$N" --interventions "$IV"
      --examples 0 --threads-per-rank "$TH" --allow-model-mismatch)
# saegap's FLOPs and BLIS's sgemm rate, as `saegap plan` measures them (the rate again after
# the loop: the host's speed drifts; the mean of the two is the limit both are compared with)
plan_sgemm() { sed -n 's/.*measured here: sgemm \([0-9.]*\) GFLOP\/s.*/\1/p' <<< "$1"; }
PLAN=$("$BIN" plan --ranks 1 "${ARGS[@]}" 2>&1)
flops=$(sed -n 's/.*; total \([0-9.e+]*\).*/\1/p' <<< "$PLAN")
g0=$(plan_sgemm "$PLAN")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s%N)
"$BIN" run "${ARGS[@]}" --quiet --out "$OUT"
t1=$(date +%s%N)
set +e
/usr/bin/python3 bench/torch_loop.py --model "$W" --sae "$W/saes" --tokens "$TOK" --contexts "$N" \
    --interventions "$IV" --threads "$TH" --batch "$TB" --compare "$OUT" | tee "$OUT.torch.txt"
rc=${PIPESTATUS[0]}
set -e
t2=$(date +%s%N)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$rc" -ne 2 ] || exit 2
loop=$(sed -n 's/^torch_loop: loop \([0-9.]*\) s.*/\1/p' "$OUT.torch.txt")
tflops=$(sed -n 's/^torch_loop: FLOPs \([0-9.e+]*\) .*/\1/p' "$OUT.torch.txt")
rm -f "$OUT.torch.txt"
g1=$(plan_sgemm "$("$BIN" plan --ranks 1 "${ARGS[@]}" 2>&1)")
awk -v a="$t0" -v b="$t1" -v c="$t2" -v l="$loop" -v n="$N" -v th="$TH" -v f="$flops" -v tf="$tflops" \
    -v g0="$g0" -v g1="$g1" 'BEGIN {
  s = (b - a) / 1e9; t = (c - b) / 1e9; g = (g0 + g1) / 2;
  printf "saegap %.1f s, torch loop %.1f s (%.1f s without loading), %d contexts x 128 tokens, %d threads\n", s, t, l, n, th;
  printf "saegap/torch wall time: %.2f  (saegap is %.2fx as fast as torch; %.2fx against torch without its loading)\n", s / t, t / s, l / s;
  printf "rates against BLIS sgemm %.1f GFLOP/s (plan, before %.1f / after %.1f): saegap %.1f GFLOP/s = %.0f%% over its whole run; torch %.1f GFLOP/s = %.0f%% in its loop\n",
         g, g0, g1, f / s / 1e9, 100 * f / s / 1e9 / g, tf / l / 1e9, 100 * tf / l / 1e9 / g;
  printf "FLOPs: saegap %.3g, torch %.3g (saegap does %.2fx of the loop'"'"'s): at equal rates saegap would be %.2fx as fast\n",
         f, tf, f / tf, tf / f }'
exit "$rc"
