/* fuzz_sniff.c — protocol choice on a PERMISSIVE inbound (proxy/conn.c + proxy/sniff.c), end to
 * end through the in-process proxy of proxy_harness.h: whatever a plaintext caller sends first is
 * sniffed as HTTP/1, HTTP/2 or opaque TCP (or waits for the sniff timeout), on the HTTP port
 * (opaque TCP denied: nothing but decided HTTP may reach the app) or the TCP port (everything
 * allowed, the app echoes opaque bytes). The run checks the harness's properties (no denied
 * request or opaque byte on the HTTP port reached the app, nothing left behind after teardown).
 *
 * Input: a control byte (proxy_harness.h, ward_ph_fuzz_input; bit 7 picks the TCP port), then the
 * caller's bytes, unchanged. */
#include "fuzz.h"
#include "proxy_harness.h"

#ifndef WARD_FUZZ_CERT_DIR
#error "WARD_FUZZ_CERT_DIR (certificates minted by tests/lib/certs.py) must be defined"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    return ward_ph_fuzz_one(WARD_FUZZ_CERT_DIR, data, size, NULL, 0, 1);
}
