"""saegap reads .npy token files and Gemma Scope params.npz exactly as NumPy does, or refuses
them (issue 25, point 4).

Every input is given to np.load(allow_pickle=False) and to saegap:
  * NumPy refuses it      -> saegap must refuse it too (exit 1..127, one `saegap: error:` line);
  * NumPy reads it        -> saegap may refuse it (a clear refusal is never a wrong result), but
                             what saegap reads must be exactly NumPy's values.
Cases marked `must_read` are headers NumPy writes or reads without fuss (double quotes, keys in
another order, spaces, `(3, 8,)`, Fortran order, versions 2.0 and 3.0): saegap must read them.

Inputs: the fuzzers' seeds and saved regressions (tests/fuzz/corpus/tokens_npy/,
tests/fuzz/regressions/tokens_npy/, tests/fuzz/corpus/gemma_scope_npz/,
tests/fuzz/regressions/gemma_scope_npz/), the inputs a fuzz run accumulated when
SAEGAP_FUZZ_CORPUS names such a build directory (e.g. build-fuzz/fuzz-corpus), and headers and
archives made here.

How saegap's values are seen: token ids through `saegap dump` (its /tokens dataset holds the ids
read, as int32) on a tiny GPT-2 whose vocabulary covers GPT-2's ids; a params.npz through
`saegap run --interventions sae`, whose result must be identical to the same run on a clean
np.savez of the arrays NumPy read (so a different W_enc would show).

    SAEGAP_BIN=build/saegap /usr/bin/python3 -m pytest -q tests/python/test_numpy_agreement.py
"""

import glob
import io
import os
import shlex
import struct
import subprocess
import sys
import warnings
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import saegap_fixtures as fx  # noqa: E402

SAEGAP_BIN = os.environ.get("SAEGAP_BIN", "/work/main/build/saegap")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(REPO, "tests", "fuzz")
TIMEOUT = 120

# the model: GPT-2's vocabulary (the demo tokens hold 50256), n_embd 8 as the fuzz fixture's
# Gemma Scope archives (d_in 8)
VOCAB, N_POS, D = 50257, 64, 8
SITE = "blocks.0.hook_resid_post"  # gemma-scope-2b-pt-res/layer_0


class Result:
    pass


def saegap(args):
    if not (os.path.isfile(SAEGAP_BIN) and os.access(SAEGAP_BIN, os.X_OK)):
        pytest.fail(f"saegap binary not found at {SAEGAP_BIN!r} (build it, or set SAEGAP_BIN)", pytrace=False)
    cmd = [SAEGAP_BIN] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"HANG: no exit within {TIMEOUT}s: {shlex.join(cmd)}")
    r = Result()
    r.cmd, r.rc = cmd, p.returncode
    r.err = p.stderr.decode("utf-8", errors="replace")
    return r


def describe(r):
    return f"\ncommand: {shlex.join(r.cmd)}\nexit status: {r.rc}\nstderr:\n{r.err[-4000:]}"


def assert_refused(r, what):
    info = f"\n{what}" + describe(r)
    assert 1 <= r.rc <= 127, f"saegap did not refuse (exit {r.rc}) what NumPy refuses" + info
    lines = [ln for ln in r.err.splitlines() if ln.startswith("saegap: error:")]
    assert len(lines) == 1, f"{len(lines)} 'saegap: error:' lines, expected one" + info


def numpy_reads(path):
    """np.load's array, or the exception it raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.load(path, allow_pickle=False), None
    except Exception as e:  # noqa: BLE001 (any refusal counts)
        return None, e


# ---------------------------------------------------------------------------------- inputs

def npy_raw(header, data, version=(1, 0), pad=True):
    """A .npy file with this exact header text (padded as NumPy pads it when pad)."""
    h = header.encode("latin1") if isinstance(header, str) else header
    pre = 10 if version[0] == 1 else 12
    if pad:
        h += b" " * ((-(pre + len(h) + 1)) % 64) + b"\n"
    length = struct.pack("<H", len(h)) if version[0] == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes(version) + length + h + data


A = (np.arange(24, dtype=np.int64).reshape(3, 8) * 37 + 5) % 211   # ids < 211
C_I4 = A.astype("<i4").tobytes()
F_I4 = np.asfortranarray(A.astype("<i4")).tobytes(order="F")

# (name, header, data, version, must_read)
HANDMADE = [
    ("canonical", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), True),
    ("double-quotes", '{"descr": "<i4", "fortran_order": False, "shape": (3, 8)}', C_I4, (1, 0), True),
    ("keys-reordered", "{'shape': (3, 8), 'fortran_order': False, 'descr': '<i4'}", C_I4, (1, 0), True),
    ("spaces", "{ 'descr' :  '<i4' ,'fortran_order':False ,  'shape' : ( 3 ,8 ) , }", C_I4, (1, 0), True),
    ("shape-trailing-comma", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8,), }", C_I4, (1, 0), True),
    ("newlines-tabs", "{\n\t'descr': '<i4',\r\n\t'fortran_order': False,\n\t'shape': (3,\n 8)\n}", C_I4, (1, 0), True),
    ("leading-blanks", "  \t{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8)}", C_I4, (1, 0), True),
    ("fortran", "{'descr': '<i4', 'fortran_order': True, 'shape': (3, 8), }", F_I4, (1, 0), True),
    ("version-2", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (2, 0), True),
    ("version-3", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (3, 0), True),
    ("trailing-data", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4 + b"\1\2\3\4", (1, 0), True),
    ("pipe-u1", "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 8), }", A.astype("u1").tobytes(), (1, 0), True),
    ("form-feed", "{'descr': '<i4',\f'fortran_order': False, 'shape': (3, 8)}\f", C_I4, (1, 0), False),
    # NumPy refuses (the tester's cases and their kin)
    ("fortran-missing", "{'descr': '<i4', 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-misspelled", "{'descr': '<i4', 'fortran_ordr': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-one", "{'descr': '<i4', 'fortran_order': 1, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-zero", "{'descr': '<i4', 'fortran_order': 0, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-string", "{'descr': '<i4', 'fortran_order': 'True', 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-lowercase", "{'descr': '<i4', 'fortran_order': false, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("fortran-none", "{'descr': '<i4', 'fortran_order': None, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("extra-key", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), 'x': 1}", C_I4, (1, 0), False),
    ("descr-missing", "{'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("shape-missing", "{'descr': '<i4', 'fortran_order': False, }", C_I4, (1, 0), False),
    ("shape-list", "{'descr': '<i4', 'fortran_order': False, 'shape': [3, 8], }", C_I4, (1, 0), False),
    ("shape-float", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8.0), }", C_I4, (1, 0), False),
    ("shape-int-not-tuple", "{'descr': '<i4', 'fortran_order': False, 'shape': (24), }", C_I4, (1, 0), False),
    ("shape-leading-zero", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 08), }", C_I4, (1, 0), False),
    ("not-a-dict", "[('descr', '<i4'), ('fortran_order', False), ('shape', (3, 8))]", C_I4, (1, 0), False),
    ("garbage-after", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8)} x", C_I4, (1, 0), False),
    ("unclosed", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8)", C_I4, (1, 0), False),
    ("nul-byte", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8)}\0", C_I4, (1, 0), False),
    ("vertical-tab", "{'descr': '<i4',\v'fortran_order': False, 'shape': (3, 8)}", C_I4, (1, 0), False),
    ("bad-descr", "{'descr': '<x4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("minor-version-1", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 1), False),
    ("truncated-data", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4[:-4], (1, 0), False),
    ("header-over-10000",
     "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }" + " " * 10100, C_I4, (2, 0), False),
    # NumPy reads these; saegap may refuse, never read otherwise
    ("duplicate-key-last-wins", "{'descr': '<i4', 'fortran_order': True, 'shape': (3, 8), 'fortran_order': False}",
     C_I4, (1, 0), False),
    ("python2-long", "{'descr': '<i4', 'fortran_order': False, 'shape': (3L, 8L), }", C_I4, (1, 0), False),
    ("escape-in-descr", "{'descr': '<i\\x34', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("string-concat", "{'de' 'scr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("u-prefix", "{u'descr': '<i4', 'fortran_order': False, 'shape': (3, 8), }", C_I4, (1, 0), False),
    ("shape-hex", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 0x8), }", C_I4, (1, 0), False),
    ("shape-bool", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, True), }", A[:, :1].astype("<i4").tobytes(),
     (1, 0), False),
    ("shape-underscore", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 0_8), }", C_I4, (1, 0), False),
    ("comment-after", "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 8)} # x", C_I4, (1, 0), False),
    ("fortran-paren", "{'descr': '<i4', 'fortran_order': (False), 'shape': (3, 8), }", C_I4, (1, 0), False),
]


def handmade_bytes(case):
    name, header, data, version, _ = case
    return npy_raw(header, data, version)


def fuzz_inputs(target):
    """The fuzz target's seeds and regressions, and the inputs of a fuzz run if asked for."""
    files = sorted(glob.glob(os.path.join(FUZZ, "corpus", target, "*")))
    files += sorted(glob.glob(os.path.join(FUZZ, "regressions", target, "*")))
    extra = os.environ.get("SAEGAP_FUZZ_CORPUS")
    if extra:
        files += sorted(glob.glob(os.path.join(extra, target, "*")))
    return [f for f in files if os.path.isfile(f)]


# ---------------------------------------------------------------------------------- world

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("agree")
    mdir = base / "gpt2-vocab"
    fx.make_gpt2_model(str(mdir), n_layer=1, n_head=2, n_embd=D, n_positions=N_POS, vocab_size=VOCAB, seed=7)
    toks = fx.write_tokens_npy(str(base / "tokens.npy"), fx.random_tokens(2, 6, 211, seed=8))
    return {"base": base, "model": mdir, "tokens": toks}


# ---------------------------------------------------------------------------------- tokens

def saegap_token_ids(world, path, out):
    """saegap's ids for the token file (dump's /tokens), or the refusal."""
    r = saegap(["dump", "--model", world["model"], "--tokens", path, "--sites", "blocks.0.hook_resid_pre",
                "--out", out, "--threads-per-rank", 1])
    if r.rc != 0:
        return None, r
    with h5py.File(out, "r") as f:
        return np.asarray(f["tokens"][()]), r


def check_tokens(world, tmp_path, raw, what, must_read=False):
    path = tmp_path / "t.npy"  # the suffix decides the token format
    path.write_bytes(raw)
    ref, why = numpy_reads(path)
    got, r = saegap_token_ids(world, path, tmp_path / "dump.h5")
    if ref is None:
        assert_refused(r, f"{what}: np.load refuses it: {why!r}")
        return
    if got is None:
        assert not must_read, f"{what}: saegap refused what NumPy reads ({ref.dtype}, {ref.shape})" + describe(r)
        assert_refused(r, what)
        return
    assert ref.ndim == 2 and got.shape == ref.shape, \
        f"{what}: saegap read shape {got.shape}, NumPy {ref.shape} ({ref.dtype})" + describe(r)
    assert np.array_equal(got.astype(np.int64), ref.astype(np.int64)), \
        f"{what}: saegap read other ids than NumPy:\nsaegap {got.tolist()}\nnumpy  {ref.tolist()}" + describe(r)


@pytest.mark.parametrize("path", fuzz_inputs("tokens_npy"),
                         ids=lambda p: os.path.relpath(p, FUZZ))
def test_token_fuzz_inputs_agree_with_numpy(world, tmp_path, path):
    with open(path, "rb") as f:
        check_tokens(world, tmp_path, f.read(), os.path.relpath(path, REPO))


@pytest.mark.parametrize("case", HANDMADE, ids=[c[0] for c in HANDMADE])
def test_token_headers_agree_with_numpy(world, tmp_path, case):
    check_tokens(world, tmp_path, handmade_bytes(case), case[0], must_read=case[4])


def test_handmade_cases_are_what_they_say():
    """The cases marked must_read are read by NumPy; the refusals above are NumPy's own."""
    for case in HANDMADE:
        raw = handmade_bytes(case)
        ref, why = numpy_reads(io.BytesIO(raw))
        if case[4]:
            assert ref is not None and np.array_equal(ref, A), f"{case[0]}: NumPy does not read it as A: {why!r}"


# ---------------------------------------------------------------------------------- params.npz

NPZ_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def numpy_npz(path):
    """np.load's five arrays (as Gemma Scope's loaders read them), or the exception."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in NPZ_KEYS}, None
    except Exception as e:  # noqa: BLE001
        return None, e


def gemma_dir(root):
    d = os.path.join(root, "gemma-scope-2b-pt-res", "layer_0", "width_1k", "average_l0_5")
    os.makedirs(d, exist_ok=True)
    return d


def saegap_sae_run(world, sae_dir, out):
    r = saegap(["run", "--model", world["model"], "--sae", sae_dir, "--tokens", world["tokens"],
                "--interventions", "sae", "--out", out, "--threads-per-rank", 1, "--quiet"])
    return r


def numeric_datasets(path):
    got = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            # results; /schedule holds who computed each unit and its timings
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "iufb" and not name.startswith("schedule/"):
                got[name] = obj[()]
        f.visititems(visit)
    return got


def check_npz(world, tmp_path, raw, what, must_read=False):
    d = gemma_dir(str(tmp_path / "input"))
    path = os.path.join(d, "params.npz")
    with open(path, "wb") as f:
        f.write(raw)
    ref, why = numpy_npz(path)
    r = saegap_sae_run(world, d, tmp_path / "input.h5")
    if ref is None:
        assert_refused(r, f"{what}: np.load refuses it: {why!r}")
        return
    if r.rc != 0:
        assert not must_read, f"{what}: saegap refused what NumPy reads" + describe(r)
        assert_refused(r, what)
        return
    # the same run on a clean archive of the arrays NumPy read: the same numbers
    c = gemma_dir(str(tmp_path / "clean"))
    np.savez(os.path.join(c, "params.npz"), **ref)
    rc = saegap_sae_run(world, c, tmp_path / "clean.h5")
    assert rc.rc == 0, f"{what}: the clean archive of NumPy's arrays is refused" + describe(rc)
    a, b = numeric_datasets(tmp_path / "input.h5"), numeric_datasets(tmp_path / "clean.h5")
    assert sorted(a) == sorted(b), what
    differ = [k for k in a if not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")]
    assert not differ, f"{what}: saegap read other values than NumPy (results differ at {differ[:5]})"


@pytest.mark.parametrize("path", fuzz_inputs("gemma_scope_npz"),
                         ids=lambda p: os.path.relpath(p, FUZZ))
def test_npz_fuzz_inputs_agree_with_numpy(world, tmp_path, path):
    with open(path, "rb") as f:
        check_npz(world, tmp_path, f.read(), os.path.relpath(path, REPO))


def npy_member(a, header=None):
    f = io.BytesIO()
    np.save(f, np.asarray(a, np.float32))
    if header is None:
        return f.getvalue()
    return npy_raw(header.replace("SHAPE", repr(tuple(a.shape))), np.ascontiguousarray(a, np.float32).tobytes())


def npz_params(seed=3, d_sae=16):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.standard_normal((D, d_sae)), "W_dec": rng.standard_normal((d_sae, D)),
            "b_enc": rng.standard_normal(d_sae) * 0.1, "b_dec": rng.standard_normal(D) * 0.1,
            "threshold": np.full(d_sae, 0.05)}


def zip_bytes(members, compression=zipfile.ZIP_STORED):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(f, "w", compression=compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return f.getvalue()


def npz_cases():
    p = npz_params()
    base = [(k + ".npy", npy_member(p[k])) for k in NPZ_KEYS]
    twice = [(k + ".npy", npy_member(2 * p[k])) for k in NPZ_KEYS]
    dq = '{"descr": "<f4", "fortran_order": False, "shape": SHAPE}'
    return [
        ("stored", zip_bytes(base), True),
        ("deflate", zip_bytes(base, zipfile.ZIP_DEFLATED), True),
        ("members-reversed", zip_bytes(base[::-1]), True),
        ("double-quoted-headers", zip_bytes([(k + ".npy", npy_member(p[k], dq))
                                             for k in NPZ_KEYS]), True),
        # NumPy reads it; saegap refuses an array Gemma Scope's JumpReLU SAE does not have, as
        # SAELens's Gemma Scope loader does (issue 26.6): refused by name, never half-read
        ("extra-member", zip_bytes(base + [("notes.npy", npy_member(np.zeros(3)))]), False),
        ("duplicate-W_enc", zip_bytes(base + [twice[0]]), False),
        ("duplicate-all", zip_bytes(base + twice), False),
        ("bare-name-W_enc", zip_bytes(base + [("W_enc", twice[0][1])]), False),
        ("W_enc-fortran-missing", zip_bytes(
            [("W_enc.npy", npy_member(p["W_enc"], "{'descr': '<f4', 'shape': SHAPE}"))] + base[1:]), False),
        ("W_enc-fortran-one", zip_bytes(
            [("W_enc.npy", npy_member(p["W_enc"], "{'descr': '<f4', 'fortran_order': 1, 'shape': SHAPE}"))] + base[1:]),
         False),
    ]


NPZ_CASES = npz_cases()


@pytest.mark.parametrize("case", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_archives_agree_with_numpy(world, tmp_path, case):
    name, raw, must_read = case
    check_npz(world, tmp_path, raw, name, must_read)
