#!/usr/bin/python3
"""Kubernetes projected service-account tokens and JWKS files for ward's attestation tests.

CLI:
    /usr/bin/python3 tests/lib/tokens.py OUTDIR

Writes into OUTDIR (tokens are shaped like the kubelet's: iss, aud list, exp, iat, nbf,
sub "system:serviceaccount:NS:SA", kubernetes.io {namespace, pod{name,uid},
serviceaccount{name,uid}}; issued at the time in OUTDIR/now, valid for an hour):
    now                 the Unix time the tokens were minted at (tests verify "as of" it)
    params              issuer, audience, trust domain, namespace and service account, one
                        "key value" per line
    jwks.json           RSA-2048 (kid rsa-1), EC P-256 (kid ec-1), an RSA key with "use":"enc"
                        (kid enc-1) and an "oct" key (kid oct-1): the last two must be ignored
    jwks-weak.json      one RSA-1024 key (refused when loading)
    jwks-badpoint.json  one EC key whose point is not on P-256 (refused when loading)
    NAME.jwt            one token per entry of TOKENS below
"""
import base64
import json
import os
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "ward"
TRUST_DOMAIN = "test.local"
NAMESPACE = "shop"
SERVICE_ACCOUNT = "orders"


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_int(n, length=None):
    if length is None:
        length = (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


def jwk_rsa(key, kid, use="sig"):
    pub = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": b64u_int(pub.n), "e": b64u_int(pub.e), "alg": "RS256", "use": use}
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def jwk_ec(key, kid):
    pub = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64u_int(pub.x, 32), "y": b64u_int(pub.y, 32)}


def claims(now, ns=NAMESPACE, sa=SERVICE_ACCOUNT, **over):
    c = {
        "aud": [AUDIENCE, "https://kubernetes.default.svc"],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": "%s-7d4b9c-x2x9z" % sa, "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": sa, "uid": str(uuid.uuid4())},
            "warnafter": now + 3000,
        },
        "sub": "system:serviceaccount:%s:%s" % (ns, sa),
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def signing_input(header, payload):
    h = b64u(json.dumps(header, separators=(",", ":")).encode())
    p = b64u(json.dumps(payload, separators=(",", ":")).encode())
    return h + "." + p


def sign_rs256(key, header, payload):
    si = signing_input(header, payload)
    sig = key.sign(si.encode(), padding.PKCS1v15(), hashes.SHA256())
    return si + "." + b64u(sig)


def sign_es256(key, header, payload, der=False):
    si = signing_input(header, payload)
    sig = key.sign(si.encode(), ec.ECDSA(hashes.SHA256()))
    if not der:
        r, s = decode_dss_signature(sig)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return si + "." + b64u(sig)


def sign_hs256(secret, header, payload):
    si = signing_input(header, payload)
    h = hmac.HMAC(secret, hashes.SHA256())
    h.update(si.encode())
    return si + "." + b64u(h.finalize())


def edit_payload(token, **over):
    """Re-encode the payload with changes, keeping the original signature."""
    h, p, s = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    payload.update(over)
    return h + "." + b64u(json.dumps(payload, separators=(",", ":")).encode()) + "." + s


def write(outdir, name, data, mode=0o644):
    path = os.path.join(outdir, name)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def mint_all(outdir):
    os.makedirs(outdir, exist_ok=True)
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    enc_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rsa_pub_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    jwks = {"keys": [jwk_rsa(rsa_key, "rsa-1"), jwk_ec(ec_key, "ec-1"),
                     jwk_rsa(enc_key, "enc-1", use="enc"),
                     {"kty": "oct", "kid": "oct-1", "k": b64u(rsa_pub_pem)}]}
    write(outdir, "jwks.json", json.dumps(jwks, indent=2))
    write(outdir, "jwks-weak.json", json.dumps({"keys": [jwk_rsa(weak_key, "weak-1")]}))
    bad = jwk_ec(ec_key, "bad-1")
    bad["y"] = b64u_int((ec_key.public_key().public_numbers().y + 1) % (2 ** 256), 32)
    write(outdir, "jwks-badpoint.json", json.dumps({"keys": [bad]}))

    rs = {"alg": "RS256", "kid": "rsa-1"}
    es = {"alg": "ES256", "kid": "ec-1"}
    c = claims(now)
    good = sign_rs256(rsa_key, rs, c)
    tokens = {
        "rs256": good,
        "es256": sign_es256(ec_key, es, c),
        "nokid": sign_rs256(rsa_key, {"alg": "RS256"}, c),
        "aud-string": sign_rs256(rsa_key, rs, claims(now, aud=AUDIENCE)),
        "no-pod": sign_rs256(rsa_key, rs, dict(c, **{"kubernetes.io": {
            "namespace": NAMESPACE, "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": "u"}}})),
        "sa-subdomain": sign_rs256(rsa_key, rs, claims(now, sa="build.bot-1")),
        "expired": sign_rs256(rsa_key, rs, claims(now, exp=now - 3600, iat=now - 7200,
                                                  nbf=now - 7200)),
        "expired-in-leeway": sign_rs256(rsa_key, rs, claims(now, exp=now - 30, iat=now - 3600,
                                                            nbf=now - 3600)),
        "not-yet-valid": sign_rs256(rsa_key, rs, claims(now, nbf=now + 3600, iat=now + 3600,
                                                        exp=now + 7200)),
        "iat-future": sign_rs256(rsa_key, rs, claims(now, iat=now + 600, nbf=None)),
        "no-exp": sign_rs256(rsa_key, rs, claims(now, exp=None)),
        "wrong-aud": sign_rs256(rsa_key, rs, claims(now, aud=["other", "https://x"])),
        "wrong-iss": sign_rs256(rsa_key, rs, claims(now, iss="https://evil.example")),
        "bad-sig": edit_payload(good, **{"kubernetes.io": {
            "namespace": "kube-system", "serviceaccount": {"name": "admin", "uid": "u"}}}),
        "alg-none": signing_input({"alg": "none"}, c) + ".",
        "alg-none-sig": signing_input({"alg": "none", "kid": "rsa-1"}, c) + "." + b64u(b"x" * 32),
        "hs256": sign_hs256(rsa_pub_pem, {"alg": "HS256", "kid": "rsa-1"}, c),
        "hs256-oct": sign_hs256(rsa_pub_pem, {"alg": "HS256", "kid": "oct-1"}, c),
        "rs512": sign_rs256(rsa_key, {"alg": "RS512", "kid": "rsa-1"}, c),
        "unknown-kid": sign_rs256(rsa_key, {"alg": "RS256", "kid": "nope"}, c),
        "enc-kid": sign_rs256(enc_key, {"alg": "RS256", "kid": "enc-1"}, c),
        "alg-mismatch": sign_es256(ec_key, {"alg": "ES256", "kid": "rsa-1"}, c),
        "es256-der": sign_es256(ec_key, es, c, der=True),
        "crit": sign_rs256(rsa_key, dict(rs, crit=["exp"]), c),
        "bad-ns": sign_rs256(rsa_key, rs, claims(now, ns="Shop_1")),
        "bad-sa": sign_rs256(rsa_key, rs, claims(now, sa="orders/../admin")),
        "sub-mismatch": sign_rs256(rsa_key, rs, claims(now, sub="system:serviceaccount:shop:admin")),
        "no-k8s": sign_rs256(rsa_key, rs, claims(now, **{"kubernetes.io": None})),
        "padded": good + "=",
        "bad-b64": good[:10] + "+" + good[11:],
        "two-parts": good.rsplit(".", 1)[0],
        "four-parts": good + ".e30",
        "garbage": "this is not a token at all",
        "json-header-array": b64u(b"[1,2]") + "." + good.split(".", 1)[1],
    }
    for name, tok in tokens.items():
        write(outdir, name + ".jwt", tok)
    write(outdir, "now", "%d\n" % now)
    write(outdir, "params", "issuer %s\naudience %s\ntrust_domain %s\nnamespace %s\n"
                            "serviceaccount %s\n" % (ISSUER, AUDIENCE, TRUST_DOMAIN, NAMESPACE,
                                                     SERVICE_ACCOUNT))
    return outdir


def main(argv):
    if len(argv) != 2:
        print("usage: tokens.py OUTDIR", file=sys.stderr)
        return 2
    mint_all(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
