"""``wa-relay backup`` and ``wa-relay restore`` of one node with LMDB storage.

A backup is a directory (created 0700, files 0600)::

    manifest.json     node id, ring version, wa-relay version, time, sizes
    node.toml         the node file as it was (verbatim)
    cluster.toml      the cluster file it names
    node.key          the node key (0600: guard the backup like the key)
    data/data.mdb     a compacted, consistent copy of the LMDB environment
    data/media/       the media blob files

**Online.** The LMDB copy (``Environment.copy(compact=True)``) reads one
snapshot through a read transaction while the node keeps writing; the node
need not stop. Media files are copied after the snapshot: a blob that expires
in between is missing from the copy (its record is dropped at the next expiry
sweep after a restore), and an upload still in progress is copied as far as
it got (the client resumes it).

**Restore** writes into the node's storage directory, which must not hold an
environment yet (move it away first; the node must be stopped), and puts the
key back where ``key_file`` points if no key is there; an existing key must be
the backed-up one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lmdb

from relay.admin.metrics import relay_version
from relay.config import ConfigError, NodeConfig, load_key, load_node_config, parse_node_file
from relay.config.ring import Ring
from storage._lmdb_layout import DB_NAMES
from storage.lmdb import path_from_url

MANIFEST = "manifest.json"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore could not be done (the message says why; CLI exit code 1)."""


def storage_dir(config: NodeConfig) -> Path:
    """The LMDB directory of ``config``.

    Raises:
        ConfigError: the storage is not ``lmdb://`` (other backends have their own tools).
    """
    if not config.storage.startswith("lmdb://"):
        raise ConfigError(f"backup and restore handle lmdb:// storage only, not {config.storage!r}"
                          " (use the backend's own tools)")
    return Path(path_from_url(config.storage)[0])


def _private_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)


def backup(config: NodeConfig, config_path: Path, out: Path) -> dict[str, Any]:
    """Write a backup of the running (or stopped) node ``config`` to the new directory ``out``.

    Returns:
        The manifest written.

    Raises:
        ConfigError: not LMDB storage. BackupError: ``out`` exists, the environment
        cannot be read, or a file cannot be written.
    """
    source = storage_dir(config)
    if not (source / "data.mdb").exists():
        raise BackupError(f"{source}: no LMDB environment to back up")
    try:
        out.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        raise BackupError(f"{out} exists; give a new directory") from None
    except OSError as exc:
        raise BackupError(f"cannot create {out}: {exc.strerror}") from exc
    started = time.time()
    try:
        (out / "data").mkdir(mode=0o700)
        env = lmdb.open(str(source), readonly=True, lock=True, subdir=True, create=False,
                        max_dbs=len(DB_NAMES) + 2)
        try:
            env.copy(str(out / "data"), compact=True)
        finally:
            env.close()
        os.chmod(out / "data" / "data.mdb", 0o600)
        media = 0
        if (source / "media").is_dir():
            (out / "data" / "media").mkdir(mode=0o700)
            for blob in (source / "media").iterdir():
                try:
                    _private_copy(blob, out / "data" / "media" / blob.name)
                    media += 1
                except FileNotFoundError:
                    continue  # expired meanwhile
        _private_copy(config_path, out / "node.toml")
        cluster = parse_node_file(config_path).cluster
        _private_copy(config_path.resolve().parent / cluster, out / "cluster.toml")
        if config.key_file is not None:
            _private_copy(config.key_file, out / "node.key")
    except (lmdb.Error, OSError) as exc:
        raise BackupError(f"backup to {out} failed: {exc}") from exc
    manifest = {
        "format": FORMAT, "node": config.id, "ring": Ring(config.cluster).version,
        "wa_relay": relay_version(), "created": started, "seconds": round(time.time() - started, 3),
        "data_bytes": (out / "data" / "data.mdb").stat().st_size, "media_files": media,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(out / MANIFEST, 0o600)
    return manifest


def restore(config_path: Path, source: Path) -> dict[str, Any]:
    """Restore the backup ``source`` into the storage directory of the node file
    ``config_path`` (and its key, if the key file is missing).

    Returns:
        The backup's manifest.

    Raises:
        ConfigError: not LMDB storage. BackupError: not a backup, another node's,
        the target holds an environment already, or the key differs.
    """
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} is not a wa-relay backup ({exc})") from exc
    node_file = parse_node_file(config_path)
    if manifest.get("node") != node_file.id:
        raise BackupError(f"{source} is a backup of node {manifest.get('node')!r}, "
                          f"not of {node_file.id!r}")
    base = config_path.resolve().parent
    key_path = base / node_file.key_file
    saved_key = source / "node.key"
    if key_path.exists():
        if saved_key.exists() and bytes(load_key(key_path)) != bytes(load_key(saved_key)):
            raise BackupError(f"{key_path} holds another key than the backup's; move it away")
    elif saved_key.exists():
        _private_copy(saved_key, key_path)
    config = load_node_config(config_path)
    target = storage_dir(config)
    if (target / "data.mdb").exists():
        raise BackupError(f"{target} already holds an LMDB environment; stop the node and "
                          "move the directory away first")
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_copy(source / "data" / "data.mdb", target / "data.mdb")
        if (source / "data" / "media").is_dir():
            (target / "media").mkdir(mode=0o700, exist_ok=True)
            for blob in (source / "data" / "media").iterdir():
                _private_copy(blob, target / "media" / blob.name)
    except OSError as exc:
        raise BackupError(f"restore into {target} failed: {exc}") from exc
    return manifest
