/* fence_refused_at_load.c - a process where the kernel refused the
 * membarrier registration when the library was loaded (fence.c).
 *
 * A plain program (no Criterion), so that it also runs under the
 * sanitizers. It exits 0 when every check held, else 1 with the failed
 * check on stderr.
 *
 * It defines syscall() itself, ahead of the C library's, and refuses
 * MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED with EPERM, as a kernel
 * without the command or a seccomp filter does; every other call goes to
 * the real system call. Then:
 * - the library's constructor leaves errno as it found it (a constructor
 *   of ours, which runs first, sets it);
 * - cp__fence_ready() is false, and neither a pool whose workers would turn
 *   light (cp__pool_light_after(0)) nor the first read of a context another
 *   thread has entered makes any membarrier call: they keep their real
 *   fences and the map lock (pool.c "Light workers", context.c "The map
 *   lock"). A membarrier call here would be a fence the caller counts on
 *   while the process never registered for it.
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
#include "fence.h"
#include "light_rounds.h"
#include "pool.h"
#include "watchdog.h"

/* Registrations refused, and membarrier calls of any other command. */
static atomic_int registers, other_calls;
/* errno when the library registered (set by set_errno before, if the
 * constructors ran in the order the test needs). */
static int errno_at_register;

/* Every membarrier call of the library comes here (fake_membarrier.h). */
static int membarrier_fake(long cmd)
{
    if (cmd == MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) {
        if (atomic_fetch_add(&registers, 1) == 0)
            errno_at_register = errno;
        return -EPERM;
    }
    atomic_fetch_add(&other_calls, 1);
    return 0;
}

/* Runs before the library's constructor (a priority runs before none), and
 * so before main. */
#define LOAD_ERRNO 4242
static __attribute__((constructor(101))) void set_errno(void)
{
    errno = LOAD_ERRNO;
}

/* ------------------------------------------------------------------------ */
/* The first read of a context another thread has entered                   */

struct writer {
    cp_context *c;
    cp_var *var;
    atomic_bool inside; /* release/acquire: the writer is in its run */
    atomic_bool stop;   /* release/acquire: the reader is done */
};

static int value;

static void *write_until_stopped(void *p)
{
    struct writer *w = p;
    atomic_store_explicit(&w->inside, true, memory_order_release);
    while (!atomic_load_explicit(&w->stop, memory_order_acquire)) {
        cp_token *t = NULL;
        CHECK(cp_var_set(w->var, &value, &t) == 0, "set");
        CHECK(cp_var_reset(w->var, t) == 0, "reset");
        cp_token_free(t);
    }
    return NULL;
}

static void *writer_thread(void *p)
{
    struct writer *w = p;
    CHECK(cp_context_run(w->c, write_until_stopped, w, NULL) == 0, "writer's run");
    return NULL;
}

static void context_reads(void)
{
    struct writer w = {.c = cp_context_new(), .var = cp_var_new("v", NULL)};
    CHECK(w.c != NULL && w.var != NULL, "cp_context_new, cp_var_new");
    pthread_t th;
    CHECK(pthread_create(&th, NULL, writer_thread, &w) == 0, "pthread_create");
    while (!atomic_load_explicit(&w.inside, memory_order_acquire))
        sched_yield();
    for (int i = 0; i < 100; i++) {
        cp_context *snap = cp_context_copy(w.c);
        CHECK(snap != NULL, "cp_context_copy");
        void *got = cp_context_get_or(snap, w.var, NULL);
        CHECK(got == NULL || got == &value, "a torn read: %p", got);
        cp_context_free(snap);
    }
    atomic_store_explicit(&w.stop, true, memory_order_release);
    CHECK(pthread_join(th, NULL) == 0, "pthread_join");
    cp_context_free(w.c);
    cp_var_free(w.var);
}

/* Rounds of a pool whose workers would turn light (light_rounds.h). */
#define POOL_ROUNDS 100

int main(void)
{
    /* Our constructor ran before the library's (the test links the
     * library statically: priorities order them), so the check below
     * sees what the library's did to errno. */
    CHECK(errno_at_register == LOAD_ERRNO, "the library registered with errno %d, before "
          "our constructor set it", errno_at_register);
    CHECK(errno == LOAD_ERRNO, "errno %d after the library was loaded, not %d", errno,
          LOAD_ERRNO);
    CHECK(atomic_load(&registers) >= 1, "the library did not try to register");
    CHECK(!cp__fence_ready(), "fences ready with the registration refused");
    watchdog_start("fence_refused_at_load", "a pool hung without membarrier");
    atomic_store(&other_calls, 0);

    light_rounds("unfenced", POOL_ROUNDS, 1);
    CHECK(atomic_load(&other_calls) == 0,
          "%d membarrier calls by a pool in a process that never registered",
          atomic_load(&other_calls));

    context_reads();
    CHECK(atomic_load(&other_calls) == 0,
          "%d membarrier calls by context reads in a process that never registered",
          atomic_load(&other_calls));
    printf("fence_refused_at_load: ok\n");
    return 0;
}
