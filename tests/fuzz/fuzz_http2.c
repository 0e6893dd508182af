/* fuzz_http2.c — the inbound HTTP/2 codec (proxy/http2.c) end to end, through the in-process
 * proxy of proxy_harness.h: a plaintext caller with prior knowledge on a PERMISSIVE inbound whose
 * policy allows paths under /public/ and denies /admin, and an h2c app (nghttp2) behind it. The run
 * checks that no denied request, no forged x-forwarded-client-cert reached the app, that it never
 * saw more streams than the proxy allowed, and that the connection was torn down with nothing left
 * behind (ASan/UBSan/LSan catch the rest).
 *
 * Input: a control byte (proxy_harness.h, ward_ph_fuzz_input: writes, cuts, app mode), then the
 * caller's frames: the connection preface ("PRI * HTTP/2.0...") is put in front of them. */
#include "fuzz.h"
#include "proxy_harness.h"

#ifndef WARD_FUZZ_CERT_DIR
#error "WARD_FUZZ_CERT_DIR (certificates minted by tests/lib/certs.py) must be defined"
#endif

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    return ward_ph_fuzz_one(WARD_FUZZ_CERT_DIR, data, size, preface, sizeof(preface) - 1, 0);
}
