"""A fork server for ``wa-cli`` commands: ``python -m faults.zygote SOCKET``.

Starting ``wa-cli`` costs about 0.45 s of CPU before the command does anything
(Python imports ``cli.commands`` and everything under it); a fault round starts
20 to 30 commands, so on 2 cores the imports alone cost seconds per round. The
zygote imports the program once and forks a child per command: the child is a
real, separate process (its own pid, killed by the suite's signals like any
other, its stdout a pipe the suite reads and may close) that runs exactly what
the ``wa-cli`` script runs (:func:`cli.__main__.run` with the command's argv and
environment); only the imports are shared. ``python -m faults --launch exec``
starts every command as a fresh ``wa-cli`` process instead.

Protocol, one Unix-socket connection per command:

1. the suite sends one JSON line ``{"argv": [...], "env": {...}}`` (argv after the
   program name) with three descriptors attached (``SCM_RIGHTS``: the child's
   stdin, stdout, stderr);
2. the zygote answers ``{"pid": PID}\\n`` once the child runs, then
   ``{"code": CODE}\\n`` when it ended (the exit code, or minus the signal number
   as :mod:`subprocess` reports it) and closes the connection.

The zygote is single-threaded (it forks): one :mod:`selectors` loop over the
listening socket, the connections and the children's pidfds (Linux >= 5.3).
It exits when its stdin closes (the suite ended) or on SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import socket
import sys

MAX_HEADER = 1 << 20  # bytes of a request line


def _dump_tasks(signum: int, frame: object) -> None:
    """SIGUSR1 in a child: write its Trio task tree, each task with the frames it
    awaits in, to stderr (the suite sends it to a hung command before killing it)."""
    import trio

    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        root = None
    out = ["--- SIGUSR1: Trio tasks ---"]

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        pad = "  " * depth
        out.append(f"{pad}task {task.name}")
        out.extend(f"{pad}  {f.f_code.co_filename.rsplit('/', 2)[-1]}:{lineno} "
                   f"{f.f_code.co_name}" for f, lineno in task.iter_await_frames())
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    if root is None:
        out.append("(no Trio run)")
    else:
        walk(root, 0)
    sys.stderr.write("\n".join(out) + "\n")
    sys.stderr.flush()


def _child(argv: list[str], env: dict[str, str], fds: list[int]) -> None:
    """In the forked child: become ``wa-cli ARGV`` on the given stdio; never returns.
    SIGUSR1 writes its Trio task tree to stderr (:func:`_dump_tasks`)."""
    code = 1
    try:
        signal.signal(signal.SIGUSR1, _dump_tasks)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096)
        os.environ.clear()
        os.environ.update(env)
        random.seed()  # not the zygote's sequence
        sys.argv = ["wa-cli", *argv]
        from cli.__main__ import run
        try:
            run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                sys.stderr.write(f"{exc.code}\n")
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001  (the child's last resort, like the interpreter's)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The request line and its descriptors (all of them arrive with its first byte)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, MAX_HEADER, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(MAX_HEADER)
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return json.loads(data), list(fds)


def serve(path: str) -> None:
    """Listen on ``path`` and fork a ``wa-cli`` child per request until stdin closes."""
    import cli.__main__  # noqa: F401  (the point: import once, before any fork)
    import cli.commands  # noqa: F401

    # cli.__main__ holds SIGINT/SIGTERM from its first line (for wa-cli's own start-up);
    # the server itself must stay stoppable, and each child's run() holds them again
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("accept", None))
    sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
    print("ready", flush=True)
    running = True
    while running:
        for key, _mask in sel.select():
            what, conn = key.data
            if what == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    running = False
            elif what == "accept":
                new, _ = listener.accept()
                try:
                    request, fds = _read_request(new)
                except (OSError, ValueError, ConnectionError):
                    new.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(request["argv"], request["env"], fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                sel.register(pidfd, selectors.EVENT_READ, ("exit", (pid, new)))
                _answer(new, {"pid": pid})
            elif what == "exit":
                pid, new = conn
                sel.unregister(key.fileobj)
                os.close(key.fileobj)
                _, status = os.waitpid(pid, 0)
                _answer(new, {"code": os.waitstatus_to_exitcode(status)})
                new.close()
    listener.close()


def _answer(conn: socket.socket, obj: dict) -> None:
    try:
        conn.sendall(json.dumps(obj).encode() + b"\n")
    except OSError:
        pass  # the suite gave up on this command; the child is reaped all the same


if __name__ == "__main__":
    serve(sys.argv[1])
