/* get_plain.c - part of test_context: calls of cp_var_get and cp_var_get_or
 * compiled with CP_NO_INLINE_GET, as a binding generator or a program with a
 * member of either name would include ctxpool.h: no macros, the library's
 * functions themselves. */
#define CP_NO_INLINE_GET
#include "ctxpool.h"

#include "get_plain.h"

#if defined(cp_var_get) || defined(cp_var_get_or)
#error "CP_NO_INLINE_GET must leave cp_var_get and cp_var_get_or functions"
#endif

int plain_get(const cp_var *var, void **value)
{
    return cp_var_get(var, value);
}

void *plain_get_or(const cp_var *var, void *fallback)
{
    return cp_var_get_or(var, fallback);
}
