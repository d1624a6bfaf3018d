/* fuzz_context.c - a libFuzzer target for contexts, variables, tokens and the
 * HAMT, each operation checked against a reference model.
 *
 * Why a model and not just sanitizers: most bugs in a persistent map do not
 * crash, they return the wrong value, keep a value alive too long or free it
 * one holder too early. So every input is decoded as a program of operations,
 * the same program is run on a plain model (arrays indexed by small ids), and
 * after every operation the library must agree with the model in everything
 * it can be asked: each context's values and length, the calling thread's
 * view through cp_var_get, iteration (every variable exactly once), token
 * contents, and which values are alive. Values are counted: the library must
 * free each value it owns exactly once, and as soon as no context, token,
 * iterator or variable default refers to it (the contract of cp_var_new), so
 * a missing or late release is found at the operation that caused it, not
 * only as a leak at the end.
 *
 * Input format: byte 0 chooses the mode.
 * - Even: context mode. The rest is a sequence of operations (opcode byte,
 *   then a few argument bytes; a short input reads as zeros). Everything runs
 *   inside a fresh top-level context entered with cp_context_run, so no state
 *   is left in the thread's base context between inputs. OP_RUN enters
 *   another context and decodes the following operations inside it until
 *   OP_END; entering one that is already entered must give CP_ERECURSIVE.
 *   OP_REMOTE does reads and a run from a second thread (CP_EBUSY when the
 *   context is entered here).
 * - Odd: raw HAMT mode. Bits 1-3 choose how an input byte becomes a 32-bit
 *   hash; the patterns have few distinct bits, so keys collide and chains go
 *   down to the last level. Operations set, delete, snapshot and switch
 *   between maps; HOP_GIVEN switches sets and deletes to the given functions
 *   (nodes nobody else holds reused in place), which must report the item
 *   that left. After each operation cp__hamt_check must pass on every live map,
 *   each snapshot must still hold exactly what it held, and every item must be
 *   alive exactly while a map holds it.
 * In both modes OP_FAIL arms cp__alloc_fail_nth(k) for the next operation's
 * library call: if the call made k allocations it must report CP_ENOMEM (or
 * NULL) and the model, which is not updated, must still agree.
 *
 * Built two ways: with -fsanitize=fuzzer it is a libFuzzer target; with
 * -DCP_FUZZ_STANDALONE it is a plain program that runs the files (or
 * directories) named on its command line once each, which is how `make check`
 * replays the seed corpus and saved crashes as regression tests.
 */
#include "config.h"

#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "ctxpool.h"
#include "hamt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ------------------------------------------------------------------------ */
/* Checks and the input reader                                               */

static const char *current_input = "(libFuzzer input)";

static void check_failed(int line, const char *what)
{
    fprintf(stderr, "fuzz_context.c:%d: check failed: %s [input %s]\n", line,
            what, current_input);
    abort();
}

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond))                                                         \
            check_failed(__LINE__, #cond);                                   \
    } while (0)

typedef struct reader {
    const uint8_t *p;
    size_t n, i;
} reader;

static bool more(const reader *r)
{
    return r->i < r->n;
}

static uint8_t byte(reader *r)
{
    return r->i < r->n ? r->p[r->i++] : 0;
}

/* Allocation failure injection around exactly one library call. */
static unsigned long pending_fail; /* 0: none armed */
static unsigned long inj_base;

static void inj_begin(void)
{
    inj_base = cp__alloc_count();
    cp__alloc_fail_nth(pending_fail);
}

/* Whether the armed failure was reached by the call (the counter also counts
 * the allocation that failed). Turns the hook off and disarms either way. */
static bool inj_end(void)
{
    unsigned long made = cp__alloc_count() - inj_base;
    bool hit = pending_fail != 0 && made >= pending_fail;
    cp__alloc_fail_nth(0);
    pending_fail = 0;
    return hit;
}

/* ------------------------------------------------------------------------ */
/* Context mode: values                                                      */

#define MAGIC 0x5ca1ab1eu
#define NSTATIC 8     /* borrowed values, ids 0..7, for variables with no free_value */
#define MAXVALS 4096  /* values made per input */
#define MISSING (-1)

struct value {
    uint32_t magic;
    uint32_t id;
};

enum { VS_NONE, VS_STATIC, VS_OURS, VS_LIB, VS_FREED, VS_DISCARDED };

static struct value static_vals[NSTATIC];
static struct value *vptr[MAXVALS];
static uint8_t vstate[MAXVALS];
static unsigned nvals;

static void val_free(void *p)
{
    struct value *v = p;
    CHECK(v != NULL);
    CHECK(v->magic == MAGIC);
    CHECK(v->id >= NSTATIC && v->id < nvals && vptr[v->id] == v);
    CHECK(vstate[v->id] == VS_LIB); /* never freed twice, never one it does not own */
    vstate[v->id] = VS_FREED;
    v->magic = 0;
    free(v);
}

/* A new value of ours, not yet given to the library; -1 when out of ids. */
static int value_new(void)
{
    if (nvals >= MAXVALS)
        return -1;
    struct value *v = malloc(sizeof *v);
    CHECK(v != NULL);
    v->magic = MAGIC;
    v->id = nvals;
    vptr[nvals] = v;
    vstate[nvals] = VS_OURS;
    return (int)nvals++;
}

static void value_discard(int id)
{
    CHECK(vstate[id] == VS_OURS);
    vptr[id]->magic = 0;
    free(vptr[id]);
    vstate[id] = VS_DISCARDED;
}

/* The value a pointer returned by the library stands for, checked. */
static int value_id(const void *p)
{
    const struct value *v = p;
    CHECK(v != NULL);
    CHECK(v->magic == MAGIC); /* a freed value would fail here or in ASan */
    CHECK(v->id < nvals && vptr[v->id] == v);
    return (int)v->id;
}

/* ------------------------------------------------------------------------ */
/* Context mode: model                                                       */

#define NVI 48     /* variable instances per input */
#define NVSLOT 12  /* variable handles */
#define NCI 48     /* context instances per input */
#define NCSLOT 6   /* context handles */
#define NTOK 16
#define NITER 4
#define MAXDEPTH 8 /* nested runs, the top-level one included */
#define MAXOPS 1500

struct vinst {
    cp_var *p;
    bool handle; /* the creator's reference not yet dropped */
    bool owning; /* free_value is val_free */
    int def;     /* default value id, or MISSING */
};

struct cinst {
    cp_context *p;
    bool handle;
    bool entered;
    int vals[NVI];
};

struct tok {
    cp_token *p; /* NULL: slot empty */
    int var, ctx, old;
    bool used;
};

struct iter {
    cp_iter *p; /* NULL: slot empty */
    int vals[NVI];
    bool seen[NVI];
    bool done;
};

static struct vinst vi[NVI];
static int nvi;
static int vslot[NVSLOT];
static struct cinst ci[NCI];
static int nci;
static int cslot[NCSLOT];
static struct tok toks[NTOK];
static struct iter iters[NITER];
static int stack[MAXDEPTH];
static int depth; /* stack[depth - 1] is the current context */
static unsigned ops;

static int cur(void)
{
    return stack[depth - 1];
}

static int live_var(int s)
{
    return vslot[s % NVSLOT];
}

static int live_ctx(int s)
{
    return cslot[s % NCSLOT];
}

static void *vp(int id)
{
    return id < NSTATIC ? (void *)&static_vals[id] : (void *)vptr[id];
}

static int model_len(const int *vals)
{
    int n = 0;
    for (int v = 0; v < nvi; v++)
        n += vals[v] != MISSING;
    return n;
}

static bool ctx_alive(int c)
{
    return ci[c].p && (ci[c].handle || ci[c].entered);
}

/* Whether the library must still hold variable instance v: its handle, or an
 * item of a live context, a token, or an iterator's snapshot. */
static bool var_alive(int v)
{
    if (vi[v].handle)
        return true;
    for (int c = 0; c < nci; c++)
        if (ctx_alive(c) && ci[c].vals[v] != MISSING)
            return true;
    for (int t = 0; t < NTOK; t++)
        if (toks[t].p && toks[t].var == v)
            return true;
    for (int i = 0; i < NITER; i++)
        if (iters[i].p && iters[i].vals[v] != MISSING)
            return true;
    return false;
}

/* Every value the library owns is alive exactly while something refers to it. */
static void check_lifetimes(void)
{
    static bool ref[MAXVALS];
    memset(ref, 0, nvals * sizeof ref[0]);
    for (int c = 0; c < nci; c++)
        if (ctx_alive(c))
            for (int v = 0; v < nvi; v++)
                if (ci[c].vals[v] != MISSING)
                    ref[ci[c].vals[v]] = true;
    for (int t = 0; t < NTOK; t++)
        if (toks[t].p && toks[t].old != MISSING)
            ref[toks[t].old] = true;
    for (int i = 0; i < NITER; i++)
        if (iters[i].p)
            for (int v = 0; v < nvi; v++)
                if (iters[i].vals[v] != MISSING)
                    ref[iters[i].vals[v]] = true;
    for (int v = 0; v < nvi; v++)
        if (vi[v].def != MISSING && var_alive(v))
            ref[vi[v].def] = true;
    for (unsigned id = NSTATIC; id < nvals; id++) {
        CHECK(vstate[id] != VS_OURS);
        if (vstate[id] == VS_LIB || vstate[id] == VS_FREED) {
            if (ref[id])
                CHECK(vstate[id] == VS_LIB); /* freed while still referred to */
            else
                CHECK(vstate[id] == VS_FREED); /* not freed when the last holder went */
        }
    }
}

/* The context's contents through the public lookups. */
static void check_context(int c)
{
    const cp_context *p = ci[c].p;
    CHECK(cp_context_len(p) == (size_t)model_len(ci[c].vals));
    static int fallback;
    for (int s = 0; s < NVSLOT; s++) {
        int v = vslot[s];
        if (v < 0)
            continue;
        int want = ci[c].vals[v];
        void *got = (void *)&fallback;
        int r = cp_context_get(p, vi[v].p, &got);
        bool has = cp_context_contains(p, vi[v].p);
        void *got_or = cp_context_get_or(p, vi[v].p, &fallback);
        if (want == MISSING) {
            CHECK(r == CP_ENOENT && got == (void *)&fallback);
            CHECK(!has);
            CHECK(got_or == (void *)&fallback);
        } else {
            CHECK(r == 0 && got == vp(want));
            CHECK(has);
            CHECK(got_or == vp(want));
            if (want >= NSTATIC)
                value_id(got);
        }
    }
}

/* The calling thread's view: cp_var_get and cp_var_get_or for every live
 * variable, in the current context (this also exercises the get cache). */
static void check_current(void)
{
    static int fallback;
    const int *vals = ci[cur()].vals;
    for (int s = 0; s < NVSLOT; s++) {
        int v = vslot[s];
        if (v < 0)
            continue;
        void *got = (void *)&fallback;
        int r = cp_var_get(vi[v].p, &got);
        if (vals[v] != MISSING) {
            CHECK(r == 0 && got == vp(vals[v]));
        } else if (vi[v].def != MISSING) {
            CHECK(r == 0 && got == vp(vi[v].def));
        } else {
            CHECK(r == CP_ENOENT && got == (void *)&fallback);
        }
        void *o = cp_var_get_or(vi[v].p, &fallback);
        CHECK(o == (vals[v] != MISSING ? vp(vals[v]) : (void *)&fallback));
    }
}

static void check_all(void)
{
    for (int s = 0; s < NCSLOT; s++)
        if (cslot[s] >= 0)
            check_context(cslot[s]);
    check_current();
    check_lifetimes();
}

/* Step an iterator once; false at its end. */
static bool iter_step(struct iter *it)
{
    cp_var *var = NULL;
    void *value = NULL;
    if (!cp_iter_next(it->p, &var, &value)) {
        for (int v = 0; v < nvi; v++)
            if (it->vals[v] != MISSING)
                CHECK(it->seen[v]); /* every variable of the snapshot */
        it->done = true;
        return false;
    }
    CHECK(!it->done); /* an iterator that ended stays ended */
    int found = -1;
    for (int v = 0; v < nvi; v++)
        if (it->vals[v] != MISSING && vi[v].p == var)
            found = v;
    CHECK(found >= 0); /* only variables of the snapshot */
    CHECK(!it->seen[found]); /* each exactly once */
    it->seen[found] = true;
    CHECK(value == vp(it->vals[found]));
    return true;
}

static void iter_free(struct iter *it)
{
    cp_iter_free(it->p);
    it->p = NULL;
}

/* Open an iterator over context c into it; false when out of memory. */
static bool iter_open(struct iter *it, int c)
{
    inj_begin();
    cp_iter *p = cp_context_iter(ci[c].p);
    if (inj_end()) {
        CHECK(p == NULL);
        return false;
    }
    CHECK(p != NULL);
    it->p = p;
    memcpy(it->vals, ci[c].vals, sizeof it->vals);
    memset(it->seen, 0, sizeof it->seen);
    it->done = false;
    return true;
}

/* Equality of two contexts through the public API: same length and the same
 * value for every variable of a. */
static bool api_equal(const cp_context *a, const cp_context *b)
{
    if (cp_context_len(a) != cp_context_len(b))
        return false;
    cp_iter *it = cp_context_iter(a);
    CHECK(it != NULL);
    bool eq = true;
    cp_var *var;
    void *value;
    while (cp_iter_next(it, &var, &value)) {
        void *other;
        if (cp_context_get(b, var, &other) != 0 || other != value)
            eq = false;
    }
    cp_iter_free(it);
    return eq;
}

static void tok_free(int t)
{
    cp_token_free(toks[t].p);
    toks[t].p = NULL;
}

static void ctx_drop_handle(int s)
{
    int c = cslot[s];
    if (c < 0)
        return;
    cp_context_free(ci[c].p);
    ci[c].handle = false;
    cslot[s] = -1;
}

static void var_drop_handle(int s)
{
    int v = vslot[s];
    if (v < 0)
        return;
    cp_var_free(vi[v].p);
    vi[v].handle = false;
    vslot[s] = -1;
}

/* A new context instance for pointer p with the given contents. */
static void ctx_adopt(int s, cp_context *p, const int *vals)
{
    ci[nci].p = p;
    ci[nci].handle = true;
    ci[nci].entered = false;
    if (vals)
        memcpy(ci[nci].vals, vals, sizeof ci[nci].vals);
    else
        for (int v = 0; v < NVI; v++)
            ci[nci].vals[v] = MISSING;
    cslot[s] = nci++;
}

enum {
    OP_VAR_NEW,
    OP_VAR_FREE,
    OP_SET,
    OP_SET2, /* a second opcode for set: the commonest operation */
    OP_RESET,
    OP_DELETE,
    OP_GET,
    OP_COPY_CURRENT,
    OP_COPY,
    OP_CTX_NEW,
    OP_CTX_FREE,
    OP_ITER_OPEN,
    OP_ITER_STEP,
    OP_ITER_FULL,
    OP_COMPARE,
    OP_RUN,
    OP_END,
    OP_LEN,
    OP_TOKEN_INFO,
    OP_TOKEN_FREE,
    OP_FAIL,
    OP_NULLS,
    OP_REMOTE,
    OP_COUNT
};

static bool exec_ops(reader *r);

struct run_arg {
    reader *r;
    int target;
    bool called;
};

static void *run_fn(void *p)
{
    struct run_arg *a = p;
    a->called = true;
    CHECK(depth < MAXDEPTH);
    stack[depth++] = a->target;
    ci[a->target].entered = true;
    check_current();
    exec_ops(a->r);
    ci[a->target].entered = false;
    depth--;
    return a;
}

/* Reset token t with variable v in the current context, checking the error
 * in CPython's order. */
static void do_reset(int v, int t)
{
    struct tok *tk = &toks[t];
    int want = tk->used ? CP_ETOKEN_USED
               : tk->var != v ? CP_ETOKEN_VAR
               : tk->ctx != cur() ? CP_ETOKEN_CONTEXT
                                  : 0;
    inj_begin();
    int r = cp_var_reset(vi[v].p, tk->p);
    bool hit = inj_end();
    if (want != 0) {
        CHECK(r == want);
    } else if (hit) {
        CHECK(r == CP_ENOMEM);
    } else {
        CHECK(r == 0);
        ci[cur()].vals[v] = tk->old;
        tk->used = true;
    }
}

/* A second thread. It reads context c without entering it (the locked
 * paths), then tries to run in it: CP_EBUSY when this thread has c entered,
 * else it sees exactly c's values through cp_var_get. Started either with
 * pthread_create (an empty base context) or with cp_thread_create (a copy of
 * this thread's current context, which it checks first). It may also set a
 * variable in its base context: that value must be freed when it exits. */
struct remote_arg {
    int c;
    int base;        /* the context instance its base copies, or -1: empty */
    int set_var;     /* a variable to set in its base context, or -1 */
    bool busy;
    int run_result;
    bool ok;
};

/* Whether cp_var_get on this thread agrees with model contents vals. */
static bool view_matches(const int *vals)
{
    for (int s = 0; s < NVSLOT; s++) {
        int v = vslot[s];
        if (v < 0)
            continue;
        void *got = NULL;
        int r = cp_var_get(vi[v].p, &got);
        int want = vals ? vals[v] : MISSING;
        if (want != MISSING ? !(r == 0 && got == vp(want))
            : vi[v].def != MISSING ? !(r == 0 && got == vp(vi[v].def))
                                   : r != CP_ENOENT)
            return false;
    }
    return true;
}

static void *remote_inside(void *p)
{
    struct remote_arg *a = p;
    if (!view_matches(ci[a->c].vals))
        a->ok = false;
    return NULL;
}

static void *remote_main(void *p)
{
    struct remote_arg *a = p;
    if (!view_matches(a->base >= 0 ? ci[a->base].vals : NULL))
        a->ok = false;
    const cp_context *c = ci[a->c].p;
    if (cp_context_len(c) != (size_t)model_len(ci[a->c].vals))
        a->ok = false;
    for (int s = 0; s < NVSLOT; s++) {
        int v = vslot[s];
        if (v < 0)
            continue;
        void *got = NULL;
        int r = cp_context_get(c, vi[v].p, &got);
        int want = ci[a->c].vals[v];
        if (want == MISSING ? r != CP_ENOENT : (r != 0 || got != vp(want)))
            a->ok = false;
    }
    cp_context *copy = cp_context_copy(c);
    if (!copy || cp_context_len(copy) != cp_context_len(c))
        a->ok = false;
    cp_context_free(copy);
    a->run_result = cp_context_run(ci[a->c].p, remote_inside, a, NULL);
    if (a->set_var >= 0) {
        int id = value_new();
        if (id >= 0) {
            cp_var *var = vi[a->set_var].p;
            if (cp_var_set(var, vp(id), NULL) != 0) {
                a->ok = false;
                value_discard(id);
            } else {
                vstate[id] = VS_LIB; /* freed with the base context at exit */
                if (cp_var_get_or(var, NULL) != vp(id))
                    a->ok = false;
            }
        }
    }
    return NULL;
}

static void op_remote(reader *r)
{
    int c = live_ctx(byte(r));
    uint8_t f = byte(r);
    if (c < 0)
        return;
    struct remote_arg a = {.c = c, .base = -1, .set_var = -1,
                           .busy = ci[c].entered, .ok = true};
    if (f & 2)
        for (int s = 0; s < NVSLOT && a.set_var < 0; s++)
            if (vslot[s] >= 0 && vi[vslot[s]].owning)
                a.set_var = vslot[s];
    pthread_t th;
    if (f & 1) {
        a.base = cur();
        inj_begin();
        int err = cp_thread_create(&th, NULL, remote_main, &a);
        if (inj_end()) {
            CHECK(err == CP_ENOMEM);
            return;
        }
        CHECK(err == 0);
    } else {
        CHECK(pthread_create(&th, NULL, remote_main, &a) == 0);
    }
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(a.ok);
    CHECK(a.run_result == (a.busy ? CP_EBUSY : 0));
}

static void op_nulls(void)
{
    void *v;
    cp_token *t = NULL;
    CHECK(cp_var_get(NULL, &v) == CP_EINVAL);
    CHECK(cp_var_get_or(NULL, &v) == &v);
    CHECK(cp_var_set(NULL, NULL, &t) == CP_EINVAL && t == NULL);
    CHECK(cp_var_reset(NULL, NULL) == CP_EINVAL);
    CHECK(cp_token_var(NULL) == NULL);
    CHECK(cp_token_old_value(NULL, &v) == CP_EINVAL);
    CHECK(cp_context_copy(NULL) == NULL);
    CHECK(cp_context_run(NULL, run_fn, NULL, NULL) == CP_EINVAL);
    CHECK(!cp_context_contains(NULL, NULL));
    CHECK(cp_context_get(NULL, NULL, &v) == CP_EINVAL);
    CHECK(cp_context_get_or(NULL, NULL, &v) == &v);
    CHECK(cp_context_len(NULL) == 0);
    CHECK(cp_context_iter(NULL) == NULL);
    CHECK(!cp_iter_next(NULL, NULL, NULL));
    CHECK(strcmp(cp_var_name(NULL), "") == 0);
    cp_var_free(NULL);
    cp_context_free(NULL);
    cp_token_free(NULL);
    cp_iter_free(NULL);
    for (int e = 1; e >= -13; e--)
        CHECK(cp_strerror(e) != NULL);
    pthread_t th;
    CHECK(cp_thread_create(NULL, NULL, run_fn, NULL) == CP_EINVAL);
    CHECK(cp_thread_create(&th, NULL, NULL, NULL) == CP_EINVAL);
    cp_var *unnamed = cp_var_new(NULL, NULL);
    CHECK(unnamed != NULL && strcmp(cp_var_name(unnamed), "") == 0);
    cp_var_free(unnamed);
    int c = cslot[0];
    int var = -1;
    for (int i = 0; i < NVSLOT && var < 0; i++)
        var = vslot[i];
    if (var >= 0) {
        CHECK(cp_var_get(vi[var].p, NULL) == CP_EINVAL);
        CHECK(cp_var_reset(vi[var].p, NULL) == CP_EINVAL);
        if (c >= 0)
            CHECK(cp_context_get(ci[c].p, vi[var].p, NULL) == CP_EINVAL);
    }
    if (c >= 0) {
        CHECK(!cp_context_contains(ci[c].p, NULL));
        CHECK(cp_context_run(ci[c].p, NULL, NULL, NULL) == CP_EINVAL);
    }
    for (int t2 = 0; t2 < NTOK; t2++)
        if (toks[t2].p)
            CHECK(cp_var_reset(NULL, toks[t2].p) == CP_EINVAL);
}

/* Runs operations until OP_END (in a nested run) or the end of the input.
 * Returns false at the end of the input. */
static bool exec_ops(reader *r)
{
    while (more(r) && ops < MAXOPS) {
        ops++;
        uint8_t op = byte(r) % OP_COUNT;
        switch (op) {
        case OP_VAR_NEW: {
            int s = byte(r) % NVSLOT;
            uint8_t f = byte(r);
            if (nvi >= NVI)
                break;
            var_drop_handle(s);
            bool owning = f & 2;
            int def = MISSING;
            if (f & 1) {
                def = owning ? value_new() : (f >> 2) % NSTATIC;
                if (def < 0)
                    break;
            }
            char name[16];
            snprintf(name, sizeof name, "v%d", nvi);
            inj_begin();
            cp_var *p = def == MISSING
                            ? cp_var_new(name, owning ? val_free : NULL)
                            : cp_var_new_default(name, vp(def),
                                                 owning ? val_free : NULL);
            if (inj_end()) {
                CHECK(p == NULL);
                if (def >= NSTATIC)
                    value_discard(def); /* not taken: nothing changed */
                break;
            }
            CHECK(p != NULL);
            CHECK(strcmp(cp_var_name(p), name) == 0);
            if (def >= NSTATIC)
                vstate[def] = VS_LIB;
            vi[nvi] = (struct vinst){p, true, owning, def};
            vslot[s] = nvi++;
            break;
        }
        case OP_VAR_FREE:
            var_drop_handle(byte(r) % NVSLOT);
            break;
        case OP_SET:
        case OP_SET2: {
            int v = live_var(byte(r));
            uint8_t f = byte(r);
            int t = byte(r) % NTOK;
            if (v < 0)
                break;
            int c = cur();
            int id;
            bool fresh = false;
            if ((f & 1) && ci[c].vals[v] != MISSING) {
                id = ci[c].vals[v]; /* the value it has: no change */
            } else if (vi[v].owning) {
                id = value_new();
                if (id < 0)
                    break;
                fresh = true;
            } else {
                id = (f >> 2) % NSTATIC;
            }
            bool with_token = f & 2;
            if (with_token)
                tok_free(t);
            cp_token *tp = NULL;
            inj_begin();
            int res = cp_var_set(vi[v].p, vp(id), with_token ? &tp : NULL);
            if (inj_end()) {
                CHECK(res == CP_ENOMEM);
                CHECK(tp == NULL);
                if (fresh)
                    value_discard(id);
                break;
            }
            CHECK(res == 0);
            if (fresh)
                vstate[id] = VS_LIB;
            if (with_token) {
                CHECK(tp != NULL);
                toks[t] = (struct tok){tp, v, c, ci[c].vals[v], false};
            }
            ci[c].vals[v] = id;
            break;
        }
        case OP_RESET: {
            int v = live_var(byte(r));
            int t = byte(r) % NTOK;
            if (v < 0 || !toks[t].p)
                break;
            do_reset(v, t);
            break;
        }
        case OP_DELETE: {
            /* Back to no value: reset a token made when there was none. */
            int v = live_var(byte(r));
            if (v < 0)
                break;
            for (int t = 0; t < NTOK; t++)
                if (toks[t].p && !toks[t].used && toks[t].var == v &&
                    toks[t].ctx == cur() && toks[t].old == MISSING) {
                    do_reset(v, t);
                    break;
                }
            break;
        }
        case OP_GET:
            check_current();
            break;
        case OP_COPY_CURRENT:
        case OP_COPY:
        case OP_CTX_NEW: {
            int src = op == OP_COPY ? live_ctx(byte(r)) : cur();
            int s = byte(r) % NCSLOT;
            if (nci >= NCI || src < 0)
                break;
            ctx_drop_handle(s);
            if (op == OP_COPY && !ci[src].handle)
                break; /* that was its handle */
            inj_begin();
            cp_context *p = op == OP_COPY_CURRENT ? cp_copy_context()
                            : op == OP_COPY       ? cp_context_copy(ci[src].p)
                                                  : cp_context_new();
            if (inj_end()) {
                CHECK(p == NULL);
                break;
            }
            CHECK(p != NULL);
            ctx_adopt(s, p, op == OP_CTX_NEW ? NULL : ci[src].vals);
            break;
        }
        case OP_CTX_FREE:
            ctx_drop_handle(byte(r) % NCSLOT);
            break;
        case OP_ITER_OPEN: {
            int i = byte(r) % NITER;
            int c = live_ctx(byte(r));
            iter_free(&iters[i]);
            if (c >= 0)
                iter_open(&iters[i], c);
            break;
        }
        case OP_ITER_STEP: {
            struct iter *it = &iters[byte(r) % NITER];
            int n = byte(r) % 8 + 1;
            for (int k = 0; k < n && it->p; k++)
                if (!iter_step(it))
                    break;
            break;
        }
        case OP_ITER_FULL: {
            int c = live_ctx(byte(r));
            struct iter it;
            if (c < 0 || !iter_open(&it, c))
                break;
            while (iter_step(&it))
                ;
            CHECK(!cp_iter_next(it.p, NULL, NULL));
            iter_free(&it);
            break;
        }
        case OP_COMPARE: {
            int a = live_ctx(byte(r)), b = live_ctx(byte(r));
            if (a < 0 || b < 0)
                break;
            bool eq = memcmp(ci[a].vals, ci[b].vals, sizeof ci[a].vals) == 0;
            CHECK(api_equal(ci[a].p, ci[b].p) == eq);
            CHECK(api_equal(ci[b].p, ci[a].p) == eq);
            break;
        }
        case OP_RUN: {
            int c = live_ctx(byte(r));
            if (c < 0 || depth >= MAXDEPTH)
                break;
            struct run_arg a = {r, c, false};
            void *res = NULL;
            bool recursive = ci[c].entered;
            int err = cp_context_run(ci[c].p, run_fn, &a, &res);
            if (recursive) {
                CHECK(err == CP_ERECURSIVE);
                CHECK(!a.called && res == NULL);
            } else {
                CHECK(err == 0);
                CHECK(a.called && res == &a);
            }
            break;
        }
        case OP_END:
            if (depth > 1)
                return true;
            break;
        case OP_LEN: {
            int c = live_ctx(byte(r));
            if (c >= 0)
                CHECK(cp_context_len(ci[c].p) == (size_t)model_len(ci[c].vals));
            break;
        }
        case OP_TOKEN_INFO: {
            struct tok *tk = &toks[byte(r) % NTOK];
            if (!tk->p)
                break;
            CHECK(cp_token_var(tk->p) == vi[tk->var].p);
            void *old = NULL;
            int res = cp_token_old_value(tk->p, &old);
            if (tk->old == MISSING)
                CHECK(res == CP_ENOENT && old == NULL);
            else
                CHECK(res == 0 && old == vp(tk->old));
            break;
        }
        case OP_TOKEN_FREE:
            tok_free(byte(r) % NTOK);
            break;
        case OP_FAIL:
            pending_fail = byte(r) % 24 + 1;
            continue; /* armed for the next operation: no check in between */
        case OP_NULLS:
            op_nulls();
            break;
        case OP_REMOTE:
            op_remote(r);
            break;
        }
        pending_fail = 0; /* an operation that made no library call */
        check_all();
    }
    return false;
}

static void run_context_mode(reader *r)
{
    nvals = NSTATIC;
    for (int i = 0; i < NSTATIC; i++) {
        static_vals[i] = (struct value){MAGIC, (uint32_t)i};
        vstate[i] = VS_STATIC;
    }
    nvi = nci = depth = 0;
    ops = 0;
    pending_fail = 0;
    memset(vi, 0, sizeof vi);
    memset(toks, 0, sizeof toks);
    memset(iters, 0, sizeof iters);
    for (int s = 0; s < NVSLOT; s++)
        vslot[s] = -1;
    for (int s = 0; s < NCSLOT; s++)
        cslot[s] = -1;

    cp_context *top = cp_context_new();
    CHECK(top != NULL);
    ctx_adopt(0, top, NULL);
    struct run_arg a = {r, 0, false};
    void *res = NULL;
    CHECK(cp_context_run(top, run_fn, &a, &res) == 0);
    CHECK(a.called && res == &a && depth == 0);

    /* Let go of everything; then every value must have been freed once. */
    for (int i = 0; i < NITER; i++)
        iter_free(&iters[i]);
    for (int t = 0; t < NTOK; t++)
        tok_free(t);
    for (int s = 0; s < NVSLOT; s++)
        var_drop_handle(s);
    for (int s = 0; s < NCSLOT; s++)
        ctx_drop_handle(s);
    for (int c = 0; c < nci; c++)
        CHECK(!ctx_alive(c));
    check_lifetimes();
    for (unsigned id = NSTATIC; id < nvals; id++)
        CHECK(vstate[id] == VS_FREED || vstate[id] == VS_DISCARDED);
}

/* ------------------------------------------------------------------------ */
/* HAMT mode                                                                 */

#define HK 64          /* keys */
#define HSNAP 8        /* snapshots besides the current map */
#define HMAXITEMS 4096 /* items made per input */

struct hitem {
    cp__hamt_item base;
    unsigned id;
};

enum { IS_NONE, IS_LIVE, IS_FREED };

struct hmap {
    bool live;
    cp__hamt m;
    int item[HK]; /* item id per key, or MISSING */
};

static char hkeys[HK];
static uint32_t khash[HK];
static struct hitem *iptr[HMAXITEMS];
static uint8_t istate[HMAXITEMS];
static int ikey[HMAXITEMS];
static uintptr_t ivalue[HMAXITEMS];
static unsigned nitems;
static struct hmap hcur, hsnap[HSNAP];
static unsigned hpattern;

static void hitem_release(cp__hamt_item *item)
{
    struct hitem *h = (struct hitem *)item;
    CHECK(h->id < nitems && iptr[h->id] == h);
    CHECK(istate[h->id] == IS_LIVE);
    istate[h->id] = IS_FREED;
    free(h);
}

/* A hash with few distinct bits, so that keys collide and chains go deep. */
static uint32_t hash_of(uint8_t b, unsigned pattern)
{
    uint32_t h = 0;
    switch (pattern % 8) {
    case 0: /* low chunks only: a wide root, array nodes */
        return b;
    case 1: /* one bit per chunk: chains of one-entry nodes */
        for (int i = 0; i < 7; i++)
            h |= (uint32_t)((b >> i) & 1) << (5 * i);
        return h | (uint32_t)(b >> 7) << 31;
    case 2: /* eight hashes: collision nodes */
        return b & 7;
    case 3: /* differ in the top chunks: a chain down to shift 30 */
        return (uint32_t)(b & 0xf) << 28 | (b >> 4);
    case 4:
        return b * UINT32_C(0x01010101);
    case 5:
        return (uint32_t)b << 24;
    case 6: /* spread, as variables' addresses are */
        h = b * UINT32_C(0x9e3779b1);
        return h ^ (h >> 15);
    default: /* chunk 0 wide, then a difference only in chunks 5 and 6 */
        return (b & 0x1fu) | (uint32_t)(b >> 5) << 27;
    }
}

static bool key_used(int k)
{
    if (hcur.live && hcur.item[k] != MISSING)
        return true;
    for (int s = 0; s < HSNAP; s++)
        if (hsnap[s].live && hsnap[s].item[k] != MISSING)
            return true;
    return false;
}

static size_t hmodel_count(const struct hmap *m)
{
    size_t n = 0;
    for (int k = 0; k < HK; k++)
        n += m->item[k] != MISSING;
    return n;
}

static void hcheck_map(const struct hmap *m, bool iterate)
{
    CHECK(cp__hamt_check(m->m) == 0);
    CHECK(m->m.count == hmodel_count(m));
    for (int k = 0; k < HK; k++) {
        cp__hamt_item *it = cp__hamt_find(m->m, khash[k], &hkeys[k]);
        if (m->item[k] == MISSING) {
            CHECK(it == NULL);
        } else {
            CHECK(it == &iptr[m->item[k]]->base);
            CHECK(cp__hamt_find(m->m, khash[k] ^ (UINT32_C(1) << (k % 32)),
                                &hkeys[k]) == NULL);
        }
    }
    if (!iterate)
        return;
    bool seen[HK] = {0};
    size_t n = 0;
    cp__hamt_iter it;
    cp__hamt_iter_init(&it, m->m);
    for (cp__hamt_item *item; (item = cp__hamt_iter_next(&it)) != NULL;) {
        int k = (int)((const char *)item->key - hkeys);
        CHECK(k >= 0 && k < HK);
        CHECK(m->item[k] != MISSING && item == &iptr[m->item[k]]->base);
        CHECK(!seen[k]);
        seen[k] = true;
        n++;
    }
    CHECK(n == m->m.count);
    CHECK(cp__hamt_iter_next(&it) == NULL);
    cp__hamt_shape shape;
    cp__hamt_shape_of(m->m, &shape);
    CHECK(shape.items == n);
    CHECK(shape.max_depth <= CP__HAMT_MAX_DEPTH);
    CHECK((m->m.root == NULL) == (shape.max_depth == 0));
}

static void hcheck_all(void)
{
    static bool ref[HMAXITEMS];
    memset(ref, 0, nitems * sizeof ref[0]);
    hcheck_map(&hcur, true);
    for (int k = 0; k < HK; k++)
        if (hcur.item[k] != MISSING)
            ref[hcur.item[k]] = true;
    for (int s = 0; s < HSNAP; s++) {
        if (!hsnap[s].live)
            continue;
        hcheck_map(&hsnap[s], false);
        for (int k = 0; k < HK; k++)
            if (hsnap[s].item[k] != MISSING)
                ref[hsnap[s].item[k]] = true;
    }
    for (unsigned id = 0; id < nitems; id++)
        CHECK(istate[id] == (ref[id] ? IS_LIVE : IS_FREED));
}

static const cp__hamt untouched = {(cp__hamt_node *)(uintptr_t)0x1000, 0xdead};

static bool same_map(cp__hamt a, cp__hamt b)
{
    return a.root == b.root && a.count == b.count;
}

/* Whether changes to the current map use the given functions, which reuse
 * the nodes nobody else holds (HOP_GIVEN switches). */
static bool hgiven;

/* What a given change reports as the item that left: the key's item in the
 * model before the change (with a reference, dropped here). */
static void hcheck_gone(cp__hamt_item *gone, int before)
{
    CHECK(gone == (before == MISSING ? NULL : &iptr[before]->base));
    cp__hamt_item_decref(gone);
}

/* Set item (a new one of ours, or one a snapshot holds) for key k in the
 * current map. */
static void hset(int k, int id, bool ours)
{
    struct hitem *h = iptr[id];
    cp__hamt out = hgiven ? hcur.m : untouched;
    cp__hamt_item *gone = (cp__hamt_item *)&untouched;
    inj_begin();
    int r = hgiven ? cp__hamt_set_given(&out, &h->base, &gone)
                   : cp__hamt_set(hcur.m, &h->base, &out);
    bool hit = inj_end();
    if (hit) {
        CHECK(r == CP_ENOMEM && same_map(out, hgiven ? hcur.m : untouched));
        CHECK(gone == (cp__hamt_item *)&untouched);
    } else {
        int old = hcur.item[k];
        bool same = old != MISSING && ivalue[old] == ivalue[id];
        /* The same value: the same map; a given set says so, and reports
         * the map's item for the key, borrowed. */
        CHECK(r == (same && hgiven ? CP__HAMT_SAME : 0));
        if (same)
            CHECK(same_map(out, hcur.m));
        else
            hcur.item[k] = id;
        CHECK(out.count == hmodel_count(&hcur));
        if (hgiven && same)
            CHECK(gone == &iptr[old]->base);
        else if (hgiven)
            hcheck_gone(gone, old);
        else
            cp__hamt_decref(hcur.m);
        hcur.m = out;
    }
    if (ours)
        cp__hamt_item_decref(&h->base); /* the map holds it now, or nobody */
}

static int hitem_new(int k, uintptr_t value)
{
    if (nitems >= HMAXITEMS)
        return -1;
    struct hitem *h = malloc(sizeof *h);
    CHECK(h != NULL);
    h->id = nitems;
    cp__hamt_item_init(&h->base, khash[k], &hkeys[k], (void *)value,
                       hitem_release, false);
    iptr[nitems] = h;
    istate[nitems] = IS_LIVE;
    ikey[nitems] = k;
    ivalue[nitems] = value;
    return (int)nitems++;
}

static void hset_new(int k, uint8_t hb, uint8_t f)
{
    if (!key_used(k))
        khash[k] = hash_of(hb, f & 0x10 ? (unsigned)f >> 5 : hpattern);
    int id = hitem_new(k, (uintptr_t)(f & 3) * 8 + 8);
    if (id >= 0)
        hset(k, id, true);
}

static void hdel(int k, bool wrong_hash)
{
    uint32_t h = khash[k] ^ (wrong_hash ? UINT32_C(0x40000000) : 0);
    cp__hamt out = hgiven ? hcur.m : untouched;
    cp__hamt_item *gone = (cp__hamt_item *)&untouched;
    inj_begin();
    int r = hgiven ? cp__hamt_delete_given(&out, h, &hkeys[k], &gone)
                   : cp__hamt_delete(hcur.m, h, &hkeys[k], &out);
    bool hit = inj_end();
    if (hcur.item[k] == MISSING || wrong_hash || hit) {
        CHECK(r == (hit && hcur.item[k] != MISSING && !wrong_hash ? CP_ENOMEM
                                                                  : CP_ENOENT));
        CHECK(same_map(out, hgiven ? hcur.m : untouched));
        CHECK(gone == (cp__hamt_item *)&untouched);
    } else {
        CHECK(r == 0);
        int old = hcur.item[k];
        hcur.item[k] = MISSING;
        CHECK(out.count == hmodel_count(&hcur));
        if (hgiven)
            hcheck_gone(gone, old);
        else
            cp__hamt_decref(hcur.m);
        hcur.m = out;
    }
}

static void hmap_drop(struct hmap *m)
{
    if (m->live)
        cp__hamt_decref(m->m);
    m->live = false;
}

enum {
    HOP_SET,
    HOP_SET2,
    HOP_DEL,
    HOP_SNAP,
    HOP_SWITCH,
    HOP_DROP,
    HOP_REINSERT,
    HOP_BULK_SET,
    HOP_BULK_DEL,
    HOP_FAIL,
    HOP_GIVEN,
    HOP_COUNT
};

static void run_hamt_mode(reader *r, uint8_t mode)
{
    hpattern = (mode >> 1) & 7;
    nitems = 0;
    pending_fail = 0;
    hgiven = false;
    hcur.live = true;
    hcur.m = CP__HAMT_EMPTY;
    for (int k = 0; k < HK; k++) {
        hcur.item[k] = MISSING;
        khash[k] = hash_of((uint8_t)k, hpattern);
    }
    for (int s = 0; s < HSNAP; s++)
        hsnap[s].live = false;
    unsigned n = 0;
    while (more(r) && n++ < 4 * MAXOPS) {
        uint8_t op = byte(r) % HOP_COUNT;
        switch (op) {
        case HOP_SET:
        case HOP_SET2: {
            int k = byte(r) % HK;
            uint8_t hb = byte(r), f = byte(r);
            hset_new(k, hb, f);
            break;
        }
        case HOP_DEL: {
            uint8_t b = byte(r);
            hdel(b % HK, b >= 0xf0);
            break;
        }
        case HOP_SNAP: {
            struct hmap *s = &hsnap[byte(r) % HSNAP];
            hmap_drop(s);
            *s = hcur;
            cp__hamt_incref(s->m);
            break;
        }
        case HOP_SWITCH: {
            struct hmap *s = &hsnap[byte(r) % HSNAP];
            if (s->live) {
                struct hmap t = *s;
                *s = hcur;
                hcur = t;
            }
            break;
        }
        case HOP_DROP:
            hmap_drop(&hsnap[byte(r) % HSNAP]);
            break;
        case HOP_REINSERT: {
            /* An item a snapshot holds, set again (what a token reset does). */
            struct hmap *s = &hsnap[byte(r) % HSNAP];
            int k = byte(r) % HK;
            if (s->live && s->item[k] != MISSING)
                hset(k, s->item[k], false);
            break;
        }
        case HOP_BULK_SET: {
            int k = byte(r) % HK;
            uint8_t hb = byte(r), f = byte(r);
            int count = byte(r) % 40 + 1;
            for (int i = 0; i < count; i++)
                hset_new((k + i) % HK, (uint8_t)(hb + i), f);
            break;
        }
        case HOP_BULK_DEL: {
            int k = byte(r) % HK;
            int count = byte(r) % 40 + 1;
            for (int i = 0; i < count; i++)
                hdel((k + i) % HK, false);
            break;
        }
        case HOP_FAIL:
            pending_fail = byte(r) % 12 + 1;
            continue;
        case HOP_GIVEN:
            hgiven = !hgiven;
            continue;
        }
        pending_fail = 0;
        hcheck_all();
    }
    hmap_drop(&hcur);
    for (int s = 0; s < HSNAP; s++)
        hmap_drop(&hsnap[s]);
    for (unsigned id = 0; id < nitems; id++)
        CHECK(istate[id] == IS_FREED);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    uint8_t mode = byte(&r);
    if (mode & 1)
        run_hamt_mode(&r, mode);
    else
        run_context_mode(&r);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Standalone: replay files, for `make check`                                */

#ifdef CP_FUZZ_STANDALONE
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 4096;
            buf = realloc(buf, cap);
            CHECK(buf != NULL);
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        if (got == 0)
            break;
        len += got;
    }
    fclose(f);
    current_input = path;
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

static int run_path(const char *path, unsigned *count)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
        ++*count;
        return run_file(path);
    }
    DIR *d = opendir(path);
    if (!d) {
        perror(path);
        return 1;
    }
    int err = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        err |= run_path(sub, count);
    }
    closedir(d);
    return err;
}

/* With no arguments: $srcdir/tests/fuzz/corpus and, if there is one,
 * $srcdir/tests/fuzz/crashes (the automake test harness exports srcdir). */
int main(int argc, char **argv)
{
    int err = 0;
    unsigned count = 0;
    for (int i = 1; i < argc; i++)
        err |= run_path(argv[i], &count);
    if (argc == 1) {
        const char *srcdir = getenv("srcdir");
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/tests/fuzz/corpus", srcdir ? srcdir : ".");
        err |= run_path(path, &count);
        snprintf(path, sizeof path, "%s/tests/fuzz/crashes", srcdir ? srcdir : ".");
        if (stat(path, &st) == 0)
            err |= run_path(path, &count);
    }
    printf("fuzz_context: %u inputs replayed%s\n", count, err ? ", with errors" : "");
    return err;
}
#endif
