"""Writes the real-size bench inputs of bench/realsize.sh, once, streaming (a few hundred MB of
RAM, never the model's 21 GB of float64 the test fixtures would take):

* a Gemma-2-2B-shaped checkpoint (26 layers, d_model 2304, d_mlp 9216, 8 query / 4 key-value heads
  of 256, vocab 256000) in the layout Gemma2ForCausalLM saves (FAMILIES-FACTS section 2: tensor
  names of tests/python/gemma_fixtures.py, no biases, tied embedding), random BF16 weights in
  three shards with model.safetensors.index.json, as google/gemma-2-2b ships;
* two Gemma Scope-shaped residual SAEs of width 16384 (FAMILIES-FACTS 4(a): params.npz with
  W_enc [2304, 16384], W_dec [16384, 2304] unit rows, b_enc, b_dec, threshold; float32) at
  gemma-scope-2b-pt-res/layer_{6,12}/width_16k/average_l0_50;
* tokens.npy: 2 contexts x 128 ids, BOS (2) first.

Usage: python3 bench/realsize_make.py DIR
"""
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from gemma_fixtures import gemma2_config, param_names  # noqa: E402

L, D, F, H, KV, DH, V = 26, 2304, 9216, 8, 4, 256, 256000
SAE_LAYERS, D_SAE = (6, 12), 16384
SHARDS = ["model-%05d-of-00003.safetensors" % i for i in (1, 2, 3)]
CHUNK = 1 << 24


def shape_and_std(name):
    if name == "model.embed_tokens.weight":
        return (V, D), 1 / 48.0  # hook_embed ~ N(0, 1) after the sqrt(2304) normalizer
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return (D,), 0.1
    leaf = name.split(".")[-2]
    return {"q_proj": ((H * DH, D), 0.02), "k_proj": ((KV * DH, D), 0.02), "v_proj": ((KV * DH, D), 0.02),
            "o_proj": ((D, H * DH), 0.02), "gate_proj": ((F, D), 0.02), "up_proj": ((F, D), 0.02),
            "down_proj": ((D, F), 0.01)}[leaf]


def shard_of(name):
    if name.startswith("model.layers."):
        layer = int(name.split(".")[2])
        return 0 if layer < 3 else 1 if layer < 15 else 2
    return 0 if name.startswith("model.embed_tokens") else 2


def bf16_bytes(x):
    """float32 -> BF16 bytes, round to nearest even (as torch's .to(torch.bfloat16))."""
    u = x.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2").tobytes()


def write_model(d):
    os.makedirs(d, exist_ok=True)
    names = param_names(L)
    rng = np.random.default_rng(0)
    weight_map, total = {}, 0
    for s, shard in enumerate(SHARDS):
        mine = [n for n in names if shard_of(n) == s]
        header, off = {}, 0
        for n in mine:
            shape, _ = shape_and_std(n)
            nbytes = int(np.prod(shape)) * 2
            header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            weight_map[n] = shard
        total += off
        header["__metadata__"] = {"format": "pt"}
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        path = os.path.join(d, shard)
        with open(path + ".part", "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for n in mine:
                shape, std = shape_and_std(n)
                left = int(np.prod(shape))
                while left:
                    k = min(left, CHUNK)
                    f.write(bf16_bytes(rng.standard_normal(k, dtype=np.float32) * np.float32(std)))
                    left -= k
        os.replace(path + ".part", path)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    cfg = gemma2_config(n_layer=L, n_head=H, n_kv_heads=KV, head_dim=DH, hidden_size=D, intermediate_size=F,
                        vocab_size=V, sliding_window=4096, max_position_embeddings=8192,
                        query_pre_attn_scalar=256, dtype="BF16")
    cfg["_name_or_path"] = "gemma-2-2b-shaped"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def write_saes(root):
    dirs = []
    for i, layer in enumerate(SAE_LAYERS):
        d = os.path.join(root, "gemma-scope-2b-pt-res", "layer_%d" % layer, "width_16k", "average_l0_50")
        dirs.append(d)
        if os.path.exists(os.path.join(d, "params.npz")):
            continue
        os.makedirs(d, exist_ok=True)
        rng = np.random.default_rng(100 + i)
        W_dec = rng.standard_normal((D_SAE, D), dtype=np.float32)
        W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
        np.savez(os.path.join(d, "params.npz"), W_enc=np.ascontiguousarray(W_dec.T),
                 W_dec=W_dec, b_enc=np.zeros(D_SAE, np.float32), b_dec=np.zeros(D, np.float32),
                 threshold=np.full(D_SAE, 0.05, np.float32))
    return dirs


def main():
    root = sys.argv[1]
    model = os.path.join(root, "gemma-2-2b-shaped")
    if not os.path.exists(os.path.join(model, "config.json")):
        write_model(model)
    write_saes(root)
    tok = os.path.join(root, "tokens.npy")
    if not os.path.exists(tok):
        ids = np.random.default_rng(0).integers(3, V, size=(2, 128)).astype("<i4")
        ids[:, 0] = 2
        np.save(tok, ids)


if __name__ == "__main__":
    main()
