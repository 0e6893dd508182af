/* policy.c — AuthorizationPolicy YAML loader and per-workload snapshots (see ward/policy.h).
 *
 * libyaml's event parser feeds a small node tree, one document at a time; anchors, aliases and tags
 * are refused as the events stream by, so nothing is ever expanded. The validator then walks the
 * tree against the schema and builds the protobuf-c structs directly with ward's allocator, so a
 * snapshot is one protobuf_c pack of pointers the set already owns. */
#include "ward/policy.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#define WARD__API_VERSION  "ward.dev/v1"
#define WARD__KIND         "AuthorizationPolicy"
#define WARD__PATH_MAX     160
#define WARD__MAX_META     256 /* entries in metadata.labels / annotations */
#define WARD__DIR_ATTEMPTS 4   /* ConfigMap ..data swaps tolerated during one load */
#define WARD__NAME_MAX     253
#define WARD__LABEL_MAX    63

struct ward_policy {
    Ward__V1__AuthorizationPolicy pb;
    unsigned gen;
    char origin[300]; /* "file:line:column" of metadata.name, for duplicate errors */
};

/* ---- the node tree of one document ---------------------------------------------------------- */

enum { WARD__N_SCALAR, WARD__N_SEQ, WARD__N_MAP };

typedef struct {
    int type;
    int plain; /* an unquoted scalar */
    int line;  /* 1-based */
    int col;
    char *s; /* scalars: NUL-terminated copy of the value */
    size_t len;
    size_t first; /* first child; 0 = none (node 0 is the root and never a child) */
    size_t next;  /* next sibling; 0 = none */
    size_t n;     /* children; a mapping's alternate key, value, key, value... */
} ward__node_t;

typedef struct {
    const char *file; /* labels errors and each policy's origin */
    const char *text; /* the stream, to place reader errors */
    size_t text_len;
    ward_policy_error_t *err;
    ward_policy_set_t *set;
    unsigned gen;
    ward__node_t *v; /* the tree of the current document */
    size_t n;
    size_t cap;
    size_t rules; /* in this file so far */
} ward__ctx_t;

typedef struct {
    size_t node;
    size_t last; /* last child linked so far; 0 = none */
} ward__open_t;

/* Checks one string; returns NULL when it is valid, else a static reason. */
typedef const char *(*ward__check_fn)(const char *s, size_t len);

__attribute__((format(printf, 5, 6))) static int ward__fail_at(ward__ctx_t *c, int rc, int line,
                                                               int col, const char *fmt, ...)
{
    if (c->err == NULL) return rc;
    c->err->line = line;
    c->err->column = col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err->message, sizeof(c->err->message), fmt, ap);
    va_end(ap);
    /* Messages quote the input: keep control characters out of the operator's terminal. */
    for (char *m = c->err->message; *m; m++)
        if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
    return rc;
}

#define ward__fail(c, rc, node, ...)                                                               \
    ward__fail_at((c), (rc), (node)->line, (node)->col, __VA_ARGS__)

__attribute__((format(printf, 3, 4))) static void ward__path(char *out, size_t cap, const char *fmt,
                                                             ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static void ward__error_file(ward_policy_error_t *err, const char *file)
{
    if (err == NULL) return;
    memset(err, 0, sizeof(*err));
    if (file == NULL) file = "<input>";
    /* A path too long keeps its end, which names the file. */
    size_t len = strlen(file), cap = sizeof(err->file) - 1;
    if (len <= cap) {
        memcpy(err->file, file, len);
    } else {
        memcpy(err->file, "...", 3);
        memcpy(err->file + 3, file + len - (cap - 3), cap - 3);
    }
}

static int ward__nomem(ward__ctx_t *c)
{
    return ward__fail_at(c, WARD_ENOMEM, 0, 0, "out of memory");
}

static void ward__tree_clear(ward__ctx_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        ward_free(c->v[i].s);
    c->n = 0;
}

static int ward__tree_add(ward__ctx_t *c, int type, const yaml_mark_t *m, size_t *idx)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        ward__node_t *v = ward_realloc(c->v, cap * sizeof(*v));
        if (v == NULL) return ward__nomem(c);
        c->v = v;
        c->cap = cap;
    }
    ward__node_t *n = &c->v[c->n];
    memset(n, 0, sizeof(*n));
    n->type = type;
    n->line = (int)m->line + 1;
    n->col = (int)m->column + 1;
    *idx = c->n++;
    return 0;
}

static void ward__tree_link(ward__ctx_t *c, ward__open_t *stack, int depth, size_t idx)
{
    if (depth == 0) return;
    ward__open_t *parent = &stack[depth - 1];
    if (parent->last == 0)
        c->v[parent->node].first = idx;
    else
        c->v[parent->last].next = idx;
    parent->last = idx;
    c->v[parent->node].n++;
}

/* Places a libyaml error. Reader errors (bad UTF-8, control characters) carry a byte offset
 * instead of a mark: count lines and characters up to it. */
static int ward__syntax(ward__ctx_t *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR) return ward__nomem(c);
    const char *problem = p->problem ? p->problem : "unknown error";
    if (p->error == YAML_READER_ERROR) {
        int line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < c->text_len; i++) {
            unsigned char ch = (unsigned char)c->text[i];
            if (ch == '\n') {
                line++;
                col = 1;
            } else if ((ch & 0xc0) != 0x80) {
                col++;
            }
        }
        return ward__fail_at(c, WARD_EPARSE, line, col, "YAML: %s", problem);
    }
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
    if (p->context)
        return ward__fail_at(c, WARD_EPARSE, line, col, "YAML: %s %s", problem, p->context);
    return ward__fail_at(c, WARD_EPARSE, line, col, "YAML: %s", problem);
}

/* Anchors, aliases and tags are refused: aliases are how a small file expands into a huge one,
 * and the schema has no use for tags. */
static int ward__node_props(ward__ctx_t *c, const yaml_event_t *ev, const yaml_char_t *anchor,
                            const yaml_char_t *tag)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    if (anchor != NULL)
        return ward__fail_at(c, WARD_EPARSE, line, col, "YAML anchors are not allowed ('&%.60s')",
                             (const char *)anchor);
    if (tag != NULL)
        return ward__fail_at(c, WARD_EPARSE, line, col, "YAML tags are not allowed ('%.60s')",
                             (const char *)tag);
    return 0;
}

static int ward__scalar(ward__ctx_t *c, ward__open_t *stack, int depth, const yaml_event_t *ev)
{
    size_t idx, len = ev->data.scalar.length;
    const char *value = (const char *)ev->data.scalar.value;
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    int rc = ward__node_props(c, ev, ev->data.scalar.anchor, ev->data.scalar.tag);
    if (rc < 0) return rc;
    if (len > WARD_POLICY_MAX_STRING)
        return ward__fail_at(c, WARD_ETOOLONG, line, col, "string longer than %d bytes",
                             WARD_POLICY_MAX_STRING);
    if (memchr(value, '\0', len) != NULL)
        return ward__fail_at(c, WARD_EPARSE, line, col, "string contains a NUL byte");
    rc = ward__tree_add(c, WARD__N_SCALAR, &ev->start_mark, &idx);
    if (rc < 0) return rc;
    ward__node_t *n = &c->v[idx];
    n->s = ward_strndup(value, len);
    if (n->s == NULL) return ward__nomem(c);
    n->len = len;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    ward__tree_link(c, stack, depth, idx);
    return 0;
}

/* Reads the events of one document, after its DOCUMENT-START, into c's tree: node 0 is the root.
 */
static int ward__read_doc(ward__ctx_t *c, yaml_parser_t *p)
{
    ward__open_t stack[WARD_POLICY_MAX_DEPTH];
    int depth = 0, rc = 0;
    yaml_event_t ev;
    size_t idx;

    for (;;) {
        if (!yaml_parser_parse(p, &ev)) return ward__syntax(c, p);
        switch (ev.type) {
        case YAML_DOCUMENT_END_EVENT:
            yaml_event_delete(&ev);
            return 0;
        case YAML_ALIAS_EVENT:
            rc = ward__fail_at(
                c, WARD_EPARSE, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                "YAML aliases are not allowed ('*%.60s')", (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
            rc = ward__scalar(c, stack, depth, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            int seq = ev.type == YAML_SEQUENCE_START_EVENT;
            rc = seq ? ward__node_props(c, &ev, ev.data.sequence_start.anchor,
                                        ev.data.sequence_start.tag)
                     : ward__node_props(c, &ev, ev.data.mapping_start.anchor,
                                        ev.data.mapping_start.tag);
            if (rc < 0) break;
            if (depth == WARD_POLICY_MAX_DEPTH) {
                rc = ward__fail_at(c, WARD_ETOOLONG, (int)ev.start_mark.line + 1,
                                   (int)ev.start_mark.column + 1, "nesting deeper than %d levels",
                                   WARD_POLICY_MAX_DEPTH);
                break;
            }
            rc = ward__tree_add(c, seq ? WARD__N_SEQ : WARD__N_MAP, &ev.start_mark, &idx);
            if (rc < 0) break;
            ward__tree_link(c, stack, depth, idx);
            stack[depth].node = idx;
            stack[depth].last = 0;
            depth++;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
        if (rc < 0) return rc;
    }
}

/* ---- schema helpers ------------------------------------------------------------------------- */

static int ward__is_null(const ward__node_t *n)
{
    if (n->type != WARD__N_SCALAR || !n->plain) return 0;
    return n->len == 0 || strcmp(n->s, "~") == 0 || strcmp(n->s, "null") == 0 ||
           strcmp(n->s, "Null") == 0 || strcmp(n->s, "NULL") == 0;
}

static const char *ward__type_name(const ward__node_t *n)
{
    if (n->type == WARD__N_MAP) return "a mapping";
    if (n->type == WARD__N_SEQ) return "a list";
    return ward__is_null(n) ? "null" : "a string";
}

static const char *ward__where(const char *path)
{
    return path[0] ? path : "the document";
}

static int ward__expect(ward__ctx_t *c, const ward__node_t *n, int type, const char *path)
{
    static const char *const names[] = {"a string", "a list", "a mapping"};
    if (n->type == type && !(type == WARD__N_SCALAR && ward__is_null(n))) return 0;
    return ward__fail(c, WARD_EPARSE, n, "%s: expected %s, got %s", ward__where(path), names[type],
                      ward__type_name(n));
}

/* A list that, being present, must not be empty. */
static int ward__list(ward__ctx_t *c, const ward__node_t *n, const char *path)
{
    int rc = ward__expect(c, n, WARD__N_SEQ, path);
    if (rc < 0) return rc;
    if (n->n == 0) return ward__fail(c, WARD_EPARSE, n, "%s: must not be empty", path);
    return 0;
}

/* Checks that n is a mapping whose keys are all among fields[0..nf), each at most once; out[i]
 * receives the value of fields[i], or NULL. Returns how many fields were present, or an error. */
static int ward__fields(ward__ctx_t *c, const ward__node_t *n, const char *path,
                        const char *const *fields, size_t nf, const ward__node_t **out)
{
    int rc = ward__expect(c, n, WARD__N_MAP, path), present = 0;
    if (rc < 0) return rc;
    for (size_t i = 0; i < nf; i++)
        out[i] = NULL;
    for (size_t k = n->first; k; k = c->v[c->v[k].next].next) {
        const ward__node_t *key = &c->v[k], *value = &c->v[key->next];
        if (key->type != WARD__N_SCALAR)
            return ward__fail(c, WARD_EPARSE, key, "%s: keys must be strings", ward__where(path));
        size_t i = 0;
        while (i < nf && strcmp(key->s, fields[i]) != 0)
            i++;
        if (i == nf)
            return ward__fail(c, WARD_EPARSE, key, "unknown field '%.60s' in %s", key->s,
                              ward__where(path));
        if (out[i] != NULL)
            return ward__fail(c, WARD_EPARSE, key, "duplicate field '%s' in %s", key->s,
                              ward__where(path));
        out[i] = value;
        present++;
    }
    return present;
}

static int ward__required(ward__ctx_t *c, const ward__node_t *map, const ward__node_t *value,
                          const char *path, const char *field)
{
    if (value != NULL) return 0;
    return ward__fail(c, WARD_EPARSE, map, "%s: missing required field '%s'", ward__where(path),
                      field);
}

static int ward__string(ward__ctx_t *c, const ward__node_t *n, const char *path, ward__check_fn fn,
                        const char *what)
{
    int rc = ward__expect(c, n, WARD__N_SCALAR, path);
    if (rc < 0) return rc;
    const char *why = fn ? fn(n->s, n->len) : NULL;
    if (why != NULL)
        return ward__fail(c, WARD_EPARSE, n, "%s: invalid %s '%.80s': %s", path, what, n->s, why);
    return 0;
}

static int ward__dup(ward__ctx_t *c, const ward__node_t *n, char **out)
{
    *out = ward_strndup(n->s, n->len);
    return *out ? 0 : ward__nomem(c);
}

/* A non-empty list of strings, each passing fn; *v gets n owned copies. */
static int ward__strings(ward__ctx_t *c, const ward__node_t *n, const char *path, ward__check_fn fn,
                         const char *what, char ***v, size_t *count)
{
    char sub[WARD__PATH_MAX];
    int rc = ward__list(c, n, path);
    if (rc < 0) return rc;
    *v = ward_calloc(n->n, sizeof(**v));
    if (*v == NULL) return ward__nomem(c);
    *count = n->n;
    size_t i = 0;
    for (size_t k = n->first; k; k = c->v[k].next, i++) {
        ward__path(sub, sizeof(sub), "%s[%zu]", path, i);
        rc = ward__string(c, &c->v[k], sub, fn, what);
        if (rc < 0) return rc;
        rc = ward__dup(c, &c->v[k], &(*v)[i]);
        if (rc < 0) return rc;
    }
    return 0;
}

/* ---- value checks --------------------------------------------------------------------------- */

static int ward__lower_alnum(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
}

static int ward__tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* One DNS-1123 label body: [a-z0-9-], starting and ending with [a-z0-9]. */
static int ward__dns_part(const char *s, size_t len)
{
    if (len == 0 || !ward__lower_alnum(s[0]) || !ward__lower_alnum(s[len - 1])) return 0;
    for (size_t i = 0; i < len; i++)
        if (!ward__lower_alnum(s[i]) && s[i] != '-') return 0;
    return 1;
}

static const char *ward__check_label(const char *s, size_t len)
{
    if (len > WARD__LABEL_MAX) return "longer than 63 characters";
    if (!ward__dns_part(s, len))
        return "not a DNS-1123 label ([a-z0-9-], starting and ending with a letter or digit)";
    return NULL;
}

static const char *ward__check_subdomain(const char *s, size_t len)
{
    if (len > WARD__NAME_MAX) return "longer than 253 characters";
    const char *end = s + len, *p = s;
    for (;;) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        const char *stop = dot ? dot : end;
        if (!ward__dns_part(p, (size_t)(stop - p)))
            return "not a DNS-1123 subdomain (dot-separated [a-z0-9-] labels, each starting and "
                   "ending with a letter or digit)";
        if (dot == NULL) return NULL;
        p = dot + 1;
    }
}

static const char *ward__check_spiffe(const char *s, size_t len)
{
    const char *why = NULL;
    return ward_spiffe_id_parse(s, len, NULL, &why) < 0 ? why : NULL;
}

/* An exact SPIFFE id, "*" (any authenticated peer), or a prefix ending in '*' that keeps the whole
 * trust domain: "spiffe://td/ns/ops/" or "spiffe://td/ns/shop/sa/web-", then the star. */
static const char *ward__check_identity(const char *s, size_t len)
{
    if (len == 1 && s[0] == '*') return NULL;
    const char *star = memchr(s, '*', len);
    if (star == NULL) return ward__check_spiffe(s, len);
    if (star != s + len - 1) return "'*' is only allowed as the last character";
    size_t pre = len - 1;
    const char *why = NULL;
    ward_spiffe_id_t id;
    if (pre > 0 && s[pre - 1] == '/') {
        if (ward_spiffe_id_parse(s, pre - 1, &id, &why) < 0) return why;
        return NULL;
    }
    if (ward_spiffe_id_parse(s, pre, &id, &why) < 0) return why;
    if (id.path_len == 0) return "a wildcard must not cut the trust domain";
    return NULL;
}

static const char *ward__check_method(const char *s, size_t len)
{
    if (len == 0) return "empty";
    for (size_t i = 0; i < len; i++) {
        if ((s[i] >= 'a' && s[i] <= 'z') || s[i] == '*' || !ward__tchar(s[i]))
            return "methods are uppercase HTTP tokens (GET, POST, ...)";
    }
    return NULL;
}

static int ward__hex(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Characters of a policy path, which must already be in the form the proxy normalises requests
 * to: no query or fragment, no percent-encoded unreserved characters. */
static const char *ward__path_chars(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f) return "paths are printable ASCII without spaces";
        if (ch == '?' || ch == '#') return "paths must not contain a query or fragment";
        if (ch == '%') {
            int hi = i + 2 < len ? ward__hex(s[i + 1]) : -1;
            int lo = i + 2 < len ? ward__hex(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) return "malformed percent-encoding";
            int d = hi * 16 + lo;
            if ((d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z') || (d >= '0' && d <= '9') ||
                d == '-' || d == '.' || d == '_' || d == '~')
                return "percent-encoded unreserved character (requests are matched decoded)";
        }
    }
    return NULL;
}

/* "*", "*suffix", "/exact" (a gRPC "/pkg.Service/Method" too), or a prefix: "/prefix/" and a
 * final star. */
static const char *ward__check_path(const char *s, size_t len)
{
    if (len == 1 && s[0] == '*') return NULL;
    if (len > 1 && s[0] == '*') {
        if (memchr(s + 1, '*', len - 1) != NULL) return "only one '*' is allowed";
        return ward__path_chars(s + 1, len - 1);
    }
    if (len == 0 || s[0] != '/')
        return "paths start with '/', or are '*', '*suffix' or '/prefix/*'";
    const char *star = memchr(s, '*', len);
    if (star != NULL && (star != s + len - 1 || s[len - 2] != '/'))
        return "a '*' in a path must be the last segment: '/prefix/*'";
    size_t n = star ? len - 1 : len;
    const char *why = ward__path_chars(s, n);
    if (why != NULL) return why;
    /* Segments, each between two slashes (or the end): no empty, "." or ".." ones. */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && s[j] != '/')
            j++;
        size_t seg = j - i - 1;
        if (seg == 0 && j < n) return "empty path segment ('//'); requests are matched normalised";
        if ((seg == 1 && s[i + 1] == '.') || (seg == 2 && s[i + 1] == '.' && s[i + 2] == '.'))
            return "dot segment; requests are matched normalised";
        i = j;
    }
    return NULL;
}

static const char *ward__check_header_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return "control character in a header value";
    }
    return NULL;
}

/* Digits without a leading zero, at most max; -1 otherwise. */
static long ward__number(const char *s, size_t len, long max)
{
    if (len == 0 || len > 10 || (len > 1 && s[0] == '0')) return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

static const char *ward__check_ip(const char *s, size_t len)
{
    char addr[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    int v6 = memchr(s, ':', alen) != NULL;
    if (alen == 0 || alen >= sizeof(addr)) return "not an IPv4 or IPv6 address";
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, bin) != 1) return "not an IPv4 or IPv6 address";
    if (slash == NULL) return NULL;
    int bits = v6 ? 128 : 32;
    long prefix = ward__number(slash + 1, len - alen - 1, bits);
    if (prefix < 0) return v6 ? "prefix length must be 0..128" : "prefix length must be 0..32";
    for (int b = (int)prefix; b < bits; b++)
        if (bin[b / 8] & (0x80 >> (b % 8))) return "address has bits set beyond the prefix length";
    return NULL;
}

static const char *ward__check_hour(const char *s, size_t len)
{
    static const char *const why = "hours are \"H\" or \"H-H\" with 0 <= H <= 23";
    const char *dash = memchr(s, '-', len);
    size_t first = dash ? (size_t)(dash - s) : len;
    if (first == 0 || first > 2) return why;
    for (size_t i = 0; i < len; i++)
        if (s + i != dash && (s[i] < '0' || s[i] > '9')) return why;
    if (atoi(s) > 23) return why; /* s is NUL-terminated: it is a node's copy */
    if (dash == NULL) return NULL;
    size_t second = len - first - 1;
    if (second == 0 || second > 2 || atoi(dash + 1) > 23) return why;
    return NULL;
}

/* The NAME of request.headers[NAME]: a lowercase HTTP token. */
static const char *ward__check_header_name(const char *s, size_t len)
{
    if (len == 0) return "empty header name";
    for (size_t i = 0; i < len; i++)
        if (!ward__tchar(s[i]) || (s[i] >= 'A' && s[i] <= 'Z'))
            return "header names are lowercase HTTP tokens";
    return NULL;
}

/* ---- policy structs ------------------------------------------------------------------------- */

static void ward__free_str(char *s)
{
    if (s != NULL && s != protobuf_c_empty_string) ward_free(s);
}

static void ward__free_strv(char **v, size_t n)
{
    if (v == NULL) return;
    for (size_t i = 0; i < n; i++)
        ward__free_str(v[i]);
    ward_free(v);
}

/* Arrays are allocated at their final length and filled in place, so a half-built rule (every
 * slot not yet filled is NULL) frees like a complete one. */
static void ward__free_rule(Ward__V1__Rule *r)
{
    if (r == NULL) return;
    for (size_t i = 0; r->from && i < r->n_from; i++) {
        Ward__V1__Source *s = r->from[i];
        if (s == NULL) continue;
        ward__free_strv(s->identities, s->n_identities);
        ward__free_strv(s->namespaces, s->n_namespaces);
        ward_free(s);
    }
    ward_free(r->from);
    for (size_t i = 0; r->to && i < r->n_to; i++) {
        Ward__V1__Operation *o = r->to[i];
        if (o == NULL) continue;
        ward_free(o->ports);
        ward__free_strv(o->methods, o->n_methods);
        ward__free_strv(o->paths, o->n_paths);
        ward_free(o);
    }
    ward_free(r->to);
    for (size_t i = 0; r->when && i < r->n_when; i++) {
        Ward__V1__Condition *w = r->when[i];
        if (w == NULL) continue;
        ward__free_str(w->key);
        ward__free_strv(w->values, w->n_values);
        ward_free(w);
    }
    ward_free(r->when);
    ward_free(r);
}

static void ward__policy_free(ward_policy_t *p)
{
    if (p == NULL) return;
    ward__free_str(p->pb.name);
    ward__free_str(p->pb.namespace_);
    ward__free_str(p->pb.selector_identity);
    for (size_t i = 0; p->pb.rules && i < p->pb.n_rules; i++)
        ward__free_rule(p->pb.rules[i]);
    ward_free(p->pb.rules);
    ward_free(p);
}

static int ward__source(ward__ctx_t *c, const ward__node_t *n, const char *path,
                        Ward__V1__Source **out)
{
    static const char *const fields[] = {"identities", "namespaces"};
    const ward__node_t *f[2];
    char sub[WARD__PATH_MAX];
    int rc = ward__fields(c, n, path, fields, 2, f);
    if (rc < 0) return rc;
    if (rc == 0)
        return ward__fail(c, WARD_EPARSE, n, "%s: empty source: set identities or namespaces",
                          path);
    Ward__V1__Source *s = ward_malloc(sizeof(*s));
    if (s == NULL) return ward__nomem(c);
    ward__v1__source__init(s);
    *out = s;
    if (f[0] != NULL) {
        ward__path(sub, sizeof(sub), "%s.identities", path);
        rc = ward__strings(c, f[0], sub, ward__check_identity, "identity", &s->identities,
                           &s->n_identities);
        if (rc < 0) return rc;
    }
    if (f[1] != NULL) {
        ward__path(sub, sizeof(sub), "%s.namespaces", path);
        rc = ward__strings(c, f[1], sub, ward__check_label, "namespace", &s->namespaces,
                           &s->n_namespaces);
        if (rc < 0) return rc;
    }
    return 0;
}

static int ward__ports(ward__ctx_t *c, const ward__node_t *n, const char *path,
                       Ward__V1__Operation *o)
{
    int rc = ward__list(c, n, path);
    if (rc < 0) return rc;
    o->ports = ward_calloc(n->n, sizeof(*o->ports));
    if (o->ports == NULL) return ward__nomem(c);
    o->n_ports = n->n;
    size_t i = 0;
    for (size_t k = n->first; k; k = c->v[k].next, i++) {
        const ward__node_t *p = &c->v[k];
        long port = p->type == WARD__N_SCALAR && p->plain ? ward__number(p->s, p->len, 65535) : -1;
        if (port < 1)
            return ward__fail(c, WARD_EPARSE, p,
                              "%s[%zu]: ports are integers in 1..65535, got %s%s%s", path, i,
                              p->type == WARD__N_SCALAR ? "'" : "",
                              p->type == WARD__N_SCALAR ? p->s : ward__type_name(p),
                              p->type == WARD__N_SCALAR ? "'" : "");
        o->ports[i] = (uint32_t)port;
    }
    return 0;
}

static int ward__operation(ward__ctx_t *c, const ward__node_t *n, const char *path,
                           Ward__V1__Operation **out)
{
    static const char *const fields[] = {"ports", "methods", "paths"};
    const ward__node_t *f[3];
    char sub[WARD__PATH_MAX];
    int rc = ward__fields(c, n, path, fields, 3, f);
    if (rc < 0) return rc;
    if (rc == 0)
        return ward__fail(c, WARD_EPARSE, n, "%s: empty operation: set ports, methods or paths",
                          path);
    Ward__V1__Operation *o = ward_malloc(sizeof(*o));
    if (o == NULL) return ward__nomem(c);
    ward__v1__operation__init(o);
    *out = o;
    if (f[0] != NULL) {
        ward__path(sub, sizeof(sub), "%s.ports", path);
        rc = ward__ports(c, f[0], sub, o);
        if (rc < 0) return rc;
    }
    if (f[1] != NULL) {
        ward__path(sub, sizeof(sub), "%s.methods", path);
        rc = ward__strings(c, f[1], sub, ward__check_method, "method", &o->methods, &o->n_methods);
        if (rc < 0) return rc;
    }
    if (f[2] != NULL) {
        ward__path(sub, sizeof(sub), "%s.paths", path);
        rc = ward__strings(c, f[2], sub, ward__check_path, "path", &o->paths, &o->n_paths);
        if (rc < 0) return rc;
    }
    return 0;
}

static int ward__condition(ward__ctx_t *c, const ward__node_t *n, const char *path,
                           Ward__V1__Condition **out)
{
    static const char *const fields[] = {"key", "values"};
    static const char hdr[] = "request.headers[";
    const size_t hlen = sizeof(hdr) - 1;
    const ward__node_t *f[2];
    char sub[WARD__PATH_MAX];
    int rc = ward__fields(c, n, path, fields, 2, f);
    if (rc < 0) return rc;
    if ((rc = ward__required(c, n, f[0], path, "key")) < 0) return rc;
    if ((rc = ward__required(c, n, f[1], path, "values")) < 0) return rc;
    ward__path(sub, sizeof(sub), "%s.key", path);
    if ((rc = ward__string(c, f[0], sub, NULL, NULL)) < 0) return rc;

    const ward__node_t *key = f[0];
    ward__check_fn check;
    const char *what;
    if (strcmp(key->s, "source.ip") == 0) {
        check = ward__check_ip;
        what = "address";
    } else if (strcmp(key->s, "time.hour") == 0) {
        check = ward__check_hour;
        what = "hour";
    } else if (key->len > hlen + 1 && memcmp(key->s, hdr, hlen) == 0 &&
               key->s[key->len - 1] == ']') {
        const char *why = ward__check_header_name(key->s + hlen, key->len - hlen - 1);
        if (why != NULL)
            return ward__fail(c, WARD_EPARSE, key, "%s: invalid key '%.80s': %s", sub, key->s, why);
        check = ward__check_header_value;
        what = "header value";
    } else {
        return ward__fail(c, WARD_EPARSE, key,
                          "%s: unknown key '%.80s' (request.headers[name], source.ip or time.hour)",
                          sub, key->s);
    }

    Ward__V1__Condition *w = ward_malloc(sizeof(*w));
    if (w == NULL) return ward__nomem(c);
    ward__v1__condition__init(w);
    *out = w;
    if ((rc = ward__dup(c, key, &w->key)) < 0) return rc;
    ward__path(sub, sizeof(sub), "%s.values", path);
    return ward__strings(c, f[1], sub, check, what, &w->values, &w->n_values);
}

/* One list-of-messages field of a rule: `build` fills slot i of a zeroed array of n pointers. */
#define WARD__RULE_LIST(c, node, path, name, build, arr, count)                                    \
    do {                                                                                           \
        char sub_[WARD__PATH_MAX];                                                                 \
        ward__path(sub_, sizeof(sub_), "%s." name, path);                                          \
        int rc_ = ward__list(c, node, sub_);                                                       \
        if (rc_ < 0) return rc_;                                                                   \
        arr = ward_calloc((node)->n, sizeof(*(arr)));                                              \
        if ((arr) == NULL) return ward__nomem(c);                                                  \
        count = (node)->n;                                                                         \
        size_t i_ = 0;                                                                             \
        for (size_t k_ = (node)->first; k_; k_ = (c)->v[k_].next, i_++) {                          \
            char item_[WARD__PATH_MAX];                                                            \
            ward__path(item_, sizeof(item_), "%s[%zu]", sub_, i_);                                 \
            rc_ = build(c, &(c)->v[k_], item_, &(arr)[i_]);                                        \
            if (rc_ < 0) return rc_;                                                               \
        }                                                                                          \
    } while (0)

static int ward__rule(ward__ctx_t *c, const ward__node_t *n, const char *path, Ward__V1__Rule **out)
{
    static const char *const fields[] = {"from", "to", "when"};
    const ward__node_t *f[3];
    if (++c->rules > WARD_POLICY_MAX_RULES)
        return ward__fail(c, WARD_ETOOLONG, n, "%s: more than %d rules in one file", path,
                          WARD_POLICY_MAX_RULES);
    int rc = ward__fields(c, n, path, fields, 3, f);
    if (rc < 0) return rc;
    if (rc == 0)
        return ward__fail(c, WARD_EPARSE, n, "%s: empty rule: set at least one of from, to, when",
                          path);
    Ward__V1__Rule *r = ward_malloc(sizeof(*r));
    if (r == NULL) return ward__nomem(c);
    ward__v1__rule__init(r);
    *out = r;
    if (f[0] != NULL) WARD__RULE_LIST(c, f[0], path, "from", ward__source, r->from, r->n_from);
    if (f[1] != NULL) WARD__RULE_LIST(c, f[1], path, "to", ward__operation, r->to, r->n_to);
    if (f[2] != NULL) WARD__RULE_LIST(c, f[2], path, "when", ward__condition, r->when, r->n_when);
    return 0;
}

/* metadata.labels / metadata.annotations: string to string, checked and then ignored. */
static int ward__string_map(ward__ctx_t *c, const ward__node_t *n, const char *path)
{
    char sub[WARD__PATH_MAX];
    int rc = ward__expect(c, n, WARD__N_MAP, path);
    if (rc < 0) return rc;
    if (n->n / 2 > WARD__MAX_META)
        return ward__fail(c, WARD_ETOOLONG, n, "%s: more than %d entries", path, WARD__MAX_META);
    for (size_t k = n->first; k; k = c->v[c->v[k].next].next) {
        const ward__node_t *key = &c->v[k];
        if ((rc = ward__string(c, key, path, NULL, NULL)) < 0) return rc;
        for (size_t j = n->first; j != k; j = c->v[c->v[j].next].next)
            if (c->v[j].len == key->len && memcmp(c->v[j].s, key->s, key->len) == 0)
                return ward__fail(c, WARD_EPARSE, key, "duplicate field '%.80s' in %s", key->s,
                                  path);
        ward__path(sub, sizeof(sub), "%s.%s", path, key->s);
        if ((rc = ward__string(c, &c->v[key->next], sub, NULL, NULL)) < 0) return rc;
    }
    return 0;
}

static int ward__metadata(ward__ctx_t *c, const ward__node_t *n, ward_policy_t *p,
                          const ward__node_t **name)
{
    static const char *const fields[] = {"name", "namespace", "labels", "annotations"};
    const ward__node_t *f[4];
    int rc = ward__fields(c, n, "metadata", fields, 4, f);
    if (rc < 0) return rc;
    if ((rc = ward__required(c, n, f[0], "metadata", "name")) < 0) return rc;
    if ((rc = ward__string(c, f[0], "metadata.name", ward__check_subdomain, "name")) < 0) return rc;
    if ((rc = ward__required(c, n, f[1], "metadata", "namespace")) < 0) return rc;
    rc = ward__string(c, f[1], "metadata.namespace", ward__check_label, "namespace");
    if (rc < 0) return rc;
    if (f[2] != NULL && (rc = ward__string_map(c, f[2], "metadata.labels")) < 0) return rc;
    if (f[3] != NULL && (rc = ward__string_map(c, f[3], "metadata.annotations")) < 0) return rc;
    if ((rc = ward__dup(c, f[0], &p->pb.name)) < 0) return rc;
    *name = f[0];
    return ward__dup(c, f[1], &p->pb.namespace_);
}

static int ward__spec(ward__ctx_t *c, const ward__node_t *n, ward_policy_t *p)
{
    static const char *const fields[] = {"selector", "action", "rules"};
    static const char *const sel_fields[] = {"identity"};
    const ward__node_t *f[3], *sel[1];
    int rc = ward__fields(c, n, "spec", fields, 3, f);
    if (rc < 0) return rc;

    if (f[0] != NULL) {
        if ((rc = ward__fields(c, f[0], "spec.selector", sel_fields, 1, sel)) < 0) return rc;
        if ((rc = ward__required(c, f[0], sel[0], "spec.selector", "identity")) < 0) return rc;
        rc = ward__string(c, sel[0], "spec.selector.identity", ward__check_spiffe, "SPIFFE id");
        if (rc < 0) return rc;
        if ((rc = ward__dup(c, sel[0], &p->pb.selector_identity)) < 0) return rc;
    }

    p->pb.action = WARD__V1__ACTION__ACTION_ALLOW;
    if (f[1] != NULL) {
        if ((rc = ward__string(c, f[1], "spec.action", NULL, NULL)) < 0) return rc;
        if (strcmp(f[1]->s, "ALLOW") == 0)
            p->pb.action = WARD__V1__ACTION__ACTION_ALLOW;
        else if (strcmp(f[1]->s, "DENY") == 0)
            p->pb.action = WARD__V1__ACTION__ACTION_DENY;
        else if (strcmp(f[1]->s, "AUDIT") == 0)
            p->pb.action = WARD__V1__ACTION__ACTION_AUDIT;
        else
            return ward__fail(c, WARD_EPARSE, f[1],
                              "spec.action: must be ALLOW, DENY or AUDIT, got '%.60s'", f[1]->s);
    }

    if (f[2] != NULL)
        WARD__RULE_LIST(c, f[2], "spec", "rules", ward__rule, p->pb.rules, p->pb.n_rules);
    return 0;
}

/* ---- the set -------------------------------------------------------------------------------- */

static int ward__cmp(const char *ns_a, const char *name_a, const char *ns_b, const char *name_b)
{
    int r = strcmp(ns_a, ns_b);
    return r ? r : strcmp(name_a, name_b);
}

/* Index of (ns, name) in the sorted set, or where it would go; *found tells which. */
static size_t ward__find(const ward_policy_set_t *set, const char *ns, const char *name, int *found)
{
    size_t lo = 0, hi = set->count;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const Ward__V1__AuthorizationPolicy *pb = &set->items[mid]->pb;
        int r = ward__cmp(ns, name, pb->namespace_, pb->name);
        if (r == 0) {
            *found = 1;
            return mid;
        }
        if (r < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int ward__insert(ward__ctx_t *c, ward_policy_t *p, const ward__node_t *name)
{
    ward_policy_set_t *set = c->set;
    int found;
    size_t at = ward__find(set, p->pb.namespace_, p->pb.name, &found);
    if (found)
        return ward__fail(c, WARD_EPARSE, name, "policy %s/%s is already defined at %s",
                          p->pb.namespace_, p->pb.name, set->items[at]->origin);
    if (set->count == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        ward_policy_t **items = ward_realloc(set->items, cap * sizeof(*items));
        if (items == NULL) return ward__nomem(c);
        set->items = items;
        set->cap = cap;
    }
    memmove(&set->items[at + 1], &set->items[at], (set->count - at) * sizeof(*set->items));
    set->items[at] = p;
    set->count++;
    p->gen = c->gen;
    snprintf(p->origin, sizeof(p->origin), "%s:%d:%d", c->file, name->line, name->col);
    return 0;
}

/* Drops every policy added by the load numbered gen. */
static void ward__rollback(ward_policy_set_t *set, unsigned gen)
{
    size_t o = 0;
    for (size_t i = 0; i < set->count; i++) {
        if (set->items[i]->gen == gen)
            ward__policy_free(set->items[i]);
        else
            set->items[o++] = set->items[i];
    }
    set->count = o;
}

static int ward__document(ward__ctx_t *c)
{
    static const char *const fields[] = {"apiVersion", "kind", "metadata", "spec"};
    const ward__node_t *root = &c->v[0], *f[4], *name = NULL;
    ward_policy_t *p = NULL;
    if (ward__is_null(root)) return 0; /* an empty document */
    int rc = ward__fields(c, root, "", fields, 4, f);
    if (rc < 0) return rc;
    if ((rc = ward__required(c, root, f[0], "", "apiVersion")) < 0) return rc;
    if ((rc = ward__string(c, f[0], "apiVersion", NULL, NULL)) < 0) return rc;
    if (strcmp(f[0]->s, WARD__API_VERSION) != 0)
        return ward__fail(c, WARD_EPARSE, f[0], "apiVersion: must be '%s', got '%.60s'",
                          WARD__API_VERSION, f[0]->s);
    if ((rc = ward__required(c, root, f[1], "", "kind")) < 0) return rc;
    if ((rc = ward__string(c, f[1], "kind", NULL, NULL)) < 0) return rc;
    if (strcmp(f[1]->s, WARD__KIND) != 0)
        return ward__fail(c, WARD_EPARSE, f[1], "kind: must be '%s', got '%.60s'", WARD__KIND,
                          f[1]->s);
    if ((rc = ward__required(c, root, f[2], "", "metadata")) < 0) return rc;
    if ((rc = ward__required(c, root, f[3], "", "spec")) < 0) return rc;

    p = ward_calloc(1, sizeof(*p));
    if (p == NULL) return ward__nomem(c);
    ward__v1__authorization_policy__init(&p->pb);
    if ((rc = ward__metadata(c, f[2], p, &name)) < 0) goto fail_policy;
    if ((rc = ward__spec(c, f[3], p)) < 0) goto fail_policy;
    if ((rc = ward__insert(c, p, name)) < 0) goto fail_policy;
    return 0;

fail_policy:
    ward__policy_free(p);
    return rc;
}

/* Parses one stream into c->set, tagging what it adds with c->gen; the caller rolls back. */
static int ward__parse(ward__ctx_t *c)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    int rc = 0, done = 0;

    if (c->text_len > WARD_POLICY_MAX_FILE)
        return ward__fail_at(c, WARD_ETOOLONG, 0, 0, "file larger than %d bytes",
                             WARD_POLICY_MAX_FILE);
    if (!yaml_parser_initialize(&parser)) return ward__nomem(c);
    yaml_parser_set_input_string(&parser, (const unsigned char *)c->text, c->text_len);
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = ward__syntax(c, &parser);
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT) {
            if (ev.data.document_start.tag_directives.start !=
                ev.data.document_start.tag_directives.end)
                rc = ward__fail_at(c, WARD_EPARSE, (int)ev.start_mark.line + 1,
                                   (int)ev.start_mark.column + 1,
                                   "YAML %%TAG directives are not allowed");
            yaml_event_delete(&ev);
            if (rc == 0) rc = ward__read_doc(c, &parser);
            if (rc == 0 && c->n > 0) rc = ward__document(c);
            ward__tree_clear(c);
            continue;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    ward__tree_clear(c);
    ward_free(c->v);
    c->v = NULL;
    c->cap = 0;
    yaml_parser_delete(&parser);
    return rc;
}

void ward_policy_set_init(ward_policy_set_t *set)
{
    memset(set, 0, sizeof(*set));
    set->mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY;
}

void ward_policy_set_free(ward_policy_set_t *set)
{
    for (size_t i = 0; i < set->count; i++)
        ward__policy_free(set->items[i]);
    ward_free(set->items);
    set->items = NULL;
    set->count = set->cap = 0;
}

size_t ward_policy_set_count(const ward_policy_set_t *set)
{
    return set->count;
}

const Ward__V1__AuthorizationPolicy *ward_policy_set_get(const ward_policy_set_t *set, size_t i)
{
    return i < set->count ? &set->items[i]->pb : NULL;
}

int ward_policy_parse(const char *text, size_t len, const char *filename, ward_policy_set_t *set,
                      ward_policy_error_t *err)
{
    ward__error_file(err, filename);
    if (text == NULL || set == NULL) return WARD_EINVAL;
    ward__ctx_t c = {.file = filename ? filename : "<input>",
                     .text = text,
                     .text_len = len,
                     .err = err,
                     .set = set,
                     .gen = ++set->gen};
    int rc = ward__parse(&c);
    if (rc < 0) ward__rollback(set, c.gen);
    return rc;
}

/* ---- directories ---------------------------------------------------------------------------- */

static int ward__io_fail(ward_policy_error_t *err, const char *file, int rc, const char *what)
{
    ward__error_file(err, file);
    if (err) snprintf(err->message, sizeof(err->message), "%s: %s", what, ward_strerror(rc));
    return rc;
}

static int ward__policy_name(const char *name)
{
    size_t n = strlen(name);
    if (name[0] == '.') return 0;
    return (n > 5 && strcmp(name + n - 5, ".yaml") == 0) ||
           (n > 4 && strcmp(name + n - 4, ".yml") == 0);
}

static int ward__strcmp_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads a whole file of at most WARD_POLICY_MAX_FILE bytes into *out (ward_free). */
static int ward__read_file(const char *path, const char *label, char **out, size_t *len,
                           ward_policy_error_t *err)
{
    int rc = 0, fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0, cap = WARD_POLICY_MAX_FILE + 1;
    char *buf = NULL;
    struct stat st;
    if (fd < 0) return ward__io_fail(err, label, -errno, "cannot open");
    if (fstat(fd, &st) < 0) {
        rc = ward__io_fail(err, label, -errno, "cannot stat");
        goto close_fd;
    }
    if ((uint64_t)st.st_size < cap) cap = (size_t)st.st_size + 1;
    buf = ward_malloc(cap);
    if (buf == NULL) {
        rc = ward__io_fail(err, label, WARD_ENOMEM, "cannot read");
        goto close_fd;
    }
    for (;;) {
        if (n == cap) {
            if (cap > WARD_POLICY_MAX_FILE) break;
            size_t grow = cap * 2 > WARD_POLICY_MAX_FILE + 1 ? WARD_POLICY_MAX_FILE + 1 : cap * 2;
            char *more = ward_realloc(buf, grow);
            if (more == NULL) {
                rc = ward__io_fail(err, label, WARD_ENOMEM, "cannot read");
                goto free_buf;
            }
            buf = more;
            cap = grow;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = ward__io_fail(err, label, -errno, "cannot read");
            goto free_buf;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    if (n > WARD_POLICY_MAX_FILE) {
        ward__error_file(err, label);
        if (err)
            snprintf(err->message, sizeof(err->message), "file larger than %d bytes",
                     WARD_POLICY_MAX_FILE);
        rc = WARD_ETOOLONG;
        goto free_buf;
    }
    *out = buf;
    *len = n;
    close(fd);
    return 0;

free_buf:
    ward_free(buf);
close_fd:
    close(fd);
    return rc;
}

/* Loads the policy files of the directory at path; errors name them under label (the directory
 * the caller gave, even when path is the ConfigMap data directory behind it). */
static int ward__load_files(const char *path, const char *label, ward_policy_set_t *set,
                            unsigned gen, ward_policy_error_t *err)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    DIR *d = opendir(path);
    if (d == NULL) return ward__io_fail(err, label, -errno, "cannot open directory");

    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (!ward__policy_name(de->d_name)) continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **more = ward_realloc(names, ncap * sizeof(*more));
            if (more == NULL) {
                rc = ward__io_fail(err, label, WARD_ENOMEM, "cannot list");
                goto free_names;
            }
            names = more;
            cap = ncap;
        }
        if ((names[n] = ward_strdup(de->d_name)) == NULL) {
            rc = ward__io_fail(err, label, WARD_ENOMEM, "cannot list");
            goto free_names;
        }
        n++;
    }
    if (errno != 0) {
        rc = ward__io_fail(err, label, -errno, "cannot list directory");
        goto free_names;
    }
    if (n > 1) qsort(names, n, sizeof(*names), ward__strcmp_ptr);

    for (size_t i = 0; i < n && rc == 0; i++) {
        char file[PATH_MAX], shown[PATH_MAX];
        struct stat st;
        char *text = NULL;
        size_t len = 0;
        if (snprintf(file, sizeof(file), "%s/%s", path, names[i]) >= (int)sizeof(file) ||
            snprintf(shown, sizeof(shown), "%s/%s", label, names[i]) >= (int)sizeof(shown)) {
            rc = ward__io_fail(err, label, -ENAMETOOLONG, names[i]);
            break;
        }
        if (stat(file, &st) < 0) {
            int e = errno;
            /* A dangling symlink: a ConfigMap key removed while kubelet updates the links. */
            if (e == ENOENT && lstat(file, &st) == 0 && S_ISLNK(st.st_mode)) continue;
            rc = ward__io_fail(err, shown, -e, "cannot stat");
            break;
        }
        if (!S_ISREG(st.st_mode)) continue;
        if ((rc = ward__read_file(file, shown, &text, &len, err)) < 0) break;
        ward__error_file(err, shown);
        ward__ctx_t c = {
            .file = shown, .text = text, .text_len = len, .err = err, .set = set, .gen = gen};
        rc = ward__parse(&c);
        ward_free(text);
    }

free_names:
    for (size_t i = 0; i < n; i++)
        ward_free(names[i]);
    ward_free(names);
    closedir(d);
    return rc;
}

/* The real path of dir/..data when dir is a Kubernetes ConfigMap volume; 0 or -1 (no ..data). */
static int ward__configmap_data(const char *dir, char *out)
{
    char link[PATH_MAX];
    struct stat st;
    if (snprintf(link, sizeof(link), "%s/..data", dir) >= (int)sizeof(link)) return -1;
    if (lstat(link, &st) < 0 || !S_ISLNK(st.st_mode)) return -1;
    if (realpath(link, out) == NULL) return -1;
    return 0;
}

int ward_policy_load_dir(const char *dir, ward_policy_set_t *set, ward_policy_error_t *err)
{
    char data[PATH_MAX], again[PATH_MAX];
    int rc = 0;
    ward__error_file(err, dir);
    if (dir == NULL || set == NULL) return WARD_EINVAL;
    unsigned gen = ++set->gen;

    for (int attempt = 1;; attempt++) {
        ward__error_file(err, dir);
        if (ward__configmap_data(dir, data) < 0) {
            rc = ward__load_files(dir, dir, set, gen, err);
            break;
        }
        rc = ward__load_files(data, dir, set, gen, err);
        /* Same ..data target afterwards: everything came from one version of the volume. */
        if (attempt == WARD__DIR_ATTEMPTS ||
            (ward__configmap_data(dir, again) == 0 && strcmp(data, again) == 0))
            break;
        ward__rollback(set, gen);
    }
    if (rc < 0) ward__rollback(set, gen);
    return rc;
}

/* ---- snapshots ------------------------------------------------------------------------------ */

/* The namespace of spiffe://<td>/ns/<NS>/sa/<SA>; *ns = NULL for other shapes. Returns 0 or
 * WARD_ESPIFFE. */
static int ward__identity_ns(const char *identity, const char **ns, size_t *ns_len)
{
    ward_spiffe_id_t id;
    *ns = NULL;
    *ns_len = 0;
    if (identity == NULL) return WARD_EINVAL;
    int rc = ward_spiffe_id_parse(identity, strlen(identity), &id, NULL);
    if (rc < 0) return rc;
    const char *p = id.path, *end = id.path + id.path_len;
    if (id.path_len < 4 || memcmp(p, "/ns/", 4) != 0) return 0;
    const char *nsp = p + 4, *slash = memchr(nsp, '/', (size_t)(end - nsp));
    if (slash == NULL || (size_t)(end - slash) < 5 || memcmp(slash, "/sa/", 4) != 0) return 0;
    if (memchr(slash + 4, '/', (size_t)(end - slash - 4)) != NULL) return 0;
    *ns = nsp;
    *ns_len = (size_t)(slash - nsp);
    return 0;
}

static int ward__selects(const Ward__V1__AuthorizationPolicy *pb, const char *identity,
                         const char *ns, size_t ns_len)
{
    if (pb->selector_identity[0] != '\0') return strcmp(pb->selector_identity, identity) == 0;
    return ns != NULL && strlen(pb->namespace_) == ns_len &&
           memcmp(pb->namespace_, ns, ns_len) == 0;
}

int ward_policy_snapshot_for(const ward_policy_set_t *set, const char *identity, uint64_t version,
                             uint8_t **packed, size_t *len)
{
    Ward__V1__PolicySnapshot snap = WARD__V1__POLICY_SNAPSHOT__INIT;
    Ward__V1__AuthorizationPolicy **sel = NULL;
    const char *ns;
    size_t ns_len, n = 0;
    int rc;
    if (set == NULL || identity == NULL || packed == NULL || len == NULL) return WARD_EINVAL;
    if ((rc = ward__identity_ns(identity, &ns, &ns_len)) < 0) return rc;

    sel = ward_malloc((set->count ? set->count : 1) * sizeof(*sel));
    if (sel == NULL) return WARD_ENOMEM;
    for (size_t i = 0; i < set->count; i++)
        if (ward__selects(&set->items[i]->pb, identity, ns, ns_len)) sel[n++] = &set->items[i]->pb;
    snap.version = version;
    snap.n_policies = n;
    snap.policies = sel;
    snap.mesh_default = set->mesh_default;

    size_t size = ward__v1__policy_snapshot__get_packed_size(&snap);
    uint8_t *out = ward_malloc(size ? size : 1);
    if (out == NULL) {
        rc = WARD_ENOMEM;
        goto free_sel;
    }
    *len = ward__v1__policy_snapshot__pack(&snap, out);
    *packed = out;

free_sel:
    ward_free(sel);
    return rc;
}

typedef struct {
    ProtobufCBuffer base; /* first: protobuf-c hands back &base */
    uint64_t h;
} ward__fnv_t;

#define WARD__FNV_OFFSET 0xcbf29ce484222325ULL
#define WARD__FNV_PRIME  0x100000001b3ULL

static void ward__fnv_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    ward__fnv_t *f = (ward__fnv_t *)b;
    for (size_t i = 0; i < len; i++) {
        f->h ^= data[i];
        f->h *= WARD__FNV_PRIME;
    }
}

static void ward__fnv_u64(ward__fnv_t *f, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    ward__fnv_append(&f->base, sizeof(b), b);
}

uint64_t ward_policy_set_hash(const ward_policy_set_t *set, const char *identity)
{
    ward__fnv_t f = {.base = {.append = ward__fnv_append}, .h = WARD__FNV_OFFSET};
    const char *ns;
    size_t ns_len;
    int ok = set != NULL && ward__identity_ns(identity, &ns, &ns_len) == 0;
    for (size_t i = 0; ok && i < set->count; i++) {
        const Ward__V1__AuthorizationPolicy *pb = &set->items[i]->pb;
        if (!ward__selects(pb, identity, ns, ns_len)) continue;
        /* Length-prefixed, so that policy boundaries are part of the digest. */
        ward__fnv_u64(&f, ward__v1__authorization_policy__get_packed_size(pb));
        ward__v1__authorization_policy__pack_to_buffer(pb, &f.base);
    }
    ward__fnv_u64(&f, set ? (uint64_t)set->mesh_default : 0);
    return f.h;
}
