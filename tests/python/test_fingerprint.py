"""Bit-level fingerprint of saegap's results: a change that moves one bit of any dataset under
/sites, /correlation, /clean or /examples is seen here.

Two jobs on the embedded demo (jobs/demo.job on 4 contexts: 9 SAEs, all 11 interventions,
examples; and the same at --scope position --samples 4, which adds the z-scores), each at -np 1
and -np 2. Both rank counts must give the same bytes (the design: docs/architecture.md), and
those bytes must match tests/fingerprints/demo-<kernels>.json.

The last bits of a float depend on BLIS's kernels (the file's `blis_kernels` attribute: 'skx'
on AVX-512 CPUs, 'zen3', 'haswell', ...), so each kernel set has its own record. On a node whose
kernels have none, only the rank-count check runs and the comparison is skipped, saying so.

A change that moves bits on purpose records the new fingerprint and says why in its commit:
    SAEGAP_FINGERPRINT_RECORD=1 /usr/bin/python3 -m pytest -q tests/python/test_fingerprint.py
"""

import hashlib
import json
import os
import subprocess

import h5py
import pytest
from conftest import mpirun_cmd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECORDS = os.path.join(ROOT, "tests", "fingerprints")


def record_path(kernels):
    return os.path.join(RECORDS, "demo-%s.json" % kernels)
GROUPS = ("sites", "correlation", "clean", "examples")
JOBS = {
    "demo": ["--contexts", "4"],
    "position_samples4": ["--contexts", "4", "--scope", "position", "--position", "64", "--window", "8",
                          "--samples", "4"],
}


def fingerprint(path):
    """{dataset: sha256 of its dtype, shape and bytes} for every dataset under GROUPS."""
    out = {}
    with h5py.File(path, "r") as f:
        kernels = f.attrs.get("blis_kernels", b"")
        kernels = kernels.decode() if isinstance(kernels, bytes) else str(kernels)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[0] in GROUPS:
                v = obj[...]
                h = hashlib.sha256()
                h.update(("%s %s\n" % (v.dtype.str, v.shape)).encode())
                h.update(v.tobytes())
                out[name] = h.hexdigest()[:24]
        f.visititems(visit)
    return kernels, out


def run_job(saegap_bin, args, np_, out):
    cmd = mpirun_cmd() + ["-np", str(np_), saegap_bin, "run", "jobs/demo.job", "--threads-per-rank", "1",
                          "--quiet", "--out", str(out)] + args
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=600)
    assert p.returncode == 0, "%s\n%s" % (" ".join(cmd), p.stderr[-3000:])


@pytest.fixture(scope="module")
def fingerprints(saegap_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp")
    got = {}
    for job, args in JOBS.items():
        for np_ in (1, 2):
            out = tmp / ("%s-np%d.h5" % (job, np_))
            run_job(saegap_bin, args, np_, out)
            got[(job, np_)] = fingerprint(out)
    return got


def differences(want, have, limit=8):
    names = sorted(set(want) | set(have))
    diff = [n for n in names if want.get(n) != have.get(n)]
    return "%d of %d datasets differ, first: %s" % (len(diff), len(names), ", ".join(diff[:limit]))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_same_bytes_at_any_rank_count(fingerprints, job):
    (k1, fp1), (k2, fp2) = fingerprints[(job, 1)], fingerprints[(job, 2)]
    assert len(fp1) > 50, "the %s job wrote only %d datasets under %s" % (job, len(fp1), GROUPS)
    assert fp1 == fp2, "%s: -np 1 and -np 2 give different bytes: %s" % (job, differences(fp1, fp2))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_bytes_match_the_recorded_fingerprint(fingerprints, job):
    kernels, fp = fingerprints[(job, 1)]
    assert kernels, "the result file has no blis_kernels attribute"
    path = record_path(kernels)
    if os.environ.get("SAEGAP_FINGERPRINT_RECORD") == "1":
        rec = json.load(open(path)) if os.path.exists(path) else {}
        rec["blis_kernels"] = kernels
        rec.setdefault("jobs", {})[job] = {"args": JOBS[job], "datasets": fp}
        os.makedirs(RECORDS, exist_ok=True)
        with open(path, "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    if not os.path.exists(path):
        have = sorted(n[len("demo-"):-len(".json")] for n in os.listdir(RECORDS) if n.startswith("demo-"))
        pytest.skip("no fingerprint recorded for BLIS kernels '%s' (recorded: %s): last bits differ between "
                    "kernel sets (the rank-count check still ran)" % (kernels, ", ".join(have) or "none"))
    rec = json.load(open(path))
    assert rec["blis_kernels"] == kernels, "%s was recorded with kernels '%s'" % (path, rec["blis_kernels"])
    want = rec["jobs"][job]
    assert want["args"] == JOBS[job], "%s was recorded for other arguments" % path
    assert fp == want["datasets"], (
        "%s: results moved from the recorded fingerprint %s (%s). If on purpose, record it again "
        "(SAEGAP_FINGERPRINT_RECORD=1, see this file's docstring) and say why in the commit."
        % (job, os.path.basename(path), differences(want["datasets"], fp)))
