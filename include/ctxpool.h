/* ctxpool.h - context variables (PEP 567) and a work-stealing pool that carries them.
 *
 * ctxpool gives C what Python's contextvars module gives Python: variables whose
 * value belongs to a *context* rather than to a thread, contexts that copy in
 * O(1), and a thread pool whose every job runs in a copy of its submitter's
 * context. A request ID set before a submit is what the job sees, on whichever
 * worker it lands, and in every job that job submits in turn.
 *
 * The rule that keeps it safe: one context is never entered by two threads at
 * once, nor twice by one thread. The library refuses such an entry with
 * CP_EBUSY or CP_ERECURSIVE; it never lets it through and never waits on it.
 *
 * Conventions for every function below:
 * - Functions that can fail return 0 or a negative CP_E* code; on failure
 *   they change nothing. Constructors that can only fail for lack of memory
 *   return NULL instead.
 * - Freeing NULL (cp_var_free, cp_context_free, ...) is a harmless no-op.
 * - NULL where a pointer is required gives CP_EINVAL (or NULL, false, 0).
 * - The library never prints, never exits and never aborts on bad input.
 *
 * Threads: "any thread" means any thread, at any time, concurrently with any
 * other call on the same object unless the comment says otherwise; the
 * free functions (cp_*_free) excepted: free an object once, after every
 * other call on it has returned (but a context may be freed by the function
 * a run calls inside it: see cp_context_free).
 */
#ifndef CP_CTXPOOL_H
#define CP_CTXPOOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CP_BUILDING_LIBRARY) && defined(__GNUC__)
#define CP_EXPORT __attribute__((visibility("default")))
#else
#define CP_EXPORT
#endif

/* The version of this header. CP_VERSION_NUMBER is all three in one
 * number, MAJOR * 10000 + MINOR * 100 + PATCH (0.1.0: 100; MINOR and PATCH
 * stay below 100), to compare with cp_version(). */
#define CP_VERSION_MAJOR 0
#define CP_VERSION_MINOR 1
#define CP_VERSION_PATCH 0
#define CP_VERSION_NUMBER \
    (CP_VERSION_MAJOR * 10000 + CP_VERSION_MINOR * 100 + CP_VERSION_PATCH)

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* One table gives every error its number and its text (see cp_strerror). */
#define CP_ERRNO_MAP(XX)                                                          \
    XX(ENOMEM, -1, "out of memory")                                               \
    XX(EINVAL, -2, "invalid argument")                                            \
    XX(ENOENT, -3, "no value for the variable")                                   \
    XX(EBUSY, -4, "context is entered by another thread, or job has started")    \
    XX(ERECURSIVE, -5, "context is already entered by this thread")               \
    XX(ETOKEN_USED, -6, "token has already been used once")                       \
    XX(ETOKEN_VAR, -7, "token was created by a different variable")               \
    XX(ETOKEN_CONTEXT, -8, "token was created in a different context")            \
    XX(ESHUTDOWN, -9, "pool is shutting down or shut down")                       \
    XX(ECANCELED, -10, "job was cancelled before it ran")                         \
    XX(ETIMEDOUT, -11, "timed wait ran out")                                      \
    XX(EDEADLK, -12, "call would wait on itself")

enum {
#define CP_ERRNO_ENUM(name, value, text) CP_##name = (value),
    CP_ERRNO_MAP(CP_ERRNO_ENUM)
#undef CP_ERRNO_ENUM
};

/* cp_strerror - a short English text for an error code.
 * Returns a static string for every CP_E* code, "success" for 0 and
 * "unknown error" for anything else. Never NULL.
 * Threads: any thread. */
CP_EXPORT const char *cp_strerror(int err);

/* cp_version - the version of the library the program runs with, encoded as
 * CP_VERSION_NUMBER is. Linked as a shared library, that is the one the
 * dynamic loader found, which may be newer than the header the program was
 * compiled with (CP_VERSION_NUMBER): a program that needs a later call or
 * fix than some version can check at start-up. Threads: any thread. */
CP_EXPORT unsigned cp_version(void);

/* ------------------------------------------------------------------------ */
/* Context variables (ContextVar, Token)                                     */
/* ------------------------------------------------------------------------ */

typedef struct cp_var cp_var;
typedef struct cp_token cp_token;
typedef struct cp_context cp_context;
typedef struct cp_iter cp_iter;

/* cp_var_new - create a context variable with no default (ContextVar(name)).
 * name: copied; may be NULL (the variable is then named "").
 * free_value: called exactly once on every value the library owns (each value
 *   passed to cp_var_set) as soon as no context, snapshot, iterator or token
 *   refers to it any more; a NULL value is one too, so free_value must
 *   accept NULL, as free() does. NULL: values are borrowed pointers, never
 *   freed.
 *   It runs on the thread that lets go of the last reference (a reset or
 *   set there, the end of a job or of a thread, a free of a context,
 *   token or copy), in whatever context is current there, not in the one
 *   that held the value; it may call the library (but cp_sync only on tasks
 *   it spawned itself: see cp_sync).
 * Returns the variable, or NULL when memory ran out.
 * Ownership: the caller owns one reference, dropped with cp_var_free.
 * Threads: any thread. */
CP_EXPORT cp_var *cp_var_new(const char *name, void (*free_value)(void *));

/* cp_var_new_default - as cp_var_new, with a default value
 * (ContextVar(name, default=...)). cp_var_get returns the default where the
 * current context has no value for the variable.
 * Ownership: on success the variable owns default_value and frees it with
 *   free_value when the variable is destroyed. On failure (NULL) nothing
 *   changed: default_value is still the caller's, and was not freed.
 * Returns the variable, or NULL when memory ran out. Threads: any thread. */
CP_EXPORT cp_var *cp_var_new_default(const char *name, void *default_value,
                                     void (*free_value)(void *));

/* cp_var_free - drop the creator's reference to a variable.
 * The variable lives on while any context, snapshot, iterator or token still
 * holds a value for it; those keep working, and each value is still freed
 * exactly once. Freed while another thread keeps the hold of one of its
 * freed tokens (see cp_token_free), it lives on, with its default value,
 * until that thread lets go.
 * The caller must not use var after this call.
 * NULL: no-op. Threads: any thread. */
CP_EXPORT void cp_var_free(cp_var *var);

/* cp_var_name - the variable's name (ContextVar.name); "" for NULL.
 * Returns a string owned by the variable, valid while the variable lives.
 * Threads: any thread. */
CP_EXPORT const char *cp_var_name(const cp_var *var);

/* cp_var_get - the variable's value in the calling thread's current context
 * (ContextVar.get()).
 * Lookup order: the context's value, else the variable's default.
 * Returns 0 and stores the value in *value; CP_ENOENT when there is neither
 * (*value untouched); CP_EINVAL when var or value is NULL.
 * Ownership: *value is borrowed: valid until this thread sets or resets the
 *   variable again, or leaves the current context.
 * Threads: any thread; reads only the calling thread's current context. */
CP_EXPORT int cp_var_get(const cp_var *var, void **value);

/* cp_var_get_or - the variable's value in the current context, else fallback
 * (ContextVar.get(default)). The fallback wins over the variable's default.
 * Returns fallback also when var is NULL. Ownership and threads: as cp_var_get. */
CP_EXPORT void *cp_var_get_or(const cp_var *var, void *fallback);

/* Not part of the API: the inline fast path of the two gets above, with
 * GCC and compilers that speak its dialect (clang), unless the program
 * defines CP_NO_INLINE_GET before including this header (for a binding
 * generator, or code with a member of either name). The macros below send
 * every call of cp_var_get and cp_var_get_or through it; taking a
 * function's address still gives the library's function. The calling
 * thread's get cache: the variable of its latest lookup in the current
 * context (never NULL) and the value found. The library forgets it (var
 * becomes a variable-less address) on every set, reset and change of
 * current context of this thread, so a hit is its value in the current
 * context: two loads and a compare inline, where a call into the library
 * costs about as much as pthread_getspecific. Anything else calls the
 * library. The layout is part of the library's binary interface.
 * Thread-local and initial-exec, as the library's own thread state is. */
typedef struct cp_priv_get_cache {
    const cp_var *var;
    void *value;
} cp_priv_get_cache;

#if defined(__GNUC__) && !defined(CP_NO_INLINE_GET)
CP_EXPORT extern __thread cp_priv_get_cache cp_priv_get_hit
    __attribute__((tls_model("initial-exec")));

static inline int cp_priv_var_get(const cp_var *var, void **value)
{
    if (__builtin_expect(value && cp_priv_get_hit.var == var, 1)) {
        *value = cp_priv_get_hit.value;
        return 0;
    }
    return (cp_var_get)(var, value);
}

static inline void *cp_priv_var_get_or(const cp_var *var, void *fallback)
{
    /* A NULL var never hits: the cache's var is never NULL. */
    if (__builtin_expect(cp_priv_get_hit.var == var, 1))
        return cp_priv_get_hit.value;
    return (cp_var_get_or)(var, fallback);
}

/* Variadic, so that an argument with commas of its own (a compound
 * literal) stays one argument, as in a call of the function. */
#define cp_var_get(...) cp_priv_var_get(__VA_ARGS__)
#define cp_var_get_or(...) cp_priv_var_get_or(__VA_ARGS__)
#endif

/* cp_var_set - give the variable a new value in the current context
 * (ContextVar.set(value)).
 * token: where to store an undo record for cp_var_reset; NULL: none is made.
 * Returns 0; CP_EINVAL when var is NULL; CP_ENOMEM when memory ran out (the
 *   context is unchanged, value is not taken and not freed).
 * Ownership: on success the library owns value (see cp_var_new) and the caller
 *   owns *token (free it with cp_token_free). Pass each owned value to the
 *   library once: setting a pointer it already owns is allowed only where it
 *   is the variable's current value in this context (the set then changes
 *   nothing); anywhere else free_value would run for it twice. Values with a
 *   NULL free_value are borrowed and may be set anywhere, any number of times.
 *   The value is shared, never copied: every context and copy that holds
 *   it (jobs' captures included) sees the same object. Treat it as
 *   immutable: to change a setting, set a new value (a changed copy of the
 *   old one); a write through a pointer a get returned reaches every
 *   context that holds it, the submitter's and the sibling jobs' included.
 * Threads: any thread; changes only the calling thread's current context. */
CP_EXPORT int cp_var_set(cp_var *var, void *value, cp_token **token);

/* cp_var_reset - put the variable back to what it was before the set that
 * made token (ContextVar.reset(token)): its old value, or no value at all if it
 * had none (the default is not written). Tokens may be reset in any order.
 * Checks, in this order: token already used (CP_ETOKEN_USED), token made by
 * another variable (CP_ETOKEN_VAR), token made in another context
 * (CP_ETOKEN_CONTEXT). Also CP_EINVAL for NULL, CP_ENOMEM when memory ran out.
 * On success the token is marked used; it is not freed.
 * Threads: any thread; changes only the calling thread's current context. */
CP_EXPORT int cp_var_reset(cp_var *var, cp_token *token);

/* cp_token_var - the variable that made the token (Token.var); NULL for NULL.
 * Borrowed: valid while the token lives. Threads: any thread. */
CP_EXPORT cp_var *cp_token_var(const cp_token *token);

/* cp_token_old_value - the value the variable had before the set that made
 * the token (Token.old_value).
 * Returns 0 and stores it in *old; CP_ENOENT when the variable had no value
 * (Token.MISSING); CP_EINVAL for NULL arguments.
 * Borrowed: valid while the token lives. Threads: any thread. */
CP_EXPORT int cp_token_old_value(const cp_token *token, void **old);

/* cp_token_free - free a token, used or not. NULL: no-op.
 * The token's hold on its variable (on no value but the variable's default)
 * stays with the calling thread for its next cp_var_set of that variable,
 * which then costs no atomic operation on the variable's count. The thread
 * lets go of it when another token's hold takes its place, when it leaves a
 * context (the end of any cp_context_run or pool job on it), when it frees
 * the variable, or when it exits. It keeps nothing for a variable already
 * freed with cp_var_free (by this thread, or by another whose call
 * happens-before this one), nor a variable's last hold.
 * Threads: any thread. */
CP_EXPORT void cp_token_free(cp_token *token);

/* ------------------------------------------------------------------------ */
/* Contexts (Context, copy_context)                                          */
/* ------------------------------------------------------------------------ */

/* Every thread has a current context. A thread that entered none runs in its
 * own base context, empty when the thread starts, created on first use and
 * released when the thread exits. exit() (and a return from main) ends the
 * process without that for the thread that calls it, except for the thread
 * that loaded the library (main, in a program linked with it): when that
 * thread calls exit() or returns from main, its base context is released,
 * as a C++ thread_local object is: before the atexit handlers and the
 * destructors of static objects run, on that thread. When another thread
 * calls exit(), no base context is released, main's included: their values
 * stay to the end of the process. */

/* cp_context_new - a new, empty context (Context()).
 * Returns it, or NULL when memory ran out. Free with cp_context_free.
 * Threads: any thread. */
CP_EXPORT cp_context *cp_context_new(void);

/* cp_copy_context - a copy of the calling thread's current context
 * (copy_context()). O(1) whatever the number of variables set: the copy shares
 * the values; changes in either one are not seen by the other.
 * Returns it, or NULL when memory ran out. Free with cp_context_free.
 * Threads: any thread. */
CP_EXPORT cp_context *cp_copy_context(void);

/* cp_context_copy - a copy of c (Context.copy()); O(1). Returns NULL when c is
 * NULL or memory ran out.
 * Threads: any thread, also while another thread runs inside c: the copy is a
 * consistent snapshot of c at one moment. */
CP_EXPORT cp_context *cp_context_copy(const cp_context *c);

/* cp_context_free - drop the caller's reference to c. The context lives on
 * while a run inside it (the free may come from the function the run
 * calls) or a pool job queued for it still needs it.
 * NULL: no-op. Threads: any thread. */
CP_EXPORT void cp_context_free(cp_context *c);

/* cp_context_run - enter c on this thread, call fn(arg), leave c
 * (Context.run(fn, arg)). Every change fn makes to any variable is kept in c
 * and nowhere else; the caller's own context is untouched.
 * result: receives fn's return value; may be NULL.
 * Returns 0 once fn has returned; CP_EBUSY when another thread has c entered;
 * CP_ERECURSIVE when this thread has (anywhere up its stack); CP_EINVAL for
 * NULL c or fn. On an error fn is not called.
 * fn must return: a thread that ends inside fn (pthread_exit, longjmp out of
 * it) leaves c entered for good, and later runs get CP_EBUSY or
 * CP_ERECURSIVE (a new thread may reuse an ended one's identity).
 * Threads: any thread. Ordering: everything done in c by its previous runs,
 * on any thread, happens-before fn starts. */
CP_EXPORT int cp_context_run(cp_context *c, void *(*fn)(void *), void *arg,
                             void **result);

/* cp_context_contains - whether c holds a value for var (var in context).
 * Variable defaults do not count. false for NULL arguments.
 * Threads: any thread, also while another thread runs inside c (a live view:
 * inside a run on this thread, it sees fn's changes). */
CP_EXPORT bool cp_context_contains(const cp_context *c, const cp_var *var);

/* cp_context_get - c's value for var (context[var]); defaults do not count.
 * Returns 0 and stores it in *value; CP_ENOENT when c has no value for var;
 * CP_EINVAL for NULL arguments.
 * Borrowed: *value is valid while c holds that value. On a context that
 * another thread runs inside, that can end at any moment (a set or reset
 * there frees the value): to use a value from such a context, copy the
 * context (cp_context_copy) and read the copy, which holds its values
 * until it is freed.
 * Threads: as cp_context_contains. */
CP_EXPORT int cp_context_get(const cp_context *c, const cp_var *var, void **value);

/* cp_context_get_or - c's value for var, else fallback (Context.get(var,
 * default)); defaults of the variable do not count.
 * Borrowed: as cp_context_get's (from a context another thread runs
 * inside, read a copy).
 * Threads: as cp_context_contains. */
CP_EXPORT void *cp_context_get_or(const cp_context *c, const cp_var *var,
                                  void *fallback);

/* cp_context_len - the number of variables c holds a value for (len(context));
 * 0 for NULL. Threads: as cp_context_contains. */
CP_EXPORT size_t cp_context_len(const cp_context *c);

/* cp_context_equal - whether a and b hold values for the same variables,
 * the same values (a == b: Context is a Mapping; values compare as
 * pointers, what they point to is the caller's business); defaults of the
 * variables do not count. Each is read as one consistent snapshot. false
 * when either is NULL. Threads: as cp_context_contains. */
CP_EXPORT bool cp_context_equal(const cp_context *a, const cp_context *b);

/* cp_context_iter - an iterator over a snapshot of c taken in O(1)
 * (iter/keys/values/items). Later changes to c do not show in it.
 * Returns it, or NULL when c is NULL or memory ran out. Free with cp_iter_free.
 * Threads: any thread, also while another thread runs inside c. */
CP_EXPORT cp_iter *cp_context_iter(const cp_context *c);

/* cp_iter_next - the next variable and its value in no particular order.
 * var and value may each be NULL when not wanted.
 * Returns true and fills them; false at the end (or for a NULL iterator).
 * Borrowed: both stay valid while the iterator lives.
 * Threads: one thread at a time per iterator. */
CP_EXPORT bool cp_iter_next(cp_iter *it, cp_var **var, void **value);

/* cp_iter_free - free an iterator and its snapshot. NULL: no-op.
 * Threads: any thread, once per iterator. */
CP_EXPORT void cp_iter_free(cp_iter *it);

/* ------------------------------------------------------------------------ */
/* Pool                                                                      */
/* ------------------------------------------------------------------------ */

typedef struct cp_pool cp_pool;
typedef struct cp_future cp_future;
typedef void *(*cp_job_fn)(void *arg);

typedef struct cp_pool_options {
    unsigned threads;  /* 0: one per online CPU */
    const char *name;  /* worker thread name prefix; NULL or "": "cp-worker" */
    bool pin;          /* pin each worker to one CPU (see cp_pool_new) */
    size_t stack_size; /* bytes of stack for each worker; 0: the system's */
    /* Called on each worker's own thread with its index and hook_arg:
     * on_start before it runs any work, on_stop after its last (see
     * cp_pool_new). NULL: none. */
    void (*on_start)(unsigned worker, void *hook_arg);
    void (*on_stop)(unsigned worker, void *hook_arg);
    void *hook_arg;
    /* Zero-initialise the whole struct ({0} or designated initializers),
     * so that fields added later start at their defaults when you rebuild.
     * A field added changes the library's interface version (its soname):
     * a program built with the older, smaller struct keeps using the
     * library it was built for. */
} cp_pool_options;

/* cp_pool_new - start a pool of worker threads.
 * options: may be NULL (all defaults). Worker i is named "<name>-<i>"
 *   (the name cut to the 15 bytes Linux keeps, the index kept whole, and
 *   no UTF-8 character cut in half).
 *   With pin, worker i runs only on the CPU that comes (i mod n)-th of the
 *   n CPUs the calling thread may run on, as Lace and OpenMP's proc_bind do;
 *   for fork-join work on a machine the pool has to itself. Without it the
 *   kernel places the workers, and may leave a woken worker waiting behind
 *   a busy one on the same CPU while another CPU idles (seen on virtual
 *   machines). Pinning is best effort: a worker the system refuses to pin
 *   runs unpinned.
 *   stack_size: as pthread_attr_setstacksize. A wait in a job (for a
 *   future, or a cp_sync) may run other jobs on the same stack meanwhile,
 *   so deep fork-join may need more than the default.
 *   on_start, on_stop: for what each worker thread needs set up before
 *   jobs run on it (a per-thread allocator arena, a tracer's thread
 *   registration), and torn down after. A job runs on a worker only after
 *   that worker's on_start returned. on_stop runs on every worker that
 *   ran on_start, once the pool is shut down and the worker has run its
 *   last job (after cp_pool_shutdown, when the work left has run; at the
 *   latest before cp_pool_free returns; also when cp_pool_new fails after
 *   starting some); never in a child of fork(), which has no workers.
 *   Each call runs in a fresh copy of the context that was current when
 *   cp_pool_new was called, as a job would: what it sets stays there, no
 *   job sees it, nor does the worker's on_stop (state for on_stop, or for
 *   jobs, goes in a __thread variable, as cp_pool(3)'s example does). A
 *   hook runs outside the pool's work: submits and spawns from on_stop are
 *   refused (CP_ESHUTDOWN), and cp_pool_free from it returns CP_EDEADLK.
 *   on_start must return, and must not wait for the thread that calls
 *   cp_pool_new (which waits for it), for another worker's on_start (that
 *   worker may never start), or for work of the pool (a task it spawns,
 *   say: its own worker runs nothing before it returns, and with one
 *   thread nobody else would). A hook that forks must end the child
 *   before it returns, as a job must.
 * Returns when every worker has named itself, pinned itself and run
 * on_start: 0, and stores the pool in *pool; CP_EINVAL for NULL pool or a
 * stack_size the system refuses (below PTHREAD_STACK_MIN, or so large it
 * overflows with a guard page added); CP_ENOMEM when memory or threads ran
 * out, a stack that cannot be mapped included (no thread is left
 * running). On an error *pool is untouched.
 * Threads: any thread. The hooks of different workers run at the same
 * time, and on_stop while other workers still run jobs.
 * Ownership: options is read during the call (name is copied); hook_arg
 * is borrowed until cp_pool_free returns. */
CP_EXPORT int cp_pool_new(cp_pool **pool, const cp_pool_options *options);

/* cp_pool_submit - queue fn(arg) to run on a worker, in a copy of the calling
 * thread's current context taken now in O(1). A job submitted from a job
 * captures that job's current context, its changes included.
 * future: receives a future for the job's outcome; NULL: fire and forget.
 * arg: passed to fn as it is; whatever it points to must stay valid until
 *   fn has run (or the job was cancelled).
 * Returns 0; CP_EINVAL for NULL pool or fn; CP_ESHUTDOWN after
 * cp_pool_shutdown (a job of the pool may still submit while the pool
 * drains: that work belongs to a job already accepted; not after a cancel
 * shutdown); CP_ENOMEM. On an error fn will never run.
 * Ordering: everything the caller did before the submit happens-before fn
 * starts; fn's end happens-before cp_future_wait returns.
 * Threads: any thread, including the pool's own workers. */
CP_EXPORT int cp_pool_submit(cp_pool *pool, cp_job_fn fn, void *arg,
                             cp_future **future);

/* cp_pool_submit_in - queue fn(arg) to run inside c itself, as
 * asyncio.create_task(coro, context=c): its changes stay in c.
 * If c is entered elsewhere when the job starts, the job does not run and its
 * future reports CP_EBUSY (another thread) or CP_ERECURSIVE (the worker's own
 * stack). The pool holds its own reference to c until the job is done, so the
 * caller may free its reference right after the call. (For a job that a
 * CP_SHUTDOWN_CANCEL cancels in its queue: until cp_pool_shutdown returns,
 * which may be after the job's wait has returned; see there.)
 * Unlike asyncio's tasks, two jobs in one context do not interleave: one
 * that starts while another holds c reports CP_EBUSY. Give each concurrent
 * job its own cp_context_copy(c) (a request's copy of the application
 * context), or wait for one before submitting the next.
 * Without a future nothing reports such a refusal (the job counts as
 * completed in the stats): submit fire and forget only into a context that
 * nothing else enters, such as a fresh copy.
 * Returns and threads: as cp_pool_submit, plus CP_EINVAL for NULL c. */
CP_EXPORT int cp_pool_submit_in(cp_pool *pool, cp_context *c, cp_job_fn fn,
                                void *arg, cp_future **future);

/* cp_future_wait - wait until the job has finished or was cancelled.
 * result: receives fn's return value when the outcome is 0; may be NULL.
 * Returns the job's outcome: 0 (it ran), CP_ECANCELED, CP_EBUSY or
 * CP_ERECURSIVE (a submit_in job whose context was entered elsewhere), or
 * CP_EINVAL for NULL f, or CP_EDEADLK when called from inside the job itself
 * (or from a job its thread runs while it waits), or CP_ESHUTDOWN in a child
 * of fork() for a job that had not finished at the fork: nothing is waited
 * for.
 * Called on a worker of the pool, it runs jobs of the pool while it waits
 * (the awaited one itself when it finds it queued, as fork-join wants), so
 * fork-join never deadlocks, with any number of threads;
 * with nothing to run it sleeps until the job ends or new work comes to the
 * pool, which it then runs too. Those jobs run on the waiting thread, in
 * their own contexts: a job that waits must not hold a lock they may take
 * (a non-recursive mutex would deadlock), nor count on thread-local state
 * staying as it left it.
 * Ordering: the job's end happens-before this returns.
 * Threads: any thread; several threads may wait on one future. */
CP_EXPORT int cp_future_wait(cp_future *f, void **result);

/* cp_future_wait_timeout - as cp_future_wait, waiting at most timeout_ns
 * nanoseconds; CP_ETIMEDOUT when the job has not finished by then (it goes
 * on; wait again or free the future). A timeout of 0 polls; UINT64_MAX waits
 * without limit. On a worker of the pool it runs jobs while it waits, as
 * cp_future_wait does, the awaited one among them when it finds it queued,
 * looking at the limit before each: so it may return later than the limit
 * by the length of one job or task it ran (then 0, if that was the awaited
 * job), however much work it finds. A deadline that must hold
 * needs a wait from a thread outside the pool. Threads: as cp_future_wait. */
CP_EXPORT int cp_future_wait_timeout(cp_future *f, uint64_t timeout_ns,
                                     void **result);

/* cp_future_wait_any - wait until one of n futures has finished or was
 * cancelled, for at most timeout_ns nanoseconds (0 polls; UINT64_MAX waits
 * without limit). Returns 0 and stores in *index (index may be NULL) an
 * i for which futures[i] is done, whose cp_future_wait then returns its
 * outcome at once: the first found done, looking in order; CP_ETIMEDOUT
 * when none is by then; CP_EINVAL when futures is NULL, n is 0, an element
 * is NULL, or the futures come from more than one pool; and, when none is
 * done, CP_EDEADLK if the calling
 * thread runs one of them (or a job its thread runs meanwhile does), or
 * CP_ESHUTDOWN in a child of fork() (as cp_future_wait). *index is
 * written only on success. An element may appear more than once. The
 * futures are not changed: wait again for the rest, or free them.
 * Called on a worker of their pool, it runs jobs of the pool while it
 * waits, as cp_future_wait does (one of them when it finds it queued),
 * looking at the limit before each: so it may return later than the limit
 * by the length of one job or task it ran.
 * Costs O(n) per look; a thread outside the pool sleeps until any of them
 * ends. Ordering: the end of futures[*index]'s job happens-before this
 * returns 0. Threads: any thread; the futures may be waited for elsewhere
 * at the same time, but must not be freed until this returns. */
CP_EXPORT int cp_future_wait_any(cp_future *const *futures, size_t n,
                                 uint64_t timeout_ns, size_t *index);

/* cp_future_done - whether the job has finished or was cancelled (then a wait
 * returns at once). false for NULL. Threads: any thread. */
CP_EXPORT bool cp_future_done(const cp_future *f);

/* cp_future_cancel - make sure the job never runs, if it has not started.
 * Returns 0 when the job will never run (its wait reports CP_ECANCELED; also
 * when it was cancelled already); CP_EBUSY when it has started or finished
 * (or a worker waiting for it has taken it to run it; in the instant a
 * CP_SHUTDOWN_CANCEL begins, the shutdown may still cancel such a job:
 * the wait says which);
 * CP_EINVAL for NULL; CP_ESHUTDOWN in a child of fork() for a job that had
 * not finished at the fork (nothing changes).
 * A cancel that wins makes the job final (its waits return) and then lets
 * go of the context the job captured, on the calling thread: the
 * free_value of values that only it held runs there, before the cancel
 * returns, and may wait for anything, this job or a job that waits for it
 * included. Threads: any thread. */
CP_EXPORT int cp_future_cancel(cp_future *f);

/* cp_future_free - drop the caller's handle. Allowed before the job finishes:
 * the job still runs (or stays cancelled). NULL: no-op. A future outlives
 * its pool: after cp_pool_free, wait, done, cancel and free still work.
 * Threads: any thread, once per future, after every other call on it
 * (wait, cancel, done) returned. */
CP_EXPORT void cp_future_free(cp_future *f);

enum cp_shutdown { CP_SHUTDOWN_DRAIN, CP_SHUTDOWN_CANCEL };

/* cp_pool_shutdown - stop taking jobs.
 * CP_SHUTDOWN_DRAIN: refuse new submits (CP_ESHUTDOWN), run every queued job,
 *   then let the workers stop.
 * CP_SHUTDOWN_CANCEL: refuse new submits, cancel every job not yet started
 *   (their futures report CP_ECANCELED), let running ones finish. The jobs
 *   queued when it is called are cancelled before it returns (their waits
 *   end then, not when a worker comes to them), as Python's
 *   shutdown(cancel_futures=True); a job a worker is moving between queues
 *   at that moment is cancelled when the worker takes it. Once they are
 *   all final, the values only their contexts held are freed, on the
 *   calling thread (free_value may run there, and may wait for any job);
 *   a task spawned from outside the pool holds its spawner's context until
 *   its cp_sync returns, cancelled or not. Frame tasks of a running job
 *   are not cancelled: the job syncs them.
 * Either way no job is lost: each runs exactly once or is reported cancelled.
 * Does not wait for the workers (cp_pool_free does). A second shutdown
 * returns CP_ESHUTDOWN, but a CP_SHUTDOWN_CANCEL after a CP_SHUTDOWN_DRAIN,
 * which cancels what is still queued; CP_EINVAL for NULL pool or an
 * unknown how.
 * Threads: any thread, including the pool's workers. */
CP_EXPORT int cp_pool_shutdown(cp_pool *pool, enum cp_shutdown how);

/* cp_pool_free - shutdown(CP_SHUTDOWN_DRAIN) if not yet done, wait for every
 * job and worker to finish, free the pool. NULL: no-op, returns 0.
 * Returns 0; CP_EDEADLK when called from one of the pool's own workers
 * (nothing is done); CP_ESHUTDOWN in a child process (see fork below).
 * Threads: any thread but the pool's workers, once, when no other call on
 * the pool is in progress or can come (a submit may still be returning
 * after its job has finished).
 *
 * fork(): a child process inherits the pool's memory but not its workers.
 * In the child, every call on an inherited pool (submit, submit_in, spawn,
 * shutdown, wait_idle, free) returns CP_ESHUTDOWN and changes
 * nothing; the child cannot free it (its memory stays until the child
 * exits) but may make new pools.
 * cp_pool_get_stats still reads it. Futures, and tasks queued where other
 * threads could take them (see cp_sync), that were not final at the fork
 * never will be in the child: waits, cancels and syncs of them return
 * CP_ESHUTDOWN. Contexts and
 * variables work in the child as before, except a context that another
 * thread had entered at the fork: as a mutex held across fork() stays
 * held, it stays entered in the child (cp_context_run gives CP_EBUSY), and
 * a read of it there may wait forever for a change cut off by the fork.
 * Copies of it made before the fork work. */
CP_EXPORT int cp_pool_free(cp_pool *pool);

typedef struct cp_pool_stats {
    unsigned threads;
    uint64_t submitted; /* jobs accepted by submit, submit_in and spawn */
    uint64_t completed; /* jobs that ended without being cancelled: their
                           function ran to its end, or (submit_in) they
                           found their context entered and report CP_EBUSY
                           or CP_ERECURSIVE */
    uint64_t cancelled; /* jobs reported CP_ECANCELED (one cancelled by
                           cp_future_cancel is counted when a worker, or a
                           cancel shutdown, discards it from its queue) */
    uint64_t stolen;    /* jobs a worker took from another worker's deque */
    uint64_t parks;     /* times a worker went to sleep for lack of work (idle, or
                           waiting with nothing to help with) */
} cp_pool_stats;

/* cp_pool_get_stats - counters of the pool, each read atomically (together
 * they are not one snapshot). Every job or task accepted ends counted once,
 * in completed or in cancelled, and the counts of ended work are read
 * before those of submitted work, so submitted is never less than
 * completed + cancelled. While no other thread outside the pool submits,
 * equality means that every job this thread submitted, and all the jobs
 * and tasks those submitted or spawned, have run to their end or been
 * cancelled, and what the ones that ran did is visible to this thread.
 * (Their futures may turn done a moment later, and a job that
 * cp_future_cancel cancelled may still have its values being freed by the
 * canceller. Not in a child of fork(), where the jobs that had not ended at
 * the fork never do.) To wait for that, call cp_pool_wait_idle rather than
 * poll. A submit refused after shutdown may be counted in submitted for
 * the moment it takes to refuse it, so after a shutdown submitted can drop
 * back by the refusals under way.
 * Returns 0; CP_EINVAL for NULL arguments.
 * Threads: any thread, any time before cp_pool_free. */
CP_EXPORT int cp_pool_get_stats(const cp_pool *pool, cp_pool_stats *stats);

/* cp_pool_wait_idle - wait until no job or task of the pool is queued or
 * running, at most timeout_ns nanoseconds (CLOCK_MONOTONIC): the way to
 * wait for jobs submitted without futures. When it returns 0, every job
 * and outside-spawned task submitted to the pool before the call, by any
 * thread, and all the jobs and tasks those submitted or spawned, have run
 * to their end or been cancelled, and what the ones that ran did is
 * visible to the caller; their futures are final, though a
 * cp_future_cancel or a CP_SHUTDOWN_CANCEL still under way may be freeing
 * the values of the jobs it cancelled. Jobs that other threads submit
 * during the call may be waited for too: while they keep coming, the pool
 * may never be idle, and only the timeout ends the wait. The pool stays
 * open; this is not a shutdown, but it may follow one: after a
 * CP_SHUTDOWN_DRAIN it returns once the queued jobs have run, without
 * freeing the pool. The caller only sleeps; it runs none of the pool's
 * jobs, so a worker of another pool that waits here while this pool's
 * jobs wait for its pool deadlocks (as with a future of this pool). A
 * timeout of 0 polls; UINT64_MAX waits for as long as it takes.
 * Returns 0; CP_ETIMEDOUT when the time ran out first; CP_EINVAL for a
 * NULL pool; CP_EDEADLK from one of the pool's own workers (its own job
 * would never end), nothing waited for; CP_ESHUTDOWN in a child of fork()
 * (see cp_pool_free).
 * Threads: any thread but the pool's workers, any time before
 * cp_pool_free; several at once. */
CP_EXPORT int cp_pool_wait_idle(cp_pool *pool, uint64_t timeout_ns);

/* cp_thread_create - pthread_create, but fn runs in a copy of the creator's
 * current context, as Python 3.14's Thread(context=copy_context()). (A plain
 * pthread starts with an empty base context.)
 * Returns 0; CP_EINVAL for NULL thread or fn, or for attributes that
 * pthread_create refuses (its EINVAL and EPERM); CP_ENOMEM when memory or
 * threads ran out (also when the new thread could not take the copy: it
 * then ends without running fn, and is joined here unless attr made it
 * detached). It returns once the thread runs in the copy. fn's return
 * value is the thread's exit value.
 * Threads: any thread. */
CP_EXPORT int cp_thread_create(pthread_t *thread, const pthread_attr_t *attr,
                               cp_job_fn fn, void *arg);

/* ------------------------------------------------------------------------ */
/* Structured fork-join (no allocation)                                      */
/* ------------------------------------------------------------------------ */

typedef struct cp_task {
    void *cp_private[8];
} cp_task; /* caller-owned storage; fields private */

/* cp_spawn - queue fn(arg) to run in a copy of the caller's current context.
 * task: storage owned by the caller (a local variable is typical); it must
 *   stay in place until cp_sync returns.
 * Nothing is allocated. On a worker of pool the task stays with the spawner
 * (no atomic operation) while every other worker is busy, and is offered to
 * idle workers otherwise; from a thread outside the pool it goes through the
 * pool's shared queue and cp_sync blocks. So the task is sure to have run
 * only when cp_sync returns: do not wait for it by other means (a semaphore
 * it posts would wait forever if every other worker was busy at the
 * spawn); use cp_pool_submit for that.
 * Returns 0; CP_EINVAL for NULL arguments; CP_ESHUTDOWN after shutdown
 * when called from outside the pool (a worker's spawns belong to the job it
 * runs and are accepted until the pool is freed).
 * Threads: any thread. */
CP_EXPORT int cp_spawn(cp_pool *pool, cp_task *task, cp_job_fn fn, void *arg);

/* cp_sync - wait for a spawned task and get its result; runs it inline when
 * no other worker took it, else helps with other work until it is done.
 * Syncs on one thread come in reverse order of its spawns (nested like
 * scopes), each in the job or task that spawned, inside no cp_context_run
 * entered since the spawn: from inside a task a sync of itself or of a
 * sibling not yet synced is out of order, and so is a sync of a waiting
 * job's task by another job its thread runs meanwhile. A free_value may
 * sync only the tasks it spawned itself: it runs wherever a value is let go
 * of (as a job or task ends, say, when a sync of that task would be the
 * task's own). A sync out of order returns CP_EINVAL and waits for nothing.
 * Returns 0; CP_ECANCELED when a CP_SHUTDOWN_CANCEL cancelled it first
 * (only a task spawned from outside the pool: a worker's tasks belong to the
 * running job that spawned them, which a cancel lets finish); CP_EINVAL;
 * CP_ESHUTDOWN in a child of fork() for a task that had not finished at
 * the fork and had been queued where other threads could take it (nothing
 * is waited for): every task spawned from outside the pool, and a worker's
 * task that its worker had offered, as it does while another worker is
 * idle or while it waits; a task its worker had kept to itself runs at
 * the sync, as ever.
 * result may be NULL. A sync that waits runs other work meanwhile, on this
 * thread, as cp_future_wait does (the same care about locks applies).
 * Threads: the thread that spawned task. The task sees
 * the context as it was at the spawn, also when the spawner has left it
 * (returned from the cp_context_run it spawned in) before the sync. A job
 * or task must sync every task it spawned before it returns: task's
 * storage is in use until cp_sync returns, and returning with a task not
 * synced is undefined behaviour. */
CP_EXPORT int cp_sync(cp_task *task, void **result);

#ifdef __cplusplus
}
#endif

#endif /* CP_CTXPOOL_H */
