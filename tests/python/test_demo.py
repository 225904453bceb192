"""The embedded demo (jobs/demo): its files are what SOURCES.md says, and saegap reproduces
the explained variance and L0 the SAE trainer measured (an independent PyTorch/NumPy
computation in jobs/demo/train) on the same held-out contexts."""

import json
import os

import h5py
import numpy as np
import pytest

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
