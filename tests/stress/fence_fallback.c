/* fence_fallback.c - what a reader, and a pool, do when membarrier fails.
 *
 * A plain program (no Criterion), so that it also runs under the
 * sanitizers. It exits 0 when every check held, else 1 with the failed
 * check on stderr.
 *
 * The first read of an entered context from another thread fences the
 * owner's writes with MEMBARRIER_CMD_PRIVATE_EXPEDITED (src/context.c, "The
 * map lock"). That call may fail: EPERM when the registration was lost,
 * ENOMEM when the kernel is short of memory. This program defines syscall()
 * itself, ahead of the C library's, so that it can make the next such call
 * fail; everything else, and the retries, go to the real system call. It
 * checks which commands the library then sends, that the read sees a
 * consistent map, and that errno is left alone; when every command fails
 * once, that the reader tries again until a barrier runs. It needs a
 * kernel with membarrier, as the library's lockless path does.
 *
 * Then the kernel refuses membarrier for good, as a seccomp filter
 * installed after the library was loaded does: a worker going to sleep
 * while another is light (pool.c, "Light workers") cannot fence every
 * thread. It must not spin on it (the pool would hang), and the light
 * worker's work must still run: a job turns its worker light, waits until
 * the other worker sleeps, submits one more job and blocks until that job
 * has run, which only the sleeper can do. The first refusal turns light
 * workers off for the process, so the first rounds meet the refused call
 * and the rest check the pool without light workers (a refused call in
 * most rounds would mean the refusal was not recorded); every other round
 * submits the last job without waiting, while the other worker may be
 * going to sleep. Last, a waiter of a job its worker took back to run
 * itself, which must fence every thread before it sleeps, meets the
 * refusal: it must return once the job ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "check.h"
#include "ctxpool.h"
#include "fake_membarrier.h"
#include "light_rounds.h"
#include "pool.h"
#include "watchdog.h"

#define NV 8
#define MAX_LOG 16

/* The membarrier commands seen, in order, while logging is on. Only the
 * reader (the main thread) makes membarrier calls here; relaxed: read after
 * the calls, on the same thread. */
static atomic_int log_len;
static int log_cmd[MAX_LOG];
static atomic_bool logging;
/* The errno the next MEMBARRIER_CMD_PRIVATE_EXPEDITED fails with; 0: none. */
static atomic_int fail_next;
/* How many of the next membarrier calls fail with ENOMEM, whatever their
 * command (while logging is on). */
static atomic_int fail_any;
/* Every membarrier call fails with EPERM, whatever its command. */
static atomic_bool refuse_all;
/* The membarrier calls refused while refuse_all is set. */
static atomic_int refused_calls;

/* Every membarrier call of the library comes here (fake_membarrier.h). */
static int membarrier_fake(long cmd)
{
    if (atomic_load(&refuse_all)) {
        atomic_fetch_add(&refused_calls, 1);
        return -EPERM;
    }
    if (!atomic_load(&logging))
        return 0;
    int n = atomic_fetch_add(&log_len, 1);
    if (n < MAX_LOG)
        log_cmd[n] = (int)cmd;
    int err = atomic_exchange(&fail_next, 0);
    if (cmd == MEMBARRIER_CMD_PRIVATE_EXPEDITED && err != 0)
        return -err;
    int any = atomic_load(&fail_any);
    while (any > 0 && !atomic_compare_exchange_weak(&fail_any, &any, any - 1))
        ;
    return any > 0 ? -ENOMEM : 0;
}

static cp_var *vars[NV];
static char values[NV];

struct writer {
    cp_context *c;
    atomic_bool inside; /* release/acquire: the writer is in its run */
    atomic_bool stop;   /* release/acquire: the reader is done */
};

/* Set and reset vars in order, so that the map always holds vars 0..n-1. */
static void *write_until_stopped(void *p)
{
    struct writer *w = p;
    cp_token *tokens[NV];
    atomic_store_explicit(&w->inside, true, memory_order_release);
    while (!atomic_load_explicit(&w->stop, memory_order_acquire)) {
        for (int i = 0; i < NV; i++)
            CHECK(cp_var_set(vars[i], &values[i], &tokens[i]) == 0, "set");
        for (int i = NV - 1; i >= 0; i--) {
            CHECK(cp_var_reset(vars[i], tokens[i]) == 0, "reset");
            cp_token_free(tokens[i]);
        }
    }
    return NULL;
}

static void *writer_thread(void *p)
{
    struct writer *w = p;
    CHECK(cp_context_run(w->c, write_until_stopped, w, NULL) == 0, "writer's run");
    return NULL;
}

/* Enter a fresh context on another thread, make the first read of it from
 * this one with the next private fence failing with err, and the next
 * `any` membarrier calls with ENOMEM, and return how many membarrier calls
 * that read made (their commands in log_cmd). */
static int first_read_with_failures(int err, int any)
{
    struct writer w = {.c = cp_context_new()};
    CHECK(w.c != NULL, "cp_context_new");
    pthread_t th;
    CHECK(pthread_create(&th, NULL, writer_thread, &w) == 0, "pthread_create");
    while (!atomic_load_explicit(&w.inside, memory_order_acquire))
        sched_yield();

    atomic_store(&log_len, 0);
    atomic_store(&fail_next, err);
    atomic_store(&fail_any, any);
    atomic_store(&logging, true);
    errno = 4242;
    cp_context *snap = cp_context_copy(w.c);
    CHECK(errno == 4242, "errno changed to %d", errno);
    atomic_store(&logging, false);
    CHECK(snap != NULL, "cp_context_copy");

    /* The snapshot holds vars 0..n-1, each with its value. */
    size_t n = cp_context_len(snap);
    CHECK(n <= NV, "len %zu", n);
    for (size_t i = 0; i < NV; i++)
        CHECK(cp_context_get_or(snap, vars[i], NULL) == (i < n ? &values[i] : NULL),
              "snapshot of len %zu is torn at var %zu", n, i);
    cp_context_free(snap);

    atomic_store_explicit(&w.stop, true, memory_order_release);
    CHECK(pthread_join(th, NULL) == 0, "pthread_join");
    cp_context_free(w.c);
    int calls = atomic_load(&log_len);
    CHECK(calls <= MAX_LOG, "%d membarrier calls", calls);
    CHECK(atomic_load(&fail_any) == 0, "%d planned failures left", atomic_load(&fail_any));
    return calls;
}

static int first_read_with_failure(int err)
{
    return first_read_with_failures(err, 0);
}

/* ------------------------------------------------------------------------ */
/* A pool when the kernel refuses membarrier for good                       */

#define POOL_ROUNDS 200

static void pool_refused(void)
{
    watchdog_start("fence_fallback", "a pool hung when the kernel refused membarrier");
    atomic_store(&refuse_all, true);
    light_rounds("refused", POOL_ROUNDS, 2);
    atomic_store(&refuse_all, false);
    /* The first refusal turns light workers off: later announcers have no
     * light worker to fence for (a few may be under way at that refusal,
     * one per worker, and a worker's LIGHT stored before it saw the
     * switch). A pool that kept its workers light would make a call per
     * round. */
    int refused = atomic_load(&refused_calls);
    CHECK(refused >= 1, "no round met the refused fence");
    CHECK(refused <= POOL_ROUNDS / 10,
          "%d membarrier calls refused in %d rounds: a refusal did not turn light workers off",
          refused, POOL_ROUNDS);
}

/* A waiter that comes after a worker took the job back to run it itself
 * fences every thread before it sleeps (mark_sleeper in pool.c). Refused
 * for good, it keeps trying while the job runs, and returns once the job
 * has ended (it used to try forever). One worker: the parent job submits
 * the child and waits for it, so its worker takes the child back; the
 * child holds until the waiter, on another thread, has met a refusal. */
struct late {
    sem_t started, release;
    cp_pool *pool;
    cp_future *_Atomic child;
    bool any; /* the waiter waits with cp_future_wait_any */
};

static void *late_child(void *p)
{
    struct late *l = p;
    sem_post(&l->started);
    while (sem_wait(&l->release) != 0)
        ;
    return l;
}

static void *late_parent(void *p)
{
    struct late *l = p;
    cp_future *f = NULL;
    CHECK(cp_pool_submit(l->pool, late_child, l, &f) == 0, "child");
    /* release: the future's making, to the waiter. */
    atomic_store_explicit(&l->child, f, memory_order_release);
    CHECK(cp_future_wait(f, NULL) == 0, "the parent's wait");
    return f;
}

static void *late_waiter(void *p)
{
    struct late *l = p;
    /* acquire: pairs with the parent's release. */
    cp_future *f = atomic_load_explicit(&l->child, memory_order_acquire);
    cp_future *twice[2] = {f, f};
    size_t index = 2;
    if (l->any) /* on the watch epoch */
        CHECK(cp_future_wait_any(twice, 2, UINT64_MAX, &index) == 0 && index < 2, "wait_any");
    else /* on the job's word */
        CHECK(cp_future_wait(f, NULL) == 0, "the late waiter's wait");
    return NULL;
}

static void late_waiter_refused(bool any)
{
    struct late l = {.any = any};
    CHECK(sem_init(&l.started, 0, 0) == 0 && sem_init(&l.release, 0, 0) == 0, "sem");
    cp_pool_options options = {.threads = 1};
    CHECK(cp_pool_new(&l.pool, &options) == 0, "pool");
    atomic_init(&l.child, NULL);
    cp_future *parent = NULL;
    CHECK(cp_pool_submit(l.pool, late_parent, &l, &parent) == 0, "parent");
    while (sem_wait(&l.started) != 0)
        ;
    /* The child runs, taken back by the parent's worker (the only one). */
    int before = atomic_load(&refused_calls);
    atomic_store(&refuse_all, true);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, late_waiter, &l) == 0, "pthread_create");
    while (atomic_load(&refused_calls) == before)
        sched_yield();
    sem_post(&l.release);
    CHECK(pthread_join(th, NULL) == 0, "pthread_join");
    atomic_store(&refuse_all, false);
    void *child = NULL;
    CHECK(cp_future_wait(parent, &child) == 0, "parent");
    cp_future_free(child);
    cp_future_free(parent);
    CHECK(cp_pool_free(l.pool) == 0, "free");
    sem_destroy(&l.started);
    sem_destroy(&l.release);
}

int main(void)
{
    for (int i = 0; i < NV; i++) {
        vars[i] = cp_var_new("v", NULL);
        CHECK(vars[i] != NULL, "cp_var_new");
    }

    /* No failure: one private fence. */
    int calls = first_read_with_failure(0);
    CHECK(calls == 1 && log_cmd[0] == MEMBARRIER_CMD_PRIVATE_EXPEDITED,
          "%d calls, first %d: is membarrier missing from this kernel?", calls, log_cmd[0]);

    /* Registration lost: register again, then fence. */
    calls = first_read_with_failure(EPERM);
    CHECK(calls == 3 && log_cmd[0] == MEMBARRIER_CMD_PRIVATE_EXPEDITED &&
              log_cmd[1] == MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED &&
              log_cmd[2] == MEMBARRIER_CMD_PRIVATE_EXPEDITED,
          "after EPERM: %d calls (%d, %d, %d)", calls, log_cmd[0], log_cmd[1], log_cmd[2]);

    /* Out of memory: the global fence, which needs no registration. */
    calls = first_read_with_failure(ENOMEM);
    CHECK(calls == 2 && log_cmd[0] == MEMBARRIER_CMD_PRIVATE_EXPEDITED &&
              log_cmd[1] == MEMBARRIER_CMD_GLOBAL,
          "after ENOMEM: %d calls (%d, %d)", calls, log_cmd[0], log_cmd[1]);

    /* Every command fails once: no barrier ran, so the reader tries again
     * (cp__fence_all_threads), until one runs. */
    calls = first_read_with_failures(0, 2);
    CHECK(calls == 3 && log_cmd[0] == MEMBARRIER_CMD_PRIVATE_EXPEDITED &&
              log_cmd[1] == MEMBARRIER_CMD_GLOBAL &&
              log_cmd[2] == MEMBARRIER_CMD_PRIVATE_EXPEDITED,
          "after two ENOMEM: %d calls (%d, %d, %d): no barrier ran", calls, log_cmd[0],
          log_cmd[1], log_cmd[2]);

    for (int i = 0; i < NV; i++)
        cp_var_free(vars[i]);

    pool_refused();
    late_waiter_refused(false);
    late_waiter_refused(true);
    printf("fence_fallback: ok\n");
    return 0;
}
