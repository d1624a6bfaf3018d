/* deque.h - a Chase-Lev work-stealing deque of pointers.
 *
 * One owner thread pushes and pops at the bottom; any number of thieves steal
 * from the top. The buffer grows on demand; retired buffers are kept until the
 * deque is destroyed, because a thief may still be reading one.
 *
 * Threads: cp__deque_push (and its two steps, cp__deque_reserve and
 * cp__deque_push_at), cp__deque_pop and cp__deque_pop_marked from the owner
 * only; cp__deque_steal and cp__deque_size from any thread; init and
 * destroy when no other thread uses the deque.
 *
 * The owner's push and pop are inline: the pool pushes and pops for every
 * job. deque.c's comment says why the algorithm is correct and tables the
 * memory order of every access, theirs included.
 */
#ifndef CTXPOOL_DEQUE_H
#define CTXPOOL_DEQUE_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctxpool.h"

#define CP__CACHE_LINE 64

typedef struct cp__deque_buffer cp__deque_buffer;
struct cp__deque_buffer {
    int64_t mask;                   /* capacity - 1; capacity a power of two */
    cp__deque_buffer *next_retired; /* owner only: the retired chain */
    _Atomic(void *) slots[];        /* relaxed: see deque.c's table */
};

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

static inline _Atomic(void *) *cp__deque_slot(cp__deque_buffer *a, int64_t i)
{
    return &a->slots[i & a->mask];
}

/* Owner, for push: replace a (holding items t..b-1) by a buffer twice as
 * large with the same items, and retire a. Returns the new buffer, or NULL
 * with nothing changed when memory ran out. */
cp__deque_buffer *cp__deque_grow(cp__deque *d, cp__deque_buffer *a, int64_t t,
                                 int64_t b);

/* Owner: push in two steps, for an owner that must know whether the push
 * fits before it commits to anything (the pool's submit fast path; and
 * cp__deque_push). cp__deque_reserve says whether the buffer has room for
 * one more item, without growing it, and where (*spot); cp__deque_push_at
 * then pushes item there. In between the owner must not push or pop;
 * thieves may run, and only make more room. */
typedef struct cp__deque_spot {
    int64_t b, t;
    cp__deque_buffer *a;
} cp__deque_spot;

static inline bool cp__deque_reserve(cp__deque *d, cp__deque_spot *spot)
{
    /* relaxed: only the owner writes bottom and buffer. */
    spot->b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    spot->a = atomic_load_explicit(&d->buffer, memory_order_relaxed);
    /* acquire: pairs with the seq_cst (so release) CAS of the thief that
     * moved top here: its read of the slot we are about to reuse happens
     * before our write to it in cp__deque_push_at. A stale (smaller) t only
     * makes the push grow early. */
    spot->t = atomic_load_explicit(&d->top, memory_order_acquire);
    return spot->b - spot->t <= spot->a->mask;
}

static inline void cp__deque_push_at(cp__deque *d, cp__deque_spot spot, void *item)
{
    /* relaxed: published by the release store of bottom below. */
    atomic_store_explicit(cp__deque_slot(spot.a, spot.b), item, memory_order_relaxed);
    /* release: pairs with the thief's seq_cst (so acquire) load of bottom:
     * the item, what it points to, and the buffer it lives in are visible to
     * a thief that sees the new bottom. */
    atomic_store_explicit(&d->bottom, spot.b + 1, memory_order_release);
}

/* Owner: push item (not NULL) at the bottom. 0 or CP_ENOMEM (deque unchanged). */
static inline int cp__deque_push(cp__deque *d, void *item)
{
    if (d == NULL || item == NULL)
        return CP_EINVAL;
    cp__deque_spot spot;
    if (!cp__deque_reserve(d, &spot)) {
        if (cp__deque_grow(d, spot.a, spot.t, spot.b) == NULL)
            return CP_ENOMEM;
        /* Reload: writing into the retired buffer would lose the item.
         * relaxed: only the owner writes buffer. */
        spot.a = atomic_load_explicit(&d->buffer, memory_order_relaxed);
    }
    cp__deque_push_at(d, spot, item);
    return 0;
}

/* Owner: take the most recently pushed item, or NULL when empty. */
static inline void *cp__deque_pop(cp__deque *d)
{
    if (d == NULL)
        return NULL;
    /* relaxed: only the owner writes bottom and buffer. */
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
    cp__deque_buffer *a = atomic_load_explicit(&d->buffer, memory_order_relaxed);
    /* seq_cst: claims index b before we look at top. Pairs with the thief's
     * seq_cst loads of top and bottom through the total order S: a thief
     * that reads top after our read of top below must see this bottom. */
    atomic_store_explicit(&d->bottom, b, memory_order_seq_cst);
    /* seq_cst: the other half of the store-buffering pair above; it cannot
     * be ordered before our store of bottom. */
    int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
    if (t > b) {
        /* Empty (t == b + 1). release: see the table; any store a thief may
         * read of bottom carries our earlier pushes. */
        atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
        return NULL;
    }
    /* relaxed: only the owner writes slots. */
    void *item = atomic_load_explicit(cp__deque_slot(a, b),
                                      memory_order_relaxed);
    if (t == b) {
        /* The last item: race the thieves for it on top. seq_cst: in S with
         * the thieves' CAS and loads, so exactly one CAS from t wins; failure
         * order relaxed, since on failure we use nothing we read. */
        if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1,
                                                     memory_order_seq_cst,
                                                     memory_order_relaxed))
            item = NULL; /* a thief took it */
        /* release: as above. Empty either way: top == bottom == b + 1. */
        atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
    }
    return item;
}

/* Owner: take the bottom item if it is `item`, having set *mark first; the
 * caller's half of a store-buffering pair on *mark (pool.c's
 * job_take_own). The pop is Le et al.'s own formulation, with its seq_cst
 * fence: the fence orders both stores before it, *mark and bottom, before
 * every load after it, the caller's loads after the call included, so one
 * fence serves the deque and the caller. Returns whether item was taken;
 * when it was not, *mark is false again. Who may read *mark must tolerate
 * a true seen while the item was not taken: cleared again, the mark says
 * nothing. */
static inline bool cp__deque_pop_marked(cp__deque *d, void *item, atomic_bool *mark)
{
    /* relaxed: only the owner writes bottom and buffer. */
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
    cp__deque_buffer *a = atomic_load_explicit(&d->buffer, memory_order_relaxed);
    /* relaxed: a first look, only to leave at once when item is not at the
     * bottom; the load after the fence decides. Only the owner writes the
     * slots, so the slot's value is the one the pop below would take. */
    int64_t t = atomic_load_explicit(&d->top, memory_order_relaxed);
    if (t > b || atomic_load_explicit(cp__deque_slot(a, b), memory_order_relaxed) != item)
        return false;
    /* *mark relaxed, bottom release (as every store of it, see deque.c's
     * table): the fence orders both before the loads below. */
    atomic_store_explicit(mark, true, memory_order_relaxed);
    atomic_store_explicit(&d->bottom, b, memory_order_release);
    /* seq_cst fence: a thief whose seq_cst load of bottom missed our store
     * comes before the fence in S, its load of top too, so the load of top
     * below sees at least the top that thief saw (C11 7.17.3); the same
     * for the caller's loads against its partner's store of *mark. */
    atomic_thread_fence(memory_order_seq_cst);
    /* relaxed: ordered by the fence; nothing a thief wrote is read. */
    t = atomic_load_explicit(&d->top, memory_order_relaxed);
    if (t < b)
        return true;
    /* The last item, or none: as in pop, the last one is raced for with
     * the same CAS (seq_cst; failure relaxed: nothing read is used). */
    bool taken = t == b && atomic_compare_exchange_strong_explicit(
                               &d->top, &t, t + 1, memory_order_seq_cst,
                               memory_order_relaxed);
    /* release: as in pop. Empty either way: top == bottom == b + 1. */
    atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
    if (!taken)
        /* relaxed: the caller reads nothing into a cleared mark. */
        atomic_store_explicit(mark, false, memory_order_relaxed);
    return taken;
}

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
