/* var_stress.c - variables' lives across threads: tokens freed here and
 * there, references kept by threads, variables freed while others hold them.
 *
 * A plain program (no Criterion) so that it also runs under ThreadSanitizer.
 * It exits 0 when every check held, else 1 with the failed check on stderr.
 *
 * THREADS threads share NV variables, each with a default. In every round a
 * thread sets two of them (with tokens), resets one or both, frees one token
 * (its thread then keeps the token's references on the variable; see "The
 * kept references" in context.c) and hands the other to the next thread,
 * which frees it there (or frees, in its place, the one the next thread has
 * not taken yet). The rounds run in the thread's base context, in a run of
 * a context of its own, and in jobs of a one-worker pool of its own, so
 * kept references are dropped at the end of runs and jobs and when another
 * variable's are kept. Then each thread holds a token of every variable and
 * keeps references on one, in its base context; the main thread frees all
 * the variables while the threads free those tokens (so a token's keep
 * races with its variable's cp_var_free), and each thread keeps what it
 * kept until it exits. Every value must be freed exactly once, and every
 * variable (its default) exactly once, after all its holders and all the
 * threads are gone: a kept reference never dropped leaves a default unfreed.
 *
 * Size: stress_ops() (check.h) rounds per thread: argv[1], else the default
 * times CP_STRESS_SCALE. The default finishes in about 3 s under TSan on two
 * cores. No sleeps: threads wait with joins and barriers.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "ctxpool.h"

#define NV 4
#define THREADS 3
#define ROUNDS_PER_STEP 20
#define DEFAULT_ROUNDS 100000ULL

/* relaxed: read only after the joins that end the threads which changed them
 * (a pool's workers end in cp_pool_free, before its thread's). */
static atomic_long values_made, values_freed;
static atomic_int default_frees[NV];
static int defaults[NV]; /* variable i's default is &defaults[i] */

static void free_value(void *p)
{
    if (p >= (void *)defaults && p < (void *)(defaults + NV)) {
        atomic_fetch_add_explicit(&default_frees[(int *)p - defaults], 1,
                                  memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&values_freed, 1, memory_order_relaxed);
    free(p);
}

static void *new_value(void)
{
    void *p = malloc(8);
    CHECK(p != NULL, "out of memory");
    atomic_fetch_add_explicit(&values_made, 1, memory_order_relaxed);
    return p;
}

static cp_var *vars[NV];
/* Tokens handed to thread i, which frees them. acq_rel exchanges: the
 * token's contents travel with it. */
static _Atomic(cp_token *) handoff[THREADS];
static pthread_barrier_t before_free;

struct rounds {
    unsigned seed;
    int self;
};

static void one_round(struct rounds *r)
{
    int i = rand_r(&r->seed) % NV, j = rand_r(&r->seed) % NV;
    cp_token *t1 = NULL, *t2 = NULL;
    CHECK(cp_var_set(vars[i], new_value(), &t1) == 0, "set");
    CHECK(cp_var_set(vars[j], new_value(), &t2) == 0, "set");
    CHECK(cp_var_reset(vars[j], t2) == 0, "reset");
    if (rand_r(&r->seed) % 2)
        CHECK(cp_var_reset(vars[i], t1) == 0, "reset");
    cp_token_free(t2);
    cp_token_free(atomic_exchange_explicit(&handoff[(r->self + 1) % THREADS], t1,
                                           memory_order_acq_rel));
    if (rand_r(&r->seed) % 3 == 0)
        cp_token_free(atomic_exchange_explicit(&handoff[r->self], NULL,
                                               memory_order_acq_rel));
}

static void *some_rounds(void *p)
{
    for (int n = 0; n < ROUNDS_PER_STEP; n++)
        one_round(p);
    return NULL;
}

struct thread_args {
    int self;
    unsigned long long steps;
};

static void *thread_main(void *p)
{
    struct thread_args *a = p;
    struct rounds r = {1234u + (unsigned)a->self, a->self};
    cp_context *c = cp_context_new();
    cp_pool *pool = NULL;
    CHECK(c != NULL && cp_pool_new(&pool, &(cp_pool_options){.threads = 1}) == 0,
          "set-up");
    for (unsigned long long step = 0; step < a->steps; step++) {
        switch (step % 3) {
        case 0:
            some_rounds(&r); /* in the base context */
            break;
        case 1:
            CHECK(cp_context_run(c, some_rounds, &r, NULL) == 0, "run");
            break;
        default: {
            cp_future *f = NULL;
            CHECK(cp_pool_submit(pool, some_rounds, &r, &f) == 0, "submit");
            CHECK(cp_future_wait(f, NULL) == 0, "wait");
            cp_future_free(f);
        }
        }
    }
    /* Hold a token of every variable, and keep references on one (the
     * creator and held[] hold it too), across its cp_var_free. */
    cp_token *held[NV], *t = NULL;
    for (int i = 0; i < NV; i++) {
        CHECK(cp_var_set(vars[i], new_value(), &held[i]) == 0, "set");
        CHECK(cp_var_reset(vars[i], held[i]) == 0, "reset");
    }
    cp_var *mine = vars[a->self % NV];
    CHECK(cp_var_set(mine, new_value(), &t) == 0, "set");
    CHECK(cp_var_reset(mine, t) == 0, "reset");
    cp_token_free(t);
    pthread_barrier_wait(&before_free);
    /* While the main thread frees the variables: each free either keeps
     * (its variable not yet freed), replacing what this thread kept, or
     * not; either way the thread keeps something until it exits. */
    for (int i = 0; i < NV; i++)
        cp_token_free(held[i]);
    cp_token_free(atomic_exchange_explicit(&handoff[a->self], NULL, memory_order_acq_rel));
    cp_context_free(c);
    CHECK(cp_pool_free(pool) == 0, "pool free");
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned long long rounds = stress_ops(argc, argv, DEFAULT_ROUNDS);
    for (int i = 0; i < NV; i++)
        CHECK((vars[i] = cp_var_new_default("v", &defaults[i], free_value)) != NULL,
              "cp_var_new_default");
    CHECK(pthread_barrier_init(&before_free, NULL, THREADS + 1) == 0, "barrier");
    pthread_t threads[THREADS];
    struct thread_args args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct thread_args){i, rounds / ROUNDS_PER_STEP + 1};
        CHECK(pthread_create(&threads[i], NULL, thread_main, &args[i]) == 0,
              "pthread_create");
    }
    pthread_barrier_wait(&before_free);
    for (int i = 0; i < NV; i++)
        cp_var_free(vars[i]); /* as the threads free their tokens */
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(threads[i], NULL) == 0, "pthread_join");

    long made = atomic_load_explicit(&values_made, memory_order_relaxed);
    long freed = atomic_load_explicit(&values_freed, memory_order_relaxed);
    CHECK(freed == made, "%ld values made, %ld freed", made, freed);
    for (int i = 0; i < NV; i++) {
        int n = atomic_load_explicit(&default_frees[i], memory_order_relaxed);
        CHECK(n == 1, "variable %d ended %d times", i, n);
    }
    pthread_barrier_destroy(&before_free);
    return 0;
}
