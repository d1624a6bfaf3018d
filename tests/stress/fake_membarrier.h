/* fake_membarrier.h - a syscall() of the program's own, ahead of the C
 * library's, through which the library's membarrier calls (fence.c) pass.
 * The program defines membarrier_fake(cmd), which answers each of them: a
 * negative errno fails the call, 0 lets it through to the real system
 * call. Every other call (the pool's futex calls too) goes straight
 * through. Include it once, in a program linked with the library's
 * convenience archive (so that the library's calls bind to this one).
 */
#ifndef CTXPOOL_FAKE_MEMBARRIER_H
#define CTXPOOL_FAKE_MEMBARRIER_H

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>

#include "check.h"

static int membarrier_fake(long cmd);

long syscall(long number, ...); /* as <unistd.h> declares it */

long syscall(long number, ...)
{
    /* Six arguments, as many as the kernel takes. */
    va_list ap;
    va_start(ap, number);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    /* Looked up at the first call, the library's registration when it is
     * loaded: before any thread is made, so never by two at once. */
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    CHECK(real != NULL, "no syscall() after ours: %s", dlerror());
    if (number == SYS_membarrier) {
        int err = membarrier_fake(a);
        if (err != 0) {
            errno = -err;
            return -1;
        }
    }
    return real(number, a, b, c, d, e, f);
}

#endif /* CTXPOOL_FAKE_MEMBARRIER_H */
