/* fuzz_common.h: what every saegap libFuzzer target shares (docs/testing.md, "Fuzzing").
 *
 * - MPI is initialised once, as a singleton, in LLVMFuzzerInitialize (fuzz_common.c).
 * - The parsers take paths: fuzz_write() puts the input in a file of a per-process
 *   directory on tmpfs (SAEGAP_FUZZ_TMP, default /dev/shm), with a fresh name each iteration
 *   (HDF5 keeps state per file name, so a name is never reused while the process runs).
 * - sg_fatal() is saegap's fail-closed exit (message, then exit(1) / MPI_Abort). libFuzzer
 *   would report every exit() as a crash and stop, so fuzz_common.c replaces sg_fatal_at for
 *   the fuzz executables (linked first, with --allow-multiple-definition) by one that prints
 *   the message and longjmps back to fuzz_guard(). Each call site reached is reported once
 *   (and its input saved when SAEGAP_FUZZ_NOTES is a directory): a clean exit is not a
 *   crash, but a fatal error where a user error was expected is worth reading.
 *   SAEGAP_FUZZ_FATAL=crash makes it abort() instead (a crash artifact).
 * - HDF5 objects left open by a call are closed after it (and reported once per target as
 *   a leak; SAEGAP_FUZZ_FATAL=crash makes a leak abort too).
 */
#ifndef SAEGAP_FUZZ_COMMON_H
#define SAEGAP_FUZZ_COMMON_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* Path of a new file holding data[0..size), named NAME-<n> + suffix (suffix e.g. ".npy").
 * Valid until the next fuzz_write(); fuzz_done() removes the files of this iteration. */
const char *fuzz_write(const char *suffix, const uint8_t *data, size_t size);

/* A fresh directory for this iteration (removed by fuzz_done()). */
const char *fuzz_mkdir(void);

/* Writes data as dir/name (name may be a file the parser looks for, e.g. "config.json"). */
void fuzz_write_in(const char *dir, const char *name, const uint8_t *data, size_t size);

/* dir/name -> target (e.g. a fixed weights file of tests/fuzz/fixture). */
void fuzz_link_in(const char *dir, const char *name, const char *target);

/* Runs fn(arg) with sg_fatal caught; 0 when fn returned, -1 when it ended in sg_fatal.
 * Clears saegap's pending error first and closes HDF5 objects left open afterwards. */
int fuzz_guard(void (*fn)(void *), void *arg);

/* Removes this iteration's files and directories. */
void fuzz_done(void);

/* The input being run (fuzz_begin: at the top of LLVMFuzzerTestOneInput), for the notes. */
void fuzz_begin(const char *target, const uint8_t *data, size_t size);

/* tests/fuzz/fixture (a tiny GPT-2 model, an SAE and tokens: make-corpus.sh writes them). */
const char *fuzz_fixture(void);

/* The fixture's GPT-2 model (tests/fuzz/fixture/model), loaded once on first use with one BLIS
 * thread; aborts naming it when it cannot load (the fixture is broken, not the input). */
const Gpt2Model *fuzz_fixture_model(void);

/* A small deterministic hash of the input (to vary a parser's other arguments). */
uint32_t fuzz_hash(const uint8_t *data, size_t size);

#endif
