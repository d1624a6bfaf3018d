#!/usr/bin/env python3
"""gen_corpus.py - write the seed corpus of fuzz_context.c into tests/fuzz/corpus.

Each seed is a tiny program in the fuzzer's input format (see the top of
fuzz_context.c); the opcodes below must follow its enums. Run it from
anywhere after changing the format: python3 tests/fuzz/gen_corpus.py
"""
import os

# Context mode (byte 0 even).
(VAR_NEW, VAR_FREE, SET, SET2, RESET, DELETE, GET, COPY_CURRENT, COPY, CTX_NEW,
 CTX_FREE, ITER_OPEN, ITER_STEP, ITER_FULL, COMPARE, RUN, END, LEN, TOKEN_INFO,
 TOKEN_FREE, FAIL, NULLS, REMOTE) = range(23)
# SET flags: 1 = set the value it has, 2 = with a token; bits 2-4 pick a
# borrowed value. VAR_NEW flags: 1 = with a default, 2 = values are freed.
# REMOTE flags: 1 = cp_thread_create, 2 = the thread sets a variable too.
TOK = 2
# HAMT mode (byte 0 odd, bits 1-3 = hash pattern).
(H_SET, H_SET2, H_DEL, H_SNAP, H_SWITCH, H_DROP, H_REINSERT, H_BULK_SET,
 H_BULK_DEL, H_FAIL, H_GIVEN) = range(11)


def ctx(*ops):
    return bytes([0] + [b for op in ops for b in op])


def ham(pattern, *ops):
    return bytes([1 | pattern << 1] + [b for op in ops for b in op])


vars4 = [(VAR_NEW, 0, 0), (VAR_NEW, 1, 1 | 4), (VAR_NEW, 2, 2), (VAR_NEW, 3, 3)]

seeds = {
    "basic": ctx(*vars4,
                 (SET, 0, TOK | 4, 0), (SET, 1, TOK, 1), (SET, 2, TOK, 2),
                 (SET, 3, 0, 0), (GET,), (TOKEN_INFO, 0), (SET, 2, TOK, 3),
                 (TOKEN_INFO, 3), (RESET, 2, 3), (RESET, 2, 2), (DELETE, 0),
                 (SET, 3, 1, 0), (LEN, 0), (TOKEN_FREE, 1), (VAR_FREE, 1)),
    "token_errors": ctx(*vars4,
                        (SET, 0, TOK, 0), (RESET, 1, 0),
                        (COPY_CURRENT, 1), (RUN, 1), (RESET, 0, 0), (END,),
                        (RESET, 0, 0), (RESET, 0, 0), (RESET, 1, 0),
                        (SET, 2, TOK, 5), (SET, 2, TOK | 1, 6), (RESET, 2, 6),
                        (RESET, 2, 5), (TOKEN_INFO, 5)),
    "copy_iter_compare": ctx(*vars4,
                             (SET, 0, 0, 0), (SET, 2, 0, 0), (SET, 3, 0, 0),
                             (COPY_CURRENT, 1), (COMPARE, 0, 1), (SET, 2, 0, 0),
                             (COMPARE, 0, 1), (ITER_OPEN, 0, 1), (SET, 1, 0, 0),
                             (ITER_STEP, 0, 1), (COPY, 1, 2), (ITER_FULL, 2),
                             (ITER_FULL, 0), (ITER_STEP, 0, 7), (ITER_STEP, 0, 1),
                             (CTX_NEW, 3), (COMPARE, 3, 2), (ITER_FULL, 3)),
    "nested_runs": ctx(*vars4,
                       (SET, 0, TOK, 0), (CTX_NEW, 1), (RUN, 1), (SET, 0, TOK, 1),
                       (RUN, 0), (RUN, 1), (COPY_CURRENT, 2), (RUN, 2),
                       (SET, 2, 0, 0), (RESET, 0, 1), (END,), (RESET, 0, 1),
                       (GET,), (END,), (COMPARE, 1, 2), (RESET, 0, 0), (LEN, 1)),
    "alloc_failure": ctx((FAIL, 0), (VAR_NEW, 0, 3), *vars4,
                         (FAIL, 0), (SET, 0, TOK, 0), (FAIL, 1), (SET, 2, TOK, 1),
                         (FAIL, 2), (SET, 3, 0, 0), (SET, 3, TOK, 2),
                         (FAIL, 0), (RESET, 3, 2), (FAIL, 0), (COPY_CURRENT, 1),
                         (FAIL, 0), (CTX_NEW, 2), (FAIL, 0), (ITER_OPEN, 0, 0),
                         (FAIL, 0), (COPY, 0, 3), (FAIL, 0), (ITER_FULL, 0),
                         (FAIL, 1), (DELETE, 0)),
    "var_free_held": ctx(*vars4,
                         (SET, 2, TOK, 0), (SET, 3, 0, 0), (COPY_CURRENT, 1),
                         (VAR_FREE, 2), (VAR_FREE, 3), (ITER_FULL, 1),
                         (ITER_OPEN, 1, 1), (CTX_FREE, 1), (ITER_STEP, 1, 3),
                         (VAR_NEW, 2, 2), (SET, 2, 0, 0), (TOKEN_INFO, 0),
                         (TOKEN_FREE, 0), (CTX_FREE, 0), (GET,)),
    "remote": ctx(*vars4,
                  (SET, 0, 0, 0), (SET, 3, 0, 0), (COPY_CURRENT, 1),
                  (REMOTE, 1, 0), (REMOTE, 0, 2), (RUN, 1), (REMOTE, 1, 1),
                  (SET, 2, 0, 0), (REMOTE, 0, 3), (FAIL, 0), (REMOTE, 0, 1),
                  (FAIL, 1), (REMOTE, 1, 1), (END,)),
    "nulls": ctx(*vars4, (SET, 0, TOK, 0), (NULLS,)),
    "hamt_wide": ham(0, (H_BULK_SET, 0, 0, 0, 39), (H_SNAP, 0),
                     (H_BULK_DEL, 0, 25), (H_SNAP, 1), (H_BULK_SET, 5, 3, 1, 20),
                     (H_SWITCH, 0), (H_DEL, 3), (H_REINSERT, 1, 30)),
    "hamt_deep": ham(1, (H_SET, 0, 0, 0), (H_SET, 1, 64, 0), (H_SET, 2, 128, 0),
                     (H_SET, 3, 192, 0), (H_SNAP, 0), (H_DEL, 1), (H_DEL, 2),
                     (H_SWITCH, 0), (H_DEL, 3), (H_FAIL, 2), (H_SET, 4, 65, 1)),
    "hamt_collide": ham(2, (H_BULK_SET, 0, 0, 0, 20), (H_SNAP, 2),
                        (H_SET, 0, 0, 1), (H_SET, 8, 0, 1), (H_DEL, 16),
                        (H_BULK_DEL, 0, 12), (H_FAIL, 1), (H_SET, 30, 0, 2),
                        (H_REINSERT, 2, 16), (H_DROP, 2)),
    "hamt_top_chunks": ham(3, (H_BULK_SET, 0, 0, 0, 30), (H_SNAP, 0),
                           (H_BULK_DEL, 3, 20), (H_SET, 40, 7, 0x30),
                           (H_SET, 41, 7, 0xf0), (H_FAIL, 3), (H_DEL, 40)),
    "hamt_mixed": ham(7, (H_BULK_SET, 0, 0, 0x10, 33), (H_SNAP, 3),
                      (H_BULK_SET, 33, 0, 0x50, 20), (H_SNAP, 4),
                      (H_BULK_DEL, 10, 35), (H_SWITCH, 3), (H_FAIL, 4),
                      (H_DEL, 1), (H_DEL, 0xf5)),
    # The given functions (reuse in place) on a map partly shared with
    # snapshots, with failures and reinserts of a snapshot's items.
    "hamt_given": ham(5, (H_GIVEN,), (H_BULK_SET, 0, 0, 0x10, 30), (H_SNAP, 1),
                      (H_SET, 3, 7, 1), (H_BULK_DEL, 5, 8), (H_FAIL, 2),
                      (H_SET, 40, 9, 2), (H_REINSERT, 1, 6), (H_DROP, 1),
                      (H_BULK_SET, 10, 3, 0x30, 12), (H_FAIL, 1), (H_DEL, 12),
                      (H_BULK_DEL, 0, 40)),
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds written to {out}")
