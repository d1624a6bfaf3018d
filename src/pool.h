/* pool.h - what the tests may ask of the pool's internals (pool.c). */
#ifndef CTXPOOL_POOL_H
#define CTXPOOL_POOL_H

#include <stddef.h>

/* Test hook: how many jobs the calling thread's job cache has handed out
 * (to this thread's submits) and not had back: jobs whose future or work
 * is still held, or that were lost. Once every handle is freed, the pools
 * the jobs went to are freed, and no worker of another pool that freed a
 * handle still holds its slot in its return batch (it gives the batch back
 * when it moves to another arena, waits, goes idle or exits), it is 0. */
size_t cp__pool_jobs_out(void);

/* Test hook: how many worker threads of all pools cp_pool_new has created
 * and nothing has joined yet (cp_pool_free, or cp_pool_new's own failure
 * path). A joined worker has ended: its start routine returned. Unlike
 * /proc/self/task, which still lists a thread for a moment after
 * pthread_join returns (the kernel clears the thread's tid, which wakes the
 * joiner, early in the thread's exit, and takes it off the list at the
 * end), this count is exact as soon as the join returns. 0 in a child of fork(), which has
 * no workers. */
unsigned cp__pool_workers(void);

/* Test switch: in pools made from now on, a worker turns light (pool.c,
 * "Parking") after n fenced pushes in one job (or since an announcer last
 * turned it heavy), at its (n+1)-th; or, n < 0, never, as where the kernel
 * has no membarrier. Returns the setting it replaces (LIGHT_AFTER at
 * first). */
int cp__pool_light_after(int n);

#endif /* CTXPOOL_POOL_H */
