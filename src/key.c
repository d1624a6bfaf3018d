/* key.c - pthread keys made on first use, and made again after a failure
 * (see key.h). */
#include "config.h"

#include "key.h"

_Static_assert(sizeof(pthread_key_t) <= sizeof(unsigned), "a key fits in k->made");

/* Make k's key unless another thread has: true when it exists. */
bool cp__key_make(cp__key *k)
{
    pthread_key_t key;
    if (pthread_key_create(&key, k->destructor) != 0)
        return false;
    unsigned none = 0;
    /* release: publishes our key's creation to cp__key_ready's acquire;
     * acquire on failure: the key another thread published is as good.
     * (Keys number fewer than PTHREAD_KEYS_MAX: key + 1 is never 0.) */
    if (!atomic_compare_exchange_strong_explicit(&k->made, &none, (unsigned)key + 1,
                                                 memory_order_acq_rel, memory_order_acquire))
        pthread_key_delete(key); /* theirs came first */
    return true;
}
