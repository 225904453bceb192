/* cli.h: the command line of CONTRACT.md, parsed from one option table (cli.c) that also
 * produces --help. Cross-option checks that need no file are made here, before any I/O. */
#ifndef SAEGAP_CLI_H
#define SAEGAP_CLI_H

#include "sites.h"

#include <stddef.h>
#include <stdio.h>

typedef struct {
    const char *command;        /* run | dump | plan | info | verify */
    const char *positional;     /* JOB_FILE (run, plan) or PATH (info, verify) */
    const char *model, *tokens, *out, *sites, *interventions, *scope, *bos, *basis;
    const char *prepend_bos;    /* --prepend-bos yes|no (NULL: the SAEs' convention; contexts.h) */
    const char **sae;           /* --sae, repeatable */
    size_t n_sae;
    const char **sae_hook;      /* --sae-hook, repeatable: the i-th names the site of the i-th --sae */
    size_t n_sae_hook;
    long ctx, contexts, position, window, samples, threads_per_rank, ranks, examples; /* -1 when not given */
    long long seed;
    double latent_noise;        /* --latent-noise (default 0.1) */
    const char *norm_scaling_factor; /* --norm-scaling-factor "S" or "SITE=S,..." (NULL = not given) */
    const char *rank_memory;    /* --rank-memory SIZE (NULL = not given: CLI_RANK_MEMORY_DEFAULT) */
    int logits, resume, allow_model_mismatch, quiet, help;
    char *command_line;         /* argv joined, recorded in result files */
    const char *job_file;       /* run/plan JOB_FILE, merged under the command line */
    unsigned long long given;   /* bit i: option i of the table was set (command line or job file) */
    char **owned;               /* strings read from the job file */
    size_t n_owned;
} Options;

/* 0, or -1 with a pending error naming the option. argv[0] is the program, argv[1] the command.
 * Each option is given once (--sae and --sae-hook may repeat; a repeated --help is ignored). For
 * run and plan, a positional JOB_FILE holds the same settings as the options, one `key = value`
 * per line with the long option names (syntax: jobfile.h, docs/cluster.md); each key once except
 * `sae` and `sae-hook`, and a repeated key is refused naming both lines; flags take
 * true/false/yes/no/1/0; an option on the command line replaces the file's key (all its `sae`
 * lines for --sae, and then its `sae-hook` lines too: they pair with its `sae` lines). When
 * --sae-hook is given, it is given as often as --sae. */
int cli_parse(Options *o, int argc, char **argv);
void cli_free(Options *o);

/* The choices that shape a sweep, parsed once from their option strings: --scope, --position,
 * --window, --samples, --bos, --basis (run and plan read them from here). */
typedef struct {
    int scope_position;         /* --scope position */
    size_t position, window, samples;
    int bos_include;            /* --bos include */
    int has_basis;              /* --basis given: it overrides the SAEs' cfgs */
    Basis basis;
} SweepChoices;
/* 0, or -1 with a pending error naming the option as the user wrote it: an unknown scope, bos or
 * basis; --scope position without --position; --position or --window without it; more than
 * 65535 samples. */
int cli_sweep_choices(const Options *o, SweepChoices *c);
/* --basis alone (dump): processed when not given. */
int cli_basis(const Options *o, Basis *basis);
void cli_print_help(FILE *f, const char *command);
/* --rank-memory in bytes (CLI_RANK_MEMORY_DEFAULT when not given): 0, or -1 with a pending error
 * naming the option (not a number, an unknown unit, under 1 MB). */
#define CLI_RANK_MEMORY_DEFAULT 1073741824.0 /* 1 GiB: a rank per core on 2 GB per core, beside the weights */
int cli_rank_memory(const Options *o, double *bytes);

#endif
