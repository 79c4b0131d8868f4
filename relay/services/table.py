"""The node's handler table: every service's requests, by frame type.

Services and what they serve:

* directory: ``put_devices``, ``get_devices``, ``upload_keys``, ``claim_keys``;
* linking: ``link_fetch``, ``link_complete``;
* device-list notices: ``notify`` (peers);
* media: ``media_upload``, ``media_status``, ``media_download``;

Rate limits (:class:`relay.services.limits.RateLimits`, per account and per source
address) are taken before ``put_devices``, ``upload_keys``, ``claim_keys`` (one token
per device claimed) and ``media_upload`` (one per byte) are served; a first device
list also passes the registration policy (:mod:`relay.services.registration`).
* messaging (peers): ``forward``, ``group_forward``, ``forward_batch``
  (:mod:`relay.services.messaging`);
* ephemeral sends: ``send {ephemeral: true}`` (:mod:`relay.services.ephemeral`);
* handoff (peers): ``handoff_put``, ``handoff_done``, ``handoff_complete``
  (:mod:`relay.services.handoff`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import RelayError
from relay.protocol import ErrorCode, verify_device_list
from relay.protocol.frames import (
    ClaimKeys,
    Frame,
    GetDevices,
    KeyCount,
    LinkComplete,
    LinkFetch,
    MediaDownload,
    MediaStatus,
    MediaUpload,
    Notify,
    Ok,
    PutDevices,
    UploadKeys,
)
from relay.services import lookups
from relay.services.base import Caller, Table
from relay.services.ephemeral import ephemeral_table
from relay.services.handoff_in import handoff_table
from relay.services.messaging import messaging_table

if TYPE_CHECKING:
    from relay.node import Node


def directory_table(node: Node) -> Table:
    """Handlers of the key directory."""

    async def put_devices(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, PutDevices)
        parsed = verify_device_list(frame.device_list)
        await node.handoff.incoming.settle(parsed.user_id)
        node.directory.check_home(parsed.user_id)
        node.directory.check_device_count(parsed)
        current = await node.directory.get_device_list(parsed.user_id)
        # a replayed list (lists are public) is refused before any token is taken: else
        # anyone could drain the account's put_devices bucket and keep its owner from
        # publishing a change (removing a stolen device, re-signing before expiry)
        if current is not None and parsed.version <= current[1].version:
            raise RelayError(ErrorCode.STALE_VERSION, "device list version must grow",
                             user_id=parsed.user_id)
        node.rates.take("put_devices", account=parsed.user_id, address=caller.address)
        if current is None:
            await node.registration.admit(frame.invite, caller.address)
        await node.changes.publish(frame.device_list)
        return Ok(id=frame.id)

    async def get_devices(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, GetDevices)
        if not caller.is_peer:  # the asking device's node counts it (no double count)
            node.rates.take("get_devices", account=caller.user_id, address=caller.address)
        return await lookups.get_devices(node, frame, user_id=caller.user_id,
                                         peer_id=caller.peer_id)

    async def upload_keys(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, UploadKeys)
        user_id, device_id = caller.device()
        node.rates.take("upload_keys", account=user_id, address=caller.address)
        count = await node.directory.upload_keys(user_id, device_id, frame.one_time_keys,
                                                 frame.fallback_key)
        return KeyCount(id=frame.id, otk_count=count)

    async def claim_keys(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, ClaimKeys)
        if not caller.is_peer:  # the asking device's home counts it (no double count)
            node.rates.take("claim_keys", max(1, len(frame.device_ids)),
                            account=caller.user_id, address=caller.address)
        return await lookups.claim_keys(node, frame, from_peer=caller.is_peer)

    return {PutDevices: put_devices, GetDevices: get_devices, UploadKeys: upload_keys,
            ClaimKeys: claim_keys}


def linking_table(node: Node) -> Table:
    """Handlers of the primary's side of linking (the new device's ``link_open`` is
    served by its connection, which owns the mailbox)."""

    async def link(caller: Caller, frame: Frame) -> Frame:
        """A client's request takes a ``link_miss`` token first (refused
        ``rate_limited`` before the mailbox is looked at when there is none) and gets
        it back unless the answer is ``not_found`` or ``already_used``: a word code's
        2-byte numbers cannot be scanned (docs/protocol.md, "Linking")."""
        assert isinstance(frame, LinkFetch | LinkComplete)
        if caller.is_peer:  # the asking device's node counted it
            return await node.linking.handle(frame, from_peer=True)
        who = {"account": caller.user_id, "address": caller.address}
        node.rates.take("link_miss", **who)
        try:
            answer = await node.linking.handle(frame, from_peer=False)
        except RelayError as exc:
            if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.ALREADY_USED):
                node.rates.give_back("link_miss", **who)
            raise
        node.rates.give_back("link_miss", **who)
        return answer

    return {LinkFetch: link, LinkComplete: link}


def notices_table(node: Node) -> Table:
    """Handlers of device-list change notices between nodes."""

    async def notify(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Notify) and caller.peer_id is not None
        await node.changes.receive(frame, caller.peer_id)
        return Ok(id=frame.id)

    return {Notify: notify}


def media_table(node: Node) -> Table:
    """Handlers of encrypted media transfers."""

    async def upload(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, MediaUpload)
        user_id = caller.device()[0]
        node.rates.take("media_upload", max(1, len(frame.chunk)), account=user_id,
                        address=caller.address)
        return await node.media.upload(user_id, frame)

    async def status(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, MediaStatus)
        return await node.media.status(frame)

    async def download(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, MediaDownload)
        return await node.media.download(frame, from_peer=caller.is_peer)

    return {MediaUpload: upload, MediaStatus: status, MediaDownload: download}


def node_table(node: Node) -> Table:
    """Every service's handlers merged (a frame type served twice is a bug).

    Raises:
        ValueError: two services claim the same frame type.
    """
    table: Table = {}
    for part in (directory_table(node), linking_table(node), notices_table(node),
                 media_table(node), messaging_table(node), handoff_table(node),
                 ephemeral_table(node)):
        for cls, handler in part.items():
            if cls in table:
                raise ValueError(f"{cls.TYPE!r} is served twice")
            table[cls] = handler
    return table
