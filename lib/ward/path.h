/* ward/path.h — request-target normalisation (DESIGN.md, "Policy"): the path a policy is matched
 * against is the path the app will be sent, so the proxy normalises the target once and forwards
 * the normalised form. Pure functions on caller-owned buffers; no allocation, thread-safe.
 *
 * ward_path_normalize() accepts an origin-form target ("/a/b?q") or an absolute-form one
 * ("http://host:8080/a/b?q", scheme http or https in any case; an empty path becomes "/"), and:
 *   - splits off the query at the first '?', which is kept verbatim (printable ASCII only);
 *   - refuses a fragment ('#'), control characters, space, DEL, bytes >= 0x80, a backslash, an
 *     invalid escape ("%zz", "%4"), and the escapes that would change the path's structure or
 *     meaning once the app decodes them: %2F (slash), %5C (backslash), %00, %3B (semicolon: an
 *     app that decodes it and then drops ";params" would see another path), and %25 followed by
 *     two hex digits (double encoding);
 *   - decodes escapes of unreserved characters (ALPHA DIGIT - . _ ~), so "/%61dmin" is "/admin",
 *     and upper-cases the hex digits of every escape it keeps ("%c3" -> "%C3");
 *   - merges runs of slashes ("//admin" -> "/admin");
 *   - removes dot segments as RFC 3986 section 5.2.4 does ("/a/../b" -> "/b", "/.." -> "/"),
 *     after decoding, so "/%2e%2e/" is a dot segment too.
 * Matrix parameters (";x=1") are kept in the forwarded path; ward_path_match_key() strips them
 * from every segment so that "/admin;x=1" is matched as "/admin" (servers such as Tomcat ignore
 * them; matching without them can only make a DENY broader and an ALLOW narrower).
 *
 * Case is kept: "/Admin" and "/admin" are different paths to ward, as they are to most servers. */
#ifndef WARD_PATH_H
#define WARD_PATH_H

#include <stddef.h>

#define WARD_PATH_MAX 8192 /* longest request-target accepted */

typedef struct {
    size_t len;      /* bytes written to out (path + "?" + query), not counting the NUL */
    size_t path_len; /* bytes of out before the '?' (or len when there is no query) */
    const char *why; /* on failure: static text naming the problem ("encoded slash", ...) */
} ward_path_result_t;

/* Normalises target[0..len) into out (NUL-terminated). out needs len + 2 bytes (normalisation
 * never grows the target; the 2 cover the "/" of an empty absolute-form path and the NUL).
 * Returns 0, WARD_EINVAL (res->why says why: the request gets a 400), WARD_ETOOLONG (len >
 * WARD_PATH_MAX or cap too small). */
int ward_path_normalize(const char *target, size_t len, char *out, size_t cap,
                        ward_path_result_t *res);

/* Writes path[0..len) (a normalised path without query) with every ";params" tail of a segment
 * removed ("/a;x/b;y=1" -> "/a/b") into out (cap >= len + 1, NUL-terminated). Returns the length
 * written. */
size_t ward_path_match_key(const char *path, size_t len, char *out, size_t cap);

#endif
