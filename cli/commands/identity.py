"""``wa-cli id``: this device's identity and the account's safety fingerprint."""

from __future__ import annotations

import click

from relay.protocol import key_from_user_id

from ..crypto import safety_fingerprint
from ._common import AppContext, json_option, state_of


@click.command("id")
@json_option
@click.pass_obj
def id_(app: AppContext) -> None:
    """Show the user id, device id, home node and safety fingerprint (no network)."""
    with state_of(app) as state:
        fingerprint = safety_fingerprint(key_from_user_id(state.user_id), state.user_id)
        obj = {"user_id": state.user_id, "device_id": state.device_id,
               "fingerprint": fingerprint, "home": state.relay_url, "name": state.name}
    app.out.emit(obj, "\n".join([
        f"name:        {obj['name']}",
        f"user id:     {obj['user_id']}",
        f"device id:   {obj['device_id']}",
        f"home node:   {obj['home']}",
        f"fingerprint: {obj['fingerprint']}",
    ]))
