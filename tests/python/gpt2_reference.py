"""Float64 NumPy reference for saegap's GPT-2 forward pass and hook values.

Written from the formulas only (the GPT-2 architecture as implemented by
Hugging Face's GPT2LMHeadModel, and FIELD-FACTS.md sections 1 and 2 for the
TransformerLens "processed" basis), independently of saegap's C code.  It is
the yardstick the C program is tested against, so it must never be derived
from the C implementation.

GPT-2 block (pre-LN):
    a   = LN_1(x);  q,k,v = split(a @ W_attn + b_attn)      (Conv1D, W [in,out])
    z_h = softmax_causal(q_h k_h^T / sqrt(d_head)) v_h
    x   = x + concat_h(z_h) @ W_O + b_O                     (resid_mid)
    m   = gelu_new(LN_2(x) @ W_fc + b_fc)                   (mlp.hook_post)
    x   = x + m @ W_proj + b_proj                           (resid_post)
logits = LN_f(x) @ wte^T.

LayerNorm uses the biased variance and eps = layer_norm_epsilon.

basis="processed" (TransformerLens default weight processing): every
residual-stream hook minus its own mean over d_model; attn.hook_z minus
(b_V + ln_1.bias @ W_V) per head; mlp.hook_post unchanged; log-probs are
unchanged (center_unembed only shifts logits by a constant per position; the
reference returns the raw Hugging Face logits in both bases).
"""

import json
import os

import numpy as np

# the family-independent parts (reference_common.py): the safetensors reader, small ops
from reference_common import gelu_erf, gelu_tanh, load_safetensors, log_softmax

__all__ = ["load_safetensors", "load_model", "forward", "site_names",
           "RESID_SITES", "layer_norm", "gelu_new", "log_softmax"]

RESID_SITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post",
               "hook_attn_out", "hook_mlp_out")
LAYER_SITES = RESID_SITES + ("attn.hook_z", "mlp.hook_post")


def load_model(dir):
    """-> (config dict, params dict keyed without the `transformer.` prefix)."""
    with open(os.path.join(dir, "config.json")) as f:
        config = json.load(f)
    t = load_safetensors(os.path.join(dir, "model.safetensors"))
    params = {}
    for k, v in t.items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        if k.endswith("attn.bias") or k.endswith("attn.masked_bias"):
            if not k.endswith("c_attn.bias") and not k.endswith("c_proj.bias"):
                continue
        if k == "lm_head.weight":
            continue
        params[k] = v
    return config, params


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


gelu_new = gelu_tanh      # GPT-2's activation_function names
gelu_exact = gelu_erf


def site_names(n_layer):
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(n_layer):
        for s in LAYER_SITES:
            names.append("blocks.%d.%s" % (l, s))
    return names


def _center(x):
    return x - x.mean(-1, keepdims=True)


def forward(config, params, tokens, basis="processed"):
    """GPT-2 forward in float64; returns {hook name: [n, T, width]} + logits, logprobs."""
    if basis not in ("processed", "raw"):
        raise ValueError(basis)
    proc = basis == "processed"
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim == 1:
        tokens = tokens[None]
    n, T = tokens.shape
    L = int(config["n_layer"])
    H = int(config["n_head"])
    D = int(config["n_embd"])
    dh = D // H
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    act = config.get("activation_function", "gelu_new")
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        gelu = gelu_new
    elif act == "gelu":
        gelu = gelu_exact
    elif act == "relu":
        gelu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    else:
        raise ValueError("activation %r" % act)
    P = params
    out = {}

    def put(name, x, resid):
        out[name] = _center(x) if (proc and resid) else x.copy()

    embed = P["wte.weight"][tokens]                      # [n,T,D]
    pos = np.broadcast_to(P["wpe.weight"][:T][None], (n, T, D))
    put("hook_embed", embed, True)
    put("hook_pos_embed", pos, True)
    x = embed + pos
    causal = np.tril(np.ones((T, T), dtype=bool))
    for l in range(L):
        h = "h.%d." % l
        put("blocks.%d.hook_resid_pre" % l, x, True)
        a = layer_norm(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"], eps)
        Wa, ba = P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]
        qkv = a @ Wa + ba
        q = qkv[..., :D].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        k = qkv[..., D:2 * D].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        v = qkv[..., 2 * D:].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)    # [n,H,T,T]
        s = np.where(causal, s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        pmat = np.exp(s)
        pmat /= pmat.sum(-1, keepdims=True)
        z = (pmat @ v).transpose(0, 2, 1, 3).reshape(n, T, D)   # head-major
        if proc:
            bv_eff = ba[2 * D:] + P[h + "ln_1.bias"] @ Wa[:, 2 * D:]
            out["blocks.%d.attn.hook_z" % l] = z - bv_eff
        else:
            out["blocks.%d.attn.hook_z" % l] = z.copy()
        attn_out = z @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"]
        put("blocks.%d.hook_attn_out" % l, attn_out, True)
        x = x + attn_out
        put("blocks.%d.hook_resid_mid" % l, x, True)
        m = layer_norm(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"], eps)
        post = gelu(m @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"])
        out["blocks.%d.mlp.hook_post" % l] = post
        mlp_out = post @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]
        put("blocks.%d.hook_mlp_out" % l, mlp_out, True)
        x = x + mlp_out
        put("blocks.%d.hook_resid_post" % l, x, True)
    xf = layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], eps)
    logits = xf @ P["wte.weight"].T
    out["logits"] = logits
    out["logprobs"] = log_softmax(logits)
    return out


def _torch_check(config, params, tokens):  # pragma: no cover - optional
    """Compare against a plain torch forward when torch is importable."""
    try:
        import torch  # noqa: F401
    except Exception:
        return None
    import torch
    P = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    t = torch.tensor(np.asarray(tokens), dtype=torch.long)
    n, T = t.shape
    D = config["n_embd"]
    H = config["n_head"]
    eps = config["layer_norm_epsilon"]
    x = P["wte.weight"][t] + P["wpe.weight"][:T]
    for l in range(config["n_layer"]):
        h = "h.%d." % l
        a = torch.nn.functional.layer_norm(x, (D,), P[h + "ln_1.weight"], P[h + "ln_1.bias"], eps)
        q, k, v = (a @ P[h + "attn.c_attn.weight"] + P[h + "attn.c_attn.bias"]).split(D, -1)
        sh = lambda y: y.view(n, T, H, D // H).transpose(1, 2)  # noqa: E731
        z = torch.nn.functional.scaled_dot_product_attention(sh(q), sh(k), sh(v), is_causal=True)
        z = z.transpose(1, 2).reshape(n, T, D)
        x = x + z @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"]
        m = torch.nn.functional.layer_norm(x, (D,), P[h + "ln_2.weight"], P[h + "ln_2.bias"], eps)
        m = torch.nn.functional.gelu(m @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"], approximate="tanh")
        x = x + m @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"]
    x = torch.nn.functional.layer_norm(x, (D,), P["ln_f.weight"], P["ln_f.bias"], eps)
    ref = forward(config, params, tokens, basis="raw")["logits"]
    got = (x @ P["wte.weight"].T).numpy()
    return float(np.abs(got - ref).max() / np.abs(ref).max())
