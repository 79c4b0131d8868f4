"""One fault run: set up real nodes behind proxies and three accounts, then rounds of
(fault + traffic, heal, drain), then the report.

Everything random comes from the seed: the round schedule (every enabled kind
once per block of rounds, in a seeded order), each kind's choices, and the
traffic plan. Timing still varies from run to run (real processes), so a
seed reproduces the faults and the traffic, not every interleaving.
"""

from __future__ import annotations

import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from .clients import run_cli
from .kinds import KINDS
from .launch import Zygote
from .ledger import Ledger
from .nodes import NodeError, NodeSet
from .proxy import Network, open_listener, serve_proxy
from .report import Report, build_report
from .setup import setup_world
from .workload import drain, heal, run_workload
from .world import Round, World

DEFAULT_KINDS = tuple(KINDS)
EXEC_SPAWN_S = 0.45  # seconds of imports before an exec'd wa-cli works (2 idle cores)


@dataclass
class Config:
    """Options of a run (``python -m faults --help`` describes them)."""

    seed: int = 1
    rounds: int = 15
    kinds: tuple[str, ...] = DEFAULT_KINDS
    nodes: int = 3
    sends: int = 3
    linked: int = 1
    deadline: float = 45.0
    cli_timeout: float = 30.0
    dead_ttl: float = 60.0
    keepalive: float | None = 4.0  # nodes' and wa-cli's keepalive interval and timeout, s
    launch: str = "fork"  # "fork": wa-cli commands forked by faults.zygote; "exec": the script
    plain: bool = False  # nodes on plain ws:// (loopback) instead of wss://
    max_seconds: float | None = None  # start no round after this many seconds of the run
    workdir: Path | None = None
    quiet: bool = False


def schedule(seed: int, rounds: int, kinds: list[str]) -> list[str]:
    """The kind of every round: blocks of every kind once, each block in a seeded order."""
    rng = random.Random(f"{seed}/schedule")
    out: list[str] = []
    while len(out) < rounds:
        block = list(kinds)
        rng.shuffle(block)
        out += block
    return out[:rounds]


async def unavailable(kinds: tuple[str, ...]) -> dict[str, str]:
    """Kinds whose ``wa-cli`` commands do not exist: ``{kind: why}``."""
    out: dict[str, str] = {}
    checked: dict[str, bool] = {}
    for name in kinds:
        for command in KINDS[name].requires:
            if command not in checked:
                probe = await run_cli(Path(tempfile.gettempdir()), (command, "--help"),
                                      hang_after=30.0)
                checked[command] = probe.code == 0
            if not checked[command]:
                out[name] = f"wa-cli has no '{command}' command"
    return out


def _say(cfg: Config, text: str) -> None:
    if not cfg.quiet:
        print(text, file=sys.stderr, flush=True)


async def run_round(world: World, cfg: Config, index: int, kind: str) -> dict:
    """One round: the kind's fault with the regular traffic, heal, drain. Returns the
    round's record for the report."""
    r = Round(index, kind, world, random.Random(f"{cfg.seed}/{index}/{kind}"),
              random.Random(f"{cfg.seed}/{index}/load"),
              {a: list(labels) for a, labels in world.accounts.items()})
    ledger = world.ledger
    sends_before = len(ledger.sends)
    started = time.monotonic()
    world.trace(f"round {index} {kind}")
    async with trio.open_nursery() as nursery:
        await nursery.start(KINDS[kind].fn, r)
        nursery.start_soon(run_workload, r, cfg.sends)
    fault_s = time.monotonic() - started
    for device in r.joined:  # before the heal: its checks must know them
        world.accounts[device.account].append(device.label)
    world.trace(f"round {index}: heal {r.notes}")
    restarted = await heal(r)
    drain_started = time.monotonic()
    world.trace(f"round {index}: drain")
    before = sum(len(m) for m in ledger.missing_at_deadline.values())
    await drain(r, cfg.deadline)
    sends = list(ledger.sends.values())[sends_before:]
    missing = {d.label: len(ledger.missing(d.label)) for d in world.active()}
    new = sum(len(m) for m in ledger.missing_at_deadline.values()) - before
    record = {
        "round": index, "kind": kind, "notes": r.notes,
        "sends": len(sends), "acked": sum(s.acked for s in sends),
        "restarted_at_heal": restarted, "missing_after_drain": {k: v for k, v in missing.items() if v},
        "new_missing": new,
        "fault_s": round(fault_s, 2), "drain_s": round(time.monotonic() - drain_started, 2),
    }
    _say(cfg, f"round {index}/{cfg.rounds} {kind}: {record['sends']} sends, "
              f"{record['acked']} acknowledged; fault {fault_s:.1f} s, drain "
              f"{record['drain_s']:.1f} s; missing {sum(missing.values())} ({new} new)")
    return record


async def diagnose(world: World) -> dict[str, list[str]]:
    """For every device that lost messages: which of them its ``history`` holds
    (received and acknowledged by the client, never shown)."""
    out: dict[str, list[str]] = {}
    for label, st in world.ledger.stats().items():
        if not st.lost_ids or label not in world.devices:
            continue
        hist = await world.devices[label].run("history", "--limit", "100000")
        in_history = {line.get("id") for line in hist.lines}
        out[label] = [m for m in st.lost_ids if m in in_history]
    return out


async def run_suite(cfg: Config) -> Report:
    """Run ``cfg.rounds`` rounds and return the report (see :mod:`faults.report`).

    The work directory (a temporary one unless ``cfg.workdir``) holds every
    node's data and logs and every device home; a temporary one is removed
    when the run passed, and kept (its path is in the report) when it did not.
    """
    own_dir = cfg.workdir is None
    root = Path(tempfile.mkdtemp(prefix="wa-faults-")) if own_dir else cfg.workdir
    root.mkdir(parents=True, exist_ok=True)
    network = Network(dead_ttl=cfg.dead_ttl)
    nodes = NodeSet(root, cfg.nodes, network, keepalive=cfg.keepalive, plain=cfg.plain)
    cli_env = ({} if cfg.keepalive is None else
               {"WA_KEEPALIVE": f"{cfg.keepalive:g}", "WA_KEEPALIVE_TIMEOUT": f"{cfg.keepalive:g}"})
    world = World(root, nodes, network, Ledger(), cli_timeout=cfg.cli_timeout,
                  deadline=cfg.deadline, cli_env=cli_env)
    nodes.trace = network.trace = world.trace
    missing_kinds = await unavailable(cfg.kinds)
    kinds = [k for k in cfg.kinds if k not in missing_kinds]
    plan = schedule(cfg.seed, cfg.rounds, kinds) if kinds else []
    records: list[dict] = []
    aborted = None
    in_history: dict[str, list[str]] = {}
    started = time.monotonic()
    finished = False

    async def stop_on_sigterm(scope: trio.CancelScope) -> None:
        """SIGTERM ends the run like a failed node: nodes and fork server stopped, the
        report of the rounds so far printed, no node process left behind."""
        nonlocal aborted
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                aborted = "stopped by SIGTERM"
                scope.cancel()
                return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_sigterm, nursery.cancel_scope)
            await nodes.init()
            if cfg.launch == "fork":
                world.launcher = Zygote()
                await world.launcher.start()
            else:
                world.spawn_s = EXEC_SPAWN_S
            listeners = {node_id: await open_listener() for node_id in nodes.nodes}
            nodes.point_at_proxies({n: lis.socket.getsockname()[1] for n, lis in listeners.items()})
            try:
                # Nodes start while the proxies only listen: a node's first peer link
                # attempts wait in the kernel's accept queue until every node is up,
                # instead of being accepted and reset by a proxy of a node not yet there.
                await nodes.start_all()
                for node_id, listener in listeners.items():
                    await nursery.start(serve_proxy, network, node_id, listener,
                                        nodes.nodes[node_id].port)
                await setup_world(world, random.Random(f"{cfg.seed}/setup"), cfg.linked)
                _say(cfg, f"set up in {time.monotonic() - started:.1f} s: "
                          f"{', '.join(d.label for d in world.active())} on "
                          f"{', '.join(f'{a}@{world.home_node(a)}' for a in world.accounts)}")
                for index, kind in enumerate(plan, 1):
                    if cfg.max_seconds is not None and \
                            time.monotonic() - started > cfg.max_seconds:
                        _say(cfg, f"stopping after {index - 1} rounds: --max-seconds "
                                  f"{cfg.max_seconds:g} passed")
                        break
                    records.append(await run_round(world, cfg, index, kind))
                in_history = await diagnose(world)
            except NodeError as exc:
                aborted = f"a node failed: {exc}"
            finally:
                with trio.CancelScope(shield=True):
                    await nodes.close()
                    if world.launcher is not None:
                        await world.launcher.close()
                nursery.cancel_scope.cancel()
        finished = True
    finally:
        if not finished:
            _say(cfg, f"the run failed; its work directory is kept: {root}")
    report = build_report(world, cfg, plan, records, missing_kinds, in_history, aborted,
                          time.monotonic() - started, root)
    if own_dir and report.passed:
        shutil.rmtree(root, ignore_errors=True)
        report.data["workdir"] = None
    return report
