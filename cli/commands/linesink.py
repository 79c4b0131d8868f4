"""Writing output lines that count as shown only once their reader took them.

``wa-cli recv`` marks a message shown after its line was written, flushed *and*
taken (:mod:`cli.inbox`). What "taken" means depends on where the stream goes:

* a terminal, a file, ``/dev/null``, a stream without a file descriptor (tests):
  written and flushed;
* a pipe or a socket: the reader has read it, i.e. the kernel holds no unread byte
  of the stream any more (``FIONREAD`` on the write end of a pipe, ``TIOCOUTQ`` on a
  socket). Only one line is left for the reader at a time, so a reader that stops
  after N lines (``wa-cli recv | head -n 5``) has taken exactly N: the next line
  stays unread and is not counted as shown.

A pipe has no "wait until empty" in the kernel, so :meth:`LineSink.taken` polls:
after 0.5 ms at first, backing off to 50 ms. A reader that closes the stream makes
the write, or the wait, raise :class:`ReaderGone`.

Writes are plain blocking writes on the calling thread (one line each, like
``click.echo``).
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import struct
import sys
import termios
import time
from collections.abc import Iterator
from typing import TextIO

import trio

__all__ = ["POLL_FIRST", "POLL_MAX", "LineSink", "ReaderGone", "drop_stdout"]

POLL_FIRST = 0.0005  # seconds: first wait for a pipe's reader
POLL_MAX = 0.05  # seconds: the longest wait between two looks at a pipe


def drop_stdout() -> None:
    """stdout's reader closed it: point file descriptor 1 at /dev/null, so what Python
    still buffers for it goes nowhere (no error at exit)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests): nothing buffered to drop
        pass
    finally:
        os.close(devnull)


class ReaderGone(Exception):
    """The reader of the stream closed it (EPIPE): what it had not taken was not shown."""


def _probe(stream: TextIO) -> tuple[int, int] | None:
    """``(fd, ioctl request)`` to count a stream's unread bytes, if it is a pipe or socket."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
    if stat.S_ISFIFO(mode):
        return fd, termios.FIONREAD
    if stat.S_ISSOCK(mode):
        return fd, termios.TIOCOUTQ
    return None


class LineSink:
    """One output stream of a command, written a line at a time (see the module docstring).

    Args:
        stream: the text stream (``sys.stdout``, ``sys.stderr``), looked at once now.
        watch: wait for a pipe's or socket's reader (``False``: taken when written, for
            a diagnostic stream that a parent may read only at the end).
    """

    def __init__(self, stream: TextIO, *, watch: bool = True) -> None:
        self._stream = stream
        self._probe = _probe(stream) if watch else None

    @property
    def watched(self) -> bool:
        """Whether the stream is a pipe or socket whose reader is waited for."""
        return self._probe is not None

    def write(self, line: str) -> None:
        """Write ``line`` and a newline, and flush.

        Raises:
            ReaderGone: the reader closed the stream (nothing of the line was taken).
            OSError: another write error.
        """
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except BrokenPipeError as exc:
            raise ReaderGone("the reader closed the output stream") from exc

    def unread(self) -> int:
        """Bytes written that the reader has not read yet (0 unless :attr:`watched`).

        Raises:
            OSError: the ioctl failed.
        """
        if self._probe is None:
            return 0
        fd, request = self._probe
        return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]

    def _reader_closed(self) -> bool:
        fd, _ = self._probe  # type: ignore[misc]
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))

    def _polls(self) -> Iterator[float]:
        """The waits (seconds) between looks while the reader has bytes unread; ends
        once it has none.

        Raises:
            ReaderGone: the reader closed the stream with bytes unread.
        """
        delay = POLL_FIRST
        while self.unread():
            if self._reader_closed():
                raise ReaderGone("the reader closed the output stream before reading it all")
            yield delay
            delay = min(delay * 2, POLL_MAX)

    async def taken(self) -> None:
        """Return once the reader has taken everything written (at once unless
        :attr:`watched`).

        Raises:
            ReaderGone: the reader closed the stream with bytes unread.
        """
        for delay in self._polls():
            await trio.sleep(delay)

    def wait_taken(self) -> None:
        """:meth:`taken` for a blocking caller (``wa-cli recv`` through the daemon, which
        has no event loop): the same polls, slept on the calling thread.

        Raises:
            ReaderGone: the reader closed the stream with bytes unread.
        """
        for delay in self._polls():
            time.sleep(delay)
