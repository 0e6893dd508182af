#!/usr/bin/python3
"""wardctl: `policy check` reports file:line:column for every invalid sample and passes the valid
ones; `policy test` decides requests as the proxy would (policy and rule, DENY over ALLOW, AUDIT,
mesh defaults, opaque TCP, conditions, path normalisation and refusals); `cert inspect` names each
refusal reason exactly as a ward peer would."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

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
    assert "policy test" in out, out
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


SHOP_POLICIES = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: orders-read, namespace: shop}
spec:
  selector: {identity: "spiffe://td/ns/shop/sa/orders"}
  rules:
  - from: [{identities: ["spiffe://td/ns/shop/sa/web", "spiffe://td/ns/ops/*"]}]
    to: [{ports: [8080], methods: [GET, HEAD], paths: ["/orders/*", "/public/*"]}]
    when: [{key: "request.headers[x-tenant]", values: [acme, globex]}]
  - from: [{namespaces: [ops]}]
    to: [{ports: [5432]}]
    when: [{key: source.ip, values: ["10.0.0.0/8"]}, {key: time.hour, values: ["22-6"]}]
---
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{ports: [9000]}]
  - to: [{paths: ["/admin/*"]}]
"""

WATCH_POLICY = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: shop}
spec:
  action: AUDIT
  rules:
  - from: [{identities: ["*"]}]
    to: [{methods: [GET]}]
"""

ORDERS = "spiffe://td/ns/shop/sa/orders"
WEB = "spiffe://td/ns/shop/sa/web"


def policy_test():
    d = tempfile.mkdtemp(prefix="wardctl-policy-test-")
    try:
        with open(os.path.join(d, "shop.yaml"), "w") as f:
            f.write(SHOP_POLICIES)
        with open(os.path.join(d, "watch.yml"), "w") as f:
            f.write(WATCH_POLICY)
        single = os.path.join(d, "shop.yaml")

        def pt(*args, policy=d):
            return run("policy", "test", "--policy", policy, "--to", ORDERS, *args)

        def http(frm, path, *extra, method="GET", port="8080", policy=d):
            return pt("--from", frm, "--port", port, "--method", method, "--path", path,
                      *extra, policy=policy)

        # ALLOW: policy and rule named; the AUDIT policy that matched too.
        rc, out, err = http(WEB, "/orders/42", "--header", "X-Tenant=acme", policy=single)
        assert rc == 0, (rc, out, err)
        assert out == "ALLOW allowed_by_policy  policy=shop/orders-read rule=0\n", out
        rc, out, err = http(WEB, "/orders/42", "--header", "x-tenant=acme")
        assert rc == 0 and out.strip().endswith("rule=0 audit=shop/watch"), (rc, out, err)
        # A repeated header: any of its values.
        rc, out, _ = http("spiffe://td/ns/ops/sa/deployer", "/public/x", "--header",
                          "x-tenant=other", "--header", "x-tenant=globex", method="HEAD")
        assert rc == 0 and "policy=shop/orders-read rule=0" in out, out
        # An ALLOW policy selects the workload but no rule matches.
        for frm, path, extra in ((WEB, "/orders/42", []),                        # no header
                                 (WEB, "/orders", ["--header", "x-tenant=acme"]),  # not a prefix
                                 ("spiffe://td/ns/dev/sa/web", "/orders/1",
                                  ["--header", "x-tenant=acme"])):
            rc, out, _ = http(frm, path, *extra, policy=single)
            assert rc == 1 and out == "DENY  no_allow_match  policy=- rule=-\n", (frm, path, out)
        # DENY beats ALLOW, and the path is matched as the proxy normalises it.
        for path in ("/admin/users", "/public/../admin/users", "/%61dmin/users",
                     "//admin//users", "/public/..;/admin/users", "/admin;jsessionid=1/users",
                     "http://evil.example/admin/users"):
            rc, out, err = http(WEB, path, "--header", "x-tenant=acme", policy=single)
            assert rc == 1, (path, rc, out, err)
            assert out == "DENY  denied_by_policy  policy=shop/no-admin rule=1\n", (path, out)
        rc, out, _ = http(WEB, "/ADMIN/users", "--header", "x-tenant=acme", policy=single)
        assert rc == 1 and "no_allow_match" in out, out  # case is kept: not /admin/*
        # Targets the proxy refuses with a 400 (or 414).
        for path, why in (("/admin%2fusers", "encoded slash"), ("/a%5cb", "encoded backslash"),
                          ("/%252e%252e/admin", "double percent-encoding"),
                          ("/a#frag", "fragment"), ("/a\\b", "backslash"),
                          ("/x" * 5000, "request target too long")):
            rc, out, _ = http(WEB, path, policy=single)
            assert rc == 2 and out.startswith("REFUSED " + why), (path, rc, out)
        # Opaque TCP: ALLOW rules with HTTP parts cannot match; a DENY rule covers the whole
        # connection, its HTTP parts ignored.
        tcp = ["--from", "spiffe://td/ns/ops/sa/db-admin", "--source", "10.1.2.3", "--hour", "23"]
        rc, out, _ = pt(*tcp, "--port", "5432", policy=single)
        assert rc == 1 and "denied_by_policy  policy=shop/no-admin rule=1" in out, out
        rc, out, _ = pt("--from", WEB, "--port", "9000", policy=single)
        assert rc == 1 and "policy=shop/no-admin rule=0" in out, out
        rc, out, _ = pt("--from", WEB, "--port", "8080")
        assert rc == 1 and "no-admin" in out, out
        # Conditions: source.ip (v4, mapped v6) and a time.hour range that wraps past midnight.
        os.mkdir(os.path.join(d, "alone"))  # a subdirectory: not part of d's policies
        no_admin_tcp = os.path.join(d, "alone", "orders-read.yaml")
        with open(no_admin_tcp, "w") as f:
            f.write(SHOP_POLICIES.split("---")[0])
        for src, hour, want in (("10.1.2.3", "23", 0), ("::ffff:10.1.2.3", "3", 0),
                                ("11.0.0.1", "23", 1), ("10.1.2.3", "12", 1),
                                ("2001:db8::1", "23", 1)):
            rc, out, _ = pt("--from", "spiffe://td/ns/ops/sa/x", "--port", "5432", "--source", src,
                            "--hour", hour, policy=no_admin_tcp)
            assert rc == want, (src, hour, rc, out)
            if want == 0:
                assert out == "ALLOW allowed_by_policy  policy=shop/orders-read rule=1\n", out
        # An unauthenticated caller matches no `from` clause.
        rc, out, _ = pt("--from", "-", "--port", "5432", "--source", "10.1.2.3", "--hour", "1",
                        policy=no_admin_tcp)
        assert rc == 1 and "no_allow_match" in out, out
        # No policy selects the workload: the mesh default decides.
        other = ["policy", "test", "--policy", d, "--from", WEB, "--to",
                 "spiffe://td/ns/dev/sa/api", "--method", "GET", "--path", "/"]
        rc, out, _ = run(*other)
        assert rc == 1 and out == "DENY  mesh_default_deny  policy=mesh-default rule=-\n", out
        rc, out, _ = run(*other, "--mesh-default", "allow")
        assert rc == 0 and out.startswith("ALLOW mesh_default_allow  policy=mesh-default"), out
        rc, out, _ = run(*other, "--mesh-default", "audit")
        assert rc == 0 and out.startswith("ALLOW mesh_default_audit"), out
        # A namespace-wide policy (no selector) selects every workload of its namespace.
        rc, out, _ = run("policy", "test", "--policy", d, "--from", WEB, "--to",
                         "spiffe://td/ns/shop/sa/cart", "--method", "GET", "--path", "/admin/")
        assert rc == 1 and "policy=shop/no-admin rule=1 audit=shop/watch" in out, out
        # Usage and load errors: exit 2.
        rc, _, err = run("policy", "test", "--policy", d, "--from", WEB)
        assert rc == 2 and "--to" in err, err
        rc, _, err = http(WEB, "/", "--bogus")
        assert rc == 2 and "--bogus" in err, err
        rc, _, err = pt("--from", WEB, "--method", "GET")
        assert rc == 2 and "together" in err, err
        rc, _, err = pt("--from", "web", "--port", "1")
        assert rc == 2 and "--from" in err, err
        rc, _, err = run("policy", "test", "--policy", d, "--from", WEB, "--to", "nope")
        assert rc == 2 and "--to" in err, err
        for bad in (["--hour", "24"], ["--port", "70000"], ["--source", "300.1.1.1"],
                    ["--header", "novalue"], ["--mesh-default", "maybe"]):
            rc, _, err = pt("--from", WEB, *bad)
            assert rc == 2, (bad, err)
        rc, _, err = pt("--from", WEB, policy=os.path.join(d, "missing.yaml"))
        assert rc == 2 and "missing.yaml" in err, err
        broken = os.path.join(d, "broken.yaml")
        with open(broken, "w") as f:
            f.write("apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                    "metadata: {name: b, namespace: shop}\nspec: {action: MAYBE}\n")
        rc, _, err = pt("--from", WEB, policy=broken)
        assert rc == 2 and err.startswith(broken + ":4:"), err
        rc, _, err = pt("--from", WEB)  # the directory now holds broken.yaml
        assert rc == 2 and "broken.yaml:4:" in err, err
        rc, out, _ = run("policy", "test", "--help")
        assert rc == 0 and "--mesh-default" in out, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


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
r.run("policy_test", policy_test)
r.run("cert_verdicts", cert_verdicts)
r.finish()
