/* fence.c - the heavy side of the asymmetric fences (see fence.h). */
#include "config.h"

#include "fence.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

atomic_bool cp__fence_asymmetric;
static pthread_once_t fence_once = PTHREAD_ONCE_INIT;

static bool fence_try_register(void)
{
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

/* Decides the mode, once. Leaves errno as it found it. relaxed store:
 * pthread_once publishes it to every caller of cp__fence_init, and
 * pthread_create to the threads those start. */
static void fence_decide(void)
{
    int saved = errno;
    atomic_store_explicit(&cp__fence_asymmetric, fence_try_register(),
                          memory_order_relaxed);
    errno = saved;
}

/* Runs when the library is loaded, while the process usually has one thread
 * (registering is cheap then), unless a pool was made earlier (a program's
 * own constructor may run first in a static link): cp_pool_new decided
 * then, before its workers started. */
static __attribute__((constructor)) void fence_register(void)
{
    pthread_once(&fence_once, fence_decide);
}

void cp__fence_init(void)
{
    pthread_once(&fence_once, fence_decide);
}

/* Registered, the barrier is needed, so a failure is not accepted: the call
 * fails only for want of memory (ENOMEM, try again) or when the
 * registration was lost (EPERM, after a checkpoint and restore by an older
 * CRIU: register again). If that fails, MEMBARRIER_CMD_GLOBAL (slower: it
 * waits for every CPU to pass a quiescent state) needs no registration. */
void cp__fence_heavy(void)
{
    if (!atomic_load_explicit(&cp__fence_asymmetric, memory_order_relaxed)) {
        atomic_thread_fence(memory_order_seq_cst);
        return;
    }
    int saved = errno;
    for (;;) {
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
            break;
        if (errno == EPERM && fence_try_register())
            continue;
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
            break;
        sched_yield();
    }
    errno = saved;
}
