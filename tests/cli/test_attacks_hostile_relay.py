"""A hostile relay (or anything on a plain ``ws://`` path) against real ``wa-cli``
processes: frames the node never sent are injected or its answers rewritten by
:class:`wsmitm.Mitm`, between a real node and the client. Expected: a clear error or
the command's normal end, in its deadline, and nothing lost."""

from __future__ import annotations

import json
import os
import signal

import cli_procs
import trio
from cli_cluster import run_cluster
from cli_procs import Running
from wsmitm import Mitm, encode

DEADLINE = 60
DAEMON_ENV = {**os.environ, "WA_KEEPALIVE": "1", "WA_KEEPALIVE_TIMEOUT": "1",
              "WA_CONNECT_TIMEOUT": "2"}
COMMAND = 15  # seconds a command gets here (its own deadlines are shorter)


def rewrite_answers(mitm: Mitm, request: str, rewrite) -> None:
    """Have ``mitm`` hand the client ``rewrite(answer)`` for every ``request``."""
    ids: set[int] = set()

    def to_node(frame, raw):
        if frame and frame.get("t") == request:
            ids.add(frame["id"])
        return [raw]

    def to_client(frame, raw):
        if frame and frame.get("id") in ids:
            ids.discard(frame["id"])
            return [encode(rewrite(frame))]
        return [raw]

    mitm.to_node, mitm.to_client = to_node, to_client


def honest(mitm: Mitm) -> None:
    mitm.to_node = mitm.to_client = lambda frame, raw: [raw]


async def wa(home, *args):
    with trio.fail_after(COMMAND):  # a hang is a failure, not a stuck suite
        return await cli_procs.wa(home, *args, check=False)


init = cli_procs.init_account


async def test_a_negative_key_count_does_not_hang_wa_cli(tmp_path):
    """``auth_ok {otk_count}`` and the ``key_count`` push are the node's word: a count of
    -10^9 had wa-cli generate a billion one-time keys (hours of CPU, the event loop
    blocked: no deadline fired). Now it tops up to 100 keys at most and ends in time."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
            mitm = Mitm(cluster.urls["n1"])
            await nursery.start(mitm.serve)
            await init(tmp_path / "a", "a", mitm.url)

            rewrite_answers(mitm, "auth", lambda f: {**f, "otk_count": -10**9})
            got = await wa(tmp_path / "a", "devices", "list")
            assert got.returncode == 0, got.stderr
            assert b"this device" in got.stdout

            honest(mitm)

            async def push_after_sync():
                await mitm.wait_for("sync")
                await mitm.inject(encode({"t": "key_count", "id": 0, "otk_count": -10**9}))

            nursery.start_soon(push_after_sync)
            start = trio.current_time()
            got = await wa(tmp_path / "a", "recv", "--timeout", "1")
            assert got.returncode == 0, got.stderr
            assert trio.current_time() - start < 10
            assert b"no new messages" in got.stdout + got.stderr
            nursery.cancel_scope.cancel()


async def test_an_answer_of_another_type_is_a_clear_error(tmp_path):
    """An answer of the wrong type under a request's id was an ``unexpected error:
    AttributeError`` (and a ``send`` lost its message id: no ``--retry``, a resend
    shown twice). Now it is :class:`cli.errors.NoAnswer`: a ``send`` says it may have
    been delivered and how to retry it under the same id, which shows it once."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
            mitm = Mitm(cluster.urls["n1"])
            await nursery.start(mitm.serve)
            bob = await init(tmp_path / "bob", "bob", cluster.urls["n1"])
            await wa(tmp_path / "bob", "settings", "--requests", "show")
            await init(tmp_path / "a", "a", mitm.url)

            rewrite_answers(mitm, "get_devices", lambda f: {"t": "ok", "id": f["id"]})
            got = await wa(tmp_path / "a", "devices", "list")
            err = got.stderr.decode()
            assert got.returncode == 0, err  # the cached list, with a warning saying why
            assert "unexpected error" not in err
            assert "no answer to get_devices" in err
            assert "answered with ok instead of devices" in err
            assert b"this device" in got.stdout

            rewrite_answers(mitm, "send", lambda f: {"t": "ok", "id": f["id"]})
            got = await wa(tmp_path / "a", "send", bob, "hello once")
            err = got.stderr.decode()
            assert got.returncode == 1
            assert "unexpected error" not in err
            assert "may or may not have been delivered" in err
            retry = err.split("wa-cli send --retry ")[1].split()[0]

            honest(mitm)
            again = await wa(tmp_path / "a", "send", "--retry", retry)
            assert again.returncode == 0, again.stderr
            got = await wa(tmp_path / "bob", "--json", "recv", "--timeout", "0.5")
            rows = [json.loads(line) for line in got.stdout.decode().splitlines()]
            texts = [r["text"] for r in rows if r.get("type") == "text"]
            assert texts == ["hello once"]
            nursery.cancel_scope.cancel()


async def test_the_daemon_outlives_an_answer_of_another_type(tmp_path):
    """The daemon's key top-up runs in the background: an ``upload_keys`` answered with
    ``ok`` (not ``key_count``) ended the whole daemon with exit 1 ("unexpected error:
    AttributeError"). Now the top-up fails with a warning and the daemon serves on."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
                mitm = Mitm(cluster.urls["n1"])
                await nursery.start(mitm.serve)
                bob = await init(tmp_path / "bob", "bob", cluster.urls["n1"])
                alice = await init(tmp_path / "a", "alice", mitm.url)
                await wa(tmp_path / "a", "contacts", "add", "bob", bob)
                rewrite_answers(mitm, "upload_keys", lambda f: {"t": "ok", "id": f["id"]})
                daemon = await Running.start(tmp_path / "a", "--json", "daemon", env=DAEMON_ENV)
                await daemon.json()  # listening
                await mitm.wait_for("sync")
                await mitm.inject(encode({"t": "key_count", "id": 0, "otk_count": 0}))  # top up
                line = await daemon.err_line()
                assert "one-time key top-up failed: no answer to upload_keys" in line, line
                assert "answered with ok instead of key_count" in line

                honest(mitm)
                await wa(tmp_path / "bob", "send", alice, "still served")
                got = await wa(tmp_path / "a", "--json", "recv", "--timeout", "1")
                assert got.returncode == 0, got.stderr
                rows = cli_procs.lines(got)
                assert [r["text"] for r in rows if r.get("type") == "text"] == ["still served"]
                assert daemon.proc.returncode is None
                code, err = await daemon.stop(signal.SIGINT)
                assert code == 0, err
                assert "unexpected error" not in err
                nursery.cancel_scope.cancel()
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_cluster_addresses_outside_the_pin_are_not_kept(tmp_path):
    """``auth_ok.cluster`` (where to look for the home if it goes away) was saved as the
    node sent it: a hostile home (or anything on a plain ``ws://`` path) could plant
    thousands of addresses that never answer, and every later command whose home was
    unreachable tried each of them for its connect timeout (here 20 x 1 s, and the
    command's deadline passed first). Only the addresses of nodes of the pinned cluster
    are kept and tried now: the node is found at its own address at once."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
            silent = (await nursery.start(trio.serve_tcp, _hold, 0))[0]  # accepts, says nothing
            port = silent.socket.getsockname()[1]
            planted = [f"ws://127.0.0.1:{port}/{i}" for i in range(20)]
            async with trio.open_nursery() as home:
                mitm = Mitm(cluster.urls["n1"])
                await home.start(mitm.serve)
                await init(tmp_path / "a", "a", mitm.url)
                rewrite_answers(mitm, "auth", lambda f: {**f, "cluster": planted})
                got = await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.1")
                assert got.returncode == 0, got.stderr
                home.cancel_scope.cancel()  # the home is gone: its address refuses connections
            env = {**os.environ, "WA_CONNECT_TIMEOUT": "1"}
            start = trio.current_time()
            with trio.fail_after(COMMAND):
                got = await cli_procs.wa(tmp_path / "a", "recv", "--timeout", "0.1", check=False,
                                         env=env)
            assert trio.current_time() - start < 8, got.stderr  # not 20 x 1 s
            assert got.returncode == 0, got.stderr  # found at the node's pinned address
            nursery.cancel_scope.cancel()


async def _hold(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()

