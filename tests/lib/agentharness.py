"""Integration-test helpers for ward-agent (on top of harness.py).

    import harness as h
    import agentharness as ah
    pb = ah.protos()                       # protoc codegen into a temp dir, at test time
    iss = ah.TokenIssuer(dir)              # an RSA key + JWKS file; iss.mint("default", "backend")
    agent = ah.Agent(workloads={0: "spiffe://test.local/ns/default/sa/frontend"},
                     issuer=iss, svid_ttl="10s").start()
    with ah.channel(agent.sock) as ch:
        s = ah.MeshStream(ch, pb)          # /ward.v1.Mesh/Connect, generic stubs
        s.send(pb.mesh.ProxyMessage(hello=pb.mesh.Hello()))
        m = s.recv(5)                      # an AgentMessage, or raises StreamEnded(code, details)

Environment: WARD_AGENT (path of ward-agent, default build/control/ward-agent in the repo), plus
everything harness.py reads (WARD_PROXY, WARD_BUILD_DIR, WARD_TIMEOUT_SCALE, WARD_KEEP_TMP).
Needs Debian's python3-grpcio, python3-protobuf, python3-cryptography and protoc.
"""
import datetime
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import tokens  # noqa: E402

AGENT = os.environ.get("WARD_AGENT") or os.path.join(h.BUILD_DIR, "control", "ward-agent")
PYTHON = "/usr/bin/python3"
TD = "test.local"
NOBODY = 65534
TOKEN_ISSUER = tokens.ISSUER
TOKEN_AUDIENCE = tokens.AUDIENCE


def require_binaries():
    """Exit the test script with one failure if ward-agent or ward-proxy is missing."""
    missing = [p for p in (AGENT, h.PROXY) if not os.path.exists(p)]
    if missing:
        print("binary not found: %s (set WARD_AGENT / WARD_PROXY)" % ", ".join(missing))
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)


def spiffe(ns, sa, td=TD):
    return "spiffe://%s/ns/%s/sa/%s" % (td, ns, sa)


# --------------------------------------------------------------------------- protobuf codegen

_PB = None


class Protos:
    """The generated modules: .mesh (ward.v1) and .wl (SPIFFE Workload API); .dir their home."""

    def __init__(self, d, mesh, wl):
        self.dir, self.mesh, self.wl = d, mesh, wl


def protos():
    """Runs protoc on proto/ into a fresh temp dir (readable by every uid, for the subprocesses that
    drop privileges) and imports the modules. Never writes into the source tree."""
    global _PB
    if _PB is not None:
        return _PB
    pre = os.environ.get("WARD_AGENT_PB_DIR")  # a child of run_as: already generated
    if pre:
        sys.path.insert(0, pre)
        _PB = Protos(pre, importlib.import_module("ward.v1.mesh_pb2"),
                     importlib.import_module("spiffe.workload_pb2"))
        return _PB
    d = h.mkdtemp(prefix="ward-pb-")
    os.chmod(d, 0o755)
    proto = os.path.join(h.REPO, "proto")
    subprocess.run(["protoc", "-I", proto, "--python_out=" + d,
                    os.path.join(proto, "spiffe", "workload.proto"),
                    os.path.join(proto, "ward", "v1", "mesh.proto")],
                   check=True, timeout=h.T(60))
    for root, dirs, files in os.walk(d):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in files:
            os.chmod(os.path.join(root, n), 0o644)
    sys.path.insert(0, d)
    mesh = importlib.import_module("ward.v1.mesh_pb2")
    wl = importlib.import_module("spiffe.workload_pb2")
    _PB = Protos(d, mesh, wl)
    return _PB


# --------------------------------------------------------------------------- gRPC helpers

def channel(sock):
    """An insecure gRPC channel to a Unix socket path."""
    import grpc
    return grpc.insecure_channel("unix://" + sock, options=[
        ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.enable_retries", 0),
    ])


WL_MD = (("workload.spiffe.io", "true"),)


class StreamEnded(AssertionError):
    def __init__(self, code, details):
        super().__init__("stream ended: %s %r" % (code, details))
        self.code, self.details = code, details


class MeshStream:
    """/ward.v1.Mesh/Connect through grpc's generic stream_stream stub. A reader thread queues
    every AgentMessage; recv() waits (bounded) for the next one."""

    def __init__(self, ch, pb, deadline=None, metadata=None):
        """deadline: a gRPC deadline (grpc-timeout) in seconds, or None (the default: every wait
        is bounded by recv()'s timeout and close() cancels the call)."""
        self.pb = pb
        self._out = queue.Queue()
        self._in = queue.Queue()
        self.ended = None
        stub = ch.stream_stream("/ward.v1.Mesh/Connect",
                                request_serializer=pb.mesh.ProxyMessage.SerializeToString,
                                response_deserializer=pb.mesh.AgentMessage.FromString)
        self.call = stub(self._requests(), timeout=h.T(deadline) if deadline else None,
                         metadata=metadata)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _requests(self):
        while True:
            m = self._out.get()
            if m is None:
                return
            yield m

    def _read(self):
        import grpc
        try:
            for m in self.call:
                self._in.put(m)
            end = (self.call.code(), self.call.details())
        except grpc.RpcError as e:
            end = (e.code(), e.details())
        except Exception as e:  # noqa: BLE001
            end = ("exception", repr(e))
        self._in.put(StreamEnded(*end))

    def send(self, msg):
        self._out.put(msg)

    def hello(self, token=""):
        self.send(self.pb.mesh.ProxyMessage(hello=self.pb.mesh.Hello(token=token,
                                                                     proxy_version="test")))

    def csr(self, der, request_id):
        self.send(self.pb.mesh.ProxyMessage(csr=self.pb.mesh.CsrRequest(request_id=request_id,
                                                                        csr_der=der)))

    def ack(self, kind, version, accepted=True, error=""):
        self.send(self.pb.mesh.ProxyMessage(ack=self.pb.mesh.Ack(kind=kind, version=version,
                                                                 accepted=accepted, error=error)))

    def recv(self, timeout=5.0):
        """The next AgentMessage; raises StreamEnded if the stream ended, h.Timeout if nothing
        came within timeout."""
        if self.ended is not None:
            raise self.ended
        try:
            m = self._in.get(timeout=h.T(timeout))
        except queue.Empty:
            raise h.Timeout("no AgentMessage within %.1fs" % h.T(timeout))
        if isinstance(m, StreamEnded):
            self.ended = m
            raise m
        return m

    def recv_kind(self, kind, timeout=5.0, seen=None):
        """Messages until one whose oneof is kind ('svid', 'bundle', 'policy', 'status');
        the skipped ones are appended to seen (a list) if given."""
        deadline = time.monotonic() + h.T(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.Timeout("no %s message within %.1fs" % (kind, h.T(timeout)))
            m = self.recv(left / h.SCALE)
            if m.WhichOneof("msg") == kind:
                return m
            if seen is not None:
                seen.append(m)

    def wait_end(self, timeout=5.0):
        """Drains messages until the stream ends; returns (StreamEnded, [messages])."""
        msgs = []
        deadline = time.monotonic() + h.T(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.Timeout("stream did not end within %.1fs" % h.T(timeout))
            try:
                msgs.append(self.recv(left / h.SCALE))
            except StreamEnded as e:
                return e, msgs

    def close(self):
        self._out.put(None)
        try:
            self.call.cancel()
        except Exception:  # noqa: BLE001
            pass
        self._t.join(h.T(5))


def unary_stream(ch, method, req, resp_cls, metadata=WL_MD, deadline=None):
    """Starts a server-streaming call; returns the call (an iterator of responses). deadline: a
    gRPC deadline in seconds, or None (bound the wait with first_response's timeout instead)."""
    stub = ch.unary_stream(method, request_serializer=type(req).SerializeToString,
                           response_deserializer=resp_cls.FromString)
    return stub(req, timeout=h.T(deadline) if deadline else None, metadata=metadata)


def first_response(call, timeout=10.0):
    """The first message of a streaming call, or raises grpc.RpcError (CANCELLED if nothing came
    within timeout); cancels the call after."""
    guard = threading.Timer(h.T(timeout), call.cancel)
    guard.daemon = True
    guard.start()
    try:
        return next(iter(call))
    finally:
        guard.cancel()
        call.cancel()


def fetch_x509svid(ch, pb, metadata=WL_MD, timeout=10.0):
    return first_response(unary_stream(ch, "/SpiffeWorkloadAPI/FetchX509SVID",
                                       pb.wl.X509SVIDRequest(), pb.wl.X509SVIDResponse,
                                       metadata), timeout)


def fetch_x509bundles(ch, pb, metadata=WL_MD, timeout=10.0):
    return first_response(unary_stream(ch, "/SpiffeWorkloadAPI/FetchX509Bundles",
                                       pb.wl.X509BundlesRequest(), pb.wl.X509BundlesResponse,
                                       metadata), timeout)


def rpc_error(fn):
    """Runs fn(); returns (code, details) of the grpc.RpcError it raised, or (None, result)."""
    import grpc
    try:
        return None, fn()
    except grpc.RpcError as e:
        return e.code(), e.details()


# --------------------------------------------------------------------------- other uids

_NOBODY_PRELUDE = r"""
import os, sys, json
if %(uid)r is not None:
    os.setgroups([])
    os.setgid(%(uid)r)
    os.setuid(%(uid)r)
sys.dont_write_bytecode = True
sys.path[:0] = %(path)r
import grpc
import agentharness as ah
pb = ah.protos()
"""


def run_as(uid, body, sock, timeout=30.0):
    """Runs python code as uid (set before grpc is imported; None: stay root) in a child
    process; the code sees `pb` (generated modules), `ah`, `grpc`, `SOCK`, and must print one JSON
    line last (it may os._exit() after flushing, to skip grpc's teardown). Returns that JSON
    object. The child is started as root and drops privileges itself (no preexec_fn in this
    multi-threaded process)."""
    pb = protos()
    path = [pb.dir, os.path.dirname(os.path.abspath(__file__))]
    code = (_NOBODY_PRELUDE % {"uid": uid, "path": path}
            + "SOCK = %r\n" % sock + body)
    env = {"PATH": "/usr/bin:/bin", "WARD_AGENT_PB_DIR": pb.dir, "HOME": "/",
           "WARD_KEEP_TMP": "1"}  # the child must not delete the parent's temp dirs
    if "WARD_TIMEOUT_SCALE" in os.environ:
        env["WARD_TIMEOUT_SCALE"] = os.environ["WARD_TIMEOUT_SCALE"]
    p = subprocess.run([PYTHON, "-c", code], env=env, cwd="/", stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=h.T(timeout))
    out = p.stdout.decode("utf-8", "replace").strip().splitlines()
    if p.returncode != 0 or not out:
        raise AssertionError("child as uid %d failed (exit %d):\n%s\n%s" %
                             (uid, p.returncode, p.stdout.decode(errors="replace")[-2000:],
                              p.stderr.decode(errors="replace")[-3000:]))
    return json.loads(out[-1])


# --------------------------------------------------------------------------- tokens

class TokenIssuer:
    """A Kubernetes-like service-account token issuer: an RSA-2048 key (kid rsa-1), its JWKS file
    (dir/jwks.json) and tokens shaped like the kubelet's projected ones (tokens.claims)."""

    def __init__(self, d, issuer=TOKEN_ISSUER):
        from cryptography.hazmat.primitives.asymmetric import rsa
        self.dir = d
        self.issuer = issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks = os.path.join(d, "jwks.json")
        with open(self.jwks, "w") as f:
            json.dump({"keys": [tokens.jwk_rsa(self.key, "rsa-1")]}, f)
        os.chmod(self.jwks, 0o644)

    def mint(self, ns, sa, key=None, **over):
        now = int(time.time())
        c = tokens.claims(now, ns=ns, sa=sa, **over)
        c.setdefault("iss", self.issuer)
        return tokens.sign_rs256(key or self.key, {"alg": "RS256", "kid": "rsa-1"}, c)

    def write(self, name, token, mode=0o644):
        path = os.path.join(self.dir, name)
        tokens.write(self.dir, name, token, mode)
        return path


# --------------------------------------------------------------------------- CSRs

def make_csr(uri=None, key=None):
    """(DER CSR, key). uri: the URI SAN to request (None: no SAN). key: default fresh P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ward test")]))
    if uri is not None:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                            critical=False)
    csr = b.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER), key


def certs_from_concat(der):
    """Parses concatenated DER certificates (Workload API fields)."""
    from cryptography import x509
    out = []
    i = 0
    while i < len(der):
        if der[i] != 0x30:
            raise AssertionError("not a DER SEQUENCE at offset %d" % i)
        ln = der[i + 1]
        if ln < 0x80:
            hl, n = 2, ln
        else:
            k = ln & 0x7F
            hl, n = 2 + k, int.from_bytes(der[i + 2:i + 2 + k], "big")
        out.append(x509.load_der_x509_certificate(der[i:i + hl + n]))
        i += hl + n
    return out


def uri_sans(cert):
    from cryptography import x509
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def verify_signed_by(cert, issuer):
    """Raises unless cert's signature verifies with issuer's public key (EC or RSA)."""
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    pub = issuer.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(cert.signature, cert.tbs_certificate_bytes,
                   ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(pub, rsa.RSAPublicKey):
        pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                   cert.signature_hash_algorithm)
    else:
        raise AssertionError("unexpected issuer key type %r" % type(pub))
    if cert.issuer != issuer.subject:
        raise AssertionError("issuer name %s != %s" % (cert.issuer.rfc4514_string(),
                                                       issuer.subject.rfc4514_string()))


def chain_verifies(chain, roots):
    """True if chain (leaf first) verifies up to one of roots (signatures + names + validity)."""
    now = datetime.datetime.utcnow()
    for c in chain:
        if not (c.not_valid_before <= now <= c.not_valid_after):
            return False
    for i in range(len(chain) - 1):
        try:
            verify_signed_by(chain[i], chain[i + 1])
        except Exception:  # noqa: BLE001
            return False
    for r in roots:
        try:
            verify_signed_by(chain[-1], r)
            return True
        except Exception:  # noqa: BLE001
            continue
    return False


def der(cert):
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- ward-agent

class Proc(h.Proxy):
    """harness.Proxy with an optional uid/gid to run as (subprocess user=/group=, no preexec_fn)."""

    def __init__(self, args, uid=None, **kw):
        super().__init__(args, **kw)
        self.uid = uid

    def start(self, wait_ready=True, timeout=15.0):
        if self.uid is None:
            return super().start(wait_ready, timeout)
        if not os.path.exists(self.binary):
            raise h.SkipTest("binary not found at %s" % self.binary)
        for f in (self._out.name, self._err.name):
            os.chmod(f, 0o666)
        with open(self._out.name, "ab") as out, open(self._err.name, "ab") as err:
            self.proc = subprocess.Popen([self.binary] + self.args, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, user=self.uid, group=self.uid,
                                         extra_groups=[], cwd="/")
        with h._PROCS_LOCK:
            h._PROCS.append(self)
        h.Results.note_proxy(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self


class Agent(Proc):
    """One ward-agent with its own temp dir: state/ (CA), agent.sock, workloads, optional JWKS and
    policy dir. .restart() starts it again with the same state dir, socket and admin port."""

    def __init__(self, workloads=None, issuer=None, audience=None, policy_dir=None,
                 svid_ttl=None, workload_svid_ttl=None, log_level="debug", extra=(),
                 name="ward-agent", td=TD, mesh_default="allow"):
        self.root = h.mkdtemp(prefix="ward-agent-")
        os.chmod(self.root, 0o755)  # other uids must reach the socket (the agent makes it 0666)
        self.state = os.path.join(self.root, "state")
        self.sock = os.path.join(self.root, "agent.sock")
        self.td = td
        args = ["--trust-domain", td, "--state-dir", self.state, "--listen", self.sock,
                "--log-level", log_level]
        self.workloads = None
        if workloads is not None:
            self.workloads = os.path.join(self.root, "workloads")
            with open(self.workloads, "w") as f:
                if isinstance(workloads, dict):
                    for k, v in workloads.items():
                        f.write("%s %s\n" % (k, v))
                else:
                    f.write(workloads)
            args += ["--workloads", self.workloads]
        if issuer is not None:
            args += ["--jwks", issuer.jwks, "--token-issuer", issuer.issuer]
        if audience is not None:
            args += ["--token-audience", audience]
        if policy_dir is not None:
            args += ["--policy-dir", policy_dir]
        if svid_ttl is not None:
            args += ["--svid-ttl", svid_ttl]
        if workload_svid_ttl is not None:
            args += ["--workload-svid-ttl", workload_svid_ttl]
        args += list(extra)
        # Tests about identity, not authorization, run with an allowing mesh default; the shipped
        # default (deny) is tested where policy is the subject (mesh_default=None keeps it).
        if mesh_default is not None and "--mesh-default" not in args:
            args += ["--mesh-default", mesh_default]
        super().__init__(args, name=name, binary=AGENT)

    def start(self, wait_ready=True, timeout=15.0):
        super().start(wait_ready=False)
        # the agent outlives the test that (re)started it; harness kills it at exit
        cur = h.Results._current
        if cur is not None and self in cur._proxies:
            cur._proxies.remove(self)
        if wait_ready:
            self.wait_ready(timeout)
            h.wait_for(lambda: os.path.exists(self.sock), timeout, what="agent socket")
        return self

    def restart(self, timeout=15.0):
        return self.start(True, timeout)

    def sigkill(self):
        self.proc.kill()
        self.proc.wait(h.T(10))

    def events(self, event, since=0):
        return [x for x in self.log_records(since) if x.get("event") == event]


def wait_metric(proc, name, pred, timeout=10.0, what=None, **labels):
    """Polls proc's /metrics until pred(value of name{labels}) holds; returns the value."""
    last = [None]

    def check():
        last[0] = h.metric_value(proc.metrics(), name, **labels)
        return pred(last[0])

    try:
        h.wait_for(check, timeout, interval=0.1, what=what or name)
    except h.Timeout as e:
        raise h.Timeout("%s (last value %r)" % (e, last[0]))
    return last[0]


def sanitizer_reports(*procs):
    """Lines of sanitizer reports in the stderr of procs: [(name, line)]."""
    out = []
    for p in procs:
        for line in p.stderr_text().splitlines():
            if ("ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                    or "runtime error:" in line or "ERROR: UndefinedBehaviorSanitizer" in line):
                out.append((p.name, line.strip()))
    return out


class Traffic:
    """Continuous echo round trips (one new connection each) through host:port on a thread, until
    .stop(); counts successes and failures (first few errors kept)."""

    def __init__(self, host, port, pause=0.01, timeout=5.0):
        self.host, self.port, self.pause, self.timeout = host, port, pause, timeout
        self.ok = 0
        self.fail = 0
        self.errors = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                h.echo_roundtrip(self.host, self.port, b"req %d\n" % i, timeout=self.timeout)
                self.ok += 1
            except Exception as e:  # noqa: BLE001
                self.fail += 1
                if len(self.errors) < 5:
                    self.errors.append("%.3f %r" % (time.time(), e))
            time.sleep(self.pause)

    def stop(self):
        self._stop.set()
        self._t.join(h.T(self.timeout * 2 + 5))
        if self._t.is_alive():
            raise h.Timeout("traffic thread did not stop")
        return self

    def assert_clean(self, min_ok, what):
        assert self.fail == 0, "%d of %d requests failed %s: %s" % (
            self.fail, self.fail + self.ok, what, self.errors)
        assert self.ok >= min_ok, "only %d requests succeeded %s" % (self.ok, what)


class ConfigMapDir:
    """A directory laid out like a Kubernetes ConfigMap volume: DIR/..2026_MM_DD_hh_mm_ss.N/ holds
    the files, DIR/..data -> that dir, and DIR/NAME -> ..data/NAME for every key. .publish(files)
    swaps in a new version the way the kubelet does (new dir, ..data_tmp symlink renamed over
    ..data, top-level links added/removed, old dir deleted)."""

    def __init__(self, files=None):
        self.dir = h.mkdtemp(prefix="ward-policy-")
        os.chmod(self.dir, 0o755)
        self.gen = 0
        self.current = None
        if files is not None:
            self.publish(files)

    def publish(self, files):
        """files: {name: bytes or str}."""
        self.gen += 1
        ts = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime())
        name = "%s.%d%06d" % (ts, self.gen, os.getpid() % 1000000)
        d = os.path.join(self.dir, name)
        os.mkdir(d, 0o755)
        for k, v in files.items():
            with open(os.path.join(d, k), "wb") as f:
                f.write(v.encode() if isinstance(v, str) else v)
        tmp = os.path.join(self.dir, "..data_tmp")
        os.symlink(name, tmp)
        os.replace(tmp, os.path.join(self.dir, "..data"))       # the atomic swap
        for k in files:
            link = os.path.join(self.dir, k)
            if not os.path.islink(link):
                os.symlink(os.path.join("..data", k), link)
        for k in os.listdir(self.dir):
            link = os.path.join(self.dir, k)
            if not k.startswith("..") and os.path.islink(link) and k not in files:
                os.unlink(link)
        if self.current is not None:
            import shutil
            shutil.rmtree(os.path.join(self.dir, self.current), ignore_errors=True)
        self.current = name
        return d
