"""Issue 15, "every envelope the node accepts reaches a wa-cli device", on a cluster
whose signed size budget is larger than the default (``max_frame`` 4 MiB): the node
packs a backlog of long texts into ``deliver`` frames of up to its ``max_frame``, and
``wa-cli`` must accept every frame that budget allows. Real in-process node, the
client library."""

from __future__ import annotations

from contextlib import ExitStack

import trio
from cli_cluster import drain, make_account, publish, run_cluster

from cli.client import Message, open_client
from cli.features.payload import MAX_TEXT
from cli.features.sending import send_text

MAX_FRAME = 4 << 20


async def test_a_backlog_larger_than_the_default_frame_reaches_the_device(tmp_path) -> None:
    with trio.fail_after(60), ExitStack() as stack:
        async with run_cluster(1, max_frame=MAX_FRAME) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack)
            await publish(alice)
            await publish(bob)
            texts = [f"{n} " + "\u00e9" * (MAX_TEXT - 8) for n in range(12)]  # ~120 KB each
            async with open_client(alice) as client:
                for text in texts:
                    assert (await send_text(client, bob.user_id, text)).status == "stored"
            async with open_client(bob) as client:
                got = [e.text for e in await drain(client) if isinstance(e, Message)]
            assert got == texts
