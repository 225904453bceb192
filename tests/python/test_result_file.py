"""The result file's integrity checks, as verify reads them.

- Files written by earlier saegap versions keep verifying (the seeds in tests/fuzz/corpus were
  written before the result-file module existed).
- The final checksum covers every dataset written after the units: changing one value of any of
  them makes verify call the file damaged. (saegap 0.1.0 from commit 3411ebc until this test
  stored a checksum of nothing, "fnv1a64:0000000000000000", and verify agreed with it.)
"""

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fuzz", "fixture")
OLD = os.path.join(ROOT, "tests", "fuzz", "corpus", "result_verify")
ZERO = "fnv1a64:0000000000000000"


def verify(saegap_bin, path):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.run([saegap_bin, "verify", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120, env=env)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


@pytest.mark.parametrize("name,status,says", [
    ("complete", 0, "complete: all 2 units written and their checksums verified"),
    ("position-samples", 0, "complete: all 1 units written and their checksums verified"),
    ("left", 3, "resumable: 1 of 2 units left"),
    ("none-done", 3, "resumable: 2 of 2 units left"),
])
def test_verify_accepts_files_written_by_earlier_versions(saegap_bin, name, status, says):
    path = os.path.join(OLD, name)
    rc, out, err = verify(saegap_bin, path)
    assert rc == status, (name, rc, out, err)
    assert out.startswith(path + ": " + says), out
    assert "cannot be verified" not in out, out


@pytest.fixture(scope="module")
def small_result(saegap_bin, tmp_path_factory):
    """A complete result of the fuzz fixture with every kind of dataset after the units:
    tokens, records, feature densities, correlations, examples."""
    out = tmp_path_factory.mktemp("rf") / "complete.h5"
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run([saegap_bin, "run", "--model", os.path.join(FIX, "model"), "--sae", os.path.join(FIX, "saes"),
                    "--tokens", os.path.join(FIX, "tokens.npy"), "--interventions", "sae,eps_random,zero_ablation",
                    "--examples", "1", "--threads-per-rank", "1", "--quiet", "--out", str(out)],
                   check=True, env=env, timeout=300)
    return out


def test_final_checksum_is_recorded(saegap_bin, small_result):
    with h5py.File(small_result, "r") as f:
        ck = f.attrs["final_checksum"]
        ck = ck.decode() if isinstance(ck, bytes) else ck
        assert f.attrs["complete"] == 1
    assert ck.startswith("fnv1a64+attributes:"), ck
    rc, out, _ = verify(saegap_bin, small_result)
    assert rc == 0 and "cannot be verified" not in out, out


# one dataset of each kind the final checksum covers (resultfile.c: CK_FINAL)
AFTER_UNITS = ["tokens", "sites/blocks.0.hook_resid_pre/feature_density", "progress/blocks.0.hook_resid_pre/sums",
               "progress/blocks.1.attn.hook_z/counts", "correlation/sae_minus_eps_random/pearson",
               "correlation/zero_ablation_minus_eps_random/spearman", "examples/contexts",
               "examples/clean/logprobs", "examples/blocks.1.attn.hook_z/sae/kl"]


@pytest.mark.parametrize("dataset", AFTER_UNITS)
def test_one_changed_value_after_the_units_is_damage(saegap_bin, small_result, tmp_path, dataset):
    path = tmp_path / "changed.h5"
    shutil.copy(small_result, path)
    with h5py.File(path, "r+") as f:
        d = f[dataset]
        v = d[...]
        flat = v.reshape(-1)
        bits = flat.view("u%d" % v.dtype.itemsize)
        bits[0] ^= bits.dtype.type(1)  # the last bit of the first value
        d[...] = v
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 4, (dataset, rc, out)
    assert "fail their checksum" in out, out


def test_unrecorded_final_checksum_is_named(saegap_bin, small_result, tmp_path):
    """A file from the versions that stored a checksum of nothing: its units still verify, and
    verify says that what follows them cannot be checked instead of calling it damaged."""
    path = tmp_path / "old.h5"
    shutil.copy(small_result, path)
    with h5py.File(path, "r+") as f:
        f.attrs.modify("final_checksum", ZERO)  # keeps the attribute's type
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 0, out
    assert "cannot be verified" in out and "recorded no final checksum" in out, out


def test_no_sites_is_damage(saegap_bin, small_result, tmp_path):
    """job_sites is an attribute (outside every checksum): emptied, the file would lay out zero
    units and verify would call it complete."""
    path = tmp_path / "nosites.h5"
    shutil.copy(small_result, path)
    with h5py.File(path, "r+") as f:
        f.attrs.modify("job_sites", "")
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 4 and "names no site" in out, out


def test_resume_of_a_file_with_an_fnv_identity(saegap_bin, small_result, tmp_path):
    """New files record the job identity with XXH3; a file written before records FNV-1a, and
    --resume recomputes the identity that way for it (checksum.h)."""
    with h5py.File(small_result, "r") as f:
        assert str(f.attrs["job_model_checksum"]).startswith("xxh3-64:")
        assert str(f.attrs["job_saes_checksum"]).startswith("xxh3-64:")
    old = tmp_path / "left.h5"
    shutil.copy(os.path.join(ROOT, "tests", "fuzz", "corpus", "result_resume", "left"), old)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # the command that wrote it (tests/fuzz/make_corpus.py), from the fixture's folder
    cmd = [saegap_bin, "run", "--model", "fixture/model", "--sae", "fixture/saes", "--tokens", "fixture/tokens.npy",
           "--interventions", "sae,eps_random,zero_ablation", "--examples", "1", "--threads-per-rank", "1", "--quiet"]
    p = subprocess.run(cmd + ["--out", str(old), "--resume"], cwd=os.path.join(ROOT, "tests", "fuzz"), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert verify(saegap_bin, old)[0] == 0
    with h5py.File(old, "r") as f:
        assert str(f.attrs["job_model_checksum"]).startswith("fnv1a64:")
    # another seed is another job, also for an old file
    again = tmp_path / "left2.h5"
    shutil.copy(os.path.join(ROOT, "tests", "fuzz", "corpus", "result_resume", "left"), again)
    p = subprocess.run(cmd + ["--out", str(again), "--resume", "--seed", "7"], cwd=os.path.join(ROOT, "tests", "fuzz"),
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode != 0 and "seed" in p.stderr, p.stderr


def _site(path):
    with h5py.File(path, "r") as f:
        return sorted(f["sites"].keys())[0]


# (object, attribute): the headline numbers, the correlation metadata and a job record
EDITED = [("sites/%s", "explained_variance"), ("sites/%s", "mean_kl_sae"), ("sites/%s", "mean_kl_eps_random"),
          ("sites/%s", "kl_div_score"), ("sites/%s", "ce_loss_score"), ("sites/%s", "dead_latents"),
          ("correlation/sae_minus_eps_random", "tokens"), ("/", "job_seed"), ("/", "n_contexts")]


@pytest.mark.parametrize("obj,attr", EDITED, ids=["%s-%s" % (o.split("/")[0] or "root", a) for o, a in EDITED])
def test_one_edited_result_attribute_is_damage(saegap_bin, small_result, tmp_path, obj, attr):
    """The final checksum covers the attributes that hold results (issue 25, point 3)."""
    path = tmp_path / "edited.h5"
    shutil.copy(small_result, path)
    obj = obj % _site(path) if "%s" in obj else obj
    with h5py.File(path, "r+") as f:
        o = f[obj]
        v = o.attrs[attr]
        if isinstance(v, (bytes, str)):
            new = (v.decode() if isinstance(v, bytes) else v) + "0"
        elif np.issubdtype(np.asarray(v).dtype, np.integer):
            new = np.asarray(v) + 1
        else:
            new = np.nextafter(np.asarray(v, dtype=np.float64), np.inf)  # the last bit
        o.attrs.modify(attr, new)
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 4, (obj, attr, rc, out)
    assert "fail their checksum" in out, out


def test_an_added_attribute_elsewhere_is_damage_too(saegap_bin, small_result, tmp_path):
    """Every attribute is covered, so a note added to a result is reported; the check itself:
    an unchanged copy verifies."""
    path = tmp_path / "copy.h5"
    shutil.copy(small_result, path)
    assert verify(saegap_bin, path)[0] == 0
    with h5py.File(path, "r+") as f:
        f["sites"].attrs["note"] = "mine"
    assert verify(saegap_bin, path)[0] == 4


def _datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...].tobytes()
        f.visititems(visit)
    return out


def _resume(saegap_bin, out):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return subprocess.run([saegap_bin, "run", "--model", os.path.join(FIX, "model"), "--sae", os.path.join(FIX, "saes"),
                           "--tokens", os.path.join(FIX, "tokens.npy"), "--interventions", "sae,eps_random,zero_ablation",
                           "--examples", "1", "--threads-per-rank", "1", "--out", str(out), "--resume"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300)


# a finished unit's rows, and (files written since unit checksums cover them) its records
DAMAGED_UNIT = ["sites/%s/kl/sae", "clean/ce", "progress/%s/sums", "progress/%s/fire"]


@pytest.mark.parametrize("dataset", DAMAGED_UNIT)
def test_resume_recomputes_a_damaged_finished_unit(saegap_bin, small_result, tmp_path, dataset):
    """--resume checks every finished unit's checksum before it trusts it (issue 25, point 2):
    a unit whose data changed is named and computed again, and the file ends complete and
    identical to the uninterrupted run. An interrupted file (complete = 0, as when the run
    stopped before its aggregates) makes the records part of the unit."""
    path = tmp_path / "damaged.h5"
    shutil.copy(small_result, path)
    ds = dataset % _site(path) if "%s" in dataset else dataset
    with h5py.File(path, "r+") as f:
        f.attrs.modify("complete", 0)
        d = f[ds]
        v = d[...]
        bits = v.reshape(-1).view("u%d" % v.dtype.itemsize)
        bits[0] ^= bits.dtype.type(1)
        d[...] = v
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 4 and "finished unit(s) (units 0) fail their checksum" in out and "--resume" in out, (rc, out)
    r = _resume(saegap_bin, path)
    assert r.returncode == 0, r.stderr
    assert "fail their checksum (units 0)" in r.stderr and "computing them again" in r.stderr, r.stderr
    rc, out, _ = verify(saegap_bin, path)
    assert rc == 0, out
    want, got = _datasets(small_result), _datasets(path)
    assert sorted(want) == sorted(got)
    # results bit-identical; the schedule records who computed unit 0 again: the second run
    sched = [k for k in want if k.startswith("schedule/")]
    assert len(sched) == 4
    assert [k for k in want if want[k] != got[k] and k not in sched] == []
    with h5py.File(small_result, "r") as a, h5py.File(path, "r") as b:
        assert int(b.attrs["schedule_runs"]) == int(a.attrs["schedule_runs"]) + 1 == 2
        run_a, run_b = a["schedule/unit_run"][...], b["schedule/unit_run"][...]
        assert run_b[0] == 1 and (run_b[1:] == run_a[1:]).all() and (run_a == 0).all(), (run_a, run_b)
        for k in ("unit_seconds", "unit_wait_seconds"):
            va, vb = a["schedule/" + k][...], b["schedule/" + k][...]
            assert (vb[1:] == va[1:]).all() and np.isfinite(vb).all() and (vb >= 0).all(), k


def test_resume_removes_stale_mpiio_locks(saegap_bin, small_result, tmp_path):
    """Issue 27.1: Open MPI's file-I/O layer keeps "<file>-<job id>-<pid>.lock" beside a file
    whose ranks span several nodes, and a killed run leaves it. --resume (holding saegap's own
    writer lock, so no live run uses them) removes those of the result and of its .creating
    name, naming each; files that only look alike stay."""
    path = tmp_path / "r.h5"
    shutil.copy(small_result, path)
    with h5py.File(path, "r+") as f:
        f.attrs.modify("complete", 0)
    stale = [tmp_path / "r.h5-3735879681-4242.lock", tmp_path / "r.h5.creating-17-99.lock"]
    kept = [tmp_path / "r.h5-x-1.lock", tmp_path / "r.h5-1-2.lock.bak", tmp_path / "other.h5-1-2.lock",
            tmp_path / "r.h5-12.lock"]
    for p in stale + kept:
        p.write_text("")
    r = _resume(saegap_bin, path)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in stale if p.exists()] == [], r.stderr
    assert [p.name for p in kept if not p.exists()] == []
    for p in stale:
        assert "%s: removed this lock file" % p in r.stderr, r.stderr
