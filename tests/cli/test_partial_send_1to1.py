"""A plain 1:1 send that is stored for the recipient but refused for the sender's own
other devices (the queue of the sender's other device is full on the sender's home,
which writes its own part after the recipient's home answered: docs/protocol.md,
"Partial sends") is a
partial send, as a group's is: ``PartialSend`` naming the message id and ``send
--retry``, the refused user kept in the history entry; the retry reaches the
sender's other device once and the recipient not again. Real in-process nodes
(memory storage), two homes."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import trio
from cli_cluster import drain, link_second_device, make_account, publish, run_cluster

from cli.client import Message, open_client
from cli.errors import PartialSend, RelayError
from cli.features.resend import resend
from cli.features.sending import send_text

MAX_QUEUE = 4


async def texts(state) -> list[tuple[bytes, str]]:
    async with open_client(state) as client:
        return [(e.msg_id, e.text) for e in await drain(client) if isinstance(e, Message)]


async def test_a_1to1_send_refused_for_own_devices_is_partial_and_retried_once(tmp_path) -> None:
    with trio.fail_after(60), ExitStack() as stack:
        async with run_cluster(2, max_queue=MAX_QUEUE) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack,
                               not_on=[cluster.home_of(alice.user_id)])
            await publish(alice)
            await publish(bob)
            laptop = await link_second_device(tmp_path, stack, alice)
            alice.contacts["bob"] = bob.user_id
            async with open_client(alice) as client:  # fill the laptop's queue
                with pytest.raises(RelayError) as filled:
                    for n in range(MAX_QUEUE + 1):
                        await send_text(client, alice.user_id, f"note {n}")
            assert filled.value.code == "queue_full"

            async with open_client(alice) as client:
                with pytest.raises(PartialSend) as caught:
                    await send_text(client, bob.user_id, "to bob")
            err = caught.value
            assert err.code == "queue_full" and err.refused_users == [alice.user_id]
            assert "refused for your other devices" in str(err)
            assert f"wa-cli send --retry {err.msg_id.hex()}" in str(err)
            assert alice.find_history(err.msg_id.hex())["refused_users"] == [alice.user_id]
            assert await texts(bob) == [(err.msg_id, "to bob")]

            notes = await texts(laptop)  # the laptop reads (and acks) its queue: room again
            assert [t for _, t in notes] == [f"note {n}" for n in range(len(notes))]
            async with open_client(alice) as client:
                status, entry = await resend(client, err.msg_id)
            assert status == "stored" and "refused_users" not in entry
            assert await texts(laptop) == [(err.msg_id, "to bob")]
            assert await texts(bob) == []  # nothing twice
