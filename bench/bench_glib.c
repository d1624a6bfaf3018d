/* bench_glib.c - workload 2 on GLib's GThreadPool.
 *
 * submit: a pool of 2 exclusive threads, made before the clock starts;
 * 1,000,000 g_thread_pool_push calls from the main thread, then
 * g_thread_pool_free(pool, FALSE, TRUE), GLib's one way to wait until every
 * queued job has run (it also lets the 2 threads end: a few microseconds
 * against the tens of milliseconds measured). ns per job. A check run counts
 * the ids of the jobs that ran first. GThreadPool wants non-NULL data, so
 * job i gets i + 1 (no allocation).
 */
#include "config.h"

#include <glib.h>
#include <stdint.h>

#include "harness.h"
#include "workloads.h"

static void empty_job(gpointer data, gpointer user_data)
{
    (void)data;
    (void)user_data;
}

static void counted_job(gpointer data, gpointer user_data)
{
    (void)user_data;
    bench_count_job(GPOINTER_TO_SIZE(data));
}

static double run_submit(void *arg)
{
    GFunc job = *(GFunc *)arg;
    GError *error = NULL;
    GThreadPool *pool = g_thread_pool_new(job, NULL, SUBMIT_WORKERS, TRUE, &error);
    BENCH_CHECK(pool != NULL, "g_thread_pool_new");
    int failures = 0;
    uint64_t t = bench_now_ns();
    for (size_t i = 1; i <= SUBMIT_JOBS; i++)
        failures += !g_thread_pool_push(pool, GSIZE_TO_POINTER(i), NULL);
    g_thread_pool_free(pool, FALSE, TRUE);
    double ns = (double)(bench_now_ns() - t) / SUBMIT_JOBS;
    BENCH_CHECK(failures == 0, "g_thread_pool_push");
    return ns;
}

int main(int argc, char **argv)
{
    GFunc counted = counted_job, empty = empty_job;
    bench_init(argc, argv);
    if (bench_wanted("submit")) {
        run_submit(&counted);
        bench_count_check(SUBMIT_JOBS);
        bench_measure("submit", "GLib GThreadPool", "ns/job", run_submit, &empty);
    }
    return 0;
}
