/* deque_stress.c - one owner against 1, 2 and 3 thieves on a Chase-Lev deque.
 *
 * The owner pushes and pops in a random mix, with bursts of up to BURST_MAX
 * pushes that make a deque starting at capacity 4 grow again and again, while
 * the thieves steal in a loop. Half its pops are cp__deque_pop_marked's, of
 * the item it pushed last and has not popped: the pop that takes an item
 * after a fence instead of a seq_cst store, against the same thieves.
 * Every item is checked to be taken exactly once (a counter per item),
 * never invented (the pointer is one of ours, pushed in this round), and to
 * carry the plain, non-atomic payload the owner wrote before pushing it:
 * under ThreadSanitizer that payload is what proves the deque publishes an
 * item's contents with a happens-before edge.
 *
 * Size: "operations" counts a push and a take per item; the default is
 * DEFAULT_OPS, and argv[1] or CP_STRESS_SCALE changes it (see check.h), e.g.
 * for valgrind, which runs one thread at a time.
 * Work is split evenly over the three thief counts, in rounds of at most
 * ROUND_ITEMS items; each round uses a fresh deque, so growth (and the
 * freeing of retired buffers) happens every round.
 *
 * Exits 0 on success; on failure prints where and why, exits 1.
 */
#include "check.h"
#include "deque.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* About 0.5 s natively and 6 to 8 s under TSan on two cores. */
#define DEFAULT_OPS 10000000ULL

enum {
    ROUND_ITEMS = 1 << 16,
    MAX_THIEVES = 3,
    BURST_MAX = 4096,
    INITIAL_LOG_CAPACITY = 2
};

typedef struct item {
    uint64_t payload;  /* plain: owner writes it before the push */
    atomic_uint taken; /* relaxed: read only after the end barrier */
} item;

static item items[ROUND_ITEMS];
static cp__deque deque;
/* The owner's: the items it pushed and has not popped, oldest first (the
 * oldest may have been stolen), and the mark of cp__deque_pop_marked. */
static size_t unpopped[ROUND_ITEMS];
static atomic_bool mark;

/* Set by the owner between rounds, read by thieves after the start barrier,
 * which orders them. */
static uint64_t round_no;
static bool quitting;

/* release by the owner once it has drained the deque; acquire by a thief
 * that then finds the deque empty and may stop stealing. */
static atomic_bool round_done;

static pthread_barrier_t start_barrier, end_barrier;

typedef struct thief {
    pthread_t thread;
    uint64_t stolen;  /* this round; read by the owner after end_barrier */
    uint64_t aborts;  /* likewise */
} thief;

static uint64_t expected_payload(uint64_t round, size_t i)
{
    return (round << 20) ^ ((uint64_t)i * 0x9e3779b97f4a7c15ULL);
}

/* xorshift64*: a cheap per-thread random source. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Record that the calling thread took x. */
static void take(void *x, uint64_t round, const char *who)
{
    uintptr_t p = (uintptr_t)x;
    uintptr_t lo = (uintptr_t)&items[0];
    CHECK(p >= lo && p < lo + sizeof items && (p - lo) % sizeof(item) == 0,
          "%s took %p, which is no item of ours", who, x);
    size_t i = (p - lo) / sizeof(item);
    item *it = &items[i];
    CHECK(it->payload == expected_payload(round, i),
          "%s took item %zu with payload %#" PRIx64 ", want %#" PRIx64
          " (not pushed this round, or contents not published)",
          who, i, it->payload, expected_payload(round, i));
    unsigned before = atomic_fetch_add_explicit(&it->taken, 1,
                                                memory_order_relaxed);
    CHECK(before == 0, "%s took item %zu in round %" PRIu64
          " but it was already taken", who, i, round);
}

static void *thief_main(void *arg)
{
    thief *self = arg;
    for (;;) {
        pthread_barrier_wait(&start_barrier);
        if (quitting)
            return NULL;
        uint64_t round = round_no;
        uint64_t stolen = 0, aborts = 0;
        for (;;) {
            void *x = NULL;
            cp__steal r = cp__deque_steal(&deque, &x);
            if (r == CP__STEAL_OK) {
                take(x, round, "thief");
                stolen++;
            } else if (r == CP__STEAL_ABORT) {
                aborts++;
            } else if (atomic_load_explicit(&round_done,
                                            memory_order_acquire)) {
                break; /* empty, and the owner has drained it: done */
            }
        }
        self->stolen = stolen;
        self->aborts = aborts;
        pthread_barrier_wait(&end_barrier);
    }
}

typedef struct totals {
    uint64_t items, popped, stolen, aborts, bursts;
} totals;

/* The owner's pop: the newest item it has not popped, unless the thieves
 * took it (and so every older one); by cp__deque_pop or, when marked, by
 * cp__deque_pop_marked. *depth: the number of such items. */
static void *owner_pop(size_t *depth, bool marked)
{
    void *newest = *depth ? &items[unpopped[*depth - 1]] : NULL;
    void *x;
    if (marked) {
        /* relaxed: the owner's own flag, read back by the owner. */
        atomic_store_explicit(&mark, false, memory_order_relaxed);
        if (*depth > 1)
            /* Not at the bottom: never taken, nothing changed. */
            CHECK(!cp__deque_pop_marked(&deque, &items[unpopped[0]], &mark),
                  "a marked pop took an item that was not at the bottom");
        x = newest && cp__deque_pop_marked(&deque, newest, &mark) ? newest : NULL;
        CHECK(atomic_load_explicit(&mark, memory_order_relaxed) == (x != NULL),
              "the mark says %d after a marked pop that took %p",
              atomic_load_explicit(&mark, memory_order_relaxed), x);
    } else {
        x = cp__deque_pop(&deque);
        CHECK(x == NULL || x == newest, "pop took %p, not the newest item %p", x,
              newest);
    }
    *depth = x ? *depth - 1 : 0;
    return x;
}

/* One round with the thieves already waiting at start_barrier. */
static void owner_round(uint64_t round, size_t n, thief *thieves,
                        unsigned nthieves, uint64_t *rng, totals *sum)
{
    for (size_t i = 0; i < n; i++) {
        items[i].payload = 0;
        atomic_store_explicit(&items[i].taken, 0, memory_order_relaxed);
    }
    CHECK(cp__deque_init(&deque, INITIAL_LOG_CAPACITY) == 0, "init failed");
    round_no = round;
    atomic_store_explicit(&round_done, false, memory_order_relaxed);
    pthread_barrier_wait(&start_barrier); /* orders the setup above */

    size_t pushed = 0, depth = 0;
    uint64_t popped = 0;
    while (pushed < n) {
        uint64_t r = next_random(rng);
        size_t k = 0;
        if (r % 64 == 0) {
            k = 1 + (size_t)(r >> 8) % BURST_MAX;
            sum->bursts++;
        } else if (r & 64) {
            k = 1;
        }
        if (k > n - pushed)
            k = n - pushed;
        for (size_t j = 0; j < k; j++, pushed++) {
            items[pushed].payload = expected_payload(round, pushed);
            int rc = cp__deque_push(&deque, &items[pushed]);
            CHECK(rc == 0, "push failed: %d", rc);
            unpopped[depth++] = pushed;
        }
        if (k == 0) {
            void *x = owner_pop(&depth, r & 128);
            if (x != NULL) {
                take(x, round, "owner");
                popped++;
            }
        }
    }
    for (void *x; (x = owner_pop(&depth, popped & 1)) != NULL; popped++)
        take(x, round, "owner");
    /* release: pairs with the thieves' acquire; the deque is empty now. */
    atomic_store_explicit(&round_done, true, memory_order_release);
    pthread_barrier_wait(&end_barrier);

    CHECK(cp__deque_size(&deque) == 0, "size %zu after the round",
          cp__deque_size(&deque));
    uint64_t stolen = 0;
    for (unsigned i = 0; i < nthieves; i++) {
        stolen += thieves[i].stolen;
        sum->aborts += thieves[i].aborts;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned c = atomic_load_explicit(&items[i].taken,
                                          memory_order_relaxed);
        CHECK(c == 1, "round %" PRIu64 ": item %zu taken %u times", round, i,
              c);
    }
    CHECK(popped + stolen == n, "round %" PRIu64 ": %" PRIu64 " popped + %"
          PRIu64 " stolen != %zu pushed", round, popped, stolen, n);
    sum->items += n;
    sum->popped += popped;
    sum->stolen += stolen;
    cp__deque_destroy(&deque);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) +
           (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void run(unsigned nthieves, uint64_t n_items, uint64_t *round,
                uint64_t *rng)
{
    thief thieves[MAX_THIEVES];
    memset(thieves, 0, sizeof thieves);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    CHECK(pthread_barrier_init(&start_barrier, NULL, nthieves + 1) == 0,
          "pthread_barrier_init failed");
    CHECK(pthread_barrier_init(&end_barrier, NULL, nthieves + 1) == 0,
          "pthread_barrier_init failed");
    quitting = false;
    for (unsigned i = 0; i < nthieves; i++)
        CHECK(pthread_create(&thieves[i].thread, NULL, thief_main,
                             &thieves[i]) == 0,
              "pthread_create failed");

    totals sum = {0, 0, 0, 0, 0};
    while (sum.items < n_items) {
        uint64_t left = n_items - sum.items;
        size_t n = left < ROUND_ITEMS ? (size_t)left : ROUND_ITEMS;
        owner_round((*round)++, n, thieves, nthieves, rng, &sum);
    }

    quitting = true; /* ordered by the barrier */
    pthread_barrier_wait(&start_barrier);
    for (unsigned i = 0; i < nthieves; i++)
        CHECK(pthread_join(thieves[i].thread, NULL) == 0,
              "pthread_join failed");
    pthread_barrier_destroy(&start_barrier);
    pthread_barrier_destroy(&end_barrier);

    printf("deque_stress: %u thie%s: %" PRIu64 " items, %" PRIu64
           " popped, %" PRIu64 " stolen, %" PRIu64 " aborted steals, %"
           PRIu64 " bursts, %.2f s\n",
           nthieves, nthieves == 1 ? "f" : "ves", sum.items, sum.popped,
           sum.stolen, sum.aborts, sum.bursts, seconds_since(&t0));
}

int main(int argc, char **argv)
{
    unsigned long long ops = stress_ops(argc, argv, DEFAULT_OPS);
    uint64_t per_run = (ops / 2 + MAX_THIEVES - 1) / MAX_THIEVES;
    uint64_t rng = 0x853c49e6748fea9bULL;
    uint64_t round = 1;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned nthieves = 1; nthieves <= MAX_THIEVES; nthieves++)
        run(nthieves, per_run, &round, &rng);
    printf("deque_stress: ok, %llu operations in %.2f s\n", ops,
           seconds_since(&t0));
    return 0;
}
