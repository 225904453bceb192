"""Pure statistics on per-token arrays (NumPy in, numbers out; no file, no plotting).

Conventions, stated once so every table means the same thing:
- "measured" = finite.  NaN marks tokens saegap did not measure; every function here
  drops non-finite entries and reports how many it used.
- Standard error of a mean = sample standard deviation (ddof 1) / sqrt(n) over tokens,
  treating tokens as independent (tokens of one context are not, so for ratios we use a
  per-context bootstrap instead).
- Random interventions run with --samples S > 1 are first averaged over their draws per
  token (reader.mean_over_samples), so a token counts once.
"""

import numpy as np

BOOT_RESAMPLES = 2000
BOOT_SEED = 0


def finite(x):
    """Flattened float64 values that are finite."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def mean_se(x):
    """(mean, standard error, n) over the finite entries; se is NaN for n < 2."""
    v = finite(x)
    n = v.size
    if n == 0:
        return float("nan"), float("nan"), 0
    m = float(v.mean())
    se = float(v.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return m, se, n


def paired(a, b):
    """a, b with NaN wherever either is NaN: ratios and gaps compare the same tokens."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    return np.where(both, a, np.nan), np.where(both, b, np.nan)


def ratio_ci(num, den, level=0.95, n_boot=BOOT_RESAMPLES, seed=BOOT_SEED):
    """mean(num) / mean(den) over tokens finite in both, with a percentile confidence
    interval from a per-context (cluster) bootstrap: contexts are resampled with
    replacement, because positions of one context are correlated and a per-token bootstrap
    would give intervals that are too narrow.  num, den: [n_contexts, ...].
    Returns (ratio, lo, hi, n_tokens)."""
    a, b = paired(num, den)
    n_ctx = a.shape[0]
    fin = np.isfinite(a).reshape(n_ctx, -1)
    sa = np.where(fin, a.reshape(n_ctx, -1), 0.0).sum(axis=1)
    sb = np.where(fin, b.reshape(n_ctx, -1), 0.0).sum(axis=1)
    n_tok = int(fin.sum())
    if n_tok == 0 or sb.sum() == 0:
        return float("nan"), float("nan"), float("nan"), n_tok
    ratio = float(sa.sum() / sb.sum())
    rng = np.random.default_rng(seed)
    boots = []
    chunk = max(1, min(n_boot, 2_000_000 // max(n_ctx, 1)))
    done = 0
    while done < n_boot:
        k = min(chunk, n_boot - done)
        idx = rng.integers(0, n_ctx, size=(k, n_ctx))
        with np.errstate(invalid="ignore", divide="ignore"):
            boots.append(sa[idx].sum(axis=1) / sb[idx].sum(axis=1))
        done += k
    boots = np.concatenate(boots)
    boots = boots[np.isfinite(boots)]
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(boots, [tail, 100.0 - tail])
    return ratio, float(lo), float(hi), n_tok


def clamped_histogram(values, q=99.9, bins=60, upper=None):
    """Histogram of the finite values with the upper tail clamped at the q-th percentile
    (values above it are counted in the last bin), as in the post: a few huge KLs would
    otherwise squeeze the whole distribution into one bin.
    upper: clamp at this value instead (to share one axis between distributions).
    Returns dict(edges, counts, clamp, percentile, n, n_clamped, mean)."""
    v = finite(values)
    if v.size == 0:
        return None
    pq = float(np.percentile(v, q))
    top = pq if upper is None else float(upper)
    lo = min(0.0, float(v.min()))
    if top <= lo:
        top = lo + 1e-12
    edges = np.linspace(lo, top, bins + 1)
    clipped = np.minimum(v, top)
    counts, _ = np.histogram(clipped, bins=edges)
    return {"edges": edges, "counts": counts, "clamp": top, "percentile": pq,
            "n": int(v.size), "n_clamped": int((v > top).sum()), "mean": float(v.mean())}


def two_sided_histogram(values, q_lo=0.1, q_hi=99.9, bins=60, lo=None, hi=None):
    """Histogram for values of either sign (CE differences), both tails clamped at the
    q_lo / q_hi percentiles (or at lo / hi when given, to share one axis).
    Returns dict(edges, counts, lo, hi, n, mean, se)."""
    v = finite(values)
    if v.size == 0:
        return None
    plo, phi = np.percentile(v, [q_lo, q_hi])
    lo = float(plo) if lo is None else float(lo)
    hi = float(phi) if hi is None else float(hi)
    if hi <= lo:
        hi = lo + 1e-12
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
    m, se, n = mean_se(v)
    return {"edges": edges, "counts": counts, "lo": lo, "hi": hi, "n": n,
            "mean": m, "se": se, "p_lo": float(plo), "p_hi": float(phi)}


def column_mean_se(a):
    """Per column of a [n, C] array (positions): (mean[C], se[C], n[C]) over rows."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.isfinite(a)
    n = fin.sum(axis=0)
    x = np.where(fin, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=0) / n
        dev = np.where(fin, a - mean, 0.0)
        var = (dev ** 2).sum(axis=0) / (n - 1)
        se = np.sqrt(var / n)
    mean = np.where(n > 0, mean, np.nan)
    se = np.where(n > 1, se, np.nan)
    return mean, se, n


def rankdata(x):
    """Ranks 1..n with ties given their average rank (what Spearman needs; scipy is not
    available on the target machines)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x)  # stability is irrelevant: tied values share their average rank
    xs = x[order]
    # runs of equal values in sorted order: run r covers sorted slots [start_r, end_r)
    new = np.concatenate(([True], xs[1:] != xs[:-1]))
    run = np.cumsum(new) - 1
    bounds = np.append(np.flatnonzero(new), x.size)
    avg = 0.5 * (bounds[:-1] + 1 + bounds[1:])
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = avg[run]
    return ranks


def pearson(x, y):
    """Pearson r over the pairs where both are finite, and the number of pairs."""
    a, b = paired(x, y)
    m = np.isfinite(a)
    a, b = a[m], b[m]
    if a.size < 2:
        return float("nan"), int(a.size)
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return (float((a * b).sum() / den) if den > 0 else float("nan")), int(a.size)


def spearman(x, y):
    """Spearman rho (Pearson on average ranks) over the pairs where both are finite."""
    a, b = paired(x, y)
    m = np.isfinite(a)
    if m.sum() < 2:
        return float("nan"), int(m.sum())
    return pearson(rankdata(a[m]), rankdata(b[m]))


def correlation_matrices(columns):
    """Pearson and Spearman matrices between columns (per-token KL gaps of each site),
    over the tokens finite in every column, like saegap's /correlation.
    columns: list of K equally shaped arrays.  Returns (pearson, spearman, n_tokens)."""
    X = np.stack([np.asarray(c, dtype=np.float64).ravel() for c in columns], axis=1)
    X = X[np.isfinite(X).all(axis=1)]
    K = X.shape[1]
    if X.shape[0] < 2:
        nan = np.full((K, K), np.nan)
        return nan, nan.copy(), int(X.shape[0])
    R = np.stack([rankdata(X[:, j]) for j in range(K)], axis=1)
    return _corr(X), _corr(R), int(X.shape[0])


def _corr(X):
    Z = X - X.mean(axis=0)
    sd = np.sqrt((Z * Z).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        C = (Z.T @ Z) / np.outer(sd, sd)
    np.fill_diagonal(C, np.where(sd > 0, 1.0, np.nan))
    return C


def binned_means(x, y, n_bins=20):
    """Mean of y (with standard error) in n_bins equal-count bins of x: the trend in a
    scatter of millions of tokens.  Returns dict(x_mid, mean, se, count) or None."""
    a, b = paired(x, y)
    m = np.isfinite(a)
    a, b = a[m], b[m]
    if a.size < 2:
        return None
    order = np.argsort(a, kind="mergesort")
    groups = np.array_split(order, min(n_bins, a.size))
    out = {"x_mid": [], "mean": [], "se": [], "count": []}
    for g in groups:
        if g.size == 0:
            continue
        mu, se, n = mean_se(b[g])
        out["x_mid"].append(float(np.median(a[g])))
        out["mean"].append(mu)
        out["se"].append(se)
        out["count"].append(n)
    return {k: np.asarray(v) for k, v in out.items()}


def token_gap_table(token_ids, gap, min_count=5):
    """Per token id: occurrences among measured tokens, mean gap and its standard error,
    for ids with at least min_count occurrences, sorted by mean gap (largest first).
    token_ids, gap: equally shaped arrays (the current token at each measured position).
    Returns dict of arrays: id, count, mean, se."""
    t = np.asarray(token_ids).ravel()
    g = np.asarray(gap, dtype=np.float64).ravel()
    m = np.isfinite(g)
    t, g = t[m].astype(np.int64), g[m]
    empty = {"id": np.zeros(0, np.int64), "count": np.zeros(0, np.int64),
             "mean": np.zeros(0), "se": np.zeros(0)}
    if t.size == 0:
        return empty
    ids, inv, count = np.unique(t, return_inverse=True, return_counts=True)
    s1 = np.bincount(inv, weights=g)
    mean = s1 / count
    dev2 = np.bincount(inv, weights=(g - mean[inv]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(dev2 / (count - 1) / count)
    keep = count >= min_count
    ids, count, mean, se = ids[keep], count[keep], mean[keep], se[keep]
    order = np.lexsort((ids, -mean))
    return {"id": ids[order], "count": count[order], "mean": mean[order], "se": se[order]}


def frequency_gap_correlation(table):
    """Pearson r between log(occurrences) and mean gap across the tokens of a
    token_gap_table: does the gap follow token rarity?  Returns (r, n_tokens)."""
    if table["count"].size < 3:
        return float("nan"), int(table["count"].size)
    return pearson(np.log(table["count"].astype(np.float64)), table["mean"])


def zscores(sae_kl, eps_samples):
    """Per token: (KL_sae - mean_s KL_eps) / std_s KL_eps (ddof 1) over the S draws of
    eps_random: how many standard deviations the SAE's KL lies from random errors of the
    same size.  sae_kl [n, W], eps_samples [n, W, S] -> [n, W] (NaN where undefined)."""
    e = np.asarray(eps_samples, dtype=np.float64)
    fin = np.isfinite(e)
    cnt = fin.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(fin, e, 0.0).sum(axis=-1) / cnt
        var = (np.where(fin, e - mu[..., None], 0.0) ** 2).sum(axis=-1) / (cnt - 1)
        z = (np.asarray(sae_kl, dtype=np.float64) - mu) / np.sqrt(var)
    return np.where((cnt > 1) & (var > 0), z, np.nan)


def subsample(n, k, seed=BOOT_SEED):
    """k indices of range(n) (all when n <= k), fixed seed: scatter plots of millions of
    points are unreadable and slow, a fixed subsample is reproducible."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
