"""Linking mailboxes against a crowd of addresses, on a real node on 127.0.0.1:
addresses that fill the node's mailboxes (each up to its own cap) cannot keep a new
address from linking; the withdrawn mailbox's device is told (issue 11)."""

from __future__ import annotations

import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, session

from relay.protocol.frames import Error, LinkFetch, LinkInfo, LinkOpen, LinkOpened, Ok


async def test_a_crowd_of_addresses_cannot_lock_a_new_one_out_of_linking(nursery) -> None:
    # 4 addresses x 2 mailboxes fill the node (as 125 x 8 fill the default 1,000)
    cluster = Cluster(nursery, make_configs(1, max_mailboxes=8, max_mailboxes_per_ip=2))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(30):
        primary = UserDevice()
        assert await publish(url, primary) == Ok(id=2)
        async with trio.open_nursery() as crowd:
            held: list = []
            full = trio.Event()

            async def hold(address: str) -> None:
                async with connect(url, local_address=address) as c:
                    await c.hello()
                    opened = await c.request(LinkOpen(id=0, device_info=b"attacker"))
                    assert isinstance(opened, LinkOpened), opened
                    held.append(c)
                    if len(held) == 8:
                        full.set()
                    notice = await c.recv()  # the only frame it gets: withdrawn
                    assert isinstance(notice, Error) and notice.code == "not_found", notice
                    withdrawn.append(address)
                    told.set()
                    await trio.sleep_forever()

            withdrawn: list[str] = []
            told = trio.Event()
            for i in range(8):
                crowd.start_soon(hold, f"127.0.0.{2 + i // 2}")
            await full.wait()
            async with connect(url, local_address="127.0.0.2") as c:  # a crowd member
                await c.hello()
                refused = await c.request(LinkOpen(id=0, device_info=b"attacker"))
                assert isinstance(refused, Error) and refused.code == "rate_limited"
                assert refused.quota == "address_mailboxes" and refused.retry_after_ms > 1000
            async with connect(url, local_address="127.0.0.9") as new_device:
                await new_device.hello()
                opened = await new_device.request(LinkOpen(id=0, device_info=b"honest"))
                assert isinstance(opened, LinkOpened), opened
                async with session(url, primary) as p:  # the primary reads the code
                    info = await p.request(LinkFetch(id=0, node_id=opened.node_id,
                                                     mailbox_id=opened.mailbox_id))
                    assert isinstance(info, LinkInfo) and info.device_info == b"honest"
                await told.wait()
                assert len(withdrawn) == 1
            crowd.cancel_scope.cancel()
