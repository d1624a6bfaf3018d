/* bench_context.c - workload 1: the context operations, in ns per operation,
 * beside the floors they are judged against.
 *
 * Every figure is one timed loop of OPS operations divided by OPS. The
 * ctxpool loops run inside a context prepared for them with cp_context_run
 * (so each case sees exactly the variables it names) and call libctxpool.so
 * as any program does: through the header's inline gets (a hit makes no
 * call), and through the PLT for everything else. Results are summed and
 * checked after each loop, so the compiler cannot drop the calls and a
 * wrong value fails the program. The rows of ctx-get, ctx-set and ctx-copy
 * run interleaved with their floors, and their ratios are to a floor.
 *
 *   ctx-get   cp_var_get hits with 1 and with 1,000 variables set, hits on
 *             two variables in alternation, cp_var_get_or falling back on an
 *             unset variable; floors: a __thread read through a call into a
 *             shared library (floor.c, bench/libfloor.so) and
 *             pthread_getspecific.
 *   ctx-set   cp_var_set with a token, cp_var_reset, cp_token_free, of a
 *             variable not set in a context where 1 or 1,000 others are;
 *             floor: malloc + free of 64 bytes. With 1 other the new key
 *             sits at the trie's root, or one level down beside the other
 *             (1 process in 32: their hashes, which mix the variables'
 *             addresses, share a first chunk); with 1,000 it sits two or
 *             three levels down.
 *   ctx-copy  cp_copy_context + cp_context_free with 1, 1,000 and 10,000
 *             variables set; floor: malloc + free of 64 bytes.
 *   ctx-run   cp_context_run of an empty function.
 */
#include "config.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include <ctxpool.h>

#include "floor.h"
#include "harness.h"

#define OPS 5000000u
#define MANY_VARS 10000

static cp_var *vars[MANY_VARS];
static int values[MANY_VARS]; /* vars[i] is set to &values[i] */
static pthread_key_t key;

static void *set_vars(void *arg)
{
    size_t n = (size_t)(uintptr_t)arg;
    for (size_t i = 0; i < n; i++)
        BENCH_CHECK(cp_var_set(vars[i], &values[i], NULL) == 0, "cp_var_set");
    return NULL;
}

/* A new context in which vars[0..n-1] are set. */
static cp_context *context_with(size_t n)
{
    cp_context *c = cp_context_new();
    BENCH_CHECK(c != NULL, "cp_context_new");
    BENCH_CHECK(cp_context_run(c, set_vars, (void *)(uintptr_t)n, NULL) == 0,
                "cp_context_run");
    return c;
}

/* One case: loop(arg) runs OPS operations on var inside ctx (or, for NULL
 * ctx, in the thread's own context) and stores ns per operation in ns. */
struct ctx_case {
    cp_context *ctx;
    void *(*loop)(void *self);
    size_t var; /* index of the variable the loop works on */
    double ns;
};

static double run_case(void *arg)
{
    struct ctx_case *k = arg;
    if (k->ctx)
        BENCH_CHECK(cp_context_run(k->ctx, k->loop, k, NULL) == 0, "cp_context_run");
    else
        k->loop(k);
    return k->ns;
}

static void finish(struct ctx_case *k, uint64_t start, unsigned ops)
{
    k->ns = (double)(bench_now_ns() - start) / ops;
}

static void *get_loop(void *self)
{
    struct ctx_case *k = self;
    cp_var *v = vars[k->var];
    uintptr_t sum = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++) {
        void *value = NULL;
        sum += (uintptr_t)cp_var_get(v, &value) + (uintptr_t)value;
    }
    finish(k, t, OPS);
    BENCH_CHECK(sum == (uintptr_t)&values[k->var] * OPS, "cp_var_get value");
    return NULL;
}

static void *get_alternating_loop(void *self)
{
    struct ctx_case *k = self;
    cp_var *a = vars[0], *b = vars[1];
    uintptr_t sum = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS / 2; i++) {
        void *x = NULL, *y = NULL;
        sum += (uintptr_t)cp_var_get(a, &x) + (uintptr_t)x;
        sum += (uintptr_t)cp_var_get(b, &y) + (uintptr_t)y;
    }
    finish(k, t, OPS / 2 * 2);
    BENCH_CHECK(sum == ((uintptr_t)&values[0] + (uintptr_t)&values[1]) * (OPS / 2),
                "cp_var_get alternating values");
    return NULL;
}

static void *get_or_loop(void *self)
{
    struct ctx_case *k = self;
    cp_var *v = vars[k->var];
    int fallback;
    uintptr_t sum = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++)
        sum += (uintptr_t)cp_var_get_or(v, &fallback);
    finish(k, t, OPS);
    BENCH_CHECK(sum == (uintptr_t)&fallback * OPS, "cp_var_get_or fallback");
    return NULL;
}

static void *floor_tls_loop(void *self)
{
    struct ctx_case *k = self;
    uintptr_t sum = 0;
    bench_floor_set(&values[0]);
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++)
        sum += (uintptr_t)bench_floor_get();
    finish(k, t, OPS);
    BENCH_CHECK(sum == (uintptr_t)&values[0] * OPS, "__thread floor value");
    return NULL;
}

static void *floor_getspecific_loop(void *self)
{
    struct ctx_case *k = self;
    uintptr_t sum = 0;
    BENCH_CHECK(pthread_setspecific(key, &values[0]) == 0, "pthread_setspecific");
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++)
        sum += (uintptr_t)pthread_getspecific(key);
    finish(k, t, OPS);
    BENCH_CHECK(sum == (uintptr_t)&values[0] * OPS, "pthread_getspecific value");
    return NULL;
}

static void *set_reset_loop(void *self)
{
    struct ctx_case *k = self;
    cp_var *v = vars[k->var];
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++) {
        cp_token *token = NULL;
        failures += cp_var_set(v, &values[k->var], &token) != 0;
        failures += cp_var_reset(v, token) != 0;
        cp_token_free(token);
    }
    finish(k, t, OPS);
    BENCH_CHECK(failures == 0, "cp_var_set / cp_var_reset");
    BENCH_CHECK(cp_var_get_or(v, NULL) == NULL, "reset left a value behind");
    return NULL;
}

static void *copy_loop(void *self)
{
    struct ctx_case *k = self;
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++) {
        cp_context *c = cp_copy_context();
        failures += c == NULL;
        cp_context_free(c);
    }
    finish(k, t, OPS);
    BENCH_CHECK(failures == 0, "cp_copy_context");
    return NULL;
}

static void *floor_malloc_loop(void *self)
{
    struct ctx_case *k = self;
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++) {
        void *p = malloc(64);
        failures += p == NULL;
        free(p);
    }
    finish(k, t, OPS);
    BENCH_CHECK(failures == 0, "malloc");
    return NULL;
}

static void *empty(void *arg)
{
    return arg;
}

static void *run_loop(void *self)
{
    struct ctx_case *k = self;
    cp_context *c = context_with(1);
    uintptr_t sum = 0;
    uint64_t t = bench_now_ns();
    for (unsigned i = 0; i < OPS; i++) {
        void *result = NULL;
        sum += (uintptr_t)cp_context_run(c, empty, &values[0], &result) + (uintptr_t)result;
    }
    finish(k, t, OPS);
    cp_context_free(c);
    BENCH_CHECK(sum == (uintptr_t)&values[0] * OPS, "cp_context_run result");
    return NULL;
}

/* One case of a workload: its loop, and the context it runs in. */
struct ctx_row {
    const char *impl;
    size_t vars_set;         /* a new context with vars[0..n-1] set; 0: the thread's own */
    void *(*loop)(void *);
    size_t var;              /* the variable the loop works on */
};

/* Measure a workload's cases interleaved (bench_compare), so that a slow
 * spell of the machine falls on the floors as on ctxpool; the ratios are
 * to the case named baseline. */
static void compare(const char *workload, const char *baseline,
                    const struct ctx_row *rows, int n)
{
    enum { MAX_ROWS = 8 };
    struct ctx_case k[MAX_ROWS];
    struct bench_case cases[MAX_ROWS];
    BENCH_CHECK(n <= MAX_ROWS, "too many cases");
    for (int i = 0; i < n; i++) {
        cp_context *ctx = rows[i].vars_set ? context_with(rows[i].vars_set) : NULL;
        k[i] = (struct ctx_case){ctx, rows[i].loop, rows[i].var, 0};
        cases[i] = (struct bench_case){rows[i].impl, run_case, &k[i]};
    }
    bench_baseline(workload, baseline);
    bench_compare(workload, "ns/op", cases, n);
    for (int i = 0; i < n; i++)
        cp_context_free(k[i].ctx);
}

#define N_ROWS(rows) ((int)(sizeof rows / sizeof rows[0]))

static const struct ctx_row gets[] = {
    {"ctxpool hit, 1 var set", 1, get_loop, 0},
    {"ctxpool hit, 1000 set", 1000, get_loop, 500},
    {"ctxpool alternating 2", 2, get_alternating_loop, 0},
    {"ctxpool get_or, unset", 1, get_or_loop, 1},
    {"floor __thread via .so", 0, floor_tls_loop, 0},
    {"floor pthread_getspecific", 0, floor_getspecific_loop, 0},
};

/* The set and the copy have goals in ns, not ratios; the floor beside them
 * shows whether the machine ran at its usual speed while they ran. */
static const struct ctx_row sets[] = {
    {"ctxpool set+reset", 1, set_reset_loop, 1},
    {"ctxpool set+reset, 1000 set", 1000, set_reset_loop, 1000},
    {"floor malloc+free 64 B", 0, floor_malloc_loop, 0},
};

static const struct ctx_row copies[] = {
    {"ctxpool 1 var", 1, copy_loop, 0},
    {"ctxpool 1000 vars", 1000, copy_loop, 0},
    {"ctxpool 10000 vars", MANY_VARS, copy_loop, 0},
    {"floor malloc+free 64 B", 0, floor_malloc_loop, 0},
};

int main(int argc, char **argv)
{
    bench_init(argc, argv);
    for (size_t i = 0; i < MANY_VARS; i++)
        BENCH_CHECK((vars[i] = cp_var_new("bench", NULL)) != NULL, "cp_var_new");
    BENCH_CHECK(pthread_key_create(&key, NULL) == 0, "pthread_key_create");

    if (bench_wanted("ctx-get"))
        compare("ctx-get", "floor pthread_getspecific", gets, N_ROWS(gets));
    if (bench_wanted("ctx-set"))
        compare("ctx-set", "floor malloc+free 64 B", sets, N_ROWS(sets));
    if (bench_wanted("ctx-copy"))
        compare("ctx-copy", "floor malloc+free 64 B", copies, N_ROWS(copies));
    if (bench_wanted("ctx-run")) {
        struct ctx_case k = {NULL, run_loop, 0, 0};
        bench_baseline("ctx-run", "ctxpool run(empty)");
        bench_measure("ctx-run", "ctxpool run(empty)", "ns/op", run_case, &k);
    }

    pthread_key_delete(key);
    for (size_t i = 0; i < MANY_VARS; i++)
        cp_var_free(vars[i]);
    return 0;
}
