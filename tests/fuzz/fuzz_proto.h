/* fuzz_proto.h — the part the two protobuf targets share: unpack one message with the allocator
 * ward's handlers use, walk every field the way a handler could (strings to their NUL, bytes to
 * their length, repeated fields and oneofs by their counts and cases, unknown fields), then pack it
 * again, as the proxy does with a policy snapshot, and check that the packed form is stable. */
#ifndef WARD_FUZZ_PROTO_H
#define WARD_FUZZ_PROTO_H

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "ward/alloc.h"

static ProtobufCAllocator ward__pb = {ward_pb_alloc, ward_pb_free, NULL};

static volatile uint64_t ward__sink;
/* Unknown fields numbered 0 seen by the last walk. libprotobuf-c 1.4 accepts field number 0 when
 * its tag is a non-minimal varint (81 00), keeps it as an unknown field and packs it back as a
 * one-byte tag (01) that its own unpack then refuses: a known library quirk, tolerated below. */
static unsigned ward__tag0;

static size_t ward__elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    }
    return 0;
}

static void ward__walk(const ProtobufCMessage *m, int depth);

static void ward__walk_value(const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    uint64_t h = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        if (s != NULL) h += strlen(s);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        WARD_FUZZ_CHECK(b->len == 0 || b->data != NULL);
        for (size_t i = 0; i < b->len; i++)
            h += b->data[i];
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (sub != NULL) {
            WARD_FUZZ_CHECK(sub->descriptor == f->descriptor);
            ward__walk(sub, depth + 1);
        }
        break;
    }
    default: {
        size_t n = ward__elem_size(f->type);
        const uint8_t *b = p;
        for (size_t i = 0; i < n; i++)
            h += b[i];
        break;
    }
    }
    ward__sink += h;
}

static void ward__walk(const ProtobufCMessage *m, int depth)
{
    if (depth == 0) ward__tag0 = 0;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    WARD_FUZZ_CHECK(d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    WARD_FUZZ_CHECK(depth < 100);
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *member = (const char *)m + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            const char *arr = *(char *const *)member;
            WARD_FUZZ_CHECK(n == 0 || arr != NULL);
            for (size_t j = 0; j < n; j++)
                ward__walk_value(f, arr + j * ward__elem_size(f->type), depth);
        } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)((const char *)m + f->quantifier_offset);
            if (which == f->id) ward__walk_value(f, member, depth);
        } else {
            ward__walk_value(f, member, depth);
        }
    }
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &m->unknown_fields[i];
        if (u->tag == 0) ward__tag0++;
        for (size_t j = 0; j < u->len; j++)
            ward__sink += u->data[j];
    }
}

/* Packs m, unpacks the result, packs that again: both packed forms must agree. Call after
 * ward__walk() of the message m belongs to. */
static void ward__repack(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *a = ward_malloc(n ? n : 1);
    if (a == NULL) return;
    WARD_FUZZ_CHECK(protobuf_c_message_pack(m, a) == n);
    ProtobufCMessage *again = protobuf_c_message_unpack(d, &ward__pb, n, a);
    if (again == NULL && ward__tag0 > 0) {
        ward_free(a);
        return;
    }
    WARD_FUZZ_CHECK(again != NULL);
    size_t n2 = protobuf_c_message_get_packed_size(again);
    WARD_FUZZ_CHECK(n2 == n);
    uint8_t *b = ward_malloc(n2 ? n2 : 1);
    if (b != NULL) {
        WARD_FUZZ_CHECK(protobuf_c_message_pack(again, b) == n2);
        WARD_FUZZ_CHECK(memcmp(a, b, n) == 0);
        ward_free(b);
    }
    protobuf_c_message_free_unpacked(again, &ward__pb);
    ward_free(a);
}

#endif
