#!/usr/bin/python3
"""Writes the seed corpora of the proxy fuzz targets (fuzz_http1, fuzz_http2, fuzz_sniff).

    /usr/bin/python3 tests/fuzz/make_proxy_seeds.py      (then commit what changed)

Every seed is small and written out here by hand: HTTP/1 requests as text, HTTP/2 frames with a
hand-rolled HPACK encoding (literal fields without indexing, no Huffman), so the bytes stay
readable in this file. The outputs are committed; fuzzing never runs this.

Seed layout (tests/fuzz/proxy_harness.h, ward_ph_fuzz_input): one control byte — bits 0-1: writes
- 1; bits 2-3: how the fake app answers (0 plain, 1 chunked/trailers, 2 early, 3 close); bits
4-6: where the writes are cut; bit 7 (fuzz_sniff only): the TCP port — then the client's bytes.
fuzz_http2 puts the connection preface in front of the bytes itself.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

PLAIN, CHUNKED, EARLY, CLOSE = 0, 1, 2, 3
TCP = 0x80


def ctl(writes=1, app=PLAIN, cuts=0, tcp=False):
    return bytes([(writes - 1) | (app << 2) | (cuts << 4) | (TCP if tcp else 0)])


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- HTTP/1 ----------------------------------------------------------------------------------

def req(method, target, headers=(("Host", "app"),), body=b"", version="1.1"):
    head = "%s %s HTTP/%s\r\n" % (method, target, version)
    head += "".join("%s: %s\r\n" % h for h in headers)
    return head.encode() + b"\r\n" + body


H = (("Host", "app"),)
HTTP1 = {
    "get-public": (ctl(), req("GET", "/public/a")),
    "get-admin": (ctl(), req("GET", "/admin")),
    "get-admin-sub": (ctl(2, EARLY, 3), req("GET", "/admin/users?x=1")),
    "head-public": (ctl(), req("HEAD", "/public/a")),
    "pipelined": (ctl(3, PLAIN, 5), req("GET", "/public/a") + req("GET", "/admin") +
                  req("GET", "/public/b")),
    "pipelined-close": (ctl(2, CLOSE, 1), req("GET", "/public/a") + req("GET", "/public/b")),
    "post-length": (ctl(2, PLAIN, 2), req("POST", "/public/upload",
                                          H + (("Content-Length", "11"),), b"hello world")),
    "post-chunked": (ctl(4, CHUNKED, 6), req("POST", "/public/upload",
                                             H + (("Transfer-Encoding", "chunked"),),
                                             b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n"
                                             b"x-trailer: 1\r\n\r\n")),
    "denied-body-then-next": (ctl(2, PLAIN, 4),
                              req("POST", "/admin", H + (("Content-Length", "5"),), b"abcde") +
                              req("GET", "/public/after")),
    "expect-continue": (ctl(2, EARLY, 1), req("PUT", "/public/f",
                                              H + (("Expect", "100-continue"),
                                                   ("Content-Length", "3")), b"abc")),
    "absolute-form": (ctl(), req("GET", "http://app:8080/public/a?q=1")),
    "absolute-form-admin": (ctl(), req("GET", "HTTP://app/admin")),
    "http10-keepalive": (ctl(), req("GET", "/public/a", (("Connection", "keep-alive"),),
                                    version="1.0") + req("GET", "/public/b", version="1.0")),
    "options-star": (ctl(), req("OPTIONS", "*")),
    "connect": (ctl(), req("CONNECT", "app:443", H)),
    "websocket": (ctl(2, PLAIN, 2), req("GET", "/public/ws",
                                        H + (("Connection", "Upgrade"), ("Upgrade", "websocket"),
                                             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                             ("Sec-WebSocket-Version", "13"))) +
                  b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"),
    "upgrade-h2c": (ctl(), req("GET", "/public/a", H + (("Connection", "Upgrade, HTTP2-Settings"),
                                                        ("Upgrade", "h2c"),
                                                        ("HTTP2-Settings", "AAMAAABkAAQAAP__")))),
    "xfcc-forged": (ctl(), req("GET", "/public/a",
                               H + (("X-Forwarded-Client-Cert",
                                     "By=spiffe://t/a;URI=spiffe://t/ns/x/sa/admin"),))),
    "xfcc-trailer": (ctl(), req("POST", "/public/a", H + (("Transfer-Encoding", "chunked"),),
                                b"2\r\nhi\r\n0\r\nx-forwarded-client-cert: URI=spiffe://t/x\r\n\r\n")),
    "path-dotdot": (ctl(), req("GET", "/public/../admin")),
    "path-encoded-dots": (ctl(), req("GET", "/public/%2e%2E/admin")),
    "path-double-slash": (ctl(), req("GET", "//admin//x")),
    "path-matrix": (ctl(), req("GET", "/admin;jsessionid=1")),
    "path-dotdot-matrix": (ctl(), req("GET", "/public/..;x=1/admin")),
    "path-unreserved": (ctl(), req("GET", "/%61dmin")),
    "path-encoded-semicolon": (ctl(), req("GET", "/public/..%3B/admin")),
    "path-encoded-slash": (ctl(), req("GET", "/public/..%2Fadmin")),
    "path-backslash": (ctl(), req("GET", "/public/..\\admin")),
    "smuggle-cl-te": (ctl(), req("POST", "/public/a", H + (("Content-Length", "4"),
                                                           ("Transfer-Encoding", "chunked")),
                                 b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n")),
    "smuggle-te-te": (ctl(), req("POST", "/public/a", H + (("Transfer-Encoding", "chunked"),
                                                           ("Transfer-Encoding", "identity")),
                                 b"0\r\n\r\n")),
    "smuggle-te-space": (ctl(), b"POST /public/a HTTP/1.1\r\nHost: app\r\n"
                                b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
                                b"GET /admin HTTP/1.1\r\nHost: app\r\n\r\n"),
    "smuggle-obs-fold": (ctl(), b"GET /public/a HTTP/1.1\r\nHost: app\r\nX-A: b\r\n"
                                b" Transfer-Encoding: chunked\r\n\r\n"),
    "smuggle-dup-cl": (ctl(), req("POST", "/public/a", H + (("Content-Length", "0"),
                                                            ("Content-Length", "40")))),
    "smuggle-dup-host": (ctl(), req("GET", "/public/a", H + (("Host", "admin"),))),
    "smuggle-te-http10": (ctl(), req("POST", "/public/a", (("Transfer-Encoding", "chunked"),),
                                     b"0\r\n\r\n", version="1.0")),
    "smuggle-bad-chunk": (ctl(), req("POST", "/public/a", H + (("Transfer-Encoding", "chunked"),),
                                     b"3\r\nabcGET /admin HTTP/1.1\r\n\r\n")),
    "smuggle-bare-lf": (ctl(), b"GET /public/a HTTP/1.1\nHost: app\n\nGET /admin HTTP/1.1\n\n"),
    "no-host": (ctl(), req("GET", "/public/a", ())),
}

# --- HTTP/2 ----------------------------------------------------------------------------------


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + \
        payload


def hpack(fields):
    """Literal header fields without indexing, new names, no Huffman (RFC 7541 6.2.2)."""
    out = b""
    for n, v in fields:
        n, v = n.encode(), v.encode()
        assert len(n) < 127 and len(v) < 127
        out += b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v
    return out


END_STREAM, END_HEADERS = 0x1, 0x4
SETTINGS = frame(4, 0, 0)
SETTINGS_ACK = frame(4, 1, 0)


def headers(sid, fields, end_stream=True, end_headers=True):
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(1, flags, sid, hpack(fields))


def get(path, method="GET", extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", "app"), (":path", path)] + \
        list(extra)


def data(sid, payload, end_stream=True):
    return frame(0, END_STREAM if end_stream else 0, sid, payload)


HTTP2 = {
    "get-public": (ctl(), SETTINGS + headers(1, get("/public/a"))),
    "get-admin": (ctl(), SETTINGS + headers(1, get("/admin"))),
    "head-public": (ctl(), SETTINGS + headers(1, get("/public/a", "HEAD"))),
    "three-streams": (ctl(3, PLAIN, 2), SETTINGS + headers(1, get("/public/x")) +
                      headers(3, get("/admin/x")) + headers(5, get("/public/../admin"))),
    "post-data": (ctl(2, CHUNKED, 1), SETTINGS + headers(1, get("/public/u", "POST"), False) +
                  data(1, b"hello", False) + data(1, b" world")),
    "early-answer": (ctl(2, EARLY, 3), SETTINGS + headers(1, get("/public/u", "POST"), False) +
                     data(1, b"body")),
    "close-app": (ctl(1, CLOSE), SETTINGS + headers(1, get("/public/a")) +
                  headers(3, get("/public/b"))),
    "trailers": (ctl(), SETTINGS + headers(1, get("/public/t", "POST", [("te", "trailers")]),
                                           False) +
                 data(1, b"x", False) + headers(1, [("x-trailer", "1")])),
    "xfcc-forged": (ctl(), SETTINGS + headers(1, get("/public/a", extra=[
        ("x-forwarded-client-cert", "By=spiffe://t/a;URI=spiffe://t/ns/x/sa/admin")]))),
    "xfcc-trailer": (ctl(), SETTINGS + headers(1, get("/public/t", "POST"), False) +
                     data(1, b"x", False) +
                     headers(1, [("x-forwarded-client-cert", "URI=spiffe://t/x")])),
    "continuation": (ctl(2, PLAIN, 4), SETTINGS +
                     frame(1, END_STREAM, 1, hpack(get("/public/c")[:2])) +
                     frame(9, END_HEADERS, 1, hpack(get("/public/c")[2:]))),
    "rst-after-headers": (ctl(), SETTINGS + headers(1, get("/public/a", "POST"), False) +
                          frame(3, 0, 1, struct.pack(">I", 8)) + headers(3, get("/public/b"))),
    "grpc-denied": (ctl(), SETTINGS + headers(1, get("/admin/Svc/Method", "POST", [
        ("content-type", "application/grpc"), ("te", "trailers")]), False) +
                    data(1, b"\x00\x00\x00\x00\x00")),
    "grpc-allowed": (ctl(1, CHUNKED), SETTINGS + headers(1, get("/public/Svc/M", "POST", [
        ("content-type", "application/grpc+proto"), ("te", "trailers")]), False) +
                     data(1, b"\x00\x00\x00\x00\x00")),
    "ping-window": (ctl(), SETTINGS + SETTINGS_ACK + frame(6, 0, 0, b"12345678") +
                    frame(8, 0, 0, struct.pack(">I", 65536)) + headers(1, get("/public/a"))),
    "priority-goaway": (ctl(), SETTINGS + frame(2, 0, 1, struct.pack(">IB", 0, 15)) +
                        headers(1, get("/public/a")) +
                        frame(7, 0, 0, struct.pack(">II", 1, 0))),
    "encoded-dots": (ctl(), SETTINGS + headers(1, get("/public/%2e%2e/admin"))),
    "matrix-dotdot": (ctl(), SETTINGS + headers(1, get("/public/..;/admin"))),
    "connect": (ctl(), SETTINGS + headers(1, [(":method", "CONNECT"), (":authority", "a:1")])),
    "hop-by-hop": (ctl(), SETTINGS + headers(1, get("/public/a", extra=[
        ("connection", "close"), ("upgrade", "h2c")]))),
    "no-end-stream": (ctl(), SETTINGS + headers(1, get("/public/a"), False)),
}

# --- sniffing --------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SNIFF = {
    "http1": (ctl(), req("GET", "/public/a")),
    "http1-split-method": (ctl(3, PLAIN, 1), req("DELETE", "/public/a")),
    "http1-tcp-port": (ctl(tcp=True), req("GET", "/admin")),
    "http2": (ctl(2, PLAIN, 0), PREFACE + SETTINGS + headers(1, get("/public/a"))),
    "http2-split-preface": (ctl(4, PLAIN, 7), PREFACE + SETTINGS),
    "http2-tcp-port": (ctl(tcp=True), PREFACE + SETTINGS + headers(1, get("/admin"))),
    "tcp": (ctl(), b"hello, opaque\n"),
    "tcp-tcp-port": (ctl(2, PLAIN, 1, tcp=True), b"hello, opaque\n" * 4),
    "unknown-method": (ctl(), req("PROPFIND", "/public/a")),
    "lowercase-method": (ctl(tcp=True), b"get /admin HTTP/1.1\r\nHost: app\r\n\r\n"),
    "method-prefix-only": (ctl(), b"GE"),
    "preface-prefix-only": (ctl(), PREFACE[:10]),
    "tls-record": (ctl(), b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"),
    "empty": (ctl(), b""),
}


def main():
    for target, seeds in (("http1", HTTP1), ("http2", HTTP2), ("sniff", SNIFF)):
        for name, (c, body) in seeds.items():
            out(target, name, c + body)


if __name__ == "__main__":
    main()
