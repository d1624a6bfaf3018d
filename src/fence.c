/* fence.c - the heavy side of the asymmetric fences (see fence.h). */
#include "config.h"

#include "fence.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

bool cp__fence_asymmetric;

static bool fence_try_register(void)
{
    return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

/* Runs when the library is loaded, before any of its calls can read
 * cp__fence_asymmetric (a caller that runs earlier, from another library's
 * constructor, sees false and fences in full: safe). Leaves errno as it
 * found it. */
static __attribute__((constructor)) void fence_register(void)
{
    int saved = errno;
    cp__fence_asymmetric = fence_try_register();
    errno = saved;
}

/* Registered, the barrier is needed, so a failure is not accepted: the call
 * fails only for want of memory (ENOMEM, try again) or when the
 * registration was lost (EPERM, after a checkpoint and restore by an older
 * CRIU: register again). If that fails, MEMBARRIER_CMD_GLOBAL (slower: it
 * waits for every CPU to pass a quiescent state) needs no registration. */
void cp__fence_heavy(void)
{
    if (!cp__fence_asymmetric) {
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
