/* info.c: `saegap info`: describes a path by what it holds, on rank 0, without running anything. */
#include "info.h"

#include "contexts.h"
#include "error.h"
#include "h5out.h"
#include "resultfile.h"
#include "model.h"
#include "sae.h"
#include "tokens.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static int exists_in(const char *dir, const char *name) {
    char p[8192];
    struct stat sb;
    if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, name) >= sizeof p) return 0;
    return stat(p, &sb) == 0;
}

static int info_model(const char *dir) {
    Gpt2Model m;
    if (model_load(&m, dir)) return -1;
    const Gpt2Config *c = &m.cfg;
    const int neox = c->family == SG_FAMILY_NEOX, gemma = c->family == SG_FAMILY_GEMMA2;
    const SafetensorsTensor *t = safetensors_find(&m.st, neox ? "gpt_neox.embed_in.weight"
                                                     : gemma ? "model.embed_tokens.weight" : "wte.weight");
    if (!t) t = safetensors_find(&m.st, "transformer.wte.weight");
    printf("%s: Hugging Face %s model \"%s\"\n", dir, neox ? "GPT-NeoX (Pythia)" : gemma ? "Gemma-2" : "GPT-2", c->name);
    printf("  layers %zu, heads %zu (key/value heads %zu), d_model %zu (d_head %zu), d_mlp %zu, n_positions %zu, "
           "vocab %zu\n", c->n_layer, c->n_head, c->n_kv_head, c->n_embd, c->head_dim, c->n_inner, c->n_positions,
           c->vocab_size);
    if (gemma)
        printf("  RMSNorm (1 + w) before and after attention and MLP, GeGLU, rotary on all dims (base %g), score "
               "soft-cap %g, final soft-cap %g, sliding window %zu on even layers, embedding x %g\n", c->rotary_base,
               c->attn_softcap, c->final_softcap, c->sliding_window, (double)c->embed_scale);
    printf("  activation %s, layer_norm_epsilon %g, bos_token_id %ld\n", c->activation_name, c->layer_norm_epsilon,
           c->bos_token_id);
    char special[4096];
    printf("  special tokens of SAELens's scores: %s (%s)\n", c->n_special ? model_special_text(c, special, sizeof special)
                                                                            : "none", c->special_source);
    if (neox)
        printf("  %s residual, rotary on %zu of %zu head dims (base %g), unembedding %s\n",
               c->parallel_residual ? "parallel" : "sequential", c->rotary_dims, c->head_dim, c->rotary_base,
               c->tied_unembed ? "tied to embed_in" : "embed_out (untied)");
    char where[64] = "model.safetensors";
    if (m.st.n_shards) snprintf(where, sizeof where, "%zu shards", m.st.n_shards);
    printf("  %.2fM parameters, weights %s (%zu tensors in %s, %.1f MB)\n", (double)m.n_params / 1e6,
           t ? safetensors_dtype_name(t->dtype) : "?", m.st.n_tensors, where, (double)m.st.map_size / 1e6);
    printf("  hook sites: hook_embed%s, blocks.0..%zu.{hook_resid_pre, attn.hook_z, hook_attn_out, %s"
           "mlp.hook_post, hook_mlp_out, hook_resid_post}\n", c->learned_positions ? ", hook_pos_embed" : "",
           c->n_layer - 1, c->parallel_residual ? "" : "hook_resid_mid, ");
    model_free(&m);
    return 0;
}

static int info_sae(const char *dir, const char *hook) {
    Sae s;
    if (sae_read_cfg(&s, dir, hook)) return -1;
    printf("%s: %s\n", dir, sae_description(&s));
    printf("  hook %s, architecture %s", s.hook_name, sae_arch_name(s.arch));
    if (s.arch == SAE_TOPK || s.arch == SAE_GROUPMAX) printf(" (k %zu)", s.k);
    printf(", d_in %zu, d_sae %zu\n", s.d_in, s.d_sae);
    printf("  trained on model \"%s\", normalize_activations %s, apply_b_dec_to_input %s\n",
           s.model_name[0] ? s.model_name : "?", sae_norm_name(s.norm), s.apply_b_dec_to_input ? "true" : "false");
    printf("  activation basis: %s (center_writing_weights %d, fold_ln %d, fold_value_biases %d)\n", basis_name(s.basis),
           (s.basis & SG_BASIS_CENTER_WRITING_WEIGHTS) != 0, (s.basis & SG_BASIS_FOLD_LN) != 0,
           (s.basis & SG_BASIS_FOLD_VALUE_BIASES) != 0);
    printf("    from %s\n", s.basis_source);
    if (s.basis_note[0]) printf("    %s\n", s.basis_note);
    SaeContexts cv = contexts_of_sae(&s);
    if (cv.context_size)
        printf("  contexts: prepend_bos %s, context_size %zu (%s)\n", cv.prepend_bos ? "true" : "false", cv.context_size,
               cv.source);
    else
        printf("  contexts: prepend_bos %s, no context_size (%s): a flat token file is cut at --ctx\n",
               cv.prepend_bos ? "true" : "false", cv.source);
    sae_free(&s);
    return 0;
}

static int info_result(const char *path) {
    H5Out *h = h5out_open_readonly(path);
    if (!h) return -1;
    if (rf_describe(h, path, stdout) == 0) { /* a saegap run result */
        h5out_close(h);
        return 0;
    }
    /* a dump file (dump.c's attributes) or a token file */
    char buf[4096] = "";
    int64_t v = 0;
    if (h5out_get_attr_str(h, "/", "basis", buf, sizeof buf) == 0) {
        printf("%s: saegap dump file (basis %s)", path, buf);
        if (h5out_get_attr_i64(h, "/", "n_contexts", &v) == 0) printf(", %lld contexts", (long long)v);
        if (h5out_get_attr_i64(h, "/", "complete", &v) == 0) printf(", %s", v == 1 ? "complete" : "INCOMPLETE");
        printf("\n");
        h5out_close(h);
        return 0;
    }
    h5out_close(h);
    return 1; /* not ours: try as a token file */
}

/* How a flat stream would be cut into contexts of ctx tokens: without BOS, and with the BOS of
 * --model (or of each family when no model is given), as `run` cuts it (tokens.h). */
static void info_cut(const char *path, size_t ctx, const char *model) {
    TokenSet ts;
    const TokenCut plain = {.ctx = ctx};
    if (tokens_load_cut(&ts, path, &plain, 0) != 0) { sg_error_clear(); return; }
    printf("  cut into contexts of %zu: without BOS (--prepend-bos no, or SAEs whose cfgs say prepend_bos false): "
           "%zu contexts, %zu trailing tokens unused\n", ctx, ts.n, ts.n_unused);
    tokens_free(&ts);
    Gpt2Config c;
    struct { int32_t bos; const char *name; } with[3] = {{50256, "GPT-2's"}, {0, "Pythia's"}, {2, "Gemma-2's"}};
    size_t n_with = 3;
    if (model && model_read_config(&c, model) == 0 && c.bos_token_id >= 0)
        with[0].bos = (int32_t)c.bos_token_id, with[0].name = "the model's", n_with = 1;
    else if (model) sg_error_clear();
    for (size_t i = 0; i < n_with; i++) {
        const TokenCut cut = {.ctx = ctx, .prepend_bos = 1, .bos = with[i].bos};
        if (tokens_load_cut(&ts, path, &cut, 0) != 0) { sg_error_clear(); continue; }
        printf("  cut with BOS %d (%s; SAEs whose cfgs say prepend_bos true or lack it, as SAELens's): %zu contexts of "
               "BOS + %zu stream tokens (a stream BOS at the start is not doubled), %zu trailing tokens unused\n",
               (int)with[i].bos, with[i].name, ts.n, ctx - 1, ts.n_unused);
        tokens_free(&ts);
    }
}

static int info_tokens(const char *path, size_t ctx, const char *model) {
    TokenSet ts;
    /* a flat .bin has no context length: describe it with one context per file */
    int rc = tokens_load(&ts, path, 0, 0);
    if (rc != 0 && strstr(sg_error_message(), "--ctx")) {
        sg_error_clear();
        struct stat sb;
        stat(path, &sb);
        size_t n = (size_t)sb.st_size / 2;
        rc = tokens_load(&ts, path, n > 0 ? n : 1, 0);
        if (rc == 0) printf("%s: flat token file (%s), %zu tokens (cut into contexts with --ctx N)\n", path, ts.format, n);
        if (rc == 0 && ctx) info_cut(path, ctx, model);
    } else if (rc == 0) {
        printf("%s: token file (%s), %zu contexts x %zu tokens\n", path, ts.format, ts.n, ts.ctx);
    }
    if (rc != 0) return -1;
    int32_t lo = ts.ids[0], hi = ts.ids[0];
    size_t gpt2_bos = 0, first_gpt2 = 0, first_zero = 0, first_two = 0;
    for (size_t i = 0; i < ts.n * ts.ctx; i++) {
        lo = ts.ids[i] < lo ? ts.ids[i] : lo, hi = ts.ids[i] > hi ? ts.ids[i] : hi;
        gpt2_bos += ts.ids[i] == 50256;
    }
    for (size_t c = 0; c < ts.n; c++) {
        const int32_t first = ts.ids[c * ts.ctx];
        first_gpt2 += first == 50256, first_zero += first == 0, first_two += first == 2;
    }
    /* a token file names no model: say which BOS convention its contexts follow (GPT-2's 50256,
     * Pythia's 0, Gemma's 2), so a file cut for one model is not run on another unnoticed */
    printf("  token ids %d..%d; of %zu contexts, %zu start with 50256 (GPT-2's BOS), %zu with 0 (Pythia's), "
           "%zu with 2 (Gemma's); %zu tokens are 50256 in all\n", lo, hi, ts.n, first_gpt2, first_zero, first_two,
           gpt2_bos);
    tokens_free(&ts);
    return 0;
}

int info_command(const Options *o, MPI_Comm comm) {
    int rank;
    SG_MPI(MPI_Comm_rank(comm, &rank), "rank");
    int rc = 0;
    if (!o->positional) rc = sg_errorf("command line", "info needs a path: saegap info PATH");
    else if (rank == 0) {
        const char *p = o->positional;
        struct stat sb;
        if (stat(p, &sb) != 0) rc = sg_errorf(p, "does not exist");
        else if (S_ISDIR(sb.st_mode)) {
            if (exists_in(p, "config.json")) rc = info_model(p);
            else { /* one SAE folder or a folder of them; sae_expand_paths pairs --sae-hook ("-": none) */
                char **list = NULL;
                const char **hook_of = NULL;
                size_t n = 0;
                const char *args[1] = {p};
                const char *hooks[1] = {o->n_sae_hook ? o->sae_hook[0] : NULL};
                rc = sae_expand_paths(&list, &n, &hook_of, args, hooks, 1);
                for (size_t i = 0; i < n && rc == 0; i++) rc = info_sae(list[i], hook_of[i]);
                for (size_t i = 0; i < n; i++) free(list[i]);
                free(list), free(hook_of);
            }
        } else {
            size_t len = strlen(p);
            int h5 = (len > 3 && !strcasecmp(p + len - 3, ".h5")) || (len > 5 && !strcasecmp(p + len - 5, ".hdf5"));
            rc = h5 ? info_result(p) : 1;
            if (rc == 1) rc = info_tokens(p, o->ctx > 0 ? (size_t)o->ctx : 0, o->model);
        }
        fflush(stdout);
    }
    return sg_agree(comm, rc) ? 1 : 0;
}
