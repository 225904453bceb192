/* forward.c: the ops and the one layer loop of GPT-2 and GPT-NeoX (see forward.h; what
 * differs between the families is read from the model's config in the loop and the ops). One function per op, outputs
 * first, sizes last; every matmul is a BLIS sgemm through gemm.h. */
#include "forward.h"

#include "error.h"
#include "fastexp.h"
#include "gemm.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- ops ------------------------------------------------------------------------------- */

/* Put before a for loop: its iterations (rows, heads) split over the rank's threads, i.e. the
 * OpenMP team BLIS runs its GEMMs on (its threads would otherwise spin while one thread works).
 * Every iteration is computed on its own, so values do not depend on the thread count. */
#define SG_ROWS_ON_TEAM _Pragma("omp parallel for num_threads(gemm_get_threads()) schedule(static)")

/* embed, pos_embed, resid (N=B*T rows, D): token and position rows, and their sum. Without
 * learned positions (wpe NULL: rotary models) resid is the token row and pos_embed is unused. */
static void encoder_forward(float *embed, float *pos_embed, float *resid, const int32_t *tokens, const float *wte,
                            const float *wpe, size_t B, size_t T, size_t D, float scale) {
    for (size_t b = 0; b < B; b++)
        for (size_t t = 0; t < T; t++) {
            size_t row = (b * T + t) * D;
            const float *we = wte + (size_t)tokens[b * T + t] * D;
            if (!wpe) { /* Gemma-2 scales its embedding by sqrt(D) (hook_embed is the scaled one) */
                for (size_t i = 0; i < D; i++) embed[row + i] = scale == 1.0f ? we[i] : we[i] * scale;
                memcpy(resid + row, embed + row, D * sizeof(float));
                continue;
            }
            const float *pe = wpe + t * D;
            for (size_t i = 0; i < D; i++) {
                embed[row + i] = we[i];
                pos_embed[row + i] = pe[i];
                resid[row + i] = we[i] + pe[i];
            }
        }
}

/* The rotary embedding (GPT-NeoX: the first `rot` dims of each head; Gemma-2: all), in place on
 * the q of every query head and the k of every key/value head of qkv (B*Tq rows of W floats,
 * placed as `lay` says), for positions P + t: the dims rotate in halves (rotate_half, not
 * adjacent pairs): (x_i, x_{i+rot/2}) -> (x_i c - x_{i+rot/2} s, x_{i+rot/2} c + x_i s),
 * angle = position * base^(-2i/rot) (FAMILIES-FACTS sections 1 and 2). Angles and their cosines
 * in double, rounded once to float. */
static void rotary_forward(float *qkv, size_t B, size_t Tq, size_t P, size_t W, size_t NH, size_t NKV, QkvLayout lay,
                           size_t rot, double base) {
    const size_t half = rot / 2;
    /* the cosines and sines of the Tq positions, once for the B contexts and all heads (each row
     * used to recompute its own), with the same expressions: the same bits */
    float *cs = sg_xcalloc(Tq * half * 2, sizeof(float));
    const long n_pos = (long)Tq;
    SG_ROWS_ON_TEAM
    for (long t = 0; t < n_pos; t++) {
        const double pos = (double)(P + (size_t)t);
        for (size_t i = 0; i < half; i++) {
            const double angle = pos * pow(base, -2.0 * (double)i / (double)rot);
            cs[((size_t)t * half + i) * 2] = (float)cos(angle), cs[((size_t)t * half + i) * 2 + 1] = (float)sin(angle);
        }
    }
    const long rows = (long)(B * Tq);
    SG_ROWS_ON_TEAM
    for (long r = 0; r < rows; r++) {
        const float *row_cs = cs + ((size_t)r % Tq) * half * 2;
        float *row = qkv + (size_t)r * W;
        for (size_t i = 0; i < half; i++) {
            const float c = row_cs[2 * i], sn = row_cs[2 * i + 1];
            for (size_t h = 0; h < NH + NKV; h++) {
                float *x = row + (h < NH ? lay.q_base + h * lay.q_stride : lay.k_base + (h - NH) * lay.kv_stride);
                const float lo = x[i], hi = x[i + half];
                x[i] = lo * c - hi * sn;
                x[i + half] = hi * c + lo * sn;
            }
        }
    }
    free(cs);
}

/* out (N,D) = (inp - mean) / sqrt(var + eps) * w + b, biased variance, statistics in double. */
static void layernorm_forward(float *out, const float *inp, const float *w, const float *b, size_t N, size_t D,
                              double eps) {
    const long rows = (long)N;
    SG_ROWS_ON_TEAM
    for (long r = 0; r < rows; r++) {
        const size_t n = (size_t)r;
        const float *x = inp + n * D;
        double mean = 0, var = 0;
        for (size_t i = 0; i < D; i++) mean += x[i];
        mean /= (double)D;
        for (size_t i = 0; i < D; i++) { double d = x[i] - mean; var += d * d; }
        var /= (double)D;
        double rstd = 1.0 / sqrt(var + eps);
        float *o = out + n * D;
        for (size_t i = 0; i < D; i++) o[i] = (float)((x[i] - mean) * rstd) * w[i] + b[i];
    }
}

/* out (N,D) = inp / sqrt(mean(inp^2) + eps) * (1 + w): Gemma-2's RMSNorm (its weight is an
 * offset from one), statistics in double. */
static void rmsnorm_forward(float *out, const float *inp, const float *w, size_t N, size_t D, double eps) {
    const long rows = (long)N;
    SG_ROWS_ON_TEAM
    for (long r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * D;
        double ss = 0;
        for (size_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
        const double rinv = 1.0 / sqrt(ss / (double)D + eps);
        float *o = out + (size_t)r * D;
        for (size_t i = 0; i < D; i++) o[i] = (float)(x[i] * rinv) * (1.0f + w[i]);
    }
}

/* The family's norm: LayerNorm (w, b) or RMSNorm (1 + w). */
static void norm_forward(float *out, const float *inp, const float *w, const float *b, size_t N, size_t D,
                         const Gpt2Config *c) {
    if (c->norm == SG_NORM_RMS_ONE_PLUS) rmsnorm_forward(out, inp, w, N, D, c->layer_norm_epsilon);
    else layernorm_forward(out, inp, w, b, N, D, c->layer_norm_epsilon);
}

/* Causal softmax of the Tq x T scores of one head, in place: row i (position P + i) over columns
 * [0, P + i], zero after. The sums are taken in double in eight lanes of a fixed order. */
SG_VECTOR_CLONES static void softmax_causal(float *A, size_t Tq, size_t T, size_t P, float cap, size_t window) {
    for (size_t i = 0; i < Tq; i++) {
        float *row = A + i * T;
        const size_t n = P + i + 1;
        /* Gemma-2's sliding window: the last `window` positions (itself included) */
        const size_t lo = window && n > window ? n - window : 0;
        if (cap > 0)
#pragma omp simd
            for (size_t s = lo; s < n; s++) row[s] = cap * sg_tanhf(row[s] / cap);
        float mx = row[lo];
#pragma omp simd reduction(max : mx)
        for (size_t s = lo; s < n; s++) mx = row[s] > mx ? row[s] : mx;
#pragma omp simd
        for (size_t s = lo; s < n; s++) row[s] = sg_expf(row[s] - mx);
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        size_t s = lo;
        for (; s + 8 <= n; s += 8)
            for (int k = 0; k < 8; k++) acc[k] += row[s + k];
        for (; s < n; s++) acc[0] += row[s];
        const double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        const float inv = (float)(1.0 / sum);
#pragma omp simd
        for (size_t q = lo; q < n; q++) row[q] *= inv;
        for (size_t q = 0; q < lo; q++) row[q] = 0.0f;
        for (size_t q = n; q < T; q++) row[q] = 0.0f;
    }
}

/* z (B,Tq,Z) head-major (Z = NH Dh) from qkv (B,Tq,W), its heads placed as `lay` says; att
 * (B,NH,Tq,T) causal softmax probabilities, for positions [P, P + Tq), which attend to T = P + Tq
 * positions. With P > 0 the keys and values of positions [0, P) come from pre_qkv
 * (pre_B,pre_T,W), the same layer of the full clean pass (context b of the batch is its context
 * b % pre_B: the batch may hold several copies of it): each head's keys and values are gathered
 * into kv (T rows, as the full pass has them; one buffer per thread), so every GEMM has the full
 * pass's operands and gives its values bit for bit. The B x NH heads are small GEMMs: one head
 * per thread of the rank's team, each on a single-threaded BLIS call, instead of every head
 * split over all threads. cap and window: Gemma-2's score soft-cap and sliding window (0: off). */
static void attention_forward(float *z, float *att, const float *qkv, const float *pre_qkv, size_t pre_B,
                              size_t pre_T, float *kv, size_t B, size_t Tq, size_t P, size_t W, size_t NH,
                              size_t Dh, QkvLayout lay, float scale, float cap, size_t window) {
    const size_t Z = NH * Dh, T = P + Tq, kv_gap = lay.v_base - lay.k_base;
    const long heads = (long)(B * NH);
    SG_ROWS_ON_TEAM
    for (long bh = 0; bh < heads; bh++) {
        const size_t b = (size_t)bh / NH, h = (size_t)bh % NH, kv_head = lay.k_base + h / lay.group * lay.kv_stride;
        const float *q = qkv + b * Tq * W + lay.q_base + h * lay.q_stride;
        const float *k = qkv + b * Tq * W + kv_head, *v = k + kv_gap;
        ptrdiff_t rs_kv = (ptrdiff_t)W;
        if (P > 0) {
            float *kh = kv + (size_t)omp_get_thread_num() * 2 * T * Dh, *vh = kh + T * Dh; /* this thread's */
            /* copies of the batch share the prefix's context */
            const float *pk = pre_qkv + (b % pre_B) * pre_T * W + kv_head;
            for (size_t t = 0; t < T; t++) {
                const float *src = t < P ? pk + t * W : k + (t - P) * W;
                memcpy(kh + t * Dh, src, Dh * sizeof(float));
                memcpy(vh + t * Dh, src + kv_gap, Dh * sizeof(float));
            }
            k = kh, v = vh, rs_kv = (ptrdiff_t)Dh;
        }
        float *A = att + (size_t)bh * Tq * T;
        /* scores (Tq,T) = scale * q (Tq,Dh) @ k^T (Dh,T) */
        gemm_strided_serial(Tq, T, Dh, scale, q, (ptrdiff_t)W, 1, k, 1, rs_kv, 0.0f, A, (ptrdiff_t)T, 1);
        softmax_causal(A, Tq, T, P, cap, window);
        /* z head h (Tq,Dh) = att (Tq,T) @ v (T,Dh) */
        gemm_strided_serial(Tq, Dh, T, 1.0f, A, (ptrdiff_t)T, 1, v, rs_kv, 1, 0.0f, z + b * Tq * Z + h * Dh,
                            (ptrdiff_t)Z, 1);
    }
}

/* out (N) = a + b, or (a + b) + c when c is not NULL (the parallel residual: HF GPT-NeoX adds
 * mlp_out + attn_out, then the stream), in slices on the rank's threads */
static void residual_forward(float *out, const float *a, const float *b, const float *c, size_t N) {
    enum { SLICE = 4096 };
    const long slices = (long)((N + SLICE - 1) / SLICE);
    SG_ROWS_ON_TEAM
    for (long k = 0; k < slices; k++) {
        const size_t i0 = (size_t)k * SLICE, i1 = i0 + SLICE < N ? i0 + SLICE : N;
        if (c)
            for (size_t i = i0; i < i1; i++) out[i] = (a[i] + b[i]) + c[i];
        else
            for (size_t i = i0; i < i1; i++) out[i] = a[i] + b[i];
    }
}

/* out (n) = act(inp) for one slice. gelu_new, the tanh approximation GPT-2 was trained with,
 * as 0.5 x (1 + tanh u) = x / (1 + exp(-2u)): the same function, one exp, no cancellation. */
SG_VECTOR_CLONES static void activation_slice(float *out, const float *inp, size_t n, Gpt2Activation act) {
    const float s = 0.7978845608028654f; /* sqrt(2/pi) */
    switch (act) {
    case SG_ACT_GELU_TANH:
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float x = inp[i];
            out[i] = x / (1.0f + sg_expf(-2.0f * (s * (x + 0.044715f * x * x * x))));
        }
        break;
    case SG_ACT_GELU_ERF:
        for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * 0.7071067811865476f));
        break;
    case SG_ACT_RELU:
        for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0 ? inp[i] : 0.0f;
        break;
    }
}

/* out (N rows of C) = act(inp), times up (N, C) when up is not NULL (Gemma-2's GeGLU), rows on
 * the rank's threads */
static void activation_forward(float *out, const float *inp, const float *up, size_t N, size_t C, Gpt2Activation act) {
    const long rows = (long)N;
    SG_ROWS_ON_TEAM
    for (long r = 0; r < rows; r++) {
        float *o = out + (size_t)r * C;
        activation_slice(o, inp + (size_t)r * C, C, act);
        if (up)
            for (size_t i = 0; i < C; i++) o[i] *= up[(size_t)r * C + i];
    }
}

/* ---- buffers ---------------------------------------------------------------------------- */

/* The buffers' sizes in floats, in the order of acts_ptrs; `slots` per-layer slots (all_layers:
 * the kept layers + 1 shared, or L) */
enum { ACTS_BUFFERS = 16 };
static void acts_sizes(size_t *sizes, const Gpt2Config *c, size_t B_max, size_t T_max, int all_layers, size_t slots,
                       int kv_threads) {
    const size_t N = B_max * T_max, L = all_layers ? slots : 1, LQ = all_layers ? c->n_layer : 1,
                 R = all_layers ? c->n_layer + 1 : 2, D = c->n_embd, NH = c->n_head, F = c->n_inner,
                 W = qkv_width(c), Z = z_width(c);
    const size_t s[ACTS_BUFFERS] = {
        N * D, N * D, R * N * D, L * N * D, LQ * N * W, L * B_max * NH * T_max * T_max, L * N * Z,
        L * N * D, L * N * D, L * N * D, L * N * F, L * N * F, L * N * D, N * D,
        all_layers ? 0 : 2 * T_max * c->head_dim * (size_t)kv_threads, /* kv: suffix passes (work buffers) */
        c->gated_mlp ? L * N * F : 0,                                 /* fc_up: the GeGLU's up projection */
    };
    memcpy(sizes, s, sizeof s);
}

static size_t kept_slots(const Gpt2Config *c, const unsigned char *keep) {
    size_t k = 0;
    for (size_t l = 0; keep && l < c->n_layer; l++) k += keep[l] != 0;
    return keep ? (k < c->n_layer ? k + 1 : k) : c->n_layer;
}

double acts_bytes(const Gpt2Config *c, size_t B_max, size_t T_max, const unsigned char *keep, int all_layers,
                  int threads) {
    size_t sizes[ACTS_BUFFERS];
    acts_sizes(sizes, c, B_max, T_max, all_layers, kept_slots(c, keep), threads);
    double total = 0;
    for (size_t i = 0; i < ACTS_BUFFERS; i++) total += (double)((sizes[i] + 15) / 16 * 16);
    return 4 * total;
}

static void acts_make(Activations *a, const Gpt2Config *c, size_t B_max, size_t T_max, int all_layers,
                      const unsigned char *keep) {
    memset(a, 0, sizeof *a);
    a->B_max = B_max, a->T_max = T_max, a->L = c->n_layer, a->D = c->n_embd, a->NH = c->n_head, a->V = c->vocab_size;
    a->F = c->n_inner, a->Dh = c->head_dim, a->Z = z_width(c), a->W = qkv_width(c);
    a->all_layers = all_layers;
    /* the suffix pass's key/value gather: one (2, T, Dh) buffer per thread of the rank's team */
    a->kv_threads = gemm_get_threads() > omp_get_max_threads() ? gemm_get_threads() : omp_get_max_threads();
    const size_t slots = kept_slots(c, keep);
    if (all_layers) {
        a->slot = sg_xcalloc(a->L ? a->L : 1, sizeof *a->slot);
        for (size_t l = 0, k = 0; l < a->L; l++) a->slot[l] = !keep ? l : keep[l] ? k++ : slots - 1;
    }
    size_t sizes[ACTS_BUFFERS];
    acts_sizes(sizes, c, B_max, T_max, all_layers, slots, a->kv_threads);
    float **ptrs[] = {&a->embed, &a->pos_embed, &a->resid, &a->ln1, &a->qkv, &a->att, &a->z,
                      &a->attn_out, &a->resid_mid, &a->ln2, &a->fc, &a->fc_act, &a->mlp_out, &a->lnf, &a->kv,
                      &a->fc_up};
    _Static_assert(ACTS_BUFFERS == sizeof ptrs / sizeof ptrs[0], "size table out of sync");
    size_t total = 0;
    for (size_t i = 0; i < ACTS_BUFFERS; i++) total += (sizes[i] + 15) / 16 * 16;
    a->block = sg_xcalloc(total, sizeof(float));
    float *p = a->block;
    for (size_t i = 0; i < ACTS_BUFFERS; i++) { *ptrs[i] = p; p += (sizes[i] + 15) / 16 * 16; }
}

void acts_alloc(Activations *a, const Gpt2Config *c, size_t B_max, size_t T_max, int all_layers) {
    acts_make(a, c, B_max, T_max, all_layers, NULL);
}

void acts_alloc_kept(Activations *a, const Gpt2Config *c, size_t B_max, size_t T_max, const unsigned char *keep) {
    acts_make(a, c, B_max, T_max, 1, keep);
}

void acts_free(Activations *a) {
    free(a->block);
    free(a->slot);
    memset(a, 0, sizeof *a);
}

/* ---- the pass ----------------------------------------------------------------------------- */

/* Layers [layer, end) from `stage` of the first; the final norm when end is the last layer. */
static void forward_layers(Activations *a, const Gpt2Model *m, size_t layer, ForwardStage stage, size_t end) {
    const Gpt2Config *c = &m->cfg;
    if (a->prefix && gemm_get_threads() > a->kv_threads)
        sg_fatal("forward", "%d threads, but the suffix pass's buffers were planned for %d", gemm_get_threads(),
                 a->kv_threads);
    size_t B = a->B, T = a->T, N = B * T, D = a->D, NH = a->NH, L = a->L, F = a->F, Z = a->Z, W = a->W;
    const int wt = c->weights_out_in, parallel = c->parallel_residual;
    const QkvLayout lay = qkv_layout(c);
    for (size_t l = layer; l < end; l++) {
        const Gpt2LayerWeights *w = &m->layers[l];
        float *resid = acts_resid(a, l), *resid_next = acts_resid(a, l + 1);
        float *ln1 = acts_layer(a, a->ln1, l, D), *qkv = acts_qkv(a, l);
        float *att = acts_layer(a, a->att, l, NH * (a->P + T));
        float *z = acts_layer(a, a->z, l, Z), *attn_out = acts_layer(a, a->attn_out, l, D);
        float *resid_mid = acts_layer(a, a->resid_mid, l, D);
        float *ln2 = acts_layer(a, a->ln2, l, D), *fc = acts_layer(a, a->fc, l, F);
        float *fc_act = acts_layer(a, a->fc_act, l, F), *fc_up = c->gated_mlp ? acts_layer(a, a->fc_up, l, F) : NULL;
        float *mlp_out = acts_layer(a, a->mlp_out, l, D);
        float scale = c->attn_scale;
        if (c->scale_attn_by_inverse_layer_idx) scale /= (float)(l + 1);
        /* Gemma-2: even layers slide (FAMILIES-FACTS section 2) */
        const size_t window = c->sliding_window && l % 2 == 0 ? c->sliding_window : 0;
        ForwardStage s = l == layer ? stage : SG_STAGE_ATTN;
        switch (s) {
        case SG_STAGE_ATTN:
            norm_forward(ln1, resid, w->ln1_w, w->ln1_b, N, D, c);
            if (w->q_w) { /* Gemma-2's three projections, side by side in the qkv rows (no biases) */
                gemm_strided(N, Z, D, 1.0f, ln1, (ptrdiff_t)D, 1, w->q_w, 1, (ptrdiff_t)D, 0.0f, qkv + lay.q_base,
                             (ptrdiff_t)W, 1);
                gemm_strided(N, (W - Z) / 2, D, 1.0f, ln1, (ptrdiff_t)D, 1, w->k_w, 1, (ptrdiff_t)D, 0.0f,
                             qkv + lay.k_base, (ptrdiff_t)W, 1);
                gemm_strided(N, (W - Z) / 2, D, 1.0f, ln1, (ptrdiff_t)D, 1, w->v_w, 1, (ptrdiff_t)D, 0.0f,
                             qkv + lay.v_base, (ptrdiff_t)W, 1);
            } else {
                gemm_linear(qkv, ln1, w->qkv_w, w->qkv_b, N, D, W, wt);
            }
            if (c->rotary_dims)
                rotary_forward(qkv, B, T, a->P, W, NH, c->n_kv_head, lay, c->rotary_dims, c->rotary_base);
            attention_forward(z, att, qkv, a->prefix ? acts_qkv(a->prefix, l) : NULL,
                              a->prefix ? a->prefix->B : 1, a->prefix ? a->prefix->T : 0, a->kv, B, T, a->P, W, NH,
                              a->Dh, lay, scale, (float)c->attn_softcap, window);
            /* fall through */
        case SG_STAGE_ATTN_PROJ:
            if (c->post_norms) { /* Gemma-2: o_proj, then its RMSNorm (hook_attn_out is after it) */
                gemm_linear(resid_mid, z, w->attn_proj_w, NULL, N, Z, D, wt);
                norm_forward(attn_out, resid_mid, w->post_attn_w, NULL, N, D, c);
            } else {
                gemm_linear(attn_out, z, w->attn_proj_w, w->attn_proj_b, N, Z, D, wt);
            }
            /* fall through */
        case SG_STAGE_ATTN_RESID:
            if (!parallel) residual_forward(resid_mid, resid, attn_out, NULL, N * D);
            /* fall through */
        case SG_STAGE_MLP:
            /* the parallel residual's MLP reads the layer's input, not resid + attn_out */
            norm_forward(ln2, parallel ? resid : resid_mid, w->ln2_w, w->ln2_b, N, D, c);
            gemm_linear(fc, ln2, w->fc_w, w->fc_b, N, D, F, wt);
            if (fc_up) gemm_linear(fc_up, ln2, w->up_w, NULL, N, D, F, wt);
            activation_forward(fc_act, fc, fc_up, N, F, c->activation);
            /* fall through */
        case SG_STAGE_MLP_PROJ:
            if (c->post_norms) { /* Gemma-2: down_proj, then its RMSNorm (hook_mlp_out is after it) */
                gemm_linear(resid_next, fc_act, w->mlp_proj_w, NULL, N, F, D, wt);
                norm_forward(mlp_out, resid_next, w->post_mlp_w, NULL, N, D, c);
            } else {
                gemm_linear(mlp_out, fc_act, w->mlp_proj_w, w->mlp_proj_b, N, F, D, wt);
            }
            /* fall through */
        case SG_STAGE_MLP_RESID:
            if (parallel) residual_forward(resid_next, mlp_out, attn_out, resid, N * D);
            else residual_forward(resid_next, resid_mid, mlp_out, NULL, N * D);
        }
    }
    if (end == L) norm_forward(a->lnf, acts_resid(a, L), m->lnf_w, m->lnf_b, N, D, c);
}

void gpt2_forward_from(Activations *a, const Gpt2Model *m, size_t layer, ForwardStage stage) {
    forward_layers(a, m, layer, stage, a->L);
}

void gpt2_forward_until(Activations *a, const Gpt2Model *m, const int32_t *tokens, size_t B, size_t T, size_t end) {
    if (B > a->B_max || T > a->T_max)
        sg_fatal("forward", "batch (B=%zu, T=%zu) exceeds the planned buffers (B=%zu, T=%zu)", B, T, a->B_max, a->T_max);
    a->B = B, a->T = T, a->prefix = NULL, a->P = 0;
    encoder_forward(a->embed, a->pos_embed, a->resid, tokens, m->wte, m->wpe, B, T, a->D, m->cfg.embed_scale);
    forward_layers(a, m, 0, SG_STAGE_ATTN, end < a->L ? end : a->L);
}

void gpt2_forward(Activations *a, const Gpt2Model *m, const int32_t *tokens, size_t B, size_t T) {
    gpt2_forward_until(a, m, tokens, B, T, a->L);
}

SG_VECTOR_CLONES void sg_softcap(float *x, size_t n, float cap) {
    if (cap > 0)
#pragma omp simd
        for (size_t i = 0; i < n; i++) x[i] = cap * sg_tanhf(x[i] / cap);
}

void gpt2_logits(float *logits, const Activations *a, const Gpt2Model *m, size_t row0, size_t n) {
    /* rows of Vp into the caller's buffer, then compacted to V in place (row i moves to an
     * address <= its own, so a forward pass is safe) */
    size_t V = a->V, Vp = m->vocab_padded;
    gemm_xwt(logits, a->lnf + row0 * a->D, m->wte_padded, n, a->D, Vp);
    for (size_t i = 1; i < n; i++) memmove(logits + i * V, logits + i * Vp, V * sizeof(float));
    sg_softcap(logits, n * V, (float)m->cfg.final_softcap);
}
