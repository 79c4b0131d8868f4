"""A home's passphrase kept in the OS keyring (``wa-cli init --keyring``), through the
`keyring` library (macOS Keychain, Windows Credential Locker, the freedesktop Secret
Service, KWallet, or a backend chosen with ``PYTHON_KEYRING_BACKEND``).

A home whose passphrase is in the keyring has a small ``keyring.json`` (mode 0600)
naming the entry: ``{"service": "wa-cli", "username": HOME_PATH}`` (the path at init;
the home may move). It holds no secret: the passphrase is only in the keyring, and
the state file stays sealed under Argon2id(passphrase) as with ``WA_PASSPHRASE``
(:mod:`cli.session.vault`).

Only a recommended backend (keyring priority >= 1) is used by default; the
non-recommended ones (e.g. ``keyrings.alt``'s plain-text file) only when named
explicitly in ``PYTHON_KEYRING_BACKEND``. Without a usable backend every function
raises :class:`KeyringUnavailable` with a message saying what to do instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail

from cli.session.vault import PASSPHRASE_ENV, StateError, write_atomic

__all__ = ["KEYRING_FILE", "SERVICE", "KeyringUnavailable", "check", "entry_of", "load", "store"]

KEYRING_FILE = "keyring.json"
SERVICE = "wa-cli"
BACKEND_ENV = "PYTHON_KEYRING_BACKEND"  # keyring's own variable naming a backend class


class KeyringUnavailable(StateError):
    """No usable OS keyring, or it refused (locked, denied, failed)."""


def _backend() -> keyring.backend.KeyringBackend:
    """The keyring backend to use.

    Raises:
        KeyringUnavailable: none, or only a non-recommended one not chosen explicitly.
    """
    kr = keyring.get_keyring()
    effective = kr
    if isinstance(kr, chainer.ChainerBackend):
        effective = kr.backends[0] if kr.backends else fail.Keyring()
    if isinstance(effective, fail.Keyring):
        raise KeyringUnavailable(
            "no OS keyring is available (keyring found no backend: install and unlock one, "
            f"e.g. the Secret Service on Linux, or choose one with {BACKEND_ENV}); use "
            f"{PASSPHRASE_ENV} or the passphrase prompt instead")
    if effective.priority < 1 and not os.environ.get(BACKEND_ENV):
        name = f"{type(effective).__module__}.{type(effective).__name__}"
        raise KeyringUnavailable(
            f"the only keyring backend here is {name}, which keyring does not recommend "
            f"(it may keep secrets in a plain file); choose it explicitly with "
            f"{BACKEND_ENV}={name} if that is what you want, or use {PASSPHRASE_ENV}")
    return kr


def check() -> None:
    """Check that a usable keyring backend exists (before anything is created).

    Raises:
        KeyringUnavailable: there is none (the message says what to do instead).
    """
    _backend()


def entry_of(home: Path) -> tuple[str, str] | None:
    """The keyring entry ``(service, username)`` of ``home``, ``None`` if its passphrase
    is not kept in a keyring (no ``keyring.json``).

    Raises:
        StateError: ``keyring.json`` is unreadable or malformed.
    """
    try:
        data = json.loads((home / KEYRING_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {home / KEYRING_FILE}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str)
                                             for k in ("service", "username")):
        raise StateError(f"{home / KEYRING_FILE} is malformed")
    return data["service"], data["username"]


def store(home: Path, passphrase: str) -> None:
    """Keep ``passphrase`` in the OS keyring for ``home`` and write ``keyring.json``.

    Raises:
        KeyringUnavailable: no usable backend, or it refused.
        OSError: ``keyring.json`` could not be written.
    """
    kr = _backend()
    username = str(home.absolute())
    try:
        kr.set_password(SERVICE, username, passphrase)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the OS keyring refused to store the passphrase: {exc}") \
            from exc
    write_atomic(home / KEYRING_FILE,
                 json.dumps({"service": SERVICE, "username": username}).encode(), 0o600)


def load(home: Path) -> str | None:
    """The passphrase of ``home`` from the OS keyring; ``None`` if ``home`` does not keep
    it there (no ``keyring.json``).

    Raises:
        KeyringUnavailable: no usable backend, it refused, or the entry is gone.
        StateError: ``keyring.json`` is malformed.
    """
    entry = entry_of(home)
    if entry is None:
        return None
    kr = _backend()
    try:
        passphrase = kr.get_password(*entry)
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"cannot read the passphrase from the OS keyring: {exc}") \
            from exc
    if passphrase is None:
        raise KeyringUnavailable(
            f"the OS keyring has no passphrase for {home} (entry {entry[0]!r}/{entry[1]!r}); "
            f"set {PASSPHRASE_ENV} or run the command on a terminal to type it")
    return passphrase
