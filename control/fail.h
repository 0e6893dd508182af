/* fail.h — the control core's one way to fail: format a sentence for the operator into err,
 * clear BoringSSL's error queue (so a later call never reports a stale error), return rc. */
#ifndef WARD_CONTROL_FAIL_H
#define WARD_CONTROL_FAIL_H

#include <stddef.h>

int ward_ctl_fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
