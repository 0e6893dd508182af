#!/usr/bin/python3
"""wardctl: `policy check` reports file:line:column for every invalid sample and passes the valid
ones; `cert inspect` names each refusal reason exactly as a ward peer would."""
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

r = h.Results()
WARDCTL = os.path.join(h.BUILD_DIR, "tools", "wardctl")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POLICY = os.path.join(REPO, "tests", "policy")


def run(*args):
    p = subprocess.run([WARDCTL] + list(args), capture_output=True, text=True, timeout=h.T(30))
    return p.returncode, p.stdout, p.stderr


def help_and_usage():
    rc, out, _ = run("--help")
    assert rc == 0 and "policy check" in out and "cert inspect" in out, out
    rc, _, err = run("frobnicate")
    assert rc == 2 and "unknown command" in err, err
    rc, _, err = run("policy", "check")
    assert rc == 2, err


def valid_policies():
    rc, out, err = run("policy", "check", POLICY)
    assert rc == 0, err
    assert re.search(r"\d+ policies valid", out), out
    for f in sorted(os.listdir(POLICY)):
        if f.endswith(".yaml"):
            rc, out, err = run("policy", "check", os.path.join(POLICY, f))
            assert rc == 0, (f, err)


def invalid_policies():
    d = os.path.join(POLICY, "invalid")
    files = sorted(f for f in os.listdir(d) if f.endswith(".yaml"))
    assert len(files) >= 10, files
    for f in files:
        path = os.path.join(d, f)
        with open(path) as fh:
            m = re.search(r"#\s*expect:\s*(\d+):(\d+)", fh.read())
        rc, out, err = run("policy", "check", path)
        assert rc == 1, (f, rc, out)
        if m:
            want = "%s:%s:%s:" % (path, m.group(1), m.group(2))
            assert err.startswith(want), (f, want, err)


def cert_verdicts():
    c = h.certs_dir()
    ca = os.path.join(c, "ca.pem")
    cases = {"client": None, "expired": "expired", "future": "not_yet_valid",
             "otherca": "unknown_ca", "twosan": "bad_certificate", "caleaf": "bad_certificate"}
    for name, reason in cases.items():
        rc, out, err = run("cert", "inspect", os.path.join(c, name + ".pem"), "--ca", ca)
        if reason is None:
            assert rc == 0 and "accepted" in out, (name, out, err)
        else:
            assert rc == 1 and ("REFUSED: %s" % reason) in out, (name, out, err)
    rc, out, _ = run("cert", "inspect", os.path.join(c, "wrongid.pem"), "--ca", ca, "--expect",
                     "spiffe://test.local/ns/default/sa/frontend")
    assert rc == 1 and "REFUSED: san_mismatch" in out, out
    rc, out, _ = run("cert", "inspect", os.path.join(c, "client.pem"))
    assert rc == 0 and "spiffe://test.local/ns/default/sa/frontend" in out, out
    rc, _, err = run("cert", "inspect", os.path.join(c, "missing.pem"))
    assert rc == 1 and "no readable PEM" in err, err


def status_of_a_proxy():
    c = h.certs_dir()
    p = h.Proxy(["--cert", os.path.join(c, "server.pem"), "--key",
                 os.path.join(c, "server-key.pem"), "--ca", os.path.join(c, "ca.pem"),
                 "--inbound", "127.0.0.1:%d=127.0.0.1:%d" % (h.free_port(), h.free_port()),
                 "--workers", "1"])
    p.start()
    inbound = int(p.args[p.args.index("--inbound") + 1].split("=")[0].rsplit(":", 1)[1])
    h.tls_probe("127.0.0.1", inbound, cert=os.path.join(c, "expired.pem"),
                key=os.path.join(c, "expired-key.pem"), ca=os.path.join(c, "ca.pem"))
    h.wait_for(lambda: (h.metric_value(p.metrics(), "ward_tls_handshakes_total",
                                       direction="inbound", result="failure",
                                       reason="expired") or 0) >= 1, 10, what="refusal counted")
    rc, out, err = run("status", "127.0.0.1:%d" % p.admin_port)
    assert rc == 0, (rc, out, err)
    assert "spiffe://test.local/ns/default/sa/backend (from files)" in out, out
    assert re.search(r"expired\s+1\b", out), out
    assert "ready                 yes" in out, out
    p.stop()
    rc, out, err = run("status", "127.0.0.1:%d" % p.admin_port)
    assert rc == 1 and "connect" in err, (rc, out, err)
    rc, _, err = run("status", "not-an-address")
    assert rc == 2, err


r.run("help_and_usage", help_and_usage)
r.run("status_of_a_proxy", status_of_a_proxy)
r.run("valid_policies", valid_policies)
r.run("invalid_policies", invalid_policies)
r.run("cert_verdicts", cert_verdicts)
r.finish()
