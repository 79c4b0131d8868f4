"""Fault-suite finding 13 (docs/reliability.md): a group send that one member's home
refuses (``storage_full``) while another member's home stored it is answered as a
partial send, and ``send --retry`` reaches the refused member once, nobody twice.
Real in-process nodes (memory storage), three homes."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import trio
from cli_cluster import drain, make_account, publish, run_cluster

from cli.client import Message, open_client
from cli.errors import PartialSend
from cli.features.group_messaging import create_group, send_group_text
from cli.features.resend import resend


async def texts(state, group: str) -> list[tuple[bytes, str]]:
    async with open_client(state) as client:
        return [(e.msg_id, e.text) for e in await drain(client)
                if isinstance(e, Message) and e.group == group]


async def test_group_send_refused_by_one_home_is_partial_and_retried_once(tmp_path) -> None:
    with trio.fail_after(60), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack,
                               not_on=[cluster.home_of(alice.user_id)])
            carol = make_account(tmp_path, "carol", cluster, stack,
                                 not_on=[cluster.home_of(alice.user_id),
                                         cluster.home_of(bob.user_id)])
            for state in (alice, bob, carol):
                await publish(state)
            alice.contacts["carol"] = carol.user_id
            async with open_client(alice) as client:
                await create_group(client, "fz", [bob.user_id, carol.user_id])
                await send_group_text(client, "fz", "hello")  # the sender key is shared
            assert [t for _, t in await texts(bob, "fz")] == ["hello"]
            assert [t for _, t in await texts(carol, "fz")] == ["hello"]
            full = cluster.storages[cluster.home_of(carol.user_id)]
            full.capacity_bytes = 0  # carol's home stores nothing more (a full disk)

            async with open_client(alice) as client:
                with pytest.raises(PartialSend) as caught:
                    await send_group_text(client, "fz", "fz a0 41")
            err = caught.value
            assert err.code == "storage_full" and err.refused_users == [carol.user_id]
            assert "refused for carol" in str(err)
            assert f"wa-cli send --retry {err.msg_id.hex()}" in str(err)
            assert alice.find_history(err.msg_id.hex())["refused_users"] == [carol.user_id]
            assert await texts(bob, "fz") == [(err.msg_id, "fz a0 41")]

            full.capacity_bytes = None  # space freed
            async with open_client(alice) as client:
                status, entry = await resend(client, err.msg_id)
            assert status == "stored" and "refused_users" not in entry
            assert await texts(carol, "fz") == [(err.msg_id, "fz a0 41")]
            assert await texts(bob, "fz") == []  # nothing twice
            assert await texts(carol, "fz") == []
