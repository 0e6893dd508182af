/* ward/yaml_json.h — Kubernetes manifests (YAML streams) as jansson values, and back.
 *
 * Reading follows what kubectl does with a manifest (go-yaml v2, YAML 1.1 scalars): plain scalars
 * resolve to null (~, null, empty), booleans (true/false, yes/no, on/off, y/n in their three
 * casings), integers (decimal, 0x hex, 0o and leading-0 octal, 0b binary, '_' separators) and
 * floats; everything else, and every quoted scalar, is a string. Timestamps stay strings (as
 * kubectl keeps them). Anchors and aliases are expanded into copies (bounded), merge keys (<<)
 * apply, duplicate keys and complex (non-scalar) keys are errors. Comments are not kept.
 *
 * Writing emits block style (flow only for empty collections), 2-space indentation, sequences
 * inside mappings not indented (kubectl's layout), multi-line strings as literal blocks where
 * YAML allows it, and quotes exactly the strings that a YAML 1.1 reader (kubectl, PyYAML) would
 * otherwise read as something else ("true", "8080", "1:30", "2024-01-01", "", ...). Object keys
 * keep their order, so parse -> dump -> parse is the identity and dump(parse(dump(x))) ==
 * dump(x). */
#ifndef WARD_YAML_JSON_H
#define WARD_YAML_JSON_H

#include <stddef.h>

#include <jansson.h>

#include "ward/strbuf.h"

typedef struct {
    int document; /* 1-based index of the document the error is in (0: before the first) */
    int line;     /* 1-based position in the text; 0 when unknown */
    int column;
    char message[256];
} ward_yaml_error_t;

/* Parses every document of text[len] into *docs, a new JSON array with one element per document
 * (an empty document is JSON null). Returns 0, WARD_EPARSE with err filled (syntax, duplicate
 * key, complex key, undefined alias, nesting deeper than 256, alias expansion beyond its budget)
 * or WARD_ENOMEM. */
int ward_yaml_load_all(const char *text, size_t len, json_t **docs, ward_yaml_error_t *err);

/* Appends each element of docs (a JSON array) to out as one YAML document, "---" between two.
 * Returns 0, WARD_EINVAL (docs is not an array) or WARD_ENOMEM. */
int ward_yaml_dump_all(const json_t *docs, ward_strbuf_t *out);

#endif
