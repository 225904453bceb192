"""The activation basis of each SAE, as SAELens implies it (issue 11).

    /usr/bin/python3 -m pytest -q tests/python/test_basis.py

Yardstick: tl_reference.py, a float64 TransformerLens (GPT-2) written from
TransformerLens's source: its weight conversion and its weight processing
applied one flag at a time (fold_ln, center_writing_weights, center_unembed,
fold_value_biases), and SAELens's rule for which flags an SAE's cfg implies
(sae_lens/load_model.py: from_pretrained_no_processing(**kwargs), every flag
False unless the dict says true; key absent -> from_pretrained's defaults,
all True).  SAEs are fitted to the hook values of the TL model built with
the SAE's flags; every deterministic intervention is patched into that model.

The first group checks the reference (no binary); the rest run the binary
($SAEGAP_BIN, default /work/main/build/saegap) and fail, never skip, when it
is missing.  Tolerances and NaN conventions: test_run.py (cmp_arr, KL_FLOOR).
"""

import itertools
import json
import os
import re

import h5py
import numpy as np
import pytest

import gpt2_reference as g2
import run_reference as rr
import test_run as tr
import tl_reference as tl
from sae_fixtures import make_sae

world = tr.world          # the tiny GPT-2 and contexts of test_run.py (session fixture)

DET = tr.DET
ABSENT = "ABSENT"
ALL4 = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
        "fold_value_biases": True}

# (id, model_from_pretrained_kwargs or ABSENT)
CASES = [
    ("empty", {}),
    ("cww_false", {"center_writing_weights": False}),
    ("cww_true", {"center_writing_weights": True}),
    ("fvb", {"fold_value_biases": True}),
    ("foldln_fvb", {"fold_ln": True, "fold_value_biases": True}),
    ("all4", ALL4),
    ("absent", ABSENT),
]
CASE_KW = dict(CASES)

# SAEs of one run: (site, cfg generation, architecture).  The flat SAEs carry
# the dict at top level, the v6 ones under metadata; with the key absent the
# residual one is a legacy cfg (as the gpt2-small-res-jb files are stored).
RUN_SAES = [
    ("blocks.1.hook_resid_pre", "flat", "standard"),
    ("blocks.1.attn.hook_z", "flat", "standard"),
    ("blocks.0.hook_attn_out", "v6", "standard"),
    ("blocks.1.hook_mlp_out", "v6", "jumprelu"),
    ("blocks.2.hook_resid_post", "v6", "standard"),
    ("blocks.2.attn.hook_z", "v6", "jumprelu"),
]


def flags_of_kwargs(kw):
    """SAELens's rule applied to a bare dict (or ABSENT)."""
    return tl.saelens_flags({} if kw is ABSENT else {"model_from_pretrained_kwargs": kw})


def want_basis_flags(flags):
    return {f: int(bool(flags[f])) for f in tl.BASIS_FLAGS}


# ================================================================ shared state

class BasisWorld:
    """The world of test_run.py plus TL models / hook values per flag set,
    SAE folders and reference results (memoised)."""

    def __init__(self, w, base):
        self.w = w
        self.base = base
        self.config, self.params = w["config"], w["params"]
        self.tokens = w["tokens"]
        self.meas = w["meas"]
        self._models, self._acts, self._saes, self._refs = {}, {}, {}, {}
        self.runs = {}

    @staticmethod
    def key(flags):
        return tuple(bool(flags.get(f, False)) for f in tl.FLAGS)

    def model(self, flags):
        k = self.key(flags)
        if k not in self._models:
            self._models[k] = tl.TLModel(self.config, self.params, **dict(zip(tl.FLAGS, k)))
        return self._models[k]

    def acts(self, flags):
        k = self.key(flags)
        if k not in self._acts:
            cache = {}
            lp = self.model(flags).run(self.tokens, cache=cache)
            cache["logprobs"] = lp
            self._acts[k] = cache
        return self._acts[k]

    def sae(self, name, site, gen, arch, kw, fit_flags=None):
        """An SAE folder whose cfg carries `kw` (ABSENT: no key), fitted to the
        site's hook values under fit_flags (default: the flags kw implies)."""
        if name in self._saes:
            return self._saes[name]
        flags = fit_flags or flags_of_kwargs(kw)
        xs_all = self.acts(flags)[site]
        xs = xs_all[self.meas]
        d_in = xs.shape[-1]
        fpk = None if kw is ABSENT else kw
        d = str(self.base / name)
        for seed in range(80):
            s = make_sae(d, d_in, 2 * d_in, site, architecture=arch, generation=gen, seed=seed,
                         x_sample=xs, from_pretrained_kwargs=fpk)
            if rr.sae_discontinuity_margin(s["cfg"], s["params"], xs_all.reshape(-1, d_in)) >= tr.MARGIN:
                break
        else:
            raise AssertionError("no SAE at %s with margin %g" % (site, tr.MARGIN))
        if fit_flags is None:
            assert tl.saelens_flags(s["cfg"]) == flags, (name, s["cfg"])
        s["fit_flags"] = flags
        self._saes[name] = s
        return s

    def reference(self, sae_dir, flags, interventions=rr.DETERMINISTIC):
        """Per-token KL / CE of every deterministic intervention of the SAE,
        patched into the TL model with `flags`, and ||x||, ||x_hat - x||."""
        k = (sae_dir, self.key(flags), tuple(interventions))
        if k in self._refs:
            return self._refs[k]
        cfg, sp = rr.load_sae(sae_dir)
        site = rr.site_of(cfg)
        M = self.model(flags)
        a = self.acts(flags)
        x = a[site]
        lp_clean = a["logprobs"]
        tok, meas = self.tokens, self.meas
        ce_mask = meas.copy()
        ce_mask[:, -1] = False
        x_hat = rr.sae_parts(cfg, sp, x)["x_hat"]
        d = x.shape[-1]
        mean_x = x[meas].mean(0)
        r = {"site": site, "kl": {}, "ce": {}, "mean_kl": {},
             "clean_ce": np.where(ce_mask, rr._next_ce(lp_clean, tok), np.nan),
             "l2_norm_in": np.where(meas, np.linalg.norm(x, axis=-1), np.nan),
             "eps_norm": np.where(meas, np.linalg.norm(x_hat - x, axis=-1), np.nan)}
        for iv in interventions:
            rep = rr.replacement(iv, x.reshape(-1, d), x_hat.reshape(-1, d), mean_x).reshape(x.shape)
            lp = M.run(tok, hooks={site: lambda xb, rep=rep: np.where(meas[..., None], rep, xb)})
            r["kl"][iv] = np.where(meas, rr.kl_div(lp_clean, lp), np.nan)
            r["ce"][iv] = np.where(ce_mask, rr._next_ce(lp, tok), np.nan)
            r["mean_kl"][iv] = float(np.nanmean(r["kl"][iv]))
        self._refs[k] = r
        return r


@pytest.fixture(scope="session")
def bw(world, tmp_path_factory):
    return BasisWorld(world, tmp_path_factory.mktemp("basis_world"))


def case_saes(bw, case):
    kw = CASE_KW[case]
    out = []
    for site, gen, arch in RUN_SAES:
        if kw is ABSENT and gen == "flat" and not site.endswith("hook_z"):
            gen = "legacy"
        name = "%s__%s__%s" % (case, gen, site)
        out.append(bw.sae(name, site, gen, arch, kw))
    return out


def kl_distance(a, b):
    """The rel err of cmp_arr with the KL floor: how far apart two per-token
    KL arrays are for the tests."""
    m = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[m] - b[m]).max() / max(np.abs(a[m]).max(), tr.KL_FLOOR))


# ================================================================ reference self-checks (no C)

def test_saelens_flags_rule():
    F = tl.FLAGS
    none = {f: False for f in F}
    assert tl.saelens_flags({"model_from_pretrained_kwargs": {}}) == none
    assert tl.saelens_flags({"metadata": {"model_from_pretrained_kwargs": {}}}) == none
    assert tl.saelens_flags({"model_from_pretrained_kwargs": {"center_writing_weights": False}}) == none
    assert tl.saelens_flags({"model_from_pretrained_kwargs": None}) == none   # `kwargs or {}`
    assert tl.saelens_flags({"metadata": {"model_from_pretrained_kwargs": {"center_writing_weights": True}}}) \
        == dict(none, center_writing_weights=True)
    assert tl.saelens_flags({"model_from_pretrained_kwargs": {
        "center_writing_weights": True, "n_devices": 1, "dtype": "float32"}}) \
        == dict(none, center_writing_weights=True)
    assert tl.saelens_flags({"model_from_pretrained_kwargs": {"fold_ln": True, "fold_value_biases": True}}) \
        == dict(none, fold_ln=True, fold_value_biases=True)
    assert tl.saelens_flags({"d_in": 3}) == {f: True for f in F}
    assert tl.saelens_flags({"metadata": {"hook_name": "x"}}) == {f: True for f in F}
    assert tl.basis_name(ALL4) == "processed"
    assert tl.basis_name(dict(ALL4, center_unembed=False)) == "processed"
    assert tl.basis_name(none) == "raw"
    assert tl.basis_name(dict(none, center_unembed=True)) == "raw"
    assert tl.basis_name(dict(none, center_writing_weights=True)) == "center_writing_weights"
    assert tl.basis_name(dict(none, fold_value_biases=True, fold_ln=True)) == "fold_ln+fold_value_biases"
    assert tl.basis_name(dict(none, fold_value_biases=True, center_writing_weights=True)) \
        == "center_writing_weights+fold_value_biases"


def test_tl_weight_layout(world):
    """convert_gpt2_weights gives TL's shapes, and with no flag the TL model
    holds exactly the HF numbers."""
    c, P = world["config"], world["params"]
    L, H, D = c["n_layer"], c["n_head"], c["n_embd"]
    dh = D // H
    sd = tl.convert_gpt2_weights(c, P)
    shapes = {"embed.W_E": (c["vocab_size"], D), "pos_embed.W_pos": (c["n_positions"], D),
              "unembed.W_U": (D, c["vocab_size"]), "unembed.b_U": (c["vocab_size"],),
              "ln_final.w": (D,), "ln_final.b": (D,)}
    for l in range(L):
        b = "blocks.%d." % l
        shapes.update({b + "ln1.w": (D,), b + "ln1.b": (D,), b + "ln2.w": (D,), b + "ln2.b": (D,),
                       b + "attn.W_Q": (H, D, dh), b + "attn.W_K": (H, D, dh), b + "attn.W_V": (H, D, dh),
                       b + "attn.b_Q": (H, dh), b + "attn.b_K": (H, dh), b + "attn.b_V": (H, dh),
                       b + "attn.W_O": (H, dh, D), b + "attn.b_O": (D,),
                       b + "mlp.W_in": (D, 4 * D), b + "mlp.b_in": (4 * D,),
                       b + "mlp.W_out": (4 * D, D), b + "mlp.b_out": (D,)})
    assert {k: v.shape for k, v in sd.items()} == shapes
    # head h of W_V is columns 2D + h*dh .. of c_attn; W_O head h is rows h*dh ..
    Wa = P["h.1.attn.c_attn.weight"]
    assert np.array_equal(sd["blocks.1.attn.W_V"][2], Wa[:, 2 * D + 2 * dh:2 * D + 3 * dh])
    assert np.array_equal(sd["blocks.1.attn.b_V"][3], P["h.1.attn.c_attn.bias"][2 * D + 3 * dh:2 * D + 4 * dh])
    assert np.array_equal(sd["blocks.1.attn.W_O"][1], P["h.1.attn.c_proj.weight"][dh:2 * dh])
    # the fixture model makes every basis detail visible
    for l in range(L):
        assert np.abs(P["h.%d.ln_1.bias" % l]).max() > 0.05
        assert np.abs(sd["blocks.%d.attn.b_V" % l]).mean() > 0.1


def test_tl_no_processing_equals_hf_forward(bw):
    """All flags off: log-probs and every hook equal gpt2_reference's raw forward."""
    raw = bw.w["fwd"]["raw"]
    a = bw.acts({})
    assert tr.rel_err(a["logprobs"], raw["logprobs"]) < 1e-12
    for s in tl.hook_names(bw.config["n_layer"]):
        assert tr.rel_err(a[s], raw[s]) < 1e-12, s


def test_tl_flags_one_at_a_time(bw):
    """Every one of the 16 flag combinations: identical log-probs; residual
    hooks centred iff center_writing_weights; hook_z = raw minus b_V
    (fold_value_biases alone) or minus b_V + ln_1.bias @ W_V (with fold_ln),
    raw otherwise; mlp.hook_post never changes."""
    c, P = bw.config, bw.params
    L, D = c["n_layer"], c["n_embd"]
    raw = bw.acts({})
    names = tl.hook_names(L)
    for combo in itertools.product((False, True), repeat=4):
        flags = dict(zip(tl.FLAGS, combo))
        a = bw.acts(flags)
        assert tr.rel_err(a["logprobs"], raw["logprobs"]) < 1e-10, flags
        for s in names:
            x, xr = a[s], raw[s]
            if s.endswith("mlp.hook_post"):
                want = xr
            elif s.endswith("attn.hook_z"):
                h = "h.%s." % s.split(".")[1]
                Wa, ba = P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"]
                bv = ba[2 * D:]
                if flags["fold_value_biases"] and flags["fold_ln"]:
                    want = xr - (bv + P[h + "ln_1.bias"] @ Wa[:, 2 * D:])
                elif flags["fold_value_biases"]:
                    want = xr - bv
                else:
                    want = xr
            else:
                mu = np.abs(x.mean(-1)).max() / np.abs(x).max()
                if flags["center_writing_weights"]:
                    assert mu < 1e-13, (flags, s, mu)
                    want = xr - xr.mean(-1, keepdims=True)
                else:
                    assert mu > 1e-3, (flags, s, mu)
                    want = xr
            assert tr.rel_err(x, want) < 1e-11, (flags, s)
    # all four flags = gpt2_reference's "processed" rule
    pro = bw.acts(ALL4)
    for s in names:
        assert tr.rel_err(pro[s], bw.w["fwd"]["processed"][s]) < 1e-11, s


def test_tl_fold_ln_internals(world):
    """fold_ln turns every LN into LayerNormPre with the weights folded:
    W_Q/K/V and W_in and W_U centred over d_model; fold_value_biases leaves
    b_V zero; center_unembed centres W_U over the vocabulary."""
    c, P = world["config"], world["params"]
    m = tl.TLModel(c, P, **ALL4)
    assert m.normalization_type == "LNPre"
    sd = m.sd
    for l in range(c["n_layer"]):
        b = "blocks.%d." % l
        for w in ("attn.W_Q", "attn.W_K", "attn.W_V"):
            assert np.abs(sd[b + w].mean(1)).max() < 1e-14
        assert np.abs(sd[b + "mlp.W_in"].mean(0)).max() < 1e-14
        assert not sd[b + "attn.b_V"].any()
        assert abs(sd[b + "attn.b_O"].mean()) < 1e-15
    assert np.abs(sd["unembed.W_U"].mean(0)).max() < 1e-14
    assert np.abs(sd["unembed.W_U"].mean(1)).max() < 1e-14
    assert tl.TLModel(c, P).normalization_type == "LN"


def test_tl_patch_and_capture(bw):
    """A patch at a hook replaces its value downstream; the identity patch
    changes nothing; hook_z patches are head-major."""
    flags = dict(fold_ln=True, fold_value_biases=True)
    M = bw.model(flags)
    tok = bw.tokens
    base = bw.acts(flags)["logprobs"]
    for s in ("blocks.1.attn.hook_z", "blocks.0.hook_resid_pre", "blocks.2.hook_mlp_out"):
        cache = {}
        lp = M.run(tok, hooks={s: lambda x: x}, cache=cache)
        assert np.array_equal(lp, base), s
        assert np.array_equal(cache[s], bw.acts(flags)[s])
    # zeroing head 2 of layer 1 through the flat hook_z == zeroing W_O's head 2 rows
    H, D = bw.config["n_head"], bw.config["n_embd"]
    dh = D // H

    def zero_head(x):
        x = x.copy()
        x[..., 2 * dh:3 * dh] = 0
        return x
    lp1 = M.run(tok, hooks={"blocks.1.attn.hook_z": zero_head})
    M2 = tl.TLModel(bw.config, bw.params, **flags)
    M2.sd["blocks.1.attn.W_O"] = M2.sd["blocks.1.attn.W_O"].copy()
    M2.sd["blocks.1.attn.W_O"][2] = 0
    assert tr.rel_err(M2.run(tok), lp1) < 1e-12
    assert tr.rel_err(lp1, base) > 1e-3


def test_reference_distinguishes_bases(bw):
    """The fixtures can fail a wrong basis: an SAE fitted in one basis gives a
    KL > 5 % (relative, the tests' own measure) different when evaluated in
    the basis a wrong rule would pick."""
    s = case_saes(bw, "empty")[0]                        # blocks.1.hook_resid_pre, {}
    assert s["cfg"]["hook_name"] == "blocks.1.hook_resid_pre"
    good = bw.reference(s["dir"], flags_of_kwargs({}))
    bad = bw.reference(s["dir"], flags_of_kwargs({"center_writing_weights": True}))
    d_res = {iv: kl_distance(good["kl"][iv], bad["kl"][iv]) for iv in ("sae", "sae_norm")}
    assert min(d_res.values()) > 0.05, d_res
    s = case_saes(bw, "fvb")[1]                          # blocks.1.attn.hook_z, fold_value_biases
    assert s["cfg"]["hook_name"] == "blocks.1.attn.hook_z"
    good = bw.reference(s["dir"], flags_of_kwargs({"fold_value_biases": True}))
    bad = bw.reference(s["dir"], flags_of_kwargs({"fold_ln": True, "fold_value_biases": True}))
    d_z = {iv: kl_distance(good["kl"][iv], bad["kl"][iv]) for iv in ("sae", "zero_ablation")}
    assert min(d_z.values()) > 0.05, d_z
    # and raw hook_z ({} / center_writing_weights only) vs hook_z minus b_V
    s = case_saes(bw, "cww_true")[1]
    good = bw.reference(s["dir"], flags_of_kwargs({"center_writing_weights": True}))
    bad = bw.reference(s["dir"], ALL4)
    assert kl_distance(good["kl"]["sae"], bad["kl"]["sae"]) > 0.05
    # the dump test's bases: each of its sites differs from the same site in
    # every other basis (where the flags change it at all) by far more than TOL
    combos = [dict(zip(tl.BASIS_FLAGS, c)) for c in itertools.product((False, True), repeat=3)]
    for s in ("blocks.1.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.0.hook_attn_out", "hook_embed"):
        for a, b in itertools.combinations(combos, 2):
            e = tr.rel_err(bw.acts(a)[s], bw.acts(b)[s])
            assert e < 1e-12 or e > 0.05, (s, a, b, e)


# ================================================================ saegap run vs the reference

def run_case(bw, run_saegap, case):
    """One `saegap run` per dict: every SAE of RUN_SAES (memoised)."""
    if case not in bw.runs:
        saes = case_saes(bw, case)
        out = bw.base / ("run_%s.h5" % case)
        p = run_saegap(tr.run_args(bw.w, [s["dir"] for s in saes], out, DET, ["--quiet"]))
        bw.runs[case] = (saes, tr.read_result(str(out)), p.stderr.decode(errors="replace"))
    return bw.runs[case]


def compare_site(errs, bw, res, sae, flags, interventions=rr.DETERMINISTIC):
    ref = bw.reference(sae["dir"], flags, interventions)
    site = ref["site"]
    if site not in res["sites"]:
        errs.append("/sites/%s missing (has %s)" % (site, sorted(res["sites"])))
        return
    c = res["sites"][site]
    p = "/sites/%s/" % site
    for iv in interventions:
        tr.cmp_arr(errs, p + "kl/" + iv, c["kl"].get(iv), ref["kl"][iv], floor=tr.KL_FLOOR)
        tr.cmp_arr(errs, p + "ce/" + iv, c["ce"].get(iv), ref["ce"][iv])
        tr.cmp_scalar(errs, p + "@mean_kl_" + iv, c["attrs"].get("mean_kl_" + iv),
                      ref["mean_kl"][iv], floor=tr.KL_FLOOR)
    for m in ("l2_norm_in", "eps_norm"):
        tr.cmp_arr(errs, p + "recon/" + m, c["recon"].get(m), ref[m])


def check_basis_attrs(errs, res, site, flags, source_has, source_lacks=None):
    a = res["sites"].get(site, {"attrs": {}})["attrs"]
    p = "/sites/%s/@" % site
    want = tl.basis_name(flags)
    if tr.astr(a.get("basis")) != want:
        errs.append(p + "basis = %r, want %r" % (a.get("basis"), want))
    for f, v in want_basis_flags(flags).items():
        got = a.get("basis_" + f)
        if got is None or not np.issubdtype(np.asarray(got).dtype, np.integer) or int(tr.anum(got)) != v:
            errs.append(p + "basis_%s = %r, want integer %d" % (f, got, v))
    src = tr.astr(a.get("basis_source"))
    if src is None or source_has not in src:
        errs.append(p + "basis_source = %r, want it to contain %r" % (src, source_has))
    elif source_lacks and source_lacks in src:
        errs.append(p + "basis_source = %r, must not contain %r" % (src, source_lacks))


def report(errs, what):
    assert not errs, "%s: %d problem(s):\n  %s" % (what, len(errs), "\n  ".join(errs))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_run_matches_tl_reference(bw, run_saegap, case):
    """Per-token KL and CE of every deterministic intervention, each SAE in the
    basis SAELens implies, against the TL reference (<= 1e-4 relative)."""
    saes, res, _ = run_case(bw, run_saegap, case)
    errs = []
    tr.check_complete(res, errs)
    tr.cmp_arr(errs, "/clean/ce", res["clean_ce"], bw.reference(saes[0]["dir"], saes[0]["fit_flags"])["clean_ce"])
    for s in saes:
        compare_site(errs, bw, res, s, s["fit_flags"])
    report(errs, "case %s, flags %s" % (case, saes[0]["fit_flags"]))


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_run_records_basis(bw, run_saegap, case):
    """basis, basis_<flag> (0/1) and basis_source per site; the absent key
    warns once per SAE, naming its folder."""
    saes, res, err = run_case(bw, run_saegap, case)
    errs = []
    for s in saes:
        site = rr.site_of(s["cfg"])
        if CASE_KW[case] is ABSENT:
            check_basis_attrs(errs, res, site, s["fit_flags"], "default")
        elif "metadata" in s["cfg"]:
            check_basis_attrs(errs, res, site, s["fit_flags"], "metadata.model_from_pretrained_kwargs")
        else:
            check_basis_attrs(errs, res, site, s["fit_flags"], "model_from_pretrained_kwargs",
                              source_lacks="metadata")
    warn = [ln for ln in err.splitlines() if "warn" in ln.lower()]
    for s in saes:
        named = [ln for ln in warn if s["dir"] in ln or os.path.basename(s["dir"]) in ln]
        if CASE_KW[case] is ABSENT:
            if not named:
                errs.append("no warning line naming %s (no model_from_pretrained_kwargs)" % s["dir"])
        else:
            # the absent-key warning (assumed defaults) must not name an SAE
            # whose cfg records its dict; a note on no-op keys may
            wrong = [ln for ln in named if re.search(r"default|no model_from_pretrained_kwargs|assum",
                                                     ln, re.I)]
            if wrong:
                errs.append("an absent-key warning for %s, whose cfg has the dict: %s" % (s["dir"], wrong))
    report(errs, "case %s\nstderr:\n%s" % (case, err[-3000:]))


def test_run_extra_kwargs_ignored_once(bw, run_saegap):
    """Keys that are not processing flags (n_devices, dtype) are accepted,
    change nothing, and stderr says once that n_devices is ignored."""
    kw_z = {"center_writing_weights": True, "n_devices": 1, "dtype": "float32"}
    kw_r = {"dtype": "float32", "center_writing_weights": True}
    s_z = bw.sae("extra__flat__z0", "blocks.0.attn.hook_z", "flat", "standard", kw_z)
    s_r = bw.sae("extra__v6__mid0", "blocks.0.hook_resid_mid", "v6", "standard", kw_r)
    flags = flags_of_kwargs({"center_writing_weights": True})
    assert s_z["fit_flags"] == flags and s_r["fit_flags"] == flags
    out = bw.base / "run_extra.h5"
    p = run_saegap(tr.run_args(bw.w, [s_z["dir"], s_r["dir"]], out, DET, ["--quiet"]))
    res = tr.read_result(str(out))
    err = p.stderr.decode(errors="replace")
    errs = []
    tr.check_complete(res, errs)
    for s in (s_z, s_r):
        compare_site(errs, bw, res, s, flags)
    check_basis_attrs(errs, res, "blocks.0.attn.hook_z", flags, "model_from_pretrained_kwargs")
    check_basis_attrs(errs, res, "blocks.0.hook_resid_mid", flags, "metadata.model_from_pretrained_kwargs")
    nd = [ln for ln in err.splitlines() if "n_devices" in ln]
    if len(nd) != 1 or "ignor" not in nd[0].lower():
        errs.append("want exactly one stderr line naming n_devices, saying it is ignored; got %r" % nd)
    report(errs, "extra kwargs\nstderr:\n%s" % err[-3000:])


OVERRIDES = [
    # (--basis value, its flags)
    ("raw", {}),
    ("processed", ALL4),
    ("center_writing_weights+fold_value_biases", {"center_writing_weights": True, "fold_value_biases": True}),
]


@pytest.mark.parametrize("basis,flags", OVERRIDES, ids=[o[0] for o in OVERRIDES])
def test_run_basis_override(bw, run_saegap, basis, flags):
    """--basis overrides all three flags of every SAE, whatever its cfg says
    (here: the opposite of the override where it can be)."""
    full = {f: bool(flags.get(f, False)) for f in tl.FLAGS}
    cfg_kw = {"center_writing_weights": False} if basis != "raw" else ALL4
    tag = basis.replace("+", "_")
    s_r = bw.sae("ovr_%s__v6__pre2" % tag, "blocks.2.hook_resid_pre", "v6", "standard", cfg_kw,
                 fit_flags=full)
    s_z = bw.sae("ovr_%s__flat__z1" % tag, "blocks.1.attn.hook_z", "flat", "standard", cfg_kw,
                 fit_flags=full)
    out = bw.base / ("run_ovr_%s.h5" % tag)
    p = run_saegap(tr.run_args(bw.w, [s_r["dir"], s_z["dir"]], out, DET, ["--basis", basis, "--quiet"]))
    res = tr.read_result(str(out))
    errs = []
    tr.check_complete(res, errs)
    for s in (s_r, s_z):
        compare_site(errs, bw, res, s, full)
    for site in ("blocks.2.hook_resid_pre", "blocks.1.attn.hook_z"):
        a = res["sites"].get(site, {"attrs": {}})["attrs"]
        if tr.astr(a.get("basis")) != tl.basis_name(full):
            errs.append("/sites/%s/@basis = %r, want %r" % (site, a.get("basis"), tl.basis_name(full)))
        for f, v in want_basis_flags(full).items():
            got = a.get("basis_" + f)
            if got is None or int(tr.anum(got)) != v:
                errs.append("/sites/%s/@basis_%s = %r, want %d" % (site, f, got, v))
    report(errs, "--basis %s\nstderr:\n%s" % (basis, p.stderr.decode(errors="replace")[-2000:]))


# ================================================================ info and dump

INFO_CASES = [
    ("cww_true", "flat", {"center_writing_weights": True}),
    ("foldln_fvb", "v6", {"fold_ln": True, "fold_value_biases": True}),
    ("empty", "flat", {}),
    ("absent", "legacy", ABSENT),
]


@pytest.mark.parametrize("case,gen,kw", INFO_CASES, ids=[c[0] for c in INFO_CASES])
def test_info_prints_basis(bw, run_saegap, case, gen, kw):
    s = bw.sae("info_%s__%s" % (case, gen), "blocks.1.hook_resid_pre", gen, "standard", kw)
    text = run_saegap(["info", s["dir"]]).stdout.decode(errors="replace")
    name = tl.basis_name(s["fit_flags"])
    lines = [ln for ln in text.splitlines()
             if "basis" in ln.lower() and re.search(r"(?<![\w+])%s(?![\w+])" % re.escape(name), ln)]
    assert lines, "no line with 'basis' and %r in `saegap info`:\n%s" % (name, text)
    if kw is not ABSENT:
        want = json.dumps(kw, separators=(",", ":"))
        flat = re.sub(r"\s+", "", text)
        assert want in flat, "the cfg's dict %s not in `saegap info` output:\n%s" % (want, text)
    else:
        assert "default" in text.lower(), text


DUMP_BASES = [
    ("fold_value_biases", {"fold_value_biases": True}),
    ("center_writing_weights+fold_ln", {"center_writing_weights": True, "fold_ln": True}),
    ("fold_ln+fold_value_biases", {"fold_ln": True, "fold_value_biases": True}),
]


@pytest.mark.parametrize("basis,flags", DUMP_BASES, ids=[d[0] for d in DUMP_BASES])
def test_dump_any_basis(bw, run_saegap, tmp_path, basis, flags):
    sites = ["blocks.1.attn.hook_z", "blocks.1.hook_resid_pre", "blocks.0.hook_attn_out",
             "hook_embed", "blocks.2.mlp.hook_post"]
    out = str(tmp_path / "dump.h5")
    run_saegap(["dump", "--model", bw.w["model_dir"], "--tokens", bw.w["tokens_h5"],
                "--sites", ",".join(sites), "--logits", "--basis", basis, "--out", out])
    ref = bw.acts(flags)
    errs = []
    with h5py.File(out, "r") as f:
        for s in sites:
            if s not in f:
                errs.append("%s missing" % s)
                continue
            e = tr.rel_err(f[s][()], ref[s])
            if not e <= tr.TOL:
                errs.append("%s: rel err %.3g" % (s, e))
        e = tr.rel_err(g2.log_softmax(f["logits"][()].astype(np.float64)), ref["logprobs"])
        if not e <= tr.TOL:
            errs.append("log_softmax(logits): rel err %.3g" % e)
        b = tr.astr(f.attrs.get("basis"))
        if b != basis:
            errs.append("root @basis = %r, want %r" % (b, basis))
    report(errs, "dump --basis %s" % basis)


# ================================================================ random interventions, mixed bases

RANDOM_CASES = ("cww_true", "fvb", "foldln_fvb", "empty")


@pytest.mark.parametrize("case", RANDOM_CASES)
def test_run_random_matches_tl_reference(bw, run_saegap, case):
    """Per-token KL and CE of every random intervention (eps_random,
    theta_random, theta_random_true_norm, latent_noise, sae_eps_random,
    cov_random) in the bases SAELens's dicts imply, against the Philox
    reference (random_reference.py) run on the TL reference model built with
    those flags (<= 1e-4 relative)."""
    import random_reference as rnd
    saes = [s for s in case_saes(bw, case) if s["cfg"].get("hook_name", s["cfg"].get("metadata", {}).get("hook_name")) in ("blocks.1.hook_resid_pre", "blocks.2.attn.hook_z")]
    assert len(saes) == 2, [s["dir"] for s in saes]
    out = bw.base / ("random_%s.h5" % case)
    run_saegap(tr.run_args(bw.w, [s["dir"] for s in saes], out, ",".join(rr.RANDOM), ["--seed", 11, "--quiet"]))
    res = tr.read_result(str(out))
    tokens = bw.w["tokens"]
    flags = saes[0]["fit_flags"]
    model = bw.model(flags)

    def forward(sdir, site, patch, capture):
        cache = {}
        lp = model.run(tokens, hooks={site: patch} if patch is not None else None, cache=cache)
        if capture is not None:
            capture[site] = cache[site]
        return lp

    ref = rnd.reference_random_run(None, [s["dir"] for s in saes], tokens, seed=11, model=bw.w["model"],
                                   forward=forward)
    errs = []
    for site, r in ref["sites"].items():
        c = res["sites"][site]
        for iv in rr.RANDOM:
            tr.cmp_arr(errs, "/sites/%s/kl/%s" % (site, iv), c["kl"].get(iv), r["kl"][iv], floor=tr.KL_FLOOR)
            tr.cmp_arr(errs, "/sites/%s/ce/%s" % (site, iv), c["ce"].get(iv), r["ce"][iv])
    report(errs, "random interventions, case %s, flags %s" % (case, flags))
