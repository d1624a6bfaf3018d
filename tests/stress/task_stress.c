/* task_stress.c - frame tasks and waited-for jobs against a model of their
 * contexts.
 *
 * Jobs run random trees of children (depth up to 5, up to 4 open at once):
 * frame tasks (cp_spawn/cp_sync) and jobs they wait for (cp_pool_submit,
 * cp_future_wait), and every job and task does random steps on a few
 * variables: gets, sets with and without tokens, resets of its own tokens,
 * spawns and syncs. Each keeps a model of its context: a child's starts as
 * its parent's model at the spawn, and every get is checked against it.
 * On one worker every task is private and its spawner runs it inline at
 * cp_sync, and every job is run by its waiter, sharing the parent's context
 * until it sets something (run_captured in src/pool.c); on two, some are
 * stolen and run in frames of their own, or lazily over the thief's
 * context when that has the map they captured. All must give the model's
 * answers. One of the variables holds heap boxes whose destructor counts:
 * at the end, frees == boxes made, so a value dropped twice or never (a
 * frame made or left wrong) fails too. Every other destructor run sets a
 * variable outside the model in whatever context is current then, and
 * copies that context (as at the end of a child's frame, where the parent's
 * context is current again: the reference the child held on it must not go
 * to the capture batch then, helper-61).
 *
 * Size: stress_ops() (check.h): argv[1] or CP_STRESS_SCALE times
 * DEFAULT_JOBS jobs a pool; under TSan a tenth. A watchdog (watchdog.h)
 * turns a hang into a failure.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "ctxpool.h"
#include "check.h"
#include "watchdog.h"

#define DEFAULT_JOBS 40000
#define TSAN_DIVISOR 10
#define VARS 5
#define BOXED 0       /* vars[BOXED] holds heap boxes */
#define VALUES 32
#define MAX_DEPTH 5
#define MAX_OPEN 4    /* tasks open at once in one job or task */
#define MAX_TOKENS 6

static cp_var *vars[VARS];
static cp_var *outside; /* set by box_free, not in the model */
static int values[VALUES];
static cp_pool *pool;
static atomic_long boxes_made, boxes_freed;

static void box_free(void *box)
{
    free(box);
    long n = atomic_fetch_add_explicit(&boxes_freed, 1, memory_order_relaxed);
    if (n % 2) {
        CHECK(cp_var_set(outside, &values[n % VALUES], NULL) == 0, "a destructor's set");
        cp_context_free(cp_copy_context());
    }
}

struct model {
    void *v[VARS];
};

struct scope {
    struct model m;
    uint64_t rng;
    int depth;
};

static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void check_model(const struct scope *sc, const char *where)
{
    for (int i = 0; i < VARS; i++) {
        void *got = cp_var_get_or(vars[i], NULL);
        CHECK(got == sc->m.v[i], "%s, depth %d: variable %d is %p, the model says %p",
              where, sc->depth, i, got, sc->m.v[i]);
    }
}

static void *new_value(struct scope *sc, int var)
{
    if (var != BOXED)
        return &values[next_random(&sc->rng) % VALUES];
    int *box = malloc(sizeof *box);
    CHECK(box != NULL, "malloc");
    atomic_fetch_add_explicit(&boxes_made, 1, memory_order_relaxed);
    return box;
}

static void *task_main(void *p);

/* A child, open: a frame task, or a job (future). */
struct child {
    cp_task task;
    cp_future *future; /* NULL: the child is the task */
};

/* Wait for c, whose scope is kid: the task's sync, the job's wait. */
static void end_child(struct child *c, struct scope *kid)
{
    void *result = NULL;
    if (c->future) {
        CHECK(cp_future_wait(c->future, &result) == 0 && result == kid, "cp_future_wait");
        cp_future_free(c->future);
    } else {
        CHECK(cp_sync(&c->task, &result) == 0 && result == kid, "cp_sync");
    }
}

/* A job's or task's random steps; every child it starts is waited for. */
static void run_scope(struct scope *sc)
{
    struct child children[MAX_OPEN];
    struct scope kids[MAX_OPEN];
    int open = 0;
    cp_token *tokens[MAX_TOKENS];
    int token_var[MAX_TOKENS];
    void *before[MAX_TOKENS];
    int ntokens = 0;
    int steps = 3 + (int)(next_random(&sc->rng) % 8);
    for (int s = 0; s < steps; s++) {
        watchdog_tick();
        unsigned op = (unsigned)(next_random(&sc->rng) % 10);
        int var = (int)(next_random(&sc->rng) % VARS);
        if (op < 3) {
            check_model(sc, "a get");
        } else if (op < 5) {
            void *v = new_value(sc, var);
            if (ntokens < MAX_TOKENS && next_random(&sc->rng) % 2) {
                CHECK(cp_var_set(vars[var], v, &tokens[ntokens]) == 0, "cp_var_set");
                token_var[ntokens] = var;
                before[ntokens++] = sc->m.v[var];
            } else {
                CHECK(cp_var_set(vars[var], v, NULL) == 0, "cp_var_set");
            }
            sc->m.v[var] = v;
        } else if (op < 6 && ntokens > 0) {
            /* The newest token: the model then only restores its value. */
            ntokens--;
            CHECK(cp_var_reset(vars[token_var[ntokens]], tokens[ntokens]) == 0, "cp_var_reset");
            sc->m.v[token_var[ntokens]] = before[ntokens];
            cp_token_free(tokens[ntokens]);
        } else if (op < 8 && open < MAX_OPEN && sc->depth < MAX_DEPTH) {
            kids[open] = (struct scope){sc->m, next_random(&sc->rng) | 1, sc->depth + 1};
            struct child *c = &children[open];
            c->future = NULL;
            if (next_random(&sc->rng) % 2)
                CHECK(cp_pool_submit(pool, task_main, &kids[open], &c->future) == 0,
                      "cp_pool_submit");
            else
                CHECK(cp_spawn(pool, &c->task, task_main, &kids[open]) == 0, "cp_spawn");
            open++;
        } else if (open > 0) {
            open--;
            end_child(&children[open], &kids[open]);
            check_model(sc, "after a wait");
        }
    }
    while (open > 0) {
        open--;
        end_child(&children[open], &kids[open]);
    }
    check_model(sc, "the end");
    while (ntokens > 0) {
        ntokens--;
        CHECK(cp_var_reset(vars[token_var[ntokens]], tokens[ntokens]) == 0, "cp_var_reset");
        sc->m.v[token_var[ntokens]] = before[ntokens];
        cp_token_free(tokens[ntokens]);
    }
    check_model(sc, "the end, tokens reset");
}

static void *task_main(void *p)
{
    struct scope *sc = p;
    check_model(sc, "a task's start");
    run_scope(sc);
    return p;
}

static void *job_main(void *p)
{
    struct scope sc = {{{NULL}}, (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15u | 1, 0};
    run_scope(&sc);
    return NULL;
}

static void run_pool(unsigned threads, unsigned long long jobs)
{
    enum { BATCH = 64 };
    cp_pool_options options = {.threads = threads};
    CHECK(cp_pool_new(&pool, &options) == 0, "cp_pool_new");
    for (unsigned long long done = 0; done < jobs; done += BATCH) {
        cp_future *f[BATCH];
        for (int k = 0; k < BATCH; k++)
            CHECK(cp_pool_submit(pool, job_main, (void *)(uintptr_t)(done + (unsigned)k + 1),
                                 &f[k]) == 0,
                  "cp_pool_submit");
        for (int k = 0; k < BATCH; k++) {
            CHECK(cp_future_wait(f[k], NULL) == 0, "cp_future_wait");
            cp_future_free(f[k]);
        }
    }
    CHECK(cp_pool_free(pool) == 0, "cp_pool_free");
}

int main(int argc, char **argv)
{
    unsigned long long fallback = DEFAULT_JOBS;
#ifdef UNDER_TSAN
    fallback /= TSAN_DIVISOR;
#endif
    unsigned long long jobs = stress_ops(argc, argv, fallback);
    watchdog_start("task_stress", "a tree of tasks and jobs that never finished");
    for (int i = 0; i < VARS; i++)
        CHECK((vars[i] = cp_var_new("v", i == BOXED ? box_free : NULL)) != NULL, "cp_var_new");
    CHECK((outside = cp_var_new("outside", NULL)) != NULL, "cp_var_new");
    watchdog_phase("one worker: every child run by its parent");
    run_pool(1, jobs);
    watchdog_phase("two workers: some children stolen");
    run_pool(2, jobs);
    for (int i = 0; i < VARS; i++)
        cp_var_free(vars[i]);
    cp_var_free(outside);
    CHECK(atomic_load(&boxes_freed) == atomic_load(&boxes_made),
          "%ld boxes made, %ld freed", atomic_load(&boxes_made), atomic_load(&boxes_freed));
    printf("task_stress: %llu jobs on 1 and on 2 workers, %ld boxes made and freed\n", jobs,
           atomic_load(&boxes_made));
    return 0;
}
