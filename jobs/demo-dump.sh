#!/usr/bin/env bash
# The main job for now: build saegap, make a small GPT-2-architecture model in the real
# Hugging Face on-disk format (the same generator the tests use), and dump every
# TransformerLens hook site of it with 2 MPI ranks into out/demo/dump.h5.
# (Becomes the full demo sweep on the embedded model once `saegap run` lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build > /dev/null
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" > /dev/null
mkdir -p out/demo
rm -f out/demo/dump.h5
/usr/bin/python3 - <<'PY'
import sys
sys.path.insert(0, "tests/python")
import saegap_fixtures as fx
fx.make_gpt2_model("out/demo/model", n_layer=4, n_head=4, n_embd=128, n_positions=128,
                   vocab_size=50257, dtype="F16", seed=0)
tokens = fx.random_tokens(16, 128, 50257, seed=1, bos=50256)
fx.write_tokens_npy("out/demo/tokens.npy", tokens)
PY
mpirun --oversubscribe --allow-run-as-root -np 2 build/saegap dump \
  --model out/demo/model --tokens out/demo/tokens.npy --sites all --logits --out out/demo/dump.h5
/usr/bin/python3 - <<'PY'
import h5py
with h5py.File("out/demo/dump.h5") as f:
    print(f"out/demo/dump.h5: complete={f.attrs['complete']}, basis={f.attrs['basis']}, "
          f"{len(f.keys()) - 1} datasets:")
    for k in sorted(f.keys()):
        print(f"  {k:32s} {f[k].dtype} {f[k].shape}")
PY
