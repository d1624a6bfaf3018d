/* bench_pool.c - ctxpool's pool workloads 2 to 7, with the plain
 * mutex+condvar pool and sequential code as baselines (the other peers have
 * programs of their own: bench_glib.c, bench_uv.c, bench_omp.c, bench_tbb.cc).
 *
 *   submit   1,000,000 empty jobs from the main thread (not a worker) to a
 *            pool of 2 workers, then wait for all; ns per job. ctxpool
 *            without futures waits with cp_pool_wait_idle: no counter is
 *            added to the jobs, and the waiter sleeps until the last one
 *            has ended, without helping the workers. With futures, every
 *            job gets one; the main thread then waits for and frees each in
 *            submission order. The mutex pool waits on its own condition
 *            variable.
 *   capture  as submit without futures, from inside a context in which 0, 10
 *            or 1,000 variables are set: the capture must cost the same.
 *   fib30    fib(30), a task per call (every call spawns its n-1 half and
 *            computes its n-2 half itself); fib30-cutoff20 the same with
 *            sequential code below n = 20. ms. ctxpool frame tasks
 *            (cp_spawn/cp_sync) and futures (submit/wait), 2 workers, the
 *            root submitted from the main thread; ratios to sequential code
 *            as the compiler optimizes it, shown beside sequential code that
 *            makes one call per node of the call tree, as the tasks do, and
 *            the floor under frame tasks: fib on one thread with a spawn and
 *            a sync that are bare calls into bench/libfloor.so
 *            (floor_task.c: no context, nothing another thread could
 *            take); two workers could at best halve it. The five run
 *            interleaved (bench_compare); the pinned rows of fib30-cutoff20
 *            follow them on a pool of their own.
 *   fib30-static  fib30 by bench_pool_static: this file built again, with
 *            libctxpool's static archive linked in (libtool -static) where
 *            every other program here calls the shared library. The same
 *            library code, PIC as in the .so (the archive is pic-only): what
 *            differs is the calls between the user's code and the library,
 *            which here are direct and short. bench/run asks
 *            bench_pool_static for this workload only.
 *   skynet   a 10-ary tree of 1,000,000 leaf jobs, each node summing what its
 *            10 children return (each leaf returns its id); ms.
 *   wakeup   round trip main thread -> pool -> main thread: submit an empty
 *            job, wait for its future. Before each round the main thread
 *            waits until the pool's one worker has parked (its park count
 *            rose) and 20 us more, so every round wakes a sleeping worker
 *            and then the sleeping main thread. Against it: a bare futex
 *            ping-pong between two threads, with a 100 us pause between
 *            rounds so the peer is asleep too. ns per round trip, the mean
 *            of 500 rounds per run.
 *   idle     a pool of 2 workers, just after one job ran, over 1 s of the
 *            main thread sleeping: the process's CPU time (getrusage
 *            RUSAGE_SELF) minus the main thread's (RUSAGE_THREAD), as a
 *            percentage of one core.
 *
 * Every workload checks its result: a check run of each submission case
 * counts the ids of the jobs that ran (bench_count_job), the timed runs check
 * the pool's submitted and completed counts, fib and skynet check the value.
 */
#include "config.h"

#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ctxpool.h>

#include "floor.h"
#include "harness.h"
#include "mutex_pool.h"
#include "workloads.h"

#define CAPTURE_VARS 1000
#define WAKEUP_ROUNDS 500
#define IDLE_NS 1000000000u

static cp_pool *pool;
static cp_var *vars[CAPTURE_VARS];
static int values[CAPTURE_VARS];

static void sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    nanosleep(&ts, NULL);
}

static cp_pool *new_pool_pinned(unsigned threads, bool pin)
{
    cp_pool *p;
    cp_pool_options options = {.threads = threads, .name = "bench", .pin = pin};
    BENCH_CHECK(cp_pool_new(&p, &options) == 0, "cp_pool_new");
    return p;
}

static cp_pool *new_pool(unsigned threads)
{
    return new_pool_pinned(threads, false);
}

static cp_pool_stats stats_of(cp_pool *p)
{
    cp_pool_stats s;
    BENCH_CHECK(cp_pool_get_stats(p, &s) == 0, "cp_pool_get_stats");
    return s;
}

/* ------------------------------------------------------------------------ */
/* submit, capture                                                           */

/* In a check run, the job also checks that it sees the submitter's value. */
static cp_var *expected_var;
static void *expected_value;

static void *empty_job(void *arg)
{
    return arg;
}

static void *counted_job(void *arg)
{
    if (expected_var && cp_var_get_or(expected_var, NULL) != expected_value)
        bench_fail("a job does not see its submitter's context");
    bench_count_job((uintptr_t)arg);
    return NULL;
}

struct submit_case {
    cp_job_fn job;
    cp_future **futures; /* NULL: submit without futures */
    cp_context *ctx;     /* submit from inside this context; NULL: main's own */
    double ns;
};

static void *submit_jobs(void *arg)
{
    struct submit_case *k = arg;
    cp_pool_stats before = stats_of(pool);
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (uintptr_t i = 1; i <= SUBMIT_JOBS; i++)
        failures += cp_pool_submit(pool, k->job, (void *)i,
                                   k->futures ? &k->futures[i - 1] : NULL) != 0;
    BENCH_CHECK(failures == 0, "cp_pool_submit");
    if (k->futures) {
        for (size_t i = 0; i < SUBMIT_JOBS; i++) {
            failures += cp_future_wait(k->futures[i], NULL) != 0;
            cp_future_free(k->futures[i]);
        }
    } else {
        BENCH_CHECK(cp_pool_wait_idle(pool, UINT64_MAX) == 0, "cp_pool_wait_idle");
    }
    k->ns = (double)(bench_now_ns() - t) / SUBMIT_JOBS;
    cp_pool_stats after = stats_of(pool);
    BENCH_CHECK(failures == 0, "cp_future_wait");
    BENCH_CHECK(after.submitted - before.submitted == SUBMIT_JOBS &&
                    after.completed - before.completed == SUBMIT_JOBS,
                "pool's submitted and completed counts");
    return NULL;
}

static double run_submit(void *arg)
{
    struct submit_case *k = arg;
    if (k->ctx)
        BENCH_CHECK(cp_context_run(k->ctx, submit_jobs, k, NULL) == 0, "cp_context_run");
    else
        submit_jobs(k);
    return k->ns;
}

/* A check run with counted jobs, then the timed runs with empty ones. */
static void measure_submit(const char *workload, const char *impl,
                           struct submit_case k)
{
    k.job = counted_job;
    run_submit(&k);
    bench_count_check(SUBMIT_JOBS);
    k.job = empty_job;
    bench_measure(workload, impl, "ns/job", run_submit, &k);
}

static void mutex_empty_job(void *arg)
{
    (void)arg;
}

static void mutex_counted_job(void *arg)
{
    bench_count_job((uintptr_t)arg);
}

struct mutex_case {
    mutex_pool *pool;
    void (*job)(void *arg);
};

static double run_submit_mutex(void *arg)
{
    struct mutex_case *k = arg;
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (uintptr_t i = 1; i <= SUBMIT_JOBS; i++)
        failures += mutex_pool_submit(k->pool, k->job, (void *)i) != 0;
    uint64_t ran = mutex_pool_wait_all(k->pool);
    double ns = (double)(bench_now_ns() - t) / SUBMIT_JOBS;
    BENCH_CHECK(failures == 0 && ran == SUBMIT_JOBS, "mutex pool job count");
    return ns;
}

static void bench_submit(void)
{
    cp_future **futures = malloc(SUBMIT_JOBS * sizeof *futures);
    BENCH_CHECK(futures != NULL, "malloc");
    pool = new_pool(SUBMIT_WORKERS);
    bench_baseline("submit", "ctxpool");
    measure_submit("submit", "ctxpool", (struct submit_case){0});
    measure_submit("submit", "ctxpool futures", (struct submit_case){.futures = futures});
    cp_pool_free(pool);
    free(futures);

    struct mutex_case m = {mutex_pool_new(SUBMIT_WORKERS), mutex_counted_job};
    BENCH_CHECK(m.pool != NULL, "mutex_pool_new");
    run_submit_mutex(&m);
    bench_count_check(SUBMIT_JOBS);
    m.job = mutex_empty_job;
    bench_measure("submit", "mutex+condvar pool", "ns/job", run_submit_mutex, &m);
    mutex_pool_free(m.pool);
}

static void *set_vars(void *arg)
{
    size_t n = (size_t)(uintptr_t)arg;
    for (size_t i = 0; i < n; i++)
        BENCH_CHECK(cp_var_set(vars[i], &values[i], NULL) == 0, "cp_var_set");
    return NULL;
}

static void bench_capture(void)
{
    static const struct {
        size_t vars;
        const char *impl;
    } cases[] = {{0, "ctxpool 0 vars"}, {10, "ctxpool 10 vars"}, {1000, "ctxpool 1000 vars"}};
    pool = new_pool(SUBMIT_WORKERS);
    bench_baseline("capture", cases[0].impl);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct submit_case k = {.ctx = cp_context_new()};
        size_t n = cases[i].vars;
        BENCH_CHECK(k.ctx != NULL, "cp_context_new");
        BENCH_CHECK(cp_context_run(k.ctx, set_vars, (void *)(uintptr_t)n, NULL) == 0,
                    "cp_context_run");
        expected_var = n ? vars[n - 1] : NULL;
        expected_value = n ? &values[n - 1] : NULL;
        measure_submit("capture", cases[i].impl, k);
        cp_context_free(k.ctx);
    }
    expected_var = NULL;
    cp_pool_free(pool);
}

/* ------------------------------------------------------------------------ */
/* fib                                                                       */

static unsigned fib_cutoff; /* below it, fib_seq: 2 for a task per call */

/* fib_seq as the compiler leaves it makes far fewer calls than fib has nodes
 * (GCC turns the second call into a loop and inlines levels into each other).
 * fib_calls makes one real call per node, as every task version does. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-optimize-sibling-calls")))
#else
__attribute__((noinline))
#endif
static uint64_t fib_calls(unsigned n)
{
    return n < 2 ? n : fib_calls(n - 1) + fib_calls(n - 2);
}

static void *fib_frame(void *arg)
{
    unsigned n = (unsigned)(uintptr_t)arg;
    if (n < fib_cutoff)
        return (void *)(uintptr_t)fib_seq(n);
    cp_task t;
    void *a;
    BENCH_CHECK(cp_spawn(pool, &t, fib_frame, (void *)(uintptr_t)(n - 1)) == 0, "cp_spawn");
    uintptr_t b = (uintptr_t)fib_frame((void *)(uintptr_t)(n - 2));
    BENCH_CHECK(cp_sync(&t, &a) == 0, "cp_sync");
    return (void *)((uintptr_t)a + b);
}

static void *fib_future(void *arg)
{
    unsigned n = (unsigned)(uintptr_t)arg;
    if (n < fib_cutoff)
        return (void *)(uintptr_t)fib_seq(n);
    cp_future *f;
    void *a;
    BENCH_CHECK(cp_pool_submit(pool, fib_future, (void *)(uintptr_t)(n - 1), &f) == 0,
                "cp_pool_submit");
    uintptr_t b = (uintptr_t)fib_future((void *)(uintptr_t)(n - 2));
    BENCH_CHECK(cp_future_wait(f, &a) == 0, "cp_future_wait");
    cp_future_free(f);
    return (void *)((uintptr_t)a + b);
}

/* fib with the least a task library can do per spawn (floor_task.c), on
 * one thread: the floor under fib_frame's calls. */
static void *fib_floor(void *arg)
{
    unsigned n = (unsigned)(uintptr_t)arg;
    if (n < fib_cutoff)
        return (void *)(uintptr_t)fib_seq(n);
    struct bench_floor_task t;
    void *a;
    bench_floor_spawn(&t, fib_floor, (void *)(uintptr_t)(n - 1));
    uintptr_t b = (uintptr_t)fib_floor((void *)(uintptr_t)(n - 2));
    BENCH_CHECK(bench_floor_sync(&t, &a) == 0, "bench_floor_sync");
    return (void *)((uintptr_t)a + b);
}

static uint64_t fib_floor_seq(unsigned n)
{
    return (uintptr_t)fib_floor((void *)(uintptr_t)n);
}

/* The name of workload fib30 in this build. */
#ifdef BENCH_STATIC
#define FIB30 "fib30-static"
#else
#define FIB30 "fib30"
#endif

struct fib_case {
    unsigned n;
    cp_job_fn root;               /* NULL: sequential */
    uint64_t (*seq)(unsigned n);  /* the sequential code when root is NULL */
};

static double run_fib(void *arg)
{
    struct fib_case *k = arg;
    uint64_t t = bench_now_ns(), result;
    if (k->root) {
        cp_future *f;
        void *r;
        BENCH_CHECK(cp_pool_submit(pool, k->root, (void *)(uintptr_t)k->n, &f) == 0,
                    "cp_pool_submit");
        BENCH_CHECK(cp_future_wait(f, &r) == 0, "cp_future_wait");
        cp_future_free(f);
        result = (uintptr_t)r;
    } else {
        result = k->seq(k->n);
    }
    double ms = (double)(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(result == FIB_RESULT, "fib value");
    return ms;
}

static void bench_fib(const char *workload, unsigned cutoff)
{
    struct fib_case seq = {FIB_N, NULL, fib_seq}, calls = {FIB_N, NULL, fib_calls},
                    floor = {FIB_N, NULL, fib_floor_seq}, frame = {FIB_N, fib_frame, NULL},
                    future = {FIB_N, fib_future, NULL};
    fib_cutoff = cutoff;
    pool = new_pool(SUBMIT_WORKERS);
    /* Interleaved (bench_compare): the goals are ratios to the sequential
     * code, whose medians in five runs of a row spread from 0.88 to 1.68
     * ms, more than the seven runs within four of them (7 to 15%): the
     * host had changed speed between the rows. */
    struct bench_case cases[] = {
        {"sequential", run_fib, &seq},
        {"sequential, a call per node", run_fib, &calls},
        {"floor: bare spawn+sync, 1 thread", run_fib, &floor},
        {"ctxpool frame tasks", run_fib, &frame},
        {"ctxpool futures", run_fib, &future},
    };
    bench_baseline(workload, "sequential");
    bench_compare(workload, "ms", cases, 5);
    cp_pool_free(pool);
    if (cutoff > 2) {
        /* The same with workers pinned (cp_pool_options.pin). */
        pool = new_pool_pinned(SUBMIT_WORKERS, true);
        bench_measure(workload, "ctxpool frame tasks, pinned", "ms", run_fib, &frame);
        bench_measure(workload, "ctxpool futures, pinned", "ms", run_fib, &future);
        cp_pool_free(pool);
    }
}

/* ------------------------------------------------------------------------ */
/* skynet                                                                    */

struct sky {
    uint64_t id, size, sum;
};

static void children(const struct sky *s, struct sky kids[10])
{
    for (uint64_t i = 0; i < 10; i++)
        kids[i] = (struct sky){s->id + i * (s->size / 10), s->size / 10, 0};
}

static void *skynet_future(void *arg)
{
    struct sky *s = arg, kids[10];
    cp_future *f[10];
    if (s->size == 1) {
        s->sum = s->id;
        return NULL;
    }
    children(s, kids);
    for (int i = 0; i < 10; i++)
        BENCH_CHECK(cp_pool_submit(pool, skynet_future, &kids[i], &f[i]) == 0,
                    "cp_pool_submit");
    s->sum = 0;
    for (int i = 0; i < 10; i++) {
        BENCH_CHECK(cp_future_wait(f[i], NULL) == 0, "cp_future_wait");
        cp_future_free(f[i]);
        s->sum += kids[i].sum;
    }
    return NULL;
}

static void *skynet_frame(void *arg)
{
    struct sky *s = arg, kids[10];
    cp_task t[10];
    if (s->size == 1) {
        s->sum = s->id;
        return NULL;
    }
    children(s, kids);
    for (int i = 0; i < 10; i++)
        BENCH_CHECK(cp_spawn(pool, &t[i], skynet_frame, &kids[i]) == 0, "cp_spawn");
    s->sum = 0;
    for (int i = 9; i >= 0; i--) { /* syncs nest: last spawned, first synced */
        BENCH_CHECK(cp_sync(&t[i], NULL) == 0, "cp_sync");
        s->sum += kids[i].sum;
    }
    return NULL;
}

static double run_skynet(void *arg)
{
    cp_job_fn root = *(cp_job_fn *)arg;
    struct sky s = {0, SKYNET_LEAVES, 0};
    uint64_t t = bench_now_ns();
    if (root) {
        cp_future *f;
        BENCH_CHECK(cp_pool_submit(pool, root, &s, &f) == 0, "cp_pool_submit");
        BENCH_CHECK(cp_future_wait(f, NULL) == 0, "cp_future_wait");
        cp_future_free(f);
    } else {
        s.sum = skynet_seq(s.id, s.size);
    }
    double ms = (double)(bench_now_ns() - t) / 1e6;
    BENCH_CHECK(s.sum == SKYNET_SUM, "skynet sum");
    return ms;
}

static void bench_skynet(void)
{
    cp_job_fn seq = NULL, future = skynet_future, frame = skynet_frame;
    pool = new_pool(SUBMIT_WORKERS);
    bench_baseline("skynet", "ctxpool futures");
    bench_measure("skynet", "sequential", "ms", run_skynet, &seq);
    bench_measure("skynet", "ctxpool futures", "ms", run_skynet, &future);
    bench_measure("skynet", "ctxpool frame tasks", "ms", run_skynet, &frame);
    cp_pool_free(pool);
}

/* ------------------------------------------------------------------------ */
/* wakeup                                                                    */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The ping-pong word: the main thread makes it odd (ping), the peer makes it
 * even again (pong). Release/acquire on it order the stop flag too. */
static _Atomic uint32_t turn;
static atomic_bool stop_peer;

static void *pong(void *arg)
{
    (void)arg;
    for (;;) {
        uint32_t w;
        /* acquire: pairs with the release store of the ping. */
        while (!((w = atomic_load_explicit(&turn, memory_order_acquire)) & 1))
            futex_wait(&turn, w);
        if (atomic_load_explicit(&stop_peer, memory_order_relaxed))
            return NULL;
        /* release: pairs with the main thread's acquire load. */
        atomic_store_explicit(&turn, w + 1, memory_order_release);
        futex_wake(&turn);
    }
}

static double run_futex_pingpong(void *arg)
{
    (void)arg;
    uint64_t total = 0;
    for (int r = 0; r < WAKEUP_ROUNDS; r++) {
        sleep_ns(100000);
        uint32_t w = atomic_load_explicit(&turn, memory_order_relaxed) + 1;
        uint64_t t = bench_now_ns();
        /* release: pairs with the peer's acquire load. */
        atomic_store_explicit(&turn, w, memory_order_release);
        futex_wake(&turn);
        /* acquire: pairs with the peer's release store. */
        while (atomic_load_explicit(&turn, memory_order_acquire) == w)
            futex_wait(&turn, w);
        total += bench_now_ns() - t;
    }
    return (double)total / WAKEUP_ROUNDS;
}

/* Wait until the pool's worker has parked once more than *parks. */
static void wait_parked(uint64_t *parks)
{
    uint64_t give_up = bench_now_ns() + 1000000000u;
    while (stats_of(pool).parks == *parks) {
        BENCH_CHECK(bench_now_ns() < give_up, "the idle worker never parked");
        sleep_ns(20000);
    }
    sleep_ns(20000); /* from its park count to its futex wait */
    *parks = stats_of(pool).parks;
}

/* The worker's park count before the last submit. It carries over from
 * one run to the next: read afresh at the start of a run, it could already
 * count the park after the previous run's last job, and the wait for the
 * next park would then wait for one that never comes. */
static uint64_t pingpong_parks;

static double run_pool_pingpong(void *arg)
{
    (void)arg;
    uint64_t total = 0, parks = pingpong_parks;
    for (int r = 0; r < WAKEUP_ROUNDS; r++) {
        cp_future *f;
        void *result = NULL;
        wait_parked(&parks);
        uint64_t t = bench_now_ns();
        BENCH_CHECK(cp_pool_submit(pool, empty_job, &parks, &f) == 0, "cp_pool_submit");
        BENCH_CHECK(cp_future_wait(f, &result) == 0 && result == &parks, "cp_future_wait");
        total += bench_now_ns() - t;
        cp_future_free(f);
    }
    pingpong_parks = parks;
    return (double)total / WAKEUP_ROUNDS;
}

static void bench_wakeup(void)
{
    /* Interleaved (bench_compare): a slow spell of the host once made one
     * run's ctxpool rounds 20 times slower than its futex rounds, measured
     * a few seconds apart. Between rounds both peers sleep, so neither
     * takes CPU from the other's rounds. */
    pthread_t peer;
    BENCH_CHECK(pthread_create(&peer, NULL, pong, NULL) == 0, "pthread_create");
    pool = new_pool(1);
    /* The count before the worker's first park, which the first round then
     * waits for. (Read from the new pool, it could already count that
     * park, and the first round wait for one that never comes.) */
    pingpong_parks = 0;
    struct bench_case cases[] = {
        {"futex ping-pong", run_futex_pingpong, NULL},
        {"ctxpool", run_pool_pingpong, NULL},
    };
    bench_baseline("wakeup", "futex ping-pong");
    bench_compare("wakeup", "ns/round trip", cases, 2);
    cp_pool_free(pool);
    atomic_store_explicit(&stop_peer, true, memory_order_relaxed);
    /* release: the stop flag before the ping that shows it to the peer. */
    atomic_fetch_add_explicit(&turn, 1, memory_order_release);
    futex_wake(&turn);
    pthread_join(peer, NULL);
}

/* ------------------------------------------------------------------------ */
/* idle                                                                      */

static uint64_t cpu_ns(int who)
{
    struct rusage u;
    BENCH_CHECK(getrusage(who, &u) == 0, "getrusage");
    return ((uint64_t)u.ru_utime.tv_sec + (uint64_t)u.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)u.ru_utime.tv_usec + (uint64_t)u.ru_stime.tv_usec) * 1000u;
}

static double run_idle(void *arg)
{
    (void)arg;
    cp_future *f;
    BENCH_CHECK(cp_pool_submit(pool, empty_job, NULL, &f) == 0 &&
                    cp_future_wait(f, NULL) == 0,
                "cp_pool_submit");
    cp_future_free(f);
    uint64_t self = cpu_ns(RUSAGE_SELF), main_thread = cpu_ns(RUSAGE_THREAD);
    uint64_t t = bench_now_ns();
    sleep_ns(IDLE_NS);
    uint64_t wall = bench_now_ns() - t;
    /* The process's and the thread's clocks are sampled apart, so when the
     * workers used nothing the difference can come out a little below zero:
     * that is a zero. */
    int64_t workers = (int64_t)(cpu_ns(RUSAGE_SELF) - self) -
                      (int64_t)(cpu_ns(RUSAGE_THREAD) - main_thread);
    return workers > 0 ? 100.0 * (double)workers / (double)wall : 0.0;
}

static void bench_idle(void)
{
    pool = new_pool(2);
    bench_baseline("idle", "ctxpool");
    bench_measure("idle", "ctxpool", "% of a core", run_idle, NULL);
    cp_pool_free(pool);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv);
    for (size_t i = 0; i < CAPTURE_VARS; i++)
        BENCH_CHECK((vars[i] = cp_var_new("bench", NULL)) != NULL, "cp_var_new");
    if (bench_wanted("submit"))
        bench_submit();
    if (bench_wanted("capture"))
        bench_capture();
    if (bench_wanted(FIB30))
        bench_fib(FIB30, 2);
    if (bench_wanted("fib30-cutoff20"))
        bench_fib("fib30-cutoff20", FIB_CUTOFF);
    if (bench_wanted("skynet"))
        bench_skynet();
    if (bench_wanted("wakeup"))
        bench_wakeup();
    if (bench_wanted("idle"))
        bench_idle();
    for (size_t i = 0; i < CAPTURE_VARS; i++)
        cp_var_free(vars[i]);
    return 0;
}
