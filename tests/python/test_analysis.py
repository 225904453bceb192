"""Tests of analysis/ (reader, statistics, report) on synthetic result files.

    /usr/bin/python3 -m pytest -q tests/python/test_analysis.py

Each file is written with h5py in the layout of docs/output-schema.md, with KLs chosen so
that every number the report prints is known in advance (exact ratios from constant KLs, a
standard error from a two-valued sample, correlations from closed forms, token tables from
tokens with chosen counts).  Values are dyadic where possible so float32 storage is exact.
No saegap binary is needed.
"""

import json
import math
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from analysis import sections, stats  # noqa: E402
from analysis.reader import Result, mean_over_samples, short_site  # noqa: E402
from analysis.report import make_report  # noqa: E402
from analysis.vocab import DEFAULT_ENCODER, Vocab, find_encoder, show_token  # noqa: E402

BOS = 50256


# ================================================================ synthetic result files

def tokens_with_bos(n, T, seed=0):
    """[n, T] ids with BOS at position 0 and ordinary ids (< 1000) elsewhere."""
    t = np.random.default_rng(seed).integers(0, 1000, size=(n, T)).astype(np.int32)
    t[:, 0] = BOS
    return t


def per_token(values, tokens):
    """[n, T] float array: `values` (broadcast or flat over measured tokens, row-major)
    at the measured tokens, NaN at BOS, as saegap writes it."""
    meas = tokens != BOS
    out = np.full(tokens.shape, np.nan)
    v = np.asarray(values, dtype=np.float64)
    out[meas] = v if v.ndim == 0 else v.ravel()
    return out


def write_result(path, tokens, sites, clean_ce=None, root=None, correlation=None,
                 examples=None):
    """sites: {site: {"kl": {iv: arr}, "ce": {iv: arr}, "recon": {m: arr}, "attrs": {},
    "zscore": arr}}; correlation: {iv: (pearson, spearman, sites, tokens)};
    examples: dict(contexts, position, token_ids, logprobs, per={(site, iv): (lp, kl)})."""
    n, T = tokens.shape
    ivs = []
    for d in sites.values():
        ivs += [iv for iv in d.get("kl", {}) if iv not in ivs]
    attrs = {"saegap_version": "0.1.0", "command_line": "saegap run --synthetic",
             "created": "2026-01-01T00:00:00Z", "model": "/models/gpt2",
             "model_checksum": "fnv1a64:0123456789abcdef", "tokens_file": "/data/tokens.npy",
             "n_contexts": n, "ctx": T, "seed": 0, "bos": "exclude", "bos_token_id": BOS,
             "scope": "all", "position": -1, "window": -1, "samples": 1,
             "interventions": ",".join(ivs), "ranks": 1, "complete": 1}
    attrs.update(root or {})
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.create_dataset("tokens", data=tokens.astype(np.int32))
        if clean_ce is not None:
            f.create_dataset("clean/ce", data=np.asarray(clean_ce, dtype=np.float32))
        for site, d in sites.items():
            g = f.create_group("sites/" + site)
            base = {"sae_path": "/saes/" + site, "architecture": "standard", "basis": "processed",
                    "cfg_generation": "v6", "d_in": 768, "d_sae": 24576}
            base.update(d.get("attrs", {}))
            for k, v in base.items():
                g.attrs[k] = v
            for kind in ("kl", "ce", "recon"):
                for name, arr in d.get(kind, {}).items():
                    g.create_dataset("%s/%s" % (kind, name), data=np.asarray(arr, np.float32))
            if "zscore" in d:
                g.create_dataset("sae_kl_zscore", data=np.asarray(d["zscore"], np.float32))
        for iv, (p, s, names, ntok) in (correlation or {}).items():
            g = f.create_group("correlation/%s_minus_eps_random" % iv)
            g.create_dataset("pearson", data=np.asarray(p, np.float64))
            g.create_dataset("spearman", data=np.asarray(s, np.float64))
            g.create_dataset("sites", data=np.array([x.encode() for x in names], dtype="S128"))
            g.attrs["tokens"] = ntok
        if examples is not None:
            e = f.create_group("examples")
            e.create_dataset("contexts", data=np.asarray(examples["contexts"], np.int32))
            e.create_dataset("position", data=np.asarray(examples["position"], np.int32))
            e.create_dataset("clean/token_ids", data=np.asarray(examples["token_ids"], np.int32))
            e.create_dataset("clean/logprobs", data=np.asarray(examples["logprobs"], np.float32))
            for (site, iv), (lp, kl) in examples["per"].items():
                e.create_dataset("%s/%s/logprobs" % (site, iv), data=np.asarray(lp, np.float32))
                e.create_dataset("%s/%s/kl" % (site, iv), data=np.asarray(kl, np.float32))
    return str(path)


def open_result(tmp_path, name="r.h5", **kw):
    return Result(write_result(tmp_path / name, **kw))


# ================================================================ reader

def test_reader_gives_tidy_arrays_and_reasons(tmp_path):
    tok = tokens_with_bos(3, 5)
    S = 4
    eps = np.full((3, 5, S), np.nan)
    eps[:, 1:, :] = np.arange(S) * 0.25
    sites = {"blocks.10.hook_resid_pre": {"kl": {"sae": per_token(0.5, tok), "eps_random": eps}},
             "blocks.2.hook_resid_pre": {"kl": {"sae": per_token(0.5, tok), "eps_random": eps}}}
    with open_result(tmp_path, tokens=tok, sites=sites, root={"samples": S}) as r:
        assert r.sites == ["blocks.2.hook_resid_pre", "blocks.10.hook_resid_pre"]
        assert r.interventions == ["sae", "eps_random"]
        assert r.provenance["model"] == "/models/gpt2" and isinstance(r.provenance["model"], str)
        assert r.provenance["n_contexts"] == 3 and isinstance(r.provenance["n_contexts"], int)
        assert r.kl("blocks.2.hook_resid_pre", "eps_random").shape == (3, 5, S)
        m = r.kl("blocks.2.hook_resid_pre", "eps_random", samples="mean")
        assert m.shape == (3, 5) and m.dtype == np.float64
        assert np.isnan(m[:, 0]).all() and np.allclose(m[:, 1:], 0.375)
        assert np.array_equal(r.measured, tok != BOS)
        assert r.kl("blocks.2.hook_resid_pre", "cov_random") is None
        assert "cov_random was not run" in r.missing("sites/blocks.2.hook_resid_pre/kl/cov_random")
        assert r.correlation() == (None, None)
        assert r.examples is None and "--examples" in r.missing("examples")
        assert r.recon("blocks.2.hook_resid_pre", "cossim") is None
        assert r.site_attrs("blocks.2.hook_resid_pre")["architecture"] == "standard"
        assert short_site("blocks.2.hook_resid_pre") == "L2 resid_pre"


# ================================================================ statistics

def test_rankdata_and_correlations_closed_form():
    assert np.array_equal(stats.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    x = np.array([-2.0, -1, 1, 2] * 5)
    assert stats.pearson(x, x ** 3)[0] == pytest.approx(34 / np.sqrt(1300), abs=1e-12)
    assert stats.spearman(x, x ** 3)[0] == pytest.approx(1.0, abs=1e-12)
    assert stats.pearson(x, -x)[0] == pytest.approx(-1.0, abs=1e-12)


def test_ratio_ci_is_a_per_context_bootstrap():
    # context 0: ratio 2, context 1: ratio 6 -> overall 8/2 = 4; resampling contexts gives
    # only {0,0}: 2, {0,1}: 4, {1,1}: 6 (probabilities 1/4, 1/2, 1/4), so the 95% percentile
    # interval is exactly [2, 6].  A per-token bootstrap would give other values.
    num = np.array([[1.0, 1.0], [3.0, 3.0]])
    den = np.full((2, 2), 0.5)
    r, lo, hi, n = stats.ratio_ci(num, den)
    assert (r, lo, hi, n) == (4.0, 2.0, 6.0, 4)
    # NaN in one of the pair drops the token from both
    num[0, 0] = np.nan
    assert stats.ratio_ci(num, den)[0] == pytest.approx(7.0 / 1.5)


def test_mean_se_known_value():
    v = np.array([1.0, 3.0] * 10 + [np.nan])
    m, se, n = stats.mean_se(v)
    assert (m, n) == (2.0, 20)
    assert se == pytest.approx(np.sqrt(1.0 / 19.0), rel=1e-12)


# ================================================================ report sections, exact values

def headline_file(tmp_path):
    """Two sites, 4 contexts x 6 tokens (20 measured): site A constant KLs (ratio 3), site B
    sae alternating 1 and 3 (mean 2, se sqrt(1/19)) against eps_random 0.5 (ratio 4);
    CE: clean 2, sae +0.5, eps_random +0.125 (ratio 4); last position has no CE."""
    tok = tokens_with_bos(4, 6)
    clean = per_token(2.0, tok)
    clean[:, -1] = np.nan
    alt = np.array([1.0, 3.0] * 10)
    ce = lambda v: np.where(np.isfinite(clean), per_token(v, tok), np.nan)  # noqa: E731
    attrs = {"kl_div_score": 0.75, "ce_loss_score": 0.875, "explained_variance": 0.625,
             "mean_l0": 40.5}
    sites = {
        "blocks.0.hook_resid_pre": {"kl": {"sae": per_token(0.75, tok), "eps_random": per_token(0.25, tok)},
                                    "ce": {"sae": ce(2.5), "eps_random": ce(2.125)}, "attrs": attrs},
        "blocks.1.hook_resid_pre": {"kl": {"sae": per_token(alt, tok), "eps_random": per_token(0.5, tok)},
                                    "ce": {"sae": ce(2.5), "eps_random": ce(2.125)}},
    }
    return write_result(tmp_path / "headline.h5", tokens=tok, sites=sites, clean_ce=clean)


def test_headline_numbers(tmp_path):
    with Result(headline_file(tmp_path)) as r:
        a, b = sections.headline(r)
    assert a["kl"]["sae"] == (0.75, 0.0, 20)
    assert a["kl"]["eps_random"] == (0.25, 0.0, 20)
    assert a["ratio"] == (3.0, 3.0, 3.0, 20)
    assert a["ce_ratio"][:3] == pytest.approx((4.0, 4.0, 4.0), abs=1e-12)
    assert a["ce_ratio"][3] == 16  # 4 contexts x 4 positions with a next token
    assert (a["kl_div_score"], a["ce_loss_score"], a["explained_variance"], a["mean_l0"]) == \
        (0.75, 0.875, 0.625, 40.5)
    m, se, n = b["kl"]["sae"]
    assert (m, n) == (2.0, 20) and se == pytest.approx(np.sqrt(1 / 19), rel=1e-12)
    assert b["ratio"][0] == 4.0
    assert b["kl_div_score"] is None


def test_headline_rendered(tmp_path):
    doc = make_report(headline_file(tmp_path), str(tmp_path / "out"), vocab_path=None, strict=True)
    md = open(tmp_path / "out" / "report.md").read()
    assert "| blocks.0.hook_resid_pre | 20 | 0.75 ± 0 | 0.25 ± 0 | 3 [3, 3] | 4 [4, 4] | 0.75 | 0.875 | 0.625 | 40.5 |" in md
    assert "2 ± 0.23 | 0.5 ± 0 | 4 [" in md  # sqrt(1/19) = 0.229
    csv = open(tmp_path / "out" / "headline.csv").read().splitlines()
    assert csv[1].startswith("blocks.0.hook_resid_pre,0.75,0.875,0.625,40.5,3.0,3.0,3.0,4.0")
    assert doc.skips  # no recon, examples, ... in this file


def test_focus_site_prefers_the_residual_stream(tmp_path):
    tok = tokens_with_bos(2, 5)
    kl = {"sae": per_token(0.5, tok), "eps_random": per_token(0.25, tok)}
    names = ["blocks.%d.%s" % (layer, hook) for layer in range(4) for hook in ("attn.hook_z", "hook_resid_pre")]
    with open_result(tmp_path, tokens=tok, sites={n: {"kl": dict(kl)} for n in names}) as r:
        assert sections.focus_site(r) == "blocks.2.hook_resid_pre"
        assert sections.focus_site(r, "blocks.1.attn.hook_z") == "blocks.1.attn.hook_z"
    with open_result(tmp_path, name="z.h5", tokens=tok, sites={n: {"kl": dict(kl)} for n in names[::2]}) as r:
        assert sections.focus_site(r) == "blocks.2.attn.hook_z"


def test_headline_printed_by_the_command(tmp_path, capsys):
    from analysis.report import main
    assert main([headline_file(tmp_path), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert ["blocks.0.hook_resid_pre", "0.75", "0.25", "3.00", "[3.00,", "3.00]", "0.625", "40.5"] in lines
    b = [line for line in lines if line and line[0] == "blocks.1.hook_resid_pre"]
    assert b and b[0][1:4] == ["2", "0.5", "4.00"] and b[0][-2:] == ["-", "-"], out


def test_ce_differences_and_headline_ratio_only_when_defined(tmp_path):
    tok = tokens_with_bos(2, 5)
    clean = per_token(1.0, tok)
    sites = {"blocks.0.hook_resid_pre": {
        "kl": {"sae": per_token(0.5, tok), "eps_random": per_token(0.25, tok)},
        "ce": {"sae": per_token(1.5, tok), "eps_random": per_token(0.75, tok)}}}
    with open_result(tmp_path, tokens=tok, sites=sites, clean_ce=clean) as r:
        d = sections.ce_differences(r)
        row = sections.headline(r)[0]
    h = d["hist"]["blocks.0.hook_resid_pre"]
    assert h["sae"]["mean"] == 0.5 and h["eps_random"]["mean"] == -0.25
    assert d["means"]["blocks.0.hook_resid_pre"]["sae"] == (0.5, 0.0, 8)
    assert row["ce_ratio"] is None  # eps_random lowers CE: a ratio of increases is undefined


def test_kl_histogram_clamps_at_the_999th_percentile(tmp_path):
    tok = tokens_with_bos(10, 101)  # 1000 measured tokens
    vals = np.random.default_rng(1).permutation(1000).astype(np.float64)
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": per_token(vals, tok),
                                                "eps_random": per_token(vals / 2, tok)}}}
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        h = sections.kl_histograms(r)["blocks.0.hook_resid_pre"]
    assert h["sae"]["percentile"] == pytest.approx(998.001, abs=1e-9)
    assert h["eps_random"]["percentile"] == pytest.approx(499.0005, abs=1e-9)
    assert h["sae"]["clamp"] == h["eps_random"]["clamp"] == pytest.approx(998.001, abs=1e-9)
    assert h["sae"]["counts"].sum() == 1000 and h["sae"]["n_clamped"] == 1
    assert h["eps_random"]["n_clamped"] == 0
    assert h["sae"]["mean"] == 499.5


def test_kl_by_position_and_window(tmp_path):
    tok = tokens_with_bos(3, 6)
    pos = np.tile(np.arange(6.0), (3, 1))
    pos[:, 0] = np.nan
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": pos, "eps_random": pos / 4}}}
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        d = sections.kl_by_position(r)["blocks.0.hook_resid_pre"]
        with pytest.raises(sections.Skip, match="scope all"):
            sections.window(r)
    assert np.isnan(d["sae"]["mean"][0]) and np.array_equal(d["sae"]["mean"][1:], np.arange(1.0, 6))
    assert np.array_equal(d["sae"]["se"][1:], np.zeros(5))
    assert np.array_equal(d["eps_random"]["n"], [0, 3, 3, 3, 3, 3])

    # scope position: P = 2, W = 4; KL column w is position 2 + w
    W = 4
    kl = np.tile(1.0 / (np.arange(W) + 1), (3, 1))
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": kl, "eps_random": kl / 8}}}
    with open_result(tmp_path, "p.h5", tokens=tok, sites=sites,
                     root={"scope": "position", "position": 2, "window": W}) as r:
        w = sections.window(r)
        assert np.array_equal(r.kl_positions, [2, 3, 4, 5])
        assert np.array_equal(sections.token_ids_at_kl(r), tok[:, 2:6])
        with pytest.raises(sections.Skip, match="scope position"):
            sections.kl_by_position(r)
    assert w["position"] == 2 and np.array_equal(w["offsets"], np.arange(W))
    assert np.allclose(w["sites"]["blocks.0.hook_resid_pre"]["sae"]["mean"], [1, 0.5, 1 / 3, 0.25])
    assert np.array_equal(w["sites"]["blocks.0.hook_resid_pre"]["eps_random"]["mean"],
                          [0.125, 0.0625, np.float32(1 / 24), 0.03125])


def gap_sites(tok, gaps, eps=10.0):
    return {"blocks.%d.hook_resid_pre" % i: {"kl": {"sae": per_token(eps + g, tok),
                                                    "eps_random": per_token(eps, tok)}}
            for i, g in enumerate(gaps)}


def test_correlation_from_file_and_computed_when_absent(tmp_path):
    tok = tokens_with_bos(4, 5)  # each context: x = -2, -1, 1, 2
    x = np.tile([-2.0, -1.0, 1.0, 2.0], 4)
    sites = gap_sites(tok, [x, x ** 3, -x])
    rc = 34 / np.sqrt(1300)
    want_p = np.array([[1, rc, -1], [rc, 1, -rc], [-1, -rc, 1]])
    want_s = np.array([[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        c = sections.correlation(r)
    assert c["source"] == "computed" and c["tokens"] == 16
    assert np.allclose(c["pearson"], want_p, atol=1e-12)
    assert np.allclose(c["spearman"], want_s, atol=1e-12)

    # with /correlation present the file's matrices are shown as they are
    filep = np.array([[1, 0.5, 0.25], [0.5, 1, 0.125], [0.25, 0.125, 1]])
    names = list(sites)
    with open_result(tmp_path, "c.h5", tokens=tok, sites=sites,
                     correlation={"sae": (filep, filep.T, names, 16)}) as r:
        c = sections.correlation(r)
        assert r.correlation("spearman")[1] == names
    assert c["source"] == "file" and c["tokens"] == 16 and np.array_equal(c["pearson"], filep)


def test_gap_vs_cosine_and_l0(tmp_path):
    tok = tokens_with_bos(4, 9)
    cos = np.linspace(0.5, 0.99, 32)
    sites = gap_sites(tok, [2 * cos - 1])
    site = "blocks.0.hook_resid_pre"
    sites[site]["recon"] = {"cossim": per_token(cos, tok), "l0": per_token(100 - 50 * cos, tok)}
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        d = sections.gap_vs_recon(r)[site]
    assert d["cossim"]["pearson"] == pytest.approx(1.0, abs=1e-6)
    assert d["cossim"]["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert d["l0"]["pearson"] == pytest.approx(-1.0, abs=1e-6)
    assert d["cossim"]["n"] == 32 and d["cossim"]["binned"]["count"].sum() == 32


def test_top_tokens_with_counts_and_frequency_correlation(tmp_path):
    # token 7: 5 times, gaps 1..5 (mean 3, se sqrt(0.5)); token 8: 10 times gap 2;
    # token 9: 20 times gap 1; token 10: 4 times gap 100 (fewer than 5: left out).
    # log counts log 5, log 10, log 20 are equally spaced and the means fall linearly: r = -1.
    ids = np.array([7] * 5 + [8] * 10 + [9] * 20 + [10] * 4)
    g = np.array([1, 2, 3, 4, 5] + [2] * 10 + [1] * 20 + [100] * 4, dtype=np.float64)
    perm = np.random.default_rng(3).permutation(ids.size)
    ids, g = ids[perm], g[perm]
    tok = np.full((3, 14), BOS, dtype=np.int32)
    tok[:, 1:] = ids.reshape(3, 13)
    sites = gap_sites(tok, [g])
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        d = sections.top_tokens(r, "blocks.0.hook_resid_pre")
    t = d["top"]
    assert list(t["id"]) == [7, 8, 9] and list(t["count"]) == [5, 10, 20]
    assert np.allclose(t["mean"], [3, 2, 1], atol=1e-12)
    assert t["se"][0] == pytest.approx(np.sqrt(0.5), rel=1e-12) and t["se"][1] == 0
    ps = d["per_site"]["blocks.0.hook_resid_pre"]
    assert ps["freq_r"] == pytest.approx(-1.0, abs=1e-12) and ps["n_tokens"] == 3


def test_vocab_decoding(tmp_path):
    enc = tmp_path / "encoder.json"
    enc.write_text(json.dumps({"\u0120the": 7, "a": 8, "\u00e2\u0122": 9}))  # ' the', 'a', b'\xe2\x80'
    v = Vocab(str(enc))
    assert v.decode(7) == " the" and show_token(v, 7) == "' the'"
    assert show_token(v, 9) == "'\\xe2\\x80'"
    assert show_token(v, 12345) == "<id 12345>" and show_token(None, 7) == "#7"


def test_vocab_from_tokenizer_json(tmp_path):
    """A Hugging Face tokenizer.json (Pythia's GPT-NeoX tokenizer): the byte-level BPE vocabulary
    plus literal added tokens; a model folder holding it is found."""
    tj = {"added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": True},
                           {"id": 1, "content": "<|padding|>", "special": True}],
          "model": {"type": "BPE", "vocab": {"\u0120the": 7, "a": 8}, "merges": []}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    (tmp_path / "config.json").write_text("{}")
    v = Vocab(find_encoder(str(tmp_path)))
    assert v.decode(7) == " the" and v.decode(0) == "<|endoftext|>" and v.decode_many([8, 1]) == "a<|padding|>"


def test_vocab_from_sentencepiece_tokenizer_json(tmp_path):
    """Gemma's tokenizer.json: SentencePiece pieces ('\u2581' = space) with byte fallback."""
    tj = {"added_tokens": [{"id": 2, "content": "<bos>", "special": True}],
          "model": {"type": "BPE", "byte_fallback": True,
                    "vocab": {"\u2581the": 7, "cat": 8, "<0x0A>": 9, "<0xE2>": 10}, "merges": []}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    v = Vocab(find_encoder(str(tmp_path)))
    assert v.decode(7) == " the" and v.decode(9) == "\n" and v.decode(2) == "<bos>"
    assert v.decode_many([2, 7, 8]) == "<bos> thecat" and show_token(v, 10) == "'\\xe2'"


def test_default_vocab_only_for_gpt2_results():
    """GPT-2's vocabulary is the default for GPT-2 results only: a Pythia result's ids would
    decode to wrong text with it, so they are shown as ids unless --vocab is given."""
    if os.path.isfile(DEFAULT_ENCODER):
        assert find_encoder(None, "GPT2LMHeadModel") == DEFAULT_ENCODER
        assert find_encoder(None, None) == DEFAULT_ENCODER  # files written before the attribute
    assert find_encoder(None, "GPTNeoXForCausalLM") is None


def test_vocab_found_in_the_recorded_model_folder(tmp_path):
    """With no --vocab, the tokenizer.json in the model folder the result records is used (for
    any family); a recorded folder that is gone or holds none falls back as before."""
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
    assert find_encoder(None, "GPTNeoXForCausalLM", str(tmp_path)) == str(tmp_path / "tokenizer.json")
    assert find_encoder(None, "GPTNeoXForCausalLM", str(tmp_path / "gone")) is None
    os.makedirs(tmp_path / "empty")
    assert find_encoder(None, "GPTNeoXForCausalLM", str(tmp_path / "empty")) is None
    other = tmp_path / "other"
    os.makedirs(other)
    (other / "encoder.json").write_text(json.dumps({"b": 0}))
    assert find_encoder(str(other), "GPTNeoXForCausalLM", str(tmp_path)) == str(other / "encoder.json")


def test_zscore_computed_from_samples_and_read_from_file(tmp_path):
    tok = tokens_with_bos(2, 4)
    S = 2
    eps = np.full((2, 4, S), np.nan)
    eps[:, 1:, 0], eps[:, 1:, 1] = 0.5, 1.5          # mean 1, std (ddof 1) sqrt(0.5)
    sae = per_token(1 + 2 * np.sqrt(0.5), tok)       # z = 2
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": sae, "eps_random": eps}}}
    with open_result(tmp_path, tokens=tok, sites=sites, root={"samples": S}) as r:
        z = sections.zscore(r, "blocks.0.hook_resid_pre")
    s = z["summary"]["blocks.0.hook_resid_pre"]
    assert s["source"] == "computed" and s["n"] == 6
    assert s["mean"] == pytest.approx(2.0, rel=1e-6) and s["frac_above_2"] in (0.0, 1.0)
    assert z["items"][0]["z"] == pytest.approx(2.0, rel=1e-6) and z["items"][0]["eps"].size == 2

    # scope position: the file's sae_kl_zscore is used, at the intervened position only
    W = 3
    zf = np.tile([7.0, -1.0, -1.0], (2, 1))
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": np.ones((2, W)),
                                                "eps_random": np.ones((2, W, S))}, "zscore": zf}}
    with open_result(tmp_path, "p.h5", tokens=tok, sites=sites,
                     root={"samples": S, "scope": "position", "position": 1, "window": W}) as r:
        s = sections.zscore(r, "blocks.0.hook_resid_pre")["summary"]["blocks.0.hook_resid_pre"]
    assert s["source"] == "file" and s["mean"] == 7.0 and s["n"] == 2


def test_latent_noise_and_cov_random_ratios(tmp_path):
    tok = tokens_with_bos(3, 5)
    kl = {"sae": 0.75, "eps_random": 0.25, "latent_noise": 0.5, "sae_eps_random": 0.125,
          "cov_random": 0.375}
    sites = {"blocks.0.hook_resid_pre": {"kl": {iv: per_token(v, tok) for iv, v in kl.items()}}}
    with open_result(tmp_path, tokens=tok, sites=sites) as r:
        ln = sections.latent_noise(r)["blocks.0.hook_resid_pre"]
        cv = sections.cov_random(r)["blocks.0.hook_resid_pre"]
    assert ln["ratio"][("latent_noise", "sae_eps_random")] == (4.0, 4.0, 4.0, 12)
    assert cv["ratio"][("sae", "eps_random")][:3] == (3.0, 3.0, 3.0)
    assert cv["ratio"][("sae", "cov_random")][:3] == (2.0, 2.0, 2.0)
    assert cv["kl"]["cov_random"] == (0.375, 0.0, 12)


def examples_block(site, K=2):
    ids = np.arange(25 * K).reshape(K, 25) + 100
    clean = -np.tile(np.arange(1, 26, dtype=np.float64), (K, 1)) / 4
    return {"contexts": np.arange(K), "position": np.full(K, 3), "token_ids": ids,
            "logprobs": clean,
            "per": {(site, "sae"): (clean - 1, [0.5, 0.25]), (site, "eps_random"): (clean - 0.5, [0.125, 0.0625])}}


def test_examples_section(tmp_path):
    tok = tokens_with_bos(2, 6)
    site = "blocks.0.hook_resid_pre"
    sites = {site: {"kl": {"sae": per_token(0.5, tok), "eps_random": per_token(0.25, tok)}}}
    with open_result(tmp_path, tokens=tok, sites=sites, examples=examples_block(site)) as r:
        d = sections.examples(r, "blocks.9.hook_resid_pre")  # absent site: falls back
    assert d["site"] == site and len(d["items"]) == 2
    it = d["items"][1]
    assert it["context"] == 1 and it["position"] == 3
    assert np.array_equal(it["ids"], np.arange(25, 50) + 100)
    assert it["iv"]["sae"]["kl"] == 0.25 and it["iv"]["eps_random"]["kl"] == 0.0625
    assert np.array_equal(it["iv"]["sae"]["logprobs"], it["clean"] - 1)
    assert np.array_equal(it["prefix"], tok[1, :4])


# ================================================================ whole reports

def rich_file(tmp_path, S=3):
    """Every part present: 3 sites, all sections' data, examples, /correlation, S samples
    (S = 1: no samples axis, as saegap writes it)."""
    n, T = 6, 12
    rng = np.random.default_rng(7)
    tok = tokens_with_bos(n, T)
    tok[:, 1:] = rng.integers(0, 8, size=(n, T - 1))  # few distinct tokens: counts >= 5
    clean = per_token(rng.uniform(1, 3, size=n * (T - 1)), tok)
    clean[:, -1] = np.nan
    site_names = ["blocks.%d.hook_resid_pre" % i for i in range(3)]
    sites = {}
    for i, s in enumerate(site_names):
        base = rng.gamma(2.0, 0.1, size=(n, T))
        kl, ce = {}, {}
        for j, iv in enumerate(("sae", "eps_random", "latent_noise", "sae_eps_random", "cov_random")):
            scale = 1.5 if iv == "sae" else 1.0 + 0.1 * j
            if iv == "sae":
                kl[iv] = per_token(base[:, 1:] * scale, tok)
            else:
                draws = base[:, 1:, None] * scale * rng.uniform(0.5, 1.5, size=(n, T - 1, S))
                a = np.full((n, T, S), np.nan)
                a[:, 1:] = draws
                kl[iv] = a
            ce[iv] = clean + (mean_over_samples(kl[iv]) if kl[iv].ndim == 3 else kl[iv])
            if ce[iv].ndim == 2 and iv != "sae":
                ce[iv] = np.repeat(ce[iv][..., None], S, axis=-1)
        if S == 1:
            kl = {iv: a[..., 0] if a.ndim == 3 else a for iv, a in kl.items()}
            ce = {iv: a[..., 0] if a.ndim == 3 else a for iv, a in ce.items()}
        cos = per_token(rng.uniform(0.8, 1.0, size=n * (T - 1)), tok)
        sites[s] = {"kl": kl, "ce": ce,
                    "recon": {"cossim": cos, "l0": per_token(rng.integers(10, 60, n * (T - 1)), tok)},
                    "attrs": {"kl_div_score": 0.9, "ce_loss_score": 0.8,
                              "explained_variance": 0.7, "mean_l0": 35.0}}
    eye = np.eye(3)
    return write_result(tmp_path / ("rich.h5" if S == 3 else "rich%d.h5" % S), tokens=tok,
                        sites=sites, clean_ce=clean,
                        root={"samples": S},
                        correlation={"sae": (eye, eye, site_names, 60)},
                        examples=examples_block(site_names[1]))


def images_in_html(html):
    return re.findall(r'src\s*=\s*"([^"]*)"', html)


def check_html_self_contained(outdir):
    html = open(os.path.join(outdir, "report.html"), encoding="utf-8").read()
    srcs = images_in_html(html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "<script" not in html and "http://" not in html \
        and "https://" not in html
    return html


def test_full_report_has_every_part(tmp_path):
    out = str(tmp_path / "rep")
    doc = make_report(rich_file(tmp_path), out, strict=True)
    # scope all: only the single-position window is legitimately absent
    assert len(doc.skips) == 1 and doc.skips[0].startswith("Single-position window: skipped")
    want = {"overview", "kl_histograms", "ce_histograms", "kl_by_position", "examples",
            "gap_vs_cossim", "gap_vs_l0", "correlation", "top_tokens", "zscore_examples",
            "zscore_distribution", "latent_noise", "cov_random"}
    pngs = {f[:-4] for f in os.listdir(out) if f.endswith(".png")}
    assert pngs == want
    html = check_html_self_contained(out)
    assert len(images_in_html(html)) == len(want)
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for name in want:
        assert "![%s.png](%s.png)" % (name, name) in md
    for key in ("model_checksum", "tokens_file", "saegap_version", "command_line", "sae_path",
                "cfg_generation"):
        assert key in md


def test_minimal_file_report_skips_with_one_line_each(tmp_path):
    tok = tokens_with_bos(2, 6)
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": per_token(0.5, tok),
                                                "eps_random": per_token(0.25, tok)}}}
    path = write_result(tmp_path / "min.h5", tokens=tok, sites=sites,
                        root={"complete": 0, "samples": 1})
    out = str(tmp_path / "rep")
    doc = make_report(path, out, strict=True)
    skips = "\n".join(doc.skips)
    for what, why in (("CE difference histograms", "no /clean/ce"),
                      ("Single-position window", "scope all"),
                      ("Example contexts", "--examples"),
                      ("KL gap vs cosine", "recon"),
                      ("Layer x layer correlation", "one site only"),
                      ("eps_random KL distribution", "--samples 1"),
                      ("latent_noise vs sae_eps_random", "latent_noise, sae_eps_random not in the file"),
                      ("cov_random vs eps_random vs sae", "cov_random not in the file")):
        line = [s for s in doc.skips if s.startswith(what)]
        assert len(line) == 1 and why in line[0], (what, skips)
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "WARNING: complete = 0" in md
    for s in doc.skips:
        assert "*%s*" % s in md
    check_html_self_contained(out)


def test_missing_correlation_is_computed_and_said(tmp_path):
    tok = tokens_with_bos(4, 5)
    x = np.tile([-2.0, -1.0, 1.0, 2.0], 4)
    path = write_result(tmp_path / "c.h5", tokens=tok, sites=gap_sites(tok, [x, -x]))
    doc = make_report(path, str(tmp_path / "rep"), strict=True)
    md = open(tmp_path / "rep" / "report.md").read()
    assert "Note: the file has no /correlation/sae_minus_eps_random" in md
    assert os.path.exists(tmp_path / "rep" / "correlation.png")
    assert not any(s.startswith("Layer x layer") for s in doc.skips)


@pytest.mark.parametrize("how", ["module", "script"])
def test_command_line_both_ways(tmp_path, how):
    tok = tokens_with_bos(2, 6)
    sites = {"blocks.0.hook_resid_pre": {"kl": {"sae": per_token(0.5, tok),
                                                "eps_random": per_token(0.25, tok)}}}
    path = write_result(tmp_path / "cli.h5", tokens=tok, sites=sites)
    out = tmp_path / "rep"
    cmd = ["-m", "analysis.report"] if how == "module" else [os.path.join("analysis", "report.py")]
    p = subprocess.run(["/usr/bin/python3"] + cmd + [path, "-o", str(out)], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert "parts skipped" in p.stdout.decode()


# ================================================================ figures are readable

def _labelled_ticks(axis):
    """(loc, text, Text) of the major ticks inside the axis's view with their label shown."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for tick in axis.get_major_ticks():
        loc = tick.get_loc()
        if loc is None or not (lo - tol <= loc <= hi + tol):
            continue
        for lab in (tick.label1, tick.label2):
            if lab.get_visible():
                out.append((loc, lab.get_text(), lab))
    return out


def _overlap(a, b, px=0.5):
    """Do two display bboxes share an area (more than px pixels each way)?"""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > px) and (min(a.y1, b.y1) - max(a.y0, b.y0) > px)


def check_figure_readable(fig, name):
    """What a reader needs from a figure, checked on the drawn Figure: every major tick in
    view labelled (a log axis with at least two labels, whatever its span), tick labels of one
    axis not on top of each other, and no legend over any axes' plotting area, tick label,
    axis label or title (legends sit beside, above or below the panels)."""
    fig.canvas.draw()
    rend = fig.canvas.get_renderer()
    texts = []                                   # (what, bbox) a legend must not cover
    for k, ax in enumerate(fig.axes):
        if not ax.axison:
            continue
        texts.append(("axes %d plotting area" % k, ax.get_window_extent(rend)))
        for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if not axis.get_visible():
                continue
            ticks = _labelled_ticks(axis)
            if axis.get_scale() == "log":
                assert len([t for t in ticks if t[1].strip()]) >= 2, \
                    "%s: log %s axis of axes %d has %d labelled ticks in view %s" % (
                        name, which, k, len(ticks), axis.get_view_interval())
            for loc, text, _ in ticks:
                assert text.strip(), "%s: %s tick at %g of axes %d has no label" % (name, which, loc, k)
            ticks = [t for t in ticks if t[1].strip()]
            boxes = [lab.get_window_extent(rend) for _, _, lab in ticks]
            for i in range(len(ticks)):
                for j in range(i + 1, len(ticks)):
                    a, b = ticks[i][2], ticks[j][2]
                    rot = abs(a.get_rotation()) % 180
                    if rot in (0, 90) or which == "y":
                        apart = not _overlap(boxes[i], boxes[j], px=1.0)
                    else:
                        # slanted labels run parallel: apart when the distance between their
                        # ticks, across the slant, is at least a line of text
                        d = abs(ax.transData.transform((ticks[j][0], 0))[0]
                                - ax.transData.transform((ticks[i][0], 0))[0])
                        apart = d * math.sin(math.radians(rot)) >= 0.9 * a.get_fontsize() * fig.dpi / 72
                    assert apart, "%s: %s tick labels %r and %r of axes %d overlap" % (
                        name, which, ticks[i][1], ticks[j][1], k)
            texts += [("%s tick label %r of axes %d" % (which, t, k), b)
                      for (_, t, _), b in zip(ticks, boxes)]
            label = axis.get_label()
            if label.get_visible() and label.get_text():
                texts.append(("%s label of axes %d" % (which, k), label.get_window_extent(rend)))
        for t in (ax.title, ax._left_title, ax._right_title):
            if t.get_visible() and t.get_text():
                texts.append(("title of axes %d" % k, t.get_window_extent(rend)))
    if fig._suptitle is not None:
        texts.append(("figure title", fig._suptitle.get_window_extent(rend)))
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for leg in legends:
        lb = leg.get_window_extent(rend)
        for what, b in texts:
            assert not _overlap(lb, b), "%s: a legend covers the %s" % (name, what)


@pytest.fixture
def checked_figures(monkeypatch):
    """Every figure the report saves goes through check_figure_readable first; yields the
    names checked."""
    from analysis import report
    seen = []
    save = report.Context.save

    def checked_save(self, fig, name):
        check_figure_readable(fig, name)
        seen.append(name)
        return save(self, fig, name)

    monkeypatch.setattr(report.Context, "save", checked_save)
    return seen


def position_file(tmp_path, name="pos.h5"):
    """A --scope position run: P = 3, W = 5, S = 4 eps_random draws, the file's
    sae_kl_zscore, 3 sites; at the last site nothing after the intervened position moves
    (KL 1e-16 there, as a last-layer site gives), so its window axis reaches the floor."""
    n, T, P, W, S = 6, 12, 3, 5, 4
    rng = np.random.default_rng(3)
    tok = tokens_with_bos(n, T)
    decay = np.array([5e-2, 1e-4, 8e-5, 6e-5, 5e-5])
    sites = {}
    for i in range(3):
        sae = np.tile(decay * (i + 1), (n, 1)) * rng.uniform(0.8, 1.2, size=(n, W))
        eps = np.tile(decay[None, :, None] * (i + 1) / 3, (n, 1, S)) * rng.uniform(0.5, 1.5, (n, W, S))
        if i == 2:
            sae[:, 1:], eps[:, 1:] = 1e-16, 1e-16
        z = np.tile([3.0, 1.0, 1.0, 1.0, 1.0], (n, 1))
        z[:, 0] = np.arange(n)                  # mean 2.5, median 2.5, 3 of 6 above 2
        sites["blocks.%d.hook_resid_pre" % i] = {"kl": {"sae": sae, "eps_random": eps}, "zscore": z}
    return write_result(tmp_path / name, tokens=tok, sites=sites,
                        root={"scope": "position", "position": P, "window": W, "samples": S})


def wide_file(tmp_path):
    """Mean KLs over 12 decades, as the GPT-2 demo has them: zero_ablation ~30 nats, attn
    SAEs ~2e-5, and sae_norm 1e-11 where a final LayerNorm undoes it (rounding residue)."""
    tok = tokens_with_bos(4, 6)
    sites = {}
    for i, (sae, norm) in enumerate(((2e-5, 1e-3), (3e-2, 1e-11))):
        kl = {"sae": sae, "sae_norm": norm, "eps_random": sae / 3, "zero_ablation": 30.0 - i}
        sites["blocks.%d.hook_resid_pre" % i] = {"kl": {iv: per_token(v, tok) for iv, v in kl.items()}}
    return write_result(tmp_path / "wide.h5", tokens=tok, sites=sites)


def test_every_figure_has_tick_labels_and_no_legend_over_anything(tmp_path, checked_figures):
    """Issue 26.10: the overview's log axis over 12 decades had no tick label at all (matplotlib's
    LogLocator with subs gives none once it strides decades), and kl_histograms' legends sat
    on the y tick labels.  Every figure of a full report, a position run and a file whose mean
    KLs span 12 decades passes check_figure_readable."""
    make_report(rich_file(tmp_path), str(tmp_path / "rich"), strict=True)
    make_report(position_file(tmp_path), str(tmp_path / "pos"), strict=True)
    make_report(wide_file(tmp_path), str(tmp_path / "wide"), strict=True)
    assert {"overview", "kl_histograms", "ce_histograms", "kl_by_position", "window", "examples",
            "gap_vs_cossim", "gap_vs_l0", "correlation", "top_tokens", "zscore_examples",
            "zscore_distribution", "latent_noise", "cov_random"} <= set(checked_figures)


def test_readable_log_ticks_at_every_span():
    """The log axes' locator puts at least two ticks in view, a label's height apart on an axis
    220 px long (17 px labels), for spans from 1.2x to 1e14x; their labels differ."""
    from analysis.figures import ReadableLogLocator, tick_text
    loc = ReadableLogLocator()
    for lo, hi in ((0.31, 0.38), (0.02, 0.09), (0.7, 2.5), (1, 3000), (3e-6, 40), (1e-12, 30),
                   (1e-17, 1e-3)):
        t = [v for v in loc.tick_values(lo, hi, 220, 17) if lo <= v <= hi]
        assert len(t) >= 2, (lo, hi, t)
        assert (np.diff(np.log10(t)) / np.log10(hi / lo) * 220 >= 17 - 1e-9).all(), (lo, hi, t)
        assert len({tick_text(v) for v in t}) == len(t), (lo, hi, [tick_text(v) for v in t])
    assert tick_text(2000.0) == "2000" and tick_text(0.02) == "0.02" and tick_text(1e-8) == "1e-08"


def test_position_run_report_and_two_runs_in_one_report(tmp_path):
    """A --scope position --samples S result gives the single-position window and the z-score
    parts (the post's "Single token intervention" and "How pathological" figures); given
    after a --scope all --samples 1 result (what jobs/run-demo.sh writes), one report holds
    every part, each from the file that has its data, and says which."""
    pos = position_file(tmp_path)
    out = tmp_path / "pos"
    doc = make_report(pos, str(out), strict=True)
    pngs = {f[:-4] for f in os.listdir(out) if f.endswith(".png")}
    assert {"window", "zscore_examples", "zscore_distribution", "overview"} <= pngs
    md = (out / "report.md").read_text()
    assert "## Single-position intervention" in md and "## How unusual is the SAE's error?" in md
    # z from the file's sae_kl_zscore at the intervened position: 0..5 -> mean 2.5, 3 of 6 > 2
    assert "| blocks.0.hook_resid_pre | 2.5 | 2.5 | 0.5 | 6 | sae_kl_zscore |" in md
    assert [s for s in doc.skips if s.startswith("Mean KL by position")]

    both = tmp_path / "both"
    doc = make_report([rich_file(tmp_path, S=1), pos], str(both), strict=True)
    assert doc.skips == [], doc.skips
    pngs = {f[:-4] for f in os.listdir(both) if f.endswith(".png")}
    assert {"kl_by_position", "window", "zscore_examples", "zscore_distribution"} <= pngs
    md = (both / "report.md").read_text()
    said = "From pos.h5 (scope position at position 3, window 5, 4 samples)."
    assert md.count(said) == 2, md                      # the window and the z-score parts
    assert md.index("## Single-position intervention") < md.index(said)
    assert "## Data: rich1.h5 (scope all, 1 sample)" in md and \
        "## Data: pos.h5 (scope position at position 3, window 5, 4 samples)" in md
    html = check_html_self_contained(str(both))
    assert len(images_in_html(html)) == len(pngs)

    # neither file has a part: one line naming each file's reason
    min1 = write_result(tmp_path / "min1.h5", tokens=tokens_with_bos(2, 6),
                        sites={"blocks.0.hook_resid_pre": {"kl": {"sae": np.ones((2, 6))}}})
    doc = make_report([min1, pos], str(tmp_path / "none"), strict=True)
    line = [s for s in doc.skips if s.startswith("cov_random vs eps_random vs sae")]
    assert len(line) == 1 and "min1.h5: " in line[0] and "pos.h5: " in line[0], doc.skips
