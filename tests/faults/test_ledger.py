"""The fault suite's checker (faults.ledger): lost, never shown, duplicates, reordered,
after the heal, and bounce notes, on hand-made sends and showings."""

from __future__ import annotations

from faults.ledger import AFTER, DURING, Ledger, message_text


def _send(ledger: Ledger, sender: str, receivers: set[str], status: str | None,
          kind: str = "k", round_: int = 1) -> str:
    sent = ledger.next_send(sender, round_, kind, frozenset(receivers))
    msg_id = f"{sender}-{sent.seq}".encode().hex().ljust(32, "0")
    ledger.answered(sent, {"id": msg_id, "status": status} if status else None)
    return msg_id


def _show(ledger: Ledger, device: str, msg_id: str, sender: str, seq: int, phase: str = DURING,
          round_: int = 1) -> None:
    ledger.record_shown(device, {"id": msg_id, "from_device": 0, "text": message_text(sender, seq)},
                        round_, phase)


def test_counts_per_device():
    ledger = Ledger()
    m1 = _send(ledger, "a0", {"b0", "b1"}, "stored")
    m2 = _send(ledger, "a0", {"b0", "b1"}, "queued")
    m3 = _send(ledger, "a0", {"b0", "b1"}, "stored")
    _send(ledger, "a0", {"b0", "b1"}, None)  # failed: not acknowledged, never expected
    _show(ledger, "b0", m2, "a0", 2)
    _show(ledger, "b0", m1, "a0", 1)  # after seq 2: reordered
    _show(ledger, "b0", m1, "a0", 1)  # twice: a duplicate
    _show(ledger, "b0", m3, "a0", 3, phase=AFTER)
    _show(ledger, "b1", m1, "a0", 1)
    assert [s.msg_id for s in ledger.missing("b1")] == [m2, m3]
    ledger.mark_deadline("b1")
    _show(ledger, "b1", m3, "a0", 3, phase=AFTER, round_=2)  # late: after its deadline

    stats = ledger.stats()
    b0, b1 = stats["b0"], stats["b1"]
    assert (b0.expected, b0.shown, b0.lost, b0.duplicates, b0.reordered, b0.after_heal) == (
        3, 3, 0, 1, 1, 1)
    assert (b1.expected, b1.shown, b1.lost, b1.never, b1.late, b1.lost_ids) == (
        3, 2, 2, 1, 1, [m2])
    assert b0.reorders == ["a0 1 after 2 (shown in round 1, during)"]
    assert ledger.send_outcomes() == {"stored": 2, "queued": 1, "failed": 1}
    assert ledger.stats(kind="other")["b0"].expected == 0


def test_refused_but_shown():
    ledger = Ledger()
    sent = ledger.next_send("b0", 1, "k", frozenset({"a0"}))
    sent.refusal = "relay refused the request (storage_full)"
    _show(ledger, "b1", "cd" * 16, "b0", sent.seq)  # shown on the sender's other device
    st = ledger.stats()["b1"]
    assert (st.expected, st.unacked_shown, st.refused_shown) == (0, 1, 1)


def test_padded_texts_and_foreign_lines():
    ledger = Ledger()
    m1 = _send(ledger, "c0", {"a0"}, "stored")
    ledger.record_shown("a0", {"id": m1, "from_device": 0, "text": message_text("c0", 1, pad=50)},
                        1, DURING)
    ledger.record_shown("a0", {"id": "ff" * 16, "from_device": 0, "text": "hello"}, 1, DURING)
    ledger.record_shown("a0", {"type": "group_changed", "group": "fz"}, 1, DURING)
    st = ledger.stats()["a0"]
    assert (st.expected, st.shown, st.lost) == (1, 1, 0)
    assert ledger.foreign["a0"] == 1


def test_bounce_lines_from_recv_json():
    ledger = Ledger()
    line = {"type": "bounce", "id": "ab" * 16, "to": "6uro26ci5gmk", "code": "stale_devices",
            "message": "", "resent": None, "error": "device 1 has no keys"}
    assert ledger.record_bounce(line) is True
    assert "device 1 has no keys" in ledger.bounces["ab" * 16]
    assert ledger.record_bounce({**line, "id": "cd" * 16, "resent": "stored", "error": None}) is False


def test_a_repeat_flagged_maybe_shown_is_counted_apart_from_duplicates():
    ledger = Ledger()
    sent = ledger.next_send("b0", 1, "k", frozenset({"a0"}))
    ledger.answered(sent, {"id": "ab" * 16, "status": "stored"})
    line = {"id": "ab" * 16, "from_device": 0, "text": f"fz b0 {sent.seq}"}
    assert ledger.record_shown("a0", line, 1, "during") is None
    note = ledger.record_shown("a0", {**line, "maybe_shown": True}, 1, "after")
    assert note == "a0 showed b0 1 again (flagged maybe shown)"
    st = ledger.stats()["a0"]
    assert (st.duplicates, st.flagged) == (0, 1)
    assert ledger.record_shown("a0", line, 2, "after") == "a0 showed b0 1 again"
    st = ledger.stats()["a0"]
    assert (st.duplicates, st.flagged) == (1, 1)


def test_a_showing_after_a_later_message_of_its_sender_is_described():
    ledger = Ledger()
    for msg_id in ("01" * 16, "02" * 16):
        sent = ledger.next_send("b0", 1, "k", frozenset({"a0"}))
        ledger.answered(sent, {"id": msg_id, "status": "stored"})
    assert ledger.record_shown("a0", {"id": "02" * 16, "from_device": 0,
                                      "text": "fz b0 2"}, 1, "during") is None
    assert ledger.record_shown("a0", {"id": "01" * 16, "from_device": 0,
                                      "text": "fz b0 1"}, 1, "after") == "a0 showed b0 1 after 2"
    assert ledger.stats()["a0"].reordered == 1
