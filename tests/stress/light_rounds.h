/* light_rounds.h - rounds of a two-worker pool whose workers turn light at
 * their first push (cp__pool_light_after(0), pool.c "Light workers"), for
 * the programs that replace syscall() to see which membarrier calls the
 * pool makes (fence_fallback, fence_refused_at_load).
 *
 * In each round a job pushes a few no-ops, which the other worker runs;
 * then, in every round or every other one, it waits until that worker has
 * parked (an announcer, which fences every thread for a light worker);
 * then it submits the job that posts, which only the other worker can
 * run, and blocks until that job has run.
 */
#ifndef CTXPOOL_LIGHT_ROUNDS_H
#define CTXPOOL_LIGHT_ROUNDS_H

#include <errno.h>
#include <sched.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>

#include "check.h"
#include "ctxpool.h"
#include "pool.h"
#include "watchdog.h"

struct light_round {
    cp_pool *pool;
    sem_t ran;
    uint64_t parks;   /* the pool's park count before the round */
    bool wait_parked; /* submit the last job once the other worker slept */
};

static void *light_noop(void *p)
{
    return p;
}

static void *light_post(void *p)
{
    sem_post(p);
    return NULL;
}

static uint64_t light_parks(cp_pool *pool)
{
    cp_pool_stats st;
    CHECK(cp_pool_get_stats(pool, &st) == 0, "stats");
    return st.parks;
}

static void *light_then_block(void *p)
{
    struct light_round *r = p;
    for (int i = 0; i < 4; i++)
        CHECK(cp_pool_submit(r->pool, light_noop, NULL, NULL) == 0, "submit a no-op");
    while (r->wait_parked && light_parks(r->pool) == r->parks)
        sched_yield();
    CHECK(cp_pool_submit(r->pool, light_post, &r->ran, NULL) == 0, "submit the last job");
    while (sem_wait(&r->ran) != 0)
        CHECK(errno == EINTR, "sem_wait");
    return NULL;
}

/* Run `rounds` rounds on a new pool named name, waiting for the park in
 * every round (parked_every 1) or every other one (2). */
static void light_rounds(const char *name, int rounds, int parked_every)
{
    int was = cp__pool_light_after(0);
    cp_pool_options o = {.threads = 2, .name = name};
    cp_pool *pool = NULL;
    CHECK(cp_pool_new(&pool, &o) == 0, "cp_pool_new");
    for (int i = 0; i < rounds; i++) {
        struct light_round r = {.pool = pool, .parks = light_parks(pool),
                                .wait_parked = i % parked_every == 0};
        CHECK(sem_init(&r.ran, 0, 0) == 0, "sem_init");
        cp_future *f = NULL;
        CHECK(cp_pool_submit(pool, light_then_block, &r, &f) == 0, "submit");
        CHECK(cp_future_wait(f, NULL) == 0, "wait");
        cp_future_free(f);
        sem_destroy(&r.ran);
        watchdog_tick();
    }
    CHECK(cp_pool_free(pool) == 0, "cp_pool_free");
    cp__pool_light_after(was);
}

#endif /* CTXPOOL_LIGHT_ROUNDS_H */
