/* alloc.h - the library's one door to the heap, with a test hook that makes a
 * chosen allocation fail.
 *
 * Every allocation in ctxpool goes through cp__malloc/cp__calloc so that tests
 * can make the Nth one fail and check that the call reports CP_ENOMEM, changes
 * nothing and leaks nothing. The hook costs a thread-local decrement and
 * test per allocation.
 */
#ifndef CTXPOOL_ALLOC_H
#define CTXPOOL_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

void *cp__malloc(size_t size);
void *cp__calloc(size_t count, size_t size);
/* As cp__calloc, for a type aligned beyond what malloc promises (align is a
 * power of two). Freed with cp__free. */
void *cp__calloc_aligned(size_t count, size_t size, size_t align);
void cp__free(void *ptr);

/* Whether freed objects may be kept for reuse: not under AddressSanitizer,
 * which must see every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define CP__KEEP_FREED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CP__KEEP_FREED 0
#endif
#endif
#ifndef CP__KEEP_FREED
#define CP__KEEP_FREED 1
#endif

/* Small objects whose size the caller knows when it frees them (items,
 * tokens, contexts, trie nodes): served from per-thread free lists, so the
 * hot paths of set, reset and copy do not go to malloc. An object may be
 * freed on any thread (it joins that thread's lists). size must be the size
 * given to cp__alloc_small. Uncached under AddressSanitizer, so that it sees
 * every use after free.
 *
 * The list operations are inline below, and so is the failure hook's
 * count: a set+reset makes two allocations and two frees, and as calls
 * they cost it a tenth of its instructions. alloc.c has the rest (malloc
 * and free, a thread's first use, its exit). Where size is a constant
 * (every call but the trie's nodes, sized by their room), the tests on it
 * fold away. */
#define CP__SMALL_GRAIN 16
#define CP__SMALL_MAX 512
#define CP__SMALL_CLASSES (CP__SMALL_MAX / CP__SMALL_GRAIN)
#define CP__SMALL_KEEP 32 /* objects kept per class and thread, at most */

struct cp__small_free {
    struct cp__small_free *next;
};

/* A thread's lists, one per 16-byte size class up to CP__SMALL_MAX. */
struct cp__small_cache {
    struct cp__small_free *head[CP__SMALL_CLASSES];
    unsigned count[CP__SMALL_CLASSES];
    bool registered; /* the exit destructor will run for this thread */
};

extern __thread struct cp__small_cache cp__small
    __attribute__((tls_model("initial-exec")));

/* The failure hook's countdown (see alloc.c), and its test: counts one
 * allocation, and says whether it is the one to fail. One decrement, which
 * also counts the allocations for cp__alloc_count. */
extern __thread unsigned long long cp__alloc_countdown
    __attribute__((tls_model("initial-exec")));

static inline bool cp__alloc_should_fail(void)
{
    return --cp__alloc_countdown == 0;
}

/* Whether size is served from the lists, and its class. */
static inline bool cp__small_cached(size_t size)
{
    return CP__KEEP_FREED && size != 0 && size <= CP__SMALL_MAX;
}

static inline size_t cp__small_class(size_t size)
{
    return (size + CP__SMALL_GRAIN - 1) / CP__SMALL_GRAIN - 1;
}

/* The paths of cp__alloc_small and cp__free_small that need the heap or
 * the thread's first use (alloc.c). */
void *cp__alloc_small_new(size_t size);
void cp__free_small_slow(void *ptr, size_t size);

static inline void *cp__alloc_small(size_t size)
{
    struct cp__small_free *f;
    if (!cp__small_cached(size) || !(f = cp__small.head[cp__small_class(size)]))
        return cp__alloc_small_new(size);
    if (cp__alloc_should_fail())
        return NULL;
    size_t c = cp__small_class(size);
    cp__small.head[c] = f->next;
    cp__small.count[c]--;
    return f;
}

static inline void cp__free_small(void *ptr, size_t size)
{
    if (!ptr)
        return;
    size_t c = cp__small_class(size);
    if (!cp__small_cached(size) || cp__small.count[c] >= CP__SMALL_KEEP ||
        !cp__small.registered) {
        cp__free_small_slow(ptr, size);
        return;
    }
    struct cp__small_free *f = ptr;
    f->next = cp__small.head[c];
    cp__small.head[c] = f;
    cp__small.count[c]++;
}

/* Test hook: the nth allocation the calling thread makes from now on
 * (1 = the next one) returns NULL, once; 0 turns the hook off. Other
 * threads' allocations neither count nor fail. cp_pool_new's creation of
 * a worker thread counts as one, and fails as pthread_create would. */
void cp__alloc_fail_nth(unsigned long nth);

/* Test hook: how many allocations the calling thread has made. */
unsigned long cp__alloc_count(void);

#endif /* CTXPOOL_ALLOC_H */
