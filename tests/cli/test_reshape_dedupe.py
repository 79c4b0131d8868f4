"""A sender's retry after the recipient's home moved is still a duplicate: the dedupe
ids of the recipient move with its home (real in-process nodes, real clients; memory
and LMDB storage).

Clients show a message id once whatever the relay does, so the test looks at the new
home's queue itself: a retry must not queue a second copy there."""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack

import nacl.signing
import pytest
import trio
from cli_cluster import make_account

from cli.client import BacklogDone, Message, now_ms, open_client
from cli.features import payload
from relay.services.router import dedupe_id
from relay.testing import LocalCluster, node_configs, reshape_configs
from storage import open_storage

DEADLINE = 30


async def texts_of(state) -> list[str]:
    out = []
    async with open_client(state) as client:
        async for event in client.receive():
            if isinstance(event, BacklogDone):
                return out
            if isinstance(event, Message):
                out.append(event.text)
    raise AssertionError("receive ended before the backlog marker")


async def retry(sender, to: str, msg_id: bytes, text: str) -> str:
    """Send ``text`` again under ``msg_id``, as a client whose first try got no answer."""
    body = payload.TextPayload(msg_id, text, now_ms(), sender.name, to).encode()
    async with open_client(sender) as client:
        return await client.send_payload(to, msg_id, body)


async def open_storages(configs, stack: AsyncExitStack) -> dict:
    """Open every node's storage here (an LMDB node would open its own), so that the
    test can look into the stores while the nodes run."""
    return {c.id: await stack.enter_async_context(open_storage(c.storage)) for c in configs}


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
async def test_retry_after_the_recipients_home_moved_is_a_duplicate(tmp_path, kind) -> None:
    key = nacl.signing.SigningKey.generate()
    old_configs = node_configs(2, cluster_key=key, storage=kind, data_dir=tmp_path / "data")
    configs = reshape_configs(old_configs, 4, cluster_key=key)
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with AsyncExitStack() as stores:
            storages = await open_storages(configs, stores)
            async with trio.open_nursery() as nursery:
                old = LocalCluster(nursery, old_configs)
                old.storages = storages
                await old.start_all()
                new_ring = LocalCluster(nursery, configs).ring
                for i in range(100):  # a recipient whose home moves, a sender whose does not
                    bob = make_account(tmp_path, f"bob{i}", old, stack)
                    if new_ring.home(bob.user_id).id != old.home_of(bob.user_id):
                        break
                alice = make_account(tmp_path, "alice", old, stack,
                                     accept=lambda u: new_ring.home(u).id == old.home_of(u))
                async with open_client(bob):
                    pass
                async with open_client(alice) as client:
                    seen = await client.send_text(bob.user_id, "seen before the move")
                assert await texts_of(bob) == ["seen before the move"]  # acknowledged
                async with open_client(alice) as client:
                    queued = await client.send_text(bob.user_id, "queued across the move")
                for node_id in list(old.scopes):
                    old.stop(node_id)

                new = LocalCluster(nursery, configs)
                new.storages = storages
                await new.start_all()
                was, now = old.home_of(bob.user_id), new.home_of(bob.user_id)
                while {r.kind for r in await new.storages[was].export_user(bob.user_id)} - {"seq"}:  # noqa: ASYNC110 - polling under fail_after
                    await trio.sleep(0.02)  # handed over (bounded by the deadline)
                st = new.storages[now]
                ids = {r.value for r in await st.export_user(bob.user_id) if r.kind == "dedupe"}
                assert {dedupe_id(alice.user_id, s.msg_id) for s in (seen, queued)} <= ids

                for sent, text in ((seen, "seen before the move"), (queued, "queued across the move")):
                    assert await retry(alice, bob.user_id, sent.msg_id, text) == "stored"
                # one copy: the queued message, handed over; neither retry queued another
                    assert await st.queue_length(bob.user_id, 0) == 1
                assert await texts_of(bob) == ["queued across the move"]
                assert await st.queue_length(bob.user_id, 0) == 0
                async with open_client(alice) as client:  # a new message still gets through
                    await client.send_text(bob.user_id, "after")
                assert await texts_of(bob) == ["after"]
                nursery.cancel_scope.cancel()
