/* test_context.c - the context core: variables, tokens and contexts (PEP 567).
 *
 * Each test pins one behaviour, and most mirror a sentence of Python's
 * contextvars documentation with the same outcome. Values are small structs
 * whose destructor counts its calls, so a test sees when the library frees a
 * value and that it does so exactly once. Criterion runs every test in its own
 * process, so each one starts with a fresh main-thread base context and fresh
 * counters.
 *
 * Criterion's assertions are only used on the main thread. Helper threads
 * record the line of their first failed check (TCHECK / RECORD) and hand it
 * back through their exit value, which the main thread asserts is 0.
 *
 * Allocation failure: fail_each_alloc() makes the 1st, 2nd, ... allocation of
 * a call fail until the call succeeds; every failed call must return
 * CP_ENOMEM and leave the state as it was (checked through the public
 * mapping functions and cp_var_get, and by counting destructors), and the
 * successful call must have made exactly one allocation fewer than the last
 * failing position (cp__alloc_count), which proves that every allocation it
 * makes was failed once. Leaks on those paths show up under ASan/valgrind.
 */
#define _GNU_SOURCE /* cpu_set_t, pthread_attr_setaffinity_np */
#include <criterion/criterion.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alloc.h"
#include "ctxpool.h"
#include "get_plain.h"

/* ------------------------------------------------------------------------ */
/* Counting values                                                           */

/* A value whose destructor counts. A test that leaves one in the main
 * thread's base context keeps it in static storage: the library frees what
 * that context holds at exit, after the test has returned. */
typedef struct tval {
    atomic_int frees;
} tval;

static atomic_int total_frees;

static void tval_free(void *p)
{
    tval *v = p;
    /* relaxed: the tests read the counters after a join or on this thread. */
    atomic_fetch_add_explicit(&v->frees, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&total_frees, 1, memory_order_relaxed);
}

static int frees_of(tval *v)
{
    return atomic_load_explicit(&v->frees, memory_order_relaxed);
}

static int total(void)
{
    return atomic_load_explicit(&total_frees, memory_order_relaxed);
}

/* A pointer no test ever stores, to see that an output was left untouched. */
static char untouched_mark;
#define UNTOUCHED ((void *)&untouched_mark)

/* ------------------------------------------------------------------------ */
/* Helper threads report failures through their exit value                   */

#define TCHECK(cond)                              \
    do {                                          \
        if (!(cond))                              \
            return (void *)(intptr_t)__LINE__;    \
    } while (0)

/* For threads that must still reach a barrier: remember the first failure. */
#define RECORD(failed, cond)                      \
    do {                                          \
        if (!(cond) && (failed) == 0)             \
            (failed) = __LINE__;                  \
    } while (0)

static void join_ok(pthread_t thread)
{
    void *r = UNTOUCHED;
    cr_assert_eq(pthread_join(thread, &r), 0);
    cr_assert_null(r, "helper thread failed its check at line %d",
                   (int)(intptr_t)r);
}

/* ------------------------------------------------------------------------ */
/* Doing things inside a context                                             */

struct set_args {
    cp_var *var;
    void *value;
    cp_token **token;
    int rc;
};

static void *do_set(void *p)
{
    struct set_args *a = p;
    a->rc = cp_var_set(a->var, a->value, a->token);
    return NULL;
}

/* cp_var_set inside c; returns what cp_var_set returned. */
static int set_in(cp_context *c, cp_var *var, void *value, cp_token **token)
{
    struct set_args a = {var, value, token, 1};
    cr_assert_eq(cp_context_run(c, do_set, &a, NULL), 0);
    return a.rc;
}

struct reset_args {
    cp_var *var;
    cp_token *token;
    int rc;
};

static void *do_reset(void *p)
{
    struct reset_args *a = p;
    a->rc = cp_var_reset(a->var, a->token);
    return NULL;
}

static int reset_in(cp_context *c, cp_var *var, cp_token *token)
{
    struct reset_args a = {var, token, 1};
    cr_assert_eq(cp_context_run(c, do_reset, &a, NULL), 0);
    return a.rc;
}

struct get_args {
    const cp_var *var;
    void *value;
    int rc;
};

static void *do_get(void *p)
{
    struct get_args *a = p;
    a->value = UNTOUCHED;
    a->rc = cp_var_get(a->var, &a->value);
    return NULL;
}

/* cp_var_get inside c. */
static int get_in(cp_context *c, const cp_var *var, void **value)
{
    struct get_args a = {var, NULL, 1};
    cr_assert_eq(cp_context_run(c, do_get, &a, NULL), 0);
    if (a.rc == 0)
        *value = a.value;
    else
        cr_assert_eq(a.value, UNTOUCHED, "a failed get wrote its output");
    return a.rc;
}

/* c[var], asserting c has a value for it. */
static void *value_in(const cp_context *c, const cp_var *var)
{
    void *value = UNTOUCHED;
    cr_assert_eq(cp_context_get(c, var, &value), 0, "no value for %s",
                 cp_var_name(var));
    return value;
}

/* The calling thread's current value of var, asserting there is one. */
static void *current_value(const cp_var *var)
{
    void *value = UNTOUCHED;
    cr_assert_eq(cp_var_get(var, &value), 0, "no value for %s", cp_var_name(var));
    return value;
}

static void assert_unset_here(const cp_var *var)
{
    void *value = UNTOUCHED;
    cr_assert_eq(cp_var_get(var, &value), CP_ENOENT);
    cr_assert_eq(value, UNTOUCHED);
}

static void *return_arg(void *arg)
{
    return arg;
}

/* ------------------------------------------------------------------------ */
/* ContextVar.get: lookup order                                              */

Test(var, get_without_value_or_default_is_enoent)
{
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_not_null(v);
    assert_unset_here(v);
    /* Also once the base context exists and holds another variable. */
    cp_var *other = cp_var_new("other", NULL);
    int x;
    cr_assert_eq(cp_var_set(other, &x, NULL), 0);
    assert_unset_here(v);
    cp_var_free(other);
    cp_var_free(v);
}

Test(var, get_returns_default_when_context_has_no_value)
{
    int d;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cr_assert_eq(current_value(v), &d);
    cp_var_free(v);
}

Test(var, get_returns_context_value_before_default)
{
    int d, x;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cr_assert_eq(cp_var_set(v, &x, NULL), 0);
    cr_assert_eq(current_value(v), &x);
    cp_var_free(v);
}

Test(var, get_or_fallback_wins_over_default)
{
    int d, fb;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cr_assert_eq(cp_var_get_or(v, &fb), &fb);
    cp_var_free(v);
}

Test(var, get_or_returns_context_value_before_fallback)
{
    int d, fb, x;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cr_assert_eq(cp_var_set(v, &x, NULL), 0);
    cr_assert_eq(cp_var_get_or(v, &fb), &x);
    cp_var_free(v);
}

Test(var, get_or_without_value_or_default_returns_fallback)
{
    int fb;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_get_or(v, &fb), &fb);
    cr_assert_null(cp_var_get_or(v, NULL));
    cp_var_free(v);
}

Test(var, null_value_is_a_value)
{
    int d, fb;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cr_assert_eq(cp_var_set(v, NULL, NULL), 0);
    void *value = UNTOUCHED;
    cr_assert_eq(cp_var_get(v, &value), 0);
    cr_assert_null(value);
    cr_assert_null(cp_var_get_or(v, &fb));
    cp_context *c = cp_copy_context();
    cr_assert(cp_context_contains(c, v));
    cr_assert_null(cp_context_get_or(c, v, &fb));
    cp_context_free(c);
    cp_var_free(v);
}

Test(var, get_sees_each_set_immediately)
{
    int a, b, c;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(current_value(v), &b);
    cr_assert_eq(cp_var_set(v, &c, NULL), 0);
    cr_assert_eq(current_value(v), &c);
    cp_var_free(v);
}

struct cached {
    cp_var *v;
    void *value;
    int rc;
};

static void *get_twice(void *p)
{
    struct cached *g = p;
    g->value = UNTOUCHED;
    g->rc = cp_var_get(g->v, &g->value);
    void *again = UNTOUCHED;
    if (cp_var_get(g->v, &again) != g->rc || again != g->value)
        g->rc = 99;
    return NULL;
}

Test(var, get_inside_a_run_does_not_see_a_value_read_outside_it)
{
    /* A get just before entering a context must not answer the next get
     * inside it, nor a get inside answer the next one after leaving. */
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *with = cp_context_new();
    cp_context *without = cp_context_new();
    cr_assert_eq(set_in(with, v, &b, NULL), 0);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(current_value(v), &a);
    struct cached g = {v, NULL, 1};
    cr_assert_eq(cp_context_run(with, get_twice, &g, NULL), 0);
    cr_assert_eq(g.rc, 0);
    cr_assert_eq(g.value, &b);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_context_run(without, get_twice, &g, NULL), 0);
    cr_assert_eq(g.rc, CP_ENOENT);
    cr_assert_eq(current_value(v), &a);
    cp_context_free(with);
    cp_context_free(without);
    cp_var_free(v);
}

Test(var, get_after_reset_does_not_see_the_value_read_before_it)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_var_reset(v, t), 0);
    assert_unset_here(v);
    cp_token_free(t);
    cp_var_free(v);
}

/* Reads of two variables in turn, so that each is the less recent of the
 * two the get cache keeps when it changes: every set, reset, enter and
 * leave must make the next get of either see the truth. */
struct two_vars {
    cp_var *v, *w;
    void *v_seen, *w_seen;
};

static void *read_w_then_v(void *p)
{
    struct two_vars *t = p;
    t->w_seen = current_value(t->w);
    t->v_seen = current_value(t->v);
    return NULL;
}

Test(var, gets_of_two_variables_in_turn_see_every_change_of_either)
{
    int a, b, c, x;
    cp_var *v = cp_var_new("v", NULL), *w = cp_var_new("w", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(w, &x, NULL), 0);
    for (int round = 0; round < 2; round++) {
        cr_assert_eq(current_value(v), &a);
        cr_assert_eq(current_value(w), &x); /* v is now the less recent */
    }
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(current_value(w), &x);
    cr_assert_eq(current_value(v), &b);
    cr_assert_eq(current_value(w), &x);
    cr_assert_eq(cp_var_reset(v, t), 0); /* v back to &a, v less recent */
    cr_assert_eq(current_value(v), &a);
    cp_token_free(t);
    /* Entering: inside, v has another value; w none. */
    cp_context *with = cp_context_new();
    cr_assert_eq(set_in(with, v, &c, NULL), 0);
    cr_assert_eq(set_in(with, w, &c, NULL), 0);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(current_value(w), &x);
    struct two_vars tv = {v, w, NULL, NULL};
    cr_assert_eq(cp_context_run(with, read_w_then_v, &tv, NULL), 0);
    cr_assert_eq(tv.w_seen, &c);
    cr_assert_eq(tv.v_seen, &c);
    /* Leaving: w was read inside first, v last; outside, both are ours. */
    cr_assert_eq(current_value(w), &x);
    cr_assert_eq(current_value(v), &a);
    cp_context_free(with);
    cp_var_free(v);
    cp_var_free(w);
}

/* cp_var_get and cp_var_get_or are macros over an inline cache check; the
 * library's functions behind them, reached through their addresses (as a
 * binding from another language would) or from a file compiled with
 * CP_NO_INLINE_GET (get_plain.c), must give the same answers: a hit on
 * either cache entry, a miss, a default, a fallback, bad arguments. */
static void the_functions_give_the_same_answers(int (*get)(const cp_var *, void **),
                                                void *(*get_or)(const cp_var *, void *))
{
    int a, b, d, fb;
    cp_var *v = cp_var_new("v", NULL), *w = cp_var_new("w", NULL);
    cp_var *unset = cp_var_new("unset", NULL);
    cp_var *with_default = cp_var_new_default("with default", &d, NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(w, &b, NULL), 0);
    void *x = NULL;
    cr_assert_eq(cp_var_get(v, &x), 0); /* v: the cache's newest entry */
    cr_assert_eq(x, &a);
    x = NULL;
    cr_assert_eq(get(v, &x), 0);
    cr_assert_eq(x, &a);
    cr_assert_eq(cp_var_get_or(w, &fb), &b); /* w newest, v second */
    x = NULL;
    cr_assert_eq(get(v, &x), 0);
    cr_assert_eq(x, &a);
    cr_assert_eq(get_or(w, &fb), &b);
    cr_assert_eq(get_or(v, &fb), &a);
    x = UNTOUCHED;
    cr_assert_eq(get(unset, &x), CP_ENOENT);
    cr_assert_eq(x, UNTOUCHED);
    cr_assert_eq(get_or(unset, &fb), &fb);
    cr_assert_eq(get(with_default, &x), 0);
    cr_assert_eq(x, &d);
    cr_assert_eq(get_or(with_default, &fb), &fb);
    cr_assert_eq(get(NULL, &x), CP_EINVAL);
    cr_assert_eq(cp_var_get(NULL, &x), CP_EINVAL);
    cr_assert_eq(get(v, NULL), CP_EINVAL);
    cr_assert_eq(cp_var_get(v, NULL), CP_EINVAL);
    cr_assert_eq(get_or(NULL, &fb), &fb);
    cr_assert_eq(cp_var_get_or(NULL, &fb), &fb);
    cp_var_free(v);
    cp_var_free(w);
    cp_var_free(unset);
    cp_var_free(with_default);
}

Test(var, the_functions_behind_the_inline_gets_give_the_same_answers)
{
    the_functions_give_the_same_answers(cp_var_get, cp_var_get_or);
}

Test(var, gets_compiled_without_the_inline_path_give_the_same_answers)
{
    the_functions_give_the_same_answers(plain_get, plain_get_or);
}

/* The macros take an argument with commas of its own, as the functions do. */
struct pair {
    int first, second;
};

Test(var, get_or_takes_a_compound_literal_fallback)
{
    cp_var *v = cp_var_new("v", NULL);
    const struct pair *p = cp_var_get_or(v, &(struct pair){3, 10});
    cr_assert_eq(p->first, 3);
    cr_assert_eq(p->second, 10);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* ContextVar.name                                                           */

Test(var, name_is_copied_at_creation)
{
    char name[] = "request_id";
    cp_var *v = cp_var_new(name, NULL);
    name[0] = 'X';
    cr_assert_str_eq(cp_var_name(v), "request_id");
    cr_assert_neq((const void *)cp_var_name(v), (const void *)name);
    cp_var_free(v);
}

Test(var, null_name_is_empty)
{
    cp_var *v = cp_var_new(NULL, NULL);
    cp_var *d = cp_var_new_default(NULL, NULL, NULL);
    cr_assert_not_null(v);
    cr_assert_not_null(d);
    cr_assert_str_eq(cp_var_name(v), "");
    cr_assert_str_eq(cp_var_name(d), "");
    cp_var_free(v);
    cp_var_free(d);
}

Test(var, name_of_default_var_is_kept)
{
    int d;
    cp_var *v = cp_var_new_default("with default", &d, NULL);
    cr_assert_str_eq(cp_var_name(v), "with default");
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Token                                                                     */

Test(token, var_is_the_variable_that_made_it)
{
    int x;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &x, &t), 0);
    cr_assert_not_null(t);
    cr_assert_eq(cp_token_var(t), v);
    cp_token_free(t);
    cp_var_free(v);
}

Test(token, old_value_is_the_value_before_the_set)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(t, &old), 0);
    cr_assert_eq(old, &a);
    cp_token_free(t);
    cp_var_free(v);
}

Test(token, old_value_of_first_set_is_missing)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(t, &old), CP_ENOENT);
    cr_assert_eq(old, UNTOUCHED);
    cp_token_free(t);
    cp_var_free(v);
}

Test(token, old_value_ignores_the_default)
{
    int d, a;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(t, &old), CP_ENOENT);
    cp_token_free(t);
    cp_var_free(v);
}

Test(token, set_of_the_same_value_gives_a_token_with_that_old_value)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(t, &old), 0);
    cr_assert_eq(old, &a);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(current_value(v), &a);
    cp_token_free(t);
    cp_var_free(v);
}

/* A reset to the value the context has already (the map reports the same
 * value, CP__HAMT_SAME) succeeds, changes nothing and uses the token up,
 * whether the map's item is the token's own old item or another item with
 * the same (borrowed) value. */
Test(reset, to_the_value_the_context_has_uses_the_token_up)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *same = NULL, *other = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &a, &same), 0); /* its old item is the map's */
    cr_assert_eq(cp_var_reset(v, same), 0);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_var_reset(v, same), CP_ETOKEN_USED);

    cr_assert_eq(cp_var_set(v, &b, &other), 0); /* its old item: a's */
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);   /* a new item for a */
    cr_assert_eq(cp_var_reset(v, other), 0);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_var_reset(v, other), CP_ETOKEN_USED);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(other, &old), 0);
    cr_assert_eq(old, &a);
    cp_token_free(same);
    cp_token_free(other);
    cr_assert_eq(current_value(v), &a);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* ContextVar.reset                                                          */

Test(reset, restores_the_old_value)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(current_value(v), &a);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, to_missing_removes_the_variable)
{
    int a, keep;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *other = cp_var_new("other", NULL);
    cr_assert_eq(cp_var_set(other, &keep, NULL), 0);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    assert_unset_here(v);
    cp_context *c = cp_copy_context();
    cr_assert_not(cp_context_contains(c, v));
    cr_assert_eq(cp_context_len(c), 1);
    cr_assert_eq(value_in(c, other), &keep);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(other);
}

Test(reset, to_missing_does_not_write_the_default)
{
    int d, a;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_context *c = cp_copy_context();
    cr_assert_not(cp_context_contains(c, v));
    cr_assert_eq(cp_context_len(c), 0);
    cr_assert_eq(current_value(v), &d); /* the default still answers get */
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, works_in_non_lifo_order)
{
    /* Python: t1 = v.set(1); t2 = v.set(2); v.reset(t1) -> MISSING;
     * v.reset(t2) -> 1. */
    int one, two;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t1 = NULL, *t2 = NULL;
    cr_assert_eq(cp_var_set(v, &one, &t1), 0);
    cr_assert_eq(cp_var_set(v, &two, &t2), 0);
    cr_assert_eq(cp_var_reset(v, t1), 0);
    assert_unset_here(v);
    cr_assert_eq(cp_var_reset(v, t2), 0);
    cr_assert_eq(current_value(v), &one);
    cp_token_free(t1);
    cp_token_free(t2);
    cp_var_free(v);
}

Test(reset, works_after_later_sets_of_the_variable)
{
    int a, b, c;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(cp_var_set(v, &c, NULL), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(current_value(v), &a);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, twice_with_one_token_fails_used)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(cp_var_reset(v, t), CP_ETOKEN_USED);
    cr_assert_eq(current_value(v), &b, "a refused reset changed the value");
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, with_token_of_other_var_fails)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_set(w, &b, NULL), 0);
    cr_assert_eq(cp_var_reset(w, t), CP_ETOKEN_VAR);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(current_value(w), &b);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(w);
}

Test(reset, with_token_of_other_context_fails)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0); /* in the base context */
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &b, NULL), 0);
    cr_assert_eq(reset_in(c, v, t), CP_ETOKEN_CONTEXT);
    cr_assert_eq(value_in(c, v), &b);
    cr_assert_eq(current_value(v), &a);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, with_token_of_the_original_fails_in_a_copy)
{
    /* A copy is a different Context, as in Python. */
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, &t), 0);
    cp_context *copy = cp_context_copy(c);
    cr_assert_eq(reset_in(copy, v, t), CP_ETOKEN_CONTEXT);
    cr_assert_eq(value_in(copy, v), &a);
    /* The token still works where it was made. */
    cr_assert_eq(reset_in(c, v, t), 0);
    cr_assert_not(cp_context_contains(c, v));
    cr_assert(cp_context_contains(copy, v));
    cp_context_free(copy);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, with_token_of_other_thread_base_context_fails)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    struct reset_args r = {v, t, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, do_reset, &r), 0);
    join_ok(th);
    cr_assert_eq(r.rc, CP_ETOKEN_CONTEXT);
    cr_assert_eq(current_value(v), &a);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, used_is_checked_before_other_var)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(cp_var_set(w, &b, NULL), 0);
    /* Used and made by another variable: CPython reports it used. */
    cr_assert_eq(cp_var_reset(w, t), CP_ETOKEN_USED);
    cr_assert_eq(current_value(w), &b);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(w);
}

Test(reset, other_var_is_checked_before_other_context)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cp_context *c = cp_context_new();
    /* Made by another variable and in another context: CP_ETOKEN_VAR. */
    cr_assert_eq(reset_in(c, w, t), CP_ETOKEN_VAR);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(w);
}

Test(reset, used_is_checked_before_other_context)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_context *c = cp_context_new();
    cr_assert_eq(reset_in(c, v, t), CP_ETOKEN_USED);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
}

Test(reset, used_is_checked_before_other_var_and_other_context)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_context *c = cp_context_new();
    cr_assert_eq(reset_in(c, w, t), CP_ETOKEN_USED);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(w);
}

Test(reset, refused_reset_leaves_the_token_usable)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(cp_var_reset(w, t), CP_ETOKEN_VAR);
    cp_context *c = cp_context_new();
    cr_assert_eq(reset_in(c, v, t), CP_ETOKEN_CONTEXT);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(current_value(v), &a);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
    cp_var_free(w);
}

Test(reset, does_not_free_the_token)
{
    static tval a, b; /* left in the base context: see tval */
    cp_var *v = cp_var_new("v", tval_free);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &b, &t), 0);
    cr_assert_eq(cp_var_reset(v, t), 0);
    /* The token is still there to read (ASan would see a use after free). */
    cr_assert_eq(cp_token_var(t), v);
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(t, &old), 0);
    cr_assert_eq(old, &a);
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(frees_of(&b), 1); /* replaced by the reset, held by nothing */
    cp_token_free(t);
    cp_var_free(v);
}

/* A value that owns the token of its own set (a guard that undoes itself
 * when it goes): its destructor, which the reset runs, resets that token
 * again, and may free it. A guard without var only counts its frees. */
struct guard {
    cp_var *var;
    cp_token *token;
    bool free_token;
    int again; /* what the reset from the destructor returned */
    int frees;
};

static void guard_free(void *p)
{
    struct guard *g = p;
    if (g->var) {
        g->again = cp_var_reset(g->var, g->token);
        if (g->free_token)
            cp_token_free(g->token);
    }
    g->frees++;
}

Test(reset, is_done_with_the_token_before_the_value_it_drops_is_freed)
{
    for (int free_token = 0; free_token < 2; free_token++) {
        struct guard dflt = {0};
        cp_var *v = cp_var_new_default("guarded", &dflt, guard_free);
        struct guard g = {.var = v, .free_token = free_token, .again = 1};
        cr_assert_eq(cp_var_set(v, &g, &g.token), 0);
        cr_assert_eq(cp_var_reset(v, g.token), 0);
        cr_assert_eq(g.frees, 1);
        cr_assert_eq(g.again, CP_ETOKEN_USED, "a second reset of a used token: %d",
                     g.again);
        void *value = UNTOUCHED;
        cr_assert_eq(cp_var_get(v, &value), 0);
        cr_assert_eq(value, &dflt);
        if (!free_token)
            cp_token_free(g.token);
        cp_var_free(v);
        /* Every hold on the variable was let go: it ended, with its default. */
        cr_assert_eq(dflt.frees, 1, "free_token %d", free_token);
    }
}

struct later_reset {
    cp_context *c;
    cp_var *v;
    cp_token *t;
    int rc;
};

static void *reset_in_context_thread(void *p)
{
    struct later_reset *r = p;
    struct reset_args a = {r->v, r->t, 1};
    TCHECK(cp_context_run(r->c, do_reset, &a, NULL) == 0);
    r->rc = a.rc;
    return NULL;
}

Test(reset, token_works_in_a_later_run_on_another_thread)
{
    /* The token belongs to the context, not to the run or the thread. */
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, v, &b, &t), 0);
    struct later_reset r = {c, v, t, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reset_in_context_thread, &r), 0);
    join_ok(th);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(value_in(c, v), &a);
    cp_context_free(c);
    cp_token_free(t);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Context(), copy_context(), Context.copy()                                 */

Test(context, new_is_empty)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0); /* the current one is not */
    cp_context *c = cp_context_new();
    cr_assert_not_null(c);
    cr_assert_eq(cp_context_len(c), 0);
    cr_assert_not(cp_context_contains(c, v));
    cp_iter *it = cp_context_iter(c);
    cr_assert_not(cp_iter_next(it, NULL, NULL));
    cp_iter_free(it);
    void *value;
    cr_assert_eq(get_in(c, v, &value), CP_ENOENT);
    cp_context_free(c);
    cp_var_free(v);
}

Test(context, copy_context_copies_the_current_values)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(w, &b, NULL), 0);
    cp_context *c = cp_copy_context();
    cr_assert_eq(cp_context_len(c), 2);
    cr_assert_eq(value_in(c, v), &a);
    cr_assert_eq(value_in(c, w), &b);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

Test(context, copy_context_of_a_fresh_thread_is_empty)
{
    cp_context *c = cp_copy_context();
    cr_assert_not_null(c);
    cr_assert_eq(cp_context_len(c), 0);
    cp_context_free(c);
}

Test(context, copy_context_ignores_later_sets_in_the_current_context)
{
    int a, b, x;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cp_context *c = cp_copy_context();
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(cp_var_set(w, &x, NULL), 0);
    cr_assert_eq(value_in(c, v), &a);
    cr_assert_not(cp_context_contains(c, w));
    cr_assert_eq(cp_context_len(c), 1);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

Test(context, changes_in_a_copy_context_do_not_reach_the_current_one)
{
    int a, b, x;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cp_context *c = cp_copy_context();
    cr_assert_eq(set_in(c, v, &b, NULL), 0);
    cr_assert_eq(set_in(c, w, &x, NULL), 0);
    cr_assert_eq(current_value(v), &a);
    assert_unset_here(w);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

Test(context, context_copy_is_isolated_both_ways)
{
    int a, b, c1, c2;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_context *orig = cp_context_new();
    cr_assert_eq(set_in(orig, v, &a, NULL), 0);
    cp_context *copy = cp_context_copy(orig);
    cr_assert_not_null(copy);
    cr_assert_eq(value_in(copy, v), &a);
    /* original -> copy */
    cr_assert_eq(set_in(orig, v, &b, NULL), 0);
    cr_assert_eq(set_in(orig, w, &c1, NULL), 0);
    cr_assert_eq(value_in(copy, v), &a);
    cr_assert_not(cp_context_contains(copy, w));
    /* copy -> original */
    cr_assert_eq(set_in(copy, w, &c2, NULL), 0);
    cr_assert_eq(value_in(orig, w), &c1);
    cr_assert_eq(value_in(copy, w), &c2);
    cr_assert_eq(value_in(orig, v), &b);
    cp_context_free(copy);
    cp_context_free(orig);
    cp_var_free(v);
    cp_var_free(w);
}

Test(context, values_are_not_copied)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(current_value(v), &a);
    cp_context *c = cp_copy_context();
    cp_context *d = cp_context_copy(c);
    cr_assert_eq(value_in(c, v), &a);
    cr_assert_eq(value_in(d, v), &a);
    cr_assert_eq(cp_context_get_or(d, v, NULL), &a);
    void *value = NULL;
    cr_assert_eq(get_in(d, v, &value), 0);
    cr_assert_eq(value, &a);
    cp_iter *it = cp_context_iter(d);
    cp_var *k = NULL;
    value = NULL;
    cr_assert(cp_iter_next(it, &k, &value));
    cr_assert_eq(k, v);
    cr_assert_eq(value, &a);
    cp_iter_free(it);
    cp_context_free(d);
    cp_context_free(c);
    cp_var_free(v);
}

/* ------------------------------------------------------------------------ */
/* Context.run                                                               */

Test(run, returns_the_result_of_fn)
{
    int r;
    cp_context *c = cp_context_new();
    void *result = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, return_arg, &r, &result), 0);
    cr_assert_eq(result, &r);
    cp_context_free(c);
}

static atomic_int calls;

static void *count_call(void *arg)
{
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    return arg;
}

Test(run, accepts_a_null_result)
{
    cp_context *c = cp_context_new();
    cr_assert_eq(cp_context_run(c, count_call, NULL, NULL), 0);
    cr_assert_eq(atomic_load(&calls), 1);
    cp_context_free(c);
}

struct run_changes {
    cp_var *v, *w;
    void *vv, *wv;
    int failed;
};

static void *set_two_and_read(void *p)
{
    struct run_changes *r = p;
    void *value = NULL;
    RECORD(r->failed, cp_var_set(r->v, r->vv, NULL) == 0);
    RECORD(r->failed, cp_var_set(r->w, r->wv, NULL) == 0);
    RECORD(r->failed, cp_var_get(r->v, &value) == 0 && value == r->vv);
    RECORD(r->failed, cp_var_get(r->w, &value) == 0 && value == r->wv);
    return NULL;
}

Test(run, keeps_changes_in_the_context_and_not_in_the_caller)
{
    int a, b, x;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cp_context *c = cp_copy_context();
    struct run_changes r = {v, w, &b, &x, 0};
    cr_assert_eq(cp_context_run(c, set_two_and_read, &r, NULL), 0);
    cr_assert_eq(r.failed, 0, "check at line %d failed inside the run", r.failed);
    cr_assert_eq(value_in(c, v), &b);
    cr_assert_eq(value_in(c, w), &x);
    cr_assert_eq(current_value(v), &a);
    assert_unset_here(w);
    cp_context *now = cp_copy_context();
    cr_assert_eq(cp_context_len(now), 1);
    cp_context_free(now);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

Test(run, later_runs_see_earlier_changes)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    void *value = NULL;
    cr_assert_eq(get_in(c, v, &value), 0);
    cr_assert_eq(value, &a);
    cp_context_free(c);
    cp_var_free(v);
}

struct python_example {
    cp_var *var;
    cp_context *ctx;
    void *ham;
    int failed;
};

static void *python_example_main(void *p)
{
    struct python_example *e = p;
    void *value = NULL;
    /* 'var' was set to 'spam' before copy_context() and run(). */
    RECORD(e->failed, cp_var_set(e->var, e->ham, NULL) == 0);
    RECORD(e->failed, cp_var_get(e->var, &value) == 0 && value == e->ham);
    RECORD(e->failed, cp_context_get(e->ctx, e->var, &value) == 0 &&
                          value == e->ham);
    return NULL;
}

Test(run, python_documentation_example)
{
    /* var = ContextVar('var'); var.set('spam')
     * def main(): var.set('ham'); assert var.get() == ctx[var] == 'ham'
     * ctx = copy_context(); ctx.run(main)
     * assert ctx[var] == 'ham' and var.get() == 'spam' */
    char spam[] = "spam", ham[] = "ham";
    cp_var *var = cp_var_new("var", NULL);
    cr_assert_eq(cp_var_set(var, spam, NULL), 0);
    cp_context *ctx = cp_copy_context();
    struct python_example e = {var, ctx, ham, 0};
    cr_assert_eq(cp_context_run(ctx, python_example_main, &e, NULL), 0);
    cr_assert_eq(e.failed, 0, "check at line %d failed inside the run", e.failed);
    cr_assert_eq(value_in(ctx, var), ham);
    cr_assert_eq(current_value(var), spam);
    cp_context_free(ctx);
    cp_var_free(var);
}

struct nested {
    cp_context *outer, *inner;
    cp_var *v;
    void *outer_value, *inner_value;
    int rc;
    int failed;
};

static void *check_and_set_inner(void *p)
{
    struct nested *n = p;
    void *value = UNTOUCHED;
    /* Inside the inner context, the outer's value is not visible. */
    RECORD(n->failed, cp_var_get(n->v, &value) == CP_ENOENT);
    RECORD(n->failed, cp_var_set(n->v, n->inner_value, NULL) == 0);
    return NULL;
}

static void *nest_other_context(void *p)
{
    struct nested *n = p;
    void *value = NULL;
    RECORD(n->failed, cp_var_set(n->v, n->outer_value, NULL) == 0);
    n->rc = cp_context_run(n->inner, check_and_set_inner, n, NULL);
    /* Back in the outer context, with its own value. */
    RECORD(n->failed, cp_var_get(n->v, &value) == 0 && value == n->outer_value);
    return NULL;
}

Test(run, nested_run_of_another_context_restores_the_outer_one)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    struct nested n = {cp_context_new(), cp_context_new(), v, &a, &b, 1, 0};
    cr_assert_eq(cp_context_run(n.outer, nest_other_context, &n, NULL), 0);
    cr_assert_eq(n.rc, 0);
    cr_assert_eq(n.failed, 0, "check at line %d failed inside the run", n.failed);
    cr_assert_eq(value_in(n.outer, v), &a);
    cr_assert_eq(value_in(n.inner, v), &b);
    assert_unset_here(v);
    cp_context_free(n.outer);
    cp_context_free(n.inner);
    cp_var_free(v);
}

struct recursion {
    cp_context *target;
    cp_context *middle;
    int rc;
};

static void *enter_target_again(void *p)
{
    struct recursion *r = p;
    r->rc = cp_context_run(r->target, count_call, NULL, NULL);
    return NULL;
}

static void *enter_middle(void *p)
{
    struct recursion *r = p;
    int rc = cp_context_run(r->middle, enter_target_again, r, NULL);
    return rc == 0 ? NULL : (void *)(intptr_t)rc;
}

Test(run, recursive_run_is_erecursive_and_fn_is_not_called)
{
    cp_context *c = cp_context_new();
    struct recursion r = {c, NULL, 1};
    cr_assert_eq(cp_context_run(c, enter_target_again, &r, NULL), 0);
    cr_assert_eq(r.rc, CP_ERECURSIVE);
    cr_assert_eq(atomic_load(&calls), 0);
    /* The refused entry left c usable. */
    cr_assert_eq(cp_context_run(c, count_call, NULL, NULL), 0);
    cr_assert_eq(atomic_load(&calls), 1);
    cp_context_free(c);
}

Test(run, run_of_a_context_entered_up_the_stack_is_erecursive)
{
    cp_context *c = cp_context_new();
    cp_context *m = cp_context_new();
    struct recursion r = {c, m, 1};
    void *result = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, enter_middle, &r, &result), 0);
    cr_assert_null(result);
    cr_assert_eq(r.rc, CP_ERECURSIVE);
    cr_assert_eq(atomic_load(&calls), 0);
    cp_context_free(m);
    cp_context_free(c);
}

struct busy {
    cp_context *c;
    pthread_barrier_t entered, checked;
};

static void *hold_until_checked(void *p)
{
    struct busy *b = p;
    pthread_barrier_wait(&b->entered);
    pthread_barrier_wait(&b->checked);
    return NULL;
}

static void *hold_thread(void *p)
{
    struct busy *b = p;
    int rc = cp_context_run(b->c, hold_until_checked, b, NULL);
    if (rc != 0) {
        /* Let the main thread go on; it will see the failure. */
        pthread_barrier_wait(&b->entered);
        pthread_barrier_wait(&b->checked);
        return (void *)(intptr_t)__LINE__;
    }
    return NULL;
}

Test(run, run_while_another_thread_has_it_entered_is_ebusy, .timeout = 30)
{
    struct busy b;
    b.c = cp_context_new();
    pthread_barrier_init(&b.entered, NULL, 2);
    pthread_barrier_init(&b.checked, NULL, 2);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, hold_thread, &b), 0);
    pthread_barrier_wait(&b.entered); /* th is inside the run now */
    int rc = cp_context_run(b.c, count_call, NULL, NULL);
    pthread_barrier_wait(&b.checked);
    join_ok(th);
    cr_assert_eq(rc, CP_EBUSY);
    cr_assert_eq(atomic_load(&calls), 0, "fn ran although the entry was refused");
    /* Once the holder left, the context can be entered again. */
    cr_assert_eq(cp_context_run(b.c, count_call, NULL, NULL), 0);
    cr_assert_eq(atomic_load(&calls), 1);
    pthread_barrier_destroy(&b.entered);
    pthread_barrier_destroy(&b.checked);
    cp_context_free(b.c);
}

struct handover {
    cp_context *c;
    cp_var *v;
    void *expect;
};

static void *read_in_run(void *p)
{
    struct handover *h = p;
    void *value = NULL;
    TCHECK(cp_var_get(h->v, &value) == 0);
    TCHECK(value == h->expect);
    return NULL;
}

static void *run_reader_thread(void *p)
{
    struct handover *h = p;
    void *r = UNTOUCHED;
    TCHECK(cp_context_run(h->c, read_in_run, h, &r) == 0);
    return r;
}

Test(run, run_on_another_thread_after_the_first_left_sees_its_changes)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    struct handover h = {c, v, &a};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_reader_thread, &h), 0);
    join_ok(th);
    cp_context_free(c);
    cp_var_free(v);
}

static void *free_own_context(void *p)
{
    cp_context_free(p);
    return p;
}

Test(run, context_freed_by_its_fn_lives_until_the_run_ends)
{
    cp_context *c = cp_context_new();
    void *result = NULL;
    cr_assert_eq(cp_context_run(c, free_own_context, c, &result), 0);
    cr_assert_eq(result, c);
}

/* ------------------------------------------------------------------------ */
/* The mapping functions (var in ctx, ctx[var], ctx.get, len)                */

Test(mapping, functions_see_the_context_values)
{
    int a, b, fb;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_var *u = cp_var_new("u", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, w, &b, NULL), 0);
    cr_assert(cp_context_contains(c, v));
    cr_assert(cp_context_contains(c, w));
    cr_assert_not(cp_context_contains(c, u));
    cr_assert_eq(value_in(c, v), &a);
    cr_assert_eq(cp_context_get_or(c, w, &fb), &b);
    cr_assert_eq(cp_context_get_or(c, u, &fb), &fb);
    void *value = UNTOUCHED;
    cr_assert_eq(cp_context_get(c, u, &value), CP_ENOENT);
    cr_assert_eq(value, UNTOUCHED);
    cr_assert_eq(cp_context_len(c), 2);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
    cp_var_free(u);
}

Test(mapping, functions_ignore_variable_defaults)
{
    int d, fb;
    cp_var *v = cp_var_new_default("v", &d, NULL);
    cp_context *c = cp_context_new();
    cr_assert_not(cp_context_contains(c, v));
    void *value = UNTOUCHED;
    cr_assert_eq(cp_context_get(c, v, &value), CP_ENOENT);
    cr_assert_eq(value, UNTOUCHED);
    cr_assert_eq(cp_context_get_or(c, v, &fb), &fb);
    cr_assert_null(cp_context_get_or(c, v, NULL));
    cr_assert_eq(cp_context_len(c), 0);
    /* ...while get inside the context does see the default. */
    cr_assert_eq(get_in(c, v, &value), 0);
    cr_assert_eq(value, &d);
    cp_context_free(c);
    cp_var_free(v);
}

struct live {
    cp_context *c;
    cp_var *v, *w;
    void *a, *b;
    int failed;
};

static void *set_and_look_live(void *p)
{
    struct live *l = p;
    void *value = NULL;
    RECORD(l->failed, !cp_context_contains(l->c, l->v));
    RECORD(l->failed, cp_context_len(l->c) == 0);
    RECORD(l->failed, cp_var_set(l->v, l->a, NULL) == 0);
    RECORD(l->failed, cp_context_contains(l->c, l->v));
    RECORD(l->failed, cp_context_get(l->c, l->v, &value) == 0 && value == l->a);
    RECORD(l->failed, cp_context_len(l->c) == 1);
    cp_token *t = NULL;
    RECORD(l->failed, cp_var_set(l->w, l->b, &t) == 0);
    RECORD(l->failed, cp_context_get_or(l->c, l->w, NULL) == l->b);
    RECORD(l->failed, cp_context_len(l->c) == 2);
    cp_iter *it = cp_context_iter(l->c);
    size_t n = 0;
    while (cp_iter_next(it, NULL, NULL))
        n++;
    cp_iter_free(it);
    RECORD(l->failed, n == 2);
    RECORD(l->failed, cp_var_reset(l->w, t) == 0);
    RECORD(l->failed, !cp_context_contains(l->c, l->w));
    RECORD(l->failed, cp_context_len(l->c) == 1);
    cp_token_free(t);
    return NULL;
}

Test(mapping, functions_are_a_live_view_inside_a_run)
{
    int a, b;
    struct live l = {cp_context_new(), cp_var_new("v", NULL),
                     cp_var_new("w", NULL), &a, &b, 0};
    cr_assert_eq(cp_context_run(l.c, set_and_look_live, &l, NULL), 0);
    cr_assert_eq(l.failed, 0, "check at line %d failed inside the run", l.failed);
    cp_context_free(l.c);
    cp_var_free(l.v);
    cp_var_free(l.w);
}

Test(mapping, equal_compares_variables_and_values)
{
    int x, y;
    cp_var *v = cp_var_new_default("v", &y, NULL), *w = cp_var_new("w", NULL);
    cp_context *a = cp_context_new(), *b = cp_context_new();
    cr_assert(cp_context_equal(a, b), "two empty contexts");
    cr_assert(cp_context_equal(a, a));
    cr_assert_not(cp_context_equal(a, NULL));
    cr_assert_not(cp_context_equal(NULL, a));
    cr_assert_not(cp_context_equal(NULL, NULL));
    cr_assert_eq(set_in(a, v, &x, NULL), 0);
    cr_assert_not(cp_context_equal(a, b), "a value against none (nor the default)");
    cp_context *copy = cp_context_copy(a);
    cr_assert(cp_context_equal(a, copy));
    /* Built apart, the same variable and value: equal. */
    cr_assert_eq(set_in(b, v, &x, NULL), 0);
    cr_assert(cp_context_equal(a, b));
    cr_assert(cp_context_equal(b, a));
    /* The same value under another variable, or another value: not. */
    cr_assert_eq(set_in(copy, v, &y, NULL), 0);
    cr_assert_not(cp_context_equal(a, copy));
    cp_context *other = cp_context_new();
    cr_assert_eq(set_in(other, w, &x, NULL), 0);
    cr_assert_not(cp_context_equal(a, other));
    /* More variables than the other: not, either way round. */
    cr_assert_eq(set_in(b, w, &x, NULL), 0);
    cr_assert_not(cp_context_equal(a, b));
    cr_assert_not(cp_context_equal(b, a));
    cp_context_free(a);
    cp_context_free(b);
    cp_context_free(copy);
    cp_context_free(other);
    cp_var_free(v);
    cp_var_free(w);
}

/* ------------------------------------------------------------------------ */
/* Iteration (iter, keys, values, items)                                     */

#define NITER 40

Test(iter, yields_each_pair_exactly_once)
{
    cp_var *vars[NITER];
    int values[NITER];
    cp_context *c = cp_context_new();
    for (int i = 0; i < NITER; i++) {
        vars[i] = cp_var_new("v", NULL);
        cr_assert_eq(set_in(c, vars[i], &values[i], NULL), 0);
    }
    int seen[NITER] = {0};
    cp_iter *it = cp_context_iter(c);
    cr_assert_not_null(it);
    cp_var *k;
    void *value;
    size_t n = 0;
    while (cp_iter_next(it, &k, &value)) {
        n++;
        int found = -1;
        for (int i = 0; i < NITER; i++)
            if (vars[i] == k)
                found = i;
        cr_assert_geq(found, 0, "iterator yielded an unknown variable");
        cr_assert_eq(value, &values[found]);
        seen[found]++;
    }
    cr_assert_eq(n, NITER);
    for (int i = 0; i < NITER; i++)
        cr_assert_eq(seen[i], 1, "variable %d seen %d times", i, seen[i]);
    /* An ended iterator stays ended. */
    cr_assert_not(cp_iter_next(it, &k, &value));
    cp_iter_free(it);
    cp_context_free(c);
    for (int i = 0; i < NITER; i++)
        cp_var_free(vars[i]);
}

Test(iter, snapshot_ignores_later_sets)
{
    int a, b, x;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_iter *it = cp_context_iter(c);
    cr_assert_eq(set_in(c, v, &b, NULL), 0);
    cr_assert_eq(set_in(c, w, &x, NULL), 0);
    cp_var *k = NULL;
    void *value = NULL;
    cr_assert(cp_iter_next(it, &k, &value));
    cr_assert_eq(k, v);
    cr_assert_eq(value, &a);
    cr_assert_not(cp_iter_next(it, &k, &value));
    cp_iter_free(it);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

Test(iter, of_an_empty_context_ends_at_once)
{
    cp_context *c = cp_context_new();
    cp_iter *it = cp_context_iter(c);
    cr_assert_not_null(it);
    cp_var *k = UNTOUCHED;
    cr_assert_not(cp_iter_next(it, &k, NULL));
    cp_iter_free(it);
    cp_context_free(c);
}

Test(iter, next_accepts_null_outputs)
{
    int a, b;
    cp_var *v = cp_var_new("v", NULL);
    cp_var *w = cp_var_new("w", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, w, &b, NULL), 0);
    cp_iter *it = cp_context_iter(c);
    cp_var *k = NULL;
    void *value = NULL;
    cr_assert(cp_iter_next(it, &k, NULL)); /* keys() */
    cr_assert(cp_iter_next(it, NULL, &value)); /* values() */
    cr_assert_not(cp_iter_next(it, NULL, NULL));
    cr_assert(k == v || k == w);
    cr_assert(value == &a || value == &b);
    cr_assert((k == v) == (value == &b), "keys and values of two different pairs");
    cp_iter_free(it);
    cp_context_free(c);
    cp_var_free(v);
    cp_var_free(w);
}

/* ------------------------------------------------------------------------ */
/* Copies made while a context runs                                          */

struct copy_inside {
    cp_var *v, *w;
    void *a, *b, *x;
    cp_context *outer;
    cp_context *copy_current, *copy_of_outer;
    int nested_rc;
    int failed;
};

static void *change_nested_copy(void *p)
{
    struct copy_inside *ci = p;
    void *value = NULL;
    RECORD(ci->failed, cp_var_get(ci->v, &value) == 0 && value == ci->a);
    RECORD(ci->failed, cp_var_set(ci->v, ci->b, NULL) == 0);
    RECORD(ci->failed, cp_var_set(ci->w, ci->x, NULL) == 0);
    return NULL;
}

static void *copy_while_running(void *p)
{
    struct copy_inside *ci = p;
    void *value = NULL;
    RECORD(ci->failed, cp_var_set(ci->v, ci->a, NULL) == 0);
    ci->copy_current = cp_copy_context();
    ci->copy_of_outer = cp_context_copy(ci->outer);
    RECORD(ci->failed, ci->copy_current && ci->copy_of_outer);
    if (!ci->copy_current || !ci->copy_of_outer)
        return NULL;
    /* Both copies see the run's change. */
    RECORD(ci->failed, cp_context_get_or(ci->copy_current, ci->v, NULL) == ci->a);
    RECORD(ci->failed, cp_context_get_or(ci->copy_of_outer, ci->v, NULL) == ci->a);
    /* Entering a copy inside the run works, and its changes stay in it. */
    ci->nested_rc = cp_context_run(ci->copy_current, change_nested_copy, ci, NULL);
    RECORD(ci->failed, cp_var_get(ci->v, &value) == 0 && value == ci->a);
    RECORD(ci->failed, cp_var_get(ci->w, &value) == CP_ENOENT);
    RECORD(ci->failed, !cp_context_contains(ci->outer, ci->w));
    RECORD(ci->failed, cp_context_len(ci->outer) == 1);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Copies freed on the thread that made them (kept for the next copy)        */

struct freed_copies {
    cp_var *v;
    tval *b;
    cp_token *token;
    int rc_token_in_next_copy;
    void *seen_in_next_copy;
    int frees_of_a_after_set;
    tval *a;
};

static void *reset_token_here(void *p)
{
    struct freed_copies *f = p;
    f->rc_token_in_next_copy = cp_var_reset(f->v, f->token);
    f->seen_in_next_copy = cp_var_get_or(f->v, NULL);
    return NULL;
}

static void *copy_free_copy(void *p)
{
    struct freed_copies *f = p;
    /* A token made in a copy whose map is still the current one, so that
     * freeing the copy can keep it for the next cp_copy_context. */
    cp_context *first = cp_copy_context();
    TCHECK(first != NULL);
    struct set_args a = {f->v, f->a, &f->token, 1};
    TCHECK(cp_context_run(first, do_set, &a, NULL) == 0 && a.rc == 0);
    cp_context_free(first);
    cp_context *next = cp_copy_context();
    TCHECK(next != NULL);
    TCHECK(cp_context_run(next, reset_token_here, f, NULL) == 0);
    cp_context_free(next);
    cp_token_free(f->token); /* it held a too */
    /* A change of the current map right after a freed copy frees the
     * replaced value at once. */
    cp_context_free(cp_copy_context());
    TCHECK(cp_var_set(f->v, f->b, NULL) == 0);
    f->frees_of_a_after_set = frees_of(f->a);
    return NULL;
}

Test(freed_copy, next_copy_is_a_new_context_with_the_current_values)
{
    tval a = {0}, b = {0};
    struct freed_copies f = {.v = cp_var_new("v", tval_free), .a = &a, .b = &b};
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, f.v, &a, NULL), 0);
    void *r = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, copy_free_copy, &f, &r), 0);
    cr_assert_null(r, "failed check at line %d", (int)(intptr_t)r);
    cr_assert_eq(f.rc_token_in_next_copy, CP_ETOKEN_CONTEXT,
                 "a token of a freed copy does not belong to the next copy");
    cr_assert_eq(f.seen_in_next_copy, &a);
    cr_assert_eq(f.frees_of_a_after_set, 1, "a was freed by the set, not later");
    cr_assert_eq(value_in(c, f.v), &b);
    cp_context_free(c);
    cp_var_free(f.v);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(total(), 2);
}

static void *copy_and_free_a_few(void *p)
{
    (void)p;
    for (int i = 0; i < 3; i++)
        cp_context_free(cp_copy_context());
    return NULL;
}

Test(freed_copy, values_go_with_their_context_after_copies_freed_inside_a_run)
{
    tval a = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(cp_context_run(c, copy_and_free_a_few, NULL, NULL), 0);
    cr_assert_eq(frees_of(&a), 0);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1, "freed with c, not kept by a freed copy");
    cp_var_free(v);
}

static void *set_copy_free_and_exit(void *p)
{
    do_set(p);
    copy_and_free_a_few(NULL);
    return NULL;
}

Test(freed_copy, values_of_a_thread_go_at_its_exit_after_copies_freed_there)
{
    tval a = {0};
    struct set_args set = {cp_var_new("v", tval_free), &a, NULL, 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, set_copy_free_and_exit, &set), 0);
    join_ok(th);
    cr_assert_eq(set.rc, 0);
    cr_assert_eq(frees_of(&a), 1, "freed with the thread's base context");
    cp_var_free(set.var);
}

Test(copy_while_running, copy_context_inside_a_run_sees_the_runs_changes)
{
    int a, b, x;
    struct copy_inside ci = {cp_var_new("v", NULL), cp_var_new("w", NULL),
                             &a, &b, &x, cp_context_new(), NULL, NULL, 1, 0};
    cr_assert_eq(cp_context_run(ci.outer, copy_while_running, &ci, NULL), 0);
    cr_assert_eq(ci.failed, 0, "check at line %d failed inside the run", ci.failed);
    cr_assert_eq(value_in(ci.copy_of_outer, ci.v), &a);
    cr_assert_eq(cp_context_len(ci.copy_of_outer), 1);
    cp_context_free(ci.copy_current);
    cp_context_free(ci.copy_of_outer);
    cp_context_free(ci.outer);
    cp_var_free(ci.v);
    cp_var_free(ci.w);
}

Test(copy_while_running, nested_run_of_the_copy_works_and_keeps_its_changes)
{
    int a, b, x;
    struct copy_inside ci = {cp_var_new("v", NULL), cp_var_new("w", NULL),
                             &a, &b, &x, cp_context_new(), NULL, NULL, 1, 0};
    cr_assert_eq(cp_context_run(ci.outer, copy_while_running, &ci, NULL), 0);
    cr_assert_eq(ci.failed, 0, "check at line %d failed inside the run", ci.failed);
    cr_assert_eq(ci.nested_rc, 0);
    cr_assert_eq(value_in(ci.copy_current, ci.v), &b);
    cr_assert_eq(value_in(ci.copy_current, ci.w), &x);
    /* ...and not in the outer context. */
    cr_assert_eq(value_in(ci.outer, ci.v), &a);
    cr_assert_not(cp_context_contains(ci.outer, ci.w));
    cp_context_free(ci.copy_current);
    cp_context_free(ci.copy_of_outer);
    cp_context_free(ci.outer);
    cp_var_free(ci.v);
    cp_var_free(ci.w);
}

/* ------------------------------------------------------------------------ */
/* Value destructors: each value freed exactly once, when nothing holds it   */

Test(destructor, replaced_value_is_freed_once)
{
    static tval a, b; /* left in the base context: see tval */
    cp_var *v = cp_var_new("v", tval_free);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&b), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&b), 0, "the base context still holds b");
}

Test(destructor, setting_the_same_value_again_does_not_free_it)
{
    tval a = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(value_in(c, v), &a);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1);
    cp_var_free(v);
}

Test(destructor, context_free_frees_its_values_once)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_var *w = cp_var_new("w", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, w, &b, NULL), 0);
    cp_var_free(v);
    cp_var_free(w);
    cr_assert_eq(total(), 0);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&b), 1);
}

Test(destructor, values_shared_by_copies_are_freed_with_the_last_copy)
{
    tval a = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_context *d = cp_context_copy(c);
    cp_context *e = cp_context_copy(d);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 0);
    cp_context_free(e);
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(value_in(d, v), &a);
    cp_context_free(d);
    cr_assert_eq(frees_of(&a), 1);
    cp_var_free(v);
}

Test(destructor, value_replaced_in_one_copy_lives_on_in_the_other)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_context *d = cp_context_copy(c);
    cr_assert_eq(set_in(c, v, &b, NULL), 0);
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(value_in(d, v), &a);
    cp_context_free(d);
    cr_assert_eq(frees_of(&a), 1);
    cp_context_free(c);
    cr_assert_eq(frees_of(&b), 1);
    cp_var_free(v);
}

/* t's old value is a, which t alone keeps now: freeing t frees a. */
static void free_token_keeping(cp_token *t, tval *a)
{
    void *old = NULL;
    cr_assert_eq(cp_token_old_value(t, &old), 0);
    cr_assert_eq(old, a);
    cr_assert_eq(frees_of(a), 0);
    cp_token_free(t);
    cr_assert_eq(frees_of(a), 1);
}

Test(destructor, token_keeps_its_old_value_alive)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, v, &b, &t), 0);
    cr_assert_eq(frees_of(&a), 0, "the token still refers to a");
    cp_context_free(c);
    cr_assert_eq(frees_of(&b), 1);
    free_token_keeping(t, &a);
    cp_var_free(v);
}

Test(destructor, reset_frees_the_value_it_replaces_and_keeps_the_old_one)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, v, &b, &t), 0);
    cr_assert_eq(reset_in(c, v, t), 0);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(frees_of(&a), 0);
    cp_token_free(t);
    cr_assert_eq(frees_of(&a), 0, "the context holds a again");
    cr_assert_eq(value_in(c, v), &a);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(total(), 2);
    cp_var_free(v);
}

Test(destructor, iterator_keeps_its_snapshot_values_alive)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_iter *it = cp_context_iter(c);
    cr_assert_eq(set_in(c, v, &b, NULL), 0);
    cr_assert_eq(frees_of(&a), 0);
    cp_context_free(c);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(frees_of(&a), 0);
    cp_var *k = NULL;
    void *value = NULL;
    cr_assert(cp_iter_next(it, &k, &value));
    cr_assert_eq(value, &a);
    cr_assert_eq(frees_of(&a), 0);
    cp_iter_free(it);
    cr_assert_eq(frees_of(&a), 1);
    cp_var_free(v);
}

Test(destructor, default_value_is_freed_once_with_the_variable)
{
    tval d = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cr_assert_eq(current_value(v), &d);
    cr_assert_eq(frees_of(&d), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_eq(total(), 1);
}

/* NULL is a value like any other: the library owns it once set, and frees
 * it once (free_value must take NULL, as free() does). */
static atomic_int null_frees;

static void count_null_free(void *p)
{
    /* relaxed: read on this thread after the frees. */
    if (!p)
        atomic_fetch_add_explicit(&null_frees, 1, memory_order_relaxed);
}

Test(destructor, a_null_value_and_a_null_default_are_freed_once_each)
{
    cp_var *v = cp_var_new_default("v", NULL, count_null_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, NULL, NULL), 0);
    cr_assert(cp_context_contains(c, v));
    cr_assert_eq(atomic_load(&null_frees), 0);
    cp_context_free(c);
    cr_assert_eq(atomic_load(&null_frees), 1, "the value set");
    cp_var_free(v);
    cr_assert_eq(atomic_load(&null_frees), 2, "the default");
}

Test(destructor, default_value_outlives_var_free_while_a_context_holds_the_var)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 0, "the variable still lives in c");
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_eq(total(), 2);
}

Test(destructor, used_token_keeps_its_variable_after_var_free)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("kept by the token", &d, tval_free);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, &t), 0);
    cp_var_free(v);
    /* The reset frees the set's item, and its value, but not the variable:
     * the token still names it. */
    cr_assert_eq(reset_in(c, v, t), 0);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&d), 0);
    cr_assert_str_eq(cp_var_name(cp_token_var(t)), "kept by the token");
    cr_assert_eq(cp_context_len(c), 0);
    cp_token_free(t);
    cr_assert_eq(frees_of(&d), 1, "the token held the last references");
    cp_context_free(c);
    cr_assert_eq(total(), 2);
}

Test(destructor, used_token_with_an_old_value_keeps_its_variable_after_var_free)
{
    tval d = {0}, a = {0}, b = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_eq(set_in(c, v, &b, &t), 0);
    cp_var_free(v);
    cr_assert_eq(reset_in(c, v, t), 0);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(value_in(c, v), &a);
    cp_context_free(c);
    /* a is still the token's old value, and d the token's variable's. */
    cr_assert_eq(frees_of(&d), 0);
    free_token_keeping(t, &a);
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_eq(total(), 3);
}

Test(destructor, var_free_while_contexts_hold_values_keeps_them_working)
{
    tval a = {0}, b = {0};
    cp_var *v = cp_var_new("name kept", tval_free);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cp_context *d = cp_context_copy(c);
    cp_token *t = NULL;
    cr_assert_eq(set_in(d, v, &b, &t), 0);
    cp_var_free(v); /* v must not be used from here on, except as borrowed */
    cr_assert_eq(total(), 0);

    /* Reach the variable again through an iterator, which keeps it alive. */
    cp_iter *it = cp_context_iter(c);
    cp_var *k = NULL;
    void *value = NULL;
    cr_assert(cp_iter_next(it, &k, &value));
    cr_assert_eq(value, &a);
    cr_assert_str_eq(cp_var_name(k), "name kept");
    cr_assert_eq(value_in(c, k), &a);
    cr_assert_eq(value_in(d, k), &b);
    cr_assert_eq(cp_context_len(d), 1);
    cr_assert_eq(cp_token_var(t), k);

    /* Resetting through the token still works. */
    cr_assert_eq(reset_in(d, cp_token_var(t), t), 0);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(value_in(d, k), &a);
    cp_token_free(t);
    cp_iter_free(it);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 0, "d still holds a");
    cp_context_free(d);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(total(), 2);
}

Test(destructor, null_destructor_leaves_values_alone)
{
    /* With a NULL destructor the values are borrowed: nothing may touch them
     * (ASan would report a free of a stack address). */
    int a, b;
    cp_var *v = cp_var_new_default("v", &a, NULL);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cp_var_free(v);
    cr_assert_eq(total(), 0);
}

/* ------------------------------------------------------------------------ */
/* Kept variable references: cp_token_free keeps the token's references on  */
/* its variable for the thread's next set, but never past the end of the     */
/* variable's last other holder, the thread's context, or the thread.        */

/* One round of what a request handler does: set, reset, free the token. */
static void *set_reset_free(void *p)
{
    struct set_args *a = p;
    cp_token *t = NULL;
    TCHECK(cp_var_set(a->var, a->value, &t) == 0);
    TCHECK(cp_var_reset(a->var, t) == 0);
    cp_token_free(t);
    return NULL;
}

Test(kept, rounds_of_set_reset_free_free_every_value_once_and_keep_the_variable)
{
    tval d = {0}, a = {0}, b = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    /* The main thread's base context: its kept references last. */
    for (int i = 0; i < 3; i++) {
        cr_assert_null(set_reset_free(&(struct set_args){v, &a, NULL, 0}));
        cr_assert_null(set_reset_free(&(struct set_args){v, &b, NULL, 0}));
    }
    cr_assert_eq(frees_of(&a), 3);
    cr_assert_eq(frees_of(&b), 3);
    cr_assert_eq(current_value(v), &d);
    cr_assert_eq(frees_of(&d), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1, "var_free on the keeping thread ends the variable");
    cr_assert_eq(total(), 7);
}

Test(kept, token_freed_after_var_free_ends_the_variable_at_once)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0); /* in the main thread's base context */
    cp_var_free(v);
    cr_assert_eq(cp_var_reset(v, t), 0);
    cr_assert_eq(frees_of(&d), 0, "the token still names the variable");
    cp_token_free(t);
    cr_assert_eq(frees_of(&d), 1, "the token held the last references: nothing keeps them");
    cr_assert_eq(total(), 2);
}

/* A thread that does one round in c (NULL: in its base context), then waits
 * at the barrier's two phases, so that the main thread can look at the
 * variable while the thread still lives. */
struct keeper {
    cp_context *c;
    struct set_args round;
    pthread_barrier_t done, checked;
};

static void *keeper_main(void *p)
{
    struct keeper *k = p;
    void *failed = NULL;
    if (!k->c)
        failed = set_reset_free(&k->round);
    else if (cp_context_run(k->c, set_reset_free, &k->round, &failed) != 0)
        failed = (void *)(intptr_t)__LINE__;
    pthread_barrier_wait(&k->done);
    pthread_barrier_wait(&k->checked);
    return failed;
}

static void keeper_start(pthread_t *thread, struct keeper *k, cp_context *c, cp_var *v,
                         tval *value)
{
    k->c = c;
    k->round = (struct set_args){v, value, NULL, 0};
    cr_assert_eq(pthread_barrier_init(&k->done, NULL, 2), 0);
    cr_assert_eq(pthread_barrier_init(&k->checked, NULL, 2), 0);
    cr_assert_eq(pthread_create(thread, NULL, keeper_main, k), 0);
    pthread_barrier_wait(&k->done);
}

static void keeper_finish(pthread_t thread, struct keeper *k)
{
    pthread_barrier_wait(&k->checked);
    join_ok(thread);
    pthread_barrier_destroy(&k->done);
    pthread_barrier_destroy(&k->checked);
}

Test(kept, a_thread_that_left_the_context_keeps_nothing)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    struct keeper k;
    pthread_t thread;
    keeper_start(&thread, &k, c, v, &a); /* its run of c has returned */
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1, "the thread's run ended: it keeps nothing");
    keeper_finish(thread, &k);
    cr_assert_eq(frees_of(&a), 1);
    cp_context_free(c);
    cr_assert_eq(total(), 2);
}

Test(kept, a_thread_still_in_its_context_keeps_the_variable_until_it_exits)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    struct keeper k;
    pthread_t thread;
    keeper_start(&thread, &k, NULL, v, &a); /* in its base context, alive */
    cp_var_free(v);
    cr_assert_eq(frees_of(&a), 1, "the value is never kept");
    cr_assert_eq(frees_of(&d), 0, "the thread keeps the variable while it stays");
    keeper_finish(thread, &k);
    cr_assert_eq(frees_of(&d), 1, "the thread's exit dropped what it kept");
    cr_assert_eq(total(), 2);
}

static void *free_var(void *v)
{
    cp_var_free(v);
    return NULL;
}

Test(kept, a_token_of_another_variable_drops_the_kept_references)
{
    tval d = {0}, e = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_var *w = cp_var_new_default("w", &e, tval_free);
    cr_assert_null(set_reset_free(&(struct set_args){v, &a, NULL, 0}));
    cr_assert_null(set_reset_free(&(struct set_args){w, &a, NULL, 0}));
    /* Freed on another thread, v now ends there: main keeps w's only. */
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, free_var, v), 0);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_eq(frees_of(&e), 0);
    cp_var_free(w);
    cr_assert_eq(frees_of(&e), 1);
    cr_assert_eq(total(), 4);
}

static void *free_token(void *t)
{
    cp_token_free(t);
    return NULL;
}

Test(kept, a_thread_in_no_context_keeps_nothing)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    cp_token *t = NULL;
    cr_assert_eq(set_in(c, v, &a, &t), 0);
    cr_assert_eq(reset_in(c, v, t), 0);
    /* A fresh thread, which has no context to drop kept references with. */
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, free_token, t), 0);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1);
    cp_context_free(c);
    cr_assert_eq(total(), 2);
}

/* Freed by its creator on this thread before its tokens: the variable must
 * end with the last of them, as it did without keeping. v is released, so
 * neither token's references are kept (without that flag the first would
 * be, since the second's old item still holds v, and the second's free
 * would find its reference and the kept one the last two). */
Test(kept, a_variable_freed_before_its_tokens_ends_with_the_last_one)
{
    tval d = {0}, a = {0}, b = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_token *t1 = NULL, *t2 = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t1), 0);
    cr_assert_eq(cp_var_set(v, &b, &t2), 0);
    cr_assert_eq(cp_var_reset(v, t2), 0);
    cr_assert_eq(cp_var_reset(v, t1), 0);
    cr_assert_eq(frees_of(&b), 1);
    cp_var_free(v);
    cp_token_free(t1);
    cr_assert_eq(frees_of(&d), 0, "t2 still holds v");
    cp_token_free(t2);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&d), 1, "the tokens held v's last references");
    cr_assert_eq(total(), 3);
}

/* Freed by its creator on this thread before its token, which is freed while
 * a copy still holds a value: freeing the copy, on this thread too, lets go
 * of v's last holder, and v ends there, not when the thread leaves. */
Test(kept, a_variable_freed_before_its_token_ends_with_its_last_value)
{
    tval d = {0}, a = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0); /* in the main thread's base context */
    cp_context *copy = cp_copy_context();
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_var_free(v);
    cp_token_free(t);
    cr_assert_eq(frees_of(&d), 0, "the copy holds v");
    cp_context_free(copy);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&d), 1, "the copy held v's last value");
    cr_assert_eq(total(), 2);
}

/* A set that needs two references (a token, and no value yet) while one is
 * kept takes new ones: every count stays right, and v ends once, at its
 * cp_var_free. */
Test(kept, a_set_needing_more_than_is_kept_takes_new_references)
{
    tval d = {0}, a = {0}, b = {0}, x = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_token *t1 = NULL, *t2 = NULL, *t3 = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t1), 0);
    cr_assert_eq(cp_var_set(v, &b, &t2), 0);
    cr_assert_eq(cp_var_reset(v, t2), 0);
    cp_token_free(t2); /* keeps one reference */
    cr_assert_eq(cp_var_reset(v, t1), 0); /* v has no value */
    cr_assert_eq(cp_var_set(v, &x, &t3), 0); /* needs two */
    cr_assert_eq(cp_var_reset(v, t3), 0);
    cp_token_free(t3);
    cp_token_free(t1);
    for (int i = 0; i < 3; i++)
        cr_assert_null(set_reset_free(&(struct set_args){v, &x, NULL, 0}));
    cr_assert_eq(frees_of(&d), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_eq(frees_of(&a), 1);
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(frees_of(&x), 4);
}

/* Run fn(args) in c; fn reports a failed TCHECK through its result. */
static void run_checked(cp_context *c, void *(*fn)(void *), struct set_args *args)
{
    void *failed = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, fn, args, &failed), 0);
    cr_assert_null(failed, "failed at line %d", (int)(intptr_t)failed);
}

/* The same, with the last holders but the context letting go on another
 * thread (which keeps nothing): had the set taken two references from the
 * one kept, v's count would be one short, and v would end there, its
 * default freed, while the context still holds a value for it. */
struct let_go {
    cp_token *t1, *t3;
    cp_var *v;
};

static void *let_go_elsewhere(void *p)
{
    struct let_go *g = p;
    cp_token_free(g->t1);
    cp_token_free(g->t3);
    cp_var_free(g->v);
    return NULL;
}

static void *set_needing_more_then_let_go(void *p)
{
    struct set_args *s = p;
    tval *d = s->value;
    static tval a, b, x;
    cp_token *t1 = NULL, *t2 = NULL, *t3 = NULL;
    TCHECK(cp_var_set(s->var, &a, &t1) == 0);
    TCHECK(cp_var_set(s->var, &b, &t2) == 0);
    TCHECK(cp_var_reset(s->var, t2) == 0);
    cp_token_free(t2); /* keeps one reference */
    TCHECK(cp_var_reset(s->var, t1) == 0); /* v has no value */
    TCHECK(cp_var_set(s->var, &x, &t3) == 0); /* needs two */
    pthread_t thread;
    struct let_go g = {t1, t3, s->var};
    TCHECK(pthread_create(&thread, NULL, let_go_elsewhere, &g) == 0);
    TCHECK(pthread_join(thread, NULL) == 0);
    TCHECK(frees_of(d) == 0);
    void *got = NULL;
    TCHECK(cp_var_get(s->var, &got) == 0 && got == &x);
    return NULL;
}

Test(kept, a_set_needing_more_than_is_kept_never_ends_the_variable_early)
{
    tval d = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    run_checked(c, set_needing_more_then_let_go, &(struct set_args){v, &d, NULL, 0});
    cr_assert_eq(frees_of(&d), 0, "c still holds a value for v");
    cp_context_free(c);
    cr_assert_eq(frees_of(&d), 1, "v ends once, with c's value");
    cr_assert_eq(total(), 4, "a, b and x once each, and the default");
}

/* A set that took all the kept references keeps none: the variable may end
 * without a flush (here with the last reference to the run's context, after
 * another thread freed it), and leaving must not touch it (AddressSanitizer
 * reports a use after free otherwise). */
static void *take_all_kept_then_end(void *p)
{
    struct set_args *s = p;
    static tval a, b;
    cp_token *t = NULL;
    TCHECK(cp_var_set(s->var, &a, &t) == 0);
    cp_token_free(t); /* keeps one: the item and the creator hold v too */
    TCHECK(cp_var_set(s->var, &b, NULL) == 0); /* takes it */
    pthread_t thread;
    TCHECK(pthread_create(&thread, NULL, free_var, s->var) == 0);
    TCHECK(pthread_join(thread, NULL) == 0);
    cp_context_free(s->value); /* the run holds the last reference */
    return NULL;
}

Test(kept, a_set_that_took_all_kept_references_keeps_none)
{
    tval d = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_context *c = cp_context_new();
    run_checked(c, take_all_kept_then_end, &(struct set_args){v, c, NULL, 0});
    cr_assert_eq(frees_of(&d), 1, "v ended with c's map");
    cr_assert_eq(total(), 3);
}

/* A variable's end run from the kept references (its default's free_value)
 * may free a token itself: the thread state must already be past the ending
 * variable, whether it ends in a flush or when another variable's token is
 * kept. */
static cp_token *token_to_free;
static tval w_default;

static tval *v_default;

static void free_default_and_token(void *p)
{
    tval_free(p);
    if (p != v_default)
        return; /* a value, not the variable's end */
    cp_token_free(token_to_free); /* of w: kept */
    token_to_free = NULL;
}

/* Keep v's references in the base context while another thread frees v: ours
 * are its last. */
static cp_var *kept_last(tval *d)
{
    static tval a;
    v_default = d;
    cp_var *v = cp_var_new_default("v", d, free_default_and_token);
    cr_assert_null(set_reset_free(&(struct set_args){v, &a, NULL, 0}));
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, free_var, v), 0);
    cr_assert_eq(pthread_join(thread, NULL), 0);
    return v;
}

static cp_var *w_with_token(void)
{
    static tval b;
    cp_var *w = cp_var_new_default("w", &w_default, tval_free);
    cr_assert_eq(cp_var_set(w, &b, &token_to_free), 0);
    cr_assert_eq(cp_var_reset(w, token_to_free), 0);
    return w;
}

Test(kept, a_variable_ending_at_a_keep_may_free_a_token)
{
    tval d = {0}, x = {0};
    cp_var *w = w_with_token();
    (void)kept_last(&d);
    cr_assert_eq(frees_of(&d), 0, "kept");
    cr_assert_not_null(token_to_free);
    /* Keeping x's references lets go of v's, the last: v ends. */
    cp_var *xv = cp_var_new("x", tval_free);
    cr_assert_null(set_reset_free(&(struct set_args){xv, &x, NULL, 0}));
    cr_assert_eq(frees_of(&d), 1);
    cr_assert_null(token_to_free);
    cp_var_free(w);
    cr_assert_eq(frees_of(&w_default), 1, "w's token's references were not lost");
    cp_var_free(xv);
}

static void *keep_last_in_run(void *p)
{
    tval *d = p;
    (void)kept_last(d);
    return token_to_free; /* not freed yet */
}

Test(kept, a_variable_ending_at_a_flush_may_free_a_token)
{
    tval d = {0};
    cp_var *w = w_with_token();
    cp_context *c = cp_context_new();
    void *token = NULL;
    cr_assert_eq(cp_context_run(c, keep_last_in_run, &d, &token), 0);
    cr_assert_not_null(token);
    cr_assert_eq(frees_of(&d), 1, "ended when the run left c");
    cr_assert_null(token_to_free);
    cp_var_free(w); /* the base context keeps w's references */
    cr_assert_eq(frees_of(&w_default), 1, "w's token's references were not lost");
    cp_context_free(c);
}

/* ------------------------------------------------------------------------ */
/* The capture batch: a capture (cp_copy_context here, a pool submit there)  */
/* takes references on the current map's root a batch at a time; the rest   */
/* of the batch must never keep the map, or a value in it, alive longer     */
/* than the current context does.                                           */

/* A copy made and freed: the batch now holds references on the map. */
static void capture_once(void)
{
    cp_context *copy = cp_copy_context();
    cr_assert_not_null(copy);
    cp_context_free(copy);
}

Test(capture, a_set_after_a_copy_frees_the_value_it_replaces_at_once)
{
    static tval a, b; /* left in the base context: see tval */
    cp_var *v = cp_var_new("v", tval_free);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0); /* in the main thread's base context */
    for (int i = 0; i < 3; i++)
        capture_once();
    cr_assert_eq(frees_of(&a), 0);
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    cr_assert_eq(frees_of(&a), 1, "the map held a only for the batch");
    cr_assert_eq(current_value(v), &b);
    cp_var_free(v);
    cr_assert_eq(total(), 1);
}

static void *set_and_capture(void *p)
{
    struct set_args *a = p;
    TCHECK(cp_var_set(a->var, a->value, NULL) == 0);
    cp_context *copy = cp_copy_context();
    TCHECK(copy != NULL);
    cp_context_free(copy);
    return NULL;
}

Test(capture, a_context_left_after_a_copy_frees_its_values_with_it)
{
    tval a = {0};
    cp_var *v = cp_var_new("v", tval_free);
    cp_context *c = cp_context_new();
    void *failed = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, set_and_capture, &(struct set_args){v, &a, NULL, 0},
                                &failed), 0);
    cr_assert_null(failed, "failed at line %d", (int)(intptr_t)failed);
    cp_context_free(c);
    cr_assert_eq(frees_of(&a), 1, "leaving c dropped the rest of the batch");
    cp_var_free(v);
    cr_assert_eq(total(), 1);
}

Test(capture, a_thread_that_exits_after_a_copy_frees_its_values)
{
    tval a = {0};
    cp_var *v = cp_var_new("v", tval_free);
    struct set_args args = {v, &a, NULL, 0};
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, set_and_capture, &args), 0);
    join_ok(thread); /* it set and copied in its base context */
    cr_assert_eq(frees_of(&a), 1, "the thread's exit dropped the rest of the batch");
    cp_var_free(v);
    cr_assert_eq(total(), 1);
}

/* Copies held past the set, so that none is kept (see "The copy cache") and
 * the set must drop the batch by itself; more of them than two batches, so
 * that the batch runs out and is taken again. The old map lives exactly
 * while a copy holds it. */
Test(capture, copies_past_two_batches_hold_the_old_map_until_the_last_is_freed)
{
    static tval a, b; /* left in the base context: see tval */
    cp_var *v = cp_var_new("v", tval_free);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    enum { COPIES = 70 };
    cp_context *copies[COPIES];
    for (int i = 0; i < COPIES; i++) {
        copies[i] = cp_copy_context();
        cr_assert_not_null(copies[i]);
    }
    cr_assert_eq(cp_var_set(v, &b, NULL), 0);
    for (int i = 0; i < COPIES; i++) {
        cr_assert_eq(frees_of(&a), 0, "a freed with %d copies left", COPIES - i);
        cr_assert_eq(cp_context_get_or(copies[i], v, NULL), &a);
        cp_context_free(copies[i]);
    }
    cr_assert_eq(frees_of(&a), 1, "the batch kept the old map alive");
    cr_assert_eq(current_value(v), &b);
    cp_var_free(v);
    cr_assert_eq(total(), 1);
}

/* ------------------------------------------------------------------------ */
/* Threads: base contexts and cp_thread_create                               */

struct inherit {
    cp_var *v, *w;
    void *parent_value, *child_value;
    void *seen;
    int seen_rc;
};

static void *child_reads_and_sets(void *p)
{
    struct inherit *in = p;
    in->seen = UNTOUCHED;
    in->seen_rc = cp_var_get(in->v, &in->seen);
    TCHECK(cp_var_set(in->v, in->child_value, NULL) == 0);
    TCHECK(cp_var_set(in->w, in->child_value, NULL) == 0);
    void *value = NULL;
    TCHECK(cp_var_get(in->v, &value) == 0 && value == in->child_value);
    return NULL;
}

Test(threads, thread_create_sees_a_copy_of_the_creators_context)
{
    int a, b;
    struct inherit in = {cp_var_new("v", NULL), cp_var_new("w", NULL), &a, &b,
                         NULL, 1};
    cr_assert_eq(cp_var_set(in.v, &a, NULL), 0);
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, NULL, child_reads_and_sets, &in), 0);
    join_ok(th);
    cr_assert_eq(in.seen_rc, 0);
    cr_assert_eq(in.seen, &a);
    cp_var_free(in.v);
    cp_var_free(in.w);
}

Test(threads, thread_create_child_changes_are_not_seen_by_the_creator)
{
    int a, b;
    struct inherit in = {cp_var_new("v", NULL), cp_var_new("w", NULL), &a, &b,
                         NULL, 1};
    cr_assert_eq(cp_var_set(in.v, &a, NULL), 0);
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, NULL, child_reads_and_sets, &in), 0);
    join_ok(th);
    cr_assert_eq(current_value(in.v), &a);
    assert_unset_here(in.w);
    cp_var_free(in.v);
    cp_var_free(in.w);
}

Test(threads, thread_create_copy_is_taken_at_creation)
{
    /* Python: Thread(context=copy_context()) copies when the thread is made,
     * here before cp_thread_create returns; later sets are not seen. */
    int a, b, c;
    struct inherit in = {cp_var_new("v", NULL), cp_var_new("w", NULL), &a, &c,
                         NULL, 1};
    cr_assert_eq(cp_var_set(in.v, &a, NULL), 0);
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, NULL, child_reads_and_sets, &in), 0);
    cr_assert_eq(cp_var_set(in.v, &b, NULL), 0);
    join_ok(th);
    cr_assert_eq(in.seen, &a);
    cp_var_free(in.v);
    cp_var_free(in.w);
}

static void *create_child_inside_run(void *p)
{
    struct inherit *in = p;
    pthread_t th;
    TCHECK(cp_var_set(in->v, in->parent_value, NULL) == 0);
    TCHECK(cp_thread_create(&th, NULL, child_reads_and_sets, in) == 0);
    void *r = UNTOUCHED;
    TCHECK(pthread_join(th, &r) == 0);
    TCHECK(r == NULL);
    return NULL;
}

Test(threads, thread_create_inside_a_run_copies_the_run_context)
{
    int a, b;
    struct inherit in = {cp_var_new("v", NULL), cp_var_new("w", NULL), &a, &b,
                         NULL, 1};
    cp_context *c = cp_context_new();
    void *r = UNTOUCHED;
    cr_assert_eq(cp_context_run(c, create_child_inside_run, &in, &r), 0);
    cr_assert_null(r, "check at line %d failed", (int)(intptr_t)r);
    cr_assert_eq(in.seen_rc, 0);
    cr_assert_eq(in.seen, &a);
    cr_assert_eq(value_in(c, in.v), &a);
    cr_assert_not(cp_context_contains(c, in.w));
    cp_context_free(c);
    cp_var_free(in.v);
    cp_var_free(in.w);
}

Test(threads, thread_create_gives_fn_result_as_exit_value)
{
    int r;
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, NULL, return_arg, &r), 0);
    void *result = NULL;
    cr_assert_eq(pthread_join(th, &result), 0);
    cr_assert_eq(result, &r);
}

Test(threads, thread_create_reports_attributes_pthread_create_refuses_as_einval)
{
    /* Pinned to a CPU that no machine here has: pthread_create says EINVAL
     * (it is not out of memory, which CP_ENOMEM would say). */
    pthread_attr_t attr;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(CPU_SETSIZE - 1, &cpus);
    cr_assert_eq(pthread_attr_init(&attr), 0);
    cr_assert_eq(pthread_attr_setaffinity_np(&attr, sizeof cpus, &cpus), 0);
    int ran = 0;
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, &attr, return_arg, &ran), CP_EINVAL);
    cr_assert_eq(pthread_attr_destroy(&attr), 0);
}

Test(threads, thread_create_reports_pthread_creates_eagain_as_enomem)
{
    /* A stack larger than the address space: glibc says EAGAIN, out of
     * memory, not invalid (under valgrind, EINVAL). */
    pthread_attr_t attr;
    cr_assert_eq(pthread_attr_init(&attr), 0);
    cr_assert_eq(pthread_attr_setstacksize(&attr, (size_t)1 << 47), 0);
    pthread_t th;
    int plain = pthread_create(&th, &attr, return_arg, NULL);
    cr_assert(plain == EAGAIN || plain == EINVAL, "pthread_create itself gave %d", plain);
    cr_assert_eq(cp_thread_create(&th, &attr, return_arg, NULL),
                 plain == EAGAIN ? CP_ENOMEM : CP_EINVAL);
    cr_assert_eq(pthread_attr_destroy(&attr), 0);
}

/* pthread_setspecific, made to fail once (ENOMEM) for the first call from
 * the library on a thread other than the armer while armed: glibc's fails
 * so past a process's first 32 keys, where it allocates a thread's slots.
 * The test binary's own definition, which the library linked into it
 * calls; so do the C library and sanitizers, whose calls pass. */
typedef int setspecific_fn(pthread_key_t, const void *);
static _Atomic(setspecific_fn *) real_setspecific; /* found at the first call */
static pthread_t setspecific_armer;
static atomic_bool setspecific_armed;

static void *count_run(void *p);

/* Whether code at address ret is in this binary, the library's with it. */
static bool in_this_binary(const void *ret)
{
    Dl_info mine, theirs;
    return dladdr((const void *)count_run, &mine) && dladdr(ret, &theirs) &&
           mine.dli_fbase == theirs.dli_fbase;
}

int pthread_setspecific(pthread_key_t key, const void *value)
{
    if (atomic_load(&setspecific_armed) && !pthread_equal(pthread_self(), setspecific_armer) &&
        in_this_binary(__builtin_return_address(0)) &&
        atomic_exchange(&setspecific_armed, false))
        return ENOMEM;
    /* Early: a sanitizer's start-up calls it before any constructor. */
    setspecific_fn *real = atomic_load(&real_setspecific);
    if (!real) {
        real = (setspecific_fn *)dlsym(RTLD_NEXT, "pthread_setspecific");
        atomic_store(&real_setspecific, real);
    }
    return real(key, value);
}

static void *count_run(void *p)
{
    atomic_fetch_add((atomic_int *)p, 1);
    return NULL;
}

Test(threads, thread_create_reports_a_thread_that_could_not_take_its_copy)
{
    static tval a; /* left in the base context: see tval */
    cp_var *v = cp_var_new("v", tval_free);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    pthread_attr_t detached;
    cr_assert_eq(pthread_attr_init(&detached), 0);
    cr_assert_eq(pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED), 0);
    for (int i = 0; i < 2; i++) {
        /* Joinable, joined by the call; then detached, ending alone. */
        atomic_int ran = 0;
        pthread_t th;
        setspecific_armer = pthread_self();
        atomic_store(&setspecific_armed, true);
        int rc = cp_thread_create(&th, i ? &detached : NULL, count_run, &ran);
        cr_assert_not(atomic_exchange(&setspecific_armed, false),
                      "the new thread set no key");
        /* fn never runs, rather than in an empty context. */
        cr_assert_eq(rc, CP_ENOMEM);
        cr_assert_eq(atomic_load(&ran), 0);
    }
    cr_assert_eq(pthread_attr_destroy(&detached), 0);
    /* The copies went; the creator's value is still its own. */
    void *got = NULL;
    cr_assert_eq(cp_var_get(v, &got), 0);
    cr_assert_eq(got, &a);
    cr_assert_eq(frees_of(&a), 0);
    cp_var_free(v);
}

/* A creator with a cancel pending: cp_thread_create waits for the thread it
 * starts (which writes to the creator's stack until then) without acting on
 * it; the creator's next cancellation point does. */
struct cancelled_creator {
    pthread_t th;
    int rc;
    bool returned;
    atomic_int ran;
};

static void *create_with_cancel_pending(void *p)
{
    struct cancelled_creator *c = p;
    int state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &state);
    pthread_cancel(pthread_self());
    pthread_setcancelstate(state, NULL); /* not a cancellation point */
    c->rc = cp_thread_create(&c->th, NULL, count_run, &c->ran);
    c->returned = true;
    pthread_testcancel();
    return NULL;
}

Test(threads, thread_create_does_not_act_on_a_cancel_while_it_waits)
{
    struct cancelled_creator c = {.rc = -1};
    pthread_t creator;
    cr_assert_eq(pthread_create(&creator, NULL, create_with_cancel_pending, &c), 0);
    void *exit_value = NULL;
    cr_assert_eq(pthread_join(creator, &exit_value), 0);
    cr_assert_eq(exit_value, PTHREAD_CANCELED);
    cr_assert(c.returned, "cancelled inside cp_thread_create");
    cr_assert_eq(c.rc, 0);
    join_ok(c.th);
    cr_assert_eq(atomic_load(&c.ran), 1);
}

Test(threads, a_key_the_process_ran_out_of_is_made_at_the_next_use)
{
    /* The process is out of keys at the library's first use... */
    static pthread_key_t keys[PTHREAD_KEYS_MAX];
    size_t n = 0;
    while (n < PTHREAD_KEYS_MAX && pthread_key_create(&keys[n], NULL) == 0)
        n++;
    cp_var *v = cp_var_new("v", NULL);
    int x = 0;
    int set_without = v ? cp_var_set(v, &x, NULL) : -1;
    pthread_t th;
    int create_without = cp_thread_create(&th, NULL, return_arg, NULL);
    /* ... and has some again. */
    for (size_t i = 0; i < n; i++)
        pthread_key_delete(keys[i]);
    cr_assert_not_null(v);
    cr_assert_eq(set_without, CP_ENOMEM, "a base context needs its key");
    cr_assert_eq(create_without, CP_ENOMEM);
    cr_assert_eq(cp_var_set(v, &x, NULL), 0);
    void *got = NULL;
    cr_assert_eq(cp_var_get(v, &got), 0);
    cr_assert_eq(got, &x);
    struct inherit in = {v, cp_var_new("w", NULL), &x, &x, NULL, 1};
    cr_assert_eq(cp_thread_create(&th, NULL, child_reads_and_sets, &in), 0);
    join_ok(th);
    cr_assert_eq(in.seen_rc, 0);
    cr_assert_eq(in.seen, &x);
    cp_var_free(v);
    cp_var_free(in.w);
}

static void *plain_thread_reads(void *p)
{
    struct inherit *in = p;
    in->seen = UNTOUCHED;
    in->seen_rc = cp_var_get(in->v, &in->seen);
    cp_context *c = cp_copy_context();
    TCHECK(c != NULL);
    TCHECK(cp_context_len(c) == 0);
    cp_context_free(c);
    return NULL;
}

Test(threads, plain_pthread_starts_with_an_empty_context)
{
    int a;
    struct inherit in = {cp_var_new("v", NULL), NULL, &a, NULL, NULL, 1};
    cr_assert_eq(cp_var_set(in.v, &a, NULL), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, plain_thread_reads, &in), 0);
    join_ok(th);
    cr_assert_eq(in.seen_rc, CP_ENOENT);
    cr_assert_eq(in.seen, UNTOUCHED);
    cp_var_free(in.v);
}

#define NTHREADS 8
#define NSHARED 16

struct own_values {
    cp_var **vars;
    tval values[NSHARED];
    pthread_barrier_t *all_set, *all_checked;
};

static void *set_and_check_own_values(void *p)
{
    struct own_values *o = p;
    int failed = 0;
    for (int i = 0; i < NSHARED; i++)
        RECORD(failed, cp_var_set(o->vars[i], &o->values[i], NULL) == 0);
    pthread_barrier_wait(o->all_set); /* every thread has set its values */
    for (int i = 0; i < NSHARED; i++) {
        void *value = NULL;
        RECORD(failed, cp_var_get(o->vars[i], &value) == 0);
        RECORD(failed, value == &o->values[i]);
    }
    cp_context *c = cp_copy_context();
    RECORD(failed, cp_context_len(c) == NSHARED);
    cp_iter *it = cp_context_iter(c);
    void *value;
    size_t n = 0;
    while (cp_iter_next(it, NULL, &value)) {
        n++;
        RECORD(failed, (tval *)value >= &o->values[0] &&
                           (tval *)value < &o->values[NSHARED]);
    }
    RECORD(failed, n == NSHARED);
    cp_iter_free(it);
    cp_context_free(c);
    pthread_barrier_wait(o->all_checked); /* nobody exits before all checked */
    return (void *)(intptr_t)failed;
}

Test(threads, each_thread_sees_only_its_own_base_context_values, .timeout = 30)
{
    cp_var *vars[NSHARED];
    for (int i = 0; i < NSHARED; i++)
        vars[i] = cp_var_new("shared", tval_free);
    static struct own_values own[NTHREADS];
    pthread_barrier_t all_set, all_checked;
    pthread_barrier_init(&all_set, NULL, NTHREADS);
    pthread_barrier_init(&all_checked, NULL, NTHREADS);
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        own[t].vars = vars;
        own[t].all_set = &all_set;
        own[t].all_checked = &all_checked;
        cr_assert_eq(pthread_create(&th[t], NULL, set_and_check_own_values, &own[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        join_ok(th[t]);
    /* The main thread's context never saw any of it. */
    for (int i = 0; i < NSHARED; i++)
        assert_unset_here(vars[i]);
    pthread_barrier_destroy(&all_set);
    pthread_barrier_destroy(&all_checked);
    for (int i = 0; i < NSHARED; i++)
        cp_var_free(vars[i]);
}

Test(threads, base_contexts_are_released_at_thread_exit, .timeout = 30)
{
    cp_var *vars[NSHARED];
    for (int i = 0; i < NSHARED; i++)
        vars[i] = cp_var_new("shared", tval_free);
    static struct own_values own[NTHREADS];
    pthread_barrier_t all_set, all_checked;
    pthread_barrier_init(&all_set, NULL, NTHREADS);
    pthread_barrier_init(&all_checked, NULL, NTHREADS);
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        own[t].vars = vars;
        own[t].all_set = &all_set;
        own[t].all_checked = &all_checked;
        cr_assert_eq(pthread_create(&th[t], NULL, set_and_check_own_values, &own[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        join_ok(th[t]);
    cr_assert_eq(total(), NTHREADS * NSHARED);
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < NSHARED; i++)
            cr_assert_eq(frees_of(&own[t].values[i]), 1);
    pthread_barrier_destroy(&all_set);
    pthread_barrier_destroy(&all_checked);
    for (int i = 0; i < NSHARED; i++)
        cp_var_free(vars[i]);
}

Test(threads, thread_create_copy_is_released_at_thread_exit)
{
    static tval a, b; /* left in the base context: see tval */
    /* w borrows its values, so that b has one owner: v in the child. */
    struct inherit in = {cp_var_new("v", tval_free), cp_var_new("w", NULL),
                         &a, &b, NULL, 1};
    cr_assert_eq(cp_var_set(in.v, &a, NULL), 0);
    pthread_t th;
    cr_assert_eq(cp_thread_create(&th, NULL, child_reads_and_sets, &in), 0);
    join_ok(th);
    /* The child's base context went with the child; a is still the
     * creator's. */
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(frees_of(&a), 0);
    cp_var_free(in.v);
    cp_var_free(in.w);
}

/* The forked child of exit_releases_the_main_threads_base_context_first
 * writes to this pipe what happens at its exit: 'f' when its value is
 * freed; and when its own atexit handler runs, 'h' if the value is still
 * there, '-' if not. */
static int exit_pipe = -1;
static cp_var *exit_var;
static int exit_value;

static void exit_note(char what)
{
    if (write(exit_pipe, &what, 1) != 1)
        _exit(2);
}

static void exit_value_free(void *p)
{
    exit_note(p == &exit_value ? 'f' : '?');
}

static void exit_handler(void)
{
    void *v = NULL;
    exit_note(cp_var_get(exit_var, &v) == 0 && v == &exit_value ? 'h' : '-');
}

/* Fork; the child runs `child`, which sets up what its exit is to do, and
 * exits; then check what it wrote to exit_pipe.
 * Under LeakSanitizer the child's exit check warns that a thread "was not
 * suspended": Criterion's main thread, which the child (forked from the
 * test's thread) does not have. */
static void exit_check(void (*child)(void), const char *want)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        /* Returning from main is exit(), which runs the calling thread's
         * thread-exit functions, but none of its pthread key destructors. */
        close(fds[0]);
        exit_pipe = fds[1];
        child();
        exit(0);
    }
    close(fds[1]);
    char got[8] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof got - 1 && (r = read(fds[0], got + n, sizeof got - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    cr_assert_str_eq(got, want);
}

static void set_exit_value(void (*free_value)(void *))
{
    exit_var = cp_var_new("exit", free_value);
    if (!exit_var || cp_var_set(exit_var, &exit_value, NULL) != 0 || atexit(exit_handler))
        _exit(3);
}

static void set_exit_value_freed_plainly(void)
{
    set_exit_value(exit_value_free);
}

Test(threads, exit_releases_the_main_threads_base_context_first, .timeout = 30)
{
    /* The value was freed once, before the program's atexit handler, as a
     * C++ thread_local object is destroyed before them. */
    exit_check(set_exit_value_freed_plainly, "f-");
}

/* A free_value run by that release sets another variable, in a base
 * context made anew: released too, its value freed ('g') before the
 * atexit handler, as a key destructor that sets a key runs again. */
static cp_var *exit_var_late;
static int exit_value_late;

static void exit_value_late_free(void *p)
{
    exit_note(p == &exit_value_late ? 'g' : '?');
}

static void exit_value_free_and_set(void *p)
{
    exit_value_free(p);
    if (cp_var_set(exit_var_late, &exit_value_late, NULL) != 0)
        exit_note('!');
}

static void set_exit_value_whose_free_sets(void)
{
    exit_var_late = cp_var_new("late", exit_value_late_free);
    if (!exit_var_late)
        _exit(3);
    set_exit_value(exit_value_free_and_set);
}

Test(threads, exit_releases_a_base_context_a_free_value_made_at_exit, .timeout = 30)
{
    exit_check(set_exit_value_whose_free_sets, "fg-");
}

/* ------------------------------------------------------------------------ */
/* A reader on another thread never sees a torn context                      */

/* The owner runs inside c and, round after round, sets var 0, 1, ..., RV-1
 * (each with a token) to that round's values and then resets them in reverse
 * order. So at every moment c holds exactly the variables 0..n-1 for some n,
 * all with values of one round (values[round % 2]). A snapshot that breaks
 * this, or whose len disagrees with its contents, is torn. */
#define RV 32
#define RROUNDS 150

struct prefix_world {
    cp_context *c;
    cp_var *vars[RV];
    tval values[2][RV];
    pthread_barrier_t started;
    atomic_bool done;
};

static int var_index(const struct prefix_world *pw, const cp_var *k)
{
    for (int i = 0; i < RV; i++)
        if (pw->vars[i] == k)
            return i;
    return -1;
}

static int parity_of(const struct prefix_world *pw, int i, const void *value)
{
    if (value == &pw->values[0][i])
        return 0;
    if (value == &pw->values[1][i])
        return 1;
    return -1;
}

/* 0 when the iterator lists exactly vars 0..n-1 (n == expect_n unless that
 * is SIZE_MAX) with values of one round; else the line of the failed check. */
static int check_prefix_iter(const struct prefix_world *pw, cp_iter *it,
                             size_t expect_n)
{
    int seen[RV] = {0};
    int parity = -1;
    size_t n = 0;
    cp_var *k;
    void *value;
    while (cp_iter_next(it, &k, &value)) {
        int i = var_index(pw, k);
        if (i < 0 || seen[i]++)
            return __LINE__;
        int p = parity_of(pw, i, value);
        if (p < 0 || (parity >= 0 && p != parity))
            return __LINE__;
        parity = p;
        n++;
    }
    if (expect_n != SIZE_MAX && n != expect_n)
        return __LINE__;
    for (size_t i = 0; i < RV; i++)
        if ((seen[i] != 0) != (i < n))
            return __LINE__;
    return 0;
}

/* 0 when the (unchanging) snapshot snap is consistent. */
static int check_prefix_snapshot(const struct prefix_world *pw, const cp_context *snap)
{
    size_t n = cp_context_len(snap);
    if (n > RV)
        return __LINE__;
    int parity = -1;
    for (size_t i = 0; i < RV; i++) {
        void *value = UNTOUCHED;
        int rc = cp_context_get(snap, pw->vars[i], &value);
        if (i >= n) {
            if (rc != CP_ENOENT || cp_context_contains(snap, pw->vars[i]))
                return __LINE__;
            continue;
        }
        if (rc != 0)
            return __LINE__;
        int p = parity_of(pw, (int)i, value);
        if (p < 0 || (parity >= 0 && p != parity))
            return __LINE__;
        parity = p;
    }
    cp_iter *it = cp_context_iter(snap);
    if (!it)
        return __LINE__;
    int line = check_prefix_iter(pw, it, n);
    cp_iter_free(it);
    return line;
}

static void *prefix_owner_fn(void *p)
{
    struct prefix_world *pw = p;
    cp_token *tokens[RV];
    int failed = 0;
    pthread_barrier_wait(&pw->started);
    for (int r = 0; r < RROUNDS; r++) {
        for (int i = 0; i < RV; i++) {
            RECORD(failed, cp_var_set(pw->vars[i], &pw->values[r % 2][i],
                                      &tokens[i]) == 0);
            RECORD(failed, cp_context_len(pw->c) == (size_t)i + 1);
        }
        for (int i = RV - 1; i >= 0; i--) {
            RECORD(failed, cp_var_reset(pw->vars[i], tokens[i]) == 0);
            cp_token_free(tokens[i]);
        }
        RECORD(failed, cp_context_len(pw->c) == 0);
    }
    /* release: the reader's acquire load sees everything before it. */
    atomic_store_explicit(&pw->done, true, memory_order_release);
    return (void *)(intptr_t)failed;
}

static void *prefix_owner_thread(void *p)
{
    struct prefix_world *pw = p;
    void *r = UNTOUCHED;
    int rc = cp_context_run(pw->c, prefix_owner_fn, pw, &r);
    if (rc != 0) {
        atomic_store_explicit(&pw->done, true, memory_order_release);
        pthread_barrier_wait(&pw->started);
        return (void *)(intptr_t)__LINE__;
    }
    return r;
}

Test(threads, reader_never_sees_a_torn_context_while_its_owner_sets, .timeout = 60)
{
    static struct prefix_world pw;
    pw.c = cp_context_new();
    for (int i = 0; i < RV; i++)
        pw.vars[i] = cp_var_new("prefix", tval_free);
    pthread_barrier_init(&pw.started, NULL, 2);
    atomic_init(&pw.done, false);
    pthread_t owner;
    cr_assert_eq(pthread_create(&owner, NULL, prefix_owner_thread, &pw), 0);
    pthread_barrier_wait(&pw.started); /* the owner is inside the run */
    unsigned long reads = 0;
    int line = 0;
    do {
        cp_context *snap = cp_context_copy(pw.c);
        cr_assert_not_null(snap);
        line = check_prefix_snapshot(&pw, snap);
        cp_context_free(snap);
        cr_assert_eq(line, 0, "torn copy, check at line %d (read %lu)", line, reads);

        cp_iter *it = cp_context_iter(pw.c);
        cr_assert_not_null(it);
        line = check_prefix_iter(&pw, it, SIZE_MAX);
        cp_iter_free(it);
        cr_assert_eq(line, 0, "torn iterator, check at line %d (read %lu)", line, reads);

        /* Single reads of the live context: each must be a value of a round. */
        cr_assert_leq(cp_context_len(pw.c), RV);
        for (int i = 0; i < RV; i += 7) {
            void *value = NULL;
            if (cp_context_get(pw.c, pw.vars[i], &value) == 0)
                cr_assert_geq(parity_of(&pw, i, value), 0);
        }
        reads++;
    } while (!atomic_load_explicit(&pw.done, memory_order_acquire));
    join_ok(owner);
    cr_assert_eq(cp_context_len(pw.c), 0);
    cp_context_free(pw.c);
    /* Every value set was freed once, none more. */
    cr_assert_eq(total(), RROUNDS * RV);
    pthread_barrier_destroy(&pw.started);
    for (int i = 0; i < RV; i++)
        cp_var_free(pw.vars[i]);
}

/* ------------------------------------------------------------------------ */
/* NULL arguments                                                            */

Test(null, var_functions_reject_null)
{
    int a, fb;
    cp_var *v = cp_var_new("v", NULL);
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    void *value = UNTOUCHED;
    cr_assert_eq(cp_var_get(NULL, &value), CP_EINVAL);
    cr_assert_eq(value, UNTOUCHED);
    cr_assert_eq(cp_var_get(v, NULL), CP_EINVAL);
    cr_assert_eq(cp_var_get_or(NULL, &fb), &fb);
    cp_token *t = UNTOUCHED;
    cr_assert_eq(cp_var_set(NULL, &fb, &t), CP_EINVAL);
    cr_assert_eq(t, UNTOUCHED);
    cr_assert_eq(cp_var_reset(v, NULL), CP_EINVAL);
    cr_assert_eq(cp_var_reset(NULL, NULL), CP_EINVAL);
    cr_assert_str_eq(cp_var_name(NULL), "");
    cr_assert_eq(current_value(v), &a);
    cp_var_free(v);
}

Test(null, reset_with_null_var_fails_and_leaves_the_token_usable)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_eq(cp_var_reset(NULL, t), CP_EINVAL);
    cr_assert_eq(current_value(v), &a);
    cr_assert_eq(cp_var_reset(v, t), 0);
    assert_unset_here(v);
    cp_token_free(t);
    cp_var_free(v);
}

Test(null, token_functions_reject_null)
{
    int a;
    cp_var *v = cp_var_new("v", NULL);
    cp_token *t = NULL;
    cr_assert_eq(cp_var_set(v, &a, NULL), 0);
    cr_assert_eq(cp_var_set(v, &a, &t), 0);
    cr_assert_null(cp_token_var(NULL));
    void *old = UNTOUCHED;
    cr_assert_eq(cp_token_old_value(NULL, &old), CP_EINVAL);
    cr_assert_eq(old, UNTOUCHED);
    cr_assert_eq(cp_token_old_value(t, NULL), CP_EINVAL);
    cp_token_free(t);
    cp_var_free(v);
}

Test(null, context_functions_reject_null)
{
    int a, fb;
    cp_var *v = cp_var_new("v", NULL);
    cp_context *c = cp_context_new();
    cr_assert_eq(set_in(c, v, &a, NULL), 0);
    cr_assert_null(cp_context_copy(NULL));
    void *result = UNTOUCHED;
    cr_assert_eq(cp_context_run(NULL, count_call, NULL, &result), CP_EINVAL);
    cr_assert_eq(cp_context_run(c, NULL, NULL, &result), CP_EINVAL);
    cr_assert_eq(result, UNTOUCHED);
    cr_assert_eq(atomic_load(&calls), 0);
    /* The refused run did not leave c entered. */
    cr_assert_eq(cp_context_run(c, count_call, NULL, NULL), 0);
    cr_assert_not(cp_context_contains(NULL, v));
    cr_assert_not(cp_context_contains(c, NULL));
    void *value = UNTOUCHED;
    cr_assert_eq(cp_context_get(NULL, v, &value), CP_EINVAL);
    cr_assert_eq(cp_context_get(c, NULL, &value), CP_EINVAL);
    cr_assert_eq(value, UNTOUCHED);
    cr_assert_eq(cp_context_get(c, v, NULL), CP_EINVAL);
    cr_assert_eq(cp_context_get_or(NULL, v, &fb), &fb);
    cr_assert_eq(cp_context_get_or(c, NULL, &fb), &fb);
    cr_assert_eq(cp_context_len(NULL), 0);
    cr_assert_eq(value_in(c, v), &a);
    cp_context_free(c);
    cp_var_free(v);
}

Test(null, iter_functions_reject_null)
{
    cr_assert_null(cp_context_iter(NULL));
    cp_var *k = UNTOUCHED;
    void *value = UNTOUCHED;
    cr_assert_not(cp_iter_next(NULL, &k, &value));
    cr_assert_eq((void *)k, UNTOUCHED);
    cr_assert_eq(value, UNTOUCHED);
}

Test(null, thread_create_rejects_null)
{
    pthread_t th;
    cr_assert_eq(cp_thread_create(NULL, NULL, count_call, NULL), CP_EINVAL);
    cr_assert_eq(cp_thread_create(&th, NULL, NULL, NULL), CP_EINVAL);
    cr_assert_eq(atomic_load(&calls), 0);
}

Test(null, freeing_null_is_harmless)
{
    cp_var_free(NULL);
    cp_token_free(NULL);
    cp_context_free(NULL);
    cp_iter_free(NULL);
}

/* ------------------------------------------------------------------------ */
/* Allocation failure: CP_ENOMEM / NULL, and nothing changed                 */

typedef int (*attempt_fn)(void *state);
typedef void (*check_fn)(void *state);

/* Fail the 1st, 2nd, ... allocation of attempt(state) until it succeeds.
 * Each failure must be CP_ENOMEM and pass unchanged(state). Returns the
 * number of allocations the successful call made. */
static unsigned long fail_each_alloc(attempt_fn attempt, check_fn unchanged,
                                     void *state)
{
    for (unsigned long n = 1; n <= 1000; n++) {
        unsigned long before = cp__alloc_count();
        cp__alloc_fail_nth(n);
        int rc = attempt(state);
        cp__alloc_fail_nth(0);
        unsigned long made = cp__alloc_count() - before;
        if (rc == 0) {
            cr_assert_eq(made, n - 1,
                         "succeeded although its allocation %lu of %lu failed",
                         n, made);
            return made;
        }
        cr_assert_eq(rc, CP_ENOMEM, "allocation %lu failing gave %d (%s)", n, rc,
                     cp_strerror(rc));
        cr_assert_geq(made, n, "failed with only %lu allocations made", made);
        unchanged(state);
    }
    cr_assert_fail("still failing after 1000 allocations");
    return 0;
}

static void nothing_to_check(void *state)
{
    (void)state;
}

struct one_var {
    cp_var *v;
    tval d;
};

static int attempt_var_new(void *p)
{
    struct one_var *s = p;
    s->v = cp_var_new("v", tval_free);
    return s->v ? 0 : CP_ENOMEM;
}

Test(enomem, var_new_returns_null)
{
    struct one_var s = {0};
    cr_assert_eq(fail_each_alloc(attempt_var_new, nothing_to_check, &s), 1);
    cr_assert_str_eq(cp_var_name(s.v), "v");
    cp_var_free(s.v);
    cr_assert_eq(total(), 0);
}

static int attempt_var_new_default(void *p)
{
    struct one_var *s = p;
    s->v = cp_var_new_default("v", &s->d, tval_free);
    return s->v ? 0 : CP_ENOMEM;
}

static void default_not_freed(void *p)
{
    struct one_var *s = p;
    cr_assert_eq(frees_of(&s->d), 0, "a failed cp_var_new_default freed the default");
}

Test(enomem, var_new_default_returns_null_and_does_not_free_the_default)
{
    struct one_var s = {0};
    cr_assert_geq(fail_each_alloc(attempt_var_new_default, default_not_freed, &s), 1);
    cr_assert_eq(current_value(s.v), &s.d);
    cp_var_free(s.v);
    cr_assert_eq(frees_of(&s.d), 1);
}

/* One allocation through the hook: whether it succeeded (it is freed). */
static bool alloc_succeeds(void)
{
    void *p = cp__malloc(8);
    cp__free(p);
    return p != NULL;
}

/* The failure hook on a thread of its own: the count starts at 0, counts
 * every allocation, the failed one and those after it (the hook is off
 * again after its failure), and goes on unchanged across
 * cp__alloc_fail_nth(0). */
static void *alloc_hook_counts(void *unused)
{
    (void)unused;
    TCHECK(cp__alloc_count() == 0);
    TCHECK(alloc_succeeds());
    TCHECK(cp__alloc_count() == 1);
    cp__alloc_fail_nth(2);
    TCHECK(cp__alloc_count() == 1);
    TCHECK(alloc_succeeds());
    TCHECK(cp__malloc(8) == NULL); /* the 2nd from the arming */
    TCHECK(cp__alloc_count() == 3);
    for (int i = 0; i < 1000; i++)
        TCHECK(alloc_succeeds()); /* off again */
    TCHECK(cp__alloc_count() == 1003);
    cp__alloc_fail_nth(0);
    TCHECK(cp__alloc_count() == 1003);
    TCHECK(alloc_succeeds());
    TCHECK(cp__alloc_count() == 1004);
    return NULL;
}

Test(enomem, the_hook_counts_from_zero_across_its_failure_and_its_disarming)
{
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, alloc_hook_counts, NULL), 0);
    join_ok(th);
}

/* The main thread's base context holds v = a and w = keep. */
struct base_set {
    cp_var *v, *w;
    tval a, b, keep;
    cp_token *t;
    bool with_token;
};

static void base_set_init(struct base_set *s, bool with_token)
{
    s->v = cp_var_new("v", tval_free);
    s->w = cp_var_new("w", tval_free);
    s->with_token = with_token;
    s->t = NULL;
    cr_assert_eq(cp_var_set(s->v, &s->a, NULL), 0);
    cr_assert_eq(cp_var_set(s->w, &s->keep, NULL), 0);
}

static int attempt_base_set(void *p)
{
    struct base_set *s = p;
    return cp_var_set(s->v, &s->b, s->with_token ? &s->t : NULL);
}

static void base_set_unchanged(void *p)
{
    struct base_set *s = p;
    cr_assert_eq(current_value(s->v), &s->a);
    cr_assert_eq(current_value(s->w), &s->keep);
    cr_assert_null(s->t, "a failed set wrote the token");
    cr_assert_eq(total(), 0, "a failed set freed a value");
    cp_context *c = cp_copy_context();
    cr_assert_eq(cp_context_len(c), 2);
    cr_assert_eq(value_in(c, s->v), &s->a);
    cp_context_free(c);
}

Test(enomem, var_set_changes_nothing)
{
    static struct base_set s; /* left in the base context: see tval */
    base_set_init(&s, false);
    cr_assert_geq(fail_each_alloc(attempt_base_set, base_set_unchanged, &s), 1);
    cr_assert_eq(current_value(s.v), &s.b);
    cr_assert_eq(frees_of(&s.a), 1);
    cr_assert_eq(frees_of(&s.b), 0);
    cp_var_free(s.v);
    cp_var_free(s.w);
}

Test(enomem, var_set_with_token_changes_nothing)
{
    static struct base_set s; /* left in the base context: see tval */
    base_set_init(&s, true);
    cr_assert_geq(fail_each_alloc(attempt_base_set, base_set_unchanged, &s), 2);
    cr_assert_eq(current_value(s.v), &s.b);
    cr_assert_not_null(s.t);
    void *old = NULL;
    cr_assert_eq(cp_token_old_value(s.t, &old), 0);
    cr_assert_eq(old, &s.a);
    cr_assert_eq(cp_var_reset(s.v, s.t), 0);
    cr_assert_eq(current_value(s.v), &s.a);
    cr_assert_eq(frees_of(&s.b), 1);
    cr_assert_eq(frees_of(&s.a), 0);
    cp_token_free(s.t);
    cp_var_free(s.v);
    cp_var_free(s.w);
}

static int attempt_base_set_same(void *p)
{
    struct base_set *s = p;
    return cp_var_set(s->v, &s->a, &s->t);
}

/* A set of the value the variable has makes its item before the map says
 * the value is there: a failure of either allocation (token, item) changes
 * nothing, and the success frees neither the value nor anything else, and
 * gives a token whose old value is that value. */
Test(enomem, var_set_of_the_value_it_has_changes_nothing)
{
    static struct base_set s; /* left in the base context: see tval */
    base_set_init(&s, true);
    cr_assert_eq(fail_each_alloc(attempt_base_set_same, base_set_unchanged, &s), 2);
    cr_assert_eq(current_value(s.v), &s.a);
    cr_assert_eq(total(), 0, "an identical set freed a value");
    void *old = NULL;
    cr_assert_eq(cp_token_old_value(s.t, &old), 0);
    cr_assert_eq(old, &s.a);
    cr_assert_eq(cp_var_reset(s.v, s.t), 0);
    cr_assert_eq(current_value(s.v), &s.a);
    cp_token_free(s.t);
    cr_assert_eq(total(), 0, "the token's end freed the value the context has");
    cp_var_free(s.v);
    cp_var_free(s.w);
}

/* A set that took the thread's kept references and then failed lets go of
 * them: v still ends exactly once, at its cp_var_free. */
Test(enomem, var_set_taking_kept_references_changes_nothing)
{
    tval d = {0}, a = {0}, b = {0};
    cp_var *v = cp_var_new_default("v", &d, tval_free);
    cp_token *t = NULL;
    int rc = CP_ENOMEM;
    unsigned long n;
    for (n = 1; rc != 0 && n <= 1000; n++) {
        /* Keep two references (v had no value), for the set that takes them. */
        cr_assert_null(set_reset_free(&(struct set_args){v, &a, NULL, 0}));
        cp__alloc_fail_nth(n);
        rc = cp_var_set(v, &b, &t);
        cp__alloc_fail_nth(0);
        if (rc != 0) {
            cr_assert_eq(rc, CP_ENOMEM);
            cr_assert_null(t);
            cr_assert_eq(current_value(v), &d);
            cr_assert_eq(frees_of(&b), 0);
        }
    }
    cr_assert_eq(rc, 0);
    cr_assert_gt(n, 3, "no failure after the set took the kept references");
    cr_assert_eq(cp_var_reset(v, t), 0);
    cp_token_free(t);
    cr_assert_eq(frees_of(&d), 0);
    cp_var_free(v);
    cr_assert_eq(frees_of(&d), 1, "a failed set lost or added references");
    cr_assert_eq(frees_of(&b), 1);
}

/* A fresh thread's first set, which must also create its base context. The
 * allocation hook is per thread, so the fresh thread arms it itself. */
struct fresh_set {
    cp_var *v;
    tval a;
    cp_token *t;
    int rc;
    unsigned long fail_nth, made;
};

static void *first_set_on_fresh_thread(void *p)
{
    struct fresh_set *s = p;
    s->t = NULL;
    unsigned long before = cp__alloc_count();
    cp__alloc_fail_nth(s->fail_nth);
    s->rc = cp_var_set(s->v, &s->a, &s->t);
    cp__alloc_fail_nth(0);
    s->made = cp__alloc_count() - before;
    void *value = UNTOUCHED;
    if (s->rc != 0) {
        TCHECK(cp_var_get(s->v, &value) == CP_ENOENT);
        TCHECK(value == UNTOUCHED);
        TCHECK(s->t == NULL);
    } else {
        TCHECK(cp_var_get(s->v, &value) == 0 && value == &s->a);
        cp_token_free(s->t);
    }
    return NULL;
}

static void fresh_set_unchanged(void *p)
{
    struct fresh_set *s = p;
    /* The thread is gone; had its set taken the value, its exit would have
     * freed it. */
    cr_assert_eq(frees_of(&s->a), 0, "a failed first set took or freed the value");
}

Test(enomem, first_var_set_on_a_fresh_thread_changes_nothing, .timeout = 60)
{
    struct fresh_set s = {0};
    s.v = cp_var_new("v", tval_free);
    /* As fail_each_alloc, with the failures made on the fresh thread. */
    unsigned long n;
    for (n = 1; n <= 1000; n++) {
        pthread_t th;
        s.fail_nth = n;
        cr_assert_eq(pthread_create(&th, NULL, first_set_on_fresh_thread, &s), 0);
        join_ok(th);
        if (s.rc == 0) {
            cr_assert_eq(s.made, n - 1, "succeeded although allocation %lu failed", n);
            break;
        }
        cr_assert_eq(s.rc, CP_ENOMEM, "allocation %lu failing gave %d", n, s.rc);
        cr_assert_geq(s.made, n, "failed with only %lu allocations made", s.made);
        fresh_set_unchanged(&s);
    }
    cr_assert_geq(s.made, 3, "a first set makes the base, the item and the token");
    /* The successful set was released with its thread. */
    cr_assert_eq(frees_of(&s.a), 1);
    cp_var_free(s.v);
}

/* A heap context with NBIG variables, each vars[i] = values[i]. */
#define NBIG 200

struct big {
    cp_context *c;
    cp_var *vars[NBIG];
    tval values[NBIG];
    cp_var *extra;       /* not in c unless extra_in */
    tval extra_value, replacement;
    bool extra_in;
    cp_token *t;
    cp_context *copy;
    cp_iter *it;
    cp_context *snapshot; /* shares c's map: changes must copy, not reuse */
    void *shared[NBIG + 1]; /* what c held when the snapshot was taken */
};

static struct big big;

static void big_init(void)
{
    big.c = cp_context_new();
    for (int i = 0; i < NBIG; i++) {
        big.vars[i] = cp_var_new("big", tval_free);
        cr_assert_eq(set_in(big.c, big.vars[i], &big.values[i], NULL), 0);
    }
    big.extra = cp_var_new("extra", tval_free);
    big.extra_in = false;
    big.t = NULL;
}

static void big_unchanged(void *p)
{
    (void)p;
    cr_assert_eq(cp_context_len(big.c), NBIG + (big.extra_in ? 1 : 0));
    for (int i = 0; i < NBIG; i++)
        cr_assert_eq(value_in(big.c, big.vars[i]), &big.values[i]);
    if (big.extra_in)
        cr_assert_eq(value_in(big.c, big.extra), &big.extra_value);
    else
        cr_assert_not(cp_context_contains(big.c, big.extra));
    cr_assert_eq(total(), 0, "a failed call freed a value");
}

/* Take a snapshot of c, so that c's changes copy the paths they change
 * (allocating) instead of reusing nodes nobody else holds. */
static void big_share(void)
{
    big.snapshot = cp_context_copy(big.c);
    cr_assert_not_null(big.snapshot);
    for (int i = 0; i < NBIG; i++)
        big.shared[i] = value_in(big.c, big.vars[i]);
    big.shared[NBIG] = cp_context_get_or(big.c, big.extra, NULL);
}

/* The snapshot still holds exactly what c held when it was taken; free it. */
static void big_snapshot_intact(void)
{
    for (int i = 0; i < NBIG; i++)
        cr_assert_eq(value_in(big.snapshot, big.vars[i]), big.shared[i]);
    cr_assert_eq(cp_context_get_or(big.snapshot, big.extra, NULL), big.shared[NBIG]);
    cr_assert_eq(cp_context_len(big.snapshot), NBIG + (big.shared[NBIG] != NULL));
    cp_context_free(big.snapshot);
}

static void big_fini(void)
{
    cp_context_free(big.c);
    for (int i = 0; i < NBIG; i++)
        cp_var_free(big.vars[i]);
    cp_var_free(big.extra);
}

static int attempt_big_set_new(void *p)
{
    (void)p;
    return set_in(big.c, big.extra, &big.extra_value, &big.t);
}

static void big_set_unchanged(void *p)
{
    big_unchanged(p);
    cr_assert_null(big.t, "a failed set wrote the token");
}

Test(enomem, var_set_of_a_new_var_in_a_large_context_changes_nothing)
{
    big_init();
    big_share(); /* else the item may fit in a spare slot: no node allocated */
    cr_assert_geq(fail_each_alloc(attempt_big_set_new, big_set_unchanged, NULL), 3);
    big_snapshot_intact();
    cr_assert_eq(value_in(big.c, big.extra), &big.extra_value);
    cr_assert_eq(cp_context_len(big.c), NBIG + 1);
    cr_assert_eq(total(), 0);
    cp_token_free(big.t);
    big_fini();
    cr_assert_eq(total(), NBIG + 1);
}

static int attempt_big_replace(void *p)
{
    (void)p;
    return set_in(big.c, big.vars[NBIG / 2], &big.replacement, NULL);
}

Test(enomem, var_set_replacing_a_value_in_a_large_context_changes_nothing)
{
    big_init();
    big_share();
    cr_assert_geq(fail_each_alloc(attempt_big_replace, big_unchanged, NULL), 2);
    cr_assert_eq(value_in(big.c, big.vars[NBIG / 2]), &big.replacement);
    cr_assert_eq(frees_of(&big.values[NBIG / 2]), 0, "the snapshot holds it");
    big_snapshot_intact();
    cr_assert_eq(frees_of(&big.values[NBIG / 2]), 1);
    cr_assert_eq(total(), 1);
    big_fini();
    cr_assert_eq(total(), NBIG + 1);
}

static int attempt_big_reset(void *p)
{
    (void)p;
    return reset_in(big.c, big.vars[NBIG / 3], big.t);
}

static void big_reset_unchanged(void *p)
{
    (void)p;
    cr_assert_eq(cp_context_len(big.c), NBIG);
    for (int i = 0; i < NBIG; i++)
        cr_assert_eq(value_in(big.c, big.vars[i]),
                     i == NBIG / 3 ? &big.replacement : &big.values[i]);
    cr_assert_eq(total(), 0, "a failed reset freed a value");
}

Test(enomem, var_reset_to_an_old_value_in_a_large_context_changes_nothing)
{
    big_init();
    cr_assert_eq(set_in(big.c, big.vars[NBIG / 3], &big.replacement, &big.t), 0);
    big_share();
    cr_assert_geq(fail_each_alloc(attempt_big_reset, big_reset_unchanged, NULL), 1);
    big_snapshot_intact();
    cr_assert_eq(value_in(big.c, big.vars[NBIG / 3]), &big.values[NBIG / 3]);
    cr_assert_eq(frees_of(&big.replacement), 1);
    cr_assert_eq(total(), 1);
    /* The successful reset used the token. */
    cr_assert_eq(reset_in(big.c, big.vars[NBIG / 3], big.t), CP_ETOKEN_USED);
    cp_token_free(big.t);
    big_fini();
    cr_assert_eq(total(), NBIG + 1);
}

static int attempt_big_reset_to_missing(void *p)
{
    (void)p;
    return reset_in(big.c, big.extra, big.t);
}

Test(enomem, var_reset_to_missing_in_a_large_context_changes_nothing)
{
    big_init();
    cr_assert_eq(set_in(big.c, big.extra, &big.extra_value, &big.t), 0);
    big.extra_in = true;
    big_share();
    cr_assert_geq(fail_each_alloc(attempt_big_reset_to_missing, big_unchanged, NULL), 1);
    big_snapshot_intact();
    cr_assert_not(cp_context_contains(big.c, big.extra));
    cr_assert_eq(cp_context_len(big.c), NBIG);
    cr_assert_eq(frees_of(&big.extra_value), 1);
    cp_token_free(big.t);
    big_fini();
    cr_assert_eq(total(), NBIG + 1);
}

static int attempt_big_copy(void *p)
{
    (void)p;
    big.copy = cp_context_copy(big.c);
    return big.copy ? 0 : CP_ENOMEM;
}

Test(enomem, context_copy_returns_null_and_changes_nothing)
{
    big_init();
    cr_assert_eq(fail_each_alloc(attempt_big_copy, big_unchanged, NULL), 1);
    cr_assert_eq(cp_context_len(big.copy), NBIG);
    cr_assert_eq(value_in(big.copy, big.vars[7]), &big.values[7]);
    cp_context_free(big.copy);
    cr_assert_eq(total(), 0);
    big_fini();
    cr_assert_eq(total(), NBIG);
}

static int attempt_big_iter(void *p)
{
    (void)p;
    big.it = cp_context_iter(big.c);
    return big.it ? 0 : CP_ENOMEM;
}

Test(enomem, context_iter_returns_null_and_changes_nothing)
{
    big_init();
    cr_assert_eq(fail_each_alloc(attempt_big_iter, big_unchanged, NULL), 1);
    size_t n = 0;
    while (cp_iter_next(big.it, NULL, NULL))
        n++;
    cr_assert_eq(n, NBIG);
    cp_iter_free(big.it);
    big_fini();
    cr_assert_eq(total(), NBIG);
}

struct copy_current {
    cp_var *v;
    tval a;
    cp_context *copy;
};

static int attempt_copy_context(void *p)
{
    struct copy_current *s = p;
    s->copy = cp_copy_context();
    return s->copy ? 0 : CP_ENOMEM;
}

static void copy_current_unchanged(void *p)
{
    struct copy_current *s = p;
    cr_assert_eq(current_value(s->v), &s->a);
    cr_assert_eq(total(), 0);
}

Test(enomem, copy_context_returns_null_and_changes_nothing)
{
    static struct copy_current s; /* left in the base context: see tval */
    s.v = cp_var_new("v", tval_free);
    cr_assert_eq(cp_var_set(s.v, &s.a, NULL), 0);
    cr_assert_eq(fail_each_alloc(attempt_copy_context, copy_current_unchanged, &s), 1);
    cr_assert_eq(value_in(s.copy, s.v), &s.a);
    cp_context_free(s.copy);
    cr_assert_eq(total(), 0);
    cp_var_free(s.v);
}

static int attempt_context_new(void *p)
{
    cp_context **c = p;
    *c = cp_context_new();
    return *c ? 0 : CP_ENOMEM;
}

Test(enomem, context_new_returns_null)
{
    cp_context *c = NULL;
    cr_assert_eq(fail_each_alloc(attempt_context_new, nothing_to_check, &c), 1);
    cr_assert_eq(cp_context_len(c), 0);
    cp_context_free(c);
}

struct create {
    cp_var *v;
    tval a;
    pthread_t th;
    struct inherit in;
};

static int attempt_thread_create(void *p)
{
    struct create *s = p;
    return cp_thread_create(&s->th, NULL, child_reads_and_sets, &s->in);
}

static void thread_create_unchanged(void *p)
{
    struct create *s = p;
    cr_assert_eq(current_value(s->v), &s->a);
    cr_assert_eq(total(), 0);
    cr_assert_eq(s->in.seen, NULL, "fn ran although cp_thread_create failed");
}

Test(enomem, thread_create_fails_and_changes_nothing)
{
    static tval b;
    static struct create s; /* left in the base context: see tval */
    s.v = cp_var_new("v", tval_free);
    s.in = (struct inherit){s.v, cp_var_new("w", NULL), &s.a, &b, NULL, 1};
    cr_assert_eq(cp_var_set(s.v, &s.a, NULL), 0);
    cr_assert_geq(fail_each_alloc(attempt_thread_create, thread_create_unchanged, &s), 1);
    join_ok(s.th);
    cr_assert_eq(s.in.seen_rc, 0);
    cr_assert_eq(s.in.seen, &s.a);
    cr_assert_eq(current_value(s.v), &s.a);
    /* The child's base context went with it: b freed, a still shared. */
    cr_assert_eq(frees_of(&b), 1);
    cr_assert_eq(frees_of(&s.a), 0);
    cr_assert_eq(total(), 1);
    cp_var_free(s.v);
    cp_var_free(s.in.w);
}
