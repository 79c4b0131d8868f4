"""Self-signed TLS certificates for local clusters (``wa-relay cluster`` /
``init-cluster``), made with the ``cryptography`` package.

A node's TLS key is independent of its Ed25519 node key: clients and peers do not
check the certificate against a CA; they check the node key's signature over the
connection's channel binding, the SHA-256 of this certificate (docs/threat-model.md).
A certificate therefore only needs to exist; it is made once, ECDSA P-256, valid
ten years, naming the node's host.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["CERT_DAYS", "write_self_signed"]

CERT_DAYS = 3650


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_self_signed(cert_path: Path, key_path: Path, host: str, common_name: str) -> None:
    """Write a new ECDSA P-256 key (PEM, mode 0600, created exclusively) and a
    self-signed certificate for ``host`` (PEM) valid :data:`CERT_DAYS` days.

    Raises:
        FileExistsError: ``key_path`` exists (a key is never overwritten).
        OSError: not written.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key)
    tmp = cert_path.with_name(cert_path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_path)
