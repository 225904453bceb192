"""Tests of the distributed features of `saegap run`: identical results on any
number of ranks, the correlation matrices, crash safety (kill -9 + --resume),
`saegap verify`, refusing to resume another job, SIGTERM (exit 75, resumable)
and refusing a second writer.

    /usr/bin/python3 -m pytest -q tests/python/test_distributed.py

Environment (tests/python/conftest.py): SAEGAP_BIN, SAEGAP_MPIRUN.  Every
saegap process gets --threads-per-rank 1 (the machine has 2 cores) and a
timeout; every process this file starts is killed (by pid) when its test
ends.  A missing feature is a failure, never a skip.

What is compared: every dataset under /sites and /correlation (dtype, shape
and bytes; string datasets by value) and every attribute of each
/sites/<site> group (dtype and bytes).  The root attributes legitimately
differ (created, command_line, ranks) and are not compared, except
`complete`.

Killing a run: Open MPI 4.1's mpirun puts each rank in a process group of
its own, so killpg(mpirun) alone would leave the ranks running (and
writing).  kill_job() therefore SIGKILLs every process of the session the
launcher was started in (start_new_session=True): mpirun and all its ranks,
as a node failure or a batch system's kill would.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest

import gpt2_reference as g2
import run_reference as rr
from conftest import mpirun_cmd, saegap_bin_path
from saegap_fixtures import make_gpt2_model, random_tokens, write_tokens_h5
from test_run import build_sae

TIMEOUT = 120          # seconds, every subprocess
N_LAYER, N_HEAD, D_MODEL, VOCAB, N_POS = 2, 4, 64, 211, 32
BOS = VOCAB - 1
N_SMALL, CTX = 12, 16
N_LONG = 1000          # ~3 s on 2 ranks x 1 thread (measured before resume existed)
SITES = (("blocks.0.hook_resid_pre", "standard"),
         ("blocks.1.attn.hook_z", "jumprelu"),
         ("blocks.1.hook_resid_post", "topk"))
ALL11 = ",".join(rr.ALL_INTERVENTIONS)
SEED = 11
EX_TEMPFAIL = 75


# ================================================================ processes

def _cmd(args, np_):
    cmd = [saegap_bin_path()] + [str(a) for a in args]
    if np_ is not None:
        cmd = mpirun_cmd() + ["-np", str(np_)] + cmd
    return cmd


def _env():
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return env


def _fmt(cmd):
    return " ".join(cmd)


class Result:
    def __init__(self, cmd, rc, out, err, elapsed):
        self.cmd, self.returncode, self.elapsed = cmd, rc, elapsed
        self.stdout = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        self.stderr = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")

    def describe(self):
        return "$ %s\n  rc=%s after %.1f s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            _fmt(self.cmd), self.returncode, self.elapsed, self.stdout[-3000:], self.stderr[-3000:])


def run(args, np_=None, timeout=TIMEOUT):
    """Run saegap to completion (singleton if np_ is None); -> Result."""
    cmd = _cmd(args, np_)
    t = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(p)
        out, err = p.communicate()
        return Result(cmd, "TIMEOUT(%d s)" % timeout, out, err, time.time() - t)
    finally:
        kill_job(p)  # stray ranks of a finished launcher, if any
    return Result(cmd, p.returncode, out, err, time.time() - t)


def _session_pids(sid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        # state ppid pgrp session ...
        if rest[0] not in ("Z", "X") and int(rest[3]) == sid:
            pids.append(int(d))
    return pids


def kill_job(p, sig=signal.SIGKILL):
    """SIGKILL every live process of the session started for p (p.pid is
    its leader): the launcher and all ranks.  Waits until they are gone."""
    sid = p.pid
    deadline = time.time() + 20
    while True:
        pids = _session_pids(sid)
        if p.poll() is None and sid not in pids:
            pids.append(sid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.time() > deadline:
            raise AssertionError("processes of session %d survive SIGKILL: %s" % (sid, pids))
        time.sleep(0.02)
        p.poll()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Job:
    """A saegap run in the background (own session)."""

    def __init__(self, args, np_=None):
        self.cmd = _cmd(args, np_)
        self.t0 = time.time()
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_env(), start_new_session=True)

    def alive(self):
        return self.p.poll() is None

    def finish(self, timeout=TIMEOUT):
        try:
            out, err = self.p.communicate(timeout=timeout)
            rc = self.p.returncode
        except subprocess.TimeoutExpired:
            kill_job(self.p)
            out, err = self.p.communicate()
            rc = "TIMEOUT(%d s)" % timeout
        kill_job(self.p)
        return Result(self.cmd, rc, out, err, time.time() - self.t0)

    def kill9(self):
        """kill -9 of the whole job; -> Result."""
        kill_job(self.p)
        out, err = self.p.communicate()
        return Result(self.cmd, self.p.returncode, out, err, time.time() - self.t0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None or _session_pids(self.p.pid):
            kill_job(self.p)
        for s in (self.p.stdout, self.p.stderr):
            if s:
                s.close()


# ================================================================ result files

def _value_key(v):
    """(dtype, bytes) of an attribute / dataset value; strings by value."""
    a = np.asarray(v)
    if a.dtype.kind in "OSU":
        return ("str", tuple(x.decode() if isinstance(x, bytes) else str(x) for x in a.reshape(-1)),
                a.shape)
    return (a.dtype.str, a.tobytes(), a.shape)


def snapshot(path):
    """Everything that must be bit-identical: {key: value_key}, plus root attrs."""
    snap, root = {}, {}
    with h5py.File(path, "r") as f:
        root = dict(f.attrs)

        def visit(name, obj):
            if not name.startswith(("sites", "correlation")):
                return
            if isinstance(obj, h5py.Dataset):
                snap["/" + name] = _value_key(obj[()])
            elif isinstance(obj, h5py.Group) and name.startswith("sites/") and name.count("/") == 1:
                for k, v in obj.attrs.items():
                    snap["/%s@%s" % (name, k)] = _value_key(v)
        f.visititems(visit)
    return snap, root


def diff_snapshots(a, b):
    """Keys that differ between two snapshots (missing on either side too)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(k + " (only in the second)")
        elif k not in b:
            out.append(k + " (only in the first)")
        elif a[k] != b[k]:
            out.append(k)
    return out


def complete_attr(path):
    with h5py.File(path, "r") as f:
        c = f.attrs.get("complete")
    return None if c is None else int(np.asarray(c).reshape(-1)[0])


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def assert_same_as(path, ref_snap, what):
    snap, root = snapshot(path)
    c = root.get("complete")
    assert c is not None and int(np.asarray(c).reshape(-1)[0]) == 1, \
        "%s: root attribute complete = %r, want 1" % (what, c)
    d = diff_snapshots(ref_snap, snap)
    assert not d, "%s: %d of %d /sites + /correlation items differ from the uninterrupted run: %s" % (
        what, len(d), len(ref_snap), d[:12])


# ================================================================ fixtures

@pytest.fixture(scope="module")
def dworld(tmp_path_factory, saegap_bin):
    """2-layer GPT-2 (d 64, vocab 211), SAEs at 3 sites fitted to its
    activations, a small token file (12 x 16, BOS at 0 and once mid-row) and
    a long one (1000 x 16) for the interruption tests."""
    base = tmp_path_factory.mktemp("dist_world")
    mdir = str(base / "tiny-gpt2")
    make_gpt2_model(mdir, n_layer=N_LAYER, n_head=N_HEAD, n_embd=D_MODEL, n_positions=N_POS,
                    vocab_size=VOCAB, seed=31)
    import json
    cpath = os.path.join(mdir, "config.json")
    with open(cpath) as f:
        c = json.load(f)
    c["_name_or_path"] = "tiny-gpt2"
    with open(cpath, "w") as f:
        json.dump(c, f, indent=2)
    config, params = g2.load_model(mdir)
    tok = random_tokens(N_SMALL, CTX, VOCAB - 1, seed=1, bos=BOS)
    tok[3, 6] = BOS  # inside the position-scope window 5..8 too: NaN rows in the gaps
    fwd = {"processed": g2.forward(config, params, tok, basis="processed")}
    w = {"fwd": fwd, "meas": tok != BOS}
    saes = [build_sae(w, base / ("sae%d" % i), site, arch, "v6")["dir"]
            for i, (site, arch) in enumerate(SITES)]
    other = build_sae(w, base / "sae_other", SITES[2][0], "standard", "v6")["dir"]
    small = write_tokens_h5(str(base / "small.h5"), tok)
    long_tok = random_tokens(N_LONG, CTX, VOCAB - 1, seed=2, bos=BOS)
    long = write_tokens_h5(str(base / "long.h5"), long_tok)
    return {"base": base, "model": mdir, "saes": saes, "other_sae": other, "small": small,
            "long": long}


def run_args(dw, out, tokens, extra=(), saes=None, seed=SEED):
    a = ["run", "--model", dw["model"]]
    for s in (saes or dw["saes"]):
        a += ["--sae", s]
    a += ["--tokens", tokens, "--out", str(out), "--interventions", ALL11, "--seed", seed,
          "--threads-per-rank", 1, "--quiet"]
    return a + list(extra)


VARIANTS = {
    "samples2": ["--samples", 2],
    "position": ["--scope", "position", "--position", 5, "--window", 4],
}
LAUNCHES = [("singleton", None), ("np1", 1), ("np2", 2), ("np3", 3), ("np4", 4)]


@pytest.fixture(scope="module")
def rank_runs(dworld):
    """{variant: {launch: (path, Result)}}: the small job, every launch."""
    out = {}
    for v, extra in VARIANTS.items():
        out[v] = {}
        for name, np_ in LAUNCHES:
            path = dworld["base"] / ("small_%s_%s.h5" % (v, name))
            out[v][name] = (str(path), run(run_args(dworld, path, dworld["small"], extra), np_))
    return out


@pytest.fixture(scope="module")
def long_ref(dworld):
    """The uninterrupted long run on 2 ranks: its snapshot, path, duration."""
    path = dworld["base"] / "long_ref.h5"
    r = run(run_args(dworld, path, dworld["long"]), 2)
    assert r.returncode == 0, "the uninterrupted long run failed:\n" + r.describe()
    snap, root = snapshot(str(path))
    return {"path": str(path), "snap": snap, "root": root, "duration": r.elapsed}


def kill_at(args, np_, at):
    """Start a run, kill -9 the whole job `at` seconds after the start.
    -> (Result, was_running_at_kill)."""
    with Job(args, np_) as j:
        while time.time() - j.t0 < at and j.alive():
            time.sleep(0.01)
        running = j.alive()
        r = j.kill9()
    return r, running


@pytest.fixture(scope="module")
def killed_long(dworld, long_ref):
    """A long run killed (-9) half-way: pristine copy of the file it left."""
    path = dworld["base"] / "killed_pristine.h5"
    at = max(0.5 * long_ref["duration"], 0.8)
    r, running = kill_at(run_args(dworld, path, dworld["long"]), 2, at)
    assert running, "the long run finished within %.1f s; cannot interrupt it:\n%s" % (at, r.describe())
    assert os.path.exists(str(path)), "no result file %.1f s into the run (killed then)" % at
    return str(path)


def copy_of(src, dst):
    shutil.copyfile(src, str(dst))
    return str(dst)


# ================================================================ 1. any number of ranks, bit-identical

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ranks_bit_identical(rank_runs, variant):
    runs = rank_runs[variant]
    for name, (path, r) in runs.items():
        assert r.returncode == 0, "%s run failed:\n%s" % (name, r.describe())
    ref_snap, ref_root = snapshot(runs["singleton"][0])
    # the snapshot holds what it should: kl and ce of all 11 interventions at every site
    with h5py.File(runs["singleton"][0], "r") as f:
        sites = sorted(f["sites"])
    assert sites == sorted(s for s, _ in SITES), sites
    missing = ["/sites/%s/%s/%s" % (s, g, iv) for s in sites for g in ("kl", "ce")
               for iv in rr.ALL_INTERVENTIONS if "/sites/%s/%s/%s" % (s, g, iv) not in ref_snap]
    assert not missing, "datasets missing: %s" % missing
    errs = []
    for name, np_ in LAUNCHES:
        path, r = runs[name]
        snap, root = snapshot(path)
        if complete_attr(path) != 1:
            errs.append("%s: complete = %r" % (name, complete_attr(path)))
        ranks = int(np.asarray(root.get("ranks", -1)).reshape(-1)[0])
        if ranks != (np_ or 1):
            errs.append("%s: root attribute ranks = %d, want %d" % (name, ranks, np_ or 1))
        d = diff_snapshots(ref_snap, snap)
        if d:
            errs.append("%s vs singleton: %d of %d items differ: %s" % (name, len(d), len(ref_snap), d[:10]))
    assert not errs, "variant %s:\n  %s" % (variant, "\n  ".join(errs))


def test_comparison_detects_another_seed(dworld, rank_runs):
    """The bit comparison can fail: another seed changes every random
    intervention's data (and nothing deterministic)."""
    path = dworld["base"] / "small_samples2_seed12.h5"
    r = run(run_args(dworld, path, dworld["small"], VARIANTS["samples2"], seed=SEED + 1))
    assert r.returncode == 0, r.describe()
    a, _ = snapshot(rank_runs["samples2"]["singleton"][0])
    b, _ = snapshot(str(path))
    d = set(diff_snapshots(a, b))
    for s, _ in SITES:
        for iv in rr.RANDOM:
            k = "/sites/%s/kl/%s" % (s, iv)
            assert k in d, "seeds %d and %d give identical %s" % (SEED, SEED + 1, k)
        for iv in rr.DETERMINISTIC:
            k = "/sites/%s/kl/%s" % (s, iv)
            assert k not in d, "deterministic %s depends on the seed" % k


# ================================================================ 2. correlation matrices

def avg_ranks(v):
    """0-based ranks, ties get the average of their positions."""
    o = np.argsort(v, kind="mergesort")
    sv = v[o]
    b = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1], True])
    starts, ends = b[:-1], b[1:]
    r = np.empty(len(v))
    r[o] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return r


def test_avg_ranks_ties():
    assert np.array_equal(avg_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [3, 0, 3, 1, 3])
    assert np.array_equal(avg_ranks(np.array([0.5, 0.5])), [0.5, 0.5])


def expected_correlation(f, iv, sites):
    """(pearson, spearman, n_tokens) from the file's kl datasets."""
    cols = []
    for s in sites:
        kl = f["sites/%s/kl/%s" % (s, iv)][()].astype(np.float64)
        eps = f["sites/%s/kl/eps_random" % s][()].astype(np.float64)
        if eps.ndim == kl.ndim + 1:
            eps = eps.mean(-1)
        assert kl.ndim == 2 and eps.shape == kl.shape, (s, iv, kl.shape, eps.shape)
        cols.append((kl - eps).reshape(-1))
    G = np.stack(cols, 1)
    G = G[np.isfinite(G).all(1)]
    pe = np.corrcoef(G, rowvar=False)
    R = np.stack([avg_ranks(G[:, k]) for k in range(G.shape[1])], 1)
    sp = np.corrcoef(R, rowvar=False)
    return pe, sp, len(G)


def check_correlation_file(path, what):
    errs = []
    with h5py.File(path, "r") as f:
        if "correlation" not in f:
            raise AssertionError("%s: no /correlation group (has %s)" % (what, sorted(f)))
        all_sites = sorted(f["sites"])
        ivs = [iv for iv in rr.DETERMINISTIC if "kl" in f["sites"][all_sites[0]]
               and iv in f["sites"][all_sites[0]]["kl"]]
        assert "sae" in ivs
        for iv in ivs:
            name = "%s_minus_eps_random" % iv
            if name not in f["correlation"]:
                errs.append("/correlation/%s missing" % name)
                continue
            g = f["correlation"][name]
            absent = [k for k in ("pearson", "spearman", "sites") if k not in g]
            if absent:
                errs.append("/correlation/%s: %s missing" % (name, absent))
                continue
            got = {}
            sites = [x.decode() if isinstance(x, bytes) else str(x) for x in g["sites"][()]]
            if sorted(sites) != all_sites:
                errs.append("/correlation/%s/sites = %s, want the %d sites %s" % (name, sites, len(all_sites), all_sites))
                continue
            K = len(sites)
            for k in ("pearson", "spearman"):
                got[k] = g[k][()]
                if g[k].dtype != np.float64 or g[k].shape != (K, K):
                    errs.append("/correlation/%s/%s: %s %s, want float64 (%d, %d)" % (
                        name, k, g[k].dtype, g[k].shape, K, K))
            if len(got) < 2 or any(got[k].shape != (K, K) for k in got):
                continue
            pe, sp, ntok = expected_correlation(f, iv, sites)
            if ntok < 10:
                errs.append("%s: only %d tokens finite at every site" % (name, ntok))
            for k, want in (("pearson", pe), ("spearman", sp)):
                a = got[k]
                if not np.all(np.abs(np.diag(a) - 1) <= 1e-12):
                    errs.append("/correlation/%s/%s: diagonal %s, want 1" % (name, k, np.diag(a)))
                e = np.abs(a - want).max()
                if not (e <= 1e-6):
                    errs.append("/correlation/%s/%s: max |file - recomputed| = %.3g > 1e-6\n"
                                "    file %s\n    recomputed %s" % (name, k, e, a.tolist(), want.tolist()))
            for k in ("pearson", "spearman"):
                if np.abs(got[k] - got[k].T).max() > 1e-12:
                    errs.append("/correlation/%s/%s not symmetric" % (name, k))
    assert not errs, "%s:\n  %s" % (what, "\n  ".join(errs))


@pytest.mark.parametrize("variant", list(VARIANTS) + ["long"])
def test_correlation_recomputed(request, variant):
    if variant == "long":
        path = request.getfixturevalue("long_ref")["path"]
    else:
        path, r = request.getfixturevalue("rank_runs")[variant]["np3"]
        assert r.returncode == 0, r.describe()
    check_correlation_file(path, "correlation (%s)" % variant)


def test_correlation_check_can_fail(rank_runs, tmp_path):
    """check_correlation_file rejects a file whose matrix is off by 1e-5."""
    path, r = rank_runs["samples2"]["singleton"]
    assert r.returncode == 0, r.describe()
    p = copy_of(path, tmp_path / "tampered.h5")
    with h5py.File(p, "a") as f:
        if "correlation/sae_minus_eps_random/spearman" not in f:
            pytest.fail("no /correlation/sae_minus_eps_random/spearman to tamper with", pytrace=False)
        ds = f["correlation/sae_minus_eps_random/spearman"]
        a = ds[()]
        a[0, 1] += 1e-5
        ds[...] = a
    with pytest.raises(AssertionError, match="spearman"):
        check_correlation_file(p, "tampered")


# ================================================================ 3. kill -9 and --resume, verify

def verify(path):
    return run(["verify", str(path)], None, timeout=60)


def _no_crash(r):
    assert isinstance(r.returncode, int) and 1 <= r.returncode <= 127, \
        "exit status %r, want 1..127 (no crash, no signal)\n%s" % (r.returncode, r.describe())
    for bad in ("Segmentation", "AddressSanitizer", "core dumped", "Traceback"):
        assert bad not in r.stderr, bad + "\n" + r.describe()


def assert_verify_resumable(path):
    v = verify(path)
    text = (v.stdout + v.stderr).lower()
    assert v.returncode == 3 and "resumable" in text and "units" in text, \
        "verify on an interrupted file: want exit 3 and the words 'resumable', 'units'\n" + v.describe()


def assert_verify_complete(path):
    v = verify(path)
    text = (v.stdout + v.stderr).lower()
    assert v.returncode == 0 and "complete" in text, \
        "verify on a complete file: want exit 0 and the word 'complete'\n" + v.describe()


def test_verify_complete_files(long_ref, rank_runs):
    assert_verify_complete(long_ref["path"])
    assert_verify_complete(rank_runs["position"]["np2"][0])


# (id, kill moment: seconds after the start, or a fraction of the uninterrupted run, resume launches)
KILLS = [
    ("very-early-0.3s", ("s", 0.3), (2,)),
    ("mid-resume-np3-killed-again", ("frac", 0.4), (3, 3)),
    ("late-resume-singleton", ("frac", 0.8), (None,)),
]


@pytest.mark.parametrize("kill", KILLS, ids=[k[0] for k in KILLS])
def test_kill9_then_resume(dworld, long_ref, tmp_path, kill):
    kid, (unit, moment), resumes = kill
    at = moment if unit == "s" else moment * long_ref["duration"]
    out = tmp_path / "F.h5"
    args = run_args(dworld, out, dworld["long"])
    r, running = kill_at(args, 2, at)
    assert running, "the run ended before the kill at %.2f s (make it longer):\n%s" % (at, r.describe())
    notes = ["killed at %.2f s (uninterrupted run %.2f s)" % (at, long_ref["duration"])]
    if os.path.exists(str(out)):
        assert complete_attr(str(out)) != 1, "a killed run left complete = 1"
        assert_verify_resumable(str(out))
    else:
        notes.append("no file yet at the kill")
    for i, np_ in enumerate(resumes):
        if i + 1 < len(resumes):
            # kill the resuming run too, a third of the way in
            r2, running2 = kill_at(args + ["--resume"], np_, max(0.3, 0.33 * long_ref["duration"]))
            notes.append("resume %d killed (running: %s)" % (i + 1, running2))
            if os.path.exists(str(out)) and running2:
                assert_verify_resumable(str(out))
            continue
        r = run(args + ["--resume"], np_)
        assert r.returncode == 0, "--resume (np %s) after kill -9: %s\n%s" % (np_, notes, r.describe())
    assert_same_as(str(out), long_ref["snap"], "%s (%s)" % (kid, "; ".join(notes)))
    assert_verify_complete(str(out))


def _damage(src, dst, how):
    p = copy_of(src, dst)
    size = os.path.getsize(p)
    if how == "overwrite4k":
        rng = np.random.default_rng(7)
        with open(p, "r+b") as f:
            f.seek(size // 2 - 2048)
            f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        with open(p, "r+b") as f:
            f.truncate(size // 2)
    return p


@pytest.mark.parametrize("source", ["complete", "killed"])
@pytest.mark.parametrize("how", ["overwrite4k", "truncate_half"])
def test_verify_damaged(request, tmp_path, source, how):
    src = request.getfixturevalue("long_ref")["path"] if source == "complete" \
        else request.getfixturevalue("killed_long")
    p = _damage(src, tmp_path / "damaged.h5", how)
    v = verify(p)
    _no_crash(v)
    assert v.returncode in (3, 4), \
        "verify on a %s file damaged by %s: want exit 4 (damaged) or 3 (resumable), never 0\n%s" % (
            source, how, v.describe())


def test_verify_killed_file(killed_long):
    assert complete_attr(killed_long) != 1
    assert_verify_resumable(killed_long)


# ================================================================ 4. --resume: missing file, another job

def test_resume_without_file_just_runs(dworld, rank_runs, tmp_path):
    out = tmp_path / "new.h5"
    r = run(run_args(dworld, out, dworld["small"], VARIANTS["samples2"]) + ["--resume"], 2)
    assert r.returncode == 0, "--resume with no file yet:\n" + r.describe()
    ref_path, ref_r = rank_runs["samples2"]["singleton"]
    assert ref_r.returncode == 0, ref_r.describe()
    assert_same_as(str(out), snapshot(ref_path)[0], "--resume on a missing file")


OTHER_JOBS = [
    # (id, what changes, words the error must contain (any))
    ("seed", "seed", ("seed",)),
    ("contexts", "contexts", ("contexts", "n_contexts")),
    ("sae", "sae", ("sae",)),
    ("seed-on-complete-file", "seed", ("seed",)),
]


@pytest.mark.parametrize("case", OTHER_JOBS, ids=[c[0] for c in OTHER_JOBS])
def test_resume_refuses_another_job(request, dworld, tmp_path, case):
    cid, change, words = case
    src = request.getfixturevalue("long_ref")["path"] if cid.endswith("complete-file") \
        else request.getfixturevalue("killed_long")
    out = copy_of(src, tmp_path / "F.h5")
    before = sha256(out)
    st = os.stat(out)
    kw = {}
    extra = []
    if change == "seed":
        kw["seed"] = SEED + 1
    elif change == "contexts":
        extra = ["--contexts", N_LONG - 100]
    else:
        kw["saes"] = dworld["saes"][:2] + [dworld["other_sae"]]
    r = run(run_args(dworld, out, dworld["long"], extra, **kw) + ["--resume"], 2, timeout=60)
    _no_crash(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("saegap: error:")]
    assert lines, "no 'saegap: error:' line\n" + r.describe()
    assert any(w in ln.lower() for ln in lines for w in words), \
        "the error does not name what differs (%s)\n%s" % (" or ".join(words), r.describe())
    assert sha256(out) == before and os.path.getsize(out) == st.st_size, \
        "the refused --resume changed the file\n" + r.describe()


# ================================================================ 5. SIGTERM: exit 75, resumable

def test_sigterm_exit75_then_resume(dworld, long_ref, tmp_path):
    out = tmp_path / "F.h5"
    args = run_args(dworld, out, dworld["long"])
    at = max(0.5 * long_ref["duration"], 1.0)
    with Job(args, 2) as j:
        while time.time() - j.t0 < at and j.alive():
            time.sleep(0.01)
        running = j.alive()
        assert running, "the run ended before SIGTERM at %.1f s" % at
        j.p.send_signal(signal.SIGTERM)  # to mpirun only; Open MPI forwards it to the ranks
        r = j.finish(timeout=60)
    assert r.returncode == EX_TEMPFAIL, \
        "SIGTERM %.1f s into a 2-rank run: exit status %r, want %d (interrupted, resumable)\n%s" % (
            at, r.returncode, EX_TEMPFAIL, r.describe())
    assert os.path.exists(str(out)), "no result file after SIGTERM"
    assert complete_attr(str(out)) == 0, "after SIGTERM complete = %r, want 0" % complete_attr(str(out))
    assert_verify_resumable(str(out))
    r = run(args + ["--resume"], 2)
    assert r.returncode == 0, "--resume after SIGTERM:\n" + r.describe()
    assert_same_as(str(out), long_ref["snap"], "SIGTERM + --resume")


# ================================================================ 6. a second writer is refused

def test_second_writer_refused(dworld, long_ref, tmp_path):
    out = tmp_path / "F.h5"
    args = run_args(dworld, out, dworld["long"])
    with Job(args, 2) as a:
        deadline = time.time() + 30
        while not os.path.exists(str(out)) and a.alive() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert a.alive(), "run A ended before B could start:\n" + a.finish().describe()
        b = run(args + ["--resume"], None, timeout=60)
        a_running = a.alive()
        ra = a.finish()
    _no_crash(b)
    text = b.stderr.lower()
    assert "saegap: error:" in text and any(w in text for w in ("lock", "in use", "being written")), \
        "second writer: want 'saegap: error:' mentioning lock / in use / being written\n" + b.describe()
    assert b.elapsed < 15, "second writer refused only after %.1f s" % b.elapsed
    assert ra.returncode == 0, "run A (while B tried to resume its file):\n" + ra.describe()
    assert_same_as(str(out), long_ref["snap"], "run A with a refused second writer (A still running "
                   "when B returned: %s)" % a_running)
