"""Matplotlib figures from the numbers in sections.py.  Each function takes that data and
returns a Figure; nothing here reads the file or computes statistics beyond layout."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.reader import short_site  # noqa: E402
from analysis.vocab import show_token  # noqa: E402

# One colour per intervention in every figure (sae red, its baseline blue, as in the post).
COLORS = {
    "sae": "#d62728", "eps_random": "#1f77b4", "norm_corrected_sae": "#ff7f0e",
    "sae_norm": "#8c564b", "theta_random": "#17becf", "theta_random_true_norm": "#9edae5",
    "zero_ablation": "#7f7f7f", "mean_ablation": "#bcbd22", "latent_noise": "#9467bd",
    "sae_eps_random": "#e377c2", "cov_random": "#2ca02c", "clean": "#000000",
}
plt.rcParams.update({"font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9,
                     "legend.fontsize": 7.5, "xtick.labelsize": 8, "ytick.labelsize": 8,
                     "axes.spines.top": False, "axes.spines.right": False})


def color(iv):
    return COLORS.get(iv, "#333333")


def grid(n, ncols=4, w=3.3, h=2.5):
    """n small multiples in rows of ncols; unused axes removed."""
    ncols = max(1, min(ncols, n))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.8), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def fmt(x, digits=3):
    return "nan" if x is None or not np.isfinite(x) else "%.*g" % (digits, x)


def finish(fig, title, legend_from=None, ncol=4):
    """Title, optional one legend for all panels (taken from axis legend_from) placed
    under the title, and a layout that keeps both clear of the panels (sizes in inches,
    so one-row and many-row figures look the same).  tight_layout already makes room for
    the title; the shared legend needs an explicit band."""
    h = fig.get_figheight()
    fig.suptitle(title, fontsize=11)
    if legend_from is None:
        fig.tight_layout()
        return fig
    handles, labels = legend_from.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.32 / h),
               ncol=ncol, frameon=False, fontsize=8.5, markerscale=2.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / h))
    return fig


def log_if_wide(ax, values, span=30.0):
    """Log y axis only when the positive values span more than `span`x (mean KLs of
    ablations vs SAEs); otherwise a linear axis reads better.  Ticks at 1, 2, 5 x 10^k
    labelled as plain numbers (0.02, 0.05, 0.1), readable also within one decade."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size and (v > 0).all() and v.max() / v.min() > span:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: "%g" % y))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def headroom(ax, factor=1.35):
    """Room above the data for a legend: x factor on a linear axis, x factor**8 on a log
    axis (legends otherwise sit on the curves)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * factor ** 8)
    else:
        ax.set_ylim(lo, lo + (hi - lo) * factor)


# ---------------------------------------------------------------------------- overview

def overview(rows, ivs):
    """Mean KL of every intervention per site (lines across sites, log scale)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 4), 4.2))
    x = np.arange(len(rows))
    for iv in ivs:
        m = np.array([r["kl"].get(iv, (np.nan,) * 3)[0] for r in rows])
        se = np.array([r["kl"].get(iv, (np.nan,) * 3)[1] for r in rows])
        if not np.isfinite(m).any():
            continue
        ax.errorbar(x, m, yerr=np.nan_to_num(se), marker="o", ms=4, lw=1.3, capsize=2,
                    color=color(iv), label=iv)
    ax.set_xticks(x)
    ax.set_xticklabels([short_site(r["site"]) for r in rows], rotation=30, ha="right")
    log_if_wide(ax, [r["kl"][iv][0] for r in rows for iv in r["kl"]])
    ax.set_ylabel("mean KL(clean || intervened) [nats]")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, "Mean KL per intervention and site (error bars: standard error)")


# ---------------------------------------------------------------------------- distributions

def _step(ax, h, iv, label):
    e, c = h["edges"], h["counts"]
    ax.stairs(c, e, color=color(iv), lw=1.4, label=label)


def kl_histograms(data):
    fig, axes = grid(len(data))
    for ax, (site, d) in zip(axes, data.items()):
        clamp = None
        for iv, h in d.items():
            _step(ax, h, iv, "%s: mean %s, p99.9 %s" % (iv, fmt(h["mean"]), fmt(h["percentile"])))
            clamp = h["clamp"]
        ax.set_yscale("log")
        headroom(ax)
        ax.set_title(short_site(site))
        ax.set_xlabel("KL [nats] (values > %s in the last bin)" % fmt(clamp))
        ax.set_ylabel("tokens")
        ax.legend(loc="upper right", frameon=False)
    return finish(fig, "Per-token KL: SAE vs eps-random (upper tail clamped at the 99.9th percentile)")


def ce_histograms(data):
    hist = data["hist"]
    fig, axes = grid(len(hist))
    for ax, (site, d) in zip(axes, hist.items()):
        top = max(h["counts"].max() for h in d.values())
        for iv, h in d.items():
            _step(ax, h, iv, "%s: mean %s" % (iv, fmt(h["mean"])))
            # mean lines stop at the highest bar, leaving the legend's band free
            ax.vlines(h["mean"], 0.8, top, color=color(iv), ls="--", lw=1)
        ax.set_yscale("log")
        headroom(ax)
        ax.set_title(short_site(site))
        ax.set_xlabel("CE intervened - CE clean [nats]")
        ax.set_ylabel("tokens")
        ax.legend(loc="upper right", frameon=False)
    return finish(fig, "Next-token CE increase (tails clamped at the 0.1/99.9th percentiles; "
                       "dashed: means)")


def kl_by_position(data):
    fig, axes = grid(len(data))
    for ax, (site, d) in zip(axes, data.items()):
        for iv, s in d.items():
            ok = np.isfinite(s["mean"])
            x, m, se = s["position"][ok], s["mean"][ok], np.nan_to_num(s["se"][ok])
            ax.plot(x, m, color=color(iv), lw=1.4, label=iv)
            ax.fill_between(x, m - se, m + se, color=color(iv), alpha=0.2, lw=0)
        ax.set_title(short_site(site))
        ax.set_xlabel("position in context")
        ax.set_ylabel("mean KL [nats]")
        ax.set_ylim(bottom=0)
    return finish(fig, "Mean KL by position (band: +- standard error)", legend_from=axes[0])


def window(data):
    sites = data["sites"]
    fig, axes = grid(len(sites))
    for ax, (site, d) in zip(axes, sites.items()):
        for iv, s in d.items():
            ok = np.isfinite(s["mean"])
            x = data["offsets"][ok]
            ax.errorbar(x, s["mean"][ok], yerr=np.nan_to_num(s["se"][ok]), marker="o", ms=3,
                        lw=1.2, capsize=2, color=color(iv), label=iv,
                        zorder=3 if iv == "sae" else 2)
        log_if_wide(ax, np.concatenate([s["mean"] for s in d.values()]) if d else [], span=10)
        ax.set_title(short_site(site))
        ax.set_xlabel("positions after the intervened one")
        ax.set_ylabel("mean KL [nats]")
    return finish(fig, "Single-position intervention at position %d: KL there and at the "
                       "following positions" % data["position"], legend_from=axes[0], ncol=6)


# ---------------------------------------------------------------------------- examples

def examples(data, vocab=None):
    items = data["items"]
    fig, axes = plt.subplots(len(items), 1, figsize=(9.5, 3.0 * len(items) + 0.4), squeeze=False)
    for ax, it in zip(axes[:, 0], items):
        x = np.arange(1, it["clean"].size + 1)
        ax.plot(x, it["clean"], "o-", color=color("clean"), ms=3.5, lw=1.3, label="clean model")
        for iv, d in it["iv"].items():
            ax.plot(x, d["logprobs"], "o-", color=color(iv), ms=3, lw=1.1,
                    label="%s (KL %s)" % (iv, fmt(d["kl"])))
        ax.set_xticks(x)
        ax.set_xticklabels([show_token(vocab, t) for t in it["ids"]], rotation=90,
                           fontsize=7 if vocab else 6.5)
        ax.set_ylabel("log-prob")
        ax.set_xlim(0.5, x[-1] + 0.5)
        ax.legend(loc="upper right", frameon=False, fontsize=8)
        ax.set_title(_example_title(it, vocab), fontsize=8.5, loc="left")
    return finish(fig, "Clean top-25 next tokens vs the same tokens after SAE and eps-random "
                       "substitution at %s" % short_site(data["site"]))


def _example_title(it, vocab):
    head = "context %d, position %d" % (it["context"], it["position"])
    if it["prefix"] is None or vocab is None:
        return head
    text = vocab.decode_many(it["prefix"]).replace("\n", "\\n")
    return "%s: ...%s" % (head, text[-70:])


# ---------------------------------------------------------------------------- gap analyses

LABELS = {"cossim": "cosine similarity cos(x, x_hat)", "l0": "L0 (active latents)"}


def gap_vs_recon(data, metric):
    sites = [s for s in data if metric in data[s]]
    fig, axes = grid(len(sites))
    for ax, site in zip(axes, sites):
        d = data[site][metric]
        ax.scatter(d["x"], d["y"], s=3, color="0.6", alpha=0.35, lw=0, rasterized=True,
                   label="tokens (subsample)")
        b = d["binned"]
        if b is not None:
            ax.errorbar(b["x_mid"], b["mean"], yerr=np.nan_to_num(b["se"]), color=color("sae"),
                        marker="o", ms=3, lw=1.3, capsize=2, label="mean of equal-count bins")
        if d["y"].size:
            lo, hi = np.percentile(d["y"], [0.5, 99.5])
            pad = 0.05 * (hi - lo + 1e-12)
            ax.set_ylim(lo - pad, hi + pad)
        ax.axhline(0, color="k", lw=0.6, alpha=0.5)
        ax.set_title("%s\nPearson r %s, Spearman %s" % (short_site(site), fmt(d["pearson"], 2),
                                                        fmt(d["spearman"], 2)))
        ax.set_xlabel(LABELS[metric])
        ax.set_ylabel("KL gap sae - eps_random")
    return finish(fig, "Per-token KL gap vs %s" % LABELS[metric], legend_from=axes[0])


def correlation(data):
    K = len(data["sites"])
    labels = [short_site(s) for s in data["sites"]]
    side = max(3.6, 0.45 * K + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.2, side + 0.4), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08)
    for ax, kind in zip(axes, ("pearson", "spearman")):
        m = data[kind]
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(K))
        ax.set_yticks(range(K))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_yticklabels(labels if kind == "pearson" else [])
        ax.set_title(kind.capitalize())
        if K <= 16:
            for i in range(K):
                for j in range(K):
                    v = m[i, j]
                    ax.text(j, i, fmt(v, 2), ha="center", va="center", fontsize=7 if K > 8 else 8,
                            color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="correlation of the per-token KL gap")
    fig.suptitle("Layer x layer correlation of the KL gap (sae - eps_random), %s tokens"
                 % ("?" if data["tokens"] is None else "{:,}".format(data["tokens"])), fontsize=11)
    return fig


def top_tokens(data, vocab=None):
    top = data["top"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.3 * top["id"].size + 1.2)),
                                  gridspec_kw={"width_ratios": [1.3, 1]})
    y = np.arange(top["id"].size)[::-1]
    ax.barh(y, top["mean"], xerr=np.nan_to_num(top["se"]), color=color("sae"), alpha=0.75,
            capsize=2, error_kw={"lw": 0.9})
    ax.set_yticks(y)
    ax.set_yticklabels(["%s (n=%d)" % (show_token(vocab, t), c)
                        for t, c in zip(top["id"], top["count"])], fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("mean KL gap sae - eps_random (+- standard error)")
    ax.set_title("Top %d tokens by mean gap (>= %d occurrences)" % (top["id"].size, data["min_count"]))
    t = data["table"]
    ax2.scatter(t["count"], t["mean"], s=10, color="0.3", alpha=0.6, lw=0)
    ax2.set_xscale("log")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set_xlabel("occurrences among measured tokens (log scale)")
    ax2.set_ylabel("mean KL gap of the token")
    ps = data["per_site"][data["site"]]
    ax2.set_title("Token frequency vs gap: Pearson r(log count, gap) = %s over %d tokens"
                  % (fmt(ps["freq_r"], 2), ps["n_tokens"]), fontsize=8.5)
    return finish(fig, "Which tokens have the largest KL gap at %s" % short_site(data["site"]))


# ---------------------------------------------------------------------------- samples / extras

def zscore_examples(data):
    items = data["items"]
    fig, axes = grid(len(items), ncols=3)
    for ax, it in zip(axes, items):
        counts, _, _ = ax.hist(it["eps"], bins=min(30, max(5, it["eps"].size // 3)),
                               color=color("eps_random"), alpha=0.75,
                               label="eps_random draws (%d)" % it["eps"].size)
        # the SAE's line stops at the tallest bar, below the legend
        ax.vlines(it["sae"], 0, 1.08 * counts.max(), color=color("sae"), lw=2,
                  label="SAE KL: z = %s" % fmt(it["z"], 3))
        ax.set_title("context %d, position %d" % (it["context"], it["position"]))
        ax.set_xlabel("KL [nats]")
        ax.set_ylabel("draws")
        headroom(ax, 1.45)
        lo, hi = min(it["eps"].min(), it["sae"]), max(it["eps"].max(), it["sae"])
        pad = 0.06 * (hi - lo + 1e-12)
        ax.set_xlim(lo - pad, hi + pad)
        # legend on the side away from the SAE's line
        ax.legend(frameon=False, loc="upper left" if it["sae"] > (lo + hi) / 2 else "upper right")
    return finish(fig, "SAE KL against %d eps-random draws of the same size (%s)"
                  % (data["samples"], short_site(data["site"])))


def zscore_distribution(data):
    summ = data["summary"]
    fig, axes = grid(len(summ))
    for ax, (site, s) in zip(axes, summ.items()):
        v = s["values"]
        if v.size:
            lo, hi = np.percentile(v, [0.5, 99.5])
            ax.hist(np.clip(v, lo, hi), bins=40, color=color("sae"), alpha=0.75)
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(2, color="k", lw=0.8, ls=":")
        ax.set_title("%s: median z %s, %s%% > 2" % (short_site(site), fmt(s["median"], 2),
                                                    fmt(100 * s["frac_above_2"], 3)))
        ax.set_xlabel("z of the SAE KL among eps-random draws")
        ax.set_ylabel("tokens")
    return finish(fig, "How many standard deviations the SAE's KL lies above eps-random "
                       "(tails clipped at the 0.5th/99.5th percentiles)")


def grouped_means(data, ivs, title, ratios=()):
    """Left: mean KL of `ivs` per site (bars, standard errors).  Right: the ratios
    (num, den) per site with their bootstrap 95% CIs and a line at 1, where small
    differences between bars become visible."""
    sites = list(data)
    ncol = 2 if ratios else 1
    width = max(5.0, 0.45 * len(sites) * len(ivs) / 2 + 3)
    fig, axes = plt.subplots(1, ncol, figsize=(width + (0.6 * width if ratios else 0), 4),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 0.6][:ncol]})
    ax = axes[0, 0]
    x = np.arange(len(sites))
    w = 0.8 / len(ivs)
    for k, iv in enumerate(ivs):
        m = [data[s]["kl"][iv][0] for s in sites]
        se = [data[s]["kl"][iv][1] for s in sites]
        ax.bar(x + (k - (len(ivs) - 1) / 2) * w, m, w, yerr=np.nan_to_num(se), capsize=2,
               color=color(iv), label=iv, error_kw={"lw": 0.9})
    ax.set_xticks(x)
    ax.set_xticklabels([short_site(s) for s in sites], rotation=30, ha="right")
    ax.set_ylabel("mean KL [nats] (+- standard error)")
    headroom(ax, 1.2)
    ax.legend(frameon=False, ncol=len(ivs), loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    if ratios:
        ax2 = axes[0, 1]
        for k, key in enumerate(ratios):
            r = np.array([data[s]["ratio"][key][:3] for s in sites], dtype=float)
            off = (k - (len(ratios) - 1) / 2) * 0.15
            ax2.errorbar(x + off, r[:, 0], yerr=np.abs(r[:, 1:3].T - r[:, 0]), fmt="o", ms=4,
                         capsize=3, color=color(key[0]) if k == 0 else "0.35",
                         label="%s / %s" % key)
        ax2.axhline(1, color="k", lw=0.8, ls="--")
        ax2.set_xticks(x)
        ax2.set_xticklabels([short_site(s) for s in sites], rotation=30, ha="right")
        ax2.set_ylabel("ratio of mean KL (95% bootstrap CI)")
        headroom(ax2, 1.25)
        ax2.legend(frameon=False, loc="upper center")
        ax2.grid(axis="y", alpha=0.3)
    return finish(fig, title)
