/* bench_omp.c - workloads 2, 4 and 5 with OpenMP tasks (GCC's libgomp).
 *
 * submit: a team of 3 threads; one thread (inside "single") creates
 *   1,000,000 empty tasks, the other 2 run them; the barrier at the end of
 *   "single" is the wait for all, and there the creating thread helps run
 *   what is left, as OpenMP defines it. libgomp also lets the creating thread
 *   run tasks itself once more than 64 per thread are queued. ns per task,
 *   timed around the parallel region (the team's threads are kept by libgomp
 *   between regions; the warm-up run starts them).
 * fib30, fib30-cutoff20: a team of 2 threads; each call makes its n-1 half a
 *   task, computes its n-2 half and waits with taskwait. ms.
 * skynet: a team of 2; each node makes 10 tasks and waits with taskwait. ms.
 * A check run counts the ids of the submitted tasks that ran; fib and skynet
 * check their value.
 */
#include "config.h"

#include <omp.h>
#include <stdint.h>

#include "harness.h"
#include "workloads.h"

static double run_submit(void *arg)
{
    int counted = *(int *)arg;
    uint64_t t = bench_now_ns();
#pragma omp parallel num_threads(SUBMIT_WORKERS + 1)
#pragma omp single
    for (uint64_t i = 1; i <= SUBMIT_JOBS; i++) {
#pragma omp task firstprivate(i)
        if (counted)
            bench_count_job(i);
    }
    return (double)(bench_now_ns() - t) / SUBMIT_JOBS;
}

static unsigned fib_cutoff; /* below it, fib_seq: 2 for a task per call */

static uint64_t fib_task(unsigned n)
{
    uint64_t a, b;
    if (n < fib_cutoff)
        return fib_seq(n);
#pragma omp task shared(a) firstprivate(n)
    a = fib_task(n - 1);
    b = fib_task(n - 2);
#pragma omp taskwait
    return a + b;
}

static double run_fib(void *arg)
{
    unsigned n = *(unsigned *)arg;
    uint64_t result = 0;
    uint64_t t = bench_now_ns();
#pragma omp parallel num_threads(SUBMIT_WORKERS) shared(result)
#pragma omp single
    result = fib_task(n);
    double ms = (double)(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(result == FIB_RESULT, "fib value");
    return ms;
}

static uint64_t skynet_task(uint64_t id, uint64_t size)
{
    uint64_t sums[10];
    if (size == 1)
        return id;
    for (uint64_t i = 0; i < 10; i++) {
#pragma omp task shared(sums) firstprivate(i)
        sums[i] = skynet_task(id + i * (size / 10), size / 10);
    }
#pragma omp taskwait
    uint64_t sum = 0;
    for (int i = 0; i < 10; i++)
        sum += sums[i];
    return sum;
}

static double run_skynet(void *arg)
{
    uint64_t leaves = *(uint64_t *)arg, sum = 0;
    uint64_t t = bench_now_ns();
#pragma omp parallel num_threads(SUBMIT_WORKERS) shared(sum)
#pragma omp single
    sum = skynet_task(0, leaves);
    double ms = (double)(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(sum == SKYNET_SUM, "skynet sum");
    return ms;
}

int main(int argc, char **argv)
{
    int counted = 1, empty = 0;
    unsigned n = FIB_N;
    uint64_t leaves = SKYNET_LEAVES;
    bench_init(argc, argv);
    omp_set_dynamic(0);
    if (bench_wanted("submit")) {
        run_submit(&counted);
        bench_count_check(SUBMIT_JOBS);
        bench_measure("submit", "OpenMP tasks", "ns/job", run_submit, &empty);
    }
    if (bench_wanted("fib30")) {
        fib_cutoff = 2;
        bench_measure("fib30", "OpenMP tasks", "ms", run_fib, &n);
    }
    if (bench_wanted("fib30-cutoff20")) {
        fib_cutoff = FIB_CUTOFF;
        bench_measure("fib30-cutoff20", "OpenMP tasks", "ms", run_fib, &n);
    }
    if (bench_wanted("skynet"))
        bench_measure("skynet", "OpenMP tasks", "ms", run_skynet, &leaves);
    return 0;
}
