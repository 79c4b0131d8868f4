"""Linking hands over the account's signed group states (not its Megolm keys), and history
sync says how much of the history fit in the linking frame."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack

import cli_procs
import msgpack
import nacl.signing
import pytest
import trio
from cli_cluster import drain, make_account, quiet, run_cluster

from cli.client import Message, open_client
from cli.features import linkcode
from cli.features.group_messaging import create_group, send_group_text
from cli.features.linkcode import Material
from cli.features.linking import adopt_groups, link_device
from cli.session import crypto, groups
from cli.session.state import create_state, open_state

DEADLINE = 60
UID = "b" * 52


def _signed_list():
    return crypto.make_device_list(crypto.new_account_key(), 1, [])[1]


def _history(n: int, text_len: int) -> list[dict]:
    return [{"id": f"{i:032x}", "direction": "in", "peer": UID, "from": UID, "ts": i,
             "type": "text", "text": "x" * text_len, "from_name": "b", "from_device": 0}
            for i in range(n)]


def test_trimmed_history_is_counted_for_both_sides() -> None:
    m = Material(UID, 1, _signed_list(), "bob", {}, _history(500, 8000))
    data, kept = m.fit()
    assert len(data) <= linkcode.MATERIAL_BUDGET
    assert 50 < kept < 500
    back = Material.decode(data)
    assert len(back.history) == kept
    assert back.history_omitted == 500 - kept
    assert [e["ts"] for e in back.history] == list(range(500 - kept, 500))  # the newest
    assert m.encode() == data


def test_small_budget_trims_to_exact_counts_and_untrimmed_says_zero() -> None:
    m = Material(UID, 1, _signed_list(), "bob", {}, _history(10, 1000))
    data, kept = m.fit()
    assert kept == 10 and Material.decode(data).history_omitted == 0
    empty = len(Material(UID, 1, m.device_list, "bob").encode())
    entry = len(msgpack.packb(m.history[0], use_bin_type=True))
    # room for exactly three entries (plus the reserve for the array header and count)
    data, kept = m.fit(empty + 16 + 3 * entry + entry // 2)
    back = Material.decode(data)
    assert kept == 3 and len(back.history) == 3 and back.history_omitted == 7
    with pytest.raises(ValueError, match="does not fit"):
        m.fit(empty // 2)


def _group(key: nacl.signing.SigningKey, members: list[str], *, creator: str | None = None,
           admins: list[str] | None = None, version: int = 1):
    me = crypto.account_user_id(key)
    return groups.make_state(key, group_id=groups.new_group_id(), name="team",
                             members=[me, *members], admins=admins or [me], version=version,
                             creator=creator or me)


def test_group_states_travel_and_are_verified_like_received_ones(tmp_path) -> None:
    alice_key, bob_key = crypto.new_account_key(), crypto.new_account_key()
    bob = crypto.account_user_id(bob_key)
    state_ok, signed_ok = _group(alice_key, [bob])
    # bob, not an admin of the group he claims, "creates" version 1 in alice's name
    _, forged = _group(bob_key, [], creator=crypto.account_user_id(alice_key))
    tampered = groups.SignedGroupState(signed_ok.body.replace(b"team", b"meat"),
                                       signed_ok.signature)
    m = Material(UID, 1, _signed_list(), "bob", groups=[signed_ok, forged, tampered])
    back = Material.decode(m.encode())
    assert back.groups == [signed_ok, forged, tampered]

    with create_state(tmp_path / "laptop", name="bob", relay_url="ws://127.0.0.1:1") as state:
        assert adopt_groups(state, back.groups) == 1
        assert list(state.groups.groups) == [state_ok.group_id]
        assert state.groups.find("team").state == state_ok
        assert state.groups.inbound == {} and state.groups.outbound == {}


async def _events(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


def _texts(events) -> list[tuple[str, str, str]]:
    return [(e.text, e.direction, e.group) for e in events if isinstance(e, Message)]


async def test_laptop_linked_after_the_group_lists_and_sends_to_it(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack)
            carol = make_account(tmp_path, "carol", cluster, stack)
            for s in (bob, carol):
                async with open_client(s):
                    pass
            async with open_client(alice) as client:
                made = await create_group(client, "team", [bob.user_id, carol.user_id])
                await send_group_text(client, "team", "before the laptop")
                linked = await link_device(client, tmp_path / "alice-laptop", "laptop")
            assert linked.material.groups == [alice.groups.groups[made.group_id].signed]
            laptop = quiet(stack.enter_context(open_state(tmp_path / "alice-laptop")))
            # the laptop knows the group from the material alone ...
            assert laptop.groups.find("team").state == made
            # ... and its synced history points at it
            synced = [e for e in laptop.history if e.get("group_id") == made.hex_id]
            assert [e["text"] for e in synced] == ["before the laptop"]
            # but holds no Megolm key of anything sent before it was linked
            assert laptop.groups.inbound == {} and laptop.groups.outbound == {}

            async with open_client(laptop) as client:
                result = await send_group_text(client, "team", "from the laptop")
            assert result.status == "stored" and result.name == "team"
            assert laptop.groups.outbound[made.group_id].session.message_index == 1

            for member in (bob, carol):
                assert _texts(await _events(member)) == [
                    ("before the laptop", "in", "team"), ("from the laptop", "in", "team")]
            assert _texts(await _events(alice)) == [("from the laptop", "out", "team")]

            # alice's primary sends again: the laptop gets that (current key), nothing older
            async with open_client(alice) as client:
                await send_group_text(client, "team", "after the link")
            assert _texts(await _events(laptop)) == [("after the link", "out", "team")]
            assert bob.groups.find("team").state.members == tuple(
                sorted([alice.user_id, bob.user_id, carol.user_id]))


async def _read_all(stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def _wa(home, *args) -> subprocess.CompletedProcess:
    return await cli_procs.wa(home, *args)


async def test_cli_tells_both_sides_when_history_was_trimmed(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            made = json.loads((await _wa(tmp_path / "a", "--json", "init", "--trust-on-first-use", "--name", "alice",
                                         "--relay", relay)).stdout)
            me = made["user_id"]
            with open_state(tmp_path / "a") as alice:
                for i in range(300):
                    alice.history.append({"id": f"{i:032x}", "direction": "out", "peer": me,
                                          "from": me, "ts": i, "type": "text",
                                          "text": "y" * 5000, "from_name": "alice",
                                          "from_device": 0, "resends": 0})
                alice.save()
            link = await trio.lowlevel.open_process(
                [sys.executable, "-m", "cli", "--home", str(tmp_path / "new"), "link",
                 "--relay", relay, "--name", "laptop"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            stack.callback(lambda: link.returncode is None and link.kill())
            first = b""
            while b"\n" not in first:
                chunk = await link.stdout.receive_some()
                assert chunk, "link ended before printing its code"
                first += chunk
            code, rest = first.split(b"\n", 1)
            approved = await _wa(tmp_path / "a", "--json", "devices", "approve",
                                 code.decode(), "--yes")
            answer = json.loads(approved.stdout)
            assert answer["history_total"] == 300 and 50 < answer["history_sent"] < 300
            omitted = 300 - answer["history_sent"]
            assert (f"sent the newest {answer['history_sent']} of 300 recent messages; "
                    f"{omitted} older ones did not fit") in approved.stderr.decode()
            out, err = {}, {}

            async def read(name, stream, into):
                into[name] = await _read_all(stream)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, "out", link.stdout, out)
                nursery.start_soon(read, "err", link.stderr, err)
            assert await link.wait() == 0, err["err"].decode()
            assert "linked as device 1" in (rest + out["out"]).decode()
            assert (f"imported {answer['history_sent']} messages ({omitted} older messages "
                    "did not fit), 0 contacts and 0 groups") in err["err"].decode()
