"""Throw-away certificate authorities and certificates for the secured devstack, made on the fly
(``cryptography``): a CA, certificates it signs, and the PEM files a TLS server needs and its
clients trust (:func:`loopback_tls`)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
CA_NAME = "segmenter devstack CA"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_ca(name: str, days: int = VALID_DAYS) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed CA certificate (it signs certificates only) and its key."""
    key = _new_key()
    subject = _name(name)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(subject, subject, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certificate(
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    dns: list[str],
    ips: list[str],
    days: int = VALID_DAYS,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A certificate for ``name`` (and the given DNS names and IPs) signed by the CA, for a
    server unless another ``usage`` is given."""
    key = _new_key()
    alternative: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alternative += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        _builder(_name(name), ca_cert.subject, key, days)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def loopback_tls(directory: Path) -> TlsFiles:
    """The CA, and a server certificate for ``127.0.0.1`` and ``localhost`` signed by it, in
    ``directory``; made once and reused while it is valid for another day."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    if _still_valid(files):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca(CA_NAME)
    key, cert = make_certificate(ca_key, ca, "127.0.0.1", ["localhost"], ["127.0.0.1"])
    files.ca.write_bytes(certificate_pem(ca))
    files.cert.write_bytes(certificate_pem(cert))
    write_private(files.key, private_pem(key))
    return files


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (what Kafka's PEM key store and Redis read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, content: str | bytes) -> None:
    """Write a file only its owner can read (it holds a key or a password)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _still_valid(files: TlsFiles) -> bool:
    if not all(path.exists() for path in (files.ca, files.cert, files.key)):
        return False
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=1)
