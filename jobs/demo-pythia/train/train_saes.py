"""Train the Pythia demo's 3 SAEs, one per on-disk format saegap reads, on the exported model.

Usage: train_saes.py TEXT_DIR [site1,site2]
Activations come from the model as written to ../model (F16 weights upcast to F32), over
training contexts, BOS positions excluded, each in the basis its format implies:
  - SAELens (cfg v6, metadata.model_from_pretrained_kwargs {"center_writing_weights": true}):
    blocks.0.hook_resid_post minus its mean over d_model (TransformerLens's centred residual
    stream; for GPT-NeoX every residual-stream hook is centred, embedding included:
    tests/python/neox_reference.py, center_writing_weights);
  - EleutherAI sparsify (layers.1 = blocks.1.hook_resid_post) and Gemma Scope
    (gemma-scope-demo-res/layer_2 = blocks.2.hook_resid_post): raw Hugging Face values.
Writes ../saes/... and ../sae_metrics.json (held-out EV / L0 / dead latents, BOS positions excluded).
"""
import glob
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

import common
from common import BOS, DEMO, SITES

SEED = 0
D_SAE = 1024
N_TRAIN_CTX = 3000  # x 127 positions ~ 381k activation vectors per site
EPOCHS = 4
BATCH = 1024
AUXK_ALPHA, AUXK_K, DEAD_AFTER = 1 / 32, 64, 100  # topk: sparsify's AuxK loss on latents idle 100 batches

# site -> (format, architecture, k or None, L1 coefficient (jumprelu's ReLU phase))
PLAN = {
    "blocks.0.hook_resid_post": ("saelens", "topk", 24, None),
    "blocks.1.hook_resid_post": ("sparsify", "topk", 32, None),
    "blocks.2.hook_resid_post": ("gemma_scope", "jumprelu", None, 1.5),
}
SAELENS_DIR = os.path.join(DEMO, "saes", "saelens", "blocks.0.hook_resid_post")
SPARSIFY_DIR = os.path.join(DEMO, "saes", "sparsify", "layers.1")
GEMMA_WIDTH_DIR = os.path.join(DEMO, "saes", "gemma-scope-demo-res", "layer_2", "width_1k")


def gemma_scope_dir():
    """The one average_l0_<L0> folder (its name depends on the trained SAE's L0)."""
    found = sorted(glob.glob(os.path.join(GEMMA_WIDTH_DIR, "average_l0_*")))
    assert len(found) == 1, found
    return found[0]


def sae_dir(site):
    fmt = PLAN[site][0]
    return {"saelens": SAELENS_DIR, "sparsify": SPARSIFY_DIR}.get(fmt) or gemma_scope_dir()


class SAE(torch.nn.Module):
    """pre = (x - b_dec if apply_b_dec else x) @ W_enc + b_enc;
    topk: the k largest pre, ReLU'd; relu: ReLU(pre); jumprelu: pre * (pre > threshold);
    x_hat = f @ W_dec + b_dec."""

    def __init__(self, d_in, d_sae, arch, k=None, apply_b_dec=True):
        super().__init__()
        self.arch, self.k, self.apply_b_dec = arch, k, apply_b_dec
        W = torch.randn(d_sae, d_in)
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(0.1 * W.T.clone())  # tied init: fewer dead latents
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.jump = arch == "jumprelu"  # a jumprelu SAE trains as ReLU first, then gates at its thresholds

    def pre(self, x):
        return ((x - self.b_dec) if self.apply_b_dec else x) @ self.W_enc + self.b_enc

    def encode(self, x):
        z = self.pre(x)
        if self.arch == "topk":
            v, i = z.topk(self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, i, v.relu())
        if self.jump:
            return z * (z > self.threshold)
        return z.relu()

    def forward(self, x):
        f = self.encode(x)
        return f, f @ self.W_dec + self.b_dec


def ev_l0_dead(sae, x):
    """Explained variance (mean-centred denominator), mean L0, never-firing latents."""
    with torch.no_grad():
        f, xh = sae(x)
        ev = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        return float(ev), float((f > 0).sum(1).float().mean()), int(((f > 0).sum(0) == 0).sum())


def train_one(x, arch, k, l1):
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    # train at unit scale (E||x|| = sqrt(d_in)) so one L1 coefficient fits every site;
    # the scale is folded back into b_enc / threshold / b_dec afterwards
    s = float(x.shape[1] ** 0.5 / x.norm(dim=1).mean())
    xs = x * s
    sae = SAE(x.shape[1], D_SAE, arch, k)
    sae.jump = False
    with torch.no_grad():
        sae.b_dec.copy_(xs.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    n = xs.shape[0]
    steps_per_epoch = n // BATCH
    idle = torch.zeros(D_SAE, dtype=torch.long)  # batches since each latent last fired
    phases = [("main", EPOCHS)]
    if arch == "jumprelu":
        phases = [("main", EPOCHS - 2), ("jump", 2)]
    for phase, epochs in phases:
        if phase == "jump":
            # threshold: the 25th percentile of each latent's positive pre-activations,
            # then keep training everything under the JumpReLU gate (threshold fixed)
            with torch.no_grad():
                z = sae.pre(xs[:100_000])
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
                if arch == "topk":
                    with torch.no_grad():
                        fired = (f > 0).any(0)
                        idle = torch.where(fired, torch.zeros_like(idle), idle + 1)
                    dead = idle > DEAD_AFTER
                    if dead.any():  # AuxK (sparsify): the dead latents' top-k_aux reconstruct the error
                        e = (xb - xh).detach()
                        za = sae.pre(xb).masked_fill(~dead, float("-inf"))
                        v, i = za.topk(min(AUXK_K, int(dead.sum())), dim=-1)
                        eh = torch.zeros_like(za).scatter(-1, i, v.relu()) @ sae.W_dec
                        aux = ((eh - e) ** 2).sum(1).mean() / ((e - e.mean(0)) ** 2).sum(1).mean()
                        loss = loss + AUXK_ALPHA * aux
                else:  # L1 warmed up over the first epoch so fewer latents die early
                    warm = min(1.0, (it + 1 + ep * steps_per_epoch) / steps_per_epoch) if phase == "main" else 1.0
                    loss = loss + warm * l1 * (f * sae.W_dec.norm(dim=1)).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # unit-norm decoder rows (SAELens, sparsify and Gemma Scope all have them)
                    sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            print(f"    {phase} epoch {ep}: mse/||x||^2 {mse.item() / x.shape[1]:.4f} "
                  f"L0 {(f > 0).sum(1).float().mean():.1f}", flush=True)
    with torch.no_grad():  # fold the unit scale s back: f' = f / s, x_hat = f' W_dec + b_dec / s
        sae.b_enc /= s
        sae.b_dec /= s
        sae.threshold /= s
    return sae


# ---------------------------------------------------------------- the three formats
def write_sae(sae, site, fmt, k, held_l0):
    if fmt == "saelens":
        out = SAELENS_DIR
        os.makedirs(out, exist_ok=True)
        cfg = {"architecture": "topk", "d_in": sae.W_dec.shape[1], "d_sae": D_SAE, "dtype": "float32",
               "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
               "reshape_activations": "none",
               "metadata": {"model_name": "saegap-demo-pythia", "hook_name": site, "hook_head_index": None,
                            "prepend_bos": True, "context_size": common.CTX, "dataset_path": "sotu-1790-1998",
                            "sae_lens_version": "6.5.0",
                            "model_from_pretrained_kwargs": {"center_writing_weights": True}},
               "k": k}
        with open(os.path.join(out, "cfg.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        common.save_safetensors(os.path.join(out, "sae_weights.safetensors"),
                                {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec,
                                 "b_dec": sae.b_dec}, "F32")
    elif fmt == "sparsify":
        out = SPARSIFY_DIR
        os.makedirs(out, exist_ok=True)
        d_in = sae.W_dec.shape[1]
        cfg = {"expansion_factor": D_SAE // d_in, "normalize_decoder": True, "num_latents": D_SAE, "k": k,
               "multi_topk": False, "skip_connection": False, "d_in": d_in}
        with open(os.path.join(out, "cfg.json"), "w") as f:
            json.dump(cfg, f)
            f.write("\n")
        common.save_safetensors(os.path.join(out, "sae.safetensors"),
                                {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc,
                                 "W_dec": sae.W_dec, "b_dec": sae.b_dec}, "F32")
    else:  # Gemma Scope params.npz: pre = x @ W_enc + b_enc, no b_dec subtraction, so fold it into b_enc
        shutil.rmtree(GEMMA_WIDTH_DIR, ignore_errors=True)  # the old average_l0_* folder
        out = os.path.join(GEMMA_WIDTH_DIR, f"average_l0_{int(round(held_l0))}")
        os.makedirs(out)
        with torch.no_grad():
            p = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc - sae.b_dec @ sae.W_enc,
                 "b_dec": sae.b_dec, "threshold": sae.threshold}
            np.savez(os.path.join(out, "params.npz"),
                     **{n: np.ascontiguousarray(t.detach().numpy().astype(np.float32)) for n, t in p.items()})
    return out


def load_sae(site, dtype=torch.float32):
    """An SAE exactly as written to disk, in its format's forward."""
    fmt, arch, k, _ = PLAN[site]
    path = sae_dir(site)
    if fmt == "saelens":
        w = common.load_safetensors(os.path.join(path, "sae_weights.safetensors"), dtype)
        sae = SAE(w["W_dec"].shape[1], w["W_dec"].shape[0], arch, k, apply_b_dec=True)
    elif fmt == "sparsify":
        t = common.load_safetensors(os.path.join(path, "sae.safetensors"), dtype)
        w = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        sae = SAE(w["W_dec"].shape[1], w["W_dec"].shape[0], arch, k, apply_b_dec=True)
    else:
        z = np.load(os.path.join(path, "params.npz"))
        w = {n: torch.from_numpy(z[n].astype(np.float64)).to(dtype) for n in z.files}
        sae = SAE(w["W_dec"].shape[1], w["W_dec"].shape[0], arch, k, apply_b_dec=False)
    sae = sae.to(dtype)
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            if n in w:
                getattr(sae, n).copy_(w[n])
    return sae.eval()


def collect(model, rows, sites):
    """Each site's activation in its SAE's basis, at every non-BOS position of rows."""
    acts = {s: [] for s in sites}
    for b in range(0, len(rows), 64):
        idx = torch.from_numpy(rows[b:b + 64]).long()
        h = common.site_acts(model, idx)
        keep = (idx != BOS).reshape(-1)
        for s in sites:
            acts[s].append(h[s].reshape(-1, h[s].shape[-1])[keep])
    return {s: torch.cat(v) for s, v in acts.items()}


def main():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t_all = time.time()
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
    for site, (fmt, arch, k, l1) in PLAN.items():
        if site not in only:
            continue
        t1 = time.time()
        print(f"{site}: {fmt} {arch} ({SITES[site]} activations)", flush=True)
        sae = train_one(xs[site], arch, k, l1)
        _, l0, _ = ev_l0_dead(sae, xh[site])
        path = write_sae(sae, site, fmt, k, l0)
        sae = load_sae(site)  # measure exactly what was written
        ev, l0, dead = ev_l0_dead(sae, xh[site])
        ev32, l032, _ = ev_l0_dead(sae, xh32[site])
        metrics[site] = {"format": fmt, "path": os.path.relpath(path, DEMO), "architecture": arch,
                         "basis": SITES[site], "d_in": sae.W_dec.shape[1], "d_sae": D_SAE, "k": k,
                         "l1_coefficient": l1, "explained_variance": round(ev, 5), "l0": round(l0, 3),
                         "dead_latents": dead, "explained_variance_first32": round(ev32, 5),
                         "l0_first32": round(l032, 3), "train_seconds": round(time.time() - t1, 1)}
        print(f"  held-out EV {ev:.4f}  L0 {l0:.1f}  dead {dead}  ({time.time() - t1:.0f}s) -> {path}", flush=True)
    out = {"measured_on": "jobs/demo-pythia/tokens.npy, all 256 contexts, BOS positions excluded "
                          "(the *_first32 values: the first 32 contexts only)",
           "basis": "centred = Hugging Face value minus its mean over d_model (TransformerLens "
                    "center_writing_weights); raw = the Hugging Face value",
           "explained_variance_definition": "1 - sum_t ||x_t - x_hat_t||^2 / sum_t sum_d (x_td - mean_d)^2",
           "n_train_vectors": int(len(xs[list(PLAN)[0]])), "n_train_contexts": N_TRAIN_CTX, "epochs": EPOCHS,
           "seed": SEED, "wall_seconds": round(time.time() - t_all, 1),
           "sites": {s: metrics[s] for s in PLAN if s in metrics}}
    with open(mpath, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
