/* lifespan.c - application state set up once, seen by every request handler.
 *
 * An ASGI server runs a "lifespan" handler once at start-up: it reads the
 * configuration and opens the database, and every request handler must see
 * both. Handlers must not see each other's request-local values.
 *
 * Part 1. Start-up runs in an application context `app` with
 * cp_pool_submit_in, so what it sets stays in `app`. Each request handler then
 * runs in its own cp_context_copy(app): it sees the configuration and the
 * database, and what it sets (the user) stays in its own copy. The database
 * handle is closed by the variable's free_value, exactly once, when the last
 * context that holds it is freed.
 *
 * Part 2. A long-running start-up job publishes what it has set so far with
 * cp_copy_context() after each stage, and keeps running. Handlers start from
 * the latest snapshot. A mutex and a condition variable hand the snapshots
 * over; nothing depends on timing.
 *
 * The program checks itself: it exits 1 if any handler saw the wrong state.
 */
#include <ctxpool.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct config {
    const char *database_url;
    int max_connections;
};

struct database {
    const struct config *config;
    atomic_int queries;
};

static cp_var *config_var;   /* struct config *, set by start-up */
static cp_var *database_var; /* struct database *, set by start-up */
static cp_var *user_var;     /* const char *, set by each request handler */
static cp_var *stage_var;    /* const char *, part 2: start-up's progress */

static atomic_int databases_closed;
static atomic_int failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        printf("FAIL: %s\n", what);
        atomic_fetch_add(&failures, 1);
    }
}

static void database_close(void *p)
{
    free(p);
    atomic_fetch_add(&databases_closed, 1);
}

/* ---- Part 1: start-up in the application context, handlers in copies. ---- */

static struct config app_config = {"postgres://db.internal/shop", 8};

static void *lifespan_startup(void *arg)
{
    (void)arg;
    struct database *db = malloc(sizeof *db);
    if (!db)
        return "out of memory";
    db->config = &app_config;
    atomic_init(&db->queries, 0);
    cp_var_set(config_var, &app_config, NULL);
    if (cp_var_set(database_var, db, NULL) != 0) {
        free(db);
        return "out of memory";
    }
    return NULL;
}

/* Deep in a handler: the database comes from the context, not a parameter. */
static int run_query(void)
{
    struct database *db = cp_var_get_or(database_var, NULL);
    if (!db)
        return -1;
    return atomic_fetch_add(&db->queries, 1) + 1;
}

struct request {
    const char *user;
    bool saw_config, saw_database, saw_other_user;
    const char *user_at_end;
};

static void *handle_request(void *arg)
{
    struct request *req = arg;
    struct config *config = cp_var_get_or(config_var, NULL);
    req->saw_config = config == &app_config;
    req->saw_database = cp_var_get_or(database_var, NULL) != NULL;
    req->saw_other_user = cp_var_get_or(user_var, NULL) != NULL;
    cp_var_set(user_var, (void *)req->user, NULL);
    run_query();
    req->user_at_end = cp_var_get_or(user_var, NULL);
    return NULL;
}

static void part_one(cp_pool *pool)
{
    printf("part 1: start-up sets state in the application context\n");
    cp_context *app = cp_context_new();
    cp_future *f;
    if (!app || cp_pool_submit_in(pool, app, lifespan_startup, NULL, &f) != 0) {
        check(false, "start-up submitted");
        cp_context_free(app);
        return;
    }
    void *err = NULL;
    check(cp_future_wait(f, &err) == 0 && err == NULL, "start-up ran");
    cp_future_free(f);
    check(cp_context_len(app) == 2, "app holds the config and the database");
    check(!cp_var_get_or(config_var, NULL), "main's own context was not touched");

    enum { N = 3 };
    struct request reqs[N] = {{.user = "alice"}, {.user = "bob"}, {.user = "carol"}};
    cp_context *ctx[N];
    cp_future *futures[N];
    for (int i = 0; i < N; i++) {
        ctx[i] = cp_context_copy(app); /* O(1); shares app's values */
        if (!ctx[i] || cp_pool_submit_in(pool, ctx[i], handle_request, &reqs[i],
                                         &futures[i]) != 0) {
            check(false, "handler submitted");
            futures[i] = NULL;
        }
    }
    for (int i = 0; i < N; i++) {
        if (!futures[i])
            continue;
        check(cp_future_wait(futures[i], NULL) == 0, "handler ran");
        cp_future_free(futures[i]);
        struct request *r = &reqs[i];
        const char *kept = cp_context_get_or(ctx[i], user_var, NULL);
        printf("  %-5s handler saw config: %s, database: %s, another's user: %s;"
               " keeps user=%s\n",
               r->user, r->saw_config ? "yes" : "no", r->saw_database ? "yes" : "no",
               r->saw_other_user ? "yes" : "no", kept ? kept : "(none)");
        check(r->saw_config && r->saw_database, "handler sees start-up's state");
        check(!r->saw_other_user, "handler starts without another handler's user");
        check(r->user_at_end == r->user && kept == r->user,
              "handler's user stays in its own copy");
    }
    check(!cp_context_contains(app, user_var), "app never sees a request's user");
    struct database *db = cp_context_get_or(app, database_var, NULL);
    int queries = db ? atomic_load(&db->queries) : -1;
    printf("  app holds no user; the one database served %d queries\n", queries);
    check(queries == N, "every handler used the one database");

    for (int i = 0; i < N; i++)
        cp_context_free(ctx[i]);
    check(atomic_load(&databases_closed) == 0, "database open while app lives");
    cp_context_free(app); /* the last holder: the database is closed now */
    printf("  database closed %d time(s), when the last context holding it was freed\n",
           atomic_load(&databases_closed));
    check(atomic_load(&databases_closed) == 1, "database closed exactly once");
}

/* ---- Part 2: a start-up job that publishes snapshots while it runs. ---- */

struct board {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    cp_context *latest; /* the newest snapshot, owned by the board */
    int published;      /* stages published so far */
    int served;         /* stages whose handler has finished */
};

static const char *const stages[] = {"config loaded", "database open", "cache warm"};
enum { STAGES = 3 };

static void *long_startup(void *arg)
{
    struct board *b = arg;
    for (int s = 0; s < STAGES; s++) {
        /* The work of stage s, then its result in a variable. */
        cp_var_set(stage_var, (void *)stages[s], NULL);
        if (s == 0)
            cp_var_set(config_var, &app_config, NULL);

        cp_context *snapshot = cp_copy_context(); /* what is set so far */
        pthread_mutex_lock(&b->lock);
        cp_context *old = b->latest;
        b->latest = snapshot;
        b->published = s + 1;
        pthread_cond_broadcast(&b->changed);
        /* Keep running, but let a handler use this snapshot before the next
         * stage (so the output shows every stage). */
        while (b->served < s + 1)
            pthread_cond_wait(&b->changed, &b->lock);
        pthread_mutex_unlock(&b->lock);
        cp_context_free(old);
    }
    /* Nothing a handler set came back into start-up's context. */
    return cp_var_get_or(user_var, NULL) ? "a handler's user leaked" : NULL;
}

static void *early_handler(void *arg)
{
    const char **saw = arg;
    saw[0] = cp_var_get_or(stage_var, "(nothing)");
    saw[1] = cp_var_get_or(config_var, NULL) ? "yes" : "no";
    cp_var_set(user_var, "dave", NULL);
    return NULL;
}

static void part_two(cp_pool *pool)
{
    printf("part 2: a start-up job publishes snapshots while it keeps running\n");
    struct board b = {.latest = NULL, .published = 0, .served = 0};
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.changed, NULL);
    cp_future *startup;
    if (cp_pool_submit(pool, long_startup, &b, &startup) != 0) {
        check(false, "long start-up submitted");
        return;
    }
    for (int s = 0; s < STAGES; s++) {
        pthread_mutex_lock(&b.lock);
        while (b.published < s + 1)
            pthread_cond_wait(&b.changed, &b.lock);
        cp_context *ctx = cp_context_copy(b.latest); /* start from the latest */
        pthread_mutex_unlock(&b.lock);

        const char *saw[2] = {NULL, NULL};
        cp_future *f;
        int err = ctx ? cp_pool_submit_in(pool, ctx, early_handler, saw, &f) : CP_ENOMEM;
        if (err == 0) {
            err = cp_future_wait(f, NULL);
            cp_future_free(f);
        }
        check(err == 0, "handler ran");
        check(!cp_future_done(startup), "start-up still running");
        printf("  snapshot %d: handler sees stage \"%s\", config: %s\n", s + 1,
               saw[0] ? saw[0] : "?", saw[1] ? saw[1] : "?");
        check(saw[0] == stages[s], "handler starts from the latest snapshot");
        cp_context_free(ctx);

        pthread_mutex_lock(&b.lock);
        b.served = s + 1;
        pthread_cond_broadcast(&b.changed);
        pthread_mutex_unlock(&b.lock);
    }
    void *err = NULL;
    check(cp_future_wait(startup, &err) == 0 && err == NULL,
          "start-up finished without seeing a handler's user");
    cp_future_free(startup);
    cp_context_free(b.latest);
    pthread_cond_destroy(&b.changed);
    pthread_mutex_destroy(&b.lock);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    config_var = cp_var_new("config", NULL);
    database_var = cp_var_new("database", database_close);
    user_var = cp_var_new("user", NULL);
    stage_var = cp_var_new("stage", NULL);
    /* Two workers at least: in part 2 the start-up job holds one. */
    cp_pool_options options = {.threads = 2, .name = "lifespan"};
    cp_pool *pool = NULL;
    if (!config_var || !database_var || !user_var || !stage_var ||
        cp_pool_new(&pool, &options) != 0) {
        fprintf(stderr, "lifespan: cannot start\n");
        return 1;
    }

    part_one(pool);
    part_two(pool);

    cp_pool_free(pool);
    cp_var_free(config_var);
    cp_var_free(database_var);
    cp_var_free(user_var);
    cp_var_free(stage_var);
    int failed = atomic_load(&failures);
    if (failed == 0)
        printf("ok: every handler saw start-up's state and only its own user\n");
    return failed ? 1 : 0;
}
