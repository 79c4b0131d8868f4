"""``wa-relay storage ...``: maintenance of a node's store.

``wa-relay storage migrate --config node.toml`` applies the schema migrations of
the node's storage backend (``postgresql://``; a node also applies them when it
starts, unless its URL says ``migrate=false``) and prints one line per migration
applied, then ``schema at version N``. Backends without a schema (``lmdb://``,
``memory://``) print that there is nothing to migrate. Exit codes: 0 ok, 1 the
store cannot be reached or refuses, 2 usage or configuration error.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click
import trio

from relay.config import ConfigError, load_node_config
from storage import StorageError, UnknownBackend
from storage.registry import default_registry


class _ConfigProblem(click.ClickException):
    exit_code = 2


class _StoreFailure(click.ClickException):
    exit_code = 1


@click.group()
def storage() -> None:
    """Maintain a node's store."""


@storage.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
def migrate(config_path: Path) -> None:
    """Apply the storage schema's pending migrations."""
    try:
        url = load_node_config(config_path).storage
    except ConfigError as exc:
        raise _ConfigProblem(str(exc)) from exc
    scheme = urlsplit(url).scheme
    try:
        backend = default_registry().resolve(scheme)
    except UnknownBackend as exc:
        raise _ConfigProblem(str(exc)) from exc
    run = getattr(backend, "migrate_url", None)
    if run is None:
        click.echo(f"{scheme}:// storage has no schema: nothing to migrate")
        return
    try:
        version, applied = trio.run(run, url)
    except (StorageError, ValueError) as exc:
        raise _StoreFailure(f"migration failed: {exc}") from exc
    for line in applied:
        click.echo(f"applied {line}")
    click.echo(f"schema at version {version}")
