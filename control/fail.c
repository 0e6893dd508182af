/* fail.c — see fail.h. */
#include "fail.h"

#include <stdarg.h>
#include <stdio.h>

#include <openssl/err.h>

int ward_ctl_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return rc;
}
