/* metrics.c: KL(clean || intervened) and CE per token (see metrics.h). */
#include "metrics.h"

#include "error.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

/* expf of (l - max) <= 0 is exact to ~1 ulp (6e-8 relative), and the sum is kept in double:
 * the log-sum-exp is accurate to ~1e-7 absolute, far inside what float32 logits carry, at a
 * fraction of double exp's cost (it runs over the whole vocabulary for every token and
 * intervention). */
double metrics_lse(const float *l, size_t V) {
    float mx = l[0];
    for (size_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    /* four partial sums in a fixed order: same result every run, shorter dependency chains */
    double s[4] = {0, 0, 0, 0};
    size_t v = 0;
    for (; v + 4 <= V; v += 4)
        for (int k = 0; k < 4; k++) s[k] += expf(l[v + k] - mx);
    for (; v < V; v++) s[0] += expf(l[v] - mx);
    return mx + log((s[0] + s[1]) + (s[2] + s[3]));
}

void metrics_clean(double *lse, float *p, double *p_sum, const float *logits, size_t n, size_t V) {
    for (size_t r = 0; r < n; r++) {
        const float *l = logits + r * V;
        lse[r] = metrics_lse(l, V);
        double s = 0;
        for (size_t v = 0; v < V; v++) {
            p[r * V + v] = (float)exp((double)l[v] - lse[r]);
            s += p[r * V + v];
        }
        p_sum[r] = s;
    }
}

void metrics_kl_ce(double *kl, double *ce, const float *logits_clean, const float *p_clean, const double *lse_clean,
                   const double *p_sum, const float *logits_iv, const int32_t *next, size_t n, size_t V) {
    for (size_t r = 0; r < n; r++) {
        const float *lc = logits_clean + r * V, *li = logits_iv + r * V, *p = p_clean + r * V;
        double lse_i = metrics_lse(li, V);
        /* sum p (lc - lse_c - li + lse_i) */
        double a[4] = {0, 0, 0, 0};
        size_t v = 0;
        for (; v + 4 <= V; v += 4)
            for (int k = 0; k < 4; k++) a[k] += (double)p[v + k] * ((double)lc[v + k] - li[v + k]);
        for (; v < V; v++) a[0] += (double)p[v] * ((double)lc[v] - li[v]);
        double k = ((a[0] + a[1]) + (a[2] + a[3])) + (lse_i - lse_clean[r]) * p_sum[r];
        /* identical distributions can round to -1e-12; anything more negative is left visible */
        kl[r] = k < 0 && k > -1e-9 ? 0.0 : k;
        ce[r] = next[r] >= 0 ? lse_i - li[next[r]] : NAN;
    }
}

typedef struct {
    double *kl, *ce;
    const float *logits_clean, *p_clean, *logits_iv;
    const double *lse_clean, *p_sum;
    const int32_t *next;
    size_t n, V;
} KlRows;

static void kl_rows_run(const KlRows *a) {
    metrics_kl_ce(a->kl, a->ce, a->logits_clean, a->p_clean, a->lse_clean, a->p_sum, a->logits_iv, a->next, a->n,
                  a->V);
}

static void *kl_rows_thread(void *arg) {
    kl_rows_run(arg);
    return NULL;
}

#define KL_MAX_THREADS 256

void metrics_kl_ce_threads(int threads, double *kl, double *ce, const float *logits_clean, const float *p_clean,
                           const double *lse_clean, const double *p_sum, const float *logits_iv,
                           const int32_t *next, size_t n, size_t V) {
    size_t T = threads < 1 ? 1 : (size_t)threads;
    if (T > KL_MAX_THREADS) T = KL_MAX_THREADS;
    if (T > n) T = n;
    if (T <= 1) {
        metrics_kl_ce(kl, ce, logits_clean, p_clean, lse_clean, p_sum, logits_iv, next, n, V);
        return;
    }
    KlRows part[KL_MAX_THREADS];
    pthread_t tid[KL_MAX_THREADS];
    for (size_t t = 0; t < T; t++) {
        size_t r0 = n * t / T, r1 = n * (t + 1) / T;
        part[t] = (KlRows){kl + r0, ce + r0, logits_clean + r0 * V, p_clean + r0 * V, logits_iv + r0 * V,
                           lse_clean + r0, p_sum + r0, next + r0, r1 - r0, V};
    }
    /* thread 0's share runs here; the others on new threads (a few tens of microseconds each,
     * against milliseconds of work per share) */
    for (size_t t = 1; t < T; t++) {
        int e = pthread_create(&tid[t], NULL, kl_rows_thread, &part[t]);
        if (e != 0) sg_fatal("threads", "cannot start a thread for the KL/CE reduction: %s", strerror(e));
    }
    kl_rows_run(&part[0]);
    for (size_t t = 1; t < T; t++) pthread_join(tid[t], NULL);
}
