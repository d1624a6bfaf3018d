/* context.h - what the pool needs from the context core.
 *
 * The pool captures the submitter's context as a map (one reference, O(1)),
 * and runs the job in a "frame": a cp_context that lives on the worker's stack
 * for the length of one job, so that a job costs no context allocation. A
 * frame is never handed to the user, so nothing else can take a reference to
 * it.
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
    /* Guards map against readers on other threads; see context.c. Taken
     * only for contexts that other threads can reach (shared): a thread's
     * base context and a pool job's frame are never handed out. */
    atomic_bool lock;
    bool shared;
    /* Written only by the owner, under lock; read by the owner without it and
     * by other threads under it. */
    cp__hamt map;
    /* Owner only: the context that was current before this one was entered. */
    cp_context *prev;
    /* Owner only: an identity for tokens, given on the first token (0: none). */
    uint64_t token_id;
    /* Whether map holds a reference (false only for a frame on a borrowed
     * map, until its first change). */
    bool owns_map;
};

/* A new reference to the calling thread's current map (empty if none). */
cp__hamt cp__context_capture(void);

/* Make c a frame on map. owned: whether the frame takes a reference the
 * caller holds, or borrows map from someone who keeps it alive until the
 * frame is finished. Finish with cp__context_fini_frame, which drops the map
 * the frame holds then, if it holds a reference. */
void cp__context_init_frame(cp_context *c, cp__hamt map, bool owned);
void cp__context_fini_frame(cp_context *c);

/* Borrowed captures, for frame tasks: a capture of the current map that
 * takes no reference (no atomic operation), valid while the thread's current
 * map stays the same. If the thread changes a map that a borrow on its stack
 * refers to, the borrow takes a reference first ("materialises"), so the
 * capture stays valid until cp__context_unborrow. Borrows nest strictly:
 * unborrow only the most recent one. */
typedef struct cp__borrow {
    cp__hamt map;
    struct cp__borrow *prev;
    bool owned;
} cp__borrow;

void cp__context_borrow(cp__borrow *b);
cp__borrow *cp__context_borrow_top(void);
void cp__context_unborrow(cp__borrow *b);

/* Take one more reference to a heap context (not a frame). */
void cp__context_incref(cp_context *c);

/* Enter c on this thread: 0, CP_EBUSY (another thread has it) or
 * CP_ERECURSIVE (this thread has it). Leave restores the previous context;
 * enters and leaves nest strictly. */
int cp__context_enter(cp_context *c);
void cp__context_leave(cp_context *c);

/* Whether this thread has c entered anywhere up its stack. */
bool cp__context_entered_here(const cp_context *c);

#endif /* CTXPOOL_CONTEXT_H */
