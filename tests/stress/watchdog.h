/* watchdog.h - hang detection for the plain stress programs.
 *
 * A program starts the watchdog once (watchdog_start), counts its progress
 * (watchdog_tick) and names the phase it is in (watchdog_phase). When the
 * count has not moved for WATCHDOG_SECONDS, the watchdog prints the
 * program, the phase and what a hang there means, and exits 1. A hang
 * detector, not a timing assertion: the limit is far beyond any phase's
 * step, even under valgrind.
 */
#ifndef CTXPOOL_WATCHDOG_H
#define CTXPOOL_WATCHDOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define WATCHDOG_SECONDS 60

/* relaxed, all three: only "did it move" and "which phase" matter, and the
 * program and hang strings are set before the watchdog thread starts. */
static atomic_ullong watchdog_progress;
static const char *_Atomic watchdog_phase_name = "start";
static const char *watchdog_program, *watchdog_hang;

static inline void watchdog_tick(void)
{
    atomic_fetch_add_explicit(&watchdog_progress, 1, memory_order_relaxed);
}

static inline void watchdog_phase(const char *name)
{
    atomic_store_explicit(&watchdog_phase_name, name, memory_order_relaxed);
}

static inline void *watchdog_main(void *arg)
{
    (void)arg;
    unsigned long long last = atomic_load_explicit(&watchdog_progress, memory_order_relaxed);
    unsigned still = 0;
    for (;;) {
        struct timespec t = {0, 100000000}; /* 0.1 s */
        nanosleep(&t, NULL);
        unsigned long long now = atomic_load_explicit(&watchdog_progress, memory_order_relaxed);
        if (now != last) {
            last = now;
            still = 0;
        } else if (++still >= WATCHDOG_SECONDS * 10) {
            fprintf(stderr, "%s: no progress for %d s in phase \"%s\" (%llu steps done): %s\n",
                    watchdog_program, WATCHDOG_SECONDS,
                    atomic_load_explicit(&watchdog_phase_name, memory_order_relaxed), now,
                    watchdog_hang);
            _exit(1);
        }
    }
    return NULL;
}

/* Start the watchdog: program names the program in its report, hang what a
 * hang means there. */
static inline void watchdog_start(const char *program, const char *hang)
{
    watchdog_program = program;
    watchdog_hang = hang;
    pthread_t wd;
    CHECK(pthread_create(&wd, NULL, watchdog_main, NULL) == 0, "watchdog");
    pthread_detach(wd);
}

#endif /* CTXPOOL_WATCHDOG_H */
