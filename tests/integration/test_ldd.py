#!/usr/bin/python3
"""Every ELF in build/proxy, build/control, build/tools links the android BoringSSL libraries and
never the system OpenSSL 3 (libssl.so.3 / libcrypto.so.3)."""
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import harness as h  # noqa: E402

r = h.Results()
BUILD = h.BUILD_DIR


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def elves():
    out = []
    for sub in ("proxy", "control", "tools"):
        top = os.path.join(BUILD, sub)
        if not os.path.isdir(top):
            continue
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != "CMakeFiles"]
            for f in files:
                p = os.path.join(root, f)
                if os.path.isfile(p) and not os.path.islink(p) and is_elf(p) and \
                        (os.access(p, os.X_OK) or ".so" in f):
                    out.append(p)
    return sorted(out)


def check(path):
    p = subprocess.run(["ldd", path], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, "ldd failed: %s" % out
    assert "not found" not in out, "unresolved libraries:\n%s" % out
    for bad in ("libssl.so.3", "libcrypto.so.3"):
        assert bad not in out, "%s links %s:\n%s" % (path, bad, out)
    # The shipped binaries speak TLS: BoringSSL must be the one they link. Tools that use no
    # TLS at all (e.g. ward-authz-bench) need not link it; they still must not link OpenSSL.
    if os.path.basename(path) in ("ward-proxy", "ward-agent", "wardctl"):
        for good in ("android/libssl.so", "android/libcrypto.so"):
            assert good in out, "%s does not link the android BoringSSL %s:\n%s" % (path, good,
                                                                                       out)


files = elves()
proxy = os.environ.get("WARD_PROXY")
if proxy and os.path.exists(proxy) and os.path.realpath(proxy) not in map(os.path.realpath, files):
    files.insert(0, proxy)
r.check("ward-proxy present (%s)" % (proxy or os.path.join(BUILD, "proxy", "ward-proxy")),
        any(os.path.basename(f) == "ward-proxy" for f in files), "not found under %s" % BUILD)
for f in files:
    r.run("ldd " + os.path.relpath(f, BUILD) if f.startswith(BUILD) else "ldd " + f, check, f)
r.finish()
