"""Cluster reshape with handoff on real in-process nodes (loopback, memory storage) and
real clients: 3 -> 5 -> 2 nodes with users on every home, linked devices, a group and
messages queued for offline devices; messages sent while homes move; clients whose
saved home was removed find their new home by themselves."""

from __future__ import annotations

import os
from contextlib import ExitStack

import nacl.signing
import trio
from cli_cluster import drain, make_account, quiet

from cli.client import Message, now_ms, open_client
from cli.errors import ConnectionFailed, ConnectionLost, SendUnknown
from cli.features import media, payload
from cli.features.group_messaging import create_group, send_group_text
from cli.features.linking import link_device
from cli.session.state import open_state
from relay.config.ring import Ring, score
from relay.net.backoff import Backoff
from relay.services.handoff import mark_prefix
from relay.testing import LocalCluster, node_configs, reshape_configs

DEADLINE = 60
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank")


#: signs every description of the test's cluster (the clients pin the first; a reshape
#: serves the next version, signed by the same key, as ``wa-relay sign-cluster`` does)
CLUSTER_KEY = nacl.signing.SigningKey.generate()


async def reshape(nursery, old: LocalCluster, n: int) -> LocalCluster:
    """Stop every node of ``old``, start the cluster reshaped to ``n`` nodes on the same
    storages (removed nodes too: they hand their users over, then stop)."""
    for node_id in list(old.scopes):
        old.stop(node_id)
    configs = reshape_configs([c for c in old.configs if c.id in old.ring], n,
                              cluster_key=CLUSTER_KEY)
    new = LocalCluster(nursery, configs)
    new.storages = old.storages
    await new.start_all()
    return new


async def wait_handed_over(cluster: LocalCluster) -> None:
    """Poll (bounded by the test's deadline) until every node of the new ring was told
    by every other node of the previous ring that it hands nothing more over."""
    ring = cluster.ring
    previous = [n.id for n in cluster.configs[0].previous_cluster]
    prefix = mark_prefix(ring.version)
    while True:
        done = True
        for node in ring.nodes:
            marks = await cluster.storages[node.id].marks(prefix + "complete/")
            if {f"{prefix}complete/{p}" for p in previous if p != node.id} - set(marks):
                done = False
        if done:
            return
        await trio.sleep(0.02)


async def send(state, to: str, text: str) -> None:
    """Send ``text`` as a user would while its home may be moving: a connection closed
    by the move (``moved``, 1001) is opened again; a send left without an answer is
    retried with the same message id (shown once)."""
    msg_id = None
    for _ in range(10):
        try:
            async with open_client(state) as client:
                if msg_id is None:
                    await client.send_text(to, text)
                else:
                    body = payload.TextPayload(msg_id, text, now_ms(), state.name, to).encode()
                    await client.send_payload(to, msg_id, body)
                return
        except SendUnknown as exc:
            msg_id = exc.msg_id
        except (ConnectionLost, ConnectionFailed):
            pass
    raise AssertionError(f"{text!r} could not be sent")


async def texts_of(state) -> list[tuple[str, str]]:
    async with open_client(state) as client:
        return [(e.sender_user, e.text) for e in await drain(client)
                if isinstance(e, Message) and e.direction == "in"]


async def check_homes(cluster: LocalCluster, user_ids: list[str], devices: dict[str, int],
                      media: dict[str, list[bytes]]) -> None:
    """Every user's state is at its home only: device list there, one-time keys for every
    device, the blobs it uploaded (``media``); nothing but seq counters anywhere else, and
    no copy of its blobs."""
    for uid in user_ids:
        home = cluster.ring.home(uid).id
        st = cluster.storages[home]
        assert await st.get_device_list(uid) is not None, (uid[:8], home)
        for d in range(devices[uid]):
            assert await st.count_one_time_keys(uid, d) > 0
        assert await st.media_owned(uid) == media.get(uid, []), (uid[:8], home)
        for other, other_st in cluster.storages.items():
            if other != home:
                assert {r.kind for r in await other_st.export_user(uid)} <= {"seq"}, other
                assert await other_st.media_owned(uid) == [], other
                for media_id in media.get(uid, []):
                    assert await other_st.media_status(media_id) is None, other


def _moves_to_a_new_node(user_id: str) -> bool:
    """Whether rendezvous hashing over n1..n5 puts ``user_id`` on n4 or n5 (the score
    depends on node ids only: relay.config.ring)."""
    scores = {f"n{k}": score(f"n{k}", user_id) for k in range(1, 6)}
    return max(scores, key=lambda n: (scores[n], n)) in ("n4", "n5")


async def test_reshape_3_5_2_moves_every_home_and_keeps_every_message(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            cluster = LocalCluster(nursery, node_configs(3, cluster_key=CLUSTER_KEY))
            await cluster.start_all()
            users = {}
            for i, name in enumerate(NAMES):  # homes on every node
                # dave's home moves at 3 -> 5 (to n4 or n5), so that reshape moves someone
                users[name] = make_account(tmp_path, name, cluster, stack,
                                           not_on=[f"n{k}" for k in range(1, 4)
                                                   if k != i % 3 + 1],
                                           accept=_moves_to_a_new_node if name == "dave"
                                           else None)
            ids = {n: s.user_id for n, s in users.items()}
            laptops = {}
            for name in ("alice", "bob"):
                async with open_client(users[name]) as client:
                    await link_device(client, tmp_path / f"{name}-laptop", "laptop",
                                      history=False)
                laptops[name] = quiet(stack.enter_context(open_state(tmp_path / f"{name}-laptop")))
            for name in NAMES[2:]:
                async with open_client(users[name]):
                    pass
            async with open_client(users["alice"]) as client:
                await create_group(client, "team", [ids[n] for n in NAMES if n != "alice"])
            for state in [*users.values(), *laptops.values()]:
                await texts_of(state)  # everyone has the group; queues empty
            expected: dict[str, list[tuple[str, str]]] = {n: [] for n in NAMES}

            async def send_round(tag: str, *, group: bool = True) -> None:
                for i, name in enumerate(NAMES):
                    to = NAMES[(i + 1) % len(NAMES)]
                    for k in range(2):
                        await send(users[name], ids[to], f"{tag} {name}->{to} {k}")
                        expected[to].append((ids[name], f"{tag} {name}->{to} {k}"))
                if group:
                    async with open_client(users["alice"]) as client:
                        await send_group_text(client, "team", f"{tag} group")
                    for name in NAMES[1:]:
                        expected[name].append((ids["alice"], f"{tag} group"))

            photo = tmp_path / "photo.bin"  # a file whose blob moves with frank's home
            data = os.urandom(300_000)  # more than one chunk
            await trio.Path(photo).write_bytes(data)
            async with media.Reconnecting(users["frank"], backoff=Backoff(0.05, 0.05)) as rc:
                att = await media.upload_file(rc, photo)
                sent_file = await media.send_file(rc, ids["alice"], att, "a photo")
            expected["alice"].append((ids["frank"], "a photo"))
            await send_round("before")  # queued for offline devices
            cluster = await reshape(nursery, cluster, 5)
            await send_round("during", group=False)  # while homes move (or just after)
            await wait_handed_over(cluster)
            await send_round("between")
            devices = {uid: 2 if n in laptops else 1 for n, uid in ids.items()}
            blobs = {ids["frank"]: [att.media_id]}
            await check_homes(cluster, list(ids.values()), devices, blobs)
            moved_5 = sum(Ring(cluster.configs[0].previous_cluster).home(u).id
                          != cluster.ring.home(u).id for u in ids.values())
            assert moved_5 >= 1

            cluster = await reshape(nursery, cluster, 2)
            await send_round("during2", group=False)
            await wait_handed_over(cluster)
            await send_round("after")
            await check_homes(cluster, list(ids.values()), devices, blobs)
            for removed in ("n3", "n4", "n5"):  # drained, then stopped by themselves
                while not cluster.ended(removed):  # noqa: ASYNC110 - polling under fail_after
                    await trio.sleep(0.02)
                st = cluster.storages[removed]
                assert await st.list_users() == [], removed
                assert await st.outbox_list() == [], removed
                assert await st.media_usage() == 0, removed

            # every queued message exactly once, in order, on every device; the clients
            # whose saved home was removed find their home by themselves
            for name in NAMES:
                got = await texts_of(users[name])
                assert got == expected[name], name
                assert users[name].relay_url == cluster.urls[cluster.home_of(ids[name])]
            for name, laptop in laptops.items():
                assert await texts_of(laptop) == expected[name], name
            assert att.node_id == "n3"  # uploaded to a node that the reshape removed
            async with open_client(users["alice"]) as client:
                entry = users["alice"].find_history(sent_file.msg_id.hex())
                info = await media.fetch_history_file(client, entry, tmp_path / "downloads")
            assert await trio.Path(info["path"]).read_bytes() == data, info
            # every user sends and receives afterwards
            expected = {n: [] for n in NAMES}
            await send_round("last")
            for name in NAMES:
                assert await texts_of(users[name]) == expected[name]
            nursery.cancel_scope.cancel()
