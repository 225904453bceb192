"""The embedded demo (jobs/demo): its files are what SOURCES.md says, and saegap reproduces
the explained variance and L0 the SAE trainer measured (an independent PyTorch/NumPy
computation in jobs/demo/train) on the same held-out contexts."""

import json
import os
import subprocess

import h5py
import numpy as np
import pytest
from conftest import mpirun_cmd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEMO = os.path.join(ROOT, "jobs", "demo")


def test_demo_files_and_sizes():
    total = 0
    for dirpath, _, files in os.walk(DEMO):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    assert total < 30e6, "jobs/demo is %.1f MB (limit 30 MB)" % (total / 1e6)
    cfg = json.load(open(os.path.join(DEMO, "model", "config.json")))
    assert cfg["vocab_size"] == 50257 and cfg["model_type"] == "gpt2"
    toks = np.load(os.path.join(DEMO, "tokens.npy"))
    assert toks.shape[0] >= 256 and toks.shape[1] == 128
    assert (toks[:, 0] == 50256).all(), "every held-out context starts with BOS"
    assert toks.min() >= 0 and toks.max() < 50257
    m = json.load(open(os.path.join(DEMO, "model_metrics.json")))
    assert m["heldout_ce_f16"] < m["heldout_unigram_ce"] - 0.5, "the model must beat the unigram baseline clearly"


def test_saegap_reproduces_trainer_metrics(run_saegap, tmp_path):
    metrics = json.load(open(os.path.join(DEMO, "sae_metrics.json")))["sites"]
    out = tmp_path / "demo.h5"
    run_saegap(["run", "--model", os.path.join(DEMO, "model"), "--sae", os.path.join(DEMO, "saes"),
                "--tokens", os.path.join(DEMO, "tokens.npy"), "--contexts", "32", "--interventions", "sae",
                "--threads-per-rank", "1", "--quiet", "--out", str(out)])
    with h5py.File(out) as f:
        assert sorted(f["sites"]) == sorted(metrics)
        for site, want in metrics.items():
            a = f["sites"][site].attrs
            assert abs(a["explained_variance"] - want["explained_variance_first32"]) < 2e-3, \
                (site, a["explained_variance"], want["explained_variance_first32"])
            assert abs(a["mean_l0"] - want["l0_first32"]) < 0.05 * max(1.0, want["l0_first32"]), \
                (site, a["mean_l0"], want["l0_first32"])
            assert a["basis"] == "processed"


def test_demo_job_file_end_to_end(saegap_bin, tmp_path):
    """The README's first command on fewer contexts: jobs/demo.job (every SAE, all 11
    interventions, examples) under mpirun -np 2, then verify and the report. The file must hold
    everything of the layout: every intervention's KL and CE at every site, the correlation
    matrices, the examples, complete = 1; the report's headline must show every site."""
    out = tmp_path / "demo.h5"
    cmd = mpirun_cmd() + ["-np", "2", saegap_bin, "run", "jobs/demo.job", "--contexts", "4",
                          "--out", str(out), "--threads-per-rank", "1", "--quiet"]
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    ivs = ["sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random", "theta_random_true_norm",
           "zero_ablation", "mean_ablation", "latent_noise", "sae_eps_random", "cov_random"]
    sites = json.load(open(os.path.join(DEMO, "sae_metrics.json")))["sites"]
    with h5py.File(out, "r") as f:
        assert int(np.asarray(f.attrs["complete"]).reshape(-1)[0]) == 1
        assert sorted(f["sites"]) == sorted(sites)
        for site in sites:
            for kind in ("kl", "ce"):
                for iv in ivs:
                    a = f["sites/%s/%s/%s" % (site, kind, iv)][()]
                    assert a.shape[0] == 4 and np.isfinite(a).any(), (site, kind, iv)
        for kind in ("pearson", "spearman"):
            c = f["correlation/sae_minus_eps_random/%s" % kind][()]
            assert c.shape == (len(sites), len(sites))
            assert np.allclose(np.diag(c), 1.0)
        assert "examples" in f
    v = subprocess.run([saegap_bin, "verify", str(out)], stdout=subprocess.PIPE, text=True)
    assert v.returncode == 0 and "complete" in v.stdout, v.stdout
    r = subprocess.run(["/usr/bin/python3", "analysis/report.py", str(out), "-o", str(tmp_path / "report")],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "report" / "report.html")
    table = r.stdout[r.stdout.index("headline of"):]
    for site in sites:
        assert site in table, r.stdout
