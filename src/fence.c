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

/* The barrier is needed, so a failure is not accepted: registered, the
 * call fails only for want of memory (ENOMEM, try again) or when the
 * registration was lost (EPERM, after a checkpoint and restore by an older
 * CRIU: register again). If that fails, MEMBARRIER_CMD_GLOBAL (slower: it
 * waits for every CPU to pass a quiescent state) needs no registration. */
void cp__fence_all_threads(void)
{
    int saved = errno;
    for (;;) {
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
            break;
        if (errno == EPERM && try_register())
            continue;
        if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
            break;
        sched_yield();
    }
    errno = saved;
}
