/* cli.c: option table, parsing and help (see cli.h). */
#include "cli.h"

#include "error.h"
#include "jobfile.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum { OPT_STR, OPT_COUNT, OPT_INT, OPT_SEED, OPT_FLAG, OPT_LIST, OPT_POSITIVE_REAL } OptKind;

typedef struct {
    const char *name;
    OptKind kind;
    size_t offset;     /* into Options */
    long min;          /* for OPT_COUNT / OPT_INT */
    const char *arg;   /* shown in help */
    const char *help;
    const char *commands; /* which commands use it (help only) */
} OptionSpec;

#define OFF(f) offsetof(Options, f)
static const OptionSpec OPTIONS[] = {
    {"model", OPT_STR, OFF(model), 0, "DIR", "Hugging Face model folder: GPT-2, Pythia or Gemma-2 (config.json + model.safetensors, or sharded)", "run dump plan"},
    {"sae", OPT_LIST, OFF(sae), 0, "DIR", "SAE folder (SAELens, sparsify or Gemma Scope), or a folder of them; repeatable", "run plan"},
    {"sae-hook", OPT_LIST, OFF(sae_hook), 0, "HOOK", "the site of the --sae at the same place in the order (- for the one its folder records); for folders whose path does not say it", "run plan info"},
    {"tokens", OPT_STR, OFF(tokens), 0, "FILE", ".h5/.hdf5 (dataset tokens), .npy, or .bin (uint16 or llm.c)", "run dump plan"},
    {"ctx", OPT_COUNT, OFF(ctx), 1, "N", "context length used to cut a flat .bin token file (default: the SAEs' context_size)", "run dump plan info"},
    {"prepend-bos", OPT_STR, OFF(prepend_bos), 0, "yes|no", "start each context of a flat .bin with BOS or not, overriding the SAEs' cfgs (default: as they were trained)", "run plan info"},
    {"contexts", OPT_COUNT, OFF(contexts), 1, "N", "use only the first N contexts", "run dump plan"},
    {"sites", OPT_STR, OFF(sites), 0, "A,B,...", "hook names to write (TransformerLens names), or all", "dump"},
    {"logits", OPT_FLAG, OFF(logits), 0, NULL, "also write logits [n, T, vocab]", "dump"},
    {"basis", OPT_STR, OFF(basis), 0, "processed|raw|FLAGS", "activation basis, overriding the SAE cfg (docs/basis.md; FLAGS: e.g. center_writing_weights+fold_value_biases)", "run dump"},
    {"interventions", OPT_STR, OFF(interventions), 0, "LIST", "comma list or all (default all)", "run plan"},
    {"scope", OPT_STR, OFF(scope), 0, "all|position", "intervene at every position (default) or at one", "run plan"},
    {"position", OPT_COUNT, OFF(position), 0, "P", "with --scope position: the position intervened on", "run plan"},
    {"window", OPT_COUNT, OFF(window), 1, "W", "with --scope position: positions measured (default 16)", "run plan"},
    {"examples", OPT_COUNT, OFF(examples), 0, "K", "write the top-25 next-token log-probs of the first K contexts (clean, sae, eps_random) under /examples", "run plan"},
    {"samples", OPT_COUNT, OFF(samples), 1, "S", "draws of each random intervention per token (default 1)", "run plan"},
    {"bos", OPT_STR, OFF(bos), 0, "include|exclude", "measure BOS tokens or not (default exclude)", "run plan"},
    {"seed", OPT_SEED, OFF(seed), 0, "N", "the one seed of every random draw (default 0)", "run plan"},
    {"latent-noise", OPT_POSITIVE_REAL, OFF(latent_noise), 0, "SIGMA", "latent_noise: f_i * exp(SIGMA g_i) on active latents (default 0.1)", "run plan"},
    {"norm-scaling-factor", OPT_STR, OFF(norm_scaling_factor), 0, "S|SITE=S,...", "expected_average_only_in SAEs: the factor for all, or per site (else estimated from the data)", "run"},
    {"out", OPT_STR, OFF(out), 0, "FILE", "result file (an existing file is refused)", "run dump"},
    {"resume", OPT_FLAG, OFF(resume), 0, NULL, "continue an interrupted run in --out", "run"},
    {"threads-per-rank", OPT_COUNT, OFF(threads_per_rank), 1, "N", "BLIS threads in each rank", "run dump plan"},
    {"ranks", OPT_COUNT, OFF(ranks), 1, "N", "ranks to plan for", "plan"},
    {"rank-memory", OPT_STR, OFF(rank_memory), 0, "SIZE", "memory budget of each rank's buffers, e.g. 1GiB or 800MB (default 1GiB; plan prints it): picks the contexts per forward batch", "run plan"},
    {"allow-model-mismatch", OPT_FLAG, OFF(allow_model_mismatch), 0, NULL, "accept an SAE whose cfg names another model", "run plan"},
    {"quiet", OPT_FLAG, OFF(quiet), 0, NULL, "no progress output", "run dump plan"},
    {"help", OPT_FLAG, OFF(help), 0, NULL, "this help", "run dump plan info verify"},
};
#undef OFF
#define N_OPTIONS (sizeof OPTIONS / sizeof OPTIONS[0])

static const char *const COMMANDS[] = {"run", "dump", "plan", "info", "verify"};

void cli_print_help(FILE *f, const char *command) {
    fprintf(f,
            "saegap %s: how faithful are sparse autoencoders to the model they explain\n\n"
            "usage:\n"
            "  saegap run    [JOB_FILE] [options]   the sweep: clean + intervened passes into one HDF5 file\n"
            "  saegap dump   [options]              TransformerLens-basis activations of chosen sites (+ logits)\n"
            "  saegap plan   JOB_FILE --ranks N     time, memory and output size of a job, before it runs\n"
            "  saegap info   PATH                   what a model folder, SAE folder, token or result file holds\n"
            "  saegap verify RESULT.h5              is a result complete and consistent\n\n"
            "options%s%s:\n",
            SAEGAP_VERSION, command ? " of " : "", command ? command : "");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const OptionSpec *s = &OPTIONS[i];
        if (command && !strstr(s->commands, command)) continue;
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", s->name, s->arg ? " " : "", s->arg ? s->arg : "");
        fprintf(f, "  %-30s %s\n", left, s->help);
    }
    fprintf(f, "\nrun under MPI: mpirun -np N saegap run ...  (identical results for any N)\n"
               "docs: README.md, docs/ (result-file layout: docs/result-file.md)\n");
}

#define SHOWN_MAX 96
/* An option's value as a message shows it: at most about 60 bytes, cut at a UTF-8 boundary. */
static const char *shown(const char *v, char out[SHOWN_MAX]) {
    size_t n = strlen(v);
    if (n <= 64) return v;
    size_t k = 57;
    while (k > 0 && ((unsigned char)v[k] & 0xC0) == 0x80) k--;
    snprintf(out, SHOWN_MAX, "%.*s... (%zu bytes)", (int)k, v, n);
    return out;
}

/* The table index of the option called name (N_OPTIONS if none). */
static size_t option_index(const char *name) {
    size_t i = 0;
    while (i < N_OPTIONS && strcmp(OPTIONS[i].name, name) != 0) i++;
    return i;
}

/* Option idx may be given more than once: --sae and --sae-hook add an entry each time; --help
 * is harmless. */
static int repeatable(size_t idx) { return OPTIONS[idx].kind == OPT_LIST || !strcmp(OPTIONS[idx].name, "help"); }

/* Stores one option's value into o. where is "command line" (the option is named --NAME) or
 * "JOB_FILE: line N" (named NAME, as the file spells it). */
static int apply_option(Options *o, size_t idx, const char *value, const char *where, const char *dashes) {
    const OptionSpec *s = &OPTIONS[idx];
    char *field = (char *)o + s->offset;
    char buf[SHOWN_MAX];
    o->given |= 1ull << idx;
    switch (s->kind) {
    case OPT_STR: *(const char **)field = value; break;
    case OPT_FLAG:
        if (!value || !strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcmp(value, "1")) *(int *)field = 1;
        else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcmp(value, "0")) *(int *)field = 0;
        else
            return sg_errorf(where, "%s%s '%s' is not true or false (also yes/no, 1/0)", dashes, s->name,
                             shown(value, buf));
        break;
    case OPT_COUNT:
    case OPT_INT: {
        char *end = NULL;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || !end || *end != '\0' || end == value || v < s->min || v > INT_MAX)
            return sg_errorf(where, "%s%s '%s' is not an integer >= %ld", dashes, s->name, shown(value, buf), s->min);
        *(long *)field = v;
    } break;
    case OPT_SEED: {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || !end || *end || end == value || v < 0)
            return sg_errorf(where, "%s%s '%s' is not a non-negative integer", dashes, s->name, shown(value, buf));
        o->seed = v;
    } break;
    case OPT_POSITIVE_REAL: {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || !end || *end || end == value || !(v > 0) || v > 1e30)
            return sg_errorf(where, "%s%s '%s' is not a positive number", dashes, s->name, shown(value, buf));
        *(double *)field = v;
    } break;
    case OPT_LIST: {
        const char ***list = (const char ***)(void *)field;
        size_t *n = list == &o->sae ? &o->n_sae : &o->n_sae_hook;
        *list = sg_xrealloc(*list, (*n + 1) * sizeof **list);
        (*list)[(*n)++] = value;
    } break;
    }
    return 0;
}

/* A job-file key names an option by its long name; '_' stands for '-' (prepend_bos, sae_hook:
 * SAELens's and YAML's spelling of the same words). */
static int same_key(const char *option, const char *key) {
    for (; *option && *key; option++, key++)
        if (*option != *key && !(*option == '-' && *key == '_')) return 0;
    return *option == *key;
}

/* Applies the job file's entries to job: each key once (sae may repeat), each a known option. */
static int apply_job_entries(Options *job, const JobFile *jf, const char *path) {
    size_t first_line[N_OPTIONS] = {0};
    size_t where_len = strlen(path) + 32;
    char *where = sg_xrealloc(NULL, where_len);
    int rc = 0;
    for (size_t k = 0; k < jf->n && rc == 0; k++) {
        const JobEntry *e = &jf->entry[k];
        char buf[SHOWN_MAX];
        snprintf(where, where_len, "%s: line %zu", path, e->line);
        size_t i = 0;
        while (i < N_OPTIONS && !same_key(OPTIONS[i].name, e->key)) i++;
        if (i == N_OPTIONS) {
            rc = sg_errorf(where, "unknown key '%s' (keys are the long option names of saegap run --help)",
                           shown(e->key, buf));
        } else if (!strcmp(e->key, "help") || !strcmp(e->key, "resume")) {
            rc = sg_errorf(where, "'%s' belongs to one invocation, not to a job: give --%s on the command line",
                           e->key, e->key);
        } else if (first_line[i] && !repeatable(i)) {
            rc = sg_errorf(path, "key '%s' is given twice, on line %zu and line %zu; give it once (only sae and sae-hook repeat)",
                           e->key, first_line[i], e->line);
        } else {
            if (!first_line[i]) first_line[i] = e->line;
            char *v = sg_xstrdup(e->value);
            job->owned = sg_xrealloc(job->owned, (job->n_owned + 1) * sizeof *job->owned);
            job->owned[job->n_owned++] = v;
            rc = apply_option(job, i, v, where, "");
        }
    }
    free(where);
    return rc;
}

/* Reads JOB_FILE and fills every option the command line did not give (a command-line option
 * replaces the key: for sae, every sae line). */
static int merge_job_file(Options *o, const char *path) {
    JobFile jf;
    if (jobfile_read(&jf, path)) return -1;
    Options job;
    memset(&job, 0, sizeof job);
    const unsigned long long cli_given = o->given;
    int rc = apply_job_entries(&job, &jf, path);
    jobfile_free(&jf);
    if (rc == 0) {
        for (size_t i = 0; i < N_OPTIONS; i++) {
            if (!(job.given >> i & 1) || (o->given >> i & 1)) continue;
            size_t off = OPTIONS[i].offset;
            if (OPTIONS[i].kind == OPT_LIST) {
                const int hooks = (const char ***)(void *)((char *)o + off) == &o->sae_hook;
                /* the file's sae-hook lines pair with its sae lines: a command-line --sae drops both */
                if (hooks && (cli_given >> option_index("sae") & 1)) continue;
                const char **from = hooks ? job.sae_hook : job.sae;
                size_t n_from = hooks ? job.n_sae_hook : job.n_sae;
                for (size_t k = 0; k < n_from; k++) apply_option(o, i, from[k], path, "");
            } else if (OPTIONS[i].kind == OPT_STR) *(const char **)((char *)o + off) = *(const char **)((char *)&job + off);
            else if (OPTIONS[i].kind == OPT_FLAG) *(int *)((char *)o + off) = *(int *)((char *)&job + off);
            else if (OPTIONS[i].kind == OPT_POSITIVE_REAL) *(double *)((char *)o + off) = *(double *)((char *)&job + off);
            else if (OPTIONS[i].kind == OPT_SEED) o->seed = job.seed;
            else *(long *)((char *)o + off) = *(long *)((char *)&job + off);
            o->given |= 1ull << i;
        }
    }
    /* the job's strings stay alive with o */
    o->owned = sg_xrealloc(o->owned, (o->n_owned + job.n_owned + 1) * sizeof *o->owned);
    for (size_t k = 0; k < job.n_owned; k++) o->owned[o->n_owned++] = job.owned[k];
    free(job.owned);
    free(job.sae);
    free(job.sae_hook);
    return rc;
}

int cli_parse(Options *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->ctx = o->contexts = o->position = o->window = o->samples = o->threads_per_rank = o->ranks = o->examples = -1;
    o->latent_noise = 0.1;
    size_t len = 1;
    for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 1;
    o->command_line = sg_xcalloc(len, 1);
    for (int i = 0; i < argc; i++) {
        if (i) strcat(o->command_line, " ");
        strcat(o->command_line, argv[i]);
    }
    if (argc < 2) return sg_errorf("command line", "no command given (run, dump, plan, info, verify; --help for usage)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        o->help = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i])) o->command = COMMANDS[i];
    if (!o->command)
        return sg_errorf("command line", "unknown command '%s' (run, dump, plan, info, verify)", argv[1]);

    struct option longopts[N_OPTIONS + 1];
    for (size_t i = 0; i < N_OPTIONS; i++)
        longopts[i] = (struct option){OPTIONS[i].name,
                                      OPTIONS[i].kind == OPT_FLAG ? no_argument : required_argument, NULL, (int)i + 256};
    longopts[N_OPTIONS] = (struct option){0, 0, 0, 0};

    optind = 1; /* parse argv[1..]: argv[1] (the command) is treated as argv[0] */
    opterr = 0;
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    const char *first_arg[N_OPTIONS] = {0};
    int c;
    while ((c = getopt_long(sub_argc, sub_argv, ":h", longopts, NULL)) != -1) {
        if (c == 'h') { o->help = 1; continue; }
        if (c == '?') {
            const char *bad = sub_argv[optind - 1];
            return sg_errorf("command line", "unknown option '%s' (saegap %s --help lists them)", bad, o->command);
        }
        if (c == ':') return sg_errorf("command line", "option '%s' needs a value", sub_argv[optind - 1]);
        size_t idx = (size_t)(c - 256);
        if ((o->given >> idx & 1) && !repeatable(idx)) {
            char b1[SHOWN_MAX], b2[SHOWN_MAX];
            if (OPTIONS[idx].kind == OPT_FLAG)
                return sg_errorf("command line", "--%s is given twice; give it once (only --sae and --sae-hook repeat)",
                                 OPTIONS[idx].name);
            return sg_errorf("command line", "--%s is given twice ('%s', then '%s'); give it once (only --sae and --sae-hook repeat)",
                             OPTIONS[idx].name, shown(first_arg[idx], b1), shown(optarg, b2));
        }
        first_arg[idx] = optarg;
        if (apply_option(o, idx, optarg, "command line", "--")) return -1;
    }
    if (optind < sub_argc) o->positional = sub_argv[optind++];
    if (optind < sub_argc) return sg_errorf("command line", "unexpected argument '%s'", sub_argv[optind]);
    if (o->positional && (!strcmp(o->command, "run") || !strcmp(o->command, "plan"))) {
        o->job_file = o->positional;
        o->positional = NULL;
        if (merge_job_file(o, o->job_file)) return -1;
    }
    const int info = !strcmp(o->command, "info");
    if (info && o->n_sae_hook > 1)
        return sg_errorf("command line", "info takes one --sae-hook: the site of the SAE folder it describes");
    if (!info && o->n_sae_hook && o->n_sae_hook != o->n_sae)
        return sg_errorf(o->job_file ? o->job_file : "command line",
                         "--sae-hook is given %zu time(s) and --sae %zu: the i-th --sae-hook names the site of the "
                         "i-th --sae (write - for an SAE whose folder records its site)", o->n_sae_hook, o->n_sae);
    return 0;
}

void cli_free(Options *o) {
    for (size_t i = 0; i < o->n_owned; i++) free(o->owned[i]);
    free(o->owned);
    free(o->sae);
    free(o->sae_hook);
    free(o->command_line);
    memset(o, 0, sizeof *o);
}

int cli_basis(const Options *o, Basis *basis) {
    *basis = SG_BASIS_PROCESSED;
    if (o->basis && basis_parse(o->basis, basis) != 0)
        return sg_errorf("--basis", "'%s' is not processed, raw or a '+'-joined set of center_writing_weights, "
                                    "fold_ln, fold_value_biases", o->basis);
    return 0;
}

int cli_sweep_choices(const Options *o, SweepChoices *c) {
    memset(c, 0, sizeof *c);
    if (o->scope && !strcmp(o->scope, "position")) c->scope_position = 1;
    else if (o->scope && strcmp(o->scope, "all")) return sg_errorf("--scope", "'%s' is not all or position", o->scope);
    if (c->scope_position && o->position < 0) return sg_errorf("--scope", "--scope position needs --position P");
    if (!c->scope_position && (o->position >= 0 || o->window >= 0))
        return sg_errorf("--position", "--position and --window need --scope position");
    c->position = o->position >= 0 ? (size_t)o->position : 0;
    c->window = o->window > 0 ? (size_t)o->window : 16;
    c->samples = o->samples > 0 ? (size_t)o->samples : 1;
    if (c->samples > 65535) return sg_errorf("--samples", "at most 65535 samples");
    if (o->bos && !strcmp(o->bos, "include")) c->bos_include = 1;
    else if (o->bos && strcmp(o->bos, "exclude")) return sg_errorf("--bos", "'%s' is not include or exclude", o->bos);
    c->has_basis = o->basis != NULL;
    return cli_basis(o, &c->basis);
}

int cli_rank_memory(const Options *o, double *bytes) {
    *bytes = CLI_RANK_MEMORY_DEFAULT;
    if (!o->rank_memory) return 0;
    static const struct { const char *unit; double scale; } UNITS[] = {
        {"", 1},        {"B", 1},       {"KB", 1e3},           {"MB", 1e6},           {"GB", 1e9},
        {"TB", 1e12},   {"KiB", 1024.0}, {"MiB", 1048576.0},   {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
    };
    char buf[SHOWN_MAX];
    errno = 0;
    char *end = NULL;
    const double v = strtod(o->rank_memory, &end);
    if (end != o->rank_memory && errno == 0 && v > 0 && v < 1e15)
        for (size_t i = 0; i < sizeof UNITS / sizeof UNITS[0]; i++)
            if (!strcmp(end, UNITS[i].unit) && v * UNITS[i].scale >= 1e6 && v * UNITS[i].scale < 1e18) {
                *bytes = v * UNITS[i].scale;
                return 0;
            }
    return sg_errorf("--rank-memory", "'%s' is not a size of at least 1 MB (bytes, or a number with KB, MB, GB, TB, "
                                      "KiB, MiB, GiB or TiB, e.g. 1GiB)", shown(o->rank_memory, buf));
}
