/* deque.h - a Chase-Lev work-stealing deque of pointers.
 *
 * One owner thread pushes and pops at the bottom; any number of thieves steal
 * from the top. The buffer grows on demand; retired buffers are kept until the
 * deque is destroyed, because a thief may still be reading one.
 *
 * Threads: cp__deque_push and cp__deque_pop from the owner only;
 * cp__deque_steal and cp__deque_size from any thread; init and destroy when no
 * other thread uses the deque.
 */
#ifndef CTXPOOL_DEQUE_H
#define CTXPOOL_DEQUE_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CP__CACHE_LINE 64

typedef struct cp__deque_buffer cp__deque_buffer;

typedef struct cp__deque {
    /* Thieves' side: top, on its own cache line. */
    alignas(CP__CACHE_LINE) _Atomic int64_t top;
    /* Owner's side: bottom and the buffer. */
    alignas(CP__CACHE_LINE) _Atomic int64_t bottom;
    _Atomic(cp__deque_buffer *) buffer;
    cp__deque_buffer *retired; /* owner only: buffers replaced by growth */
} cp__deque;

/* Empty deque with room for 2^log_capacity items before it grows.
 * Returns 0 or CP_ENOMEM. */
int cp__deque_init(cp__deque *d, unsigned log_capacity);
void cp__deque_destroy(cp__deque *d);

/* Owner: push item (not NULL) at the bottom. 0 or CP_ENOMEM (deque unchanged). */
int cp__deque_push(cp__deque *d, void *item);

/* Owner: take the most recently pushed item, or NULL when empty. */
void *cp__deque_pop(cp__deque *d);

/* Any thread: take the oldest item. */
typedef enum cp__steal {
    CP__STEAL_EMPTY, /* nothing there */
    CP__STEAL_ABORT, /* lost a race with the owner or another thief: retry */
    CP__STEAL_OK
} cp__steal;
cp__steal cp__deque_steal(cp__deque *d, void **item);

/* Any thread: an estimate of the number of items (exact when quiescent).
 * Inline: the pool asks for every spawn and sync that sees a worker idle. */
static inline size_t cp__deque_size(const cp__deque *d)
{
    if (d == NULL)
        return 0;
    /* relaxed: an estimate; exact when no other thread is using the deque.
     * Bottom first: read in this order, top can only have grown since, so a
     * concurrent reading errs small. While pop runs, bottom may be one less
     * than top. */
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    int64_t t = atomic_load_explicit(&d->top, memory_order_relaxed);
    return b > t ? (size_t)(b - t) : 0;
}

#endif /* CTXPOOL_DEQUE_H */
