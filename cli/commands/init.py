"""``wa-cli init --name NAME --relay URL``: new account and primary device 0."""

from __future__ import annotations

import click
import trio

from cli.client import init_account
from cli.commands._common import AppContext, CliError, check_name, failures, json_option
from cli.output import escape
from cli.session.state import AlreadyInitialized, State, create_state, open_state


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise click.BadParameter("must be a ws:// or wss:// URL")
    return value


async def _publish(app: AppContext, state: State) -> str:
    """Connect (publishing the device list and keys on the way); return the home URL."""
    async with app.connect(state) as client:
        return client.url


@click.command()
@click.option("--name", required=True, help="Your display name (sent inside messages).")
@click.option("--relay", required=True, callback=_check_url,
              help="WebSocket URL of any node of the federation, e.g. ws://127.0.0.1:7400.")
@json_option
@click.pass_obj
def init(app: AppContext, name: str, relay: str) -> None:
    """Create a new account with this device as its primary (device 0).

    Publishes the account-signed device list and one-time keys on the account's
    home node (following a redirect) and prints the user id. Re-running it on a
    home whose first publication failed (e.g. the relay was unreachable) retries
    it with the --name and --relay given this time.
    """
    check_name(name, "--name")
    with failures():
        try:
            with create_state(app.home, name=name, relay_url=relay) as state:
                init_account(state)
                home_url = trio.run(_publish, app, state)
        except AlreadyInitialized:
            with open_state(app.home) as state:
                if state.published_version:
                    raise CliError(f"{app.home} already holds account {state.user_id}") from None
                # An earlier init never got its account published: keep its keys, but
                # this call's --name and --relay win.
                state.name, state.relay_url = name, relay
                state.save()
                home_url = trio.run(_publish, app, state)
    app.out.emit(
        {"user_id": state.user_id, "device_id": state.device_id, "home": home_url},
        state.user_id,
    )
    if not app.out.json_mode:
        app.out.note(f"account created for {escape(state.name)}; home node {escape(home_url)}")
