/* bench_uv.c - workload 2 on libuv's threadpool (uv_queue_work).
 *
 * uv_queue_work may only be called on the thread that runs the loop, and a
 * job is finished for libuv when its after-work callback has run there. So
 * the main thread is the loop thread: it queues 1,000,000 empty jobs (one
 * preallocated uv_work_t each) and then calls uv_run(UV_RUN_DEFAULT), which
 * returns once every after-work callback has run: that is libuv's own "wait
 * for all", and it keeps the main thread out of the workers' way as the other
 * pools' waits do. UV_THREADPOOL_SIZE=2 gives the 2 workers. ns per job. The
 * after-work callbacks count the finished jobs (on the loop thread, no atomic
 * needed); a check run counts the ids of the jobs that ran first.
 */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "harness.h"
#include "workloads.h"

static uv_work_t *reqs;
static size_t finished; /* loop thread only */

static void empty_job(uv_work_t *req)
{
    (void)req;
}

static void counted_job(uv_work_t *req)
{
    bench_count_job((uintptr_t)req->data);
}

static void after_job(uv_work_t *req, int status)
{
    (void)req;
    finished += status == 0;
}

static double run_submit(void *arg)
{
    uv_work_cb job = *(uv_work_cb *)arg;
    uv_loop_t *loop = uv_default_loop();
    int failures = 0;
    finished = 0;
    uint64_t t = bench_now_ns();
    for (size_t i = 0; i < SUBMIT_JOBS; i++) {
        reqs[i].data = (void *)(uintptr_t)(i + 1);
        failures += uv_queue_work(loop, &reqs[i], job, after_job) != 0;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    double ns = (double)(bench_now_ns() - t) / SUBMIT_JOBS;
    BENCH_CHECK(failures == 0 && finished == SUBMIT_JOBS, "uv job count");
    return ns;
}

int main(int argc, char **argv)
{
    uv_work_cb counted = counted_job, empty = empty_job;
    char threads[16];
    bench_init(argc, argv);
    /* Read by libuv when its threadpool starts, at the first uv_queue_work. */
    snprintf(threads, sizeof threads, "%u", SUBMIT_WORKERS);
    BENCH_CHECK(setenv("UV_THREADPOOL_SIZE", threads, 1) == 0, "setenv");
    reqs = malloc(SUBMIT_JOBS * sizeof *reqs);
    BENCH_CHECK(reqs != NULL, "malloc");
    if (bench_wanted("submit")) {
        run_submit(&counted);
        bench_count_check(SUBMIT_JOBS);
        bench_measure("submit", "libuv uv_queue_work", "ns/job", run_submit, &empty);
    }
    BENCH_CHECK(uv_loop_close(uv_default_loop()) == 0, "uv_loop_close");
    free(reqs);
    return 0;
}
