/* interventions.h: the 11 interventions of CONTRACT.md, as one table of their name, their
 * properties (below) and their formula. Formulas: docs/output-schema.md. All work in the SAE's
 * basis on rows of d_in floats, with norms, dots and the random directions in double. */
#ifndef SAEGAP_INTERVENTIONS_H
#define SAEGAP_INTERVENTIONS_H

#include "rng.h"
#include "sae.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    IV_SAE,
    IV_NORM_CORRECTED_SAE,
    IV_SAE_NORM,
    IV_EPS_RANDOM,
    IV_THETA_RANDOM,
    IV_THETA_RANDOM_TRUE_NORM,
    IV_ZERO_ABLATION,
    IV_MEAN_ABLATION,
    IV_LATENT_NOISE,
    IV_SAE_EPS_RANDOM,
    IV_COV_RANDOM,
    IV_COUNT
} Intervention;

const char *iv_name(Intervention iv);

/* Properties of an intervention (1 or 0), each decided by the table in interventions.c only. */
int iv_is_random(Intervention iv);      /* draws --samples times per token, from Philox streams */
/* Samples per token of iv in a run with --samples `samples`: samples when random, else 1. */
size_t iv_samples(Intervention iv, size_t samples);
/* Its KL gap to eps_random is correlated between sites (CONTRACT.md): with eps_random in the
 * run, /correlation/<iv>_minus_eps_random is written. */
int iv_is_correlated(Intervention iv);
int iv_writes_examples(Intervention iv); /* its top-25 log-probs go under /examples (--examples) */
int iv_needs_decode(Intervention iv);    /* decodes a perturbed latent code: one more SAE decode */
int iv_needs_mean(Intervention iv);      /* needs the site mean: the statistics pass runs */
int iv_needs_cov(Intervention iv);       /* needs the site covariance too (its Cholesky factor) */

/* 1 when an intervention in mask has the property, e.g. iv_any(mask, iv_needs_mean). */
int iv_any(uint32_t mask, int (*property)(Intervention));

/* "all" or a comma list -> bitmask over Intervention. -1 with a pending error naming the
 * unknown name. */
int iv_parse_list(uint32_t *mask, const char *list);

/* What an intervention may read, for rows [0, N) of one batch. */
typedef struct {
    size_t N, d, d_sae;
    const float *x;          /* (N, d) clean activation, SAE basis */
    const float *x_hat;      /* (N, d) SAE(x) */
    const float *f;          /* (N, d_sae) latent code */
    const double *mean;      /* (d) site mean over measured tokens (mean_ablation, cov_random) */
    const double *chol;      /* (d, d) row-major lower L, L L^T = Sigma + 0.01 I (cov_random) */
    double latent_sigma;     /* latent_noise relative size */
    const Sae *sae;
    SaeScratch *sae_work;    /* normalisation state of these rows, from sae_forward */
    const uint32_t *context; /* (N) global context index of each row */
    const uint32_t *position;/* (N) position of each row */
    const unsigned char *active; /* (N) 1 where the row is intervened on */
    uint64_t seed;
    uint32_t site_id, sample;
    float *f_scratch;        /* (N, d_sae) */
    float *x_scratch;        /* (N, d) */
    double *g;               /* (max(d, d_sae)) */
    double *g2;              /* (d) */
} IvBatch;

/* out (N, d): the replacement of x for every active row (inactive rows are left as they are). */
void iv_apply(Intervention iv, float *out, IvBatch *b);

#endif
