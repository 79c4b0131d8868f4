"""``wa-cli devices approve CODE [--yes] [--no-history] | list | remove ID [--yes]``."""

from __future__ import annotations

import sys

import click
import trio

from cli.client import DeviceOffer
from cli.commands._common import AppContext, CliError, json_option, state_of
from cli.commands._route import Connect, run_routed
from cli.daemon.remote import find_daemon
from cli.errors import ClientError
from cli.features.devices import current_own_list
from cli.features.linkcode import LinkCode, LinkCodeError, device_fingerprint
from cli.features.wordcode import WordCode, is_word_code
from cli.output import Output, clock, escape
from cli.session.state import State

LIST_CONNECT_TIMEOUT = 3.0  # ``devices list`` falls back to the cached list after this


def _ask(question: str) -> bool:
    """``click.confirm`` on stderr; ``False`` on no, end of input or Ctrl-C."""
    try:
        return click.confirm(question, err=True)
    except click.Abort:
        return False


def _require_primary(state: State, what: str) -> None:
    if state.account_key is None:
        raise CliError(f"only the primary device (the one holding the account key) can {what}; "
                       f"this is device {state.device_id}. Run it on the primary")


@click.group()
def devices() -> None:
    """Link, list and remove the devices of your account."""


@devices.command("approve")
@click.argument("code")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--no-history", is_flag=True, help="Do not send recent messages to the device.")
@json_option
@click.pass_obj
def approve(app: AppContext, code: str, yes: bool, no_history: bool) -> None:
    """Add the device showing CODE (from 'wa-cli link') to your account.

    Shows the device's name and key fingerprint (compare it with what the new
    device prints) and asks to confirm. Then signs and publishes the new device
    list and sends the device its account material, sealed to a key only it
    holds. It then waits (at most 30 s, silently) for the new device to reach
    its home and upload its keys, and only then reports the device linked.
    A wrong, used or expired code changes nothing. If the link fails after the
    new list was published, the device does not reach its home in time, or
    this command is killed, the device is withdrawn again: at once, or by the
    next wa-cli command on this device (which keeps it if it reached its home
    meanwhile). When the daemon serves this home, you type the fingerprint the
    new device shows instead of answering a yes/no question.
    """
    _parse_code(code)  # a malformed code is a usage error before anything else
    if yes:
        params = {"code": code, "history": not no_history, "yes": True}
    elif _daemon_runs(app):  # no prompt in the daemon: compare here first
        try:
            fingerprint = click.prompt("The daemon serves this home: type the key fingerprint "
                                       "that the new device shows", err=True)
        except click.Abort:
            if sys.stdin.isatty():  # Ctrl-C at the terminal: interrupted (exit 130)
                raise
            # end of input (a pipe, /dev/null): as the prompt without the daemon
            raise CliError("not approved; nothing changed (no fingerprint was typed)") from None
        params = {"code": code, "history": not no_history, "fingerprint": fingerprint}
    else:
        params = {"code": code, "history": not no_history}
    run_routed(app, "devicesApprove", params, approve_device)


def _parse_code(code: str) -> LinkCode | str:
    try:
        return WordCode.decode(code).encode() if is_word_code(code) else LinkCode.decode(code)
    except LinkCodeError as exc:
        raise click.BadParameter(str(exc), param_hint="CODE") from exc


def _daemon_runs(app: AppContext) -> bool:
    remote = find_daemon(app.home)
    if remote is None:
        return False
    remote.close()
    return True


def _same_fingerprint(a: str, b: str) -> bool:
    return "".join(a.split()).lower() == "".join(b.split()).lower()


async def approve_device(state: State, out: Output, connect: Connect, code: str,
                         history: bool = True, yes: bool = False,
                         fingerprint: str | None = None) -> None:
    """The core of ``devices approve`` (JSON-RPC ``devicesApprove``): link the device
    showing ``code`` if ``yes``, or if its key fingerprint is ``fingerprint`` (spaces and
    case ignored), else if the user says so at the terminal.

    Raises:
        click.BadParameter: (exit 2) a malformed code.
        CliError: (exit 1) not the primary device, a fingerprint that differs, or the
            user said no; ClientError: the link failed.
    """
    _require_primary(state, "approve new devices")
    parsed = _parse_code(code)
    mismatch = False

    async def confirm(offer: DeviceOffer) -> bool:
        nonlocal mismatch
        out.note(f"device to link: {escape(offer.name)}\n"
                 f"key fingerprint: {offer.fingerprint}")
        if yes:
            return True
        if fingerprint is not None:
            mismatch = not _same_fingerprint(fingerprint, offer.fingerprint)
            return not mismatch
        return await trio.to_thread.run_sync(_ask, "Link this device to your account?")

    async with connect() as client:
        try:
            done = await client.approve_link(
                parsed, confirm=confirm, history=history,
                handed_over=lambda: out.note("sent the account to the new device; waiting for "
                                             "it to reach its home (at most 30 s)..."))
        except ClientError as exc:
            if mismatch:
                raise CliError("the key fingerprint differs from the one given: not linked; "
                               "nothing changed") from exc
            raise
    out.emit(
        {"device_id": done.device_id, "name": done.name, "fingerprint": done.fingerprint,
         "version": done.version, "history_sent": done.history_sent,
         "history_total": done.history_total, "groups": done.groups},
        f"approved device {done.device_id} ({escape(done.name)}), key fingerprint "
        f"{done.fingerprint}; "
        f"device list version {done.version}",
    )
    if done.history_sent < done.history_total:
        out.note(f"history sync: sent the newest {done.history_sent} of "
                 f"{done.history_total} recent messages; "
                 f"{done.history_total - done.history_sent} older ones did not fit in "
                 "the linking frame")
    elif history:
        out.note(f"history sync: sent {done.history_sent} recent messages")


def _clock(ts_ms: int | None) -> str:
    if not ts_ms:
        return "-"
    return clock(ts_ms)  # the relay's ts of a message: any int


@devices.command("list")
@json_option
@click.pass_obj
def list_(app: AppContext) -> None:
    """Show the account's devices: id, name, key fingerprint, last seen.

    The list is refreshed from the home node when it is reachable (otherwise
    the cached list is shown, with a note on stderr).

    LAST SEEN is when the newest message that this device has received from
    that device was sent (by the sender's clock; local time). It is not when
    the device was last online: "-" means no message from it has arrived here
    yet. The device you run the command on shows "this device".
    """
    run_routed(app, "devicesList", {}, list_devices, connect_timeout=LIST_CONNECT_TIMEOUT)


async def list_devices(state: State, out: Output, connect: Connect) -> None:
    """The core of ``devices list`` (JSON-RPC ``devicesList``): refresh the account's
    device list from the home node if it answers, then emit one row per device.

    Raises:
        CliError: no device list is known yet.
    """
    try:
        async with connect() as client:
            await current_own_list(client)
            await state.asave()
    except ClientError as exc:
        out.note(f"showing the cached device list ({escape(str(exc))})")
    own = state.own_list()
    if own is None:
        raise CliError("no device list is known for this account yet")
    rows = [{
        "device_id": d.device_id, "name": d.name,
        "fingerprint": device_fingerprint(d.ed25519, d.curve25519),
        "added_at": d.added_at, "this_device": d.device_id == state.device_id,
        "last_seen": state.last_seen.get((state.user_id, d.device_id)),
    } for d in sorted(own.devices, key=lambda d: d.device_id)]
    width = max(len(r["fingerprint"]) for r in rows)
    out.heading(f"{'ID':<3} {'NAME':<20} {'KEY FINGERPRINT':<{width}}  LAST SEEN")
    for r in rows:
        seen = "this device" if r["this_device"] else _clock(r["last_seen"])
        out.emit(r, f"{r['device_id']:<3} {escape(r['name'])[:20]:<20} "
                    f"{r['fingerprint']:<{width}}  {seen}")


@devices.command("remove")
@click.argument("device_id", type=click.IntRange(min=0))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def remove(app: AppContext, device_id: int, yes: bool) -> None:
    """Remove device DEVICE_ID from your account (primary only).

    Publishes a device list without it: its home purges its queue and refuses
    it from then on, and your contacts stop encrypting to it.
    """
    with state_of(app, readonly=True) as state:
        _require_primary(state, "remove devices")
        cached = state.own_list()
        entry = cached.device(device_id) if cached else None
    label = f"device {device_id}" + (f" ({escape(entry.name)})" if entry else "")
    if not yes and not _ask(f"Remove {label}? It will get no more messages."):
        raise CliError("not removed; nothing changed")
    run_routed(app, "devicesRemove", {"device_id": device_id}, remove_device)


async def remove_device(state: State, out: Output, connect: Connect, device_id: int) -> None:
    """The core of ``devices remove`` (JSON-RPC ``devicesRemove``): publish the account's
    device list without ``device_id``.

    Raises:
        CliError: not the primary device; ClientError: refused or no connection.
    """
    _require_primary(state, "remove devices")
    cached = state.own_list()
    entry = cached.device(device_id) if cached else None
    label = f"device {device_id}" + (f" ({escape(entry.name)})" if entry else "")
    async with connect() as client:
        new_list = await client.remove_device(device_id)
    out.emit({"removed": device_id, "version": new_list.version},
             f"removed {label}; device list version {new_list.version}")
