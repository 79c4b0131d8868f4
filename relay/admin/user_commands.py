"""``wa-relay admin user ...``: look a user up, purge a device queue, block an account.

::

    wa-relay admin user show    --config node.toml USER_ID [--json]
    wa-relay admin user purge   --config node.toml USER_ID --device N
    wa-relay admin user block   --config node.toml USER_ID [--reason TEXT]
    wa-relay admin user unblock --config node.toml USER_ID

Each opens the node's store directly (the node may be running: ``lmdb://`` and
``postgresql://`` stores can be opened by several processes; a ``memory://`` node
has no store to share: exit 2). ``show`` prints the user's home (by the cluster
file, and whether a reshape is handing it over), its device list version and
devices, and per device the queue depth and unclaimed one-time keys. ``purge``
deletes a device's queue and keys (its seq counter stays). ``block`` records a
durable marker ``blocked/<user_id>`` that the home checks at every login: the
account's devices are refused (``unauthorized``, "account blocked") from their
next connection on; ``unblock`` removes it. A user homed at another node is
reported with that node (exit 1 for ``purge``/``block``: run it there).

Exit codes: 0 ok, 1 the store cannot be opened or written, or the user is not
homed at this node, 2 usage or configuration error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import trio

from relay.config import ConfigError, NodeConfig, load_node_config
from relay.config.ring import Ring
from relay.protocol import is_user_id, verify_device_list
from relay.services.directory import BLOCK_MARK, unpack_list
from relay.services.homes import Homes
from storage import Storage, StorageError, open_storage
from storage.lmdb import LmdbStorage


class _ConfigProblem(click.ClickException):
    exit_code = 2


class _Failure(click.ClickException):
    exit_code = 1


def _config(config_path: Path, user_id: str) -> NodeConfig:
    if not is_user_id(user_id):
        raise _ConfigProblem(f"not a user id: {user_id!r}")
    try:
        config = load_node_config(config_path)
    except ConfigError as exc:
        raise _ConfigProblem(str(exc)) from exc
    if urlsplit(config.storage).scheme == "memory":
        raise _ConfigProblem("a memory:// node keeps no store another process can open")
    return config


def _homes(config: NodeConfig) -> Homes:
    previous = Ring(config.previous_cluster) if config.previous_cluster else None
    return Homes(config.id, Ring(config.cluster), previous)


def _with_store(config: NodeConfig, action) -> Any:
    async def run() -> Any:
        if urlsplit(config.storage).scheme == "lmdb":  # next to the running node: no lock
            opened = LmdbStorage.from_url(config.storage, exclusive=False)
        else:
            opened = open_storage(config.storage)
        async with opened as st:
            return await action(st)
    try:
        return trio.run(run)
    except (StorageError, OSError, ValueError) as exc:
        raise _Failure(f"storage: {exc}") from exc


async def _lookup(config: NodeConfig, st: Storage, user_id: str) -> dict[str, Any]:
    homes = _homes(config)
    home = homes.ring.home(user_id)
    old = homes.old_home(user_id)
    info: dict[str, Any] = {
        "user_id": user_id, "node": config.id, "home": home.id, "home_url": home.url,
        "homed_here": home.id == config.id,
        "previous_home": old.id if old is not None and old.id != home.id else None,
        "blocked": (await st.get_mark(BLOCK_MARK + user_id) or b"").decode() or None,
        "device_list_version": None, "devices": [],
    }
    stored = await st.get_device_list(user_id)
    device_ids: set[int] = set()
    if stored is not None:
        info["device_list_version"] = stored[0]
        device_ids = set(verify_device_list(unpack_list(stored[1]), user_id).device_ids)
    records = await st.export_user(user_id, limit=1 << 30)
    device_ids |= {r.device_id for r in records if r.kind in ("item", "otk", "seq")}
    for d in sorted(device_ids):
        info["devices"].append({
            "device_id": d, "queued": await st.queue_length(user_id, d),
            "queued_bytes": sum(len(r.value) for r in records
                                if r.kind == "item" and r.device_id == d),
            "one_time_keys": await st.count_one_time_keys(user_id, d),
        })
    return info


@click.group()
def user() -> None:
    """Look a user up, purge a device queue, block an account (on the user's home)."""


_config_option = click.option("--config", "config_path", required=True,
                              type=click.Path(dir_okay=False, path_type=Path),
                              help="The node.toml of the user's home node.")


@user.command()
@_config_option
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show(config_path: Path, user_id: str, as_json: bool) -> None:
    """The user's home, device list and per-device queue depths."""
    config = _config(config_path, user_id)
    info = _with_store(config, lambda st: _lookup(config, st, user_id))
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
        return
    where = "here" if info["homed_here"] else f"at {info['home']} ({info['home_url']})"
    click.echo(f"user {user_id}: home {info['home']} ({where})"
               + (f", being handed over from {info['previous_home']}"
                  if info["previous_home"] else "")
               + (f", BLOCKED ({info['blocked']})" if info["blocked"] else ""))
    click.echo(f"device list: version {info['device_list_version']}"
               if info["device_list_version"] is not None else "device list: none here")
    for dev in info["devices"]:
        click.echo(f"  device {dev['device_id']}: {dev['queued']} queued "
                   f"({dev['queued_bytes']} bytes), {dev['one_time_keys']} one-time keys")


def _require_home(config: NodeConfig, user_id: str) -> None:
    home = _homes(config).ring.home(user_id)
    if home.id != config.id:
        raise _Failure(f"user {user_id[:8]} is homed at {home.id} ({home.url}), not at "
                       f"{config.id}: run this with that node's config")


@user.command()
@_config_option
@click.argument("user_id")
@click.option("--device", "device_id", required=True, type=click.IntRange(0, 2**32 - 1),
              help="The device whose queue and keys to delete.")
def purge(config_path: Path, user_id: str, device_id: int) -> None:
    """Delete one device's queue and one-time keys (its seq counter stays)."""
    config = _config(config_path, user_id)
    _require_home(config, user_id)
    gone = _with_store(config, lambda st: st.purge_device(user_id, device_id))
    click.echo(f"purged device {device_id} of {user_id[:8]}: {gone} envelopes deleted")


@user.command()
@_config_option
@click.argument("user_id")
@click.option("--reason", default="blocked by the operator", show_default=True,
              help="Kept with the block (shown by 'show').")
def block(config_path: Path, user_id: str, reason: str) -> None:
    """Refuse the account's devices from their next login on (durable)."""
    config = _config(config_path, user_id)
    _require_home(config, user_id)
    _with_store(config, lambda st: st.set_mark(BLOCK_MARK + user_id, reason.encode()[:4096]))
    click.echo(f"blocked {user_id}: its devices are refused from their next login")


@user.command()
@_config_option
@click.argument("user_id")
def unblock(config_path: Path, user_id: str) -> None:
    """Remove a block."""
    config = _config(config_path, user_id)
    _with_store(config, lambda st: st.set_mark(BLOCK_MARK + user_id, None))
    click.echo(f"unblocked {user_id}")
