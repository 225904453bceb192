"""Test fixtures for saegap: tiny Gemma-2 models in the Hugging Face layout
Gemma2ForCausalLM saves (FAMILIES-FACTS.md section 2).

Written from the published format (config.json keys, tensor names, no
biases, tied embeddings), independently of saegap's C code.  Only NumPy is
used; the safetensors writer is saegap_fixtures.write_safetensors.

* `make_gemma2_model(dir, ...)`: a random, well-scaled model -> folder with
  config.json and model.safetensors (or two shards plus
  model.safetensors.index.json).
* `write_gemma2_folder(dir, config, tensors, ...)`: the writer behind it, for
  hand-made weights.
* `gemma2_config(...)`: config.json as Gemma2Config writes it.
"""

import os

import numpy as np

from saegap_fixtures import INDEX_NAME, SHARD_NAMES, TORCH_DTYPE, checkpoint_files, round_to_dtype, write_checkpoint

__all__ = ["make_gemma2_model", "write_gemma2_folder", "gemma2_config",
           "param_names", "SHARD_NAMES", "INDEX_NAME"]


def param_names(n_layer, lm_head=False):
    """The parameter tensors of Gemma2ForCausalLM, in module order (tied: no lm_head)."""
    names = ["model.embed_tokens.weight"]
    for l in range(n_layer):
        p = "model.layers.%d." % l
        names += [p + "input_layernorm.weight"]
        names += [p + "self_attn.%s.weight" % m for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [p + "post_attention_layernorm.weight", p + "pre_feedforward_layernorm.weight"]
        names += [p + "mlp.%s.weight" % m for m in ("gate_proj", "up_proj", "down_proj")]
        names += [p + "post_feedforward_layernorm.weight"]
    names += ["model.norm.weight"]
    if lm_head:
        names += ["lm_head.weight"]
    return names


def gemma2_config(n_layer=2, n_head=4, n_kv_heads=2, head_dim=16, hidden_size=48,
                  intermediate_size=96, vocab_size=211, sliding_window=6,
                  max_position_embeddings=64, attn_softcap=50.0, final_softcap=30.0,
                  query_pre_attn_scalar=16, rms_norm_eps=1e-6, dtype="F32",
                  rope_theta=10000.0, tie_word_embeddings=True):
    """config.json as Gemma2Config (transformers 4.4x) writes it."""
    return {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None if attn_softcap is None else float(attn_softcap),
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": None if final_softcap is None else float(final_softcap),
        "head_dim": int(head_dim),
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": int(hidden_size),
        "initializer_range": 0.02,
        "intermediate_size": int(intermediate_size),
        "max_position_embeddings": int(max_position_embeddings),
        "num_attention_heads": int(n_head),
        "num_hidden_layers": int(n_layer),
        "num_key_value_heads": int(n_kv_heads),
        "pad_token_id": 0,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "rms_norm_eps": float(rms_norm_eps),
        "rope_theta": float(rope_theta),
        "sliding_window": None if sliding_window is None else int(sliding_window),
        "tie_word_embeddings": bool(tie_word_embeddings),
        "torch_dtype": TORCH_DTYPE.get(dtype, "float32"),
        "transformers_version": "4.44.2",
        "use_cache": True,
        "vocab_size": int(vocab_size),
    }


def write_gemma2_folder(dir, config, tensors, dtype="F32", sharded=False):
    """Write config.json and the weights of a Gemma2ForCausalLM folder.

    `tensors`: {HF name: float array} (every name of param_names; plus
    lm_head.weight if given).  Single file: model.safetensors.
    sharded=True: SHARD_NAMES[0] holds embed_tokens and the first ceil(L/2)
    layers, SHARD_NAMES[1] the rest and model.norm (and lm_head);
    INDEX_NAME = {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}.

    Returns {name: float64 array of exactly the stored values}.
    """
    os.makedirs(dir, exist_ok=True)
    L = int(config["num_hidden_layers"])
    missing = [n for n in param_names(L) if n not in tensors]
    if missing:
        raise ValueError("missing tensors: %s" % missing)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    params = {k: round_to_dtype(v, dtype) for k, v in out.items()}
    write_checkpoint(dir, config, out, {k: dtype for k in out}, sharded, "model.embed_tokens.", "model.layers.", L)
    return params


def make_gemma2_model(dir, n_layer=2, n_head=4, n_kv_heads=2, head_dim=16, hidden_size=48,
                      intermediate_size=96, vocab_size=211, sliding_window=6,
                      max_position_embeddings=64, attn_softcap=50.0, final_softcap=30.0,
                      query_pre_attn_scalar=16, rms_norm_eps=1e-6, dtype="F32",
                      sharded=False, seed=0, n_outlier_rows=8):
    """Create a random Hugging Face Gemma-2 folder (Gemma2ForCausalLM).

    Defaults: hidden_size 48 != n_head * head_dim = 64 (as Gemma-2-2B's 2304
    vs 2048), GQA 4 query heads on 2 kv heads, sliding window 6 on layers
    0, 2, ....  Weight scales: embed_tokens N(0, 0.15) (hook_embed ~ N(0, 1)
    after the sqrt(48) normalizer); RMSNorm offsets w ~ N(0, 0.3); q_proj and
    k_proj N(0, 0.32) so raw attention scores (scale 16^-0.5) reach well
    above 10 and the 50 soft-cap changes them; v_proj, o_proj N(0, 0.2);
    gate/up N(0, 0.2), down N(0, 0.1).  The last `n_outlier_rows` rows of
    embed_tokens are 10x larger, so their (tied) logits are O(10), and up to
    ~70 where the input token is one of them: the 30 final soft-cap bites.

    Returns {"config", "params": {HF name: float64 array of exactly the
    stored values}, "dir", "model_path" (model.safetensors, or the index when
    sharded), "files", "dtype"}.
    """
    config = gemma2_config(n_layer, n_head, n_kv_heads, head_dim, hidden_size,
                           intermediate_size, vocab_size, sliding_window,
                           max_position_embeddings, attn_softcap, final_softcap,
                           query_pre_attn_scalar, rms_norm_eps, dtype)
    rng = np.random.Generator(np.random.PCG64(seed))
    D, V, F, H, KV, dh = hidden_size, vocab_size, intermediate_size, n_head, n_kv_heads, head_dim

    def nrm(shape, std):
        return std * rng.standard_normal(shape)

    t = {}
    E = nrm((V, D), 0.15)
    if n_outlier_rows:
        E[V - n_outlier_rows:] *= 10.0
    t["model.embed_tokens.weight"] = E
    for l in range(n_layer):
        p = "model.layers.%d." % l
        t[p + "input_layernorm.weight"] = nrm((D,), 0.3)
        t[p + "self_attn.q_proj.weight"] = nrm((H * dh, D), 0.32)
        t[p + "self_attn.k_proj.weight"] = nrm((KV * dh, D), 0.32)
        t[p + "self_attn.v_proj.weight"] = nrm((KV * dh, D), 0.2)
        t[p + "self_attn.o_proj.weight"] = nrm((D, H * dh), 0.2)
        t[p + "post_attention_layernorm.weight"] = nrm((D,), 0.3)
        t[p + "pre_feedforward_layernorm.weight"] = nrm((D,), 0.3)
        t[p + "mlp.gate_proj.weight"] = nrm((F, D), 0.2)
        t[p + "mlp.up_proj.weight"] = nrm((F, D), 0.2)
        t[p + "mlp.down_proj.weight"] = nrm((D, F), 0.1)
        t[p + "post_feedforward_layernorm.weight"] = nrm((D,), 0.3)
    t["model.norm.weight"] = nrm((D,), 0.3)

    params = write_gemma2_folder(dir, config, t, dtype=dtype, sharded=sharded)
    files, model_path = checkpoint_files(dir, sharded)
    return {"config": config, "params": params, "dir": str(dir), "model_path": model_path,
            "files": files, "dtype": dtype}
