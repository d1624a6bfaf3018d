/* key.h - pthread keys made on first use, and made again after a failure.
 *
 * Each thread-exit destructor of the library (a thread's base context, its
 * small-object lists, its job cache) hangs off a pthread key that the
 * process makes once, at the first use. pthread_once would make a failure
 * permanent: a process that runs out of keys for a moment before that use
 * would lose the destructor in every thread for good, and with the base
 * context's, every set outside a run. A lazy key is tried again at its next
 * use instead. It takes no lock (a fork() could inherit one taken): threads
 * that race to make it each make one, the first to publish wins, and the
 * others delete theirs.
 */
#ifndef CTXPOOL_KEY_H
#define CTXPOOL_KEY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct cp__key {
    _Atomic unsigned made; /* the key plus one, once made; 0 before */
    void (*destructor)(void *);
} cp__key;

/* A static cp__key whose key runs destructor at thread exit. */
#define CP__KEY_INIT(destructor) {0, (destructor)}

bool cp__key_make(cp__key *k);

/* Whether k's key exists: made now if it was not yet; false when it cannot
 * be made now (the process is out of keys), which the next call tries
 * again. Inline: every use but the first is one load. */
static inline bool cp__key_ready(cp__key *k)
{
    /* acquire: pairs with the release in cp__key_make, which published a
     * key made (pthread_key_create's effects) before it. */
    return atomic_load_explicit(&k->made, memory_order_acquire) != 0 || cp__key_make(k);
}

/* k's key; only after cp__key_ready(k) said it exists (so relaxed). */
static inline pthread_key_t cp__key_of(cp__key *k)
{
    return (pthread_key_t)(atomic_load_explicit(&k->made, memory_order_relaxed) - 1);
}

#endif /* CTXPOOL_KEY_H */
