#!/usr/bin/python3
"""Regenerates the binary seeds of tests/fuzz and the fixed inputs in tests/fuzz/data.

    /usr/bin/python3 tests/fuzz/make_seeds.py      (then commit what changed)

The outputs are committed; fuzzing never runs this. It exists because those seeds must agree with
each other and cannot be written by hand: the certificate seeds are signed by data/root.der (whose
key is thrown away, so all of them are re-minted together), valid until 2099 so they do not expire
in the corpus, and the JWT seeds must verify against data/jwks.json as of data/now. The text seeds
(spiffe, addr, config, admin_http, policy) are plain files edited by hand.

Writes:
    data/root.der, data/jwks.json, data/now, data/token.jwt
    corpus/tls_verify/  control byte + (2-byte length + DER)* chains: good, intermediate, expired,
                        future, other CA, two URI SANs, no SAN, CA leaf, keyCertSign, other trust
                        domain, DNS SAN, non-SPIFFE URI
    corpus/pem/         PEM files of the same certificates, plus non-certificate blocks
    corpus/csr/         PKCS#10 DER: EC P-256/P-384, RSA 2048, weak and unsupported keys, SAN cases,
                        a broken signature
    corpus/jwt/, corpus/jwks/   tests/lib/tokens.py output
    corpus/proxy_message/, corpus/agent_message/   ward.v1 messages, hand-encoded
    corpus/grpc_server/, corpus/grpc_client/       control byte + HTTP/2 byte streams
"""
import datetime
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import certs  # noqa: E402
import tokens  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TD = "test.local"
DATA = os.path.join(HERE, "data")
CORPUS = os.path.join(HERE, "corpus")
FAR = datetime.datetime(2099, 1, 1)


def out(sub, name, data):
    d = os.path.join(CORPUS, sub) if sub else DATA
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def chain_seed(ctl, *cs):
    return bytes([ctl]) + b"".join(struct.pack(">H", len(der(c))) + der(c) for c in cs)


def spiffe(sa, td=TD):
    return "spiffe://%s/ns/default/sa/%s" % (td, sa)


# --- certificates ---------------------------------------------------------------------------

def make_certs():
    root, root_key = certs.mint("ward fuzz root", [], is_ca=True, not_after=FAR)
    other, other_key = certs.mint("ward fuzz other root", [], is_ca=True, not_after=FAR)
    inter, inter_key = certs.mint("ward fuzz intermediate", [], is_ca=True, not_after=FAR,
                                  issuer=(root, root_key), path_len=0)
    out(None, "root.der", der(root))
    now = certs.utcnow()

    def leaf(name, ids, issuer=(root, root_key), **kw):
        kw.setdefault("not_after", FAR)
        return certs.mint(name, ids, issuer=issuer, **kw)[0]

    server = leaf("server", [spiffe("backend")])
    seeds = {
        "good": chain_seed(0, server),
        "good-expected": chain_seed(1 | 4, server),
        "mismatch": chain_seed(2 | 4, server),
        "intermediate": chain_seed(0, leaf("via-inter", [spiffe("frontend")],
                                           issuer=(inter, inter_key)), inter),
        "expired": chain_seed(0, leaf("expired", [spiffe("frontend")],
                                      not_before=now - datetime.timedelta(days=2),
                                      not_after=now - datetime.timedelta(days=1))),
        "future": chain_seed(0, leaf("future", [spiffe("frontend")],
                                     not_before=FAR - datetime.timedelta(days=1))),
        "otherca": chain_seed(0, leaf("otherca", [spiffe("frontend")],
                                      issuer=(other, other_key))),
        "twosan": chain_seed(0, leaf("twosan", [spiffe("frontend"), spiffe("backend")])),
        "nosan": chain_seed(0, leaf("nosan", [])),
        "caleaf": chain_seed(0, leaf("caleaf", [spiffe("frontend")], is_ca=True,
                                     key_usage=("digital_signature", "key_cert_sign"),
                                     eku=certs.EKU_DEFAULT)),
        "nodigsig": chain_seed(0, leaf("nodigsig", [spiffe("frontend")],
                                       key_usage=("key_agreement",))),
        "otherdomain": chain_seed(0, leaf("otherdomain", [spiffe("frontend", "other.local")])),
        "badid": chain_seed(0, leaf("badid", ["spiffe://test.local/ns/../sa/x"])),
        "root-as-leaf": chain_seed(0, root),
        "empty": bytes([4]),
    }
    for name, data in seeds.items():
        out("tls_verify", name, data)

    pem = lambda *cs: b"".join(certs.cert_pem(c) for c in cs)  # noqa: E731
    out("pem", "leaf.pem", pem(server))
    out("pem", "chain.pem", pem(leaf("via-inter", [spiffe("frontend")],
                                     issuer=(inter, inter_key)), inter))
    out("pem", "bundle.pem", pem(root, other))
    pub = server.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    out("pem", "mixed.pem", b"leading text\n" + pub + pem(server) + b"trailing text\n")
    body = certs.cert_pem(server).decode().split("\n")
    out("pem", "headers.pem", "\n".join([body[0], "Proc-Type: 4,ENCRYPTED",
                                        "DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF",
                                        ""] + body[1:]))
    out("pem", "truncated.pem", certs.cert_pem(server)[:200])
    out("pem", "garbage-base64.pem", "-----BEGIN CERTIFICATE-----\nnot*base64!\n"
                                     "-----END CERTIFICATE-----\n")
    return server


# --- CSRs -----------------------------------------------------------------------------------

def csr(key, uris=(), dns=(), sign_key=None, algo=hashes.SHA256()):
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    req = b.sign(sign_key or key, None if isinstance(key, ed25519.Ed25519PrivateKey) else algo)
    return req.public_bytes(serialization.Encoding.DER)


def make_csrs():
    orders = "spiffe://test.local/ns/shop/sa/orders"
    p256 = ec.generate_private_key(ec.SECP256R1())
    good = csr(p256, [orders])
    seeds = {
        "p256-san": good,
        "p256-nosan": csr(p256),
        "p384": csr(ec.generate_private_key(ec.SECP384R1()), [orders], algo=hashes.SHA384()),
        "p521": csr(ec.generate_private_key(ec.SECP521R1()), [orders]),
        "rsa2048": csr(rsa.generate_private_key(public_exponent=65537, key_size=2048), [orders]),
        "rsa1024": csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), [orders]),
        "ed25519": csr(ed25519.Ed25519PrivateKey.generate(), [orders]),
        "other-id": csr(p256, ["spiffe://test.local/ns/shop/sa/admin"]),
        "two-uris": csr(p256, [orders, orders]),
        "dns-san": csr(p256, [orders], dns=["orders.shop.svc"]),
        "bad-signature": good[:-4] + bytes(b ^ 0x5a for b in good[-4:]),
    }
    for name, data in seeds.items():
        out("csr", name, data)
    return good


# --- tokens ---------------------------------------------------------------------------------

def make_tokens():
    tmp = tempfile.mkdtemp(prefix="ward-seeds-")
    try:
        tokens.mint_all(tmp)
        for f in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, f), "rb") as fh:
                data = fh.read()
            if f.endswith(".jwt"):
                out("jwt", f[:-4], data)
            elif f.startswith("jwks"):
                out("jwks", f[:-5], data)
        for f in ("jwks.json", "now"):
            shutil.copy(os.path.join(tmp, f), os.path.join(DATA, f))
        shutil.copy(os.path.join(tmp, "rs256.jwt"), os.path.join(DATA, "token.jwt"))
    finally:
        shutil.rmtree(tmp)
    out("jwks", "empty-keys", '{"keys":[]}')
    out("jwks", "not-object", '{"keys":[1,"x",null,{"kty":7}]}')
    out("jwks", "ec-p384", '{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}')
    out("jwks", "rsa-short", '{"keys":[{"kty":"RSA","kid":"k","n":"AQAB","e":"AQAB"}]}')
    out("jwks", "kid-types", '{"keys":[{"kty":"RSA","kid":"","n":"x","e":"x"},'
                             '{"kty":"EC","crv":"P-256","kid":5,"x":"x","y":"y"}]}')
    out("jwks", "dup-key", '{"keys":[],"keys":[]}')


# --- protobuf (ward.v1, proto/ward/v1/mesh.proto), hand-encoded -----------------------------

def varint(n):
    n &= (1 << 64) - 1
    b = b""
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            b += bytes([c | 0x80])
        else:
            return b + bytes([c])


def fv(num, n):  # varint field
    return varint(num << 3) + varint(n)


def fb(num, data):  # length-delimited field
    data = data.encode() if isinstance(data, str) else data
    return varint(num << 3 | 2) + varint(len(data)) + data


def make_proto(csr_der, cert):
    hello = fb(1, fb(1, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln") + fb(2, "node-1") + fb(3, "orders-7d4b")
               + fb(4, "shop") + fb(5, "0.1.0") + fv(6, 3) + fv(7, 2) + fv(8, 1))
    proxy = {
        "hello": hello,
        "hello-empty": fb(1, b""),
        "csr": fb(2, fv(1, 42) + fb(2, csr_der)),
        "ack": fb(3, fv(1, 2) + fv(2, 7) + fv(3, 1)),
        "nack": fb(3, fv(1, 3) + fv(2, 9) + fv(3, 0) + fb(4, "policy does not compile")),
        "two-oneofs": hello + fb(3, fv(1, 1) + fv(2, 1) + fv(3, 1)),
        "unknown-fields": fb(3, fv(1, 99) + fv(15, 1)) + fb(9, "future") + bytes([0x2d, 1, 2, 3, 4]),
        "empty": b"",
    }
    for name, data in proxy.items():
        out("proxy_message", name, data)

    cd = der(cert)
    policy = (fb(1, "orders-read") + fb(2, "shop") + fb(3, "spiffe://test.local/ns/shop/sa/orders")
              + fv(4, 1)
              + fb(5, fb(1, fb(1, "spiffe://test.local/ns/shop/sa/*") + fb(2, "shop"))
                   + fb(2, fb(1, varint(8080) + varint(443)) + fb(2, "GET") + fb(3, "/api/*"))
                   + fb(3, fb(1, "source.ip") + fb(2, "10.0.0.0/8"))))
    agent = {
        "svid": fb(1, fv(1, 5) + fv(2, 42) + fb(3, "spiffe://test.local/ns/shop/sa/orders")
                   + fb(4, cd) + fb(4, cd) + fv(5, 4102444800)),
        "svid-negative-time": fb(1, fv(1, 1) + fv(5, -1)),
        "bundle": fb(2, fv(1, 3) + fb(2, TD) + fb(3, cd)),
        "policy": fb(3, fv(1, 9) + fb(2, policy) + fb(2, fb(1, "deny-all") + fb(2, "shop")
                                                       + fv(4, 2)) + fv(3, 1)),
        "policy-unpacked-ports": fb(3, fv(1, 1) + fb(2, fb(5, fb(2, fv(1, 80) + fv(1, 81))))),
        "policy-empty": fb(3, b""),
        "status": fb(4, fv(1, 7) + fb(2, "attestation failed: token expired")),
        "status-negative": fb(4, fv(1, -3)),
        "unknown-enum": fb(3, fv(3, 77)),
    }
    for name, data in agent.items():
        out("agent_message", name, data)
    return proxy["hello"], agent["svid"], agent["policy"]


# --- HTTP/2 (RFC 9113) + HPACK (RFC 7541), hand-framed --------------------------------------

def h2int(n, prefix, first=0):
    mx = (1 << prefix) - 1
    if n < mx:
        return bytes([first | n])
    b = [first | mx]
    n -= mx
    while n >= 128:
        b.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(b + [n])


def hstr(s):
    s = s.encode() if isinstance(s, str) else s
    return h2int(len(s), 7) + s


def idx(i):  # indexed field
    return h2int(i, 7, 0x80)


def lit(name, value, incremental=False):  # literal, new name
    return (b"\x40" if incremental else b"\x00") + hstr(name) + hstr(value)


def lit_idx(i, value):  # literal without indexing, indexed name
    return h2int(i, 4) + hstr(value)


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) \
        + payload


DATA_F, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def settings(**kv):
    ids = {"table": 1, "push": 2, "streams": 3, "window": 4, "frame": 5, "header_list": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


def grpc_msg(payload, compressed=0):
    return bytes([compressed]) + struct.pack(">I", len(payload)) + payload


def req_headers(path="/ward.v1.Mesh/Connect", ctype="application/grpc", method=3, extra=b""):
    return (idx(method) + idx(6) + lit_idx(4, path) + lit_idx(1, "ward-agent")
            + lit("content-type", ctype, incremental=True) + lit("te", "trailers")
            + lit("grpc-timeout", "5S") + lit("user-agent", "ward-proxy/0.1.0") + extra)


def make_grpc(hello, svid, policy):
    c_open = PREFACE + settings(window=65535, header_list=16384) + frame(SETTINGS, ACK, 0)
    hdr = frame(HEADERS, END_HEADERS, 1, req_headers())
    server = {
        "connect": bytes([0]) + c_open + hdr + frame(DATA_F, 0, 1, grpc_msg(hello))
        + frame(DATA_F, END_STREAM, 1, b""),
        "stream-acks": bytes([0x20]) + c_open + hdr
        + frame(DATA_F, 0, 1, grpc_msg(hello) + grpc_msg(b"\x1a\x06\x08\x02\x10\x01\x18\x01"))
        + frame(PING, 0, 0, b"12345678") + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20))
        + frame(DATA_F, 0, 1, grpc_msg(b"E" * 40)[:20]) + frame(DATA_F, 0, 1, grpc_msg(b"E" * 40)[20:])
        + frame(DATA_F, END_STREAM, 1, b""),
        "chunked": bytes([7]) + c_open + hdr + frame(DATA_F, END_STREAM, 1, grpc_msg(b"F")),
        "refused": bytes([0]) + c_open
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, req_headers("/fuzz.Refuse/Msg")),
        "unimplemented": bytes([0]) + c_open
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, req_headers("/other.Svc/M")),
        "bad-ctype-get": bytes([0]) + c_open
        + frame(HEADERS, END_HEADERS, 1, req_headers(ctype="text/plain"))
        + frame(HEADERS, END_HEADERS | END_STREAM, 3, req_headers(method=2)),
        "compressed": bytes([0]) + c_open + hdr
        + frame(DATA_F, END_STREAM, 1, grpc_msg(b"x", compressed=1)),
        "too-big": bytes([0x80]) + c_open + hdr + frame(DATA_F, END_STREAM, 1, grpc_msg(b"B" * 100)),
        "rst-goaway": bytes([0x40]) + c_open + hdr + frame(DATA_F, 0, 1, grpc_msg(b"C"))
        + frame(RST, 0, 1, struct.pack(">I", 8))
        + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0) + b"bye"),
        "multi-stream": bytes([0]) + c_open
        + frame(HEADERS, PRIO | PADDED, 1, b"\x03" + struct.pack(">IB", 0, 15)
                + req_headers("/fuzz.A/B")[:10] + b"\0\0\0")
        + frame(CONT, END_HEADERS, 1, req_headers("/fuzz.A/B")[10:])
        + frame(HEADERS, END_HEADERS, 3, req_headers("/fuzz.X/Y", extra=idx(62)))
        + frame(DATA_F, PADDED, 3, b"\x02" + grpc_msg(b"X1") + b"\0\0")
        + frame(PRIORITY, 0, 5, struct.pack(">IB", 3, 200))
        + frame(DATA_F, END_STREAM, 1, grpc_msg(b"G")),
        "deadline": bytes([1]) + c_open
        + frame(HEADERS, END_HEADERS, 1, idx(3) + idx(6) + lit_idx(4, "/fuzz.Slow/Call")
                + lit("content-type", "application/grpc+proto") + lit("grpc-timeout", "150m")),
        "bad-preface": bytes([0]) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for name, data in server.items():
        out("grpc_server", name, data)

    s_open = settings(streams=100, window=1 << 20) + frame(SETTINGS, ACK, 0)
    resp = idx(8) + lit("content-type", "application/grpc")
    trailers = lit("grpc-status", "0") + lit("grpc-message", "")
    client = {
        "stream": bytes([0]) + s_open + frame(HEADERS, END_HEADERS, 1, resp)
        + frame(DATA_F, 0, 1, grpc_msg(svid) + grpc_msg(policy))
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, trailers)
        + frame(HEADERS, END_HEADERS, 3, resp) + frame(DATA_F, 0, 3, grpc_msg(b"H"))
        + frame(HEADERS, END_HEADERS | END_STREAM, 3, trailers),
        "trailers-only": bytes([0]) + s_open
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, idx(8) + lit("content-type", "application/grpc")
                + lit("grpc-status", "7") + lit("grpc-message", "token%20expired%E2%9C%93")),
        "http-503": bytes([0]) + s_open
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, lit_idx(8, "503")),
        "split": bytes([5]) + s_open + frame(HEADERS, END_HEADERS, 1, resp)
        + frame(DATA_F, 0, 1, grpc_msg(svid)[:30]) + frame(DATA_F, 0, 1, grpc_msg(svid)[30:])
        + frame(PING, 0, 0, b"pingpong") + frame(DATA_F, 0, 1, grpc_msg(b"C")),
        "reset-goaway": bytes([0x20]) + s_open + frame(RST, 0, 3, struct.pack(">I", 7))
        + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 2) + b"overloaded"),
        "bad-status": bytes([0x80]) + s_open + frame(HEADERS, END_HEADERS, 1, resp)
        + frame(DATA_F, 0, 1, grpc_msg(b"x" * 100))
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, lit("grpc-status", "abc")),
        "window-huge-prefix": bytes([0x40]) + s_open
        + frame(WINDOW, 0, 1, struct.pack(">I", 0x7fffffff)) + frame(HEADERS, END_HEADERS, 1, resp)
        + frame(DATA_F, 0, 1, b"\x00\xff\xff\xff\xff"),
        "settings-only": bytes([0]) + settings(table=0, frame=16384),
    }
    for name, data in client.items():
        out("grpc_client", name, data)


def main():
    for sub in ("tls_verify", "pem", "csr", "jwt", "jwks", "proxy_message", "agent_message",
                "grpc_server", "grpc_client"):
        shutil.rmtree(os.path.join(CORPUS, sub), ignore_errors=True)
    os.makedirs(DATA, exist_ok=True)
    cert = make_certs()
    csr_der = make_csrs()
    make_tokens()
    hello, svid, policy = make_proto(csr_der, cert)
    make_grpc(hello, svid, policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
