"""Hostile inputs (issue 12, points 2 and 6): sizes, offsets, counts and products read from a
file, and cfg.json values out of range.

Every case must end like a user error (tests/python/test_errors.py's conventions, stricter):
  * exit status 1..127 (no signal), no sanitizer / crash text,
  * EXACTLY ONE line starting with ``saegap: error:``, naming the file (or key) and the problem,
  * no output file claiming to be complete,
  * quickly: a damaged header is refused before anything it declares is allocated.

Each case is a small file made here from the published formats; the checks read only what
saegap prints. Run from the repository root, for each build:
    SAEGAP_BIN=/path/to/saegap /usr/bin/python3 -m pytest -q tests/python/test_hostile_inputs.py
(an ASan build: also ASAN_OPTIONS=detect_leaks=0).
"""

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import saegap_fixtures as fx  # noqa: E402
from sae_fixtures import make_sae  # noqa: E402

SAEGAP_BIN = os.environ.get("SAEGAP_BIN", "/work/main/build/saegap")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 60

N_LAYER, N_HEAD, D, N_POS, VOCAB = 2, 4, 32, 40, 211
CTX, N_CTX = 8, 3
SITE = "blocks.0.hook_resid_pre"
D_SAE = 64

FORBIDDEN_STDERR = [
    "AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "runtime error:",
    "Segmentation fault", "segfault", "SIGSEGV", "Abort", "MPI_ABORT", "core dumped",
    "Traceback", "HDF5-DIAG", "double free", "stack smashing",
]


# ---------------------------------------------------------------------------------- helpers

class Result:
    pass


def run_saegap(args):
    """Runs saegap as a singleton; returns exit status, stderr and wall time."""
    if not (os.path.isfile(SAEGAP_BIN) and os.access(SAEGAP_BIN, os.X_OK)):
        pytest.fail(f"saegap binary not found at {SAEGAP_BIN!r} (build it, or set SAEGAP_BIN)",
                    pytrace=False)
    cmd = [SAEGAP_BIN] + [str(a) for a in args]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"HANG: no exit within {TIMEOUT}s: {shlex.join(cmd)}")
    r = Result()
    r.cmd, r.rc = cmd, p.returncode
    r.err = err.decode("utf-8", errors="replace")
    r.out = out.decode("utf-8", errors="replace")
    r.seconds = time.monotonic() - t0
    return r


def run_measured(args):
    """Like run_saegap, but waits with os.wait4 to get this child's peak RSS (KB)."""
    cmd = [SAEGAP_BIN] + [str(a) for a in args]
    t0 = time.monotonic()
    with open(os.devnull, "rb") as devnull:
        p = subprocess.Popen(cmd, stdin=devnull, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = t0 + TIMEOUT
    err = b""
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            os.wait4(p.pid, 0)
            pytest.fail(f"HANG: no exit within {TIMEOUT}s: {shlex.join(cmd)}")
        time.sleep(0.02)
    err = p.stderr.read()
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    r = Result()
    r.cmd, r.rc = cmd, p.returncode
    r.err = err.decode("utf-8", errors="replace")
    r.out = ""
    r.seconds = time.monotonic() - t0
    r.maxrss_kb = ru.ru_maxrss
    return r


def describe(r):
    return (f"\ncommand: {shlex.join(r.cmd)}\nexit status: {r.rc}\nseconds: {r.seconds:.2f}\n"
            f"stderr:\n{r.err[-6000:]}")


def claims_complete(out):
    if out is None or not os.path.exists(out):
        return False
    try:
        with h5py.File(out, "r") as f:
            v = np.asarray(f.attrs.get("complete", 0)).ravel()
            return v.size > 0 and int(v[0]) == 1
    except (OSError, ValueError, TypeError):
        return False


def assert_one_error(r, out, *required):
    """`required`: strings or tuples of alternatives, each must appear (case-insensitively)
    in THE one `saegap: error:` line."""
    info = describe(r)
    assert r.rc >= 0, f"killed by signal {-r.rc}" + info
    assert 1 <= r.rc <= 127, f"exit status {r.rc} is outside 1..127" + info
    for bad in FORBIDDEN_STDERR:
        assert bad not in r.err, f"stderr contains crash text {bad!r}" + info
    lines = [ln for ln in r.err.splitlines() if ln.startswith("saegap: error:")]
    assert len(lines) == 1, f"{len(lines)} 'saegap: error:' lines, expected exactly one" + info
    line = lines[0].lower()
    for item in required:
        alts = item if isinstance(item, tuple) else (item,)
        assert any(str(a).lower() in line for a in alts), \
            f"the error line does not mention any of {alts!r}" + info
    assert not claims_complete(out), f"{out} claims complete after an error" + info
    return lines[0]


# ---------------------------------------------------------------------------------- world

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    mdir = base / "tiny-gpt2"
    fx.make_gpt2_model(str(mdir), n_layer=N_LAYER, n_head=N_HEAD, n_embd=D,
                       n_positions=N_POS, vocab_size=VOCAB, seed=3)
    toks = fx.random_tokens(N_CTX, CTX, VOCAB, seed=4)
    tok_npy = fx.write_tokens_npy(str(base / "tokens.npy"), toks)
    sae_topk = base / "sae_topk"
    make_sae(str(sae_topk), D, D_SAE, SITE, architecture="topk", generation="v6", k=8,
             model_name="tiny-gpt2", from_pretrained_kwargs={}, seed=1)
    sae_flat = base / "sae_flat_topk"
    make_sae(str(sae_flat), D, D_SAE, SITE, architecture="topk", generation="flat", k=8,
             model_name="tiny-gpt2", from_pretrained_kwargs={}, seed=2)
    sae_std = base / "sae_std"
    make_sae(str(sae_std), D, D_SAE, SITE, architecture="standard", generation="v6",
             model_name="tiny-gpt2", from_pretrained_kwargs={}, seed=3)
    return {"base": base, "model": mdir, "tokens": toks, "tokens_npy": tok_npy,
            "sae_topk": sae_topk, "sae_flat": sae_flat, "sae_std": sae_std}


def dump_args(world, tokens, out, extra=(), model=None):
    return ["dump", "--model", model or world["model"], "--tokens", tokens, "--sites", SITE,
            "--out", out, "--threads-per-rank", 1] + list(extra)


def run_args(world, sae, out, extra=()):
    return ["run", "--model", world["model"], "--sae", sae, "--tokens", world["tokens_npy"],
            "--interventions", "sae", "--out", out, "--threads-per-rank", 1,
            "--quiet"] + list(extra)


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------- .npy

def npy_bytes(descr, shape, fortran=False, data=b"", version=1, header=None):
    """A .npy file as numpy writes it (format 1.0/2.0), with any declared shape."""
    if header is None:
        shape_txt = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
            descr, "True" if fortran else "False", shape_txt)
    h = header.encode("latin1")
    pre = 10 if version == 1 else 12
    h += b" " * ((-(pre + len(h) + 1)) % 64) + b"\n"
    if version == 1:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h))
    else:
        head = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(h))
    return head + h + data


def test_npy_positive_control(world, tmp_path):
    out = tmp_path / "out.h5"
    p = tmp_path / "t.npy"
    p.write_bytes(npy_bytes("<i8", (N_CTX, CTX), data=world["tokens"].astype("<i8").tobytes()))
    r = run_saegap(dump_args(world, p, out))
    assert r.rc == 0, "a hand-written valid .npy was refused" + describe(r)
    assert claims_complete(out)


@pytest.mark.parametrize("contexts", [None, 4])
def test_npy_shape_product_wraps(world, tmp_path, contexts):
    # (2^63+1) * 2 = 2^64 + 2 wraps to 2 elements: 2 real tokens would pass for a huge array
    p = tmp_path / "wrap.npy"
    p.write_bytes(npy_bytes("<i8", (2 ** 63 + 1, 2), data=np.array([1, 2], "<i8").tobytes()))
    out = tmp_path / "out.h5"
    extra = ["--contexts", contexts] if contexts else []
    r = run_saegap(dump_args(world, p, out, extra))
    assert_one_error(r, out, "wrap.npy", "shape", ("damaged", "overflow", "more bytes"))


def test_npy_bytes_product_wraps(world, tmp_path):
    # 2^61 * 2 elements fit size_t, their 8-byte size (2^65) does not
    p = tmp_path / "bytes.npy"
    p.write_bytes(npy_bytes("<i8", (2 ** 61, 2), data=b"\0" * 64))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--contexts", 4]))
    assert_one_error(r, out, "bytes.npy", "shape")


def test_npy_shape_entry_beyond_64_bits(world, tmp_path):
    p = tmp_path / "big.npy"
    p.write_bytes(npy_bytes("<i8", (18446744073709551617, 2), data=b"\0" * 64))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "big.npy", "18446744073709551617", "64 bits")


def test_npy_truncated_is_refused_before_allocating(world, tmp_path):
    # 1 KB claiming (2^31, 1) int16: 4 GB of int64 values would be allocated and zeroed before
    # the read noticed; the declared size is compared with the file first
    p = tmp_path / "short.npy"
    p.write_bytes(npy_bytes("<i2", (2 ** 31, 1), data=b"\x01\x00" * 480))
    assert p.stat().st_size < 1100
    out = tmp_path / "out.h5"
    r = run_measured(dump_args(world, p, out))
    assert_one_error(r, out, "short.npy", "truncated", "2147483648")
    assert r.maxrss_kb < 1_000_000, f"peak RSS {r.maxrss_kb} KB: allocated before checking" + describe(r)
    assert r.seconds < 20, describe(r)


def test_npy_fortran_truncated(world, tmp_path):
    p = tmp_path / "fortran.npy"
    p.write_bytes(npy_bytes("<i4", (5, CTX), fortran=True, data=b"\0" * (4 * CTX * 5 - 4)))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "fortran.npy", "truncated")


def test_npy_header_length_beyond_file(world, tmp_path):
    raw = npy_bytes("<i8", (N_CTX, CTX), data=world["tokens"].astype("<i8").tobytes(), version=2)
    raw = raw[:8] + struct.pack("<I", 0xFFFFF) + raw[12:]  # 1 MB header, file is smaller
    p = tmp_path / "hlen.npy"
    p.write_bytes(raw)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "hlen.npy", "header")


def test_npy_unknown_version(world, tmp_path):
    raw = bytearray(npy_bytes("<i8", (N_CTX, CTX), data=world["tokens"].astype("<i8").tobytes()))
    raw[6] = 9
    p = tmp_path / "v9.npy"
    p.write_bytes(bytes(raw))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "v9.npy", "version")


def test_npy_u8_id_beyond_int64(world, tmp_path):
    vals = world["tokens"].astype("<u8")
    vals[1, 2] = 2 ** 63 + 5
    p = tmp_path / "u8.npy"
    p.write_bytes(npy_bytes("<u8", (N_CTX, CTX), data=vals.tobytes()))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "u8.npy", str(2 ** 63 + 5), "context 1, position 2")


# Headers NumPy refuses (issue 25, point 4): np.load demands exactly the keys 'descr',
# 'fortran_order' and 'shape', fortran_order a bool, shape a tuple of ints. saegap used to find
# them with strstr and read these in C order, marking the run complete.
NUMPY_REFUSES = [
    ("fortran-missing", "{'descr': '<i8', 'shape': (%d, %d), }", ("fortran_order", "no")),
    ("fortran-misspelled", "{'descr': '<i8', 'fortran_ordr': False, 'shape': (%d, %d), }",
     ("fortran_ordr", "key")),
    ("fortran-one", "{'descr': '<i8', 'fortran_order': 1, 'shape': (%d, %d), }",
     ("fortran_order", "true or false", "found 1")),
    ("fortran-string", "{'descr': '<i8', 'fortran_order': 'True', 'shape': (%d, %d), }",
     ("fortran_order", "true or false", "'true'")),
    ("extra-key", "{'descr': '<i8', 'fortran_order': False, 'shape': (%d, %d), 'order': 'C', }",
     ("'order'", "key")),
    ("duplicate-key", "{'descr': '<i8', 'fortran_order': False, 'shape': (%d, %d), 'fortran_order': True}",
     ("fortran_order", "twice")),
]


@pytest.mark.parametrize("name,header,needles", NUMPY_REFUSES, ids=[c[0] for c in NUMPY_REFUSES])
def test_npy_header_numpy_refuses(world, tmp_path, name, header, needles):
    p = tmp_path / ("%s.npy" % name)
    p.write_bytes(npy_bytes("<i8", None, header=header % (N_CTX, CTX),
                            data=world["tokens"].astype("<i8").tobytes()))
    if name != "duplicate-key":  # a dict literal keeps the last of two keys: NumPy reads that one
        with pytest.raises(ValueError):
            np.load(p, allow_pickle=False)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, p.name, ".npy header", *needles)


def test_npz_duplicate_member_is_refused(world, tmp_path):
    """A params.npz with two W_enc.npy: Python's zipfile (np.load) reads the last, saegap had read
    the first. Refused, naming the archive and the member."""
    import io
    import warnings
    import zipfile
    rng = np.random.default_rng(5)
    p = {"W_enc": rng.standard_normal((D, D_SAE)), "W_dec": rng.standard_normal((D_SAE, D)),
         "b_enc": np.zeros(D_SAE), "b_dec": np.zeros(D), "threshold": np.full(D_SAE, 0.1)}
    d = tmp_path / "gemma-scope-2b-pt-res" / "layer_0" / "width_1k" / "average_l0_5"
    d.mkdir(parents=True)

    def member(a):
        f = io.BytesIO()
        np.save(f, np.asarray(a, np.float32))
        return f.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        with zipfile.ZipFile(d / "params.npz", "w") as z:
            for k, v in p.items():
                z.writestr(k + ".npy", member(v))
            z.writestr("W_enc.npy", member(2 * p["W_enc"]))
    with np.load(d / "params.npz", allow_pickle=False) as f:  # NumPy: the last one, silently
        assert np.array_equal(f["W_enc"], np.float32(2 * p["W_enc"]))
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, d, out))
    assert_one_error(r, out, "params.npz", "W_enc.npy", ("more than once", "twice"))


# ---------------------------------------------------------------------------------- .bin

def llmc_bytes(count, version=1, body=b""):
    hdr = np.zeros(256, "<i4")
    hdr[0], hdr[1], hdr[2] = fx.LLMC_MAGIC, version, count
    return hdr.tobytes() + body


@pytest.mark.parametrize("case", ["negative", "huge", "short_header", "bad_version"])
def test_llmc_header(world, tmp_path, case):
    body = world["tokens"].astype("<u2").tobytes()
    if case == "negative":
        raw, needle = llmc_bytes(-5, body=body), "-5"
    elif case == "huge":
        raw, needle = llmc_bytes(2 ** 31 - 1, body=body), "2147483647"
    elif case == "short_header":
        raw, needle = llmc_bytes(N_CTX * CTX)[:100], "header"
    else:
        raw, needle = llmc_bytes(N_CTX * CTX, version=7, body=body), "version 7"
    p = tmp_path / f"llmc_{case}.bin"
    p.write_bytes(raw)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--ctx", CTX]))
    assert_one_error(r, out, p.name, needle)


def test_bin_odd_size(world, tmp_path):
    p = tmp_path / "odd.bin"
    p.write_bytes(world["tokens"].astype("<u2").tobytes() + b"\x01")
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--ctx", CTX]))
    assert_one_error(r, out, "odd.bin", "odd")


def test_bin_contexts_limit_positive(world, tmp_path):
    # --contexts smaller than the file: only those rows are read, the rest is left alone
    p = tmp_path / "flat.bin"
    fx.write_tokens_bin(str(p), fx.random_tokens(50, CTX, VOCAB, seed=9).ravel())
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--ctx", CTX, "--contexts", 2]))
    assert r.rc == 0, describe(r)
    with h5py.File(out, "r") as f:
        assert f[SITE].shape[0] == 2


# ---------------------------------------------------------------------------------- .h5

def test_h5_declared_shape_beyond_memory_names_the_file(world, tmp_path):
    # a chunked dataset of 2^20 x 2^20 int64 with no chunk written: a few KB on disk that
    # declare 8 TB; running out of memory must name the file
    p = tmp_path / "huge.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("tokens", shape=(2 ** 20, 2 ** 20), dtype="<i8", chunks=(1, 64))
    assert p.stat().st_size < 100_000
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--contexts", 2]))
    assert_one_error(r, out, "huge.h5", ("memory", "damaged"))


def test_h5_dims_product_wraps(world, tmp_path):
    # 2^33 x 2^31 = 2^64 elements: the product wraps to 0 in 64 bits
    p = tmp_path / "wrap.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("tokens", shape=(2 ** 33, 2 ** 31), dtype="<i8", chunks=(1, 64))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out, ["--contexts", 2]))
    assert_one_error(r, out, "wrap.h5", ("more elements", "memory", "damaged"))


def test_h5_ids_beyond_int32(world, tmp_path):
    t = world["tokens"].astype("<i8")
    t[2, 3] = 2 ** 40
    p = tmp_path / "big_ids.h5"
    fx.write_tokens_h5(str(p), t, dtype="<i8")
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, p, out))
    assert_one_error(r, out, "big_ids.h5", str(2 ** 40), "context 2, position 3")


# ---------------------------------------------------------------------------------- safetensors

def st_read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def st_write(path, header, data):
    hb = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


def model_copy(world, tmp_path):
    return copy_dir(world["model"], tmp_path / "tiny-gpt2")


def last_tensor(header):
    items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                   key=lambda kv: kv[1]["data_offsets"][0])
    return items[-1]


@pytest.mark.parametrize("case", ["shape_product", "shape_entry_2_64", "bytes_product"])
def test_safetensors_shape_overflow(world, tmp_path, case):
    m = model_copy(world, tmp_path)
    st = m / "model.safetensors"
    header, data = st_read(st)
    name, info = last_tensor(header)
    if case == "shape_product":      # each entry exact in a double, product 2^68
        info["shape"], needle = [2 ** 32, 2 ** 32, 16], "overflow"
    elif case == "shape_entry_2_64":
        info["shape"], needle = [2 ** 64], "18446744073709551616"
    else:                            # 2^62 elements fit, 4 bytes each do not
        info["shape"], needle = [2 ** 62], "bytes"
    st_write(st, header, data)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    assert_one_error(r, out, "model.safetensors", name.replace("transformer.", ""), needle)


@pytest.mark.parametrize("case,needle", [
    ("float_shape", "not %d.0" % D),
    ("exponent_offset", "not 1e3"),
    ("dtype_number", "not 5"),
    ("deep_metadata", "deeper than"),
    ("lone_surrogate", "surrogate"),
    ("trailing_garbage", "end of the header"),
])
def test_safetensors_header_text(world, tmp_path, case, needle):
    """Hand-edited header text: each refusal quotes the value as the file writes it; nesting
    cannot exhaust the stack."""
    m = model_copy(world, tmp_path)
    st = m / "model.safetensors"
    header, data = st_read(st)
    name, info = last_tensor(header)
    if case == "float_shape":
        info["shape"] = ["@@"]
        text = json.dumps(header).replace('"@@"', "%d.0" % D)
    elif case == "exponent_offset":
        info["data_offsets"][0] = "@@"
        text = json.dumps(header).replace('"@@"', "1e3")
    elif case == "dtype_number":
        info["dtype"] = "@@"
        text = json.dumps(header).replace('"@@"', "5")
    elif case == "deep_metadata":
        header["__metadata__"] = "@@"
        text = json.dumps(header).replace('"@@"', "[" * 200000 + "]" * 200000)
    elif case == "lone_surrogate":
        text = json.dumps(header).replace(json.dumps(name), '"\\ud800%s"' % name, 1)
    else:
        text = json.dumps(header) + ' {"x": 1}'
    hb = text.encode()
    st.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    assert_one_error(r, out, "model.safetensors", needle)


N_BIG = 1_000_000


@pytest.fixture(scope="module")
def big_header():
    """A header of N_BIG one-float tensors back to back, and its data block (made once)."""
    parts = [f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
             for i in range(N_BIG)]
    return ("{" + ",".join(parts) + "}").encode(), b"\0" * (4 * N_BIG)


@pytest.mark.parametrize("duplicate", [True, False])
def test_safetensors_million_tensors_is_fast(world, tmp_path, big_header, duplicate):
    hb, data = big_header
    if duplicate:  # the last tensor takes the first one's name
        last = b'"t%d":' % (N_BIG - 1)
        at = hb.rindex(last)
        hb = hb[:at] + b'"t0":' + hb[at + len(last):]
    m = model_copy(world, tmp_path)
    st = m / "model.safetensors"
    with open(st, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    needle = ("'t0' appears twice",) if duplicate else ("missing tensor",)
    assert_one_error(r, out, "model.safetensors", needle)
    assert r.seconds < 10, f"a 1M-tensor header took {r.seconds:.1f} s" + describe(r)


def test_sae_weights_shape_overflow(world, tmp_path):
    sae = copy_dir(world["sae_std"], tmp_path / "sae")
    st = sae / "sae_weights.safetensors"
    header, data = st_read(st)
    header["W_enc"]["shape"] = [2 ** 40, 2 ** 40]
    st_write(st, header, data)
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    assert_one_error(r, out, "sae_weights.safetensors", "W_enc", "overflow")


# ---------------------------------------------------------------------------------- config.json

def edit_json(path, fn):
    with open(path) as f:
        c = json.load(f)
    fn(c)
    with open(path, "w") as f:
        json.dump(c, f)


@pytest.mark.parametrize("key,text,shown", [
    ("n_layer", "1e20", "1e+20"),
    ("n_embd", "18446744073709551616", "1.8446744073709552e+19"),
    ("vocab_size", "1e999", "beyond the range"),
])
def test_config_size_not_fitting(world, tmp_path, key, text, shown):
    m = model_copy(world, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg[key] = 12345678
    (m / "config.json").write_text(json.dumps(cfg).replace("12345678", text))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    assert_one_error(r, out, "config.json", key, shown)


def test_config_n_layer_bounded_by_the_file(world, tmp_path):
    # n_layer 10^8 is a plausible number but the file holds 2 layers: refused before the
    # per-layer tables (10^8 entries) are allocated
    m = model_copy(world, tmp_path)
    edit_json(m / "config.json", lambda c: c.__setitem__("n_layer", 100_000_000))
    out = tmp_path / "out.h5"
    r = run_measured(dump_args(world, world["tokens_npy"], out, model=m))
    assert_one_error(r, out, "model.safetensors", "n_layer", "100000000")
    assert r.maxrss_kb < 1_000_000, describe(r)


def test_config_layer_norm_epsilon_infinite(world, tmp_path):
    m = model_copy(world, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 0.125
    (m / "config.json").write_text(json.dumps(cfg).replace("0.125", "1e999"))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    assert_one_error(r, out, "config.json", "layer_norm_epsilon")


def test_config_bos_token_id_huge_is_ignored(world, tmp_path):
    # a bos_token_id no vocabulary holds is ignored (as one outside the vocabulary always
    # was), never converted to an integer first
    m = model_copy(world, tmp_path)
    cfg = json.loads((m / "config.json").read_text())
    cfg["bos_token_id"] = 12345678
    (m / "config.json").write_text(json.dumps(cfg).replace("12345678", "1e20"))
    out = tmp_path / "out.h5"
    r = run_saegap(dump_args(world, world["tokens_npy"], out, model=m))
    assert r.rc == 0, describe(r)
    for bad in FORBIDDEN_STDERR:
        assert bad not in r.err, describe(r)


# ---------------------------------------------------------------------------------- cfg.json

def sae_with_cfg_text(world, tmp_path, which, key, text, meta=False):
    """A copy of an SAE whose cfg.json has `key` set to the raw JSON `text`."""
    sae = copy_dir(world[which], tmp_path / "sae")
    cfg = json.loads((sae / "cfg.json").read_text())
    marker = "@@VALUE@@"
    target = cfg
    for part in key.split(".")[:-1]:
        target = target[part]
    target[key.split(".")[-1]] = marker
    (sae / "cfg.json").write_text(json.dumps(cfg).replace('"%s"' % marker, text))
    return sae


@pytest.mark.parametrize("text,shown", [
    ("1e20", "1e+20"), ("0", "0"), ("-1", "-1"), ("2.5", "2.5"), ('"8"', '"8"'),
    ("65", "65"), ("null", "null"),
])
def test_cfg_k_out_of_range(world, tmp_path, text, shown):
    sae = sae_with_cfg_text(world, tmp_path, "sae_topk", "k", text)
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    line = assert_one_error(r, out, "cfg.json", '"k"', "d_sae 64")
    assert ("not " + shown).lower() in line.lower(), describe(r)


def test_cfg_flat_activation_fn_kwargs_k(world, tmp_path):
    sae = sae_with_cfg_text(world, tmp_path, "sae_flat", "activation_fn_kwargs.k", "1e20")
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    assert_one_error(r, out, "cfg.json", "activation_fn_kwargs.k", "1e+20")


@pytest.mark.parametrize("key,text,shown", [
    ("d_in", "1e20", "1e+20"),
    ("d_sae", "18446744073709551616", "1.8446744073709552e+19"),
    ("d_sae", "0", "0"),
    ("d_in", "-3", "-3"),
    ("d_sae", "1.5", "1.5"),
    ("d_in", '"32"', '"32"'),
])
def test_cfg_sizes(world, tmp_path, key, text, shown):
    sae = sae_with_cfg_text(world, tmp_path, "sae_std", key, text)
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    line = assert_one_error(r, out, "cfg.json", '"%s"' % key)
    assert ("not " + shown).lower() in line.lower(), describe(r)


@pytest.mark.parametrize("text,shown", [
    ("0", "0"), ('["topk"]', '["topk"]'), ("null", "null"), ('"TopK"', '"TopK"'),
    ('{"name":"topk"}', '{"name":"topk"}'),
])
def test_cfg_architecture_not_a_known_name(world, tmp_path, text, shown):
    sae = sae_with_cfg_text(world, tmp_path, "sae_topk", "architecture", text)
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    line = assert_one_error(r, out, "cfg.json", '"architecture"')
    assert shown.lower() in line.lower(), describe(r)


def test_cfg_architecture_absent_is_standard(world, tmp_path):
    sae = copy_dir(world["sae_std"], tmp_path / "sae")
    edit_json(sae / "cfg.json", lambda c: c.pop("architecture"))
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    assert r.rc == 0, describe(r)
    assert claims_complete(out)
    info = run_saegap(["info", sae])
    assert info.rc == 0 and "standard" in info.out + info.err, describe(info)


@pytest.mark.parametrize("key,text", [
    ("activation_fn_str", "7"), ("normalize_activations", "[1]"), ("apply_b_dec_to_input", '"yes"'),
])
def test_cfg_other_keys_wrong_type(world, tmp_path, key, text):
    which = "sae_flat" if key == "activation_fn_str" else "sae_std"
    sae = sae_with_cfg_text(world, tmp_path, which, key, text)
    out = tmp_path / "out.h5"
    r = run_saegap(run_args(world, sae, out))
    line = assert_one_error(r, out, "cfg.json", '"%s"' % key)
    assert text.lower() in line.lower(), describe(r)


def test_cfg_k_huge_via_info(world, tmp_path):
    # `saegap info` reads the cfg alone: the same refusal
    sae = sae_with_cfg_text(world, tmp_path, "sae_topk", "k", "1e20")
    r = run_saegap(["info", sae])
    assert_one_error(r, None, "cfg.json", '"k"', "1e+20")


# ---------------------------------------------------------------------------------- exact sums

REPRO_TEST_C = r"""
#include "reprosum.h"
#include "error.h"
#include <math.h>
#include <stdio.h>
#include <stdint.h>

#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s\n", __LINE__, #c); return 1; } } while (0)

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ReproSum a = 0;
    CHECK(repro_add_checked(&a, 1.5) == 0 && repro_value(a) == 1.5);
    CHECK(repro_add_checked(&a, 7e25) == 0);                 /* below 2^86 */
    CHECK(!repro_overflowed(a));
    ReproSum b = 0;
    CHECK(repro_add_checked(&b, 7.8e25) == -1 && repro_overflowed(b)); /* one term too large */
    CHECK(repro_add_checked(&b, 1.0) == -1 && repro_overflowed(b));    /* poison is kept */
    CHECK(isnan(repro_value(b)));
    ReproSum c = 0;
    CHECK(repro_add_checked(&c, NAN) == -1 && repro_overflowed(c));
    c = 0;
    CHECK(repro_add_checked(&c, INFINITY) == -1 && repro_overflowed(c));
    /* many terms each in range whose sum leaves the 128-bit range: the addition itself */
    ReproSum d = 0;
    int failed_at = -1;
    for (int i = 0; i < 4; i++)
        if (repro_add_checked(&d, 7.7e25) != 0) { failed_at = i; break; }
    CHECK(failed_at == 2 && repro_overflowed(d));   /* 2 x 7.7e25 < 2^87 = 1.5e26 < 3 x */
    ReproSum e = 0, f = 0;
    CHECK(repro_add_checked(&e, -7.7e25) == 0 && repro_add_checked(&e, -7.7e25) == 0);
    CHECK(repro_add_checked(&e, -7.7e25) == -1 && repro_overflowed(e));
    /* merge: records read back */
    ReproSum g = 0, h = 0;
    repro_add_checked(&g, 7.7e25), repro_add_checked(&g, 7.0e25);
    repro_add_checked(&h, 7.7e25), repro_add_checked(&h, 7.0e25);
    CHECK(repro_merge(&g, h) == -1 && repro_overflowed(g));
    f = 0;
    CHECK(repro_merge(&f, REPRO_OVERFLOW) == -1 && repro_overflowed(f));
    ReproSum arr[3] = {0, 0, 0};
    repro_add_checked(&arr[1], 1e30);
    CHECK(repro_first_overflow(arr, 3) == 1);
    /* the MPI reduction keeps the poison and says so */
    ReproSum red[2] = {0, 0};
    repro_add_checked(&red[0], 2.0);
    repro_add_checked(&red[1], 1e30);
    CHECK(repro_allreduce(red, 2, MPI_COMM_WORLD) == -1);
    CHECK(repro_value(red[0]) == 2.0 && repro_overflowed(red[1]));
    ReproSum ok[1] = {0};
    repro_add_checked(&ok[0], 3.25);
    CHECK(repro_allreduce(ok, 1, MPI_COMM_WORLD) == 0 && repro_value(ok[0]) == 3.25);
    printf("OK\n");
    MPI_Finalize();
    return 0;
}
"""


@pytest.mark.parametrize("sanitize", [False, True])
def test_reprosum_overflow_reported_not_undefined(tmp_path, sanitize):
    """repro_add_checked / repro_merge / repro_allreduce: a value or a sum the 128-bit
    accumulator cannot hold is reported (poisoned), never undefined behaviour."""
    mpicc = shutil.which("mpicc")
    if mpicc is None:
        pytest.fail("mpicc not found (Open MPI's compiler wrapper)")
    src = tmp_path / "t.c"
    src.write_text(REPRO_TEST_C)
    exe = tmp_path / "t"
    flags = ["-std=c11", "-O1", "-Wall", "-Werror"]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fsanitize=signed-integer-overflow,float-cast-overflow"]
    cmd = [mpicc] + flags + ["-I", os.path.join(REPO, "include"), str(src),
                             os.path.join(REPO, "src", "reprosum.c"),
                             os.path.join(REPO, "src", "error.c"), "-lm", "-o", str(exe)]
    c = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and "OK" in p.stdout, p.stdout + p.stderr
    assert "runtime error" not in p.stderr, p.stderr


def scaled_model(world, tmp_path, rms):
    """The world's model with wte and wpe scaled to the given RMS: blocks.0.hook_resid_pre
    is wte + wpe, so the site's activations have entries of about that size."""
    m = model_copy(world, tmp_path)
    st = m / "model.safetensors"
    header, data = st_read(st)
    data = bytearray(data)
    for name, info in header.items():
        if name == "__metadata__" or not name.replace("transformer.", "") in ("wte.weight", "wpe.weight"):
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(bytes(data[b:e]), "<f4").astype(np.float64)
        arr = arr * (rms / np.sqrt(np.mean(arr * arr)))
        data[b:e] = arr.astype("<f4").tobytes()
    st_write(st, header, bytes(data))
    return m


def test_run_sum_overflow_names_site_and_metric(world, tmp_path):
    # embedding weights of ~7e12 make ||x||^2 ~ 1e27 at the site: beyond what the exact sums
    # hold (|term| < 2^86 = 7.7e25)
    m = scaled_model(world, tmp_path, 7e12)
    out = tmp_path / "out.h5"
    args = run_args(world, world["sae_std"], out)
    args[args.index("--model") + 1] = m
    r = run_saegap(args)
    # the metric as sitemetrics.c names the poisoned sum (the first in slot order: the sums of
    # explained_variance, ||x - x_hat||^2 and ||x||^2, overflow here)
    assert_one_error(r, out, SITE, ("explained_variance", "||x", "x_hat", "sum of x"))
