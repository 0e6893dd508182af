/* err.c — messages for the WARD_E* table and negative errno values. */
#include "ward/err.h"

#include <string.h>

const char *ward_strerror(int err)
{
    switch (err) {
#define WARD_ERR_CASE(name, value, msg)                                                            \
    case name:                                                                                     \
        return msg;
        WARD_ERRNO_MAP(WARD_ERR_CASE)
#undef WARD_ERR_CASE
    case 0:
        return "success";
    default:
        break;
    }
    if (err < 0 && err > -4096) return strerror(-err);
    return "unknown error";
}
