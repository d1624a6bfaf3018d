/* alloc.c - heap allocation with an injectable failure, for the tests.
 *
 * Why a hook and not a public allocator setter: users have not asked to swap
 * the allocator, and a process-wide setter raises questions (when may it be
 * changed, what frees memory from the old one) that nothing here needs. The
 * hook exists so that every allocation path can be failed on purpose.
 *
 * Invariant: the countdown is 0 when the hook is off; a positive value n means
 * "the nth allocation from now fails". Only the allocation that moves it from
 * 1 to 0 fails.
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>

/* countdown: relaxed everywhere: it orders nothing else, and a test arms it on
 * the thread that then makes the allocations it is aiming at. */
static atomic_ulong countdown;
/* allocations: a statistic for tests, relaxed for the same reason. */
static atomic_ulong allocations;

static int should_fail(void)
{
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    unsigned long n = atomic_load_explicit(&countdown, memory_order_relaxed);
    while (n != 0) {
        if (atomic_compare_exchange_weak_explicit(&countdown, &n, n - 1,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
            return n == 1;
    }
    return 0;
}

void *cp__malloc(size_t size)
{
    return should_fail() ? NULL : malloc(size);
}

void *cp__calloc(size_t count, size_t size)
{
    return should_fail() ? NULL : calloc(count, size);
}

void cp__free(void *ptr)
{
    free(ptr);
}

void cp__alloc_fail_nth(unsigned long nth)
{
    atomic_store_explicit(&countdown, nth, memory_order_relaxed);
}

unsigned long cp__alloc_count(void)
{
    return atomic_load_explicit(&allocations, memory_order_relaxed);
}
