"""JSON-RPC 2.0 framing of the daemon (:mod:`cli.daemon.jsonrpc`) over an in-memory
stream pair: answers, errors, batches, notifications both ways, limits."""

from __future__ import annotations

import json

import trio
import trio.testing

from cli.daemon.jsonrpc import MAX_LINE, Peer, RpcError

TIMEOUT = 5


async def echo(peer: Peer, params: dict) -> dict:
    return {"echo": params}


async def fails(peer: Peer, params: dict) -> None:
    raise RpcError(-32001, "unknown contact 'x'", {"reason": "unknown_contact"})


async def subscribe(peer: Peer, params: dict) -> dict:
    async def first() -> None:
        await peer.notify("receive", {"n": 1})

    peer.after_reply(first)
    return {"subscription": 1}


METHODS = {"echo": echo, "fails": fails, "subscribe": subscribe}


class Client:
    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream, self.buf = stream, b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self):  # noqa: ANN201
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


async def served(fn) -> None:  # noqa: ANN001
    a, b = trio.testing.memory_stream_pair()
    peer = Peer(b, METHODS, "test")

    async def serve() -> None:  # as the daemon's server does: close once served
        await peer.serve()
        await b.aclose()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await fn(Client(a), peer)
            await a.aclose()
    assert peer.closed.is_set()


async def test_answers_errors_and_notifications_in_order():
    async def body(c: Client, peer: Peer) -> None:
        await c.send(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":[1]}}\n')
        assert await c.line() == {"jsonrpc": "2.0", "id": 1, "result": {"echo": {"a": [1]}}}
        await c.send(b'{"jsonrpc":"2.0","id":"x","method":"fails"}\n')
        assert await c.line() == {"jsonrpc": "2.0", "id": "x", "error": {
            "code": -32001, "message": "unknown contact 'x'",
            "data": {"reason": "unknown_contact"}}}
        await c.send(b'{"jsonrpc":"2.0","id":2,"method":"subscribe"}\n')
        assert (await c.line())["result"] == {"subscription": 1}  # the answer first,
        assert await c.line() == {"jsonrpc": "2.0", "method": "receive", "params": {"n": 1}}
        # a notification from the client gets no answer; the next request does
        await c.send(b'{"jsonrpc":"2.0","method":"echo"}\n{"jsonrpc":"2.0","id":3,"method":"echo"}\n')
        assert (await c.line())["id"] == 3

    await served(body)


async def test_bad_input_gets_the_spec_codes():
    async def body(c: Client, peer: Peer) -> None:
        cases = [
            (b"{not json\n", -32700),
            (b'{"jsonrpc":"1.0","id":1,"method":"echo"}\n', -32600),
            (b'{"jsonrpc":"2.0","id":1}\n', -32600),
            (b'{"jsonrpc":"2.0","id":1,"method":"nope"}\n', -32601),
            (b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}\n', -32602),
            (b"[]\n", -32600),
            (b"\xff\xfe\n", -32700),
        ]
        for data, code in cases:
            await c.send(data)
            assert (await c.line())["error"]["code"] == code, data
        await c.send(b'[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","method":"echo"},'
                     b'{"jsonrpc":"2.0","id":2,"method":"nope"}]\n')
        batch = await c.line()
        assert [r["id"] for r in batch] == [1, 2] and batch[1]["error"]["code"] == -32601

    await served(body)


async def test_a_line_over_the_limit_ends_the_connection():
    async def body(c: Client, peer: Peer) -> None:
        await c.send(b"[" + b" " * MAX_LINE)
        assert (await c.line())["error"] == {"code": -32700, "message": "line too long"}
        assert await c.line() is None  # closed by the daemon
        await peer.closed.wait()

    await served(body)


async def test_deeply_nested_json_and_nan_are_parse_errors_and_the_connection_goes_on():
    """A line of arrays nested 100,000 deep made Python's parser raise RecursionError,
    which ended the connection with a traceback instead of a parse error; ``NaN`` was
    taken (and echoed ids came back as invalid JSON)."""
    async def body(c: Client, peer: Peer) -> None:
        for data in (b"[" * 100_000 + b"]" * 100_000 + b"\n",
                     b'{"jsonrpc":"2.0","id":1,"method":"echo","params":' + b'{"a":' * 50_000
                     + b"1" + b"}" * 50_001 + b"\n",
                     b'{"jsonrpc":"2.0","id":NaN,"method":"echo"}\n'):
            await c.send(data)
            answer = await c.line()
            assert answer["id"] is None and answer["error"]["code"] == -32700, answer
        await c.send(b'{"jsonrpc":"2.0","id":3,"method":"echo"}\n')
        assert (await c.line())["id"] == 3

    await served(body)


class Slow:
    """Methods that take time: ``slow`` sleeps ``params["s"]`` seconds (its own wait),
    ``stuck`` never returns; ``started`` is set once either began."""

    def __init__(self) -> None:
        self.started = trio.Event()

    async def slow(self, peer: Peer, params: dict) -> dict:
        self.started.set()
        await trio.sleep(params["s"])
        return {"slept": params["s"]}

    async def stuck(self, peer: Peer, params: dict) -> None:
        self.started.set()
        await trio.sleep_forever()


async def stoppable(body, *, finish_limit: float) -> None:  # noqa: ANN001
    """Serve a peer with :class:`Slow`'s methods in a scope that ``body(client, slow,
    stop)`` cancels with ``stop()`` (the daemon stopping: only the serving side)."""
    slow = Slow()
    a, b = trio.testing.memory_stream_pair()
    methods = {**METHODS, "slow": slow.slow, "stuck": slow.stuck}
    peer = Peer(b, methods, "test", finish_limit=finish_limit)
    daemon = trio.CancelScope()
    finished = []

    async def serve() -> None:
        with daemon:
            try:
                await peer.serve()
            finally:
                await b.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await body(Client(a), slow, daemon.cancel)
        finished.append(True)
        await a.aclose()
    assert finished and peer.closed.is_set()


async def test_a_request_longer_than_the_finish_limit_is_answered(autojump_clock):
    """The shield's limit was set on every request: one running over 60 s was cancelled,
    left ``written`` unbound and the connection dropped with a traceback, unanswered."""
    async def body(c: Client, slow: Slow, stop) -> None:  # noqa: ANN001
        start = trio.current_time()
        await c.send(b'{"jsonrpc":"2.0","id":1,"method":"slow","params":{"s":150}}\n')
        assert await c.line() == {"jsonrpc": "2.0", "id": 1, "result": {"slept": 150}}
        assert trio.current_time() - start >= 150
        await c.send(b'{"jsonrpc":"2.0","id":2,"method":"echo"}\n')  # the connection goes on
        assert (await c.line())["id"] == 2

    await stoppable(body, finish_limit=60)


async def test_a_stop_during_a_request_still_answers_it(autojump_clock):
    async def body(c: Client, slow: Slow, stop) -> None:  # noqa: ANN001
        await c.send(b'{"jsonrpc":"2.0","id":1,"method":"slow","params":{"s":50}}\n'
                     b'{"jsonrpc":"2.0","id":2,"method":"echo"}\n')  # pipelined
        await slow.started.wait()
        await trio.sleep(30)  # the request has run 30 s (over a limit from its start)
        stop()
        assert await c.line() == {"jsonrpc": "2.0", "id": 1, "result": {"slept": 50}}
        assert await c.line() is None  # then closed: the next request is not run

    await stoppable(body, finish_limit=40)


async def test_a_request_past_the_limit_after_the_stop_is_cut_off_with_an_answer(autojump_clock):
    async def body(c: Client, slow: Slow, stop) -> None:  # noqa: ANN001
        await c.send(b'[{"jsonrpc":"2.0","id":1,"method":"echo"},'
                     b'{"jsonrpc":"2.0","id":2,"method":"stuck"},'
                     b'{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","id":3,"method":"echo"}]\n')
        await slow.started.wait()
        stopped = trio.current_time()
        stop()
        batch = await c.line()
        assert trio.current_time() - stopped == 5  # autojump: exactly the limit
        assert batch[0] == {"jsonrpc": "2.0", "id": 1, "result": {"echo": {}}}
        cut = {"code": -32000, "message": "the daemon stopped; this request was cut off 5s later",
               "data": {"reason": "stopped"}}
        assert batch[1:] == [{"jsonrpc": "2.0", "id": 2, "error": cut},
                             {"jsonrpc": "2.0", "id": 3, "error": cut}]
        assert await c.line() is None  # closed cleanly

    await stoppable(body, finish_limit=5)
