/* test_error.c - cp_strerror and the error codes, and cp_version.
 *
 * The codes and their texts come from one table, CP_ERRNO_MAP in ctxpool.h;
 * these tests walk that table, so a code added there is checked here without
 * touching this file.
 */
#include "config.h" /* PACKAGE_VERSION: configure's */

#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "ctxpool.h"

struct code {
    const char *name;
    int value;
    const char *text;
};

static const struct code codes[] = {
#define CP_TEST_CODE(name, value, text) {"CP_" #name, CP_##name, text},
    CP_ERRNO_MAP(CP_TEST_CODE)
#undef CP_TEST_CODE
};

#define NCODES (sizeof codes / sizeof codes[0])

Test(error, every_code_is_negative)
{
    for (size_t i = 0; i < NCODES; i++)
        cr_assert_lt(codes[i].value, 0, "%s is %d", codes[i].name, codes[i].value);
}

Test(error, codes_are_distinct)
{
    for (size_t i = 0; i < NCODES; i++)
        for (size_t j = i + 1; j < NCODES; j++)
            cr_assert_neq(codes[i].value, codes[j].value, "%s and %s are both %d",
                          codes[i].name, codes[j].name, codes[i].value);
}

Test(error, strerror_gives_each_code_its_table_text)
{
    for (size_t i = 0; i < NCODES; i++) {
        const char *s = cp_strerror(codes[i].value);
        cr_assert_not_null(s, "%s", codes[i].name);
        cr_assert_str_eq(s, codes[i].text, "%s", codes[i].name);
    }
}

Test(error, strerror_names_every_code_distinctly)
{
    for (size_t i = 0; i < NCODES; i++) {
        const char *s = cp_strerror(codes[i].value);
        cr_assert_str_neq(s, "", "%s has an empty text", codes[i].name);
        cr_assert_str_neq(s, "success", "%s", codes[i].name);
        cr_assert_str_neq(s, "unknown error", "%s", codes[i].name);
        for (size_t j = i + 1; j < NCODES; j++)
            cr_assert_str_neq(s, cp_strerror(codes[j].value), "%s and %s read alike",
                              codes[i].name, codes[j].name);
    }
}

Test(error, strerror_of_zero_is_success)
{
    cr_assert_str_eq(cp_strerror(0), "success");
}

Test(error, strerror_of_an_unknown_code_is_unknown_error)
{
    int lowest = 0;
    for (size_t i = 0; i < NCODES; i++)
        if (codes[i].value < lowest)
            lowest = codes[i].value;
    const int unknown[] = {1, 42, lowest - 1, -1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        cr_assert_str_eq(cp_strerror(unknown[i]), "unknown error", "code %d",
                         unknown[i]);
}

Test(error, table_covers_the_documented_codes)
{
    /* The codes api.md lists, by name: a rename or removal breaks the build
     * here, and a missing table row fails this count. */
    const int documented[] = {CP_ENOMEM,     CP_EINVAL,       CP_ENOENT,
                              CP_EBUSY,      CP_ERECURSIVE,   CP_ETOKEN_USED,
                              CP_ETOKEN_VAR, CP_ETOKEN_CONTEXT, CP_ESHUTDOWN,
                              CP_ECANCELED,  CP_ETIMEDOUT,    CP_EDEADLK};
    cr_assert_geq(NCODES, sizeof documented / sizeof documented[0]);
    for (size_t i = 0; i < sizeof documented / sizeof documented[0]; i++)
        cr_assert_str_neq(cp_strerror(documented[i]), "unknown error", "code %d",
                          documented[i]);
}

/* The library's version, the header's and configure's agree. */
Test(version, the_library_is_the_version_its_header_and_configure_say)
{
    unsigned v = cp_version();
    cr_assert_eq(v, CP_VERSION_NUMBER);
    char text[32];
    snprintf(text, sizeof text, "%u.%u.%u", v / 10000, v / 100 % 100, v % 100);
    cr_assert_str_eq(text, PACKAGE_VERSION);
}
