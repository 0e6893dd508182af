/* yaml_json.c — YAML streams <-> jansson values (see ward/yaml_json.h).
 *
 * Reading: libyaml's event parser drives a stack of open collections; each value is attached to
 * the collection on top as soon as it is complete. Anchors record the finished value and the
 * number of nodes in it, aliases insert deep copies, charged to a budget so that a few lines of
 * nested aliases cannot expand into gigabytes. Writing: a depth-first walk producing libyaml
 * emitter events. */
#include "ward/yaml_json.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "ward/alloc.h"
#include "ward/err.h"

#define WARD_YJ_MAX_DEPTH      256
#define WARD_YJ_MAX_NODES      (16u << 20) /* per stream */
#define WARD_YJ_MAX_ALIAS_COPY (1u << 20)  /* nodes created by alias expansion, per stream */

/* ---- scalar resolution (go-yaml v2's YAML 1.1 rules) --------------------------------------- */

static int ward__in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

static const char *const ward__nulls[] = {"", "~", "null", "Null", "NULL", NULL};
static const char *const ward__trues[] = {"y",    "Y",    "yes", "Yes", "YES", "true",
                                          "True", "TRUE", "on",  "On",  "ON",  NULL};
static const char *const ward__falses[] = {"n",     "N",     "no",  "No",  "NO",  "false",
                                           "False", "FALSE", "off", "Off", "OFF", NULL};
/* Floats JSON cannot carry: read as strings, but always written quoted. */
static const char *const ward__specials[] = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf",
                                             "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
                                             ".NaN",  ".NAN",  "<<",    "=",     NULL};

/* Digits of `base`, with an optional sign already consumed; 1 on success. */
static int ward__parse_digits(const char *p, int base, int neg, json_int_t *out)
{
    uint64_t v = 0;
    if (*p == '\0') return 0;
    for (; *p; p++) {
        int d;
        if (*p >= '0' && *p <= '9')
            d = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            d = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F')
            d = *p - 'A' + 10;
        else
            return 0;
        if (d >= base) return 0;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return 0;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return 0;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(json_int_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return 0;
        *out = (json_int_t)v;
    }
    return 1;
}

/* Go's strconv.ParseInt(s, 0, 64) on s with '_' removed. */
static int ward__parse_int(const char *s, json_int_t *out)
{
    int neg = 0;
    if (*s == '+' || *s == '-') neg = *s++ == '-';
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) return ward__parse_digits(s + 2, 16, neg, out);
    if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O')) return ward__parse_digits(s + 2, 8, neg, out);
    if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B')) return ward__parse_digits(s + 2, 2, neg, out);
    if (s[0] == '0' && s[1] != '\0') return ward__parse_digits(s + 1, 8, neg, out);
    return ward__parse_digits(s, 10, neg, out);
}

/* ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ */
static int ward__is_float(const char *s)
{
    const char *p = s;
    size_t digits = 0;
    if (*p == '+' || *p == '-') p++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++, digits++;
        if (digits == 0) return 0;
    } else {
        while (isdigit((unsigned char)*p))
            p++, digits++;
        if (digits == 0) return 0;
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p))
                p++;
        }
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

enum { WARD__R_STRING, WARD__R_NULL, WARD__R_BOOL, WARD__R_INT, WARD__R_FLOAT };

/* How a plain scalar resolves; *i / *d / *b get the value. */
static int ward__resolve(const char *s, size_t len, json_int_t *i, double *d, int *b)
{
    char buf[80];
    size_t n = 0;
    if (strlen(s) != len) return WARD__R_STRING; /* an embedded NUL: only a string holds it */
    if (ward__in_list(s, ward__nulls)) return WARD__R_NULL;
    if (ward__in_list(s, ward__trues)) {
        *b = 1;
        return WARD__R_BOOL;
    }
    if (ward__in_list(s, ward__falses)) {
        *b = 0;
        return WARD__R_BOOL;
    }
    if (len >= sizeof(buf) || !(isdigit((unsigned char)s[0]) || strchr("+-._", s[0])))
        return WARD__R_STRING;
    for (size_t k = 0; k < len; k++)
        if (s[k] != '_') buf[n++] = s[k];
    buf[n] = '\0';
    if (ward__parse_int(buf, i)) return WARD__R_INT;
    if (ward__is_float(buf)) {
        errno = 0;
        *d = strtod(buf, NULL);
        if (isfinite(*d)) return WARD__R_FLOAT;
    }
    return WARD__R_STRING;
}

/* Strings a YAML 1.1 reader would not read back as the same string when written plain: what
 * ward__resolve turns into something else, plus what PyYAML resolves further (sexagesimal
 * numbers such as 1:30, timestamps, .inf/.nan, the merge and value keys). */
static int ward__needs_quotes(const char *s, size_t len)
{
    json_int_t i;
    double d;
    int b;
    if (ward__resolve(s, len, &i, &d, &b) != WARD__R_STRING) return 1;
    if (ward__in_list(s, ward__specials)) return 1;
    /* [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)? (sexagesimal int or float) */
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (isdigit((unsigned char)*p)) {
        while (isdigit((unsigned char)*p) || *p == '_')
            p++;
        int groups = 0;
        while (*p == ':' && isdigit((unsigned char)p[1])) {
            p++;
            int k = 0;
            while (isdigit((unsigned char)*p) && k < 2)
                p++, k++;
            groups++;
        }
        if (groups > 0) {
            if (*p == '.') {
                p++;
                while (isdigit((unsigned char)*p) || *p == '_')
                    p++;
            }
            if (*p == '\0') return 1;
        }
    }
    /* Timestamps start with YYYY-M(M)-D(D). */
    if (len >= 8 && isdigit((unsigned char)s[0]) && isdigit((unsigned char)s[1]) &&
        isdigit((unsigned char)s[2]) && isdigit((unsigned char)s[3]) && s[4] == '-' &&
        isdigit((unsigned char)s[5])) {
        const char *q = s + 6;
        if (isdigit((unsigned char)*q)) q++;
        if (*q == '-' && isdigit((unsigned char)q[1])) return 1;
    }
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------- */

typedef struct {
    json_t *node;     /* the open array or object (borrowed: the frame below or the root owns it) */
    char *key;        /* object: the key waiting for its value, or NULL */
    int merge_key;    /* the pending key is a plain << */
    json_t *merges;   /* object: values of << keys, applied at the end (explicit keys win) */
    char *anchor;     /* this collection's anchor, or NULL */
    size_t nodes_at;  /* node count when the collection opened */
    int line, column; /* where it opened */
} ward__frame_t;

typedef struct {
    char *name;
    json_t *value;
    size_t nodes;
} ward__anchor_t;

typedef struct {
    ward__frame_t stack[WARD_YJ_MAX_DEPTH];
    int depth;
    json_t *root; /* the current document's value */
    int have_root;
    ward__anchor_t *anchors;
    size_t nanchors, anchors_cap;
    size_t nodes, alias_nodes;
    int document;
    ward_yaml_error_t *err;
} ward__reader_t;

static int ward__fail(ward__reader_t *r, const yaml_mark_t *m, const char *fmt, const char *arg)
{
    if (r->err) {
        r->err->document = r->document;
        r->err->line = m ? (int)m->line + 1 : 0;
        r->err->column = m ? (int)m->column + 1 : 0;
        snprintf(r->err->message, sizeof(r->err->message), fmt, arg ? arg : "");
    }
    return WARD_EPARSE;
}

static void ward__anchors_clear(ward__reader_t *r)
{
    for (size_t i = 0; i < r->nanchors; i++) {
        ward_free(r->anchors[i].name);
        json_decref(r->anchors[i].value);
    }
    r->nanchors = 0;
}

/* Records an anchor (a later one of the same name shadows the earlier, as YAML says). */
static int ward__anchor_set(ward__reader_t *r, const char *name, json_t *value, size_t nodes)
{
    if (r->nanchors == r->anchors_cap) {
        size_t cap = r->anchors_cap ? r->anchors_cap * 2 : 8;
        ward__anchor_t *a = ward_realloc(r->anchors, cap * sizeof(*a));
        if (a == NULL) return WARD_ENOMEM;
        r->anchors = a;
        r->anchors_cap = cap;
    }
    char *n = ward_strdup(name);
    if (n == NULL) return WARD_ENOMEM;
    r->anchors[r->nanchors].name = n;
    r->anchors[r->nanchors].value = json_incref(value);
    r->anchors[r->nanchors].nodes = nodes;
    r->nanchors++;
    return 0;
}

static const ward__anchor_t *ward__anchor_get(const ward__reader_t *r, const char *name)
{
    for (size_t i = r->nanchors; i-- > 0;)
        if (strcmp(r->anchors[i].name, name) == 0) return &r->anchors[i];
    return NULL;
}

/* Copies the members of src that dst lacks into dst. */
static int ward__merge_into(json_t *dst, json_t *src)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v)
    {
        if (json_object_get(dst, k) != NULL) continue;
        json_t *c = json_deep_copy(v);
        if (c == NULL || json_object_set_new(dst, k, c) < 0) return WARD_ENOMEM;
    }
    return 0;
}

/* Attaches a finished value (reference stolen) to the open collection, or makes it the
 * document's root. */
static int ward__attach(ward__reader_t *r, json_t *v, const yaml_mark_t *m)
{
    if (v == NULL) return WARD_ENOMEM;
    if (r->depth == 0) {
        r->root = v;
        r->have_root = 1;
        return 0;
    }
    ward__frame_t *f = &r->stack[r->depth - 1];
    if (json_is_array(f->node)) return json_array_append_new(f->node, v) < 0 ? WARD_ENOMEM : 0;
    if (f->key == NULL) {
        json_decref(v);
        return ward__fail(r, m, "a mapping key must be a scalar (complex keys are not supported)",
                          NULL);
    }
    int rc = 0;
    if (f->merge_key) {
        if (!json_is_object(v) && !json_is_array(v)) {
            json_decref(v);
            return ward__fail(r, m, "a merge key (<<) needs a mapping or a list of mappings", NULL);
        }
        if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                if (json_is_object(e)) continue;
                json_decref(v);
                return ward__fail(r, m, "a merge key (<<) needs a mapping or a list of mappings",
                                  NULL);
            }
        }
        if (f->merges == NULL && (f->merges = json_array()) == NULL) rc = WARD_ENOMEM;
        if (rc == 0 && json_array_append_new(f->merges, v) < 0) rc = WARD_ENOMEM;
        if (rc < 0) json_decref(v);
    } else if (json_object_get(f->node, f->key) != NULL) {
        json_decref(v);
        rc = ward__fail(r, m, "duplicate key \"%s\"", f->key);
    } else if (json_object_set_new(f->node, f->key, v) < 0) {
        rc = WARD_ENOMEM;
    }
    ward_free(f->key);
    f->key = NULL;
    f->merge_key = 0;
    return rc;
}

static int ward__count(ward__reader_t *r, size_t n, const yaml_mark_t *m)
{
    r->nodes += n;
    if (r->nodes > WARD_YJ_MAX_NODES) return ward__fail(r, m, "too many nodes in the stream", NULL);
    return 0;
}

static int ward__open(ward__reader_t *r, json_t *node, const char *anchor, const yaml_mark_t *m)
{
    if (node == NULL) return WARD_ENOMEM;
    if (r->depth > 0) {
        ward__frame_t *top = &r->stack[r->depth - 1];
        if (json_is_object(top->node) && top->key == NULL) {
            json_decref(node);
            return ward__fail(
                r, m, "a mapping key must be a scalar (complex keys are not supported)", NULL);
        }
    }
    if (r->depth == WARD_YJ_MAX_DEPTH) {
        json_decref(node);
        return ward__fail(r, m, "nested deeper than 256 levels", NULL);
    }
    int rc = ward__count(r, 1, m);
    if (rc < 0) {
        json_decref(node);
        return rc;
    }
    ward__frame_t *f = &r->stack[r->depth++];
    memset(f, 0, sizeof(*f));
    f->node = node;
    f->nodes_at = r->nodes;
    f->line = (int)m->line + 1;
    f->column = (int)m->column + 1;
    if (anchor != NULL && (f->anchor = ward_strdup(anchor)) == NULL) return WARD_ENOMEM;
    return 0;
}

static void ward__frame_free(ward__frame_t *f)
{
    ward_free(f->key);
    ward_free(f->anchor);
    json_decref(f->merges);
    json_decref(f->node);
    memset(f, 0, sizeof(*f));
}

static int ward__close(ward__reader_t *r, const yaml_mark_t *m)
{
    ward__frame_t *f = &r->stack[r->depth - 1];
    int rc = 0;
    if (f->key != NULL) return ward__fail(r, m, "mapping key \"%s\" has no value", f->key);
    if (f->merges != NULL) {
        size_t i, j;
        json_t *e, *x;
        json_array_foreach(f->merges, i, e)
        {
            if (json_is_object(e)) {
                rc = ward__merge_into(f->node, e);
            } else {
                json_array_foreach(e, j, x)
                {
                    if ((rc = ward__merge_into(f->node, x)) < 0) break;
                }
            }
            if (rc < 0) return rc;
        }
    }
    if (f->anchor != NULL &&
        (rc = ward__anchor_set(r, f->anchor, f->node, r->nodes - f->nodes_at + 1)) < 0)
        return rc;
    json_t *node = f->node;
    f->node = NULL;
    ward__frame_free(f);
    r->depth--;
    return ward__attach(r, node, m);
}

static json_t *ward__scalar_value(ward__reader_t *r, const yaml_event_t *ev, int *rc)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    json_int_t i = 0;
    double d = 0;
    int b = 0;
    *rc = 0;
    if (tag != NULL && strncmp(tag, "tag:yaml.org,2002:", 18) == 0) {
        const char *t = tag + 18;
        if (strcmp(t, "str") == 0 || strcmp(t, "binary") == 0 || strcmp(t, "timestamp") == 0)
            return json_stringn(s, len);
        int kind = ward__resolve(s, len, &i, &d, &b);
        if (strcmp(t, "null") == 0 && kind == WARD__R_NULL) return json_null();
        if (strcmp(t, "bool") == 0 && kind == WARD__R_BOOL) return json_boolean(b);
        if (strcmp(t, "int") == 0 && kind == WARD__R_INT) return json_integer(i);
        if (strcmp(t, "float") == 0 && (kind == WARD__R_FLOAT || kind == WARD__R_INT))
            return json_real(kind == WARD__R_INT ? (double)i : d);
        *rc = ward__fail(r, &ev->start_mark, "value does not match its tag %s", tag);
        return NULL;
    }
    if (!plain || (tag != NULL && strcmp(tag, "!") == 0)) return json_stringn(s, len);
    switch (ward__resolve(s, len, &i, &d, &b)) {
    case WARD__R_NULL:
        return json_null();
    case WARD__R_BOOL:
        return json_boolean(b);
    case WARD__R_INT:
        return json_integer(i);
    case WARD__R_FLOAT:
        return json_real(d);
    default:
        return json_stringn(s, len);
    }
}

static int ward__on_scalar(ward__reader_t *r, const yaml_event_t *ev)
{
    int rc = ward__count(r, 1, &ev->start_mark);
    if (rc < 0) return rc;
    if (r->depth > 0) {
        ward__frame_t *f = &r->stack[r->depth - 1];
        if (json_is_object(f->node) && f->key == NULL) {
            /* A key: its text as written (JSON keys are strings). */
            const char *s = (const char *)ev->data.scalar.value;
            size_t len = ev->data.scalar.length;
            if (strlen(s) != len) return ward__fail(r, &ev->start_mark, "a key holds a NUL", NULL);
            f->key = ward_strndup(s, len);
            if (f->key == NULL) return WARD_ENOMEM;
            f->merge_key = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && strcmp(s, "<<") == 0;
            return 0;
        }
    }
    json_t *v = ward__scalar_value(r, ev, &rc);
    if (rc < 0) return rc;
    if (v == NULL) return WARD_ENOMEM;
    const char *anchor = (const char *)ev->data.scalar.anchor;
    if (anchor != NULL && (rc = ward__anchor_set(r, anchor, v, 1)) < 0) {
        json_decref(v);
        return rc;
    }
    return ward__attach(r, v, &ev->start_mark);
}

static int ward__on_alias(ward__reader_t *r, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    const ward__anchor_t *a = ward__anchor_get(r, name);
    if (a == NULL) return ward__fail(r, &ev->start_mark, "undefined alias *%s", name);
    r->alias_nodes += a->nodes;
    if (r->alias_nodes > WARD_YJ_MAX_ALIAS_COPY)
        return ward__fail(r, &ev->start_mark, "aliases expand to too many nodes", NULL);
    int rc = ward__count(r, a->nodes, &ev->start_mark);
    if (rc < 0) return rc;
    if (r->depth > 0) {
        ward__frame_t *f = &r->stack[r->depth - 1];
        if (json_is_object(f->node) && f->key == NULL) {
            if (!json_is_string(a->value))
                return ward__fail(r, &ev->start_mark, "alias *%s used as a key must name a string",
                                  name);
            f->key = ward_strdup(json_string_value(a->value));
            return f->key ? 0 : WARD_ENOMEM;
        }
    }
    return ward__attach(r, json_deep_copy(a->value), &ev->start_mark);
}

int ward_yaml_load_all(const char *text, size_t len, json_t **docs, ward_yaml_error_t *err)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    ward__reader_t *r = ward_calloc(1, sizeof(*r));
    json_t *out = json_array();
    int rc = 0, done = 0;

    if (err) memset(err, 0, sizeof(*err));
    if (r == NULL || out == NULL || !yaml_parser_initialize(&parser)) {
        ward_free(r);
        json_decref(out);
        return WARD_ENOMEM;
    }
    r->err = err;
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    while (!done && rc == 0) {
        if (!yaml_parser_parse(&parser, &ev)) {
            if (parser.error == YAML_MEMORY_ERROR) {
                rc = WARD_ENOMEM;
            } else {
                char msg[200];
                snprintf(msg, sizeof(msg), "%s%s%s",
                         parser.problem ? parser.problem : "syntax error",
                         parser.context ? " " : "", parser.context ? parser.context : "");
                rc = ward__fail(r, &parser.problem_mark, "%s", msg);
            }
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            r->document++;
            r->root = NULL;
            r->have_root = 0;
            ward__anchors_clear(r);
            break;
        case YAML_DOCUMENT_END_EVENT:
            if (json_array_append_new(out, r->have_root ? r->root : json_null()) < 0)
                rc = WARD_ENOMEM;
            r->root = NULL;
            r->have_root = 0;
            break;
        case YAML_MAPPING_START_EVENT:
            rc = ward__open(r, json_object(), (const char *)ev.data.mapping_start.anchor,
                            &ev.start_mark);
            break;
        case YAML_SEQUENCE_START_EVENT:
            rc = ward__open(r, json_array(), (const char *)ev.data.sequence_start.anchor,
                            &ev.start_mark);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            rc = ward__close(r, &ev.start_mark);
            break;
        case YAML_SCALAR_EVENT:
            rc = ward__on_scalar(r, &ev);
            break;
        case YAML_ALIAS_EVENT:
            rc = ward__on_alias(r, &ev);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    while (r->depth > 0)
        ward__frame_free(&r->stack[--r->depth]);
    json_decref(r->root);
    ward__anchors_clear(r);
    ward_free(r->anchors);
    ward_free(r);
    yaml_parser_delete(&parser);
    if (rc < 0) {
        json_decref(out);
        return rc;
    }
    *docs = out;
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------- */

static int ward__write(void *data, unsigned char *buf, size_t size)
{
    ward_strbuf_t *out = data;
    while (size > 0) {
        int n = size > (1u << 30) ? (1 << 30) : (int)size;
        if (ward_strbuf_printf(out, "%.*s", n, (const char *)buf) < 0) return 0;
        buf += n;
        size -= (size_t)n;
    }
    return 1;
}

static int ward__emit(yaml_emitter_t *e, yaml_event_t *ev)
{
    return yaml_emitter_emit(e, ev) ? 0 : WARD_ENOMEM;
}

static int ward__emit_plain(yaml_emitter_t *e, const char *s)
{
    yaml_event_t ev;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 1,
                                      YAML_PLAIN_SCALAR_STYLE))
        return WARD_ENOMEM;
    return ward__emit(e, &ev);
}

static int ward__emit_string(yaml_emitter_t *e, const char *s, size_t len)
{
    yaml_event_t ev;
    int plain_ok = !ward__needs_quotes(s, len);
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
    if (!plain_ok)
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    else if (memchr(s, '\n', len) != NULL)
        style = YAML_LITERAL_SCALAR_STYLE; /* libyaml falls back to quotes where not allowed */
    if (len > INT32_MAX) return WARD_EINVAL;
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)len, plain_ok, 1,
                                      style))
        return WARD_ENOMEM;
    return ward__emit(e, &ev);
}

/* The shortest decimal that reads back as d, always with a '.' or an exponent (so that it stays
 * a float). */
static void ward__format_real(double d, char *buf, size_t size)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d) break;
    }
    if (strpbrk(buf, ".eEn") == NULL && strlen(buf) + 2 < size) strcat(buf, ".0");
}

static int ward__emit_value(yaml_emitter_t *e, const json_t *v)
{
    yaml_event_t ev;
    char num[64];
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        int empty = json_object_size(v) == 0;
        if (!yaml_mapping_start_event_initialize(
                &ev, NULL, NULL, 1, empty ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE))
            return WARD_ENOMEM;
        if ((rc = ward__emit(e, &ev)) < 0) return rc;
        json_object_foreach((json_t *)v, k, x)
        {
            if ((rc = ward__emit_string(e, k, strlen(k))) < 0) return rc;
            if ((rc = ward__emit_value(e, x)) < 0) return rc;
        }
        if (!yaml_mapping_end_event_initialize(&ev)) return WARD_ENOMEM;
        return ward__emit(e, &ev);
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        int empty = json_array_size(v) == 0;
        if (!yaml_sequence_start_event_initialize(
                &ev, NULL, NULL, 1, empty ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE))
            return WARD_ENOMEM;
        if ((rc = ward__emit(e, &ev)) < 0) return rc;
        json_array_foreach(v, i, x)
        {
            if ((rc = ward__emit_value(e, x)) < 0) return rc;
        }
        if (!yaml_sequence_end_event_initialize(&ev)) return WARD_ENOMEM;
        return ward__emit(e, &ev);
    }
    case JSON_STRING:
        return ward__emit_string(e, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return ward__emit_plain(e, num);
    case JSON_REAL:
        ward__format_real(json_real_value(v), num, sizeof(num));
        return ward__emit_plain(e, num);
    case JSON_TRUE:
        return ward__emit_plain(e, "true");
    case JSON_FALSE:
        return ward__emit_plain(e, "false");
    default:
        return ward__emit_plain(e, "null");
    }
}

int ward_yaml_dump_all(const json_t *docs, ward_strbuf_t *out)
{
    yaml_emitter_t e;
    yaml_event_t ev;
    size_t i;
    json_t *doc;
    int rc = 0;
    if (!json_is_array(docs)) return WARD_EINVAL;
    if (!yaml_emitter_initialize(&e)) return WARD_ENOMEM;
    yaml_emitter_set_output(&e, ward__write, out);
    yaml_emitter_set_unicode(&e, 1);
    yaml_emitter_set_width(&e, -1);
    yaml_emitter_set_indent(&e, 2);
    if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) ||
        (rc = ward__emit(&e, &ev)) < 0)
        goto out;
    json_array_foreach(docs, i, doc)
    {
        if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, i == 0)) {
            rc = WARD_ENOMEM;
            goto out;
        }
        if ((rc = ward__emit(&e, &ev)) < 0 || (rc = ward__emit_value(&e, doc)) < 0) goto out;
        if (!yaml_document_end_event_initialize(&ev, 1)) {
            rc = WARD_ENOMEM;
            goto out;
        }
        if ((rc = ward__emit(&e, &ev)) < 0) goto out;
    }
    if (!yaml_stream_end_event_initialize(&ev)) {
        rc = WARD_ENOMEM;
        goto out;
    }
    rc = ward__emit(&e, &ev);
    if (rc == 0 && !yaml_emitter_flush(&e)) rc = WARD_ENOMEM;
out:
    yaml_emitter_delete(&e);
    return rc;
}
