"""Catching up before a group send (issue 10, finding 7).

A member that was offline while an admin removed someone would otherwise share
its sender key with, and send to, the removed member until it happens to
receive the removal. So before a group message leaves, the device processes
what is queued for it (:func:`catch_up`): a newer group state (or a device
list without a removed device) is adopted first, which rotates the sender key
and drops the removed member from the recipients. What it receives is kept in
the inbox (:mod:`cli.session.inbox`), as ``wa-cli recv`` keeps it, so nothing is
lost: the next ``recv`` shows it, and a later ``receive()`` yields it first.

If a receiver is running on the client already (the daemon, ``recv --follow``),
the state is kept current by it and nothing is done here. A bare
:class:`~cli.session.session.Session` cannot receive (only the client facade,
:class:`cli.client.Client`, has ``receive``): nothing is done either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from cli.events import BacklogDone

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["CATCH_UP_TIMEOUT", "catch_up"]

CATCH_UP_TIMEOUT = 10.0
"""Seconds a catch-up waits for the backlog at most (then the send goes ahead)."""


async def catch_up(session: Session) -> bool:
    """Process this device's queued envelopes (kept in the inbox) up to the backlog marker.

    Returns:
        True if the backlog was processed; False if ``session`` cannot receive, a
        receiver is already running on it, or the backlog did not end within
        :data:`CATCH_UP_TIMEOUT` seconds.

    Raises:
        ClientError: receiving failed (e.g. ``ConnectionLost``).
    """
    receive = getattr(session, "receive", None)
    if receive is None or getattr(session, "receiving", False):
        return False
    receiver = receive(keep=True)
    if receiver.backlog_done:  # this connection synced already: take what was pushed since
        await receiver.process_pushed()
        return True
    with trio.move_on_after(CATCH_UP_TIMEOUT):
        async for event in receiver:
            if isinstance(event, BacklogDone):
                return True
    return False
