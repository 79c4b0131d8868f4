"""``wa-cli --home NEW link --relay URL --name NAME [--timeout S]``: join an account as a
companion device (docs/protocol.md, "Linking a companion device").

Output: the linking code first (stdout; ``{"code": ...}`` with ``--json``), a
QR code of it and instructions on stderr (human mode), then once approved
``linked as device N of USER_ID`` (``{"user_id": ..., "device_id": ...}``), then on
stderr what was imported (and how many older messages did not fit the linking
frame; with ``--json`` only that, when some did not fit).
"""

from __future__ import annotations

import sys

import click
import segno
import trio

from cli.commands import _passphrase
from cli.commands._common import AppContext, CliError, check_name, failures, json_option
from cli.commands._signals import run_interruptible
from cli.commands.init import _check_url
from cli.errors import ClientError, DeviceRemoved
from cli.features.linking import open_link, save_linked
from cli.session.crypto import safety_fingerprint
from cli.session.state import NewHome, State, new_home
from relay.protocol import key_from_user_id

MAILBOX_LIFETIME = 120.0  # seconds a node keeps a mailbox (docs/protocol.md)


async def _link(app: AppContext, fresh: NewHome, relay: str, name: str,
                wait_s: float, short: bool = False) -> tuple[State, int]:
    """Link and save; returns the state and how many older history messages the primary
    left out (they did not fit the linking frame)."""
    async with open_link(relay, name, connect_timeout=app.connect_timeout,
                         settings=app.net, short=short) as pending:
        app.out.emit({"code": pending.code}, pending.code)
        if not app.out.json_mode:
            segno.make(pending.code, error="l").terminal(out=sys.stderr, compact=True)
            app.out.note(
                f"On your primary device run:\n  wa-cli devices approve {pending.code}\n"
                f"This device: {pending.device_name}, key fingerprint {pending.fingerprint}\n"
                f"Waiting for approval (at most {min(wait_s, pending.expires_in):g} s)...")
        linked = None
        with trio.move_on_after(wait_s):
            linked = await pending.wait()
        if linked is None:
            raise CliError(f"not approved within {wait_s:g} s; the linking code is no longer "
                           "valid and nothing was saved. Run 'wa-cli link' again")
    state = await trio.to_thread.run_sync(save_linked, fresh, linked, relay)  # fsyncs
    try:
        async with app.connect(state):
            pass  # authenticates and uploads this device's one-time keys
    except DeviceRemoved as exc:  # the primary withdrew it first: the home is of no use
        fresh.discard()
        raise CliError(f"the account withdrew this device (device {state.device_id}) before "
                       "it reached its home: the primary waits at most 30 s for it. Nothing "
                       "was kept; run 'wa-cli link' again") from exc
    except ClientError as exc:
        raise CliError(f"linked as device {state.device_id}, but publishing this device's keys "
                       f"failed ({exc}); run 'wa-cli recv' to retry") from exc
    return state, linked.material.history_omitted


@click.command()
@click.option("--relay", required=True, callback=_check_url,
              help="WebSocket URL of any node of the federation, e.g. wss://127.0.0.1:7400.")
@click.option("--name", required=True,
              help="This device's name in the account's device list, e.g. laptop.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=MAILBOX_LIFETIME,
              show_default=True, help="Seconds to wait for the primary's approval.")
@click.option("--short", is_flag=True,
              help="Show a short word code (n1-4821-lamp-mint-moss) to type on the primary, "
                   "authenticated with a PAKE (SPAKE2), instead of the long code.")
@click.option("--passphrase", "ask", is_flag=True,
              help="Protect this device's home with a passphrase (WA_PASSPHRASE, else asked "
                   "for twice now), as 'wa-cli init --passphrase'.")
@click.option("--keyring", "use_keyring", is_flag=True,
              help="Protect it with a passphrase kept in the OS keyring, as 'wa-cli init "
                   "--keyring'.")
@json_option
@click.pass_obj
def link(app: AppContext, relay: str, name: str, timeout: float, short: bool, ask: bool,
         use_keyring: bool) -> None:
    """Join an existing account as a new device of it.

    Prints a linking code (and a QR code of it); approve it on the primary with
    'wa-cli devices approve CODE'. The primary then sends this device the
    account's signed device list, contacts and recent history, sealed to a key
    that only this device holds. Nothing is saved unless the link completes.
    Its home is encrypted at rest as 'wa-cli init' says (storage.key, or a
    passphrase: WA_PASSPHRASE, --passphrase, --keyring).
    """
    check_name(name, "--name")
    home = app.home.expanduser().absolute()
    with failures():
        _passphrase.check_new(ask=ask, keyring=use_keyring)
        phrase = _passphrase.new_passphrase(home, ask=ask, keyring=use_keyring)
    source = _passphrase.keeping(home, phrase, keyring=use_keyring)
    with failures(), new_home(app.home, passphrase_source=source) as fresh:
        state, omitted = run_interruptible(_link, app, fresh, relay, name, timeout, short)
        fingerprint = safety_fingerprint(key_from_user_id(state.user_id), state.user_id)
        n, c, g = len(state.history), len(state.contacts), len(state.groups.groups)
    app.out.emit({"user_id": state.user_id, "device_id": state.device_id},
                 f"linked as device {state.device_id} of {state.user_id}")
    if app.out.json_mode and omitted:
        app.out.note(f"history sync: imported {n} messages; {omitted} older messages did "
                     "not fit in the linking frame")
    elif not app.out.json_mode:
        trimmed = f" ({omitted} older message{'s' * (omitted != 1)} did not fit)" if omitted else ""
        app.out.note(f"imported {n} message{'s' * (n != 1)}{trimmed}, {c} "
                     f"contact{'s' * (c != 1)} and {g} group{'s' * (g != 1)}; "
                     f"account fingerprint {fingerprint} (compare with 'wa-cli id' on the "
                     "primary)")
