"""An unauthenticated client replays a victim's public signed device list (any node
hands it out: ``get_devices``, ``stale_devices``) with ``put_devices``: it must not take
the victim's ``put_devices`` tokens, or the victim could never publish a change (remove
a stolen device, re-sign its list before it expires)."""

from __future__ import annotations

import trio
from relay_harness import UserDevice, connect, publish, publish_list

from relay.protocol.frames import Error, Ok, PutDevices


async def test_replaying_a_victims_old_list_does_not_drain_its_put_devices_bucket(node1) -> None:
    url = node1.url("n1")
    with trio.fail_after(30):
        victim = UserDevice()
        assert await publish(url, victim, version=1) == Ok(id=2)
        old = victim.device_list(1)
        async with connect(url, local_address="127.0.0.2") as attacker:
            await attacker.hello()
            for _ in range(30):  # default put_devices burst: 20
                answer = await attacker.request(PutDevices(id=0, device_list=old))
                assert isinstance(answer, Error), answer
        answer = await publish_list(url, victim.device_list(2))
        assert answer == Ok(id=2), f"the victim cannot publish its new list: {answer}"
