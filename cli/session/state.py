"""One device's local store under ``--home DIR`` (env ``WA_HOME``), encrypted at rest.

Files in ``DIR`` (created mode 0700):

* ``state.bin`` -- (see :mod:`cli.vault`) header ``b"WAST" || mode`` then a pynacl ``SecretBox``
  (XSalsa20-Poly1305) of the msgpack state. Mode 1: the 32-byte key is in
  ``storage.key`` (mode 0600). Mode 2: the key is Argon2id(passphrase)
  with the salt and cost in the header (``salt(16) || opslimit(u32) ||
  memlimit(u64)``), and there is no key file. The passphrase is ``WA_PASSPHRASE``,
  typed at a prompt, or kept in the OS keyring (:mod:`cli.session.secret`), never
  in the home.
* ``journal.bin`` -- (see :mod:`cli.journal`) the recent history and the message ids
  seen (dedupe), as appended records each sealed in a ``SecretBox`` under the same key.
* ``shown.bin`` -- (see :mod:`cli.inbox`) sealed marks of the kept events a command has
  shown; the kept events themselves (decrypted, not yet shown) are in the journal.
* ``lock`` -- ``fcntl.flock`` target: one writing ``wa-cli`` process per home at a time
  (its process id written inside, named when another command finds the home busy).
* ``keyring.json`` -- only for a home whose passphrase is in the OS keyring
  (``wa-cli init --keyring``): which keyring entry (service, user name) holds it.
* ``readers.lock`` -- shared by read-only commands (``open_state(readonly=True)``), which
  run beside the writing process; exclusive while a home is being created.

The state holds the account key (primary device only), the vodozemac device
account and Olm sessions (pickled again under a key derived from the storage
key), contacts, verified device lists, Megolm sessions, the home relay URL and the
display name in ``state.bin``; recent message ids and history in ``journal.bin``.

Threat model: the encryption protects a home directory that is copied
without its key (backups, a synced folder, a stolen disk image that lacks
``storage.key``), and, in passphrase mode, a stolen home directory as a whole
(offline guessing then costs an Argon2id evaluation per guess). It does not
protect against malware running as the user or an attacker holding both
``state.bin`` and ``storage.key``: that is holding the device. No plaintext,
private key or message text is ever written outside the sealed box.

Writes are atomic (``state.bin``: temporary file, fsync, rename, fsync of the
directory; ``journal.bin``: append then fsync, a torn last record is dropped on
open) and the journal is written first: a crash leaves the previous or the new
state, never a torn one, and never ratchets newer than the history and ids of
what they decrypted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import nacl.signing
import vodozemac

from cli.session import crypto, listfresh, statecodec, vault
from cli.session.groups import GroupError, GroupStore
from cli.session.inbox import Inbox
from cli.session.journal import JOURNAL_FILE
from cli.session.prefs import Prefs
from cli.session.prekeys import FallbackInfo
from cli.session.statecodec import CachedList, SessionSet
from cli.session.statestore import StateStore
from cli.session.vault import KEY_FILE, STATE_FILE, StateError, StateLocked
from relay.protocol import DeviceList, RemoteProtocolError, is_user_id, verify_device_list
from relay.protocol.cluster import PinnedCluster
from relay.protocol.frames import SignedDeviceList

__all__ = [
    "KEY_FILE", "STATE_FILE", "AlreadyInitialized", "CachedList", "DeviceListRejected",
    "NewHome", "NotInitialized", "SessionSet", "State", "StateError", "StateLocked",
    "create_state", "new_home", "open_state", "seen_key",
]

SEEN_LIMIT = 10_000
HISTORY_LIMIT = 500
SESSIONS_PER_DEVICE = 4


class NotInitialized(StateError):
    """The home has no state yet (run ``wa-cli init``)."""


class AlreadyInitialized(StateError):
    """``init`` on a home that already holds an account."""


class DeviceListRejected(StateError):
    """A device list failed its signature check or rolled its version back."""


def seen_key(sender_user: str, msg_id: bytes) -> bytes:
    """The 16-byte dedupe key of a message (scoped to its sender)."""
    return hashlib.blake2b(sender_user.encode() + msg_id, digest_size=16).digest()


class State:
    """The decrypted state of one device. Mutate attributes, then :meth:`save`.

    Not thread-safe; one process at a time per home (see :func:`open_state`).
    """

    def __init__(self, home: Path, storage_key: bytes, header: bytes, *,
                 readonly: bool = False) -> None:
        self.home = home
        self._store = StateStore(self, storage_key, header, readonly=readonly)
        self.user_id = ""
        self.device_id = 0
        self.name = ""
        self.relay_url = ""
        self.relay_urls: list[str] = []  # every address of the home, when it has several
        self.cluster_urls: list[str] = []  # every node of the home's cluster (auth_ok.cluster)
        self.account_key: nacl.signing.SigningKey | None = None
        self.identity = crypto.DeviceIdentity()
        self.published_version = 0  # own device-list version known to be on the home node
        self.invite: str | None = None  # not saved: the home's invite token for the first list
        self.contacts: dict[str, str] = {}
        self.device_lists: dict[str, CachedList] = {}
        self.sessions: dict[tuple[str, int], SessionSet] = {}
        self.seen = statecodec.SeenIds(SEEN_LIMIT)  # dedupe keys, oldest first
        self.history: deque[dict] = deque(maxlen=HISTORY_LIMIT)
        self.next_device_id = 1  # primary: lowest device_id never handed out (ids are never reused)
        # primary: devices whose linking began and did not complete: withdrawn from the
        # account's list by the next connection (cli.devices.finish_withdrawals)
        self.pending_withdrawals: set[int] = set()
        self.last_seen: dict[tuple[str, int], int] = {}  # (user_id, device_id) -> sender ts, ms
        self.groups = GroupStore()  # groups, Megolm sessions (cli.groups)
        self.fallback = FallbackInfo()  # this device's published fallback key (cli.session.prekeys)
        # user_id -> highest device-list version seen (lists, and hints in messages)
        self.highest_list: dict[str, int] = {}
        self.inbox = Inbox(home, storage_key)  # received events kept until shown (cli.inbox)
        # the pinned cluster description (cli.connection): nodes, their keys, cluster key
        self.cluster: PinnedCluster | None = None
        # sends that found no relay, kept until a connection returns (cli.features.outbox)
        self.outbox: list[dict] = []
        self.prefs = Prefs()  # timers, blocked users, message requests (cli.session.prefs)

    # ----------------------------------------------------------- queries

    def resolve(self, name_or_user_id: str) -> str:
        """The user_id for a contact alias or a literal user_id.

        Raises:
            StateError: neither a known alias nor a valid user_id.
        """
        if name_or_user_id in self.contacts:
            return self.contacts[name_or_user_id]
        if is_user_id(name_or_user_id):
            return name_or_user_id
        raise StateError(f"unknown contact {name_or_user_id!r} (add it with 'contacts add')")

    def alias_of(self, user_id: str) -> str | None:
        """The local contact alias of ``user_id``, if any."""
        for alias, uid in self.contacts.items():
            if uid == user_id:
                return alias
        return None

    def own_list(self) -> DeviceList | None:
        """This account's own device list, if known."""
        cached = self.device_lists.get(self.user_id)
        return cached.parsed if cached else None

    def session_set(self, user_id: str, device_id: int) -> SessionSet | None:
        """Sessions with a remote device, or ``None``."""
        return self.sessions.get((user_id, device_id))

    def add_session(
        self, user_id: str, device_id: int, identity_key: bytes, session: vodozemac.Session
    ) -> None:
        """Record ``session`` as the newest with that device (keeps the last few)."""
        ss = self.sessions.get((user_id, device_id))
        if ss is None or ss.identity_key != identity_key:
            ss = self.sessions[(user_id, device_id)] = SessionSet(identity_key)
        if session in ss.sessions:
            ss.sessions.remove(session)
        ss.sessions.insert(0, session)
        del ss.sessions[SESSIONS_PER_DEVICE:]

    def allocate_device_id(self) -> int:
        """The next never-used device id of this account (primary only); advances the counter.

        Takes the highest id in the own list into account too, so an id is never
        reused even if the counter is behind (e.g. a state from before it existed).
        The caller saves the state before the id is published.
        """
        own = self.own_list()
        highest = max(own.device_ids) if own is not None else self.device_id
        device_id = max(self.next_device_id, highest + 1)
        self.next_device_id = device_id + 1
        return device_id

    def saw_device(self, user_id: str, device_id: int, ts: int) -> None:
        """Note that a message from ``(user_id, device_id)`` with sender time ``ts`` (ms) arrived."""
        key = (user_id, device_id)
        if ts > self.last_seen.get(key, 0):
            self.last_seen[key] = ts

    def find_history(self, msg_id_hex: str) -> dict | None:
        """The history entry of a message id (hex), newest first, or ``None``."""
        for entry in reversed(self.history):
            if entry.get("id") == msg_id_hex:
                return entry
        return None

    # ----------------------------------------------------------- updates

    def remember_device_list(self, signed: SignedDeviceList, user_id: str) -> DeviceList:
        """Verify a served device list and cache it; drop sessions of devices it no longer has.

        Returns:
            The parsed list (the cached one if ``signed`` is the same version).

        Raises:
            DeviceListRejected: bad signature or body, wrong user, an older version
                than cached, or a different list under the cached version; expired,
                without expiry, older than a version seen in a message, or a version
                jump too large (:func:`cli.session.listfresh.problem`).
        """
        try:
            parsed = verify_device_list(signed, user_id)
        except RemoteProtocolError as exc:
            raise DeviceListRejected(f"device list of {user_id} rejected: {exc.message}") from exc
        cached = self.device_lists.get(user_id)
        if cached is not None and parsed.version < cached.parsed.version:
            raise DeviceListRejected(
                f"device list of {user_id} rolled back from version "
                f"{cached.parsed.version} to {parsed.version}"
            )
        why = listfresh.problem(parsed, cached.parsed if cached else None,
                                self.highest_list.get(user_id, 0), time.time())
        if why is not None:
            raise DeviceListRejected(why)
        if parsed.version > self.highest_list.get(user_id, 0):
            self.highest_list[user_id] = parsed.version
        if cached is not None:
            if parsed.version == cached.parsed.version:
                if signed.body != cached.signed.body:
                    raise DeviceListRejected(f"two different device lists of {user_id} "
                                             f"claim version {parsed.version}")
                return cached.parsed
        self.device_lists[user_id] = CachedList(parsed, signed)
        for (uid, did), ss in list(self.sessions.items()):
            if uid == user_id:
                dev = parsed.device(did)
                if dev is None or dev.curve25519 != ss.identity_key:
                    del self.sessions[(uid, did)]
        return parsed

    def mark_seen(self, key: bytes) -> bool:
        """Record a 16-byte dedupe key (:func:`seen_key`), keeping the last
        :data:`SEEN_LIMIT`; ``False`` if it was already seen."""
        return self.seen.add(key)

    def compact_history(self) -> None:
        """Have the next save rewrite the journal from the history as it is then, so
        that removed entries and wiped texts (deleted, expired) leave the disk."""
        self._store.compact_next()

    def history_changed(self, entry: dict) -> None:
        """Report that a history entry was modified in place, so the next save writes it
        again (appended entries need no report)."""
        self._store.tracker.changed(entry)

    # ----------------------------------------------------------- persistence

    def _to_map(self) -> dict:
        """The ``state.bin`` map of format 3 (:func:`cli.statecodec.to_map`)."""
        return statecodec.to_map(self, self._store.pickle_key)

    def _from_map(self, m: dict) -> None:
        """Load a decrypted ``state.bin`` map and the journal (:meth:`StateStore.load`)."""
        self._store.load(m)

    def snapshot(self) -> bytes:
        """The encrypted contents of ``state.bin`` for the current state (history and
        dedupe keys excluded: they are in the journal)."""
        return self._store.snapshot()

    @property
    def writes(self) -> int:
        """Durable writes of the state by this object so far (one may cover many saves)."""
        return self._store.writes

    @property
    def readonly(self) -> bool:
        """Opened with ``open_state(readonly=True)``: saving raises ``StateError``."""
        return self._store.readonly

    def save(self) -> None:
        """Write the state atomically and durably (blocking; fsyncs). Not while an
        :meth:`asave` runs (``RuntimeError``): use it where no client is running.

        Raises:
            OSError: the write failed.
        """
        self._store.save()

    async def asave(self) -> None:
        """Return once the state as it is now (or later) is atomically and durably written.

        Concurrent calls are coalesced (group commit, :class:`cli.vault.GroupCommit`):
        one snapshot and one write, in a worker thread, cover every change made before
        it, so pipelined sends and received batches share writes. A write appends what
        changed in history and dedupe keys to the journal (:mod:`cli.journal`), then
        replaces ``state.bin`` (keys, ratchets, lists: tens of KiB). A later state is
        never overwritten by an earlier one.

        Raises:
            OSError: the write failed (the caller must not let its ciphertext leave
                or acknowledge what it received).
        """
        await self._store.asave()


class NewHome:
    """A locked, still empty device home (see :func:`new_home`); :meth:`create` fills it once."""

    def __init__(self, path: Path,
                 passphrase_source: vault.Passphrase = vault.env_passphrase) -> None:
        self.path = path
        self.state: State | None = None
        self._passphrase = passphrase_source

    def create(
        self, *, user_id: str, device_id: int, name: str, relay_url: str,
        identity: crypto.DeviceIdentity | None = None,
        account_key: nacl.signing.SigningKey | None = None,
    ) -> State:
        """Make the storage key and a state for this device; the caller fills in the rest
        and saves. The home stays locked until the :func:`new_home` block exits.

        Args:
            user_id: the account; ``device_id``: this device's id in its list.
            name: the display name sent inside messages.
            identity: the device's vodozemac account (a new one if ``None``).
            account_key: the account's private key (the primary only).

        Raises:
            AlreadyInitialized: called twice.
        """
        if self.state is not None:
            raise AlreadyInitialized(f"{self.path} was already created")
        key, header = vault.new_key(self.path, self._passphrase)
        state = State(self.path, key, header)
        state.user_id, state.device_id, state.name = user_id, device_id, name
        state.relay_url, state.account_key = relay_url, account_key
        if identity is not None:
            state.identity = identity
        self.state = state
        return state

    def discard(self) -> None:
        """Remove what :meth:`create` and the state's saves wrote (``state.bin``,
        ``journal.bin``, ``storage.key``), so the home is empty again and
        can be used anew; the lock stays held until the :func:`new_home` block exits.
        For a link the account withdrew before this device ever connected.
        """
        for name in (STATE_FILE, JOURNAL_FILE, KEY_FILE):
            (self.path / name).unlink(missing_ok=True)
        self.state = None


@contextmanager
def new_home(home: str | os.PathLike, *, lock_timeout: float = 5.0,
             passphrase_source: vault.Passphrase = vault.env_passphrase) -> Iterator[NewHome]:
    """Lock ``home`` (created mode 0700), check it holds no account yet, yield a :class:`NewHome`
    (whose storage key is derived from ``passphrase_source()`` if it gives a passphrase,
    see :func:`cli.session.vault.new_key`).

    Used by ``init`` and by ``link``, which holds the lock while it waits for approval.

    Raises:
        AlreadyInitialized: ``home`` already holds a state.
        StateLocked: another process holds the home.
    """
    path = Path(home).expanduser().absolute()
    with vault.locked(path, lock_timeout, create=True):
        if (path / STATE_FILE).exists():
            raise AlreadyInitialized(f"{path} already holds an account")
        yield NewHome(path, passphrase_source)


@contextmanager
def create_state(
    home: str | os.PathLike, *, name: str, relay_url: str, lock_timeout: float = 5.0,
    passphrase_source: vault.Passphrase = vault.env_passphrase,
) -> Iterator[State]:
    """Create a new account (Ed25519 account key) and primary device 0 in ``home``.

    The state is saved before this yields and the home stays locked until exit.
    One-time keys are generated by the caller (see :mod:`cli.client`). The storage key
    is derived from ``passphrase_source()`` if it gives a passphrase (called once,
    after the home was found empty), else kept in ``storage.key``.

    Raises:
        AlreadyInitialized: ``home`` already holds a state.
        StateLocked: another process holds the home.
    """
    with new_home(home, lock_timeout=lock_timeout, passphrase_source=passphrase_source) as fresh:
        account_key = crypto.new_account_key()
        state = fresh.create(user_id=crypto.account_user_id(account_key), device_id=0,
                             name=name, relay_url=relay_url, account_key=account_key)
        state.save()
        yield state


@contextmanager
def open_state(home: str | os.PathLike, *, lock_timeout: float = 5.0,
               readonly: bool = False,
               passphrase_source: vault.Passphrase = vault.env_passphrase) -> Iterator[State]:
    """Lock ``home`` and load its state; the lock is released on exit (state is not auto-saved).

    Args:
        home: the device directory.
        lock_timeout: seconds to wait for another process to release the home.
        readonly: only take the readers' shared lock, beside a writing process (a
            daemon, ``recv --follow``): the state is as last saved, a torn journal
            tail is skipped (not truncated), and saving raises ``StateError``.
        passphrase_source: asked (once, with the lock held) if the home is protected by
            a passphrase (default ``WA_PASSPHRASE``).

    Raises:
        NotInitialized: no state in ``home``.
        StateLocked: the home is still locked after ``lock_timeout``.
        StateError: wrong key or passphrase, or a corrupt file.
    """
    path = Path(home).expanduser().absolute()
    if readonly and not path.is_dir():
        raise NotInitialized(f"{path} has no account; run 'wa-cli init' first")
    lock = (vault.shared(path, lock_timeout) if readonly else vault.locked(path, lock_timeout))
    with lock:
        try:
            data = (path / STATE_FILE).read_bytes()
        except FileNotFoundError:
            raise NotInitialized(f"{path} has no account; run 'wa-cli init' first") from None
        key, header, box = vault.load_key(path, data, passphrase_source)
        plain = vault.unseal(key, box, path / STATE_FILE)
        state = State(path, key, header, readonly=readonly)
        try:
            state._from_map(msgpack.unpackb(plain, raw=False))
        except (KeyError, TypeError, ValueError, crypto.CryptoError, RemoteProtocolError,
                GroupError) as exc:
            raise StateError(f"corrupt state in {path}: {exc}") from exc
        yield state
