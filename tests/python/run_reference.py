"""Float64 NumPy reference for `saegap run`.

Written from the formulas only (FIELD-FACTS.md sections 2-5, CONTRACT.md and
docs/output-schema.md), independently of saegap's C code.  It is the
yardstick the C program is tested against (tests/python/test_run.py).

Pieces:

* SAE config parsing for the three SAELens cfg.json generations (legacy,
  flat v3-v5, v6) and the SAE forward pass (`sae_encode_decode`):
      x_n = norm_in(x)               none | constant_norm_rescale |
                                     layer_norm | expected_average_only_in
      x'  = x_n - b_dec              if apply_b_dec_to_input
      standard:  f = relu(x' W_enc + b_enc)
      jumprelu:  f = z * 1[z > threshold]           (strictly greater)
      topk:      z (* ||W_dec_i|| if rescale_acts_by_decoder_norm), keep the
                 k largest entries, relu them, zero the rest
      gated:     f = 1[x' W_enc + b_gate > 0] * relu(x' (W_enc * exp(r_mag)) + b_mag)
      groupmax:  (EleutherAI sparsify, fused_encoder.py) r = relu(x' W_enc + b_enc) cut into
                 k contiguous groups of d_sae / k; each keeps its max (the first on ties)
  EleutherAI sparsify folders (cfg.json + sae.safetensors, FAMILIES-FACTS 4(b)) are read as
  the same description: encoder.weight is W_enc transposed, x' = x - b_dec, "activation"
  topk (default) or groupmax, the hook from the folder's name, raw activations.
      x_hat_n = (f [/ ||W_dec_i||] [* scaling_factor]) W_dec + b_dec
      x_hat = norm_out(x_hat_n)
  The latent code reported (l0, l1, feature density) is f, the encoder's
  output, before the scaling factor / decoder-norm division of the decoder.

* A GPT-2 forward pass with one hook patched (`forward_with_patch`), in the
  "processed" (TransformerLens default weight processing) or "raw" (plain
  Hugging Face) basis of FIELD-FACTS section 2.

* `reference_run`: everything `saegap run` writes for the deterministic
  interventions (sae, norm_corrected_sae, sae_norm, zero_ablation,
  mean_ablation): per-token KL / CE, reconstruction metrics, site attributes
  and feature density, NaN wherever a token is not measured.
"""

import json
import os

import numpy as np

from gpt2_reference import (gelu_exact, gelu_new, layer_norm, load_model,
                            load_safetensors, log_softmax)

__all__ = [
    "RESID_SITES", "DETERMINISTIC", "RANDOM", "ALL_INTERVENTIONS",
    "load_sae", "parse_sae_cfg", "sae_parts", "sae_encode_decode",
    "sae_discontinuity_margin", "site_of", "site_width", "sae_basis",
    "forward_with_patch", "clean_forward", "reference_run", "kl_div",
]

RESID_SITES = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid",
               "hook_resid_post", "hook_attn_out", "hook_mlp_out")
DETERMINISTIC = ("sae", "norm_corrected_sae", "sae_norm", "zero_ablation", "mean_ablation")
RANDOM = ("eps_random", "theta_random", "theta_random_true_norm", "latent_noise",
          "sae_eps_random", "cov_random")
ALL_INTERVENTIONS = ("sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random",
                     "theta_random_true_norm", "zero_ablation", "mean_ablation",
                     "latent_noise", "sae_eps_random", "cov_random")
RECON_METRICS = ("l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1")

LN_EPS_SAE = 1e-5  # SAELens run_time_activation_ln_in eps


# ------------------------------------------------------------------ SAE cfg

def _kind_of_site(hook):
    """'resid' | 'hook_z' | 'hook_post' | other for a TransformerLens hook name."""
    last = hook.split(".")[-1]
    if hook.endswith("attn.hook_z"):
        return "hook_z"
    if hook.endswith("mlp.hook_post"):
        return "hook_post"
    if last in RESID_SITES:
        return "resid"
    return "other"


def site_width(config, hook):
    D = int(config["n_embd"])
    return 4 * D if _kind_of_site(hook) == "hook_post" else D


def cfg_generation(cfg):
    """'legacy' | 'flat' | 'v6' (SAELens decides by sae_lens_version < 6, else by keys), or
    'sparsify' for a folder load_sae read as sparsify's."""
    if SPARSIFY_FOLDER in cfg:
        return "sparsify"
    ver = cfg.get("sae_lens_version")
    if ver is None and isinstance(cfg.get("metadata"), dict):
        ver = cfg["metadata"].get("sae_lens_version")
    if ver is not None:
        try:
            major = int(str(ver).split(".")[0])
        except ValueError:
            major = None
        if major is not None:
            if major >= 6:
                return "v6"
            return "flat" if "hook_name" in cfg else "legacy"
    if isinstance(cfg.get("metadata"), dict) and "hook_name" in cfg["metadata"]:
        return "v6"
    if "hook_name" in cfg:
        return "flat"
    return "legacy"


def _norm_mode(v):
    if v is True:
        return "expected_average_only_in"
    if v is None or v is False or v == "none":
        return "none"
    if v in ("constant_norm_rescale", "layer_norm", "expected_average_only_in"):
        return v
    raise ValueError("normalize_activations %r" % (v,))


SPARSIFY_FOLDER = "_sparsify_folder"  # added by load_sae: the folder's name says the hook
_SPARSIFY_SUFFIX = {"": "hook_resid_post", ".mlp": "hook_mlp_out", ".attention": "hook_attn_out"}


def _parse_sparsify_cfg(cfg):
    """sparsify's SparseCoderConfig (config.py): num_latents 0 means d_in * expansion_factor;
    activation topk (default) or groupmax; the hook from the folder name layers.N[.mlp|.attention]."""
    name = cfg[SPARSIFY_FOLDER]
    assert name.startswith("layers."), name
    rest = name[len("layers."):]
    layer = rest.split(".")[0]
    hook = "blocks.%s.%s" % (layer, _SPARSIFY_SUFFIX[rest[len(layer):]])
    d_in = int(cfg["d_in"])
    return {
        "generation": "sparsify", "hook": hook,
        "architecture": cfg.get("activation", "topk"),
        "d_in": d_in, "d_sae": int(cfg.get("num_latents") or d_in * int(cfg["expansion_factor"])),
        "k": int(cfg["k"]), "apply_b_dec_to_input": True, "normalize": "none",
        "rescale_acts_by_decoder_norm": False, "model_name": None, "from_pretrained_kwargs": None,
    }


def parse_sae_cfg(cfg):
    """cfg.json dict (any generation) -> normalised description."""
    gen = cfg_generation(cfg)
    if gen == "sparsify":
        return _parse_sparsify_cfg(cfg)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    if gen == "legacy":
        hook = cfg["hook_point"]
        arch = cfg.get("architecture", "standard")
        model_name = cfg.get("model_name")
        kwargs = cfg.get("model_from_pretrained_kwargs")
        k = None
    elif gen == "flat":
        hook = cfg["hook_name"]
        arch = cfg.get("architecture", "standard")
        act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        if act == "topk" and arch == "standard":
            arch = "topk"
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        model_name = cfg.get("model_name")
        kwargs = cfg.get("model_from_pretrained_kwargs")
    else:
        hook = meta.get("hook_name", cfg.get("hook_name"))
        arch = cfg.get("architecture", "standard")
        k = cfg.get("k")
        model_name = meta.get("model_name", cfg.get("model_name"))
        kwargs = meta.get("model_from_pretrained_kwargs", cfg.get("model_from_pretrained_kwargs"))
    if arch not in ("standard", "jumprelu", "topk", "gated"):  # groupmax: sparsify folders only
        raise ValueError("unknown architecture %r" % arch)
    return {
        "generation": gen,
        "hook": hook,
        "architecture": arch,
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "k": None if k is None else int(k),
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
        "normalize": _norm_mode(cfg.get("normalize_activations", "none")),
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "model_name": model_name,
        "from_pretrained_kwargs": kwargs,
    }


def site_of(cfg):
    return parse_sae_cfg(cfg)["hook"]


def sae_basis(cfg, override=None):
    """'processed' | 'raw' implied by the cfg's model_from_pretrained_kwargs
    (absent -> TransformerLens default processing = 'processed')."""
    if override is not None:
        return override
    d = parse_sae_cfg(cfg)
    if d["generation"] == "sparsify":
        return "raw"  # sparsify hooks the module outputs of the unprocessed model
    kw = d["from_pretrained_kwargs"]
    if kw is None:
        return "processed"
    kind = _kind_of_site(d["hook"])
    if kind == "resid":
        return "processed" if kw.get("center_writing_weights", True) else "raw"
    if kind == "hook_z":
        a, b = kw.get("fold_ln", True), kw.get("fold_value_biases", True)
        if a and b:
            return "processed"
        if not a and not b:
            return "raw"
        raise NotImplementedError("mixed fold_ln / fold_value_biases")
    return "processed"  # mlp.hook_post: identical in both bases


def load_sae(dir):
    """-> (cfg dict as written, params {name: float64 stored values}). A sparsify folder
    (sae.safetensors) gets SPARSIFY_FOLDER added and its Linear encoder as W_enc [d_in, d_sae]."""
    with open(os.path.join(dir, "cfg.json")) as f:
        cfg = json.load(f)
    sp_path = os.path.join(dir, "sae.safetensors")
    if not os.path.exists(os.path.join(dir, "sae_weights.safetensors")) and os.path.exists(sp_path):
        cfg = dict(cfg)
        cfg[SPARSIFY_FOLDER] = os.path.basename(os.path.normpath(dir))
        P = load_safetensors(sp_path)
        return cfg, {"W_enc": P["encoder.weight"].T, "b_enc": P["encoder.bias"], "W_dec": P["W_dec"],
                     "b_dec": P["b_dec"]}
    params = load_safetensors(os.path.join(dir, "sae_weights.safetensors"))
    return cfg, params


# ------------------------------------------------------------------ SAE math

def _norm_in(mode, x, s):
    """-> (x normalised, function undoing it)."""
    d = x.shape[-1]
    if mode == "none":
        return x, (lambda y: y)
    if mode == "constant_norm_rescale":
        fac = np.sqrt(d) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * fac, (lambda y: y / fac)
    if mode == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        xc = x - mu
        std = xc.std(-1, ddof=1, keepdims=True)
        # SAELens: in x/(std+eps); out y*std + mu (no eps on the way out)
        return xc / (std + LN_EPS_SAE), (lambda y: y * std + mu)
    if mode == "expected_average_only_in":
        if s is None:
            raise ValueError("expected_average_only_in needs a norm scaling factor")
        return x * s, (lambda y: y / s)
    raise ValueError(mode)


def sae_parts(cfg, params, x, norm_scaling_factor=None):
    """All intermediate values of the SAE on x [..., d_in] (float64).

    Returns dict: desc, x_n (normalised input), x_in (x_n - b_dec or x_n),
    pre (encoder pre-activation, arch dependent: z for standard/jumprelu/topk
    (times decoder norm for topk rescale), the gate pre-activation for gated),
    mag_pre (gated), f (latent code), x_hat_n (decoded, normalised space),
    x_hat (decoded, normalisation undone).
    """
    d = parse_sae_cfg(cfg)
    P = params
    x = np.asarray(x, dtype=np.float64)
    x_n, undo = _norm_in(d["normalize"], x, norm_scaling_factor)
    b_dec = P["b_dec"]
    x_in = x_n - b_dec if d["apply_b_dec_to_input"] else x_n
    W_enc, W_dec = P["W_enc"], P["W_dec"]
    arch = d["architecture"]
    out = {"desc": d, "x_n": x_n, "x_in": x_in}
    dec_norm = np.linalg.norm(W_dec, axis=-1)
    if arch == "gated":
        gate_pre = x_in @ W_enc + P["b_gate"]
        mag_pre = x_in @ (W_enc * np.exp(P["r_mag"])) + P["b_mag"]
        f = (gate_pre > 0).astype(np.float64) * np.maximum(mag_pre, 0.0)
        out["pre"] = gate_pre
        out["mag_pre"] = mag_pre
    else:
        z = x_in @ W_enc + P["b_enc"]
        if arch == "standard":
            f = np.maximum(z, 0.0)
        elif arch == "jumprelu":
            f = z * (z > P["threshold"])
            f = np.maximum(f, 0.0)  # thresholds are positive: identical, kept explicit
        elif arch == "topk":
            k = d["k"]
            if d["rescale_acts_by_decoder_norm"]:
                z = z * dec_norm
            idx = np.argsort(-z, axis=-1, kind="stable")[..., :k]
            f = np.zeros_like(z)
            np.put_along_axis(f, idx, np.maximum(np.take_along_axis(z, idx, -1), 0.0), -1)
        elif arch == "groupmax":
            k = d["k"]
            r = np.maximum(z, 0.0).reshape(z.shape[:-1] + (k, d["d_sae"] // k))
            first = np.argmax(r, axis=-1)[..., None]  # numpy's argmax: the first maximum
            g = np.zeros_like(r)
            np.put_along_axis(g, first, np.take_along_axis(r, first, -1), -1)
            f = g.reshape(z.shape)
        else:
            raise ValueError(arch)
        out["pre"] = z
    out["f"] = f
    g = f
    if arch == "topk" and d["rescale_acts_by_decoder_norm"]:
        g = g / dec_norm
    if "scaling_factor" in P:
        g = g * P["scaling_factor"]
    x_hat_n = g @ W_dec + b_dec
    out["x_hat_n"] = x_hat_n
    out["x_hat"] = undo(x_hat_n)
    return out


def sae_encode_decode(cfg, params, x, norm_scaling_factor=None):
    """-> (f [N, d_sae], x_hat [N, d_in])."""
    p = sae_parts(cfg, params, x, norm_scaling_factor)
    return p["f"], p["x_hat"]


def sae_discontinuity_margin(cfg, params, x, norm_scaling_factor=None):
    """Smallest distance, relative to the rms pre-activation, of any
    pre-activation from a point where f (or whether f > 0) jumps.  float32 and
    float64 give identical codes only when this is comfortably above ~1e-6."""
    p = sae_parts(cfg, params, x, norm_scaling_factor)
    d = p["desc"]
    pre = p["pre"].reshape(-1, d["d_sae"])
    scale = np.sqrt(np.mean(pre ** 2))
    arch = d["architecture"]
    if arch == "standard":
        m = np.abs(pre).min()
    elif arch == "jumprelu":
        m = np.abs(pre - params["threshold"]).min()
    elif arch == "topk":
        k = d["k"]
        srt = -np.sort(-pre, axis=-1)
        m = (srt[:, k - 1] - srt[:, k]).min()
        m = min(m, np.abs(srt[:, :k]).min())
    elif arch == "groupmax":
        # each group's winner and whether it is positive: the gap to the group's second and
        # the winner's distance from 0
        k = d["k"]
        srt = -np.sort(-pre.reshape(-1, k, d["d_sae"] // k), axis=-1)
        m = min((srt[..., 0] - srt[..., 1]).min(), np.abs(srt[..., 0]).min())
    else:
        mag = p["mag_pre"].reshape(-1, d["d_sae"])
        gate_open = pre > 0
        m = min(np.abs(pre).min(), np.abs(mag[gate_open]).min() if gate_open.any() else np.inf)
    return float(m / scale)


# ------------------------------------------------------------------ GPT-2 with a patched hook

def _gelu(config):
    act = config.get("activation_function", "gelu_new")
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return gelu_new
    if act == "gelu":
        return gelu_exact
    if act == "relu":
        return lambda x: np.maximum(x, 0.0)
    raise ValueError(act)


def forward_with_patch(config, params, tokens, site=None, basis="processed", patch_fn=None,
                       capture=None):
    """Float64 GPT-2 forward; at `site` the activation, converted to `basis`,
    is handed to patch_fn(x [n,T,width]) and its return value (same basis)
    replaces it.  patch_fn=None: identity (clean pass).

    Conversion back to the Hugging Face stream:
      residual-stream sites: the replacement is written as is (every later
        read goes through a LayerNorm, which removes the mean, so a centred
        value gives exactly the TransformerLens result);
      attn.hook_z processed: replacement + (b_V + ln_1.bias @ W_V);
      mlp.hook_post: as is.
    capture: dict to receive {site: activation in basis (before patching)}.
    Returns log-probs [n, T, vocab].
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n, T = tokens.shape
    L, H, D = int(config["n_layer"]), int(config["n_head"]), int(config["n_embd"])
    dh = D // H
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    gelu = _gelu(config)
    P = params
    proc = basis == "processed"

    def hook(name, val, kind, fold=None):
        if name != site:
            return val
        if kind == "resid":
            xb = val - val.mean(-1, keepdims=True) if proc else val.copy()
        elif kind == "hook_z":
            xb = val - fold if proc else val.copy()
        else:
            xb = val.copy()
        if capture is not None:
            capture[name] = xb.copy()
        if patch_fn is None:
            return val
        r = np.asarray(patch_fn(xb.copy()), dtype=np.float64)
        assert r.shape == val.shape, (r.shape, val.shape)
        if kind == "hook_z" and proc:
            return r + fold
        return r

    emb = hook("hook_embed", P["wte.weight"][tokens], "resid")
    pos = hook("hook_pos_embed", np.broadcast_to(P["wpe.weight"][:T][None], (n, T, D)).copy(), "resid")
    x = emb + pos
    causal = np.tril(np.ones((T, T), dtype=bool))
    for l in range(L):
        h = "h.%d." % l
        b = "blocks.%d." % l
        x = hook(b + "hook_resid_pre", x, "resid")
        a = layer_norm(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"], eps)
        Wa, ba = P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]
        qkv = a @ Wa + ba
        q = qkv[..., :D].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        k = qkv[..., D:2 * D].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        v = qkv[..., 2 * D:].reshape(n, T, H, dh).transpose(0, 2, 1, 3)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
        s = np.where(causal, s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        pm = np.exp(s)
        pm /= pm.sum(-1, keepdims=True)
        z = (pm @ v).transpose(0, 2, 1, 3).reshape(n, T, D)
        fold = ba[2 * D:] + P[h + "ln_1.bias"] @ Wa[:, 2 * D:]
        z = hook(b + "attn.hook_z", z, "hook_z", fold)
        attn_out = hook(b + "hook_attn_out", z @ P[h + "attn.c_proj.weight"] + P[h + "attn.c_proj.bias"], "resid")
        x = hook(b + "hook_resid_mid", x + attn_out, "resid")
        m = layer_norm(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"], eps)
        post = hook(b + "mlp.hook_post", gelu(m @ P[h + "mlp.c_fc.weight"] + P[h + "mlp.c_fc.bias"]), "hook_post")
        mlp_out = hook(b + "hook_mlp_out", post @ P[h + "mlp.c_proj.weight"] + P[h + "mlp.c_proj.bias"], "resid")
        x = hook(b + "hook_resid_post", x + mlp_out, "resid")
    xf = layer_norm(x, P["ln_f.weight"], P["ln_f.bias"], eps)
    return log_softmax(xf @ P["wte.weight"].T)


def forward_with_patch_of(ref):
    """run_reference.forward_with_patch's contract on a family's reference module (its
    forward(config, params, tokens, basis, patch=...)): the site's value in `basis` goes through
    patch_fn, its return value replaces it (test_neox.py and test_gemma.py put it in place of
    forward_with_patch for Pythia and Gemma-2)."""
    def forward_with_patch(config, params, tokens, site=None, basis="processed", patch_fn=None, capture=None):
        patch = {site: patch_fn} if site is not None and patch_fn is not None else None
        acts, lp = ref.forward(config, params, np.asarray(tokens), basis=basis, patch=patch)
        if capture is not None and site is not None:
            capture[site] = acts[site]
        return lp
    return forward_with_patch


def clean_forward(config, params, tokens, sites_bases):
    """-> (logprobs, {site: activation in its basis}) for [(site, basis), ...]."""
    acts = {}
    lp = None
    for site, basis in sites_bases:
        cap = {}
        lp = forward_with_patch(config, params, tokens, site, basis, None, capture=cap)
        acts[(site, basis)] = cap[site]
    if lp is None:
        lp = forward_with_patch(config, params, tokens)
    return lp, acts


def kl_div(lp_clean, lp_int):
    """KL(P_clean || Q_int) per position, natural log, full vocabulary."""
    p = np.exp(lp_clean)
    return (p * (lp_clean - lp_int)).sum(-1)


def _next_ce(lp, tokens):
    n, T = tokens.shape
    ce = np.full((n, T), np.nan)
    ce[:, :-1] = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    return ce


# ------------------------------------------------------------------ deterministic interventions

def _safe_norm(v):
    return np.linalg.norm(v, axis=-1, keepdims=True)


def replacement(iv, x, x_hat, mean_x):
    """Replacement of x (rows [N, d]) under a deterministic intervention."""
    nx, nh = _safe_norm(x), _safe_norm(x_hat)
    if iv == "sae":
        return x_hat
    if iv == "norm_corrected_sae":
        return np.where(nh > 0, x_hat * nx / np.where(nh > 0, nh, 1.0), x_hat)
    if iv == "sae_norm":
        return np.where(nx > 0, x * nh / np.where(nx > 0, nx, 1.0), x)
    if iv == "zero_ablation":
        return np.zeros_like(x)
    if iv == "mean_ablation":
        return np.broadcast_to(mean_x, x.shape).copy()
    raise ValueError("not a deterministic intervention: %r" % iv)


def measured_mask(config, tokens, bos="exclude"):
    tokens = np.asarray(tokens)
    if bos == "include":
        return np.ones(tokens.shape, dtype=bool)
    return tokens != int(config["bos_token_id"])


def saelens_scores(config, params, tokens, site, basis, x_hat, lp_clean, special_ids=None):
    """kl_div_score and ce_loss_score as sae_lens/evals.py computes them
    (get_recons_loss + get_downstream_reconstruction_metrics): special tokens
    are left out of every mean.  special_ids: SAELens's ignore_tokens =
    get_special_token_ids(model.tokenizer) (sae_lens/util.py, v6: every
    *_token_id of the tokenizer and the ids of its special_tokens_map,
    additional_special_tokens included: for Gemma also <unk> and the turn
    markers); None = the config's bos, eos and pad ids (what a model folder
    without tokenizer files gives saegap).  The SAE pass keeps them clean
    (standard_replacement_hook), except at hook_z, where
    all_head_replacement_hook substitutes every position; the zero-ablation
    pass zeroes the site at every position (standard_zero_ablate_hook).  CE
    per token t predicts t+1, masked by token t (SAELens's mask[:, :-1])."""
    if special_ids is None:
        special = [config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")]
        special_ids = [int(t) for t in special if t is not None]
    nonspecial = ~np.isin(np.asarray(tokens), [int(t) for t in special_ids])
    sae_rows = np.ones_like(nonspecial) if _kind_of_site(site) == "hook_z" else nonspecial
    lp_sae = forward_with_patch(config, params, tokens, site, basis,
                                lambda xb: np.where(sae_rows[..., None], x_hat, xb))
    lp_zero = forward_with_patch(config, params, tokens, site, basis, lambda xb: np.zeros_like(xb))
    m_ce = nonspecial[:, :-1]

    def ce(lp):
        return _next_ce(lp, tokens)[:, :-1][m_ce].mean()

    out = {"kl_div_with_sae": kl_div(lp_clean, lp_sae)[nonspecial].mean(),
           "kl_div_with_ablation": kl_div(lp_clean, lp_zero)[nonspecial].mean(),
           "ce_loss_with_sae": ce(lp_sae), "ce_loss_with_ablation": ce(lp_zero),
           "ce_loss_without_sae": ce(lp_clean)}
    out["kl_div_score"] = (out["kl_div_with_ablation"] - out["kl_div_with_sae"]) / out["kl_div_with_ablation"]
    out["ce_loss_score"] = (out["ce_loss_with_ablation"] - out["ce_loss_with_sae"]) / (
        out["ce_loss_with_ablation"] - out["ce_loss_without_sae"])
    return out


def reference_run(model_dir, sae_dirs, tokens, bos="exclude", interventions=DETERMINISTIC,
                  norm_scaling_factor=None, basis=None, scope="all", position=None,
                  window=16, model=None, special_ids=None):
    """Everything `saegap run` writes for the deterministic interventions.

    sae_dirs: list of SAE folders (each holding cfg.json).
    norm_scaling_factor: scalar, or dict {site: scalar}, for
      expected_average_only_in SAEs.
    basis: None (from each cfg) or 'processed' / 'raw' for all SAEs.
    scope 'position': intervene at `position` only (when that token is
      measured), record KL/CE at position..position+window-1 -> [n, window].
    special_ids: the tokens SAELens's scores leave out (saelens_scores).
    Returns {"measured": bool [n,T], "clean_ce": [n,T], "clean_logprobs",
             "sites": {site: {...}}}.
    """
    if model is None:
        config, params = load_model(model_dir)
    else:
        config, params = model
    tokens = np.asarray(tokens, dtype=np.int64)
    n, T = tokens.shape
    meas = measured_mask(config, tokens, bos)
    ce_mask = meas.copy()
    ce_mask[:, -1] = False
    lp_clean = forward_with_patch(config, params, tokens)
    clean_ce = np.where(ce_mask, _next_ce(lp_clean, tokens), np.nan)
    res = {"measured": meas, "clean_ce": clean_ce, "clean_logprobs": lp_clean, "sites": {}}
    for sdir in sae_dirs:
        cfg, sp = load_sae(sdir)
        desc = parse_sae_cfg(cfg)
        site = desc["hook"]
        b = sae_basis(cfg, basis)
        nsf = norm_scaling_factor.get(site) if isinstance(norm_scaling_factor, dict) else norm_scaling_factor
        cap = {}
        forward_with_patch(config, params, tokens, site, b, None, capture=cap)
        x = cap[site]                                   # [n,T,d]
        assert x.shape[-1] == desc["d_in"], (site, x.shape, desc["d_in"])
        parts = sae_parts(cfg, sp, x, nsf)
        f, x_hat = parts["f"], parts["x_hat"]
        xm, xhm, fm = x[meas], x_hat[meas], f[meas]    # measured rows
        mean_x = xm.mean(0)
        r = {"basis": b, "desc": desc, "x": x, "x_hat": x_hat, "f": f, "kl": {}, "ce": {},
             "recon": {}, "attrs": {}, "nsf": nsf}
        # reconstruction metrics per token
        nan = np.full((n, T), np.nan)
        err = x_hat - x
        nx, nh = np.linalg.norm(x, axis=-1), np.linalg.norm(x_hat, axis=-1)
        metrics = {
            "l2_norm_in": nx,
            "l2_norm_out": nh,
            "eps_norm": np.linalg.norm(err, axis=-1),
            "cossim": (x * x_hat).sum(-1) / (nx * nh),
            "mse": (err ** 2).mean(-1),
            "l0": (f > 0).sum(-1).astype(np.float64),
            "l1": np.abs(f).sum(-1),
        }
        for k, v in metrics.items():
            r["recon"][k] = np.where(meas, v, nan)
        density = (fm > 0).mean(0)
        r["feature_density"] = density
        a = r["attrs"]
        a["explained_variance"] = 1.0 - ((xhm - xm) ** 2).sum() / ((xm - mean_x) ** 2).sum()
        a["relative_reconstruction_bias"] = (xhm ** 2).sum(-1).mean() / (xm * xhm).sum(-1).mean()
        a["dead_latents"] = int((density == 0).sum())
        a["mean_l0"] = float((fm > 0).sum(-1).mean())
        # interventions
        for iv in interventions:
            rep_all = replacement(iv, x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1]),
                                  mean_x).reshape(x.shape)
            if scope == "all":
                pmask = meas
            else:
                pmask = np.zeros_like(meas)
                pmask[:, position] = meas[:, position]

            def patch(xb, rep_all=rep_all, pmask=pmask):
                return np.where(pmask[..., None], rep_all, xb)

            lp = forward_with_patch(config, params, tokens, site, b, patch)
            kl = kl_div(lp_clean, lp)
            ce = _next_ce(lp, tokens)
            if scope == "all":
                r["kl"][iv] = np.where(meas, kl, np.nan)
                r["ce"][iv] = np.where(ce_mask, ce, np.nan)
            else:
                sl = slice(position, position + window)
                row = meas[:, position][:, None]
                r["kl"][iv] = np.where(row & meas[:, sl], kl[:, sl], np.nan)
                r["ce"][iv] = np.where(row & ce_mask[:, sl], ce[:, sl], np.nan)
            r["attrs"]["mean_kl_" + iv] = float(np.nanmean(r["kl"][iv]))
        if "sae" in r["kl"] and "zero_ablation" in r["kl"]:
            a.update(saelens_scores(config, params, tokens, site, b, x_hat, lp_clean, special_ids))
        res["sites"][site] = r
    return res
