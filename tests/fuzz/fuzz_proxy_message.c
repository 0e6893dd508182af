/* fuzz_proxy_message.c — ward.v1.ProxyMessage as ward-agent's Mesh handler (control/mesh.c)
 * receives it from a proxy that has not been attested yet: unpack with ward's allocator, look at
 * the oneof the way the handler dispatches, walk every field, re-pack (see fuzz_proto.h). The
 * input is one gRPC message payload. */
#include "fuzz_proto.h"
#include "ward/v1/mesh.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Ward__V1__ProxyMessage *m = ward__v1__proxy_message__unpack(&ward__pb, size, data);
    if (m == NULL) return 0;
    switch (m->msg_case) {
    case WARD__V1__PROXY_MESSAGE__MSG_HELLO:
        WARD_FUZZ_CHECK(m->hello != NULL && m->hello->token != NULL);
        break;
    case WARD__V1__PROXY_MESSAGE__MSG_CSR:
        WARD_FUZZ_CHECK(m->csr != NULL);
        WARD_FUZZ_CHECK(m->csr->csr_der.len == 0 || m->csr->csr_der.data != NULL);
        break;
    case WARD__V1__PROXY_MESSAGE__MSG_ACK:
        WARD_FUZZ_CHECK(m->ack != NULL && m->ack->error != NULL);
        break;
    default:
        break;
    }
    ward__walk(&m->base, 0);
    ward__repack(&m->base, &ward__v1__proxy_message__descriptor);
    ward__v1__proxy_message__free_unpacked(m, &ward__pb);
    return 0;
}
