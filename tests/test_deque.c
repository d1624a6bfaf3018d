/* test_deque.c - the Chase-Lev deque: order, growth, races, out of memory. */
#include "alloc.h"
#include "ctxpool.h"
#include "deque.h"

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* Items are pointers into this array, so a test can tell which one it got. */
enum { N_ITEMS = 1000 };
static int items[N_ITEMS];

static void *item(int i)
{
    return &items[i];
}

static int index_of(void *p)
{
    return (int)((int *)p - items);
}

static void *steal_one(cp__deque *d)
{
    void *x = NULL;
    cp__steal r = cp__deque_steal(d, &x);
    /* single-threaded: nobody to lose a race to */
    cr_assert_neq(r, CP__STEAL_ABORT);
    return r == CP__STEAL_OK ? x : NULL;
}

Test(deque, pop_returns_items_in_lifo_order)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 4), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(cp__deque_push(&d, item(i)), 0);
    cr_assert_eq(cp__deque_size(&d), 10);
    for (int i = 9; i >= 0; i--)
        cr_assert_eq(cp__deque_pop(&d), item(i));
    cr_assert_eq(cp__deque_size(&d), 0);
    cp__deque_destroy(&d);
}

Test(deque, steal_returns_items_in_fifo_order)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 4), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(cp__deque_push(&d, item(i)), 0);
    for (int i = 0; i < 10; i++) {
        void *x = NULL;
        cr_assert_eq(cp__deque_steal(&d, &x), CP__STEAL_OK);
        cr_assert_eq(x, item(i));
    }
    cr_assert_eq(cp__deque_size(&d), 0);
    cp__deque_destroy(&d);
}

Test(deque, pop_and_steal_on_empty_deque_find_nothing)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 0), 0);
    void *x = item(0);
    cr_assert_null(cp__deque_pop(&d));
    cr_assert_eq(cp__deque_steal(&d, &x), CP__STEAL_EMPTY);
    cr_assert_eq(x, item(0), "a failed steal must not write *item");
    cr_assert_eq(cp__deque_size(&d), 0);

    /* Emptied again, by pop and by steal: still empty and usable. */
    cr_assert_eq(cp__deque_push(&d, item(1)), 0);
    cr_assert_eq(cp__deque_pop(&d), item(1));
    cr_assert_null(cp__deque_pop(&d));
    cr_assert_eq(cp__deque_push(&d, item(2)), 0);
    cr_assert_eq(steal_one(&d), item(2));
    cr_assert_eq(cp__deque_steal(&d, &x), CP__STEAL_EMPTY);
    cr_assert_null(cp__deque_pop(&d));
    cr_assert_eq(cp__deque_size(&d), 0);
    cp__deque_destroy(&d);
}

Test(deque, marked_pop_takes_only_the_bottom_item_and_marks_only_then)
{
    cp__deque d;
    atomic_bool mark = false;
    cr_assert_eq(cp__deque_init(&d, 2), 0);
    cr_assert_not(cp__deque_pop_marked(&d, item(0), &mark), "empty deque");
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cp__deque_push(&d, item(i)), 0);
    cr_assert_not(cp__deque_pop_marked(&d, item(1), &mark), "not at the bottom");
    cr_assert_not(atomic_load(&mark));
    cr_assert_eq(cp__deque_size(&d), 3);
    cr_assert(cp__deque_pop_marked(&d, item(2), &mark));
    cr_assert(atomic_load(&mark));
    atomic_store(&mark, false);
    /* Item 0 stolen: item 1 is the last one, taken by the CAS on top. */
    cr_assert_eq(steal_one(&d), item(0));
    cr_assert(cp__deque_pop_marked(&d, item(1), &mark));
    cr_assert(atomic_load(&mark));
    atomic_store(&mark, false);
    /* Emptied by the marked pop, the deque is consistent: its stale slot
     * is not taken again, and it works on as a deque. */
    cr_assert_eq(cp__deque_size(&d), 0);
    cr_assert_not(cp__deque_pop_marked(&d, item(1), &mark));
    cr_assert_not(atomic_load(&mark));
    cr_assert_null(cp__deque_pop(&d));
    cr_assert_eq(cp__deque_push(&d, item(3)), 0);
    cr_assert_eq(steal_one(&d), item(3));
    /* Stolen since the owner pushed it: the stale slot holds item 3. */
    cr_assert_not(cp__deque_pop_marked(&d, item(3), &mark));
    cr_assert_not(atomic_load(&mark));
    cp__deque_destroy(&d);
}

Test(deque, growth_past_initial_capacity_keeps_every_item_in_order)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 1), 0);
    for (int i = 0; i < N_ITEMS; i++) {
        cr_assert_eq(cp__deque_push(&d, item(i)), 0);
        cr_assert_eq(cp__deque_size(&d), (size_t)i + 1);
    }
    /* Half from the top (oldest first), the rest from the bottom. */
    for (int i = 0; i < N_ITEMS / 2; i++)
        cr_assert_eq(steal_one(&d), item(i));
    for (int i = N_ITEMS - 1; i >= N_ITEMS / 2; i--)
        cr_assert_eq(cp__deque_pop(&d), item(i));
    cr_assert_null(cp__deque_pop(&d));
    cp__deque_destroy(&d);
}

Test(deque, growth_after_wraparound_copies_live_items_only)
{
    /* Move top and bottom well past the capacity first, so the live items
     * wrap around the end of the buffer when it grows. */
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 2), 0);
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(cp__deque_push(&d, item(i)), 0);
        cr_assert_eq(steal_one(&d), item(i));
    }
    for (int i = 0; i < 20; i++)
        cr_assert_eq(cp__deque_push(&d, item(100 + i)), 0);
    for (int i = 0; i < 20; i++)
        cr_assert_eq(steal_one(&d), item(100 + i));
    cr_assert_null(steal_one(&d));
    cp__deque_destroy(&d);
}

Test(deque, interleaved_pop_and_steal_take_each_item_once)
{
    cp__deque d;
    int taken[N_ITEMS] = {0};
    cr_assert_eq(cp__deque_init(&d, 1), 0);
    int next = 0, got = 0;
    unsigned rng = 12345;
    while (got < N_ITEMS) {
        rng = rng * 1103515245u + 12345u;
        unsigned r = (rng >> 16) % 4;
        void *x = NULL;
        if (r < 2 && next < N_ITEMS) {
            cr_assert_eq(cp__deque_push(&d, item(next)), 0);
            next++;
            continue;
        }
        x = r == 2 ? cp__deque_pop(&d) : steal_one(&d);
        if (x == NULL) {
            cr_assert_eq(cp__deque_size(&d), 0);
            continue;
        }
        int i = index_of(x);
        cr_assert(i >= 0 && i < next, "item %d was never pushed", i);
        cr_assert_eq(taken[i], 0, "item %d taken twice", i);
        taken[i] = 1;
        got++;
    }
    cr_assert_null(cp__deque_pop(&d));
    cp__deque_destroy(&d);
}

Test(deque, null_arguments_change_nothing)
{
    cp__deque d;
    void *x = NULL;
    cr_assert_eq(cp__deque_init(NULL, 2), CP_EINVAL);
    cr_assert_eq(cp__deque_init(&d, 2), 0);
    cr_assert_eq(cp__deque_push(&d, NULL), CP_EINVAL);
    cr_assert_eq(cp__deque_push(NULL, item(0)), CP_EINVAL);
    cr_assert_eq(cp__deque_size(&d), 0);
    cr_assert_eq(cp__deque_push(&d, item(0)), 0);
    cr_assert_eq(cp__deque_steal(&d, NULL), CP__STEAL_EMPTY);
    cr_assert_eq(cp__deque_steal(NULL, &x), CP__STEAL_EMPTY);
    cr_assert_null(cp__deque_pop(NULL));
    cr_assert_eq(cp__deque_size(NULL), 0);
    cr_assert_eq(cp__deque_size(&d), 1, "the item must still be there");
    cp__deque_destroy(&d);
    cp__deque_destroy(NULL);
}

Test(deque, absurd_capacity_fails_with_enomem)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 63), CP_ENOMEM);
    cr_assert_eq(cp__deque_init(&d, 62), CP_ENOMEM); /* 2^65 bytes */
}

Test(deque, init_out_of_memory_fails_with_enomem)
{
    cp__deque d;
    cp__alloc_fail_nth(1);
    cr_assert_eq(cp__deque_init(&d, 4), CP_ENOMEM);
    cp__alloc_fail_nth(0);
    /* ASan/valgrind check that nothing leaked; the deque works afterwards. */
    cr_assert_eq(cp__deque_init(&d, 4), 0);
    cr_assert_eq(cp__deque_push(&d, item(0)), 0);
    cr_assert_eq(cp__deque_pop(&d), item(0));
    cp__deque_destroy(&d);
}

Test(deque, growth_out_of_memory_fails_and_changes_nothing)
{
    cp__deque d;
    cr_assert_eq(cp__deque_init(&d, 1), 0);
    cr_assert_eq(cp__deque_push(&d, item(0)), 0);
    cr_assert_eq(cp__deque_push(&d, item(1)), 0);
    unsigned long before = cp__alloc_count();
    cp__alloc_fail_nth(1);
    cr_assert_eq(cp__deque_push(&d, item(2)), CP_ENOMEM);
    cr_assert_eq(cp__alloc_count(), before + 1, "growth allocates once");
    cr_assert_eq(cp__deque_size(&d), 2);
    cr_assert_eq(steal_one(&d), item(0));
    cr_assert_eq(cp__deque_pop(&d), item(1));
    cr_assert_null(cp__deque_pop(&d));

    /* Full again, and this time the growth succeeds. */
    cr_assert_eq(cp__deque_push(&d, item(3)), 0);
    cr_assert_eq(cp__deque_push(&d, item(4)), 0);
    cr_assert_eq(cp__deque_push(&d, item(5)), 0);
    cr_assert_eq(steal_one(&d), item(3));
    cr_assert_eq(cp__deque_pop(&d), item(5));
    cr_assert_eq(cp__deque_pop(&d), item(4));
    cp__deque_destroy(&d);
}

/* --- one owner against two thieves ------------------------------------- */

enum { RACE_ITEMS = 100000, RACE_THIEVES = 2 };

typedef struct race {
    cp__deque deque;
    atomic_uint taken[RACE_ITEMS]; /* relaxed: read after the joins */
    atomic_uint invented;          /* likewise: items we never pushed */
    atomic_bool done;              /* release by owner, acquire by thieves */
    pthread_barrier_t start;
} race;

static void race_take(race *r, void *x)
{
    /* Items are (void *)(index + 1): compare as integers, no wild pointers. */
    /* No cr_assert here: it may not be called from the thieves' threads. */
    uintptr_t i = (uintptr_t)x - 1;
    if (i < RACE_ITEMS)
        atomic_fetch_add_explicit(&r->taken[i], 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&r->invented, 1, memory_order_relaxed);
}

static void *race_thief(void *arg)
{
    race *r = arg;
    pthread_barrier_wait(&r->start);
    for (;;) {
        void *x = NULL;
        cp__steal s = cp__deque_steal(&r->deque, &x);
        if (s == CP__STEAL_OK)
            race_take(r, x);
        else if (s == CP__STEAL_EMPTY &&
                 atomic_load_explicit(&r->done, memory_order_acquire))
            return NULL;
    }
}

Test(deque, owner_and_two_thieves_take_every_item_exactly_once)
{
    static race r; /* too big for the stack */
    cr_assert_eq(cp__deque_init(&r.deque, 2), 0);
    for (int i = 0; i < RACE_ITEMS; i++)
        atomic_init(&r.taken[i], 0);
    atomic_init(&r.invented, 0);
    atomic_init(&r.done, false);
    cr_assert_eq(pthread_barrier_init(&r.start, NULL, RACE_THIEVES + 1), 0);
    pthread_t thieves[RACE_THIEVES];
    for (int i = 0; i < RACE_THIEVES; i++)
        cr_assert_eq(pthread_create(&thieves[i], NULL, race_thief, &r), 0);

    pthread_barrier_wait(&r.start);
    unsigned rng = 1;
    for (uintptr_t next = 0; next < RACE_ITEMS;) {
        rng = rng * 1103515245u + 12345u;
        unsigned k = (rng >> 16) % 8; /* 0..7 pushes, then one pop */
        for (unsigned j = 0; j < k && next < RACE_ITEMS; j++, next++)
            cr_assert_eq(cp__deque_push(&r.deque, (void *)(next + 1)), 0);
        void *x = cp__deque_pop(&r.deque);
        if (x != NULL)
            race_take(&r, x);
    }
    for (void *x; (x = cp__deque_pop(&r.deque)) != NULL;)
        race_take(&r, x);
    atomic_store_explicit(&r.done, true, memory_order_release);
    for (int i = 0; i < RACE_THIEVES; i++)
        cr_assert_eq(pthread_join(thieves[i], NULL), 0);

    cr_assert_eq(atomic_load_explicit(&r.invented, memory_order_relaxed), 0);
    for (int i = 0; i < RACE_ITEMS; i++) {
        unsigned c = atomic_load_explicit(&r.taken[i], memory_order_relaxed);
        cr_assert_eq(c, 1, "item %d taken %u times", i, c);
    }
    cr_assert_eq(cp__deque_size(&r.deque), 0);
    pthread_barrier_destroy(&r.start);
    cp__deque_destroy(&r.deque);
}
