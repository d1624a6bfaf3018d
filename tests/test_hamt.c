/* test_hamt.c - tests of the persistent HAMT (src/hamt.c).
 *
 * Items carry their own hash, so the tests choose hashes directly to build
 * exact shapes: collisions, array nodes, the deepest possible path. Every
 * item is made by mk() and released through count_release(), so a test can
 * check that each item was released exactly once when the last map went.
 */
#include "alloc.h"
#include "ctxpool.h"
#include "hamt.h"

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

#define NKEYS 4096
static char keys[NKEYS]; /* key i is &keys[i]: keys compare by address */
#define KEY(i) ((const void *)&keys[(i)])
#define VAL(v) ((void *)(uintptr_t)(v))

/* Tests run one per process (Criterion forks), so plain counters do. */
static size_t created, released;

static void count_release(cp__hamt_item *item)
{
    released++;
    free(item);
}

/* A new item (one reference, the caller's) for key i. */
static cp__hamt_item *mk(uint32_t hash, unsigned i, uintptr_t value)
{
    cp__hamt_item *item = malloc(sizeof *item);
    cr_assert_not_null(item);
    cp__hamt_item_init(item, hash, KEY(i), VAL(value), count_release, false);
    created++;
    return item;
}

/* m with key i (hash) set to value; m itself is dropped. */
static cp__hamt put(cp__hamt m, uint32_t hash, unsigned i, uintptr_t value)
{
    cp__hamt_item *item = mk(hash, i, value);
    cp__hamt out;
    cr_assert_eq(cp__hamt_set(m, item, &out), 0);
    cp__hamt_item_decref(item);
    cp__hamt_decref(m);
    cr_assert_eq(cp__hamt_check(out), 0, "check: %d", cp__hamt_check(out));
    return out;
}

/* m without key i (hash), which must be present; m itself is dropped. */
static cp__hamt del(cp__hamt m, uint32_t hash, unsigned i)
{
    cp__hamt out;
    cr_assert_eq(cp__hamt_delete(m, hash, KEY(i), &out), 0);
    cr_assert_eq(out.count, m.count - 1);
    cp__hamt_decref(m);
    cr_assert_eq(cp__hamt_check(out), 0, "check: %d", cp__hamt_check(out));
    return out;
}

/* The value of key i in m, or 0 when absent. */
static uintptr_t get(cp__hamt m, uint32_t hash, unsigned i)
{
    cp__hamt_item *item = cp__hamt_find(m, hash, KEY(i));
    if (item == NULL)
        return 0;
    cr_assert_eq(item->key, KEY(i));
    cr_assert_eq(item->hash, hash);
    return (uintptr_t)item->value;
}

static cp__hamt_shape shape(cp__hamt m)
{
    cp__hamt_shape s;
    cp__hamt_shape_of(m, &s);
    return s;
}

/* A reference model: value[i] (0: absent) and hash[i] for keys 0..n-1. */
typedef struct model {
    unsigned n;
    uint32_t hash[NKEYS];
    uintptr_t value[NKEYS];
} model;

/* Check m against the model completely: count, check, every find, and an
 * iteration that yields each present key exactly once with its value. */
static void verify(cp__hamt m, const model *ref)
{
    static unsigned char seen[NKEYS];
    size_t count = 0;
    for (unsigned i = 0; i < ref->n; i++) {
        cr_assert_eq(get(m, ref->hash[i], i), ref->value[i], "key %u", i);
        count += ref->value[i] != 0;
    }
    cr_assert_eq(m.count, count);
    cr_assert_eq(cp__hamt_check(m), 0, "check: %d", cp__hamt_check(m));
    cr_assert_eq(shape(m).items, count);

    memset(seen, 0, sizeof seen);
    cp__hamt_iter it;
    cp__hamt_iter_init(&it, m);
    size_t steps = 0;
    for (cp__hamt_item *item; (item = cp__hamt_iter_next(&it)) != NULL;) {
        unsigned i = (unsigned)((const char *)item->key - keys);
        cr_assert_lt(i, ref->n);
        cr_assert_eq(seen[i], 0, "key %u seen twice", i);
        seen[i] = 1;
        cr_assert_eq((uintptr_t)item->value, ref->value[i]);
        steps++;
    }
    cr_assert_eq(steps, count);
    cr_assert_null(cp__hamt_iter_next(&it), "a finished iterator stays finished");
}

/* Build a map of keys 0..n-1 with the given hashes, value i + 1. */
static cp__hamt build(model *ref, unsigned n, const uint32_t *hashes)
{
    cp__hamt m = CP__HAMT_EMPTY;
    memset(ref, 0, sizeof *ref);
    ref->n = n;
    for (unsigned i = 0; i < n; i++) {
        ref->hash[i] = hashes[i];
        ref->value[i] = i + 1;
        m = put(m, hashes[i], i, i + 1);
    }
    verify(m, ref);
    return m;
}

/* Drop m and check that every item ever made was released exactly once. */
static void drop_all(cp__hamt m)
{
    cp__hamt_decref(m);
    cr_assert_eq(released, created, "released %zu of %zu items", released, created);
}

/* ------------------------------------------------------------------------ */
/* Basics                                                                    */
/* ------------------------------------------------------------------------ */

Test(hamt, empty_map_finds_nothing_deletes_enoent_iterates_nothing)
{
    cp__hamt m = CP__HAMT_EMPTY, out = {(cp__hamt_node *)&out, 77};
    cr_assert_null(cp__hamt_find(m, 42, KEY(0)));
    cr_assert_eq(cp__hamt_delete(m, 42, KEY(0), &out), CP_ENOENT);
    cr_assert_eq(out.count, 77, "*out untouched");
    cp__hamt_iter it;
    cp__hamt_iter_init(&it, m);
    cr_assert_null(cp__hamt_iter_next(&it));
    cr_assert_eq(cp__hamt_check(m), 0);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.items + s.bitmap_nodes + s.array_nodes + s.collision_nodes +
                     s.max_depth, 0);
    cp__hamt_incref(m); /* no-ops on an empty map */
    cp__hamt_decref(m);
    cp__hamt_item_decref(NULL);
}

Test(hamt, set_then_find_returns_the_item)
{
    cp__hamt_item *item = mk(7, 0, 100);
    cp__hamt m;
    cr_assert_eq(cp__hamt_set(CP__HAMT_EMPTY, item, &m), 0);
    cr_assert_eq(m.count, 1);
    cr_assert_eq(cp__hamt_find(m, 7, KEY(0)), item);
    cr_assert_null(cp__hamt_find(m, 7, KEY(1)), "same hash, other key");
    cr_assert_null(cp__hamt_find(m, 8, KEY(0)), "same key, other hash");
    cr_assert_null(cp__hamt_find(m, 7 + 32, KEY(0)), "same first chunk");
    cr_assert_eq(atomic_load(&item->refs), 2, "the map holds its own reference");
    cp__hamt_item_decref(item);
    cr_assert_eq(cp__hamt_check(m), 0);
    drop_all(m);
}

Test(hamt, overwrite_replaces_value_and_keeps_count)
{
    cp__hamt m = put(CP__HAMT_EMPTY, 1, 0, 10);
    m = put(m, 2, 1, 20);
    m = put(m, 1, 0, 11);
    cr_assert_eq(m.count, 2);
    cr_assert_eq(get(m, 1, 0), 11);
    cr_assert_eq(get(m, 2, 1), 20);
    cr_assert_eq(released, 1, "the replaced item is released");
    drop_all(m);
}

Test(hamt, set_identical_value_returns_same_root)
{
    cp__hamt m = put(CP__HAMT_EMPTY, 1, 0, 10);
    m = put(m, 1 + 32, 1, 20); /* a subtree under the root */
    cp__hamt_item *same = mk(1 + 32, 1, 20);
    cp__hamt out;
    cr_assert_eq(cp__hamt_set(m, same, &out), 0);
    cr_assert_eq(out.root, m.root);
    cr_assert_eq(out.count, m.count);
    cr_assert_eq(cp__hamt_find(out, 1 + 32, KEY(1))->value, VAL(20));
    cr_assert_neq(cp__hamt_find(out, 1 + 32, KEY(1)), same, "old item kept");
    cr_assert_eq(atomic_load(&same->refs), 1, "the map took no reference");
    cp__hamt_item_decref(same);
    cp__hamt_decref(out); /* out was one more reference on the same root */
    drop_all(m);
}

Test(hamt, set_same_item_again_returns_same_root)
{
    cp__hamt_item *item = mk(5, 0, 50);
    cp__hamt m, out;
    cr_assert_eq(cp__hamt_set(CP__HAMT_EMPTY, item, &m), 0);
    cr_assert_eq(cp__hamt_set(m, item, &out), 0);
    cr_assert_eq(out.root, m.root);
    cp__hamt_decref(out);
    cp__hamt_item_decref(item);
    drop_all(m);
}

Test(hamt, delete_absent_key_returns_enoent_and_leaves_map_intact)
{
    model ref;
    const uint32_t hashes[] = {1, 1 + 32, 1 + 64, 9, 9, 0x40000001};
    cp__hamt m = build(&ref, 6, hashes);
    cp__hamt out = {NULL, 12345};
    /* absent chunk at the root, absent deeper, same hash other key (item),
     * same hash other key (collision), hash differing only at the top */
    const uint32_t probe_hash[] = {2, 1 + 96, 1, 9, 0x80000001, 1 + 32};
    const unsigned probe_key[] = {10, 10, 1, 10, 10, 0};
    for (unsigned k = 0; k < 6; k++) {
        cr_assert_eq(cp__hamt_delete(m, probe_hash[k], KEY(probe_key[k]), &out),
                     CP_ENOENT, "probe %u", k);
        cr_assert_eq(out.count, 12345, "*out untouched");
        cr_assert_null(out.root);
    }
    verify(m, &ref);
    drop_all(m);
}

Test(hamt, delete_last_key_gives_empty_map)
{
    cp__hamt m = put(CP__HAMT_EMPTY, 3, 0, 1);
    m = del(m, 3, 0);
    cr_assert_null(m.root);
    cr_assert_eq(m.count, 0);
    drop_all(m);
}

Test(hamt, check_reports_count_mismatch)
{
    cp__hamt m = put(CP__HAMT_EMPTY, 3, 0, 1);
    cr_assert_eq(cp__hamt_check((cp__hamt){m.root, 2}), -13);
    cr_assert_eq(cp__hamt_check((cp__hamt){m.root, 0}), -1);
    cr_assert_eq(cp__hamt_check((cp__hamt){NULL, 1}), -1);
    drop_all(m);
}

/* ------------------------------------------------------------------------ */
/* Collisions                                                                */
/* ------------------------------------------------------------------------ */

Test(hamt, colliding_keys_are_all_findable_in_a_collision_node)
{
    model ref;
    const uint32_t hashes[] = {0xABCD, 0xABCD, 0xABCD};
    cp__hamt m = build(&ref, 3, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.collision_nodes, 1);
    cr_assert_eq(s.bitmap_nodes, 1);
    cr_assert_eq(s.items, 3);
    cr_assert_eq(s.max_depth, 2, "root, then the collision node in its slot");
    cr_assert_null(cp__hamt_find(m, 0xABCD, KEY(3)));
    drop_all(m);
}

Test(hamt, overwrite_in_collision_node_keeps_count)
{
    model ref;
    const uint32_t hashes[] = {0xABCD, 0xABCD, 0xABCD};
    cp__hamt m = build(&ref, 3, hashes);
    m = put(m, 0xABCD, 1, 99);
    ref.value[1] = 99;
    cr_assert_eq(m.count, 3);
    verify(m, &ref);
    cr_assert_eq(shape(m).collision_nodes, 1);
    drop_all(m);
}

Test(hamt, delete_through_collision_node_to_item_and_to_empty)
{
    model ref;
    const uint32_t hashes[] = {0xABCD, 0xABCD, 0xABCD};
    cp__hamt m = build(&ref, 3, hashes);
    m = del(m, 0xABCD, 1);
    ref.value[1] = 0;
    verify(m, &ref);
    cr_assert_eq(shape(m).collision_nodes, 1);
    m = del(m, 0xABCD, 0);
    ref.value[0] = 0;
    verify(m, &ref);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.collision_nodes, 0, "a lone collided item becomes an item");
    cr_assert_eq(s.max_depth, 1);
    m = del(m, 0xABCD, 2);
    cr_assert_null(m.root);
    drop_all(m);
}

Test(hamt, collision_node_moves_up_when_its_sibling_goes)
{
    /* Keys 0 and 1 collide; key 2 shares their first four chunks, so the
     * collision node starts at depth 5 next to key 2. */
    model ref;
    const uint32_t h = 0x000ABCDE, other = h ^ (UINT32_C(1) << 20);
    const uint32_t hashes[] = {h, h, other};
    cp__hamt m = build(&ref, 3, hashes);
    cr_assert_eq(shape(m).max_depth, 6);
    m = del(m, other, 2);
    ref.value[2] = 0;
    verify(m, &ref);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.max_depth, 2, "no chain of one-entry nodes is left");
    cr_assert_eq(s.bitmap_nodes, 1);
    cr_assert_eq(s.collision_nodes, 1);
    /* and a key on the old path can be added back */
    m = put(m, other, 2, 3);
    ref.value[2] = 3;
    verify(m, &ref);
    cr_assert_eq(shape(m).max_depth, 6);
    drop_all(m);
}

Test(hamt, key_next_to_collision_node_splits_it_off)
{
    model ref;
    const uint32_t hashes[] = {0x21, 0x21, 0x41, 0x21 | 0x40000000};
    cp__hamt m = build(&ref, 4, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.collision_nodes, 1);
    cr_assert_eq(s.items, 4);
    cr_assert_eq(s.max_depth, 8, "0x21 and 0x40000021 part only at shift 30");
    drop_all(m);
}

/* ------------------------------------------------------------------------ */
/* Array nodes                                                               */
/* ------------------------------------------------------------------------ */

Test(hamt, seventeen_first_chunks_promote_root_to_array_node_and_back)
{
    model ref;
    uint32_t hashes[17];
    for (unsigned i = 0; i < 17; i++)
        hashes[i] = i * 2 + 1 + (i << 10); /* first chunks 1, 3, ..., 33 & 31 */
    hashes[16] = 0; /* chunk 0: 17 distinct first chunks */
    cp__hamt m = build(&ref, 16, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.bitmap_nodes, 1, "16 entries still fit a bitmap node");
    cr_assert_eq(s.array_nodes, 0);

    m = put(m, hashes[16], 16, 17);
    ref.n = 17;
    ref.hash[16] = hashes[16];
    ref.value[16] = 17;
    verify(m, &ref);
    s = shape(m);
    cr_assert_eq(s.array_nodes, 1);
    cr_assert_eq(s.bitmap_nodes, 0);
    cr_assert_eq(s.max_depth, 1);

    /* 16 entries: still an array node (hysteresis) */
    m = del(m, hashes[3], 3);
    ref.value[3] = 0;
    verify(m, &ref);
    cr_assert_eq(shape(m).array_nodes, 1);

    /* 15: a bitmap node again */
    m = del(m, hashes[5], 5);
    ref.value[5] = 0;
    verify(m, &ref);
    s = shape(m);
    cr_assert_eq(s.array_nodes, 0);
    cr_assert_eq(s.bitmap_nodes, 1);

    m = del(m, hashes[0], 0);
    ref.value[0] = 0;
    verify(m, &ref);
    cr_assert_eq(m.count, 14);
    cr_assert_eq(shape(m).array_nodes, 0);

    for (unsigned i = 0; i < 17; i++) {
        if (ref.value[i] != 0) {
            m = del(m, hashes[i], i);
            ref.value[i] = 0;
            verify(m, &ref);
        }
    }
    cr_assert_null(m.root);
    drop_all(m);
}

Test(hamt, array_node_below_the_root_holds_subtrees)
{
    /* 32 first-level children under one root chunk, some of them subtrees
     * and collision nodes, then everything deleted in a scrambled order. */
    model ref;
    static uint32_t hashes[100];
    for (unsigned i = 0; i < 96; i++)
        hashes[i] = 7 | ((i % 32) << 5) | ((i / 32) << 10);
    for (unsigned i = 96; i < 100; i++)
        hashes[i] = hashes[i - 96]; /* collisions with keys 0..3 */
    cp__hamt m = build(&ref, 100, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.array_nodes, 1);
    cr_assert_eq(s.bitmap_nodes, 1 + 32);
    cr_assert_eq(s.collision_nodes, 4);
    cr_assert_eq(s.max_depth, 4);
    for (unsigned k = 0; k < 100; k++) {
        unsigned i = (k * 37) % 100;
        m = del(m, hashes[i], i);
        ref.value[i] = 0;
        verify(m, &ref);
    }
    cr_assert_null(m.root);
    drop_all(m);
}

/* ------------------------------------------------------------------------ */
/* Depth                                                                     */
/* ------------------------------------------------------------------------ */

Test(hamt, hashes_differing_only_in_top_bits_build_the_deepest_tree)
{
    model ref;
    const uint32_t low = 0x2ABCDEF1 & 0x3FFFFFFF;
    const uint32_t hashes[] = {low, low | 0x40000000, low | 0x80000000,
                               low | 0xC0000000};
    cp__hamt m = build(&ref, 4, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.max_depth, 7, "7 levels of 5 bits");
    cr_assert_eq(s.bitmap_nodes, 7);
    cr_assert_eq(s.items, 4);
    /* deleting down to one key removes the whole chain */
    for (unsigned i = 0; i < 3; i++) {
        m = del(m, hashes[i], i);
        ref.value[i] = 0;
        verify(m, &ref);
    }
    s = shape(m);
    cr_assert_eq(s.max_depth, 1);
    cr_assert_eq(s.bitmap_nodes, 1);
    drop_all(m);
}

Test(hamt, collisions_at_the_deepest_level_reach_depth_eight)
{
    model ref;
    const uint32_t low = 0x1F0F0F0F & 0x3FFFFFFF;
    const uint32_t hashes[] = {low, low | 0x40000000, low | 0x80000000,
                               low | 0xC0000000, low, low | 0x40000000,
                               low | 0xC0000000, low | 0xC0000000};
    cp__hamt m = build(&ref, 8, hashes);
    cp__hamt_shape s = shape(m);
    cr_assert_eq(s.max_depth, CP__HAMT_MAX_DEPTH);
    cr_assert_eq(s.collision_nodes, 3);
    cr_assert_eq(s.items, 8);
    /* remove them in an order that collapses collision nodes and chains */
    const unsigned order[] = {4, 0, 7, 2, 5, 6, 3, 1};
    for (unsigned k = 0; k < 8; k++) {
        unsigned i = order[k];
        m = del(m, hashes[i], i);
        ref.value[i] = 0;
        verify(m, &ref);
    }
    cr_assert_null(m.root);
    drop_all(m);
}

/* ------------------------------------------------------------------------ */
/* Persistence and item lifetime                                             */
/* ------------------------------------------------------------------------ */

Test(hamt, old_maps_are_unchanged_by_set_and_delete_on_new_ones)
{
    static model ref[5];
    const uint32_t hashes[] = {1, 33, 65, 2, 2, 0x40000001, 3};
    cp__hamt v[5];
    v[0] = build(&ref[0], 7, hashes);
    ref[1] = ref[0];
    cp__hamt_incref(v[0]);
    v[1] = put(v[0], 33, 1, 100); /* overwrite deep */
    ref[1].value[1] = 100;
    ref[2] = ref[1];
    cp__hamt_incref(v[1]);
    v[2] = del(v[1], 2, 3); /* out of a collision node */
    ref[2].value[3] = 0;
    ref[3] = ref[2];
    cp__hamt_incref(v[2]);
    v[3] = put(v[2], 0x80000001, 7, 8); /* new key on the deepest path */
    ref[3].n = 8;
    ref[3].hash[7] = 0x80000001;
    ref[3].value[7] = 8;
    ref[4] = ref[3];
    cp__hamt_incref(v[3]);
    v[4] = del(v[3], 1, 0);
    ref[4].value[0] = 0;
    for (unsigned k = 0; k < 5; k++)
        verify(v[k], &ref[k]);
    for (unsigned k = 0; k < 4; k++)
        cp__hamt_decref(v[k]);
    verify(v[4], &ref[4]);
    drop_all(v[4]);
}

Test(hamt, shared_items_are_released_once_when_the_last_map_goes)
{
    cp__hamt_item *a = mk(10, 0, 1), *b = mk(10, 1, 2), *c = mk(42, 2, 3);
    cp__hamt maps[20];
    maps[0] = CP__HAMT_EMPTY;
    cr_assert_eq(cp__hamt_set(maps[0], a, &maps[1]), 0);
    cr_assert_eq(cp__hamt_set(maps[1], b, &maps[2]), 0);
    cr_assert_eq(cp__hamt_set(maps[2], c, &maps[3]), 0);
    for (unsigned k = 4; k < 20; k++) { /* many versions sharing a, b, c */
        cp__hamt_item *x = mk((uint32_t)k * 1000, k, k);
        cr_assert_eq(cp__hamt_set(maps[k - 1], x, &maps[k]), 0);
        cp__hamt_item_decref(x);
    }
    cp__hamt_item_decref(a);
    cp__hamt_item_decref(b);
    cp__hamt_item_decref(c);
    cr_assert_eq(released, 0);
    for (unsigned k = 19; k >= 4; k--) {
        cp__hamt_decref(maps[k]);
        cr_assert_eq(released, 19 - k + 1, "only the item unique to maps[%u]", k);
    }
    cp__hamt_decref(maps[3]);
    cr_assert_eq(released, 17, "c went with the last map holding it");
    cp__hamt_decref(maps[2]);
    cr_assert_eq(released, 18, "b too; a is still in maps[1]");
    cr_assert_eq(cp__hamt_find(maps[1], 10, KEY(0)), a);
    cp__hamt_decref(maps[1]);
    cr_assert_eq(released, 19);
    cr_assert_eq(created, 19);
}

/* ------------------------------------------------------------------------ */
/* Allocation failure                                                        */
/* ------------------------------------------------------------------------ */

/* Set item in m with every allocation failing in turn: each attempt returns
 * CP_ENOMEM, leaves *out alone, takes no reference on item and leaves m
 * intact; then the set succeeds. Returns the allocations it needed. */
static unsigned long set_under_failures(cp__hamt *m, const model *ref,
                                        cp__hamt_item *item)
{
    cp__hamt out;
    unsigned long before = cp__alloc_count();
    cr_assert_eq(cp__hamt_set(*m, item, &out), 0);
    unsigned long allocs = cp__alloc_count() - before;
    cp__hamt_decref(out);
    for (unsigned long n = 1; n <= allocs; n++) {
        cp__hamt sentinel = {(cp__hamt_node *)&sentinel, 4242};
        out = sentinel;
        cp__alloc_fail_nth(n);
        int rc = cp__hamt_set(*m, item, &out);
        cp__alloc_fail_nth(0);
        cr_assert_eq(rc, CP_ENOMEM, "allocation %lu of %lu", n, allocs);
        cr_assert_eq(out.root, sentinel.root);
        cr_assert_eq(out.count, 4242);
        cr_assert_eq(atomic_load(&item->refs), 1, "no reference kept on item");
        verify(*m, ref);
    }
    cr_assert_eq(cp__hamt_set(*m, item, &out), 0);
    cp__hamt_decref(*m);
    *m = out;
    return allocs;
}

static unsigned long delete_under_failures(cp__hamt *m, const model *ref,
                                           uint32_t hash, unsigned i)
{
    cp__hamt out;
    unsigned long before = cp__alloc_count();
    cr_assert_eq(cp__hamt_delete(*m, hash, KEY(i), &out), 0);
    unsigned long allocs = cp__alloc_count() - before;
    cp__hamt_decref(out);
    for (unsigned long n = 1; n <= allocs; n++) {
        cp__hamt sentinel = {(cp__hamt_node *)&sentinel, 4242};
        out = sentinel;
        cp__alloc_fail_nth(n);
        int rc = cp__hamt_delete(*m, hash, KEY(i), &out);
        cp__alloc_fail_nth(0);
        cr_assert_eq(rc, CP_ENOMEM, "allocation %lu of %lu", n, allocs);
        cr_assert_eq(out.root, sentinel.root);
        cr_assert_eq(out.count, 4242);
        verify(*m, ref);
    }
    cr_assert_eq(cp__hamt_delete(*m, hash, KEY(i), &out), 0);
    cp__hamt_decref(*m);
    *m = out;
    return allocs;
}

Test(hamt, set_fails_cleanly_at_every_allocation)
{
    static model ref;
    static uint32_t hashes[40];
    for (unsigned i = 0; i < 16; i++)
        hashes[i] = i; /* 16 root entries: the next new chunk promotes */
    hashes[16] = 0x00F00001; /* under chunk 1, beside key 1 */
    hashes[17] = 0x00F00001; /* collides with key 16 */
    cp__hamt m = build(&ref, 18, hashes);

    struct { uint32_t hash; unsigned key; unsigned long min_allocs; } cases[] = {
        {0x40F00001, 18, 7}, /* shares 6 chunks with 16/17: path + chain */
        {0x00F00001, 19, 3}, /* a third item in the collision node */
        {0x00F00001, 16, 3}, /* overwrite inside the collision node */
        {20, 20, 1},         /* a 17th root chunk: promotion */
        {0x00000401, 21, 2}, /* beside key 1 in the array node's subtree */
        {5, 5, 1},           /* overwrite in the array node */
    };
    for (unsigned k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        unsigned i = cases[k].key;
        cp__hamt_item *item = mk(cases[k].hash, i, 1000 + k);
        unsigned long allocs = set_under_failures(&m, &ref, item);
        cp__hamt_item_decref(item);
        cr_assert_geq(allocs, cases[k].min_allocs, "case %u made %lu", k, allocs);
        if (i >= ref.n)
            ref.n = i + 1;
        ref.hash[i] = cases[k].hash;
        ref.value[i] = 1000 + k;
        verify(m, &ref);
    }
    cr_assert_eq(shape(m).array_nodes, 1);
    drop_all(m);
}

Test(hamt, delete_fails_cleanly_at_every_allocation)
{
    static model ref;
    static uint32_t hashes[24];
    for (unsigned i = 0; i < 17; i++)
        hashes[i] = i; /* root array node of 17 */
    hashes[17] = 0x40F00001; /* deep beside key 1 */
    hashes[18] = 0x80F00001;
    hashes[19] = 0x80F00001; /* collides with 18 */
    hashes[20] = 0x80F00001;
    cp__hamt m = build(&ref, 21, hashes);
    cr_assert_eq(shape(m).array_nodes, 1);

    const unsigned order[] = {20, 17, 19, 3, 0, 1, 18, 4};
    for (unsigned k = 0; k < sizeof order / sizeof order[0]; k++) {
        unsigned i = order[k];
        unsigned long allocs = delete_under_failures(&m, &ref, hashes[i], i);
        cr_assert_geq(allocs, 1);
        ref.value[i] = 0;
        verify(m, &ref);
    }
    cr_assert_eq(shape(m).array_nodes, 0, "demoted on the way");
    drop_all(m);
}

/* ------------------------------------------------------------------------ */
/* Random operations against a reference model                               */
/* ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint32_t rnd(void) /* xorshift64*, fixed seed: reproducible */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Du) >> 32);
}

/* Keys 0..n-1 with hashes of four kinds, all absent. */
static void random_hashes(model *ref, unsigned n)
{
    ref->n = n;
    for (unsigned i = 0; i < n; i++) {
        switch (i % 4) {
        case 0: ref->hash[i] = rnd() & 0x7; break;         /* many collisions */
        case 1: ref->hash[i] = rnd() & 0xC000001F; break;  /* deep paths */
        case 2: ref->hash[i] = rnd() & 0x000003FF; break;  /* two levels */
        default: ref->hash[i] = rnd(); break;
        }
    }
}

/* 10,000 random sets and deletes over 600 keys with weak hashes, checked
 * against a reference model, with a snapshot taken halfway. */
static void random_sets_and_deletes(void)
{
    static model ref, snap_ref;
    const unsigned nkeys = 600, ops = 10000;
    random_hashes(&ref, nkeys);
    cp__hamt m = CP__HAMT_EMPTY, snap = CP__HAMT_EMPTY;
    size_t count = 0;
    uintptr_t next_value = 1;
    unsigned same_roots = 0, enoents = 0;

    for (unsigned op = 0; op < ops; op++) {
        unsigned i = rnd() % nkeys;
        uint32_t h = ref.hash[i];
        cp__hamt out;
        if (rnd() % 100 < 55) {
            bool same = ref.value[i] != 0 && rnd() % 10 == 0;
            uintptr_t v = same ? ref.value[i] : next_value++;
            cp__hamt_item *item = mk(h, i, v);
            cr_assert_eq(cp__hamt_set(m, item, &out), 0);
            cp__hamt_item_decref(item);
            if (same) {
                cr_assert_eq(out.root, m.root);
                same_roots++;
            }
            count += ref.value[i] == 0;
            ref.value[i] = v;
            cp__hamt_decref(m);
            m = out;
        } else {
            out = (cp__hamt){NULL, 999};
            int rc = cp__hamt_delete(m, h, KEY(i), &out);
            if (ref.value[i] == 0) {
                cr_assert_eq(rc, CP_ENOENT);
                cr_assert_eq(out.count, 999);
                enoents++;
            } else {
                cr_assert_eq(rc, 0);
                ref.value[i] = 0;
                count--;
                cp__hamt_decref(m);
                m = out;
            }
        }
        cr_assert_eq(get(m, h, i), ref.value[i], "op %u", op);
        cr_assert_eq(m.count, count, "op %u", op);
        if (op % 100 == 0)
            cr_assert_eq(cp__hamt_check(m), 0, "op %u: %d", op, cp__hamt_check(m));
        if (op % 1000 == 999)
            verify(m, &ref);
        if (op == ops / 2) {
            cp__hamt_incref(m);
            snap = m;
            snap_ref = ref;
        }
    }
    verify(m, &ref);
    cr_assert_gt(same_roots, 0);
    cr_assert_gt(enoents, 0);
    cp__hamt_shape s = shape(m);
    cr_assert_gt(s.collision_nodes, 0, "the weak hashes collided");
    cr_assert_gt(s.array_nodes, 0);

    verify(snap, &snap_ref); /* the snapshot is untouched by later ops */
    cp__hamt_decref(m);
    verify(snap, &snap_ref);

    /* delete everything from the snapshot, checking as we go */
    for (unsigned i = 0; i < nkeys; i++) {
        if (snap_ref.value[i] != 0) {
            snap = del(snap, snap_ref.hash[i], i);
            snap_ref.value[i] = 0;
        }
    }
    verify(snap, &snap_ref);
    cr_assert_null(snap.root);
    drop_all(snap);
}

Test(hamt, random_sets_and_deletes_match_a_reference_model)
{
    random_sets_and_deletes();
}

Test(hamt, random_sets_and_deletes_match_the_model_counting_bits_in_plain_c)
{
    cp__hamt_hardware_popcount(false);
    random_sets_and_deletes();
    cp__hamt_hardware_popcount(true);
}

/* ------------------------------------------------------------------------ */
/* Given changes: reuse of nodes nobody else holds                           */
/* ------------------------------------------------------------------------ */

/* Set key i (hash) to value in *m with cp__hamt_set_given; returns the value
 * of the item that left (0: none), whose reference the caller got. */
static uintptr_t put_given(cp__hamt *m, uint32_t hash, unsigned i, uintptr_t value)
{
    cp__hamt_item *item = mk(hash, i, value), *old = VAL(1);
    cr_assert_eq(cp__hamt_set_given(m, item, &old), 0);
    cp__hamt_item_decref(item);
    cr_assert_eq(cp__hamt_check(*m), 0, "check: %d", cp__hamt_check(*m));
    uintptr_t was = old ? (uintptr_t)old->value : 0;
    if (old)
        cr_assert_eq(old->key, KEY(i));
    cp__hamt_item_decref(old);
    return was;
}

/* Delete key i (hash, present) from *m with cp__hamt_delete_given; returns
 * the value of the item that left. */
static uintptr_t del_given(cp__hamt *m, uint32_t hash, unsigned i)
{
    cp__hamt_item *old = NULL;
    cr_assert_eq(cp__hamt_delete_given(m, hash, KEY(i), &old), 0);
    cr_assert_eq(cp__hamt_check(*m), 0, "check: %d", cp__hamt_check(*m));
    cr_assert_not_null(old);
    cr_assert_eq(old->key, KEY(i));
    uintptr_t was = (uintptr_t)old->value;
    cp__hamt_item_decref(old);
    return was;
}

/* 100 keys with well spread hashes: a root array node over small nodes. */
static cp__hamt build_spread(model *ref, uint32_t *hashes)
{
    for (unsigned i = 0; i < 100; i++)
        hashes[i] = i * 0x9E3779B1u;
    return build(ref, 100, hashes);
}

/* A snapshot of m: one more reference, and a copy of its model. */
static cp__hamt snapshot(cp__hamt m, const model *ref, model *snap_ref)
{
    cp__hamt_incref(m);
    *snap_ref = *ref;
    return m;
}

Test(hamt, given_changes_to_an_unshared_map_reuse_its_nodes)
{
    static model ref;
    static uint32_t hashes[100];
    cp__hamt m = build_spread(&ref, hashes);
    cp__hamt_node *root = m.root;

    /* A new value for a present key changes slots in place: same root, no
     * allocation, and the replaced item goes to the caller, who holds the
     * only reference left. */
    cp__hamt_item *item = mk(hashes[50], 50, 777), *old = NULL;
    unsigned long before = cp__alloc_count();
    cr_assert_eq(cp__hamt_set_given(&m, item, &old), 0);
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    cr_assert_eq(m.root, root);
    cr_assert_eq(m.count, 100);
    cr_assert_eq((uintptr_t)old->value, 51);
    cr_assert_eq(atomic_load(&old->refs), 1);
    size_t gone = released;
    cp__hamt_item_decref(old);
    cr_assert_eq(released, gone + 1);
    cp__hamt_item_decref(item);
    ref.value[50] = 777;
    verify(m, &ref);

    /* A delete shrinks the node that held the key in place. */
    before = cp__alloc_count();
    cr_assert_eq(del_given(&m, hashes[7], 7), 8);
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    cr_assert_eq(m.root, root);
    ref.value[7] = 0;
    verify(m, &ref);

    /* An identical value changes nothing, does not take the item, and
     * reports the map's own item for the key, with no reference taken. */
    item = mk(hashes[9], 9, 10);
    old = NULL;
    cr_assert_eq(cp__hamt_set_given(&m, item, &old), CP__HAMT_SAME);
    cr_assert_eq(m.root, root);
    cr_assert_eq(m.count, 99);
    cr_assert_not_null(old);
    cr_assert_neq(old, item);
    cr_assert_eq((uintptr_t)old->key, (uintptr_t)item->key);
    cr_assert_eq((uintptr_t)old->value, 10);
    cr_assert_eq(atomic_load(&old->refs), 1, "no reference taken on the map's item");
    cr_assert_eq(atomic_load(&item->refs), 1, "the map kept its own item");
    cp__hamt_item_decref(item);
    verify(m, &ref);
    drop_all(m);
}

/* An identical value for a key in a collision node: the given set changes
 * nothing, takes nothing, and reports the map's item, borrowed, whether the
 * node is the caller's alone or shared with a snapshot. */
Test(hamt, given_set_of_an_identical_value_in_a_collision_node_reports_the_maps_item)
{
    static model ref, snap_ref;
    const uint32_t hashes[] = {0xABCD, 0xABCD, 0xABCD};
    cp__hamt m = build(&ref, 3, hashes);
    cr_assert_eq(shape(m).collision_nodes, 1);
    for (int shared = 0; shared < 2; shared++) {
        cp__hamt snap = shared ? snapshot(m, &ref, &snap_ref) : CP__HAMT_EMPTY;
        cp__hamt kept = m;
        cp__hamt_item *in_map = cp__hamt_find(m, 0xABCD, KEY(1));
        size_t refs = atomic_load(&in_map->refs);
        cp__hamt_item *item = mk(0xABCD, 1, 2), *old = NULL;
        unsigned long before = cp__alloc_count();
        cr_assert_eq(cp__hamt_set_given(&m, item, &old), CP__HAMT_SAME);
        cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
        cr_assert_eq(m.root, kept.root);
        cr_assert_eq(m.count, 3);
        cr_assert_eq(old, in_map, "the map's own item, reported");
        cr_assert_eq(atomic_load(&in_map->refs), refs, "no reference taken on it");
        cr_assert_eq(atomic_load(&item->refs), 1, "the map did not take the item");
        cp__hamt_item_decref(item);
        verify(m, &ref);
        if (shared) {
            verify(snap, &snap_ref);
            cp__hamt_decref(snap);
        }
    }
    drop_all(m);
}

Test(hamt, given_insert_and_delete_use_the_spare_slot_of_a_bitmap_node)
{
    static model ref;
    static const uint32_t hashes[3] = {0, 1, 2};
    cp__hamt m = build(&ref, 2, hashes); /* a root of two: room for three */
    cp__hamt_node *root = m.root;
    ref.n = 3;
    ref.hash[2] = 2;
    unsigned long before = cp__alloc_count();
    cr_assert_eq(put_given(&m, 2, 2, 3), 0);
    ref.value[2] = 3;
    cr_assert_eq(m.root, root, "inserted in place");
    verify(m, &ref);
    cr_assert_eq(del_given(&m, 0, 0), 1);
    ref.value[0] = 0;
    cr_assert_eq(m.root, root, "removed in place");
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    verify(m, &ref);
    /* Two entries in a room of three: the next insert fills the room, the
     * one after it moves the entries to a bigger node. */
    cr_assert_eq(put_given(&m, 0, 0, 4), 0);
    ref.value[0] = 4;
    cr_assert_eq(m.root, root);
    cr_assert_eq(put_given(&m, 3, 3, 5), 0);
    ref.n = 4;
    ref.hash[3] = 3;
    ref.value[3] = 5;
    cr_assert_neq(m.root, root, "no room left: a new node");
    verify(m, &ref);
    drop_all(m);
}

/* Make keys 0..n-1 (hashes) known to the model, those not yet in the map
 * absent, before given sets put them in. */
static void declare(model *ref, unsigned n, const uint32_t *hashes)
{
    ref->n = n;
    memcpy(ref->hash, hashes, n * sizeof *hashes);
}

/* Keys whose first chunks agree sit one level down, in a node made for
 * them; in a map nobody else holds, a given set makes that node in the
 * slot where the other key's item was, and a given delete puts the item
 * back: the path above stays, and nothing else is allocated. */
Test(hamt, given_changes_below_the_root_keep_the_path_in_place)
{
    static model ref;
    /* Keys 2, 3 and 4 share key 0's first chunk (1), not its second (0);
     * key 4 has key 0's whole hash. */
    static const uint32_t hashes[5] = {1, 2, 1 | 3u << 5, 1 | 4u << 5, 1};
    cp__hamt m = build(&ref, 2, hashes);
    cp__hamt_node *root = m.root;
    declare(&ref, 5, hashes);

    unsigned long before = cp__alloc_count();
    cr_assert_eq(put_given(&m, hashes[2], 2, 30), 0);
    ref.value[2] = 30;
    cr_assert_eq(m.root, root, "the root is changed in place");
    cr_assert_eq(cp__alloc_count() - before, 1, "one node, for keys 0 and 2");
    cr_assert_eq(shape(m).bitmap_nodes, 2);
    cr_assert_eq(shape(m).max_depth, 2);
    verify(m, &ref);

    /* A new value, and a third key in the node's spare slot: in place. */
    before = cp__alloc_count();
    cr_assert_eq(put_given(&m, hashes[2], 2, 31), 30);
    ref.value[2] = 31;
    cr_assert_eq(put_given(&m, hashes[3], 3, 40), 0);
    ref.value[3] = 40;
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    cr_assert_eq(shape(m).bitmap_nodes, 2);
    verify(m, &ref);

    /* Out again: the node shrinks, then gives its last other entry back
     * to the root, which frees it. */
    cr_assert_eq(del_given(&m, hashes[3], 3), 40);
    ref.value[3] = 0;
    cr_assert_eq(shape(m).bitmap_nodes, 2);
    cr_assert_eq(del_given(&m, hashes[2], 2), 31);
    ref.value[2] = 0;
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    cr_assert_eq(m.root, root);
    cr_assert_eq(shape(m).bitmap_nodes, 1);
    cr_assert_eq(shape(m).max_depth, 1);
    verify(m, &ref);

    /* A key with key 0's whole hash: a collision node in its slot. */
    cr_assert_eq(put_given(&m, hashes[4], 4, 50), 0);
    ref.value[4] = 50;
    cr_assert_eq(m.root, root);
    cr_assert_eq(shape(m).collision_nodes, 1);
    verify(m, &ref);
    cr_assert_eq(del_given(&m, hashes[4], 4), 50);
    ref.value[4] = 0;
    cr_assert_eq(shape(m).collision_nodes, 0);
    verify(m, &ref);
    drop_all(m);
}

/* A delete whose node would leave its parent holding one item, the parent
 * not being the root (a chain of one-entry nodes, made for two keys whose
 * first two chunks agree), collapses the whole chain. */
Test(hamt, given_delete_collapses_a_chain_of_nodes_into_the_root)
{
    static model ref;
    static const uint32_t hashes[3] = {1, 2, 1 | 5u << 10};
    cp__hamt m = build(&ref, 2, hashes);
    declare(&ref, 3, hashes);
    cr_assert_eq(put_given(&m, hashes[2], 2, 30), 0);
    ref.value[2] = 30;
    cr_assert_eq(shape(m).max_depth, 3, "root, one-entry node, pair");
    verify(m, &ref);
    cr_assert_eq(del_given(&m, hashes[2], 2), 30);
    ref.value[2] = 0;
    cr_assert_eq(shape(m).max_depth, 1);
    cr_assert_eq(shape(m).bitmap_nodes, 1);
    verify(m, &ref);
    drop_all(m);
}

/* The node a given set makes beside another key's item is the only
 * allocation; when it fails, nothing has changed. */
Test(hamt, given_set_beside_another_key_fails_cleanly)
{
    static model ref;
    static const uint32_t hashes[3] = {1, 2, 1 | 3u << 5};
    cp__hamt m = build(&ref, 2, hashes);
    cp__hamt kept = m;
    cp__hamt_item *item = mk(hashes[2], 2, 30), *old = VAL(1);
    cp__alloc_fail_nth(1);
    cr_assert_eq(cp__hamt_set_given(&m, item, &old), CP_ENOMEM);
    cp__alloc_fail_nth(0);
    cr_assert_eq(m.root, kept.root);
    cr_assert_eq(m.count, kept.count);
    cr_assert_eq(old, VAL(1), "old untouched");
    cr_assert_eq(atomic_load(&item->refs), 1, "no reference kept on item");
    verify(m, &ref);
    cr_assert_eq(cp__hamt_set_given(&m, item, &old), 0);
    cr_assert_null(old);
    cp__hamt_item_decref(item);
    declare(&ref, 3, hashes);
    ref.value[2] = 30;
    verify(m, &ref);
    drop_all(m);
}

/* An array node nobody else holds takes a key in an empty slot, and loses
 * one while it keeps ARRAY_MIN (16), in place; below that it becomes a
 * bitmap node. */
Test(hamt, given_changes_to_an_array_root_are_in_place_down_to_sixteen)
{
    static model ref;
    static uint32_t hashes[19];
    for (unsigned i = 0; i < 19; i++)
        hashes[i] = i;
    cp__hamt m = build(&ref, 17, hashes);
    cp__hamt_node *root = m.root;
    cr_assert_eq(shape(m).array_nodes, 1);
    declare(&ref, 19, hashes);
    unsigned long before = cp__alloc_count();
    cr_assert_eq(put_given(&m, 17, 17, 18), 0);
    cr_assert_eq(put_given(&m, 18, 18, 19), 0);
    ref.value[17] = 18;
    ref.value[18] = 19;
    verify(m, &ref);
    for (unsigned i = 18; i >= 16; i--) {
        cr_assert_eq(del_given(&m, i, i), i + 1);
        ref.value[i] = 0;
        verify(m, &ref);
    }
    cr_assert_eq(cp__alloc_count(), before, "nothing allocated");
    cr_assert_eq(m.root, root, "16 entries: still the same array node");
    cr_assert_eq(del_given(&m, 15, 15), 16);
    ref.value[15] = 0;
    cr_assert_neq(m.root, root, "15: a bitmap node");
    cr_assert_eq(shape(m).array_nodes, 0);
    verify(m, &ref);
    drop_all(m);
}

Test(hamt, given_changes_copy_what_a_snapshot_shares)
{
    static model ref, snap_ref;
    static uint32_t hashes[100];
    cp__hamt m = build_spread(&ref, hashes);
    cp__hamt snap = snapshot(m, &ref, &snap_ref);

    cr_assert_eq(put_given(&m, hashes[3], 3, 300), 4);
    cr_assert_neq(m.root, snap.root, "a shared root is copied");
    ref.value[3] = 300;
    /* The new root is unshared now, its other children still shared. */
    cr_assert_eq(put_given(&m, hashes[60], 60, 600), 61);
    ref.value[60] = 600;
    cr_assert_eq(del_given(&m, hashes[61], 61), 62);
    ref.value[61] = 0;
    put_given(&m, 0xABCDEF01u, 100, 1000);
    ref.n = 101;
    ref.hash[100] = 0xABCDEF01u;
    ref.value[100] = 1000;
    verify(m, &ref);
    verify(snap, &snap_ref);
    cp__hamt_decref(m);
    verify(snap, &snap_ref);
    drop_all(snap);
}

Test(hamt, given_set_fails_cleanly_at_every_allocation_in_a_partly_shared_map)
{
    static model ref, snap_ref;
    static uint32_t hashes[40];
    for (unsigned i = 0; i < 16; i++)
        hashes[i] = i;
    for (unsigned i = 16; i < 40; i++)
        hashes[i] = 1 | (i << 5) | (i << 10) | (i << 25);
    cp__hamt m = build(&ref, 40, hashes);
    cp__hamt snap = snapshot(m, &ref, &snap_ref);
    cr_assert_eq(put_given(&m, hashes[5], 5, 500), 6); /* root now unshared */
    ref.value[5] = 500;

    /* Into the shared subtree under chunk 1, beside key 20 down to its
     * last chunk: copies, and a chain of new nodes. */
    const uint32_t hash = 1 | (20u << 5) | (20u << 10) | (7u << 25);
    cp__hamt_item *item = mk(hash, 40, 4000), *old;
    unsigned long n;
    for (n = 1; n < 100; n++) {
        cp__hamt kept = m;
        old = VAL(1);
        unsigned long before = cp__alloc_count();
        cp__alloc_fail_nth(n);
        int rc = cp__hamt_set_given(&m, item, &old);
        cp__alloc_fail_nth(0);
        if (rc == 0) {
            cr_assert_eq(cp__alloc_count() - before, n - 1);
            break;
        }
        cr_assert_eq(rc, CP_ENOMEM, "allocation %lu", n);
        cr_assert_eq(m.root, kept.root);
        cr_assert_eq(m.count, kept.count);
        cr_assert_eq(old, VAL(1), "old untouched");
        cr_assert_eq(atomic_load(&item->refs), 1, "no reference kept on item");
        verify(m, &ref);
        verify(snap, &snap_ref);
    }
    cr_assert_geq(n - 1, 3, "the copies and the chain allocate");
    cr_assert_null(old);
    cp__hamt_item_decref(item);
    ref.n = 41;
    ref.hash[40] = hash;
    ref.value[40] = 4000;
    verify(m, &ref);
    verify(snap, &snap_ref);
    cp__hamt_decref(snap);
    drop_all(m);
}

Test(hamt, random_given_changes_match_the_model_and_spare_snapshots)
{
    static model ref, snap_ref[2];
    const unsigned nkeys = 600, ops = 10000;
    random_hashes(&ref, nkeys);
    cp__hamt m = CP__HAMT_EMPTY;
    cp__hamt snap[2] = {CP__HAMT_EMPTY, CP__HAMT_EMPTY};
    size_t count = 0;
    uintptr_t next_value = 1;

    for (unsigned op = 0; op < ops; op++) {
        unsigned i = rnd() % nkeys;
        uint32_t h = ref.hash[i];
        if (rnd() % 100 < 55) {
            uintptr_t v = next_value++;
            cr_assert_eq(put_given(&m, h, i, v), ref.value[i], "op %u", op);
            count += ref.value[i] == 0;
            ref.value[i] = v;
        } else if (ref.value[i] != 0) {
            cr_assert_eq(del_given(&m, h, i), ref.value[i], "op %u", op);
            ref.value[i] = 0;
            count--;
        } else {
            cp__hamt kept = m;
            cp__hamt_item *old = VAL(1);
            cr_assert_eq(cp__hamt_delete_given(&m, h, KEY(i), &old), CP_ENOENT);
            cr_assert_eq(m.root, kept.root);
            cr_assert_eq(old, VAL(1));
        }
        cr_assert_eq(get(m, h, i), ref.value[i], "op %u", op);
        cr_assert_eq(m.count, count, "op %u", op);
        if (op % 500 == 0) {
            /* Take a snapshot in turn with the older one's release, which
             * is checked first: later reuse must not have touched it. */
            unsigned k = (op / 500) % 2;
            verify(snap[k], &snap_ref[k]);
            cp__hamt_decref(snap[k]);
            snap[k] = snapshot(m, &ref, &snap_ref[k]);
        }
    }
    verify(m, &ref);
    cr_assert_gt(shape(m).collision_nodes, 0, "the weak hashes collided");
    for (unsigned k = 0; k < 2; k++) {
        verify(snap[k], &snap_ref[k]);
        cp__hamt_decref(snap[k]);
    }
    drop_all(m);
}
