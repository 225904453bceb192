"""saegap plan / info and job files: the plan's time and size estimates against a real run,
what info reports, and that a job file equals the same options on the command line."""

import os
import re
import time

import h5py
import numpy as np
import pytest

import saegap_fixtures as fx
import sae_fixtures as sf

PLAN_FACTOR = 3.0  # docs/cluster.md states this bound


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    fx.make_gpt2_model(str(d / "model"), n_layer=3, n_head=4, n_embd=128, n_positions=64, vocab_size=2000, seed=1)
    toks = fx.random_tokens(96, 32, 2000, seed=2, bos=1999)
    fx.write_tokens_npy(str(d / "t.npy"), toks)
    sf.make_sae(str(d / "saes" / "a"), 128, 512, "blocks.1.hook_resid_pre", architecture="standard",
                generation="v6", model_name="model", seed=3)
    sf.make_sae(str(d / "saes" / "b"), 128, 512, "blocks.2.attn.hook_z", architecture="topk", k=16,
                generation="flat", model_name="model", seed=4)
    job = d / "t.job"
    job.write_text("# test job\nmodel = %s\nsae = %s\ntokens = %s\ninterventions = all\nseed = 5\n"
                   % (d / "model", d / "saes", d / "t.npy"))
    return d


def test_plan_estimate_within_factor_of_real_run(world, run_saegap):
    p = run_saegap(["plan", str(world / "t.job"), "--ranks", "1", "--threads-per-rank", "1"])
    text = p.stdout.decode()
    m = re.search(r"expected wall time on 1 rank\(s\) x 1 thread\(s\): ([\d.]+) (s|min|h)", text)
    assert m, text
    predicted = float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]
    size = re.search(r"output file: about ([\d.]+) (B|KB|MB|GB)", text)
    assert size, text
    out = world / "plan_check.h5"
    t0 = time.time()
    run_saegap(["run", str(world / "t.job"), "--out", str(out), "--threads-per-rank", "1", "--quiet"])
    real = time.time() - t0
    assert predicted / PLAN_FACTOR <= real <= predicted * PLAN_FACTOR, \
        "plan said %.2f s, the run took %.2f s (factor %.1f allowed)\n%s" % (predicted, real, PLAN_FACTOR, text)
    predicted_bytes = float(size.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[size.group(2)]
    real_bytes = os.path.getsize(out)
    assert predicted_bytes / 2 <= real_bytes <= predicted_bytes * 2, (predicted_bytes, real_bytes)


def test_plan_warns_when_ranks_exceed_units(world, run_saegap):
    p = run_saegap(["plan", str(world / "t.job"), "--ranks", "500", "--contexts", "8"])
    assert "would idle" in p.stdout.decode()


def test_job_file_equals_command_line_and_is_overridden(world, run_saegap):
    a, b = world / "job.h5", world / "cli.h5"
    run_saegap(["run", str(world / "t.job"), "--contexts", "8", "--seed", "7", "--out", str(a),
                "--threads-per-rank", "1", "--quiet"])
    run_saegap(["run", "--model", str(world / "model"), "--sae", str(world / "saes"), "--tokens",
                str(world / "t.npy"), "--interventions", "all", "--contexts", "8", "--seed", "7",
                "--out", str(b), "--threads-per-rank", "1", "--quiet"])
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa.attrs["seed"] == 7, "command line must override the job file's seed 5"
        for site in fa["sites"]:
            for iv in fa["sites"][site]["kl"]:
                assert np.array_equal(fa["sites"][site]["kl"][iv][()], fb["sites"][site]["kl"][iv][()],
                                      equal_nan=True), (site, iv)


def test_job_file_errors(world, run_saegap):
    bad = world / "bad.job"
    bad.write_text("model = x\nfrobnicate = 1\n")
    p = run_saegap(["run", str(bad), "--out", str(world / "never.h5")], check=False)
    assert 1 <= p.returncode <= 127
    err = p.stderr.decode()
    assert "frobnicate" in err and "line 2" in err, err
    assert not (world / "never.h5").exists()


@pytest.mark.parametrize("what,expect", [
    ("model", ["GPT-2 model", "layers 3", "heads 4", "d_model 128", "vocab 2000", "F32"]),
    ("saes/a", ["cfg generation v6", "blocks.1.hook_resid_pre", "standard", "d_sae 512", "model"]),
    ("saes/b", ["cfg generation flat", "blocks.2.attn.hook_z", "topk", "k 16"]),
    ("t.npy", ["96 contexts x 32 tokens", "token ids"]),
])
def test_info_describes_inputs(world, run_saegap, what, expect):
    text = run_saegap(["info", str(world / what)]).stdout.decode()
    for e in expect:
        assert e in text, (e, text)


def test_info_and_verify_on_a_result(world, run_saegap):
    out = world / "info.h5"
    run_saegap(["run", str(world / "t.job"), "--contexts", "8", "--interventions", "sae,eps_random",
                "--out", str(out), "--threads-per-rank", "1", "--quiet"])
    text = run_saegap(["info", str(out)]).stdout.decode()
    for e in ["saegap run result", "n_contexts      8", "sae,eps_random", "complete"]:
        assert e in text, (e, text)
    v = run_saegap(["verify", str(out)], check=False)
    assert v.returncode == 0 and "complete" in v.stdout.decode()
    p = run_saegap(["info", str(world / "nonexistent")], check=False)
    assert 1 <= p.returncode <= 127 and "saegap: error:" in p.stderr.decode()
