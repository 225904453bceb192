/* dump.c: `saegap dump` (CONTRACT.md): every rank loads the model, contexts are split into
 * contiguous blocks across ranks, each rank runs the forward pass on its block and writes the
 * requested sites, in the basis asked for, into one parallel-HDF5 file. */
#include "dump.h"

#include "error.h"
#include "forward.h"
#include "h5out.h"
#include "model.h"
#include "nodeblock.h"
#include "outfile.h"
#include "schedule.h"
#include "sites.h"
#include "tokens.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    Site *sites;
    size_t n;
} SiteList;

/* "A,B,C" or "all" -> sites, deduplicated, in the order given. */
static int parse_site_list(SiteList *out, const char *list, const Gpt2Config *c) {
    memset(out, 0, sizeof *out);
    if (!strcmp(list, "all")) { /* every site the model has */
        const size_t n = site_count(c->n_layer);
        out->sites = sg_xcalloc(n, sizeof *out->sites);
        for (size_t i = 0; i < n; i++)
            if (!site_missing_reason(site_at(i).kind, c)) out->sites[out->n++] = site_at(i);
        return 0;
    }
    char *copy = sg_xstrdup(list), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        Site s;
        rc = site_parse(&s, tok, c, "--sites");
        if (rc) break;
        int dup = 0;
        for (size_t i = 0; i < out->n; i++) dup |= out->sites[i].kind == s.kind && out->sites[i].layer == s.layer;
        if (dup) continue;
        out->sites = sg_xrealloc(out->sites, (out->n + 1) * sizeof *out->sites);
        out->sites[out->n++] = s;
    }
    free(copy);
    if (rc == 0 && out->n == 0) rc = sg_errorf("--sites", "no site given");
    return rc;
}

static int check_options(const Options *o, Basis *basis) {
    if (!o->model) return sg_errorf("command line", "dump needs --model DIR");
    if (!o->tokens) return sg_errorf("command line", "dump needs --tokens FILE");
    if (!o->sites) return sg_errorf("command line", "dump needs --sites A,B,... (or --sites all)");
    if (!o->out) return sg_errorf("command line", "dump needs --out FILE.h5");
    if (o->positional) return sg_errorf("command line", "dump takes no positional argument (got '%s')", o->positional);
    if (cli_basis(o, basis)) return -1;
    struct stat sb;
    if (stat(o->out, &sb) == 0)
        return sg_errorf(o->out, S_ISDIR(sb.st_mode) ? "--out is a directory; give a file name"
                                                     : "output file already exists; refusing to overwrite it");
    return 0;
}

int dump_command(const Options *o, MPI_Comm comm) {
    int rank, size;
    SG_MPI(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank failed");
    SG_MPI(MPI_Comm_size(comm, &size), "MPI_Comm_size failed");
    Basis basis;
    if (sg_agree(comm, check_options(o, &basis))) return 1;

    Gpt2Model model;
    if (sg_agree(comm, model_open(&model, o->model))) return 1;
    MPI_Comm node = nodeblock_node_comm(comm); /* derived and converted weights: once per node */
    model_place(&model, node);
    SG_MPI(MPI_Comm_free(&node), "freeing the node communicator");
    const Gpt2Config *c = &model.cfg;

    TokenSet ts;
    int rc = tokens_load(&ts, o->tokens, o->ctx > 0 ? (size_t)o->ctx : 0, o->contexts > 0 ? (size_t)o->contexts : 0);
    if (rc == 0) rc = tokens_check(&ts, o->tokens, c->vocab_size, c->n_positions);
    if (sg_agree(comm, rc)) { model_free(&model); return 1; }

    SiteList sl;
    if (sg_agree(comm, parse_site_list(&sl, o->sites, c))) {
        tokens_free(&ts);
        model_free(&model);
        return 1;
    }

    /* written as OUT.creating and named OUT once complete (outfile.h): a dump that fails, or
     * is killed, leaves nothing under the name asked for; a fatal error removes the partial
     * file (sg_fatal_removes), on whichever rank it happens */
    static char partial[OUT_PARTIAL_MAX];
    int lock_fd = -1;
    rc = out_partial_path(o->out, partial, sizeof partial);
    if (rc == 0 && rank == 0) {
        lock_fd = out_partial_claim(o->out, partial);
        rc = lock_fd < 0 ? -1 : 0;
        if (rc == 0) out_remove_stale_mpiio_locks(o->out); /* of a killed multi-node dump */
    }
    H5Out *h = NULL;
    if (sg_agree(comm, rc) == 0) {
        sg_fatal_removes(partial);
        h = h5out_create_claimed(partial, comm);
        if (sg_agree(comm, h ? 0 : -1)) h = NULL;
        if (h && rank == 0) { /* MPI-IO's lock file, if ranks span nodes: with the partial file */
            char lock[OUT_MPIIO_LOCK_MAX];
            out_mpiio_lock_of_this_run(partial, lock);
            sg_fatal_removes_lock(lock);
        }
    }
    if (!h) {
        if (rank == 0 && lock_fd >= 0) unlink(partial);
        sg_fatal_removes(NULL);
        out_lock_release(lock_fd);
        free(sl.sites);
        tokens_free(&ts);
        model_free(&model);
        return 1;
    }

    /* ---- schema, created up front by every rank ---- */
    const size_t n = ts.n, T = ts.ctx, V = c->vocab_size;
    h5out_attr_provenance(h, o->command_line);
    h5out_attr_str(h, "/", "model", o->model);
    h5out_attr_str(h, "/", "tokens_file", o->tokens);
    h5out_attr_str(h, "/", "basis", basis_name(basis));
    h5out_attr_i64(h, "/", "n_contexts", (int64_t)n);
    h5out_attr_i64(h, "/", "ctx", (int64_t)T);
    h5out_attr_i64(h, "/", "ranks", size);
    h5out_attr_i64(h, "/", "complete", 0);
    uint64_t tdims[2] = {n, T};
    int ds_tokens = h5out_dataset(h, "tokens", H5OUT_I32, 2, tdims);
    int *ds_site = sg_xcalloc(sl.n, sizeof *ds_site);
    char name[128];
    for (size_t i = 0; i < sl.n; i++) {
        site_name(name, sizeof name, sl.sites[i]);
        uint64_t dims[3] = {n, T, site_width(sl.sites[i], c)};
        ds_site[i] = h5out_dataset(h, name, H5OUT_F32, 3, dims);
        h5out_attr_str(h, name, "basis", basis_name(basis));
        for (int f = 0; f < SG_BASIS_FLAG_COUNT; f++) {
            char key[64];
            snprintf(key, sizeof key, "basis_%s", basis_flag_name(f));
            h5out_attr_i64(h, name, key, (basis & basis_flag_bit(f)) != 0);
        }
    }
    int ds_logits = -1;
    if (o->logits) {
        uint64_t dims[3] = {n, T, V};
        ds_logits = h5out_dataset(h, "logits", H5OUT_F32, 3, dims);
        h5out_attr_str(h, "logits", "basis", "raw (Hugging Face; log-softmax equals TransformerLens's)");
    }
    h5out_flush(h);

    /* ---- batches of B contexts, fixed by T alone (keeps -np 1..N bit-identical); rank r
     * takes a contiguous run of them */
    const size_t B = schedule_dump_batch_contexts(T);
    size_t lo, hi;
    schedule_static_range(n, B, rank, size, &lo, &hi);
    Activations acts;
    acts_alloc(&acts, c, B, T, 1);
    size_t max_w = c->n_inner > c->n_embd ? c->n_inner : c->n_embd;
    if (z_width(c) > max_w) max_w = z_width(c);
    float *buf = sg_xcalloc(B * T * (max_w > model.vocab_padded ? max_w : model.vocab_padded), sizeof(float));
    if (rank == 0) h5out_write_rows(h, ds_tokens, 0, n, ts.ids);
    double t0 = MPI_Wtime(), last = t0;
    for (size_t c0 = lo; c0 < hi; c0 += B) {
        size_t nb = hi - c0 < B ? hi - c0 : B;
        gpt2_forward(&acts, &model, ts.ids + c0 * T, nb, T);
        for (size_t i = 0; i < sl.n; i++) {
            site_read(buf, &acts, &model, sl.sites[i], basis, 0, nb * T);
            h5out_write_rows(h, ds_site[i], c0, nb, buf);
        }
        if (ds_logits >= 0) {
            gpt2_logits(buf, &acts, &model, 0, nb * T);
            h5out_write_rows(h, ds_logits, c0, nb, buf);
        }
        double now_s = MPI_Wtime();
        if (rank == 0 && !sg_quiet() && (now_s - last > 10 || c0 + nb == hi)) {
            fprintf(stderr, "saegap dump: rank 0 %zu/%zu contexts, %.1f s\n", c0 + nb - lo, hi - lo, now_s - t0);
            last = now_s;
        }
    }
    free(buf);
    acts_free(&acts);

    SG_MPI(MPI_Barrier(comm), "barrier before completing %s failed", o->out);
    h5out_attr_i64(h, "/", "complete", 1);
    h5out_close(h);
    rc = out_publish(partial, o->out, comm);
    if (rc != 0 && rank == 0) unlink(partial); /* OUT appeared meanwhile: left alone */
    sg_fatal_removes(NULL);
    sg_fatal_removes_lock(NULL);
    out_lock_release(lock_fd);
    if (rc == 0 && rank == 0 && !sg_quiet())
        fprintf(stderr, "saegap dump: wrote %zu sites%s for %zu contexts x %zu tokens to %s (%s basis)\n", sl.n,
                o->logits ? " + logits" : "", n, T, o->out, basis_name(basis));
    free(ds_site);
    free(sl.sites);
    tokens_free(&ts);
    model_free(&model);
    return rc == 0 ? 0 : 1;
}
