"""Two processes of one node (here two ``serve_node`` in one Trio run, each with its
own PostgreSQL storage on one schema, as two processes would have): what one
commits reaches the other's in-memory state. A device removed through process A
loses its live connection on process B at once, and B refuses it afterwards
(B dropped its cached device list)."""

from __future__ import annotations

import dataclasses
import hashlib
from contextlib import ExitStack, asynccontextmanager
from functools import partial

import pytest
import trio

from cli.client import Message, init_account, open_client
from cli.errors import ConnectionLost, DeviceRemoved
from cli.features import actions
from cli.features.linking import link_device
from cli.features.posting import post_text
from cli.session.state import create_state, open_state
from relay.config.ring import NodeInfo
from relay.node import serve_node
from relay.testing import free_ports, node_configs

DEADLINE = 30


@asynccontextmanager
async def nullcontext_async(client):  # noqa: ANN001, ANN201
    yield client


async def test_a_device_removed_on_one_process_is_cut_off_on_the_other(
        tmp_path, postgres_db: str, request: pytest.FixtureRequest) -> None:
    schema = "s_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    [base] = node_configs(1)
    ports = free_ports(2)
    urls = tuple(f"ws://127.0.0.1:{p}" for p in ports)
    info = NodeInfo(base.id, urls[0], bytes(base.signing_key.verify_key), urls)
    storage = f"{postgres_db}&schema={schema}&notify=true"
    configs = [dataclasses.replace(base, port=p, cluster=(info,), storage=storage)
               for p in ports]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(partial(serve_node, cfg))
            with ExitStack() as stack:
                alice = stack.enter_context(
                    create_state(tmp_path / "alice", name="alice", relay_url=urls[0]))
                init_account(alice)
                async with open_client(alice) as primary:  # on A
                    await link_device(primary, tmp_path / "laptop", "laptop", history=False)
                    with open_state(tmp_path / "laptop") as laptop:
                        laptop.relay_url = urls[1]
                        device_id = laptop.device_id
                        async with open_client(laptop) as on_b:  # on B
                            assert on_b.url == urls[1]
                            receiving = on_b.receive()
                            await primary.remove_device(device_id)  # through A
                            with pytest.raises(ConnectionLost):
                                async for _event in receiving:
                                    pass
                        with pytest.raises(DeviceRemoved):
                            async with open_client(laptop):
                                pass
            nursery.cancel_scope.cancel()


async def test_typing_reaches_a_device_connected_to_the_other_process(
        tmp_path, postgres_db: str, request: pytest.FixtureRequest) -> None:
    """An ephemeral send (typing) pushed by process A reaches bob's device connected to
    process B (nothing is stored, so only the notification carries it), and one to
    A itself as before."""
    schema = "s_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    [base] = node_configs(1)
    ports = free_ports(2)
    urls = tuple(f"ws://127.0.0.1:{p}" for p in ports)
    info = NodeInfo(base.id, urls[0], bytes(base.signing_key.verify_key), urls)
    storage = f"{postgres_db}&schema={schema}&notify=true"
    configs = [dataclasses.replace(base, port=p, cluster=(info,), storage=storage)
               for p in ports]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(partial(serve_node, cfg))
            with ExitStack() as stack:
                alice = stack.enter_context(
                    create_state(tmp_path / "alice", name="alice", relay_url=urls[0]))
                bob = stack.enter_context(
                    create_state(tmp_path / "bob", name="bob", relay_url=urls[1]))
                init_account(alice)
                init_account(bob)
                bob.contacts["alice"] = alice.user_id
                async with open_client(alice) as on_a, open_client(bob) as on_b:
                    assert (on_a.url, on_b.url) == urls
                    receiving = on_b.receive()
                    # a stored message first: once it is in, bob's device is streaming
                    await post_text(alice, lambda: nullcontext_async(on_a), "hi", to=bob.user_id)
                    async for event in receiving:
                        if isinstance(event, Message):
                            break
                    assert event.text == "hi"
                    for active in (True, False):
                        assert await actions.typing(on_a, bob.user_id, active) == 1
                        async for event in receiving:
                            if isinstance(event, Message):
                                break
                        assert (event.type, event.sender_user) == ("typing", alice.user_id)
                        assert event.extra == {"typing": active}
            nursery.cancel_scope.cancel()
