#!/usr/bin/env bash
# saegap against the PyTorch hooks loop a user would write (issue 14, point 3), in one run:
# the sweep of bench/sweep.sh (GPT-2-small-shaped model, 3 SAEs of d_sae 24576 at
# blocks.{2,6,10}.hook_resid_pre, interventions sae, eps_random, zero_ablation) on CONTEXTS
# contexts x 128 tokens, 1 rank x THREADS threads for saegap, torch.set_num_threads(THREADS)
# (and the BLAS threaded as many) for bench/torch_loop.py. Prints both wall times (whole
# process, model and SAE loading included), their ratio, and the mean-KL comparison (the
# script fails when torch and saegap differ by more than 1e-3 relative, or when torch would
# run on the reference BLAS).
#   Usage: bash bench/torch_vs_saegap.sh [THREADS (default 2)] [CONTEXTS (default 4)] [TORCH_BATCH (default 4)]
#   Needs: bash env/setup-bench-debian.sh (python3-torch, BLIS behind libblas.so.3); the model,
#   SAEs and tokens are written once by bench/sweep.sh into $SAEGAP_BENCH_DIR
#   (default /tmp/saegap-bench-gpt2-small).  SAEGAP_BIN: another saegap binary.
set -euo pipefail
cd "$(dirname "$0")/.."
TH=${1:-2}
N=${2:-4}
TB=${3:-4}
BIN=${SAEGAP_BIN:-build/saegap}
[ -x "$BIN" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
if [ ! -f "$W/model.safetensors" ] || [ ! -f "$W/saes/blocks.10.hook_resid_pre/sae_weights.safetensors" ]; then
  echo "bench/torch_vs_saegap.sh: no model in $W: run bash bench/sweep.sh once (it writes it)" >&2
  exit 1
fi
IV=sae,eps_random,zero_ablation
OUT=$(mktemp -u /tmp/saegap-bench-torch.XXXXXX.h5)
trap 'rm -f "$OUT"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s%N)
"$BIN" run --model "$W" --sae "$W/saes" --tokens "$W/tokens.npy" --contexts "$N" --interventions "$IV" \
    --examples 0 --threads-per-rank "$TH" --allow-model-mismatch --quiet --out "$OUT"
t1=$(date +%s%N)
set +e
/usr/bin/python3 bench/torch_loop.py --model "$W" --sae "$W/saes" --tokens "$W/tokens.npy" --contexts "$N" \
    --interventions "$IV" --threads "$TH" --batch "$TB" --compare "$OUT" | tee "$OUT.torch.txt"
rc=${PIPESTATUS[0]}
set -e
t2=$(date +%s%N)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$rc" -ne 2 ] || exit 2
loop=$(sed -n 's/^torch_loop: loop \([0-9.]*\) s.*/\1/p' "$OUT.torch.txt")
rm -f "$OUT.torch.txt"
awk -v a="$t0" -v b="$t1" -v c="$t2" -v l="$loop" -v n="$N" -v th="$TH" 'BEGIN {
  s = (b - a) / 1e9; t = (c - b) / 1e9;
  printf "saegap %.1f s, torch loop %.1f s (%.1f s without loading), %d contexts x 128 tokens, %d threads\n", s, t, l, n, th;
  printf "saegap/torch wall time: %.2f  (saegap is %.2fx as fast as torch; %.2fx against torch without its loading)\n", s / t, t / s, l / s }'
exit "$rc"
