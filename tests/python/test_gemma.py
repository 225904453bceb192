"""Gemma-2 (Gemma2ForCausalLM) models in saegap, against the independent float64 reference.

    /usr/bin/python3 -m pytest -q tests/python/test_gemma.py

gemma_reference.py (written from FAMILIES-FACTS.md sections 2-3, not from the C code) is the
yardstick: `saegap dump` must match it at every site and the log-probs (raw and processed, which
are equal for Gemma-2), and `saegap run` must write what run_reference.reference_run computes on
Gemma-2's patched forward, with SAELens and Gemma Scope SAEs. The fixture models have
hidden_size != n_head * head_dim (as Gemma-2-2B: 2304 vs 2048), grouped-query attention, both
soft-caps, and a sliding window shorter than the contexts, so every Gemma-2 trait is exercised.
"""

import json
import os

import h5py
import numpy as np
import pytest

import gemma_reference as gr
import run_reference as rr
from gemma_fixtures import make_gemma2_model
from reference_checks import log_softmax, rel_err
from run_reference import forward_with_patch_of
from sae_fixtures import make_sae
from saegap_fixtures import write_safetensors, write_tokens_npy
from sae_fixtures import write_gemma_scope
from test_run import MARGIN, check_against_reference, read_result

TOL = 1e-4
NAME = "tiny-gemma2"
N_CTX, CTX = 4, 20
DET = ",".join(rr.DETERMINISTIC)


def build_model(dir, seed=0, dtype="F32", sharded=False, n_layer=2, n_head=4, n_kv=2, head_dim=16, hidden=48,
                inner=96, vocab=211, window=6):
    """A Gemma-2 folder in the real Hugging Face layout (FAMILIES-FACTS section 2): config.json and
    model.safetensors (or an index and two shards), Linear [out, in] weights, no biases, four
    RMSNorm offsets a layer. Scales make the soft-caps and the window matter."""
    os.makedirs(dir, exist_ok=True)
    cfg = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": hidden,
           "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": head_dim,
           "intermediate_size": inner, "num_hidden_layers": n_layer, "vocab_size": vocab, "rms_norm_eps": 1e-6,
           "query_pre_attn_scalar": head_dim, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
           "sliding_window": window, "rope_theta": 10000, "hidden_activation": "gelu_pytorch_tanh",
           "max_position_embeddings": 64, "tie_word_embeddings": True, "attention_bias": False,
           "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "_name_or_path": NAME,
           "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]}
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    r = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": r.standard_normal((vocab, hidden)) * 0.5,
         "model.norm.weight": r.standard_normal(hidden) * 0.3}
    for l in range(n_layer):
        p = "model.layers.%d." % l
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            t[p + n + ".weight"] = r.standard_normal(hidden) * 0.3
        t[p + "self_attn.q_proj.weight"] = r.standard_normal((n_head * head_dim, hidden)) * 0.5
        t[p + "self_attn.k_proj.weight"] = r.standard_normal((n_kv * head_dim, hidden)) * 0.5
        t[p + "self_attn.v_proj.weight"] = r.standard_normal((n_kv * head_dim, hidden)) * 0.2
        t[p + "self_attn.o_proj.weight"] = r.standard_normal((hidden, n_head * head_dim)) * 0.2
        t[p + "mlp.gate_proj.weight"] = r.standard_normal((inner, hidden)) * 0.2
        t[p + "mlp.up_proj.weight"] = r.standard_normal((inner, hidden)) * 0.2
        t[p + "mlp.down_proj.weight"] = r.standard_normal((hidden, inner)) * 0.2
    if not sharded:
        write_safetensors(os.path.join(dir, "model.safetensors"), t, dtype=dtype)
    else:
        names = sorted(t)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for fn, ns in shards.items():
            write_safetensors(os.path.join(dir, fn), {n: t[n] for n in ns}, dtype=dtype)
        with open(os.path.join(dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": {n: fn for fn, ns in shards.items() for n in ns}}, f)
    return gr.load_model(dir)


@pytest.fixture
def gemma_reference(monkeypatch):
    """run_reference with Gemma-2's forward in place of GPT-2's (for this test only)."""
    monkeypatch.setattr(rr, "forward_with_patch", forward_with_patch_of(gr))
    return rr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("gemma_world")
    mdir = str(base / NAME)
    config, params = build_model(mdir, seed=3)
    rng = np.random.default_rng(4)
    tok = rng.integers(3, int(config["vocab_size"]), size=(N_CTX, CTX))
    tok[:, 0] = int(config["bos_token_id"])
    tok_npy = str(base / "tokens.npy")
    write_tokens_npy(tok_npy, tok.astype(np.int32))
    fwd = gr.forward(config, params, tok, basis="raw")[0]
    return {"model_dir": mdir, "config": config, "params": params, "model": (config, params), "tokens": tok,
            "tokens_npy": tok_npy, "fwd": fwd, "meas": tok != int(config["bos_token_id"])}


DUMP_CASES = [("F32", dict(dtype="F32")), ("BF16", dict(dtype="BF16")), ("F16-sharded", dict(dtype="F16", sharded=True)),
              ("helper-fixture-capped", None)]


@pytest.mark.parametrize("case", DUMP_CASES, ids=[c[0] for c in DUMP_CASES])
@pytest.mark.parametrize("basis", ["raw", "processed"])
def test_dump_matches_reference_at_every_site(tmp_path, run_saegap, case, basis):
    cid, kw = case
    mdir = str(tmp_path / "model")
    if kw is None:  # gemma_fixtures' model: outlier vocabulary rows push raw logits to ~70, past the cap
        f = make_gemma2_model(mdir, seed=11)
        config, params = f["config"], f["params"]
    else:
        config, params = build_model(mdir, seed=11, **kw)
    assert int(config["sliding_window"]) < 17  # the window bites on these contexts
    tok = np.random.default_rng(12).integers(0, int(config["vocab_size"]), size=(3, 17))
    write_tokens_npy(str(tmp_path / "tok.npy"), tok.astype(np.int32))
    out = str(tmp_path / "dump.h5")
    run_saegap(["dump", "--model", mdir, "--tokens", str(tmp_path / "tok.npy"), "--sites", "all", "--logits",
                "--basis", basis, "--out", out])
    acts, lp = gr.forward(config, params, tok, basis=basis)
    want = [s for s in gr.site_names(config) if ".ln" not in s and "hook_scale" not in s and "normalized" not in s]
    with h5py.File(out, "r") as f:
        got = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    assert sorted(k for k in got if k not in ("tokens", "logits")) == sorted(want), sorted(got)
    errs = {s: rel_err(got[s], acts[s]) for s in want}
    errs["log_softmax(logits)"] = rel_err(log_softmax(got["logits"]), lp)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, "%s %s: relative errors above %g: %s" % (cid, basis, TOL, bad)
    assert np.abs(got["logits"]).max() <= float(config["final_logit_softcapping"])  # the final soft-cap


EMBED_SCALE_CASES = [("BF16-d68", "BF16", 68), ("F16-d68", "F16", 68), ("BF16-d3584-as-9b", "BF16", 3584)]


@pytest.mark.parametrize("cid,dtype,hidden", EMBED_SCALE_CASES, ids=[c[0] for c in EMBED_SCALE_CASES])
def test_embedding_scale_is_the_compute_dtypes(tmp_path, run_saegap, cid, dtype, hidden):
    """A BF16/F16 file run in float32 scales its embedding by float32(sqrt D), as TransformerLens
    (and so SAELens) and a float32 Hugging Face forward do, not by sqrt(D) rounded to the storage
    dtype (issue 26.7; FAMILIES-FACTS section 2). The widths are ones whose sqrt the storage dtype
    cannot hold (68: 8.2462 -> 8.25 in both; 3584, gemma-2-9b's: 59.8665 -> 59.75 in BF16), so the
    rounded scale misses the reference by more than the tolerance at hook_embed and the log-probs
    (checked below: the test can fail)."""
    mdir = str(tmp_path / "model")
    config, params = build_model(mdir, seed=11, dtype=dtype, hidden=hidden)
    scale32 = gr.embed_normalizer(config)
    rounded = gr.embed_normalizer(config, {"BF16": "bfloat16", "F16": "float16"}[dtype])
    assert scale32 == float(np.float32(np.sqrt(hidden))) and rounded != scale32
    tok = np.random.default_rng(12).integers(0, int(config["vocab_size"]), size=(3, 17))
    write_tokens_npy(str(tmp_path / "tok.npy"), tok.astype(np.int32))
    out = str(tmp_path / "dump.h5")
    run_saegap(["dump", "--model", mdir, "--tokens", str(tmp_path / "tok.npy"), "--sites", "hook_embed",
                "--logits", "--out", out])
    with h5py.File(out, "r") as f:
        embed, logits = f["hook_embed"][()], f["logits"][()]
    # hook_embed bit for bit: the stored value times float32(sqrt D), one float32 product
    stored = params["model.embed_tokens.weight"][tok].astype(np.float32)
    assert np.array_equal(embed, stored * np.float32(scale32)), cid
    acts, lp = gr.forward(config, params, tok)
    assert rel_err(embed, acts["hook_embed"]) <= TOL, cid
    assert rel_err(log_softmax(logits), lp) <= TOL, cid
    # the old rule (sqrt D in the storage dtype) is more than the tolerance away from the reference
    old = gr.embed_normalizer
    try:
        gr.embed_normalizer = lambda c, compute_dtype="float32": rounded
        acts_r, lp_r = gr.forward(config, params, tok)
    finally:
        gr.embed_normalizer = old
    assert rel_err(acts_r["hook_embed"], acts["hook_embed"]) > 2 * TOL, cid
    assert rel_err(lp_r, lp) > 1.5 * TOL, cid


def build_sae(world, dir, site, arch, **kw):
    xs_all = world["fwd"][site]
    xs = xs_all[world["meas"]]
    d_in = xs.shape[-1]
    for seed in range(80):
        s = make_sae(str(dir), d_in, 2 * d_in, site, architecture=arch, seed=seed, x_sample=xs, model_name=NAME, **kw)
        if rr.sae_discontinuity_margin(s["cfg"], s["params"], xs_all.reshape(-1, d_in)) >= MARGIN:
            return s
    raise AssertionError("no SAE at %s with margin %g" % (site, MARGIN))


RUN_CASES = [("resid_post1", "blocks.1.hook_resid_post", "standard"), ("hook_z0", "blocks.0.attn.hook_z", "jumprelu"),
             ("mlp_out1", "blocks.1.hook_mlp_out", "topk"), ("attn_out0", "blocks.0.hook_attn_out", "standard"),
             ("resid_mid1", "blocks.1.hook_resid_mid", "standard"), ("hook_post0", "blocks.0.mlp.hook_post", "gated")]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_matches_reference(world, tmp_path, run_saegap, gemma_reference, case):
    """SAELens SAEs on Gemma-2 (no kwargs: raw, as Gemma Scope's loader asks): every
    deterministic intervention against reference_run on the Gemma-2 forward."""
    cid, site, arch = case
    s = build_sae(world, tmp_path / cid, site, arch)
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", world["model_dir"], "--sae", s["dir"], "--tokens", world["tokens_npy"], "--out",
                str(out), "--interventions", DET, "--threads-per-rank", "1", "--quiet"])
    res = read_result(str(out))
    ref = gemma_reference.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], basis="raw")
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=cid)


@pytest.mark.parametrize("kind,layer,site", [("res", "layer_1", "blocks.1.hook_resid_post"),
                                             ("att", "layer_0", "blocks.0.attn.hook_z"),
                                             ("mlp", "layer_1", "blocks.1.hook_mlp_out")])
def test_gemma_scope_on_gemma2(world, tmp_path, run_saegap, gemma_reference, kind, layer, site):
    """Gemma Scope's format on the model it was made for: the attention SAE reads attn.hook_z
    of width n_head * head_dim (not hidden_size)."""
    s = build_sae(world, tmp_path / "saelens", site, "jumprelu", apply_b_dec_to_input=False)
    gs = write_gemma_scope(str(tmp_path), kind, layer, s["params"])
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", world["model_dir"], "--sae", gs, "--tokens", world["tokens_npy"], "--out",
                str(out), "--interventions", DET, "--threads-per-rank", "1", "--quiet"])
    res = read_result(str(out))
    ref = gemma_reference.reference_run(None, [s["dir"]], world["tokens"], model=world["model"], basis="raw")
    ref["sites"][site]["desc"]["generation"] = "gemma_scope"
    check_against_reference(res, ref, rr.DETERMINISTIC, world["tokens"], what=kind)


def test_two_ranks_and_two_threads_bit_identical(world, tmp_path, run_saegap):
    s = build_sae(world, tmp_path / "sae", "blocks.0.hook_resid_post", "standard")
    outs = []
    for np_, th in ((1, 1), (2, 1), (1, 2)):
        out = tmp_path / ("o%d%d.h5" % (np_, th))
        run_saegap(["run", "--model", world["model_dir"], "--sae", s["dir"], "--tokens", world["tokens_npy"],
                    "--out", str(out), "--interventions", "sae,eps_random,zero_ablation", "--threads-per-rank",
                    str(th), "--quiet"], np=np_)
        outs.append(read_result(str(out))["sites"]["blocks.0.hook_resid_post"]["kl"])
    for o in outs[1:]:
        for iv in outs[0]:
            assert np.array_equal(outs[0][iv], o[iv], equal_nan=True), iv


def test_plan_and_info_know_gemma2(world, tmp_path, run_saegap):
    c = world["config"]
    info = run_saegap(["info", world["model_dir"]]).stdout.decode()
    assert "Gemma-2" in info and "sliding window %d" % int(c["sliding_window"]) in info, info
    assert "key/value heads %d" % int(c["num_key_value_heads"]) in info, info
    s = build_sae(world, tmp_path / "sae", "blocks.1.hook_resid_post", "standard")
    p = run_saegap(["plan", "--model", world["model_dir"], "--sae", s["dir"], "--tokens", world["tokens_npy"],
                    "--interventions", "sae", "--ranks", "1", "--threads-per-rank", "1"])
    text = p.stdout.decode()
    clean = float(text.split("clean passes ")[1].split(",")[0])
    D, F, L, T = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_hidden_layers"]), CTX
    H, KV, dh = int(c["num_attention_heads"]), int(c["num_key_value_heads"]), int(c["head_dim"])
    Vp = (int(c["vocab_size"]) + 63) // 64 * 64
    W, Z = (H + 2 * KV) * dh, H * dh
    want = N_CTX * T * (L * (2 * D * W + 2 * Z * D + 6 * D * F + 4 * T * Z) + 2 * D * Vp)
    assert abs(clean / want - 1) < 5e-3, (clean, want, text)


@pytest.mark.parametrize("damage,needle", [
    ("missing-tensor", "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("wrong-shape", "tensor 'model.layers.0.self_attn.k_proj.weight' has shape"),
    ("kv-heads", "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("bias", "attention_bias is true"),
    ("layer-types", "layer_types"),
])
def test_gemma2_refusals_name_the_problem(world, tmp_path, run_saegap, damage, needle):
    """A damaged Gemma-2 folder ends with one message naming the file and the tensor or key."""
    mdir = str(tmp_path / "m")
    cfg_edit = {"kv-heads": {"num_key_value_heads": 3}, "bias": {"attention_bias": True},
                "layer-types": {"layer_types": ["full_attention", "sliding_attention"]}}.get(damage)
    build_model(mdir, seed=5)
    if cfg_edit:
        p = os.path.join(mdir, "config.json")
        c = json.load(open(p))
        c.update(cfg_edit)
        json.dump(c, open(p, "w"))
    if damage in ("missing-tensor", "wrong-shape"):
        import saegap_fixtures as fx
        r = np.random.default_rng(0)
        _, params = gr.load_model(mdir)
        if damage == "missing-tensor":  # renamed: the count still matches, the name does not
            params["model.layers.1.mlp.up.weight"] = params.pop("model.layers.1.mlp.up_proj.weight")
        else:
            params["model.layers.0.self_attn.k_proj.weight"] = r.standard_normal((48, 48))
        fx.write_safetensors(os.path.join(mdir, "model.safetensors"), params, dtype="F32")
    out = tmp_path / "d.h5"
    p = run_saegap(["dump", "--model", mdir, "--tokens", world["tokens_npy"], "--sites", "blocks.0.hook_resid_pre",
                    "--out", str(out)], check=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and needle in err.splitlines()[-1] and mdir in err.splitlines()[-1], err
    assert not out.exists()


# ---- SAELens's special tokens from the tokenizer files (issue 26.8) ---------------------------

# Gemma-2's tokenizer: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, turn markers 106 and 107
GEMMA_SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 106, "<end_of_turn>": 107}
# what sae_lens/util.py get_special_token_ids(tokenizer) gives for it (v6, 91ca16c): the *_token_id
# attributes (bos, eos, unk, pad; mask, sep and cls are None) and special_tokens_map's values
# (additional_special_tokens: the turn markers). <mask> (4) is an added token marked special that
# no key names: not one of them.
SAELENS_SPECIAL_IDS = [0, 1, 2, 3, 106, 107]


def _added(content, special=True):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def write_gemma_tokenizer(dir, files=("special_tokens_map.json", "tokenizer_config.json", "tokenizer.json")):
    """Gemma-2's three tokenizer files, as the Hub's google/gemma-2-2b has them (cut to the ids
    that matter: the vocabulary is the fixture's 211 entries)."""
    toks = dict(GEMMA_SPECIAL, **{"<mask>": 4})
    smap = {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "bos_token": _added("<bos>"), "eos_token": _added("<eos>"), "pad_token": _added("<pad>"),
            "unk_token": _added("<unk>")}
    tcfg = {"add_bos_token": True, "add_eos_token": False, "tokenizer_class": "GemmaTokenizer",
            "added_tokens_decoder": {str(i): _added(c) for c, i in sorted(toks.items(), key=lambda kv: kv[1])},
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "bos_token": "<bos>",
            "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
    vocab = {c: i for c, i in toks.items()}
    vocab.update({"tok%d" % i: i for i in range(211) if i not in toks.values()})
    tjson = {"version": "1.0", "added_tokens": [dict(_added(c), id=i) for c, i in sorted(toks.items(), key=lambda kv: kv[1])],
             "model": {"type": "BPE", "byte_fallback": True, "vocab": vocab, "merges": []}}
    for name, obj in (("special_tokens_map.json", smap), ("tokenizer_config.json", tcfg), ("tokenizer.json", tjson)):
        if name in files:
            with open(os.path.join(dir, name), "w") as f:
                json.dump(obj, f, indent=2)


@pytest.fixture(scope="module")
def special_world(world, tmp_path_factory):
    """The world's model in a folder with Gemma-2's tokenizer files, and contexts that hold <unk>,
    <mask>, the turn markers, eos and pad among ordinary tokens."""
    base = tmp_path_factory.mktemp("gemma_special")
    mdir = str(base / NAME)
    os.makedirs(mdir)
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(world["model_dir"], f), os.path.join(mdir, f))
    write_gemma_tokenizer(mdir)
    tok = world["tokens"].copy()
    r = np.random.default_rng(7)
    for c in range(N_CTX):
        pos = r.choice(np.arange(2, CTX - 1), size=6, replace=False)
        tok[c, pos] = [3, 106, 107, 4, 1, 0]
    tok_npy = str(base / "tokens.npy")
    write_tokens_npy(tok_npy, tok.astype(np.int32))
    fwd = gr.forward(world["config"], world["params"], tok, basis="raw")[0]
    return dict(world, model_dir=mdir, tokens=tok, tokens_npy=tok_npy, fwd=fwd, meas=tok != 2)


@pytest.mark.parametrize("site,arch", [("blocks.1.hook_resid_post", "standard"), ("blocks.0.attn.hook_z", "jumprelu")])
def test_scores_leave_out_every_special_token_of_the_tokenizer(special_world, tmp_path, run_saegap, gemma_reference,
                                                                site, arch):
    """kl_div_score, ce_loss_score and their parts leave out every special token of the tokenizer
    (<unk> and the turn markers too), as SAELens's get_special_token_ids does, not only
    config.json's bos/eos/pad; the file says which ids and where they came from."""
    w = special_world
    s = build_sae(w, tmp_path / "sae", site, arch)
    out = tmp_path / "out.h5"
    run_saegap(["run", "--model", w["model_dir"], "--sae", s["dir"], "--tokens", w["tokens_npy"], "--out", str(out),
                "--interventions", DET, "--threads-per-rank", "1", "--quiet"])
    res = read_result(str(out))
    ref = gemma_reference.reference_run(None, [s["dir"]], w["tokens"], model=w["model"], basis="raw",
                                        special_ids=SAELENS_SPECIAL_IDS)
    check_against_reference(res, ref, rr.DETERMINISTIC, w["tokens"], what=site)
    a = res["attrs"]
    assert str(np.asarray(a["score_special_token_ids"]).astype(str)) == "0,1,2,3,106,107", a["score_special_token_ids"]
    src = a["score_special_token_source"]
    src = src.decode() if isinstance(src, bytes) else str(src)
    assert "special_tokens_map.json" in src and "tokenizer_config.json" in src, src
    # the old rule (config.json's bos, eos, pad: 2, 1, 0) gives other scores than the tolerance allows
    old = gemma_reference.reference_run(None, [s["dir"]], w["tokens"], model=w["model"], basis="raw")
    new_a, old_a = ref["sites"][site]["attrs"], old["sites"][site]["attrs"]
    moved = [k for k in ("kl_div_score", "ce_loss_score", "kl_div_with_sae", "kl_div_with_ablation")
             if abs(new_a[k] - old_a[k]) > 1e-3 * max(abs(new_a[k]), 1e-6)]
    assert moved, (new_a, old_a)


def test_special_tokens_in_info_and_each_file_layout(special_world, tmp_path, run_saegap):
    """`saegap info` names the ids and their source for every layout of the tokenizer files; a
    folder without them keeps config.json's bos, eos, pad and says so (info, the file, a warning)."""
    w = special_world
    cases = [(("special_tokens_map.json", "tokenizer_config.json", "tokenizer.json"), "0,1,2,3,106,107",
              "special_tokens_map.json and tokenizer_config.json"),
             (("special_tokens_map.json", "tokenizer.json"), "0,1,2,3,106,107", "special_tokens_map.json, ids from"),
             (("tokenizer_config.json",), "0,1,2,3,106,107", "tokenizer_config.json"),
             (("tokenizer.json",), "0,1,2,3,4,106,107", "marks special"),
             ((), "0,1,2", "no tokenizer files")]
    for i, (files, ids, source) in enumerate(cases):
        mdir = str(tmp_path / ("m%d" % i))
        os.makedirs(mdir)
        for f in ("config.json", "model.safetensors"):
            os.symlink(os.path.join(world_dir(w), f), os.path.join(mdir, f))
        write_gemma_tokenizer(mdir, files)
        text = run_saegap(["info", mdir]).stdout.decode()
        line = [l for l in text.splitlines() if "special tokens of SAELens's scores" in l]
        assert line and (": %s (" % ids) in line[0] and source in line[0], (files, text)
    # a run on the folder without tokenizer files: the fallback's ids, its source and one warning
    s = build_sae(w, tmp_path / "sae", "blocks.1.hook_resid_post", "standard")
    out = tmp_path / "o.h5"
    p = run_saegap(["run", "--model", mdir, "--sae", s["dir"], "--tokens", w["tokens_npy"], "--out", str(out),
                    "--interventions", "sae,zero_ablation", "--threads-per-rank", "1"])
    err = p.stderr.decode()
    assert err.count("no tokenizer files") == 1 and "score_special_token_source" in err, err
    with h5py.File(out, "r") as f:
        assert f.attrs["score_special_token_ids"] == "0,1,2"
        assert "no tokenizer files" in f.attrs["score_special_token_source"]
    # the tokenizer files added afterwards: another set of special tokens is another job
    write_gemma_tokenizer(mdir)
    p = run_saegap(["run", "--model", mdir, "--sae", s["dir"], "--tokens", w["tokens_npy"], "--out", str(out),
                    "--interventions", "sae,zero_ablation", "--threads-per-rank", "1", "--resume"], check=False)
    err = p.stderr.decode().strip()
    assert p.returncode == 1 and "score_special_token_ids is '0,1,2' in the file but '0,1,2,3,106,107' now" in err, err


def world_dir(w):
    """The folder the fixture's config.json and weights really live in."""
    return os.path.dirname(os.path.realpath(os.path.join(w["model_dir"], "config.json")))


@pytest.mark.parametrize("damage,file,needle", [
    ("not-json", "tokenizer_config.json", "not valid JSON"),
    ("bos-number", "special_tokens_map.json", "bos_token is 5: neither a token string"),
    ("additional-not-list", "special_tokens_map.json", "additional_special_tokens is not a list"),
    ("bad-id", "tokenizer.json", "added_tokens: id -1 is not a non-negative integer"),
    ("decoder-key", "tokenizer_config.json", "added_tokens_decoder: key \"x\" of '<bos>' is not an id"),
])
def test_malformed_tokenizer_files_are_refused_by_name(special_world, tmp_path, run_saegap, damage, file, needle):
    w = special_world
    mdir = str(tmp_path / "m")
    os.makedirs(mdir)
    for f in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(world_dir(w), f), os.path.join(mdir, f))
    write_gemma_tokenizer(mdir)
    p = os.path.join(mdir, file)
    if damage == "not-json":
        open(p, "w").write('{"bos_token": "<bos>",')
    else:
        d = json.load(open(p))
        if damage == "bos-number":
            d["bos_token"] = 5
        elif damage == "additional-not-list":
            d["additional_special_tokens"] = "<start_of_turn>"
        elif damage == "bad-id":
            os.remove(os.path.join(mdir, "tokenizer_config.json"))
            d["added_tokens"][2]["id"] = -1
        elif damage == "decoder-key":
            d["added_tokens_decoder"] = {"x": _added("<bos>")}
        json.dump(d, open(p, "w"))
    out = tmp_path / "o.h5"
    r = run_saegap(["info", mdir], check=False)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and needle in err.splitlines()[-1] and p in err.splitlines()[-1], err
    r = run_saegap(["dump", "--model", mdir, "--tokens", w["tokens_npy"], "--sites", "hook_embed", "--out", str(out)],
                   check=False)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and needle in err.splitlines()[-1] and "saegap: error:" in err, err
    assert not out.exists()
