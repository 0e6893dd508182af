/* fuzz_agent_message.c — ward.v1.AgentMessage as ward-proxy's agent client (proxy/agent_client.c)
 * receives it: unpack with ward's allocator, dispatch on the oneof, walk every field, and re-pack
 * (the proxy re-packs a PolicySnapshot alone to keep it; see fuzz_proto.h). The input is one gRPC
 * message payload. */
#include "fuzz_proto.h"
#include "ward/v1/mesh.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Ward__V1__AgentMessage *m = ward__v1__agent_message__unpack(&ward__pb, size, data);
    if (m == NULL) return 0;
    switch (m->msg_case) {
    case WARD__V1__AGENT_MESSAGE__MSG_SVID:
        WARD_FUZZ_CHECK(m->svid != NULL && m->svid->spiffe_id != NULL);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_BUNDLE:
        WARD_FUZZ_CHECK(m->bundle != NULL && m->bundle->trust_domain != NULL);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_POLICY:
        WARD_FUZZ_CHECK(m->policy != NULL);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_STATUS:
        WARD_FUZZ_CHECK(m->status != NULL && m->status->message != NULL);
        break;
    default:
        break;
    }
    ward__walk(&m->base, 0);
    if (m->msg_case == WARD__V1__AGENT_MESSAGE__MSG_POLICY)
        ward__repack(&m->policy->base, &ward__v1__policy_snapshot__descriptor);
    ward__repack(&m->base, &ward__v1__agent_message__descriptor);
    ward__v1__agent_message__free_unpacked(m, &ward__pb);
    return 0;
}
