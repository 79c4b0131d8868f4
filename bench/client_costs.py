"""Client-side cost per message, measured apart from the network: Olm encrypt and
decrypt (``cli.crypto`` on real vodozemac sessions) and the device-state write
that :meth:`cli.client.Client.send_payload` does before every send (snapshot =
msgpack + SecretBox of the whole state; save = atomic write + fsyncs).

Leaves ``ctx.shared["encrypt_us"]`` and ``ctx.shared["decrypt_us"]`` (µs per
message) for the send scenario, which turns them into crypto's share of wall time.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import trio

from cli.client import init_account
from cli.features import payload
from cli.session import crypto
from cli.session.state import HISTORY_LIMIT, State, create_state, seen_key

from .scenario import BenchContext

TEXT_SIZE = 100  # characters per benchmark message, as in the send scenario


def sample_plaintext(i: int = 0, size: int = TEXT_SIZE) -> bytes:
    """An encoded text payload like the ones ``send_text`` encrypts."""
    text = f"bench {i:08d} ".ljust(size, "x")
    return payload.TextPayload(os.urandom(16), text, 1_700_000_000_000, "alice", "b" * 56).encode()


def _per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def olm_costs(n: int) -> dict[str, float]:
    """µs per message for Olm encrypt (pre-key and normal) and decrypt, ``n`` messages each.

    A session sends pre-key messages until it hears back; the send benchmark never
    replies, so its messages are pre-key ones (``encrypt_prekey``).
    """
    alice, bob = crypto.DeviceIdentity(), crypto.DeviceIdentity()
    bob.generate_one_time_keys(1)
    otk = bob.unpublished_one_time_keys()[0].key
    out_session = alice.create_outbound_session(bob.curve25519, otk)
    plain = sample_plaintext()
    bodies: list[bytes] = []
    enc_prekey = _per_call_us(lambda i: bodies.append(crypto.encrypt(out_session, plain)), n)

    in_sessions: list = []

    def decrypt(i: int) -> None:
        text, session, new = crypto.decrypt(bob, in_sessions, alice.curve25519, bodies[i])
        if new:
            in_sessions.insert(0, session)

    dec_prekey = _per_call_us(decrypt, n)
    # Bob answers once; from then on Alice's session sends normal messages.
    reply = crypto.encrypt(in_sessions[0], plain)
    crypto.decrypt(alice, [out_session], bob.curve25519, reply)
    bodies.clear()
    enc_normal = _per_call_us(lambda i: bodies.append(crypto.encrypt(out_session, plain)), n)
    dec_normal = _per_call_us(decrypt, n)
    return {"encrypt_prekey": enc_prekey, "encrypt_normal": enc_normal,
            "decrypt_prekey": dec_prekey, "decrypt_normal": dec_normal}


def _fill(state: State) -> None:
    """Give a state the size it has after a long run: full history, many seen ids."""
    for i in range(HISTORY_LIMIT):
        state.history.append({
            "id": os.urandom(16).hex(), "direction": "out", "peer": "b" * 56,
            "from": state.user_id, "from_device": 0, "ts": 1_700_000_000_000 + i,
            "type": "text", "text": "x" * TEXT_SIZE, "from_name": "alice", "resends": 0,
        })
    for _ in range(5000):
        state.mark_seen(seen_key("b" * 56, os.urandom(16)))


async def state_costs(ctx: BenchContext, n_snap: int, n_save: int) -> dict[str, float]:
    """Cost of the client's state write: snapshot µs (CPU) and durable save ms."""
    with ExitStack() as stack:
        state = stack.enter_context(
            create_state(ctx.tmp / "costs-home", name="alice", relay_url="ws://127.0.0.1:1"))
        init_account(state)
        _fill(state)
        snap_us = _per_call_us(lambda i: state.snapshot(), n_snap)
        size = len(state.snapshot())
        start = time.perf_counter()
        for _ in range(n_save):
            await state.asave()
        save_ms = (time.perf_counter() - start) / n_save * 1e3
    return {"snapshot_us": snap_us, "save_ms": save_ms, "state_bytes": float(size)}


async def run(ctx: BenchContext) -> None:
    """Scenario: client cost per message (no network)."""
    r = ctx.report
    n = 300 if ctx.quick else 2000
    olm = await trio.to_thread.run_sync(olm_costs, n)
    ctx.shared["encrypt_us"] = olm["encrypt_prekey"]
    ctx.shared["decrypt_us"] = olm["decrypt_prekey"]
    r.note(f"Olm (vodozemac) on one session, {TEXT_SIZE}-character text payloads, n={n}")
    r.figure("encrypt_prekey_us", "encrypt, pre-key message (no reply yet)",
             olm["encrypt_prekey"], "µs/msg", ",.1f")
    r.figure("encrypt_normal_us", "encrypt, normal message (after a reply)",
             olm["encrypt_normal"], "µs/msg", ",.1f")
    r.figure("decrypt_prekey_us", "decrypt, pre-key message (known session)",
             olm["decrypt_prekey"], "µs/msg", ",.1f")
    r.figure("decrypt_normal_us", "decrypt, normal message",
             olm["decrypt_normal"], "µs/msg", ",.1f")
    st = await state_costs(ctx, n_snap=20 if ctx.quick else 100, n_save=10 if ctx.quick else 40)
    r.note(f"device state with {HISTORY_LIMIT} history entries and 5,000 seen ids "
           f"({st['state_bytes'] / 1024:,.0f} KiB sealed); written before every send")
    r.figure("snapshot_us", "state snapshot (msgpack + SecretBox)", st["snapshot_us"], "µs", ",.0f")
    r.figure("save_ms", "state save (atomic write, fsync file + dir)", st["save_ms"], "ms", ",.2f")
