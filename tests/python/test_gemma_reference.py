"""Checks of the float64 Gemma-2 reference (gemma_reference.py) and its
fixture writer (gemma_fixtures.py).  No saegap binary is involved.

    /usr/bin/python3 -m pytest -q tests/python/test_gemma_reference.py

(a) site names, shapes, residual invariants, hook placement (post norms);
(b) processed basis = raw, and TL's folded model agrees; (c) closed forms:
zeroed blocks, RMSNorm, GELU tanh, embedding normalizer, rotary; (d) soft-caps,
sliding window edge, GQA, an attention entry by scalar loops; (e) patching and
causality; (f) F32/F16/BF16/sharded files, strict loader, untied lm_head;
(g) optionally, an independent torch implementation.
"""

import cmath
import math
import os

import numpy as np
import pytest

import gemma_fixtures as gf
import gemma_reference as gr
from reference_checks import (check_loader_strict, check_sharded_index, close, safetensors_header, stored_dtypes,
                              strictness_cases)
from saegap_fixtures import round_to_dtype

TOKENS = np.array([[2, 5, 17, 3, 199, 42, 8, 8, 120, 1, 64, 150, 205, 7],
                   [2, 3, 208, 77, 0, 9, 31, 200, 12, 5, 99, 2, 30, 44]])
B, T = TOKENS.shape
D, H, KV, DH, F, V, W = 48, 4, 2, 16, 96, 211, 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma2")
    fx = gf.make_gemma2_model(str(d))
    config, params = gr.load_model(str(d))
    return config, params, fx


@pytest.fixture(scope="module")
def run(model):
    config, params, _ = model
    return gr.forward(config, params, TOKENS, extra_hooks=True)


def _copy(params):
    return {k: v.copy() for k, v in params.items()}


# ---------------------------------------------------------------- (a) names, shapes, invariants

def test_dims(model):
    config, _, _ = model
    d = gr.model_dims(config)
    assert (d["D"], d["H"], d["KV"], d["dh"], d["F"], d["L"], d["V"]) == (D, H, KV, DH, F, 2, V)
    assert d["dh"] != d["D"] // d["H"]
    assert (d["attn_cap"], d["final_cap"], d["window"], d["qscalar"]) == (50.0, 30.0, W, 16.0)
    assert d["sliding"] == [True, False] and d["tied"] and d["eps"] == 1e-6
    for off in (None, 0, 0.0):
        d2 = gr.model_dims(dict(config, attn_logit_softcapping=off, final_logit_softcapping=off))
        assert d2["attn_cap"] is None and d2["final_cap"] is None
    assert gr.sliding_layers(dict(config, num_hidden_layers=5)) == [True, False, True, False, True]
    # Gemma2Config defaults for omitted keys (gemma-2-2b values)
    bare = {k: config[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                                   "intermediate_size", "vocab_size")}
    d3 = gr.model_dims(bare)
    assert (d3["KV"], d3["dh"], d3["qscalar"], d3["attn_cap"], d3["final_cap"], d3["window"]) == \
        (4, 256, 256.0, 50.0, 30.0, 4096)


def test_site_names_and_shapes(model, run):
    config, params, _ = model
    acts, lp = gr.forward(config, params, TOKENS)
    names = gr.site_names(config)
    assert list(acts) == names
    assert names[0] == "hook_embed" and "hook_pos_embed" not in names
    assert len(names) == 1 + 2 * 7
    widths = {"attn.hook_z": H * DH, "mlp.hook_post": F}
    for k, v in acts.items():
        assert v.dtype == np.float64
        assert v.shape == (B, T, widths.get(k.split(".", 2)[-1], D)), (k, v.shape)
    assert lp.shape == (B, T, V) and lp.dtype == np.float64
    close(np.exp(lp).sum(-1), np.ones((B, T)), 1e-12)
    acts_x, lp_x = run
    assert set(acts_x) == set(names) | set(gr.extra_site_names(config))
    assert np.array_equal(lp_x, lp)
    for k in names:
        assert np.array_equal(acts_x[k], acts[k]), k
    close(lp, gr.log_softmax(acts_x["logits"]), 1e-13)
    # O(1) activations
    for l in range(2):
        for s in ("attn.hook_z", "hook_attn_out", "mlp.hook_post", "hook_mlp_out"):
            r = np.sqrt((acts["blocks.%d.%s" % (l, s)] ** 2).mean())
            assert 0.3 < r < 3.0, (l, s, r)


def test_residual_invariants(model, run):
    config, params, _ = model
    acts = run[0]
    emb = params["model.embed_tokens.weight"][TOKENS] * np.float32(math.sqrt(D))
    assert np.array_equal(acts["hook_embed"], emb)
    assert np.array_equal(acts["blocks.0.hook_resid_pre"], acts["hook_embed"])
    for l in range(2):
        b = "blocks.%d." % l
        assert np.array_equal(acts[b + "hook_resid_mid"], acts[b + "hook_resid_pre"] + acts[b + "hook_attn_out"])
        assert np.array_equal(acts[b + "hook_resid_post"], acts[b + "hook_resid_mid"] + acts[b + "hook_mlp_out"])
    assert np.array_equal(acts["blocks.1.hook_resid_pre"], acts["blocks.0.hook_resid_post"])


def test_hook_placement_post_norms(model, run):
    """hook_attn_out / hook_mlp_out are after post_attention_layernorm /
    post_feedforward_layernorm; mlp.hook_post = gelu_tanh(gate) * up read
    from the pre-feedforward-normed resid_mid; hook_z feeds o_proj."""
    config, params, _ = model
    acts = run[0]
    eps = 1e-6
    for l in range(2):
        b, p = "blocks.%d." % l, "model.layers.%d." % l
        wa = params[p + "post_attention_layernorm.weight"]
        wm = params[p + "post_feedforward_layernorm.weight"]
        # dividing by (1 + w) leaves unit RMS (up to eps)
        close(np.sqrt(((acts[b + "hook_attn_out"] / (1 + wa)) ** 2).mean(-1)), 1.0, 1e-6)
        close(np.sqrt(((acts[b + "hook_mlp_out"] / (1 + wm)) ** 2).mean(-1)), 1.0, 1e-6)
        o = acts[b + "attn.hook_z"] @ params[p + "self_attn.o_proj.weight"].T
        close(acts[b + "hook_attn_out"], o / np.sqrt((o * o).mean(-1, keepdims=True) + eps) * (1 + wa), 1e-13)
        x = acts[b + "hook_resid_mid"]
        m = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1 + params[p + "pre_feedforward_layernorm.weight"])
        g, u = m @ params[p + "mlp.gate_proj.weight"].T, m @ params[p + "mlp.up_proj.weight"].T
        close(acts[b + "mlp.hook_pre"], g, 1e-13)
        close(acts[b + "mlp.hook_post"], gr.gelu_tanh(g) * u, 1e-13)
        dn = acts[b + "mlp.hook_post"] @ params[p + "mlp.down_proj.weight"].T
        close(acts[b + "hook_mlp_out"], gr.rms_norm(dn, wm, eps), 1e-13)
        # the norm weights are not trivial
        assert np.abs(wa).max() > 0.3 and np.abs(wm).max() > 0.3


# ---------------------------------------------------------------- (b) processed basis

def test_processed_equals_raw(model):
    config, params, _ = model
    raw, lp = gr.forward(config, params, TOKENS, basis="raw")
    proc, lp_p = gr.forward(config, params, TOKENS, basis="processed")
    assert list(proc) == list(raw)
    for k in raw:
        assert np.array_equal(proc[k], raw[k]), k
    assert np.array_equal(lp_p, lp)
    with pytest.raises(ValueError):
        gr.forward(config, params, TOKENS, basis="centred")


@pytest.mark.parametrize("processed", [False, True])
def test_tl_model_agrees_with_raw(model, processed):
    """TL's conversion (sqrt(d) folded into W_E, ln weights stored as 1 + w),
    unprocessed or with fold_ln -> RMSPre, gives the HF hooks to rounding."""
    config, params, _ = model
    raw, lp = gr.forward(config, params, TOKENS)
    sd = gr.convert_gemma_weights(config, params)
    norm = "RMS"
    if processed:
        sd, norm = gr.process_weights(sd, config)
        assert norm == "RMSPre"
        assert not any(k.endswith("ln1.w") or k.endswith("ln2.w") or k == "ln_final.w" for k in sd)
        assert "blocks.0.ln1_post.w" in sd and "blocks.1.ln2_post.w" in sd
    tl, lp_t = gr.tl_forward(config, sd, TOKENS, norm)
    assert list(tl) == list(raw)
    for k in raw:
        close(tl[k], raw[k], 1e-12)
    close(lp_t, lp, 1e-12)


# ---------------------------------------------------------------- (c) closed forms

def test_embed_normalizer_rounding():
    """sqrt(D) rounded to the compute dtype (float32 unless asked), never to config.json's
    torch_dtype (the storage dtype): FAMILIES-FACTS section 2, corrected 2026-12-07. HF's and
    TL's torch.tensor(D ** 0.5, dtype=compute dtype), worked out by hand."""
    c = {"hidden_size": 48}
    s = math.sqrt(48)
    f32 = float(np.float32(s))
    assert f32 == 6.92820310592651367 != s
    assert gr.embed_normalizer(c) == f32                                   # a float32 forward
    for stored in ("float32", "bfloat16", "float16", "torch.bfloat16"):    # the storage dtype plays no part
        assert gr.embed_normalizer(dict(c, torch_dtype=stored)) == f32
        assert gr.embed_normalizer(dict(c, dtype=stored)) == f32           # v5 key
    assert gr.embed_normalizer(c, "bfloat16") == 6.9375                    # 6.928 -> 8 significant bits
    assert gr.embed_normalizer(c, "torch.bfloat16") == 6.9375
    assert gr.embed_normalizer(c, "float16") == 6.9296875                  # 11 significant bits
    assert gr.embed_normalizer(c, "float64") == s
    # gemma-2-2b: 48 exactly in every dtype; gemma-2-9b (3584): 59.8665 in float32, 59.75 in bfloat16
    for dt in ("float32", "bfloat16", "float16"):
        assert gr.embed_normalizer({"hidden_size": 2304, "torch_dtype": "bfloat16"}, dt) == 48.0
    assert gr.embed_normalizer({"hidden_size": 3584, "torch_dtype": "bfloat16"}) == float(np.float32(math.sqrt(3584)))
    assert gr.embed_normalizer({"hidden_size": 3584}, "bfloat16") == 59.75
    assert gr.embed_normalizer({"hidden_size": 3584}, "float16") == 59.875
    with pytest.raises(ValueError):
        gr.embed_normalizer(c, "int8")


def test_rms_norm_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 48)) * 7 + 2
    y = gr.rms_norm(x, np.zeros(48), 0.0)
    close(np.sqrt((y * y).mean(-1)), 1.0, 1e-14)
    close(gr.rms_norm(x, np.full(48, 1.0), 0.0), 2 * y, 1e-14)          # (1 + w) with w = 1
    close(gr.rms_norm(x, np.full(48, -1.0), 0.0), 0.0, 0)               # w = -1 kills it
    close(gr.rms_norm(np.array([3.0, 4.0]), np.zeros(2), 0.0),
           np.array([3.0, 4.0]) / math.sqrt(12.5), 1e-15)
    # eps inside the square root, no mean subtraction
    close(gr.rms_norm(np.array([1.0, 1.0]), np.array([0.5, 0.0]), 3.0), [0.75, 0.5], 1e-15)
    assert np.array_equal(gr.rms_norm(np.zeros(4), np.zeros(4), 1e-6), np.zeros(4))


def test_gelu_tanh():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    want = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))) for v in x]
    close(gr.gelu_tanh(x), want, 1e-15)
    erf1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert abs(gr.gelu_tanh(np.array([1.0]))[0] - erf1) > 1e-5


def test_zeroed_blocks_residual_is_scaled_embedding(tmp_path, model):
    """One layer, q/k/v/o and gate/up/down all zero: attn_out = RMS(0) = 0,
    mlp_out = 0, so every residual hook is embed[tok] * float32(sqrt 48), and
    the log-probs are the soft-capped tied unembedding of it, by hand."""
    _, params, _ = model
    config = gf.gemma2_config(n_layer=1)
    t = {k: v for k, v in params.items() if not k.startswith("model.layers.1.")}
    for k in t:
        if ".self_attn." in k or ".mlp." in k:
            t[k] = np.zeros_like(t[k])
    gf.write_gemma2_folder(str(tmp_path), config, t)
    config, P = gr.load_model(str(tmp_path))
    acts, lp = gr.forward(config, P, TOKENS)
    emb = P["model.embed_tokens.weight"][TOKENS] * float(np.float32(math.sqrt(48)))
    for k in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid",
              "blocks.0.hook_resid_post"):
        assert np.array_equal(acts[k], emb), k
    for k in ("blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.0.mlp.hook_post",
              "blocks.0.hook_mlp_out"):
        assert not np.any(acts[k]), k
    E, w = P["model.embed_tokens.weight"], P["model.norm.weight"]
    for b in range(B):
        for t_ in range(T):
            x = emb[b, t_]
            xn = [x[i] / math.sqrt(sum(v * v for v in x) / 48 + 1e-6) * (1 + w[i]) for i in range(48)]
            logits = [30.0 * math.tanh(sum(xn[i] * E[v, i] for i in range(48)) / 30.0) for v in range(V)]
            lse = math.log(sum(math.exp(z) for z in logits))
            close(lp[b, t_], [z - lse for z in logits], 1e-12)


def _rotary_complex(x, base):
    """Full-width rotary as complex numbers: (x_i, x_{i+d/2}) -> (x_i + 1j x_{i+d/2}) e^{1j t base^(-2i/d)}."""
    Bx, Tx, Hx, dh = x.shape
    out = x.copy()
    for b in range(Bx):
        for t in range(Tx):
            for h in range(Hx):
                for i in range(dh // 2):
                    c = complex(x[b, t, h, i], x[b, t, h, i + dh // 2]) * cmath.exp(1j * t * base ** (-2.0 * i / dh))
                    out[b, t, h, i], out[b, t, h, i + dh // 2] = c.real, c.imag
    return out


def test_rotary_full_width(run):
    acts = run[0]
    for c in "qk":
        x = acts["blocks.1.attn.hook_%s" % c]
        rx = acts["blocks.1.attn.hook_rot_%s" % c]
        assert np.array_equal(rx[:, 0], x[:, 0])
        moved = np.abs(rx - x)[:, 1:].max(axis=(0, 1, 2))
        assert np.all(moved > 1e-6)                   # every one of the 16 dims rotates
        close(rx, _rotary_complex(x, 10000.0), 1e-12)


def test_rope_theta_matters(model):
    config, params, _ = model
    _, lp = gr.forward(config, params, TOKENS)
    _, lp2 = gr.forward(dict(config, rope_theta=100.0), params, TOKENS)
    assert np.abs(lp - lp2).max() > 1e-4
    v5 = {k: v for k, v in config.items() if k != "rope_theta"}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    assert np.array_equal(gr.forward(v5, params, TOKENS)[1], lp)


# ---------------------------------------------------------------- (d) caps, window, GQA

def test_final_softcap(model, run):
    config, params, _ = model
    acts, lp = run
    raw, capped = acts["logits_uncapped"], acts["logits"]
    assert np.abs(capped).max() <= 30.0
    assert np.abs(raw).max() > 40.0                   # the cap bites (outlier vocab rows)
    close(capped, 30.0 * np.tanh(raw / 30.0), 1e-15)
    for off in (None, 0.0):
        acts2, lp2 = gr.forward(dict(config, final_logit_softcapping=off), params, TOKENS, extra_hooks=True)
        close(acts2["logits"], raw, 1e-13)
        assert np.abs(lp2 - lp).max() > 1.0
        for k in gr.site_names(config):               # only the logits change
            assert np.array_equal(acts2[k], acts[k]), k


def test_attention_softcap(model, run):
    config, params, _ = model
    acts, lp = run
    n_big = 0
    for l in range(2):
        b = "blocks.%d." % l
        s = acts[b + "attn.hook_attn_scores"]
        rq, rk = acts[b + "attn.hook_rot_q"], acts[b + "attn.hook_rot_k"]
        raw = np.einsum("bqhe,bkhe->bhqk", rq, rk[:, :, np.arange(H) // 2]) / 4.0   # 16^-0.5
        fin = np.isfinite(s)
        close(s[fin], 50.0 * np.tanh(raw[fin] / 50.0), 1e-13)
        assert np.abs(s[fin]).max() < 50.0
        n_big += int((np.abs(raw[fin]) > 10.0).sum())
    assert n_big > 10
    acts2, lp2 = gr.forward(dict(config, attn_logit_softcapping=None), params, TOKENS)
    assert np.abs(acts2["blocks.0.attn.hook_z"] - acts["blocks.0.attn.hook_z"]).max() > 1e-3
    assert np.abs(lp2 - lp).max() > 1e-3


def test_attention_mask_edge():
    m = gr.attention_mask(10, True, 3)
    for i in range(10):
        for j in range(10):
            assert m[i, j] == (i - 3 < j <= i), (i, j)
    assert m.sum(1).max() == 3
    assert np.array_equal(gr.attention_mask(10, False, 3), np.tril(np.ones((10, 10), bool)))
    assert np.array_equal(gr.attention_mask(10, True, None), np.tril(np.ones((10, 10), bool)))


def test_sliding_window_even_layer(model, run):
    """Layer 0 slides (window 6): position i sees keys j with i - 6 < j <= i.
    Changing the token at p leaves layer 0 at i >= p + 6 untouched, changes
    it at i = p + 5 (the edge); layer 1 (global) and the output do change."""
    config, params, _ = model
    acts, lp = run
    pattern = acts["blocks.0.attn.hook_pattern"]
    assert np.all(pattern[:, :, 8, :3] == 0) and np.all(pattern[:, :, 8, 3:9] > 0)
    assert np.all(acts["blocks.1.attn.hook_pattern"][:, :, 8, :9] > 0)       # global
    p = 2
    tok = TOKENS.copy()
    tok[:, p] = (tok[:, p] + 11) % V
    acts2, lp2 = gr.forward(config, params, tok)
    L0 = [k for k in gr.site_names(config) if k.startswith("blocks.0.")]
    for k in L0:
        assert np.array_equal(acts[k][:, :p], acts2[k][:, :p]), k
        assert np.array_equal(acts[k][:, p + W:], acts2[k][:, p + W:]), k
    for k in ("blocks.0.attn.hook_z", "blocks.0.hook_attn_out", "blocks.0.hook_resid_post"):
        assert np.abs(acts[k][:, p + W - 1] - acts2[k][:, p + W - 1]).max() > 1e-6, k
    far = slice(p + W, T)
    assert np.abs(acts["blocks.1.attn.hook_z"][:, far] - acts2["blocks.1.attn.hook_z"][:, far]).max() > 1e-6
    assert np.abs(lp[:, far] - lp2[:, far]).max() > 1e-6
    # all-global (sliding_window null, or v5 layer_types) sees the change in layer 0 too
    for cfg in (dict(config, sliding_window=None),
                dict(config, layer_types=["full_attention", "full_attention"])):
        a1, _ = gr.forward(cfg, params, TOKENS)
        a2, _ = gr.forward(cfg, params, tok)
        assert np.abs(a1["blocks.0.attn.hook_z"][:, far] - a2["blocks.0.attn.hook_z"][:, far]).max() > 1e-6
    # v5 layer_types spelling the default = the default
    v5 = dict(config, layer_types=["sliding_attention", "full_attention"])
    assert np.array_equal(gr.forward(v5, params, TOKENS)[1], lp)
    # reversed (TL bug #778 style) differs
    rev = dict(config, layer_types=["full_attention", "sliding_attention"])
    assert np.abs(gr.forward(rev, params, TOKENS)[1] - lp).max() > 1e-6


def test_gqa_equals_duplicated_kv(model):
    """KV = 2 with q heads (0,1)->kv 0, (2,3)->kv 1 equals KV = H = 4 with the
    kv weight blocks duplicated in that order (repeat_kv / repeat_interleave)."""
    config, params, _ = model
    acts, lp = gr.forward(config, params, TOKENS)
    P = _copy(params)
    idx = np.arange(H) // (H // KV)
    for l in range(2):
        for m in ("k_proj", "v_proj"):
            k = "model.layers.%d.self_attn.%s.weight" % (l, m)
            P[k] = params[k].reshape(KV, DH, D)[idx].reshape(H * DH, D)
    cfg = dict(config, num_key_value_heads=H)
    acts2, lp2 = gr.forward(cfg, P, TOKENS)
    for k in acts:
        close(acts2[k], acts[k], 1e-13)
    close(lp2, lp, 1e-13)
    # the other grouping (h % KV) is a different model
    bad = np.arange(H) % KV
    for l in range(2):
        for m in ("k_proj", "v_proj"):
            k = "model.layers.%d.self_attn.%s.weight" % (l, m)
            P[k] = params[k].reshape(KV, DH, D)[bad].reshape(H * DH, D)
    assert np.abs(gr.forward(cfg, P, TOKENS)[1] - lp).max() > 1e-4


def test_attention_entry_by_scalar_loops(model, run):
    """One z entry per layer recomputed from rotated q, k and v with plain
    Python: scale 16^-0.5, 50*tanh(s/50), window on layer 0, kv head h // 2."""
    acts = run[0]
    for l, (b_, i, h) in ((0, (1, 11, 3)), (1, (0, 9, 2))):
        p = "blocks.%d.attn." % l
        q, k, v = acts[p + "hook_rot_q"], acts[p + "hook_rot_k"], acts[p + "hook_v"]
        g = h // 2
        js = [j for j in range(i + 1) if l == 1 or j > i - W]
        sc = [50.0 * math.tanh(sum(q[b_, i, h, e] * k[b_, j, g, e] for e in range(DH)) * 0.25 / 50.0)
              for j in js]
        mx = max(sc)
        ex = [math.exp(s - mx) for s in sc]
        pj = [e / sum(ex) for e in ex]
        z = [sum(pj[n] * v[b_, j, g, e] for n, j in enumerate(js)) for e in range(DH)]
        close(acts["blocks.%d.attn.hook_z" % l][b_, i, h * DH:(h + 1) * DH], z, 1e-13)


# ---------------------------------------------------------------- (e) patching, causality

def test_patch_identity_and_zero(model):
    config, params, _ = model
    acts, lp = gr.forward(config, params, TOKENS)
    ident = {k: (lambda x: x) for k in gr.site_names(config)}
    acts_i, lp_i = gr.forward(config, params, TOKENS, patch=ident)
    assert np.array_equal(lp_i, lp)
    for k in acts:
        assert np.array_equal(acts_i[k], acts[k]), k
    acts_z, lp_z = gr.forward(config, params, TOKENS,
                              patch={"blocks.0.hook_mlp_out": lambda x: np.zeros_like(x)})
    assert np.abs(lp_z - lp).max() > 1e-3
    assert np.array_equal(acts_z["blocks.0.hook_mlp_out"], acts["blocks.0.hook_mlp_out"])   # unpatched recorded
    assert np.array_equal(acts_z["blocks.0.hook_resid_post"], acts["blocks.0.hook_resid_mid"])  # + 0
    assert np.array_equal(acts_z["blocks.0.hook_resid_mid"], acts["blocks.0.hook_resid_mid"])
    # a patch at attn.hook_z flows through o_proj and the post norm
    acts_h, _ = gr.forward(config, params, TOKENS, patch={"blocks.1.attn.hook_z": lambda x: 2 * x})
    assert np.array_equal(acts_h["blocks.1.attn.hook_z"], acts["blocks.1.attn.hook_z"])
    close(acts_h["blocks.1.hook_attn_out"], acts["blocks.1.hook_attn_out"], 1e-6)   # RMSNorm: scale-free up to eps
    assert not np.array_equal(acts_h["blocks.1.hook_attn_out"], acts["blocks.1.hook_attn_out"])
    # hook_embed is patchable (embedding SAEs)
    acts_e, lp_e = gr.forward(config, params, TOKENS, patch={"hook_embed": lambda x: x + 1.0})
    assert np.array_equal(acts_e["blocks.0.hook_resid_pre"], acts["hook_embed"] + 1.0)
    assert np.abs(lp_e - lp).max() > 1e-3


def test_causality(model):
    config, params, _ = model
    acts, lp = gr.forward(config, params, TOKENS)
    for t in (0, 5, T - 1):
        tok = TOKENS.copy()
        tok[:, t] = (tok[:, t] + 7) % V
        acts2, lp2 = gr.forward(config, params, tok)
        for k in acts:
            assert np.array_equal(acts[k][:, :t], acts2[k][:, :t]), (k, t)
            assert np.abs(acts[k][:, t] - acts2[k][:, t]).max() > 1e-6, (k, t)
        assert np.array_equal(lp[:, :t], lp2[:, :t])


def test_token_range(model):
    config, params, _ = model
    with pytest.raises(ValueError):
        gr.forward(config, params, [[0, V]])
    a, lp = gr.forward(config, params, [0, 1, 2])                 # 1-D tokens = one row
    assert lp.shape == (1, 3, V)


# ---------------------------------------------------------------- (f) files

@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_half_dtypes_round_trip(tmp_path, model, dtype):
    config32, params32, fx32 = model
    fx = gf.make_gemma2_model(str(tmp_path), dtype=dtype)
    assert stored_dtypes(fx["model_path"]) == {dtype}
    config, params = gr.load_model(str(tmp_path))
    assert config["torch_dtype"] == {"F16": "float16", "BF16": "bfloat16"}[dtype]
    assert set(params) == set(fx["params"]) == set(gf.param_names(2))
    for k in params:
        assert np.array_equal(params[k], fx["params"][k]), k
        assert np.array_equal(params[k], round_to_dtype(params32[k], dtype)), k
    assert any(not np.array_equal(params[k], params32[k]) for k in params)
    acts, lp = gr.forward(config, params, TOKENS)
    norm = float(np.float32(math.sqrt(48)))          # the compute dtype's sqrt(D), not the storage dtype's
    assert norm not in (6.9375, 6.9296875)
    assert np.array_equal(acts["hook_embed"], params["model.embed_tokens.weight"][TOKENS] * norm)
    _, lp32 = gr.forward(config32, params32, TOKENS)
    assert np.all(np.isfinite(lp))
    err = np.abs(lp - lp32).max()
    assert 0 < err < 0.5                              # same model, rounded
    # the stored values are what counts: the storage dtype named in config.json changes nothing
    _, lp_f = gr.forward(dict(config, torch_dtype="float32"), params, TOKENS)
    assert np.array_equal(lp_f, lp)


def test_sharded_equals_single(tmp_path, model):
    config0, params0, _ = model
    d = str(tmp_path)
    fx = gf.make_gemma2_model(d, sharded=True)
    assert not os.path.exists(os.path.join(d, "model.safetensors"))
    index, names = check_sharded_index(d)
    assert names == set(gf.param_names(2))
    assert index["weight_map"]["model.embed_tokens.weight"] == gf.SHARD_NAMES[0]
    assert index["weight_map"]["model.norm.weight"] == gf.SHARD_NAMES[1]
    config, params = gr.load_model(d)
    for k in params0:
        assert np.array_equal(params[k], params0[k]) and np.array_equal(params[k], fx["params"][k]), k
    a1, lp1 = gr.forward(config, params, TOKENS)
    a0, lp0 = gr.forward(config0, params0, TOKENS)
    assert np.array_equal(lp1, lp0)


def test_config_json(model):
    config, _, fx = model
    assert config == fx["config"]
    assert config["architectures"] == ["Gemma2ForCausalLM"] and config["model_type"] == "gemma2"
    assert config["hidden_activation"] == "gelu_pytorch_tanh"
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)
    assert config["rope_theta"] == 10000 and config["torch_dtype"] == "float32"
    assert config["hidden_size"] != config["num_attention_heads"] * config["head_dim"]
    h = safetensors_header(fx["model_path"])
    assert "lm_head.weight" not in h
    assert h["model.layers.0.self_attn.q_proj.weight"]["shape"] == [64, 48]
    assert h["model.layers.0.self_attn.k_proj.weight"]["shape"] == [32, 48]
    assert h["model.layers.1.self_attn.o_proj.weight"]["shape"] == [48, 64]
    assert h["model.layers.1.mlp.down_proj.weight"]["shape"] == [48, 96]


def test_loader_strict(tmp_path, model):
    config, params, _ = model
    d = str(tmp_path)
    gf.write_gemma2_folder(d, config, params)
    check_loader_strict(gr.load_model, d, params, strictness_cases(
        unexpected=("model.layers.0.self_attn.q_proj.bias", np.zeros(64)),
        missing="model.norm.weight",
        wrong_shape=("model.layers.1.self_attn.k_proj.weight", np.zeros((64, 48))),   # H*dh, not KV*dh
        buffer=("model.layers.0.self_attn.rotary_emb.inv_freq", np.ones(8))))         # ignored


def test_untied_lm_head(tmp_path, model):
    config, params, _ = model
    rng = np.random.default_rng(5)
    t = dict(params)
    t["lm_head.weight"] = rng.standard_normal((V, D)) * 0.2
    d = str(tmp_path)
    gf.write_gemma2_folder(d, dict(config, tie_word_embeddings=False), t)
    cfg, P = gr.load_model(d)
    acts, lp = gr.forward(cfg, P, TOKENS, extra_hooks=True)
    close(acts["logits_uncapped"], acts["ln_final.hook_normalized"] @ P["lm_head.weight"].T, 1e-13)
    _, lp_tied = gr.forward(config, params, TOKENS)
    assert np.abs(lp - lp_tied).max() > 1e-3
    # tied config: a stray lm_head is ignored
    _, lp_t2 = gr.forward(dict(cfg, tie_word_embeddings=True), P, TOKENS)
    assert np.array_equal(lp_t2, lp_tied)


# ---------------------------------------------------------------- (g) torch, optional

def _torch_forward(torch, config, params, tokens):
    """Plain torch float64, written like HF's Gemma2 modules (eager attention,
    repeat_kv, additive min-value masks with tril(diagonal=-window) for the
    sliding layers)."""
    F_ = torch.nn.functional
    P = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
    Bt, Tt = ids.shape
    Dm, Hh, Kv, dh = config["hidden_size"], config["num_attention_heads"], \
        config["num_key_value_heads"], config["head_dim"]
    eps, win = config["rms_norm_eps"], config["sliding_window"]
    acap, fcap = config["attn_logit_softcapping"], config["final_logit_softcapping"]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)

    def rotate_half(x):
        return torch.cat((-x[..., dh // 2:], x[..., :dh // 2]), -1)

    inv_freq = 1.0 / (config["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
    freqs = torch.outer(torch.arange(Tt, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    minv = torch.finfo(torch.float64).min
    causal = torch.full((Tt, Tt), minv, dtype=torch.float64).triu(1)
    out = {}
    h = P["model.embed_tokens.weight"][ids] * torch.tensor(Dm ** 0.5, dtype=torch.float32).double()
    out["hook_embed"] = h
    for l in range(config["num_hidden_layers"]):
        p, b = "model.layers.%d." % l, "blocks.%d." % l
        out[b + "hook_resid_pre"] = h
        a = rms(h, P[p + "input_layernorm.weight"])
        q = F_.linear(a, P[p + "self_attn.q_proj.weight"]).view(Bt, Tt, Hh, dh).transpose(1, 2)
        k = F_.linear(a, P[p + "self_attn.k_proj.weight"]).view(Bt, Tt, Kv, dh).transpose(1, 2)
        v = F_.linear(a, P[p + "self_attn.v_proj.weight"]).view(Bt, Tt, Kv, dh).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = torch.repeat_interleave(k, Hh // Kv, dim=1)
        v = torch.repeat_interleave(v, Hh // Kv, dim=1)
        s = torch.matmul(q, k.transpose(2, 3)) * config["query_pre_attn_scalar"] ** -0.5
        s = torch.tanh(s / acap) * acap
        mask = causal
        if l % 2 == 0:
            sw = torch.tril(torch.ones(Tt, Tt, dtype=torch.bool), diagonal=-win)
            mask = torch.where(sw, torch.tensor(minv, dtype=torch.float64), mask)
        pr = torch.softmax(s + mask, -1)
        z = torch.matmul(pr, v).transpose(1, 2).reshape(Bt, Tt, Hh * dh)
        out[b + "attn.hook_z"] = z
        ao = rms(F_.linear(z, P[p + "self_attn.o_proj.weight"]), P[p + "post_attention_layernorm.weight"])
        out[b + "hook_attn_out"] = ao
        h = h + ao
        out[b + "hook_resid_mid"] = h
        m = rms(h, P[p + "pre_feedforward_layernorm.weight"])
        post = F_.gelu(F_.linear(m, P[p + "mlp.gate_proj.weight"]), approximate="tanh") * \
            F_.linear(m, P[p + "mlp.up_proj.weight"])
        out[b + "mlp.hook_post"] = post
        mo = rms(F_.linear(post, P[p + "mlp.down_proj.weight"]), P[p + "post_feedforward_layernorm.weight"])
        out[b + "hook_mlp_out"] = mo
        h = h + mo
        out[b + "hook_resid_post"] = h
    logits = F_.linear(rms(h, P["model.norm.weight"]), P["model.embed_tokens.weight"])
    logits = torch.tanh(logits / fcap) * fcap
    return {k: v.numpy() for k, v in out.items()}, torch.log_softmax(logits, -1).numpy()


def test_against_torch(model):
    try:
        import torch
    except Exception:
        pytest.skip("torch not importable")
    config, params, _ = model
    want, lp_t = _torch_forward(torch, config, params, TOKENS)
    acts, lp = gr.forward(config, params, TOKENS)
    assert set(want) == set(acts)
    for k in acts:
        close(acts[k], want[k], 1e-11)
    close(lp, lp_t, 1e-11)
