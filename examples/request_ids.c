/* request_ids.c - a request ID that follows the work across a thread pool.
 *
 * A log function prefixes every line with the current request ID, which it
 * reads from a context variable: nobody passes the ID down. Each request sets
 * its ID once and fans out into sub-jobs on whichever workers are free; every
 * line a request prints still carries its own ID. (Java's MDC keeps the same
 * thing in thread-locals, and loses it as soon as work moves to a pool.)
 * Main reports each request as soon as it is done, whatever the order
 * (cp_future_wait_any). Each request ends with a fire-and-forget audit
 * job, which has no future: main waits for those with cp_pool_wait_idle. The last part hands work to
 * a plain thread with cp_thread_create.
 *
 * The program checks itself: it exits 1 if any line carries a wrong ID.
 */
#include <ctxpool.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cp_var *request_id; /* the current request's ID: a string */
static atomic_int wrong_lines;
static atomic_int audits_written;

/* An example has no better answer to a failed call than to stop. */
static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "request_ids: %s: %s\n", what, cp_strerror(rc));
        exit(1);
    }
}

/* A copy of text on the heap, owned by the caller. */
static char *new_id(const char *text)
{
    char *id = strdup(text);
    check(id ? 0 : CP_ENOMEM, "strdup");
    return id;
}

/* Print one line, prefixed with the current request ID; no ID parameter. */
static void log_line(const char *expected, const char *fmt, ...)
{
    const char *id = cp_var_get_or(request_id, "-");
    char text[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    printf("[%-6s] %s\n", id, text);
    if (strcmp(id, expected) != 0)
        atomic_fetch_add(&wrong_lines, 1);
}

struct part {
    cp_pool *pool;
    const char *expected; /* what the log line must show: the check */
    int request, index;
};

static void *sub_job(void *arg)
{
    struct part *p = arg;
    log_line(p->expected, "request %d: part %d done", p->request, p->index);
    return NULL;
}

/* Fire and forget: runs after its request has returned, and still logs
 * with its ID. The expected ID is rebuilt from the request's number. */
static void *audit_job(void *arg)
{
    struct part *req = arg;
    char expected[16];
    snprintf(expected, sizeof expected, "req-%d", req->request);
    log_line(expected, "request %d: audit record written", req->request);
    atomic_fetch_add(&audits_written, 1);
    return NULL;
}

/* One request: set the ID, then fan out into parts on the pool. */
static void *handle_request(void *arg)
{
    struct part *req = arg;
    char text[16];
    snprintf(text, sizeof text, "req-%d", req->request);
    char *id = new_id(text);
    /* The context owns id from here on and frees it (free_value) when the
     * last job that can see it has finished. */
    check(cp_var_set(request_id, id, NULL), "cp_var_set");
    log_line(id, "request %d: start, 3 parts", req->request);

    struct part parts[3];
    cp_future *futures[3];
    for (int i = 0; i < 3; i++) {
        parts[i] = (struct part){req->pool, id, req->request, i};
        check(cp_pool_submit(req->pool, sub_job, &parts[i], &futures[i]), "cp_pool_submit");
    }
    for (int i = 0; i < 3; i++) {
        cp_future_wait(futures[i], NULL); /* a worker helps while it waits */
        cp_future_free(futures[i]);
    }
    log_line(id, "request %d: finish", req->request);
    /* No future: nobody waits for this one job; main waits for them all. */
    check(cp_pool_submit(req->pool, audit_job, req, NULL), "cp_pool_submit");
    return req;
}

static void *background(void *arg)
{
    log_line(arg, "background thread started by cp_thread_create");
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    request_id = cp_var_new("request_id", free);
    cp_pool *pool;
    cp_pool_options options = {.threads = 2, .name = "demo"};
    if (!request_id || cp_pool_new(&pool, &options) != 0) {
        fprintf(stderr, "request_ids: cannot start\n");
        return 1;
    }

    log_line("-", "main: no request yet");
    enum { REQUESTS = 4 };
    struct part requests[REQUESTS];
    cp_future *futures[REQUESTS];
    for (int r = 0; r < REQUESTS; r++) {
        requests[r] = (struct part){pool, NULL, r + 1, 0};
        check(cp_pool_submit(pool, handle_request, &requests[r], &futures[r]),
              "cp_pool_submit");
    }
    /* Each request as soon as it is done, in whatever order they end: wait
     * for any, then for the rest (the last moved into the done one's
     * place). */
    for (size_t left = REQUESTS; left > 0;) {
        size_t i;
        void *done;
        check(cp_future_wait_any(futures, left, UINT64_MAX, &i), "cp_future_wait_any");
        check(cp_future_wait(futures[i], &done), "cp_future_wait");
        log_line("-", "main: request %d done", ((struct part *)done)->request);
        cp_future_free(futures[i]);
        futures[i] = futures[--left];
    }
    /* The audit jobs have no futures: wait until the pool has nothing left
     * to run. */
    check(cp_pool_wait_idle(pool, UINT64_MAX), "cp_pool_wait_idle");
    check(atomic_load(&audits_written) == REQUESTS ? 0 : CP_EINVAL,
          "an audit job had not run when the pool was idle");
    log_line("-", "main: every audit record is written; the requests' IDs "
             "never leaked into main");

    /* A plain thread that starts in a copy of the creator's context. */
    char *main_id = new_id("main");
    check(cp_var_set(request_id, main_id, NULL), "cp_var_set");
    pthread_t thread;
    check(cp_thread_create(&thread, NULL, background, main_id), "cp_thread_create");
    pthread_join(thread, NULL);

    cp_pool_free(pool);
    cp_var_free(request_id);
    int wrong = atomic_load(&wrong_lines);
    printf("%s: %d line(s) with a wrong request ID\n", wrong ? "FAIL" : "ok", wrong);
    return wrong ? 1 : 0;
}
