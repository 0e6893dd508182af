#!/usr/bin/python3
"""End to end: pods as network namespaces on a bridge, transparent capture, identities from
ward-agent (service-account tokens), policy from the agent.

Topology (every address in 198.18.0.0/15; the root namespace's network is never touched):

    node namespace, bridge br0 -- veth -- pod A 198.18.42.10: app, capture, sidecar (sa web)
                                  veth -- pod B 198.18.42.11: app, capture, sidecar (sa orders)
                                  veth -- pod C 198.18.42.12: app, capture, sidecar (sa other)
                                  veth -- pod D 198.18.42.13: no sidecar (a plain client)
                                  veth -- pod E 198.18.42.14: no sidecar (a plain HTTP server)
    agent namespace: ward-agent (token attestation, --policy-dir); its Unix socket is in a temp
                     dir every namespace reaches (Unix sockets ignore network namespaces)

Each sidecar runs as UID 1337 (setpriv) with --capture-inbound :15006 --capture-outbound :15001
--peers (A, B, C and their ids); `deploy/init/ward-iptables` (defaults) runs in each of A, B, C.
The agent's policy lets sa web GET /hello on sa orders; the mesh default is the shipped one (deny).

Checked: A's app -> http://B:8080/hello arrives over mTLS (B's app sees x-forwarded-client-cert
URI=sa/web, a forged one is replaced); B's sidecar counts the inbound handshake and the allow
decision; A -> B /secret and C -> B are 403 with x-ward-deny-reason and never reach the app;
D (no sidecar) -> B refused in STRICT mode (plaintext_rejected), carried as unauthenticated in
PERMISSIVE mode where a rule without `from` allows it (metered plaintext, no identity header);
A -> E (no sidecar, not in --peers) passes through as plaintext (metered), refused with
--strict-egress (ward_egress_refused_total); the proxy's own UID is not captured
(ward_capture_loops_refused_total stays 0) and a direct connection to a capture port from inside
the pod is refused (capture_refused, loops counter +1); the agent survives policy changes pushed
while a sidecar restarts (a rolling restart during a policy rollout).

Needs root, iproute2, iptables, curl and setpriv. Skips (exit 0) where the kernel or the
permissions forbid network namespaces, veths, bridges or the nat table. Every namespace (and with
it every link) the test made is removed at exit, also on failure and on SIGTERM/SIGINT/SIGHUP.
"""
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402
import agentharness as ah  # noqa: E402

r = h.Results()
T0 = time.monotonic()
SCRIPT = os.path.join(h.REPO, "deploy", "init", "ward-iptables")
IP = shutil.which("ip") or "/usr/sbin/ip"
PREFIX = "ward-e2e-"
TAG = "%s%d" % (PREFIX, os.getpid())
NODE = TAG + "-node"
AGENT_NS = TAG + "-agent"
PROXY_UID = 1337
TD = "test.local"
K8S_NS = "shop"
APP_PORT = 8080
SUBNET = "198.18.42.0/24"


def sid(sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, K8S_NS, sa)


class Pod:
    def __init__(self, key, ip, sa=None, app="echo"):
        self.key, self.ip, self.sa, self.app_kind = key, ip, sa, app
        self.ns = "%s-%s" % (TAG, key)
        self.id = sid(sa) if sa else None
        self.sidecar = None   # the running ward-proxy (h.Proxy)
        self.app = None
        self.token = None


A = Pod("a", "198.18.42.10", "web")
B = Pod("b", "198.18.42.11", "orders")
C = Pod("c", "198.18.42.12", "other")
D = Pod("d", "198.18.42.13", app=None)
E = Pod("e", "198.18.42.14", app="plain")
PODS = [A, B, C, D, E]
SIDECAR_PODS = [A, B, C]

POLICY_HELLO = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: orders-hello, namespace: shop}
spec:
  selector: {identity: "%s"}
  action: ALLOW
  rules:
  - from: [{identities: ["%s"]}]
    to: [{ports: [%d], methods: [GET], paths: ["/hello"]}]
""" % (B.id, A.id, APP_PORT)

# A rule without `from`: any caller, also an unauthenticated (plaintext, PERMISSIVE) one.
POLICY_PUBLIC = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: orders-public, namespace: shop}
spec:
  selector: {identity: "%s"}
  action: ALLOW
  rules:
  - to: [{ports: [%d], methods: [GET], paths: ["/public"]}]
""" % (B.id, APP_PORT)

# The pods' app: answers every GET with JSON {app, path, xfcc: [values of x-forwarded-client-cert]}
# and remembers it; GET /__seen (asked over the pod's loopback, which is never captured) returns
# everything it was asked so far.
APP = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, port = sys.argv[1], int(sys.argv[2])
seen, lock = [], threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/__seen":
            with lock:
                body = json.dumps(seen).encode()
        else:
            rec = {"app": name, "path": self.path,
                   "xfcc": self.headers.get_all("x-forwarded-client-cert") or [],
                   "peer": self.client_address[0]}
            with lock:
                seen.append(rec)
            body = json.dumps(rec).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# --------------------------------------------------------------------------- namespaces

_NETNS = []


def sh(args, timeout=20, check=False, stdin=None, env=None):
    try:
        p = subprocess.run(args, capture_output=True, timeout=h.T(timeout), input=stdin, env=env)
    except subprocess.TimeoutExpired:
        raise h.Timeout("%s: no exit within %.0fs" % (" ".join(args), h.T(timeout)))
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(args), p.returncode, out, err))
    return p.returncode, out, err


def in_ns(ns, args, **kw):
    return sh([IP, "netns", "exec", ns] + list(args), **kw)


def netns_del(ns):
    try:
        subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=h.T(20))
    except subprocess.TimeoutExpired:
        pass


def kill_ns_pids(ns):
    """Processes still inside one of this test's namespaces (a killed earlier run's, or ours)."""
    try:
        p = subprocess.run([IP, "netns", "pids", ns], capture_output=True, timeout=h.T(10))
    except subprocess.TimeoutExpired:
        return
    for tok in p.stdout.decode().split():
        if tok.isdigit() and int(tok) != os.getpid():
            try:
                os.kill(int(tok), signal.SIGKILL)
            except OSError:
                pass


_CLEANED = [False]


def cleanup():
    if _CLEANED[0]:
        return
    _CLEANED[0] = True
    h._kill_all()          # every process we started (sidecars, agent, apps): before the netns go
    for ns in list(_NETNS):
        kill_ns_pids(ns)
        netns_del(ns)
        _NETNS.remove(ns)


atexit.register(cleanup)


def _on_signal(signum, frame):
    cleanup()
    h._on_signal(signum, frame)


for _s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(_s, _on_signal)


def remove_stale():
    """Namespaces left by a killed earlier run of this test (its pid is gone)."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for n in names:
        m = re.match(re.escape(PREFIX) + r"(\d+)-[a-z]+$", n)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            kill_ns_pids(n)
            netns_del(n)
    tmp = tempfile.gettempdir()
    for n in os.listdir(tmp):     # and their temp dirs (tokens, agent state)
        m = re.match(re.escape(PREFIX) + r"(\d+)-[a-z0-9_]+$", n)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            shutil.rmtree(os.path.join(tmp, n), ignore_errors=True)


def netns_add(ns):
    rc, out, err = sh([IP, "netns", "add", ns])
    if rc != 0:
        raise h.SkipTest("cannot create a network namespace (ip netns add: %s)" % err.strip())
    _NETNS.append(ns)
    rc, out, err = in_ns(ns, [IP, "link", "set", "lo", "up"])
    if rc != 0:
        raise h.SkipTest("cannot enter a network namespace (ip netns exec: %s)" % err.strip())


def ns_inode(ns):
    return os.stat("/run/netns/" + ns).st_ino


# --------------------------------------------------------------------------- processes

SETPRIV = ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups"]


def ns_proc(ns, argv, name, uid=None):
    """A process inside ns (ip netns exec and setpriv exec, so its pid is the program's). Lives
    across tests (the harness kills it at exit); its stderr is kept for failure dumps."""
    pre = ["netns", "exec", ns] + (SETPRIV if uid == PROXY_UID else [])
    p = h.Proxy(pre + list(argv), admin=False, name=name, binary=IP)
    for k in list(p.env):  # no proxy variables: curl and friends talk to the pods directly
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            del p.env[k]
    if argv[0] in (h.PROXY, ah.AGENT) and "ASAN_OPTIONS" not in os.environ:
        # glibc fills freed memory: a use after free in ward's C code crashes instead of
        # reading stale data that may still look right
        p.env.setdefault("MALLOC_PERTURB_", "165")
    p.start(wait_ready=False)
    cur = h.Results._current
    if cur is not None and p in cur._proxies:
        cur._proxies.remove(p)
    return p


CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


class Resp:
    def __init__(self, rc, status, headers, body, err):
        self.rc, self.status, self.headers, self.body, self.err = rc, status, headers, body, err

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "curl exit %d, status %s, headers %r, body %r, stderr %r" % (
            self.rc, self.status, self.headers, self.body[:300], self.err.strip()[:300])


def curl(pod, url, headers=(), uid=None, timeout=5):
    """curl from inside pod (as uid); returns a Resp (status None when no response came)."""
    cmd = [IP, "netns", "exec", pod.ns] + (SETPRIV if uid == PROXY_UID else [])
    cmd += ["curl", "-sS", "-i", "--noproxy", "*", "--max-time", "%g" % h.T(timeout)]
    for hd in headers:
        cmd += ["-H", hd]
    cmd.append(url)
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=h.T(timeout) + 10, env=CLEAN_ENV)
    except subprocess.TimeoutExpired:
        raise h.Timeout("%s: curl did not return" % " ".join(cmd))
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    status, hdrs, body = None, {}, ""
    if out.startswith("HTTP/"):
        head, _, body = out.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1])
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    return Resp(p.returncode, status, hdrs, body, err)


def url(pod, path, port=APP_PORT):
    return "http://%s:%d%s" % (pod.ip, port, path)


def admin_get(ns, path, port=15000, timeout=3):
    """(status, body) of GET 127.0.0.1:port/path inside ns; status 0 when nothing answered."""
    rc, out, err = in_ns(ns, ["curl", "-s", "--noproxy", "*", "--max-time", "%g" % h.T(timeout),
                              "-w", "\n%{http_code}", "http://127.0.0.1:%d%s" % (port, path)],
                         timeout=timeout + 10, env=CLEAN_ENV)
    body, _, code = out.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, out


def metrics(pod):
    st, body = admin_get(pod.ns, "/metrics")
    assert st == 200, "%s sidecar /metrics: status %s %r" % (pod.key, st, body[:200])
    return h.parse_metrics(body)


def m(pod, name, **labels):
    return h.metric_value(metrics(pod), name, **labels)


def wait_metric(pod, name, pred, timeout=5.0, **labels):
    last = [None]

    def check():
        last[0] = m(pod, name, **labels)
        return pred(last[0])

    try:
        h.wait_for(check, timeout, interval=0.1, what="%s on pod %s" % (name, pod.key))
    except h.Timeout as e:
        raise h.Timeout("%s %r (last value %r)" % (e, labels, last[0]))
    return last[0]


def assert_agent_alive(when):
    p = AGENT.proc
    if not p.alive():
        rc = p.proc.returncode
        raise AssertionError("ward-agent exited with status %s%s %s; its last log lines:\n%s" %
                             (rc, " (SIGSEGV)" if rc == -signal.SIGSEGV else "", when,
                              "\n".join(p.stderr_text().splitlines()[-4:])))


def wait_ready(ns, proc, port, what, timeout=20.0):
    deadline = time.monotonic() + h.T(timeout)
    while True:
        if not proc.alive():
            raise AssertionError("%s exited (status %s) before becoming ready:\n%s" %
                                 (what, proc.proc.returncode, proc.stderr_text()[-3000:]))
        if proc is not AGENT.proc:   # a sidecar: it can only get ready from a live agent
            assert_agent_alive("while %s was waiting for its identity" % what)
        if admin_get(ns, "/ready", port, timeout=1)[0] == 200:
            return
        if time.monotonic() > deadline:
            raise h.Timeout("%s not ready after %.0fs:\n%s" % (what, h.T(timeout),
                                                                 proc.stderr_text()[-3000:]))
        time.sleep(0.1)


def events(proc, event, since=0):
    return [x for x in proc.log_records(since) if x.get("event") == event]


def app_seen(pod):
    st, body = admin_get(pod.ns, "/__seen", port=APP_PORT)
    assert st == 200, "app of pod %s: /__seen status %s" % (pod.key, st)
    return json.loads(body)


# --------------------------------------------------------------------------- setup

STATE = {"net": False, "up": False}
TMP = None
AGENT = None
PEERS = None


def preflight():
    if os.geteuid() != 0:
        raise h.SkipTest("needs root (network namespaces, iptables, setpriv)")
    for tool, pkg in (("ip", "iproute2"), ("iptables", "iptables"), ("curl", "curl"),
                      ("setpriv", "util-linux")):
        if not shutil.which(tool):
            raise h.SkipTest("%s not installed (Debian package %s)" % (tool, pkg))
    for b in (h.PROXY, ah.AGENT):
        if not os.path.exists(b):
            raise AssertionError("binary not found: %s (set WARD_PROXY / WARD_AGENT)" % b)
    remove_stale()


@r.fixture
def network():
    """The node namespace with the bridge, one namespace per pod linked to it, the agent's."""
    preflight()
    netns_add(NODE)
    netns_add(AGENT_NS)
    # Every link is created from inside the node namespace, straight into its namespace: nothing
    # appears in the root namespace, not even for a moment.
    rc, out, err = in_ns(NODE, [IP, "link", "add", "br0", "type", "bridge"])
    if rc != 0:
        raise h.SkipTest("cannot create a bridge in a network namespace: %s" % err.strip())
    in_ns(NODE, [IP, "link", "set", "br0", "up"], check=True)
    for p in PODS:
        netns_add(p.ns)
        rc, out, err = in_ns(NODE, [IP, "link", "add", "veth-" + p.key, "type", "veth", "peer",
                                    "name", "eth0", "netns", p.ns])
        if rc != 0:
            raise h.SkipTest("cannot create a veth pair: %s" % err.strip())
        in_ns(NODE, [IP, "link", "set", "veth-" + p.key, "master", "br0", "up"], check=True)
        in_ns(p.ns, [IP, "addr", "add", p.ip + "/24", "dev", "eth0"], check=True)
        in_ns(p.ns, [IP, "link", "set", "eth0", "up"], check=True)
    # only the pod subnet, no default route: nothing can leave the bridge
    for p in PODS:
        rc, out, err = in_ns(p.ns, [IP, "-4", "route", "show"], check=True)
        assert "default" not in out and SUBNET in out, "pod %s routes:\n%s" % (p.key, out)
    STATE["net"] = True


def need_net():
    if not STATE["net"]:
        raise h.SkipTest("no pod network (see the first test)")


def need_up():
    need_net()
    if not STATE["up"]:
        raise h.SkipTest("the mesh did not come up (see the mesh_up test)")


def install_capture(pod):
    rc, out, err = in_ns(pod.ns, [SCRIPT], timeout=60)
    if rc == 0:
        assert "capture installed" in out, out + err
        return
    # Tell a kernel / permission refusal (skip) from a failure of the script (a real failure).
    probe = TAG + "-probe"
    netns_add(probe)
    try:
        prc, pout, perr = in_ns(probe, ["iptables", "-w", "10", "-t", "nat", "-A", "OUTPUT", "-p",
                                        "tcp", "-j", "REDIRECT", "--to-ports", "15001"])
    finally:
        netns_del(probe)
        _NETNS.remove(probe)
    if prc != 0:
        raise h.SkipTest("the kernel refuses an iptables nat REDIRECT rule in a network "
                         "namespace: %s" % perr.strip())
    raise AssertionError("ward-iptables in pod %s: exit %d\n%s%s" % (pod.key, rc, out, err))


def start_app(pod):
    script = os.path.join(TMP, "app.py")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(APP)
        os.chmod(script, 0o644)
    pod.app = ns_proc(pod.ns, ["/usr/bin/python3", script, "app-" + pod.key, str(APP_PORT)],
                      "app-" + pod.key)


def wait_app(pod):
    def ok():
        if not pod.app.alive():
            raise AssertionError("app of pod %s exited:\n%s" % (pod.key, pod.app.stderr_text()))
        return admin_get(pod.ns, "/__seen", port=APP_PORT, timeout=1)[0] == 200
    h.wait_for(ok, 15, interval=0.1, what="the app of pod %s" % pod.key)


def sidecar_args(pod, extra=()):
    return [h.PROXY, "--agent", "unix:" + AGENT.sock, "--agent-token-file", pod.token,
            "--capture-inbound", ":15006", "--capture-outbound", ":15001",
            "--admin", "127.0.0.1:15000", "--peers", PEERS, "--workers", "1",
            "--drain-timeout", "1s"] + list(extra)


def start_sidecar(pod, extra=()):
    pod.sidecar = ns_proc(pod.ns, sidecar_args(pod, extra), "sidecar-" + pod.key, uid=PROXY_UID)
    return pod.sidecar


def restart_sidecar(pod, extra=()):
    old = pod.sidecar
    old.stop(timeout=10)
    h.wait_for(lambda: admin_get(pod.ns, "/live", timeout=1)[0] == 0, 10, interval=0.1,
               what="pod %s's old sidecar to be gone" % pod.key)
    start_sidecar(pod, extra)
    wait_ready(pod.ns, pod.sidecar, 15000, "sidecar of pod %s" % pod.key)


def policy_names(pod):
    st, body = admin_get(pod.ns, "/policy")
    if st != 200:
        return set()
    return set(re.findall(r'"name"\s*:\s*"([^"]+)"', body))


def wait_policy(pod, name, timeout=15.0):
    h.wait_for(lambda: name in policy_names(pod), timeout, interval=0.1,
               what="policy %s on pod %s's sidecar" % (name, pod.key))


class AgentProc:
    pass


@r.fixture
def mesh_up():
    """Agent (own namespace), apps, capture rules, sidecars as UID 1337: all ready."""
    global TMP, PEERS, AGENT
    need_net()
    TMP = h.mkdtemp(prefix=TAG + "-")
    os.chmod(TMP, 0o755)                 # UID 1337 must reach the socket, its token, the peers
    iss = ah.TokenIssuer(TMP)
    for pod in SIDECAR_PODS:
        # the token is the pod's credential: readable by the sidecar's UID only
        pod.token = iss.write("%s.jwt" % pod.key, iss.mint(K8S_NS, pod.sa), mode=0o600)
        os.chown(pod.token, PROXY_UID, PROXY_UID)
    PEERS = os.path.join(TMP, "peers")
    with open(PEERS, "w") as f:
        f.write("# pods with a sidecar and the identity each must present\n")
        for pod in SIDECAR_PODS:
            f.write("%s %s\n" % (pod.ip, pod.id))
    os.chmod(PEERS, 0o644)
    poldir = os.path.join(TMP, "policy")
    os.mkdir(poldir, 0o755)
    with open(os.path.join(poldir, "orders-hello.yaml"), "w") as f:
        f.write(POLICY_HELLO)
    AGENT = AgentProc()
    AGENT.root = os.path.join(TMP, "agent")
    os.mkdir(AGENT.root, 0o755)
    AGENT.sock = os.path.join(AGENT.root, "agent.sock")
    AGENT.policy_dir = poldir
    AGENT.proc = ns_proc(AGENT_NS, [ah.AGENT, "--trust-domain", TD,
                                    "--state-dir", os.path.join(AGENT.root, "state"),
                                    "--listen", AGENT.sock, "--jwks", iss.jwks,
                                    "--token-issuer", iss.issuer, "--policy-dir", poldir,
                                    "--admin", "127.0.0.1:15010"], "ward-agent")
    for pod in PODS:
        if pod.app_kind:
            start_app(pod)
    for pod in SIDECAR_PODS:
        install_capture(pod)
    wait_ready(AGENT_NS, AGENT.proc, 15010, "ward-agent")
    h.wait_for(lambda: os.path.exists(AGENT.sock), 10, what="the agent's socket")
    for pod in PODS:
        if pod.app_kind:
            wait_app(pod)
    for pod in SIDECAR_PODS:
        start_sidecar(pod)
    for pod in SIDECAR_PODS:
        wait_ready(pod.ns, pod.sidecar, 15000, "sidecar of pod %s" % pod.key)
    wait_policy(B, "orders-hello")
    STATE["up"] = True


# --------------------------------------------------------------------------- tests

@r.test
def sidecars_run_as_1337_inside_their_pods():
    need_up()
    for pod in SIDECAR_PODS:
        pid = pod.sidecar.pid
        with open("/proc/%d/comm" % pid) as f:
            assert f.read().strip() == "ward-proxy", "pid %d is not ward-proxy" % pid
        with open("/proc/%d/status" % pid) as f:
            st = f.read()
        uids = re.search(r"^Uid:\s+(.*)$", st, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", st, re.M).group(1).split()
        assert set(uids) == {str(PROXY_UID)} and set(gids) == {str(PROXY_UID)}, \
            "sidecar of pod %s: Uid %s Gid %s" % (pod.key, uids, gids)
        assert os.stat("/proc/%d/ns/net" % pid).st_ino == ns_inode(pod.ns), \
            "sidecar of pod %s is not in the pod's network namespace" % pod.key
        st, body = admin_get(pod.ns, "/identity")
        assert st == 200 and pod.id in body, "pod %s /identity: %s %s" % (pod.key, st, body)


@r.test
def a_to_b_hello_over_mtls_with_web_identity():
    need_up()
    got = curl(A, url(B, "/hello"))
    assert got.rc == 0 and got.status == 200, got
    j = got.json()
    assert j["app"] == "app-b" and j["path"] == "/hello", j
    assert len(j["xfcc"]) == 1, "B's app got x-forwarded-client-cert %r" % j["xfcc"]
    x = j["xfcc"][0]
    assert "URI=%s" % A.id in x, "B's app: xfcc %r lacks URI=%s" % (x, A.id)
    assert "By=%s" % B.id in x, "B's app: xfcc %r lacks By=%s" % (x, B.id)
    assert re.search(r"Hash=[0-9a-f]{64}", x), "B's app: xfcc %r has no sha256 Hash" % x
    print("     B's app saw x-forwarded-client-cert: %s" % x, flush=True)
    # a header forged by A's app is replaced by the verified one
    got = curl(A, url(B, "/hello"), headers=["x-forwarded-client-cert: URI=%s" % sid("admin")])
    assert got.status == 200, got
    assert [v for v in got.json()["xfcc"] if "URI=%s" % A.id in v] == got.json()["xfcc"] and \
        len(got.json()["xfcc"]) == 1, "forged xfcc reached B's app: %r" % got.json()["xfcc"]
    # A's outbound sidecar originated mTLS (the destination is in --peers), no plaintext
    assert m(A, "ward_tls_handshakes_total", direction="outbound", result="success") >= 1
    assert m(A, "ward_connections_plaintext_total", direction="outbound") == 0


@r.test
def b_sidecar_counts_handshake_and_allow():
    need_up()
    mt = metrics(B)
    ok = h.metric_value(mt, "ward_tls_handshakes_total", direction="inbound", result="success",
                        reason="none")
    allow = h.metric_value(mt, "ward_authz_decisions_total", direction="inbound",
                           decision="allow", peer_identity=A.id)
    assert ok >= 1, "B: no inbound handshake success counted"
    assert allow >= 1, "B: no allow decision for %s: %r" % (
        A.id, {k: v for k, v in mt.items() if k[0] == "ward_authz_decisions_total"})
    assert h.metric_value(mt, "ward_authz_decisions_total", direction="inbound",
                          decision="allow", policy="shop/orders-hello") >= 1, \
        "B: the allow decisions do not name the policy shop/orders-hello"


@r.test
def a_to_b_secret_denied():
    need_up()
    before = len(app_seen(B))
    deny0 = m(B, "ward_authz_decisions_total", direction="inbound", decision="deny",
              peer_identity=A.id)
    got = curl(A, url(B, "/secret"))
    assert got.status == 403, got
    assert got.headers.get("x-ward-deny-reason"), "403 without x-ward-deny-reason: %r" % got
    wait_metric(B, "ward_authz_decisions_total", lambda v: v == deny0 + 1, direction="inbound",
                decision="deny", peer_identity=A.id)
    assert len(app_seen(B)) == before, "the denied request reached B's app: %r" % app_seen(B)


@r.test
def c_to_b_denied():
    need_up()
    before = len(app_seen(B))
    got = curl(C, url(B, "/hello"))
    assert got.status == 403, got
    assert got.headers.get("x-ward-deny-reason"), "403 without x-ward-deny-reason: %r" % got
    wait_metric(B, "ward_authz_decisions_total", lambda v: v >= 1, direction="inbound",
                decision="deny", peer_identity=C.id)
    assert m(B, "ward_authz_decisions_total", decision="allow", peer_identity=C.id) == 0
    assert len(app_seen(B)) == before, "C's request reached B's app: %r" % app_seen(B)


@r.test
def d_without_sidecar_refused_by_strict_b():
    need_up()
    before = len(app_seen(B))
    rej0 = m(B, "ward_tls_handshakes_total", direction="inbound", result="failure",
             reason="plaintext_rejected")
    since = B.sidecar.stderr_size()
    got = curl(D, url(B, "/hello"))
    assert got.status is None and got.rc in (52, 56), \
        "want the connection closed/reset without a response (curl 52/56): %r" % got
    wait_metric(B, "ward_tls_handshakes_total", lambda v: v == rej0 + 1, direction="inbound",
                result="failure", reason="plaintext_rejected")
    assert m(B, "ward_connections_plaintext_total", direction="inbound") == 0
    h.wait_for(lambda: [e for e in events(B.sidecar, "handshake_failed", since)
                        if e.get("reason") == "plaintext_rejected"], 5,
               what="a handshake_failed plaintext_rejected log line on B")
    assert len(app_seen(B)) == before, "D's plaintext request reached B's app"


@r.test
def a_to_e_without_sidecar_passes_through_plaintext():
    need_up()
    pt0 = m(A, "ward_connections_plaintext_total", direction="outbound")
    got = curl(A, url(E, "/plain"))
    assert got.status == 200, got
    j = got.json()
    assert j["app"] == "app-e" and j["path"] == "/plain" and j["xfcc"] == [], j
    wait_metric(A, "ward_connections_plaintext_total", lambda v: v == pt0 + 1,
                direction="outbound")
    assert m(A, "ward_egress_refused_total") == 0   # not --strict-egress (yet)


@r.test
def proxy_uid_not_captured_no_loops():
    need_up()
    mt = metrics(A)
    total0 = h.metric_value(mt, "ward_connections_total", direction="outbound")
    pt0 = h.metric_value(mt, "ward_connections_plaintext_total", direction="outbound")
    # a connection made by UID 1337 in pod A goes straight out: the sidecar never sees it
    got = curl(A, url(E, "/from-1337"), uid=PROXY_UID)
    assert got.status == 200 and got.json()["path"] == "/from-1337", got
    time.sleep(0.3)
    mt = metrics(A)
    assert h.metric_value(mt, "ward_connections_total", direction="outbound") == total0, \
        "a connection of UID %d was captured" % PROXY_UID
    assert h.metric_value(mt, "ward_connections_plaintext_total", direction="outbound") == pt0
    # after all the traffic so far (the sidecars' own upstream connections included): no loop
    for pod in SIDECAR_PODS:
        v = m(pod, "ward_capture_loops_refused_total")
        assert v == 0, "pod %s: ward_capture_loops_refused_total %s" % (pod.key, v)
        assert not events(pod.sidecar, "capture_refused"), \
            "pod %s: capture_refused logged: %r" % (pod.key, events(pod.sidecar,
                                                                    "capture_refused"))


@r.test
def direct_connection_to_capture_port_refused():
    need_up()
    loops0 = m(A, "ward_capture_loops_refused_total")
    since = A.sidecar.stderr_size()
    got = curl(A, "http://127.0.0.1:15001/direct")
    assert got.status is None and got.rc in (52, 56), \
        "a direct connection to :15001 was answered: %r" % got
    wait_metric(A, "ward_capture_loops_refused_total", lambda v: v == loops0 + 1)
    assert m(A, "ward_capture_loops_refused_total", direction="outbound") == loops0 + 1
    h.wait_for(lambda: events(A.sidecar, "capture_refused", since), 5,
               what="a capture_refused log line on A")


@r.test
def d_accepted_by_permissive_b_where_policy_allows():
    need_up()
    restart_sidecar(B, ["--inbound-mode", "permissive"])
    # the policy changes once B's new sidecar is up (a change pushed while a sidecar's stream is
    # closing is the subject of agent_survives_policy_change_during_sidecar_restart)
    with open(os.path.join(AGENT.policy_dir, "orders-public.yaml"), "w") as f:
        f.write(POLICY_PUBLIC)
    AGENT.proc.signal(signal.SIGHUP)
    wait_policy(B, "orders-public")
    wait_policy(B, "orders-hello")
    got = curl(D, url(B, "/public"),
               headers=["x-forwarded-client-cert: By=x;Hash=00;URI=%s" % A.id])
    assert got.status == 200, got
    j = got.json()
    assert j["app"] == "app-b" and j["path"] == "/public", j
    assert j["xfcc"] == [], "an unauthenticated caller's request carried xfcc %r" % j["xfcc"]
    wait_metric(B, "ward_connections_plaintext_total", lambda v: v == 1, direction="inbound")
    assert m(B, "ward_tls_handshakes_total", reason="plaintext_rejected") == 0
    assert m(B, "ward_authz_decisions_total", direction="inbound", decision="allow",
             policy="shop/orders-public", peer_identity="") >= 1
    # unauthenticated is nobody: /hello (sa web only) stays closed to D
    got = curl(D, url(B, "/hello"))
    assert got.status == 403 and got.headers.get("x-ward-deny-reason"), got
    # ... and A's mTLS callers still arrive with their identity
    got = curl(A, url(B, "/hello"))
    assert got.status == 200 and len(got.json()["xfcc"]) == 1 and \
        "URI=%s" % A.id in got.json()["xfcc"][0], got


@r.test
def a_to_e_refused_with_strict_egress():
    need_up()
    restart_sidecar(A, ["--strict-egress"])
    before = len(app_seen(E))
    since = A.sidecar.stderr_size()
    got = curl(A, url(E, "/plain"))
    assert got.status is None and got.rc in (52, 56), \
        "strict egress: the connection to a pod without a sidecar was carried: %r" % got
    wait_metric(A, "ward_egress_refused_total", lambda v: v == 1)
    assert m(A, "ward_connections_plaintext_total", direction="outbound") == 0
    h.wait_for(lambda: events(A.sidecar, "egress_refused", since), 5,
               what="an egress_refused log line on A")
    assert len(app_seen(E)) == before, "E's app got the refused request"
    # destinations in --peers still work
    got = curl(A, url(B, "/hello"))
    assert got.status == 200 and "URI=%s" % A.id in got.json()["xfcc"][0], got
    assert m(A, "ward_capture_loops_refused_total") == 0


POLICY_OTHER = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: other-%d, namespace: shop}
spec:
  selector: {identity: "%s"}
  action: ALLOW
  rules:
  - from: [{identities: ["%s"]}]
    to: [{ports: [%d], methods: [GET], paths: ["/round-%d"]}]
"""
ROUNDS = 10
BULK_RULES = 4000


def bulk_policy():
    """A large policy set (selecting a workload that does not exist): the agent takes a few
    milliseconds to reload it, the window in which a sidecar's stream may close."""
    rule = '  - from: [{identities: ["%s"]}]\n    to: [{methods: [GET], paths: ["/p%d/*"]}]\n'
    rules = "".join(rule % (sid("w%d" % i), i) for i in range(BULK_RULES))
    return ("apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: bulk, namespace: shop}\nspec:\n"
            "  selector: {identity: \"%s\"}\n  action: ALLOW\n  rules:\n%s"
            % (sid("nobody"), rules))


@r.test
def agent_survives_policy_change_during_sidecar_restart():
    """A rolling restart while the operator changes a large policy set: a policy pushed to a
    proxy whose stream is just closing must not take the agent down. Each round: the policy
    selecting pod C changes, the agent is told (SIGHUP), C's sidecar is stopped a few
    milliseconds later (0, 2, 4, ... ms: somewhere in the agent's reload) and started again."""
    need_up()
    assert_agent_alive("before the first round")
    bulk = os.path.join(AGENT.policy_dir, "bulk.yaml")
    path = os.path.join(AGENT.policy_dir, "other.yaml")
    since = AGENT.proc.stderr_size()
    with open(bulk, "w") as f:
        f.write(bulk_policy())
    AGENT.proc.signal(signal.SIGHUP)
    h.wait_for(lambda: events(AGENT.proc, "policy_loaded", since), 10, interval=0.1,
               what="the agent to load the bulk policy")
    try:
        for i in range(1, ROUNDS + 1):
            with open(path, "w") as f:
                f.write(POLICY_OTHER % (i, C.id, A.id, APP_PORT, i))
            AGENT.proc.signal(signal.SIGHUP)
            time.sleep(0.002 * (i - 1))
            C.sidecar.stop(timeout=10)
            time.sleep(0.1)
            assert_agent_alive("after round %d of %d (policy reloaded while pod c's sidecar "
                               "stopped %d ms after the SIGHUP)" % (i, ROUNDS, 2 * (i - 1)))
            start_sidecar(C)
            wait_ready(C.ns, C.sidecar, 15000, "sidecar of pod c (round %d)" % i)
    finally:
        os.unlink(bulk)
    wait_policy(C, "other-%d" % ROUNDS)
    got = curl(A, url(C, "/round-%d" % ROUNDS))
    assert got.status == 200 and "URI=%s" % A.id in got.json()["xfcc"][0], got


@r.test
def no_sidecar_crashed():
    need_up()
    for p in [AGENT.proc] + [pod.sidecar for pod in SIDECAR_PODS]:
        assert p.alive(), "%s exited with %s:\n%s" % (p.name, p.proc.returncode,
                                                      p.stderr_text()[-3000:])
    reports = ah.sanitizer_reports(AGENT.proc, *[pod.sidecar for pod in SIDECAR_PODS])
    assert not reports, "sanitizer reports: %r" % reports


cleanup()
if STATE["net"]:
    left = [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
            if n.startswith(TAG + "-")]
    r.check("namespaces_removed", not left, "left: %r" % left)
print("runtime %.1fs" % (time.monotonic() - T0), flush=True)
r.finish()
