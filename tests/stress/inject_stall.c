/* inject_stall.c - a waiting worker and an outside push stalled half-way.
 *
 * The pool has one worker, which runs one long job: it takes futures the
 * main thread hands it, one at a time, and waits for each (cp_future_wait
 * from a worker: it helps, then sleeps on the future). The main thread
 * submits each of those futures from outside, and a producer thread keeps
 * submitting empty jobs from outside too, on a CPU it shares with a thread
 * that never yields it, so that the scheduler takes the CPU from it at
 * every tick, for a time slice, sometimes in the middle of a push: after
 * its exchange of the injection queue's head and before its store of the
 * link. Until it stores the link, the items pushed after its own (the
 * main thread's next future among them) cannot be popped; the waiting
 * worker finds nothing to take for its whole search, and if it then slept on
 * its future nobody would wake it: the producer's notify, once it ran,
 * wakes parked workers only, and the only worker is not parked.
 *
 * A watchdog thread (watchdog.h) turns a hang into a failure: if no round ends for
 * WATCHDOG_SECONDS, it prints the round and exits 1. That is a hang
 * detector, not a timing assertion.
 *
 * Size: stress_ops() (check.h): argv[1] or CP_STRESS_SCALE times
 * DEFAULT_ROUNDS rounds (divided by TSAN_DIVISOR under ThreadSanitizer).
 *
 * Exits 0 on success; on failure prints where and why, exits 1.
 */
#define _GNU_SOURCE
#include "check.h"
#include "ctxpool.h"
#include "watchdog.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ROUNDS 1000000ULL
#ifdef UNDER_TSAN
#define TSAN_DIVISOR 10
#else
#define TSAN_DIVISOR 1
#endif

static cp_pool *pool;
static _Atomic(cp_future *) handed;  /* main -> the waiting job */
static atomic_ullong rounds_done;    /* written by the waiting job */
static atomic_ullong produced;
static atomic_bool stop;

static void *empty_job(void *arg)
{
    return arg;
}

/* Two CPUs or more: the producer and the hog share CPU 0, the main thread
 * and the worker CPU 1. Best effort: unpinned otherwise. */
static bool two_cpus;

static void pin_to(int cpu)
{
    if (!two_cpus)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

/* The worker's one job: wait for every future handed to it. */
static void *waiting_job(void *arg)
{
    (void)arg;
    for (;;) {
        cp_future *f;
        /* seq_cst: with the main thread's store; a handoff, spun on. */
        while (!(f = atomic_exchange(&handed, NULL))) {
            if (atomic_load(&stop))
                return NULL;
            sched_yield();
        }
        CHECK(cp_future_wait(f, NULL) == 0, "wait");
        cp_future_free(f);
        atomic_fetch_add(&rounds_done, 1);
        watchdog_tick();
    }
}

static void *producer_main(void *arg)
{
    (void)arg;
    pin_to(0);
    while (!atomic_load(&stop)) {
        CHECK(cp_pool_submit(pool, empty_job, NULL, NULL) == 0, "submit");
        /* Keep the queue short: the waiting worker runs these as it helps. */
        uint64_t n = atomic_fetch_add(&produced, 1) + 1;
        while (n > atomic_load(&rounds_done) * 4 + 1000 && !atomic_load(&stop))
            sched_yield();
    }
    return NULL;
}

static void *hog_main(void *arg)
{
    (void)arg;
    pin_to(0);
    while (!atomic_load_explicit(&stop, memory_order_relaxed))
        ;
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t rounds = stress_ops(argc, argv, DEFAULT_ROUNDS / TSAN_DIVISOR);
    two_cpus = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    pin_to(1); /* before cp_pool_new: pin puts the worker on our CPU */
    cp_pool_options options = {.threads = 1, .pin = two_cpus};
    CHECK(cp_pool_new(&pool, &options) == 0, "pool");

    pthread_t producer, hog;
    watchdog_start("inject_stall", "the worker sleeps on a future that is queued");
    cp_future *waiter;
    CHECK(cp_pool_submit(pool, waiting_job, NULL, &waiter) == 0, "submit");
    CHECK(pthread_create(&producer, NULL, producer_main, NULL) == 0, "producer");
    CHECK(pthread_create(&hog, NULL, hog_main, NULL) == 0, "hog");

    for (uint64_t i = 0; i < rounds; i++) {
        cp_future *f;
        CHECK(cp_pool_submit(pool, empty_job, NULL, &f) == 0, "submit");
        atomic_store(&handed, f);
        while (atomic_load(&rounds_done) <= i)
            sched_yield();
    }
    atomic_store(&stop, true);
    CHECK(cp_future_wait(waiter, NULL) == 0, "the waiting job ends");
    cp_future_free(waiter);
    CHECK(pthread_join(producer, NULL) == 0, "producer");
    CHECK(pthread_join(hog, NULL) == 0, "hog");
    CHECK(cp_pool_free(pool) == 0, "free");
    printf("inject_stall: %llu rounds, %llu jobs from the producer\n",
           (unsigned long long)rounds, (unsigned long long)atomic_load(&produced));
    return 0;
}
