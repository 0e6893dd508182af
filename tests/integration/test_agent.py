#!/usr/bin/python3
"""ward-agent + two ward-proxy processes (inbound attested by a service-account token, outbound by
its Unix peer credentials) + an echo backend, all on loopback / a Unix socket.

Not ready and no traffic before the agent is up; identities issued and seen by the peers; SVID
rotation (10 s TTL) under traffic with zero failures; agent SIGKILLed and restarted under traffic
with zero failures; unknown uid / bad, expired, wrong-audience tokens refused with a clear status;
a CSR for another identity refused with a Status and no SVID."""
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402

H = "127.0.0.1"
r = h.Results()
ah.require_binaries()
pb = ah.protos()
import grpc  # noqa: E402  (after protos(): the generated modules need python3-protobuf)

TMP = h.mkdtemp(prefix="ward-agent-test-")
os.chmod(TMP, 0o755)
FRONTEND = ah.spiffe("default", "frontend")   # uid 0 in the workloads file
BACKEND = ah.spiffe("default", "backend")     # the inbound's service-account token
iss = ah.TokenIssuer(TMP)
TOKEN = iss.write("backend.jwt", iss.mint("default", "backend"))
echo = h.EchoServer(H)
# SVID lifetime: renewals every ~5 s (half the lifetime). Shorter makes the agent-restart test
# racy: a proxy's SVID has >= ~45% of it left at any time, and a proxy's reconnect backoff after
# the kill can take ~3 s in the worst case.
TTL_S = 10
agent = ah.Agent(workloads={0: FRONTEND}, issuer=iss, svid_ttl="%ds" % TTL_S)
IN_PORT, OUT_PORT, WRONG_PORT = h.free_port(H), h.free_port(H), h.free_port(H)
inbound = h.Proxy(["--agent", "unix:" + agent.sock, "--agent-token-file", TOKEN,
                   "--inbound", "%s=%s" % (h.addr(H, IN_PORT), echo.addr),
                   "--log-level", "debug", "--workers", "2"], name="inbound")
outbound = h.Proxy(["--agent", "unix:" + agent.sock,
                    "--outbound", "%s=%s,identity=%s" % (h.addr(H, OUT_PORT), h.addr(H, IN_PORT),
                                                         BACKEND),
                    # the same peer under an identity it does not have: must be refused
                    "--outbound", "%s=%s,identity=%s" % (h.addr(H, WRONG_PORT),
                                                         h.addr(H, IN_PORT), FRONTEND),
                    "--log-level", "debug", "--workers", "2"], name="outbound")
ALL = [agent, inbound, outbound]   # every process started, for the sanitizer scan at the end
PROXIES = (inbound, outbound)
state = {"up": False}


def m(p, name, **labels):
    return h.metric_value(p.metrics(), name, **labels)


def events(p, event, since=0):
    return [x for x in p.log_records(since) if x.get("event") == event]


def wait_live(p):
    h.wait_for(lambda: p.get("/live", timeout=1.0)[0] == 200, 10, what="%s /live" % p.name)


def ready(p):
    try:
        return p.get("/ready", timeout=1.0)[0] == 200
    except OSError:
        return False


@r.fixture
def not_ready_before_the_agent():
    for p in PROXIES:
        p.start(wait_ready=False)
    for p in PROXIES:
        wait_live(p)
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        for p in PROXIES:
            st = p.get("/ready")[0]
            assert st == 503, "%s /ready is %d without an identity" % (p.name, st)
        time.sleep(0.1)
    for p, port, d in ((outbound, OUT_PORT, "outbound"), (inbound, IN_PORT, "inbound")):
        before = m(p, "ward_connections_refused_no_identity_total", direction=d)
        s = h.connect(H, port)
        try:
            if port == OUT_PORT:
                s.sendall(b"hello?")
            assert h.closed_without_data(s, 5), "%s answered without an identity" % p.name
        finally:
            s.close()
        ah.wait_metric(p, "ward_connections_refused_no_identity_total", lambda v: v > before, 5,
                       direction=d)
        assert m(p, "ward_agent_connected") == 0
        assert m(p, "ward_svid_installed_total") == 0
    assert echo.stats()["connections"] == 0, "a connection reached the backend without identity"
    assert events(outbound, "agent_unreachable"), "no agent_unreachable log line"


if not all(p.alive() for p in PROXIES):
    r.finish()


@r.fixture
def identities_issued():
    agent.start()
    # /ready must never be 200 while no SVID is installed (read /ready first, metrics second)
    deadline = time.monotonic() + h.T(15)
    pending = set(PROXIES)
    while pending:
        assert time.monotonic() < deadline, "not ready 15s after the agent started: %s" % \
            [p.name for p in pending]
        for p in list(pending):
            if ready(p):
                n = m(p, "ward_svid_installed_total")
                assert n >= 1, "%s is ready with ward_svid_installed_total %s" % (p.name, n)
                pending.discard(p)
        time.sleep(0.05)
    for p, want in ((inbound, BACKEND), (outbound, FRONTEND)):
        got = [x.get("spiffe_id") for x in events(p, "svid_installed")]
        assert got and all(g == want for g in got), "%s installed %r, want %s" % (p.name, got, want)
        assert m(p, "ward_agent_connected") == 1
    att = events(agent, "proxy_attested")
    how = {x.get("identity"): x.get("msg") for x in att}
    assert how.get(BACKEND) == "service-account token", "agent attestations: %r" % att
    assert how.get(FRONTEND) == "unix peer credentials", "agent attestations: %r" % att
    state["up"] = True


if not state["up"]:
    r.finish()


@r.test
def traffic_and_attested_peer_identities():
    for i in range(5):
        h.echo_roundtrip(H, OUT_PORT, b"through the mesh %d" % i)
    ok_in = [x for x in events(inbound, "handshake_ok") if x.get("direction") == "inbound"]
    ok_out = [x for x in events(outbound, "handshake_ok") if x.get("direction") == "outbound"]
    assert ok_in and ok_out, "no handshake_ok debug lines (inbound %d, outbound %d)" % (
        len(ok_in), len(ok_out))
    assert {x.get("peer_identity") for x in ok_in} == {FRONTEND}, \
        "inbound saw peers %r, want the outbound's attested %s" % (
            {x.get("peer_identity") for x in ok_in}, FRONTEND)
    assert {x.get("peer_identity") for x in ok_out} == {BACKEND}, \
        "outbound saw peers %r, want the inbound's attested %s" % (
            {x.get("peer_identity") for x in ok_out}, BACKEND)
    # the same inbound under a name it does not have is refused by the outbound (identity check)
    before = m(outbound, "ward_tls_handshakes_total", direction="outbound", result="failure",
               reason="san_mismatch")
    s = h.connect(H, WRONG_PORT)
    try:
        s.sendall(b"x")
        assert h.closed_without_data(s, 5)
    finally:
        s.close()
    ah.wait_metric(outbound, "ward_tls_handshakes_total", lambda v: v > before, 5,
                   direction="outbound", result="failure", reason="san_mismatch")


@r.test
def inbound_certificate_is_the_attested_one():
    """A Workload API SVID (uid 0 -> FRONTEND) as client cert straight to the inbound: the
    inbound's certificate names BACKEND and chains to the agent's bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    with ah.channel(agent.sock) as ch:
        resp = ah.fetch_x509svid(ch, pb)
    sv = resp.svids[0]
    chain = ah.certs_from_concat(sv.x509_svid)
    roots = ah.certs_from_concat(sv.bundle)
    key = serialization.load_der_private_key(sv.x509_svid_key, None)
    d = h.mkdtemp(prefix="ward-wl-")
    cp, kp, cap = (os.path.join(d, n) for n in ("c.pem", "k.pem", "ca.pem"))
    with open(cp, "wb") as f:
        f.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cap, "wb") as f:
        f.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots))
    st, peer = h.tls_probe(H, IN_PORT, cp, kp, cap)
    assert st == "ok", "direct mTLS to the inbound failed: %s" % (peer,)
    leaf = x509.load_der_x509_certificate(peer)
    assert ah.uri_sans(leaf) == [BACKEND], ah.uri_sans(leaf)
    assert ah.chain_verifies([leaf], roots), "inbound's certificate does not chain to the bundle"
    life = (leaf.not_valid_after - leaf.not_valid_before).total_seconds()
    # notBefore is backdated a little for clock skew: at most 10 minutes
    assert life <= TTL_S + 600, "SVID lifetime %ss with --svid-ttl %ds" % (life, TTL_S)


@r.test
def peer_directory():
    """The agent's peer directory: a proxy attested over the Unix socket with a pod_ip claim
    (WARD_POD_IP, the downward API's status.podIP) appears in every proxy's directory with the
    identity it attested as, and leaves it when its stream ends."""
    import json
    tok = iss.write("dir.jwt", iss.mint("shop", "orders"))
    p = h.Proxy(["--agent", "unix:" + agent.sock, "--agent-token-file", tok,
                 "--inbound", "%s=%s" % (h.addr(H, h.free_port(H)), echo.addr),
                 "--workers", "1"], env={"WARD_POD_IP": "198.18.7.9"}, name="dir-proxy").start()
    want = {"address": "198.18.7.9", "port": 0, "spiffe_id": ah.spiffe("shop", "orders")}

    def listed(proxy):
        return want in json.loads(proxy.get("/peers")[1])["agent_peers"]
    h.wait_for(lambda: listed(outbound) and listed(p), 5, what="directory entry on both")
    assert m(outbound, "ward_snapshot_version", kind="peers") >= 1
    p.stop()
    h.wait_for(lambda: not listed(outbound), 5, what="entry removed after the stream ended")


@r.test
def svid_rotation_under_traffic():
    long_lived = h.connect(H, OUT_PORT)
    long_lived.sendall(b"before")
    assert h.recv_exact(long_lived, 6) == b"before"
    base = {p: m(p, "ward_svid_installed_total") for p in PROXIES}
    exp0 = {p: m(p, "ward_cert_expiry_timestamp_seconds") for p in PROXIES}
    tr = ah.Traffic(H, OUT_PORT)
    try:
        for p in PROXIES:
            ah.wait_metric(p, "ward_svid_installed_total", lambda v, b=base[p]: v >= b + 2, 20,
                           what="%s: two SVID renewals" % p.name)
        time.sleep(0.5)
    finally:
        tr.stop()
    tr.assert_clean(20, "across two SVID rotations")
    print("     %d requests across two rotations, 0 failed" % tr.ok)
    for p in PROXIES:
        assert m(p, "ward_cert_expiry_timestamp_seconds") > exp0[p], \
            "%s: certificate expiry did not move forward" % p.name
        assert m(p, "ward_svid_renewals_total") >= 2
        assert m(p, "ward_nacks_sent_total") == 0
    long_lived.sendall(b"after rotation")
    assert h.recv_exact(long_lived, 14) == b"after rotation", "open connection broken by rotation"
    long_lived.close()


@r.test
def agent_killed_and_restarted_under_traffic():
    with ah.channel(agent.sock) as ch:
        root_before = ah.fetch_x509bundles(ch, pb).bundles["spiffe://" + ah.TD]
    disc = {p: m(p, "ward_agent_disconnects_total") for p in PROXIES}
    tr = ah.Traffic(H, OUT_PORT)
    try:
        # kill right after a renewal: the proxies then hold a fresh SVID for the whole outage
        n = m(inbound, "ward_svid_installed_total")
        ah.wait_metric(inbound, "ward_svid_installed_total", lambda v: v > n, TTL_S + 2,
                       what="a renewal before the kill")
        agent.sigkill()
        for p in PROXIES:
            ah.wait_metric(p, "ward_agent_connected", lambda v: v == 0, 5,
                           what="%s to notice the agent is gone" % p.name)
        ok_down = tr.ok
        time.sleep(0.8)
        assert tr.ok > ok_down, "no request succeeded while the agent was down"
        for p in PROXIES:
            assert ready(p), "%s not ready while the agent is down (identity still valid)" % p.name
        svids = {p: m(p, "ward_svid_installed_total") for p in PROXIES}
        agent.restart()
        for p in PROXIES:
            ah.wait_metric(p, "ward_agent_connected", lambda v: v == 1, 15,
                           what="%s to reconnect" % p.name)
            ah.wait_metric(p, "ward_svid_installed_total", lambda v, b=svids[p]: v > b, 10,
                           what="%s: an SVID from the restarted agent" % p.name)
        time.sleep(1.0)
    finally:
        tr.stop()
    tr.assert_clean(20, "across the agent's SIGKILL and restart")
    print("     %d requests across the agent restart, 0 failed" % tr.ok)
    for p in PROXIES:
        assert m(p, "ward_agent_disconnects_total") > disc[p]
    with ah.channel(agent.sock) as ch:
        root_after = ah.fetch_x509bundles(ch, pb).bundles["spiffe://" + ah.TD]
    assert root_after == root_before, "the restarted agent has another root (state dir not reused)"
    for i in range(3):
        h.echo_roundtrip(H, OUT_PORT, b"after restart %d" % i)


@r.test
def agent_down_past_expiry_then_back():
    """Agent gone for longer than the SVID lifetime: the proxies keep serving with the last good
    identity until it expires, then turn not ready; when the agent is back they recover."""
    agent.sigkill()
    for p in PROXIES:
        ah.wait_metric(p, "ward_agent_connected", lambda v: v == 0, 5)
    exp = {p: m(p, "ward_cert_expiry_timestamp_seconds") for p in PROXIES}
    flipped = {}
    deadline = time.monotonic() + h.T(TTL_S + 5)
    while len(flipped) < len(PROXIES):
        assert time.monotonic() < deadline, "still ready %ds after the agent died: %r" % (
            TTL_S + 5, [p.name for p in PROXIES if p not in flipped])
        for p in PROXIES:
            if p not in flipped and not ready(p):
                flipped[p] = time.time()
        if time.time() < min(exp.values()) - 1.5:   # well inside both SVIDs' lifetime
            h.echo_roundtrip(H, OUT_PORT, b"still served")
        time.sleep(0.1)
    for p in PROXIES:
        assert flipped[p] >= exp[p] - 1, "%s turned not ready %.1fs before its SVID expired" % (
            p.name, exp[p] - flipped[p])
        assert m(p, "ward_agent_staleness_seconds") >= TTL_S / 2
    s = h.connect(H, OUT_PORT)
    try:
        s.sendall(b"x")
        assert h.closed_without_data(s, 5), "served with an expired identity"
    finally:
        s.close()
    agent.restart()
    for p in PROXIES:
        p.wait_ready(20)
    for i in range(3):
        h.echo_roundtrip(H, OUT_PORT, b"recovered %d" % i)


UNKNOWN_UID_BODY = r"""
ch = ah.channel(SOCK)
s = ah.MeshStream(ch, pb)
s.hello()
try:
    e, msgs = s.wait_end(10)
    out = [str(e.code), e.details, [x.WhichOneof("msg") for x in msgs]]
except Exception as x:
    out = ["error", repr(x), []]
s.close()
print(json.dumps(out))
"""


@r.test
def unknown_uid_refused():
    fail0 = m(agent, "ward_agent_attestations_total", result="failure")
    code, details, msgs = ah.run_as(ah.NOBODY, UNKNOWN_UID_BODY, agent.sock)
    assert code == "StatusCode.PERMISSION_DENIED", (code, details)
    assert "65534" in details and "--workloads" in details, "unclear message: %r" % details
    assert msgs == [], "the refused caller got %r" % msgs
    assert m(agent, "ward_agent_attestations_total", result="failure") > fail0


@r.test
def unknown_uid_proxy_not_ready():
    port = h.free_port(H)
    p = ah.Proc(["--agent", "unix:" + agent.sock, "--outbound",
                 "%s=%s,identity=%s" % (h.addr(H, port), h.addr(H, IN_PORT), BACKEND)],
                uid=ah.NOBODY, name="proxy-nobody")
    ALL.append(p)
    p.start(wait_ready=False)

    def refused():
        return [x for x in events(p, "agent_stream_closed") if x.get("grpc_status") == 7]
    recs = h.wait_for(refused, 10, what="the proxy running as uid 65534 to be refused")
    wait_live(p)
    assert "uid 65534" in recs[0].get("error", ""), recs[0]
    assert p.get("/ready")[0] == 503
    assert m(p, "ward_svid_installed_total") == 0
    s = h.connect(H, port)
    try:
        s.sendall(b"x")
        assert h.closed_without_data(s, 5)
    finally:
        s.close()
    ah.wait_metric(p, "ward_connections_refused_no_identity_total", lambda v: v >= 1, 5)
    p.kill()


NOBODY_CSR_BODY = r"""
ch = ah.channel(SOCK)
s = ah.MeshStream(ch, pb)
s.hello()
s.csr(ah.make_csr()[0], 1)
try:
    out = ["svid", s.recv_kind("svid", 5).svid.spiffe_id]
except ah.StreamEnded as e:
    out = [str(e.code), e.details]
except Exception as x:
    out = ["error", repr(x)]
s.close()
print(json.dumps(out))
"""


@r.test
def sighup_rereads_workloads():
    """ward-agent --help: "SIGHUP re-reads policies and workloads now". A uid added to the
    workloads file gets its identity after SIGHUP, and loses it after removal + SIGHUP."""
    nobody_id = ah.spiffe("default", "nobody")
    with open(agent.workloads, "rb") as f:
        orig = f.read()
    try:
        h.atomic_write(agent.workloads, orig + b"65534 " + nobody_id.encode() + b"\n")
        agent.signal(signal.SIGHUP)
        last = []

        def attested():
            last[:] = ah.run_as(ah.NOBODY, NOBODY_CSR_BODY, agent.sock)
            return last == ["svid", nobody_id]
        try:
            h.wait_for(attested, 4, interval=0.3, what="uid 65534 attested after SIGHUP")
        except h.Timeout:
            raise AssertionError("uid 65534 added to --workloads + SIGHUP: still %r" % (last,))
    finally:
        h.atomic_write(agent.workloads, orig)
        agent.signal(signal.SIGHUP)
    h.wait_for(lambda: ah.run_as(ah.NOBODY, NOBODY_CSR_BODY, agent.sock)[0] ==
               "StatusCode.PERMISSION_DENIED", 4, interval=0.3,
               what="uid 65534 refused again after its removal + SIGHUP")


def token_status(token):
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        s.hello(token)
        try:
            e, msgs = s.wait_end(10)
        finally:
            s.close()
    return e.code, e.details, [x.WhichOneof("msg") for x in msgs]


@r.test
def bad_tokens_unauthenticated():
    now = int(time.time())
    cases = [
        ("bad signature", iss.mint("default", "backend", key=iss.other_key),
         "signature does not verify"),
        ("expired", iss.mint("default", "backend", exp=now - 3600, iat=now - 7200,
                             nbf=now - 7200), "expired"),
        ("wrong audience", iss.mint("default", "backend", aud=["other", "https://x"]),
         "audience"),
        ("wrong issuer", iss.mint("default", "backend", iss="https://evil.example"), "issuer"),
        ("not a JWT", "this is not a token", "token"),
    ]
    bad = []
    for what, tok, words in cases:
        code, details, msgs = token_status(tok)
        print("     %-15s -> %s %r" % (what, code, details))
        if code != grpc.StatusCode.UNAUTHENTICATED or words not in (details or "") or msgs:
            bad.append((what, code, details, msgs))
    assert not bad, "token refusals without UNAUTHENTICATED + reason: %r" % bad
    # a good token still works on the same agent
    code, details, msgs = None, None, None
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        try:
            s.hello(iss.mint("default", "backend"))
            assert s.recv_kind("bundle", 5).bundle.trust_domain == ah.TD
        finally:
            s.close()


@r.test
def expired_token_proxy_not_ready():
    now = int(time.time())
    tok = iss.write("expired.jwt", iss.mint("default", "backend", exp=now - 3600, iat=now - 7200,
                                            nbf=now - 7200))
    port = h.free_port(H)
    p = h.Proxy(["--agent", "unix:" + agent.sock, "--agent-token-file", tok,
                 "--inbound", "%s=%s" % (h.addr(H, port), echo.addr)], name="proxy-expired")
    ALL.append(p)
    p.start(wait_ready=False)
    recs = h.wait_for(lambda: [x for x in events(p, "agent_stream_closed")
                               if x.get("grpc_status") == 16], 10,
                      what="the proxy with an expired token to be refused (UNAUTHENTICATED)")
    assert "expired" in recs[0].get("error", ""), recs[0]
    wait_live(p)
    assert p.get("/ready")[0] == 503
    p.kill()


@r.test
def csr_for_another_identity_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa
    refused0 = m(agent, "ward_agent_csr_refused_total")
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        try:
            s.hello()
            b = s.recv_kind("bundle", 5).bundle
            roots = [ah.certs_from_concat(x)[0] for x in b.roots_der]
            der, _ = ah.make_csr(BACKEND)
            s.csr(der, 1)
            st = s.recv_kind("status", 5).status
            assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], st
            assert FRONTEND in st.message, "refusal does not name the attested id: %r" % st.message
            der, _ = ah.make_csr(None, rsa.generate_private_key(public_exponent=65537,
                                                                key_size=1024))
            s.csr(der, 2)
            st = s.recv_kind("status", 5).status
            assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], st
            # no SVID for the refused CSRs; the stream stays usable: a CSR for its own id works
            der, key = ah.make_csr(FRONTEND)
            s.csr(der, 3)
            seen = []
            sv = s.recv_kind("svid", 5, seen).svid
            assert not [x for x in seen if x.WhichOneof("msg") == "svid"]
            assert sv.request_id == 3, "SVID answers request %d, want 3 (refused ones get none)" % \
                sv.request_id
            assert sv.spiffe_id == FRONTEND
            leaf = ah.certs_from_concat(sv.cert_chain_der[0])[0]
            assert ah.uri_sans(leaf) == [FRONTEND]
            chain = [ah.certs_from_concat(x)[0] for x in sv.cert_chain_der]
            assert ah.chain_verifies(chain, roots)
        finally:
            s.close()
    assert m(agent, "ward_agent_csr_refused_total") >= refused0 + 2


@r.test
def csr_before_hello_refused():
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        try:
            s.csr(ah.make_csr(FRONTEND)[0], 1)
            e, msgs = s.wait_end(5)
        finally:
            s.close()
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION, (e.code, e.details)
    assert not [x for x in msgs if x.WhichOneof("msg") == "svid"]


@r.test
def second_hello_refused():
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        try:
            s.hello()
            s.recv_kind("bundle", 5)
            s.hello(iss.mint("default", "backend"))   # switching identity mid-stream
            e, msgs = s.wait_end(5)
        finally:
            s.close()
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION, (e.code, e.details)
    assert not [x for x in msgs if x.WhichOneof("msg") == "svid"]


@r.test
def csr_shapes():
    """Two URI SANs are refused; a CSR asking for a CA still yields a leaf SVID (cA=false, no
    keyCertSign) or is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    def build(sans, ca=False):
        key = ec.generate_private_key(ec.SECP256R1())
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(u) for u in sans]), critical=False)
        if ca:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)
        try:
            s.hello()
            s.csr(build([FRONTEND, BACKEND]), 1)
            st = s.recv_kind("status", 5).status
            assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], st
            s.csr(build([FRONTEND], ca=True), 2)
            got = s.recv(5)
            while got.WhichOneof("msg") not in ("svid", "status"):
                got = s.recv(5)
            if got.WhichOneof("msg") == "svid":
                leaf = ah.certs_from_concat(got.svid.cert_chain_der[0])[0]
                assert leaf.extensions.get_extension_for_class(
                    x509.BasicConstraints).value.ca is False, "agent signed a CA certificate"
                assert not leaf.extensions.get_extension_for_class(
                    x509.KeyUsage).value.key_cert_sign
                assert ah.uri_sans(leaf) == [FRONTEND]
        finally:
            s.close()


@r.test
def client_deadline_honoured():
    """A Mesh stream opened with a 60 s gRPC deadline (grpc-timeout) stays open past 2.5 s."""
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb, deadline=60)
        try:
            s.hello()
            s.recv_kind("bundle", 5)
            t0 = time.monotonic()
            time.sleep(2.5)
            try:
                while True:
                    s.recv(0.2)
            except h.Timeout:
                pass   # nothing more, stream still open: good
            except ah.StreamEnded as e:
                raise AssertionError("a stream with a 60 s deadline ended within %.1fs: %s %r" %
                                     (time.monotonic() - t0 + 0.2, e.code, e.details))
        finally:
            s.close()


@r.test
def clean_shutdown_no_sanitizer_reports():
    for p in PROXIES:
        assert p.stop(15) == 0, "%s exit status" % p.name
    assert agent.stop(15) == 0, "ward-agent exit status"
    rep = ah.sanitizer_reports(*ALL)
    assert not rep, "sanitizer reports: %r" % rep[:10]


echo.close()
r.finish()
