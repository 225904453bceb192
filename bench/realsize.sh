#!/usr/bin/env bash
# Issue 27 point 4: real-size models within plan's time and memory. Prints every figure beside
# its bound, for two job shapes, each at 2 ranks x 1 thread and at 1 rank x 2 threads:
#   gemma: a Gemma-2-2B-shaped BF16 checkpoint (26 layers, d_model 2304, vocab 256000, three
#          shards, 5.2 GB; random weights in the real layout, bench/realsize_make.py) with two
#          Gemma Scope-shaped residual SAEs of width 16384, all 11 interventions, 2 contexts x 128;
#   gpt2:  bench/memory.sh's GPT-2-small-shaped job (F32, the 13 gpt2-small-res-jb-shaped SAEs),
#          all 11 interventions, 2 contexts x 128.
# Figures (bounds from the issue):
#   node memory: peak over the run of the sum of every rank's Pss (smaps_rollup, every 0.2 s)
#                <= the weights once in float32 (model + SAEs) + 1 GB per rank;
#   rank memory: peak of each rank's anonymous memory (its private buffers; the node's shared
#                weights are not anonymous) <= --rank-memory's budget;
#   start-up:    launch until the first unit starts (the stderr line "saegap run: N contexts x ...",
#                timestamped here) <= 3 x the time to read the weight files from the page cache,
#                measured just before (cat, warm); the statistics pass before it is shown apart;
#   plan:        `saegap plan`'s wall time, memory per rank and per node, each within 1.25x of
#                the run's (ratio plan / run printed).
# Every run holds /tmp/saegap-bigmem.lock (one big-memory job at a time on a shared machine).
#   Usage: bash bench/realsize.sh [gemma|gpt2|both (default)] [LAYOUTS (default "2x1 1x2")]
#   SAEGAP_BIN: another binary; SAEGAP_BIG_DIR: where the Gemma-shaped inputs live
#   (/work/bigmodels: on disk, not a tmpfs); SAEGAP_BENCH_DIR: bench/memory.sh's GPT-2 files.
set -euo pipefail
cd "$(dirname "$0")/.."
WHICH=${1:-both}
LAYOUTS=${2:-2x1 1x2}
BIN=${SAEGAP_BIN:-build/saegap}
[ -n "${SAEGAP_BIN:-}" ] || { cmake -S . -B build > /dev/null && cmake --build build -j > /dev/null; }
BIN=$(readlink -f "$BIN")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BIG=${SAEGAP_BIG_DIR:-/work/bigmodels}
GW=${SAEGAP_BENCH_DIR:-/work/bigmodels/gpt2-small}
LOCK=/tmp/saegap-bigmem.lock

# seconds for a human duration as plan prints it ("49 s", "2.5 min", "1.2 h")
secs() { awk -v v="$1" -v u="$2" 'BEGIN { print v * (u == "min" ? 60 : u == "h" ? 3600 : 1) }'; }
# bytes for plan's human sizes (decimal units)
bytes() { awk -v v="$1" -v u="$2" 'BEGIN { m = u == "KB" ? 1e3 : u == "MB" ? 1e6 : u == "GB" ? 1e9 : u == "TB" ? 1e12 : 1; print v * m }'; }

measure() { # NAME NP TH WEIGHT_FILES... -- saegap run/plan arguments...
  local name=$1 np=$2 th=$3; shift 3
  local files=()
  while [ "$1" != "--" ]; do files+=("$1"); shift; done
  shift
  local args=("$@" --threads-per-rank "$th")
  local plan
  plan=$("$BIN" plan --ranks "$np" "${args[@]}" 2>&1)
  local p_wall p_rank p_node
  p_wall=$(echo "$plan" | sed -n 's/.*expected wall time on [^:]*: \([0-9.]*\) \([a-z]*\) .*/\1 \2/p')
  p_wall=$(secs $p_wall)
  p_rank=$(echo "$plan" | sed -n 's/.*memory: about \([0-9.]*\) \([KMGT]*B\) per rank.*/\1 \2/p')
  p_rank=$(bytes $p_rank)
  p_node=$(echo "$plan" | sed -n 's/.*(weights, shared by its ranks): \([0-9.]*\) \([KMGT]*B\) for.*/\1 \2/p')
  p_node=$(bytes $p_node)
  local budget
  budget=$(echo "$plan" | sed -n 's/.*rank memory budget \([0-9]*\) bytes.*/\1/p')
  # the weight files from the page cache: once to warm, then timed
  cat "${files[@]}" > /dev/null
  local t0 t1 read_s
  t0=$(date +%s.%N); cat "${files[@]}" > /dev/null; t1=$(date +%s.%N)
  read_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
  local wbytes # the weights once in float32: 4 bytes per element of every tensor / array
  wbytes=$(/usr/bin/python3 - "${files[@]}" <<'PY'
import json, struct, sys, zipfile
import numpy as np
n = 0
for p in sys.argv[1:]:
    if p.endswith(".npz"):
        with np.load(p, mmap_mode=None) as z:
            n += sum(int(np.prod(z[k].shape)) for k in z.files)
    else:
        with open(p, "rb") as f:
            h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        n += sum(int(np.prod(v["shape"])) for k, v in h.items() if k != "__metadata__")
print(4 * n)
PY
)
  local out log err
  out=$(mktemp -u /work/bigmodels/realsize.XXXXXX.h5)
  log=$(mktemp /tmp/saegap-realsize.XXXXXX.log)
  err=$(mktemp /tmp/saegap-realsize.XXXXXX.err)
  local start end
  start=$(date +%s.%N)
  mpirun --oversubscribe --allow-run-as-root -np "$np" "$BIN" run "${args[@]}" --out "$out" \
    2> >(while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "$l"; done > "$err") > /dev/null &
  local launcher=$!
  while kill -0 "$launcher" 2> /dev/null; do
    local tot=0
    for pid in $(pgrep -f "$BIN run" || true); do
      [ "$(ps -o comm= -p "$pid" 2> /dev/null)" = "$(basename "$BIN" | cut -c1-15)" ] || continue
      read -r anon pss < <(awk '/^Anonymous:/ {a = $2} /^Pss:/ {s = $2} END {print a + 0, s + 0}' \
                                "/proc/$pid/smaps_rollup" 2> /dev/null || echo "0 0")
      echo "rank $pid $anon" >> "$log"
      tot=$((tot + pss))
    done
    echo "node $tot" >> "$log"
    sleep 0.2
  done
  wait "$launcher"
  end=$(date +%s.%N)
  sleep 0.5 # the timestamping reader drains
  rm -f "$out"
  local t_stats t_units
  t_stats=$(awk '/saegap run: statistics pass/ {print $1; exit}' "$err")
  t_units=$(awk '/saegap run: [0-9]+ contexts x/ {print $1; exit}' "$err")
  [ -n "$t_units" ] || { echo "no unit start line in the run's stderr:"; cat "$err"; exit 1; }
  awk -v name="$name" -v np="$np" -v th="$th" -v start="$start" -v end="$end" -v ts="${t_stats:-}" \
      -v tu="$t_units" -v rd="$read_s" -v w="$wbytes" -v pw="$p_wall" -v pr="$p_rank" -v pn="$p_node" \
      -v budget="${budget:-0}" '
    $1 == "rank" { if ($3 > peak[$2]) peak[$2] = $3 }
    $1 == "node" { if ($2 > node) node = $2 }
    END {
      mx = 0; for (p in peak) if (peak[p] > mx) mx = peak[p]
      mx *= 1024; node *= 1024; wall = end - start; su = tu - start
      bound_node = w + np * 2^30
      printf "%s, %d rank(s) x %d thread(s):\n", name, np, th
      printf "  node memory  %6.2f GB (peak sum of Pss)   bound %6.2f GB (weights once in float32 %.2f GB + 1 GiB x %d)  %s\n",
             node / 1e9, bound_node / 1e9, w / 1e9, np, node <= bound_node ? "ok" : "OVER"
      printf "  rank memory  %6.2f GB (largest rank, anonymous)   budget %6.2f GB  %s\n", mx / 1e9, budget / 1e9,
             budget == 0 ? "-" : mx <= budget ? "ok" : "OVER"
      printf "  start-up     %6.1f s (launch to the first unit%s)   bound %6.1f s (3 x %.2f s to read the weights warm)  %s\n",
             su, ts != "" ? sprintf("; statistics pass from %.1f s, %.1f s long", ts - start, tu - ts) : "",
             3 * rd, rd, su <= 3 * rd ? "ok" : "OVER"
      if (ts != "")
        printf "  start-up without the statistics pass %.1f s  %s\n", ts - start, ts - start <= 3 * rd ? "ok" : "OVER"
      printf "  plan         wall %.1f s vs run %.1f s (%.2fx)  rank %.2f GB vs %.2f GB (%.2fx)  node %.2f GB vs %.2f GB (%.2fx)  %s\n",
             pw, wall, pw / wall, pr / 1e9, mx / 1e9, pr / mx, pn / 1e9, node / 1e9, pn / node,
             (pw / wall <= 1.25 && wall / pw <= 1.25 && pr / mx <= 1.25 && mx / pr <= 1.25 && pn / node <= 1.25 && node / pn <= 1.25) ? "ok (all within 1.25x)" : "OUTSIDE 1.25x"
    }' "$log"
  grep -E "saegap run: (units done|wrote)" "$err" | sed 's/^[0-9.]* /  run: /'
  rm -f "$log" "$err"
}

gemma() {
  flock "$LOCK" /usr/bin/python3 bench/realsize_make.py "$BIG"
  local m=$BIG/gemma-2-2b-shaped r=$BIG/gemma-scope-2b-pt-res
  local saes=("$r/layer_6/width_16k/average_l0_50" "$r/layer_12/width_16k/average_l0_50")
  for lay in $LAYOUTS; do
    exec 9> "$LOCK"; flock 9
    measure "Gemma-2-2B shape (BF16, 2 Gemma Scope SAEs 16k)" "${lay%x*}" "${lay#*x}" \
      "$m"/model-0000*.safetensors "${saes[0]}/params.npz" "${saes[1]}/params.npz" -- \
      --model "$m" --sae "${saes[0]}" --sae "${saes[1]}" --tokens "$BIG/tokens.npy" --contexts 2 \
      --interventions all --examples 0
    exec 9>&-
  done
}

gpt2() {
  if [ ! -f "$GW/saes13/blocks.11.hook_resid_post/sae_weights.safetensors" ]; then
    echo "bench/realsize.sh: writing bench/memory.sh's files into $GW"
    # bench/memory.sh writes them (and measures); its job is the one measured here
    SAEGAP_BENCH_DIR=$GW SAEGAP_BIN=$BIN flock "$LOCK" bash bench/memory.sh 2 2 > /dev/null
  fi
  for lay in $LAYOUTS; do
    exec 9> "$LOCK"; flock 9
    measure "GPT-2-small shape (F32, 13 SAEs 24576)" "${lay%x*}" "${lay#*x}" \
      "$GW/model.safetensors" "$GW"/saes13/*/sae_weights.safetensors -- \
      --model "$GW" --sae "$GW/saes13" --tokens "$GW/tokens.npy" --contexts 2 --interventions all \
      --examples 0 --allow-model-mismatch
    exec 9>&-
  done
}

case "$WHICH" in
  gemma) gemma ;;
  gpt2) gpt2 ;;
  both) gpt2; gemma ;;
  *) echo "usage: bash bench/realsize.sh [gemma|gpt2|both] [\"2x1 1x2\"]" >&2; exit 2 ;;
esac
