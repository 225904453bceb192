"""SAELens-layout SAE folders for saegap's tests (FIELD-FACTS.md section 3).

`make_sae(dir, d_in, d_sae, hook_name, ...)` writes `cfg.json` in one of the
three cfg generations (legacy / flat v3-v5 / v6) and `sae_weights.safetensors`
(via saegap_fixtures.write_safetensors), and returns the cfg written and the
float64 values actually stored.

The weights make a *decent* SAE: decoder rows are random directions with
norms 0.8..1.25, the encoder is the decoder's dual plus noise, biases /
thresholds / gates are set from quantiles of the pre-activations on a sample
of typical inputs so that roughly 15-30 % of the latents fire, and one global
scale of the code is fitted by least squares so that x_hat is close to x.
Pass `x_sample` (typical activations of the site in the SAE's basis, e.g. the
reference forward pass) for a good fit; otherwise an isotropic Gaussian
sample of norm ~`x_scale` is used.

`write_gemma_scope(root, kind, layer, params)` writes a Gemma Scope folder (params.npz in
Google's layout), for the Pythia and Gemma-2 tests.

Written from the formats, independently of saegap's C code.
"""

import json
import os
import re

import numpy as np

from saegap_fixtures import round_to_dtype, write_safetensors

__all__ = ["make_sae", "write_cfg", "hook_layer"]

_ARCHS = ("standard", "jumprelu", "topk", "gated")


def hook_layer(hook_name):
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else 0


def _cfg_dtype(generation):
    return "torch.float32" if generation == "legacy" else "float32"


def write_cfg(dir, cfg):
    os.makedirs(dir, exist_ok=True)
    with open(os.path.join(dir, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def _build_cfg(generation, d_in, d_sae, hook_name, architecture, apply_b_dec_to_input,
               normalize_activations, k, model_name, from_pretrained_kwargs, scaling_factor,
               rescale_acts_by_decoder_norm, context_size):
    layer = hook_layer(hook_name)
    if generation == "legacy":
        if architecture != "standard":
            raise ValueError("legacy cfg files only describe standard SAEs")
        cfg = {
            "model_name": model_name,
            "hook_point": hook_name,
            "hook_point_layer": layer,
            "hook_point_head_index": None,
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": _cfg_dtype(generation),
            "context_size": context_size,
            "device": "cpu",
            "dataset_path": "Skylion007/openwebtext",
            "is_dataset_tokenized": False,
            "b_dec_init_method": "geometric_median",
            "expansion_factor": max(1, d_sae // d_in),
            "lr": 4e-4,
            "l1_coefficient": 8e-5,
            "use_ghost_grads": False,
            "seed": 42,
        }
        if not apply_b_dec_to_input:
            cfg["apply_b_dec_to_input"] = False
        if normalize_activations != "none":
            cfg["normalize_activations"] = normalize_activations
        if from_pretrained_kwargs is not None:
            cfg["model_from_pretrained_kwargs"] = from_pretrained_kwargs
        if scaling_factor:
            cfg["finetuning_scaling_factor"] = True
        return cfg
    if generation == "flat":
        cfg = {
            "architecture": architecture,
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": _cfg_dtype(generation),
            "device": "cpu",
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_layer": layer,
            "hook_head_index": None,
            "activation_fn_str": "topk" if architecture == "topk" else "relu",
            "activation_fn_kwargs": {"k": int(k)} if architecture == "topk" else {},
            "apply_b_dec_to_input": bool(apply_b_dec_to_input),
            "finetuning_scaling_factor": bool(scaling_factor),
            "sae_lens_training_version": "4.0.0",
            "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext",
            "dataset_trust_remote_code": True,
            "context_size": context_size,
            "normalize_activations": normalize_activations,
            "neuronpedia_id": None,
            "sae_lens_version": "4.0.0",
        }
        if rescale_acts_by_decoder_norm:
            cfg["rescale_acts_by_decoder_norm"] = True
        if from_pretrained_kwargs is not None:
            cfg["model_from_pretrained_kwargs"] = from_pretrained_kwargs
        return cfg
    if generation == "v6":
        meta = {
            "model_name": model_name,
            "hook_name": hook_name,
            "hook_head_index": None,
            "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext",
            "context_size": context_size,
            "sae_lens_version": "6.5.0",
            "sae_lens_training_version": "6.5.0",
            "neuronpedia_id": None,
        }
        if from_pretrained_kwargs is not None:
            meta["model_from_pretrained_kwargs"] = from_pretrained_kwargs
        cfg = {
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": _cfg_dtype(generation),
            "device": "cpu",
            "apply_b_dec_to_input": bool(apply_b_dec_to_input),
            "normalize_activations": normalize_activations,
            "reshape_activations": "hook_z" if hook_name.endswith("attn.hook_z") else "none",
            "architecture": architecture,
            "metadata": meta,
        }
        if architecture == "topk":
            cfg["k"] = int(k)
            cfg["rescale_acts_by_decoder_norm"] = bool(rescale_acts_by_decoder_norm)
        return cfg
    raise ValueError("generation %r" % generation)


def make_sae(dir, d_in, d_sae, hook_name, architecture="standard", generation="v6", dtype="F32",
             apply_b_dec_to_input=True, normalize_activations="none", k=None,
             model_name="tiny-gpt2", from_pretrained_kwargs=None, scaling_factor=False,
             rescale_acts_by_decoder_norm=False, seed=0, x_scale=1.0, x_sample=None,
             norm_scaling_factor=None, context_size=128, cfg_edit=None, ridge=1.0):
    """Write an SAE folder; returns dict(cfg=cfg written, params=float64 stored
    values, dir=dir, desc=..., k=...).

    normalize_activations: "none" | "constant_norm_rescale" | "layer_norm" |
      "expected_average_only_in" | True | False | None, written as given
      (legacy: the key is left out for "none").
    x_sample: [N, d_in] typical inputs (site basis) used to place biases and
      fit the code's scale; norm_scaling_factor: the factor assumed for
      expected_average_only_in during that fit (default sqrt(d_in)/E||x||).
    cfg_edit: optional function(cfg) -> cfg applied before writing.
    ridge: relative ridge strength of the decoder refit (0/None: no refit).
    """
    import run_reference as rr  # the SAE maths lives with the reference

    if architecture not in _ARCHS:
        raise ValueError(architecture)
    if architecture == "topk" and k is None:
        k = max(2, d_sae // 8)
    rng = np.random.Generator(np.random.PCG64(seed + 7919))
    cfg = _build_cfg(generation, d_in, d_sae, hook_name, architecture, apply_b_dec_to_input,
                     normalize_activations, k, model_name, from_pretrained_kwargs, scaling_factor,
                     rescale_acts_by_decoder_norm, context_size)
    mode = rr._norm_mode(normalize_activations)

    if x_sample is None:
        x_sample = rng.standard_normal((512, d_in)) * (x_scale / np.sqrt(d_in))
    xs = np.asarray(x_sample, dtype=np.float64).reshape(-1, d_in)
    if mode == "expected_average_only_in" and norm_scaling_factor is None:
        norm_scaling_factor = np.sqrt(d_in) / np.linalg.norm(xs, axis=-1).mean()
    x_n, _ = rr._norm_in(mode, xs, norm_scaling_factor)

    # decoder: random directions, row norms 0.8 .. 1.25
    dirs = rng.standard_normal((d_sae, d_in))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    rown = rng.uniform(0.8, 1.25, size=(d_sae, 1))
    W_dec = dirs * rown
    sd = x_n.std(0).mean()
    b_dec = x_n.mean(0) + 0.05 * sd * rng.standard_normal(d_in)
    x_in = x_n - b_dec if apply_b_dec_to_input else x_n
    W_enc = (dirs / rown).T * (1.0 + 0.1 * rng.standard_normal((d_in, d_sae)))
    pre = x_in @ W_enc                                     # [N, d_sae]
    pstd = pre.std(0) + 1e-12

    P = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec}
    if architecture == "standard":
        P["b_enc"] = -np.quantile(pre, 0.78, axis=0) + 0.05 * pstd * rng.standard_normal(d_sae)
    elif architecture == "jumprelu":
        b_enc = -np.quantile(pre, 0.5, axis=0) + 0.15 * pstd
        z = pre + b_enc
        P["b_enc"] = b_enc
        # thresholds positive, above the median z: part of the z > 0 stay below
        # (jittered: a quantile can coincide with a sample value)
        P["threshold"] = np.maximum(np.quantile(z, 0.78, axis=0), 0.2 * pstd) \
            + 0.03 * pstd * np.abs(rng.standard_normal(d_sae))
    elif architecture == "topk":
        P["b_enc"] = -np.quantile(pre, 0.7, axis=0) + 0.05 * pstd * rng.standard_normal(d_sae)
    else:  # gated
        r_mag = 0.2 * rng.standard_normal(d_sae)
        P["r_mag"] = r_mag
        P["b_gate"] = -np.quantile(pre, 0.72, axis=0) + 0.05 * pstd * rng.standard_normal(d_sae)
        mag = x_in @ (W_enc * np.exp(r_mag))
        P["b_mag"] = -np.quantile(mag, 0.8, axis=0) + 0.05 * pstd * rng.standard_normal(d_sae)
    if scaling_factor:
        P["scaling_factor"] = rng.uniform(0.6, 1.4, size=d_sae)

    # one global scale of the code, fitted by least squares in the normalised space
    parts = rr.sae_parts(cfg, P, xs, norm_scaling_factor)
    h = parts["x_hat_n"] - b_dec
    tgt = x_n - b_dec
    alpha = float((tgt * h).sum() / max((h * h).sum(), 1e-300))
    if not (alpha > 0):
        alpha = 1.0
    scaled = {"standard": ("W_enc", "b_enc"), "jumprelu": ("W_enc", "b_enc", "threshold"),
              "topk": ("W_enc", "b_enc"), "gated": ("W_enc", "b_gate", "b_mag")}[architecture]
    for name in scaled:
        P[name] = P[name] * alpha

    # then refit the decoder by ridge regression on the code it receives
    # (explained variance ~0.9 on the sample, like a real SAE).  For topk with
    # rescale_acts_by_decoder_norm the selection depends on ||W_dec_i||:
    # refit a few times.
    if ridge:
        for _ in range(4 if (architecture == "topk" and rescale_acts_by_decoder_norm) else 1):
            f = rr.sae_parts(cfg, P, xs, norm_scaling_factor)["f"]
            g = f
            if architecture == "topk" and rescale_acts_by_decoder_norm:
                g = g / np.linalg.norm(P["W_dec"], axis=-1)
            if scaling_factor:
                g = g * P["scaling_factor"]
            G = g.T @ g
            lam = ridge * max(np.trace(G), 1e-300) / d_sae
            W = np.linalg.solve(G + lam * np.eye(d_sae), g.T @ tgt)
            dead = np.linalg.norm(W, axis=-1) < 1e-12   # latents that never fire: keep
            W[dead] = P["W_dec"][dead]
            P["W_dec"] = W

    stored = {name: round_to_dtype(v, dtype) for name, v in P.items()}
    if cfg_edit is not None:
        cfg = cfg_edit(cfg)
    os.makedirs(dir, exist_ok=True)
    write_cfg(dir, cfg)
    write_safetensors(os.path.join(dir, "sae_weights.safetensors"), P, dtype=dtype)
    return {"cfg": cfg, "params": stored, "dir": str(dir), "k": k,
            "norm_scaling_factor_fit": norm_scaling_factor}


def write_gemma_scope(root, kind, layer, params, save=np.savez):
    """A Gemma Scope folder (FAMILIES-FACTS 4(a)): .../gemma-scope-2b-pt-KIND/layer_L/width_1k/
    average_l0_5/params.npz with W_enc, W_dec, b_enc, b_dec, threshold (float32)."""
    d = os.path.join(root, "gemma-scope-2b-pt-" + kind, layer, "width_1k", "average_l0_5")
    os.makedirs(d, exist_ok=True)
    save(os.path.join(d, "params.npz"), **{k: np.asarray(params[k], np.float32)
                                          for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    return d
