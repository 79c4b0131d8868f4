"""The handoff's crash states, set up exactly: an old home killed after the new home
answered ``handoff_done`` but before it deleted the user (its ``out/`` marker and
the user's state are still there), and a new home holding a partial import."""

from __future__ import annotations

from contextlib import ExitStack

import trio
from cli_cluster import make_account

from cli.client import BacklogDone, Message, open_client
from relay.services.handoff import mark_prefix
from relay.testing import LocalCluster, node_configs, reshape_configs

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


async def moving_user(tmp_path, cluster, stack, new_ring, name):
    """An account (published) whose home changes from the old ring to ``new_ring``."""
    for i in range(60):
        state = make_account(tmp_path, f"{name}{i}", cluster, stack)
        if new_ring.home(state.user_id).id != cluster.home_of(state.user_id):
            async with open_client(state):
                pass
            return state
    raise AssertionError("no account moves")


async def test_resume_after_done_before_delete_and_after_partial_import(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            old = LocalCluster(nursery, node_configs(2))
            await old.start_all()
            configs = reshape_configs(old.configs, 4)
            new_ring = LocalCluster(nursery, configs).ring
            done_user = await moving_user(tmp_path, old, stack, new_ring, "d")
            partial_user = await moving_user(tmp_path, old, stack, new_ring, "p")
            sender = make_account(tmp_path, "s", old, stack)
            async with open_client(sender) as client:
                for user in (done_user, partial_user):
                    await client.send_text(user.user_id, "queued before")
            for node_id in list(old.scopes):
                old.stop(node_id)
            storages = old.storages
            for node_id in ("n3", "n4"):
                storages.setdefault(node_id, type(storages["n1"])())
            prefix = mark_prefix(new_ring.version)

            # done_user: the new home imported everything and answered done; the old
            # home was killed before deleting (its out/ marker and state remain)
            uid = done_user.user_id
            o, n = old.home_of(uid), new_ring.home(uid).id
            await storages[n].import_user(uid, await storages[o].export_user(uid, limit=10**6),
                                          reset=True)
            await storages[n].set_mark(f"{prefix}in/{uid}", b"1")
            await storages[o].set_mark(f"{prefix}out/{uid}", n.encode())
            # partial_user: half a batch reached the new home, nothing more
            pid = partial_user.user_id
            po, pn = old.home_of(pid), new_ring.home(pid).id
            records = await storages[po].export_user(pid, limit=10**6)
            await storages[pn].import_user(pid, records[: len(records) // 2], reset=True)

            new = LocalCluster(nursery, configs)
            new.storages = storages
            await new.start_all()
            for user, home in ((uid, n), (pid, pn)):
                prev = old.home_of(user)
                while {r.kind for r in await storages[prev].export_user(user)} - {"seq"}:  # noqa: ASYNC110 - polling under fail_after
                    await trio.sleep(0.02)  # handed over (bounded by the deadline)
                assert await storages[home].get_device_list(user) is not None
            async with open_client(sender) as client:
                for user in (done_user, partial_user):
                    await client.send_text(user.user_id, "sent after")
            for user in (done_user, partial_user):
                assert await texts_of(user) == ["queued before", "sent after"]
                assert user.relay_url == new.url(new.home_of(user.user_id))
            assert await storages[o].get_mark(f"{prefix}out/{uid}") is None
            nursery.cancel_scope.cancel()


async def test_new_account_while_its_old_home_still_hands_over(tmp_path) -> None:
    """n1 cannot finish (the new home of one of its users is down), so n4 still passes
    requests for users whose old home is n1 on to n1; a new account there is not held
    by n1, which says so (``moved``), and n4 serves it at once."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            old = LocalCluster(nursery, node_configs(2))
            await old.start_all()
            configs = reshape_configs(old.configs, 4)
            ring = LocalCluster(nursery, configs).ring
            for i in range(200):  # a user of n1 whose new home (n3) stays down
                stuck = make_account(tmp_path, f"stuck{i}", old, stack)
                if old.home_of(stuck.user_id) == "n1" and ring.home(stuck.user_id).id == "n3":
                    break
            async with open_client(stuck):
                pass
            for node_id in list(old.scopes):
                old.stop(node_id)
            new = LocalCluster(nursery, configs)
            new.storages = old.storages
            for node_id in ("n1", "n2", "n4"):
                await new.start(node_id)
            for i in range(200):  # new accounts: old home n1, new home n4
                fresh = make_account(tmp_path, f"fresh{i}", new, stack)
                if (new.home_of(fresh.user_id) == "n4"
                        and old.ring.home(fresh.user_id).id == "n1"):
                    break
            other = make_account(tmp_path, "other", new, stack, not_on=["n3"])
            fresh.relay_url = new.url("n1")
            async with open_client(fresh) as client:  # publishes, authenticates
                assert client.node_id == "n4"
            async with open_client(other) as client:
                await client.send_text(fresh.user_id, "welcome")
            assert await texts_of(fresh) == ["welcome"]
            assert await new.storages["n1"].get_device_list(stuck.user_id) is not None
            nursery.cancel_scope.cancel()
