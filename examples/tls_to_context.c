/* tls_to_context.c - moving a library's settings from __thread to a cp_var.
 *
 * A small number formatter keeps a precision setting, as Python's decimal
 * module keeps its context. Written first with a __thread variable, then with
 * a context variable; the API is the same. (Python's decimal made the same
 * move, from thread-locals to contextvars, in Python 3.7.)
 *
 * Both versions run the same jobs on a one-worker pool, one after the other,
 * so every job runs on the same thread:
 *   job A sets precision 6 for its own work;
 *   job B sets nothing and expects the default, 2;
 *   job C expects the precision its submitter set, 3.
 * With __thread, A's setting leaks into B (same worker), and C does not get
 * its submitter's setting (a different thread). With the cp_var, each job
 * starts from its submitter's context and its changes stay its own.
 *
 * The program checks both outcomes and exits 1 if either is not as shown.
 */
#include <ctxpool.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { DEFAULT_PRECISION = 2 };

/* ---- Version 1: the setting in a thread-local. ---- */

static __thread int tls_precision = DEFAULT_PRECISION;

static void tls_set_precision(int digits)
{
    tls_precision = digits;
}

static void tls_format(double x, char *out, size_t size)
{
    snprintf(out, size, "%.*f", tls_precision, x);
}

/* ---- Version 2: the setting in a context variable. ---- */

static cp_var *precision; /* an int in a void *; default DEFAULT_PRECISION */

static int ctx_set_precision(int digits)
{
    return cp_var_set(precision, (void *)(intptr_t)digits, NULL);
}

static void ctx_format(double x, char *out, size_t size)
{
    void *digits = NULL;
    cp_var_get(precision, &digits); /* the variable's default if unset */
    snprintf(out, size, "%.*f", (int)(intptr_t)digits, x);
}

/* ---- The jobs, run against either version. ---- */

struct formatter {
    const char *name;
    void (*set_precision)(int digits);
    void (*format)(double x, char *out, size_t size);
};

static void ctx_set_precision_void(int digits)
{
    ctx_set_precision(digits);
}

static const struct formatter tls_version = {"__thread", tls_set_precision, tls_format};
static const struct formatter ctx_version = {"cp_var", ctx_set_precision_void, ctx_format};

struct job {
    const struct formatter *lib;
    int set;          /* precision the job sets first; 0: none */
    double x;
    char out[32];
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    if (j->set)
        j->lib->set_precision(j->set);
    j->lib->format(j->x, j->out, sizeof j->out);
    return NULL;
}

/* Run one job on the pool and wait for it. */
static int run_on_pool(cp_pool *pool, struct job *j)
{
    cp_future *f;
    int err = cp_pool_submit(pool, run_job, j, &f);
    if (err == 0) {
        err = cp_future_wait(f, NULL);
        cp_future_free(f);
    }
    return err;
}

/* A, B and C through the given version; true when all three ran. */
static bool run_version(cp_pool *pool, const struct formatter *lib, struct job out[3])
{
    out[0] = (struct job){.lib = lib, .set = 6, .x = 3.14159265358979};
    out[1] = (struct job){.lib = lib, .set = 0, .x = 59.97};
    out[2] = (struct job){.lib = lib, .set = 0, .x = 2.71828182845905};
    bool ok = run_on_pool(pool, &out[0]) == 0 && run_on_pool(pool, &out[1]) == 0;
    lib->set_precision(3); /* the submitter's own setting, for job C */
    ok = ok && run_on_pool(pool, &out[2]) == 0;
    lib->set_precision(DEFAULT_PRECISION);
    printf("%s version:\n", lib->name);
    printf("  job A sets precision 6:           pi    = %s\n", out[0].out);
    printf("  job B expects the default (2):    total = %s\n", out[1].out);
    printf("  job C expects its submitter's 3:  e     = %s\n", out[2].out);
    return ok;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    precision = cp_var_new_default("precision", (void *)(intptr_t)DEFAULT_PRECISION, NULL);
    /* One worker: every job runs on the same thread, so the outcome is
     * the same on every run. */
    cp_pool_options options = {.threads = 1, .name = "fmt"};
    cp_pool *pool = NULL;
    if (!precision || cp_pool_new(&pool, &options) != 0) {
        fprintf(stderr, "tls_to_context: cannot start\n");
        return 1;
    }
    struct job tls[3], ctx[3];
    bool ran = run_version(pool, &tls_version, tls) && run_version(pool, &ctx_version, ctx);
    cp_pool_free(pool);
    cp_var_free(precision);

    /* What each version must have printed. */
    bool tls_leaked = strcmp(tls[1].out, "59.970000") == 0 &&
                      strcmp(tls[2].out, "2.718282") == 0;
    bool ctx_kept = strcmp(ctx[0].out, "3.141593") == 0 &&
                    strcmp(ctx[1].out, "59.97") == 0 && strcmp(ctx[2].out, "2.718") == 0;
    if (ran && tls_leaked && ctx_kept) {
        printf("ok: with __thread, job A's precision leaked into B and C on the same "
               "worker;\n    with the cp_var, each job got its submitter's setting and "
               "kept its own\n");
        return 0;
    }
    printf("FAIL: %s\n", !ran ? "a job did not run"
                         : !tls_leaked ? "the __thread version did not behave as shown"
                                       : "the cp_var version leaked a setting");
    return 1;
}
