"""The notification payloads of a shared PostgreSQL storage (no server needed): an
ephemeral copy survives the round trip, and payloads stay under PostgreSQL's limit."""

from __future__ import annotations

import pytest

from storage.postgresql._notify import (
    PAYLOAD_MAX,
    EphemeralCopy,
    ephemeral_payloads,
    parse,
)


def copy(n: int, size: int = 200) -> EphemeralCopy:
    return EphemeralCopy("u" * 52, n, bytes(range(16)), "s" * 52, 3, 1765000000000 + n,
                         bytes([n % 256]) * size)


def test_ephemeral_copies_round_trip_split_under_the_limit():
    copies = [copy(n) for n in range(100)]
    notes = ephemeral_payloads("origin1", copies)
    assert len(notes) > 1 and all(len(p.encode()) <= PAYLOAD_MAX for p in notes)
    got = []
    for p in notes:
        origin, changes = parse(p)
        assert origin == "origin1" and changes and not changes.queues
        got += changes.ephemeral
    assert got == copies


def test_a_copy_too_large_for_one_notification_is_left_out():
    assert ephemeral_payloads("o", [copy(1, size=PAYLOAD_MAX)]) == []


@pytest.mark.parametrize("item", ["a:1", "u:x:00:s:1:2:AA==", "u:1:00:s:1:2:not base64!"])
def test_malformed_ephemeral_items_are_refused(item):
    with pytest.raises(ValueError):
        parse(f"o|e|{item}")
