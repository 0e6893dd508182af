#!/usr/bin/python3
"""Hot reload of the inbound identity under traffic: zero failed connections, reload counted,
long-lived connection survives; a broken set is refused, logged and the old identity stays."""
import os
import shutil
import sys
import threading
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
LIVE = h.mkdtemp(prefix="ward-live-")          # the inbound's identity files
LCERT, LKEY = os.path.join(LIVE, "cert.pem"), os.path.join(LIVE, "key.pem")
shutil.copy(C("server.pem"), LCERT)
shutil.copy(C("server-key.pem"), LKEY)
os.chmod(LKEY, 0o600)
echo = h.EchoServer(H)
pair = None


def reloads(result):
    return h.metric_value(pair.inbound.metrics(), "ward_identity_reloads_total", result=result)


def served_cert():
    """DER of the certificate the inbound presents to a new client right now."""
    st, peer = h.tls_probe(H, pair.in_port, C("client.pem"), C("client-key.pem"), C("ca.pem"))
    assert st == "ok", "direct mTLS connection to the inbound failed: %s" % peer
    return peer


def swap_identity(cert_src, key_src):
    """Atomically replace key then cert (each: write temp + rename), back to back."""
    with open(cert_src, "rb") as f:
        cert = f.read()
    with open(key_src, "rb") as f:
        key = f.read()
    h.atomic_write(LKEY, key)
    h.atomic_write(LCERT, cert)


@r.fixture
def start_pair():
    global pair
    # the inbound gets its identity from LIVE; fast reload interval
    pair = h.Pair(CERTS, echo.addr, H, start=False)
    a = pair.inbound.args
    a[a.index("--cert") + 1] = LCERT
    a[a.index("--key") + 1] = LKEY
    a += ["--reload-interval", "200ms"]
    pair.start()
    assert served_cert() == h.cert_der(C("server.pem"))


if pair is None:
    r.finish()


@r.test
def reload_under_traffic():
    long_lived = h.connect(H, pair.out_port)
    long_lived.sendall(b"before")
    assert h.recv_exact(long_lived, 6) == b"before"
    ok_before = reloads("success")
    stop = threading.Event()
    stats = {"ok": 0, "fail": 0, "errors": []}

    def loop():
        deadline = time.monotonic() + h.T(8)
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 3000:
            i += 1
            try:
                h.echo_roundtrip(H, pair.out_port, b"req %d" % i, timeout=5)
                stats["ok"] += 1
            except Exception as e:  # noqa: BLE001
                stats["fail"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(repr(e))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        time.sleep(1.5)
        swap_identity(C("server2.pem"), C("server2-key.pem"))
        h.wait_for(lambda: reloads("success") > ok_before, 10,
                   what='ward_identity_reloads_total{result="success"} to increment')
        h.wait_for(lambda: served_cert() == h.cert_der(C("server2.pem")), 10,
                   what="the inbound to present server2 to new connections")
        time.sleep(1.0)   # keep traffic flowing across and after the switch
    finally:
        stop.set()
        t.join(h.T(15))
    assert not t.is_alive(), "client loop did not stop"
    assert stats["ok"] >= 20, "only %d connections succeeded during the reload window" % stats["ok"]
    assert stats["fail"] == 0, "%d of %d connections failed across the reload: %s" % (
        stats["fail"], stats["fail"] + stats["ok"], stats["errors"])
    print("     %d connections across the reload, 0 failed" % stats["ok"])
    # the connection opened before the reload still works, both ways
    long_lived.sendall(b"after reload")
    assert h.recv_exact(long_lived, 12) == b"after reload"
    long_lived.close()


@r.test
def expiry_metric_follows_reload():
    want = h.cert_not_after(C("server2.pem"))
    h.wait_for(lambda: h.metric_value(pair.inbound.metrics(), "ward_cert_expiry_timestamp_seconds") == want,
               5, what="ward_cert_expiry_timestamp_seconds == server2 notAfter (%d)" % want)


def settle():
    """Wait until the reload counters stop moving (a previous file change has been processed)."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + h.T(10)
    while time.monotonic() < deadline:
        cur = (reloads("success"), reloads("failure"))
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since > h.T(0.8):
            return
        time.sleep(0.1)


def broken_reload(write_broken, words):
    settle()
    good = served_cert()
    fail_before = reloads("failure")
    ok_before = reloads("success")
    since = pair.inbound.stderr_size()
    write_broken()
    h.wait_for(lambda: reloads("failure") > fail_before, 10,
               what='ward_identity_reloads_total{result="failure"} to increment')
    assert reloads("success") == ok_before, "a broken identity was counted as a successful reload"
    recs = [x for x in pair.inbound.log_records(since) if str(x.get("level", "")).lower() == "error"]
    assert recs, "no JSON error log line after the broken reload; stderr since: %r" % \
        pair.inbound.stderr_text()[since:][-2000:]
    text = " ".join(str(v) for x in recs for v in x.values()).lower()
    assert any(w in text for w in words), "error log line does not say why (%s): %r" % ("/".join(words), recs)
    # old identity stays: new connections succeed and still see the previous certificate
    for i in range(5):
        h.echo_roundtrip(H, pair.out_port, b"still fine %d" % i)
    assert served_cert() == good, "the inbound no longer presents the last valid certificate"


@r.test
def garbage_cert_refused():
    saved_cert = open(LCERT, "rb").read()
    try:
        broken_reload(lambda: h.atomic_write(LCERT, b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n"
                                                    b"-----END CERTIFICATE-----\n"),
                      ("cert", "pem", "parse", "x509"))
    finally:
        h.atomic_write(LCERT, saved_cert)


@r.test
def mismatched_key_refused():
    # restore a valid set first, then pair server2's cert with an unrelated key
    saved_key = open(LKEY, "rb").read()
    key = certs.new_key()
    try:
        broken_reload(lambda: h.atomic_write(LKEY, certs.key_pem(key)),
                      ("key", "match", "mismatch"))
    finally:
        h.atomic_write(LKEY, saved_key)


@r.test
def valid_set_after_failures_reloads():
    ok_before = reloads("success")
    swap_identity(C("server.pem"), C("server-key.pem"))
    h.wait_for(lambda: served_cert() == h.cert_der(C("server.pem")), 10,
               what="the inbound to present server.pem again")
    assert reloads("success") > ok_before
    h.echo_roundtrip(H, pair.out_port, b"back to server.pem")


@r.test
def sighup_triggers_reload():
    # a slow interval proxy: only SIGHUP can pick up the change quickly
    be = h.EchoServer(H)
    d = h.mkdtemp(prefix="ward-hup-")
    cp, kp = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    shutil.copy(C("server.pem"), cp)
    shutil.copy(C("server-key.pem"), kp)
    port = h.free_port(H)
    p = h.Proxy(["--cert", cp, "--key", kp, "--ca", C("ca.pem"), "--reload-interval", "1h",
                 "--inbound", "%s=%s" % (h.addr(H, port), be.addr)], name="inbound-hup").start()
    try:
        h.atomic_copy(C("server2-key.pem"), kp)
        h.atomic_copy(C("server2.pem"), cp)
        before = h.metric_value(p.metrics(), "ward_identity_reloads_total", result="success")
        p.signal(1)  # SIGHUP
        h.wait_for(lambda: h.metric_value(p.metrics(), "ward_identity_reloads_total", result="success") > before,
                   5, what="SIGHUP to reload the identity")
        st, peer = h.tls_probe(H, port, C("client.pem"), C("client-key.pem"), C("ca.pem"))
        assert st == "ok" and peer == h.cert_der(C("server2.pem")), "after SIGHUP: %s" % st
    finally:
        p.stop(5)
        be.close()


@r.test
def clean_shutdown():
    assert pair.outbound.stop(15) == 0
    assert pair.inbound.stop(15) == 0


echo.close()
r.finish()
