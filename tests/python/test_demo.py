"""The embedded demos (jobs/demo: GPT-2; jobs/demo-pythia: Pythia architecture, one SAE per
format): their files are what SOURCES.md says, and saegap reproduces the explained variance and
L0 the SAE trainers measured (independent PyTorch/NumPy computations in jobs/*/train) on the
same held-out contexts; each demo's job runs end to end."""

import json
import os
import subprocess

import h5py
import numpy as np
import pytest
from conftest import mpirun_cmd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEMO = os.path.join(ROOT, "jobs", "demo")
PYTHIA = os.path.join(ROOT, "jobs", "demo-pythia")
IVS = ["sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random", "theta_random_true_norm",
       "zero_ablation", "mean_ablation", "latent_noise", "sae_eps_random", "cov_random"]


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


def run_demo_job(saegap_bin, tmp_path, job, demo_dir, contexts):
    """jobs/<demo>.job on fewer contexts (every SAE, all 11 interventions, examples) under
    mpirun -np 2, then verify and the report. The file must hold everything of the layout: every
    intervention's KL and CE at every site, the correlation matrices, the examples, complete = 1;
    the report's headline must show every site. Returns (result path, report stdout, sites)."""
    out = tmp_path / "demo.h5"
    cmd = mpirun_cmd() + ["-np", "2", saegap_bin, "run", job, "--contexts", str(contexts),
                          "--out", str(out), "--threads-per-rank", "1", "--quiet"]
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    ivs = IVS
    sites = json.load(open(os.path.join(demo_dir, "sae_metrics.json")))["sites"]
    with h5py.File(out, "r") as f:
        assert int(np.asarray(f.attrs["complete"]).reshape(-1)[0]) == 1
        assert sorted(f["sites"]) == sorted(sites)
        for site in sites:
            for kind in ("kl", "ce"):
                for iv in ivs:
                    a = f["sites/%s/%s/%s" % (site, kind, iv)][()]
                    assert a.shape[0] == contexts and np.isfinite(a).any(), (site, kind, iv)
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
    return out, tmp_path / "report", sites


def test_demo_job_file_end_to_end(saegap_bin, tmp_path):
    """The README's first command (jobs/demo.job) on 4 contexts."""
    run_demo_job(saegap_bin, tmp_path, "jobs/demo.job", DEMO, 4)


def test_main_job_report_shows_every_part_of_the_post(saegap_bin, tmp_path):
    """jobs/run-demo.sh's two sweeps on 4 contexts: jobs/demo.job, then jobs/demo-position.job
    (sae and eps_random at position 32, window 16, 16 draws per token), and one report from
    both files: no part skipped, the single-position window and the z-scores taken from the
    position file (the post's 'Single token intervention' and 'How pathological' figures)."""
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    files = []
    for job, name in (("jobs/demo.job", "result.h5"), ("jobs/demo-position.job", "position.h5")):
        out = tmp_path / name
        p = subprocess.run(mpirun_cmd() + ["-np", "2", saegap_bin, "run", job, "--contexts", "4",
                                           "--out", str(out), "--threads-per-rank", "1", "--quiet"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr
        files.append(str(out))
    with h5py.File(files[1], "r") as f:
        a = f.attrs
        assert (a["scope"], int(a["position"]), int(a["window"]), int(a["samples"])) == ("position", 32, 16, 16)
        for site in f["sites"]:
            assert f["sites/%s/kl/eps_random" % site].shape == (4, 16, 16)
            assert np.isfinite(f["sites/%s/sae_kl_zscore" % site][()][:, 0]).all()
    r = subprocess.run(["/usr/bin/python3", "analysis/report.py"] + files + ["-o", str(tmp_path / "report")],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "(0 parts skipped)" in r.stdout, r.stdout
    md = open(tmp_path / "report" / "report.md", encoding="utf-8").read()
    for part in ("## KL by position", "## Single-position intervention", "## How unusual is the SAE's error?"):
        assert part in md, part
    assert md.count("From position.h5 (scope position at position 32, window 16, 16 samples).") == 2
    for png in ("window", "zscore_examples", "zscore_distribution", "kl_by_position"):
        assert os.path.exists(tmp_path / "report" / (png + ".png")), png
    script = open(os.path.join(ROOT, "jobs", "run-demo.sh")).read()
    assert "jobs/$NAME-position.job" in script and '"${RESULTS[@]}"' in script


# ---------------------------------------------------------------- the Pythia-architecture demo

def test_pythia_demo_files():
    """A few MB; Pythia's layout (GPTNeoXForCausalLM, untied, vocabulary padded past the
    4,000-token tokenizer, BOS id 0); one SAE per format, each listed in the job file; the model
    beats the unigram baseline clearly."""
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(PYTHIA) for f in fs)
    assert total < 8e6, "jobs/demo-pythia is %.1f MB (limit 8 MB)" % (total / 1e6)
    cfg = json.load(open(os.path.join(PYTHIA, "model", "config.json")))
    assert cfg["architectures"] == ["GPTNeoXForCausalLM"] and cfg["use_parallel_residual"] is True
    assert cfg["tie_word_embeddings"] is False and cfg["rotary_pct"] < 1 and cfg["bos_token_id"] == 0
    tok = json.load(open(os.path.join(PYTHIA, "model", "tokenizer.json")))
    n_tok = len(tok["model"]["vocab"])
    assert n_tok < cfg["vocab_size"], "the vocabulary is padded past the tokenizer, as Pythia's"
    toks = np.load(os.path.join(PYTHIA, "tokens.npy"))
    assert toks.shape[1] == 128 and (toks[:, 0] == 0).all() and toks.max() < n_tok
    m = json.load(open(os.path.join(PYTHIA, "model_metrics.json")))
    assert m["heldout_ce_f16"] < m["heldout_unigram_ce"] - 0.5
    sites = json.load(open(os.path.join(PYTHIA, "sae_metrics.json")))["sites"]
    assert sorted(s["format"] for s in sites.values()) == ["gemma_scope", "saelens", "sparsify"]
    job = open(os.path.join(ROOT, "jobs", "demo-pythia.job")).read()
    for s in sites.values():
        folder = os.path.join("jobs", "demo-pythia", s["path"])
        assert any(folder.startswith(line.split("=", 1)[1].strip()) for line in job.splitlines()
                   if line.startswith("sae ")), (folder, "not in jobs/demo-pythia.job")


def test_pythia_demo_reproduces_trainer_metrics(saegap_bin, tmp_path):
    """saegap's explained variance and L0 of each format's SAE against the trainer's own
    (PyTorch, float32) on the same 32 held-out contexts, each in the basis its format implies
    (SAELens cfg: center_writing_weights; sparsify and Gemma Scope: raw)."""
    out, report, sites = run_demo_job(saegap_bin, tmp_path, "jobs/demo-pythia.job", PYTHIA, 32)
    want_basis = {"saelens": "center_writing_weights", "sparsify": "raw", "gemma_scope": "raw"}
    with h5py.File(out) as f:
        for site, want in sites.items():
            a = f["sites"][site].attrs
            assert abs(a["explained_variance"] - want["explained_variance_first32"]) < 2e-3, \
                (site, a["explained_variance"], want["explained_variance_first32"])
            assert abs(a["mean_l0"] - want["l0_first32"]) < 0.05 * max(1.0, want["l0_first32"]), \
                (site, a["mean_l0"], want["l0_first32"])
            assert a["basis"] == want_basis[want["format"]], (site, a["basis"])
        assert f.attrs["model_architecture"] == "GPTNeoXForCausalLM"
    # the report found the model folder's tokenizer.json and decoded the examples with it
    html = open(report / "report.html", encoding="utf-8").read()
    assert "tokenizer.json" in html, "the report did not decode with the demo's tokenizer"


def test_info_tells_the_token_files_bos_convention(saegap_bin):
    """A token file names no model: `info` says which BOS its contexts start with, so the
    Pythia demo's tokens (BOS 0) and the GPT-2 demo's (50256) are told apart."""
    out = {}
    for name, d in (("gpt2", DEMO), ("pythia", PYTHIA)):
        p = subprocess.run([saegap_bin, "info", os.path.join(d, "tokens.npy")], stdout=subprocess.PIPE, text=True)
        assert p.returncode == 0
        out[name] = p.stdout
    n = np.load(os.path.join(PYTHIA, "tokens.npy")).shape[0]
    assert "%d with 0 (Pythia's)" % n in out["pythia"] and "0 start with 50256" in out["pythia"], out["pythia"]
    n = np.load(os.path.join(DEMO, "tokens.npy")).shape[0]
    assert "%d start with 50256" % n in out["gpt2"] and "0 with 0 (Pythia's)" in out["gpt2"], out["gpt2"]
