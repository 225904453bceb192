/* plan.c: cost model of `saegap run` (see plan.h). The model counts what run.c and sweep.c do:
 *  clean pass per context       T (L (24 D^2 + 4 T D) + 2 D Vp)       (attention scores: full T x T)
 *  intervened pass per sample   T (L_after (24 D^2 + 4 T D)) + Wk 2 D Vp
 *  SAE per token                4 d_in F (+ 2 F d_in per latent_noise / sae_eps_random decode)
 *  KL / CE per recorded row     ~V exponentials and dot products (measured separately)
 * Time = GEMM FLOPs / (measured sgemm rate) + elementwise work / (measured rate), divided over
 * ranks (dynamic queue) but never below the largest unit. */
#include "plan.h"
#include "sweep.h"

#include "error.h"
#include "gemm.h"
#include "interventions.h"
#include "metrics.h"
#include "model.h"
#include "sae.h"
#include "schedule.h"
#include "sites.h"
#include "tokens.h"
#include "contexts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* GFLOP/s of a GPT-2-shaped sgemm (M = 256 rows, K = D, N = 4D) with the current threads. */
static double measure_gemm(size_t D) {
    size_t M = 256, K = D, N = 4 * D;
    float *a = sg_xcalloc(M * K, 4), *b = sg_xcalloc(K * N, 4), *c = sg_xcalloc(M * N, 4);
    for (size_t i = 0; i < M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < K * N; i++) b[i] = (float)(i % 5) * 0.1f;
    gemm_xw_bias(c, a, b, NULL, M, K, N); /* warm-up */
    /* the best of three timings: on a shared machine one timing can catch another job's burst */
    double rate = 0;
    for (int trial = 0; trial < 3; trial++) {
        double t0 = MPI_Wtime(), flops = 0;
        int reps = 0;
        while (MPI_Wtime() - t0 < 0.15 || reps < 3) {
            gemm_xw_bias(c, a, b, NULL, M, K, N);
            flops += 2.0 * (double)(M * K * N);
            reps++;
        }
        double r = flops / (MPI_Wtime() - t0) / 1e9;
        rate = r > rate ? r : rate;
    }
    free(a), free(b), free(c);
    return rate;
}

/* nanoseconds per vocabulary element of the KL/CE reduction (one log-sum-exp + one dot) */
static double measure_kl_ns(size_t V) {
    float *l = sg_xcalloc(V, 4), *p = sg_xcalloc(V, 4);
    for (size_t i = 0; i < V; i++) l[i] = (float)((i * 37) % 101) * 0.05f, p[i] = 1.0f / (float)V;
    double lse = 0, psum = 1, kl, ce;
    int32_t next = 1;
    double t0 = MPI_Wtime();
    int reps = 0;
    while (MPI_Wtime() - t0 < 0.1 || reps < 3) {
        metrics_kl_ce(&kl, &ce, l, p, &lse, &psum, l, &next, 1, V);
        reps++;
    }
    double ns = (MPI_Wtime() - t0) / reps / (double)V * 1e9;
    free(l), free(p);
    return ns;
}

static const char *human(double bytes, char *buf, size_t cap) {
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (bytes >= 1000 && i < 4) bytes /= 1000, i++;
    snprintf(buf, cap, "%.1f %s", bytes, u[i]);
    return buf;
}

static const char *duration(double s, char *buf, size_t cap) {
    if (s < 10) snprintf(buf, cap, "%.1f s", s);
    else if (s < 120) snprintf(buf, cap, "%.0f s", s);
    else if (s < 7200) snprintf(buf, cap, "%.1f min", s / 60);
    else snprintf(buf, cap, "%.1f h", s / 3600);
    return buf;
}

int plan_command(const Options *o, MPI_Comm comm) {
    int rank;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    int rc = 0;
    if (!o->model || !o->n_sae || !o->tokens)
        rc = sg_errorf("command line", "plan needs a job (JOB_FILE or --model, --sae, --tokens)");
    if (rc == 0 && o->ranks < 1) rc = sg_errorf("command line", "plan needs --ranks N");
    Gpt2Config c;
    if (rc == 0) rc = model_read_config(&c, o->model);
    char **paths = NULL;
    size_t K = 0;
    const char **hooks = NULL;
    if (rc == 0) rc = sae_expand_paths(&paths, &K, &hooks, o->sae, o->n_sae_hook ? o->sae_hook : NULL, o->n_sae);
    Sae *saes = sg_xcalloc(K ? K : 1, sizeof *saes);
    for (size_t i = 0; i < K && rc == 0; i++) rc = sae_read_cfg(&saes[i], paths[i], hooks[i]);
    free(hooks);
    TokenSet ts;
    memset(&ts, 0, sizeof ts);
    ContextRule rule;
    memset(&rule, 0, sizeof rule);
    if (rc == 0)
        rc = contexts_resolve(&rule, saes, sizeof *saes, K, o->prepend_bos, o->ctx > 0 ? (size_t)o->ctx : 0,
                              (int32_t)c.bos_token_id, tokens_is_flat(o->tokens));
    if (rc == 0) rc = tokens_load_cut(&ts, o->tokens, &rule.cut, o->contexts > 0 ? (size_t)o->contexts : 0);
    if (rc == 0) contexts_check_rows(&rule, &ts, o->tokens);
    uint32_t mask = 0;
    if (rc == 0) rc = iv_parse_list(&mask, o->interventions ? o->interventions : "all");
    SweepChoices ch;
    if (rc == 0) rc = cli_sweep_choices(o, &ch);
    double budget = CLI_RANK_MEMORY_DEFAULT;
    if (rc == 0) rc = cli_rank_memory(o, &budget);
    if (sg_agree(comm, rc)) goto out;
    if (rank == 0) {
        const double L = (double)c.n_layer, D = (double)c.n_embd, V = (double)c.vocab_size, Fm = (double)c.n_inner;
        const double Vp = (double)((c.vocab_size + 63) / 64 * 64), n = (double)ts.n, T = (double)ts.ctx;
        const int position = ch.scope_position;
        const double Wk = position ? (double)ch.window : T;
        const size_t S = ch.samples;
        const size_t ranks = (size_t)o->ranks;
        const int threads = o->threads_per_rank > 0 ? (int)o->threads_per_rank : 1;
        gemm_set_threads(threads);
        double rate = measure_gemm(c.n_embd), kl_ns = measure_kl_ns(c.vocab_size);
        /* per token and layer: QKV 2DW, attention 4TZ, output 2ZD, MLP 4DF (6DF gated); GPT-2 (W = 3D,
         * Z = D, F = 4D): 24D^2 + 4TD */
        const double Wq = (double)qkv_width(&c), Zw = (double)z_width(&c), mlp_mats = c.gated_mlp ? 3 : 2;
        double layer = 2 * D * Wq + 2 * Zw * D + 2 * mlp_mats * D * Fm + 4 * T * Zw;
        double f_clean = n * T * (L * layer + 2 * D * Vp), f_iv = 0, f_unembed_iv = 0, f_sae = 0, f_stats = 0;
        double kl_rows = 0, n_passes = 0;
        /* contexts per batch, as run.c picks it: the largest that fits the rank memory budget */
        unsigned char *keep = sg_xcalloc(c.n_layer ? c.n_layer : 1, 1);
        Site *sites = sg_xcalloc(K ? K : 1, sizeof *sites);
        SweepSize z = {.cfg = &c, .vocab_padded = (c.vocab_size + 63) / 64 * 64, .T = ts.ctx, .Wk = (size_t)Wk,
                       .window = position ? ch.window : 0, .samples = S, .keep = keep};
        for (size_t i = 0; i < K; i++) {
            site_parse(&sites[i], saes[i].hook_name, &c, "plan");
            z.max_d = saes[i].d_in > z.max_d ? saes[i].d_in : z.max_d;
            z.max_F = saes[i].d_sae > z.max_F ? saes[i].d_sae : z.max_F;
            z.fixed += sweep_site_fixed_bytes(saes[i].d_in, saes[i].d_sae, iv_any(mask, iv_needs_mean),
                                              iv_any(mask, iv_needs_cov));
        }
        site_keep_layers(keep, sites, K, &c);
        const double stats_layers = (double)site_layers_needed(sites, K); /* the statistics pass stops there */
        free(sites);
        int fits = 1;
        const size_t B = sweep_pick_batch(&z, budget, &fits);
        for (size_t i = 0; i < K; i++) {
            Site st;
            site_parse(&st, saes[i].hook_name, &c, "plan");
            double after = (double)(c.n_layer - st.layer) - (st.kind == SG_SITE_RESID_POST ? 1 : 0);
            double passes = 0, decodes = 0;
            for (int iv = 0; iv < IV_COUNT; iv++)
                if (mask >> iv & 1) {
                    double s = (double)iv_samples((Intervention)iv, S);
                    passes += s;
                    if (iv_needs_decode((Intervention)iv)) decodes += s;
                }
            /* SAELens's scores (sae and zero_ablation run): its zero-ablation and SAE passes, each
             * in the batches where it is not the intervention's own pass (sweep.c); per context */
            double score = 0;
            if ((mask >> IV_SAE & 1) && (mask >> IV_ZERO_ABLATION & 1)) {
                for (size_t c0 = 0; c0 < ts.n; c0 += B) {
                    const size_t nb = ts.n - c0 < B ? ts.n - c0 : B;
                    for (int sc = 0; sc < 2; sc++)
                        score += sweep_score_is_pass(&c, ch.bos_include, position, st.kind, sc ? SC_KL_SAE : SC_KL_ZERO,
                                                     ts.ids + c0 * ts.ctx, nb * ts.ctx) ? 0 : (double)nb;
                }
                score /= n;
            }
            n_passes += passes + score;
            /* at --scope position an intervention's pass computes its window [P, P + W) only (a
             * suffix pass, whose attention still spans all T keys); score passes all T */
            const double Tq = position ? Wk : T;
            f_iv += (passes * Tq + score * T) * n * after * layer;
            f_unembed_iv += (passes * Wk + score * T) * n * 2 * D * Vp;
            kl_rows += score * n * T;
            f_sae += n * T * (4 + 2 * decodes) * (double)saes[i].d_in * (double)saes[i].d_sae;
            kl_rows += passes * n * Wk;
        }
        if (iv_any(mask, iv_needs_mean))
            f_stats = n * T * stats_layers * layer + (iv_any(mask, iv_needs_cov) ? K * n * T * D * D * 2 : 0);
        double f_total = f_clean + f_iv + f_unembed_iv + f_sae + f_stats;
        /* clean + intervened rows; the reduction runs on the rank's threads, like the GEMMs */
        double t_gemm = f_total / (rate * 1e9), t_kl = kl_rows * V * 2 * kl_ns * 1e-9 / threads;
        double t_total = t_gemm + t_kl;
        /* units: as run lays them out (--ranks is at most INT_MAX: cli.c) */
        UnitLayout layout;
        schedule_layout(&layout, ts.n, B, K, (int)ranks);
        const size_t units = layout.n_units, n_blocks = layout.n_blocks;
        double t_wall = t_total / (double)(ranks < units ? ranks : units);
        double t_unit = t_total / (double)units;
        if (t_wall < t_unit) t_wall = t_unit;
        /* start-up, outside the units: MPI and the HDF5 file (about 1 s here), reading and
         * checksumming the weights (about 0.5 GB/s here). A small job is mostly this. */
        /* embedding + the padded unembedding (GPT-2: wte twice; NeoX: embed_in and embed_out),
         * the layers, GPT-2's wpe */
        const double weight_bytes = 4 * (V * D * (c.tied_unembed ? 1 : 2) + L * (D * Wq + Zw * D + mlp_mats * D * Fm) +
                                         (c.learned_positions ? T * D : 0));
        const double t_start = 1.0 + weight_bytes / 0.5e9;
        t_wall += t_start;
        /* memory. Per node, shared by its ranks: the weights in float32 (the page cache holds a
         * file's F32 tensors once; F16/BF16 ones are converted once into a node block, nodeblock.h,
         * and their file pages released), the padded unembedding when the vocabulary is not a
         * multiple of 64 (model_place), the SAEs. Per rank, private: the buffers sweep_rank_bytes
         * counts, at the batch the budget picked. */
        double node_mem = weight_bytes + (Vp != V ? 4 * Vp * D : 0);
        for (size_t i = 0; i < K; i++) node_mem += 4.0 * 2 * (double)saes[i].d_in * (double)saes[i].d_sae;
        const double mem = sweep_rank_bytes(&z, B, threads);
        /* output */
        double out = 8 * n * T; /* tokens + clean ce */
        for (size_t i = 0; i < K; i++) {
            for (int iv = 0; iv < IV_COUNT; iv++)
                if (mask >> iv & 1) out += 2 * 4 * n * Wk * (double)iv_samples((Intervention)iv, S);
            out += 7 * 4 * n * T + 8 * (double)saes[i].d_sae;
            out += (double)n_blocks * (16 * (28 + (double)saes[i].d_in) + 8 * 24 + 4 * (double)saes[i].d_sae);
        }
        char b1[32], b2[32], b3[32], b4[32];
        printf("saegap plan: %s\n", o->job_file ? o->job_file : "(options)");
        printf("  job: %zu contexts x %zu tokens, %zu SAE site(s), %.4g intervened passes per context, %zu units\n",
               ts.n, ts.ctx, K, n_passes, units);
        printf("  contexts: %s%s (prepend_bos %s: %s)\n", tokens_source(&ts),
               ts.flat ? "" : " (a 2-D file)", rule.prepend_bos ? "true" : "false", rule.prepend_bos_source);
        printf("  FLOPs: clean passes %.3g, intervened passes %.3g, unembedding (intervened) %.3g, SAEs %.3g, "
               "statistics %.3g; total %.3g\n", f_clean, f_iv, f_unembed_iv, f_sae, f_stats, f_total);
        /* the rule, checkable: the batch's buffers fit the budget, one more context's would not */
        char more[96] = "";
        if (B < schedule_batch_contexts(ts.ctx))
            snprintf(more, sizeof more, ", %zu would need %.0f bytes", B + 1, sweep_rank_bytes(&z, B + 1, 1));
        printf("  batch: %zu context(s) per forward batch for a rank memory budget of %.0f MB (--rank-memory; rank memory "
               "budget %.0f bytes): %.0f bytes of buffers per rank at one thread%s%s\n", B, budget / 1e6, budget,
               sweep_rank_bytes(&z, B, 1), more, fits ? "" : " (over the budget: one context needs more; run warns)");
        free(keep); /* z.keep: the last sweep_rank_bytes above */
        printf("  measured here: sgemm %.1f GFLOP/s with %d thread(s) per rank (BLIS kernels '%s'), KL/CE %.2f ns per "
               "vocabulary entry\n", rate, threads, gemm_kernels(), kl_ns);
        const char *kernels_warning = gemm_kernels_warning();
        if (*kernels_warning) sg_warnf("%s", kernels_warning);
        printf("  expected wall time on %zu rank(s) x %d thread(s): %s (GEMMs %s, KL/CE %s in all, start-up %.1f s); "
               "this machine's rate assumed for every node\n",
               ranks, threads, duration(t_wall, b1, sizeof b1), duration(t_gemm, b2, sizeof b2),
               duration(t_kl, b3, sizeof b3), t_start);
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        const size_t per_node = ranks < (size_t)cores ? ranks : (size_t)cores; /* ranks on a node like this one */
        printf("  memory: about %s per rank (private) + %s per node (weights, shared by its ranks): %s for %zu "
               "rank(s) on one node; output file: about %s\n",
               human(mem, b1, sizeof b1), human(node_mem, b2, sizeof b2),
               human(node_mem + (double)per_node * mem, b3, sizeof b3), per_node, human(out, b4, sizeof b4));
        if (ranks > units)
            printf("  warning: %zu ranks but only %zu units: %zu rank(s) would idle (fewer ranks, or more contexts)\n",
                   ranks, units, ranks - units);
        if ((long)ranks * threads > cores)
            printf("  note: %zu ranks x %d threads = %ld > %ld cores of this node: on one node that oversubscribes; "
                   "across nodes, keep ranks per node x threads <= cores per node\n",
                   ranks, threads, (long)ranks * threads, (long)cores);
        fflush(stdout);
    }
out:
    for (size_t i = 0; i < K; i++) sae_free(&saes[i]), free(paths[i]);
    free(saes), free(paths);
    tokens_free(&ts);
    return rc ? 1 : 0;
}
