#!/usr/bin/python3
"""The PyTorch hooks loop a user would write instead of `saegap run` (issue 14, point 3).

Same job arguments as saegap: a Hugging Face GPT-2 folder, SAELens SAE folder(s), a .npy
token file, the first N contexts, a list of interventions. For every batch of contexts it runs
one clean forward pass (capturing every SAE site), then, for every site and every intervention,
one full forward pass with a hook that replaces the site's activation at the measured tokens,
a full-vocabulary log_softmax and KL(clean || intervened) per token; it prints the wall time,
tokens/s and the mean KL per site and intervention (over the measured tokens: every token that
is not the model's bos_token_id, saegap's default `--bos exclude`, all positions incl. the last).

The GPT-2 is a plain torch module written here from model.safetensors (Hugging Face's Conv1D
layout, x @ W + b). The site is replaced in the TransformerLens basis SAELens loads the model
with for that SAE (tests/python/tl_reference.py `saelens_flags`, docs/basis.md): residual
stream sites minus their mean over d_model when center_writing_weights is on (the mean is
added back after the replacement), attn.hook_z minus b_V (+ ln_1.bias @ W_V with fold_ln) when
fold_value_biases is on, mlp.hook_post as is. eps_random (and theta_random*) draw saegap's
Philox normals (tests/python/random_reference.py: key (seed, site index, intervention,
context, position, sample)), so they agree with saegap token by token.

Refuses to time (exit 2) when torch's BLAS is the reference BLAS: Debian's torch calls whatever
libblas.so.3 points at (env/setup-bench-debian.sh selects BLIS).
With --compare RESULT.h5 (a saegap result of the same job) prints both mean KLs per site and
intervention and exits 1 when any differs by more than --rtol (default 1e-3) relative.

  /usr/bin/python3 bench/torch_loop.py --model M --sae S --tokens T.npy --contexts N \
      --interventions sae,eps_random,zero_ablation --threads 2 [--batch B] [--compare R.h5]
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

SUPPORTED = ("sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random",
             "theta_random_true_norm", "zero_ablation")
RESID = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
         "hook_attn_out", "hook_mlp_out")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sae", action="append", required=True,
                    help="SAELens folder (cfg.json + sae_weights.safetensors) or a folder of them; repeatable")
    ap.add_argument("--tokens", required=True, help=".npy [n, ctx]")
    ap.add_argument("--contexts", type=int, default=None, help="use only the first N contexts")
    ap.add_argument("--interventions", default="sae,eps_random,zero_ablation",
                    help="comma list from " + ",".join(SUPPORTED))
    ap.add_argument("--threads", "--threads-per-rank", dest="threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4, help="contexts per forward pass (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bos", choices=("exclude", "include"), default="exclude")
    ap.add_argument("--basis", choices=("processed", "raw"), default=None,
                    help="override the basis every SAE's cfg implies (as saegap's --basis)")
    ap.add_argument("--compare", metavar="RESULT.h5")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--allow-model-mismatch", action="store_true", help="accepted for saegap's command line; ignored")
    ap.add_argument("--examples", type=int, default=0, help="accepted for saegap's command line; ignored")
    a = ap.parse_args()
    ivs = [s for s in a.interventions.split(",") if s]
    bad = [s for s in ivs if s not in SUPPORTED]
    if bad:
        ap.error("unsupported intervention(s) %s (supported: %s)" % (",".join(bad), ",".join(SUPPORTED)))
    a.ivs = ivs
    return a


ARGS = parse_args()
# BLIS (OpenMP) and OpenBLAS read their thread count from the environment when first used
for v in ("OMP_NUM_THREADS", "BLIS_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[v] = str(ARGS.threads)


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


# The same BLIS kernels saegap runs (src/gemm.c, gemm_select_kernels): BLIS 0.9 does not know
# CPUs newer than its release and falls back to its 'generic' kernels (5x slower on AMD Zen 4);
# on a CPU with AVX-512 F/DQ/BW/VL saegap selects 'skx', number 0 of BLIS 0.9's arch_t. Without
# this the loop would run on slower kernels than saegap: a straw man.
if "BLIS_ARCH_TYPE" not in os.environ and {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu_flags():
    os.environ["BLIS_ARCH_TYPE"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import random_reference as rref  # noqa: E402  (saegap's Philox stream, reproduced in NumPy)
import run_reference as rr  # noqa: E402      (SAELens cfg parsing: generations, architectures)
import tl_reference as tl  # noqa: E402       (SAELens's basis rule)


# ------------------------------------------------------------------ BLAS check

def blas_in_use():
    """-> (verdict 'ok' | 'reference' | 'unknown', description)."""
    a = torch.randn(64, 64)
    _ = a @ a  # make sure the BLAS is loaded and used
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1] if len(line.split()) >= 6 else ""
            base = os.path.basename(p)
            if any(s in base for s in ("libblas", "libblis", "libopenblas", "libmkl")):
                libs.add(os.path.realpath(p))
    cfg = torch.__config__.show()
    desc = ", ".join(sorted(libs)) or "no BLAS library mapped"
    if any("/blas/" in p or os.path.basename(os.path.dirname(p)) == "blas" for p in libs if "libblas" in p):
        return "reference", desc
    if any(s in p for p in libs for s in ("blis", "openblas", "mkl")):
        return "ok", desc
    if "BLAS_INFO=mkl" in cfg or "BLAS_INFO=open" in cfg:
        return "ok", desc + " (" + cfg.split("BLAS_INFO=")[1].split(",")[0] + " built in)"
    return "unknown", desc


# ------------------------------------------------------------------ loading

_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_, "I8": np.int8, "I16": np.int16}


def load_safetensors(path):
    """{name: float32 torch tensor} (F32/F16/BF16/F64 converted; other dtypes skipped)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = data[a:b]
        dt = info["dtype"]
        if dt == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in ("F32", "F16", "F64"):
            arr = np.frombuffer(buf, dtype=np.dtype(_ST_DTYPES[dt]).newbyteorder("<")).astype(np.float32)
        else:
            continue
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out


class GPT2(torch.nn.Module):
    """GPT-2 forward from Hugging Face tensors, with TransformerLens hook points.

    forward(tokens [B, T], hooks {name: fn(x) -> x}) -> logits [B, T, V]."""

    def __init__(self, model_dir):
        super().__init__()
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        c = self.config
        w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
        w = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in w.items()}
        self.w = w
        self.L, self.H, self.D = int(c["n_layer"]), int(c["n_head"]), int(c["n_embd"])
        self.dh = self.D // self.H
        self.eps = float(c.get("layer_norm_epsilon", 1e-5))
        self.bos = int(c.get("bos_token_id", 50256))
        act = c.get("activation_function", "gelu_new")
        if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            self.act = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
        elif act == "gelu":
            self.act = F.gelu
        elif act == "relu":
            self.act = F.relu
        else:
            raise SystemExit("torch_loop: activation_function %r not supported" % act)
        self.wte = w["wte.weight"]
        self.unembed = self.wte.t().contiguous() if "lm_head.weight" not in w else w["lm_head.weight"].t().contiguous()

    def ln(self, x, p):
        return F.layer_norm(x, (self.D,), self.w[p + ".weight"], self.w[p + ".bias"], self.eps)

    def forward(self, tokens, hooks):
        w, H, dh = self.w, self.H, self.dh
        B, T = tokens.shape

        def hp(name, x):
            fn = hooks.get(name)
            return x if fn is None else fn(x)

        embed = hp("hook_embed", self.wte[tokens])
        pos = hp("hook_pos_embed", w["wpe.weight"][:T].unsqueeze(0).expand(B, T, self.D))
        resid = embed + pos
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        for l in range(self.L):
            p = "h.%d." % l
            resid = hp("blocks.%d.hook_resid_pre" % l, resid)
            x = self.ln(resid, p + "ln_1")
            qkv = torch.addmm(w[p + "attn.c_attn.bias"], x.reshape(B * T, -1), w[p + "attn.c_attn.weight"])
            q, k, v = qkv.view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)       # [B, H, T, dh] each
            s = torch.matmul(q, k.transpose(-1, -2)) / (dh ** 0.5)
            s = s.masked_fill(~mask, float("-inf"))
            z = torch.matmul(torch.softmax(s, -1), v)                        # [B, H, T, dh]
            z = hp("blocks.%d.attn.hook_z" % l, z.transpose(1, 2).reshape(B, T, H * dh))
            attn_out = torch.addmm(w[p + "attn.c_proj.bias"], z.reshape(B * T, -1),
                                   w[p + "attn.c_proj.weight"]).view(B, T, -1)
            attn_out = hp("blocks.%d.hook_attn_out" % l, attn_out)
            resid = hp("blocks.%d.hook_resid_mid" % l, resid + attn_out)
            x = self.ln(resid, p + "ln_2")
            h = self.act(torch.addmm(w[p + "mlp.c_fc.bias"], x.reshape(B * T, -1), w[p + "mlp.c_fc.weight"]))
            h = hp("blocks.%d.mlp.hook_post" % l, h.view(B, T, -1))
            mlp_out = torch.addmm(w[p + "mlp.c_proj.bias"], h.reshape(B * T, -1),
                                  w[p + "mlp.c_proj.weight"]).view(B, T, -1)
            mlp_out = hp("blocks.%d.hook_mlp_out" % l, mlp_out)
            resid = hp("blocks.%d.hook_resid_post" % l, resid + mlp_out)
        x = self.ln(resid, "ln_f")
        return torch.matmul(x.reshape(B * T, -1), self.unembed).view(B, T, -1)


class SAE:
    """SAELens SAE (standard, jumprelu, topk, gated; normalisation none, constant_norm_rescale,
    layer_norm) in float32 torch."""

    def __init__(self, d):
        with open(os.path.join(d, "cfg.json")) as f:
            self.cfg = json.load(f)
        self.desc = rr.parse_sae_cfg(self.cfg)
        self.site = self.desc["hook"]
        self.dir = d
        if self.desc["normalize"] == "expected_average_only_in":
            raise SystemExit("torch_loop: %s: expected_average_only_in is not supported here" % d)
        self.p = load_safetensors(os.path.join(d, "sae_weights.safetensors"))
        self.dec_norm = self.p["W_dec"].norm(dim=-1)
        self.flags = tl.saelens_flags(self.cfg)
        if ARGS.basis is not None:
            self.flags = {f: ARGS.basis == "processed" for f in tl.FLAGS}

    def __call__(self, x):
        """x [..., d_in] in the SAE's basis -> x_hat."""
        d, P = self.desc, self.p
        mode = d["normalize"]
        if mode == "constant_norm_rescale":
            fac = (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True)
            xn, undo = x * fac, (lambda y: y / fac)
        elif mode == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            std = (x - mu).std(-1, keepdim=True)
            xn, undo = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
        else:
            xn, undo = x, (lambda y: y)
        xin = xn - P["b_dec"] if d["apply_b_dec_to_input"] else xn
        arch = d["architecture"]
        if arch == "gated":
            gate = xin @ P["W_enc"] + P["b_gate"]
            mag = xin @ (P["W_enc"] * P["r_mag"].exp()) + P["b_mag"]
            f = (gate > 0).to(x.dtype) * F.relu(mag)
        else:
            z = xin @ P["W_enc"] + P["b_enc"]
            if arch == "standard":
                f = F.relu(z)
            elif arch == "jumprelu":
                f = F.relu(z * (z > P["threshold"]))
            else:
                if d["rescale_acts_by_decoder_norm"]:
                    z = z * self.dec_norm
                v, i = z.topk(d["k"], dim=-1)
                f = torch.zeros_like(z).scatter_(-1, i, F.relu(v))
        if arch == "topk" and d["rescale_acts_by_decoder_norm"]:
            f = f / self.dec_norm
        if "scaling_factor" in P:
            f = f * P["scaling_factor"]
        return undo(f @ P["W_dec"] + P["b_dec"])


def sae_dirs(paths):
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "cfg.json")):
            out.append(p)
        else:
            subs = sorted(os.path.join(p, s) for s in os.listdir(p)
                          if os.path.isfile(os.path.join(p, s, "cfg.json")))
            if not subs:
                raise SystemExit("torch_loop: %s holds no SAE (cfg.json)" % p)
            out.extend(subs)
    return out


# ------------------------------------------------------------------ the site in the SAE's basis

def basis_maps(model, sae):
    """(to_basis(x_hf) -> (x_b, state), from_basis(y_b, state) -> y_hf)."""
    site, fl = sae.site, sae.flags
    last = site.split(".")[-1]
    if last in RESID and not site.endswith("attn.hook_z"):
        if fl["center_writing_weights"]:
            def to(x):
                mu = x.mean(-1, keepdim=True)
                return x - mu, mu
            return to, (lambda y, mu: y + mu)
    elif site.endswith("attn.hook_z"):
        if fl["fold_value_biases"]:
            l = int(site.split(".")[1])
            D = model.D
            bias = model.w["h.%d.attn.c_attn.bias" % l][2 * D:].clone()
            if fl["fold_ln"]:
                bias = bias + (model.w["h.%d.ln_1.bias" % l].double()
                               @ model.w["h.%d.attn.c_attn.weight" % l][:, 2 * D:].double()).float()
            return (lambda x: (x - bias, None)), (lambda y, _: y + bias)
    elif not site.endswith("mlp.hook_post"):
        raise SystemExit("torch_loop: site %s not supported" % site)
    return (lambda x: (x, None)), (lambda y, _: y)


def _unit(g):
    return g / g.norm(dim=-1, keepdim=True)


def replacement(iv, x, x_hat, draw):
    if iv == "sae":
        return x_hat
    if iv == "zero_ablation":
        return torch.zeros_like(x)
    nx, nh = x.norm(dim=-1, keepdim=True), x_hat.norm(dim=-1, keepdim=True)
    if iv == "norm_corrected_sae":
        return torch.where(nh > 0, x_hat * nx / torch.where(nh > 0, nh, torch.ones_like(nh)), x_hat)
    if iv == "sae_norm":
        return torch.where(nx > 0, x * nh / torch.where(nx > 0, nx, torch.ones_like(nx)), x)
    if iv == "eps_random":
        return x + (x_hat - x).norm(dim=-1, keepdim=True) * _unit(draw(iv))
    if iv in ("theta_random", "theta_random_true_norm"):
        ok = (nx > 0) & (nh > 0)
        c = torch.where(ok, (x * x_hat).sum(-1, keepdim=True) / torch.where(ok, nx * nh, torch.ones_like(nx)),
                        torch.ones_like(nx)).clamp(-1, 1)
        u = torch.where(nx > 0, x / torch.where(nx > 0, nx, torch.ones_like(nx)), torch.zeros_like(x))
        g = draw(iv)
        o = _unit(g - (g * u).sum(-1, keepdim=True) * u)
        return (c * u + (1 - c * c).sqrt() * o) * (nx if iv == "theta_random_true_norm" else nh)
    raise ValueError(iv)


# ------------------------------------------------------------------ main

def main():
    a = ARGS
    verdict, desc = blas_in_use()
    if verdict != "ok":
        print("torch_loop: refusing to time: torch's BLAS is %s (%s). Select BLIS or OpenBLAS: "
              "bash env/setup-bench-debian.sh" % ("the reference BLAS" if verdict == "reference"
                                                   else "not identifiable", desc), file=sys.stderr)
        return 2
    print("torch_loop: BLAS %s, BLIS_ARCH_TYPE=%s" % (desc, os.environ.get("BLIS_ARCH_TYPE", "(unset)")))
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    t_start = time.perf_counter()
    model = GPT2(a.model)
    saes = [SAE(d) for d in sae_dirs(a.sae)]
    if len({s.site for s in saes}) != len(saes):
        raise SystemExit("torch_loop: two SAEs at the same site")
    tokens = np.load(a.tokens)
    if tokens.ndim != 2:
        raise SystemExit("torch_loop: %s: expected [n, ctx], got %s" % (a.tokens, tokens.shape))
    n = tokens.shape[0] if a.contexts is None else min(a.contexts, tokens.shape[0])
    tokens = torch.from_numpy(tokens[:n].astype(np.int64))
    T = tokens.shape[1]
    maps = {s.site: basis_maps(model, s) for s in saes}
    sums = {s.site: {iv: 0.0 for iv in a.ivs} for s in saes}
    count = 0
    print("torch_loop: torch %s, %d threads, BLAS %s; %d contexts x %d tokens, %d sites x %d interventions, "
          "batches of %d contexts" % (torch.__version__, torch.get_num_threads(), desc, n, T, len(saes),
                                      len(a.ivs), a.batch), flush=True)
    t_loop = time.perf_counter()
    for c0 in range(0, n, a.batch):
        tok = tokens[c0:c0 + a.batch]
        B = tok.shape[0]
        meas = (tok != model.bos) if a.bos == "exclude" else torch.ones_like(tok, dtype=torch.bool)
        mcol = meas.unsqueeze(-1)
        count += int(meas.sum())
        cache = {}

        def capture(name):
            def fn(x):
                cache[name] = x
                return x
            return fn

        lp_clean = torch.log_softmax(model(tok, {s.site: capture(s.site) for s in saes}), -1)
        p_clean = lp_clean.exp()
        ctx_idx = np.broadcast_to((c0 + np.arange(B))[:, None], (B, T))
        pos_idx = np.broadcast_to(np.arange(T)[None, :], (B, T))
        for s in saes:
            to, back = maps[s.site]
            x_hf = cache[s.site]
            x, st = to(x_hf)
            x_hat = s(x)
            sid = rref.site_index(s.site)
            for iv in a.ivs:
                def draw(name, d=x.shape[-1]):
                    g = rref.normal_stream(a.seed, sid, rref.IV_ID[name], ctx_idx, pos_idx, 0, d)
                    return torch.from_numpy(g.astype(np.float32))

                rep = torch.where(mcol, back(replacement(iv, x, x_hat, draw), st), x_hf)
                lp = torch.log_softmax(model(tok, {s.site: (lambda _x, rep=rep: rep)}), -1)
                kl = (p_clean * (lp_clean - lp)).sum(-1)
                sums[s.site][iv] += float(kl[meas].double().sum())
    t_end = time.perf_counter()
    loop = t_end - t_loop
    passes = (1 + len(saes) * len(a.ivs)) * ((n + a.batch - 1) // a.batch)
    # the loop's matrix FLOPs, counted as saegap plan counts its own (src/plan.c): per token and
    # full forward L (24 D^2 + 4 T D) + 2 D V; per token and SAE 4 D d_sae (encode + decode)
    D, L, V = model.D, model.L, model.unembed.shape[1]
    fwd = n * T * (L * (24 * D * D + 4 * T * D) + 2 * D * V)
    flops = (1 + len(saes) * len(a.ivs)) * fwd + sum(n * T * 4 * D * s.p["W_enc"].shape[1] for s in saes)
    print("torch_loop: loop %.2f s (%d forward passes), total incl. loading %.2f s, %.1f tokens/s (loop)"
          % (loop, passes, t_end - t_start, n * T / loop))
    print("torch_loop: FLOPs %.3g (%d full forwards per context + %d SAEs), %.1f GFLOP/s in the loop"
          % (flops, 1 + len(saes) * len(a.ivs), len(saes), flops / loop / 1e9))
    means = {site: {iv: sums[site][iv] / count for iv in a.ivs} for site in sums}
    for site in means:
        for iv in a.ivs:
            print("  %-32s %-22s mean_kl %.6e" % (site, iv, means[site][iv]))
    if a.compare:
        return compare(a.compare, means, a, n)
    return 0


def compare(path, means, a, n):
    import h5py
    worst, bad = 0.0, 0
    with h5py.File(path, "r") as f:
        for key, want in (("n_contexts", n), ("seed", a.seed), ("bos", a.bos)):
            got = f.attrs.get(key)
            if isinstance(got, bytes):
                got = got.decode()
            if got is not None and str(np.asarray(got).item() if not isinstance(got, str) else got) != str(want):
                print("torch_loop: warning: %s has %s = %s, this run %s" % (path, key, got, want))
        print("torch_loop: mean KL, saegap (%s) vs torch, relative difference:" % path)
        for site in means:
            for iv in a.ivs:
                g = f["sites"][site].attrs.get("mean_kl_" + iv) if site in f["sites"] else None
                t = means[site][iv]
                if g is None:
                    print("  %-32s %-22s missing in %s" % (site, iv, path))
                    bad += 1
                    continue
                g = float(g)
                rel = abs(t - g) / abs(g) if g != 0 else (0.0 if t == 0 else float("inf"))
                worst = max(worst, rel)
                flag = "" if rel <= a.rtol else "   FAIL"
                bad += rel > a.rtol
                print("  %-32s %-22s saegap %.6e  torch %.6e  rel %.2e%s" % (site, iv, g, t, rel, flag))
    print("torch_loop: compare: max relative difference %.2e, %s (tolerance %g)"
          % (worst, "FAIL" if bad else "ok", a.rtol))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
