#!/usr/bin/python3
"""Faults around the proxies: a backend that is down, resets or comes back; the agent going away
(and staying away past the SVID's expiry); SIGHUP and SIGTERM under keep-alive load; a disk that
is full when the identity files are rewritten; a peer whose clock is ahead.

Cases
  backend_down_counted_and_closed   nothing listens at the app's address: an opaque TCP client is
                                    closed, ward_upstream_connect_failures_total grows.
  backend_down_http1_gets_502       ... and an HTTP/1.1 client gets a 502 (not a reset).
  backend_fails_mid_response        the app resets or closes in the middle of a response: the
                                    client's connection ends at once (no hang, never a complete
                                    response), counted (ward_requests_total{status_class="none"}).
  backend_reset_before_response_502 the app resets after reading the request, before any byte of
                                    a response: 502, as when it closes.
  backend_back_without_restart      the app listens again: traffic works with the same proxies.
  agent_down_and_back               ward-agent SIGKILLed under traffic: the last good SVID keeps
                                    serving, ward_agent_connected 1 -> 0 -> 1, no failed request.
  agent_down_past_svid_expiry       --svid-ttl 20s and the agent away until expiry: /ready 503,
                                    peers refuse the expired SVID as `expired` (a file-identity
                                    inbound and a file-identity outbound, both trusting the agent's
                                    root, and a raw client presenting an expired Workload API SVID),
                                    nothing is served; the agent back: everything recovers.
  sighup_under_load                 8 keep-alive HTTP/1.1 clients; SIGHUP the inbound with new
                                    identity files and a new policy: both reloaded, zero failures.
  sigterm_under_load                SIGTERM the inbound: requests in flight complete, new
                                    connections are refused, exit 0 within --drain-timeout.
  disk_full_identity_reload         the cert file emptied / truncated / garbage: reload refused
                                    (ward_identity_reloads_total{result="failure"}), old identity
                                    kept, traffic unaffected; a valid new file: reloaded.
  disk_full_tmpfs                   the same with a real ENOSPC: the identity files on a 64 KiB
                                    tmpfs in a private mount namespace (unshare -m), filled, then
                                    rewritten in place.
  clock_skew_not_before_30s         a peer certificate valid from now+30 s: what the proxy does
                                    (refused as not_yet_valid: no skew tolerance), and a proxy whose
                                    own certificate is not yet valid does not start.
"""
import collections
import datetime
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import certs as mk  # noqa: E402

H = "127.0.0.1"
SANITIZED = bool(os.environ.get("WARD_SANITIZED"))
FRONTEND = h.spiffe("frontend")
BACKEND = h.spiffe("backend")

r = h.Results()
h.require_binary()


if h.raise_nofile() < 1024:
    print("RLIMIT_NOFILE hard limit below 1024: too low for these tests")
    print("0 passed, 0 failed, 1 skipped", flush=True)
    sys.exit(0)

CERTS = h.certs_dir()
WORK = h.mkdtemp(prefix="ward-faults-")
# for binaries run here directly: WARD_* (e.g. WARD_AGENT, the agent's path under ctest) would be
# read as their configuration
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}


def C(name):
    return os.path.join(CERTS, name)


def slow(seconds):
    return h.T(seconds) * (3 if SANITIZED else 1)


def m(p, name, **labels):
    return h.metric_value(p.metrics(), name, **labels)


def events(p, event, since=0):
    return [x for x in p.log_records(since) if x.get("event") == event]


def ready(p):
    try:
        return p.get("/ready", timeout=1.0)[0] == 200
    except OSError:
        return False


def read_all(s, timeout=5.0, limit=1 << 24):
    """Everything until EOF/reset/timeout: (bytes, how it ended: "eof", "reset:..", "timeout")."""
    s.settimeout(h.T(timeout))
    buf = b""
    t0 = time.monotonic()
    while len(buf) < limit:
        try:
            d = s.recv(65536)
        except socket.timeout:
            return buf, "timeout", time.monotonic() - t0
        except OSError as e:
            return buf, "reset:%s" % e.__class__.__name__, time.monotonic() - t0
        if not d:
            return buf, "eof", time.monotonic() - t0
        buf += d
    return buf, "limit", time.monotonic() - t0


def get_once(port, path="/", timeout=5.0):
    s = h.connect(H, port)
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n" % path.encode())
        return read_all(s, timeout)
    finally:
        s.close()


# --------------------------------------------------------------------------- apps

class App(h._Server):
    """HTTP/1.1 app over raw sockets, keep-alive. GET /slow/... answers after `slow_s`; the body
    is the path. .mode changes what it does with the next request: "ok", "rst_before" (reset
    after reading the request), "rst_mid" / "fin_mid" (head + 5000 of 100000 body bytes, then a
    reset / a clean close)."""

    def __init__(self, slow_s=0.3):
        self.mode = "ok"
        self.slow_s = slow_s
        self.requests = 0
        super().__init__(H, self._h)

    def _h(self, server, c):
        f = c.makefile("rb")
        while True:
            line = f.readline(65537)
            if not line:
                return
            if line == b"\r\n":
                continue
            parts = line.split()
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            while True:
                l = f.readline(65537)
                if l in (b"\r\n", b""):
                    break
            with self._lock:
                self.requests += 1
            mode = self.mode
            if mode == "rst_before":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if mode in ("rst_mid", "fin_mid"):
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
                time.sleep(0.2)
                if mode == "rst_mid":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    c.shutdown(socket.SHUT_WR)
                return
            if path.startswith("/slow"):
                time.sleep(self.slow_s)
            body = path.encode("latin-1")
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))


def rebind(srv, port):
    """Moves a harness server (always bound to port 0) to exactly `port`: the app coming back
    at the address the proxy was configured with."""
    srv._stop.set()
    srv.sock.close()
    srv._thread.join(2)
    srv._stop.clear()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((H, port))
    s.listen(1024)
    s.settimeout(0.2)
    srv.sock, srv.port, srv.addr = s, port, h.addr(H, port)
    srv._thread = threading.Thread(target=srv._loop, daemon=True)
    srv._thread.start()
    return srv


def fixed_app(port, slow_s=0.3):
    return rebind(App(slow_s=slow_s), port)


def _reset_echo(server, c):
    """Echo; a chunk containing b"!reset" makes it reset the connection (SO_LINGER 0 + close)."""
    while True:
        d = c.recv(65536)
        if not d:
            return
        if b"!reset" in d:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        c.sendall(d)


def fixed_echo(port):
    return rebind(h._Server(H, _reset_echo), port)


# --------------------------------------------------------------------------- backend faults

# One pair for the backend group: HTTP/1.1 and opaque TCP toward an app port nothing listens on.
APP_PORT = h.free_port(H)
ECHO_PORT = h.free_port(H)
bpair = {}


@r.fixture
def backend_pair():
    in2, out2 = h.free_port(H), h.free_port(H)
    p = h.Pair(CERTS, h.addr(H, APP_PORT), H,
               in_extra=["--inbound", "%s=%s" % (h.addr(H, in2), h.addr(H, ECHO_PORT)),
                         "--connect-timeout", "2s"],
               out_extra=["--outbound", "%s=%s,identity=%s" % (h.addr(H, out2), h.addr(H, in2),
                                                               BACKEND)])
    bpair.update(pair=p, http=p.out_port, tcp=out2)


@r.test
def backend_down_counted_and_closed():
    p = bpair["pair"]
    f0 = m(p.inbound, "ward_upstream_connect_failures_total", direction="inbound")
    s = h.connect(H, bpair["tcp"])
    try:
        s.sendall(b"\x00anyone there?\n")
        data, end, dt = read_all(s, 5)
    finally:
        s.close()
    print("     opaque TCP, nothing listening: %r after %.2fs, %d bytes" % (end, dt, len(data)))
    assert data == b"" and end != "timeout", "opaque TCP to a dead app: %r %r" % (end, data[:80])
    data, end, dt = get_once(bpair["http"])
    print("     HTTP/1.1, nothing listening: %s after %.2fs: %r" % (end, dt, data[:60]))
    h.wait_for(lambda: m(p.inbound, "ward_upstream_connect_failures_total",
                         direction="inbound") >= f0 + 2, 5, interval=0.1,
               what="ward_upstream_connect_failures_total{direction=inbound} to grow by 2")
    recs = events(p.inbound, "upstream_connect_failed")
    assert recs and "refused" in recs[-1].get("error", "").lower(), recs[-1:]


@r.test
def backend_down_http1_gets_502():
    data, end, dt = get_once(bpair["http"])
    assert data.startswith(b"HTTP/1.1 502"), \
        "HTTP/1.1 request through the pair while nothing listens at the app's address: got %s " \
        "after %.2fs with %d bytes %r, expected a 502 response (the inbound connects to the app " \
        "before it reads the request and resets the caller's connection when that connect " \
        "fails)" % (end, dt, len(data), data[:60])


APP = {}


@r.test
def backend_fails_mid_response():
    p = bpair["pair"]
    app = APP["app"] = fixed_app(APP_PORT)
    h.wait_for(lambda: get_once(bpair["http"], "/x")[0].startswith(b"HTTP/1.1 200"), 10,
               what="the app to answer through the pair")
    for mode in ("rst_mid", "fin_mid"):
        before = m(p.inbound, "ward_requests_total", direction="inbound", status_class="none")
        since = p.inbound.stderr_size()
        app.mode = mode
        data, end, dt = get_once(bpair["http"], "/mid")
        app.mode = "ok"
        print("     app %s: the client got %d bytes (%r...), then %s after %.2fs" % (
            mode, len(data), data[:20], end, dt))
        assert end != "timeout" and dt < h.T(3), "%s: the client's connection did not end " \
            "(%s after %.2fs)" % (mode, end, dt)
        assert len(data) < 100000, "%s: a complete response came through" % mode
        h.wait_for(lambda: m(p.inbound, "ward_requests_total", direction="inbound",
                             status_class="none") > before, 5,
                   what="ward_requests_total{status_class=none} to count the broken response")
        recs = [x.get("event") for x in p.inbound.log_records(since)
                if x.get("level") in ("warn", "error")]
        print("     ... counted in ward_requests_total{status_class=none}; inbound warn lines: "
              "%s" % (recs or "none"))
    # opaque TCP: the app resets in the middle of a stream
    e = fixed_echo(ECHO_PORT)
    s = h.connect(H, bpair["tcp"])
    try:
        s.sendall(b"\x00before\n")
        assert h.recv_exact(s, 8) == b"\x00before\n"
        s.sendall(b"!reset\n")
        data, end, dt = read_all(s, 5)
        print("     opaque TCP, app reset mid-stream: %s after %.2fs" % (end, dt))
        assert end != "timeout", "opaque TCP: the app's reset did not reach the client"
    finally:
        s.close()
        e.close()
    for q in (p.inbound, p.outbound):
        assert q.alive() and ready(q), "%s not healthy after the app's failures" % q.name


@r.test
def backend_reset_before_response_502():
    app = APP["app"]
    app.mode = "rst_before"
    try:
        data, end, dt = get_once(bpair["http"], "/rst")
    finally:
        app.mode = "ok"
    assert data.startswith(b"HTTP/1.1 502"), \
        "the app reset its connection after reading the request, before any response byte: the " \
        "client got %s after %.2fs with %r, expected 502 (an app that closes with a FIN there " \
        "gives 502, see test_http1 app_failures_and_connection_close)" % (end, dt, data[:60])


@r.test
def backend_back_without_restart():
    p = bpair["pair"]
    pids = (p.inbound.pid, p.outbound.pid)
    APP["app"].close()
    # down again, then back at the same address
    data, end, _ = get_once(bpair["http"])
    assert not data.startswith(b"HTTP/1.1 200"), "served while the app was down"
    app = fixed_app(APP_PORT)
    e = fixed_echo(ECHO_PORT)
    try:
        for i in range(20):
            data, end, _ = get_once(bpair["http"], "/back/%d" % i)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"/back/%d" % i), \
                "request %d after the app came back: %s %r" % (i, end, data[:80])
            h.echo_roundtrip(H, bpair["tcp"], b"\x00back %d\n" % i)
        assert (p.inbound.pid, p.outbound.pid) == pids and p.inbound.alive() and \
            p.outbound.alive(), "the proxies were restarted"
    finally:
        app.close()
        e.close()
    p.stop()


# --------------------------------------------------------------------------- the agent

def agent_cases():
    try:
        import agentharness as ah
        ah.protos()
        import grpc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise AssertionError("agent harness unavailable (python3-grpcio, protoc?): %r" % e)
    if not os.path.exists(ah.AGENT):
        raise AssertionError("ward-agent not found at %s" % ah.AGENT)
    return ah


AG = {}
TTL_S = 20


@r.fixture
def agent_mesh():
    ah = agent_cases()
    help_text = subprocess.run([ah.AGENT, "--help"], capture_output=True, env=CLEAN_ENV,
                               timeout=h.T(10)).stdout.decode()
    assert "--svid-ttl" in help_text, "ward-agent has no --svid-ttl"
    tmp = h.mkdtemp(prefix="ward-faults-agent-")
    os.chmod(tmp, 0o755)
    iss = ah.TokenIssuer(tmp)
    token = iss.write("backend.jwt", iss.mint("default", "backend"))
    agent = ah.Agent(workloads={0: FRONTEND}, issuer=iss, svid_ttl="%ds" % TTL_S,
                     workload_svid_ttl="%ds" % TTL_S, log_level="info")
    agent.start()
    echo = h.EchoServer(H)
    judge_echo = h.EchoServer(H)
    # certificates from the agent's own CA (its state dir), valid for a day: peers that do not
    # depend on the agent, to see what they make of the agent-issued SVIDs after expiry
    ca = mk.load_pair(agent.state, "ca")
    d = h.mkdtemp(prefix="ward-faults-agent-certs-")
    judge_id = h.spiffe("judge")
    for name, sid in (("judge", judge_id), ("caller", FRONTEND)):
        c, k = mk.mint(name, [sid], issuer=ca)
        mk.write_pair(d, name, c, k)
    shutil.copy(os.path.join(agent.state, "ca.pem"), os.path.join(d, "agent-ca.pem"))
    in_port, out_port, judge_port, out_judge = (h.free_port(H) for _ in range(4))
    caller_port = h.free_port(H)
    inbound = h.Proxy(["--agent", "unix:" + agent.sock, "--agent-token-file", token,
                       "--inbound", "%s=%s" % (h.addr(H, in_port), echo.addr)], name="inbound")
    outbound = h.Proxy(["--agent", "unix:" + agent.sock,
                        "--outbound", "%s=%s,identity=%s" % (h.addr(H, out_port),
                                                             h.addr(H, in_port), BACKEND),
                        "--outbound", "%s=%s,identity=%s" % (h.addr(H, out_judge),
                                                             h.addr(H, judge_port), judge_id)],
                       name="outbound")
    judge = h.Proxy(["--cert", os.path.join(d, "judge.pem"), "--key",
                     os.path.join(d, "judge-key.pem"), "--ca", os.path.join(d, "agent-ca.pem"),
                     "--inbound", "%s=%s" % (h.addr(H, judge_port), judge_echo.addr)],
                    name="judge-inbound")
    caller = h.Proxy(["--cert", os.path.join(d, "caller.pem"), "--key",
                      os.path.join(d, "caller-key.pem"), "--ca", os.path.join(d, "agent-ca.pem"),
                      "--outbound", "%s=%s,identity=%s" % (h.addr(H, caller_port),
                                                           h.addr(H, in_port), BACKEND)],
                     name="caller-outbound")
    for p in (inbound, outbound, judge, caller):
        p.start()
    # a Workload API SVID for uid 0 (FRONTEND), kept to present it after it expired
    with ah.channel(agent.sock) as ch:
        resp = ah.fetch_x509svid(ch, ah.protos())
    sv = resp.svids[0]
    from cryptography.hazmat.primitives import serialization
    chain = ah.certs_from_concat(sv.x509_svid)
    key = serialization.load_der_private_key(sv.x509_svid_key, None)
    with open(os.path.join(d, "wl.pem"), "wb") as f:
        for c in chain:
            f.write(c.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(d, "wl-key.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    AG.update(ah=ah, agent=agent, inbound=inbound, outbound=outbound, judge=judge, caller=caller,
              out_port=out_port, out_judge=out_judge, judge_port=judge_port, in_port=in_port,
              caller_port=caller_port, d=d, echo=echo, judge_echo=judge_echo,
              wl_not_after=chain[0].not_valid_after.replace(
                  tzinfo=datetime.timezone.utc).timestamp())
    # every path works while the SVIDs are fresh
    for port in (out_port, out_judge, caller_port):
        h.echo_roundtrip(H, port, b"\x00fresh\n")
    st = h.tls_probe(H, judge_port, os.path.join(d, "wl.pem"), os.path.join(d, "wl-key.pem"),
                     None, b"\x00wl\n", verify_server=False)[0]
    assert st == "ok", "a fresh Workload API SVID was refused by the judge: %r" % st


def agent_procs():
    return (AG["inbound"], AG["outbound"])


@r.test
def agent_down_and_back():
    if not AG:
        raise h.SkipTest("no agent mesh")
    ah, agent = AG["ah"], AG["agent"]
    for p in agent_procs():
        assert m(p, "ward_agent_connected") == 1, "%s not connected to the agent" % p.name
    tr = ah.Traffic(H, AG["out_port"], pause=0.02)
    try:
        n = m(AG["inbound"], "ward_svid_installed_total")
        ah.wait_metric(AG["inbound"], "ward_svid_installed_total", lambda v: v > n, TTL_S,
                       what="a renewal before the kill")
        agent.sigkill()
        t_kill = time.monotonic()
        for p in agent_procs():
            ah.wait_metric(p, "ward_agent_connected", lambda v: v == 0, 5,
                           what="%s: ward_agent_connected 0" % p.name)
        ok0 = tr.ok
        time.sleep(3.0)
        assert tr.ok > ok0 + 10, "only %d requests in 3 s while the agent was down" % (tr.ok - ok0)
        for p in agent_procs():
            assert ready(p), "%s not ready while the agent is down (SVID still valid)" % p.name
        installed = {p: m(p, "ward_svid_installed_total") for p in agent_procs()}
        agent.restart()
        for p in agent_procs():
            ah.wait_metric(p, "ward_agent_connected", lambda v: v == 1, 20,
                           what="%s: ward_agent_connected back to 1" % p.name)
            ah.wait_metric(p, "ward_svid_installed_total", lambda v, b=installed[p]: v > b, 15,
                           what="%s: an SVID from the restarted agent" % p.name)
        down = time.monotonic() - t_kill
        time.sleep(1.0)
    finally:
        tr.stop()
    print("     %d requests, %d failed, across %.1fs with the agent killed and restarted" % (
        tr.ok + tr.fail, tr.fail, down))
    tr.assert_clean(50, "across the agent's SIGKILL and restart")


@r.test
def agent_down_past_svid_expiry():
    if not AG:
        raise h.SkipTest("no agent mesh")
    ah, agent = AG["ah"], AG["agent"]
    procs = agent_procs()
    judge, caller = AG["judge"], AG["caller"]
    n = m(AG["inbound"], "ward_svid_installed_total")
    ah.wait_metric(AG["inbound"], "ward_svid_installed_total", lambda v: v > n, TTL_S,
                   what="a renewal before the kill")
    agent.sigkill()
    exp = {p: m(p, "ward_cert_expiry_timestamp_seconds") for p in procs}
    judge_exp0 = m(judge, "ward_tls_handshakes_total", direction="inbound", reason="expired")
    caller_exp0 = m(caller, "ward_tls_handshakes_total", direction="outbound", reason="expired")
    judge_backend0 = AG["judge_echo"].stats()["connections"]
    flipped = {}
    served_while_valid = 0
    deadline = time.monotonic() + h.T(TTL_S + 10)
    while len(flipped) < len(procs) and time.monotonic() < deadline:
        for p in procs:
            if p not in flipped and not ready(p):
                flipped[p] = time.time()
        if time.time() < min(exp.values()) - 2:
            h.echo_roundtrip(H, AG["out_port"], b"\x00still valid\n")
            served_while_valid += 1
        time.sleep(0.2)
    assert len(flipped) == len(procs), "still ready %.0fs after the agent died with --svid-ttl " \
        "%ds: %r" % (h.T(TTL_S + 10), TTL_S, [p.name for p in procs if p not in flipped])
    for p in procs:
        assert flipped[p] >= exp[p] - 1.5, "%s not ready %.1fs before its SVID expired" % (
            p.name, exp[p] - flipped[p])
        assert m(p, "ward_agent_connected") == 0
    assert served_while_valid > 5, "only %d requests served while the SVIDs were valid" % (
        served_while_valid)
    time.sleep(1.1)  # past the second the SVIDs expired in
    outcomes = {}
    # 1. outbound (expired SVID) -> inbound (expired SVID)
    for name, port in (("outbound->inbound", AG["out_port"]),
                       ("outbound->judge", AG["out_judge"]),   # expired client, valid server
                       ("caller->inbound", AG["caller_port"])):  # valid client, expired server
        s = h.connect(H, port)
        try:
            s.sendall(b"\x00expired?\n")
            data, end, dt = read_all(s, 5)
        finally:
            s.close()
        outcomes[name] = "%s after %.2fs, %d bytes" % (end, dt, len(data))
        assert data == b"", "%s: served after the SVIDs expired (%r)" % (name, data[:40])
    # 2. a raw client presenting the expired Workload API SVID straight to the judge
    wl_exp = AG["wl_not_after"]
    if time.time() > wl_exp + 1:
        st = h.tls_probe(H, AG["judge_port"], os.path.join(AG["d"], "wl.pem"),
                         os.path.join(AG["d"], "wl-key.pem"), None, b"\x00wl\n",
                         verify_server=False)
        outcomes["expired Workload API SVID->judge"] = "%s %s" % (st[0], st[1] if st[0] != "ok"
                                                                  else "")
        assert st[0] != "ok", "the judge accepted an expired Workload API SVID"
    judge_exp = m(judge, "ward_tls_handshakes_total", direction="inbound", reason="expired")
    caller_exp = m(caller, "ward_tls_handshakes_total", direction="outbound", reason="expired")
    recs = [x.get("reason") for x in events(judge, "handshake_failed")] + \
        [x.get("reason") for x in events(caller, "handshake_failed")]
    print("     after expiry: %s; judge refused %d as expired, caller refused %d as expired; "
          "reasons logged: %s" % (outcomes, judge_exp - judge_exp0, caller_exp - caller_exp0,
                                  collections.Counter(recs).most_common()))
    assert judge_exp - judge_exp0 >= 1, "the judge (file identity) did not refuse the outbound's " \
        "expired SVID as expired"
    assert caller_exp - caller_exp0 >= 1, "the caller (file identity) did not refuse the " \
        "inbound's expired SVID as expired"
    assert AG["judge_echo"].stats()["connections"] == judge_backend0, \
        "the judge's app was reached with an expired peer"
    agent.restart()
    for p in procs:
        p.wait_ready(30)
    for port in (AG["out_port"], AG["out_judge"], AG["caller_port"]):
        h.wait_for(lambda: h.echo_roundtrip(H, port, b"\x00recovered\n"), 10,
                   what="traffic on %d after the agent came back" % port)
    sanit = ah.sanitizer_reports(agent, *procs)
    assert not sanit, sanit[:5]


# --------------------------------------------------------------------------- signals under load

POLICY_ALLOW = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend-%(v)d, namespace: default}
spec:
  selector: {identity: "%(server)s"}
  action: ALLOW
  rules:
  - from: [{identities: ["%(client)s"]}]
"""


class KeepAliveLoad:
    """n threads, each a keep-alive HTTP/1.1 connection doing GET /slow/... (the app answers
    after slow_s) in a loop. Every request is recorded: (thread, t_sent, t_done, status or
    error). A connection the proxy closed is reopened (also recorded)."""

    def __init__(self, port, n=8, paths=("/slow/",), limit=20000):
        self.port, self.paths, self.limit = port, paths, limit
        self.lock = threading.Lock()
        self.log = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        s = f = None
        k = 0
        time.sleep(0.05 * i)  # staggered: at any moment some request has only just started
        while not self._stop.is_set() and k < self.limit:
            k += 1
            path = "%s%d/%d" % (self.paths[k % len(self.paths)], i, k)
            t_sent = None
            try:
                if s is None:
                    s = socket.create_connection((H, self.port), timeout=h.T(10))
                    f = s.makefile("rb")
                s.sendall(b"GET %s HTTP/1.1\r\nHost: orders\r\n\r\n" % path.encode())
                t_sent = time.monotonic()
                status = f.readline()
                if not status:
                    raise ConnectionError("closed before a response")
                length, close = 0, False
                while True:
                    line = f.readline(65537)
                    if line in (b"\r\n", b""):
                        break
                    kk, _, v = line.partition(b":")
                    if kk.strip().lower() == b"content-length":
                        length = int(v)
                    if kk.strip().lower() == b"connection" and b"close" in v.lower():
                        close = True
                body = f.read(length)
                ok = status.startswith(b"HTTP/1.1 200") and body == path.encode()
                res = 200 if ok else "bad: %r %r" % (status[:40], body[:40])
                if close:
                    s.close()
                    s = None
            except Exception as e:  # noqa: BLE001
                res = "error: %r" % e
                if s is not None:
                    s.close()
                s = None
                if t_sent is None:
                    t_sent = time.monotonic()
                    res = "connect/send " + res
                time.sleep(0.05)
            with self.lock:
                self.log.append((i, t_sent, time.monotonic(), res))
        if s is not None:
            s.close()

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(h.T(20))

    def results(self, t_from=None, t_to=None):
        with self.lock:
            return [x for x in self.log if (t_from is None or x[1] >= t_from) and
                    (t_to is None or x[1] < t_to)]


def server_cert(port):
    """DER of the certificate an inbound presents to a new mTLS connection."""
    s = h.tls_connect(H, port, C("client.pem"), C("client-key.pem"), C("ca.pem"))
    try:
        return s.getpeercert(binary_form=True)
    finally:
        s.close()


def signal_pair(app, extra_in=()):
    d = h.mkdtemp(prefix="ward-faults-sig-")
    for n in ("server.pem", "server-key.pem", "ca.pem"):
        shutil.copy(C(n), os.path.join(d, n))
    pol = os.path.join(d, "policy.yaml")
    with open(pol, "w") as f:
        f.write(POLICY_ALLOW % {"v": 1, "server": BACKEND, "client": FRONTEND})
    p = h.Pair(CERTS, app.addr, H, in_cert="server", start=False,
               in_extra=["--policy", pol, "--reload-interval", "1h", "--drain-timeout", "5s",
                         "--workers", "2"] + list(extra_in))
    a = p.inbound.args
    a[a.index("--cert") + 1] = os.path.join(d, "server.pem")
    a[a.index("--key") + 1] = os.path.join(d, "server-key.pem")
    a[a.index("--ca") + 1] = os.path.join(d, "ca.pem")
    p.start()
    return p, d, pol


@r.test
def sighup_under_load():
    app = App(slow_s=0.05)
    p, d, pol = signal_pair(app)
    load = KeepAliveLoad(p.out_port, n=8, paths=("/slow/", "/fast/"))
    try:
        time.sleep(1.0)
        id0 = m(p.inbound, "ward_identity_reloads_total", result="success")
        pol0 = m(p.inbound, "ward_policy_reloads_total", result="success")
        # new identity files (server2: same id, another key) and a new policy, then SIGHUP
        h.atomic_copy(C("server2-key.pem"), os.path.join(d, "server-key.pem.new"))
        h.atomic_copy(C("server2.pem"), os.path.join(d, "server.pem.new"))
        os.replace(os.path.join(d, "server-key.pem.new"), os.path.join(d, "server-key.pem"))
        os.replace(os.path.join(d, "server.pem.new"), os.path.join(d, "server.pem"))
        h.atomic_write(pol, (POLICY_ALLOW % {"v": 2, "server": BACKEND, "client": FRONTEND}
                             ).encode())
        t_hup = time.monotonic()
        p.inbound.signal(signal.SIGHUP)
        h.wait_for(lambda: m(p.inbound, "ward_identity_reloads_total", result="success") > id0,
                   5, what="the identity reload after SIGHUP")
        h.wait_for(lambda: m(p.inbound, "ward_policy_reloads_total", result="success") > pol0,
                   5, what="the policy reload after SIGHUP")
        for _ in range(3):  # a few more SIGHUPs with nothing changed
            time.sleep(0.5)
            p.inbound.signal(signal.SIGHUP)
        time.sleep(1.5)
    finally:
        load.stop()
    res = load.results()
    bad = [x for x in res if x[3] != 200]
    after = [x for x in res if x[1] > t_hup]
    st = server_cert(p.in_port)
    print("     %d requests (%d after the first SIGHUP), %d failed; identity reloads +%d, policy "
          "reloads +%d" % (len(res), len(after), len(bad),
                           m(p.inbound, "ward_identity_reloads_total", result="success") - id0,
                           m(p.inbound, "ward_policy_reloads_total", result="success") - pol0))
    assert not bad, "%d of %d requests failed across SIGHUP: %r" % (len(bad), len(res), bad[:5])
    assert len(after) > 50, "only %d requests after SIGHUP" % len(after)
    assert st == h.cert_der(C("server2.pem")), \
        "a new connection after SIGHUP does not get the new certificate"
    assert p.inbound.alive()
    p.stop()
    app.close()


@r.test
def sigterm_under_load():
    drain = 5.0
    app = App(slow_s=0.4)
    p, d, pol = signal_pair(app)
    load = KeepAliveLoad(p.out_port, n=8, paths=("/slow/",))
    try:
        time.sleep(1.5)
        t_term = time.monotonic()
        p.inbound.signal(signal.SIGTERM)
        h.wait_for(lambda: not ready(p.inbound), 3, what="/ready to turn 503 while draining")
        # new connections: straight to the inbound's port and through the outbound
        refused = {}
        try:
            s = socket.create_connection((H, p.in_port), timeout=h.T(2))
            data, end, _ = read_all(s, 2)
            s.close()
            refused["direct"] = "accepted, then %s with %d bytes" % (end, len(data))
            assert data == b"", "a new connection to the draining inbound got data"
        except ConnectionRefusedError:
            refused["direct"] = "refused"
        s = h.connect(H, p.out_port)
        s.sendall(b"GET /new HTTP/1.1\r\nHost: orders\r\n\r\n")
        data, end, _ = read_all(s, 3)
        s.close()
        refused["via outbound"] = "%s, %d bytes" % (end, len(data))
        assert not data.startswith(b"HTTP/1.1 200"), "a new connection was served while draining"
        rc = p.inbound.wait(drain + 5)
        t_exit = time.monotonic() - t_term
    finally:
        load.stop()
    inflight = [x for x in load.results(t_to=t_term - 0.05) if x[2] > t_term]
    inflight_bad = [x for x in inflight if x[3] != 200]
    later = load.results(t_from=t_term)
    later_ok = sum(1 for x in later if x[3] == 200)
    print("     SIGTERM: %d requests in flight, %d failed; %d sent after it (%d served on open "
          "connections, the rest refused: %s); new connections: %s; exit %s after %.2fs "
          "(--drain-timeout %gs)" % (
              len(inflight), len(inflight_bad), len(later), later_ok,
              collections.Counter(str(x[3])[:60] for x in later if x[3] != 200).most_common(3),
              refused, rc, t_exit, drain))
    assert inflight, "no request was in flight at SIGTERM"
    assert not inflight_bad, "requests in flight at SIGTERM failed: %r" % inflight_bad[:5]
    assert rc == 0, "inbound exit status %r %.1fs after SIGTERM (--drain-timeout %gs)" % (
        rc, t_exit, drain)
    assert t_exit <= drain + slow(1.5), "exited %.1fs after SIGTERM with --drain-timeout %gs" % (
        t_exit, drain)
    p.outbound.stop()
    app.close()


# --------------------------------------------------------------------------- full disk

def identity_json(p):
    st, body = p.get("/identity")
    assert st == 200, st
    return json.loads(body)


def presented(port):
    st = h.tls_probe(H, port, C("client.pem"), C("client-key.pem"), C("ca.pem"), b"\x00probe\n")
    assert st[0] == "ok", "probe refused: %r" % (st,)
    return st[1]


@r.test
def disk_full_identity_reload():
    echo = h.EchoServer(H)
    d = h.mkdtemp(prefix="ward-faults-disk-")
    for n in ("server.pem", "server-key.pem", "ca.pem"):
        shutil.copy(C(n), os.path.join(d, n))
    p = h.Pair(CERTS, echo.addr, H, start=False, in_extra=["--reload-interval", "200ms"])
    a = p.inbound.args
    cert = os.path.join(d, "server.pem")
    a[a.index("--cert") + 1] = cert
    a[a.index("--key") + 1] = os.path.join(d, "server-key.pem")
    a[a.index("--ca") + 1] = os.path.join(d, "ca.pem")
    p.start()
    import agentharness as ah
    old_der = presented(p.in_port)
    old_id = identity_json(p.inbound)
    tr = ah.Traffic(H, p.out_port, pause=0.02)
    good = open(C("server.pem"), "rb").read()
    cases = [("empty", b""), ("truncated", good[:len(good) // 2]),
             ("header only", good[:40]), ("garbage", b"\x00" * 700)]
    out = []
    try:
        for name, data in cases:
            f0 = m(p.inbound, "ward_identity_reloads_total", result="failure")
            with open(cert, "wb") as f:  # in place, like a writer that ran out of space
                f.write(data)
            h.wait_for(lambda: m(p.inbound, "ward_identity_reloads_total",
                                 result="failure") > f0, 5,
                       what="a refused reload of the %s cert file" % name)
            assert ready(p.inbound), "not ready with a %s cert file" % name
            assert presented(p.in_port) == old_der, "another certificate after a %s file" % name
            out.append(name)
        ids = identity_json(p.inbound)
        assert ids.get("not_after") == old_id.get("not_after") and \
            ids.get("snapshot_generation") == old_id.get("snapshot_generation"), (old_id, ids)
        s0 = m(p.inbound, "ward_identity_reloads_total", result="success")
        # the writer gets its space back: a valid new pair is taken
        shutil.copy(C("server2-key.pem"), os.path.join(d, "server-key.pem.tmp"))
        shutil.copy(C("server2.pem"), os.path.join(d, "server.pem.tmp"))
        os.replace(os.path.join(d, "server-key.pem.tmp"), os.path.join(d, "server-key.pem"))
        os.replace(os.path.join(d, "server.pem.tmp"), cert)
        h.wait_for(lambda: m(p.inbound, "ward_identity_reloads_total", result="success") > s0, 5,
                   what="the valid new identity to be loaded")
        h.wait_for(lambda: presented(p.in_port) == h.cert_der(C("server2.pem")), 5,
                   what="the new certificate on new connections")
        time.sleep(0.5)
    finally:
        tr.stop()
    recs = [x.get("error") or x.get("msg") for x in
            p.inbound.log_records() if x.get("level") == "error"]
    print("     refused: %s; %d requests meanwhile, %d failed; error lines: %s" % (
        out, tr.ok + tr.fail, tr.fail, [str(x)[:90] for x in recs[:4]]))
    tr.assert_clean(50, "while the identity files were broken")
    p.stop()
    echo.close()


def can_unshare_tmpfs():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        return "needs root, unshare and nsenter"
    d = h.mkdtemp(prefix="ward-faults-ns-probe-")
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          'mount -t tmpfs -o size=64k ward-probe "$0" && touch "$0/x"', d],
                         capture_output=True, timeout=h.T(10))
    if res.returncode != 0:
        return "unshare -m + mount tmpfs failed: %s" % res.stderr.decode().strip()[:200]
    if os.path.exists(os.path.join(d, "x")):
        return "the tmpfs mount leaked out of the private namespace"
    return None


@r.test
def disk_full_tmpfs():
    why = can_unshare_tmpfs()
    if why:
        raise h.SkipTest(why)
    echo = h.EchoServer(H)
    d = h.mkdtemp(prefix="ward-faults-tmpfs-")
    # the new certificate for the same key (a renewal), written when the disk is full
    srv_cert, srv_key = mk.load_pair(CERTS, "server")
    ca = mk.load_pair(CERTS, "ca")
    renewed, _ = mk.mint("server", [BACKEND], issuer=ca, key=srv_key)
    with open(os.path.join(WORK, "renewed.pem"), "wb") as f:
        f.write(mk.cert_pem(renewed))
    in_port = h.free_port(H)
    script = ('set -e; d=$1; mount -t tmpfs -o size=64k ward-full "$d"; cp "$2" "$d/svid.pem"; '
              'cp "$3" "$d/svid-key.pem"; cp "$4" "$d/ca.pem"; p=$5; shift 5; exec "$p" "$@"')
    p = h.Proxy(["-m", "--propagation", "private", "sh", "-c", script, "sh", d, C("server.pem"),
                 C("server-key.pem"), C("ca.pem"), h.PROXY,
                 "--cert", os.path.join(d, "svid.pem"), "--key", os.path.join(d, "svid-key.pem"),
                 "--ca", os.path.join(d, "ca.pem"), "--reload-interval", "200ms",
                 "--mesh-default", "allow",
                 "--inbound", "%s=%s" % (h.addr(H, in_port), echo.addr)],
                binary=shutil.which("unshare"), name="inbound-tmpfs").start()
    out_port = h.free_port(H)
    outp = h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
                    "--outbound", "%s=%s,identity=%s" % (h.addr(H, out_port), h.addr(H, in_port),
                                                         BACKEND)], name="outbound").start()
    assert not os.path.exists(os.path.join(d, "svid.pem")), "the tmpfs is visible outside"
    import agentharness as ah
    old_der = presented(in_port)
    tr = ah.Traffic(H, out_port, pause=0.02)
    ns = ["nsenter", "-t", str(p.pid), "-m", "--"]
    try:
        f0 = m(p, "ward_identity_reloads_total", result="failure")
        # fill the tmpfs, truncate the cert (its page is freed), take that page too, then write
        # the renewed certificate in place: ENOSPC, an empty file
        fill = ('d=$1; dd if=/dev/zero of="$d/filler" bs=4k 2>/dev/null; : > "$d/svid.pem"; '
                'dd if=/dev/zero bs=4k count=4 >> "$d/filler" 2>/dev/null; '
                'cat "$2" > "$d/svid.pem" 2>&1 || echo "write failed"; '
                'echo "cert file $(wc -c < "$d/svid.pem") bytes"; df -k "$d" | tail -1')
        res = subprocess.run(ns + ["sh", "-c", fill, "sh", d, os.path.join(WORK, "renewed.pem")],
                             capture_output=True, timeout=h.T(20))
        report = res.stdout.decode().strip().replace("\n", " | ")
        assert "No space left" in report or "write failed" in report, \
            "the write did not fail for lack of space: %s %s" % (report, res.stderr.decode())
        h.wait_for(lambda: m(p, "ward_identity_reloads_total", result="failure") > f0, 5,
                   what="the reload of the cert file written on a full disk to be refused")
        time.sleep(0.6)
        assert ready(p), "not ready after the failed reload"
        assert presented(in_port) == old_der, "another certificate after the failed reload"
        s0 = m(p, "ward_identity_reloads_total", result="success")
        # space again: the writer retries and succeeds
        res2 = subprocess.run(ns + ["sh", "-c", 'rm -f "$1/filler"; cat "$2" > "$1/svid.pem"',
                                    "sh", d, os.path.join(WORK, "renewed.pem")],
                              capture_output=True, timeout=h.T(20))
        assert res2.returncode == 0, res2.stderr.decode()
        h.wait_for(lambda: m(p, "ward_identity_reloads_total", result="success") > s0, 5,
                   what="the renewed certificate to be loaded once there is space")
        from cryptography.hazmat.primitives import serialization
        new_der = renewed.public_bytes(serialization.Encoding.DER)
        h.wait_for(lambda: presented(in_port) == new_der, 5,
                   what="the renewed certificate on new connections")
        time.sleep(0.5)
    finally:
        tr.stop()
    print("     tmpfs full: %s; failed reloads +%d; %d requests meanwhile, %d failed" % (
        report, m(p, "ward_identity_reloads_total", result="failure") - f0, tr.ok + tr.fail,
        tr.fail))
    tr.assert_clean(30, "while the identity file was written on a full disk")
    assert p.stop(10) == 0
    outp.stop()
    echo.close()


# --------------------------------------------------------------------------- clock skew

@r.test
def clock_skew_not_before_30s():
    echo = h.EchoServer(H)
    ca = mk.load_pair(CERTS, "ca")
    now = mk.utcnow()
    d = h.mkdtemp(prefix="ward-faults-skew-")
    for name, sid, ahead in (("ahead-client", FRONTEND, 30), ("ahead-server", BACKEND, 30),
                             ("soon-client", FRONTEND, 4)):
        c, k = mk.mint(name, [sid], not_before=now + datetime.timedelta(seconds=ahead),
                       issuer=ca)
        mk.write_pair(d, name, c, k)
    D = lambda n: os.path.join(d, n)  # noqa: E731
    pair = h.Pair(CERTS, echo.addr, H)
    out = {}
    # a peer (client) certificate valid from now+30 s, straight to the inbound
    nyv0 = m(pair.inbound, "ward_tls_handshakes_total", direction="inbound",
             reason="not_yet_valid")
    st = h.tls_probe(H, pair.in_port, D("ahead-client.pem"), D("ahead-client-key.pem"),
                     C("ca.pem"), b"\x00skew\n")
    out["client cert +30s -> inbound"] = st[0]
    h.wait_for(lambda: m(pair.inbound, "ward_tls_handshakes_total", direction="inbound",
                         reason="not_yet_valid") > nyv0, 5,
               what="ward_tls_handshakes_total{reason=not_yet_valid} on the inbound")
    assert st[0] == "refused", "a client certificate valid from now+30s was %r" % (st,)
    # a server certificate valid from now+30 s: the outbound refuses the inbound
    srv = h.TLSEchoServer(D("ahead-server.pem"), D("ahead-server-key.pem"), C("ca.pem"), H)
    o_port = h.free_port(H)
    o = h.Proxy(["--cert", C("client.pem"), "--key", C("client-key.pem"), "--ca", C("ca.pem"),
                 "--outbound", "%s=%s,identity=%s" % (h.addr(H, o_port), srv.addr, BACKEND)],
                name="outbound-skew").start()
    s = h.connect(H, o_port)
    s.sendall(b"\x00skew\n")
    data, end, _ = read_all(s, 5)
    s.close()
    out["outbound -> server cert +30s"] = "%s, %d bytes" % (end, len(data))
    assert data == b"", "the outbound accepted a server certificate valid from now+30s"
    h.wait_for(lambda: m(o, "ward_tls_handshakes_total", direction="outbound",
                         reason="not_yet_valid") >= 1, 5,
               what="ward_tls_handshakes_total{direction=outbound,reason=not_yet_valid}")
    # a proxy whose own certificate is valid from now+30 s
    res = subprocess.run([h.PROXY, "--cert", D("ahead-server.pem"), "--key",
                          D("ahead-server-key.pem"), "--ca", C("ca.pem"), "--admin", "off",
                          "--inbound", "%s=%s" % (h.addr(H, h.free_port(H)), echo.addr)],
                         capture_output=True, env=CLEAN_ENV, timeout=h.T(10))
    out["own cert +30s at start"] = "exit %d: %s" % (res.returncode,
                                                     res.stderr.decode().strip()[-120:])
    assert res.returncode == 2 and "not_yet_valid" in res.stderr.decode(), out
    # ... and once notBefore has passed, the same kind of certificate is accepted
    h.wait_for(lambda: h.tls_probe(H, pair.in_port, D("soon-client.pem"),
                                   D("soon-client-key.pem"), C("ca.pem"), b"\x00soon\n")[0] ==
               "ok", 10, interval=0.5, what="a certificate to be accepted once notBefore passed")
    out["client cert +4s, after 4s"] = "ok"
    print("     %s" % out)
    print("     no clock-skew tolerance in the proxy: notBefore in the future by any amount is "
          "not_yet_valid (the agent backdates SVIDs by 5 min instead)")
    o.stop()
    srv.close()
    pair.stop()
    echo.close()


r.finish()
