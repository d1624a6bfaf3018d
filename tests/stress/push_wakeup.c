/* push_wakeup.c - lost wake-ups for work that a worker pushes on its own
 * deque.
 *
 * pool_stress's "lost wake-ups" phase submits from outside the pool, onto
 * the injection queue, whose seq_cst exchange orders the notify itself. A
 * worker's push is only a release store of bottom, which its notify
 * orders before its look at the waiter and searcher counts; the worker
 * about to park, or a searcher that stops, fences before its last look for
 * work. Where the process has membarrier, a worker whose job has pushed
 * enough turns light: its pushes then order their
 * side with a compiler barrier only, and the other side fences every
 * thread. Every phase runs half its rounds with workers that turn light
 * after one push (the pool's test switch), where a job that pushes first
 * pushes a no-op job to turn its worker light, and half with real fences
 * on both sides, as where the kernel has no membarrier. (The batch phase
 * has no pushes from jobs: a worker's moves from the injection queue always
 * fence. Its halves differ in the announcers' side only.) Each phase
 * here makes a worker push work and then block WITHOUT helping (on a
 * semaphore the pushed work posts), so that only another worker can run
 * that work: if the other worker's park missed the push and the push's
 * notify missed the parker, the program hangs, which the watchdog turns
 * into a failure. Random pauses on every side, some about as long as a
 * worker's search before it parks (SPIN_NS, 50 us), aim the push at every
 * point of going to sleep.
 *
 * 1. push: a job pauses, submits a child (a push on its worker's deque),
 *    and blocks until the child has run; pools of 2 and 3 workers.
 * 2. batch: the main thread submits a few jobs at once; the first of them
 *    to start blocks until all the others have run. Its worker may have
 *    moved the others from the injection queue to its own deque
 *    (take_injected's notify).
 * 3. awaited: three workers; F is short; P waits for F (a helping wait:
 *    it looks for work, counted as helping, not searching, so that no
 *    notify leaves C to it; F may end first), then blocks until C has run;
 *    G pauses, submits C and blocks until C has run. P's and G's workers
 *    may both be blocked: C needs the third.
 *
 * A plain program (no Criterion), so that it runs under ThreadSanitizer.
 * The watchdog is a hang detector, not a timing assertion. Size: argv[1]
 * or CP_STRESS_SCALE times DEFAULT_ROUNDS (check.h). Exits 0 on success,
 * 1 with the failed check on stderr.
 */
#include "check.h"
#include "ctxpool.h"
#include "pause.h"
#include "pool.h"
#include "watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ROUNDS 20000ULL
#ifdef UNDER_TSAN
#define TSAN_DIVISOR 4
#else
#define TSAN_DIVISOR 1
#endif
#define BATCH_MAX 16

static void sem_wait_all(sem_t *s, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        while (sem_wait(s) != 0)
            CHECK(errno == EINTR, "sem_wait");
}

static cp_pool *new_pool(unsigned threads)
{
    cp_pool_options o = {.threads = threads, .name = "pushwake"};
    cp_pool *pool = NULL;
    int rc = cp_pool_new(&pool, &o);
    CHECK(rc == 0, "cp_pool_new: %s", cp_strerror(rc));
    return pool;
}

/* ------------------------------------------------------------------------ */
/* Phase 1: a job pushes a child and blocks until it has run                */

struct round {
    cp_pool *pool;
    uint64_t pause;       /* before the push */
    sem_t ran;            /* posted by the child(ren) */
    unsigned posts;       /* how many times push_then_block's child posts */
    unsigned blocked_for; /* posts the blocked job waits for */
    atomic_bool first;    /* batch: set by the first job to start */
    bool arm;             /* push a no-op first: the worker turns light */
    cp_future *awaited;   /* awaited: F */
};

static void *post_child(void *p)
{
    struct round *r = p;
    /* Read before the first post: after the last one, r may be gone. */
    unsigned posts = r->posts;
    sem_t *ran = &r->ran;
    for (unsigned i = 0; i < posts; i++)
        sem_post(ran);
    return NULL;
}

static void *noop(void *p)
{
    return p;
}

static void *push_then_block(void *p)
{
    struct round *r = p;
    if (r->arm)
        CHECK(cp_pool_submit(r->pool, noop, NULL, NULL) == 0, "submit the no-op");
    spin_ns(r->pause);
    int rc = cp_pool_submit(r->pool, post_child, r, NULL);
    CHECK(rc == 0, "submit from a job: %s", cp_strerror(rc));
    sem_wait_all(&r->ran, r->blocked_for);
    return NULL;
}

/* One round: a job pushes a child and blocks until it has run. */
static void round_push(struct round *r, uint64_t *rng)
{
    r->pause = random_pause(rng);
    r->posts = 1;
    r->blocked_for = 1;
    spin_ns(random_pause(rng));
    cp_future *f = NULL;
    CHECK(cp_pool_submit(r->pool, push_then_block, r, &f) == 0, "submit");
    CHECK(cp_future_wait(f, NULL) == 0, "wait");
    cp_future_free(f);
}

/* ------------------------------------------------------------------------ */
/* Phase 2: the first job of a batch blocks until the others have run      */

static void *batch_job(void *p)
{
    struct round *r = p;
    /* relaxed: the semaphore orders what matters (nothing but the count). */
    if (!atomic_exchange_explicit(&r->first, true, memory_order_relaxed))
        sem_wait_all(&r->ran, r->blocked_for);
    else
        sem_post(&r->ran);
    return NULL;
}

/* One round: 2 to BATCH_MAX jobs at once; the first to start blocks. */
static void round_batch(struct round *r, uint64_t *rng)
{
    unsigned n = 2 + (unsigned)(splitmix(rng) % (BATCH_MAX - 1));
    r->blocked_for = n - 1;
    spin_ns(random_pause(rng));
    cp_future *f[BATCH_MAX];
    for (unsigned j = 0; j < n; j++)
        CHECK(cp_pool_submit(r->pool, batch_job, r, &f[j]) == 0, "submit");
    for (unsigned j = 0; j < n; j++) {
        CHECK(cp_future_wait(f[j], NULL) == 0, "wait");
        cp_future_free(f[j]);
    }
}

/* ------------------------------------------------------------------------ */
/* Phase 3: a helping wait that ends without work, against a push           */

static void *short_job(void *p)
{
    spin_ns((uintptr_t)p);
    return NULL;
}

static void *wait_then_block(void *p)
{
    struct round *r = p;
    CHECK(cp_future_wait(r->awaited, NULL) == 0, "wait for F");
    sem_wait_all(&r->ran, 1);
    return NULL;
}

/* One round: F, P waiting for F, and G pushing C, in either order of P
 * and G; C posts for G and for P. */
static void round_awaited(struct round *r, uint64_t *rng)
{
    r->pause = random_pause(rng);
    r->posts = 2;
    r->blocked_for = 1;
    cp_pool *pool = r->pool;
    cp_future *f = NULL, *p = NULL, *g = NULL;
    spin_ns(random_pause(rng));
    CHECK(cp_pool_submit(pool, short_job, (void *)(uintptr_t)(random_pause(rng) / 4), &f) == 0,
          "submit F");
    r->awaited = f;
    if (splitmix(rng) & 1) {
        CHECK(cp_pool_submit(pool, wait_then_block, r, &p) == 0, "submit P");
        CHECK(cp_pool_submit(pool, push_then_block, r, &g) == 0, "submit G");
    } else {
        CHECK(cp_pool_submit(pool, push_then_block, r, &g) == 0, "submit G");
        CHECK(cp_pool_submit(pool, wait_then_block, r, &p) == 0, "submit P");
    }
    CHECK(cp_future_wait(p, NULL) == 0, "wait P");
    CHECK(cp_future_wait(g, NULL) == 0, "wait G");
    CHECK(cp_future_wait(f, NULL) == 0, "wait F");
    cp_future_free(p);
    cp_future_free(g);
    cp_future_free(f);
}

/* ------------------------------------------------------------------------ */

/* Run `rounds` rounds of one phase on a fresh pool of `threads` workers,
 * each round with a fresh struct round (its semaphore at 0): half on a pool
 * whose workers turn light after one push, half on one whose workers
 * never do. */
static void run_phase(const char *name, unsigned threads, uint64_t seed, uint64_t rounds,
                      void (*one)(struct round *, uint64_t *))
{
    watchdog_phase(name);
    uint64_t rng = seed;
    int light_after = 0;
    for (int light = 1; light >= 0; light--) {
        int was = cp__pool_light_after(light ? 0 : -1);
        if (light)
            light_after = was;
        cp_pool *pool = new_pool(threads);
        for (uint64_t i = 0; i < rounds / 2; i++) {
            struct round r = {.pool = pool, .arm = light};
            CHECK(sem_init(&r.ran, 0, 0) == 0, "sem_init");
            atomic_init(&r.first, false);
            one(&r, &rng);
            sem_destroy(&r.ran);
            watchdog_tick();
        }
        CHECK(cp_pool_free(pool) == 0, "free");
    }
    cp__pool_light_after(light_after);
}

int main(int argc, char **argv)
{
    uint64_t rounds = stress_ops(argc, argv, DEFAULT_ROUNDS / TSAN_DIVISOR);
    watchdog_start("push_wakeup", "a lost wake-up (work pushed on a blocked worker's deque, "
                   "every other worker asleep)");
    run_phase("push", 2, 1, rounds / 2, round_push);
    run_phase("push", 3, 1, rounds / 2, round_push);
    run_phase("batch", 2, 2, rounds / 2, round_batch);
    run_phase("awaited", 3, 3, rounds / 2, round_awaited);
    printf("push_wakeup: %llu rounds, no lost wake-up\n", (unsigned long long)rounds);
    return 0;
}
