/* fuzz_admin_http.c — the admin endpoint's request parsing (lib/admin.c). admin.c keeps its parser
 * state static inside the libuv connection, so this target reproduces exactly what it does with
 * the bytes: llhttp in HTTP_REQUEST mode with admin.c's settings (on_url collecting the path into
 * a 256-byte buffer and failing with HPE_USER when it would not fit; on_message_complete pausing),
 * reads of at most 2048 bytes (admin.c's input buffer), a 400 once llhttp errs or 8 KiB arrived
 * without a complete request, else the route (GET/HEAD only, query cut, exact path match).
 * Keep it in step with lib/admin.c.
 *
 * Input: one control byte (bytes per read: its value, 0 meaning 2048), then the request bytes. */
#include <llhttp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define ADMIN_MAX_REQUEST 8192
#define ADMIN_MAX_PATH    256
#define ADMIN_INBUF       2048

typedef struct {
    llhttp_t parser;
    llhttp_settings_t settings;
    char path[ADMIN_MAX_PATH];
    size_t path_len;
    size_t total;
    int complete;
    int responded;
    int status;
} admin_conn_t;

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    admin_conn_t *ac = p->data;
    if (ac->path_len + len >= sizeof(ac->path)) return HPE_USER;
    memcpy(ac->path + ac->path_len, at, len);
    ac->path_len += len;
    return 0;
}

static int on_complete(llhttp_t *p)
{
    admin_conn_t *ac = p->data;
    ac->complete = 1;
    return HPE_PAUSED;
}

static void route(admin_conn_t *ac)
{
    int method = llhttp_get_method(&ac->parser);
    ac->responded = 1;
    if (method != HTTP_GET && method != HTTP_HEAD) {
        ac->status = 405;
        return;
    }
    WARD_FUZZ_CHECK(ac->path_len < sizeof(ac->path));
    char *q = memchr(ac->path, '?', ac->path_len);
    size_t plen = q ? (size_t)(q - ac->path) : ac->path_len;
    ac->path[plen] = '\0';
    if (strcmp(ac->path, "/live") == 0 || strcmp(ac->path, "/ready") == 0 ||
        strcmp(ac->path, "/metrics") == 0)
        ac->status = 200;
    else
        ac->status = 404;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t rd = data[0] ? data[0] : ADMIN_INBUF;
    data++;
    size--;

    admin_conn_t ac;
    memset(&ac, 0, sizeof(ac));
    llhttp_settings_init(&ac.settings);
    ac.settings.on_url = on_url;
    ac.settings.on_message_complete = on_complete;
    llhttp_init(&ac.parser, HTTP_REQUEST, &ac.settings);
    ac.parser.data = &ac;

    size_t off = 0;
    while (off < size && !ac.responded) {
        size_t n = size - off < rd ? size - off : rd;
        /* Each read in its own exact-size buffer, so ASan sees a read past what arrived. */
        char *buf = malloc(n);
        if (buf == NULL) abort();
        memcpy(buf, data + off, n);
        off += n;
        ac.total += n;
        llhttp_errno_t e = llhttp_execute(&ac.parser, buf, n);
        free(buf);
        if (ac.complete) {
            route(&ac);
        } else if (e != HPE_OK || ac.total > ADMIN_MAX_REQUEST) {
            ac.responded = 1;
            ac.status = 400;
        }
    }
    WARD_FUZZ_CHECK(!ac.responded || ac.status != 0);
    return 0;
}
