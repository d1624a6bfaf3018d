/* harness.c - the run loop and output format shared by the benchmarks
 * (see harness.h). One warm-up run, then BENCH_RUNS timed runs (default 7,
 * the figure bench/run reports is their median). */
#include "config.h"

#include "harness.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_RUNS 7
#define MAX_RUNS 1000

static int runs = DEFAULT_RUNS;
static char **names;
static int name_count;
static atomic_uint_fast64_t jobs_counted, ids_counted;

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void bench_init(int argc, char **argv)
{
    const char *env = getenv("BENCH_RUNS");
    if (env != NULL) {
        runs = atoi(env);
        if (runs < 1 || runs > MAX_RUNS)
            bench_fail("BENCH_RUNS must be between 1 and %d", MAX_RUNS);
    }
    names = argv + 1;
    name_count = argc - 1;
}

int bench_wanted(const char *workload)
{
    if (name_count == 0)
        return 1;
    for (int i = 0; i < name_count; i++)
        if (strcmp(names[i], workload) == 0)
            return 1;
    return 0;
}

void bench_measure(const char *workload, const char *impl, const char *unit,
                   double (*fn)(void *arg), void *arg)
{
    struct bench_case one = {impl, fn, arg};
    bench_compare(workload, unit, &one, 1);
}

void bench_compare(const char *workload, const char *unit,
                   const struct bench_case *cases, int n)
{
    double *figures = malloc((size_t)n * (size_t)runs * sizeof *figures);
    if (!figures)
        bench_fail("out of memory for %d figures", n * runs);
    /* warm-up: caches, free lists, thread start-up, page faults */
    for (int c = 0; c < n; c++)
        cases[c].fn(cases[c].arg);
    for (int r = 0; r < runs; r++)
        for (int k = 0; k < n; k++) {
            int c = (r + k) % n;
            figures[c * runs + r] = cases[c].fn(cases[c].arg);
        }
    for (int c = 0; c < n; c++) {
        printf("row\t%s\t%s\t%s\t", workload, cases[c].impl, unit);
        for (int r = 0; r < runs; r++)
            printf("%s%.6g", r == 0 ? "" : ",", figures[c * runs + r]);
        printf("\n");
    }
    fflush(stdout);
    free(figures);
}

void bench_baseline(const char *workload, const char *impl)
{
    printf("baseline\t%s\t%s\n", workload, impl);
}

void bench_count_job(uint64_t id)
{
    /* relaxed: the pool's own wait-for-all orders these before the check. */
    atomic_fetch_add_explicit(&jobs_counted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ids_counted, id, memory_order_relaxed);
}

void bench_count_check(uint64_t n)
{
    uint64_t jobs = atomic_exchange_explicit(&jobs_counted, 0, memory_order_relaxed);
    uint64_t ids = atomic_exchange_explicit(&ids_counted, 0, memory_order_relaxed);
    if (jobs != n || ids != n * (n + 1) / 2)
        bench_fail("%llu jobs ran with id sum %llu; expected %llu jobs, id sum %llu",
                   (unsigned long long)jobs, (unsigned long long)ids,
                   (unsigned long long)n, (unsigned long long)(n * (n + 1) / 2));
}

void bench_fail(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("bench: FAILED: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}
