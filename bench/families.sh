#!/usr/bin/env bash
# The clean forward + unembedding of each model family at the same width, against BLIS's sgemm
# rate measured in the same process (issue 15 point 6): GPT-2 small's shape (12 layers, d 768,
# vocab 50257) and Pythia-160m's (12 layers, d 768, intermediate 3072, partial rotary, parallel
# residual, untied 50304-row unembedding), random F32 weights written once into
# $SAEGAP_BENCH_DIR-{gpt2-small,pythia-160m}. Gemma-2's smallest model is 2304 wide; its
# shape at d 768 (Gemma-2 layout: GQA 12/4 heads of 64, GeGLU 3072, soft-caps) is the third.
#   Usage: bash bench/families.sh [THREADS (default 2)] [T (default 128)] [B (default 2)]
# Numbers: docs/performance.md ("Families").
set -euo pipefail
cd "$(dirname "$0")/.."
TH=${1:-2}; T=${2:-128}; B=${3:-2}
W=${SAEGAP_BENCH_DIR:-/tmp/saegap-bench}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null && cmake --build build -j > /dev/null
/usr/bin/python3 - "$W" <<'PY'
import os, sys, json
sys.path.insert(0, "tests/python")
import numpy as np
import saegap_fixtures as fx, neox_fixtures as nf
w = sys.argv[1]
if not os.path.exists(w + "-gpt2-small/model.safetensors"):
    fx.make_gpt2_model(w + "-gpt2-small", n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257, dtype="F32")
if not os.path.exists(w + "-pythia-160m/model.safetensors"):
    nf.make_pythia_model(w + "-pythia-160m", n_layer=12, n_head=12, hidden_size=768, intermediate_size=3072,
                         vocab_size=50304, max_position_embeddings=2048, dtype="F32")
d = w + "-gemma2-d768"
if not os.path.exists(d + "/model.safetensors"):
    os.makedirs(d, exist_ok=True)
    L, H, KV, dh, D, F, V = 12, 12, 4, 64, 768, 3072, 50257
    json.dump({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": D, "num_attention_heads": H,
               "num_key_value_heads": KV, "head_dim": dh, "intermediate_size": F, "num_hidden_layers": L, "vocab_size": V,
               "query_pre_attn_scalar": dh, "sliding_window": 4096, "max_position_embeddings": 2048,
               "torch_dtype": "float32"}, open(d + "/config.json", "w"))
    r = np.random.default_rng(0)
    t = {"model.embed_tokens.weight": r.standard_normal((V, D)) * 0.02, "model.norm.weight": np.zeros(D)}
    for l in range(L):
        p = "model.layers.%d." % l
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            t[p + n + ".weight"] = np.zeros(D)
        for n, s in (("self_attn.q_proj", (H * dh, D)), ("self_attn.k_proj", (KV * dh, D)), ("self_attn.v_proj", (KV * dh, D)),
                     ("self_attn.o_proj", (D, H * dh)), ("mlp.gate_proj", (F, D)), ("mlp.up_proj", (F, D)), ("mlp.down_proj", (D, F))):
            t[p + n + ".weight"] = r.standard_normal(s) * 0.02
    fx.write_safetensors(d + "/model.safetensors", t, dtype="F32")
PY
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "bench/families.sh: $TH thread(s), $B x $T tokens, $(date -u +%F)"
for m in gpt2-small pythia-160m gemma2-d768; do
  build/bench/bench_forward "$W-$m" "$T" "$B" "$TH" | grep -E '^model|sgemm alone|clean pass'
done
