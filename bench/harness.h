/* harness.h - what every benchmark program shares: a clock, the run loop,
 * the output format and the result check.
 *
 * Each program prints one line per measured figure set, for bench/run:
 *
 *   row <TAB> workload <TAB> implementation <TAB> unit <TAB> v1,v2,...,vN
 *
 * where v1..vN are the N timed runs (BENCH_RUNS, default 7) that follow one
 * untimed warm-up run. bench/run computes median, min and max from them.
 * "baseline <TAB> workload <TAB> implementation" names the row the ratios of
 * a workload are taken against (ctxpool's row when a program says nothing).
 * Programs take workload names as arguments to run only those.
 */
#ifndef CTXPOOL_BENCH_HARNESS_H
#define CTXPOOL_BENCH_HARNESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The monotonic clock in nanoseconds. */
uint64_t bench_now_ns(void);

/* Remember argv[1..]: bench_wanted() is then true only for the workloads
 * named there (for every workload when there are none). Also reads
 * BENCH_RUNS. */
void bench_init(int argc, char **argv);
int bench_wanted(const char *workload);

/* Run fn(arg) once untimed, then BENCH_RUNS times, and print the row. Each
 * call of fn performs one complete run and returns its figure in unit. */
void bench_measure(const char *workload, const char *impl, const char *unit,
                   double (*fn)(void *arg), void *arg);

/* One implementation of a workload, for bench_compare. */
struct bench_case {
    const char *impl;
    double (*fn)(void *arg);
    void *arg;
};

/* bench_measure for n implementations of one workload at once, their runs
 * interleaved: each case runs once untimed, then come BENCH_RUNS rounds in
 * which every case runs once, each round starting one case further on.
 * A slow spell of the machine then falls on every case alike instead of
 * on whichever ran during it, and the ratios between the cases' medians
 * hold steady from run to run. Prints the rows in the order given. */
void bench_compare(const char *workload, const char *unit,
                   const struct bench_case *cases, int n);

/* Name the implementation the ratios of workload are taken against. */
void bench_baseline(const char *workload, const char *impl);

/* The check run of a submission benchmark: each job calls bench_count_job
 * with its id (1..n), then bench_count_check(n) fails unless n jobs ran and
 * their ids add up; it resets the count for the next check. The timed runs
 * use empty jobs instead: this count is a shared atomic, which would weigh on
 * every pool alike. */
void bench_count_job(uint64_t id);
void bench_count_check(uint64_t n);

/* A result was wrong or a call failed: say what on stderr and exit 1. */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 1, 2)))
#endif
void bench_fail(const char *fmt, ...);

/* bench_fail unless ok. */
#define BENCH_CHECK(ok, what)                                                 \
    do {                                                                      \
        if (!(ok))                                                            \
            bench_fail("%s:%d: %s", __FILE__, __LINE__, (what));              \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif /* CTXPOOL_BENCH_HARNESS_H */
