"""``wa-cli`` devices driven as subprocesses (``--home DIR --json``), per DESIGN.md's CLI contract."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.forkserver import current

from .harness import Cluster
from .procs import HarnessError, subprocess_env, tool

CLI_TIMEOUT = 60.0  # seconds for one wa-cli invocation


@dataclass
class Device:
    """One ``wa-cli`` device: a ``--home`` directory and the commands of DESIGN.md."""

    home: Path
    name: str = ""
    user_id: str = ""
    device_id: int | None = None
    home_url: str = ""

    def run(self, *args: str, timeout: float = CLI_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``wa-cli --home HOME --json ARGS`` (forked by the session's fork server if
        it has one, else a fresh process); raise HarnessError on a non-zero exit if
        ``check``."""
        argv = [*tool("wa-cli"), "--home", str(self.home), "--json", *args]
        forks = current()  # the session's fork server (tests/forkserver.py), if any
        try:
            if forks is not None:
                run = forks.run(argv[len(tool("wa-cli")):], subprocess_env(), timeout)
            else:
                run = subprocess.run(
                    argv, capture_output=True, timeout=timeout, env=subprocess_env(),
                    check=False, stdin=subprocess.DEVNULL,
                )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{argv} did not finish within {timeout}s") from exc
        if check and run.returncode != 0:
            raise HarnessError(
                f"wa-cli {' '.join(args)} exited {run.returncode}\nstdout:\n"
                f"{run.stdout.decode(errors='replace')}\nstderr:\n{run.stderr.decode(errors='replace')}"
            )
        return run

    def json_lines(self, *args: str, timeout: float = CLI_TIMEOUT) -> list[dict]:
        """Run a command and parse its stdout as JSON lines (blank lines ignored)."""
        run = self.run(*args, timeout=timeout)
        out = []
        for line in run.stdout.decode("utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise HarnessError(f"wa-cli {' '.join(args)} printed non-JSON {line!r}") from exc
        return out

    def json_one(self, *args: str, timeout: float = CLI_TIMEOUT) -> dict:
        """Run a command that prints exactly one JSON object and return it."""
        lines = self.json_lines(*args, timeout=timeout)
        if len(lines) != 1:
            raise HarnessError(f"wa-cli {' '.join(args)} printed {len(lines)} JSON lines: {lines}")
        return lines[0]

    def init(self, name: str, relay_url: str) -> dict:
        """``init --name NAME --relay URL``; remembers user_id, device_id and home."""
        out = self.json_one("init", "--trust-on-first-use", "--name", name, "--relay", relay_url)
        self.name, self.user_id = name, out["user_id"]
        self.device_id, self.home_url = out["device_id"], out["home"]
        return out

    def ident(self) -> dict:
        """``id``: ``{user_id, device_id, fingerprint, home, name}``."""
        return self.json_one("id")

    def add_contact(self, name: str, user_id: str) -> None:
        """``contacts add NAME USER_ID``."""
        self.run("contacts", "add", name, user_id)

    def send(self, to: str, text: str) -> dict:
        """``send TO TEXT`` -> ``{id, status, to}`` (the result; any ``devices_changed``
        lines printed before it are skipped, see :meth:`send_lines`)."""
        *_, result = self.send_lines(to, text)
        return result

    def send_lines(self, to: str, text: str) -> list[dict]:
        """``send TO TEXT``: the ``devices_changed`` lines of the device-list changes the
        send ran into, then its result ``{id, status, to}``."""
        lines = self.json_lines("send", to, text)
        if not lines or any(line.get("type") != "devices_changed" for line in lines[:-1]):
            raise HarnessError(f"wa-cli send {to} printed {lines}")
        return lines

    def recv(self, timeout: float = 1.0) -> list[dict]:
        """``recv --timeout S``: everything queued for this device, printed and acked."""
        return self.json_lines("recv", "--timeout", str(timeout), timeout=CLI_TIMEOUT + timeout)

    def recv_until(self, count: int, deadline: float, timeout: float = 1.0) -> list[dict]:
        """Call :meth:`recv` until ``count`` messages arrived in total or ``deadline``
        (``time.monotonic()`` value) passed; returns everything received."""
        got: list[dict] = []
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.extend(self.recv(timeout=timeout))
            except HarnessError:
                # The home may still be coming back; the deadline bounds retries.
                if time.monotonic() >= deadline:
                    raise
        return got


    # -- multi-device (issue 3)

    def start_link(self, device_name: str, relay_url: str, timeout: float = 60.0) -> LinkProcess:
        """Start ``link --relay URL --name NAME --json`` in this (empty) home and wait for
        its first line ``{"code": ...}``; finish it with :meth:`LinkProcess.finish`."""
        return LinkProcess.start(self, device_name, relay_url, timeout)

    def approve(self, code: str, *args: str) -> dict:
        """``devices approve CODE --yes [ARGS]`` -> ``{device_id, name, fingerprint, version}``."""
        return self.json_one("devices", "approve", code, "--yes", *args)

    def devices(self) -> list[dict]:
        """``devices list``: one ``{device_id, name, fingerprint, added_at, last_seen,
        this_device}`` per device."""
        return self.json_lines("devices", "list")

    def remove_device(self, device_id: int) -> dict:
        """``devices remove ID --yes`` -> ``{removed, version}``."""
        return self.json_one("devices", "remove", str(device_id), "--yes")

    def history(self, *args: str) -> list[dict]:
        """``history [NAME] [--limit N]``: locally stored messages, ``recv --json`` shape."""
        return self.json_lines("history", *args)

    def verify(self, contact: str) -> dict:
        """``verify NAME`` -> ``{safety_number, user_id}``."""
        return self.json_one("verify", contact)

    def start_recv(self, *args: str, stdout: int | object = subprocess.PIPE) -> RecvProcess:
        """Start ``recv --json ARGS`` in the background (see :class:`RecvProcess`); with
        ``stdout`` another process's pipe end, its stdout goes there instead."""
        return RecvProcess.start(self, args, stdout)


class RecvProcess:
    """A running ``wa-cli --json recv``: its stdout lines are pumped into a queue by a
    thread (so the pipe is read as fast as it is written), its stderr collected."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue = queue.Queue()
        self._err: list[bytes] = []
        self._threads = [threading.Thread(target=self._pump_err, daemon=True)]
        if proc.stdout is not None:
            self._threads.append(threading.Thread(target=self._pump_out, daemon=True))
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls, device: Device, args: Iterable[str], stdout: int | object) -> RecvProcess:
        argv = [*tool("wa-cli"), "--home", str(device.home), "--json", "recv", *args]
        return cls(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=subprocess.PIPE, env=subprocess_env()))

    def _pump_out(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def _pump_err(self) -> None:
        for raw in self.proc.stderr:
            self._err.append(raw)

    def line(self, timeout: float = CLI_TIMEOUT) -> dict:
        """The next JSON line on stdout.

        Raises:
            HarnessError: none within ``timeout`` s, or stdout ended.
        """
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"wa-cli recv printed nothing within {timeout}s") from None
        if line is None:
            raise HarnessError(f"wa-cli recv ended its output: {self.stderr()}")
        return line

    def finish(self, timeout: float = CLI_TIMEOUT) -> tuple[int, list[dict], str]:
        """Wait for the exit: ``(exit code, the stdout lines not read yet, stderr)``."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise HarnessError(f"wa-cli recv did not exit within {timeout}s") from None
        for t in self._threads:
            t.join(timeout)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        rest = []
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None:
                rest.append(line)
        return code, rest, self.stderr()

    def stderr(self) -> str:
        """What the process wrote on stderr so far."""
        return b"".join(self._err).decode("utf-8", "replace")


@dataclass
class LinkProcess:
    """A running ``wa-cli link --json``; ``code`` is the linking code it printed first."""

    device: Device
    proc: subprocess.Popen
    lines: queue.Queue
    code: str = ""

    @classmethod
    def start(cls, device: Device, device_name: str, relay_url: str, timeout: float) -> LinkProcess:
        argv = [*tool("wa-cli"), "--home", str(device.home), "--json", "link", "--relay",
                relay_url, "--name", device_name, "--timeout", str(timeout)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=subprocess_env())
        lines: queue.Queue = queue.Queue()

        def pump() -> None:
            for raw in proc.stdout:
                lines.put(raw.decode("utf-8", "replace"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="wa-cli-link").start()
        link = cls(device, proc, lines)
        first = link._line(CLI_TIMEOUT)
        if first is None:
            raise HarnessError(f"wa-cli link printed no code: {link.finish_raw()}")
        link.code = json.loads(first)["code"]
        return link

    def _line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def finish_raw(self, timeout: float = CLI_TIMEOUT) -> tuple[int, list[str], str]:
        """Wait for the process: ``(exit code, remaining stdout lines, stderr)``."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise HarnessError(f"wa-cli link did not finish within {timeout}s") from None
        out = []
        while (line := self._line(CLI_TIMEOUT)) is not None:
            out.append(line)
        err = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, [line for line in out if line.strip()], err

    def finish(self, timeout: float = CLI_TIMEOUT) -> dict:
        """Wait for success; returns ``{user_id, device_id}`` and fills in the device."""
        code, out, err = self.finish_raw(timeout)
        if code != 0 or len(out) != 1:
            raise HarnessError(f"wa-cli link exited {code}\nstdout: {out}\nstderr: {err}")
        result = json.loads(out[0])
        self.device.user_id, self.device.device_id = result["user_id"], result["device_id"]
        self.device.home_url = self.device.ident()["home"]
        return result


def make_device(
    cluster: Cluster, root: Path, name: str, home_node: str | None = None,
    *, not_on: Iterable[str] = (), via: str | None = None, attempts: int = 60,
) -> Device:
    """Create an account ``name`` whose home is ``home_node`` (any node if ``None``)
    and none of ``not_on``.

    ``init`` runs in fresh ``--home`` directories ``root/devices/NAME-i`` until
    the home it reports fits (rendezvous hashing decides; with N nodes about N
    tries are needed for a given node). The reported home is cross-checked
    against :meth:`Cluster.home_of`. ``via`` is the node whose URL is given to
    ``--relay`` (default: the first running node that is not ``home_node``,
    so that the ``moved`` redirect is exercised too).

    Raises:
        HarnessError: no account landed on a fitting node within ``attempts``.
    """
    not_on = set(not_on)
    ids = list(cluster.nodes)
    if via is None:
        via = next((n for n in ids if n != home_node and cluster.nodes[n].running), ids[0])
    for i in range(attempts):
        dev = Device(home=root / "devices" / f"{name}-{i}")
        dev.home.parent.mkdir(parents=True, exist_ok=True)
        out = dev.init(name, cluster.url(via))
        landed = cluster.node_for_url(out["home"])
        by_ring = cluster.home_of(dev.user_id)
        if landed != by_ring:
            raise HarnessError(f"wa-cli says {name}'s home is {landed}, relay.config.ring says {by_ring}")
        if (home_node is None or landed == home_node) and landed not in not_on:
            return dev
    raise HarnessError(
        f"no account for {name} landed on {home_node or 'a node'} (not {sorted(not_on)}) "
        f"in {attempts} tries"
    )


def home_node(cluster: Cluster, device: Device) -> str:
    """The node id of ``device``'s home, from what its ``init`` reported."""
    return cluster.node_for_url(device.home_url)


def alice_and_bob(cluster: Cluster, root: Path) -> tuple[Device, Device]:
    """Accounts ``alice`` and ``bob`` (:func:`make_device`) on different homes, each
    in the other's contacts under those names."""
    alice = make_device(cluster, root, "alice")
    bob = make_device(cluster, root, "bob", not_on=[home_node(cluster, alice)])
    alice.add_contact("bob", bob.user_id)
    bob.add_contact("alice", alice.user_id)
    return alice, bob
