"""The checker: what was acknowledged, what every device showed, and what went wrong.

Every message the suite sends carries ``fz <sender label> <seq>`` as its text
(or file caption): ``seq`` grows by one per send of that sending device, so
the order per (sending device, receiving device) can be checked.

A message is **acknowledged** when ``wa-cli send --json`` (or the daemon's
JSON-RPC ``send``) answered with status ``stored`` or ``queued`` (a node holds
it), or ``pending`` (the device kept it in its sealed state, to be sent once by
its next connection: docs/cli.md, "local outbox"). Its **receivers** are the devices that
must show it: every active device of the recipient (or of every group member)
and the sender's own other devices, as they were when its round began.

Per receiving device, from the ``recv --json`` lines it printed (in order):

lost
    acknowledged for this device and not shown when the drain deadline after
    its round's heal passed (whether or not it showed up later).
never
    the lost ones that were never shown, up to the end of the run.
duplicates
    extra showings of a message id already shown on this device, not flagged
    ``maybe_shown``.
flagged
    extra showings flagged ``maybe_shown`` ("maybe shown before"): an earlier run was
    killed between writing the line and marking it shown, so no program can know
    whether its reader took it (docs/cli.md, "exactly once on screen"). Said on
    screen, so not a violation; counted to watch that the window stays small.
reordered
    acknowledged messages shown after a later message (higher seq) of the same
    sending device (counted once per late message).
after_heal
    acknowledged messages first shown after the faults of their round healed.
late
    the lost ones that were shown later (after the deadline).
unacked_shown
    messages whose send was not acknowledged (failed, interrupted) but shown.
refused_shown
    of those, the ones the relay refused (``relay refused the request``):
    a refusal should mean that no device shows the message.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

TEXT = re.compile(r"^fz (\S+) (\d+)(?: .*)?$", re.DOTALL)
ACKED = ("stored", "queued", "pending")
DURING, AFTER = "during", "after"  # shown before or after the round's faults healed


def message_text(label: str, seq: int, pad: int = 0) -> str:
    """The text the suite sends: ``fz <label> <seq>``, plus `` `` and ``pad`` filler
    characters if ``pad``."""
    return f"fz {label} {seq}" + (" " + "x" * pad if pad else "")


@dataclass
class Sent:
    """One send the suite made (acknowledged or not)."""

    sender: str
    seq: int
    round: int
    kind: str
    receivers: frozenset[str]
    msg_id: str | None = None
    status: str | None = None  # "stored", "queued", "pending", or None (failed, killed, hung)
    refusal: str | None = None  # the relay's refusal, if the send printed one

    @property
    def acked(self) -> bool:
        """Whether ``wa-cli send`` reported it ``stored``, ``queued`` or ``pending``."""
        return self.status in ACKED


@dataclass
class Showing:
    """One message line a device printed."""

    msg_id: str
    sender: str | None
    seq: int | None
    round: int
    phase: str
    maybe: bool = False  # flagged "maybe shown before" by the command that printed it


@dataclass
class DeviceStats:
    """The counts of one receiving device (see the module docstring)."""

    expected: int = 0
    shown: int = 0
    lost: int = 0
    never: int = 0
    duplicates: int = 0
    flagged: int = 0
    reordered: int = 0
    after_heal: int = 0
    late: int = 0
    unacked_shown: int = 0
    refused_shown: int = 0
    lost_ids: list[str] = field(default_factory=list)
    reorders: list[str] = field(default_factory=list)  # "a0 7 after 9 (round 3)", at most 50


class Ledger:
    """Records sends and showings; computes :class:`DeviceStats` per device and kind."""

    def __init__(self) -> None:
        self.sends: dict[tuple[str, int], Sent] = {}
        self.by_id: dict[str, Sent] = {}
        self.shown: dict[str, list[Showing]] = defaultdict(list)
        self.first_shown: dict[str, dict[str, Showing]] = defaultdict(dict)
        self.missing_at_deadline: dict[str, set[str]] = defaultdict(set)
        self.foreign: Counter[str] = Counter()
        self.bounces: dict[str, str] = {}  # msg_id -> what the bounce line the sender printed says
        self._top: dict[str, dict[str, int]] = defaultdict(dict)  # device -> sender -> highest seq
        self._seq: Counter[str] = Counter()

    def next_send(self, sender: str, round_: int, kind: str, receivers: frozenset[str]) -> Sent:
        """Allocate the next seq of ``sender`` and record the (not yet answered) send."""
        self._seq[sender] += 1
        sent = Sent(sender, self._seq[sender], round_, kind, receivers)
        self.sends[(sender, sent.seq)] = sent
        return sent

    def answered(self, sent: Sent, line: dict | None) -> None:
        """Record the result line ``wa-cli send --json`` printed (``None`` if none)."""
        if line is None or "id" not in line:
            return
        sent.msg_id, sent.status = line["id"], line.get("status")
        self.by_id[sent.msg_id] = sent

    def record_shown(self, device: str, line: dict, round_: int, phase: str, *,
                     maybe: bool | None = None) -> str | None:
        """Record one ``recv --json`` line of ``device`` (non-message lines are ignored);
        ``maybe``: whether it was flagged "maybe shown before" (default: the line's own
        ``maybe_shown``).

        Returns:
            A one-line description if this showing is a duplicate, a flagged repeat or
            shown after a later message of its sender (for the trace), else ``None``.
        """
        if "id" not in line or "from_device" not in line:
            return None
        match = TEXT.match(line.get("text") or "")
        sender, seq = (match[1], int(match[2])) if match else (None, None)
        if match is None:
            self.foreign[device] += 1
        flagged = bool(line.get("maybe_shown")) if maybe is None else maybe
        showing = Showing(line["id"], sender, seq, round_, phase, flagged)
        again = showing.msg_id in self.first_shown[device]
        self.shown[device].append(showing)
        self.first_shown[device].setdefault(showing.msg_id, showing)
        if again:
            return (f"{device} showed {sender} {seq} again"
                    f"{' (flagged maybe shown)' if flagged else ''}")
        if sender is None or seq is None:
            return None
        top = self._top[device].get(sender, 0)
        self._top[device][sender] = max(top, seq)
        return f"{device} showed {sender} {seq} after {top}" if seq < top else None

    def record_bounce(self, line: dict) -> bool:
        """Record a bounce line a ``recv --json`` printed (``{"type": "bounce", "id",
        "code", "resent", "error", ...}``); returns True if its resend failed."""
        self.bounces[line.get("id", "?")] = (f"bounced ({line.get('code')}: "
                                             f"{line.get('message')}); resent: "
                                             f"{line.get('resent')}; error: {line.get('error')}"
                                             )[:300]
        return line.get("error") is not None

    def missing(self, device: str, *, new_only: bool = False) -> list[Sent]:
        """Acknowledged messages ``device`` must show and has not shown yet (with
        ``new_only``, not those whose deadline already passed)."""
        seen = self.first_shown[device]
        old = self.missing_at_deadline[device] if new_only else set()
        return [s for s in self.by_id.values()
                if s.acked and device in s.receivers and s.msg_id not in seen
                and s.msg_id not in old]

    def mark_deadline(self, device: str) -> None:
        """The drain deadline of a round passed: what is missing now counts as late
        if it shows up later (and as lost if it never does)."""
        self.missing_at_deadline[device].update(s.msg_id for s in self.missing(device))

    def devices(self) -> set[str]:
        """Every device that must show something or showed something."""
        out = set(self.shown)
        for s in self.by_id.values():
            out |= s.receivers
        return out

    def stats(self, kind: str | None = None) -> dict[str, DeviceStats]:
        """Per receiving device, the counts for messages sent in rounds of ``kind``
        (all rounds if ``None``)."""
        def counted(sent: Sent | None) -> bool:
            return sent is not None and (kind is None or sent.kind == kind)

        out: dict[str, DeviceStats] = {}
        for device in sorted(self.devices()):
            st = out[device] = DeviceStats()
            first = self.first_shown[device]
            for sent in self.by_id.values():
                if not (sent.acked and device in sent.receivers and counted(sent)):
                    continue
                st.expected += 1
                showing = first.get(sent.msg_id)
                missed = sent.msg_id in self.missing_at_deadline[device] or showing is None
                st.lost += missed
                if showing is None:
                    st.never += 1
                    st.lost_ids.append(sent.msg_id)
                    continue
                st.shown += 1
                st.after_heal += showing.phase == AFTER or showing.round > sent.round
                st.late += missed
            repeats: Counter[str] = Counter()
            said: Counter[str] = Counter()  # repeats that said "maybe shown before"
            first_seen: set[str] = set()
            for showing in self.shown[device]:
                if showing.msg_id not in first_seen:
                    first_seen.add(showing.msg_id)
                    continue
                repeats[showing.msg_id] += 1
                said[showing.msg_id] += showing.maybe
            for msg_id in first_seen:
                sent = self.by_id.get(msg_id) or self._by_text(device, msg_id)
                if counted(sent) or (sent is None and kind is None):
                    st.flagged += said[msg_id]
                    st.duplicates += repeats[msg_id] - said[msg_id]
                if sent is not None and counted(sent) and not sent.acked:
                    st.unacked_shown += 1
                    st.refused_shown += sent.refusal is not None
            st.reorders = self._reordered(device, counted)
            st.reordered, st.reorders = len(st.reorders), st.reorders[:50]
        return out

    def _by_text(self, device: str, msg_id: str) -> Sent | None:
        showing = self.first_shown[device].get(msg_id)
        if showing is None or showing.sender is None:
            return None
        return self.sends.get((showing.sender, showing.seq))

    def _reordered(self, device: str, counted) -> list[str]:  # noqa: ANN001 (a predicate)
        """One ``"<sender> <seq> after <higher seq> (round <r>, <phase>)"`` per acknowledged
        message shown after a later one of the same sender."""
        highest: dict[str, int] = {}
        seen: set[str] = set()
        late: list[str] = []
        for showing in self.shown[device]:
            if showing.msg_id in seen or showing.sender is None:
                continue
            seen.add(showing.msg_id)
            sent = self.by_id.get(showing.msg_id)
            if sent is None or not sent.acked:
                continue
            top = highest.get(sent.sender, 0)
            if sent.seq < top and counted(sent):
                late.append(f"{sent.sender} {sent.seq} after {top} (shown in round "
                            f"{showing.round}, {showing.phase})")
            highest[sent.sender] = max(top, sent.seq)
        return late

    def send_outcomes(self, kind: str | None = None) -> Counter[str]:
        """How the sends of ``kind`` (all if ``None``) ended: ``stored``, ``queued``, ``pending``,
        ``failed``."""
        out: Counter[str] = Counter()
        for sent in self.sends.values():
            if kind is None or sent.kind == kind:
                out[sent.status if sent.acked else "failed"] += 1
        return out
