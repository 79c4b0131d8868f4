"""Linking mailboxes: link_open / link_fetch / link_complete / link_data, across nodes."""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack

import pytest
import trio
from relay_harness import (
    Cluster,
    UserDevice,
    connect,
    device_homed_at,
    list_of,
    make_configs,
    publish,
    session,
)

from relay.config.ring import Ring
from relay.errors import RelayError
from relay.protocol import DEFAULT_LIMITS, ErrorCode
from relay.protocol.frames import (
    AuthOk,
    Error,
    LinkComplete,
    LinkData,
    LinkFetch,
    LinkInfo,
    LinkOpen,
    LinkOpened,
    Ok,
    PutDevices,
)
from relay.services.federation import Federation
from relay.services.linking import MAX_DEVICE_INFO, Linking

INFO = b"\x84device-info: keys, ephemeral, name"


async def test_link_happy_path_across_nodes(cluster3) -> None:
    with trio.fail_after(15):
        primary = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n2"), primary)
        laptop = primary.companion(1)
        async with connect(cluster3.url("n1")) as new, session(cluster3.url("n2"), primary) as p:
            await new.hello()
            opened = await new.request(LinkOpen(id=5, device_info=INFO))
            assert isinstance(opened, LinkOpened) and opened.id == 5
            assert (opened.node_id, opened.expires_in) == ("n1", 120)
            box = opened.mailbox_id
            info = await p.request(LinkFetch(id=3, node_id="n1", mailbox_id=box))  # forwarded
            assert info == LinkInfo(id=3, device_info=INFO)
            again = await p.request(LinkFetch(id=4, node_id="n1", mailbox_id=box))
            assert again == LinkInfo(id=4, device_info=INFO)  # fetching does not use it up
            put = await p.request(PutDevices(id=5, device_list=list_of([primary, laptop], 2)))
            assert put == Ok(id=5)
            sealed = os.urandom(2000)
            assert await p.request(LinkComplete(id=6, node_id="n1", mailbox_id=box,
                                                body=sealed)) == Ok(id=6)
            assert await new.recv() == LinkData(id=0, body=sealed)
            # single use: a second complete or fetch changes nothing
            err = await p.request(LinkComplete(id=7, node_id="n1", mailbox_id=box, body=b"x"))
            assert isinstance(err, Error) and err.code == "already_used" and "used" in err.message
            err = await p.request(LinkFetch(id=8, node_id="n1", mailbox_id=box))
            assert isinstance(err, Error) and err.code == "already_used"  # forwarded as such
            # n1 is not the account's home: the new device is sent there
            moved = await new.auth(laptop)
            assert isinstance(moved, Error) and moved.code == "moved"
        async with session(cluster3.url("n2"), laptop) as c:
            assert c.challenge is not None
        assert await cluster3.storages["n2"].get_device_list(primary.user_id) is not None


async def test_link_on_the_primarys_own_home(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        primary = UserDevice()
        await publish(url, primary)
        async with connect(url) as new, session(url, primary) as p:
            await new.hello()
            box = (await new.request(LinkOpen(id=2, device_info=INFO))).mailbox_id
            assert await p.request(LinkFetch(id=3, node_id="n1", mailbox_id=box)) == LinkInfo(
                id=3, device_info=INFO)
            assert await p.request(LinkComplete(id=4, node_id="n1", mailbox_id=box,
                                                body=b"sealed")) == Ok(id=4)
            assert await new.recv() == LinkData(id=0, body=b"sealed")
            # the linked device authenticates on the same connection
            laptop = primary.companion(1)
            await p.request(PutDevices(id=5, device_list=list_of([primary, laptop], 2)))
            assert isinstance(await new.auth(laptop), AuthOk)


async def test_wrong_code_is_not_found_and_changes_nothing(cluster3) -> None:
    with trio.fail_after(15):
        primary = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n2"), primary)
        async with connect(cluster3.url("n1")) as new, session(cluster3.url("n2"), primary) as p:
            await new.hello()
            box = (await new.request(LinkOpen(id=2, device_info=INFO))).mailbox_id
            wrong = [("n1", os.urandom(16)), ("n2", box), ("n3", box), ("n9", box),
                     ("n1", box[:8])]
            for i, (node_id, mailbox_id) in enumerate(wrong):
                for frame in (LinkFetch(id=10 + i, node_id=node_id, mailbox_id=mailbox_id),
                              LinkComplete(id=20 + i, node_id=node_id, mailbox_id=mailbox_id,
                                           body=b"x")):
                    err = await p.request(frame)
                    assert isinstance(err, Error) and err.code == "not_found", (frame, err)
            # the right code still works afterwards
            assert await p.request(LinkComplete(id=30, node_id="n1", mailbox_id=box,
                                                body=b"ok")) == Ok(id=30)
            assert await new.recv() == LinkData(id=0, body=b"ok")


async def test_one_address_cannot_take_every_mailbox(node1) -> None:
    """1000 link_open from one address used to fill the node's 1000 mailboxes."""
    with trio.fail_after(20):
        url = node1.url("n1")
        async with AsyncExitStack() as stack:
            hog = []
            for _ in range(9):
                c = await stack.enter_async_context(connect(url))
                await c.hello()
                hog.append(await c.request(LinkOpen(id=2, device_info=INFO)))
            assert all(isinstance(a, LinkOpened) for a in hog[:8])
            assert isinstance(hog[8], Error) and hog[8].code == "rate_limited"
            # a real new device elsewhere still gets a code
            async with connect(url, local_address="127.0.0.2") as new:
                await new.hello()
                assert isinstance(await new.request(LinkOpen(id=2, device_info=INFO)), LinkOpened)
        # the hog's connections are gone: its mailboxes are given back
        async with connect(url) as c:
            await c.hello()
            rid = 2
            while isinstance(answer := await c.request(LinkOpen(id=rid, device_info=INFO)), Error):
                assert answer.code == "rate_limited"
                rid += 1
                await trio.sleep(0.01)  # poll, deadline above
            assert isinstance(answer, LinkOpened)


async def test_link_needs_auth_for_fetch_and_limits_info(node1) -> None:
    with trio.fail_after(10):
        async with connect(node1.url("n1")) as c:
            await c.hello()
            err = await c.request(LinkFetch(id=2, node_id="n1", mailbox_id=bytes(16)))
            assert isinstance(err, Error) and err.code == "unauthorized"
            err = await c.request(LinkOpen(id=3, device_info=b"i" * (MAX_DEVICE_INFO + 1)))
            assert isinstance(err, Error) and err.code == "too_large"
            ok = await c.request(LinkOpen(id=4, device_info=b"i" * MAX_DEVICE_INFO))
            assert isinstance(ok, LinkOpened)


async def test_mailbox_dies_with_its_connection_and_on_reopen(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        primary = UserDevice()
        await publish(url, primary)
        async with session(url, primary) as p:
            async with connect(url) as new:
                await new.hello()
                first = (await new.request(LinkOpen(id=2, device_info=INFO))).mailbox_id
                second = (await new.request(LinkOpen(id=3, device_info=INFO))).mailbox_id
                assert first != second
                err = await p.request(LinkFetch(id=3, node_id="n1", mailbox_id=first))
                assert isinstance(err, Error) and err.code == "not_found"
                assert isinstance(await p.request(
                    LinkFetch(id=4, node_id="n1", mailbox_id=second)), LinkInfo)
            # the new device's connection is gone: so is its mailbox (fetch does not use it
            # up, so polling it shows when the node noticed the close)
            rid = 5
            while isinstance(answer := await p.request(
                    LinkFetch(id=rid, node_id="n1", mailbox_id=second)), LinkInfo):
                rid += 1
                await trio.sleep(0.01)  # poll, deadline above
            assert isinstance(answer, Error) and answer.code == "not_found"
            err = await p.request(LinkComplete(id=rid + 1, node_id="n1", mailbox_id=second,
                                               body=b"late"))
            assert isinstance(err, Error) and err.code == "not_found"


async def test_mailbox_expires(nursery, mock_clock) -> None:
    mock_clock.rate = 1.0  # real time flows (the fail_after guard works); jumps add to it
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(10) as guard:
        primary = UserDevice()
        await publish(url, primary)
        async with connect(url) as new, session(url, primary) as p:
            await new.hello()
            box = (await new.request(LinkOpen(id=2, device_info=INFO))).mailbox_id
            mock_clock.jump(115)
            guard.deadline += 115
            assert isinstance(await p.request(LinkFetch(id=3, node_id="n1", mailbox_id=box)),
                              LinkInfo)
            mock_clock.jump(6)
            guard.deadline += 6
            # the waiting device is told (and its connection stays usable)
            pushed = await new.recv()
            assert isinstance(pushed, Error) and (pushed.id, pushed.code) == (0, "not_found")
            assert "expired" in pushed.message
            err = await p.request(LinkFetch(id=4, node_id="n1", mailbox_id=box))
            assert isinstance(err, Error) and err.code == "not_found"
            err = await p.request(LinkComplete(id=5, node_id="n1", mailbox_id=box, body=b"x"))
            assert isinstance(err, Error) and err.code == "not_found"
            # a fresh code on the same connection works
            box2 = (await new.request(LinkOpen(id=6, device_info=INFO))).mailbox_id
            assert await p.request(LinkComplete(id=7, node_id="n1", mailbox_id=box2,
                                                body=b"y")) == Ok(id=7)
            assert await new.recv() == LinkData(id=0, body=b"y")
            # ... but the second mailbox does not renew the connection's life (issue 11):
            # it ends link_ttl + handshake_timeout after the first link_open
            mock_clock.jump(10)
            guard.deadline += 10
            closed = await new.recv()
            assert isinstance(closed, Error) and closed.code == "unauthorized"


# ---------------------------------------------------------------- unit level


def _linking(ttl: float = 120.0, max_open: int = 3, max_per_owner: int = 8) -> Linking:
    cfg = make_configs(1)[0]
    ring = Ring(cfg.cluster)
    fed = Federation(cfg.id, cfg.signing_key, ring, DEFAULT_LIMITS, logging.getLogger("test"))
    return Linking(cfg.id, ring, fed, ttl=ttl, max_open=max_open, max_per_owner=max_per_owner)


async def test_mailboxes_per_address_are_capped(autojump_clock) -> None:
    linking = _linking(ttl=10, max_open=5, max_per_owner=2)
    a = [linking.open(INFO, lambda f: True, "10.0.0.1")[0] for _ in range(2)]
    with pytest.raises(RelayError) as info:
        linking.open(INFO, lambda f: True, "10.0.0.1")
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.message == "too many linking mailboxes are open from your address; retry later"
    # other addresses are not affected, up to the node-wide cap
    linking.open(INFO, lambda f: True, "10.0.0.2")
    linking.open(INFO, lambda f: True, "10.0.0.3")
    linking.open(INFO, lambda f: True, "10.0.0.4")
    with pytest.raises(RelayError) as info:  # full, and nobody holds 1 + 2
        linking.open(INFO, lambda f: True, "10.0.0.2")
    assert "open on this node" in info.value.message
    assert (info.value.quota, info.value.retry_after_ms) == ("node_mailboxes", 10_000)
    a[1].close()
    a[1].close()  # idempotent: counted once
    assert (linking.open_from("10.0.0.1"), len(linking)) == (1, 4)
    linking.open(INFO, lambda f: True, "10.0.0.1")
    with pytest.raises(RelayError):
        linking.open(INFO, lambda f: True, "10.0.0.1")
    await trio.sleep(11)  # all expired: pruned (and uncounted) on the next open
    linking.open(INFO, lambda f: True, "10.0.0.1")
    assert (linking.open_from("10.0.0.1"), linking.open_from("10.0.0.2"), len(linking)) == (1, 0, 1)
    box, _ = linking.open(INFO, lambda f: True, "10.0.0.1")
    linking.complete(box.mailbox_id, b"material")  # a used mailbox is uncounted too
    assert linking.open_from("10.0.0.1") == 1


async def test_a_full_node_shares_its_mailboxes_fairly_among_addresses(autojump_clock) -> None:
    linking = _linking(ttl=10, max_open=6, max_per_owner=3)
    told: list[Error] = []
    hog = [linking.open(INFO, told.append, "10.0.0.1")[0] for _ in range(3)]
    linking.open(INFO, lambda f: True, "10.0.0.2")
    linking.open(INFO, lambda f: True, "10.0.0.2")
    linking.open(INFO, lambda f: True, "10.0.0.3")
    assert len(linking) == 6
    # a new address takes the oldest mailbox of the biggest holder (3 >= 0 + 2)
    fresh, _ = linking.open(INFO, lambda f: True, "10.0.0.4")
    assert fresh.is_open and not hog[0].is_open and hog[1].is_open and len(linking) == 6
    assert [(f.code, f.id) for f in told] == [("not_found", 0)]
    with pytest.raises(RelayError):
        linking.fetch(hog[0].mailbox_id)
    # now every address holds at most 2: one holding 1 cannot take from one holding 2
    for address in ("10.0.0.3", "10.0.0.4"):
        with pytest.raises(RelayError) as info:
            linking.open(INFO, lambda f: True, address)
        assert info.value.code is ErrorCode.RATE_LIMITED
    linking.open(INFO, lambda f: True, "10.0.0.5")  # a new one still can
    assert len(linking) == 6 and linking.open_from("10.0.0.5") == 1


async def test_mailbox_bound_is_rate_limited(autojump_clock) -> None:
    linking = _linking(ttl=10, max_open=3)
    boxes = [linking.open(INFO, lambda f: True)[0] for _ in range(3)]
    with pytest.raises(RelayError) as info:
        linking.open(INFO, lambda f: True)
    assert info.value.code is ErrorCode.RATE_LIMITED
    boxes[0].close()
    boxes[0].close()  # idempotent
    assert len(linking) == 2
    linking.open(INFO, lambda f: True)
    await trio.sleep(11)  # all expired: pruned on the next open
    linking.open(INFO, lambda f: True)
    assert len(linking) == 1


async def test_complete_pushes_once_and_gone_device_is_not_found(autojump_clock) -> None:
    linking = _linking()
    pushed: list = []
    box, opened = linking.open(INFO, lambda f: pushed.append(f) is None)
    assert opened.mailbox_id == box.mailbox_id and opened.expires_in == 120
    assert linking.fetch(box.mailbox_id) == (INFO, None)
    linking.complete(box.mailbox_id, b"material")
    assert pushed == [LinkData(id=0, body=b"material")]
    with pytest.raises(RelayError) as info:
        linking.complete(box.mailbox_id, b"again")
    assert info.value.code is ErrorCode.ALREADY_USED and len(pushed) == 1
    dead, _ = linking.open(INFO, lambda f: False)  # its connection cannot take frames
    with pytest.raises(RelayError) as info:
        linking.complete(dead.mailbox_id, b"material")
    assert info.value.code is ErrorCode.NOT_FOUND and len(linking) == 0


async def test_short_mailbox_more_and_reply(autojump_clock) -> None:
    """A PAKE link's mailbox: a 2-byte id, link_complete {more} keeps it open, one reply."""
    linking = _linking(max_open=50)
    pushed: list = []
    boxes = [linking.open(INFO, lambda f: pushed.append(f) is None, f"10.0.0.{i}",
                          short=True)[0] for i in range(50)]
    assert all(len(b.mailbox_id) == 2 for b in boxes)
    assert len({b.mailbox_id for b in boxes}) == 50  # unique among the open ones
    box = boxes[0]
    linking.complete(box.mailbox_id, b"pake B", more=True)
    assert pushed == [LinkData(id=0, body=b"pake B")] and box.is_open
    assert linking.fetch(box.mailbox_id) == (INFO, None)
    box.reply = b"sealed device info"  # what LinkSlot.reply stores for link_reply
    assert linking.fetch(box.mailbox_id) == (INFO, b"sealed device info")
    linking.complete(box.mailbox_id, b"material")
    assert pushed[-1] == LinkData(id=0, body=b"material") and not box.is_open


async def test_a_used_mailbox_says_so_until_its_tombstone_expires(autojump_clock) -> None:
    """A word code serves one approval: a second ``link_complete {more}`` (a second
    approval's PAKE message) is refused ``already_used`` and not pushed to the device,
    which would read it as tampering; once the mailbox closed after use, fetches and
    completes answer ``already_used`` for ``ttl`` seconds, then ``not_found``. A mailbox
    closed unused (its device left) stays plain ``not_found``."""
    linking = _linking(ttl=10, max_open=2)
    pushed: list = []
    box, _ = linking.open(INFO, lambda f: pushed.append(f) is None, "10.0.0.1", short=True)
    linking.complete(box.mailbox_id, b"pake B", more=True)
    box.reply = b"sealed device info"
    with pytest.raises(RelayError) as info:
        linking.complete(box.mailbox_id, b"pake B of a second approval", more=True)
    assert info.value.code is ErrorCode.ALREADY_USED and pushed == [LinkData(id=0, body=b"pake B")]
    assert linking.fetch(box.mailbox_id) == (INFO, b"sealed device info")  # the first polls on
    linking.complete(box.mailbox_id, b"sealed decline")  # the first approval ends it
    assert pushed[-1] == LinkData(id=0, body=b"sealed decline") and not box.is_open
    for ask in (lambda: linking.fetch(box.mailbox_id),
                lambda: linking.complete(box.mailbox_id, b"x", more=True),
                lambda: linking.complete(box.mailbox_id, b"x")):
        with pytest.raises(RelayError) as info:
            ask()
        assert info.value.code is ErrorCode.ALREADY_USED and "already used" in info.value.message
    assert len(pushed) == 2

    unused, _ = linking.open(INFO, lambda f: True, "10.0.0.2", short=True)
    unused.close()  # its device disconnected before any approval
    with pytest.raises(RelayError) as info:
        linking.fetch(unused.mailbox_id)
    assert info.value.code is ErrorCode.NOT_FOUND

    left, _ = linking.open(INFO, lambda f: True, "10.0.0.3", short=True)
    linking.complete(left.mailbox_id, b"pake B", more=True)
    left.close()  # used, then its device disconnected: a tombstone too
    with pytest.raises(RelayError) as info:
        linking.fetch(left.mailbox_id)
    assert info.value.code is ErrorCode.ALREADY_USED

    await trio.sleep(10.5)  # the tombstones expire
    with pytest.raises(RelayError) as info:
        linking.fetch(box.mailbox_id)
    assert info.value.code is ErrorCode.NOT_FOUND


async def test_tombstones_are_bounded_and_block_short_ids(autojump_clock) -> None:
    """At most ``max_open`` tombstones (oldest dropped first); a short id with one is not
    handed out again (a new device's code must not read "already used")."""
    linking = _linking(ttl=100, max_open=3, max_per_owner=100)
    used = []
    for i in range(5):
        box, _ = linking.open(INFO, lambda f: True, f"10.0.1.{i}", short=True)
        linking.complete(box.mailbox_id, b"material")
        used.append(box.mailbox_id)
    assert len(linking._used) == 3 and list(linking._used) == used[2:]
    fresh = {linking.open(INFO, lambda f: True, f"10.0.2.{i}", short=True)[0].mailbox_id
             for i in range(3)}
    assert not fresh & set(used[2:])


@pytest.mark.timeout(60)
async def test_short_ids_running_out_are_refused_not_spun_on(autojump_clock) -> None:
    """attack9: with ``max_mailboxes`` above 32,767, open mailboxes and tombstones could
    take all 65,536 short ids; ``link_open {short}`` then looped forever on the node's
    only thread. Now it answers ``rate_limited`` and long codes still open."""
    linking = _linking(ttl=100, max_open=70_000, max_per_owner=70_000)
    refused = None
    for _ in range(70_000):
        try:
            linking.open(INFO, lambda f: True, "10.0.3.1", short=True)
        except RelayError as exc:
            refused = exc
            break
    assert refused is not None and refused.code is ErrorCode.RATE_LIMITED
    assert refused.quota == "node_mailboxes" and refused.retry_after_ms > 0
    assert 50_000 < len(linking) < 65_536  # refused only once nearly every number is taken
    box, opened = linking.open(INFO, lambda f: True, "10.0.3.2")
    assert len(opened.mailbox_id) == 16 and box.is_open
