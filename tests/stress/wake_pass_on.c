/* wake_pass_on.c - a waiting worker woken for work it will not run passes
 * the wake on (helper_sleep).
 *
 * Three workers, each round:
 * - J runs on worker B and spins until the main thread lets it go;
 * - C' (job Jc) holds worker C until A is asleep;
 * - Ja, on worker A, waits for J (cp_future_wait, or cp_future_wait_timeout
 *   in the timed phase): with nothing to help with, A sleeps in
 *   helper_sleep. The main thread waits (busy, on the pool's parks count)
 *   until it has, then lets Jc end: C searches, finds nothing and parks,
 *   behind A in the futex's queue. Once C is parked too, the main thread
 *   lets J go.
 * - J then submits X1 and X2 (pushes on B's deque) and returns at once.
 *   X1's notify finds nobody searching and two sleepers: its wake-one
 *   goes to the first queued, A, and sets the pool's waking flag, so X2's
 *   notify skips its wake. A wakes a few microseconds later, by when J has
 *   ended: its wait returns without a look for work, and Ja spins on a
 *   plain flag until X1 and X2 have both started (it never helps). B runs
 *   X2 (its own deque, newest first), which spins until X1 has started.
 *   Only C can run X1, and only a wake reaches it: the one A passes on.
 *   Without it the round hangs, which the watchdog reports.
 * A round where A wakes before J has ended (it then takes X1 itself), or
 * where the waits line up otherwise, passes too: the pause before J's
 * pushes varies to aim them at every point of A's wake.
 *
 * No sleep synchronizes anything: the main thread and the jobs spin on
 * atomics (the parks count is read with cp_pool_get_stats). The watchdog is
 * a hang detector, not a timing assertion. Size: argv[1] or CP_STRESS_SCALE
 * times DEFAULT_ROUNDS rounds per phase (check.h), under TSan a tenth.
 * Written against a mutant without the pass-on (mutation testing): it hung
 * in the first round of every run. Exits 0 on success, 1 with the failed
 * check on stderr.
 */
#include "check.h"
#include "ctxpool.h"
#include "pause.h"
#include "watchdog.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define DEFAULT_ROUNDS 2000ULL
#define TSAN_DIVISOR 10
#define HOUR_NS (3600ULL * 1000000000ULL)

struct round {
    cp_pool *pool;
    bool timed;
    uint64_t pause_ns;
    uint64_t a_parks; /* the pool's parks count as Ja starts its wait */
    cp_future *j, *x1, *x2;
    atomic_bool j_started, j_go, c_started, c_go, a_started, x1_started, x2_started;
};

/* A spin that leaves the CPU to others now and then: the test may run on
 * fewer CPUs than threads. Not a sleep: nothing waits for time to pass. */
static void spin_until(atomic_bool *flag)
{
    unsigned n = 0;
    while (!atomic_load_explicit(flag, memory_order_acquire))
        if (++n % 64 == 0)
            sched_yield();
}

static uint64_t parks(cp_pool *pool)
{
    cp_pool_stats s;
    CHECK(cp_pool_get_stats(pool, &s) == 0, "stats");
    return s.parks;
}

static void *job_x1(void *p)
{
    struct round *r = p;
    atomic_store_explicit(&r->x1_started, true, memory_order_release);
    spin_until(&r->x2_started);
    return NULL;
}

static void *job_x2(void *p)
{
    struct round *r = p;
    atomic_store_explicit(&r->x2_started, true, memory_order_release);
    spin_until(&r->x1_started); /* only X1's start ends this */
    return NULL;
}

static void *job_j(void *p)
{
    struct round *r = p;
    atomic_store_explicit(&r->j_started, true, memory_order_release);
    spin_until(&r->j_go);
    spin_ns(r->pause_ns);
    CHECK(cp_pool_submit(r->pool, job_x1, r, &r->x1) == 0, "submit X1");
    CHECK(cp_pool_submit(r->pool, job_x2, r, &r->x2) == 0, "submit X2");
    return (void *)1;
}

static void *job_c(void *p)
{
    struct round *r = p;
    atomic_store_explicit(&r->c_started, true, memory_order_release);
    spin_until(&r->c_go);
    return NULL;
}

static void *job_a(void *p)
{
    struct round *r = p;
    /* B and C are busy, and we are running: the next park is ours. */
    r->a_parks = parks(r->pool);
    atomic_store_explicit(&r->a_started, true, memory_order_release);
    void *result = NULL;
    int err = r->timed ? cp_future_wait_timeout(r->j, HOUR_NS, &result)
                       : cp_future_wait(r->j, &result);
    CHECK(err == 0 && result == (void *)1, "A's wait for J: %d", err);
    /* No helping from here on: a plain spin until X1 and X2 have run. */
    spin_until(&r->x1_started);
    spin_until(&r->x2_started);
    return NULL;
}

/* Spin until the pool's parks count passes `than`. A worker counts its park
 * just before its futex wait: close enough, the steps after take longer. */
static uint64_t wait_parks_above(cp_pool *pool, uint64_t than)
{
    uint64_t n;
    unsigned i = 0;
    while ((n = parks(pool)) <= than)
        if (++i % 64 == 0)
            sched_yield();
    return n;
}

static void run_phase(const char *name, bool timed, unsigned long long rounds)
{
    watchdog_phase(name);
    cp_pool_options o = {.threads = 3, .name = "passon"};
    cp_pool *pool = NULL;
    CHECK(cp_pool_new(&pool, &o) == 0, "cp_pool_new");
    uint64_t rng = timed ? 0x5eed2 : 0x5eed1;
    for (unsigned long long i = 0; i < rounds; i++) {
        static struct round r; /* reset below: the jobs point into it */
        r = (struct round){.pool = pool, .timed = timed};
        /* Mostly no pause (J's pushes right after its go), sometimes a few
         * hundred ns or us. */
        uint64_t x = splitmix(&rng);
        r.pause_ns = x % 4 == 0 ? (x >> 8) % 3000 : 0;
        cp_future *c = NULL, *a = NULL;
        CHECK(cp_pool_submit(pool, job_j, &r, &r.j) == 0, "submit J");
        spin_until(&r.j_started);
        CHECK(cp_pool_submit(pool, job_c, &r, &c) == 0, "submit Jc");
        spin_until(&r.c_started);
        CHECK(cp_pool_submit(pool, job_a, &r, &a) == 0, "submit Ja");
        spin_until(&r.a_started);
        /* B and C are busy: the next park is A's, in its wait for J. */
        uint64_t n = wait_parks_above(pool, r.a_parks);
        atomic_store_explicit(&r.c_go, true, memory_order_release);
        /* Then C's, once Jc has ended (A's sleep lasts until J ends or a
         * notify: neither comes before j_go). */
        wait_parks_above(pool, n);
        atomic_store_explicit(&r.j_go, true, memory_order_release);
        CHECK(cp_future_wait(a, NULL) == 0, "wait Ja");
        CHECK(cp_future_wait(c, NULL) == 0, "wait Jc");
        CHECK(cp_future_wait(r.j, NULL) == 0, "wait J");
        /* J's end happens-before its wait's return: its submits are done. */
        CHECK(cp_future_wait(r.x1, NULL) == 0, "wait X1");
        CHECK(cp_future_wait(r.x2, NULL) == 0, "wait X2");
        cp_future_free(r.x1);
        cp_future_free(r.x2);
        cp_future_free(a);
        cp_future_free(c);
        cp_future_free(r.j);
        watchdog_tick();
    }
    CHECK(cp_pool_free(pool) == 0, "free");
}

int main(int argc, char **argv)
{
    unsigned long long fallback = DEFAULT_ROUNDS;
#ifdef UNDER_TSAN
    fallback /= TSAN_DIVISOR;
#endif
    unsigned long long rounds = stress_ops(argc, argv, fallback);
    watchdog_start("wake_pass_on",
                   "a waiting worker woken by a notify for work it did not run (its wait "
                   "had ended) did not pass the wake on: X1 never ran");
    run_phase("wait", false, rounds);
    run_phase("timed", true, rounds);
    printf("wake_pass_on: 2 x %llu rounds, every queued job ran\n", rounds);
    return 0;
}
