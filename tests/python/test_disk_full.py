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

Each filling test runs on two kinds of file system (issue 25.1): this tmpfs as it is, and the
same with fallocate() failing (EOPNOTSUPP) and posix_fallocate() emulated by writing, as on
NFSv3, ZFS before 2.2 or older Lustre (tests/shims/nofallocate.c, preloaded into every rank).
"""

import os
import shutil
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


FS_KINDS = ["fallocate", "no-fallocate"]
SHIM = {}  # "no-fallocate": the shim's path, once built (fs fixture)


def cmd(out, np_, extra=(), fs="fallocate"):
    """The demo job cut to what these tests need: 2 sites, 3 interventions, 8 contexts."""
    base = [BIN, "run", JOB, "--sae", SAES[0], "--sae", SAES[1], "--interventions", "sae,eps_random,zero_ablation",
            "--contexts", "8", "--threads-per-rank", "1", "--out", out] + list(extra)
    launcher = ["mpirun", "--oversubscribe", "-np", str(np_)]
    if fs == "no-fallocate":
        launcher += ["-x", "LD_PRELOAD=" + SHIM[fs]]
    return launcher + base


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    """tests/shims/nofallocate.c, built here (gcc) for the no-fallocate file system."""
    so = str(tmp_path_factory.mktemp("shim") / "nofallocate.so")
    cc = shutil.which("gcc") or shutil.which("cc")
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", so, os.path.join(ROOT, "tests", "shims", "nofallocate.c")],
                   check=True, timeout=120)
    SHIM["no-fallocate"] = so
    return so


def test_shim_makes_fallocate_fail(shim, tmp_path):
    """The shim does what it says, or the no-fallocate cases test nothing: fallocate fails
    with EOPNOTSUPP, posix_fallocate still allocates by writing."""
    prog = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
            "r = libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(1 << 20)); e = ctypes.get_errno(); "
            "p = libc.posix_fallocate(fd, ctypes.c_long(0), ctypes.c_long(1 << 20)); "
            "print(r, e, p, os.fstat(fd).st_size, os.fstat(fd).st_blocks * 512)")
    f = str(tmp_path / "f")
    out = subprocess.run(["/usr/bin/python3", "-c", prog, f], env=dict(env(), LD_PRELOAD=shim), check=True,
                         capture_output=True, text=True).stdout.split()
    import errno
    assert out[:4] == ["-1", str(errno.EOPNOTSUPP), "0", str(1 << 20)], out
    assert int(out[4]) >= 1 << 20, out  # blocks written, not a sparse file


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


def run_and_fill(d, np_, trigger, extra=(), fs="fallocate", hold=None):
    """Starts the run, fills the disk when trigger(out, stderr so far) is true, returns
    (rc, stderr, out). hold: a moment at which the run waits (SAEGAP_TEST_HOLD) until the disk
    is full."""
    out = os.path.join(d, "r.h5")
    e = env()
    release = None
    if hold:
        release = tempfile.mktemp(prefix="saegap-release-")  # outside the full tmpfs
        e["SAEGAP_TEST_HOLD"] = "%s:%s" % (hold, release)
    c = cmd(out, np_, extra, fs)
    if hold:
        c[1:1] = ["-x", "SAEGAP_TEST_HOLD"]  # to every rank
    p = subprocess.Popen(c, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = []
    reader = threading.Thread(target=lambda: err.extend(ln.decode(errors="replace") for ln in p.stderr), daemon=True)
    reader.start()
    t0 = time.time()
    while p.poll() is None and not trigger(out, "".join(err)) and time.time() - t0 < TIMEOUT:
        time.sleep(0.002)
    fill(d)
    held_size = os.path.getsize(out) if release and os.path.exists(out) else None
    if release:
        open(release, "w").close()
    try:
        p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail("saegap did not end within %d s after the disk filled (np %d)" % (TIMEOUT, np_))
    reader.join(timeout=10)
    if release and os.path.exists(release):
        os.unlink(release)
    if hold:
        return p.returncode, "".join(err), out, held_size
    return p.returncode, "".join(err), out


def verify(out):
    return subprocess.run([BIN, "verify", out], capture_output=True, env=env(), timeout=60)


def assert_clean_no_space(err, out):
    lines = [ln for ln in err.splitlines() if ln.startswith("saegap: error:")]
    assert len(lines) == 1, err
    assert "no space left on device" in lines[0] and out in lines[0], lines
    assert "HDF5-DIAG" not in err and "Segmentation" not in err, err


def finish_after_freeing(d, np_, out, reference, fs="fallocate"):
    free_space(d)
    r = subprocess.run(cmd(out, np_, ["--resume"], fs), env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert verify(out).returncode == 0
    assert datasets(out) == reference


@pytest.mark.parametrize("fs", FS_KINDS)
@pytest.mark.parametrize("np_", [1, 3])
def test_full_before_start(shim, tmpfs, np_, fs):
    """A folder that cannot hold the result is refused before any work, naming the file."""
    fill(tmpfs)
    out = os.path.join(tmpfs, "r.h5")
    r = subprocess.run(cmd(out, np_, fs=fs), env=env(), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert 1 <= r.returncode <= 127
    assert_clean_no_space(r.stderr.decode(errors="replace"), out)
    assert sorted(os.listdir(tmpfs)) == ["filler"]


@pytest.mark.parametrize("fs", FS_KINDS)
@pytest.mark.parametrize("np_", [1, 2, 3])
def test_fill_during_creation(shim, tmpfs, reference, np_, fs):
    """The disk fills the moment the partial file appears: either the reserve was taken first
    (the run completes) or every rank ends with one no-space message and no file; after space
    is freed the same command finishes bit-identical."""
    rc, err, out = run_and_fill(tmpfs, np_, lambda o, e: os.path.exists(o + ".creating"), fs=fs)
    if rc == 0:
        assert verify(out).returncode == 0
        assert datasets(out) == reference
        return
    assert 1 <= rc <= 127, (rc, err)
    assert_clean_no_space(err, out)
    assert not os.path.exists(out) and not os.path.exists(out + ".creating"), os.listdir(tmpfs)
    finish_after_freeing(tmpfs, np_, out, reference, fs)


MOMENTS = {
    # the result exists: every unit is still to run
    "units": (lambda o, e: os.path.exists(o), [], None),
    # every unit is written: the read-back, aggregates, correlations, final checksum and flush
    # are still to come (the run waits there until the disk is full)
    "final": (lambda o, e: "held at after_units" in e, [], "after_units"),
}


@pytest.mark.parametrize("fs", FS_KINDS)
@pytest.mark.parametrize("np_,moment", [(1, "units"), (3, "units"), (1, "final"), (2, "final"), (3, "final")])
def test_fill_mid_run(shim, tmpfs, reference, np_, moment, fs):
    """The disk fills once the result exists, or once every unit is written (before the
    aggregates, correlations and final flush): the blocks written at creation carry the run to
    a complete, bit-identical result, also where fallocate() does not exist (the metadata the
    end of the run writes exists from the start, so it needs no new space)."""
    trigger, extra, hold = MOMENTS[moment]
    rc, err, out, *held = run_and_fill(tmpfs, np_, trigger, extra, fs, hold)
    if held:
        # nothing after the units needs new space: the file does not grow past the size it had
        # (every block of it written or allocated) when the disk filled
        assert held[0] is not None and os.path.getsize(out) == held[0], (held, os.path.getsize(out))
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


def test_reserve_given_back_on_ext4(tmp_path, reference):
    """The end-of-run reserve (fallocate KEEP_SIZE past the end) is given back once the file is
    closed: on ext4 a hole punched past the end is not freed, and a 250 KB result kept 5 MB of
    blocks (issue 25.7). The file's blocks on disk are now about its size."""
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    img, mnt = str(tmp_path / "ext4.img"), str(tmp_path / "mnt")
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run([mkfs, "-q", "-F", img], check=True, capture_output=True, timeout=120)
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-o", "loop", img, mnt], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot loop-mount an ext4 image here: %s" % r.stderr.decode(errors="replace"))
    try:
        out = os.path.join(mnt, "r.h5")
        subprocess.run(cmd(out, 1), env=env(), check=True, capture_output=True, timeout=TIMEOUT, cwd=ROOT)
        assert datasets(out) == reference
        st = os.stat(out)
        assert st.st_blocks * 512 <= st.st_size + (64 << 10), (st.st_size, st.st_blocks * 512)
    finally:
        subprocess.run(["umount", "-l", mnt])


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
