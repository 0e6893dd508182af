/* ward/err.h — the one error table. Functions return 0 on success and a negative WARD_E* (or a
 * negative errno, which libuv's UV_E* values also are on Linux) on failure. */
#ifndef WARD_ERR_H
#define WARD_ERR_H

#include <errno.h>

/* X(name, value, message). Values sit far below -errno so the two spaces never collide. */
#define WARD_ERRNO_MAP(X)                                                                          \
    X(WARD_EINVAL, -5001, "invalid argument")                                                      \
    X(WARD_ENOMEM, -5002, "out of memory")                                                         \
    X(WARD_EPARSE, -5003, "malformed input")                                                       \
    X(WARD_ESPIFFE, -5004, "invalid SPIFFE id")                                                    \
    X(WARD_ECERT, -5005, "invalid certificate")                                                    \
    X(WARD_EKEY, -5006, "invalid private key")                                                     \
    X(WARD_EKEYMISMATCH, -5007, "private key does not match certificate")                          \
    X(WARD_EBUNDLE, -5008, "invalid trust bundle")                                                 \
    X(WARD_ETLS, -5009, "TLS failure")                                                             \
    X(WARD_EIO, -5010, "I/O failure")                                                              \
    X(WARD_ERANGE, -5011, "value out of range")                                                    \
    X(WARD_ETOOLONG, -5012, "input too long")

enum {
#define WARD_ERR_ENUM(name, value, msg) name = value,
    WARD_ERRNO_MAP(WARD_ERR_ENUM)
#undef WARD_ERR_ENUM
};

/* Returns a static message for a ward error or a negative errno; never NULL. */
const char *ward_strerror(int err);

#endif
