"""A full disk (or a failing write) loses nothing (issue 12.1).

    /usr/bin/python3 -m pytest -q tests/python/test_disk_full.py     (as root: it mounts tmpfs)

saegap knows a result's size before creating it (every dataset is allocated at creation):
it refuses a folder that cannot hold it before any work, reserves the file's blocks (and a
reserve for the metadata written at the end) right after creating it, so a disk that fills
up later cannot fail a write. These tests fill a small tmpfs at several moments on 1-3 ranks
and check: every rank ends in bounded time with one message naming the file and saying "no
space left on device", no HDF5 diagnostics, no half-written result presented as complete;
once space is freed the same command (with --resume) finishes with /sites and /correlation
byte-identical to an uninterrupted run. A write that fails mid-run (injected with
SAEGAP_FAULT_WRITE_ROWS) ends every rank and leaves a resumable file.
"""

import os
import subprocess
import tempfile
import threading
import time

import h5py
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("SAEGAP_BIN", os.path.join(ROOT, "build", "saegap"))
JOB = os.path.join(ROOT, "jobs", "demo.job")
TIMEOUT = 240
TMPFS_MB = 8    # the result: < 1 MB of datasets + the 4.5 MB end-of-run reserve

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root (CI runs as root)")


def env():
    e = dict(os.environ)
    e.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return e


SAES = [os.path.join(ROOT, "jobs", "demo", "saes", s) for s in ("blocks.1.hook_resid_pre", "blocks.2.attn.hook_z")]


def cmd(out, np_, extra=()):
    """The demo job cut to what these tests need: 2 sites, 3 interventions, 8 contexts."""
    base = [BIN, "run", JOB, "--sae", SAES[0], "--sae", SAES[1], "--interventions", "sae,eps_random,zero_ablation",
            "--contexts", "8", "--threads-per-rank", "1", "--out", out] + list(extra)
    return ["mpirun", "--oversubscribe", "-np", str(np_)] + base


@pytest.fixture
def tmpfs():
    d = tempfile.mkdtemp(prefix="saegap-full-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % TMPFS_MB, "tmpfs", d], capture_output=True)
    if r.returncode != 0:
        pytest.fail("cannot mount a tmpfs on %s: %s" % (d, r.stderr.decode(errors="replace")))
    yield d
    subprocess.run(["umount", "-l", d])
    os.rmdir(d)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "ref.h5")
    subprocess.run(cmd(out, 1), env=env(), check=True, capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    return datasets(out)


def datasets(path):
    got = {}
    with h5py.File(path, "r") as f:
        assert int(f.attrs["complete"]) == 1

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and (name.startswith("sites/") or name.startswith("correlation/")):
                got[name] = obj[()].tobytes()
        f.visititems(visit)
    assert got
    return got


def fill(d):
    """Fills the tmpfs to the last byte with another file. Unbuffered writes, halving the
    chunk on ENOSPC: a buffered file would keep the bytes a short write left over and raise
    ENOSPC again when closed (CI saw that whenever the run's reservation left free space
    that is not a whole number of MB)."""
    fd = os.open(os.path.join(d, "filler"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError:
                chunk //= 2
    finally:
        os.close(fd)


def free_space(d):
    os.unlink(os.path.join(d, "filler"))


def run_and_fill(d, np_, trigger, extra=()):
    """Starts the run, fills the disk when trigger(out, stderr so far) is true, returns
    (rc, stderr, out)."""
    out = os.path.join(d, "r.h5")
    p = subprocess.Popen(cmd(out, np_, extra), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = []
    reader = threading.Thread(target=lambda: err.extend(ln.decode(errors="replace") for ln in p.stderr), daemon=True)
    reader.start()
    t0 = time.time()
    while p.poll() is None and not trigger(out, "".join(err)) and time.time() - t0 < TIMEOUT:
        time.sleep(0.002)
    fill(d)
    try:
        p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("saegap did not end within %d s after the disk filled (np %d)" % (TIMEOUT, np_))
    reader.join(timeout=10)
    return p.returncode, "".join(err), out


def verify(out):
    return subprocess.run([BIN, "verify", out], capture_output=True, env=env(), timeout=60)


def assert_clean_no_space(err, out):
    lines = [ln for ln in err.splitlines() if ln.startswith("saegap: error:")]
    assert len(lines) == 1, err
    assert "no space left on device" in lines[0] and out in lines[0], lines
    assert "HDF5-DIAG" not in err and "Segmentation" not in err, err


def finish_after_freeing(d, np_, out, reference):
    free_space(d)
    r = subprocess.run(cmd(out, np_, ["--resume"]), env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert verify(out).returncode == 0
    assert datasets(out) == reference


@pytest.mark.parametrize("np_", [1, 3])
def test_full_before_start(tmpfs, np_):
    """A folder that cannot hold the result is refused before any work, naming the file."""
    fill(tmpfs)
    out = os.path.join(tmpfs, "r.h5")
    r = subprocess.run(cmd(out, np_), env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert 1 <= r.returncode <= 127
    assert_clean_no_space(r.stderr.decode(errors="replace"), out)
    assert sorted(os.listdir(tmpfs)) == ["filler"]


@pytest.mark.parametrize("np_", [1, 2, 3])
def test_fill_during_creation(tmpfs, reference, np_):
    """The disk fills the moment the partial file appears: either the reserve was taken first
    (the run completes) or every rank ends with one no-space message and no file; after space
    is freed the same command finishes bit-identical."""
    rc, err, out = run_and_fill(tmpfs, np_, lambda o, e: os.path.exists(o + ".creating"))
    if rc == 0:
        assert datasets(out) == reference
        return
    assert 1 <= rc <= 127, (rc, err)
    assert_clean_no_space(err, out)
    assert not os.path.exists(out) and not os.path.exists(out + ".creating"), os.listdir(tmpfs)
    finish_after_freeing(tmpfs, np_, out, reference)


MOMENTS = {
    # the result exists: every unit is still to run
    "units": (lambda o, e: os.path.exists(o), []),
    # every unit is written: the aggregates, correlations and final flush are still to come
    "final": (lambda o, e: "aggregates and correlations" in e, []),
}


@pytest.mark.parametrize("np_,moment", [(1, "units"), (3, "units"), (2, "final")])
def test_fill_mid_run(tmpfs, reference, np_, moment):
    """The disk fills once the result exists, or once every unit is written (before the
    aggregates, correlations and final flush): the reserved blocks carry the run to a
    complete, bit-identical result."""
    trigger, extra = MOMENTS[moment]
    rc, err, out = run_and_fill(tmpfs, np_, trigger, extra)
    assert rc == 0, err
    assert verify(out).returncode == 0
    assert datasets(out) == reference
    assert "HDF5-DIAG" not in err


@pytest.mark.parametrize("np_", [2])
def test_write_error_mid_run(tmp_path, reference, np_):
    """A row write that fails (injected) ends every rank with one message naming the file;
    finished units stay valid: verify says resumable, --resume finishes bit-identical."""
    out = str(tmp_path / "r.h5")
    e = env()
    e["SAEGAP_FAULT_WRITE_ROWS"] = "30"
    r = subprocess.run(cmd(out, np_), env=e, capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    err = r.stderr.decode(errors="replace")
    assert 1 <= r.returncode <= 127, (r.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("saegap: error:")]
    assert lines and "injected write fault" in lines[0] and out in lines[0], err
    assert "HDF5-DIAG" not in err
    v = verify(out)
    assert v.returncode == 3, v.stdout.decode() + v.stderr.decode()
    r = subprocess.run(cmd(out, np_, ["--resume"]), env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert datasets(out) == reference


DUMP_MODEL = os.path.join(ROOT, "jobs", "demo", "model")
DUMP_TOKENS = os.path.join(ROOT, "jobs", "demo", "tokens.npy")


@pytest.mark.parametrize("np_", [1, 2])
def test_dump_onto_full_disk(tmpfs, np_):
    """`dump` onto a full disk (issue 25.5): exit 1 with one message naming the file and saying
    "no space left on device", no crash (on one rank libhdf5's atexit handler used to re-flush
    the open file and segfault, status 139), and nothing under the final name or the
    temporary one."""
    fill(tmpfs)
    out = os.path.join(tmpfs, "d.h5")
    r = subprocess.run(["mpirun", "--oversubscribe", "-np", str(np_), BIN, "dump", "--model", DUMP_MODEL,
                        "--tokens", DUMP_TOKENS, "--contexts", "8", "--sites", "all", "--threads-per-rank", "1",
                        "--out", out], env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (r.returncode, err)
    assert_clean_no_space(err, out)
    for crash in ("Signal:", "signal 11", "buffer overflow", "core dumped"):
        assert crash not in err, err
    assert sorted(os.listdir(tmpfs)) == ["filler"], os.listdir(tmpfs)
