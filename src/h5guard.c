/* h5guard.c: signal and CPU-time guard around libhdf5 reads of users' files (h5guard.h). */
#define _GNU_SOURCE
#include "h5guard.h"
#include "error.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

/* Sanitizers reserve terabytes of address space and manage their own allocation limits
 * (ASan's allocator_may_return_null, libFuzzer's -malloc_limit_mb): no address-space bound there */
#if defined(__SANITIZE_ADDRESS__)
#define SG_NO_AS_LIMIT 1
#define SG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define SG_NO_AS_LIMIT 1
#endif
#if __has_feature(address_sanitizer)
#define SG_ASAN 1
#endif
#endif

/* SIGABRT: glibc aborts when libhdf5 frees a pointer it read from the file */
static const int k_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGVTALRM};
#define N_SIGNALS (int)(sizeof k_signals / sizeof k_signals[0])

static struct sigaction g_saved[N_SIGNALS];
static const char *volatile g_path;
static volatile sig_atomic_t g_depth;
static volatile sig_atomic_t g_cpu_limit; /* seconds; 0 = no watchdog in this guard */
#ifndef SG_NO_AS_LIMIT
static struct rlimit g_saved_as;          /* the address-space limit before the outermost guard */
static int g_as_lowered;
#endif
static void restore_address_space(void);

/* The message is built into static storage: snprintf of strings and integers only, which
 * does not allocate (the crash may have happened inside malloc). */
static char g_message[4608];

_Noreturn void sg_h5_fault(const char *message) {
    size_t n = strlen(message);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, message, n);
        if (w <= 0) break;
        message += w, n -= (size_t)w;
    }
    _exit(1);
}

static void disarm(void) {
    struct itimerval off;
    memset(&off, 0, sizeof off);
    setitimer(ITIMER_VIRTUAL, &off, NULL);
}

static void restore_handlers(void) {
    for (int i = 0; i < N_SIGNALS; i++) sigaction(k_signals[i], &g_saved[i], NULL);
}

static const char *signal_words(int sig) {
    switch (sig) {
    case SIGSEGV: return "segmentation fault";
    case SIGBUS: return "bus error";
    case SIGFPE: return "arithmetic fault";
    case SIGILL: return "illegal instruction";
    case SIGABRT: return "abort";
    default: return "signal";
    }
}

static void on_fault(int sig) {
    const char *path = g_path ? g_path : "(HDF5 file)";
    int limit = (int)g_cpu_limit;
    disarm();
    restore_handlers();
    restore_address_space();
    g_depth = 0;
    g_path = NULL;
    if (sig == SIGVTALRM)
        snprintf(g_message, sizeof g_message,
                 "saegap: error: %s: damaged HDF5 file: libhdf5 used %d CPU-seconds on one read without finishing "
                 "(libhdf5 1.10 loops on some damaged files; SAEGAP_HDF5_CPU_LIMIT sets the limit)\n",
                 path, limit);
    else
        snprintf(g_message, sizeof g_message,
                 "saegap: error: %s: damaged HDF5 file: libhdf5 crashed reading it (%s; libhdf5 1.10 does not check "
                 "every offset it reads from a file)\n",
                 path, signal_words(sig));
    sg_h5_fault(g_message);
}

static int cpu_limit_seconds(void) {
    const char *e = getenv("SAEGAP_HDF5_CPU_LIMIT");
    if (e && e[0]) {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == 0 && v > 0 && v < 1000000) return (int)v;
    }
    return 60;
}

/* How much more address space libhdf5 may take inside one guard: SAEGAP_HDF5_MEM_LIMIT in MB,
 * default 1024 (libhdf5's own caches take tens of MB; saegap's large reads add theirs with
 * h5guard_allow). A damaged length in a file can make libhdf5 1.10 allocate and fill memory
 * without bound (fuzzing found 5 and 15 GB); above the bound its malloc returns NULL, which it
 * reports as a failed read, instead of the node's OOM killer ending every rank on it. */
static unsigned long long mem_budget_bytes(void) {
    const char *e = getenv("SAEGAP_HDF5_MEM_LIMIT");
    if (e && e[0]) {
        char *end;
        unsigned long long mb = strtoull(e, &end, 10);
        if (*end == 0 && mb > 0 && mb < (1ULL << 40)) return mb << 20;
    }
    return 1024ULL << 20;
}

#ifndef SG_NO_AS_LIMIT
static unsigned long long address_space_now(void) {
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return pages * (unsigned long long)sysconf(_SC_PAGESIZE);
}

#endif

#ifdef SG_ASAN
/* Sanitizer builds (the tests' and the fuzzers'): no address-space bound, so the same budget is
 * kept through ASan's allocator hooks, on the bytes a guarded read holds and (checked every 4 MB
 * allocated) on the resident memory it adds. Without it, a damaged file that makes libhdf5 allocate without bound in many
 * small pieces (none large enough for libFuzzer's -malloc_limit_mb) grew past libFuzzer's 2 GB
 * RSS limit in a second, where the release build ends with a message at its bound; fuzzing then
 * blamed saegap. Resident memory, not the bytes asked for: ASan's redzones more than double
 * libhdf5's small allocations. Over the budget the read ends as a crash inside the guard does. */
#include <fcntl.h>
/* sanitizer/allocator_interface.h, which GCC 12 does not install; libasan exports it */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
size_t __sanitizer_get_allocated_size(const volatile void *p);
static volatile size_t g_san_live, g_san_since_check, g_san_budget, g_san_rss0;
static volatile sig_atomic_t g_san_over;

/* Resident bytes, read without allocating (called from inside malloc). */
static size_t resident_bytes(void) {
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *p = buf;
    while (*p && *p != ' ') p++; /* the second field: resident pages */
    size_t pages = 0;
    while (*p == ' ') p++;
    while (*p >= '0' && *p <= '9') pages = pages * 10 + (size_t)(*p++ - '0');
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

static void san_malloc_hook(const volatile void *p, size_t size) {
    (void)p;
    if (g_depth <= 0 || g_san_over) return;
    g_san_live += size;
    g_san_since_check += size;
    if (g_san_live <= g_san_budget) {
        if (g_san_since_check < ((size_t)4 << 20)) return;
        g_san_since_check = 0;
        size_t now = resident_bytes();
        if (now <= g_san_rss0 || now - g_san_rss0 <= g_san_budget) return;
    }
    g_san_over = 1;
    const char *path = g_path ? g_path : "(HDF5 file)";
    disarm();
    restore_handlers();
    g_depth = 0;
    g_path = NULL;
    snprintf(g_message, sizeof g_message,
             "saegap: error: %s: damaged HDF5 file: libhdf5 took more than %zu MB of memory reading it (a damaged "
             "length; SAEGAP_HDF5_MEM_LIMIT sets the bound)\n", path, (size_t)(g_san_budget >> 20));
    sg_h5_fault(g_message);
}

static void san_free_hook(const volatile void *p) {
    if (g_depth <= 0 || !p) return;
    size_t n = __sanitizer_get_allocated_size(p);
    g_san_live = n < g_san_live ? g_san_live - n : 0;
}

static void lower_address_space(void) {
    static int installed;
    if (!installed) installed = __sanitizer_install_malloc_and_free_hooks(san_malloc_hook, san_free_hook) != 0;
    g_san_live = 0, g_san_since_check = 0, g_san_over = 0;
    g_san_rss0 = resident_bytes();
    g_san_budget = (size_t)mem_budget_bytes();
}

void h5guard_allow(size_t bytes) {
    if (g_depth > 0) g_san_budget += bytes;
}

static void restore_address_space(void) {}
#else
static void lower_address_space(void) {
#ifndef SG_NO_AS_LIMIT
    unsigned long long budget = mem_budget_bytes(), now = address_space_now();
    if (budget == 0 || now == 0 || getrlimit(RLIMIT_AS, &g_saved_as) != 0) return;
    rlim_t want = (rlim_t)(now + budget);
    if (g_saved_as.rlim_cur != RLIM_INFINITY && g_saved_as.rlim_cur <= want) return;
    if (g_saved_as.rlim_max != RLIM_INFINITY && want > g_saved_as.rlim_max) return;
    struct rlimit lowered = {want, g_saved_as.rlim_max};
    g_as_lowered = setrlimit(RLIMIT_AS, &lowered) == 0;
    if (g_as_lowered)
        sg_alloc_hint("saegap bounds the memory taken while it reads an HDF5 file (SAEGAP_HDF5_MEM_LIMIT, in MB, "
                      "default 1024)");
#endif
}

void h5guard_allow(size_t bytes) {
    if (!g_as_lowered) return;
    struct rlimit cur;
    if (getrlimit(RLIMIT_AS, &cur) != 0 || cur.rlim_cur == RLIM_INFINITY) return;
    rlim_t want = cur.rlim_cur + (rlim_t)bytes;
    if (want < cur.rlim_cur || (g_saved_as.rlim_cur != RLIM_INFINITY && want > g_saved_as.rlim_cur))
        want = g_saved_as.rlim_cur;
    cur.rlim_cur = want;
    setrlimit(RLIMIT_AS, &cur);
}

static void restore_address_space(void) {
    if (g_as_lowered) {
        setrlimit(RLIMIT_AS, &g_saved_as);
        sg_alloc_hint(NULL);
    }
    g_as_lowered = 0;
}
#endif

/* An alternate signal stack, so that a stack overflow inside libhdf5 (deep recursion on a
 * damaged file) still reaches the handler. Kept when one is already set (ASan sets its own). */
static void ensure_altstack(void) {
    static char *stack;
    stack_t cur;
    if (stack || sigaltstack(NULL, &cur) != 0 || !(cur.ss_flags & SS_DISABLE)) return;
    stack = malloc(1 << 16);
    if (!stack) return;
    stack_t ss = {.ss_sp = stack, .ss_size = 1 << 16, .ss_flags = 0};
    sigaltstack(&ss, NULL);
}

void h5guard_enter(const char *path, int cpu_limited) {
    if (g_depth++ > 0) return;
    g_path = path;
    ensure_altstack();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    /* SA_NODEFER: a handler that does not return (the fuzz targets longjmp out of it) must not
     * leave its signal blocked */
    sa.sa_flags = SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < N_SIGNALS; i++) sigaction(k_signals[i], &sa, &g_saved[i]);
    lower_address_space();
    g_cpu_limit = cpu_limited ? cpu_limit_seconds() : 0;
    if (g_cpu_limit > 0) {
        struct itimerval t;
        memset(&t, 0, sizeof t);
        t.it_value.tv_sec = g_cpu_limit;
        setitimer(ITIMER_VIRTUAL, &t, NULL);
    }
}

void h5guard_leave(void) {
    if (g_depth <= 0 || --g_depth > 0) return;
    if (g_cpu_limit > 0) disarm();
    restore_handlers();
    restore_address_space();
    g_path = NULL;
}

void h5guard_reset(void) {
    if (g_depth <= 0) return;
    g_depth = 1;
    h5guard_leave();
}
