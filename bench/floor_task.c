/* floor_task.c - the least a task library can cost whose spawn and sync are
 * calls into a shared library and whose sync runs the task, as cp_spawn and
 * cp_sync are and do. The spawn records
 * the task on the calling thread's stack of tasks (initial-exec TLS, as
 * libctxpool's own thread state); the sync checks that the task is the
 * newest (cp_sync's order check) and calls its function. Nothing else: no
 * context is captured or entered, no deque, no other thread can take the
 * task. Built into bench/libfloor.so (not installed); bench_pool times fib
 * with it on one thread, beside the pool's frame tasks. */
#include "config.h"

#include <stddef.h>

#include "floor.h"

static __thread struct bench_floor_task *newest __attribute__((tls_model("initial-exec")));

void bench_floor_spawn(struct bench_floor_task *t, void *(*fn)(void *), void *arg)
{
    t->fn = fn;
    t->arg = arg;
    t->prev = newest;
    newest = t;
}

int bench_floor_sync(struct bench_floor_task *t, void **result)
{
    if (t != newest)
        return -1;
    newest = t->prev;
    *result = t->fn(t->arg);
    return 0;
}
