/* context.c - context variables, tokens and contexts (PEP 567).
 *
 * A context is a persistent map (hamt.c) from variables to values, held by a
 * cp_context object. Copying a context copies one reference to the map, so it
 * costs the same whatever the number of variables. A set makes a new map that
 * shares all but one path with the old one; the nodes of that path that
 * nobody else holds (none, right after a copy; all, once the copy is gone)
 * are reused in place instead of copied (hamt.c, "Reuse").
 *
 * Values. Each value the library owns sits in a map item (cp__hamt_item),
 * reference-counted by every map node and token that lists it. The item holds
 * a reference on its variable; when the last holder lets go, the item calls
 * the variable's free_value on the value and drops that reference. So a value
 * is freed exactly once, as soon as nothing refers to it, and a variable lives
 * while any item or token needs it.
 *
 * Threads. Each thread has a current context: the innermost context it has
 * entered, else its base context, made on the first set and released by a
 * pthread key destructor when the thread exits (the loading thread's, at
 * exit() too: see base_release_first). Only the thread that has a
 * context entered (its owner) changes the context's map. The owner changes
 * the map under a small spin lock, and other threads take the lock to read it
 * or to take their own reference to it. The lock makes the reader's "load the
 * root, then take a reference" step atomic with respect to the owner's
 * change, which would otherwise let a reader take a reference to a root
 * being freed (the race of cpython#155519), or read nodes being reused. The
 * owner reads its own map without the lock: nobody else writes it. Most
 * entries of a context see no reader from another thread, so the owner
 * skips the lock until one comes (see "The map lock" below).
 *
 * Entering. cp__context_enter claims a context with a compare-and-swap of its
 * owner field from 0 to the calling thread's identity (the address of its
 * thread state). A failed swap tells which error it is: the value found is
 * either this thread (CP_ERECURSIVE) or another one (CP_EBUSY). A context is
 * therefore never entered twice at once, and an entry never waits.
 *
 * The get cache. cp_var_get remembers its last two lookups (variable and
 * value): the most recent in cp_priv_get_hit, which the header's inline gets
 * read without a call, the other in the thread state. Every set, reset,
 * enter and leave on this thread forgets both. Only this thread changes its
 * current map, so a remembered variable proves the cached value is still
 * the context's; a hit on the most recent is one load and one compare,
 * inline in the caller, on the other a call and one more of each.
 * (CPython caches in the variable itself, which is unsound without a GIL:
 * cpython#121546.) A cached variable cannot be freed and its
 * address reused while the cache holds it, because the current map still
 * holds an item for it: both entries come from lookups in the current map,
 * and both are forgotten together.
 *
 * The kept references. cp_token_free does not drop the token's references
 * on its variable (one or two, see struct cp_token) but keeps them in the
 * thread state, and the thread's next cp_var_set of that variable takes its
 * references from there: a set, reset and free of the same variable in a
 * loop, the way a request ID is set around each request, then costs no
 * atomic operation on the variable's count, which the thread would
 * otherwise bump twice in every round (7 to 8 ns each here). They are
 * dropped when the thread keeps another variable's, when it leaves its
 * current context (cp__context_leave, the pool's frames and lazy runs:
 * the end of every job or task), when it frees
 * that variable (cp_var_free), and when it exits; a thread in no context
 * keeps none, no token free keeps any once the variable is freed
 * (released) on that thread or one that happens-before (references kept
 * before stay until one of those drops), and nobody keeps the last
 * references to a variable. So only a variable
 * freed on another thread after the token may live on until then, with its
 * default value; no value in a context or token does: the kept references
 * are on the variable only.
 *
 * The copy cache. A context whose last reference a thread drops while
 * the context's map is that thread's current map (a copy the thread made
 * of it, usually, but any shared context: a copy made elsewhere, or by
 * cp_context_copy) is not freed but kept (one per thread) for the
 * thread's next cp_copy_context, which then costs no
 * allocation and no atomic operation: the kept context still holds its
 * reference on the map. cp__cache_forget, called before any change of the
 * current map and whenever another context becomes current, frees it. So
 * the kept reference never outlives the current context's own reference to
 * the same map, and no value lives longer because of it. Off under
 * AddressSanitizer, which must see uses of freed contexts.
 *
 * The capture batch. A capture (a pool submit's, a copy's) takes a
 * reference on the current map's root, whose count the workers that finish
 * the jobs drop: a line the submitting thread and the workers share, so an
 * atomic operation there per submit is a cache miss too. The thread takes
 * CAPTURE_BATCH references at once instead and hands them out one capture
 * at a time (cp__context_capture). A job run where the map it captured is
 * the current map (by its own waiter, most often) gives its reference back
 * to the batch if the map is current still when it ends
 * (cp__context_uncapture): fork-join code in a context with values then
 * makes no atomic operation on the root per job; before, each job's end
 * dropped one, and on two workers the root's count bounced between them
 * (fib(30) with a future per call, one variable set: 20 ms, now 13, as
 * with none). Like the kept copy, the rest of the
 * batch is dropped by cp__cache_forget, before any change of the current
 * map and whenever another context becomes current, so it never keeps a
 * root (or a value) alive longer than the current context does, and never
 * makes the trie see a root as shared when it changes it.
 *
 * Invariants:
 * - c->map is changed only by c's owner; when c is shared, under c->lock or
 *   with c->writing raised while no other thread reads it (see "The map
 *   lock").
 * - A thread's current context is entered by that thread (owner == self),
 *   or is a pool job's frame (context.h), which no other thread can reach;
 *   its base context has owner == self from creation on.
 * - A thread's kept copy (cp__self.copy_cache), if any, has the current
 *   map's root; so has its capture batch (cp__self.capture_root), if any,
 *   and then cp__self.capture_refs is not 0.
 * - Every item holds one reference on its variable; every token holds one on
 *   its old item, or, when the variable had no value, one on the variable,
 *   and after a reset that freed the set's item, that item's one too.
 * - cp__self.kept_refs is the number of references the thread holds on
 *   cp__self.kept_var, not 0 when kept_var is set; none while the thread
 *   has no current context, none after cp_var_free of kept_var on this
 *   thread, and no new ones after cp_var_free of it on one that
 *   happens-before (those kept before it stay until a drop).
 */
#include "config.h"

#include "context.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "fence.h"
#include "key.h"

/* References a thread takes on its current map's root at a time for its
 * captures (see "The capture batch"). */
#define CAPTURE_BATCH 32

/* ------------------------------------------------------------------------ */
/* Types                                                                     */

struct cp_var {
    /* Holders: the creator (until cp_var_free), every item, every token. */
    atomic_size_t refs;
    uint32_t hash;
    /* Set by cp_var_free: no thread keeps references on var from then on
     * (see "The kept references"). */
    atomic_bool released;
    bool has_default;
    void *default_value;
    void (*free_value)(void *);
    char name[];
};

struct cp_token {
    cp_var *var;          /* held by old, or by var_refs */
    cp__hamt_item *old;   /* one reference; NULL: the variable had no value */
    /* References of our own on var: one when it had no value at the set, and
     * one taken over from the set's item when the reset frees it. */
    uint8_t var_refs;
    uint64_t context_id;  /* token_id of the context the set was made in */
    atomic_bool used;     /* written by the context's owner; read relaxed */
};

struct cp_iter {
    cp__hamt map; /* one reference: the snapshot */
    cp__hamt_iter it;
};

/* The calling thread's state (context.h), its get cache empty. */
const char cp__no_var;
__thread struct cp__thread cp__self
    __attribute__((tls_model("initial-exec"))) = {.hit = {.var = CP__NO_VAR},
                                                  .cache_var2 = CP__NO_VAR};
/* The get cache's newest entry, for the header's inline gets: another name
 * for the start of cp__self, so that the library reaches the whole thread
 * state through one address. */
_Static_assert(offsetof(struct cp__thread, hit) == 0,
               "cp_priv_get_hit must start cp__self");
CP_EXPORT extern __thread cp_priv_get_cache cp_priv_get_hit
    __attribute__((alias("cp__self")));

static void base_release(void *base);
static cp__key base_key = CP__KEY_INIT(base_release);

/* Token identities: relaxed, only uniqueness matters. */
static _Atomic uint64_t next_token_id = 1;


/* ------------------------------------------------------------------------ */
/* The map lock                                                              */

/* The lock costs the owner an atomic read-modify-write (the exchange that
 * takes it) for every set and every reset, about a sixth of a set+reset
 * here. Readers on other threads are rare, so the owner takes the lock only
 * once a thread other than the owner has read the context ("watched", set by
 * that reader under the lock). An owner that enters the context clears it
 * again, under the lock, unless a reader has ever had to fence (below): a
 * context read between its runs starts each run without the lock, and one
 * read during its runs pays for one fence in its life, not one per run.
 * Until then a change
 * is bracketed by plain stores of a "writing" flag, and the owner checks
 * "watched" after raising the flag:
 *
 *   owner                              first reader (holding the lock)
 *   writing = 1                        watched = 1
 *   compiler barrier                   if entered: membarrier()
 *   if watched: writing = 0, lock      wait while writing
 *   ...change...                       ...read, take a reference...
 *   writing = 0 (release)
 *
 * This is Dekker's handshake with the owner's hardware fence moved to the
 * reader (an asymmetric fence, as in userspace RCU): membarrier's
 * MEMBARRIER_CMD_PRIVATE_EXPEDITED runs a full barrier on every CPU that
 * runs one of our threads (a thread not running passed one when it was
 * switched out). After it, an owner that raised the flag before the
 * barrier shows it, and the reader waits for its change to end; an owner
 * that raises it later sees watched and takes the lock after lowering the
 * flag. The fence is needed only if the context is entered when the reader
 * looks: the enter's compare-and-swap and the reader's store of watched and
 * load of the owner are all seq_cst, so an owner entering later sees
 * watched, and one that left published everything with its release of
 * c->owner. Where the kernel refuses the command (fence.c), every shared
 * context takes the lock for every change. */

/* relaxed: a test switch, read when a context is made or entered. */
static atomic_bool lockless_writes = true;

void cp__context_lockless_writes(bool on)
{
    atomic_store_explicit(&lockless_writes, on, memory_order_relaxed);
}

/* Whether a shared context may be written without the lock. */
static bool lockless_ok(void)
{
    return cp__fence_ready() && atomic_load_explicit(&lockless_writes, memory_order_relaxed);
}

static void map_lock(const cp_context *c)
{
    atomic_bool *lock = (atomic_bool *)&c->lock;
    /* acquire: pairs with the release in map_unlock, so the holder before us
     * finished its change of the map (or its reference) before we look. */
    while (atomic_exchange_explicit(lock, true, memory_order_acquire)) {
        /* Spin on a plain read (relaxed: only a hint) so the line stays
         * shared. The holder's section is short (a reader's reference, or
         * the owner's set or reset: a path of at most eight nodes, with a
         * few allocations and the frees of what it replaced), but it
         * can be preempted, so give the CPU away after a while. */
        for (int spins = 0; atomic_load_explicit(lock, memory_order_relaxed); spins++)
            if (spins > 64)
                sched_yield();
    }
}

static void map_unlock(const cp_context *c)
{
    /* release: publishes the change of the map, or ends our read of it. */
    atomic_store_explicit((atomic_bool *)&c->lock, false, memory_order_release);
}

/* Whether the calling thread owns c. relaxed: only this thread ever stores
 * its own identity there, so seeing it proves it. */
static bool owned_here(const cp_context *c)
{
    return atomic_load_explicit(&c->owner, memory_order_relaxed) == cp__self_id();
}

/* With the lock held, by a thread other than c's owner: mark c watched, and
 * wait for an owner's change made without the lock to end. */
static void watch(cp_context *c)
{
    /* relaxed: only lock holders store it, and we hold the lock. */
    if (!atomic_load_explicit(&c->watched, memory_order_relaxed)) {
        /* seq_cst, as the load of owner after it and the enter's swap:
         * either that load sees an owner, or the owner sees watched. */
        atomic_store_explicit(&c->watched, true, memory_order_seq_cst);
        if (atomic_load_explicit(&c->owner, memory_order_seq_cst) != 0) {
            cp__fence_all_threads();
            c->fenced = true; /* lock holders only */
        }
    }
    /* acquire: pairs with the owner's release in write_end, so its change
     * happens-before our read. A change takes at most a few allocations. */
    for (int spins = 0; atomic_load_explicit(&c->writing, memory_order_acquire); spins++)
        if (spins > 64)
            sched_yield();
}

/* Start reading c's map from any thread: its owner, the only writer, needs
 * nothing; any other thread takes the lock. Returns whether it did. */
static bool read_begin(const cp_context *c)
{
    if (owned_here(c))
        return false;
    map_lock(c);
    /* Only shared contexts are reachable from other threads. */
    watch((cp_context *)c);
    return true;
}

/* How an owner's change of its map is guarded (write_begin). */
enum write_guard {
    WRITE_ALONE,   /* not shared: no other thread can reach the map */
    WRITE_FLAGGED, /* writing raised, no reader watching */
    WRITE_LOCKED,  /* under the lock */
};

/* Owner: start a change of c's map. */
static inline enum write_guard write_begin(cp_context *c)
{
    if (!c->shared)
        return WRITE_ALONE;
    /* The relaxed store and the compiler barrier are half of a Dekker
     * handshake whose fences are the reader's membarrier; the load is
     * seq_cst (see "The map lock"). */
    atomic_store_explicit(&c->writing, true, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if (!atomic_load_explicit(&c->watched, memory_order_seq_cst))
        return WRITE_FLAGGED;
    /* release: nothing changed under the flag, but a reader that saw it
     * waits for this store, holding the lock we are about to take, and
     * may read it in place of the release that ended our change before:
     * release makes that change ours to publish here too, without relying
     * on a release sequence (which C++20 dropped for same-thread stores). */
    atomic_store_explicit(&c->writing, false, memory_order_release);
    map_lock(c);
    return WRITE_LOCKED;
}

static void write_end(cp_context *c, enum write_guard guard)
{
    if (guard == WRITE_LOCKED)
        map_unlock(c);
    else if (guard == WRITE_FLAGGED)
        /* release: publishes the change to the reader waiting in watch. */
        atomic_store_explicit(&c->writing, false, memory_order_release);
}

static void read_end(const cp_context *c, bool locked)
{
    if (locked)
        map_unlock(c);
}

/* A reference to c's map, safe from any thread. */
static cp__hamt map_ref(const cp_context *c)
{
    bool locked = read_begin(c);
    cp__hamt m = c->map;
    cp__hamt_incref(m);
    read_end(c, locked);
    return m;
}

/* The borrows of tasks spawned in c (the current context, or the one being
 * left) and not yet synced take their own reference to c's map, so that a
 * change of the map in place, or its release, does not reach them. Before
 * every change of c's map while c has such tasks (map_update), and when c
 * is left with them (cp__context_leave, cp__context_end_frame).
 *
 * Only the borrows above c's floor, the ones made since c was entered (or
 * its frame begun): one made below in another context X whose root equals
 * c's is held by X too (X holds its map; a frame on a borrowed map, by the
 * context it borrowed from, which is X or further down), so the root is
 * shared and never changed in place; and borrows made in c when it was
 * entered before took their references when it was left. A borrow above
 * the floor of a root only equal to c's (left by a context entered inside
 * c) takes one too: harmless, it is dropped at unborrow. So a set in a task
 * while its spawners' tasks are outstanding does not walk all of them,
 * nor does a job that runs many contexts, spawning in each and syncing
 * later, walk every earlier task at each leave. */
void cp__context_own_borrows(cp_context *c)
{
    if (!c->map.root)
        return;
    for (cp__borrow *b = cp__self.borrows; b != c->floor; b = b->prev)
        if (!b->owned && b->map.root == c->map.root) {
            cp__hamt_incref(c->map);
            b->owned = true;
        }
}

/* Owner only: set item in c's map, or, when item is NULL, delete var's
 * item. The map's nodes that nobody else holds are reused in place
 * (cp__hamt_set_given), which is safe because nobody else can reach them:
 * this thread's borrows of the map take their own reference first, a frame
 * on a borrowed map takes its own, and other threads take theirs only under
 * c's lock (map_ref), held throughout for a shared context. fresh: item is
 * new and unpublished (hamt.h), and is published once the map holds it,
 * before any other thread can see it. *gone: the item that left the map,
 * referenced, or NULL. Returns 0, CP_ENOMEM, (delete) CP_ENOENT, or (set)
 * CP__HAMT_SAME when var has that value already: item is not taken and
 * *gone is the map's item, borrowed (hamt.h). Then and on failure the
 * map is unchanged (the borrows and the frame may hold their own
 * references by then, which changes nothing anyone can see). Always
 * inlined into its two callers, cp_var_set and cp_var_reset, with
 * write_begin: as calls of their own they cost a set+reset some 55
 * instructions of saved registers and moved arguments. */
static inline __attribute__((always_inline)) int
map_update(cp_context *c, cp__hamt_item *item, bool fresh, const cp_var *var,
           cp__hamt_item **gone)
{
    /* First: a kept copy's reference would keep the map's nodes shared. */
    cp__cache_forget();
    if (cp__self.borrows != c->floor)
        cp__context_own_borrows(c);
    if (!c->owns_map) {
        cp__hamt_incref(c->map);
        c->owns_map = true;
    }
    enum write_guard guard = write_begin(c);
    int err = item ? cp__hamt_set_given(&c->map, item, gone)
                   : cp__hamt_delete_given(&c->map, var->hash, var, gone);
    if (err == 0 && fresh)
        cp__hamt_item_publish(item); /* the map holds it; write_end publishes */
    write_end(c, guard);
    return err;
}

/* ------------------------------------------------------------------------ */
/* Variables                                                                 */

/* Take n more references on var. */
static void var_incref(cp_var *var, size_t n)
{
    /* relaxed: taking a reference from one we hold orders nothing. */
    atomic_fetch_add_explicit(&var->refs, n, memory_order_relaxed);
}

/* Run var's free_value on value (var has one). It is user code, run
 * wherever a value is let go of; often as a job or task ends, when the
 * thread has left the run's frame but the task being synced is still on
 * the borrow stack, or in the middle of a wait that runs another job. A
 * sync from there of a task spawned before the free_value began would be
 * out of order (a task syncing itself, say), so the thread's value floor
 * refuses it (cp__context_may_sync); the tasks the free_value spawns
 * itself are above the floor and sync as usual. Only here, where a value
 * dies: the runs' ends, which are hot, pay nothing for it. */
static void value_free(const cp_var *var, void *value)
{
    cp__borrow *floor = cp__self.value_floor;
    cp__self.value_floor = cp__self.borrows;
    var->free_value(value);
    cp__self.value_floor = floor;
}

/* Drop n of the caller's references on var. */
static void var_decref(cp_var *var, size_t n)
{
    /* acq_rel: release our uses of var; the last one acquires everyone
     * else's before it frees. */
    if (atomic_fetch_sub_explicit(&var->refs, n, memory_order_acq_rel) != n)
        return;
    if (var->has_default && var->free_value)
        value_free(var, var->default_value);
    cp__free(var);
}

/* Drop the references kept on a variable (see "The kept references"). The
 * thread state is cleared first: the variable's end may run user code (its
 * default's free_value), which may free a token itself. */
void cp__kept_flush(void)
{
    cp_var *var = cp__self.kept_var;
    size_t n = cp__self.kept_refs;
    cp__self.kept_var = NULL;
    cp__self.kept_refs = 0;
    if (var)
        var_decref(var, n);
}

/* Take n more references on var for a set: the kept ones when there are
 * enough, else new ones. */
static inline void var_take(cp_var *var, size_t n)
{
    if (cp__self.kept_var == var && cp__self.kept_refs >= n) {
        cp__self.kept_refs -= n;
        if (cp__self.kept_refs == 0)
            cp__self.kept_var = NULL;
    } else {
        var_incref(var, n);
    }
}

/* Let go of n of the caller's references on var, keeping them for the next
 * set of var when the thread has a current context to drop them at the end
 * of, and its creator still holds var: once var is released, the only
 * holders left are items and tokens, and the last of them to go must end
 * var, which a kept reference would prevent until the flush. When ours
 * (these n and any already kept) are the last, the variable ends now, as it
 * would without keeping. relaxed: holding those references, a count equal
 * to them cannot be stale, since only holders change it, and nobody else
 * holds one; a stale larger count, or a stale released, only keeps var
 * until the flush, and only when cp_var_free ran on another thread
 * concurrently. Another variable's kept references are dropped, after the
 * thread state holds var's (see cp__kept_flush). */
static void var_keep(cp_var *var, size_t n)
{
    size_t ours = n + (cp__self.kept_var == var ? cp__self.kept_refs : 0);
    if (!cp__self.current || atomic_load_explicit(&var->released, memory_order_relaxed) ||
        atomic_load_explicit(&var->refs, memory_order_relaxed) == ours) {
        if (ours != n) {
            cp__self.kept_var = NULL;
            cp__self.kept_refs = 0;
        }
        var_decref(var, ours);
        return;
    }
    if (cp__self.kept_var == var) {
        cp__self.kept_refs = ours;
        return;
    }
    cp_var *old = cp__self.kept_var;
    size_t old_n = cp__self.kept_refs;
    cp__self.kept_var = var;
    cp__self.kept_refs = n;
    if (old)
        var_decref(old, old_n);
}

/* Spread the variable's address over 32 bits (the splitmix64 finaliser), so
 * that variables allocated one after another differ in their low chunks and
 * the trie stays shallow. */
static uint32_t hash_address(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return (uint32_t)(x ^ (x >> 32));
}

static cp_var *var_make(const char *name, bool has_default, void *default_value,
                        void (*free_value)(void *))
{
    if (!name)
        name = "";
    size_t len = strlen(name);
    cp_var *var = cp__malloc(sizeof *var + len + 1);
    if (!var)
        return NULL;
    atomic_init(&var->refs, 1); /* not yet shared */
    atomic_init(&var->released, false); /* not yet shared */
    var->hash = hash_address(var);
    var->has_default = has_default;
    var->default_value = default_value;
    var->free_value = free_value;
    memcpy(var->name, name, len + 1);
    return var;
}

cp_var *cp_var_new(const char *name, void (*free_value)(void *))
{
    return var_make(name, false, NULL, free_value);
}

cp_var *cp_var_new_default(const char *name, void *default_value,
                           void (*free_value)(void *))
{
    return var_make(name, true, default_value, free_value);
}

void cp_var_free(cp_var *var)
{
    if (!var)
        return;
    /* relaxed: read by var_keep on this thread, or on a thread that this
     * call happens-before; any other thread's keep is concurrent with it,
     * and may keep var until its next flush, as documented. */
    atomic_store_explicit(&var->released, true, memory_order_relaxed);
    if (cp__self.kept_var == var)
        cp__kept_flush();
    var_decref(var, 1);
}

const char *cp_var_name(const cp_var *var)
{
    return var ? var->name : "";
}

/* ------------------------------------------------------------------------ */
/* Items: a variable's value in maps                                         */

/* Free an item nobody holds any more, and its value, but not the item's
 * reference on its variable: the caller takes that over. */
static void item_free(cp__hamt_item *item)
{
    cp_var *var = (cp_var *)item->key;
    if (var->free_value)
        value_free(var, item->value);
    cp__free_small(item, sizeof *item);
}

static void item_release(cp__hamt_item *item)
{
    cp_var *var = (cp_var *)item->key;
    item_free(item);
    var_decref(var, 1);
}

/* A new item for var's value: the caller gives it a reference on var. */
static cp__hamt_item *item_new(cp_var *var, void *value)
{
    cp__hamt_item *item = cp__alloc_small(sizeof *item);
    if (item)
        cp__hamt_item_init(item, var->hash, var, value, item_release, true);
    return item;
}

/* ------------------------------------------------------------------------ */
/* Threads' current and base contexts                                        */

static void context_decref(cp_context *c);

static void base_release(void *base)
{
    if (cp__self.base == base) {
        cp__self.base = NULL;
        if (cp__self.current == base)
            cp__self.current = NULL;
    }
    cp__cache_forget(); /* the thread is ending: its kept copy goes too */
    context_decref(base);
    cp__kept_flush(); /* and the references it kept */
}

/* exit() runs the thread-exit functions of the thread that calls it (those
 * of its C++ thread_local objects, registered with glibc's
 * __cxa_thread_atexit_impl) but none of its pthread key destructors: main's
 * base context, when main returns, would keep its values, their free_value
 * never run. So the thread that loads the library (main, in a program
 * linked with it) has its base context released by such a function, as a
 * thread_local object is: before the atexit handlers and the destructors of
 * static objects, which then find it gone; its key's destructor finds
 * nothing. One registration, at load: each takes the loader's lock (which
 * the loading thread holds already) and aborts the process when out of
 * memory, nothing to risk at every thread's first set. */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso);
extern void *__dso_handle __attribute__((visibility("hidden")));

static void base_release_first(void *unused)
{
    (void)unused;
    /* A free_value run by the release may set a variable and so make a
     * new base context: release that too, as the key's destructor would
     * on another thread (at most PTHREAD_DESTRUCTOR_ITERATIONS rounds). */
    for (int round = 0; round < PTHREAD_DESTRUCTOR_ITERATIONS; round++) {
        cp_context *base = cp__self.base;
        if (!base)
            return;
        pthread_setspecific(cp__key_of(&base_key), NULL);
        base_release(base);
    }
}

static __attribute__((constructor)) void base_release_first_register(void)
{
    __cxa_thread_atexit_impl(base_release_first, NULL, &__dso_handle);
}

/* Make c a context on map (whose reference it takes) that nobody has
 * entered. */
static inline void context_init(cp_context *c, cp__hamt map, bool shared)
{
    atomic_init(&c->refs, 1); /* not yet shared */
    atomic_init(&c->owner, 0); /* not yet shared */
    atomic_init(&c->lock, false); /* not yet shared */
    c->shared = shared;
    atomic_init(&c->watched, shared && !lockless_ok()); /* not yet shared */
    atomic_init(&c->writing, false); /* not yet shared */
    c->fenced = false;
    c->map = map;
    c->prev = NULL;
    c->floor = NULL;
    c->token_id = 0;
    c->owns_map = true;
}

static cp_context *context_alloc(cp__hamt map, bool shared)
{
    cp_context *c = cp__alloc_small(sizeof *c);
    if (c)
        context_init(c, map, shared);
    return c;
}

/* Make base (an unowned context we hold the only reference to) the calling
 * thread's base context. 0, or CP_ENOMEM with base left to the caller. */
static int base_adopt(cp_context *base)
{
    if (!cp__key_ready(&base_key) || pthread_setspecific(cp__key_of(&base_key), base) != 0)
        return CP_ENOMEM;
    /* relaxed: the context is not shared yet, and never will be: a base
     * context is never handed out, so its map needs no lock. */
    atomic_store_explicit(&base->owner, cp__self_id(), memory_order_relaxed);
    base->shared = false;
    cp__self.base = base;
    if (!cp__self.current)
        cp__self.current = base;
    cp__cache_forget();
    return 0;
}

/* The calling thread's current context, made on first use; NULL when it
 * could not be made. */
static cp_context *current_context(void)
{
    if (!cp__self.current) {
        cp_context *base = context_alloc(CP__HAMT_EMPTY, false);
        if (!base)
            return NULL;
        if (base_adopt(base) != 0) {
            cp__free_small(base, sizeof *base);
            return NULL;
        }
    }
    return cp__self.current;
}

/* ------------------------------------------------------------------------ */
/* Get, set, reset                                                           */

/* The current context's item for var, or NULL. */
static const cp__hamt_item *current_item(const cp_var *var)
{
    return cp__self.current ? cp__hamt_find(cp__self.current->map, var->hash, var) : NULL;
}

/* The cache hit: the hot path of every get, kept a leaf function. The most
 * recent entry is looked at first, so a hit on it costs what a one-entry
 * cache does. */
static inline bool cache_hit(const cp_var *var, void **value)
{
    if (!value)
        return false;
    if (__builtin_expect(cp__self.hit.var == var, 1)) {
        *value = cp__self.hit.value;
        return true;
    }
    if (cp__self.cache_var2 == var) {
        *value = cp__self.cache_value2;
        return true;
    }
    return false;
}

/* The current context's value for var, looked up in the map and cached;
 * false when it has none. Out of line, so the hit path needs no frame. */
static __attribute__((noinline)) bool lookup_value(const cp_var *var, void **value)
{
    const cp__hamt_item *item = current_item(var);
    if (!item)
        return false;
    cp__self.cache_var2 = cp__self.hit.var;
    cp__self.cache_value2 = cp__self.hit.value;
    cp__self.hit.var = var;
    cp__self.hit.value = item->value;
    *value = item->value;
    return true;
}

static __attribute__((noinline)) int get_slow(const cp_var *var, void **value)
{
    if (!var || !value)
        return CP_EINVAL;
    if (lookup_value(var, value))
        return 0;
    if (!var->has_default)
        return CP_ENOENT;
    *value = var->default_value;
    return 0;
}

/* The get functions behind the header's inline gets: they answer hits on
 * the cache's second entry, misses, and calls through their addresses.
 * They start on a 64-byte boundary, so that the hit path
 * (nine instructions, twelve for the cache's second entry) sits in one
 * line of code whatever the functions laid out before it: where it
 * straddled two, a hit took 10 to 25% longer here, more than the whole gap
 * to pthread_getspecific. */
#define GET_ENTRY __attribute__((aligned(64)))

GET_ENTRY int (cp_var_get)(const cp_var *var, void **value)
{
    /* NULL arguments take the slow path, which reports them (a NULL var
     * never hits: the cache holds only variables that had a value). */
    if (__builtin_expect(cache_hit(var, value), 1))
        return 0;
    return get_slow(var, value);
}

GET_ENTRY void *(cp_var_get_or)(const cp_var *var, void *fallback)
{
    void *value;
    if (var && (cache_hit(var, &value) || lookup_value(var, &value)))
        return value;
    return fallback;
}

/* The innermost lazy run shares the current context (see cp__lazy)
 * and is about to change it: make its frame on the shared map, and enter
 * it. The frame's floor is the run's, so the tasks spawned in the run
 * before the set are the frame's, as they would have been. Out of line:
 * a set in such a run comes once a run at most. */
static __attribute__((noinline)) cp_context *lazy_frame(void)
{
    cp__lazy *l = cp__self.lazy;
    cp__context_begin_frame(&l->frame, l->over->map, false);
    l->frame.floor = l->floor;
    return &l->frame;
}

int cp_var_set(cp_var *var, void *value, cp_token **token)
{
    if (!var)
        return CP_EINVAL;
    cp_context *c = current_context();
    if (!c)
        return CP_ENOMEM;
    if (cp__context_shared_by_lazy(c))
        c = lazy_frame();
    cp_token *tok = NULL;
    if (token) {
        tok = cp__alloc_small(sizeof *tok);
        if (!tok)
            return CP_ENOMEM;
    }
    /* No lookup first: the map reports the item it replaced, or the one
     * that has this value already. */
    cp__hamt_item *item = item_new(var, value), *old;
    int err = item ? map_update(c, item, true, var, &old) : CP_ENOMEM;
    if (err == CP__HAMT_SAME) {
        /* The value the context has already: nothing changed, and the new
         * item was never seen (its shell goes, not the value). */
        cp__free_small(item, sizeof *item);
        if (tok)
            cp__hamt_item_incref(old);
    } else if (err != 0) {
        if (item)
            cp__free_small(item, sizeof *item);
        cp__free_small(tok, sizeof *tok);
        return CP_ENOMEM;
    } else {
        /* References on var: the new item's, and the token's when var had
         * no value to hold it (see below), taken at once, before old can
         * drop one of its own. */
        var_take(var, 1 + (tok && !old));
        if (!tok)
            cp__hamt_item_decref(old); /* NULL: none */
    }
    if (tok) {
        if (c->token_id == 0)
            /* relaxed: only uniqueness matters. */
            c->token_id = atomic_fetch_add_explicit(&next_token_id, 1,
                                                    memory_order_relaxed);
        /* The token takes the reference on old; old holds var for it.
         * Without one, the token holds var itself (taken above). */
        tok->var = var;
        tok->old = old;
        tok->var_refs = !old;
        tok->context_id = c->token_id;
        atomic_init(&tok->used, false); /* not yet shared */
        *token = tok;
    }
    return 0;
}

int cp_var_reset(cp_var *var, cp_token *token)
{
    if (!var || !token)
        return CP_EINVAL;
    /* relaxed: only the owner of the token's context stores true, and it is
     * the only thread that can get past the context check below. */
    if (atomic_load_explicit(&token->used, memory_order_relaxed))
        return CP_ETOKEN_USED;
    if (token->var != var)
        return CP_ETOKEN_VAR;
    cp_context *c = cp__self.current;
    /* A lazy run sharing c is not c: its frame, had it been made,
     * would have had no token yet. */
    if (!c || c->token_id != token->context_id || cp__context_shared_by_lazy(c))
        return CP_ETOKEN_CONTEXT;
    cp__hamt_item *gone = NULL;
    /* The map takes its own reference on the token's old item. A delete
     * of a variable already without a value (CP_ENOENT) leaves the state
     * the reset asks for. */
    int err = map_update(c, token->old, false, var, &gone);
    if (err == CP__HAMT_SAME)
        gone = NULL; /* the old value is there already (gone is borrowed) */
    else if (err != 0 && err != CP_ENOENT)
        return err;
    /* Usually gone is the set's own item, and this its last reference: the
     * token keeps the item's reference on var, so the variable's count is
     * not touched until cp_token_free drops both of the token's at once.
     * The token is finished with before gone's value is freed: free_value
     * is user code, which may reset this token again (CP_ETOKEN_USED) or
     * free it (a value that owns the token of its own set). */
    bool last = gone && cp__last_reference(&gone->refs);
    if (last)
        token->var_refs++;
    atomic_store_explicit(&token->used, true, memory_order_relaxed);
    if (last)
        item_free(gone);
    return 0;
}

cp_var *cp_token_var(const cp_token *token)
{
    return token ? token->var : NULL;
}

int cp_token_old_value(const cp_token *token, void **old)
{
    if (!token || !old)
        return CP_EINVAL;
    if (!token->old)
        return CP_ENOENT;
    *old = token->old->value;
    return 0;
}

void cp_token_free(cp_token *token)
{
    if (!token)
        return;
    if (token->old)
        cp__hamt_item_decref(token->old);
    if (token->var_refs)
        var_keep(token->var, token->var_refs);
    cp__free_small(token, sizeof *token);
}

/* ------------------------------------------------------------------------ */
/* Contexts                                                                  */

static void context_decref(cp_context *c)
{
    if (!cp__last_reference(&c->refs))
        return;
    /* A context on the current map, and none kept yet: keep this one (see
     * "The copy cache"). A base context is never kept: it is not shared. */
    if (CP__KEEP_FREED && c->shared && !cp__self.copy_cache && cp__self.current &&
        c->map.root && c->map.root == cp__self.current->map.root) {
        cp__self.copy_cache = c;
        return;
    }
    cp__hamt_decref(c->map);
    cp__free_small(c, sizeof *c);
}

cp__hamt cp__capture_refill(cp__hamt m)
{
    /* The batch is empty: every change of the current map flushes it. One
     * of the new references is the caller's. */
    cp__hamt_incref_n(m, CAPTURE_BATCH);
    cp__self.capture_root = m.root;
    cp__self.capture_refs = CAPTURE_BATCH - 1;
    return m;
}

/* Drop what the thread holds on its current map besides its context: the
 * kept copy and the rest of the capture batch (see cp__cache_forget). The
 * current context still holds the same root, so nothing is freed but the
 * kept copy's shell. */
void cp__map_holds_flush(void)
{
    cp_context *c = cp__self.copy_cache;
    if (c) {
        cp__self.copy_cache = NULL;
        cp__hamt_decref(c->map);
        cp__free_small(c, sizeof *c);
    }
    if (cp__self.capture_root) {
        cp__hamt m = {cp__self.capture_root, 0};
        size_t n = cp__self.capture_refs;
        cp__self.capture_root = NULL;
        cp__self.capture_refs = 0;
        cp__hamt_decref_n(m, n);
    }
}

void cp__context_incref(cp_context *c)
{
    /* relaxed: a new reference from one we hold orders nothing. */
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

cp_context *cp_context_new(void)
{
    return context_alloc(CP__HAMT_EMPTY, true);
}

static __attribute__((noinline)) cp_context *copy_current(void)
{
    cp__hamt m = cp__context_capture();
    cp_context *c = context_alloc(m, true);
    if (!c)
        cp__hamt_decref(m);
    return c;
}

cp_context *cp_copy_context(void)
{
    /* The kept copy, if any, is of the current map (see "The copy cache"). */
    cp_context *kept = cp__self.copy_cache;
    if (!kept)
        return copy_current();
    cp__self.copy_cache = NULL;
    context_init(kept, kept->map, true);
    return kept;
}

cp_context *cp_context_copy(const cp_context *c)
{
    if (!c)
        return NULL;
    cp__hamt m = map_ref(c);
    cp_context *copy = context_alloc(m, true);
    if (!copy)
        cp__hamt_decref(m);
    return copy;
}

void cp_context_free(cp_context *c)
{
    if (c)
        context_decref(c);
}

int cp__context_enter(cp_context *c)
{
    uintptr_t expected = 0;
    /* seq_cst on success: acquires, pairing with the release in
     * cp__context_leave, so every change the previous owner made
     * happens-before ours; and ordered with a reader's store of watched
     * (see "The map lock"). relaxed on failure: we only report who holds it. */
    if (!atomic_compare_exchange_strong_explicit(&c->owner, &expected, cp__self_id(),
                                                 memory_order_seq_cst,
                                                 memory_order_relaxed))
        return expected == cp__self_id() ? CP_ERECURSIVE : CP_EBUSY;
    /* Start without the lock again if an earlier reader left c watched
     * while nobody had it entered. relaxed: a stale false leaves watched
     * set, and write_begin's seq_cst load then takes the lock; a true is
     * cleared under the lock, so that no reader is reading at that moment.
     * See "The map lock". */
    if (c->shared && atomic_load_explicit(&c->watched, memory_order_relaxed) &&
        lockless_ok()) {
        map_lock(c);
        if (!c->fenced)
            atomic_store_explicit(&c->watched, false, memory_order_relaxed);
        map_unlock(c);
    }
    cp__context_incref(c);
    c->prev = cp__self.current;
    c->floor = cp__self.borrows;
    cp__self.current = c;
    cp__cache_forget();
    return 0;
}

void cp__context_leave(cp_context *c)
{
    if (cp__self.borrows != c->floor)
        cp__context_own_borrows(c);
    cp__self.current = c->prev;
    c->prev = NULL;
    cp__cache_forget();
    /* release: publishes our changes to c to its next owner (the acquire in
     * cp__context_enter) and to later readers of c->owner. */
    atomic_store_explicit(&c->owner, 0, memory_order_release);
    context_decref(c);
    if (cp__self.kept_var)
        cp__kept_flush();
}

int cp_context_run(cp_context *c, void *(*fn)(void *), void *arg, void **result)
{
    if (!c || !fn)
        return CP_EINVAL;
    int err = cp__context_enter(c);
    if (err != 0)
        return err;
    void *r = fn(arg);
    cp__context_leave(c);
    if (result)
        *result = r;
    return 0;
}

/* c's item for var, read safely from any thread; *value filled when found. */
static bool context_lookup(const cp_context *c, const cp_var *var, void **value)
{
    bool locked = read_begin(c);
    const cp__hamt_item *item = cp__hamt_find(c->map, var->hash, var);
    if (item)
        *value = item->value;
    read_end(c, locked);
    return item != NULL;
}

bool cp_context_contains(const cp_context *c, const cp_var *var)
{
    void *value;
    return c && var && context_lookup(c, var, &value);
}

int cp_context_get(const cp_context *c, const cp_var *var, void **value)
{
    if (!c || !var || !value)
        return CP_EINVAL;
    return context_lookup(c, var, value) ? 0 : CP_ENOENT;
}

void *cp_context_get_or(const cp_context *c, const cp_var *var, void *fallback)
{
    void *value;
    return c && var && context_lookup(c, var, &value) ? value : fallback;
}

size_t cp_context_len(const cp_context *c)
{
    if (!c)
        return 0;
    bool locked = read_begin(c);
    size_t n = c->map.count;
    read_end(c, locked);
    return n;
}

bool cp_context_equal(const cp_context *a, const cp_context *b)
{
    if (!a || !b)
        return false;
    if (a == b)
        return true; /* two reads of one context changing would differ */
    /* Snapshots of both: the owners may change them meanwhile. */
    cp__hamt ma = map_ref(a), mb = map_ref(b);
    /* One root: one map. Else the same count, and every item of a's found
     * in b's with the same value (a map holds one item per variable). */
    bool equal = ma.root == mb.root;
    if (!equal && ma.count == mb.count) {
        cp__hamt_iter it;
        cp__hamt_iter_init(&it, ma);
        equal = true;
        for (cp__hamt_item *x; equal && (x = cp__hamt_iter_next(&it));) {
            const cp__hamt_item *y = cp__hamt_find(mb, x->hash, x->key);
            equal = y && y->value == x->value;
        }
    }
    cp__hamt_decref(ma);
    cp__hamt_decref(mb);
    return equal;
}

cp_iter *cp_context_iter(const cp_context *c)
{
    if (!c)
        return NULL;
    cp_iter *it = cp__alloc_small(sizeof *it);
    if (!it)
        return NULL;
    it->map = map_ref(c);
    cp__hamt_iter_init(&it->it, it->map);
    return it;
}

bool cp_iter_next(cp_iter *it, cp_var **var, void **value)
{
    if (!it)
        return false;
    cp__hamt_item *item = cp__hamt_iter_next(&it->it);
    if (!item)
        return false;
    if (var)
        *var = (cp_var *)item->key;
    if (value)
        *value = item->value;
    return true;
}

void cp_iter_free(cp_iter *it)
{
    if (!it)
        return;
    cp__hamt_decref(it->map);
    cp__free_small(it, sizeof *it);
}

/* ------------------------------------------------------------------------ */
/* Threads that start in a copy of their creator's context                   */

/* On the creator's stack: the creator waits until the thread has read it. */
struct thread_start {
    cp_job_fn fn;
    void *arg;
    cp_context *base; /* the copy, made by the creator */
    int err;          /* the thread's adoption of base: 0 or CP_ENOMEM */
    sem_t adopted;    /* posted once err is written */
};

static void *thread_main(void *p)
{
    struct thread_start *start = p;
    cp_job_fn fn = start->fn;
    void *arg = start->arg;
    /* The copy becomes the thread's base context, so it is released however
     * the thread ends (return, pthread_exit, cancellation). Setting the key
     * can fail: past a process's first 32 keys, glibc allocates a thread's
     * slots for it. Then fn does not run, rather than run in an empty
     * context, and the creator reports it. */
    int err = base_adopt(start->base);
    if (err != 0)
        context_decref(start->base);
    start->err = err;
    sem_post(&start->adopted); /* start is the creator's again */
    return err == 0 ? fn(arg) : NULL;
}

int cp_thread_create(pthread_t *thread, const pthread_attr_t *attr, cp_job_fn fn,
                     void *arg)
{
    if (!thread || !fn)
        return CP_EINVAL;
    if (!cp__key_ready(&base_key))
        return CP_ENOMEM;
    struct thread_start start = {.fn = fn, .arg = arg, .base = cp_copy_context()};
    if (!start.base)
        return CP_ENOMEM;
    sem_init(&start.adopted, 0, 0); /* fails only for a count too large */
    int err = pthread_create(thread, attr, thread_main, &start);
    if (err != 0) {
        sem_destroy(&start.adopted);
        context_decref(start.base);
        /* EAGAIN: out of threads or memory; EINVAL, EPERM: attr asks for
         * what cannot be had, or not by this caller. */
        return err == EAGAIN ? CP_ENOMEM : CP_EINVAL;
    }
    /* Not cancelled while the thread may still write to start, on this
     * stack (sem_wait and pthread_join are cancellation points). */
    int cancel_state;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
    while (sem_wait(&start.adopted) != 0)
        ; /* EINTR: a signal handler ran */
    sem_destroy(&start.adopted);
    if (start.err != 0) {
        /* The thread ended without running fn: reap it, unless detached. */
        int state = PTHREAD_CREATE_JOINABLE;
        if (attr)
            pthread_attr_getdetachstate(attr, &state);
        if (state == PTHREAD_CREATE_JOINABLE)
            pthread_join(*thread, NULL);
    }
    pthread_setcancelstate(cancel_state, NULL);
    return start.err;
}
