"""Refusals of a reshape's handoff at the old home: which ones are worth retrying, and
the users whose new home refused them for good (docs/operations.md, "A stuck handoff";
:mod:`relay.services.handoff` is the handoff itself).

A new home that answers a user's ``handoff_put``, ``handoff_media`` or ``handoff_done``
with a *retryable* code (:data:`RETRYABLE`: it is busy, its storage is full or failing)
or not at all (the link is down, no answer in time) is asked again after the backoff,
without end: the cause passes by itself. Any other refusal (``bad_request``,
``too_large``, ``internal``, an unknown code: a record the new home will never take, an
older version, a buggy or hostile node) will be the same next time: after
:data:`MAX_REFUSALS` of them (retryable ones between do not count) the user is *stuck*.
The old home stops asking, serves the user as before (its state stays here, nothing is
lost), warns once, counts it in ``wa_relay_handoff_users_stuck{peer}`` and shows it in
``/health`` and ``wa-relay status``. A stuck user is tried again (another :data:`MAX_REFUSALS` attempts) when the
old home's link to the new home comes up anew (the new home restarted, e.g. after an
upgrade or a fix) and at every start of the old home. The reshape is unfinished until
every stuck user is handed over.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from relay.errors import RelayError
from relay.protocol import ErrorCode

RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.STORAGE_FULL,
                       ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.RATE_LIMITED})
"""Refusals a new home may answer differently later: retried after the backoff, forever."""
MAX_REFUSALS = 3
"""Other refusals after which a user's handoff is stuck (not tried again)."""
STATUS_USERS = 20
"""Most stuck users listed one by one in ``/health`` and ``wa-relay status`` (all are
counted)."""
MESSAGE_CHARS = 200
"""Longest refusal message kept (it comes from another node: one line, cut there)."""


def permanent(exc: Exception) -> bool:
    """True if the new home refused with a code that will not change by waiting (any
    :class:`RelayError` whose code is not in :data:`RETRYABLE`); a lost link, a timeout
    and a storage error of this node are not."""
    return isinstance(exc, RelayError) and exc.code not in RETRYABLE


@dataclasses.dataclass(slots=True)
class Refusal:
    """The refusals of one user's handoff since it last went through.

    Attributes:
        user_id: the user. peer: its new home (node id).
        code, message: the last refusal (``message`` on one line, at most
            :data:`MESSAGE_CHARS` characters).
        attempts: permanent refusals so far (reset to 0 when the user is tried again after
            being stuck). since: wall-clock time (Unix seconds) of the first refusal.
        stuck: the user is not tried again until :meth:`Refusals.retry`.
        mark: the new home's link session when the user got stuck (any object that
            changes when the link comes up anew; see :meth:`Refusals.retry_due`).
    """

    user_id: str
    peer: str
    code: str
    message: str
    attempts: int = 0
    since: float = 0.0
    stuck: bool = False
    mark: object = None

    def as_dict(self) -> dict[str, object]:
        """What ``/health`` shows of it (``user_id``, ``peer``, ``code``, ``message``,
        ``attempts``, ``since``)."""
        return {"user_id": self.user_id, "peer": self.peer, "code": self.code,
                "message": self.message, "attempts": self.attempts, "since": int(self.since)}


class Refusals:
    """The permanent refusals of the users one old home hands over (see the module
    docstring). Not thread-safe; used from the handoff task and read by the admin views.

    Args:
        log: the node's logger (the one warning per stuck user goes there).
        limit: permanent refusals after which a user is stuck (:data:`MAX_REFUSALS`).

    Attributes:
        limit: as given.
    """

    def __init__(self, log: logging.Logger, limit: int = MAX_REFUSALS) -> None:
        self._log = log
        self.limit = limit
        self._users: dict[str, Refusal] = {}

    def refused(self, user_id: str, peer: str, exc: RelayError, mark: object) -> Refusal:
        """Record one permanent refusal of ``user_id``'s handoff to ``peer``; the user is
        stuck from the :data:`MAX_REFUSALS`-th on (then a warning is logged,
        once). ``mark``: the link session it came over (see :meth:`retry_due`).

        Returns:
            The user's :class:`Refusal` (``stuck`` tells whether it is tried again).
        """
        message = " ".join(exc.message.split())[:MESSAGE_CHARS]
        r = self._users.get(user_id)
        if r is None or r.peer != peer:
            r = self._users[user_id] = Refusal(user_id, peer, exc.code.value, message,
                                               since=time.time())
        r.code, r.message = exc.code.value, message
        r.attempts += 1
        if r.attempts >= self.limit and not r.stuck:
            r.stuck, r.mark = True, mark
            self._log.warning(
                "handoff of %s to %s refused %d times (%s: %s): stopped retrying; the user "
                "stays served by this node and the reshape cannot finish until it is handed "
                "over. Fix the cause (an older version on %s? a record it refuses: wa-relay "
                "status --json names the user, wa-relay admin user show shows it), then "
                "restart %s or this node to try again (docs/operations.md, 'A stuck "
                "handoff')", user_id[:8], peer, r.attempts, r.code, r.message or "-", peer, peer)
        elif not r.stuck:
            self._log.info("handoff of %s to %s refused (%s: %s; %d of %d); retrying",
                           user_id[:8], peer, r.code, r.message or "-", r.attempts, self.limit)
        return r

    def cleared(self, user_id: str) -> None:
        """``user_id`` was handed over (or is not to be): forget its refusals."""
        self._users.pop(user_id, None)

    def is_stuck(self, user_id: str) -> bool:
        """True while ``user_id``'s handoff is stuck (not to be tried)."""
        r = self._users.get(user_id)
        return r is not None and r.stuck

    def retry_due(self, user_id: str, mark: object, link_up: bool) -> bool:
        """For a stuck user: whether its new home's link came up anew since it got stuck
        (``mark``, the link session now, differs from the one recorded, and the link is
        ``link_up``). If so the user is tried again, with :data:`MAX_REFUSALS` more
        attempts, and this returns True."""
        r = self._users.get(user_id)
        if r is None or not r.stuck or not link_up or mark is r.mark:
            return False
        r.stuck, r.attempts, r.mark = False, 0, None
        self._log.info("handoff of %s to %s: the link to %s came up again; trying again",
                       user_id[:8], r.peer, r.peer)
        return True

    def stuck_by_peer(self) -> dict[str, int]:
        """``{new home: stuck users}`` (only new homes with some)."""
        counts: dict[str, int] = {}
        for r in self._users.values():
            if r.stuck:
                counts[r.peer] = counts.get(r.peer, 0) + 1
        return counts

    def stuck(self, limit: int = STATUS_USERS) -> list[Refusal]:
        """The first ``limit`` stuck users, by user id."""
        return sorted((r for r in self._users.values() if r.stuck),
                      key=lambda r: r.user_id)[:limit]
