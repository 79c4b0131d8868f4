"""A device's inbox: received events kept, sealed in the device state, until a command
has shown them, and the marks of what was shown (``shown.bin``).

``wa-cli recv`` shows every message exactly once although it can be stopped at any
moment (Ctrl-C, SIGKILL, a reader that closes stdout). It receives with
``keep=True`` (:meth:`cli.client.Client.receive`): every event it would show is
:meth:`Inbox.keep` t in the state with the decrypted batch, so it is durable before
the relay gets the ack. Then each kept event, in order, is

1. announced (:meth:`Inbox.showing`): a mark appended to ``shown.bin``;
2. written, flushed and taken by the reader of the stream (:mod:`cli.linesink`);
3. marked shown (:meth:`Inbox.shown`): a second mark; it leaves the inbox.

If it was not taken after all (the reader closed the stream), the announcement is
withdrawn (:meth:`Inbox.withdraw`). A process killed between 1 and 3 leaves an
announced event without its shown mark: it may or may not be on the screen, and no
program can know which. The next load keeps it with ``maybe_shown`` set, and it is
shown again flagged as such (never silently twice, never lost).

Marks are plain appends without fsync: they survive the death of the process (they
are in the kernel's page cache at once), not a crash of the system, which takes
the screen with it; what lost marks covered is then shown again. Each append is
one small ``write`` done on the calling thread. :meth:`Inbox.load` applies the
marks to the kept events read from the journal; once a save has made that durable
in the journal, :meth:`Inbox.reset_marks` empties ``shown.bin``.

Files (sealed under the home's storage key, like :mod:`cli.journal`):

* journal records (``cli.journal``): ``inbox: [[n, record | None], ...]`` (``None``:
  removed) and ``inbox_next``, the next number; a record is :func:`to_record`.
* ``shown.bin``: records ``length (u32, big-endian) || SecretBox(msgpack [shown:
  [n, ...], showing: n | None])``. A record that is cut short or does not open ends
  the file (a system crash tore it); what it marked is shown again.

Numbers ``n`` are never reused (``inbox_next`` only grows), so a mark left in
``shown.bin`` can never apply to a later event.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgpack
import nacl.exceptions
import nacl.secret

from cli.events import Bounce, DevicesChanged, GroupChanged, GroupForkSeen, Message, Requested

__all__ = ["KEPT_TYPES", "SHOWN_FILE", "Inbox", "Pending", "from_record", "to_record"]

log = logging.getLogger(__name__)

SHOWN_FILE = "shown.bin"
_LEN = 4
_TYPES: dict[str, type] = {"message": Message, "bounce": Bounce,
                           "devices_changed": DevicesChanged, "group_changed": GroupChanged,
                           "group_fork": GroupForkSeen, "request": Requested}
_NAMES = {cls: name for name, cls in _TYPES.items()}
KEPT_TYPES = tuple(_TYPES.values())
"""The receive events that ``keep=True`` puts into the inbox (the ones a command shows)."""

Shown = Message | Bounce | DevicesChanged | GroupChanged | GroupForkSeen | Requested


@dataclass(frozen=True, slots=True)
class Pending:
    """One event waiting in the inbox: its number ``n`` (arrival order), the event, and
    whether an earlier run may have shown it already (killed while showing it)."""

    n: int
    event: Shown
    maybe_shown: bool = False


def to_record(event: Shown) -> dict:
    """The msgpack-ready map of a kept event: its fields plus ``"event"``, the type name
    (``message``, ``bounce``, ``devices_changed``, ``group_changed``).

    Raises:
        TypeError: not one of :data:`KEPT_TYPES`.
    """
    name = _NAMES.get(type(event))
    if name is None:
        raise TypeError(f"{type(event).__name__} events are not kept")
    record = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    record["event"] = name
    return record


def _tuples(value: object) -> object:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_record(record: dict) -> Shown:
    """The event of a :func:`to_record` map (lists read back as tuples).

    Raises:
        KeyError, TypeError: not such a map.
    """
    cls = _TYPES[record["event"]]
    return cls(**{f.name: _tuples(record[f.name]) for f in dataclasses.fields(cls)
                  if f.name in record or f.default is dataclasses.MISSING})


class _Marks:
    """``shown.bin``: appended marks, read back by :meth:`load` (see the module docstring)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._box = nacl.secret.SecretBox(key)
        self.appended = 0  # records appended by this process

    def append(self, shown: list[int], showing: int | None) -> None:
        sealed = self._box.encrypt(msgpack.packb([shown, showing]))
        record = len(sealed).to_bytes(_LEN, "big") + sealed
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.appended += 1

    def load(self) -> tuple[set[int], int | None]:
        """``(numbers marked shown, the number announced last and not marked shown)``."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return set(), None
        shown: set[int] = set()
        announced = None
        pos = 0
        while len(data) - pos >= _LEN:
            n = int.from_bytes(data[pos:pos + _LEN], "big")
            try:
                done, showing = msgpack.unpackb(
                    self._box.decrypt(data[pos + _LEN:pos + _LEN + n]), raw=False)
                if not (isinstance(done, list) and all(isinstance(i, int) for i in done)
                        and (showing is None or isinstance(showing, int))):
                    raise TypeError("not [[n, ...], n | None]")
            except (nacl.exceptions.CryptoError, ValueError, TypeError,
                    msgpack.UnpackException) as exc:
                log.warning("%s is torn at byte %d (%s); the events it marked are shown "
                            "again", self.path, pos, exc)
                break
            shown.update(done)
            if announced in done:
                announced = None
            if showing is not None:
                announced = showing
            pos += _LEN + n
        return shown, (announced if announced not in shown else None)

    def reset(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Inbox:
    """The kept events of one device state and the marks of what was shown.

    Mutated on the event loop only; the journal writes what changed (:meth:`unsaved`,
    :meth:`saved`) through the state's group commit.

    Args:
        home: the device directory (for ``shown.bin``).
        key: the 32-byte storage key of the home.
    """

    def __init__(self, home: Path, key: bytes) -> None:
        self._items: dict[int, dict] = {}  # n -> record, in arrival order
        self.next_n = 0
        self._dirty: dict[int, int] = {}  # n -> change counter not yet in the journal
        self._changes = 0
        self._marks = _Marks(home / SHOWN_FILE, key)
        self._announced: int | None = None

    # ----------------------------------------------------------- contents

    def keep(self, event: Shown) -> int:
        """Keep ``event`` to be shown; returns its number. Durable with the next save.

        Raises:
            TypeError: not one of :data:`KEPT_TYPES`.
        """
        record = to_record(event)
        n = self.next_n
        self.next_n += 1
        self._items[n] = record
        self._touch(n)
        return n

    def pending(self) -> list[Pending]:
        """Every kept event not shown yet, oldest first."""
        return [Pending(n, from_record(r), bool(r.get("maybe_shown"))) for n, r in self._items.items()]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, n: object) -> bool:
        return n in self._items

    # ------------------------------------------------------ showing protocol

    def showing(self, n: int) -> None:
        """Announce that event ``n`` is about to be written (a mark in ``shown.bin``).
        Follow with :meth:`shown` or :meth:`withdraw`.

        Raises:
            KeyError: ``n`` is not pending. OSError: the mark could not be written
                (then nothing may be written for ``n``).
        """
        if n not in self._items:
            raise KeyError(f"event {n} is not in the inbox")
        self._marks.append([], n)
        self._announced = n

    def shown(self, n: int) -> None:
        """Record that event ``n`` was taken by the reader: it leaves the inbox.

        Raises:
            OSError: the mark could not be written (the event stays pending, announced,
                and is shown again flagged ``maybe_shown``).
        """
        self._marks.append([n], None)
        self._announced = None
        if self._items.pop(n, None) is not None:
            self._touch(n)

    def withdraw(self, n: int) -> None:
        """Event ``n`` was announced but not taken (the reader closed the stream first)."""
        self._marks.append([], None)
        self._announced = None

    def unsure(self, n: int) -> None:
        """Event ``n`` was announced and handed to a reader that went away without
        saying whether it showed it (a ``wa-cli recv`` through the daemon, killed):
        it stays pending, flagged ``maybe_shown`` (durable with the next save)."""
        self._marks.append([], None)
        self._announced = None
        self._flag(n)

    def settle(self) -> None:
        """Before a final save: an event announced and not marked shown (the reader may
        still read it) is flagged ``maybe_shown`` in the state itself, so that
        :meth:`reset_marks` may drop its announcement."""
        n, self._announced = self._announced, None
        if n is not None:
            self._flag(n)

    @property
    def marks(self) -> int:
        """Marks appended by this process so far (to check that none came in between a
        save and :meth:`reset_marks`)."""
        return self._marks.appended

    @property
    def announced(self) -> int | None:
        """The event announced and not yet marked shown or withdrawn, if any."""
        return self._announced

    def reset_marks(self) -> None:
        """Empty ``shown.bin``. Only once a save taken after the last mark is durable
        (the journal then holds what the marks said) and nothing is announced."""
        if self._announced is not None:
            raise RuntimeError(f"event {self._announced} is announced; settle() first")
        self._marks.reset()

    # ---------------------------------------------------------- persistence

    def _touch(self, n: int) -> None:
        self._changes += 1
        self._dirty[n] = self._changes

    def _flag(self, n: int) -> None:
        record = self._items.get(n)
        if record is not None and not record.get("maybe_shown"):
            record["maybe_shown"] = True
            self._touch(n)

    def unsaved(self) -> tuple[list[list], dict[int, int]]:
        """The journal's ``inbox`` items changed since the last :meth:`saved`
        (``[[n, record | None], ...]``) and the mark to pass to :meth:`saved`."""
        return [[n, self._items.get(n)] for n in sorted(self._dirty)], dict(self._dirty)

    def everything(self) -> tuple[list[list], dict[int, int]]:
        """All pending items as ``[[n, record], ...]`` (a compacted journal) and the mark."""
        return [[n, r] for n, r in self._items.items()], dict(self._dirty)

    def saved(self, mark: dict[int, int]) -> None:
        """Record that the changes in ``mark`` (from :meth:`unsaved`) are durable."""
        for n, change in mark.items():
            if self._dirty.get(n) == change:
                del self._dirty[n]

    def load(self, items: dict[int, dict], next_n: int) -> None:
        """Fill from the journal (``n -> record``, the highest ``inbox_next`` read), then
        apply ``shown.bin``: shown events leave, the last announced one is flagged
        ``maybe_shown``; both changes reach the journal with the next save.

        Raises:
            KeyError, TypeError: a record is malformed (the caller reports StateError).
        """
        for record in items.values():
            from_record(record)
        self._items = dict(sorted(items.items()))
        self.next_n = max([next_n, *(n + 1 for n in items)])
        shown, announced = self._marks.load()
        for n in shown & self._items.keys():
            del self._items[n]
            self._touch(n)
        if announced is not None:
            self._flag(announced)
