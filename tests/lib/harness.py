"""Integration-test helpers for ward-proxy (stdlib only).

    import harness as h
    r = h.Results()
    ...
    @r.test
    def test_something(): ...
    r.finish()      # prints "N passed, N failed" and exits non-zero on failure

Environment: WARD_PROXY (path of ward-proxy, default build/proxy/ward-proxy in the repo),
WARD_BUILD_DIR (default build/ in the repo), WARD_TIMEOUT_SCALE (multiply every wait, default 1).
"""
import atexit
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD_DIR = os.environ.get("WARD_BUILD_DIR") or os.path.join(REPO, "build")
PROXY = os.environ.get("WARD_PROXY") or os.path.join(BUILD_DIR, "proxy", "ward-proxy")
SCALE = float(os.environ.get("WARD_TIMEOUT_SCALE", "1") or 1)


def T(seconds):
    """A timeout, scaled by WARD_TIMEOUT_SCALE."""
    return seconds * SCALE


class SkipTest(Exception):
    pass


class Timeout(AssertionError):
    pass


# --------------------------------------------------------------------------- addresses, ports

def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the hard limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def have_ipv6():
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


_GIVEN_PORTS = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host="127.0.0.1"):
    """A currently free TCP port on host, for a listener the test starts next. Taken below the
    kernel's ephemeral range when there is room: a port the kernel handed out by bind(0) can be
    taken by the next outgoing connection's ephemeral port before the proxy binds it (seen after
    the load test's 10 000 connections), which no port outside that range can. Never the same port
    twice in one test process."""
    import random
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if port in _GIVEN_PORTS:
                continue
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                continue
            finally:
                s.close()
            _GIVEN_PORTS.add(port)
            return port
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        port = s.getsockname()[1]
        _GIVEN_PORTS.add(port)
        return port
    finally:
        s.close()


def addr(host, port):
    """Format an address the way ward-proxy expects: IP:PORT or [IPv6]:PORT."""
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Poll pred() until it returns a truthy value; returns it, or raises Timeout."""
    deadline = time.monotonic() + T(timeout)
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            raise Timeout("timed out after %.1fs waiting for %s%s" %
                          (T(timeout), what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------- processes

_PROCS = []
_PROCS_LOCK = threading.Lock()


def _kill_all():
    with _PROCS_LOCK:
        procs = list(_PROCS)
    for p in procs:
        p.kill()


_TMP = []


def _cleanup_tmp():
    if os.environ.get("WARD_KEEP_TMP"):
        return
    import shutil
    for path in _TMP:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def mkdtemp(prefix="ward-"):
    """A temp dir removed at exit (unless WARD_KEEP_TMP is set)."""
    d = tempfile.mkdtemp(prefix=prefix)
    _TMP.append(d)
    return d


atexit.register(_cleanup_tmp)
atexit.register(_kill_all)  # atexit runs in reverse order: processes die before their files go


def _on_signal(signum, frame):  # make SIGTERM/SIGINT of the test run the atexit cleanup
    _kill_all()
    _cleanup_tmp()
    os._exit(128 + signum)


for _s in (signal.SIGTERM, signal.SIGHUP):
    try:
        signal.signal(_s, _on_signal)
    except (ValueError, OSError):
        pass


def http_get(url, timeout=2.0):
    """GET url; returns (status, body bytes). HTTP error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=T(timeout)) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return e.code, body


class Proxy:
    """One ward-proxy process. stderr goes to a temp file (see .stderr_text())."""

    def __init__(self, args, env=None, admin=True, name="ward-proxy", binary=None,
                 clear_env=False, mesh_default="allow"):
        self.name = name
        self.binary = binary or PROXY
        self.admin_port = None
        args = list(args)
        # A file-identity proxy without --policy applies the mesh default, deny when shipped. Tests
        # about the data path and identity run with "allow"; policy tests pass mesh_default=None
        # (or their own --policy / --mesh-default) to get the real default.
        if (mesh_default is not None and binary is None and "--policy" not in args and
                "--mesh-default" not in args and "--agent" not in args and
                "WARD_MESH_DEFAULT" not in (env or {})):
            args += ["--mesh-default", mesh_default]
        if admin is True:
            self.admin_port = free_port()
            args += ["--admin", "127.0.0.1:%d" % self.admin_port]
        elif isinstance(admin, int):
            self.admin_port = admin
        self.args = args
        e = {} if clear_env else {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
        e.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                e[k] = os.environ[k]
        if env:
            e.update(env)
        self.env = e
        self.proc = None
        self._err = tempfile.NamedTemporaryFile(prefix="ward-%s-" % name, suffix=".stderr",
                                                delete=False)
        self._out = tempfile.NamedTemporaryFile(prefix="ward-%s-" % name, suffix=".stdout",
                                                delete=False)
        self._err.close()
        self._out.close()
        _TMP.extend([self._err.name, self._out.name])

    # -- lifecycle
    def start(self, wait_ready=True, timeout=15.0):
        if not os.path.exists(self.binary):
            raise SkipTest("ward-proxy binary not found at %s (set WARD_PROXY)" % self.binary)
        with open(self._out.name, "ab") as out, open(self._err.name, "ab") as err:
            self.proc = subprocess.Popen([self.binary] + self.args, env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
        with _PROCS_LOCK:
            _PROCS.append(self)
        Results.note_proxy(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15.0):
        if self.admin_port is None:
            raise ValueError("no admin port to poll")

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with status %s before becoming ready:\n%s" %
                                     (self.name, self.proc.returncode, self.stderr_text()[-4000:]))
            try:
                return self.get("/ready", timeout=1.0)[0] == 200
            except OSError:
                return False

        deadline = time.monotonic() + T(timeout)
        while True:
            try:
                if ready():
                    return self
            except AssertionError:
                raise
            if time.monotonic() > deadline:
                raise Timeout("%s not ready on admin port %s after %.1fs:\n%s" %
                              (self.name, self.admin_port, T(timeout),
                               self.stderr_text()[-4000:]))
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout=10.0):
        """Wait for exit; returns the exit status, or None on timeout."""
        try:
            return self.proc.wait(T(timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL if needed. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(T(timeout))
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(timeout=5)

    # -- output
    def stderr_text(self):
        try:
            with open(self._err.name, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self):
        try:
            with open(self._out.name, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_size(self):
        try:
            return os.path.getsize(self._err.name)
        except OSError:
            return 0

    def log_records(self, since=0):
        """JSON objects logged on stderr (from byte offset since); non-JSON lines are skipped."""
        out = []
        text = self.stderr_text().encode("utf-8", "replace")[since:].decode("utf-8", "replace")
        for line in text.splitlines():
            line = line.strip()
            i = line.find("{")
            if i < 0:
                continue
            try:
                obj = json.loads(line[i:])
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    # -- admin
    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.admin_port, path)

    def get(self, path, timeout=2.0):
        return http_get(self.url(path), timeout)

    def metrics(self):
        st, body = self.get("/metrics", timeout=5.0)
        if st != 200:
            raise AssertionError("%s /metrics returned %d" % (self.name, st))
        return parse_metrics(body.decode("utf-8", "replace"))

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)


# --------------------------------------------------------------------------- metrics

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(v):
    return v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def parse_metrics(text):
    """Prometheus text format -> {(name, frozenset({(label, value), ...})): float}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise ValueError("unparseable metrics line: %r" % line)
        name, _, labels, value = m.group(1), m.group(2), m.group(3), m.group(4)
        lab = []
        if labels:
            pos = 0
            while pos < len(labels):
                lm = _LABEL_RE.match(labels, pos)
                if not lm:
                    raise ValueError("unparseable labels in metrics line: %r" % line)
                lab.append((lm.group(1), _unescape(lm.group(2))))
                pos = lm.end()
        v = {"+Inf": float("inf"), "-Inf": float("-inf"), "NaN": float("nan")}.get(value)
        out[(name, frozenset(lab))] = float(value) if v is None else v
    return out


def metric_value(metrics, name, **labels):
    """Sum of the samples of name whose labels include all of labels (0.0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in metrics.items() if n == name and want <= lab)


def metric_present(metrics, name, **labels):
    want = set(labels.items())
    return any(n == name and want <= lab for (n, lab) in metrics)


# --------------------------------------------------------------------------- backends

class _Server:
    def __init__(self, host, handler):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.addr = addr(host, self.port)
        self._handler = handler
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self.bytes_received = 0
        self.open = 0
        self._conns = set()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open += 1
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(T(120))
            self._handler(self, c)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open -= 1
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def add_bytes(self, n):
        with self._lock:
            self.bytes_received += n

    def stats(self):
        with self._lock:
            return {"connections": self.connections, "bytes": self.bytes_received,
                    "open": self.open}

    def close(self):
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _echo_handler(server, c):
    while True:
        d = c.recv(262144)
        if not d:
            break
        server.add_bytes(len(d))
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)  # half-close back once the peer has half-closed


class EchoServer(_Server):
    """Threaded TCP echo backend; on EOF from the client it shuts down its write side."""

    def __init__(self, host="127.0.0.1"):
        super().__init__(host, _echo_handler)


class GreetThenSinkServer(_Server):
    """Sends greeting, shuts down its write side at once, then reads until EOF; the number of bytes
    read per connection is appended to .received (for testing half-close server->client)."""

    def __init__(self, greeting=b"hello from backend\n", host="127.0.0.1"):
        self.greeting = greeting
        self.received = []
        super().__init__(host, self._h)

    def _h(self, server, c):
        c.sendall(self.greeting)
        c.shutdown(socket.SHUT_WR)
        n = 0
        while True:
            d = c.recv(65536)
            if not d:
                break
            n += len(d)
            server.add_bytes(len(d))
        with self._lock:
            self.received.append(n)


class TLSEchoServer(_Server):
    """A TLS server (python ssl) presenting cert/key, echoing after the handshake: stands in for a
    peer sidecar presenting arbitrary certificates. Client certs are requested and verified against
    ca when given. .handshakes_ok / .handshake_errors count outcomes."""

    def __init__(self, cert, key, ca=None, host="127.0.0.1"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if ca:
            ctx.load_verify_locations(cafile=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx = ctx
        self.handshakes_ok = 0
        self.handshake_errors = []
        super().__init__(host, self._h)

    def _h(self, server, c):
        c.settimeout(T(10))
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self._lock:
                self.handshake_errors.append(repr(e))
            return
        with self._lock:
            self.handshakes_ok += 1
        try:
            _echo_handler(server, t)
        except (ssl.SSLError, OSError):
            pass
        finally:
            t.close()


class StallSink(_Server):
    """Accepts, reads nothing until .release() is called, then reads (and discards) until EOF;
    bytes read per connection are appended to .received. For backpressure tests."""

    def __init__(self, host="127.0.0.1"):
        self.go = threading.Event()
        self.received = []
        super().__init__(host, self._h)

    def release(self):
        self.go.set()

    def _h(self, server, c):
        self.go.wait(T(60))
        n = 0
        while True:
            d = c.recv(262144)
            if not d:
                break
            n += len(d)
            server.add_bytes(len(d))
        with self._lock:
            self.received.append(n)


def rss_bytes(pid):
    """Resident set size of a process (Linux /proc)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class HTTPServer:
    """Tiny threaded HTTP/1.1 backend: GET any path -> 200 with body (default b"ok\\n")."""

    def __init__(self, body=b"ok\n", host="127.0.0.1"):
        outer = self
        self.body = body
        self.requests = 0

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *a):
                pass

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.httpd = S((host, 0), H)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.addr = addr(host, self.port)
        self._t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                   daemon=True)
        self._t.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def http_request(host, port, path="/", timeout=5.0):
    """Plain HTTP GET through e.g. an outbound listener; returns (status, body)."""
    c = http.client.HTTPConnection(host, port, timeout=T(timeout))
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# --------------------------------------------------------------------------- TCP clients

def connect(host, port, timeout=5.0):
    s = socket.create_connection((host, port), timeout=T(timeout))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n, timeout=10.0):
    s.settimeout(T(timeout))
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(min(262144, n - len(buf)))
        if not d:
            raise AssertionError("EOF after %d of %d bytes" % (len(buf), n))
        buf += d
    return bytes(buf)


def recv_until_eof(s, timeout=10.0, limit=1 << 30):
    s.settimeout(T(timeout))
    buf = bytearray()
    while len(buf) < limit:
        d = s.recv(262144)
        if not d:
            return bytes(buf)
        buf += d
    raise AssertionError("more than %d bytes before EOF" % limit)


def echo_roundtrip(host, port, payload=b"ping", timeout=5.0):
    """Connect, send payload, read it back, close. Raises on any mismatch."""
    s = connect(host, port, timeout)
    try:
        s.sendall(payload)
        got = recv_exact(s, len(payload), timeout)
        if got != payload:
            raise AssertionError("echo mismatch")
        return True
    finally:
        s.close()


def closed_without_data(s, timeout=5.0):
    """True if the peer closes (EOF or reset) before sending any byte; False if data arrives.
    Raises Timeout if nothing happens within timeout."""
    s.settimeout(T(timeout))
    try:
        d = s.recv(65536)
    except socket.timeout:
        raise Timeout("connection neither closed nor answered within %.1fs" % T(timeout))
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    return d == b""


class Stream:
    """Send `total` pseudo-random bytes on s while concurrently reading everything back; compares
    sha256 of the two directions. Use .run() (blocking)."""

    def __init__(self, s, total, chunk=65536, half_close=True, timeout=60.0):
        self.s, self.total, self.chunk, self.half_close, self.timeout = s, total, chunk, half_close, timeout
        self.sent_hash = hashlib.sha256()
        self.recv_hash = hashlib.sha256()
        self.received = 0
        self.sent = 0
        self.send_error = None

    def _send(self):
        try:
            left = self.total
            seed = os.urandom(32)
            i = 0
            while left > 0:
                # cheap pseudo-random data: a fresh 64 KiB random block every 16 chunks, mixed
                if i % 16 == 0:
                    block = os.urandom(self.chunk)
                blk = hashlib.sha256(seed + i.to_bytes(8, "big")).digest() + block[32:]
                n = min(left, len(blk))
                d = blk[:n]
                self.sent_hash.update(d)
                self.s.sendall(d)
                self.sent += n
                left -= n
                i += 1
            if self.half_close:
                self.s.shutdown(socket.SHUT_WR)
        except Exception as e:  # noqa: BLE001
            self.send_error = e

    def run(self, stall=15.0):
        """Stream; fails if no byte arrives for `stall` seconds or the whole exchange takes longer
        than the timeout. Returns True if every byte came back intact."""
        self.s.settimeout(T(min(stall, self.timeout)))
        t = threading.Thread(target=self._send, daemon=True)
        t.start()
        deadline = time.monotonic() + T(self.timeout)
        ok = False
        try:
            while True:
                if time.monotonic() > deadline:
                    raise Timeout("stream of %d bytes each way: %d sent, %d received after %.0fs" %
                                  (self.total, self.sent, self.received, T(self.timeout)))
                try:
                    d = self.s.recv(262144)
                except socket.timeout:
                    raise Timeout("stream of %d bytes each way stalled: %d sent, %d received, "
                                  "nothing received for %.0fs" % (self.total, self.sent,
                                                                  self.received, T(stall)))
                if not d:
                    break
                self.recv_hash.update(d)
                self.received += len(d)
                if not self.half_close and self.received >= self.total:
                    break
            ok = True
        finally:
            if not ok:  # unblock the sender
                try:
                    self.s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            t.join(T(self.timeout) if ok else 5)
        if self.send_error:
            raise AssertionError("send failed after %d bytes: %r" % (self.sent, self.send_error))
        if t.is_alive():
            raise Timeout("sender did not finish")
        return self.received == self.total and \
            self.recv_hash.digest() == self.sent_hash.digest()


# --------------------------------------------------------------------------- TLS client

def tls_context(cert=None, key=None, ca=None, verify_server=True):
    """Client SSLContext. The server's identity is a URI SAN, so hostname checking is off; the chain
    is still verified against ca when verify_server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if verify_server and ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(host, port, cert=None, key=None, ca=None, verify_server=True, timeout=5.0):
    """Connect with TLS (handshake done). Raises ssl.SSLError / OSError on failure."""
    ctx = tls_context(cert, key, ca, verify_server)
    raw = socket.create_connection((host, port), timeout=T(timeout))
    try:
        s = ctx.wrap_socket(raw, server_hostname=None)
        return s
    except Exception:
        raw.close()
        raise


def tls_probe(host, port, cert=None, key=None, ca=None, payload=b"probe\n", timeout=5.0,
              verify_server=True):
    """Try a full mTLS exchange against an inbound listener fronting an echo backend.

    Returns ("ok", peer_cert_der) if payload came back, ("refused", detail) if the handshake failed
    or the connection was closed/alerted before any data came back (with TLS 1.3 a client-cert
    rejection arrives after the client's side of the handshake is complete)."""
    try:
        s = tls_connect(host, port, cert, key, ca, verify_server, timeout)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        if isinstance(e, socket.timeout):
            return "timeout", "handshake timed out"
        return "refused", "handshake: %r" % e
    try:
        peer = s.getpeercert(binary_form=True)
        try:
            s.sendall(payload)
            s.settimeout(T(timeout))
            buf = b""
            while len(buf) < len(payload):
                d = s.recv(len(payload) - len(buf))
                if not d:
                    return "refused", "EOF after %d bytes" % len(buf)
                buf += d
        except socket.timeout:
            return "timeout", "no answer within %.1fs" % T(timeout)
        except (ssl.SSLError, ConnectionError, OSError) as e:
            return "refused", "after handshake: %r" % e
        return ("ok", peer) if buf == payload else ("refused", "garbled echo")
    finally:
        try:
            s.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- misc helpers

def cert_not_after(path):
    """notAfter of the first certificate in a PEM file, as Unix seconds (uses cryptography)."""
    import calendar
    from cryptography import x509
    with open(path, "rb") as f:
        c = x509.load_pem_x509_certificate(f.read())
    return calendar.timegm(c.not_valid_after.utctimetuple())


def cert_der(path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)


def atomic_write(path, data):
    """Write data to path via temp file + rename (same directory)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        st = os.stat(path)
        os.chmod(tmp, st.st_mode & 0o777)
    except OSError:
        pass
    os.replace(tmp, path)


def atomic_copy(src, dst):
    with open(src, "rb") as f:
        atomic_write(dst, f.read())


def certs_dir(trust_domain="test.local"):
    """Mint the standard certificate set into a fresh temp dir; returns its path."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import certs  # noqa: E402
    d = mkdtemp(prefix="ward-certs-")
    certs.mint_all(d, trust_domain)
    return d


def spiffe(sa, td="test.local", ns="default"):
    return "spiffe://%s/ns/%s/sa/%s" % (td, ns, sa)


class Pair:
    """echo/app backend <- inbound proxy <- mTLS <- outbound proxy <- client.

    .out_port is the plain-TCP port the test connects to; .in_port the mTLS inbound listener."""

    def __init__(self, certs, backend_addr, host="127.0.0.1", identity=None,
                 in_cert="server", out_cert="client", in_ca="ca.pem", out_ca="ca.pem",
                 in_extra=(), out_extra=(), start=True):
        self.host = host
        self.in_port = free_port(host)
        self.out_port = free_port(host)
        identity = identity or spiffe("backend")
        j = lambda n: os.path.join(certs, n)  # noqa: E731
        self.inbound = Proxy(["--cert", j(in_cert + ".pem"), "--key", j(in_cert + "-key.pem"),
                              "--ca", j(in_ca),
                              "--inbound", "%s=%s" % (addr(host, self.in_port), backend_addr)]
                             + list(in_extra), name="inbound")
        self.outbound = Proxy(["--cert", j(out_cert + ".pem"), "--key", j(out_cert + "-key.pem"),
                               "--ca", j(out_ca),
                               "--outbound", "%s=%s,identity=%s" % (addr(host, self.out_port),
                                                                    addr(host, self.in_port),
                                                                    identity)]
                              + list(out_extra), name="outbound")
        if start:
            self.start()

    def start(self):
        self.inbound.start()
        self.outbound.start()
        return self

    def stop(self):
        self.outbound.stop(5)
        self.inbound.stop(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- results

class Results:
    """Runs test functions, prints one 'N passed, N failed' line at the end."""
    _current = None

    def __init__(self, title=None):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.title = title or os.path.basename(sys.argv[0])
        self._proxies = []
        Results._current = self

    @classmethod
    def note_proxy(cls, p):
        if cls._current is not None:
            cls._current._proxies.append(p)

    def _dump_proxies(self):
        with _PROCS_LOCK:
            procs = [p for p in _PROCS if p.alive() and p not in self._proxies]
        for p in self._proxies + procs:
            txt = p.stderr_text()
            rc = p.proc.poll() if p.proc else None
            print("---- %s stderr (pid %s, %s) args: %s" %
                  (p.name, p.proc.pid if p.proc else "-",
                   "running" if rc is None else "exit %s" % rc, " ".join(p.args)))
            if len(txt) > 6000:
                print("[... %d bytes cut ...]" % (len(txt) - 6000))
                txt = txt[-6000:]
            print(txt.rstrip())
            print("---- end %s stderr" % p.name)

    def run(self, name, fn, *args, keep=False, **kwargs):
        """Run fn as one test. Proxies it started are killed afterwards unless keep (fixtures)
        and the test passed. Returns True if it passed."""
        self._proxies = []
        t0 = time.monotonic()
        ok = False
        try:
            fn(*args, **kwargs)
        except SkipTest as e:
            self.skipped += 1
            print("SKIP %s: %s" % (name, e), flush=True)
        except Exception:  # noqa: BLE001
            self.failed += 1
            print("FAIL %s (%.1fs)" % (name, time.monotonic() - t0))
            traceback.print_exc(file=sys.stdout)
            self._dump_proxies()
            sys.stdout.flush()
        else:
            ok = True
            self.passed += 1
            print("ok   %s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
        finally:
            if not (keep and ok):
                for p in self._proxies:
                    p.kill()
            self._proxies = []
        return ok

    def test(self, fn):
        """Decorator: run fn now as a test named after it."""
        self.run(fn.__name__, fn)
        return fn

    def fixture(self, fn):
        """Decorator: run fn now as a test; proxies it starts stay up if it passes."""
        self.run(fn.__name__, fn, keep=True)
        return fn

    def check(self, name, cond, detail=""):
        """Record a single assertion as its own test."""
        if cond:
            self.passed += 1
            print("ok   %s" % name, flush=True)
        else:
            self.failed += 1
            print("FAIL %s %s" % (name, detail), flush=True)
            self._dump_proxies()

    def finish(self):
        _kill_all()
        line = "%d passed, %d failed" % (self.passed, self.failed)
        if self.skipped:
            line += ", %d skipped" % self.skipped
        print(line, flush=True)
        sys.exit(1 if self.failed else 0)


def require_binary():
    if not os.path.exists(PROXY):
        print("ward-proxy not found at %s (set WARD_PROXY)" % PROXY)
        print("0 passed, 1 failed", flush=True)
        sys.exit(1)
