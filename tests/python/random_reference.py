"""Float64 NumPy reference for saegap's RANDOM interventions.

Extends run_reference.py (the deterministic interventions) to eps_random,
theta_random, theta_random_true_norm, latent_noise, sae_eps_random and
cov_random, so that their per-token KL / CE can be compared with saegap's
exactly as the deterministic ones are (tests/python/test_random_reference.py).

Pieces, written from published algorithms and saegap's documented stream
layout, not from saegap's C code:

* Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as
  easy as 1, 2, 3", SC 2011; Random123).  State: counter (c0, c1, c2, c3) and
  key (k0, k1), 32-bit words.  One round, with M0 = 0xD2511F53 and
  M1 = 0xCD9E8D57, hi/lo the upper/lower 32 bits of the 64-bit product:
      (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2),
                           hi(M0 c0) ^ c3 ^ k1, lo(M0 c0))
  followed, between rounds, by the Weyl key schedule
      k0 += 0x9E3779B9, k1 += 0xBB67AE85   (mod 2^32).
  `philox4x32` (NumPy, vectorised over counters) and `philox4x32_scalar`
  (plain Python integers) are both checked against Random123's known-answer
  vectors (`KAT_VECTORS`, the file tests/kat_vectors of the Random123
  distribution).

* saegap's normal stream (include/rng.h), `normal_stream`:
      key     = (seed mod 2^32, seed >> 32)
      counter = (j, context, position | sample << 16, site_id | intervention << 24)
  for the pair index j = 0, 1, ...; the output words v0..v3 of call j give
      a = v0 << 32 | v1,  b = v2 << 32 | v3          (64-bit)
      u1 = ((a >> 11) + 0.5) 2^-53,  u2 = ((b >> 11) + 0.5) 2^-53   in (0, 1)
      g[2j]   = sqrt(-2 ln u1) cos(2 pi u2)
      g[2j+1] = sqrt(-2 ln u1) sin(2 pi u2)          (dropped when n is odd)
  site_id = the site's canonical index (hook_embed 0, hook_pos_embed 1, then
  per layer L: 2 + 7 L + k for k = resid_pre, attn.hook_z, hook_attn_out,
  hook_resid_mid, mlp.hook_post, hook_mlp_out, hook_resid_post);
  intervention = the index in CONTRACT.md's order (run_reference.ALL_INTERVENTIONS).

* The replacements of docs/output-schema.md (`eps_random`, `theta_random`,
  `cov_random`, `latent_noise_code`, `sae_eps_random`) on rows of float64.

* `reference_random_run`: per-token KL / CE of the random interventions, in
  the layout `saegap run` writes ([n, T] or [n, W], plus a trailing sample
  axis when samples > 1).

Stream facts that docs/output-schema.md and include/rng.h do not state and
that were taken from saegap's C code (src/rng.c, src/interventions.c,
src/sweep.c) as the specification (see STREAM_FACTS_FROM_C):
  - which of u1, u2 gives the radius (u1, from v0 v1) and the angle, and that
    g[2j] takes the cosine;
  - every random intervention draws from the stream keyed by its OWN enum
    index; sae_eps_random's x_hat' is the latent_noise draw (intervention 8,
    one normal per latent index 0..d_sae-1, drawn whatever the support), and
    its direction a second draw keyed by sae_eps_random (9), d_in normals;
  - latent_noise / cov_random / eps_random / theta_* draw d (latent_noise:
    d_sae) normals, elements 0..n-1 of their stream;
  - `context` is the global context index (row of the token file),
    `position` the token's position in its context, at scope all as at scope
    position (where only position P is intervened, so only P is drawn), and
    `sample` runs 0..S-1 (0 when --samples is 1);
  - theta_*: c is clamped to [-1, 1]; c = 1 and u = 0 when ||x|| = 0 (or
    ||x_hat|| = 0 for c); latent_noise decodes f' with the normalisation state
    of the clean row (layer_norm mean/std, constant_norm_rescale factor).
"""


import numpy as np

import run_reference as rr
from gpt2_reference import load_model

__all__ = [
    "PHILOX_M", "PHILOX_W", "KAT_VECTORS", "philox4x32", "philox4x32_scalar",
    "IV_ID", "site_index", "normal_stream", "unit", "eps_random", "theta_random",
    "cov_random", "cov_cholesky", "latent_noise_code", "sae_decode", "sae_eps_random",
    "random_replacements", "reference_random_run", "STREAM_FACTS_FROM_C",
]

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
TWO_PI = 6.283185307179586  # the double nearest 2 pi

# Random123 tests/kat_vectors, philox4x32 lines: (rounds, ctr[4], key[2], expected[4]).
KAT_VECTORS = (
    (7, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48)),
    (7, (0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662)),
    (7, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a)),
    (10, (0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    (10, (0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    (10, (0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
)

# Intervention enum (CONTRACT.md order); the index keys the random stream.
IV_ID = {name: i for i, name in enumerate(rr.ALL_INTERVENTIONS)}
assert IV_ID["eps_random"] == 3 and IV_ID["latent_noise"] == 8 and IV_ID["cov_random"] == 10

STREAM_FACTS_FROM_C = (
    "Box-Muller: u1 (from v0,v1) gives the radius, u2 (from v2,v3) the angle; g[2j] = r cos, g[2j+1] = r sin",
    "each random intervention keys its draw with its own enum index (theta_random 4, "
    "theta_random_true_norm 5, ...)",
    "sae_eps_random: x_hat' from the latent_noise draw (id 8, d_sae normals, one per latent index); "
    "direction from its own draw (id 9, d_in normals)",
    "context = global context index, position = the token's position (also at scope all), "
    "sample = 0..S-1",
    "theta: c clamped to [-1,1]; c = 1 if ||x|| or ||x_hat|| is 0; u = 0 if ||x|| = 0",
    "latent_noise decodes f' with the clean row's normalisation state",
)


# ------------------------------------------------------------------ Philox4x32

def philox4x32_scalar(ctr, key, rounds=10):
    """Philox4x32-R on one counter, plain Python integers."""
    c0, c1, c2, c3 = (int(v) & MASK32 for v in ctr)
    k0, k1 = (int(v) & MASK32 for v in key)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W[0]) & MASK32
            k1 = (k1 + PHILOX_W[1]) & MASK32
        p0 = PHILOX_M[0] * c0
        p1 = PHILOX_M[1] * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32,
                          (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
    return (c0, c1, c2, c3)


def philox4x32(ctr, key, rounds=10):
    """Philox4x32-R, vectorised: ctr integer array [..., 4] (values < 2^32),
    key (k0, k1) -> uint32 array [..., 4]."""
    c = np.asarray(ctr, dtype=np.uint64) & np.uint64(MASK32)
    c0, c1, c2, c3 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    k0, k1 = int(key[0]) & MASK32, int(key[1]) & MASK32
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    s32, lo = np.uint64(32), np.uint64(MASK32)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W[0]) & MASK32
            k1 = (k1 + PHILOX_W[1]) & MASK32
        p0 = m0 * c0  # < 2^64: exact in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> s32) ^ c1 ^ np.uint64(k0), p1 & lo,
                          (p0 >> s32) ^ c3 ^ np.uint64(k1), p0 & lo)
    return np.stack([c0, c1, c2, c3], -1).astype(np.uint32)


# ------------------------------------------------------------------ saegap's normal stream

_PER_LAYER = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
              "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


def site_index(hook):
    """Canonical index of a TransformerLens hook name (include/sites.h site_at order)."""
    if hook == "hook_embed":
        return 0
    if hook == "hook_pos_embed":
        return 1
    parts = hook.split(".", 2)
    assert parts[0] == "blocks", hook
    return 2 + 7 * int(parts[1]) + _PER_LAYER.index(parts[2])


def _uniform53(hi, lo):
    """((a >> 11) + 0.5) 2^-53 for a = hi << 32 | lo (exact in float64)."""
    a = (hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)
    return ((a >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def normal_stream(seed, site_id, intervention, context, position, sample, n):
    """Elements [0, n) of saegap's N(0,1) stream for each row.

    context, position: integer arrays of the same shape R (or scalars);
    sample, site_id, intervention: scalars.  Returns float64 [*R, n]."""
    context = np.asarray(context, dtype=np.uint64)
    position = np.asarray(position, dtype=np.uint64)
    context, position = np.broadcast_arrays(context, position)
    assert int(sample) < 1 << 16 and (position < (1 << 16)).all()
    assert int(site_id) < 1 << 24 and int(intervention) < 256
    npair = (n + 1) // 2
    shape = context.shape + (npair, 4)
    ctr = np.empty(shape, dtype=np.uint64)
    ctr[..., 0] = np.arange(npair, dtype=np.uint64)
    ctr[..., 1] = context[..., None]
    ctr[..., 2] = (position | np.uint64(int(sample) << 16))[..., None]
    ctr[..., 3] = np.uint64(int(site_id) | (int(intervention) << 24))
    seed = int(seed)
    v = philox4x32(ctr, (seed & MASK32, (seed >> 32) & MASK32))
    u1 = _uniform53(v[..., 0], v[..., 1])
    u2 = _uniform53(v[..., 2], v[..., 3])
    rad = np.sqrt(-2.0 * np.log(u1))
    th = TWO_PI * u2
    g = np.empty(context.shape + (2 * npair,))
    g[..., 0::2] = rad * np.cos(th)
    g[..., 1::2] = rad * np.sin(th)
    return g[..., :n]


# ------------------------------------------------------------------ replacements (rows [N, d], float64)

def _norm(v):
    return np.linalg.norm(v, axis=-1, keepdims=True)


def unit(g):
    return g / _norm(g)


def eps_random(x, x_hat, g):
    """x + eps g/||g||, eps = ||x_hat - x||."""
    return x + _norm(x_hat - x) * unit(g)


def theta_random(x, x_hat, g, true_norm=False):
    """(c u + sqrt(1 - c^2) o) * (||x|| if true_norm else ||x_hat||), u = x/||x||,
    c = cos(x, x_hat) clamped to [-1, 1], o = normalised g - (g.u) u."""
    nx, nh = _norm(x), _norm(x_hat)
    ok = (nx > 0) & (nh > 0)
    c = np.where(ok, (x * x_hat).sum(-1, keepdims=True) / np.where(ok, nx * nh, 1.0), 1.0)
    c = np.clip(c, -1.0, 1.0)
    u = np.where(nx > 0, x / np.where(nx > 0, nx, 1.0), 0.0)
    o = g - (g * u).sum(-1, keepdims=True) * u
    o = o / _norm(o)
    return (c * u + np.sqrt(1.0 - c * c) * o) * (nx if true_norm else nh)


def cov_cholesky(x_measured, ridge=0.01):
    """Lower L with L L^T = Sigma + ridge I, Sigma = covariance (divisor N) of the rows."""
    xm = np.asarray(x_measured, dtype=np.float64)
    xc = xm - xm.mean(0)
    sigma = xc.T @ xc / xm.shape[0]
    return np.linalg.cholesky(sigma + ridge * np.eye(sigma.shape[0]))


def cov_random(x, x_hat, g, L):
    """x + eps (L g)/||L g||."""
    return x + _norm(x_hat - x) * unit(g @ L.T)


def latent_noise_code(f, g, sigma):
    """f'_i = f_i exp(sigma g_i) where f_i > 0, else 0."""
    return np.where(f > 0, f * np.exp(sigma * g), 0.0)


def sae_decode(cfg, params, x, f_new, norm_scaling_factor=None):
    """x_hat of a code f_new (same layout as sae_parts' f), with the
    normalisation of the clean input x undone (SAELens decode)."""
    d = rr.parse_sae_cfg(cfg)
    _, undo = rr._norm_in(d["normalize"], np.asarray(x, dtype=np.float64), norm_scaling_factor)
    h = np.asarray(f_new, dtype=np.float64)
    if d["architecture"] == "topk" and d["rescale_acts_by_decoder_norm"]:
        h = h / np.linalg.norm(params["W_dec"], axis=-1)
    if "scaling_factor" in params:
        h = h * params["scaling_factor"]
    return undo(h @ params["W_dec"] + params["b_dec"])


def sae_eps_random(x_hat, x_hat_prime, g):
    """x_hat + ||x_hat' - x_hat|| g/||g||."""
    return x_hat + _norm(x_hat_prime - x_hat) * unit(g)


def random_replacements(iv, x, x_hat, f, draw, L=None, decode=None, sigma=0.1):
    """Replacement of x (rows [..., d]) under random intervention iv.

    draw(iv_name, n) -> normals [..., n] of that intervention's stream for
    these rows; decode(f') -> x_hat' (rows); L: Cholesky factor (cov_random)."""
    d = x.shape[-1]
    if iv == "eps_random":
        return eps_random(x, x_hat, draw("eps_random", d))
    if iv in ("theta_random", "theta_random_true_norm"):
        return theta_random(x, x_hat, draw(iv, d), true_norm=(iv == "theta_random_true_norm"))
    if iv == "cov_random":
        return cov_random(x, x_hat, draw("cov_random", d), L)
    if iv in ("latent_noise", "sae_eps_random"):
        fp = latent_noise_code(f, draw("latent_noise", f.shape[-1]), sigma)
        xp = decode(fp)
        if iv == "latent_noise":
            return xp
        return sae_eps_random(x_hat, xp, draw("sae_eps_random", d))
    raise ValueError("not a random intervention: %r" % iv)


# ------------------------------------------------------------------ the run

def reference_random_run(model_dir, sae_dirs, tokens, seed=0, bos="exclude", interventions=rr.RANDOM,
                         samples=1, latent_noise_sigma=0.1, norm_scaling_factor=None, basis=None,
                         scope="all", position=None, window=16, model=None, context0=0, forward=None):
    """Per-token KL / CE of the random interventions, as `saegap run --seed
    seed --samples samples` writes them.

    Returns {"measured", "clean_ce", "sites": {site: {"kl": {iv: arr},
    "ce": {iv: arr}, "attrs": {"mean_kl_<iv>", "mean_ce_<iv>"}, "chol", ...}}}
    with arr [n, T] (scope all) or [n, window] (scope position), plus a
    trailing axis of `samples` when samples > 1.  context0: global index of
    the first row of `tokens`.  forward: None (run_reference's forward in the
    basis of each cfg or `basis`), or forward(sae_dir, site, patch_fn, capture)
    -> log-probs, a forward pass whose hook values are the SAE's basis (e.g.
    tl_reference.TLModel with SAELens's flags)."""
    if model is None:
        config, params = load_model(model_dir)
    else:
        config, params = model
    tokens = np.asarray(tokens, dtype=np.int64)
    n, T = tokens.shape
    meas = rr.measured_mask(config, tokens, bos)
    ce_mask = meas.copy()
    ce_mask[:, -1] = False
    lp_clean = rr.forward_with_patch(config, params, tokens)
    clean_ce = np.where(ce_mask, rr._next_ce(lp_clean, tokens), np.nan)
    ctx_idx = np.broadcast_to((context0 + np.arange(n))[:, None], (n, T))
    pos_idx = np.broadcast_to(np.arange(T)[None, :], (n, T))
    if scope == "all":
        pmask = meas
        sl = slice(0, T)
    else:
        pmask = np.zeros_like(meas)
        pmask[:, position] = meas[:, position]
        sl = slice(position, position + window)
    res = {"measured": meas, "clean_ce": clean_ce, "sites": {}}
    for sdir in sae_dirs:
        cfg, sp = rr.load_sae(sdir)
        desc = rr.parse_sae_cfg(cfg)
        site = desc["hook"]
        b = rr.sae_basis(cfg, basis)
        nsf = norm_scaling_factor.get(site) if isinstance(norm_scaling_factor, dict) else norm_scaling_factor
        sid = site_index(site)
        if forward is None:
            def fwd(site_, patch, capture, b=b):
                return rr.forward_with_patch(config, params, tokens, site_, b, patch, capture=capture)
        else:
            def fwd(site_, patch, capture, sdir=sdir):
                return forward(sdir, site_, patch, capture)
        cap = {}
        fwd(site, None, cap)
        x = cap[site]
        parts = rr.sae_parts(cfg, sp, x, nsf)
        f, x_hat = parts["f"], parts["x_hat"]
        L = cov_cholesky(x[meas]) if "cov_random" in interventions else None
        r = {"basis": b, "desc": desc, "x": x, "x_hat": x_hat, "f": f, "chol": L, "kl": {}, "ce": {},
             "attrs": {}, "site_id": sid}

        def decode(fp, x=x, cfg=cfg, sp=sp, nsf=nsf):
            return sae_decode(cfg, sp, x, fp, nsf)

        for iv in interventions:
            kls, ces = [], []
            for s in range(samples):
                def draw(name, m, s=s):
                    return normal_stream(seed, sid, IV_ID[name], ctx_idx, pos_idx, s, m)

                rep = random_replacements(iv, x, x_hat, f, draw, L=L, decode=decode, sigma=latent_noise_sigma)

                def patch(xb, rep=rep):
                    return np.where(pmask[..., None], rep, xb)

                lp = fwd(site, patch, None)
                kl = rr.kl_div(lp_clean, lp)
                ce = rr._next_ce(lp, tokens)
                if scope == "all":
                    kls.append(np.where(meas, kl, np.nan))
                    ces.append(np.where(ce_mask, ce, np.nan))
                else:
                    row = meas[:, position][:, None]
                    kls.append(np.where(row & meas[:, sl], kl[:, sl], np.nan))
                    ces.append(np.where(row & ce_mask[:, sl], ce[:, sl], np.nan))
            kl_a = np.stack(kls, -1)
            ce_a = np.stack(ces, -1)
            if samples == 1:
                kl_a, ce_a = kl_a[..., 0], ce_a[..., 0]
            r["kl"][iv], r["ce"][iv] = kl_a, ce_a
            r["attrs"]["mean_kl_" + iv] = float(np.nanmean(kl_a))
            r["attrs"]["mean_ce_" + iv] = float(np.nanmean(ce_a))
        res["sites"][site] = r
    return res
