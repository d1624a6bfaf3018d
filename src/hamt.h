/* hamt.h - a persistent hash array mapped trie of reference-counted items.
 *
 * The map behind every context: immutable nodes shared between versions, so a
 * copy is one reference and a set or delete copies only the path it changes.
 * See hamt.c for the design. Everything here may be used from any thread: a
 * node that anyone else can reach never changes, and reference counts are
 * atomic.
 */
#ifndef CTXPOOL_HAMT_H
#define CTXPOOL_HAMT_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An item is one (key, value) pair. The map does not know what keys and
 * values are: it compares keys by address and hash, and holds a reference on
 * each item it lists. The creator embeds the item in a larger struct if it
 * likes and sets release, which is called once when refs drops to zero. */
typedef struct cp__hamt_item {
    atomic_size_t refs;
    uint32_t hash;
    /* Until cp__hamt_item_publish: only the creating thread can reach the
     * item (it is in no map anyone else can reach), so its count changes
     * with plain loads and stores. */
    bool unpublished;
    const void *key;
    void *value;
    void (*release)(struct cp__hamt_item *item);
} cp__hamt_item;

/* Drop one reference from a reference count: true when it was the last,
 * and the caller frees. A caller that reads a count of 1 holds the only
 * reference, and nobody can take another (references are taken by holders,
 * or by borrowers whose lender holds one for longer): it skips the
 * read-modify-write. acquire (on that load): pairs with the decrements by
 * which every former holder let go. acq_rel (on the decrement): release
 * orders this thread's uses of the object before it; acquire, on the last
 * one, makes every holder's uses happen before the free. */
static inline bool cp__last_reference(atomic_size_t *refs)
{
    return atomic_load_explicit(refs, memory_order_acquire) == 1 ||
           atomic_fetch_sub_explicit(refs, 1, memory_order_acq_rel) == 1;
}

/* Initialise an item with one reference (the caller's). unpublished: the
 * item stays on this thread until cp__hamt_item_publish (see above).
 * Inline, as cp__hamt_item_publish: every set makes an item. */
static inline void cp__hamt_item_init(cp__hamt_item *item, uint32_t hash,
                                      const void *key, void *value,
                                      void (*release)(cp__hamt_item *),
                                      bool unpublished)
{
    atomic_init(&item->refs, 1); /* not yet shared */
    item->unpublished = unpublished;
    item->hash = hash;
    item->key = key;
    item->value = value;
    item->release = release;
}

/* Take one more reference on item; the caller holds one already. Inline:
 * every set takes one for the map. */
static inline void cp__hamt_item_incref(cp__hamt_item *item)
{
    /* relaxed: the caller's own reference keeps item alive; taking another
     * orders nothing (see "Reference counting" in hamt.c). An unpublished
     * item has no other thread to race with: a plain load and store do. */
    if (item->unpublished)
        atomic_store_explicit(&item->refs,
                              atomic_load_explicit(&item->refs, memory_order_relaxed) + 1,
                              memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&item->refs, 1, memory_order_relaxed);
}

void cp__hamt_item_decref(cp__hamt_item *item); /* NULL: no-op */

/* An unpublished item goes into a map that other threads may reach once
 * the caller publishes the map (with release semantics): drop the
 * creator's reference, which the map's keeps the item alive, with plain
 * stores, and end its unpublished state. */
static inline void cp__hamt_item_publish(cp__hamt_item *item)
{
    /* relaxed load and store: no other thread can reach the item yet, so
     * none can change the count between them; the caller's publication of
     * the map orders them (and unpublished) before any other thread's use. */
    size_t refs = atomic_load_explicit(&item->refs, memory_order_relaxed);
    assert(item->unpublished && refs > 1);
    atomic_store_explicit(&item->refs, refs - 1, memory_order_relaxed);
    item->unpublished = false;
}

typedef struct cp__hamt_node cp__hamt_node;

/* A map is a value: a root (NULL when empty) and a count. Whoever holds a
 * cp__hamt holds one reference on its root. */
typedef struct cp__hamt {
    cp__hamt_node *root;
    size_t count;
} cp__hamt;

#define CP__HAMT_EMPTY ((cp__hamt){NULL, 0})

/* Take / drop one reference on m's root. */
void cp__hamt_incref(cp__hamt m);
void cp__hamt_decref(cp__hamt m);
/* Take / drop n references on m's root at once (one atomic operation). */
void cp__hamt_incref_n(cp__hamt m, size_t n);
void cp__hamt_decref_n(cp__hamt m, size_t n);

/* The item for key, or NULL. Borrowed: valid while m is held. */
cp__hamt_item *cp__hamt_find(cp__hamt m, uint32_t hash, const void *key);

/* A new map: m with item for item->key (replacing any item for that key).
 * If m already maps the key to an item with the same value, *out is m itself
 * (one more reference). Returns 0 with a new reference in *out, which holds
 * its own reference on item; or CP_ENOMEM with *out untouched. m is unchanged
 * and still held by the caller either way. */
int cp__hamt_set(cp__hamt m, cp__hamt_item *item, cp__hamt *out);

/* A new map: m without key. Returns 0 with a new reference in *out;
 * CP_ENOENT when m has no item for key, *out untouched; CP_ENOMEM with *out
 * untouched. m is unchanged and still held by the caller. */
int cp__hamt_delete(cp__hamt m, uint32_t hash, const void *key, cp__hamt *out);

/* As cp__hamt_set and cp__hamt_delete for a caller that then drops the old
 * map: *m becomes the new map, and the caller's reference to the old one is
 * used up. Nodes of the old map that nobody else holds are reused (changed
 * in place, or moved into a resized node) instead of copied, so entries they
 * keep see no reference count change (see "Reuse" in hamt.c). *old: the item
 * that left the map (replaced or deleted), with a reference for the caller,
 * or NULL; old must not be NULL, or that reference would be lost. On
 * failure (CP_ENOMEM; CP_ENOENT from a delete of an absent key), *m, its
 * nodes and *old are untouched. A set of a key that *m already
 * maps to an item with the same value returns CP__HAMT_SAME: *m is
 * untouched, item is not taken (the caller still holds it), and *old is
 * the item in the map, borrowed (valid while *m holds it).
 * Safe only while nobody can reach m's nodes without a reference of their
 * own: the caller holds no borrowed pointer to m's nodes, and no other
 * thread takes a reference to m's root meanwhile. Items found in m stay
 * valid: the given functions free none (the one that leaves is reported,
 * referenced). */
#define CP__HAMT_SAME 1 /* cp__hamt_set_given: the value is there already */
int cp__hamt_set_given(cp__hamt *m, cp__hamt_item *item, cp__hamt_item **old);
int cp__hamt_delete_given(cp__hamt *m, uint32_t hash, const void *key,
                          cp__hamt_item **old);

/* Iteration in trie order without allocation. The iterator borrows m: the
 * caller holds a reference for as long as it iterates. */
#define CP__HAMT_MAX_DEPTH 8 /* 7 levels of 5 bits cover 32 bits, + collisions */
typedef struct cp__hamt_iter {
    const cp__hamt_node *nodes[CP__HAMT_MAX_DEPTH];
    uint32_t pos[CP__HAMT_MAX_DEPTH];
    int depth; /* -1: finished */
} cp__hamt_iter;

void cp__hamt_iter_init(cp__hamt_iter *it, cp__hamt m);
cp__hamt_item *cp__hamt_iter_next(cp__hamt_iter *it); /* NULL at the end */

/* For tests and debugging: the shape of a map, and a check of every
 * invariant written in hamt.c. cp__hamt_check returns 0 when they hold, else
 * a negative number naming the first broken one. */
typedef struct cp__hamt_shape {
    size_t bitmap_nodes, array_nodes, collision_nodes, items;
    unsigned max_depth; /* nodes on the longest path from the root, root = 1 */
} cp__hamt_shape;

void cp__hamt_shape_of(cp__hamt m, cp__hamt_shape *shape);
int cp__hamt_check(cp__hamt m);

/* Test hook: count bits with the processor's instruction where it has one
 * (on: the default) or in plain C (off). Call it while no other thread uses
 * a map. */
void cp__hamt_hardware_popcount(bool on);

#endif /* CTXPOOL_HAMT_H */
