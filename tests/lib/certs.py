#!/usr/bin/python3
"""Test certificate minting for ward (ECDSA P-256 everywhere).

Module use:
    import certs
    ca_cert, ca_key = certs.mint("ward test root", [], is_ca=True)
    leaf, key = certs.mint("client", ["spiffe://test.local/ns/default/sa/frontend"],
                           issuer=(ca_cert, ca_key))
    certs.write_pair(outdir, "client", leaf, key)      # client.pem + client-key.pem (0600)
    certs.mint_all(outdir, trust_domain="test.local")  # the standard set (see below)
    certs.mint_one(outdir, "expired")                  # one standard cert, reusing outdir's CAs

CLI:
    /usr/bin/python3 tests/lib/certs.py OUTDIR [--trust-domain test.local] [--only NAME]...

Standard set written to OUTDIR:
    ca.pem ca-key.pem              root "ward test root" (CA:TRUE, keyCertSign+cRLSign, 10 years)
    other-ca.pem other-ca-key.pem  a second, unrelated root
    NAME.pem NAME-key.pem for each leaf in LEAVES (CA:FALSE, digitalSignature,
        EKU serverAuth+clientAuth, one URI SAN, valid now-1h .. now+1day unless said)
    bundle.pem                     ca.pem + other-ca.pem
"""
import argparse
import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_TD = "test.local"

KU_LEAF = ("digital_signature",)
KU_CA = ("key_cert_sign", "crl_sign")
_KU_FIELDS = ("digital_signature", "content_commitment", "key_encipherment",
              "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
              "encipher_only", "decipher_only")
EKU_DEFAULT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def mint(name, spiffe_ids=(), not_before=None, not_after=None, issuer=None,
         is_ca=False, key_usage=None, key=None, eku=None, path_len=None):
    """Mint one certificate; returns (cert, private_key).

    name        subject CN
    spiffe_ids  list of URI SANs (none -> no SAN extension)
    not_before  datetime (naive UTC) or None -> now - 1h
    not_after   datetime or None -> now + 10 years for a self-signed CA, else now + 1 day
    issuer      (cert, key) of the signer, or None for self-signed
    is_ca       BasicConstraints CA flag
    key_usage   iterable of KeyUsage field names (e.g. ("digital_signature",)),
                None -> KU_CA for CAs, KU_LEAF for leaves; () -> no KeyUsage extension
    key         private key to certify (None -> fresh P-256 key)
    eku         iterable of ExtendedKeyUsage OIDs; None -> serverAuth+clientAuth for leaves,
                none for CAs; () -> no EKU extension
    """
    now = utcnow()
    if not_before is None:
        not_before = now - datetime.timedelta(hours=1)
    if not_after is None:
        root = is_ca and issuer is None
        not_after = now + (datetime.timedelta(days=3650) if root else datetime.timedelta(days=1))
    if key is None:
        key = new_key()
    if key_usage is None:
        key_usage = KU_CA if is_ca else KU_LEAF
    if eku is None:
        eku = () if is_ca else EKU_DEFAULT
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key, issuer_pub = subject, key, key.public_key()
    else:
        icert, ikey = issuer
        issuer_name, signing_key, issuer_pub = icert.subject, ikey, ikey.public_key()
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before)
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=bool(is_ca), path_length=path_len if is_ca else None),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False))
    if key_usage:
        flags = {f: (f in key_usage) for f in _KU_FIELDS}
        unknown = set(key_usage) - set(_KU_FIELDS)
        if unknown:
            raise ValueError("unknown key usage: %s" % ", ".join(sorted(unknown)))
        b = b.add_extension(x509.KeyUsage(**flags), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if spiffe_ids:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in spiffe_ids]),
            critical=False)
    return b.sign(signing_key, hashes.SHA256()), key


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path, data, mode):
    """Write atomically (temp + rename) with the given mode."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_cert(path, cert_or_certs):
    certs = cert_or_certs if isinstance(cert_or_certs, (list, tuple)) else [cert_or_certs]
    _write(path, b"".join(cert_pem(c) for c in certs), 0o644)


def write_key(path, key):
    _write(path, key_pem(key), 0o600)


def write_pair(outdir, name, cert, key):
    """Write OUTDIR/NAME.pem and OUTDIR/NAME-key.pem (0600). Returns (cert_path, key_path)."""
    cp = os.path.join(outdir, name + ".pem")
    kp = os.path.join(outdir, name + "-key.pem")
    write_cert(cp, cert)
    write_key(kp, key)
    return cp, kp


def load_pair(outdir, name):
    with open(os.path.join(outdir, name + ".pem"), "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(outdir, name + "-key.pem"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return cert, key


def spiffe(td, sa, ns="default"):
    return "spiffe://%s/ns/%s/sa/%s" % (td, ns, sa)


CAS = ("ca", "other-ca")
# name -> function(td, now) returning mint() kwargs; "issuer" names a CA in CAS
LEAVES = {
    "server": lambda td, now: dict(spiffe_ids=[spiffe(td, "backend")]),
    "client": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend")]),
    "expired": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend")],
                                    not_before=now - datetime.timedelta(days=2),
                                    not_after=now - datetime.timedelta(hours=1)),
    "future": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend")],
                                   not_before=now + datetime.timedelta(days=1),
                                   not_after=now + datetime.timedelta(days=2)),
    "otherca": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend")], issuer="other-ca"),
    "wrongid": lambda td, now: dict(spiffe_ids=[spiffe(td, "intruder")]),
    "twosan": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend"), spiffe(td, "backend")]),
    "caleaf": lambda td, now: dict(spiffe_ids=[spiffe(td, "frontend")], is_ca=True,
                                   key_usage=("digital_signature", "key_cert_sign"),
                                   eku=EKU_DEFAULT),
    "server2": lambda td, now: dict(spiffe_ids=[spiffe(td, "backend")]),
}
CA_SUBJECTS = {"ca": "ward test root", "other-ca": "ward other root"}


def mint_ca(outdir, name="ca"):
    cert, key = mint(CA_SUBJECTS.get(name, name), [], is_ca=True)
    write_pair(outdir, name, cert, key)
    return cert, key


def _ensure_cas(outdir):
    cas = {}
    for n in CAS:
        if os.path.exists(os.path.join(outdir, n + ".pem")) and \
                os.path.exists(os.path.join(outdir, n + "-key.pem")):
            cas[n] = load_pair(outdir, n)
        else:
            cas[n] = mint_ca(outdir, n)
    return cas


def _write_bundle(outdir, cas):
    write_cert(os.path.join(outdir, "bundle.pem"), [cas["ca"][0], cas["other-ca"][0]])


def mint_one(outdir, name, trust_domain=DEFAULT_TD, cas=None):
    """Mint one standard certificate (a leaf name, "ca", "other-ca" or "bundle") into outdir,
    reusing the CAs already there (creating them if missing). Returns (cert_path, key_path)."""
    os.makedirs(outdir, exist_ok=True)
    if name in CAS:
        mint_ca(outdir, name)
        return (os.path.join(outdir, name + ".pem"), os.path.join(outdir, name + "-key.pem"))
    if cas is None:
        cas = _ensure_cas(outdir)
    if name == "bundle":
        _write_bundle(outdir, cas)
        return os.path.join(outdir, "bundle.pem"), None
    if name not in LEAVES:
        raise KeyError("unknown certificate name %r (known: %s)" %
                       (name, ", ".join(list(CAS) + list(LEAVES) + ["bundle"])))
    kw = LEAVES[name](trust_domain, utcnow())
    kw["issuer"] = cas[kw.pop("issuer", "ca")]
    cert, key = mint(name, **kw)
    return write_pair(outdir, name, cert, key)


def mint_all(outdir, trust_domain=DEFAULT_TD):
    """Write the whole standard set (fresh CAs) into outdir. Returns outdir."""
    os.makedirs(outdir, exist_ok=True)
    cas = {n: mint_ca(outdir, n) for n in CAS}
    for n in LEAVES:
        mint_one(outdir, n, trust_domain, cas)
    _write_bundle(outdir, cas)
    return outdir


def main(argv=None):
    p = argparse.ArgumentParser(description="Mint ward test certificates (ECDSA P-256).")
    p.add_argument("outdir")
    p.add_argument("--trust-domain", default=DEFAULT_TD)
    p.add_argument("--only", action="append", metavar="NAME",
                   help="mint only NAME (repeatable), reusing CAs in OUTDIR; names: %s" %
                        ", ".join(list(CAS) + list(LEAVES) + ["bundle"]))
    a = p.parse_args(argv)
    try:
        if a.only:
            os.makedirs(a.outdir, exist_ok=True)
            cas = None
            for n in a.only:
                if n not in CAS and n != "bundle" and cas is None:
                    cas = _ensure_cas(a.outdir)
                mint_one(a.outdir, n, a.trust_domain, cas)
                if n in CAS:
                    cas = None
        else:
            mint_all(a.outdir, a.trust_domain)
    except KeyError as e:
        print("certs.py: %s" % e.args[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
