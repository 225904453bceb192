"""Float64 NumPy reference for saegap's Gemma-2 forward pass and hook values.

Written from the formulas only (Gemma2ForCausalLM as Hugging Face implements
it, eager attention, and TransformerLens's Gemma-2 hooks, as summarised in
FAMILIES-FACTS.md sections 2 and 3), independently of saegap's C code.  It is
the yardstick the C program is tested against, so it must never be derived
from the C implementation.  Same API and style as neox_reference.py.

Gemma-2 (W is [out, in], PyTorch Linear layout; no biases anywhere):
    h     = embed[tok] * normalizer                    (hook_embed = blocks.0.hook_resid_pre)
            normalizer = sqrt(D) rounded to the compute dtype, float32 (embed_normalizer)
    per layer l:
    a     = RMS_in(h)
    q     = a Wq^T [.., H, dh], k = a Wk^T, v = a Wv^T [.., KV, dh]   (heads = contiguous dh rows)
    q, k  = rotary on all dh dims, rotate_half halves, base rope_theta, positions 0..T-1
    s     = q_h k_g^T * query_pre_attn_scalar^-0.5,   g = h // (H / KV)   (repeat_kv)
    s     = cap * tanh(s / cap)                         (attn_logit_softcapping; None/0 = off)
    mask  = causal; on sliding layers also i - sliding_window < j <= i
            (sliding layers: layer_types[l] == "sliding_attention" if the config
            has layer_types, else l % 2 == 0, i.e. layers 0, 2, 4, ... slide)
    z_h   = softmax(s) v_g                              (attn.hook_z, [B,T,H*dh] head-major)
    attn  = RMS_postattn(z Wo^T)                        (hook_attn_out: after the post norm)
    h     = h + attn                                    (hook_resid_mid)
    m     = RMS_preff(h)
    post  = gelu_tanh(m Wgate^T) * (m Wup^T)            (mlp.hook_post, width F)
    mlp   = RMS_postff(post Wdown^T)                    (hook_mlp_out: after the post norm)
    h     = h + mlp                                     (hook_resid_post)
logits = final_cap * tanh((RMS_final(h) @ U^T) / final_cap)   (final_logit_softcapping; None/0 = off)
    U = model.embed_tokens.weight (the unscaled matrix: tied), or lm_head.weight
    when tie_word_embeddings is false and that tensor exists.
logprobs = log_softmax over all vocab_size entries of the soft-capped logits.

RMSNorm(x; w) = x * rsqrt(mean(x^2) + eps) * (1 + w)   (the stored w is an offset).
gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))  (gelu_pytorch_tanh).

Precision choices (where HF's float32/bfloat16 arithmetic and this float64
reference differ):
* Everything is float64 on the stored tensor values (HF runs RMSNorm, the
  softmax and the rotary angles in float32, the rest in the model dtype).
* The embedding normalizer is the one value HF and TransformerLens round
  explicitly: torch.tensor(hidden_size**0.5, dtype=D) with D the *compute*
  dtype (HF: the hidden states' dtype; TL convert_gemma_weights: its
  cfg.dtype, float32 by default), whatever the dtype the checkpoint is stored
  in (FAMILIES-FACTS section 2, corrected 2026-12-07).  A float32 forward of
  a BF16 or F16 file, as saegap, TransformerLens and SAELens run it, uses
  float32(sqrt D).  The rounding is a visible per-model constant (bf16(sqrt
  2304) = 48 exactly, but bf16(sqrt 48) = 6.9375 vs 6.9282; bf16(sqrt 3584),
  gemma-2-9b, = 59.75 vs 59.8665), so embed_normalizer takes the compute
  dtype (float32 by default; bfloat16, float16, float64 = exact) and never
  reads torch_dtype.  The product embed * normalizer itself is not rounded.
  Until 2026-12-07 this reference (and saegap) rounded to config.json's
  torch_dtype, i.e. the storage dtype: wrong for a float32 forward.

basis="processed": TransformerLens's default processing does not change any
Gemma-2 hook (FAMILIES-FACTS section 3): fold_ln folds the RMSNorm weights
(1 + w) into the reading weights and leaves RMSPre (no centring for RMSNorm),
center_writing_weights is skipped for RMSNorm models, center_unembed is
refused with an output soft-cap, and fold_value_biases is a no-op without
biases.  forward(basis="processed") therefore returns exactly the raw path
(hf_forward).  process_weights + tl_forward implement the folded model
explicitly; test_gemma_reference.py checks that it agrees with the raw path
to float64 rounding.
"""

import math

import numpy as np

# the family-independent parts: the safetensors reader, the loader's strictness, the hooks, small ops
from reference_common import (batch_tokens, check_tensors, gelu_erf, gelu_tanh, hooked, load_checkpoint,
                              load_safetensors, log_softmax)  # noqa: F401  (load_safetensors: part of this module's API)

__all__ = ["load_safetensors", "load_model", "model_dims", "embed_normalizer",
           "sliding_layers", "attention_mask", "apply_rotary", "rms_norm",
           "gelu_tanh", "softcap", "log_softmax", "forward", "hf_forward",
           "site_names", "extra_site_names", "RESID_SITES", "param_names",
           "expected_shapes", "convert_gemma_weights", "process_weights",
           "tl_forward"]

RESID_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post",
               "hook_attn_out", "hook_mlp_out")

# Gemma2Config defaults (= gemma-2-2b), used for keys a config.json omits, as HF would
_DEFAULTS = {
    "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0, "sliding_window": 4096, "rope_theta": 10000.0,
    "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
}


# ---------------------------------------------------------------- config

def _get(config, key):
    return config[key] if key in config else _DEFAULTS[key]


def _cap(v):
    """None / 0 = no soft-cap."""
    return None if v is None or float(v) == 0.0 else float(v)


def model_dims(config):
    """config.json -> dict:
    D hidden_size, H num_attention_heads, KV num_key_value_heads, dh head_dim
    (not D/H in general), F (= I) intermediate_size, L num_hidden_layers,
    V vocab_size, eps rms_norm_eps, qscalar query_pre_attn_scalar,
    attn_cap attn_logit_softcapping and final_cap final_logit_softcapping
    (None when null or 0: off), window sliding_window (None: no window),
    base rope_theta (or v5 rope_parameters.rope_theta), act
    hidden_activation, tied (tie_word_embeddings), sliding [bool per layer].
    Missing keys take Gemma2Config's defaults."""
    D = int(config["hidden_size"])
    H = int(config["num_attention_heads"])
    KV = int(_get(config, "num_key_value_heads"))
    if H % KV:
        raise ValueError("num_attention_heads %d not a multiple of num_key_value_heads %d" % (H, KV))
    rope = config.get("rope_parameters") or {}
    base = config["rope_theta"] if "rope_theta" in config else rope.get("rope_theta", 10000.0)
    win = _get(config, "sliding_window")
    F = int(config["intermediate_size"])
    act = config.get("hidden_activation") or config.get("hidden_act") or _DEFAULTS["hidden_activation"]
    d = {
        "L": int(config["num_hidden_layers"]), "D": D, "H": H, "KV": KV,
        "dh": int(_get(config, "head_dim")), "F": F, "I": F,
        "V": int(config["vocab_size"]),
        "eps": float(_get(config, "rms_norm_eps")),
        "qscalar": float(_get(config, "query_pre_attn_scalar")),
        "attn_cap": _cap(_get(config, "attn_logit_softcapping")),
        "final_cap": _cap(_get(config, "final_logit_softcapping")),
        "window": None if win is None else int(win),
        "base": float(base),
        "act": act,
        "tied": bool(_get(config, "tie_word_embeddings")),
    }
    d["sliding"] = sliding_layers(config, d["L"])
    return d


def sliding_layers(config, n_layer=None):
    """[bool per layer]: True = sliding-window attention.  v5 configs list
    layer_types ("sliding_attention" / "full_attention"); otherwise layer l
    slides iff l % 2 == 0 (Gemma2Attention: not bool(layer_idx % 2))."""
    L = int(config["num_hidden_layers"]) if n_layer is None else n_layer
    lt = config.get("layer_types")
    if lt:
        if len(lt) != L:
            raise ValueError("layer_types has %d entries for %d layers" % (len(lt), L))
        return [t == "sliding_attention" for t in lt]
    return [l % 2 == 0 for l in range(L)]


def embed_normalizer(config, compute_dtype="float32"):
    """sqrt(hidden_size) as torch.tensor(sqrt(D), dtype=compute_dtype):
    rounded to float32 (the default: saegap's and TransformerLens's forward),
    bfloat16 or float16; exact for float64.  The dtype the checkpoint is
    stored in (config.json's torch_dtype) plays no part: see the module
    docstring."""
    x = math.sqrt(int(config["hidden_size"]))
    dt = str(compute_dtype).replace("torch.", "")
    if dt in ("float32", "float"):
        return float(np.float32(x))
    if dt in ("float16", "half"):
        return float(np.float16(np.float32(x)))
    if dt == "bfloat16":
        u = int(np.array(x, dtype=np.float32).view(np.uint32))
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16          # round to nearest even
        return float(np.array(u << 16, dtype=np.uint32).view(np.float32))
    if dt in ("float64", "double"):
        return x
    raise ValueError("compute dtype %r" % dt)


# ---------------------------------------------------------------- loading

def param_names(config):
    """The parameter tensors of Gemma2ForCausalLM (tied: no lm_head), in module order."""
    L = int(config["num_hidden_layers"])
    names = ["model.embed_tokens.weight"]
    for l in range(L):
        p = "model.layers.%d." % l
        names += [p + "input_layernorm.weight"]
        names += [p + "self_attn.%s.weight" % m for m in ("q_proj", "k_proj", "v_proj", "o_proj")]
        names += [p + "post_attention_layernorm.weight", p + "pre_feedforward_layernorm.weight"]
        names += [p + "mlp.%s.weight" % m for m in ("gate_proj", "up_proj", "down_proj")]
        names += [p + "post_feedforward_layernorm.weight"]
    return names + ["model.norm.weight"]


def expected_shapes(config):
    """{HF name: shape} of every required tensor (lm_head.weight is optional, [V, D])."""
    d = model_dims(config)
    D, H, KV, dh, F, V = d["D"], d["H"], d["KV"], d["dh"], d["F"], d["V"]
    s = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for l in range(d["L"]):
        p = "model.layers.%d." % l
        for m in ("input_layernorm", "post_attention_layernorm",
                  "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            s[p + m + ".weight"] = (D,)
        s[p + "self_attn.q_proj.weight"] = (H * dh, D)
        s[p + "self_attn.k_proj.weight"] = (KV * dh, D)
        s[p + "self_attn.v_proj.weight"] = (KV * dh, D)
        s[p + "self_attn.o_proj.weight"] = (D, H * dh)
        s[p + "mlp.gate_proj.weight"] = (F, D)
        s[p + "mlp.up_proj.weight"] = (F, D)
        s[p + "mlp.down_proj.weight"] = (D, F)
    return s


def _is_buffer(name):
    return name.endswith(".rotary_emb.inv_freq")


def load_model(dir):
    """-> (config dict, params {HF tensor name: float64 array}).

    Reads model.safetensors, else model.safetensors.index.json and its
    shards.  F64/F32/F16/BF16 tensors load as the exact stored values.
    rotary_emb.inv_freq buffers are ignored; lm_head.weight [V, D] is
    accepted (used only when tie_word_embeddings is false); any other
    unexpected tensor, a missing one or a wrong shape is an error.
    """
    config, t = load_checkpoint(dir)
    d = model_dims(config)
    return config, check_tensors(t, expected_shapes(config), _is_buffer,
                                 optional={"lm_head.weight": (d["V"], d["D"])})


# ---------------------------------------------------------------- ops

def rms_norm(x, w, eps):
    """Gemma2RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w)."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)


def _rms_scale(x, eps):
    return np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def _activation(name):
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh"):
        return gelu_tanh
    if name == "gelu":                       # Gemma2 uses ACT2FN[hidden_activation] as is
        return gelu_erf
    raise ValueError("hidden_activation %r" % (name,))


def softcap(x, cap):
    """cap * tanh(x / cap); cap None (or 0) = identity."""
    if cap is None or cap == 0:
        return x
    return cap * np.tanh(x / cap)


def apply_rotary(x, positions, base=10000.0):
    """Rotary on all d_head dims of x [..., T, heads, d_head] (rotate_half halves):
    inv_freq[i] = base^(-2i/d_head), i < d_head/2; emb = [freqs, freqs];
    out = x cos + rotate_half(x) sin with rotate_half(y) = [-y[d/2:], y[:d/2]]."""
    x = np.asarray(x, dtype=np.float64)
    dh = x.shape[-1]
    assert dh % 2 == 0, dh
    inv_freq = 1.0 / base ** (np.arange(0, dh, 2, dtype=np.float64) / dh)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None]  # [T, dh/2]
    emb = np.concatenate([freqs, freqs], -1)[:, None, :]                  # [T, 1, dh]
    half = dh // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def attention_mask(T, sliding, window):
    """[T, T] bool, True = key j visible from query i: j <= i, and on a
    sliding layer also j > i - window (HF: tril(ones, diagonal=-window) is
    masked out, so exactly `window` keys including i itself remain)."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    m = j <= i
    if sliding and window is not None:
        m &= j > i - window
    return m


def _attention(q, k, v, d, sliding):
    """q [B,T,H,dh], k, v [B,T,KV,dh] (rotated) -> z [B,T,H,dh],
    scores (scaled, soft-capped, masked with -inf) and pattern [B,H,T,T]."""
    H, KV = d["H"], d["KV"]
    T = q.shape[1]
    g = np.arange(H) // (H // KV)                       # repeat_kv: q head h -> kv head h // (H/KV)
    kk, vv = k[:, :, g], v[:, :, g]
    s = np.einsum("bqhe,bkhe->bhqk", q, kk) * d["qscalar"] ** -0.5
    s = softcap(s, d["attn_cap"])
    s = np.where(attention_mask(T, sliding, d["window"]), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    pattern = e / e.sum(-1, keepdims=True)
    z = np.einsum("bhqk,bkhe->bqhe", pattern, vv)
    return z, s, pattern


# ---------------------------------------------------------------- hooks

def site_names(config):
    """The hook names forward() returns, in forward order: hook_embed, then
    per layer hook_resid_pre, attn.hook_z, hook_attn_out, hook_resid_mid,
    mlp.hook_post, hook_mlp_out, hook_resid_post.  No hook_pos_embed."""
    names = ["hook_embed"]
    for l in range(int(config["num_hidden_layers"])):
        b = "blocks.%d." % l
        names += [b + s for s in ("hook_resid_pre", "attn.hook_z", "hook_attn_out",
                                  "hook_resid_mid", "mlp.hook_post", "hook_mlp_out",
                                  "hook_resid_post")]
    return names


def extra_site_names(config):
    """Further values, returned with extra_hooks=True: attn.hook_q and
    hook_rot_q [B,T,H,dh], attn.hook_{k,v,rot_k} [B,T,KV,dh],
    attn.hook_attn_scores (scaled, soft-capped, masked with -inf) and
    attn.hook_pattern [B,H,T,T], mlp.hook_pre (gate pre-activation) and
    mlp.hook_pre_linear (up projection) [B,T,F], ln{1,2}.hook_scale
    [B,T,1] (sqrt(mean x^2 + eps)), ln_final.hook_normalized, logits_uncapped
    and logits (soft-capped) [B,T,V]."""
    names = []
    for l in range(int(config["num_hidden_layers"])):
        b = "blocks.%d." % l
        names += [b + "attn.hook_" + s for s in ("q", "k", "v", "rot_q", "rot_k",
                                                  "attn_scores", "pattern")]
        names += [b + "mlp.hook_pre", b + "mlp.hook_pre_linear",
                  b + "ln1.hook_scale", b + "ln2.hook_scale"]
    return names + ["ln_final.hook_normalized", "logits_uncapped", "logits"]


def _unembed(config, params):
    d = model_dims(config)
    if not d["tied"] and "lm_head.weight" in params:
        return params["lm_head.weight"]
    return params["model.embed_tokens.weight"]


# ---------------------------------------------------------------- HF forward (raw)

def hf_forward(config, params, tokens, extra_hooks=False, patch=None):
    """Gemma2ForCausalLM's forward (eager attention) on the HF tensors -> (acts, logprobs)."""
    d = model_dims(config)
    L, H, KV, dh, eps = d["L"], d["H"], d["KV"], d["dh"], d["eps"]
    act = _activation(d["act"])
    P = params
    tokens = batch_tokens(tokens)
    B, T = tokens.shape
    if tokens.min() < 0 or tokens.max() >= d["V"]:
        raise ValueError("token id out of range")
    pos = np.arange(T)
    acts = {}
    x = P["model.embed_tokens.weight"][tokens] * embed_normalizer(config)
    x = hooked(acts, patch, "hook_embed", x)
    for l in range(L):
        p, b = "model.layers.%d." % l, "blocks.%d." % l
        x = hooked(acts, patch, b + "hook_resid_pre", x)
        a = rms_norm(x, P[p + "input_layernorm.weight"], eps)
        q = (a @ P[p + "self_attn.q_proj.weight"].T).reshape(B, T, H, dh)
        k = (a @ P[p + "self_attn.k_proj.weight"].T).reshape(B, T, KV, dh)
        v = (a @ P[p + "self_attn.v_proj.weight"].T).reshape(B, T, KV, dh)
        rq, rk = apply_rotary(q, pos, d["base"]), apply_rotary(k, pos, d["base"])
        z, scores, pattern = _attention(rq, rk, v, d, d["sliding"][l])
        z = hooked(acts, patch, b + "attn.hook_z", z.reshape(B, T, H * dh))
        attn_out = rms_norm(z @ P[p + "self_attn.o_proj.weight"].T,
                            P[p + "post_attention_layernorm.weight"], eps)
        attn_out = hooked(acts, patch, b + "hook_attn_out", attn_out)
        mid = hooked(acts, patch, b + "hook_resid_mid", x + attn_out)
        m = rms_norm(mid, P[p + "pre_feedforward_layernorm.weight"], eps)
        gate = m @ P[p + "mlp.gate_proj.weight"].T
        up = m @ P[p + "mlp.up_proj.weight"].T
        post = hooked(acts, patch, b + "mlp.hook_post", act(gate) * up)
        mlp_out = rms_norm(post @ P[p + "mlp.down_proj.weight"].T,
                           P[p + "post_feedforward_layernorm.weight"], eps)
        mlp_out = hooked(acts, patch, b + "hook_mlp_out", mlp_out)
        x = hooked(acts, patch, b + "hook_resid_post", mid + mlp_out)
        if extra_hooks:
            acts[b + "attn.hook_q"], acts[b + "attn.hook_k"], acts[b + "attn.hook_v"] = q, k, v
            acts[b + "attn.hook_rot_q"], acts[b + "attn.hook_rot_k"] = rq, rk
            acts[b + "attn.hook_attn_scores"], acts[b + "attn.hook_pattern"] = scores, pattern
            acts[b + "mlp.hook_pre"], acts[b + "mlp.hook_pre_linear"] = gate, up
            acts[b + "ln1.hook_scale"] = _rms_scale(acts[b + "hook_resid_pre"], eps)
            acts[b + "ln2.hook_scale"] = _rms_scale(mid, eps)
    xf = rms_norm(x, P["model.norm.weight"], eps)
    raw_logits = xf @ _unembed(config, P).T
    logits = softcap(raw_logits, d["final_cap"])
    if extra_hooks:
        acts["ln_final.hook_normalized"] = xf
        acts["logits_uncapped"] = raw_logits
        acts["logits"] = logits
    return acts, log_softmax(logits)


# ---------------------------------------------------------------- TransformerLens (processed)

def convert_gemma_weights(config, params):
    """TL convert_gemma_weights in NumPy: HF tensors -> TL state dict.
    W_E = embed * normalizer (sqrt(d) folded in), ln*.w = 1 + w, W_Q [H, D, dh],
    _W_K/_W_V [KV, D, dh], W_O [H, dh, D], W_in = up^T, W_gate = gate^T,
    W_out = down^T, W_U = unembed^T."""
    d = model_dims(config)
    H, KV, D, dh = d["H"], d["KV"], d["D"], d["dh"]
    P = params
    sd = {"embed.W_E": P["model.embed_tokens.weight"] * embed_normalizer(config)}
    for l in range(d["L"]):
        p, b = "model.layers.%d." % l, "blocks.%d." % l
        sd[b + "ln1.w"] = 1.0 + P[p + "input_layernorm.weight"]
        sd[b + "ln1_post.w"] = 1.0 + P[p + "post_attention_layernorm.weight"]
        sd[b + "ln2.w"] = 1.0 + P[p + "pre_feedforward_layernorm.weight"]
        sd[b + "ln2_post.w"] = 1.0 + P[p + "post_feedforward_layernorm.weight"]
        sd[b + "attn.W_Q"] = P[p + "self_attn.q_proj.weight"].reshape(H, dh, D).transpose(0, 2, 1).copy()
        sd[b + "attn._W_K"] = P[p + "self_attn.k_proj.weight"].reshape(KV, dh, D).transpose(0, 2, 1).copy()
        sd[b + "attn._W_V"] = P[p + "self_attn.v_proj.weight"].reshape(KV, dh, D).transpose(0, 2, 1).copy()
        sd[b + "attn.W_O"] = P[p + "self_attn.o_proj.weight"].reshape(D, H, dh).transpose(1, 2, 0).copy()
        sd[b + "mlp.W_in"] = P[p + "mlp.up_proj.weight"].T.copy()
        sd[b + "mlp.W_gate"] = P[p + "mlp.gate_proj.weight"].T.copy()
        sd[b + "mlp.W_out"] = P[p + "mlp.down_proj.weight"].T.copy()
    sd["ln_final.w"] = 1.0 + P["model.norm.weight"]
    sd["unembed.W_U"] = _unembed(config, P).T.copy()
    return sd


def process_weights(sd, config):
    """TL's default processing for Gemma-2 -> (state dict, 'RMSPre').
    fold_ln: ln1.w into W_Q/_W_K/_W_V (rows over d_model), ln2.w into W_in
    and W_gate, ln_final.w into W_U; no centring (RMSNorm).  ln1_post and
    ln2_post stay.  center_writing_weights: skipped (RMS).  center_unembed:
    refused (output soft-cap).  fold_value_biases: no biases, no-op."""
    sd = {k: v.copy() for k, v in sd.items()}
    for l in range(model_dims(config)["L"]):
        b = "blocks.%d." % l
        w = sd.pop(b + "ln1.w")
        for c in ("attn.W_Q", "attn._W_K", "attn._W_V"):
            sd[b + c] = sd[b + c] * w[None, :, None]
        w = sd.pop(b + "ln2.w")
        for c in ("mlp.W_in", "mlp.W_gate"):
            sd[b + c] = sd[b + c] * w[:, None]
    w = sd.pop("ln_final.w")
    sd["unembed.W_U"] = sd["unembed.W_U"] * w[:, None]
    return sd, "RMSPre"


def tl_forward(config, sd, tokens, normalization_type="RMS", extra_hooks=False, patch=None):
    """HookedTransformer's forward for a Gemma-2 config on a TL state dict
    (convert_gemma_weights, optionally process_weights) -> (acts, logprobs).
    normalization_type 'RMS' (unprocessed) or 'RMSPre' (after fold_ln);
    ln1_post / ln2_post are always RMSNorm with their weights."""
    d = model_dims(config)
    L, H, dh, eps = d["L"], d["H"], d["dh"], d["eps"]
    act = _activation(d["act"])
    tokens = batch_tokens(tokens)
    B, T = tokens.shape
    pos = np.arange(T)
    acts = {}

    def ln(x, prefix, pre_ok=True):
        y = x / _rms_scale(x, eps)
        if normalization_type == "RMS" or not pre_ok:
            y = y * sd[prefix + ".w"]
        return y

    resid = hooked(acts, patch, "hook_embed", sd["embed.W_E"][tokens])
    for l in range(L):
        b = "blocks.%d." % l
        resid = hooked(acts, patch, b + "hook_resid_pre", resid)
        x = ln(resid, b + "ln1")
        q = np.einsum("btd,hde->bthe", x, sd[b + "attn.W_Q"])
        k = np.einsum("btd,hde->bthe", x, sd[b + "attn._W_K"])
        v = np.einsum("btd,hde->bthe", x, sd[b + "attn._W_V"])
        z, scores, pattern = _attention(apply_rotary(q, pos, d["base"]),
                                        apply_rotary(k, pos, d["base"]), v, d, d["sliding"][l])
        z = hooked(acts, patch, b + "attn.hook_z", z.reshape(B, T, H * dh)).reshape(B, T, H, dh)
        attn_out = ln(np.einsum("bthe,hed->btd", z, sd[b + "attn.W_O"]), b + "ln1_post", False)
        attn_out = hooked(acts, patch, b + "hook_attn_out", attn_out)
        resid = hooked(acts, patch, b + "hook_resid_mid", resid + attn_out)
        x2 = ln(resid, b + "ln2")
        post = hooked(acts, patch, b + "mlp.hook_post",
                       act(x2 @ sd[b + "mlp.W_gate"]) * (x2 @ sd[b + "mlp.W_in"]))
        mlp_out = ln(post @ sd[b + "mlp.W_out"], b + "ln2_post", False)
        mlp_out = hooked(acts, patch, b + "hook_mlp_out", mlp_out)
        resid = hooked(acts, patch, b + "hook_resid_post", resid + mlp_out)
        if extra_hooks:
            acts[b + "attn.hook_attn_scores"], acts[b + "attn.hook_pattern"] = scores, pattern
    logits = softcap(ln(resid, "ln_final") @ sd["unembed.W_U"], d["final_cap"])
    if extra_hooks:
        acts["logits"] = logits
    return acts, log_softmax(logits)


# ---------------------------------------------------------------- entry point

def forward(config, params, tokens, basis="raw", extra_hooks=False, patch=None):
    """Gemma-2 forward in float64 -> (acts, logprobs).

    acts: {TransformerLens hook name: float64 [B, T, ...]} for
    site_names(config) (plus extra_site_names(config) when extra_hooks);
    attn.hook_z is [B, T, H*head_dim], head-major (KV heads repeated).
    logprobs: log_softmax over all vocab_size soft-capped logits, [B, T, V].

    basis "raw": Hugging Face activations (hf_forward).
    basis "processed": identical to "raw" by construction -- this returns
    the raw path itself.  TransformerLens's default processing does not move
    any Gemma-2 hook: fold_ln folds the RMSNorm weights only (RMSPre, no
    centring), center_writing_weights is skipped for RMSNorm models,
    center_unembed is refused with a logit soft-cap, and fold_value_biases
    is a no-op because Gemma-2 has no biases (process_weights + tl_forward
    spell the folded model out; the tests check they agree to rounding).
    patch: {hook name: fn(value) -> replacement}, applied where the hook is
    (acts keeps the unpatched values; downstream uses the replacement).
    """
    if basis in ("raw", "processed"):
        return hf_forward(config, params, tokens, extra_hooks=extra_hooks, patch=patch)
    raise ValueError("basis %r (raw or processed)" % (basis,))
