/* mutex_pool.h - the baseline every programmer knows: a thread pool with one
 * mutex, one linked queue and two condition variables (see mutex_pool.c). */
#ifndef CTXPOOL_BENCH_MUTEX_POOL_H
#define CTXPOOL_BENCH_MUTEX_POOL_H

#include <stdint.h>

typedef struct mutex_pool mutex_pool;

/* Start threads workers; NULL when memory or threads ran out. */
mutex_pool *mutex_pool_new(unsigned threads);

/* Queue fn(arg); returns 0, or -1 when memory ran out (fn will not run). */
int mutex_pool_submit(mutex_pool *pool, void (*fn)(void *arg), void *arg);

/* Wait until every queued job has run; returns how many ran since the last
 * call. */
uint64_t mutex_pool_wait_all(mutex_pool *pool);

/* Stop the workers (after the queue is empty) and free the pool. */
void mutex_pool_free(mutex_pool *pool);

#endif /* CTXPOOL_BENCH_MUTEX_POOL_H */
