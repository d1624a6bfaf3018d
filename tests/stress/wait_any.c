/* wait_any.c - cp_future_wait_any against jobs ending at every moment.
 *
 * A plain program (no Criterion) so that it also runs under ThreadSanitizer.
 * Three phases, each waiting in turn for sets of SET jobs that pause for
 * random lengths (pause.h) and write a plain (not atomic) slot before they
 * end; a waiter waits for any of the set, checks that the one it got is done
 * and its slot written (ThreadSanitizer checks that the write happens
 * before), and waits again for the rest, until each was reported once:
 * 1. Outside: OUTSIDE threads at once, each with sets of its own, sleeping
 *    on the watch epoch (several futures) or on the job's word (the last).
 * 2. Workers: jobs on a pool of two do the same with children, helping and
 *    sleeping as workers do (parked, marked on every child).
 * 3. Late watchers: a job submits a child and waits for it, which its
 *    worker mostly takes back from its deque and ends with a plain store,
 *    while an outside thread waits for any of {child, child}: a watcher
 *    that comes after the take (raising late) must still be woken.
 * A lost wake-up is a hang, which the watchdog (watchdog.h) turns into a
 * failure; that is a hang detector, not a timing assertion.
 *
 * Size: stress_ops() (check.h): argv[1] or CP_STRESS_SCALE times
 * DEFAULT_SETS sets per phase (divided by TSAN_DIVISOR under TSan).
 * Exits 0 on success; on failure prints where and why, exits 1.
 */
#include "check.h"
#include "ctxpool.h"
#include "pause.h"
#include "watchdog.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define DEFAULT_SETS 20000ULL
#ifdef UNDER_TSAN
#define TSAN_DIVISOR 4
#else
#define TSAN_DIVISOR 1
#endif

enum { SET = 4, OUTSIDE = 3 };

/* One job of a set: pauses, then writes its slot; returns the slot. */
typedef struct slot {
    uint64_t pause_ns;
    uint64_t written; /* plain: the waiter reads it after the wait */
} slot;

static void *slot_job(void *p)
{
    slot *s = p;
    spin_ns(s->pause_ns);
    s->written = s->pause_ns + 1;
    return s;
}

/* Submit a set and wait for any of it in turn until all were reported,
 * each once. */
static void run_set(cp_pool *pool, uint64_t *rng)
{
    slot slots[SET];
    cp_future *f[SET];
    size_t n = SET;
    for (size_t i = 0; i < SET; i++) {
        slots[i] = (slot){.pause_ns = random_pause(rng) / 4, .written = 0};
        CHECK(cp_pool_submit(pool, slot_job, &slots[i], &f[i]) == 0, "submit");
    }
    bool seen[SET] = {false};
    while (n > 0) {
        size_t index = SET;
        int rc = cp_future_wait_any(f, n, UINT64_MAX, &index);
        CHECK(rc == 0, "wait_any: %s", cp_strerror(rc));
        CHECK(index < n && cp_future_done(f[index]), "index %zu of %zu", index, n);
        void *result = NULL;
        CHECK(cp_future_wait(f[index], &result) == 0, "its outcome");
        slot *s = result;
        CHECK(s >= slots && s < slots + SET && !seen[s - slots], "reported once");
        CHECK(s->written == s->pause_ns + 1, "its slot is written");
        seen[s - slots] = true;
        cp_future_free(f[index]);
        f[index] = f[--n];
    }
    watchdog_tick();
}

/* Phase 1; phase 2 runs it as a job. */
struct waiter {
    cp_pool *pool;
    uint64_t sets, seed;
};

static void *waiter_main(void *p)
{
    struct waiter *o = p;
    for (uint64_t i = 0; i < o->sets; i++)
        run_set(o->pool, &o->seed);
    return NULL;
}

static void phase_outside(uint64_t sets)
{
    watchdog_phase("outside");
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = 2};
    CHECK(cp_pool_new(&pool, &options) == 0, "pool");
    pthread_t threads[OUTSIDE];
    struct waiter o[OUTSIDE];
    for (int i = 0; i < OUTSIDE; i++) {
        o[i] = (struct waiter){pool, sets / OUTSIDE + 1, 0x51ed + (uint64_t)i};
        CHECK(pthread_create(&threads[i], NULL, waiter_main, &o[i]) == 0, "thread");
    }
    for (int i = 0; i < OUTSIDE; i++)
        pthread_join(threads[i], NULL);
    CHECK(cp_pool_free(pool) == 0, "free");
}

/* Phase 2. */
static void phase_workers(uint64_t sets)
{
    watchdog_phase("workers");
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = 2};
    CHECK(cp_pool_new(&pool, &options) == 0, "pool");
    for (uint64_t i = 0; i < sets; i += 2) {
        /* Two parents at once, one per worker, so that each also steals
         * the other's children and sleeps while they run elsewhere. */
        struct waiter o[2] = {{pool, 1, 0xa11 + i}, {pool, 1, 0xb22 + i}};
        cp_future *f[2];
        for (int k = 0; k < 2; k++)
            CHECK(cp_pool_submit(pool, waiter_main, &o[k], &f[k]) == 0, "submit");
        for (int k = 0; k < 2; k++) {
            CHECK(cp_future_wait(f[k], NULL) == 0, "parent");
            cp_future_free(f[k]);
        }
    }
    CHECK(cp_pool_free(pool) == 0, "free");
}

/* Phase 3. */
struct late {
    cp_pool *pool;
    uint64_t seed, parent_seed; /* the watcher's, the parent's */
    slot child;
    cp_future *_Atomic shared; /* the child's future, for the watcher */
    sem_t published, watched;
};

static void *late_parent(void *p)
{
    struct late *l = p;
    cp_future *f = NULL;
    l->child = (slot){.pause_ns = random_pause(&l->parent_seed) / 8, .written = 0};
    CHECK(cp_pool_submit(l->pool, slot_job, &l->child, &f) == 0, "child");
    /* release: the future's making, to the watcher. */
    atomic_store_explicit(&l->shared, f, memory_order_release);
    sem_post(&l->published);
    spin_ns(random_pause(&l->parent_seed) / 8);
    CHECK(cp_future_wait(f, NULL) == 0, "the parent's wait");
    sem_wait(&l->watched); /* the watcher is done with f */
    cp_future_free(f);
    return NULL;
}

static void phase_late(uint64_t rounds)
{
    watchdog_phase("late watchers");
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = 2};
    CHECK(cp_pool_new(&pool, &options) == 0, "pool");
    struct late l = {.pool = pool, .seed = 0x1a7e, .parent_seed = 0x9a4e};
    CHECK(sem_init(&l.published, 0, 0) == 0 && sem_init(&l.watched, 0, 0) == 0, "sem");
    for (uint64_t i = 0; i < rounds; i++) {
        cp_future *parent = NULL;
        CHECK(cp_pool_submit(pool, late_parent, &l, &parent) == 0, "parent");
        while (sem_wait(&l.published) != 0)
            ;
        /* acquire: pairs with the parent's release. */
        cp_future *f = atomic_load_explicit(&l.shared, memory_order_acquire);
        cp_future *set[2] = {f, f};
        spin_ns(random_pause(&l.seed) / 8);
        size_t index = 2;
        int rc = cp_future_wait_any(set, 2, UINT64_MAX, &index);
        /* Either index: the job may end between the looks at the two. */
        CHECK(rc == 0 && index < 2, "watch: %s, index %zu", cp_strerror(rc), index);
        CHECK(l.child.written == l.child.pause_ns + 1, "the child's slot is written");
        sem_post(&l.watched);
        CHECK(cp_future_wait(parent, NULL) == 0, "parent");
        cp_future_free(parent);
        watchdog_tick();
    }
    CHECK(cp_pool_free(pool) == 0, "free");
    sem_destroy(&l.published);
    sem_destroy(&l.watched);
}

int main(int argc, char **argv)
{
    uint64_t sets = stress_ops(argc, argv, DEFAULT_SETS / TSAN_DIVISOR);
    watchdog_start(argv[0], "a lost wake-up in cp_future_wait_any?");
    phase_outside(sets);
    phase_workers(sets);
    phase_late(sets);
    return 0;
}
