/* context_stress.c - the context core under concurrent use.
 *
 * A plain program (no Criterion) so that it also runs under ThreadSanitizer.
 * It exits 0 when every check held, else 1 with the failed check on stderr.
 *
 * What runs at once, for each of NCTX shared contexts:
 * - WORKERS threads that compete to enter the context with cp_context_run.
 *   Only one gets in at a time; the others must get CP_EBUSY (never
 *   CP_ERECURSIVE, never success while someone is inside: an atomic flag set
 *   on entry detects overlap). Whoever gets in advances one shared state
 *   machine by a few steps: it sets var 0, 1, ..., NV-1 (with tokens) to the
 *   values of the current round, then resets them in reverse order, then
 *   starts the next round. That state lives in plain fields touched only
 *   inside runs, so if two runs overlapped or a run did not see the previous
 *   one's writes, TSan or the checks would say so. Tokens made in one run are
 *   reset in a later run, often on another thread.
 * - READERS threads that copy, measure, read and iterate the context while
 *   the workers change it. The state machine keeps one invariant: the context
 *   holds exactly vars 0..n-1, all with values of one round. A copy or an
 *   iterator that breaks it is a torn view. Readers also take the snapshots
 *   that runs publish with cp_copy_context and run in them (changes there
 *   must not reach the shared context).
 * Then, first reads: in each of target_steps / 20 + 1 rounds, a fresh
 * context (which its owner changes without the lock until another thread
 * reads it; see "The map lock" in context.c) is read once, then entered
 * twice by a writer that runs the state machine without pause, and read by
 * the main thread, which starts copying and iterating it as soon as the
 * writer is inside. The first entry's first read is a handover to the lock.
 * Every other round uses the test hook that makes contexts take the lock
 * from the start, as where membarrier is missing.
 * Then, owners in turn: in each of target_steps / 40 + 1 rounds, a fresh
 * context is entered RING_ENTRIES times, one run each, by RING_OWNERS
 * threads in turn (each entry on another thread than the last), while the
 * main thread reads it without pause, as a reader thread above does. Reads
 * fall between entries (watched, no fence) or inside them (a fence, then
 * the lock), so that reads race with the next owner's enter on another
 * thread, its clearing of watched under the lock, and its first changes
 * without the lock. Every run also copies the current context and frees
 * the copy, so that the copy cache and the capture batch hold the root
 * that readers hold too when the run's first change flushes them.
 * Besides, CHAIN_DRIVERS threads build chains of cp_thread_create threads,
 * each checking that it sees its creator's values but the creator does not
 * see its own, and that every base context is released at thread exit.
 *
 * Size: stress_ops() (check.h): argv[1], else the default times
 * CP_STRESS_SCALE. The default finishes in a few seconds under TSan on two
 * cores. No sleeps: threads wait with joins and barriers only.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "context.h"
#include "ctxpool.h"

#define NCTX 2
#define WORKERS 2
#define READERS 1
#define NV 24
#define OPS_PER_STEP 5
#define CHAIN_DRIVERS 2
#define CHAIN_DEPTH 6
#define DEFAULT_STEPS 40000ULL
#define FIRST_READS 3 /* reads per entry in the first-reads rounds */
#define RING_OWNERS 2
#define RING_ENTRIES 6 /* entries per context in the owners-in-turn rounds */

/* ------------------------------------------------------------------------ */
/* Counting values                                                           */

/* relaxed: read only after the joins that end the threads which changed them. */
static atomic_ulong values_freed;

static void count_free(void *value)
{
    (void)value;
    atomic_fetch_add_explicit(&values_freed, 1, memory_order_relaxed);
}

typedef struct tval {
    atomic_int frees;
} tval;

static void tval_free(void *p)
{
    tval *v = p;
    atomic_fetch_add_explicit(&v->frees, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* The shared contexts                                                       */

struct shared {
    cp_context *c;
    cp_var *vars[NV];
    char values[2][NV]; /* only the addresses matter */

    /* Touched only inside runs on c: the library's exclusivity guards them. */
    int pos;     /* the context holds vars 0..pos-1 */
    bool down;   /* resetting */
    unsigned round;
    cp_token *tokens[NV];
    unsigned long sets;

    atomic_int inside;             /* overlap detector */
    atomic_ulong steps;            /* runs done */
    atomic_ulong busy;             /* CP_EBUSY seen */
    _Atomic(cp_context *) published; /* latest snapshot taken inside a run */
};

static struct shared shared[NCTX];
static unsigned long long target_steps;
/* release/acquire: a reader that sees it set sees the workers finished. */
static atomic_bool workers_done;
/* A variable only readers set, in their own copies. */
static cp_var *reader_var;

static int var_index(const struct shared *s, const cp_var *k)
{
    for (int i = 0; i < NV; i++)
        if (s->vars[i] == k)
            return i;
    return -1;
}

static int parity_of(const struct shared *s, int i, const void *value)
{
    if (value == &s->values[0][i])
        return 0;
    if (value == &s->values[1][i])
        return 1;
    return -1;
}

/* The iterator lists exactly vars 0..n-1 with values of one round; n is
 * returned. expect_n: the n it must be, or -1 for any. */
static int check_iter(const struct shared *s, cp_iter *it, int expect_n)
{
    int seen[NV] = {0};
    int parity = -1, n = 0;
    cp_var *k;
    void *value;
    while (cp_iter_next(it, &k, &value)) {
        int i = var_index(s, k);
        CHECK(i >= 0, "iterator yielded an unknown variable");
        CHECK(seen[i] == 0, "iterator yielded var %d twice", i);
        seen[i] = 1;
        int p = parity_of(s, i, value);
        CHECK(p >= 0, "var %d has a value no round gave it", i);
        CHECK(parity < 0 || p == parity, "iterator mixes rounds: torn view");
        parity = p;
        n++;
    }
    CHECK(expect_n < 0 || n == expect_n, "iterator has %d items, len says %d", n,
          expect_n);
    for (int i = 0; i < NV; i++)
        CHECK(seen[i] == (i < n), "iterator holds %d items but not vars 0..%d", n,
              n - 1);
    return n;
}

/* snap does not change while we look: its len, gets and iteration agree. */
static void check_snapshot(const struct shared *s, const cp_context *snap)
{
    size_t n = cp_context_len(snap);
    CHECK(n <= NV, "len %zu", n);
    int parity = -1;
    for (int i = 0; i < NV; i++) {
        void *value = NULL;
        int rc = cp_context_get(snap, s->vars[i], &value);
        if ((size_t)i >= n) {
            CHECK(rc == CP_ENOENT, "snapshot of len %zu holds var %d", n, i);
            continue;
        }
        CHECK(rc == 0, "snapshot of len %zu lacks var %d: torn view", n, i);
        int p = parity_of(s, i, value);
        CHECK(p >= 0 && (parity < 0 || p == parity), "snapshot mixes rounds");
        parity = p;
    }
    cp_iter *it = cp_context_iter(snap);
    CHECK(it != NULL, "cp_context_iter failed");
    check_iter(s, it, (int)n);
    cp_iter_free(it);
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */

/* One change of the state machine, in the context the caller runs in:
 * set the next variable, or reset the last one set. Returns its index. */
static int advance(struct shared *s)
{
    if (!s->down) {
        int i = s->pos;
        CHECK(cp_var_set(s->vars[i], &s->values[s->round % 2][i], &s->tokens[i]) == 0,
              "set failed");
        s->sets++;
        if (++s->pos == NV)
            s->down = true;
        return i;
    }
    int i = --s->pos;
    CHECK(cp_var_reset(s->vars[i], s->tokens[i]) == 0, "reset failed");
    CHECK(cp_var_reset(s->vars[i], s->tokens[i]) == CP_ETOKEN_USED,
          "second reset with one token");
    cp_token_free(s->tokens[i]);
    s->tokens[i] = NULL;
    if (s->pos == 0) {
        s->down = false;
        s->round++;
    }
    return i;
}

static void *step(void *p)
{
    struct shared *s = p;
    CHECK(atomic_exchange_explicit(&s->inside, 1, memory_order_acq_rel) == 0,
          "two threads are inside one context at once");
    /* Inside a run the mapping functions are a live view. */
    CHECK(cp_context_len(s->c) == (size_t)s->pos, "len %zu, expected %d",
          cp_context_len(s->c), s->pos);
    /* A copy of a non-empty context freed at once is kept (the copy
     * cache), with the rest of the capture batch its copy took: both hold
     * the root, as readers' copies may, until the first change below
     * drops them. */
    cp_context_free(cp_copy_context());
    for (int op = 0; op < OPS_PER_STEP; op++) {
        void *value = NULL;
        bool setting = !s->down;
        if (setting)
            CHECK(cp_var_get(s->vars[s->pos], &value) == CP_ENOENT, "var %d set early",
                  s->pos);
        int i = advance(s);
        if (setting) {
            void *v = &s->values[s->round % 2][i];
            CHECK(cp_var_get(s->vars[i], &value) == 0 && value == v, "get after set");
            CHECK(cp_context_get_or(s->c, s->vars[i], NULL) == v, "live view");
        } else {
            CHECK(cp_var_get(s->vars[i], &value) == CP_ENOENT, "var %d after reset", i);
        }
    }
    /* Publish what this run has so far, as a long-running job would. */
    unsigned long n = atomic_load_explicit(&s->steps, memory_order_relaxed);
    if (n % 4 == 0) {
        cp_context *snap = cp_copy_context();
        CHECK(snap != NULL, "cp_copy_context failed");
        CHECK(cp_context_len(snap) == (size_t)s->pos, "copy inside the run");
        /* acq_rel: release publishes the copy; acquire takes the old one's
         * history so we may free it. */
        cp_context *old = atomic_exchange_explicit(&s->published, snap,
                                                   memory_order_acq_rel);
        cp_context_free(old);
    }
    CHECK(atomic_exchange_explicit(&s->inside, 0, memory_order_acq_rel) == 1,
          "overlap flag changed under us");
    atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
    return s;
}

static void *worker(void *p)
{
    struct shared *s = p;
    while (atomic_load_explicit(&s->steps, memory_order_relaxed) < target_steps) {
        void *result = NULL;
        int rc = cp_context_run(s->c, step, s, &result);
        if (rc == CP_EBUSY) {
            atomic_fetch_add_explicit(&s->busy, 1, memory_order_relaxed);
            sched_yield(); /* give the holder the CPU; not a wait for it */
            continue;
        }
        CHECK(rc == 0, "cp_context_run: %s", cp_strerror(rc));
        CHECK(result == s, "run lost fn's result");
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Readers                                                                   */

struct reader_run {
    const struct shared *s;
    void *mine;
};

static void *set_reader_var(void *p)
{
    struct reader_run *r = p;
    void *value = NULL;
    CHECK(cp_var_set(reader_var, r->mine, NULL) == 0, "reader set failed");
    CHECK(cp_var_get(reader_var, &value) == 0 && value == r->mine, "reader get");
    return NULL;
}

/* Copy s->c and check the copy; iterate s->c and check what comes. */
static void copy_and_iterate(const struct shared *s)
{
    cp_context *snap = cp_context_copy(s->c);
    CHECK(snap != NULL, "cp_context_copy failed");
    check_snapshot(s, snap);
    /* Its answer depends on the owner's timing; what is checked is that
     * it reads s->c safely while the owner writes (TSan, ASan). */
    (void)cp_context_equal(s->c, snap);
    cp_context_free(snap);

    cp_iter *it = cp_context_iter(s->c);
    CHECK(it != NULL, "cp_context_iter failed");
    check_iter(s, it, -1);
    cp_iter_free(it);
}

/* One round of a reader's reads of s->c, from a thread that does not have
 * it entered; reads counts the rounds. */
static void read_once(struct shared *s, unsigned long reads)
{
    char mine;
    copy_and_iterate(s);
    CHECK(cp_context_len(s->c) <= NV, "len out of range");
    int i = (int)(reads % NV);
    void *value = NULL;
    if (cp_context_get(s->c, s->vars[i], &value) == 0)
        CHECK(parity_of(s, i, value) >= 0, "a value no round gave");
    CHECK(!cp_context_contains(s->c, reader_var), "a reader's set leaked");

    /* Start work in the latest published snapshot. */
    cp_context *pub = atomic_exchange_explicit(&s->published, NULL,
                                               memory_order_acq_rel);
    if (pub) {
        check_snapshot(s, pub);
        size_t before = cp_context_len(pub);
        struct reader_run r = {s, &mine};
        CHECK(cp_context_run(pub, set_reader_var, &r, NULL) == 0, "run in snapshot");
        CHECK(cp_context_len(pub) == before + 1, "reader's set not kept");
        CHECK(cp_context_get_or(pub, reader_var, NULL) == &mine, "reader value");
        cp_context_free(pub);
    }
}

static void *reader(void *p)
{
    unsigned long reads = 0;
    do
        read_once(p, reads++);
    while (!atomic_load_explicit(&workers_done, memory_order_acquire));
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* cp_thread_create chains                                                   */

struct chain {
    cp_var *vars[CHAIN_DEPTH]; /* borrowed values */
    char marks[CHAIN_DEPTH];
    cp_var *counted;           /* each link sets it; freed at its exit */
    tval counted_values[CHAIN_DEPTH];
};

struct link {
    struct chain *ch;
    int depth;
};

static void *chain_link(void *p)
{
    struct link *l = p;
    struct chain *ch = l->ch;
    int d = l->depth;
    void *value = NULL;
    for (int j = 0; j < CHAIN_DEPTH; j++) {
        int rc = cp_var_get(ch->vars[j], &value);
        if (j < d)
            CHECK(rc == 0 && value == &ch->marks[j], "link %d lacks its creators' var %d",
                  d, j);
        else
            CHECK(rc == CP_ENOENT, "link %d sees var %d set below it", d, j);
    }
    CHECK(cp_var_set(ch->vars[d], &ch->marks[d], NULL) == 0, "chain set");
    CHECK(cp_var_set(ch->counted, &ch->counted_values[d], NULL) == 0, "chain set");
    if (d + 1 < CHAIN_DEPTH) {
        struct link child = {ch, d + 1};
        pthread_t th;
        CHECK(cp_thread_create(&th, NULL, chain_link, &child) == 0, "cp_thread_create");
        void *r = NULL;
        CHECK(pthread_join(th, &r) == 0 && r == &child, "chain join");
        /* The child's changes stayed in the child, and went with it. */
        CHECK(cp_var_get(ch->vars[d + 1], &value) == CP_ENOENT, "child's set leaked up");
        CHECK(cp_var_get(ch->counted, &value) == 0 &&
                  value == &ch->counted_values[d], "child's set leaked up");
        CHECK(atomic_load_explicit(&ch->counted_values[d + 1].frees,
                                   memory_order_relaxed) == 1,
              "child's base context not released at exit");
        CHECK(atomic_load_explicit(&ch->counted_values[d].frees,
                                   memory_order_relaxed) == 0,
              "a value still held was freed");
    }
    return l;
}

struct driver {
    unsigned long reps;
};

static void *chain_driver(void *p)
{
    struct driver *dr = p;
    for (unsigned long r = 0; r < dr->reps; r++) {
        struct chain *ch = calloc(1, sizeof *ch);
        CHECK(ch != NULL, "calloc");
        for (int j = 0; j < CHAIN_DEPTH; j++)
            ch->vars[j] = cp_var_new("link", NULL);
        ch->counted = cp_var_new("counted", tval_free);
        struct link first = {ch, 0};
        pthread_t th;
        CHECK(cp_thread_create(&th, NULL, chain_link, &first) == 0, "cp_thread_create");
        void *res = NULL;
        CHECK(pthread_join(th, &res) == 0 && res == &first, "chain join");
        for (int j = 0; j < CHAIN_DEPTH; j++)
            CHECK(atomic_load_explicit(&ch->counted_values[j].frees,
                                       memory_order_relaxed) == 1,
                  "link %d's value freed %d times", j,
                  atomic_load_explicit(&ch->counted_values[j].frees,
                                       memory_order_relaxed));
        for (int j = 0; j < CHAIN_DEPTH; j++)
            cp_var_free(ch->vars[j]);
        cp_var_free(ch->counted);
        free(ch);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */

static void *drain(void *p)
{
    struct shared *s = p;
    while (s->pos > 0) {
        int i = --s->pos;
        CHECK(cp_var_reset(s->vars[i], s->tokens[i]) == 0, "drain reset");
        cp_token_free(s->tokens[i]);
        s->tokens[i] = NULL;
    }
    s->down = false; /* the state machine starts a round again */
    CHECK(cp_context_len(s->c) == 0, "drained context not empty");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* First reads                                                               */

/* One writer thread serves every entry, so that it is already running (on
 * the other CPU, where there is one) when an entry starts: a thread made
 * for each entry tends to start on its creator's CPU, and the reads would
 * not overlap the writes. The counters hold entry numbers; release/acquire
 * throughout. */
struct first {
    struct shared *s;
    atomic_uint entry;   /* the reader asks for entry n */
    atomic_uint entered; /* the writer is inside entry n */
    atomic_uint read;    /* the reader is done with entry n */
    atomic_uint left;    /* the writer has left entry n */
    atomic_bool quit;
};

/* Wait until *x reaches n, or *stop (if given) is set. Spins, so that
 * reads follow writes at once; yields after a while for the case of one
 * CPU or valgrind, where the other thread needs this one's. */
static void spin_until(atomic_uint *x, unsigned n, atomic_bool *stop)
{
    for (unsigned long spins = 0; atomic_load_explicit(x, memory_order_acquire) != n &&
                                  !(stop && atomic_load_explicit(stop, memory_order_acquire));
         spins++)
        if (spins > 10000)
            sched_yield();
}

static void *write_until_read(void *p)
{
    struct first *f = p;
    unsigned n = atomic_load_explicit(&f->entry, memory_order_acquire);
    step(f->s);
    atomic_store_explicit(&f->entered, n, memory_order_release);
    /* Changes back to back, without step's checks: the reader's first read
     * should land inside one as often as it can. */
    for (unsigned k = 1; atomic_load_explicit(&f->read, memory_order_acquire) != n; k++) {
        advance(f->s);
        if (k % 256 == 0)
            sched_yield(); /* as in spin_until */
    }
    return NULL;
}

static void *first_writer(void *p)
{
    struct first *f = p;
    for (unsigned n = 1;; n++) {
        spin_until(&f->entry, n, &f->quit);
        if (atomic_load_explicit(&f->quit, memory_order_acquire))
            return NULL;
        CHECK(cp_context_run(f->s->c, write_until_read, f, NULL) == 0, "writer's run");
        atomic_store_explicit(&f->left, n, memory_order_release);
    }
}

/* Entry n of f->s->c by the writer, read from this thread while the writer
 * runs: the first read of the entry is a handover to the lock. */
static void first_reads(struct first *f, unsigned n)
{
    struct shared *s = f->s;
    atomic_store_explicit(&f->entry, n, memory_order_release);
    spin_until(&f->entered, n, NULL);
    for (int r = 0; r < FIRST_READS; r++)
        copy_and_iterate(s);
    atomic_store_explicit(&f->read, n, memory_order_release);
    spin_until(&f->left, n, NULL);
}

/* rounds fresh contexts, each read once before its first entry (watched,
 * with no fence: nobody has it entered) and then entered twice: the first
 * enter clears watched, so the first read inside that entry is a handover;
 * that read fenced, so the second entry keeps the lock. Every other context
 * takes the lock from the start. */
static void first_rounds(struct shared *s, unsigned long rounds)
{
    struct first f = {.s = s};
    pthread_t writer;
    CHECK(pthread_create(&writer, NULL, first_writer, &f) == 0, "pthread_create");
    unsigned n = 0;
    for (unsigned long r = 0; r < rounds; r++) {
        cp__context_lockless_writes(r % 2 == 0);
        s->c = cp_context_new();
        CHECK(s->c != NULL, "cp_context_new");
        copy_and_iterate(s);
        first_reads(&f, ++n);
        first_reads(&f, ++n);
        CHECK(cp_context_run(s->c, drain, s, NULL) == 0, "drain run");
        cp_context_free(s->c);
    }
    cp__context_lockless_writes(true);
    atomic_store_explicit(&f.quit, true, memory_order_release);
    CHECK(pthread_join(writer, NULL) == 0, "pthread_join");
}

/* ------------------------------------------------------------------------ */
/* Owners in turn                                                            */

/* Entry n of the current round's context is run by owner n % RING_OWNERS.
 * release/acquire throughout: a new limit publishes s->c, a new turn the
 * entry before it (and the last entry of a round to the reader, which then
 * drains and frees the context); quit, set after the last round, publishes
 * nothing but is paired the same way. */
struct ring {
    struct shared *s;
    atomic_uint turn;  /* entries done, over all rounds */
    atomic_uint limit; /* entries asked for, over all rounds */
    atomic_bool quit;
};

struct ring_owner {
    struct ring *r;
    unsigned self;
};

static void *ring_owner(void *p)
{
    struct ring_owner *o = p;
    struct ring *r = o->r;
    while (!atomic_load_explicit(&r->quit, memory_order_acquire)) {
        unsigned n = atomic_load_explicit(&r->turn, memory_order_acquire);
        if (n % RING_OWNERS != o->self ||
            n == atomic_load_explicit(&r->limit, memory_order_acquire)) {
            /* Not our turn: the thread whose turn it is, or the reader,
             * needs the CPU more (there are more threads than CPUs). */
            sched_yield();
            continue;
        }
        CHECK(cp_context_run(r->s->c, step, r->s, NULL) == 0, "owner's run");
        atomic_store_explicit(&r->turn, n + 1, memory_order_release);
    }
    return NULL;
}

/* rounds fresh contexts, each entered RING_ENTRIES times by the owners in
 * turn while this thread reads it. */
static void ring_rounds(struct shared *s, unsigned long rounds)
{
    struct ring r = {.s = s};
    struct ring_owner owners[RING_OWNERS];
    pthread_t th[RING_OWNERS];
    for (unsigned t = 0; t < RING_OWNERS; t++) {
        owners[t] = (struct ring_owner){&r, t};
        CHECK(pthread_create(&th[t], NULL, ring_owner, &owners[t]) == 0,
              "pthread_create");
    }
    unsigned limit = 0;
    unsigned long reads = 0;
    for (unsigned long k = 0; k < rounds; k++) {
        s->c = cp_context_new();
        CHECK(s->c != NULL, "cp_context_new");
        limit += RING_ENTRIES;
        atomic_store_explicit(&r.limit, limit, memory_order_release);
        do
            read_once(s, reads++);
        while (atomic_load_explicit(&r.turn, memory_order_acquire) != limit);
        CHECK(cp_context_run(s->c, drain, s, NULL) == 0, "drain run");
        cp_context_free(s->c);
    }
    atomic_store_explicit(&r.quit, true, memory_order_release);
    for (unsigned t = 0; t < RING_OWNERS; t++)
        CHECK(pthread_join(th[t], NULL) == 0, "pthread_join");
}

int main(int argc, char **argv)
{
    target_steps = stress_ops(argc, argv, DEFAULT_STEPS);
    reader_var = cp_var_new("reader", NULL);
    CHECK(reader_var != NULL, "cp_var_new");
    for (int k = 0; k < NCTX; k++) {
        struct shared *s = &shared[k];
        s->c = cp_context_new();
        CHECK(s->c != NULL, "cp_context_new");
        for (int i = 0; i < NV; i++) {
            s->vars[i] = cp_var_new("shared", count_free);
            CHECK(s->vars[i] != NULL, "cp_var_new");
        }
    }

    pthread_t workers[NCTX][WORKERS], readers[NCTX][READERS], drivers[CHAIN_DRIVERS];
    struct driver dr = {target_steps / 600 + 1};
    for (int k = 0; k < NCTX; k++) {
        for (int w = 0; w < WORKERS; w++)
            CHECK(pthread_create(&workers[k][w], NULL, worker, &shared[k]) == 0,
                  "pthread_create");
        for (int r = 0; r < READERS; r++)
            CHECK(pthread_create(&readers[k][r], NULL, reader, &shared[k]) == 0,
                  "pthread_create");
    }
    for (int d = 0; d < CHAIN_DRIVERS; d++)
        CHECK(pthread_create(&drivers[d], NULL, chain_driver, &dr) == 0,
              "pthread_create");

    for (int k = 0; k < NCTX; k++)
        for (int w = 0; w < WORKERS; w++)
            CHECK(pthread_join(workers[k][w], NULL) == 0, "pthread_join");
    atomic_store_explicit(&workers_done, true, memory_order_release);
    for (int k = 0; k < NCTX; k++)
        for (int r = 0; r < READERS; r++)
            CHECK(pthread_join(readers[k][r], NULL) == 0, "pthread_join");
    for (int d = 0; d < CHAIN_DRIVERS; d++)
        CHECK(pthread_join(drivers[d], NULL) == 0, "pthread_join");

    for (int k = 0; k < NCTX; k++) {
        struct shared *s = &shared[k];
        CHECK(cp_context_run(s->c, drain, s, NULL) == 0, "drain run");
        cp_context_free(s->c);
    }
    unsigned long rounds = target_steps / 20 + 1;
    first_rounds(&shared[0], rounds);
    unsigned long ring = target_steps / 40 + 1;
    ring_rounds(&shared[1], ring);

    unsigned long sets = 0, steps = 0, busy = 0;
    for (int k = 0; k < NCTX; k++) {
        struct shared *s = &shared[k];
        cp_context_free(atomic_exchange(&s->published, NULL));
        for (int i = 0; i < NV; i++)
            cp_var_free(s->vars[i]);
        sets += s->sets;
        steps += atomic_load(&s->steps);
        busy += atomic_load(&s->busy);
    }
    cp_var_free(reader_var);
    unsigned long freed = atomic_load(&values_freed);
    CHECK(freed == sets, "%lu values set but %lu freed", sets, freed);
    printf("context_stress: %lu runs, %lu refused busy, %lu sets, %lu chains, "
           "%lu first reads, %lu contexts owned in turn: ok\n", steps, busy, sets,
           dr.reps * CHAIN_DRIVERS, rounds, ring);
    return 0;
}
