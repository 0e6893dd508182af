/* ward/policy.h — the policy loader shared by ward-agent (--policy-dir), `wardctl policy check` and
 * ward-proxy's --policy flag: Kubernetes-style AuthorizationPolicy YAML documents (DESIGN.md,
 * "Policy"), strictly validated, kept in a set, and cut into per-workload protobuf snapshots.
 *
 *   ward_policy_set_t set;
 *   ward_policy_error_t err;
 *   ward_policy_set_init(&set);
 *   if (ward_policy_load_dir("/etc/ward/policy", &set, &err) < 0)
 *       fprintf(stderr, "%s:%d:%d: %s\n", err.file, err.line, err.column, err.message);
 *   ward_policy_snapshot_for(&set, "spiffe://td/ns/shop/sa/orders", version, &bytes, &len);
 *   ward_policy_set_free(&set);
 *
 * Ownership: the set owns its policies (protobuf-c structs built with ward's allocator; never pass
 * them to protobuf-c's free_unpacked). A set is not locked: fill it on one thread, then treat it as
 * immutable (several threads may then call the const functions concurrently).
 *
 * Validation (every problem reports the file and the 1-based line:column of the offending node):
 * apiVersion `ward.dev/v1`; kind `AuthorizationPolicy`; metadata {name (DNS-1123 subdomain),
 * namespace (DNS-1123 label), labels, annotations (string maps, ignored)}; spec {selector
 * {identity: SPIFFE id} (absent = every workload in metadata.namespace), action ALLOW|DENY|AUDIT
 * (default ALLOW), rules: [{from, to, when}]}; from: [{identities: SPIFFE ids, id prefixes ending
 * in a star after the trust domain, or a star alone, namespaces: DNS-1123 labels}]; to: [{ports:
 * 1..65535, methods: uppercase HTTP tokens, paths: "/exact", "/prefix/" + star, star + "suffix" or
 * a star alone; policy paths must already be normalised}]; when: [{key:
 * request.headers[lowercase-name] | source.ip (addresses or CIDRs without host bits) | time.hour
 * ("H" or "H-H", 0..23; "22-6" wraps past midnight), values: [...]}]. Lists present must be
 * non-empty, empty rules/sources/operations are errors, unknown and duplicate keys are errors.
 * Limits: 1 MiB per file, 10 000 rules per file, 1024 bytes per string, nesting 32 deep; YAML
 * anchors, aliases, tags and %TAG directives are refused. Empty documents are skipped. */
#ifndef WARD_POLICY_H
#define WARD_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "ward/v1/mesh.pb-c.h"

#define WARD_POLICY_MAX_FILE   (1024 * 1024)
#define WARD_POLICY_MAX_RULES  10000
#define WARD_POLICY_MAX_STRING 1024
#define WARD_POLICY_MAX_DEPTH  32

/* Where and why loading failed. line and column are 1-based; both 0 when the error has no position
 * in a document (I/O failure, file too large, out of memory). file is the name given to
 * ward_policy_parse (or "<input>"), or the path of the file/directory for ward_policy_load_dir. */
typedef struct {
    char file[256];
    int line;
    int column;
    char message[256];
} ward_policy_error_t;

typedef struct ward_policy ward_policy_t;

typedef struct {
    ward_policy_t **items; /* sorted by namespace, then name; unique */
    size_t count;
    size_t cap;
    unsigned gen; /* bumped by every load, to roll back a failed one */
    /* Applies where no policy selects a workload; copied into every snapshot. The set starts with
     * DEFAULT_ACTION_DENY (the shipped default); the owner sets it from its configuration. */
    Ward__V1__DefaultAction mesh_default;
} ward_policy_set_t;

void ward_policy_set_init(ward_policy_set_t *set);
/* Frees every policy; the set is empty (and reusable) afterwards. */
void ward_policy_set_free(ward_policy_set_t *set);
size_t ward_policy_set_count(const ward_policy_set_t *set);
/* The i-th policy in (namespace, name) order, owned by the set; NULL when i >= count. */
const Ward__V1__AuthorizationPolicy *ward_policy_set_get(const ward_policy_set_t *set, size_t i);

/* Parses one YAML stream text[0..len) (any number of `---` documents) and adds its policies to
 * set. All or nothing: on failure the set is left as it was. A policy whose namespace/name is
 * already in the set is an error. filename (may be NULL) only labels errors. err may be NULL.
 * Returns 0, or
 *   WARD_EPARSE    YAML syntax error or invalid policy (err says where and why),
 *   WARD_ETOOLONG  a limit above was exceeded (err says where),
 *   WARD_ENOMEM, WARD_EINVAL (NULL text or set). */
int ward_policy_parse(const char *text, size_t len, const char *filename, ward_policy_set_t *set,
                      ward_policy_error_t *err);

/* Loads every regular file named *.yaml or *.yml in dir, in strcmp order of their names, following
 * symlinks and skipping names that start with '.' and dangling symlinks. A Kubernetes ConfigMap
 * volume (dir/..data -> ..<timestamp>/) is read through the directory ..data points at, re-read if
 * ..data is swapped meanwhile, so one load never mixes two versions. All or nothing, like
 * ward_policy_parse; the first error stops the load. An empty directory adds nothing and succeeds.
 * Returns 0, the errors of ward_policy_parse, or a negative errno (opendir, open, read). */
int ward_policy_load_dir(const char *dir, ward_policy_set_t *set, ward_policy_error_t *err);

/* The policies that select identity — selector_identity equal to it, or an empty selector in the
 * identity's namespace (spiffe://<td>/ns/<NS>/sa/<SA> -> NS; an identity of another shape is only
 * selected exactly) — in (namespace, name) order, with version and set->mesh_default, packed as a
 * ward.v1.PolicySnapshot. *packed is heap memory the caller frees with ward_free (never NULL on
 * success, even when *len is 0). Returns 0, WARD_ESPIFFE (identity is not a SPIFFE id), WARD_EINVAL
 * or WARD_ENOMEM. */
int ward_policy_snapshot_for(const ward_policy_set_t *set, const char *identity, uint64_t version,
                             uint8_t **packed, size_t *len);

/* A stable 64-bit digest (FNV-1a over the packed policies and the mesh default) of what
 * ward_policy_snapshot_for(set, identity, ...) contains apart from the version: equal across runs
 * and processes for equal content, different (barring collisions) when the selected policies or
 * the default change. An invalid identity hashes like an empty selection. Never allocates. */
uint64_t ward_policy_set_hash(const ward_policy_set_t *set, const char *identity);

#endif
