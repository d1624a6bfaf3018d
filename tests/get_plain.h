/* get_plain.h - cp_var_get and cp_var_get_or from a file compiled with
 * CP_NO_INLINE_GET (get_plain.c). */
#ifndef CTXPOOL_TESTS_GET_PLAIN_H
#define CTXPOOL_TESTS_GET_PLAIN_H

#include "ctxpool.h"

int plain_get(const cp_var *var, void **value);
void *plain_get_or(const cp_var *var, void *fallback);

#endif
