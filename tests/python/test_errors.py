"""User-error tests for `saegap dump`.

Every user error must:
  * exit with a status in 1..127 (no signal, not 255, not 134),
  * print a line starting with ``saegap: error:`` that names the offending
    file / argument / key / tensor / token id / site and the problem,
  * print no sanitizer, segfault, abort or traceback text,
  * finish quickly (a 60 s timeout counts as a hang),
  * leave no output file claiming to be complete (``--out`` absent, or present
    without root attribute ``complete`` == 1),
  * never touch a pre-existing ``--out`` file.

Run from the repository root:
    /usr/bin/python3 -m pytest -q tests/python/test_errors.py
The binary is taken from $SAEGAP_BIN (default /work/main/build/saegap).
"""

import json
import os
import shlex
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import saegap_fixtures as fx  # noqa: E402

SAEGAP_BIN = os.environ.get("SAEGAP_BIN", "/work/main/build/saegap")
SAEGAP_MPIRUN = shlex.split(os.environ.get("SAEGAP_MPIRUN",
                                           "mpirun --oversubscribe --allow-run-as-root"))
TIMEOUT = 60

# Small model used everywhere: 2 layers, n_positions 40, vocab 211.
N_LAYER = 2
N_POSITIONS = 40
VOCAB = 211
CTX = 8
N_CTX = 3
GOOD_SITES = "blocks.0.hook_resid_pre,blocks.1.hook_resid_post"

FORBIDDEN_STDERR = [
    "AddressSanitizer",
    "LeakSanitizer",
    "UndefinedBehaviorSanitizer",
    "runtime error:",
    "Segmentation fault",
    "segfault",
    "SIGSEGV",
    "Abort",          # "Aborted (core dumped)", "Abort trap"
    "MPI_ABORT",
    "core dumped",
    "Traceback",
    "HDF5-DIAG",      # raw HDF5 error stack instead of a saegap message
    "double free",
    "stack smashing",
]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------

def run_saegap(args, cwd=None, np=None):
    if not (os.path.isfile(SAEGAP_BIN) and os.access(SAEGAP_BIN, os.X_OK)):
        pytest.fail(f"saegap binary not found or not executable at {SAEGAP_BIN!r} "
                    "(build it, or set SAEGAP_BIN)", pytrace=False)
    cmd = [SAEGAP_BIN] + [str(a) for a in args]
    if np is not None:
        cmd = SAEGAP_MPIRUN + ["-np", str(np)] + cmd
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, cwd=cwd,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"HANG: no exit within {TIMEOUT}s: {' '.join(cmd)}")
    res.cmd = cmd
    res.err = res.stderr.decode("utf-8", errors="replace")
    res.outtxt = res.stdout.decode("utf-8", errors="replace")
    return res


def describe(res):
    return (f"\ncommand: {' '.join(res.cmd)}\nexit status: {res.returncode}\n"
            f"stderr:\n{res.err}\nstdout (first 2000 chars):\n{res.outtxt[:2000]}")


def output_claims_complete(out):
    """True if `out` exists, is HDF5 and has root attribute complete == 1."""
    if not os.path.exists(out):
        return False
    try:
        with h5py.File(out, "r") as f:
            if "complete" not in f.attrs:
                return False
            v = np.asarray(f.attrs["complete"]).ravel()
            return v.size > 0 and int(v[0]) == 1
    except (OSError, ValueError, TypeError):
        return False


def assert_user_error(res, out, *required, mpi=False):
    """`required`: each item is a string, or a tuple of alternative strings; every
    item must appear (case-insensitively) in some `saegap: error:` line.
    mpi=True: run under mpirun, where MPI_Abort's own banner is tolerated."""
    info = describe(res)
    rc = res.returncode
    assert rc >= 0, f"killed by signal {-rc}" + info
    assert rc != 0, "exit status 0 on a user error" + info
    assert 1 <= rc <= 127, f"exit status {rc} is outside 1..127" + info
    for bad in FORBIDDEN_STDERR:
        if mpi and bad in ("MPI_ABORT",):
            continue
        assert bad not in res.err, f"stderr contains crash text {bad!r}" + info
    err_lines = [ln for ln in res.err.splitlines() if ln.startswith("saegap: error:")]
    assert err_lines, "no line starting with 'saegap: error:' on stderr" + info
    joined = "\n".join(err_lines).lower()
    for item in required:
        alts = item if isinstance(item, tuple) else (item,)
        assert any(str(a).lower() in joined for a in alts), (
            f"the 'saegap: error:' line(s) do not mention any of {alts!r}" + info)
    if out is not None:
        assert not output_claims_complete(out), (
            f"output {out} exists with complete == 1 after an error" + info)


def dump_args(model, tokens, out, sites=GOOD_SITES, extra=()):
    args = ["dump"]
    if model is not None:
        args += ["--model", model]
    if tokens is not None:
        args += ["--tokens", tokens]
    if sites is not None:
        args += ["--sites", sites]
    if out is not None:
        args += ["--out", out]
    return args + list(extra)


# ---- raw safetensors manipulation (independent of the fixture writer) ------------------

def st_read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    return header, data


def st_write_raw(path, header, data, header_bytes=None):
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        f.write(data)


def st_tensors(header):
    """Tensor entries (name -> info) sorted by begin offset."""
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    items.sort(key=lambda kv: kv[1]["data_offsets"][0])
    return items


_ST_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
          "BOOL": "u1"}


def st_load_arrays(path):
    """name -> array, name -> safetensors dtype (values as stored, F32 model)."""
    header, data = st_read(path)
    arrays, dtypes = {}, {}
    for name, info in st_tensors(header):
        b, e = info["data_offsets"]
        arrays[name] = np.frombuffer(data[b:e], dtype=_ST_NP[info["dtype"]]).reshape(
            info["shape"]).copy()
        dtypes[name] = info["dtype"]
    return arrays, dtypes


def full_name(arrays, short):
    """Find the stored name of `short` (with or without 'transformer.' prefix)."""
    for k in arrays:
        if k == short or k == "transformer." + short:
            return k
    raise KeyError(short)


# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------

@pytest.fixture
def model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    fx.make_gpt2_model(str(d), n_layer=N_LAYER, n_head=5, n_embd=60,
                       n_positions=N_POSITIONS, vocab_size=VOCAB, seed=0)
    return d


def good_tokens_array(n=N_CTX, ctx=CTX, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, size=(n, ctx), dtype=np.int64)


@pytest.fixture
def tokens_npy(tmp_path):
    p = tmp_path / "tokens.npy"
    fx.write_tokens_npy(str(p), good_tokens_array())
    return p


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out.h5"


# ----------------------------------------------------------------------------------------
# 0. positive control: the harness can pass
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["npy", "h5", "bin", "llmc"])
def test_positive_control(tmp_path, model, out, fmt):
    toks = good_tokens_array()
    extra = []
    if fmt == "npy":
        p = tmp_path / "tokens.npy"
        fx.write_tokens_npy(str(p), toks)
    elif fmt == "h5":
        p = tmp_path / "tokens.h5"
        fx.write_tokens_h5(str(p), toks)
    elif fmt == "bin":
        p = tmp_path / "tokens.bin"
        fx.write_tokens_bin(str(p), toks.ravel())
        extra = ["--ctx", CTX]
    else:
        p = tmp_path / "tokens_llmc.bin"
        fx.write_tokens_llmc(str(p), toks.ravel())
        extra = ["--ctx", CTX]
    res = run_saegap(dump_args(model, p, out, extra=extra + ["--logits"]))
    info = describe(res)
    assert res.returncode == 0, "valid dump failed" + info
    for bad in FORBIDDEN_STDERR:
        assert bad not in res.err, f"stderr contains {bad!r}" + info
    assert output_claims_complete(out), "output lacks complete == 1" + info
    with h5py.File(out, "r") as f:
        assert f["blocks.0.hook_resid_pre"].shape == (N_CTX, CTX, 60), info
        assert f["blocks.1.hook_resid_post"].shape == (N_CTX, CTX, 60), info
        assert f["logits"].shape == (N_CTX, CTX, VOCAB), info


# ----------------------------------------------------------------------------------------
# 1. model folder
# ----------------------------------------------------------------------------------------

def test_model_folder_missing(tmp_path, tokens_npy, out):
    missing = tmp_path / "no_such_model_dir"
    res = run_saegap(dump_args(missing, tokens_npy, out))
    assert_user_error(res, out, "no_such_model_dir")


@pytest.mark.parametrize("fname", ["config.json", "model.safetensors"])
def test_model_folder_missing_file(model, tokens_npy, out, fname):
    os.remove(model / fname)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, fname)


def test_model_path_is_a_file(tmp_path, tokens_npy, out):
    p = tmp_path / "not_a_dir.txt"
    p.write_text("hello\n")
    res = run_saegap(dump_args(p, tokens_npy, out))
    assert_user_error(res, out, ("not_a_dir.txt", "config.json"))


# ----------------------------------------------------------------------------------------
# 2. config.json
# ----------------------------------------------------------------------------------------

def _edit_config(model, fn):
    cfg_path = model / "config.json"
    cfg = json.loads(cfg_path.read_text())
    fn(cfg)
    cfg_path.write_text(json.dumps(cfg))


def test_config_not_json(model, tokens_npy, out):
    (model / "config.json").write_text('{"n_layer": 2, "n_head": 5, n_embd: ')
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "config.json")


def test_config_missing_key(model, tokens_npy, out):
    _edit_config(model, lambda c: c.pop("n_head"))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "n_head")


@pytest.mark.parametrize("key,value", [
    ("n_layer", "two"),
    ("n_embd", [60]),
    ("vocab_size", 211.5),
    ("n_head", 0),
    ("n_layer", -1),
])
def test_config_wrong_type_or_value(model, tokens_npy, out, key, value):
    _edit_config(model, lambda c: c.__setitem__(key, value))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, key)


def test_config_other_family_named_by_its_architectures_entry(model, tokens_npy, out):
    """A Llama folder (no GPT-2 keys): refused naming the class, not a missing key."""
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
             "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 211, "head_dim": 16}
    (model / "config.json").write_text(json.dumps(llama))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "config.json", "LlamaForCausalLM")


def test_config_gpt_neox_missing_its_keys(model, tokens_npy, out):
    """A GPTNeoXForCausalLM config is read with GPT-NeoX's keys: a missing one is named."""
    neox = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 211, "rotary_pct": 0.25}
    (model / "config.json").write_text(json.dumps(neox))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "config.json", "intermediate_size")


def test_config_n_embd_not_divisible_by_n_head(model, tokens_npy, out):
    _edit_config(model, lambda c: c.__setitem__("n_head", 7))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ("n_head", "n_embd"))


# ----------------------------------------------------------------------------------------
# 3. safetensors container
# ----------------------------------------------------------------------------------------

ST = "model.safetensors"


def test_safetensors_shorter_than_8_bytes(model, tokens_npy, out):
    (model / ST).write_bytes(b"\x10\x00\x00")
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


@pytest.mark.parametrize("declared", ["file_plus_1", "huge"])
def test_safetensors_header_length_too_large(model, tokens_npy, out, declared):
    raw = (model / ST).read_bytes()
    n = len(raw) - 8 + 1 if declared == "file_plus_1" else (1 << 63) + 17
    (model / ST).write_bytes(struct.pack("<Q", n) + raw[8:])
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


def test_safetensors_header_not_json(model, tokens_npy, out):
    header, data = st_read(model / ST)
    hb = json.dumps(header).encode()
    bad = b"{not json at all" + b" " * max(0, len(hb) - 16)
    st_write_raw(model / ST, None, data, header_bytes=bad)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


def test_safetensors_header_not_object(model, tokens_npy, out):
    _, data = st_read(model / ST)
    st_write_raw(model / ST, None, data, header_bytes=b"[1, 2, 3]")
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


def test_safetensors_data_truncated(model, tokens_npy, out):
    raw = (model / ST).read_bytes()
    (model / ST).write_bytes(raw[:-13])
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


@pytest.mark.parametrize("how", ["beyond_end", "begin_after_end", "overflow"])
def test_safetensors_offsets_outside_data(model, tokens_npy, out, how):
    header, data = st_read(model / ST)
    name, info = st_tensors(header)[-1]
    b, e = info["data_offsets"]
    if how == "beyond_end":
        info["data_offsets"] = [b + 4096, e + 4096]
    elif how == "begin_after_end":
        info["data_offsets"] = [e, b]
    else:
        info["data_offsets"] = [2 ** 64 - 8, 2 ** 64 - 8 + (e - b)]
    st_write_raw(model / ST, header, data)
    res = run_saegap(dump_args(model, tokens_npy, out))
    short = name.replace("transformer.", "")
    assert_user_error(res, out, ST, short)


def test_safetensors_overlapping_tensors(model, tokens_npy, out):
    header, data = st_read(model / ST)
    items = st_tensors(header)
    (name_a, _), (name_b, info_b) = items[-2], items[-1]
    b, e = info_b["data_offsets"]
    info_b["data_offsets"] = [b - 4, e - 4]   # overlaps the previous tensor by 4 bytes
    st_write_raw(model / ST, header, data[:-4])   # no gap, every byte covered
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST, (name_a.replace("transformer.", ""),
                                     name_b.replace("transformer.", ""), "overlap"))


def test_safetensors_size_disagrees_with_shape(model, tokens_npy, out):
    header, data = st_read(model / ST)
    name = full_name(dict(st_tensors(header)), "ln_f.weight")
    shape = header[name]["shape"]
    header[name]["shape"] = [shape[0] + 1]     # offsets unchanged: 4 bytes short
    st_write_raw(model / ST, header, data)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "ln_f.weight")


def test_safetensors_unknown_dtype(model, tokens_npy, out):
    header, data = st_read(model / ST)
    name = full_name(dict(st_tensors(header)), "h.0.ln_2.bias")
    header[name]["dtype"] = "Q3_K"
    st_write_raw(model / ST, header, data)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ("Q3_K", "h.0.ln_2.bias"))


def test_safetensors_entry_missing_field(model, tokens_npy, out):
    header, data = st_read(model / ST)
    name = full_name(dict(st_tensors(header)), "h.0.ln_2.bias")
    del header[name]["data_offsets"]
    st_write_raw(model / ST, header, data)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ("h.0.ln_2.bias", "data_offsets"))


# ----------------------------------------------------------------------------------------
# 4. tensors vs config
# ----------------------------------------------------------------------------------------

def _rewrite_model(model, fn):
    arrays, dtypes = st_load_arrays(model / ST)
    for k, dt in dtypes.items():      # work on float values, write back in the stored dtype
        if dt == "BF16":
            arrays[k] = fx.bf16_bits_to_f32(arrays[k])
        elif dt == "F16":
            arrays[k] = arrays[k].astype(np.float32)
    fn(arrays)
    dtypes = {k: v for k, v in dtypes.items() if k in arrays}
    os.remove(model / ST)
    fx.write_safetensors(str(model / ST), arrays, dtype="F32", dtypes=dtypes)


def test_missing_tensor(model, tokens_npy, out):
    _rewrite_model(model, lambda a: a.pop(full_name(a, "h.1.mlp.c_fc.bias")))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "h.1.mlp.c_fc.bias")


def _family_model(tmp_path, family):
    """A 2-layer model of `family` as its fixture writes it -> (folder, config, {stored name:
    float64 values}, the embedding and layer prefixes write_checkpoint splits shards by). GPT-2's
    causal-mask buffers are left out, as transformers >= 4.4x saves the file: the file then holds
    exactly the tensors the config needs."""
    d = tmp_path / ("model_" + family)
    if family == "gpt2":
        fx.make_gpt2_model(str(d), n_layer=N_LAYER, n_head=5, n_embd=60, n_positions=N_POSITIONS,
                           vocab_size=VOCAB, seed=0)
        arrays, _ = st_load_arrays(d / ST)
        tensors = {k: np.asarray(v, np.float64) for k, v in arrays.items()
                   if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        pre = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
        prefixes = (pre + "wte.", pre + "h.")
    else:
        import gemma_fixtures
        import neox_fixtures
        if family == "pythia":
            made = neox_fixtures.make_pythia_model(str(d), n_layer=N_LAYER)
            prefixes = ("gpt_neox.embed_in.", "gpt_neox.layers.")
        else:
            made = gemma_fixtures.make_gemma2_model(str(d), n_layer=N_LAYER)
            prefixes = ("model.embed_tokens.", "model.layers.")
        tensors = {k: np.asarray(v, np.float64) for k, v in made["params"].items()}
    with open(d / "config.json") as f:
        config = json.load(f)
    return d, config, tensors, prefixes


@pytest.mark.parametrize("family,sharded,missing", [
    ("gpt2", False, "h.1.mlp.c_proj.bias"),
    ("gpt2", True, "h.0.ln_1.weight"),
    ("pythia", False, "gpt_neox.layers.1.mlp.dense_4h_to_h.bias"),
    ("pythia", True, "gpt_neox.final_layer_norm.weight"),
    ("gemma2", False, "model.layers.1.post_feedforward_layernorm.weight"),
    ("gemma2", True, "model.norm.weight"),
])
def test_missing_tensor_named_in_every_family(tmp_path, tokens_npy, out, family, sharded, missing):
    """Issue 26.9: a file that holds one tensor fewer than the config needs names the tensor it
    lacks (it said only "declares 2 layers (28 tensors) but the file holds 27 tensors"), for each
    family, in a single file and in a sharded checkpoint (absent from its shard and its index)."""
    d, config, tensors, (embed_prefix, layers_prefix) = _family_model(tmp_path, family)
    tensors.pop(full_name(tensors, missing))
    for name in [ST, fx.INDEX_NAME, *fx.SHARD_NAMES]:
        if (d / name).exists():
            os.remove(d / name)
    fx.write_checkpoint(str(d), config, tensors, {k: "F32" for k in tensors}, sharded, embed_prefix,
                        layers_prefix, N_LAYER)
    res = run_saegap(dump_args(d, tokens_npy, out))
    assert_user_error(res, out, missing, fx.INDEX_NAME if sharded else ST)


@pytest.mark.parametrize("family,first_absent", [
    ("gpt2", "h.2.ln_1.weight"),
    ("pythia", "gpt_neox.layers.2.input_layernorm.weight"),
    ("gemma2", "model.layers.2.input_layernorm.weight"),
])
def test_config_declares_more_layers_than_the_file(tmp_path, tokens_npy, out, family, first_absent):
    """A config that declares 3 layers over a 2-layer file: the first tensor of layer 2 is named."""
    d, config, tensors, _ = _family_model(tmp_path, family)
    key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    config[key] = N_LAYER + 1
    (d / "config.json").write_text(json.dumps(config))
    res = run_saegap(dump_args(d, tokens_npy, out))
    assert_user_error(res, out, first_absent, "declares 3 layers")


@pytest.mark.parametrize("short,slicer", [
    ("wpe.weight", lambda x: x[:N_POSITIONS - 1]),         # 39 positions vs config's 40
    ("h.0.attn.c_attn.weight", lambda x: x.T.copy()),      # [3d, d] instead of [d, 3d]
    ("h.1.mlp.c_proj.bias", lambda x: x[:-1]),
])
def test_wrong_shaped_tensor(model, tokens_npy, out, short, slicer):
    def fn(a):
        k = full_name(a, short)
        a[k] = np.ascontiguousarray(slicer(a[k]))
    _rewrite_model(model, fn)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, short)


@pytest.mark.parametrize("short,value", [
    ("h.0.attn.c_proj.weight", np.nan),
    ("h.1.mlp.c_fc.weight", np.inf),
    ("wte.weight", -np.inf),
])
def test_non_finite_weight(model, tokens_npy, out, short, value):
    def fn(a):
        k = full_name(a, short)
        x = a[k].copy()
        x.flat[7] = value
        a[k] = x
    _rewrite_model(model, fn)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, short)


@pytest.mark.parametrize("dtype,value", [("F16", np.nan), ("F16", np.inf),
                                         ("BF16", np.nan), ("BF16", -np.inf)])
def test_non_finite_weight_half_precision(tmp_path, tokens_npy, out, dtype, value):
    model = tmp_path / f"model_{dtype}"
    fx.make_gpt2_model(str(model), n_layer=N_LAYER, n_head=5, n_embd=60,
                       n_positions=N_POSITIONS, vocab_size=VOCAB, seed=0, dtype=dtype)

    def fn(a):
        k = full_name(a, "h.1.attn.c_attn.bias")
        x = a[k].copy()
        x.flat[3] = value
        a[k] = x
    _rewrite_model(model, fn)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "h.1.attn.c_attn.bias")


def test_safetensors_negative_shape(model, tokens_npy, out):
    header, data = st_read(model / ST)
    name = full_name(dict(st_tensors(header)), "ln_f.bias")
    header[name]["shape"] = [-60]
    st_write_raw(model / ST, header, data)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "ln_f.bias")


def test_safetensors_header_length_zero(model, tokens_npy, out):
    (model / ST).write_bytes(struct.pack("<Q", 0) + b"\x00" * 64)
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ST)


@pytest.mark.parametrize("fname", ["config.json", "model.safetensors"])
def test_model_file_is_a_directory(model, tokens_npy, out, fname):
    os.remove(model / fname)
    (model / fname).mkdir()
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, fname)


def test_config_is_json_array(model, tokens_npy, out):
    (model / "config.json").write_text("[2, 5, 60]")
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "config.json")


@pytest.mark.parametrize("key,value", [("activation_function", "swoosh"),
                                       ("layer_norm_epsilon", "tiny"),
                                       ("layer_norm_epsilon", -1.0)])
def test_config_bad_activation_or_epsilon(model, tokens_npy, out, key, value):
    _edit_config(model, lambda c: c.__setitem__(key, value))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, (key, str(value)))


# ----------------------------------------------------------------------------------------
# 5. tokens
# ----------------------------------------------------------------------------------------

def test_tokens_file_missing(model, tmp_path, out):
    p = tmp_path / "no_such_tokens.npy"
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "no_such_tokens.npy")


@pytest.mark.parametrize("fmt,bad_id", [("npy", 4242), ("npy", VOCAB), ("h5", 4243),
                                         ("bin", 4244), ("llmc", 4245)])
def test_token_id_out_of_vocab(model, tmp_path, out, fmt, bad_id):
    toks = good_tokens_array()
    toks[1, 5] = bad_id
    extra = []
    if fmt == "npy":
        p = tmp_path / "toks.npy"
        fx.write_tokens_npy(str(p), toks)
    elif fmt == "h5":
        p = tmp_path / "toks.h5"
        fx.write_tokens_h5(str(p), toks)
    elif fmt == "bin":
        p = tmp_path / "toks.bin"
        fx.write_tokens_bin(str(p), toks.ravel())
        extra = ["--ctx", CTX]
    else:
        p = tmp_path / "toks_llmc.bin"
        fx.write_tokens_llmc(str(p), toks.ravel())
        extra = ["--ctx", CTX]
    res = run_saegap(dump_args(model, p, out, extra=extra))
    assert_user_error(res, out, str(bad_id))


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_negative_token_id(model, tmp_path, out, fmt):
    toks = good_tokens_array()
    toks[2, 3] = -3
    if fmt == "npy":
        p = tmp_path / "neg.npy"
        fx.write_tokens_npy(str(p), toks)
    else:
        p = tmp_path / "neg.h5"
        fx.write_tokens_h5(str(p), toks)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "-3")


def test_ctx_larger_than_n_positions_flat(model, tmp_path, out):
    p = tmp_path / "long.bin"
    fx.write_tokens_bin(str(p), good_tokens_array(n=2, ctx=N_POSITIONS + 1).ravel())
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", N_POSITIONS + 1]))
    assert_user_error(res, out, str(N_POSITIONS + 1))


def test_ctx_larger_than_n_positions_npy(model, tmp_path, out):
    p = tmp_path / "long.npy"
    fx.write_tokens_npy(str(p), good_tokens_array(n=2, ctx=N_POSITIONS + 1))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, str(N_POSITIONS + 1))


def test_empty_bin(model, tmp_path, out):
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", CTX]))
    assert_user_error(res, out, "empty.bin")


def test_npy_zero_rows(model, tmp_path, out):
    p = tmp_path / "zero_rows.npy"
    fx.write_tokens_npy(str(p), np.zeros((0, CTX), dtype=np.int64))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "zero_rows.npy")


def test_h5_zero_rows(model, tmp_path, out):
    p = tmp_path / "zero_rows.h5"
    fx.write_tokens_h5(str(p), np.zeros((0, CTX), dtype=np.int32))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "zero_rows.h5")


def test_bin_shorter_than_one_context(model, tmp_path, out):
    p = tmp_path / "short.bin"
    fx.write_tokens_bin(str(p), np.arange(CTX - 1))
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", CTX]))
    assert_user_error(res, out, "short.bin")


def test_odd_sized_bin(model, tmp_path, out):
    p = tmp_path / "odd.bin"
    fx.write_tokens_bin(str(p), good_tokens_array().ravel())
    with open(p, "ab") as f:
        f.write(b"\x01")
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", CTX]))
    assert_user_error(res, out, "odd.bin")


def test_flat_bin_without_ctx(model, tmp_path, out):
    p = tmp_path / "flat.bin"
    fx.write_tokens_bin(str(p), good_tokens_array().ravel())
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "ctx")


def test_llmc_count_disagrees_with_size(model, tmp_path, out):
    p = tmp_path / "llmc_bad.bin"
    fx.write_tokens_llmc(str(p), good_tokens_array().ravel())
    raw = bytearray(p.read_bytes())
    # header[2] is the token count; claim more tokens than the file holds
    count = struct.unpack_from("<i", raw, 8)[0]
    struct.pack_into("<i", raw, 8, count + 1000)
    p.write_bytes(bytes(raw))
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", CTX]))
    assert_user_error(res, out, "llmc_bad.bin")


def test_h5_without_tokens_dataset(model, tmp_path, out):
    p = tmp_path / "no_tokens.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("input_ids", data=good_tokens_array().astype(np.int32))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "tokens", "no_tokens.h5")


def test_h5_tokens_float_dtype(model, tmp_path, out):
    p = tmp_path / "float_tokens.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("tokens", data=good_tokens_array().astype(np.float32))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "float_tokens.h5")


def test_h5_not_hdf5(model, tmp_path, out):
    p = tmp_path / "garbage.h5"
    p.write_bytes(b"this is not an HDF5 file\n" * 20)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "garbage.h5")


@pytest.mark.parametrize("ndim", [1, 3])
def test_npy_wrong_rank(model, tmp_path, out, ndim):
    p = tmp_path / f"rank{ndim}.npy"
    if ndim == 1:
        arr = good_tokens_array().ravel()
    else:
        arr = good_tokens_array().reshape(N_CTX, 2, CTX // 2)
    # write the array with numpy itself: the fixture writer may insist on 2-D
    np.save(str(p), np.ascontiguousarray(arr.astype("<i8")))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, f"rank{ndim}.npy")


def test_npy_float_dtype(model, tmp_path, out):
    p = tmp_path / "floats.npy"
    np.save(str(p), good_tokens_array().astype("<f4"))
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "floats.npy")


def test_npy_corrupt(model, tmp_path, out):
    p = tmp_path / "corrupt.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8'" + b"\x00" * 10)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "corrupt.npy")


def test_unknown_token_extension(model, tmp_path, out):
    p = tmp_path / "toks.parquet"
    p.write_bytes(b"PAR1" + b"\x00" * 100)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, ("toks.parquet", "parquet"))


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_token_id_beyond_int32(model, tmp_path, out, fmt):
    """An int64 id that wraps to a valid id when cast to int32 must not slip through."""
    bad = 2 ** 32 + 5
    toks = good_tokens_array()
    toks[0, 4] = bad
    if fmt == "npy":
        p = tmp_path / "wide.npy"
        fx.write_tokens_npy(str(p), toks, dtype="<i8")
    else:
        p = tmp_path / "wide.h5"
        fx.write_tokens_h5(str(p), toks, dtype="int64")
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, str(bad))


@pytest.mark.parametrize("ndim", [1, 3])
def test_h5_tokens_wrong_rank(model, tmp_path, out, ndim):
    p = tmp_path / f"rank{ndim}.h5"
    arr = good_tokens_array().astype(np.int32)
    arr = arr.ravel() if ndim == 1 else arr.reshape(N_CTX, 2, CTX // 2)
    with h5py.File(p, "w") as f:
        f.create_dataset("tokens", data=arr)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, f"rank{ndim}.h5")


def test_h5_tokens_is_a_group(model, tmp_path, out):
    p = tmp_path / "group.h5"
    with h5py.File(p, "w") as f:
        f.create_group("tokens").create_dataset("ids", data=good_tokens_array())
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "group.h5")


def test_tokens_path_is_a_directory(model, tmp_path, out):
    p = tmp_path / "tokdir.npy"
    p.mkdir()
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "tokdir.npy")


def test_llmc_bad_version(model, tmp_path, out):
    p = tmp_path / "llmc_v9.bin"
    fx.write_tokens_llmc(str(p), good_tokens_array().ravel())
    raw = bytearray(p.read_bytes())
    struct.pack_into("<i", raw, 4, 9)
    p.write_bytes(bytes(raw))
    res = run_saegap(dump_args(model, p, out, extra=["--ctx", CTX]))
    assert_user_error(res, out, "llmc_v9.bin")


def _dump_ok(res, out):
    info = describe(res)
    assert res.returncode == 0, info
    assert output_claims_complete(out), info
    with h5py.File(out, "r") as f:
        return f["blocks.0.hook_resid_pre"][()]


def test_npy_fortran_order_read_right_or_refused(model, tmp_path):
    """A Fortran-ordered .npy is valid; it must be read as the same [n, ctx] array or
    refused with a clear message, never silently read transposed."""
    toks = good_tokens_array(n=4, ctx=6)
    pc, pf = tmp_path / "c_order.npy", tmp_path / "f_order.npy"
    np.save(str(pc), np.ascontiguousarray(toks))
    np.save(str(pf), np.asfortranarray(toks))
    assert np.load(str(pf)).flags.f_contiguous
    oc, of = tmp_path / "c.h5", tmp_path / "f.h5"
    ref = _dump_ok(run_saegap(dump_args(model, pc, oc)), oc)
    res = run_saegap(dump_args(model, pf, of))
    if res.returncode == 0:
        got = _dump_ok(res, of)
        assert np.array_equal(got, ref), "Fortran-order .npy read differently" + describe(res)
    else:
        assert_user_error(res, of, "f_order.npy")


def test_npy_big_endian_read_right_or_refused(model, tmp_path):
    toks = good_tokens_array()
    pl, pb = tmp_path / "le.npy", tmp_path / "be.npy"
    np.save(str(pl), toks.astype("<i4"))
    np.save(str(pb), toks.astype(">i4"))
    ol, ob = tmp_path / "le.h5", tmp_path / "be.h5"
    ref = _dump_ok(run_saegap(dump_args(model, pl, ol)), ol)
    res = run_saegap(dump_args(model, pb, ob))
    if res.returncode == 0:
        assert np.array_equal(_dump_ok(res, ob), ref), "big-endian .npy read wrongly" + describe(res)
    else:
        assert_user_error(res, ob, "be.npy")


# ----------------------------------------------------------------------------------------
# 6. sites
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("site,needle", [
    ("blocks.0.hook_nonsense", "blocks.0.hook_nonsense"),
    ("blocks.7.hook_resid_pre", "blocks.7"),
    ("blocks.2.hook_resid_pre", "blocks.2"),            # == n_layer: one past the end
    ("blocks.-1.hook_resid_pre", "blocks.-1"),
    ("blocks.x.hook_resid_pre", "blocks.x"),
    ("hook_resid_pre", "hook_resid_pre"),
])
def test_bad_site(model, tokens_npy, out, site, needle):
    res = run_saegap(dump_args(model, tokens_npy, out,
                               sites=f"blocks.0.hook_resid_pre,{site}"))
    assert_user_error(res, out, needle)


def test_empty_sites(model, tokens_npy, out):
    res = run_saegap(dump_args(model, tokens_npy, out, sites=""))
    assert_user_error(res, out, "sites")


def test_duplicate_site_dedup_or_refused(model, tokens_npy, out):
    res = run_saegap(dump_args(model, tokens_npy, out,
                               sites="blocks.0.hook_resid_pre,blocks.0.hook_resid_pre"))
    if res.returncode == 0:
        _dump_ok(res, out)
        for bad in FORBIDDEN_STDERR:
            assert bad not in res.err, f"stderr contains {bad!r}" + describe(res)
    else:
        assert_user_error(res, out, "blocks.0.hook_resid_pre")


# ----------------------------------------------------------------------------------------
# 7. existing --out
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bytes", "complete_h5"])
def test_existing_out_refused_and_untouched(model, tokens_npy, tmp_path, kind):
    out = tmp_path / "previous_result.h5"
    if kind == "bytes":
        out.write_bytes(b"precious bytes, do not touch\x00\x01\x02" * 37)
    else:
        with h5py.File(out, "w") as f:
            f.attrs["complete"] = 1
            f.create_dataset("blocks.0.hook_resid_pre", data=np.arange(12, dtype=np.float32))
    before = out.read_bytes()
    st = os.stat(out)
    res = run_saegap(dump_args(model, tokens_npy, out))
    info = describe(res)
    after = out.read_bytes()
    assert after == before, "existing --out file was modified" + info
    assert os.stat(out).st_mtime_ns == st.st_mtime_ns, "existing --out mtime changed" + info
    # the file is a pre-existing one, so do not apply the 'no complete output' rule to it
    assert_user_error(res, None, "previous_result.h5")


def test_out_is_a_directory(model, tokens_npy, tmp_path):
    out = tmp_path / "outdir.h5"
    out.mkdir()
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, None, "outdir.h5")
    assert out.is_dir() and not any(out.iterdir())


def test_out_same_as_token_file(model, tmp_path):
    p = tmp_path / "tokens.h5"
    fx.write_tokens_h5(str(p), good_tokens_array())
    before = p.read_bytes()
    res = run_saegap(dump_args(model, p, p))
    assert p.read_bytes() == before, "token file modified" + describe(res)
    assert_user_error(res, None, "tokens.h5")


def test_out_directory_missing(model, tokens_npy, tmp_path):
    out = tmp_path / "no_such_dir" / "out.h5"
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, ("no_such_dir", "out.h5"))


# ----------------------------------------------------------------------------------------
# 8. bad option values
# ----------------------------------------------------------------------------------------

@pytest.fixture
def tokens_bin(tmp_path):
    p = tmp_path / "flat.bin"
    fx.write_tokens_bin(str(p), good_tokens_array().ravel())
    return p


@pytest.mark.parametrize("extra,needle", [
    (["--ctx", CTX, "--contexts", "0"], "contexts"),
    (["--ctx", CTX, "--contexts", "-2"], "contexts"),
    (["--ctx", CTX, "--contexts", "many"], ("contexts", "many")),
    (["--ctx", "-5"], "ctx"),
    (["--ctx", "0"], "ctx"),
    (["--ctx", "abc"], ("ctx", "abc")),
    (["--ctx", "8x"], ("ctx", "8x")),
    (["--ctx", "99999999999999999999999"], "ctx"),
    (["--ctx", CTX, "--frobnicate"], "frobnicate"),
    (["--ctx"], "ctx"),                                  # value missing at the end
])
def test_bad_option_values(model, tokens_bin, out, extra, needle):
    res = run_saegap(dump_args(model, tokens_bin, out, extra=extra))
    assert_user_error(res, out, needle)


@pytest.mark.parametrize("drop", ["model", "tokens", "out"])
def test_missing_required_option(model, tokens_npy, out, drop):
    res = run_saegap(dump_args(None if drop == "model" else model,
                               None if drop == "tokens" else tokens_npy,
                               None if drop == "out" else out))
    assert_user_error(res, out if drop != "out" else None, f"--{drop}")


def test_unknown_command(tmp_path):
    res = run_saegap(["frobnicate"])
    assert_user_error(res, None, "frobnicate")


# ----------------------------------------------------------------------------------------
# 9. the same rules under mpirun (an error seen by one rank must not hang the others)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("nranks", [2, 3])
@pytest.mark.parametrize("case", ["bad_token_last_context", "missing_tensor", "unknown_site",
                                  "existing_out"])
def test_user_error_under_mpirun(model, tmp_path, nranks, case):
    toks = good_tokens_array(n=6, ctx=CTX)
    out = tmp_path / "mpi_out.h5"
    sites = GOOD_SITES
    needle = None
    if case == "bad_token_last_context":
        toks[-1, -1] = 777           # only the last rank's share holds it
        needle = "777"
    tp = tmp_path / "mpi_tokens.npy"
    fx.write_tokens_npy(str(tp), toks)
    if case == "missing_tensor":
        _rewrite_model(model, lambda a: a.pop(full_name(a, "h.0.ln_2.weight")))
        needle = "h.0.ln_2.weight"
    elif case == "unknown_site":
        sites = "blocks.1.hook_bogus"
        needle = "blocks.1.hook_bogus"
    elif case == "existing_out":
        out.write_bytes(b"keep me" * 11)
        needle = "mpi_out.h5"
    before = out.read_bytes() if out.exists() else None
    res = run_saegap(dump_args(model, tp, out, sites=sites), np=nranks)
    if case == "existing_out":
        assert out.read_bytes() == before, "existing --out modified under mpirun" + describe(res)
        assert_user_error(res, None, needle, mpi=True)
    else:
        assert_user_error(res, out, needle, mpi=True)


# ----------------------------------------------------------------------------------------
# 10. messages that name the path and the OS's reason (issue 25, point 7)
# ----------------------------------------------------------------------------------------

def _error_lines(res):
    return "\n".join(ln for ln in res.err.splitlines() if ln.startswith("saegap: error:"))


def test_out_path_too_long_named(model, tokens_npy, tmp_path):
    """A 1200-character --out: the message names it (shortened in its middle, with its
    length) and gives the OS's reason, instead of a bare "path too long"."""
    out = str(tmp_path / ("a" * 1200 + ".h5"))
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, None, "File name too long")
    line = _error_lines(res)
    assert str(tmp_path) in line and "aaa.h5" in line, describe(res)
    assert "(%d characters)" % len(out) in line, describe(res)
    assert not os.listdir(tmp_path) or set(os.listdir(tmp_path)) <= {"model", "tokens.npy"}


def _deep_folder(base, total):
    """An existing folder whose path is longer than `total` characters (longer than PATH_MAX:
    made one level at a time, relative to an open folder)."""
    path, fd = str(base), os.open(str(base), os.O_RDONLY)
    try:
        while len(path) <= total:
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = nfd, path + "/" + name
        return path
    finally:
        os.close(fd)


def test_model_path_too_long_named(tmp_path, tokens_npy, out):
    """A 4900-character --model path to a folder that exists: "File name too long", not
    "model folder does not exist"; the message keeps the path's start."""
    m = _deep_folder(tmp_path, 4900)
    res = run_saegap(dump_args(m, tokens_npy, out))
    assert_user_error(res, out, "File name too long")
    line = _error_lines(res)
    assert "does not exist" not in line and str(tmp_path) in line, describe(res)
    assert "(%d characters)" % len(m) in line, describe(res)


def test_verify_on_a_folder_cannot_read(tmp_path):
    """verify on a folder: exit 1, "cannot read", never "damaged" (exit 4)."""
    d = tmp_path / "result.h5"
    d.mkdir()
    res = run_saegap(["verify", d])
    assert res.returncode == 1, describe(res)
    assert "cannot read" in _error_lines(res) and "damaged" not in res.outtxt + res.err, describe(res)


def _dump_result(model, tokens_npy, tmp_path):
    out = tmp_path / "good.h5"
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert res.returncode == 0, describe(res)
    return out


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything: run by tests/run-all.sh as user nobody")
def test_verify_unreadable_result_cannot_read(model, tokens_npy, tmp_path):
    """An unreadable result: verify exits 1 with "cannot read: Permission denied", never
    "damaged" (exit 4), which could lead a user to delete a good result."""
    out = _dump_result(model, tokens_npy, tmp_path)
    os.chmod(out, 0)
    res = run_saegap(["verify", out])
    assert res.returncode == 1, describe(res)
    line = _error_lines(res)
    assert "cannot read" in line and "Permission denied" in line and str(out) in line, describe(res)
    assert "damaged" not in res.outtxt + res.err, describe(res)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything: run by tests/run-all.sh as user nobody")
def test_token_h5_unreadable(model, tmp_path, out):
    """An unreadable token .h5: the OS's reason, not "not an HDF5 file"."""
    p = tmp_path / "tokens.h5"
    fx.write_tokens_h5(str(p), good_tokens_array())
    os.chmod(p, 0)
    res = run_saegap(dump_args(model, p, out))
    assert_user_error(res, out, "Permission denied", "tokens.h5")
    assert "not an HDF5 file" not in res.err, describe(res)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_resume_refuses_empty_file_untouched(tmp_path):
    """--resume on a zero-length file is refused before anything opens it for writing: still
    zero bytes, same mtime (libhdf5 1.10 used to write a superblock into it)."""
    out = tmp_path / "empty.h5"
    out.write_bytes(b"")
    os.utime(out, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    st = os.stat(out)
    sae = os.path.join(REPO, "jobs", "demo", "saes", "blocks.1.hook_resid_pre")
    res = run_saegap(["run", os.path.join(REPO, "jobs", "demo.job"), "--sae", sae, "--interventions", "sae",
                      "--contexts", "2", "--threads-per-rank", "1", "--out", out, "--resume"], cwd=REPO)
    assert_user_error(res, None, "empty.h5", "empty")
    after = os.stat(out)
    assert after.st_size == 0 and after.st_mtime_ns == st.st_mtime_ns, describe(res)


def test_out_path_longer_than_mpi_io_takes(model, tokens_npy, tmp_path):
    """A valid --out path of about 400 characters: Open MPI 4.1's MPI-IO aborts the process on
    a path over 244 characters (its lock test copies it into 256 bytes); saegap refuses it
    with a message naming the file, and leaves nothing behind."""
    d = tmp_path / ("x" * 200)
    d.mkdir()
    out = d / ("y" * 180 + ".h5")
    res = run_saegap(dump_args(model, tokens_npy, out))
    assert_user_error(res, out, "shorter path", "y" * 40 + ".h5")
    assert os.listdir(d) == [], describe(res)
