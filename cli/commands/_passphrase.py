"""Where the command line gets a home's passphrase (:data:`cli.session.vault.Passphrase`).

Opening a passphrase-protected home (:func:`for_home`): ``WA_PASSPHRASE`` if set;
else the OS keyring if the home keeps it there (``wa-cli init --keyring``,
:mod:`cli.session.secret`); else, when stdin is a terminal, a prompt on stderr with
hidden input; else it raises ``StateError`` (the command fails, exit 1, saying how to
give it: an existing home cannot start keeping it in the keyring).

Creating a home (:func:`for_new_home`, ``wa-cli init``): ``WA_PASSPHRASE`` if set;
else with ``--passphrase`` or ``--keyring`` on a terminal, a prompt asked twice;
else with ``--keyring`` a random passphrase (the keyring is then its only keeper);
else none (a ``storage.key`` file). With ``--keyring`` the passphrase is stored in
the keyring once the home is found empty. Sources are asked at most once and only
when the home needs it (a key-file home never prompts).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click

from cli.output import escape
from cli.session import secret
from cli.session.vault import PASSPHRASE_ENV, Passphrase, StateError, env_passphrase

__all__ = ["for_home", "for_new_home", "interactive", "keeping", "new_passphrase"]


def interactive() -> bool:
    """Whether a passphrase may be asked for: stdin is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def for_home(home: Path) -> Passphrase:
    """The passphrase source for opening the existing home ``home`` (module docstring).

    The source raises ``KeyringUnavailable`` (a ``StateError``) if the home keeps its
    passphrase in a keyring that cannot be read and there is no terminal to ask on,
    and ``StateError`` if no source gives one.
    """

    def source() -> str | None:
        phrase = env_passphrase()
        if phrase is not None:
            return phrase
        try:
            phrase = secret.load(home)
        except secret.KeyringUnavailable as exc:
            if not interactive():
                raise
            click.echo(f"wa-cli: {escape(str(exc))}", err=True)
        if phrase is not None:
            return phrase
        if interactive():
            return click.prompt(f"Passphrase of {escape(str(home))}", hide_input=True,
                                err=True)
        raise StateError(f"{home} is protected by a passphrase: set {PASSPHRASE_ENV} or run "
                         "the command on a terminal to be asked for it (this home does not "
                         "keep it in the OS keyring; only a home made with 'init --keyring' "
                         "or 'link --keyring' does)")

    return source


def check_new(*, ask: bool, keyring: bool) -> None:
    """Before a new home is made (``init``, ``link``): a passphrase can be had and the
    keyring works.

    Raises:
        click.UsageError: ``--passphrase`` without a terminal or ``WA_PASSPHRASE``.
        KeyringUnavailable: ``keyring`` and no usable OS keyring.
    """
    if ask and not keyring and env_passphrase() is None and not interactive():
        raise click.UsageError(f"not a terminal: set {PASSPHRASE_ENV} to give --passphrase "
                               "its passphrase")
    if keyring:
        secret.check()


def new_passphrase(home: Path, *, ask: bool, keyring: bool) -> str | None:
    """The passphrase for a new ``home`` (module docstring), asked for now if needed:
    ``WA_PASSPHRASE``; else with ``ask`` or ``keyring`` on a terminal, a prompt asked
    twice; else with ``keyring`` a random one; else ``None`` (a key file)."""
    phrase = env_passphrase()
    if phrase is None and (ask or keyring) and interactive():
        phrase = click.prompt(f"New passphrase for {escape(str(home))}", hide_input=True,
                              confirmation_prompt=True, err=True)
    if phrase is None and keyring:
        phrase = secrets.token_urlsafe(32)
    return phrase


def keeping(home: Path, phrase: str | None, *, keyring: bool) -> Passphrase:
    """A source giving ``phrase``, first stored in the OS keyring if ``keyring`` (when
    the home is created, :func:`cli.session.vault.new_key`)."""

    def source() -> str | None:
        if keyring and phrase is not None:
            secret.store(home, phrase)
        return phrase

    return source


def for_new_home(home: Path, *, ask: bool, keyring: bool) -> Passphrase:
    """The passphrase source for creating ``home`` (module docstring), asking only when
    the home is found empty.

    Args:
        ask: ``--passphrase``: protect the home with a passphrase.
        keyring: ``--keyring``: also keep it in the OS keyring.

    The source raises ``KeyringUnavailable`` if the keyring refuses to store it.
    """

    def source() -> str | None:
        return keeping(home, new_passphrase(home, ask=ask, keyring=keyring),
                       keyring=keyring)()

    return source
