#!/usr/bin/env bash
# Issue 14 point 5: memory of the full GPT-2-small job shape at 2 ranks, as the kernel counts it.
#   GPT-2-small-shaped model (12 layers, d_model 768, vocab 50257; random F32 weights in the real
#   format) with the 13 SAEs of gpt2-small-res-jb's shape (d_sae 24576 at blocks.0-11.hook_resid_pre
#   and blocks.11.hook_resid_post), all 11 interventions, CONTEXTS x 128 tokens, RANKS x 1 thread.
# Samples /proc/PID/smaps_rollup of every rank every 0.2 s and prints each rank's peak private
# memory (Private_Clean + Private_Dirty), the node's peak total Pss (every rank's), and the size
# of the weights on disk (model + SAEs) to compare with. Also prints what `saegap plan` predicts.
#   Usage: bash bench/memory.sh [RANKS (default 2)] [CONTEXTS (default 8)]   (SAEGAP_BIN: another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:-2}
N=${2:-8}
BIN=${SAEGAP_BIN:-build/saegap}
[ -n "${SAEGAP_BIN:-}" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench-gpt2-small}
S=$W/saes13
if [ ! -f "$W/model.safetensors" ] || [ ! -f "$S/blocks.11.hook_resid_post/sae_weights.safetensors" ]; then
  echo "bench/memory.sh: writing the model and 13 SAEs once into $W (about 3 GB)"
  /usr/bin/python3 - "$W" <<'PY'
import os, sys
import numpy as np
sys.path.insert(0, "tests/python")
import saegap_fixtures as fx, sae_fixtures as sf
w = sys.argv[1]
if not os.path.exists(os.path.join(w, "model.safetensors")):
    fx.make_gpt2_model(w, n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, dtype="F32")
hooks = ["blocks.%d.hook_resid_pre" % l for l in range(12)] + ["blocks.11.hook_resid_post"]
for i, hook in enumerate(hooks):
    d = os.path.join(w, "saes13", hook)
    if os.path.exists(os.path.join(d, "sae_weights.safetensors")):
        continue
    os.makedirs(d, exist_ok=True)
    cfg = sf._build_cfg("v6", 768, 24576, hook, "standard", True, "none", None, "gpt2", None, False, False, 128)
    sf.write_cfg(d, cfg)
    rng = np.random.default_rng(i)
    W_enc = (rng.standard_normal((768, 24576), dtype=np.float32) / np.float32(np.sqrt(768)))
    fx.write_safetensors(os.path.join(d, "sae_weights.safetensors"), {
        "W_enc": W_enc, "b_enc": np.full(24576, -0.5, np.float32),
        "W_dec": np.ascontiguousarray(W_enc.T), "b_dec": np.zeros(768, np.float32)})
if not os.path.exists(os.path.join(w, "tokens.npy")):
    rng = np.random.default_rng(0)
    np.save(os.path.join(w, "tokens.npy"), rng.integers(0, 50257, size=(256, 128)).astype("<i4"))
PY
fi
ARGS=(--model "$W" --sae "$S" --tokens "$W/tokens.npy" --contexts "$N" --interventions all
      --examples 0 --threads-per-rank 1 --allow-model-mismatch)
"$BIN" plan --ranks "$NP" "${ARGS[@]}" 2>&1 | grep -i -E "memory|per rank|per node" || true
OUT=$(mktemp -u /tmp/saegap-bench-memory.XXXXXX.h5)
LOG=$(mktemp /tmp/saegap-bench-memory.XXXXXX.log)
mpirun --oversubscribe -np "$NP" "$BIN" run "${ARGS[@]}" --quiet --out "$OUT" &
LAUNCHER=$!
# peak per rank (private) and peak node total (Pss), sampled while the run lasts
while kill -0 "$LAUNCHER" 2> /dev/null; do
  tot=0
  for pid in $(pgrep -f "$BIN run" | grep -v "^$LAUNCHER\$" || true); do
    [ "$(ps -o comm= -p "$pid" 2> /dev/null)" = "saegap" ] || continue
    read -r priv pss < <(awk '/^Private_(Clean|Dirty):/ {p += $2} /^Pss:/ {s = $2} END {print p + 0, s + 0}' \
                              "/proc/$pid/smaps_rollup" 2> /dev/null || echo "0 0")
    echo "rank $pid $priv" >> "$LOG"
    tot=$((tot + pss))
  done
  echo "node $tot" >> "$LOG"
  sleep 0.2
done
wait "$LAUNCHER"
rm -f "$OUT"
weights=$(du -cb "$W/model.safetensors" "$S"/*/sae_weights.safetensors | tail -1 | cut -f1)
awk -v np="$NP" -v w="$weights" '
  $1 == "rank" { if ($3 > peak[$2]) peak[$2] = $3 }
  $1 == "node" { if ($2 > node) node = $2 }
  END {
    for (p in peak) { printf "rank %s: peak private %.0f MB\n", p, peak[p] / 1024; if (peak[p] > mx) mx = peak[p] }
    printf "node: peak Pss %.0f MB; weights on disk %.0f MB; weights + 1 GB per rank = %.0f MB\n",
           node / 1024, w / 1e6 * 1e6 / 1048576, (w / 1048576) + 1024 * np
    printf "largest rank: %.0f MB private (asked <= 1024 MB)\n", mx / 1024 }' "$LOG"
rm -f "$LOG"
