#!/usr/bin/python3
"""deploy/init/ward-iptables, the sidecar's capture rules, in throw-away network namespaces.

- Usage: --help, --dry-run (prints the commands, runs none), bad arguments exit 2 naming the flag.
- iptables backend, in a namespace "pod" joined by a veth to a namespace "peer": the WARD_* chains
  and the two jumps exist; a second run changes nothing (iptables-save -t nat, IPv4 and IPv6);
  new options refresh the rules without duplicating them; --clean restores the namespace's
  rules exactly (including rules and a chain that are not ward's), and a second --clean is a
  no-op.
- What the rules do, with real connections and SO_ORIGINAL_DST: inbound TCP reaches 15006 with its
  original destination, outbound TCP reaches 15001; the proxy's UID 1337, the admin port 15000,
  the agent port 15012 and loopback are not captured; the sidecar template's mode (one inbound
  port, no outbound) captures exactly that.
- nftables backend (--backend nft): the same, with `nft list ruleset`; another table survives.

Needs root, iproute2 and the iptables / nftables packages (tools/deps). Skips (counted as skipped,
exit 0) where the kernel refuses network namespaces or a tool is missing. Never touches the rules
of the namespace it runs in: every rule-changing run is `ip netns exec <test namespace> ...`.
"""
import atexit
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

r = h.Results()
SCRIPT = os.path.join(h.REPO, "deploy", "init", "ward-iptables")
PREFIX = "ward-ipt-test-"
POD = "%s%d" % (PREFIX, os.getpid())
PEER = "%s%d-peer" % (PREFIX, os.getpid())
POD4, PEER4 = "198.18.0.2", "198.18.0.1"
POD6, PEER6 = "fd77:ac1d::2", "fd77:ac1d::1"
PROXY_UID = 1337

# --------------------------------------------------------------------------- namespaces

_NETNS = []
_SERVERS = []


def sh(args, timeout=20, check=False, stdin=None):
    p = subprocess.run(args, capture_output=True, timeout=h.T(timeout), input=stdin)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(args), p.returncode, out, err))
    return p.returncode, out, err


def in_ns(ns, args, **kw):
    return sh(["ip", "netns", "exec", ns] + list(args), **kw)


def netns_del(ns):
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=h.T(20))


def cleanup():
    for p in _SERVERS:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                p.wait(h.T(5))
            except subprocess.TimeoutExpired:
                pass
    del _SERVERS[:]
    for ns in list(_NETNS):
        netns_del(ns)
        _NETNS.remove(ns)


atexit.register(cleanup)


def _on_signal(signum, frame):
    cleanup()
    h._on_signal(signum, frame)


for _s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(_s, _on_signal)


def remove_stale():
    """Namespaces left by a killed earlier run (its pid is gone)."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return
    for n in names:
        m = re.match(re.escape(PREFIX) + r"(\d+)(-peer)?$", n)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            netns_del(n)


def netns_add(ns):
    rc, out, err = sh(["ip", "netns", "add", ns])
    if rc != 0:
        raise h.SkipTest("cannot create a network namespace (ip netns add: %s)" % err.strip())
    _NETNS.append(ns)
    in_ns(ns, ["ip", "link", "set", "lo", "up"], check=True)


def fresh_pod():
    """A new POD namespace (and PEER, veth-linked): returns after both are up."""
    cleanup()
    netns_add(POD)
    netns_add(PEER)
    sh(["ip", "link", "add", "wardv0", "netns", POD, "type", "veth", "peer", "name", "wardv1",
        "netns", PEER], check=True)
    for ns, dev, a4, a6 in ((POD, "wardv0", POD4, POD6), (PEER, "wardv1", PEER4, PEER6)):
        in_ns(ns, ["ip", "addr", "add", a4 + "/24", "dev", dev], check=True)
        if HAVE_V6:
            in_ns(ns, ["ip", "-6", "addr", "add", a6 + "/64", "dev", dev, "nodad"], check=True)
        in_ns(ns, ["ip", "link", "set", dev, "up"], check=True)


# --------------------------------------------------------------------------- tiny servers

# Listens on every given port (IPv4 0.0.0.0 and, if possible, IPv6 ::) and answers each connection
# with "<name> <listening port> <original destination>" (SO_ORIGINAL_DST: where the client meant
# to go before a REDIRECT), then closes it.
SERVER = r"""
import select, socket, struct, sys
name = sys.argv[1]
ports = [int(p) for p in sys.argv[2].split(",")]
v6 = sys.argv[3] == "1"
socks = []
for port in ports:
    for fam, host in ((socket.AF_INET, "0.0.0.0"),) + (((socket.AF_INET6, "::"),) if v6 else ()):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(64)
        socks.append(s)
print("ready", flush=True)
def orig(c):
    try:
        if c.family == socket.AF_INET:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            port, = struct.unpack("!H", raw[2:4])
            return "%s:%d" % (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        raw = c.getsockopt(socket.IPPROTO_IPV6, 80, 28)
        port, = struct.unpack("!H", raw[2:4])
        return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
    except OSError:
        return "-"
while True:
    rd, _, _ = select.select(socks, [], [])
    for s in rd:
        c, _ = s.accept()
        try:
            c.sendall(("%s %d %s\n" % (name, s.getsockname()[1], orig(c))).encode())
        except OSError:
            pass
        c.close()
"""

CLIENT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect((host, port))
    data = b""
    while not data.endswith(b"\n"):
        b = s.recv(256)
        if not b:
            break
        data += b
    print(data.decode().strip() or "EMPTY")
except OSError as e:
    print("ERR %s" % e)
"""

POD_PORTS = [15006, 15001, 15000, 8080, 7777, 9999]
PEER_PORTS = [9090, 15012]


def start_server(ns, name, ports):
    p = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", SERVER, name,
                          ",".join(map(str, ports)), "1" if HAVE_V6 else "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    _SERVERS.append(p)
    deadline = time.monotonic() + h.T(10)
    while time.monotonic() < deadline:
        rd, _, _ = select.select([p.stdout], [], [], 0.2)
        if rd:
            line = p.stdout.readline().decode().strip()
            if line == "ready":
                return p
        if p.poll() is not None:
            break
    raise AssertionError("server %s in %s did not start: %s" %
                         (name, ns, p.stderr.read().decode() if p.poll() is not None else "timeout"))


def connect(ns, host, port, uid=0):
    """Connect from namespace ns as uid; returns the server's answer line or 'ERR ...'."""
    cmd = ["ip", "netns", "exec", ns]
    if uid:
        cmd += ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
    rc, out, err = sh(cmd + ["/usr/bin/python3", "-c", CLIENT, host, str(port)], timeout=15)
    return (out.strip() or "ERR rc=%d %s" % (rc, err.strip())).splitlines()[-1]


def hostport(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def expect(ns, host, port, want_name, want_port, uid=0):
    """The connection must be answered by server want_name on want_port; when that is a redirect
    target (15006/15001), SO_ORIGINAL_DST must be where the client connected to."""
    got = connect(ns, host, port, uid)
    want = "%s %d " % (want_name, want_port)
    if want_port in (15006, 15001):
        want += hostport(host, port)
    assert got.startswith(want), "connect %s from %s (uid %d): want '%s...', got '%s'" % (
        hostport(host, port), ns, uid, want, got)


def families():
    return [(POD4, PEER4)] + ([(POD6, PEER6)] if HAVE_V6 else [])


def check_default_capture():
    """The script's defaults: all inbound, all outbound but the exclusions."""
    start_server(POD, "pod", POD_PORTS)
    start_server(PEER, "peer", PEER_PORTS)
    for pod, peer in families():
        # inbound: any port lands on 15006, which sees the original destination
        expect(PEER, pod, 8080, "pod", 15006)
        expect(PEER, pod, 9999, "pod", 15006)
        # the admin port is never captured
        expect(PEER, pod, 15000, "pod", 15000)
        # outbound from the app: to 15001 with the original destination
        expect(POD, peer, 9090, "pod", 15001)
        # ... but not from the proxy's UID (no loop), nor to the agent port
        expect(POD, peer, 9090, "peer", 9090, uid=PROXY_UID)
        expect(POD, peer, 15012, "peer", 15012)
        # loopback and the pod's own address (through lo) stay inside the pod
        expect(POD, "127.0.0.1" if "." in pod else "::1", 7777, "pod", 7777)
        expect(POD, pod, 7777, "pod", 7777)


def check_template_capture():
    """The sidecar template's mode: only the app port inbound, nothing outbound."""
    start_server(POD, "pod", POD_PORTS)
    start_server(PEER, "peer", PEER_PORTS)
    for pod, peer in families():
        expect(PEER, pod, 8080, "pod", 15006)
        expect(PEER, pod, 9999, "pod", 9999)
        expect(POD, peer, 9090, "peer", 9090)


# --------------------------------------------------------------------------- rule sets

def save(ns, fam):
    rc, out, err = in_ns(ns, ["iptables-save" if fam == 4 else "ip6tables-save", "-t", "nat"],
                         check=True)
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", ln) for ln in out.splitlines()
             if ln.strip() and not ln.startswith("#")]
    return "\n".join(lines)


def nft_ruleset(ns):
    return in_ns(ns, ["nft", "list", "ruleset"], check=True)[1].strip()


def run_script(ns, *args, want=0):
    rc, out, err = in_ns(ns, [SCRIPT] + list(args), timeout=60)
    assert rc == want, "ward-iptables %s: exit %d (want %d)\n%s%s" % (" ".join(args), rc, want,
                                                                      out, err)
    return out


def rules_of(text, chain):
    return [ln for ln in text.splitlines() if ln.startswith("-A %s " % chain)]


def assert_in_order(lines, wanted, what):
    """Each entry of wanted (a list of tokens) matches a line, in this order."""
    pos = 0
    for tokens in wanted:
        for i in range(pos, len(lines)):
            if all(t in lines[i] for t in tokens):
                pos = i + 1
                break
        else:
            raise AssertionError("%s: no rule with %s after position %d in:\n%s" %
                                 (what, tokens, pos, "\n".join(lines)))


def assert_iptables_default(text, fam):
    lo = "127.0.0.0/8" if fam == 4 else "::1/128"
    for c in ("WARD_INBOUND", "WARD_IN_REDIRECT", "WARD_OUTBOUND", "WARD_REDIRECT"):
        assert re.search(r"^:%s - " % c, text, re.M), "IPv%d: chain %s missing:\n%s" % (fam, c, text)
    jumps = [ln for ln in rules_of(text, "PREROUTING") + rules_of(text, "OUTPUT") if "WARD_" in ln]
    assert jumps == ["-A PREROUTING -p tcp -j WARD_INBOUND", "-A OUTPUT -p tcp -j WARD_OUTBOUND"], \
        "IPv%d: want exactly one jump from PREROUTING and one from OUTPUT:\n%s" % (fam, text)
    assert_in_order(rules_of(text, "WARD_INBOUND"),
                    [["--dport 15000", "-j RETURN"], ["-p tcp", "-j WARD_IN_REDIRECT"]],
                    "IPv%d WARD_INBOUND" % fam)
    assert rules_of(text, "WARD_IN_REDIRECT") == [
        "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"], text
    assert_in_order(rules_of(text, "WARD_OUTBOUND"),
                    [["--uid-owner 1337", "-j RETURN"], ["--dport 15012", "-j RETURN"],
                     ["-o lo", "-j RETURN"], ["-d " + lo, "-j RETURN"], ["-j WARD_REDIRECT"]],
                    "IPv%d WARD_OUTBOUND" % fam)
    assert rules_of(text, "WARD_REDIRECT") == [
        "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001"], text


def seed_foreign_iptables(ns, fam):
    """Rules that are not ward's: --clean must leave them alone."""
    ipt = "iptables" if fam == 4 else "ip6tables"
    for args in (["-N", "OTHER_CHAIN"], ["-A", "OTHER_CHAIN", "-p", "udp", "-j", "RETURN"],
                 ["-A", "PREROUTING", "-p", "udp", "--dport", "53", "-j", "OTHER_CHAIN"],
                 ["-A", "OUTPUT", "-p", "tcp", "--dport", "25", "-j", "RETURN"]):
        in_ns(ns, [ipt, "-t", "nat"] + args, check=True)


# --------------------------------------------------------------------------- tests

BAD_ARGS = [
    (["--bogus"], "unknown option"),
    (["--proxy-uid"], "needs a value"),
    (["--backend", "pf"], "--backend"),
    (["--backend=ebpf"], "--backend"),
    (["--proxy-uid", "nobody"], "--proxy-uid"),
    (["--proxy-gid", "-1"], "--proxy-gid"),
    (["--inbound-port", "0"], "--inbound-port"),
    (["--outbound-port", "65536"], "--outbound-port"),
    (["--admin-port", "15x"], "--admin-port"),
    (["--inbound-port", "15001"], "must differ"),
    (["--admin-port", "15006"], "--admin-port"),
    (["--include-inbound-ports", "80,,81"], "--include-inbound-ports"),
    (["--include-inbound-ports", "80,"], "--include-inbound-ports"),
    (["--exclude-inbound-ports", "*"], "--exclude-inbound-ports"),
    (["--exclude-outbound-ports", "22,99999"], "--exclude-outbound-ports"),
    (["--exclude-outbound-cidrs", "10.0.0.0/33"], "--exclude-outbound-cidrs"),
    (["--exclude-outbound-cidrs", "300.1.1.1"], "--exclude-outbound-cidrs"),
    (["--include-outbound-cidrs", "fd00:::1/64"], "--include-outbound-cidrs"),
    (["--include-outbound-cidrs", "fd00::/129"], "--include-outbound-cidrs"),
    (["--exclude-outbound-cidrs", "example.com"], "--exclude-outbound-cidrs"),
    (["--clean=yes"], "--clean"),
    (["extra"], "unknown option"),
]


@r.test
def usage_and_dry_run():
    assert os.access(SCRIPT, os.X_OK), "%s is not executable" % SCRIPT
    rc, out, err = sh([SCRIPT, "--help"])
    assert rc == 0 and "usage:" in out, (rc, out, err)
    for opt in ("--backend", "--proxy-uid", "--include-inbound-ports", "--exclude-inbound-ports",
                "--exclude-outbound-ports", "--include-outbound-cidrs", "--exclude-outbound-cidrs",
                "--clean", "--dry-run", "--no-ipv6"):
        assert opt in out, "--help does not mention %s" % opt
    # --dry-run runs no command (safe outside a test namespace) and prints what it would run
    rc, out, err = sh([SCRIPT, "--dry-run", "--exclude-inbound-ports", "22",
                       "--exclude-outbound-cidrs", "10.96.0.0/12,fd00:10:96::/112"])
    assert rc == 0, (rc, out, err)
    for want in ("iptables-restore", "ip6tables-restore", ":WARD_INBOUND", ":WARD_OUTBOUND",
                 "--dport 22 -j RETURN", "-d 10.96.0.0/12 -j RETURN",
                 "-d fd00:10:96::/112 -j RETURN", "--uid-owner 1337",
                 "REDIRECT --to-ports 15006", "REDIRECT --to-ports 15001",
                 "-A PREROUTING -p tcp -j WARD_INBOUND", "-A OUTPUT -p tcp -j WARD_OUTBOUND"):
        assert want in out, "dry run lacks %r:\n%s" % (want, out)
    assert "fd00:10:96::/112" not in out.split("ip6tables-restore")[0], \
        "an IPv6 CIDR landed in the IPv4 rules:\n" + out
    rc, out, err = sh([SCRIPT, "--dry-run", "--backend", "nft"])
    assert rc == 0 and "nft -f -" in out and "table inet ward" in out, (rc, out, err)
    rc, out, err = sh([SCRIPT, "--dry-run", "--clean"])
    assert rc == 0 and "-X WARD_OUTBOUND" in out and "-D OUTPUT -p tcp -j WARD_OUTBOUND" in out, \
        (rc, out, err)


@r.test
def bad_arguments_exit_2():
    # --dry-run first: even a parser bug could not change a rule of this namespace
    for args, words in BAD_ARGS:
        rc, out, err = sh([SCRIPT, "--dry-run"] + args)
        assert rc == 2, "ward-iptables %s: exit %d, want 2\n%s%s" % (args, rc, out, err)
        assert words in err, "ward-iptables %s: message does not name %r: %s" % (args, words, err)
        assert "iptables-restore" not in out, "ward-iptables %s printed commands" % args


def preflight():
    if os.geteuid() != 0:
        raise h.SkipTest("needs root (network namespaces, iptables)")
    if not shutil.which("ip"):
        raise h.SkipTest("iproute2 (ip) not installed")
    remove_stale()


HAVE_V6 = os.path.exists("/proc/net/if_inet6")
CAN_NS = False


@r.test
def namespaces_available():
    global CAN_NS
    preflight()
    fresh_pod()
    CAN_NS = True


def need(tool, package):
    if not CAN_NS:
        raise h.SkipTest("no network namespace (see namespaces_available)")
    if not shutil.which(tool):
        raise h.SkipTest("%s not installed (Debian package %s, tools/deps)" % (tool, package))


@r.test
def iptables_install_idempotent_clean():
    need("iptables", "iptables")
    need("ip6tables", "iptables")
    fresh_pod()
    fams = [4, 6] if HAVE_V6 else [4]
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    empty = {f: save(POD, f) for f in fams}
    for f in fams:
        seed_foreign_iptables(POD, f)
    before = {f: save(POD, f) for f in fams}
    out = run_script(POD, *extra)
    assert "capture installed" in out, out
    first = {f: save(POD, f) for f in fams}
    for f in fams:
        assert_iptables_default(first[f], f)
        assert "OTHER_CHAIN" in first[f] and "--dport 25 -j RETURN" in first[f], first[f]
    run_script(POD, *extra)
    for f in fams:
        second = save(POD, f)
        assert second == first[f], "IPv%d: the second run changed the rules:\n--- first\n%s\n" \
            "--- second\n%s" % (f, first[f], second)
    run_script(POD, "--clean", *extra)
    for f in fams:
        after = save(POD, f)
        assert after == before[f], "IPv%d: --clean did not restore the rules:\n--- before\n%s\n" \
            "--- after\n%s" % (f, before[f], after)
    run_script(POD, "--clean", *extra)          # nothing left to remove: still fine
    for f in fams:
        assert save(POD, f) == before[f]
    # a namespace with nothing at all: install + clean gives back the empty table
    fresh_pod()
    run_script(POD, *extra)
    run_script(POD, "--clean", *extra)
    for f in fams:
        assert save(POD, f) == empty[f], "IPv%d after --clean:\n%s" % (f, save(POD, f))


@r.test
def iptables_refresh_with_new_options():
    need("iptables", "iptables")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    run_script(POD, *extra)
    run_script(POD, "--exclude-inbound-ports", "22,8443", "--exclude-outbound-ports", "5432",
               "--exclude-outbound-cidrs", "169.254.169.254/32,fd00:ec2::254/128",
               "--include-outbound-cidrs", "10.0.0.0/8,127.0.0.53/32,fd00::/8",
               "--proxy-gid", "1337", *extra)
    t4 = save(POD, 4)
    assert len(rules_of(t4, "PREROUTING")) == 1 and len(rules_of(t4, "OUTPUT")) == 1, \
        "the jumps were duplicated:\n" + t4
    assert_in_order(rules_of(t4, "WARD_INBOUND"),
                    [["--dport 15000"], ["--dport 22"], ["--dport 8443"],
                     ["-j WARD_IN_REDIRECT"]], "WARD_INBOUND")
    assert_in_order(rules_of(t4, "WARD_OUTBOUND"),
                    [["--uid-owner 1337"], ["--gid-owner 1337"], ["--dport 15012"],
                     ["--dport 5432"], ["-d 169.254.169.254/32", "-j RETURN"],
                     ["-d 127.0.0.53/32", "-o lo", "-j WARD_REDIRECT"],   # explicit loopback
                     ["-o lo", "-j RETURN"], ["-d 10.0.0.0/8", "-j WARD_REDIRECT"]],
                    "WARD_OUTBOUND")
    out = rules_of(t4, "WARD_OUTBOUND")
    assert not any(ln.endswith("-j WARD_REDIRECT") and "-d " not in ln for ln in out), \
        "a catch-all redirect is left from the first run:\n" + "\n".join(out)
    assert "fd00" not in t4, "IPv6 CIDRs in the IPv4 rules:\n" + t4
    if HAVE_V6:
        t6 = save(POD, 6)
        assert_in_order(rules_of(t6, "WARD_OUTBOUND"),
                        [["-d fd00:ec2::254/128", "-j RETURN"], ["-o lo", "-j RETURN"],
                         ["-d fd00::/8", "-j WARD_REDIRECT"]], "IPv6 WARD_OUTBOUND")
        assert "10.0.0.0" not in t6 and "169.254" not in t6, t6
    run_script(POD, "--clean", *extra)
    assert "WARD_" not in save(POD, 4)


@r.test
def iptables_traffic():
    need("iptables", "iptables")
    need("setpriv", "util-linux")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    run_script(POD, *extra)
    check_default_capture()


@r.test
def iptables_traffic_sidecar_template_mode():
    need("iptables", "iptables")
    need("setpriv", "util-linux")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    # deploy/sidecar/ward-sidecar.yaml's ward-init arguments, with WARD_APP_PORT=8080
    run_script(POD, "--include-inbound-ports", "8080", "--include-outbound-cidrs", "", *extra)
    check_template_capture()


@r.test
def nft_install_idempotent_clean():
    need("nft", "nftables")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    empty = nft_ruleset(POD)
    in_ns(POD, ["nft", "-f", "-"], check=True,
          stdin=b"table inet other {\n chain c {\n  type nat hook output priority 0;\n"
                b"  tcp dport 25 return\n }\n}\n")
    before = nft_ruleset(POD)
    out = run_script(POD, "--backend", "nft", *extra)
    assert "capture installed" in out, out
    first = nft_ruleset(POD)
    ward = in_ns(POD, ["nft", "list", "table", "inet", "ward"], check=True)[1]
    for want in ("chain WARD_INBOUND", "chain WARD_IN_REDIRECT", "chain WARD_OUTBOUND",
                 "chain WARD_REDIRECT", "type nat hook prerouting", "type nat hook output",
                 "tcp dport 15000 return", "meta skuid 1337 return", "tcp dport 15012 return",
                 'oifname "lo" return', "redirect to :15006", "redirect to :15001",
                 "jump WARD_INBOUND", "jump WARD_OUTBOUND"):
        assert want in ward, "nft: %r missing in:\n%s" % (want, ward)
    assert "table inet other" in first, first
    run_script(POD, "--backend", "nft", *extra)
    second = nft_ruleset(POD)
    assert second == first, "nft: the second run changed the rules:\n--- first\n%s\n--- second" \
        "\n%s" % (first, second)
    run_script(POD, "--backend", "nft", "--clean", *extra)
    after = nft_ruleset(POD)
    assert after == before, "nft --clean:\n--- before\n%s\n--- after\n%s" % (before, after)
    run_script(POD, "--backend", "nft", "--clean", *extra)
    in_ns(POD, ["nft", "delete", "table", "inet", "other"], check=True)
    assert nft_ruleset(POD) == empty


@r.test
def nft_traffic():
    need("nft", "nftables")
    need("setpriv", "util-linux")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    run_script(POD, "--backend", "nft", *extra)
    check_default_capture()


@r.test
def nft_traffic_sidecar_template_mode():
    need("nft", "nftables")
    need("setpriv", "util-linux")
    fresh_pod()
    extra = [] if HAVE_V6 else ["--no-ipv6"]
    run_script(POD, "--backend", "nft", "--include-inbound-ports", "8080",
               "--include-outbound-cidrs", "", *extra)
    check_template_capture()


cleanup()
r.finish()
