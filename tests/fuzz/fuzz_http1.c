/* fuzz_http1.c — the inbound HTTP/1.1 codec (proxy/http1.c) end to end, through the in-process
 * proxy of proxy_harness.h: the input is what a plaintext caller sends to a PERMISSIVE inbound
 * whose policy allows paths under /public/ and denies /admin. Each input is one connection: its
 * bytes are written in a few pieces, the fake app answers what reaches it, and the run checks that
 * no denied or unparseable request, no forged x-forwarded-client-cert and no non-WebSocket upgrade
 * reached the app, that it never saw more requests than the proxy allowed, and that the connection
 * was torn down with nothing left behind (ASan/UBSan/LSan catch the rest).
 *
 * Input: a control byte (proxy_harness.h, ward_ph_fuzz_input: writes, cuts, app mode), then the
 * caller's bytes. Inputs the sniffer would not hand to the HTTP/1 codec are rejected (-1): they
 * belong to fuzz_sniff. */
#include "fuzz.h"
#include "proxy_harness.h"
#include "sniff.h"

#ifndef WARD_FUZZ_CERT_DIR
#error "WARD_FUZZ_CERT_DIR (certificates minted by tests/lib/certs.py) must be defined"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || ward_sniff((const char *)data + 1, size - 1) != WARD_SNIFF_HTTP1) return -1;
    return ward_ph_fuzz_one(WARD_FUZZ_CERT_DIR, data, size, NULL, 0, 0);
}
