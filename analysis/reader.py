"""Tidy access to a `saegap run` result file (layout: docs/output-schema.md).

Three lines in a notebook:

    from analysis.reader import Result
    r = Result("out.h5")
    gap = r.kl(r.sites[0], "sae") - r.kl(r.sites[0], "eps_random", samples="mean")

Every per-token array comes back as float64 with NaN where nothing was measured (BOS
tokens when excluded, the last position's CE, units an interrupted run never wrote), so
NaN-aware NumPy (np.nanmean, np.isfinite masks) is all a user needs.  Anything absent from
the file (an intervention not run, no /correlation, no /examples) reads as None, and
`r.missing(...)` says why, so callers can skip instead of crash.
"""

import re

import h5py
import numpy as np

# The 11 interventions in the order the contract lists them (tables and legends use it).
INTERVENTION_ORDER = (
    "sae", "norm_corrected_sae", "sae_norm", "eps_random", "theta_random",
    "theta_random_true_norm", "zero_ablation", "mean_ablation", "latent_noise",
    "sae_eps_random", "cov_random",
)
RECON_METRICS = ("l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1")


def decode(value):
    """HDF5 attribute value -> plain Python (str for bytes, int/float for NumPy scalars,
    lists for arrays), so provenance prints and compares without NumPy noise."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [decode(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def site_sort_key(site):
    """Natural order (blocks.2 before blocks.10): HDF5 lists groups alphabetically."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", site)]


def short_site(site):
    """'blocks.6.hook_resid_pre' -> 'L6 resid_pre' for axis labels that stay readable."""
    m = re.match(r"blocks\.(\d+)\.(.*)$", site)
    if not m:
        return site
    rest = m.group(2).replace("hook_", "")
    return "L%s %s" % (m.group(1), rest)


class Examples:
    """The /examples group: the clean model's top-25 next tokens at one position of a few
    contexts, and each intervened model's log-probs of those same tokens (the post's
    intuition figure)."""

    def __init__(self, group):
        self.contexts = np.asarray(group["contexts"][()], dtype=np.int64)
        self.position = np.asarray(group["position"][()], dtype=np.int64)
        self.token_ids = np.asarray(group["clean/token_ids"][()], dtype=np.int64)
        self.clean_logprobs = np.asarray(group["clean/logprobs"][()], dtype=np.float64)
        self._group = group
        self.sites = sorted((k for k in group.keys()
                             if k not in ("contexts", "position", "clean")
                             and isinstance(group[k], h5py.Group)), key=site_sort_key)

    def __len__(self):
        return len(self.contexts)

    def interventions(self, site):
        """Interventions with example data at this site."""
        if site not in self.sites:
            return []
        return [iv for iv in INTERVENTION_ORDER if iv in self._group[site]]

    def logprobs(self, site, iv):
        """float64 [K, 25]: the intervened model's log-probs of the clean top-25 ids."""
        p = "%s/%s/logprobs" % (site, iv)
        return np.asarray(self._group[p][()], dtype=np.float64) if p in self._group else None

    def kl(self, site, iv):
        """float64 [K]: KL(clean || intervened) at the example position."""
        p = "%s/%s/kl" % (site, iv)
        return np.asarray(self._group[p][()], dtype=np.float64) if p in self._group else None


class Result:
    """A `saegap run` result file, opened read-only.  Use as a context manager or call
    close(); arrays are read on demand (a GPT-2 sweep does not fit in memory at once)."""

    def __init__(self, path):
        self.path = str(path)
        self._f = h5py.File(self.path, "r")
        self.provenance = {k: decode(v) for k, v in self._f.attrs.items()}
        self.sites = sorted((self._f["sites"].keys() if "sites" in self._f else []),
                            key=site_sort_key)
        self.interventions = self._find_interventions()
        self._small = {}  # tokens and clean CE: [n, T], read once (every section needs them)

    # ------------------------------------------------------------------ lifetime
    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "Result(%r: %d sites, %s, scope %s)" % (
            self.path, len(self.sites), ",".join(self.interventions), self.scope)

    # ------------------------------------------------------------------ run settings
    def _find_interventions(self):
        """Interventions that have KL data at some site, in the contract's order (the
        `interventions` attribute says what was asked for, the datasets what exists)."""
        found = set()
        for s in self.sites:
            g = self._f["sites"][s]
            if "kl" in g:
                found.update(g["kl"].keys())
        known = [iv for iv in INTERVENTION_ORDER if iv in found]
        return known + sorted(found - set(known))

    @property
    def scope(self):
        return str(self.provenance.get("scope", "all"))

    @property
    def position(self):
        """The intervened position (scope position), else None."""
        p = self.provenance.get("position", -1)
        return int(p) if self.scope == "position" and p is not None and p >= 0 else None

    @property
    def samples(self):
        return int(self.provenance.get("samples", 1) or 1)

    @property
    def complete(self):
        return int(self.provenance.get("complete", 0)) == 1

    # ------------------------------------------------------------------ raw access
    def has(self, path):
        return path in self._f

    def missing(self, path):
        """Why `path` cannot be read (None when it can): one sentence for a report."""
        path = path.strip("/")
        if path in self._f:
            return None
        parts = path.split("/")
        if parts[0] == "sites" and len(parts) >= 2 and parts[1] not in self.sites:
            return "site %s is not in the file" % parts[1]
        if parts[0] == "sites" and len(parts) == 4 and parts[2] in ("kl", "ce"):
            if parts[3] not in self.interventions:
                return "intervention %s was not run (interventions: %s)" % (
                    parts[3], ", ".join(self.interventions) or "none")
        if parts[0] == "examples":
            return "the file has no /examples (run saegap with --examples K)"
        if parts[0] == "correlation":
            why = "" if self.complete else " (the file is incomplete: complete = 0)"
            return "the file has no /%s%s" % (path, why)
        return "the file has no /%s" % path

    def dataset(self, path, dtype=np.float64):
        """Any dataset as a NumPy array, or None when absent."""
        path = path.strip("/")
        if path not in self._f:
            return None
        return np.asarray(self._f[path][()], dtype=dtype)

    # ------------------------------------------------------------------ per-token data
    @property
    def tokens(self):
        """int64 [n, T]: the contexts measured."""
        return self._cached("tokens", np.int64)

    @property
    def clean_ce(self):
        """float64 [n, T]: clean next-token CE (NaN at the last position and unmeasured)."""
        return self._cached("clean/ce", np.float64)

    def _cached(self, path, dtype):
        if path not in self._small:
            self._small[path] = self.dataset(path, dtype=dtype)
        a = self._small[path]
        return None if a is None else a.copy()

    def kl(self, site, iv, samples="all"):
        """float64 [n, T] (scope all) or [n, W] (scope position), with a trailing [S] axis
        for random interventions run with --samples S > 1; samples="mean" averages that
        axis (the token's expected KL under the random draw).  None if absent."""
        return self._per_token("sites/%s/kl/%s" % (site, iv), samples)

    def ce(self, site, iv, samples="all"):
        """Intervened next-token CE, same shapes as kl()."""
        return self._per_token("sites/%s/ce/%s" % (site, iv), samples)

    def _per_token(self, path, samples):
        a = self.dataset(path)
        if a is not None and samples == "mean" and a.ndim == 3:
            a = mean_over_samples(a)
        return a

    def recon(self, site, metric):
        """float64 [n, T]: a reconstruction metric per token (l2_norm_in, l2_norm_out,
        eps_norm, cossim, mse, l0, l1); always every position, also with scope position."""
        return self.dataset("sites/%s/recon/%s" % (site, metric))

    def zscore(self, site):
        """float64 [n, W]: the file's sae_kl_zscore (scope position with S > 1) or None."""
        return self.dataset("sites/%s/sae_kl_zscore" % site)

    def feature_density(self, site):
        return self.dataset("sites/%s/feature_density" % site)

    def site_attrs(self, site):
        """The site's attributes (SAE description and aggregates) as a plain dict."""
        if site not in self.sites:
            return {}
        return {k: decode(v) for k, v in self._f["sites"][site].attrs.items()}

    @property
    def measured(self):
        """bool [n, T]: the tokens saegap measures, by the documented rule: every position
        except BOS tokens (id = bos_token_id) unless the run used --bos include."""
        tok = self.tokens
        if str(self.provenance.get("bos", "exclude")) == "include":
            return np.ones(tok.shape, dtype=bool)
        bos = self.provenance.get("bos_token_id", 50256)
        return tok != int(bos)

    @property
    def kl_positions(self):
        """int64 [columns]: the context position of each column of the KL arrays:
        0..T-1 for scope all, P..P+W-1 for scope position."""
        T = int(self._f["tokens"].shape[1])
        if self.scope != "position":
            return np.arange(T)
        W = None
        for s in self.sites:
            g = self._f["sites"][s]
            if "kl" in g and len(g["kl"]):
                W = g["kl"][next(iter(g["kl"].keys()))].shape[1]
                break
        if W is None:
            W = int(self.provenance.get("window", 0) or 0)
        return self.position + np.arange(W)

    # ------------------------------------------------------------------ derived groups
    def correlation(self, kind="pearson", iv="sae"):
        """(matrix float64 [K, K], list of K sites) of the per-token KL gap
        KL(iv) - KL(eps_random) between sites, from /correlation; (None, None) if absent."""
        g = "correlation/%s_minus_eps_random" % iv
        if "%s/%s" % (g, kind) not in self._f or "%s/sites" % g not in self._f:
            return None, None
        m = np.asarray(self._f[g][kind][()], dtype=np.float64)
        sites = [decode(s) for s in self._f[g]["sites"][()].tolist()]
        return m, sites

    def correlation_tokens(self, iv="sae"):
        """How many tokens the file's correlation used (attribute `tokens`), or None."""
        g = "correlation/%s_minus_eps_random" % iv
        if g not in self._f:
            return None
        t = self._f[g].attrs.get("tokens")
        return None if t is None else int(t)

    @property
    def examples(self):
        """Examples (the /examples group) or None when the run had no --examples."""
        if "examples" not in self._f or "clean" not in self._f["examples"]:
            return None
        return Examples(self._f["examples"])


def mean_over_samples(a):
    """[n, T, S] -> [n, T]: mean over the draws that are finite (all-NaN stays NaN,
    silently: an unmeasured token is not an error)."""
    fin = np.isfinite(a)
    cnt = fin.sum(axis=-1)
    tot = np.where(fin, a, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
