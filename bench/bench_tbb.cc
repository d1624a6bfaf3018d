/* bench_tbb.cc - workloads 2, 4 and 5 with oneTBB's task_group.
 *
 * submit: global_control allows 3 threads: the main thread calls
 *   task_group::run 1,000,000 times with an empty lambda while 2 TBB workers
 *   run them, then task_group::wait, where the main thread helps run what is
 *   left, as TBB defines it. ns per job.
 * fib30, fib30-cutoff20: 2 threads (the main thread and one worker); each
 *   call runs its n-1 half in a task_group, computes its n-2 half, waits. ms.
 * skynet: 2 threads; each node runs 10 children in a task_group, waits. ms.
 * A check run counts the ids of the submitted jobs that ran; fib and skynet
 * check their value.
 */
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_group.h>

#include <cstdint>

#include "harness.h"
#include "workloads.h"

namespace {

double run_submit(void *arg)
{
    bool counted = *static_cast<bool *>(arg);
    tbb::global_control threads(tbb::global_control::max_allowed_parallelism,
                                SUBMIT_WORKERS + 1);
    tbb::task_group group;
    uint64_t t = bench_now_ns();
    if (counted) {
        for (uint64_t i = 1; i <= SUBMIT_JOBS; i++)
            group.run([i] { bench_count_job(i); });
    } else {
        for (uint64_t i = 1; i <= SUBMIT_JOBS; i++)
            group.run([] {});
    }
    group.wait();
    return double(bench_now_ns() - t) / SUBMIT_JOBS;
}

unsigned fib_cutoff; // below it, fib_seq: 2 for a task per call

uint64_t fib_task(unsigned n)
{
    if (n < fib_cutoff)
        return fib_seq(n);
    uint64_t a = 0;
    tbb::task_group group;
    group.run([&a, n] { a = fib_task(n - 1); });
    uint64_t b = fib_task(n - 2);
    group.wait();
    return a + b;
}

double run_fib(void *arg)
{
    unsigned n = *static_cast<unsigned *>(arg);
    tbb::global_control threads(tbb::global_control::max_allowed_parallelism,
                                SUBMIT_WORKERS);
    uint64_t t = bench_now_ns();
    uint64_t result = fib_task(n);
    double ms = double(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(result == FIB_RESULT, "fib value");
    return ms;
}

uint64_t skynet_task(uint64_t id, uint64_t size)
{
    if (size == 1)
        return id;
    uint64_t sums[10];
    tbb::task_group group;
    for (uint64_t i = 0; i < 10; i++)
        group.run([&sums, i, id, size] {
            sums[i] = skynet_task(id + i * (size / 10), size / 10);
        });
    group.wait();
    uint64_t sum = 0;
    for (uint64_t s : sums)
        sum += s;
    return sum;
}

double run_skynet(void *arg)
{
    uint64_t leaves = *static_cast<uint64_t *>(arg);
    tbb::global_control threads(tbb::global_control::max_allowed_parallelism,
                                SUBMIT_WORKERS);
    uint64_t t = bench_now_ns();
    uint64_t sum = skynet_task(0, leaves);
    double ms = double(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(sum == SKYNET_SUM, "skynet sum");
    return ms;
}

} // namespace

int main(int argc, char **argv)
{
    bool counted = true, empty = false;
    unsigned n = FIB_N;
    uint64_t leaves = SKYNET_LEAVES;
    bench_init(argc, argv);
    if (bench_wanted("submit")) {
        run_submit(&counted);
        bench_count_check(SUBMIT_JOBS);
        bench_measure("submit", "oneTBB task_group", "ns/job", run_submit, &empty);
    }
    if (bench_wanted("fib30")) {
        fib_cutoff = 2;
        bench_measure("fib30", "oneTBB task_group", "ms", run_fib, &n);
    }
    if (bench_wanted("fib30-cutoff20")) {
        fib_cutoff = FIB_CUTOFF;
        bench_measure("fib30-cutoff20", "oneTBB task_group", "ms", run_fib, &n);
    }
    if (bench_wanted("skynet"))
        bench_measure("skynet", "oneTBB task_group", "ms", run_skynet, &leaves);
    return 0;
}
