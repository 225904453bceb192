"""Damaged HDF5 files on which libhdf5 1.10.8 itself crashes, loops or reads freed memory
(tests/fuzz/libhdf5-findings/README.md): the release binary must still end cleanly.

For every saved input: `saegap info` and `saegap verify`, and for result files `run --resume`
of the fuzz fixture's job. Each ends within the time limit, by exit (status 0-127), never by a
signal; a failure's last line is one `saegap: error:` message naming the file (verify reports
damage with its own line and status 4).
"""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
INPUTS = sorted(glob.glob(os.path.join(FUZZ, "libhdf5-findings", "*", "*")) +
                glob.glob(os.path.join(FUZZ, "regressions", "tokens_hdf5", "*")) +
                glob.glob(os.path.join(FUZZ, "regressions", "result_*", "*")))
INPUTS = [p for p in INPUTS if not p.endswith(".md")]
FIXTURE = os.path.join(FUZZ, "fixture")
LIMIT_S = 5  # SAEGAP_HDF5_CPU_LIMIT for these runs


def run(cmd, tmp_path):
    env = dict(os.environ, SAEGAP_HDF5_CPU_LIMIT=str(LIMIT_S), OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          errors="replace", timeout=20 * LIMIT_S + 60)


def check_clean_end(p, path, verify=False):
    assert p.returncode >= 0, "ended by signal %d\n%s" % (-p.returncode, p.stderr[-2000:])
    assert p.returncode < 128, p.stderr[-2000:]
    if p.returncode == 0:
        return
    out = (p.stdout + p.stderr).strip().splitlines()
    assert out, "failed without a message"
    if verify and p.returncode in (3, 4):
        assert path in out[-1], out[-1]
        return
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("saegap: error: ") and path in last, p.stderr[-2000:]
    assert "HDF5-DIAG" not in p.stderr, p.stderr[-2000:]


def test_inputs_exist():
    kinds = {os.path.basename(os.path.dirname(p)) for p in INPUTS}
    assert {"result_info", "result_resume", "tokens_hdf5"} <= kinds, INPUTS


@pytest.mark.parametrize("src", INPUTS, ids=[os.path.relpath(p, FUZZ) for p in INPUTS])
def test_damaged_hdf5_ends_cleanly(saegap_bin, tmp_path, src):
    path = str(tmp_path / "damaged.h5")
    shutil.copyfile(src, path)
    check_clean_end(run([saegap_bin, "info", path], tmp_path), path)
    check_clean_end(run([saegap_bin, "verify", path], tmp_path), path, verify=True)
    if "/result_" in src:
        p = run([saegap_bin, "run", "--model", os.path.join(FIXTURE, "model"),
                 "--sae", os.path.join(FIXTURE, "saes"),
                 "--tokens", os.path.join(FIXTURE, "tokens.npy"),
                 "--interventions", "sae,eps_random,zero_ablation", "--examples", "1",
                 "--threads-per-rank", "1", "--quiet", "--out", path, "--resume"], tmp_path)
        check_clean_end(p, path)


def test_hang_is_cut_by_the_cpu_watchdog(saegap_bin, tmp_path):
    """The global-heap input makes libhdf5 loop forever: saegap names it after the limit."""
    src = glob.glob(os.path.join(FUZZ, "regressions", "result_info", "hang-*"))[0]
    path = str(tmp_path / "hang.h5")
    shutil.copyfile(src, path)
    p = run([saegap_bin, "info", path], tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == ("saegap: error: %s: damaged HDF5 file: libhdf5 used %d CPU-seconds on one "
                                "read without finishing (libhdf5 1.10 loops on some damaged files; "
                                "SAEGAP_HDF5_CPU_LIMIT sets the limit)" % (path, LIMIT_S)), p.stderr


def test_crash_inside_libhdf5_is_one_message(saegap_bin, tmp_path):
    src = glob.glob(os.path.join(FUZZ, "regressions", "tokens_hdf5", "segv-*"))[0]
    path = str(tmp_path / "tokens.h5")
    shutil.copyfile(src, path)
    p = run([saegap_bin, "info", path], tmp_path)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        "saegap: error: %s: damaged HDF5 file: libhdf5 crashed reading it (segmentation fault; libhdf5 "
        "1.10 does not check every offset it reads from a file)" % path], p.stderr


OOM_INPUTS = [p for p in INPUTS if os.path.basename(p).startswith("oom-")]


@pytest.mark.parametrize("src", OOM_INPUTS, ids=[os.path.relpath(p, FUZZ) for p in OOM_INPUTS])
def test_runaway_allocation_is_bounded(saegap_bin, tmp_path, src):
    """libhdf5 fills gigabytes on these inputs (15 GB for oom-fill-15GB): saegap's guard bounds
    its address space (SAEGAP_HDF5_MEM_LIMIT, default 1024 MB), so each command ends cleanly
    with less than 1.5 GB resident. The peak is read in a child interpreter of its own
    (RUSAGE_CHILDREN is the largest descendant's)."""
    assert OOM_INPUTS, "no oom-* input to test"
    path = str(tmp_path / "damaged.h5")
    for cmd in ("info", "verify"):
        shutil.copyfile(src, path)
        probe = ("import resource, subprocess, sys\n"
                 "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, errors='replace')\n"
                 "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                 "sys.stderr.write(p.stderr)\n")
        p = run(["/usr/bin/python3", "-c", probe, saegap_bin, cmd, path], tmp_path)
        rc, peak_kb = (int(v) for v in p.stdout.split())
        assert 0 <= rc < 128, p.stderr[-2000:]
        assert peak_kb < 1536 * 1024, "%s %s: %d MB resident" % (cmd, src, peak_kb // 1024)
