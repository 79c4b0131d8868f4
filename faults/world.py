"""The world of a fault run: nodes, proxies, accounts and their devices, and one
:class:`Round` at a time with the operations every part of the suite uses
(send and receive through the ledger, link, heal)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .clients import CLI_TIMEOUT, CliResult, Device, Interrupt
from .launch import Zygote
from .ledger import DURING, Ledger, message_text
from .nodes import NodeSet
from .proxy import Network

PRIMARY = 0
GROUP = "fz"  # the group every account is in from the start


@dataclass
class World:
    """Everything a run owns.

    Attributes:
        root: the work directory (``devices/``, ``files/``, ``data/``, ``logs/``).
        devices: every device ever made, by label (``a0`` is alice's primary).
        accounts: account name -> labels of its active devices, primary first.
        groups: group name -> member account names.
        counters: run-wide events (hung commands, ghost devices, ...).
        cli_env: environment added to every ``wa-cli`` command (keepalive settings).
    """

    root: Path
    nodes: NodeSet
    network: Network
    ledger: Ledger
    cli_timeout: float = CLI_TIMEOUT
    deadline: float = 45.0  # seconds after a heal for a message to be shown
    cli_env: dict[str, str] = field(default_factory=dict)  # every device's extra environment
    launcher: Zygote | None = None  # the wa-cli fork server, if commands are forked
    spawn_s: float = 0.0  # seconds a command spends starting before it works (exec: imports)
    devices: dict[str, Device] = field(default_factory=dict)
    accounts: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def trace(self, text: str) -> None:
        """Append a timestamped line to ``root/trace.log`` (what happened when)."""
        with (self.root / "trace.log").open("a", encoding="utf-8") as f:
            f.write(f"{time.monotonic() - self.started:9.2f} {text}\n")

    def add_device(self, device: Device) -> Device:
        """Register ``device`` under its label (its commands are traced)."""
        device.trace = self.trace
        device.env = self.cli_env
        device.launcher = self.launcher
        self.devices[device.label] = device
        return device

    def primary(self, account: str) -> Device:
        """The primary device of ``account``."""
        return self.devices[self.accounts[account][0]]

    def active(self) -> list[Device]:
        """Every device that is currently part of an account."""
        return [self.devices[label] for labels in self.accounts.values() for label in labels]

    def home_node(self, account: str) -> str:
        """The node id of ``account``'s home (by the URL its primary reported)."""
        return self.nodes.node_of_url(self.primary(account).home_url)

    def next_label(self, account: str) -> str:
        """A fresh device label for ``account`` (``a1``, ``a2``, ...)."""
        used = [d for d in self.devices.values() if d.account == account]
        return f"{account[0]}{len(used)}"

    def new_home(self, label: str) -> Path:
        """An empty ``--home`` directory for a device labelled ``label``."""
        home = self.root / "devices" / label
        home.mkdir(parents=True, exist_ok=False)
        return home


@dataclass
class Round:
    """One round: a fault kind, its random choices, the devices it drives itself.

    Attributes:
        rng: the fault's random choices (seeded by run seed, round and kind).
        load_rng: the workload's random choices.
        roster: account -> active device labels when the round began (receivers).
        reserved: labels of devices the fault kind drives itself this round.
        notes: what the kind chose and saw (written to the JSON report).
        on_heal: coroutines run by the heal after the round (undo a kind's setup).
        joined: devices linked this round (they take part from the next round).
    """

    index: int
    kind: str
    world: World
    rng: random.Random
    load_rng: random.Random
    roster: dict[str, list[str]]
    reserved: set[str] = field(default_factory=set)
    notes: dict = field(default_factory=dict)
    on_heal: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    joined: list[Device] = field(default_factory=list)

    def receivers(self, sender: Device, to_accounts: list[str]) -> frozenset[str]:
        """Devices that must show a message from ``sender`` to ``to_accounts``."""
        out = set(self.roster.get(sender.account, []))
        for account in to_accounts:
            out |= set(self.roster.get(account, []))
        out.discard(sender.label)
        return frozenset(out)

    def count(self, event: str, n: int = 1) -> None:
        """Add to a run-wide counter and to this round's notes."""
        self.world.counters[event] += n
        self.notes.setdefault("events", Counter())[event] += n

    async def send(self, sender: Device, *, to: str | None = None, group: str | None = None,
                   file: Path | None = None, interrupt: Interrupt | None = None,
                   pad: int = 0) -> CliResult:
        """``wa-cli send`` one suite message to account ``to`` or ``group`` (optionally
        a file with the message text as caption; ``pad`` filler characters make the
        text longer), recorded in the ledger."""
        targets = self.world.groups[group] if group is not None else [to]
        sent = self.world.ledger.next_send(sender.label, self.index, self.kind,
                                           self.receivers(sender, targets))
        text = message_text(sender.label, sent.seq, pad)
        args = ["send"]
        if group is not None:
            args += ["--group", group]
        else:
            args.append(to)
        if file is not None:
            args += ["--file", str(file)]
        args.append(text)
        result = await sender.run(*args, hang_after=self.world.cli_timeout, interrupt=interrupt)
        self.world.ledger.answered(sent, result.last() if result.ok else None)
        if not result.ok:
            why = "hung" if result.hung else ("interrupted" if result.interrupted
                                              else result.error())
            if "relay refused" in why:
                sent.refusal = why
            self.world.errors[f"send: {_generic(why)}"] += 1
        self.count("hung commands", result.hung)
        return result

    async def recv(self, device: Device, *, phase: str = DURING, follow: bool = False,
                   idle: float = 0.5, interrupt: Interrupt | None = None,
                   hang_after: float | None = None,
                   watch: Callable[[dict], None] | None = None) -> CliResult:
        """``wa-cli recv`` on ``device``; every message line goes to the ledger (and
        to ``watch``) as it is printed."""
        args = ["recv", "--follow"] if follow else ["recv", "--timeout", str(idle)]

        def shown(line: dict) -> None:
            if line.get("type") == "bounce":
                self.count("bounced", 1)
                self.count("bounce resend failed", self.world.ledger.record_bounce(line))
                return
            odd = self.world.ledger.record_shown(device.label, line, self.index, phase)
            if odd is not None:
                self.world.trace(f"{odd} (round {self.index}, {phase}, recv)")
            if watch is not None:
                watch(line)

        result = await device.run(*args, hang_after=hang_after or self.world.cli_timeout,
                                  interrupt=interrupt, on_line=shown)
        if not result.ok and not result.interrupted:
            self.world.errors[f"recv: {_generic('hung' if result.hung else result.error())}"] += 1
        self.count("hung commands", result.hung and not follow)
        return result

    async def pause(self, low: float, high: float) -> None:
        """Sleep a random time in ``[low, high]`` seconds (drawn from :attr:`rng`)."""
        await trio.sleep(self.rng.uniform(low, high))


def _generic(message: str) -> str:
    """An error message with ids and numbers blanked, so that counts group them."""
    message = re.sub(r"\b[0-9a-f]{16,}\b|\b[a-z2-7]{40,}\b", "<id>", message)
    return re.sub(r"\d+(\.\d+)?", "N", message)[:160]
