/* error.c - names for the error codes.
 *
 * The codes and their texts live in one table, CP_ERRNO_MAP in ctxpool.h, so a
 * new code cannot be added without its text.
 */
#include "ctxpool.h"

const char *cp_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define CP_ERRNO_TEXT(name, value, text) \
    case CP_##name:                      \
        return text;
        CP_ERRNO_MAP(CP_ERRNO_TEXT)
#undef CP_ERRNO_TEXT
    default:
        return "unknown error";
    }
}
