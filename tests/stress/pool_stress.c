/* pool_stress.c - the pool under load: context flow through random job trees,
 * cancels and a CP_SHUTDOWN_CANCEL under fire, lost wake-ups, frame tasks.
 *
 * Six phases, each checked exactly:
 * 1. Trees: random job trees (depth up to 8, fan-out up to 8), some children
 *    waited for (fork-join, the waiting worker helps), some fire and forget
 *    (without a handle, or with one freed at once); the main thread frees
 *    a quarter of the roots' handles at once, as workers may run them.
 *    Each job checks that it sees exactly the variables its submitter had at
 *    submit time (the expected values travel with the job), sets some of its
 *    own, and checks after its children that none of their changes reached
 *    it. Each job id runs exactly once (a counter per id). Values are heap
 *    boxes whose destructor counts: at the end, frees == sets.
 * 2. Mixed: 4 outside threads submit (some jobs into contexts of their
 *    own with submit_in) and spawn frame tasks from outside, jobs submit
 *    jobs, outside threads cancel some of their jobs and wait for some at
 *    once, and half way a CP_SHUTDOWN_CANCEL comes, a different way in each
 *    round: from the main thread; after a CP_SHUTDOWN_DRAIN; from a job, on
 *    a worker; from two threads at once (one of them gets CP_ESHUTDOWN).
 *    Every accepted job and task ran exactly once or reported CP_ECANCELED,
 *    never both, never neither; every wait returns; stats add up.
 * 3. Lost wake-ups: rounds of "pool idle, an outside thread submits one job
 *    and waits for it", with random pauses on both sides, some of them about
 *    as long as the workers' search before parking, so that the submit meets
 *    a worker at every point of going to sleep.
 * 4. Frame tasks: recursive cp_spawn/cp_sync trees from several outside
 *    threads at once and from inside a job, each checking its context.
 * 5. Own waits against cancels: a job submits a child and waits for it,
 *    which its worker then mostly takes back from its deque and runs itself
 *    (without the claim's compare-and-swap), while the main thread cancels
 *    the child and an outside thread waits for it too; on the pool of two
 *    workers the other steals some. A quarter of the cancels come before
 *    the wait (on one worker they must win), a quarter after it (they must
 *    not), the rest at a random moment. Every child ran exactly once or
 *    was reported cancelled, a cancel that said 0 means it never ran, one
 *    that said CP_EBUSY that it ran, and both waits agree.
 * 6. Waits for an idle pool (1, 2 and 4 workers): rounds of a small tree
 *    of jobs submitted without a future or with one freed at once, each
 *    writing a plain (not atomic) slot, spawning a frame task that writes
 *    another, and submitting one more job that it cancels; with
 *    cp_pool_wait_idle called by the submitter and, every other round, by
 *    a second thread at once, some with a short timeout, after random
 *    pauses that land the waits at every point of the tree's end. A wait
 *    that returned 0 must see every slot written (ThreadSanitizer checks
 *    the order, the values that it was not early), and the stats must add
 *    up: submitted == completed + cancelled.
 *
 * Every pool has on_start and on_stop hooks: each worker ran on_start
 * before cp_pool_new returned and before any job ran on it (checked by the
 * jobs of every phase but the task trees, whose roots run on outside
 * threads), and as many workers ran on_stop; what the hooks set, no tree
 * job sees.
 *
 * A watchdog thread (watchdog.h) turns a hang into a failure: if the progress counter
 * does not move for WATCHDOG_SECONDS, it prints the phase and exits 1. That
 * is a hang detector, not a timing assertion.
 *
 * Size: stress_ops() (check.h): argv[1] or CP_STRESS_SCALE times DEFAULT_OPS
 * jobs for phase 1; the other phases are sized from it. Under
 * ThreadSanitizer the default is divided by TSAN_DIVISOR so that the whole
 * program stays under a minute on two cores.
 *
 * Exits 0 on success; on failure prints where and why, exits 1.
 */
#include "check.h"
#include "ctxpool.h"
#include "pause.h"
#include "watchdog.h"

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_OPS 1000000ULL

#ifdef UNDER_TSAN
#define TSAN_DIVISOR 2
#else
#define TSAN_DIVISOR 1
#endif

enum { NVARS = 4, MAX_DEPTH = 8, MAX_FANOUT = 8 };

/* ------------------------------------------------------------------------ */
/* Shared helpers                                                            */

/* Values: heap boxes; the destructor counts every free. */
typedef struct box {
    uint64_t n;
} box;

static atomic_ullong sets, frees;
static cp_var *vars[NVARS];

static void box_free(void *p)
{
    atomic_fetch_add_explicit(&frees, 1, memory_order_relaxed);
    free(p);
}

static void set_var(int v, uint64_t n)
{
    box *b = malloc(sizeof *b);
    CHECK(b != NULL, "out of memory");
    b->n = n;
    CHECK(cp_var_set(vars[v], b, NULL) == 0, "cp_var_set failed");
    atomic_fetch_add_explicit(&sets, 1, memory_order_relaxed);
}

/* The value of vars[v] here: its box's number, or 0 for none. */
static uint64_t get_var(int v)
{
    void *p = NULL;
    int rc = cp_var_get(vars[v], &p);
    if (rc == CP_ENOENT)
        return 0;
    CHECK(rc == 0 && p != NULL, "cp_var_get: %s", cp_strerror(rc));
    return ((box *)p)->n;
}

static void check_vars(const uint64_t expect[NVARS], const char *who, uint64_t id)
{
    for (int v = 0; v < NVARS; v++) {
        uint64_t got = get_var(v);
        CHECK(got == expect[v], "%s %" PRIu64 ": var %d is %" PRIu64
              ", its submitter had %" PRIu64, who, id, v, got, expect[v]);
    }
}

/* Every pool's hooks. on_start marks its thread, which every job checks
 * (check_started), and sets a variable in its own copy of the context,
 * which no job may see (check_vars); on_stop checks the mark. new_pool
 * checks that each of its workers ran on_start; main, that as many ran
 * on_stop. */
static __thread bool worker_started;
static atomic_uint hook_starts, hook_stops;

static void on_start(unsigned worker, void *arg)
{
    (void)arg;
    CHECK(!worker_started, "worker %u started twice", worker);
    worker_started = true;
    set_var(0, 2 * (uint64_t)worker + 1);
    atomic_fetch_add_explicit(&hook_starts, 1, memory_order_relaxed);
}

static void on_stop(unsigned worker, void *arg)
{
    (void)arg;
    CHECK(worker_started, "worker %u stopped without starting", worker);
    set_var(1, 2 * (uint64_t)worker + 1);
    atomic_fetch_add_explicit(&hook_stops, 1, memory_order_relaxed);
}

static void check_started(const char *who, uint64_t id)
{
    CHECK(worker_started, "%s %" PRIu64 " ran on a worker before its on_start", who, id);
}

static cp_pool *new_pool(unsigned threads, const char *name)
{
    cp_pool *pool = NULL;
    cp_pool_options o = {.threads = threads, .name = name, .on_start = on_start,
                         .on_stop = on_stop};
    unsigned before = atomic_load_explicit(&hook_starts, memory_order_relaxed);
    int rc = cp_pool_new(&pool, &o);
    CHECK(rc == 0, "cp_pool_new: %s", cp_strerror(rc));
    /* relaxed: cp_pool_new returns after the hooks, ordered by its wait. */
    unsigned after = atomic_load_explicit(&hook_starts, memory_order_relaxed);
    CHECK(after - before == threads, "%u of %u on_start calls before cp_pool_new returned",
          after - before, threads);
    return pool;
}

/* ------------------------------------------------------------------------ */
/* Phase 1: random job trees                                                 */

typedef struct tree_job {
    uint64_t id;
    unsigned depth;
    uint64_t seed;
    uint64_t expect[NVARS];
} tree_job;

static cp_pool *tree_pool;
static uint64_t tree_budget;
static atomic_ullong tree_next_id;
static atomic_uchar *tree_ran;

static void *tree_run(void *p);

/* A new job below the caller, or NULL when the budget is spent. */
static tree_job *tree_child(unsigned depth, uint64_t seed, const uint64_t expect[NVARS])
{
    uint64_t id = atomic_fetch_add_explicit(&tree_next_id, 1, memory_order_relaxed);
    if (id >= tree_budget)
        return NULL;
    tree_job *j = malloc(sizeof *j);
    CHECK(j != NULL, "out of memory");
    j->id = id;
    j->depth = depth;
    j->seed = seed;
    memcpy(j->expect, expect, sizeof j->expect);
    return j;
}

static void *tree_run(void *p)
{
    tree_job *j = p;
    check_vars(j->expect, "tree job", j->id);
    check_started("tree job", j->id);
    unsigned char before = atomic_fetch_add_explicit(&tree_ran[j->id], 1,
                                                     memory_order_relaxed);
    CHECK(before == 0, "tree job %" PRIu64 " ran twice", j->id);
    watchdog_tick();
    uint64_t rng = j->seed;
    uint64_t mine[NVARS];
    memcpy(mine, j->expect, sizeof mine);
    for (int v = 0; v < NVARS; v++)
        if (splitmix(&rng) % 3 == 0) {
            mine[v] = (splitmix(&rng) | 1);
            set_var(v, mine[v]);
        }
    check_vars(mine, "tree job (after its sets)", j->id);
    if (j->depth < MAX_DEPTH) {
        unsigned fanout = (unsigned)(splitmix(&rng) % (MAX_FANOUT + 1));
        cp_future *waited[MAX_FANOUT];
        unsigned nwaited = 0;
        for (unsigned i = 0; i < fanout; i++) {
            tree_job *c = tree_child(j->depth + 1, splitmix(&rng), mine);
            if (!c)
                break;
            /* Half waited for; the rest fire and forget, without a handle
             * or with one freed at once. */
            unsigned how = (unsigned)(splitmix(&rng) % 4);
            cp_future *f = NULL;
            int rc = cp_pool_submit(tree_pool, tree_run, c, how == 2 ? NULL : &f);
            CHECK(rc == 0, "submit from a job: %s", cp_strerror(rc));
            if (how < 2)
                waited[nwaited++] = f;
            else if (how == 3)
                cp_future_free(f);
        }
        for (unsigned i = 0; i < nwaited; i++) {
            int rc = cp_future_wait(waited[i], NULL);
            CHECK(rc == 0, "wait in a job: %s", cp_strerror(rc));
            cp_future_free(waited[i]);
        }
    }
    /* Nothing the children did reached us. */
    check_vars(mine, "tree job (after its children)", j->id);
    free(j);
    return NULL;
}

struct tree_args {
    unsigned threads;
    uint64_t seed;
};

/* Runs inside a context the caller frees afterwards. */
static void *tree_phase(void *p)
{
    struct tree_args *a = p;
    uint64_t rng = a->seed;
    tree_pool = new_pool(a->threads, "tree");
    enum { ROOTS = 4 };
    while (atomic_load_explicit(&tree_next_id, memory_order_relaxed) < tree_budget) {
        uint64_t mine[NVARS];
        for (int v = 0; v < NVARS; v++) {
            uint64_t r = splitmix(&rng);
            if (r % 4 == 0) {
                mine[v] = get_var(v); /* keep */
            } else {
                mine[v] = r | 1;
                set_var(v, mine[v]);
            }
        }
        cp_future *f[ROOTS];
        unsigned n = 0;
        for (unsigned i = 0; i < ROOTS; i++) {
            tree_job *j = tree_child(0, splitmix(&rng), mine);
            if (!j)
                break;
            int rc = cp_pool_submit(tree_pool, tree_run, j, &f[n]);
            CHECK(rc == 0, "submit: %s", cp_strerror(rc));
            /* A quarter are not waited for: their handle is freed at
             * once, from this thread, as a worker may be running them. */
            if (splitmix(&rng) % 4 == 0)
                cp_future_free(f[n]);
            else
                n++;
        }
        for (unsigned i = 0; i < n; i++) {
            int rc = cp_future_wait(f[i], NULL);
            CHECK(rc == 0, "wait: %s", cp_strerror(rc));
            cp_future_free(f[i]);
        }
        check_vars(mine, "tree phase main thread", 0);
    }
    CHECK(cp_pool_free(tree_pool) == 0, "cp_pool_free");
    return NULL;
}

static void phase_trees(uint64_t jobs)
{
    watchdog_phase("trees");
    tree_ran = calloc(jobs, sizeof *tree_ran);
    CHECK(tree_ran != NULL, "out of memory");
    const unsigned threads[] = {1, 4};
    for (int t = 0; t < 2; t++) {
        tree_budget = jobs / 2;
        atomic_store(&tree_next_id, 0);
        memset(tree_ran, 0, jobs * sizeof *tree_ran);
        cp_context *ctx = cp_context_new();
        CHECK(ctx != NULL, "out of memory");
        struct tree_args a = {threads[t], 0x1234 + (uint64_t)t};
        CHECK(cp_context_run(ctx, tree_phase, &a, NULL) == 0, "run");
        cp_context_free(ctx);
        for (uint64_t i = 0; i < tree_budget; i++)
            CHECK(atomic_load_explicit(&tree_ran[i], memory_order_relaxed) == 1,
                  "%u workers: tree job %" PRIu64 " ran %u times", threads[t], i,
                  atomic_load_explicit(&tree_ran[i], memory_order_relaxed));
    }
    free(tree_ran);
    CHECK(atomic_load(&sets) == atomic_load(&frees),
          "%llu values set, %llu freed", atomic_load(&sets), atomic_load(&frees));
}

/* ------------------------------------------------------------------------ */
/* Phase 2: mixed load, cancels, shutdown(CANCEL) in the middle              */

typedef struct slot {
    _Atomic(cp_future *) future; /* release by the submitter, acquire by main */
    atomic_int ran;
    atomic_int cancel_rc;        /* 1: not cancelled by anyone */
} slot;

static slot *slots;
static uint64_t mixed_cap;
static atomic_ullong mixed_next;
static atomic_ullong mixed_accepted;
static atomic_ullong tasks_accepted, tasks_ran; /* frame tasks from outside */
static cp_pool *mixed_pool;
static sem_t half_way;
static atomic_bool half_way_posted;

static void *mixed_job(void *p);

/* Submit one job with a new id; false when the pool refuses or cap is hit. */
static bool mixed_submit(uint64_t *rng, bool maybe_cancel)
{
    uint64_t id = atomic_fetch_add_explicit(&mixed_next, 1, memory_order_relaxed);
    if (id >= mixed_cap)
        return false;
    cp_future *f = NULL;
    int rc;
    if (splitmix(rng) % 8 == 0) {
        /* A context of its own, which the pool holds until the job is done. */
        cp_context *c = cp_context_new();
        CHECK(c != NULL, "out of memory");
        rc = cp_pool_submit_in(mixed_pool, c, mixed_job, (void *)(uintptr_t)id, &f);
        cp_context_free(c);
    } else {
        rc = cp_pool_submit(mixed_pool, mixed_job, (void *)(uintptr_t)id, &f);
    }
    if (rc == CP_ESHUTDOWN)
        return false;
    CHECK(rc == 0, "submit: %s", cp_strerror(rc));
    uint64_t n = atomic_fetch_add_explicit(&mixed_accepted, 1, memory_order_relaxed) + 1;
    if (n >= mixed_cap / 2 && !atomic_exchange(&half_way_posted, true))
        sem_post(&half_way);
    uint64_t r = splitmix(rng);
    if (maybe_cancel && r % 8 == 0) {
        int c = cp_future_cancel(f);
        CHECK(c == 0 || c == CP_EBUSY, "cancel: %s", cp_strerror(c));
        atomic_store_explicit(&slots[id].cancel_rc, c, memory_order_relaxed);
    } else if (maybe_cancel && r % 8 == 1) {
        int w = cp_future_wait(f, NULL);
        CHECK(w == 0 || w == CP_ECANCELED, "wait: %s", cp_strerror(w));
    }
    atomic_store_explicit(&slots[id].future, f, memory_order_release);
    return true;
}

static void *mixed_job(void *p)
{
    uint64_t id = (uintptr_t)p;
    int before = atomic_fetch_add_explicit(&slots[id].ran, 1, memory_order_relaxed);
    CHECK(before == 0, "mixed job %" PRIu64 " ran twice", id);
    check_started("mixed job", id);
    watchdog_tick();
    uint64_t rng = id * 7919 + 1;
    uint64_t r = splitmix(&rng);
    if (r % 4 == 0)
        mixed_submit(&rng, false);
    if (r % 16 == 1)
        spin_ns(splitmix(&rng) % 2000);
    return NULL;
}

static void *mixed_task(void *p)
{
    check_started("mixed task", 0);
    atomic_fetch_add_explicit((atomic_int *)p, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&tasks_ran, 1, memory_order_relaxed);
    return p;
}

/* Up to three frame tasks spawned from outside, synced in reverse: each ran
 * once and returned its result, or was cancelled and never ran. */
static void mixed_spawn(uint64_t *rng)
{
    cp_task t[3];
    atomic_int runs[3];
    int spawned[3];
    int n = 1 + (int)(splitmix(rng) % 3);
    for (int i = 0; i < n; i++) {
        atomic_init(&runs[i], 0);
        spawned[i] = cp_spawn(mixed_pool, &t[i], mixed_task, &runs[i]);
        CHECK(spawned[i] == 0 || spawned[i] == CP_ESHUTDOWN, "spawn: %s",
              cp_strerror(spawned[i]));
        if (spawned[i] == 0)
            atomic_fetch_add_explicit(&tasks_accepted, 1, memory_order_relaxed);
    }
    for (int i = n - 1; i >= 0; i--) {
        if (spawned[i] != 0)
            continue;
        void *result = NULL;
        int rc = cp_sync(&t[i], &result);
        int ran = atomic_load_explicit(&runs[i], memory_order_relaxed);
        CHECK((rc == 0 && ran == 1 && result == &runs[i]) || (rc == CP_ECANCELED && ran == 0),
              "outside task: sync %s, ran %d times", cp_strerror(rc), ran);
    }
}

static void *mixed_outside(void *p)
{
    uint64_t rng = (uintptr_t)p;
    do {
        if (splitmix(&rng) % 16 == 0)
            mixed_spawn(&rng);
        watchdog_tick();
    } while (mixed_submit(&rng, true));
    return NULL;
}

/* How phase 2's shutdown comes, one way per round. */
enum shutdown_way { FROM_MAIN, AFTER_DRAIN, FROM_WORKER, TWO_AT_ONCE, WAYS };

static void *cancel_pool(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)cp_pool_shutdown(mixed_pool, CP_SHUTDOWN_CANCEL);
}

/* Cancel the pool the round's way; returns how many jobs that submitted. */
static uint64_t mixed_shutdown(enum shutdown_way way)
{
    switch (way) {
    case FROM_MAIN:
        CHECK(cp_pool_shutdown(mixed_pool, CP_SHUTDOWN_CANCEL) == 0, "shutdown");
        return 0;
    case AFTER_DRAIN:
        CHECK(cp_pool_shutdown(mixed_pool, CP_SHUTDOWN_DRAIN) == 0, "drain");
        spin_ns(20000); /* let the workers drain some */
        CHECK(cp_pool_shutdown(mixed_pool, CP_SHUTDOWN_CANCEL) == 0, "cancel after drain");
        return 0;
    case FROM_WORKER: {
        /* Nothing cancels before it: the job runs, and its shutdown
         * returns once what is queued behind it is cancelled. */
        cp_future *f;
        CHECK(cp_pool_submit(mixed_pool, cancel_pool, NULL, &f) == 0, "submit");
        void *rc = NULL;
        CHECK(cp_future_wait(f, &rc) == 0 && rc == 0, "shutdown from a worker: %s",
              cp_strerror((int)(intptr_t)rc));
        cp_future_free(f);
        return 1;
    }
    case TWO_AT_ONCE: {
        pthread_t other;
        CHECK(pthread_create(&other, NULL, cancel_pool, NULL) == 0, "pthread_create");
        int mine = (int)(intptr_t)cancel_pool(NULL);
        void *theirs;
        CHECK(pthread_join(other, &theirs) == 0, "join");
        CHECK((mine == 0 && theirs == (void *)(intptr_t)CP_ESHUTDOWN) ||
                  (mine == CP_ESHUTDOWN && theirs == NULL),
              "two shutdowns: %s and %s", cp_strerror(mine),
              cp_strerror((int)(intptr_t)theirs));
        return 0;
    }
    case WAYS:
        break;
    }
    CHECK(0, "no shutdown way %d", (int)way);
    return 0;
}

static void phase_mixed(uint64_t jobs)
{
    watchdog_phase("mixed");
    enum { ROUNDS = WAYS, OUTSIDE = 4 };
    mixed_cap = jobs / ROUNDS;
    if (mixed_cap < 16)
        mixed_cap = 16;
    slots = calloc(mixed_cap, sizeof *slots);
    CHECK(slots != NULL, "out of memory");
    for (int round = 0; round < ROUNDS; round++) {
        for (uint64_t i = 0; i < mixed_cap; i++) {
            atomic_init(&slots[i].future, NULL);
            atomic_init(&slots[i].ran, 0);
            atomic_init(&slots[i].cancel_rc, 1);
        }
        atomic_store(&mixed_next, 0);
        atomic_store(&mixed_accepted, 0);
        atomic_store(&tasks_accepted, 0);
        atomic_store(&tasks_ran, 0);
        atomic_store(&half_way_posted, false);
        CHECK(sem_init(&half_way, 0, 0) == 0, "sem_init");
        mixed_pool = new_pool(3, "mixed");
        pthread_t th[OUTSIDE];
        for (int i = 0; i < OUTSIDE; i++)
            CHECK(pthread_create(&th[i], NULL, mixed_outside,
                                 (void *)(uintptr_t)(round * 100 + i + 1)) == 0,
                  "pthread_create");
        while (sem_wait(&half_way) != 0)
            ;
        /* A burst, so that the shutdown finds jobs queued to cancel: the
         * workers mostly keep up with the outside threads. */
        uint64_t burst_rng = (uint64_t)round + 1;
        for (uint64_t i = 0; i < mixed_cap / 16 && mixed_submit(&burst_rng, false); i++)
            ;
        uint64_t own_jobs = mixed_shutdown((enum shutdown_way)round);
        for (int i = 0; i < OUTSIDE; i++)
            CHECK(pthread_join(th[i], NULL) == 0, "join");
        /* Parents have smaller ids than their children: waiting in id order,
         * each job's own submits are visible once its submitter was waited. */
        uint64_t ids = atomic_load(&mixed_next);
        if (ids > mixed_cap)
            ids = mixed_cap;
        uint64_t ran = 0, cancelled = 0, accepted = 0;
        for (uint64_t i = 0; i < ids; i++) {
            cp_future *f = atomic_load_explicit(&slots[i].future, memory_order_acquire);
            if (!f) {
                CHECK(atomic_load(&slots[i].ran) == 0, "refused job %" PRIu64 " ran", i);
                continue;
            }
            accepted++;
            int rc = cp_future_wait(f, NULL);
            int runs = atomic_load(&slots[i].ran);
            if (rc == 0) {
                CHECK(runs == 1, "job %" PRIu64 " reported done, ran %d times", i, runs);
                ran++;
            } else {
                CHECK(rc == CP_ECANCELED, "job %" PRIu64 ": %s", i, cp_strerror(rc));
                CHECK(runs == 0, "job %" PRIu64 " reported cancelled but ran", i);
                cancelled++;
            }
            if (atomic_load(&slots[i].cancel_rc) == 0)
                CHECK(rc == CP_ECANCELED, "job %" PRIu64 ": cancel said 0, wait %s",
                      i, cp_strerror(rc));
            /* And the other way: a job its cancel found started ran, also
             * when the cancel raced with the shutdown's. */
            if (atomic_load(&slots[i].cancel_rc) == CP_EBUSY)
                CHECK(rc == 0, "job %" PRIu64 ": cancel said CP_EBUSY, wait %s", i,
                      cp_strerror(rc));
            watchdog_tick();
        }
        CHECK(accepted == atomic_load(&mixed_accepted), "%" PRIu64 " futures, %llu "
              "accepted", accepted, atomic_load(&mixed_accepted));
        cp_pool_stats st;
        CHECK(cp_pool_get_stats(mixed_pool, &st) == 0, "stats");
        /* The outside tasks' syncs have returned: their counts are final. */
        uint64_t tasks = atomic_load(&tasks_accepted), tasks_done = atomic_load(&tasks_ran);
        CHECK(st.submitted == accepted + tasks + own_jobs, "stats: %" PRIu64 " submitted, %"
              PRIu64 " jobs and %" PRIu64 " tasks accepted", st.submitted, accepted, tasks);
        CHECK(st.completed == ran + tasks_done + own_jobs, "stats: %" PRIu64 " completed, %"
              PRIu64 " jobs and %" PRIu64 " tasks ran", st.completed, ran, tasks_done);
        /* A job cancelled by cp_future_cancel is counted when a worker
         * dequeues it, which may come after its wait returned. */
        CHECK(st.cancelled <= cancelled + tasks - tasks_done, "stats: %" PRIu64
              " cancelled, %" PRIu64 " jobs and %" PRIu64 " tasks reported cancelled",
              st.cancelled, cancelled, tasks - tasks_done);
        CHECK(cp_pool_free(mixed_pool) == 0, "free");
        for (uint64_t i = 0; i < ids; i++)
            cp_future_free(atomic_load(&slots[i].future));
        sem_destroy(&half_way);
    }
    free(slots);
}

/* ------------------------------------------------------------------------ */
/* Phase 3: lost wake-ups                                                    */

static void *wake_job(void *p)
{
    check_started("wake-up job", 0);
    uint64_t rng = (uintptr_t)p;
    spin_ns(splitmix(&rng) % 300);
    return p;
}

static void phase_wakeups(uint64_t rounds)
{
    watchdog_phase("lost wake-ups");
    const unsigned threads[] = {1, 2};
    uint64_t rng = 42;
    for (int t = 0; t < 2; t++) {
        cp_pool *pool = new_pool(threads[t], "wake");
        for (uint64_t i = 0; i < rounds / 2; i++) {
            spin_ns(random_pause(&rng));
            cp_future *f = NULL;
            void *arg = (void *)(uintptr_t)(i + 1);
            CHECK(cp_pool_submit(pool, wake_job, arg, &f) == 0, "submit");
            spin_ns(random_pause(&rng) / 4);
            void *r = NULL;
            CHECK(cp_future_wait(f, &r) == 0 && r == arg, "wait");
            cp_future_free(f);
            watchdog_tick();
        }
        CHECK(cp_pool_free(pool) == 0, "free");
    }
}

/* ------------------------------------------------------------------------ */
/* Phase 4: frame tasks from several threads                                 */

static cp_pool *task_pool;

struct task_arg {
    uint64_t n;      /* nodes in this subtree */
    uint64_t expect; /* vars[0] as the spawner had it */
};

/* Counts the nodes of a random-ish binary tree of n nodes with tasks. */
static void *task_tree(void *p)
{
    struct task_arg *a = p;
    CHECK(get_var(0) == a->expect, "task sees %" PRIu64 ", spawner had %" PRIu64,
          get_var(0), a->expect);
    if (a->n <= 1)
        return (void *)(uintptr_t)a->n;
    uint64_t rest = a->n - 1;
    uint64_t left = rest / 2 + (rest & 1 ? (a->n % 3 == 0) : 0);
    /* The child sees what we have now; change ours sometimes. */
    uint64_t mine = a->expect;
    if (a->n % 5 == 0) {
        mine = a->n * 2 + 1;
        set_var(0, mine);
    }
    struct task_arg la = {left, mine}, ra = {rest - left, mine};
    cp_task t;
    int rc = cp_spawn(task_pool, &t, task_tree, &la);
    CHECK(rc == 0, "spawn: %s", cp_strerror(rc));
    /* The right half runs here, in our own context: its sets are ours. */
    uint64_t r = (uintptr_t)task_tree(&ra);
    uint64_t ours = get_var(0);
    void *l = NULL;
    rc = cp_sync(&t, &l);
    CHECK(rc == 0, "sync: %s", cp_strerror(rc));
    CHECK(get_var(0) == ours, "a task's change reached its spawner");
    if (a->n % 64 == 0)
        watchdog_tick();
    return (void *)(uintptr_t)(1 + r + (uintptr_t)l);
}

struct task_thread {
    uint64_t n, id;
};

static void *task_outside(void *p)
{
    struct task_thread *tt = p;
    uint64_t value = 1000 + tt->id * 2 + 1;
    set_var(0, value);
    struct task_arg a = {tt->n, value};
    uint64_t got = (uintptr_t)task_tree(&a);
    CHECK(got == tt->n, "outside task tree of %" PRIu64 " counted %" PRIu64, tt->n, got);
    return NULL;
}

static void phase_tasks(uint64_t nodes)
{
    watchdog_phase("frame tasks");
    enum { OUTSIDE = 3 };
    task_pool = new_pool(3, "task");
    uint64_t per = nodes / (OUTSIDE + 1);
    if (per < 1)
        per = 1;
    /* from inside a job, concurrently with the outside threads */
    set_var(0, 7);
    struct task_arg inside = {per, 7};
    cp_future *f = NULL;
    CHECK(cp_pool_submit(task_pool, task_tree, &inside, &f) == 0, "submit");
    pthread_t th[OUTSIDE];
    struct task_thread tt[OUTSIDE];
    for (int i = 0; i < OUTSIDE; i++) {
        tt[i] = (struct task_thread){per, (uint64_t)i};
        CHECK(cp_thread_create(&th[i], NULL, task_outside, &tt[i]) == 0, "thread");
    }
    for (int i = 0; i < OUTSIDE; i++)
        CHECK(pthread_join(th[i], NULL) == 0, "join");
    void *r = NULL;
    CHECK(cp_future_wait(f, &r) == 0, "wait");
    CHECK((uintptr_t)r == per, "inside task tree of %" PRIu64 " counted %" PRIuPTR,
          per, (uintptr_t)r);
    cp_future_free(f);
    CHECK(cp_pool_free(task_pool) == 0, "free");
}

/* ------------------------------------------------------------------------ */
/* Phase 5: own waits against cancels                                       */

enum own_order { CANCEL_FIRST, WAIT_FIRST, RACE };

typedef struct own_slot {
    _Atomic(cp_future *) child;  /* release by the parent, acquire by others */
    enum own_order order;        /* set before the parent is submitted */
    atomic_int ran;
    atomic_int wait_rc;          /* the parent's wait */
    atomic_bool cancelled;       /* the main thread's cancel has returned */
    atomic_bool waited;          /* the parent's wait has returned */
    atomic_bool other_waiting;   /* the outside waiter is about to wait */
    atomic_int other_rc;         /* the outside waiter's, when it waits */
    atomic_bool other_done;
} own_slot;

static own_slot *own;
static uint64_t own_rounds;
static cp_pool *own_pool; /* one worker, then two (the second steals) */

static void *own_child(void *p)
{
    own_slot *o = p;
    CHECK(atomic_fetch_add_explicit(&o->ran, 1, memory_order_relaxed) == 0,
          "own child ran twice");
    check_started("own child", (uint64_t)(o - own));
    /* Long enough, sometimes, for a cancel to come while it runs. */
    uint64_t rng = (uintptr_t)p;
    spin_ns(splitmix(&rng) % 2000);
    /* A child the outside waiter waits for runs on until that waiter has
     * come, and a little longer, so that it often comes after the take and
     * is asleep when a parent that took the child back ends it: the wake
     * such a late waiter needs (see job_take_own) is then tested.
     * relaxed: a hint; the wait orders what the waiter reads. */
    if ((o - own) % 2 == 0) {
        while (!atomic_load_explicit(&o->other_waiting, memory_order_relaxed))
            sched_yield();
        spin_ns(20000);
    }
    return p;
}

static void *own_parent(void *p)
{
    own_slot *o = p;
    cp_future *f = NULL;
    CHECK(cp_pool_submit(own_pool, own_child, o, &f) == 0, "submit child");
    atomic_store_explicit(&o->child, f, memory_order_release);
    uint64_t rng = (uintptr_t)p * 31;
    if (o->order == CANCEL_FIRST)
        /* acquire: pairs with the main thread's release after its cancel. */
        while (!atomic_load_explicit(&o->cancelled, memory_order_acquire))
            sched_yield();
    else if (o->order == RACE)
        spin_ns(splitmix(&rng) % 8000);
    void *r = NULL;
    int rc = cp_future_wait(f, &r);
    CHECK(rc == 0 ? r == o : rc == CP_ECANCELED, "own wait: %s", cp_strerror(rc));
    atomic_store_explicit(&o->wait_rc, rc, memory_order_relaxed);
    /* release: the main thread's acquire then sees ran and wait_rc. */
    atomic_store_explicit(&o->waited, true, memory_order_release);
    return NULL;
}

/* Waits for every other child, as an outside thread that may sleep on it
 * while the parent's worker runs it. */
static void *own_other_waiter(void *arg)
{
    (void)arg;
    for (uint64_t i = 0; i < own_rounds; i += 2) {
        cp_future *f;
        while (!(f = atomic_load_explicit(&own[i].child, memory_order_acquire)))
            sched_yield();
        atomic_store_explicit(&own[i].other_waiting, true, memory_order_relaxed);
        atomic_store_explicit(&own[i].other_rc, cp_future_wait(f, NULL),
                              memory_order_relaxed);
        atomic_store_explicit(&own[i].other_done, true, memory_order_release);
    }
    return NULL;
}

static void phase_own(uint64_t rounds)
{
    watchdog_phase("own waits against cancels");
    own_rounds = rounds;
    own = calloc(rounds, sizeof *own);
    CHECK(own != NULL, "out of memory");
    own_pool = new_pool(1, "own");
    pthread_t other;
    CHECK(pthread_create(&other, NULL, own_other_waiter, NULL) == 0, "pthread_create");
    uint64_t rng = 7;
    for (uint64_t i = 0; i < rounds; i++) {
        bool one_worker = i < rounds / 2;
        if (i == rounds / 2) {
            CHECK(cp_pool_free(own_pool) == 0, "free");
            own_pool = new_pool(2, "own");
        }
        own_slot *o = &own[i];
        o->order = i % 4 == 0 ? CANCEL_FIRST : i % 4 == 1 ? WAIT_FIRST : RACE;
        cp_future *parent = NULL;
        CHECK(cp_pool_submit(own_pool, own_parent, o, &parent) == 0, "submit");
        cp_future *f;
        while (!(f = atomic_load_explicit(&o->child, memory_order_acquire)))
            sched_yield();
        uint64_t r = splitmix(&rng);
        if (o->order == WAIT_FIRST)
            while (!atomic_load_explicit(&o->waited, memory_order_acquire))
                sched_yield();
        else if (o->order == RACE)
            spin_ns(r % 4 == 0 ? 0 : (r >> 8) % 10000);
        int c = cp_future_cancel(f);
        CHECK(c == 0 || c == CP_EBUSY, "own cancel: %s", cp_strerror(c));
        /* release: pairs with the parent's acquire. */
        atomic_store_explicit(&o->cancelled, true, memory_order_release);
        /* Before the wait, on one worker, the child cannot have started:
         * the only worker runs the parent. After it, it has ended. */
        CHECK(o->order != CANCEL_FIRST || !one_worker || c == 0,
              "child %" PRIu64 ": cancel before the wait said %s", i, cp_strerror(c));
        CHECK(o->order != WAIT_FIRST || c == CP_EBUSY,
              "child %" PRIu64 ": cancel after the wait said %s", i, cp_strerror(c));
        CHECK(cp_future_wait(parent, NULL) == 0, "parent wait");
        cp_future_free(parent);
        int rc = atomic_load_explicit(&o->wait_rc, memory_order_relaxed);
        int ran = atomic_load_explicit(&o->ran, memory_order_relaxed);
        CHECK(rc == 0 ? ran == 1 : ran == 0, "child %" PRIu64 ": wait %s, ran %d", i,
              cp_strerror(rc), ran);
        CHECK(c == 0 ? rc == CP_ECANCELED : ran == 1,
              "child %" PRIu64 ": cancel %s, wait %s, ran %d", i, cp_strerror(c),
              cp_strerror(rc), ran);
        if (i % 2 == 0) {
            while (!atomic_load_explicit(&o->other_done, memory_order_acquire))
                sched_yield();
            CHECK(atomic_load_explicit(&o->other_rc, memory_order_relaxed) == rc,
                  "child %" PRIu64 ": the other waiter got %s, the parent %s", i,
                  cp_strerror(atomic_load(&o->other_rc)), cp_strerror(rc));
        }
        cp_future_free(f);
        watchdog_tick();
    }
    CHECK(pthread_join(other, NULL) == 0, "join");
    CHECK(cp_pool_free(own_pool) == 0, "free");
    free(own);
}

/* ------------------------------------------------------------------------ */
/* Phase 6: waits for an idle pool                                           */

enum { IDLE_JOBS = 15 }; /* a binary tree: job i submits 2i+1 and 2i+2 */

struct idle_job {
    struct idle_round *round;
    unsigned i;
};

struct idle_round {
    cp_pool *pool;
    uint64_t seed;
    uint64_t slots[IDLE_JOBS]; /* plain: job i writes slot i */
    uint64_t task_slots[IDLE_JOBS]; /* plain: job i's frame task writes it */
    struct idle_job jobs[IDLE_JOBS];
    sem_t go, back;            /* to and from the second waiter */
    bool last;                 /* read by the second waiter after go */
};

static void *idle_task(void *p)
{
    struct idle_job *j = p;
    j->round->task_slots[j->i] = j->round->seed + j->i;
    return NULL;
}

static void *idle_extra(void *p)
{
    return p;
}

static void *idle_job_run(void *p)
{
    struct idle_job *j = p;
    struct idle_round *r = j->round;
    check_started("idle-wait job", j->i);
    uint64_t rng = r->seed + j->i;
    spin_ns(random_pause(&rng) / 8);
    r->slots[j->i] = r->seed + j->i;
    cp_task t;
    int rc = cp_spawn(r->pool, &t, idle_task, j);
    CHECK(rc == 0, "spawn from an idle-wait job: %s", cp_strerror(rc));
    for (unsigned c = 2 * j->i + 1; c <= 2 * j->i + 2 && c < IDLE_JOBS; c++) {
        /* One child with a future freed at once, one without. */
        cp_future *f = NULL;
        rc = cp_pool_submit(r->pool, idle_job_run, &r->jobs[c], c % 2 ? &f : NULL);
        CHECK(rc == 0, "submit from an idle-wait job: %s", cp_strerror(rc));
        cp_future_free(f);
    }
    cp_future *extra = NULL;
    CHECK(cp_pool_submit(r->pool, idle_extra, NULL, &extra) == 0, "submit the extra job");
    spin_ns(random_pause(&rng) / 8);
    rc = cp_future_cancel(extra);
    CHECK(rc == 0 || rc == CP_EBUSY, "cancel the extra job: %s", cp_strerror(rc));
    cp_future_free(extra);
    CHECK(cp_sync(&t, NULL) == 0, "sync the frame task");
    spin_ns(random_pause(&rng) / 8);
    return NULL;
}

/* Wait for the round's pool to be idle, first with a short timeout
 * (which may run out) when rng says so, then check every slot. */
static void idle_wait_and_check(struct idle_round *r, uint64_t *rng, const char *who)
{
    int rc = CP_ETIMEDOUT;
    if (splitmix(rng) % 2)
        rc = cp_pool_wait_idle(r->pool, splitmix(rng) % 20000);
    CHECK(rc == 0 || rc == CP_ETIMEDOUT, "%s: timed wait for idle: %s", who, cp_strerror(rc));
    if (rc != 0)
        rc = cp_pool_wait_idle(r->pool, UINT64_MAX);
    CHECK(rc == 0, "%s: wait for idle: %s", who, cp_strerror(rc));
    for (unsigned i = 0; i < IDLE_JOBS; i++)
        CHECK(r->slots[i] == r->seed + i && r->task_slots[i] == r->seed + i,
              "%s: round %" PRIu64 ": the wait for idle returned before job %u "
              "and its task had ended", who, r->seed, i);
}

/* The end of a pool's rounds: each job was submitted once, and so were
 * its task and its extra job; every one ended, completed or cancelled. */
static void idle_pool_done(cp_pool *pool, uint64_t rounds)
{
    cp_pool_stats st;
    CHECK(cp_pool_get_stats(pool, &st) == 0, "stats");
    CHECK(st.submitted == rounds * 3 * IDLE_JOBS &&
              st.completed + st.cancelled == st.submitted,
          "idle waits: %" PRIu64 " submitted, %" PRIu64 " completed, %" PRIu64
          " cancelled, in %" PRIu64 " rounds of %d jobs, tasks and extra jobs",
          st.submitted, st.completed, st.cancelled, rounds, IDLE_JOBS);
    CHECK(cp_pool_free(pool) == 0, "free");
}

static void *idle_second_waiter(void *p)
{
    struct idle_round *r = p;
    uint64_t rng = 99;
    for (;;) {
        CHECK(sem_wait(&r->go) == 0, "sem_wait");
        if (r->last)
            return NULL;
        spin_ns(random_pause(&rng) / 4);
        idle_wait_and_check(r, &rng, "second waiter");
        CHECK(sem_post(&r->back) == 0, "sem_post");
    }
}

static void phase_idle(uint64_t rounds)
{
    watchdog_phase("waits for an idle pool");
    static struct idle_round r;
    const unsigned threads[] = {1, 2, 4};
    uint64_t per_pool = rounds / 3 + 1;
    r.pool = NULL;
    for (unsigned i = 0; i < IDLE_JOBS; i++)
        r.jobs[i] = (struct idle_job){&r, i};
    CHECK(sem_init(&r.go, 0, 0) == 0 && sem_init(&r.back, 0, 0) == 0, "sem_init");
    pthread_t second;
    CHECK(pthread_create(&second, NULL, idle_second_waiter, &r) == 0, "pthread_create");
    uint64_t rng = 5;
    for (uint64_t k = 0; k < 3 * per_pool; k++) {
        if (k % per_pool == 0) {
            /* The second waiter is between rounds: it reads r.pool after
             * the next go. */
            if (r.pool)
                idle_pool_done(r.pool, per_pool);
            r.pool = new_pool(threads[k / per_pool], "idle");
        }
        /* Written before the submit, which orders them before the jobs. */
        r.seed = (k + 1) * 1000;
        memset(r.slots, 0, sizeof r.slots);
        memset(r.task_slots, 0, sizeof r.task_slots);
        spin_ns(random_pause(&rng) / 4);
        CHECK(cp_pool_submit(r.pool, idle_job_run, &r.jobs[0], NULL) == 0, "submit");
        bool both = k % 2 == 0;
        if (both)
            CHECK(sem_post(&r.go) == 0, "sem_post");
        spin_ns(random_pause(&rng) / 4);
        idle_wait_and_check(&r, &rng, "submitter");
        /* Nobody else submits: everything submitted has ended. */
        cp_pool_stats st;
        CHECK(cp_pool_get_stats(r.pool, &st) == 0, "stats");
        CHECK(st.submitted == st.completed + st.cancelled,
              "round %" PRIu64 ": idle, with %" PRIu64 " submitted, %" PRIu64
              " completed and %" PRIu64 " cancelled", k, st.submitted, st.completed,
              st.cancelled);
        if (both)
            CHECK(sem_wait(&r.back) == 0, "sem_wait");
        watchdog_tick();
    }
    r.last = true;
    CHECK(sem_post(&r.go) == 0, "sem_post");
    CHECK(pthread_join(second, NULL) == 0, "join");
    idle_pool_done(r.pool, per_pool);
    sem_destroy(&r.go);
    sem_destroy(&r.back);
}

/* ------------------------------------------------------------------------ */

static double seconds_since(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

int main(int argc, char **argv)
{
    uint64_t ops = stress_ops(argc, argv, DEFAULT_OPS / TSAN_DIVISOR);
    for (int v = 0; v < NVARS; v++) {
        vars[v] = cp_var_new("stress", box_free);
        CHECK(vars[v] != NULL, "out of memory");
    }
    watchdog_start("pool_stress", "a hang (lost wake-up or a wait that never returns)");

    uint64_t t0 = now_ns();
    phase_trees(ops);
    double t_trees = seconds_since(t0);
    t0 = now_ns();
    phase_mixed(ops / 5);
    double t_mixed = seconds_since(t0);
    t0 = now_ns();
    phase_wakeups(ops / 10 > 2 ? ops / 10 : 2);
    double t_wake = seconds_since(t0);
    t0 = now_ns();
    phase_tasks(ops);
    double t_tasks = seconds_since(t0);
    t0 = now_ns();
    phase_own(ops / 20 > 2 ? ops / 20 : 2);
    double t_own = seconds_since(t0);
    t0 = now_ns();
    phase_idle(ops / 100 > 2 ? ops / 100 : 2);
    double t_idle = seconds_since(t0);
    /* relaxed: every pool is freed, its workers joined. */
    unsigned starts = atomic_load_explicit(&hook_starts, memory_order_relaxed);
    unsigned stops = atomic_load_explicit(&hook_stops, memory_order_relaxed);
    CHECK(starts == stops, "%u workers ran on_start, %u on_stop", starts, stops);

    printf("pool_stress: %" PRIu64 " ops: trees %.2f s, mixed %.2f s, "
           "wake-ups %.2f s, tasks %.2f s, own waits %.2f s, idle waits %.2f s\n", ops,
           t_trees, t_mixed, t_wake, t_tasks, t_own, t_idle);
    return 0;
}
