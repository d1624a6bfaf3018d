/* check.h - assertions for the plain stress programs (no Criterion, which
 * cannot start under ThreadSanitizer).
 *
 * CHECK(cond, fmt, ...) prints "file:line: check failed: cond: message" to
 * stderr and exits 1 when cond is false; it is never compiled out.
 * stress_ops() is how every stress program picks its size: argv[1] if given,
 * else the default times the CP_STRESS_SCALE environment variable (a
 * positive number; 0.1 runs a tenth of the work), else the default.
 */
#ifndef CTXPOOL_CHECK_H
#define CTXPOOL_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__,         \
                    __LINE__, #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* UNDER_TSAN: built with ThreadSanitizer, which runs a program many times
 * slower; stress programs divide their default size by a TSAN_DIVISOR of
 * their own then. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif

static inline unsigned long long stress_ops(int argc, char **argv,
                                            unsigned long long fallback)
{
    char *end;
    if (argc > 1) {
        unsigned long long n = strtoull(argv[1], &end, 10);
        CHECK(*argv[1] != '\0' && *end == '\0' && n > 0,
              "usage: %s [operations > 0], not \"%s\"", argv[0], argv[1]);
        return n;
    }
    const char *scale = getenv("CP_STRESS_SCALE");
    if (scale != NULL && *scale != '\0') {
        double s = strtod(scale, &end);
        CHECK(*end == '\0' && s > 0, "bad CP_STRESS_SCALE \"%s\"", scale);
        double n = (double)fallback * s;
        return n < 1 ? 1 : (unsigned long long)n;
    }
    return fallback;
}

#endif /* CTXPOOL_CHECK_H */
