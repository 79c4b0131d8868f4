"""``wa-cli init --name NAME --relay URL [--cluster-key KEY | --trust-on-first-use]
[--invite TOKEN]``: new account and primary device 0.

Cluster pinning (docs/cli.md, "Pinning the cluster"): before anything is published,
the signed cluster description is fetched from ``--relay`` and pinned in the device
state. It must be signed by ``--cluster-key`` (``WA_CLUSTER_KEY``; printed by
``wa-relay cluster`` and ``wa-relay serve``); without it, an interactive terminal
shows the key and asks the user to confirm it, and a non-interactive run needs
``--trust-on-first-use`` to accept whatever key the relay presents (else exit 2).

Storage key (:mod:`cli.commands._passphrase`): a random key in ``storage.key`` unless
``WA_PASSPHRASE`` is set, ``--passphrase`` asks for one, or ``--keyring`` keeps one in
the OS keyring (:mod:`cli.session.secret`).
"""

from __future__ import annotations

import sys

import click

from cli.client import init_account
from cli.commands import _passphrase
from cli.commands._common import AppContext, CliError, check_name, failures, json_option
from cli.commands._signals import run_interruptible
from cli.output import escape
from cli.session.connection import fetch_pin
from cli.session.state import AlreadyInitialized, State, create_state, open_state
from relay.protocol.cluster import PinnedCluster, cluster_key_text, parse_cluster_key


def _check_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise click.BadParameter("must be a ws:// or wss:// URL")
    return value


def _check_key(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    if value is None or value == "":
        return None
    try:
        return parse_cluster_key(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


async def _publish(app: AppContext, state: State) -> str:
    """Connect (publishing the device list and keys on the way); return the home URL."""
    async with app.connect(state) as client:
        return client.url


def _confirm(pin: PinnedCluster, relay: str) -> bool:
    """Show the cluster key and nodes on stderr and ask the user to confirm them."""
    click.echo(f"{relay} belongs to a cluster of {len(pin.description.nodes)} node(s) "
               f"(description version {pin.version}):", err=True)
    for node in pin.description.nodes:
        click.echo(f"  {escape(node.id)} {escape(node.url)}", err=True)
    click.echo(f"cluster key: {cluster_key_text(pin.key)}", err=True)
    return click.confirm("Is this the cluster key your operator gave you "
                         "(wa-relay cluster / serve print it)?", default=False, err=True)


def _pin(app: AppContext, state: State, relay: str, key: bytes | None, tofu: bool) -> None:
    """Pin the cluster description of ``relay`` in ``state`` (saved)."""
    pin = run_interruptible(fetch_pin, relay, key, app.connect_timeout)
    if key is None and not tofu and not _confirm(pin, relay):
        raise CliError("cluster key not confirmed; nothing was published (run init again, "
                       "with --cluster-key KEY)")
    state.cluster = pin
    state.save()


@click.command()
@click.option("--name", required=True, help="Your display name (sent inside messages).")
@click.option("--relay", required=True, callback=_check_url,
              help="WebSocket URL of any node of the federation, e.g. wss://127.0.0.1:7400.")
@click.option("--cluster-key", envvar="WA_CLUSTER_KEY", callback=_check_key,
              help="The cluster key (wa-cluster-...) that must have signed the cluster "
                   "description, as printed by 'wa-relay cluster' or 'wa-relay serve'.")
@click.option("--trust-on-first-use", "tofu", is_flag=True,
              help="Without --cluster-key: pin whatever cluster key the relay presents, "
                   "without asking (scripts; an attacker on the first connection wins).")
@click.option("--invite", default=None, metavar="TOKEN",
              help="An invite token from the operator of a node that registers by invite.")
@click.option("--passphrase", "ask", is_flag=True,
              help="Protect this home with a passphrase instead of a storage.key file: "
                   "WA_PASSPHRASE, else asked for (twice) on the terminal. Later commands "
                   "read WA_PASSPHRASE or ask for it.")
@click.option("--keyring", "use_keyring", is_flag=True,
              help="Protect this home with a passphrase kept in the OS keyring (WA_PASSPHRASE, "
                   "else asked for on a terminal, else a random one); later commands read "
                   "it from there. Fails if no keyring backend is usable.")
@json_option
@click.pass_obj
def init(app: AppContext, name: str, relay: str, cluster_key: bytes | None, tofu: bool,
         invite: str | None, ask: bool, use_keyring: bool) -> None:
    """Create a new account with this device as its primary (device 0).

    Pins the cluster (see --cluster-key), publishes the account-signed device list
    and one-time keys on the account's home node (following a redirect within the
    pinned cluster) and prints the user id. Re-running it on a home whose first
    publication failed (e.g. the relay was unreachable) retries it with the --name,
    --relay and cluster key given this time. A home whose registration is by invite
    needs --invite (a token from its operator, used once).

    The state in --home is encrypted at rest. Its key is a random storage.key
    file next to it, unless a passphrase protects it: WA_PASSPHRASE set in the
    environment (then no key file: the key is derived from the passphrase with
    Argon2id), --passphrase (asked for twice when WA_PASSPHRASE is not set), or
    --keyring (kept in the OS keyring). Every later command of this home then
    needs the passphrase: from WA_PASSPHRASE, from the OS keyring (--keyring),
    or typed at a prompt when stdin is a terminal.
    """
    check_name(name, "--name")
    if cluster_key is None and not tofu and not sys.stdin.isatty():
        raise click.UsageError("not a terminal: pass --cluster-key KEY (printed by 'wa-relay "
                               "cluster' / 'wa-relay serve') or --trust-on-first-use")
    home = app.home.expanduser().absolute()
    with failures():
        _passphrase.check_new(ask=ask, keyring=use_keyring)
        source = _passphrase.for_new_home(home, ask=ask, keyring=use_keyring)
        try:
            with create_state(app.home, name=name, relay_url=relay,
                              passphrase_source=source) as state:
                init_account(state)
                state.invite = invite
                _pin(app, state, relay, cluster_key, tofu)
                home_url = run_interruptible(_publish, app, state)
        except AlreadyInitialized:
            with open_state(app.home, passphrase_source=_passphrase.for_home(home)) as state:
                if state.published_version:
                    raise CliError(f"{app.home} already holds account {state.user_id}") from None
                # An earlier init never got its account published: keep its keys, but
                # this call's --name, --relay and cluster key win.
                state.name, state.relay_url, state.cluster = name, relay, None
                state.save()
                state.invite = invite
                _pin(app, state, relay, cluster_key, tofu)
                home_url = run_interruptible(_publish, app, state)
    app.out.emit(
        {"user_id": state.user_id, "device_id": state.device_id, "home": home_url},
        state.user_id,
    )
    if not app.out.json_mode:
        app.out.note(f"account created for {escape(state.name)}; home node {escape(home_url)}")
