/* fence.h - asymmetric fences: a full barrier run on every CPU that runs
 * one of the process's threads (Linux membarrier), so that the other side
 * of a Dekker-style handshake needs only a compiler barrier.
 *
 * Use: a fast path that runs often stores (or loads) with a compiler
 * barrier between its store and its load; a slow path that runs rarely
 * stores, calls cp__fence_all_threads, then loads. Either the slow path's
 * load sees the fast path's store, or the fast path's load sees the slow
 * path's store: the barrier lands on the fast path's CPU either after its
 * store (which the slow path's load then sees) or before it, and so before
 * its load too (which then sees the slow path's store, made before the
 * call). A thread not running when the barrier is sent passed one when it
 * was switched out. Each call interrupts every CPU that runs one of our
 * threads, so it belongs on paths that are rare by design. */
#ifndef CTXPOOL_FENCE_H
#define CTXPOOL_FENCE_H

#include <stdatomic.h>
#include <stdbool.h>

/* Set by fence.c's constructor when the library is loaded; read it
 * through cp__fence_ready. */
extern atomic_bool cp__fence_registered;

/* Whether cp__fence_all_threads may be counted on: the process registered
 * for MEMBARRIER_CMD_PRIVATE_EXPEDITED when the library was loaded. Fixed
 * from then on. Where it is false, the fast path must take a real fence.
 * Inline: a future's finish asks. */
static inline bool cp__fence_ready(void)
{
    /* relaxed: stored once, by the constructor; a caller that runs before
     * it (in another library's constructor) reads false, which is safe, but
     * a pair of callers must not ask separately and act on two answers:
     * each pool asks once, when it is made. */
    return atomic_load_explicit(&cp__fence_registered, memory_order_relaxed);
}

/* A full barrier on every CPU running one of our threads, and on ours.
 * Call only where cp__fence_ready() is true. Leaves errno as it was.
 * Tries until the kernel runs it: a kernel that refuses it for good (a
 * seccomp filter installed after the library was loaded) keeps the caller
 * spinning. */
void cp__fence_all_threads(void);

/* One try of cp__fence_all_threads: whether the barrier ran. For a caller
 * that has another way out when the kernel refuses it. */
bool cp__fence_try_all_threads(void);

#endif /* CTXPOOL_FENCE_H */
