"""Reading ``node.toml``, ``cluster.toml`` and key files into a :class:`NodeConfig`.

Rules (docs/operations.md, "Node settings"):

* the file is validated against :class:`~relay.config.schema.NodeFile`: a wrong
  type or bound, a missing required key, and an unknown key (with the closest
  known one suggested, by :mod:`difflib`) are each a :class:`ConfigError`;
* environment variables ``WA_RELAY_<KEY>`` (e.g. ``WA_RELAY_PORT=7400``) override
  the file's keys, converted to the key's type; an unknown ``WA_RELAY_*`` name is
  an error too;
* every path (``cluster``, ``key_file``, ``log_file`` and a relative
  ``lmdb://`` storage URL) is relative to the directory of ``node.toml``,
  whatever the working directory;
* the storage URL's scheme must name a known backend (built-in or plug-in), and
  an ``lmdb://`` URL's options must parse.

Every problem raises :class:`ConfigError` naming the file (or variable) and the
key; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
import nacl.signing

from relay.config.ring import NodeInfo
from relay.protocol import Limits, RemoteProtocolError
from relay.protocol import cluster as cluster_protocol
from relay.protocol.cluster import (
    ClusterDescription,
    SignedCluster,
    is_loopback,
    parse_cluster_key,
    verify_cluster,
)
from storage import UnknownBackend
from storage.registry import default_registry

from .abuse import AbuseLimits
from .model import ConfigError, NodeConfig
from .schema import NODE_SETTINGS, ClusterFile, ClusterNode, NodeFile

ENV_PREFIX = "WA_RELAY_"
_FIELD_TYPES = {f.name: f.type for f in msgspec.structs.fields(NodeFile)}
_AT = re.compile(r" - at `\$((?:\.\w+|\[\d+\])*)`$")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        ConfigError: missing, unreadable or invalid (the message names the file).
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def closest(name: str, known: tuple[str, ...] | list[str]) -> str | None:
    """The known name closest to ``name`` (:func:`difflib.get_close_matches`), or ``None``."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str | None) -> str:
    """``" (did you mean 'x'?)"``, or ``""`` for ``None``."""
    return f" (did you mean {name!r}?)" if name else ""


def _convert(data: Any, schema: type, where: str, known: tuple[str, ...] = ()) -> Any:
    """``msgspec.convert`` with the error rewritten as ``where: field 'x': ...``."""
    try:
        return msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        text = str(exc)
        missing = re.match(r"Object missing required field `(\w+)`", text)
        m = _AT.search(text)
        at = m.group(1) if m else ""
        field = at.replace("$", "").lstrip(".")
        if missing:
            place = f" in {field}" if field else ""
            raise ConfigError(f"{where}: missing required field {missing.group(1)!r}{place}") from None
        unknown = re.match(r"Object contains unknown field `(\w+)`", text)
        if unknown:
            known = known or tuple(getattr(schema, "__struct_fields__", ()))
            place = f" in {field}" if field else ""
            raise ConfigError(f"{where}: unknown key {unknown.group(1)!r}{place}"
                              f"{did_you_mean(closest(unknown.group(1), known))}") from None
        message = _AT.sub("", text)
        raise ConfigError(f"{where}: field {field!r}: {message}") from None


def _check_keys(data: Mapping[str, Any], where: str) -> None:
    for key in data:
        if key not in NODE_SETTINGS:
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(closest(key, NODE_SETTINGS))}")


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``WA_RELAY_<KEY>`` variables, converted to their types.

    Raises:
        ConfigError: an unknown key, or a value that does not convert (the
            message names the variable).
    """
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in _FIELD_TYPES:
            near = closest(key, NODE_SETTINGS)
            hint = did_you_mean(near and ENV_PREFIX + near.upper())
            raise ConfigError(f"environment: unknown setting {name!r}{hint}")
        try:
            out[key] = msgspec.convert(raw, _FIELD_TYPES[key], strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"environment: {name}={raw!r}: {exc}") from None
    return out


def load_cluster(path: str | os.PathLike[str]) -> tuple[NodeInfo, ...]:
    """Read a cluster file.

    Raises:
        ConfigError: unreadable file, no ``[[node]]``, a bad or unknown field, duplicate ids.
    """
    return _read_cluster(Path(path))[1]


def load_cluster_doc(path: str | os.PathLike[str]) -> SignedCluster | None:
    """The signed cluster description of a cluster file (its ``version``,
    ``max_frame``, ``max_envelope``, ``cluster_key`` and ``signature`` over its nodes),
    or ``None`` if the file is not signed (``version`` 0).

    Raises:
        ConfigError: as :func:`load_cluster`; a bad cluster key, or a signature that does
            not verify (the file was changed after it was signed: sign it again with
            ``wa-relay sign-cluster``).
    """
    path = Path(path)
    parsed, nodes = _read_cluster(path)
    if not parsed.version:
        return None
    try:
        key = parse_cluster_key(parsed.cluster_key)
        signature = base64.b64decode(parsed.signature, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"{path}: cluster_key/signature: {exc}") from None
    description = cluster_description(nodes, parsed.version, parsed.max_frame,
                                      parsed.max_envelope)
    signed = SignedCluster(description.encode(), signature, key)
    try:
        verify_cluster(signed, key)
    except RemoteProtocolError as exc:
        raise ConfigError(f"{path}: {exc.message} (the file changed after it was signed? "
                          "sign it again: wa-relay sign-cluster)") from None
    return signed


def cluster_description(nodes: tuple[NodeInfo, ...] | list[NodeInfo], version: int,
                        max_frame: int, max_envelope: int = 0) -> ClusterDescription:
    """The :class:`ClusterDescription` of a cluster file's nodes and fields."""
    return ClusterDescription(
        version, tuple(sorted((cluster_protocol.ClusterNode(n.id, n.url, n.public_key)
                               for n in nodes),
                              key=lambda n: n.id)), max_frame, max_envelope)


def _read_cluster(path: Path) -> tuple[ClusterFile, tuple[NodeInfo, ...]]:
    data = read_toml(path)
    if not data.get("node"):
        raise ConfigError(f"{path}: expected at least one [[node]] table")
    parsed: ClusterFile = _convert(data, ClusterFile, str(path),
                                   (*ClusterFile.__struct_fields__,
                                    *ClusterNode.__struct_fields__))
    nodes: list[NodeInfo] = []
    for i, entry in enumerate(parsed.node):
        where = f"{path}: [[node]] #{i + 1}"
        urls = _node_urls(entry, where)
        try:
            key = base64.b64decode(entry.public_key, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{where}: public_key is not standard base64") from exc
        if len(key) != 32:
            raise ConfigError(f"{where}: public_key must encode 32 bytes, got {len(key)}")
        nodes.append(NodeInfo(entry.id, urls[0], key, urls))
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: duplicate node id")
    return parsed, tuple(nodes)


def _node_urls(entry: ClusterNode, where: str) -> tuple[str, ...]:
    """The addresses of one ``[[node]]``: ``urls``, or ``(url,)``.

    Raises:
        ConfigError: neither given, ``url`` not the first of ``urls``, a repeated
            address, or one that is not ``ws://``/``wss://``.
    """
    if entry.urls is None:
        if entry.url is None:
            raise ConfigError(f"{where}: needs url (or urls, a list of addresses)")
        urls: tuple[str, ...] = (entry.url,)
    else:
        urls = tuple(entry.urls)
        if not urls:
            raise ConfigError(f"{where}: urls must list at least one address")
        if entry.url is not None and entry.url != urls[0]:
            raise ConfigError(f"{where}: url must be the first entry of urls (or be left out)")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"{where}: urls lists an address twice")
    for url in urls:
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: url {url!r} must start with ws:// or wss://")
    return urls


def load_key(path: str | os.PathLike[str]) -> nacl.signing.SigningKey:
    """Read a 32-byte raw Ed25519 seed.

    Raises:
        ConfigError: unreadable, wrong length, or readable by group/others.
    """
    path = Path(path)
    try:
        st = path.stat()
        seed = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(f"{path}: key file must not be accessible by others (chmod 600)")
    if len(seed) != 32:
        raise ConfigError(f"{path}: key file must hold a 32-byte Ed25519 seed, got {len(seed)}")
    return nacl.signing.SigningKey(seed)


def resolve_storage_url(url: str, base: Path, where: str) -> str:
    """Check ``url``'s scheme against the backend registry and make a relative
    ``lmdb://`` path absolute against ``base``.

    Raises:
        ConfigError: no scheme, an unknown scheme, or bad ``lmdb://`` options.
    """
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(f"{where}: field 'storage': {url!r} has no scheme (try 'lmdb://data')")
    try:
        default_registry().resolve(scheme)
    except UnknownBackend as exc:
        raise ConfigError(f"{where}: field 'storage': {exc}") from None
    if scheme.lower() != "lmdb":
        return url
    from storage.lmdb import parse_size, path_from_url

    try:
        path, query = path_from_url(url)
        unknown = set(query) - {"map_size", "reserve"}
        if unknown:
            raise ValueError(f"unknown lmdb:// options {sorted(unknown)}")
        for name in query:
            parse_size(query[name][-1])
    except ValueError as exc:
        raise ConfigError(f"{where}: field 'storage': {exc}") from None
    rest = url.split("?", 1)[1] if "?" in url else ""
    absolute = Path(path) if Path(path).is_absolute() else base / path
    return f"lmdb://{absolute}" + (f"?{rest}" if rest else "")


def shared_storage_url(url: str, node_id: str, where: str) -> str:
    """The storage URL of a node listed with several addresses (served by several
    processes): ``postgresql://`` with ``notify=true`` added when not given, so the
    processes wake each other (docs/operations.md, "One home, several processes").

    Raises:
        ConfigError: the storage is not ``postgresql://`` (``lmdb://`` and
            ``memory://`` are one process each), or it says ``notify=false``.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{where}: node {node_id!r} has several addresses (urls) in the cluster file, "
            f"but its storage {parts.scheme}:// serves one process only; use postgresql://")
    flags = [v.lower() for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k == "notify"]
    if not flags:
        return url + ("&" if parts.query else "?") + "notify=true"
    if flags[-1] not in ("1", "true", "yes", "on"):
        raise ConfigError(f"{where}: node {node_id!r} has several addresses, so its storage "
                          "needs notify=true (the processes wake each other)")
    return url


def parse_node_file(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
) -> NodeFile:
    """Read and validate ``node.toml`` with the ``WA_RELAY_*`` overrides of
    ``environ`` (default ``os.environ``); paths stay as written.

    Raises:
        ConfigError: unreadable file, unknown key, bad value, bad variable.
    """
    path = Path(path)
    data = read_toml(path)
    _check_keys(data, str(path))
    data.update(env_overrides(os.environ if environ is None else environ))
    return _convert(data, NodeFile, str(path))


def load_node_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Read ``node.toml`` (plus ``WA_RELAY_*`` overrides), the cluster file and the
    key file it names.

    Args:
        path: the node file.
        environ: where overrides come from (default ``os.environ``).

    Raises:
        ConfigError: any missing file, bad or unknown field, unknown storage scheme,
            or inconsistency (node not in the cluster, key not matching the
            cluster's public key).
    """
    path = Path(path)
    where = str(path)
    f = parse_node_file(path, environ)
    base = path.resolve().parent

    def rel(p: str) -> Path:
        return base / p  # an absolute p stays as it is

    try:
        Limits.for_node(f.max_frame, f.max_envelope or None)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    storage = resolve_storage_url(f.storage, base, where)
    cluster = load_cluster(rel(f.cluster))
    prev_path = previous_cluster_path(rel(f.cluster))
    previous = load_cluster(prev_path) if prev_path.exists() else ()
    cluster_doc = load_cluster_doc(rel(f.cluster))
    key_path = rel(f.key_file)
    key = load_key(key_path)
    me = next((n for n in (*cluster, *previous) if n.id == f.id), None)
    if me is None:
        raise ConfigError(f"{where}: node id {f.id!r} is not in the cluster file")
    if bytes(key.verify_key) != me.public_key:
        raise ConfigError(f"{where}: key_file does not match the public key of {f.id!r}")
    if len(me.urls) > 1:
        storage = shared_storage_url(storage, f.id, where)
    tls_cert, tls_key = _check_transport(f, me, where, rel)
    if cluster_doc is not None:
        budget = verify_cluster(cluster_doc)
        if (budget.max_frame, budget.max_envelope) != (f.max_frame, f.max_envelope):
            raise ConfigError(
                f"{where}: max_frame/max_envelope ({f.max_frame}/{f.max_envelope}) differ from "
                f"the signed cluster description's ({budget.max_frame}/{budget.max_envelope})")
    return NodeConfig(
        id=f.id, host=f.host, port=f.port, cluster=cluster, signing_key=key, storage=storage,
        log_file=rel(f.log_file) if f.log_file else None, log_level=f.log_level,
        log_format=f.log_format, admin_host=f.admin_host, admin_port=f.admin_port,
        shutdown_grace=float(f.shutdown_grace), queue_ttl=float(f.queue_ttl),
        max_queue=f.max_queue, max_frame=f.max_frame, max_envelope=f.max_envelope or None,
        link_ttl=float(f.link_ttl), media_quota=f.media_quota, media_ttl=float(f.media_ttl),
        media_upload_ttl=float(f.media_upload_ttl), max_media_size=f.max_media_size,
        handshake_timeout=float(f.handshake_timeout), max_pending_per_ip=f.max_pending_per_ip,
        keepalive_interval=float(f.keepalive_interval),
        keepalive_timeout=float(f.keepalive_timeout),
        max_connections=f.max_connections, max_mailboxes_per_ip=f.max_mailboxes_per_ip,
        max_connections_per_ip=f.max_connections_per_ip,
        max_mailboxes=f.max_mailboxes,
        max_pending=f.max_pending,
        otk_claim_burst=f.otk_claim_burst,
        key_file=key_path, previous_cluster=previous, abuse=AbuseLimits.from_settings(f),
        tls_cert=tls_cert, tls_key=tls_key, allow_plain=f.allow_plain, cluster_doc=cluster_doc,
    )


def previous_cluster_path(cluster_path: Path) -> Path:
    """Where the cluster file of an unfinished reshape is kept: ``<cluster>.prev``
    beside the cluster file (docs/operations.md, "Reshaping a cluster"). A node
    removed by the reshape is listed there only; it drains, then stops."""
    return cluster_path.with_name(cluster_path.name + ".prev")


def _check_transport(f: NodeFile, me: NodeInfo, where: str,
                     rel) -> tuple[Path | None, Path | None]:
    """``(tls_cert, tls_key)`` resolved, after the transport rules (docs/operations.md,
    "TLS"): both or neither; without them ``allow_plain`` and a loopback host; the
    node's URL in the cluster file ``wss://`` with TLS, ``ws://`` without."""
    if bool(f.tls_cert) != bool(f.tls_key):
        raise ConfigError(f"{where}: tls_cert and tls_key go together")
    if f.tls_cert:
        if not me.url.startswith("wss://"):
            raise ConfigError(f"{where}: the node serves TLS, its cluster URL must be wss://, "
                              f"not {me.url}")
        cert, key = rel(f.tls_cert), rel(f.tls_key)
        for p in (cert, key):
            if not p.is_file():
                raise ConfigError(f"{where}: {p}: file not found")
        return cert, key
    if not f.allow_plain:
        raise ConfigError(f"{where}: no tls_cert/tls_key: give them (wss://), or set "
                          "allow_plain = true for a loopback-only node (ws://)")
    if not is_loopback(f.host):
        raise ConfigError(f"{where}: allow_plain (ws://) is for loopback hosts only, not "
                          f"{f.host!r}; give tls_cert and tls_key")
    if not me.url.startswith("ws://"):
        raise ConfigError(f"{where}: a plain node's cluster URL must be ws://, not {me.url}")
    return None, None
