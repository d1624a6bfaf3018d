/* test_pool.c - the work-stealing pool: context flow, futures, cancel,
 * shutdown, frame tasks, fork, errors and allocation failure.
 *
 * Each test pins one behaviour of the pool as include/ctxpool.h and
 * shared/spec/api.md describe it. Criterion runs every test in its own
 * process, so each one starts with fresh counters and a fresh main-thread
 * base context.
 *
 * No test sleeps to wait for a thread and none asserts on time: a job that
 * must stay queued or running is held by a gate (a flag under a mutex and a
 * condition variable) that the test opens, a job that must have started
 * posts a semaphore, and everything else is waited for with the pool's own
 * futures, cp_sync or a join. Tests that could hang on a bug have a Criterion
 * timeout, which turns the hang into a failure.
 *
 * Criterion's assertions are only used on the main thread. Jobs and helper
 * threads record the line of their first failed check (JCHECK), and the main
 * thread asserts that no check failed (jobs_ok).
 */
#define _GNU_SOURCE /* pthread_timedjoin_np, pthread_getname_np */

#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "ctxpool.h"
#include "pool.h"

/* ------------------------------------------------------------------------ */
/* Checks off the main thread                                                */

/* The line of the first failed JCHECK in a job or helper thread, 0 if none.
 * seq_cst: rare and cheap; read by the main thread after a wait or join. */
static atomic_int failed_line;

#define JCHECK(cond)                                                       \
    do {                                                                   \
        if (!(cond)) {                                                     \
            int zero_ = 0;                                                 \
            atomic_compare_exchange_strong(&failed_line, &zero_, __LINE__);\
        }                                                                  \
    } while (0)

static void jobs_ok(void)
{
    int line = atomic_load(&failed_line);
    cr_assert_eq(line, 0, "a job or helper thread failed its check at line %d",
                 line);
}

/* A pointer no test ever stores, to see that an output was left untouched. */
static char untouched_mark;
#define UNTOUCHED ((void *)&untouched_mark)

/* ------------------------------------------------------------------------ */
/* Gates, counters and small jobs                                            */

/* A gate holds jobs until the test opens it. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
} gate;

#define GATE_INITIALIZER {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_pass(gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

/* A job that posts `started`, then waits at `g`. */
typedef struct blocker {
    sem_t started;
    gate g;
} blocker;

static void blocker_init(blocker *b)
{
    cr_assert_eq(sem_init(&b->started, 0, 0), 0);
    b->g = (gate)GATE_INITIALIZER;
}

static void *blocker_job(void *p)
{
    blocker *b = p;
    sem_post(&b->started);
    gate_pass(&b->g);
    return p;
}

/* Set up b, submit a blocker and wait until a worker runs it: that worker
 * is then busy until the gate opens. */
static cp_future *occupy_worker(cp_pool *pool, blocker *b)
{
    blocker_init(b);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, blocker_job, b, &f), 0);
    cr_assert_eq(sem_wait(&b->started), 0);
    return f;
}

/* Counts its runs in the atomic_int arg; returns arg. relaxed: read after a
 * wait or cp_pool_free, which order it. */
static void *count_job(void *p)
{
    atomic_fetch_add_explicit((atomic_int *)p, 1, memory_order_relaxed);
    return p;
}

static int runs(atomic_int *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

/* Values whose destructor counts its calls. */
static atomic_int frees;

static void count_free(void *p)
{
    (void)p;
    atomic_fetch_add(&frees, 1);
}

static cp_pool *new_pool(unsigned threads)
{
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = threads, .name = "test"};
    cr_assert_eq(cp_pool_new(&pool, &options), 0);
    cr_assert_not_null(pool);
    return pool;
}

static void free_pool(cp_pool *pool)
{
    cr_assert_eq(cp_pool_free(pool), 0);
}

/* Wait for f, assert its outcome, free it; returns its result. */
static void *wait_ok(cp_future *f)
{
    void *result = UNTOUCHED;
    int rc = cp_future_wait(f, &result);
    cr_assert_eq(rc, 0, "wait: %s", cp_strerror(rc));
    cp_future_free(f);
    return result;
}

static void stats_of(cp_pool *pool, cp_pool_stats *stats)
{
    cr_assert_eq(cp_pool_get_stats(pool, stats), 0);
}

static const unsigned thread_counts[] = {1, 2, 4};
#define N_THREAD_COUNTS (sizeof thread_counts / sizeof thread_counts[0])

/* ------------------------------------------------------------------------ */
/* Context flow                                                              */

/* The value of var in the calling thread's current context, or UNTOUCHED. */
static void *get_here(const cp_var *var)
{
    void *v = UNTOUCHED;
    if (cp_var_get(var, &v) != 0)
        return UNTOUCHED;
    return v;
}

struct deep {
    cp_pool *pool;
    cp_var *rid;
    void *expect;
    int level;
};

/* Checks the request ID, then submits the next level and waits for it;
 * returns the deepest level that saw the ID. */
static void *deep_job(void *p)
{
    struct deep *d = p;
    if (get_here(d->rid) != d->expect) {
        JCHECK(!"request id not seen");
        return (void *)(intptr_t)(d->level - 1);
    }
    if (d->level == 5)
        return (void *)(intptr_t)5;
    struct deep child = *d;
    child.level++;
    cp_future *f = NULL;
    JCHECK(cp_pool_submit(d->pool, deep_job, &child, &f) == 0);
    void *r = NULL;
    JCHECK(cp_future_wait(f, &r) == 0);
    cp_future_free(f);
    return r;
}

Test(flow, request_id_set_before_submit_is_seen_five_levels_deep, .timeout = 60)
{
    static char request[] = "req-42";
    cp_var *rid = cp_var_new("request_id", NULL);
    cr_assert_eq(cp_var_set(rid, request, NULL), 0);
    for (size_t i = 0; i < N_THREAD_COUNTS; i++) {
        cp_pool *pool = new_pool(thread_counts[i]);
        struct deep d = {pool, rid, request, 0};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, deep_job, &d, &f), 0);
        cr_assert_eq((intptr_t)wait_ok(f), 5, "on %u workers",
                     thread_counts[i]);
        free_pool(pool);
    }
    jobs_ok();
    cr_assert_eq(get_here(rid), request);
    cp_var_free(rid);
}

struct sibling {
    cp_pool *pool;
    cp_var *rid;
    void *parent_value;
    char own[24];
};

static void *sibling_job(void *p)
{
    struct sibling *s = p;
    JCHECK(get_here(s->rid) == s->parent_value);
    JCHECK(cp_var_set(s->rid, s->own, NULL) == 0);
    /* A child sees the sibling's own value. */
    struct deep child = {s->pool, s->rid, s->own, 5};
    cp_future *f = NULL;
    JCHECK(cp_pool_submit(s->pool, deep_job, &child, &f) == 0);
    void *r = NULL;
    JCHECK(cp_future_wait(f, &r) == 0 && (intptr_t)r == 5);
    cp_future_free(f);
    JCHECK(get_here(s->rid) == s->own);
    return NULL;
}

enum { SIBLINGS = 8 };

struct parent {
    cp_pool *pool;
    cp_var *rid;
    void *main_value;
    char value[16];
    struct sibling sibs[SIBLINGS];
};

static void *parent_job(void *p)
{
    struct parent *pa = p;
    JCHECK(get_here(pa->rid) == pa->main_value);
    JCHECK(cp_var_set(pa->rid, pa->value, NULL) == 0);
    cp_future *f[SIBLINGS];
    for (int i = 0; i < SIBLINGS; i++) {
        pa->sibs[i].pool = pa->pool;
        pa->sibs[i].rid = pa->rid;
        pa->sibs[i].parent_value = pa->value;
        snprintf(pa->sibs[i].own, sizeof pa->sibs[i].own, "sibling-%d", i);
        f[i] = NULL;
        JCHECK(cp_pool_submit(pa->pool, sibling_job, &pa->sibs[i], &f[i]) == 0);
    }
    for (int i = 0; i < SIBLINGS; i++) {
        JCHECK(cp_future_wait(f[i], NULL) == 0);
        cp_future_free(f[i]);
    }
    JCHECK(get_here(pa->rid) == pa->value);
    return NULL;
}

Test(flow, siblings_changes_reach_neither_each_other_nor_parent_nor_submitter,
     .timeout = 60)
{
    static char main_value[] = "main";
    cp_var *rid = cp_var_new("request_id", NULL);
    cr_assert_eq(cp_var_set(rid, main_value, NULL), 0);
    for (size_t i = 0; i < N_THREAD_COUNTS; i++) {
        cp_pool *pool = new_pool(thread_counts[i]);
        struct parent pa = {.pool = pool, .rid = rid, .main_value = main_value};
        strcpy(pa.value, "parent");
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, parent_job, &pa, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(get_here(rid), main_value, "on %u workers",
                     thread_counts[i]);
        free_pool(pool);
    }
    cp_var_free(rid);
}

struct read_var {
    cp_var *var;
};

static void *read_var_job(void *p)
{
    return get_here(((struct read_var *)p)->var);
}

Test(flow, job_sees_the_context_as_it_was_at_submit_not_later_sets,
     .timeout = 30)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    struct read_var rv = {v};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, read_var_job, &rv, &f), 0);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0); /* the job is still queued */
    gate_open(&bl.g);
    wait_ok(busy);
    cr_assert_eq(wait_ok(f), &a);
    free_pool(pool);
    cp_var_free(v);
}

static void *set_var_job(void *p)
{
    static int job_value;
    JCHECK(cp_var_set(((struct read_var *)p)->var, &job_value, NULL) == 0);
    return &job_value;
}

Test(flow, submit_in_job_changes_stay_in_its_context_and_not_the_submitters,
     .timeout = 30)
{
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cp_pool *pool = new_pool(2);
    struct read_var rv = {v};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit_in(pool, c, set_var_job, &rv, &f), 0);
    void *set = wait_ok(f);
    void *seen = UNTOUCHED;
    cr_assert_eq(cp_context_get(c, v, &seen), 0);
    cr_assert_eq(seen, set);
    cr_assert_eq(get_here(v), UNTOUCHED);
    /* A later submit_in job in c sees it. */
    cr_assert_eq(cp_pool_submit_in(pool, c, read_var_job, &rv, &f), 0);
    cr_assert_eq(wait_ok(f), set);
    jobs_ok();
    free_pool(pool);
    cp_context_free(c);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* The lifespan scenario                                                     */

static int db_handle, config_handle;

struct app_vars {
    cp_var *db, *config, *request;
};

static void *lifespan_job(void *p)
{
    struct app_vars *v = p;
    JCHECK(cp_var_set(v->db, &db_handle, NULL) == 0);
    JCHECK(cp_var_set(v->config, &config_handle, NULL) == 0);
    return NULL;
}

enum { ENDPOINTS = 16 };

struct endpoint {
    struct app_vars *v;
    int id;
    pthread_barrier_t *all_set;
};

static void *endpoint_job(void *p)
{
    struct endpoint *e = p;
    JCHECK(get_here(e->v->db) == &db_handle);
    JCHECK(get_here(e->v->config) == &config_handle);
    JCHECK(get_here(e->v->request) == UNTOUCHED);
    JCHECK(cp_var_set(e->v->request, &e->id, NULL) == 0);
    JCHECK(get_here(e->v->request) == &e->id);
    return NULL;
}

Test(lifespan, endpoints_see_lifespan_state_and_keep_their_own_changes,
     .timeout = 60)
{
    struct app_vars v = {cp_var_new("db", NULL), cp_var_new("config", NULL),
                         cp_var_new("request", NULL)};
    cp_pool *pool = new_pool(4);
    cp_context *app = cp_context_new();
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit_in(pool, app, lifespan_job, &v, &f), 0);
    wait_ok(f);

    struct endpoint eps[ENDPOINTS];
    cp_context *ctx[ENDPOINTS];
    cp_future *fs[ENDPOINTS];
    for (int i = 0; i < ENDPOINTS; i++) {
        eps[i] = (struct endpoint){&v, i, NULL};
        ctx[i] = cp_context_copy(app);
        cr_assert_not_null(ctx[i]);
        cr_assert_eq(cp_pool_submit_in(pool, ctx[i], endpoint_job, &eps[i], &fs[i]), 0);
    }
    for (int i = 0; i < ENDPOINTS; i++)
        wait_ok(fs[i]);
    jobs_ok();
    for (int i = 0; i < ENDPOINTS; i++) {
        void *seen = UNTOUCHED;
        cr_assert_eq(cp_context_get(ctx[i], v.request, &seen), 0);
        cr_assert_eq(seen, &eps[i].id, "endpoint %d sees another's request", i);
        cr_assert_eq(cp_context_len(ctx[i]), 3);
        cp_context_free(ctx[i]);
    }
    cr_assert_eq(cp_context_len(app), 2);
    cr_assert_not(cp_context_contains(app, v.request));
    cr_assert_eq(cp_context_get_or(app, v.db, NULL), &db_handle);
    cr_assert_eq(cp_context_get_or(app, v.config, NULL), &config_handle);
    free_pool(pool);
    cp_context_free(app);
    cp_var_free(v.db);
    cp_var_free(v.config);
    cp_var_free(v.request);
}

struct setter {
    cp_var *var;
    void *value;
};

static void *set_in_run(void *p)
{
    struct setter *s = p;
    JCHECK(cp_var_set(s->var, s->value, NULL) == 0);
    return NULL;
}

Test(lifespan, pool_keeps_its_own_reference_to_a_submit_in_context, .timeout = 30)
{
    static int value;
    cp_var *v = cp_var_new("v", count_free);
    cp_context *c = cp_context_new();
    struct setter s = {v, &value};
    cr_assert_eq(cp_context_run(c, set_in_run, &s, NULL), 0);

    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    struct read_var rv = {v};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit_in(pool, c, read_var_job, &rv, &f), 0);
    cp_context_free(c); /* the caller's reference; the job is still queued */
    cr_assert_eq(atomic_load(&frees), 0, "the context died with the caller's ref");
    gate_open(&bl.g);
    wait_ok(busy);
    cr_assert_eq(wait_ok(f), &value);
    /* The job is done: the pool's reference is gone, and with it the value. */
    cr_assert_eq(atomic_load(&frees), 1);
    jobs_ok();
    free_pool(pool);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Snapshots of a running job                                                */

enum { STEPS = 3 };

struct snapper {
    cp_var *step;
    int values[STEPS];
    cp_context *snaps[STEPS];
    sem_t published, ack;
};

static void *snapper_job(void *p)
{
    struct snapper *s = p;
    for (int k = 0; k < STEPS; k++) {
        JCHECK(cp_var_set(s->step, &s->values[k], NULL) == 0);
        s->snaps[k] = cp_copy_context();
        sem_post(&s->published);
        sem_wait(&s->ack);
    }
    return NULL;
}

struct submit_from_run {
    cp_pool *pool;
    struct read_var *rv;
    cp_future *f;
    int rc;
};

static void *submit_from_run(void *p)
{
    struct submit_from_run *a = p;
    a->rc = cp_pool_submit(a->pool, read_var_job, a->rv, &a->f);
    return NULL;
}

Test(snapshot, jobs_started_from_a_running_jobs_snapshot_see_what_it_had_set,
     .timeout = 60)
{
    struct snapper s = {.step = cp_var_new("step", NULL)};
    cr_assert_eq(sem_init(&s.published, 0, 0), 0);
    cr_assert_eq(sem_init(&s.ack, 0, 0), 0);
    cp_pool *pool = new_pool(2); /* one runs the snapper, one the readers */
    cp_future *long_running = NULL;
    cr_assert_eq(cp_pool_submit(pool, snapper_job, &s, &long_running), 0);
    struct read_var rv = {s.step};
    for (int k = 0; k < STEPS; k++) {
        cr_assert_eq(sem_wait(&s.published), 0);
        cr_assert_not_null(s.snaps[k]);
        /* submit_in on a copy of the snapshot */
        cp_context *copy = cp_context_copy(s.snaps[k]);
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit_in(pool, copy, read_var_job, &rv, &f), 0);
        cp_context_free(copy);
        cr_assert_eq(wait_ok(f), &s.values[k], "submit_in at step %d", k);
        /* cp_context_run of a copy, on this thread */
        copy = cp_context_copy(s.snaps[k]);
        void *seen = UNTOUCHED;
        cr_assert_eq(cp_context_run(copy, read_var_job, &rv, &seen), 0);
        cr_assert_eq(seen, &s.values[k], "run at step %d", k);
        /* a plain submit from inside a run of the copy */
        struct submit_from_run a = {pool, &rv, NULL, 1};
        cr_assert_eq(cp_context_run(copy, submit_from_run, &a, NULL), 0);
        cr_assert_eq(a.rc, 0);
        cr_assert_eq(wait_ok(a.f), &s.values[k], "submit in run at step %d", k);
        cp_context_free(copy);
        sem_post(&s.ack);
    }
    wait_ok(long_running);
    jobs_ok();
    /* A snapshot keeps what it had; the job's later sets are not in it. */
    for (int k = 0; k < STEPS; k++) {
        cr_assert_eq(cp_context_get_or(s.snaps[k], s.step, NULL), &s.values[k]);
        cp_context_free(s.snaps[k]);
    }
    cr_assert_eq(get_here(s.step), UNTOUCHED);
    free_pool(pool);
    cp_var_free(s.step);
}

/* ------------------------------------------------------------------------ */
/* Busy and recursive contexts                                               */

struct holder {
    sem_t entered;
    gate release;
};

static void *hold_inside(void *p)
{
    struct holder *h = p;
    sem_post(&h->entered);
    gate_pass(&h->release);
    return NULL;
}

struct hold_thread {
    cp_context *c;
    struct holder *h;
    int rc;
};

static void *hold_thread_main(void *p)
{
    struct hold_thread *t = p;
    t->rc = cp_context_run(t->c, hold_inside, t->h, NULL);
    return NULL;
}

Test(busy, submit_in_a_context_another_thread_has_entered_is_ebusy_and_never_runs,
     .timeout = 30)
{
    cp_context *c = cp_context_new();
    struct holder h = {.release = GATE_INITIALIZER};
    cr_assert_eq(sem_init(&h.entered, 0, 0), 0);
    struct hold_thread t = {c, &h, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, hold_thread_main, &t), 0);
    cr_assert_eq(sem_wait(&h.entered), 0);

    cp_pool *pool = new_pool(2);
    atomic_int ran = 0;
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit_in(pool, c, count_job, &ran, &f), 0);
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait(f, &result), CP_EBUSY);
    cr_assert_eq(result, UNTOUCHED);
    cr_assert(cp_future_done(f));
    cp_future_free(f);
    cr_assert_eq(runs(&ran), 0);

    gate_open(&h.release);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(t.rc, 0);
    /* Once the holder has left, the same submit runs. */
    cr_assert_eq(cp_pool_submit_in(pool, c, count_job, &ran, &f), 0);
    wait_ok(f);
    cr_assert_eq(runs(&ran), 1);
    /* The refused job ended too: completed counts it, so that submitted
     * is completed + cancelled once nothing is in flight. */
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, 2);
    cr_assert_eq(st.completed, 2);
    cr_assert_eq(st.cancelled, 0);
    free_pool(pool);
    cp_context_free(c);
}

struct recursive {
    cp_pool *pool;
    cp_context *c;
    atomic_int inner_runs;
};

static void *outer_in_c(void *p)
{
    struct recursive *r = p;
    cp_future *f = NULL;
    JCHECK(cp_pool_submit_in(r->pool, r->c, count_job, &r->inner_runs, &f) == 0);
    int rc = cp_future_wait(f, NULL);
    cp_future_free(f);
    return (void *)(intptr_t)rc;
}

Test(busy, submit_in_waited_for_inside_the_same_context_is_erecursive,
     .timeout = 30)
{
    cp_context *c = cp_context_new();
    cp_pool *pool = new_pool(1);
    struct recursive r = {pool, c, 0};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit_in(pool, c, outer_in_c, &r, &f), 0);
    cr_assert_eq((intptr_t)wait_ok(f), CP_ERECURSIVE);
    cr_assert_eq(runs(&r.inner_runs), 0);
    jobs_ok();
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, 2);
    cr_assert_eq(st.completed, 2);
    free_pool(pool);
    cp_context_free(c);
}

/* ------------------------------------------------------------------------ */
/* Fork-join: fib(22)                                                        */

#define FIB_N 22
#define FIB_VALUE 17711

static cp_pool *fib_pool;
static cp_var *fib_tag;
static int fib_tag_value;

static void *fib_future(void *arg)
{
    intptr_t n = (intptr_t)arg;
    JCHECK(get_here(fib_tag) == &fib_tag_value);
    if (n < 2)
        return (void *)n;
    cp_future *f = NULL;
    if (cp_pool_submit(fib_pool, fib_future, (void *)(n - 1), &f) != 0) {
        JCHECK(!"submit failed");
        return NULL;
    }
    intptr_t b = (intptr_t)fib_future((void *)(n - 2));
    void *a = NULL;
    JCHECK(cp_future_wait(f, &a) == 0);
    cp_future_free(f);
    return (void *)((intptr_t)a + b);
}

static void *fib_task(void *arg)
{
    intptr_t n = (intptr_t)arg;
    JCHECK(get_here(fib_tag) == &fib_tag_value);
    if (n < 2)
        return (void *)n;
    cp_task t;
    if (cp_spawn(fib_pool, &t, fib_task, (void *)(n - 1)) != 0) {
        JCHECK(!"spawn failed");
        return NULL;
    }
    intptr_t b = (intptr_t)fib_task((void *)(n - 2));
    void *a = NULL;
    JCHECK(cp_sync(&t, &a) == 0);
    return (void *)((intptr_t)a + b);
}

static void fib_everywhere(cp_job_fn fib)
{
    fib_tag = cp_var_new("fib", NULL);
    cr_assert_eq(cp_var_set(fib_tag, &fib_tag_value, NULL), 0);
    for (size_t i = 0; i < N_THREAD_COUNTS; i++) {
        fib_pool = new_pool(thread_counts[i]);
        /* from inside the pool */
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(fib_pool, fib, (void *)(intptr_t)FIB_N, &f), 0);
        cr_assert_eq((intptr_t)wait_ok(f), FIB_VALUE, "in a job, %u workers",
                     thread_counts[i]);
        /* from an outside thread */
        cr_assert_eq((intptr_t)fib((void *)(intptr_t)FIB_N), FIB_VALUE,
                     "outside, %u workers", thread_counts[i]);
        jobs_ok();
        free_pool(fib_pool);
    }
    cp_var_free(fib_tag);
}

Test(fork_join, fib_with_futures_is_right_on_1_2_4_workers_inside_and_outside,
     .timeout = 120)
{
    fib_everywhere(fib_future);
}

Test(fork_join, fib_with_frame_tasks_is_right_on_1_2_4_workers_inside_and_outside,
     .timeout = 120)
{
    fib_everywhere(fib_task);
}

/* ------------------------------------------------------------------------ */
/* Many outside submitters                                                   */

enum { SUBMITTERS = 4, PER_SUBMITTER = 25000, SUBMISSIONS = SUBMITTERS * PER_SUBMITTER };

static atomic_int job_runs[SUBMISSIONS];

struct submitter {
    cp_pool *pool;
    pthread_barrier_t *start;
    int first;
    cp_future **futures;
};

static void *submitter_main(void *p)
{
    struct submitter *s = p;
    pthread_barrier_wait(s->start);
    for (int i = 0; i < PER_SUBMITTER; i++)
        JCHECK(cp_pool_submit(s->pool, count_job, &job_runs[s->first + i],
                              &s->futures[s->first + i]) == 0);
    return NULL;
}

/* Jobs that can only finish together: each arrives, then sleeps (up to a
 * generous deadline, a hang detector) until all of its round have arrived,
 * as handlers blocked on their clients do. Returns the number that had
 * arrived when it stopped waiting. */
struct rendezvous {
    pthread_mutex_t lock;
    pthread_cond_t all_here;
    int arrived, expected;
};

static void *rendezvous_job(void *p)
{
    struct rendezvous *r = p;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&r->lock);
    if (++r->arrived == r->expected)
        pthread_cond_broadcast(&r->all_here);
    while (r->arrived < r->expected &&
           pthread_cond_timedwait(&r->all_here, &r->lock, &deadline) == 0)
        ;
    int arrived = r->arrived;
    pthread_mutex_unlock(&r->lock);
    return (void *)(intptr_t)arrived;
}

Test(submit, every_worker_wakes_for_jobs_that_wait_for_each_other, .timeout = 120)
{
    /* A worker woken for one job may take another; the rule that the last
     * searcher to find work wakes the next must still get every job of a
     * round started, or the round waits for a worker that sleeps. Submits
     * come with gaps of varying length, to meet workers at every stage of
     * waking and parking. */
    enum { WORKERS = 4, ROUNDS = 300 };
    cp_pool *pool = new_pool(WORKERS);
    for (int round = 0; round < ROUNDS; round++) {
        struct rendezvous r = {.lock = PTHREAD_MUTEX_INITIALIZER,
                               .all_here = PTHREAD_COND_INITIALIZER,
                               .arrived = 0, .expected = WORKERS};
        cp_future *f[WORKERS];
        for (int i = 0; i < WORKERS; i++) {
            cr_assert_eq(cp_pool_submit(pool, rendezvous_job, &r, &f[i]), 0);
            for (int spin = (round * 7 + i * 13) % 5 * 50; spin > 0; spin--)
                sched_yield();
        }
        for (int i = 0; i < WORKERS; i++) {
            void *arrived = NULL;
            cr_assert_eq(cp_future_wait(f[i], &arrived), 0);
            cr_assert_eq((intptr_t)arrived, WORKERS,
                         "round %d: a job gave up with %d of %d started: one was "
                         "left queued while a worker slept",
                         round, (int)(intptr_t)arrived, WORKERS);
            cp_future_free(f[i]);
        }
    }
    free_pool(pool);
}

Test(submit, hundred_thousand_jobs_from_four_outside_threads_run_exactly_once,
     .timeout = 120)
{
    cp_pool *pool = new_pool(4);
    cp_future **futures = calloc(SUBMISSIONS, sizeof *futures);
    cr_assert_not_null(futures);
    pthread_barrier_t start;
    cr_assert_eq(pthread_barrier_init(&start, NULL, SUBMITTERS), 0);
    struct submitter s[SUBMITTERS];
    pthread_t th[SUBMITTERS];
    for (int i = 0; i < SUBMITTERS; i++) {
        s[i] = (struct submitter){pool, &start, i * PER_SUBMITTER, futures};
        cr_assert_eq(pthread_create(&th[i], NULL, submitter_main, &s[i]), 0);
    }
    for (int i = 0; i < SUBMITTERS; i++)
        cr_assert_eq(pthread_join(th[i], NULL), 0);
    jobs_ok();
    for (int i = 0; i < SUBMISSIONS; i++)
        cr_assert_eq(wait_ok(futures[i]), &job_runs[i]);
    for (int i = 0; i < SUBMISSIONS; i++)
        cr_assert_eq(runs(&job_runs[i]), 1, "job %d ran %d times", i,
                     runs(&job_runs[i]));
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, SUBMISSIONS);
    cr_assert_eq(st.completed, SUBMISSIONS);
    cr_assert_eq(st.cancelled, 0);
    cr_assert_eq(st.threads, 4);
    free_pool(pool);
    free(futures);
    pthread_barrier_destroy(&start);
}

/* ------------------------------------------------------------------------ */
/* Job caches                                                                */

enum { BURST = 300 }; /* jobs: more than four arenas' worth (63 each) */

struct burst {
    cp_pool *pool;
    atomic_int *ran;
    blocker *b;        /* submit_blocker: the blocker to submit */
    cp_future *future; /* and its future */
};

/* On a thread of its own, so that the blocker's job comes from another
 * thread's cache than the test's. */
static void *submit_blocker(void *p)
{
    struct burst *o = p;
    JCHECK(cp_pool_submit(o->pool, blocker_job, o->b, &o->future) == 0);
    return NULL;
}

/* Jobs the workers give back are the submitting thread's again: a second
 * burst as large as the first makes no allocation. And they come out in
 * address order, going down only where the cache moves on to another arena
 * (at most once an arena), however the workers gave them back: a burst's
 * memory is read in order, which the hardware prefetches. */
Test(cache, jobs_given_back_by_workers_are_handed_out_again_in_address_order,
     .timeout = 30)
{
    static cp_future *f[BURST];
    atomic_int ran = 0;
    /* The first burst waits behind a blocker: all of its jobs are out at
     * once, none given back to be handed out again within the burst. */
    cp_pool *pool = new_pool(1);
    blocker bl;
    blocker_init(&bl);
    struct burst o = {pool, &ran, &bl, NULL};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, submit_blocker, &o), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    jobs_ok();
    cr_assert_eq(sem_wait(&bl.started), 0);
    for (int i = 0; i < BURST; i++)
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), 0);
    gate_open(&bl.g);
    wait_ok(o.future);
    free_pool(pool); /* drains; its worker gives back what it gathered */
    cr_assert_eq(runs(&ran), BURST);
    cr_assert_eq(cp__pool_jobs_out(), 0, "every job is back in its arena");

    pool = new_pool(2);
    unsigned long before = cp__alloc_count();
    for (int i = 0; i < BURST; i++)
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[i]), 0);
    cr_assert_eq(cp__alloc_count() - before, 0, "the second burst allocated %lu times",
                 cp__alloc_count() - before);
    int down = 0;
    for (int i = 1; i < BURST; i++)
        down += (uintptr_t)f[i] < (uintptr_t)f[i - 1];
    cr_assert_leq(down, BURST / 63 + 1, "%d of %d jobs come before the one "
                  "handed out ahead of them", down, BURST);
    for (int i = 0; i < BURST; i++)
        wait_ok(f[i]);
    free_pool(pool);
    cr_assert_eq(runs(&ran), 2 * BURST);
    cr_assert_eq(cp__pool_jobs_out(), 0);
}

static void *submit_burst_and_exit(void *p)
{
    struct burst *b = p;
    for (int i = 0; i < BURST; i++)
        JCHECK(cp_pool_submit(b->pool, count_job, b->ran, NULL) == 0);
    return NULL;
}

/* A thread that exits while its jobs are queued: they still run once each,
 * and the worker that gives the last of an arena's jobs back frees the
 * arena (the leak checks of the valgrind and ASan runs see any that stays). */
Test(cache, jobs_that_outlive_their_thread_run_and_are_freed, .timeout = 30)
{
    atomic_int ran = 0;
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    struct burst b = {pool, &ran, NULL, NULL};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, submit_burst_and_exit, &b), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    jobs_ok();
    cr_assert_eq(runs(&ran), 0, "the worker was busy");
    gate_open(&bl.g);
    wait_ok(busy);
    free_pool(pool);
    cr_assert_eq(runs(&ran), BURST);
}

/* ------------------------------------------------------------------------ */
/* Waiting and cancelling                                                    */

Test(future, wait_returns_the_job_result, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    atomic_int ran = 0;
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    cr_assert_eq(wait_ok(f), &ran);
    cr_assert_eq(runs(&ran), 1);
    free_pool(pool);
}

Test(future, wait_timeout_is_etimedout_while_the_job_is_held_then_wait_succeeds,
     .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker bl;
    blocker_init(&bl);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, blocker_job, &bl, &f), 0);
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait_timeout(f, 1000000, &result), CP_ETIMEDOUT);
    cr_assert_eq(result, UNTOUCHED);
    cr_assert_eq(sem_wait(&bl.started), 0);
    cr_assert_eq(cp_future_wait_timeout(f, 2000000, &result), CP_ETIMEDOUT);
    cr_assert_not(cp_future_done(f));
    gate_open(&bl.g);
    cr_assert_eq(cp_future_wait_timeout(f, UINT64_MAX - 1, &result), 0);
    cr_assert_eq(result, &bl);
    cr_assert_eq(cp_future_wait(f, &result), 0); /* again: same outcome */
    cp_future_free(f);
    free_pool(pool);
}

/* A 1-worker pool whose worker a blocker holds (busy), and count_job on
 * ran queued behind it (f). */
typedef struct queued {
    cp_pool *pool;
    blocker bl;
    cp_future *busy, *f;
    atomic_int ran;
} queued;

static void queue_behind_busy(queued *q)
{
    q->pool = new_pool(1);
    q->busy = occupy_worker(q->pool, &q->bl);
    atomic_init(&q->ran, 0);
    q->f = NULL;
    cr_assert_eq(cp_pool_submit(q->pool, count_job, &q->ran, &q->f), 0);
}

Test(future, wait_timeout_zero_polls, .timeout = 30)
{
    queued q;
    queue_behind_busy(&q);
    cp_pool *pool = q.pool;
    cp_future *busy = q.busy, *f = q.f;
    cr_assert_eq(cp_future_wait_timeout(busy, 0, NULL), CP_ETIMEDOUT);
    cr_assert_eq(cp_future_wait_timeout(f, 0, NULL), CP_ETIMEDOUT);
    gate_open(&q.bl.g);
    wait_ok(busy);
    cr_assert_eq(cp_future_wait(f, NULL), 0);
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait_timeout(f, 0, &result), 0);
    cr_assert_eq(result, &q.ran);
    cp_future_free(f);
    free_pool(pool);
}

/* On a worker: submit a child and poll it, which must not run it. */
struct poll_child {
    cp_pool *pool;
    atomic_int ran;
    int polled, ran_by_then;
};

static void *poll_own_child(void *p)
{
    struct poll_child *q = p;
    cp_future *child = NULL;
    JCHECK(cp_pool_submit(q->pool, count_job, &q->ran, &child) == 0);
    q->polled = cp_future_wait_timeout(child, 0, NULL);
    q->ran_by_then = runs(&q->ran);
    JCHECK(cp_future_wait(child, NULL) == 0);
    cp_future_free(child);
    return NULL;
}

Test(future, wait_timeout_zero_on_a_worker_polls_and_runs_nothing, .timeout = 30)
{
    /* One worker: the child waits in its deque, where a wait would take it. */
    struct poll_child q = {.pool = new_pool(1)};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(q.pool, poll_own_child, &q, &f), 0);
    wait_ok(f);
    jobs_ok();
    cr_assert_eq(q.polled, CP_ETIMEDOUT);
    cr_assert_eq(q.ran_by_then, 0, "the poll ran the job");
    cr_assert_eq(runs(&q.ran), 1);
    free_pool(q.pool);
}

static uint64_t monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

Test(future, wait_timeout_waits_out_its_timeout_in_nanoseconds, .timeout = 30)
{
    /* A lower bound, which no slowness of the machine can break: a timed
     * wait for a job held meanwhile does not give up early. */
    enum { TIMEOUT_NS = 50000000 };
    queued q;
    queue_behind_busy(&q);
    uint64_t start = monotonic_ns();
    cr_assert_eq(cp_future_wait_timeout(q.f, TIMEOUT_NS, NULL), CP_ETIMEDOUT);
    uint64_t waited = monotonic_ns() - start;
    cr_assert_geq(waited, TIMEOUT_NS, "gave up after %llu ns", (unsigned long long)waited);
    gate_open(&q.bl.g);
    wait_ok(q.busy);
    wait_ok(q.f);
    free_pool(q.pool);
}

/* A timed wait on a worker runs other work while it waits, but looks at
 * its deadline before each item: it returns late by one item's run at most,
 * however much work there is. Each item here lasts as long as the timeout
 * (from its own start, which comes after the wait's), so once one has run
 * the deadline has passed, and the wait must return without running
 * another. Counts, not times, are asserted. (Before the fix, the wait ran
 * all of them, its deadline unread while work was there.) */
enum { TIMED_ITEMS = 8, TIMED_NS = 2000000 };

struct timed_help {
    cp_pool *pool;
    cp_future *held;  /* the job waited for, held on the other worker */
    bool tasks;       /* the items are frame tasks, not jobs */
    atomic_int ran;
    int rc, ran_by_then;
};

static void *last_the_timeout(void *p)
{
    struct timed_help *h = p;
    uint64_t end = monotonic_ns() + TIMED_NS;
    struct timespec until = {(time_t)(end / 1000000000u), (long)(end % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        ;
    atomic_fetch_add(&h->ran, 1);
    return NULL;
}

static void *timed_wait_among_work(void *p)
{
    struct timed_help *h = p;
    cp_future *jobs[TIMED_ITEMS];
    cp_task tasks[TIMED_ITEMS];
    for (int i = 0; i < TIMED_ITEMS; i++)
        JCHECK(h->tasks ? cp_spawn(h->pool, &tasks[i], last_the_timeout, h) == 0
                        : cp_pool_submit(h->pool, last_the_timeout, h, &jobs[i]) == 0);
    h->rc = cp_future_wait_timeout(h->held, TIMED_NS, NULL);
    h->ran_by_then = runs(&h->ran);
    for (int i = TIMED_ITEMS - 1; i >= 0; i--) {
        if (h->tasks) {
            JCHECK(cp_sync(&tasks[i], NULL) == 0);
        } else {
            JCHECK(cp_future_wait(jobs[i], NULL) == 0);
            cp_future_free(jobs[i]);
        }
    }
    return NULL;
}

Test(future, wait_timeout_on_a_worker_returns_after_one_item_past_its_deadline,
     .timeout = 30)
{
    for (int tasks = 0; tasks < 2; tasks++) {
        cp_pool *pool = new_pool(2);
        blocker b;
        cp_future *held = occupy_worker(pool, &b); /* the other worker, busy */
        struct timed_help h = {.pool = pool, .held = held, .tasks = tasks};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, timed_wait_among_work, &h, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(h.rc, CP_ETIMEDOUT, "%s: %s", tasks ? "tasks" : "jobs",
                     cp_strerror(h.rc));
        cr_assert_leq(h.ran_by_then, 1, "%s: the timed wait ran %d items of %d",
                      tasks ? "tasks" : "jobs", h.ran_by_then, (int)TIMED_ITEMS);
        cr_assert_eq(runs(&h.ran), TIMED_ITEMS);
        gate_open(&b.g);
        wait_ok(held);
        free_pool(pool);
    }
}

static void *wait_in_thread(void *p)
{
    void *result = NULL;
    JCHECK(cp_future_wait(p, &result) == 0);
    return result;
}

Test(future, several_threads_may_wait_on_one_future, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    blocker_init(&bl);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, blocker_job, &bl, &f), 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, wait_in_thread, f), 0);
    gate_open(&bl.g);
    for (int i = 0; i < 3; i++) {
        void *r = NULL;
        cr_assert_eq(pthread_join(th[i], &r), 0);
        cr_assert_eq(r, &bl);
    }
    jobs_ok();
    wait_ok(f);
    free_pool(pool);
}

Test(cancel, before_start_the_job_never_runs_and_wait_is_ecanceled, .timeout = 30)
{
    queued q;
    queue_behind_busy(&q);
    cp_pool *pool = q.pool;
    cp_future *busy = q.busy, *f = q.f;
    cr_assert_eq(cp_future_cancel(f), 0);
    cr_assert(cp_future_done(f));
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait(f, &result), CP_ECANCELED); /* at once */
    cr_assert_eq(result, UNTOUCHED);
    cr_assert_eq(cp_future_cancel(f), 0, "a second cancel is also 0");
    gate_open(&q.bl.g);
    wait_ok(busy);
    /* The worker has dequeued it by now or does so while draining. */
    free_pool(pool);
    cr_assert_eq(runs(&q.ran), 0);
    cr_assert_eq(cp_future_wait(f, NULL), CP_ECANCELED);
    cp_future_free(f);
}

/* A job queued behind a busy worker and cancelled twice, its handle freed
 * before a worker reaches it when free_early (the queue then holds the only
 * reference). A job queued after it proves it was dequeued: it never ran
 * and counts once, as cancelled. */
static void cancel_queued_job(bool free_early)
{
    queued q;
    queue_behind_busy(&q);
    cp_pool *pool = q.pool;
    cp_future *busy = q.busy, *f = q.f;
    cr_assert_eq(cp_future_cancel(f), 0);
    cr_assert_eq(cp_future_cancel(f), 0);
    if (free_early)
        cp_future_free(f);
    gate_open(&q.bl.g);
    wait_ok(busy);
    cp_future *g = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &q.ran, &g), 0);
    wait_ok(g);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, 3);
    cr_assert_eq(st.cancelled, 1);
    cr_assert_eq(st.completed, 2);
    cr_assert_eq(runs(&q.ran), 1);
    free_pool(pool); /* its worker hands back the jobs it let go of */
    if (!free_early) {
        /* The pool let go of f when it counted the cancel, the handle has
         * not: this thread's next jobs are others, and f stays cancelled. */
        pool = new_pool(1);
        atomic_int ran = 0;
        cp_future *h[4];
        for (int i = 0; i < 4; i++) {
            cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &h[i]), 0);
            cr_assert_neq(h[i], f);
        }
        for (int i = 0; i < 4; i++)
            wait_ok(h[i]);
        free_pool(pool);
        cr_assert_eq(cp_future_wait(f, NULL), CP_ECANCELED);
        cp_future_free(f);
    }
    cr_assert_eq(cp__pool_jobs_out(), 0, "every job went back to its cache once");
}

Test(cancel, counts_in_stats_once, .timeout = 30)
{
    cancel_queued_job(false);
}

Test(cancel, then_freed_before_a_worker_reaches_it_the_job_never_runs, .timeout = 30)
{
    cancel_queued_job(true);
}

Test(cancel, after_start_is_ebusy_and_the_job_finishes, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker bl;
    cp_future *f = occupy_worker(pool, &bl);
    cr_assert_eq(cp_future_cancel(f), CP_EBUSY);
    gate_open(&bl.g);
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait(f, &result), 0);
    cr_assert_eq(result, &bl);
    cr_assert_eq(cp_future_cancel(f), CP_EBUSY, "after it finished");
    cr_assert_eq(cp_future_wait(f, NULL), 0);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.cancelled, 0);
    cp_future_free(f);
    free_pool(pool);
    cr_assert_eq(cp__pool_jobs_out(), 0);
}

/* A cancel that wins drops the job's payload, the last reference to the
 * context it captured: the free_value of a value there runs then, user code,
 * which may wait for a job. On a worker that wait helps, and pops the
 * cancelled job itself (it lies above the one waited for). That worker must
 * take the cancel as won, as it did before a cancel could back off, not
 * wait for the cancel to settle: the cancel is its own caller, and the wait
 * would never end (the test's timeout turns that hang into a failure). */
static struct {
    atomic_int ran;
    cp_future *under;      /* queued under the cancelled job */
    atomic_int under_rc;   /* the wait in free_value */
    atomic_int waits;      /* free_value's waits: exactly one */
} drop_wait;
static int drop_waiting_value; /* the value whose free waits */

static void wait_in_free_value(void *value)
{
    if (value != &drop_waiting_value)
        return;
    atomic_fetch_add(&drop_wait.waits, 1);
    atomic_store(&drop_wait.under_rc, cp_future_wait(drop_wait.under, NULL));
}

static void *cancel_own_queued_job(void *p)
{
    cp_pool *pool = p;
    cp_var *v = cp_var_new("v", wait_in_free_value);
    JCHECK(v != NULL);
    JCHECK(cp_pool_submit(pool, count_job, &drop_wait.ran, &drop_wait.under) == 0);
    /* f captures the only map that holds the waiting value: this job's
     * context moves on to another value at once. */
    JCHECK(cp_var_set(v, &drop_waiting_value, NULL) == 0);
    cp_future *f = NULL;
    JCHECK(cp_pool_submit(pool, count_job, &drop_wait.ran, &f) == 0);
    static int other;
    JCHECK(cp_var_set(v, &other, NULL) == 0);
    /* Our worker's deque: under, then f on top. Nobody else can take f. */
    JCHECK(cp_future_cancel(f) == 0);
    JCHECK(atomic_load(&drop_wait.waits) == 1);
    JCHECK(atomic_load(&drop_wait.under_rc) == 0);
    JCHECK(cp_future_wait(f, NULL) == CP_ECANCELED);
    cp_future_free(f);
    cp_future_free(drop_wait.under);
    cp_var_free(v);
    return NULL;
}

Test(cancel, won_by_a_worker_whose_payload_drop_waits_for_a_job_under_it,
     .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    cp_future *job = NULL;
    cr_assert_eq(cp_pool_submit(pool, cancel_own_queued_job, pool, &job), 0);
    wait_ok(job);
    jobs_ok();
    cr_assert_eq(runs(&drop_wait.ran), 1, "the job under it ran, the cancelled one did not");
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.cancelled, 1);
    free_pool(pool);
}

/* A won cancel drops the payload on the cancelling thread once the job is
 * final: a free_value there that waits for that very job finds it
 * cancelled. (It waited for itself when the drop came first: the test's
 * timeout turns such a hang into a failure.) */
static struct {
    cp_future *f;
    atomic_int rc, waits;
} self_drop;
static int self_drop_value;

static void wait_for_the_cancelled_job(void *value)
{
    if (value != &self_drop_value)
        return;
    atomic_fetch_add(&self_drop.waits, 1);
    atomic_store(&self_drop.rc, cp_future_wait(self_drop.f, NULL));
}

Test(cancel, a_free_value_its_drop_runs_finds_the_job_cancelled, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    cp_var *v = cp_var_new("v", wait_for_the_cancelled_job);
    cr_assert_not_null(v);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &self_drop_value, &t), 0);
    static atomic_int ran;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &self_drop.f), 0);
    /* Now only the job's captured map holds the value. */
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_token_free(t);
    cr_assert_eq(atomic_load(&self_drop.waits), 0);
    cr_assert_eq(cp_future_cancel(self_drop.f), 0);
    cr_assert_eq(atomic_load(&self_drop.waits), 1);
    cr_assert_eq(atomic_load(&self_drop.rc), CP_ECANCELED, "%s",
                 cp_strerror(atomic_load(&self_drop.rc)));
    cr_assert_eq(cp_future_wait(self_drop.f, NULL), CP_ECANCELED);
    gate_open(&bl.g);
    wait_ok(busy);
    cr_assert_eq(runs(&ran), 0);
    cp_future_free(self_drop.f);
    cp_var_free(v);
    free_pool(pool);
    cr_assert_eq(cp__pool_jobs_out(), 0);
}

/* A won cancel makes the job final before it drops the payload, whose
 * free_value may wait for anything: here, on the main thread, for a job
 * that waits for the cancelled one (its worker takes it back from its
 * deque and must find it cancelled, not run it nor report a result never
 * written). When the drop came first, the two waited for each other (the
 * test's timeout turns that into a failure). */
static struct {
    sem_t f_ready, dropping;
    cp_future *f;
    atomic_int wait_rc;
    atomic_bool wait_done;
} held_drop;
static int held_drop_value;

static void hold_drop(void *value)
{
    if (value != &held_drop_value)
        return;
    sem_post(&held_drop.dropping);
    while (!atomic_load(&held_drop.wait_done))
        sched_yield();
}

static void *wait_for_own_job_being_dropped(void *p)
{
    cp_pool *pool = p;
    static atomic_int ran;
    cp_var *v = cp_var_new("v", hold_drop);
    JCHECK(v != NULL);
    JCHECK(cp_var_set(v, &held_drop_value, NULL) == 0);
    JCHECK(cp_pool_submit(pool, count_job, &ran, &held_drop.f) == 0);
    static int other;
    JCHECK(cp_var_set(v, &other, NULL) == 0);
    sem_post(&held_drop.f_ready);
    sem_wait(&held_drop.dropping);
    /* f is at the bottom of our deque, its cancel dropping the payload. */
    atomic_store(&held_drop.wait_rc, cp_future_wait(held_drop.f, NULL));
    atomic_store(&held_drop.wait_done, true);
    JCHECK(runs(&ran) == 0);
    cp_var_free(v);
    return NULL;
}

Test(cancel, a_job_is_final_before_its_cancel_drops_its_values, .timeout = 30)
{
    cr_assert_eq(sem_init(&held_drop.f_ready, 0, 0), 0);
    cr_assert_eq(sem_init(&held_drop.dropping, 0, 0), 0);
    cp_pool *pool = new_pool(1);
    cp_future *job = NULL;
    cr_assert_eq(cp_pool_submit(pool, wait_for_own_job_being_dropped, pool, &job), 0);
    cr_assert_eq(sem_wait(&held_drop.f_ready), 0);
    cr_assert_eq(cp_future_cancel(held_drop.f), 0);
    wait_ok(job);
    jobs_ok();
    cr_assert_eq(atomic_load(&held_drop.wait_rc), CP_ECANCELED, "the wait said %s",
                 cp_strerror(atomic_load(&held_drop.wait_rc)));
    cr_assert_eq(cp_future_wait(held_drop.f, NULL), CP_ECANCELED);
    cp_future_free(held_drop.f);
    free_pool(pool);
}

Test(future, freed_before_its_job_finishes_the_job_still_runs, .timeout = 30)
{
    queued q;
    queue_behind_busy(&q);
    cp_pool *pool = q.pool;
    cp_future *busy = q.busy, *f = q.f;
    cp_future_free(f); /* queued */
    cp_future_free(busy); /* running */
    gate_open(&q.bl.g);
    free_pool(pool); /* drains */
    cr_assert_eq(runs(&q.ran), 1);
    cr_assert_eq(cp__pool_jobs_out(), 0, "both went back to the cache");
}

Test(future, freed_while_its_job_runs_is_not_reused_before_the_job_ends, .timeout = 30)
{
    /* The submitting thread's next jobs come from the cache a freed future
     * goes back to: one returned too early would be reused while its job
     * runs, and the job's end would land on the new one. */
    cp_pool *pool = new_pool(2);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    cp_future_free(busy); /* running */
    enum { N = 4 };
    atomic_int ran[N];
    cp_future *f[N];
    for (int i = 0; i < N; i++) {
        atomic_init(&ran[i], 0);
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran[i], &f[i]), 0);
        cr_assert_eq(cp_future_wait(f[i], NULL), 0); /* the other worker */
    }
    gate_open(&bl.g);
    free_pool(pool); /* drains: the blocker ends */
    for (int i = 0; i < N; i++) {
        void *result = UNTOUCHED;
        cr_assert_eq(cp_future_wait(f[i], &result), 0);
        cr_assert_eq(result, &ran[i]);
        cr_assert_eq(runs(&ran[i]), 1);
        cp_future_free(f[i]);
    }
    cr_assert_eq(cp__pool_jobs_out(), 0, "the blocker went back to the cache once");
}

Test(future, outlives_its_pool, .timeout = 30)
{
    /* A future is the user's handle: after cp_pool_free it still answers. */
    cp_pool *pool = new_pool(1);
    atomic_int ran = 0;
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    cr_assert_eq(cp_future_wait(f, NULL), 0);
    free_pool(pool);
    cr_assert(cp_future_done(f));
    void *result = UNTOUCHED;
    cr_assert_eq(cp_future_wait(f, &result), 0);
    cr_assert_eq(result, &ran);
    cr_assert_eq(cp_future_wait_timeout(f, 0, NULL), 0);
    cr_assert_eq(cp_future_cancel(f), CP_EBUSY);
    cp_future_free(f);
}

struct self_wait {
    sem_t stored;
    cp_future *self;
    int rc_wait, rc_timed, rc_zero;
};

static void *wait_on_self(void *p)
{
    struct self_wait *s = p;
    sem_wait(&s->stored);
    s->rc_wait = cp_future_wait(s->self, NULL);
    s->rc_timed = cp_future_wait_timeout(s->self, 1000000000, NULL);
    s->rc_zero = cp_future_wait_timeout(s->self, 0, NULL);
    return NULL;
}

Test(future, wait_by_the_job_on_its_own_future_is_edeadlk, .timeout = 30)
{
    for (size_t i = 0; i < N_THREAD_COUNTS; i++) {
        cp_pool *pool = new_pool(thread_counts[i]);
        struct self_wait s = {.rc_wait = 1, .rc_timed = 1, .rc_zero = 1};
        cr_assert_eq(sem_init(&s.stored, 0, 0), 0);
        cr_assert_eq(cp_pool_submit(pool, wait_on_self, &s, &s.self), 0);
        sem_post(&s.stored);
        cr_assert_eq(cp_future_wait(s.self, NULL), 0);
        cr_assert_eq(s.rc_wait, CP_EDEADLK);
        cr_assert_eq(s.rc_timed, CP_EDEADLK);
        /* A poll is not a wait; either answer is honest, but not 0. */
        cr_assert(s.rc_zero == CP_EDEADLK || s.rc_zero == CP_ETIMEDOUT);
        cp_future_free(s.self);
        free_pool(pool);
    }
}

/* cp_future_wait_any */

Test(any, returns_the_lowest_index_of_the_futures_already_done, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker bl;
    atomic_int ran = 0;
    cp_future *f[3];
    f[0] = occupy_worker(pool, &bl);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[1]), 0);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[2]), 0);
    cr_assert_eq(cp_future_wait(f[2], NULL), 0);
    cr_assert_eq(cp_future_wait(f[1], NULL), 0);
    size_t index = 99;
    cr_assert_eq(cp_future_wait_any(f, 3, UINT64_MAX, &index), 0);
    cr_assert_eq(index, 1);
    index = 99;
    cr_assert_eq(cp_future_wait_any(f, 3, 0, &index), 0, "a poll finds it too");
    cr_assert_eq(index, 1);
    cr_assert_eq(cp_future_wait_any(f, 3, 0, NULL), 0, "index may be NULL");
    cr_assert_not(cp_future_done(f[0]), "the blocked one is left as it was");
    gate_open(&bl.g);
    wait_ok(f[0]);
    wait_ok(f[1]);
    wait_ok(f[2]);
    free_pool(pool);
}

Test(any, times_out_when_none_ends_and_leaves_index_untouched, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker b0, b1;
    cp_future *f[2] = {occupy_worker(pool, &b0), occupy_worker(pool, &b1)};
    size_t index = 99;
    cr_assert_eq(cp_future_wait_any(f, 2, 0, &index), CP_ETIMEDOUT);
    cr_assert_eq(cp_future_wait_any(f, 2, 1000000, &index), CP_ETIMEDOUT);
    cr_assert_eq(index, 99);
    gate_open(&b0.g);
    gate_open(&b1.g);
    wait_ok(f[0]);
    wait_ok(f[1]);
    free_pool(pool);
}

Test(any, bad_arguments_are_einval_and_wait_for_nothing, .timeout = 30)
{
    cp_pool *pool = new_pool(1), *other = new_pool(1);
    blocker bl;
    atomic_int ran = 0;
    cp_future *f[3] = {occupy_worker(pool, &bl), NULL, NULL};
    cr_assert_eq(cp_pool_submit(other, count_job, &ran, &f[2]), 0);
    size_t index = 99;
    cr_assert_eq(cp_future_wait_any(NULL, 1, UINT64_MAX, &index), CP_EINVAL);
    cr_assert_eq(cp_future_wait_any(f, 0, UINT64_MAX, &index), CP_EINVAL);
    cr_assert_eq(cp_future_wait_any(f, 2, UINT64_MAX, &index), CP_EINVAL, "a NULL future");
    f[1] = f[2];
    cr_assert_eq(cp_future_wait_any(f, 2, UINT64_MAX, &index), CP_EINVAL, "two pools");
    cr_assert_eq(index, 99);
    cr_assert_not(cp_future_done(f[0]));
    gate_open(&bl.g);
    wait_ok(f[0]);
    wait_ok(f[2]);
    free_pool(other);
    free_pool(pool);
}

/* An outside thread asleep in the wait is woken by the end of any one of
 * them: the one whose gate a job opens at a moment of its own. */
static void *open_gate(void *p)
{
    gate_open(p);
    return NULL;
}

Test(any, an_outside_thread_is_woken_by_the_end_of_any_one, .timeout = 30)
{
    enum { N = 3 };
    cp_pool *pool = new_pool(N + 1);
    for (int rep = 0; rep < 60; rep++) {
        blocker bl[N];
        cp_future *f[N];
        for (int i = 0; i < N; i++)
            f[i] = occupy_worker(pool, &bl[i]);
        int k = rep % N;
        cp_future *opener = NULL;
        cr_assert_eq(cp_pool_submit(pool, open_gate, &bl[k].g, &opener), 0);
        size_t index = 99;
        cr_assert_eq(cp_future_wait_any(f, N, UINT64_MAX, &index), 0);
        cr_assert_eq(index, (size_t)k);
        for (int i = 0; i < N; i++)
            cr_assert_eq(cp_future_done(f[i]), i == k, "only the one opened is done");
        for (int i = 0; i < N; i++)
            gate_open(&bl[i].g);
        for (int i = 0; i < N; i++)
            wait_ok(f[i]);
        wait_ok(opener);
    }
    free_pool(pool);
}

/* A job waiting for any of its children, on one worker, runs them itself
 * (nobody else can); waiting again for the rest runs the rest. */
struct any_children {
    cp_pool *pool;
    atomic_int ran[4];
    size_t order[4];
    int rc;
};

static void *wait_for_children_in_turn(void *p)
{
    struct any_children *k = p;
    cp_future *f[4];
    for (int i = 0; i < 4; i++)
        JCHECK(cp_pool_submit(k->pool, count_job, &k->ran[i], &f[i]) == 0);
    size_t n = 4;
    for (int round = 0; round < 4; round++) {
        size_t index = 99;
        k->rc |= cp_future_wait_any(f, n, UINT64_MAX, &index);
        JCHECK(index < n);
        void *result = NULL;
        JCHECK(cp_future_wait(f[index], &result) == 0);
        k->order[round] = (size_t)((atomic_int *)result - k->ran);
        cp_future_free(f[index]);
        f[index] = f[--n];
    }
    return NULL;
}

Test(any, on_a_worker_it_runs_the_jobs_it_waits_for, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    struct any_children k = {.pool = pool};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, wait_for_children_in_turn, &k, &f), 0);
    wait_ok(f);
    jobs_ok();
    cr_assert_eq(k.rc, 0);
    bool seen[4] = {false};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(runs(&k.ran[i]), 1);
        cr_assert(k.order[i] < 4 && !seen[k.order[i]], "each child reported once");
        seen[k.order[i]] = true;
    }
    free_pool(pool);
}

Test(any, a_cancelled_future_counts_as_done, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    atomic_int ran = 0;
    cp_future *busy = occupy_worker(pool, &bl);
    cp_future *f[2];
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[0]), 0);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[1]), 0);
    cr_assert_eq(cp_future_cancel(f[1]), 0);
    size_t index = 99;
    cr_assert_eq(cp_future_wait_any(f, 2, UINT64_MAX, &index), 0);
    cr_assert_eq(index, 1);
    cr_assert_eq(cp_future_wait(f[1], NULL), CP_ECANCELED);
    gate_open(&bl.g);
    wait_ok(busy);
    wait_ok(f[0]);
    cp_future_free(f[1]);
    cr_assert_eq(runs(&ran), 1);
    free_pool(pool);
}

/* A job that waits for any of a set holding its own future, the others
 * not done: CP_EDEADLK, as a wait for itself. */
struct self_any {
    sem_t stored;
    cp_future *f[2]; /* another job, held; the waiting job itself */
    int rc, rc_zero;
};

static void *wait_any_on_self(void *p)
{
    struct self_any *s = p;
    sem_wait(&s->stored);
    s->rc = cp_future_wait_any(s->f, 2, UINT64_MAX, NULL);
    s->rc_zero = cp_future_wait_any(s->f, 2, 0, NULL);
    return NULL;
}

Test(any, by_a_job_on_a_set_holding_its_own_future_is_edeadlk, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker bl;
    struct self_any s = {.rc = 1, .rc_zero = 1};
    cr_assert_eq(sem_init(&s.stored, 0, 0), 0);
    s.f[0] = occupy_worker(pool, &bl);
    cr_assert_eq(cp_pool_submit(pool, wait_any_on_self, &s, &s.f[1]), 0);
    sem_post(&s.stored);
    cr_assert_eq(cp_future_wait(s.f[1], NULL), 0);
    cr_assert_eq(s.rc, CP_EDEADLK);
    cr_assert_eq(s.rc_zero, CP_EDEADLK);
    gate_open(&bl.g);
    wait_ok(s.f[0]);
    cp_future_free(s.f[1]);
    free_pool(pool);
}

struct free_from_worker {
    cp_pool *pool;
    int rc;
};

static void *free_own_pool(void *p)
{
    struct free_from_worker *a = p;
    a->rc = cp_pool_free(a->pool);
    return NULL;
}

Test(pool, free_from_its_own_worker_is_edeadlk_and_does_nothing, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    struct free_from_worker a = {pool, 1};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, free_own_pool, &a, &f), 0);
    wait_ok(f);
    cr_assert_eq(a.rc, CP_EDEADLK);
    /* The pool still works. */
    atomic_int ran = 0;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    wait_ok(f);
    cr_assert_eq(runs(&ran), 1);
    free_pool(pool);
}

/* A worker's deque starts with room for 256 items (DEQUE_LOG_CAPACITY). */
enum { DEQUE_ROOM = 256, FLOOD = DEQUE_ROOM + 44 };

struct flood {
    cp_pool *pool;
    atomic_int ran;
    _Atomic uint64_t parks; /* the pool's park count as the flood ended */
};

/* Submits FLOOD jobs without waiting; the deque must grow at the one past
 * its room, and that allocation is made to fail. */
static void *flood_job(void *p)
{
    struct flood *fl = p;
    for (int i = 0; i < FLOOD; i++) {
        if (i == DEQUE_ROOM)
            cp__alloc_fail_nth(2); /* the job's own allocation, then the deque's */
        JCHECK(cp_pool_submit(fl->pool, count_job, &fl->ran, NULL) == 0);
    }
    cp__alloc_fail_nth(0);
    cp_pool_stats st;
    JCHECK(cp_pool_get_stats(fl->pool, &st) == 0);
    atomic_store(&fl->parks, st.parks);
    return NULL;
}

Test(pool, a_job_its_workers_deque_cannot_take_goes_to_the_shared_queue,
     .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    struct flood fl = {.pool = pool};
    atomic_init(&fl.ran, 0);
    atomic_init(&fl.parks, UINT64_MAX);
    cr_assert_eq(cp_pool_submit(pool, flood_job, &fl, NULL), 0);
    while (runs(&fl.ran) < FLOOD)
        sched_yield();
    /* Then the pool goes idle: its worker parks, which it would not do if
     * the shared queue's counts were off by the item pushed there. (A
     * hang, not a timing: the worker parks microseconds after the flood.) */
    cp_pool_stats st;
    do {
        sched_yield();
        stats_of(pool, &st);
    } while (st.parks <= atomic_load(&fl.parks));
    cr_assert_eq(st.submitted, FLOOD + 1);
    cr_assert_eq(st.completed, FLOOD + 1);
    free_pool(pool);
    cr_assert_eq(runs(&fl.ran), FLOOD);
    jobs_ok();
}

/* A worker's submits of jobs it has used before (its own free list) take
 * cp_pool_submit's fast path, also for the one its deque has no room for:
 * the deque grows from there. On one worker, whose credit and deque fill
 * in step, that submit would always be one that takes the general path to
 * count a new batch (every FLUSH_EVERY submits): the other worker first
 * runs a blocker the job submitted, which puts them out of step by one,
 * and then cannot steal. The jobs to reuse are made in batches smaller
 * than the room, so that the deque has not grown before. Every job runs
 * once, the stats add up. */
enum { REUSE_BATCH = 100, REUSED = 3 * REUSE_BATCH };
_Static_assert((int)REUSED > (int)DEQUE_ROOM && (int)REUSE_BATCH < (int)DEQUE_ROOM,
               "reuse sizes");

struct reuse_flood {
    cp_pool *pool;
    blocker bl;
    atomic_int ran, warm;
};

static void *flood_from_reused_jobs(void *p)
{
    struct reuse_flood *fl = p;
    cp_future *held = NULL, *f[REUSED];
    JCHECK(cp_pool_submit(fl->pool, blocker_job, &fl->bl, &held) == 0);
    JCHECK(sem_wait(&fl->bl.started) == 0); /* the other worker took it */
    for (int i = 0; i < REUSED; i += REUSE_BATCH) {
        for (int k = i; k < i + REUSE_BATCH; k++)
            JCHECK(cp_pool_submit(fl->pool, count_job, &fl->warm, &f[k]) == 0);
        for (int k = i; k < i + REUSE_BATCH; k++)
            JCHECK(cp_future_wait(f[k], NULL) == 0);
    }
    for (int k = 0; k < REUSED; k++)
        cp_future_free(f[k]); /* onto this thread's own list */
    for (int i = 0; i < REUSED; i++)
        JCHECK(cp_pool_submit(fl->pool, count_job, &fl->ran, NULL) == 0);
    gate_open(&fl->bl.g);
    JCHECK(cp_future_wait(held, NULL) == 0);
    cp_future_free(held);
    return NULL;
}

Test(pool, a_workers_submits_of_reused_jobs_grow_its_deque_past_its_room,
     .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    struct reuse_flood fl = {.pool = pool};
    blocker_init(&fl.bl);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, flood_from_reused_jobs, &fl, &f), 0);
    wait_ok(f);
    cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
    jobs_ok();
    cr_assert_eq(runs(&fl.ran), REUSED, "each job ran once");
    cr_assert_eq(runs(&fl.warm), REUSED);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, 2 + 2 * REUSED);
    cr_assert_eq(st.completed, st.submitted);
    free_pool(pool);
}

/* ------------------------------------------------------------------------ */
/* Shutdown                                                                  */

Test(shutdown, submit_submit_in_and_spawn_after_shutdown_are_eshutdown,
     .timeout = 30)
{
    enum cp_shutdown modes[] = {CP_SHUTDOWN_DRAIN, CP_SHUTDOWN_CANCEL};
    for (int m = 0; m < 2; m++) {
        cp_pool *pool = new_pool(2);
        cr_assert_eq(cp_pool_shutdown(pool, modes[m]), 0);
        atomic_int ran = 0;
        cp_future *f = UNTOUCHED;
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), CP_ESHUTDOWN);
        cr_assert_eq(f, UNTOUCHED);
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), CP_ESHUTDOWN);
        cp_context *c = cp_context_new();
        cr_assert_eq(cp_pool_submit_in(pool, c, count_job, &ran, &f), CP_ESHUTDOWN);
        cr_assert_eq(f, UNTOUCHED);
        cp_task t;
        cr_assert_eq(cp_spawn(pool, &t, count_job, &ran), CP_ESHUTDOWN);
        cr_assert_eq(cp_sync(&t, NULL), CP_EINVAL, "a refused spawn has nothing to sync");
        cp_pool_stats st;
        stats_of(pool, &st);
        cr_assert_eq(st.submitted, 0);
        /* The refused submits gave their jobs back. */
        cr_assert_eq(cp__pool_jobs_out(), 0);
        free_pool(pool);
        cr_assert_eq(runs(&ran), 0);
        cp_context_free(c);
    }
}

/* A running job submits after the cancel shutdown began. */
struct late_submit {
    cp_pool *pool;
    blocker bl;
    atomic_int ran;
    int rc;
};

static void *submit_after_release(void *p)
{
    struct late_submit *l = p;
    blocker_job(&l->bl);
    l->rc = cp_pool_submit(l->pool, count_job, &l->ran, NULL);
    return NULL;
}

Test(shutdown, a_running_jobs_submit_after_a_cancel_is_eshutdown, .timeout = 30)
{
    struct late_submit l = {.pool = new_pool(2), .rc = -1};
    blocker_init(&l.bl);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(l.pool, submit_after_release, &l, &f), 0);
    cr_assert_eq(sem_wait(&l.bl.started), 0);
    cr_assert_eq(cp_pool_shutdown(l.pool, CP_SHUTDOWN_CANCEL), 0);
    gate_open(&l.bl.g);
    wait_ok(f); /* a running job finishes */
    cr_assert_eq(l.rc, CP_ESHUTDOWN, "got %s", cp_strerror(l.rc));
    free_pool(l.pool);
    cr_assert_eq(runs(&l.ran), 0);
}

Test(shutdown, a_second_shutdown_is_eshutdown_but_a_cancel_after_a_drain, .timeout = 30)
{
    enum cp_shutdown modes[] = {CP_SHUTDOWN_DRAIN, CP_SHUTDOWN_CANCEL};
    for (int first = 0; first < 2; first++)
        for (int second = 0; second < 2; second++) {
            cp_pool *pool = new_pool(1);
            cr_assert_eq(cp_pool_shutdown(pool, modes[first]), 0);
            bool escalates = first == 0 && second == 1;
            cr_assert_eq(cp_pool_shutdown(pool, modes[second]), escalates ? 0 : CP_ESHUTDOWN);
            cr_assert_eq(cp_pool_shutdown(pool, modes[second]), CP_ESHUTDOWN);
            free_pool(pool);
        }
}

/* A job that queues two children on its own worker's deque, then holds. */
struct queue_then_hold {
    cp_pool *pool;
    blocker bl;
    atomic_int ran;
    cp_future *child[2];
    int submit_rc[2], wait_rc[2];
};

static void *queue_then_hold_job(void *p)
{
    struct queue_then_hold *q = p;
    for (int i = 0; i < 2; i++)
        q->submit_rc[i] = cp_pool_submit(q->pool, count_job, &q->ran, &q->child[i]);
    blocker_job(&q->bl);
    for (int i = 0; i < 2; i++) {
        q->wait_rc[i] = q->submit_rc[i] == 0 ? cp_future_wait(q->child[i], NULL) : 1;
        cp_future_free(q->child[i]);
    }
    return NULL;
}

/* Every future in f is final now and reports CP_ECANCELED. */
static void all_cancelled_now(cp_future **f, int n)
{
    for (int i = 0; i < n; i++) {
        cr_assert(cp_future_done(f[i]), "future %d not final", i);
        cr_assert_eq(cp_future_wait(f[i], NULL), CP_ECANCELED, "future %d", i);
    }
}

Test(shutdown, cancel_cancels_the_queued_jobs_before_it_returns, .timeout = 30)
{
    /* The only worker holds in a job that queued two children on its
     * deque; outside, jobs with and without futures and a task wait on the
     * injection queue. Their waits end as the shutdown returns, not when
     * the held job lets the worker go (as Python's cancel_futures). */
    for (int escalate = 0; escalate < 2; escalate++) {
        cp_pool *pool = new_pool(1);
        struct queue_then_hold q = {.pool = pool, .ran = 0};
        blocker_init(&q.bl);
        cp_future *held = NULL;
        cr_assert_eq(cp_pool_submit(pool, queue_then_hold_job, &q, &held), 0);
        cr_assert_eq(sem_wait(&q.bl.started), 0);
        cr_assert_eq(q.submit_rc[0], 0);
        cr_assert_eq(q.submit_rc[1], 0);
        atomic_int ran = 0;
        cp_future *f[3];
        for (int i = 0; i < 3; i++)
            cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f[i]), 0);
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), 0);
        cp_task t;
        cr_assert_eq(cp_spawn(pool, &t, count_job, &ran), 0);
        /* Second round: a drain first, then the cancel. */
        if (escalate)
            cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_DRAIN), 0);
        cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_CANCEL), 0);
        all_cancelled_now(f, 3);
        all_cancelled_now(q.child, 2);
        cr_assert_eq(cp_sync(&t, NULL), CP_ECANCELED);
        cp_pool_stats st;
        stats_of(pool, &st);
        cr_assert_eq(st.cancelled, 7);
        gate_open(&q.bl.g);
        wait_ok(held);
        cr_assert_eq(q.wait_rc[0], CP_ECANCELED);
        cr_assert_eq(q.wait_rc[1], CP_ECANCELED);
        for (int i = 0; i < 3; i++)
            cp_future_free(f[i]);
        stats_of(pool, &st);
        cr_assert_eq(st.cancelled, 7);
        cr_assert_eq(st.completed, 1);
        free_pool(pool);
        cr_assert_eq(runs(&ran), 0);
        cr_assert_eq(runs(&q.ran), 0);
    }
}

Test(shutdown, unknown_mode_is_einval_and_changes_nothing, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    cr_assert_eq(cp_pool_shutdown(pool, (enum cp_shutdown)7), CP_EINVAL);
    atomic_int ran = 0;
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    wait_ok(f);
    free_pool(pool);
}

enum { QUEUED = 200 };

/* QUEUED jobs, job i counting its runs in ran[i], queued behind the one
 * worker while a blocker holds it; then cp_pool_shutdown(how), and the
 * held job let go and waited for. */
static cp_pool *queue_then_shut_down(enum cp_shutdown how, atomic_int *ran,
                                     cp_future **f)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran[i], &f[i]), 0);
    cr_assert_eq(cp_pool_shutdown(pool, how), 0);
    gate_open(&bl.g);
    cr_assert_eq(wait_ok(busy), &bl, "the running job finishes");
    return pool;
}

Test(shutdown, drain_runs_every_queued_job, .timeout = 60)
{
    static atomic_int ran[QUEUED];
    cp_future *f[QUEUED];
    cp_pool *pool = queue_then_shut_down(CP_SHUTDOWN_DRAIN, ran, f);
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(wait_ok(f[i]), &ran[i]);
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(runs(&ran[i]), 1);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, QUEUED + 1);
    cr_assert_eq(st.completed, QUEUED + 1);
    cr_assert_eq(st.cancelled, 0);
    free_pool(pool);
}

Test(shutdown, drain_by_free_runs_every_queued_fire_and_forget_job, .timeout = 60)
{
    cp_pool *pool = new_pool(2);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    cp_future_free(busy);
    atomic_int ran = 0;
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), 0);
    gate_open(&bl.g);
    free_pool(pool);
    cr_assert_eq(runs(&ran), QUEUED);
}

Test(shutdown, cancel_reports_each_job_cancelled_or_run_exactly_once, .timeout = 60)
{
    static atomic_int ran[QUEUED];
    cp_future *f[QUEUED];
    cp_pool *pool = queue_then_shut_down(CP_SHUTDOWN_CANCEL, ran, f);
    int cancelled = 0, completed = 0;
    for (int i = 0; i < QUEUED; i++) {
        int rc = cp_future_wait(f[i], NULL);
        cr_assert(rc == 0 || rc == CP_ECANCELED, "job %d: %s", i, cp_strerror(rc));
        if (rc == 0) {
            cr_assert_eq(runs(&ran[i]), 1, "job %d reported run", i);
            completed++;
        } else {
            cr_assert_eq(runs(&ran[i]), 0, "job %d reported cancelled but ran", i);
            cancelled++;
        }
        cp_future_free(f[i]);
    }
    /* The only worker was held: none of them could start before shutdown. */
    cr_assert_eq(cancelled, QUEUED);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, QUEUED + 1);
    cr_assert_eq(st.cancelled, (uint64_t)cancelled);
    cr_assert_eq(st.completed, (uint64_t)completed + 1);
    free_pool(pool);
    for (int i = 0; i < QUEUED; i++)
        cr_assert_eq(runs(&ran[i]), 0);
}

/* A value whose free_value waits for a job (its wait's outcome kept). */
struct waits_when_freed {
    cp_future *job;
    int frees, wait_rc;
};

static void free_and_wait(void *p)
{
    struct waits_when_freed *v = p;
    v->frees++;
    v->wait_rc = cp_future_wait(v->job, NULL);
}

/* cp_var_set(args[0], args[1]) in the current context; returns its result. */
static void *set_arg_value(void *p)
{
    cp_var *var = ((void **)p)[0];
    return (void *)(intptr_t)cp_var_set(var, ((void **)p)[1], NULL);
}

Test(shutdown, cancel_finishes_the_queued_jobs_before_it_drops_their_contexts,
     .timeout = 30)
{
    /* X's context holds the last reference to a value whose free_value
     * waits for Y, queued too. The cancel makes both final before it drops
     * either's payload: the wait in free_value ends (on the thread that
     * shuts down, no worker free to help), whichever was queued first. */
    for (int x_first = 0; x_first < 2; x_first++) {
        cp_pool *pool = new_pool(1);
        blocker bl;
        cp_future *busy = occupy_worker(pool, &bl);
        cp_var *var = cp_var_new("waits", free_and_wait);
        struct waits_when_freed value = {NULL, 0, 1};
        cp_context *c = cp_context_new();
        void *args[2] = {var, &value};
        void *set = UNTOUCHED;
        cr_assert_eq(cp_context_run(c, set_arg_value, args, &set), 0);
        cr_assert_null(set);
        atomic_int ran = 0;
        cp_future *x = NULL, *y = NULL;
        if (!x_first)
            cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &y), 0);
        cr_assert_eq(cp_pool_submit_in(pool, c, count_job, &ran, &x), 0);
        if (x_first)
            cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &y), 0);
        value.job = y;
        cp_context_free(c); /* the job holds the last reference */
        cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_CANCEL), 0);
        cr_assert_eq(value.frees, 1);
        cr_assert_eq(value.wait_rc, CP_ECANCELED);
        all_cancelled_now((cp_future *[]){x, y}, 2);
        gate_open(&bl.g);
        wait_ok(busy);
        cp_future_free(x);
        cp_future_free(y);
        free_pool(pool);
        cp_var_free(var);
        cr_assert_eq(runs(&ran), 0);
    }
}

/* The order in which a cancel shutdown let go of the values below. */
static int dropped[6], ndropped;

static void record_drop(void *p)
{
    dropped[ndropped++] = *(int *)p;
}

Test(shutdown, cancel_lets_go_of_the_queued_jobs_contexts_in_queue_order,
     .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    cp_var *var = cp_var_new("index", record_drop);
    static int index[6] = {0, 1, 2, 3, 4, 5};
    atomic_int ran = 0;
    for (int i = 0; i < 6; i++) {
        cp_context *c = cp_context_new();
        void *args[2] = {var, &index[i]};
        void *set = UNTOUCHED;
        cr_assert_eq(cp_context_run(c, set_arg_value, args, &set), 0);
        cr_assert_null(set);
        cr_assert_eq(cp_pool_submit_in(pool, c, count_job, &ran, NULL), 0);
        cp_context_free(c); /* the job holds the last reference */
    }
    cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_CANCEL), 0);
    cr_assert_eq(ndropped, 6);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(dropped[i], i, "dropped %d %d %d %d %d %d", dropped[0], dropped[1],
                     dropped[2], dropped[3], dropped[4], dropped[5]);
    gate_open(&bl.g);
    wait_ok(busy);
    free_pool(pool);
    cp_var_free(var);
    cr_assert_eq(runs(&ran), 0);
}

Test(shutdown, cancel_cancels_a_task_spawned_from_outside_not_yet_started,
     .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    atomic_int ran = 0;
    cp_task t;
    cr_assert_eq(cp_spawn(pool, &t, count_job, &ran), 0);
    cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_CANCEL), 0);
    gate_open(&bl.g);
    void *result = UNTOUCHED;
    cr_assert_eq(cp_sync(&t, &result), CP_ECANCELED);
    cr_assert_eq(result, UNTOUCHED);
    wait_ok(busy);
    free_pool(pool);
    cr_assert_eq(runs(&ran), 0);
}

struct spawn_then_hold {
    cp_pool *pool;
    blocker bl;
    atomic_int ran;
    int spawn_rc, sync_rc;
};

static void *spawn_then_hold_job(void *p)
{
    struct spawn_then_hold *s = p;
    cp_task t;
    s->spawn_rc = cp_spawn(s->pool, &t, count_job, &s->ran);
    blocker_job(&s->bl);
    s->sync_rc = s->spawn_rc == 0 ? cp_sync(&t, NULL) : 1;
    return NULL;
}

/* On pool (1 worker), run job with s while the main thread shuts the pool
 * down with how as soon as the job holds. Returns the job's future; the
 * caller releases the job with gate_open(&s->bl.g) and waits for it. */
static cp_future *hold_job_across_shutdown(cp_pool *pool, cp_job_fn job,
                                           struct spawn_then_hold *s,
                                           enum cp_shutdown how)
{
    *s = (struct spawn_then_hold){.pool = pool, .ran = 0, .spawn_rc = 1, .sync_rc = 1};
    blocker_init(&s->bl);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, job, s, &f), 0);
    cr_assert_eq(sem_wait(&s->bl.started), 0);
    cr_assert_eq(cp_pool_shutdown(pool, how), 0);
    return f;
}

/* Let the held job go: its task ran once, spawned and synced without error;
 * then free the pool. */
static void release_held_job(cp_pool *pool, cp_future *f, struct spawn_then_hold *s)
{
    gate_open(&s->bl.g);
    wait_ok(f);
    cr_assert_eq(s->spawn_rc, 0);
    cr_assert_eq(s->sync_rc, 0, "cp_sync returned %d", s->sync_rc);
    cr_assert_eq(runs(&s->ran), 1);
    free_pool(pool);
}

Test(shutdown, cancel_lets_a_running_job_finish_its_own_tasks, .timeout = 30)
{
    /* The only worker spawned the task and is held when shutdown(CANCEL)
     * comes. A worker's task belongs to the running job that spawned it, and
     * a cancel lets running jobs finish (ctxpool.h, cp_sync): it runs once. */
    cp_pool *pool = new_pool(1);
    struct spawn_then_hold s;
    cp_future *f = hold_job_across_shutdown(pool, spawn_then_hold_job, &s,
                                            CP_SHUTDOWN_CANCEL);
    release_held_job(pool, f, &s);
}

static void *spawn_during_drain(void *p)
{
    struct spawn_then_hold *s = p;
    blocker_job(&s->bl);
    cp_task t;
    s->spawn_rc = cp_spawn(s->pool, &t, count_job, &s->ran);
    s->sync_rc = s->spawn_rc == 0 ? cp_sync(&t, NULL) : 1;
    return NULL;
}

Test(shutdown, a_worker_may_still_spawn_while_the_pool_drains, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    struct spawn_then_hold s;
    cp_future *f = hold_job_across_shutdown(pool, spawn_during_drain, &s,
                                            CP_SHUTDOWN_DRAIN);
    cp_task t;
    cr_assert_eq(cp_spawn(pool, &t, count_job, &s.ran), CP_ESHUTDOWN,
                 "an outside thread may not");
    release_held_job(pool, f, &s);
}

enum { CHILDREN = 10 };

struct credit {
    cp_pool *pool;
    sem_t child_ran, parent_held;
    gate release;
};

static void *post_child(void *p)
{
    sem_post(&((struct credit *)p)->child_ran);
    return NULL;
}

/* Submits children that the other worker must run (this one does not help
 * while it waits on a semaphore), then holds its worker until released. */
static void *parent_of_stolen_children(void *p)
{
    struct credit *c = p;
    for (int i = 0; i < CHILDREN; i++)
        JCHECK(cp_pool_submit(c->pool, post_child, c, NULL) == 0);
    for (int i = 0; i < CHILDREN; i++)
        sem_wait(&c->child_ran);
    sem_post(&c->parent_held);
    gate_pass(&c->release);
    return NULL;
}

/* Submit parent_of_stolen_children to pool (two workers) and wait until
 * the other worker has run its children and it holds its worker. */
static void hold_a_parent_of_stolen_children(cp_pool *pool, struct credit *c)
{
    *c = (struct credit){.pool = pool, .release = GATE_INITIALIZER};
    cr_assert_eq(sem_init(&c->child_ran, 0, 0), 0);
    cr_assert_eq(sem_init(&c->parent_held, 0, 0), 0);
    cr_assert_eq(cp_pool_submit(pool, parent_of_stolen_children, c, NULL), 0);
    cr_assert_eq(sem_wait(&c->parent_held), 0);
}

/* Wait (bounded, no time measured) until some worker has gone to sleep
 * since stats were `before`. Only aims the test at an interleaving; the test
 * is valid whichever way it goes. */
static void let_a_worker_park(cp_pool *pool, uint64_t before)
{
    cp_pool_stats st;
    stats_of(pool, &st);
    for (int spins = 0; spins < 200000 && st.parks == before; spins++) {
        sched_yield();
        stats_of(pool, &st);
    }
}

static void *free_in_thread(void *p)
{
    return (void *)(intptr_t)cp_pool_free(p);
}

Test(shutdown, free_returns_after_a_job_whose_children_another_worker_ran,
     .timeout = 120)
{
    /* Worker A runs the children a job on worker B submitted, while the job
     * still runs; cp_pool_free is called before the job ends. Every worker
     * must leave, however the two workers' accounting of those jobs
     * interleaves with the free: a hang here is a worker asleep forever. */
    for (int round = 0; round < 10; round++) {
        cp_pool *pool = new_pool(2);
        struct credit c;
        hold_a_parent_of_stolen_children(pool, &c);
        cp_pool_stats st;
        stats_of(pool, &st);
        let_a_worker_park(pool, st.parks); /* A, after the children */
        stats_of(pool, &st);
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, free_in_thread, pool), 0);
        let_a_worker_park(pool, st.parks); /* A again, after free's wake-up */
        gate_open(&c.release);
        /* A hang detector, not a timing assertion: 30 s for a join that
         * takes microseconds. */
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 30;
        void *rc = NULL;
        int joined = pthread_timedjoin_np(th, &rc, &deadline);
        cr_assert_eq(joined, 0, "round %d: cp_pool_free did not return: a worker "
                     "sleeps although the pool has drained", round);
        cr_assert_eq((intptr_t)rc, 0);
        jobs_ok();
    }
}

Test(stats, stolen_counts_the_jobs_taken_from_another_workers_deque, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    struct credit c;
    hold_a_parent_of_stolen_children(pool, &c);
    /* The children were on the parent's deque, and the parent's worker ran
     * none of them: the other worker stole each. */
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_geq(st.stolen, 1);
    cr_assert_leq(st.stolen, CHILDREN);
    gate_open(&c.release);
    free_pool(pool);
    jobs_ok();
}

static void *spawn_and_sync(void *p)
{
    cp_pool *pool = p;
    atomic_int ran = 0;
    cp_task t;
    JCHECK(cp_spawn(pool, &t, count_job, &ran) == 0);
    JCHECK(cp_sync(&t, NULL) == 0);
    return NULL;
}

Test(stats, one_worker_steals_nothing, .timeout = 30)
{
    /* Jobs and tasks from outside come through the shared queue, which is
     * not stealing, and there is no other deque to steal from. */
    cp_pool *pool = new_pool(1);
    atomic_int ran = 0;
    for (int i = 0; i < 8; i++) {
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
        wait_ok(f);
        spawn_and_sync(pool);
    }
    jobs_ok();
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.completed, 16);
    cr_assert_eq(st.stolen, 0);
    free_pool(pool);
}

/* A tree of jobs submitted without futures: the root submits children and
 * spawns tasks, each child spawns tasks; every job counts itself in ran
 * (relaxed: the stats' reads are what must make the counts visible). */
enum { TREE_CHILDREN = 4, TREE_SPAWNS = 20000 };

struct tree {
    cp_pool *pool;
    atomic_int ran;
};

static void *noop(void *p)
{
    return p;
}

static void spawn_many(cp_pool *pool)
{
    for (int i = 0; i < TREE_SPAWNS; i++) {
        cp_task t;
        JCHECK(cp_spawn(pool, &t, noop, NULL) == 0);
        JCHECK(cp_sync(&t, NULL) == 0);
    }
}

static void *tree_child(void *p)
{
    struct tree *tr = p;
    spawn_many(tr->pool);
    atomic_fetch_add_explicit(&tr->ran, 1, memory_order_relaxed);
    return NULL;
}

static void *tree_root(void *p)
{
    struct tree *tr = p;
    for (int i = 0; i < TREE_CHILDREN; i++)
        JCHECK(cp_pool_submit(tr->pool, tree_child, tr, NULL) == 0);
    spawn_many(tr->pool);
    atomic_fetch_add_explicit(&tr->ran, 1, memory_order_relaxed);
    return NULL;
}

Test(stats, submitted_equals_ended_only_once_a_job_tree_has_ended, .timeout = 60)
{
    /* The documented way to wait for jobs without futures: poll until
     * submitted == completed + cancelled. The counts of ended work are read
     * before those of submitted work, so a spawn that starts and ends
     * between two reads cannot make the two sides meet early (they did,
     * thousands of times a second, while the reads went the other way). */
    enum { ROUNDS = 10 };
    cp_pool *pool = new_pool(2);
    struct tree trees[ROUNDS];
    int seen[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        trees[round] = (struct tree){pool, 0};
        cr_assert_eq(cp_pool_submit(pool, tree_root, &trees[round], NULL), 0);
        cp_pool_stats st;
        do
            stats_of(pool, &st);
        while (st.submitted != st.completed + st.cancelled);
        seen[round] = atomic_load_explicit(&trees[round].ran, memory_order_relaxed);
    }
    /* Checked once the pool has drained: a tree found running must not
     * outlive the test. */
    free_pool(pool);
    jobs_ok();
    for (int round = 0; round < ROUNDS; round++)
        cr_assert_eq(seen[round], TREE_CHILDREN + 1,
                     "round %d: the counts met with %d of %d jobs ended", round,
                     seen[round], TREE_CHILDREN + 1);
}

/* ------------------------------------------------------------------------ */
/* Waiting for an idle pool                                                  */

Test(idle, wait_returns_once_a_tree_of_fire_and_forget_jobs_has_ended, .timeout = 60)
{
    /* Each round's tree (a root, its fire-and-forget children, 20,000
     * frame tasks each) takes milliseconds after its submit returns; the
     * wait must come back only once all of it has ended, the root's future
     * final and every job's count visible (relaxed: the wait orders it). */
    enum { ROUNDS = 10 };
    cp_pool *pool = new_pool(2);
    struct tree trees[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        trees[round] = (struct tree){pool, 0};
        cp_future *root = NULL;
        cr_assert_eq(cp_pool_submit(pool, tree_root, &trees[round], &root), 0);
        cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
        int ran = atomic_load_explicit(&trees[round].ran, memory_order_relaxed);
        bool root_done = cp_future_done(root);
        cp_pool_stats st;
        stats_of(pool, &st);
        cp_future_free(root);
        cr_assert_eq(ran, TREE_CHILDREN + 1, "round %d: the wait returned with %d of %d jobs ended",
                     round, ran, TREE_CHILDREN + 1);
        cr_assert(root_done, "round %d: the wait returned before the root's future was final",
                  round);
        cr_assert_eq(st.submitted, st.completed + st.cancelled);
    }
    free_pool(pool);
    jobs_ok();
}

struct idle_opener {
    cp_pool *pool;
    gate *g;
};

/* Opens the gate once a wait of its own for the idle pool has timed out:
 * the job behind the gate was still held when the test's wait began. */
static void *open_after_a_timed_out_wait(void *p)
{
    struct idle_opener *o = p;
    JCHECK(cp_pool_wait_idle(o->pool, 1000000) == CP_ETIMEDOUT);
    gate_open(o->g);
    return NULL;
}

Test(idle, wait_times_out_while_a_job_is_held_then_returns_once_it_ends, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker b;
    cp_future *held = occupy_worker(pool, &b);
    atomic_int ran = 0;
    for (int i = 0; i < 2; i++)
        cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), 0);
    cr_assert_eq(cp_pool_wait_idle(pool, 0), CP_ETIMEDOUT);
    uint64_t start = monotonic_ns();
    cr_assert_eq(cp_pool_wait_idle(pool, 2000000), CP_ETIMEDOUT);
    uint64_t waited = monotonic_ns() - start;
    cr_assert_geq(waited, 2000000, "a 2 ms wait for idle returned after %" PRIu64 " ns",
                  waited);
    cr_assert_eq(runs(&ran), 0);
    /* Two waiters at once: the opener's times out, then it opens the gate
     * while this thread (most likely asleep by then) waits without end. */
    struct idle_opener o = {pool, &b.g};
    pthread_t opener;
    cr_assert_eq(pthread_create(&opener, NULL, open_after_a_timed_out_wait, &o), 0);
    cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
    cr_assert_eq(runs(&ran), 2);
    cr_assert(cp_future_done(held));
    cr_assert_eq(pthread_join(opener, NULL), 0);
    jobs_ok();
    cr_assert_eq(wait_ok(held), &b);
    /* Idle again: a poll says so at once, and the pool still takes jobs. */
    cr_assert_eq(cp_pool_wait_idle(pool, 0), 0);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, NULL), 0);
    cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
    cr_assert_eq(runs(&ran), 3);
    free_pool(pool);
}

struct idle_pools {
    cp_pool *own, *other;
    atomic_int ran;
};

/* From a job of own: a wait for own is refused, one for other works. */
static void *wait_idle_from_a_worker(void *p)
{
    struct idle_pools *ip = p;
    JCHECK(cp_pool_wait_idle(ip->own, UINT64_MAX) == CP_EDEADLK);
    JCHECK(cp_pool_wait_idle(ip->own, 0) == CP_EDEADLK);
    JCHECK(cp_pool_submit(ip->other, count_job, &ip->ran, NULL) == 0);
    JCHECK(cp_pool_wait_idle(ip->other, UINT64_MAX) == 0);
    JCHECK(runs(&ip->ran) == 1);
    return p;
}

Test(idle, wait_from_the_pools_own_worker_is_edeadlk_from_another_pools_works,
     .timeout = 30)
{
    struct idle_pools ip = {new_pool(1), new_pool(1), 0};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(ip.own, wait_idle_from_a_worker, &ip, &f), 0);
    cr_assert_eq(wait_ok(f), &ip);
    jobs_ok();
    free_pool(ip.own);
    free_pool(ip.other);
}

Test(idle, wait_on_a_new_pool_returns_at_once_and_on_null_is_einval, .timeout = 30)
{
    cr_assert_eq(cp_pool_wait_idle(NULL, 0), CP_EINVAL);
    cr_assert_eq(cp_pool_wait_idle(NULL, UINT64_MAX), CP_EINVAL);
    cp_pool *pool = new_pool(2);
    cr_assert_eq(cp_pool_wait_idle(pool, 0), 0);
    cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
    free_pool(pool);
}

/* A job held on the only worker; behind it a job with a future and a task
 * spawned from outside; then a shutdown `how`. The wait for idle must wait
 * for the held job and what the shutdown leaves to run, and then find
 * everything final: run by a drain, cancelled by a cancel. */
static void wait_idle_across_a_shutdown(enum cp_shutdown how)
{
    cp_pool *pool = new_pool(1);
    blocker b;
    cp_future *held = occupy_worker(pool, &b);
    atomic_int ran = 0;
    cp_future *behind = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &behind), 0);
    cp_task t;
    cr_assert_eq(cp_spawn(pool, &t, count_job, &ran), 0);
    cr_assert_eq(cp_pool_shutdown(pool, how), 0);
    cr_assert_eq(cp_pool_wait_idle(pool, 0), CP_ETIMEDOUT);
    gate_open(&b.g);
    cr_assert_eq(cp_pool_wait_idle(pool, UINT64_MAX), 0);
    bool drained = how == CP_SHUTDOWN_DRAIN;
    cr_assert_eq(runs(&ran), drained ? 2 : 0);
    cr_assert(cp_future_done(held));
    cr_assert(cp_future_done(behind));
    cr_assert_eq(cp_future_wait(behind, NULL), drained ? 0 : CP_ECANCELED);
    cp_future_free(behind);
    cr_assert_eq(cp_sync(&t, NULL), drained ? 0 : CP_ECANCELED);
    cr_assert_eq(wait_ok(held), &b);
    free_pool(pool);
}

Test(idle, wait_after_a_drain_returns_once_the_queued_jobs_and_task_have_run,
     .timeout = 30)
{
    wait_idle_across_a_shutdown(CP_SHUTDOWN_DRAIN);
}

Test(idle, wait_after_a_cancel_shutdown_returns_once_the_running_job_ends, .timeout = 30)
{
    wait_idle_across_a_shutdown(CP_SHUTDOWN_CANCEL);
}

struct drain_sibling {
    struct credit c;
    gate shut;
};

/* Submits a child that the other worker must run, waits for it; then,
 * once the test has shut the pool down, one more. (One child: the count
 * of this worker's additions the other's finish could hide is exact.) */
static void *parent_through_a_drain(void *p)
{
    struct drain_sibling *d = p;
    struct credit *c = &d->c;
    JCHECK(cp_pool_submit(c->pool, post_child, c, NULL) == 0);
    sem_wait(&c->child_ran);
    sem_post(&c->parent_held);
    gate_pass(&d->shut);
    JCHECK(cp_pool_submit(c->pool, post_child, c, NULL) == 0);
    sem_wait(&c->child_ran);
    return NULL;
}

Test(shutdown, a_drain_keeps_the_workers_while_a_running_job_may_add_work,
     .timeout = 30)
{
    /* Worker A runs the child a job on worker B submitted and goes to
     * sleep; then the pool drains. The job still runs, so the pool is not
     * finished: A must not leave, for the next child the job submits (and
     * waits for without helping) has only A to run it. A hang here is a
     * worker that left a draining pool early. */
    cp_pool *pool = new_pool(2);
    struct drain_sibling d = {.c = {.pool = pool}, .shut = GATE_INITIALIZER};
    cr_assert_eq(sem_init(&d.c.child_ran, 0, 0), 0);
    cr_assert_eq(sem_init(&d.c.parent_held, 0, 0), 0);
    cr_assert_eq(cp_pool_submit(pool, parent_through_a_drain, &d, NULL), 0);
    cr_assert_eq(sem_wait(&d.c.parent_held), 0);
    cp_pool_stats st;
    stats_of(pool, &st);
    let_a_worker_park(pool, st.parks); /* A, after the child */
    stats_of(pool, &st);
    cr_assert_eq(cp_pool_shutdown(pool, CP_SHUTDOWN_DRAIN), 0);
    let_a_worker_park(pool, st.parks); /* A again, after the shutdown's wake */
    gate_open(&d.shut);
    free_pool(pool);
    jobs_ok();
}

struct queued_late {
    cp_pool *pool;
    cp_future *f;
    sem_t started, b_ran;
    gate go;
};

/* Within 10 s (a hang detector, not a timing): whether s could be taken. */
static bool sem_wait_10s(sem_t *s)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    int rc;
    while ((rc = sem_timedwait(s, &deadline)) != 0 && errno == EINTR)
        ;
    return rc == 0;
}

static void *queued_late_b(void *p)
{
    struct queued_late *q = p;
    sem_post(&q->b_ran); /* for F */
    sem_post(&q->b_ran); /* for Z */
    return NULL;
}

/* F: once let go, queues B on its own deque and waits for it without
 * helping. */
static void *queued_late_f(void *p)
{
    struct queued_late *q = p;
    sem_post(&q->started);
    gate_pass(&q->go);
    JCHECK(cp_pool_submit(q->pool, queued_late_b, q, NULL) == 0);
    JCHECK(sem_wait_10s(&q->b_ran));
    return NULL;
}

/* Z: waits for B without helping. */
static void *queued_late_z(void *p)
{
    struct queued_late *q = p;
    sem_post(&q->started);
    JCHECK(sem_wait_10s(&q->b_ran));
    return NULL;
}

/* G: a helping wait for F, with nothing to help with until B. */
static void *queued_late_g(void *p)
{
    struct queued_late *q = p;
    JCHECK(cp_future_wait(q->f, NULL) == 0);
    return NULL;
}

Test(future, a_worker_asleep_in_a_wait_runs_work_queued_after_it_fell_asleep,
     .timeout = 60)
{
    /* Three workers: F's and Z's are blocked, G's waits for F, finds
     * nothing to run and sleeps. Then F queues B, which F and Z wait for:
     * only G's worker is free to run it, so its sleep must end for B as
     * well as for F's end. Before it did, B never ran, and F and Z gave up
     * after 10 s. */
    cp_pool *pool = new_pool(3);
    struct queued_late q = {.pool = pool, .go = GATE_INITIALIZER};
    cr_assert_eq(sem_init(&q.started, 0, 0), 0);
    cr_assert_eq(sem_init(&q.b_ran, 0, 0), 0);
    cp_future *z = NULL, *g = NULL;
    cr_assert_eq(cp_pool_submit(pool, queued_late_f, &q, &q.f), 0);
    cr_assert_eq(sem_wait(&q.started), 0);
    cr_assert_eq(cp_pool_submit(pool, queued_late_z, &q, &z), 0);
    cr_assert_eq(sem_wait(&q.started), 0);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(cp_pool_submit(pool, queued_late_g, &q, &g), 0);
    let_a_worker_park(pool, st.parks); /* G's: the only one not blocked */
    gate_open(&q.go);
    cr_assert_eq(cp_future_wait(g, NULL), 0);
    cr_assert_eq(cp_future_wait(z, NULL), 0);
    cr_assert_eq(cp_future_wait(q.f, NULL), 0);
    jobs_ok();
    cp_future_free(g);
    cp_future_free(z);
    cp_future_free(q.f);
    free_pool(pool);
    sem_destroy(&q.started);
    sem_destroy(&q.b_ran);
}

/* ------------------------------------------------------------------------ */
/* Nothing leaks from one job into the next                                  */

struct leaker {
    cp_var *var;
    int value;
    cp_pool *pool;
};

static void *set_and_leave(void *p)
{
    struct leaker *l = p;
    JCHECK(cp_var_set(l->var, &l->value, NULL) == 0);
    JCHECK(get_here(l->var) == &l->value);
    JCHECK(atomic_load(&frees) == 0);
    return NULL;
}

/* As set_and_leave, and copies of the job's context freed in the job. */
static void *set_copy_and_leave(void *p)
{
    set_and_leave(p);
    for (int i = 0; i < 3; i++)
        cp_context_free(cp_copy_context());
    return NULL;
}

/* As set_and_leave, and jobs that captured the value, which the job waits
 * for and so (on one worker) runs itself: they give their references on
 * its context to the job's thread's capture batch, which the job's end
 * must drop with the rest. */
static void *set_wait_children_and_leave(void *p)
{
    struct leaker *l = p;
    set_and_leave(p);
    struct read_var rv = {l->var};
    for (int i = 0; i < 3; i++) {
        cp_future *f = NULL;
        JCHECK(cp_pool_submit(l->pool, read_var_job, &rv, &f) == 0);
        void *seen = NULL;
        JCHECK(cp_future_wait(f, &seen) == 0 && seen == &l->value);
        cp_future_free(f);
    }
    JCHECK(atomic_load(&frees) == 0);
    return NULL;
}

static void *context_len_here(void *p)
{
    (void)p;
    cp_context *c = cp_copy_context();
    size_t n = c ? cp_context_len(c) : 99;
    cp_context_free(c);
    return (void *)n;
}

static void job_that_never_resets_leaks_nothing(cp_job_fn job)
{
    cp_pool *pool = new_pool(1);
    struct leaker l = {cp_var_new("leak", count_free), 0, pool};
    for (int round = 1; round <= 3; round++) {
        atomic_store(&frees, 0);
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, job, &l, &f), 0);
        wait_ok(f);
        cr_assert_eq(atomic_load(&frees), 1, "round %d: the job's value was "
                     "freed %d times after it ended", round, atomic_load(&frees));
        struct read_var rv = {l.var};
        cr_assert_eq(cp_pool_submit(pool, read_var_job, &rv, &f), 0);
        cr_assert_eq(wait_ok(f), UNTOUCHED, "the next job sees the value");
        cr_assert_eq(cp_pool_submit(pool, context_len_here, NULL, &f), 0);
        cr_assert_eq((size_t)wait_ok(f), 0);
        jobs_ok();
    }
    free_pool(pool);
    cr_assert_eq(atomic_load(&frees), 1);
    cp_var_free(l.var);
}

Test(base, a_job_that_never_resets_leaks_nothing_into_the_next_job, .timeout = 30)
{
    job_that_never_resets_leaks_nothing(set_and_leave);
}

Test(base, a_job_that_frees_copies_of_its_context_keeps_nothing_alive, .timeout = 30)
{
    job_that_never_resets_leaks_nothing(set_copy_and_leave);
}

Test(base, a_job_that_ran_the_jobs_it_waited_for_keeps_nothing_alive, .timeout = 30)
{
    job_that_never_resets_leaks_nothing(set_wait_children_and_leave);
}

/* The end of the frame of a job its waiter ran may run a free_value that
 * changes the waiter's context, and copies it (which fills the capture
 * batch on the new map): the job's reference on the waiter's old map must
 * be dropped then, not given to the batch (helper-61: a leak of the old
 * map, or with the copy a use after free of it). */
static cp_var *held_var, *handed_var, *changed_var;
static int held_value, handed_value, changed_value;

static void change_and_copy(void *p)
{
    JCHECK(p == &handed_value);
    JCHECK(cp_var_set(changed_var, &changed_value, NULL) == 0);
    cp_context_free(cp_copy_context());
}

static void *set_handed(void *p)
{
    JCHECK(cp_var_set(handed_var, &handed_value, NULL) == 0);
    return p;
}

#define HELD_COPIES 40
static void *wait_a_job_whose_frame_end_changes_our_context(void *pool)
{
    JCHECK(cp_var_set(held_var, &held_value, NULL) == 0);
    cp_context *copies[HELD_COPIES];
    for (int i = 0; i < HELD_COPIES; i++)
        JCHECK((copies[i] = cp_copy_context()) != NULL);
    cp_future *f = NULL;
    JCHECK(cp_pool_submit(pool, set_handed, NULL, &f) == 0);
    JCHECK(cp_future_wait(f, NULL) == 0);
    cp_future_free(f);
    JCHECK(get_here(changed_var) == &changed_value);
    JCHECK(cp_var_set(changed_var, NULL, NULL) == 0); /* drops the batch */
    for (int i = 0; i < HELD_COPIES; i++) {
        JCHECK(cp_context_get_or(copies[i], held_var, NULL) == &held_value);
        cp_context_free(copies[i]);
    }
    JCHECK(atomic_load(&frees) == 0);
    return NULL;
}

Test(base, a_free_value_that_changes_the_waiters_context_as_a_job_ends_frees_all_once,
     .timeout = 30)
{
    held_var = cp_var_new("held", count_free);
    handed_var = cp_var_new("handed", change_and_copy);
    changed_var = cp_var_new("changed", NULL);
    cp_pool *pool = new_pool(1);
    for (int rep = 0; rep < 20; rep++) {
        atomic_store(&frees, 0);
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, wait_a_job_whose_frame_end_changes_our_context,
                                    pool, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(atomic_load(&frees), 1, "rep %d: the job's value was freed %d times",
                     rep, atomic_load(&frees));
    }
    free_pool(pool);
    cp_var_free(held_var);
    cp_var_free(handed_var);
    cp_var_free(changed_var);
}

/* A job that sets its variable for a while, the way a request handler does:
 * set, reset, free the token. */
static void *set_reset_free_job(void *p)
{
    static int value;
    cp_var *v = p;
    cp_token *t = NULL;
    JCHECK(cp_var_set(v, &value, &t) == 0);
    JCHECK(cp_var_reset(v, t) == 0);
    cp_token_free(t);
    return NULL;
}

Test(base, a_worker_keeps_no_variable_after_the_job_that_used_it, .timeout = 30)
{
    static int default_value;
    cp_var *v = cp_var_new_default("v", &default_value, count_free);
    cp_pool *pool = new_pool(1);
    atomic_store(&frees, 0);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, set_reset_free_job, v, &f), 0);
    wait_ok(f);
    jobs_ok();
    cr_assert_eq(atomic_load(&frees), 1, "the job's value, at its reset");
    /* The worker kept the token's references on v for its next set, but
     * not past the end of the job: v ends here, while the worker lives. */
    cp_var_free(v);
    cr_assert_eq(atomic_load(&frees), 2, "v's default, with v");
    free_pool(pool);
    cr_assert_eq(atomic_load(&frees), 2);
}

/* Sets and resets v in a context of its own; the token comes back. */
static void *set_reset_elsewhere(void *p)
{
    static int value;
    void **vt = p;
    JCHECK(cp_var_set(vt[0], &value, (cp_token **)&vt[1]) == 0);
    JCHECK(cp_var_reset(vt[0], vt[1]) == 0);
    return NULL;
}

/* Frees, in its waiter's context, the token of a set and reset of v made
 * in a context of its own: the thread keeps the token's references on v
 * (see "The kept references" in context.c), which it must let go of at
 * the end of this job or task, even when it runs sharing its waiter's
 * context (cp__lazy). */
static void *token_free_job(void *p)
{
    void *vt[2] = {p, NULL};
    cp_context *c = cp_context_new();
    JCHECK(cp_context_run(c, set_reset_elsewhere, vt, NULL) == 0);
    cp_context_free(c);
    cp_token_free(vt[1]);
    return NULL;
}

struct kept_wait {
    cp_pool *pool;
    cp_var *v;
    bool task;   /* a frame task synced, else a job waited for */
    blocker b;   /* started: the child ended; then held at the gate */
};

/* Runs token_free_job as a child it waits for, which runs here, in this
 * job's context (nothing set since the capture); then holds its worker. */
static void *kept_wait_job(void *p)
{
    struct kept_wait *k = p;
    if (k->task) {
        cp_task t;
        JCHECK(cp_spawn(k->pool, &t, token_free_job, k->v) == 0);
        JCHECK(cp_sync(&t, NULL) == 0);
    } else {
        cp_future *f = NULL;
        JCHECK(cp_pool_submit(k->pool, token_free_job, k->v, &f) == 0);
        JCHECK(cp_future_wait(f, NULL) == 0);
        cp_future_free(f);
    }
    return blocker_job(&k->b);
}

static void child_run_in_its_waiters_context_keeps_no_variable(bool task)
{
    static int default_value;
    struct kept_wait k = {.pool = new_pool(1), .task = task,
                          .v = cp_var_new_default("v", &default_value, count_free)};
    blocker_init(&k.b);
    atomic_store(&frees, 0);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(k.pool, kept_wait_job, &k, &f), 0);
    cr_assert_eq(sem_wait(&k.b.started), 0);
    jobs_ok();
    cr_assert_eq(atomic_load(&frees), 1, "the child's value, at its reset");
    /* The child's end happens-before here: v ends now, while its waiter
     * still runs on the worker. */
    cp_var_free(k.v);
    cr_assert_eq(atomic_load(&frees), 2, "v's default, with v");
    gate_open(&k.b.g);
    wait_ok(f);
    free_pool(k.pool);
}

Test(base, a_job_run_in_its_waiters_context_keeps_no_variable, .timeout = 30)
{
    child_run_in_its_waiters_context_keeps_no_variable(false);
}

Test(base, a_task_run_in_its_syncers_context_keeps_no_variable, .timeout = 30)
{
    child_run_in_its_waiters_context_keeps_no_variable(true);
}

/* Submits take references on the submitter's map a batch at a time (see
 * "The capture batch" in context.c): after more submits than a batch holds,
 * all waited for, a change of the variable frees the value it replaces at
 * once, and nothing of the batch outlives the submitter's context. */
Test(base, submits_keep_no_value_of_the_submitters_context_past_a_change,
     .timeout = 30)
{
    static int a, b;
    cp_var *v = cp_var_new("v", count_free);
    cp_pool *pool = new_pool(2);
    atomic_store(&frees, 0);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0); /* in the main thread's base context */
    struct read_var rv = {v};
    enum { JOBS = 100 };
    cp_future *f[JOBS];
    for (int i = 0; i < JOBS; i++)
        cr_assert_eq(cp_pool_submit(pool, read_var_job, &rv, &f[i]), 0);
    for (int i = 0; i < JOBS; i++)
        cr_assert_eq(wait_ok(f[i]), &a);
    cr_assert_eq(atomic_load(&frees), 0);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(atomic_load(&frees), 1, "the batch kept a's map alive");
    free_pool(pool);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Frame tasks                                                               */

Test(task, sync_out_of_order_is_einval_and_waits_for_nothing, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    blocker bl;
    cp_future *busy = occupy_worker(pool, &bl);
    atomic_int ran_a = 0, ran_b = 0;
    cp_task a, b;
    cr_assert_eq(cp_spawn(pool, &a, count_job, &ran_a), 0);
    cr_assert_eq(cp_spawn(pool, &b, count_job, &ran_b), 0);
    /* The worker is held: a sync that waited would hang here. */
    void *result = UNTOUCHED;
    cr_assert_eq(cp_sync(&a, &result), CP_EINVAL);
    cr_assert_eq(result, UNTOUCHED);
    cr_assert_eq(runs(&ran_a), 0);
    gate_open(&bl.g);
    cr_assert_eq(cp_sync(&b, &result), 0);
    cr_assert_eq(result, &ran_b);
    cr_assert_eq(cp_sync(&a, &result), 0);
    cr_assert_eq(result, &ran_a);
    cr_assert_eq(cp_sync(&a, NULL), CP_EINVAL, "synced twice");
    wait_ok(busy);
    cr_assert_eq(runs(&ran_a), 1);
    cr_assert_eq(runs(&ran_b), 1);
    free_pool(pool);
}

struct out_of_order {
    cp_pool *pool;
    atomic_int ran_a, ran_b;
    int rc_wrong, ran_a_after_wrong, rc_b, rc_a;
};

static void *sync_out_of_order_in_job(void *p)
{
    struct out_of_order *o = p;
    cp_task a, b;
    JCHECK(cp_spawn(o->pool, &a, count_job, &o->ran_a) == 0);
    JCHECK(cp_spawn(o->pool, &b, count_job, &o->ran_b) == 0);
    o->rc_wrong = cp_sync(&a, NULL);
    o->ran_a_after_wrong = runs(&o->ran_a);
    o->rc_b = cp_sync(&b, NULL);
    o->rc_a = cp_sync(&a, NULL);
    return NULL;
}

Test(task, sync_out_of_order_on_a_worker_is_einval_and_runs_nothing, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    struct out_of_order o = {.pool = pool};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, sync_out_of_order_in_job, &o, &f), 0);
    wait_ok(f);
    jobs_ok();
    cr_assert_eq(o.rc_wrong, CP_EINVAL);
    cr_assert_eq(o.ran_a_after_wrong, 0);
    cr_assert_eq(o.rc_b, 0);
    cr_assert_eq(o.rc_a, 0);
    cr_assert_eq(runs(&o.ran_a), 1);
    cr_assert_eq(runs(&o.ran_b), 1);
    free_pool(pool);
}

/* Syncs made from inside a running task: of its spawner's other pending
 * task (out of order), and of itself. */
struct inner_syncs {
    cp_pool *pool;
    cp_task *sibling, *self;
    atomic_int ran_sibling;
    int rc_sibling, rc_self, rc_t, rc_s;
};

static void *sync_from_inside(void *p)
{
    struct inner_syncs *o = p;
    o->rc_sibling = cp_sync(o->sibling, NULL);
    o->rc_self = cp_sync(o->self, NULL);
    return o;
}

static void *spawn_and_sync_inside(void *p)
{
    struct inner_syncs *o = p;
    cp_task s, t;
    o->sibling = &s;
    o->self = &t;
    JCHECK(cp_spawn(o->pool, &s, count_job, &o->ran_sibling) == 0);
    JCHECK(cp_spawn(o->pool, &t, sync_from_inside, o) == 0);
    void *result = NULL;
    o->rc_t = cp_sync(&t, &result);
    JCHECK(result == o);
    o->rc_s = cp_sync(&s, &result);
    JCHECK(result == &o->ran_sibling);
    return NULL;
}

static void syncs_from_inside_a_task_are_refused(unsigned threads)
{
    cp_pool *pool = new_pool(threads);
    for (int rep = 0; rep < 200; rep++) {
        struct inner_syncs o = {.pool = pool};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, spawn_and_sync_inside, &o, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(o.rc_sibling, CP_EINVAL, "the spawner's other task, out of order");
        cr_assert_eq(o.rc_self, CP_EINVAL, "the running task itself");
        cr_assert_eq(o.rc_t, 0);
        cr_assert_eq(o.rc_s, 0, "the spawner's own sync still works");
        cr_assert_eq(runs(&o.ran_sibling), 1);
    }
    free_pool(pool);
}

Test(task, syncs_from_inside_a_task_are_refused_on_one_worker, .timeout = 30)
{
    syncs_from_inside_a_task_are_refused(1);
}

Test(task, syncs_from_inside_a_task_are_refused_on_two_workers, .timeout = 30)
{
    syncs_from_inside_a_task_are_refused(2);
}

/* The same refusals when the spawner's thread runs its tasks while it
 * waits for a job running elsewhere (it offers them to itself and takes
 * them back from its deque): a task that syncs itself, or the sibling
 * spawned after it, gets CP_EINVAL (the self-sync used to wait for itself
 * forever, the sibling's ran). Two workers: the other one runs a blocker
 * whose gate the checking task opens. */
struct helped_syncs {
    cp_pool *pool;
    bool with_sibling;           /* spawn a second task after the checker */
    blocker bl;
    cp_future *blocker_future;
    cp_task checker, sibling;
    atomic_int ran_sibling;
    int rc_sibling, rc_self, rc_checker, rc_after;
};

static void *checker_task(void *p)
{
    struct helped_syncs *o = p;
    if (o->with_sibling)
        o->rc_sibling = cp_sync(&o->sibling, NULL);
    o->rc_self = cp_sync(&o->checker, NULL);
    gate_open(&o->bl.g);
    return o;
}

static void *spawn_and_help_job(void *p)
{
    struct helped_syncs *o = p;
    JCHECK(cp_spawn(o->pool, &o->checker, checker_task, o) == 0);
    if (o->with_sibling)
        JCHECK(cp_spawn(o->pool, &o->sibling, count_job, &o->ran_sibling) == 0);
    /* Runs the tasks meanwhile: nobody else is free to. */
    JCHECK(cp_future_wait(o->blocker_future, NULL) == 0);
    void *result = NULL;
    if (o->with_sibling) {
        o->rc_after = cp_sync(&o->sibling, &result);
        JCHECK(result == &o->ran_sibling);
    }
    o->rc_checker = cp_sync(&o->checker, &result);
    JCHECK(result == o);
    return NULL;
}

static void syncs_from_a_task_run_while_its_spawner_waits(bool with_sibling)
{
    cp_pool *pool = new_pool(2);
    struct helped_syncs o = {.pool = pool, .with_sibling = with_sibling};
    o.blocker_future = occupy_worker(pool, &o.bl);
    cp_future *job = NULL;
    cr_assert_eq(cp_pool_submit(pool, spawn_and_help_job, &o, &job), 0);
    wait_ok(job);
    wait_ok(o.blocker_future);
    jobs_ok();
    cr_assert_eq(o.rc_self, CP_EINVAL, "the running task itself");
    cr_assert_eq(o.rc_checker, 0, "the spawner's own sync still works");
    if (with_sibling) {
        cr_assert_eq(o.rc_sibling, CP_EINVAL, "the sibling spawned after it");
        cr_assert_eq(o.rc_after, 0);
        cr_assert_eq(runs(&o.ran_sibling), 1);
    }
    free_pool(pool);
}

Test(task, a_task_run_while_its_spawner_waits_cannot_sync_itself, .timeout = 30)
{
    syncs_from_a_task_run_while_its_spawner_waits(false);
}

Test(task, a_task_run_while_its_spawner_waits_cannot_sync_a_later_sibling,
     .timeout = 30)
{
    syncs_from_a_task_run_while_its_spawner_waits(true);
}

/* A job that a waiting job's thread runs (here: the one it waits for, taken
 * back from its own deque) cannot sync the waiting job's task: CP_EINVAL,
 * and the task is still there for its spawner to sync. */
struct foreign_sync {
    cp_pool *pool;
    cp_task *task;
    atomic_int ran;
    int rc_foreign, rc_own;
};

static void *sync_someone_elses_task(void *p)
{
    struct foreign_sync *o = p;
    o->rc_foreign = cp_sync(o->task, NULL);
    return NULL;
}

static void *spawn_then_wait_for_a_job(void *p)
{
    struct foreign_sync *o = p;
    cp_task t;
    cp_future *f = NULL;
    o->task = &t;
    JCHECK(cp_spawn(o->pool, &t, count_job, &o->ran) == 0);
    JCHECK(cp_pool_submit(o->pool, sync_someone_elses_task, o, &f) == 0);
    JCHECK(cp_future_wait(f, NULL) == 0);
    cp_future_free(f);
    void *result = NULL;
    o->rc_own = cp_sync(&t, &result);
    JCHECK(result == &o->ran);
    return NULL;
}

Test(task, a_job_run_on_the_spawners_thread_cannot_sync_its_task, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    for (int rep = 0; rep < 100; rep++) {
        struct foreign_sync o = {.pool = pool};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, spawn_then_wait_for_a_job, &o, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(o.rc_foreign, CP_EINVAL);
        cr_assert_eq(o.rc_own, 0);
        cr_assert_eq(runs(&o.ran), 1);
    }
    free_pool(pool);
}

/* A free_value runs where its value dies; when a job or task ends, after
 * the thread has left the run's frame while the task being synced is still
 * on its stack. A sync from there of any task spawned before the free_value
 * began is out of order, CP_EINVAL: the task whose run is ending (it used to
 * wait for itself forever, or run a second time), or the task of a job
 * waiting further down the thread (it ran early, and its spawner's own sync
 * failed). The free_value may still spawn and sync tasks of its own. */
enum dying_sync {
    DYING_TASK_AT_SYNC,    /* a task run inline by its spawner's cp_sync */
    DYING_TASK_IN_A_WAIT,  /* a task its spawner runs while it waits */
    DYING_JOB_IN_A_WAIT,   /* a job run while a job with a task waits */
};

static cp_var *dying_var;

struct dying {
    cp_pool *pool;
    enum dying_sync how;
    cp_task task;           /* the spawner's task */
    cp_future *waited;      /* what the spawner waits for, if it waits */
    blocker bl;             /* DYING_TASK_IN_A_WAIT: the other worker's */
    atomic_int ran_task;    /* runs of task's body */
    atomic_int ran_own;     /* runs of the free_value's own task */
    int rc_dying, rc_own, rc_spawner;
    void *own_result;
};

/* The free_value of dying_var, whose value is the struct dying. */
static void sync_as_it_dies(void *p)
{
    struct dying *d = p;
    d->rc_dying = cp_sync(&d->task, NULL);
    cp_task own;
    JCHECK(cp_spawn(d->pool, &own, count_job, &d->ran_own) == 0);
    d->rc_own = cp_sync(&own, &d->own_result);
}

/* Sets a value that dies as this run ends: nothing else holds the map. */
static void *set_dying(void *p)
{
    JCHECK(cp_var_set(dying_var, p, NULL) == 0);
    return p;
}

static void *task_sets_dying(void *p)
{
    struct dying *d = p;
    atomic_fetch_add_explicit(&d->ran_task, 1, memory_order_relaxed);
    if (d->how == DYING_TASK_IN_A_WAIT)
        gate_open(&d->bl.g);
    return d->how == DYING_JOB_IN_A_WAIT ? d : set_dying(d);
}

static void *spawner_job(void *p)
{
    struct dying *d = p;
    JCHECK(cp_spawn(d->pool, &d->task, task_sets_dying, d) == 0);
    if (d->how == DYING_JOB_IN_A_WAIT)
        JCHECK(cp_pool_submit(d->pool, set_dying, d, &d->waited) == 0);
    if (d->waited) /* nobody else is free: this thread runs what it waits for */
        JCHECK(cp_future_wait(d->waited, NULL) == 0);
    void *result = NULL;
    d->rc_spawner = cp_sync(&d->task, &result);
    JCHECK(result == d);
    return NULL;
}

static void a_free_value_cannot_sync_what_was_spawned_before_it(enum dying_sync how)
{
    dying_var = cp_var_new("dying", sync_as_it_dies);
    unsigned threads = how == DYING_TASK_IN_A_WAIT ? 2 : 1;
    cp_pool *pool = new_pool(threads);
    for (int rep = 0; rep < 50; rep++) {
        struct dying d = {.pool = pool, .how = how, .rc_dying = 1, .rc_own = 1};
        if (how == DYING_TASK_IN_A_WAIT)
            d.waited = occupy_worker(pool, &d.bl);
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, spawner_job, &d, &f), 0);
        wait_ok(f);
        if (how == DYING_JOB_IN_A_WAIT)
            cp_future_free(d.waited);
        else if (d.waited)
            wait_ok(d.waited);
        jobs_ok();
        cr_assert_eq(d.rc_dying, CP_EINVAL, "a task spawned before the free_value");
        cr_assert_eq(d.rc_own, 0, "the free_value's own task");
        cr_assert_eq(d.own_result, &d.ran_own);
        cr_assert_eq(runs(&d.ran_own), 1);
        cr_assert_eq(d.rc_spawner, 0, "the spawner's own sync still works");
        cr_assert_eq(runs(&d.ran_task), 1);
    }
    free_pool(pool);
    cp_var_free(dying_var);
}

Test(task, a_free_value_run_as_a_task_ends_at_its_sync_cannot_sync_it, .timeout = 30)
{
    a_free_value_cannot_sync_what_was_spawned_before_it(DYING_TASK_AT_SYNC);
}

Test(task, a_free_value_run_as_a_task_ends_in_a_wait_cannot_sync_it, .timeout = 30)
{
    a_free_value_cannot_sync_what_was_spawned_before_it(DYING_TASK_IN_A_WAIT);
}

Test(task, a_free_value_run_as_a_helped_job_ends_cannot_sync_the_waiters_task,
     .timeout = 30)
{
    a_free_value_cannot_sync_what_was_spawned_before_it(DYING_JOB_IN_A_WAIT);
}

/* A task spawned inside a cp_context_run and synced after the run
 * returned keeps the view of the context it was spawned in, although the
 * context is changed by its next owner, on another thread, and freed before
 * the task runs (the task used to read the context's map as changed in
 * place, or freed). From outside the pool, with the only worker busy until
 * the sync; and in a job, where the task stays private until the sync runs
 * it. */
struct spawn_in_run {
    cp_pool *pool;
    cp_context *c;
    struct read_var rv;
    cp_task task;
    int at_spawn, later;
};

static void *set_and_spawn(void *p)
{
    struct spawn_in_run *o = p;
    JCHECK(cp_var_set(o->rv.var, &o->at_spawn, NULL) == 0);
    JCHECK(cp_spawn(o->pool, &o->task, read_var_job, &o->rv) == 0);
    return NULL;
}

static void *set_later(void *p)
{
    struct spawn_in_run *o = p;
    JCHECK(cp_var_set(o->rv.var, &o->later, NULL) == 0);
    return NULL;
}

static void *run_c_setting_later(void *p)
{
    struct spawn_in_run *o = p;
    JCHECK(cp_context_run(o->c, set_later, o, NULL) == 0);
    return NULL;
}

/* Spawn in a run of o->c, change o->c on another thread, free it: the
 * caller then syncs. */
static void spawn_in_a_run_then_change_and_free(struct spawn_in_run *o)
{
    o->c = cp_context_new();
    JCHECK(o->c != NULL);
    JCHECK(cp_context_run(o->c, set_and_spawn, o, NULL) == 0);
    pthread_t th;
    JCHECK(pthread_create(&th, NULL, run_c_setting_later, o) == 0);
    JCHECK(pthread_join(th, NULL) == 0);
    cp_context_free(o->c);
}

static void *spawn_in_a_run_job(void *p)
{
    struct spawn_in_run *o = p;
    spawn_in_a_run_then_change_and_free(o);
    void *seen = NULL;
    JCHECK(cp_sync(&o->task, &seen) == 0);
    JCHECK(seen == &o->at_spawn);
    return NULL;
}

/* A job spawns a reader, then runs a copy of its context that sets the
 * variable twice (the second set may reuse the copy's new nodes in place)
 * and spawns and syncs a reader of its own in there: the first reader still
 * sees the value at its spawn, the second the copy's value then. A set
 * looks only at the tasks spawned in its own context; the job's task
 * borrows a map the job still holds, which is therefore never changed in
 * place. */
struct copy_sets {
    cp_pool *pool;
    struct read_var rv;
    int a, b, c;
    void *inner_seen;
};

static void *set_twice_spawn_and_sync(void *p)
{
    struct copy_sets *o = p;
    cp_task t;
    JCHECK(cp_var_set(o->rv.var, &o->b, NULL) == 0);
    JCHECK(cp_spawn(o->pool, &t, read_var_job, &o->rv) == 0);
    JCHECK(cp_var_set(o->rv.var, &o->c, NULL) == 0);
    JCHECK(cp_sync(&t, &o->inner_seen) == 0);
    return NULL;
}

static void *spawn_then_set_in_a_copy(void *p)
{
    struct copy_sets *o = p;
    cp_task t;
    JCHECK(cp_var_set(o->rv.var, &o->a, NULL) == 0);
    JCHECK(cp_spawn(o->pool, &t, read_var_job, &o->rv) == 0);
    cp_context *copy = cp_copy_context();
    JCHECK(copy != NULL);
    JCHECK(cp_context_run(copy, set_twice_spawn_and_sync, o, NULL) == 0);
    cp_context_free(copy);
    void *seen = NULL;
    JCHECK(cp_sync(&t, &seen) == 0);
    JCHECK(seen == &o->a);
    JCHECK(o->inner_seen == &o->b);
    JCHECK(get_here(o->rv.var) == &o->a);
    return NULL;
}

Test(task, sets_in_a_copy_do_not_reach_a_task_spawned_before_its_run, .timeout = 30)
{
    for (unsigned threads = 1; threads <= 2; threads++) {
        cp_pool *pool = new_pool(threads);
        struct copy_sets o = {.pool = pool, .rv = {cp_var_new("v", NULL)}};
        for (int rep = 0; rep < 50; rep++) {
            cp_future *f = NULL;
            cr_assert_eq(cp_pool_submit(pool, spawn_then_set_in_a_copy, &o, &f), 0);
            wait_ok(f);
            jobs_ok();
        }
        free_pool(pool);
        cp_var_free(o.rv.var);
    }
}

Test(task, a_task_synced_after_its_run_returned_keeps_its_view_of_the_context,
     .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    struct spawn_in_run o = {.pool = pool, .rv = {cp_var_new("v", NULL)}};
    blocker b;
    cp_future *busy = occupy_worker(pool, &b);
    spawn_in_a_run_then_change_and_free(&o);
    gate_open(&b.g);
    void *seen = NULL;
    cr_assert_eq(cp_sync(&o.task, &seen), 0);
    cr_assert_eq(seen, &o.at_spawn, "the task saw %p, not the value at its spawn", seen);
    wait_ok(busy);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, spawn_in_a_run_job, &o, &f), 0);
    wait_ok(f);
    jobs_ok();
    free_pool(pool);
    cp_var_free(o.rv.var);
}

/* In a job: set v to a, spawn a reader, change v (set b, reset to a
 * token's state, delete) with a reader spawned after each change, then sync
 * them all: each sees v as it was when it was spawned, although the changes
 * are made in a map only this job holds (where they reuse its nodes). */
struct around_changes {
    struct read_var rv;
    cp_pool *pool;
};

static void *spawn_around_changes_job(void *p)
{
    static int a, b;
    struct around_changes *ac = p;
    struct read_var *rv = &ac->rv;
    cp_pool *pool = ac->pool;
    cp_token *tok = NULL;
    cp_task t[4];
    void *seen[4] = {NULL, NULL, NULL, NULL};
    JCHECK(cp_var_set(rv->var, &a, NULL) == 0);
    JCHECK(cp_spawn(pool, &t[0], read_var_job, rv) == 0);
    JCHECK(cp_var_set(rv->var, &b, &tok) == 0);
    JCHECK(cp_spawn(pool, &t[1], read_var_job, rv) == 0);
    JCHECK(cp_var_reset(rv->var, tok) == 0);
    JCHECK(cp_spawn(pool, &t[2], read_var_job, rv) == 0);
    cp_token_free(tok);
    JCHECK(cp_var_set(rv->var, &b, &tok) == 0);
    JCHECK(cp_var_reset(rv->var, tok) == 0); /* back to a */
    cp_token_free(tok);
    JCHECK(cp_var_set(rv->var, &b, NULL) == 0);
    JCHECK(cp_spawn(pool, &t[3], read_var_job, rv) == 0);
    for (int i = 3; i >= 0; i--)
        JCHECK(cp_sync(&t[i], &seen[i]) == 0);
    JCHECK(seen[0] == &a);
    JCHECK(seen[1] == &b);
    JCHECK(seen[2] == &a);
    JCHECK(seen[3] == &b);
    return NULL;
}

Test(task, each_task_sees_its_spawners_context_as_it_was_at_the_spawn,
     .timeout = 30)
{
    for (unsigned threads = 1; threads <= 2; threads++) {
        cp_var *v = cp_var_new("v", NULL);
        cp_pool *pool = new_pool(threads);
        struct around_changes ac = {{v}, pool};
        for (int round = 0; round < 200; round++) {
            cp_future *f = NULL;
            cr_assert_eq(cp_pool_submit(pool, spawn_around_changes_job, &ac, &f), 0);
            wait_ok(f);
        }
        jobs_ok();
        free_pool(pool);
        cp_var_free(v);
    }
}

/* In a job: set v, spawn a task, set v again, so that the task's borrow
 * takes a reference of its own to the map it was spawned on; the task sets
 * v in its turn and spawns a reader of it. The task sees v as at its spawn,
 * the reader the task's value, the job its own; and each of the three
 * values is freed once, when the job ends: every reference the borrows and
 * frames took is dropped, and only once. */
struct own_borrow {
    cp_pool *pool;
    cp_var *var;
};

static void *set_and_spawn_a_reader(void *p)
{
    static int mine;
    struct own_borrow *ob = p;
    void *seen = get_here(ob->var);
    JCHECK(cp_var_set(ob->var, &mine, NULL) == 0);
    struct read_var rv = {ob->var};
    cp_task t;
    void *read = UNTOUCHED;
    JCHECK(cp_spawn(ob->pool, &t, read_var_job, &rv) == 0);
    JCHECK(cp_sync(&t, &read) == 0);
    JCHECK(read == &mine);
    return seen;
}

static void *spawn_then_set(void *p)
{
    static int first, second;
    struct own_borrow *ob = p;
    JCHECK(cp_var_set(ob->var, &first, NULL) == 0);
    cp_task t;
    void *seen = UNTOUCHED;
    JCHECK(cp_spawn(ob->pool, &t, set_and_spawn_a_reader, ob) == 0);
    JCHECK(cp_var_set(ob->var, &second, NULL) == 0);
    JCHECK(cp_sync(&t, &seen) == 0);
    JCHECK(seen == &first);
    JCHECK(get_here(ob->var) == &second);
    return NULL;
}

Test(task, a_task_on_a_map_its_spawner_left_sets_a_variable_and_frees_nothing_twice,
     .timeout = 30)
{
    cp_var *v = cp_var_new("v", count_free);
    for (unsigned threads = 1; threads <= 2; threads++) {
        cp_pool *pool = new_pool(threads);
        struct own_borrow ob = {pool, v};
        for (int round = 0; round < 200; round++) {
            atomic_store(&frees, 0);
            cp_future *f = NULL;
            cr_assert_eq(cp_pool_submit(pool, spawn_then_set, &ob, &f), 0);
            wait_ok(f);
            cr_assert_eq(atomic_load(&frees), 3, "round %d: %d values freed",
                         round, atomic_load(&frees));
        }
        jobs_ok();
        free_pool(pool);
    }
    cp_var_free(v);
}

/* Captures on both sides of a frame: a job changes its map after a spawn and
 * copies it (a capture, kept), then syncs; the task, run at the sync on one
 * worker, copies its borrowed map in its turn. Each frame drops the
 * thread's capture batch as it begins and ends (see "The capture batch" in
 * context.c): the map of the spawn is freed at the sync, the job's at its
 * next change, each value once. */
struct frame_captures {
    cp_pool *pool;
    cp_var *var;
    atomic_int a, b, c; /* values, counting their frees (count_own) */
    int a_at_sync, b_at_change;
};

static void count_own(void *p)
{
    atomic_fetch_add((atomic_int *)p, 1);
}

static void *copy_the_borrowed_map(void *p)
{
    struct frame_captures *fc = p;
    cp_context *k = cp_copy_context();
    JCHECK(k != NULL);
    JCHECK(cp_context_get_or(k, fc->var, NULL) == &fc->a);
    cp_context_free(k);
    return NULL;
}

static void *capture_around_a_sync(void *p)
{
    struct frame_captures *fc = p;
    JCHECK(cp_var_set(fc->var, &fc->a, NULL) == 0);
    cp_task t;
    JCHECK(cp_spawn(fc->pool, &t, copy_the_borrowed_map, fc) == 0);
    JCHECK(cp_var_set(fc->var, &fc->b, NULL) == 0);
    cp_context *k = cp_copy_context();
    JCHECK(k != NULL);
    JCHECK(cp_sync(&t, NULL) == 0);
    fc->a_at_sync = atomic_load(&fc->a);
    cp_context_free(k);
    JCHECK(cp_var_set(fc->var, &fc->c, NULL) == 0);
    fc->b_at_change = atomic_load(&fc->b);
    return NULL;
}

Test(task, captures_in_and_around_a_frame_keep_no_map_past_its_holders,
     .timeout = 30)
{
    cp_var *v = cp_var_new("v", count_own);
    for (unsigned threads = 1; threads <= 2; threads++) {
        cp_pool *pool = new_pool(threads);
        for (int round = 0; round < 50; round++) {
            struct frame_captures fc = {.pool = pool, .var = v};
            cp_future *f = NULL;
            cr_assert_eq(cp_pool_submit(pool, capture_around_a_sync, &fc, &f), 0);
            wait_ok(f);
            cr_assert_eq(fc.a_at_sync, 1, "%u: the spawn's map outlived the sync",
                         threads);
            cr_assert_eq(fc.b_at_change, 1,
                         "%u: the job's map outlived its change", threads);
            cr_assert_eq(atomic_load(&fc.a) + atomic_load(&fc.b) + atomic_load(&fc.c),
                         3);
        }
        jobs_ok();
        free_pool(pool);
    }
    cp_var_free(v);
}

/* Many tasks spawned in a row by one job, as a parallel loop does, so that
 * idle workers are offered the oldest of them one after another while the
 * newest run at their syncs; every other one goes to a second pool instead,
 * so that those of the first pool are not neighbours on the borrow stack. */
enum { FLAT_TASKS = 200, FLAT_ROUNDS = 50 };

struct flat {
    cp_pool *pool, *other;
    atomic_int ran[FLAT_TASKS];
};

static void *spawn_flat_in_job(void *p)
{
    struct flat *fl = p;
    cp_task tasks[FLAT_TASKS];
    for (int i = 0; i < FLAT_TASKS; i++)
        JCHECK(cp_spawn(i % 2 ? fl->other : fl->pool, &tasks[i], count_job,
                        &fl->ran[i]) == 0);
    for (int i = FLAT_TASKS - 1; i >= 0; i--) {
        void *result = UNTOUCHED;
        JCHECK(cp_sync(&tasks[i], &result) == 0);
        JCHECK(result == &fl->ran[i]);
    }
    return NULL;
}

Test(task, a_row_of_tasks_among_another_pools_runs_each_once, .timeout = 60)
{
    struct flat fl = {.pool = new_pool(2), .other = new_pool(1)};
    for (int round = 0; round < FLAT_ROUNDS; round++) {
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(fl.pool, spawn_flat_in_job, &fl, &f), 0);
        wait_ok(f);
        jobs_ok();
        for (int i = 0; i < FLAT_TASKS; i++)
            cr_assert_eq(runs(&fl.ran[i]), round + 1, "round %d: task %d ran %d times",
                         round, i, runs(&fl.ran[i]));
    }
    cp_pool_stats stats;
    cr_assert_eq(cp_pool_get_stats(fl.pool, &stats), 0);
    cr_assert_eq(stats.completed, FLAT_ROUNDS * (1 + FLAT_TASKS / 2));
    cr_assert_eq(cp_pool_get_stats(fl.other, &stats), 0);
    cr_assert_eq(stats.completed, FLAT_ROUNDS * FLAT_TASKS / 2);
    free_pool(fl.other);
    free_pool(fl.pool);
}

struct spawn_ten {
    cp_pool *pool;
    atomic_int ran;
};

static void *spawn_ten_job(void *p)
{
    struct spawn_ten *st = p;
    cp_task t[10];
    for (int i = 0; i < 10; i++)
        JCHECK(cp_spawn(st->pool, &t[i], count_job, &st->ran) == 0);
    for (int i = 9; i >= 0; i--)
        JCHECK(cp_sync(&t[i], NULL) == 0);
    return NULL;
}

Test(task, every_spawn_counts_as_submitted_and_completed, .timeout = 30)
{
    struct spawn_ten st = {new_pool(2), 0};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(st.pool, spawn_ten_job, &st, &f), 0); /* 1 + 10 */
    wait_ok(f);
    cp_task t;
    cr_assert_eq(cp_spawn(st.pool, &t, count_job, &st.ran), 0); /* from outside */
    cr_assert_eq(cp_sync(&t, NULL), 0);
    jobs_ok();
    cr_assert_eq(runs(&st.ran), 11);
    cp_pool_stats stats;
    stats_of(st.pool, &stats);
    cr_assert_eq(stats.submitted, 12);
    cr_assert_eq(stats.completed, 12);
    cr_assert_eq(stats.cancelled, 0);
    free_pool(st.pool);
}

/* A task its spawner runs inline at cp_sync, or a job its waiter takes
 * back and runs at cp_future_wait, shares the spawner's context until it
 * sets something (pool.c: run_captured). Whatever it does, it must behave
 * as in a frame of its own: a token of its spawner's is another context's,
 * its set makes its own frame, which its spawner never sees, tasks it
 * spawned before the set see the context of their spawn, a context it runs
 * keeps its own changes. On one worker every task is private and synced
 * inline, and every job run by its waiter; on two some are taken by the
 * other worker. */
/* Run fn(arg) as a child of the calling job, and wait for it: a job
 * (future), or a frame task. On one worker, the caller runs it. */
static void run_child(cp_pool *pool, bool future, cp_job_fn fn, void *arg)
{
    if (future) {
        cp_future *f = NULL;
        JCHECK(cp_pool_submit(pool, fn, arg, &f) == 0);
        JCHECK(cp_future_wait(f, NULL) == 0);
        cp_future_free(f);
    } else {
        cp_task t;
        JCHECK(cp_spawn(pool, &t, fn, arg) == 0);
        JCHECK(cp_sync(&t, NULL) == 0);
    }
}

static cp_var *inline_var;
static int inline_job_value, inline_task_value, inline_other_value;

struct inline_run {
    cp_pool *pool;
    bool future;              /* the child is a job, not a frame task */
    cp_token *job_token;      /* the job's set, before its spawn */
    int rc_reset;             /* the task's reset of job_token */
    void *early, *late;       /* what the task's tasks spawned before and
                                 after its set saw */
    void *in_copy;            /* the value in a copy the task ran a set in */
    void *job_after;          /* what the job sees after its sync */
};

static void *read_inline_var(void *p)
{
    (void)p;
    return get_here(inline_var);
}

static void *set_inline_other(void *p)
{
    JCHECK(cp_var_set(inline_var, &inline_other_value, NULL) == 0);
    return p;
}

static void *inline_task(void *p)
{
    struct inline_run *k = p;
    JCHECK(get_here(inline_var) == &inline_job_value);
    k->rc_reset = cp_var_reset(inline_var, k->job_token);
    JCHECK(get_here(inline_var) == &inline_job_value);
    cp_task early, late;
    JCHECK(cp_spawn(k->pool, &early, read_inline_var, NULL) == 0);
    cp_token *token = NULL;
    JCHECK(cp_var_set(inline_var, &inline_task_value, &token) == 0);
    JCHECK(get_here(inline_var) == &inline_task_value);
    JCHECK(cp_spawn(k->pool, &late, read_inline_var, NULL) == 0);
    JCHECK(cp_sync(&late, &k->late) == 0);
    JCHECK(cp_sync(&early, &k->early) == 0);
    cp_context *copy = cp_copy_context();
    JCHECK(copy != NULL);
    JCHECK(cp_context_run(copy, set_inline_other, NULL, NULL) == 0);
    k->in_copy = cp_context_get_or(copy, inline_var, NULL);
    cp_context_free(copy);
    JCHECK(get_here(inline_var) == &inline_task_value);
    JCHECK(cp_var_reset(inline_var, token) == 0); /* its own token */
    JCHECK(get_here(inline_var) == &inline_job_value);
    cp_token_free(token);
    return NULL;
}

static void *inline_job(void *p)
{
    struct inline_run *k = p;
    JCHECK(cp_var_set(inline_var, &inline_job_value, &k->job_token) == 0);
    run_child(k->pool, k->future, inline_task, k);
    k->job_after = get_here(inline_var);
    JCHECK(cp_var_reset(inline_var, k->job_token) == 0);
    JCHECK(get_here(inline_var) == UNTOUCHED);
    cp_token_free(k->job_token);
    return NULL;
}

static void an_inline_child_behaves_as_in_its_own_frame(unsigned threads, bool future)
{
    inline_var = cp_var_new("inline", NULL);
    cr_assert_not_null(inline_var);
    cp_pool *pool = new_pool(threads);
    for (int rep = 0; rep < 200; rep++) {
        struct inline_run k = {.pool = pool, .future = future, .rc_reset = 1};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, inline_job, &k, &f), 0);
        wait_ok(f);
        jobs_ok();
        cr_assert_eq(k.rc_reset, CP_ETOKEN_CONTEXT, "the spawner's token: %s",
                     cp_strerror(k.rc_reset));
        cr_assert_eq(k.early, &inline_job_value, "a task spawned before the set");
        cr_assert_eq(k.late, &inline_task_value, "a task spawned after the set");
        cr_assert_eq(k.in_copy, &inline_other_value);
        cr_assert_eq(k.job_after, &inline_job_value, "the task's set reached the job");
    }
    free_pool(pool);
    cp_var_free(inline_var);
}

Test(task, an_inline_task_behaves_as_in_its_own_frame_on_one_worker, .timeout = 30)
{
    an_inline_child_behaves_as_in_its_own_frame(1, false);
}

Test(task, an_inline_task_behaves_as_in_its_own_frame_on_two_workers, .timeout = 30)
{
    an_inline_child_behaves_as_in_its_own_frame(2, false);
}

Test(future, a_job_its_waiter_runs_behaves_as_in_its_own_frame_on_one_worker,
     .timeout = 30)
{
    an_inline_child_behaves_as_in_its_own_frame(1, true);
}

Test(future, a_job_its_waiter_runs_behaves_as_in_its_own_frame_on_two_workers,
     .timeout = 30)
{
    an_inline_child_behaves_as_in_its_own_frame(2, true);
}

/* The end of an inline task's frame frees the values only the frame held;
 * a free_value run then is in the spawner's context, as the end of any
 * frame leaves it, and its set lands there (found by a review: the run,
 * still open, made its frame again, and the spawner was left in a context
 * on the dead stack of cp_sync). The same for a job its waiter runs. */
static cp_var *dropped_var, *mark_var;
static int dropped_value, mark_value;

static void mark_on_free(void *p)
{
    JCHECK(p == &dropped_value);
    JCHECK(cp_var_set(mark_var, &mark_value, NULL) == 0);
}

static void *set_dropped(void *p)
{
    JCHECK(cp_var_set(dropped_var, &dropped_value, NULL) == 0);
    return p;
}

struct child_that_sets {
    cp_pool *pool;
    bool future; /* the child is a job, not a frame task */
};

static void *run_a_child_that_sets(void *p)
{
    struct child_that_sets *k = p;
    run_child(k->pool, k->future, set_dropped, NULL);
    void *seen = get_here(mark_var);
    JCHECK(get_here(dropped_var) == UNTOUCHED);
    JCHECK(cp_var_set(mark_var, NULL, NULL) == 0); /* the job's context works on */
    JCHECK(get_here(mark_var) == NULL);
    return seen;
}

Test(task, a_free_value_run_as_an_inline_tasks_frame_ends_sets_in_its_spawners_context,
     .timeout = 30)
{
    dropped_var = cp_var_new("dropped", mark_on_free);
    mark_var = cp_var_new("mark", NULL);
    cp_pool *pool = new_pool(1);
    for (int rep = 0; rep < 100; rep++) {
        struct child_that_sets k = {pool, rep % 2 == 1};
        cp_future *f = NULL;
        cr_assert_eq(cp_pool_submit(pool, run_a_child_that_sets, &k, &f), 0);
        cr_assert_eq(wait_ok(f), &mark_value, "%s", k.future ? "a job" : "a task");
        jobs_ok();
    }
    free_pool(pool);
    cp_var_free(dropped_var);
    cp_var_free(mark_var);
}

Test(task, child_sees_the_spawners_context_and_keeps_its_changes, .timeout = 30)
{
    static int v1;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_set(v, &v1, NULL), 0);
    cp_pool *pool = new_pool(2);
    struct read_var rv = {v};
    cp_task t;
    cr_assert_eq(cp_spawn(pool, &t, read_var_job, &rv), 0);
    void *result = NULL;
    cr_assert_eq(cp_sync(&t, &result), 0);
    cr_assert_eq(result, &v1);
    cr_assert_eq(cp_spawn(pool, &t, set_var_job, &rv), 0);
    cr_assert_eq(cp_sync(&t, &result), 0);
    cr_assert_eq(get_here(v), &v1, "a task's set reached its spawner");
    jobs_ok();
    free_pool(pool);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Options and stats                                                         */

Test(options, zero_threads_means_one_per_online_cpu, .timeout = 30)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_gt(cpus, 0);
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = 0, .name = NULL};
    cr_assert_eq(cp_pool_new(&pool, &options), 0);
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.threads, (unsigned)cpus);
    free_pool(pool);
    cr_assert_eq(cp_pool_new(&pool, NULL), 0);
    stats_of(pool, &st);
    cr_assert_eq(st.threads, (unsigned)cpus);
    cr_assert_eq(st.submitted, 0);
    cr_assert_eq(st.completed, 0);
    free_pool(pool);
}

enum { MAX_NAMED = 4 };

struct names {
    pthread_barrier_t all_here;
    atomic_int next;
    char name[MAX_NAMED][16];
    cpu_set_t cpus[MAX_NAMED]; /* where each may run */
};

static void *read_name_job(void *p)
{
    struct names *n = p;
    /* Every job of the round waits here, so each holds its own worker. */
    pthread_barrier_wait(&n->all_here);
    int i = atomic_fetch_add(&n->next, 1);
    JCHECK(i < MAX_NAMED);
    if (i < MAX_NAMED) {
        JCHECK(pthread_getname_np(pthread_self(), n->name[i], sizeof n->name[i]) == 0);
        JCHECK(sched_getaffinity(0, sizeof n->cpus[i], &n->cpus[i]) == 0);
    }
    return NULL;
}

/* Run one job on each of the pool's `threads` workers; collect the names
 * and the CPUs each may run on. */
static void worker_names_pinned(const char *prefix, unsigned threads, bool pin,
                                struct names *n)
{
    cp_pool *pool = NULL;
    cp_pool_options options = {.threads = threads, .name = prefix, .pin = pin};
    cr_assert_eq(cp_pool_new(&pool, &options), 0);
    memset(n, 0, sizeof *n);
    cr_assert_eq(pthread_barrier_init(&n->all_here, NULL, threads), 0);
    cp_future *f[MAX_NAMED];
    for (unsigned i = 0; i < threads; i++)
        cr_assert_eq(cp_pool_submit(pool, read_name_job, n, &f[i]), 0);
    for (unsigned i = 0; i < threads; i++)
        wait_ok(f[i]);
    jobs_ok();
    pthread_barrier_destroy(&n->all_here);
    free_pool(pool);
}

static void worker_names(const char *prefix, unsigned threads, struct names *n)
{
    worker_names_pinned(prefix, threads, false, n);
}

static bool has_name(const struct names *n, unsigned count, const char *name)
{
    for (unsigned i = 0; i < count; i++)
        if (strcmp(n->name[i], name) == 0)
            return true;
    return false;
}

Test(options, workers_are_named_prefix_dash_index, .timeout = 30)
{
    struct names n;
    worker_names("pool", 3, &n);
    cr_assert(has_name(&n, 3, "pool-0"), "names: %s %s %s", n.name[0], n.name[1], n.name[2]);
    cr_assert(has_name(&n, 3, "pool-1"), "names: %s %s %s", n.name[0], n.name[1], n.name[2]);
    cr_assert(has_name(&n, 3, "pool-2"), "names: %s %s %s", n.name[0], n.name[1], n.name[2]);
}

Test(options, default_worker_name_is_cp_worker, .timeout = 30)
{
    struct names n;
    worker_names(NULL, 1, &n);
    cr_assert_str_eq(n.name[0], "cp-worker-0");
    /* An empty name too, not "-0". */
    worker_names("", 1, &n);
    cr_assert_str_eq(n.name[0], "cp-worker-0");
}

Test(options, worker_names_are_cut_at_15_characters_keeping_the_index, .timeout = 30)
{
    struct names n;
    worker_names("abcdefghijklm", 2, &n); /* 13 + "-i": exactly 15 */
    cr_assert(has_name(&n, 2, "abcdefghijklm-0"), "names: %s %s", n.name[0], n.name[1]);
    cr_assert(has_name(&n, 2, "abcdefghijklm-1"), "names: %s %s", n.name[0], n.name[1]);
    /* Longer: the prefix is cut, not the index. */
    worker_names("abcdefghijklmnopqrstuvwxyz", 2, &n);
    cr_assert(has_name(&n, 2, "abcdefghijklm-0"), "names: %s %s", n.name[0], n.name[1]);
    cr_assert(has_name(&n, 2, "abcdefghijklm-1"), "names: %s %s", n.name[0], n.name[1]);
    /* UTF-8: no half character. Seven 2-byte characters (14 bytes), 13
     * bytes of room: six of them stay. */
    worker_names("\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9", 1, &n);
    cr_assert_str_eq(n.name[0], "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9-0");
    /* A 3-byte character across the cut goes whole: 12 + 3 bytes. */
    worker_names("abcdefghijkl\u20ac", 1, &n);
    cr_assert_str_eq(n.name[0], "abcdefghijkl-0");
}

/* The CPU that comes k-th (from 0) in set, or -1. */
static int kth_cpu(const cpu_set_t *set, int k)
{
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, set) && k-- == 0)
            return c;
    return -1;
}

Test(options, pin_puts_worker_i_on_the_i_th_cpu_round_robin, .timeout = 30)
{
    cpu_set_t mine;
    cr_assert_eq(sched_getaffinity(0, sizeof mine, &mine), 0);
    int ncpu = CPU_COUNT(&mine);
    struct names n;
    worker_names_pinned("pin", MAX_NAMED, true, &n);
    for (unsigned j = 0; j < MAX_NAMED; j++) {
        unsigned i = (unsigned)atoi(n.name[j] + strlen("pin-"));
        cr_assert_eq(CPU_COUNT(&n.cpus[j]), 1, "%s may run on %d CPUs", n.name[j],
                     CPU_COUNT(&n.cpus[j]));
        cr_assert(CPU_ISSET(kth_cpu(&mine, (int)(i % (unsigned)ncpu)), &n.cpus[j]),
                  "%s is not on CPU %d", n.name[j], kth_cpu(&mine, (int)(i % (unsigned)ncpu)));
    }
}

Test(options, without_pin_workers_may_run_where_their_creator_may, .timeout = 30)
{
    cpu_set_t mine;
    cr_assert_eq(sched_getaffinity(0, sizeof mine, &mine), 0);
    struct names n;
    worker_names_pinned("free", 2, false, &n);
    for (unsigned j = 0; j < 2; j++)
        cr_assert(CPU_EQUAL(&n.cpus[j], &mine), "%s was pinned", n.name[j]);
}

/* What the hooks of a pool saw, worker by worker. */
struct hooks_seen {
    cp_pool *pool;           /* stored once cp_pool_new returned */
    cp_var *var;             /* read and set by the hooks */
    atomic_int starts[MAX_NAMED], stops[MAX_NAMED];
    pthread_t thread[MAX_NAMED];
    char name[MAX_NAMED][16];
    void *start_saw[MAX_NAMED], *stop_saw[MAX_NAMED]; /* var's value */
    int stop_submit[MAX_NAMED], stop_spawn[MAX_NAMED], stop_free[MAX_NAMED];
    unsigned long start_work;    /* loop steps on_start takes before it ends */
    atomic_bool started[MAX_NAMED]; /* on_start ended */
};

static __thread unsigned hooked_as; /* this thread's on_start: index + 1 */

static void start_hook(unsigned worker, void *p)
{
    struct hooks_seen *h = p;
    JCHECK(worker < MAX_NAMED);
    if (worker >= MAX_NAMED)
        return;
    JCHECK(atomic_fetch_add(&h->starts[worker], 1) == 0);
    JCHECK(atomic_load(&h->stops[worker]) == 0);
    h->thread[worker] = pthread_self();
    JCHECK(pthread_getname_np(pthread_self(), h->name[worker], sizeof h->name[worker]) == 0);
    h->start_saw[worker] = get_here(h->var);
    JCHECK(cp_var_set(h->var, "set by on_start", NULL) == 0);
    hooked_as = worker + 1;
    /* A slow on_start, which cp_pool_new must wait for however long it
     * takes: without the wait, it would most likely return first. (Not a
     * timing assertion: with the wait, the check cannot fail.) */
    for (volatile unsigned long i = 0; i < h->start_work; i++)
        ;
    atomic_store(&h->started[worker], true);
}

static void stop_hook(unsigned worker, void *p)
{
    struct hooks_seen *h = p;
    JCHECK(worker < MAX_NAMED);
    if (worker >= MAX_NAMED)
        return;
    JCHECK(atomic_fetch_add(&h->stops[worker], 1) == 0);
    JCHECK(atomic_load(&h->starts[worker]) == 1);
    JCHECK(pthread_equal(h->thread[worker], pthread_self()));
    JCHECK(hooked_as == worker + 1);
    h->stop_saw[worker] = get_here(h->var);
    JCHECK(cp_var_set(h->var, "set by on_stop", NULL) == 0);
    cp_future *f = UNTOUCHED;
    h->stop_submit[worker] = cp_pool_submit(h->pool, count_job, NULL, &f);
    JCHECK(f == UNTOUCHED);
    cp_task t;
    h->stop_spawn[worker] = cp_spawn(h->pool, &t, count_job, NULL);
    h->stop_free[worker] = cp_pool_free(h->pool);
}

/* Whether this job's worker ran its on_start, and what the job sees of var. */
static void *hooked_job(void *p)
{
    struct hooks_seen *h = p;
    JCHECK(hooked_as != 0);
    return get_here(h->var);
}

static cp_pool *hooked_pool(unsigned threads, struct hooks_seen *h)
{
    cp_pool_options options = {.threads = threads, .name = "hook",
                               .on_start = start_hook, .on_stop = stop_hook,
                               .hook_arg = h};
    cp_pool *pool = NULL;
    cr_assert_eq(cp_pool_new(&pool, &options), 0);
    h->pool = pool;
    return pool;
}

Test(options, on_start_runs_on_each_worker_before_pool_new_returns, .timeout = 30)
{
    struct hooks_seen h = {.var = cp_var_new("hooked", NULL), .start_work = 20000000};
    cp_pool *pool = hooked_pool(3, &h);
    for (unsigned i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "hook-%u", i);
        cr_assert(atomic_load(&h.started[i]), "cp_pool_new returned before worker %u's on_start", i);
        cr_assert_eq(atomic_load(&h.starts[i]), 1, "worker %u", i);
        cr_assert_str_eq(h.name[i], want, "on_start ran before the worker's name was set");
        cr_assert_eq(atomic_load(&h.stops[i]), 0);
    }
    /* Every job, on whichever worker, comes after that worker's on_start. */
    cp_future *f[64];
    for (int i = 0; i < 64; i++)
        cr_assert_eq(cp_pool_submit(pool, hooked_job, &h, &f[i]), 0);
    for (int i = 0; i < 64; i++)
        wait_ok(f[i]);
    free_pool(pool);
    jobs_ok();
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(atomic_load(&h.stops[i]), 1, "worker %u", i);
    cp_var_free(h.var);
}

static char creators[] = "the creator's";

/* Counts the frees of creators (the hooks' values are freed too). */
static void count_creators_free(void *p)
{
    if (p == creators)
        atomic_fetch_add(&frees, 1);
}

Test(options, hooks_run_in_a_copy_of_the_context_current_at_pool_new, .timeout = 30)
{
    struct hooks_seen h = {.var = cp_var_new("hooked", count_creators_free)};
    atomic_store(&frees, 0);
    cp_token *token;
    cr_assert_eq(cp_var_set(h.var, creators, &token), 0);
    cp_pool *pool = hooked_pool(2, &h);
    /* What on_start set stayed in its copy: not here, and no job sees it,
     * neither one from here nor one from an empty context. */
    cr_assert_eq(get_here(h.var), creators);
    cp_context *empty = cp_context_new();
    cp_future *mine, *other;
    cr_assert_eq(cp_pool_submit(pool, hooked_job, &h, &mine), 0);
    cr_assert_eq(cp_pool_submit_in(pool, empty, hooked_job, &h, &other), 0);
    cr_assert_eq(wait_ok(mine), creators);
    cr_assert_eq(wait_ok(other), UNTOUCHED);
    /* The value goes from here; the hooks' context still holds it, for
     * on_stop, which sees it as it was at cp_pool_new. */
    cr_assert_eq(cp_var_reset(h.var, token), 0);
    cp_token_free(token);
    cr_assert_eq(atomic_load(&frees), 0);
    free_pool(pool);
    jobs_ok();
    cr_assert_eq(atomic_load(&frees), 1, "the hooks' context was not let go once");
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(h.start_saw[i], creators);
        cr_assert_eq(h.stop_saw[i], creators, "on_stop saw what on_start set");
    }
    cp_context_free(empty);
    cp_var_free(h.var);
}

Test(options, on_stop_runs_outside_the_pool_its_submits_refused, .timeout = 30)
{
    struct hooks_seen h = {.var = cp_var_new("hooked", NULL)};
    cp_pool *pool = hooked_pool(2, &h);
    free_pool(pool);
    jobs_ok();
    for (unsigned i = 0; i < 2; i++) {
        cr_assert_eq(atomic_load(&h.stops[i]), 1);
        cr_assert_eq(h.stop_submit[i], CP_ESHUTDOWN, "%s", cp_strerror(h.stop_submit[i]));
        cr_assert_eq(h.stop_spawn[i], CP_ESHUTDOWN, "%s", cp_strerror(h.stop_spawn[i]));
        cr_assert_eq(h.stop_free[i], CP_EDEADLK, "%s", cp_strerror(h.stop_free[i]));
    }
    cp_var_free(h.var);
}

enum { STACK_WORKERS = 2 };

struct stacks {
    pthread_barrier_t all_here;
    atomic_int next;
    size_t size[STACK_WORKERS];
};

/* The stack size of this job's worker; every job of the round waits for the
 * others first, so each holds its own worker. */
static void *stack_size_job(void *p)
{
    struct stacks *st = p;
    pthread_barrier_wait(&st->all_here);
    int i = atomic_fetch_add(&st->next, 1);
    pthread_attr_t attr;
    JCHECK(i < STACK_WORKERS && pthread_getattr_np(pthread_self(), &attr) == 0);
    if (i < STACK_WORKERS) {
        JCHECK(pthread_attr_getstacksize(&attr, &st->size[i]) == 0);
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

Test(options, workers_get_the_stack_size_asked_for, .timeout = 30)
{
    /* Twice what a thread gets by default (from `ulimit -s`), so that a
     * worker made with the default fails. */
    pthread_attr_t dflt;
    size_t dflt_size = 0;
    cr_assert_eq(pthread_getattr_default_np(&dflt), 0);
    cr_assert_eq(pthread_attr_getstacksize(&dflt, &dflt_size), 0);
    pthread_attr_destroy(&dflt);
    size_t want = 2 * (dflt_size > (1u << 20) ? dflt_size : (1u << 20));
    cp_pool_options options = {.threads = STACK_WORKERS, .stack_size = want};
    cp_pool *pool = NULL;
    cr_assert_eq(cp_pool_new(&pool, &options), 0);
    struct stacks st = {.next = 0};
    cr_assert_eq(pthread_barrier_init(&st.all_here, NULL, STACK_WORKERS), 0);
    cp_future *f[STACK_WORKERS];
    for (int i = 0; i < STACK_WORKERS; i++)
        cr_assert_eq(cp_pool_submit(pool, stack_size_job, &st, &f[i]), 0);
    for (int i = 0; i < STACK_WORKERS; i++)
        wait_ok(f[i]);
    jobs_ok();
    for (int i = 0; i < STACK_WORKERS; i++)
        cr_assert_geq(st.size[i], want, "a worker's stack has %zu bytes, not %zu",
                      st.size[i], want);
    pthread_barrier_destroy(&st.all_here);
    free_pool(pool);
}

Test(options, a_stack_size_the_system_refuses_makes_nothing, .timeout = 30)
{
    unsigned workers_before = cp__pool_workers();
    /* Refused when set (below PTHREAD_STACK_MIN), and when a thread is
     * made (no room for a guard page). */
    size_t refused[] = {1, SIZE_MAX};
    for (int i = 0; i < 2; i++) {
        cp_pool_options options = {.threads = 2, .stack_size = refused[i]};
        cp_pool *pool = UNTOUCHED;
        int rc = cp_pool_new(&pool, &options);
        cr_assert_eq(rc, CP_EINVAL, "stack_size %zu: %s", refused[i], cp_strerror(rc));
        cr_assert_eq(pool, UNTOUCHED);
        cr_assert_eq(cp__pool_workers(), workers_before);
    }
}

/* ------------------------------------------------------------------------ */
/* fork()                                                                    */

/* What the forked child inherits and cannot free: kept in static storage,
 * so that a leak check of the child (valgrind follows it) finds it
 * reachable. In the child, the workers' stacks that held the running jobs
 * are gone. */
static struct {
    cp_future *busy, *busy2, *waiting;
    cp_context *c;
} inherited;

Test(fork, every_pool_call_in_a_forked_child_is_eshutdown, .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    atomic_int ran = 0;
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    wait_ok(f);
    /* A job still running at the fork, and one waiting behind it and
     * another: nothing finishes nor cancels them in the child. */
    blocker b, b2;
    inherited.busy = occupy_worker(pool, &b);
    inherited.busy2 = occupy_worker(pool, &b2);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &inherited.waiting), 0);
    /* A task spawned from outside, queued behind them too. */
    cp_task outside_task;
    cr_assert_eq(cp_spawn(pool, &outside_task, count_job, &ran), 0);
    inherited.c = cp_context_new();
    cp_future *busy = inherited.busy, *waiting = inherited.waiting;
    cp_context *c = inherited.c;
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int bad = 0;
        cp_future *cf = UNTOUCHED;
        cp_task t;
        int rc[5];
        rc[0] = cp_pool_submit(pool, count_job, &ran, &cf);
        rc[1] = cp_pool_submit_in(pool, c, count_job, &ran, NULL);
        rc[2] = cp_spawn(pool, &t, count_job, &ran);
        rc[3] = cp_pool_shutdown(pool, CP_SHUTDOWN_DRAIN);
        rc[4] = cp_pool_free(pool);
        for (int i = 0; i < 5; i++)
            if (rc[i] != CP_ESHUTDOWN)
                bad |= 1 << i;
        if (cf != UNTOUCHED)
            bad |= 32;
        if (runs(&ran) != 1)
            bad |= 64;
        int waited = cp_future_wait(busy, NULL);
        int timed = cp_future_wait_timeout(busy, UINT64_MAX, NULL);
        cp_future *both[2] = {busy, waiting};
        int any = cp_future_wait_any(both, 2, UINT64_MAX, NULL);
        int cancel_busy = cp_future_cancel(busy);
        int cancel_queued = cp_future_cancel(waiting);
        int synced = cp_sync(&outside_task, NULL);
        int idle = cp_pool_wait_idle(pool, UINT64_MAX);
        if (waited != CP_ESHUTDOWN || timed != CP_ESHUTDOWN || any != CP_ESHUTDOWN ||
            cancel_busy != CP_ESHUTDOWN || cancel_queued != CP_ESHUTDOWN ||
            synced != CP_ESHUTDOWN || idle != CP_ESHUTDOWN || cp_future_done(waiting))
            bad |= 128;
        if (bad)
            fprintf(stderr, "forked child: submit %d, submit_in %d, spawn %d, "
                    "shutdown %d, free %d, wait %d, wait_timeout %d, wait_any "
                    "%d, cancel %d and %d, sync %d, wait_idle %d (want %d "
                    "each), queued job done %d\n",
                    rc[0], rc[1], rc[2], rc[3], rc[4], waited, timed, any,
                    cancel_busy, cancel_queued, synced, idle, CP_ESHUTDOWN,
                    cp_future_done(waiting));
        _exit(bad);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died: status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child failures (bits: 1 submit, 2 "
                 "submit_in, 4 spawn, 8 shutdown, 16 free, 32 future written, "
                 "64 ran, 128 waits, cancels, sync and wait_idle): %#x",
                 WEXITSTATUS(status));
    /* The parent's pool is untouched, its busy job still running. */
    cr_assert_not(cp_future_done(busy));
    cr_assert_not(cp_future_done(waiting));
    gate_open(&b.g);
    gate_open(&b2.g);
    void *result = NULL;
    cr_assert_eq(cp_future_wait(busy, &result), 0);
    cr_assert_eq(result, &b);
    cp_future_free(busy);
    cr_assert_eq(wait_ok(inherited.busy2), &b2);
    cr_assert_eq(wait_ok(waiting), &ran);
    void *synced = NULL;
    cr_assert_eq(cp_sync(&outside_task, &synced), 0);
    cr_assert_eq(synced, &ran);
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &f), 0);
    wait_ok(f);
    cr_assert_eq(runs(&ran), 4);
    free_pool(pool);
    cp_context_free(c);
}

/* Posts the semaphore p; its task is final once its worker takes its next
 * item. */
static void *post_task(void *p)
{
    sem_post(p);
    return p;
}

Test(fork, what_finished_before_the_fork_is_collected_in_the_child, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    atomic_int ran = 0;
    cp_future *done = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &done), 0);
    cr_assert_eq(cp_future_wait(done, NULL), 0); /* final; the handle kept */
    sem_t posted;
    cr_assert_eq(sem_init(&posted, 0, 0), 0);
    cp_task task;
    cr_assert_eq(cp_spawn(pool, &task, post_task, &posted), 0); /* from outside */
    cr_assert_eq(sem_wait(&posted), 0);
    /* One worker: it ends the task before it takes this job. */
    cp_future *next = NULL;
    cr_assert_eq(cp_pool_submit(pool, count_job, &ran, &next), 0);
    wait_ok(next);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int bad = 0;
        void *r = NULL;
        if (cp_future_wait(done, &r) != 0 || r != &ran || !cp_future_done(done))
            bad |= 1;
        r = NULL;
        if (cp_sync(&task, &r) != 0 || r != &posted)
            bad |= 2;
        _exit(bad);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died: status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child failures (bits: 1 the job's wait, "
                 "2 the task's sync): %#x", WEXITSTATUS(status));
    cr_assert_eq(wait_ok(done), &ran);
    void *r = NULL;
    cr_assert_eq(cp_sync(&task, &r), 0);
    cr_assert_eq(r, &posted);
    free_pool(pool);
    sem_destroy(&posted);
}

/* A job forks while a frame task it spawned runs on the other worker. */
struct forking_job {
    cp_pool *pool;
    cp_task task;
    atomic_bool started;
    gate release;
    int child_sync;   /* what cp_sync returned in the child, or -1 */
};

static void *started_then_held(void *p)
{
    struct forking_job *j = p;
    atomic_store(&j->started, true);
    gate_pass(&j->release);
    return j;
}

/* Spawns and syncs no-op tasks until the held task has started: every
 * spawn and sync offers the spawner's oldest private task (the held one)
 * to an idle worker, which takes it. */
static void *offer_until_started(void *p)
{
    struct forking_job *j = p;
    while (!atomic_load(&j->started)) {
        cp_task t;
        JCHECK(cp_spawn(j->pool, &t, noop, NULL) == 0);
        JCHECK(cp_sync(&t, NULL) == 0);
    }
    return NULL;
}

static void *fork_while_a_task_runs_elsewhere(void *p)
{
    struct forking_job *j = p;
    JCHECK(cp_spawn(j->pool, &j->task, started_then_held, j) == 0);
    cp_task offer;
    JCHECK(cp_spawn(j->pool, &offer, offer_until_started, j) == 0);
    JCHECK(cp_sync(&offer, NULL) == 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* The forking thread is this worker still, in the child: its
         * spawn on the pool it no longer has is refused too. */
        cp_task late;
        _exit(cp_sync(&j->task, NULL) == CP_ESHUTDOWN &&
                      cp_spawn(j->pool, &late, noop, NULL) == CP_ESHUTDOWN
                  ? 0
                  : 1);
    }
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
        j->child_sync = WEXITSTATUS(status);
    gate_open(&j->release);
    void *r = NULL;
    JCHECK(cp_sync(&j->task, &r) == 0 && r == j);
    return NULL;
}

/* In a forked child, a new pool's tasks carry the child's fork generation:
 * a task spawned from outside it, and tasks a job offers to its idle
 * worker, sync with their results (mutation testing: with the generation
 * not stored, or stored as 0, their syncs returned CP_ESHUTDOWN or
 * crashed). */
static void *busy_task(void *p)
{
    volatile unsigned x = 0;
    for (unsigned i = 0; i < 5000; i++)
        x += i;
    return p;
}

struct fan {
    cp_pool *pool;
    int bad;
};

static void *fan_out_and_sync(void *p)
{
    struct fan *f = p;
    cp_task t[64];
    for (int i = 0; i < 64; i++)
        if (cp_spawn(f->pool, &t[i], busy_task, &t[i]) != 0)
            f->bad |= 1;
    for (int i = 63; i >= 0; i--) {
        void *r = NULL;
        if (cp_sync(&t[i], &r) != 0 || r != &t[i])
            f->bad |= 2;
    }
    return NULL;
}

Test(fork, a_new_pool_in_a_forked_child_runs_and_syncs_its_tasks, .timeout = 30)
{
    /* A pool made before the fork: the child's generation is then not 0.
     * Static: the child inherits it (see inherited). */
    static cp_pool *parents;
    parents = new_pool(1);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int bad = 0;
        cp_pool *pool = NULL;
        cp_pool_options options = {.threads = 2};
        if (cp_pool_new(&pool, &options) != 0)
            _exit(64);
        for (int round = 0; round < 20; round++) {
            cp_task t;
            void *r = NULL;
            if (cp_spawn(pool, &t, busy_task, &t) != 0 || cp_sync(&t, &r) != 0 || r != &t)
                bad |= 1;
            struct fan f = {pool, 0};
            cp_future *job = NULL;
            if (cp_pool_submit(pool, fan_out_and_sync, &f, &job) != 0 ||
                cp_future_wait(job, NULL) != 0)
                bad |= 2;
            cp_future_free(job);
            bad |= f.bad << 2;
        }
        if (cp_pool_free(pool) != 0)
            bad |= 16;
        _exit(bad);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died: status %#x", status);
    cr_assert_eq(WEXITSTATUS(status), 0, "child failures (bits: 1 outside task, 2 job, "
                 "4 spawn in the job, 8 sync in the job, 16 free, 64 new pool): %#x",
                 WEXITSTATUS(status));
    free_pool(parents);
}

/* A job forks while its tasks are private (spawned while the other worker
 * was busy) and that worker is parked. In the child, a sync must not offer
 * the other private task to the idle worker the pool's copied counts show:
 * queued, it would be refused (CP_ESHUTDOWN); kept, both syncs run their
 * tasks. (Mutation testing: without the check in offer_private, the second
 * sync returned CP_ESHUTDOWN.) */
struct private_fork {
    cp_pool *pool;
    sem_t spawned;
    gate go;
    int child_status; /* the child's exit status, or -1 */
};

static void *fork_with_private_tasks(void *p)
{
    struct private_fork *j = p;
    cp_task t2, t3;
    JCHECK(cp_spawn(j->pool, &t2, noop, &t2) == 0);
    JCHECK(cp_spawn(j->pool, &t3, noop, &t3) == 0);
    sem_post(&j->spawned);
    gate_pass(&j->go); /* the other worker parks meanwhile */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        void *r = NULL;
        int bad = cp_sync(&t3, &r) != 0 || r != &t3; /* newest first */
        if (cp_sync(&t2, &r) != 0 || r != &t2)
            bad |= 2;
        _exit(bad);
    }
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
        j->child_status = WEXITSTATUS(status);
    void *r = NULL;
    JCHECK(cp_sync(&t3, &r) == 0 && r == &t3);
    JCHECK(cp_sync(&t2, &r) == 0 && r == &t2);
    return NULL;
}

Test(fork, private_tasks_of_a_job_that_forks_run_at_their_syncs_in_the_child,
     .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    blocker b;
    cp_future *blocked = occupy_worker(pool, &b); /* the job's tasks stay private */
    struct private_fork j = {.pool = pool, .go = GATE_INITIALIZER, .child_status = -1};
    cr_assert_eq(sem_init(&j.spawned, 0, 0), 0);
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, fork_with_private_tasks, &j, &f), 0);
    cr_assert_eq(sem_wait(&j.spawned), 0);
    cp_pool_stats st;
    stats_of(pool, &st);
    gate_open(&b.g);
    wait_ok(blocked);
    let_a_worker_park(pool, st.parks); /* the blocker's worker, idle now */
    gate_open(&j.go);
    wait_ok(f);
    cr_assert_eq(j.child_status, 0, "child failures (bits: 1 the newer task's sync, "
                 "2 the older's; -1: the child did not exit): %d", j.child_status);
    free_pool(pool);
    sem_destroy(&j.spawned);
}

Test(fork, a_sync_in_a_child_forked_by_a_job_of_a_task_run_elsewhere_is_eshutdown,
     .timeout = 30)
{
    cp_pool *pool = new_pool(2);
    struct forking_job j = {.pool = pool, .release = GATE_INITIALIZER, .child_sync = -1};
    cp_future *f = NULL;
    cr_assert_eq(cp_pool_submit(pool, fork_while_a_task_runs_elsewhere, &j, &f), 0);
    wait_ok(f);
    cr_assert_eq(j.child_sync, 0, "the child's sync hung or did not return CP_ESHUTDOWN "
                 "(exit status %d; -1: the child did not exit)", j.child_sync);
    free_pool(pool);
}

/* ------------------------------------------------------------------------ */
/* NULL arguments                                                            */

Test(null, pool_functions_reject_null, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    atomic_int ran = 0;
    cp_context *c = cp_context_new();
    cp_future *f = UNTOUCHED;

    cr_assert_eq(cp_pool_new(NULL, NULL), CP_EINVAL);
    cr_assert_eq(cp_pool_submit(NULL, count_job, &ran, &f), CP_EINVAL);
    cr_assert_eq(cp_pool_submit(pool, NULL, &ran, &f), CP_EINVAL);
    cr_assert_eq(cp_pool_submit_in(NULL, c, count_job, &ran, &f), CP_EINVAL);
    cr_assert_eq(cp_pool_submit_in(pool, NULL, count_job, &ran, &f), CP_EINVAL);
    cr_assert_eq(cp_pool_submit_in(pool, c, NULL, &ran, &f), CP_EINVAL);
    cr_assert_eq(f, UNTOUCHED);
    cr_assert_eq(cp_future_wait(NULL, NULL), CP_EINVAL);
    cr_assert_eq(cp_future_wait_timeout(NULL, 0, NULL), CP_EINVAL);
    cr_assert_eq(cp_future_wait_timeout(NULL, 1000, NULL), CP_EINVAL);
    cr_assert_not(cp_future_done(NULL));
    cr_assert_eq(cp_future_cancel(NULL), CP_EINVAL);
    cp_future_free(NULL);
    cr_assert_eq(cp_pool_shutdown(NULL, CP_SHUTDOWN_DRAIN), CP_EINVAL);
    cr_assert_eq(cp_pool_shutdown(NULL, CP_SHUTDOWN_CANCEL), CP_EINVAL);
    cp_pool_stats st;
    cr_assert_eq(cp_pool_get_stats(NULL, &st), CP_EINVAL);
    cr_assert_eq(cp_pool_get_stats(pool, NULL), CP_EINVAL);
    cr_assert_eq(cp_pool_free(NULL), 0);
    pthread_t th;
    cr_assert_eq(cp_thread_create(NULL, NULL, count_job, &ran), CP_EINVAL);
    cr_assert_eq(cp_thread_create(&th, NULL, NULL, &ran), CP_EINVAL);
    cp_task t;
    cr_assert_eq(cp_spawn(NULL, &t, count_job, &ran), CP_EINVAL);
    cr_assert_eq(cp_spawn(pool, NULL, count_job, &ran), CP_EINVAL);
    cr_assert_eq(cp_spawn(pool, &t, NULL, &ran), CP_EINVAL);
    cr_assert_eq(cp_sync(NULL, NULL), CP_EINVAL);

    /* None of that counted or ran anything. */
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, 0);
    free_pool(pool);
    cr_assert_eq(runs(&ran), 0);
    cp_context_free(c);
}

/* ------------------------------------------------------------------------ */
/* Out of memory                                                             */

/* Hooks that count their calls in the atomic_int pair hook_arg. */
static void count_start(unsigned worker, void *p)
{
    (void)worker;
    atomic_fetch_add(&((atomic_int *)p)[0], 1);
}

static void count_stop(unsigned worker, void *p)
{
    (void)worker;
    atomic_fetch_add(&((atomic_int *)p)[1], 1);
}

/* The hook fails each worker thread's creation too (alloc.h), so the calls
 * that fail after starting workers must join them. Workers are counted by
 * the library (cp__pool_workers: created, not yet joined), not by listing
 * /proc/self/task: the kernel lets pthread_join return before it takes the
 * thread off that list, so a list read just after a join can still hold the
 * joined thread. */
Test(oom, pool_new_fails_cleanly_at_every_allocation, .timeout = 60)
{
    unsigned workers_before = cp__pool_workers();
    /* The hooks' context holds a value (a leak check finds it if a
     * failure keeps it), and every worker started and stopped. */
    atomic_int hooks[2] = {0, 0};
    cp_pool_options options = {.threads = 4, .name = "oom", .on_start = count_start,
                               .on_stop = count_stop, .hook_arg = hooks};
    cp_var *held = cp_var_new("held", count_free);
    cr_assert_not_null(held);
    cr_assert_eq(cp_var_set(held, &hooks, NULL), 0);
    atomic_store(&frees, 0);
    unsigned long nth;
    for (nth = 1;; nth++) {
        cp_pool *pool = UNTOUCHED;
        unsigned long before = cp__alloc_count();
        cp__alloc_fail_nth(nth);
        int rc = cp_pool_new(&pool, &options);
        cp__alloc_fail_nth(0);
        unsigned long made = cp__alloc_count() - before;
        if (rc == 0) {
            /* The first call not to fail made every allocation there is. */
            cr_assert_eq(made, nth - 1, "succeeded with %lu allocations "
                         "after failing at %lu", made, nth - 1);
            free_pool(pool);
            break;
        }
        cr_assert_eq(rc, CP_ENOMEM, "failing allocation %lu: %s", nth,
                     cp_strerror(rc));
        cr_assert_eq(pool, UNTOUCHED);
        cr_assert_eq(made, nth, "the call went on after allocation %lu failed", nth);
        cr_assert_eq(cp__pool_workers(), workers_before,
                     "workers left running after failing allocation %lu", nth);
        cr_assert_eq(atomic_load(&hooks[1]), atomic_load(&hooks[0]),
                     "%d workers started, %d stopped", atomic_load(&hooks[0]),
                     atomic_load(&hooks[1]));
        cr_assert_lt(nth, 1000);
    }
    cr_assert_gt(nth, 2, "cp_pool_new made fewer allocations than expected");
    cr_assert_eq(cp__pool_workers(), workers_before);
    cr_assert_gt(atomic_load(&hooks[0]), 4, "no failure came after a worker started");
    cr_assert_eq(atomic_load(&hooks[1]), atomic_load(&hooks[0]));
    cr_assert_eq(cp_var_set(held, NULL, NULL), 0);
    cr_assert_eq(atomic_load(&frees), 1, "the hooks' context kept the value");
    cp_var_free(held);
}

struct oom_submit {
    cp_pool *pool;
    cp_context *in;
    unsigned long nth;
    atomic_int *ran;
    int rc;
    void *future;
};

/* On a fresh thread (no job cache yet): fail its nth allocation, submit. */
static void *oom_submit_thread(void *p)
{
    struct oom_submit *o = p;
    cp_future *f = UNTOUCHED;
    cp__alloc_fail_nth(o->nth);
    o->rc = o->in ? cp_pool_submit_in(o->pool, o->in, count_job, o->ran, &f)
                  : cp_pool_submit(o->pool, count_job, o->ran, &f);
    cp__alloc_fail_nth(0);
    o->future = f;
    if (o->rc == 0) {
        JCHECK(cp_future_wait(f, NULL) == 0);
        cp_future_free(f);
    }
    return NULL;
}

Test(oom, submit_fails_cleanly_and_the_job_never_runs, .timeout = 30)
{
    cp_pool *pool = new_pool(1);
    atomic_int ran = 0;
    cp_context *c = cp_context_new();
    int enomem = 0, ok = 0;
    for (int with_context = 0; with_context < 2; with_context++)
        for (unsigned long nth = 1; nth <= 4; nth++) {
            struct oom_submit o = {pool, with_context ? c : NULL, nth, &ran, 1, NULL};
            pthread_t th;
            cr_assert_eq(pthread_create(&th, NULL, oom_submit_thread, &o), 0);
            cr_assert_eq(pthread_join(th, NULL), 0);
            jobs_ok();
            cr_assert(o.rc == 0 || o.rc == CP_ENOMEM, "failing allocation %lu: %s",
                      nth, cp_strerror(o.rc));
            if (o.rc == 0) {
                ok++;
            } else {
                enomem++;
                cr_assert_eq(o.future, UNTOUCHED);
            }
            cr_assert_eq(runs(&ran), ok, "a failed submit ran its job");
        }
    cr_assert_gt(enomem, 0, "no allocation of submit could be made to fail");
    cp_pool_stats st;
    stats_of(pool, &st);
    cr_assert_eq(st.submitted, (uint64_t)ok);
    free_pool(pool);
    cr_assert_eq(runs(&ran), ok);
    cp_context_free(c);
}
