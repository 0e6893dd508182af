/* log.c — JSON log lines (see ward/log.h). */
#include "ward/log.h"
#include "ward/err.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static ward_log_level_t ward__log_min = WARD_LOG_INFO;
static const char *const ward__level_names[] = {"debug", "info", "warn", "error"};

void ward_log_set_level(ward_log_level_t level)
{
    ward__log_min = level;
}

int ward_log_enabled(ward_log_level_t level)
{
    return level >= ward__log_min;
}

int ward_log_parse_level(const char *s, ward_log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, ward__level_names[i]) == 0) {
            *out = (ward_log_level_t)i;
            return 0;
        }
    }
    return WARD_EINVAL;
}

int ward_json_escape(char *dst, size_t cap, size_t *len, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = *len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[6];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            tmp[k++] = '\\';
            tmp[k++] = (char)c;
        } else if (c == '\n') {
            tmp[k++] = '\\';
            tmp[k++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            tmp[k++] = '\\';
            tmp[k++] = 'u';
            tmp[k++] = '0';
            tmp[k++] = '0';
            tmp[k++] = hex[c >> 4];
            tmp[k++] = hex[c & 15];
        } else {
            tmp[k++] = (char)c;
        }
        if (o + k >= cap) {
            *len = o;
            return -1;
        }
        memcpy(dst + o, tmp, k);
        o += k;
    }
    *len = o;
    return 0;
}

/* Room kept for the closing brace and newline. */
#define WARD_LOG_RESERVE 3

static void ward__log_raw(ward_logline_t *l, const char *s, size_t n)
{
    if (l->truncated) return;
    if (l->len + n + WARD_LOG_RESERVE > sizeof(l->buf)) {
        l->truncated = 1;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void ward__log_key(ward_logline_t *l, const char *key)
{
    ward__log_raw(l, ",\"", 2);
    ward__log_raw(l, key, strlen(key));
    ward__log_raw(l, "\":", 2);
}

int ward_log_begin(ward_logline_t *l, ward_log_level_t level, const char *event)
{
    if (level < ward__log_min) return 0;
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    l->truncated = 0;
    int n = snprintf(l->buf, sizeof(l->buf),
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\",\"level\":\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)tv.tv_usec, ward__level_names[level]);
    l->len = (size_t)n;
    ward_log_str(l, "event", event);
    return 1;
}

void ward_log_strn(ward_logline_t *l, const char *key, const char *value, size_t n)
{
    if (value == NULL) return;
    ward__log_key(l, key);
    ward__log_raw(l, "\"", 1);
    if (!l->truncated) {
        size_t len = l->len;
        if (ward_json_escape(l->buf, sizeof(l->buf) - WARD_LOG_RESERVE - 1, &len, value, n) < 0)
            l->truncated = 1;
        l->len = len;
    }
    /* The closing quote always fits: the escape left room for it. */
    l->buf[l->len++] = '"';
}

void ward_log_str(ward_logline_t *l, const char *key, const char *value)
{
    if (value != NULL) ward_log_strn(l, key, value, strlen(value));
}

void ward_log_u64(ward_logline_t *l, const char *key, uint64_t value)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRIu64, value);
    ward__log_key(l, key);
    ward__log_raw(l, num, (size_t)n);
}

void ward_log_i64(ward_logline_t *l, const char *key, int64_t value)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRId64, value);
    ward__log_key(l, key);
    ward__log_raw(l, num, (size_t)n);
}

void ward_log_end(ward_logline_t *l)
{
    l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    ssize_t r;
    do {
        r = write(STDERR_FILENO, l->buf, l->len);
    } while (r < 0 && errno == EINTR);
}

void ward_log_msg(ward_log_level_t level, const char *event, const char *fmt, ...)
{
    ward_logline_t l;
    if (!ward_log_begin(&l, level, event)) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ward_log_str(&l, "msg", msg);
    ward_log_end(&l);
}
