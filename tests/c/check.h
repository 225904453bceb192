/* check.h: the C tests' assertion. CHECK(cond, fmt, ...) prints the file, line and message of
 * a failed condition and counts it in `failures`; main returns non-zero when it is not 0. */
#ifndef SAEGAP_TESTS_CHECK_H
#define SAEGAP_TESTS_CHECK_H

#include <stdio.h>

static int failures = 0;
#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (!(cond)) {                                            \
            failures++;                                           \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                         \
            fputc('\n', stderr);                                  \
        }                                                         \
    } while (0)

#endif
