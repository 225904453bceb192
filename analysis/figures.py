"""Matplotlib figures from the numbers in sections.py.  Each function takes that data and
returns a Figure; nothing here reads the file or computes statistics beyond layout."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.font_manager  # noqa: E402
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
    handles, labels = legend_entries(legend_from)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.32 / h),
               ncol=ncol, frameon=False, fontsize=8.5, markerscale=2.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / h))
    return fig


class ReadableLogLocator(matplotlib.ticker.Locator):
    """Major ticks of a log axis that are always there, labelled and apart, whatever its
    span.  matplotlib's LogLocator(subs=(1, 2, 5)) returns no tick at all once the range
    needs a decade stride > 1 (about 9 decades: mean KLs of ablations vs an SAE that leaves
    the output unchanged), and none within a range narrower than its subs.  Here: the densest
    of 1-9, 1-2-5, 1-3 x 10^k, then every 1st, 2nd, 3rd ... power of ten, whose neighbouring
    labels stay a label's size apart on the axis as drawn; plain 1-2-5 linear steps when
    fewer than two powers of ten fall in view."""

    CANDIDATES = ((tuple(range(1, 10)), 1), ((1, 2, 5), 1), ((1, 3), 1), ((1,), 1), ((1,), 2),
                  ((1,), 3), ((1,), 4), ((1,), 5), ((1,), 10))

    def __call__(self):
        lo, hi = self.axis.get_view_interval()
        ax, name = self.axis.axes, self.axis.axis_name
        length = ax.bbox.height if name == "y" else ax.bbox.width
        font = matplotlib.font_manager.FontProperties(size=plt.rcParams["%stick.labelsize" % name])
        px = font.get_size_in_points() * ax.figure.dpi / 72.0
        return self.tick_values(lo, hi, length, px * (1.6 if name == "y" else 4.0))

    def tick_values(self, vmin, vmax, length_px=300.0, need_px=20.0):
        lo, hi = sorted((float(vmin), float(vmax)))
        if not (hi > 0 and np.isfinite(hi)):
            return []
        if not (lo > 0 and np.isfinite(lo)):
            lo = hi * 1e-6
        dec = max(math.log10(hi / lo), 1e-12)
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for subs, step in self.CANDIDATES:
            ticks = [s * 10.0 ** k for k in range(a, b + 1) if k % step == 0 for s in subs]
            ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
            if len(ticks) < 2:
                break
            gaps = np.diff(np.log10(ticks)) / dec * length_px
            if gaps.min() >= need_px:
                return ticks
        nbins = int(max(1, min(4, length_px // need_px)))
        lin = matplotlib.ticker.MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        return [t for t in lin if t > 0 and lo <= t <= hi]


def tick_text(v, _pos=None):
    """A tick value as a short plain number: 0.02, 5, 2000, 1e-05, 1e+06."""
    if 1 <= abs(v) < 1e5 and v == round(v):
        return "%d" % round(v)
    return "%.3g" % v


def readable_log(ax, axis="y"):
    """Log scale on `axis` with ReadableLogLocator's labelled major ticks and unlabelled
    minor ones."""
    a = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    a.set_major_locator(ReadableLogLocator())
    a.set_major_formatter(matplotlib.ticker.FuncFormatter(tick_text))
    a.set_minor_formatter(matplotlib.ticker.NullFormatter())


def log_if_wide(ax, values, span=30.0, floor=0.0):
    """Log y axis only when the positive values (above `floor`) span more than `span`x
    (mean KLs of ablations vs SAEs); otherwise a linear axis reads better."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    v = v[v > floor]
    if v.size and v.max() / v.min() > span:
        readable_log(ax)
        return True
    return False


# ---------------------------------------------------------------------------- overview

# On a log axis a mean KL at or below this is drawn at this floor as an open triangle.
# Where the output cannot move (sae_norm before a final LayerNorm; a last-layer site at the
# positions after a single-position intervention) the file holds rounding residue of
# 1e-17..1e-11 nats or a tiny negative number; drawn as they are, they stretch the axis over
# many empty decades (or vanish) and squeeze every other curve.
KL_FLOOR = 1e-8
FLOOR_LABEL = "mean KL <= %s nats (drawn at the floor)" % tick_text(KL_FLOOR)


def kl_errorbar(ax, x, m, se, log, **kw):
    """Means with standard-error bars; on a log axis, means at or below KL_FLOOR drawn at
    the floor as open triangles and lower bars stopped at the floor.  True if any was."""
    m, se = np.asarray(m, float), np.nan_to_num(np.asarray(se, float))
    low = np.isfinite(m) & (m <= KL_FLOOR) if log else np.zeros(m.shape, bool)
    y = np.where(low, KL_FLOOR, m)
    lower = np.where(low, 0, np.minimum(se, np.maximum(y - KL_FLOOR, 0)) if log else se)
    ax.errorbar(x, y, yerr=np.vstack([lower, np.where(low, 0, se)]), **kw)
    if low.any():
        ax.plot(np.asarray(x)[low], y[low], "v", ms=7, mfc="white", color=kw.get("color"), zorder=4)
    return bool(low.any())


def show_floor(ax, key_ax=None):
    """After the last curve: the axis down to below the floor, and a legend entry (on
    key_ax, default ax) for the floor's open triangles."""
    ax.set_ylim(bottom=KL_FLOOR / 2)
    key_ax = key_ax or ax
    if FLOOR_LABEL not in key_ax.get_legend_handles_labels()[1]:
        key_ax.plot([], [], "v", ms=7, mfc="white", color="0.3", ls="none", label=FLOOR_LABEL)


def legend_entries(ax):
    """(handles, labels) of ax with the floor's entry, if any, last."""
    hl = list(zip(*ax.get_legend_handles_labels()))
    hl.sort(key=lambda t: t[1] == FLOOR_LABEL)
    return [h for h, _ in hl], [lab for _, lab in hl]


def overview(rows, ivs):
    """Mean KL of every intervention per site (lines across sites; log scale when they
    span more than 30x)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 4), 4.2))
    x = np.arange(len(rows))
    means = {iv: np.array([r["kl"].get(iv, (np.nan,) * 3)[0] for r in rows]) for iv in ivs}
    log = log_if_wide(ax, np.concatenate([means[iv] for iv in ivs]) if ivs else [], floor=KL_FLOOR)
    floored = False
    for iv in ivs:
        se = np.array([r["kl"].get(iv, (np.nan,) * 3)[1] for r in rows])
        if np.isfinite(means[iv]).any():
            floored |= kl_errorbar(ax, x, means[iv], se, log, marker="o", ms=4, lw=1.3,
                                   capsize=2, color=color(iv), label=iv)
    if floored:
        show_floor(ax)
    ax.set_xticks(x)
    ax.set_xticklabels([short_site(r["site"]) for r in rows], rotation=30, ha="right")
    ax.set_ylabel("mean KL(clean || intervened) [nats]" + (", log scale" if log else ""))
    ax.legend(*legend_entries(ax), loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, "Mean KL per intervention and site (error bars: standard error)")


# ---------------------------------------------------------------------------- distributions

def _step(ax, h, iv, label):
    e, c = h["edges"], h["counts"]
    ax.stairs(c, e, color=color(iv), lw=1.4, label=label)


def _means_title(site, d):
    """Panel title: the site, then each intervention's mean (the legend is shared)."""
    return "%s\nmean %s" % (short_site(site), ", ".join("%s %s" % (iv, fmt(h["mean"]))
                                                        for iv, h in d.items()))


def kl_histograms(data):
    fig, axes = grid(len(data), h=2.7)
    for ax, (site, d) in zip(axes, data.items()):
        clamp = None
        for iv, h in d.items():
            _step(ax, h, iv, iv)
            clamp = h["clamp"]
        readable_log(ax)
        ax.set_title(_means_title(site, d))
        ax.set_xlabel("KL [nats] (values > %s in the last bin)" % fmt(clamp))
        ax.set_ylabel("tokens")
    return finish(fig, "Per-token KL: SAE vs eps-random (upper tail clamped at the 99.9th "
                       "percentile; log count axis)", legend_from=axes[0])


def ce_histograms(data):
    hist = data["hist"]
    fig, axes = grid(len(hist), h=2.7)
    for ax, (site, d) in zip(axes, hist.items()):
        top = max(h["counts"].max() for h in d.values())
        for iv, h in d.items():
            _step(ax, h, iv, iv)
            ax.vlines(h["mean"], 0.8, top, color=color(iv), ls="--", lw=1)
        readable_log(ax)
        ax.set_title(_means_title(site, d))
        ax.set_xlabel("CE intervened - CE clean [nats]")
        ax.set_ylabel("tokens")
    return finish(fig, "Next-token CE increase (tails clamped at the 0.1/99.9th percentiles; "
                       "dashed: means; log count axis)", legend_from=axes[0])


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
        floored_here = False
        log = log_if_wide(ax, np.concatenate([s["mean"] for s in d.values()]) if d else [],
                          span=10, floor=KL_FLOOR)
        for iv, s in d.items():
            ok = np.isfinite(s["mean"])
            floored_here |= kl_errorbar(ax, data["offsets"][ok], s["mean"][ok], s["se"][ok], log,
                                   marker="o", ms=3, lw=1.2, capsize=2, color=color(iv), label=iv,
                                   zorder=3 if iv == "sae" else 2)
        ax.set_title(short_site(site))
        ax.set_xlabel("positions after the intervened one")
        ax.set_ylabel("mean KL [nats]")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if floored_here:
            show_floor(ax, axes[0])
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
        # beside the panel: the curves fill it (clean falls left to right, the others
        # cross it anywhere)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
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
        x = np.asarray(d["x"], dtype=float)
        if x.size and np.nanmin(x) == np.nanmax(x):  # a top-k SAE: L0 is k at every token
            ax.set_title("%s\nno correlation: %s is %s at every token" % (short_site(site), LABELS[metric].split(" (")[0],
                                                                            fmt(float(np.nanmin(x)), 3)))
        else:
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
        ax.set_yticklabels(labels)
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
    readable_log(ax2, "x")
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
    fig, axes = grid(len(items), ncols=3, h=2.7)
    for ax, it in zip(axes, items):
        ax.hist(it["eps"], bins=min(30, max(5, it["eps"].size // 3)), color=color("eps_random"),
                alpha=0.75, label="eps_random draws (%d per token)" % it["eps"].size)
        ax.axvline(it["sae"], color=color("sae"), lw=2, label="the SAE's KL")
        ax.set_title("context %d, position %d\nSAE KL %s: z = %s" % (
            it["context"], it["position"], fmt(it["sae"]), fmt(it["z"], 3)))
        ax.set_xlabel("KL [nats]")
        ax.set_ylabel("draws")
        lo, hi = min(it["eps"].min(), it["sae"]), max(it["eps"].max(), it["sae"])
        pad = 0.06 * (hi - lo + 1e-12)
        ax.set_xlim(lo - pad, hi + pad)
    return finish(fig, "SAE KL against %d eps-random draws of the same size (%s)"
                  % (data["samples"], short_site(data["site"])), legend_from=axes[0])


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
    ax.legend(frameon=False, ncol=len(ivs), loc="lower center", bbox_to_anchor=(0.5, 1.0))
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
        ax2.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        ax2.grid(axis="y", alpha=0.3)
    return finish(fig, title)
