"""Pythia (GPTNeoXForCausalLM) models in saegap, against the independent float64 reference.

    /usr/bin/python3 -m pytest -q tests/python/test_neox.py

neox_reference.py (the Pythia forward, raw and TransformerLens-processed, written from
FAMILIES-FACTS.md, not from the C code) and run_reference.py (the SAE maths, the
interventions, KL/CE, SAELens's scores) are the yardsticks: `saegap dump` must match the
reference at every site and the log-probs, and `saegap run` must write what reference_run
computes when its patched forward is Pythia's. Models are built in the real Hugging Face
layout (neox_fixtures.py): interleaved QKV rows, partial rotary, untied embed_out, a vocabulary
padded past the tokenizer's.
"""

import json
import os

import h5py
import numpy as np
import pytest

import neox_reference as nr
import run_reference as rr
from neox_fixtures import make_pythia_model
from reference_checks import log_softmax, rel_err
from run_reference import forward_with_patch_of
from sae_fixtures import make_sae, write_gemma_scope
from saegap_fixtures import write_safetensors, write_tokens_npy
from test_run import MARGIN, check_against_reference, read_result

TOL = 1e-4
N_LAYER, N_HEAD, D_MODEL, D_MLP, VOCAB, N_POS = 3, 4, 64, 192, 211, 64  # D_MLP != 4D: plan must read it
N_CTX, CTX = 4, 20
NAME = "tiny-pythia"
DET = ",".join(rr.DETERMINISTIC)


@pytest.fixture
def pythia_reference(monkeypatch):
    """run_reference with Pythia's forward in place of GPT-2's (for this test only)."""
    monkeypatch.setattr(rr, "forward_with_patch", forward_with_patch_of(nr))
    return rr


def sample_tokens(config, params, n, T, seed, temperature=1.5):
    """Contexts sampled from the model itself (so ablations raise the CE), BOS (id 0) at
    position 0 only."""
    rng = np.random.default_rng(seed)
    bos = int(config["bos_token_id"])
    tok = np.full((n, T), bos, dtype=np.int64)
    for t in range(1, T):
        _, lp = nr.forward(config, params, tok[:, :t], basis="raw")
        lp = lp[:, -1] / temperature
        lp[:, bos] = -np.inf
        p = np.exp(lp - lp.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        for i in range(n):
            tok[i, t] = rng.choice(len(p[i]), p=p[i])
    return tok


def build_model(dir, **kw):
    make_pythia_model(dir, n_layer=N_LAYER, n_head=N_HEAD, hidden_size=D_MODEL,
                      intermediate_size=D_MLP, vocab_size=VOCAB, max_position_embeddings=N_POS,
                      **kw)
    cpath = os.path.join(dir, "config.json")
    with open(cpath) as f:
        c = json.load(f)
    c["_name_or_path"] = NAME  # the SAEs' model_name matches it
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2)
    return nr.load_model(dir)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("neox_world")
    mdir = str(base / NAME)
    config, params = build_model(mdir, seed=3)
    tok = sample_tokens(config, params, N_CTX, CTX, seed=4)
    tok_npy = str(base / "tokens.npy")
    write_tokens_npy(tok_npy, tok.astype(np.int32))
    fwd = {b: nr.forward(config, params, tok, basis=b)[0] for b in ("raw", "processed")}
    return {"model_dir": mdir, "config": config, "params": params, "model": (config, params),
            "tokens": tok, "tokens_npy": tok_npy, "fwd": fwd, "meas": tok != 0}


# ---------------------------------------------------------------- the forward (point 2)

DUMP_CASES = [
    ("parallel-F32", dict(dtype="F32")),
    ("parallel-BF16-buffers", dict(dtype="BF16", with_buffers=True)),
    ("sequential-F16-full-rotary", dict(dtype="F16", use_parallel_residual=False, rotary_pct=1.0)),
    ("parallel-F16-sharded", dict(dtype="F16", sharded=True)),
]


@pytest.mark.parametrize("case", DUMP_CASES, ids=[c[0] for c in DUMP_CASES])
@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_dump_matches_reference_at_every_site(tmp_path, run_saegap, case, basis):
    cid, kw = case
    mdir = str(tmp_path / "model")
    config, params = build_model(mdir, seed=11, **kw)
    tok = np.random.default_rng(12).integers(0, VOCAB, size=(3, 17))
    write_tokens_npy(str(tmp_path / "tok.npy"), tok.astype(np.int32))
    out = str(tmp_path / "dump.h5")
    run_saegap(["dump", "--model", mdir, "--tokens", str(tmp_path / "tok.npy"), "--sites", "all",
                "--logits", "--basis", basis, "--out", out])
    acts, lp = nr.forward(config, params, tok, basis=basis)
    want = [s for s in nr.site_names(config) if ".ln" not in s]  # the LayerNorm hooks are no sites
    with h5py.File(out, "r") as f:
        got = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    assert sorted(k for k in got if k not in ("tokens", "logits")) == sorted(want), sorted(got)
    errs = {s: rel_err(got[s], acts[s]) for s in want}
    errs["log_softmax(logits)"] = rel_err(log_softmax(got["logits"]), lp)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, "%s %s: relative errors above %g: %s" % (cid, basis, TOL, bad)
    assert got["logits"].shape[-1] == VOCAB  # every padded row of embed_out is in the softmax


@pytest.mark.parametrize("site,needle", [("blocks.1.hook_resid_mid", "use_parallel_residual"),
                                         ("hook_pos_embed", "rotary")])
def test_sites_pythia_does_not_have_are_refused(world, tmp_path, run_saegap, site, needle):
    out = tmp_path / "d.h5"
    p = run_saegap(["dump", "--model", world["model_dir"], "--tokens", world["tokens_npy"],
                    "--sites", site, "--out", str(out)], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "'%s' does not exist in GPTNeoXForCausalLM" % site in err and needle in err, err
    assert not out.exists()


def _sharded(tmp_path):
    mdir = tmp_path / "sharded"
    build_model(str(mdir), seed=13, sharded=True)
    index = mdir / "model.safetensors.index.json"
    return mdir, index, json.loads(index.read_text())


def _edit_index(index, idx, fn):
    fn(idx["weight_map"])
    index.write_text(json.dumps(idx))


@pytest.mark.parametrize("damage,where,needle", [
    ("misplaced", "index", "which does not hold it (another shard does)"),
    ("path", "index", "a shard must be a file name in the same folder"),
    ("missing-shard", "shard", "cannot open"),
    ("nan", "shard", "non-finite"),
])
def test_sharded_checkpoint_damage_is_named(world, tmp_path, run_saegap, damage, where, needle):
    """A sharded checkpoint's faults end with one message naming the index or the shard."""
    mdir, index, idx = _sharded(tmp_path)
    shards = sorted(set(idx["weight_map"].values()))
    shard = str(mdir / shards[-1])
    if damage == "misplaced":
        name = next(k for k, v in idx["weight_map"].items() if v == shards[-1])
        _edit_index(index, idx, lambda m: m.__setitem__(name, shards[0]))
    elif damage == "path":
        _edit_index(index, idx, lambda m: m.__setitem__(next(iter(m)), "../" + shards[0]))
    elif damage == "missing-shard":
        os.remove(shard)
    else:  # a NaN in the first F32 value of the last shard's data block
        raw = bytearray(open(shard, "rb").read())
        hlen = int.from_bytes(raw[:8], "little")
        raw[8 + hlen:8 + hlen + 4] = np.array([np.nan], np.float32).tobytes()
        open(shard, "wb").write(raw)
    out = tmp_path / "d.h5"
    p = run_saegap(["dump", "--model", str(mdir), "--tokens", world["tokens_npy"], "--sites",
                    "blocks.0.hook_resid_pre", "--out", str(out)], check=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("saegap: error: %s: " % (index if where == "index" else shard)), err
    assert needle in last, err
    assert not out.exists()


# ---------------------------------------------------------------- runs (points 3 and 4)

def build_sae(world, dir, site, arch, basis="raw", **kw):
    xs_all = world["fwd"][basis][site]
    xs = xs_all[world["meas"]]
    d_in = xs.shape[-1]
    for seed in range(80):
        s = make_sae(str(dir), d_in, 2 * d_in if d_in <= 64 else d_in, site, architecture=arch,
                     seed=seed, x_sample=xs, model_name=NAME, **kw)
        if rr.sae_discontinuity_margin(s["cfg"], s["params"], xs_all.reshape(-1, d_in)) >= MARGIN:
            return s
    raise AssertionError("no SAE at %s with margin %g" % (site, MARGIN))


PROCESSED = {"center_writing_weights": True, "fold_ln": True, "fold_value_biases": True}
RUN_CASES = [
    ("resid_post1-standard", "blocks.1.hook_resid_post", "standard", {}),
    ("attn_out0-topk", "blocks.0.hook_attn_out", "topk", {}),
    ("hook_z2-jumprelu", "blocks.2.attn.hook_z", "jumprelu", {}),
    ("mlp_out2-standard", "blocks.2.hook_mlp_out", "standard", {}),
    ("hook_post1-gated", "blocks.1.mlp.hook_post", "gated", {}),
    ("resid_pre0-standard-processed", "blocks.0.hook_resid_pre", "standard",
     {"from_pretrained_kwargs": PROCESSED}),
    ("hook_z1-standard-processed", "blocks.1.attn.hook_z", "standard",
     {"from_pretrained_kwargs": PROCESSED}),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_matches_reference(world, tmp_path, run_saegap, pythia_reference, case):
    """Every deterministic intervention's per-token KL and CE, the reconstruction metrics and
    SAELens's scores, as the reference computes them on the Pythia forward. A cfg without
    model_from_pretrained_kwargs means raw activations on Pythia; kwargs with the three flags on
    mean TransformerLens's processing (centred residual stream; hook_z minus the folded value
    bias taken from the interleaved QKV rows)."""
    cid, site, arch, kw = case
    basis = "processed" if "from_pretrained_kwargs" in kw else "raw"
    s = build_sae(world, tmp_path / cid, site, arch, basis=basis, **kw)
    out = tmp_path / "out.h5"
    p = run_saegap(["run", "--model", world["model_dir"], "--sae", s["dir"], "--tokens",
                    world["tokens_npy"], "--out", str(out), "--interventions", DET,
                    "--threads-per-rank", "1", "--quiet"])
    if basis == "raw":
        assert "Pythia" in p.stderr.decode() and "basis raw" in p.stderr.decode(), p.stderr.decode()
    res = read_result(str(out))
    ref = pythia_reference.reference_run(None, [s["dir"]], world["tokens"], model=world["model"],
                                         basis=basis)
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=cid)


def test_two_ranks_bit_identical_with_random_interventions(world, tmp_path, run_saegap):
    """The result does not depend on the rank count on Pythia either (random interventions
    included: their draws are keyed by site and token, not by rank)."""
    s = build_sae(world, tmp_path / "sae", "blocks.1.hook_resid_post", "standard")
    outs = []
    for np_ in (1, 2):
        out = tmp_path / ("out%d.h5" % np_)
        run_saegap(["run", "--model", world["model_dir"], "--sae", s["dir"], "--tokens",
                    world["tokens_npy"], "--out", str(out), "--interventions",
                    "sae,eps_random,zero_ablation", "--threads-per-rank", "1", "--quiet"], np=np_)
        outs.append(read_result(str(out)))
    a, b = (o["sites"]["blocks.1.hook_resid_post"]["kl"] for o in outs)
    assert sorted(a) == sorted(b) == ["eps_random", "sae", "zero_ablation"]
    for iv in a:
        assert np.array_equal(a[iv], b[iv], equal_nan=True), iv
        assert np.isfinite(a[iv][world["meas"]]).all(), iv


# ---------------------------------------------------------------- sparsify SAEs (point 3)

SPARSIFY_CASES = [("layers.1", "blocks.1.hook_resid_post"), ("layers.0.mlp", "blocks.0.hook_mlp_out"),
                  ("layers.2.attention", "blocks.2.hook_attn_out")]


def write_sparsify(dir, params, k, d_in, cfg_extra=None):
    """An EleutherAI sparsify folder (FAMILIES-FACTS 4(b)): cfg.json and sae.safetensors with
    encoder.weight [num_latents, d_in] (a Linear), encoder.bias, W_dec [num_latents, d_in], b_dec."""
    os.makedirs(dir, exist_ok=True)
    n = params["W_dec"].shape[0]
    cfg = {"expansion_factor": n // d_in, "normalize_decoder": True, "num_latents": n, "k": k,
           "signed": False, "d_in": d_in}
    cfg.update(cfg_extra or {})
    with open(os.path.join(dir, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(dir, "sae.safetensors"),
                      {"encoder.weight": params["W_enc"].T.copy(), "encoder.bias": params["b_enc"],
                       "W_dec": params["W_dec"], "b_dec": params["b_dec"]})


@pytest.mark.parametrize("folder,site", SPARSIFY_CASES, ids=[c[0] for c in SPARSIFY_CASES])
def test_sparsify_sae_matches_reference(world, tmp_path, run_saegap, pythia_reference, folder, site):
    """A sparsify folder's hook comes from its name, its basis is raw, its forward is
    top-k(ReLU((x - b_dec) W_enc^T + b_enc)) @ W_dec + b_dec: the SAELens top-k SAE of the same
    numbers, which reference_run computes."""
    s = build_sae(world, tmp_path / "saelens", site, "topk")
    sp = str(tmp_path / "sparsify" / folder)
    write_sparsify(sp, s["params"], s["cfg"].get("k") or s["k"], D_MODEL)
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", world["model_dir"], "--sae", str(tmp_path / "sparsify"), "--tokens",
                world["tokens_npy"], "--out", str(out), "--interventions", DET, "--threads-per-rank", "1",
                "--quiet"])
    res = read_result(str(out))
    assert sorted(res["sites"]) == [site], sorted(res["sites"])
    ref = pythia_reference.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], basis="raw")
    ref["sites"][site]["desc"]["generation"] = "sparsify"
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=folder)


def test_sparsify_groupmax_matches_reference(world, tmp_path, run_saegap, pythia_reference):
    """Issue 26.6: "activation": "groupmax" (sparsify config.py, fused_encoder.py) keeps the largest
    ReLU'd pre-activation of each of k contiguous groups of d_sae / k latents. saegap ran it as
    top-k. Its KL, reconstruction and scores must be the float64 groupmax reference's, on an SAE
    where groupmax and top-k with the same k give different reconstructions."""
    site, k = "blocks.1.hook_resid_post", 8
    xs_all = world["fwd"]["raw"][site]
    flat = xs_all.reshape(-1, D_MODEL)
    for seed in range(80):
        s = make_sae(str(tmp_path / ("saelens%d" % seed)), D_MODEL, 2 * D_MODEL, site, architecture="topk",
                     k=k, seed=seed, x_sample=xs_all[world["meas"]], model_name=NAME)
        sp = str(tmp_path / ("sparsify%d" % seed) / "layers.1")
        write_sparsify(sp, s["params"], k, D_MODEL, {"activation": "groupmax"})
        cfg, params = pythia_reference.load_sae(sp)
        if rr.sae_discontinuity_margin(cfg, params, flat) >= MARGIN:
            break
    else:
        raise AssertionError("no groupmax SAE with margin %g" % MARGIN)
    assert rr.parse_sae_cfg(cfg)["architecture"] == "groupmax"
    # the case the issue found: groupmax is not top-k with the same k on these activations
    _, xh_group = rr.sae_encode_decode(cfg, params, flat)
    topk_cfg = dict(cfg, activation="topk")
    _, xh_topk = rr.sae_encode_decode(topk_cfg, params, flat)
    assert np.abs(xh_group - xh_topk).max() > 0.05 * np.abs(xh_topk).max()
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", world["model_dir"], "--sae", sp, "--tokens", world["tokens_npy"], "--out",
                str(out), "--interventions", DET, "--threads-per-rank", "1", "--quiet"])
    res = read_result(str(out))
    ref = pythia_reference.reference_run(None, [sp], world["tokens"], model=world["model"])
    assert ref["sites"][site]["desc"]["generation"] == "sparsify" and ref["sites"][site]["basis"] == "raw"
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what="groupmax")
    with h5py.File(out, "r") as f:
        assert int(f["sites"][site].attrs["k"]) == k


def test_sparsify_unknown_key_is_said(world, tmp_path, run_saegap):
    """A key sparsify's main branch never wrote (a fork's, such as embed_skip) is named in one
    warning: sparsify's loader drops it, so saegap does too, but not silently."""
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.standard_normal((D_MODEL, 128)), "b_enc": np.zeros(128),
              "W_dec": rng.standard_normal((128, D_MODEL)), "b_dec": np.zeros(D_MODEL)}
    sp = str(tmp_path / "layers.1")
    write_sparsify(sp, params, 8, D_MODEL, {"embed_skip": True, "activation": "topk"})
    p = run_saegap(["run", "--model", world["model_dir"], "--sae", sp, "--tokens", world["tokens_npy"],
                    "--out", str(tmp_path / "o.h5"), "--interventions", "sae"])
    warn = [ln for ln in p.stderr.decode().splitlines() if "embed_skip" in ln]
    assert len(warn) == 1 and "cfg.json" in warn[0] and "activation" not in warn[0], p.stderr.decode()


@pytest.mark.parametrize("edit,needle", [
    ({"activation": "relu"}, '"activation" is "relu"'),
    ({"activation": 1}, '"activation"'),
    ({"activation": "groupmax", "k": 7}, "groupmax"),
    ({"signed": True}, '"signed"'),
    ({"multi_topk": True}, '"multi_topk"'),
    ({"k": 0}, '"k"'),
    ({"k": 1e20}, '"k"'),
    ({"num_latents": 0, "expansion_factor": 3}, "encoder.weight"),
])
def test_sparsify_cfg_refusals(world, tmp_path, run_saegap, edit, needle):
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.standard_normal((D_MODEL, 128)), "b_enc": np.zeros(128),
              "W_dec": rng.standard_normal((128, D_MODEL)), "b_dec": np.zeros(D_MODEL)}
    sp = str(tmp_path / "layers.1")
    write_sparsify(sp, params, 8, D_MODEL, edit)
    out = tmp_path / "out.h5"
    p = run_saegap(["run", "--model", world["model_dir"], "--sae", sp, "--tokens", world["tokens_npy"],
                    "--out", str(out), "--interventions", "sae", "--quiet"], check=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and needle in err.splitlines()[-1] and sp in err.splitlines()[-1], err
    assert not out.exists()


def test_sparsify_folder_name_must_say_the_hook(world, tmp_path, run_saegap):
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.standard_normal((D_MODEL, 128)), "b_enc": np.zeros(128),
              "W_dec": rng.standard_normal((128, D_MODEL)), "b_dec": np.zeros(D_MODEL)}
    sp = str(tmp_path / "layer_1")  # sparsify's pre-2024-07 name: resid_pre or resid_post? refused
    write_sparsify(sp, params, 8, D_MODEL)
    p = run_saegap(["run", "--model", world["model_dir"], "--sae", sp, "--tokens", world["tokens_npy"],
                    "--out", str(tmp_path / "o.h5"), "--interventions", "sae", "--quiet"], check=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and "layers.N" in err and sp in err, err


# ---------------------------------------------------------------- --sae-hook (point 3)

def test_sae_hook_names_the_site_of_a_moved_folder(world, tmp_path, run_saegap):
    """A Gemma Scope params.npz moved to a path that names no site runs with --sae-hook (on the
    command line or as job-file lines) and gives the same bits as the folder in Google's layout;
    without it the refusal says to give --sae-hook. A renamed sparsify folder likewise."""
    site = "blocks.1.hook_resid_post"
    s = build_sae(world, tmp_path / "saelens", site, "jumprelu", apply_b_dec_to_input=False)
    gs = write_gemma_scope(str(tmp_path), "res", "layer_1", s["params"])
    moved = tmp_path / "moved" / "my-sae"
    os.makedirs(moved)
    os.link(os.path.join(gs, "params.npz"), moved / "params.npz")
    common = ["--model", world["model_dir"], "--tokens", world["tokens_npy"], "--interventions", "sae,zero_ablation",
              "--threads-per-rank", "1", "--quiet"]
    kls = []
    for name, extra in (("google", ["--sae", gs]), ("moved", ["--sae", str(moved), "--sae-hook", site])):
        out = tmp_path / (name + ".h5")
        run_saegap(["run"] + extra + common + ["--out", str(out)])
        kls.append(read_result(str(out))["sites"][site]["kl"])
    job = tmp_path / "moved.job"
    job.write_text("sae = %s\nsae-hook = %s\n" % (moved, site))
    run_saegap(["run", str(job)] + common + ["--out", str(tmp_path / "job.h5")])
    kls.append(read_result(str(tmp_path / "job.h5"))["sites"][site]["kl"])
    for k in kls[1:]:
        for iv in ("sae", "zero_ablation"):
            assert np.array_equal(kls[0][iv], k[iv], equal_nan=True), iv
    assert np.nanmax(kls[0]["sae"]) > 0
    info = run_saegap(["info", str(moved), "--sae-hook", site]).stdout.decode()
    assert site in info and "Gemma Scope" in info, info
    p = run_saegap(["run"] + ["--sae", str(moved)] + common + ["--out", str(tmp_path / "x.h5")], check=False)
    err = p.stderr.decode().strip().splitlines()[-1]
    assert p.returncode == 1 and "--sae-hook" in err and str(moved) in err, err

    rng = np.random.default_rng(0)
    params = {"W_enc": rng.standard_normal((D_MODEL, 128)), "b_enc": np.zeros(128),
              "W_dec": rng.standard_normal((128, D_MODEL)), "b_dec": np.zeros(D_MODEL)}
    sp = str(tmp_path / "renamed-sparsify")
    write_sparsify(sp, params, 8, D_MODEL)
    out = tmp_path / "sp.h5"
    run_saegap(["run", "--sae", sp, "--sae-hook", "blocks.0.hook_mlp_out"] + common + ["--out", str(out)])
    assert sorted(read_result(str(out))["sites"]) == ["blocks.0.hook_mlp_out"]


@pytest.mark.parametrize("case,needle", [
    ("path-disagrees", "its path says the SAE's site is blocks.1.hook_resid_post, --sae-hook says blocks.0.hook_resid_post"),
    ("cfg-disagrees", "its cfg.json (metadata.hook_name) says the SAE's site is blocks.1.hook_resid_post"),
    ("counts", "--sae-hook is given 1 time(s) and --sae 2"),
    ("release-folder", "not an SAE folder"),
    ("unknown-site", "blocks.9"),
])
def test_sae_hook_refusals(world, tmp_path, run_saegap, case, needle):
    rng = np.random.default_rng(0)
    p = {"W_enc": rng.standard_normal((D_MODEL, 32)), "W_dec": rng.standard_normal((32, D_MODEL)),
         "b_enc": np.zeros(32), "b_dec": np.zeros(D_MODEL), "threshold": np.full(32, 0.1)}
    gs = write_gemma_scope(str(tmp_path), "res", "layer_1", p)
    s = build_sae(world, tmp_path / "saelens", "blocks.1.hook_resid_post", "standard")
    args = {"path-disagrees": ["--sae", gs, "--sae-hook", "blocks.0.hook_resid_post"],
            "cfg-disagrees": ["--sae", s["dir"], "--sae-hook", "blocks.0.hook_resid_post"],
            "counts": ["--sae", gs, "--sae", s["dir"], "--sae-hook", "blocks.1.hook_resid_post"],
            "release-folder": ["--sae", str(tmp_path / "gemma-scope-2b-pt-res"), "--sae-hook", "blocks.1.hook_resid_post"],
            "unknown-site": ["--sae", gs, "--sae-hook", "blocks.9.hook_resid_post"]}[case]
    if case == "unknown-site":  # the path must not say the site for the explicit one to be used
        os.makedirs(tmp_path / "plain")
        os.link(os.path.join(gs, "params.npz"), tmp_path / "plain" / "params.npz")
        args[1] = str(tmp_path / "plain")
    out = tmp_path / "out.h5"
    r = run_saegap(["run"] + args + ["--model", world["model_dir"], "--tokens", world["tokens_npy"], "--out", str(out),
                                     "--interventions", "sae", "--quiet"], check=False)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and needle in err.splitlines()[-1], err
    assert not out.exists()


# ---------------------------------------------------------------- plan and info (point 4)

def test_plan_and_info_know_pythia(world, tmp_path, run_saegap):
    """plan counts Pythia's FLOPs from its own widths (intermediate_size, the padded
    vocabulary); info names the family, its rotary and parallel residual, and its sites."""
    s = build_sae(world, tmp_path / "sae", "blocks.1.hook_resid_post", "standard")
    p = run_saegap(["plan", "--model", world["model_dir"], "--sae", s["dir"], "--tokens", world["tokens_npy"],
                    "--interventions", "sae", "--ranks", "1", "--threads-per-rank", "1"])
    text = p.stdout.decode()
    clean = float(text.split("clean passes ")[1].split(",")[0])
    D, F, L, T, Vp = D_MODEL, D_MLP, N_LAYER, CTX, (VOCAB + 63) // 64 * 64
    want = N_CTX * T * (L * (8 * D * D + 4 * D * F + 4 * T * D) + 2 * D * Vp)
    assert abs(clean / want - 1) < 5e-3, (clean, want, text)  # printed to 3 digits
    info = run_saegap(["info", world["model_dir"]]).stdout.decode()
    assert "GPT-NeoX (Pythia)" in info and "parallel residual" in info and "rotary on 4 of 16" in info, info
    assert "hook_resid_mid" not in info and "hook_pos_embed" not in info and "d_mlp 192" in info, info


def test_sharded_model_runs_like_the_single_file(world, tmp_path, run_saegap):
    """The same weights as one file and as two shards give the same result bits; the model
    checksum covers the shards (a changed shard is another job for --resume)."""
    sharded = str(tmp_path / NAME)
    build_model(sharded, seed=3, sharded=True)  # the world's weights (seed 3), in two shards
    s = build_sae(world, tmp_path / "sae", "blocks.2.hook_resid_pre", "standard")
    res = []
    for mdir, name in ((world["model_dir"], "one.h5"), (sharded, "two.h5")):
        out = tmp_path / name
        run_saegap(["run", "--model", mdir, "--sae", s["dir"], "--tokens", world["tokens_npy"], "--out",
                    str(out), "--interventions", "sae,zero_ablation", "--threads-per-rank", "1", "--quiet"])
        res.append(read_result(str(out)))
        with h5py.File(out, "r") as f:
            assert f.attrs["model_architecture"] == "GPTNeoXForCausalLM"
    for iv in ("sae", "zero_ablation"):
        a, b = (r["sites"]["blocks.2.hook_resid_pre"]["kl"][iv] for r in res)
        assert np.array_equal(a, b, equal_nan=True), iv
    # resuming the sharded run's complete file with a changed shard: refused as another model
    shard = sorted(p for p in os.listdir(sharded) if p.startswith("model-0"))[-1]
    path = os.path.join(sharded, shard)
    raw = bytearray(open(path, "rb").read())
    hlen = int.from_bytes(raw[:8], "little")
    v = np.frombuffer(bytes(raw[8 + hlen:8 + hlen + 4]), np.float32)[0]
    raw[8 + hlen:8 + hlen + 4] = np.array([v * 1.5 + 0.25], np.float32).tobytes()
    open(path, "wb").write(raw)
    p = run_saegap(["run", "--model", sharded, "--sae", s["dir"], "--tokens", world["tokens_npy"], "--out",
                    str(tmp_path / "two.h5"), "--interventions", "sae,zero_ablation", "--threads-per-rank", "1",
                    "--quiet", "--resume"], check=False)
    assert p.returncode == 1 and "model_checksum" in p.stderr.decode(), p.stderr.decode()


# ---------------------------------------------------------------- Gemma Scope SAEs (point 3)

GS_CASES = [("res", "layer_1", "blocks.1.hook_resid_post", np.savez),
            ("mlp", "layer_0", "blocks.0.hook_mlp_out", np.savez_compressed),
            ("att", "layer_2", "blocks.2.attn.hook_z", np.savez)]


@pytest.mark.parametrize("kind,layer,site,save", GS_CASES, ids=[c[0] for c in GS_CASES])
def test_gemma_scope_sae_matches_reference(world, tmp_path, run_saegap, pythia_reference, kind, layer, site, save):
    """A params.npz folder (stored or deflated members): JumpReLU without b_dec subtracted,
    basis raw, the site from the path; the same numbers as a SAELens jumprelu SAE with
    apply_b_dec_to_input false, which reference_run computes."""
    s = build_sae(world, tmp_path / "saelens", site, "jumprelu", apply_b_dec_to_input=False)
    gs = write_gemma_scope(str(tmp_path), kind, layer, s["params"], save)
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", world["model_dir"], "--sae", gs, "--tokens", world["tokens_npy"], "--out",
                str(out), "--interventions", DET, "--threads-per-rank", "1", "--quiet"])
    res = read_result(str(out))
    assert sorted(res["sites"]) == [site], sorted(res["sites"])
    ref = pythia_reference.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], basis="raw")
    ref["sites"][site]["desc"]["generation"] = "gemma_scope"
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=kind)
    info = run_saegap(["info", gs]).stdout.decode()
    assert "Gemma Scope SAE" in info and site in info and "jumprelu" in info, info


@pytest.mark.parametrize("damage,needle", [
    ("no-threshold", "has no array threshold"),
    ("shape", "array b_dec has"),
    ("crc", "fails its CRC-32"),
    ("truncated", "zip"),
    ("nan", "non-finite"),
    ("path", "path says its site"),
])
def test_gemma_scope_damage_is_named(world, tmp_path, run_saegap, damage, needle):
    rng = np.random.default_rng(0)
    p = {"W_enc": rng.standard_normal((D_MODEL, 32)), "W_dec": rng.standard_normal((32, D_MODEL)),
         "b_enc": np.zeros(32), "b_dec": np.zeros(D_MODEL), "threshold": np.full(32, 0.1)}
    if damage == "no-threshold":
        del p["threshold"]
    if damage == "shape":
        p["b_dec"] = np.zeros(D_MODEL + 1)
    if damage == "nan":
        p["b_enc"][3] = np.nan
    root = str(tmp_path / ("x" if damage == "path" else ""))
    d = os.path.join(root, "gemma-scope-2b-pt-res", "layer_1", "w", "a") if damage != "path" else os.path.join(root, "sae")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "params.npz")
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in p.items()})
    raw = bytearray(open(path, "rb").read())
    if damage == "crc":  # a byte inside W_dec's data (stored member): CRC mismatch
        i = raw.find(b"W_dec.npy")
        raw[i + 400] ^= 0x55
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    open(path, "wb").write(raw)
    out = tmp_path / "out.h5"
    r = run_saegap(["run", "--model", world["model_dir"], "--sae", d, "--tokens", world["tokens_npy"],
                    "--out", str(out), "--interventions", "sae", "--quiet"], check=False)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and needle in err.splitlines()[-1] and d in err.splitlines()[-1], err
    assert not out.exists()


def test_gemma_scope_dtypes_convert_exactly(world, tmp_path, run_saegap):
    """Members stored as float16 or float64 are converted to float32: an archive of float16
    values and one of the same values as float32 give the same result bits."""
    s = build_sae(world, tmp_path / "saelens", "blocks.1.hook_resid_post", "jumprelu", apply_b_dec_to_input=False)
    p16 = {k: np.asarray(s["params"][k], np.float16) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    kls = []
    for name, arrays in (("f16", p16), ("f32", {k: v.astype(np.float32) for k, v in p16.items()}),
                         ("f64", {k: v.astype(np.float64) for k, v in p16.items()})):
        d = os.path.join(str(tmp_path / name), "gemma-scope-2b-pt-res", "layer_1", "w", "a")
        os.makedirs(d)
        np.savez(os.path.join(d, "params.npz"), **arrays)
        out = tmp_path / (name + ".h5")
        run_saegap(["run", "--model", world["model_dir"], "--sae", d, "--tokens", world["tokens_npy"], "--out",
                    str(out), "--interventions", "sae,zero_ablation", "--threads-per-rank", "1", "--quiet"])
        kls.append(read_result(str(out))["sites"]["blocks.1.hook_resid_post"]["kl"]["sae"])
    assert np.array_equal(kls[0], kls[1], equal_nan=True) and np.array_equal(kls[0], kls[2], equal_nan=True)
    assert np.nanmax(kls[0]) > 0


# ---------------------------------------------------------------- tensors no format has (issue 26.6)

def _small_params(d_sae=128):
    rng = np.random.default_rng(0)
    return {"W_enc": rng.standard_normal((D_MODEL, d_sae)), "b_enc": np.zeros(d_sae),
            "W_dec": rng.standard_normal((d_sae, D_MODEL)), "b_dec": np.zeros(D_MODEL),
            "threshold": np.full(d_sae, 0.5)}


def _refused(run_saegap, world, tmp_path, sae, needles):
    out = tmp_path / "out.h5"
    p = run_saegap(["run", "--model", world["model_dir"], "--sae", sae, "--tokens", world["tokens_npy"],
                    "--out", str(out), "--interventions", "sae", "--quiet"], check=False)
    err = p.stderr.decode().strip()
    last = err.splitlines()[-1] if err else ""
    assert p.returncode == 1 and last.startswith("saegap: error:") and all(n in last for n in needles), err
    assert not out.exists()


@pytest.mark.parametrize("arch,extra", [("standard", "W_skip"), ("topk", "threshold"), ("jumprelu", "b_gate")])
def test_saelens_tensor_outside_the_architecture_is_refused(world, tmp_path, run_saegap, arch, extra):
    """A tensor the architecture does not use (a skip transcoder's W_skip on a standard SAE, a
    threshold on a topk one) was dropped silently; SAELens's strict load_state_dict refuses it."""
    s = make_sae(str(tmp_path / "sae"), D_MODEL, 128, "blocks.1.hook_resid_post", architecture=arch,
                 model_name=NAME, k=8 if arch == "topk" else None)
    path = os.path.join(s["dir"], "sae_weights.safetensors")
    tensors = dict(s["params"])
    tensors[extra] = np.eye(D_MODEL) if extra == "W_skip" else np.full(128, 0.5)
    os.remove(path)
    write_safetensors(path, tensors)
    _refused(run_saegap, world, tmp_path, s["dir"], ["'%s'" % extra, "sae_weights.safetensors", arch])


def test_sparsify_w_skip_without_skip_connection_is_refused(world, tmp_path, run_saegap):
    """sparsify's W_skip adds x W_skip^T to the output; a file with one is refused even when
    the cfg does not say skip_connection (sparsify's strict load refuses that file too)."""
    sp = str(tmp_path / "layers.1")
    write_sparsify(sp, _small_params(), 8, D_MODEL)
    p = _small_params()
    write_safetensors(os.path.join(sp, "sae.safetensors"),
                      {"encoder.weight": p["W_enc"].T.copy(), "encoder.bias": p["b_enc"], "W_dec": p["W_dec"],
                       "b_dec": p["b_dec"], "W_skip": np.eye(D_MODEL)})
    _refused(run_saegap, world, tmp_path, sp, ["'W_skip'", "sae.safetensors"])


@pytest.mark.parametrize("extra,value,needles", [
    ("scaling_factor", 1.5, ["scaling_factor", "not all ones"]),
    ("W_skip", None, ["'W_skip'", "params.npz"]),
])
def test_gemma_scope_array_outside_jumprelu_is_refused(world, tmp_path, run_saegap, extra, value, needles):
    """params.npz with an array Gemma Scope's JumpReLU does not have was read without it; SAELens's
    loader refuses a scaling_factor that is not all ones, and its strict load any other array."""
    p = _small_params()
    d = write_gemma_scope(str(tmp_path), "res", "layer_1", p)
    arrays = {k: np.asarray(p[k], np.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    if extra == "scaling_factor":
        arrays[extra] = np.ones(128, np.float32)
        arrays[extra][37] = value
    else:
        arrays[extra] = np.eye(D_MODEL, dtype=np.float32)
    np.savez(os.path.join(d, "params.npz"), **arrays)
    _refused(run_saegap, world, tmp_path, d, needles)


def test_gemma_scope_all_ones_scaling_factor_is_dropped(world, tmp_path, run_saegap):
    """An all-ones scaling_factor changes nothing (SAELens drops it): the run goes on and its
    reconstruction is that of the same archive without the array."""
    p = _small_params()
    outs = []
    for with_ones in (False, True):
        d = write_gemma_scope(str(tmp_path / str(with_ones)), "res", "layer_1", p)
        if with_ones:
            arrays = {k: np.asarray(p[k], np.float32) for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
            np.savez(os.path.join(d, "params.npz"), scaling_factor=np.ones(128, np.float32), **arrays)
        out = tmp_path / ("o%d.h5" % with_ones)
        run_saegap(["run", "--model", world["model_dir"], "--sae", d, "--tokens", world["tokens_npy"], "--out",
                    str(out), "--interventions", "sae", "--threads-per-rank", "1", "--quiet"])
        outs.append(read_result(str(out))["sites"]["blocks.1.hook_resid_post"]["kl"]["sae"])
    assert np.array_equal(outs[0], outs[1], equal_nan=True)
