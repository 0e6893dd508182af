#!/usr/bin/python3
"""Sidecar injection end to end: `wardctl inject` on manifests, and ward-agent's admission webhook
over real HTTPS.

wardctl inject: a Deployment, a CronJob, a multi-document stream of every workload kind plus
objects without pods, a List; the output parses with python3-yaml; each pod template gets
ward-init first, then the ward-proxy native sidecar, then its own init containers, and they equal
deploy/sidecar/ward-sidecar.yaml as python3-yaml reads it (an independent YAML reader); nothing
else changes but ward-init's --exclude-inbound-ports, which gets the ports of the pod's kubelet
probes (httpGet, tcpSocket, grpc; numeric, named, init-container sidecars; merged with the
--exclude-inbound-ports option, ascending, no repeats; no probes: no flag); pods without declared
ports are injected; injecting the output again gives identical bytes; opt-outs, hostNetwork,
-o json, stdin, the options, and the errors (document index, nothing written, exit 1; usage:
exit 2).

The webhook: a real ward-agent with --webhook-listen and a serving certificate minted here; real
AdmissionReview documents POSTed over TLS (verified against the test CA) on keep-alive
connections; the returned JSON Patch applied by tests/lib/jsonpatch.py equals `wardctl inject
-o json` of the same pod (a named readiness probe: the same exclusion), a pod without ports is
injected; opted-out / injected / non-pod / UPDATE reviews get no patch, uninjectable pods (a port
of the sidecar) a warning; garbage, wrong paths and methods, oversized and slow requests and
non-TLS clients get 4xx or are dropped while the agent keeps serving; SIGHUP swaps the serving
certificate; bad webhook flags exit 2. `kubectl kustomize deploy/base` still renders, with the
webhook configuration.
"""
import base64
import copy
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402
import jsonpatch  # noqa: E402

try:
    import yaml
except ImportError:  # pragma: no cover - reported below
    yaml = None

r = h.Results()
WARDCTL = os.path.join(h.BUILD_DIR, "tools", "wardctl")
SIDECAR = os.path.join(h.REPO, "deploy", "sidecar", "ward-sidecar.yaml")
KUBECTL = os.environ.get("WARD_KUBECTL") or shutil.which("kubectl")
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
for _need, _what in ((yaml, "python3-yaml"), (os.path.exists(WARDCTL) or None, WARDCTL),
                     (os.path.exists(ah.AGENT) or None, ah.AGENT)):
    if _need is None:
        print("missing: %s" % _what)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)


def wardctl(args, stdin=None, timeout=30):
    p = subprocess.run([WARDCTL, "inject"] + args, input=stdin, capture_output=True,
                       timeout=h.T(timeout), env=CLEAN_ENV)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


def write(name, text):
    d = h.mkdtemp(prefix="ward-inject-")
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def template():
    with open(SIDECAR) as f:
        return yaml.safe_load(f)


def expected_inits(excl=None):
    """The template's init containers as python3-yaml reads them; excl: ward-init's
    --exclude-inbound-ports for a pod with probes (the template has none), None for none."""
    inits = copy.deepcopy(template()["spec"]["initContainers"])
    if excl is not None:
        init = [c for c in inits if c["name"] == "ward-init"][0]
        assert "--exclude-inbound-ports" not in init["args"], init["args"]
        init["args"] += ["--exclude-inbound-ports", excl]
    return inits


def assert_injected(pod, excl, app_inits=(), what="pod"):
    """pod: a pod template (metadata + spec) that must carry exactly the template's sidecar, with
    excl (the probe ports, None: no probes) as ward-init's --exclude-inbound-ports."""
    t = template()
    spec = pod["spec"]
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["ward-init", "ward-proxy"] + [c["name"] for c in app_inits], \
        "%s: init containers %s (want ward-init, ward-proxy first)" % (what, names)
    assert spec["initContainers"][1]["restartPolicy"] == "Always", what
    want = expected_inits(excl)
    for got, exp in zip(spec["initContainers"][:2], want):
        assert got == exp, "%s: %s differs from the template:\n%s\n%s" % (
            what, got["name"], json.dumps(got, sort_keys=True), json.dumps(exp, sort_keys=True))
    assert spec["initContainers"][2:] == list(app_inits), what
    tvols = t["spec"]["volumes"]
    assert spec["volumes"][-len(tvols):] == tvols, "%s: volumes %s" % (what, spec["volumes"])
    ann = pod["metadata"]["annotations"]
    assert ann["ward.dev/status"] == "injected", ann
    return ann


DEPLOYMENT = """\
# a Deployment as people write them: comments, flow style, quoted and unquoted scalars
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: "frontend"}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels:
        app: web
    spec:
      initContainers:
      - name: migrate
        image: shop/migrate:1.4
        args: ["--up", "--timeout=30s"]
      containers:
      - name: web
        image: shop/web:1.4
        ports:
        - name: http
          containerPort: 8080
        env:
        - name: FEATURE_X
          value: "on"
        - name: MODE
          value: '0777'
        - name: WHEN
          value: "10:30"
        - name: SINCE
          value: "2024-01-01"
        - name: RATIO
          value: "1e3"
        - name: NOTE
          value: |
            multi
            line
        resources:
          limits: {cpu: 500m, memory: 256Mi}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
      volumes:
      - name: cfg
        configMap: {name: web, defaultMode: 0440}
"""

CRONJOB = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      backoffLimit: 2
      template:
        metadata:
          annotations: {ward.dev/app-port: "9000"}  # meaningless now: kept, ignored
        spec:
          restartPolicy: OnFailure
          containers:
          - name: report
            image: shop/report:1
"""


PROBES = """\
apiVersion: v1
kind: Pod
metadata: {name: numeric}
spec:
  containers:
  - name: a
    image: a:1
    livenessProbe: {httpGet: {path: /live, port: 8080}}
    readinessProbe: {tcpSocket: {port: 9000}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: named}
spec:
  selector: {matchLabels: {app: named}}
  template:
    metadata: {labels: {app: named}}
    spec:
      containers:
      - name: web
        image: w:1
        ports:
        - {name: http, containerPort: 8080}
        - {name: metrics, containerPort: 9102}
        readinessProbe:
          httpGet: {path: /ready, port: http, scheme: HTTPS}
        livenessProbe:
          tcpSocket: {port: metrics}
      - name: helper            # the same port name, another port: resolved per container
        image: h:1
        ports: [{name: http, containerPort: 7000}]
        startupProbe:
          httpGet: {path: /, port: http}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc}
spec:
  containers:
  - name: g
    image: g:1
    ports: [{containerPort: 50051}]
    startupProbe: {grpc: {port: 50051}, failureThreshold: 30}
    livenessProbe: {grpc: {port: 50051, service: liveness}}
    readinessProbe: {httpGet: {port: 443}}
---
apiVersion: v1
kind: Pod
metadata: {name: native-sidecar}
spec:
  initContainers:
  - name: shipper
    image: s:1
    restartPolicy: Always
    ports: [{name: health, containerPort: 2020}]
    startupProbe: {httpGet: {port: health}}
  containers:
  - {name: app, image: a:1}
---
apiVersion: v1
kind: Pod
metadata: {name: no-probes}
spec:
  containers:
  - name: x
    image: x:1
    ports: [{containerPort: 80}]
    livenessProbe: {exec: {command: ["true"]}}
"""


def probe_pods(out):
    return {d["metadata"]["name"]: (d["spec"]["template"] if d["kind"] == "Deployment" else d)
            for d in load_docs(out)}


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


@r.test
def deployment():
    src = write("deploy.yaml", DEPLOYMENT)
    rc, out, err = wardctl(["-f", src])
    assert rc == 0, (rc, err)
    docs = load_docs(out)
    assert len(docs) == 1, docs
    before = load_docs(DEPLOYMENT)[0]
    d = docs[0]
    pod = d["spec"]["template"]
    # the readiness probe's port ("http": 8080) bypasses the proxy
    ann = assert_injected(pod, "8080", before["spec"]["template"]["spec"]["initContainers"],
                          "Deployment")
    t = template()
    for k, v in t["metadata"]["annotations"].items():
        assert ann[k] == v, (k, ann)
    assert ann["kubectl.kubernetes.io/default-container"] == "web", ann
    # everything else exactly as python3-yaml read the input (strings stay strings)
    rest = copy.deepcopy(d)
    spec = rest["spec"]["template"]["spec"]
    sidecar_vols = {v["name"] for v in t["spec"]["volumes"]}
    spec["initContainers"] = [c for c in spec["initContainers"]
                              if c["name"] not in ("ward-init", "ward-proxy")]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in sidecar_vols]
    del rest["spec"]["template"]["metadata"]["annotations"]
    assert rest == before, "the rest of the Deployment changed:\n%s\n%s" % (rest, before)
    env = {e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"FEATURE_X": "on", "MODE": "0777", "WHEN": "10:30", "SINCE": "2024-01-01",
                   "RATIO": "1e3", "NOTE": "multi\nline\n"}, env
    assert d["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"] == 0o440


@r.test
def cronjob():
    rc, out, err = wardctl(["-f", write("cron.yaml", CRONJOB)])
    assert rc == 0, (rc, err)
    d = load_docs(out)[0]
    pod = d["spec"]["jobTemplate"]["spec"]["template"]
    assert_injected(pod, None, (), "CronJob")  # no ports, no probes: the template as it is
    assert pod["metadata"]["annotations"]["ward.dev/app-port"] == "9000", pod["metadata"]
    assert d["spec"]["schedule"] == "0 3 * * *" and d["spec"]["jobTemplate"]["spec"][
        "backoffLimit"] == 2, d


MULTI = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data:
  "8080": "yes"
  app.properties: |
    a=1
    b=true
  empty: ""
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: postgres:16, ports: [{containerPort: 5432}]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: a:1, ports: [{containerPort: 7000}]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: once, image: j:1, ports: [{containerPort: 7001}]}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec:
      containers: [{name: rs, image: r:1, ports: [{containerPort: 7002}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: lone}
spec:
  containers: [{name: lone, image: p:1, ports: [{containerPort: 7003}]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  annotations: {ward.dev/inject: disabled}
spec:
  containers: [{name: x, image: p:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: node-level}
spec:
  hostNetwork: true
  containers: [{name: x, image: p:1}]
"""


@r.test
def multi_document():
    rc, out, err = wardctl(["-f", write("multi.yaml", MULTI)])
    assert rc == 0, (rc, err)
    before, after = load_docs(MULTI), load_docs(out)
    assert [d["kind"] for d in after] == [d["kind"] for d in before], after  # empty docs dropped
    workloads = ("StatefulSet", "DaemonSet", "Job", "ReplicaSet")
    for b, a in zip(before, after):
        if b["kind"] in workloads:
            assert_injected(a["spec"]["template"], None, (), b["kind"])
        elif b["kind"] == "Pod" and b["metadata"]["name"] == "lone":
            assert_injected(a, None, (), "Pod")
        else:  # Service, ConfigMap, the opted-out and the hostNetwork pod: untouched
            assert a == b, "%s/%s changed:\n%s\n%s" % (b["kind"], b["metadata"]["name"], a, b)
    assert "opted-out): not injected (ward.dev/inject: disabled)" in err, err
    assert "node-level): not injected (hostNetwork)" in err, err
    assert after[1]["data"] == {"8080": "yes", "app.properties": "a=1\nb=true\n", "empty": ""}


@r.test
def list_kind():
    lst = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
           "items": [load_docs(DEPLOYMENT)[0], load_docs(MULTI)[0]]}
    rc, out, err = wardctl(["-f", "-"], stdin=json.dumps(lst).encode())  # JSON in, YAML out
    assert rc == 0, (rc, err)
    d = load_docs(out)[0]
    assert d["kind"] == "List" and len(d["items"]) == 2, d
    assert_injected(d["items"][0]["spec"]["template"], "8080",
                    lst["items"][0]["spec"]["template"]["spec"]["initContainers"], "List item 1")
    assert d["items"][1] == lst["items"][1]


@r.test
def already_injected_is_identical():
    for text in (DEPLOYMENT, MULTI, CRONJOB, PROBES):
        rc, once, err = wardctl(["-f", write("in.yaml", text)])
        assert rc == 0, err
        rc, twice, err = wardctl(["-f", "-"], stdin=once.encode())
        assert rc == 0, err
        assert twice == once, "second injection changed the output:\n%s\n----\n%s" % (once, twice)
        assert "already injected" in err, err


@r.test
def json_output():
    rc, y, err = wardctl(["-f", write("multi.yaml", MULTI)])
    rc2, j, err2 = wardctl(["-f", write("multi.yaml", MULTI), "-o", "json"])
    assert rc == 0 and rc2 == 0, (err, err2)
    lst = json.loads(j)
    assert lst["kind"] == "List" and lst["items"] == load_docs(y), lst.keys()
    rc, j, err = wardctl(["--filename=" + write("d.yaml", DEPLOYMENT), "--output=json"])
    assert rc == 0, err
    assert json.loads(j) == load_docs(wardctl(["-f", write("d.yaml", DEPLOYMENT)])[1])[0]


@r.test
def probe_ports_bypass_the_proxy():
    """The kubelet's probes come from the node in plaintext: their ports are kept out of the
    inbound capture (ward-init --exclude-inbound-ports), numeric, named and grpc alike."""
    rc, out, err = wardctl(["-f", write("probes.yaml", PROBES)])
    assert rc == 0, (rc, err)
    pods = probe_pods(out)
    before = {d["metadata"]["name"]: d for d in load_docs(PROBES)}
    assert_injected(pods["numeric"], "8080,9000", (), "numeric probes")
    assert_injected(pods["named"], "7000,8080,9102", (), "named probes")
    assert_injected(pods["grpc"], "443,50051", (), "grpc probes")
    assert_injected(pods["native-sidecar"], "2020",
                    before["native-sidecar"]["spec"]["initContainers"], "a native sidecar's probe")
    assert_injected(pods["no-probes"], None, (), "no probes")
    # the app containers themselves are untouched (their probes still aim at their ports)
    for name, pod in pods.items():
        b = before[name]
        bspec = (b["spec"]["template"] if b["kind"] == "Deployment" else b)["spec"]
        assert pod["spec"]["containers"] == bspec["containers"], name

    # merged with the option's list: ascending, each port once
    rc, out, err = wardctl(["-f", write("probes.yaml", PROBES), "--exclude-inbound-ports",
                            "9091,22,9000"])
    assert rc == 0, (rc, err)
    pods = probe_pods(out)
    assert_injected(pods["numeric"], "22,8080,9000,9091", (), "numeric probes + option")
    assert_injected(pods["no-probes"], "22,9000,9091", (), "option only")

    # the webhook gets the same: the JSON output of one pod
    rc, j, err = wardctl(["-f", "-", "-o", "json"],
                         stdin=json.dumps(load_docs(PROBES)[2]).encode())
    assert rc == 0, err
    ia = json.loads(j)["spec"]["initContainers"][0]["args"]
    assert ia[ia.index("--exclude-inbound-ports") + 1] == "443,50051", ia
    assert ia.count("--exclude-inbound-ports") == 1, ia


@r.test
def options():
    rc, out, err = wardctl(["-f", write("d.yaml", DEPLOYMENT), "--proxy-image", "reg/p:2",
                            "--init-image=reg/i:2", "--agent-address", "agent.mesh:16012",
                            "--trust-domain", "prod.example", "--inbound-ports", "all",
                            "--exclude-outbound-cidrs", "10.0.0.0/8", "--proxy-limits",
                            "memory=1Gi", "--image-pull-policy", "Always"])
    assert rc == 0, err
    init, proxy = load_docs(out)[0]["spec"]["template"]["spec"]["initContainers"][:2]
    assert (init["image"], proxy["image"]) == ("reg/i:2", "reg/p:2")
    assert init["imagePullPolicy"] == proxy["imagePullPolicy"] == "Always"
    pa, ia = proxy["args"], init["args"]
    assert pa[pa.index("--agent") + 1] == "agent.mesh:16012", pa
    assert pa[pa.index("--agent-id") + 1] == "spiffe://prod.example/ward/agent", pa
    assert ia[ia.index("--agent-port") + 1] == "16012", ia
    assert ia[ia.index("--include-inbound-ports") + 1] == "*", ia
    assert ia[ia.index("--exclude-outbound-cidrs") + 1] == "10.0.0.0/8", ia
    assert proxy["resources"]["limits"]["memory"] == "1Gi", proxy["resources"]


@r.test
def bad_input():
    # a syntax error: the document and the line
    rc, out, err = wardctl(["-f", "-"], stdin=b"kind: Service\n---\nkind: Pod\nspec: [1,\n")
    assert rc == 1 and out == "", (rc, out)
    assert "document 2, line 5" in err, err
    # an uninjectable workload among good ones: every bad document named, nothing written
    bad = MULTI + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: worker}\n" \
        "spec:\n  template:\n    spec:\n      containers: [{name: w, image: w:1, ports: " \
        "[{containerPort: 15000}]}]\n" \
        "---\njust a string\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
    rc, out, err = wardctl(["-f", write("bad.yaml", bad)])
    assert rc == 1 and out == "", (rc, out)
    # (MULTI holds 10 documents, its second one empty: indexes count every document)
    assert "document 11 (Deployment worker): container 'w' declares port 15000, a port of " \
        "the sidecar (ward-proxy)" in err, err
    assert "document 12, a scalar: not an object" in err, err
    assert "document 13 (Deployment x): no pod template" in err, err
    assert "3 bad documents: nothing written" in err, err
    rc, out, err = wardctl(["-f", "/nonexistent/file.yaml"])
    assert rc == 1 and "No such file" in err, (rc, err)
    # usage errors: exit 2
    for args in ([], ["-f"], ["-f", "a", "-f", "b"], ["-f", "x", "-o", "xml"],
                 ["-f", "x", "--bogus", "1"], ["-f", "x", "--proxy-requests", "cpu=lots"],
                 ["-f", "x", "--agent-address", "noport"], ["stray"]):
        rc, out, err = wardctl(args)
        assert rc == 2, (args, rc, err)
        assert "wardctl inject" in err, err
    rc, out, err = wardctl(["--help"])
    assert rc == 0 and "--exclude-outbound-cidrs" in out and "-f, --filename" in out, out


@r.test
def kustomize_base():
    if not KUBECTL:
        raise h.SkipTest("kubectl not found")
    p = subprocess.run([KUBECTL, "kustomize", os.path.join(h.REPO, "deploy", "base")],
                       capture_output=True, timeout=h.T(120), env=CLEAN_ENV)
    assert p.returncode == 0, p.stderr.decode()
    docs = load_docs(p.stdout.decode())
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("MutatingWebhookConfiguration", "ward-sidecar-injector") in kinds, kinds


# --------------------------------------------------------------------------- the webhook

def serving_cert(d, name, dns="localhost"):
    """A CA and a serving certificate for dns in d: (ca.pem path, cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def nm(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ck, k = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(nm(name + " CA")).issuer_name(nm(name + " CA"))
          .public_key(ck.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ck, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(nm(dns)).issuer_name(ca.subject)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ck, hashes.SHA256()))
    paths = [os.path.join(d, name + s) for s in ("-ca.pem", ".pem", "-key.pem")]
    for p, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                               leaf.public_bytes(serialization.Encoding.PEM),
                               k.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))):
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        os.rename(p + ".tmp", p)
    return paths


WH = {}
CERTS = h.mkdtemp(prefix="ward-webhook-")
PROXY_IMAGE = "registry.example.com/ward/ward-proxy:9.9"


@r.test
def agent_starts_with_webhook():
    ca, cert, key = serving_cert(CERTS, "wh")
    port = h.free_port()
    a = ah.Agent(extra=["--webhook-listen", "127.0.0.1:%d" % port, "--webhook-cert", cert,
                        "--webhook-key", key, "--inject-proxy-image", PROXY_IMAGE],
                 log_level="info")
    a.start()
    WH.update(agent=a, port=port, ca=ca, cert=cert, key=key)
    started = a.events("started")
    assert started and started[0].get("webhook") == "127.0.0.1:%d" % port, started


def agent():
    if "agent" not in WH or not WH["agent"].alive():
        raise h.SkipTest("the webhook agent is not running")
    return WH["agent"]


def client(ca=None, **kw):
    ctx = ssl.create_default_context(cafile=ca or WH["ca"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return http.client.HTTPSConnection("localhost", WH["port"], context=ctx, timeout=h.T(10))


def review(pod, op="CREATE", kind="Pod", uid=None):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid or "uid-%d" % time.monotonic_ns(),
                        "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1",
                                     "resource": kind.lower() + "s"},
                        "requestKind": {"group": "", "version": "v1", "kind": kind},
                        "namespace": "shop", "operation": op,
                        "userInfo": {"username": "system:serviceaccount:kube-system:"
                                                 "replicaset-controller"},
                        "object": pod, "oldObject": None, "dryRun": False,
                        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


def post(conn, body, path="/inject?timeout=10s", method="POST", ctype="application/json"):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def pod_of(deployment_text):
    d = load_docs(deployment_text)[0]
    t = copy.deepcopy(d["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": dict(t.get("metadata", {}), generateName="web-5d8f7-",
                             namespace="shop"),
            "spec": t["spec"]}


@r.test
def webhook_patch_equals_wardctl():
    agent()
    pod = pod_of(DEPLOYMENT)
    conn = client()
    rev = review(pod, uid="a7f3-0001")
    st, body, _ = post(conn, rev)
    assert st == 200, (st, body)
    out = json.loads(body)
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview", out
    resp = out["response"]
    assert resp["uid"] == "a7f3-0001" and resp["allowed"] is True, resp
    assert resp["patchType"] == "JSONPatch", resp
    patch = json.loads(base64.b64decode(resp["patch"]))
    assert all(op["op"] == "add" for op in patch), patch
    assert any(op["path"] == "/metadata/annotations/ward.dev~1status" for op in patch) or any(
        op["path"] == "/metadata/annotations" for op in patch), patch
    via_webhook = jsonpatch.apply(pod, patch)
    # the same pod through wardctl with the agent's options (its trust domain, the image)
    rc, j, err = wardctl(["-f", "-", "-o", "json", "--trust-domain", ah.TD, "--proxy-image",
                          PROXY_IMAGE], stdin=json.dumps(pod).encode())
    assert rc == 0, err
    assert via_webhook == json.loads(j), "webhook and wardctl disagree:\n%s\n%s" % (
        json.dumps(via_webhook, sort_keys=True), j)
    assert [c["name"] for c in via_webhook["spec"]["initContainers"]] == [
        "ward-init", "ward-proxy", "migrate"]
    assert via_webhook["spec"]["initContainers"][1]["image"] == PROXY_IMAGE
    ia = via_webhook["spec"]["initContainers"][0]["args"]
    assert ia[ia.index("--exclude-inbound-ports") + 1] == "8080", ia  # the readiness probe's
    # a bare pod (no annotations, init containers, volumes or ports): whole members added
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "b", "image": "b"}]}}
    st, body, _ = post(conn, review(bare))  # same keep-alive connection
    assert st == 200, body
    resp = json.loads(body)["response"]
    injected = jsonpatch.apply(bare, json.loads(base64.b64decode(resp["patch"])))
    rc, j, err = wardctl(["-f", "-", "-o", "json", "--trust-domain", ah.TD, "--proxy-image",
                          PROXY_IMAGE], stdin=json.dumps(bare).encode())
    assert rc == 0 and injected == json.loads(j), (err, injected)
    ann = injected["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "15000", ann
    conn.close()


@r.test
def webhook_no_patch():
    agent()
    injected = json.loads(wardctl(["-f", "-", "-o", "json"],
                                  stdin=json.dumps(pod_of(DEPLOYMENT)).encode())[1])
    disabled = pod_of(DEPLOYMENT)
    disabled["metadata"]["labels"]["ward.dev/inject"] = "disabled"
    annotated = pod_of(DEPLOYMENT)
    annotated["metadata"]["annotations"] = {"ward.dev/inject": "false"}
    host = pod_of(DEPLOYMENT)
    host["spec"]["hostNetwork"] = True
    conn = client()
    for what, rev in (("disabled label", review(disabled)),
                      ("false annotation", review(annotated)),
                      ("already injected", review(injected)),
                      ("hostNetwork", review(host)),
                      ("UPDATE", review(pod_of(DEPLOYMENT), op="UPDATE")),
                      ("a Service", review({"kind": "Service", "spec": {}}, kind="Service"))):
        st, body, _ = post(conn, rev)
        assert st == 200, (what, st, body)
        resp = json.loads(body)["response"]
        assert resp["uid"] == rev["request"]["uid"] and resp["allowed"] is True, (what, resp)
        assert "patch" not in resp and "patchType" not in resp, (what, resp)
    # cannot inject (the app declares the proxy's inbound port): admitted, unchanged, with a
    # warning kubectl shows
    worker = {"metadata": {"generateName": "worker-"},
              "spec": {"containers": [{"name": "worker", "image": "w",
                                       "ports": [{"containerPort": 15006}]}]}}
    st, body, _ = post(conn, review(worker))
    resp = json.loads(body)["response"]
    assert st == 200 and resp["allowed"] is True and "patch" not in resp, resp
    assert "a port of the sidecar" in resp["warnings"][0], resp
    conn.close()
    a = agent()
    ah.wait_metric(a, "ward_agent_webhook_reviews_total", lambda v: v and v >= 2,
                   decision="injected")
    for d, n in (("disabled", 2), ("already_injected", 1), ("host_network", 1), ("ignored", 2),
                 ("not_injectable", 1)):
        ah.wait_metric(a, "ward_agent_webhook_reviews_total", lambda v, n=n: v == n, decision=d)
    recs = [x for x in a.events("admission_review") if x.get("decision") == "not_injectable"]
    assert recs and recs[-1]["pod"] == "worker-*" and "port 15006" in recs[-1]["reason"], recs


def raw_tls(timeout=10):
    ctx = ssl.create_default_context(cafile=WH["ca"])
    s = socket.create_connection(("127.0.0.1", WH["port"]), timeout=h.T(timeout))
    return ctx.wrap_socket(s, server_hostname="localhost")


def read_all(s, limit=1 << 20):
    data = b""
    try:
        while len(data) < limit:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except (ConnectionResetError, ssl.SSLError, socket.timeout):
        pass
    return data


@r.test
def webhook_refuses_bad_requests():
    a = agent()
    conn = client()
    for body, path, method, ctype, want, text in (
            (b"garbage{", "/inject", "POST", "application/json", 400, b"not JSON"),
            (b"[]", "/inject", "POST", "application/json", 400, b"bad AdmissionReview"),
            (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": "x", "kind": {"kind": "Pod"},
                                     "operation": "CREATE", "object": "nope"}}).encode(),
             "/inject", "POST", "application/json", 400, b"request.object is not a Pod"),
            (b"{}", "/mutate", "POST", "application/json", 404, b"not found"),
            (b"", "/inject", "GET", "application/json", 405, b"only POST"),
            (b"{}", "/inject", "POST", "text/plain", 415, b"application/json")):
        st, data, resp = post(conn, body, path=path, method=method, ctype=ctype)
        assert st == want and text in data, (path, method, st, data)
        if want == 405:
            assert resp.getheader("Allow") == "POST"
    conn.close()
    # a body over 2 MiB: 413, connection closed
    s = raw_tls()
    big = 3 << 20
    s.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % big)
    try:
        s.sendall(b"{" + b" " * (big - 1))
    except OSError:
        pass  # the agent may close before reading it all
    data = read_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    # not HTTP at all, inside TLS
    s = raw_tls()
    s.sendall(b"\x00\x01 this is not http\r\n\r\n")
    data = read_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    # plaintext HTTP to the TLS port, and TLS 1.1: no answer, no harm
    p = socket.create_connection(("127.0.0.1", WH["port"]), timeout=h.T(5))
    p.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert not read_all(p).startswith(b"HTTP"), "plaintext was answered"
    p.close()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(WH["ca"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", WH["port"]), timeout=h.T(5)) as raw:
            try:
                old.wrap_socket(raw, server_hostname="localhost")
                raise AssertionError("a TLS 1.1 handshake succeeded")
            except ssl.SSLError:
                pass
    except ValueError:
        pass  # this Python's OpenSSL cannot even offer TLS 1.1
    # a certificate the client does not trust: the client refuses (the agent is not that CA)
    other_ca = serving_cert(CERTS, "other")[0]
    try:
        post(client(ca=other_ca), review(pod_of(DEPLOYMENT)))
        raise AssertionError("TLS succeeded against the wrong CA")
    except ssl.SSLCertVerificationError:
        pass
    # and the agent keeps serving
    st, body, _ = post(client(), review(pod_of(DEPLOYMENT)))
    assert st == 200 and "patch" in json.loads(body)["response"], body
    assert a.alive() and a.get("/ready")[0] == 200
    ah.wait_metric(a, "ward_agent_webhook_errors_total", lambda v: v and v >= 2,
                   reason="bad_review")
    ah.wait_metric(a, "ward_agent_webhook_errors_total", lambda v: v and v >= 1,
                   reason="too_large")


@r.test
def webhook_slow_request_times_out():
    a = agent()
    s = raw_tls(timeout=30)
    s.sendall(b"POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    data = read_all(s)  # the agent closes it after its 10 s request timeout
    took = time.monotonic() - t0
    s.close()
    assert data == b"" and 8 <= took <= h.T(20), (data[:100], took)
    ah.wait_metric(a, "ward_agent_webhook_errors_total", lambda v: v and v >= 1, reason="timeout")
    st, body, _ = post(client(), review(pod_of(DEPLOYMENT)))
    assert st == 200, body


@r.test
def webhook_certificate_reload():
    a = agent()
    old_ca = WH["ca"]
    new_ca, cert, key = serving_cert(CERTS, "wh2")
    shutil.copy(cert, WH["cert"] + ".new")
    shutil.copy(key, WH["key"] + ".new")
    os.rename(WH["key"] + ".new", WH["key"])
    os.rename(WH["cert"] + ".new", WH["cert"])
    a.signal(signal.SIGHUP)

    def new_cert_served():
        try:
            post(client(ca=new_ca), review(pod_of(DEPLOYMENT)))
            return True
        except ssl.SSLCertVerificationError:
            return False
    h.wait_for(new_cert_served, 10, what="the new serving certificate")
    WH["ca"] = new_ca
    try:
        post(client(ca=old_ca), review(pod_of(DEPLOYMENT)))
        raise AssertionError("the old certificate is still served")
    except ssl.SSLCertVerificationError:
        pass
    # a broken pair is refused; the current one stays
    with open(WH["key"], "w") as f:
        f.write("not a key\n")
    a.signal(signal.SIGHUP)
    h.wait_for(lambda: a.events("webhook_cert_rejected"), 10, what="webhook_cert_rejected")
    st, body, _ = post(client(), review(pod_of(DEPLOYMENT)))
    assert st == 200, body


@r.test
def agent_webhook_flags():
    d = h.mkdtemp(prefix="ward-agent-flags-")
    ca, cert, key = serving_cert(d, "f")
    base = [ah.AGENT, "--trust-domain", "t.local", "--state-dir", os.path.join(d, "s"),
            "--listen", os.path.join(d, "sock"), "--admin", "off"]
    for extra, why in ((["--webhook-listen", "127.0.0.1:1"], "needs --webhook-cert"),
                       (["--webhook-cert", cert, "--webhook-key", key], "need --webhook-listen"),
                       (["--inject-proxy-image", "x"], "needs --webhook-listen"),
                       (["--webhook-listen", "nope", "--webhook-cert", cert, "--webhook-key",
                         key], "--webhook-listen 'nope'"),
                       (["--webhook-listen", "127.0.0.1:1", "--webhook-cert", cert,
                         "--webhook-key", key, "--inject-proxy-requests", "cpu=lots"],
                        "--inject-proxy-requests 'cpu=lots'")):
        p = subprocess.run(base + extra, capture_output=True, timeout=h.T(10), env=CLEAN_ENV)
        assert p.returncode == 2 and why.encode() in p.stderr, (extra, p.returncode, p.stderr)
    # a key that does not match the certificate: a start-up failure
    other = serving_cert(d, "g")
    p = subprocess.run(base + ["--webhook-listen", "127.0.0.1:%d" % h.free_port(),
                               "--webhook-cert", cert, "--webhook-key", other[2]],
                       capture_output=True, timeout=h.T(10), env=CLEAN_ENV)
    assert p.returncode == 1 and b"does not match" in p.stderr, (p.returncode, p.stderr)
    p = subprocess.run([ah.AGENT, "--help"], capture_output=True, timeout=h.T(10), env=CLEAN_ENV)
    for f in (b"--webhook-listen", b"--webhook-cert", b"--webhook-key", b"--inject-proxy-image",
              b"--inject-exclude-outbound-cidrs"):
        assert f in p.stdout, f


@r.test
def agent_clean_exit():
    a = agent()
    a.stop()
    assert a.proc.returncode == 0, a.proc.returncode
    reports = ah.sanitizer_reports(a)
    assert not reports, reports
    assert a.events("exited"), a.stderr_text()[-2000:]


r.finish()
