#!/usr/bin/python3
"""Authorization end to end: every HTTP request (HTTP/1.1 and HTTP/2) and every opaque TCP
connection that reaches the inbound ward-proxy is decided against AuthorizationPolicy.

Set-up per group: three identities (client A spiffe://test.local/ns/shop/sa/web, client B
spiffe://test.local/ns/ops/sa/debug, server spiffe://test.local/ns/shop/sa/orders), an app that
records every request it gets (method, raw target, headers; HTTP/1.1, and h2c since the inbound
forwards HTTP/2 streams to the app as h2c), the server's inbound ward-proxy with --policy DIR and
one outbound ward-proxy per client identity. Requests go through the outbound listeners with raw
sockets and with curl (--http1.1, --http2-prior-knowledge). Every allowed case is checked at the
client (200, the body is the path the app saw) and at the app; every denied case at the client
(403 + x-ward-deny-reason) and at the app (never arrives).

Covered: from.identities (exact, prefix wildcard, '*'), from.namespaces, to.ports, to.methods,
to.paths (exact, "/prefix/*", "*suffix"), when request.headers / source.ip / time.hour, DENY beats
ALLOW, no_allow_match, mesh default (deny as shipped, allow), AUDIT, namespace-wide selectors,
opaque TCP (allowed, not allowed, HTTP-only ALLOW rules, fail-closed DENY), the path-bypass suite
(encodings, dot segments, matrix parameters, absolute form, Host tricks, backslash, double
encoding, fragment, smuggled bodies of denied requests), hot swaps under load (invalid file refused,
traffic unaffected, a denying version within 2 reload intervals, SIGHUP), agent-pushed policy, and
the decision metrics and request_denied log lines.

Uses only the standard library (HPACK for the h2c app through ctypes + the system libnghttp2),
python3-cryptography (certificates), python3-grpcio via agentharness (agent group) and curl."""
import ctypes
import ctypes.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import certs as mk  # noqa: E402

H = "127.0.0.1"
TD = "test.local"
A_ID = "spiffe://test.local/ns/shop/sa/web"
B_ID = "spiffe://test.local/ns/ops/sa/debug"
S_ID = "spiffe://test.local/ns/shop/sa/orders"
IDS = {"A": A_ID, "B": B_ID}
SANITIZED = bool(os.environ.get("WARD_SANITIZED"))
CURL = shutil.which("curl")
DENY_HDR = "x-ward-deny-reason"

r = h.Results()
h.require_binary()
ALL = []    # every ward process started, for the sanitizer scan at the end
EXITS = []  # (name, first args, exit status) of every one stopped with SIGTERM


def slow(seconds):
    """A wait scaled for sanitizer builds (about 3x slower) on top of WARD_TIMEOUT_SCALE."""
    return h.T(seconds) * (3 if SANITIZED else 1)


# --------------------------------------------------------------------------- certificates

def _mint_certs():
    d = h.mkdtemp(prefix="ward-policy-certs-")
    ca, ca_key = mk.mint("ward test root", [], is_ca=True)
    mk.write_pair(d, "ca", ca, ca_key)
    for name, sid in (("web", A_ID), ("debug", B_ID), ("orders", S_ID)):
        c, k = mk.mint(name, [sid], issuer=(ca, ca_key))
        mk.write_pair(d, name, c, k)
    return d


CERTS = _mint_certs()


def ident_args(name):
    j = lambda n: os.path.join(CERTS, n)  # noqa: E731
    return ["--cert", j(name + ".pem"), "--key", j(name + "-key.pem"), "--ca", j("ca.pem")]


# --------------------------------------------------------------------------- HPACK via libnghttp2

class _NV(ctypes.Structure):
    _fields_ = [("name", ctypes.POINTER(ctypes.c_uint8)), ("value", ctypes.POINTER(ctypes.c_uint8)),
                ("namelen", ctypes.c_size_t), ("valuelen", ctypes.c_size_t),
                ("flags", ctypes.c_uint8)]


_NG = None


def _nghttp2():
    global _NG
    if _NG is None:
        name = ctypes.util.find_library("nghttp2") or "libnghttp2.so.14"
        lib = ctypes.CDLL(name)
        lib.nghttp2_hd_inflate_new.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.nghttp2_hd_inflate_new.restype = ctypes.c_int
        lib.nghttp2_hd_inflate_del.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_del.restype = None
        lib.nghttp2_hd_inflate_hd2.argtypes = [ctypes.c_void_p, ctypes.POINTER(_NV),
                                               ctypes.POINTER(ctypes.c_int), ctypes.c_void_p,
                                               ctypes.c_size_t, ctypes.c_int]
        lib.nghttp2_hd_inflate_hd2.restype = ctypes.c_ssize_t
        lib.nghttp2_hd_inflate_end_headers.argtypes = [ctypes.c_void_p]
        lib.nghttp2_hd_inflate_end_headers.restype = ctypes.c_int
        _NG = lib
    return _NG


class _Inflater:
    """One HPACK decoder (one per HTTP/2 connection, used by one thread)."""

    def __init__(self):
        self.lib = _nghttp2()
        self.p = ctypes.c_void_p()
        if self.lib.nghttp2_hd_inflate_new(ctypes.byref(self.p)) != 0:
            raise RuntimeError("nghttp2_hd_inflate_new failed")

    def inflate(self, block):
        buf = ctypes.create_string_buffer(block, len(block))
        base = ctypes.addressof(buf)
        off, out = 0, []
        nv = _NV()
        flags = ctypes.c_int()
        for _ in range(100000):
            flags.value = 0
            n = self.lib.nghttp2_hd_inflate_hd2(self.p, ctypes.byref(nv), ctypes.byref(flags),
                                                ctypes.c_void_p(base + off), len(block) - off, 1)
            if n < 0:
                raise ValueError("HPACK decoding failed: %d" % n)
            off += n
            if flags.value & 0x02:  # EMIT
                out.append((ctypes.string_at(nv.name, nv.namelen).decode("latin-1"),
                            ctypes.string_at(nv.value, nv.valuelen).decode("latin-1")))
            if flags.value & 0x01:  # FINAL
                self.lib.nghttp2_hd_inflate_end_headers(self.p)
                break
            if not flags.value & 0x02 and off >= len(block):
                break
        return out

    def close(self):
        if self.p:
            self.lib.nghttp2_hd_inflate_del(self.p)
            self.p = ctypes.c_void_p()


def _hpack_int(n, bits=7, first=0):
    lim = (1 << bits) - 1
    if n < lim:
        return bytes([first | n])
    out = [first | lim]
    n -= lim
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _hpack_lit(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    return b"\x00" + _hpack_int(len(name)) + name + _hpack_int(len(value)) + value


def _frame(typ, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big") + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# --------------------------------------------------------------------------- the app

class _Reader:
    def __init__(self, sock):
        self.s = sock
        self.buf = bytearray()

    def fill(self):
        try:
            d = self.s.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            d = b""
        if not d:
            return False
        self.buf += d
        return True

    def take(self, n):
        while len(self.buf) < n:
            if not self.fill():
                return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("no %r within %d bytes" % (sep, limit))
            if not self.fill():
                return None

    def rest(self, limit=1 << 24):
        while len(self.buf) < limit and self.fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


class App:
    """The workload: a threaded server speaking HTTP/1.1 and (on a connection that starts with the
    HTTP/2 preface) h2c. Records every request (proto, method, raw target, headers, body) before
    answering 200 with the target it saw as the body. Case-sensitive, no normalisation."""

    def __init__(self, h2c_upgrade=False):
        self.h2c_upgrade = h2c_upgrade  # answer "Upgrade: h2c" with 101 and speak h2 after it
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((H, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addr = h.addr(H, self.port)
        self.lock = threading.Lock()
        self.requests = []
        self.connections = 0
        self.errors = []
        self._stop = threading.Event()
        self._conns = set()
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(h.T(120))
            rd = _Reader(c)
            while len(rd.buf) < len(PREFACE):
                if not rd.fill():
                    break
                if not PREFACE.startswith(bytes(rd.buf[:len(PREFACE)])):
                    break
            if bytes(rd.buf[:len(PREFACE)]) == PREFACE:
                self._serve_h2(c, rd)
            elif rd.buf:
                self._serve_http1(c, rd)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may close an idle upstream connection at any time
        except (OSError, ValueError) as e:
            with self.lock:
                if len(self.errors) < 20:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def _record(self, proto, method, target, headers, body):
        tid = None
        for k, v in headers:
            if k == "x-test-id":
                tid = v
        with self.lock:
            rec = {"seq": len(self.requests) + 1, "proto": proto, "method": method,
                   "target": target, "headers": headers, "body": body, "tid": tid,
                   "time": time.monotonic()}
            self.requests.append(rec)
        return rec

    def _serve_http1(self, c, rd):
        while True:
            head = rd.until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3:
                self._record("http1-bad", "", lines[0].decode("latin-1"), [], b"")
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
            headers = []
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                headers.append((k.decode("latin-1").strip().lower(), v.decode("latin-1").strip()))
            hd = {}
            for k, v in headers:
                hd.setdefault(k, v)
            if hd.get("expect", "").lower() == "100-continue":
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = b""
            if "chunked" in hd.get("transfer-encoding", "").lower():
                while True:
                    sz = rd.until(b"\r\n")
                    if sz is None:
                        return
                    n = int(sz.split(b";")[0].strip(), 16)
                    if n == 0:
                        while True:
                            t = rd.until(b"\r\n")
                            if t is None or t == b"":
                                break
                        break
                    d = rd.take(n + 2)
                    if d is None:
                        return
                    body += d[:n]
            elif "content-length" in hd:
                body = rd.take(int(hd["content-length"]))
                if body is None:
                    return
            rec = self._record("http1", method, target, headers, body)
            if self.h2c_upgrade and hd.get("upgrade", "").lower() == "h2c":
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                          b"Upgrade: h2c\r\n\r\n")
                self._serve_h2(c, rd)
                return
            out = target.encode("latin-1")
            close = "close" in hd.get("connection", "").lower()
            resp = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                    "X-App-Seq: %d\r\n%s\r\n" % (len(out), rec["seq"],
                                                 "Connection: close\r\n" if close else ""))
            c.sendall(resp.encode("latin-1") + (b"" if method == "HEAD" else out))
            if close:
                return

    def _serve_h2(self, c, rd):
        rd.take(len(PREFACE))
        inf = _Inflater()
        try:
            c.sendall(_frame(4, 0, 0))  # our SETTINGS (defaults)
            streams = {}
            while True:
                hdr = rd.take(9)
                if hdr is None:
                    return
                ln, typ, fl = int.from_bytes(hdr[:3], "big"), hdr[3], hdr[4]
                sid = int.from_bytes(hdr[5:9], "big") & 0x7FFFFFFF
                p = rd.take(ln) if ln else b""
                if p is None:
                    return
                if typ == 4:  # SETTINGS
                    if not fl & 1:
                        c.sendall(_frame(4, 1, 0))
                elif typ == 6:  # PING
                    if not fl & 1:
                        c.sendall(_frame(6, 1, 0, p))
                elif typ == 7:  # GOAWAY
                    return
                elif typ == 1:  # HEADERS
                    pad = 0
                    if fl & 0x8:
                        pad, p = p[0], p[1:]
                    if fl & 0x20:
                        p = p[5:]
                    if pad:
                        p = p[:-pad]
                    streams[sid] = {"block": p, "end": bool(fl & 1), "headers": None, "body": b""}
                    if fl & 0x4:
                        self._h2_headers_done(c, inf, streams, sid)
                elif typ == 9:  # CONTINUATION
                    st = streams.get(sid)
                    if st is not None:
                        st["block"] += p
                        if fl & 0x4:
                            self._h2_headers_done(c, inf, streams, sid)
                elif typ == 0:  # DATA
                    if fl & 0x8:
                        p = p[1:len(p) - p[0]]
                    if ln:
                        c.sendall(_frame(8, 0, 0, ln.to_bytes(4, "big")))
                        if not fl & 1:
                            c.sendall(_frame(8, 0, sid, ln.to_bytes(4, "big")))
                    st = streams.get(sid)
                    if st is not None:
                        st["body"] += p
                        if fl & 1:
                            self._h2_respond(c, streams.pop(sid), sid)
        finally:
            inf.close()

    def _h2_headers_done(self, c, inf, streams, sid):
        st = streams[sid]
        st["headers"] = inf.inflate(st["block"])
        if st["end"]:
            self._h2_respond(c, streams.pop(sid), sid)

    def _h2_respond(self, c, st, sid):
        hd = dict(st["headers"])
        method, target = hd.get(":method", ""), hd.get(":path", "")
        rec = self._record("h2", method, target, st["headers"], st["body"])
        out = target.encode("latin-1")
        block = (b"\x88" + _hpack_lit(b"content-type", b"text/plain") +
                 _hpack_lit(b"content-length", str(len(out)).encode()) +
                 _hpack_lit(b"x-app-seq", str(rec["seq"]).encode()))
        if method == "HEAD":
            c.sendall(_frame(1, 0x4 | 0x1, sid, block))
        else:
            c.sendall(_frame(1, 0x4, sid, block) + _frame(0, 0x1, sid, out))

    # -- queries
    def seen(self):
        with self.lock:
            return list(self.requests)

    def by_tid(self, tid):
        return [x for x in self.seen() if x["tid"] == tid]

    def close(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(2)


# --------------------------------------------------------------------------- clients

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def __repr__(self):
        return "<%s %s %r>" % (self.status, self.header(DENY_HDR), self.body[:80])


def _parse_head(blk):
    lines = blk.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers.append((k.decode("latin-1").strip().lower(), v.decode("latin-1").strip()))
    return status, headers


class HttpConn:
    """A raw HTTP/1.1 client connection (keep-alive) to a local port."""

    def __init__(self, port, timeout=10.0):
        self.s = h.connect(H, port, timeout)
        self.s.settimeout(h.T(timeout))
        self.rd = _Reader(self.s)
        self.closed = False

    def send(self, data):
        self.s.sendall(data)

    def request(self, method, target, headers=(), body=None, host="orders", extra=b""):
        lines = ["%s %s HTTP/1.1" % (method, target)]
        if host is not None:
            lines.append("Host: %s" % host)
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        if body is not None:
            lines.append("Content-Length: %d" % len(body))
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"") + extra
        self.send(raw)
        return self.response(head=(method == "HEAD"))

    def response(self, head=False):
        """The next response, or None when the connection closed before one arrived."""
        while True:
            blk = self.rd.until(b"\r\n\r\n")
            if blk is None:
                self.closed = True
                return None
            status, headers = _parse_head(blk)
            if 100 <= status < 200 and status != 101:
                continue
            break
        hd = dict(headers)
        if head or status in (101, 204, 304):
            body = b""
        elif "chunked" in hd.get("transfer-encoding", "").lower():
            body = b""
            while True:
                sz = self.rd.until(b"\r\n")
                if sz is None:
                    raise AssertionError("EOF inside a chunked response")
                n = int(sz.split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rd.until(b"\r\n") not in (None, b""):
                        pass
                    break
                body += self.rd.take(n + 2)[:n]
        elif "content-length" in hd:
            body = self.rd.take(int(hd["content-length"]))
            if body is None:
                raise AssertionError("EOF inside a response body")
        else:
            body = self.rd.rest()
            self.closed = True
        if "close" in hd.get("connection", "").lower():
            self.closed = True
        return Resp(status, headers, body)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def raw_once(port, data, timeout=10.0):
    """Sends raw request bytes on a new connection; returns the first response (or None when the
    connection was closed without one)."""
    c = HttpConn(port, timeout)
    try:
        c.send(data)
        try:
            return c.response(head=data.startswith(b"HEAD "))
        except (ConnectionResetError, BrokenPipeError):
            return None
    finally:
        c.close()


def curl(port, path, h2=False, method=None, headers=(), data=None, timeout=10.0):
    """One request with curl (--path-as-is); returns Resp. Raises if curl itself failed."""
    if CURL is None:
        raise h.SkipTest("curl not installed")
    args = [CURL, "-sS", "-i", "--path-as-is", "--max-time", "%g" % h.T(timeout),
            "--http2-prior-knowledge" if h2 else "--http1.1"]
    if method == "HEAD":
        args.append("--head")
    elif method:
        args += ["-X", method]
    for k, v in headers:
        args += ["-H", "%s: %s" % (k, v)]
    if data is not None:
        args += ["--data-binary", data]
    args.append("http://%s:%d%s" % (H, port, path))
    p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=h.T(timeout) + 10)
    if p.returncode != 0:
        raise AssertionError("curl %s %s failed (exit %d): %s" % (
            "h2" if h2 else "http1.1", path, p.returncode, p.stderr.decode(errors="replace")))
    out = p.stdout
    while True:
        head, sep, rest = out.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError("curl printed no response head: %r" % out[:200])
        status, headers = _parse_head(head)
        out = rest
        if not 100 <= status < 200:
            return Resp(status, headers, out)


# --------------------------------------------------------------------------- policies

def _flow(d):
    return "{" + ", ".join("%s: %s" % (k, json.dumps(v)) for k, v in d.items()) + "}"


def policy(name, rules, action="ALLOW", ns="shop", selector=S_ID):
    """One AuthorizationPolicy document. rules: [{"from": [...], "to": [...], "when": [...]}]."""
    out = ["apiVersion: ward.dev/v1", "kind: AuthorizationPolicy",
           "metadata: {name: %s, namespace: %s}" % (name, ns), "spec:"]
    if selector:
        out.append("  selector: {identity: %s}" % json.dumps(selector))
    out.append("  action: %s" % action)
    out.append("  rules:")
    for rule in rules:
        first = True
        for part in ("from", "to", "when"):
            if part in rule:
                out.append("%s%s: [%s]" % ("  - " if first else "    ", part,
                                            ", ".join(_flow(x) for x in rule[part])))
                first = False
    return "\n".join(out) + "\n"


def docs(*policies):
    return "---\n".join(policies)


def write_policy(d, name, text):
    h.atomic_write(os.path.join(d, name), text.encode())


def policy_version(p):
    return h.metric_value(p.metrics(), "ward_policy_version")


def wait_policy_version(p, above, timeout=5.0):
    h.wait_for(lambda: policy_version(p) > above, timeout, interval=0.05,
               what="%s policy version above %d" % (p.name, above))
    return policy_version(p)


def utc_hour():
    return time.gmtime().tm_hour


# --------------------------------------------------------------------------- the mesh

class Mesh:
    """apps <- inbound (the server identity) <- mTLS <- outbound A / outbound B.

    .port(client, i) is client's plain listener toward the inbound mapping for apps[i]."""

    def __init__(self, policy_dir=None, napps=1, in_args=None, in_extra=(), reload="250ms",
                 apps=None, start=True, in_host=H):
        self.apps = apps if apps is not None else [App() for _ in range(napps)]
        self.own_apps = apps is None
        self.in_ports = [h.free_port(in_host) for _ in self.apps]
        args = list(in_args) if in_args is not None else ident_args("orders")
        for ip, app in zip(self.in_ports, self.apps):
            args += ["--inbound", "%s=%s" % (h.addr(in_host, ip), app.addr)]
        if policy_dir is not None:
            args += ["--policy", policy_dir]
        if reload:
            args += ["--reload-interval", reload]
        args += ["--workers", "2"] + list(in_extra)
        self.inbound = h.Proxy(args, name="inbound", mesh_default=None)
        self.out, self.outp = {}, {}
        for cl, cert in (("A", "web"), ("B", "debug")):
            ports = [h.free_port(H) for _ in self.apps]
            oargs = ident_args(cert)
            for op, ip in zip(ports, self.in_ports):
                oargs += ["--outbound", "%s=%s,identity=%s" % (h.addr(H, op), h.addr(in_host, ip),
                                                               S_ID)]
            self.outp[cl] = h.Proxy(oargs, name="outbound-" + cl, mesh_default=None)
            self.out[cl] = ports
        self.sent = []  # (tid, client, listener, method, path, status expected, proto)
        if start:
            self.start()

    def start(self):
        ALL.extend([self.inbound] + list(self.outp.values()))
        self.inbound.start()
        for p in self.outp.values():
            p.start()
        return self

    def port(self, client, i=0):
        return self.out[client][i]

    def stop(self):
        for port in [p for ports in self.out.values() for p in ports]:
            c = _CONNS.pop(port, None)
            if c is not None:
                c.close()
        for p in list(self.outp.values()) + [self.inbound]:
            if p.proc is not None and p.proc.poll() is None:
                EXITS.append((p.name, " ".join(p.args[:2]), p.stop(10)))
        if self.own_apps:
            for a in self.apps:
                a.close()

    def seen_everywhere(self):
        out = []
        for a in self.apps:
            out.extend(a.seen())
        return out


_SEQ = itertools.count(1)
TRANSPORTS = ("raw", "curl1", "curl2")
_CONNS = {}


def _keepalive(port):
    """One reusable raw HTTP/1.1 connection per outbound port (reopened after a close)."""
    c = _CONNS.get(port)
    if c is None or c.closed:
        c = _CONNS[port] = HttpConn(port)
    return c


def send(mesh, client, tr, method, path, headers, listener=0):
    port = mesh.port(client, listener)
    if tr == "raw":
        for attempt in (0, 1):
            c = _keepalive(port)
            try:
                resp = c.request(method, path, headers)
            except (ConnectionResetError, BrokenPipeError):
                resp = None
            if resp is not None:
                return resp
            c.close()
            _CONNS.pop(port, None)
            if attempt:
                raise AssertionError("%s %s: connection closed without a response" % (method, path))
    return curl(port, path, h2=(tr == "curl2"), method=method, headers=headers)


def check_cases(mesh, cases, transports=TRANSPORTS):
    """cases: dicts {client, path, expect (200|403), method, headers, reason, policy, listener}.
    Sends each case over every transport; checks client and app; raises with every mismatch."""
    problems = []
    for case in cases:
        for tr in transports:
            tid = "t%d" % next(_SEQ)
            method = case.get("method", "GET")
            listener = case.get("listener", 0)
            hdrs = list(case.get("headers", ())) + [("x-test-id", tid)]
            what = "%s %s %s via %s (listener %d)" % (case["client"], method, case["path"], tr,
                                                      listener)
            try:
                resp = send(mesh, case["client"], tr, method, case["path"], hdrs, listener)
            except AssertionError as e:
                problems.append("%s: %s" % (what, e))
                continue
            proto = "h2" if tr == "curl2" else "http1"
            mesh.sent.append({"tid": tid, "client": case["client"], "listener": listener,
                              "method": method, "path": case["path"], "expect": case["expect"],
                              "proto": proto, "reason": case.get("reason"),
                              "policy": case.get("policy")})
            if resp.status != case["expect"]:
                problems.append("%s: expected %d, got %d (%s: %r, body %r)" % (
                    what, case["expect"], resp.status, DENY_HDR, resp.header(DENY_HDR),
                    resp.body[:100]))
                continue
            if case["expect"] == 200:
                seen = mesh.apps[listener].by_tid(tid)
                if len(seen) != 1:
                    problems.append("%s: allowed, but the app saw it %d times" % (what, len(seen)))
                    continue
                rec = seen[0]
                if rec["target"] != case.get("app_path", case["path"]):
                    problems.append("%s: the app saw target %r" % (what, rec["target"]))
                if rec["method"] != method or rec["proto"] != proto:
                    problems.append("%s: the app saw %s over %s" % (what, rec["method"],
                                                                   rec["proto"]))
                if method != "HEAD" and resp.body != rec["target"].encode("latin-1"):
                    problems.append("%s: body %r is not the app's path" % (what, resp.body[:100]))
                xfcc = [v for k, v in rec["headers"] if k == "x-forwarded-client-cert"]
                if len(xfcc) != 1 or ("URI=" + IDS[case["client"]]) not in xfcc[0]:
                    problems.append("%s: x-forwarded-client-cert at the app is %r" % (what, xfcc))
            else:
                reason = resp.header(DENY_HDR)
                if not reason:
                    problems.append("%s: 403 without %s" % (what, DENY_HDR))
                elif case.get("reason") and case["reason"] not in reason:
                    problems.append("%s: %s is %r, expected %s" % (what, DENY_HDR, reason,
                                                                   case["reason"]))
                for a in mesh.apps:
                    if a.by_tid(tid):
                        problems.append("%s: denied, but it reached the app" % what)
    if problems:
        raise AssertionError("%d problem(s):\n  %s" % (len(problems), "\n  ".join(problems)))


def allow(client, path, **kw):
    return dict(client=client, path=path, expect=200, **kw)


def deny(client, path, **kw):
    return dict(client=client, path=path, expect=403, **kw)


def denial_records(p, since=0):
    return [x for x in p.log_records(since) if x.get("event") == "request_denied"]


def rec_reason(x):
    return (x.get("decision_reason"), x.get("reason"))


def decisions(p):
    """{(decision, policy, peer_identity): count} of inbound ward_authz_decisions_total."""
    out = {}
    for (name, labels), v in p.metrics().items():
        if name != "ward_authz_decisions_total":
            continue
        lab = dict(labels)
        if lab.get("direction") != "inbound":
            continue
        key = (lab.get("decision"), lab.get("policy"), lab.get("peer_identity"))
        out[key] = out.get(key, 0) + v
    return out


def decisions_delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# =========================================================================== group 1: the matrix

MX = {"dir": None, "mesh": None, "log0": 0}
HOUR = utc_hour()


def _matrix_policies(port1, port2):
    now = "%d-%d" % ((HOUR - 1) % 24, (HOUR + 1) % 24)
    other = "%d-%d" % ((HOUR + 4) % 24, (HOUR + 6) % 24)
    # "A-B" with A > B wraps past midnight: wrap_now leaves out only H+2, wrap_other H-1..H+1
    wrap_now = "%d-%d" % ((HOUR + 3) % 24, (HOUR + 1) % 24)
    wrap_other = "%d-%d" % ((HOUR + 2) % 24, (HOUR - 2) % 24)
    return docs(
        policy("ids-exact", [{"from": [{"identities": [A_ID]}], "to": [{"paths": ["/ids/exact"]}]}]),
        policy("ids-prefix", [{"from": [{"identities": ["spiffe://test.local/ns/ops/*"]}],
                               "to": [{"paths": ["/ids/prefix"]}]}]),
        policy("ids-star", [{"from": [{"identities": ["*"]}], "to": [{"paths": ["/ids/star/*"]}]}]),
        policy("ids-star-deny", [{"from": [{"identities": ["*"]}],
                                  "to": [{"paths": ["/ids/star/blocked"]}]}], action="DENY"),
        policy("ns-ops", [{"from": [{"namespaces": ["ops"]}], "to": [{"paths": ["/ns/ops"]}]}]),
        policy("port-one", [{"to": [{"ports": [port1], "paths": ["/port/*"]}]}]),
        policy("methods", [{"to": [{"methods": ["GET", "HEAD"], "paths": ["/methods/*"]}]}]),
        policy("paths", [{"to": [{"paths": ["/exact", "/orders/*", "*.json"]}]}]),
        policy("tenant", [{"to": [{"paths": ["/tenant"]}],
                           "when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}]}]),
        policy("source", [{"to": [{"paths": ["/src/loopback"]}],
                           "when": [{"key": "source.ip", "values": ["127.0.0.0/8"]}]},
                          {"to": [{"paths": ["/src/other"]}],
                           "when": [{"key": "source.ip", "values": ["192.0.2.0/24", "::1/128"]}]}]),
        policy("hour", [{"to": [{"paths": ["/hour/now"]}],
                         "when": [{"key": "time.hour", "values": [now]}]},
                        {"to": [{"paths": ["/hour/other"]}],
                         "when": [{"key": "time.hour", "values": [other]}]},
                        {"to": [{"paths": ["/hour/wrap-now"]}],
                         "when": [{"key": "time.hour", "values": [wrap_now]}]},
                        {"to": [{"paths": ["/hour/wrap-other"]}],
                         "when": [{"key": "time.hour", "values": [wrap_other]}]}]),
        policy("both-allow", [{"from": [{"identities": [A_ID]}], "to": [{"paths": ["/both/*"]}]}]),
        policy("both-deny", [{"from": [{"identities": [A_ID]}],
                              "to": [{"paths": ["/both/denied"]}]}], action="DENY"),
        policy("audited", [{"to": [{"paths": ["/audited/*"]}]}]),
        policy("audit-web", [{"from": [{"identities": [A_ID]}], "to": [{"paths": ["/audited/*"]}]}],
               action="AUDIT"),
        # selects every workload of namespace shop (no selector)
        policy("nswide", [{"to": [{"paths": ["/nswide"]}]}], selector=None),
        # select nobody here: another namespace, another workload
        policy("billing-all", [{"to": [{"paths": ["/billing"]}]}], ns="billing", selector=None),
        policy("other-workload", [{"to": [{"paths": ["/otherwl"]}]}],
               selector="spiffe://test.local/ns/shop/sa/other"),
        # another namespace, but its selector names the server: it applies
        policy("crossns", [{"to": [{"paths": ["/crossns"]}]}], ns="billing"),
        # two ALLOW policies match: the first in (namespace, name) order decides
        policy("dup-b", [{"to": [{"paths": ["/dup"]}]}]),
        policy("dup-a", [{"from": [{"identities": [B_ID]}], "to": [{"paths": ["/never"]}]},
                         {"to": [{"paths": ["/dup"]}]}]),
    )


@r.fixture
def matrix_setup():
    MX["dir"] = d = h.mkdtemp(prefix="ward-policy-mx-")
    apps = [App(), App()]
    write_policy(d, "mesh.yaml", _matrix_policies(apps[0].port, apps[1].port))
    m = MX["mesh"] = Mesh(d, apps=apps, start=False)
    m.own_apps = True
    m.start()
    MX["log0"] = 0
    assert policy_version(m.inbound) >= 1, "no policy version in force"
    assert h.metric_value(m.inbound.metrics(), "ward_policy_valid") == 1


def mx():
    if MX["mesh"] is None:
        raise AssertionError("matrix set-up failed")
    return MX["mesh"]


@r.test
def from_identities_exact_prefix_star():
    check_cases(mx(), [
        allow("A", "/ids/exact", policy="shop/ids-exact"),
        deny("B", "/ids/exact", reason="no_allow_match"),
        allow("B", "/ids/prefix", policy="shop/ids-prefix"),
        deny("A", "/ids/prefix", reason="no_allow_match"),
        allow("A", "/ids/star/x", policy="shop/ids-star"),
        allow("B", "/ids/star/y", policy="shop/ids-star"),
        deny("A", "/ids/star/blocked", reason="denied_by_policy", policy="shop/ids-star-deny"),
        deny("B", "/ids/star/blocked", reason="denied_by_policy", policy="shop/ids-star-deny"),
    ])


@r.test
def from_namespaces():
    check_cases(mx(), [
        allow("B", "/ns/ops", policy="shop/ns-ops"),
        deny("A", "/ns/ops", reason="no_allow_match"),
    ])


@r.test
def to_ports():
    check_cases(mx(), [
        allow("A", "/port/x", listener=0, policy="shop/port-one"),
        deny("A", "/port/x", listener=1, reason="no_allow_match"),
        deny("B", "/port/y", listener=1, reason="no_allow_match"),
    ])


@r.test
def to_methods():
    check_cases(mx(), [
        allow("A", "/methods/x", policy="shop/methods"),
        allow("B", "/methods/x", method="HEAD", policy="shop/methods"),
        deny("A", "/methods/x", method="POST", reason="no_allow_match"),
        deny("A", "/methods/x", method="DELETE", reason="no_allow_match"),
        deny("B", "/methods/x", method="PUT", reason="no_allow_match"),
    ])


@r.test
def to_paths_exact_prefix_suffix():
    check_cases(mx(), [
        allow("A", "/exact", policy="shop/paths"),
        deny("A", "/exact/more", reason="no_allow_match"),
        deny("A", "/exactx", reason="no_allow_match"),
        allow("A", "/orders/1", policy="shop/paths"),
        allow("B", "/orders/a/b/c", policy="shop/paths"),
        deny("A", "/ordersx", reason="no_allow_match"),
        deny("A", "/orders", reason="no_allow_match"),
        allow("A", "/data/x.json", policy="shop/paths"),
        allow("B", "/x.json", policy="shop/paths"),
        allow("A", "/data/x.json?a=b&c=.xml", policy="shop/paths"),  # the query is not the path
        deny("A", "/data/x.jsonp", reason="no_allow_match"),
        deny("A", "/data/x.xml?f=.json", reason="no_allow_match"),
    ])


@r.test
def when_request_header():
    check_cases(mx(), [
        allow("A", "/tenant", headers=[("x-tenant", "acme")], policy="shop/tenant"),
        allow("B", "/tenant", headers=[("X-Tenant", "acme")], policy="shop/tenant"),
        deny("A", "/tenant", headers=[("x-tenant", "other")], reason="no_allow_match"),
        deny("A", "/tenant", headers=[("x-tenant", "ACME")], reason="no_allow_match"),
        deny("A", "/tenant", reason="no_allow_match"),
        # a repeated header matches when any of its values does; one value "acme, x" does not
        allow("A", "/tenant", headers=[("x-tenant", "other"), ("x-tenant", "acme")],
              policy="shop/tenant"),
        deny("B", "/tenant", headers=[("x-tenant", "acme, other")], reason="no_allow_match"),
        deny("B", "/tenant", headers=[("x-tenant2", "acme")], reason="no_allow_match"),
    ])


@r.test
def when_source_ip():
    check_cases(mx(), [
        allow("A", "/src/loopback", policy="shop/source"),
        deny("A", "/src/other", reason="no_allow_match"),
    ])


@r.test
def when_time_hour():
    if (utc_hour() - HOUR) % 24 not in (0, 1):
        raise AssertionError("the UTC hour moved from %d to %d during the test" % (HOUR,
                                                                                 utc_hour()))
    check_cases(mx(), [
        allow("A", "/hour/now", policy="shop/hour"),
        deny("A", "/hour/other", reason="no_allow_match"),
        allow("B", "/hour/wrap-now", policy="shop/hour"),
        deny("B", "/hour/wrap-other", reason="no_allow_match"),
    ])


@r.test
def deny_beats_allow():
    check_cases(mx(), [
        allow("A", "/both/ok", policy="shop/both-allow"),
        deny("A", "/both/denied", reason="denied_by_policy", policy="shop/both-deny"),
        deny("B", "/both/ok", reason="no_allow_match"),
    ])


@r.test
def no_allow_match_and_unselected_policies():
    check_cases(mx(), [
        deny("A", "/nothing", reason="no_allow_match"),
        deny("B", "/", reason="no_allow_match"),
        # policies of another namespace or another workload do not select the server
        deny("A", "/billing", reason="no_allow_match"),
        deny("A", "/otherwl", reason="no_allow_match"),
        # a policy without selector selects every workload of its namespace
        allow("B", "/nswide", policy="shop/nswide"),
        allow("A", "/crossns", policy="billing/crossns"),
        allow("A", "/dup", policy="shop/dup-a"),
    ])


@r.test
def audit_allowed_and_logged():
    m = mx()
    since = m.inbound.stderr_size()
    check_cases(m, [allow("A", "/audited/a", policy="shop/audited"),
                    allow("B", "/audited/b", policy="shop/audited")])
    want_a = len(TRANSPORTS)

    def audited():
        recs = [x for x in m.inbound.log_records(since) if x.get("event") == "request_audited"]
        return recs if len(recs) >= want_a else None
    recs = h.wait_for(audited, 5, what="%d request_audited lines" % want_a)
    time.sleep(0.3)
    recs = [x for x in m.inbound.log_records(since) if x.get("event") == "request_audited"]
    for x in recs:
        assert x.get("audit_policy") == "shop/audit-web", "audit line without its policy: %r" % x
        assert x.get("peer_identity") == A_ID, "audit line for %r (only A's rule is AUDIT): %r" % (
            x.get("peer_identity"), x)
    assert len(recs) == want_a, "%d request_audited lines for %d audited requests: %r" % (
        len(recs), want_a, recs)
    assert not denial_records(m.inbound, since), "an audited request was logged as denied"


@r.test
def keepalive_survives_denials():
    """Denied requests on a keep-alive connection do not end it; bodies of denied requests are
    consumed, never parsed as requests."""
    m = mx()
    c = HttpConn(m.port("A"))
    try:
        for i, (method, path, body, want, reason, pol) in enumerate((
                ("GET", "/nothing", None, 403, "no_allow_match", None),
                ("GET", "/exact", None, 200, None, "shop/paths"),
                ("POST", "/methods/x", b"GET /ids/exact HTTP/1.1\r\nHost: x\r\n\r\n", 403,
                 "no_allow_match", None),
                ("GET", "/orders/after-post", None, 200, None, "shop/paths"),
                ("DELETE", "/both/denied", None, 403, "denied_by_policy", "shop/both-deny"),
                ("GET", "/both/ok", None, 200, None, "shop/both-allow"))):
            tid = "ka%d-%d" % (next(_SEQ), i)
            resp = c.request(method, path, [("x-test-id", tid)], body=body)
            assert resp is not None, "connection closed after request %d (%s %s)" % (i, method, path)
            m.sent.append({"tid": tid, "client": "A", "listener": 0, "method": method, "path": path,
                           "expect": want, "proto": "http1", "reason": reason, "policy": pol})
            assert resp.status == want, "%s %s on a kept-alive connection: %d, expected %d" % (
                method, path, resp.status, want)
            n = len(m.apps[0].by_tid(tid))
            assert n == (1 if want == 200 else 0), "request %s reached the app %d times" % (tid, n)
        smuggled = [x for x in m.apps[0].seen() if x["target"] == "/ids/exact" and x["tid"] is None]
        assert not smuggled, "the body of a denied POST reached the app as a request: %r" % smuggled
    finally:
        c.close()


def _strip_query(p):
    return p.split("?", 1)[0]


@r.test
def matrix_app_never_saw_denied_and_counts_match():
    m = mx()
    time.sleep(0.3)  # a denied request forwarded by mistake would have arrived by now
    seen = {}
    for a in m.apps:
        for x in a.seen():
            if x["tid"]:
                seen.setdefault(x["tid"], []).append(x)
    bad = [s for s in m.sent if s["expect"] == 403 and s["tid"] in seen]
    assert not bad, "denied requests reached the app: %r" % bad
    problems = []
    # ward_authz_decisions_total: one per request sent, under its deciding policy and peer
    want = {}
    for s in m.sent:
        if s["expect"] == 200:
            key = ("allow", s["policy"], IDS[s["client"]])
        else:
            key = ("deny", s["policy"] if s["reason"] == "denied_by_policy" else "",
                   IDS[s["client"]])
        want[key] = want.get(key, 0) + 1
    got = decisions(m.inbound)
    if got != want:
        keys = sorted(set(got) | set(want), key=str)
        problems.append("ward_authz_decisions_total (got != sent):\n    " + "\n    ".join(
            "%s: %s vs %s" % (k, got.get(k, 0), want.get(k, 0)) for k in keys
            if got.get(k, 0) != want.get(k, 0)))
    # one request_denied line per denied request, naming peer, method and path
    want_log, got_log = {}, {}
    for s in m.sent:
        if s["expect"] == 403:
            k = (IDS[s["client"]], s["method"], _strip_query(s["path"]))
            want_log[k] = want_log.get(k, 0) + 1
    for x in denial_records(m.inbound):
        k = (x.get("peer_identity"), x.get("method"), _strip_query(x.get("path") or ""))
        got_log[k] = got_log.get(k, 0) + 1
    if got_log != want_log:
        keys = sorted(set(got_log) | set(want_log), key=str)
        problems.append("request_denied lines (logged vs sent):\n    " + "\n    ".join(
            "%s: %s vs %s" % (k, got_log.get(k, 0), want_log.get(k, 0)) for k in keys
            if got_log.get(k, 0) != want_log.get(k, 0)))
    assert not problems, "\n  ".join(problems)
    assert not m.apps[0].errors and not m.apps[1].errors, "app errors: %r" % (
        m.apps[0].errors + m.apps[1].errors)


@r.test
def matrix_teardown():
    if MX["mesh"] is not None:
        MX["mesh"].stop()
        MX["mesh"] = None
    for c in _CONNS.values():
        c.close()
    _CONNS.clear()


@r.test
def when_source_ip_ipv6():
    """The sidecars talk over ::1: an IPv6 source matches an IPv6 CIDR, not 127.0.0.0/8."""
    if not h.have_ipv6():
        raise h.SkipTest("no IPv6 loopback")
    d = h.mkdtemp(prefix="ward-policy-v6-")
    write_policy(d, "v6.yaml", policy("v6", [
        {"to": [{"paths": ["/v6"]}], "when": [{"key": "source.ip", "values": ["::1/128"]}]},
        {"to": [{"paths": ["/v4"]}], "when": [{"key": "source.ip", "values": ["127.0.0.0/8"]}]}]))
    m = Mesh(d, in_host="::1")
    try:
        check_cases(m, [allow("A", "/v6", policy="shop/v6"),
                        deny("B", "/v4", reason="no_allow_match")], transports=("raw", "curl2"))
    finally:
        m.stop()


# =========================================================================== group 2: metrics

@r.test
def decision_metrics_and_denial_logs():
    d = h.mkdtemp(prefix="ward-policy-metrics-")
    write_policy(d, "p.yaml", docs(
        policy("allow-web", [{"from": [{"identities": [A_ID]}], "to": [{"paths": ["/m/*"]}]}]),
        policy("deny-admin", [{"to": [{"paths": ["/m/nothing-here"]}]},
                              {"to": [{"paths": ["/m/admin"]}]}], action="DENY")))
    m = Mesh(d)
    try:
        before = decisions(m.inbound)
        since = m.inbound.stderr_size()
        plan = ([("A", "/m/x", "raw")] * 3 + [("A", "/m/y", "curl2")] * 2 +
                [("A", "/m/admin", "raw")] * 2 + [("A", "/m/admin", "curl2")] +
                [("B", "/m/x", "curl1")] * 2 + [("B", "/m/x", "curl2")] * 2)
        for cl, path, tr in plan:
            resp = send(m, cl, tr, "GET", path, [("x-test-id", "m%d" % next(_SEQ))])
            want = 200 if (cl == "A" and path != "/m/admin") else 403
            assert resp.status == want, "%s %s via %s: %d, expected %d" % (cl, path, tr,
                                                                         resp.status, want)
        want = {("allow", "shop/allow-web", A_ID): 5, ("deny", "shop/deny-admin", A_ID): 3,
                ("deny", "", B_ID): 4}

        def settled():
            return decisions_delta(decisions(m.inbound), before) == want
        try:
            h.wait_for(settled, 3, what="decision counters")
        except h.Timeout:
            raise AssertionError("ward_authz_decisions_total moved by %r, expected %r" % (
                decisions_delta(decisions(m.inbound), before), want))
        time.sleep(0.2)
        recs = denial_records(m.inbound, since)
        assert len(recs) == 7, "%d request_denied lines for 7 denied requests: %r" % (len(recs),
                                                                                     recs)
        by_admin = [x for x in recs if x.get("policy") == "shop/deny-admin"]
        assert len(by_admin) == 3, "request_denied lines naming shop/deny-admin: %r" % recs
        for x in by_admin:
            assert "denied_by_policy" in rec_reason(x), x
            assert x.get("peer_identity") == A_ID and x.get("path") == "/m/admin", x
            assert x.get("method") == "GET", x
            assert x.get("rule") == 1, "the second rule of deny-admin matched: %r" % x
        nomatch = [x for x in recs if x.get("peer_identity") == B_ID]
        assert len(nomatch) == 4, recs
        for x in nomatch:
            assert "no_allow_match" in rec_reason(x), x
            assert x.get("path") == "/m/x", x
        assert all(x.get("direction") == "inbound" for x in recs), recs
        assert all(x["target"] != "/m/admin" for x in m.apps[0].seen()), "/m/admin reached the app"
        assert len([x for x in m.apps[0].seen() if x["target"] in ("/m/x", "/m/y")]) == 5
    finally:
        m.stop()


# =========================================================================== group 3: mesh default

@r.test
def mesh_default_deny_when_shipped():
    """No --policy, no --mesh-default: the shipped default denies."""
    m = Mesh(None, reload=None)
    try:
        check_cases(m, [deny("A", "/x", reason="mesh_default_deny"),
                        deny("B", "/", reason="mesh_default_deny")])
        d = decisions(m.inbound)
        assert d.get(("deny", "mesh-default", A_ID), 0) == len(TRANSPORTS), d
        recs = denial_records(m.inbound)
        assert recs and all(x.get("policy") == "mesh-default" for x in recs), recs
    finally:
        m.stop()


def _unselected_policies():
    return docs(
        policy("someone-else", [{"to": [{"paths": ["/x"]}]}],
               selector="spiffe://test.local/ns/shop/sa/other"),
        policy("billing-all", [{"to": [{"paths": ["/x"]}]}], ns="billing", selector=None),
        policy("billing-deny", [{"to": [{"paths": ["/y"]}]}], ns="billing", selector=None,
               action="DENY"))


@r.test
def mesh_default_deny_when_no_policy_selects():
    d = h.mkdtemp(prefix="ward-policy-md-")
    write_policy(d, "others.yaml", _unselected_policies())
    m = Mesh(d)
    try:
        check_cases(m, [deny("A", "/x", reason="mesh_default_deny"),
                        deny("B", "/y", reason="mesh_default_deny")])
    finally:
        m.stop()


@r.test
def mesh_default_allow_when_no_policy_selects():
    d = h.mkdtemp(prefix="ward-policy-md-")
    write_policy(d, "others.yaml", _unselected_policies())
    m = Mesh(d, in_extra=["--mesh-default", "allow"])
    try:
        check_cases(m, [allow("A", "/x"), allow("B", "/y")])
        d2 = decisions(m.inbound)
        assert d2.get(("allow", "mesh-default", A_ID), 0) == len(TRANSPORTS), d2
        # ... but once an ALLOW policy selects the server, the default no longer applies
        v = policy_version(m.inbound)
        write_policy(d, "mine.yaml", policy("only-web", [{"from": [{"identities": [A_ID]}]}]))
        wait_policy_version(m.inbound, v)
        check_cases(m, [allow("A", "/y"), deny("B", "/x", reason="no_allow_match")])
    finally:
        m.stop()


# =========================================================================== group 4: opaque TCP

@r.test
def opaque_tcp_decided_per_connection():
    echo = h.EchoServer(H)
    d = h.mkdtemp(prefix="ward-policy-tcp-")
    write_policy(d, "tcp.yaml", policy("tcp-web", [{"from": [{"identities": [A_ID]}],
                                                    "to": [{"ports": [echo.port]}]}]))
    in_args = ident_args("orders")
    m = Mesh(d, apps=[echo], in_args=in_args)
    payload = b"\x00\x01\x02 opaque, not HTTP \xff\xfe\n" * 50

    def allowed(cl):
        h.echo_roundtrip(H, m.port(cl), payload, timeout=10)

    def refused(cl, what):
        before = echo.stats()
        s = h.connect(H, m.port(cl))
        try:
            s.sendall(payload)
            assert h.closed_without_data(s, 10), "%s: opaque connection answered (%s)" % (cl, what)
        finally:
            s.close()
        time.sleep(0.2)
        after = echo.stats()
        assert after["connections"] == before["connections"] and \
            after["bytes"] == before["bytes"], "%s: a denied connection reached the app (%s): " \
            "%r -> %r" % (cl, what, before, after)

    try:
        # 1. ALLOW from A on the app port
        b0, since = decisions(m.inbound), m.inbound.stderr_size()
        allowed("A")
        refused("B", "not allowed")
        h.wait_for(lambda: decisions_delta(decisions(m.inbound), b0) ==
                   {("allow", "shop/tcp-web", A_ID): 1, ("deny", "", B_ID): 1}, 3,
                   what="one allow for A, one deny for B (got %r)" % (
                       decisions_delta(decisions(m.inbound), b0)))
        recs = [x for x in m.inbound.log_records(since) if x.get("event") == "connection_denied"]
        assert len(recs) == 1 and recs[0].get("peer_identity") == B_ID, recs
        assert "no_allow_match" in rec_reason(recs[0]), recs

        # 2. an ALLOW rule that needs HTTP attributes cannot match an opaque connection
        v = policy_version(m.inbound)
        write_policy(d, "tcp.yaml", policy("http-only", [{"from": [{"identities": [A_ID, B_ID]}],
                                                          "to": [{"ports": [echo.port],
                                                                  "paths": ["/x"]}]},
                                                         {"from": [{"identities": [A_ID]}],
                                                          "to": [{"methods": ["GET"]}]}]))
        wait_policy_version(m.inbound, v)
        refused("A", "ALLOW rules with paths/methods only")
        refused("B", "ALLOW rules with paths only")

        # 3. a DENY rule with HTTP parts covers the whole opaque connection (fail closed)
        v = policy_version(m.inbound)
        write_policy(d, "tcp.yaml", docs(
            policy("tcp-any", [{"from": [{"identities": ["*"]}], "to": [{"ports": [echo.port]}]}]),
            policy("deny-debug-secret", [{"from": [{"identities": [B_ID]}],
                                          "to": [{"paths": ["/secret"]}]}], action="DENY")))
        wait_policy_version(m.inbound, v)
        b0 = decisions(m.inbound)
        allowed("A")
        refused("B", "DENY rule with a path")
        h.wait_for(lambda: decisions_delta(decisions(m.inbound), b0) ==
                   {("allow", "shop/tcp-any", A_ID): 1, ("deny", "shop/deny-debug-secret", B_ID): 1},
                   3, what="decisions after the fail-closed DENY")

        # 4. a port the rule does not list
        v = policy_version(m.inbound)
        write_policy(d, "tcp.yaml", policy("tcp-web", [{"from": [{"identities": [A_ID]}],
                                                        "to": [{"ports": [echo.port + 1
                                                                          if echo.port < 65535
                                                                          else 1]}]}]))
        wait_policy_version(m.inbound, v)
        refused("A", "port not listed")
    finally:
        m.stop()
        echo.close()


# =========================================================================== group 5: bypasses

BP = {"mesh": None}


def _app_view(target):
    """What a lenient app could take target for: absolute form stripped, query and fragment cut,
    ';params' dropped from every segment, %XX decoded once, backslashes as slashes, dot segments
    resolved, empty segments dropped."""
    t = target
    low = t.lower()
    if low.startswith("http://") or low.startswith("https://"):
        rest = t.split("://", 1)[1]
        i = rest.find("/")
        t = rest[i:] if i >= 0 else "/"
    for sep in ("?", "#"):
        t = t.split(sep, 1)[0]
    t = urllib.parse.unquote(t, errors="replace").replace("\\", "/")
    out = []
    for seg in t.split("/"):
        seg = seg.split(";", 1)[0]
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


def _is_admin(target):
    v = _app_view(target)
    return v == "/admin" or v.startswith("/admin/")


# (name, raw request bytes (Host added unless the request has one), expected per path.h/README:
#  400 refused, 403 denied, or ("200", app path))
def _req(target, host="orders", extra="", method="GET", version="HTTP/1.1"):
    lines = "%s %s %s\r\n" % (method, target, version)
    if host is not None:
        lines += "Host: %s\r\n" % host
    return (lines + extra + "Connection: close\r\n\r\n").encode("latin-1")


BYPASS_PROBES = [
    ("dot-dot to public", _req("/admin/../public"), (200, "/public")),
    ("plain admin", _req("/admin"), 403),
    ("admin subtree", _req("/admin/users"), 403),
    ("admin trailing slash", _req("/admin/"), 403),
    ("admin with query", _req("/admin?x=/public"), 403),
    ("encoded a", _req("/%61dmin"), 403),
    ("encoded m lower", _req("/ad%6din"), 403),
    ("encoded all", _req("/%61%64%6d%69%6e"), 403),
    ("double slash", _req("//admin"), 403),
    ("many slashes", _req("///admin//users"), 403),
    ("encoded slash after", _req("/admin%2f.."), 400),
    ("encoded slash upper", _req("/admin%2F"), 400),
    ("encoded slash before", _req("/%2fadmin"), 400),
    ("upper case", _req("/ADMIN"), 403),
    ("mixed case", _req("/Admin/users"), 403),
    ("matrix param", _req("/admin;x=1"), 403),
    ("matrix param subtree", _req("/admin;x=1/users"), 403),
    ("public dot-dot encoded slash", _req("/public/..%2fadmin"), 400),
    ("public encoded dot-dot", _req("/public/%2e%2e/admin"), 403),
    ("public encoded dot-dot upper", _req("/public/%2E%2E/admin"), 403),
    ("public half-encoded dot-dot", _req("/public/.%2e/admin"), 403),
    ("public dot-dot", _req("/public/../admin"), 403),
    ("dot segment", _req("/./admin"), 403),
    ("trailing dot", _req("/admin/."), 403),
    ("leading dot-dot", _req("/../admin"), 403),
    ("absolute form", _req("http://orders/admin"), 403),
    ("absolute form upper scheme", _req("HTTP://orders:80/admin/x"), 403),
    ("absolute form public", _req("http://orders/public/a"), (200, "/public/a")),
    ("host evil", _req("/admin", host="evil"), 403),
    ("host with path", _req("/admin", host="orders/public"), 403),
    ("backslash", _req("/public\\..\\admin"), 400),
    ("encoded backslash", _req("/public%5c..%5cadmin"), 400),
    ("double encoding", _req("/%2561dmin"), 400),
    ("double encoded slash", _req("/public/..%252fadmin"), 400),
    ("fragment", _req("/public#/../admin"), 400),
    ("fragment admin", _req("/admin#x"), 400),
    ("nul", _req("/admin%00"), 400),
    ("nul public", _req("/public/%00/../admin"), 400),
    ("HTTP/1.0", _req("/admin", version="HTTP/1.0"), 403),
    ("HEAD", _req("/admin", method="HEAD"), 403),
    ("OPTIONS", _req("/admin", method="OPTIONS"), 403),
]

# Tomcat-style: "..;" is no dot segment for ward, but Tomcat strips ";..." first and then resolves.
MATRIX_DOTDOT_PROBES = [
    ("matrix dot-dot", _req("/public/..;/admin"), None),
    ("matrix dot-dot subtree", _req("/public/..;x=1/admin/users"), None),
    ("matrix dot", _req("/public/.;/../admin"), None),
]

# HTTP/2 :path variants (curl --path-as-is keeps them)
H2_PROBES = ["/admin", "/%61dmin", "//admin", "/./admin", "/public/%2e%2e/admin", "/admin;x=1",
             "/admin%2F", "/public/..%2fadmin", "/%2561dmin", "/ADMIN", "/admin/../public",
             "/public/../admin"]


@r.fixture
def bypass_setup():
    d = BP["dir"] = h.mkdtemp(prefix="ward-policy-bp-")
    write_policy(d, "bp.yaml", docs(
        policy("public", [{"from": [{"identities": ["*"]}],
                           "to": [{"paths": ["/public", "/public/*"]}]}]),
        policy("admin-deny", [{"to": [{"paths": ["/admin", "/admin/*"]}]}], action="DENY")))
    # the app accepts h2c upgrades, as Go's h2c handler, Jetty or Tomcat can be set up to do
    BP["mesh"] = Mesh(d, apps=[App(h2c_upgrade=True)])
    BP["mesh"].own_apps = True


def _bp():
    if BP["mesh"] is None:
        raise AssertionError("bypass set-up failed")
    return BP["mesh"]


def _run_probes(m, probes):
    """Returns (security problems, contract mismatches, per-probe outcomes)."""
    app = m.apps[0]
    sec, contract, outcomes = [], [], []
    for name, raw, want in probes:
        n0 = len(app.seen())
        try:
            resp = raw_once(m.port("A"), raw)
        except (OSError, AssertionError) as e:
            resp = None
            err = repr(e)
        else:
            err = None
        time.sleep(0.05)
        new = app.seen()[n0:]
        got = resp.status if resp is not None else None
        line = raw.split(b"\r\n", 1)[0].decode("latin-1")
        outcomes.append((name, line, got, [x["target"] for x in new]))
        for x in new:
            if _is_admin(x["target"]):
                sec.append("%s: %r reached the app as %r (app view %r), client got %s" % (
                    name, line, x["target"], _app_view(x["target"]), got))
        if got is None:
            sec.append("%s: %r: no response (%s)" % (name, line, err or "closed"))
        elif got in (400, 403):
            if new:
                sec.append("%s: %r answered %d but the app saw %r" % (name, line, got,
                                                                     [x["target"] for x in new]))
            if got == 403 and not resp.header(DENY_HDR):
                contract.append("%s: %r: 403 without %s" % (name, line, DENY_HDR))
        elif got == 200:
            if len(new) != 1:
                sec.append("%s: %r answered 200, app saw %r" % (name, line, new))
        else:
            sec.append("%s: %r: unexpected status %d" % (name, line, got))
        exp = want[0] if isinstance(want, tuple) else want
        if want is None:
            continue
        if got != exp:
            contract.append("%s: %r: expected %d, got %s" % (name, line, exp, got))
        elif isinstance(want, tuple) and new and new[0]["target"] != want[1]:
            contract.append("%s: %r: app saw %r, expected %r" % (name, line, new[0]["target"],
                                                                 want[1]))
    return sec, contract, outcomes


@r.test
def bypass_suite_http1():
    """The security property: nothing under /admin reaches the app; every attempt is 400/403 or
    reaches a non-admin path."""
    m = _bp()
    sec, contract, outcomes = _run_probes(m, BYPASS_PROBES)
    BP["contract"] = contract
    for o in outcomes:
        print("     %-30s %-45r -> %s %s" % o)
    assert not sec, "bypasses:\n  " + "\n  ".join(sec)
    bad = [x["target"] for x in m.apps[0].seen() if _is_admin(x["target"])]
    assert not bad, "the app saw admin paths: %r" % bad


@r.test
def bypass_suite_statuses_as_documented():
    """path.h / README: what is refused is 400, what normalises onto /admin is 403, and
    /admin/../public is forwarded as /public."""
    contract = BP.get("contract")
    if contract is None:
        raise AssertionError("bypass_suite_http1 did not run")
    assert not contract, "\n  ".join(contract)


@r.test
def bypass_matrix_param_dot_segment():
    """A ';params' tail on a '..' segment: ward matches "/public/..;/admin" as "/public/../admin"
    (allowed by /public/*) and forwards "/public/..;/admin", which a Tomcat-style app resolves to
    /admin."""
    m = _bp()
    sec, contract, outcomes = _run_probes(m, MATRIX_DOTDOT_PROBES)
    for o in outcomes:
        print("     %-30s %-45r -> %s %s" % o)
    assert not sec, "bypasses:\n  " + "\n  ".join(sec)


@r.test
def bypass_suite_http2():
    m = _bp()
    app = m.apps[0]
    problems, outcomes = [], []
    for path in H2_PROBES:
        n0 = len(app.seen())
        try:
            resp = curl(m.port("A"), path, h2=True)
            got = resp.status
        except AssertionError as e:
            resp, got = None, "curl: %s" % e
        time.sleep(0.05)
        new = app.seen()[n0:]
        outcomes.append((path, got, [x["target"] for x in new]))
        for x in new:
            if _is_admin(x["target"]):
                problems.append("h2 %r reached the app as %r" % (path, x["target"]))
        if got not in (400, 403, 200):
            problems.append("h2 %r: %s" % (path, got))
        elif got == 200 and len(new) != 1:
            problems.append("h2 %r: 200 but the app saw %r" % (path, new))
        elif got in (400, 403) and new:
            problems.append("h2 %r: %d but the app saw %r" % (path, got, new))
    for o in outcomes:
        print("     h2 %-28r -> %s %s" % o)
    assert not problems, "\n  ".join(problems)
    assert ("/admin/../public", 200, ["/public"]) in outcomes, \
        "h2 /admin/../public was not forwarded as /public: %r" % outcomes


@r.test
def bypass_smuggled_bodies_of_denied_requests():
    """A denied request's body (Content-Length or chunked) is skipped, never parsed as a request;
    the connection goes on with the next request."""
    m = _bp()
    app = m.apps[0]
    smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: orders\r\n\r\n"
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    for name, raw in (
            ("content-length", b"POST /admin/x HTTP/1.1\r\nHost: orders\r\nContent-Length: %d\r\n"
                               b"\r\n%s" % (len(smuggled), smuggled)),
            ("chunked", b"POST /admin/x HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n"
                        b"\r\n%s" % chunk)):
        c = HttpConn(m.port("A"))
        try:
            c.send(raw + b"GET /public/next HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
            r1 = c.response()
            assert r1 is not None and r1.status == 403, "%s: denied POST answered %r" % (name, r1)
            r2 = c.response()
            assert r2 is not None, "%s: connection closed after the denied request" % name
            assert r2.status == 200 and r2.body == b"/public/next", \
                "%s: the request after a denied one got %r" % (name, r2)
            r3 = c.response()
            assert r3 is None, "%s: an extra response: %r" % (name, r3)
        finally:
            c.close()
    bad = [x["target"] for x in app.seen() if _is_admin(x["target"])]
    assert not bad, "smuggled requests reached the app: %r" % bad


def _h2_request_frames(sid, path):
    """A client HEADERS frame (END_STREAM) for GET path: HPACK literals, no Huffman."""
    block = (b"\x82\x86" +                                          # :method GET, :scheme http
             b"\x04" + _hpack_int(len(path)) + path +                # :path (indexed name 4)
             b"\x01" + _hpack_int(6) + b"orders")                    # :authority (indexed name 1)
    return _frame(1, 0x4 | 0x1, sid, block)


@r.test
def bypass_h2c_upgrade_smuggling():
    """h2c smuggling: an HTTP/1.1 request to an allowed path asking "Upgrade: h2c"; if the proxy
    lets the app switch protocols, it only tunnels from then on, and HTTP/2 requests for /admin
    inside the tunnel are never decided. The proxy must not let an h2c upgrade through (strip it
    or refuse it); whatever it does, /admin must not reach the app."""
    m = _bp()
    app = m.apps[0]
    n0 = len(app.seen())
    c = HttpConn(m.port("A"))
    try:
        c.send(b"GET /public/up HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        r1 = c.response()
        if r1 is not None and r1.status == 101:
            c.send(PREFACE + _frame(4, 0, 0) + _h2_request_frames(3, b"/admin/secret") +
                   _h2_request_frames(5, b"/admin"))
        elif r1 is not None and not c.closed:
            c.send(b"GET /admin/secret HTTP/1.1\r\nHost: orders\r\n\r\n")
        time.sleep(0.5)
    finally:
        c.close()
    new = app.seen()[n0:]
    up = [x for x in new if x["target"] == "/public/up"]
    smuggled = [(x["proto"], x["target"]) for x in new if _is_admin(x["target"])]
    assert not smuggled, (
        "h2c smuggling: 'GET /public/up' with 'Upgrade: h2c' was forwarded (app saw upgrade header "
        "%r), the app's 101 answered %r, and then %r reached the app through the tunnel "
        "without a decision" % ([v for x in up for k, v in x["headers"] if k == "upgrade"],
                                r1.status if r1 else None, smuggled))


class H2Conn:
    """A raw HTTP/2 client connection (prior knowledge) through a plain outbound listener; one
    request at a time, any header fields (HPACK literals, any order, duplicates allowed)."""

    def __init__(self, port, timeout=10.0):
        self.timeout = timeout
        self.s = h.connect(H, port, timeout)
        self.s.settimeout(h.T(timeout))
        self.rd = _Reader(self.s)
        self.inf = _Inflater()
        self.sid = -1
        self.dead = None
        self.s.sendall(PREFACE + _frame(4, 0, 0))

    def request(self, fields, body=None):
        """Returns (status, body): status an int, or "reset:CODE", "goaway:CODE", "closed"."""
        if self.dead:
            return self.dead, b""
        self.sid += 2
        sid = self.sid
        block = b"".join(_hpack_lit(n, v) for n, v in fields)
        try:
            if body is None:
                self.s.sendall(_frame(1, 0x4 | 0x1, sid, block))
            else:
                self.s.sendall(_frame(1, 0x4, sid, block) + _frame(0, 0x1, sid, body))
            deadline = time.monotonic() + h.T(self.timeout)
            status, out, hblock = None, b"", None
            while time.monotonic() < deadline:
                hdr = self.rd.take(9)
                if hdr is None:
                    self.dead = "closed"
                    return self.dead, out
                ln, typ, fl = int.from_bytes(hdr[:3], "big"), hdr[3], hdr[4]
                fsid = int.from_bytes(hdr[5:9], "big") & 0x7FFFFFFF
                p = self.rd.take(ln) if ln else b""
                if p is None:
                    self.dead = "closed"
                    return self.dead, out
                if typ == 4 and not fl & 1:
                    self.s.sendall(_frame(4, 1, 0))
                elif typ == 6 and not fl & 1:
                    self.s.sendall(_frame(6, 1, 0, p))
                elif typ == 7:
                    self.dead = "goaway:%d" % int.from_bytes(p[4:8], "big")
                    if status is None:
                        return self.dead, out
                elif typ == 3 and fsid == sid:
                    return "reset:%d" % int.from_bytes(p[:4], "big"), out
                elif typ in (1, 9):
                    if typ == 1:
                        if fl & 0x8:
                            p = p[1:len(p) - p[0]]
                        if fl & 0x20:
                            p = p[5:]
                        hblock, hfl = p, fl
                    else:
                        hblock += p
                    if fl & 0x4:
                        hd = dict(self.inf.inflate(hblock))  # every block, to keep HPACK state
                        if fsid == sid and status is None:
                            st = hd.get(":status", "")
                            status = int(st) if st.isdigit() else st
                        if fsid == sid and hfl & 1:
                            return status, out
                elif typ == 0:
                    if ln:
                        self.s.sendall(_frame(8, 0, 0, ln.to_bytes(4, "big")))
                    if fsid == sid:
                        if fl & 0x8:
                            p = p[1:len(p) - p[0]]
                        out += p
                        if fl & 1:
                            return status, out
            raise h.Timeout("no HTTP/2 answer on stream %d within %.1fs" % (sid,
                                                                           h.T(self.timeout)))
        except (ConnectionResetError, BrokenPipeError):
            self.dead = "closed"
            return self.dead, b""

    def get(self, path, extra=()):
        return self.request(_h2_fields(path.encode("latin-1"), extra=extra))

    def close(self):
        self.inf.close()
        try:
            self.s.close()
        except OSError:
            pass


def raw_h2(port, fields, timeout=5.0):
    """One HTTP/2 request on a new connection; returns its status (see H2Conn.request)."""
    c = H2Conn(port, timeout)
    try:
        return c.request(fields)[0]
    finally:
        c.close()


def _h2_fields(path, method=b"GET", extra=()):
    return [(b":method", method), (b":scheme", b"http"), (b":authority", b"orders"),
            (b":path", path)] + list(extra)


H2_RAW_PROBES = [
    ("backslash", _h2_fields(b"/public\\..\\admin")),
    ("fragment", _h2_fields(b"/admin#x")),
    ("fragment dot-dot", _h2_fields(b"/public#/../admin")),
    ("no leading slash", _h2_fields(b"admin")),
    ("absolute form in :path", _h2_fields(b"http://orders/admin")),
    ("asterisk", _h2_fields(b"*", method=b"OPTIONS")),
    ("empty :path", _h2_fields(b"")),
    ("space", _h2_fields(b"/admin /x")),
    ("matrix dot-dot", _h2_fields(b"/public/..;/admin")),
    ("encoded slash", _h2_fields(b"/public/%2F../admin")),
    ("double encoding", _h2_fields(b"/public/%252e%252e/admin")),
    ("two :path, admin last", [(b":method", b"GET"), (b":scheme", b"http"),
                               (b":authority", b"orders"), (b":path", b"/public/x"),
                               (b":path", b"/admin")]),
    ("two :path, admin first", [(b":method", b"GET"), (b":scheme", b"http"),
                                (b":authority", b"orders"), (b":path", b"/admin"),
                                (b":path", b"/public/x")]),
    ("pseudo after regular", [(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"),
                              (b":path", b"/admin"), (b":authority", b"orders")]),
    ("host header differs", _h2_fields(b"/admin", extra=[(b"host", b"evil")])),
    ("allowed control", _h2_fields(b"/public/raw-h2")),
]


@r.test
def bypass_suite_http2_raw():
    """:path values curl will not send, through the HTTP/2 codec: refused (400 / stream reset) or
    denied; nothing under /admin reaches the app; the control request goes through."""
    m = _bp()
    app = m.apps[0]
    problems, outcomes = [], []
    for name, fields in H2_RAW_PROBES:
        n0 = len(app.seen())
        try:
            got = raw_h2(m.port("A"), fields)
        except (OSError, AssertionError) as e:
            got = "error: %r" % e
        time.sleep(0.05)
        new = [x["target"] for x in app.seen()[n0:]]
        outcomes.append((name, got, new))
        for t in new:
            if _is_admin(t):
                problems.append("h2 %s: %r reached the app (answer %s)" % (name, t, got))
        if got == 200 and len(new) != 1:
            problems.append("h2 %s: 200 but the app saw %r" % (name, new))
        if got in (400, 403) and new:
            problems.append("h2 %s: %s but the app saw %r" % (name, got, new))
        if not (got in (200, 400, 403) or str(got).startswith(("reset:", "goaway:"))):
            problems.append("h2 %s: %r" % (name, got))
    for o in outcomes:
        print("     h2 raw %-26s -> %s %s" % o)
    assert outcomes[-1][1] == 200 and outcomes[-1][2] == ["/public/raw-h2"], \
        "the control request failed: %r" % (outcomes[-1],)
    assert not problems, "\n  ".join(problems)


@r.test
def bypass_refused_websocket_upgrade_goes_on_as_http():
    """An upgrade the app does not accept (it answers 200, not 101): what follows on the connection
    is still HTTP and still decided."""
    m = _bp()
    app = m.apps[0]
    n0 = len(app.seen())
    c = HttpConn(m.port("A"))
    try:
        c.send(b"GET /public/ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        r1 = c.response()
        assert r1 is not None and r1.status == 200, "upgrade request to /public/ws: %r" % r1
        if not c.closed:
            try:
                c.send(b"GET /admin/secret HTTP/1.1\r\nHost: orders\r\n\r\n")
                r2 = c.response()
            except OSError:
                r2 = None
            assert r2 is None or r2.status in (400, 403), "after a refused upgrade: %r" % r2
        time.sleep(0.2)
    finally:
        c.close()
    bad = [x["target"] for x in app.seen()[n0:] if _is_admin(x["target"])]
    assert not bad, "after a refused upgrade, %r reached the app" % bad


@r.test
def bypass_expect_continue_on_denied_request():
    """A denied request with "Expect: 100-continue": the client may send the body anyway; it must
    never be parsed as a request."""
    m = _bp()
    app = m.apps[0]
    n0 = len(app.seen())
    smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: orders\r\n\r\n"
    c = HttpConn(m.port("A"))
    try:
        c.send(b"POST /admin/x HTTP/1.1\r\nHost: orders\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(smuggled))
        r1 = c.response()
        assert r1 is not None and r1.status == 403, "denied POST with Expect: %r" % r1
        try:
            c.send(smuggled + b"GET /public/next HTTP/1.1\r\nHost: orders\r\n\r\n")
            r2 = c.response()
        except OSError:
            r2 = None
        assert r2 is None or (r2.status == 200 and r2.body == b"/public/next"), \
            "after the denied Expect request: %r" % r2
        time.sleep(0.2)
    finally:
        c.close()
    bad = [x["target"] for x in app.seen()[n0:] if _is_admin(x["target"])]
    assert not bad, "the body of a denied Expect: 100-continue request reached the app: %r" % bad


@r.test
def bypass_suite_deny_only():
    """The same probes with an ALLOW for every path: now only the DENY for /admin and /admin/*
    stands between the caller and the admin pages, so a path that is matched differently from
    how the app resolves it shows up as a bypass instead of hiding behind no_allow_match."""
    m = _bp()
    app = m.apps[0]
    d = BP["dir"]
    v = policy_version(m.inbound)
    write_policy(d, "bp.yaml", docs(
        policy("everything", [{"from": [{"identities": ["*"]}], "to": [{"paths": ["*"]}]}]),
        policy("admin-deny", [{"to": [{"paths": ["/admin", "/admin/*"]}]}], action="DENY")))
    wait_policy_version(m.inbound, v)
    since = m.inbound.stderr_size()
    sec, _, outcomes = _run_probes(m, BYPASS_PROBES + MATRIX_DOTDOT_PROBES)
    for name, fields in H2_RAW_PROBES:
        n0 = len(app.seen())
        got = raw_h2(m.port("A"), fields)
        time.sleep(0.05)
        new = [x["target"] for x in app.seen()[n0:]]
        outcomes.append(("h2 " + name, "", got, new))
        sec += ["h2 %s: %r reached the app (answer %s)" % (name, t, got) for t in new
                if _is_admin(t)]
    for path in H2_PROBES:
        n0 = len(app.seen())
        got = curl(m.port("A"), path, h2=True).status
        time.sleep(0.05)
        new = [x["target"] for x in app.seen()[n0:]]
        outcomes.append(("curl h2", path, got, new))
        sec += ["curl h2 %r reached the app as %r (answer %s)" % (path, t, got) for t in new
                if _is_admin(t)]
    for o in outcomes:
        print("     %-30s %-45r -> %s %s" % o)
    denied = denial_records(m.inbound, since)
    assert denied and all(x.get("policy") == "shop/admin-deny" for x in denied), \
        "with an ALLOW for every path, a denial named another policy: %r" % [
            (x.get("path"), x.get("policy"), rec_reason(x)) for x in denied
            if x.get("policy") != "shop/admin-deny"]
    assert not sec, "bypasses with only the DENY in the way:\n  " + "\n  ".join(sec)


@r.test
def bypass_teardown():
    if BP["mesh"] is not None:
        BP["mesh"].stop()
        BP["mesh"] = None


# =========================================================================== group 6: hot swaps

RELOAD_MS = 250


def _load_version(n):
    """Two versions that both allow A on /load/*: they differ elsewhere."""
    if n % 2 == 0:
        return docs(policy("load", [{"from": [{"identities": [A_ID]}],
                                     "to": [{"paths": ["/load/*"]}]}]))
    return docs(policy("load", [{"from": [{"identities": [A_ID, B_ID]}],
                                 "to": [{"paths": ["/load/*", "/other"], "methods": ["GET"]}]}]),
                policy("noise", [{"from": [{"identities": [B_ID]}],
                                  "to": [{"paths": ["/noise"]}]}], action="DENY"))


BROKEN = ("apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, "
          "namespace: shop}\nspec:\n  action: MAYBE\n  rules:\n  - to: [{paths: [\"/load/*\"]}]\n")


class Load:
    """Keep-alive clients (several connections) requesting an allowed path until count or time
    runs out; every response must be 200."""

    def __init__(self, port, conns=4, total=3000, seconds=20.0, pause=0.0, h2conns=0):
        self.port, self.total, self.deadline = port, total, time.monotonic() + h.T(seconds)
        self.pause = pause
        self.first_h2 = conns
        conns += h2conns
        self.lock = threading.Lock()
        self.sent = self.ok = 0
        self.fail = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(conns)]
        for t in self.threads:
            t.start()

    def _take(self):
        with self.lock:
            if self._stop.is_set() or self.sent >= self.total or time.monotonic() > self.deadline:
                return False
            self.sent += 1
            return True

    def _run(self, i):
        c = None
        n = 0
        while self._take():
            n += 1
            path = "/load/%d/%d" % (i, n)
            try:
                if i >= self.first_h2:  # HTTP/2: many streams on one connection
                    if c is None:
                        c = H2Conn(self.port)
                    st, body = c.get(path)
                    if st != 200 or body != path.encode():
                        raise AssertionError("h2 %r %r" % (st, body[:100]))
                else:
                    if c is None or c.closed:
                        c = HttpConn(self.port)
                    resp = c.request("GET", path)
                    if resp is None or resp.status != 200 or resp.body != path.encode():
                        raise AssertionError("%r" % resp)
                with self.lock:
                    self.ok += 1
                if self.pause:
                    time.sleep(self.pause)
            except Exception as e:  # noqa: BLE001
                with self.lock:
                    self.fail.append("%.3f %s: %r" % (time.monotonic(), path, e))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()

    def running(self):
        return any(t.is_alive() for t in self.threads)

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(h.T(30))


@r.test
def policy_swapped_under_load():
    d = h.mkdtemp(prefix="ward-policy-swap-")
    write_policy(d, "main.yaml", _load_version(0))
    m = Mesh(d, reload="%dms" % RELOAD_MS)
    inb = m.inbound
    try:
        v0 = policy_version(inb)
        fail0 = h.metric_value(inb.metrics(), "ward_policy_reloads_total", result="failure")
        # paced so that the 3000 requests span ~30 rewrites (bounded by 20 s in any case)
        load = Load(m.port("A"), conns=3, h2conns=2, total=3000, seconds=20.0, pause=0.008)
        writes, broken_seen, n = 0, None, 0
        t_end = time.monotonic() + h.T(20)
        broken_at = None
        while load.running() and time.monotonic() < t_end:
            n += 1
            write_policy(d, "main.yaml", _load_version(n))
            writes += 1
            if n == 5:  # an invalid file joins the directory: refused, the good set stays
                write_policy(d, "zz-broken.yaml", BROKEN)
                broken_at = time.monotonic()
            if broken_at is not None and broken_seen is None:
                mt = inb.metrics()
                if (h.metric_value(mt, "ward_policy_valid") == 0 and
                        h.metric_value(mt, "ward_policy_reloads_total", result="failure") > fail0):
                    broken_seen = time.monotonic() - broken_at
                    os.unlink(os.path.join(d, "zz-broken.yaml"))
                elif time.monotonic() - broken_at > slow(5):
                    broken_seen = -1
                    os.unlink(os.path.join(d, "zz-broken.yaml"))
            time.sleep(0.2)
        load.stop()
        print("     load: %d requests, %d ok, %d failed; %d policy writes; versions %d -> %d" % (
            load.sent, load.ok, len(load.fail), writes, v0, policy_version(inb)))
        assert not load.fail, "%d of %d requests failed while the policy was swapped:\n  %s" % (
            len(load.fail), load.sent, "\n  ".join(load.fail[:10]))
        assert load.ok >= min(300, load.total), "only %d requests in the window" % load.ok
        assert broken_seen is not None and broken_seen >= 0, \
            "an invalid file did not show as ward_policy_valid 0 + a failed reload within 5 s"
        assert policy_version(inb) > v0 + 3, "the rewrites were not loaded (version %d -> %d)" % (
            v0, policy_version(inb))
        errs = [x for x in inb.log_records() if x.get("event") == "policy_reload_failed"]
        assert errs and "zz-broken.yaml" in json.dumps(errs[0]), \
            "no policy_reload_failed line naming the file: %r" % errs[:2]
        # ... and a good load after it marks the policy valid again. Let the last rewrite load
        # first: the loop alternates two contents, so writing n+1 before n was loaded would put
        # back the installed content (no new version).
        time.sleep(3 * RELOAD_MS / 1000.0)
        v = policy_version(inb)
        write_policy(d, "main.yaml", _load_version(n + 1))
        wait_policy_version(inb, v, slow(3))
        assert h.metric_value(inb.metrics(), "ward_policy_valid") == 1

        # a version that denies the path takes effect within 2 reload intervals, also on an open
        # keep-alive connection
        ka = HttpConn(m.port("A"))
        assert ka.request("GET", "/load/ka").status == 200
        ka2 = H2Conn(m.port("A"))
        assert ka2.get("/load/ka-h2")[0] == 200
        write_policy(d, "main.yaml", docs(policy("load", [{"from": [{"identities": [A_ID]}],
                                                           "to": [{"paths": ["/other"]}]}])))
        t0 = time.monotonic()
        limit = 2 * RELOAD_MS / 1000.0 + slow(0.15)
        first_deny = None
        for _ in range(2000):
            c = HttpConn(m.port("A"))
            try:
                resp = c.request("GET", "/load/probe", host="orders")
            finally:
                c.close()
            if resp is not None and resp.status == 403:
                first_deny = time.monotonic() - t0
                break
            if time.monotonic() - t0 > slow(5):
                break
            time.sleep(0.01)
        assert first_deny is not None, "the denying version did not take effect within 5 s"
        print("     the denying version took effect after %.3fs (reload interval %dms)" % (
            first_deny, RELOAD_MS))
        assert first_deny <= limit, "the denying version took %.3fs (limit: 2 x %dms)" % (
            first_deny, RELOAD_MS)
        for i in range(5):
            c = HttpConn(m.port("A"))
            try:
                resp = c.request("GET", "/load/after%d" % i)
            finally:
                c.close()
            assert resp.status == 403, "flapped back after the deny: %r" % resp
        resp = ka.request("GET", "/load/ka2")
        assert resp is not None and resp.status == 403, \
            "an open keep-alive connection still got %r after the policy change" % resp
        ka.close()
        st = ka2.get("/load/ka2")[0]
        assert st == 403, "an open HTTP/2 connection still got %r after the policy change" % st
        ka2.close()
        time.sleep(0.2)
        late = [x for x in m.apps[0].seen() if x["target"] in ("/load/probe", "/load/ka2") or
                x["target"].startswith("/load/after")]
        assert len(late) == sum(1 for x in late if x["target"] == "/load/probe"), late
    finally:
        m.stop()


@r.test
def invalid_file_removed_marks_policy_valid_again():
    """ward_policy_valid is 1 'when the last policy load succeeded': removing the invalid file
    (the good set is unchanged, so nothing new is installed) must bring it back to 1."""
    d = h.mkdtemp(prefix="ward-policy-valid-")
    write_policy(d, "main.yaml", _load_version(0))
    m = Mesh(d, reload="%dms" % RELOAD_MS)
    inb = m.inbound
    try:
        write_policy(d, "zz-broken.yaml", BROKEN)
        h.wait_for(lambda: h.metric_value(inb.metrics(), "ward_policy_valid") == 0, slow(3),
                   what="ward_policy_valid 0 with an invalid file")
        assert send(m, "A", "raw", "GET", "/load/x", []).status == 200, "traffic affected"
        f1 = h.metric_value(inb.metrics(), "ward_policy_reloads_total", result="failure")
        assert f1 >= 1
        os.unlink(os.path.join(d, "zz-broken.yaml"))
        try:
            h.wait_for(lambda: h.metric_value(inb.metrics(), "ward_policy_valid") == 1,
                       slow(4 * RELOAD_MS / 1000.0 + 1),
                       what="ward_policy_valid back to 1 after the invalid file was removed")
        except h.Timeout as e:
            mt = inb.metrics()
            raise AssertionError("%s: ward_policy_valid %s, reloads success %s failure %s" % (
                e, h.metric_value(mt, "ward_policy_valid"),
                h.metric_value(mt, "ward_policy_reloads_total", result="success"),
                h.metric_value(mt, "ward_policy_reloads_total", result="failure")))
    finally:
        m.stop()


@r.test
def configmap_dir_swaps_and_vanishing_dir():
    """--policy on a Kubernetes ConfigMap volume (..data symlink swaps): every publish takes
    effect; the directory disappearing is a failed load that keeps the last good policy."""
    import agentharness as ah
    cm = ah.ConfigMapDir({"a.yaml": policy("cm", [{"from": [{"identities": [A_ID]}]}])})
    m = Mesh(cm.dir)
    try:
        check_cases(m, [allow("A", "/cm", policy="shop/cm"),
                        deny("B", "/cm", reason="no_allow_match")], transports=("raw",))
        v = policy_version(m.inbound)
        cm.publish({"b.yaml": policy("cm", [{"from": [{"identities": [B_ID]}]}]),
                    "c.yaml": policy("cm-deny", [{"to": [{"paths": ["/cm/x"]}]}], action="DENY")})
        wait_policy_version(m.inbound, v)
        check_cases(m, [allow("B", "/cm", policy="shop/cm"),
                        deny("A", "/cm", reason="no_allow_match"),
                        deny("B", "/cm/x", reason="denied_by_policy", policy="shop/cm-deny")],
                    transports=("raw",))
        v = policy_version(m.inbound)
        gone = cm.dir + ".gone"
        os.rename(cm.dir, gone)
        try:
            h.wait_for(lambda: h.metric_value(m.inbound.metrics(), "ward_policy_valid") == 0,
                       slow(3), what="ward_policy_valid 0 while the directory is missing")
            assert policy_version(m.inbound) == v, "a missing directory replaced the policy"
            check_cases(m, [allow("B", "/cm", policy="shop/cm"),
                            deny("A", "/cm", reason="no_allow_match")], transports=("raw",))
        finally:
            os.rename(gone, cm.dir)
        cm.publish({"b.yaml": policy("cm", [{"from": [{"identities": [A_ID, B_ID]}]}])})
        wait_policy_version(m.inbound, v, slow(3))
        assert h.metric_value(m.inbound.metrics(), "ward_policy_valid") == 1
        check_cases(m, [allow("A", "/cm", policy="shop/cm"), allow("B", "/cm/x", policy="shop/cm")],
                    transports=("raw",))
    finally:
        m.stop()


@r.test
def startup_refuses_bad_or_missing_policy():
    """A policy that does not load at start is a configuration error: exit 2 naming the problem
    (file:line:column for YAML), never a proxy running without its policy."""
    d = h.mkdtemp(prefix="ward-policy-bad-")
    write_policy(d, "bad.yaml", BROKEN)
    app = App()
    try:
        for what, path in (("invalid file", d), ("missing path", os.path.join(d, "nope"))):
            p = h.Proxy(ident_args("orders") + ["--inbound", "%s=%s" % (
                h.addr(H, h.free_port(H)), app.addr), "--policy", path], name="inbound-bad",
                mesh_default=None)
            p.start(wait_ready=False)
            rc = p.wait(10)
            if rc is None:
                p.kill()
            err = p.stderr_text()
            assert rc == 2, "%s: exit status %r (want 2):\n%s" % (what, rc, err[-2000:])
            want = "bad.yaml:5:" if what == "invalid file" else "nope"
            assert want in err, "%s: the error does not name %r:\n%s" % (what, want, err[-2000:])
        assert not app.seen()
    finally:
        app.close()


@r.test
def sighup_reloads_policy_file_now():
    """--policy FILE (not a directory), a reload interval of 1h: a change is picked up on SIGHUP."""
    d = h.mkdtemp(prefix="ward-policy-hup-")
    f = os.path.join(d, "policy.yaml")
    write_policy(d, "policy.yaml", _load_version(0))
    m = Mesh(f, reload="1h")
    try:
        check_cases(m, [allow("A", "/load/x", policy="shop/load"),
                        deny("B", "/load/x", reason="no_allow_match")], transports=("raw",))
        v = policy_version(m.inbound)
        write_policy(d, "policy.yaml", docs(policy("load", [{"to": [{"paths": ["/other"]}]}])))
        time.sleep(0.5)
        assert policy_version(m.inbound) == v, "reloaded without a SIGHUP (interval 1h)"
        assert send(m, "A", "raw", "GET", "/load/x", []).status == 200, "changed without a SIGHUP"
        m.inbound.signal(signal.SIGHUP)
        wait_policy_version(m.inbound, v, slow(2))
        check_cases(m, [deny("A", "/load/x", reason="no_allow_match"),
                        allow("B", "/other", policy="shop/load")], transports=("raw", "curl2"))
        # a broken file on SIGHUP: refused, logged, the policy stays
        write_policy(d, "policy.yaml", BROKEN)
        since = m.inbound.stderr_size()
        m.inbound.signal(signal.SIGHUP)
        h.wait_for(lambda: h.metric_value(m.inbound.metrics(), "ward_policy_valid") == 0, slow(2),
                   what="ward_policy_valid 0 after SIGHUP with a broken file")
        errs = [x for x in m.inbound.log_records(since) if x.get("event") == "policy_reload_failed"]
        assert errs and "policy.yaml:" in errs[0].get("msg", ""), errs
        check_cases(m, [allow("B", "/other", policy="shop/load")], transports=("raw",))
    finally:
        m.stop()


# =========================================================================== group 7: agent

@r.test
def agent_pushed_policy():
    try:
        import agentharness as ah
    except Exception as e:  # noqa: BLE001
        raise AssertionError("agent harness unavailable: %r" % e)
    if not os.path.exists(ah.AGENT):
        raise AssertionError("ward-agent not found at %s" % ah.AGENT)
    root = h.mkdtemp(prefix="ward-policy-agent-")
    os.chmod(root, 0o755)
    iss = ah.TokenIssuer(root)
    tok = {k: iss.write(k + ".jwt", iss.mint(ns, sa))
           for k, ns, sa in (("orders", "shop", "orders"), ("web", "shop", "web"),
                             ("debug", "ops", "debug"))}
    pdir = os.path.join(root, "policies")
    os.mkdir(pdir)
    os.chmod(pdir, 0o755)
    write_policy(pdir, "others.yaml", _unselected_policies())
    agent = ah.Agent(issuer=iss, policy_dir=pdir, mesh_default=None, log_level="info")
    ALL.append(agent)
    agent.start()
    app = App()
    m = None
    try:
        def agent_args(who):
            return ["--agent", "unix:" + agent.sock, "--agent-token-file", tok[who]]
        m = Mesh(None, apps=[app], in_args=agent_args("orders"), reload=None, start=False)
        for cl, who in (("A", "web"), ("B", "debug")):
            a = m.outp[cl].args
            i = a.index("--cert")
            del a[i:i + 6]
            a[:0] = agent_args(who)
        m.start()
        # no policy selects the server: the shipped mesh default (deny)
        check_cases(m, [deny("A", "/agent/x", reason="mesh_default_deny")], transports=("raw",))

        def decision(cl, path):
            return send(m, cl, "raw", "GET", path, [("x-test-id", "ag%d" % next(_SEQ))]).status

        v0 = h.metric_value(m.inbound.metrics(), "ward_snapshot_version", kind="policy")
        write_policy(pdir, "agent.yaml", policy("agent-web", [{"from": [{"identities": [A_ID]}],
                                                               "to": [{"paths": ["/agent/*"]}]}]))
        h.wait_for(lambda: decision("A", "/agent/x") == 200, slow(10), interval=0.2,
                   what="the pushed ALLOW for A")
        check_cases(m, [allow("A", "/agent/y", policy="shop/agent-web"),
                        deny("B", "/agent/y", reason="no_allow_match"),
                        deny("A", "/elsewhere", reason="no_allow_match")])
        v1 = h.metric_value(m.inbound.metrics(), "ward_snapshot_version", kind="policy")
        assert v1 > v0, "ward_snapshot_version{kind=policy} did not move (%s -> %s)" % (v0, v1)
        # a change in the agent's directory reaches the proxy and changes the decision
        write_policy(pdir, "agent.yaml", docs(
            policy("agent-web", [{"from": [{"identities": [B_ID]}], "to": [{"paths": ["/agent/*"]}]}]),
            policy("agent-deny-web", [{"from": [{"identities": [A_ID]}]}], action="DENY")))
        h.wait_for(lambda: decision("B", "/agent/x") == 200, slow(10), interval=0.2,
                   what="the changed policy (B allowed)")
        check_cases(m, [allow("B", "/agent/z", policy="shop/agent-web"),
                        deny("A", "/agent/z", reason="denied_by_policy",
                             policy="shop/agent-deny-web")])
        # an invalid file in the agent's dir pushes nothing: the decision stays
        write_policy(pdir, "zz-broken.yaml", BROKEN)
        time.sleep(slow(2))
        check_cases(m, [allow("B", "/agent/w"), deny("A", "/agent/w", reason="denied_by_policy")],
                    transports=("raw",))
        bad = [s["tid"] for s in m.sent if s["expect"] == 403 and app.by_tid(s["tid"])]
        assert not bad, "denied requests reached the app: %r" % bad
    finally:
        if m is not None:
            m.stop()
        app.close()
        EXITS.append((agent.name, "", agent.stop(10)))


@r.test
def clean_exits_and_no_sanitizer_reports():
    bad = [x for x in EXITS if x[2] != 0]
    assert not bad, "processes that did not exit 0 on SIGTERM: %r" % bad
    reports = []
    for p in ALL:
        for line in p.stderr_text().splitlines():
            if ("ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line or
                    "runtime error:" in line or "ERROR: UndefinedBehaviorSanitizer" in line):
                reports.append((p.name, line.strip()))
    assert not reports, "sanitizer reports: %r" % reports[:10]


for c in _CONNS.values():
    c.close()
r.finish()
