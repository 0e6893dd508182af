#!/usr/bin/python3
"""HTTP/2 and gRPC through a sidecar pair: client -> outbound (sniffs the h2c preface, offers ALPN
h2) -> mTLS -> inbound (proxy/http2.c: per-stream policy from --policy) -> h2c app.

Apps: a python3-grpcio server for tests/integration/proto/echo.proto (modules generated with protoc
at test time) and nghttpd --no-tls (Debian's nghttp2-server) for plain HTTP/2, plus a verbose
nghttpd that shows what it received, and a fake app that drops the connection. Clients: curl
--http2-prior-knowledge, h2load, nghttp, python grpcio, and raw frames from a socket.

Checked: allowed unary and server-streaming calls; x-forwarded-client-cert set by the proxy (the
caller's replaced); a denied gRPC method gets PERMISSION_DENIED with the reason and never reaches
the app; a denied HTTP path gets 403 + x-ward-deny-reason; a bad path 400; 5 MiB bodies both ways
(sha256); trailers both ways (grpc-status from the app, HTTP trailers); a cancelled call reaches
the app; h2load 2000 requests; direct mTLS with ALPN h2; the app dropping its connection gives 502;
a rapid-reset flood gets GOAWAY ENHANCE_YOUR_CALM and the proxy stays healthy; SIGTERM drains
(GOAWAY, the in-flight stream completes)."""
import atexit
import hashlib
import importlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

H = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
FRONTEND = h.spiffe("frontend")
BACKEND = h.spiffe("backend")
SERVICE = "ward.test.echo.Echo"

r = h.Results()
h.require_binary()


def tool(name):
    p = shutil.which(name) or next((d + "/" + name for d in ("/usr/sbin", "/usr/bin")
                                    if os.path.exists(d + "/" + name)), None)
    return p


NGHTTPD, NGHTTP, H2LOAD, CURL = tool("nghttpd"), tool("nghttp"), tool("h2load"), tool("curl")
missing = [n for n, p in (("nghttpd (nghttp2-server)", NGHTTPD), ("nghttp", NGHTTP),
                          ("h2load", H2LOAD), ("curl", CURL), ("protoc", tool("protoc"))) if not p]
try:
    import grpc  # noqa: E402
except ImportError:
    missing.append("python3-grpcio")
if missing:
    print("missing: %s (tools/deps installs them)" % ", ".join(missing))
    print("0 passed, 1 failed", flush=True)
    sys.exit(1)


def protos():
    """protoc --python_out into a temp dir; returns the echo_pb2 module."""
    d = h.mkdtemp(prefix="ward-h2-pb-")
    subprocess.run(["protoc", "-I", os.path.join(HERE, "proto"), "--python_out=" + d,
                    os.path.join(HERE, "proto", "echo.proto")], check=True, timeout=h.T(60))
    sys.path.insert(0, d)
    return importlib.import_module("echo_pb2")


pb = protos()
CODES = {c.value[0]: c for c in grpc.StatusCode}
MSG_OPTS = [("grpc.max_receive_message_length", 16 << 20),
            ("grpc.max_send_message_length", 16 << 20)]


class App:
    """The gRPC app behind the inbound proxy."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ended = {}     # ServerStream text -> Event set when the call ended early
        self.forbidden = 0  # calls of the method the policy denies
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=MSG_OPTS)
        u = lambda f: grpc.unary_unary_rpc_method_handler(  # noqa: E731
            f, request_deserializer=pb.EchoRequest.FromString,
            response_serializer=pb.EchoResponse.SerializeToString)
        handlers = {
            "Unary": u(self.unary),
            "Forbidden": u(self.forbid),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                self.stream, request_deserializer=pb.EchoRequest.FromString,
                response_serializer=pb.EchoResponse.SerializeToString),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("%s:0" % H)
        self.server.start()

    @staticmethod
    def xfcc(ctx):
        return [v for k, v in ctx.invocation_metadata() if k == "x-forwarded-client-cert"]

    def unary(self, req, ctx):
        if req.status:
            ctx.abort(CODES[req.status], "the app says %s" % CODES[req.status].name.lower())
        return pb.EchoResponse(text=req.text, payload=req.payload, xfcc=self.xfcc(ctx),
                               payload_sha256=hashlib.sha256(req.payload).hexdigest())

    def forbid(self, req, ctx):
        with self.lock:
            self.forbidden += 1
        return pb.EchoResponse(text="should never get here")

    def stream(self, req, ctx):
        ended = threading.Event()
        finished = []
        with self.lock:
            self.ended[req.text] = ended
        ctx.add_callback(lambda: None if finished else ended.set())
        for i in range(req.count):
            if not ctx.is_active():
                ended.set()
                return
            yield pb.EchoResponse(text=req.text, index=i, xfcc=self.xfcc(ctx))
            if req.interval_ms:
                time.sleep(req.interval_ms / 1000.0)
        finished.append(True)


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def read_frames(s, until, timeout):
    """Reads frames until until(type, flags, sid, payload) is true; returns that frame or None at
    EOF."""
    s.settimeout(h.T(timeout))
    buf = b""
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n])
            buf = buf[9 + n:]
            if until(*f):
                return f
        try:
            d = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        if not d:
            return None
        buf += d


class DropApp(h._Server):
    """An h2c 'app' that reads the client preface and the first HEADERS frame, then closes."""

    def __init__(self):
        super().__init__(H, self._h)

    def _h(self, server, c):
        buf = b""
        while len(buf) < 24:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        buf = buf[24:]
        while True:
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if buf[3] == 1:  # HEADERS
                    return
                buf = buf[9 + n:]
            d = c.recv(65536)
            if not d:
                return
            buf += d


class ScriptedApp(h._Server):
    """An h2c 'app' speaking raw frames: answers each request HEADERS with mode "bighead" (a
    response head of 200 fields, then DATA) or "rst" (RST_STREAM CANCEL)."""

    def __init__(self, mode):
        self.mode = mode
        super().__init__(H, self._h)

    def _h(self, server, c):
        buf = b""
        while len(buf) < 24:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        buf = buf[24:]
        c.sendall(frame(4, 0, 0))
        while True:
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n = int.from_bytes(buf[:3], "big")
                ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
                buf = buf[9 + n:]
                if ftype == 4 and not flags & 1:
                    c.sendall(frame(4, 1, 0))  # SETTINGS ACK
                elif ftype == 1 and self.mode == "rst":
                    c.sendall(frame(3, 0, sid, struct.pack(">I", 8)))
                elif ftype == 1:
                    block = b"\x88" + b"".join(  # :status 200, then literal fields
                        b"\x00" + bytes([len(k)]) + k + bytes([len(v)]) + v
                        for k, v in ((b"x-field-%d" % i, b"%d" % i) for i in range(200)))
                    c.sendall(frame(1, 4, sid, block) + frame(0, 1, sid, b"late body"))
            d = c.recv(65536)
            if not d:
                return
            buf += d


POLICY = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: h2-allow, namespace: default}
spec:
  selector: {identity: "%(backend)s"}
  action: ALLOW
  rules:
  - from: [{identities: ["%(frontend)s"]}]
    to: [{paths: ["/", "/index.html", "/big.bin", "/upload", "/%(svc)s/*"]}]
---
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: h2-deny, namespace: default}
spec:
  selector: {identity: "%(backend)s"}
  action: DENY
  rules:
  - to: [{paths: ["/%(svc)s/Forbidden"]}]
""" % {"backend": BACKEND, "frontend": FRONTEND, "svc": SERVICE}

CERTS = h.certs_dir()
WORK = h.mkdtemp(prefix="ward-h2-")
HTDOCS = os.path.join(WORK, "htdocs")
os.makedirs(HTDOCS)
INDEX = b"hello over h2\n"
BIG = os.urandom(5 << 20)
with open(os.path.join(HTDOCS, "index.html"), "wb") as f:
    f.write(INDEX)
with open(os.path.join(HTDOCS, "big.bin"), "wb") as f:
    f.write(BIG)
BIG_PATH = os.path.join(WORK, "upload.bin")
UPLOAD = os.urandom(5 << 20)
with open(BIG_PATH, "wb") as f:
    f.write(UPLOAD)
with open(os.path.join(WORK, "policy.yaml"), "w") as f:
    f.write(POLICY)

app = App()
drop = DropApp()
bighead = ScriptedApp("bighead")
rstapp = ScriptedApp("rst")
apps = {}    # name -> app port
ports = {}   # name -> (inbound port, outbound port)
procs = []
pair = None


def stop_apps():
    """The nghttpd children run in their own session: end them however the test exits."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)


atexit.register(stop_apps)


def nghttpd(verbose=False):
    port = h.free_port(H)
    log = open(os.path.join(WORK, "nghttpd%s.log" % ("-v" if verbose else "")), "wb")
    args = [NGHTTPD, "--no-tls", "-d", HTDOCS, "--echo-upload", "--trailer", "x-trailer: yes",
            "-a", H, str(port)]
    if verbose:
        args.insert(1, "-v")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    procs.append(p)
    h.wait_for(lambda: socket.create_connection((H, port), timeout=1).close() or True, 10,
               what="nghttpd on port %d" % port)
    return port, log.name


def ch(name="grpc"):
    return grpc.insecure_channel("%s:%d" % (H, ports[name][1]), options=MSG_OPTS + [
        ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)])


def stub(channel, method, stream=False):
    f = channel.unary_stream if stream else channel.unary_unary
    return f("/%s/%s" % (SERVICE, method), request_serializer=pb.EchoRequest.SerializeToString,
             response_deserializer=pb.EchoResponse.FromString)


def curl(name, path, *extra, timeout=30):
    """curl --http2-prior-knowledge through the outbound; returns (status, headers, body)."""
    args = [CURL, "-sS", "--http2-prior-knowledge", "--path-as-is", "-D", "-", "-o",
            os.path.join(WORK, "curl.body"), "--max-time", str(int(h.T(timeout)))] + list(extra)
    args.append("http://%s:%d%s" % (H, ports[name][1], path))
    return parse_curl(subprocess.run(args, capture_output=True, timeout=h.T(timeout + 10)))


def parse_curl(res):
    if res.returncode != 0:
        raise AssertionError("curl failed (%d): %s" % (res.returncode, res.stderr.decode()))
    head = res.stdout.decode("latin-1")
    m = re.match(r"HTTP/2 (\d+)", head)
    assert m, "no HTTP/2 status line in %r" % head
    hdrs = {}
    for line in head.splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    with open(os.path.join(WORK, "curl.body"), "rb") as f:
        body = f.read()
    return int(m.group(1)), hdrs, body



@r.fixture
def start():
    global pair
    apps["http"], _ = nghttpd()
    apps["verbose"], apps["verbose_log"] = nghttpd(verbose=True)
    apps["grpc"] = app.port
    apps["drop"] = drop.port
    apps["bighead"] = bighead.port
    apps["rst"] = rstapp.port
    in_extra, out_extra = ["--policy", os.path.join(WORK, "policy.yaml")], []
    for name in ("http", "verbose", "drop", "bighead", "rst"):
        pi, po = h.free_port(H), h.free_port(H)
        ports[name] = (pi, po)
        in_extra += ["--inbound", "%s=%s" % (h.addr(H, pi), h.addr(H, apps[name]))]
        out_extra += ["--outbound", "%s=%s,identity=%s" % (h.addr(H, po), h.addr(H, pi), BACKEND)]
    pair = h.Pair(CERTS, h.addr(H, app.port), H, in_extra=in_extra, out_extra=out_extra)
    ports["grpc"] = (pair.in_port, pair.out_port)
    st, _, body = curl("http", "/index.html")
    assert st == 200 and body == INDEX, (st, body)


if pair is None or not pair.inbound.alive():
    r.finish()


@r.test
def http_allowed_and_trailers():
    st, hdrs, body = curl("http", "/index.html")
    assert st == 200 and body == INDEX, (st, hdrs, body)
    # nghttp shows every frame: the app's response trailers came through
    out = subprocess.run([NGHTTP, "-v", "http://%s:%d/index.html" % (H, ports["http"][1])],
                         capture_output=True, timeout=h.T(20)).stdout.decode("latin-1")
    assert "x-trailer: yes" in out, "response trailer missing:\n" + out[-2000:]


@r.test
def http_request_trailers_reach_app():
    out = subprocess.run([NGHTTP, "-d", BIG_PATH, "--trailer", "x-request-trailer: present",
                          "http://%s:%d/upload" % (H, ports["verbose"][1])],
                         capture_output=True, timeout=h.T(60))
    assert out.returncode == 0, out.stderr.decode()
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(UPLOAD).digest(), \
        "echoed upload differs (%d bytes)" % len(out.stdout)

    def seen():
        with open(apps["verbose_log"], "rb") as f:
            return b"x-request-trailer: present" in f.read()
    h.wait_for(seen, 10, what="the app to log the request trailer")


@r.test
def http_denied_path():
    st, hdrs, body = curl("http", "/secret")
    assert st == 403, (st, hdrs, body)
    assert hdrs.get("x-ward-deny-reason") == "no_allow_match", hdrs
    assert b"no_allow_match" in body, body
    # a denied request with a body: the body is dropped, the connection stays usable
    st, hdrs, _ = curl("http", "/secret", "--data-binary", "@" + BIG_PATH)
    assert st == 403, (st, hdrs)
    st, _, body = curl("http", "/index.html")
    assert st == 200 and body == INDEX


@r.test
def http_bad_path():
    st, hdrs, _ = curl("http", "/files/%2F..%2Fetc")
    assert st == 400 and hdrs.get("x-ward-deny-reason") == "bad_path", (st, hdrs)
    # normalised before matching and forwarding: /a/../index.html is /index.html
    st, _, body = curl("http", "/a/../index.html")
    assert st == 200 and body == INDEX, st


@r.test
def http_too_many_headers():
    extra = []
    for i in range(140):
        extra += ["-H", "x-filler-%d: %d" % (i, i)]
    st, hdrs, _ = curl("http", "/index.html", *extra)
    assert st == 431 and hdrs.get("x-ward-deny-reason") == "headers_too_large", (st, hdrs)
    st, _, body = curl("http", "/index.html", *extra[:40])
    assert st == 200 and body == INDEX, st


@r.test
def http_big_bodies():
    st, _, body = curl("http", "/big.bin", timeout=60)
    assert st == 200 and len(body) == len(BIG), (st, len(body))
    assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest(), "download differs"
    st, _, body = curl("http", "/upload", "--data-binary", "@" + BIG_PATH, timeout=60)
    assert st == 200 and hashlib.sha256(body).digest() == hashlib.sha256(UPLOAD).digest(), \
        (st, len(body))


@r.test
def h2load_2000():
    res = subprocess.run([H2LOAD, "-n", "2000", "-c", "4", "-m", "100",
                          "http://%s:%d/index.html" % (H, ports["http"][1])],
                         capture_output=True, timeout=h.T(120))
    out = res.stdout.decode()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", out)
    assert m and m.group(4) == "2000", out[-1500:]
    fin = re.search(r"finished in .*", out)
    print("     h2load: %s" % (fin.group(0) if fin else "?"))


@r.test
def direct_mtls_alpn_h2():
    """A client with the frontend certificate straight to the inbound listener: ALPN h2."""
    j = lambda n: os.path.join(CERTS, n)  # noqa: E731
    res = subprocess.run([CURL, "-sS", "--http2", "-k", "--cert", j("client.pem"), "--key",
                          j("client-key.pem"), "-D", "-", "-o", os.path.join(WORK, "curl.body"),
                          "https://%s:%d/index.html" % (H, ports["http"][0])],
                         capture_output=True, timeout=h.T(30))
    st, _, body = parse_curl(res)
    assert st == 200 and body == INDEX, (st, body)


@r.test
def grpc_unary_and_xfcc():
    with ch() as c:
        resp = stub(c, "Unary")(pb.EchoRequest(text="hi"), timeout=h.T(10), metadata=(
            ("x-forwarded-client-cert", "By=spiffe://evil/x;URI=spiffe://evil/admin"),))
    assert resp.text == "hi"
    assert len(resp.xfcc) == 1, "app saw %r" % list(resp.xfcc)
    v = resp.xfcc[0]
    assert "URI=" + FRONTEND in v and "By=" + BACKEND in v and "evil" not in v, v
    assert re.search(r"Hash=[0-9a-f]{64}", v), v


@r.test
def grpc_server_streaming():
    with ch() as c:
        got = list(stub(c, "ServerStream", stream=True)(
            pb.EchoRequest(text="s1", count=25), timeout=h.T(20)))
    assert [m.index for m in got] == list(range(25)), [m.index for m in got]
    assert all(len(m.xfcc) == 1 and ("URI=" + FRONTEND) in m.xfcc[0] for m in got)


@r.test
def grpc_denied_method():
    with ch() as c:
        try:
            stub(c, "Forbidden")(pb.EchoRequest(text="x"), timeout=h.T(10))
            raise AssertionError("Forbidden succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (e.code(), e.details())
            assert "denied_by_policy" in e.details() and "default/h2-deny" in e.details(), \
                e.details()
            md = dict(e.trailing_metadata() or ())
            assert md.get("x-ward-deny-reason") == "denied_by_policy", md
        # the channel (and its connection) still works
        assert stub(c, "Unary")(pb.EchoRequest(text="after"), timeout=h.T(10)).text == "after"
    assert app.forbidden == 0, "a denied call reached the app"


@r.test
def grpc_status_from_app():
    with ch() as c:
        try:
            stub(c, "Unary")(pb.EchoRequest(text="x", status=5), timeout=h.T(10))
            raise AssertionError("call succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
            assert e.details() == "the app says not_found", e.details()


@r.test
def grpc_big_messages():
    payload = os.urandom(5 << 20)
    with ch() as c:
        resp = stub(c, "Unary")(pb.EchoRequest(text="big", payload=payload), timeout=h.T(60))
    assert resp.payload_sha256 == hashlib.sha256(payload).hexdigest(), "the app got other bytes"
    assert hashlib.sha256(resp.payload).digest() == hashlib.sha256(payload).digest(), \
        "the response differs"


@r.test
def grpc_cancel_reaches_app():
    with ch() as c:
        call = stub(c, "ServerStream", stream=True)(
            pb.EchoRequest(text="cancel-me", count=400, interval_ms=50), timeout=h.T(60))
        it = iter(call)
        assert next(it).index == 0 and next(it).index == 1
        call.cancel()
        h.wait_for(lambda: app.ended.get("cancel-me") is not None and
                   app.ended["cancel-me"].is_set(), 10,
                   what="the app to see the cancelled call")
        assert stub(c, "Unary")(pb.EchoRequest(text="next"), timeout=h.T(10)).text == "next"


@r.test
def app_drops_connection_502():
    st, hdrs, body = curl("drop", "/index.html")
    assert st == 502, (st, hdrs, body)


@r.test
def app_response_head_too_large_502():
    st, hdrs, body = curl("bighead", "/")
    assert st == 502 and b"late body" not in body, (st, hdrs, body)
    assert not any(k.startswith("x-field-") for k in hdrs), hdrs


H2_GET_ROOT = b"\x82\x86\x84\x01\x09localhost"  # GET http / localhost (HPACK, no indexing)


@r.test
def app_reset_reaches_caller_with_its_code():
    s = h.connect(H, ports["rst"][1])
    try:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) +
                  frame(1, 0x5, 1, H2_GET_ROOT))
        f = read_frames(s, lambda t, fl, sid, p: t == 3 and sid == 1, 10)
        assert f is not None, "no RST_STREAM for stream 1"
        assert int.from_bytes(f[3], "big") == 8, "RST_STREAM code %r, expected CANCEL" % f[3]
    finally:
        s.close()


@r.test
def rapid_reset_flood():
    """HEADERS + RST_STREAM pairs as fast as possible (CVE-2023-44487): GOAWAY
    ENHANCE_YOUR_CALM, and the proxy keeps serving."""
    s = h.connect(H, ports["http"][1])
    try:
        block = H2_GET_ROOT
        out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frame(4, 0, 0)]
        for i in range(2000):
            sid = 2 * i + 1
            out.append(frame(1, 0x5, sid, block))
            out.append(frame(3, 0, sid, struct.pack(">I", 8)))  # CANCEL
        try:
            s.sendall(b"".join(out))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may close before taking all of it
        f = read_frames(s, lambda t, fl, sid, p: t == 7, 15)
        assert f is not None, "no GOAWAY before the connection ended"
        code = int.from_bytes(f[3][4:8], "big")
        assert code == 11, "GOAWAY error code %d, expected ENHANCE_YOUR_CALM (11)" % code
    finally:
        s.close()
    h.wait_for(lambda: any(x.get("event") == "http2_flood" for x in pair.inbound.log_records()),
               10, what="the inbound to log http2_flood")
    assert pair.inbound.get("/ready")[0] == 200
    st, _, body = curl("http", "/index.html")
    assert st == 200 and body == INDEX
    with ch() as c:
        assert stub(c, "Unary")(pb.EchoRequest(text="ok"), timeout=h.T(10)).text == "ok"


@r.test
def metrics_count_h2_and_grpc():
    m = pair.inbound.metrics()
    grpc_n = h.metric_value(m, "ward_requests_total", direction="inbound", protocol="grpc")
    h2_n = h.metric_value(m, "ward_requests_total", direction="inbound", protocol="http2")
    h2_4xx = h.metric_value(m, "ward_requests_total", direction="inbound", protocol="http2",
                            status_class="4xx")
    assert grpc_n >= 8 and h2_n >= 2000 and h2_4xx >= 3, (grpc_n, h2_n, h2_4xx)


@r.test
def connections_close_when_idle_clients_leave():
    h.wait_for(lambda: h.metric_value(pair.inbound.metrics(), "ward_connections_open",
                                      direction="inbound") == 0, 15,
               what="every inbound connection to close once its clients are gone")


@r.test
def drain_finishes_streams():
    """SIGTERM: the inbound sends GOAWAY, the in-flight stream completes, the proxy exits 0."""
    got = []
    with ch() as c:
        call = stub(c, "ServerStream", stream=True)(
            pb.EchoRequest(text="drain", count=20, interval_ms=50), timeout=h.T(30))
        it = iter(call)
        got.append(next(it).index)
        pair.inbound.signal(signal.SIGTERM)
        got.extend(m.index for m in it)
    assert got == list(range(20)), got
    rc = pair.inbound.wait(20)
    assert rc == 0, "inbound exit status %r" % rc


stop_apps()
for srv in (drop, bighead, rstapp):
    srv.close()
app.server.stop(0)
r.finish()
