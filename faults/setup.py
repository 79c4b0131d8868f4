"""Accounts, contacts, the common group and linked devices, made with real ``wa-cli`` commands."""

from __future__ import annotations

import random

import trio

from .clients import CliResult, Device
from .world import GROUP, World

ACCOUNTS = ("alice", "bob", "carol")
INIT_ATTEMPTS = 40  # ``init`` tries to land an account on a node no other account is on
SETUP_ATTEMPTS = 5  # tries of a set-up command that a node refused (peer links still coming up)
LINK_TIMEOUT = 20.0  # seconds ``wa-cli link`` waits for the approval
GROUP_SYNC_DEADLINE = 30.0  # seconds for members to learn the common group


class SetupError(RuntimeError):
    """The world could not be set up (a command that must work failed)."""


def _must(result: CliResult, what: str) -> dict:
    if not result.ok or result.last() is None:
        raise SetupError(f"{what} failed (exit {result.code}): {result.stderr[-2000:]}")
    return result.last()


async def _retried(device: Device, *args: str) -> CliResult:
    """Run a set-up command, again (after 1 s) while a node refuses it as
    ``unavailable`` (set-up is not under test), at most :data:`SETUP_ATTEMPTS` times."""
    for _ in range(SETUP_ATTEMPTS - 1):
        result = await device.run(*args)
        if result.ok or "unavailable" not in result.stderr:
            return result
        await trio.sleep(1.0)
    return await device.run(*args)


async def make_account(world: World, name: str, rng: random.Random) -> Device:
    """``wa-cli init`` an account ``name`` whose home is on a node no other account is
    on (while there are such nodes); rendezvous hashing decides, so it retries in
    fresh homes. Raises SetupError."""
    taken = {world.home_node(a) for a in world.accounts}
    if len(taken) >= len(world.nodes.nodes):
        taken = set()
    for attempt in range(INIT_ATTEMPTS):
        home = world.root / "devices" / f"{name}-init{attempt}"
        home.mkdir(parents=True)
        dev = Device(f"{name[0]}0", name, home, trace=world.trace, env=world.cli_env,
                     launcher=world.launcher)
        via = rng.choice(sorted(world.nodes.nodes.values(), key=lambda n: n.node_id))
        out = _must(await dev.run("init", "--trust-on-first-use", "--name", name, "--relay", via.url), f"init {name}")
        dev.user_id, dev.device_id, dev.home_url = out["user_id"], out["device_id"], out["home"]
        if world.nodes.node_of_url(dev.home_url) not in taken:
            world.add_device(dev)
            world.accounts[name] = [dev.label]
            return dev
    raise SetupError(f"no home for {name} outside {sorted(taken)} in {INIT_ATTEMPTS} tries")


async def add_contacts(world: World) -> None:
    """Every primary adds every other account under its name."""
    async def add_all(account: str) -> None:
        me = world.primary(account)
        for other in world.accounts:
            if other != account:
                result = await me.run("contacts", "add", other, world.primary(other).user_id)
                if not result.ok:
                    raise SetupError(f"{account}: contacts add {other}: {result.stderr}")

    async with trio.open_nursery() as nursery:
        for account in world.accounts:
            nursery.start_soon(add_all, account)


async def make_group(world: World) -> None:
    """The first account creates :data:`GROUP` with every account; each other primary
    receives until it knows the group. Raises SetupError."""
    owner, *others = world.accounts
    _must(await _retried(world.primary(owner), "group", "create", GROUP, *others),
          "group create")
    world.groups[GROUP] = list(world.accounts)
    deadline = trio.current_time() + GROUP_SYNC_DEADLINE
    for account in others:
        dev = world.primary(account)
        while trio.current_time() < deadline:
            await dev.run("recv", "--timeout", "0.5")
            if (await dev.run("group", "info", GROUP)).ok:
                break
        else:
            raise SetupError(f"{account} did not learn group {GROUP}")


async def link_device(world: World, account: str, *, relay_url: str | None = None,
                      on_code: trio.Event | None = None) -> tuple[Device | None, dict]:
    """Link a new device to ``account``: ``wa-cli link`` in a fresh home, approved by
    ``devices approve CODE --yes`` on the primary.

    Args:
        relay_url: the URL given to ``link --relay`` (default: the account's home).
        on_code: set once the linking code was printed (a fault may then start).

    Returns:
        ``(device, outcome)``: the device if the new home holds the account (else
        ``None``), and what each command did (``link``, ``approve``: ``"ok"`` or the
        error; ``hung``: how many had to be killed; ``half``: link failed after saving
        the account, and asked for ``wa-cli recv`` to finish publishing the device's
        keys). A device whose ``approve`` failed may still be in the account: the
        approval waits for the new device to reach its home, and the primary keeps a
        device that did (finding 17); the caller settles that after the heal.
    """
    primary = world.primary(account)
    label = world.next_label(account)
    dev = world.add_device(Device(label, account, world.new_home(label)))  # even if it fails
    code: dict[str, str] = {}
    got_code = trio.Event()

    def seen(line: dict) -> None:
        if "code" in line and not got_code.is_set():
            code["code"] = line["code"]
            got_code.set()
            if on_code is not None:
                on_code.set()

    outcome: dict = {"label": label}
    link_result: list[CliResult] = []

    async def run_link() -> None:
        link_result.append(await dev.run(
            "link", "--relay", relay_url or primary.home_url, "--name", label,
            "--timeout", str(LINK_TIMEOUT), hang_after=LINK_TIMEOUT + world.cli_timeout,
            on_line=seen))
        got_code.set()  # it ended (maybe before printing a code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_link)
        await got_code.wait()
        if "code" in code:
            approve = await primary.run("devices", "approve", code["code"], "--yes",
                                        hang_after=world.cli_timeout)
            outcome["approve"] = "ok" if approve.ok else (approve.error() or f"exit {approve.code}")
            outcome["hung"] = int(approve.hung)
    link = link_result[0]
    outcome["link"] = "ok" if link.ok else (link.error() or f"exit {link.code}")
    outcome["hung"] = outcome.get("hung", 0) + link.hung
    ident = await dev.run("id")  # does the new home hold an account, whatever link said?
    if not ident.ok or "approve" not in outcome:
        return None, outcome
    info = ident.last() or {}
    dev.user_id, dev.device_id = info.get("user_id", ""), info.get("device_id", -1)
    dev.home_url = info.get("home", primary.home_url)
    outcome["half"] = not link.ok  # saved, but link asked for a 'wa-cli recv' to finish
    return dev, outcome


async def remove_device(world: World, device: Device) -> bool:
    """``devices remove ID --yes`` on the primary; the device leaves its account."""
    primary = world.primary(device.account)
    result = await primary.run("devices", "remove", str(device.device_id), "--yes",
                               hang_after=world.cli_timeout)
    if result.ok and device.label in world.accounts[device.account]:
        world.accounts[device.account].remove(device.label)
    return result.ok


async def find_ghosts(world: World, account: str, candidate: Device | None = None) -> list[int]:
    """Device ids in ``account``'s published list that no device of the suite holds
    (a link that failed half-way left them); removes them and returns their ids.

    ``candidate``: a new device that holds the account although its approval was not
    reported (the primary's ``devices list`` first settles such a link: it keeps a
    device that reached its home); listed, it joins ``world.accounts``."""
    primary = world.primary(account)
    listed = await primary.run("devices", "list", hang_after=world.cli_timeout)
    if not listed.ok:
        return []
    ids = {line["device_id"] for line in listed.lines if "device_id" in line}
    if candidate is not None and candidate.device_id in ids:
        world.accounts[account].append(candidate.label)
    known = {world.devices[label].device_id for label in world.accounts[account]}
    ghosts = [line["device_id"] for line in listed.lines
              if "device_id" in line and line["device_id"] not in known]
    for device_id in ghosts:
        await primary.run("devices", "remove", str(device_id), "--yes", hang_after=world.cli_timeout)
    return ghosts


async def setup_world(world: World, rng: random.Random, linked: int = 1) -> None:
    """Three accounts on distinct homes (while nodes allow), contacts both ways, the
    common group, and ``linked`` companion devices of the first account.
    Raises SetupError."""
    for name in ACCOUNTS:
        await make_account(world, name, rng)
    await add_contacts(world)
    await make_group(world)
    for _ in range(linked):
        dev, outcome = await link_device(world, ACCOUNTS[0])
        if dev is not None and outcome["half"]:  # as link advises
            finished = await dev.run("recv", "--timeout", "0.5")
            if not finished.ok:
                raise SetupError(f"recv after a half link failed: {finished.stderr}")
        if dev is None:
            raise SetupError(f"linking a device failed: {outcome}")
        world.accounts[ACCOUNTS[0]].append(dev.label)
