/* workloads.h - the sizes, the expected results and the sequential kernels
 * that every implementation of a workload shares, so that the C and the C++
 * programs run the same thing and check it the same way. */
#ifndef CTXPOOL_BENCH_WORKLOADS_H
#define CTXPOOL_BENCH_WORKLOADS_H

#include <stdint.h>

/* Workloads 2 and 3: empty jobs submitted from one outside thread. */
#define SUBMIT_JOBS 1000000u
#define SUBMIT_WORKERS 2u

/* Workload 4: fib(FIB_N) with a task per call, or per call at n >= FIB_CUTOFF. */
#define FIB_N 30u
#define FIB_CUTOFF 20u
#define FIB_RESULT 832040u

/* Workload 5: a 10-ary tree over SKYNET_LEAVES leaves, each returning its id. */
#define SKYNET_LEAVES 1000000u
#define SKYNET_SUM 499999500000u /* 0 + 1 + ... + 999,999 */

static inline uint64_t fib_seq(unsigned n)
{
    return n < 2 ? n : fib_seq(n - 1) + fib_seq(n - 2);
}

static inline uint64_t skynet_seq(uint64_t id, uint64_t size)
{
    if (size == 1)
        return id;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < 10; i++)
        sum += skynet_seq(id + i * (size / 10), size / 10);
    return sum;
}

#endif /* CTXPOOL_BENCH_WORKLOADS_H */
