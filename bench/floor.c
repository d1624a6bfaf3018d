/* floor.c - a __thread variable behind a shared-library call: the least any
 * per-thread lookup in a shared library can cost. It uses the initial-exec
 * TLS model, as libctxpool's own thread state does, so the two differ only in
 * the work done after the call. Built as bench/libfloor.so (not installed). */
#include "config.h"

#include "floor.h"

static __thread void *slot __attribute__((tls_model("initial-exec")));

void *bench_floor_get(void)
{
    return slot;
}

void bench_floor_set(void *value)
{
    slot = value;
}
