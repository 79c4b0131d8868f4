"""The accepting side's TLS: the node's server context and its channel binding.

The certificate may be self-signed (``wa-relay cluster`` makes one per node) or come
from any CA: clients and peers do not check it against a CA but check the node
key's signature over the channel binding, the SHA-256 of this certificate in DER
(:func:`relay.protocol.cluster.server_end_point`; docs/threat-model.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.protocol.cluster import server_end_point

__all__ = ["certificate_binding", "server_tls_context"]


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) with ``cert`` (PEM chain) and ``key`` (PEM).

    Raises:
        OSError: a file cannot be read. ssl.SSLError: not a certificate and its key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def certificate_binding(cert: Path) -> bytes:
    """The channel binding of connections to a node serving ``cert``: SHA-256 of its
    first (leaf) certificate in DER.

    Raises:
        OSError: unreadable. ValueError: no PEM certificate in the file.
    """
    text = Path(cert).read_text(encoding="ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{cert}: no PEM certificate")
    return server_end_point(ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)]))
