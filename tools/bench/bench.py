#!/usr/bin/python3
"""ward vs nginx vs HAProxy sidecar-pair benchmark. Driven by tools/bench/run (see there).

Per system (each proxy with one worker, same topology):
  load -> outbound sidecar (plain listener) -> mTLS 1.3 -> inbound sidecar -> shared nginx backend
Peer mode (--peer-mode): `tcp` (default) runs nginx (stream module) and HAProxy (mode tcp) as
layer-4 proxies like ward: every client connection is its own upstream mTLS connection and its own
backend connection. `http` runs them as HTTP proxies with pooled keep-alive upstream connections.
Measures: req/s + p50/p99 (small body, keep-alive), MiB/s (1 MiB body), new mTLS connections/s
on the inbound (client sends `Connection: close`; the outbound opens a new upstream connection per
client connection), and the memory of the pair (VmRSS and private = Private_Clean+Private_Dirty)
idle and with N idle connections held end-to-end (checked with ss on every hop).
--runs K repeats everything K times with fresh pairs and reports the median per cell.

Policy: every ward inbound runs with --policy FILE (ward's mesh default is deny). The L4 rows use
an ALLOW policy whose one rule has only `from: identities` (the outbound's SPIFFE id, read from the
minted client certificate) and the outbound lists the inbound's port in --server-first-ports, so
ward carries those rows as opaque TCP (ALPN ward-tcp) and decides once per connection, like the L4
peers. In --peer-mode http ward sniffs HTTP like in production and runs the HTTP policy below.

Policy-enforcing HTTP rows (ward vs HAProxy; nginx is not part of them), on separate pairs with
two mappings each (HTTP/1.1 -> the nginx backend, HTTP/2 -> an h2c nghttpd backend):
  ward:    the outbound sniffs the app's protocol and offers ALPN http/1.1 or h2; the inbound parses
           every request (llhttp / nghttp2) and decides it against an ALLOW policy with from
           identities + to methods [GET] + paths ["/*"] (so the path is normalised and matched).
  HAProxy: mode http on both ends, TLS 1.3 with client-certificate verification between them
           (ALPN http/1.1 or h2), the inbound evaluates `http-request deny unless { client
           certificate CN } { method GET } { path_beg / }` and sets a verified-identity header on
           every request, as ward does. HTTP/2: `bind ... proto h2` for the h2c side, h2 over TLS
           between the pair, `server ... proto h2` to the backend, streams multiplexed on
           shared connections (http-reuse always).
  HTTP/1.1: wrk -t1 -c32 keep-alive, small body: req/s, p50, p99.
  HTTP/2:   h2load -c4 -m100 -n N (h2c prior knowledge; N sized from a warm-up to last about
            --duration seconds, capped): req/s.
Before measuring, a GET must get 200 and a POST 403 through each pair (proof the rule is applied);
ward's ward_authz_decisions_total must grow by one per request during the phase.
After the runs, tools/bench/authz (the policy matcher microbenchmark), when present, is run once
and its lines are printed with the summary.
Python 3 standard library only.
"""
import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

SYSTEMS = ("ward", "nginx", "haproxy")
SMALL_PATH = "/"
BIG_PATH = "/1m"
BIG_SIZE = 1 << 20
WRK_TIMEOUT = "2s"
H2_REQUESTS_MIN, H2_REQUESTS_MAX = 20000, 3000000


class BenchError(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def warn(msg):
    print("bench: WARNING: " + msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- ports / processes

class Ports:
    def __init__(self, lo=21000, hi=21999):
        self.candidates = list(range(lo, hi + 1))
        random.shuffle(self.candidates)
        self.taken = set()

    def get(self):
        while self.candidates:
            p = self.candidates.pop()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            finally:
                s.close()
            self.taken.add(p)
            return p
        raise BenchError("no free port left in 21000-21999")


class Proc:
    """A foreground process in its own process group, output to a log file."""
    registry = []
    pids_file = None

    def __init__(self, name, argv, logpath, cwd=None):
        self.name, self.argv, self.logpath = name, argv, logpath
        self.cwd = cwd
        self.popen = None

    def start(self):
        logf = open(self.logpath, "ab")
        logf.write(("$ %s\n" % " ".join(self.argv)).encode())
        logf.flush()
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, cwd=self.cwd,
                                      start_new_session=True)
        logf.close()
        Proc.registry.append(self)
        if Proc.pids_file:
            with open(Proc.pids_file, "a") as f:
                f.write("%d\n" % self.popen.pid)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def exit_status(self):
        return None if self.popen is None else self.popen.poll()

    def stop(self):
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            warn("%s (pid %d) did not die" % (self.name, self.pid))

    def tail(self, n=40):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as e:
            return "(no log: %s)" % e
        return "\n".join(lines[-n:])


def describe_exit(st):
    if st is None:
        return "still running"
    if st < 0:
        try:
            return "killed by %s" % signal.Signals(-st).name
        except ValueError:
            return "killed by signal %d" % -st
    return "exited with status %d" % st


def stop_all():
    for p in reversed(Proc.registry):
        p.stop()


def descendants(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def vmrss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def private_kib(pid):
    """Private_Clean + Private_Dirty: pages only this process maps (excludes shared libraries'
    text and anything shared with a parent/child)."""
    total = 0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def tree_private_kib(root_pids):
    return sum(private_kib(p) for r in root_pids for p in descendants(r))


def established(sport=None, dport=None):
    """Number of established TCP connections with that local (sport) or remote (dport) port."""
    expr = "( sport = :%d )" % sport if sport is not None else "( dport = :%d )" % dport
    p = subprocess.run(["ss", "-Htn", "state", "established", expr], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    if p.returncode != 0:
        return None
    return sum(1 for ln in p.stdout.decode(errors="replace").splitlines() if ln.strip())


def tree_pss_kib(root_pids):
    return sum(pss_kib(p) for r in root_pids for p in descendants(r))


def tree_rss_kib(root_pids):
    total = 0
    for r in root_pids:
        for p in descendants(r):
            total += vmrss_kib(p)
    return total


def wait_port(port, proc_list, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in proc_list:
            if not p.alive():
                raise BenchError("%s %s before listening on %d"
                                 % (p.name, describe_exit(p.exit_status()), port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError("nothing listening on 127.0.0.1:%d after %.0fs" % (port, timeout))


def http_get(url, timeout=3.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


# ----------------------------------------------------------------------------- configs

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

NGINX_COMMON = """\
{load}worker_processes 1;
user root root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wconns}; }}
{stream}http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
{body}
}}
"""


def nginx_conf(d, body, nofile, conns, stream_body=None):
    """conns: connections to be held; worker_connections is sized for client + upstream side
    (nginx preallocates its connection array, so an oversized value inflates the idle RSS).
    stream_body: contents of a stream {} block (loads the stream module); with it, an empty
    body leaves out the http {} block."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, "tmp", sub), exist_ok=True)
    wconns = max(1024, min(nofile - 100, 2 * conns + 1024))
    path = os.path.join(d, "nginx.conf")
    txt = NGINX_COMMON.format(
        dir=d, nofile=nofile, wconns=wconns, body=body,
        load="load_module %s;\n" % NGINX_STREAM_MODULE if stream_body is not None else "",
        stream="stream {\n%s\n}\n" % stream_body if stream_body is not None else "")
    if stream_body is not None and not body.strip():
        txt = txt[:txt.index("http {")]
    with open(path, "w") as f:
        f.write(txt)
    return path


def nginx_proc(name, d, conf):
    return Proc(name, ["nginx", "-p", d + "/", "-c", conf, "-e", d + "/error.log",
                       "-g", "daemon off;"], os.path.join(d, "stdout.log"), cwd=d)


# ----------------------------------------------------------------------------- systems

class System:
    name = "?"
    l7 = False  # True for the pairs of the policy-enforcing HTTP rows

    def __init__(self, bench, run=0):
        self.b = bench
        self.dir = os.path.join(bench.work, self.name + ("-http" if self.l7 else ""),
                                "run%d" % (run + 1))
        os.makedirs(self.dir, exist_ok=True)
        self.procs = []          # [outbound, inbound] (+ more for logs)
        self.out_port = None     # keep-alive listener on the outbound
        self.close_port = None   # listener whose upstream connections are never reused
        self.in_port = None

    def listeners(self):
        return [self.out_port, self.close_port, self.in_port]

    def start(self):
        raise NotImplementedError

    def ready(self):
        for port in set(self.listeners()):
            wait_port(port, self.procs)

    def inbound_accepted(self):
        """Connections accepted by the inbound sidecar so far (None if unknown)."""
        return None

    def resumption_note(self):
        return None

    def held_note(self):
        """Extra evidence (str) that the held connections are open, e.g. from metrics."""
        return None

    def roots(self):
        return [p.pid for p in self.procs[:2]]

    def logs(self):
        out = []
        for p in self.procs:
            out.append("----- %s log (%s), last lines -----\n%s" % (p.name, p.logpath, p.tail()))
            err = os.path.join(os.path.dirname(p.logpath), "error.log")
            if p.logpath.endswith("stdout.log") and os.path.exists(err):
                with open(err, "rb") as f:
                    lines = f.read().decode(errors="replace").splitlines()[-40:]
                out.append("----- %s error.log -----\n%s" % (p.name, "\n".join(lines)))
        return "\n".join(out)

    def dead(self):
        return [p for p in self.procs if not p.alive()]


class NginxSystem(System):
    name = "nginx"

    def start(self):
        if self.b.peer_mode == "tcp":
            return self.start_tcp()
        return self.start_http()

    def start_tcp(self):
        """Layer 4 (stream module): every client connection gets its own upstream mTLS
        connection, and the inbound its own backend connection (like ward)."""
        b, c = self.b, self.b.certs
        if not os.path.isfile(NGINX_STREAM_MODULE):
            raise BenchError("%s missing (Debian package libnginx-mod-stream); needed for "
                             "--peer-mode tcp" % NGINX_STREAM_MODULE)
        self.out_port = self.close_port = b.ports.get()
        self.in_port, self.status_port = b.ports.get(), b.ports.get()
        od, idir = os.path.join(self.dir, "outbound"), os.path.join(self.dir, "inbound")
        os.makedirs(od, exist_ok=True)
        os.makedirs(idir, exist_ok=True)
        out_stream = """\
    server {{
        listen 127.0.0.1:{out} backlog=4096;
        proxy_pass 127.0.0.1:{inp};
        proxy_connect_timeout 5s;
        proxy_timeout 600s;
        proxy_ssl on;
        proxy_ssl_certificate {c}/client.pem;
        proxy_ssl_certificate_key {c}/client-key.pem;
        proxy_ssl_trusted_certificate {c}/ca.pem;
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_name {name};
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_session_reuse on;
    }}""".format(c=c, name=b.server_name, inp=self.in_port, out=self.out_port)
        in_stream = """\
    server {{
        listen 127.0.0.1:{inp} ssl backlog=4096;
        ssl_certificate {c}/server.pem;
        ssl_certificate_key {c}/server-key.pem;
        ssl_client_certificate {c}/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        proxy_connect_timeout 5s;
        proxy_timeout 600s;
        proxy_pass 127.0.0.1:{bk};
    }}""".format(c=c, bk=b.backend_port, inp=self.in_port)
        # stub_status (http) only for the accepted-connections counter: nginx counts accepts
        # of every listener, stream ones included
        in_body = """\
    server {{
        listen 127.0.0.1:{st};
        location / {{ stub_status; }}
    }}""".format(st=self.status_port)
        self.procs = [nginx_proc("nginx outbound", od,
                                 nginx_conf(od, "", b.nofile, b.a.conns, stream_body=out_stream)),
                      nginx_proc("nginx inbound", idir,
                                 nginx_conf(idir, in_body, b.nofile, b.a.conns,
                                            stream_body=in_stream))]
        self.procs[1].start()
        self.procs[0].start()

    def start_http(self):
        b, c = self.b, self.b.certs
        self.out_port, self.close_port = b.ports.get(), b.ports.get()
        self.in_port, self.status_port = b.ports.get(), b.ports.get()
        od, idir = os.path.join(self.dir, "outbound"), os.path.join(self.dir, "inbound")
        os.makedirs(od, exist_ok=True)
        os.makedirs(idir, exist_ok=True)
        out_body = """\
    proxy_ssl_certificate {c}/client.pem;
    proxy_ssl_certificate_key {c}/client-key.pem;
    proxy_ssl_trusted_certificate {c}/ca.pem;
    proxy_ssl_verify on;
    proxy_ssl_verify_depth 2;
    proxy_ssl_name {name};
    proxy_ssl_protocols TLSv1.3;
    proxy_ssl_session_reuse on;
    proxy_max_temp_file_size 0;
    upstream inbound_keepalive {{
        server 127.0.0.1:{inp};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    upstream inbound_noreuse {{
        server 127.0.0.1:{inp};
    }}
    server {{
        listen 127.0.0.1:{out} backlog=4096;
        location / {{
            proxy_pass https://inbound_keepalive;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{close} backlog=4096;
        location / {{
            proxy_pass https://inbound_noreuse;
        }}
    }}""".format(c=c, name=b.server_name, inp=self.in_port, out=self.out_port,
                  close=self.close_port)
        in_body = """\
    upstream backend {{
        server 127.0.0.1:{bk};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 600s;
    }}
    proxy_max_temp_file_size 0;
    server {{
        listen 127.0.0.1:{inp} ssl backlog=4096;
        ssl_certificate {c}/server.pem;
        ssl_certificate_key {c}/server-key.pem;
        ssl_client_certificate {c}/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{st};
        location / {{ stub_status; }}
    }}""".format(c=c, bk=b.backend_port, inp=self.in_port, st=self.status_port)
        self.procs = [nginx_proc("nginx outbound", od, nginx_conf(od, out_body, b.nofile, b.a.conns)),
                      nginx_proc("nginx inbound", idir, nginx_conf(idir, in_body, b.nofile, b.a.conns))]
        self.procs[1].start()
        self.procs[0].start()

    def listeners(self):
        return super().listeners() + [self.status_port]

    def inbound_accepted(self):
        _, body = http_get("http://127.0.0.1:%d/" % self.status_port)
        m = re.search(rb"server accepts handled requests\s+(\d+)", body)
        return int(m.group(1)) if m else None


class HaproxySystem(System):
    name = "haproxy"

    def start(self):
        b, c = self.b, self.b.certs
        tcp = b.peer_mode == "tcp"
        self.out_port, self.in_port = b.ports.get(), b.ports.get()
        self.close_port = self.out_port if tcp else b.ports.get()
        # sized like nginx's worker_connections: enough for the held connections, not more
        # (haproxy sizes its fd tables from maxconn)
        maxconn = max(1024, min(b.nofile // 2 - 200, b.a.conns + 1024))
        common = self.common_cfg(maxconn, tcp)
        tls_srv = "ssl crt {c}/client-combined.pem ca-file {c}/ca.pem verify required " \
                  "ssl-min-ver TLSv1.3".format(c=c)
        tls_bind = "ssl crt {c}/server-combined.pem ca-file {c}/ca.pem verify required " \
                   "ssl-min-ver TLSv1.3".format(c=c)
        if tcp:
            # layer 4: one upstream mTLS connection per client connection
            out_cfg = common.format(sock=self.sock_out) + """\
frontend outbound
    bind 127.0.0.1:{out}
    default_backend inbound
backend inbound
    server inbound 127.0.0.1:{inp} {tls}
""".format(out=self.out_port, inp=self.in_port, tls=tls_srv)
            in_cfg = common.format(sock=self.sock_in) + """\
frontend inbound
    bind 127.0.0.1:{inp} {tls}
    default_backend app
backend app
    server app 127.0.0.1:{bk}
""".format(inp=self.in_port, tls=tls_bind, bk=b.backend_port)
        else:
            out_cfg, in_cfg = self.http_cfgs(common, c, b)
        self.write_and_start(out_cfg, in_cfg)

    def common_cfg(self, maxconn, tcp):
        """The global + defaults sections; `{sock}` is left for the stats socket path."""
        self.sock_in = os.path.join(self.dir, "inbound.sock")
        self.sock_out = os.path.join(self.dir, "outbound.sock")
        common = """\
global
    nbthread 1
    maxconn {maxconn}
    stats socket {sock} mode 600 level admin
defaults
    mode {mode}
    timeout connect 5s
    timeout client 600s
    timeout server 600s
""".format(maxconn=maxconn, sock="{sock}", mode="tcp" if tcp else "http")
        if not tcp:
            common += """\
    timeout http-request 30s
    timeout http-keep-alive 600s
"""
        return common

    def http_cfgs(self, common, c, b):
        out_cfg = common.format(sock=self.sock_out) + """\
frontend outbound
    bind 127.0.0.1:{out}
    default_backend inbound_reuse
frontend outbound_close
    bind 127.0.0.1:{close}
    default_backend inbound_noreuse
backend inbound_reuse
    http-reuse always
    server inbound 127.0.0.1:{inp} ssl crt {c}/client-combined.pem ca-file {c}/ca.pem verify required ssl-min-ver TLSv1.3
backend inbound_noreuse
    http-reuse never
    server inbound 127.0.0.1:{inp} ssl crt {c}/client-combined.pem ca-file {c}/ca.pem verify required ssl-min-ver TLSv1.3
""".format(out=self.out_port, close=self.close_port, inp=self.in_port, c=c)
        in_cfg = common.format(sock=self.sock_in) + """\
frontend inbound
    bind 127.0.0.1:{inp} ssl crt {c}/server-combined.pem ca-file {c}/ca.pem verify required ssl-min-ver TLSv1.3
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{bk}
""".format(inp=self.in_port, c=c, bk=b.backend_port)
        return out_cfg, in_cfg

    def write_and_start(self, out_cfg, in_cfg):
        paths = []
        for n, cfg in (("outbound", out_cfg), ("inbound", in_cfg)):
            pth = os.path.join(self.dir, n + ".cfg")
            with open(pth, "w") as f:
                f.write(cfg)
            paths.append(pth)
        self.procs = [Proc("haproxy outbound", ["haproxy", "-f", paths[0], "-db"],
                           os.path.join(self.dir, "outbound.log"), cwd=self.dir),
                      Proc("haproxy inbound", ["haproxy", "-f", paths[1], "-db"],
                           os.path.join(self.dir, "inbound.log"), cwd=self.dir)]
        self.procs[1].start()
        self.procs[0].start()

    def show_info(self, sock):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect(sock)
            s.sendall(b"show info\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        info = {}
        for line in data.decode(errors="replace").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        return info

    def inbound_accepted(self):
        v = self.show_info(self.sock_in).get("CumConns")
        return int(v) if v else None

    def resumption_note(self):
        v = self.show_info(self.sock_in).get("SslFrontendSessionReuse_pct")
        return None if v is None else "inbound TLS session reuse %s%%" % v


class WardSystem(System):
    name = "ward"

    def start(self):
        b, c = self.b, self.b.certs
        if not (os.path.isfile(b.ward_bin) and os.access(b.ward_bin, os.X_OK)):
            raise BenchError("ward binary %s not found (build: cmake -S %s -B %s/build -G Ninja "
                             "-DCMAKE_BUILD_TYPE=Release && cmake --build %s/build)"
                             % (b.ward_bin, b.repo, b.repo, b.repo))
        self.out_port = b.ports.get()
        self.close_port = self.out_port  # ward: every client connection is its own mTLS connection
        self.in_port = b.ports.get()
        if b.peer_mode == "tcp":
            # L4 rows: opaque TCP (the outbound does not sniff the inbound's port and offers
            # ALPN ward-tcp), one policy decision per connection (rule: from identities only)
            policy, out_extra = b.policy_l4, ["--server-first-ports", str(self.in_port)]
        else:
            # HTTP peers: ward as in production, sniffing HTTP and deciding every request
            policy, out_extra = b.policy_http, []
        self.start_pair([(self.out_port, self.in_port, b.backend_port)], policy, out_extra)

    def start_pair(self, mappings, policy, out_extra=()):
        """mappings: [(outbound listen port, inbound listen port, app port)]; the inbound gets
        --policy policy."""
        b, c = self.b, self.b.certs
        self.adm_out, self.adm_in = b.ports.get(), b.ports.get()
        common = ["--workers", "1", "--ca", c + "/ca.pem", "--log-level", b.ward_log_level,
                  "--drain-timeout", "1s"]
        inb = [b.ward_bin, "--cert", c + "/server.pem", "--key", c + "/server-key.pem"] + common
        outb = [b.ward_bin, "--cert", c + "/client.pem", "--key", c + "/client-key.pem"] + common
        for out_port, in_port, app_port in mappings:
            inb += ["--inbound", "127.0.0.1:%d=127.0.0.1:%d" % (in_port, app_port)]
            outb += ["--outbound", "127.0.0.1:%d=127.0.0.1:%d,identity=%s"
                     % (out_port, in_port, b.server_id)]
        inb += ["--policy", policy, "--admin", "127.0.0.1:%d" % self.adm_in]
        outb += list(out_extra) + ["--admin", "127.0.0.1:%d" % self.adm_out]
        self.procs = [Proc("ward outbound", outb, os.path.join(self.dir, "outbound.log"),
                           cwd=self.dir),
                      Proc("ward inbound", inb, os.path.join(self.dir, "inbound.log"),
                           cwd=self.dir)]
        self.procs[1].start()
        self.procs[0].start()

    def listeners(self):
        # the inbound's readiness comes from its /ready (a bare TCP probe of the mTLS port
        # would be counted as a failed handshake)
        return [self.out_port, self.adm_out, self.adm_in]

    def ready(self):
        super().ready()
        for adm in (self.adm_out, self.adm_in):
            deadline = time.time() + 10
            while True:
                try:
                    st, _ = http_get("http://127.0.0.1:%d/ready" % adm)
                    if st == 200:
                        break
                except Exception as e:  # noqa: BLE001 - HTTPError for 503 etc.
                    last = e
                if time.time() > deadline:
                    raise BenchError("ward admin 127.0.0.1:%d/ready not 200 after 10s (%s)"
                                     % (adm, last))
                time.sleep(0.1)

    def metrics(self, adm):
        _, body = http_get("http://127.0.0.1:%d/metrics" % adm)
        return body.decode(errors="replace")

    @staticmethod
    def metric_sum(text, name, **labels):
        total, found = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r'^%s(\{[^}]*\})?\s+([0-9.eE+-]+)' % re.escape(name), line)
            if not m:
                continue
            lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(lab.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
                found = True
        return total if found else None

    def held_note(self):
        o = self.metric_sum(self.metrics(self.adm_out), "ward_connections_open",
                            direction="outbound")
        i = self.metric_sum(self.metrics(self.adm_in), "ward_connections_open",
                            direction="inbound")
        return "ward_connections_open outbound=%s inbound=%s" % (
            None if o is None else int(o), None if i is None else int(i))

    def inbound_accepted(self):
        v = self.metric_sum(self.metrics(self.adm_in), "ward_connections_total", direction="inbound")
        return None if v is None else int(v)

    def policy_counters(self):
        """Inbound policy decisions (allow, deny) and connections by protocol so far."""
        t = self.metrics(self.adm_in)
        out = {}
        for dec in ("allow", "deny"):
            v = self.metric_sum(t, "ward_authz_decisions_total", direction="inbound",
                                decision=dec)
            out[dec] = int(v) if v is not None else 0
        for proto in ("tcp", "http1", "http2"):
            v = self.metric_sum(t, "ward_connections_by_protocol_total", direction="inbound",
                                protocol=proto)
            out["conns_" + proto] = int(v) if v is not None else 0
        return out

    def policy_note(self):
        return "inbound policy decisions/protocols: %s" % self.policy_counters()

    def resumption_note(self):
        t = self.metrics(self.adm_in)
        ok = self.metric_sum(t, "ward_tls_handshakes_total", direction="inbound", result="success")
        fail = self.metric_sum(t, "ward_tls_handshakes_total", direction="inbound", result="failure")
        res = self.metric_sum(t, "ward_tls_resumed_total", direction="inbound")
        return "inbound handshakes ok=%s failed=%s resumed=%s" % (
            None if ok is None else int(ok), None if fail is None else int(fail),
            None if res is None else int(res))


class L7Ports:
    """Listeners of a policy-enforcing HTTP pair: an HTTP/1.1 and an HTTP/2 mapping."""

    def l7_ports(self):
        b = self.b
        self.h1_out, self.h1_in = b.ports.get(), b.ports.get()
        self.h2_out, self.h2_in = b.ports.get(), b.ports.get()
        self.out_port = self.close_port = self.h1_out
        self.in_port = self.h1_in


class WardL7System(L7Ports, WardSystem):
    """ward pair for the HTTP rows: the outbound sniffs (HTTP/1 method or HTTP/2 preface) and
    offers the matching ALPN; the inbound parses and decides every request against the HTTP
    policy (from identities + GET + /*), then forwards HTTP/1.1 to nginx or h2c to nghttpd."""
    l7 = True

    def start(self):
        b = self.b
        if not (os.path.isfile(b.ward_bin) and os.access(b.ward_bin, os.X_OK)):
            raise BenchError("ward binary %s not found" % b.ward_bin)
        self.l7_ports()
        self.start_pair([(self.h1_out, self.h1_in, b.backend_port),
                         (self.h2_out, self.h2_in, b.h2_backend_port)], b.policy_http)

    def listeners(self):
        return [self.h1_out, self.h2_out, self.adm_out, self.adm_in]


class HaproxyL7System(L7Ports, HaproxySystem):
    """HAProxy pair for the HTTP rows: mode http on both ends, mTLS between them with ALPN
    http/1.1 or h2, a per-request ACL on the inbound (client certificate CN + method GET +
    path_beg /) and a verified-identity header set on every request.
    HTTP/2 backends: `http-reuse always` + `proto h2` (with ALPN h2 toward the inbound), so the
    streams are multiplexed on a few connections from the start; with the defaults (http-reuse
    safe, mux chosen by ALPN after the handshake) HAProxy 2.6 opened one TLS connection per
    concurrent stream (400 for h2load -c4 -m100) and was not faster."""
    l7 = True

    def start(self):
        b, c = self.b, self.b.certs
        self.l7_ports()
        maxconn = 4096
        common = self.common_cfg(maxconn, tcp=False)
        tls_srv = "ssl crt {c}/client-combined.pem ca-file {c}/ca.pem verify required " \
                  "ssl-min-ver TLSv1.3".format(c=c)
        tls_bind = "ssl crt {c}/server-combined.pem ca-file {c}/ca.pem verify required " \
                   "ssl-min-ver TLSv1.3".format(c=c)
        out_cfg = common.format(sock=self.sock_out) + """\
frontend h1_outbound
    bind 127.0.0.1:{h1out}
    default_backend h1_inbound
backend h1_inbound
    server inbound 127.0.0.1:{h1in} {tls} alpn http/1.1
frontend h2_outbound
    bind 127.0.0.1:{h2out} proto h2
    default_backend h2_inbound
backend h2_inbound
    http-reuse always
    server inbound 127.0.0.1:{h2in} {tls} alpn h2 proto h2
""".format(h1out=self.h1_out, h1in=self.h1_in, h2out=self.h2_out, h2in=self.h2_in, tls=tls_srv)
        # the same decision as ward's HTTP policy, per request: the caller's verified certificate
        # (HAProxy 2.6 has no URI-SAN fetch: its subject CN), the method, the path
        rule = """\
    http-request deny unless {{ ssl_c_s_dn(CN) -m str {cn} }} {{ method GET }} {{ path_beg / }}
    http-request set-header x-forwarded-client-cert "By={me};Hash=%[ssl_c_der,sha2(256),hex];CN=%[ssl_c_s_dn(CN)]"
""".format(cn=b.client_cn, me=b.server_id)
        in_cfg = common.format(sock=self.sock_in) + """\
frontend h1_inbound
    bind 127.0.0.1:{h1in} {tls} alpn http/1.1
{rule}    default_backend app_h1
backend app_h1
    server app 127.0.0.1:{bk}
frontend h2_inbound
    bind 127.0.0.1:{h2in} {tls} alpn h2
{rule}    default_backend app_h2
backend app_h2
    http-reuse always
    server app 127.0.0.1:{h2bk} proto h2
""".format(h1in=self.h1_in, h2in=self.h2_in, tls=tls_bind, rule=rule, bk=b.backend_port,
           h2bk=b.h2_backend_port)
        self.write_and_start(out_cfg, in_cfg)

    def listeners(self):
        return [self.h1_out, self.h2_out, self.h1_in, self.h2_in]


# ----------------------------------------------------------------------------- load generators

UNITS_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
UNITS_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(text):
    r = {"raw": text}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"Transfer/sec:\s+([0-9.]+)([KMGT]?B)", text)
    r["bytes_per_s"] = float(m.group(1)) * UNITS_BYTES[m.group(2)] if m else None
    m = re.search(r"(\d+) requests in ([0-9.]+)(\w+),", text)
    r["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(r"^\s+%s%%\s+([0-9.]+)(us|ms|s|m|h)\s*$" % pct, text, re.M)
        r["p" + pct + "_ms"] = float(m.group(1)) * UNITS_TIME[m.group(2)] if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, m.groups()))) if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def run_wrk(url, conns, duration, latency=False, headers=(), timeout=None):
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--timeout", WRK_TIMEOUT]
    if latency:
        argv.append("--latency")
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout or duration + 30)
    text = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        raise BenchError("wrk failed (exit %d): %s\n%s" % (p.returncode, " ".join(argv), text))
    r = parse_wrk(text)
    r["cmd"] = " ".join(argv)
    return r


def curl(url, headers=(), timeout=5, extra=(), version=False):
    """-> (rc, http status, body, stderr), and the HTTP version (curl's %{http_version}) after
    the status when version=True."""
    argv = ["curl", "-sS", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code} %{http_version}"]
    argv += list(extra)
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5)
    body, _, tail = p.stdout.rpartition(b"\n")
    code, _, ver = tail.decode(errors="replace").partition(" ")
    r = (p.returncode, code, body, p.stderr.decode(errors="replace"))
    return r + (ver,) if version else r


def parse_h2load(text):
    r = {"raw": text}
    m = re.search(r"finished in ([0-9.]+)(s|ms), ([0-9.]+) req/s", text)
    r["rps"] = float(m.group(3)) if m else None
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    r["requests"] = dict(zip(keys, map(int, m.groups()))) if m else {}
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    r["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups()))) if m else {}
    # time for request:  min  max  mean  sd  +/- sd
    m = re.search(r"time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+"
                  r"([0-9.]+)(us|ms|s)", text)
    r["mean_ms"] = float(m.group(5)) * UNITS_TIME[m.group(6)] if m else None
    r["max_ms"] = float(m.group(3)) * UNITS_TIME[m.group(4)] if m else None
    return r


def run_h2load(url, n, clients=4, streams=100, timeout=120):
    """h2load with h2c prior knowledge (an http:// URI), bounded by -n and a wall-clock limit."""
    argv = ["h2load", "-n", str(n), "-c", str(clients), "-m", str(streams), "-t", "1", url]
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("h2load did not finish %d requests within %ds: %s"
                         % (n, timeout, " ".join(argv)))
    text = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        raise BenchError("h2load failed (exit %d): %s\n%s" % (p.returncode, " ".join(argv), text))
    r = parse_h2load(text)
    r["cmd"] = " ".join(argv)
    return r


async def _http_roundtrip(reader, writer, timeout):
    writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode(errors="replace").split("\r\n")
    status = lines[0].split(" ")
    if len(status) < 2 or status[1] != "200":
        raise BenchError("bad status line %r" % lines[0])
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip().lower()
    if "content-length" in hdrs:
        body = await asyncio.wait_for(reader.readexactly(int(hdrs["content-length"])), timeout)
    elif hdrs.get("transfer-encoding") == "chunked":
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), timeout)
    else:
        raise BenchError("response without length: %r" % head)
    if b"ok" not in body:
        raise BenchError("unexpected body %r" % body[:64])
    if hdrs.get("connection") == "close":
        raise BenchError("proxy closed the keep-alive connection")


async def _gather_bounded(coros, limit_s, on_timeout):
    """gather() with an overall deadline; unfinished ones are cancelled and reported."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    done, pending = await asyncio.wait(tasks, timeout=limit_s)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
        on_timeout(len(pending))
    return [t.result() for t in done if not t.cancelled() and t.exception() is None]


async def hold_connections(port, n, measure, concurrency=64, timeout=10.0, phase_limit=90.0):
    """Open n connections to port, do one request on each (so the upstream mTLS path is
    established), call measure() with all n held open, re-check each with a second request,
    then close them. Returns dict with counts and measure()'s result."""
    sem = asyncio.Semaphore(concurrency)
    conns, errors = [], {}

    def err(e):
        k = "%s: %s" % (type(e).__name__, str(e)[:80])
        errors[k] = errors.get(k, 0) + 1

    async def open_one():
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, limit=1 << 20), timeout)
            except Exception as e:  # noqa: BLE001
                err(e)
                return
            try:
                await _http_roundtrip(reader, writer, timeout)
                conns.append((reader, writer))
            except Exception as e:  # noqa: BLE001
                err(e)
                writer.close()

    def timed_out(k):
        errors["phase time limit %.0fs hit, unfinished" % phase_limit] = k

    t0 = time.time()
    await _gather_bounded([open_one() for _ in range(n)], phase_limit, timed_out)
    opened = len(conns)
    open_s = time.time() - t0
    await asyncio.sleep(1.5)
    result = measure()

    async def recheck(rw):
        async with sem:
            try:
                await _http_roundtrip(rw[0], rw[1], timeout)
                return True
            except Exception as e:  # noqa: BLE001
                err(e)
                return False

    rechecked = sum(await _gather_bounded([recheck(rw) for rw in conns], phase_limit, timed_out))
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.2)
    return {"opened": opened, "rechecked": rechecked, "errors": errors,
            "open_seconds": round(open_s, 2), "measure": result}


# ----------------------------------------------------------------------------- the bench

METRICS = [
    # key, label, higher_is_better, target (op, value) on ward/best or absolute, fmt
    ("rps", "req/s (small, keep-alive, c32)", True, (">=", 1.5, "ratio"), "{:.0f}"),
    ("p50_ms", "latency p50 ms", False, None, "{:.3f}"),
    ("p99_ms", "latency p99 ms", False, ("<=", 0.7, "ratio"), "{:.3f}"),
    ("mib_s", "MB/s (1 MiB body, c4; MB=2^20)", True, (">=", 1.5, "ratio"), "{:.0f}"),
    ("conn_s", "new mTLS conns/s (Connection: close)", True, (">=", 1.2, "ratio"), "{:.0f}"),
    ("rss_idle_mib", "idle RSS, pair sum, MiB", False, None, "{:.2f}"),
    ("rss_idle_sidecar_mib", "idle RSS per sidecar, MiB", False, ("<=", 4.0, "abs"), "{:.2f}"),
    ("rss_held_mib", "RSS with N conns held, pair, MiB", False, None, "{:.1f}"),
    ("kib_per_conn", "KiB per held connection (pair)", False, ("<=", 0.33, "ratio"), "{:.2f}"),
    # private = Private_Clean + Private_Dirty (smaps_rollup): without shared-library pages
    ("priv_idle_mib", "idle private mem, pair sum, MiB", False, None, "{:.2f}"),
    ("priv_kib_per_conn", "private KiB per held conn (pair)", False, None, "{:.2f}"),
]
# policy-enforcing HTTP rows (ward vs HAProxy mode http; see the module docstring)
L7_METRICS = [
    ("h1_rps", "HTTP/1.1 + policy req/s (c32)", True, (">=", 1.3, "ratio"), "{:.0f}"),
    ("h1_p50_ms", "HTTP/1.1 + policy p50 ms", False, None, "{:.3f}"),
    ("h1_p99_ms", "HTTP/1.1 + policy p99 ms", False, None, "{:.3f}"),
    ("h2_rps", "HTTP/2 + policy req/s (c4 m100)", True, (">=", 1.3, "ratio"), "{:.0f}"),
    ("h2_mean_ms", "HTTP/2 + policy mean ms/request", False, None, "{:.3f}"),
]
L7_KEYS = set(m[0] for m in L7_METRICS)


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.workdir
        self.repo = a.repo
        self.duration = a.duration
        self.ward_bin = a.ward_bin or os.path.join(self.repo, "build/proxy/ward-proxy")
        self.ward_log_level = a.ward_log_level
        self.ports = Ports()
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.peer_mode = a.peer_mode
        self.results = {}        # name -> key -> median over the runs
        self.counts = {}         # name -> key -> runs that produced a value
        self.runs = {}           # name -> [per-run results]
        self.notes = {}          # name -> [per-run notes]
        self.run_idx = 0
        self.errors = []
        self.failed = set()      # systems whose L4 pair failed
        self.failed_l7 = set()   # systems whose policy-enforcing HTTP pair failed
        self.systems = []
        self.l7 = not a.no_http
        self.authz = None        # tools/bench/authz: {"cmd", "rc", "lines"}

    def fail(self, system, msg, with_logs=True):
        line = "%s: %s%s" % (system.name if system else "bench",
                             "run %d/%d: " % (self.run_idx + 1, self.a.runs)
                             if self.a.runs > 1 else "", msg)
        if system is not None:
            (self.failed_l7 if system.l7 else self.failed).add(system.name)
        self.errors.append(line)
        print("\nbench: ERROR: " + line, file=sys.stderr, flush=True)
        if with_logs and system is not None:
            print(system.logs(), file=sys.stderr, flush=True)

    # -- setup
    def setup_certs(self):
        self.certs = os.path.join(self.work, "certs")
        certs_py = os.path.join(self.repo, "tests/lib/certs.py")
        if not os.path.isfile(certs_py):
            raise BenchError("%s is missing" % certs_py)
        p = subprocess.run(["/usr/bin/python3", certs_py, self.certs], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise BenchError("certs.py failed:\n" + p.stdout.decode(errors="replace"))
        for n in ("client", "server"):
            with open(os.path.join(self.certs, n + "-combined.pem"), "wb") as out:
                for part in (n + ".pem", n + "-key.pem"):
                    with open(os.path.join(self.certs, part), "rb") as f:
                        out.write(f.read())
            os.chmod(os.path.join(self.certs, n + "-combined.pem"), 0o600)
        # nginx's proxy_ssl_verify always checks a host name (X509_check_host: DNS SANs,
        # else the subject CN); the SVID has only a URI SAN, so use its CN as proxy_ssl_name.
        p = subprocess.run(["openssl", "x509", "-in", os.path.join(self.certs, "server.pem"),
                            "-noout", "-subject", "-nameopt", "sep_multiline"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        m = re.search(r"CN=(.+)", p.stdout.decode(errors="replace"))
        self.server_name = m.group(1).strip() if m else "server"
        self.server_id = self.cert_spiffe_id("server.pem")
        self.client_id = self.cert_spiffe_id("client.pem")
        p = subprocess.run(["openssl", "x509", "-in", os.path.join(self.certs, "client.pem"),
                            "-noout", "-subject", "-nameopt", "sep_multiline"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        m = re.search(r"CN=(.+)", p.stdout.decode(errors="replace"))
        if not m:
            raise BenchError("client.pem has no subject CN (HAProxy's HTTP rule matches it)")
        self.client_cn = m.group(1).strip()
        self.write_policies()

    def cert_spiffe_id(self, name):
        """The one URI SAN (SPIFFE id) of a minted certificate."""
        p = subprocess.run(["openssl", "x509", "-in", os.path.join(self.certs, name), "-noout",
                            "-ext", "subjectAltName"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        ids = re.findall(r"URI:(spiffe://[^\s,]+)", p.stdout.decode(errors="replace"))
        if len(ids) != 1:
            raise BenchError("%s: expected one SPIFFE URI SAN, found %r" % (name, ids))
        return ids[0]

    def write_policies(self):
        """ALLOW policies selecting the inbound's id (server.pem) that admit the outbound's id
        (client.pem): from-only for the L4 rows; from + GET + /* for the HTTP rows."""
        doc = """\
apiVersion: ward.dev/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{identity: "{server}"}}
  action: ALLOW
  rules:
  - from: [{{identities: ["{client}"]}}]
{to}"""
        self.policy_l4 = os.path.join(self.work, "policy-l4.yaml")
        self.policy_http = os.path.join(self.work, "policy-http.yaml")
        for path, name, to in (
                (self.policy_l4, "bench-l4", ""),
                (self.policy_http, "bench-http",
                 '    to: [{methods: [GET], paths: ["/*"]}]\n')):
            with open(path, "w") as f:
                f.write(doc.format(name=name, server=self.server_id, client=self.client_id,
                                   to=to))
        wardctl = os.path.join(os.path.dirname(os.path.dirname(self.ward_bin)), "tools",
                               "wardctl")
        if os.access(wardctl, os.X_OK):
            p = subprocess.run([wardctl, "policy", "check", self.policy_l4, self.policy_http],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            if p.returncode != 0:
                raise BenchError("wardctl policy check refused the bench policies:\n"
                                 + p.stdout.decode(errors="replace"))

    def start_h2_backend(self):
        """nghttpd (Debian nghttp2-server) as the h2c backend of the HTTP/2 row: one worker,
        cleartext, serving an "ok" index.html."""
        d = os.path.join(self.work, "h2backend")
        www = os.path.join(d, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("ok")
        if not shutil.which("nghttpd"):
            raise BenchError("nghttpd not found (Debian package nghttp2-server; tools/deps "
                             "installs it): the HTTP/2 row needs an h2c backend")
        self.h2_backend_port = self.ports.get()
        self.h2_backend = Proc("backend nghttpd", [
            "nghttpd", "--no-tls", "-n", "1", "-a", "127.0.0.1", "-d", www,
            str(self.h2_backend_port)], os.path.join(d, "nghttpd.log"), cwd=d).start()
        wait_port(self.h2_backend_port, [self.h2_backend])
        rc, code, body, err, ver = curl("http://127.0.0.1:%d/" % self.h2_backend_port,
                                        extra=("--http2-prior-knowledge",), version=True)
        if rc != 0 or code != "200" or body != b"ok" or ver != "2":
            raise BenchError("h2c backend check failed: curl rc=%d code=%s version=%s body=%r %s"
                             % (rc, code, ver, body[:80], err))

    def start_backend(self):
        d = os.path.join(self.work, "backend")
        www = os.path.join(d, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, BIG_PATH.lstrip("/")), "wb") as f:
            f.write(os.urandom(BIG_SIZE))
        self.backend_port = self.ports.get()
        body = """\
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = / {{ default_type text/plain; return 200 "ok"; }}
        location / {{ }}
    }}""".format(port=self.backend_port, www=www)
        conf = nginx_conf(d, body, self.nofile, self.a.conns)
        with open(conf) as f:
            txt = f.read()
        with open(conf, "w") as f:
            f.write(txt.replace("worker_processes 1;",
                                "worker_processes %d;" % self.a.backend_workers))
        self.backend = nginx_proc("backend nginx", d, conf).start()
        wait_port(self.backend_port, [self.backend])
        rc, code, body, err = curl("http://127.0.0.1:%d/" % self.backend_port)
        if rc != 0 or code != "200" or body != b"ok":
            raise BenchError("backend check failed: curl rc=%d code=%s body=%r %s\n%s"
                             % (rc, code, body[:80], err, self.backend.tail()))

    def check_pair(self, s):
        """One curl request through the pair on each listener; raise BenchError on failure."""
        checks = [(s.out_port, SMALL_PATH, (), lambda b: b == b"ok", "small"),
                  (s.out_port, BIG_PATH, (), lambda b: len(b) == BIG_SIZE, "1 MiB"),
                  (s.close_port, SMALL_PATH, ("Connection: close",), lambda b: b == b"ok",
                   "small, Connection: close")]
        for port, path, hdrs, ok, what in checks:
            url = "http://127.0.0.1:%d%s" % (port, path)
            rc, code, body, err = curl(url, hdrs)
            if rc != 0 or code != "200" or not ok(body):
                raise BenchError("curl check through the %s pair failed (%s, %s): rc=%d http=%s "
                                 "body=%r... %s" % (s.name, what, url, rc, code, body[:80],
                                                    err.strip()))

    def check_alive(self, s, phase):
        dead = s.dead()
        if dead:
            raise BenchError("after %s: %s" % (phase, ", ".join(
                "%s (pid %d) %s" % (p.name, p.pid, describe_exit(p.exit_status()))
                for p in dead)))

    def check_l7(self, s):
        """Through each mapping of a policy-enforcing pair: GET / is allowed (200 "ok", over
        HTTP/2 for the h2 mapping), POST / is denied with 403 by the inbound's rule."""
        pc0 = s.policy_counters() if isinstance(s, WardSystem) else None
        for port, what, extra, ver_want in ((s.h1_out, "HTTP/1.1", (), "1.1"),
                                            (s.h2_out, "HTTP/2", ("--http2-prior-knowledge",),
                                             "2")):
            url = "http://127.0.0.1:%d/" % port
            rc, code, body, err, ver = curl(url, extra=extra, version=True)
            if rc != 0 or code != "200" or body != b"ok" or ver != ver_want:
                raise BenchError("%s GET through the %s HTTP pair failed (%s): rc=%d http=%s "
                                 "version=%s body=%r %s" % (what, s.name, url, rc, code, ver,
                                                            body[:80], err.strip()))
            rc, code, body, err, ver = curl(url, extra=tuple(extra) + ("-X", "POST"),
                                            version=True)
            if rc != 0 or code != "403":
                raise BenchError("%s POST through the %s HTTP pair was not denied with 403 (%s): "
                                 "rc=%d http=%s body=%r %s; the per-request policy is not "
                                 "applied" % (what, s.name, url, rc, code, body[:80],
                                              err.strip()))
        if pc0 is not None:
            pc1 = s.policy_counters()
            if pc1["deny"] - pc0["deny"] < 2 or pc1["allow"] - pc0["allow"] < 2:
                raise BenchError("ward counted %d allowed and %d denied decisions for 2 GETs and "
                                 "2 POSTs" % (pc1["allow"] - pc0["allow"],
                                              pc1["deny"] - pc0["deny"]))

    def policy_delta(self, s, pc0, requests, phase, proto):
        """ward: one allow decision per request in the phase, on connections of proto."""
        pc1 = s.policy_counters()
        d = {k: pc1[k] - pc0[k] for k in pc1}
        s.notes[phase + "_policy"] = d
        if requests and d["allow"] < 0.99 * requests:
            raise BenchError("%s phase: %d requests but only %d allow decisions; ward did not "
                             "decide every request (%s)" % (phase, requests, d["allow"], d))
        if d["conns_" + proto] == 0 or d["conns_tcp"] > 0:
            raise BenchError("%s phase: the inbound did not carry the traffic as %s (%s)"
                             % (phase, proto, d))
        return ", ward inbound decided %d requests (allow), %d denied" % (d["allow"], d["deny"])

    def measure_l7(self, s):
        res, d = s.res, self.duration
        is_ward = isinstance(s, WardSystem)
        url = "http://127.0.0.1:%d%s" % (s.h1_out, SMALL_PATH)
        log("[%s http] HTTP/1.1 + policy: wrk -t1 -c%d -d%ds --latency %s"
            % (s.name, self.a.wrk_conns, d, url))
        run_wrk(url, self.a.wrk_conns, 1)  # warm-up
        pc0 = s.policy_counters() if is_ward else None
        r = run_wrk(url, self.a.wrk_conns, d, latency=True)
        self.check_alive(s, "HTTP/1.1 phase")
        self.wrk_ok(s, "HTTP/1.1 phase", r)
        note = self.policy_delta(s, pc0, r["requests"], "h1", "http1") if is_ward else ""
        res.update(h1_rps=r["rps"], h1_p50_ms=r["p50_ms"], h1_p99_ms=r["p99_ms"])
        log("[%s http]   %.0f req/s, p50 %.3f ms, p99 %.3f ms%s"
            % (s.name, r["rps"], r["p50_ms"] or -1, r["p99_ms"] or -1, note))

        url = "http://127.0.0.1:%d/" % s.h2_out
        # warm-up and calibration: N such that the measured run lasts about --duration seconds
        # (a second warm-up of ~1s when the first was too short to show the steady rate)
        warm = run_h2load(url, H2_REQUESTS_MIN, timeout=60)
        self.h2load_ok(s, "HTTP/2 warm-up", warm)
        if warm["rps"] > 2 * H2_REQUESTS_MIN:
            warm = run_h2load(url, int(min(self.a.h2_max_requests, warm["rps"])), timeout=60)
            self.h2load_ok(s, "HTTP/2 warm-up", warm)
        n = int(min(self.a.h2_max_requests, max(H2_REQUESTS_MIN, warm["rps"] * d)))
        log("[%s http] HTTP/2 + policy: h2load -n %d -c 4 -m 100 -t 1 %s  (h2c prior knowledge; "
            "n from the warm-up's %.0f req/s x %ds)" % (s.name, n, url, warm["rps"], d))
        pc0 = s.policy_counters() if is_ward else None
        r = run_h2load(url, n, timeout=max(60, 6 * d + 30))
        self.check_alive(s, "HTTP/2 phase")
        self.h2load_ok(s, "HTTP/2 phase", r)
        note = self.policy_delta(s, pc0, n, "h2", "http2") if is_ward else ""
        res.update(h2_rps=r["rps"], h2_mean_ms=r["mean_ms"])
        s.notes["h2_requests"] = n
        log("[%s http]   %.0f req/s, mean %.3f ms, max %.3f ms%s"
            % (s.name, r["rps"], r["mean_ms"] or -1, r["max_ms"] or -1, note))

    def h2load_ok(self, s, phase, r):
        q, st = r["requests"], r["status"]
        if not r["rps"] or not q:
            raise BenchError("%s: h2load made no requests\n%s" % (phase, r["raw"]))
        if q["succeeded"] != q["total"] or st.get("2xx") != q["total"]:
            raise BenchError("%s: %d of %d requests succeeded, status codes %s\n%s"
                             % (phase, q["succeeded"], q["total"], st, r["raw"]))

    # -- measurement
    def wrk_ok(self, s, phase, r, max_err_frac=0.01):
        errs = sum(r["socket_errors"].values()) + r["non2xx"]
        n = r["requests"] or 0
        if not r["rps"] or n == 0:
            raise BenchError("%s: wrk made no requests\n%s" % (phase, r["raw"]))
        if errs > max_err_frac * n:
            raise BenchError("%s: %d errors in %d requests (%s, non-2xx %d)\n%s"
                             % (phase, errs, n, r["socket_errors"], r["non2xx"], r["raw"]))
        if errs:
            warn("%s %s: %d errors in %d requests %s non-2xx=%d"
                 % (s.name, phase, errs, n, r["socket_errors"], r["non2xx"]))

    def measure(self, s):
        res, notes = s.res, s.notes
        d = self.duration
        n = self.a.conns
        log("[%s] memory: idle, then %d connections held through the pair" % (s.name, n))
        time.sleep(0.5)
        idle = tree_rss_kib(s.roots())
        idle_priv = tree_private_kib(s.roots())
        notes["idle_pss_pair_mib"] = round(tree_pss_kib(s.roots()) / 1024.0, 2)
        notes["idle_processes_rss_kib"] = {
            "%s %d" % (p.name, q): vmrss_kib(q) for p in s.procs[:2] for q in descendants(p.pid)}
        res["rss_idle_mib"] = idle / 1024.0
        res["rss_idle_sidecar_mib"] = idle / 2048.0
        res["priv_idle_mib"] = idle_priv / 1024.0

        def at_peak():
            rss, priv = tree_rss_kib(s.roots()), tree_private_kib(s.roots())
            notes["held_pss_pair_mib"] = round(tree_pss_kib(s.roots()) / 1024.0, 2)
            # end-to-end evidence from the kernel: client->outbound, outbound->inbound (accepted
            # side), inbound->backend (connecting side)
            notes["held_established"] = {
                "client_to_outbound": established(sport=s.out_port),
                "outbound_to_inbound": established(sport=s.in_port),
                "inbound_to_backend": established(dport=self.backend_port)}
            extra = s.held_note()
            if extra:
                notes["held"] = extra
            return rss, priv
        h = asyncio.run(hold_connections(s.out_port, n, at_peak))
        held, held_priv = h["measure"]
        notes["hold"] = {k: v for k, v in h.items() if k != "measure"}
        est = notes["held_established"]
        log("[%s]   idle %.2f MiB RSS / %.2f MiB private, held %.1f MiB RSS / %.1f MiB private, "
            "%d/%d established (%d re-checked) in %.1fs; ss established: client->out %s, "
            "out->in %s, in->backend %s%s%s"
            % (s.name, idle / 1024.0, idle_priv / 1024.0, held / 1024.0, held_priv / 1024.0,
               h["opened"], n, h["rechecked"], h["open_seconds"], est["client_to_outbound"],
               est["outbound_to_inbound"], est["inbound_to_backend"],
               "; " + notes["held"] if "held" in notes else "",
               ", errors: %s" % h["errors"] if h["errors"] else ""))
        self.check_alive(s, "holding connections")
        short = [k for k, v in est.items() if v is None or v < n]
        if h["opened"] < n or h["rechecked"] < h["opened"]:
            self.fail(s, "only %d of %d idle connections established end-to-end (%d re-checked): %s"
                      % (h["opened"], n, h["rechecked"], h["errors"]))
        elif self.peer_mode == "tcp" and short:
            # every system is L4 here: each held client connection must be its own mTLS
            # connection and its own backend connection
            self.fail(s, "memory phase: %d connections held by the client, but ss counts %s "
                         "established; not one upstream connection per client connection"
                      % (n, ", ".join("%s=%s" % (k, est[k]) for k in short)), False)
        else:
            res["rss_held_mib"] = held / 1024.0
            res["kib_per_conn"] = (held - idle) / float(n)
            res["priv_held_mib"] = held_priv / 1024.0
            res["priv_kib_per_conn"] = (held_priv - idle_priv) / float(n)
        time.sleep(1.0)

        base = "http://127.0.0.1:%d" % s.out_port
        log("[%s] req/s + latency: wrk -t1 -c%d -d%ds --latency %s/"
            % (s.name, self.a.wrk_conns, d, base))
        run_wrk(base + SMALL_PATH, self.a.wrk_conns, 1)  # warm-up
        before = s.inbound_accepted()
        r = run_wrk(base + SMALL_PATH, self.a.wrk_conns, d, latency=True)
        after = s.inbound_accepted()
        self.check_alive(s, "req/s phase")
        self.wrk_ok(s, "req/s phase", r)
        if before is not None and after is not None and r["requests"]:
            frac = (after - before) / float(r["requests"])
            notes["inbound_conns_per_request_keepalive"] = round(frac, 4)
            if frac > 0.01:
                warn("%s req/s phase: the inbound accepted %d connections for %d requests; "
                     "upstream keep-alive is not working as intended"
                     % (s.name, after - before, r["requests"]))
        res.update(rps=r["rps"], p50_ms=r["p50_ms"], p99_ms=r["p99_ms"])
        log("[%s]   %.0f req/s, p50 %.3f ms, p99 %.3f ms"
            % (s.name, r["rps"], r["p50_ms"] or -1, r["p99_ms"] or -1))

        log("[%s] throughput: wrk -t1 -c%d -d%ds %s%s" % (s.name, self.a.big_conns, d, base,
                                                          BIG_PATH))
        r = run_wrk(base + BIG_PATH, self.a.big_conns, d)
        self.check_alive(s, "throughput phase")
        self.wrk_ok(s, "throughput phase", r)
        res["mib_s"] = r["bytes_per_s"] / (1 << 20)
        log("[%s]   %.0f MiB/s (%.0f responses/s)" % (s.name, res["mib_s"], r["rps"]))

        url = "http://127.0.0.1:%d%s" % (s.close_port, SMALL_PATH)
        log("[%s] new connections: wrk -t1 -c%d -d%ds -H 'Connection: close' %s"
            % (s.name, self.a.wrk_conns, d, url))
        run_wrk(url, self.a.wrk_conns, 1, headers=("Connection: close",))  # warm-up
        before = s.inbound_accepted()
        r = run_wrk(url, self.a.wrk_conns, d, headers=("Connection: close",))
        after = s.inbound_accepted()
        self.check_alive(s, "new-connection phase")
        self.wrk_ok(s, "new-connection phase", r)
        res["conn_s"] = r["rps"]
        note = ""
        if before is not None and after is not None and r["requests"]:
            frac = (after - before) / float(r["requests"])
            notes["inbound_conns_per_request"] = round(frac, 3)
            note = ", inbound accepted %d conns for %d requests (%.2f/request)" % (
                after - before, r["requests"], frac)
            if frac < 0.95:
                self.fail(s, "new-connection phase: the inbound accepted only %.2f connections "
                             "per request; upstream connections are being reused" % frac, False)
        rn = s.resumption_note()
        if rn:
            notes["resumption"] = rn
            note += "; " + rn
        log("[%s]   %.0f conns/s%s" % (s.name, r["rps"], note))

    def run(self):
        wanted = [x.strip() for x in self.a.systems.split(",") if x.strip()]
        for w in wanted:
            if w not in SYSTEMS:
                raise BenchError("unknown system %r (known: %s)" % (w, ",".join(SYSTEMS)))
        t0 = time.time()
        self.setup_certs()
        self.start_backend()
        classes = {"ward": WardSystem, "nginx": NginxSystem, "haproxy": HaproxySystem}
        l7_classes = {"ward": WardL7System, "haproxy": HaproxyL7System}
        l7_wanted = [w for w in wanted if w in l7_classes] if self.l7 else []
        if l7_wanted:
            try:
                self.start_h2_backend()
            except BenchError as e:
                self.errors.append("bench: HTTP rows skipped: %s" % e)
                print("\nbench: ERROR: HTTP rows skipped: %s" % e, file=sys.stderr, flush=True)
                self.failed_l7.update(l7_wanted)
                l7_wanted = []
        for name in wanted:
            self.runs[name] = []
            self.notes[name] = []
        for run in range(self.a.runs):
            self.run_idx = run
            if self.a.runs > 1:
                log("=== run %d/%d (peers in %s mode) ===" % (run + 1, self.a.runs,
                                                               self.peer_mode))
            # fresh pairs every run: the idle and held memory is measured from a fresh start
            systems = []
            for name in wanted:
                s = classes[name](self, run)
                s.res, s.notes = {}, {}
                self.runs[name].append(s.res)
                self.notes[name].append(s.notes)
                try:
                    s.start()
                    s.ready()
                    self.check_pair(s)
                    systems.append(s)
                    log("[%s] pair up: outbound 127.0.0.1:%d -> inbound 127.0.0.1:%d -> backend "
                        "127.0.0.1:%d (pids %s)" % (name, s.out_port, s.in_port,
                                                    self.backend_port,
                                                    " ".join(str(p) for p in s.roots())))
                except BenchError as e:
                    self.fail(s, str(e))
                    for p in s.procs:
                        p.stop()
            for s in systems:
                try:
                    self.measure(s)
                except (BenchError, subprocess.TimeoutExpired) as e:
                    time.sleep(0.5)
                    dead = ["%s (pid %d) %s" % (p.name, p.pid, describe_exit(p.exit_status()))
                            for p in s.dead()]
                    self.fail(s, str(e) + ("\n  and: " + ", ".join(dead) if dead else ""))
                # the other pairs stay up but idle; stop this one so it cannot disturb the next
                for p in s.procs:
                    p.stop()
            # policy-enforcing HTTP rows: one pair at a time, results into the same run's cells
            for name in l7_wanted:
                s = l7_classes[name](self, run)
                s.res = self.runs[name][run]
                s.notes = self.notes[name][run].setdefault("http", {})
                try:
                    s.start()
                    s.ready()
                    self.check_l7(s)
                    log("[%s http] pair up: HTTP/1.1 127.0.0.1:%d -> 127.0.0.1:%d -> nginx "
                        "127.0.0.1:%d; HTTP/2 127.0.0.1:%d -> 127.0.0.1:%d -> nghttpd "
                        "127.0.0.1:%d (pids %s); GET allowed, POST denied (403)"
                        % (name, s.h1_out, s.h1_in, self.backend_port, s.h2_out, s.h2_in,
                           self.h2_backend_port, " ".join(str(p) for p in s.roots())))
                    self.measure_l7(s)
                except (BenchError, subprocess.TimeoutExpired) as e:
                    time.sleep(0.5)
                    dead = ["%s (pid %d) %s" % (p.name, p.pid, describe_exit(p.exit_status()))
                            for p in s.dead()]
                    self.fail(s, "HTTP rows: " + str(e)
                              + ("\n  and: " + ", ".join(dead) if dead else ""))
                if isinstance(s, WardSystem) and s.procs:
                    try:
                        s.notes["policy_counters_at_end"] = s.policy_counters()
                    except Exception:  # noqa: BLE001
                        pass
                for p in s.procs:
                    p.stop()
        self.run_authz_bench()
        # median per cell over the runs that produced a value
        for name in wanted:
            keys = set(k for r in self.runs[name] for k in r)
            self.results[name] = {k: statistics.median([r[k] for r in self.runs[name] if k in r])
                                  for k in keys}
            self.counts[name] = {k: sum(1 for r in self.runs[name] if k in r) for k in keys}
        self.elapsed = time.time() - t0
        self.report(wanted)
        return 1 if self.errors else 0

    def run_authz_bench(self):
        """tools/bench/authz (policy matcher microbenchmark over build/tools/ward-authz-bench),
        once, when it exists; its output lines go into the summary."""
        if self.a.no_authz:
            return
        script = os.path.join(self.repo, "tools/bench/authz")
        if not os.path.isfile(script):
            log("[authz] %s not present; matcher microbenchmark skipped" % script)
            return
        # the script runs WARD_BUILD_DIR/tools/ward-authz-bench: the build the ward binary is from
        env = dict(os.environ)
        env.setdefault("WARD_BUILD_DIR", os.path.dirname(os.path.dirname(self.ward_bin)))
        binary = os.path.join(env["WARD_BUILD_DIR"], "tools", "ward-authz-bench")
        argv = [script] + (["--quick"] if self.a.quick else [])
        if not os.access(binary, os.X_OK):
            log("[authz] %s not built; matcher microbenchmark skipped" % binary)
            self.authz = {"cmd": " ".join(argv), "rc": "skipped",
                          "lines": ["%s not built (cmake --build %s --target ward-authz-bench)"
                                    % (binary, env["WARD_BUILD_DIR"])]}
            return
        log("[authz] policy matcher microbenchmark: WARD_BUILD_DIR=%s %s"
            % (env["WARD_BUILD_DIR"], " ".join(argv)))
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=self.a.authz_timeout, cwd=self.repo, env=env)
            text, rc = p.stdout.decode(errors="replace"), p.returncode
        except subprocess.TimeoutExpired as e:
            text = (e.output or b"").decode(errors="replace")
            rc = "timeout after %ds" % self.a.authz_timeout
        except OSError as e:
            text, rc = str(e), "could not run"
        lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        self.authz = {"cmd": " ".join(argv), "rc": rc, "lines": lines}
        for ln in lines:
            log("[authz]   " + ln)
        if rc not in (0, "skipped"):
            self.errors.append("authz microbenchmark: %s exited %s" % (" ".join(argv), rc))
            print("\nbench: ERROR: authz microbenchmark %s exited %s" % (" ".join(argv), rc),
                  file=sys.stderr, flush=True)

    # -- output
    def report(self, wanted):
        peers = [x for x in wanted if x != "ward"]
        rows, verdicts, ratios = [], {}, {}
        for key, label, higher, target, fmt in METRICS + (L7_METRICS if self.l7 else []):
            label = label.replace("N conns", "%d conns" % self.a.conns)
            failed = self.failed_l7 if key in L7_KEYS else self.failed
            cells = []
            for sname in wanted:
                v = self.results.get(sname, {}).get(key)
                nv = self.counts.get(sname, {}).get(key, 0)
                cells.append(("FAIL" if sname in failed else "-") if v is None
                             else fmt.format(v) + ("" if nv == self.a.runs
                                                   else " (%d/%d runs)" % (nv, self.a.runs)))
            ratio_s, tgt_s, verdict = "-", "", ""
            wv = self.results.get("ward", {}).get(key)
            pv = [self.results[p][key] for p in peers if self.results.get(p, {}).get(key)
                  is not None]
            ratio = None
            if "ward" in wanted and wv is not None and pv:
                best = max(pv) if higher else min(pv)
                if best > 0:
                    ratio = wv / best
                    ratio_s = "%.2fx" % ratio
                    ratios[key] = round(ratio, 4)
            if target:
                op, val, kind = target
                tgt_s = ("%s%.2gx" % (op, val)) if kind == "ratio" else ("%s%g MiB" % (op, val))
                x = ratio if kind == "ratio" else wv
                if x is None:
                    verdict = "n/a"
                else:
                    verdict = "PASS" if (x >= val if op == ">=" else x <= val) else "MISS"
                verdicts[key] = {"target": tgt_s, "value": x, "verdict": verdict}
            rows.append([label] + cells + [ratio_s, tgt_s, verdict])
        head = ["metric"] + wanted + ["ward/best peer", "target", ""]
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        lines = []
        fmt_row = lambda r: "  ".join(  # noqa: E731
            (c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])) for i, c in enumerate(r))
        lines.append(fmt_row(head).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append(fmt_row(r).rstrip())
        log("")
        log("ward sidecar benchmark, peer mode: %s" % (
            "tcp (L4: nginx stream, HAProxy mode tcp; one upstream mTLS connection per client "
            "connection, like ward)" if self.peer_mode == "tcp" else
            "http (L7: nginx http, HAProxy mode http; pooled keep-alive upstream connections)"))
        log("%s, %ds per measurement, %d held conns, 1 worker per proxy, %d cores, "
            "ratio = ward/best peer (best = max for rates, min for latency/memory)"
            % ("median of %d runs" % self.a.runs if self.a.runs > 1 else "1 run",
               self.duration, self.a.conns, os.cpu_count() or 0))
        if self.l7:
            log("HTTP + policy rows: ward (inbound parses and decides every request: from %s, "
                "GET, /*) vs HAProxy mode http (inbound ACL: client cert CN, GET, path_beg /); "
                "nginx not measured there" % self.client_id)
        for ln in lines:
            log(ln)
        if self.authz is not None:
            log("policy matcher microbenchmark (%s, exit %s):" % (self.authz["cmd"],
                                                                 self.authz["rc"]))
            for ln in self.authz["lines"]:
                log("  " + ln)
        if self.errors:
            log("ERRORS (%d):" % len(self.errors))
            for e in self.errors:
                log("  - " + e.splitlines()[0][:300])
        log("total time %.0fs" % self.elapsed)
        if self.a.json:
            doc = {
                "duration_s": self.duration, "conns_held": self.a.conns,
                "peer_mode": self.peer_mode, "runs": self.a.runs,
                "per_run_results": self.runs, "results_note": "results = median over runs",
                "wrk": {"small_conns": self.a.wrk_conns, "big_conns": self.a.big_conns},
                "systems": wanted, "results": self.results, "notes": self.notes,
                "ratios_ward_over_best_peer": ratios, "targets": verdicts,
                "errors": self.errors, "elapsed_s": round(self.elapsed, 1),
                "policies": {"l4": self.policy_l4, "http": self.policy_http,
                             "server_id": self.server_id, "client_id": self.client_id},
                "authz_microbench": self.authz,
                "versions": self.versions(),
            }
            with open(self.a.json, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
            log("results written to %s" % self.a.json)

    def versions(self):
        v = {}
        for name, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]),
                           ("wrk", ["wrk", "-v"]), ("ward", [self.ward_bin, "--version"]),
                           ("h2load", ["h2load", "--version"]),
                           ("nghttpd", ["nghttpd", "--version"])):
            try:
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=5)
                v[name] = p.stdout.decode(errors="replace").strip().splitlines()[0]
            except Exception:  # noqa: BLE001
                v[name] = None
        return v


def main():
    ap = argparse.ArgumentParser(prog="tools/bench/run",
                                 description="ward vs nginx vs HAProxy sidecar-pair benchmark")
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement (default 5)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma list of %s (default all)" % ",".join(SYSTEMS))
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--conns", type=int, default=3000, help="idle connections held (default 3000)")
    ap.add_argument("--wrk-conns", type=int, default=32, help="wrk connections, small (default 32)")
    ap.add_argument("--big-conns", type=int, default=4, help="wrk connections, 1 MiB (default 4)")
    ap.add_argument("--backend-workers", type=int, default=1, help="backend nginx workers")
    ap.add_argument("--ward-bin", help="ward-proxy binary (default REPO/build/proxy/ward-proxy)")
    ap.add_argument("--ward-log-level", default="warn", help="ward --log-level (default warn)")
    ap.add_argument("--peer-mode", choices=("tcp", "http"), default="tcp",
                    help="nginx/HAProxy pairs as layer-4 proxies, one upstream mTLS connection "
                         "per client connection like ward (tcp, default), or as HTTP proxies "
                         "with pooled keep-alive upstream connections (http)")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the whole measurement K times, report the median (default 1)")
    ap.add_argument("--quick", action="store_true",
                    help="short run: --duration 2, --conns 1000, HTTP/2 at most 200000 requests")
    ap.add_argument("--no-http", action="store_true",
                    help="skip the policy-enforcing HTTP/1.1 and HTTP/2 rows (ward vs HAProxy)")
    ap.add_argument("--h2-max-requests", type=int, default=H2_REQUESTS_MAX,
                    help="cap on h2load -n for the HTTP/2 row (default %d)" % H2_REQUESTS_MAX)
    ap.add_argument("--no-authz", action="store_true",
                    help="do not run tools/bench/authz (policy matcher microbenchmark)")
    ap.add_argument("--authz-timeout", type=int, default=300,
                    help="wall-clock limit for tools/bench/authz in seconds (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    ap.add_argument("--workdir", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--repo", required=True, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.duration = min(a.duration, 2)
        a.conns = min(a.conns, 1000)
        a.h2_max_requests = min(a.h2_max_requests, 200000)
    if a.duration < 1:
        ap.error("--duration must be at least 1")
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    for tool in ("nginx", "haproxy", "wrk", "curl", "openssl", "ss") + (
            () if a.no_http else ("h2load",)):
        if not shutil.which(tool):
            print("bench: ERROR: %s not found in PATH" % tool, file=sys.stderr)
            return 2

    Proc.pids_file = os.path.join(a.workdir, "pids")

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    rc = 1
    try:
        rc = Bench(a).run()
    except BenchError as e:
        print("bench: ERROR: %s" % e, file=sys.stderr)
        rc = 1
    finally:
        stop_all()
        if rc != 0 or a.keep:
            open(os.path.join(a.workdir, "keep"), "w").close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
