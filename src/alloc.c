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
 * Every allocation decrements the countdown, and the one that brings it to
 * 0 fails: armed with n, the nth allocation from then on fails; off, it
 * starts at ULLONG_MAX, which no thread counts down in its life (64 bits
 * wide also where unsigned long is 32: at a set+reset's two allocations,
 * a 32-bit countdown runs out within minutes). The allocation after the
 * failure wraps it to ULLONG_MAX: off again. The same count tells
 * how many allocations the thread made since the countdown was last set
 * (`start` less the countdown, in unsigned arithmetic, across the wrap),
 * so a call pays one decrement for both.
 */
#include "alloc.h"
#include "key.h"

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_OFF ULLONG_MAX

__thread unsigned long long cp__alloc_countdown
    __attribute__((tls_model("initial-exec"))) = HOOK_OFF;
/* The countdown's value when last set, and the allocations counted before. */
static __thread unsigned long long start = HOOK_OFF, counted;
_Static_assert(HOOK_OFF >= UINT64_MAX, "the countdown must not run out in a thread's life");

void *cp__malloc(size_t size)
{
    return cp__alloc_should_fail() ? NULL : malloc(size);
}

void *cp__calloc(size_t count, size_t size)
{
    return cp__alloc_should_fail() ? NULL : calloc(count, size);
}

void *cp__calloc_aligned(size_t count, size_t size, size_t align)
{
    if (cp__alloc_should_fail() || (size && count > (SIZE_MAX - (align - 1)) / size))
        return NULL;
    /* aligned_alloc wants a multiple of align; a type's size is one. */
    size_t bytes = (count * size + align - 1) / align * align;
    void *p = aligned_alloc(align, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void cp__free(void *ptr)
{
    free(ptr);
}

void cp__alloc_fail_nth(unsigned long nth)
{
    counted += start - cp__alloc_countdown;
    start = cp__alloc_countdown = nth ? nth : HOOK_OFF;
}

unsigned long cp__alloc_count(void)
{
    return (unsigned long)(counted + (start - cp__alloc_countdown));
}

/* Small-object lists (alloc.h): a thread's lists are freed when it exits. */
__thread struct cp__small_cache cp__small
    __attribute__((tls_model("initial-exec")));
static void small_release(void *unused);
static cp__key small_key = CP__KEY_INIT(small_release);

static void small_release(void *unused)
{
    (void)unused;
    for (unsigned c = 0; c < CP__SMALL_CLASSES; c++) {
        for (struct cp__small_free *f = cp__small.head[c], *next; f; f = next) {
            next = f->next;
            free(f);
        }
        cp__small.head[c] = NULL;
        cp__small.count[c] = 0;
    }
    cp__small.registered = false;
}

void *cp__alloc_small_new(size_t size)
{
    if (cp__alloc_should_fail())
        return NULL;
    if (!cp__small_cached(size))
        return malloc(size);
    /* The whole class size, so any size of the class can reuse it. */
    return malloc((cp__small_class(size) + 1) * CP__SMALL_GRAIN);
}

void cp__free_small_slow(void *ptr, size_t size)
{
    if (cp__small_cached(size) && !cp__small.registered) {
        /* The thread's first keep (its lists are empty until it registers):
         * it may keep objects only once its exit will free them. Any
         * non-NULL value makes the destructor run. */
        cp__small.registered = cp__key_ready(&small_key) &&
                               pthread_setspecific(cp__key_of(&small_key), &cp__small) == 0;
        if (cp__small.registered) {
            cp__free_small(ptr, size);
            return;
        }
    }
    free(ptr);
}
