"""Long JSON-RPC requests of ``wa-cli daemon`` (real ``wa-cli`` processes, an
in-process relay node on 127.0.0.1, plain JSON-RPC sockets). The daemon's "finish a
request read before the stop" limit (``WA_DAEMON_FINISH_LIMIT``, 60 s) was set on
every request from its start: a transfer running longer was cancelled, the answer
never came and the connection dropped with a traceback. It now counts from the stop
only. File methods during an outage answer -32000 after the daemon's 10 s wait for
its connection (they retried 6 x 10 s, and their error came wrapped in an exception
group that dropped the connection instead of answering)."""

from __future__ import annotations

import json
import signal

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa
from test_cli_files_daemon import Rpc, contacts, pattern

from relay.testing import child_env

DEADLINE = 60
CONNECT_WAIT = 10.0  # cli.daemon.methods_files.CONNECT_WAIT, as documented


async def daemon_with_limit(home, limit: float) -> Running:  # noqa: ANN001
    daemon = await Running.start(home, "--json", "daemon",
                                 env={**child_env(), "WA_DAEMON_FINISH_LIMIT": str(limit)})
    await daemon.json()  # listening
    return daemon


async def request(rpc: Rpc, rid: int, method: str, params: dict) -> None:
    await rpc.stream.send_all(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                          "params": params}).encode() + b"\n")


async def next_message(rpc: Rpc) -> dict | None:
    """The next line from the daemon, or ``None`` once it closed the connection."""
    while b"\n" not in rpc.buf:
        chunk = await rpc.stream.receive_some()
        if not chunk:
            return None
        rpc.buf += chunk
    line, rpc.buf = rpc.buf.split(b"\n", 1)
    return json.loads(line)


async def first_progress_then(rpc: Rpc, action) -> dict:  # noqa: ANN001
    """Read until the first ``progress`` notification, run ``action()``, then return
    the answer (the next message with an ``id``)."""
    acted = False
    while True:
        msg = await next_message(rpc)
        assert msg is not None, "the daemon closed the connection unanswered"
        if "id" in msg:
            assert acted, f"answered before any progress: {msg}"
            return msg
        if msg.get("method") == "progress" and not acted:
            await action()
            acted = True


async def test_transfers_longer_than_the_finish_limit_are_answered(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                daemon = await daemon_with_limit(tmp_path / "b", 0.002)
                big = tmp_path / "big.bin"
                big.write_bytes(pattern(3 * 1024 * 1024, 5))
                rpc = Rpc(await trio.open_unix_socket(str(tmp_path / "b" / "daemon.sock")))
                start = trio.current_time()
                answer = await rpc.call(1, "upload", {"path": str(big)})
                took = trio.current_time() - start
                assert took > 0.002  # longer than the limit: the case this is about
                assert answer["result"]["file"]["size"] == 3 * 1024 * 1024, answer
                # the same connection goes on; so does wa-cli send --file through it
                ok = await rpc.call(2, "sendFile", {"to": "alice", "upload":
                                                    answer["result"]["upload"]})
                assert ok["result"]["status"] == "stored", ok
                (sent,) = lines(await wa(tmp_path / "b", "--json", "send", "alice", "--file",
                                         str(big)))
                assert sent["status"] == "stored" and sent["file"]["size"] == len(
                    pattern(3 * 1024 * 1024, 5))
                await rpc.stream.aclose()
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err, err
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_a_stop_during_an_upload_still_answers_it(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                daemon = await daemon_with_limit(tmp_path / "b", 30)
                big = tmp_path / "big.bin"
                big.write_bytes(pattern(8 * 1024 * 1024, 6))
                rpc = Rpc(await trio.open_unix_socket(str(tmp_path / "b" / "daemon.sock")))
                await request(rpc, 1, "upload", {"path": str(big), "progress": True})

                async def stop() -> None:
                    daemon.proc.send_signal(signal.SIGTERM)

                answer = await first_progress_then(rpc, stop)
                assert answer.get("result", {}).get("file", {}).get("size") == 8 * 1024 * 1024, (
                    answer, daemon.err)
                assert await next_message(rpc) is None  # then closed: the daemon stopped
                await rpc.stream.aclose()
                code, err = await daemon.finish()
                assert code == 0 and "Traceback" not in err, err
    finally:
        if daemon is not None:
            await daemon.aclose()


async def upload_then_outage_and_stop(tmp_path, limit: float, *signals: int) -> float:  # noqa: ANN001
    """An 8 MiB upload through a daemon with finish limit ``limit``; at its first
    progress note the node goes away (so the upload waits for a connection) and the
    daemon gets ``signals``. Asserts the answer is -32000 ``stopped``, the connection
    then closed and the daemon exited 0 without a traceback; returns the seconds from
    the request to the daemon's exit."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                daemon = await daemon_with_limit(tmp_path / "b", limit)
                big = tmp_path / "big.bin"
                big.write_bytes(pattern(8 * 1024 * 1024, 7))
                rpc = Rpc(await trio.open_unix_socket(str(tmp_path / "b" / "daemon.sock")))
                started = trio.current_time()
                await request(rpc, 1, "upload", {"path": str(big), "progress": True})

                async def outage_then_stop() -> None:
                    cluster.stop("n1")
                    for sig in signals:
                        daemon.proc.send_signal(sig)

                answer = await first_progress_then(rpc, outage_then_stop)
                assert answer["error"]["code"] == -32000, answer
                assert answer["error"].get("data") == {"reason": "stopped"}, answer
                assert await next_message(rpc) is None
                await rpc.stream.aclose()
                code, err = await daemon.finish()
                assert code == 0 and "Traceback" not in err, err
                return trio.current_time() - started
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_a_request_still_running_at_the_limit_after_the_stop_is_cut_off_answered(
        tmp_path):
    """The node goes away mid-upload, so the upload waits for a connection; the
    daemon is stopped meanwhile: after the limit the request is answered -32000
    (``stopped``) and the connection closed, without a traceback."""
    await upload_then_outage_and_stop(tmp_path, 0.5, signal.SIGTERM)


async def test_file_methods_during_an_outage_answer_within_the_connect_wait(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                daemon = await daemon_with_limit(tmp_path / "b", 60)
                doc = tmp_path / "doc.bin"
                doc.write_bytes(pattern(300_000, 8))
                cluster.stop("n1")
                sock = str(tmp_path / "b" / "daemon.sock")
                took: dict[str, float] = {}

                async def call(method: str) -> None:  # on its own connection, at once
                    rpc = Rpc(await trio.open_unix_socket(sock))
                    start = trio.current_time()
                    answer = await rpc.call(1, method, {"to": "alice", "path": str(doc)})
                    took[method] = trio.current_time() - start
                    await rpc.stream.aclose()
                    assert answer["error"] == {
                        "code": -32000, "message": "no connection to the home node right now"
                    }, (method, answer)

                async with trio.open_nursery() as nursery:
                    for method in ("upload", "sendFile"):
                        nursery.start_soon(call, method)
                assert all(CONNECT_WAIT - 0.5 <= t <= CONNECT_WAIT + 5 for t in took.values()), \
                    took  # not 6 x 10 s
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err, err
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_a_second_signal_stops_the_daemon_at_once(tmp_path):
    """The first SIGTERM lets an upload that waits for the lost node finish (up to the
    60 s limit); a second signal cuts it off now: answered -32000 ``stopped`` and the
    daemon exits 0, long before the limit or the upload's own 10 s connect wait. (The
    second is another signal number: Trio delivers a signal that comes again before it
    was read once; a person's second Ctrl-C comes later.)"""
    took = await upload_then_outage_and_stop(tmp_path, 60, signal.SIGTERM, signal.SIGINT)
    assert took < CONNECT_WAIT / 2, "the second signal did not cut the upload off"
