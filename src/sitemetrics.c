/* sitemetrics.c: recon metrics, the aggregate record and the derived means (sitemetrics.h). */
#include "sitemetrics.h"

#include "error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const RECON_NAME[RC_COUNT] = {"l2_norm_in", "l2_norm_out", "eps_norm", "cossim", "mse", "l0", "l1"};
static const char *const SCORE_NAME[SC_COUNT] = {"kl_div_with_sae", "ce_loss_with_sae", "kl_div_with_ablation",
                                                 "ce_loss_with_ablation", "ce_loss_without_sae"};

const char *recon_name(int metric) { return metric >= 0 && metric < RC_COUNT ? RECON_NAME[metric] : "?"; }
const char *score_name(int slot) { return slot >= 0 && slot < SC_COUNT ? SCORE_NAME[slot] : "?"; }

void record_alloc(SiteRecord *r, size_t d, size_t F) {
    memset(r, 0, sizeof *r);
    r->d = d, r->F = F, r->n_sums = record_sums(d);
    r->sums = sg_xcalloc(r->n_sums, sizeof(ReproSum));
    r->fire = sg_xcalloc(F, sizeof(int32_t));
}

void record_clear(SiteRecord *r) {
    memset(r->sums, 0, r->n_sums * sizeof(ReproSum));
    memset(r->counts, 0, sizeof r->counts);
    memset(r->fire, 0, r->F * sizeof(int32_t));
}

void record_free(SiteRecord *r) {
    free(r->sums), free(r->fire);
    r->sums = NULL, r->fire = NULL;
}

void recon_rows(float *rc, SiteRecord *rec, const float *xs, const float *xhs, const float *fs,
                const unsigned char *measured, size_t N) {
    const size_t d = rec->d, F = rec->F;
    ReproSum *sums = rec->sums;
    for (size_t j = 0; j < N; j++) {
        if (!measured[j]) {
            for (int k = 0; k < RC_COUNT; k++) rc[k * N + j] = NAN;
            continue;
        }
        const float *x = xs + j * d, *xh = xhs + j * d, *f = fs + j * F;
        double xx = 0, hh = 0, xh_dot = 0, ee = 0, l1 = 0;
        int64_t l0 = 0;
        for (size_t i = 0; i < d; i++) {
            xx += (double)x[i] * x[i], hh += (double)xh[i] * xh[i], xh_dot += (double)x[i] * xh[i];
            ee += ((double)xh[i] - x[i]) * ((double)xh[i] - x[i]);
            repro_add_checked(&sums[AG_X_SUM + i], x[i]);
        }
        for (size_t i = 0; i < F; i++) {
            if (f[i] > 0) l0++, rec->fire[i]++;
            l1 += fabs((double)f[i]);
        }
        rc[RC_L2_IN * N + j] = (float)sqrt(xx);
        rc[RC_L2_OUT * N + j] = (float)sqrt(hh);
        rc[RC_EPS * N + j] = (float)sqrt(ee);
        rc[RC_COS * N + j] = xx > 0 && hh > 0 ? (float)(xh_dot / sqrt(xx * hh)) : NAN;
        rc[RC_MSE * N + j] = (float)(ee / (double)d);
        rc[RC_L0 * N + j] = (float)l0;
        rc[RC_L1 * N + j] = (float)l1;
        repro_add_checked(&sums[AG_ERR_SQ], ee), repro_add_checked(&sums[AG_X_SQ], xx);
        repro_add_checked(&sums[AG_XHAT_SQ], hh);
        repro_add_checked(&sums[AG_X_DOT_XHAT], xh_dot), repro_add_checked(&sums[AG_L0], (double)l0);
        rec->counts[CN_MEASURED]++;
    }
}

void zscore_rows(float *z, const float *kl_sae, const float *kl_eps, size_t n, size_t S) {
    for (size_t q = 0; q < n; q++) {
        const float *e = kl_eps + q * S;
        double mean = 0, var = 0;
        for (size_t k = 0; k < S; k++) mean += e[k];
        mean /= (double)S;
        for (size_t k = 0; k < S; k++) var += (e[k] - mean) * (e[k] - mean);
        double sd = sqrt(var / (double)(S - 1));
        z[q] = sd > 0 ? (float)((kl_sae[q] - mean) / sd) : NAN;
    }
}

/* What an aggregate slot sums, for the message when it overflows. */
static void aggregate_name(char *buf, size_t cap, size_t k) {
    static const char *const BASE[AG_KL0] = {"||x - x_hat||^2 (explained_variance)", "||x||^2 (explained_variance)",
                                             "||x_hat||^2 (relative_reconstruction_bias)",
                                             "<x, x_hat> (relative_reconstruction_bias)", "l0 (mean_l0)",
                                             "clean CE (mean_ce_clean)"};
    if (k < AG_KL0) snprintf(buf, cap, "%s", BASE[k]);
    else if (k < AG_CE0) snprintf(buf, cap, "kl/%s (mean_kl_%s)", iv_name((Intervention)(k - AG_KL0)), iv_name((Intervention)(k - AG_KL0)));
    else if (k < AG_SCORE) snprintf(buf, cap, "ce/%s (mean_ce_%s)", iv_name((Intervention)(k - AG_CE0)), iv_name((Intervention)(k - AG_CE0)));
    else if (k < AG_X_SUM) snprintf(buf, cap, "%s (the SAELens scores)", SCORE_NAME[k - AG_SCORE]);
    else snprintf(buf, cap, "x, dimension %zu (explained_variance)", k - AG_X_SUM);
}

void record_check_sums(const ReproSum *sums, size_t n, const char *site) {
    size_t k = repro_first_overflow(sums, n);
    if (k == n) return;
    char what[160];
    aggregate_name(what, sizeof what, k);
    sg_fatal(site, "the sum of %s overflows the exact accumulator (values beyond about 1e25: check the model's and "
                   "the SAE's weights)", what);
}

void site_summary(SiteSummary *v, double *density, const ReproSum *tot, const int64_t *cnt, const int64_t *fire,
                  size_t d, size_t F) {
    memset(v, 0, sizeof *v);
    double Nm = (double)cnt[CN_MEASURED], mean_sq = 0;
    for (size_t i = 0; i < d; i++) {
        double mu = repro_value(tot[AG_X_SUM + i]) / Nm;
        mean_sq += mu * mu;
    }
    /* explained variance, mean-centred: 1 - sum||x - x_hat||^2 / sum_d sum_t (x_d - mean_d)^2 */
    v->explained_variance = 1.0 - repro_value(tot[AG_ERR_SQ]) / (repro_value(tot[AG_X_SQ]) - Nm * mean_sq);
    v->relative_reconstruction_bias = repro_value(tot[AG_XHAT_SQ]) / repro_value(tot[AG_X_DOT_XHAT]);
    v->mean_l0 = repro_value(tot[AG_L0]) / Nm;
    v->mean_ce_clean = repro_value(tot[AG_CE_CLEAN]) / (double)cnt[CN_CE_CLEAN];
    v->measured_tokens = Nm;
    for (int i = 0; i < IV_COUNT; i++) {
        v->mean_kl[i] = repro_value(tot[AG_KL0 + i]) / (double)cnt[CN_KL0 + i];
        v->mean_ce[i] = repro_value(tot[AG_CE0 + i]) / (double)cnt[CN_CE0 + i];
    }
    for (int k = 0; k < SC_COUNT; k++) v->score[k] = repro_value(tot[AG_SCORE + k]) / (double)cnt[CN_SCORE + k];
    v->kl_div_score = (v->score[SC_KL_ZERO] - v->score[SC_KL_SAE]) / v->score[SC_KL_ZERO];
    v->ce_loss_score = (v->score[SC_CE_ZERO] - v->score[SC_CE_SAE]) / (v->score[SC_CE_ZERO] - v->score[SC_CE_CLEAN]);
    for (size_t i = 0; i < F; i++) {
        if (density) density[i] = (double)fire[i] / Nm;
        v->dead_latents += fire[i] == 0;
    }
}
