#!/usr/bin/env bash
# Benchmarks the forward pass against BLIS's own GEMM rate on a GPT-2-small-shaped model
# (random weights in the real on-disk format, made once in /tmp). Numbers: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j --target bench_forward > /dev/null
M=/tmp/saegap-bench-gpt2-small
if [ ! -f $M/model.safetensors ]; then
  /usr/bin/python3 -c "
import sys; sys.path.insert(0, 'tests/python'); import saegap_fixtures as fx
fx.make_gpt2_model('$M', n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, dtype='F32')"
fi
for th in 1 2; do build/bench/bench_forward $M 128 2 $th; done
