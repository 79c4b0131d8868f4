"""The client's receive and bounce paths over a scripted connection (no network):
dedupe by msg_id, decrypt -> save -> ack, forged or mismatched copies dropped,
bounced messages re-encrypted and resent with the same msg_id."""

from __future__ import annotations

from contextlib import ExitStack

import msgpack
import pytest
import trio

from cli.client import BacklogDone, Bounce, Client, Dropped, Message, init_account
from cli.events import Kept
from cli.features import payload
from cli.session import crypto
from cli.session.state import create_state
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
            states.append(s)
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
        id=1, device_list=alice.device_lists[alice.user_id].signed)})
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
    assert not bob.seen


async def test_bounce_is_reencrypted_and_resent_with_the_same_msg_id(pair):
    alice, bob = pair
    otks = iter(bob.identity.unpublished_one_time_keys())
    statuses = iter(["queued", "stored"])
    log = []
    conn = ScriptedConn(log, {
        "get_devices": lambda f: Devices(id=1, device_list=bob.device_lists[bob.user_id].signed),
        "claim_keys": lambda f: Claimed(id=1, keys=[
            ClaimedKey(device_id=0, key_id=(k := next(otks)).key_id, key=k.key, fallback=False)]),
        "send": lambda f: Sent(id=1, status=next(statuses)),
    })
    client = Client(alice, conn)
    result = await client.send_text(bob.user_id, "hello")
    assert result.status == "queued"
    bounce = msgpack.packb({"code": "stale_devices", "message": "gone", "user_id": bob.user_id})
    conn.push.send_nowait(Deliver(id=0, items=[DeliverItem(1, Envelope(
        msg_id=result.msg_id, sender_user=alice.user_id, sender_device=0, ts=1, kind="bounce",
        body=bounce))]))
    with trio.fail_after(5):
        (event,) = await _events(client, 1)
    assert isinstance(event, Bounce)
    assert (event.code, event.user_id, event.resent_status) == ("stale_devices", bob.user_id, "stored")
    sends = [f for t, f in log if t == "send"]
    assert len(sends) == 2 and sends[0]["msg_id"] == sends[1]["msg_id"] == result.msg_id
    # The resend was re-fetched (fresh device list) and decrypts at bob to the same text.
    assert [t for t, _ in log].count("get_devices") == 1
    copy = sends[1]["recipients"][0].copies[0]
    text, _, _ = crypto.decrypt(bob.identity, [], alice.identity.curve25519, copy.body)
    assert payload.decode(text).text == "hello"
