/* floor.h - the floor for cp_var_get: a __thread read inside a shared
 * library (bench/libfloor.so, built from floor.c), reached the way a program
 * reaches cp_var_get in libctxpool.so: a call through the PLT. */
#ifndef CTXPOOL_BENCH_FLOOR_H
#define CTXPOOL_BENCH_FLOOR_H

/* The calling thread's slot; NULL until bench_floor_set. */
void *bench_floor_get(void);
void bench_floor_set(void *value);

#endif /* CTXPOOL_BENCH_FLOOR_H */
