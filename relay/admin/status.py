"""``wa-relay status``: what each node of a cluster says about itself.

For every node of the cluster file: **reachable** (a WebSocket ``hello`` answered
by a ``challenge`` naming the expected node id; its ring version is compared
with ours) and, where its admin URL is known (every node of a local cluster,
``--data DIR``; the node of ``--config FILE``), **healthy** and **ready**
(``/health``, ``/ready``), its version, and a summary of ``/metrics``
(parsed with :func:`prometheus_client.parser.text_string_to_metric_families`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import trio
from prometheus_client.parser import text_string_to_metric_families

from relay.config.ring import NodeInfo
from relay.net import ConnectFailed, HandshakeFailed, Refused
from relay.net.client import open_client_connection
from relay.net.settings import LinkSettings

MAX_BODY = 4 * 1024 * 1024


class HttpError(Exception):
    """An admin URL could not be fetched (unreachable, timed out, malformed answer)."""


async def http_get(url: str, patience: float) -> tuple[int, bytes]:
    """``GET url`` (``http://host:port/path``) over HTTP/1.1 (:mod:`h11`).

    Returns:
        ``(status, body)``; the body is read up to :data:`MAX_BODY` bytes.

    Raises:
        HttpError: not reachable or no valid answer within ``patience`` seconds.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HttpError(f"not an http:// URL: {url!r}")
    conn = h11.Connection(h11.CLIENT)
    status, body = 0, bytearray()
    try:
        with trio.fail_after(patience):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port or 80)
            async with stream:
                await stream.send_all(conn.send(h11.Request(
                    method="GET", target=parts.path or "/",
                    headers=[("Host", parts.netloc), ("Connection", "close")])))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_BODY:
                            raise HttpError(f"{url}: answer larger than {MAX_BODY} bytes")
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
    except trio.TooSlowError as exc:
        raise HttpError(f"{url}: no answer within {patience:g} s") from exc
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise HttpError(f"{url}: {exc}") from exc
    return status, bytes(body)


def summarize_metrics(text: str) -> dict[str, float]:
    """The headline numbers of a node's ``/metrics`` text.

    Returns:
        ``devices``, ``peers``, ``pending`` (open connections), ``users`` (accounts
        homed here), ``queued`` (envelopes), ``queued_bytes``, ``outbox`` (entries, all peers),
        ``dead_letters`` (outbox entries kept aside), ``links_up``, ``stored``,
        ``acked`` (envelope totals), ``storage_file_bytes``, ``disk_free_bytes``
        (absent when the node does not report them).

    Raises:
        ValueError: not the Prometheus text format.
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, s.value
            if name == "wa_relay_connections":
                out[labels["kind"] + ("s" if labels["kind"] != "pending" else "")] = value
            elif name == "wa_relay_queued_envelopes":
                out["queued"] = value
            elif name == "wa_relay_queued_bytes":
                out["queued_bytes"] = value
            elif name == "wa_relay_users":
                out["users"] = value
            elif name == "wa_relay_outbox_entries":
                out["outbox"] = out.get("outbox", 0) + value
            elif name == "wa_relay_outbox_dead_letters":
                out["dead_letters"] = value
            elif name == "wa_relay_peer_link_up":
                out["links_up"] = out.get("links_up", 0) + value
            elif name == "wa_relay_envelopes_stored_total":
                out["stored"] = value
            elif name == "wa_relay_envelopes_acked_total":
                out["acked"] = value
            elif name == "wa_relay_storage_bytes" and labels["kind"] in ("file", "disk_free"):
                out[f"storage_{labels['kind']}_bytes".replace("storage_disk", "disk")] = value
    return out


@dataclass
class NodeStatus:
    """One node's answer (``--json`` prints :meth:`as_dict`)."""

    id: str
    url: str
    admin_url: str | None
    reachable: bool = False
    ring_version: str | None = None
    ring_matches: bool | None = None
    healthy: bool | None = None
    ready: bool | None = None
    version: str | None = None
    uptime: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    handoff: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Reachable with the same ring, and healthy where that is known."""
        return self.reachable and bool(self.ring_matches) and self.healthy is not False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


async def _probe_websocket(st: NodeStatus, ring_version: str, patience: float) -> None:
    settings = LinkSettings(connect_timeout=patience, request_timeout=patience)
    try:
        async with open_client_connection(st.url, agent="wa-relay-status", settings=settings,
                                          expect_node_id=st.id) as link:
            st.ring_version = link.handshake.challenge.ring_version
            st.reachable = True
            st.ring_matches = st.ring_version == ring_version
            if not st.ring_matches:
                st.errors.append("another ring version (another cluster file)")
    except (ConnectFailed, HandshakeFailed, Refused) as exc:
        st.errors.append(str(exc))


async def _probe_admin(st: NodeStatus, patience: float) -> None:
    assert st.admin_url is not None
    try:
        code, body = await http_get(st.admin_url + "/health", patience)
        health = json.loads(body)
        st.healthy = code == 200
        st.version, st.uptime = health.get("version"), health.get("uptime")
        st.handoff = health.get("handoff") or {}
        code, _ = await http_get(st.admin_url + "/ready", patience)
        st.ready = code == 200
        code, body = await http_get(st.admin_url + "/metrics", patience)
        st.metrics = summarize_metrics(body.decode("utf-8"))
    except (HttpError, ValueError, KeyError, AttributeError) as exc:
        st.healthy = False
        st.errors.append(f"admin: {exc}")


async def cluster_status(
    nodes: Sequence[NodeInfo], admin_urls: dict[str, str | None], ring_version: str,
    patience: float = 5.0,
) -> list[NodeStatus]:
    """Probe every node of ``nodes`` at once; the answers in ``nodes`` order.

    Args:
        admin_urls: ``{node id: http://host:port}`` where known.
        ring_version: the ring version of our cluster file.
        patience: seconds per probe step.
    """
    statuses = [NodeStatus(n.id, n.url, admin_urls.get(n.id)) for n in nodes]
    async with trio.open_nursery() as nursery:
        for st in statuses:
            nursery.start_soon(_probe_websocket, st, ring_version, patience)
            if st.admin_url:
                nursery.start_soon(_probe_admin, st, patience)
    return statuses


def format_status(st: NodeStatus) -> str:
    """One human-readable line for ``st``."""
    state = "reachable" if st.reachable else "UNREACHABLE"
    if st.ring_matches is False:
        state += " (OTHER RING)"
    if st.healthy is not None:
        state += ", healthy" if st.healthy else ", UNHEALTHY"
    if st.ready is not None:
        state += ", ready" if st.ready else ", not ready"
    parts = [f"{st.id:<6}", st.url, state]
    if st.version:
        parts.append(f"v{st.version}")
    if st.ring_version:
        parts.append(f"ring {st.ring_version[:12]}")
    numbers = " ".join(f"{k}={v:g}" for k, v in st.metrics.items()
                       if k in ("users", "devices", "peers", "queued", "queued_bytes", "outbox",
                                "links_up") or (k == "dead_letters" and v))
    if numbers:
        parts.append(numbers)
    stuck = st.handoff.get("stuck") or 0
    if st.handoff.get("reshaping"):
        # "may still come in from": the nodes of the old file that have not said they
        # are done (the words of reshape --finish); nothing when none ("waiting for -"
        # read as "waiting for nobody" beside users still to hand over)
        incoming = ",".join(st.handoff.get("waiting_for") or [])
        parts.append("handoff done" if st.handoff.get("done") else
                     f"handoff: {st.handoff.get('remaining')} users to hand over"
                     + (f" ({stuck} STUCK)" if stuck else "")
                     + (f", users may still come in from {incoming}" if incoming else ""))
    if st.admin_url is None:
        parts.append("(no admin URL known)")
    line = "  ".join(parts)
    return line + "".join(f"\n       {e}" for e in [*stuck_lines(st.handoff), *st.errors])


def stuck_lines(handoff: dict[str, Any]) -> list[str]:
    """The detail lines of a node's stuck handoffs (docs/operations.md, "A stuck handoff")."""
    users = [u for u in handoff.get("stuck_users") or [] if isinstance(u, dict)]
    lines = [f"handoff of {u.get('user_id')} to {u.get('peer')} STUCK: refused "
             f"{u.get('attempts')} times ({u.get('code')}: {u.get('message') or '-'})"
             for u in users]
    more = (handoff.get("stuck") or 0) - len(users)
    if more > 0:
        lines.append(f"... and {more} more stuck users (by new home: "
                     f"{handoff.get('stuck_by')})")
    if lines:
        lines.append("fix the cause, then restart the new home or this node to retry "
                     "(docs/operations.md, 'A stuck handoff')")
    return lines
