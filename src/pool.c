/* pool.c - the work-stealing pool that carries contexts.
 *
 * Work. Two kinds of work items share one header (struct work): heap jobs,
 * made by cp_pool_submit and cp_pool_submit_in, which double as their own
 * futures; and frame tasks, made by cp_spawn in storage the caller owns
 * (cp_task). Each carries the context it must run in: a captured map (one
 * reference taken at submit, O(1)) or, for submit_in, the context itself.
 *
 * Queues. Every worker owns a Chase-Lev deque (deque.c): it pushes and pops
 * its own work at the bottom, idle workers steal from the top. Threads outside
 * the pool push onto the injection queue, an intrusive multi-producer queue
 * (Vyukov's) whose consumer side workers take turns at with a try-lock. A
 * worker looks at the injection queue first every INJECT_EVERY items it runs,
 * so a stream of local work cannot starve outside submitters.
 *
 * Running. A worker runs an item in the context it captured: a frame
 * context (context.h) built on its stack from the captured map, entered
 * with run semantics and left exactly, or, when that map is the current
 * context's, the current context until the item sets something, which then
 * makes the frame (run_captured, cp__lazy). After every item the worker is
 * back in its own context and nothing leaks from one job to the next. A submit_in job enters its context
 * with the same compare-and-swap as cp_context_run, and reports CP_EBUSY or
 * CP_ERECURSIVE instead of running when that fails. A job nobody holds a
 * handle to (none was asked for, or it was freed) is the pool's alone: it
 * runs without the atomic state changes a future needs (see ST_FREED).
 *
 * Waiting. A thread that waits for a job or task and is a worker of the pool
 * helps: it offers its own private tasks, runs its own deque's work, the
 * injection queue's, and steals, until what it waits for is done; only when
 * a search finds nothing, and no work is visible that it could not take
 * (an outside push half done hides the items behind it), does it sleep.
 * The item is then not queued but taken by another thread (it was visible
 * before anyone could wait for it), which wakes the waiter when it
 * finishes it. A waiting worker sleeps as a parked one does, on the
 * pool's event count (see "Parking"), so that work queued meanwhile wakes
 * it too: the busy workers may be blocked on that very work in user code.
 * The item's finisher, told by a flag in its state word, wakes it there;
 * a cancel, which may finish an item after the pool's accounting has let
 * the pool go, holds a reference to the pool's memory for that wake. Any
 * other thread sleeps on the item's state word.
 * A worker that finds the job it waits for at the bottom of its own deque
 * takes it back and runs it with no atomic read-modify-write: the fence its
 * pop takes anyway serves two store-buffering pairs instead, one with
 * cp_future_cancel for the claim, one with other waiters for the finish
 * (job_take_own). A thread that comes to wait after such a take, and so
 * may not be seen by the taker's plain finish, runs an asymmetric fence
 * (fence.h) before it sleeps, which makes sure the taker sees it: one
 * membarrier system call, on a path fork-join code never takes (it is the
 * second waiter of one future at once).
 *
 * Parking. Idle workers sleep on an event count (the futex word `epoch` with a
 * count of waiters beside it): a worker announces itself as a waiter, then
 * looks for work once more, and only then sleeps, on the epoch it read when it
 * announced itself. A thread that publishes work then reads the waiter count;
 * if it is not zero it bumps the epoch and wakes one sleeper. Both sides order
 * "write mine, then read theirs" with seq_cst, so at least one of them sees
 * the other: either the worker finds the work, or the publisher sees the
 * waiter and the bumped epoch makes its futex wait return. A worker spins for
 * a bounded time (SPIN_NS) before it parks; an idle pool uses no CPU. The
 * protocol's fences order nothing but itself: all data crosses threads
 * through release/acquire operations, which ThreadSanitizer sees (it does
 * not model fences), so its runs check every handoff.
 * Light workers. Fork-join code publishes for every future it submits (a
 * push on its worker's deque), while workers announce themselves once per
 * park (after a search of SPIN_NS, or a helping wait that found nothing)
 * and once more after a helper's sleep. Where the process has asymmetric
 * fences (fence.h; the pool's fenced), a worker whose current job (with
 * what it runs inline) has made LIGHT_AFTER fenced pushes turns light: its
 * pushes then order their side with a compiler barrier only, and an
 * announcer that sees a light worker fences every thread instead of only
 * itself, and turns it heavy again (notify_own, announce_fence), until
 * LIGHT_AFTER more fenced pushes. That fence is one system call, which
 * interrupts every running thread of the process, at about the cost of
 * LIGHT_AFTER fences here: so a job pays that many fences before any
 * announcer pays the system call for its worker (rent, then buy), and a
 * pool whose jobs push fewer each never makes it. A worker also turns
 * heavy, and its count starts again, at the end of each job its main loop
 * runs (not one it runs while it waits) and when it announces itself
 * (go_heavy).
 *
 * Shutdown. The work items accepted and not yet finished are counted in
 * three counters (pending_total): `admitted`, raised by every submit from
 * outside the pool, less `refused`, the admits turned away at shutdown,
 * plus `pending`, which workers keep for the items they add and finish.
 * Workers leave when the pool is shut down and that count is zero. A submit
 * raises admitted before it checks the shutdown flag, and shutdown sets the
 * flag before workers read the count (both seq_cst), so a job that got past
 * the check is always run or cancelled before the workers leave: no job is
 * lost. Every change that can bring the count to zero (a worker's finished
 * items, a refusal) reads the other counters after its own seq_cst
 * read-modify-write, so the last of them sees zero and wakes the workers;
 * so does a cancel shutdown's own count of the queued items it cancelled
 * (cancel_queued). The same zero, on a running pool, ends the waits of
 * cp_pool_wait_idle: a change reads the total only when a waiter counted
 * itself in, and wakes the waiters on a futex word of their own
 * (total_changed).
 * One count serves three ends for an outside submit, so that it pays one
 * atomic operation for them: the pending count, the statistics' submitted
 * count, and the injection queue's count of pushes (inject_nonempty).
 *
 * Lock order: there are no locks held while user code runs. The injection
 * queue's consumer try-lock is the only lock, held for a handful of pops.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sched.h>
#include <semaphore.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "context.h"
#include "ctxpool.h"
#include "deque.h"
#include "fence.h"
#include "key.h"
#include "pool.h"

#define INJECT_EVERY 32       /* items between two looks at the injection queue */
#define INJECT_BATCH 16       /* items moved from the injection queue at a time */
#define SPIN_NS 50000         /* how long an idle worker searches before parking */
#define RECHECK_NS 1000000    /* a park's sleep when its look was unsure */
#define LIGHT_AFTER 1024      /* fenced pushes before a worker turns light */
#define NEVER_LIGHT UINT_MAX
#define DEQUE_LOG_CAPACITY 8  /* initial deque size: 256 items */

/* ------------------------------------------------------------------------ */
/* Futex                                                                     */

/* Sleep while *word == expected, until deadline (CLOCK_MONOTONIC ns; 0:
 * none). Returns on a wake whose bitset shares a bit with `bits`, when
 * *word != expected, on a signal or at the deadline; every caller
 * re-checks its condition. */
static void futex_wait(_Atomic uint32_t *word, uint32_t expected, uint32_t bits,
                       uint64_t deadline)
{
    struct timespec at, *atp = NULL;
    if (deadline) {
        at.tv_sec = (time_t)(deadline / 1000000000u);
        at.tv_nsec = (long)(deadline % 1000000000u);
        atp = &at;
    }
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET_PRIVATE, expected, atp,
            NULL, bits);
}

/* Wake up to count sleepers on word whose bits share one with `bits`. */
static void futex_wake(_Atomic uint32_t *word, int count, uint32_t bits)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_BITSET_PRIVATE, count, NULL,
            NULL, bits);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Work items                                                                */

/* States of a work item, in its state word, and flags beside them (a
 * change of state keeps the flags). WAITERS is or-ed in by a thread that
 * sleeps on the word, HELPERS by a worker of the pool that sleeps on the
 * pool's epoch waiting for the item (helper_sleep), and WATCHED by a thread
 * that sleeps on the watch epoch waiting for any one of several jobs
 * (cp_future_wait_any), so that whoever finishes the item knows to wake
 * them (wake_sleepers).
 *
 * A job (a future) has two holders, the user's handle and the pool, and
 * the word says which have let go: FREED, set by cp_future_free (or at
 * submit, when no handle was asked for), and RELEASED, set by the pool when
 * it will not touch the job again (but for the futex wake on the word,
 * which on reused memory is only a spurious wake; see work_finish).
 * Whoever sets the second frees the job.
 * The pool sets RELEASED in the same read-modify-write that makes the state
 * final, so a job costs no reference count of its own. */
enum {
    ST_PENDING = 0,
    ST_RUNNING = 1,
    ST_DONE = 2,       /* ran, or found its context busy: outcome tells */
    ST_CANCELLED = 3,
    ST_CANCELLING = 4, /* claimed by cp_future_cancel, not final yet; it
                          may still go back to PENDING (see cp_future_cancel) */
    ST_DROPPING = 5,   /* claimed by the pool's cancel (job_cancel_take),
                          final a few instructions later; the payload
                          (user code: free_value) is dropped after that */
    ST_MASK = 7,
    ST_WAITERS = 8,
    ST_FREED = 16,
    ST_RELEASED = 32,
    ST_HELPERS = 64,
    ST_WATCHED = 128,
    ST_SLEEPERS = ST_WAITERS | ST_HELPERS | ST_WATCHED
};

/* KIND_PRIVATE: a frame task kept by its spawner, in no queue (see cp_spawn).
 * KIND_INLINE: a frame task its spawner runs now, in cp_sync: neither
 * private nor queued. (A sync of it from inside itself is refused before
 * its kind is looked at: cp__context_may_sync.) */
enum work_kind { KIND_JOB, KIND_TASK, KIND_PRIVATE, KIND_INLINE };

struct work {
    _Atomic(struct work *) next; /* injection queue link */
    _Atomic uint32_t state;
    uint8_t kind;
    bool counted;                /* counted in the pool's pending */
    int16_t outcome;             /* 0 or CP_E*, written before state is final */
};

struct job_arena;

/* A heap job; also the user's future. */
struct cp_future {
    struct work w;               /* w.state: see ST_FREED and ST_RELEASED */
    struct job_arena *arena;     /* where it goes back when both let go;
                                    NULL: it was allocated on its own */
    struct cp_future *free_next; /* link in its home's own list */
    cp_job_fn fn;
    void *arg;
    void *result;
    cp__hamt map;                /* captured context (submit) */
    cp_context *in;              /* or the context itself (submit_in), one ref */
    cp_pool *pool;
    _Atomic uintptr_t runner;    /* the thread running it, to detect self-waits */
    atomic_bool taken;           /* set by a waiter taking it to run it (see
                                    job_take_own) */
    _Atomic uint8_t late;        /* LATE_* bits: raised by waiters that came
                                    after the take (mark_sleeper) */
    bool fenced;                 /* the pool's fenced, and the generation it */
    unsigned fork_generation;    /* was made in: read where the pool may be
                                    gone (a finished job outlives it) */
};

/* f->late: LATE_RAISED, a waiter came after the take and fenced every
 * thread; LATE_SURE, and then found f not final, so the taker's look at
 * late is sure to see it: later sleepers need no fence (mark_sleeper). */
enum { LATE_RAISED = 1, LATE_SURE = 2 };

/* A frame task, laid over cp_task (64 bytes). Its context is a borrowed
 * capture of the spawner's (context.h): no atomic operation when spawned. The
 * borrow stack of the spawning thread is also how cp_sync checks the order. */
struct task {
    struct work w;
    union {
        cp_job_fn fn;            /* until it has run */
        void *result;            /* after */
    } u;
    void *arg;
    cp__borrow borrow;
};

/* Make t's header that of a queued task. counted: counted in the pool's
 * pending (spawned from outside the pool). The borrow's spare keeps the
 * pool's fork generation, for sync_queued: the pool may be gone by then
 * (a task from outside outlives it). */
static void task_init(struct task *t, bool counted, unsigned fork_generation)
{
    atomic_init(&t->w.next, NULL); /* not yet shared */
    atomic_init(&t->w.state, ST_PENDING); /* not yet shared */
    t->w.kind = KIND_TASK;
    t->w.counted = counted;
    t->w.outcome = 0;
    t->borrow.spare = fork_generation;
}

_Static_assert(sizeof(struct task) <= sizeof(cp_task), "cp_task is too small");
_Static_assert(alignof(struct task) <= alignof(cp_task), "cp_task is misaligned");

/* ------------------------------------------------------------------------ */
/* The pool                                                                  */

struct worker {
    cp__deque deque;
    cp_pool *pool;
    pthread_t thread;
    unsigned index;
    uint64_t rng;
    unsigned tick;               /* items run, for injection-queue fairness */
    /* This worker's private frame tasks (see cp_spawn): the KIND_PRIVATE
     * tasks on its borrow stack from priv_oldest (NULL: none) up. Those
     * from priv_oldest to priv_linked are linked oldest to newest through
     * their w.next, which a private task does not use otherwise; newer ones
     * are linked only when an offer needs them (priv_link), so that a spawn
     * writes no link. Owner only. */
    struct task *priv_oldest, *priv_linked;
    /* Jobs going back to one arena (see job_return), given back together:
     * one atomic operation for them all instead of one per job. */
    struct job_arena *ret_arena;
    uint64_t ret_slots;
    int64_t credit;              /* counted in the pool's pending and not
                                    used yet: never negative (see
                                    pending_flush) */
    /* The pool's state is CANCELLING: a copy in our own line, which the
     * worker reads for every item it runs or adds, instead of the pool's
     * (cp_pool_shutdown). Relaxed, as those reads of the state were: a
     * hint, an item that races with the start of a cancel runs. */
    atomic_bool cancel;
    unsigned fenced_pushes;      /* by its current job; owner only */
    /* Statistics: written by this worker only (relaxed load + store), read
     * by cp_pool_get_stats from any thread (relaxed). */
    _Atomic uint64_t completed, stolen, parks, submitted, cancelled;
    char name[16];               /* "<name>-<index>", set by the worker */
    /* HEAVY, LIGHT or CLEARING(i) (see "Parking", notify_own): LIGHT set
     * by this worker, HEAVY by it at the end of a job and when it
     * announces itself; CLEARING(i) then HEAVY by worker i, an announcer
     * that fences every thread for it. Last, on a line of its own:
     * announcers read every worker's, and the worker writes its other
     * fields for every item. */
    alignas(CP__CACHE_LINE) _Atomic uint32_t light;
};

enum { RUNNING = 0, DRAINING = 1, CANCELLING = 2 };

/* A worker's `light` (see "Parking"). CLEARING(i): announcer i is
 * fencing every thread for the worker's light pushes; until its fence
 * ends, other announcers must count the worker light. */
enum { HEAVY = 0, LIGHT = 1 };
#define CLEARING(i) (2 + (uint32_t)(i))

struct cp_pool {
    /* Injection queue: producers exchange head, the consumer (whoever holds
     * inject_lock) walks from tail. */
    alignas(CP__CACHE_LINE) _Atomic(struct work *) inject_head;
    /* Items submitted from outside the pool, ever, counted before the
     * shutdown check (see "Shutdown"); each one that is not refused is
     * then pushed on the injection queue. */
    _Atomic uint64_t admitted;
    alignas(CP__CACHE_LINE) struct work *inject_tail;
    atomic_bool inject_lock;
    /* Items popped, ever; written by the consumer only. Apart from the
     * producers' counts, so that consumers do not take their line. */
    _Atomic uint64_t inject_popped;
    /* Rare, so beside popped, which idle workers read anyway: admits
     * refused at shutdown (never pushed), and pushes that no admit counted:
     * a worker's own item when its deque could not grow, and an item a
     * consumer counted popped but could not move to its deque, pushed
     * again (take_injected). */
    _Atomic uint64_t refused;
    _Atomic uint64_t reinjected;
    /* Items a cancel shutdown cancelled in the queues itself (cancel_queued),
     * for the statistics; relaxed. */
    _Atomic uint64_t swept;
    /* Holders of the pool's memory: its user until cp_pool_free, and every
     * cancel from its win until its wake (cp_future_cancel). The last one
     * frees it (pool_unref). Rare too, and out of the hot lines. */
    _Atomic unsigned refs;
    /* cp_pool_wait_idle: the threads in it, and the futex word they sleep
     * on, bumped when a change of the pending count to zero wakes them
     * (total_changed). Rare as well. */
    _Atomic uint32_t idle_waiters;
    _Atomic uint32_t idle_epoch;
    struct work inject_stub;

    /* Event count: epoch (the futex word) and the number of waiters; and
     * the number of workers searching for work before they park. */
    alignas(CP__CACHE_LINE) _Atomic uint32_t epoch;
    _Atomic uint32_t waiters;
    _Atomic uint32_t searching;
    _Atomic uint32_t waking;     /* a wake-one is on its way to a sleeper */
    _Atomic uint32_t helping;    /* waits searching for work (help_search) */

    /* Items workers added less items finished (it wraps below zero: the
     * outside items they finish are counted in admitted); written by
     * workers in batches. */
    alignas(CP__CACHE_LINE) _Atomic uint64_t pending;
    /* Read by every outside submit, by idle workers and by workers' flushes
     * of their counts, and with it the fields below, which never change: a
     * line of its own. (Workers keep a copy of CANCELLING in their own
     * line: struct worker's cancel.) */
    alignas(CP__CACHE_LINE) _Atomic int state; /* RUNNING, DRAINING, CANCELLING */

    unsigned nworkers;
    unsigned fork_generation;
    /* Whether the pool uses asymmetric fences (fence.h): cp__fence_ready()
     * when the pool was made. The two sides of each handshake must agree
     * on it: the taker of a future and its late waiters (job_take_own,
     * sleep_on). So for light workers (notify_own, announce_fence): the
     * fenced pushes before a worker turns light, LIGHT_AFTER, or
     * NEVER_LIGHT without asymmetric fences (or by the test switch). */
    bool fenced;
    unsigned light_after;
    struct worker *workers;

    /* cp_pool_options: pin, and the hooks with the context they run in,
     * captured by cp_pool_new and dropped once the workers are joined. */
    bool pin;
    void (*on_start)(unsigned worker, void *arg);
    void (*on_stop)(unsigned worker, void *arg);
    void *hook_arg;
    cp__hamt hook_map;
    /* Posted by each worker once it is ready to work; cp_pool_new waits for
     * them all. */
    sem_t ready;
};

/* The calling thread's worker, if it is one (of any pool). */
static __thread struct worker *this_worker
    __attribute__((tls_model("initial-exec")));
/* fork(): a child inherits pools whose workers do not exist in it. Every
 * pool remembers the generation it was made in; the child handler bumps the
 * generation, and every call on an older pool returns CP_ESHUTDOWN. */
static _Atomic unsigned fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* cp__pool_workers: worker threads created and not yet joined. */
static _Atomic unsigned workers_unjoined;

static void atfork_child(void)
{
    /* relaxed: the child has a single thread here. */
    atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
    atomic_store_explicit(&workers_unjoined, 0, memory_order_relaxed);
}

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Whether we are a child of fork() and *generation (a pool's, or a job's
 * copy of it) is from before the fork. A process that never forked reads
 * only the global: no line of a pool or job for every wait. */
static bool forked_away(const unsigned *generation)
{
    /* relaxed: set in the single-threaded child before any call can read it. */
    unsigned now = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    return now != 0 && *generation != now;
}

/* The calling thread's worker if it is one of pool's, else NULL. */
static struct worker *worker_of(const cp_pool *pool)
{
    struct worker *self = this_worker;
    return self && self->pool == pool ? self : NULL;
}

static uintptr_t thread_id(void)
{
    return (uintptr_t)&this_worker;
}

/* Single-writer counter bump. Load relaxed: only this worker writes it.
 * Store release: cp_pool_get_stats reads the counts of ended work with
 * acquire, so that what came before a count (the job's run, the counts of
 * the work it submitted) is seen with it. On x86 a plain store either way. */
static void stat_bump(_Atomic uint64_t *counter)
{
    atomic_store_explicit(counter,
                          atomic_load_explicit(counter, memory_order_relaxed) + 1,
                          memory_order_release);
}

/* ------------------------------------------------------------------------ */
/* Injection queue (Vyukov's intrusive MPSC queue; consumers serialised)     */

/* Link w in (the stub as well as real items). */
static void inject_link(cp_pool *pool, struct work *w)
{
    /* relaxed: published by the release in the store to prev->next. */
    atomic_store_explicit(&w->next, NULL, memory_order_relaxed);
    /* seq_cst: orders this publication before the waiter-count read in
     * notify (the event-count protocol). acq_rel would do for the queue. */
    struct work *prev = atomic_exchange_explicit(&pool->inject_head, w,
                                                 memory_order_seq_cst);
    /* release: pairs with the consumer's acquire load of next, making w's
     * contents visible to it. */
    atomic_store_explicit(&prev->next, w, memory_order_release);
}

/* Push w on the injection queue where no admit counted it (see
 * `reinjected`); an outside submit's item is counted in admit instead. */
static void inject_reinject(cp_pool *pool, struct work *w)
{
    /* seq_cst: counted before it is linked, so the counts never say empty
     * while an item is queued or being linked; the park protocol reads them
     * (inject_nonempty). The queue's own links cannot tell that reliably:
     * while a consumer puts the stub back, a push may be half done. */
    atomic_fetch_add_explicit(&pool->reinjected, 1, memory_order_seq_cst);
    inject_link(pool, w);
}

/* Consumer only (inject_lock held): the oldest item, or NULL when the queue
 * is empty or a producer is half-way through a push (it notifies after). */
static struct work *inject_pop(cp_pool *pool)
{
    struct work *tail = pool->inject_tail;
    /* acquire: pairs with the release store of next in inject_link. */
    struct work *next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (tail == &pool->inject_stub) {
        if (!next)
            return NULL;
        pool->inject_tail = tail = next;
        next = atomic_load_explicit(&tail->next, memory_order_acquire);
    }
    if (next) {
        pool->inject_tail = next;
        return tail;
    }
    /* acquire: pairs with the exchange in inject_link. */
    if (tail != atomic_load_explicit(&pool->inject_head, memory_order_acquire))
        return NULL; /* a push is in progress */
    inject_link(pool, &pool->inject_stub);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (!next)
        return NULL;
    pool->inject_tail = next;
    return tail;
}

static bool inject_try_lock(cp_pool *pool)
{
    /* acquire: pairs with the release in inject_unlock; the previous
     * consumer's updates of inject_tail are visible to us. The relaxed peek
     * first keeps idle workers from bouncing the line. */
    return !atomic_load_explicit(&pool->inject_lock, memory_order_relaxed) &&
           !atomic_exchange_explicit(&pool->inject_lock, true, memory_order_acquire);
}

static void inject_unlock(cp_pool *pool)
{
    atomic_store_explicit(&pool->inject_lock, false, memory_order_release);
}

/* Consumer only (inject_lock held): count n items as popped. relaxed load:
 * only consumers write it, and the lock orders them; seq_cst store: read by
 * inject_nonempty. */
static void inject_popped_add(cp_pool *pool, uint64_t n)
{
    uint64_t popped = atomic_load_explicit(&pool->inject_popped, memory_order_relaxed);
    atomic_store_explicit(&pool->inject_popped, popped + n, memory_order_seq_cst);
}

/* Whether the injection queue holds work, or work being linked (or an
 * outside submit is on its way to it). Items pushed: admitted less
 * refused plus reinjected. Every count only grows, and an item is counted
 * before it can be popped; reading popped and refused first, then the
 * others, equal totals mean that nothing was queued at the first read and
 * nothing pushed by the last. seq_cst: the park protocol's "read theirs"
 * after announcing a waiter; pairs with the increments in admit and
 * inject_reinject. */
static bool inject_nonempty(cp_pool *pool)
{
    uint64_t popped = atomic_load_explicit(&pool->inject_popped, memory_order_seq_cst);
    uint64_t refused = atomic_load_explicit(&pool->refused, memory_order_seq_cst);
    uint64_t reinjected = atomic_load_explicit(&pool->reinjected, memory_order_seq_cst);
    uint64_t admitted = atomic_load_explicit(&pool->admitted, memory_order_seq_cst);
    return admitted - refused + reinjected != popped;
}

/* ------------------------------------------------------------------------ */
/* Parking                                                                   */

/* The futex bitsets of the epoch's sleepers: a parked worker sleeps with
 * PARK_BITS, a helper (helper_sleep) with one of the other 31 bits, chosen
 * by the item it waits for, so that the end of the item wakes its helpers
 * and not every sleeper. A notify wakes any sleeper. */
#define PARK_BITS 1u
static uint32_t helper_bits(const struct work *w)
{
    return 2u << ((uintptr_t)w / alignof(struct work) % 31);
}

/* Wake up to count of the epoch's sleepers whose bitset meets bits. */
static void wake(cp_pool *pool, int count, uint32_t bits)
{
    if (atomic_load_explicit(&pool->waiters, memory_order_seq_cst) == 0)
        return;
    /* seq_cst: a new epoch, so a waiter that read the old one does not
     * sleep (its futex wait compares against the old value). */
    atomic_fetch_add_explicit(&pool->epoch, 1, memory_order_seq_cst);
    futex_wake(&pool->epoch, count, bits);
}

/* notify_published's wake, out of line: a busy pool never gets here. */
static __attribute__((noinline)) void notify_waiters(cp_pool *pool)
{
    /* seq_cst: while a wake is on its way, the worker it wakes will search
     * and find this work too: no second wake (and system call) for it. */
    if (atomic_exchange_explicit(&pool->waking, 1, memory_order_seq_cst) == 0)
        wake(pool, 1, FUTEX_BITSET_MATCH_ANY);
}

/* New work was published: make sure some worker will look. No wake when a
 * worker is searching: it will find the work, and wakes the next worker when
 * it does (see search), as Go's and Tokio's schedulers do; so a stream
 * of submits costs no system calls while the pool is busy. Inline: a busy
 * pool has nobody to wake, which the loads alone tell. */
static inline void notify_published(cp_pool *pool)
{
    /* seq_cst loads: the event-count protocol's "read theirs". */
    if (atomic_load_explicit(&pool->searching, memory_order_seq_cst) == 0 &&
        atomic_load_explicit(&pool->waiters, memory_order_seq_cst) != 0)
        notify_waiters(pool);
}

static void notify(cp_pool *pool)
{
    /* seq_cst fence: the work published just before (a deque push, whose
     * store is only a release) is ordered before our reads of the searching
     * and waiter counts; pairs with announce_fence, which a searcher passes
     * after it stops searching and before it looks for work one last time.
     * An injection needs no fence: its exchange is seq_cst itself. */
    atomic_thread_fence(memory_order_seq_cst);
    notify_published(pool);
}

/* Set when the kernel refused an announcer's fence on every thread (see
 * announce_fence): from then on no worker turns light. */
static atomic_bool light_refused;

/* notify for a push on our own deque (see "Parking"). Light, the push is
 * ordered before our reads of the counts by a compiler barrier alone: an
 * announcer that sees us LIGHT fences every thread, which lands on our CPU
 * after our push (the announcer's look then sees it) or before it, and so
 * before our load of `light` after the push, which then reads the
 * announcer's CLEARING, stored before its fence, or a later value: not our
 * LIGHT, unless we stored it again, fenced. Heavy, notify's seq_cst fence;
 * the fenced push after LIGHT_AFTER of them (counted from the job's start
 * or from our last turn light) turns us light, stored before that fence,
 * so that an announcer whose fence comes later sees it, and one whose
 * fence comes earlier is seen by our reads of the counts, here and (read
 * again) at every light push after. */
static inline void notify_own(cp_pool *pool, struct worker *self)
{
    /* Compiler barrier: our load of light stays after the push. relaxed:
     * see above; the barrier's argument needs no more. */
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&self->light, memory_order_relaxed) == LIGHT) {
        notify_published(pool);
        return;
    }
    /* relaxed: light_refused is a one-way switch, read as a hint. */
    if (++self->fenced_pushes > pool->light_after &&
        !atomic_load_explicit(&light_refused, memory_order_relaxed)) {
        self->fenced_pushes = 0;
        /* relaxed: ordered by notify's fence. */
        atomic_store_explicit(&self->light, LIGHT, memory_order_relaxed);
    }
    notify(pool);
}

/* A job of ours taken from a queue ended, or we announce ourselves: heavy
 * again, so that no announcer fences every thread for pushes we no longer
 * make, and the count starts again. release: an announcer that reads
 * HEAVY (acquire) sees every push we made before. */
static void go_heavy(struct worker *self)
{
    self->fenced_pushes = 0;
    if (atomic_load_explicit(&self->light, memory_order_relaxed) != HEAVY)
        atomic_store_explicit(&self->light, HEAVY, memory_order_release);
}

/* The announcer's half of the handshake: self stopped searching, or
 * counted itself a waiter, before it looks for work one last time. The
 * seq_cst fence pairs with notify's. Where other workers are light, also a
 * fence on every thread (fence.h), which makes their light pushes before
 * it visible to our look; they turn heavy when it ends (CLEARING(self),
 * then HEAVY), so that later announcers pay nothing until one of them
 * makes LIGHT_AFTER more fenced pushes. A worker another announcer is
 * clearing is covered when that announcer's fence ends: we wait for it,
 * unless we make a fence of our own, which covers it too. So one call
 * covers a light worker however many announcers look at once. We turn
 * heavy ourselves: our own pushes are ordered by our own fence.
 * The HEAVY an announcer stores back after its fence carries no C11
 * guarantee for the light pushes; the hardware does (fence.h): they were
 * visible to all before that store. Compare-and-swaps: a worker's own
 * LIGHT, or HEAVY, stored meanwhile stays.
 * Returns false when the kernel refused the fence (a seccomp filter
 * installed after the library was loaded): our look may then miss a light
 * push made before, so the caller must look again soon rather than sleep
 * for good. No worker of any pool turns light from then on. */
static bool announce_fence(cp_pool *pool, struct worker *self)
{
    /* seq_cst fence: "announce, then look". */
    atomic_thread_fence(memory_order_seq_cst);
    if (pool->light_after == NEVER_LIGHT)
        return true;
    go_heavy(self);
    const uint32_t mine = CLEARING(self->index);
    bool ours = false, theirs = false;
    for (unsigned i = 0; i < pool->nworkers; i++) {
        _Atomic uint32_t *light = &pool->workers[i].light;
        /* acquire: pairs with go_heavy's release (and the CAS back). */
        uint32_t v = atomic_load_explicit(light, memory_order_acquire);
        /* acquire, both ways: on failure it may read go_heavy's HEAVY;
         * on success our fence on every thread orders what matters. */
        if (v == LIGHT && atomic_compare_exchange_strong_explicit(
                              light, &v, mine, memory_order_acquire,
                              memory_order_acquire))
            ours = true;
        else if (i != self->index && v != HEAVY)
            theirs = true; /* CLEARING(another) */
    }
    bool sure = true;
    if (ours) {
        if (!cp__fence_try_all_threads()) {
            /* relaxed: a one-way switch (see notify_own). */
            atomic_store_explicit(&light_refused, true, memory_order_relaxed);
            sure = false;
        }
        for (unsigned i = 0; i < pool->nworkers; i++) {
            uint32_t v = mine;
            /* release: see above; relaxed on failure: the worker's own
             * store stays. */
            atomic_compare_exchange_strong_explicit(&pool->workers[i].light, &v, HEAVY,
                                                    memory_order_release,
                                                    memory_order_relaxed);
        }
    } else if (theirs) {
        /* Wait out the other announcers' fences, each for the clear under
         * way when we look (a system call, unless its thread is preempted).
         * We hold no CLEARING of our own, so no announcer waits for us. */
        for (unsigned i = 0; i < pool->nworkers; i++) {
            /* acquire: as the scan's load. */
            uint32_t v = atomic_load_explicit(&pool->workers[i].light, memory_order_acquire);
            if (v >= CLEARING(0))
                while (atomic_load_explicit(&pool->workers[i].light, memory_order_acquire) == v)
                    sched_yield();
        }
        /* relaxed: an announcer whose fence was refused set it before its
         * release of the clear, which we acquired; that fence covers
         * nothing. */
        sure = !atomic_load_explicit(&light_refused, memory_order_relaxed);
    }
    return sure;
}

/* Wake every worker: shutdown, and the end of the last pending item. */
static void notify_all(cp_pool *pool)
{
    atomic_thread_fence(memory_order_seq_cst);
    wake(pool, INT_MAX, FUTEX_BITSET_MATCH_ANY);
}

/* The items accepted and not finished (see "Shutdown"), given the workers'
 * part, read or just changed by the caller. admitted is read last: every
 * count only grows but the workers' part, a refusal follows its admit, and
 * an admitted item finishes (and leaves the workers' part) only after its
 * admit, so the total is never below the truth at the moment the workers'
 * part was read. A zero therefore means that nothing counted existed then,
 * so no worker could add more, and only outside admits, which read the
 * state, can. seq_cst: see "Shutdown". */
static uint64_t pending_total(cp_pool *pool, uint64_t workers)
{
    uint64_t refused = atomic_load_explicit(&pool->refused, memory_order_seq_cst);
    return atomic_load_explicit(&pool->admitted, memory_order_seq_cst) - refused + workers;
}

/* Whether nothing counted is pending: the workers' part read first, then
 * the rest (pending_total). seq_cst: see "Shutdown". */
static bool nothing_pending(cp_pool *pool)
{
    return pending_total(pool, atomic_load_explicit(&pool->pending, memory_order_seq_cst)) == 0;
}

static bool pool_finished(cp_pool *pool)
{
    /* seq_cst: pairs with the seq_cst increment of admitted in admit and
     * the store of state in shutdown (see "Shutdown" above). */
    return atomic_load_explicit(&pool->state, memory_order_seq_cst) != RUNNING &&
           nothing_pending(pool);
}

static bool work_visible(cp_pool *pool)
{
    if (inject_nonempty(pool))
        return true;
    for (unsigned i = 0; i < pool->nworkers; i++)
        if (cp__deque_size(&pool->workers[i].deque) > 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------------ */
/* Finding work                                                              */

static uint64_t next_random(struct worker *self)
{
    /* xorshift64: enough to spread the choice of victims. */
    uint64_t x = self->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return self->rng = x;
}

/* Move a batch from the injection queue to our deque; return one item.
 * The counts first: a worker whose deque ran dry looks here each time, and
 * the try-lock writes the lock's line even when the queue is empty, which
 * two workers of fork-join code would bounce between them at every look;
 * nobody writes the counts while nothing is submitted from outside. */
static struct work *take_injected(struct worker *self)
{
    cp_pool *pool = self->pool;
    if (!inject_nonempty(pool) || !inject_try_lock(pool))
        return NULL;
    struct work *first = inject_pop(pool);
    int moved = 0;
    for (struct work *w; first && moved < INJECT_BATCH - 1 && (w = inject_pop(pool)); moved++)
        if (cp__deque_push(&self->deque, w) != 0) {
            /* No memory to grow the deque: w goes back where it came from,
             * counted popped here and pushed again (once per batch, so the
             * submitters keep their line). */
            inject_popped_add(pool, (uint64_t)moved + 2);
            inject_unlock(pool);
            inject_reinject(pool, w);
            notify_published(pool);
            if (moved > 0)
                notify(pool);
            return first;
        }
    if (first)
        inject_popped_add(pool, (uint64_t)moved + 1); /* once per batch */
    inject_unlock(pool);
    if (moved > 0)
        notify(pool);
    return first;
}

/* Not inlined: find_work, which a worker runs for every item, then saves
 * no registers for this loop before it pops. */
static __attribute__((noinline)) struct work *steal_some(struct worker *self)
{
    cp_pool *pool = self->pool;
    unsigned n = pool->nworkers;
    unsigned start = (unsigned)(next_random(self) % n);
    for (unsigned k = 0; k < n; k++) {
        struct worker *victim = &pool->workers[(start + k) % n];
        if (victim == self)
            continue;
        void *item;
        cp__steal r;
        while ((r = cp__deque_steal(&victim->deque, &item)) == CP__STEAL_ABORT)
            ;
        if (r == CP__STEAL_OK) {
            stat_bump(&self->stolen);
            /* More where that came from: wake another worker to take it,
             * as a batch from the injection queue does. Without this, a
             * worker that wakes and steals, rather than finding the work
             * while searching, would leave the rest to sleeping workers. */
            if (cp__deque_size(&victim->deque) > 0)
                notify(pool);
            return item;
        }
    }
    return NULL;
}

/* Whether self is due to look at the injection queue first (see
 * INJECT_EVERY): counts the item about to be looked for. */
static inline bool inject_due(struct worker *self)
{
    return ++self->tick % INJECT_EVERY == 0;
}

/* The next item for self to run, or NULL, when no injected one is due:
 * its own deque's, the injection queue's, a victim's. */
static inline __attribute__((always_inline)) struct work *
find_more_work(struct worker *self)
{
    struct work *w;
    if ((w = cp__deque_pop(&self->deque)))
        return w;
    if ((w = take_injected(self)))
        return w;
    return steal_some(self);
}

/* The next item for self to run, or NULL. Always inlined, and the deque
 * pop with it: a worker runs it for every item, a helping wait too. */
static inline __attribute__((always_inline)) struct work *
find_work(struct worker *self)
{
    struct work *w;
    if (inject_due(self) && (w = take_injected(self)))
        return w;
    return find_more_work(self);
}

/* ------------------------------------------------------------------------ */
/* Running work                                                              */

static void job_release(struct cp_future *f);
static void returns_flush(struct worker *self);

/* Let go of f as holder `mine` (ST_FREED or ST_RELEASED); the second to
 * let go frees it. A holder that sees the other gone already needs no
 * read-modify-write. acquire on the load, acq_rel on the or: whoever frees
 * f sees every use the other holder made of it. */
static void future_let_go(struct cp_future *f, uint32_t mine)
{
    uint32_t other = mine ^ (ST_FREED | ST_RELEASED);
    if ((atomic_load_explicit(&f->w.state, memory_order_acquire) & other) ||
        (atomic_fetch_or_explicit(&f->w.state, mine, memory_order_acq_rel) & other))
        job_release(f);
}

/* The watch epoch: an event count, one for the process, on which a thread
 * waiting for any one of several jobs sleeps (sleep_on), having marked
 * each of them ST_WATCHED (mark_sleeper). One word for every pool, since
 * it must outlive them all: a job's end reaches it after the job is final,
 * when its pool may be freed. The futex bitset, helper_bits of the job,
 * spares the watchers of other jobs most wakes; one woken for nothing
 * looks and sleeps again. */
static _Atomic uint32_t watch_epoch;

/* w, marked ST_WATCHED, was made final: wake its watchers. The watcher
 * read the epoch before its mark, and the finisher's read-modify-write
 * that saw the mark acquired it (as for a helper: see wake_sleepers), so
 * this increment comes after the watcher's read, and its futex wait finds
 * the epoch changed or is woken. seq_cst, as wake's. Out of line: rare. */
static __attribute__((noinline)) void watchers_wake(const struct work *w)
{
    atomic_fetch_add_explicit(&watch_epoch, 1, memory_order_seq_cst);
    futex_wake(&watch_epoch, INT_MAX, helper_bits(w));
}

/* w was made final, its state word `old` just before: wake whoever sleeps
 * waiting for it. Whoever waits may free w as soon as the state is final;
 * the futex wake on its word may then find the word reused, which only
 * means a spurious wake for a futex user there, as futex users must
 * expect; w is not read. Helpers (ST_HELPERS) sleep on pool's epoch, which
 * the caller keeps alive: it is one of pool's workers, or a cancel holding
 * a reference (cp_future_cancel). A helper counted itself a waiter and read
 * the epoch before its mark (park), and the caller's
 * read-modify-write that saw the mark acquired it (the mark's
 * compare-and-swap is seq_cst): wake reads the count with the helper in it,
 * and its new epoch comes after the helper's read, so the helper's futex
 * wait either finds the epoch changed or is woken. */
static void wake_sleepers(cp_pool *pool, struct work *w, uint32_t old)
{
    if (old & ST_WAITERS)
        futex_wake(&w->state, INT_MAX, FUTEX_BITSET_MATCH_ANY);
    if (old & ST_HELPERS)
        wake(pool, INT_MAX, helper_bits(w));
    if (old & ST_WATCHED)
        watchers_wake(w);
}

/* Move w's state from `from` to final (DONE or CANCELLED), keeping the
 * flags and adding `flags`, and wake whoever sleeps waiting for it (pool:
 * see wake_sleepers). Returns the word as it was. */
static uint32_t work_finish(cp_pool *pool, struct work *w, uint32_t from,
                            uint32_t final, uint32_t flags)
{
    /* release: the outcome and result written before are visible to whoever
     * acquires the final state; acquire: for the caller that frees w on
     * seeing ST_FREED, and for wake_sleepers. The addition (modulo 2^32
     * when final < from) changes only the state bits, since the state is
     * `from` and the flags added are not yet set. */
    uint32_t old = atomic_fetch_add_explicit(&w->state, final - from + flags,
                                             memory_order_acq_rel);
    wake_sleepers(pool, w, old);
    return old;
}

/* Run fn(arg) in the context captured as map, on this thread: taking map's
 * reference (owned) or borrowing it. When map is the current context's map
 * (nothing was set between the capture and now, as for a job or task its
 * spawner runs itself, or any two captures of an empty context), the run
 * shares the current context until it sets something (cp__lazy), which
 * saves a frame's begin and end and keeps the get cache; otherwise it runs
 * in a frame on map. Either way it sees map's values, and its changes stay
 * its own. Jobs ran in a frame always before: fib(30) with a future per
 * call took 29.2 ms on one worker and 15.2 on two, now 26.0 and 13.3.
 * Always inlined: it is most of what cp_sync does for a private task. */
static inline __attribute__((always_inline)) void *
run_captured(cp__hamt map, bool owned, cp_job_fn fn, void *arg)
{
    void *result;
    if (cp__self.current && map.root == cp__self.current->map.root) {
        cp__lazy lazy;
        cp__context_begin_lazy(&lazy);
        result = fn(arg);
        cp__context_end_lazy(&lazy);
        /* While map is the current map still, its reference goes back to
         * the capture batch it most likely came from. It may not be: the
         * end of a frame that a set in the run made may run user code (a
         * free_value) that sets in the current context. We
         * hold map, so a root equal to its root is that root. */
        if (owned && map.root) {
            if (map.root == cp__self.current->map.root)
                cp__context_uncapture(map);
            else
                cp__hamt_decref(map);
        }
    } else {
        cp_context frame;
        cp__context_begin_frame(&frame, map, owned);
        result = fn(arg);
        cp__context_end_frame(&frame);
    }
    return result;
}

/* Wake the threads in cp_pool_wait_idle: the pending total was zero. */
static void idle_wake(cp_pool *pool)
{
    /* seq_cst: a waiter reads the epoch, then the total (cp_pool_wait_idle);
     * if its read of the total missed the change that brought it to zero
     * (made before this bump), its read of the epoch came before the bump
     * too, so its futex wait does not sleep on the new value. */
    atomic_fetch_add_explicit(&pool->idle_epoch, 1, memory_order_seq_cst);
    futex_wake(&pool->idle_epoch, INT_MAX, FUTEX_BITSET_MATCH_ANY);
}

/* After a seq_cst change of the pending count (workers: the workers' part
 * after it, when that is what changed, or as read after the change):
 * whichever change brings the total to zero wakes those who wait for zero,
 * the workers of a shut-down pool (so they can leave) and the threads in
 * cp_pool_wait_idle. A running pool nobody waits on has its total not read
 * at all. */
static void total_changed(cp_pool *pool, uint64_t workers)
{
    /* seq_cst, both: each is the second half of a store-buffering pair
     * whose first is our change of the count. Read as RUNNING, the
     * shutdown that follows wakes the workers itself (see "Shutdown");
     * read as zero, idle_waiters was raised after our change, so the
     * waiter's read of the total, which follows its raise, sees it. */
    bool stopping = atomic_load_explicit(&pool->state, memory_order_seq_cst) != RUNNING;
    bool watched = atomic_load_explicit(&pool->idle_waiters, memory_order_seq_cst) != 0;
    if ((stopping || watched) && pending_total(pool, workers) == 0) {
        if (stopping)
            notify_all(pool);
        if (watched)
            idle_wake(pool);
    }
}

/* Apply delta (items added, less items finished) to the workers' part of
 * the pending count (which wraps below zero: the outside items workers
 * finish are counted in admitted). */
static void pending_apply(cp_pool *pool, int64_t delta)
{
    /* seq_cst: see "Shutdown". Unsigned wrap-around adds a negative delta. */
    uint64_t after = atomic_fetch_add_explicit(&pool->pending, (uint64_t)delta,
                                               memory_order_seq_cst) +
                     (uint64_t)delta;
    total_changed(pool, after);
}

/* Workers count in pending in batches, so a stream of jobs does not bounce
 * its cache line between the workers: a worker's credit is what it has
 * counted there and not used yet, the items it finished, and additions
 * counted in advance. It is never negative: a worker that adds an item with
 * no credit left first counts a batch of FLUSH_EVERY additions in advance.
 * So the total reads at least the truth, never less: it cannot read zero
 * while an item is queued or running, and no worker leaves a draining pool
 * early. A worker gives its credit back (applies it) once it reaches twice
 * the batch, before it looks whether the pool is finished or parks, and
 * before a wait of its own sleeps (wait_work). */
#define FLUSH_EVERY 64
static void pending_flush(struct worker *self)
{
    int64_t credit = self->credit;
    self->credit = 0;
    if (credit != 0)
        pending_apply(self->pool, -credit);
}

/* pending_done's flush, out of line: once every FLUSH_EVERY items. */
static __attribute__((noinline)) void pending_flush_slow(struct worker *self)
{
    pending_flush(self);
}

/* Inline: every item a worker finishes runs it (a call and return were a
 * third of its cost on the fork-join path). */
static inline __attribute__((always_inline)) void pending_done(struct worker *self)
{
    if (++self->credit >= 2 * FLUSH_EVERY)
        pending_flush_slow(self);
}

/* A job's payload: the references to the context it runs in. */
struct payload {
    cp__hamt map;
    cp_context *in;
};

/* Take f's payload out of it, to drop once f is final: the drop may run
 * user code (free_value), which may then wait for anything, f included. */
static struct payload payload_take(struct cp_future *f)
{
    struct payload p = {f->map, f->in};
    f->map = CP__HAMT_EMPTY;
    f->in = NULL;
    return p;
}

static void payload_drop(struct payload p)
{
    cp__hamt_decref(p.map);
    cp_context_free(p.in);
}

static void drop_payload(struct cp_future *f)
{
    payload_drop(payload_take(f));
}

/* Whether f is ours alone: without a handle (none was asked for, or the
 * user has freed it), no other thread can cancel it, wait for it or free
 * it, so running it needs no atomic read-modify-write. acquire: pairs with
 * the release half of the or in cp_future_free, so whatever the user did
 * with the handle (a cancel) happened before. (A FREED set at submit comes
 * with the job through the queue's own release and acquire.) */
static bool job_alone(struct cp_future *f)
{
    return atomic_load_explicit(&f->w.state, memory_order_acquire) & ST_FREED;
}

/* f's state word once no cancel is deciding about it: a cancel that finds
 * f taken by its waiter backs off to PENDING (see cp_future_cancel), so
 * CANCELLING is not a cancel won until it is final. The cancel holds it
 * for a few instructions and runs no user code meanwhile: the drop of the
 * payload, which may run free_value and so a wait that helps on this very
 * thread, comes after the final state. acquire:
 * the submitter's writes (made before the release in the queue push), or
 * the cancel's, are ours. */
static uint32_t job_settled(struct cp_future *f)
{
    uint32_t s;
    while (((s = atomic_load_explicit(&f->w.state, memory_order_acquire)) & ST_MASK) ==
           ST_CANCELLING)
        sched_yield(); /* the cancel needs the CPU */
    return s;
}

/* Move f from PENDING to `to`: RUNNING, or DROPPING when the pool's cancel
 * takes it (job_cancel_take). Returns false when cp_future_cancel won
 * (CANCELLED): it drops the payload and reports the job. (DROPPING, the
 * pool's own cancel's claim, is made only by whoever dequeued f, which
 * is us.) acquire: as job_settled's. */
static bool job_claim(struct cp_future *f, bool alone, uint32_t to)
{
    uint32_t s = atomic_load_explicit(&f->w.state, memory_order_acquire);
    if (alone)
        return (s & ST_MASK) == ST_PENDING; /* nobody looks at it but us */
    for (;;) {
        if ((s & ST_MASK) == ST_CANCELLING)
            s = job_settled(f);
        if ((s & ST_MASK) != ST_PENDING)
            return false;
        if (atomic_compare_exchange_weak_explicit(&f->w.state, &s, (s & ~ST_MASK) | to,
                                                  memory_order_acquire,
                                                  memory_order_acquire))
            return true;
    }
}

/* f, claimed (state `from`: RUNNING or DROPPING), has run or been
 * cancelled (final): tell its waiters, if it can have any, and let go of
 * it. */
static void job_end(cp_pool *pool, struct cp_future *f, bool alone, uint32_t from,
                    uint32_t final)
{
    if (alone || (work_finish(pool, &f->w, from, final, ST_RELEASED) & ST_FREED))
        job_release(f);
}

/* Let go of f, which cp_future_cancel cancelled, as the pool. */
static void job_let_go(struct cp_future *f, bool alone)
{
    if (alone)
        job_release(f);
    else
        future_let_go(f, ST_RELEASED);
}

/* f was cancelled by cp_future_cancel, which cannot count it: the pool may
 * be gone by the time a cancel returns. Let go of it as the pool. */
static void job_cancelled(struct worker *self, struct cp_future *f, bool alone)
{
    stat_bump(&self->cancelled);
    job_let_go(f, alone);
    pending_done(self);
}

/* The pool is cancelling (CP_SHUTDOWN_CANCEL) and f, queued, will never
 * run: claim it for the cancel (DROPPING, made CANCELLED at once), so
 * that a cp_future_cancel racing with us finds a cancel won and says 0,
 * as it must for a job that never runs, and write its outcome. Returns
 * false when a cp_future_cancel won first: we only let go of f. *alone:
 * job_alone(f). */
static bool job_cancel_take(struct cp_future *f, bool *alone)
{
    *alone = job_alone(f);
    if (!job_claim(f, *alone, ST_DROPPING)) {
        job_let_go(f, *alone);
        return false;
    }
    f->w.outcome = CP_ECANCELED;
    return true;
}

/* A worker's discard of f, queued while the pool cancels. The caller
 * counts f cancelled and finished either way. pool: f's. */
static void job_discard(cp_pool *pool, struct cp_future *f)
{
    bool alone;
    if (!job_cancel_take(f, &alone))
        return;
    /* The payload may hold the last references to values: dropped once f
     * is final (and maybe freed), as a cancel does. */
    struct payload p = payload_take(f);
    job_end(pool, f, alone, ST_DROPPING, ST_CANCELLED);
    payload_drop(p);
}

/* Run f, which is ours to run (claimed, or taken by its waiter): its
 * outcome and result are written and its payload dropped; its final state
 * is DONE. Always inlined: run_job and job_take_own are each most of it. */
static inline __attribute__((always_inline)) void
job_run(struct worker *self, struct cp_future *f, bool alone)
{
    if (!alone)
        /* relaxed: only compared with the reader's own identity. */
        atomic_store_explicit(&f->runner, thread_id(), memory_order_relaxed);
    if (f->in) {
        int err = cp__context_enter(f->in);
        f->w.outcome = (int16_t)err;
        if (err == 0) {
            f->result = f->fn(f->arg);
            cp__context_leave(f->in);
        }
        drop_payload(f);
        /* Counted either way: a job that found its context entered ended
         * too, so that completed + cancelled reaches submitted. */
        stat_bump(&self->completed);
    } else {
        /* The run takes the map's reference; the outcome is submit's 0. */
        f->result = run_captured(f->map, true, f->fn, f->arg);
        stat_bump(&self->completed);
    }
}

static void run_job(struct worker *self, struct cp_future *f)
{
    /* relaxed: a hint; a job that races with the start of a cancel runs. */
    if (atomic_load_explicit(&self->cancel, memory_order_relaxed)) {
        job_discard(self->pool, f);
        stat_bump(&self->cancelled);
        pending_done(self);
        return;
    }
    bool alone = job_alone(f);
    if (!job_claim(f, alone, ST_RUNNING)) {
        job_cancelled(self, f, alone);
        return;
    }
    job_run(self, f, alone);
    job_end(self->pool, f, alone, ST_RUNNING, ST_DONE);
    pending_done(self);
}

/* What job_take_own did: nothing (f was not at the bottom of our deque),
 * found f cancelled (final), or ran it (DONE, by this thread). */
enum take { TAKE_NONE, TAKE_CANCELLED, TAKE_RAN };

/* A waiter's own future f is at the bottom of its deque: take it and run it
 * here, without the claim's compare-and-swap. Returns whether f is final
 * now (not TAKE_NONE): taken and run, or found cancelled. Always inlined,
 * into wait_work and into cp_future_wait, whose first try it is (see
 * future_wait): most waits for a future in fork-join code end here.
 *
 * The claim is what decides between a worker and cp_future_cancel; here a
 * store-buffering pair does instead, on f->taken and f's state word: we set
 * taken, then (after the pop's seq_cst fence) read the state; the cancel
 * moves the state to CANCELLING (seq_cst compare-and-swap), then reads taken
 * (seq_cst). By C11 7.17.3 with the fence, at least one sees the other's
 * store: if our read does not see CANCELLING, the cancel in S after the
 * fence, its read of taken sees true and it backs off to PENDING, returning
 * CP_EBUSY; if the cancel sees false, our read sees CANCELLING or later.
 * Both may see each other: we then wait for the cancel to decide
 * (job_settled). taken may also be true while f is not ours (the pop lost
 * f to a thief and had not cleared it yet, or f was already stolen when we
 * looked): a cancel then backs off from a job the thief runs, which it
 * waits for (job_claim), and CP_EBUSY is the truth; unless the thief is a
 * cancel shutdown's sweep, or a worker whose cancel flag is set, which
 * discards it: a cancel that reads taken in the few instructions between
 * our mark and its clearing, as the pool's cancel begins, says CP_EBUSY of
 * a job that never runs (we check our flag before the mark, so only a
 * take already under way when the flags are set can). The state stays PENDING
 * while f runs: cancels keep backing off (taken stays set). f cannot be
 * freed meanwhile: our caller holds the handle.
 *
 * The finish: a waiter that sleeps sets ST_WAITERS or ST_HELPERS (seq_cst)
 * and then reads taken (seq_cst), the same pair the other way round. If our
 * read after the fence saw neither bit, every waiter that sets one later
 * sees taken: it then raises f->late and runs an asymmetric fence
 * (fence.h) before it sleeps (mark_sleeper), and our finish is a plain
 * store, a compiler barrier and a look at late, the other half of that
 * handshake. If it saw a bit, or the process has no asymmetric fence, the
 * finish is a compare-and-swap that keeps the bits and waits out a
 * deciding cancel, and a wake. */
static inline __attribute__((always_inline)) enum take
job_take_own(struct worker *self, struct cp_future *f)
{
    /* Not while the pool cancels: taken, f would count as started (a cancel
     * of it says CP_EBUSY), though it is not to run; the caller's search
     * pops it and run_job discards it. relaxed: a hint, as in run_job. */
    if (atomic_load_explicit(&self->cancel, memory_order_relaxed) ||
        !cp__deque_pop_marked(&self->deque, &f->w, &f->taken))
        return TAKE_NONE;
    /* job_settled's look, but for the common word, PENDING with no flag
     * (no sleeper, no cancel; FREED and RELEASED are not set: our caller
     * holds the handle, and the pool has not let go), which one test
     * tells. acquire: as job_settled's. */
    uint32_t s = atomic_load_explicit(&f->w.state, memory_order_acquire);
    if (s != ST_PENDING) {
        if ((s & ST_MASK) == ST_CANCELLING)
            s = job_settled(f);
        if ((s & ST_MASK) != ST_PENDING) {
            /* cp_future_cancel won: CANCELLED. (The pool's cancel claims,
             * as DROPPING, only jobs it dequeued itself, and we dequeued
             * f.) */
            job_cancelled(self, f, false);
            return TAKE_CANCELLED;
        }
    }
    job_run(self, f, false);
    /* Final, and let go of as the pool; the handle, held by our caller's
     * wait, is not freed yet, so cp_future_free will free f. release: the
     * outcome and result to whoever acquires the final state. */
    if (!(s & ST_SLEEPERS) && f->fenced) {
        /* No sleeper was there when we took f: a plain store. It may
         * overwrite the bits set since by late waiters, or a cancel's
         * CANCELLING (which then fails to back off from it, see
         * cp_future_cancel). A late waiter raised late before its fence
         * (mark_sleeper): either its look at the word after the fence sees
         * our store, or our load of late after the store (after the
         * barrier its fence put on this CPU) sees it, and we wake every
         * late waiter, of either kind, those that came after it and
         * skipped the fence (LATE_SURE) too. The compiler barrier
         * keeps the load after the store; relaxed: the handshake's order
         * comes from the waiter's fence. */
        atomic_store_explicit(&f->w.state, ST_DONE | ST_RELEASED, memory_order_release);
        atomic_signal_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&f->late, memory_order_relaxed)) {
            /* seq_cst fence: our store, then wake_sleepers' read of the
             * waiter count; a helper counts itself in, then fences and
             * looks at the word (park): one of us sees the other, whether
             * or not it fenced every thread (LATE_SURE). Its epoch read
             * comes before our new epoch, since the count's seq_cst
             * increment, read by our seq_cst load, synchronizes with it.
             * A watcher read the watch epoch before its seq_cst mark, which
             * our store overwrote: so the mark, and the read, precede this
             * fence in the total order of seq_cst operations (C++20
             * [atomics.order] p4.2), and our seq_cst increment follows it:
             * the watcher's futex wait sees the new epoch or is woken. */
            atomic_thread_fence(memory_order_seq_cst);
            wake_sleepers(self->pool, &f->w, ST_SLEEPERS);
        }
    } else {
        /* acq_rel: release as above, acquire for wake_sleepers. Failure
         * relaxed: the state is looked at again before it is used. */
        do {
            if ((s & ST_MASK) == ST_CANCELLING)
                s = job_settled(f);
        } while (!atomic_compare_exchange_weak_explicit(
            &f->w.state, &s, s - ST_PENDING + ST_DONE + ST_RELEASED, memory_order_acq_rel,
            memory_order_relaxed));
        wake_sleepers(self->pool, &f->w, s);
    }
    pending_done(self);
    return TAKE_RAN;
}

/* A frame task taken by a thread other than its spawner, or by its spawner
 * from the injection queue's far side. */
static void run_task(struct worker *self, struct task *t)
{
    cp_pool *pool = self->pool;
    bool counted = t->w.counted; /* read before the spawner may free t */
    /* A worker's task is part of the running job that spawned it, which a
     * cancel lets finish; a task spawned from outside is a job of its own.
     * relaxed: a hint; a task that races with the start of a cancel runs. */
    if (counted && atomic_load_explicit(&self->cancel, memory_order_relaxed)) {
        t->w.outcome = CP_ECANCELED;
        stat_bump(&self->cancelled);
        work_finish(pool, &t->w, ST_PENDING, ST_CANCELLED, 0);
    } else {
        /* The spawner keeps the borrowed map alive until cp_sync returns. */
        void *result = run_captured(t->borrow.map, false, t->u.fn, t->arg);
        t->u.result = result;
        t->w.outcome = 0;
        stat_bump(&self->completed);
        work_finish(pool, &t->w, ST_PENDING, ST_DONE, 0);
    }
    if (counted)
        pending_done(self);
}

static void run_work(struct worker *self, struct work *w)
{
    if (w->kind == KIND_JOB)
        run_job(self, (struct cp_future *)w);
    else
        run_task(self, (struct task *)w);
}

/* Whether a state word's state is final. */
static bool state_final(uint32_t s)
{
    return (s & ST_MASK) == ST_DONE || (s & ST_MASK) == ST_CANCELLED;
}

/* Whether w's state is final; acquire: pairs with work_finish. */
static bool work_final(const struct work *w)
{
    return state_final(atomic_load_explicit(&w->state, memory_order_acquire));
}

/* What a wait waits for: any one of n items, which are `one` (n is 1) or
 * the futures of cp_future_wait_any. */
struct awaited {
    struct work *one;
    cp_future *const *futures;
    size_t n;
};

static inline struct awaited awaited_one(struct work *w)
{
    return (struct awaited){.one = w, .futures = NULL, .n = 1};
}

static inline struct work *awaited_item(const struct awaited *a, size_t i)
{
    return a->futures ? &a->futures[i]->w : a->one;
}

/* The index of the first final item of a, or a->n when none is. */
static inline size_t awaited_first_final(const struct awaited *a)
{
    size_t i = 0;
    while (i < a->n && !work_final(awaited_item(a, i)))
        i++;
    return i;
}

static inline bool awaited_final(const struct awaited *a)
{
    return awaited_first_final(a) < a->n;
}

/* The futex bits of a's items (helper_bits), for a sleep until any ends. */
static uint32_t awaited_bits(const struct awaited *a)
{
    uint32_t bits = 0;
    for (size_t i = 0; i < a->n; i++)
        bits |= helper_bits(awaited_item(a, i));
    return bits;
}

/* Mark w for a thread about to sleep until w is final, with `bit` in its
 * state word: ST_WAITERS, the thread sleeps on the word; ST_HELPERS, it is
 * a worker of w's pool and sleeps on the pool's epoch (park). w's finisher
 * then wakes it (wake_sleepers). Returns the word with the bit set, or a
 * final state: no sleep. */
static uint32_t mark_sleeper(struct work *w, uint32_t bit)
{
    /* seq_cst, the load and the compare-and-swap: the sleeper's store and
     * the first of its loads of the store-buffering pair below. Always a
     * read-modify-write, even when the bit is set already (by an earlier
     * sleep): a finish's read-modify-write, which reads the latest value,
     * then sees our bit and acquires what we did before it (see
     * wake_sleepers). */
    uint32_t s = atomic_load_explicit(&w->state, memory_order_seq_cst);
    while (!state_final(s) &&
           !atomic_compare_exchange_weak_explicit(&w->state, &s, s | bit,
                                                  memory_order_seq_cst,
                                                  memory_order_seq_cst))
        ;
    if (state_final(s))
        return s;
    /* A job its waiter's worker took back to run itself ends with a plain
     * store unless that worker saw a sleeper's bit when it took it
     * (job_take_own). With the bit set (seq_cst, in S before this load),
     * not seeing taken (seq_cst) means the taker's load after its fence saw
     * the bit, by C11 7.17.3 (the taker stored taken before that fence):
     * it will wake us. Seeing taken, we raise late and fence every thread
     * (fence.h): then either our look at the word after the fence sees the
     * taker's final store, or the taker's look at late after that store
     * sees ours, and it wakes us (with a fence of its own first, so that
     * its wake sees us counted or we see its store: see job_take_own). If
     * our look finds f not final, the taker's look is sure to see late:
     * we say so (LATE_SURE), and later sleeps skip the fence. seq_cst
     * read-modify-write: the fence's half on our side needs it before the
     * syscall's; a rare path. acquire on the load of LATE_SURE: pairs with
     * its release. */
    if (w->kind == KIND_JOB && ((struct cp_future *)w)->fenced) {
        struct cp_future *f = (struct cp_future *)w;
        if (atomic_load_explicit(&f->taken, memory_order_seq_cst) &&
            !(atomic_load_explicit(&f->late, memory_order_acquire) & LATE_SURE)) {
            atomic_fetch_or_explicit(&f->late, LATE_RAISED, memory_order_seq_cst);
            /* A kernel that refuses the fence for good (a seccomp filter
             * installed after the library was loaded) keeps us trying,
             * but only while f runs: final, it needs no sleep. */
            while (!cp__fence_try_all_threads()) {
                s = atomic_load_explicit(&w->state, memory_order_seq_cst);
                if (state_final(s))
                    return s;
                sched_yield();
            }
            s = atomic_load_explicit(&w->state, memory_order_seq_cst);
            if (state_final(s))
                return s;
            atomic_fetch_or_explicit(&f->late, LATE_SURE, memory_order_release);
        }
    }
    return s | bit;
}

/* Mark each of a's items with bit (mark_sleeper). Returns false, and
 * stops, at one that is final: then there is no sleep. */
static bool awaited_mark(const struct awaited *a, uint32_t bit)
{
    for (size_t i = 0; i < a->n; i++)
        if (state_final(mark_sleeper(awaited_item(a, i), bit)))
            return false;
    return true;
}

/* Sleep until one of a's items is final, or the deadline (0: none): the
 * sleep of a waiter that is not a worker of their pool. For one item, on
 * its state word until it changes from what we marked; for several, on
 * the watch epoch (see watchers_wake), read before the marks. Out of line,
 * as helper_sleep: a slow path of wait_work's loop. */
static __attribute__((noinline)) void sleep_on(const struct awaited *a, uint64_t deadline)
{
    /* A worker of another pool: what it gives back is not held up while
     * it sleeps. */
    if (this_worker)
        returns_flush(this_worker);
    if (a->n == 1) {
        struct work *w = awaited_item(a, 0);
        uint32_t s = mark_sleeper(w, ST_WAITERS);
        if (!state_final(s))
            futex_wait(&w->state, s, FUTEX_BITSET_MATCH_ANY, deadline);
        return;
    }
    /* Before the marks: a finisher whose read-modify-write sees a mark
     * acquires this read (see watchers_wake). seq_cst: for a finisher
     * that took the job back and ends it with a plain store, which sees
     * no mark, the read must precede its fence in the total order (see
     * job_take_own). */
    uint32_t epoch = atomic_load_explicit(&watch_epoch, memory_order_seq_cst);
    if (awaited_mark(a, ST_WATCHED))
        futex_wait(&watch_epoch, epoch, awaited_bits(a), deadline);
}

/* Sleep on the pool's event count (see "Parking"): a worker that found no
 * work (awaited NULL), or a worker waiting for awaited that found nothing
 * to help with (wait_work). Count ourselves a waiter, look once more, and
 * only then sleep, on the epoch read before we counted in; until a notify
 * or the end of an awaited item wakes us, or the deadline (0: none).
 * Counted as a waiter, a waiting worker is woken for new work as a parked
 * one is: work queued after it fell asleep may be what the busy workers
 * block on. */
static void park(struct worker *self, const struct awaited *awaited, uint64_t deadline)
{
    cp_pool *pool = self->pool;
    /* seq_cst: the epoch we may sleep on, read before we count ourselves in. */
    uint32_t epoch = atomic_load_explicit(&pool->epoch, memory_order_seq_cst);
    atomic_fetch_add_explicit(&pool->waiters, 1, memory_order_seq_cst);
    /* seq_cst: a wake in flight may have found no waiter (it then bumps
     * nothing), and notifiers that see the flag skip their wake. Clearing it
     * here, counted in and before the last look, covers them: a notifier
     * that read the flag before this store published its work before that,
     * so the look below sees the work; one that reads a flag set again after
     * it sees us counted, through the setter, whose wake bumps the epoch
     * under us. */
    atomic_store_explicit(&pool->waking, 0, memory_order_seq_cst);
    /* Marked, an awaited item's finisher wakes us: its read-modify-write
     * sees the mark, or our look below sees the item final. */
    bool idle = !awaited || awaited_mark(awaited, ST_HELPERS);
    /* "announce, then look", paired with notify's and notify_own's; not
     * when awaited is final: we do not look then. Unsure of our look (the
     * kernel refused the fence: see announce_fence), we look again after
     * RECHECK_NS, by which time any push it may have missed has long left
     * its CPU's store buffer; by then no worker is light. */
    if (idle && !announce_fence(pool, self)) {
        uint64_t soon = now_ns() + RECHECK_NS;
        deadline = deadline && deadline < soon ? deadline : soon;
    }
    if (idle && !work_visible(pool) &&
        !(awaited ? awaited_final(awaited) : pool_finished(pool))) {
        stat_bump(&self->parks);
        futex_wait(&pool->epoch, epoch, awaited ? awaited_bits(awaited) : PARK_BITS,
                   deadline);
    }
    atomic_fetch_sub_explicit(&pool->waiters, 1, memory_order_seq_cst);
    /* seq_cst: whoever leaves park ends the wake in flight, woken or not.
     * Ending it early (another worker is the one woken) costs at most one
     * more wake. A flag left set by a wake that found no waiter is harmless:
     * the next worker to park clears it before its last look (above). */
    atomic_store_explicit(&pool->waking, 0, memory_order_seq_cst);
}

/* Look for work for at most SPIN_NS: until some is found (returned), or
 * an awaited item (if any) is final, or else the pool is finished (NULL). */
static struct work *spin_for_work(struct worker *self, const struct awaited *awaited)
{
    cp_pool *pool = self->pool;
    struct work *w;
    uint64_t until = now_ns() + SPIN_NS;
    while (!(w = find_work(self)) &&
           !(awaited ? awaited_final(awaited) : pool_finished(pool)) && now_ns() < until)
        sched_yield(); /* an oversubscribed submitter needs the CPU */
    return w;
}

/* An idle worker's look for work before it sleeps, counted as searching so
 * that busy workers publish work for us (see notify and cp_spawn) and
 * notifiers leave the finding to us. At most half the workers search at
 * once and the rest go to sleep at once, except a worker just woken
 * (woken), which must look: a wake promises that someone will. Returns the
 * work found, or NULL; the caller then parks, where it looks once more
 * (for work whose wake was skipped because we were searching).
 *
 * A searcher that finds work, whatever work, and was the last one searching
 * wakes another worker. That is what keeps a wake-up from being lost when
 * the worker woken for one item takes another: the one it left is then
 * looked for by the next (Go's scheduler keeps the same rule). */
static struct work *search(struct worker *self, bool woken)
{
    cp_pool *pool = self->pool;
    /* relaxed: a limit on spinning, not a condition of correctness. */
    if (!woken && atomic_load_explicit(&pool->searching, memory_order_relaxed) >=
                      (pool->nworkers + 1) / 2)
        return NULL;
    /* seq_cst: read by notify; see there. */
    atomic_fetch_add_explicit(&pool->searching, 1, memory_order_seq_cst);
    struct work *w = spin_for_work(self, NULL);
    /* seq_cst: before the last look in park (notify's pairing). */
    uint32_t left = atomic_fetch_sub_explicit(&pool->searching, 1,
                                              memory_order_seq_cst) - 1;
    if (w && left == 0)
        notify(pool);
    return w;
}

/* A waiting worker's look for work (wait_work), until an awaited item is
 * final or for SPIN_NS. Counted as helping, not searching: busy workers
 * offer it their private tasks (workers_idle), but no notifier leaves the
 * finding of its work to it, so it owes no last look when it stops. A
 * search would: the fence on every thread of a look after it
 * (announce_fence), where a fork-join wait for a stolen child stops at
 * every such child's end. Work pushed meanwhile wakes a sleeper, if there
 * is one, as it would with no worker idle. */
static struct work *help_search(struct worker *self, const struct awaited *awaited)
{
    cp_pool *pool = self->pool;
    /* relaxed: a hint for where to put a new task, as workers_idle reads it. */
    atomic_fetch_add_explicit(&pool->helping, 1, memory_order_relaxed);
    struct work *w = spin_for_work(self, awaited);
    atomic_fetch_sub_explicit(&pool->helping, 1, memory_order_relaxed);
    return w;
}

/* A worker's sleep in a wait for a (wait_work): parked, so that new work
 * wakes it as well as an awaited item's end. Out of line: a slow path. A
 * notify's wake-one may have come to us for work we will not look for (an
 * item is final, or the deadline passed; or we take another item first),
 * and while it was on its way other notifies skipped their wakes: pass it
 * on, waking a worker for the work still visible. announce_fence: as in
 * park, the look after our wake's end (park's store to waking). */
static __attribute__((noinline)) void helper_sleep(struct worker *self,
                                                   const struct awaited *a,
                                                   uint64_t deadline)
{
    park(self, a, deadline);
    /* Unsure of the look (see announce_fence): wake a worker to look. */
    if (!announce_fence(self->pool, self) || work_visible(self->pool))
        notify_published(self->pool);
}

static bool offer_private(struct worker *self);

/* Run an item of a, if it is a job at the bottom of our deque (for one
 * item, the job's own waiter taking it back: job_take_own). Returns
 * whether it did: that item is final then. */
static inline __attribute__((always_inline)) bool
awaited_take_own(struct worker *self, const struct awaited *a)
{
    for (size_t i = 0; i < a->n; i++) {
        struct work *w = awaited_item(a, i);
        if (w->kind == KIND_JOB && job_take_own(self, (struct cp_future *)w) != TAKE_NONE)
            return true;
    }
    return false;
}

/* Wait until an item of a is final (all are of pool); a worker of pool
 * helps meanwhile. Returns 0, or CP_ETIMEDOUT when deadline (0: none)
 * passed first; a worker looks at the deadline before each item it runs
 * or offers, so it returns late by one item's run at most, however much
 * work it could find. For every wait: sync_queued's (the task was taken by
 * another worker, or came from outside the pool), cp_future_wait_timeout's
 * and cp_future_wait_any's, and cp_future_wait's when its own first take
 * did not end it (a stolen job, a wait from outside the pool: see
 * future_wait). Out of line: one copy of the helping loop, find_work and
 * the deque pop included, instead of one in each. */
static __attribute__((noinline)) int wait_work(cp_pool *pool, struct awaited a,
                                               uint64_t deadline)
{
    struct worker *self = pool ? worker_of(pool) : NULL;
    while (!awaited_final(&a)) {
        /* Before each item we would run or offer, too: work to help with
         * may never run out. */
        if (deadline && now_ns() >= deadline)
            return CP_ETIMEDOUT;
        if (self) {
            /* find_work, but for what we wait for at the bottom of our
             * deque, which we run here (final: done). */
            struct work *other = NULL;
            if (inject_due(self))
                other = take_injected(self);
            if (!other) {
                if (awaited_take_own(self, &a))
                    return 0;
                other = find_more_work(self);
            }
            /* No work found: offer our own private tasks (to ourselves as
             * much as anyone): what we wait for may need them. */
            if (!other && offer_private(self))
                continue;
            if (!other && !deadline)
                other = help_search(self, &a);
            if (other) {
                run_work(self, other);
                continue;
            }
            if (awaited_final(&a))
                break;
        }
        /* Again before we sleep: finding no work may have taken a while. */
        if (deadline && now_ns() >= deadline)
            return CP_ETIMEDOUT;
        if (self) {
            /* Work is queued that we could not take: an outside push half
             * done (its link not stored yet, so the items behind it, what
             * we wait for perhaps among them, cannot be popped), or a
             * submit between its count and its push. Look again rather
             * than sleep, as park does. The pusher needs the CPU. */
            if (work_visible(pool)) {
                sched_yield();
                continue;
            }
            pending_flush(self);
            returns_flush(self);
            helper_sleep(self, &a, deadline);
        } else {
            sleep_on(&a, deadline);
        }
    }
    return 0;
}


/* ------------------------------------------------------------------------ */
/* Workers                                                                   */

/* cp_pool_options.pin: this thread, worker i, on the (i mod n)-th of the n
 * CPUs it may run on, which are its creator's (a thread starts with its
 * creator's mask). Best effort: a refusal leaves the worker unpinned. */
static void pin_self(unsigned i)
{
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || CPU_COUNT(&allowed) == 0)
        return;
    unsigned k = i % (unsigned)CPU_COUNT(&allowed);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed) && k-- == 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            pthread_setaffinity_np(pthread_self(), sizeof one, &one);
            return;
        }
}

struct hook_call {
    void (*hook)(unsigned worker, void *arg);
    unsigned worker;
    void *arg;
};

static void *hook_run(void *p)
{
    struct hook_call *call = p;
    call->hook(call->worker, call->arg);
    return NULL;
}

/* Call hook (the pool's on_start or on_stop, if set) for self as a job is
 * run: in the context cp_pool_new captured, which it borrows from the
 * pool; what the hook sets stays in its frame. */
static void worker_hook(struct worker *self, void (*hook)(unsigned, void *))
{
    if (!hook)
        return;
    struct hook_call call = {hook, self->index, self->pool->hook_arg};
    run_captured(self->pool->hook_map, false, hook_run, &call);
}

/* A worker names itself, pins itself and runs on_start before it says it
 * is ready, so that all three are done when cp_pool_new returns. The hooks
 * run while this_worker is NULL: on the worker's thread but outside the
 * pool's work, as another thread's calls would. (From on_stop, a submit
 * would otherwise be queued on a deque nobody runs any more.) */
static void *worker_main(void *p)
{
    struct worker *self = p;
    cp_pool *pool = self->pool;
    pthread_setname_np(pthread_self(), self->name);
    if (pool->pin)
        pin_self(self->index);
    worker_hook(self, pool->on_start);
    sem_post(&pool->ready);
    this_worker = self;
    bool woken = false;
    for (;;) {
        struct work *w = woken ? search(self, true) : find_work(self);
        woken = false;
        if (w) {
            run_work(self, w);
            go_heavy(self);
            continue;
        }
        pending_flush(self);
        returns_flush(self);
        if (pool_finished(pool))
            break;
        /* Work often comes right back: search before sleeping. */
        if ((w = search(self, false))) {
            run_work(self, w);
            go_heavy(self);
        } else if (!pool_finished(pool)) {
            park(self, NULL, 0);
            woken = true;
        }
    }
    returns_flush(self);
    this_worker = NULL;
    worker_hook(self, pool->on_stop);
    return NULL;
}

static void workers_stop(cp_pool *pool, unsigned started)
{
    /* seq_cst: see "Shutdown". A compare-and-swap, so that a concurrent
     * cp_pool_shutdown(CANCEL) is not turned into a drain. */
    int running = RUNNING;
    atomic_compare_exchange_strong_explicit(&pool->state, &running, DRAINING,
                                            memory_order_seq_cst,
                                            memory_order_seq_cst);
    notify_all(pool);
    for (unsigned i = 0; i < started; i++)
        if (pthread_join(pool->workers[i].thread, NULL) == 0)
            /* relaxed: a count for the tests, ordering nothing. */
            atomic_fetch_sub_explicit(&workers_unjoined, 1, memory_order_relaxed);
}

static void pool_release(cp_pool *pool, unsigned deques)
{
    sem_destroy(&pool->ready);
    for (unsigned i = 0; i < deques; i++)
        cp__deque_destroy(&pool->workers[i].deque);
    cp__free(pool->workers);
    cp__free(pool);
}

/* Let go of the pool's memory as one of its holders (see refs); the last
 * one frees it, its workers joined already. acq_rel: whoever frees it sees
 * every use the other holders made of it. */
static void pool_unref(cp_pool *pool)
{
    if (atomic_fetch_sub_explicit(&pool->refs, 1, memory_order_acq_rel) == 1)
        pool_release(pool, pool->nworkers);
}

/* relaxed: a test switch, read when a pool is made. */
static atomic_int light_after = LIGHT_AFTER;

int cp__pool_light_after(int n)
{
    return atomic_exchange_explicit(&light_after, n, memory_order_relaxed);
}

/* A pool of n workers, none started, with options' settings (NULL: the
 * defaults) but stack_size; NULL without memory for it. */
static cp_pool *pool_make(unsigned n, const cp_pool_options *options)
{
    /* Both are padded to cache lines (alignas): malloc's alignment is not
     * enough for them. */
    cp_pool *pool = cp__calloc_aligned(1, sizeof *pool, alignof(cp_pool));
    if (!pool)
        return NULL;
    pool->workers = cp__calloc_aligned(n, sizeof *pool->workers, alignof(struct worker));
    if (!pool->workers) {
        cp__free(pool);
        return NULL;
    }
    if (sem_init(&pool->ready, 0, 0) != 0) { /* fails only for a count too large */
        cp__free(pool->workers);
        cp__free(pool);
        return NULL;
    }
    pool->nworkers = n;
    atomic_init(&pool->refs, 1); /* the user's; not yet shared */
    pool->fork_generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    pool->fenced = cp__fence_ready();
    int after = atomic_load_explicit(&light_after, memory_order_relaxed);
    /* relaxed: see notify_own. */
    pool->light_after = pool->fenced && after >= 0 &&
                                !atomic_load_explicit(&light_refused, memory_order_relaxed)
                            ? (unsigned)after
                            : NEVER_LIGHT;
    /* atomic_init: no worker exists yet, nothing is shared. */
    atomic_init(&pool->inject_stub.next, NULL); /* not yet shared */
    atomic_init(&pool->inject_head, &pool->inject_stub); /* not yet shared */
    pool->inject_tail = &pool->inject_stub;
    const char *name = options && options->name && *options->name ? options->name
                                                                  : "cp-worker";
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &pool->workers[i];
        if (cp__deque_init(&w->deque, DEQUE_LOG_CAPACITY) != 0) {
            pool_release(pool, i);
            return NULL;
        }
        w->pool = pool;
        atomic_init(&w->cancel, false); /* not yet shared */
        w->index = i;
        w->rng = UINT64_C(0x9e3779b97f4a7c15) * (i + 1);
        /* Linux keeps 15 bytes of a thread's name: cut the prefix so that
         * the index stays, at the start of a character (a UTF-8
         * continuation byte is 10xxxxxx; the NUL ends the backing off). */
        char index[12]; /* "-4294967295" and its NUL */
        size_t len = (size_t)snprintf(index, sizeof index, "-%u", i);
        size_t kept = strnlen(name, sizeof w->name - 1 - len);
        while (kept > 0 && ((unsigned char)name[kept] & 0xC0) == 0x80)
            kept--;
        memcpy(w->name, name, kept);
        memcpy(w->name + kept, index, len + 1);
    }
    if (options) {
        pool->pin = options->pin;
        pool->on_start = options->on_start;
        pool->on_stop = options->on_stop;
        pool->hook_arg = options->hook_arg;
    }
    return pool;
}

int cp_pool_new(cp_pool **poolp, const cp_pool_options *options)
{
    if (!poolp)
        return CP_EINVAL;
    pthread_once(&atfork_once, atfork_register);
    /* Checked before anything is made: the one option that can be wrong. */
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return CP_ENOMEM;
    if (options && options->stack_size &&
        pthread_attr_setstacksize(&attr, options->stack_size) != 0) {
        pthread_attr_destroy(&attr);
        return CP_EINVAL;
    }
    unsigned n = options ? options->threads : 0;
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (unsigned)cpus : 1;
    }
    cp_pool *pool = pool_make(n, options);
    if (!pool) {
        pthread_attr_destroy(&attr);
        return CP_ENOMEM;
    }
    if (pool->on_start || pool->on_stop)
        pool->hook_map = cp__context_capture();
    unsigned started = 0;
    int err = 0;
    /* A thread (its stack) counts as an allocation for the test hook, so
     * that the tests reach the stop of the workers already started. */
    while (started < n && !err) {
        err = cp__alloc_should_fail() ? EAGAIN
                                      : pthread_create(&pool->workers[started].thread, &attr,
                                                       worker_main, &pool->workers[started]);
        if (!err) {
            started++;
            /* relaxed: a count for the tests, ordering nothing. */
            atomic_fetch_add_explicit(&workers_unjoined, 1, memory_order_relaxed);
        }
    }
    pthread_attr_destroy(&attr);
    if (err) {
        workers_stop(pool, started);
        cp__hamt_decref(pool->hook_map);
        pool_release(pool, n);
        /* EINVAL: a stack size refused only when the thread is made (too
         * small for the program's thread-local storage, or too large to
         * add a guard page to); else out of threads or memory (EAGAIN). */
        return err == EINVAL ? CP_EINVAL : CP_ENOMEM;
    }
    /* Not cancelled while workers may still post. */
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    for (unsigned i = 0; i < n; i++)
        while (sem_wait(&pool->ready) != 0)
            ; /* EINTR: a signal handler ran */
    pthread_setcancelstate(cancel_state, NULL);
    *poolp = pool;
    return 0;
}

/* Set every worker's copy of "the pool is cancelling" (struct worker's
 * cancel). The shutdown that cancels calls it, and so does every call that
 * finds the pool cancelling, before it says so (CP_ESHUTDOWN): whatever its
 * caller does next comes after the copies are set, as it came after the
 * state's change when workers read the state itself. relaxed: the copies
 * are a hint (see there), ordered by what follows; idempotent. */
static void cancel_flags_set(cp_pool *pool)
{
    for (unsigned i = 0; i < pool->nworkers; i++)
        atomic_store_explicit(&pool->workers[i].cancel, true, memory_order_relaxed);
}

/* Account for a new counted work item: 0, or CP_ESHUTDOWN (nothing
 * counted). self: worker_of(pool). A worker of the pool may still add work
 * while the pool drains: that work belongs to a job already accepted.
 * Always inlined, as enqueue: a submit runs both for every job. */
static inline __attribute__((always_inline)) int
admit(cp_pool *pool, struct worker *self)
{
    if (forked_away(&pool->fork_generation))
        return CP_ESHUTDOWN;
    if (self) {
        /* relaxed: our own item runs before we finish, or the drain waits. */
        if (atomic_load_explicit(&self->cancel, memory_order_relaxed))
            return CP_ESHUTDOWN;
        if (self->credit == 0) {
            self->credit = FLUSH_EVERY; /* see pending_flush */
            pending_apply(pool, FLUSH_EVERY);
        }
        self->credit--;
        stat_bump(&self->submitted);
        return 0;
    }
    /* seq_cst: count the item before reading the state (see "Shutdown").
     * From here until the job is linked, idle workers see the injection
     * queue non-empty and look again instead of parking: a short window. */
    atomic_fetch_add_explicit(&pool->admitted, 1, memory_order_seq_cst);
    int state = atomic_load_explicit(&pool->state, memory_order_seq_cst);
    if (state == RUNNING)
        return 0;
    if (state == CANCELLING)
        cancel_flags_set(pool);
    /* seq_cst: see "Shutdown"; the refusal may bring the count to zero. */
    atomic_fetch_add_explicit(&pool->refused, 1, memory_order_seq_cst);
    total_changed(pool, atomic_load_explicit(&pool->pending, memory_order_seq_cst));
    return CP_ESHUTDOWN;
}

/* Queue an admitted work item: on our own deque if we are a worker of the
 * pool (self: worker_of(pool)), else on the injection queue. */
static inline __attribute__((always_inline)) void
enqueue(cp_pool *pool, struct worker *self, struct work *w)
{
    if (self) {
        if (cp__deque_push(&self->deque, w) == 0) {
            notify_own(pool, self);
            return;
        }
        inject_reinject(pool, w); /* no memory to grow the deque */
    } else {
        inject_link(pool, w); /* counted by admit */
    }
    notify_published(pool);
}

/* ------------------------------------------------------------------------ */
/* Job caches                                                                */

/* Every thread that submits keeps a cache of jobs, so that a steady stream
 * of submits allocates nothing. Its jobs live in arenas of ARENA_JOBS, each
 * belonging to the cache of the thread that made it (the jobs' home).
 *
 * A job its home thread frees goes onto the cache's own list, which is
 * used first, newest first: that memory is still warm. A job another
 * thread frees goes back to its arena: its bit in the arena's free word.
 * A worker gathers the bits of the jobs it gives back to one arena and sets
 * them with one atomic or (job_return). The home takes all of an arena's
 * free slots with one exchange and hands them out in address order. It
 * visits its arenas in turn, round a ring; when the next two have few free
 * slots, it makes a new one, which goes into the ring just after them, to
 * be visited again when all the others have been. A worker gives back
 * when it moves on to another arena, and before it sleeps: while it runs
 * a long job, up to one arena's worth of the jobs it ran stay out.
 *
 * Why arenas and not a list of returned jobs: a thread that submits from
 * outside the pool gets every job back from the workers, in the order they
 * finish them, which is not quite the order they were handed out. As a
 * list, reused again and again, the jobs come out in an order further from
 * address order each time round, until a burst of submits reads and writes
 * memory at random: a cache miss a job for the submitter and again for the
 * workers. Measured with a million jobs a burst, two workers: 42 ns a job
 * for the first burst, 150 to 200 by the seventh. In address order the
 * hardware prefetches for both sides, every time.
 *
 * When the home thread exits, it gives back the jobs it holds and marks
 * each arena closed (ARENA_CLOSED); whoever then makes a closed arena's
 * every slot free frees the arena. The cache lives while its thread or any
 * of its arenas does. */
#define ARENA_JOBS 63
#define ARENA_ALL ((UINT64_C(1) << ARENA_JOBS) - 1)
#define ARENA_CLOSED (UINT64_C(1) << ARENA_JOBS)
#define ARENA_PROBES 2    /* arenas looked at before a new one is made */
#define ARENA_MIN_FREE 16 /* with fewer free slots an arena is passed by */
_Static_assert(ARENA_JOBS < 64, "a free word has a bit for each job and ARENA_CLOSED");

struct job_arena {
    /* The free slots the home does not hold (bit i: jobs[i]), and
     * ARENA_CLOSED. Alone in its line: the workers write it. */
    _Atomic uint64_t free;
    alignas(CP__CACHE_LINE) struct job_cache *home;
    struct job_arena *next; /* the home's ring; home thread only */
    alignas(CP__CACHE_LINE) struct cp_future jobs[ARENA_JOBS];
};

struct job_cache {
    struct cp_future *local; /* freed by the home thread */
    struct job_arena *arena; /* the ring's last visited arena; NULL: none */
    uint64_t held;           /* free slots of arena the home holds */
    atomic_size_t refs;      /* the thread + its arenas */
};

static __thread struct job_cache *my_cache
    __attribute__((tls_model("initial-exec")));
static void cache_close(void *p);
static cp__key cache_key = CP__KEY_INIT(cache_close);

static void cache_decref(struct job_cache *c, size_t n)
{
    /* acq_rel: the last one out sees every other's uses before freeing. */
    if (atomic_fetch_sub_explicit(&c->refs, n, memory_order_acq_rel) == n)
        cp__free(c);
}

static uint64_t slot_bit(const struct cp_future *f)
{
    return UINT64_C(1) << (f - f->arena->jobs);
}

/* Give slots (bits of jobs, or ARENA_CLOSED) back to a; free a if that
 * makes it closed with every slot free. Until then the slots given are
 * out, so a lives: home is read first. acq_rel: release, our uses of the
 * jobs come before their next user's, who acquires them (arena_next);
 * acquire, for the freeing of a, everyone else's uses. */
static void arena_give(struct job_arena *a, uint64_t slots)
{
    struct job_cache *home = a->home;
    uint64_t now = atomic_fetch_or_explicit(&a->free, slots, memory_order_acq_rel) | slots;
    if (now == (ARENA_CLOSED | ARENA_ALL)) {
        cp__free(a);
        cache_decref(home, 1);
    }
}

static void cache_close(void *p)
{
    struct job_cache *c = p;
    my_cache = NULL;
    /* What the thread holds first: no arena is closed yet, none is freed. */
    for (struct cp_future *f = c->local, *next; f; f = next) {
        next = f->free_next;
        arena_give(f->arena, slot_bit(f));
    }
    struct job_arena *first = c->arena;
    if (first) {
        arena_give(first, c->held);
        /* Once closed, an arena may be freed at once: its link is read
         * before, and the ring's first is closed last, so that it is there
         * to compare with until then. */
        for (struct job_arena *a = first->next, *next; a != first; a = next) {
            next = a->next;
            arena_give(a, ARENA_CLOSED);
        }
        arena_give(first, ARENA_CLOSED);
    }
    cache_decref(c, 1);
}

/* A cache for this thread, its first; NULL without memory for it. Not
 * inlined: once a thread, and job_alloc inlines into submit without it. */
static __attribute__((noinline)) struct job_cache *cache_new(void)
{
    struct job_cache *c = cp__key_ready(&cache_key) ? cp__malloc(sizeof *c) : NULL;
    if (!c)
        return NULL;
    c->local = NULL;
    c->arena = NULL;
    c->held = 0;
    atomic_init(&c->refs, 1); /* not yet shared */
    if (pthread_setspecific(cp__key_of(&cache_key), c) != 0) {
        cp__free(c);
        return NULL;
    }
    return my_cache = c;
}

/* This thread's cache, made on first use; NULL without memory for it. */
static struct job_cache *cache_get(void)
{
    return my_cache ? my_cache : cache_new();
}

/* c holds no free slot: take those of the next arena of its ring that has
 * enough, else make a new arena. false: no memory for one. */
static __attribute__((noinline)) bool arena_next(struct job_cache *c)
{
    struct job_arena *a = c->arena;
    for (int i = 0; a && i < ARENA_PROBES; i++) {
        /* Passed by or not, a is visited: the next look starts after it. */
        c->arena = a = a->next;
        /* relaxed: a look; the exchange acquires what it takes. */
        if (__builtin_popcountll(atomic_load_explicit(&a->free, memory_order_relaxed)) >=
            ARENA_MIN_FREE) {
            /* acquire: pairs with arena_give's release. */
            c->held = atomic_exchange_explicit(&a->free, 0, memory_order_acquire);
            return true;
        }
    }
    a = cp__calloc_aligned(1, sizeof *a, alignof(struct job_arena));
    if (!a)
        return false;
    atomic_init(&a->free, 0); /* not yet shared */
    a->home = c;
    for (int i = 0; i < ARENA_JOBS; i++)
        a->jobs[i].arena = a;
    /* Into the ring just after the arena visited last: visited again when
     * every other one has been. */
    struct job_arena *at = c->arena;
    a->next = at ? at->next : a;
    if (at)
        at->next = a;
    c->arena = a;
    c->held = ARENA_ALL;
    /* relaxed: the new arena is the reference; nothing to order. */
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return true;
}

/* Always inlined: submit runs it for every job. */
static inline __attribute__((always_inline)) struct cp_future *job_alloc(void)
{
    struct job_cache *c = cache_get();
    if (c) {
        struct cp_future *f = c->local;
        if (f) {
            c->local = f->free_next;
            return f;
        }
        if (!c->held && !arena_next(c))
            return NULL;
        f = &c->arena->jobs[__builtin_ctzll(c->held)];
        c->held &= c->held - 1;
        return f;
    }
    /* No cache (no memory for one): a job on its own. */
    struct cp_future *f = cp__malloc(sizeof *f);
    if (f)
        f->arena = NULL;
    return f;
}

unsigned cp__pool_workers(void)
{
    return atomic_load_explicit(&workers_unjoined, memory_order_relaxed);
}

size_t cp__pool_jobs_out(void)
{
    struct job_cache *c = my_cache;
    if (!c || !c->arena)
        return 0;
    size_t out = 0;
    struct job_arena *a = c->arena;
    do {
        /* acquire: pairs with arena_give, as arena_next's exchange. */
        uint64_t slots = atomic_load_explicit(&a->free, memory_order_acquire);
        out += ARENA_JOBS - (size_t)__builtin_popcountll(slots & ARENA_ALL);
        a = a->next;
    } while (a != c->arena);
    out -= (size_t)__builtin_popcountll(c->held);
    for (struct cp_future *f = c->local; f; f = f->free_next)
        out--;
    return out;
}

static void returns_flush(struct worker *self)
{
    if (!self->ret_slots)
        return;
    arena_give(self->ret_arena, self->ret_slots);
    self->ret_arena = NULL;
    self->ret_slots = 0;
}

/* f goes back to its arena a, whose home is another thread's cache (or it
 * has none: f is freed). A worker gathers the slots it gives back to one
 * arena; anyone else gives them one at a time. */
static __attribute__((noinline)) void job_return(struct cp_future *f,
                                                 struct job_arena *a)
{
    if (!a) {
        cp__free(f);
        return;
    }
    struct worker *self = this_worker;
    if (!self) {
        arena_give(a, slot_bit(f));
        return;
    }
    if (self->ret_arena != a) {
        returns_flush(self);
        self->ret_arena = a;
    }
    self->ret_slots |= slot_bit(f);
}

/* Both holders have let go of f (see ST_RELEASED): back to its home. Onto
 * our own list when we are its home thread, the common case, which then
 * saves no registers for job_return's. */
static void job_release(struct cp_future *f)
{
    struct job_arena *a = f->arena;
    if (a && a->home == my_cache) {
        f->free_next = my_cache->local;
        my_cache->local = f;
    } else {
        job_return(f, a);
    }
}

/* Make f pool's job for fn(arg), with a handle or not (handle: the
 * caller's future is not NULL), but for its context (f->in, f->map), which
 * the caller writes. */
static inline __attribute__((always_inline)) void
job_fill(struct cp_future *f, cp_pool *pool, cp_job_fn fn, void *arg, bool handle)
{
    /* w.next: written by inject_link if ever used. Without a handle, the
     * job is the pool's alone from the start. */
    atomic_init(&f->w.state, handle ? ST_PENDING : ST_FREED); /* not yet shared */
    f->w.kind = KIND_JOB;
    f->w.counted = true;
    f->w.outcome = 0;
    f->fn = fn;
    f->arg = arg; /* result: written when the outcome is 0, read only then */
    f->pool = pool;
    f->fenced = pool->fenced;
    f->fork_generation = pool->fork_generation;
    atomic_init(&f->runner, 0); /* not yet shared */
    atomic_init(&f->taken, false); /* not yet shared */
    atomic_init(&f->late, 0); /* not yet shared */
}

/* cp_pool_submit and cp_pool_submit_in, inlined into each: a submit then
 * tests no `in` and makes no call to get here. */
static inline __attribute__((always_inline)) int
submit(cp_pool *pool, cp_context *in, cp_job_fn fn, void *arg,
       cp_future **future)
{
    if (!pool || !fn)
        return CP_EINVAL;
    struct cp_future *f = job_alloc();
    if (!f)
        return CP_ENOMEM;
    struct worker *self = worker_of(pool);
    int err = admit(pool, self);
    if (err != 0) {
        job_release(f);
        return err;
    }
    job_fill(f, pool, fn, arg, future != NULL);
    if (in) {
        cp__context_incref(in);
        f->in = in;
        f->map = CP__HAMT_EMPTY;
    } else {
        f->in = NULL;
        f->map = cp__context_capture();
    }
    if (future)
        *future = f;
    enqueue(pool, self, &f->w);
    return 0;
}

/* submit with no `in`, out of line: cp_pool_submit's when its fast path
 * (submit_own) does not apply. */
static __attribute__((noinline)) int submit_any(cp_pool *pool, cp_job_fn fn, void *arg,
                                                cp_future **future)
{
    return submit(pool, NULL, fn, arg, future);
}

/* enqueue out of line, for submit_own when the deque must grow. */
static __attribute__((noinline)) void enqueue_out(cp_pool *pool, struct worker *self,
                                                  struct work *w)
{
    enqueue(pool, self, w);
}

/* submit_own's return when it has done nothing: submit must run. */
#define SUBMIT_SLOW 1

/* cp_pool_submit's fast path: fork-join code's submit, from a worker of
 * pool, when none of submit's steps up to the push needs a call: a job on
 * the cache's own list (job_alloc), credit left (admit), a capture from
 * the batch (cp__context_capture_ready). Those are checked before anything
 * changes that anyone else could see: the job's fields are filled in
 * between the checks (fewer values to hold at once), but the job is still
 * on our cache's own list, whose jobs' fields nobody reads (submit fills
 * them in again). Returns SUBMIT_SLOW, having changed nothing else, when
 * submit must run instead; else 0. Then the steps are submit's, the same
 * stores in the same order, and the push, onto our deque when it has room
 * (cp__deque_reserve), else by enqueue_out (which grows it). Its only
 * calls come at the end (enqueue_out, notify_own's wake), after which
 * nothing is used: so cp_pool_submit, whose other way is a tail call to
 * submit_any, keeps almost no value across a call and saves one register
 * where submit saved six (a sixth of a submit's instructions). */
static inline __attribute__((always_inline)) int
submit_own(cp_pool *pool, cp_job_fn fn, void *arg, cp_future **future)
{
    struct worker *self = this_worker;
    /* self->pool is never NULL: pool is not either. */
    if (!self || self->pool != pool || !fn)
        return SUBMIT_SLOW;
    struct job_cache *c = my_cache;
    struct cp_future *f = c ? c->local : NULL;
    /* admit's checks for a worker; relaxed: as there. */
    if (!f || forked_away(&pool->fork_generation) ||
        atomic_load_explicit(&self->cancel, memory_order_relaxed) || self->credit == 0)
        return SUBMIT_SLOW;
    job_fill(f, pool, fn, arg, future != NULL);
    cp__hamt map;
    if (!cp__context_capture_ready(&map))
        return SUBMIT_SLOW;
    f->in = NULL;
    f->map = map;
    /* Committed: the job is ours from here. */
    c->local = f->free_next; /* job_alloc */
    self->credit--;          /* admit */
    stat_bump(&self->submitted);
    cp__context_capture_take(map);
    if (future)
        *future = f;
    cp__deque_spot spot;
    if (cp__deque_reserve(&self->deque, &spot)) {
        cp__deque_push_at(&self->deque, spot, &f->w); /* enqueue */
        notify_own(pool, self);
    } else {
        enqueue_out(pool, self, &f->w);
    }
    return 0;
}

int cp_pool_submit(cp_pool *pool, cp_job_fn fn, void *arg, cp_future **future)
{
    int err = submit_own(pool, fn, arg, future);
    if (err != SUBMIT_SLOW)
        return err;
    return submit_any(pool, fn, arg, future);
}

int cp_pool_submit_in(cp_pool *pool, cp_context *c, cp_job_fn fn, void *arg,
                      cp_future **future)
{
    if (!c)
        return CP_EINVAL;
    return submit(pool, c, fn, arg, future);
}

/* A cancel shutdown's sweep (cancel_queued): the items it took off the
 * queues, and what it does with them. It runs no user code until every
 * item it took is final: a free_value run by a payload's drop may wait for
 * another queued job, which must not be one the sweep holds. */
struct sweep_list {
    struct work *first, *last;
};

struct sweep {
    uint64_t finished;      /* items made final: counted in pending */
    struct sweep_list drop; /* jobs to drop the payload of, in queue order */
    struct sweep_list back; /* workers' own tasks, to queue again */
};

/* Append w to list through its next, ours while w is in no queue.
 * relaxed: this thread's own list. */
static void sweep_append(struct sweep_list *list, struct work *w)
{
    atomic_store_explicit(&w->next, NULL, memory_order_relaxed);
    if (list->last)
        atomic_store_explicit(&list->last->next, w, memory_order_relaxed);
    else
        list->first = w;
    list->last = w;
}

/* The first item of list, taken off it, or NULL. */
static struct work *sweep_take(struct sweep_list *list)
{
    struct work *w = list->first;
    if (w)
        list->first = atomic_load_explicit(&w->next, memory_order_relaxed);
    return w;
}

/* Phase one, for w, taken off a queue: make it final without user code. A
 * job is claimed for the pool's cancel (DROPPING), so that a cancel racing
 * with ours finds a cancel won and says 0, then finished CANCELLED
 * with its payload still in it, for phase two; the pool keeps its hold on
 * it (ST_RELEASED unset) until then. A task spawned from outside is a job
 * of its own: cancelled. A worker's own task belongs to the running job
 * that will sync it, which a cancel lets finish: queued again. */
static void sweep_item(cp_pool *pool, struct work *w, struct sweep *sw)
{
    if (w->kind == KIND_JOB) {
        bool alone;
        sw->finished++;
        if (!job_cancel_take((struct cp_future *)w, &alone))
            return; /* a cp_future_cancel won: it drops */
        if (!alone)
            work_finish(pool, w, ST_DROPPING, ST_CANCELLED, 0);
        sweep_append(&sw->drop, w);
    } else if (w->counted) {
        sw->finished++;
        w->outcome = CP_ECANCELED;
        work_finish(pool, w, ST_PENDING, ST_CANCELLED, 0);
    } else {
        sweep_append(&sw->back, w);
    }
}

/* CP_SHUTDOWN_CANCEL: cancel the jobs (and outside tasks) queued now, on
 * the injection queue and the workers' deques, at once, so that their
 * waits end now and not after the jobs that run ahead of them, as
 * Python's shutdown(cancel_futures=True) does. Phase one (here) makes
 * them final; phase two (sweep_drop) drops their payloads, so a wait may
 * return before its job's context is let go of (documented in ctxpool.h,
 * cp_pool_submit_in and cp_pool_shutdown). A job a worker
 * is moving between queues as we pass, or that a worker's submit racing
 * with the flags adds, is cancelled by the workers, who look at their
 * cancel flags (set before) for every job they take. */
static void cancel_queued(cp_pool *pool, struct sweep *sw)
{
    /* The injection queue, until it is empty: a submit admitted before the
     * shutdown may still be linking its job (a push half done hides the
     * items behind it from inject_pop), and needs the CPU to finish. Taken
     * under the lock onto a list of our own, and swept without it: workers
     * hold it for a batch at most. */
    while (inject_nonempty(pool)) {
        struct sweep_list mine = {NULL, NULL};
        uint64_t popped = 0;
        if (inject_try_lock(pool)) {
            for (struct work *w; (w = inject_pop(pool)); popped++)
                sweep_append(&mine, w);
            if (popped)
                inject_popped_add(pool, popped);
            inject_unlock(pool);
        }
        if (!popped)
            sched_yield();
        for (struct work *w; (w = sweep_take(&mine));)
            sweep_item(pool, w, sw);
    }
    /* Each deque: as a thief, as many items as it held when we came, so
     * that tasks its owner offers meanwhile cannot keep us here. */
    for (unsigned i = 0; i < pool->nworkers; i++) {
        cp__deque *d = &pool->workers[i].deque;
        for (size_t left = cp__deque_size(d); left > 0;) {
            void *item;
            cp__steal r = cp__deque_steal(d, &item);
            if (r == CP__STEAL_EMPTY)
                break;
            if (r == CP__STEAL_OK) {
                sweep_item(pool, item, sw);
                left--;
            }
        }
    }
    /* Queued again only now: the loop above would have taken them again. */
    for (struct work *w; (w = sweep_take(&sw->back));)
        inject_reinject(pool, w);
    if (sw->finished) {
        /* release: a count of ended work, as stat_bump's. */
        atomic_fetch_add_explicit(&pool->swept, sw->finished, memory_order_release);
        pending_apply(pool, -(int64_t)sw->finished);
    }
}

/* Phase two: drop the payloads of the jobs phase one made final, in the
 * order they were queued, and let go of each as the pool. User code
 * (free_value) may run; nothing here touches the pool, which every item
 * has left. */
static void sweep_drop(struct sweep *sw)
{
    for (struct work *w; (w = sweep_take(&sw->drop));) {
        struct cp_future *f = (struct cp_future *)w;
        bool alone = job_alone(f);
        drop_payload(f);
        job_let_go(f, alone);
    }
}

int cp_pool_shutdown(cp_pool *pool, enum cp_shutdown how)
{
    if (!pool || (how != CP_SHUTDOWN_DRAIN && how != CP_SHUTDOWN_CANCEL))
        return CP_EINVAL;
    if (forked_away(&pool->fork_generation))
        return CP_ESHUTDOWN;
    int want = how == CP_SHUTDOWN_DRAIN ? DRAINING : CANCELLING;
    int state = RUNNING;
    /* seq_cst: see "Shutdown". A cancel may follow a drain (as Python's
     * shutdown(cancel_futures=True) may follow shutdown(wait=False)): the
     * pool refuses submits either way, and its workers cancel what they
     * take from the moment their flags are set. */
    while (!atomic_compare_exchange_strong_explicit(&pool->state, &state, want,
                                                    memory_order_seq_cst,
                                                    memory_order_seq_cst)) {
        if (state == CANCELLING)
            cancel_flags_set(pool);
        if (state == CANCELLING || want == DRAINING)
            return CP_ESHUTDOWN;
    }
    struct sweep sw = {0, {NULL, NULL}, {NULL, NULL}};
    if (want == CANCELLING) {
        cancel_flags_set(pool);
        cancel_queued(pool, &sw);
    }
    notify_all(pool);
    sweep_drop(&sw);
    return 0;
}

int cp_pool_free(cp_pool *pool)
{
    if (!pool)
        return 0;
    if (forked_away(&pool->fork_generation))
        return CP_ESHUTDOWN;
    /* Its threads, not only while they run work: also from a hook. */
    for (unsigned i = 0; i < pool->nworkers; i++)
        if (pthread_equal(pool->workers[i].thread, pthread_self()))
            return CP_EDEADLK;
    workers_stop(pool, pool->nworkers);
    cp__hamt_decref(pool->hook_map);
    pool_unref(pool);
    return 0;
}

int cp_pool_get_stats(const cp_pool *pool, cp_pool_stats *stats)
{
    if (!pool || !stats)
        return CP_EINVAL;
    /* Each counter is read atomically, not together. The counts of ended
     * work first, with acquire (pairing with stat_bump's and the sweep's
     * release), then those of submitted work: every item counted ended was
     * counted submitted before it ended, and so is seen below. So
     * submitted is never less than completed + cancelled, and equal only
     * when everything submitted before the reads had run or been cancelled
     * (or a submit from outside came in between). The counts come just
     * before the final state (work_finish), and a cancel's count (a
     * worker's discard) after it, while cp_future_cancel may still drop
     * the payload: the header says so. */
    memset(stats, 0, sizeof *stats);
    stats->threads = pool->nworkers;
    for (unsigned i = 0; i < pool->nworkers; i++) {
        const struct worker *w = &pool->workers[i];
        stats->completed += atomic_load_explicit(&w->completed, memory_order_acquire);
        stats->cancelled += atomic_load_explicit(&w->cancelled, memory_order_acquire);
    }
    stats->cancelled += atomic_load_explicit(&pool->swept, memory_order_acquire);
    /* The outside submits, admitted less refused. acquire on refused, read
     * first: the admits of the refusals it counts are then seen below, so
     * the difference is never negative. */
    uint64_t refused = atomic_load_explicit(&pool->refused, memory_order_acquire);
    stats->submitted = atomic_load_explicit(&pool->admitted, memory_order_relaxed) - refused;
    for (unsigned i = 0; i < pool->nworkers; i++) {
        const struct worker *w = &pool->workers[i];
        /* relaxed: ordered after the acquires above; the rest are figures. */
        stats->submitted += atomic_load_explicit(&w->submitted, memory_order_relaxed);
        stats->stolen += atomic_load_explicit(&w->stolen, memory_order_relaxed);
        stats->parks += atomic_load_explicit(&w->parks, memory_order_relaxed);
    }
    return 0;
}

/* The deadline (CLOCK_MONOTONIC ns) of a wait of timeout_ns from now, as
 * futex_wait takes it: 0 (none) for UINT64_MAX. Inline: cp_future_wait's
 * constant UINT64_MAX then costs nothing. */
static inline uint64_t deadline_after(uint64_t timeout_ns)
{
    if (timeout_ns == UINT64_MAX)
        return 0;
    uint64_t now = now_ns();
    return timeout_ns > UINT64_MAX - now ? UINT64_MAX : now + timeout_ns;
}

int cp_pool_wait_idle(cp_pool *pool, uint64_t timeout_ns)
{
    if (!pool)
        return CP_EINVAL;
    /* A child of fork() has none of the pool's workers: what was pending
     * at the fork never ends here. */
    if (forked_away(&pool->fork_generation))
        return CP_ESHUTDOWN;
    /* Our own job is pending while we wait. */
    if (worker_of(pool))
        return CP_EDEADLK;
    uint64_t deadline = deadline_after(timeout_ns);
    /* seq_cst: the first half of a store-buffering pair with a lowering of
     * the count (total_changed): either it sees us counted and wakes us, or
     * our read of the total below sees its change. */
    atomic_fetch_add_explicit(&pool->idle_waiters, 1, memory_order_seq_cst);
    int err = 0;
    for (;;) {
        /* seq_cst: the epoch before the total (see idle_wake). The total's
         * seq_cst reads (of pending first, see pending_total) read the
         * workers' changes, each made after the items it counts ended, so
         * a zero makes what those items did visible to us. */
        uint32_t epoch = atomic_load_explicit(&pool->idle_epoch, memory_order_seq_cst);
        if (nothing_pending(pool))
            break;
        if (timeout_ns == 0 || (deadline && now_ns() >= deadline)) {
            err = CP_ETIMEDOUT;
            break;
        }
        /* A worker of another pool: what it gives back is not held up while
         * it sleeps. */
        if (this_worker)
            returns_flush(this_worker);
        futex_wait(&pool->idle_epoch, epoch, FUTEX_BITSET_MATCH_ANY, deadline);
    }
    /* seq_cst, as the raise: every change of idle_waiters is then in S,
     * which the pair above reasons with. A lowering that still sees us
     * counted wakes nobody, or threads that look again. */
    atomic_fetch_sub_explicit(&pool->idle_waiters, 1, memory_order_seq_cst);
    return err;
}

/* ------------------------------------------------------------------------ */
/* Futures                                                                   */

static int future_outcome(struct cp_future *f, void **result)
{
    /* A cancel writes no outcome (it may lose the race to a worker that has
     * written one), so CANCELLED speaks for itself. acquire: pairs with the
     * final state's release. */
    uint32_t s = atomic_load_explicit(&f->w.state, memory_order_acquire);
    if ((s & ST_MASK) == ST_CANCELLED)
        return CP_ECANCELED;
    int outcome = f->w.outcome;
    if (outcome == 0 && result)
        *result = f->result;
    return outcome;
}

/* Why a wait for a's futures (of one pool), none of them final, does not
 * wait: CP_ESHUTDOWN in a child of fork(), which has none of the pool's
 * workers (nothing would ever finish them here); CP_EDEADLK when this
 * thread runs one of them; CP_ETIMEDOUT for a poll. 0: it waits. */
static inline int wait_refused(const struct awaited *a, uint64_t timeout_ns)
{
    const struct cp_future *f = (const struct cp_future *)awaited_item(a, 0);
    if (forked_away(&f->fork_generation))
        return CP_ESHUTDOWN;
    for (size_t i = 0; i < a->n; i++) {
        f = (const struct cp_future *)awaited_item(a, i);
        /* relaxed: equal only if this thread stored it (it runs f now). */
        if (atomic_load_explicit(&f->runner, memory_order_relaxed) == thread_id())
            return CP_EDEADLK;
    }
    return timeout_ns == 0 ? CP_ETIMEDOUT : 0;
}

/* cp_future_wait_timeout, inlined into it and into cp_future_wait, which
 * then makes no call through the PLT and no test of the timeout. timed:
 * for cp_future_wait_timeout, whose wait (not the hot one) goes straight
 * to the shared copy out of line. */
static inline __attribute__((always_inline)) int
future_wait(cp_future *f, uint64_t timeout_ns, bool timed, void **result)
{
    if (!f)
        return CP_EINVAL;
    if (!work_final(&f->w)) {
        struct awaited a = awaited_one(&f->w);
        int err = wait_refused(&a, timeout_ns);
        if (err != 0)
            return err;
        /* wait_work's first round, up to its take of f, inline for an
         * untimed wait: fork-join code's waits mostly end there. The round
         * counts in tick (inject_due) if it ends here; else the wait's
         * loop, out of line, makes the round again from its start, and
         * counts it then (an injected item due first included). After a
         * try here that found f elsewhere, the loop's try finds it not at
         * the bottom of our deque at its first look: nothing but thieves
         * changed the deque since. f->pool is never NULL: worker_of needs
         * no test for it. */
        struct worker *self = timed ? NULL : worker_of(f->pool);
        enum take t = TAKE_NONE;
        if (self && (self->tick + 1) % INJECT_EVERY != 0) {
            self->tick++; /* inject_due's count */
            t = job_take_own(self, f);
            if (t == TAKE_NONE)
                self->tick--;
        }
        if (t == TAKE_RAN) {
            /* We ran f ourselves: DONE, as future_outcome would find; its
             * outcome and result were written by this thread. */
            int outcome = f->w.outcome;
            if (outcome == 0 && result)
                *result = f->result;
            return outcome;
        }
        if (t == TAKE_NONE) {
            err = wait_work(f->pool, awaited_one(&f->w), deadline_after(timeout_ns));
            if (err != 0)
                return err;
        }
    }
    return future_outcome(f, result);
}

int cp_future_wait(cp_future *f, void **result)
{
    return future_wait(f, UINT64_MAX, false, result);
}

int cp_future_wait_timeout(cp_future *f, uint64_t timeout_ns, void **result)
{
    return future_wait(f, timeout_ns, true, result);
}

int cp_future_wait_any(cp_future *const *futures, size_t n, uint64_t timeout_ns,
                       size_t *index)
{
    if (!futures || n == 0)
        return CP_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!futures[i] || futures[i]->pool != futures[0]->pool)
            return CP_EINVAL;
    struct awaited a = {.one = NULL, .futures = futures, .n = n};
    size_t first = awaited_first_final(&a);
    if (first == n) {
        int err = wait_refused(&a, timeout_ns);
        if (err == 0)
            err = wait_work(futures[0]->pool, a, deadline_after(timeout_ns));
        if (err != 0)
            return err;
        first = awaited_first_final(&a);
    }
    if (index)
        *index = first;
    return 0;
}

bool cp_future_done(const cp_future *f)
{
    return f && work_final(&f->w);
}

int cp_future_cancel(cp_future *f)
{
    if (!f)
        return CP_EINVAL;
    /* In a child of fork(), a job not final at the fork never will be: no
     * worker is there to run it, nor the cancel on a thread of the parent
     * that may have been deciding (ST_CANCELLING). (The job's copy of the
     * generation: a job outlives its pool.) */
    if (!work_final(&f->w) && forked_away(&f->fork_generation))
        return CP_ESHUTDOWN;
    /* The pool is touched only under a reference (below): once the job is
     * ours, the worker that dequeues it may finish the pool's accounting
     * and the pool be freed. */
    uint32_t s = atomic_load_explicit(&f->w.state, memory_order_acquire);
    for (;;) {
        uint32_t st = s & ST_MASK;
        if (st == ST_CANCELLING)
            st = (s = job_settled(f)) & ST_MASK; /* another cancel deciding */
        if (st == ST_CANCELLED || st == ST_DROPPING)
            return 0; /* another cancel won */
        if (st != ST_PENDING)
            return CP_EBUSY;
        /* seq_cst: the cancel's store of the store-buffering pair with
         * job_take_own (see there); also acquire: we take the payload over
         * from the submitter. CANCELLING, not final: waiters keep waiting,
         * and so nobody may free f while we still use it below. */
        if (atomic_compare_exchange_weak_explicit(&f->w.state, &s,
                                                  (s & ~ST_MASK) | ST_CANCELLING,
                                                  memory_order_seq_cst,
                                                  memory_order_acquire))
            break;
    }
    /* seq_cst: the cancel's load of the pair. Taken by its waiter, who may
     * be running it already: back to PENDING, keeping the flags waiters add
     * meanwhile, unless the waiter has finished it and stored its final
     * state over ours (see job_take_own). relaxed: nothing to publish. */
    if (atomic_load_explicit(&f->taken, memory_order_seq_cst)) {
        s = atomic_load_explicit(&f->w.state, memory_order_relaxed);
        while ((s & ST_MASK) == ST_CANCELLING &&
               !atomic_compare_exchange_weak_explicit(&f->w.state, &s,
                                                      s - ST_CANCELLING + ST_PENDING,
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
            ;
        return CP_EBUSY;
    }
    /* Won. Our finish wakes the workers that sleep waiting for f on the
     * pool's epoch (wake_sleepers), so we hold the pool's memory until
     * then; taken here, where the pool is still alive: f is counted in it,
     * and a worker that dequeues f waits while it is CANCELLING
     * (job_settled). relaxed: work_finish's release below orders it. */
    cp_pool *pool = f->pool;
    atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
    /* The payload is ours alone now: take it out, make f final (the last
     * thing we do to f; work_finish wakes its waiters; its release orders
     * the reference above before whatever a worker that acquires the final
     * state does next, the end of the pool included), then drop it. The
     * drop may run user code (free_value), which may so wait for anything:
     * for f (CP_ECANCELED at once), or for a job that waits for f. */
    struct payload p = payload_take(f);
    work_finish(pool, &f->w, ST_CANCELLING, ST_CANCELLED, 0);
    pool_unref(pool);
    payload_drop(p);
    return 0;
}

void cp_future_free(cp_future *f)
{
    if (f)
        future_let_go(f, ST_FREED);
}

/* ------------------------------------------------------------------------ */
/* Frame tasks                                                               */

/* Whether some worker of the pool is idle: searching for work (to run
 * or, helping, while it waits) or parked. relaxed: a hint for where to put
 * a new task. A stale answer costs only parallelism: a task kept private
 * while a worker turns idle is still run, by its spawner, and the
 * spawner's next spawn sees the idle worker. The counts are read without a
 * branch between them (`|`, not `||`): it runs for every spawn and sync,
 * and all sit in one cache line. */
static bool workers_idle(const cp_pool *pool)
{
    return (atomic_load_explicit(&pool->searching, memory_order_relaxed) |
            atomic_load_explicit(&pool->waiters, memory_order_relaxed) |
            atomic_load_explicit(&pool->helping, memory_order_relaxed)) != 0;
}

/* Frame tasks. A worker's task is queued on its deque, where thieves can take
 * it, only when some worker is idle; while every worker is busy there is
 * nobody to take it, and it stays private: recorded on the spawner's borrow
 * stack and nowhere else, spawned and synced without one atomic
 * read-modify-write or fence (as in the private deques of Acar, Charguéraud
 * and Rainey, PPoPP 2013, here with the idle workers' counts standing in for
 * their steal requests). When a spawn or a sync finds a worker idle, the
 * spawner offers its oldest private task, which in divide-and-conquer code
 * is the largest (as Lace moves its split point); it offers nothing while
 * its deque still holds a task for the idle to take. A worker about to wait
 * offers its private tasks too: what it waits for may depend on them.
 * Cilk-style fork-join spawns and syncs far more often than workers go
 * idle, so idle workers still find work quickly. */

static struct task *task_of(cp__borrow *b)
{
    return (struct task *)((char *)b - offsetof(struct task, borrow));
}

/* The private task after t (newer). relaxed: owner only. */
static struct task *priv_next(const struct task *t)
{
    return (struct task *)atomic_load_explicit(&t->w.next, memory_order_relaxed);
}

static void priv_set_next(struct task *t, struct task *next)
{
    atomic_store_explicit(&t->w.next, &next->w, memory_order_relaxed);
}

/* Link the private tasks newer than priv_linked, walking the borrow stack
 * down from its top (every borrow on it is a frame task's), and make the
 * newest the last linked. Each private task is linked once; the walk also
 * passes the other borrows between them (tasks running inline, offered
 * ones, another pool's), which later walks may pass again. Offers are rare
 * next to spawns, so this stays off the spawn path. */
static void priv_link(struct worker *self)
{
    struct task *last = self->priv_linked, *newer = NULL;
    for (cp__borrow *b = cp__context_borrow_top(); newer != last; b = b->prev) {
        struct task *t = task_of(b);
        if (t->w.kind != KIND_PRIVATE)
            continue;
        if (newer)
            priv_set_next(t, newer);
        else
            self->priv_linked = t;
        newer = t;
    }
}

/* Queue this worker's oldest private task on its deque, where idle workers
 * can take it. Returns whether there was one. Not in a child of fork(),
 * whose copy of the pool has no workers, whatever its idle counts say: a
 * task queued there could only be refused at its sync (sync_queued), and
 * kept private it runs there. */
static bool offer_private(struct worker *self)
{
    struct task *oldest = self->priv_oldest;
    if (!oldest || forked_away(&self->pool->fork_generation))
        return false;
    if (oldest == self->priv_linked)
        priv_link(self);
    self->priv_oldest = oldest == self->priv_linked ? NULL : priv_next(oldest);
    task_init(oldest, false, self->pool->fork_generation);
    enqueue(self->pool, self, &oldest->w);
    return true;
}

/* Offer our oldest private task if a worker is idle and our deque holds
 * nothing it could take already: one published task at a time is enough.
 * pool is self's, which a spawn has at hand (not loaded again). */
static inline __attribute__((always_inline)) void
offer_to_the_idle(struct worker *self, const cp_pool *pool)
{
    if (workers_idle(pool) && cp__deque_size(&self->deque) == 0)
        offer_private(self);
}

/* Take t, the newest private task (it is being synced), off the private
 * tasks. The one before it is the nearest private task down the borrow
 * stack, usually the next; it is looked for only when t was linked. The
 * oldest is always linked (priv_linked is never below it), so a task that
 * is not the last linked is not the oldest either: one comparison for most
 * syncs. */
static void priv_remove_newest(struct worker *self, struct task *t)
{
    if (t == self->priv_linked) {
        if (t == self->priv_oldest) {
            self->priv_oldest = NULL;
        } else {
            cp__borrow *b = t->borrow.prev;
            while (task_of(b)->w.kind != KIND_PRIVATE)
                b = b->prev;
            self->priv_linked = task_of(b);
        }
    }
    /* No longer one to offer, nor to link: it runs now. */
    t->w.kind = KIND_INLINE;
}

/* A spawn that is not a worker's own: bad arguments, a task spawned from
 * outside the pool, or a forked-away pool. */
static __attribute__((noinline)) int spawn_queued(cp_pool *pool, struct task *t,
                                                  cp_job_fn fn, void *arg)
{
    if (!pool || !t || !fn)
        return CP_EINVAL;
    if (worker_of(pool))
        return CP_ESHUTDOWN; /* only forked_away sends a worker here */
    int err = admit(pool, NULL);
    if (err != 0)
        return err;
    t->u.fn = fn;
    t->arg = arg;
    cp__context_borrow(&t->borrow);
    task_init(t, true, pool->fork_generation);
    enqueue(pool, NULL, &t->w);
    return 0;
}

int cp_spawn(cp_pool *pool, cp_task *task, cp_job_fn fn, void *arg)
{
    struct task *t = (struct task *)task;
    struct worker *self = this_worker;
    /* A worker's task is part of the job that spawns it, which stays counted
     * until the task is synced: it needs no count of its own. (pool is not
     * NULL here: a worker's pool never is.) */
    if (!self || self->pool != pool || !t || !fn || forked_away(&pool->fork_generation))
        return spawn_queued(pool, t, fn, arg);
    t->u.fn = fn;
    t->arg = arg;
    cp__context_borrow(&t->borrow);
    stat_bump(&self->submitted); /* admit counts the others */
    /* Private: no header to fill in until it is offered. */
    t->w.kind = KIND_PRIVATE;
    if (!self->priv_oldest)
        self->priv_oldest = self->priv_linked = t;
    offer_to_the_idle(self, pool);
    return 0;
}

/* Run a queued task its spawner took back, on the spawner's thread, on its
 * borrowed map (run_captured). */
static void *run_inline(struct worker *self, struct task *t)
{
    void *result = run_captured(t->borrow.map, false, t->u.fn, t->arg);
    stat_bump(&self->completed);
    return result;
}

/* Sync t, which was queued (offered, or spawned from outside the pool):
 * wait for it, running it ourselves if it is still on top of our deque. */
static __attribute__((noinline)) int sync_queued(struct task *t, void **result)
{
    if (!work_final(&t->w) && forked_away(&t->borrow.spare)) {
        /* A child of fork(), which has none of the pool's workers: nothing
         * would ever run the task here, nor end it where a worker took it
         * (a job of ours forked). The task is this process's own copy:
         * nobody else looks at it. */
        t->w.outcome = CP_ESHUTDOWN;
    } else if (!t->w.counted) {
        /* Queued by this worker on its own deque. Fast path: nobody took
         * it, it is on top of the deque. Anything above it (a submit's job,
         * items moved from the injection queue, work of jobs it helped with)
         * runs now, as help. */
        struct worker *self = this_worker;
        struct work *w;
        while (!work_final(&t->w) && (w = cp__deque_pop(&self->deque))) {
            if (w == &t->w) {
                t->u.result = run_inline(self, t);
                /* relaxed: no other thread looks at the task any more. */
                atomic_store_explicit(&t->w.state, ST_DONE, memory_order_relaxed);
                break;
            }
            run_work(self, w);
        }
        if (!work_final(&t->w))
            wait_work(self->pool, awaited_one(&t->w), 0);
    } else {
        wait_work(NULL, awaited_one(&t->w), 0);
    }
    cp__context_unborrow(&t->borrow);
    int outcome = t->w.outcome;
    if (outcome == 0 && result)
        *result = t->u.result;
    return outcome;
}

int cp_sync(cp_task *task, void **result)
{
    struct task *t = (struct task *)task;
    if (!t || !cp__context_may_sync(&t->borrow))
        return CP_EINVAL;
    if (t->w.kind != KIND_PRIVATE)
        return sync_queued(t, result);
    struct worker *self = this_worker;
    priv_remove_newest(self, t);
    /* Syncs may come without spawns for a while: offer here too. */
    offer_to_the_idle(self, self->pool);
    /* The borrow stays on top of the stack while the task runs, so that
     * syncs inside it of its spawner's other tasks are refused as out of
     * order; and it keeps the map alive (through the spawner's map, or a
     * reference of its own) until the unborrow after the run. So the run
     * borrows the map too, as run_task's does: handing it the borrow's
     * reference would save nothing, since while the borrow is on the stack
     * a change of the map takes a reference for it again. */
    void *r = run_captured(t->borrow.map, false, t->u.fn, t->arg);
    cp__context_unborrow(&t->borrow);
    stat_bump(&self->completed);
    if (result)
        *result = r;
    return 0;
}
