/* alloc.c - heap allocation with an injectable failure, for the tests.
 *
 * Why a hook and not a public allocator setter: users have not asked to swap
 * the allocator, and a process-wide setter raises questions (when may it be
 * changed, what frees memory from the old one) that nothing here needs. The
 * hook exists so that every allocation path can be failed on purpose.
 *
 * The hook is per thread: a test arms it on the thread that makes the call
 * it aims at, and allocations other threads make at the same time (a pool's
 * workers, a thread the call starts) neither count nor fail. Per-thread
 * state also keeps the hook free of shared cache lines on the hot path.
 *
 * Invariant: the countdown is 0 when the hook is off; a positive value n
 * means "the nth allocation from now on this thread fails". Only the
 * allocation that moves it from 1 to 0 fails.
 */
#include "alloc.h"

#include <stdlib.h>

static __thread unsigned long countdown
    __attribute__((tls_model("initial-exec")));
static __thread unsigned long allocations
    __attribute__((tls_model("initial-exec")));

static int should_fail(void)
{
    allocations++;
    return countdown != 0 && --countdown == 0;
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
    countdown = nth;
}

unsigned long cp__alloc_count(void)
{
    return allocations;
}
