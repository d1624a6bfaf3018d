/* pool.h - what the tests may ask of the pool's internals (pool.c). */
#ifndef CTXPOOL_POOL_H
#define CTXPOOL_POOL_H

#include <stddef.h>

/* Test hook: how many jobs the calling thread's job cache has handed out
 * (to this thread's submits) and not had back: jobs whose future or work
 * is still held, or that were lost. Once every handle is freed and the
 * pools the jobs went to are freed, it is 0. */
size_t cp__pool_jobs_out(void);

#endif /* CTXPOOL_POOL_H */
