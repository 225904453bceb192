"""Float64 NumPy reference of TransformerLens's HookedTransformer for GPT-2.

Written from TransformerLens's source (github TransformerLensOrg/TransformerLens:
transformer_lens/pretrained/weight_conversions/gpt2.py `convert_gpt2_weights`,
transformer_lens/HookedTransformer.py `from_pretrained`,
`from_pretrained_no_processing`, `load_and_process_state_dict`, and
transformer_lens/weight_processing.py `ProcessWeights.process_weights`,
`fold_layer_norm`, `center_writing_weights`, `center_unembed`,
`fold_value_biases`) and SAELens's model loading rule (sae_lens/load_model.py),
independently of saegap's C code and of run_reference.py's shortcut (which
converts hook values instead of processing weights).

* `convert_gpt2_weights(config, params)`: Hugging Face GPT-2 tensors (as
  gpt2_reference.load_model returns them) -> TransformerLens state dict
  (W_E, W_pos, blocks.L.{ln1,attn,ln2,mlp}.*, ln_final.*, unembed.W_U/b_U).
  GPT-2's lm_head is tied to wte: W_U is a separate copy of wte^T, as in TL.
* `process_weights(sd, config, fold_ln, center_writing_weights,
  center_unembed, fold_value_biases)`: TL's processing, one flag at a time,
  in TL's order (fold_ln -> center_writing_weights -> center_unembed ->
  fold_value_biases, then b_O re-centred when center_writing_weights).
  Returns (state dict, normalization_type) - "LNPre" after fold_ln.
* `TLModel(config, params, **flags)`: the processed model;
  `model.run(tokens, hooks={name: patch_fn}, cache=dict)` -> log-probs
  [n, T, vocab], with every hook value (before patching) in `cache`.
  Hook values are [n, T, width]; attn.hook_z is flattened head-major to
  n_head * d_head (TL's [n, T, head, d_head] reshaped), as SAELens's hook_z
  SAEs see it.
* `saelens_flags(cfg)`: the processing flags SAELens loads the model with for
  an SAE cfg.json (flat cfg: `model_from_pretrained_kwargs` at top level; v6:
  under `metadata`) -> HookedTransformer.from_pretrained_no_processing(**kw):
  every flag False unless the dict sets it true.  Key absent ->
  HookedTransformer.from_pretrained defaults (all four True).
"""

import numpy as np

__all__ = ["FLAGS", "BASIS_FLAGS", "DEFAULT_FLAGS", "convert_gpt2_weights",
           "fold_layer_norm", "center_writing_weights", "center_unembed",
           "fold_value_biases", "process_weights", "TLModel", "saelens_kwargs",
           "saelens_flags", "basis_name", "hook_names"]

FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
# the flags that change a hook value, in the order saegap names a basis
BASIS_FLAGS = ("center_writing_weights", "fold_ln", "fold_value_biases")
DEFAULT_FLAGS = {f: True for f in FLAGS}          # HookedTransformer.from_pretrained
NO_PROCESSING = {f: False for f in FLAGS}         # from_pretrained_no_processing

RESID_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post",
               "hook_attn_out", "hook_mlp_out")


def hook_names(n_layer):
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(n_layer):
        for s in ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                  "mlp.hook_post", "hook_mlp_out", "hook_resid_post"):
            names.append("blocks.%d.%s" % (l, s))
    return names


# ---------------------------------------------------------------- SAELens's rule

def saelens_kwargs(cfg):
    """-> (dict or None, where it was found: 'model_from_pretrained_kwargs',
    'metadata.model_from_pretrained_kwargs' or None when absent)."""
    meta = cfg.get("metadata")
    if isinstance(meta, dict) and "model_from_pretrained_kwargs" in meta:
        return meta["model_from_pretrained_kwargs"], "metadata.model_from_pretrained_kwargs"
    if "model_from_pretrained_kwargs" in cfg:
        return cfg["model_from_pretrained_kwargs"], "model_from_pretrained_kwargs"
    return None, None


def saelens_flags(cfg):
    """Processing flags of the model SAELens runs the SAE with.

    sae_lens/load_model.py: kwargs = model_from_pretrained_kwargs or {};
    HookedTransformer.from_pretrained_no_processing(model_name, **kwargs),
    whose fold_ln / center_writing_weights / center_unembed /
    fold_value_biases default to False.  Other keys (n_devices, dtype, ...)
    do not touch the weights.  Key absent: the SAE was trained with
    HookedTransformer.from_pretrained's defaults (all True)."""
    kw, where = saelens_kwargs(cfg)
    if where is None:
        return dict(DEFAULT_FLAGS)
    kw = kw or {}
    return {f: bool(kw.get(f, False)) for f in FLAGS}


def basis_name(flags):
    """saegap's name of the hook basis of a flag set."""
    on = [f for f in BASIS_FLAGS if flags.get(f)]
    if len(on) == len(BASIS_FLAGS):
        return "processed"
    if not on:
        return "raw"
    return "+".join(on)


# ---------------------------------------------------------------- weight conversion

def _dims(config):
    D = int(config["n_embd"])
    H = int(config["n_head"])
    return int(config["n_layer"]), H, D, D // H


def convert_gpt2_weights(config, params):
    """transformer_lens/pretrained/weight_conversions/gpt2.py, in NumPy.
    `params`: HF tensor names without the `transformer.` prefix."""
    L, H, D, dh = _dims(config)
    P = params
    sd = {}
    sd["embed.W_E"] = P["wte.weight"].copy()
    n_ctx = int(config.get("n_ctx", config.get("n_positions")))
    sd["pos_embed.W_pos"] = P["wpe.weight"][:n_ctx].copy()
    for l in range(L):
        h, b = "h.%d." % l, "blocks.%d." % l
        sd[b + "ln1.w"] = P[h + "ln_1.weight"].copy()
        sd[b + "ln1.b"] = P[h + "ln_1.bias"].copy()
        W = P[h + "attn.c_attn.weight"]                      # [d_model, 3 d_model]
        for i, c in enumerate("QKV"):
            Wc = W[:, i * D:(i + 1) * D]                     # "m (i h) -> i m h"
            sd[b + "attn.W_" + c] = Wc.reshape(D, H, dh).transpose(1, 0, 2).copy()
        qkv_bias = P[h + "attn.c_attn.bias"].reshape(3, H, dh)
        for i, c in enumerate("QKV"):
            sd[b + "attn.b_" + c] = qkv_bias[i].copy()
        # "(i h) m -> i h m"
        sd[b + "attn.W_O"] = P[h + "attn.c_proj.weight"].reshape(H, dh, D).copy()
        sd[b + "attn.b_O"] = P[h + "attn.c_proj.bias"].copy()
        sd[b + "ln2.w"] = P[h + "ln_2.weight"].copy()
        sd[b + "ln2.b"] = P[h + "ln_2.bias"].copy()
        sd[b + "mlp.W_in"] = P[h + "mlp.c_fc.weight"].copy()
        sd[b + "mlp.b_in"] = P[h + "mlp.c_fc.bias"].copy()
        sd[b + "mlp.W_out"] = P[h + "mlp.c_proj.weight"].copy()
        sd[b + "mlp.b_out"] = P[h + "mlp.c_proj.bias"].copy()
    # GPT-2's lm_head.weight is tied to wte; TL keeps W_U as its own tensor
    sd["unembed.W_U"] = P["wte.weight"].T.copy()
    sd["ln_final.w"] = P["ln_f.weight"].copy()
    sd["ln_final.b"] = P["ln_f.bias"].copy()
    # HookedTransformer.fill_missing_keys: the missing bias (b_U) is zeros
    sd["unembed.b_U"] = np.zeros(int(config["vocab_size"]))
    return sd


# ---------------------------------------------------------------- weight processing

def fold_layer_norm(sd, config):
    """ProcessWeights.fold_layer_norm(fold_biases=True, center_weights=True)
    for LayerNorm: per layer fold ln1 into W_Q/W_K/W_V (bias first, then
    weight, then centre over d_model), ln2 into W_in (same); then ln_final's
    bias into b_U (_fold_final_rms_bias), its weight into W_U, W_U centred
    over d_model (_fold_unembed_layer_norm).  The LNs become identity
    (LayerNormPre in the model)."""
    sd = {k: v.copy() for k, v in sd.items()}
    L = int(config["n_layer"])
    for l in range(L):
        b = "blocks.%d." % l
        ln_w, ln_b = sd[b + "ln1.w"], sd[b + "ln1.b"]
        for c in "QKV":
            W = sd[b + "attn.W_" + c]                        # [H, d_model, d_head]
            sd[b + "attn.b_" + c] = sd[b + "attn.b_" + c] + (W * ln_b[None, :, None]).sum(-2)
        sd[b + "ln1.b"] = np.zeros_like(ln_b)
        for c in "QKV":
            sd[b + "attn.W_" + c] = sd[b + "attn.W_" + c] * ln_w[None, :, None]
        sd[b + "ln1.w"] = np.ones_like(ln_w)
        for c in "QKV":
            W = sd[b + "attn.W_" + c]
            sd[b + "attn.W_" + c] = W - W.mean(1, keepdims=True)   # "h m d -> h 1 d"
        # MLP: W_in [d_model, d_mlp]
        ln_w, ln_b = sd[b + "ln2.w"], sd[b + "ln2.b"]
        W_in = sd[b + "mlp.W_in"]
        sd[b + "mlp.b_in"] = sd[b + "mlp.b_in"] + (W_in * ln_b[:, None]).sum(-2)
        sd[b + "ln2.b"] = np.zeros_like(ln_b)
        W_in = W_in * ln_w[:, None]
        sd[b + "ln2.w"] = np.ones_like(ln_w)
        sd[b + "mlp.W_in"] = W_in - W_in.mean(0, keepdims=True)
    # final LN -> unembed
    W_U = sd["unembed.W_U"]                                  # [d_model, d_vocab]
    sd["unembed.b_U"] = sd["unembed.b_U"] + (W_U * sd["ln_final.b"][:, None]).sum(-2)
    sd["ln_final.b"] = np.zeros_like(sd["ln_final.b"])
    W_U = W_U * sd["ln_final.w"][:, None]
    sd["ln_final.w"] = np.ones_like(sd["ln_final.w"])
    sd["unembed.W_U"] = W_U - W_U.mean(0, keepdims=True)
    return sd


def center_writing_weights(sd, config):
    """ProcessWeights.center_writing_weights: W_E, W_pos, W_O, W_out minus
    their mean over d_model (last axis), b_O and b_out minus their mean."""
    sd = {k: v.copy() for k, v in sd.items()}
    sd["embed.W_E"] = sd["embed.W_E"] - sd["embed.W_E"].mean(-1, keepdims=True)
    sd["pos_embed.W_pos"] = sd["pos_embed.W_pos"] - sd["pos_embed.W_pos"].mean(-1, keepdims=True)
    for l in range(int(config["n_layer"])):
        b = "blocks.%d." % l
        sd[b + "attn.W_O"] = sd[b + "attn.W_O"] - sd[b + "attn.W_O"].mean(-1, keepdims=True)
        sd[b + "attn.b_O"] = sd[b + "attn.b_O"] - sd[b + "attn.b_O"].mean()
        sd[b + "mlp.W_out"] = sd[b + "mlp.W_out"] - sd[b + "mlp.W_out"].mean(-1, keepdims=True)
        sd[b + "mlp.b_out"] = sd[b + "mlp.b_out"] - sd[b + "mlp.b_out"].mean()
    return sd


def center_unembed(sd):
    """ProcessWeights.center_unembed: W_U minus its mean over the vocabulary,
    b_U minus its mean."""
    sd = {k: v.copy() for k, v in sd.items()}
    sd["unembed.W_U"] = sd["unembed.W_U"] - sd["unembed.W_U"].mean(-1, keepdims=True)
    sd["unembed.b_U"] = sd["unembed.b_U"] - sd["unembed.b_U"].mean()
    return sd


def fold_value_biases(sd, config):
    """ProcessWeights.fold_value_biases: b_O += sum_head b_V[h] @ W_O[h];
    b_V = 0."""
    sd = {k: v.copy() for k, v in sd.items()}
    for l in range(int(config["n_layer"])):
        b = "blocks.%d." % l
        b_V, W_O = sd[b + "attn.b_V"], sd[b + "attn.W_O"]    # [H, dh], [H, dh, D]
        sd[b + "attn.b_O"] = sd[b + "attn.b_O"] + (b_V[:, :, None] * W_O).sum((0, 1))
        sd[b + "attn.b_V"] = np.zeros_like(b_V)
    return sd


def process_weights(sd, config, fold_ln=False, center_writing_weights_=False,
                    center_unembed_=False, fold_value_biases_=False):
    """ProcessWeights.process_weights for a GPT-2 (LayerNorm) state dict.
    -> (state dict, normalization_type 'LN' | 'LNPre')."""
    norm = "LN"
    if fold_ln:
        norm = "LNPre"          # load_and_process_state_dict swaps the modules
        sd = fold_layer_norm(sd, config)
    if center_writing_weights_:  # normalization_type in LN/LNPre, no final_rms
        sd = center_writing_weights(sd, config)
    if center_unembed_:
        sd = center_unembed(sd)
    if fold_value_biases_:
        sd = fold_value_biases(sd, config)
        if center_writing_weights_:
            sd = {k: v.copy() for k, v in sd.items()}
            for l in range(int(config["n_layer"])):
                k = "blocks.%d.attn.b_O" % l
                sd[k] = sd[k] - sd[k].mean()
    return sd, norm


# ---------------------------------------------------------------- forward pass

def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * np.power(x, 3.0))))


def _gelu_exact(x):
    from math import erf
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(-1, keepdims=True))


class TLModel:
    """HookedTransformer (GPT-2) with the given processing flags, float64."""

    def __init__(self, config, params, fold_ln=False, center_writing_weights=False,
                 center_unembed=False, fold_value_biases=False):
        self.config = config
        self.flags = {"fold_ln": bool(fold_ln),
                      "center_writing_weights": bool(center_writing_weights),
                      "center_unembed": bool(center_unembed),
                      "fold_value_biases": bool(fold_value_biases)}
        sd = convert_gpt2_weights(config, params)
        self.sd, self.normalization_type = process_weights(
            sd, config, self.flags["fold_ln"], self.flags["center_writing_weights"],
            self.flags["center_unembed"], self.flags["fold_value_biases"])
        self.n_layer, self.n_head, self.d_model, self.d_head = _dims(config)
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        act = config.get("activation_function", "gelu_new")
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = _gelu_new
        elif act == "gelu":
            self.act = _gelu_exact
        elif act == "relu":
            self.act = lambda x: np.maximum(x, 0.0)  # noqa: E731
        else:
            raise ValueError(act)

    def _ln(self, x, prefix):
        """TL LayerNorm (x - mean) / sqrt(mean((x - mean)^2) + eps) * w + b, or
        LayerNormPre (no w, b) after fold_ln."""
        xc = x - x.mean(-1, keepdims=True)
        xn = xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + self.eps)
        if self.normalization_type == "LNPre":
            return xn
        return xn * self.sd[prefix + ".w"] + self.sd[prefix + ".b"]

    def run(self, tokens, hooks=None, cache=None):
        """Forward pass; hooks {name: patch_fn(x[n,T,width]) -> same shape};
        cache: dict receiving every hook's value before patching.
        Returns log-probs [n, T, vocab]."""
        hooks = hooks or {}
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim == 1:
            tokens = tokens[None]
        n, T = tokens.shape
        H, D, dh = self.n_head, self.d_model, self.d_head
        sd = self.sd

        def hp(name, x):
            if cache is not None:
                cache[name] = x.copy()
            fn = hooks.get(name)
            if fn is None:
                return x
            r = np.asarray(fn(x.copy()), dtype=np.float64)
            assert r.shape == x.shape, (name, r.shape, x.shape)
            return r

        embed = hp("hook_embed", sd["embed.W_E"][tokens])
        pos = hp("hook_pos_embed", np.broadcast_to(sd["pos_embed.W_pos"][:T][None], (n, T, D)).copy())
        resid = embed + pos
        mask = np.tril(np.ones((T, T), dtype=bool))
        for l in range(self.n_layer):
            b = "blocks.%d." % l
            resid = hp(b + "hook_resid_pre", resid)
            x = self._ln(resid, b + "ln1")
            # einsum "b p d, h d e -> b p h e" + b_[h e]
            q = np.einsum("npd,hde->nphe", x, sd[b + "attn.W_Q"]) + sd[b + "attn.b_Q"]
            k = np.einsum("npd,hde->nphe", x, sd[b + "attn.W_K"]) + sd[b + "attn.b_K"]
            v = np.einsum("npd,hde->nphe", x, sd[b + "attn.W_V"]) + sd[b + "attn.b_V"]
            scores = np.einsum("nqhe,nkhe->nhqk", q, k) / np.sqrt(dh)
            scores = np.where(mask, scores, -np.inf)
            scores = scores - scores.max(-1, keepdims=True)
            pattern = np.exp(scores)
            pattern /= pattern.sum(-1, keepdims=True)
            z = np.einsum("nhqk,nkhe->nqhe", pattern, v)          # [n, T, H, dh]
            z = hp(b + "attn.hook_z", z.reshape(n, T, H * dh)).reshape(n, T, H, dh)
            attn_out = np.einsum("nphe,hed->npd", z, sd[b + "attn.W_O"]) + sd[b + "attn.b_O"]
            attn_out = hp(b + "hook_attn_out", attn_out)
            resid = hp(b + "hook_resid_mid", resid + attn_out)
            x = self._ln(resid, b + "ln2")
            post = hp(b + "mlp.hook_post", self.act(x @ sd[b + "mlp.W_in"] + sd[b + "mlp.b_in"]))
            mlp_out = hp(b + "hook_mlp_out", post @ sd[b + "mlp.W_out"] + sd[b + "mlp.b_out"])
            resid = hp(b + "hook_resid_post", resid + mlp_out)
        x = self._ln(resid, "ln_final")
        logits = x @ sd["unembed.W_U"] + sd["unembed.b_U"]
        if cache is not None:
            cache["logits"] = logits
        return _log_softmax(logits)
