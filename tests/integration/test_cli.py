#!/usr/bin/python3
"""Command line, environment, exit codes, SIGTERM drain, --max-connections."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

H = "127.0.0.1"
r = h.Results()
h.require_binary()
CERTS = h.certs_dir()
C = lambda n: os.path.join(CERTS, n)  # noqa: E731
echo = h.EchoServer(H)
ID = h.spiffe("backend")


def run(args, env=None, timeout=10):
    """Run ward-proxy to completion; returns (status, stdout+stderr). A run that does not exit in
    time is killed and reported as status None."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
    e.update(env or {})
    try:
        p = subprocess.run([h.PROXY] + args, env=e, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=h.T(timeout))
        return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired as ex:
        out = (ex.stdout or b"") + (ex.stderr or b"")
        return None, out.decode("utf-8", "replace")


def ident():
    return ["--cert", C("server.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem")]


def admin_off_port():
    return ["--admin", "127.0.0.1:%d" % h.free_port()]


def inbound_arg():
    return ["--inbound", "%s=%s" % (h.addr(H, h.free_port()), echo.addr)]


@r.test
def help_exits_0():
    st, out = run(["--help"])
    assert st == 0, "--help exit status %s" % st
    assert "--inbound" in out, "--help output does not mention --inbound: %r" % out[:500]
    for flag in ("--outbound", "--cert", "--key", "--ca", "--admin", "--drain-timeout"):
        assert flag in out, "--help does not mention %s" % flag


@r.test
def version_exits_0():
    st, out = run(["--version"])
    assert st == 0, "--version exit status %s" % st
    assert out.strip(), "--version printed nothing"
    assert len(out.strip().splitlines()) <= 5, "--version is verbose: %r" % out[:300]


def usage_error(args, must_mention, env=None):
    st, out = run(args, env)
    assert st == 2, "expected exit 2 for %r, got %s; output: %r" % (args, st, out[-500:])
    low = out.lower()
    assert any(m.lower() in low for m in must_mention), \
        "message does not name %s: %r" % (" or ".join(must_mention), out[-500:])


USAGE_CASES = [
    ("missing_cert", lambda: ["--key", C("server-key.pem"), "--ca", C("ca.pem")] + inbound_arg(), ["--cert", "cert"]),
    ("missing_key", lambda: ["--cert", C("server.pem"), "--ca", C("ca.pem")] + inbound_arg(), ["--key", "key"]),
    ("missing_ca", lambda: ["--cert", C("server.pem"), "--key", C("server-key.pem")] + inbound_arg(), ["--ca"]),
    ("inbound_without_equals", lambda: ident() + ["--inbound", "127.0.0.1:%d" % h.free_port()], ["--inbound", "inbound"]),
    ("inbound_bad_port", lambda: ident() + ["--inbound", "127.0.0.1:99999=%s" % echo.addr], ["--inbound", "inbound"]),
    ("inbound_bad_ip", lambda: ident() + ["--inbound", "300.1.2.3:1000=%s" % echo.addr], ["--inbound", "inbound"]),
    ("outbound_missing_identity", lambda: ident() + ["--outbound", "127.0.0.1:%d=127.0.0.1:1" % h.free_port()],
     ["--outbound", "identity"]),
    ("outbound_identity_not_spiffe", lambda: ident() + ["--outbound", "127.0.0.1:%d=127.0.0.1:1,identity=https://test.local/x"
                                                        % h.free_port()], ["identity", "spiffe", "--outbound"]),
    ("outbound_identity_no_path", lambda: ident() + ["--outbound", "127.0.0.1:%d=127.0.0.1:1,identity=spiffe://"
                                                     % h.free_port()], ["identity", "spiffe", "--outbound"]),
    ("bad_duration_unit", lambda: ident() + inbound_arg() + ["--connect-timeout", "5parsecs"], ["--connect-timeout", "connect-timeout"]),
    ("bad_duration_empty", lambda: ident() + inbound_arg() + ["--drain-timeout", ""], ["--drain-timeout", "drain-timeout"]),
    ("bad_duration_negative", lambda: ident() + inbound_arg() + ["--idle-timeout", "-5s"], ["--idle-timeout", "idle-timeout"]),
    ("bad_max_connections", lambda: ident() + inbound_arg() + ["--max-connections", "many"], ["--max-connections", "max-connections"]),
    ("bad_workers", lambda: ident() + inbound_arg() + ["--workers", "0"], ["--workers", "workers"]),
    ("bad_log_level", lambda: ident() + inbound_arg() + ["--log-level", "chatty"], ["--log-level", "log-level"]),
    ("unknown_flag", lambda: ident() + inbound_arg() + ["--frobnicate"], ["--frobnicate", "frobnicate"]),
    ("cert_file_missing", lambda: ["--cert", C("nope.pem"), "--key", C("server-key.pem"), "--ca", C("ca.pem")] + inbound_arg(),
     ["--cert", "nope.pem", "cert"]),
    ("key_does_not_match_cert", lambda: ["--cert", C("server.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem")]
     + inbound_arg(), ["key", "match"]),
]
for name, args, mention in USAGE_CASES:
    r.run("exit2_" + name, lambda a=args, m=mention: usage_error(a() + admin_off_port(), m))


@r.test
def exit2_bad_env_duration():
    usage_error(inbound_arg() + admin_off_port(), ["WARD_CONNECT_TIMEOUT", "connect-timeout"],
                env={"WARD_CERT": C("server.pem"), "WARD_KEY": C("server-key.pem"), "WARD_CA": C("ca.pem"),
                     "WARD_CONNECT_TIMEOUT": "soon"})


@r.test
def exit1_listener_in_use():
    s = socket.socket()
    s.bind((H, 0))
    s.listen(1)
    try:
        st, out = run(ident() + admin_off_port() + ["--inbound", "%s=%s" % (h.addr(H, s.getsockname()[1]), echo.addr)])
        assert st == 1, "listener address in use: expected exit 1, got %s: %r" % (st, out[-400:])
    finally:
        s.close()


@r.test
def env_equivalents():
    in1, in2, out1 = h.free_port(H), h.free_port(H), h.free_port(H)
    a_env, a_flag = h.free_port(), h.free_port()
    inb = h.Proxy([], admin=False, name="inbound-env",
                  env={"WARD_CERT": C("server.pem"), "WARD_KEY": C("server-key.pem"), "WARD_CA": C("ca.pem"),
                       "WARD_INBOUND": "%s=%s;%s=%s" % (h.addr(H, in1), echo.addr, h.addr(H, in2), echo.addr),
                       "WARD_ADMIN": "127.0.0.1:%d" % a_env, "WARD_WORKERS": "1",
                       "WARD_RELOAD_INTERVAL": "500ms", "WARD_LOG_LEVEL": "debug"})
    inb.admin_port = a_env
    inb.start()
    # flags override the environment: --admin wins over WARD_ADMIN
    outb = h.Proxy(["--admin", "127.0.0.1:%d" % a_flag], admin=a_flag, name="outbound-env",
                   env={"WARD_CERT": C("client.pem"), "WARD_KEY": C("client-key.pem"), "WARD_CA": C("ca.pem"),
                        "WARD_OUTBOUND": "%s=%s,identity=%s" % (h.addr(H, out1), h.addr(H, in1), ID),
                        "WARD_ADMIN": "127.0.0.1:%d" % a_env, "WARD_MAX_CONNECTIONS": "100",
                        "WARD_CONNECT_TIMEOUT": "2s", "WARD_HANDSHAKE_TIMEOUT": "3s",
                        "WARD_IDLE_TIMEOUT": "1m", "WARD_DRAIN_TIMEOUT": "5s"}).start()
    h.echo_roundtrip(H, out1, b"via env")
    st, peer = h.tls_probe(H, in2, C("client.pem"), C("client-key.pem"), C("ca.pem"))
    assert st == "ok", "second WARD_INBOUND mapping (after ';') not served: %s" % peer
    assert outb.alive() and inb.alive()
    assert outb.stop() == 0 and inb.stop() == 0


@r.test
def admin_off():
    port = h.free_port(H)
    p = h.Proxy(ident() + ["--inbound", "%s=%s" % (h.addr(H, port), echo.addr), "--admin", "off"],
                admin=False, name="admin-off").start(wait_ready=False)
    h.wait_for(lambda: h.tls_probe(H, port, C("client.pem"), C("client-key.pem"), C("ca.pem"))[0] == "ok",
               10, what="inbound with --admin off to serve")
    assert p.stop() == 0, "exit status %s" % p.proc.returncode


def make_pair(out_extra=(), in_extra=()):
    return h.Pair(CERTS, echo.addr, H, out_extra=list(out_extra), in_extra=list(in_extra))


def not_served(port, wait=1.5):
    """True if a new connection to port gets no echo within `wait` seconds."""
    try:
        s = h.connect(H, port, timeout=2)
    except OSError:
        return True
    try:
        try:
            s.sendall(b"new")
        except OSError:
            return True
        s.settimeout(wait)
        try:
            return s.recv(16) == b""
        except socket.timeout:
            return True
        except OSError:
            return True
    finally:
        s.close()


@r.test
def sigterm_drains():
    p = make_pair(out_extra=["--drain-timeout", "20s"])
    c = h.connect(H, p.out_port)
    c.sendall(b"one")
    assert h.recv_exact(c, 3) == b"one"
    p.outbound.signal(signal.SIGTERM)
    h.wait_for(lambda: p.outbound.get("/ready")[0] == 503, 5, what="/ready to turn 503 while draining")
    assert p.outbound.get("/live")[0] == 200, "/live not 200 while draining"
    assert p.outbound.alive(), "exited while a connection was still open"
    c.sendall(b"still there")
    assert h.recv_exact(c, 11) == b"still there", "open connection broken during drain"
    assert not_served(p.out_port), "a new connection was served while draining"
    assert p.outbound.alive(), "exited while a connection was still open"
    t0 = time.monotonic()
    c.close()
    st = p.outbound.wait(10)
    assert st == 0, "exit status %s after the last connection closed" % st
    assert time.monotonic() - t0 < h.T(5), "took %.1fs to exit after the last connection closed" % (time.monotonic() - t0)
    p.inbound.stop()


@r.test
def drain_timeout_expires():
    p = make_pair(out_extra=["--drain-timeout", "2s"])
    c = h.connect(H, p.out_port)
    c.sendall(b"x")
    assert h.recv_exact(c, 1) == b"x"
    t0 = time.monotonic()
    p.outbound.signal(signal.SIGTERM)
    st = p.outbound.wait(12)
    dt = time.monotonic() - t0
    assert st is not None, "still running %.0fs after SIGTERM with --drain-timeout 2s" % dt
    assert dt >= 1.5, "exited after %.2fs, before the 2s drain timeout" % dt
    assert st == 0, "exit status %s after drain timeout" % st
    assert h.closed_without_data(c, 5), "open connection not closed after drain timeout"
    c.close()
    p.inbound.stop()


@r.test
def sigint_also_drains():
    p = make_pair()
    p.outbound.signal(signal.SIGINT)
    assert p.outbound.wait(10) == 0, "SIGINT with no open connection: exit %s" % p.outbound.proc.returncode
    p.inbound.stop()


@r.test
def max_connections():
    p = make_pair(out_extra=["--max-connections", "5", "--workers", "2"])
    held = []
    try:
        for i in range(5):
            s = h.connect(H, p.out_port)
            s.sendall(b"c%d" % i)
            assert h.recv_exact(s, 2) == b"c%d" % i, "connection %d not served" % i
            held.append(s)
        sixth = h.connect(H, p.out_port, timeout=5)   # the kernel may still complete the TCP handshake
        sixth.sendall(b"six")
        sixth.settimeout(1.5)
        try:
            got = sixth.recv(3)
        except socket.timeout:
            got = None
        except OSError as e:
            got = repr(e)
        assert got is None, "6th connection with --max-connections 5 was served or closed: %r" % (got,)
        held.pop(0).close()
        assert h.recv_exact(sixth, 3, timeout=10) == b"six", "6th connection not served after one closed"
        held.append(sixth)
    finally:
        for s in held:
            s.close()
    p.stop()


@r.test
def handshake_timeout_closes_silent_client():
    port = h.free_port(H)
    h.Proxy(ident() + ["--inbound", "%s=%s" % (h.addr(H, port), echo.addr), "--handshake-timeout", "1s"],
            name="inbound-hs").start()
    s = h.connect(H, port)
    t0 = time.monotonic()
    try:
        assert h.closed_without_data(s, 10), "silent client got data"
    finally:
        s.close()
    dt = time.monotonic() - t0
    assert 0.7 <= dt <= h.T(4), "silent TLS client closed after %.2fs with --handshake-timeout 1s" % dt


@r.test
def idle_timeout_closes_quiet_connection():
    p = make_pair(out_extra=["--idle-timeout", "1s"])
    s = h.connect(H, p.out_port)
    try:
        s.sendall(b"hi")
        assert h.recv_exact(s, 2) == b"hi"
        t0 = time.monotonic()
        assert h.closed_without_data(s, 10), "idle connection got data"
        dt = time.monotonic() - t0
        assert 0.7 <= dt <= h.T(4), "idle connection closed after %.2fs with --idle-timeout 1s" % dt
    finally:
        s.close()
    # a connection that keeps talking is not idle
    s = h.connect(H, p.out_port)
    try:
        for i in range(6):
            s.sendall(b"k%d" % i)
            assert h.recv_exact(s, 2) == b"k%d" % i, "active connection cut"
            time.sleep(0.4)
    finally:
        s.close()
    p.stop()


@r.test
def upstream_refused_closes_client():
    # outbound pointing at a port where nothing listens: the app's connection is closed promptly
    dead = h.free_port(H)
    port = h.free_port(H)
    h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
             "--outbound", "%s=%s,identity=%s" % (h.addr(H, port), h.addr(H, dead), ID),
             "--connect-timeout", "2s"], name="outbound-dead").start()
    t0 = time.monotonic()
    try:
        s = h.connect(H, port)
    except ConnectionResetError:
        return  # accepted and reset before our connect() even returned: closed promptly
    try:
        assert h.closed_without_data(s, 10), "got data from nowhere"
    finally:
        s.close()
    assert time.monotonic() - t0 < h.T(3), "took %.1fs to close" % (time.monotonic() - t0)


echo.close()
r.finish()
