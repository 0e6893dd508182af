#!/usr/bin/python3
"""Data path: echo <- inbound <- mTLS <- outbound <- client. Bytes intact, half-close both ways,
200 concurrent connections, metrics, IPv6, session resumption."""
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

H = "127.0.0.1"
r = h.Results()
h.require_binary()
CERTS = h.certs_dir()
echo = h.EchoServer(H)
pair = None


def metrics_both():
    return pair.outbound.metrics(), pair.inbound.metrics()


def stream_through(total, timeout=40.0, host=H, port=None):
    s = h.connect(host, port or pair.out_port)
    try:
        st = h.Stream(s, total, timeout=timeout)
        t0 = time.monotonic()
        ok = st.run()
        if total >= 50 << 20:
            print("     %d MiB each way in %.2fs" % (total >> 20, time.monotonic() - t0))
        assert st.received == st.total, "received %d of %d bytes" % (st.received, st.total)
        assert ok, "sha256 differs between sent and echoed streams (%d bytes)" % total
    finally:
        s.close()


@r.fixture
def start_pair():
    global pair
    pair = h.Pair(CERTS, echo.addr, H)
    assert pair.outbound.get("/live")[0] == 200
    assert pair.inbound.get("/live")[0] == 200


if pair is None or not pair.outbound.alive():
    r.finish()


@r.test
def one_byte():
    stream_through(1)


@r.test
def one_mib():
    stream_through(1 << 20)


@r.test
def bytes_metrics_for_known_transfer():
    # Let earlier connections finish and their counters settle, then do one 1 MiB exchange.
    h.wait_for(lambda: h.metric_value(pair.outbound.metrics(), "ward_connections_open") == 0 and
               h.metric_value(pair.inbound.metrics(), "ward_connections_open") == 0,
               10, what="ward_connections_open to drop to 0")
    n = 1 << 20
    b_out, b_in = metrics_both()
    stream_through(n)

    def settled():
        o, i = metrics_both()
        return all(h.metric_value(m, "ward_bytes_total", direction=d, flow=f) -
                   h.metric_value(b, "ward_bytes_total", direction=d, flow=f) >= n
                   for m, b, d in ((o, b_out, "outbound"), (i, b_in, "inbound"))
                   for f in ("to_upstream", "to_downstream")) and (o, i)
    o, i = h.wait_for(settled, 10, what="ward_bytes_total to count the 1 MiB both ways")
    for m, b, d in ((o, b_out, "outbound"), (i, b_in, "inbound")):
        for f in ("to_upstream", "to_downstream"):
            delta = h.metric_value(m, "ward_bytes_total", direction=d, flow=f) - \
                h.metric_value(b, "ward_bytes_total", direction=d, flow=f)
            # payload bytes; allow TLS record overhead if a side counts wire bytes
            assert n <= delta <= n * 1.05 + 65536, \
                "ward_bytes_total{direction=%s,flow=%s} grew by %d for a %d byte exchange" % (d, f, delta, n)


@r.test
def hundred_mib_both_ways():
    stream_through(100 << 20, timeout=45.0)


@r.test
def half_close_client_first():
    s = h.connect(H, pair.out_port)
    try:
        payload = os.urandom(300000)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = h.recv_until_eof(s, timeout=15)
        assert got == payload, "after client half-close got %d of %d echoed bytes" % (len(got), len(payload))
    finally:
        s.close()


@r.test
def half_close_server_first():
    g = h.GreetThenSinkServer(b"greeting\n", H)
    p = h.Pair(CERTS, g.addr, H)
    try:
        s = h.connect(H, p.out_port)
        try:
            got = h.recv_until_eof(s, timeout=10)
            assert got == b"greeting\n", "got %r before EOF" % got
            # our read side is closed; the write side must still reach the backend
            s.sendall(b"z" * 100000)
            s.shutdown(socket.SHUT_WR)
            h.wait_for(lambda: g.received, 10, what="backend to see EOF after the client's data")
            assert g.received == [100000], "backend received %r bytes" % g.received
        finally:
            s.close()
    finally:
        p.stop()
        g.close()


@r.test
def concurrent_200():
    n = 200
    b_out, b_in = metrics_both()
    socks, errors = [None] * n, []
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1, timeout=h.T(30))

    def worker(i):
        try:
            s = h.connect(H, pair.out_port, timeout=15)
            socks[i] = s
            barrier.wait()          # all 200 open at the same time
            payload = os.urandom(4096) + i.to_bytes(4, "big")
            s.sendall(payload)
            got = h.recv_exact(s, len(payload), timeout=20)
            if got != payload:
                raise AssertionError("conn %d: echo mismatch" % i)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("conn %d: %r" % (i, e))
            try:
                barrier.abort()
            except threading.BrokenBarrierError:
                pass

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in ts:
        t.join(h.T(40))
    try:
        assert not errors, "%d of %d connections failed: %s" % (len(errors), n, errors[:5])
        # every connection has been proxied end to end and is still open: the gauges must see them
        gauges = {}

        def all_open():
            for p, d in ((pair.outbound, "outbound"), (pair.inbound, "inbound")):
                gauges[d] = h.metric_value(p.metrics(), "ward_connections_open", direction=d)
            return all(v >= n for v in gauges.values())
        try:
            h.wait_for(all_open, 5, what="ward_connections_open >= %d" % n)
        except h.Timeout:
            raise AssertionError("ward_connections_open = %r with %d proxied connections open" % (gauges, n))
    finally:
        for s in socks:
            if s:
                s.close()
    h.wait_for(lambda: h.metric_value(pair.outbound.metrics(), "ward_connections_open") == 0 and
               h.metric_value(pair.inbound.metrics(), "ward_connections_open") == 0, 10,
               what="ward_connections_open to return to 0 after closing")

    def grown():
        o, i = metrics_both()
        return (h.metric_value(o, "ward_connections_total", direction="outbound") -
                h.metric_value(b_out, "ward_connections_total", direction="outbound") >= n and
                h.metric_value(i, "ward_connections_total", direction="inbound") -
                h.metric_value(b_in, "ward_connections_total", direction="inbound") >= n and
                h.metric_value(o, "ward_tls_handshakes_total", direction="outbound", result="success") -
                h.metric_value(b_out, "ward_tls_handshakes_total", direction="outbound", result="success") >= n and
                h.metric_value(i, "ward_tls_handshakes_total", direction="inbound", result="success") -
                h.metric_value(b_in, "ward_tls_handshakes_total", direction="inbound", result="success") >= n)
    h.wait_for(grown, 10, what="connections_total and handshakes_total{result=success} to grow by %d" % n)


@r.test
def success_label_is_reason_none():
    o, i = metrics_both()
    assert h.metric_value(o, "ward_tls_handshakes_total", direction="outbound", result="success",
                          reason="none") > 0, "no ward_tls_handshakes_total{direction=outbound,result=success,reason=none}"
    assert h.metric_value(i, "ward_tls_handshakes_total", direction="inbound", result="success",
                          reason="none") > 0, "no ward_tls_handshakes_total{direction=inbound,result=success,reason=none}"
    assert h.metric_value(o, "ward_tls_handshakes_total", result="failure") == 0, "unexpected failures (outbound)"
    assert h.metric_value(i, "ward_tls_handshakes_total", result="failure") == 0, "unexpected failures (inbound)"


@r.test
def cert_expiry_metric():
    for p, leaf in ((pair.outbound, "client.pem"), (pair.inbound, "server.pem")):
        want = h.cert_not_after(os.path.join(CERTS, leaf))
        m = p.metrics()
        assert h.metric_present(m, "ward_cert_expiry_timestamp_seconds"), "metric missing on %s" % p.name
        got = h.metric_value(m, "ward_cert_expiry_timestamp_seconds")
        assert got == want, "%s: ward_cert_expiry_timestamp_seconds=%r, leaf notAfter=%d" % (p.name, got, want)


@r.test
def session_resumption():
    for _ in range(10):
        h.echo_roundtrip(H, pair.out_port, b"resume?")
    o = h.wait_for(lambda: (lambda m: h.metric_value(m, "ward_tls_resumed_total", direction="outbound") > 0 and m)(
        pair.outbound.metrics()), 5, what="ward_tls_resumed_total{direction=outbound} > 0")
    i = pair.inbound.metrics()
    print("     resumed: outbound=%d inbound=%d" % (
        h.metric_value(o, "ward_tls_resumed_total", direction="outbound"),
        h.metric_value(i, "ward_tls_resumed_total", direction="inbound")))


@r.test
def ipv6_loopback():
    if not h.have_ipv6():
        raise h.SkipTest("no IPv6 loopback on this machine")
    e6 = h.EchoServer("::1")
    p6 = h.Pair(CERTS, e6.addr, "::1")
    try:
        stream_through(1 << 20, host="::1", port=p6.out_port)
        s = h.connect("::1", p6.out_port)
        s.sendall(b"v6")
        assert h.recv_exact(s, 2) == b"v6"
        s.close()
    finally:
        p6.stop()
        e6.close()


@r.test
def backpressure_bounds_memory():
    """The backend reads nothing for a while: the proxies must stop reading instead of buffering."""
    sink = h.StallSink(H)
    p = h.Pair(CERTS, sink.addr, H)
    total = 96 << 20
    try:
        rss0 = {q.name: h.rss_bytes(q.pid) for q in (p.outbound, p.inbound)}
        s = h.connect(H, p.out_port)
        sent = [0]
        err = []

        def sender():
            try:
                chunk = os.urandom(1 << 20)
                for _ in range(total >> 20):
                    s.sendall(chunk)
                    sent[0] += len(chunk)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)
        s.settimeout(h.T(60))
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        # wait until the sender is stuck (socket buffers full), then measure
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + h.T(15)
        while time.monotonic() < deadline:
            if sent[0] != last:
                last, stable_since = sent[0], time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.1)
        growth = {q.name: h.rss_bytes(q.pid) - rss0[q.name] for q in (p.outbound, p.inbound)}
        stuck_at = sent[0]
        sink.release()
        t.join(h.T(60))
        assert not err, "sender failed: %r" % err
        h.wait_for(lambda: sink.received, 30, what="the sink to read everything")
        s.close()
        assert stuck_at < total, "all %d bytes were accepted while the backend read nothing" % total
        for name, g in growth.items():
            assert g < 32 << 20, "%s grew by %.1f MiB while the backend was not reading (%.1f MiB " \
                "accepted from the client)" % (name, g / 1048576.0, stuck_at / 1048576.0)
        assert sink.received == [total], "backend received %r of %d bytes" % (sink.received, total)
        print("     stalled after %.1f MiB, RSS growth %s" % (
            stuck_at / 1048576.0, {k: "%.1f MiB" % (v / 1048576.0) for k, v in growth.items()}))
    finally:
        sink.release()
        p.stop()
        sink.close()


@r.test
def metrics_exposition_types():
    st, body = pair.outbound.get("/metrics")
    text = body.decode()
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            types[parts[2]] = parts[3]
    want = {"ward_tls_handshakes_total": "counter", "ward_connections_open": "gauge",
            "ward_connections_total": "counter", "ward_bytes_total": "counter",
            "ward_cert_expiry_timestamp_seconds": "gauge", "ward_identity_reloads_total": "counter",
            "ward_tls_resumed_total": "counter"}
    for name, typ in want.items():
        assert types.get(name) == typ, "# TYPE %s is %r, want %s" % (name, types.get(name), typ)
    m = h.parse_metrics(text)
    for name in want:
        assert h.metric_present(m, name), "no sample for %s" % name


@r.test
def clean_shutdown():
    assert pair.outbound.stop(15) == 0, "outbound exit status %s" % pair.outbound.proc.returncode
    assert pair.inbound.stop(15) == 0, "inbound exit status %s" % pair.inbound.proc.returncode


echo.close()
r.finish()
