"""Issue 15, "Dead links noticed ... A send whose answer never came reports unknown
honestly and is safe to retry (same message id)", through ``wa-cli daemon``: the
daemon's link goes silent right after a ``send`` frame left (a TCP proxy that stops
forwarding, :mod:`netproxy`); ``wa-cli send`` and ``wa-cli send --retry`` routed
through the daemon print the ``{"id", "status": "unknown", "to"}`` line and exit 1,
as without a daemon; the retry after the heal is stored and shown once. Real
``wa-cli`` processes, one in-process node on 127.0.0.1, short keepalive settings."""

from __future__ import annotations

import os

import trio
from cli_procs import Running, lines, wa

from relay.testing import open_local_cluster
from tests.netproxy import Proxy, frame_type

DEADLINE = 90
ENV = {**os.environ, "WA_KEEPALIVE": "0.3", "WA_KEEPALIVE_TIMEOUT": "0.3",
       "WA_CONNECT_TIMEOUT": "2"}


def _unknown(proc) -> tuple[dict, str]:
    """The status line and the stderr of a ``send --json`` whose answer never came
    (stdout: the status line, then the ``{"error"}`` object of every failed command)."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    got = lines(proc)
    assert len(got) == 2 and "error" in got[1], (got, err)
    assert "may or may not have been delivered" in got[1]["error"]["message"]
    return got[0], err


async def test_send_and_retry_via_the_daemon_report_unknown_and_deliver_once(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster, trio.open_nursery() as nursery:
                proxy = Proxy(int(cluster.urls["n1"].rsplit(":", 1)[1]))
                await nursery.start(proxy.serve)
                (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                                        "--name", "bob", "--relay", cluster.urls["n1"]))
                (alice,) = lines(await wa(tmp_path / "a", "--json", "init",
                                          "--trust-on-first-use", "--name", "alice",
                                          "--relay", proxy.url))
                await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
                daemon = await Running.start(tmp_path / "a", "--json", "daemon", env=ENV)
                await daemon.json()  # listening

                proxy.blackhole_at(lambda payload: frame_type(payload) == "send")
                unknown, err = _unknown(await wa(tmp_path / "a", "--json", "send",
                                                 bob["user_id"], "hi", check=False))
                msg_id = unknown["id"]
                assert unknown == {"id": msg_id, "status": "unknown", "to": bob["user_id"]}
                assert f"wa-cli send --retry {msg_id}" in err, err

                proxy.heal()  # and the retry's own answer is lost too
                proxy.blackhole_at(lambda payload: frame_type(payload) == "send")
                again, err = _unknown(await wa(tmp_path / "a", "--json", "send", "--retry",
                                               msg_id, check=False))
                assert again == {"id": msg_id, "status": "unknown", "to": bob["user_id"]}
                assert f"wa-cli send --retry {msg_id}" in err, err

                proxy.heal()
                (done,) = lines(await wa(tmp_path / "a", "--json", "send", "--retry", msg_id))
                assert done == {"id": msg_id, "status": "stored", "to": bob["user_id"]}
                shown = [m for m in lines(await wa(tmp_path / "b", "--json", "recv",
                                                   "--timeout", "0.5"))
                         if m["type"] == "text"]
                assert [(m["id"], m["text"]) for m in shown] == [(msg_id, "hi")]
                nursery.cancel_scope.cancel()
    finally:
        if daemon is not None:
            await daemon.aclose()

