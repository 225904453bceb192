"""The numbers behind each part of the report, computed from a Result (no plotting, no
text).  Each function returns plain dicts / arrays that figures.py draws and report.py
prints, or raises Skip(reason) when the file does not hold the data it needs; tests call
these functions directly on synthetic files with known answers.
"""

import numpy as np

from analysis import stats

SAE, EPS = "sae", "eps_random"
TOP_TOKENS = 20
MIN_TOKEN_COUNT = 5
HIST_Q = 99.9
N_ZSCORE_EXAMPLES = 6
SCATTER_POINTS = 4000


class Skip(Exception):
    """The file lacks what a section needs; str(self) is the one-line reason."""


def need_ivs(r, *ivs):
    missing = [iv for iv in ivs if iv not in r.interventions]
    if missing:
        raise Skip("intervention%s %s not in the file (run: %s)" % (
            "s" if len(missing) > 1 else "", ", ".join(missing),
            ", ".join(r.interventions) or "none"))


def need_sites(r):
    if not r.sites:
        raise Skip("the file has no /sites")


def focus_site(r, site=None):
    """The site used by single-site figures: `site` if given, else the middle residual-stream
    site (the post's single-layer analyses use layer 6 of GPT-2 small's residual stream), else
    the middle site."""
    if site is not None:
        if site not in r.sites:
            raise ValueError("site %s is not in the file (sites: %s)" % (site, ", ".join(r.sites)))
        return site
    need_sites(r)
    resid = [s for s in r.sites if ".hook_resid_" in s]
    pool = resid or list(r.sites)
    return pool[len(pool) // 2]


def kl_token(r, site, iv):
    """Per-token KL with random draws averaged ([n, C]); Skip when absent."""
    a = r.kl(site, iv, samples="mean")
    if a is None:
        raise Skip(r.missing("sites/%s/kl/%s" % (site, iv)))
    return a


def clean_ce_cols(r):
    """Clean CE at the positions of the KL columns ([n, C]; NaN beyond the context)."""
    ce = r.clean_ce
    if ce is None:
        raise Skip(r.missing("clean/ce"))
    pos = r.kl_positions
    out = np.full((ce.shape[0], pos.size), np.nan)
    ok = pos < ce.shape[1]
    out[:, ok] = ce[:, pos[ok]]
    return out


def ce_diff(r, site, iv):
    """Intervened minus clean next-token CE per token ([n, C])."""
    ce = r.ce(site, iv, samples="mean")
    if ce is None:
        raise Skip(r.missing("sites/%s/ce/%s" % (site, iv)))
    return ce - clean_ce_cols(r)


# ---------------------------------------------------------------------------- headline

def headline(r):
    """Per site: mean KL +- standard error of every intervention, the ratio sae /
    eps_random of mean KL and of mean CE increase with per-context bootstrap 95% CIs, and
    the file's kl_div_score, ce_loss_score, explained_variance, mean_l0."""
    need_sites(r)
    rows = []
    for site in r.sites:
        a = r.site_attrs(site)
        row = {"site": site, "kl": {}, "ratio": None, "ce_ratio": None,
               "kl_div_score": a.get("kl_div_score"), "ce_loss_score": a.get("ce_loss_score"),
               "explained_variance": a.get("explained_variance"), "mean_l0": a.get("mean_l0"),
               "measured_tokens": a.get("measured_tokens")}
        for iv in r.interventions:
            k = r.kl(site, iv, samples="mean")
            if k is not None:
                row["kl"][iv] = stats.mean_se(k)
        if SAE in row["kl"] and EPS in row["kl"]:
            row["ratio"] = stats.ratio_ci(kl_token(r, site, SAE), kl_token(r, site, EPS))
            try:
                d_sae, d_eps = stats.paired(ce_diff(r, site, SAE), ce_diff(r, site, EPS))
            except Skip:
                d_eps = None
            # a ratio of CE increases means nothing when the baseline does not increase CE
            if d_eps is not None and stats.mean_se(d_eps)[0] > 0:
                row["ce_ratio"] = stats.ratio_ci(d_sae, d_eps)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- distributions

def kl_histograms(r):
    """Per site: histograms of per-token KL for sae and eps_random on shared bins, the
    upper tail clamped at the larger of the two 99.9th percentiles."""
    need_sites(r)
    need_ivs(r, SAE, EPS)
    out = {}
    for site in r.sites:
        vals = {iv: stats.finite(kl_token(r, site, iv)) for iv in (SAE, EPS)}
        if not all(v.size for v in vals.values()):
            continue
        top = max(float(np.percentile(v, HIST_Q)) for v in vals.values())
        out[site] = {iv: stats.clamped_histogram(v, q=HIST_Q, upper=top)
                     for iv, v in vals.items()}
    if not out:
        raise Skip("no site has measured KL for both sae and eps_random")
    return out


def ce_differences(r):
    """Per site: histograms of intervened-minus-clean CE for sae and eps_random (shared
    bins, both tails clamped at the 0.1/99.9th percentiles), and for every intervention
    the mean CE increase +- standard error."""
    need_sites(r)
    need_ivs(r, SAE, EPS)
    if r.clean_ce is None:
        raise Skip(r.missing("clean/ce"))
    hists, means = {}, {}
    for site in r.sites:
        means[site] = {}
        for iv in r.interventions:
            if r.ce(site, iv) is not None:
                means[site][iv] = stats.mean_se(ce_diff(r, site, iv))
        d = {iv: stats.finite(ce_diff(r, site, iv)) for iv in (SAE, EPS)}
        if not all(v.size for v in d.values()):
            continue
        lo = min(float(np.percentile(v, 0.1)) for v in d.values())
        hi = max(float(np.percentile(v, HIST_Q)) for v in d.values())
        hists[site] = {iv: stats.two_sided_histogram(v, lo=lo, hi=hi) for iv, v in d.items()}
    if not hists:
        raise Skip("no site has measured CE for both sae and eps_random")
    return {"hist": hists, "means": means}


def kl_by_position(r):
    """Per site and for sae and eps_random: mean KL +- standard error at each context
    position (scope all)."""
    need_sites(r)
    if r.scope == "position":
        raise Skip("the run intervened at one position (scope position): see the window figure")
    need_ivs(r, SAE, EPS)
    pos = r.kl_positions
    out = {}
    for site in r.sites:
        out[site] = {iv: dict(zip(("mean", "se", "n"), stats.column_mean_se(kl_token(r, site, iv))),
                              position=pos) for iv in (SAE, EPS)}
    return out


def window(r):
    """Scope position: per site and intervention, mean KL +- standard error at each
    position of the window after the intervened one."""
    need_sites(r)
    if r.scope != "position":
        raise Skip("the run intervened at every position (scope all), not at a single one")
    pos = r.kl_positions
    out = {"position": r.position, "offsets": pos - r.position, "sites": {}}
    for site in r.sites:
        out["sites"][site] = {}
        for iv in r.interventions:
            k = r.kl(site, iv, samples="mean")
            if k is not None:
                m, se, n = stats.column_mean_se(k)
                out["sites"][site][iv] = {"mean": m, "se": se, "n": n}
    return out


# ---------------------------------------------------------------------------- examples

def examples(r, site, max_examples=4):
    """The intuition figure's data: for up to max_examples example contexts, the clean
    top-25 next-token log-probs and the sae / eps_random log-probs of the same tokens, with
    each intervention's KL at that position."""
    ex = r.examples
    if ex is None:
        raise Skip(r.missing("examples"))
    if site not in ex.sites:
        if not ex.sites:
            raise Skip("/examples has no site groups")
        site = ex.sites[len(ex.sites) // 2]
    ivs = [iv for iv in (SAE, EPS) if iv in ex.interventions(site)]
    if not ivs:
        raise Skip("/examples/%s has neither sae nor eps_random" % site)
    tokens = r.tokens
    items = []
    for k in range(min(len(ex), max_examples)):
        c, p = int(ex.contexts[k]), int(ex.position[k])
        items.append({
            "context": c, "position": p, "ids": ex.token_ids[k],
            "clean": ex.clean_logprobs[k],
            "prefix": tokens[c, max(0, p - 11):p + 1] if tokens is not None and c < len(tokens) else None,
            "iv": {iv: {"logprobs": ex.logprobs(site, iv)[k], "kl": float(ex.kl(site, iv)[k])}
                   for iv in ivs},
        })
    return {"site": site, "items": items}


# ---------------------------------------------------------------------------- gap analyses

def gap(r, site, iv=SAE):
    """Per-token KL gap KL(iv) - KL(eps_random), eps_random averaged over its draws."""
    return kl_token(r, site, iv) - kl_token(r, site, EPS)


def gap_vs_recon(r):
    """Per site: the KL gap against the reconstruction's cosine similarity and L0 per
    token: Pearson and Spearman r, binned means, and a fixed subsample for a scatter.
    Scope position: the gap at the intervened position against that position's recon."""
    need_sites(r)
    need_ivs(r, SAE, EPS)
    out = {}
    for site in r.sites:
        g = gap(r, site)
        for metric in ("cossim", "l0"):
            x = r.recon(site, metric)
            if x is None:
                continue
            if r.scope == "position":
                xg, gg = x[:, r.position], g[:, 0]
            else:
                xg, gg = x, g
            xg, gg = stats.paired(xg.ravel(), gg.ravel())
            m = np.isfinite(xg)
            idx = stats.subsample(int(m.sum()), SCATTER_POINTS)
            out.setdefault(site, {})[metric] = {
                "pearson": stats.pearson(xg, gg)[0], "spearman": stats.spearman(xg, gg)[0],
                "n": int(m.sum()), "binned": stats.binned_means(xg, gg),
                "x": xg[m][idx], "y": gg[m][idx]}
    if not out:
        raise Skip("the file has no /sites/<site>/recon/cossim or l0")
    return out


def correlation(r, iv=SAE):
    """Layer x layer correlation of the per-token KL gap: the file's /correlation
    matrices, or (when absent) the same computed here from the per-token KL."""
    need_sites(r)
    p, sites = r.correlation("pearson", iv)
    s, sites_s = r.correlation("spearman", iv)
    if p is not None and s is not None:
        return {"pearson": p, "spearman": s, "sites": sites, "tokens": r.correlation_tokens(iv),
                "source": "file"}
    need_ivs(r, iv, EPS)
    if len(r.sites) < 2:
        raise Skip("one site only: a layer x layer correlation needs two")
    pm, sm, n = stats.correlation_matrices([gap(r, site, iv) for site in r.sites])
    return {"pearson": pm, "spearman": sm, "sites": list(r.sites), "tokens": n,
            "source": "computed", "why": r.missing("correlation/%s_minus_eps_random" % iv)}


def token_ids_at_kl(r):
    """The current token at each KL column's position ([n, C]; -1 beyond the context)."""
    tok = r.tokens
    pos = r.kl_positions
    out = np.full((tok.shape[0], pos.size), -1, dtype=np.int64)
    ok = pos < tok.shape[1]
    out[:, ok] = tok[:, pos[ok]]
    return out


def top_tokens(r, site, k=TOP_TOKENS, min_count=MIN_TOKEN_COUNT):
    """Top-k tokens of `site` by mean KL gap (tokens with >= min_count measured
    occurrences; the token is the current token at the measured position), and for every
    site the Pearson correlation of log token frequency with the token's mean gap."""
    need_sites(r)
    need_ivs(r, SAE, EPS)
    if r.tokens is None:
        raise Skip(r.missing("tokens"))
    ids = token_ids_at_kl(r)
    per_site = {}
    for s in r.sites:
        g = gap(r, s)
        g = np.where(ids >= 0, g, np.nan)
        t = stats.token_gap_table(ids, g, min_count)
        rr, n = stats.frequency_gap_correlation(t)
        per_site[s] = {"table": t, "freq_r": rr, "n_tokens": n}
    t = per_site[site]["table"]
    if t["id"].size == 0:
        raise Skip("no token occurs %d times or more among the measured tokens of %s"
                   % (min_count, site))
    top = {key: v[:k] for key, v in t.items()}
    return {"site": site, "top": top, "table": t, "per_site": per_site, "min_count": min_count}


# ---------------------------------------------------------------------------- samples / extras

def zscore(r, site):
    """With --samples S > 1: per token, the SAE's KL in standard deviations of the S
    eps_random KLs (the file's sae_kl_zscore when written, else computed from the draws);
    per-site summaries (scope position: at the intervened position only), and a few
    tokens of `site` with their S draws for the figure."""
    need_sites(r)
    need_ivs(r, SAE, EPS)
    if r.samples < 2:
        raise Skip("the run drew one eps_random sample per token (--samples 1): no distribution")
    summary, source = {}, {}
    for s in r.sites:
        z = r.zscore(s)
        source[s] = "file"
        if z is None:
            e = r.kl(s, EPS)
            if e is None or e.ndim != 3:
                continue
            z = stats.zscores(kl_token(r, s, SAE), e)
            source[s] = "computed"
        # scope position: the intervened position itself (later ones measure propagation)
        v = stats.finite(z[:, :1] if r.scope == "position" else z)
        summary[s] = {"values": v, "mean": float(v.mean()) if v.size else float("nan"),
                      "median": float(np.median(v)) if v.size else float("nan"),
                      "frac_above_2": float((v > 2).mean()) if v.size else float("nan"),
                      "n": int(v.size), "source": source[s], "z": z}
    if site not in summary:
        raise Skip("eps_random at %s has no samples axis" % site)
    e = r.kl(site, EPS)
    sae = kl_token(r, site, SAE)
    col = 0 if r.scope == "position" else e.shape[1] // 2
    pos = int(r.kl_positions[col])
    z = summary[site]["z"]
    picks = [c for c in range(e.shape[0])
             if np.isfinite(sae[c, col]) and np.isfinite(e[c, col]).sum() > 1][:N_ZSCORE_EXAMPLES]
    items = [{"context": c, "position": pos, "eps": stats.finite(e[c, col]),
              "sae": float(sae[c, col]), "z": float(z[c, col])} for c in picks]
    return {"site": site, "summary": summary, "items": items, "samples": r.samples,
            "scope": r.scope}


def compare_means(r, ivs, ratios):
    """Per site: mean KL +- se of `ivs` and bootstrap ratios [(num, den), ...]."""
    need_sites(r)
    need_ivs(r, *ivs)
    out = {}
    for site in r.sites:
        ks = {iv: kl_token(r, site, iv) for iv in ivs}
        out[site] = {"kl": {iv: stats.mean_se(k) for iv, k in ks.items()},
                     "ratio": {(a, b): stats.ratio_ci(ks[a], ks[b]) for a, b in ratios}}
    return out


def latent_noise(r):
    """The comment thread's prediction: an L0-preserving perturbation of the SAE code
    (latent_noise) should raise KL more than a random perturbation of x_hat of the same
    size (sae_eps_random); ratio latent_noise / sae_eps_random."""
    need_ivs(r, SAE, "latent_noise", "sae_eps_random")
    return compare_means(r, (SAE, "latent_noise", "sae_eps_random"),
                         [("latent_noise", "sae_eps_random")])


def cov_random(r):
    """Does the gap shrink with a covariance-shaped baseline?  Mean KL of sae, eps_random
    and cov_random and the ratios sae / eps_random, sae / cov_random."""
    need_ivs(r, SAE, EPS, "cov_random")
    return compare_means(r, (SAE, EPS, "cov_random"), [(SAE, EPS), (SAE, "cov_random")])
