#!/usr/bin/python3
"""The admin endpoint: /identity says what the proxy presents and trusts (never key material),
unknown paths are 404, only GET/HEAD are served, malformed requests get 400."""
import json
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402

r = h.Results()
C = h.certs_dir()


def start_proxy(ca="ca.pem"):
    app = h.free_port()
    return h.Proxy(["--cert", os.path.join(C, "server.pem"), "--key",
                    os.path.join(C, "server-key.pem"), "--ca", os.path.join(C, ca),
                    "--inbound", "127.0.0.1:%d=127.0.0.1:%d" % (h.free_port(), app),
                    "--workers", "1"]).start()


def raw(port, data, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                return out
            out += d


def identity_page():
    p = start_proxy("bundle.pem")
    st, body = p.get("/identity")
    assert st == 200, st
    doc = json.loads(body)
    assert doc["source"] == "files" and doc["ready"] is True, doc
    assert doc["spiffe_id"] == "spiffe://test.local/ns/default/sa/backend", doc
    assert doc["not_after"] == int(h.cert_not_after(os.path.join(C, "server.pem"))), doc
    assert 0 < doc["expires_in_seconds"] <= doc["not_after"] - int(time.time()) + 1, doc
    assert doc["bundle_roots"] == 2, doc
    text = body.decode() if isinstance(body, bytes) else body
    assert "PRIVATE" not in text and "BEGIN" not in text, "key or PEM material leaked"
    assert doc["files"]["key"].endswith("server-key.pem"), doc


def methods_and_errors():
    p = start_proxy()
    port = p.admin_port
    assert raw(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404"), "404"
    assert raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") \
        .startswith(b"HTTP/1.1 405"), "405"
    head = raw(port, b"HEAD /identity HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n"), head[:200]
    assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400"), "400"
    long_path = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"
    assert raw(port, long_path).startswith(b"HTTP/1.1 400"), "long path"
    # The endpoint still answers after the bad requests.
    assert p.get("/live")[0] == 200


def slow_client_is_cut():
    p = start_proxy()
    s = socket.create_connection(("127.0.0.1", p.admin_port), timeout=10)
    s.sendall(b"GET /metr")  # and then nothing: a slowloris on the admin port
    t0 = time.monotonic()
    assert p.get("/live")[0] == 200, "admin blocked by a slow client"
    s.settimeout(h.T(10))
    data = s.recv(100)
    took = time.monotonic() - t0
    assert data == b"" and took < h.T(9), (data, took)
    s.close()


def policy_page_files():
    p = start_proxy()
    st, body = p.get("/policy")
    assert st == 200, st
    doc = json.loads(body)
    # No --policy: the flags' mesh default (the harness runs data-path tests with "allow").
    assert doc["source"] == "flags" and doc["policies"] == [], doc
    assert doc["mesh_default"] == "allow" and doc["valid"] is True, doc


def policy_and_identity_pages_agent():
    """In agent mode /policy shows the snapshot the agent pushed for this proxy's identity and
    /identity the agent's stream state."""
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    pdir = h.mkdtemp(prefix="ward-admin-pol-")
    with open(os.path.join(repo, "tests", "policy", "orders-read.yaml")) as f:
        text = f.read().replace("cluster.local", "test.local")
    with open(os.path.join(pdir, "orders.yaml"), "w") as f:
        f.write(text)
    ident = "spiffe://test.local/ns/shop/sa/orders"
    a = ah.Agent(workloads={os.getuid(): ident}, policy_dir=pdir, mesh_default=None).start()
    p = h.Proxy(["--agent", "unix:" + a.sock, "--inbound",
                 "127.0.0.1:%d=127.0.0.1:%d" % (h.free_port(), h.free_port()),
                 "--workers", "1"]).start()
    doc = json.loads(p.get("/identity")[1])
    assert doc["source"] == "agent" and doc["spiffe_id"] == ident, doc
    assert doc["agent"]["connected"] is True and doc["agent"]["svid_version"] >= 1, doc
    h.wait_for(lambda: json.loads(p.get("/policy")[1])["version"] > 0, 10, what="policy")
    pol = json.loads(p.get("/policy")[1])
    assert pol["source"] == "agent" and pol["mesh_default"] == "deny", pol
    names = [x["name"] for x in pol["policies"]]
    assert "orders-read" in names, pol
    assert all(x["selector_identity"] in (ident, "") for x in pol["policies"]), pol


def connections_page():
    """/connections lists the connections held open through a pair, on both sides, with the peer
    identity, TLS details and bytes; ?peer= filters by peer identity."""
    echo = h.EchoServer()
    inp, outp = h.free_port(), h.free_port()
    inbound = h.Proxy(["--cert", os.path.join(C, "server.pem"), "--key",
                       os.path.join(C, "server-key.pem"), "--ca", os.path.join(C, "ca.pem"),
                       "--inbound", "127.0.0.1:%d=127.0.0.1:%d" % (inp, echo.port),
                       "--workers", "2"]).start()
    outbound = h.Proxy(["--cert", os.path.join(C, "client.pem"), "--key",
                        os.path.join(C, "client-key.pem"), "--ca", os.path.join(C, "ca.pem"),
                        "--outbound", "127.0.0.1:%d=127.0.0.1:%d,identity=%s" %
                        (outp, inp, "spiffe://test.local/ns/default/sa/backend"),
                        "--workers", "2"]).start()
    held = []
    for i in range(3):
        s = socket.create_connection(("127.0.0.1", outp), timeout=5)
        s.sendall(b"x" * (100 * (i + 1)))
        got = b""
        while len(got) < 100 * (i + 1):
            got += s.recv(65536)
        held.append(s)
    client_id = "spiffe://test.local/ns/default/sa/frontend"
    doc = json.loads(inbound.get("/connections")[1])
    assert doc["count"] == 3 and doc["partial"] is False, doc
    rows = doc["connections"]
    assert all(x["direction"] == "inbound" and x["peer_identity"] == client_id for x in rows), rows
    assert all(x["tls_version"] == "TLSv1.3" and x["alpn"] == "ward-tcp" and
               x["protocol"] == "tcp" and x["decision"] == "allow" and x["cipher"]
               for x in rows), rows
    assert sorted(x["bytes_to_upstream"] for x in rows) == [100, 200, 300], rows
    assert sorted(x["bytes_to_downstream"] for x in rows) == [100, 200, 300], rows
    assert all(x["age_seconds"] >= 0 for x in rows), rows
    out = json.loads(outbound.get("/connections")[1])
    assert out["count"] == 3, out
    assert all(x["peer_identity"] == "spiffe://test.local/ns/default/sa/backend" for x in
               out["connections"]), out
    st, body = inbound.get("/connections?peer=" + client_id.replace("/", "%2F"))
    assert json.loads(body)["count"] == 3, body
    assert json.loads(inbound.get("/connections?peer=spiffe://test.local/x")[1])["count"] == 0
    held.pop().close()
    h.wait_for(lambda: json.loads(inbound.get("/connections")[1])["count"] == 2, 5,
               what="closed connection leaves /connections")
    for s in held:
        s.close()
    m = inbound.metrics()
    # Per-peer handshake metrics: the three connections, labelled with the verified caller.
    assert h.metric_value(m, "ward_tls_peer_handshakes_total", direction="inbound",
                          result="success", reason="none", peer_identity=client_id) == 3, \
        [x for x in m if x[0] == "ward_tls_peer_handshakes_total"] if isinstance(m, list) else m
    assert h.metric_value(m, "process_open_fds") > 0 and \
        h.metric_value(m, "process_resident_memory_bytes") > 0, "process metrics"


r.run("identity_page", identity_page)
r.run("connections_page", connections_page)
r.run("policy_page_files", policy_page_files)
r.run("policy_and_identity_pages_agent", policy_and_identity_pages_agent)
r.run("slow_client_is_cut", slow_client_is_cut)
r.run("methods_and_errors", methods_and_errors)
r.finish()
