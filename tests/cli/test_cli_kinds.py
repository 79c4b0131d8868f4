"""Message kinds (cli.kinds, cli.payload) and their effects on a device's history
(cli.effects, cli.prefs), without a relay; the leave rule of group states."""

from __future__ import annotations

import os
from contextlib import ExitStack

import nacl.signing
import pytest
import trio
from cli_cluster import alice_and_bob, drain, quiet, run_cluster

from cli.client import BacklogDone, init_account, open_client
from cli.events import Dropped, Message, Requested
from cli.features import actions, effects, payload
from cli.features.kinds import KindPayload
from cli.session import groups
from cli.session.crypto import account_user_id
from cli.session.group_chain import GroupForked
from cli.session.group_state import GroupStateRejected
from cli.session.state import create_state, open_state

ALICE = "a" * 52
CAROL = "c" * 52


def text(to: str, body: str, **kw) -> payload.TextPayload:
    return payload.TextPayload(os.urandom(16), body, effects.now_ms(), "alice", to, **kw)


def kind(kind_: str, to: str, **fields) -> KindPayload:
    return KindPayload(kind_, os.urandom(16), effects.now_ms(), "alice", to, fields)


def test_every_kind_round_trips_and_bad_fields_are_refused() -> None:
    target = os.urandom(16)
    for p in (text("x", "hi", reply_to=target, expires=60),
              kind("reaction", "x", target=target, emoji="👍"),
              kind("reaction", "x", target=target, emoji=""),
              kind("edit", "x", target=target, text="new"),
              kind("delete", "x", target=target),
              kind("receipt", "x", status="read", targets=[target, os.urandom(16)]),
              kind("typing", "x", active=True),
              kind("timer", "x", expires=0)):
        assert payload.decode(p.encode()) == p
    for bad in (kind("reaction", "x", target=b"short", emoji="x"),
                kind("reaction", "x", target=target, emoji="x" * 17),
                kind("edit", "x", target=target, text=""),
                kind("receipt", "x", status="seen", targets=[target]),
                kind("receipt", "x", status="read", targets=[]),
                kind("typing", "x", active=1),
                kind("timer", "x", expires=-1),
                text("x", "hi", expires=10**9)):
        with pytest.raises(payload.PayloadError):
            payload.decode(bad.encode())


def test_effects_on_history(tmp_path) -> None:
    with create_state(tmp_path / "bob", name="bob", relay_url="ws://unset") as bob:
        init_account(bob)
        quiet(bob)  # the effects of each kind, not message requests
        m1 = text(bob.user_id, "hello", expires=1)
        shown = effects.on_payload(bob, ALICE, 0, m1, peer=ALICE)
        assert isinstance(shown, Message) and shown.extra == {"expires_in": 1}
        entry = bob.find_history(m1.msg_id.hex())
        assert entry["expires_at"] == m1.ts + 1000

        effects.on_payload(bob, ALICE, 0, kind("edit", bob.user_id, target=m1.msg_id,
                                               text="hello!"), peer=ALICE)
        assert (entry["text"], entry["edited"] > 0) == ("hello!", True)
        # a message of another conversation is out of reach
        effects.on_payload(bob, CAROL, 0, kind("edit", bob.user_id, target=m1.msg_id,
                                               text="carol was here"), peer=CAROL)
        assert entry["text"] == "hello!"
        effects.on_payload(bob, ALICE, 0, kind("reaction", bob.user_id, target=m1.msg_id,
                                               emoji="👍"), peer=ALICE)
        assert entry["reactions"] == {ALICE: "👍"}

        mine = text(ALICE, "sent by bob")
        effects.on_payload(bob, bob.user_id, 0, mine, peer=ALICE)
        effects.on_payload(bob, ALICE, 0, kind("receipt", bob.user_id, status="read",
                                               targets=[mine.msg_id]), peer=ALICE)
        sent = bob.find_history(mine.msg_id.hex())
        assert sent["receipts"] == {"delivered": [ALICE], "read": [ALICE]}
        # only the author edits or deletes: alice cannot delete bob's message
        refused = effects.on_payload(bob, ALICE, 0, kind("delete", bob.user_id,
                                                         target=mine.msg_id), peer=ALICE)
        assert isinstance(refused, Dropped) and not sent.get("deleted")
        effects.on_payload(bob, ALICE, 0, kind("delete", bob.user_id, target=m1.msg_id),
                           peer=ALICE)
        assert (entry["text"], entry["deleted"], "reactions" in entry) == ("", True, False)

        bob.prefs.blocked.add(CAROL)
        assert isinstance(effects.on_payload(bob, CAROL, 0, text(bob.user_id, "x"), peer=CAROL),
                          Dropped)
        bob.prefs.hold_requests = True
        held = effects.on_payload(bob, CAROL + "", 0, text(bob.user_id, "x"), peer=CAROL)
        assert isinstance(held, Dropped)  # still blocked
        bob.prefs.blocked.clear()
        dave = "d" * 52
        held = effects.on_payload(bob, dave, 0, text(bob.user_id, "hi"), peer=dave)
        assert isinstance(held, Requested) and held.key == dave
        assert bob.prefs.requests[dave]["ids"] == [held.msg_id]

        assert effects.sweep(bob, now=m1.ts + 999) == 0
        n = len(bob.history)
        assert effects.sweep(bob, now=m1.ts + 1000) == 1
        assert len(bob.history) == n - 1 and bob.find_history(m1.msg_id.hex()) is None
        bob.save()
    with open_state(tmp_path / "bob") as again:  # prefs and the sweep survive a reopen
        assert again.prefs.hold_requests and dave in again.prefs.requests
        assert again.find_history(m1.msg_id.hex()) is None
        assert again.find_history(mine.msg_id.hex())["receipts"]["read"] == [ALICE]


def test_a_member_may_sign_only_its_own_leave() -> None:
    """A leave is a link of the hash chain like any change (version + 1, ``prev`` the
    held head) signed by the leaver, accepted only if its one change is the leaver's
    removal; the chain's fork detection still holds after it."""
    keys = [nacl.signing.SigningKey.generate() for _ in range(4)]
    alice, bob, carol, dave = (account_user_id(k) for k in keys)
    gid = groups.new_group_id()
    store = groups.GroupStore()
    _, s1 = groups.make_state(keys[0], group_id=gid, name="team", members=[alice, bob, carol],
                              admins=[alice], version=1, creator=alice)
    store.apply([s1], sender=alice, me=carol)
    head = s1.digest()

    def by_bob(name: str, members: list[str], prev: bytes = head):
        return groups.make_state(keys[1], group_id=gid, name=name, members=members,
                                 admins=[alice], version=2, creator=alice, prev=prev)

    with pytest.raises(GroupStateRejected, match="not an admin"):
        store.apply([by_bob("team", [alice, bob])[1]], sender=bob, me=carol)  # removing carol
    with pytest.raises(GroupStateRejected, match="not an admin"):
        store.apply([by_bob("bobs", [alice, carol])[1]], sender=bob, me=carol)  # and renaming
    with pytest.raises(GroupStateRejected, match="does not name version 1"):
        store.apply([by_bob("team", [alice, carol], bytes(32))[1]], sender=bob, me=carol)
    v2, leave = by_bob("team", [alice, carol])
    assert store.apply([leave], sender=bob, me=carol)[1] == v2
    # another version 2 (alice's, from the same head) is a fork, not adopted
    _, other = groups.make_state(keys[0], group_id=gid, name="other", members=[alice, bob, carol],
                                 admins=[alice], version=2, creator=alice, prev=head)
    with pytest.raises(GroupForked):
        store.apply([s1, other], sender=alice, me=carol)
    assert store.groups[gid].state == v2 and store.groups[gid].forked == 2
    # a newcomer accepts the whole chain, the leave included
    dave_store = groups.GroupStore()
    _, v3 = groups.make_state(keys[0], group_id=gid, name="team", members=[alice, carol, dave],
                              admins=[alice], version=3, creator=alice, prev=leave.digest())
    assert dave_store.apply([s1, leave, v3], sender=alice, me=dave)[1].members == (
        tuple(sorted([alice, carol, dave])))


async def test_typing_crosses_homes_live_and_is_never_queued(tmp_path) -> None:
    """Ephemeral sends (relay/services/ephemeral.py) from alice's home to bob's, another
    node: a connected, syncing device gets it with seq 0; offline, nothing is kept."""
    with trio.fail_after(60), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            async with open_client(alice) as sender:
                assert await actions.typing(sender, bob.user_id, True) == 1  # bob's one device
                async with open_client(bob) as client:
                    receiver = client.receive()
                    assert isinstance(await receiver.__anext__(), BacklogDone)
                    await actions.typing(sender, bob.user_id, False)
                    event = await receiver.__anext__()
                    assert isinstance(event, Message) and event.extra == {"typing": False}
                    assert (event.sender_user, event.type) == (alice.user_id, "typing")
                    # a real message after it still arrives and is acknowledged normally
                    sent = await actions.send_text(sender, bob.user_id, "after typing")
                    event = await receiver.__anext__()
                    assert event.msg_id == sent.msg_id and event.text == "after typing"
            async with open_client(bob) as client:  # nothing was queued for bob meanwhile
                assert await drain(client) == []
            assert bob.find_history(sent.msg_id.hex())["text"] == "after typing"
