"""The post's figures and tables from one or more `saegap run` result files.

    /usr/bin/python3 -m analysis.report RESULT.h5 [MORE.h5 ...] -o DIR [--vocab DIR_OR_encoder.json] [--site S]
    /usr/bin/python3 analysis/report.py RESULT.h5 -o DIR

writes DIR/report.md, DIR/report.html (self-contained), DIR/headline.csv and one PNG per
figure.  Numbers come from sections.py (tested against synthetic files with known
answers); this module only arranges them into text, tables and figures.  With several
files (a --scope all run and a --scope position --samples S run of the same job: the post
needs both), each part comes from the first file that holds its data, and says which file
when it is not the first.  A part whose data is in no file is replaced by one line saying
why.
"""

import argparse
import csv
import os
import sys
import traceback

if __package__ in (None, ""):  # run as a script: make `analysis` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib.pyplot as plt  # noqa: E402

from analysis import figures, sections, stats  # noqa: E402
from analysis.reader import Result  # noqa: E402
from analysis.render import Document, write  # noqa: E402
from analysis.sections import EPS, SAE, Skip  # noqa: E402
from analysis.vocab import Vocab, find_encoder, show_token  # noqa: E402

ROOT_KEYS = ("model", "model_checksum", "tokens_file", "tokens_checksum", "n_contexts", "ctx",
             "seed", "bos", "bos_token_id", "scope", "position", "window", "samples",
             "interventions", "latent_noise_sigma", "saegap_version", "command_line", "created",
             "ranks", "complete")
REQUIRED_ROOT = ("model", "model_checksum", "tokens_file", "n_contexts", "ctx", "seed", "bos",
                 "scope", "samples", "saegap_version", "command_line", "created")
SITE_KEYS = ("sae_path", "architecture", "basis", "cfg_generation", "d_in", "d_sae",
             "normalize_activations", "measured_tokens")
DPI = 130


# ---------------------------------------------------------------------------- formatting

def num(x, digits=3):
    """A number for a table: 3 significant digits, 'n/a' when absent or not finite."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "%.*g" % (digits, x) if x == x and abs(x) != float("inf") else "n/a"


def pm(mse):
    """'mean ± se' from a stats.mean_se triple."""
    if mse is None:
        return "n/a"
    m, se, _ = mse
    return "%s ± %s" % (num(m), num(se, 2))


def ci(rci):
    """'ratio [lo, hi]' from a stats.ratio_ci tuple."""
    if rci is None:
        return "n/a"
    r, lo, hi, _ = rci
    return "%s [%s, %s]" % (num(r), num(lo), num(hi))


# ---------------------------------------------------------------------------- context

class Context:
    """What every section needs: the result, output folder, vocabulary, focus site."""

    def __init__(self, result, outdir, vocab=None, site=None, strict=False, index=None):
        self.r = result
        self.index = index  # position among several results (None: the only one)
        self.outdir = outdir
        self.vocab = vocab
        self.site = sections.focus_site(result, site) if result.sites else None
        self.strict = strict
        self.pngs = []

    def save(self, fig, name):
        path = os.path.join(self.outdir, name + ".png")
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        self.pngs.append(path)
        return path


def describe_run(r):
    """One phrase for what a run measured: 'scope all, 1 sample' or 'scope position at
    position 32, window 16, 32 samples'."""
    p = r.provenance
    where = "scope %s" % p.get("scope", "?")
    if p.get("scope") == "position":
        where += " at position %s, window %s" % (p.get("position"), p.get("window"))
    n = p.get("samples", 1)
    return "%s, %s sample%s" % (where, n, "" if n == 1 else "s")


def attempt(doc, ctxs, what, fn):
    """Run one section on the first result that holds its data (ctxs in the order given);
    a Skip (data absent) from every one becomes its one line.  Any other error is a bug:
    strict (tests) re-raises it, otherwise the report says so and goes on."""
    reasons = []
    for k, ctx in enumerate(ctxs):
        part = Document(doc.title)
        try:
            fn(part, ctx)
        except Skip as s:
            reasons.append((ctx, str(s)))
            continue
        except Exception as e:  # noqa: BLE001 - a report must not die on one figure
            if ctx.strict:
                raise
            traceback.print_exc()
            doc.skip(what, "failed with %s: %s (a bug; please report it)" % (type(e).__name__, e))
            return
        if len(ctxs) > 1 and k > 0:
            # under the part's heading: which file, when it is not the first
            at = 1 if part.blocks and part.blocks[0][0] == "h" else 0
            part.blocks.insert(at, ("p", "From %s (%s)." % (os.path.basename(ctx.r.path),
                                                            describe_run(ctx.r))))
        doc.blocks += part.blocks
        return
    if len(reasons) == 1:
        doc.skip(what, reasons[0][1])
    else:
        doc.skip(what, "; ".join("%s: %s" % (os.path.basename(c.r.path), why.rstrip("."))
                                 for c, why in reasons))


# ---------------------------------------------------------------------------- sections

def add_provenance(doc, ctx):
    r = ctx.r
    doc.heading("Data" if ctx.index is None else "Data: %s (%s)" % (os.path.basename(r.path),
                                                                  describe_run(r)))
    doc.para("Where these numbers come from: the root attributes of %s." % os.path.abspath(r.path))
    rows = []
    for k in ROOT_KEYS:
        if k in r.provenance:
            rows.append([k, r.provenance[k]])
        elif k in REQUIRED_ROOT:
            rows.append([k, "(not recorded in the file)"])
    doc.table(["attribute", "value"], rows)
    if not r.complete:
        doc.para("WARNING: complete = %s: the run did not finish; units it never wrote read "
                 "as NaN and are left out of every number below." % r.provenance.get("complete"))
    if not r.sites:
        doc.skip("SAE table", "the file has no /sites")
        return
    doc.para("The SAEs, one per site (site = the TransformerLens hook the SAE reads and "
             "replaces):")
    doc.table(["site"] + list(SITE_KEYS),
              [[s] + [r.site_attrs(s).get(k, "n/a") for k in SITE_KEYS] for s in r.sites])


def add_method(doc, ctx):
    doc.heading("How to read this report")
    doc.para(
        "Each SAE replaces its site's activation x, and we measure how much the model's "
        "next-token distribution moves: KL(clean || intervened) in nats per token. "
        "'sae' substitutes the SAE reconstruction x_hat; 'eps_random' substitutes a random "
        "point at the same distance ||x_hat - x|| from x. If SAE errors were no worse than "
        "random errors of the same size, the ratio sae / eps_random would be about 1.")
    doc.para(
        "Standard errors are the sample standard deviation (ddof 1) over measured tokens "
        "divided by sqrt(number of tokens). Ratios are ratios of means over the tokens measured "
        "for both interventions; their 95%% confidence intervals come from a per-context "
        "(cluster) percentile bootstrap: contexts resampled with replacement, %d resamples, "
        "NumPy default_rng seed %d. Random interventions run with several samples per token "
        "are averaged per token first." % (stats.BOOT_RESAMPLES, stats.BOOT_SEED))
    if ctx.site:
        doc.para("Single-site parts (examples, top tokens, z-scores) use %s (--site to "
                 "choose another)." % ctx.site)


def add_headline(doc, ctx):
    rows = sections.headline(ctx.r)
    doc.heading("Headline")
    doc.para("Per site: how much each substitution moves the next-token distribution, how "
             "many times more the SAE moves it than a random error of the same size, and the "
             "usual SAE quality scores stored in the file.")
    doc.table(["site", "tokens", "KL sae", "KL eps_random", "KL ratio sae/eps_random [95% CI]",
               "ΔCE ratio sae/eps_random [95% CI]", "kl_div_score", "ce_loss_score",
               "explained_variance", "mean L0"],
              [[row["site"], row["kl"].get(SAE, (0, 0, "n/a"))[2], pm(row["kl"].get(SAE)),
                pm(row["kl"].get(EPS)), ci(row["ratio"]), ci(row["ce_ratio"]),
                num(row["kl_div_score"]), num(row["ce_loss_score"]),
                num(row["explained_variance"]), num(row["mean_l0"], 4)] for row in rows])
    if any(row["ratio"] and not row["ce_ratio"] for row in rows):
        doc.para("ΔCE ratio n/a: at that site eps_random does not raise the mean next-token CE "
                 "(or CE is absent), so a ratio of CE increases is undefined.")
    ivs = ctx.r.interventions
    doc.para("Mean KL (± standard error) of every intervention run:")
    doc.table(["site"] + ivs, [[row["site"]] + [pm(row["kl"].get(iv)) for iv in ivs]
                               for row in rows])
    write_headline_csv(os.path.join(ctx.outdir, "headline.csv"), rows, ivs)
    fig = figures.overview(rows, ivs)
    doc.figure(ctx.save(fig, "overview"),
               "Mean KL of every intervention at every site (log scale when they span more than 30x; "
               "there a mean of %s nats or less, where the intervention cannot move the output, "
               "is drawn at that floor as an open triangle): the SAE should sit near its "
               "same-size random baselines if its errors are harmless." % figures.tick_text(figures.KL_FLOOR))


def write_headline_csv(path, rows, ivs):
    """The headline numbers as CSV, for a paper table without retyping."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["site", "kl_div_score", "ce_loss_score", "explained_variance", "mean_l0",
                "ratio", "ratio_lo", "ratio_hi", "ce_ratio", "ce_ratio_lo", "ce_ratio_hi"]
        for iv in ivs:
            head += ["kl_%s" % iv, "kl_%s_se" % iv, "kl_%s_n" % iv]
        w.writerow(head)
        for row in rows:
            line = [row["site"], row["kl_div_score"], row["ce_loss_score"],
                    row["explained_variance"], row["mean_l0"]]
            for key in ("ratio", "ce_ratio"):
                line += list(row[key][:3]) if row[key] else ["", "", ""]
            for iv in ivs:
                line += list(row["kl"].get(iv, ("", "", "")))
            w.writerow(line)


def add_kl_hist(doc, ctx):
    data = sections.kl_histograms(ctx.r)
    doc.heading("Distribution of per-token KL")
    doc.figure(ctx.save(figures.kl_histograms(data), "kl_histograms"),
               "How per-token KL is distributed under the SAE substitution and under a random "
               "error of the same size (log count axis); if the whole SAE curve sits to the "
               "right, the gap is not driven by a few outliers. Values above the larger 99.9th "
               "percentile of the two are counted in the last bin; each percentile is in the "
               "table below, each mean above its panel.")
    doc.table(["site", "p99.9 KL sae", "p99.9 KL eps_random", "clamped at", "tokens"],
              [[s, num(d[SAE]["percentile"]), num(d[EPS]["percentile"]), num(d[SAE]["clamp"]),
                d[SAE]["n"]] for s, d in data.items()])


def add_ce(doc, ctx):
    data = sections.ce_differences(ctx.r)
    doc.heading("Next-token loss increase")
    doc.figure(ctx.save(figures.ce_histograms(data), "ce_histograms"),
               "How much worse the model predicts the actual next token after each substitution "
               "(intervened minus clean cross-entropy, per token; dashed lines: means). Both "
               "tails are clamped at the 0.1th and 99.9th percentiles.")
    ivs = ctx.r.interventions
    doc.para("Mean CE increase (± standard error) of every intervention:")
    doc.table(["site"] + ivs, [[s] + [pm(m.get(iv)) for iv in ivs]
                               for s, m in data["means"].items()])


def add_position(doc, ctx):
    data = sections.kl_by_position(ctx.r)
    doc.heading("KL by position")
    doc.figure(ctx.save(figures.kl_by_position(data), "kl_by_position"),
               "Mean KL at each position of the context (substitution at every position): "
               "shows whether the SAE's excess damage depends on how much context precedes "
               "the token.")


def add_window(doc, ctx):
    data = sections.window(ctx.r)
    doc.heading("Single-position intervention")
    doc.figure(ctx.save(figures.window(data), "window"),
               "The activation is replaced at position %d only, and KL is measured there and "
               "at the following positions: a gap that persists shows the SAE's error is not "
               "just errors compounding over many substituted positions. Where the "
               "intervened site cannot reach later positions (a last-layer site), KL there "
               "is 0; on a log axis a mean of %s nats or less is drawn at that floor as an "
               "open triangle." % (data["position"], figures.tick_text(figures.KL_FLOOR)))


def add_examples(doc, ctx):
    data = sections.examples(ctx.r, ctx.site)
    doc.heading("Examples")
    doc.figure(ctx.save(figures.examples(data, ctx.vocab), "examples"),
               "For a few contexts, the clean model's 25 most likely next tokens (black, by "
               "log-probability) and the log-probabilities the model gives the same tokens "
               "after the SAE substitution and after a random error of the same size; the "
               "legend gives each one's KL, to show what a KL of that size looks like.")


def add_gap_recon(doc, ctx):
    data = sections.gap_vs_recon(ctx.r)
    doc.heading("When is the gap large?")
    for metric, sentence in (
            ("cossim", "The per-token KL gap (sae minus eps_random) against how well the SAE "
                       "reconstructs that token (cosine similarity of x_hat with x); red: mean "
                       "gap in equal-count bins with standard errors."),
            ("l0", "The per-token KL gap against the number of active SAE latents (L0) at "
                   "that token; red: binned means with standard errors.")):
        if not any(metric in d for d in data.values()):
            doc.skip("KL gap vs %s" % metric, "no recon/%s in the file" % metric)
            continue
        doc.figure(ctx.save(figures.gap_vs_recon(data, metric), "gap_vs_" + metric), sentence)
    doc.table(["site", "r(gap, cossim)", "Spearman", "r(gap, L0)", "Spearman", "tokens"],
              [[s, num(d.get("cossim", {}).get("pearson")), num(d.get("cossim", {}).get("spearman")),
                num(d.get("l0", {}).get("pearson")), num(d.get("l0", {}).get("spearman")),
                max(v["n"] for v in d.values())] for s, d in data.items()])


def add_correlation(doc, ctx):
    data = sections.correlation(ctx.r)
    doc.heading("Correlation of the gap between layers")
    if data["source"] == "computed":
        doc.para("Note: %s; the matrices below are computed here from the per-token KL over "
                 "the tokens measured at every site." % data["why"])
    doc.figure(ctx.save(figures.correlation(data), "correlation"),
               "Correlation between sites of the per-token KL gap (sae minus eps_random) "
               "over the same tokens: high values mean the tokens one SAE handles badly are "
               "also handled badly by the others, i.e. some tokens are consistently hard.")


def add_tokens(doc, ctx):
    data = sections.top_tokens(ctx.r, ctx.site)
    doc.heading("Tokens with the largest gap")
    vocab_note = ("decoded with %s" % ctx.vocab.path) if ctx.vocab else \
        "shown as ids (no vocabulary for this model: --vocab with its tokenizer.json or encoder.json)"
    doc.figure(ctx.save(figures.top_tokens(data, ctx.vocab), "top_tokens"),
               "Left: the tokens (the current token at the measured position, %s) with the "
               "largest mean KL gap at %s among tokens seen at least %d times, with standard "
               "errors. Right: each token's mean gap against how often it occurs; rare tokens "
               "have noisy means, so a correlation near 0 says rarity does not explain the gap."
               % (vocab_note, data["site"], data["min_count"]))
    t = data["top"]
    doc.table(["rank", "token", "id", "count", "mean gap", "se"],
              [[i + 1, show_token(ctx.vocab, t["id"][i]), int(t["id"][i]), int(t["count"][i]),
                num(t["mean"][i]), num(t["se"][i], 2)] for i in range(t["id"].size)])
    doc.para("Correlation of log token frequency with the token's mean gap (tokens with >= %d "
             "occurrences), per site:" % data["min_count"])
    doc.table(["site", "Pearson r(log count, mean gap)", "tokens"],
              [[s, num(d["freq_r"]), d["n_tokens"]] for s, d in data["per_site"].items()])


def add_zscore(doc, ctx):
    data = sections.zscore(ctx.r, ctx.site)
    doc.heading("How unusual is the SAE's error?")
    if data["items"]:
        doc.figure(ctx.save(figures.zscore_examples(data), "zscore_examples"),
                   "For single tokens, the KL of %d independent random errors of the SAE's "
                   "size (blue) and the SAE's own KL (red line); each panel's title gives how "
                   "many standard deviations the SAE lies above the random mean (z)." % data["samples"])
    where = ("at the intervened position" if data["scope"] == "position"
             else "over all measured tokens")
    doc.figure(ctx.save(figures.zscore_distribution(data), "zscore_distribution"),
               "The z-score of the SAE's KL among the random draws, " + where + ": "
               "mass far right of 0 means SAE errors are systematically worse than random "
               "errors of the same size, not only on average.")
    doc.table(["site", "mean z", "median z", "fraction z > 2", "tokens", "z from"],
              [[s, num(d["mean"]), num(d["median"]), num(d["frac_above_2"]), d["n"],
                "sae_kl_zscore" if d["source"] == "file" else "computed from the draws"]
               for s, d in data["summary"].items()])


def add_latent_noise(doc, ctx):
    data = sections.latent_noise(ctx.r)
    doc.heading("L0-preserving noise vs random noise around x_hat")
    doc.figure(ctx.save(figures.grouped_means(data, [SAE, "latent_noise", "sae_eps_random"],
                                              "latent_noise vs sae_eps_random",
                                              [("latent_noise", "sae_eps_random")]),
                        "latent_noise"),
               "Starting from the SAE reconstruction, nudging only its active latents "
               "(latent_noise, same L0) versus adding a random vector of the same size "
               "(sae_eps_random): if SAE latents are directions the model reads, the first "
               "should hurt more (ratio > 1).")
    key = ("latent_noise", "sae_eps_random")
    doc.table(["site", "KL latent_noise", "KL sae_eps_random", "ratio [95% CI]"],
              [[s, pm(d["kl"]["latent_noise"]), pm(d["kl"]["sae_eps_random"]), ci(d["ratio"][key])]
               for s, d in data.items()])


def add_cov_random(doc, ctx):
    data = sections.cov_random(ctx.r)
    doc.heading("A covariance-shaped random baseline")
    doc.figure(ctx.save(figures.grouped_means(data, [SAE, EPS, "cov_random"],
                                              "sae vs eps_random vs cov_random",
                                              [(SAE, EPS), (SAE, "cov_random")]),
                        "cov_random"),
               "Random errors of the SAE's size drawn isotropically (eps_random) or shaped like "
               "the activations' covariance (cov_random): if the gap shrinks with cov_random, "
               "part of it came from comparing against an unrealistically isotropic baseline.")
    doc.table(["site", "KL sae", "KL eps_random", "KL cov_random", "sae/eps_random [95% CI]",
               "sae/cov_random [95% CI]"],
              [[s, pm(d["kl"][SAE]), pm(d["kl"][EPS]), pm(d["kl"]["cov_random"]),
                ci(d["ratio"][(SAE, EPS)]), ci(d["ratio"][(SAE, "cov_random")])]
               for s, d in data.items()])


SECTIONS = (
    ("Headline table", add_headline),
    ("KL histograms", add_kl_hist),
    ("CE difference histograms", add_ce),
    ("Mean KL by position", add_position),
    ("Single-position window", add_window),
    ("Example contexts (intuition figure)", add_examples),
    ("KL gap vs cosine similarity and L0", add_gap_recon),
    ("Layer x layer correlation heatmaps", add_correlation),
    ("Top tokens by KL gap", add_tokens),
    ("eps_random KL distribution and z-scores", add_zscore),
    ("latent_noise vs sae_eps_random", add_latent_noise),
    ("cov_random vs eps_random vs sae", add_cov_random),
)


def build(results, outdir, vocab=None, site=None, strict=False):
    """Make every figure (PNG in outdir) from one Result or a list of them and return
    (Document, [Context])."""
    os.makedirs(outdir, exist_ok=True)
    if isinstance(results, Result):
        results = [results]
    ctxs = [Context(r, outdir, vocab, site, strict, None if len(results) == 1 else k)
            for k, r in enumerate(results)]
    doc = Document("saegap report: %s" % ", ".join(os.path.basename(r.path) for r in results))
    for ctx in ctxs:
        add_provenance(doc, ctx)
    add_method(doc, ctxs[0])
    for what, fn in SECTIONS:
        attempt(doc, ctxs, what, fn)
    return doc, ctxs


def make_report(paths, outdir, vocab_path=None, site=None, strict=False):
    """The command's work on one result file or a list of them (each part from the first
    file that holds its data): returns the Document (tests inspect its skip lines)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    results = [Result(p) for p in paths]
    try:
        first = results[0].provenance
        enc = find_encoder(vocab_path, first.get("model_architecture"), first.get("model"))
        vocab = Vocab(enc) if enc else None
        doc, _ = build(results, outdir, vocab, site, strict)
    finally:
        for r in results:
            r.close()
    write(doc, outdir)
    return doc


def headline_text(csv_path):
    """The headline as a short terminal table (per site: mean KL of sae and eps_random, their
    ratio with its 95% CI, explained variance, L0), read back from headline.csv."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def num(row, key, fmt):
        v = row.get(key, "")
        return fmt % float(v) if v not in ("", None) else "-"

    head = ("site", "KL sae", "KL eps_random", "sae/eps_random [95% CI]", "expl. var", "L0")
    lines = [head]
    for row in rows:
        ratio = "-"
        if row.get("ratio"):
            ratio = "%s [%s, %s]" % (num(row, "ratio", "%.2f"), num(row, "ratio_lo", "%.2f"),
                                     num(row, "ratio_hi", "%.2f"))
        lines.append((row["site"], num(row, "kl_sae", "%.4g"), num(row, "kl_eps_random", "%.4g"), ratio,
                      num(row, "explained_variance", "%.3f"), num(row, "mean_l0", "%.1f")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     .rstrip() for line in lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="The post's figures and tables from a saegap "
                                             "run result file.")
    ap.add_argument("result", nargs="+", help="result file(s) of saegap run (HDF5); with several (e.g. a "
                                               "--scope all run and a --scope position --samples S run), "
                                               "each part comes from the first that holds its data")
    ap.add_argument("-o", "--out", required=True, help="output folder (created)")
    ap.add_argument("--vocab", help="encoder.json / vocab.json / tokenizer.json, or a folder holding one "
                                    "(default: the tokenizer.json / vocab.json / encoder.json in the model folder the "
                                    "result records, when it is there; else for GPT-2 results "
                                    "jobs/demo/tokenizer/encoder.json; else ids)")
    ap.add_argument("--site", help="site for the single-site parts (default: the middle residual-stream site)")
    ap.add_argument("--strict", action="store_true", help="stop on any error (for debugging)")
    a = ap.parse_args(argv)
    doc = make_report(a.result, a.out, a.vocab, a.site, a.strict)
    print("wrote %s/report.md, report.html (%d parts skipped)" % (a.out, len(doc.skips)))
    for s in doc.skips:
        print("  " + s)
    csv_path = os.path.join(a.out, "headline.csv")
    if os.path.exists(csv_path):
        print("\nheadline of %s (mean per-token KL; the post found sae/eps_random 2-4.5x on GPT-2 small):"
              % a.result[0])
        print(headline_text(csv_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
