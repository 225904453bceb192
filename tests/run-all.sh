#!/usr/bin/env bash
# Builds saegap twice (warnings as errors; AddressSanitizer + UBSan) and runs every test
# against both builds. Used by the README's second command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc 2>/dev/null || echo 2)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI leaks by design at exit; leak checking would only report MPI's own allocations.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

for variant in release asan; do
  dir=build-ci-$variant
  flags=(-DSAEGAP_WERROR=ON)
  [ "$variant" = asan ] && flags+=(-DSAEGAP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  echo "== tests/run-all.sh: $variant build ($dir)"
  cmake -S . -B "$dir" "${flags[@]}" > "$dir.cmake.log" 2>&1 || { cat "$dir.cmake.log"; exit 1; }
  cmake --build "$dir" -j "$JOBS"
  # release only: the disk-full test checks I/O behaviour, the same in both builds; the libhdf5
  # findings are memory errors inside libhdf5 that ASan reports (and the fuzz run judges)
  # (py_multihost, saegap across fake hosts, is not even registered in the ASan build: tests/CMakeLists.txt)
  skip=()
  [ "$variant" = asan ] && skip=(-E 'py_disk_full|py_libhdf5_findings|py_multihost')
  ctest --test-dir "$dir" --output-on-failure "${skip[@]}"
done
# The bad-input tests again as an unprivileged user (permissions, unreadable files and folders
# only show without root): from a copy that user can read, against the release build.
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
  echo "== tests/run-all.sh: bad-input tests as user nobody"
  un=$(mktemp -d /tmp/saegap-unpriv.XXXXXX)
  mkdir -p "$un/tests"
  cp -r tests/python "$un/tests/python"
  cp -r src include jobs "$un/"
  cp build-ci-release/saegap "$un/saegap"
  chmod -R a+rX "$un"
  chmod 1777 "$un"
  as_nobody() { runuser -u nobody -- env HOME="$un" TMPDIR="$un" SAEGAP_BIN="$un/saegap" \
                 /usr/bin/python3 -m pytest -q -p no:cacheprovider "$@"; }
  as_nobody "$un/tests/python/test_errors.py" "$un/tests/python/test_hostile_inputs.py"
  as_nobody "$un/tests/python/test_run.py" -k "test_error_"
  rm -rf "$un"
fi
# jobs/slurm.sh on a real one-node Slurm (short form, about 1 minute; --long in
# tests/slurm/README.md): it installs slurm and munge and starts daemons, so it needs root.
if [ "$(id -u)" = 0 ]; then
  echo "== tests/run-all.sh: jobs/slurm.sh on a one-node Slurm (tests/slurm/run-slurm-test.sh)"
  SAEGAP_BIN=$PWD/build-ci-release/saegap bash tests/slurm/run-slurm-test.sh
else
  echo "== tests/run-all.sh: NOT RUN: tests/slurm/run-slurm-test.sh needs root (it installs and starts Slurm)" >&2
fi
# libFuzzer targets of every parser of user input (clang-14, ASan + UBSan): the seeds and saved
# inputs, then 20000 mutations per target from fixed seeds (about 8 minutes with the build). Only
# this deterministic replay gates: open-ended fuzzing finds new inputs at random, so it runs
# apart (bash tests/fuzz/run.sh SECONDS; docs/testing.md, "Long runs").
echo "== tests/run-all.sh: fuzzing, deterministic replay (tests/fuzz/run.sh --replay)"
bash tests/fuzz/run.sh --replay
echo "== tests/run-all.sh: all tests passed"
