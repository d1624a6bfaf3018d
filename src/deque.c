/* deque.c - the Chase-Lev work-stealing deque, in C11 atomics.
 *
 * Each pool worker owns one deque. The owner pushes and pops at the bottom
 * like a stack, with no atomic read-modify-write on its fast path; idle
 * workers steal the oldest item from the top. This is the algorithm of
 *
 *   D. Chase and Y. Lev, "Dynamic Circular Work-Stealing Deque", SPAA 2005,
 *
 * with the C11 memory orders of
 *
 *   N. M. Le, A. Pop, A. Cohen and F. Zappa Nardelli, "Correct and Efficient
 *   Work-Stealing for Weak Memory Models", PPoPP 2013,
 *
 * and the fixes found since: signed 64-bit indices (pop on an empty deque
 * makes bottom one less than top for a moment, and 2^63 operations never
 * wrap), slots that are atomics (a thief may read a slot the owner is
 * writing; it then throws the value away, but the access itself must not be
 * a data race), push reloading the buffer after it grew it, and old buffers
 * kept until destroy, since a thief may still be reading one.
 *
 * Why it is correct. The items in the deque are the indices top..bottom-1;
 * item i lives in slot i & mask of the current buffer. top only ever grows,
 * and only by a compare-and-swap, so whoever moves top from t to t+1 owns
 * item t, and no two threads can both move it: the CAS hands out each index
 * at most once. Thieves take items only through that CAS. The owner takes
 * items at the bottom without a CAS, which is safe as long as no thief can
 * be about to take the same index: pop first lowers bottom to b, then reads
 * top. Those two, and a thief's read of top then of bottom, are seq_cst, so
 * they sit in one total order S. Say the owner reads top t < b. A thief
 * whose read of top comes before the owner's in S reads a top t' <= t; its
 * CAS from t' succeeds only if top is still t', so t' == t and it takes
 * index t < b. A thief whose read of top comes after reads its bottom after
 * the owner's store of b in S, so it sees b or a value the owner stored
 * later; it sees index b as an item only once the owner has pushed a new
 * item there. Either way no thief takes the item the owner popped.
 * When t == b only one item is left and owner and thieves race for
 * it with the same CAS on top; exactly one wins, and the owner, win or lose,
 * puts bottom back to b+1 so the deque is empty and consistent (top == bottom).
 * A thief reads the slot before its CAS and uses the value only if the CAS
 * wins; a winning CAS proves top was still t, so the owner had not reused
 * slot t & mask (push never writes a slot whose index has not been taken,
 * and "taken" is a CAS the owner has acquired before it reuses the slot).
 *
 * Memory orders. Every atomic here and in the owner's push and pop (inline,
 * in deque.h) names its order and partner where it is used; in short:
 *
 *   field        operation               order     pairs with
 *   -----------  ----------------------  --------  ---------------------------
 *   bottom       push: store b+1         release   thief's acquire of bottom
 *   bottom       pop: store b-1          seq_cst   thief's seq_cst bottom load
 *   bottom       pop: put back b+1       release   thief's acquire of bottom
 *   bottom       steal: load             seq_cst   push/pop stores above
 *   top          push: load              acquire   thief's CAS (slot reuse)
 *   top          pop: load               seq_cst   pop's bottom store (order S)
 *   top          pop/steal: CAS t->t+1   seq_cst   each other; push's acquire
 *   top          steal: load             seq_cst   pop's bottom store (order S)
 *   buffer       grow: store new         release   thief's acquire of buffer
 *   buffer       steal: load             acquire   grow's release
 *   buffer       owner loads             relaxed   only the owner writes it
 *   slots        all loads and stores    relaxed   ordered by bottom/buffer
 *   bottom, top  size: loads             relaxed   an estimate only
 *
 * cp__deque_pop_marked (deque.h) is pop in the paper's own form: release
 * store of bottom, seq_cst fence, relaxed load of top, and the same CAS for
 * the last item. The argument above holds with the fence in S in place of
 * the seq_cst store and load: a thief's seq_cst load of bottom that misses
 * the store comes before the fence in S, its earlier load of top too, and
 * a load after a seq_cst fence sees the last seq_cst modification before
 * the fence in S or a later one (C11 7.17.3), so the owner's top is at
 * least the thief's. The fence also orders the caller's store to *mark
 * before its loads after the call: one serialising instruction for both.
 *
 * The fences of the paper, and ThreadSanitizer. Le et al. write pop as
 * "relaxed store bottom; seq_cst fence; relaxed load top" and steal as
 * "acquire load top; seq_cst fence; acquire load bottom", and push as
 * "relaxed slot store; release fence; relaxed store bottom". TSan does not
 * model atomic_thread_fence, so with those fences it would miss the
 * happens-before that carries an item's contents from the owner to a thief.
 * This file has no fences but cp__deque_pop_marked's (which orders no
 * data: its store of bottom is a release too): it puts the order on the
 * accesses themselves. The four accesses the seq_cst fences ordered (pop's
 * bottom store and top load, steal's top and bottom loads) are seq_cst
 * operations; together with the seq_cst CAS on top they belong to the
 * single total order S of C11 7.17.3, which is exactly the store-buffering
 * guarantee the argument above uses (a seq_cst load sees the last seq_cst store before it
 * in S, or a store that does not happen before that one). Push's release
 * fence becomes a release store of bottom. This is correct on real hardware
 * by the C11 model alone, and is no slower than the fences: on x86 the
 * seq_cst store is one locked XCHG, the same cost as the MFENCE it replaces,
 * and the loads are plain; on ARMv8 it is STLR/LDAR instead of DMB. Every
 * store to bottom is at least release, so whichever one a thief reads, it
 * synchronizes with the owner's earlier pushes without relying on release
 * sequences (whose same-thread rule C++20 dropped).
 *
 * Reclamation. Growth replaces the buffer, but a thief that loaded the old
 * pointer may still read from it (and will fail its CAS if the item moved
 * on). The owner never writes to a buffer again once it is replaced and
 * chains it on d->retired; all are freed by cp__deque_destroy, when no
 * other thread uses the deque. Growth doubles, so the retired buffers
 * together are smaller than the live one.
 */
#include "deque.h"

#include "alloc.h"
#include "ctxpool.h"

#include <stddef.h>
#include <stdint.h>

/* The thieves' top and the owner's bottom must not share a cache line. */
_Static_assert(offsetof(cp__deque, bottom) - offsetof(cp__deque, top) >=
                   CP__CACHE_LINE,
               "top and bottom share a cache line");

/* A power of two larger than this cannot be an int64_t capacity. */
#define MAX_LOG_CAPACITY 62

/* A buffer of the given capacity (a power of two), every slot NULL, or NULL
 * when memory ran out or the size does not fit in size_t. The slots are set
 * so that a thief that reads a slot no item was copied into (it then loses
 * its CAS) reads a defined value. */
static cp__deque_buffer *buffer_new(int64_t capacity)
{
    if ((uint64_t)capacity >
        (SIZE_MAX - sizeof(cp__deque_buffer)) / sizeof(_Atomic(void *)))
        return NULL;
    size_t size = sizeof(cp__deque_buffer) +
                  (size_t)capacity * sizeof(_Atomic(void *));
    cp__deque_buffer *a = cp__malloc(size);
    if (a == NULL)
        return NULL;
    a->mask = capacity - 1;
    a->next_retired = NULL;
    for (int64_t i = 0; i < capacity; i++)
        atomic_init(&a->slots[i], NULL); /* not yet shared */
    return a;
}

int cp__deque_init(cp__deque *d, unsigned log_capacity)
{
    if (d == NULL)
        return CP_EINVAL;
    if (log_capacity > MAX_LOG_CAPACITY)
        return CP_ENOMEM;
    cp__deque_buffer *a = buffer_new((int64_t)1 << log_capacity);
    if (a == NULL)
        return CP_ENOMEM;
    /* No other thread sees d yet: plain initialisation. */
    atomic_init(&d->top, 0); /* not yet shared */
    atomic_init(&d->bottom, 0); /* not yet shared */
    atomic_init(&d->buffer, a); /* not yet shared */
    d->retired = NULL;
    return 0;
}

void cp__deque_destroy(cp__deque *d)
{
    if (d == NULL)
        return;
    /* relaxed: no other thread uses d any more (see deque.h). */
    cp__free(atomic_load_explicit(&d->buffer, memory_order_relaxed));
    atomic_store_explicit(&d->buffer, NULL, memory_order_relaxed);
    while (d->retired != NULL) {
        cp__deque_buffer *next = d->retired->next_retired;
        cp__free(d->retired);
        d->retired = next;
    }
}

cp__deque_buffer *cp__deque_grow(cp__deque *d, cp__deque_buffer *a, int64_t t,
                                 int64_t b)
{
    int64_t capacity = a->mask + 1;
    if (capacity > INT64_MAX / 2)
        return NULL;
    cp__deque_buffer *bigger = buffer_new(2 * capacity);
    if (bigger == NULL)
        return NULL;
    /* relaxed: only the owner writes slots, and bigger is not yet published.
     * Copying from a t that thieves have since moved past copies items that
     * are already taken; harmless, since nobody can reach those indices. */
    for (int64_t i = t; i < b; i++)
        atomic_store_explicit(cp__deque_slot(bigger, i),
                              atomic_load_explicit(cp__deque_slot(a, i),
                                                   memory_order_relaxed),
                              memory_order_relaxed);
    /* release: pairs with the thief's acquire load of buffer, so a thief
     * that sees bigger also sees its mask and the copied slots. */
    atomic_store_explicit(&d->buffer, bigger, memory_order_release);
    a->next_retired = d->retired;
    d->retired = a;
    return bigger;
}

cp__steal cp__deque_steal(cp__deque *d, void **item)
{
    if (d == NULL || item == NULL)
        return CP__STEAL_EMPTY;
    /* seq_cst: in S before our load of bottom, against pop's seq_cst store of
     * bottom and load of top (see the file comment). Also acquire: pairs with
     * the CAS of the thief that moved top here. */
    int64_t t = atomic_load_explicit(&d->top, memory_order_seq_cst);
    /* seq_cst: sees pop's claim of an index if pop's read of top came before
     * our read of top in S. Also acquire: pairs with push's release store, so
     * the slots below bottom and the buffer they live in are visible. */
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_seq_cst);
    if (t >= b)
        return CP__STEAL_EMPTY;
    /* acquire: pairs with grow's release store; loaded after bottom so that
     * it is the buffer item t was pushed into or a later one. */
    cp__deque_buffer *a = atomic_load_explicit(&d->buffer, memory_order_acquire);
    /* relaxed: ordered by the acquire loads above; the value may be stale or
     * from a reused slot, in which case the CAS below fails. */
    void *x = atomic_load_explicit(cp__deque_slot(a, t), memory_order_relaxed);
    /* seq_cst: decides the race for index t against other thieves and
     * against pop's CAS for the last item; its release half pairs with
     * push's acquire load of top before it reuses the slot. Failure order
     * relaxed: on failure we return without using anything. */
    if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1,
                                                 memory_order_seq_cst,
                                                 memory_order_relaxed))
        return CP__STEAL_ABORT;
    *item = x;
    return CP__STEAL_OK;
}

