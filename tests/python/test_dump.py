"""Tests of `saegap dump` against the independent float64 reference.

    /usr/bin/python3 -m pytest -q tests/python/test_dump.py

The reference (gpt2_reference.py) and the fixtures (saegap_fixtures.py) are
written from the formulas and file formats, not from the C code.  The first
group of tests checks the reference itself (no binary needed); the rest run
the binary (SAEGAP_BIN) and fail, never skip, when it is missing.
"""

import os

import h5py
import numpy as np
import pytest

from gpt2_reference import (RESID_SITES, LAYER_SITES, forward, load_model,
                            load_safetensors, log_softmax, site_names, gelu_new)
from saegap_fixtures import (make_gpt2_model, random_tokens, round_to_dtype,
                             to_bf16_bits, write_safetensors, write_tokens_bin,
                             write_tokens_h5, write_tokens_llmc, write_tokens_npy)

TOL = 1e-4


def rel_err(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def layer_sites(n_layer):
    return ["blocks.%d.%s" % (l, s) for l in range(n_layer) for s in LAYER_SITES]


def read_dump(path):
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        data = {}
        dtypes = {}
        for k in f.keys():
            if isinstance(f[k], h5py.Dataset):
                data[k] = f[k][()]
                dtypes[k] = f[k].dtype
    return data, dtypes, attrs


def assert_complete(attrs, path):
    assert "complete" in attrs, "%s: root attribute `complete` missing (attrs: %s)" % (path, sorted(attrs))
    assert int(np.asarray(attrs["complete"]).reshape(-1)[0]) == 1, "%s: complete=%r" % (path, attrs["complete"])


def compare_to_reference(data, dtypes, ref, sites, logits=True, what=""):
    """Every requested site + log_softmax(logits) within TOL of the reference."""
    errs = {}
    for s in sites:
        assert s in data, "%s: dataset %r missing from dump (has %s)" % (what, s, sorted(data))
        assert dtypes[s] == np.float32, "%s: %s dtype %s, want float32" % (what, s, dtypes[s])
        assert data[s].shape == ref[s].shape, "%s: %s shape %s, want %s" % (what, s, data[s].shape, ref[s].shape)
        errs[s] = rel_err(data[s], ref[s])
    if logits:
        assert "logits" in data, "%s: dataset `logits` missing" % what
        assert dtypes["logits"] == np.float32
        assert data["logits"].shape == ref["logits"].shape
        errs["log_softmax(logits)"] = rel_err(log_softmax(data["logits"].astype(np.float64)), ref["logprobs"])
    bad = {k: v for k, v in errs.items() if not (v <= TOL)}
    assert not bad, "%s: rel error max|C-ref|/max|ref| > %g at: %s" % (
        what, TOL, ", ".join("%s=%.3g" % kv for kv in sorted(bad.items())))
    return errs


def check_tokens_dataset(data, tok):
    """An extra `tokens` dataset is allowed (the contract may be added to); if
    present it must hold exactly the contexts dumped."""
    if "tokens" in data:
        t = data["tokens"]
        assert np.issubdtype(t.dtype, np.integer), "tokens dtype %s" % t.dtype
        assert t.shape == tok.shape and np.array_equal(t, tok), "dataset `tokens` != the input contexts"


# ----------------------------------------------------------- model fixtures

@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("small_model")
    m = make_gpt2_model(str(d / "model"), n_layer=2, n_head=5, n_embd=60,
                        n_positions=40, vocab_size=211, dtype="F32", seed=11)
    tokens = random_tokens(5, 33, 211, seed=12, bos=210)
    h5 = write_tokens_h5(str(d / "tokens.h5"), tokens)
    return {"m": m, "tokens": tokens, "h5": h5, "dir": d}


# ---------------------------------------------- reference self-tests (no C)

@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_safetensors_roundtrip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    t = {"a": rng.standard_normal((3, 7)) * 3, "b.c": rng.standard_normal((5,)),
         "scalar": np.array(-1e4), "mask": np.tril(np.ones((1, 1, 4, 4)))}
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, t, dtype=dtype, dtypes={"mask": "BOOL", "scalar": "F32"})
    raw = open(p, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    back = load_safetensors(p)
    assert set(back) == set(t)
    for k in ("a", "b.c"):
        assert np.array_equal(back[k], round_to_dtype(t[k], dtype)), k
        assert np.abs(back[k] - t[k]).max() <= {"F32": 1e-6, "F16": 5e-3, "BF16": 4e-2}[dtype] * np.abs(t[k]).max()
    assert back["scalar"].shape == () and back["scalar"] == -1e4
    assert np.array_equal(back["mask"], t["mask"])


def test_bf16_round_to_nearest_even():
    # 1 + 2^-8 is exactly halfway between bf16 1.0 and 1+2^-7: ties to even -> 1.0
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5], dtype=np.float32)
    bits = to_bf16_bits(x)
    want = np.array([0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020], dtype=np.uint16)
    assert np.array_equal(bits, want), [hex(b) for b in bits]


@pytest.mark.parametrize("dtype,prefix,extra", [("F32", True, True), ("F16", False, "U8"), ("BF16", True, "F32")])
def test_model_fixture_loads_back(tmp_path, dtype, prefix, extra):
    m = make_gpt2_model(str(tmp_path / "m"), dtype=dtype, prefix=prefix, extra_buffers=extra)
    cfg, P = load_model(m["dir"])
    assert cfg == m["config"]
    assert set(P) == set(m["params"])
    for k in P:
        assert np.array_equal(P[k], m["params"][k]), k
    names = load_safetensors(m["model_path"]).keys()
    assert all(k.startswith("transformer.") == prefix for k in names)
    assert any(k.endswith("attn.masked_bias") for k in names) == bool(extra)


def test_reference_invariants(small_model):
    cfg, P = small_model["m"]["config"], small_model["m"]["params"]
    tok = small_model["tokens"]
    r = forward(cfg, P, tok)
    raw = forward(cfg, P, tok, basis="raw")
    L = cfg["n_layer"]
    for l in range(L):
        b = "blocks.%d." % l
        assert rel_err(r[b + "hook_resid_mid"], r[b + "hook_resid_pre"] + r[b + "hook_attn_out"]) < 1e-12
        assert rel_err(r[b + "hook_resid_post"], r[b + "hook_resid_mid"] + r[b + "hook_mlp_out"]) < 1e-12
        if l + 1 < L:
            assert np.array_equal(r[b + "hook_resid_post"], r["blocks.%d.hook_resid_pre" % (l + 1)])
        for s in RESID_SITES:
            assert np.abs(r[b + s].mean(-1)).max() < 1e-12
            # the fixture makes raw means clearly nonzero: centering is visible
            assert np.abs(raw[b + s].mean(-1)).mean() > 0.03, s
        assert np.array_equal(r[b + "mlp.hook_post"], raw[b + "mlp.hook_post"])
        # hook_z: processed = raw - (b_V + ln_1.bias @ W_V), which differs from raw - b_V
        D = cfg["n_embd"]
        bv = P["h.%d.attn.c_attn.bias" % l][2 * D:]
        fold = P["h.%d.ln_1.bias" % l] @ P["h.%d.attn.c_attn.weight" % l][:, 2 * D:]
        assert rel_err(r[b + "attn.hook_z"], raw[b + "attn.hook_z"] - bv - fold) < 1e-12
        assert np.abs(fold).max() > 0.05
    assert rel_err(r["blocks.0.hook_resid_pre"], r["hook_embed"] + r["hook_pos_embed"]) < 1e-12
    assert np.array_equal(r["logprobs"], raw["logprobs"])
    # causality: changing the last token changes nothing before it
    tok2 = tok.copy()
    tok2[:, -1] = (tok2[:, -1] + 1) % cfg["vocab_size"]
    r2 = forward(cfg, P, tok2)
    assert np.array_equal(r2["blocks.1.hook_resid_post"][:, :-1], r["blocks.1.hook_resid_post"][:, :-1])
    assert not np.allclose(r2["blocks.1.hook_resid_post"][:, -1], r["blocks.1.hook_resid_post"][:, -1])


def _tl_process(cfg, P):
    """TransformerLens default weight processing, re-derived: fold_ln,
    center_writing_weights, center_unembed, fold_value_biases."""
    D, L = cfg["n_embd"], cfg["n_layer"]
    W = {"W_E": P["wte.weight"] - P["wte.weight"].mean(-1, keepdims=True),
         "W_pos": P["wpe.weight"] - P["wpe.weight"].mean(-1, keepdims=True)}
    for l in range(L):
        h = "h.%d." % l
        Wa, ba = P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]
        w1, b1 = P[h + "ln_1.weight"], P[h + "ln_1.bias"]
        for i, c in enumerate("QKV"):
            Wx, bx = Wa[:, i * D:(i + 1) * D], ba[i * D:(i + 1) * D]
            W[l, "b_" + c] = bx + b1 @ Wx
            Wx = w1[:, None] * Wx
            W[l, "W_" + c] = Wx - Wx.mean(0, keepdims=True)
        w2, b2 = P[h + "ln_2.weight"], P[h + "ln_2.bias"]
        Win = P[h + "mlp.c_fc.weight"]
        W[l, "b_in"] = P[h + "mlp.c_fc.bias"] + b2 @ Win
        Win = w2[:, None] * Win
        W[l, "W_in"] = Win - Win.mean(0, keepdims=True)
        for a, b, src in (("W_O", "b_O", "attn.c_proj"), ("W_out", "b_out", "mlp.c_proj")):
            Wx, bx = P[h + src + ".weight"], P[h + src + ".bias"]
            W[l, a] = Wx - Wx.mean(-1, keepdims=True)
            W[l, b] = bx - bx.mean()
        W[l, "b_O"] = W[l, "b_O"] + W[l, "b_V"] @ W[l, "W_O"]
        W[l, "b_V"] = np.zeros(D)
    WU = P["wte.weight"].T
    bU = P["ln_f.bias"] @ WU
    WU = P["ln_f.weight"][:, None] * WU
    W["W_U"] = WU - WU.mean(-1, keepdims=True)
    W["b_U"] = bU - bU.mean()
    return W


def _tl_forward(cfg, W, tok):
    D, H, L, eps = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["layer_norm_epsilon"]
    dh = D // H
    n, T = tok.shape

    def lnpre(x):
        xc = x - x.mean(-1, keepdims=True)
        return xc / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)

    o = {"hook_embed": W["W_E"][tok], "hook_pos_embed": np.broadcast_to(W["W_pos"][:T], (n, T, D))}
    x = o["hook_embed"] + o["hook_pos_embed"]
    mask = np.tril(np.ones((T, T), bool))
    for l in range(L):
        b = "blocks.%d." % l
        o[b + "hook_resid_pre"] = x
        a = lnpre(x)
        q, k, v = [(a @ W[l, "W_" + c] + W[l, "b_" + c]).reshape(n, T, H, dh).transpose(0, 2, 1, 3) for c in "QKV"]
        s = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh), -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        z = (s @ v).transpose(0, 2, 1, 3).reshape(n, T, D)
        o[b + "attn.hook_z"] = z
        o[b + "hook_attn_out"] = z @ W[l, "W_O"] + W[l, "b_O"]
        x = x + o[b + "hook_attn_out"]
        o[b + "hook_resid_mid"] = x
        o[b + "mlp.hook_post"] = gelu_new(lnpre(x) @ W[l, "W_in"] + W[l, "b_in"])
        o[b + "hook_mlp_out"] = o[b + "mlp.hook_post"] @ W[l, "W_out"] + W[l, "b_out"]
        x = x + o[b + "hook_mlp_out"]
        o[b + "hook_resid_post"] = x
    o["logits"] = lnpre(x) @ W["W_U"] + W["b_U"]
    return o


def test_reference_processed_equals_tl_weight_processing(small_model):
    """The 'processed' hook rule of FIELD-FACTS section 2 equals running the
    model with TransformerLens-style processed weights."""
    cfg, P = small_model["m"]["config"], small_model["m"]["params"]
    tok = small_model["tokens"]
    r = forward(cfg, P, tok)
    t = _tl_forward(cfg, _tl_process(cfg, P), tok)
    for s in site_names(cfg["n_layer"]):
        assert rel_err(r[s], t[s]) < 1e-11, s
    assert rel_err(r["logprobs"], log_softmax(t["logits"])) < 1e-11


# ------------------------------------------------------------ C vs reference

CASES = [
    # id, model kwargs, n contexts, ctx
    ("f32-prefix-buffers", dict(n_layer=2, dtype="F32", prefix=True, extra_buffers=True), 3, 33),
    ("f16-noprefix-u8buffers", dict(n_layer=3, dtype="F16", prefix=False, extra_buffers="U8"), 4, 33),
    ("bf16-prefix-nobuffers", dict(n_layer=3, dtype="BF16", prefix=True, extra_buffers=False), 3, 31),
    ("f32-noprefix-f32buffers", dict(n_layer=2, dtype="F32", prefix=False, extra_buffers="F32"), 4, 40),
    ("larger", dict(n_layer=4, n_head=4, n_embd=128, n_positions=80, vocab_size=1000, dtype="F32"), 3, 64),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dump_all_sites_matches_reference(tmp_path, run_saegap, case):
    name, kw, n, ctx = case
    kw = dict(kw)
    kw.setdefault("seed", 3)
    m = make_gpt2_model(str(tmp_path / "model"), **kw)
    cfg = m["config"]
    tok = random_tokens(n, ctx, cfg["vocab_size"], seed=5, bos=cfg["vocab_size"] - 1)
    tf = write_tokens_h5(str(tmp_path / "tok.h5"), tok)
    out = str(tmp_path / "out.h5")
    run_saegap(["dump", "--model", m["dir"], "--tokens", tf, "--sites", "all", "--logits", "--out", out])
    data, dtypes, attrs = read_dump(out)
    assert_complete(attrs, out)
    ref = forward(cfg, m["params"], tok, basis="processed")
    want = layer_sites(cfg["n_layer"])
    missing = [s for s in want if s not in data]
    assert not missing, "--sites all did not write: %s" % missing
    # anything else written (e.g. hook_embed) must also be right
    check_tokens_dataset(data, tok)
    sites = [s for s in data if s not in ("logits", "tokens")]
    unknown = [s for s in sites if s not in ref]
    assert not unknown, "unexpected datasets: %s" % unknown
    compare_to_reference(data, dtypes, ref, sites, logits=True, what=name)


def test_dump_explicit_sites_only(tmp_path, run_saegap, small_model):
    m, tok = small_model["m"], small_model["tokens"]
    sites = ["hook_embed", "hook_pos_embed", "blocks.1.attn.hook_z", "blocks.0.hook_resid_pre",
             "blocks.1.mlp.hook_post"]
    out = str(tmp_path / "out.h5")
    run_saegap(["dump", "--model", m["dir"], "--tokens", small_model["h5"], "--sites", ",".join(sites),
                "--out", out])
    data, dtypes, attrs = read_dump(out)
    assert_complete(attrs, out)
    check_tokens_dataset(data, tok)
    written = sorted(k for k in data if k != "tokens")
    assert written == sorted(sites), "requested %s, got %s" % (sorted(sites), written)
    ref = forward(m["config"], m["params"], tok)
    compare_to_reference(data, dtypes, ref, sites, logits=False, what="explicit sites")


def test_dump_basis_raw_vs_processed(tmp_path, run_saegap):
    m = make_gpt2_model(str(tmp_path / "model"), n_layer=2, dtype="F32", seed=21)
    cfg = m["config"]
    tok = random_tokens(3, 33, cfg["vocab_size"], seed=22, bos=cfg["vocab_size"] - 1)
    tf = write_tokens_h5(str(tmp_path / "tok.h5"), tok)
    got = {}
    for basis in ("processed", "raw"):
        out = str(tmp_path / ("out_%s.h5" % basis))
        run_saegap(["dump", "--model", m["dir"], "--tokens", tf, "--sites", "all", "--logits",
                    "--basis", basis, "--out", out])
        data, dtypes, attrs = read_dump(out)
        assert_complete(attrs, out)
        ref = forward(cfg, m["params"], tok, basis=basis)
        compare_to_reference(data, dtypes, ref, layer_sites(cfg["n_layer"]), logits=True, what="basis=" + basis)
        got[basis] = (data, ref)
    (cp, rp), (cr, rr) = got["processed"], got["raw"]
    for s in layer_sites(cfg["n_layer"]):
        ref_diff = rel_err(rp[s], rr[s])
        c_diff = rel_err(cp[s], cr[s])
        if s.endswith("mlp.hook_post"):
            assert ref_diff == 0.0
            assert c_diff <= TOL, "%s: mlp.hook_post must not depend on the basis (diff %.3g)" % (s, c_diff)
        else:
            # the fixture makes the bases clearly different; the C output must show it
            assert ref_diff > 0.05, (s, ref_diff)
            assert c_diff > 0.05, "%s: processed and raw dumps do not differ (rel %.3g)" % (s, c_diff)


def test_dump_token_formats(tmp_path, run_saegap, small_model):
    m, tok = small_model["m"], small_model["tokens"]
    n, ctx = tok.shape
    sites = "blocks.0.hook_resid_post,blocks.1.attn.hook_z,blocks.1.hook_resid_post"
    files = {
        "h5-int32": (write_tokens_h5(str(tmp_path / "t32.h5"), tok, dtype="int32"), []),
        "h5-int64": (write_tokens_h5(str(tmp_path / "t64.hdf5"), tok, dtype="int64"), []),
        "npy-int64": (write_tokens_npy(str(tmp_path / "t64.npy"), tok, dtype="<i8"), []),
        "npy-uint16": (write_tokens_npy(str(tmp_path / "tu16.npy"), tok, dtype="<u2"), []),
        "bin-flat": (write_tokens_bin(str(tmp_path / "flat.bin"), tok), ["--ctx", ctx]),
        "bin-llmc": (write_tokens_llmc(str(tmp_path / "llmc.bin"), tok), ["--ctx", ctx]),
    }
    results = {}
    for k, (path, extra) in files.items():
        out = str(tmp_path / ("out_%s.h5" % k))
        run_saegap(["dump", "--model", m["dir"], "--tokens", path, "--sites", sites, "--logits",
                    "--out", out] + extra)
        data, dtypes, attrs = read_dump(out)
        assert_complete(attrs, out)
        results[k] = data
    base = results["h5-int32"]
    ref = forward(m["config"], m["params"], tok)
    compare_to_reference(base, {k: v.dtype for k, v in base.items()}, ref, sites.split(","), what="h5-int32")
    for k, data in results.items():
        assert sorted(data) == sorted(base), (k, sorted(data))
        for s in base:
            assert data[s].shape == base[s].shape, (k, s, data[s].shape)
            assert np.array_equal(data[s], base[s]), \
                "%s: dataset %s differs from the .h5 run (max abs %.3g)" % (k, s, np.abs(data[s] - base[s]).max())
    # --contexts 2 keeps only the first two contexts
    out = str(tmp_path / "out_c2.h5")
    run_saegap(["dump", "--model", m["dir"], "--tokens", files["h5-int32"][0], "--sites", sites, "--logits",
                "--contexts", 2, "--out", out])
    data, _, attrs = read_dump(out)
    assert_complete(attrs, out)
    for s in base:
        assert data[s].shape == (2,) + base[s].shape[1:], (s, data[s].shape)
        e = rel_err(data[s], base[s][:2])
        assert e <= 1e-6, "--contexts 2: %s differs from the first 2 contexts of the full run (rel %.3g)" % (s, e)
    # --contexts with a flat file, too
    out = str(tmp_path / "out_c2_bin.h5")
    run_saegap(["dump", "--model", m["dir"], "--tokens", files["bin-llmc"][0], "--ctx", ctx, "--sites", sites,
                "--contexts", 2, "--out", out])
    data, _, _ = read_dump(out)
    assert data["blocks.1.hook_resid_post"].shape[0] == 2
    assert rel_err(data["blocks.1.hook_resid_post"], base["blocks.1.hook_resid_post"][:2]) <= 1e-6


def test_dump_mpi_bitwise(tmp_path, run_saegap, small_model):
    m = small_model["m"]
    args = ["dump", "--model", m["dir"], "--tokens", small_model["h5"], "--sites", "all", "--logits"]
    outs = {}
    for np_ in (None, 2, 3):
        out = str(tmp_path / ("out_np%s.h5" % np_))
        run_saegap(args + ["--out", out], np=np_)
        data, _, attrs = read_dump(out)
        assert_complete(attrs, out)
        outs[np_] = data
    base = outs[None]
    assert len(base) > 1
    for np_ in (2, 3):
        assert sorted(outs[np_]) == sorted(base), np_
        for s in base:
            assert np.array_equal(outs[np_][s], base[s]), \
                "-np %d: dataset %s not bit-identical to the singleton (max abs %.3g)" % (
                    np_, s, np.abs(outs[np_][s].astype(np.float64) - base[s]).max())


def test_dump_invariants(tmp_path, run_saegap):
    """Checks on the C output alone (independent of the reference)."""
    m = make_gpt2_model(str(tmp_path / "model"), n_layer=3, dtype="F32", seed=31)
    cfg = m["config"]
    tok = random_tokens(3, 33, cfg["vocab_size"], seed=32, bos=cfg["vocab_size"] - 1)
    tf = write_tokens_npy(str(tmp_path / "tok.npy"), tok)
    out = str(tmp_path / "out.h5")
    run_saegap(["dump", "--model", m["dir"], "--tokens", tf, "--sites", "all", "--out", out])
    data, _, attrs = read_dump(out)
    assert_complete(attrs, out)
    d = {k: v.astype(np.float64) for k, v in data.items()}
    L = cfg["n_layer"]
    tol = 1e-5
    for l in range(L):
        b = "blocks.%d." % l
        e = rel_err(d[b + "hook_resid_mid"], d[b + "hook_resid_pre"] + d[b + "hook_attn_out"])
        assert e <= tol, "layer %d: resid_mid != resid_pre + attn_out (rel %.3g)" % (l, e)
        e = rel_err(d[b + "hook_resid_post"], d[b + "hook_resid_mid"] + d[b + "hook_mlp_out"])
        assert e <= tol, "layer %d: resid_post != resid_mid + mlp_out (rel %.3g)" % (l, e)
        if l + 1 < L:
            e = rel_err(d[b + "hook_resid_post"], d["blocks.%d.hook_resid_pre" % (l + 1)])
            assert e <= tol, "resid_post[%d] != resid_pre[%d] (rel %.3g)" % (l, l + 1, e)
        for s in RESID_SITES:
            x = d[b + s]
            mu = np.abs(x.mean(-1)).max() / np.abs(x).max()
            assert mu <= tol, "%s%s: processed basis but mean over d_model is %.3g (relative)" % (b, s, mu)
        z = d[b + "attn.hook_z"]
        assert z.shape[-1] == cfg["n_embd"]
        post = d[b + "mlp.hook_post"]
        assert post.shape[-1] == 4 * cfg["n_embd"]
        assert post.min() >= -0.2, "mlp.hook_post below gelu_new's minimum (~-0.17): %g" % post.min()


def test_dump_threads_bitwise(tmp_path, run_saegap, small_model):
    """Rank-count invariance needs thread-count invariance (ranks change the
    default threads per rank): --threads-per-rank 1, 2, 3 give identical bits."""
    m = small_model["m"]
    args = ["dump", "--model", m["dir"], "--tokens", small_model["h5"], "--sites", "all", "--logits"]
    outs = {}
    for th in (1, 2, 3):
        out = str(tmp_path / ("out_t%d.h5" % th))
        run_saegap(args + ["--threads-per-rank", th, "--out", out])
        outs[th] = read_dump(out)[0]
    for th in (2, 3):
        for s in outs[1]:
            assert np.array_equal(outs[th][s], outs[1][s]), \
                "--threads-per-rank %d: dataset %s not bit-identical to 1 thread (max abs %.3g)" % (
                    th, s, np.abs(outs[th][s].astype(np.float64) - outs[1][s]).max())


def test_dump_removes_stale_mpiio_locks(tmp_path, run_saegap, small_model):
    """Issue 27.1: the lock files Open MPI's file-I/O layer leaves beside a file of a killed
    multi-node run ("<name>-<job id>-<pid>.lock", of OUT and OUT.creating) are removed by the
    next dump of OUT; look-alikes stay."""
    out = tmp_path / "out.h5"
    stale = [tmp_path / "out.h5.creating-4012900353-77.lock", tmp_path / "out.h5-1-2.lock"]
    kept = [tmp_path / "out.h5.creating-1.lock", tmp_path / "out.h5-a-2.lock"]
    for p in stale + kept:
        p.write_text("")
    run_saegap(["dump", "--model", small_model["m"]["dir"], "--tokens", small_model["h5"], "--sites",
                "blocks.0.hook_resid_pre", "--out", str(out)])
    assert out.exists()
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
