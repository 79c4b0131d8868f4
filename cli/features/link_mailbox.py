"""The approving primary's side of a linking mailbox (docs/protocol.md, "Linking a
companion device" and "Linking with a word code (PAKE)"): fetch it, run a word code's
SPAKE2 exchange, tell a declined device. :mod:`cli.features.devices` decides and
publishes; this module only talks to the mailbox.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from cli.errors import ConnectionLost, LinkFailed, RelayError
from cli.features import wordcode
from cli.features.linkcode import DeviceInfo, LinkCodeError
from relay.protocol import ErrorCode
from relay.protocol.frames import LinkComplete, LinkFetch, LinkInfo

if TYPE_CHECKING:
    from cli.session.session import Session

log = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = "the linking code is wrong, already used or expired; nothing changed"
USED_MESSAGE = ("this code was already used; run 'wa-cli link --short' again for a new code (it "
                "served another approval: approved, declined or with mistyped words; nothing "
                "changed)")
LONG_USED_MESSAGE = ("this linking code was already used; run 'wa-cli link' again for a new "
                     "code (nothing changed)")
REPLY_POLL = 0.2  # seconds between reads of a word-code mailbox while its device answers
REPLY_WAIT = 30.0  # seconds the new device gets to answer our PAKE message


def used_code(short: bool) -> LinkFailed:
    """The failure of a code that served an approval already (``link_code_used``)."""
    return LinkFailed(USED_MESSAGE if short else LONG_USED_MESSAGE, reason="link_code_used")


def _link_failed(exc: RelayError, short: bool) -> LinkFailed | None:
    """What a mailbox request's refusal means to the approver: ``not_found`` and
    ``already_used`` as :class:`LinkFailed` (``short``: a word code's wording);
    ``None``: any other refusal, raised as itself."""
    if exc.code == ErrorCode.NOT_FOUND:
        return LinkFailed(NOT_FOUND_MESSAGE)
    if exc.code == ErrorCode.ALREADY_USED:
        return used_code(short)
    return None


async def fetch_mailbox(client: Session, node_id: str, mailbox_id: bytes, *,
                 short: bool = False) -> LinkInfo:
    """``link_fetch``.

    Raises:
        LinkFailed: ``not_found`` or ``already_used`` (:func:`used_code`; ``short``: a word
            code's wording).
        RelayError, ConnectionLost.
    """
    try:
        return await client.connection.request(LinkFetch, node_id=node_id, mailbox_id=mailbox_id)
    except RelayError as exc:
        failed = _link_failed(exc, short)
        if failed is None:
            raise
        raise failed from exc


async def tell_declined(client: Session, code: wordcode.WordCode,
                         seal: Callable[[bytes], bytes]) -> bool:
    """Tell a word code's waiting device that its user declined it: :data:`wordcode.DECLINED`
    sealed under the PAKE key (so a relay cannot forge it, nor an approval), as the
    ``link_complete`` that closes the mailbox. Best effort: a refusal or a lost
    connection is logged (the device then waits until its code expires).

    Returns:
        Whether the relay took it.

    Raises:
        nothing of the client's (see above).
    """
    try:
        await client.connection.request(LinkComplete, node_id=code.node_id,
                                         mailbox_id=code.mailbox_id, body=seal(wordcode.DECLINED))
    except (RelayError, ConnectionLost) as exc:
        log.info("could not tell the new device that it was declined: %s", exc)
        return False
    return True


def device_info(blob: bytes) -> DeviceInfo:
    try:
        return DeviceInfo.decode(blob)
    except LinkCodeError as exc:
        raise LinkFailed(f"the new device sent malformed info ({exc}); nothing changed") from exc


async def pake_exchange(
    client: Session, code: wordcode.WordCode,
) -> tuple[DeviceInfo, Callable[[bytes], bytes], None]:
    """A word code (:mod:`cli.features.wordcode`): read the new device's SPAKE2 message,
    answer with ours (``link_complete {more}``), then wait for its info sealed under the
    PAKE key (``link_info.reply``, polled every :data:`REPLY_POLL` s for at most
    :data:`REPLY_WAIT` s). Nothing is published before that info decrypted.

    Returns:
        ``(device info, seal for the material, None)`` (no code secret: the PAKE key
        authenticates the material).

    Raises:
        LinkFailed: unknown or expired mailbox, used already (``reason``
            ``link_code_used``: another approval's exchange took it; the relay says so,
            or the device's answer is there before ours was sent), not a word-code
            mailbox, no answer in time, or the answer does not decrypt (a wrong code or
            tampering: the link is over).
    """
    answer = await fetch_mailbox(client, code.node_id, code.mailbox_id, short=True)
    theirs = wordcode.read_pake_info(answer.device_info)
    if theirs is None:
        raise LinkFailed("that mailbox is not waiting for a word code; nothing changed")
    if answer.reply is not None:  # answered someone else's PAKE message already
        raise used_code(True)
    pake = wordcode.Pake(code.words, primary=True)
    try:
        n2p, p2n = pake.finish(theirs)
    except LinkCodeError as exc:
        raise LinkFailed(f"{exc}; nothing changed") from exc
    try:
        await client.connection.request(LinkComplete, node_id=code.node_id,
                                         mailbox_id=code.mailbox_id, body=pake.message, more=True)
    except RelayError as exc:
        failed = _link_failed(exc, True)
        if failed is None:
            raise
        raise failed from exc
    with trio.move_on_after(REPLY_WAIT):
        while answer.reply is None:
            await trio.sleep(REPLY_POLL)
            try:
                answer = await fetch_mailbox(client, code.node_id, code.mailbox_id)
            except LinkFailed as exc:  # gone after our message went: its device left
                raise LinkFailed("the new device stopped waiting (or its code expired) before "
                                 "it answered; nothing changed. Run 'wa-cli link --short' "
                                 "again") from exc
    if answer.reply is None:
        raise LinkFailed(f"the new device did not answer within {REPLY_WAIT:g} s; nothing "
                         "changed")
    try:
        info = device_info(wordcode.open_box(n2p, answer.reply))
    except LinkCodeError as exc:
        # the new device answered this attempt: the code is spent (a retry with the right
        # words is refused as used), so the advice is a new code, not another approve
        raise LinkFailed(f"{exc}; nothing changed. This code cannot be used again: run "
                         "'wa-cli link --short' again on the new device (stop the waiting "
                         "one) and check the words of the new code") from exc
    return info, functools.partial(wordcode.seal_box, p2n), None
