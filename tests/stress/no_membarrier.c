/* no_membarrier.c - a kernel without membarrier, for a stress program.
 *
 * Linked into a stress program (pool_stress_fenced is pool_stress with
 * it), this defines syscall() ahead of the C library's and refuses
 * SYS_membarrier with ENOSYS, as a kernel built without it or a seccomp
 * filter would. The library then cannot register for asymmetric fences
 * when it is loaded, and every handshake that uses them (fence.h: the
 * pool's notify and park, a context's first reader) falls back to full
 * fences on both sides; the stress program checks that the pool keeps
 * every promise that way too. At exit it fails if the library did not
 * take the fallback, so the program cannot pass by testing the other one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fence.h"

long syscall(long number, ...); /* as <unistd.h> declares it */

long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_membarrier) {
        errno = ENOSYS;
        return -1;
    }
    /* The pool's futex calls come here from every thread: the first ones
     * may each look the C library's up; relaxed: dlsym's result is the
     * same for all, and its own locks publish what it returns. */
    typedef long (*syscall_fn)(long, ...);
    static _Atomic(syscall_fn) found;
    syscall_fn real = atomic_load_explicit(&found, memory_order_relaxed);
    if (!real) {
        real = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
        atomic_store_explicit(&found, real, memory_order_relaxed);
    }
    if (!real) {
        errno = ENOSYS;
        return -1;
    }
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

static __attribute__((destructor)) void check_fallback_taken(void)
{
    if (cp__fence_asymmetric) {
        fprintf(stderr, "no_membarrier: the library registered for membarrier "
                        "although every call was refused\n");
        _exit(1);
    }
}
