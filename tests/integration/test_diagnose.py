#!/usr/bin/python3
"""wardctl diagnose against a real inbound ward-proxy: for each way an mTLS connection can fail
(wrong expected identity, client certificate from another CA, expired client certificate, none at
all, an expired server certificate, nothing listening, policy closing an accepted connection, not
TLS) the verdict line names the cause, a fix follows, and the exit status is 1; the healthy case
prints the server's SPIFFE id, TLS 1.3 and "OK" with status 0."""
import datetime
import os
import re
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import certs  # noqa: E402

H = "127.0.0.1"
r = h.Results()
h.require_binary()
WARDCTL = os.path.join(h.BUILD_DIR, "tools", "wardctl")
CERTS = h.certs_dir()
C = lambda n: os.path.join(CERTS, n)  # noqa: E731
BACKEND = h.spiffe("backend")
FRONTEND = h.spiffe("frontend")
echo = h.EchoServer(H)
IN_PORT = h.free_port(H)
ADDR = h.addr(H, IN_PORT)
inb = None


def diagnose(*args):
    p = subprocess.run([WARDCTL, "diagnose"] + list(args), capture_output=True, text=True,
                       timeout=h.T(30))
    return p.returncode, p.stdout, p.stderr


def verdict(out):
    """The one 'verdict:' line, checked to be followed (after its details) by a 'fix:' line."""
    lines = out.splitlines()
    idx = [i for i, l in enumerate(lines) if l.startswith("verdict:")]
    assert len(idx) == 1, "want exactly one verdict line:\n%s" % out
    v = lines[idx[0]]
    if not v.startswith("verdict: OK"):
        rest = lines[idx[0] + 1:]
        assert any(l.startswith("fix:") and len(l) > 20 for l in rest), "no fix after:\n%s" % out
    return v


def field(out, name):
    m = re.search(r"^%s\s+(.*)$" % re.escape(name), out, re.M)
    return m.group(1) if m else None


def mtls(cert, *extra, target=ADDR, ca="ca.pem"):
    return diagnose(target, "--cert", C(cert + ".pem"), "--key", C(cert + "-key.pem"),
                    "--ca", C(ca), *extra)


@r.fixture
def start_inbound():
    global inb
    inb = h.Proxy(["--cert", C("server.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem"),
                   "--inbound", "%s=%s" % (ADDR, echo.addr), "--mesh-default", "allow"],
                  name="inbound").start()


if inb is None:
    r.finish()


@r.test
def ok_right_cert_and_expected_id():
    rc, out, err = mtls("client", "--expect", BACKEND)
    v = verdict(out)
    assert rc == 0, (rc, out, err)
    assert v.startswith("verdict: OK"), out
    assert BACKEND in v and FRONTEND in v, v
    assert field(out, "server id") == BACKEND, out
    assert field(out, "tls").startswith("TLSv1.3, "), out
    assert "ALPN ward-tcp" in field(out, "tls"), out
    signed = field(out, "signed by")
    assert signed.startswith("/CN=ward test root (root #1 of %s, sha256 " % C("ca.pem")), out
    # the chain is printed with subject, issuer, serial and a relative expiry
    assert re.search(r"^\s+\[0\] subject\s+/CN=server$", out, re.M), out
    assert re.search(r"^\s+issuer\s+/CN=ward test root$", out, re.M), out
    assert re.search(r"^\s+serial\s+[0-9A-Fa-f]+$", out, re.M), out
    assert re.search(r"^\s+not after\s+\S+Z \(expires in 2[34]h\d\dm\)$", out, re.M), out


@r.test
def wrong_expected_id():
    other = h.spiffe("payments")
    rc, out, err = mtls("client", "--expect", other)
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v == "verdict: identity mismatch: got %s, expected %s" % (BACKEND, other), v


@r.test
def client_cert_from_another_ca():
    rc, out, err = mtls("otherca", "--expect", BACKEND)
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v.startswith("verdict: the server refused our certificate: unknown CA"), v
    assert "alert unknown_ca" in v, v
    assert "issued by /CN=ward other root" in out, out
    assert "same trust domain bundle" in out, out


@r.test
def expired_client_cert():
    rc, out, err = mtls("expired", "--expect", BACKEND)
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v.startswith("verdict: the server refused our certificate: expired"), v
    assert "alert certificate_expired" in v, v
    assert re.search(r"expired 1h\d\dm ago: notAfter \S+Z, now \S+Z", out), out
    assert "renew the workload certificate" in out, out


@r.test
def no_client_cert():
    rc, out, err = diagnose(ADDR, "--ca", C("ca.pem"), "--expect", BACKEND)
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v.startswith("verdict: the server refused the connection: no client certificate"), v
    assert field(out, "our certificate") == "none (no --cert)", out
    # the server's side is still shown (it sent its chain before refusing us)
    assert field(out, "server id") == BACKEND, out


@r.test
def server_with_expired_cert():
    life = max(3.0, h.T(2.0))
    now = certs.utcnow()
    ca = certs.load_pair(CERTS, "ca")
    cert, key = certs.mint("shortlived", [BACKEND], issuer=ca,
                           not_after=now + datetime.timedelta(seconds=life))
    cp, kp = certs.write_pair(CERTS, "shortlived", cert, key)
    port = h.free_port(H)
    h.Proxy(["--cert", cp, "--key", kp, "--ca", C("ca.pem"), "--mesh-default", "allow",
             "--inbound", "%s=%s" % (h.addr(H, port), echo.addr)], name="inbound-shortlived").start()
    time.sleep(max(0.0, life + 1.5 - (certs.utcnow() - now).total_seconds()))
    rc, out, err = mtls("client", "--expect", BACKEND, target=h.addr(H, port))
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert re.match(r"verdict: server certificate expired \d+s ago \(notAfter \S+Z\)$", v), v
    assert re.search(r"notAfter \S+Z, now \S+Z: the certificate ended \d+s ago", out), out
    assert re.search(r"^\s+not after\s+\S+Z \(expired \d+s ago\)$", out, re.M), out


@r.test
def nothing_listening():
    port = h.free_port(H)
    rc, out, err = mtls("client", target=h.addr(H, port))
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v == "verdict: connection refused: nothing listening at %s, is the sidecar running?" \
        % h.addr(H, port), v


@r.test
def policy_closes_accepted_connection():
    # mesh default deny and no policy: the handshake succeeds, then ward-tcp is denied (close)
    port = h.free_port(H)
    p = h.Proxy(["--cert", C("server.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem"),
                 "--inbound", "%s=%s" % (h.addr(H, port), echo.addr), "--mesh-default", "deny"],
                name="inbound-deny").start()
    rc, out, err = mtls("client", "--expect", BACKEND, "--admin", "127.0.0.1:%d" % p.admin_port,
                        target=h.addr(H, port))
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v == "verdict: the server accepted the TLS handshake, then closed the connection", v
    assert "no AuthorizationPolicy and mesh default deny" in out, out
    assert re.search(r"^\s+identity\s+%s \(from files\)" % re.escape(BACKEND), out, re.M), out
    assert re.search(r"^\s+policy\s+version \d+ from \S+, mesh default deny, 0 policies", out,
                     re.M), out


@r.test
def not_a_tls_port():
    # a plain echo server answers the ClientHello with itself
    rc, out, err = mtls("client", "--timeout", "3s", target=echo.addr)
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v.startswith("verdict: TLS protocol error during the handshake"), v


@r.test
def handshake_timeout():
    s = socket.socket()
    s.bind((H, 0))
    s.listen(4)  # accepts TCP (kernel backlog) but never speaks
    try:
        t0 = time.monotonic()
        rc, out, err = mtls("client", "--timeout", "700ms", target=h.addr(H, s.getsockname()[1]))
        took = time.monotonic() - t0
    finally:
        s.close()
    v = verdict(out)
    assert rc == 1, (rc, out, err)
    assert v.startswith("verdict: the TLS handshake timed out") and "within 700ms" in v, v
    assert took < h.T(10), took


@r.test
def usage():
    rc, out, _ = diagnose("--help")
    assert rc == 0 and "wardctl diagnose TARGET" in out and "--expect" in out, out
    p = subprocess.run([WARDCTL, "--help"], capture_output=True, text=True, timeout=h.T(30))
    assert p.returncode == 0 and "diagnose TARGET" in p.stdout, p.stdout
    for args in ([], ["not-an-address"], [ADDR, "--cert", C("client.pem")],
                 [ADDR, "--expect", "http://x"], [ADDR, "--alpn", "spdy"],
                 [ADDR, "--timeout", "soon"], [ADDR, "--bogus"],
                 [ADDR, "--ca", C("missing.pem")]):
        rc, out, err = diagnose(*args)
        assert rc == 2, (args, rc, out, err)
        assert err.startswith("wardctl diagnose: "), (args, err)
        assert "verdict:" not in out, (args, out)


echo.close()
r.finish()
