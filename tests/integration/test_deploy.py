#!/usr/bin/python3
"""deploy/: the kustomize overlays, the sidecar template and the Dockerfiles, checked against the
real binaries.

For each overlay (deploy/overlays/*), in a copy of deploy/ whose cluster/ inputs are made by
deploy/make-cluster-inputs (a dev CA) and a test JWKS:
- `kubectl kustomize` succeeds; every object has apiVersion, kind, metadata.name and lives in
  ward-system; every Secret/ConfigMap the agent mounts is in the output;
- the agent Deployment: non-root, read-only root filesystem, no privilege escalation, every
  capability dropped, RuntimeDefault seccomp, requests + limits, readiness (/ready) and liveness
  (/live) on the port of its --admin, the CA Secret mounted with defaultMode 0400 and an fsGroup
  that lets the non-root agent read it; the Service targets the TLS port; RBAC grants nothing;
- the policy ConfigMap passes `wardctl policy check`;
- every --flag of the agent's args is in `ward-agent --help`; and the agent really starts with
  those args (volumes laid out the way the kubelet does, as the Deployment's UID) and gets ready;
- a sidecar with the template's ward-proxy args (its UID, token, bundle, agent id) gets its SVID
  from that agent (only the agent's address is rewritten to the test agent's: see below).
The sidecar template (deploy/sidecar/ward-sidecar.yaml): a native sidecar (init container with
restartPolicy Always) running as 1337, projected token with audience "ward", probes on /ready,
Prometheus annotations, the iptables init container first with exactly NET_ADMIN + NET_RAW, every
--flag in the binaries' --help, ward-iptables accepting its arguments (--dry-run), ports and UIDs
consistent between the init container, the proxy, the Service and the probes; transparent capture
(every inbound port and all outbound traffic to the proxy's --capture-inbound/--capture-outbound,
no app port placeholder, WARD_POD_IP from the downward API).
deploy/observability (kubectl kustomize): two PodMonitors and the Grafana dashboard as a labelled
ConfigMap; the sidecars' PodMonitor selects the template's label in every namespace on the named
port of its --admin (exempt from capture, same path as the annotations), the agent's selects the
Deployment's pods on its --admin port, which its annotations name and its NetworkPolicy admits.
The admission webhook (deploy/base/webhook.yaml): Fail, no side effects, v1 reviews, Pod CREATE
only, the ward-system namespace and opted-out pods excluded, clientConfig naming the Service port
that reaches the agent's --webhook-listen, a caBundle that verifies the serving certificate of the
ward-webhook-tls Secret for the Service's DNS name; and the agent started with the rendered args
answers a real AdmissionReview over that TLS (checked with the caBundle and the Service name)
with a patch that injects the overlay's images and keeps the pod's (named) readiness probe port out
of the capture, in arguments ward-iptables accepts.
The Dockerfiles: non-root USERs matching the manifests, runtime packages covering the libraries
the binaries link (ldd + dpkg), the builder running tools/deps.

Needs kubectl (Debian: kubernetes-client, kustomize built in) and python3-yaml (tools/deps).
Environment: WARD_KUBECTL (default: kubectl on PATH), plus harness.py's.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402
import jsonpatch  # noqa: E402
import tokens  # noqa: E402

r = h.Results()
DEPLOY = os.path.join(h.REPO, "deploy")
SIDECAR = os.path.join(DEPLOY, "sidecar", "ward-sidecar.yaml")
IPTABLES = os.path.join(DEPLOY, "init", "ward-iptables")
WARDCTL = os.path.join(h.BUILD_DIR, "tools", "wardctl")
KUBECTL = os.environ.get("WARD_KUBECTL") or shutil.which("kubectl")
NAMESPACE = "ward-system"
IS_ROOT = os.geteuid() == 0

try:
    import yaml
except ImportError:  # pragma: no cover - reported as a failure below
    yaml = None


def require():
    problems = []
    if yaml is None:
        problems.append("python3-yaml is not installed (apt-get install python3-yaml)")
    if not KUBECTL:
        problems.append("kubectl not found (apt-get install kubernetes-client, or WARD_KUBECTL)")
    for p in (h.PROXY, ah.AGENT, WARDCTL):
        if not os.path.exists(p):
            problems.append("binary not found: %s" % p)
    if problems:
        for p in problems:
            print(p)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)


require()


# --------------------------------------------------------------------------- helpers

# ctest sets WARD_AGENT / WARD_PROXY to the binaries' paths, which ward-proxy would read as its
# own WARD_AGENT option: children get the environment without WARD_* (as harness.Proxy does).
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}


def sh(args, timeout=60, env=None):
    p = subprocess.run(args, capture_output=True, timeout=h.T(timeout),
                       env=CLEAN_ENV if env is None else env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


_HELP = {}


def help_flags(binary):
    """The --long-flags a binary's --help mentions."""
    if binary not in _HELP:
        rc, out, err = sh([binary, "--help"], timeout=10)
        assert rc == 0, "%s --help: exit %d %s" % (binary, rc, err)
        _HELP[binary] = set(re.findall(r"--[a-z][a-z0-9-]*", out + err))
    return _HELP[binary]


def parse_args(args):
    """[(flag, value)] from ['--a', 'x', '--b=y', ...]; a flag followed by another flag has no
    value (None)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        assert a.startswith("--"), "argument %r is not a --flag (position %d of %s)" % (a, i, args)
        if "=" in a:
            f, v = a.split("=", 1)
            out.append((f, v))
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append((a, args[i + 1]))
            i += 2
        else:
            out.append((a, None))
            i += 1
    return out


def flag(args, name):
    vals = [v for f, v in parse_args(args) if f == name]
    assert len(vals) == 1, "%s given %d times in %s" % (name, len(vals), args)
    return vals[0]


# The downward API fields a container's env may name (fieldRef), with the values a test pod has.
DOWNWARD = {"metadata.name": "test-pod", "metadata.namespace": "demo",
            "metadata.uid": "0f1e2d3c-0000-4000-8000-000000000001", "spec.nodeName": "node-1",
            "spec.serviceAccountName": "backend", "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1", "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1"}


def opt_flag(args, name):
    """The value of a flag given at most once (None when absent)."""
    vals = [v for f, v in parse_args(args) if f == name]
    assert len(vals) <= 1, "%s given %d times in %s" % (name, len(vals), args)
    return vals[0] if vals else None


def resolve_env(container, configmaps):
    """The container's environment as the kubelet builds it (value / configMapKeyRef / a
    fieldRef of the downward API)."""
    env = {}
    for e in container.get("env", []) or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
            fp = e["valueFrom"]["fieldRef"].get("fieldPath")
            assert fp in DOWNWARD, "env %s: fieldRef %r is not a downward API field" % (
                e["name"], fp)
            env[e["name"]] = DOWNWARD[fp]
        elif "valueFrom" in e:
            ref = e["valueFrom"].get("configMapKeyRef")
            assert ref, "env %s: only configMapKeyRef and fieldRef are supported here: %s" % (
                e["name"], e)
            cm = configmaps.get(ref["name"])
            assert cm is not None, "env %s: ConfigMap %s is not in the output" % (e["name"],
                                                                                 ref["name"])
            assert ref["key"] in cm.get("data", {}), "env %s: ConfigMap %s has no key %s" % (
                e["name"], ref["name"], ref["key"])
            env[e["name"]] = cm["data"][ref["key"]]
        else:
            env[e["name"]] = ""
    return env


def expand(args, env):
    """Kubernetes $(VAR) expansion in args; an unknown $(VAR) is an error here."""
    def one(a):
        def sub(m):
            assert m.group(1) in env, "argument %r uses $(%s), which the container does not " \
                "define" % (a, m.group(1))
            return env[m.group(1)]
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a)
    return [one(str(a)) for a in args]


def addr_port(v):
    return int(v.rsplit(":", 1)[1])


def container(pod_spec, name, init=False):
    cs = pod_spec.get("initContainers" if init else "containers") or []
    for c in cs:
        if c.get("name") == name:
            return c
    raise AssertionError("no %scontainer %s in %s" % ("init " if init else "", name,
                                                     [c.get("name") for c in cs]))


def volume_for(pod_spec, c, path):
    """(volume, mount) of the mount of container c that holds path (a file or the dir itself)."""
    best = None
    for m in c.get("volumeMounts", []) or []:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    assert best is not None, "%s: no volume mounted at %s (mounts: %s)" % (
        c["name"], path, [m["mountPath"] for m in c.get("volumeMounts", [])])
    for v in pod_spec.get("volumes", []) or []:
        if v["name"] == best["name"]:
            return v, best
    raise AssertionError("%s: volume %s mounted at %s is not declared" % (c["name"], best["name"],
                                                                        best["mountPath"]))


def assert_hardened(c, what, uid=None):
    sc = c.get("securityContext") or {}
    assert sc.get("allowPrivilegeEscalation") is False, "%s: allowPrivilegeEscalation must be " \
        "false: %s" % (what, sc)
    assert sc.get("readOnlyRootFilesystem") is True, "%s: readOnlyRootFilesystem: %s" % (what, sc)
    assert not sc.get("privileged"), "%s: privileged" % what
    caps = sc.get("capabilities") or {}
    assert caps.get("drop") == ["ALL"], "%s: capabilities.drop must be [ALL]: %s" % (what, caps)
    assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", \
        "%s: seccompProfile RuntimeDefault: %s" % (what, sc)
    if uid is not None:
        assert sc.get("runAsUser") == uid, "%s: runAsUser %s, want %s" % (what, sc.get("runAsUser"),
                                                                         uid)
    return sc


def assert_resources(c, what):
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for k in ("cpu", "memory"):
            assert (res.get(kind) or {}).get(k), "%s: resources.%s.%s missing: %s" % (what, kind,
                                                                                      k, res)


def assert_http_probe(c, probe, path, port, what):
    p = c.get(probe)
    assert p, "%s: no %s" % (what, probe)
    g = p.get("httpGet") or {}
    assert g.get("path") == path, "%s: %s path %r, want %r" % (what, probe, g.get("path"), path)
    pp = g.get("port")
    if isinstance(pp, str):  # a named port
        named = {x.get("name"): x.get("containerPort") for x in c.get("ports", []) or []}
        assert pp in named, "%s: %s port %r is not a named port of the container" % (what, probe,
                                                                                    pp)
        pp = named[pp]
    assert pp == port, "%s: %s on port %s, but the admin listener is on %s" % (what, probe, pp,
                                                                               port)


def kubelet_volume(d, files, mode, gid):
    """Lay out files the way the kubelet does for a Secret/ConfigMap volume: a timestamped dir,
    ..data -> it, NAME -> ..data/NAME. With an fsGroup (gid) the files get that group and g+r."""
    os.makedirs(d, exist_ok=True)
    ts = os.path.join(d, "..2026_01_01_00_00_00.000000001")
    os.mkdir(ts, 0o755)
    for k, v in files.items():
        p = os.path.join(ts, k)
        with open(p, "wb") as f:
            f.write(v)
        m = mode
        if gid is not None:
            m |= 0o440
            if IS_ROOT:
                os.chown(p, 0, gid)
        os.chmod(p, m)
    os.symlink(os.path.basename(ts), os.path.join(d, "..data"))
    for k in files:
        os.symlink(os.path.join("..data", k), os.path.join(d, k))
    os.chmod(d, 0o755)


def world_traversable(path):
    """Make every directory from the temp root down to path traversable by other UIDs."""
    p = path
    while p and p != "/" and p.startswith(tempfile_root()):
        if os.path.isdir(p):
            os.chmod(p, os.stat(p).st_mode | 0o755)
        p = os.path.dirname(p)


def tempfile_root():
    import tempfile
    return tempfile.gettempdir()


# --------------------------------------------------------------------------- the rendered tree

class Render:
    """One overlay's `kubectl kustomize` output, indexed."""

    def __init__(self, name, docs):
        self.name = name
        self.docs = docs
        self.by = {}
        for d in docs:
            self.by[(d.get("kind"), (d.get("metadata") or {}).get("name"))] = d

    def get(self, kind, name):
        o = self.by.get((kind, name))
        assert o is not None, "%s: no %s %s in the output (have: %s)" % (
            self.name, kind, name, sorted("%s/%s" % k for k in self.by))
        return o

    def configmaps(self):
        return {n: o for (k, n), o in self.by.items() if k == "ConfigMap"}


TREE = None
ISSUER_KEY = None
RENDERS = {}
OVERLAYS = sorted(d for d in os.listdir(os.path.join(DEPLOY, "overlays"))
                  if os.path.isfile(os.path.join(DEPLOY, "overlays", d, "kustomization.yaml")))


WEBHOOK_DNS = "ward-agent.%s.svc" % NAMESPACE


def serving_cert(dns_names, days=1):
    """(ca_cert, leaf_cert, leaf_key) of a fresh CA and a server certificate for dns_names."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test webhook CA"))
          .issuer_name(name("test webhook CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(dns_names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns_names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca, leaf, key


def write_webhook_inputs(out):
    """make-cluster-inputs' webhook files, without openssl."""
    import certs
    ca, leaf, key = serving_cert([WEBHOOK_DNS])
    certs.write_cert(os.path.join(out, "webhook-ca.crt"), ca)
    certs.write_cert(os.path.join(out, "webhook.crt"), leaf)
    certs.write_key(os.path.join(out, "webhook.key"), key)
    bundle = base64.b64encode(certs.cert_pem(ca)).decode()
    with open(os.path.join(out, "webhook-ca-patch.yaml"), "w") as f:
        for i in (0, 1):
            f.write("- op: add\n  path: /webhooks/%d/clientConfig/caBundle\n  value: %s\n"
                    % (i, bundle))


@r.test
def prepare_cluster_inputs():
    """A copy of deploy/ with each overlay's cluster/ filled: a dev CA by make-cluster-inputs
    (openssl) and a test JWKS whose key signs the tokens below."""
    global TREE, ISSUER_KEY
    from cryptography.hazmat.primitives.asymmetric import rsa
    tmp = h.mkdtemp(prefix="ward-deploy-")
    TREE = os.path.join(tmp, "deploy")
    shutil.copytree(DEPLOY, TREE, symlinks=True,
                    ignore=lambda d, names: [n for n in names if os.path.basename(d) == "cluster"
                                             and n not in (".gitignore", "README.md")])
    ISSUER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = os.path.join(tmp, "jwks.json")
    with open(jwks, "w") as f:
        json.dump({"keys": [tokens.jwk_rsa(ISSUER_KEY, "test-1")]}, f)
    assert OVERLAYS, "no overlay in deploy/overlays"
    for o in OVERLAYS:
        out = os.path.join(TREE, "overlays", o, "cluster")
        if shutil.which("openssl"):
            rc, so, se = sh([os.path.join(DEPLOY, "make-cluster-inputs"), "--out", out,
                             "--dev-ca", "--jwks", jwks, "--force"])
            assert rc == 0, "make-cluster-inputs: exit %d\n%s%s" % (rc, so, se)
        else:  # same shape with the test CA helpers
            import certs
            root = certs.mint("test root", ["spiffe://cluster.local"], is_ca=True)
            inter = certs.mint("test intermediate", is_ca=True, issuer=root, path_len=0)
            certs.write_cert(os.path.join(out, "ca.crt"), [inter[0], root[0]])
            certs.write_key(os.path.join(out, "ca.key"), inter[1])
            certs.write_cert(os.path.join(out, "root.crt"), root[0])
            shutil.copy(jwks, os.path.join(out, "jwks.json"))
            write_webhook_inputs(out)
        for f in ("ca.crt", "ca.key", "root.crt", "jwks.json", "webhook.crt", "webhook.key",
                  "webhook-ca.crt", "webhook-ca-patch.yaml"):
            assert os.path.exists(os.path.join(out, f)), "%s/%s missing" % (out, f)
    # make-cluster-inputs refuses to overwrite, and rejects bad arguments with exit 2
    rc, so, se = sh([os.path.join(DEPLOY, "make-cluster-inputs"), "--out", out, "--dev-ca",
                     "--jwks", jwks])
    assert rc == 1 and "exists" in se, (rc, so, se)
    rc, so, se = sh([os.path.join(DEPLOY, "make-cluster-inputs"), "--out", out, "--jwks", jwks])
    assert rc == 2, (rc, so, se)


def render(o):
    rc, out, err = sh([KUBECTL, "kustomize", os.path.join(TREE, "overlays", o)], timeout=120)
    assert rc == 0, "kubectl kustomize overlays/%s: exit %d\n%s" % (o, rc, err)
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    assert docs, "overlays/%s renders nothing" % o
    RENDERS[o] = Render(o, docs)


for _o in OVERLAYS:
    r.run("kustomize_%s" % _o, render, _o)


def overlay(o):
    if o not in RENDERS:
        raise h.SkipTest("overlays/%s did not render" % o)
    return RENDERS[o]


# --------------------------------------------------------------------------- per overlay

def check_objects(o):
    R = overlay(o)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                      "PriorityClass", "CustomResourceDefinition"}
    for d in R.docs:
        assert isinstance(d, dict), "not a mapping: %r" % (d,)
        for k in ("apiVersion", "kind"):
            assert isinstance(d.get(k), str) and d[k], "object without %s: %s" % (k, d)
        md = d.get("metadata") or {}
        assert isinstance(md.get("name"), str) and md["name"], "object without metadata.name: " \
            "%s" % d
        if d["kind"] not in cluster_scoped:
            assert md.get("namespace") == NAMESPACE, "%s/%s is in namespace %r, want %s" % (
                d["kind"], md["name"], md.get("namespace"), NAMESPACE)
    for kind, name in (("Namespace", NAMESPACE), ("ServiceAccount", "ward-agent"),
                       ("Role", "ward-agent"), ("RoleBinding", "ward-agent"),
                       ("Deployment", "ward-agent"), ("Service", "ward-agent"),
                       ("Secret", "ward-ca"), ("ConfigMap", "ward-policies"),
                       ("ConfigMap", "ward-jwks"), ("ConfigMap", "ward-agent-bundle"),
                       ("ConfigMap", "ward-agent-config"), ("Secret", "ward-webhook-tls"),
                       ("MutatingWebhookConfiguration", "ward-sidecar-injector")):
        R.get(kind, name)
    for name in ("ward-ca", "ward-webhook-tls"):
        sec = R.get("Secret", name)
        assert sec.get("type") == "kubernetes.io/tls", (name, sec.get("type"))
        assert set(sec.get("data", {})) == {"tls.crt", "tls.key"}, (name,
                                                                     sorted(sec.get("data", {})))


def agent_pod(R):
    dep = R.get("Deployment", "ward-agent")
    spec = dep["spec"]["template"]["spec"]
    return dep, spec, container(spec, "ward-agent")


def agent_args(R):
    dep, spec, c = agent_pod(R)
    return expand(c.get("args", []) or [], resolve_env(c, R.configmaps()))


def check_agent_deployment(o):
    R = overlay(o)
    dep, spec, c = agent_pod(R)
    psc = spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, "pod runAsNonRoot: %s" % psc
    assert psc.get("runAsUser") not in (None, 0), "pod runAsUser must be a non-zero UID: %s" % psc
    assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", psc
    sc = assert_hardened(c, "ward-agent", uid=psc["runAsUser"])
    assert sc.get("runAsNonRoot") is True, sc
    assert not (sc.get("capabilities") or {}).get("add"), "the agent adds capabilities: %s" % sc
    assert spec.get("automountServiceAccountToken") is False, \
        "the agent makes no API call: automountServiceAccountToken must be false"
    assert spec.get("serviceAccountName") == "ward-agent"
    assert_resources(c, "ward-agent")
    args = agent_args(R)
    admin = flag(args, "--admin")
    assert not admin.startswith("127.") and admin != "off", "--admin %s: the kubelet probes the " \
        "pod IP" % admin
    assert_http_probe(c, "readinessProbe", "/ready", addr_port(admin), "ward-agent")
    assert_http_probe(c, "livenessProbe", "/live", addr_port(admin), "ward-agent")
    # the CA: operator intermediate in a Secret, 0400, readable by the agent through fsGroup
    for f in ("--ca-cert", "--ca-key"):
        v, m = volume_for(spec, c, flag(args, f))
        assert "secret" in v, "%s %s is not on a Secret volume: %s" % (f, flag(args, f), v)
        sec = R.get("Secret", v["secret"]["secretName"])
        assert os.path.basename(flag(args, f)) in sec.get("data", {}), \
            "%s: Secret %s has no key %s" % (f, sec["metadata"]["name"], os.path.basename(
                flag(args, f)))
        assert v["secret"].get("defaultMode") == 0o400, "CA Secret defaultMode %r, want 0400 " \
            "(256)" % v["secret"].get("defaultMode")
        assert m.get("readOnly") is True, m
    assert psc.get("fsGroup") is not None, "a 0400 Secret is root's: the non-root agent needs " \
        "an fsGroup to read its CA key"
    # the other files
    v, m = volume_for(spec, c, flag(args, "--jwks"))
    cm = R.get("ConfigMap", v["configMap"]["name"])
    jw = json.loads(cm["data"][os.path.basename(flag(args, "--jwks"))])
    assert jw.get("keys"), "the JWKS ConfigMap has no keys"
    v, m = volume_for(spec, c, flag(args, "--policy-dir"))
    assert v.get("configMap", {}).get("name") == "ward-policies", v
    assert m["mountPath"].rstrip("/") == flag(args, "--policy-dir").rstrip("/"), m
    v, m = volume_for(spec, c, os.path.dirname(flag(args, "--listen")))
    assert "emptyDir" in v, "the Unix socket dir must be a pod-private emptyDir: %s" % v
    assert flag(args, "--token-audience") == "ward", flag(args, "--token-audience")
    # every mount is writable only where it must be (root fs is read-only)
    for m in c.get("volumeMounts", []):
        vol = [x for x in spec["volumes"] if x["name"] == m["name"]][0]
        if "emptyDir" not in vol:
            assert m.get("readOnly") is True, "mount %s should be readOnly" % m["mountPath"]


def check_agent_flags(o):
    args = agent_args(overlay(o))
    known = help_flags(ah.AGENT)
    for f, v in parse_args(args):
        assert f in known, "ward-agent has no flag %s (used in overlays/%s)" % (f, o)


def check_service_rbac(o):
    R = overlay(o)
    dep, spec, c = agent_pod(R)
    svc = R.get("Service", "ward-agent")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for k, v in svc["spec"]["selector"].items():
        assert labels.get(k) == v, "Service selector %s=%s does not select the agent pods" % (k, v)
    for k, v in dep["spec"]["selector"]["matchLabels"].items():
        assert labels.get(k) == v
    tls = addr_port(flag(agent_args(R), "--listen-tls"))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    sp = [p for p in svc["spec"]["ports"] if p["port"] == 15012]
    assert sp, "the Service does not publish 15012: %s" % svc["spec"]["ports"]
    tp = sp[0].get("targetPort", 15012)
    assert (ports.get(tp) if isinstance(tp, str) else tp) == tls, \
        "Service 15012 -> %r, but the agent's --listen-tls is on %d" % (tp, tls)
    # RBAC: the agent calls no API; nothing cluster-wide, nothing granted
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert not [d for d in R.docs if d["kind"] == kind], "%s in the output" % kind
    role = R.get("Role", "ward-agent")
    assert (role.get("rules") or []) == [], "the agent needs no permission; Role rules: %s" % (
        role.get("rules"))
    rb = R.get("RoleBinding", "ward-agent")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "ward-agent"}, rb["roleRef"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "ward-agent",
                               "namespace": NAMESPACE}], rb["subjects"]
    sa = R.get("ServiceAccount", "ward-agent")
    assert sa.get("automountServiceAccountToken") is False, sa


def check_policies(o):
    R = overlay(o)
    cm = R.get("ConfigMap", "ward-policies")
    data = cm.get("data") or {}
    assert data, "the policy ConfigMap is empty"
    d = h.mkdtemp(prefix="ward-policies-")
    for k, v in data.items():
        assert k.endswith((".yaml", ".yml")), "policy key %s: the agent reads *.yaml / *.yml" % k
        with open(os.path.join(d, k), "w") as f:
            f.write(v)
    rc, out, err = sh([WARDCTL, "policy", "check", d], timeout=30)
    assert rc == 0, "wardctl policy check: exit %d\n%s%s" % (rc, out, err)
    n = sum(1 for v in data.values() for doc in yaml.safe_load_all(v)
            if doc and doc.get("kind") == "AuthorizationPolicy")
    assert n >= 1 and ("%d policies valid" % n) in out + err, (n, out, err)


def check_overlay_specifics(o):
    R = overlay(o)
    dep = R.get("Deployment", "ward-agent")
    cfg = R.get("ConfigMap", "ward-agent-config")["data"]
    if o == "production":
        assert dep["spec"]["replicas"] >= 2, "production runs >= 2 agents"
        pdb = R.get("PodDisruptionBudget", "ward-agent")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
        assert cfg["LOG_LEVEL"] == "info"
    if o == "dev":
        assert dep["spec"]["replicas"] == 1
        assert cfg["LOG_LEVEL"] == "debug"


# -- the agent, started with the rendered args

AGENTS = {}
WEBHOOKS = {}  # overlay -> the loopback port of the started agent's --webhook-listen


def materialize(R, spec, c, root, gid):
    """Create every volume of container c under root, as the kubelet would; returns
    {mountPath: host dir}."""
    where = {}
    for m in c.get("volumeMounts", []) or []:
        vol = [v for v in spec["volumes"] if v["name"] == m["name"]][0]
        d = os.path.join(root, m["mountPath"].lstrip("/"))
        if "secret" in vol:
            s = R.get("Secret", vol["secret"]["secretName"])
            files = {k: base64.b64decode(v) for k, v in s.get("data", {}).items()}
            kubelet_volume(d, files, vol["secret"].get("defaultMode", 0o644), gid)
        elif "configMap" in vol:
            cm = R.get("ConfigMap", vol["configMap"]["name"])
            files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
            kubelet_volume(d, files, vol["configMap"].get("defaultMode", 0o644), gid)
        elif "emptyDir" in vol:
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o777)
        else:
            raise AssertionError("volume %s: unexpected source %s" % (vol["name"], vol))
        world_traversable(d)
        where[m["mountPath"].rstrip("/")] = d
    return where


def remap(args, where, ports):
    """Rewrite file paths into the materialized volumes and listen addresses to loopback."""
    out = []
    for f, v in parse_args(args):
        if v is not None:
            for mp, d in sorted(where.items(), key=lambda x: -len(x[0])):
                if v == mp or v.startswith(mp + "/"):
                    v = d + v[len(mp):]
                    break
            if f in ports:
                v = ports[f](v)
        out += [f] if v is None else [f, v]
    return out


def start_agent(o):
    R = overlay(o)
    dep, spec, c = agent_pod(R)
    uid = (c.get("securityContext") or {}).get("runAsUser") or spec["securityContext"]["runAsUser"]
    gid = spec["securityContext"].get("fsGroup")
    root = h.mkdtemp(prefix="ward-agent-pod-")
    os.chmod(root, 0o755)
    where = materialize(R, spec, c, root, gid)
    tls_port, admin_port, webhook_port = h.free_port(), h.free_port(), h.free_port()
    args = remap(agent_args(R), where, {
        "--listen-tls": lambda v: "127.0.0.1:%d" % tls_port,
        "--admin": lambda v: "127.0.0.1:%d" % admin_port,
        "--webhook-listen": lambda v: "127.0.0.1:%d" % webhook_port})
    WEBHOOKS[o] = webhook_port
    a = ah.Proc(args, uid=uid if IS_ROOT else None, admin=admin_port, name="ward-agent-" + o,
                binary=ah.AGENT)
    a.start(wait_ready=False)
    cur = h.Results._current  # it outlives this test: the sidecar test uses it
    if cur is not None and a in cur._proxies:
        cur._proxies.remove(a)
    a.wait_ready(20)
    st, _ = a.get("/live")
    assert st == 200, "/live: %d" % st
    AGENTS[o] = (a, tls_port, R)


# -- the sidecar template

def load_sidecar():
    with open(SIDECAR) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1, "ward-sidecar.yaml: want one document, got %d" % len(docs)
    return docs[0]


def proxy_args(pod, env_over=None):
    c = container(pod["spec"], "ward-proxy", init=True)
    env = resolve_env(c, {})
    env.update(env_over or {})
    return c, expand(c.get("args", []) or [], env)


def run_sidecar(o, agent_addr=None, wait=True):
    """ward-proxy with the template's args: files from the overlay's objects, listeners on
    loopback, the token minted for ns demo / sa backend by the test issuer. agent_addr: replace
    --agent (None: keep the template's)."""
    a, tls_port, R = AGENTS[o]
    pod = load_sidecar()
    c, args = proxy_args(pod)
    spec = pod["spec"]
    uid = c["securityContext"]["runAsUser"]
    root = h.mkdtemp(prefix="ward-sidecar-pod-")
    os.chmod(root, 0o755)
    where = {}
    cfg = R.get("ConfigMap", "ward-agent-config")["data"]
    for m in c.get("volumeMounts", []):
        vol = [v for v in spec["volumes"] if v["name"] == m["name"]][0]
        d = os.path.join(root, m["mountPath"].lstrip("/"))
        if "configMap" in vol:
            cm = R.get("ConfigMap", vol["configMap"]["name"])  # from the overlay
            files = {k: v.encode() for k, v in cm["data"].items()}
            kubelet_volume(d, files, vol["configMap"].get("defaultMode", 0o644), None)
        elif "projected" in vol:
            files = {}
            for src in vol["projected"]["sources"]:
                t = src["serviceAccountToken"]
                now = int(time.time())
                claims = tokens.claims(now, ns="demo", sa="backend", iss=cfg["TOKEN_ISSUER"],
                                       aud=[t["audience"]], exp=now + t["expirationSeconds"])
                files[t["path"]] = tokens.sign_rs256(
                    ISSUER_KEY, {"alg": "RS256", "kid": "test-1"}, claims).encode()
            kubelet_volume(d, files, vol["projected"].get("defaultMode", 0o644), None)
        else:
            raise AssertionError("ward-proxy volume %s: unexpected source" % vol["name"])
        world_traversable(d)
        where[m["mountPath"].rstrip("/")] = d
    admin_port, in_port, out_port = h.free_port(), h.free_port(), h.free_port()
    fix = {"--admin": lambda v: "127.0.0.1:%d" % admin_port,
           "--capture-inbound": lambda v: "127.0.0.1:%d" % in_port,
           "--capture-outbound": lambda v: "127.0.0.1:%d" % out_port}
    if agent_addr is not None:
        fix["--agent"] = lambda v: agent_addr
    args = remap(args, where, fix)
    # the template's env too (WARD_POD_IP from the downward API)
    p = ah.Proc(args, uid=uid if IS_ROOT else None, admin=admin_port, name="ward-proxy-" + o,
                env=resolve_env(c, {}))
    p.start(wait_ready=False)
    if wait:
        p.wait_ready(30)
    return p


def check_sidecar_gets_svid(o):
    if o not in AGENTS:
        raise h.SkipTest("the agent of overlays/%s did not start" % o)
    a, tls_port, R = AGENTS[o]
    # The template names the agent by its Service DNS name; the test agent is on loopback.
    p = run_sidecar(o, agent_addr="127.0.0.1:%d" % tls_port)
    ah.wait_metric(p, "ward_svid_installed_total", lambda v: v and v >= 1, timeout=10)
    st, _ = p.get("/live")
    assert st == 200
    p.stop()


def check_sidecar_agent_address(o):
    """The template's --agent is the agent Service's DNS name and port. The proxy's parsing of
    HOST:PORT is covered by tests/unit/test_config.c; it is not started here, because resolving
    the name would send a DNS query off this machine."""
    _, args = proxy_args(load_sidecar())
    agent = [a.split("=", 1)[1] if a.startswith("--agent=") else None for a in args]
    vals = [v for v in agent if v] + [args[i + 1] for i, a in enumerate(args)
                                      if a == "--agent" and i + 1 < len(args)]
    assert vals, "the sidecar passes no --agent: %s" % args
    host, _, port = vals[0].rpartition(":")
    assert port == "15012", vals
    assert host in ("ward-agent.%s.svc" % NAMESPACE, "ward-agent.%s.svc.cluster.local" % NAMESPACE), vals


# -- the admission webhook

def check_webhook_config(o):
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID
    R = overlay(o)
    dep, spec, c = agent_pod(R)
    args = agent_args(R)
    cfg = R.get("MutatingWebhookConfiguration", "ward-sidecar-injector")
    hooks = cfg.get("webhooks") or []
    assert len(hooks) == 2, [w.get("name") for w in hooks]
    listen = addr_port(flag(args, "--webhook-listen"))
    svc = R.get("Service", "ward-agent")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    sec = R.get("Secret", "ward-webhook-tls")
    leaf = x509.load_pem_x509_certificate(base64.b64decode(sec["data"]["tls.crt"]))
    for f in ("--webhook-cert", "--webhook-key"):
        v, m = volume_for(spec, c, flag(args, f))
        assert v.get("secret", {}).get("secretName") == "ward-webhook-tls", (f, v)
        assert m.get("readOnly") is True, m
    ns = R.get("Namespace", NAMESPACE)["metadata"].get("labels") or {}
    for w in hooks:
        what = "webhook %s" % w.get("name")
        assert w.get("failurePolicy") == "Fail", what
        assert w.get("sideEffects") == "None", what
        assert w.get("admissionReviewVersions") == ["v1"], what
        assert 1 <= w.get("timeoutSeconds", 10) <= 30, what
        assert w.get("rules") == [{"operations": ["CREATE"], "apiGroups": [""],
                                   "apiVersions": ["v1"], "resources": ["pods"],
                                   "scope": "Namespaced"}], (what, w.get("rules"))
        cc = w["clientConfig"]
        s = cc["service"]
        assert (s["name"], s["namespace"], s["path"]) == ("ward-agent", NAMESPACE, "/inject"), s
        sp = [p for p in svc["spec"]["ports"] if p["port"] == s.get("port", 443)]
        assert sp, "%s: the Service has no port %s" % (what, s.get("port", 443))
        tp = sp[0].get("targetPort")
        assert (ports.get(tp) if isinstance(tp, str) else tp) == listen, \
            "%s: Service port %s -> %r, the agent's --webhook-listen is on %d" % (
                what, sp[0]["port"], tp, listen)
        # the caBundle verifies the serving certificate, which names the Service
        ca = x509.load_pem_x509_certificate(base64.b64decode(cc["caBundle"]))
        ah.verify_signed_by(leaf, ca)
        sans = leaf.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName)
        assert WEBHOOK_DNS in sans, sans
        # never the agent's own namespace; opted-out pods never
        nsel, osel = w.get("namespaceSelector") or {}, w.get("objectSelector") or {}
        assert selects(nsel, ns) is False, "%s selects %s (labels %s)" % (what, NAMESPACE, ns)
        assert selects(osel, {"ward.dev/inject": "disabled"}) is False, what
    by = {w["name"]: w for w in hooks}
    n, obj = by["namespace.inject.ward.dev"], by["object.inject.ward.dev"]
    assert selects(n["namespaceSelector"], {"ward.dev/inject": "enabled"})
    assert selects(n["objectSelector"], {})
    assert not selects(obj["namespaceSelector"], {"ward.dev/inject": "enabled"}), \
        "a pod of an enabled namespace would be sent twice"
    assert selects(obj["namespaceSelector"], {}) and selects(obj["objectSelector"],
                                                             {"ward.dev/inject": "enabled"})
    assert not selects(obj["objectSelector"], {})
    np = R.get("NetworkPolicy", "ward-agent")
    allowed = {p.get("port") for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
    assert listen in allowed, "the NetworkPolicy does not admit the webhook port %d" % listen


def selects(sel, labels):
    """A Kubernetes label selector applied to labels."""
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def check_webhook_serves(o):
    """The agent started with the rendered args answers an AdmissionReview over TLS that the
    caBundle verifies for the Service's name, with a patch injecting the overlay's images."""
    import http.client
    import ssl
    if o not in WEBHOOKS or o not in AGENTS:
        raise h.SkipTest("the agent of overlays/%s did not start" % o)
    R = overlay(o)
    hook = R.get("MutatingWebhookConfiguration", "ward-sidecar-injector")["webhooks"][0]
    ctx = ssl.create_default_context(cadata=base64.b64decode(
        hook["clientConfig"]["caBundle"]).decode())

    class Conn(http.client.HTTPSConnection):  # dial loopback, verify the Service's name
        def connect(self):
            import socket
            sock = socket.create_connection(("127.0.0.1", WEBHOOKS[o]), timeout=10)
            self.sock = ctx.wrap_socket(sock, server_hostname=WEBHOOK_DNS)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "web", "image": "nginx",
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                    "readinessProbe": {"httpGet": {"path": "/",
                                                                   "port": "http"}}}]}}
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "0d3c-%s" % o,
                          "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "namespace": "demo", "operation": "CREATE", "object": pod}}
    conn = Conn(WEBHOOK_DNS, 443, timeout=10)
    conn.request("POST", hook["clientConfig"]["service"]["path"] + "?timeout=10s",
                 body=json.dumps(review), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, (resp.status, body)
    out = json.loads(body)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview", out
    r_ = out["response"]
    assert r_["uid"] == review["request"]["uid"] and r_["allowed"] is True, r_
    assert r_["patchType"] == "JSONPatch", r_
    injected = jsonpatch.apply(pod, json.loads(base64.b64decode(r_["patch"])))
    inits = injected["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["ward-init", "ward-proxy"], inits
    cfg = R.get("ConfigMap", "ward-agent-config")["data"]
    assert inits[0]["image"] == cfg["INIT_IMAGE"], (inits[0]["image"], cfg["INIT_IMAGE"])
    assert inits[1]["image"] == cfg["PROXY_IMAGE"], (inits[1]["image"], cfg["PROXY_IMAGE"])
    _, pargs = proxy_args({"spec": injected["spec"]})
    assert flag(pargs, "--agent-id") == "spiffe://%s/ward/agent" % cfg["TRUST_DOMAIN"], pargs
    assert injected["metadata"]["annotations"]["ward.dev/status"] == "injected"
    # the kubelet's probe (plaintext from the node) bypasses the proxy: ward-iptables takes the
    # injected arguments and returns that port before the inbound redirect
    iargs = expand(inits[0].get("args", []), resolve_env(inits[0], {}))
    assert flag(iargs, "--exclude-inbound-ports") == "8080", iargs
    rc, out, err = sh([IPTABLES, "--dry-run"] + iargs, timeout=20)
    assert rc == 0, "ward-iptables rejects the injected arguments: %s" % err
    assert "-A WARD_INBOUND -p tcp --dport 8080 -j RETURN" in out, out


for _o in OVERLAYS:
    r.run("objects_%s" % _o, check_objects, _o)
    r.run("agent_deployment_%s" % _o, check_agent_deployment, _o)
    r.run("agent_flags_in_help_%s" % _o, check_agent_flags, _o)
    r.run("service_and_rbac_%s" % _o, check_service_rbac, _o)
    r.run("policies_valid_%s" % _o, check_policies, _o)
    r.run("overlay_specifics_%s" % _o, check_overlay_specifics, _o)
    r.run("agent_starts_with_manifest_args_%s" % _o, start_agent, _o)
    r.run("webhook_config_%s" % _o, check_webhook_config, _o)
    r.run("webhook_serves_%s" % _o, check_webhook_serves, _o)
    r.run("sidecar_gets_svid_%s" % _o, check_sidecar_gets_svid, _o)
    r.run("sidecar_agent_address_%s" % _o, check_sidecar_agent_address, _o)
    if _o in AGENTS:
        AGENTS[_o][0].stop()


# --------------------------------------------------------------------------- sidecar template

@r.test
def sidecar_template():
    pod = load_sidecar()
    spec = pod["spec"]
    inits = spec.get("initContainers") or []
    names = [c.get("name") for c in inits]
    assert names[:2] == ["ward-init", "ward-proxy"], "init containers %s: ward-init must run " \
        "first, then ward-proxy" % names
    assert not spec.get("containers"), "the template adds no regular container"
    # ward-proxy: a native sidecar, UID 1337, hardened, probes on its admin /ready
    c, args = proxy_args(pod)
    assert c.get("restartPolicy") == "Always", "ward-proxy must be a native sidecar " \
        "(restartPolicy: Always in initContainers)"
    sc = assert_hardened(c, "ward-proxy", uid=1337)
    assert sc.get("runAsNonRoot") is True, sc
    assert not (sc.get("capabilities") or {}).get("add"), sc
    assert_resources(c, "ward-proxy")
    admin = flag(args, "--admin")
    assert not admin.startswith("127."), "--admin %s: the kubelet probes the pod IP" % admin
    aport = addr_port(admin)
    assert_http_probe(c, "startupProbe", "/ready", aport, "ward-proxy")
    assert_http_probe(c, "readinessProbe", "/ready", aport, "ward-proxy")
    ann = pod["metadata"].get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true", ann
    assert ann.get("prometheus.io/port") == str(aport), ann
    assert ann.get("prometheus.io/path") == "/metrics", ann
    # agent over TLS, with a projected token for audience "ward"
    agent = flag(args, "--agent")
    assert not agent.startswith("unix:"), "sidecars in other pods reach the agent over TLS"
    host, port = agent.rsplit(":", 1)
    assert host in ("ward-agent.%s.svc" % NAMESPACE, "ward-agent.%s.svc.cluster.local" % NAMESPACE), \
        "--agent %s is not the agent's Service" % agent
    assert int(port) == 15012, agent
    assert flag(args, "--agent-id") == "spiffe://cluster.local/ward/agent", flag(args, "--agent-id")
    tok = flag(args, "--agent-token-file")
    v, m = volume_for(spec, c, tok)
    srcs = (v.get("projected") or {}).get("sources") or []
    sat = [s["serviceAccountToken"] for s in srcs if "serviceAccountToken" in s]
    assert len(sat) == 1, "--agent-token-file %s is not a projected serviceAccountToken: %s" % (
        tok, v)
    assert sat[0].get("audience") == "ward", sat[0]
    assert sat[0].get("expirationSeconds") == 3600, sat[0]
    assert os.path.join(m["mountPath"], sat[0]["path"]) == tok, (m, sat[0], tok)
    bundle = flag(args, "--agent-bundle")
    v, m = volume_for(spec, c, bundle)
    assert v.get("configMap", {}).get("name") == "ward-agent-bundle", v
    for o, R in RENDERS.items():  # the overlays provide that ConfigMap with that key
        cm = R.get("ConfigMap", "ward-agent-bundle")
        assert os.path.basename(bundle) in cm.get("data", {}), (o, sorted(cm.get("data", {})))
        td = R.get("ConfigMap", "ward-agent-config")["data"]["TRUST_DOMAIN"]
        assert flag(args, "--agent-id") == "spiffe://%s/ward/agent" % td, (o, td)
    for mnt in c.get("volumeMounts", []):
        assert mnt.get("readOnly") is True, mnt
    # ward-init: root with NET_ADMIN + NET_RAW only
    i = container(spec, "ward-init", init=True)
    assert not i.get("restartPolicy"), "ward-init runs once"
    isc = assert_hardened(i, "ward-init", uid=0)
    assert isc.get("runAsNonRoot") is False, "ward-init is root: runAsNonRoot must say false"
    assert sorted(isc["capabilities"].get("add") or []) == ["NET_ADMIN", "NET_RAW"], isc
    assert_resources(i, "ward-init")
    cmd = i.get("command") or []
    assert cmd and os.path.basename(cmd[0]) == "ward-iptables", cmd
    iargs = expand(i.get("args", []), resolve_env(i, {}))
    # the same ports and UID everywhere
    assert int(flag(iargs, "--proxy-uid")) == sc["runAsUser"], "--proxy-uid vs the proxy's UID"
    assert int(flag(iargs, "--admin-port")) == aport, "--admin-port vs the proxy's --admin"
    assert int(flag(iargs, "--agent-port")) == int(port), "--agent-port vs the proxy's --agent"
    # transparent capture: ward-init redirects to the proxy's two transparent listeners, which
    # take each connection's original destination (no app port, no explicit mapping)
    assert opt_flag(args, "--inbound") is None, "ward-proxy maps an app port explicitly: %s" % args
    # one listener per address family (IPv4 first; IPv6 is skipped where the pod has none)
    cins = [v for f, v in parse_args(args) if f == "--capture-inbound"]
    couts = [v for f, v in parse_args(args) if f == "--capture-outbound"]
    assert len(cins) == 2 and len(couts) == 2, args
    assert cins[1].startswith("[::]:") and couts[1].startswith("[::1]:"), (cins, couts)
    cin, cout = cins[0], couts[0]
    for v in cins:
        assert int(flag(iargs, "--inbound-port")) == addr_port(v), \
            "--inbound-port vs the proxy's --capture-inbound %s" % v
    for v in couts:
        assert int(flag(iargs, "--outbound-port")) == addr_port(v), \
            "--outbound-port vs the proxy's --capture-outbound %s" % v
    # inbound is redirected (PREROUTING) to the pod's address, outbound (OUTPUT) to loopback
    assert not cin.startswith("127."), "--capture-inbound %s: inbound arrives on the pod IP" % cin
    assert cout.split(":")[0] in ("127.0.0.1", "0.0.0.0", ""), \
        "--capture-outbound %s: REDIRECT from OUTPUT delivers to 127.0.0.1" % cout
    pports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    assert pports.get("ward-inbound") == addr_port(cin), pports
    # every inbound port and every outbound destination (the script's defaults); the injector
    # adds the pods' probe ports to --exclude-inbound-ports, which the template leaves out
    assert opt_flag(iargs, "--include-inbound-ports") in (None, "*"), iargs
    assert opt_flag(iargs, "--include-outbound-cidrs") in (None, "*"), iargs
    assert opt_flag(iargs, "--exclude-inbound-ports") is None, iargs
    # no placeholder left; the pod's address from the downward API
    for cc in inits[:2]:
        assert "$(" not in json.dumps(cc.get("args", [])), (cc["name"], cc.get("args"))
        assert not any(e["name"] == "WARD_APP_PORT" for e in cc.get("env", []) or []), cc["name"]
    env = {e["name"]: e for e in c.get("env", []) or []}
    assert env.get("WARD_POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get(
        "fieldPath") == "status.podIP", c.get("env")
    rc, out, err = sh([IPTABLES, "--dry-run"] + iargs, timeout=20)
    assert rc == 0, "ward-iptables rejects the template's arguments: %s" % err
    assert "-j REDIRECT --to-ports %s" % flag(iargs, "--inbound-port") in out, out
    assert "-j REDIRECT --to-ports %s" % flag(iargs, "--outbound-port") in out, out
    assert "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT" in out, "not every inbound port: " + out
    assert "-A WARD_OUTBOUND -j WARD_REDIRECT" in out, "not every outbound destination: " + out


@r.test
def sidecar_flags_in_help():
    pod = load_sidecar()
    c, args = proxy_args(pod)
    known = help_flags(h.PROXY)
    for f, v in parse_args(args):
        assert f in known, "ward-proxy has no flag %s (used in deploy/sidecar)" % f
    i = container(pod["spec"], "ward-init", init=True)
    rc, out, err = sh([IPTABLES, "--help"])
    known = set(re.findall(r"--[a-z][a-z0-9-]*", out))
    for f, v in parse_args(i.get("args", [])):
        assert f in known, "ward-iptables has no flag %s" % f


# --------------------------------------------------------------------------- observability

OBS = os.path.join(DEPLOY, "observability")
_OBS_RENDER = []


def observability():
    """`kubectl kustomize deploy/observability` (PodMonitors + the dashboard ConfigMap)."""
    if not _OBS_RENDER:
        rc, out, err = sh([KUBECTL, "kustomize", OBS], timeout=120)
        assert rc == 0, "kubectl kustomize deploy/observability: exit %d\n%s" % (rc, err)
        _OBS_RENDER.append(Render("observability", [d for d in yaml.safe_load_all(out) if d]))
    return _OBS_RENDER[0]


def endpoint_port(c, ep):
    """The containerPort a PodMonitor endpoint's named port resolves to in container c."""
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", []) or []}
    assert ep.get("port") in ports, "PodMonitor port %r is not a named port of %s (%s)" % (
        ep.get("port"), c["name"], sorted(ports))
    return ports[ep["port"]]


@r.test
def observability_kustomization():
    M = observability()
    have = sorted("%s/%s" % k for k in M.by)
    assert have == ["ConfigMap/ward-grafana-dashboard", "PodMonitor/ward-agent",
                    "PodMonitor/ward-proxy"], have
    for d in M.docs:
        assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]
    for name in ("ward-proxy", "ward-agent"):
        assert M.get("PodMonitor", name)["apiVersion"] == "monitoring.coreos.com/v1"
    cm = M.get("ConfigMap", "ward-grafana-dashboard")
    assert (cm["metadata"].get("labels") or {}).get("grafana_dashboard") == "1", cm["metadata"]
    with open(os.path.join(OBS, "grafana-dashboard.json")) as f:
        want = json.load(f)
    assert list(cm.get("data", {})) == ["ward-mesh.json"], sorted(cm.get("data", {}))
    assert json.loads(cm["data"]["ward-mesh.json"]) == want, "the ConfigMap is not the dashboard"
    with open(os.path.join(OBS, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    for g in k.get("configMapGenerator", []):  # kustomize v2.0.3 (Debian's kubectl): none
        assert "options" not in g, "per-generator options: %s" % g


@r.test
def podmonitor_sidecars():
    """The sidecars' PodMonitor selects what the template labels, in any namespace, on the named
    port of the proxy's --admin (the port ward-init exempts from capture, the annotations')."""
    pm = observability().get("PodMonitor", "ward-proxy")["spec"]
    pod = load_sidecar()
    labels = pod["metadata"].get("labels") or {}
    sel = (pm.get("selector") or {}).get("matchLabels") or {}
    assert sel and not pm["selector"].get("matchExpressions"), pm.get("selector")
    for k, v in sel.items():
        assert labels.get(k) == v, "PodMonitor selects %s=%s; the sidecar template labels %s" % (
            k, v, labels)
    assert pm.get("namespaceSelector") == {"any": True}, "meshed pods are in every namespace: " \
        "%s" % pm.get("namespaceSelector")
    c, args = proxy_args(pod)
    aport = addr_port(flag(args, "--admin"))
    eps = pm.get("podMetricsEndpoints") or []
    assert len(eps) == 1, eps
    assert endpoint_port(c, eps[0]) == aport, "PodMonitor port %s is not --admin's %d" % (
        eps[0].get("port"), aport)
    ann = pod["metadata"].get("annotations") or {}
    assert eps[0].get("path", "/metrics") == ann.get("prometheus.io/path"), (eps[0], ann)
    assert eps[0].get("scheme", "http") == "http", "the admin listener is plain HTTP"
    i = container(pod["spec"], "ward-init", init=True)
    iargs = expand(i.get("args", []), resolve_env(i, {}))
    assert int(flag(iargs, "--admin-port")) == aport, "ward-init captures the admin port: " \
        "scrapes would land on the mTLS inbound"


def check_podmonitor_agent(o):
    """The agent's PodMonitor and annotations point at its --admin port, which the NetworkPolicy
    lets in."""
    R = overlay(o)
    pm = observability().get("PodMonitor", "ward-agent")["spec"]
    dep, spec, c = agent_pod(R)
    tpl = dep["spec"]["template"]["metadata"]
    sel = (pm.get("selector") or {}).get("matchLabels") or {}
    assert sel, pm.get("selector")
    for k, v in sel.items():
        assert (tpl.get("labels") or {}).get(k) == v, (sel, tpl.get("labels"))
    assert NAMESPACE in ((pm.get("namespaceSelector") or {}).get("matchNames") or []) or \
        (pm.get("namespaceSelector") or {}).get("any") is True, pm.get("namespaceSelector")
    aport = addr_port(flag(agent_args(R), "--admin"))
    eps = pm.get("podMetricsEndpoints") or []
    assert len(eps) == 1 and endpoint_port(c, eps[0]) == aport, (eps, aport)
    ann = tpl.get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true", ann
    assert ann.get("prometheus.io/port") == str(aport), "annotation port %s, --admin %d" % (
        ann.get("prometheus.io/port"), aport)
    assert ann.get("prometheus.io/path") == eps[0].get("path", "/metrics"), (ann, eps[0])
    np = R.get("NetworkPolicy", "ward-agent")
    allowed = [p.get("port") for rule in np["spec"].get("ingress", []) or []
               for p in rule.get("ports", []) or []]
    assert aport in allowed or "admin" in allowed, "the NetworkPolicy does not let scrapes of " \
        "%d in: %s" % (aport, allowed)


for _o in OVERLAYS:
    r.run("podmonitor_agent_%s" % _o, check_podmonitor_agent, _o)


# --------------------------------------------------------------------------- Dockerfiles

def dockerfile(name):
    with open(os.path.join(DEPLOY, "docker", name)) as f:
        text = f.read().replace("\\\n", " ")
    stages = re.split(r"(?im)^FROM\s", text)[1:]
    assert len(stages) >= 1, name
    return stages


def apt_packages(stage):
    pk = []
    for m in re.finditer(r"apt-get install ([^&\n]*)", stage):
        pk += [w for w in m.group(1).split() if not w.startswith("-")]
    return set(pk)


def linked_packages(binary):
    """Debian packages providing the shared libraries binary links (dpkg -S), minus the base."""
    rc, out, err = sh(["ldd", binary], timeout=30)
    assert rc == 0, err
    pk = set()
    for lib in re.findall(r"=>\s+(\S+)", out):
        if re.search(r"/lib(asan|ubsan|lsan|tsan)\.so", lib):
            continue  # a sanitizer build (tools/test's second pass), not what the image ships
        real = os.path.realpath(lib)
        # usrmerge: dpkg knows /lib/... while ldd may say /usr/lib/... (or the reverse)
        for cand in (lib, real, re.sub(r"^/usr/lib/", "/lib/", real),
                     re.sub(r"^/lib/", "/usr/lib/", real)):
            rc, o2, e2 = sh(["dpkg", "-S", cand], timeout=30)
            if rc == 0:
                pk.add(o2.split(":")[0])
                break
        else:
            raise h.SkipTest("dpkg -S %s failed (not a Debian system?)" % lib)
    return pk - {"libc6", "libgcc-s1", "libstdc++6"}


def check_image(name, binaries, uid):
    stages = dockerfile(name)
    build, final = stages[0], stages[-1]
    assert len(stages) >= 2, "%s: want a builder stage and a runtime stage" % name
    assert "tools/deps" in build and "cmake" in build, "%s: the builder runs tools/deps + cmake" % (
        name)
    assert re.search(r"(?m)^\S+ AS build", build), name
    assert "debian:12" in build.split("\n")[0] or "${DEBIAN}" in build.split("\n")[0], build[:80]
    users = re.findall(r"(?m)^USER\s+(\S+)", final)
    assert users and users[-1].split(":")[0] == str(uid), "%s: USER %s, the manifests run it as " \
        "%d" % (name, users, uid)
    have = apt_packages(final)
    for b in binaries:
        need = linked_packages(b)
        assert need <= have, "%s: runtime stage lacks %s (linked by %s)" % (
            name, sorted(need - have), os.path.basename(b))
        assert "/usr/local/bin/%s" % os.path.basename(b) in final, name
    assert not (have & {"build-essential", "cmake", "gcc", "libuv1-dev"}), "%s: build tools in " \
        "the runtime image: %s" % (name, have)


@r.test
def dockerfile_proxy():
    pod = load_sidecar()
    c = container(pod["spec"], "ward-proxy", init=True)
    check_image("Dockerfile.proxy", [h.PROXY], c["securityContext"]["runAsUser"])
    assert re.search(r'ENTRYPOINT \["/usr/local/bin/ward-proxy"\]', dockerfile("Dockerfile.proxy")[-1])


@r.test
def dockerfile_agent():
    R = next(iter(RENDERS.values()), None)
    if R is None:
        raise h.SkipTest("no overlay rendered")
    dep, spec, c = agent_pod(R)
    check_image("Dockerfile.agent", [ah.AGENT, WARDCTL], spec["securityContext"]["runAsUser"])
    assert re.search(r'ENTRYPOINT \["/usr/local/bin/ward-agent"\]', dockerfile("Dockerfile.agent")[-1])


@r.test
def dockerfile_init():
    final = dockerfile("Dockerfile.init")[-1]
    have = apt_packages(final)
    assert {"iptables", "nftables"} <= have, have
    i = container(load_sidecar()["spec"], "ward-init", init=True)
    dest = i["command"][0]
    assert re.search(r"COPY .*deploy/init/ward-iptables %s\b" % re.escape(dest), final), \
        "Dockerfile.init does not install ward-iptables at %s" % dest


r.finish()
