"""The regular traffic of a round, the heal after it, and the drain that checks delivery.

Every primary that the round's fault kind does not drive itself sends
``sends`` messages (to another account or to the common group, chosen at
random) with one ``recv`` somewhere among them; every other device runs one
``recv`` at a random moment. A device runs one command at a time (``wa-cli``
locks its home); devices run concurrently.
"""

from __future__ import annotations

import trio

from .clients import Device
from .ledger import AFTER
from .world import GROUP, Round

DRAIN_IDLE = 0.5  # seconds ``recv --timeout`` waits for more in the drain
RETRY_PAUSE = 0.5  # seconds between drain attempts whose recv failed


def plan_lanes(r: Round, sends: int) -> dict[str, list[tuple[str, object]]]:
    """The operations of every device the kind does not drive: ``("send", account)``,
    ``("group", name)``, ``("recv", None)``, ``("wait", seconds)``; drawn from
    ``r.load_rng`` (so the plan depends only on the seed)."""
    world = r.world
    lanes: dict[str, list[tuple[str, object]]] = {}
    for account, labels in r.roster.items():
        for label in labels:
            if label in r.reserved:
                continue
            if label != labels[0]:
                lanes[label] = [("wait", r.load_rng.uniform(0, 2)), ("recv", None)]
                continue
            choices = [("send", a) for a in r.roster if a != account]
            choices += [("group", GROUP)] if account in world.groups.get(GROUP, []) else []
            ops = [r.load_rng.choice(choices) for _ in range(sends)]
            ops.insert(r.load_rng.randrange(len(ops) + 1), ("recv", None))
            lanes[label] = ops
    return lanes


async def run_lane(r: Round, device: Device, ops: list[tuple[str, object]]) -> None:
    """Run one device's operations in order."""
    for op, arg in ops:
        if op == "send":
            await r.send(device, to=arg)
        elif op == "group":
            await r.send(device, group=arg)
        elif op == "recv":
            await r.recv(device)
        else:
            await trio.sleep(arg)


async def run_workload(r: Round, sends: int) -> None:
    """Plan and run every lane concurrently; returns when all are done."""
    lanes = plan_lanes(r, sends)
    async with trio.open_nursery() as nursery:
        for label, ops in lanes.items():
            nursery.start_soon(run_lane, r, r.world.devices[label], ops)


async def heal(r: Round) -> list[str]:
    """Undo every fault: drop the network rules, start every node that is down, run
    the kind's heal actions. Returns the ids of the nodes started here."""
    r.world.network.heal()
    started = await r.world.nodes.ensure_running()
    for action in r.on_heal:
        await action()
    return started


async def drain(r: Round, deadline_s: float) -> None:
    """Every active device receives (at least once) until it showed every acknowledged
    message it must show, or ``deadline_s`` seconds passed; what is still missing
    then is marked in the ledger (lost; late if it shows up later). Messages that
    missed an earlier round's deadline are not waited for again."""
    ledger = r.world.ledger
    deadline = trio.current_time() + deadline_s

    async def one(device: Device) -> None:
        first = True
        while first or (ledger.missing(device.label, new_only=True)
                        and trio.current_time() < deadline):
            first = False
            result = await r.recv(device, phase=AFTER, idle=DRAIN_IDLE)
            if not result.ok:
                await trio.sleep(RETRY_PAUSE)
        if ledger.missing(device.label):
            ledger.mark_deadline(device.label)

    async with trio.open_nursery() as nursery:
        for device in r.world.active():
            nursery.start_soon(one, device)
