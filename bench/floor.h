/* floor.h - floors that ctxpool's figures are judged against, built into
 * bench/libfloor.so and reached the way a program reaches libctxpool.so: a
 * call through the PLT.
 *
 * floor.c: for cp_var_get, a __thread read inside the shared library.
 * floor_task.c: for cp_spawn and cp_sync, a spawn and a sync that do the
 * least a library's can whose sync runs the task (see there). */
#ifndef CTXPOOL_BENCH_FLOOR_H
#define CTXPOOL_BENCH_FLOOR_H

/* The calling thread's slot; NULL until bench_floor_set. */
void *bench_floor_get(void);
void bench_floor_set(void *value);

/* A task, in its spawner's frame as a cp_task is. */
struct bench_floor_task {
    void *(*fn)(void *);
    void *arg;
    struct bench_floor_task *prev; /* the spawner's task spawned before */
};

/* Record t, to run fn(arg) at its sync, on this thread. */
void bench_floor_spawn(struct bench_floor_task *t, void *(*fn)(void *), void *arg);

/* Run t, the newest task this thread spawned and has not synced, and store
 * what it returns in *result; 0. -1, doing nothing, when t is not the
 * newest. */
int bench_floor_sync(struct bench_floor_task *t, void **result);

#endif /* CTXPOOL_BENCH_FLOOR_H */
