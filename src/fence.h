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
 * milliseconds, which a dlopen into a busy process pays once), or when the
 * first pool is made if that comes first (cp__fence_init). Where the
 * kernel refuses, cp__fence_asymmetric is false and both sides use a full
 * fence, so every caller is correct either way, provided both sides of a
 * handshake see the same mode: a heavy side that read false fences only
 * its own thread, and a light side that read true fences nothing. The mode
 * is decided once and only ever goes from false to true, so a handshake
 * whose threads start after the decision (a pool's workers: cp_pool_new
 * decides first) sees one mode; one that may run across it (the context's:
 * its light side never reads the mode, and it takes that side only after
 * reading the mode true, see "The map lock") must not depend on a read
 * made before.
 */
#ifndef CTXPOOL_FENCE_H
#define CTXPOOL_FENCE_H

#include <stdatomic.h>
#include <stdbool.h>

/* Registered for the expedited membarrier: false until decided, then
 * fixed. relaxed loads: see cp__fence_init. */
extern atomic_bool cp__fence_asymmetric;

/* Decide the mode now if it is not decided yet: before a thread that
 * takes either side of a handshake starts. Cheap after the first call. */
void cp__fence_init(void);

/* The hot side's fence: a compiler barrier where the rare side fences for
 * both, else a full fence. */
static inline void cp__fence_light(void)
{
    if (__builtin_expect(atomic_load_explicit(&cp__fence_asymmetric,
                                              memory_order_relaxed), 1))
        atomic_signal_fence(memory_order_seq_cst);
    else
        atomic_thread_fence(memory_order_seq_cst);
}

/* The rare side's fence: a full barrier on every CPU running one of our
 * threads, or, without the registration, on this one. Some microseconds
 * (a system call and inter-processor interrupts). Leaves errno alone. */
void cp__fence_heavy(void);

#endif /* CTXPOOL_FENCE_H */
