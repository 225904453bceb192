/* Site values in each basis (src/sites.c) on a tiny GPT-2 written to a temporary folder
 * (config.json + model.safetensors, random weights with non-zero ln_1 biases and b_V), loaded
 * with model_load and run with gpt2_forward:
 *  - the buffers behind the site names (embed + pos_embed = resid_pre 0, resid_mid = resid_pre +
 *    attn_out, attn_out = z W_O + b_O, ...), computed in the test from the weights it wrote;
 *  - site_read in all 8 bases against closed forms: centered residual values, z minus b_V or
 *    minus b_V + ln_1.bias @ W_V, everything else the HF value bit for bit;
 *  - site_write then site_read round-trips, the mask, and the row mapping of a suffix pass;
 *  - a value read in a basis and written back in the same basis leaves the rest of the pass
 *    unchanged (LayerNorm removes the mean; the bias is added back), while writing it in the
 *    wrong basis does not;
 *  - hook names, basis names and the canonical order.
 * Named cases (check.h) over one fixture (the model and its clean pass); exits non-zero on any failure. */
#include "error.h"
#include "forward.h"
#include "gemm.h"
#include "model.h"
#include "sites.h"

#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { L = 2, D = 8, NH = 2, V = 11, NPOS = 8, B = 2, T = 5, N = B * T };

static double lcg(unsigned *s) { *s = *s * 1103515245u + 12345u; return ((*s >> 8) & 0xffff) / 65536.0 - 0.5; }

/* The weights the test writes, kept for its closed forms. */
typedef struct {
    float wte[V * D], wpe[NPOS * D];
    float ln1_w[L][D], ln1_b[L][D], qkv_w[L][D * 3 * D], qkv_b[L][3 * D], ao_w[L][D * D], ao_b[L][D];
    float ln2_w[L][D], ln2_b[L][D], fc_w[L][D * 4 * D], fc_b[L][4 * D], mo_w[L][4 * D * D], mo_b[L][D];
    float lnf_w[D], lnf_b[D];
} Tiny;

typedef struct {
    char name[64];
    const float *data;
    int ndim;
    size_t shape[2];
} Spec;

static void write_model(const char *folder, Tiny *tw) {
    unsigned s = 12345;
#define FILL(arr, scale, offset)                                                          \
    for (size_t i_ = 0; i_ < sizeof(arr) / sizeof(float); i_++)                           \
        ((float *)(arr))[i_] = (float)((offset) + (scale) * lcg(&s))
    FILL(tw->wte, 2.0, 0.0);
    FILL(tw->wpe, 1.0, 0.0);
    FILL(tw->ln1_w, 0.4, 1.0);
    FILL(tw->ln1_b, 0.6, 0.0);
    FILL(tw->qkv_w, 0.8, 0.0);
    FILL(tw->qkv_b, 1.0, 0.0); /* b_V non-zero */
    FILL(tw->ao_w, 0.8, 0.0);
    FILL(tw->ao_b, 0.4, 0.1); /* mean not 0: attn_out is not centered in the HF basis */
    FILL(tw->ln2_w, 0.4, 1.0);
    FILL(tw->ln2_b, 0.6, 0.0);
    FILL(tw->fc_w, 0.8, 0.0);
    FILL(tw->fc_b, 0.4, 0.0);
    FILL(tw->mo_w, 0.6, 0.0);
    FILL(tw->mo_b, 0.4, -0.1);
    FILL(tw->lnf_w, 0.4, 1.0);
    FILL(tw->lnf_b, 0.4, 0.0);
#undef FILL
    Spec specs[4 + 12 * L];
    size_t n = 0;
#define SPEC(ptr, nd, s0, s1, ...)                                                             \
    do {                                                                                       \
        snprintf(specs[n].name, sizeof specs[n].name, __VA_ARGS__);                            \
        specs[n].data = (ptr), specs[n].ndim = (nd), specs[n].shape[0] = (s0), specs[n].shape[1] = (s1); \
        n++;                                                                                   \
    } while (0)
    SPEC(tw->wte, 2, V, D, "wte.weight");
    SPEC(tw->wpe, 2, NPOS, D, "wpe.weight");
    for (int l = 0; l < L; l++) {
        SPEC(tw->ln1_w[l], 1, D, 0, "h.%d.ln_1.weight", l);
        SPEC(tw->ln1_b[l], 1, D, 0, "h.%d.ln_1.bias", l);
        SPEC(tw->qkv_w[l], 2, D, 3 * D, "h.%d.attn.c_attn.weight", l);
        SPEC(tw->qkv_b[l], 1, 3 * D, 0, "h.%d.attn.c_attn.bias", l);
        SPEC(tw->ao_w[l], 2, D, D, "h.%d.attn.c_proj.weight", l);
        SPEC(tw->ao_b[l], 1, D, 0, "h.%d.attn.c_proj.bias", l);
        SPEC(tw->ln2_w[l], 1, D, 0, "h.%d.ln_2.weight", l);
        SPEC(tw->ln2_b[l], 1, D, 0, "h.%d.ln_2.bias", l);
        SPEC(tw->fc_w[l], 2, D, 4 * D, "h.%d.mlp.c_fc.weight", l);
        SPEC(tw->fc_b[l], 1, 4 * D, 0, "h.%d.mlp.c_fc.bias", l);
        SPEC(tw->mo_w[l], 2, 4 * D, D, "h.%d.mlp.c_proj.weight", l);
        SPEC(tw->mo_b[l], 1, D, 0, "h.%d.mlp.c_proj.bias", l);
    }
    SPEC(tw->lnf_w, 1, D, 0, "ln_f.weight");
    SPEC(tw->lnf_b, 1, D, 0, "ln_f.bias");
#undef SPEC
    char header[16384];
    size_t hl = 0, off = 0;
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        size_t numel = specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1);
        if (specs[i].ndim == 2)
            hl += (size_t)snprintf(header + hl, sizeof header - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}",
                                   specs[i].name, specs[i].shape[0], specs[i].shape[1], off, off + 4 * numel);
        else
            hl += (size_t)snprintf(header + hl, sizeof header - hl,
                                   ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                                   specs[i].name, specs[i].shape[0], off, off + 4 * numel);
        off += 4 * numel;
    }
    hl += (size_t)snprintf(header + hl, sizeof header - hl, "}");
    while (hl % 8) header[hl++] = ' '; /* as the reference writer pads: data 8-byte aligned */
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    FILE *f = fopen(path, "wb");
    uint64_t h64 = hl;
    int ok = f && fwrite(&h64, 8, 1, f) == 1 && fwrite(header, 1, hl, f) == hl;
    for (size_t i = 0; i < n && ok; i++) {
        size_t numel = specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1);
        ok = fwrite(specs[i].data, 4, numel, f) == numel;
    }
    if (!f || !ok || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    snprintf(path, sizeof path, "%s/config.json", folder);
    f = fopen(path, "w");
    if (!f || fprintf(f,
                      "{\"model_type\": \"gpt2\", \"n_layer\": %d, \"n_head\": %d, \"n_embd\": %d, "
                      "\"n_positions\": %d, \"vocab_size\": %d, \"activation_function\": \"gelu_new\"}\n",
                      L, NH, D, NPOS, V) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
}

static void remove_model(const char *folder) {
    char path[128];
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", folder);
    unlink(path);
    rmdir(folder);
}

static double max_abs_diff(const float *p, const float *q, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)p[i] - q[i]));
    return worst;
}

/* The HF value a site holds, from the clean pass's buffers through site_buffer. */
static const float *hf(const Activations *acts, Site s) { return site_buffer(acts, s); }

/* The fixture every case reads: the tiny model on disk (its weights in w), loaded as m, and the
 * clean pass a over `tokens`; folded is b_V + ln_1.bias @ W_V per layer, from w. Cases that
 * write into a put back what they changed. */
static char dir[64];
static Tiny w;
static Gpt2Model m;
static const int32_t tokens[N] = {3, 0, 10, 7, 7, 1, 5, 9, 2, 4};
static Activations a;
static double folded[L][D];

static int fixture_open(void) {
    snprintf(dir, sizeof dir, "/tmp/saegap-test-sites-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    /* BLIS's thread count is set before any op runs, as saegap_run does (without it BLIS
     * reports -1 and the OpenMP loops sized by it ask libgomp for ~2^32 threads) */
    gemm_set_threads(1);
    write_model(dir, &w);
    if (model_load(&m, dir) != 0) {
        fprintf(stderr, "FAIL [setup]: model_load: %s\n", sg_error_message());
        remove_model(dir);
        return -1;
    }
    acts_alloc(&a, &m.cfg, B, T, 1);
    gpt2_forward(&a, &m, tokens, B, T);
    for (int l = 0; l < L; l++)
        for (int j = 0; j < D; j++) {
            double acc = w.qkv_b[l][2 * D + j];
            for (int i = 0; i < D; i++) acc += (double)w.ln1_b[l][i] * w.qkv_w[l][i * 3 * D + 2 * D + j];
            folded[l][j] = acc;
        }
    return 0;
}

static void fixture_close(void) {
    acts_free(&a);
    model_free(&m);
    remove_model(dir);
}

/* the config read back */
static void case_config(void) {
    CHECK(m.cfg.n_layer == L && m.cfg.n_embd == D && m.cfg.n_head == NH && m.cfg.vocab_size == V, "config");
}

/* the folded value bias of model.c: b_V + ln_1.bias @ W_V, per layer */
static void case_value_bias_folded(void) {
    for (int l = 0; l < L; l++)
        for (int j = 0; j < D; j++) {
            double acc = folded[l][j];
            CHECK(fabs(m.value_bias_folded[l * D + j] - acc) < 1e-6 * fmax(1, fabs(acc)),
                  "value_bias_folded[%d][%d] %.9g, expected %.9g", l, j, m.value_bias_folded[l * D + j], acc);
        }
}

/* site_buffer: each name holds the value its definition gives */
static void case_site_buffer(void) {
    Site emb = {SG_SITE_EMBED, 0}, pos = {SG_SITE_POS_EMBED, 0};
    double e1 = 0, e2 = 0, e3 = 0;
    for (int r = 0; r < N; r++)
        for (int i = 0; i < D; i++) {
            e1 = fmax(e1, fabs(hf(&a, emb)[r * D + i] - w.wte[tokens[r] * D + i]));
            e2 = fmax(e2, fabs(hf(&a, pos)[r * D + i] - w.wpe[(r % T) * D + i]));
            e3 = fmax(e3, fabs(hf(&a, (Site){SG_SITE_RESID_PRE, 0})[r * D + i] - (w.wte[tokens[r] * D + i] +
                                                                                   w.wpe[(r % T) * D + i])));
        }
    CHECK(e1 == 0 && e2 == 0 && e3 == 0, "hook_embed/hook_pos_embed/resid_pre 0 differ from wte/wpe: %g %g %g", e1,
          e2, e3);
    for (size_t l = 0; l < L; l++) {
        const float *pre = hf(&a, (Site){SG_SITE_RESID_PRE, l}), *mid = hf(&a, (Site){SG_SITE_RESID_MID, l}),
                    *post = hf(&a, (Site){SG_SITE_RESID_POST, l}), *ao = hf(&a, (Site){SG_SITE_ATTN_OUT, l}),
                    *mo = hf(&a, (Site){SG_SITE_MLP_OUT, l}), *z = hf(&a, (Site){SG_SITE_ATTN_Z, l}),
                    *mp = hf(&a, (Site){SG_SITE_MLP_POST, l});
        double emid = 0, epost = 0, eao = 0, emo = 0, enext = 0;
        for (int r = 0; r < N; r++)
            for (int j = 0; j < D; j++) {
                emid = fmax(emid, fabs(mid[r * D + j] - (pre[r * D + j] + ao[r * D + j])));
                epost = fmax(epost, fabs(post[r * D + j] - (mid[r * D + j] + mo[r * D + j])));
                double y = w.ao_b[l][j], u = w.mo_b[l][j];
                for (int i = 0; i < D; i++) y += (double)z[r * D + i] * w.ao_w[l][i * D + j];
                for (int i = 0; i < 4 * D; i++) u += (double)mp[r * 4 * D + i] * w.mo_w[l][i * D + j];
                eao = fmax(eao, fabs(ao[r * D + j] - y));
                emo = fmax(emo, fabs(mo[r * D + j] - u));
                if (l + 1 < L)
                    enext = fmax(enext, fabs(post[r * D + j] - hf(&a, (Site){SG_SITE_RESID_PRE, l + 1})[r * D + j]));
            }
        CHECK(emid == 0 && epost == 0 && enext == 0, "layer %zu: resid_mid/resid_post/next resid_pre: %g %g %g", l,
              emid, epost, enext);
        CHECK(eao < 1e-5 && emo < 1e-5, "layer %zu: attn_out != z W_O + b_O (%g) or mlp_out != post W_out + b_out (%g)",
              l, eao, emo);
        /* z includes b_V: each head's z is a convex combination of value rows, b_V inside each */
        double zmean_minus_bv = 0;
        for (int j = 0; j < D; j++) {
            double s = 0;
            for (int r = 0; r < N; r++) s += z[r * D + j];
            zmean_minus_bv += fabs(s / N - w.qkv_b[l][2 * D + j]);
        }
        CHECK(zmean_minus_bv > 0.01, "layer %zu: z looks like it has no b_V in it", l);
    }
}

/* site_read in every basis against closed forms */
static void case_site_read_bases(void) {
    float out[N * 4 * D];
    for (size_t i = 0; i < site_count(L); i++) {
        Site s = site_at(i);
        size_t W = site_width(s, &m.cfg);
        CHECK(W == (s.kind == SG_SITE_MLP_POST ? 4u * D : (size_t)D), "site_width");
        const float *x = hf(&a, s);
        char name[64];
        site_name(name, sizeof name, s);
        for (Basis b = 0; b <= SG_BASIS_PROCESSED; b++) {
            /* all rows, and rows [3, 3 + 4) alone: the same values */
            site_read(out, &a, &m, s, b, 0, N);
            float part[4 * 4 * D];
            site_read(part, &a, &m, s, b, 3, 4);
            CHECK(!memcmp(part, out + 3 * W, 4 * W * sizeof(float)), "%s %s: rows read alone differ", name,
                  basis_name(b));
            double err = 0, mean_err = 0;
            int kind; /* 0: HF bit for bit, 1: centered, 2: minus b_V, 3: minus folded */
            if (site_is_residual(s.kind) && (b & SG_BASIS_CENTER_WRITING_WEIGHTS)) kind = 1;
            else if (s.kind == SG_SITE_ATTN_Z && (b & SG_BASIS_FOLD_VALUE_BIASES))
                kind = (b & SG_BASIS_FOLD_LN) ? 3 : 2;
            else kind = 0;
            for (int r = 0; r < N; r++) {
                double mean = 0, omean = 0;
                for (size_t j = 0; j < W; j++) mean += x[r * W + j], omean += out[r * W + j];
                mean /= (double)W, omean /= (double)W;
                for (size_t j = 0; j < W; j++) {
                    double want = x[r * W + j];
                    if (kind == 1) want -= mean;
                    if (kind == 2) want -= w.qkv_b[s.layer][2 * D + j];
                    if (kind == 3) want -= folded[s.layer][j];
                    err = fmax(err, fabs(out[r * W + j] - want));
                }
                mean_err = fmax(mean_err, fabs(omean));
            }
            if (kind == 0)
                CHECK(!memcmp(out, x, N * W * sizeof(float)), "%s in basis %s is not the HF value", name,
                      basis_name(b));
            else
                CHECK(err < 1e-5, "%s in basis %s: max error %g against the closed form (kind %d)", name,
                      basis_name(b), err, kind);
            if (kind == 1) CHECK(mean_err < 1e-6, "%s centered: row mean %g", name, mean_err);
            /* the HF values are not centered: so centering is visible (the test can fail) */
            if (kind == 1 && s.kind != SG_SITE_POS_EMBED) {
                double hmean = 0;
                for (size_t j = 0; j < W; j++) hmean += x[j];
                CHECK(fabs(hmean / (double)W) > 1e-3, "%s: HF value already centered (mean %g)", name,
                      hmean / (double)W);
            }
        }
    }
}

/* site_write: round trips, the mask, and what reaches the HF buffer */
static void case_site_write(void) {
    static float saved[N * 4 * D], x[N * 4 * D], y[N * 4 * D], back[N * 4 * D];
    unsigned char all[N], some[N];
    for (int r = 0; r < N; r++) all[r] = 1, some[r] = (unsigned char)(r % 3 == 1);
    for (size_t i = 2; i < site_count(L); i++) { /* not hook_embed / hook_pos_embed: not writable */
        Site s = site_at(i);
        size_t W = site_width(s, &m.cfg);
        float *buf = site_buffer(&a, s);
        char name[64];
        site_name(name, sizeof name, s);
        memcpy(saved, buf, N * W * sizeof(float));
        for (Basis b = 0; b <= SG_BASIS_PROCESSED; b++) {
            site_read(x, &a, &m, s, b, 0, N);
            site_write(&a, &m, s, b, x, all, 0, N);
            site_read(back, &a, &m, s, b, 0, N);
            CHECK(max_abs_diff(back, x, N * W) < 1e-6, "%s %s: read(write(x)) differs from x by %g", name,
                  basis_name(b), max_abs_diff(back, x, N * W));
            /* the HF buffer: the value itself, or (centered residual bases) its centered form */
            double e = 0;
            for (int r = 0; r < N; r++) {
                double mean = 0;
                for (size_t j = 0; j < W; j++) mean += saved[r * W + j];
                mean /= (double)W;
                int centered = site_is_residual(s.kind) && (b & SG_BASIS_CENTER_WRITING_WEIGHTS);
                for (size_t j = 0; j < W; j++)
                    e = fmax(e, fabs(buf[r * W + j] - (saved[r * W + j] - (centered ? mean : 0))));
            }
            CHECK(e < 1e-6, "%s %s: HF buffer after writing back what was read is off by %g", name, basis_name(b), e);
            memcpy(buf, saved, N * W * sizeof(float));

            /* x + 1 on the rows of the mask only; the others keep their bits */
            for (size_t k = 0; k < N * W; k++) y[k] = x[k] + 1.0f;
            site_write(&a, &m, s, b, y, some, 0, N);
            int untouched = 1;
            double e2 = 0;
            for (int r = 0; r < N; r++) {
                if (!some[r]) {
                    untouched &= !memcmp(buf + r * W, saved + r * W, W * sizeof(float));
                    continue;
                }
                /* read back in the same basis: y, recentered when the basis centers */
                site_read(back, &a, &m, s, b, (size_t)r, 1);
                double ymean = 0;
                for (size_t j = 0; j < W; j++) ymean += y[r * W + j];
                ymean /= (double)W;
                int centered = site_is_residual(s.kind) && (b & SG_BASIS_CENTER_WRITING_WEIGHTS);
                for (size_t j = 0; j < W; j++)
                    e2 = fmax(e2, fabs(back[j] - (y[r * W + j] - (centered ? ymean : 0))));
            }
            CHECK(untouched, "%s %s: site_write changed a row outside the mask", name, basis_name(b));
            CHECK(e2 < 1e-5, "%s %s: masked rows do not read back as written (%g)", name, basis_name(b), e2);
            memcpy(buf, saved, N * W * sizeof(float));
        }
    }
}

/* writing back what was read, through the restart of an intervened pass: the pass's end
 * (ln_f output) is the clean one; the same values written in another basis change it */
static void case_write_back_restart(void) {
    Activations work;
    acts_alloc(&work, &m.cfg, 2 * B, T, 0);
    static float x[N * 4 * D], wrong[N * 4 * D];
    unsigned char all[N];
    memset(all, 1, sizeof all);
    const Site tests[] = {{SG_SITE_RESID_PRE, 0}, {SG_SITE_RESID_PRE, 1}, {SG_SITE_RESID_MID, 0},
                          {SG_SITE_RESID_POST, 1}, {SG_SITE_ATTN_OUT, 1}, {SG_SITE_MLP_OUT, 0},
                          {SG_SITE_ATTN_Z, 0},     {SG_SITE_ATTN_Z, 1},   {SG_SITE_MLP_POST, 1}};
    for (size_t k = 0; k < sizeof tests / sizeof tests[0]; k++) {
        Site s = tests[k];
        size_t W = site_width(s, &m.cfg);
        char name[64];
        site_name(name, sizeof name, s);
        for (Basis b = 0; b <= SG_BASIS_PROCESSED; b++) {
            site_read(x, &a, &m, s, b, 0, N);
            /* two copies of the batch: the second gets the value back, the first is left alone */
            size_t layer;
            ForwardStage st = site_restart_from_clean(&work, &a, s, &m.cfg, 2, 0, T, &layer);
            site_write(&work, &m, s, b, x, all, N, N);
            gpt2_forward_from(&work, &m, layer, st);
            double e0 = max_abs_diff(work.lnf, a.lnf, N * D), e1 = max_abs_diff(work.lnf + N * D, a.lnf, N * D);
            CHECK(e0 < 1e-5 && e1 < 1e-5, "%s %s: ln_f after writing back the value read: copy 0 off by %g, copy 1 by %g",
                  name, basis_name(b), e0, e1);
            /* z read without its bias and written as if it were raw: the bias is missing */
            if (s.kind == SG_SITE_ATTN_Z && (b & SG_BASIS_FOLD_VALUE_BIASES)) {
                st = site_restart_from_clean(&work, &a, s, &m.cfg, 1, 0, T, &layer);
                site_write(&work, &m, s, SG_BASIS_RAW, x, all, 0, N);
                gpt2_forward_from(&work, &m, layer, st);
                double e = max_abs_diff(work.lnf, a.lnf, N * D);
                CHECK(e > 1e-2, "%s: z read in %s and written as raw changes ln_f by only %g", name, basis_name(b), e);
            }
            /* a perturbation does reach ln_f (the comparison above can fail) */
            memcpy(wrong, x, N * W * sizeof(float));
            for (int r = 0; r < N; r++) wrong[r * W + (size_t)r % W] += 0.5f;
            st = site_restart_from_clean(&work, &a, s, &m.cfg, 1, 0, T, &layer);
            site_write(&work, &m, s, b, wrong, all, 0, N);
            gpt2_forward_from(&work, &m, layer, st);
            CHECK(max_abs_diff(work.lnf, a.lnf, N * D) > 1e-3, "%s %s: a perturbation does not reach ln_f", name,
                  basis_name(b));
        }
    }
    acts_free(&work);
}

/* a suffix pass (positions >= P of each context): site_write's rows, and the values
 * equal those of a full pass with the same change */
static void case_suffix_pass(void) {
    const size_t P = 2, Tq = T - P;
    Activations work, full;
    acts_alloc(&work, &m.cfg, B, T, 0);
    acts_alloc(&full, &m.cfg, B, T, 1);
    static float x[N * 4 * D];
    unsigned char mask[N];
    for (int r = 0; r < N; r++) mask[r] = (unsigned char)((size_t)r % T >= P);
    const Site tests[] = {{SG_SITE_RESID_PRE, 1}, {SG_SITE_ATTN_Z, 0}, {SG_SITE_MLP_POST, 0}, {SG_SITE_RESID_MID, 1}};
    for (size_t k = 0; k < sizeof tests / sizeof tests[0]; k++) {
        Site s = tests[k];
        size_t W = site_width(s, &m.cfg);
        char name[64];
        site_name(name, sizeof name, s);
        Basis b = SG_BASIS_PROCESSED;
        site_read(x, &a, &m, s, b, 0, N);
        for (int r = 0; r < N; r++)
            for (size_t j = 0; j < W; j++) x[r * W + j] += (float)(0.25 * ((r + 3 * (int)j) % 5 - 2));
        size_t layer;
        ForwardStage st = site_restart_from_clean(&work, &a, s, &m.cfg, 1, P, Tq, &layer);
        CHECK(work.B == B && work.T == Tq && work.P == P && work.prefix == &a, "suffix pass shape");
        site_write(&work, &m, s, b, x, mask, 0, N);
        /* row (b, t) of the contexts is row (b, t - P) of the pass */
        double e = 0;
        for (int r = 0; r < N; r++) {
            size_t t = (size_t)r % T, c = (size_t)r / T;
            if (t < P) continue;
            float back[4 * D];
            site_read(back, &work, &m, s, b, c * Tq + (t - P), 1);
            /* read back in the processed basis: residual values recentered */
            double mean = 0;
            for (size_t j = 0; j < W; j++) mean += x[r * W + j];
            mean = site_is_residual(s.kind) ? mean / (double)W : 0;
            for (size_t j = 0; j < W; j++) e = fmax(e, fabs(back[j] - (x[r * W + j] - mean)));
        }
        CHECK(e < 1e-5, "%s: suffix pass rows do not hold what was written (%g)", name, e);
        gpt2_forward_from(&work, &m, layer, st);
        /* the full pass with the same change */
        gpt2_forward(&full, &m, tokens, B, T);
        site_write(&full, &m, s, b, x, mask, 0, N);
        size_t layer2;
        ForwardStage st2 = site_restart(s, &layer2);
        gpt2_forward_from(&full, &m, layer2, st2);
        double ef = 0, moved = 0;
        for (size_t c = 0; c < B; c++)
            for (size_t t = P; t < T; t++) {
                ef = fmax(ef, max_abs_diff(work.lnf + (c * Tq + t - P) * D, full.lnf + (c * T + t) * D, D));
                moved = fmax(moved, max_abs_diff(full.lnf + (c * T + t) * D, a.lnf + (c * T + t) * D, D));
            }
        double before = 0;
        for (size_t c = 0; c < B; c++)
            before = fmax(before, max_abs_diff(full.lnf + c * T * D, a.lnf + c * T * D, P * D));
        CHECK(ef < 1e-5, "%s: suffix pass differs from the full pass by %g", name, ef);
        CHECK(moved > 1e-3, "%s: the change did not move ln_f (%g)", name, moved);
        CHECK(before < 1e-6, "%s: positions before P changed (%g): the pass is not causal", name, before);
    }
    acts_free(&work);
    acts_free(&full);
}

/* restart points */
static void case_restart_points(void) {
    size_t layer;
    CHECK(site_restart((Site){SG_SITE_RESID_PRE, 1}, &layer) == SG_STAGE_ATTN && layer == 1, "restart resid_pre");
    CHECK(site_restart((Site){SG_SITE_ATTN_Z, 1}, &layer) == SG_STAGE_ATTN_PROJ && layer == 1, "restart z");
    CHECK(site_restart((Site){SG_SITE_ATTN_OUT, 0}, &layer) == SG_STAGE_ATTN_RESID && layer == 0, "restart attn_out");
    CHECK(site_restart((Site){SG_SITE_RESID_MID, 0}, &layer) == SG_STAGE_MLP && layer == 0, "restart resid_mid");
    CHECK(site_restart((Site){SG_SITE_MLP_POST, 1}, &layer) == SG_STAGE_MLP_PROJ && layer == 1, "restart mlp_post");
    CHECK(site_restart((Site){SG_SITE_MLP_OUT, 1}, &layer) == SG_STAGE_MLP_RESID && layer == 1, "restart mlp_out");
    CHECK(site_restart((Site){SG_SITE_RESID_POST, 1}, &layer) == SG_STAGE_ATTN && layer == 2, "restart resid_post");
}

/* site names: hook names, the canonical order, parsing back, refusals */
static void case_site_names(void) {
    CHECK(site_count(L) == 2 + 7 * L, "site_count");
    static const char *const order[] = {"hook_embed",
                                        "hook_pos_embed",
                                        "blocks.0.hook_resid_pre",
                                        "blocks.0.attn.hook_z",
                                        "blocks.0.hook_attn_out",
                                        "blocks.0.hook_resid_mid",
                                        "blocks.0.mlp.hook_post",
                                        "blocks.0.hook_mlp_out",
                                        "blocks.0.hook_resid_post",
                                        "blocks.1.hook_resid_pre"};
    const Gpt2Config c12 = {.n_layer = 12, .learned_positions = 1, .architecture = "GPT2LMHeadModel"};
    const Gpt2Config cL = {.n_layer = L, .learned_positions = 1, .architecture = "GPT2LMHeadModel"};
    for (size_t i = 0; i < site_count(12); i++) {
        Site s = site_at(i), p;
        char name[64];
        site_name(name, sizeof name, s);
        if (i < sizeof order / sizeof order[0])
            CHECK(!strcmp(name, order[i]), "site %zu is %s, expected %s", i, name, order[i]);
        sg_error_clear();
        CHECK(site_parse(&p, name, &c12, "--sites") == 0 && p.kind == s.kind && (p.layer == s.layer || i < 2),
              "%s does not parse back: %s", name, sg_error_message());
        CHECK(site_index(s) == i, "site_index(%s) = %zu, expected %zu", name, site_index(s), i);
    }
    static const char *const bad[] = {"blocks.2.hook_resid_pre", "blocks.x.hook_resid_pre", "hook_resid_pre",
                                      "blocks.0.hook_embed",     "blocks.0.hook_z",         "blocks.-1.hook_mlp_out",
                                      "blocks..hook_mlp_out",    "blocks.0.attn.hook_z.",   ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Site p;
        sg_error_clear();
        int rc = site_parse(&p, bad[i], &cL, "job.txt");
        const char *msg = sg_error_message();
        char quoted[80];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        CHECK(rc == -1 && !strncmp(msg, "job.txt: ", 9) && strstr(msg, quoted), "site '%s': rc %d, \"%s\"", bad[i],
              rc, msg);
    }
    sg_error_clear();
    Site p;
    CHECK(site_parse(&p, "blocks.2.hook_resid_pre", &cL, "x") == -1 &&
              strstr(sg_error_message(), "layer 2 does not exist (the model has 2 layers, 0..1)"),
          "layer out of range: \"%s\"", sg_error_message());
    sg_error_clear();
}

/* Pythia (parallel residual, rotary): no hook_resid_mid, no hook_pos_embed; the rest exist */
static void case_site_names_neox(void) {
    Site p;
    const Gpt2Config neox = {.family = SG_FAMILY_NEOX, .n_layer = 2, .parallel_residual = 1,
                             .architecture = "GPTNeoXForCausalLM"};
    CHECK(site_parse(&p, "blocks.1.hook_resid_mid", &neox, "job.txt") == -1 &&
              strstr(sg_error_message(), "job.txt: site 'blocks.1.hook_resid_mid' does not exist in GPTNeoXForCausalLM") &&
              strstr(sg_error_message(), "parallel"),
          "resid_mid on a parallel model: \"%s\"", sg_error_message());
    sg_error_clear();
    CHECK(site_parse(&p, "hook_pos_embed", &neox, "x") == -1 && strstr(sg_error_message(), "rotary"),
          "pos_embed on a rotary model: \"%s\"", sg_error_message());
    sg_error_clear();
    size_t n_neox = 0;
    for (size_t i = 0; i < site_count(2); i++) {
        char name[64];
        site_name(name, sizeof name, site_at(i));
        if (site_parse(&p, name, &neox, "x") == 0) n_neox++;
        sg_error_clear();
    }
    CHECK(n_neox == 1 + 6 * 2, "Pythia has %zu sites of the canonical list, expected 13", n_neox);
}

/* basis names and flags: round trips, any order of the flags, refusals */
static void case_basis_names(void) {
    static const char *const names[8] = {"raw",
                                         "center_writing_weights",
                                         "fold_ln",
                                         "center_writing_weights+fold_ln",
                                         "fold_value_biases",
                                         "center_writing_weights+fold_value_biases",
                                         "fold_ln+fold_value_biases",
                                         "processed"};
    for (Basis b = 0; b < 8; b++) {
        Basis q = 99;
        CHECK(!strcmp(basis_name(b), names[b]), "basis_name(%u) = %s", b, basis_name(b));
        CHECK(basis_parse(names[b], &q) == 0 && q == b, "basis_parse(%s) = %u", names[b], q);
    }
    for (int i = 0; i < SG_BASIS_FLAG_COUNT; i++) {
        Basis q = 99;
        CHECK(basis_parse(basis_flag_name(i), &q) == 0 && q == basis_flag_bit(i), "flag %d", i);
    }
    CHECK(SG_BASIS_CENTER_WRITING_WEIGHTS == basis_flag_bit(0) && SG_BASIS_FOLD_LN == basis_flag_bit(1) &&
              SG_BASIS_FOLD_VALUE_BIASES == basis_flag_bit(2),
          "flag bits");
    Basis q = 99;
    CHECK(basis_parse("fold_value_biases+center_writing_weights", &q) == 0 && q == 5, "any order: %u", q);
    CHECK(basis_parse("center_writing_weights+fold_ln+fold_value_biases", &q) == 0 && q == SG_BASIS_PROCESSED,
          "all three flags");
    static const char *const bad_basis[] = {"",          "fold_ln+",         "+fold_ln", "fold_ln+fold_ln",
                                            "Fold_ln",   "processed+fold_ln", "fold",     "fold_ln++fold_value_biases",
                                            "raw+fold_ln"};
    for (size_t i = 0; i < sizeof bad_basis / sizeof bad_basis[0]; i++) {
        q = 99;
        CHECK(basis_parse(bad_basis[i], &q) == -1 && q == 99, "basis '%s' accepted as %u", bad_basis[i], q);
    }
}

int main(int argc, char **argv) {
    if (fixture_open() != 0) return 1;
    static const CheckCase CASES[] = {
        CASE(config),
        CASE(value_bias_folded),
        CASE(site_buffer),
        CASE(site_read_bases),
        CASE(site_write),
        CASE(write_back_restart),
        CASE(suffix_pass),
        CASE(restart_points),
        CASE(site_names),
        CASE(site_names_neox),
        CASE(basis_names),
    };
    int rc = check_run_cases("test_sites", CASES, CHECK_COUNT(CASES), argc, argv);
    fixture_close();
    return rc;
}
