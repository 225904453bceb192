#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds the libFuzzer targets (clang-14, ASan + UBSan; -DSAEGAP_FUZZ=ON) in their own build
# directory, replays every saved regression input tests/fuzz/regressions/<target>/* through
# its target, then fuzzes each target for SECONDS_PER_TARGET (default 30) on one core, from
# the seeds of tests/fuzz/corpus/<target>/. Fails on any crash, hang (an input running longer
# than SAEGAP_FUZZ_TIMEOUT s, default 10), out-of-memory or sanitizer report; the input is
# left in $BUILD/fuzz-artifacts/<target>/ (copy it to tests/fuzz/regressions/<target>/).
#
#   SAEGAP_FUZZ_BUILD  build directory (default build-fuzz)
#   SAEGAP_FUZZ_ARGS   more libFuzzer flags, e.g. "-fork=1 -ignore_crashes=1" for long runs
#   SAEGAP_FUZZ_NOTES  a directory: inputs that reach sg_fatal or leak HDF5 objects are saved
#                      there (these are not failures; fuzz_common.h)
# Inputs found while fuzzing accumulate in $BUILD/fuzz-corpus/<target>/ (next runs start
# from them); the checked-in seeds are never modified. docs/testing.md: long runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-30}
shift || true
ALL=(safetensors model_config sae_cfg tokens_npy tokens_bin tokens_hdf5 job_file result_verify result_info result_resume)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
BUILD=${SAEGAP_FUZZ_BUILD:-build-fuzz}
TIMEOUT=${SAEGAP_FUZZ_TIMEOUT:-10}
read -r -a EXTRA <<< "${SAEGAP_FUZZ_ARGS:-}"
JOBS=$(nproc 2>/dev/null || echo 2)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI leaks by design; libFuzzer's own leak check is off too (-detect_leaks=0 below).
# allocator_may_return_null: a request beyond what ASan can allocate (1 TB) returns NULL, as
# malloc does in the release build (libhdf5 asks for sizes read from a damaged file and copes
# with NULL); any allocation above 2 GB still fails the run (libFuzzer's -malloc_limit_mb).
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:handle_abort=1:detect_stack_use_after_return=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1

echo "== tests/fuzz/run.sh: building the fuzz targets in $BUILD (clang-14, ASan + UBSan)"
mkdir -p "$BUILD"
CC=${SAEGAP_FUZZ_CC:-clang-14} cmake -S . -B "$BUILD" -DSAEGAP_FUZZ=ON -DSAEGAP_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$BUILD/fuzz-cmake.log" 2>&1 || { cat "$BUILD/fuzz-cmake.log"; exit 1; }
cmake --build "$BUILD" --target fuzz_all -j "$JOBS" > "$BUILD/fuzz-build.log" 2>&1 ||
  { tail -50 "$BUILD/fuzz-build.log"; exit 1; }

export SAEGAP_FUZZ_TMP
SAEGAP_FUZZ_TMP=$(mktemp -d "${TMPDIR_FUZZ:-/dev/shm}/saegap-fuzz-run.XXXXXX")
trap 'rm -rf "$SAEGAP_FUZZ_TMP"' EXIT

failed=()
TIMEFORMAT='%U %S'
printf '%-15s %9s %11s %8s %s\n' target cpu_s executions result log
for t in "${TARGETS[@]}"; do
  bin=$BUILD/tests/fuzz/fuzz_$t
  [ -x "$bin" ] || { echo "no fuzz target '$t' (targets: ${ALL[*]})" >&2; exit 2; }
  logdir=$BUILD/fuzz-logs
  mkdir -p "$logdir" "$BUILD/fuzz-corpus/$t" "$BUILD/fuzz-artifacts/$t"
  # every saved regression input once (libFuzzer runs the files given as arguments)
  shopt -s nullglob
  for f in tests/fuzz/regressions/"$t"/*; do
    [ -f "$f" ] || continue
    if ! "$bin" -close_fd_mask=3 -detect_leaks=0 -timeout="$TIMEOUT" -rss_limit_mb=2048 "$f" \
          > "$logdir/$t.regression.log" 2>&1; then
      echo "FAIL: $t: regression input $f" >&2
      grep -E "ERROR|SUMMARY|runtime error|deadly|timeout|out-of-memory" "$logdir/$t.regression.log" | head -5 >&2 || true
      failed+=("$t:$f")
    fi
  done
  shopt -u nullglob
  rc=0
  # SECONDS_PER_TARGET 0: only the seeds and the saved inputs, no fuzzing (-max_total_time=0
  # would mean no limit)
  limit=(-max_total_time="$SECS")
  [ "$SECS" = 0 ] && limit=(-runs=0)
  { time { "$bin" "${limit[@]}" -timeout="$TIMEOUT" -rss_limit_mb=2048 -detect_leaks=0 \
      -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-artifacts/$t/" "${EXTRA[@]}" \
      "$BUILD/fuzz-corpus/$t" "tests/fuzz/corpus/$t" > "$logdir/$t.log" 2>&1 || rc=$?; }; } 2> "$logdir/$t.time"
  cpu=$(awk '{printf "%.1f", $1 + $2}' "$logdir/$t.time")
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logdir/$t.log" | awk '{s += $2} END {print s + 0}')
  if [ "$rc" -eq 0 ]; then
    res=ok
  else
    res="FAIL(rc=$rc)"
    failed+=("$t")
  fi
  printf '%-15s %9s %11s %8s %s\n' "$t" "$cpu" "$execs" "$res" "$logdir/$t.log"
  if [ "$rc" -ne 0 ]; then
    grep -E "ERROR|SUMMARY|runtime error|deadly|Test unit written|out-of-memory|timeout" "$logdir/$t.log" | head -8 >&2 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "== tests/fuzz/run.sh: FAILED: ${failed[*]} (inputs in $BUILD/fuzz-artifacts/)" >&2
  exit 1
fi
echo "== tests/fuzz/run.sh: ${#TARGETS[@]} target(s), ${SECS} s each: no crash, hang or sanitizer report"
