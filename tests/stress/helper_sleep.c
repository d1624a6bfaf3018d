/* helper_sleep.c - a worker asleep in a wait (cp_future_wait) is woken for
 * work queued after it fell asleep.
 *
 * Three workers. F pauses, submits B (a push on its worker's deque) and
 * blocks until B has run; Z blocks until B has run; G waits for F. F and Z
 * start before G is submitted, so G's worker cannot take F: it searches,
 * finds nothing and sleeps until F ends. When F's pause outlasts that
 * search, B's push finds nobody searching, and only G's worker is free to
 * run B: its sleep must end for B (its worker counts as a waiter, which
 * B's notify wakes), or F never ends and the pool hangs, which the
 * watchdog turns into a failure. Before that was so, a helping wait slept
 * on F's state word alone, and this program hung in its first rounds.
 *
 * 1. wait: G waits with cp_future_wait (a wait that searches first).
 * 2. timed: G waits with cp_future_wait_timeout and an hour's timeout (a
 *    wait that does not search, and sleeps with a deadline).
 * F's pause grows from 0.1 ms to 2 ms, round by round, so that B comes at
 * every point of G's search and sleep; a round whose G has not slept yet
 * passes too.
 *
 * 3. late: T submits F and waits for it, so that it takes F back from its
 *    own deque and runs it, ending it with a plain store (job_take_own);
 *    two waiters H1 and H2, on the other workers, and a thread outside
 *    the pool come after the take (a plain wait, a timed one, a plain
 *    one) at random moments, and so go through the late waiters'
 *    handshake (mark_sleeper's fence, or its skip once a fence made
 *    sure), sleeping on the pool's epoch (H1, H2) or on F's state word
 *    (the outside thread). In half the rounds F queues B after a random
 *    pause and blocks until B has run: only a sleeping H can run B. A
 *    lost wake-up of either kind (for F's end, or for B) hangs: one does
 *    when late waiters are not woken by the taker. (The fences' store-
 *    buffering windows are nanoseconds wide: no stress test can show
 *    that a fence is needed.)
 *
 * A plain program (no Criterion), so that it runs under ThreadSanitizer.
 * The watchdog is a hang detector, not a timing assertion. Size: argv[1]
 * or CP_STRESS_SCALE times DEFAULT_ROUNDS rounds for each of the first two
 * phases, ten times that for the late phase (check.h). Exits 0 on success,
 * 1 with the failed check on stderr.
 */
#include "check.h"
#include "ctxpool.h"
#include "pause.h"
#include "watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define DEFAULT_ROUNDS 100ULL
#define HOUR_NS (3600ULL * 1000000000ULL)

struct round {
    cp_pool *pool;
    uint64_t pause_ns;
    bool timed;
    sem_t started, b_ran;
    cp_future *f;
};

static void sem_wait_one(sem_t *s)
{
    while (sem_wait(s) != 0)
        CHECK(errno == EINTR, "sem_wait");
}

static void *job_b(void *p)
{
    struct round *r = p;
    sem_post(&r->b_ran); /* for F */
    sem_post(&r->b_ran); /* for Z */
    return NULL;
}

static void *job_f(void *p)
{
    struct round *r = p;
    sem_post(&r->started);
    struct timespec t = {0, (long)r->pause_ns};
    while (nanosleep(&t, &t) != 0)
        ;
    CHECK(cp_pool_submit(r->pool, job_b, r, NULL) == 0, "submit B");
    sem_wait_one(&r->b_ran);
    return (void *)1;
}

static void *job_z(void *p)
{
    struct round *r = p;
    sem_post(&r->started);
    sem_wait_one(&r->b_ran);
    return NULL;
}

static void *job_g(void *p)
{
    struct round *r = p;
    void *result = NULL;
    int err = r->timed ? cp_future_wait_timeout(r->f, HOUR_NS, &result)
                       : cp_future_wait(r->f, &result);
    CHECK(err == 0 && result == (void *)1, "G's wait for F: %d", err);
    return NULL;
}

static void run_phase(const char *name, bool timed, unsigned long long rounds)
{
    watchdog_phase(name);
    cp_pool_options o = {.threads = 3, .name = "helpsleep"};
    cp_pool *pool = NULL;
    CHECK(cp_pool_new(&pool, &o) == 0, "cp_pool_new");
    for (unsigned long long i = 0; i < rounds; i++) {
        struct round r = {.pool = pool, .pause_ns = 100000u * (1 + i % 20), .timed = timed};
        CHECK(sem_init(&r.started, 0, 0) == 0 && sem_init(&r.b_ran, 0, 0) == 0, "sem_init");
        cp_future *z = NULL, *g = NULL;
        CHECK(cp_pool_submit(pool, job_f, &r, &r.f) == 0, "submit F");
        sem_wait_one(&r.started);
        CHECK(cp_pool_submit(pool, job_z, &r, &z) == 0, "submit Z");
        sem_wait_one(&r.started);
        CHECK(cp_pool_submit(pool, job_g, &r, &g) == 0, "submit G");
        CHECK(cp_future_wait(g, NULL) == 0, "wait G");
        CHECK(cp_future_wait(z, NULL) == 0, "wait Z");
        CHECK(cp_future_wait(r.f, NULL) == 0, "wait F");
        cp_future_free(g);
        cp_future_free(z);
        cp_future_free(r.f);
        sem_destroy(&r.started);
        sem_destroy(&r.b_ran);
        watchdog_tick();
    }
    CHECK(cp_pool_free(pool) == 0, "free");
}

struct late_round {
    cp_pool *pool;
    cp_future *f;
    uint64_t seed;
    bool queue_b;
    sem_t h_ready, f_started, b_ran;
};

static void *late_b(void *p)
{
    struct late_round *r = p;
    sem_post(&r->b_ran);
    return NULL;
}

static void *late_f(void *p)
{
    struct late_round *r = p;
    uint64_t rng = r->seed * 2 + 1;
    sem_post(&r->f_started); /* for H1 */
    sem_post(&r->f_started); /* for H2 */
    sem_post(&r->f_started); /* for the outside waiter */
    spin_ns(random_pause(&rng));
    if (r->queue_b) {
        CHECK(cp_pool_submit(r->pool, late_b, r, NULL) == 0, "submit B");
        sem_wait_one(&r->b_ran);
    }
    return (void *)1;
}

/* T: both Hs are running (blocked), so F stays on T's deque until T's
 * wait takes it back. */
static void *late_t(void *p)
{
    struct late_round *r = p;
    sem_wait_one(&r->h_ready);
    sem_wait_one(&r->h_ready);
    CHECK(cp_pool_submit(r->pool, late_f, r, &r->f) == 0, "submit F");
    void *result = NULL;
    CHECK(cp_future_wait(r->f, &result) == 0 && result == (void *)1, "T's wait for F");
    return NULL;
}

struct late_waiter {
    struct late_round *round;
    bool timed;
};

static void *late_h(void *p)
{
    struct late_waiter *h = p;
    struct late_round *r = h->round;
    uint64_t rng = r->seed * 4 + 1 + h->timed;
    sem_post(&r->h_ready);
    sem_wait_one(&r->f_started);
    spin_ns(random_pause(&rng));
    void *result = NULL;
    int err = h->timed ? cp_future_wait_timeout(r->f, HOUR_NS, &result)
                       : cp_future_wait(r->f, &result);
    CHECK(err == 0 && result == (void *)1, "H's wait for F: %d", err);
    return NULL;
}

/* The outside waiter: a thread of no pool, which sleeps on F's word. */
static void *late_outside(void *p)
{
    struct late_round *r = p;
    uint64_t rng = r->seed * 4 + 3;
    sem_wait_one(&r->f_started);
    spin_ns(random_pause(&rng));
    void *result = NULL;
    CHECK(cp_future_wait(r->f, &result) == 0 && result == (void *)1,
          "the outside wait for F");
    return NULL;
}

static void run_late(unsigned long long rounds)
{
    watchdog_phase("late");
    cp_pool_options o = {.threads = 3, .name = "helpsleep"};
    cp_pool *pool = NULL;
    CHECK(cp_pool_new(&pool, &o) == 0, "cp_pool_new");
    for (unsigned long long i = 0; i < rounds; i++) {
        struct late_round r = {.pool = pool, .seed = i, .queue_b = i % 2};
        CHECK(sem_init(&r.h_ready, 0, 0) == 0 && sem_init(&r.f_started, 0, 0) == 0 &&
                  sem_init(&r.b_ran, 0, 0) == 0,
              "sem_init");
        struct late_waiter w1 = {&r, false}, w2 = {&r, true};
        cp_future *h1 = NULL, *h2 = NULL, *t = NULL;
        CHECK(cp_pool_submit(pool, late_h, &w1, &h1) == 0, "submit H1");
        CHECK(cp_pool_submit(pool, late_h, &w2, &h2) == 0, "submit H2");
        CHECK(cp_pool_submit(pool, late_t, &r, &t) == 0, "submit T");
        pthread_t outside;
        CHECK(pthread_create(&outside, NULL, late_outside, &r) == 0, "pthread_create");
        CHECK(pthread_join(outside, NULL) == 0, "pthread_join");
        CHECK(cp_future_wait(t, NULL) == 0, "wait T");
        CHECK(cp_future_wait(h1, NULL) == 0, "wait H1");
        CHECK(cp_future_wait(h2, NULL) == 0, "wait H2");
        cp_future_free(t);
        cp_future_free(h1);
        cp_future_free(h2);
        cp_future_free(r.f);
        sem_destroy(&r.h_ready);
        sem_destroy(&r.f_started);
        sem_destroy(&r.b_ran);
        watchdog_tick();
    }
    CHECK(cp_pool_free(pool) == 0, "free");
}

int main(int argc, char **argv)
{
    unsigned long long rounds = stress_ops(argc, argv, DEFAULT_ROUNDS);
    watchdog_start("helper_sleep", "a worker asleep in a wait for F was not woken, for B "
                   "queued while it slept or (late) for F's end");
    run_phase("wait", false, rounds);
    run_phase("timed", true, rounds);
    run_late(rounds * 10);
    printf("helper_sleep: 2 x %llu and %llu late rounds, every queued job ran\n", rounds,
           rounds * 10);
    return 0;
}
