/* fence.h - asymmetric fences: a store-then-load handshake whose fast side
 * pays no hardware fence.
 *
 * Dekker's handshake (each side writes its flag, then reads the other's)
 * needs a full fence between the write and the read on both sides. When one
 * side runs rarely and the other on a hot path, the hot side's fence can be
 * moved to the rare one: the hot side keeps only a compiler barrier
 * (cp__fence_light) and the rare side, between its write and its read,
 * makes every CPU that runs one of our threads execute a full barrier
 * (cp__fence_heavy: membarrier's MEMBARRIER_CMD_PRIVATE_EXPEDITED; a thread
 * not running passed one when it was switched out). Then either the hot
 * side's write is visible to the rare side's read, or the hot side's read,
 * which comes after the barrier, sees the rare side's write. Userspace RCU
 * and Folly's asymmetric barriers rest on the same guarantee.
 *
 * The process registers for the command when the library is loaded
 * (registering with threads running waits for an RCU grace period,
 * milliseconds, which a dlopen into a busy process pays once). Where the
 * kernel refuses, cp__fence_asymmetric is false and both sides use a full
 * fence, so every caller is correct either way.
 */
#ifndef CTXPOOL_FENCE_H
#define CTXPOOL_FENCE_H

#include <stdatomic.h>
#include <stdbool.h>

/* Registered for the expedited membarrier at load; never changes after. */
extern bool cp__fence_asymmetric;

/* The hot side's fence: a compiler barrier where the rare side fences for
 * both, else a full fence. */
static inline void cp__fence_light(void)
{
    if (__builtin_expect(cp__fence_asymmetric, 1))
        atomic_signal_fence(memory_order_seq_cst);
    else
        atomic_thread_fence(memory_order_seq_cst);
}

/* The rare side's fence: a full barrier on every CPU running one of our
 * threads, or, without the registration, on this one. Some microseconds
 * (a system call and inter-processor interrupts). Leaves errno alone. */
void cp__fence_heavy(void);

#endif /* CTXPOOL_FENCE_H */
