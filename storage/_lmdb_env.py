"""Opening an LMDB environment for :class:`storage.lmdb.LmdbStorage`: URLs, sizes,
and the retry while the reader table is full of stale slots."""

from __future__ import annotations

import logging
import os
from functools import partial
from urllib.parse import parse_qs, unquote, urlsplit

import lmdb
import trio

from . import _lmdb_layout as L
from ._group_commit import translate
from .errors import StorageUnavailable

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB
_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"1073741824"``, ``"512M"``, ``"1GiB"``, ``"64k"`` -> bytes. Raises ValueError."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = _SIZE_SUFFIXES.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    if not t.isdigit():
        raise ValueError(f"bad size {text!r}")
    return int(t) * mult


def path_from_url(url: str) -> tuple[str, dict[str, list[str]]]:
    """``lmdb:///abs/path?...`` -> ``("/abs/path", query)``; ``lmdb://rel/path`` is relative."""
    parts = urlsplit(url)
    if parts.scheme != "lmdb":
        raise ValueError(f"not an lmdb:// URL: {url!r}")
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ValueError(f"lmdb URL has no path: {url!r}")
    return path, parse_qs(parts.query)


async def open_env(
    path: str | os.PathLike[str], map_size: int, max_readers: int, patience: float,
) -> lmdb.Environment:
    """``lmdb.open`` in a thread, retried while the reader table is full (see
    :meth:`storage.lmdb.LmdbStorage.open`). Raises StorageError (StorageUnavailable if full)."""
    open_env = partial(
        lmdb.open, os.fspath(path), map_size=map_size, subdir=True, create=True,
        sync=True, metasync=True, lock=True, max_dbs=len(L.DB_NAMES) + 2,
        readahead=False, max_readers=max_readers,
    )
    deadline = trio.current_time() + patience
    delay = 0.05
    while True:
        try:
            return await trio.to_thread.run_sync(open_env)
        except lmdb.ReadersFullError as exc:
            # Opening needs a reader slot, so stale slots cannot be cleared from
            # here: wait for a live process on the environment to clear them.
            if trio.current_time() + delay > deadline:
                raise StorageUnavailable(
                    f"the LMDB reader table of {os.fspath(path)!r} is full (slots of "
                    f"killed processes?) and no process cleared it: {exc}") from exc
            log.warning("LMDB reader table full at open; retrying in %.2f s", delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)
        except lmdb.Error as exc:
            raise translate(exc) from exc
