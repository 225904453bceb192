"""How `saegap run` makes its contexts (issue 26; docs/contexts.md), against an
independent construction written from SAELens's own functions
(sae_lens/tokenization_and_batching.py, v6: `_add_tokens_to_batch`,
`concat_and_batch_sequences`) and its defaults (`handle_config_defaulting`: a
cfg without prepend_bos means true), not from the C code.

    SAEGAP_BIN=build/saegap /usr/bin/python3 -m pytest -q tests/python/test_contexts.py

Checked: a flat stream (nanoGPT uint16 and llm.c .bin) cut as SAELens cuts it,
BOS prepended, never doubled, separators equal to BOS (GPT-2's EOT, Pythia's 0)
and not (Gemma-2: BOS 2, EOS 1), the trailing partial context dropped with a
warning; prepend_bos false; a legacy cfg without the key; --prepend-bos and
--ctx overriding the cfgs with one warning; SAEs that disagree refused naming
both folders and the option; 2-D files (.npy, .h5) used as stored, with one
warning when their rows disagree with the cfgs; the attributes that record
it; --resume of a file written before context_source; info and plan; and the
per-token KL on contexts cut this way against the float64 reference.
"""

import json
import os
import re
import shutil
import zlib

import h5py
import numpy as np
import pytest

import gpt2_reference as g2
import run_reference as rr
from saegap_fixtures import (make_gpt2_model, write_tokens_bin, write_tokens_h5, write_tokens_llmc,
                             write_tokens_npy)
from sae_fixtures import make_sae

VOCAB, N_POS, D_MODEL = 211, 40, 48
CTX = 24
MARGIN = 3e-5


# ================================================================ the reference: SAELens's functions

def _add_tokens_to_batch(batch, tokens, offset, context_size, is_start_of_sequence,
                         begin_batch_token_id=None, begin_sequence_token_id=None,
                         sequence_separator_token_id=None):
    """sae_lens.tokenization_and_batching._add_tokens_to_batch, with lists."""
    prefix = []
    first = tokens[offset]
    if is_start_of_sequence and begin_sequence_token_id is not None:
        if first != begin_sequence_token_id:
            prefix.insert(0, begin_sequence_token_id)
            first = begin_sequence_token_id
    if batch is None:
        if begin_batch_token_id is not None and first != begin_batch_token_id:
            prefix.insert(0, begin_batch_token_id)
            first = begin_batch_token_id
        needed = max(context_size - len(prefix), 0)
        return prefix[:context_size] + list(tokens[offset:offset + needed]), offset + needed
    if sequence_separator_token_id is not None and first != sequence_separator_token_id:
        prefix.insert(0, sequence_separator_token_id)
        first = sequence_separator_token_id
    needed = max(context_size - len(batch) - len(prefix), 0)
    prefix_needed = max(context_size - len(batch), 0)
    return batch + prefix[:prefix_needed] + list(tokens[offset:offset + needed]), offset + needed


def concat_and_batch_sequences(sequences, context_size, begin_batch_token_id=None,
                               begin_sequence_token_id=None, sequence_separator_token_id=None):
    """sae_lens.tokenization_and_batching.concat_and_batch_sequences (concatenating);
    returns (contexts, how many tokens of the sequences went into the unfinished
    last batch, which SAELens never yields)."""
    out, batch, taken = [], None, 0
    for tokens in sequences:
        tokens = [int(t) for t in tokens]
        offset, first = 0, True
        while len(tokens) - offset > 0:
            batch, new_offset = _add_tokens_to_batch(batch, tokens, offset, context_size, first,
                                                     begin_batch_token_id, begin_sequence_token_id,
                                                     sequence_separator_token_id)
            taken += min(new_offset, len(tokens)) - offset   # SAELens overshoots at the end
            offset = new_offset
            first = False
            if len(batch) == context_size:
                out.append(batch)
                batch, taken = None, 0
    return np.array(out, dtype=np.int64).reshape(-1, context_size), taken


def saelens_stream_contexts(stream, ctx, bos, prepend_bos):
    """ActivationsStore's call for a token stream given as one sequence:
    begin_batch_token_id = sequence_separator_token_id = BOS if prepend_bos."""
    b = bos if prepend_bos else None
    return concat_and_batch_sequences([stream], ctx, begin_batch_token_id=b,
                                      sequence_separator_token_id=b)


def documents(rng, n_docs, lo, hi, avoid):
    """Random documents of ids in [3, VOCAB-1) never equal to an id in avoid."""
    docs = []
    for _ in range(n_docs):
        d = rng.integers(3, VOCAB - 1, size=int(rng.integers(lo, hi)))
        d = np.where(np.isin(d, list(avoid)), 5, d)
        docs.append(d)
    return docs


def nanogpt_stream(docs, eos):
    """nanoGPT's prepare.py: each document followed by EOT."""
    return np.concatenate([np.append(d, eos) for d in docs])


def llmc_stream(docs, eos):
    """llm.c's fineweb.py: each document preceded by EOT."""
    return np.concatenate([np.insert(d, 0, eos) for d in docs])


# ---- the reference on its own (no C)

def test_reference_is_saelens_on_documents_when_separator_is_bos():
    """A stream whose documents are separated by BOS, cut as one sequence, gives
    the contexts SAELens makes from the documents themselves (text datasets:
    BOS at each batch start and between documents), at every offset. (nanoGPT's
    stream ends with one more EOT, which can fill the last context: left out here.)"""
    rng = np.random.default_rng(1)
    bos = VOCAB - 1
    for trial in range(40):
        docs = documents(rng, 12, 1, 60, {bos})
        stream = nanogpt_stream(docs, bos)[:-1]
        for ctx in (2, 3, 7, 24):
            got, _ = saelens_stream_contexts(stream, ctx, bos, True)
            want, _ = concat_and_batch_sequences(docs, ctx, bos, None, bos)
            assert np.array_equal(got, want), (trial, ctx)


def test_reference_never_doubles_and_drops_the_tail():
    bos = 7
    ctx, rest = saelens_stream_contexts([7, 1, 2, 7, 7, 3, 4, 5, 6], 3, bos, True)
    # [7 1 2] starts with the stream's BOS; [7 7 3]: the stream's BOS kept, none added;
    # [7 4 5]: one added; 6 is left over (dropped)
    assert ctx.tolist() == [[7, 1, 2], [7, 7, 3], [7, 4, 5]] and rest == 1
    ctx, rest = saelens_stream_contexts([1, 2, 3, 4, 5], 3, bos, True)
    assert ctx.tolist() == [[7, 1, 2], [7, 3, 4]] and rest == 1
    ctx, rest = saelens_stream_contexts([1, 2, 3, 4, 7, 8], 3, bos, True)
    assert ctx.tolist() == [[7, 1, 2], [7, 3, 4]] and rest == 2   # the stream's own BOS is unused too
    ctx, rest = saelens_stream_contexts([1, 2, 3, 4, 5], 2, None, False)
    assert ctx.tolist() == [[1, 2], [3, 4]] and rest == 1


# ================================================================ fixtures

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One tiny GPT-2, with three config.json id conventions (the cut reads only
    bos_token_id): GPT-2's (BOS = EOS = 210), Pythia's (BOS = EOS = 0), Gemma-2's
    (BOS 2, EOS 1)."""
    base = tmp_path_factory.mktemp("contexts")
    src = str(base / "source")
    make_gpt2_model(src, n_layer=2, n_head=4, n_embd=D_MODEL, n_positions=N_POS, vocab_size=VOCAB, seed=5)
    out = {}
    for name, bos, eos in (("gpt2", VOCAB - 1, VOCAB - 1), ("pythia", 0, 0), ("gemma", 2, 1)):
        d = str(base / name)
        shutil.copytree(src, d)
        with open(os.path.join(d, "config.json")) as f:
            c = json.load(f)
        c["bos_token_id"], c["eos_token_id"] = bos, eos
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        out[name] = {"dir": d, "bos": bos, "eos": eos}
    out["base"] = base
    return out


def sae_dir(base, name, hook="blocks.1.hook_resid_pre", generation="v6", prepend_bos=True,
            context_size=CTX, x_sample=None, seed=0):
    """An SAELens SAE whose cfg records prepend_bos (None: key left out) and context_size."""
    def edit(cfg):
        where = cfg["metadata"] if "metadata" in cfg else cfg
        for k in ("prepend_bos", "context_size"):
            cfg.pop(k, None)
            where.pop(k, None)
        if prepend_bos is not None:
            where["prepend_bos"] = prepend_bos
        if context_size is not None:
            where["context_size"] = context_size
        return cfg
    d = str(base / name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    return make_sae(d, D_MODEL, 2 * D_MODEL, hook, generation=generation, model_name="",
                    cfg_edit=edit, seed=seed, x_sample=x_sample)


def run(run_saegap, model, saes, tokens, out, extra=(), check=True):
    a = ["run", "--model", model, "--tokens", tokens, "--out", str(out), "--interventions", "sae",
         "--threads-per-rank", "1"]
    for s in saes:
        a += ["--sae", s]
    return run_saegap(a + [str(e) for e in extra], check=check)


def result(path):
    with h5py.File(path, "r") as f:
        return {"tokens": f["tokens"][()], "attrs": dict(f.attrs),
                "sites": {s: dict(f["sites"][s].attrs) for s in f["sites"]}}


def astr(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def warnings_of(p):
    return [l for l in p.stderr.decode().splitlines() if l.startswith("saegap: warning:")]


# ================================================================ the cut of a flat stream

@pytest.mark.parametrize("family", ["gpt2", "pythia", "gemma"])
@pytest.mark.parametrize("layout", ["nanogpt", "llmc"])
def test_flat_stream_cut_as_saelens(run_saegap, models, tmp_path, family, layout):
    m = models[family]
    bos, eos = m["bos"], m["eos"]
    rng = np.random.default_rng(zlib.crc32((family + layout).encode()))
    docs = documents(rng, 30, 1, 50, {bos, eos})
    # a document that starts with BOS (Gemma's stream: BOS not doubled there either)
    docs[3] = np.insert(docs[3], 0, bos)
    stream = nanogpt_stream(docs, eos) if layout == "nanogpt" else llmc_stream(docs, eos)
    want, rest = saelens_stream_contexts(stream, CTX, bos, True)
    if rest == 0:   # leave a partial context
        stream = np.append(stream, 5)
        want, rest = saelens_stream_contexts(stream, CTX, bos, True)
    assert rest > 0
    tok = str(tmp_path / "t.bin")
    (write_tokens_bin if layout == "nanogpt" else write_tokens_llmc)(tok, stream)
    s = sae_dir(tmp_path, "sae")
    p = run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "r.h5")
    r = result(tmp_path / "r.h5")
    assert np.array_equal(r["tokens"], want), "contexts differ from SAELens's cut"
    assert (r["tokens"][:, 0] == bos).all()
    if family != "gemma":
        # never doubled: no context starts with two BOS unless the stream has them
        assert not (r["tokens"][:, 1] == bos).any()
    else:
        assert (r["tokens"] == eos).any(), "Gemma-like stream: EOS separators stay"
    w = warnings_of(p)
    tail = [x for x in w if "trailing" in x]
    assert len(tail) == 1 and (" %d trailing tokens" % rest) in tail[0], w
    assert int(r["attrs"]["prepend_bos"]) == 1
    assert astr(r["attrs"]["context_source"]) == "flat stream cut with BOS"
    sa = next(iter(r["sites"].values()))
    assert int(sa["prepend_bos"]) == 1 and int(sa["context_size"]) == CTX


def test_flat_stream_without_bos(run_saegap, models, tmp_path):
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(3), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    s = sae_dir(tmp_path, "sae", prepend_bos=False)
    run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "r.h5")
    r = result(tmp_path / "r.h5")
    want, _ = saelens_stream_contexts(stream, CTX, m["bos"], False)
    assert np.array_equal(r["tokens"], want)
    assert int(r["attrs"]["prepend_bos"]) == 0
    assert astr(r["attrs"]["context_source"]) == "flat stream cut without BOS"
    assert int(next(iter(r["sites"].values()))["prepend_bos"]) == 0


def test_legacy_cfg_without_prepend_bos_means_true(run_saegap, models, tmp_path):
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(4), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    s = sae_dir(tmp_path, "sae", generation="legacy", prepend_bos=None, context_size=16)
    assert "prepend_bos" not in s["cfg"]
    run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "r.h5")
    r = result(tmp_path / "r.h5")
    want, _ = saelens_stream_contexts(stream, 16, m["bos"], True)
    assert np.array_equal(r["tokens"], want)
    sa = next(iter(r["sites"].values()))
    assert int(sa["prepend_bos"]) == -1 and int(sa["context_size"]) == 16
    assert "handle_config_defaulting" in astr(sa["context_convention"])


def test_options_override_with_one_warning(run_saegap, models, tmp_path):
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(5), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    s = sae_dir(tmp_path, "sae")
    p = run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "a.h5", ["--prepend-bos", "no"])
    w = [x for x in warnings_of(p) if "--prepend-bos" in x]
    assert len(w) == 1 and s["dir"] in w[0], warnings_of(p)
    r = result(tmp_path / "a.h5")
    assert np.array_equal(r["tokens"], saelens_stream_contexts(stream, CTX, m["bos"], False)[0])
    assert int(r["attrs"]["prepend_bos"]) == 0 and "--prepend-bos" in astr(r["attrs"]["prepend_bos_source"])
    p = run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "b.h5", ["--ctx", "10"])
    w = [x for x in warnings_of(p) if "--ctx" in x]
    assert len(w) == 1 and "--ctx 10" in w[0] and str(CTX) in w[0], warnings_of(p)
    assert np.array_equal(result(tmp_path / "b.h5")["tokens"], saelens_stream_contexts(stream, 10, m["bos"], True)[0])
    # the job file's key
    job = tmp_path / "j.job"
    job.write_text("prepend-bos = no\n")
    run_saegap(["run", str(job), "--model", m["dir"], "--sae", s["dir"], "--tokens", tok, "--out",
                str(tmp_path / "c.h5"), "--interventions", "sae", "--threads-per-rank", "1"])
    assert int(result(tmp_path / "c.h5")["attrs"]["prepend_bos"]) == 0


def test_disagreeing_saes_refused(run_saegap, models, tmp_path):
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(6), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    tok2 = write_tokens_npy(str(tmp_path / "t.npy"), saelens_stream_contexts(stream, CTX, m["bos"], True)[0])
    a = sae_dir(tmp_path, "a", hook="blocks.0.hook_resid_pre")
    b = sae_dir(tmp_path, "b", hook="blocks.1.hook_resid_pre", prepend_bos=False)
    c = sae_dir(tmp_path, "c", hook="blocks.1.hook_resid_pre", context_size=16)
    for saes, option in (([a, b], "--prepend-bos"), ([a, c], "--ctx")):
        out = tmp_path / ("r%s.h5" % option)
        p = run(run_saegap, m["dir"], [x["dir"] for x in saes], tok, out, check=False)
        err = p.stderr.decode()
        assert p.returncode == 1 and not out.exists(), err
        lines = [l for l in err.splitlines() if l.startswith("saegap: error:")]
        assert len(lines) == 1 and saes[0]["dir"] in lines[0] and saes[1]["dir"] in lines[0] and option in lines[0], err
    # settled by the option
    run(run_saegap, m["dir"], [a["dir"], b["dir"]], tok, tmp_path / "s1.h5", ["--prepend-bos", "yes"])
    run(run_saegap, m["dir"], [a["dir"], c["dir"]], tok, tmp_path / "s2.h5", ["--ctx", "20"])
    # on a 2-D file too: SAELens uses a pretokenized row's first context_size tokens
    p = run(run_saegap, m["dir"], [a["dir"], c["dir"]], tok2, tmp_path / "s3.h5", check=False)
    assert p.returncode == 1 and "--ctx" in p.stderr.decode() and c["dir"] in p.stderr.decode(), p.stderr.decode()
    run(run_saegap, m["dir"], [a["dir"], c["dir"]], tok2, tmp_path / "s4.h5", ["--ctx", "16"])
    p = run(run_saegap, m["dir"], [a["dir"]], tok, tmp_path / "bad.h5", ["--prepend-bos", "maybe"], check=False)
    assert p.returncode == 1 and "--prepend-bos" in p.stderr.decode()


# ================================================================ 2-D files: rows as stored

@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_rows_as_stored_and_warned(run_saegap, models, tmp_path, fmt):
    m = models["gpt2"]
    bos = m["bos"]
    rows = np.random.default_rng(7).integers(3, VOCAB - 1, size=(6, 16))
    rows[:, 0] = bos
    rows[4, 0] = 9                     # one row without BOS
    write = write_tokens_npy if fmt == "npy" else write_tokens_h5
    tok = write(str(tmp_path / ("t." + fmt)), rows)
    s = sae_dir(tmp_path, "sae")
    p = run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "a.h5")
    r = result(tmp_path / "a.h5")
    assert np.array_equal(r["tokens"], rows)
    assert astr(r["attrs"]["context_source"]) == "rows as stored"
    w = [x for x in warnings_of(p) if "position 0" in x]
    assert len(w) == 1 and "row 4" in w[0] and "1 of 6" in w[0], warnings_of(p)
    # consistent rows: no warning
    rows[4, 0] = bos
    tok = write(str(tmp_path / ("u." + fmt)), rows)
    p = run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "b.h5")
    assert not [x for x in warnings_of(p) if "position 0" in x], warnings_of(p)
    # BOS where the cfg says none
    s2 = sae_dir(tmp_path, "sae2", prepend_bos=False)
    p = run(run_saegap, m["dir"], [s2["dir"]], tok, tmp_path / "c.h5")
    w = [x for x in warnings_of(p) if "position 0" in x]
    assert len(w) == 1 and "row 0" in w[0] and "start with" in w[0], warnings_of(p)


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_rows_cut_to_the_cfg_context_size(run_saegap, models, tmp_path, fmt):
    """SAELens's ActivationsStore uses a pretokenized dataset's rows as row[:context_size] and
    refuses rows shorter than context_size: rows of 24 with a cfg of 16 are measured as their
    first 16 tokens (one warning; context_source says so); a cfg of 32 leaves them as stored
    with one warning; --ctx longer than the rows is refused."""
    m = models["gpt2"]
    rows = np.random.default_rng(8).integers(3, VOCAB - 1, size=(5, 24))
    rows[:, 0] = m["bos"]
    write = write_tokens_npy if fmt == "npy" else write_tokens_h5
    tok = write(str(tmp_path / ("t." + fmt)), rows)
    s16 = sae_dir(tmp_path, "s16", context_size=16)
    p = run(run_saegap, m["dir"], [s16["dir"]], tok, tmp_path / "a.h5")
    r = result(tmp_path / "a.h5")
    assert np.array_equal(r["tokens"], rows[:, :16])
    assert astr(r["attrs"]["context_source"]) == "rows cut to their first ctx tokens"
    assert int(r["attrs"]["ctx"]) == 16
    w = [x for x in warnings_of(p) if "cut to their first 16" in x]
    assert len(w) == 1 and "rows of 24" in w[0], warnings_of(p)
    s32 = sae_dir(tmp_path, "s32", context_size=32)
    p = run(run_saegap, m["dir"], [s32["dir"]], tok, tmp_path / "b.h5")
    r = result(tmp_path / "b.h5")
    assert np.array_equal(r["tokens"], rows) and astr(r["attrs"]["context_source"]) == "rows as stored"
    assert len([x for x in warnings_of(p) if "shorter than the contexts of 32" in x]) == 1, warnings_of(p)
    p = run(run_saegap, m["dir"], [s16["dir"]], tok, tmp_path / "c.h5", ["--ctx", "30"], check=False)
    lines = [l for l in p.stderr.decode().splitlines() if l.startswith("saegap: error:")]
    assert p.returncode == 1 and len(lines) == 1 and "--ctx 30" in lines[0] and tok in lines[0], p.stderr.decode()
    # the cut is part of the job: the file resumes only with it
    p = run(run_saegap, m["dir"], [s16["dir"]], tok, tmp_path / "a.h5", ["--resume", "--ctx", "16"])
    p = run(run_saegap, m["dir"], [s32["dir"]], tok, tmp_path / "a.h5", ["--resume"], check=False)
    assert p.returncode == 1, p.stderr.decode()


# ================================================================ KL on these contexts vs float64

def test_kl_on_cut_contexts_matches_reference(run_saegap, models, tmp_path):
    m = models["gpt2"]
    bos = m["bos"]
    stream = nanogpt_stream(documents(np.random.default_rng(8), 10, 5, 40, {bos}), bos)
    want, _ = saelens_stream_contexts(stream, CTX, bos, True)
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    config, params = g2.load_model(m["dir"])
    site = "blocks.1.hook_resid_pre"
    x = g2.forward(config, params, want, basis="processed")[site]
    meas = want != bos
    for seed in range(80):
        s = sae_dir(tmp_path, "sae", x_sample=x[meas], seed=seed)
        if rr.sae_discontinuity_margin(s["cfg"], s["params"], x.reshape(-1, D_MODEL)) >= MARGIN:
            break
    run(run_saegap, m["dir"], [s["dir"]], tok, tmp_path / "r.h5")
    ref = rr.reference_run(m["dir"], [s["dir"]], want, interventions=["sae"])
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert np.array_equal(f["tokens"][()], want)
        got = f["sites"][site]["kl"]["sae"][()].astype(np.float64)
    r = ref["sites"][site]["kl"]["sae"]
    assert np.array_equal(np.isnan(got), np.isnan(r))
    fin = ~np.isnan(r)
    e = np.abs(got[fin] - r[fin]).max() / max(np.abs(r[fin]).max(), 0.05)
    assert e <= 1e-4, e
    # the first position of every context is BOS, so never measured
    assert np.isnan(got[:, 0]).all()


# ================================================================ identity, info, plan

def test_resume_treats_another_cut_as_another_job(run_saegap, models, tmp_path):
    """A file written before context_source existed cut its flat stream without
    BOS: it resumes with that cut and is refused with the BOS cut."""
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(9), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    s = sae_dir(tmp_path, "sae")
    out = tmp_path / "old.h5"
    run(run_saegap, m["dir"], [s["dir"]], tok, out, ["--prepend-bos", "no"])
    with h5py.File(out, "r+") as f:       # as written before the item existed
        for k in ("job_context_source", "context_source", "prepend_bos", "prepend_bos_source"):
            del f.attrs[k]
        f.attrs["complete"] = 0
    p = run(run_saegap, m["dir"], [s["dir"]], tok, out, ["--prepend-bos", "no", "--resume"], check=False)
    assert p.returncode == 0, p.stderr.decode()
    p = run(run_saegap, m["dir"], [s["dir"]], tok, out, ["--resume"], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "different job" in err, err
    # a new file with BOS, resumed without: context_source named when nothing else differs
    rows = np.tile(np.r_[m["bos"], np.arange(3, 3 + CTX - 1)], 4)   # every context already starts with BOS
    tok2 = write_tokens_bin(str(tmp_path / "u.bin"), rows)
    out2 = tmp_path / "new.h5"
    run(run_saegap, m["dir"], [s["dir"]], tok2, out2)
    with h5py.File(out2, "r+") as f:
        f.attrs["complete"] = 0
    p = run(run_saegap, m["dir"], [s["dir"]], tok2, out2, ["--prepend-bos", "no", "--resume"], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "context_source" in err and "flat stream cut with BOS" in err, err


def test_info_and_plan_say_the_cut(run_saegap, models, tmp_path):
    m = models["gpt2"]
    stream = nanogpt_stream(documents(np.random.default_rng(10), 20, 1, 40, {m["bos"]}), m["bos"])
    tok = write_tokens_bin(str(tmp_path / "t.bin"), stream)
    with_bos, rest = saelens_stream_contexts(stream, CTX, m["bos"], True)
    plain, rest0 = saelens_stream_contexts(stream, CTX, m["bos"], False)
    out = run_saegap(["info", tok, "--ctx", CTX, "--model", m["dir"]]).stdout.decode()
    assert ("without BOS (--prepend-bos no, or SAEs whose cfgs say prepend_bos false): %d contexts, %d trailing"
            % (len(plain), rest0)) in out, out
    assert ("%d trailing tokens unused" % rest) in out, out
    assert ("cut with BOS %d (the model's" % m["bos"]) in out and ("%d contexts of BOS + %d stream tokens"
                                                                  % (len(with_bos), CTX - 1)) in out, out
    s = sae_dir(tmp_path, "sae")
    out = run_saegap(["info", s["dir"]]).stdout.decode()
    assert "contexts: prepend_bos true, context_size %d (cfg.json)" % CTX in out, out
    out = run_saegap(["plan", "--model", m["dir"], "--sae", s["dir"], "--tokens", tok, "--ranks", "1"]).stdout.decode()
    assert "contexts: flat stream cut with BOS" in out and ("%d contexts x %d tokens" % (len(with_bos), CTX)) in out, out
    out = run_saegap(["plan", "--model", m["dir"], "--sae", s["dir"], "--tokens", tok, "--ranks", "1",
                      "--prepend-bos", "no"]).stdout.decode()
    assert "contexts: flat stream cut without BOS" in out and ("%d contexts x" % len(plain)) in out, out
