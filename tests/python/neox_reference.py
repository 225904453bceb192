"""Float64 NumPy reference for saegap's Pythia (GPT-NeoX) forward pass and hook values.

Written from the formulas only (GPTNeoXForCausalLM as Hugging Face implements
it, and TransformerLens's conversion and default weight processing, as
summarised in FAMILIES-FACTS.md sections 1 and 3), independently of saegap's C
code.  It is the yardstick the C program is tested against, so it must never
be derived from the C implementation.

GPT-NeoX layer (W is [out, in], PyTorch Linear layout):
    a     = LN_1(x)                                          (ln1.hook_normalized)
    qkv   = a @ Wqkv^T + bqkv, viewed [.., H, 3*d_head]:  row h*3*d_head + s*d_head + j
    q, k  = rotary(q), rotary(k) on the first r = int(d_head * rotary_pct) dims,
            rotate_half halves: (x_i, x_{i+r/2}) -> (x_i c - x_{i+r/2} s, x_{i+r/2} c + x_i s),
            angle pos * base^(-2i/r), i < r/2; the other d_head - r dims pass through
    z_h   = softmax_causal(q_h k_h^T / sqrt(d_head)) v_h     (attn.hook_z, head-major)
    attn  = z @ Wdense^T + bdense                            (hook_attn_out)
    parallel (use_parallel_residual, every Pythia):
        m   = gelu_erf(LN_2(x) @ W1^T + b1)                  (ln2.hook_normalized, mlp.hook_post)
        x   = x + attn + m @ W2^T + b2                       (hook_mlp_out, hook_resid_post)
    sequential (use_parallel_residual false):
        x   = x + attn                                       (hook_resid_mid)
        x   = x + gelu_erf(LN_2(x) @ W1^T + b1) @ W2^T + b2
logits = LN_f(x) @ embed_out^T over all vocab_size rows (the padded vocabulary).

LayerNorm uses the biased variance and eps = layer_norm_eps.  GELU is the
exact erf form (hidden_act "gelu").  Rotary angles are exact float64 (HF
computes inv_freq and the angles in float32: about pos * 6e-8 rad apart).

basis="raw": the Hugging Face activations (TransformerLens
from_pretrained_no_processing), computed directly on the HF tensors.

basis="processed": HookedTransformer.from_pretrained's default processing,
computed by processing the weights (convert_neox_weights, then fold_ln,
center_writing_weights, center_unembed, fold_value_biases in TL's order) and
running the processed TransformerLens-style model (LayerNormPre).  Expected
consequences, checked in test_neox_reference.py rather than assumed here:
residual-stream hooks (hook_embed, resid_*, attn_out, mlp_out) = raw minus
their mean over d_model; attn.hook_z = raw minus (b_V + ln1.b @ W_V) per head;
mlp.hook_post unchanged; ln*.hook_normalized = the LayerNorm output before
its weight and bias; log-probs unchanged.
"""

import math

import numpy as np

from gpt2_reference import layer_norm
# the family-independent parts: the safetensors reader, the loader's strictness, the hooks, small ops
from reference_common import (batch_tokens, check_tensors, gelu_erf, gelu_tanh, hooked, load_checkpoint,
                              load_safetensors, log_softmax)  # noqa: F401  (load_safetensors: part of this module's API)

__all__ = ["load_safetensors", "load_model", "model_dims", "rotary_ndims",
           "apply_rotary", "forward", "site_names", "extra_site_names",
           "RESID_SITES", "layer_norm", "gelu_erf", "log_softmax",
           "convert_neox_weights", "fold_layer_norm", "center_writing_weights",
           "center_unembed", "fold_value_biases", "process_weights", "tl_forward",
           "hf_forward"]

_FLOAT = ("F64", "F32", "F16", "BF16")

# residual-stream sites: centred over d_model in the processed basis
RESID_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post",
               "hook_attn_out", "hook_mlp_out")


# ---------------------------------------------------------------- loading

def _is_buffer(name):
    """Buffers old transformers versions saved (FAMILIES-FACTS section 1): ignored."""
    return (name.endswith(".attention.bias") or name.endswith(".attention.masked_bias")
            or name.endswith(".rotary_emb.inv_freq"))


def model_dims(config):
    """config.json -> dict L, H, D, dh, I, V, eps, r (rotary_ndims), base,
    parallel, act.  Reads the 4.x keys (rotary_pct, rotary_emb_base) or the
    v5 rope_parameters.{partial_rotary_factor, rope_theta}."""
    D = int(config["hidden_size"])
    H = int(config["num_attention_heads"])
    rope = config.get("rope_parameters") or {}
    pct = config.get("rotary_pct", rope.get("partial_rotary_factor", 1.0))
    base = config.get("rotary_emb_base", rope.get("rope_theta", 10000))
    dh = D // H
    return {
        "L": int(config["num_hidden_layers"]), "H": H, "D": D, "dh": dh,
        "I": int(config.get("intermediate_size", 4 * D)),
        "V": int(config["vocab_size"]),
        "eps": float(config.get("layer_norm_eps", 1e-5)),
        "r": int(dh * float(pct)),            # HF int(); TL round() (same for Pythia)
        "base": float(base),
        "parallel": bool(config.get("use_parallel_residual", True)),
        "act": config.get("hidden_act", "gelu"),
    }


def rotary_ndims(config):
    return model_dims(config)["r"]


def _expected_shapes(config):
    d = model_dims(config)
    D, I, V = d["D"], d["I"], d["V"]
    s = {"gpt_neox.embed_in.weight": (V, D), "gpt_neox.final_layer_norm.weight": (D,),
         "gpt_neox.final_layer_norm.bias": (D,), "embed_out.weight": (V, D)}
    for l in range(d["L"]):
        p = "gpt_neox.layers.%d." % l
        for m in ("input_layernorm", "post_attention_layernorm"):
            s[p + m + ".weight"] = (D,)
            s[p + m + ".bias"] = (D,)
        s[p + "attention.query_key_value.weight"] = (3 * D, D)
        s[p + "attention.query_key_value.bias"] = (3 * D,)
        s[p + "attention.dense.weight"] = (D, D)
        s[p + "attention.dense.bias"] = (D,)
        s[p + "mlp.dense_h_to_4h.weight"] = (I, D)
        s[p + "mlp.dense_h_to_4h.bias"] = (I,)
        s[p + "mlp.dense_4h_to_h.weight"] = (D, I)
        s[p + "mlp.dense_4h_to_h.bias"] = (D,)
    return s


def load_model(dir):
    """-> (config dict, params {HF tensor name: float64 array}).

    Reads model.safetensors, else model.safetensors.index.json and its shards
    (the order Hugging Face's from_pretrained tries them).  The buffers
    (attention.bias, attention.masked_bias, rotary_emb.inv_freq) are ignored;
    any other unexpected tensor, a missing one or a wrong shape is an error.
    """
    config, t = load_checkpoint(dir)
    return config, check_tensors(t, _expected_shapes(config), _is_buffer)


# ---------------------------------------------------------------- ops

def _ln_scale(x, eps):
    xc = x - x.mean(-1, keepdims=True)
    return np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)


def _activation(name):
    if name == "gelu":
        return gelu_erf
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return gelu_tanh
    if name == "relu":
        return lambda x: np.maximum(x, 0.0)
    raise ValueError("hidden_act %r" % name)


def apply_rotary(x, positions, r, base=10000.0):
    """GPT-NeoX rotary (rotate_half) on the first r dims of x [..., T, H, d_head].

    positions [T]; inv_freq[i] = base^(-2i/r), i < r/2; cos/sin =
    [freqs, freqs]; out[:r] = x[:r] cos + rotate_half(x[:r]) sin with
    rotate_half(y) = [-y[r/2:], y[:r/2]]; out[r:] = x[r:]."""
    x = np.asarray(x, dtype=np.float64)
    if r == 0:
        return x.copy()
    assert r % 2 == 0 and r <= x.shape[-1], r
    inv_freq = 1.0 / base ** (np.arange(0, r, 2, dtype=np.float64) / r)     # [r/2]
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None]  # [T, r/2]
    emb = np.concatenate([freqs, freqs], -1)[:, None, :]                  # [T, 1, r]
    cos, sin = np.cos(emb), np.sin(emb)
    xr = x[..., :r]
    half = r // 2
    rot_half = np.concatenate([-xr[..., half:], xr[..., :half]], -1)
    return np.concatenate([xr * cos + rot_half * sin, x[..., r:]], -1)


def _attention(q, k, v, dh):
    """q, k, v [B, T, H, dh] (rotated) -> z [B, T, H, dh], scores, pattern [B, H, T, T]."""
    T = q.shape[1]
    s = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(dh)
    causal = np.tril(np.ones((T, T), dtype=bool))
    s = np.where(causal, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    pattern = e / e.sum(-1, keepdims=True)
    z = np.einsum("bhqk,bkhe->bqhe", pattern, v)
    return z, s, pattern


def site_names(config):
    """The hook names forward() returns by default, in forward order:
    hook_embed, then per layer resid_pre, ln1.hook_normalized, attn.hook_z,
    hook_attn_out, [hook_resid_mid when sequential], ln2.hook_normalized,
    mlp.hook_post, hook_mlp_out, hook_resid_post.  No hook_pos_embed
    (rotary)."""
    d = model_dims(config)
    names = ["hook_embed"]
    for l in range(d["L"]):
        b = "blocks.%d." % l
        names += [b + "hook_resid_pre", b + "ln1.hook_normalized", b + "attn.hook_z",
                  b + "hook_attn_out"]
        if not d["parallel"]:
            names.append(b + "hook_resid_mid")
        names += [b + "ln2.hook_normalized", b + "mlp.hook_post", b + "hook_mlp_out",
                  b + "hook_resid_post"]
    return names


def extra_site_names(config):
    """Further TransformerLens hooks, returned with extra_hooks=True:
    attn.hook_{q,k,v,rot_q,rot_k} [B,T,H,d_head], attn.hook_attn_scores
    (masked with -inf) and attn.hook_pattern [B,H,T,T], mlp.hook_pre,
    ln{1,2}.hook_scale [B,T,1], ln_final.hook_{scale,normalized}, logits."""
    names = []
    for l in range(model_dims(config)["L"]):
        b = "blocks.%d." % l
        names += [b + "attn.hook_" + s for s in ("q", "k", "v", "rot_q", "rot_k",
                                                  "attn_scores", "pattern")]
        names += [b + "mlp.hook_pre", b + "ln1.hook_scale", b + "ln2.hook_scale"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized", "logits"]


# ---------------------------------------------------------------- HF forward (raw)

def hf_forward(config, params, tokens, extra_hooks=False, patch=None):
    """GPTNeoXForCausalLM's forward on the HF tensors -> (acts, logprobs)."""
    d = model_dims(config)
    L, H, D, dh, r, eps = d["L"], d["H"], d["D"], d["dh"], d["r"], d["eps"]
    act = _activation(d["act"])
    P = params
    tokens = batch_tokens(tokens)
    B, T = tokens.shape
    if tokens.min() < 0 or tokens.max() >= d["V"]:
        raise ValueError("token id out of range")
    pos = np.arange(T)
    acts = {}
    x = P["gpt_neox.embed_in.weight"][tokens]
    acts["hook_embed"] = x.copy()
    for l in range(L):
        p, b = "gpt_neox.layers.%d." % l, "blocks.%d." % l
        x = hooked(acts, patch, b + "hook_resid_pre", x)
        a = layer_norm(x, P[p + "input_layernorm.weight"], P[p + "input_layernorm.bias"], eps)
        acts[b + "ln1.hook_normalized"] = a
        qkv = a @ P[p + "attention.query_key_value.weight"].T + P[p + "attention.query_key_value.bias"]
        qkv = qkv.reshape(B, T, H, 3 * dh)                  # per head: q | k | v
        q, k, v = qkv[..., :dh], qkv[..., dh:2 * dh], qkv[..., 2 * dh:]
        rq = apply_rotary(q, pos, r, d["base"])
        rk = apply_rotary(k, pos, r, d["base"])
        z, scores, pattern = _attention(rq, rk, v, dh)
        z = hooked(acts, patch, b + "attn.hook_z", z.reshape(B, T, D))   # head-major
        attn_out = z @ P[p + "attention.dense.weight"].T + P[p + "attention.dense.bias"]
        attn_out = hooked(acts, patch, b + "hook_attn_out", attn_out)
        if d["parallel"]:
            mlp_in = x
        else:
            mlp_in = hooked(acts, patch, b + "hook_resid_mid", x + attn_out)
        m = layer_norm(mlp_in, P[p + "post_attention_layernorm.weight"],
                       P[p + "post_attention_layernorm.bias"], eps)
        acts[b + "ln2.hook_normalized"] = m
        pre = m @ P[p + "mlp.dense_h_to_4h.weight"].T + P[p + "mlp.dense_h_to_4h.bias"]
        post = hooked(acts, patch, b + "mlp.hook_post", act(pre))
        mlp_out = post @ P[p + "mlp.dense_4h_to_h.weight"].T + P[p + "mlp.dense_4h_to_h.bias"]
        mlp_out = hooked(acts, patch, b + "hook_mlp_out", mlp_out)
        x = (x + attn_out + mlp_out) if d["parallel"] else (mlp_in + mlp_out)
        x = hooked(acts, patch, b + "hook_resid_post", x)
        if extra_hooks:
            acts[b + "attn.hook_q"], acts[b + "attn.hook_k"], acts[b + "attn.hook_v"] = q, k, v
            acts[b + "attn.hook_rot_q"], acts[b + "attn.hook_rot_k"] = rq, rk
            acts[b + "attn.hook_attn_scores"], acts[b + "attn.hook_pattern"] = scores, pattern
            acts[b + "mlp.hook_pre"] = pre
            acts[b + "ln1.hook_scale"] = _ln_scale(acts[b + "hook_resid_pre"], eps)
            acts[b + "ln2.hook_scale"] = _ln_scale(mlp_in, eps)
    xf = layer_norm(x, P["gpt_neox.final_layer_norm.weight"], P["gpt_neox.final_layer_norm.bias"], eps)
    logits = xf @ P["embed_out.weight"].T                   # [B, T, vocab_size], no bias
    if extra_hooks:
        acts["ln_final.hook_scale"] = _ln_scale(x, eps)
        acts["ln_final.hook_normalized"] = xf
        acts["logits"] = logits
    return acts, log_softmax(logits)


# ---------------------------------------------------------------- TransformerLens

def convert_neox_weights(config, params):
    """TL convert_neox_weights in NumPy: HF tensors -> TL state dict.
    W_Q/K/V [H, D, dh] from "(i qkv h) m -> qkv i m h", b_Q/K/V [H, dh];
    W_O [H, dh, D] from dense "m (i h) -> i h m"; W_in = dense_h_to_4h^T,
    W_out = dense_4h_to_h^T; W_U = embed_out^T; b_U = 0 (fill_missing_keys)."""
    d = model_dims(config)
    H, D, dh = d["H"], d["D"], d["dh"]
    P = params
    sd = {"embed.W_E": P["gpt_neox.embed_in.weight"].copy()}
    for l in range(d["L"]):
        p, b = "gpt_neox.layers.%d." % l, "blocks.%d." % l
        sd[b + "ln1.w"] = P[p + "input_layernorm.weight"].copy()
        sd[b + "ln1.b"] = P[p + "input_layernorm.bias"].copy()
        W = P[p + "attention.query_key_value.weight"].reshape(H, 3, dh, D)   # (i qkv h) m
        bias = P[p + "attention.query_key_value.bias"].reshape(H, 3, dh)
        for s, c in enumerate("QKV"):
            sd[b + "attn.W_" + c] = W[:, s].transpose(0, 2, 1).copy()        # i m h
            sd[b + "attn.b_" + c] = bias[:, s].copy()
        sd[b + "attn.W_O"] = P[p + "attention.dense.weight"].reshape(D, H, dh).transpose(1, 2, 0).copy()
        sd[b + "attn.b_O"] = P[p + "attention.dense.bias"].copy()
        sd[b + "ln2.w"] = P[p + "post_attention_layernorm.weight"].copy()
        sd[b + "ln2.b"] = P[p + "post_attention_layernorm.bias"].copy()
        sd[b + "mlp.W_in"] = P[p + "mlp.dense_h_to_4h.weight"].T.copy()
        sd[b + "mlp.b_in"] = P[p + "mlp.dense_h_to_4h.bias"].copy()
        sd[b + "mlp.W_out"] = P[p + "mlp.dense_4h_to_h.weight"].T.copy()
        sd[b + "mlp.b_out"] = P[p + "mlp.dense_4h_to_h.bias"].copy()
    sd["ln_final.w"] = P["gpt_neox.final_layer_norm.weight"].copy()
    sd["ln_final.b"] = P["gpt_neox.final_layer_norm.bias"].copy()
    sd["unembed.W_U"] = P["embed_out.weight"].T.copy()
    sd["unembed.b_U"] = np.zeros(d["V"])
    return sd


def fold_layer_norm(sd, config):
    """ProcessWeights.fold_layer_norm (fold_biases, center_weights): ln1 into
    W_Q/K/V and b_Q/K/V (b += ln.b @ W, W *= ln.w, W centred over d_model),
    ln2 into W_in/b_in, ln_final into W_U/b_U; the LNs become LayerNormPre."""
    sd = {k: v.copy() for k, v in sd.items()}
    for l in range(model_dims(config)["L"]):
        b = "blocks.%d." % l
        w_, b_ = sd.pop(b + "ln1.w"), sd.pop(b + "ln1.b")
        for c in "QKV":
            W = sd[b + "attn.W_" + c]                                  # [H, D, dh]
            sd[b + "attn.b_" + c] = sd[b + "attn.b_" + c] + np.einsum("d,hde->he", b_, W)
            W = W * w_[None, :, None]
            sd[b + "attn.W_" + c] = W - W.mean(1, keepdims=True)
        w_, b_ = sd.pop(b + "ln2.w"), sd.pop(b + "ln2.b")
        W = sd[b + "mlp.W_in"]                                         # [D, I]
        sd[b + "mlp.b_in"] = sd[b + "mlp.b_in"] + b_ @ W
        W = W * w_[:, None]
        sd[b + "mlp.W_in"] = W - W.mean(0, keepdims=True)
    w_, b_ = sd.pop("ln_final.w"), sd.pop("ln_final.b")
    W = sd["unembed.W_U"]                                              # [D, V]
    sd["unembed.b_U"] = sd["unembed.b_U"] + b_ @ W
    W = W * w_[:, None]
    sd["unembed.W_U"] = W - W.mean(0, keepdims=True)
    return sd


def center_writing_weights(sd, config):
    """W_E, W_O, b_O, W_out, b_out minus their mean over d_model (no W_pos:
    rotary)."""
    sd = {k: v.copy() for k, v in sd.items()}
    sd["embed.W_E"] = sd["embed.W_E"] - sd["embed.W_E"].mean(-1, keepdims=True)
    for l in range(model_dims(config)["L"]):
        b = "blocks.%d." % l
        for k in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
            sd[b + k] = sd[b + k] - sd[b + k].mean(-1, keepdims=True)
    return sd


def center_unembed(sd):
    """W_U minus its mean over the vocabulary, b_U minus its mean."""
    sd = {k: v.copy() for k, v in sd.items()}
    sd["unembed.W_U"] = sd["unembed.W_U"] - sd["unembed.W_U"].mean(-1, keepdims=True)
    sd["unembed.b_U"] = sd["unembed.b_U"] - sd["unembed.b_U"].mean()
    return sd


def fold_value_biases(sd, config):
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0."""
    sd = {k: v.copy() for k, v in sd.items()}
    for l in range(model_dims(config)["L"]):
        b = "blocks.%d." % l
        sd[b + "attn.b_O"] = sd[b + "attn.b_O"] + np.einsum("he,hed->d", sd[b + "attn.b_V"], sd[b + "attn.W_O"])
        sd[b + "attn.b_V"] = np.zeros_like(sd[b + "attn.b_V"])
    return sd


def process_weights(sd, config, fold_ln=True, center_writing_weights_=True,
                    center_unembed_=True, fold_value_biases_=True):
    """TL's ProcessWeights.process_weights order -> (state dict, 'LN' | 'LNPre')."""
    norm = "LN"
    if fold_ln:
        sd, norm = fold_layer_norm(sd, config), "LNPre"
    if center_writing_weights_:
        sd = center_writing_weights(sd, config)
    if center_unembed_:
        sd = center_unembed(sd)
    if fold_value_biases_:
        sd = fold_value_biases(sd, config)
    return sd, norm


def tl_forward(config, sd, tokens, normalization_type="LN", extra_hooks=False, patch=None):
    """HookedTransformer's forward (Pythia config: rotary, rotary_adjacent_pairs
    False, parallel_attn_mlp = use_parallel_residual) on a TL state dict ->
    (acts, logprobs).  normalization_type 'LNPre' after fold_ln."""
    d = model_dims(config)
    L, H, dh, r, eps = d["L"], d["H"], d["dh"], d["r"], d["eps"]
    act = _activation(d["act"])
    tokens = batch_tokens(tokens)
    B, T = tokens.shape
    pos = np.arange(T)
    acts = {}

    def ln(x, prefix):
        xc = x - x.mean(-1, keepdims=True)
        scale = np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
        y = xc / scale
        if normalization_type == "LN":
            y = y * sd[prefix + ".w"] + sd[prefix + ".b"]
        if extra_hooks:
            acts[prefix + ".hook_scale"] = scale
        acts[prefix + ".hook_normalized"] = y
        return y

    resid = sd["embed.W_E"][tokens]
    acts["hook_embed"] = resid.copy()
    for l in range(L):
        b = "blocks.%d." % l
        resid = hooked(acts, patch, b + "hook_resid_pre", resid)
        x = ln(resid, b + "ln1")
        q = np.einsum("btd,hde->bthe", x, sd[b + "attn.W_Q"]) + sd[b + "attn.b_Q"]
        k = np.einsum("btd,hde->bthe", x, sd[b + "attn.W_K"]) + sd[b + "attn.b_K"]
        v = np.einsum("btd,hde->bthe", x, sd[b + "attn.W_V"]) + sd[b + "attn.b_V"]
        rq = apply_rotary(q, pos, r, d["base"])
        rk = apply_rotary(k, pos, r, d["base"])
        z, scores, pattern = _attention(rq, rk, v, dh)
        z = hooked(acts, patch, b + "attn.hook_z", z.reshape(B, T, H * dh)).reshape(B, T, H, dh)
        attn_out = np.einsum("bthe,hed->btd", z, sd[b + "attn.W_O"]) + sd[b + "attn.b_O"]
        attn_out = hooked(acts, patch, b + "hook_attn_out", attn_out)
        if d["parallel"]:
            x2 = ln(resid, b + "ln2")
        else:
            resid = hooked(acts, patch, b + "hook_resid_mid", resid + attn_out)
            x2 = ln(resid, b + "ln2")
        pre = x2 @ sd[b + "mlp.W_in"] + sd[b + "mlp.b_in"]
        post = hooked(acts, patch, b + "mlp.hook_post", act(pre))
        mlp_out = post @ sd[b + "mlp.W_out"] + sd[b + "mlp.b_out"]
        mlp_out = hooked(acts, patch, b + "hook_mlp_out", mlp_out)
        resid = (resid + attn_out + mlp_out) if d["parallel"] else (resid + mlp_out)
        resid = hooked(acts, patch, b + "hook_resid_post", resid)
        if extra_hooks:
            acts[b + "attn.hook_q"], acts[b + "attn.hook_k"], acts[b + "attn.hook_v"] = q, k, v
            acts[b + "attn.hook_rot_q"], acts[b + "attn.hook_rot_k"] = rq, rk
            acts[b + "attn.hook_attn_scores"], acts[b + "attn.hook_pattern"] = scores, pattern
            acts[b + "mlp.hook_pre"] = pre
    xf = ln(resid, "ln_final")
    if not extra_hooks:
        del acts["ln_final.hook_normalized"]
    logits = xf @ sd["unembed.W_U"] + sd["unembed.b_U"]
    if extra_hooks:
        acts["logits"] = logits
    return acts, log_softmax(logits)


# ---------------------------------------------------------------- entry point

def forward(config, params, tokens, basis="raw", extra_hooks=False, patch=None):
    """Pythia forward in float64 -> (acts, logprobs).

    acts: {TransformerLens hook name: float64 [B, T, ...]} for site_names(config)
    (plus extra_site_names(config) when extra_hooks); attn.hook_z is
    [B, T, H*d_head], head-major.  logprobs: log_softmax over all vocab_size
    rows of embed_out, [B, T, vocab_size].

    basis "raw": Hugging Face activations (hf_forward on the HF tensors).
    basis "processed": TL's default-processed weights (convert_neox_weights
    + process_weights) run through tl_forward with LayerNormPre.
    patch: {hook name: fn(value in this basis) -> replacement}, applied where
    the hook is, as a TransformerLens hook (acts keeps the unpatched values).
    """
    if basis == "raw":
        return hf_forward(config, params, tokens, extra_hooks=extra_hooks, patch=patch)
    if basis == "processed":
        sd, norm = process_weights(convert_neox_weights(config, params), config)
        return tl_forward(config, sd, tokens, norm, extra_hooks=extra_hooks, patch=patch)
    raise ValueError("basis %r (raw or processed)" % (basis,))
