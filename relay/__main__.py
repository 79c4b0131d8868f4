"""``wa-relay``: run and operate relay nodes (console script ``relay.__main__:main``).

Commands (docs/operations.md)::

    wa-relay [--log-level LEVEL] serve --config node.toml
    wa-relay init-cluster --nodes N --base-port P --data DIR [--host H] [--reconfigure]
                          [--admin-base-port A] [--insecure-loopback]
    wa-relay cluster      (the same options: init-cluster, then run every node here)
                          [--reshape]  (a data dir of another size: reshape it, with handoff)
    wa-relay reshape --config node.toml (--cluster NEW.toml | --finish [--force])
    wa-relay sign-cluster --cluster cluster.toml --key cluster.key [--version V]
    wa-relay --version
    wa-relay keygen --key-file FILE --id ID --url URL
    wa-relay check-config --config node.toml
    wa-relay status (--data DIR | --config node.toml) [--json] [--timeout S]
    wa-relay backup --config node.toml --out DIR
    wa-relay restore --config node.toml --from DIR
    wa-relay storage migrate --config node.toml      (see relay.admin.storage_command)
    wa-relay admin user show|purge|block|unblock --config node.toml USER_ID
                                                     (see relay.admin.user_commands)
    wa-relay admin invite --config node.toml [--count N] [--ttl S] [--json]
                                                     (see relay.admin.admin_command)

``serve`` and ``cluster`` print exactly one line ``ready <node_id> <url>`` per
node to stdout (flushed) once it listens, then one line ``cluster-key
wa-cluster-...`` (the key that signed the cluster description, which users pass to
``wa-cli init --cluster-key``; ``cluster-key none`` for an unsigned cluster file), log as :mod:`relay.admin.logs` sets up
(stderr and each node's ``log_file``; SIGHUP reopens the files), and on SIGTERM
or SIGINT stop gracefully (every WebSocket closed with 1001, storage flushed,
within ``shutdown_grace``) and exit 0; a second signal stops at once. A ``serve``
node whose cluster file ``wa-relay reshape --cluster`` replaced restarts in place
(gracefully, then ``ready`` again) to hand users over. Every
command runs with umask 077. Exit codes: 0 ok, 1 runtime failure (port in use,
storage cannot be opened, a node unreachable for ``status`` or for ``reshape
--finish``, a failed backup), 2 usage or configuration error, including a data dir
whose ``cluster.toml`` lists other nodes or URLs than the arguments
(``--reconfigure`` rewrites it anyway) and a reshape that cannot be started or
finished yet (``reshape --finish`` while the node's handoff is not done).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path

import click
import msgspec
import nacl.signing
import trio

from relay.admin.backup import BackupError, backup, restore
from relay.admin.commands import admin as admin_group
from relay.admin.logs import LogFiles, configure_logging
from relay.admin.reshape import (
    CLUSTER_POLL,
    ReshapeWatch,
    install_cluster,
    local_node_files,
    prepare_local_reshape,
    watch_cluster_file,
)
from relay.admin.reshape import finish as reshape_finish
from relay.admin.reshape_finish import NodeSilent, check_finish
from relay.admin.status import cluster_status, format_status
from relay.admin.storage_command import storage as storage_group
from relay.config import (
    ConfigError,
    NodeConfig,
    load_cluster,
    load_key,
    load_node_config,
    parse_node_file,
)
from relay.config.cluster_files import (
    format_cluster,
    format_node,
    init_cluster,
    sign_cluster_file,
    write_key,
)
from relay.config.loading import previous_cluster_path
from relay.config.ring import NodeInfo, Ring
from relay.node import serve_node
from relay.protocol.cluster import cluster_key_text
from relay.serving import gc_policy
from storage import StorageError
from storage.lmdb import lock_holder


class ConfigProblem(click.ClickException):
    """A configuration error (exit code 2)."""

    exit_code = 2


class RunFailure(click.ClickException):
    """A node could not start or failed while running (exit code 1)."""

    exit_code = 1


async def _handle_signals(signals, stop: trio.Event, cancel_scope: trio.CancelScope,
                          logs: LogFiles) -> None:
    """SIGTERM/SIGINT: stop gracefully (a second one: at once); SIGHUP: reopen logs."""
    log = logging.getLogger("wa_relay")
    async for signum in signals:
        if signum == signal.SIGHUP:
            logs.reopen()
        elif not stop.is_set():
            log.info("signal %d: stopping", signum)
            stop.set()
        else:
            log.warning("signal %d again: stopping at once", signum)
            cancel_scope.cancel()


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


async def run_nodes(configs: list[NodeConfig], logs: LogFiles | None = None,
                    watch: ReshapeWatch | None = None, reload_from: Path | None = None) -> None:
    """Start every node, print its ``ready`` line, run until SIGTERM/SIGINT, then
    stop every node gracefully (1001 to every connection, storage flushed, each
    within its ``shutdown_grace``) and return. With ``watch`` (an unfinished reshape),
    print what moved once every node's handoff is done (nodes that the reshape
    removes stop by themselves once drained).

    With ``reload_from`` (``serve``: the one node's ``node.toml``), a new cluster file
    installed meanwhile (``wa-relay reshape --cluster``) restarts the node in place:
    it stops gracefully, loads its config anew and starts again (``ready`` again),
    handing users over (:func:`relay.admin.reshape.watch_cluster_file`)."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handle_signals, signals, stop, nursery.cancel_scope,
                               logs or LogFiles({}))
            while configs:
                configs = await _run_once(configs, stop, watch, reload_from)
                watch = None
            nursery.cancel_scope.cancel()  # every node stopped: no more signals to wait for


async def _run_once(configs: list[NodeConfig], stop: trio.Event, watch: ReshapeWatch | None,
                    reload_from: Path | None) -> list[NodeConfig]:
    """One run of the nodes (see :func:`run_nodes`); the configs to run next (a new
    cluster file was installed), or ``[]``."""
    run_stop = trio.Event()
    fresh: list[NodeConfig] = []

    async def stop_on(event: trio.Event) -> None:
        await event.wait()
        run_stop.set()

    async def reload(path: Path) -> None:
        try:
            fresh.append(await watch_cluster_file(path, configs[0]))
        except ConfigError as exc:  # the node file went away meanwhile: serve on
            logging.getLogger("wa_relay").error("not watching the cluster file: %s", exc)
            return
        run_stop.set()

    async with trio.open_nursery() as helpers:
        helpers.start_soon(stop_on, stop)
        if reload_from is not None:
            helpers.start_soon(reload, reload_from)
        async with trio.open_nursery() as nodes:
            on_node = watch.on_node if watch is not None else None
            for cfg in configs:
                port = await nodes.start(partial(serve_node, cfg, stop=run_stop,
                                                 on_node=on_node))
                _say(f"ready {cfg.id} {cfg.own_url(port)}")
            doc = configs[0].cluster_doc
            _say("cluster-key " + ("none" if doc is None
                                   else cluster_key_text(doc.cluster_key)))
            if watch is not None:
                nodes.start_soon(watch.wait, len(configs), _say)
        helpers.cancel_scope.cancel()
    return [] if stop.is_set() else fresh


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _run(configs: list[NodeConfig], watch: ReshapeWatch | None = None,
         reload_from: Path | None = None) -> None:
    level = click.get_current_context().find_root().params.get("log_level")
    try:
        logs = configure_logging(configs, level)
    except OSError as exc:
        raise RunFailure(f"cannot open a log file: {exc}") from exc
    gc_policy.settle()  # start-up's objects frozen, rarer young collections (its docstring)
    try:
        trio.run(run_nodes, configs, logs, watch, reload_from)
    except* ValueError as group:
        raise ConfigProblem(str(_first_leaf(group))) from None
    except* OSError as group:
        raise RunFailure(f"cannot run the node: {_first_leaf(group)}") from None
    except* StorageError as group:
        raise RunFailure(f"storage error: {_first_leaf(group)}") from None
    finally:
        logs.close()


def _load(path: Path) -> NodeConfig:
    try:
        return load_node_config(path)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wa-relay", prog_name="wa-relay")
@click.option("--log-level", default=None,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Log level for stderr and every log file; overrides each node's log_level.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """wa-relay: run federated relay nodes."""
    old = os.umask(0o077)  # data, keys, logs and backups are for this user only
    ctx.call_on_close(lambda: os.umask(old))


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
def serve(config_path: Path) -> None:
    """Run one node in the foreground.

    A new cluster file installed while it runs (wa-relay reshape --cluster) restarts
    the node in place to hand users over (a node the new file removes drains, then
    exits 0)."""
    _run([_load(config_path)], reload_from=config_path)


_cluster_options = [
    click.option("--nodes", type=click.IntRange(1, 64), required=True, help="Number of nodes."),
    click.option("--base-port", type=click.IntRange(1, 65535), required=True,
                 help="Port of n1; nK listens on base-port + K - 1."),
    click.option("--data", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Directory for the cluster file, node keys and storage."),
    click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
    click.option("--reconfigure", is_flag=True,
                 help="Rewrite an existing cluster.toml that lists other nodes or URLs "
                      "(moves users to other home nodes; removed nodes' queues stay behind)."),
    click.option("--admin-base-port", type=click.IntRange(0, 65535), default=None,
                 help="Admin port of n1 (/metrics, /health, /ready on loopback); nK's is "
                      "admin-base-port + K - 1. Default: base-port + nodes. 0: none."),
    click.option("--insecure-loopback", is_flag=True,
                 help="Plain ws:// instead of TLS (wss:// with self-signed certificates, the "
                      "default); only with a loopback --host (tests, proxies)."),
]
_reshape_option = click.option(
    "--reshape", is_flag=True,
    help="The data dir holds a cluster of another size: reshape it to --nodes, handing "
         "every moved user's home over to its new node (removed nodes drain, then stop).")


def _with_cluster_options(fn):
    for opt in reversed(_cluster_options):
        fn = opt(fn)
    return fn


def _init(nodes: int, base_port: int, data: Path, host: str, reconfigure: bool,
          admin_base_port: int | None, insecure_loopback: bool) -> list[Path]:
    try:
        return init_cluster(data, nodes, base_port, host, reconfigure=reconfigure,
                            admin_base_port=admin_base_port, tls=not insecure_loopback)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except OSError as exc:
        raise RunFailure(f"cannot write {data}: {exc}") from exc


@main.command("init-cluster")
@_with_cluster_options
def init_cluster_cmd(nodes: int, base_port: int, data: Path, host: str, reconfigure: bool,
                     admin_base_port: int | None, insecure_loopback: bool) -> None:
    """Create (or complete) the files of a local N-node cluster under --data."""
    for path in _init(nodes, base_port, data, host, reconfigure, admin_base_port,
                      insecure_loopback):
        click.echo(str(path))


def _refuse_if_running(root: Path) -> None:
    """Exit 1 if a node of the local cluster under ``root`` is running (its LMDB store
    is locked by another process): ``--reshape`` or ``--reconfigure`` would install
    new files under it, and its nodes could not start anyway.

    Raises:
        RunFailure: a store is held (the message names it and its pid).
    """
    for lock in sorted([*root.glob("*/wa-relay.lock"), *root.glob("*/*/wa-relay.lock")]):
        try:
            pid = lock_holder(lock.parent)
        except OSError:
            continue  # unreadable: the node's own open reports it
        if pid is not None:
            raise RunFailure(
                f"the local cluster under {root} is running ({lock.parent} is held by pid "
                f"{pid}): stop it first (Ctrl-C or SIGTERM), then run this again; nothing "
                "was changed")


@main.command()
@_with_cluster_options
@_reshape_option
def cluster(nodes: int, base_port: int, data: Path, host: str, reconfigure: bool,
            admin_base_port: int | None, insecure_loopback: bool, reshape: bool) -> None:
    """Run N local nodes in this process (init-cluster first if needed).

    With --reshape on a data dir of another size, print what moves once done."""
    root = data.resolve()
    unfinished = previous_cluster_path(root / "cluster.toml").exists()
    _refuse_if_running(root)  # before anything is written (a reshape installs files)
    try:
        if (reshape or unfinished) and (root / "cluster.toml").exists():
            change = prepare_local_reshape(root, nodes, base_port, host, admin_base_port,
                                           tls=not insecure_loopback)
            if change is not None:
                _say(f"reshaping {change[0]} -> {change[1]} nodes")
        else:
            _init(nodes, base_port, data, host, reconfigure, admin_base_port, insecure_loopback)
        files = local_node_files(root)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except OSError as exc:
        raise RunFailure(f"cannot write {data}: {exc}") from exc
    configs = [_load(p) for p in files]
    unfinished = previous_cluster_path(root / "cluster.toml").exists()
    _run(configs, ReshapeWatch(root / "cluster.toml") if unfinished else None)


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
@click.option("--cluster", "new_cluster", type=click.Path(dir_okay=False, path_type=Path),
              help="The new cluster file to install (the current one is kept as .prev).")
@click.option("--finish", is_flag=True,
              help="The reshape is done at this node: forget the previous cluster file. "
                   "Asks the node first (its admin listener's /health) and refuses (exit 2) "
                   "while it has users to hand over or to take in, or a stuck handoff, "
                   "and (exit 1) when it does not answer.")
@click.option("--force", is_flag=True,
              help="With --finish: finish even though the node does not answer (only for "
                   "a node that is down for good: users it had not handed over stay "
                   "stranded in its data). A node that answers is never overridden.")
def reshape(config_path: Path, new_cluster: Path | None, finish: bool, force: bool) -> None:
    """Install a new cluster file for a reshape, or finish one.

    Run on every host with the same new file (signed like the current one, with a
    higher version): a running 'wa-relay serve' node picks it up by itself and
    restarts in place; users move to their new homes over the peer links; removed
    nodes drain, then exit 0. 'wa-relay status' shows each node's handoff; once all
    say done, run --finish on every host whose node runs (a node that is down for
    good, such as a removed node that drained and exited 0: --finish --force)."""
    if (new_cluster is None) == (not finish):
        raise click.UsageError("give exactly one of --cluster FILE and --finish")
    if force and not finish:
        raise click.UsageError("--force goes with --finish")
    try:
        cluster_path = config_path.resolve().parent / parse_node_file(config_path).cluster
        if finish:
            prev = previous_cluster_path(cluster_path)
            if not prev.exists():
                _say("no reshape to finish")
                return
            warning = trio.run(partial(check_finish, load_node_config(config_path),
                                       force=force))
            if warning is not None:
                click.echo(f"warning: {warning}", err=True)
            if reshape_finish(cluster_path):
                _say(f"reshape finished: {prev} removed")
            else:
                _say("no reshape to finish")
            return
        assert new_cluster is not None
        nodes = load_cluster(new_cluster)
        if install_cluster(cluster_path, new_cluster):
            _say(f"installed {new_cluster} as {cluster_path} ({len(nodes)} nodes; the previous "
                 "file is kept as .prev): a running node picks it up within "
                 f"{CLUSTER_POLL:g} s and restarts in place to hand users over")
        else:
            _say(f"{cluster_path} already lists these nodes")
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except NodeSilent as exc:
        raise RunFailure(f"{exc}; reshape not finished. If the node is down for good, "
                         "--finish --force finishes anyway (docs/operations.md, "
                         "'Reshaping a cluster'); a local cluster run by 'wa-relay cluster' "
                         "finishes its reshape itself: run that again instead") from exc
    except OSError as exc:
        raise RunFailure(f"cannot write the cluster file: {exc}") from exc


@main.command("sign-cluster")
@click.option("--cluster", "cluster_path", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The cluster.toml to sign (rewritten in place).")
@click.option("--key", "key_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The cluster key (32-byte Ed25519 seed, mode 0600); created if missing.")
@click.option("--version", "version", type=click.IntRange(1), default=None,
              help="The description's version (default: one more than the file's).")
def sign_cluster_cmd(cluster_path: Path, key_path: Path, version: int | None) -> None:
    """Sign cluster.toml with the cluster key: clients pin this key (wa-cli init
    --cluster-key) and accept a newer description only if it signed it. Prints the key."""
    try:
        if key_path.exists():
            key = load_key(key_path)
        else:
            key = nacl.signing.SigningKey.generate()
            write_key(key_path, key)
        written = sign_cluster_file(cluster_path, key, version=version)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except OSError as exc:
        raise RunFailure(f"cannot write {cluster_path}: {exc.strerror}") from exc
    click.echo(f"signed {cluster_path} version {written}")
    click.echo(f"cluster-key {cluster_key_text(bytes(key.verify_key))}")


@main.command()
@click.option("--key-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the new key (created with mode 0600; never overwritten).")
@click.option("--id", "node_id", required=True, help="The node's id in the cluster file.")
@click.option("--url", required=True, help="The node's ws:// or wss:// URL.")
def keygen(key_file: Path, node_id: str, url: str) -> None:
    """Write a new node key and print its [[node]] entry for cluster.toml."""
    if not url.startswith(("ws://", "wss://")):
        raise ConfigProblem(f"--url must start with ws:// or wss://, not {url!r}")
    key = nacl.signing.SigningKey.generate()
    try:
        write_key(key_file, key)
    except FileExistsError:
        raise ConfigProblem(f"{key_file} exists; a key is never overwritten") from None
    except OSError as exc:
        raise RunFailure(f"cannot write {key_file}: {exc.strerror}") from exc
    click.echo(format_cluster([NodeInfo(node_id, url, bytes(key.verify_key))]), nl=False)


@main.command("check-config")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
def check_config(config_path: Path) -> None:
    """Check a node.toml (and its cluster and key files) without starting anything;
    print the effective settings (environment overrides applied, paths resolved)."""
    try:
        cfg = load_node_config(config_path)
        effective = msgspec.to_builtins(parse_node_file(config_path))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    effective.update(storage=cfg.storage, cluster=str(config_path.resolve().parent /
                                                     effective["cluster"]),
                     key_file=str(cfg.key_file), log_file=str(cfg.log_file or ""))
    click.echo(f"# {config_path}: ok (node {cfg.id}, {len(cfg.cluster)} nodes in the cluster, "
               f"ring {Ring(cfg.cluster).version[:12]})")
    click.echo(format_node(effective), nl=False)


def _status_targets(data: Path | None, config_path: Path | None):
    """The cluster nodes, admin URLs and ring version that ``status`` probes."""
    if (data is None) == (config_path is None):
        raise click.UsageError("give exactly one of --data DIR and --config FILE")
    try:
        if config_path is not None:
            cfg = load_node_config(config_path)
            return cfg.cluster, {cfg.id: cfg.admin_url}, Ring(cfg.cluster).version
        nodes = load_cluster(data / "cluster.toml")
        admin = {n.id: load_node_config(data / n.id / "node.toml").admin_url
                 for n in nodes if (data / n.id / "node.toml").exists()}
        return nodes, admin, Ring(nodes).version
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc


@main.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="A local cluster's directory (every node's admin URL is known).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A node.toml of a deployment (its cluster file lists every node).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node and line.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              help="Seconds per probe.")
def status(data: Path | None, config_path: Path | None, as_json: bool, timeout: float) -> None:
    """Show each node: reachable, healthy, ready, version, ring, queues and links.

    Exit code 1 if a node is unreachable, on another ring, or unhealthy."""
    nodes, admin, ring_version = _status_targets(data, config_path)
    statuses = trio.run(partial(cluster_status, nodes, admin, ring_version, timeout))
    for st in statuses:
        click.echo(json.dumps(st.as_dict(), sort_keys=True) if as_json else format_status(st))
    if not all(st.ok for st in statuses):
        sys.exit(1)


@main.command("backup")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="A new directory for the backup (created 0700).")
def backup_cmd(config_path: Path, out: Path) -> None:
    """Copy a node's storage (online, compacted), media, key and files into --out."""
    try:
        manifest = backup(_load(config_path), config_path, out)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except BackupError as exc:
        raise RunFailure(str(exc)) from exc
    click.echo(f"backed up node {manifest['node']} to {out}: {manifest['data_bytes']} bytes of "
               f"storage, {manifest['media_files']} media files, in {manifest['seconds']:g} s")


@main.command("restore")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The node.toml file.")
@click.option("--from", "source", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A directory written by wa-relay backup.")
def restore_cmd(config_path: Path, source: Path) -> None:
    """Put a backup back into a stopped node's (empty) storage directory."""
    try:
        manifest = restore(config_path, source)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except BackupError as exc:
        raise RunFailure(str(exc)) from exc
    click.echo(f"restored node {manifest['node']} from {source} (taken at "
               f"{manifest['created']:.0f}, wa-relay {manifest['wa_relay']})")


main.add_command(storage_group)
main.add_command(admin_group)


if __name__ == "__main__":  # pragma: no cover
    main()
