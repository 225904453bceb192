#!/usr/bin/env bash
# tests/fuzz/run.sh --replay [RUNS] [TARGET...]     the gating run (tests/run-all.sh, CI)
# tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]  open-ended exploration (not gating)
#
# Builds the libFuzzer targets (clang-14, ASan + UBSan; -DSAEGAP_FUZZ=ON) in their own build
# directory, replays every saved regression input tests/fuzz/regressions/<target>/* through
# its target, then fuzzes each target on one core, from the seeds of tests/fuzz/corpus/<target>/.
#
# --replay: deterministic, so that a correct submission never fails at random. Each target runs
# the checked-in seeds, then exactly RUNS mutations (default 20000) with a fixed seed
# (-seed=1000+i for the i-th target of the full list), in one process, starting from the
# checked-in seeds only (what earlier runs found is not read). The same binary on the same
# inputs does the same executions every time.
# SECONDS_PER_TARGET: wall-clock fuzzing in fork mode (default 30), starting also from what
# earlier runs found ($BUILD/fuzz-corpus/<target>/): finds new inputs, so its result can differ
# from run to run; docs/testing.md, "Long runs".
#
# Fails on any crash, hang (an input running longer than SAEGAP_FUZZ_TIMEOUT s, default 10),
# out-of-memory or sanitizer report in saegap's code; the input is left in
# $BUILD/fuzz-artifacts/<target>/ (copy it to tests/fuzz/regressions/<target>/).
#
#   SAEGAP_FUZZ_BUILD  build directory (default build-fuzz)
#   SAEGAP_FUZZ_ARGS   more libFuzzer flags, e.g. "-fork=1 -ignore_crashes=1" for long runs
#   SAEGAP_FUZZ_NOTES  a directory: inputs that reach sg_fatal or leak HDF5 objects are saved
#                      there (these are not failures; fuzz_common.h)
# Inputs found while fuzzing accumulate in $BUILD/fuzz-corpus/<target>/ (next runs start
# from them); the checked-in seeds are never modified. docs/testing.md: long runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=explore
if [ "${1:-}" = --replay ]; then
  MODE=replay
  shift
  RUNS=20000
  case ${1:-} in ''|*[!0-9]*) ;; *) RUNS=$1; shift ;; esac
  SECS=0
else
  SECS=${1:-30}
  shift || true
fi
ALL=(safetensors safetensors_index model_config sae_cfg gemma_scope_npz tokens_npy tokens_bin tokens_hdf5 job_file tokenizer_special result_verify result_info result_resume)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
BUILD=${SAEGAP_FUZZ_BUILD:-build-fuzz}
TIMEOUT=${SAEGAP_FUZZ_TIMEOUT:-10}
# Fuzzing runs in child processes that libFuzzer restarts (-fork=1): a damaged HDF5 file that
# crashes libhdf5 ends its process on purpose (fuzz_common.c, sg_h5_fault), and every finding is
# kept and judged afterwards (blame below) instead of ending the run.
read -r -a EXTRA <<< "${SAEGAP_FUZZ_ARGS:--fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1}"
# replay: one process, no fork mode (whose children's timing decides what is merged)
[ "$MODE" = replay ] && EXTRA=()
JOBS=$(nproc 2>/dev/null || echo 2)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI leaks by design; libFuzzer's own leak check is off too (-detect_leaks=0 below).
# allocator_may_return_null with max_allocation_size_mb=1024: a request above 1 GB returns NULL,
# as malloc does in the release build under h5guard's address-space bound (libhdf5 asks for
# sizes read from a damaged file and copes with NULL); ASan touched such a block before any hook
# could stop it, past libFuzzer's 2 GB RSS limit (the CI failures of issue 25.6).
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:handle_abort=1:detect_stack_use_after_return=1:allocator_may_return_null=1:max_allocation_size_mb=1024:suppressions=$PWD/tests/fuzz/asan.supp
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
# saegap's libhdf5 watchdog (src/h5guard.c) must fire well before libFuzzer's -timeout: a
# damaged file that makes libhdf5 loop then ends with saegap's message, as it would for a user
export SAEGAP_HDF5_CPU_LIMIT=${SAEGAP_HDF5_CPU_LIMIT:-3}
# and its memory bound (in ASan builds kept through the allocator's hooks) well below
# libFuzzer's 2 GB RSS limit, which ASan's quarantine and shadow memory approach at 1 GB
export SAEGAP_HDF5_MEM_LIMIT=${SAEGAP_HDF5_MEM_LIMIT:-512}

echo "== tests/fuzz/run.sh: building the fuzz targets in $BUILD (clang-14, ASan + UBSan)"
mkdir -p "$BUILD"
CC=${SAEGAP_FUZZ_CC:-clang-14} cmake -S . -B "$BUILD" -DSAEGAP_FUZZ=ON -DSAEGAP_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$BUILD/fuzz-cmake.log" 2>&1 || { cat "$BUILD/fuzz-cmake.log"; exit 1; }
cmake --build "$BUILD" --target fuzz_all -j "$JOBS" > "$BUILD/fuzz-build.log" 2>&1 ||
  { tail -50 "$BUILD/fuzz-build.log"; exit 1; }

export SAEGAP_FUZZ_TMP
SAEGAP_FUZZ_TMP=$(mktemp -d "${TMPDIR_FUZZ:-/dev/shm}/saegap-fuzz-run.XXXXXX")
trap 'rm -rf "$SAEGAP_FUZZ_TMP"' EXIT

# Whose fault a finding is: libhdf5 1.10.8 itself has memory errors on some damaged files
# (use-after-free, frees of pointers it read from the file, allocations sized by damaged
# lengths). saegap cannot fix those; its guard (src/h5guard.c) turns the crashes and loops
# into a message, and tests/python/test_libhdf5_findings.py checks what the release build does
# with each saved input. A finding is libhdf5's when, in its report, the first frame that is in
# either saegap's code or libhdf5 is libhdf5's; an out-of-memory without a stack is replayed
# with a 32 MB malloc limit (the fixtures need far less) to find the allocation. Anything else is saegap's and fails.
replay() { # bin input log malloc_limit_mb
  "$1" -runs=1 -close_fd_mask=3 -detect_leaks=0 -timeout="$TIMEOUT" -rss_limit_mb=2048 \
    -malloc_limit_mb="$4" "$2" > "$3" 2>&1
}
blame() { # log -> libhdf5 | saegap
  awk '/^ *#[0-9]+ / { if ($0 ~ /libhdf5/) { print "libhdf5"; found = 1; exit }
                       if ($0 ~ /\/src\/[a-z_0-9]+\.c:|\/tests\/fuzz\/[a-z_0-9]+\.c:/) { print "saegap"; found = 1; exit } }
       END { if (!found) print "saegap" }' "$1"
}
judge() { # bin input log -> libhdf5 | saegap | ok
  if replay "$1" "$2" "$3" 2048; then echo ok; return; fi
  if grep -q "out-of-memory (used" "$3"; then
    replay "$1" "$2" "$3.malloc" 32 && { echo saegap; return; }
    blame "$3.malloc"
  else
    blame "$3"
  fi
}

failed=()
hdf5_findings=0
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
    verdict=$(judge "$bin" "$f" "$logdir/$t.regression.log")
    if [ "$verdict" != ok ]; then
      echo "FAIL: $t: regression input $f ($verdict)" >&2
      grep -E "ERROR|SUMMARY|runtime error|deadly|timeout|out-of-memory" "$logdir/$t.regression.log" | head -5 >&2 || true
      failed+=("$t:$f")
    fi
  done
  shopt -u nullglob
  # saved libhdf5 findings (tests/fuzz/libhdf5-findings/): a saegap report on one of them fails
  for f in tests/fuzz/libhdf5-findings/"$t"/*; do
    [ -f "$f" ] || continue
    verdict=$(judge "$bin" "$f" "$logdir/$t.libhdf5.log")
    if [ "$verdict" = saegap ]; then
      echo "FAIL: $t: saved libhdf5 finding $f now fails in saegap's code" >&2
      failed+=("$t:$f")
    fi
  done
  rm -rf "${BUILD:?}/fuzz-artifacts/$t" && mkdir -p "$BUILD/fuzz-artifacts/$t"
  rc=0
  # SECONDS_PER_TARGET 0: only the seeds and the saved inputs, no fuzzing (-max_total_time=0
  # would mean no limit)
  limit=(-max_total_time="$SECS")
  [ "$SECS" = 0 ] && limit=(-runs=0)
  # new inputs go to the first folder; replay starts each time from an empty one and the seeds
  corpus=("$BUILD/fuzz-corpus/$t" "tests/fuzz/corpus/$t")
  if [ "$MODE" = replay ]; then
    idx=0
    for i in "${!ALL[@]}"; do [ "${ALL[$i]}" = "$t" ] && idx=$i; done
    corpus=("$SAEGAP_FUZZ_TMP/corpus-$t" "tests/fuzz/corpus/$t")
    mkdir -p "${corpus[0]}"
  fi
  fuzz_once() { # libFuzzer flags... -> appends to the log
    "$bin" "$@" -timeout="$TIMEOUT" -rss_limit_mb=2048 -detect_leaks=0 \
      -close_fd_mask=3 -print_final_stats=1 -artifact_prefix="$BUILD/fuzz-artifacts/$t/" "${EXTRA[@]}" \
      "${corpus[@]}" >> "$logdir/$t.log" 2>&1
  }
  : > "$logdir/$t.log"
  if [ "$MODE" = replay ]; then
    # A damaged HDF5 file that crashes libhdf5 ends the fuzzing process on purpose
    # (fuzz_common.c); the run then goes on from where it stopped, with the next fixed seed and
    # the inputs found so far, until RUNS executions (at most 8 restarts): still deterministic.
    { time {
      left=$RUNS
      for restart in 0 1 2 3 4 5 6 7 8; do
        before=$(grep -acE '^#[0-9]+' "$logdir/$t.log" || true)
        fuzz_once -runs="$left" -seed=$((1000 + 100 * restart + idx)) || rc=$?
        # executions of this round: the last "#N" status line it printed
        last=$(tail -n +"$((before + 1))" <(grep -aoE '^#[0-9]+' "$logdir/$t.log") | tail -1 | tr -dc '0-9')
        if grep -aq 'stat::number_of_executed_units' <(tail -5 "$logdir/$t.log"); then break; fi
        # anything but the fuzz target's own libhdf5-fault exit ends the loop with its status
        grep -aq 'NOTE .* libhdf5-fault' <(tail -3 "$logdir/$t.log") || break
        ls "$BUILD/fuzz-artifacts/$t"/* > /dev/null 2>&1 && break
        rc=0
        [ -z "$last" ] && break
        left=$((left - last))
        [ "$left" -le 0 ] && break
        echo "== run.sh: round $restart ended after $last executions (libhdf5 fault); $left left" >> "$logdir/$t.log"
      done
    }; } 2> "$logdir/$t.time"
  else
    { time { fuzz_once "${limit[@]}" || rc=$?; }; } 2> "$logdir/$t.time"
  fi
  cpu=$(awk '{s += $1 + $2} END {printf "%.1f", s}' "$logdir/$t.time")
  # executions: libFuzzer's final stats, or in fork mode its last status line "#N: cov: ..."
  execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$logdir/$t.log" | awk '{s += $2} END {print s + 0}' || true)
  if [ "${execs:-0}" = 0 ]; then
    execs=$(grep -aoE '^#[0-9]+: cov' "$logdir/$t.log" | tail -1 | tr -dc '0-9' || true)
  fi
  if [ "$MODE" = replay ]; then # plus the rounds a libhdf5 fault ended
    more=$( (grep -aoE 'ended after [0-9]+ executions' "$logdir/$t.log" || true) | awk '{s += $3} END {print s + 0}')
    execs=$(( ${execs:-0} + more ))
  fi
  ours=0 theirs=0
  for f in "$BUILD/fuzz-artifacts/$t"/*; do
    [ -f "$f" ] || continue
    verdict=$(judge "$bin" "$f" "$f.log")
    case $verdict in
      libhdf5) mkdir -p "$BUILD/fuzz-libhdf5/$t" && mv "$f" "$f.log" "$BUILD/fuzz-libhdf5/$t/"; theirs=$((theirs + 1)) ;;
      saegap) ours=$((ours + 1)); echo "FAIL: $t: $f (report: $f.log)" >&2
              grep -aE "ERROR|SUMMARY|runtime error|deadly|out-of-memory|timeout" "$f.log" | head -5 >&2 || true ;;
      ok) ;; # a timeout or OOM that does not reproduce alone (machine load)
    esac
  done
  hdf5_findings=$((hdf5_findings + theirs))
  # libFuzzer's fork mode exits non-zero after ignored findings; the verdicts above decide
  if [ "$ours" -eq 0 ] && { [ "$rc" -eq 0 ] || ls "$BUILD/fuzz-artifacts/$t"/*.log > /dev/null 2>&1 || [ "$theirs" -gt 0 ]; }; then
    res=ok
  else
    res="FAIL(rc=$rc)"
    failed+=("$t")
    [ "$ours" -eq 0 ] && tail -20 "$logdir/$t.log" >&2
  fi
  [ "$theirs" -gt 0 ] && res="$res+$theirs-libhdf5"
  printf '%-15s %9s %11s %8s %s\n' "$t" "$cpu" "$execs" "$res" "$logdir/$t.log"
done
if [ "$hdf5_findings" -gt 0 ]; then
  echo "== tests/fuzz/run.sh: $hdf5_findings finding(s) inside libhdf5 (not saegap's code) in $BUILD/fuzz-libhdf5/;" \
       "new kinds belong in tests/fuzz/libhdf5-findings/ (README there)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "== tests/fuzz/run.sh: FAILED: ${failed[*]} (inputs in $BUILD/fuzz-artifacts/)" >&2
  exit 1
fi
if [ "$MODE" = replay ]; then
  echo "== tests/fuzz/run.sh: ${#TARGETS[@]} target(s), seeds + saved inputs + $RUNS fixed-seed mutations each: no crash, hang or sanitizer report in saegap's code"
else
  echo "== tests/fuzz/run.sh: ${#TARGETS[@]} target(s), ${SECS} s each: no crash, hang or sanitizer report in saegap's code"
fi
