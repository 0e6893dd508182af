/* ward/log.h — structured JSON log lines on stderr, one write(2) per line.
 *
 *   ward_logline_t l;
 *   if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_failed")) {
 *       ward_log_u64(&l, "conn", id);
 *       ward_log_str(&l, "reason", "expired");
 *       ward_log_end(&l);
 *   }
 *
 * ward_log_begin() returns 0 when the level is filtered out, so nothing is formatted then. Strings
 * are JSON-escaped; a line that would exceed the buffer is truncated and still valid JSON. */
#ifndef WARD_LOG_H
#define WARD_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { WARD_LOG_DEBUG = 0, WARD_LOG_INFO, WARD_LOG_WARN, WARD_LOG_ERROR } ward_log_level_t;

#define WARD_LOGLINE_MAX 2048

typedef struct {
    char buf[WARD_LOGLINE_MAX];
    size_t len;
    int truncated;
} ward_logline_t;

/* Sets the minimum level written (set once at start-up, before threads). */
void ward_log_set_level(ward_log_level_t level);
/* Parses "debug" | "info" | "warn" | "error"; returns 0 or WARD_EINVAL. */
int ward_log_parse_level(const char *s, ward_log_level_t *out);
int ward_log_enabled(ward_log_level_t level);

int ward_log_begin(ward_logline_t *l, ward_log_level_t level, const char *event);
void ward_log_str(ward_logline_t *l, const char *key, const char *value);
void ward_log_strn(ward_logline_t *l, const char *key, const char *value, size_t n);
void ward_log_u64(ward_logline_t *l, const char *key, uint64_t value);
void ward_log_i64(ward_logline_t *l, const char *key, int64_t value);
void ward_log_end(ward_logline_t *l);

/* One-call form for a line with just an event and a message. */
void ward_log_msg(ward_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends `s` JSON-escaped (without quotes) to dst[*len..cap); returns 0 or -1 when it did not fit
 * (what fitted is kept). Also used by the admin endpoint. */
int ward_json_escape(char *dst, size_t cap, size_t *len, const char *s, size_t n);

#endif
