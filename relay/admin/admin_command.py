"""``wa-relay admin ...``: operator actions on a node's store.

``wa-relay admin invite --config node.toml [--count N] [--ttl SECONDS]`` issues
single-use invite tokens for a node whose ``registration`` is ``invite``
(:mod:`relay.services.registration`): each is printed once, one per line (with
``--json``, one JSON object per line: ``{"invite", "expires_at"}``); the store
keeps only their SHA-256. The node may be running: ``lmdb://`` and
``postgresql://`` stores can be opened by several processes (a ``memory://`` node
has no store to share: exit 2). A user passes the token to ``wa-cli init --invite``.
Exit codes: 0 ok, 1 the store cannot be opened or written, 2 usage or configuration
error.

The ``admin`` group itself is :mod:`relay.admin.commands`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import click
import trio

from relay.admin._store import open_beside_node
from relay.config import ConfigError, load_node_config
from relay.services.registration import issue_invite
from storage import StorageError


class _ConfigProblem(click.ClickException):
    exit_code = 2


class _StoreFailure(click.ClickException):
    exit_code = 1


@click.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="How many tokens to issue.")
@click.option("--ttl", type=click.FloatRange(min=1), default=None,
              help="Seconds each token stays valid [default: the node's invite_ttl].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def invite(config_path: Path, count: int, ttl: float | None, as_json: bool) -> None:
    """Issue single-use invite tokens for new accounts on this node."""
    try:
        config = load_node_config(config_path)
    except ConfigError as exc:
        raise _ConfigProblem(str(exc)) from exc
    if urlsplit(config.storage).scheme == "memory":
        raise _ConfigProblem("a memory:// node keeps no store another process can write to")
    life = config.abuse.invite_ttl if ttl is None else ttl

    async def issue() -> list[str]:
        async with open_beside_node(config.storage) as st:
            return [await issue_invite(st, life) for _ in range(count)]

    try:
        tokens = trio.run(issue)
    except (StorageError, OSError) as exc:
        raise _StoreFailure(f"cannot store the invites: {exc}") from exc
    expires = time.time() + life
    for token in tokens:
        if as_json:
            click.echo(json.dumps({"invite": token, "expires_at": int(expires)}))
        else:
            click.echo(token)
    if config.abuse.registration != "invite" and not as_json:
        click.echo(f"note: node {config.id} has registration = "
                   f"{config.abuse.registration!r}; tokens matter only with 'invite'", err=True)
