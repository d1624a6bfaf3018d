/* version.c - the version of the library as built, for programs to compare
 * with the header they were compiled against.
 */
#include "ctxpool.h"

unsigned cp_version(void)
{
    return CP_VERSION_NUMBER;
}
