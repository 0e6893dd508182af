#!/usr/bin/python3
"""The SPIFFE Workload API of ward-agent, driven by Debian's python3-grpcio over the agent's Unix
socket: X509-SVID fetch (URI SAN, chain to the bundle, key matches), bundles, the security header,
JWT methods disabled, unknown uid refused; malformed HTTP/2 / gRPC input (garbage, bad preface,
bad frames, a message claiming 100 MB, a real 5 MiB message) rejected while the agent keeps
serving; 200 concurrent Workload API streams."""
import os
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402

r = h.Results()
ah.require_binaries()
pb = ah.protos()
import grpc  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

FRONTEND = ah.spiffe("default", "frontend")
TD_KEY = "spiffe://" + ah.TD
WL_TTL_S = 4   # Workload API SVIDs: re-issued on the open stream every ~2 s
agent = ah.Agent(workloads={0: FRONTEND}, workload_svid_ttl="%ds" % WL_TTL_S)
state = {}


def m(name, **labels):
    return h.metric_value(agent.metrics(), name, **labels)


def normal_call_works(what):
    """The agent process is alive and answers a fresh FetchX509SVID."""
    assert agent.alive(), "ward-agent died after %s:\n%s" % (what, agent.stderr_text()[-3000:])
    with ah.channel(agent.sock) as ch:
        resp = ah.fetch_x509svid(ch, pb, timeout=10)
    assert resp.svids and resp.svids[0].spiffe_id == FRONTEND, "after %s: %r" % (what, resp)


@r.fixture
def start_agent():
    agent.start()


if not agent.alive():
    r.finish()


@r.test
def fetch_x509svid():
    with ah.channel(agent.sock) as ch:
        resp = ah.fetch_x509svid(ch, pb)
    assert len(resp.svids) == 1, "%d SVIDs" % len(resp.svids)
    sv = resp.svids[0]
    assert sv.spiffe_id == FRONTEND, sv.spiffe_id
    chain = ah.certs_from_concat(sv.x509_svid)
    roots = ah.certs_from_concat(sv.bundle)
    assert chain and roots
    leaf = chain[0]
    assert ah.uri_sans(leaf) == [FRONTEND], "URI SANs %r" % ah.uri_sans(leaf)
    # the chain verifies to the bundle: leaf (and intermediates) signed up to a bundle root
    assert ah.chain_verifies(chain, roots), "the X509-SVID does not chain to the bundle"
    for root in roots:
        ah.verify_signed_by(root, root)   # self-signed roots
    # the private key is the leaf's
    key = serialization.load_der_private_key(sv.x509_svid_key, None)
    assert key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) == \
        leaf.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo), \
        "x509_svid_key does not match the certificate"
    sig = key.sign(b"ward", ec.ECDSA(hashes.SHA256()))
    leaf.public_key().verify(sig, b"ward", ec.ECDSA(hashes.SHA256()))
    # X509-SVID shape
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    life = (leaf.not_valid_after - leaf.not_valid_before).total_seconds()
    assert WL_TTL_S <= life <= WL_TTL_S + 600, "lifetime %ss with --workload-svid-ttl %ds" % (
        life, WL_TTL_S)
    state["roots"] = sv.bundle
    state["serial"] = leaf.serial_number


@r.test
def fetch_x509bundles():
    with ah.channel(agent.sock) as ch:
        resp = ah.fetch_x509bundles(ch, pb)
    assert list(resp.bundles.keys()) == [TD_KEY], "bundle keys %r" % list(resp.bundles.keys())
    roots = ah.certs_from_concat(resp.bundles[TD_KEY])
    assert roots and all(r_.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                         for r_ in roots)
    if "roots" in state:
        assert resp.bundles[TD_KEY] == state["roots"], "FetchX509Bundles != X509SVID.bundle"


@r.test
def svid_stream_renews():
    """The FetchX509SVID stream stays open and pushes a new SVID (new serial) at half-life."""
    with ah.channel(agent.sock) as ch:
        call = ah.unary_stream(ch, "/SpiffeWorkloadAPI/FetchX509SVID", pb.wl.X509SVIDRequest(),
                               pb.wl.X509SVIDResponse)
        guard = threading.Timer(h.T(WL_TTL_S * 3), call.cancel)
        guard.start()
        try:
            it = iter(call)
            first = next(it).svids[0]
            t0 = time.monotonic()
            second = next(it).svids[0]
            took = time.monotonic() - t0
        finally:
            guard.cancel()
            call.cancel()
    a = ah.certs_from_concat(first.x509_svid)[0]
    b = ah.certs_from_concat(second.x509_svid)[0]
    assert a.serial_number != b.serial_number and second.x509_svid_key != first.x509_svid_key
    assert ah.uri_sans(b) == [FRONTEND]
    assert took <= WL_TTL_S, "renewal after %.1fs, past the %ds lifetime" % (took, WL_TTL_S)


@r.test
def client_deadline_honoured():
    """A FetchX509SVID stream with a 30 s gRPC deadline (grpc-timeout) must stay open past the
    agent's first tick and deliver the renewal at half-life."""
    with ah.channel(agent.sock) as ch:
        call = ah.unary_stream(ch, "/SpiffeWorkloadAPI/FetchX509SVID", pb.wl.X509SVIDRequest(),
                               pb.wl.X509SVIDResponse, deadline=30)
        t0 = time.monotonic()
        try:
            it = iter(call)
            next(it)
            next(it)
        except grpc.RpcError as e:
            raise AssertionError("stream with a 30 s deadline ended after %.1fs: %s %r" % (
                time.monotonic() - t0, e.code(), e.details()))
        finally:
            call.cancel()


@r.test
def missing_security_header_invalid_argument():
    for md, what in (((), "no header"), ((("workload.spiffe.io", "false"),), "header false")):
        for fetch in (ah.fetch_x509svid, ah.fetch_x509bundles):
            with ah.channel(agent.sock) as ch:
                code, details = ah.rpc_error(lambda: fetch(ch, pb, metadata=md))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, "%s, %s: %s %r" % (
                fetch.__name__, what, code, details)
            assert "workload.spiffe.io" in details, "message does not name the header: %r" % details


@r.test
def jwt_methods_unimplemented():
    with ah.channel(agent.sock) as ch:
        calls = [
            ("FetchJWTSVID", lambda: ch.unary_unary(
                "/SpiffeWorkloadAPI/FetchJWTSVID",
                request_serializer=pb.wl.JWTSVIDRequest.SerializeToString,
                response_deserializer=pb.wl.JWTSVIDResponse.FromString)(
                    pb.wl.JWTSVIDRequest(audience=["x"]), timeout=h.T(10), metadata=ah.WL_MD)),
            ("FetchJWTBundles", lambda: ah.first_response(ah.unary_stream(
                ch, "/SpiffeWorkloadAPI/FetchJWTBundles", pb.wl.JWTBundlesRequest(),
                pb.wl.JWTBundlesResponse))),
            ("ValidateJWTSVID", lambda: ch.unary_unary(
                "/SpiffeWorkloadAPI/ValidateJWTSVID",
                request_serializer=pb.wl.ValidateJWTSVIDRequest.SerializeToString,
                response_deserializer=pb.wl.ValidateJWTSVIDResponse.FromString)(
                    pb.wl.ValidateJWTSVIDRequest(audience="x", svid="a.b.c"), timeout=h.T(10),
                    metadata=ah.WL_MD)),
        ]
        for name, fn in calls:
            code, details = ah.rpc_error(fn)
            assert code == grpc.StatusCode.UNIMPLEMENTED, "%s: %s %r" % (name, code, details)
            assert "JWT" in details, "%s: message %r does not say JWT is disabled" % (name, details)


NOBODY_BODY = r"""
out = {}
ch = ah.channel(SOCK)
for name, fn in (("svid", ah.fetch_x509svid), ("bundles", ah.fetch_x509bundles)):
    code, details = ah.rpc_error(lambda: fn(ch, pb))
    out[name] = [str(code), str(details)]
print(json.dumps(out))
"""


@r.test
def unknown_uid_permission_denied():
    out = ah.run_as(ah.NOBODY, NOBODY_BODY, agent.sock)
    for name in ("svid", "bundles"):
        code, details = out[name]
        assert code == "StatusCode.PERMISSION_DENIED", "%s: %s %r" % (name, code, details)
        assert "65534" in details, "%s: message %r does not name the uid" % (name, details)
    normal_call_works("an unknown uid")


# --------------------------------------------------------------------------- raw HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY, RST_STREAM, DATA, HEADERS, SETTINGS = 7, 3, 0, 1, 4


def frame(typ, flags, stream, payload=b"", length=None):
    n = len(payload) if length is None else length
    return n.to_bytes(3, "big") + bytes([typ, flags]) + struct.pack(">I", stream) + payload


def raw_exchange(data, timeout=5.0, shut_wr=False):
    """Sends data on a fresh Unix connection to the agent; reads until the agent closes. Returns
    (closed, frames) where frames are (type, flags, stream, payload) parsed from what came back
    (after the agent's own preface-less SETTINGS). Raises Timeout if the agent keeps the
    connection open for timeout seconds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(h.T(timeout))
    buf = b""
    closed = False
    try:
        s.connect(agent.sock)
        try:
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        deadline = time.monotonic() + h.T(timeout)
        while not closed:
            if time.monotonic() > deadline:
                raise h.Timeout("agent kept the connection open %.0fs after bad input" %
                                h.T(timeout))
            try:
                d = s.recv(65536)
            except socket.timeout:
                raise h.Timeout("agent kept the connection open %.0fs after bad input" %
                                h.T(timeout))
            except ConnectionResetError:
                closed = True
                break
            if not d:
                closed = True
                break
            buf += d
    finally:
        s.close()
    frames = []
    i = 0
    while i + 9 <= len(buf):
        n = int.from_bytes(buf[i:i + 3], "big")
        sid = struct.unpack(">I", buf[i + 5:i + 9])[0] & 0x7FFFFFFF
        frames.append((buf[i + 3], buf[i + 4], sid, buf[i + 9:i + 9 + n]))
        i += 9 + n
    return closed, frames


def goaway_codes(frames):
    return [struct.unpack(">I", p[4:8])[0]
            for (t, f, s, p) in frames if t == GOAWAY and len(p) >= 8]


def bad_input(name, data, want_goaway=None, shut_wr=False):
    conns0 = m("ward_agent_connections")
    closed, frames = raw_exchange(data, shut_wr=shut_wr)
    assert closed, name
    if want_goaway is not None:
        codes = goaway_codes(frames)
        assert codes, "%s: no GOAWAY before the close (frames %r)" % (name, [f[0] for f in frames])
        assert codes[-1] == want_goaway, "%s: GOAWAY error %r, want %d" % (name, codes, want_goaway)
    assert not [f for f in frames if f[0] == DATA], "%s: the agent sent DATA" % name
    normal_call_works(name)
    ah.wait_metric(agent, "ward_agent_connections", lambda v: v <= conns0, 5,
                   what="the connection of %s to be released" % name)


@r.test
def raw_garbage_rejected():
    junk = bytes((i * 37 + 11) % 256 for i in range(4096))
    bad_input("4 KiB of garbage", junk)


@r.test
def http1_request_rejected():
    bad_input("an HTTP/1.1 request", b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")


@r.test
def bad_preface_rejected():
    bad_input("a bad HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(SETTINGS, 0, 0))


@r.test
def truncated_preface_then_eof():
    bad_input("half a preface then EOF", PREFACE[:10], shut_wr=True)


@r.test
def garbage_frames_after_valid_preface():
    pre = PREFACE + frame(SETTINGS, 0, 0)
    # DATA on stream 0: connection error PROTOCOL_ERROR (1)
    bad_input("DATA on stream 0", pre + frame(DATA, 0, 0, b"hello"), want_goaway=1)
    # a HEADERS block that is not HPACK: COMPRESSION_ERROR (9)
    bad_input("garbage HPACK", pre + frame(HEADERS, 0x4 | 0x1, 1, b"\xff" * 32), want_goaway=9)
    # a frame over SETTINGS_MAX_FRAME_SIZE (16384): FRAME_SIZE_ERROR (6)
    bad_input("a 16 MiB frame", pre + frame(DATA, 0, 1, b"x" * 64, length=(1 << 24) - 1),
              want_goaway=6)
    # a SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR (6)
    bad_input("a SETTINGS frame of 5 bytes", pre + frame(SETTINGS, 0, 0, b"\x00" * 5),
              want_goaway=6)
    # a frame header cut short, then EOF
    bad_input("a truncated frame then EOF", pre + frame(HEADERS, 0x4, 1, b"\x00" * 3, length=200),
              shut_wr=True)


class PrefixRelay:
    """A Unix-socket relay between a grpc client and the agent that rewrites the 4-byte length of
    the first gRPC message the client sends (in its first DATA frame) to `claim`. grpcio then
    decodes the agent's answer (status + message) for us."""

    def __init__(self, claim):
        self.claim = claim
        self.path = os.path.join(h.mkdtemp(prefix="ward-relay-"), "relay.sock")
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(self.path)
        self.ls.listen(8)
        self.ls.settimeout(0.2)
        self.patched = 0
        self._stop = threading.Event()
        self._socks = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(agent.sock)
            self._socks += [c, u]
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, c, u):
        buf, pre, done = b"", False, False
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                buf += d
                if not pre:
                    if len(buf) < len(PREFACE):
                        continue
                    u.sendall(buf[:len(PREFACE)])
                    buf, pre = buf[len(PREFACE):], True
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    f, buf = bytearray(buf[:9 + n]), buf[9 + n:]
                    if not done and f[3] == DATA and n >= 5:
                        off = 9 + (1 + f[9] if f[4] & 0x8 else 0)   # PADDED
                        f[off + 1:off + 5] = struct.pack(">I", self.claim)
                        done = True
                        self.patched += 1
                    u.sendall(bytes(f))
            u.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _down(self, u, c):
        try:
            while True:
                d = u.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self.ls.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


@r.test
def message_claiming_100mb_rejected():
    relay = PrefixRelay(100 * 1000 * 1000)
    try:
        # unary request stream (FetchX509SVID: message + END_STREAM)
        with ah.channel(relay.path) as ch:
            t0 = time.monotonic()
            code, details = ah.rpc_error(lambda: ah.fetch_x509svid(ch, pb, timeout=10))
            took = time.monotonic() - t0
        assert relay.patched == 1, "relay patched %d messages" % relay.patched
        print("     FetchX509SVID claiming 100 MB -> %s %r" % (code, details))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, "FetchX509SVID: %s %r" % (code,
                                                                                       details)
        assert took < h.T(5), "rejection took %.1fs" % took
        # bidirectional stream that stays open (Mesh/Connect: no END_STREAM after the Hello)
        with ah.channel(relay.path) as ch:
            s = ah.MeshStream(ch, pb)
            try:
                s.hello()
                e, msgs = s.wait_end(5)
            finally:
                s.close()
        assert relay.patched == 2
        print("     Mesh/Connect claiming 100 MB -> %s %r" % (e.code, e.details))
        assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, "Mesh/Connect: %s %r" % (e.code,
                                                                                     e.details)
        assert not msgs, "the agent answered a truncated Hello with %r" % msgs
    finally:
        relay.close()
    normal_call_works("a message claiming 100 MB")


BIG_BODY = r"""
big = b"\x7a" + b"\x80\x80\x40" + b"x" * (5 << 20)  # field 15 (bytes), varint length 5 MiB
out = {}
ch = ah.channel(SOCK)
stub = ch.unary_stream("/SpiffeWorkloadAPI/FetchX509SVID", request_serializer=lambda _: big,
                       response_deserializer=pb.wl.X509SVIDResponse.FromString)
code, details = ah.rpc_error(lambda: ah.first_response(stub(b"", metadata=ah.WL_MD)))
out["unary"] = [str(code), str(details)]
ch2 = ah.channel(SOCK)
s = ah.MeshStream(ch2, pb)
s.hello(token="x" * (5 << 20))
e, msgs = s.wait_end(10)
out["mesh"] = [str(e.code), str(e.details), len(msgs)]
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)   # grpcio's channel teardown can hold the GIL ~10 s after a rejected 5 MiB request
"""


@r.test
def real_5mib_message_rejected():
    """grpcio sends a 5 MiB FetchX509SVID request and a Mesh Hello with a 5 MiB token (in a child
    process, see BIG_BODY): both RESOURCE_EXHAUSTED (limit 4 MiB)."""
    out = ah.run_as(None, BIG_BODY, agent.sock, timeout=60)
    code, details = out["unary"]
    print("     FetchX509SVID with 5 MiB -> %s %r" % (code, details))
    assert code == "StatusCode.RESOURCE_EXHAUSTED", "5 MiB request: %s %r" % (code, details)
    code, details, n = out["mesh"]
    print("     Mesh/Connect Hello of 5 MiB -> %s %r" % (code, details))
    assert code == "StatusCode.RESOURCE_EXHAUSTED", "5 MiB Hello: %s %r" % (code, details)
    assert n == 0, "the agent answered a 5 MiB Hello with %d messages" % n
    normal_call_works("a 5 MiB message")


@r.test
def concurrent_streams_200():
    n_ch, per = 20, 10   # the agent allows 16 concurrent calls per connection
    chans = [grpc.insecure_channel("unix://" + agent.sock,
                                   options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(n_ch)]
    calls, results, errors = [], [], []
    lock = threading.Lock()

    def first(call):
        try:
            resp = next(iter(call))
            with lock:
                results.append(resp.svids[0].spiffe_id)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(repr(e))

    t0 = time.monotonic()
    try:
        for ch in chans:
            for _ in range(per):
                calls.append(ah.unary_stream(ch, "/SpiffeWorkloadAPI/FetchX509SVID",
                                             pb.wl.X509SVIDRequest(), pb.wl.X509SVIDResponse))
        guard = threading.Timer(h.T(40), lambda: [c.cancel() for c in calls])
        guard.start()
        threads = [threading.Thread(target=first, args=(c,), daemon=True) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(h.T(45))
        guard.cancel()
        took = time.monotonic() - t0
        assert not errors, "%d of %d streams failed: %r" % (len(errors), len(calls), errors[:3])
        assert len(results) == len(calls) and set(results) == {FRONTEND}, \
            "%d of %d streams answered" % (len(results), len(calls))
        open_ = ah.wait_metric(agent, "ward_agent_streams", lambda v: v >= len(calls), 5,
                               kind="workload_api", what="200 open Workload API streams")
        print("     %d concurrent streams answered in %.1fs (agent reports %d open)" % (
            len(calls), took, open_))
    finally:
        for c in calls:
            c.cancel()
        for ch in chans:
            ch.close()
    ah.wait_metric(agent, "ward_agent_streams", lambda v: v == 0, 10, kind="workload_api",
                   what="the cancelled streams to be released")
    normal_call_works("200 concurrent streams")


@r.test
def agent_survived_and_stops_cleanly():
    assert agent.alive()
    assert agent.stop(15) == 0, "ward-agent exit status %s" % agent.proc.returncode
    rep = ah.sanitizer_reports(agent)
    assert not rep, "sanitizer reports: %r" % rep[:10]


r.finish()
