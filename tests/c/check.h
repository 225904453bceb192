/* check.h: the C tests' named cases and their assertion.
 *
 * A test file writes its checks as cases, `static void case_NAME(void)`, lists them in a table
 * and hands the table to check_run_cases from main (after any set-up the cases share):
 *
 *     static const CheckCase CASES[] = {CASE(two_tokens), CASE(lse_edges)};
 *     return check_run_cases("test_metrics", CASES, CHECK_COUNT(CASES), argc, argv);
 *
 * CHECK(cond, fmt, ...) prints `FAIL [case] file:line: message` for a failed condition and counts
 * it; the case goes on. check_run_cases runs the cases in table order, prints one line
 * `FAILED [case]: N check(s)` per failing case and the summary `NAME: N cases, M failed`, and
 * returns 1 when a case failed (0 otherwise). Arguments select cases: each runs the cases whose
 * name contains it (`test_schedule queue` runs both queue cases); `--list` prints the names. An
 * argument that selects nothing is refused (status 2), so that a misspelt name cannot pass.
 * case_skip(why) in a case marks it skipped (`SKIP [case]: why`), counted apart. */
#ifndef SAEGAP_TESTS_CHECK_H
#define SAEGAP_TESTS_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} CheckCase;

/* {"NAME", case_NAME}: the name printed is the function's, without its prefix */
#define CASE(name) {#name, case_##name}
#define CHECK_COUNT(table) (sizeof(table) / sizeof((table)[0]))

static int failures = 0;               /* failed checks in the whole run */
static const char *check_case = "setup"; /* the case running (set-up before the first) */
static const char *check_skipped;      /* why the running case was skipped, or NULL */

/* Counts a failed check of the running case and prints where and why (file and line of the
 * check). For helpers that check on behalf of a caller's line (CHECK passes its own). */
static inline void check_fail_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void check_fail_at(const char *file, int line, const char *fmt, ...) {
    failures++;
    fprintf(stderr, "FAIL [%s] %s:%d: ", check_case, file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) check_fail_at(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

/* Marks the running case skipped (it should return right after). */
static inline void case_skip(const char *why) { check_skipped = why; }

static inline int check_selected(const char *name, int argc, char **argv) {
    int any = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) continue;
        any = 1;
        if (strstr(name, argv[i])) return 1;
    }
    return !any;
}

static inline int check_run_cases(const char *test, const CheckCase *cases, size_t n, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            for (size_t k = 0; k < n; k++) printf("%s\n", cases[k].name);
            return 0;
        }
        size_t hits = 0;
        for (size_t k = 0; k < n; k++) hits += strstr(cases[k].name, argv[i]) != NULL;
        if (!hits) {
            fprintf(stderr, "%s: no case is named like '%s' (--list prints the names)\n", test, argv[i]);
            return 2;
        }
    }
    size_t ran = 0, failed = 0, skipped = 0;
    for (size_t k = 0; k < n; k++) {
        if (!check_selected(cases[k].name, argc, argv)) continue;
        int before = failures;
        check_case = cases[k].name;
        check_skipped = NULL;
        cases[k].fn();
        ran++;
        if (failures > before) {
            failed++;
            fprintf(stderr, "FAILED [%s]: %d check(s)\n", cases[k].name, failures - before);
        } else if (check_skipped) {
            skipped++;
            printf("SKIP [%s]: %s\n", cases[k].name, check_skipped);
        }
    }
    check_case = "teardown";
    if (skipped)
        printf("%s: %zu cases, %zu failed, %zu skipped\n", test, ran, failed, skipped);
    else
        printf("%s: %zu cases, %zu failed\n", test, ran, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}

#endif
