"""cloudweave's PKI: one CA, and a key and certificate for each site (its switch), replica (a controller),
operator and store member, each naming who it is: CN and a DNS name = the name, OU = the kind. A peer's certificate then
says which site a switch is (controller.core refuses a switch whose certificate names another site).

Built on the `cryptography` library rather than `ovs-pki`: the names are ours to set exactly (ovs-pki writes
its own CN and keeps two CAs), nothing is shelled out, and ECDSA P-256 keys take milliseconds (docs/deploy.md
has the measurement). Private keys are written 0600; every file is replaced whole.

    DIR/ca-key.pem  DIR/ca-cert.pem  DIR/NAME-key.pem  DIR/NAME-cert.pem
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KINDS = ("site", "replica", "operator", "store")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CA_DAYS, LEAF_DAYS = 3650, 825


class PkiError(RuntimeError):
    """A PKI directory or a name that cannot be used: the message says which and why."""


@dataclass(frozen=True)
class Issued:
    key: str
    cert: str
    ca: str


def ca_paths(directory: str) -> tuple[str, str]:
    return os.path.join(directory, "ca-key.pem"), os.path.join(directory, "ca-cert.pem")


def init(directory: str, days: int = CA_DAYS) -> str:
    """A new CA in `directory` (refused if one is there); the CA certificate's path."""
    key_path, cert_path = ca_paths(directory)
    if os.path.exists(key_path) or os.path.exists(cert_path):
        raise PkiError(f"{directory} already holds a CA ({key_path}); use it, or remove it first")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cloudweave"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "cloudweave CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def issue(directory: str, name: str, kind: str, days: int = LEAF_DAYS) -> Issued:
    """A key and a certificate for `name` of `kind`, signed by the CA in `directory`. Issuing a name again
    replaces its files (a rotation): peers that trust the CA accept the new one at their next connection."""
    if kind not in KINDS:
        raise PkiError(f"kind '{kind}': one of {', '.join(KINDS)}")
    if not NAME.match(name):
        raise PkiError(f"name '{name}': letters, digits, '_', '.', '-' (up to 63), as a site or replica is named")
    ca_key, ca_cert = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cloudweave"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                                     x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Issued(os.path.join(directory, f"{name}-key.pem"), os.path.join(directory, f"{name}-cert.pem"),
                 ca_paths(directory)[1])
    _write(out.key, _key_pem(key), 0o600)
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out


def peer_identity(peercert: dict[str, Any] | None) -> tuple[str | None, frozenset[str]]:
    """(kind, names) of a verified peer certificate as `ssl.SSLSocket.getpeercert()` gives it: the OU, and the
    CN with every DNS name. (None, {}) without one."""
    if not peercert:
        return None, frozenset()
    subject = {k: v for rdn in peercert.get("subject", ()) for k, v in rdn}
    names = {subject["commonName"]} if "commonName" in subject else set()
    names |= {v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"}
    return subject.get("organizationalUnitName"), frozenset(names)


def tls_files(key: str | None, cert: str | None, ca: str | None) -> tuple[str, str, str] | None:
    """A process's --private-key, --certificate and --ca-cert, as absolute paths: None when none is given;
    PkiError when only some are, or one cannot be read."""
    given = (key, cert, ca)
    if not any(given):
        return None
    missing = [n for n, v in zip(("--private-key", "--certificate", "--ca-cert"), given, strict=True) if not v]
    if missing:
        raise PkiError(f"TLS needs {', '.join(missing)} too (cloudweave pki issue DIR NAME --kind KIND)")
    for path in given:
        if not os.access(path, os.R_OK):  # type: ignore[arg-type]
            raise PkiError(f"cannot read {path}")
    a, b, c = (os.path.abspath(p) for p in given)  # type: ignore[type-var]
    return a, b, c


def certificate_name(path: str) -> str:
    """The CN of the certificate in `path`: the name a peer knows its holder by (ovsdb-server's RBAC uses
    exactly this)."""
    try:
        with open(path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable PEM certificate ({exc})") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PkiError(f"{path}: the certificate has no CN")
    return str(names[0].value)


def _load_ca(directory: str) -> tuple[Any, Any]:
    key_path, cert_path = ca_paths(directory)
    try:
        with open(key_path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        with open(cert_path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except FileNotFoundError:
        raise PkiError(f"{directory} holds no CA (cloudweave pki init {directory})") from None
    except (OSError, ValueError) as exc:
        raise PkiError(f"{directory}: the CA does not load: {exc}") from None
    return key, cert


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".pki-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
