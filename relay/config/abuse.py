""":class:`AbuseLimits`: the quotas, rate limits and policies that keep one account,
one address or one peer node from taking a node or a victim down (issue 11).

Every field is one ``node.toml`` key of the same name (:mod:`relay.config.schema`),
documented with the reasoning behind its default in docs/operations.md ("Abuse
limits"). Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

MiB = 1024 * 1024

DEFAULT_ABUSE: dict[str, Any] = {
    # byte quotas of queued envelopes (the default LMDB map is 1 GiB)
    "queue_device_bytes": 32 * MiB,
    "queue_account_bytes": 64 * MiB,
    "queue_sender_bytes": 64 * MiB,
    "queue_peer_bytes": 256 * MiB,
    "queue_sender_share": 0.25,
    "queue_peer_share": 0.5,
    "queue_strangers_share": 0.5,
    "quota_retry_after": 60.0,
    # device lists and registration
    "max_devices": 8,
    "registration": "open",
    "invite_ttl": 7 * 24 * 3600.0,
    # device-list watchers (relay.services.notices)
    "watchers_per_user": 2048,
    "watching_per_account": 4096,
    "watcher_ttl": 90 * 24 * 3600.0,
    # media
    "media_account_quota": 1024 * MiB,
    # outbox toward an unreachable peer
    "outbox_sender_bytes": 16 * MiB,
    "outbox_total_bytes": 256 * MiB,
    # token buckets: <action>_rate per second, <action>_burst at most
    "send_rate": 100.0,
    "send_burst": 4000.0,
    "send_bytes_rate": 1.0 * MiB,
    "send_bytes_burst": 64.0 * MiB,
    "claim_keys_rate": 20.0,
    "claim_keys_burst": 400.0,
    "get_devices_rate": 10.0,
    "get_devices_burst": 500.0,
    "upload_keys_rate": 1.0,
    "upload_keys_burst": 30.0,
    "put_devices_rate": 0.2,
    "put_devices_burst": 20.0,
    "link_open_rate": 0.1,
    "link_open_burst": 10.0,
    "link_miss_rate": 0.1,
    "link_miss_burst": 20.0,
    "media_upload_rate": 4.0 * MiB,
    "media_upload_burst": 256.0 * MiB,
    "account_create_rate": 0.05,
    "account_create_burst": 50.0,
    "peer_forward_rate": 20000.0,
    "peer_forward_burst": 200000.0,
    "address_rate_factor": 4.0,
}
"""Every abuse setting and its default (the schema's defaults come from here)."""

RATE_ACTIONS = ("send", "send_bytes", "claim_keys", "get_devices", "upload_keys",
                "put_devices", "link_open", "link_miss", "media_upload", "account_create",
                "peer_forward")
"""The token-bucket actions, each with a ``<action>_rate`` and ``<action>_burst`` setting."""
ADDRESS_ACTIONS = ("link_open", "account_create")
"""Actions counted per source address only: their settings are the address's buckets
(``address_rate_factor`` does not apply)."""


@dataclass(frozen=True, slots=True)
class AbuseLimits:
    """The node's abuse limits (defaults: :data:`DEFAULT_ABUSE`; units and reasoning:
    docs/operations.md, "Abuse limits").

    Attributes:
        queue_device_bytes: envelope bytes one device queue may hold.
        queue_account_bytes: envelope bytes all queues of one receiving account may hold.
        queue_sender_bytes: envelope bytes one sending account may hold in this node's
            queues (all recipients together); also the largest fan-out of one request.
        queue_peer_bytes: the same for everything forwarded by one peer node.
        queue_sender_share, queue_peer_share: the fraction of ``queue_device_bytes``
            one sender (one peer node) may hold in one device queue; the account's own
            devices and accounts it has written to are not bound by it.
        queue_strangers_share: the fraction of ``queue_device_bytes`` all senders the
            account never wrote to may hold together in one device queue.
        quota_retry_after: seconds suggested to a sender refused ``quota_exceeded``.
        max_devices: most devices one device list may hold.
        registration: ``"open"``, ``"invite"`` or ``"closed"`` (new accounts).
        invite_ttl: seconds an invite token of ``wa-relay admin invite`` stays valid.
        watchers_per_user: most watchers one user homed here may have (users notified of
            its list changes); a new one drops the least recently refreshed.
        watching_per_account: most users homed here one account may watch; beyond it
            a new pair is not recorded (the account learns lists by ``stale_devices``).
        watcher_ttl: seconds after which a watcher that did not fetch the list again
            is dropped.
        media_account_quota: media bytes one account may hold on this node.
        outbox_sender_bytes, outbox_total_bytes: bytes the outbox toward unreachable
            peers may hold for one sending account, and in all.
        <action>_rate, <action>_burst: token buckets (tokens per second, most tokens)
            per account; ``send`` counts copies, ``send_bytes`` and ``media_upload``
            bytes, ``claim_keys`` keys, ``peer_forward`` copies per peer node, the
            others (``get_devices``, ``upload_keys``, ``put_devices``...) requests; ``link_open`` and ``account_create`` are per address;
            ``link_miss`` counts a client's ``link_fetch`` / ``link_complete`` that found
            no open mailbox (a word code's 2-byte numbers cannot be scanned).
        address_rate_factor: a source address (IPv4, or IPv6 /64) gets this many
            times an account's buckets.
    """

    queue_device_bytes: int = DEFAULT_ABUSE["queue_device_bytes"]
    queue_account_bytes: int = DEFAULT_ABUSE["queue_account_bytes"]
    queue_sender_bytes: int = DEFAULT_ABUSE["queue_sender_bytes"]
    queue_peer_bytes: int = DEFAULT_ABUSE["queue_peer_bytes"]
    queue_sender_share: float = DEFAULT_ABUSE["queue_sender_share"]
    queue_peer_share: float = DEFAULT_ABUSE["queue_peer_share"]
    queue_strangers_share: float = DEFAULT_ABUSE["queue_strangers_share"]
    quota_retry_after: float = DEFAULT_ABUSE["quota_retry_after"]
    max_devices: int = DEFAULT_ABUSE["max_devices"]
    registration: str = DEFAULT_ABUSE["registration"]
    invite_ttl: float = DEFAULT_ABUSE["invite_ttl"]
    watchers_per_user: int = DEFAULT_ABUSE["watchers_per_user"]
    watching_per_account: int = DEFAULT_ABUSE["watching_per_account"]
    watcher_ttl: float = DEFAULT_ABUSE["watcher_ttl"]
    media_account_quota: int = DEFAULT_ABUSE["media_account_quota"]
    outbox_sender_bytes: int = DEFAULT_ABUSE["outbox_sender_bytes"]
    outbox_total_bytes: int = DEFAULT_ABUSE["outbox_total_bytes"]
    send_rate: float = DEFAULT_ABUSE["send_rate"]
    send_burst: float = DEFAULT_ABUSE["send_burst"]
    send_bytes_rate: float = DEFAULT_ABUSE["send_bytes_rate"]
    send_bytes_burst: float = DEFAULT_ABUSE["send_bytes_burst"]
    claim_keys_rate: float = DEFAULT_ABUSE["claim_keys_rate"]
    claim_keys_burst: float = DEFAULT_ABUSE["claim_keys_burst"]
    get_devices_rate: float = DEFAULT_ABUSE["get_devices_rate"]
    get_devices_burst: float = DEFAULT_ABUSE["get_devices_burst"]
    upload_keys_rate: float = DEFAULT_ABUSE["upload_keys_rate"]
    upload_keys_burst: float = DEFAULT_ABUSE["upload_keys_burst"]
    put_devices_rate: float = DEFAULT_ABUSE["put_devices_rate"]
    put_devices_burst: float = DEFAULT_ABUSE["put_devices_burst"]
    link_open_rate: float = DEFAULT_ABUSE["link_open_rate"]
    link_open_burst: float = DEFAULT_ABUSE["link_open_burst"]
    link_miss_rate: float = DEFAULT_ABUSE["link_miss_rate"]
    link_miss_burst: float = DEFAULT_ABUSE["link_miss_burst"]
    media_upload_rate: float = DEFAULT_ABUSE["media_upload_rate"]
    media_upload_burst: float = DEFAULT_ABUSE["media_upload_burst"]
    account_create_rate: float = DEFAULT_ABUSE["account_create_rate"]
    account_create_burst: float = DEFAULT_ABUSE["account_create_burst"]
    peer_forward_rate: float = DEFAULT_ABUSE["peer_forward_rate"]
    peer_forward_burst: float = DEFAULT_ABUSE["peer_forward_burst"]
    address_rate_factor: float = DEFAULT_ABUSE["address_rate_factor"]

    @classmethod
    def from_settings(cls, settings: Any) -> AbuseLimits:
        """Build from any object with one attribute per field (a parsed ``NodeFile``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def bucket(self, action: str) -> tuple[float, float]:
        """``(rate per second, burst)`` of one of :data:`RATE_ACTIONS`."""
        return getattr(self, f"{action}_rate"), getattr(self, f"{action}_burst")
