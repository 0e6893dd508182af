#!/usr/bin/python3
"""ward-agent's policy store and CA rotation, seen from a python3-grpcio Mesh/Connect client
attested by its Unix peer credentials (uid 0).

--policy-dir is laid out like a Kubernetes ConfigMap volume (..data -> ..2026_* dir, top-level
symlinks) holding copies of the valid samples of tests/policy/. The client gets a PolicySnapshot of
the policies selecting its identity; an atomic ..data swap pushes a newer snapshot within 3 s; an
invalid file is rejected (metric, policy_valid 0, log line with file:line:col) and pushes nothing;
fixing it pushes again. SIGUSR1 rotates the CA: a Bundle with both roots arrives before any SVID
signed by the new root."""
import glob
import os
import re
import signal
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402

r = h.Results()
ah.require_binaries()
pb = ah.protos()

ME = ah.spiffe("shop", "orders")           # uid 0
SAMPLES = os.path.join(h.REPO, "tests", "policy")
KIND = pb.mesh.ResourceKind


def sample(name):
    """A valid sample of tests/policy/, moved to this agent's trust domain."""
    with open(os.path.join(SAMPLES, name)) as f:
        return f.read().replace("spiffe://cluster.local/", "spiffe://%s/" % ah.TD)


VALID = {os.path.basename(p): sample(os.path.basename(p))
         for p in sorted(glob.glob(os.path.join(SAMPLES, "*.yaml")))}
assert {"orders-read.yaml", "shop-guardrails.yaml"} <= set(VALID), sorted(VALID)
cm = ah.ConfigMapDir(VALID)
agent = ah.Agent(workloads={0: ME}, policy_dir=cm.dir, mesh_default=None)
stream = {"s": None, "ch": None, "last": 0, "names": None}


def m(name, **labels):
    return h.metric_value(agent.metrics(), name, **labels)


def selects(p):
    if p.selector_identity:
        return p.selector_identity == ME
    return p.namespace == "shop"


def next_policy(s, timeout):
    """The next PolicySnapshot on the stream (ACKing every resource on the way)."""
    deadline = time.monotonic() + h.T(timeout)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise h.Timeout("no PolicySnapshot within %.1fs" % h.T(timeout))
        msg = s.recv(left / h.SCALE)
        kind = msg.WhichOneof("msg")
        if kind == "bundle":
            s.ack(KIND.RESOURCE_KIND_BUNDLE, msg.bundle.version)
        elif kind == "policy":
            s.ack(KIND.RESOURCE_KIND_POLICY, msg.policy.version)
            return msg.policy


def no_policy_for(s, seconds):
    """Asserts no PolicySnapshot arrives for seconds (other messages are ACKed)."""
    try:
        p = next_policy(s, seconds)
    except h.Timeout:
        return
    raise AssertionError("unexpected PolicySnapshot version %d: %r" % (
        p.version, sorted(x.name for x in p.policies)))


@r.fixture
def start_and_first_snapshot():
    agent.start()
    stream["ch"] = ah.channel(agent.sock)
    s = stream["s"] = ah.MeshStream(stream["ch"], pb)
    s.hello()
    p = next_policy(s, 5)
    names = sorted(x.name for x in p.policies)
    assert p.policies, "empty snapshot for %s" % ME
    assert all(selects(x) for x in p.policies), "snapshot holds policies not selecting %s: %r" % (
        ME, [(x.name, x.namespace, x.selector_identity) for x in p.policies])
    assert names == ["orders-read", "shop-deny-admin", "shop-health"], names
    orders = [x for x in p.policies if x.name == "orders-read"][0]
    assert orders.action == pb.mesh.Action.ACTION_ALLOW and orders.rules, orders
    assert p.mesh_default == pb.mesh.DefaultAction.DEFAULT_ACTION_DENY
    stream["last"], stream["names"] = p.version, names
    assert m("ward_agent_policy_valid") == 1


if stream["s"] is None or not agent.alive():
    r.finish()


def changed_set():
    v = dict(VALID)
    del v["shop-guardrails.yaml"]
    v["orders-read.yaml"] = v["orders-read.yaml"].replace("methods: [GET, HEAD]",
                                                          "methods: [GET, HEAD, POST]")
    assert v["orders-read.yaml"] != VALID["orders-read.yaml"]
    v["orders-extra.yaml"] = (
        "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: orders-audit, namespace: shop}\n"
        "spec:\n  selector: {identity: \"%s\"}\n  action: AUDIT\n"
        "  rules:\n  - from: [{namespaces: [ops]}]\n" % ME)
    return v


@r.test
def configmap_swap_pushes_new_snapshot():
    s = stream["s"]
    t0 = time.monotonic()
    cm.publish(changed_set())
    p = next_policy(s, 3)
    took = time.monotonic() - t0
    names = sorted(x.name for x in p.policies)
    assert p.version > stream["last"], "version %d after %d" % (p.version, stream["last"])
    assert names == ["orders-audit", "orders-read"], names
    orders = [x for x in p.policies if x.name == "orders-read"][0]
    assert "POST" in orders.rules[0].to[0].methods, orders
    assert all(selects(x) for x in p.policies)
    print("     new snapshot v%d %s %.2fs after the ..data swap" % (p.version, names, took))
    stream["last"], stream["names"] = p.version, names


@r.test
def invalid_file_rejected_nothing_pushed():
    s = stream["s"]
    fail0 = m("ward_agent_policy_reloads_total", result="failure")
    since = agent.stderr_size()
    bad = dict(changed_set())
    with open(os.path.join(SAMPLES, "invalid", "bad-action.yaml")) as f:
        bad["bad-action.yaml"] = f.read()   # "# expect: 6:11 must be ALLOW, DENY or AUDIT"
    cm.publish(bad)
    ah.wait_metric(agent, "ward_agent_policy_reloads_total", lambda v: v > fail0, 5,
                   result="failure")
    assert m("ward_agent_policy_valid") == 0
    recs = agent.events("policy_rejected", since)
    assert recs, "no policy_rejected log line"
    err = recs[0].get("error", "")
    assert re.search(r"bad-action\.yaml:6:11\b", err), "no file:line:col in %r" % err
    assert "ALLOW" in err, err
    no_policy_for(s, 2.5)
    # the last good set still applies to new streams
    with ah.channel(agent.sock) as ch:
        s2 = ah.MeshStream(ch, pb)
        try:
            s2.hello()
            p = next_policy(s2, 5)
        finally:
            s2.close()
    assert sorted(x.name for x in p.policies) == stream["names"], "new stream got %r" % sorted(
        x.name for x in p.policies)


@r.test
def fixed_file_pushes_again():
    s = stream["s"]
    ok0 = m("ward_agent_policy_reloads_total", result="success")
    fixed = dict(changed_set())
    fixed["bad-action.yaml"] = (
        "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: shop}\nspec:\n  action: ALLOW\n"
        "  rules:\n  - to: [{ports: [8080]}]\n")
    cm.publish(fixed)
    p = next_policy(s, 3)
    names = sorted(x.name for x in p.policies)
    assert p.version > stream["last"], "version %d after %d" % (p.version, stream["last"])
    assert names == ["orders-audit", "orders-read", "p"], names
    assert m("ward_agent_policy_valid") == 1
    assert m("ward_agent_policy_reloads_total", result="success") > ok0
    stream["last"], stream["names"] = p.version, names


@r.test
def unrelated_change_pushes_nothing():
    s = stream["s"]
    v = dict(changed_set())
    v["bad-action.yaml"] = (
        "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: shop}\nspec:\n  action: ALLOW\n"
        "  rules:\n  - to: [{ports: [8080]}]\n")
    v["other-ns.yaml"] = ("apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                          "metadata: {name: q, namespace: payments}\nspec:\n  action: DENY\n"
                          "  rules:\n  - to: [{ports: [9]}]\n")
    ok0 = m("ward_agent_policy_reloads_total", result="success")
    cm.publish(v)
    ah.wait_metric(agent, "ward_agent_policy_reloads_total", lambda x: x > ok0, 5,
                   result="success")
    no_policy_for(s, 1.5)


def cert(der):
    return ah.certs_from_concat(der)[0]


@r.test
def ca_rotation_bundle_before_new_svids():
    s = stream["s"]
    # the current root and an SVID from it
    der, _ = ah.make_csr(None)
    s.csr(der, 1)
    seen = []
    sv = s.recv_kind("svid", 5, seen).svid
    s.ack(KIND.RESOURCE_KIND_SVID, sv.version)
    with ah.channel(agent.sock) as ch:
        old_roots = ah.certs_from_concat(ah.fetch_x509bundles(ch, pb).bundles["spiffe://" + ah.TD])
    assert len(old_roots) == 1, "%d roots before the rotation" % len(old_roots)
    old = old_roots[0]
    assert ah.chain_verifies([cert(x) for x in sv.cert_chain_der], [old])

    since = agent.stderr_size()
    agent.signal(signal.SIGUSR1)
    log = []   # every message after the signal, in stream order
    b = None
    deadline = time.monotonic() + h.T(5)
    while b is None:
        assert time.monotonic() < deadline, "no 2-root Bundle within 5s of SIGUSR1: %r" % [
            x.WhichOneof("msg") for x in log]
        msg = s.recv(5)
        log.append(msg)
        assert msg.WhichOneof("msg") != "svid", "an SVID before the new bundle"
        if msg.WhichOneof("msg") == "bundle":
            s.ack(KIND.RESOURCE_KIND_BUNDLE, msg.bundle.version)
            if len(msg.bundle.roots_der) == 2:
                b = msg.bundle
    roots = [cert(x) for x in b.roots_der]
    new = [x for x in roots if ah.der(x) != ah.der(old)]
    assert len(new) == 1 and ah.der(old) in [ah.der(x) for x in roots], "bundle: old + new root"
    new = new[0]
    # the agent switches signing once every proxy ACKed the bundle (we did)
    h.wait_for(lambda: agent.events("ca_rotation_activated", since), 12,
               what="ca_rotation_activated in the agent log")
    der, key = ah.make_csr(ME)
    s.csr(der, 2)
    sv = None
    while sv is None:
        msg = s.recv(5)
        log.append(msg)
        if msg.WhichOneof("msg") == "bundle":
            s.ack(KIND.RESOURCE_KIND_BUNDLE, msg.bundle.version)
        elif msg.WhichOneof("msg") == "svid":
            sv = msg.svid
    chain = [cert(x) for x in sv.cert_chain_der]
    assert ah.uri_sans(chain[0]) == [ME]
    assert ah.chain_verifies(chain, [new]), "SVID after the activation not signed by the new root"
    assert not ah.chain_verifies(chain, [old]), "SVID after the activation verifies with old root"
    bundles = [x.bundle for x in log if x.WhichOneof("msg") == "bundle"]
    assert bundles and ah.der(new) in bundles[-1].roots_der, \
        "the last Bundle before the new SVID lacks the new root"
    assert all(len(x.roots_der) >= 1 for x in bundles)
    # Workload API: both roots in the bundle, new SVIDs from the new root
    with ah.channel(agent.sock) as ch:
        wb = ah.certs_from_concat(ah.fetch_x509bundles(ch, pb).bundles["spiffe://" + ah.TD])
        wsv = ah.fetch_x509svid(ch, pb).svids[0]
    assert sorted(ah.der(x) for x in wb) == sorted([ah.der(old), ah.der(new)])
    assert ah.chain_verifies(ah.certs_from_concat(wsv.x509_svid), [new])
    # a stream opened now gets the 2-root bundle before its first SVID
    with ah.channel(agent.sock) as ch:
        s2 = ah.MeshStream(ch, pb)
        try:
            s2.hello()
            s2.csr(ah.make_csr(None)[0], 1)
            seen = []
            sv2 = s2.recv_kind("svid", 5, seen).svid
        finally:
            s2.close()
    first_bundles = [x.bundle for x in seen if x.WhichOneof("msg") == "bundle"]
    assert first_bundles and ah.der(new) in first_bundles[0].roots_der
    assert ah.chain_verifies([cert(x) for x in sv2.cert_chain_der], [new])


@r.test
def agent_stops_cleanly():
    stream["s"].close()
    stream["ch"].close()
    assert agent.stop(15) == 0, "ward-agent exit status %s" % agent.proc.returncode
    rep = ah.sanitizer_reports(agent)
    assert not rep, "sanitizer reports: %r" % rep[:10]


r.finish()
