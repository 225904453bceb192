#!/bin/sh
# Rebuilds everything under jobs/demo/ from public packages, end to end, fixed seeds.
# Needs (Debian 12): python3-torch python3-regex python3-numpy python3-h5py, npm,
# and a fast BLAS as the libblas.so.3 alternative (libblis4-openmp or libopenblas0):
# with the reference BLAS torch is 10-50x slower.
# Takes ~15-30 min on 2 cores. Results match the shipped files up to float
# summation order (BLAS threading), not bit for bit.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export BLIS_NUM_THREADS="${BLIS_NUM_THREADS:-2}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY=/usr/bin/python3   # Debian's python: the one that sees python3-torch
TEXT=$(sh ./get_text.sh /tmp/saegap-demo-text)
$PY bpe.py
$PY train_model.py "$TEXT"      # -> ../model, ../tokens.npy, ../model_metrics.json
$PY train_saes.py "$TEXT"       # -> ../saes, ../sae_metrics.json
SAEGAP="$HERE/../../../build/saegap"
if [ -x "$SAEGAP" ]; then $PY check_saegap.py "$SAEGAP" 32; fi
