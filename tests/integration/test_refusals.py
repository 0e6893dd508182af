#!/usr/bin/python3
"""Every handshake refusal reason, provoked with real certificates, refused and counted under its
reason on the refusing side, and logged as a JSON "handshake_failed" line."""
import datetime
import os
import socket
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import certs  # noqa: E402

H = "127.0.0.1"
r = h.Results()
h.require_binary()
CERTS = h.certs_dir()
C = lambda n: os.path.join(CERTS, n)  # noqa: E731
echo = h.EchoServer(H)
inb = None
IN_PORT = h.free_port(H)


def failures(p, direction):
    m = p.metrics()
    return {dict(lab).get("reason"): v for (n, lab), v in m.items()
            if n == "ward_tls_handshakes_total" and ("direction", direction) in lab
            and ("result", "failure") in lab}


def delta(before, after):
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def expect_counted(p, direction, reason, before, log_since):
    """Wait until exactly one failure is counted, under reason; check the JSON log line."""
    d = h.wait_for(lambda: delta(before, failures(p, direction)) or None, 10,
                   what="a %s failure to be counted on %s" % (direction, p.name))
    # give a wrongly double-counted failure a moment to show up
    d = delta(before, failures(p, direction))
    assert d == {reason: 1}, "%s: expected ward_tls_handshakes_total{direction=%s,result=failure} " \
        "delta {%r: 1}, got %r" % (p.name, direction, reason, d)

    def logged():
        for rec in p.log_records(log_since):
            if rec.get("event") == "handshake_failed" and \
                    (rec.get("reason") == reason or reason in [str(v) for v in rec.values()]):
                return rec
        return None
    rec = h.wait_for(logged, 5, what='a JSON log line with "event":"handshake_failed" and reason %s' % reason)
    if "direction" in rec:
        assert rec["direction"] == direction, "log line direction %r, want %r" % (rec["direction"], direction)


@r.fixture
def start_inbound():
    global inb
    inb = h.Proxy(["--cert", C("server.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem"),
                   "--inbound", "%s=%s" % (h.addr(H, IN_PORT), echo.addr)], name="inbound").start()


if inb is None:
    r.finish()


@r.test
def good_client_accepted():
    st, peer = h.tls_probe(H, IN_PORT, C("client.pem"), C("client-key.pem"), C("ca.pem"))
    assert st == "ok", "valid client refused: %s" % peer
    assert peer == h.cert_der(C("server.pem")), "inbound did not present server.pem"


def inbound_refusal(cert, reason):
    before = failures(inb, "inbound")
    since = inb.stderr_size()
    conns = echo.stats()["connections"]
    kw = dict(cert=C(cert + ".pem"), key=C(cert + "-key.pem")) if cert else {}
    st, detail = h.tls_probe(H, IN_PORT, ca=C("ca.pem"), **kw)
    assert st == "refused", "client cert %s: expected refusal, got %s (%s)" % (cert, st, detail)
    expect_counted(inb, "inbound", reason, before, since)
    assert echo.stats()["connections"] == conns, "a refused connection reached the backend"


for cert, reason in (("expired", "expired"), ("future", "not_yet_valid"), ("otherca", "unknown_ca"),
                     ("twosan", "bad_certificate"), ("caleaf", "bad_certificate"),
                     (None, "no_client_cert")):
    r.run("inbound_refuses_%s_as_%s" % (cert or "no_cert", reason), inbound_refusal, cert, reason)


@r.test
def inbound_refuses_plaintext():
    """A plaintext caller at the (STRICT) inbound: closed unanswered and counted as
    plaintext_rejected — the caller most likely has no sidecar."""
    before = failures(inb, "inbound")
    since = inb.stderr_size()
    s = h.connect(H, IN_PORT)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(h.T(10))
        data = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        except (ConnectionResetError, socket.timeout):
            pass
        assert b"HTTP/" not in data, "plaintext was answered like HTTP: %r" % data[:100]
    finally:
        s.close()
    expect_counted(inb, "inbound", "plaintext_rejected", before, since)


@r.test
def inbound_still_serves_after_refusals():
    st, detail = h.tls_probe(H, IN_PORT, C("client.pem"), C("client-key.pem"), C("ca.pem"))
    assert st == "ok", detail


def outbound_refusal(reason, identity=None, in_cert="server", in_ca="ca.pem", out_ca="ca.pem",
                     upstream=None):
    """Run an outbound proxy (client cert, out_ca) towards a dedicated inbound (in_cert, in_ca) in
    front of a fresh echo backend, or towards upstream; the app's connection must be closed without
    data and the refusal counted under reason; with a dedicated inbound no byte may reach its
    backend."""
    be = h.EchoServer(H) if upstream is None else None
    try:
        if be is not None:
            in_port = h.free_port(H)
            h.Proxy(["--cert", C(in_cert + ".pem"), "--key", C(in_cert + "-key.pem"),
                     "--ca", C(in_ca), "--inbound", "%s=%s" % (h.addr(H, in_port), be.addr)],
                    name="inbound-" + in_cert).start()
            upstream = h.addr(H, in_port)
        out_port = h.free_port(H)
        op = h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C(out_ca),
                      "--outbound", "%s=%s,identity=%s" % (h.addr(H, out_port), upstream,
                                                           identity or h.spiffe("backend"))],
                     name="outbound").start()
        before = failures(op, "outbound")
        since = op.stderr_size()
        s = h.connect(H, out_port)
        try:
            try:
                s.sendall(b"secret request bytes\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert h.closed_without_data(s, timeout=10), "app connection got data back"
        finally:
            s.close()
        expect_counted(op, "outbound", reason, before, since)
        if be is not None:
            st = be.stats()
            assert st["connections"] == 0 and st["bytes"] == 0, \
                "backend behind the refused handshake saw %d connections, %d bytes" % (
                    st["connections"], st["bytes"])
    finally:
        if be is not None:
            be.close()


@r.test
def outbound_san_mismatch_other_expected_id():
    outbound_refusal("san_mismatch", identity=h.spiffe("someone-else"))


@r.test
def outbound_san_mismatch_wrongid_server():
    outbound_refusal("san_mismatch", in_cert="wrongid")


@r.test
def outbound_unknown_ca():
    # server cert from other-ca; the inbound trusts both roots, the outbound only ca
    outbound_refusal("unknown_ca", identity=h.spiffe("frontend"), in_cert="otherca",
                     in_ca="bundle.pem", out_ca="ca.pem")


@r.test
def outbound_protocol_when_peer_is_not_tls():
    # the "peer sidecar" is a plain echo server: it echoes the ClientHello back
    plain = h.EchoServer(H)
    try:
        outbound_refusal("protocol", upstream=plain.addr)
    finally:
        plain.close()


def outbound_vs_python_server(server_cert, reason, identity=None):
    """The 'peer sidecar' is a python TLS server presenting server_cert: the outbound must refuse
    it with reason and the server must receive no application byte."""
    srv = h.TLSEchoServer(C(server_cert + ".pem"), C(server_cert + "-key.pem"))
    try:
        outbound_refusal(reason, identity=identity, upstream=srv.addr)
        assert srv.stats()["bytes"] == 0, "%d bytes reached the peer" % srv.stats()["bytes"]
    finally:
        srv.close()


for cert, reason in (("expired", "expired"), ("future", "not_yet_valid"),
                     ("twosan", "bad_certificate"), ("caleaf", "bad_certificate")):
    r.run("outbound_refuses_peer_%s_as_%s" % (cert, reason), outbound_vs_python_server, cert, reason,
          h.spiffe("frontend"))


@r.test
def outbound_accepts_python_peer_with_good_cert():
    # control for the tests above: the same python peer with a valid SVID is accepted
    srv = h.TLSEchoServer(C("server.pem"), C("server-key.pem"))
    try:
        port = h.free_port(H)
        h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
                 "--outbound", "%s=%s,identity=%s" % (h.addr(H, port), srv.addr, h.spiffe("backend"))],
                name="outbound").start()
        h.echo_roundtrip(H, port, b"hello python peer")
    finally:
        srv.close()


@r.test
def resumed_session_is_rechecked_for_identity():
    # one outbound proxy, two mappings to the same inbound: only the first expects its identity.
    be = h.EchoServer(H)
    try:
        in_port, good, bad = h.free_port(H), h.free_port(H), h.free_port(H)
        h.Proxy(["--cert", C("server.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem"),
                 "--inbound", "%s=%s" % (h.addr(H, in_port), be.addr)], name="inbound").start()
        op = h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
                      "--outbound", "%s=%s,identity=%s" % (h.addr(H, good), h.addr(H, in_port), h.spiffe("backend")),
                      "--outbound", "%s=%s,identity=%s" % (h.addr(H, bad), h.addr(H, in_port), h.spiffe("frontend")),
                      "--workers", "1"], name="outbound-2maps").start()
        for i in range(4):
            h.echo_roundtrip(H, good, b"warm %d" % i)
        before = failures(op, "outbound")
        for i in range(3):
            s = h.connect(H, bad)
            try:
                s.sendall(b"must not pass")
            except OSError:
                pass
            assert h.closed_without_data(s, 10), "mapping expecting another identity got data"
            s.close()
        h.wait_for(lambda: delta(before, failures(op, "outbound")).get("san_mismatch", 0) >= 3, 10,
                   what="3 san_mismatch refusals on the second mapping (got %r)" % delta(before, failures(op, "outbound")))
        assert be.stats()["bytes"] == len(b"warm 0") * 4, "bytes from the refused mapping reached the app"
    finally:
        be.close()


@r.test
def resumed_session_is_rechecked_for_expiry():
    life = max(4.0, h.T(3.0))
    now = certs.utcnow()
    ca = certs.load_pair(CERTS, "ca")
    cert, key = certs.mint("shortlived", [h.spiffe("backend")], issuer=ca,
                           not_after=now + datetime.timedelta(seconds=life))
    cp, kp = certs.write_pair(CERTS, "shortlived", cert, key)
    be = h.EchoServer(H)
    try:
        in_port, out_port = h.free_port(H), h.free_port(H)
        h.Proxy(["--cert", cp, "--key", kp, "--ca", C("ca.pem"),
                 "--inbound", "%s=%s" % (h.addr(H, in_port), be.addr)], name="inbound-shortlived").start()
        op = h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
                      "--outbound", "%s=%s,identity=%s" % (h.addr(H, out_port), h.addr(H, in_port), h.spiffe("backend")),
                      "--workers", "1"], name="outbound").start()
        for i in range(3):
            h.echo_roundtrip(H, out_port, b"early %d" % i)
        # make sure a session ticket is cached, so the next attempt is a resumption candidate
        assert h.metric_value(op.metrics(), "ward_tls_resumed_total", direction="outbound") > 0, \
            "no resumption among the early connections"
        time.sleep(max(0.0, life + 1.5 - (certs.utcnow() - now).total_seconds()))
        before, since = failures(op, "outbound"), op.stderr_size()
        n0 = be.stats()["bytes"]
        s = h.connect(H, out_port)
        try:
            try:
                s.sendall(b"after expiry")
            except OSError:
                pass
            assert h.closed_without_data(s, 10), "connection to a peer whose certificate expired got data"
        finally:
            s.close()
        expect_counted(op, "outbound", "expired", before, since)
        assert be.stats()["bytes"] == n0, "bytes reached the app behind an expired peer"
    finally:
        be.close()


echo.close()
r.finish()
