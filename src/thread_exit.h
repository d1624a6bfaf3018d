/* thread_exit.h - run a function when the calling thread ends.
 *
 * The library's per-thread state (a thread's base context, its small-object
 * lists, its job cache) is let go of through glibc's thread-exit functions,
 * the mechanism behind C++ thread_local destructors, rather than pthread
 * keys:
 * - They run for a thread that calls exit() too (main, when it returns),
 *   before the atexit handlers and the destructors of static objects, so a
 *   free_value run then finds the program's objects still alive. Key
 *   destructors never run for that thread.
 * - One registered while they run (a free_value that sets a variable gives
 *   the ending thread a new base context) runs in turn, where key
 *   destructors stop after PTHREAD_DESTRUCTOR_ITERATIONS rounds.
 * - They need no process-wide key, which a process can run out of, and no
 *   lock a fork() could inherit taken.
 * - The library stays loaded (dlclose does not unmap it) while a thread
 *   has one pending.
 * A registration allocates (glibc's node): it fails only without memory.
 */
#ifndef CTXPOOL_THREAD_EXIT_H
#define CTXPOOL_THREAD_EXIT_H

#include <stdbool.h>

/* glibc (2.18 and later; configure checks), declared by no header. */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso);
/* This library's (or program's) own handle, from the C runtime. */
extern void *__dso_handle __attribute__((visibility("hidden")));

/* Run fn(obj) when the calling thread ends; false when there was no memory
 * to record it (nothing is recorded then). */
static inline bool cp__at_thread_exit(void (*fn)(void *), void *obj)
{
    return __cxa_thread_atexit_impl(fn, obj, &__dso_handle) == 0;
}

#endif /* CTXPOOL_THREAD_EXIT_H */
