"""Wrong endpoints give one line at once, with real ``wa-cli`` processes (issue 14): a
``--relay`` URL that answers HTTP but is not wa-relay, ``wss://`` to a plain node, and
``ws://`` to a TLS node (which closes a connection whose TLS handshake failed at once,
relay.net.wsio). Each exits 1 within a few seconds (not after the 10 s connect
timeout), on one line of stderr, without a traceback."""

from __future__ import annotations

import trio
from cli_cluster import run_cluster
from cli_procs import wa

DEADLINE = 60
FAST = 5.0  # seconds: well under --connect-timeout (10 s)


async def _http_server(task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    """A plain HTTP server on a free loopback port answering 200 to everything."""

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close"
                              b"\r\n\r\nhello")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


async def _init(tmp_path, name: str, relay: str) -> str:
    start = trio.current_time()
    proc = await wa(tmp_path / name, "init", "--trust-on-first-use", "--name", name,
                    "--relay", relay, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert trio.current_time() - start < FAST, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


async def test_wrong_endpoints_are_named_in_one_line_at_once(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_http_server)
            err = await _init(tmp_path, "http", f"ws://127.0.0.1:{port}")
            assert "answers HTTP 200 but is not a wa-relay node" in err
            async with run_cluster(1) as plain:
                url = plain.urls["n1"]
                assert url.startswith("ws://")
                err = await _init(tmp_path, "tls-to-plain", "wss://" + url[len("ws://"):])
                assert "TLS handshake failed" in err and "use ws://" in err
            async with run_cluster(1, tls=True) as tls:
                url = tls.urls["n1"]
                assert url.startswith("wss://")
                err = await _init(tmp_path, "plain-to-tls", "ws://" + url[len("wss://"):])
                assert "closed before the WebSocket handshake" in err and "use wss://" in err
            nursery.cancel_scope.cancel()
