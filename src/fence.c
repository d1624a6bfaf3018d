/* fence.c - asymmetric fences with Linux membarrier (see fence.h).
 *
 * The process registers for MEMBARRIER_CMD_PRIVATE_EXPEDITED when the
 * library is loaded: registering with threads running waits for an RCU
 * grace period (milliseconds), which a dlopen into a busy process pays
 * once. Where the kernel refuses, cp__fence_ready() is false and the
 * callers keep their real fences. */
#include "config.h"

#include "fence.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Set once, by the constructor (see cp__fence_ready). */
atomic_bool cp__fence_registered;

static bool try_register(void)
{
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

/* Runs when the library is loaded. Leaves errno as it found it. */
static __attribute__((constructor)) void fence_register(void)
{
    int saved = errno;
    /* relaxed: see cp__fence_ready. */
    atomic_store_explicit(&cp__fence_registered, try_register(), memory_order_relaxed);
    errno = saved;
}

/* One try, in the order a failure calls for: registered, the call fails
 * only for want of memory (ENOMEM) or when the registration was lost
 * (EPERM, after a checkpoint and restore by an older CRIU: register again
 * and call again); then MEMBARRIER_CMD_GLOBAL (slower: it waits for every
 * CPU to pass a quiescent state), which needs no registration. */
bool cp__fence_try_all_threads(void)
{
    int saved = errno;
    bool ok = syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 ||
              (errno == EPERM && try_register() &&
               syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) ||
              syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0;
    errno = saved;
    return ok;
}

/* The barrier is needed, so a failure is not accepted: try again. */
void cp__fence_all_threads(void)
{
    while (!cp__fence_try_all_threads())
        sched_yield();
}
