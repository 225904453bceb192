"""Cross-check: does `saegap run` on the Pythia demo give the KLs this folder's torch code gives?

Usage: check_saegap.py [SAEGAP_BINARY] [N_CONTEXTS]     (default: build/saegap of this repository, 32)
Runs, from the repository root,
  mpirun -np 1 SAEGAP run --model jobs/demo-pythia/model --sae <each of the 3 SAE folders>
         --tokens jobs/demo-pythia/tokens.npy --contexts N --interventions sae,zero_ablation --quiet
and recomputes, in float64 PyTorch from the same files (F16 model weights, F32 SAEs), the per-token
KL(clean || intervened) over the full 4096-row vocabulary at every non-BOS token, with each site
replaced (non-BOS positions only, BOS keeps its clean value) by the SAE's reconstruction or by zero in
the SAE's basis. It also compares explained variance and L0 with saegap's site attributes and, when
the repository's tests/python/neox_reference.py is there, this module's float64 forward with that
independent reference. Exit status 0 when every per-site mean KL agrees to 1e-3 relative.
"""
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

import common
import train_saes as T
from common import BOS, DEMO, SITES

ROOT = os.path.normpath(os.path.join(DEMO, "..", ".."))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "saegap")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
IVS = ("sae", "zero_ablation")
TOL = 1e-3
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
out = f"/tmp/saegap-demo-pythia-check-{os.getpid()}.h5"
cmd = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "1", os.path.abspath(binary), "run",
       "--model", rel(os.path.join(DEMO, "model"))]
for site in T.PLAN:
    cmd += ["--sae", rel(T.sae_dir(site))]
cmd += ["--tokens", rel(os.path.join(DEMO, "tokens.npy")), "--contexts", str(n),
        "--interventions", ",".join(IVS), "--out", out, "--quiet"]
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
print("$ " + " ".join(cmd[:5] + ["SAEGAP"] + cmd[6:]), flush=True)
subprocess.run(cmd, check=True, cwd=ROOT, env=env)

toks = np.load(os.path.join(DEMO, "tokens.npy"))[:n]
idx = torch.from_numpy(toks).long()
keep = torch.from_numpy(toks != BOS)
model = common.load_exported_model(dtype=torch.float64)
worst = 0.0

# ---- the torch module against the independent float64 NumPy reference of the repository's tests
ref_dir = os.path.join(ROOT, "tests", "python")
if os.path.exists(os.path.join(ref_dir, "neox_reference.py")):
    sys.path.insert(0, ref_dir)
    import neox_reference as R
    cfg, params = R.load_model(os.path.join(DEMO, "model"))
    two = toks[:2]
    with torch.no_grad():
        hooks = {}
        lp_t = torch.log_softmax(model(torch.from_numpy(two).long(), hooks=hooks), -1).numpy()
    raw_acts, lp_raw = R.forward(cfg, params, two, basis="raw")
    proc_acts, lp_proc = R.forward(cfg, params, two, basis="processed")
    d_lp = max(np.abs(lp_t - lp_raw).max(), np.abs(lp_t - lp_proc).max())
    d_site = max(np.abs(common.to_basis(hooks[s], b).numpy() - (proc_acts if b == "centred" else raw_acts)[s]).max()
                 for s, b in SITES.items())
    print(f"torch module vs tests/python/neox_reference.py (2 contexts, float64): max |log-prob diff| "
          f"{d_lp:.1e} (raw and processed), max |site diff| {d_site:.1e} (centred site vs processed basis)")
    assert d_lp < 1e-9 and d_site < 1e-9

# ---- KL per token, float64
with torch.no_grad():
    lp_clean = torch.log_softmax(model(idx), -1)
    p_clean = lp_clean.exp()


def kl_with(site, replace):
    basis = SITES[site]

    def patch(h):
        new = replace(common.to_basis(h, basis))  # a centred vector written back into the HF stream:
        return torch.where(keep[..., None], new, h)  # every read of it is a LayerNorm, so it is TL's result

    with torch.no_grad():
        lq = torch.log_softmax(model(idx, patch={site: patch}), -1)
    return (p_clean * (lp_clean - lq)).sum(-1)


rows = []
with h5py.File(out, "r") as h:
    for site in T.PLAN:
        g = h["sites"][site]
        a = g.attrs
        sae = T.load_sae(site, torch.float64)
        x = common.site_acts(model, idx)[site]
        ev, l0, _ = T.ev_l0_dead(sae, x[keep])
        kls = {"sae": kl_with(site, lambda v: sae(v)[1]), "zero_ablation": kl_with(site, torch.zeros_like)}
        for iv in IVS:
            s = g["kl"][iv][:].astype(np.float64)
            mine = kls[iv].numpy()
            assert (np.isnan(s) == ~keep.numpy()).all(), (site, iv, "measured tokens differ")
            m = keep.numpy()
            m_s, m_t = float(s[m].mean()), float(mine[m].mean())
            r = abs(m_s - m_t) / abs(m_t)
            tok = float((np.abs(s[m] - mine[m]) / np.maximum(np.abs(mine[m]), 1e-6)).max())
            worst = max(worst, r)
            rows.append((site, iv, m_s, float(a[f"mean_kl_{iv}"]), m_t, r, tok))
        print(f"{site:26s} {a['cfg_generation'].decode() if isinstance(a['cfg_generation'], bytes) else a['cfg_generation']:11s} "
              f"basis {a['basis'] if not isinstance(a['basis'], bytes) else a['basis'].decode():24s} "
              f"EV saegap {float(a['explained_variance']):.5f} torch {ev:.5f}  "
              f"L0 saegap {float(a['mean_l0']):.3f} torch {l0:.3f}  tokens {int(a['measured_tokens'])}")
os.remove(out)
print(f"\n{'site':26s} {'intervention':14s} {'saegap mean':>12s} {'(attribute)':>12s} {'torch f64':>12s} "
      f"{'rel diff':>9s} {'max tok rel':>11s}")
for r in rows:
    print(f"{r[0]:26s} {r[1]:14s} {r[2]:12.6g} {r[3]:12.6g} {r[4]:12.6g} {r[5]:9.1e} {r[6]:11.1e}")
print(f"largest relative difference of a per-site mean KL: {worst:.1e} (tolerance {TOL:g})")
sys.exit(0 if worst < TOL else 1)
