"""Checks of the float64 Pythia (GPT-NeoX) reference (neox_reference.py) and its
fixture writer (neox_fixtures.py).  No saegap binary is involved.

    /usr/bin/python3 -m pytest -q tests/python/test_neox_reference.py

(a) residual invariants, both residual layouts; (b) rotary against a complex
number formulation, only the first rotary_ndims dims of q and k move; (c) the
processed basis (weights processed, then run) against the raw one; (d)
F16/BF16/sharded/buffered files load to the written params; (e) causality;
(f) a 1-layer, 1-head, d_model 2 model computed in closed form, plus a marker
model pinning the per-head interleaved QKV rows and the dense columns;
(g) optionally, an independent torch implementation.
"""

import cmath
import math
import os

import numpy as np
import pytest

import neox_fixtures as nf
import neox_reference as nr
from reference_checks import (check_loader_strict, check_sharded_index, close, safetensors_header, stored_dtypes,
                              strictness_cases)
from saegap_fixtures import round_to_dtype

TOKENS = np.array([[0, 5, 17, 3, 199, 42, 8, 8, 120, 1, 64, 150],
                   [3, 3, 208, 77, 0, 9, 31, 200, 12, 5, 99, 2]])
RESID = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("pythia")
    fx = nf.make_pythia_model(str(d), tokenizer_vocab=200)
    config, params = nr.load_model(str(d))
    return config, params, fx


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("pythia_seq")
    fx = nf.make_pythia_model(str(d), use_parallel_residual=False, seed=3)
    config, params = nr.load_model(str(d))
    return config, params, fx


@pytest.fixture(scope="module")
def runs(model):
    config, params, _ = model
    return {b: nr.forward(config, params, TOKENS, basis=b, extra_hooks=True)
            for b in ("raw", "processed")}


# ---------------------------------------------------------------- (a) invariants

def test_site_names_and_shapes(model, runs):
    config, params, _ = model
    B, T = TOKENS.shape
    acts, lp = nr.forward(config, params, TOKENS)
    assert list(acts) == nr.site_names(config)
    assert "hook_pos_embed" not in acts
    assert not any(k.endswith("hook_resid_mid") for k in acts)
    for k, v in acts.items():
        assert v.dtype == np.float64
        width = {"mlp.hook_post": 256}.get(k.split(".", 2)[-1], 64)
        assert v.shape == (B, T, width), (k, v.shape)
    # all vocab_size rows of embed_out (padded past the 200-token "tokenizer")
    assert lp.shape == (B, T, 211)
    close(np.exp(lp).sum(-1), np.ones((B, T)), 1e-12)
    logits = runs["raw"][0]["logits"]
    assert not np.allclose(lp[..., :200], nr.log_softmax(logits[..., :200]), atol=1e-6)
    acts_p, _ = nr.forward(config, params, TOKENS, basis="processed")
    assert list(acts_p) == list(acts)


@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_parallel_residual_invariants(model, runs, basis):
    config, params, _ = model
    acts = runs[basis][0]
    close(acts["blocks.0.hook_resid_pre"], acts["hook_embed"], 0)
    if basis == "raw":
        assert np.array_equal(acts["hook_embed"], params["gpt_neox.embed_in.weight"][TOKENS])
    for l in range(2):
        b = "blocks.%d." % l
        close(acts[b + "hook_resid_post"],
               acts[b + "hook_resid_pre"] + acts[b + "hook_attn_out"] + acts[b + "hook_mlp_out"], 1e-13)
        if l + 1 < 2:
            assert np.array_equal(acts["blocks.%d.hook_resid_pre" % (l + 1)], acts[b + "hook_resid_post"])
    if basis == "raw":
        # parallel: ln2 reads resid_pre, not resid_pre + attn_out
        eps = config["layer_norm_eps"]
        for l in range(2):
            b, p = "blocks.%d." % l, "gpt_neox.layers.%d.post_attention_layernorm." % l
            x = acts[b + "hook_resid_pre"]
            close(acts[b + "ln2.hook_normalized"],
                   nr.layer_norm(x, params[p + "weight"], params[p + "bias"], eps), 1e-13)


@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_sequential_residual(seq_model, basis):
    config, params, _ = seq_model
    acts, lp = nr.forward(config, params, TOKENS, basis=basis)
    assert list(acts) == nr.site_names(config)
    eps = config["layer_norm_eps"]
    for l in range(2):
        b, p = "blocks.%d." % l, "gpt_neox.layers.%d.post_attention_layernorm." % l
        mid = acts[b + "hook_resid_mid"]
        close(mid, acts[b + "hook_resid_pre"] + acts[b + "hook_attn_out"], 1e-13)
        close(acts[b + "hook_resid_post"], mid + acts[b + "hook_mlp_out"], 1e-13)
        if basis == "raw":
            close(acts[b + "ln2.hook_normalized"],
                   nr.layer_norm(mid, params[p + "weight"], params[p + "bias"], eps), 1e-13)
    # the flag matters
    par = dict(config, use_parallel_residual=True)
    acts2, lp2 = nr.forward(par, params, TOKENS, basis=basis)
    assert np.abs(lp2 - lp).max() > 1e-3


# ---------------------------------------------------------------- (b) rotary

def _rotary_complex(x, r, base):
    """Rotary written with complex numbers: pair (x_i, x_{i+r/2}) is
    x_i + 1j x_{i+r/2}, multiplied by exp(1j * t * base^(-2i/r))."""
    B, T, H, dh = x.shape
    out = x.copy()
    for b in range(B):
        for t in range(T):
            for h in range(H):
                for i in range(r // 2):
                    c = complex(x[b, t, h, i], x[b, t, h, i + r // 2])
                    c *= cmath.exp(1j * t * base ** (-2.0 * i / r))
                    out[b, t, h, i], out[b, t, h, i + r // 2] = c.real, c.imag
    return out


@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_rotary_complex_and_partial(model, runs, basis):
    config, _, _ = model
    acts = runs[basis][0]
    r = nr.rotary_ndims(config)
    assert r == 4                                    # int(16 * 0.25)
    for l in range(2):
        for c in "qk":
            x = acts["blocks.%d.attn.hook_%s" % (l, c)]
            rx = acts["blocks.%d.attn.hook_rot_%s" % (l, c)]
            assert np.array_equal(rx[..., r:], x[..., r:])          # pass-through dims
            assert np.array_equal(rx[:, 0], x[:, 0])                # position 0: no rotation
            moved = np.abs(rx - x)[:, 1:].max(axis=(0, 1, 2))       # per d_head dim
            assert np.all(moved[:r] > 1e-3) and np.all(moved[r:] == 0)
            close(rx, _rotary_complex(x, r, 10000.0), 1e-12)
            # norm of each rotated pair preserved
            h = r // 2
            close(rx[..., :h] ** 2 + rx[..., h:r] ** 2, x[..., :h] ** 2 + x[..., h:r] ** 2, 1e-12)


def test_rotary_relative_position():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 5, 2, 16))
    k = rng.standard_normal((1, 5, 2, 16))
    pos = np.arange(5)
    a = np.einsum("bqhe,bkhe->bhqk", nr.apply_rotary(q, pos, 8), nr.apply_rotary(k, pos, 8))
    b = np.einsum("bqhe,bkhe->bhqk", nr.apply_rotary(q, pos + 37, 8), nr.apply_rotary(k, pos + 37, 8))
    close(a, b, 1e-12)
    c = np.einsum("bqhe,bkhe->bhqk", nr.apply_rotary(q, pos, 8, 100.0), nr.apply_rotary(k, pos, 8, 100.0))
    assert np.abs(a - c).max() > 1e-3
    assert np.array_equal(nr.apply_rotary(q, pos, 0), q)


def test_rotary_base_and_v5_config(model):
    config, params, _ = model
    _, lp = nr.forward(config, params, TOKENS)
    _, lp_base = nr.forward(dict(config, rotary_emb_base=100), params, TOKENS)
    assert np.abs(lp - lp_base).max() > 1e-4
    v5 = {k: v for k, v in config.items() if k not in ("rotary_pct", "rotary_emb_base")}
    v5["rope_parameters"] = {"rope_type": "default", "partial_rotary_factor": 0.25, "rope_theta": 10000}
    _, lp5 = nr.forward(v5, params, TOKENS)
    assert np.array_equal(lp, lp5)


def test_gelu_is_exact_erf():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    want = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    close(nr.gelu_erf(x), want, 1e-15)
    assert abs(nr.gelu_erf(np.array([1.0]))[0] - 0.8413447460685429) < 1e-15
    tanh_form = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert abs(nr.gelu_erf(np.array([1.0]))[0] - tanh_form) > 1e-5


# ---------------------------------------------------------------- (c) processed basis

def test_processed_basis_against_raw(model, runs):
    config, params, _ = model
    raw, lp_raw = runs["raw"]
    proc, lp_proc = runs["processed"]
    H, dh = 4, 16
    D = 64

    def centred(x):
        return x - x.mean(-1, keepdims=True)

    close(proc["hook_embed"], centred(raw["hook_embed"]))
    assert np.abs(raw["hook_embed"].mean(-1)).max() > 0.3          # the test is not vacuous
    for l in range(2):
        b, p = "blocks.%d." % l, "gpt_neox.layers.%d." % l
        for s in RESID:
            close(proc[b + s], centred(raw[b + s]))
            assert np.abs(raw[b + s].mean(-1)).max() > 1e-3, s
        # hook_z: minus the folded value bias b_V + ln1.b @ W_V, read from the
        # interleaved rows h*3*dh + 2*dh + j
        W = params[p + "attention.query_key_value.weight"]
        bias = params[p + "attention.query_key_value.bias"]
        ln_b = params[p + "input_layernorm.bias"]
        bv = np.zeros(D)
        for h in range(H):
            for j in range(dh):
                row = nf.qkv_row(h, 2, j, dh)
                bv[h * dh + j] = bias[row] + ln_b @ W[row]
        close(proc[b + "attn.hook_z"], raw[b + "attn.hook_z"] - bv)
        assert np.abs(bv).min() > 1e-3
        for s in ("mlp.hook_post", "mlp.hook_pre", "attn.hook_rot_q", "attn.hook_rot_k",
                  "attn.hook_pattern", "ln1.hook_scale", "ln2.hook_scale"):
            close(proc[b + s], raw[b + s])
        # LayerNormPre: normalized before weight and bias
        for ln, hf in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            w_, b_ = params[p + hf + ".weight"], params[p + hf + ".bias"]
            close(proc[b + ln + ".hook_normalized"], (raw[b + ln + ".hook_normalized"] - b_) / w_)
    close(lp_proc, lp_raw, 1e-10)
    # center_unembed shifts each position's logits by a constant
    dl = proc["logits"] - raw["logits"]
    close(dl, np.broadcast_to(dl[..., :1], dl.shape), 1e-10)
    assert np.abs(dl).max() > 1e-3


def test_processed_weights(model):
    config, params, _ = model
    sd, norm = nr.process_weights(nr.convert_neox_weights(config, params), config)
    assert norm == "LNPre"
    assert not any(".ln" in k or k.startswith("ln_final") for k in sd)
    close(sd["embed.W_E"].mean(-1), 0, 1e-14)
    for l in range(2):
        b = "blocks.%d." % l
        for k in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
            close(sd[b + k].mean(-1), 0, 1e-14)
        for c in "QKV":
            close(sd[b + "attn.W_" + c].mean(1), 0, 1e-14)        # reading weights centred
        close(sd[b + "mlp.W_in"].mean(0), 0, 1e-14)
        assert np.array_equal(sd[b + "attn.b_V"], np.zeros((4, 16)))
    close(sd["unembed.W_U"].mean(0), 0, 1e-14)
    close(sd["unembed.W_U"].mean(1), 0, 1e-14)
    close(sd["unembed.b_U"].mean(), 0, 1e-14)


def test_tl_unprocessed_equals_hf(model, seq_model):
    """TL conversion with no processing (from_pretrained_no_processing) = HF."""
    for config, params, _ in (model, seq_model):
        hf, lp = nr.hf_forward(config, params, TOKENS, extra_hooks=True)
        tl, lp2 = nr.tl_forward(config, nr.convert_neox_weights(config, params), TOKENS, "LN",
                                extra_hooks=True)
        assert set(hf) == set(tl)
        for k in hf:                       # attn_scores hold -inf above the diagonal
            close(np.nan_to_num(tl[k], neginf=0), np.nan_to_num(hf[k], neginf=0), 1e-11)
        close(lp2, lp, 1e-11)


def test_processed_basis_sequential(seq_model):
    config, params, _ = seq_model
    raw, lp_raw = nr.forward(config, params, TOKENS, basis="raw")
    proc, lp_proc = nr.forward(config, params, TOKENS, basis="processed")
    for l in range(2):
        for s in RESID_SEQ:
            k = "blocks.%d.%s" % (l, s)
            close(proc[k], raw[k] - raw[k].mean(-1, keepdims=True))
    close(lp_proc, lp_raw, 1e-10)


RESID_SEQ = RESID + ("hook_resid_mid",)


# ---------------------------------------------------------------- (d) files

@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_dtypes_load_as_written(tmp_path, model, dtype):
    _, _, fx32 = model
    fx = nf.make_pythia_model(str(tmp_path), dtype=dtype, tokenizer_vocab=200)
    assert stored_dtypes(fx["model_path"]) == {dtype}
    config, params = nr.load_model(str(tmp_path))
    assert config["torch_dtype"] == {"F16": "float16", "BF16": "bfloat16"}[dtype]
    assert set(params) == set(fx["params"]) == set(nf.param_names(2))
    for k in params:
        assert np.array_equal(params[k], fx["params"][k]), k
        # same draw as the F32 model, rounded once more
        assert np.array_equal(params[k], round_to_dtype(fx32["params"][k], dtype)), k
    assert any(not np.array_equal(params[k], fx32["params"][k]) for k in params)
    _, lp = nr.forward(config, params, TOKENS)
    assert np.all(np.isfinite(lp))


def test_sharded_with_buffers(tmp_path, model):
    config0, params0, fx0 = model
    d = str(tmp_path)
    fx = nf.make_pythia_model(d, sharded=True, with_buffers=True, tokenizer_vocab=200)
    assert not os.path.exists(os.path.join(d, "model.safetensors"))
    _, names = check_sharded_index(d)
    assert "gpt_neox.layers.1.attention.rotary_emb.inv_freq" in names
    config, params = nr.load_model(d)
    assert set(params) == set(params0)
    for k in params:
        assert np.array_equal(params[k], fx["params"][k]) and np.array_equal(params[k], params0[k]), k
    assert nr.forward(config, params, TOKENS)[1].tolist() == nr.forward(config0, params0, TOKENS)[1].tolist()


def test_buffers_single_file(tmp_path, model):
    _, params0, _ = model
    fx = nf.make_pythia_model(str(tmp_path), with_buffers=True, dtype="F16")
    h = safetensors_header(fx["model_path"])
    mb = h["gpt_neox.layers.0.attention.bias"]
    assert mb["dtype"] == "U8" and mb["shape"] == [1, 1, 64, 64]
    m = h["gpt_neox.layers.0.attention.masked_bias"]
    assert m["dtype"] == "F32" and m["shape"] == []
    f = h["gpt_neox.layers.0.attention.rotary_emb.inv_freq"]
    assert f["shape"] == [2]
    raw = nr.load_safetensors(fx["model_path"])
    assert np.array_equal(raw["gpt_neox.layers.1.attention.bias"][0, 0], np.tril(np.ones((64, 64))))
    close(raw["gpt_neox.layers.1.attention.rotary_emb.inv_freq"], [1.0, 0.01], 1e-3)
    config, params = nr.load_model(str(tmp_path))
    assert set(params) == set(params0)
    for k in params:
        assert np.array_equal(params[k], fx["params"][k])


def test_loader_strict(tmp_path, model):
    config, params, _ = model
    d = str(tmp_path)
    nf.write_pythia_folder(d, config, params)
    check_loader_strict(nr.load_model, d, params, strictness_cases(
        unexpected=("gpt_neox.layers.0.attention.extra", np.zeros(3)), missing="embed_out.weight"))


# ---------------------------------------------------------------- (e) causality

@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_causality(model, basis):
    config, params, _ = model
    acts, lp = nr.forward(config, params, TOKENS, basis=basis)
    for t in (0, 4, 11):
        tok = TOKENS.copy()
        tok[:, t] = (tok[:, t] + 7) % 211
        acts2, lp2 = nr.forward(config, params, tok, basis=basis)
        for k in acts:
            assert np.array_equal(acts[k][:, :t], acts2[k][:, :t]), (k, t)
            assert np.abs(acts[k][:, t] - acts2[k][:, t]).max() > 1e-6, (k, t)
        assert np.array_equal(lp[:, :t], lp2[:, :t])
        if t + 1 < TOKENS.shape[1]:
            # a later position does see the change (through attention)
            assert np.abs(acts["blocks.0.attn.hook_z"][:, t + 1]
                          - acts2["blocks.0.attn.hook_z"][:, t + 1]).max() > 1e-6


# ---------------------------------------------------------------- (f) closed form

# 1 layer, 1 head, d_model = d_head = 2, rotary on both dims (rotary_pct 1:
# inv_freq = [1], the pair (x0, x1) turns by `position` radians), eps = 0 so
# LayerNorm of (a, b) with a != b is exactly s*(w0, -w1) + bias, s = sign(a - b).
# Every weight is a dyadic rational (exact in F32).
HAND = {
    "gpt_neox.embed_in.weight": [[1, 0], [0, 1], [2, -1]],
    "gpt_neox.layers.0.input_layernorm.weight": [2, 0.5],
    "gpt_neox.layers.0.input_layernorm.bias": [0.25, -0.5],
    # rows q0 q1 k0 k1 v0 v1 (one head: h*3*dh + s*dh + j)
    "gpt_neox.layers.0.attention.query_key_value.weight":
        [[1, 0], [0, 1], [1, 0], [0, 0], [2, 0], [0, 1]],
    "gpt_neox.layers.0.attention.query_key_value.bias": [0, 0, 0, 1, 0.5, 0],
    "gpt_neox.layers.0.attention.dense.weight": [[1, 0], [1, 1]],
    "gpt_neox.layers.0.attention.dense.bias": [0, 0.25],
    "gpt_neox.layers.0.post_attention_layernorm.weight": [2, 1],
    "gpt_neox.layers.0.post_attention_layernorm.bias": [0, 0.5],
    "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": [[1, 0], [0.5, 1]],
    "gpt_neox.layers.0.mlp.dense_h_to_4h.bias": [0, -1],
    "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": [[1, 0.5], [0, 1]],
    "gpt_neox.layers.0.mlp.dense_4h_to_h.bias": [0.125, 0],
    "gpt_neox.final_layer_norm.weight": [1, 1],
    "gpt_neox.final_layer_norm.bias": [0, 0],
    "embed_out.weight": [[1, 0], [0, 1], [1, 1]],
}


def _hand_expected(tokens, parallel):
    """The model above by hand: scalars, 2-vectors as tuples, math only."""
    E = HAND["gpt_neox.embed_in.weight"]

    def ln(x, w, b):
        s = 1.0 if x[0] > x[1] else -1.0
        assert x[0] != x[1]
        return (s * w[0] + b[0], -s * w[1] + b[1])

    def mv(W, x, b):
        return (W[0][0] * x[0] + W[0][1] * x[1] + b[0], W[1][0] * x[0] + W[1][1] * x[1] + b[1])

    def rot(v, t):
        c, s = math.cos(t), math.sin(t)
        return (v[0] * c - v[1] * s, v[1] * c + v[0] * s)

    def gelu(u):
        return 0.5 * u * (1.0 + math.erf(u / math.sqrt(2.0)))

    Wq = HAND["gpt_neox.layers.0.attention.query_key_value.weight"]
    bq = HAND["gpt_neox.layers.0.attention.query_key_value.bias"]
    x = [tuple(map(float, E[t])) for t in tokens]
    a = [ln(xi, HAND["gpt_neox.layers.0.input_layernorm.weight"],
            HAND["gpt_neox.layers.0.input_layernorm.bias"]) for xi in x]
    q = [mv(Wq[0:2], ai, bq[0:2]) for ai in a]
    k = [mv(Wq[2:4], ai, bq[2:4]) for ai in a]
    v = [mv(Wq[4:6], ai, bq[4:6]) for ai in a]
    rq = [rot(qi, t) for t, qi in enumerate(q)]
    rk = [rot(ki, t) for t, ki in enumerate(k)]
    z, attn, mlp, post, ln2, out = [], [], [], [], [], []
    for t in range(len(tokens)):
        sc = [(rq[t][0] * rk[u][0] + rq[t][1] * rk[u][1]) / math.sqrt(2.0) for u in range(t + 1)]
        m = max(sc)
        e = [math.exp(s - m) for s in sc]
        p = [ei / sum(e) for ei in e]
        zt = (sum(p[u] * v[u][0] for u in range(t + 1)), sum(p[u] * v[u][1] for u in range(t + 1)))
        ao = mv(HAND["gpt_neox.layers.0.attention.dense.weight"], zt,
                HAND["gpt_neox.layers.0.attention.dense.bias"])
        src = x[t] if parallel else (x[t][0] + ao[0], x[t][1] + ao[1])
        n2 = ln(src, HAND["gpt_neox.layers.0.post_attention_layernorm.weight"],
                HAND["gpt_neox.layers.0.post_attention_layernorm.bias"])
        pre = mv(HAND["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"], n2,
                 HAND["gpt_neox.layers.0.mlp.dense_h_to_4h.bias"])
        pt = (gelu(pre[0]), gelu(pre[1]))
        mo = mv(HAND["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"], pt,
                HAND["gpt_neox.layers.0.mlp.dense_4h_to_h.bias"])
        r = (x[t][0] + ao[0] + mo[0], x[t][1] + ao[1] + mo[1])
        s = 1.0 if r[0] > r[1] else -1.0
        logits = (s, -s, 0.0)                       # ln_f = (s, -s); embed_out rows (1,0) (0,1) (1,1)
        lse = math.log(sum(math.exp(l) for l in logits))
        z.append(zt), attn.append(ao), mlp.append(mo), post.append(pt), ln2.append(n2)
        out.append((r, [l - lse for l in logits]))
    return {"ln1": a, "z": z, "attn": attn, "mlp": mlp, "post": post, "ln2": ln2,
            "resid_post": [o[0] for o in out], "logprobs": [o[1] for o in out], "x": x}


@pytest.mark.parametrize("parallel", [True, False])
def test_closed_form_one_layer(tmp_path, parallel):
    config = nf.pythia_config(n_layer=1, n_head=1, hidden_size=2, intermediate_size=2,
                              rotary_pct=1.0, max_position_embeddings=8, vocab_size=3,
                              layer_norm_eps=0.0, use_parallel_residual=parallel)
    nf.write_pythia_folder(str(tmp_path), config, {k: np.array(v, dtype=np.float64) for k, v in HAND.items()})
    config, params = nr.load_model(str(tmp_path))
    tokens = [0, 1, 2, 1]
    want = _hand_expected(tokens, parallel)
    acts, lp = nr.forward(config, params, tokens)
    close(acts["hook_embed"][0], want["x"], 0)
    close(acts["blocks.0.ln1.hook_normalized"][0], want["ln1"], 1e-15)
    # literal values: ln1 of (1, 0) is (2.25, -1); position 0 attends to itself: z = v0
    assert acts["blocks.0.ln1.hook_normalized"][0, 0].tolist() == [2.25, -1.0]
    assert acts["blocks.0.attn.hook_z"][0, 0].tolist() == [5.0, -1.0]
    close(acts["blocks.0.attn.hook_z"][0], want["z"], 1e-13)
    close(acts["blocks.0.hook_attn_out"][0], want["attn"], 1e-13)
    close(acts["blocks.0.ln2.hook_normalized"][0], want["ln2"], 1e-15)
    close(acts["blocks.0.mlp.hook_post"][0], want["post"], 1e-13)
    close(acts["blocks.0.hook_mlp_out"][0], want["mlp"], 1e-13)
    close(acts["blocks.0.hook_resid_post"][0], want["resid_post"], 1e-13)
    close(lp[0], want["logprobs"], 1e-13)
    if parallel:
        # position 1: two-way softmax, closed form.  ln1 rows (2.25, -1) and
        # (-1.75, 0); q1 = (-1.75, 0) turned by 1 rad; k0 = (2.25, 1) (position
        # 0, not turned); k1 = (-1.75, 1) turned by 1 rad; v = 2*a0 + 0.5, a1.
        q1 = (-1.75 * math.cos(1), -1.75 * math.sin(1))
        k0 = (2.25, 1.0)
        k1 = (-1.75 * math.cos(1) - math.sin(1), math.cos(1) - 1.75 * math.sin(1))
        s0 = (q1[0] * k0[0] + q1[1] * k0[1]) / math.sqrt(2)
        s1 = (q1[0] * k1[0] + q1[1] * k1[1]) / math.sqrt(2)
        p1 = 1.0 / (1.0 + math.exp(s0 - s1))
        v0, v1 = (5.0, -1.0), (-3.0, 0.0)
        zz = ((1 - p1) * v0[0] + p1 * v1[0], (1 - p1) * v0[1] + p1 * v1[1])
        close(acts["blocks.0.attn.hook_z"][0, 1], zz, 1e-13)
        # wrong rotation direction would give a different z
        s0w = (q1[0] * k0[0] - q1[1] * k0[1]) / math.sqrt(2)
        assert abs(s0w - s0) > 0.5
    # and the processed basis gives the same log-probs
    _, lp_p = nr.forward(config, params, tokens, basis="processed")
    close(lp_p, lp, 1e-12)


def test_qkv_rows_interleaved_and_dense_columns(model):
    """Marker weights: v of head h is the constant 10h + j (zero weight rows,
    bias only), q and k of head 0 are zero (uniform attention), dense reads
    only column h*dh + j = 1*16 + 3.  A q|k|v block layout or a [j, h]
    column order would scramble these."""
    config, params, _ = model
    H, dh, D = 4, 16, 64
    P = {k: v.copy() for k, v in params.items()}
    p = "gpt_neox.layers.0."
    W, b = P[p + "attention.query_key_value.weight"], P[p + "attention.query_key_value.bias"]
    for h in range(H):
        for j in range(dh):
            rv = nf.qkv_row(h, 2, j, dh)
            W[rv], b[rv] = 0.0, 10.0 * h + j
            if h == 0:
                for s in (0, 1):
                    W[nf.qkv_row(h, s, j, dh)] = 0.0
                    b[nf.qkv_row(h, s, j, dh)] = 0.0
    Wd = np.zeros((D, D))
    Wd[5, 1 * dh + 3] = 1.0
    P[p + "attention.dense.weight"], P[p + "attention.dense.bias"] = Wd, np.zeros(D)
    acts, _ = nr.forward(config, P, TOKENS, extra_hooks=True)
    z = acts["blocks.0.attn.hook_z"]
    want = np.broadcast_to((10.0 * np.arange(H)[:, None] + np.arange(dh)[None]).reshape(D), z.shape)
    close(z, want, 1e-12)
    T = TOKENS.shape[1]
    pat = acts["blocks.0.attn.hook_pattern"]
    close(pat[:, 0], np.broadcast_to(np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None], pat[:, 0].shape), 1e-14)
    assert np.abs(pat[:, 1] - pat[:, 0]).max() > 0.05
    ao = acts["blocks.0.hook_attn_out"]
    close(ao[..., 5], np.full(ao.shape[:2], 13.0), 1e-12)        # z[h=1, j=3] = 10 + 3
    assert np.array_equal(np.delete(ao, 5, -1), np.zeros_like(np.delete(ao, 5, -1)))


# ---------------------------------------------------------------- (g) torch, optional

def _torch_forward(torch, config, params, tokens):
    """Plain torch, written like HF's GPTNeoX modules (fused_qkv.view(.., H,
    3*dh), rotate_half, parallel residual), float64."""
    F = torch.nn.functional
    P = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
    B, T = ids.shape
    D, H = config["hidden_size"], config["num_attention_heads"]
    dh = D // H
    r = int(dh * config["rotary_pct"])
    eps = config["layer_norm_eps"]
    inv_freq = 1.0 / (config["rotary_emb_base"] ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]            # [1,1,T,r]

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), -1)

    out = {}
    h = P["gpt_neox.embed_in.weight"][ids]
    out["hook_embed"] = h
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(config["num_hidden_layers"]):
        p, b = "gpt_neox.layers.%d." % l, "blocks.%d." % l
        out[b + "hook_resid_pre"] = h
        a = F.layer_norm(h, (D,), P[p + "input_layernorm.weight"], P[p + "input_layernorm.bias"], eps)
        qkv = F.linear(a, P[p + "attention.query_key_value.weight"], P[p + "attention.query_key_value.bias"])
        qkv = qkv.view(B, T, H, 3 * dh).permute(0, 2, 1, 3)             # [B,H,T,3dh]
        q, k, v = qkv[..., :dh], qkv[..., dh:2 * dh], qkv[..., 2 * dh:]
        q = torch.cat((q[..., :r] * cos + rotate_half(q[..., :r]) * sin, q[..., r:]), -1)
        k = torch.cat((k[..., :r] * cos + rotate_half(k[..., :r]) * sin, k[..., r:]), -1)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
        s = s.masked_fill(~mask, float("-inf"))
        z = torch.matmul(torch.softmax(s, -1), v).permute(0, 2, 1, 3).reshape(B, T, D)
        out[b + "attn.hook_z"] = z
        ao = F.linear(z, P[p + "attention.dense.weight"], P[p + "attention.dense.bias"])
        m = F.layer_norm(h, (D,), P[p + "post_attention_layernorm.weight"],
                         P[p + "post_attention_layernorm.bias"], eps)
        out[b + "ln1.hook_normalized"], out[b + "ln2.hook_normalized"] = a, m
        post = F.gelu(F.linear(m, P[p + "mlp.dense_h_to_4h.weight"], P[p + "mlp.dense_h_to_4h.bias"]))
        out[b + "mlp.hook_post"] = post
        mo = F.linear(post, P[p + "mlp.dense_4h_to_h.weight"], P[p + "mlp.dense_4h_to_h.bias"])
        out[b + "hook_attn_out"], out[b + "hook_mlp_out"] = ao, mo
        h = h + ao + mo
        out[b + "hook_resid_post"] = h
    h = F.layer_norm(h, (D,), P["gpt_neox.final_layer_norm.weight"], P["gpt_neox.final_layer_norm.bias"], eps)
    lp = torch.log_softmax(F.linear(h, P["embed_out.weight"]), -1)
    return {k: v.numpy() for k, v in out.items()}, lp.numpy()


def test_against_torch(model):
    try:
        import torch
    except Exception:
        pytest.skip("torch not importable")
    config, params, _ = model
    want, lp_t = _torch_forward(torch, config, params, TOKENS)
    acts, lp = nr.forward(config, params, TOKENS)
    assert set(want) == set(acts)
    for k in acts:
        close(acts[k], want[k], 1e-11)
    close(lp, lp_t, 1e-11)
