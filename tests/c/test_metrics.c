/* KL(clean || intervened) and CE per token (src/metrics.c) against closed forms computed here in
 * double: a two-token vocabulary with known logits, identical distributions (KL exactly 0),
 * logits shifted by a constant (same distribution: KL 0, same CE), random vocabularies of odd
 * sizes, the clean-pass cache (lse, p, p_sum), and the block reduction the fused unembedding uses. Named cases (check.h); exits non-zero on any failure. */
#include "gemm.h"
#include "metrics.h"

#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double lcg(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 65536.0 - 0.5; }

/* log-sum-exp of a row in double */
static double ref_lse(const float *l, size_t V) {
    double mx = l[0], s = 0;
    for (size_t v = 1; v < V; v++) mx = fmax(mx, l[v]);
    for (size_t v = 0; v < V; v++) s += exp((double)l[v] - mx);
    return mx + log(s);
}
/* KL(softmax(lc) || softmax(li)) in double */
static double ref_kl(const float *lc, const float *li, size_t V) {
    double a = ref_lse(lc, V), b = ref_lse(li, V), k = 0;
    for (size_t v = 0; v < V; v++) {
        double lp = lc[v] - a, lq = li[v] - b;
        k += exp(lp) * (lp - lq);
    }
    return k;
}

/* metrics_clean + metrics_kl_ce on n rows of V; kl and ce out */
static void run(double *kl, double *ce, const float *lc, const float *li, const int32_t *next, size_t n, size_t V) {
    double *lse = malloc(n * sizeof *lse), *ps = malloc(n * sizeof *ps);
    float *p = malloc(n * V * sizeof *p);
    metrics_clean(lse, p, ps, lc, n, V);
    metrics_kl_ce(kl, ce, lc, p, lse, ps, li, next, n, V);
    free(lse), free(ps), free(p);
}

/* two tokens: p = (1/2, 1/2), q = (1/4, 3/4): KL = ln(4/3) / 2, CE(1) = ln(4/3), CE(0) = ln 4 */
static void case_two_tokens(void) {
    const float lc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float li[4] = {0.0f, (float)log(3.0), 0.0f, (float)log(3.0)};
    const int32_t next[2] = {1, 0};
    double kl[2], ce[2];
    run(kl, ce, lc, li, next, 2, 2);
    CHECK(fabs(kl[0] - 0.5 * log(4.0 / 3.0)) < 1e-7 && kl[1] == kl[0], "KL((1/2,1/2) || (1/4,3/4)) = %.12g, expected %.12g",
          kl[0], 0.5 * log(4.0 / 3.0));
    CHECK(fabs(ce[0] - log(4.0 / 3.0)) < 1e-7, "CE of the 3/4 token = %.12g, expected %.12g", ce[0], log(4.0 / 3.0));
    CHECK(fabs(ce[1] - log(4.0)) < 1e-7, "CE of the 1/4 token = %.12g, expected %.12g", ce[1], log(4.0));
}

/* two tokens, many logit pairs, against double. KL may come out a little below 0 for
 * nearly equal distributions: the log-sum-exps are accurate to ~1e-7 (metrics.c) and only
 * values above -1e-9 are clamped to 0, so the bound is -1e-7 */
static void case_two_token_pairs(void) {
    static const float pairs[][4] = {
        {0, 0, 1, -1},     {2.5f, -1, -1, 2.5f}, {10, 0, 0, 10},   {-30, 5, 5, -30}, {0, 20, 1, 0},
        {100, 101, 3, 3},  {-7, -7.5f, 0, 1e-3f}, {1e4f, 0, 0, 1e4f}, {0.1f, 0.2f, 0.3f, 0.4f}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const float *lc = pairs[i], *li = pairs[i] + 2;
        for (int32_t t = 0; t < 2; t++) {
            double kl, ce;
            run(&kl, &ce, lc, li, &t, 1, 2);
            double want_kl = ref_kl(lc, li, 2), want_ce = ref_lse(li, 2) - li[t];
            double tol = 1e-6 * (1 + fabs(lc[0] - li[0]) + fabs(lc[1] - li[1]));
            CHECK(fabs(kl - want_kl) < tol && kl > -1e-7, "clean (%g, %g) iv (%g, %g): KL %.12g, expected %.12g",
                  lc[0], lc[1], li[0], li[1], kl, want_kl);
            CHECK(fabs(ce - want_ce) < 1e-6 * (1 + fabs(want_ce)), "clean (%g, %g) iv (%g, %g) next %d: CE %.12g, expected %.12g",
                  lc[0], lc[1], li[0], li[1], t, ce, want_ce);
        }
    }
}

/* the closed form of two tokens: KL = p ln(p/q) + (1-p) ln((1-p)/(1-q)), p = sigmoid(a-b) */
static void case_two_token_sigmoid(void) {
    const float lc[2] = {1.25f, -0.75f}, li[2] = {-0.5f, 0.5f};
    double p = 1 / (1 + exp(-2.0)), q = 1 / (1 + exp(1.0));
    double want = p * log(p / q) + (1 - p) * log((1 - p) / (1 - q)), kl, ce;
    int32_t t = 1;
    run(&kl, &ce, lc, li, &t, 1, 2);
    CHECK(fabs(kl - want) < 1e-7, "sigmoid closed form: KL %.12g, expected %.12g", kl, want);
    CHECK(fabs(ce + log(1 - q)) < 1e-7, "sigmoid closed form: CE %.12g, expected %.12g", ce, -log(1 - q));
}

/* random vocabularies of odd sizes: lse, the clean cache, KL and CE against double */
static void case_random_vocabularies(void) {
    static const size_t Vs[] = {1, 2, 3, 7, 8, 15, 16, 17, 511, 512, 513, 1037, 50257};
    unsigned s = 99;
    for (size_t k = 0; k < sizeof Vs / sizeof Vs[0]; k++) {
        const size_t V = Vs[k], n = 3;
        float *lc = malloc(n * V * 4), *li = malloc(n * V * 4), *p = malloc(n * V * 4);
        for (size_t i = 0; i < n * V; i++) {
            lc[i] = (float)(8 * lcg(&s) + (i % V == 0 ? 3 : 0));
            li[i] = lc[i] + (float)(2 * lcg(&s));
        }
        double lse[3], ps[3], kl[3], ce[3];
        int32_t next[3] = {0, (int32_t)(V - 1), -1};
        metrics_clean(lse, p, ps, lc, n, V);
        metrics_kl_ce(kl, ce, lc, p, lse, ps, li, next, n, V);
        for (size_t r = 0; r < n; r++) {
            const float *c = lc + r * V, *iv = li + r * V;
            double want_lse = ref_lse(c, V), psum = 0, perr = 0;
            CHECK(fabs(lse[r] - want_lse) < 1e-6, "V=%zu: lse %.12g, expected %.12g", V, lse[r], want_lse);
            CHECK(fabs(metrics_lse(c, V) - lse[r]) == 0, "V=%zu: metrics_lse differs from metrics_clean's", V);
            for (size_t v = 0; v < V; v++) {
                psum += p[r * V + v];
                perr = fmax(perr, fabs(p[r * V + v] - exp((double)c[v] - want_lse)) / exp((double)c[v] - want_lse));
            }
            CHECK(perr < 2e-6, "V=%zu: p off by %g relative", V, perr);
            CHECK(ps[r] == psum && fabs(psum - 1) < 1e-5, "V=%zu: p_sum %.12g, sum of p %.12g", V, ps[r], psum);
            double want_kl = ref_kl(c, iv, V);
            CHECK(fabs(kl[r] - want_kl) < 1e-6 && kl[r] > -1e-7, "V=%zu: KL %.12g, expected %.12g", V, kl[r], want_kl);
            if (next[r] >= 0) {
                double want_ce = ref_lse(iv, V) - iv[next[r]];
                CHECK(fabs(ce[r] - want_ce) < 1e-6 * (1 + fabs(want_ce)), "V=%zu: CE %.12g, expected %.12g", V, ce[r],
                      want_ce);
            } else {
                CHECK(isnan(ce[r]), "V=%zu: CE with no next token is %g, not NaN", V, ce[r]);
            }
        }
        /* the block reduction called as the fused unembedding calls it: the same bits, and its
         * log-sum-exp of the intervened row against double */
        for (size_t r = 0; r < n; r++) {
            MetricsRowAcc a;
            metrics_row_start(&a);
            for (size_t v0 = 0; v0 < V; v0 += METRICS_VOCAB_BLOCK)
                metrics_row_block(&a, li + r * V + v0, lc + r * V + v0, p + r * V + v0,
                                  V - v0 < METRICS_VOCAB_BLOCK ? V - v0 : METRICS_VOCAB_BLOCK);
            if (next[r] >= 0) a.next_logit = li[r * V + (size_t)next[r]];
            double kb, cb, lse_i;
            metrics_row_finish(&kb, &cb, &lse_i, &a, lse[r], ps[r], next[r] >= 0);
            CHECK(kb == kl[r] && (next[r] < 0 ? isnan(cb) : cb == ce[r]), "V=%zu row %zu: the block API gives other bits", V, r);
            CHECK(fabs(lse_i - ref_lse(li + r * V, V)) < 1e-6, "V=%zu: online lse %.12g, expected %.12g", V, lse_i,
                  ref_lse(li + r * V, V));
        }
        free(lc), free(li), free(p);
    }
}

/* identical distributions: KL exactly 0, CE = lse - l[next] */
static void case_identical_distributions(void) {
    const size_t V = 1000, n = 4;
    float *l = malloc(n * V * 4), *p = malloc(n * V * 4);
    unsigned s = 5;
    for (size_t i = 0; i < n * V; i++) l[i] = (float)(20 * lcg(&s));
    double lse[4], ps[4], kl[4], ce[4];
    int32_t next[4] = {0, 17, 999, 500};
    metrics_clean(lse, p, ps, l, n, V);
    metrics_kl_ce(kl, ce, l, p, lse, ps, l, next, n, V);
    for (size_t r = 0; r < n; r++) {
        CHECK(kl[r] == 0.0, "row %zu: KL of a distribution with itself is %g", r, kl[r]);
        double want = ref_lse(l + r * V, V) - l[r * V + (size_t)next[r]];
        CHECK(fabs(ce[r] - want) < 1e-6, "row %zu: CE %.12g, expected %.12g", r, ce[r], want);
    }
    free(l), free(p);
}

/* nearly identical distributions (one logit moved by one ulp; true KL ~1e-15): KL within
 * the accuracy of the log-sum-exps, never a visible negative beyond it */
static void case_one_ulp_changes(void) {
    enum { V = 100, R = 50 };
    static float lc[R * V], li[R * V], p[R * V];
    double lse[R], ps[R], kl[R], ce[R];
    int32_t next[R];
    unsigned s = 3;
    for (int i = 0; i < R * V; i++) lc[i] = (float)(10 * lcg(&s)), li[i] = lc[i];
    for (int r = 0; r < R; r++) {
        li[r * V + r % V] = nextafterf(lc[r * V + r % V], r % 2 ? INFINITY : -INFINITY);
        next[r] = r;
    }
    metrics_clean(lse, p, ps, lc, R, V);
    metrics_kl_ce(kl, ce, lc, p, lse, ps, li, next, R, V);
    double lo = 0, hi = 0;
    for (int r = 0; r < R; r++) lo = fmin(lo, kl[r]), hi = fmax(hi, kl[r]);
    CHECK(lo > -1e-8 && hi < 1e-8, "one-ulp changes: KL in [%g, %g], expected within 1e-8 of 0", lo, hi);
}

/* logits shifted by a constant are the same distribution: KL 0, the same CE; shifting
 * the clean logits does not change KL either (values on a 2^-10 grid: shifts are exact) */
static void case_shifted_logits(void) {
    const size_t V = 777, n = 2;
    float *l = malloc(n * V * 4), *sh = malloc(n * V * 4), *iv = malloc(n * V * 4), *shc = malloc(n * V * 4);
    unsigned s = 11;
    for (size_t i = 0; i < n * V; i++) {
        l[i] = (float)(round(16384 * lcg(&s)) / 1024); /* multiples of 2^-10 in [-8, 8] */
        sh[i] = l[i] + (i < V ? 4.0f : -96.0f);        /* exact */
        iv[i] = l[i] + (float)(round(2048 * lcg(&s)) / 1024);
        shc[i] = l[i] + 37.0f; /* exact */
    }
    int32_t next[2] = {3, 700};
    double kl[2], ce[2], kl0[2], ce0[2], kl1[2], ce1[2], kl2[2], ce2[2];
    run(kl0, ce0, l, l, next, n, V);  /* l vs itself */
    run(kl, ce, l, sh, next, n, V);   /* l vs l + c */
    for (size_t r = 0; r < n; r++) {
        CHECK(fabs(kl[r]) < 1e-9, "row %zu: KL(l || l + c) = %g", r, kl[r]);
        CHECK(fabs(ce[r] - ce0[r]) < 1e-9, "row %zu: CE of l + c %.15g, of l %.15g", r, ce[r], ce0[r]);
    }
    run(kl1, ce1, l, iv, next, n, V);   /* l vs iv */
    run(kl2, ce2, shc, iv, next, n, V); /* l + 37 vs iv */
    for (size_t r = 0; r < n; r++) {
        double want = ref_kl(l + r * V, iv + r * V, V);
        CHECK(kl1[r] > 1e-3 && fabs(kl1[r] - want) < 1e-6, "row %zu: KL %.12g, expected %.12g", r, kl1[r], want);
        CHECK(fabs(kl2[r] - kl1[r]) < 1e-6, "row %zu: shifting the clean logits moved KL from %.12g to %.12g", r,
              kl1[r], kl2[r]);
        CHECK(ce2[r] == ce1[r], "row %zu: CE depends on the clean logits", r);
    }
    free(l), free(sh), free(iv), free(shc);
}

/* lse edges: one token, huge and tiny logits (no overflow to Inf, no underflow to -Inf) */
static void case_lse_edges(void) {
    const float one = -3.5f, big[3] = {3e38f, 3e38f, -3e38f}, neg[2] = {-1e30f, -1e30f};
    CHECK(fabs(metrics_lse(&one, 1) + 3.5) < 1e-7, "lse of one logit %.17g", metrics_lse(&one, 1));
    double lb = metrics_lse(big, 3), ln = metrics_lse(neg, 2);
    CHECK(isfinite(lb) && fabs(lb - (3e38 + log(2.0))) <= 1e-7 * 3e38, "lse of huge logits %.17g", lb);
    CHECK(isfinite(ln) && ln == (double)-1e30f + log(2.0), "lse of very negative logits %.17g", ln);
}

int main(int argc, char **argv) {
    gemm_set_threads(1); /* metrics_clean runs on BLIS's thread count: set it first, as saegap_run does */
    static const CheckCase CASES[] = {
        CASE(two_tokens),
        CASE(two_token_pairs),
        CASE(two_token_sigmoid),
        CASE(random_vocabularies),
        CASE(identical_distributions),
        CASE(one_ulp_changes),
        CASE(shifted_logits),
        CASE(lse_edges),
    };
    return check_run_cases("test_metrics", CASES, CHECK_COUNT(CASES), argc, argv);
}
