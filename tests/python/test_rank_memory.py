"""--rank-memory (issue 27 point 4): the per-rank memory budget picks the batch (contexts per
forward batch), as docs/cluster.md says: the largest batch, up to min(8, 256 / T), whose
buffers fit the budget; at least 1. The batch is stored in the result file
(unit_batch_contexts), and --resume keeps the file's, whatever the budget says now.

On the fuzz fixture (tests/fuzz/fixture: 6 contexts x 8 tokens, a tiny GPT-2 and 2 SAEs):
`saegap plan` prints the picked batch, its buffers in bytes, and what one more context would
need; the rule is checked against those figures and against what `run` records."""
import os
import re
import shutil
import subprocess

import h5py
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fuzz", "fixture")
JOB = ["--model", os.path.join(FIX, "model"), "--sae", os.path.join(FIX, "saes"),
       "--tokens", os.path.join(FIX, "tokens.npy"), "--interventions", "sae,eps_random,zero_ablation",
       "--examples", "1", "--threads-per-rank", "1"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
BATCH_MAX = 8  # min(8, 256 // 8 tokens)


def plan(saegap_bin, budget=None):
    extra = ["--rank-memory", str(budget)] if budget is not None else []
    r = subprocess.run([saegap_bin, "plan", "--ranks", "2"] + JOB + extra, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stdout
    m = re.search(r"batch: (\d+) context\(s\) per forward batch for a rank memory budget of .* \(--rank-memory; rank "
                  r"memory budget (\d+) bytes\): (\d+) bytes of buffers per rank at one thread"
                  r"(?:, (\d+) would need (\d+) bytes)?", r.stdout)
    assert m, r.stdout
    B, said, need = int(m.group(1)), int(m.group(2)), int(m.group(3))
    more = (int(m.group(4)), int(m.group(5))) if m.group(4) else None
    return B, said, need, more


def run(saegap_bin, out, budget=None, resume=False):
    extra = (["--rank-memory", str(budget)] if budget is not None else []) + (["--resume"] if resume else [])
    r = subprocess.run([saegap_bin, "run"] + JOB + extra + ["--out", str(out)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stderr


def batch_of(path):
    with h5py.File(path, "r") as f:
        return int(f.attrs["unit_batch_contexts"])


def datasets(path):
    """Every dataset's bytes, but /schedule (who computed each unit and how long it took:
    timings, which a resume changes for the units it runs)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[...].tobytes())
                     if isinstance(obj, h5py.Dataset) and not name.startswith("schedule/") else None)
    return out


def test_default_budget_is_printed_and_keeps_the_largest_batch(saegap_bin):
    B, said, need, more = plan(saegap_bin)
    assert said == 1 << 30  # 1 GiB, documented
    assert B == BATCH_MAX and more is None and need <= said


def test_budget_picks_the_largest_batch_that_fits(saegap_bin, tmp_path):
    """At a budget just under what the largest batch needs, the batch shrinks; its buffers fit,
    one more context's would not; a budget of exactly that much gives the larger batch; and
    the run records the batch plan printed."""
    _, _, need_max, _ = plan(saegap_bin, 1 << 30)
    B, said, need, more = plan(saegap_bin, need_max - 1)
    assert said == need_max - 1
    assert 1 <= B < BATCH_MAX and more is not None and more[0] == B + 1
    assert need <= said < more[1], (need, said, more)
    B_up, _, need_up, _ = plan(saegap_bin, more[1])
    assert B_up == B + 1 and need_up == more[1]
    assert plan(saegap_bin, more[1] - 1)[0] == B
    # units of the fuzz fixture at 1 MB: a batch strictly between 1 and the largest
    B_small = plan(saegap_bin, "1MB")[0]
    assert 1 < B_small < BATCH_MAX
    out = tmp_path / "small.h5"
    err = run(saegap_bin, out, "1MB")
    assert batch_of(out) == B_small
    assert "%d context(s) per forward batch" % B_small in err, err


def test_resume_keeps_the_files_batch(saegap_bin, tmp_path):
    """A file written at one budget, interrupted (units not done, not complete), resumed at
    another budget: the resume computes with the file's batch, says so, and ends bit-identical
    to the uninterrupted run."""
    full = tmp_path / "full.h5"
    run(saegap_bin, full, "1MB")
    B_file = batch_of(full)
    assert B_file < BATCH_MAX
    part = tmp_path / "part.h5"
    shutil.copy(full, part)
    with h5py.File(part, "r+") as f:
        f.attrs.modify("complete", 0)
        done = f["progress/unit_done"]
        v = done[...]
        assert len(v) > 1
        v[len(v) // 2:] = 0  # the later units not done: the resume computes them
        done[...] = v
    err = run(saegap_bin, part, resume=True)  # the default budget would pick BATCH_MAX
    assert "keeps the file's batch of %d context(s)" % B_file in err, err
    assert batch_of(part) == B_file
    want, got = datasets(full), datasets(part)
    assert sorted(want) == sorted(got)
    assert [k for k in want if want[k] != got[k]] == []


@pytest.mark.parametrize("value", ["lots", "0", "12XB", "-5GB", "500KB"])
def test_a_bad_budget_is_refused_by_name(saegap_bin, tmp_path, value):
    r = subprocess.run([saegap_bin, "plan", "--ranks", "1"] + JOB + ["--rank-memory", value], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=ENV, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "saegap: error:" in r.stderr and "--rank-memory" in r.stderr and "at least 1 MB" in r.stderr, r.stderr
