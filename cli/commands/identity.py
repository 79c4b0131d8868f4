"""``wa-cli id`` (this device's identity, the account's safety fingerprint) and
``wa-cli verify NAME`` (the pair's safety number)."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of, user_label
from cli.output import escape
from cli.session.crypto import safety_fingerprint, safety_number
from cli.session.state import StateError
from relay.protocol import key_from_user_id


@click.command("id")
@json_option
@click.pass_obj
def id_(app: AppContext) -> None:
    """Show the user id, device id, home node and safety fingerprint (no network)."""
    with state_of(app, readonly=True) as state:
        fingerprint = safety_fingerprint(key_from_user_id(state.user_id), state.user_id)
        obj = {"user_id": state.user_id, "device_id": state.device_id,
               "fingerprint": fingerprint, "home": state.relay_url, "name": state.name}
    app.out.emit(obj, "\n".join([
        f"name:        {escape(obj['name'])}",
        f"user id:     {obj['user_id']}",
        f"device id:   {obj['device_id']}",
        f"home node:   {escape(obj['home'])}",
        f"fingerprint: {obj['fingerprint']}",
    ]))


@click.command()
@click.argument("contact", metavar="NAME|USER_ID")
@json_option
@click.pass_obj
def verify(app: AppContext, contact: str) -> None:
    """Show the safety number of you and a contact (no network).

    Read it aloud or compare it in person: both sides see the same 60 digits.
    It is derived from the two account keys only, so it stays the same when
    either of you links or removes a device.
    """
    with state_of(app, readonly=True) as state:
        try:
            user_id = state.resolve(contact)
        except StateError as exc:
            raise click.BadParameter(str(exc), param_hint="NAME|USER_ID") from exc
        number = safety_number(state.user_id, user_id)
        name = user_label(state, user_id)
    groups = number.split()
    app.out.emit({"safety_number": number, "user_id": user_id},
                 f"safety number with {name}:\n" + "\n".join(
                     " ".join(groups[i:i + 4]) for i in range(0, 12, 4)))
