"""Test fixtures for saegap: tiny Pythia (GPT-NeoX) models in the Hugging Face
layout GPTNeoXForCausalLM saves (FAMILIES-FACTS.md section 1).

Written from the published format (config.json keys, tensor names, the
per-head interleaved query_key_value rows, the buffers old transformers
versions saved), independently of saegap's C code.  Only NumPy is used; the
safetensors writer is saegap_fixtures.write_safetensors, which already writes
F32/F16/BF16 and the integer dtypes (U8 for the causal-mask buffer).

* `make_pythia_model(dir, ...)`: a random, well-scaled model -> folder with
  config.json and model.safetensors (or two shards plus
  model.safetensors.index.json).
* `write_pythia_folder(dir, config, tensors, ...)`: the writer behind it, for
  hand-made weights (tests/python/test_neox_reference.py's closed-form case).
* `qkv_row(h, s, j, d_head)`: the row of attention.query_key_value holding
  component j of q (s=0), k (s=1) or v (s=2) of head h.
"""

import os

import numpy as np

from saegap_fixtures import INDEX_NAME, SHARD_NAMES, TORCH_DTYPE, checkpoint_files, round_to_dtype, write_checkpoint

__all__ = ["make_pythia_model", "write_pythia_folder", "pythia_config",
           "param_names", "buffer_names", "qkv_row", "SHARD_NAMES",
           "INDEX_NAME"]


def qkv_row(h, s, j, d_head):
    """Row of query_key_value.{weight,bias} for head h, s (0=q, 1=k, 2=v),
    component j: the fused output is viewed [.., n_heads, 3*d_head]."""
    return h * 3 * d_head + s * d_head + j


def param_names(n_layer):
    """The parameter tensors of GPTNeoXForCausalLM, in module order."""
    names = ["gpt_neox.embed_in.weight"]
    for l in range(n_layer):
        p = "gpt_neox.layers.%d." % l
        for m in ("input_layernorm", "post_attention_layernorm"):
            names += [p + m + ".weight", p + m + ".bias"]
        for m in ("attention.query_key_value", "attention.dense",
                  "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"):
            names += [p + m + ".weight", p + m + ".bias"]
    names += ["gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias",
              "embed_out.weight"]
    return names


def buffer_names(layer):
    p = "gpt_neox.layers.%d.attention." % layer
    return [p + "bias", p + "masked_bias", p + "rotary_emb.inv_freq"]


def pythia_config(n_layer=2, n_head=4, hidden_size=64, intermediate_size=256,
                  rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=64,
                  vocab_size=211, layer_norm_eps=1e-5, use_parallel_residual=True,
                  dtype="F32"):
    """config.json as GPTNeoXConfig (transformers 4.x) writes it for Pythia."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": int(hidden_size),
        "initializer_range": 0.02,
        "intermediate_size": int(intermediate_size),
        "layer_norm_eps": float(layer_norm_eps),
        "max_position_embeddings": int(max_position_embeddings),
        "num_attention_heads": int(n_head),
        "num_hidden_layers": int(n_layer),
        "rotary_emb_base": rotary_emb_base,
        "rotary_pct": float(rotary_pct),
        "tie_word_embeddings": False,
        "torch_dtype": TORCH_DTYPE.get(dtype, "float32"),
        "transformers_version": "4.24.0",
        "use_cache": True,
        "use_parallel_residual": bool(use_parallel_residual),
        "vocab_size": int(vocab_size),
    }


def _buffers(config, dtype):
    """The buffers old transformers versions saved with every Pythia layer:
    attention.bias (U8 causal tril [1,1,P,P]), attention.masked_bias (0-dim
    F32, -1e9), attention.rotary_emb.inv_freq [rotary_ndims/2] (model dtype,
    as model.half() leaves it)."""
    P = int(config["max_position_embeddings"])
    H = int(config["num_attention_heads"])
    dh = int(config["hidden_size"]) // H
    r = int(dh * float(config["rotary_pct"]))
    base = float(config.get("rotary_emb_base", 10000))
    inv_freq = 1.0 / base ** (np.arange(0, r, 2, dtype=np.float64) / r)
    mask = np.tril(np.ones((P, P), dtype=np.uint8))[None, None]
    tensors, dts = {}, {}
    for l in range(int(config["num_hidden_layers"])):
        b, m, f = buffer_names(l)
        tensors[b], dts[b] = mask, "U8"
        tensors[m], dts[m] = np.array(-1e9), "F32"
        tensors[f], dts[f] = inv_freq, dtype
    return tensors, dts


def write_pythia_folder(dir, config, tensors, dtype="F32", sharded=False,
                        with_buffers=False):
    """Write config.json and the weights of a GPTNeoXForCausalLM folder.

    `tensors`: {HF name: float array} (every name of param_names).  Single
    file: model.safetensors.  sharded=True: SHARD_NAMES[0] holds embed_in and
    the first ceil(L/2) layers, SHARD_NAMES[1] the rest, the final LayerNorm
    and embed_out; INDEX_NAME = {"metadata": {"total_size": bytes of all
    tensors}, "weight_map": {name: shard file}} (buffers included, as
    save_pretrained lists every saved tensor).

    Returns {name: float64 array of exactly the stored values} (parameters
    only, no buffers).
    """
    os.makedirs(dir, exist_ok=True)
    L = int(config["num_hidden_layers"])
    missing = [n for n in param_names(L) if n not in tensors]
    if missing:
        raise ValueError("missing tensors: %s" % missing)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    dts = {k: dtype for k in out}
    if with_buffers:
        bt, bd = _buffers(config, dtype)
        out.update(bt)
        dts.update(bd)
    params = {k: round_to_dtype(tensors[k], dtype) for k in param_names(L)}
    write_checkpoint(dir, config, out, dts, sharded, "gpt_neox.embed_in.", "gpt_neox.layers.", L)
    return params


def make_pythia_model(dir, n_layer=2, n_head=4, hidden_size=64, intermediate_size=256,
                      rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=64,
                      vocab_size=211, layer_norm_eps=1e-5, use_parallel_residual=True,
                      dtype="F32", sharded=False, seed=0, tokenizer_vocab=None,
                      with_buffers=False):
    """Create a random Hugging Face Pythia folder (GPTNeoXForCausalLM).

    Weights are well scaled (LayerNorm weights 1 + N(0, 0.1), activations
    O(1), attention far from uniform) and chosen so that every basis detail
    is visible: nonzero LayerNorm biases, nonzero value biases, residual
    writes with a clearly nonzero mean over d_model (offsets on embed_in and
    on the dense / dense_4h_to_h biases).

    tokenizer_vocab: None (every row trained) or the tokenizer's size
    T < vocab_size: rows >= T of embed_in and embed_out are "untrained",
    N(0, 0.02) as GPTNeoX's init leaves them (Pythia: 50277 of 50304).  They
    stay in the softmax.  No tokenizer files are written.

    Returns {"config", "params": {HF name: float64 array of exactly the
    stored values}, "dir", "model_path" (model.safetensors, or the index when
    sharded), "files" (the safetensors files), "dtype", "tokenizer_vocab"}.
    """
    assert hidden_size % n_head == 0
    d_head = hidden_size // n_head
    rot = int(d_head * rotary_pct)
    assert rot % 2 == 0, "rotary_ndims must be even (rotate_half)"
    if tokenizer_vocab is not None:
        assert 0 < tokenizer_vocab <= vocab_size
    config = pythia_config(n_layer, n_head, hidden_size, intermediate_size, rotary_pct,
                           rotary_emb_base, max_position_embeddings, vocab_size,
                           layer_norm_eps, use_parallel_residual, dtype)
    rng = np.random.Generator(np.random.PCG64(seed))
    D, V, I, H, dh = hidden_size, vocab_size, intermediate_size, n_head, d_head

    def nrm(shape, std, mean=0.0):
        return mean + std * rng.standard_normal(shape)

    t = {}
    t["gpt_neox.embed_in.weight"] = nrm((V, D), 0.3) + 0.4 + nrm((V, 1), 0.3)
    for l in range(n_layer):
        p = "gpt_neox.layers.%d." % l
        t[p + "input_layernorm.weight"] = 1.0 + nrm((D,), 0.1)
        t[p + "input_layernorm.bias"] = nrm((D,), 0.1)
        t[p + "post_attention_layernorm.weight"] = 1.0 + nrm((D,), 0.1)
        t[p + "post_attention_layernorm.bias"] = nrm((D,), 0.1)
        # [H, 3, dh, D] -> rows h*3*dh + s*dh + j
        w = nrm((H, 3, dh, D), 0.2)
        w[:, 2] *= 0.5                       # W_V a bit smaller than W_Q / W_K
        b = nrm((H, 3, dh), 0.1)
        b[:, 2] += 0.2                       # clearly nonzero b_V
        t[p + "attention.query_key_value.weight"] = w.reshape(3 * D, D)
        t[p + "attention.query_key_value.bias"] = b.reshape(3 * D)
        t[p + "attention.dense.weight"] = nrm((D, D), 0.08)
        t[p + "attention.dense.bias"] = nrm((D,), 0.1) + 0.15
        t[p + "mlp.dense_h_to_4h.weight"] = nrm((I, D), 0.12)
        t[p + "mlp.dense_h_to_4h.bias"] = nrm((I,), 0.1)
        t[p + "mlp.dense_4h_to_h.weight"] = nrm((D, I), 0.06)
        t[p + "mlp.dense_4h_to_h.bias"] = nrm((D,), 0.1) - 0.1
    t["gpt_neox.final_layer_norm.weight"] = 1.0 + nrm((D,), 0.1)
    t["gpt_neox.final_layer_norm.bias"] = nrm((D,), 0.1)
    t["embed_out.weight"] = nrm((V, D), 0.3)
    if tokenizer_vocab is not None and tokenizer_vocab < V:
        n_pad = V - tokenizer_vocab
        t["gpt_neox.embed_in.weight"][tokenizer_vocab:] = nrm((n_pad, D), 0.02)
        t["embed_out.weight"][tokenizer_vocab:] = nrm((n_pad, D), 0.02)

    params = write_pythia_folder(dir, config, t, dtype=dtype, sharded=sharded,
                                 with_buffers=with_buffers)
    files, model_path = checkpoint_files(dir, sharded)
    return {"config": config, "params": params, "dir": str(dir), "model_path": model_path,
            "files": files, "dtype": dtype,
            "tokenizer_vocab": V if tokenizer_vocab is None else int(tokenizer_vocab)}
