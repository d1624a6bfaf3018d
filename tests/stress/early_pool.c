/* early_pool.c - a pool made before the library's constructor has run.
 *
 * A program linked with the static library runs its own constructors
 * (C++ globals, __attribute__((constructor))) in an order the library does
 * not choose: here one runs first for sure (priority 101; in a static link
 * the library's default-priority constructor comes after it). It makes a
 * pool, runs jobs and lets the workers park, so that they have read the
 * library's fence mode (fence.h) before the library's constructor decides
 * it. The pool's park handshake takes a compiler barrier on the push side
 * only when the parking side runs a membarrier, so both sides must see one
 * mode for the pool's whole life: a parker that read "no membarrier" fences
 * only itself, and a push that read "membarrier" later keeps no fence at
 * all, so neither need see the other (a lost wake-up). The program checks
 * that the mode a pool started with is still the mode once the library's
 * constructors have run, and, under ThreadSanitizer, that reading the mode
 * is no data race with deciding it.
 *
 * Exits 0 on success; on failure prints where and why, exits 1.
 */
#include "check.h"
#include "ctxpool.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "fence.h"

enum { THREADS = 2, ROUNDS = 1000 };

static cp_pool *pool;
static bool mode_at_start;

static bool fence_mode(void)
{
    return atomic_load_explicit(&cp__fence_asymmetric, memory_order_relaxed);
}

static void *job(void *p)
{
    return p;
}

static void run_jobs(unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        cp_future *f;
        CHECK(cp_pool_submit(pool, job, (void *)(uintptr_t)(i + 1), &f) == 0, "submit");
        void *r = NULL;
        CHECK(cp_future_wait(f, &r) == 0, "wait");
        CHECK(r == (void *)(uintptr_t)(i + 1), "result");
        cp_future_free(f);
    }
}

__attribute__((constructor(101))) static void make_pool_early(void)
{
    cp_pool_options options = {.threads = THREADS, .name = "early"};
    CHECK(cp_pool_new(&pool, &options) == 0, "pool");
    mode_at_start = fence_mode();
    run_jobs(ROUNDS);
    /* Until the workers have slept in park THREADS times (a condition, not
     * a delay): every park reads the fence mode before it sleeps. */
    cp_pool_stats stats;
    do {
        sched_yield();
        CHECK(cp_pool_get_stats(pool, &stats) == 0, "stats");
    } while (stats.parks < THREADS);
}

int main(void)
{
    /* The library's constructor has run by now. */
    CHECK(fence_mode() == mode_at_start,
          "the fence mode changed while a pool ran: %d at cp_pool_new, %d now",
          mode_at_start, fence_mode());
    run_jobs(ROUNDS);
    CHECK(cp_pool_free(pool) == 0, "free");
    printf("early_pool: ok (%s)\n",
           mode_at_start ? "asymmetric fences" : "full fences");
    return 0;
}
