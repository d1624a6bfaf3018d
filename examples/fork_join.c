/* fork_join.c - a parallel quicksort with cp_spawn and cp_sync, and a trace ID
 * that reaches every leaf.
 *
 * The trace ID is set once, at the top. Each call partitions its range,
 * spawns the left half (which an idle worker may steal), sorts the right half
 * itself and syncs. A spawn captures the spawner's context without copying or
 * allocating anything, so every leaf, on whichever worker it runs, reads the
 * trace ID from its context though no function passes it.
 *
 * The program checks itself: the array is sorted (compared with qsort) and
 * every leaf saw the trace ID. Exits 1 if not.
 */
#include <ctxpool.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { COUNT = 200000, LEAF = 2000 };

static const char trace[] = "trace-4bf92f35";
static cp_var *trace_id; /* const char * */
static cp_pool *pool;

static atomic_int leaves, leaves_with_trace;

struct range {
    int *a;
    size_t n;
};

static int compare_ints(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

/* A leaf: sorts sequentially and looks for the trace ID in its context. */
static void sort_leaf(struct range r)
{
    qsort(r.a, r.n, sizeof *r.a, compare_ints);
    const char *id = cp_var_get_or(trace_id, NULL);
    atomic_fetch_add_explicit(&leaves, 1, memory_order_relaxed);
    if (id && strcmp(id, trace) == 0)
        atomic_fetch_add_explicit(&leaves_with_trace, 1, memory_order_relaxed);
}

/* Hoare partition around the median of three; returns the split point. */
static size_t partition(int *a, size_t n)
{
    int x = a[0], y = a[n / 2], z = a[n - 1];
    int pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    size_t i = 0, j = n - 1;
    for (;;) {
        while (a[i] < pivot)
            i++;
        while (a[j] > pivot)
            j--;
        if (i >= j)
            return j + 1;
        int t = a[i];
        a[i++] = a[j];
        a[j--] = t;
    }
}

static void *quicksort(void *arg)
{
    struct range *r = arg;
    if (r->n <= LEAF) {
        sort_leaf(*r);
        return NULL;
    }
    size_t split = partition(r->a, r->n);
    struct range left = {r->a, split}, right = {r->a + split, r->n - split};
    cp_task task; /* no allocation: the task lives in this frame */
    if (cp_spawn(pool, &task, quicksort, &left) != 0) {
        quicksort(&left); /* could not spawn: do it here */
        quicksort(&right);
    } else {
        quicksort(&right);
        cp_sync(&task, NULL);
    }
    return NULL;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    trace_id = cp_var_new("trace_id", NULL);
    cp_pool_options options = {.threads = 4, .name = "sort"};
    int *a = malloc(COUNT * sizeof *a), *expected = malloc(COUNT * sizeof *a);
    if (!trace_id || !a || !expected || cp_pool_new(&pool, &options) != 0) {
        fprintf(stderr, "fork_join: cannot start\n");
        return 1;
    }
    uint64_t seed = 42; /* the same data every run: the same tree of tasks */
    for (size_t i = 0; i < COUNT; i++) {
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        a[i] = expected[i] = (int)(seed >> 33);
    }
    qsort(expected, COUNT, sizeof *expected, compare_ints); /* the baseline */

    printf("sorting %d ints with cp_spawn/cp_sync on 4 workers, trace ID %s\n",
           COUNT, trace);
    cp_var_set(trace_id, (void *)trace, NULL); /* set once, at the top */
    struct range all = {a, COUNT};
    cp_task root;
    int err = cp_spawn(pool, &root, quicksort, &all); /* from outside the pool */
    if (err == 0)
        err = cp_sync(&root, NULL);

    cp_pool_stats stats = {0};
    cp_pool_get_stats(pool, &stats);
    cp_pool_free(pool);
    bool sorted = err == 0 && memcmp(a, expected, COUNT * sizeof *a) == 0;
    int n = atomic_load(&leaves), with = atomic_load(&leaves_with_trace);
    printf("sorted: %s (compared with qsort); %llu tasks stolen by idle workers\n",
           sorted ? "yes" : "NO", (unsigned long long)stats.stolen);
    printf("leaves that saw trace ID %s: %d of %d\n", trace, with, n);
    free(a);
    free(expected);
    cp_var_free(trace_id);
    bool ok = sorted && n > 0 && with == n;
    printf("%s\n", ok ? "ok: every leaf saw the trace ID set at the top, passed by no one"
                      : "FAIL");
    return ok ? 0 : 1;
}
