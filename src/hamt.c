/* hamt.c - a persistent hash array mapped trie (HAMT) of reference-counted
 * items: the map behind every context.
 *
 * Goals
 * -----
 * A context is a map from variables to values that must copy in O(1), because
 * every pool job starts in a copy of its submitter's context. A persistent
 * (immutable) trie gives that: a copy is one more reference on the root, and
 * a set or delete builds a new version that copies only the nodes on the path
 * to the changed key, sharing every other node with the old version. Lookup,
 * set and delete all visit at most CP__HAMT_MAX_DEPTH nodes, i.e. O(log32 n)
 * for well spread hashes. The design follows Phil Bagwell's "Ideal Hash
 * Trees" and the HAMT behind Python's contextvars (CPython Python/hamt.c).
 *
 * Cutting the hash
 * ----------------
 * Items carry a 32-bit hash. The trie consumes it five bits at a time from
 * the low end: the root indexes by bits 0-4 (shift 0), its children by bits
 * 5-9 (shift 5), and so on up to shift 30, which has only bits 30-31 left.
 * That makes 7 levels of 32-way branching: chunk(hash, shift) =
 * (hash >> shift) & 31. Two items that agree on all seven chunks have equal
 * hashes and can only be told apart by key, which is what collision nodes do.
 *
 * The three node kinds
 * --------------------
 * Every node has the same header (refs, kind, count, bits) followed by a
 * flexible array of slots. A slot is a tagged pointer: low bit 1 means the
 * slot holds a cp__hamt_item (a leaf), low bit 0 a child node, and 0 itself
 * is an empty slot (only array nodes have those). Items and nodes are at
 * least pointer aligned, so bit 0 of their address is free; the static
 * assertions below check this.
 *
 * - Bitmap node: the usual node. Bit c of `bits` is set when chunk c has an
 *   entry; the entries are stored densely in chunk order, so the entry for c
 *   sits at index popcount(bits & ((1 << c) - 1)). The node is allocated for
 *   exactly count = popcount(bits) slots. Holds 1 to 16 entries.
 * - Array node: 32 slots indexed directly by chunk, empty slots are 0, and
 *   count is the number of non-empty ones. Used where a bitmap node would
 *   exceed 16 entries: saves the popcount and, for large maps, the copying
 *   of a dense array that is almost full anyway. Unlike CPython's, our array
 *   slots may hold items directly (same tagged slots as a bitmap node), so a
 *   promotion does not wrap items in one-entry nodes.
 * - Collision node: the items (count >= 2) whose full 32-bit hashes are
 *   equal, stored in `bits`; its slots are all items, in insertion order, and
 *   it is searched linearly by key.
 *
 * Promotion and demotion, with hysteresis so that a key added and removed at
 * the boundary does not convert the node back and forth: a bitmap node that
 * would get a 17th entry becomes an array node (17 entries); an array node
 * stays one down to 16 entries and becomes a bitmap node when a delete would
 * leave it 15. So bitmap nodes hold 1..16 entries, array nodes 16..32.
 *
 * Keeping trees compact: every node except the root stands for a subtree of
 * at least two items, and a non-root bitmap node never has a single entry
 * that is an item or a collision node. A set builds such subtrees (two items
 * that share chunks get a chain of one-entry bitmap nodes, each necessary,
 * down to the level where they differ; two items with one hash get a
 * collision node directly in place of the first). A delete restores it: when
 * a subtree shrinks to one item, or to one collision node, that item or node
 * replaces the subtree in its parent (a collision node's position does not
 * depend on its level, so it can move up), and this repeats upwards. A
 * collision node reduced to one item becomes that item. The root is always a
 * bitmap or array node (the map is NULL when empty) and is exempt from the
 * "at least two items" rule.
 *
 * Depth bound: bitmap and array nodes live at shifts 0, 5, ..., 30 (7
 * levels); a child at shift 35 would need two different hashes agreeing on
 * all 32 bits. Collision nodes have no children. So a path from the root has
 * at most 7 + 1 = 8 nodes, which is CP__HAMT_MAX_DEPTH (checked below by a
 * static assertion), and every recursion here is at most 8 deep.
 *
 * Immutability
 * ------------
 * A node that anyone but its sole holder can reach is never written, so any
 * number of threads may read it without locks: changes copy the path
 * instead. The one exception is a node whose only holder gives it up to the
 * change (see "Reuse" below): nobody else can see it, so it is changed in
 * place or taken apart, which spares the reference counts of all it keeps.
 *
 * Reference counting and memory orders
 * ------------------------------------
 * A node holds one reference on each of its entries (child nodes and items);
 * a cp__hamt value holds one on its root. Counts are atomic because nodes and
 * items are shared between threads:
 * - incref is relaxed: a thread can only take a new reference through one it
 *   already holds, so the object is alive and nothing needs ordering.
 * - decref is acq_rel on the read-modify-write itself: the release half makes
 *   this thread's earlier reads of the object happen-before whichever
 *   decrement turns out to be the last; the acquire half, on that last
 *   decrement, makes all of them happen-before the free (or release()). We use
 *   acq_rel on the operation rather than a release decrement plus an acquire
 *   fence, because ThreadSanitizer does not model atomic_thread_fence.
 * - a holder that reads a count of 1 (acquire, pairing with every earlier
 *   decrement) holds the only reference, and nobody can take another: a new
 *   reference is taken only by a holder, or by a borrower (context.h) while
 *   its lender holds one that outlives the borrow. So it frees without the
 *   read-modify-write (cp__last_reference).
 * Handing a new map to another thread (publishing the writes that built its
 * nodes) is the caller's job: the context and pool code do it through their
 * own synchronisation.
 *
 * Invariants (cp__hamt_check returns the negative code in brackets)
 * ----------------------------------------------------------------
 * [-1]  the root is NULL exactly when count is 0, and is not a collision node
 * [-2]  a node's kind is one of the three
 * [-3]  no node or item is referenced with a reference count of 0
 * [-4]  a bitmap node has 1..16 entries and count == popcount(bits)
 * [-5]  a bitmap node has no empty slot
 * [-6]  an array node's count equals its number of non-empty slots
 * [-7]  an array node holds 16..32 entries
 * [-8]  a collision node has at least 2 items, all with the node's hash
 * [-9]  no key appears twice in a collision node
 * [-10] every item's (and collision node's) hash agrees with the chunks of
 *       the path that leads to it
 * [-11] a non-root bitmap node does not hold one single item or collision
 *       node (it would have been collapsed into its parent)
 * [-12] a bitmap or array node is never below shift 30 (depth bound)
 * [-13] the map's count equals the number of items in the trie
 * [-14] a node's entries fit in its room
 *
 * Debugging
 * ---------
 * cp__hamt_check(m) walks the whole trie and returns 0 or the code of the
 * first invariant it finds broken; tests call it after every change.
 * cp__hamt_shape_of(m) counts nodes of each kind and the longest path, so a
 * test can choose hashes that build an exact shape and assert it was built.
 * Items carry their own hash, so a test picks hashes directly.
 */
#include "hamt.h"

#include "alloc.h"
#include "ctxpool.h"

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* ------------------------------------------------------------------------ */
/* Nodes and slots                                                           */
/* ------------------------------------------------------------------------ */

enum node_kind { KIND_BITMAP = 1, KIND_ARRAY = 2, KIND_COLLISION = 3 };

#define CHUNK_BITS 5
#define BRANCHES 32         /* 1 << CHUNK_BITS */
#define LAST_SHIFT 30       /* the deepest shift with bits left in a hash */
#define BITMAP_MAX 16       /* a bitmap node holds at most this many entries */
#define ARRAY_MIN 16        /* an array node holds at least this many */
#define LEVELS 7            /* shifts 0, 5, ..., 30 */

/* A slot: 0 (empty), a node pointer (bit 0 clear) or an item pointer | 1. */
typedef uintptr_t slot;

struct cp__hamt_node {
    atomic_size_t refs;
    uint8_t kind;   /* enum node_kind */
    uint8_t room;   /* slots allocated: node_slots(), and in a bitmap node
                       one more when that is even and below BITMAP_MAX, a
                       slot the allocator's 16-byte steps would waste
                       anyway: an insert in place (see "Reuse") may use it.
                       So a bitmap node with count < room may take one
                       more entry */
    uint32_t count; /* entries: bitmap = popcount(bits), array = non-empty
                       slots, collision = items */
    uint32_t bits;  /* bitmap: which chunks are present; collision: the hash
                       shared by all items; array: unused (0) */
    slot entries[]; /* bitmap: count; array: BRANCHES; collision: count */
};

static_assert(LEVELS * CHUNK_BITS >= 32 && (LEVELS - 1) * CHUNK_BITS < 32,
              "LEVELS chunks of CHUNK_BITS bits exactly cover a 32-bit hash");
static_assert((LEVELS - 1) * CHUNK_BITS == LAST_SHIFT, "LAST_SHIFT");
static_assert(CP__HAMT_MAX_DEPTH == LEVELS + 1,
              "the deepest path is 7 bitmap/array nodes and a collision node");
static_assert(_Alignof(cp__hamt_item) >= 2 && _Alignof(cp__hamt_node) >= 2,
              "bit 0 of item and node addresses is free for the slot tag");
static_assert(BITMAP_MAX + 1 >= ARRAY_MIN && ARRAY_MIN - 1 <= BITMAP_MAX,
              "promotion and demotion land inside the other kind's range");

static bool slot_is_item(slot s)
{
    return (s & 1u) != 0;
}

static cp__hamt_item *slot_item(slot s)
{
    return (cp__hamt_item *)(s & ~(uintptr_t)1);
}

static cp__hamt_node *slot_node(slot s)
{
    return (cp__hamt_node *)s;
}

static slot item_slot(const cp__hamt_item *item)
{
    return (uintptr_t)item | 1u;
}

static slot node_slot(const cp__hamt_node *node)
{
    return (uintptr_t)node;
}

/* Whether slot s is a collision node. */
static bool slot_is_collision(slot s)
{
    return s != 0 && !slot_is_item(s) && slot_node(s)->kind == KIND_COLLISION;
}

/* The chunk of hash that indexes a bitmap or array node at shift. (Only
 * collision nodes sit deeper than LAST_SHIFT, and they are not indexed.) */
static unsigned chunk_of(uint32_t hash, unsigned shift)
{
    assert(shift <= LAST_SHIFT);
    return (hash >> shift) & (BRANCHES - 1);
}

/* Bits set in x. Every set, delete and lookup counts bits a few times. The
 * x86-64 baseline that distributions build for has no POPCNT instruction,
 * and without -mpopcnt compilers turn their builtin into a library call,
 * slower than the plain C (SWAR) below. x86 processors have had POPCNT
 * since 2008: it is used when the processor reports it (cpuid, once, when
 * the library is loaded). */
#if defined(__x86_64__)
/* Written when the library is loaded, before any thread can read it, and by
 * the test hook. */
static bool have_popcnt;

static bool cpu_has_popcnt(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_POPCNT);
}

static __attribute__((constructor)) void popcnt_detect(void)
{
    have_popcnt = cpu_has_popcnt();
}
#endif

void cp__hamt_hardware_popcount(bool on)
{
#if defined(__x86_64__)
    have_popcnt = on && cpu_has_popcnt();
#else
    (void)on;
#endif
}

static inline unsigned popcount32(uint32_t x)
{
#if defined(__x86_64__)
    if (__builtin_expect(have_popcnt, 1)) {
        uint32_t n;
        __asm__("popcntl %1, %0" : "=r"(n) : "rm"(x) : "cc");
        return n;
    }
#endif
    x = x - ((x >> 1) & UINT32_C(0x55555555));
    x = (x & UINT32_C(0x33333333)) + ((x >> 2) & UINT32_C(0x33333333));
    x = (x + (x >> 4)) & UINT32_C(0x0f0f0f0f);
    return (unsigned)((x * UINT32_C(0x01010101)) >> 24);
}

/* Index of chunk c's entry in a bitmap node with these bits. */
static unsigned bitmap_index(uint32_t bits, unsigned c)
{
    return popcount32(bits & ((UINT32_C(1) << c) - 1));
}

/* Number of slots allocated in node. */
static uint32_t node_slots(const cp__hamt_node *node)
{
    return node->kind == KIND_ARRAY ? BRANCHES : node->count;
}

static bool key_matches(const cp__hamt_item *item, uint32_t hash, const void *key)
{
    return item->hash == hash && item->key == key;
}

/* ------------------------------------------------------------------------ */
/* Reference counts                                                          */
/* ------------------------------------------------------------------------ */

/* Whether the caller's reference on an object with this count is the only
 * one. acquire: pairs with the acq_rel decrements by which every former
 * holder let go, so their uses happen before whatever the caller does next
 * (free the object, or reuse it). */
static bool sole_reference(const atomic_size_t *refs)
{
    return atomic_load_explicit(refs, memory_order_acquire) == 1;
}

/* Drop one reference on item; the last one calls item->release (if set).
 * NULL: no-op. */
void cp__hamt_item_decref(cp__hamt_item *item)
{
    if (item != NULL && cp__last_reference(&item->refs) && item->release != NULL)
        item->release(item);
}

/* Bytes of a node with nslots slots. */
static size_t node_size(uint32_t nslots)
{
    return sizeof(cp__hamt_node) + (size_t)nslots * sizeof(slot);
}

/* Free node's memory, not touching its entries. */
static void node_free_shell(cp__hamt_node *node)
{
    cp__free_small(node, node_size(node->room));
}

/* Take one more reference on node; the caller holds one already. */
static void node_incref(cp__hamt_node *node)
{
    /* relaxed: as cp__hamt_item_incref, the caller's reference keeps the node
     * alive and nothing else is ordered by taking another. */
    atomic_fetch_add_explicit(&node->refs, 1, memory_order_relaxed);
}

static void slot_decref(slot s);

/* Drop node's references on its entries and free it: its last holder let go. */
static void node_release(cp__hamt_node *node)
{
    uint32_t n = node_slots(node);
    for (uint32_t i = 0; i < n; i++)
        slot_decref(node->entries[i]);
    node_free_shell(node);
}

/* Drop one reference on node; the last one releases it. Recursion depth is
 * bounded by the trie depth. */
static void node_decref(cp__hamt_node *node)
{
    if (cp__last_reference(&node->refs))
        node_release(node);
}

static void slot_incref(slot s)
{
    if (s == 0)
        return;
    if (slot_is_item(s))
        cp__hamt_item_incref(slot_item(s));
    else
        node_incref(slot_node(s));
}

static void slot_decref(slot s)
{
    if (s == 0)
        return;
    if (slot_is_item(s))
        cp__hamt_item_decref(slot_item(s));
    else
        node_decref(slot_node(s));
}

void cp__hamt_incref(cp__hamt m)
{
    if (m.root != NULL)
        node_incref(m.root);
}

void cp__hamt_decref(cp__hamt m)
{
    if (m.root != NULL)
        node_decref(m.root);
}

void cp__hamt_incref_n(cp__hamt m, size_t n)
{
    /* relaxed: as node_incref. */
    if (m.root != NULL)
        atomic_fetch_add_explicit(&m.root->refs, n, memory_order_relaxed);
}

void cp__hamt_decref_n(cp__hamt m, size_t n)
{
    /* acq_rel: as cp__last_reference's read-modify-write. */
    if (m.root != NULL &&
        atomic_fetch_sub_explicit(&m.root->refs, n, memory_order_acq_rel) == n)
        node_release(m.root);
}

/* ------------------------------------------------------------------------ */
/* Node constructors                                                         */
/* ------------------------------------------------------------------------ */

/* Convention: every constructor returns a new node with one reference (the
 * caller's), or NULL when memory ran out. It takes its own reference on each
 * entry it stores and takes none of the caller's, so on failure the caller
 * has nothing to undo but what it made itself. */

/* A node of kind with room for nslots slots, header filled in, slots not
 * initialised (zeroed for array nodes). */
static cp__hamt_node *node_alloc(enum node_kind kind, uint32_t nslots,
                                 uint32_t count, uint32_t bits)
{
    uint32_t room = kind == KIND_BITMAP && nslots < BITMAP_MAX ? nslots | 1 : nslots;
    cp__hamt_node *node = cp__alloc_small(node_size(room));
    if (node == NULL)
        return NULL;
    if (kind == KIND_ARRAY)
        memset(node->entries, 0, (size_t)nslots * sizeof(slot));
    atomic_init(&node->refs, 1); /* not yet shared */
    node->kind = (uint8_t)kind;
    node->room = (uint8_t)room;
    node->count = count;
    node->bits = bits;
    return node;
}

/* Store s in dst and take a reference on it. */
static void put(slot *dst, slot s)
{
    slot_incref(s);
    *dst = s;
}

/* Store s in dst: a new reference, or, when move, the reference of a node
 * being taken apart (see "Reuse" above). */
static void carry(slot *dst, slot s, bool move)
{
    if (move)
        *dst = s;
    else
        put(dst, s);
}

static void carry_all(slot *dst, const slot *src, uint32_t n, bool move)
{
    for (uint32_t i = 0; i < n; i++)
        carry(&dst[i], src[i], move);
}

/* A copy of node (any kind) with slot idx replaced by s and count set to
 * count (array nodes gain one when an empty slot is filled). */
static cp__hamt_node *node_replaced(const cp__hamt_node *node, uint32_t idx,
                                    slot s, uint32_t count)
{
    uint32_t n = node_slots(node);
    cp__hamt_node *copy = node_alloc((enum node_kind)node->kind, n, count,
                                     node->bits);
    if (copy == NULL)
        return NULL;
    carry_all(copy->entries, node->entries, idx, false);
    put(&copy->entries[idx], s);
    carry_all(copy->entries + idx + 1, node->entries + idx + 1, n - idx - 1, false);
    return copy;
}

/* The constructors below build a new node from an old one. move: the old
 * node is being taken apart, and the entries it keeps move with their
 * references (the caller frees its shell); otherwise they are copied. */

/* Bitmap node b with s inserted for chunk c (not yet present). */
static cp__hamt_node *bitmap_inserted(const cp__hamt_node *b, unsigned c, slot s,
                                      bool move)
{
    uint32_t idx = bitmap_index(b->bits, c);
    cp__hamt_node *copy = node_alloc(KIND_BITMAP, b->count + 1, b->count + 1,
                                     b->bits | (UINT32_C(1) << c));
    if (copy == NULL)
        return NULL;
    carry_all(copy->entries, b->entries, idx, move);
    put(&copy->entries[idx], s);
    carry_all(copy->entries + idx + 1, b->entries + idx, b->count - idx, move);
    return copy;
}

/* A copy of bitmap node b without chunk c's entry, at index idx (b has at
 * least two). */
static cp__hamt_node *bitmap_removed(const cp__hamt_node *b, unsigned c, uint32_t idx)
{
    cp__hamt_node *copy = node_alloc(KIND_BITMAP, b->count - 1, b->count - 1,
                                     b->bits & ~(UINT32_C(1) << c));
    if (copy == NULL)
        return NULL;
    carry_all(copy->entries, b->entries, idx, false);
    carry_all(copy->entries + idx, b->entries + idx + 1, b->count - idx - 1, false);
    return copy;
}

/* Bitmap node b, reused (see "Reuse"), with item inserted for chunk c (not
 * yet present): b has room for one more entry. Returns b. The entries from
 * item's index on move up one slot by a loop, not memmove: a node holds at
 * most BITMAP_MAX entries, usually a few, cheaper to move one by one than a
 * call costs. Each entry is carried up by the loop because GCC turns a plain
 * copy loop that runs downwards into a call to memmove. Always inlined: in
 * set_here, a set's commonest path, a call of its own (and of
 * slot_incref) cost a fifth of the set's work in the trie. */
static inline __attribute__((always_inline)) cp__hamt_node *
bitmap_insert_here(cp__hamt_node *b, unsigned c, cp__hamt_item *item)
{
    cp__hamt_item_incref(item);
    slot s = item_slot(item);
    for (uint32_t i = bitmap_index(b->bits, c); i < b->count; i++) {
        slot next = b->entries[i];
        b->entries[i] = s;
        s = next;
    }
    b->entries[b->count] = s;
    b->bits |= UINT32_C(1) << c;
    b->count++;
    return b;
}

/* Bitmap node b, reused, without chunk c's entry, at index idx, whose
 * reference the caller has taken over. Returns b. (A loop for the entries
 * after idx, as in bitmap_insert_here.) */
static cp__hamt_node *bitmap_remove_here(cp__hamt_node *b, unsigned c, uint32_t idx)
{
    for (uint32_t i = idx + 1; i < b->count; i++)
        b->entries[i - 1] = b->entries[i];
    b->bits &= ~(UINT32_C(1) << c);
    b->count--;
    return b;
}

/* An array node with bitmap node b's entries plus s for chunk c (absent
 * from b): the promotion of a full bitmap node. */
static cp__hamt_node *array_from_bitmap(const cp__hamt_node *b, unsigned c, slot s,
                                        bool move)
{
    cp__hamt_node *a = node_alloc(KIND_ARRAY, BRANCHES, b->count + 1, 0);
    if (a == NULL)
        return NULL;
    uint32_t idx = 0;
    for (unsigned i = 0; i < BRANCHES; i++) {
        if (b->bits & (UINT32_C(1) << i))
            carry(&a->entries[i], b->entries[idx++], move);
    }
    put(&a->entries[c], s);
    return a;
}

/* A bitmap node with array node a's entries except chunk c's: the demotion
 * of an array node that falls below ARRAY_MIN. */
static cp__hamt_node *bitmap_from_array(const cp__hamt_node *a, unsigned c, bool move)
{
    uint32_t bits = 0;
    for (unsigned i = 0; i < BRANCHES; i++) {
        if (i != c && a->entries[i] != 0)
            bits |= UINT32_C(1) << i;
    }
    cp__hamt_node *b = node_alloc(KIND_BITMAP, a->count - 1, a->count - 1, bits);
    if (b == NULL)
        return NULL;
    uint32_t idx = 0;
    for (unsigned i = 0; i < BRANCHES; i++) {
        if (bits & (UINT32_C(1) << i))
            carry(&b->entries[idx++], a->entries[i], move);
    }
    return b;
}

/* Collision node c with item appended. */
static cp__hamt_node *collision_appended(const cp__hamt_node *c, cp__hamt_item *item,
                                         bool move)
{
    cp__hamt_node *copy = node_alloc(KIND_COLLISION, c->count + 1, c->count + 1,
                                     c->bits);
    if (copy == NULL)
        return NULL;
    carry_all(copy->entries, c->entries, c->count, move);
    put(&copy->entries[c->count], item_slot(item));
    return copy;
}

/* Collision node c (at least three items) without item idx. */
static cp__hamt_node *collision_removed(const cp__hamt_node *c, uint32_t idx,
                                        bool move)
{
    cp__hamt_node *copy = node_alloc(KIND_COLLISION, c->count - 1, c->count - 1,
                                     c->bits);
    if (copy == NULL)
        return NULL;
    carry_all(copy->entries, c->entries, idx, move);
    carry_all(copy->entries + idx, c->entries + idx + 1, c->count - idx - 1, move);
    return copy;
}

/* A collision node of two items with one hash. move_first: first's
 * reference comes from a node being taken apart; second gets a new one. */
static cp__hamt_node *collision_new(cp__hamt_item *first, cp__hamt_item *second,
                                    bool move_first)
{
    cp__hamt_node *c = node_alloc(KIND_COLLISION, 2, 2, first->hash);
    if (c == NULL)
        return NULL;
    carry(&c->entries[0], item_slot(first), move_first);
    put(&c->entries[1], item_slot(second));
    return c;
}

/* The smallest subtree at shift holding a and b, each an item or a collision
 * node, with different full hashes ha != hb that agree on every chunk above
 * shift: a chain of one-entry bitmap nodes down to the first shift where
 * their chunks differ (none if they differ at shift), ending in a bitmap node
 * with both. Because the hashes differ, they differ in some chunk at or below
 * LAST_SHIFT. Every node is allocated before a or b is stored, so a failure
 * leaves nothing to undo. move_a: a's reference comes from a node being
 * taken apart; b always gets a new one. */
static cp__hamt_node *pair_new(slot a, uint32_t ha, slot b, uint32_t hb,
                               unsigned shift, bool move_a)
{
    assert(ha != hb && shift <= LAST_SHIFT);
    unsigned bottom = shift;
    while (chunk_of(ha, bottom) == chunk_of(hb, bottom))
        bottom += CHUNK_BITS;
    unsigned ca = chunk_of(ha, bottom), cb = chunk_of(hb, bottom);
    cp__hamt_node *node = node_alloc(KIND_BITMAP, 2, 2,
                                     (UINT32_C(1) << ca) | (UINT32_C(1) << cb));
    if (node == NULL)
        return NULL;
    for (unsigned s = bottom; s > shift; s -= CHUNK_BITS) {
        cp__hamt_node *up = node_alloc(KIND_BITMAP, 1, 1,
                                       UINT32_C(1) << chunk_of(ha, s - CHUNK_BITS));
        if (up == NULL) {
            /* Free the chain made so far: shells, nothing stored below. */
            for (unsigned t = s; t < bottom; t += CHUNK_BITS) {
                cp__hamt_node *down = slot_node(node->entries[0]);
                node_free_shell(node);
                node = down;
            }
            node_free_shell(node);
            return NULL;
        }
        up->entries[0] = node_slot(node); /* up holds the reference */
        node = up;
    }
    cp__hamt_node *pair = node;
    for (unsigned s = shift; s < bottom; s += CHUNK_BITS)
        pair = slot_node(pair->entries[0]);
    carry(&pair->entries[ca < cb ? 0 : 1], a, move_a);
    put(&pair->entries[ca < cb ? 1 : 0], b);
    return node;
}

/* ------------------------------------------------------------------------ */
/* Lookup                                                                    */
/* ------------------------------------------------------------------------ */

/* The item for key, or NULL. Iterative: at each level the chunk selects one
 * slot; an item there either is the key or proves it absent. */
cp__hamt_item *cp__hamt_find(cp__hamt m, uint32_t hash, const void *key)
{
    const cp__hamt_node *node = m.root;
    unsigned shift = 0;
    while (node != NULL) {
        slot s;
        unsigned c;
        switch (node->kind) {
        case KIND_BITMAP:
            c = chunk_of(hash, shift);
            if (!(node->bits & (UINT32_C(1) << c)))
                return NULL;
            s = node->entries[bitmap_index(node->bits, c)];
            break;
        case KIND_ARRAY:
            s = node->entries[chunk_of(hash, shift)];
            if (s == 0)
                return NULL;
            break;
        default: /* KIND_COLLISION */
            if (node->bits != hash)
                return NULL;
            for (uint32_t i = 0; i < node->count; i++) {
                cp__hamt_item *item = slot_item(node->entries[i]);
                if (item->key == key)
                    return item;
            }
            return NULL;
        }
        if (slot_is_item(s)) {
            cp__hamt_item *item = slot_item(s);
            return key_matches(item, hash, key) ? item : NULL;
        }
        node = slot_node(s);
        shift += CHUNK_BITS;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Reuse of nodes nobody else holds                                          */
/* ------------------------------------------------------------------------ */

/* A set or delete walks down the path to the key "giving" each node on it
 * when its caller gives up its reference to it: the map's own caller gives
 * the root (cp__hamt_set_given and cp__hamt_delete_given); a node that is
 * reused gives its child on the path, since it replaces that slot.
 * A node given by its only holder is "mine" (sole_holder): nobody else can
 * reach it, so it is reused instead of copied. A slot is overwritten in
 * place, and a bitmap node gains an entry in its spare slot (room) or loses
 * one in place; a node that needs more room, or another kind, moves its
 * entries, references and all, into its replacement and its shell is
 * freed. Either way the entries it
 * keeps see no reference count change, and a set or reset in a map that is
 * not shared costs no atomic read-modify-write on its nodes. A node that is
 * not mine is copied as usual (and, if given, the given reference dropped),
 * and its children are not given: whatever a shared node leads to is
 * shared. Since only mine nodes give their children, every ancestor of a
 * mine node is mine and is changed in place (or, in a delete, collapses
 * into its one remaining entry and frees its shell), which allocates
 * nothing; the one allocation of a reuse happens before anything moves, so
 * a failure leaves the map as it was.
 *
 * The commonest reuse, a context setting or deleting one of its
 * variables, changes one node in place at the end of a path of nodes held
 * by nobody else; cp__hamt_set_given and cp__hamt_delete_given do that
 * first without the general walk (set_here, delete_here: a loop down the
 * path, then the change), and fall back to the walk (hamt_set,
 * hamt_delete) for everything else: a node on the path shared or a
 * collision node, a bitmap node to grow or an array node to shrink into
 * one, a map to empty, a collapse that would go on up the path. A
 * set+reset through them costs about 450 instructions (callgrind, the
 * library's part and the loop's) when the key sits at the root, and 660
 * one level down, where the walk took 880: there the set makes a node
 * for the key and another key's item whose first chunk is the same (one
 * variable in 32 of a context with two), and the reset takes it apart
 * again. The fast paths sit outside the walk's functions so that they
 * pay for none of the registers the walk saves.
 *
 * Reuse writes to published nodes, which is safe only because nobody else
 * can reach them: reference holders are counted, and the callers of the
 * given functions guarantee the rest (no pointer into the map held without
 * a reference, no reference taken meanwhile by another thread). */

/* What a set or delete did besides building the new subtree. */
struct change {
    bool given;           /* for cp__hamt_*_given: report old, referenced */
    bool added;           /* a set added a new key */
    /* The item replaced or deleted, if any; after SET_SAME, the item that
     * already holds the value (borrowed: no reference is taken). */
    cp__hamt_item *old;
};

/* Whether the caller gives node (give) and held its only reference. */
static bool sole_holder(const cp__hamt_node *node, bool give)
{
    return give && sole_reference(&node->refs);
}

/* old leaves the map. taken: the reference a reused node had on it passes to
 * ch; otherwise the old map still lists it and, for the given functions,
 * ch takes a reference of its own (before any given node is dropped, which
 * could free the old map). */
static void leave(struct change *ch, cp__hamt_item *old, bool taken)
{
    ch->old = old;
    if (ch->given && !taken)
        cp__hamt_item_incref(old);
}

/* The caller's given reference on node goes: a node taken apart (mine)
 * loses its shell, its entries having moved or left; any other given node
 * is dropped. */
static void drop_given(cp__hamt_node *node, bool give, bool mine)
{
    if (mine)
        node_free_shell(node);
    else if (give)
        node_decref(node);
}

/* node's replacement is copy, or node itself when changed in place. */
static void replace(cp__hamt_node *node, bool give, bool mine, cp__hamt_node *copy,
                    slot *out)
{
    if (copy != node)
        drop_given(node, give, mine);
    *out = node_slot(copy);
}

/* Replace node's slot idx by s and its count by count, taking over the
 * caller's reference on s: in place when mine (the slot's old reference has
 * been used up or passed on), else in a copy. false when memory ran out: s
 * is dropped and nothing else has changed. */
static bool slot_replaced(cp__hamt_node *node, uint32_t idx, slot s, uint32_t count,
                          bool give, bool mine, slot *out)
{
    cp__hamt_node *copy = node;
    if (mine) {
        node->entries[idx] = s;
        node->count = count;
    } else {
        copy = node_replaced(node, idx, s, count);
        slot_decref(s); /* copy holds it now, or it is freed */
        if (copy == NULL)
            return false;
    }
    replace(node, give, mine, copy, out);
    return true;
}

/* node is replaced by s, one of its entries (or a subtree made from one),
 * taken over from the caller. */
static void collapse(cp__hamt_node *node, bool give, bool mine, slot s, slot *out)
{
    drop_given(node, give, mine);
    *out = s;
}

/* Where the fast paths found a key's place: node, which only its parent
 * holds (the root: only the caller), as do all above it; the key's chunk
 * c there and the index of c's entry, an item (found), or that c has
 * none; node's parent (NULL for the root) and node's index in it. */
struct spot {
    cp__hamt_node *node, *parent;
    unsigned shift, c;
    uint32_t idx, parent_idx;
    bool found;
};

/* Walk down hash's path from root, through bitmap and array nodes held by
 * nobody else (see sole_holder: each is given by the one above), to the
 * first node that has no entry for hash's chunk or an item there. false:
 * the path meets a node that is shared or a collision node first, and
 * only the general walk can change it. Always inlined: sp stays in
 * registers, and a set+reset, whose path is mostly the root alone, pays
 * for no call. */
static inline __attribute__((always_inline)) bool path_walk(cp__hamt_node *root,
                                                             uint32_t hash,
                                                             struct spot *sp)
{
    cp__hamt_node *node = root, *parent = NULL;
    uint32_t parent_idx = 0;
    for (unsigned shift = 0;; shift += CHUNK_BITS) {
        if (node->kind == KIND_COLLISION || !sole_reference(&node->refs))
            return false;
        unsigned c = chunk_of(hash, shift);
        bool found;
        uint32_t idx = c;
        if (node->kind == KIND_BITMAP) {
            found = node->bits & (UINT32_C(1) << c);
            idx = bitmap_index(node->bits, c);
        } else { /* KIND_ARRAY */
            found = node->entries[c] != 0;
        }
        if (!found || slot_is_item(node->entries[idx])) {
            *sp = (struct spot){node, parent, shift, c, idx, parent_idx, found};
            return true;
        }
        parent = node;
        parent_idx = idx;
        node = slot_node(node->entries[idx]);
    }
}

/* ------------------------------------------------------------------------ */
/* Set                                                                       */
/* ------------------------------------------------------------------------ */

typedef enum set_result {
    SET_NEW,   /* *out is the new subtree (one reference, the caller's) */
    SET_SAME,  /* the key already maps to an identical value: no change */
    SET_NOMEM, /* memory ran out; nothing was changed or leaked */
} set_result;

static set_result node_set(cp__hamt_node *node, unsigned shift, cp__hamt_item *item,
                           bool give, struct change *ch, slot *out);

/* The entry that replaces e, an existing entry on item's path whose own
 * position is at shift (so a subtree made here starts at shift), once item is
 * set. give: e's parent is reused and gives e up. */
static set_result entry_set(slot e, unsigned shift, cp__hamt_item *item, bool give,
                            struct change *ch, slot *out)
{
    if (slot_is_item(e)) {
        cp__hamt_item *old = slot_item(e);
        if (key_matches(old, item->hash, item->key)) {
            if (old->value == item->value) {
                ch->old = old;
                return SET_SAME;
            }
            leave(ch, old, give);
            put(out, item_slot(item));
            return SET_NEW;
        }
        cp__hamt_node *sub = old->hash == item->hash
                                 ? collision_new(old, item, give)
                                 : pair_new(e, old->hash, item_slot(item),
                                            item->hash, shift, give);
        if (sub == NULL)
            return SET_NOMEM;
        ch->added = true;
        *out = node_slot(sub);
        return SET_NEW;
    }
    cp__hamt_node *node = slot_node(e);
    if (node->kind == KIND_COLLISION && node->bits != item->hash) {
        cp__hamt_node *sub = pair_new(e, node->bits, item_slot(item), item->hash,
                                      shift, give);
        if (sub == NULL)
            return SET_NOMEM;
        ch->added = true;
        *out = node_slot(sub);
        return SET_NEW;
    }
    return node_set(node, shift, item, give, ch, out);
}

/* Set item in the subtree rooted at node, which sits at shift. */
static set_result node_set(cp__hamt_node *node, unsigned shift, cp__hamt_item *item,
                           bool give, struct change *ch, slot *out)
{
    bool mine = sole_holder(node, give);
    cp__hamt_node *copy;

    if (node->kind == KIND_COLLISION) {
        /* Reached only with item->hash == node->bits (see entry_set). */
        for (uint32_t i = 0; i < node->count; i++) {
            cp__hamt_item *old = slot_item(node->entries[i]);
            if (old->key != item->key)
                continue;
            if (old->value == item->value) {
                ch->old = old;
                return SET_SAME;
            }
            leave(ch, old, mine);
            cp__hamt_item_incref(item); /* for the slot */
            return slot_replaced(node, i, item_slot(item), node->count, give, mine, out)
                       ? SET_NEW
                       : SET_NOMEM;
        }
        if (node->count == UINT32_MAX)
            return SET_NOMEM; /* cannot count one more */
        copy = collision_appended(node, item, mine);
        if (copy == NULL)
            return SET_NOMEM;
        ch->added = true;
        replace(node, give, mine, copy, out);
        return SET_NEW;
    }

    unsigned c = chunk_of(item->hash, shift);
    uint32_t idx;
    if (node->kind == KIND_BITMAP) {
        if (!(node->bits & (UINT32_C(1) << c))) {
            if (mine && node->count < node->room)
                copy = bitmap_insert_here(node, c, item);
            else if (node->count < BITMAP_MAX)
                copy = bitmap_inserted(node, c, item_slot(item), mine);
            else
                copy = array_from_bitmap(node, c, item_slot(item), mine);
            if (copy == NULL)
                return SET_NOMEM;
            ch->added = true;
            replace(node, give, mine, copy, out);
            return SET_NEW;
        }
        idx = bitmap_index(node->bits, c);
    } else { /* KIND_ARRAY */
        if (node->entries[c] == 0) {
            cp__hamt_item_incref(item); /* for the slot */
            if (!slot_replaced(node, c, item_slot(item), node->count + 1, give, mine,
                               out))
                return SET_NOMEM;
            ch->added = true;
            return SET_NEW;
        }
        idx = c;
    }

    slot sub;
    set_result r = entry_set(node->entries[idx], shift + CHUNK_BITS, item, mine, ch,
                             &sub);
    if (r != SET_NEW)
        return r;
    return slot_replaced(node, idx, sub, node->count, give, mine, out) ? SET_NEW
                                                                       : SET_NOMEM;
}

/* A result of set_here and delete_here: the general walk must do it. */
#define NOT_HERE 1000

/* set_here's end when item's chunk holds another key's item, in the slot
 * *e of a node nobody else holds: a node for the two (as entry_set makes,
 * at shift) takes the slot, the item moving into it. Out of line, so that
 * set_here's commoner ends save fewer registers. */
static __attribute__((noinline)) int set_beside(cp__hamt *m, slot *e, unsigned shift,
                                                cp__hamt_item *item,
                                                cp__hamt_item **old)
{
    cp__hamt_item *was = slot_item(*e);
    cp__hamt_node *sub = was->hash == item->hash
                             ? collision_new(was, item, true)
                             : pair_new(*e, was->hash, item_slot(item), item->hash,
                                        shift, true);
    if (sub == NULL)
        return CP_ENOMEM;
    *e = node_slot(sub);
    m->count++;
    *old = NULL;
    return 0;
}

/* cp__hamt_set_given in place at the end of a path that nobody else holds
 * (path_walk), where item's key is new (inserted into a bitmap node with
 * room or an empty slot of an array node, or, when the chunk holds
 * another key's item, placed with it in a node made for the two) or
 * replaces its value. Returns what cp__hamt_set_given does, or NOT_HERE
 * with nothing done. */
static int set_here(cp__hamt *m, cp__hamt_item *item, cp__hamt_item **old)
{
    struct spot sp;
    if (!path_walk(m->root, item->hash, &sp))
        return NOT_HERE;
    cp__hamt_node *node = sp.node;
    if (!sp.found) {
        if (node->kind == KIND_ARRAY) {
            cp__hamt_item_incref(item); /* for the slot */
            node->entries[sp.c] = item_slot(item);
            node->count++;
        } else if (node->count < node->room) {
            bitmap_insert_here(node, sp.c, item);
        } else {
            return NOT_HERE; /* the walk moves it into a bigger node */
        }
        m->count++;
        *old = NULL;
        return 0;
    }
    slot *e = &node->entries[sp.idx];
    cp__hamt_item *was = slot_item(*e);
    if (key_matches(was, item->hash, item->key)) {
        *old = was; /* the slot's reference passes to the caller, or none */
        if (was->value == item->value)
            return CP__HAMT_SAME;
        cp__hamt_item_incref(item); /* for the slot */
        *e = item_slot(item);
        return 0;
    }
    return set_beside(m, e, sp.shift + CHUNK_BITS, item, old);
}

/* The set behind cp__hamt_set (give false: *m stays held and unchanged, and
 * becomes the new map with a reference of its own) and cp__hamt_set_given
 * (when set_here cannot do it). */
static int hamt_set(cp__hamt *m, cp__hamt_item *item, bool give, cp__hamt_item **old)
{
    assert(item != NULL); /* internal callers only */
    struct change ch = {give, false, NULL};
    if (m->root == NULL) {
        unsigned c = chunk_of(item->hash, 0);
        cp__hamt_node *root = node_alloc(KIND_BITMAP, 1, 1, UINT32_C(1) << c);
        if (root == NULL)
            return CP_ENOMEM;
        put(&root->entries[0], item_slot(item));
        *m = (cp__hamt){root, 1};
    } else {
        slot root;
        switch (node_set(m->root, 0, item, give, &ch, &root)) {
        case SET_SAME:
            if (give) {
                *old = ch.old;
                return CP__HAMT_SAME;
            }
            cp__hamt_incref(*m);
            break;
        case SET_NOMEM:
            /* A failure comes before any node on the path is changed (the
             * changes in place are made on the way back up), so old is
             * still listed by *m and ch's reference on it is an extra one. */
            if (ch.old != NULL && give)
                cp__hamt_item_decref(ch.old);
            return CP_ENOMEM;
        default: /* SET_NEW */
            assert(!slot_is_item(root));
            *m = (cp__hamt){slot_node(root), m->count + (ch.added ? 1 : 0)};
            break;
        }
    }
    if (old != NULL)
        *old = ch.old;
    return 0;
}

/* A new map: m with item set. 0 with a new reference in *out (or m itself,
 * one more reference, when the key already maps to an identical value);
 * CP_ENOMEM with *out untouched. m is never changed. */
int cp__hamt_set(cp__hamt m, cp__hamt_item *item, cp__hamt *out)
{
    int err = hamt_set(&m, item, false, NULL);
    if (err == 0)
        *out = m;
    return err;
}

int cp__hamt_set_given(cp__hamt *m, cp__hamt_item *item, cp__hamt_item **old)
{
    if (m->root != NULL) {
        int err = set_here(m, item, old);
        if (err != NOT_HERE)
            return err;
    }
    return hamt_set(m, item, true, old);
}

/* ------------------------------------------------------------------------ */
/* Delete                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum del_result {
    DEL_NEW,       /* *out replaces the subtree: an item or a node, one
                      reference (the caller's) */
    DEL_EMPTY,     /* the subtree held only the key (only a root can) */
    DEL_NOT_FOUND, /* the key is absent: nothing changed */
    DEL_NOMEM,     /* memory ran out: nothing changed or leaked */
} del_result;

/* Whether s may stand alone in place of a subtree at any level: an item or a
 * collision node (their position does not depend on the level). */
static bool is_movable(slot s)
{
    return slot_is_item(s) || slot_is_collision(s);
}

/* node is replaced by its entry other, which it held alongside the deleted
 * item: moved when mine, else with a new reference. */
static void collapse_to(cp__hamt_node *node, bool give, bool mine, slot other,
                        slot *out)
{
    if (!mine)
        slot_incref(other);
    collapse(node, give, mine, other, out);
}

/* Delete key from the subtree rooted at node, which sits at shift. is_root:
 * node is the map's root, which never collapses into an item or collision
 * node (the map's root is always a bitmap or array node). */
static del_result node_delete(cp__hamt_node *node, unsigned shift, uint32_t hash,
                              const void *key, bool is_root, bool give,
                              struct change *ch, slot *out)
{
    bool mine = sole_holder(node, give);
    cp__hamt_node *copy;

    if (node->kind == KIND_COLLISION) {
        if (node->bits != hash)
            return DEL_NOT_FOUND;
        for (uint32_t i = 0; i < node->count; i++) {
            cp__hamt_item *gone = slot_item(node->entries[i]);
            if (gone->key != key)
                continue;
            if (node->count == 2) {
                /* One item left: it replaces the collision node. */
                leave(ch, gone, mine);
                collapse_to(node, give, mine, node->entries[1 - i], out);
                return DEL_NEW;
            }
            copy = collision_removed(node, i, mine);
            if (copy == NULL)
                return DEL_NOMEM;
            leave(ch, gone, mine);
            replace(node, give, mine, copy, out);
            return DEL_NEW;
        }
        return DEL_NOT_FOUND;
    }

    unsigned c = chunk_of(hash, shift);
    uint32_t idx;
    if (node->kind == KIND_BITMAP) {
        if (!(node->bits & (UINT32_C(1) << c)))
            return DEL_NOT_FOUND;
        idx = bitmap_index(node->bits, c);
    } else { /* KIND_ARRAY */
        if (node->entries[c] == 0)
            return DEL_NOT_FOUND;
        idx = c;
    }
    slot e = node->entries[idx];

    if (slot_is_item(e)) {
        cp__hamt_item *gone = slot_item(e);
        if (!key_matches(gone, hash, key))
            return DEL_NOT_FOUND;
        if (node->kind == KIND_ARRAY && node->count - 1 >= ARRAY_MIN) {
            leave(ch, gone, mine);
            return slot_replaced(node, c, 0, node->count - 1, give, mine, out)
                       ? DEL_NEW
                       : DEL_NOMEM;
        }
        if (node->kind == KIND_ARRAY) {
            copy = bitmap_from_array(node, c, mine);
        } else if (node->count == 1) {
            assert(is_root); /* invariant [-11]: non-roots hold two items */
            leave(ch, gone, mine);
            drop_given(node, give, mine);
            return DEL_EMPTY;
        } else if (node->count == 2 && !is_root && is_movable(node->entries[1 - idx])) {
            /* The other entry stands alone: it replaces this node. */
            leave(ch, gone, mine);
            collapse_to(node, give, mine, node->entries[1 - idx], out);
            return DEL_NEW;
        } else {
            copy = mine ? bitmap_remove_here(node, c, idx) : bitmap_removed(node, c, idx);
        }
        if (copy == NULL)
            return DEL_NOMEM;
        leave(ch, gone, mine);
        replace(node, give, mine, copy, out);
        return DEL_NEW;
    }

    slot sub;
    del_result r = node_delete(slot_node(e), shift + CHUNK_BITS, hash, key, false,
                               mine, ch, &sub);
    if (r != DEL_NEW) {
        assert(r != DEL_EMPTY); /* a non-root subtree holds two items */
        return r;
    }
    if (node->kind == KIND_BITMAP && node->count == 1 && !is_root && is_movable(sub)) {
        /* This node would hold only sub: sub moves up in its place. */
        collapse(node, give, mine, sub, out);
        return DEL_NEW;
    }
    return slot_replaced(node, idx, sub, node->count, give, mine, out) ? DEL_NEW
                                                                       : DEL_NOMEM;
}

/* delete_here's collapse of node, nobody else's, which its parent holds in
 * *place: other, node's remaining entry, moves up into its place, and
 * node's shell goes. Out of line, as set_beside. */
static __attribute__((noinline)) void collapse_here(cp__hamt_node *node, slot *place,
                                                    slot other)
{
    *place = other;
    node_free_shell(node);
}

/* cp__hamt_delete_given in place at the end of a path that nobody else
 * holds (path_walk): key's item leaves its node; a node of two entries
 * below the root whose other entry can stand alone (is_movable) is
 * replaced by it in its parent, unless the parent would then be left
 * holding that entry alone (the walk collapses it too). Returns what
 * cp__hamt_delete_given does, or NOT_HERE with nothing done. */
static int delete_here(cp__hamt *m, uint32_t hash, const void *key, cp__hamt_item **old)
{
    struct spot sp;
    if (!path_walk(m->root, hash, &sp))
        return NOT_HERE;
    cp__hamt_node *node = sp.node, *parent = sp.parent;
    if (!sp.found || !key_matches(slot_item(node->entries[sp.idx]), hash, key))
        return CP_ENOENT;
    cp__hamt_item *gone = slot_item(node->entries[sp.idx]);
    if (node->kind == KIND_ARRAY) {
        if (node->count - 1 < ARRAY_MIN)
            return NOT_HERE; /* the walk demotes it to a bitmap node */
        node->entries[sp.c] = 0;
        node->count--;
    } else if (parent == NULL ? node->count >= 2
                              : node->count > 2 || !is_movable(node->entries[1 - sp.idx])) {
        bitmap_remove_here(node, sp.c, sp.idx);
    } else if (parent != NULL &&
               (parent->kind == KIND_ARRAY || parent->count >= 2 || parent == m->root)) {
        collapse_here(node, &parent->entries[sp.parent_idx], node->entries[1 - sp.idx]);
    } else {
        return NOT_HERE; /* the map empties, or the collapse goes on up */
    }
    m->count--;
    *old = gone; /* with the reference node had on it */
    return 0;
}

/* The delete behind cp__hamt_delete (give false: *m stays held and
 * unchanged, and becomes the new map with a reference of its own) and
 * cp__hamt_delete_given (when delete_here cannot do it). */
static int hamt_delete(cp__hamt *m, uint32_t hash, const void *key, bool give,
                       cp__hamt_item **old)
{
    if (m->root == NULL)
        return CP_ENOENT;
    struct change ch = {give, false, NULL};
    slot root;
    switch (node_delete(m->root, 0, hash, key, true, give, &ch, &root)) {
    case DEL_EMPTY:
        *m = CP__HAMT_EMPTY;
        break;
    case DEL_NOT_FOUND:
        return CP_ENOENT;
    case DEL_NOMEM:
        /* As in hamt_set: nothing was reused, old is still listed. */
        if (ch.old != NULL && give)
            cp__hamt_item_decref(ch.old);
        return CP_ENOMEM;
    default: /* DEL_NEW */
        assert(!slot_is_item(root) && !slot_is_collision(root));
        *m = (cp__hamt){slot_node(root), m->count - 1};
        break;
    }
    if (old != NULL)
        *old = ch.old;
    return 0;
}

/* A new map: m without key. 0 with a new reference in *out (root NULL and
 * count 0 when the last key went); CP_ENOENT when key is absent, CP_ENOMEM
 * when memory ran out, *out untouched either way. m is never changed. */
int cp__hamt_delete(cp__hamt m, uint32_t hash, const void *key, cp__hamt *out)
{
    int err = hamt_delete(&m, hash, key, false, NULL);
    if (err == 0)
        *out = m;
    return err;
}

int cp__hamt_delete_given(cp__hamt *m, uint32_t hash, const void *key,
                          cp__hamt_item **old)
{
    if (m->root != NULL) {
        int err = delete_here(m, hash, key, old);
        if (err != NOT_HERE)
            return err;
    }
    return hamt_delete(m, hash, key, true, old);
}

/* ------------------------------------------------------------------------ */
/* Iteration                                                                 */
/* ------------------------------------------------------------------------ */

/* Start iterating over m: the stack holds the root at position 0. */
void cp__hamt_iter_init(cp__hamt_iter *it, cp__hamt m)
{
    it->depth = m.root != NULL ? 0 : -1;
    it->nodes[0] = m.root;
    it->pos[0] = 0;
}

/* The next item in trie order (depth first, chunks ascending; collision
 * items in node order), or NULL when done. nodes[d] is the node at depth d on
 * the current path and pos[d] the next slot to visit in it. */
cp__hamt_item *cp__hamt_iter_next(cp__hamt_iter *it)
{
    while (it->depth >= 0) {
        const cp__hamt_node *node = it->nodes[it->depth];
        uint32_t n = node_slots(node);
        uint32_t i = it->pos[it->depth];
        while (i < n && node->entries[i] == 0)
            i++; /* empty array slots */
        if (i == n) {
            it->depth--; /* this node is done: back to its parent */
            continue;
        }
        it->pos[it->depth] = i + 1;
        slot s = node->entries[i];
        if (slot_is_item(s))
            return slot_item(s);
        /* The depth bound (see the top of this file) keeps this in range. */
        assert(it->depth + 1 < CP__HAMT_MAX_DEPTH);
        it->depth++;
        it->nodes[it->depth] = slot_node(s);
        it->pos[it->depth] = 0;
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Debugging: shape and invariants                                           */
/* ------------------------------------------------------------------------ */

static void shape_walk(const cp__hamt_node *node, unsigned depth,
                       cp__hamt_shape *shape)
{
    if (depth > shape->max_depth)
        shape->max_depth = depth;
    switch (node->kind) {
    case KIND_BITMAP: shape->bitmap_nodes++; break;
    case KIND_ARRAY: shape->array_nodes++; break;
    default: shape->collision_nodes++; break;
    }
    uint32_t n = node_slots(node);
    for (uint32_t i = 0; i < n; i++) {
        slot s = node->entries[i];
        if (s == 0)
            continue;
        if (slot_is_item(s))
            shape->items++;
        else
            shape_walk(slot_node(s), depth + 1, shape);
    }
}

/* Count m's nodes of each kind, its items and its depth (root = 1; 0 when
 * empty) into *shape. */
void cp__hamt_shape_of(cp__hamt m, cp__hamt_shape *shape)
{
    *shape = (cp__hamt_shape){0, 0, 0, 0, 0};
    if (m.root != NULL)
        shape_walk(m.root, 1, shape);
}

/* Whether hash agrees with path, the chunks above shift. */
static bool on_path(uint32_t hash, uint32_t path, unsigned shift)
{
    uint32_t mask = shift >= 32 ? UINT32_MAX : (UINT32_C(1) << shift) - 1;
    return (hash & mask) == (path & mask);
}

/* Check the subtree at node, which sits at shift with path the hash bits
 * chosen above it; add its items to *items. 0 or the first broken
 * invariant's code (see the top of this file). */
static int check_node(const cp__hamt_node *node, unsigned shift, uint32_t path,
                      bool is_root, size_t *items)
{
    if (atomic_load_explicit(&node->refs, memory_order_relaxed) == 0)
        return -3; /* relaxed: a debugging read of a count we hold */
    if (node_slots(node) > node->room)
        return -14;

    if (node->kind == KIND_COLLISION) {
        if (node->count < 2)
            return -8;
        if (!on_path(node->bits, path, shift))
            return -10;
        for (uint32_t i = 0; i < node->count; i++) {
            slot s = node->entries[i];
            if (s == 0 || !slot_is_item(s) || slot_item(s)->hash != node->bits)
                return -8;
            if (atomic_load_explicit(&slot_item(s)->refs, memory_order_relaxed) == 0)
                return -3;
            for (uint32_t j = 0; j < i; j++) {
                if (slot_item(node->entries[j])->key == slot_item(s)->key)
                    return -9;
            }
        }
        *items += node->count;
        return 0;
    }
    if (node->kind != KIND_BITMAP && node->kind != KIND_ARRAY)
        return -2;
    if (shift > LAST_SHIFT)
        return -12;

    uint32_t nonempty = 0;
    for (unsigned c = 0; c < BRANCHES; c++) {
        slot s;
        if (node->kind == KIND_BITMAP) {
            if (!(node->bits & (UINT32_C(1) << c)))
                continue;
            uint32_t idx = bitmap_index(node->bits, c);
            if (idx >= node->count)
                return -4; /* more bits than entries */
            s = node->entries[idx];
            if (s == 0)
                return -5;
        } else {
            s = node->entries[c];
            if (s == 0)
                continue;
        }
        nonempty++;
        uint32_t sub_path = path | ((uint32_t)c << shift);
        if (slot_is_item(s)) {
            cp__hamt_item *item = slot_item(s);
            if (atomic_load_explicit(&item->refs, memory_order_relaxed) == 0)
                return -3;
            if (!on_path(item->hash, sub_path, shift + CHUNK_BITS))
                return -10;
            (*items)++;
        } else {
            int rc = check_node(slot_node(s), shift + CHUNK_BITS, sub_path, false,
                                items);
            if (rc != 0)
                return rc;
        }
    }

    if (node->kind == KIND_BITMAP) {
        if (nonempty != node->count || node->count < 1 || node->count > BITMAP_MAX)
            return -4;
        if (!is_root && node->count == 1 && is_movable(node->entries[0]))
            return -11;
    } else {
        if (nonempty != node->count)
            return -6;
        if (node->count < ARRAY_MIN || node->count > BRANCHES)
            return -7;
    }
    return 0;
}

/* 0 when every invariant listed at the top of this file holds for m, else
 * the negative code of the first broken one found. */
int cp__hamt_check(cp__hamt m)
{
    if (m.root == NULL)
        return m.count == 0 ? 0 : -1;
    if (m.count == 0 || m.root->kind == KIND_COLLISION)
        return -1;
    size_t items = 0;
    int rc = check_node(m.root, 0, 0, true, &items);
    if (rc != 0)
        return rc;
    return items == m.count ? 0 : -13;
}
