"""The ``daemon_kill`` fault kind: ``wa-cli daemon`` (docs/jsonrpc.md) killed or
interrupted while it receives and while a JSON-RPC ``send`` is in flight.

One device of a random account runs ``wa-cli daemon`` for two lives. In each
life the suite connects twice to ``HOME/daemon.sock``: one connection
subscribes (``receive``) and every ``receive`` notification it reads counts as
shown on that device (a notification handed over = shown, as the daemon
promises); the other sends one to three suite messages with JSON-RPC ``send``
(a result with status ``stored``, ``queued`` or ``pending`` = acknowledged, as
for ``wa-cli send``). Meanwhile another account's primary sends to the device's account.
Each life ends with SIGKILL or SIGINT, either while the device receives
(between sends) or while the life's last ``send`` is in flight (0-300 ms after
its request was written). After the second life the daemon stays down: the
drain's ``wa-cli recv`` (stale socket file after a SIGKILL) must show what the
daemon kept in the inbox, once.

Imported by :mod:`faults` (the package) so that :data:`faults.kinds.KINDS`
always holds it.
"""

from __future__ import annotations

import signal

import trio

from .clients import Device, Interrupt
from .kinds import _pick_other_primary, kind
from .ledger import message_text
from .rpc import RpcFailed, RpcGone, open_rpc
from .world import GROUP, Round

LIVES = 2
START_TIMEOUT = 20.0  # seconds for the daemon to print its socket line
STOP_TIMEOUT = 20.0  # seconds for the daemon to exit after its signal
CONNECT_TIMEOUT = 15.0  # seconds for the daemon to connect to its home node
POLL = 0.05  # seconds between polls of its ``id``
SEND_UNKNOWN = -32002  # docs/jsonrpc.md: the message left and no answer came


@kind("daemon_kill", requires=("daemon",))
async def daemon_kill(r: Round, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """SIGKILL or SIGINT of ``wa-cli daemon`` while it receives or while a JSON-RPC ``send`` is in flight."""
    labels = sorted(label for labels in r.roster.values() for label in labels)
    device = r.world.devices[r.rng.choice(labels)]
    r.reserved.add(device.label)
    feeder = _pick_other_primary(r, device.account)
    targets = [("to", a) for a in sorted(r.roster) if a != device.account]
    if device.account in r.world.groups.get(GROUP, []):
        targets.append(("group", GROUP))
    lives = [{"signal": r.rng.choice([signal.SIGKILL, signal.SIGINT]),
              "during": r.rng.choice(["receive", "send"]),
              "sends": [r.rng.choice(targets) for _ in range(r.rng.randint(1, 3))],
              "after": r.rng.uniform(0.0, 0.3)} for _ in range(LIVES)]
    for life in lives:
        if life["during"] == "receive":
            life["after"] = r.rng.uniform(0.3, 2.0)
    feed = r.rng.randint(2, 5)
    r.notes.update(device=device.label, feeder=feeder.label, lives=[
        f"{signal.Signals(life['signal']).name} during {life['during']} after "
        f"{len(life['sends'])} sends (+{life['after']:.2f} s)" for life in lives])
    task_status.started()

    async def feed_messages() -> None:
        for _ in range(feed):
            await r.send(feeder, to=device.account)
            await r.pause(0.1, 0.8)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed_messages)
        for n, life in enumerate(lives, 1):
            await _one_life(r, device, n, life)


async def _one_life(r: Round, device: Device, n: int, life: dict) -> None:
    """Start the daemon, subscribe, send through it, and interrupt it as ``life`` says."""
    world, ledger = r.world, r.world.ledger
    fire = trio.Event()
    socket_line: dict = {}
    up, ended = trio.Event(), trio.Event()
    outcome: dict = {}

    def seen(line: dict) -> None:
        if "socket" in line and not up.is_set():
            socket_line.update(line)
            up.set()

    async def run_daemon() -> None:
        result = await device.run("daemon", hang_after=120.0, on_line=seen,
                                  interrupt=Interrupt(life["signal"], 0.0, when=fire))
        outcome["code"] = result.code
        if life["signal"] == signal.SIGINT and result.interrupted and result.code != 0:
            world.errors[f"daemon: exit {result.code} after SIGINT: {result.error()}"[:160]] += 1
        if not result.interrupted:
            world.errors[f"daemon ended by itself: exit {result.code}: {result.error()}"[:160]] += 1
        up.set()
        ended.set()

    def notified(method: str, params: dict) -> None:
        event = params.get("event")
        if method == "receive" and isinstance(event, dict):
            r.notes["notifications"] = r.notes.get("notifications", 0) + 1
            if params.get("maybe_shown"):
                r.count("daemon maybe_shown")
            odd = ledger.record_shown(device.label, event, r.index, "during",
                                      maybe=bool(params.get("maybe_shown")))
            if odd is not None:
                world.trace(f"{odd} (round {r.index}, daemon)")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_daemon)
        with trio.move_on_after(START_TIMEOUT):
            await up.wait()
        if "socket" not in socket_line:
            r.count("daemon did not start")
            fire.set()
            return
        try:
            receiver = await open_rpc(socket_line["socket"], nursery, notified)
            sender = await open_rpc(socket_line["socket"], nursery)
            await receiver.call("receive")
            r.notes[f"life{n}_connected"] = await _connected(sender)
        except (OSError, RpcGone, RpcFailed) as exc:
            world.errors[f"daemon: subscribe: {type(exc).__name__}"] += 1
            fire.set()
            return
        sends = life["sends"]
        for i, (how, target) in enumerate(sends):
            last = i == len(sends) - 1
            if last and life["during"] == "send":
                async with trio.open_nursery() as inner:
                    inner.start_soon(_rpc_send, r, device, sender, how, target)
                    await trio.sleep(life["after"])
                    fire.set()
            else:
                await _rpc_send(r, device, sender, how, target)
        if not fire.is_set():
            await trio.sleep(life["after"])  # receiving: what the feeder sends arrives
            fire.set()
        with trio.move_on_after(STOP_TIMEOUT) as waited:
            await ended.wait()
            await receiver.closed.wait()  # read every notification the daemon wrote
        if waited.cancelled_caught:
            r.count("hung commands")
        await sender.aclose()
        await receiver.aclose()
    r.notes[f"life{n}_exit"] = outcome.get("code")


async def _connected(conn) -> bool:  # noqa: ANN001
    """Poll ``id`` until the daemon is connected to its home node (sends before that
    are only ``pending``); False if not within :data:`CONNECT_TIMEOUT`."""
    with trio.move_on_after(CONNECT_TIMEOUT):
        while True:
            if (await conn.call("id")).get("connected"):
                return True
            await trio.sleep(POLL)
    return False


async def _rpc_send(r: Round, device: Device, conn, how: str, target: str) -> None:  # noqa: ANN001
    """One suite message through the daemon's JSON-RPC ``send``, recorded in the ledger."""
    world = r.world
    accounts = world.groups[target] if how == "group" else [target]
    sent = world.ledger.next_send(device.label, r.index, r.kind, r.receivers(device, accounts))
    params = {how: target, "text": message_text(device.label, sent.seq)}
    result = None
    with trio.move_on_after(world.cli_timeout) as waited:
        try:
            result = await conn.call("send", params)
        except RpcGone:
            world.errors["send (rpc): no answer, the daemon went away"] += 1
        except RpcFailed as exc:
            if exc.code == SEND_UNKNOWN:
                world.errors["send (rpc): sent, answer unknown (-32002)"] += 1
            else:
                if "relay refused" in exc.message:
                    sent.refusal = exc.message
                world.errors[f"send (rpc): {exc.code}: {exc.message}"[:160]] += 1
    if waited.cancelled_caught:
        r.count("hung commands")
    world.ledger.answered(sent, result if isinstance(result, dict) else None)
    world.trace(f"{device.label} rpc send {how} {target} {params['text']}: "
                f"{(result or {}).get('status', 'no result')}")
