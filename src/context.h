/* context.h - what the pool needs from the context core.
 *
 * The pool captures the submitter's context as a map (one reference, O(1)),
 * and runs the job in a "frame": a cp_context that lives on the worker's stack
 * for the length of one job, so that a job costs no context allocation; or,
 * when the captured map is the current context's map, in the current
 * context until the job sets something (cp__lazy). A frame is never handed
 * to the user, so nothing else can take a reference to it.
 */
#ifndef CTXPOOL_CONTEXT_H
#define CTXPOOL_CONTEXT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ctxpool.h"
#include "hamt.h"

struct cp_context {
    /* Holders: the user's handles, a run inside it, queued pool jobs. */
    atomic_size_t refs;
    /* The thread that has it entered (its cp__thread address), or 0. Set by
     * a compare-and-swap in cp__context_enter, cleared by cp__context_leave. */
    _Atomic uintptr_t owner;
    /* Guards map against readers on other threads; see "The map lock" in
     * context.c. Used only for contexts that other threads can reach
     * (shared): a thread's base context and a pool job's frame are never
     * handed out. (A frame leaves refs, owner and these unset.) */
    atomic_bool lock;
    bool shared;
    /* Set under lock by a thread other than the owner that reads map; while
     * set, the owner changes map under lock. An owner entering clears it,
     * under lock, unless fenced. */
    atomic_bool watched;
    /* Set by the owner while it changes map without the lock. */
    atomic_bool writing;
    /* Lock holders only: a reader has had to fence an owner's writes (see
     * "The map lock"); from then on c stays watched. */
    bool fenced;
    /* Written only by the owner (under lock once watched); read by the owner
     * without the lock and by other threads under it. */
    cp__hamt map;
    /* Owner only: the context that was current before this one was entered. */
    cp_context *prev;
    /* Owner only: the thread's newest borrow when c was entered or the frame
     * begun (NULL: none). The borrows above it are the tasks spawned in c
     * since, the only ones a sync in c may take (cp__context_may_sync). */
    struct cp__borrow *floor;
    /* Owner only: an identity for tokens, given on the first token (0: none). */
    uint64_t token_id;
    /* Whether map holds a reference (false only for a frame on a borrowed
     * map, until its first change). */
    bool owns_map;
};

/* Borrowed captures, for frame tasks: a capture of the current map that
 * takes no reference (no atomic operation), valid while the thread's current
 * map stays the same. If the thread changes a map that a borrow on its stack
 * refers to, or leaves the context the borrow was made in, the borrow takes
 * a reference first (cp__context_own_borrows), so the capture stays valid
 * until cp__context_unborrow. Borrows nest strictly: unborrow only the most
 * recent one. */
typedef struct cp__borrow {
    cp__hamt map;
    struct cp__borrow *prev;
    bool owned;
    /* Not the context core's: room the borrower may use (the pool keeps
     * there the fork generation of a queued task's pool), in what would
     * be padding otherwise. */
    unsigned spare;
} cp__borrow;

/* A run of a pool job or frame task whose captured map is the current
 * context's map (as when its spawner runs it at cp_sync or
 * cp_future_wait, nothing having been set since the spawn), sharing that
 * context instead of a frame of its own for as long as it can: reading
 * needs nothing more. A set makes the frame (on the shared map) and enters
 * it first (see lazy_frame in context.c); a reset of a token made before
 * the run is refused as another context's, as it would be in the frame,
 * which has none of its own yet. Saves the frame's enter and leave, and
 * keeps the get cache, for the runs that only read their context, as
 * fork-join code's mostly do (fib(30) with a task per call: 12% faster). */
typedef struct cp__lazy {
    cp_context frame;         /* the frame, once a set has made it */
    cp_context *over;         /* the context current when the run began */
    struct cp__borrow *floor; /* the newest borrow then: the run's floor */
    struct cp__lazy *prev;    /* the run this one is nested in, or NULL */
} cp__lazy;

/* The state of one thread, kept by context.c. Its address is the thread's
 * identity in cp_context.owner. It is declared here so that the pool's
 * per-task steps (frames, borrows) inline into the pool: they run once per
 * spawn. initial-exec: one %fs-relative access, no __tls_get_addr. */
struct cp__thread {
    /* The get cache's newest entry. First: the library exports its address
     * as cp_priv_get_hit (context.c), which the header's inline gets read. */
    cp_priv_get_cache hit;
    cp_context *current; /* NULL until the thread needs a base context */
    cp_context *base;
    /* The get cache's second entry: the variable cp_var_get found in the
     * current map before the one in hit, and its value;
     * CP__NO_VAR whenever the current map may have changed since. Two, so
     * that code reading a few variables in turn (a request ID, then a
     * deadline) still hits; the inline fast path looks at the first only. */
    const cp_var *cache_var2;
    void *cache_value2;
    cp__borrow *borrows; /* this thread's borrowed captures, newest first */
    /* The newest borrow when the innermost free_value running on this
     * thread began, or NULL when none runs: a free_value may sync only the
     * tasks it spawned (cp__context_may_sync; context.c's value_free). */
    cp__borrow *value_floor;
    /* The innermost lazy run (see cp__lazy), or NULL. It shares
     * `over` while `over` is the current context; a context entered inside
     * the run (a frame, a cp_context_run) is its own, as it would be inside
     * the run's frame. */
    cp__lazy *lazy;
    /* A context on this thread's current map that this thread freed last
     * (usually a copy it made): kept, with its reference on that map, for
     * the next cp_copy_context. */
    cp_context *copy_cache;
    /* References on one variable, kept from the last token this thread
     * freed for its next set of that variable (see "The kept references"
     * in context.c); NULL and 0 when none. */
    cp_var *kept_var;
    size_t kept_refs;
    /* References on the current map's root taken ahead for captures (see
     * "The capture batch" in context.c): capture_refs of them on
     * capture_root; NULL and 0 when none. */
    cp__hamt_node *capture_root;
    size_t capture_refs;
};

extern __thread struct cp__thread cp__self
    __attribute__((tls_model("initial-exec")));

/* An address no variable has (nor NULL): the empty get cache. */
extern const char cp__no_var;
#define CP__NO_VAR ((const cp_var *)&cp__no_var)

void cp__map_holds_flush(void);
void cp__kept_flush(void);
cp__hamt cp__capture_refill(cp__hamt m);

/* The current map may change, or another context becomes current: forget
 * what this thread keeps about its current map, the get cache, the copy
 * cache and the capture batch (context.c). Called before a change of the
 * map. */
static inline void cp__cache_forget(void)
{
    cp__self.hit.var = cp__self.cache_var2 = CP__NO_VAR;
    /* One test for both: this runs on every change and context switch. */
    if ((uintptr_t)cp__self.copy_cache | (uintptr_t)cp__self.capture_root)
        cp__map_holds_flush();
}

static inline uintptr_t cp__self_id(void)
{
    return (uintptr_t)&cp__self;
}

/* cp__context_capture in two steps, for a caller that must know whether
 * the capture needs a call before it commits to anything (the pool's
 * submit fast path): *m, the current map (empty if none); returns whether
 * its capture is free of calls: the map is empty, or the capture batch
 * has a reference on it. Then cp__context_capture_take(*m), with no change
 * of the thread's context in between, takes the reference. */
static inline bool cp__context_capture_ready(cp__hamt *m)
{
    *m = cp__self.current ? cp__self.current->map : CP__HAMT_EMPTY;
    return !m->root || cp__self.capture_root == m->root;
}

static inline void cp__context_capture_take(cp__hamt m)
{
    if (m.root && --cp__self.capture_refs == 0)
        cp__self.capture_root = NULL;
}

/* A new reference to the calling thread's current map (empty if none),
 * from the capture batch when it has one left for this map (see "The
 * capture batch" in context.c). Inline: the pool captures for every
 * submit. */
static inline cp__hamt cp__context_capture(void)
{
    cp__hamt m;
    if (!cp__context_capture_ready(&m))
        return cp__capture_refill(m);
    cp__context_capture_take(m);
    return m;
}

/* Give back m, a reference that the caller holds on the current map's
 * root (not NULL), m being the current map (a capture the caller no longer
 * needs): kept in the capture batch for the next capture instead of
 * dropped, so no atomic operation. The batch, if any, is on that root (see
 * "The capture batch" in context.c). */
static inline void cp__context_uncapture(cp__hamt m)
{
    cp__self.capture_root = m.root;
    cp__self.capture_refs++;
}

/* Make c a frame on map and enter it: c becomes the thread's current
 * context. owned: whether the frame takes a reference the caller holds, or
 * borrows map from someone who keeps it alive until the frame ends. As
 * cp__context_enter, but without atomic read-modify-writes, since no other
 * thread can reach a frame; it cannot fail. A frame is never a handle: no
 * one counts references to it, enters it, reads it from another thread or
 * locks it, so refs, owner, lock, watched and writing stay unset. */
static inline void cp__context_begin_frame(cp_context *c, cp__hamt map, bool owned)
{
    c->shared = false;
    c->map = map;
    c->prev = cp__self.current;
    c->floor = cp__self.borrows;
    c->token_id = 0;
    c->owns_map = owned;
    cp__self.current = c;
    cp__cache_forget();
}

/* Tasks spawned in c and not yet synced (their borrows are above c's
 * floor) take their own references to c's map, which c's next owner may
 * change in place, or its last holder free (context.c). Called before a
 * change of c's map and as c is left, when c has such tasks: rare, out of
 * line. */
void cp__context_own_borrows(cp_context *c);

/* Leave the frame c, which must be current, and drop the map it holds then
 * if it holds a reference, and the variable references the thread kept (as
 * cp__context_leave does). c is dead afterwards: its fields are left as
 * they are, since nothing can read them any more. */
static inline void cp__context_end_frame(cp_context *c)
{
    if (cp__self.borrows != c->floor)
        cp__context_own_borrows(c);
    cp__self.current = c->prev;
    cp__cache_forget();
    if (c->owns_map)
        cp__hamt_decref(c->map);
    if (cp__self.kept_var)
        cp__kept_flush();
}

static inline void cp__context_borrow(cp__borrow *b)
{
    b->map = cp__self.current ? cp__self.current->map : CP__HAMT_EMPTY;
    b->owned = false;
    b->prev = cp__self.borrows;
    cp__self.borrows = b;
}

static inline cp__borrow *cp__context_borrow_top(void)
{
    return cp__self.borrows;
}

/* Whether a lazy run shares the context c (see cp__lazy). */
static inline bool cp__context_shared_by_lazy(const cp_context *c)
{
    return cp__self.lazy && cp__self.lazy->over == c;
}

/* Whether b may be synced now: it is the thread's newest borrow (syncs
 * nest like scopes), and it was made in the current context since the
 * context was entered or its frame begun, and since the free_value running
 * began, if one does. So a task run on the thread that spawned it (inline,
 * or while that thread helps in a wait) cannot sync itself or a sibling its
 * spawner has not synced, another job run there cannot sync the tasks of
 * the job that waits below it, and neither can a free_value run as a job
 * or task ends (after its frame is left, its task still on the stack). */
static inline bool cp__context_may_sync(const cp__borrow *b)
{
    const cp__borrow *floor = cp__self.current ? cp__self.current->floor : NULL;
    if (cp__context_shared_by_lazy(cp__self.current))
        floor = cp__self.lazy->floor; /* the floor its frame would have */
    return b == cp__self.borrows && b != floor && b != cp__self.value_floor;
}

/* Begin a lazy run in l, on the current context, which must not
 * be NULL and whose map the job or task captured. l lives until
 * cp__context_end_lazy, which the caller runs when it returns. */
static inline void cp__context_begin_lazy(cp__lazy *l)
{
    l->over = cp__self.current;
    l->floor = cp__self.borrows;
    l->prev = cp__self.lazy;
    cp__self.lazy = l;
}

/* End the run l: leave its frame if a set made one (contexts entered in the
 * run have been left, so the current one is the frame or l->over). The
 * run ends first: the frame's end may run user code (a free_value), which
 * must find the spawner's context as a real frame's end leaves it, not a
 * run that would make the frame again. Without a frame, the references
 * the run kept on a variable (a token freed in it: "The kept references"
 * in context.c) go as a frame's end would drop them. */
static inline void cp__context_end_lazy(cp__lazy *l)
{
    cp__self.lazy = l->prev;
    if (cp__self.current == &l->frame)
        cp__context_end_frame(&l->frame);
    else if (cp__self.kept_var)
        cp__kept_flush();
}

static inline void cp__context_unborrow(cp__borrow *b)
{
    cp__self.borrows = b->prev;
    if (b->owned)
        cp__hamt_decref(b->map);
}

/* Take one more reference to a heap context (not a frame). */
void cp__context_incref(cp_context *c);

/* Enter c on this thread: 0, CP_EBUSY (another thread has it) or
 * CP_ERECURSIVE (this thread has it). Leave restores the previous context;
 * enters and leaves nest strictly. */
int cp__context_enter(cp_context *c);
void cp__context_leave(cp_context *c);

/* Test hook: whether shared contexts made from now on start without the
 * lock (their owner takes it once another thread reads them), and whether
 * an enter from now on may take a watched context off the lock again (see
 * "The map lock" in context.c). On by default where the kernel offers
 * membarrier; turning it on elsewhere has no effect. */
void cp__context_lockless_writes(bool on);

#endif /* CTXPOOL_CONTEXT_H */
