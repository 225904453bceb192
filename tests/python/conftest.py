"""pytest configuration for saegap's Python tests.

Run with Debian's interpreter (numpy, h5py, pytest):
    /usr/bin/python3 -m pytest -q tests/python/test_dump.py

Environment:
    SAEGAP_BIN     the saegap binary (default /work/main/build/saegap)
    SAEGAP_MPIRUN  MPI launcher (default "mpirun --oversubscribe --allow-run-as-root")
"""

import os
import shlex
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

DEFAULT_BIN = "/work/main/build/saegap"
DEFAULT_MPIRUN = "mpirun --oversubscribe --allow-run-as-root"


def saegap_bin_path():
    return os.environ.get("SAEGAP_BIN", DEFAULT_BIN)


def mpirun_cmd():
    return shlex.split(os.environ.get("SAEGAP_MPIRUN", DEFAULT_MPIRUN))


@pytest.fixture(scope="session")
def saegap_bin():
    """The binary under test. Missing binary = failure, never a skip."""
    path = saegap_bin_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail("saegap binary not found or not executable at %r "
                    "(build it, or set SAEGAP_BIN)" % path, pytrace=False)
    return path


@pytest.fixture(scope="session")
def run_saegap(saegap_bin):
    """run_saegap(args, np=None, check=True) -> CompletedProcess.

    np=None runs the binary directly (singleton); np=k runs it under the MPI
    launcher with -np k.
    """
    def run(args, np=None, check=True, timeout=300):
        cmd = [saegap_bin] + [str(a) for a in args]
        if np is not None:
            cmd = mpirun_cmd() + ["-np", str(np)] + cmd
        env = dict(os.environ)
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, env=env)
        if check and p.returncode != 0:
            pytest.fail("command failed (rc=%d): %s\n--- stdout ---\n%s\n--- stderr ---\n%s"
                        % (p.returncode, " ".join(shlex.quote(c) for c in cmd),
                           p.stdout.decode(errors="replace")[-4000:],
                           p.stderr.decode(errors="replace")[-4000:]),
                        pytrace=False)
        return p
    return run
