"""Tests of `saegap run` against the independent float64 reference.

    /usr/bin/python3 -m pytest -q tests/python/test_run.py

The reference (run_reference.py, on top of gpt2_reference.py) and the SAE
fixtures (sae_fixtures.py) are written from the formulas and file formats
(FIELD-FACTS.md, CONTRACT.md, docs/output-schema.md, docs/basis.md), not from
the C code.  The first group checks the reference itself (no binary needed);
the rest run the binary ($SAEGAP_BIN, default /work/main/build/saegap) and
fail, never skip, when it is missing.

Tolerance: rel err = max|C - ref| / max|ref| over the measured tokens <= 1e-4,
and the NaN pattern (unmeasured tokens) identical.  SAE fixtures are chosen so
that no pre-activation lies within 3e-5 (relative) of a point where the code
jumps (ReLU zero, JumpReLU threshold, top-k boundary, gate), so float32 and
float64 give the same latent support.
"""

import json
import os

import h5py
import numpy as np
import pytest

import gpt2_reference as g2
import run_reference as rr
from saegap_fixtures import make_gpt2_model, write_safetensors, write_tokens_h5
from sae_fixtures import _build_cfg, make_sae, write_cfg

TOL = 1e-4
MARGIN = 3e-5
KL_FLOOR = 0.05   # KL errors are relative to max(max|ref KL|, KL_FLOOR): abs 5e-6 at worst
N_LAYER, N_HEAD, D_MODEL, VOCAB, N_POS = 3, 4, 64, 211, 32
N_CTX, CTX = 5, 24
BOS = VOCAB - 1
DET = ",".join(rr.DETERMINISTIC)
ALL11 = ",".join(rr.ALL_INTERVENTIONS)


# ================================================================ helpers

def rel_err(got, ref):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def cmp_arr(errs, what, got, ref, tol=TOL, floor=0.0):
    """Append a description to errs unless got matches ref (NaN pattern
    identical, rel err over the finite entries <= tol).  floor: smallest
    denominator (KL: an intervention that is a no-op, e.g. sae_norm at the
    last residual site whose scale ln_f removes, has KL ~1e-9 in float64 and
    float32 noise ~1e-7 in any float32 implementation)."""
    if got is None:
        errs.append("%s: missing from the result file" % what)
        return
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        errs.append("%s: shape %s, want %s" % (what, got.shape, ref.shape))
        return
    gn, rn = np.isnan(got), np.isnan(ref)
    if not np.array_equal(gn, rn):
        a = np.argwhere(gn & ~rn)
        b = np.argwhere(~gn & rn)
        errs.append("%s: NaN pattern differs: C NaN where ref finite at %d places %s; "
                    "C finite where ref NaN at %d places %s" % (
                        what, len(a), [tuple(int(i) for i in r) for r in a[:4]],
                        len(b), [tuple(int(i) for i in r) for r in b[:4]]))
    m = ~gn & ~rn
    if not m.any():
        return
    if not np.isfinite(got[m]).all():
        errs.append("%s: non-finite (inf) values" % what)
        return
    e = float(np.abs(got[m] - ref[m]).max() / max(np.abs(ref[m]).max(), floor, 1e-30))
    if not (e <= tol):
        diff = np.where(m, np.abs(got - ref), -1.0)
        i = np.unravel_index(np.argmax(diff), diff.shape)
        errs.append("%s: rel err %.3g > %g (max|ref| %.4g; worst at %s: C %.7g ref %.7g)" % (
            what, e, tol, np.abs(ref[m]).max(), tuple(int(j) for j in i), got[i], ref[i]))


def cmp_scalar(errs, what, got, ref, tol=TOL, floor=1e-12):
    if got is None:
        errs.append("%s: attribute missing" % what)
        return
    got = float(np.asarray(got).reshape(-1)[0])
    e = abs(got - ref) / max(abs(ref), floor)
    if not (e <= tol):
        errs.append("%s: C %.8g ref %.8g (rel err %.3g)" % (what, got, ref, e))


def astr(v):
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0]
        return astr(v)
    if isinstance(v, np.bytes_):
        return v.decode()
    return str(v)


def anum(v):
    if v is None:
        return None
    return float(np.asarray(v).reshape(-1)[0])


def read_result(path):
    """-> dict with attrs, tokens, clean_ce, sites{...}, correlation{...}, raw{path: array}."""
    out = {"attrs": {}, "sites": {}, "correlation": {}, "raw": {}}
    with h5py.File(path, "r") as f:
        out["attrs"] = dict(f.attrs)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out["raw"][name] = obj[()]
        f.visititems(visit)
        out["tokens"] = f["tokens"][()] if "tokens" in f else None
        out["clean_ce"] = f["clean/ce"][()] if "clean/ce" in f else None
        if "sites" in f:
            for s in f["sites"]:
                g = f["sites"][s]
                d = {"attrs": dict(g.attrs), "kl": {}, "ce": {}, "recon": {}}
                for grp in ("kl", "ce", "recon"):
                    if grp in g:
                        for k in g[grp]:
                            d[grp][k] = g[grp][k][()]
                d["feature_density"] = g["feature_density"][()] if "feature_density" in g else None
                d["feature_density_dtype"] = g["feature_density"].dtype if "feature_density" in g else None
                d["sae_kl_zscore"] = g["sae_kl_zscore"][()] if "sae_kl_zscore" in g else None
                d["kl_dtype"] = {k: g["kl"][k].dtype for k in g["kl"]} if "kl" in g else {}
                out["sites"][s] = d
        if "correlation" in f:
            for k in f["correlation"]:
                g = f["correlation"][k]
                out["correlation"][k] = {n: g[n][()] for n in g}
    return out


def check_complete(res, errs):
    c = res["attrs"].get("complete")
    if c is None or int(np.asarray(c).reshape(-1)[0]) != 1:
        errs.append("root attribute complete = %r, want 1" % (c,))


def check_against_reference(res, ref, interventions, tokens, bos="exclude", what="",
                            scope="all", check_recon=True):
    """All deterministic results of `res` (read_result) vs `ref` (reference_run)."""
    errs = []
    check_complete(res, errs)
    if res["tokens"] is None or not np.array_equal(np.asarray(res["tokens"]), tokens):
        errs.append("/tokens missing or != the contexts given")
    if astr(res["attrs"].get("bos")) != bos:
        errs.append("root attribute bos = %r, want %r" % (res["attrs"].get("bos"), bos))
    cmp_arr(errs, "/clean/ce", res["clean_ce"], ref["clean_ce"])
    for site, r in ref["sites"].items():
        if site not in res["sites"]:
            errs.append("/sites/%s missing (has %s)" % (site, sorted(res["sites"])))
            continue
        c = res["sites"][site]
        p = "/sites/%s/" % site
        for iv in interventions:
            cmp_arr(errs, p + "kl/" + iv, c["kl"].get(iv), r["kl"][iv], floor=KL_FLOOR)
            cmp_arr(errs, p + "ce/" + iv, c["ce"].get(iv), r["ce"][iv])
            cmp_scalar(errs, p + "@mean_kl_" + iv, c["attrs"].get("mean_kl_" + iv),
                       r["attrs"]["mean_kl_" + iv], floor=KL_FLOOR)
            if iv in c["kl_dtype"] and c["kl_dtype"][iv] != np.float32:
                errs.append(p + "kl/%s dtype %s, want float32" % (iv, c["kl_dtype"][iv]))
        if check_recon:
            for m in rr.RECON_METRICS:
                cmp_arr(errs, p + "recon/" + m, c["recon"].get(m), r["recon"][m])
            cmp_arr(errs, p + "feature_density", c["feature_density"], r["feature_density"])
            if c["feature_density_dtype"] is not None and c["feature_density_dtype"] != np.float64:
                errs.append(p + "feature_density dtype %s, want float64" % c["feature_density_dtype"])
            for a in ("explained_variance", "relative_reconstruction_bias", "mean_l0"):
                cmp_scalar(errs, p + "@" + a, c["attrs"].get(a), r["attrs"][a])
            dl = c["attrs"].get("dead_latents")
            if dl is None or int(anum(dl)) != r["attrs"]["dead_latents"]:
                errs.append(p + "@dead_latents = %r, want %d" % (dl, r["attrs"]["dead_latents"]))
        for a in ("kl_div_score", "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation",
                  "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_without_sae"):
            if a in r["attrs"]:
                cmp_scalar(errs, p + "@" + a, c["attrs"].get(a), r["attrs"][a])
        if astr(c["attrs"].get("basis")) != r["basis"]:
            errs.append(p + "@basis = %r, want %r" % (c["attrs"].get("basis"), r["basis"]))
        d = r["desc"]
        for a, want in (("architecture", d["architecture"]), ("cfg_generation", d["generation"]),
                        ("hook_name", d["hook"])):
            if astr(c["attrs"].get(a)) != want:
                errs.append(p + "@%s = %r, want %r" % (a, c["attrs"].get(a), want))
        for a in ("d_in", "d_sae"):
            if c["attrs"].get(a) is None or int(anum(c["attrs"][a])) != d[a]:
                errs.append(p + "@%s = %r, want %d" % (a, c["attrs"].get(a), d[a]))
    assert not errs, "%s: %d mismatch(es) against the float64 reference:\n  %s" % (
        what, len(errs), "\n  ".join(errs))


# ================================================================ fixtures

def sample_tokens(config, params, n, T, seed, temperature=1.5, forced=None):
    """Contexts sampled from the model (float64 reference forward), BOS at
    position 0, BOS never sampled; forced {(row, col): token} overrides."""
    rng = np.random.default_rng(seed)
    bos = int(config["bos_token_id"])
    tok = np.full((n, T), bos, dtype=np.int64)
    for t in range(1, T):
        lp = g2.forward(config, params, tok[:, :t], basis="raw")["logprobs"][:, -1] / temperature
        lp[:, bos] = -np.inf
        p = np.exp(lp - lp.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for i in range(n):
            tok[i, t] = rng.choice(len(p[i]), p=p[i])
        for (i, j), v in (forced or {}).items():
            if j == t:
                tok[i, j] = v
    return tok


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny GPT-2 (3 layers, d 64, 4 heads, vocab 211), 5 contexts of 24
    tokens with BOS (= vocab-1) at position 0 and once mid-row, the float64
    activations of every site in both bases."""
    base = tmp_path_factory.mktemp("run_world")
    mdir = str(base / "tiny-gpt2")
    make_gpt2_model(mdir, n_layer=N_LAYER, n_head=N_HEAD, n_embd=D_MODEL,
                        n_positions=N_POS, vocab_size=VOCAB, seed=21)
    # a real save_pretrained config names the model; the SAEs' model_name matches it
    cpath = os.path.join(mdir, "config.json")
    with open(cpath) as f:
        c = json.load(f)
    c["_name_or_path"] = "tiny-gpt2"
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2)
    config, params = g2.load_model(mdir)
    # contexts sampled from the model itself (so clean CE is low and ablations
    # raise it: ce_loss_score is well conditioned), BOS at position 0 and,
    # forced, once mid-row; no other BOS
    tok = sample_tokens(config, params, N_CTX, CTX, seed=22, forced={(2, 11): BOS})
    tok_h5 = write_tokens_h5(str(base / "tokens.h5"), tok)
    # contexts with BOS only at position 0 (for the position scope)
    tokp = sample_tokens(config, params, N_CTX, CTX, seed=23)
    tokp_h5 = write_tokens_h5(str(base / "tokens_pos.h5"), tokp)
    fwd = {b: g2.forward(config, params, tok, basis=b) for b in ("processed", "raw")}
    return {"base": base, "model_dir": mdir, "config": config, "params": params,
            "model": (config, params), "tokens": tok, "tokens_h5": tok_h5,
            "tokens_pos": tokp, "tokens_pos_h5": tokp_h5, "fwd": fwd,
            "meas": tok != BOS}


def build_sae(world, dir, site, arch="standard", gen="v6", basis="processed", nsf=None,
              d_sae=None, **kw):
    """An SAE fitted to the site's activations (measured tokens), with no
    pre-activation within MARGIN of a discontinuity on any token."""
    xs_all = world["fwd"][basis][site]
    xs = xs_all[world["meas"]]
    d_in = xs.shape[-1]
    if d_sae is None:
        d_sae = 2 * d_in if d_in <= 64 else d_in
    for seed in range(80):
        s = make_sae(str(dir), d_in, d_sae, site, architecture=arch, generation=gen, seed=seed,
                     x_sample=xs, norm_scaling_factor=nsf, **kw)
        x_eval = xs_all.reshape(-1, d_in)
        if rr.sae_discontinuity_margin(s["cfg"], s["params"], x_eval, nsf) >= MARGIN:
            return s
    raise AssertionError("could not build an SAE at %s with margin %g" % (site, MARGIN))


def run_args(world, saes, out, interventions=DET, extra=(), tokens=None, threads=1):
    """`saegap run` arguments.  threads=1 by default: on these tiny shapes
    multi-threaded BLIS costs ~10x in wall time (test_threads_bitwise_identical
    runs the default)."""
    a = ["run", "--model", world["model_dir"]]
    for s in saes:
        a += ["--sae", s]
    a += ["--tokens", tokens or world["tokens_h5"], "--out", str(out),
          "--interventions", interventions]
    if threads is not None:
        a += ["--threads-per-rank", str(threads)]
    return a + [str(e) for e in extra]


def typical_nsf(world, site, basis="processed", factor=1.3):
    x = world["fwd"][basis][site][world["meas"]]
    return float(factor * np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1).mean())


# ================================================================ reference self-tests (no C)

def test_reference_identity_patch_matches_gpt2_reference(world):
    config, params, tok = world["config"], world["params"], world["tokens"]
    ref = world["fwd"]["processed"]["logprobs"]
    for basis in ("processed", "raw"):
        for site in ("blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out",
                     "blocks.2.mlp.hook_post", "blocks.2.hook_resid_post", "blocks.0.hook_attn_out"):
            cap = {}
            lp = rr.forward_with_patch(config, params, tok, site, basis, lambda x: x, capture=cap)
            assert rel_err(cap[site], world["fwd"][basis][site]) < 1e-12, (basis, site)
            assert rel_err(lp, ref) < 1e-12, (basis, site)


def _perfect_sae(dir, d, site, gen="v6", normalize="none", apply_b_dec=True):
    W_enc = np.concatenate([np.eye(d), -np.eye(d)], 1)
    os.makedirs(dir, exist_ok=True)
    rng = np.random.default_rng(1)
    write_safetensors(os.path.join(dir, "sae_weights.safetensors"),
                      {"W_enc": W_enc, "W_dec": W_enc.T.copy(), "b_enc": np.zeros(2 * d),
                       "b_dec": 0.0 * rng.standard_normal(d)})
    write_cfg(dir, _build_cfg(gen, d, 2 * d, site, "standard", apply_b_dec, normalize, None,
                              "tiny-gpt2", None, False, False, 128))
    return dir


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
def test_reference_perfect_sae_has_zero_kl(world, tmp_path, normalize):
    site = "blocks.1.hook_resid_pre"
    d = _perfect_sae(str(tmp_path / "perfect"), D_MODEL, site, normalize=normalize)
    r = rr.reference_run(None, [d], world["tokens"], model=world["model"])["sites"][site]
    # layer_norm: SAELens divides by (std + 1e-5) and multiplies back by std only
    tol = 1e-8 if normalize == "layer_norm" else 1e-10
    for iv in ("sae", "norm_corrected_sae", "sae_norm"):
        assert np.nanmax(np.abs(r["kl"][iv])) < tol, iv
    assert np.nanmean(r["kl"]["zero_ablation"]) > 0.1
    assert abs(r["attrs"]["explained_variance"] - 1) < 1e-8
    assert abs(r["attrs"]["kl_div_score"] - 1) < 1e-8 and abs(r["attrs"]["ce_loss_score"] - 1) < 1e-4
    # NaN exactly at BOS tokens; ce also NaN at the last position
    meas = world["tokens"] != BOS
    assert np.array_equal(np.isnan(r["kl"]["sae"]), ~meas)
    ce_nan = ~meas
    ce_nan[:, -1] = True
    assert np.array_equal(np.isnan(r["ce"]["sae"]), ce_nan)


@pytest.mark.parametrize("arch,gen,kw", [
    ("standard", "legacy", {}),
    ("jumprelu", "v6", {}),
    ("topk", "flat", {}),
    ("topk", "v6", {"rescale_acts_by_decoder_norm": True}),
    ("gated", "flat", {"scaling_factor": True}),
])
def test_reference_sae_fixture_is_decent(world, tmp_path, arch, gen, kw):
    site = "blocks.1.hook_resid_pre"
    s = build_sae(world, tmp_path / "s", site, arch, gen, **kw)
    cfg, params = rr.load_sae(s["dir"])
    assert cfg == s["cfg"]
    for k in params:
        assert np.array_equal(params[k], s["params"][k]), k
    d = rr.parse_sae_cfg(cfg)
    assert d["generation"] == gen and d["architecture"] == arch and d["hook"] == site
    x = world["fwd"]["processed"][site][world["meas"]]
    p = rr.sae_parts(cfg, params, x)
    f, xh = p["f"], p["x_hat"]
    frac = (f > 0).mean()
    assert 0.05 < frac < 0.45, frac
    ev = 1 - ((xh - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev > 0.6, ev
    if arch == "jumprelu":
        thr = params["threshold"]
        assert (thr > 0).all()
        z = p["pre"]
        assert ((z > 0) & (z <= thr)).mean() > 0.05  # some positive z stay below threshold
    if arch == "topk":
        assert ((f > 0).sum(-1) <= d["k"]).all()
    if arch == "gated":
        assert ((p["pre"] > 0) & (p["mag_pre"] <= 0)).any()


def test_reference_sae_formulas_spot_check():
    """sae_encode_decode against hand-written formulas on random numbers."""
    rng = np.random.default_rng(5)
    d, m, N = 6, 10, 7
    x = rng.standard_normal((N, d)) * 3 + 1
    P = {"W_enc": rng.standard_normal((d, m)), "b_enc": rng.standard_normal(m) * 0.3,
         "W_dec": rng.standard_normal((m, d)), "b_dec": rng.standard_normal(d),
         "threshold": np.abs(rng.standard_normal(m)), "b_gate": rng.standard_normal(m),
         "b_mag": rng.standard_normal(m), "r_mag": rng.standard_normal(m) * 0.3,
         "scaling_factor": rng.uniform(0.5, 1.5, m)}
    base = {"d_in": d, "d_sae": m, "metadata": {"hook_name": "blocks.0.hook_resid_pre"}}
    # layer_norm + jumprelu + no b_dec subtraction + scaling factor
    cfg = dict(base, architecture="jumprelu", normalize_activations="layer_norm", apply_b_dec_to_input=False)
    f, xh = rr.sae_encode_decode(cfg, P, x)
    for i in range(N):
        mu, sd = x[i].mean(), x[i].std(ddof=1)
        xn = (x[i] - mu) / (sd + 1e-5)
        z = xn @ P["W_enc"] + P["b_enc"]
        fi = np.array([zz if zz > t else 0.0 for zz, t in zip(z, P["threshold"])])
        assert np.allclose(f[i], fi)
        assert np.allclose(xh[i], ((fi * P["scaling_factor"]) @ P["W_dec"] + P["b_dec"]) * sd + mu)
    # constant_norm_rescale + gated
    cfg = dict(base, architecture="gated", normalize_activations="constant_norm_rescale")
    f, xh = rr.sae_encode_decode(cfg, P, x)
    for i in range(N):
        c = np.sqrt(d) / np.linalg.norm(x[i])
        xi = x[i] * c - P["b_dec"]
        gate = (xi @ P["W_enc"] + P["b_gate"]) > 0
        mag = np.maximum(xi @ (P["W_enc"] * np.exp(P["r_mag"])) + P["b_mag"], 0)
        assert np.allclose(f[i], gate * mag)
        assert np.allclose(xh[i], ((gate * mag * P["scaling_factor"]) @ P["W_dec"] + P["b_dec"]) / c)
    # topk with decoder-norm rescaling, expected_average_only_in (legacy boolean true)
    P2 = {k: v for k, v in P.items() if k != "scaling_factor"}
    cfg = dict(base, architecture="topk", k=3, rescale_acts_by_decoder_norm=True, normalize_activations=True)
    f, xh = rr.sae_encode_decode(cfg, P2, x, norm_scaling_factor=0.7)
    nrm = np.linalg.norm(P["W_dec"], axis=1)
    for i in range(N):
        z = ((x[i] * 0.7 - P["b_dec"]) @ P["W_enc"] + P["b_enc"]) * nrm
        top = np.argsort(z)[-3:]
        fi = np.zeros(m)
        fi[top] = np.maximum(z[top], 0)
        assert np.allclose(f[i], fi)
        assert np.allclose(xh[i], ((fi / nrm) @ P["W_dec"] + P["b_dec"]) / 0.7)


def test_reference_cfg_generations_parse(tmp_path):
    site = "blocks.1.attn.hook_z"
    kw = {"center_writing_weights": False, "fold_ln": False, "fold_value_biases": False}
    s = make_sae(str(tmp_path / "a"), 64, 32, site, "topk", "v6", k=4, from_pretrained_kwargs=kw)
    assert s["cfg"]["reshape_activations"] == "hook_z" and s["cfg"]["k"] == 4
    assert s["cfg"]["metadata"]["model_from_pretrained_kwargs"] == kw
    assert rr.sae_basis(s["cfg"]) == "raw"
    s = make_sae(str(tmp_path / "b"), 64, 32, site, "topk", "flat", k=4)
    assert s["cfg"]["activation_fn_str"] == "topk" and s["cfg"]["activation_fn_kwargs"] == {"k": 4}
    assert "model_from_pretrained_kwargs" not in s["cfg"]
    assert rr.sae_basis(s["cfg"]) == "processed"
    s = make_sae(str(tmp_path / "c"), 64, 32, "blocks.0.hook_resid_pre", generation="legacy",
                 normalize_activations=True)
    c = s["cfg"]
    assert "architecture" not in c and c["hook_point"] == "blocks.0.hook_resid_pre"
    assert c["hook_point_layer"] == 0 and c["hook_point_head_index"] is None
    assert c["dtype"] == "torch.float32" and c["normalize_activations"] is True
    assert rr.parse_sae_cfg(c)["normalize"] == "expected_average_only_in"
    assert rr.parse_sae_cfg(c)["generation"] == "legacy"


def test_reference_bases_differ(world, tmp_path):
    """The basis test below can tell the bases apart: an SAE fitted to raw
    activations gives clearly different KLs when fed processed ones."""
    site = "blocks.1.hook_resid_pre"
    kw = {"center_writing_weights": False, "fold_ln": False, "fold_value_biases": False}
    s = build_sae(world, tmp_path / "raw", site, basis="raw", from_pretrained_kwargs=kw)
    raw = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], interventions=("sae",))
    proc = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"],
                            interventions=("sae",), basis="processed")
    a, b = raw["sites"][site]["kl"]["sae"], proc["sites"][site]["kl"]["sae"]
    m = np.isfinite(a)
    assert rel_err(b[m], a[m]) > 0.05


# ================================================================ deterministic interventions vs reference

# (id, site, arch, gen, dtype, options)
CASES = [
    ("resid_pre0-standard-legacy-F32", "blocks.0.hook_resid_pre", "standard", "legacy", "F32", {}),
    ("hook_z1-jumprelu-v6-F32", "blocks.1.attn.hook_z", "jumprelu", "v6", "F32", {}),
    ("mlp_out1-topk-flat-F16", "blocks.1.hook_mlp_out", "topk", "flat", "F16", {}),
    ("hook_post2-gated-v6-BF16-scaling", "blocks.2.mlp.hook_post", "gated", "v6", "BF16",
     {"scaling_factor": True}),
    ("resid_post2-standard-flat-cnr-nobdec", "blocks.2.hook_resid_post", "standard", "flat", "F32",
     {"normalize_activations": "constant_norm_rescale", "apply_b_dec_to_input": False}),
    ("resid_pre1-jumprelu-flat-layernorm-BF16", "blocks.1.hook_resid_pre", "jumprelu", "flat", "BF16",
     {"normalize_activations": "layer_norm"}),
    ("hook_z0-topk-v6-rescale", "blocks.0.attn.hook_z", "topk", "v6", "F32",
     {"rescale_acts_by_decoder_norm": True}),
    ("resid_pre2-gated-flat-F16", "blocks.2.hook_resid_pre", "gated", "flat", "F16", {}),
    ("mlp_out0-standard-legacy-boolnorm", "blocks.0.hook_mlp_out", "standard", "legacy", "F32",
     {"normalize_activations": True}),
    ("resid_post1-standard-v6-eaoi-scaling", "blocks.1.hook_resid_post", "standard", "v6", "F32",
     {"normalize_activations": "expected_average_only_in", "scaling_factor": True}),
    ("hook_post0-standard-legacy-false", "blocks.0.mlp.hook_post", "standard", "legacy", "F16",
     {"normalize_activations": False}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_deterministic_vs_reference(world, tmp_path, run_saegap, case):
    cid, site, arch, gen, dtype, opts = case
    opts = dict(opts)
    nsf = None
    extra = ["--quiet"]
    if opts.get("normalize_activations") in ("expected_average_only_in", True):
        nsf = typical_nsf(world, site)
        extra += ["--norm-scaling-factor", repr(nsf)]
    s = build_sae(world, tmp_path / cid, site, arch, gen, dtype=dtype, nsf=nsf, **opts)
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [s["dir"]], out, DET, extra))
    res = read_result(str(out))
    ref = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"],
                           norm_scaling_factor=nsf)
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=cid)
    a = res["sites"][site]["attrs"]
    if nsf is not None:
        cmp = []
        cmp_scalar(cmp, "@norm_scaling_factor", a.get("norm_scaling_factor"), nsf, 1e-6)
        assert not cmp, cmp
        assert a.get("norm_scaling_factor_source") is not None


def test_converted_weights_shared_per_node(world, tmp_path, run_saegap):
    """F16 and BF16 SAEs are converted once per node into memory the node's ranks share
    (nodeblock.h): at -np 3 every rank reads the one converted copy, and the result is
    byte-identical to -np 1 and agrees with the float64 reference (gated with scaling_factor
    and topk with decoder-norm rescale derive their small vectors from the converted weights)."""
    saes = [build_sae(world, tmp_path / "bf16", "blocks.2.mlp.hook_post", "gated", "v6", dtype="BF16",
                      scaling_factor=True),
            build_sae(world, tmp_path / "f16", "blocks.1.hook_resid_pre", "topk", "v6", dtype="F16",
                      rescale_acts_by_decoder_norm=True)]
    res = {}
    for np_ in (1, 3):
        out = tmp_path / ("np%d.h5" % np_)
        run_saegap(run_args(world, [s["dir"] for s in saes], out, DET, ["--quiet"]), np=np_)
        res[np_] = read_result(str(out))
    keys = [k for k in res[1]["raw"] if k.startswith(("sites/", "clean/"))]
    assert keys
    diff = [k for k in keys if res[1]["raw"][k].tobytes() != res[3]["raw"].get(k, np.empty(0)).tobytes()]
    assert not diff, "-np 3 vs -np 1: datasets differ: %s" % diff
    ref = rr.reference_run(None, [s["dir"] for s in saes], world["tokens"], model=world["model"])
    check_against_reference(res[3], ref, rr.DETERMINISTIC, world["tokens"], what="np 3, F16/BF16")


def test_folder_of_saes_and_bos_include(world, tmp_path, run_saegap):
    """One --sae naming a folder whose subfolders are SAE folders adds them
    all; --bos include measures every token (also BOS)."""
    parent = tmp_path / "saes"
    specs = [("a_resid_pre0", "blocks.0.hook_resid_pre", "standard", "v6", {}),
             ("b_hook_z2", "blocks.2.attn.hook_z", "gated", "flat", {}),
             ("c_hook_post1", "blocks.1.mlp.hook_post", "topk", "v6", {}),
             ("d_resid_post2", "blocks.2.hook_resid_post", "jumprelu", "v6", {})]
    dirs = []
    for name, site, arch, gen, kw in specs:
        dirs.append(build_sae(world, parent / name, site, arch, gen, **kw)["dir"])
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [str(parent)], out, DET, ["--bos", "include", "--quiet"]))
    res = read_result(str(out))
    ref = rr.reference_run(None, dirs, world["tokens"], model=world["model"], bos="include")
    assert sorted(res["sites"]) == sorted(ref["sites"])
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], bos="include",
                            what="folder of SAEs, --bos include")


def test_expected_average_only_in_estimated(world, tmp_path, run_saegap):
    """Without --norm-scaling-factor the factor is estimated from the data and
    recorded (value + source); the results follow that recorded factor."""
    site = "blocks.1.hook_resid_pre"
    nsf0 = typical_nsf(world, site, factor=1.0)
    s = build_sae(world, tmp_path / "s", site, "standard", "v6", nsf=nsf0,
                  normalize_activations="expected_average_only_in")
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [s["dir"]], out, DET, ["--quiet"]))
    res = read_result(str(out))
    a = res["sites"][site]["attrs"]
    nsf = anum(a.get("norm_scaling_factor"))
    assert nsf is not None and a.get("norm_scaling_factor_source") is not None, sorted(a)
    # sqrt(d_in)/E||x|| over some token set: within 20 % of the measured-token value
    assert abs(nsf / nsf0 - 1) < 0.2, (nsf, nsf0)
    ref = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], norm_scaling_factor=nsf)
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="estimated factor")


def test_norm_scaling_factor_per_site(world, tmp_path, run_saegap):
    """--norm-scaling-factor SITE=FACTOR,...: each expected_average_only_in SAE
    gets its own factor (SAELens keeps them per SAE in pretrained_saes.yaml),
    recorded with its source; one without a factor is estimated and says so."""
    sites = ("blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_post")
    f0, f1 = typical_nsf(world, sites[0], factor=1.3), typical_nsf(world, sites[1], factor=0.7)
    saes = [build_sae(world, tmp_path / ("s%d" % i), site, "standard", "v6", nsf=nsf,
                      normalize_activations="expected_average_only_in")
            for i, (site, nsf) in enumerate(zip(sites, (f0, f1, typical_nsf(world, sites[2], factor=1.0))))]
    out = tmp_path / "out.h5"
    p = run_saegap(run_args(world, [s["dir"] for s in saes], out, DET,
                            ["--norm-scaling-factor", "%s=%r,%s=%r" % (sites[0], f0, sites[1], f1)]))
    res = read_result(str(out))
    a = [res["sites"][site]["attrs"] for site in sites]
    assert anum(a[0]["norm_scaling_factor"]) == f0 and anum(a[1]["norm_scaling_factor"]) == f1
    assert sites[0] in astr(a[0]["norm_scaling_factor_source"]), a[0]["norm_scaling_factor_source"]
    assert "estimated" in astr(a[2]["norm_scaling_factor_source"])
    err = p.stderr.decode(errors="replace")
    assert any("estimated" in ln and saes[2]["dir"] in ln for ln in err.splitlines()), err
    assert not any("estimated" in ln and saes[0]["dir"] in ln for ln in err.splitlines()), err
    f2 = anum(a[2]["norm_scaling_factor"])
    ref = rr.reference_run(None, [s["dir"] for s in saes], world["tokens"], model=world["model"],
                           norm_scaling_factor={sites[0]: f0, sites[1]: f1, sites[2]: f2})
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="per-site factors")
    # the job-file key takes the same list
    job = tmp_path / "f.job"
    job.write_text("norm-scaling-factor = %s=%r,%s=%r\n" % (sites[0], f0, sites[1], f1))
    out2 = tmp_path / "out2.h5"
    run_saegap(["run", str(job)] + run_args(world, [s["dir"] for s in saes], out2, DET, ["--quiet"])[1:])
    b = read_result(str(out2))["sites"]
    for site in sites[:2]:
        assert anum(b[site]["attrs"]["norm_scaling_factor"]) == anum(res["sites"][site]["attrs"]["norm_scaling_factor"])
        assert astr(b[site]["attrs"]["norm_scaling_factor_source"]) == astr(res["sites"][site]["attrs"]["norm_scaling_factor_source"])


@pytest.mark.parametrize("spec,needle", [
    ("blocks.2.hook_resid_pre=1.5", "blocks.2.hook_resid_pre"),       # no SAE on that site
    ("blocks.0.hook_resid_pre=1.5", "expected_average_only_in"),      # SAE does not normalise so
    ("blocks.0.hook_resid_pre=-1", "blocks.0.hook_resid_pre=-1"),     # not positive
    ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre"),           # no factor
    ("1.5,2", "1.5,2"),
])
def test_error_norm_scaling_factor_spec(world, tmp_path, run_saegap, good_sae, spec, needle):
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [good_sae["dir"]], out, DET, ["--norm-scaling-factor", spec]), check=False)
    assert_user_error(p, out, needle)
    assert "--norm-scaling-factor" in p.stderr.decode(errors="replace")


@pytest.mark.parametrize("kw,needle", [
    ({"fold_ln": "yes"}, "fold_ln"),
    ({"refactor_factored_attn_matrices": True}, "refactor_factored_attn_matrices"),
    ({"first_n_layers": 2}, "first_n_layers"),
    ([True], "model_from_pretrained_kwargs"),
])
def test_error_kwargs_not_supported(world, tmp_path, run_saegap, kw, needle):
    """kwargs that change activations in ways saegap does not implement, or are
    malformed, are refused naming the key."""
    d = str(tmp_path / "sae")

    def edit(c):
        c = dict(c)
        c["model_from_pretrained_kwargs"] = kw
        return c
    make_sae(d, D_MODEL, 32, "blocks.0.hook_resid_pre", generation="flat", cfg_edit=edit)
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, needle)
    assert "cfg.json" in p.stderr.decode(errors="replace")


def test_scores_scope_position(world, tmp_path, run_saegap):
    """SAELens's scores do not depend on --scope: the same SAE gives the same
    kl_div_score at --scope position as at --scope all (its own passes)."""
    s = build_sae(world, tmp_path / "s", "blocks.1.hook_resid_pre", "standard", "v6")
    vals = []
    for i, extra in enumerate(([], ["--scope", "position", "--position", "5", "--window", "4"])):
        out = tmp_path / ("o%d.h5" % i)
        run_saegap(run_args(world, [s["dir"]], out, "sae,zero_ablation", extra + ["--quiet"]))
        vals.append(read_result(str(out))["sites"]["blocks.1.hook_resid_pre"]["attrs"])
    ref = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"],
                           interventions=("sae", "zero_ablation"))["sites"]["blocks.1.hook_resid_pre"]["attrs"]
    errs = []
    for a in vals:
        for k in ("kl_div_score", "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation",
                  "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_without_sae"):
            cmp_scalar(errs, k, a.get(k), ref[k])
    assert not errs, errs


SCORE_ATTRS = ("kl_div_score", "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation",
               "ce_loss_with_sae", "ce_loss_with_ablation", "ce_loss_without_sae")


def _plan_passes(run_saegap, args):
    """`saegap plan`'s intervened passes per context for a run's arguments."""
    p = run_saegap(["plan", "--ranks", "1"] + args[1:], check=False)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode()
    return float(out.split(" intervened passes per context")[0].rsplit(",", 1)[1])


@pytest.mark.parametrize("bos", ["exclude", "include"])
def test_scores_shared_passes(world, tmp_path, run_saegap, bos):
    """A score pass that is, in a batch, the sae or zero_ablation intervention's own pass (no
    special token in the batch, or --bos include, or hook_z) is read from that pass instead of
    run again: the scores still equal the float64 reference's, and plan counts one pass less."""
    sites = ("blocks.1.hook_resid_pre", "blocks.1.attn.hook_z")
    saes = [build_sae(world, tmp_path / ("s%d" % i), st, "standard", "v6")["dir"] for i, st in enumerate(sites)]
    tok = np.ascontiguousarray(world["tokens_pos"][:, 1:])  # BOS (the only special id) cut off
    assert not np.isin(tok, [BOS]).any()
    cases = {"no special token": tok, "BOS at position 0": world["tokens_pos"]}
    passes = {}
    for i, (what, t) in enumerate(cases.items()):
        tpath = write_tokens_h5(str(tmp_path / ("t%d.h5" % i)), t)
        out = tmp_path / ("o%d.h5" % i)
        args = run_args(world, saes, out, "sae,zero_ablation", ["--bos", bos, "--quiet"], tokens=tpath)
        passes[what] = _plan_passes(run_saegap, args)
        run_saegap(args)
        res = read_result(str(out))
        ref = rr.reference_run(None, saes, t, bos=bos, model=world["model"], interventions=("sae", "zero_ablation"))
        errs = []
        for site in sites:
            for k in SCORE_ATTRS:
                cmp_scalar(errs, "%s %s@%s" % (what, site, k), res["sites"][site]["attrs"].get(k),
                           ref["sites"][site]["attrs"][k])
        assert not errs, errs
    # passes per context: 2 sites x (sae, zero_ablation) = 4, plus the score passes run apart:
    # no special token: none; BOS at 0: at exclude SAELens's zero-ablation of both sites and the
    # SAE pass at hook_z (which replaces BOS too); at include the SAE pass at hook_resid_pre
    assert passes["no special token"] == 4, passes
    assert passes["BOS at position 0"] == (7 if bos == "exclude" else 5), passes


def test_scores_eos_not_bos(world, tmp_path, run_saegap):
    """SAELens leaves eos and pad tokens out of its scores as it does BOS: with an eos id that is
    not BOS and occurs in the contexts, kl_div_with_sae (and the scores) still equal the reference
    (saegap's sae pass replaces those tokens, so SAELens's SAE pass is run apart there)."""
    tok = world["tokens_pos"]
    vals, counts = np.unique(tok[:, 1:], return_counts=True)
    eos = int(vals[np.argmax(counts)])  # the commonest token, to be sure it occurs
    mdir = str(tmp_path / "model-eos")
    os.makedirs(mdir)
    for f in os.listdir(world["model_dir"]):
        os.symlink(os.path.join(world["model_dir"], f), os.path.join(mdir, f))
    os.remove(os.path.join(mdir, "config.json"))
    with open(os.path.join(world["model_dir"], "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = eos
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(cfg, f)
    config, params = world["model"]
    config = dict(config, eos_token_id=eos)
    site = "blocks.1.hook_resid_pre"
    s = build_sae(world, tmp_path / "s", site, "standard", "v6")
    out = tmp_path / "o.h5"
    args = run_args(world, [s["dir"]], out, "sae,zero_ablation", ["--quiet"], tokens=world["tokens_pos_h5"])
    args[args.index("--model") + 1] = mdir
    run_saegap(args)
    a = read_result(str(out))["sites"][site]["attrs"]
    ref = rr.reference_run(None, [s["dir"]], tok, model=(config, params),
                           interventions=("sae", "zero_ablation"))["sites"][site]["attrs"]
    errs = []
    for k in SCORE_ATTRS:
        cmp_scalar(errs, k, a.get(k), ref[k])
    assert not errs, errs


# ================================================================ basis

KW_RAW = {"center_writing_weights": False, "fold_ln": False, "fold_value_biases": False}


def test_basis_from_cfg(world, tmp_path, run_saegap):
    """kwargs all false -> raw (Hugging Face values, b_V inside hook_z);
    kwargs absent -> processed, with a warning line naming the SAE."""
    s_raw_res = build_sae(world, tmp_path / "raw_resid1", "blocks.1.hook_resid_pre", basis="raw",
                          from_pretrained_kwargs=KW_RAW)
    s_raw_z = build_sae(world, tmp_path / "raw_z1", "blocks.1.attn.hook_z", "jumprelu", basis="raw",
                        from_pretrained_kwargs=KW_RAW)
    s_proc_z = build_sae(world, tmp_path / "nokw_z0", "blocks.0.attn.hook_z", "standard", "flat")
    dirs = [s_raw_res["dir"], s_raw_z["dir"], s_proc_z["dir"]]
    out = tmp_path / "out.h5"
    p = run_saegap(run_args(world, dirs, out, DET))
    res = read_result(str(out))
    ref = rr.reference_run(None, dirs, world["tokens"], model=world["model"])
    assert ref["sites"]["blocks.1.hook_resid_pre"]["basis"] == "raw"
    assert ref["sites"]["blocks.0.attn.hook_z"]["basis"] == "processed"
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="basis from cfg")
    err = p.stderr.decode(errors="replace")
    d = s_proc_z["dir"]
    lines = [ln for ln in err.splitlines() if "warn" in ln.lower()
             and (d in ln or os.path.basename(d) in ln)]
    assert lines, "no warning line naming the SAE without model_from_pretrained_kwargs (%s); stderr:\n%s" % (d, err)
    for s in (s_raw_res, s_raw_z):  # these record their basis: no such warning for them
        named = [ln for ln in err.splitlines() if "warn" in ln.lower() and s["dir"] in ln
                 and "basis" in ln.lower()]
        assert not named, named


def test_basis_override(world, tmp_path, run_saegap):
    """--basis raw overrides an SAE whose cfg implies processed."""
    site = "blocks.2.attn.hook_z"
    s = build_sae(world, tmp_path / "s", site, "standard", "v6", basis="raw")
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [s["dir"]], out, DET, ["--basis", "raw", "--quiet"]))
    res = read_result(str(out))
    ref = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], basis="raw")
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="--basis raw")


# ================================================================ random interventions

@pytest.fixture(scope="module")
def random_runs(world, tmp_path_factory, run_saegap):
    base = tmp_path_factory.mktemp("random_runs")
    s1 = build_sae(world, base / "s_resid1", "blocks.1.hook_resid_pre", "standard", "v6")
    s2 = build_sae(world, base / "s_z1", "blocks.1.attn.hook_z", "jumprelu", "flat")
    s3 = build_sae(world, base / "s_post2", "blocks.2.mlp.hook_post", "topk", "v6")
    dirs = [s1["dir"], s2["dir"], s3["dir"]]
    outs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = base / ("run_%s.h5" % name)
        run_saegap(run_args(world, dirs, out, ALL11, ["--seed", seed, "--quiet"]))
        outs[name] = read_result(str(out))
    return {"dirs": dirs, "res": outs, "base": base}


def test_random_interventions_basic(world, random_runs):
    res = random_runs["res"]["a"]
    meas = world["meas"]
    ce_meas = meas.copy()
    ce_meas[:, -1] = False
    errs = []
    for site, c in res["sites"].items():
        for iv in rr.RANDOM:
            kl = c["kl"].get(iv)
            ce = c["ce"].get(iv)
            if kl is None or ce is None:
                errs.append("%s: kl/ce of %s missing" % (site, iv))
                continue
            if kl.shape != meas.shape:
                errs.append("%s kl/%s shape %s want %s" % (site, iv, kl.shape, meas.shape))
                continue
            if not np.isfinite(kl[meas]).all():
                errs.append("%s kl/%s not finite at measured tokens" % (site, iv))
            if not np.isnan(kl[~meas]).all():
                errs.append("%s kl/%s not NaN at BOS tokens" % (site, iv))
            if (kl[meas] < -1e-6).any():
                errs.append("%s kl/%s negative: min %g" % (site, iv, kl[meas].min()))
            if not (np.isfinite(ce[ce_meas]).all() and np.isnan(ce[~ce_meas]).all()):
                errs.append("%s ce/%s NaN pattern wrong" % (site, iv))
            if not (np.nanmean(kl) > 1e-6):
                errs.append("%s kl/%s mean %g: the perturbation does nothing" % (site, iv, np.nanmean(kl)))
    assert not errs, "\n".join(errs)
    assert "latent_noise_sigma" in res["attrs"]
    # the deterministic interventions of the same run still match the reference
    ref = rr.reference_run(None, random_runs["dirs"], world["tokens"], model=world["model"])
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="all-11 run")


def test_random_seed_reproducible(random_runs):
    a, b, c = (random_runs["res"][k] for k in "abc")
    keys = [k for k in a["raw"] if k.startswith("sites/") or k.startswith("correlation/")
            or k.startswith("clean/") or k == "tokens"]
    assert keys
    diff_same = [k for k in keys if k not in b["raw"] or a["raw"][k].tobytes() != b["raw"][k].tobytes()]
    assert not diff_same, "same seed, datasets not bitwise identical: %s" % diff_same
    for site in a["sites"]:
        for iv in rr.RANDOM:
            k = "sites/%s/kl/%s" % (site, iv)
            assert not np.array_equal(a["raw"][k], c["raw"][k], equal_nan=True), \
                "seed 5 and seed 6 give identical %s" % k
        for iv in rr.DETERMINISTIC:
            k = "sites/%s/kl/%s" % (site, iv)
            assert a["raw"][k].tobytes() == c["raw"][k].tobytes(), "deterministic %s depends on the seed" % k


def test_threads_bitwise_identical(world, random_runs, run_saegap):
    """The default thread count and --threads-per-rank 2 give the same bits
    as --threads-per-rank 1 (random_runs["a"])."""
    a = random_runs["res"]["a"]
    for name, threads in (("default", None), ("two", 2)):
        out = random_runs["base"] / ("threads_%s.h5" % name)
        run_saegap(run_args(world, random_runs["dirs"], out, ALL11, ["--seed", 5, "--quiet"],
                            threads=threads))
        b = read_result(str(out))
        keys = [k for k in a["raw"] if k.startswith(("sites/", "correlation/", "clean/"))]
        diff = [k for k in keys if k not in b["raw"] or a["raw"][k].tobytes() != b["raw"][k].tobytes()]
        assert not diff, "threads %s vs 1: datasets differ: %s" % (name, diff)


def test_random_statistics_plausible(world, random_runs):
    """Loose sanity of the random baselines on the residual site: eps_random
    (same error norm as the SAE, random direction) and theta_random_true_norm
    are finite, same order of magnitude as the SAE's KL, and theta_random (SAE
    norm) lies between them in spirit; no exact values (the draws are
    Philox-based and not reproduced here)."""
    c = random_runs["res"]["a"]["sites"]["blocks.1.hook_resid_pre"]
    m = {iv: float(np.nanmean(c["kl"][iv])) for iv in rr.ALL_INTERVENTIONS}
    assert m["zero_ablation"] > m["sae"] > 0, m
    for iv in ("eps_random", "theta_random", "theta_random_true_norm", "cov_random", "sae_eps_random"):
        assert 1e-4 * m["sae"] < m[iv] < 100 * m["zero_ablation"], (iv, m)


def test_samples_axis(world, tmp_path, run_saegap):
    s = build_sae(world, tmp_path / "s", "blocks.1.hook_resid_pre", "standard", "v6")
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [s["dir"]], out, ALL11, ["--samples", 3, "--quiet"]))
    res = read_result(str(out))
    c = res["sites"]["blocks.1.hook_resid_pre"]
    meas = world["meas"]
    for iv in rr.ALL_INTERVENTIONS:
        want = (N_CTX, CTX, 3) if iv in rr.RANDOM else (N_CTX, CTX)
        for grp in ("kl", "ce"):
            a = c[grp].get(iv)
            assert a is not None and a.shape == want, (grp, iv, None if a is None else a.shape, want)
        kl = c["kl"][iv]
        assert np.isfinite(kl[meas]).all() and np.isnan(kl[~meas]).all(), iv
        if iv in rr.RANDOM:
            # samples are independent draws
            assert not np.array_equal(kl[..., 0][meas], kl[..., 1][meas]), iv
    assert int(anum(res["attrs"].get("samples"))) == 3
    ref = rr.reference_run(None, [s["dir"]], world["tokens"], model=world["model"])
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="--samples 3")


def test_scope_position(world, tmp_path, run_saegap):
    site = "blocks.1.hook_resid_pre"
    s = build_sae(world, tmp_path / "s", site, "standard", "v6")
    P, W, S = 6, 8, 4
    ivs = ("sae", "norm_corrected_sae", "sae_norm", "zero_ablation")
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [s["dir"]], out, ",".join(ivs + ("eps_random", "theta_random")),
                        ["--scope", "position", "--position", P, "--window", W, "--samples", S,
                         "--quiet"], tokens=world["tokens_pos_h5"]))
    res = read_result(str(out))
    c = res["sites"][site]
    assert astr(res["attrs"].get("scope")) == "position"
    for iv in ivs:
        assert c["kl"][iv].shape == (N_CTX, W), (iv, c["kl"][iv].shape)
    for iv in ("eps_random", "theta_random"):
        kl = c["kl"][iv]
        assert kl.shape == (N_CTX, W, S), (iv, kl.shape)
        assert np.isfinite(kl).all() and (kl >= -1e-6).all(), iv
    # KL before the intervened position is not recorded; at P.. it is, and the
    # deterministic ones match the reference
    ref = rr.reference_run(None, [s["dir"]], world["tokens_pos"], model=world["model"],
                           interventions=ivs, scope="position", position=P, window=W)
    errs = []
    for iv in ivs:
        cmp_arr(errs, "kl/" + iv, c["kl"][iv], ref["sites"][site]["kl"][iv], floor=KL_FLOOR)
        cmp_arr(errs, "ce/" + iv, c["ce"][iv], ref["sites"][site]["ce"][iv])
    assert not errs, "\n".join(errs)
    # z-score of the SAE's KL within the eps_random samples, recomputed from the file
    z = c["sae_kl_zscore"]
    assert z is not None, "sae_kl_zscore missing with --samples %d" % S
    assert z.shape == (N_CTX, W)
    eps = c["kl"]["eps_random"].astype(np.float64)
    want = (c["kl"]["sae"].astype(np.float64) - eps.mean(-1)) / eps.std(-1, ddof=1)
    e = rel_err(z, want)
    assert e < 1e-3, "sae_kl_zscore vs (kl_sae - mean)/std(ddof=1) from the file: rel err %g" % e


# ================================================================ invariants from the file

def test_invariants_from_file(world, random_runs):
    res = random_runs["res"]["a"]
    clean = res["clean_ce"].astype(np.float64)
    for site, c in res["sites"].items():
        for iv, kl in c["kl"].items():
            v = kl[np.isfinite(kl)]
            assert (v >= -1e-6).all(), (site, iv, v.min())
        ks, kz = c["kl"]["sae"].astype(np.float64), c["kl"]["zero_ablation"].astype(np.float64)
        assert np.nanmean(kz) > np.nanmean(ks), site
        cs = c["ce"]["sae"].astype(np.float64)
        a = c["attrs"]
        errs = []
        # SAELens's scores from their recorded parts; at sites other than hook_z (where
        # SAELens substitutes BOS too) the SAE parts are the per-token sae data's means
        kzs, kss = anum(a.get("kl_div_with_ablation")), anum(a.get("kl_div_with_sae"))
        czs, css, ccl = (anum(a.get(k)) for k in ("ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"))
        cmp_scalar(errs, site + "@kl_div_score", a.get("kl_div_score"), (kzs - kss) / kzs, 1e-9)
        cmp_scalar(errs, site + "@ce_loss_score", a.get("ce_loss_score"), (czs - css) / (czs - ccl), 1e-9)
        # zeroing BOS too moves the distribution at least as much as zeroing the rest alone
        assert kzs > 0.5 * np.nanmean(kz), (site, kzs, np.nanmean(kz))
        if "hook_z" not in site:
            m = np.isfinite(cs)
            cmp_scalar(errs, site + "@kl_div_with_sae", kss, float(np.nanmean(ks)), 1e-4)
            cmp_scalar(errs, site + "@ce_loss_with_sae", css, cs[m].mean(), 1e-4)
            cmp_scalar(errs, site + "@ce_loss_without_sae", ccl, clean[m].mean(), 1e-4)
        for iv, kl in c["kl"].items():
            cmp_scalar(errs, site + "@mean_kl_" + iv, a.get("mean_kl_" + iv),
                       float(np.nanmean(kl.astype(np.float64))), 1e-4)
        l0 = c["recon"]["l0"]
        cmp_scalar(errs, site + "@mean_l0", a.get("mean_l0"), float(np.nanmean(l0)), 1e-5)
        fd = c["feature_density"]
        cmp_scalar(errs, site + "@dead_latents", a.get("dead_latents"), float((fd == 0).sum()), 0)
        # mean feature density = mean l0 / d_sae
        cmp_scalar(errs, site + " mean(feature_density)*d_sae", fd.mean() * fd.size, float(np.nanmean(l0)), 1e-5)
        assert not errs, "\n".join(errs)


def test_perfect_sae_kl_zero(world, tmp_path, run_saegap):
    """An exact SAE (f = [relu(x), relu(-x)], x_hat = x): eps = 0 and
    cos(x, x_hat) = 1, so sae, norm_corrected_sae, sae_norm and also the
    random eps_random, theta_random, theta_random_true_norm and cov_random
    all give x back: KL ~ 0 (float32 noise; a cosine rounded above 1 must not
    turn into NaN)."""
    site = "blocks.1.hook_resid_pre"
    d = _perfect_sae(str(tmp_path / "perfect"), D_MODEL, site)
    out = tmp_path / "out.h5"
    ivs = ("sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random",
           "theta_random_true_norm", "cov_random")
    run_saegap(run_args(world, [d], out, ",".join(ivs + ("zero_ablation",)), ["--quiet", "--samples", 2]))
    c = read_result(str(out))["sites"][site]
    meas = world["meas"]
    for iv in ivs:
        kl = c["kl"][iv]
        assert np.isfinite(kl[meas]).all(), iv
        assert np.nanmax(np.abs(kl)) < 1e-4, (iv, np.nanmax(np.abs(kl)))
    assert np.nanmean(c["kl"]["zero_ablation"]) > 0.1
    assert abs(anum(c["attrs"]["explained_variance"]) - 1) < 1e-4
    assert np.nanmax(c["recon"]["eps_norm"]) < 1e-4 * np.nanmax(c["recon"]["l2_norm_in"])


def test_dead_sae_edge_case(world, tmp_path, run_saegap):
    """An SAE where no latent ever fires and b_dec = 0: x_hat = 0 for every
    token.  Then sae = norm_corrected_sae (x_hat if ||x_hat|| = 0) = sae_norm
    (x * 0) = theta_random (scaled by ||x_hat|| = 0) = latent_noise (no active
    latent) = sae_eps_random (||x_hat' - x_hat|| = 0) = zero_ablation; the
    others must stay finite (no 0/0 turned into NaN)."""
    site = "blocks.1.hook_resid_pre"
    d = str(tmp_path / "dead")
    os.makedirs(d)
    rng = np.random.default_rng(3)
    m = 96
    write_safetensors(os.path.join(d, "sae_weights.safetensors"),
                      {"W_enc": rng.standard_normal((D_MODEL, m)) * 0.1, "b_enc": np.full(m, -1e3),
                       "W_dec": rng.standard_normal((m, D_MODEL)), "b_dec": np.zeros(D_MODEL)})
    write_cfg(d, _build_cfg("v6", D_MODEL, m, site, "standard", True, "none", None,
                            "tiny-gpt2", None, False, False, 128))
    out = tmp_path / "out.h5"
    run_saegap(run_args(world, [d], out, ALL11, ["--quiet"]))
    res = read_result(str(out))
    c = res["sites"][site]
    meas = world["meas"]
    errs = []
    check_complete(res, errs)
    kz = c["kl"]["zero_ablation"]
    for iv in ("sae", "norm_corrected_sae", "sae_norm", "theta_random", "latent_noise", "sae_eps_random"):
        cmp_arr(errs, "kl/%s vs kl/zero_ablation" % iv, c["kl"][iv], kz, floor=KL_FLOOR)
    for iv in ("eps_random", "theta_random_true_norm", "cov_random", "mean_ablation"):
        kl = c["kl"][iv]
        if not (np.isfinite(kl[meas]).all() and (kl[meas] >= -1e-6).all()):
            errs.append("kl/%s not finite / negative at measured tokens" % iv)
    if not (np.all(c["recon"]["l0"][meas] == 0) and np.all(c["recon"]["l2_norm_out"][meas] == 0)):
        errs.append("recon l0 / l2_norm_out not 0")
    if not np.all(c["feature_density"] == 0):
        errs.append("feature_density not all 0")
    if int(anum(c["attrs"].get("dead_latents", -1))) != m:
        errs.append("dead_latents %r, want %d" % (c["attrs"].get("dead_latents"), m))
    x = world["fwd"]["processed"][site][meas]
    ev = 1 - (x ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    cmp_scalar(errs, "@explained_variance", c["attrs"].get("explained_variance"), ev)
    assert not errs, "\n".join(errs)


# ================================================================ correlation (written when sae and eps_random run)

def test_correlation_recomputed(random_runs):
    res = random_runs["res"]["a"]
    corr = res["correlation"].get("sae_minus_eps_random")
    if corr is None:
        pytest.skip("/correlation/sae_minus_eps_random not written yet (docs: distributed-sweep issue)")
    sites = [astr(s) for s in corr["sites"]]
    gaps = []
    for s in sites:
        c = res["sites"][s]
        gaps.append(c["kl"]["sae"].astype(np.float64) - c["kl"]["eps_random"].astype(np.float64))
    S = len(sites)
    pe = np.eye(S)
    sp = np.eye(S)

    def rank(v):
        o = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[o] = np.arange(len(v))
        return r

    for i in range(S):
        for j in range(S):
            m = np.isfinite(gaps[i]) & np.isfinite(gaps[j])
            a, b = gaps[i][m], gaps[j][m]
            pe[i, j] = np.corrcoef(a, b)[0, 1]
            sp[i, j] = np.corrcoef(rank(a), rank(b))[0, 1]
    assert np.abs(corr["pearson"] - pe).max() < 1e-4, (corr["pearson"], pe)
    assert np.abs(corr["spearman"] - sp).max() < 1e-3, (corr["spearman"], sp)


# ================================================================ user errors

def assert_user_error(p, out, *alts):
    err = p.stderr.decode(errors="replace")
    info = "\n--- rc %d, stderr ---\n%s" % (p.returncode, err[-3000:])
    assert 1 <= p.returncode <= 127, "exit status %d, want 1..127%s" % (p.returncode, info)
    lines = [ln for ln in err.splitlines() if ln.startswith("saegap: error:")]
    assert lines, "no line starting with 'saegap: error:'" + info
    assert any(a.lower() in ln.lower() for ln in lines for a in alts), \
        "the error line(s) mention none of %r%s" % (alts, info)
    for bad in ("Traceback", "Segmentation", "AddressSanitizer", "core dumped", "HDF5-DIAG"):
        assert bad not in err, bad + info
    if out is not None and os.path.exists(str(out)):
        try:
            with h5py.File(str(out), "r") as f:
                c = f.attrs.get("complete")
            assert c is None or int(np.asarray(c).reshape(-1)[0]) != 1, "output claims complete" + info
        except OSError:
            pass


@pytest.fixture
def good_sae(world, tmp_path):
    return build_sae(world, tmp_path / "good", "blocks.0.hook_resid_pre", "standard", "v6")


def test_error_hook_not_in_model(world, tmp_path, run_saegap):
    d = str(tmp_path / "sae_l9")
    make_sae(d, D_MODEL, 32, "blocks.9.hook_resid_pre")
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, d, "blocks.9")


def test_error_d_in_mismatch(world, tmp_path, run_saegap):
    d = str(tmp_path / "sae_din48")
    make_sae(d, 48, 32, "blocks.0.hook_resid_pre")
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, d, "d_in")


def test_error_cfg_missing_d_sae(world, tmp_path, run_saegap):
    d = str(tmp_path / "sae_nodsae")

    def drop(c):
        c = dict(c)
        del c["d_sae"]
        return c
    make_sae(d, D_MODEL, 32, "blocks.0.hook_resid_pre", cfg_edit=drop)
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, "d_sae")


@pytest.mark.parametrize("gen", ["v6", "legacy"])
def test_error_model_name_mismatch(world, tmp_path, run_saegap, gen):
    d = str(tmp_path / "sae_other_model")
    make_sae(d, D_MODEL, 32, "blocks.0.hook_resid_pre", generation=gen, model_name="gpt2-medium")
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, d, "gpt2-medium", "model_name")
    out2 = tmp_path / "o2.h5"
    run_saegap(run_args(world, [d], out2, DET, ["--allow-model-mismatch", "--quiet"]))
    errs = []
    check_complete(read_result(str(out2)), errs)
    assert not errs, errs


def test_error_unknown_architecture(world, tmp_path, run_saegap):
    d = str(tmp_path / "sae_matryoshka")

    def arch(c):
        c = dict(c)
        c["architecture"] = "matryoshka_batchtopk"
        c["k"] = 8
        return c
    make_sae(d, D_MODEL, 32, "blocks.0.hook_resid_pre", cfg_edit=arch)
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [d], out, DET), check=False)
    assert_user_error(p, out, "matryoshka_batchtopk")


def test_error_unknown_intervention(world, tmp_path, run_saegap, good_sae):
    out = tmp_path / "o.h5"
    p = run_saegap(run_args(world, [good_sae["dir"]], out, "sae,foo_ablation"), check=False)
    assert_user_error(p, out, "foo_ablation")


def test_error_existing_out_untouched(world, tmp_path, run_saegap, good_sae):
    out = tmp_path / "precious.h5"
    payload = b"not yours to overwrite\n" * 10
    out.write_bytes(payload)
    st = os.stat(str(out))
    p = run_saegap(run_args(world, [good_sae["dir"]], out, DET), check=False)
    assert_user_error(p, None, str(out), "precious.h5", "exists")
    assert out.read_bytes() == payload
    assert os.stat(str(out)).st_mtime_ns == st.st_mtime_ns


# ================================================================ --out checked before any work

def test_error_out_dangling_symlink(world, tmp_path, run_saegap, good_sae):
    out = tmp_path / "link.h5"
    os.symlink(str(tmp_path / "nowhere" / "r.h5"), str(out))
    p = run_saegap(run_args(world, [good_sae["dir"]], out, DET), check=False)
    assert_user_error(p, None, "symbolic link")
    assert "statistics pass" not in p.stderr.decode(errors="replace")
    assert os.path.islink(str(out)) and not os.path.exists(str(out))


def test_error_out_folder_missing(world, tmp_path, run_saegap, good_sae):
    out = tmp_path / "no_such_folder" / "r.h5"
    p = run_saegap(run_args(world, [good_sae["dir"]], out, DET), check=False)
    assert_user_error(p, None, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: run by tests/run-all.sh as user nobody")
def test_error_out_folder_not_writable(world, tmp_path, run_saegap, good_sae):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    p = run_saegap(run_args(world, [good_sae["dir"]], d / "r.h5", DET), check=False)
    assert_user_error(p, None, "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything: run by tests/run-all.sh as user nobody")
def test_error_sae_weights_unreadable(world, tmp_path, run_saegap):
    s = build_sae(world, tmp_path / "s", "blocks.0.hook_resid_pre", "standard", "v6")
    w = os.path.join(s["dir"], "sae_weights.safetensors")
    os.chmod(w, 0)
    p = run_saegap(run_args(world, [s["dir"]], tmp_path / "r.h5", DET), check=False)
    assert_user_error(p, None, "sae_weights.safetensors")
    assert "ermission" in p.stderr.decode(errors="replace")


# ================================================================ BLIS's kernels

def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="BLIS configuration numbers of x86-64")
def test_blis_kernels_named_recorded_and_resume_warns(world, tmp_path, run_saegap, monkeypatch):
    """The run names BLIS's kernels and the file records them ('blis_kernels'); on a CPU with
    AVX-512 saegap selects 'skx' (BLIS 0.9 runs its 'generic' kernels on CPUs newer than
    itself); resuming with other kernels warns, with the same ones it does not."""
    build_sae(world, tmp_path / "s", "blocks.1.hook_resid_pre")
    out = tmp_path / "r.h5"
    args = run_args(world, [str(tmp_path / "s")], out, interventions="sae,zero_ablation")
    monkeypatch.delenv("BLIS_ARCH_TYPE", raising=False)
    err = run_saegap(args).stderr.decode()
    with h5py.File(str(out), "r") as f:
        kernels = astr(f.attrs["blis_kernels"])
    assert "BLIS kernels '%s'" % kernels in err, err
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= _cpu_flags():
        assert kernels == "skx", kernels
    monkeypatch.setenv("BLIS_ARCH_TYPE", "5")  # 'penryn' in BLIS 0.9 (SSE: every x86-64 has it)
    err = run_saegap(args + ["--resume"]).stderr.decode()
    assert "computed with BLIS kernels '%s', this run uses 'penryn'" % kernels in err, err
    monkeypatch.delenv("BLIS_ARCH_TYPE")
    err = run_saegap(args + ["--resume"]).stderr.decode()
    assert "computed with BLIS kernels" not in err, err
