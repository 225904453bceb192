"""Train the demo's 9 SAEs (SAELens on-disk format) on the exported demo model.

Usage: train_saes.py TEXT_DIR
Activations come from the model as written to ../model (F16 -> F32), in
TransformerLens's processed basis (FIELD-FACTS section 2), because that is the
basis both cfg generations below tell saegap to use. Writes ../saes/<name>/ and
../sae_metrics.json (held-out EV / L0 / dead latents, BOS positions excluded).
"""
import json
import os
import sys
import time

import numpy as np
import torch

import common
from common import BOS, DEMO

SEED = 0
D_SAE = 1024
N_TRAIN_CTX = 1500  # x 127 positions ~ 190k activation vectors per site
EPOCHS = 4
BATCH = 1024

# site -> (architecture, cfg generation, k or None, L1 coefficient (standard/jumprelu))
PLAN = {
    "blocks.0.hook_resid_pre": ("standard", "legacy", None, 2.0),
    "blocks.1.hook_resid_pre": ("topk", "v6", 24, None),
    "blocks.2.hook_resid_pre": ("jumprelu", "v6", None, 2.0),
    "blocks.3.hook_resid_pre": ("standard", "legacy", None, 2.0),
    "blocks.3.hook_resid_post": ("topk", "v6", 32, None),
    "blocks.0.attn.hook_z": ("topk", "v6", 32, None),
    "blocks.1.attn.hook_z": ("standard", "v6", None, 1.0),
    "blocks.2.attn.hook_z": ("jumprelu", "v6", None, 1.0),
    "blocks.3.attn.hook_z": ("standard", "legacy", None, 1.0),
}


class SAE(torch.nn.Module):
    def __init__(self, d_in, d_sae, arch, k=None):
        super().__init__()
        self.arch, self.k = arch, k
        W = torch.randn(d_sae, d_in)
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(0.1 * W.T.clone())  # tied init: fewer dead latents
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.jump = False  # jumprelu SAEs start as ReLU, then gate at their thresholds

    def encode(self, x):
        z = (x - self.b_dec) @ self.W_enc + self.b_enc  # apply_b_dec_to_input = true
        if self.arch == "topk":
            v, i = z.topk(self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, i, v.relu())
        if self.jump:
            return z.relu() * (z > self.threshold)
        return z.relu()

    def forward(self, x):
        f = self.encode(x)
        return f, f @ self.W_dec + self.b_dec


def ev_l0_dead(sae, x):
    """Explained variance (mean-centered denominator), mean L0, never-firing latents."""
    with torch.no_grad():
        f, xh = sae(x)
        ev = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        return float(ev), float((f > 0).sum(1).float().mean()), int(((f > 0).sum(0) == 0).sum())


def train_one(x, arch, k, l1, gen):
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    # train at unit scale (E||x||^2 = d_in) so one L1 coefficient fits every site;
    # the scale is folded back into b_enc / threshold / b_dec afterwards
    s = float(x.shape[1] ** 0.5 / x.norm(dim=1).mean())
    xs = x * s
    sae = SAE(x.shape[1], D_SAE, arch, k)
    with torch.no_grad():
        sae.b_dec.copy_(xs.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    n = xs.shape[0]
    steps_per_epoch = n // BATCH
    phases = [("main", EPOCHS)]
    if arch == "jumprelu":
        phases = [("main", EPOCHS - 2), ("jump", 2)]
    for phase, epochs in phases:
        if phase == "jump":
            # threshold: the 25th percentile of each latent's positive pre-activations,
            # then keep training everything under the JumpReLU gate (threshold fixed)
            with torch.no_grad():
                z = (xs[:100_000] - sae.b_dec) @ sae.W_enc + sae.b_enc
                zp = torch.where(z > 0, z, torch.full_like(z, float("nan")))
                th = torch.nanquantile(zp, 0.25, dim=0)
                sae.threshold.copy_(torch.nan_to_num(th, nan=0.0).clamp(min=1e-3))
            sae.jump = True
        for ep in range(epochs):
            perm = torch.randperm(n, generator=g)
            for it in range(steps_per_epoch):
                xb = xs[perm[it * BATCH:(it + 1) * BATCH]]
                f, xh = sae(xb)
                mse = ((xh - xb) ** 2).sum(1).mean()
                loss = mse
                if arch != "topk":  # L1 warmed up over the first epoch so fewer latents die early
                    warm = min(1.0, (it + 1 + ep * steps_per_epoch) / steps_per_epoch) if phase == "main" else 1.0
                    loss = loss + warm * l1 * (f * sae.W_dec.norm(dim=1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # unit-norm decoder rows (SAELens practice)
                    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            print(f"    {phase} epoch {ep}: mse/||x||^2 {mse.item() / x.shape[1]:.4f} "
                  f"L0 {(f > 0).sum(1).float().mean():.1f}", flush=True)
    with torch.no_grad():  # fold the unit scale s back: f' = f / s, x_hat = f' W_dec + b_dec / s
        sae.b_enc /= s
        sae.b_dec /= s
        sae.threshold /= s
    return sae


def write_sae(sae, site, arch, gen, k):
    name = site
    out = os.path.join(DEMO, "saes", name)
    os.makedirs(out, exist_ok=True)
    L = int(site.split(".")[1])
    d_in = sae.W_dec.shape[1]
    if gen == "legacy":  # like gpt2-small-res-jb: no basis key, so the processed default applies
        cfg = {"model_name": "saegap-demo-gpt2", "hook_point": site, "hook_point_layer": L,
               "hook_point_head_index": None, "d_in": d_in, "d_sae": D_SAE, "dtype": "torch.float32",
               "device": "cpu", "context_size": common.CTX, "normalize_activations": False,
               "lr": 1e-3, "seed": SEED}
        assert arch == "standard"  # legacy files have no architecture key: they are ReLU SAEs
    else:
        cfg = {"architecture": arch, "d_in": d_in, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none",
               "reshape_activations": "hook_z" if site.endswith("hook_z") else "none",
               "metadata": {"model_name": "saegap-demo-gpt2", "hook_name": site, "hook_head_index": None,
                            "prepend_bos": True, "context_size": common.CTX, "dataset_path": "sotu-1790-1998",
                            "sae_lens_version": "6.5.0",
                            "model_from_pretrained_kwargs": {"center_writing_weights": True, "fold_ln": True,
                                                             "fold_value_biases": True}}}
        if arch == "topk":
            cfg["k"] = k
    with open(os.path.join(out, "cfg.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    t = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if arch == "jumprelu":
        t["threshold"] = sae.threshold
    common.save_safetensors(os.path.join(out, "sae_weights.safetensors"), t, "F32")
    return out


def load_sae(path, arch, k):
    w = common.load_safetensors(os.path.join(path, "sae_weights.safetensors"))
    sae = SAE(w["W_dec"].shape[1], w["W_dec"].shape[0], arch, k)
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, n).copy_(w[n])
        if "threshold" in w:
            sae.threshold.copy_(w["threshold"])
            sae.jump = True
    return sae


def collect(model, rows, sites):
    """Processed-basis activations at every non-BOS position of rows."""
    acts = {s: [] for s in sites}
    for b in range(0, len(rows), 64):
        idx = torch.from_numpy(rows[b:b + 64]).long()
        h = common.processed_hooks(model, idx)
        keep = (idx != BOS).reshape(-1)
        for s in sites:
            acts[s].append(h[s].reshape(-1, h[s].shape[-1])[keep])
    return {s: torch.cat(v) for s, v in acts.items()}


def main():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    names, docs = common.load_docs(sys.argv[1])
    train_docs, _ = common.split_docs(docs)
    train = common.pack(train_docs)
    rows = train[np.random.RandomState(SEED).permutation(len(train))[:N_TRAIN_CTX]]
    held = np.load(os.path.join(DEMO, "tokens.npy"))
    model = common.load_exported_model()
    t0 = time.time()
    xs = collect(model, rows, list(PLAN))
    xh = collect(model, held, list(PLAN))
    xh32 = collect(model, held[:32], list(PLAN))  # for the check against `saegap run --contexts 32`
    print(f"activations: {len(xs[list(PLAN)[0]])} train / {len(xh[list(PLAN)[0]])} held-out vectors "
          f"({time.time() - t0:.0f}s)", flush=True)
    metrics, mpath = {}, os.path.join(DEMO, "sae_metrics.json")
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(PLAN)  # retrain a subset
    if len(only) < len(PLAN) and os.path.exists(mpath):
        with open(mpath) as f:
            metrics = json.load(f)["sites"]
    for site, (arch, gen, k, l1) in PLAN.items():
        if site not in only:
            continue
        t1 = time.time()
        print(f"{site}: {arch} ({gen} cfg)", flush=True)
        sae = train_one(xs[site], arch, k, l1, gen)
        path = write_sae(sae, site, arch, gen, k)
        sae = load_sae(path, arch, k)  # measure exactly what was written
        ev, l0, dead = ev_l0_dead(sae, xh[site])
        ev32, l032, _ = ev_l0_dead(sae, xh32[site])
        metrics[site] = {"architecture": arch, "cfg_generation": gen, "d_in": sae.W_dec.shape[1],
                         "d_sae": D_SAE, "k": k, "l1_coefficient": l1,
                         "explained_variance": round(ev, 5), "l0": round(l0, 3), "dead_latents": dead,
                         "explained_variance_first32": round(ev32, 5), "l0_first32": round(l032, 3),
                         "train_seconds": round(time.time() - t1, 1)}
        print(f"  held-out EV {ev:.4f}  L0 {l0:.1f}  dead {dead}  ({time.time() - t1:.0f}s)", flush=True)
    out = {"measured_on": "jobs/demo/tokens.npy, all 256 contexts, BOS positions excluded "
                          "(the *_first32 values: the first 32 contexts only)",
           "basis": "processed (TransformerLens: center_writing_weights, fold_ln, fold_value_biases)",
           "explained_variance_definition": "1 - sum_t ||x_t - x_hat_t||^2 / sum_t sum_d (x_td - mean_d)^2",
           "n_train_vectors": int(len(xs[list(PLAN)[0]])), "epochs": EPOCHS, "seed": SEED, "sites": metrics}
    out["sites"] = {s: metrics[s] for s in PLAN if s in metrics}
    with open(mpath, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
