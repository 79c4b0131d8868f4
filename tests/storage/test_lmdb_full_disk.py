"""Issue 15, "acks and other freeing operations always succeed, also on a full disk
(keep the headroom they need)": a node's LMDB file that cannot grow any more (the
disk is full; here a file size limit, ``RLIMIT_FSIZE``, in a child process, which
gives EFBIG where a full disk gives ENOSPC) refuses new data with ``StorageFull``,
and every ack still succeeds, because data.mdb is kept allocated ahead of its pages
in use (:mod:`storage._lmdb_headroom`). Once acks freed pages, new data fits again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, os, resource, signal, sys
import trio
from storage import EnqueueRequest, StorageError, StorageFull
from storage.lmdb import LmdbStorage
from storage.testing import uid

T0 = 1_800_000_000.0
MAP = 8 << 20

async def main(path):
    out = {}
    async with LmdbStorage.open(path, map_size=MAP) as st:
        users = [uid(f"u{n}") for n in range(16)]
        stored = dict.fromkeys(users, 0)
        while st.used_bytes() < 2 << 20:
            answers = await st.enqueue_many(
                [EnqueueRequest([(users[k % 16], 0, os.urandom(300))], now=T0) for k in range(64)])
            for k, a in enumerate(answers):
                stored[users[k % 16]] += isinstance(a, list)
        data = os.path.join(path, "data.mdb")
        size = os.path.getsize(data)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # the disk is full now
        refused = []
        for _ in range(5000):  # new data until the disk refuses it a few times
            try:
                await st.enqueue([(users[1], 0, os.urandom(2000))], now=T0)
                stored[users[1]] += 1
            except StorageError as exc:
                refused.append(type(exc).__name__)
                if len(refused) == 4:
                    break
        out["refused"] = refused
        ok, failed = 0, []
        for u in users:
            for step in range(1, stored[u] + 1, 40):
                try:
                    await st.ack(u, 0, step)
                    ok += 1
                except StorageError as exc:
                    failed.append(repr(exc))
            try:
                await st.ack(u, 0, stored[u])
                ok += 1
            except StorageError as exc:
                failed.append(repr(exc))
        out["acks_ok"], out["acks_failed"] = ok, failed[:3] + [len(failed)]
        out["left"] = sum([await st.queue_length(u, 0) for u in users])
        try:
            await st.enqueue([(users[0], 0, b"after")], now=T0)
            out["after"] = "stored"
        except StorageError as exc:
            out["after"] = repr(exc)
        out["size_ok"] = os.path.getsize(data) <= MAP
    print(json.dumps(out), flush=True)

trio.run(main, sys.argv[1])
"""


def test_acks_succeed_when_the_disk_is_full(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "db")], cwd=ROOT,
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = json.loads(proc.stdout.decode().splitlines()[-1])
    assert out["refused"] == ["StorageFull"] * 4, out
    assert out["acks_failed"] == [0], out
    assert out["acks_ok"] > 50 and out["left"] == 0, out
    assert out["after"] == "stored" and out["size_ok"], out
