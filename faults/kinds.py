"""The fault kinds: one small async function each, registered in :data:`KINDS`.

A kind is called as ``await nursery.start(fn, round)`` before the round's
regular traffic starts. Before ``task_status.started()`` it makes its random
choices (from ``r.rng``), reserves the devices it drives itself and prepares
what it needs; after it, it injects its fault while the traffic runs, and
undoes it (or leaves that to ``r.on_heal`` and the heal after the round).

``known`` names the issue item whose fix the kind waits for: such kinds are
expected to find lost or duplicated messages until that fix lands (see
docs/reliability.md); every other kind is expected to pass.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from .clients import Device, Interrupt
from .ledger import AFTER
from .proxy import CLIENT, DEAD, RESET, SILENT
from .setup import find_ghosts, link_device, remove_device
from .world import Round

KindFn = Callable[..., Awaitable[None]]
MAX_LINKED = 2  # companion devices per account before a link round removes the oldest


@dataclass(frozen=True)
class Kind:
    """A registered fault kind (see the module docstring)."""

    name: str
    fn: KindFn
    doc: str
    known: str | None = None
    requires: tuple[str, ...] = ()  # wa-cli commands it needs (else "unavailable")


KINDS: dict[str, Kind] = {}


def kind(name: str, *, known: str | None = None, requires: tuple[str, ...] = ()):
    """Register the decorated function as fault kind ``name``."""
    def register(fn: KindFn) -> KindFn:
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        KINDS[name] = Kind(name, fn, doc, known, requires)
        return fn
    return register


# -- helpers


def _after(r: Round, low: float, high: float) -> float:
    """Seconds after a command's start to interrupt it: a random moment of its work,
    ``[low, high]`` s in, plus what starting the process costs (``world.spawn_s``:
    about 0 for forked commands, the imports for exec'd ones)."""
    return r.world.spawn_s + r.rng.uniform(low, high)


def _node_ids(r: Round) -> list[str]:
    return sorted(r.world.nodes.nodes)


def _pick_account(r: Round) -> str:
    return r.rng.choice(sorted(r.roster))


def _pick_primary(r: Round) -> Device:
    device = r.world.devices[r.roster[_pick_account(r)][0]]
    r.reserved.add(device.label)
    return device


async def _cut_for_a_while(r: Round, pairs: set[tuple[str, str]], mode: str) -> None:
    await r.pause(0.2, 1.5)
    r.world.network.cut(pairs, mode)
    await r.pause(1.0, 3.0)
    r.world.network.heal()


async def _strike(r: Round, variant: str, node_id: str) -> None:
    """A short fault at a random moment: cut the clients of ``node_id`` (``reset``)
    or SIGKILL it (``node_kill``), then heal."""
    await trio.sleep(_after(r, 0.0, 0.6))
    if variant == "client_reset":
        r.world.network.cut({(CLIENT, node_id)}, RESET)
        await r.pause(0.5, 2.0)
        r.world.network.heal()
    elif variant == "node_kill":
        await r.world.nodes.kill(node_id)
        await r.pause(0.5, 2.0)
        await r.world.nodes.start(node_id)


# -- nodes


@kind("node_kill")
async def node_kill(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGKILL a node in the middle of the traffic; restart it after a pause."""
    node_id = r.notes["node"] = r.rng.choice(_node_ids(r))
    task_status.started()
    await r.pause(0.2, 1.5)
    await r.world.nodes.kill(node_id)
    await r.pause(0.3, 2.0)
    await r.world.nodes.start(node_id)


def _peer_pairs(r: Round) -> set[tuple[str, str]]:
    ids = _node_ids(r)
    if r.rng.random() < 0.5:
        a, b = r.rng.sample(ids, 2)
        r.notes["cut"] = f"{a} | {b}"
        return {(a, b), (b, a)}
    a = r.rng.choice(ids)
    r.notes["cut"] = f"{a} | other nodes"
    return {(a, x) for x in ids if x != a} | {(x, a) for x in ids if x != a}


async def _peer_cut(r: Round, mode: str, task_status) -> None:  # noqa: ANN001
    pairs = _peer_pairs(r)
    task_status.started()
    await _cut_for_a_while(r, pairs, mode)


@kind("peer_reset")
async def peer_reset(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Node-to-node partition: links between two nodes (or one node and all) reset."""
    await _peer_cut(r, RESET, task_status)


@kind("peer_silent")
async def peer_silent(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Node-to-node partition: links stop forwarding, and resume at the heal."""
    await _peer_cut(r, SILENT, task_status)


@kind("peer_dead")
async def peer_dead(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Node-to-node links go dark for good (NAT timeout); new links pass after the heal."""
    await _peer_cut(r, DEAD, task_status)


@kind("disk_full")
async def disk_full(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A home node restarted with an LMDB map a few KiB above its data file, then a
    burst of long messages to it that nobody receives until the heal."""
    account = _pick_account(r)
    node_id = r.world.home_node(account)
    headroom = r.rng.choice([16, 32, 64, 128]) * 1024
    nodes = r.world.nodes
    r.reserved.update(r.roster[account])  # its devices do not drain the queues meanwhile
    sender = _pick_other_primary(r, account)
    pads = [r.rng.randint(4000, 16000) for _ in range(12)]
    await nodes.stop(node_id)
    used = nodes.used_bytes(node_id)
    nodes.set_map_size(node_id, used + headroom)
    await nodes.start(node_id)
    r.notes.update(node=node_id, map_size=used + headroom, used=used)

    async def undo() -> None:
        await nodes.stop(node_id)
        r.notes["used_after"] = nodes.used_bytes(node_id)
        nodes.set_map_size(node_id, None)
        await nodes.start(node_id)

    r.on_heal.append(undo)
    task_status.started()
    for pad in pads:
        await r.send(sender, to=account, pad=pad)


def _pick_other_primary(r: Round, account: str) -> Device:
    others = [a for a in sorted(r.roster) if a != account and r.roster[a][0] not in r.reserved]
    device = r.world.devices[r.roster[r.rng.choice(others)][0]]
    r.reserved.add(device.label)
    return device


async def _random_file(r: Round, name: str, low_kib: int, high_kib: int) -> Path:
    path = trio.Path(r.world.root / "files" / name)
    size = r.rng.randint(low_kib, high_kib) * 1024
    await path.parent.mkdir(parents=True, exist_ok=True)
    await path.write_bytes(r.rng.randbytes(size))
    return Path(path)


# -- client links


async def _client_cut(r: Round, mode: str, task_status) -> None:  # noqa: ANN001
    """Cut the clients of one account's home while a device of it runs ``recv
    --follow`` (connected: a first message reached it); after the heal a probe
    message must reach that follower within the run's deadline (45 s: a
    keepalive of ~20 s answered within ~10 s, then a reconnection), else
    ``follow stuck after heal`` is counted (``follow exited`` if it ended)."""
    account = _pick_account(r)
    node_id = r.notes["node"] = r.world.home_node(account)
    follower = r.world.devices[r.rng.choice(r.roster[account])]
    r.reserved.add(follower.label)
    prober = _pick_other_primary(r, account)
    r.notes.update(follower=follower.label, prober=prober.label)
    task_status.started()
    waiting: dict[str, trio.Event] = {}
    stop, ended = trio.Event(), trio.Event()

    def watch(line: dict) -> None:
        if line.get("id") in waiting:
            waiting[line["id"]].set()

    async def follow() -> None:
        await r.recv(follower, follow=True, watch=watch, hang_after=120.0,
                     interrupt=Interrupt(signal.SIGINT, 0.0, when=stop))
        ended.set()

    async def probe(name: str) -> bool | None:
        """Send one message to the account; True once the follower showed it,
        False if not within the deadline, None if the send was not acknowledged."""
        result = await r.send(prober, to=account)
        msg_id = (result.last() or {}).get("id") if result.ok else None
        if msg_id is None:
            return None
        seen = waiting.setdefault(msg_id, trio.Event())
        if any(s.msg_id == msg_id for s in r.world.ledger.shown[follower.label]):
            seen.set()  # shown before we started waiting
        with trio.move_on_after(r.world.deadline):
            await seen.wait()
        r.notes[name] = "shown" if seen.is_set() else "not shown"
        return seen.is_set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await probe("warm_up")  # the follower is connected once this shows
        await _cut_for_a_while(r, {(CLIENT, node_id)}, mode)
        if await probe("probe") is False:
            r.count("follow exited" if ended.is_set() else "follow stuck after heal")
        stop.set()


@kind("client_reset")
async def client_reset(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Client-to-node partition: every wa-cli connection to one home node reset."""
    await _client_cut(r, RESET, task_status)


@kind("client_silent")
async def client_silent(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Client-to-node partition: connections to one home stop forwarding, resume at the heal."""
    await _client_cut(r, SILENT, task_status)


@kind("client_dead")
async def client_dead(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Client links to one home go dark for good (dead Wi-Fi); new ones pass after the heal."""
    await _client_cut(r, DEAD, task_status)


# -- client processes


async def _recv_interrupted(r: Round, interrupt: Interrupt, follow: bool, task_status) -> None:  # noqa: ANN001
    """A backlog for one device (texts, often a file among them, which makes the
    receiver's batch slow), then its ``recv`` interrupted as given."""
    victim = r.world.devices[r.rng.choice(sorted(label for labels in r.roster.values()
                                                 for label in labels))]
    r.reserved.add(victim.label)
    sender = _pick_other_primary(r, victim.account)
    texts = r.rng.randint(2, 6)
    file = (await _random_file(r, f"r{r.index}.bin", 64, 512)) if r.rng.random() < 0.5 else None
    r.notes.update(device=victim.label, interrupt=interrupt.describe(), follow=follow,
                   backlog=texts + 2 + (file is not None), file=file is not None)
    task_status.started()
    for _ in range(texts):
        await r.send(sender, to=victim.account)
    if file is not None:
        await r.send(sender, to=victim.account, file=file)
    for _ in range(2):
        await r.send(sender, to=victim.account)
    await r.recv(victim, follow=follow, idle=2.0, interrupt=interrupt,
                 hang_after=interrupt.after + 20.0)


@kind("recv_kill")
async def recv_kill(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGKILL of ``wa-cli recv`` (or ``recv --follow``) while messages arrive."""
    sig = Interrupt(signal.SIGKILL, _after(r, 0.0, 1.2))
    await _recv_interrupted(r, sig, r.rng.random() < 0.5, task_status)


@kind("recv_int")
async def recv_int(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGINT (Ctrl-C) of ``wa-cli recv`` (or ``recv --follow``) while messages arrive."""
    sig = Interrupt(signal.SIGINT, _after(r, 0.0, 1.2))
    await _recv_interrupted(r, sig, r.rng.random() < 0.5, task_status)


@kind("recv_pipe")
async def recv_pipe(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """``wa-cli recv | head -n K``: its stdout closed after K lines."""
    await _recv_interrupted(r, Interrupt(close_after_lines=r.rng.randint(1, 4), after=3.0),
                            False, task_status)


@kind("send_kill")
async def send_kill(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGKILL or SIGINT of ``wa-cli send`` at a random moment, three times."""
    sender = _pick_primary(r)
    plan = [(r.rng.choice([signal.SIGKILL, signal.SIGINT]), _after(r, 0.0, 0.3),
             r.rng.choice([a for a in sorted(r.roster) if a != sender.account]))
            for _ in range(3)]
    r.notes["sender"] = sender.label
    task_status.started()
    for sig, after, to in plan:
        await r.send(sender, to=to, interrupt=Interrupt(sig, after))


# -- features under faults


def _variant(r: Round) -> str:
    variant = r.notes["variant"] = r.rng.choice(["client_reset", "node_kill", "sigkill"])
    return variant


@kind("group_cut")
async def group_cut(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A fault in the middle of ``group create`` and ``send --group``."""
    creator = _pick_primary(r)
    others = [a for a in sorted(r.roster) if a != creator.account]
    members = r.rng.sample(others, r.rng.randint(1, len(others)))
    name = f"g{r.index}"
    variant = _variant(r)
    victim = r.rng.randrange(4)  # sigkill: which command (0 = create)
    after = _after(r, 0.0, 0.25)
    r.world.groups[name] = [creator.account, *members]
    r.notes.update(creator=creator.label, group=name, members=members)
    task_status.started()
    async with trio.open_nursery() as nursery:
        if variant != "sigkill":
            nursery.start_soon(_strike, r, variant, r.world.home_node(creator.account))
        kill = Interrupt(signal.SIGKILL, after) if variant == "sigkill" else None
        created = await creator.run("group", "create", name, *members,
                                    hang_after=r.world.cli_timeout,
                                    interrupt=kill if victim == 0 else None)
        r.notes["create"] = "ok" if created.ok else created.error() or f"exit {created.code}"
        for i in range(1, 4):
            await r.send(creator, group=name, interrupt=kill if victim == i else None)


@kind("media_cut")
async def media_cut(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A fault in the middle of ``send --file`` uploads (and the receivers' downloads)."""
    sender = _pick_primary(r)
    to = r.rng.choice([a for a in sorted(r.roster) if a != sender.account])
    variant = _variant(r)
    files = [await _random_file(r, f"r{r.index}-{i}.bin", 32, 400) for i in range(2)]
    kill = Interrupt(signal.SIGKILL, _after(r, 0.0, 0.5))
    r.notes.update(sender=sender.label, to=to)
    task_status.started()
    async with trio.open_nursery() as nursery:
        if variant != "sigkill":
            nursery.start_soon(_strike, r, variant, r.world.home_node(sender.account))
        for i, path in enumerate(files):
            await r.send(sender, to=to, file=path,
                         interrupt=kill if variant == "sigkill" and i == 0 else None)


@kind("link_cut")
async def link_cut(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A fault in the middle of ``wa-cli link`` / ``devices approve``; ghosts are counted."""
    account = _pick_account(r)
    world = r.world
    primary = world.primary(account)
    r.reserved.add(primary.label)
    variant = r.notes["variant"] = r.rng.choice(["client_reset", "node_kill"])
    node_id = world.home_node(account)
    linked = world.accounts[account][1:]
    if len(linked) >= MAX_LINKED:  # keep the account small: the oldest companion goes
        oldest = world.devices[linked[0]]
        r.notes["removed"] = oldest.label if await remove_device(world, oldest) else None
        r.roster[account] = list(world.accounts[account])
    task_status.started()
    code_seen = trio.Event()

    async def strike_after_code() -> None:
        await code_seen.wait()
        await _strike(r, variant, node_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(strike_after_code)
        device, outcome = await link_device(world, account, on_code=code_seen)
        code_seen.set()
    r.notes["link"] = outcome
    r.count("hung commands", outcome["hung"])
    approved = outcome.get("approve") == "ok"
    if device is not None and approved and not outcome["half"]:
        r.joined.append(device)

    async def ghosts() -> None:
        candidate = None
        if device is not None and outcome["half"]:  # do what link asked for, after the heal
            finished = await r.recv(device, phase=AFTER)
            r.notes["finished_by_recv"] = finished.ok
            if finished.ok and approved:  # takes part from the next round
                world.accounts[account].append(device.label)
            elif finished.ok:
                candidate = device
        elif device is not None and not approved:  # linked; kept if it reached its home
            candidate = device
        found = await find_ghosts(world, account, candidate)
        r.notes["kept_unreported"] = candidate is not None and candidate.label in \
            world.accounts[account]
        r.notes["ghosts"] = found
        r.count("ghost devices", len(found))

    r.on_heal.append(ghosts)

