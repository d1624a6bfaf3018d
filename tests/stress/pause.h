/* pause.h - busy pauses of random length, with which the plain stress
 * programs aim one thread's step at every point of another's.
 */
#ifndef CTXPOOL_PAUSE_H
#define CTXPOOL_PAUSE_H

#include <stdint.h>
#include <time.h>

/* splitmix64: a small, good generator; each thread keeps its own state. */
static inline uint64_t splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Busy-wait about ns nanoseconds (no sleep: the point is to stay on the
 * CPU). */
static inline void spin_ns(uint64_t ns)
{
    if (ns == 0)
        return;
    uint64_t until = now_ns() + ns;
    while (now_ns() < until)
        ;
}

/* A random pause length in ns: "not at all", "a few hundred ns", "a few
 * us", or about as long as a worker searches before it parks (SPIN_NS, 50 us
 * in pool.c) and longer, so that a step lands before, in and after a
 * worker's way to sleep. */
static inline uint64_t random_pause(uint64_t *rng)
{
    uint64_t r = splitmix(rng);
    switch (r % 8) {
    case 0:
        return 0;
    case 1: case 2: case 3:
        return (r >> 8) % 500;
    case 4: case 5:
        return (r >> 8) % 5000;
    default:
        return 20000 + (r >> 8) % 100000;
    }
}

#endif /* CTXPOOL_PAUSE_H */
