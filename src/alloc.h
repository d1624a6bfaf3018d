/* alloc.h - the library's one door to the heap, with a test hook that makes a
 * chosen allocation fail.
 *
 * Every allocation in ctxpool goes through cp__malloc/cp__calloc so that tests
 * can make the Nth one fail and check that the call reports CP_ENOMEM, changes
 * nothing and leaks nothing. The hook costs a thread-local increment and
 * test per allocation.
 */
#ifndef CTXPOOL_ALLOC_H
#define CTXPOOL_ALLOC_H

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
 * every use after free. */
void *cp__alloc_small(size_t size);
void cp__free_small(void *ptr, size_t size);

/* Test hook: the nth allocation the calling thread makes from now on
 * (1 = the next one) returns NULL, once; 0 turns the hook off. Other
 * threads' allocations neither count nor fail. */
void cp__alloc_fail_nth(unsigned long nth);

/* Test hook: how many allocations the calling thread has made. */
unsigned long cp__alloc_count(void);

#endif /* CTXPOOL_ALLOC_H */
