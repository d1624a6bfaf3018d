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

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

void *cp__calloc_aligned(size_t count, size_t size, size_t align)
{
    if (should_fail() || (size && count > (SIZE_MAX - (align - 1)) / size))
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
    countdown = nth;
}

unsigned long cp__alloc_count(void)
{
    return allocations;
}

/* Small-object lists: one per 16-byte size class up to SMALL_MAX, at most
 * SMALL_KEEP objects each; a thread's lists are freed when it exits. */
#define SMALL_GRAIN 16
#define SMALL_MAX 512
#define SMALL_CLASSES (SMALL_MAX / SMALL_GRAIN)
#define SMALL_KEEP 32

struct small_free {
    struct small_free *next;
};

struct small_cache {
    struct small_free *head[SMALL_CLASSES];
    unsigned count[SMALL_CLASSES];
    bool registered; /* the exit destructor will run for this thread */
};

static __thread struct small_cache small
    __attribute__((tls_model("initial-exec")));
static pthread_key_t small_key;
static pthread_once_t small_key_once = PTHREAD_ONCE_INIT;
static int small_key_error;

static void small_release(void *unused)
{
    (void)unused;
    for (unsigned c = 0; c < SMALL_CLASSES; c++) {
        for (struct small_free *f = small.head[c], *next; f; f = next) {
            next = f->next;
            free(f);
        }
        small.head[c] = NULL;
        small.count[c] = 0;
    }
    small.registered = false;
}

static void small_key_create(void)
{
    small_key_error = pthread_key_create(&small_key, small_release);
}

/* cp__free_small on a thread not registered yet: a thread may keep objects
 * only once its exit will free them. Out of line, so that cp__free_small
 * stays a leaf that saves no registers. */
static __attribute__((noinline)) void free_unregistered(void *ptr, size_t size)
{
    pthread_once(&small_key_once, small_key_create);
    /* Any non-NULL value makes the destructor run at thread exit. */
    small.registered = !small_key_error &&
                       pthread_setspecific(small_key, &small) == 0;
    if (small.registered)
        cp__free_small(ptr, size);
    else
        free(ptr);
}

static size_t small_class(size_t size)
{
    return (size + SMALL_GRAIN - 1) / SMALL_GRAIN - 1;
}

void *cp__alloc_small(size_t size)
{
    if (should_fail())
        return NULL;
    if (!CP__KEEP_FREED || size > SMALL_MAX || size == 0)
        return malloc(size);
    size_t c = small_class(size);
    struct small_free *f = small.head[c];
    if (f) {
        small.head[c] = f->next;
        small.count[c]--;
        return f;
    }
    /* The whole class size, so any size of the class can reuse it. */
    return malloc((c + 1) * SMALL_GRAIN);
}

void cp__free_small(void *ptr, size_t size)
{
    if (!ptr)
        return;
    if (!CP__KEEP_FREED || size > SMALL_MAX || size == 0) {
        free(ptr);
        return;
    }
    size_t c = small_class(size);
    if (small.count[c] >= SMALL_KEEP) {
        free(ptr);
        return;
    }
    if (!small.registered) {
        free_unregistered(ptr, size);
        return;
    }
    struct small_free *f = ptr;
    f->next = small.head[c];
    small.head[c] = f;
    small.count[c]++;
}
