"""A TCP proxy on 127.0.0.1 in front of one node that watches the WebSocket frames of
each connection and can lose the answer to one request type (:class:`AnswerCutter`).

The relay protocol runs over plain ``ws://`` in these tests: after the HTTP upgrade,
each binary WebSocket frame (masked from the client, unmasked from the node) holds
one msgpack map ``{"t": TYPE, "id": ..., ...}``. The proxy forwards every byte
unchanged, parsing frames on the side; once :meth:`AnswerCutter.arm` ed, the first
answer to a request of the armed type is *not* forwarded and:

* ``"cut"``: both sockets are closed (the node has done the request, the client
  never learns it; its connection is gone);
* ``"hold"``: nothing more is forwarded to the client (the node's bytes are read
  and dropped) while the test does something, e.g. kills the client.

Later connections pass through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import msgpack

from .procs import HOST, HarnessError

_HEAD_END = b"\r\n\r\n"


def _frames(buf: bytearray) -> list[tuple[bytes, dict | None]]:
    """Take the complete WebSocket frames off the front of ``buf``: ``(raw bytes, the
    msgpack map of a single-frame binary message, else None)``."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        size, pos = b1 & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                break
            size, pos = int.from_bytes(buf[2:4], "big"), 4
        elif size == 127:
            if len(buf) < 10:
                break
            size, pos = int.from_bytes(buf[2:10], "big"), 10
        mask = None
        if b1 & 0x80:
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + size:
            break
        payload = bytes(buf[pos:pos + size])
        raw = bytes(buf[:pos + size])
        del buf[:pos + size]
        if b0 & 0x70:
            raise HarnessError("the proxy cannot read compressed WebSocket frames")
        frame = None
        if b0 == 0x82:  # FIN + binary
            if mask is not None:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            with contextlib.suppress(ValueError, msgpack.UnpackException):
                frame = msgpack.unpackb(payload, raw=False)
        out.append((raw, frame if isinstance(frame, dict) else None))
    return out


class AnswerCutter:
    """The proxy (see the module docstring). Use as a context manager.

    Args:
        target_port: the node's port on 127.0.0.1.
        path: the node URL's path (``/`` usually).
    """

    def __init__(self, target_port: int, path: str = "/") -> None:
        self._target = (HOST, target_port)
        self._listener = socket.create_server((HOST, 0))
        self.url = f"ws://{HOST}:{self._listener.getsockname()[1]}{path}"
        self._armed: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self.fired = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def arm(self, request_type: str, mode: str) -> None:
        """Lose the answer to the next ``request_type`` request (``mode`` ``"cut"`` or
        ``"hold"``); :attr:`fired` is set once it happened."""
        if mode not in ("cut", "hold"):
            raise ValueError(mode)
        with self._lock:
            self._armed = (request_type, mode)
            self.fired.clear()

    def _take_arm(self, frame: dict) -> str | None:
        with self._lock:
            if self._armed is None or frame.get("t") != self._armed[0]:
                return None
            mode, self._armed = self._armed[1], None
            return mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            watch: dict[int, str] = {}  # request id -> mode, for this connection
            threading.Thread(target=self._upstream, args=(client, server, watch),
                             daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, watch),
                             daemon=True).start()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def _upstream(self, client: socket.socket, server: socket.socket,
                  watch: dict[int, str]) -> None:
        buf, head = bytearray(), True
        while data := self._recv(client):
            buf += data
            if head and _HEAD_END in buf:
                del buf[:buf.index(_HEAD_END) + len(_HEAD_END)]
                head = False
            if not head:  # watch the request before it leaves, so its answer is caught
                for _, frame in _frames(buf):
                    if frame is not None and (mode := self._take_arm(frame)):
                        watch[frame.get("id")] = mode
            try:
                server.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_WR)

    def _downstream(self, server: socket.socket, client: socket.socket,
                    watch: dict[int, str]) -> None:
        buf, head, holding = bytearray(), True, False
        while data := self._recv(server):
            if holding:
                continue  # read and dropped: the node never blocks on us
            buf += data
            if head:
                if _HEAD_END not in buf:
                    continue
                end = buf.index(_HEAD_END) + len(_HEAD_END)
                self._send(client, bytes(buf[:end]))
                del buf[:end]
                head = False
            for raw, frame in _frames(buf):
                mode = watch.pop(frame.get("id"), None) if frame is not None else None
                if mode == "cut":
                    self.fired.set()
                    for sock in (client, server):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "hold":
                    holding = True
                    self.fired.set()
                    break
                self._send(client, raw)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> AnswerCutter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
