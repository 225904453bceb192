"""Cross-check: does `saegap run` reproduce the trainer's per-site explained variance?

Usage: check_saegap.py SAEGAP_BINARY [N_CONTEXTS]
Runs saegap on the first N contexts of ../tokens.npy (default 32) and recomputes
EV / L0 with this directory's torch code on exactly the tokens saegap reports it
measured (non-BOS; saegap's `measured_tokens` tells which positions count).
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

import common
import train_saes as T
from common import BOS, DEMO

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 32
out = f"/tmp/saegap-demo-check-{os.getpid()}.h5"
subprocess.run([binary, "run", "--model", f"{DEMO}/model", "--sae", f"{DEMO}/saes", "--tokens",
                f"{DEMO}/tokens.npy", "--out", out, "--interventions", "sae,eps_random,zero_ablation",
                "--contexts", str(n), "--quiet"], check=True)
toks = np.load(os.path.join(DEMO, "tokens.npy"))[:n]
model = common.load_exported_model()
with open(os.path.join(DEMO, "sae_metrics.json")) as f:
    plan = json.load(f)["sites"]
hooks = common.processed_hooks(model, torch.from_numpy(toks).long())
worst, rows = 0.0, []
with h5py.File(out, "r") as h:
    for site, m in plan.items():
        a = h["sites"][site].attrs
        x = hooks[site]
        keep = torch.from_numpy(toks != BOS)
        if int(a["measured_tokens"]) != int(keep.sum()):  # saegap may not measure the last position
            keep[:, -1] = False
        assert int(a["measured_tokens"]) == int(keep.sum()), (site, int(a["measured_tokens"]))
        sae = T.load_sae(os.path.join(DEMO, "saes", site), m["architecture"], m["k"])
        ev, l0, _ = T.ev_l0_dead(sae, x[keep])
        d = abs(ev - float(a["explained_variance"]))
        worst = max(worst, d)
        rows.append((site, ev, float(a["explained_variance"]), l0, float(a["mean_l0"]), int(a["measured_tokens"])))
os.remove(out)
print(f"{'site':28s} {'EV trainer':>10s} {'EV saegap':>10s} {'L0 trainer':>10s} {'L0 saegap':>10s} tokens")
for r in rows:
    print(f"{r[0]:28s} {r[1]:10.5f} {r[2]:10.5f} {r[3]:10.3f} {r[4]:10.3f} {r[5]}")
print(f"largest |EV difference| {worst:.2e}")
sys.exit(0 if worst < 2e-3 else 1)
