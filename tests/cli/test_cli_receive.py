"""The client's receive and bounce paths over a scripted connection (no network):
dedupe by msg_id, decrypt -> save -> ack, forged or mismatched copies dropped,
bounced messages re-encrypted and resent with the same msg_id."""

from __future__ import annotations

from contextlib import ExitStack

import msgpack
import pytest
import trio
from cli_cluster import quiet

from cli.client import BacklogDone, Bounce, Client, Dropped, Message, init_account
from cli.events import Kept
from cli.features import payload
from cli.session import crypto
from cli.session.prekeys import signed_keys
from cli.session.state import create_state, seen_key
from relay.protocol.frames import (
    Claimed,
    ClaimedKey,
    Deliver,
    DeliverItem,
    Devices,
    Envelope,
    Sent,
    Synced,
)
from relay.protocol.stored import encode_bounce_body


class ScriptedConn:
    """Stands in for cli.connection.Connection: records what the client sends and
    answers requests from ``answers`` (frame type -> callable(fields) -> frame)."""

    url = "ws://scripted"
    node_id = "n0"

    def __init__(self, log: list, answers: dict) -> None:
        self.otk_count = 100
        self.log = log
        self.answers = answers
        self.push, self.pushes = trio.open_memory_channel(100)
        self.on_key_count = None

    async def send(self, frame_cls, *, stream=False, **fields):
        self.log.append((frame_cls.TYPE, fields))
        return 0

    async def request(self, frame_cls, **fields):
        self.log.append((frame_cls.TYPE, fields))
        return self.answers[frame_cls.TYPE](fields)


@pytest.fixture
def pair(tmp_path):
    with ExitStack() as stack:
        states = []
        for name in ("alice", "bob"):
            s = stack.enter_context(
                create_state(tmp_path / name, name=name, relay_url="ws://scripted"))
            init_account(s)
            states.append(quiet(s))
        alice, bob = states
        bob.remember_device_list(alice.device_lists[alice.user_id].signed, alice.user_id)
        alice.remember_device_list(bob.device_lists[bob.user_id].signed, bob.user_id)
        yield alice, bob


def _olm_to(bob, sender, plaintext):
    otk = bob.identity.unpublished_one_time_keys()[0]
    session = sender.identity.create_outbound_session(bob.identity.curve25519, otk.key)
    return crypto.encrypt(session, plaintext)


def _deliver(seq, msg_id, sender, body, kind="olm", device=0):
    return Deliver(id=0, items=[DeliverItem(seq, Envelope(
        msg_id=msg_id, sender_user=sender.user_id, sender_device=device, ts=1, kind=kind,
        body=body))])


async def _events(client, n):
    receiver = client.receive()
    return [await receiver.__anext__() for _ in range(n)]


async def test_duplicates_are_shown_once_and_acked_after_saving(pair):
    alice, bob = pair
    log = []
    conn = ScriptedConn(log, {})
    client = Client(bob, conn)
    original_asave = bob.asave

    async def logged_asave():
        log.append(("save", {}))
        await original_asave()

    bob.asave = logged_asave
    msg_id = b"\x01" * 16
    body = _olm_to(bob, alice, payload.TextPayload(msg_id, "hi", 5, "alice", bob.user_id).encode())
    for seq in (1, 2):  # the relay redelivers (e.g. the first ack was lost)
        conn.push.send_nowait(_deliver(seq, msg_id, alice, body))
    conn.push.send_nowait(Synced(id=0))
    with trio.fail_after(5):
        events = await _events(client, 2)
    assert isinstance(events[0], Message) and events[0].text == "hi"
    assert events[0].msg_id == msg_id and events[0].ts == 5
    assert isinstance(events[1], BacklogDone)
    assert [t for t, _ in log] == ["sync", "save", "ack"]
    assert log[-1][1] == {"seq": 2}
    assert bob.find_history(msg_id.hex())["text"] == "hi"


async def test_keep_puts_the_batch_into_the_inbox_durably_before_the_ack(pair):
    alice, bob = pair
    log = []
    conn = ScriptedConn(log, {})
    client = Client(bob, conn)
    original_asave = bob.asave

    async def logged_asave():
        log.append(("save", {"inbox": [p.event.text for p in bob.inbox.pending()]}))
        await original_asave()

    bob.asave = logged_asave
    otks = iter(bob.identity.unpublished_one_time_keys())
    for seq in (1, 2):
        msg_id = bytes([seq]) * 16
        session = alice.identity.create_outbound_session(bob.identity.curve25519,
                                                         next(otks).key)
        body = crypto.encrypt(session, payload.TextPayload(msg_id, f"m{seq}", seq, "alice",
                                                           bob.user_id).encode())
        conn.push.send_nowait(_deliver(seq, msg_id, alice, body))
    conn.push.send_nowait(Synced(id=0))
    receiver = client.receive(keep=True)
    with trio.fail_after(5):
        events = [await receiver.__anext__() for _ in range(2)]
    assert events == [Kept(2), BacklogDone()]
    assert [t for t, _ in log] == ["sync", "save", "ack"]
    assert log[1][1] == {"inbox": ["m1", "m2"]}  # kept before the save that precedes the ack
    assert [p.event.text for p in bob.inbox.pending()] == ["m1", "m2"]


async def test_a_withheld_copy_is_dropped_with_its_reason(pair):
    alice, bob = pair
    log = []
    conn = ScriptedConn(log, {})
    client = Client(bob, conn)
    conn.push.send_nowait(_deliver(1, b"\x09" * 16, alice, b""))
    with trio.fail_after(5):
        (event,) = await _events(client, 1)
    assert isinstance(event, Dropped) and event.reason.startswith("withheld")
    assert log[-1] == ("ack", {"seq": 1})


async def test_forged_and_mismatched_copies_are_dropped_but_acked(pair):
    alice, bob = pair
    log = []
    conn = ScriptedConn(log, {"get_devices": lambda f: Devices(
        id=1, device_list=alice.device_lists[alice.user_id].signed),
        "claim_keys": lambda f: Claimed(id=1, keys=[]),
        "send": lambda f: Sent(id=1, status="stored")})
    client = Client(bob, conn)
    inner, outer = b"\x02" * 16, b"\x03" * 16
    body = _olm_to(bob, alice, payload.TextPayload(inner, "x", 1, "alice", bob.user_id).encode())
    conn.push.send_nowait(_deliver(1, outer, alice, body))  # replayed under another msg_id
    conn.push.send_nowait(_deliver(2, b"\x04" * 16, alice, body, device=7))  # ghost device
    conn.push.send_nowait(_deliver(3, b"\x05" * 16, alice, b"\x01garbage"))
    with trio.fail_after(5):
        events = await _events(client, 3)
    assert all(isinstance(e, Dropped) for e in events)
    assert "differs from the envelope" in events[0].reason
    assert "not in its account-signed device list" in events[1].reason
    assert log[-1] == ("ack", {"seq": 3})
    assert not any(seen_key(alice.user_id, m) in bob.seen
                   for m in (inner, outer, b"\x04" * 16, b"\x05" * 16))
    # the undecryptable copy makes bob's device ask alice's device for a resend
    (sent,) = [f for t, f in log if t == "send"]
    assert [(r.user_id, [c.device_id for c in r.copies]) for r in sent["recipients"]] == [
        (alice.user_id, [0])]


async def test_bounce_from_the_own_home_is_resent_to_the_same_devices_only(pair):
    alice, bob = pair
    otks = iter(signed_keys(bob.identity, bob.user_id, 0, bob.identity.unpublished_one_time_keys()))
    statuses = iter(["queued", "stored"])
    log = []
    conn = ScriptedConn(log, {
        "get_devices": lambda f: Devices(id=1, device_list=bob.device_lists[bob.user_id].signed),
        "claim_keys": lambda f: Claimed(id=1, keys=[
            ClaimedKey(device_id=0, key_id=(k := next(otks)).key_id, key=k.key, fallback=False,
                       signature=k.signature)]),
        "send": lambda f: Sent(id=1, status=next(statuses)),
    })
    client = Client(alice, conn)
    result = await client.send_text(bob.user_id, "hello")
    assert result.status == "queued"
    assert alice.find_history(result.msg_id.hex())["to_devices"] == [[bob.user_id, 0]]
    relayed = encode_bounce_body("stale_devices", "gone", bob.user_id, "peer")
    own = encode_bounce_body("stale_devices", "gone", bob.user_id)
    for seq, body in ((1, relayed), (2, own)):
        conn.push.send_nowait(Deliver(id=0, items=[DeliverItem(seq, Envelope(
            msg_id=result.msg_id, sender_user=alice.user_id, sender_device=0, ts=1,
            kind="bounce", body=body))]))
    with trio.fail_after(5):
        first, second = await _events(client, 2)
    # a bounce another node relayed is shown, and nothing is resent on it
    assert isinstance(first, Bounce) and first.resent_status is None
    assert "not resent" in first.message
    # the own home's bounce: resent to bob's device 0 (the device it was sent to)
    assert isinstance(second, Bounce)
    assert (second.code, second.user_id, second.resent_status) == (
        "stale_devices", bob.user_id, "stored")
    sends = [f for t, f in log if t == "send"]
    assert len(sends) == 2 and sends[0]["msg_id"] == result.msg_id
    assert sends[1]["msg_id"] != result.msg_id  # a new envelope id naming the original
    copy = sends[1]["recipients"][0].copies[0]
    text, _, _ = crypto.decrypt(bob.identity, [], alice.identity.curve25519, copy.body)
    m = msgpack.unpackb(text)
    assert (m["type"], m["about"]) == ("resend", result.msg_id)
    assert payload.decode(m["payload"]).text == "hello"
