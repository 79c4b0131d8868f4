"""Unit tests of :mod:`relay.services.handoff_refusals` (which refusals of a handoff are
retried, when a user is stuck, when it is tried again) and of the stuck lines of
``wa-relay status`` (the end-to-end test is tests/relay/test_attacks_handoff_refused.py)."""

from __future__ import annotations

import logging

import pytest

from relay.admin.status import NodeStatus, format_status
from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.services.federation import LinkDown
from relay.services.handoff_refusals import MAX_REFUSALS, Refusals, permanent
from storage import StorageUnavailable

LOG = logging.getLogger("wa_relay.node.test")


@pytest.mark.parametrize("code", ["unavailable", "storage_full", "storage_unavailable",
                                  "rate_limited"])
def test_refusals_that_pass_by_themselves_are_not_permanent(code: str) -> None:
    assert not permanent(RelayError(ErrorCode(code), "later"))


@pytest.mark.parametrize("code", ["bad_request", "too_large", "internal", "bad_frame",
                                  "unauthorized"])
def test_other_refusals_are_permanent(code: str) -> None:
    assert permanent(RelayError(ErrorCode(code), "never"))


def test_a_lost_link_or_a_local_storage_error_is_not_a_refusal() -> None:
    assert not permanent(LinkDown("gone"))
    assert not permanent(StorageUnavailable("eio"))


def test_a_user_is_stuck_after_the_limit_warned_once_and_tried_again_on_a_new_link(
        caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    refusals = Refusals(LOG)
    exc = RelayError(ErrorCode.BAD_REQUEST, "bad\nhandoff   batch " + "x" * 300)
    session = object()
    for attempt in range(1, MAX_REFUSALS + 1):
        r = refusals.refused("u" * 56, "n3", exc, session)
        assert r.attempts == attempt and r.stuck == (attempt == MAX_REFUSALS)
    assert r.message.startswith("bad handoff batch x") and len(r.message) == 200
    assert refusals.is_stuck("u" * 56) and refusals.stuck_by_peer() == {"n3": 1}
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    # the same link session, or a new one not up yet: not tried again
    assert not refusals.retry_due("u" * 56, session, True)
    assert not refusals.retry_due("u" * 56, object(), False)
    assert refusals.is_stuck("u" * 56)
    # the link came up anew: tried again, with the whole limit
    assert refusals.retry_due("u" * 56, object(), True)
    assert not refusals.is_stuck("u" * 56) and refusals.stuck_by_peer() == {}
    assert not refusals.refused("u" * 56, "n3", exc, session).stuck
    refusals.cleared("u" * 56)
    assert refusals.stuck() == []


def test_status_lists_stuck_users_and_counts_the_rest() -> None:
    users = [{"user_id": f"user{i:02d}", "peer": "n3", "code": "bad_request",
              "message": "bad handoff batch", "attempts": 3, "since": 0} for i in range(20)]
    st = NodeStatus("n1", "ws://127.0.0.1:1", "http://127.0.0.1:2", reachable=True,
                    ring_version="a" * 64, ring_matches=True, healthy=True,
                    handoff={"reshaping": True, "done": False, "remaining": 30,
                             "waiting_for": [], "stuck": 25, "stuck_by": {"n3": 25},
                             "stuck_users": users})
    text = format_status(st)
    assert "handoff: 30 users to hand over (25 STUCK)\n" in text  # none coming in: no "waiting for -"
    assert text.count(" STUCK: refused 3 times (bad_request: bad handoff batch)") == 20
    assert "... and 5 more stuck users" in text
    assert "restart the new home or this node to retry" in text
    st.handoff = {"reshaping": True, "done": False, "remaining": 2, "waiting_for": ["n2"]}
    assert "STUCK" not in format_status(st)  # a node of an older version: no such fields
    assert "handoff: 2 users to hand over, users may still come in from n2" in format_status(st)
