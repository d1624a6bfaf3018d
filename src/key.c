/* key.c - pthread keys made on first use, and made again after a failure
 * (see key.h). */
#include "config.h"

#include "key.h"

/* One lock for every key: a key is made once a process, at most a few
 * times where making fails, so the lock is never contended for long. */
static pthread_mutex_t make_lock = PTHREAD_MUTEX_INITIALIZER;

/* Make k's key unless another thread has: true when it exists. */
bool cp__key_make(cp__key *k)
{
    pthread_mutex_lock(&make_lock);
    /* relaxed: the lock orders this with every other maker. */
    bool made = atomic_load_explicit(&k->made, memory_order_relaxed);
    if (!made && pthread_key_create(&k->key, k->destructor) == 0) {
        /* release: k->key, written above, is read by cp__key_ready's
         * acquire without the lock. */
        atomic_store_explicit(&k->made, true, memory_order_release);
        made = true;
    }
    pthread_mutex_unlock(&make_lock);
    return made;
}
