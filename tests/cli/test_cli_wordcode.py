"""Linking with a short word code authenticated by SPAKE2 (cli/features/wordcode.py) over
real in-process nodes: it links; a wrong code changes nothing on the account; the
code's format; the relay sees only PAKE messages and sealed boxes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from contextlib import ExitStack

import pytest
import trio
from cli_cluster import make_account, run_cluster

from cli.client import open_client
from cli.errors import LinkFailed
from cli.features.link_mailbox import USED_MESSAGE
from cli.features.linkcode import LinkCodeError
from cli.features.linking import complete_link, open_link
from cli.features.wordcode import WORDS, Pake, WordCode, is_word_code
from cli.session.state import new_home, open_state
from relay.protocol.frames import LinkComplete

DEADLINE = 60


def test_word_codes_parse_and_a_wrong_password_gives_other_keys() -> None:
    code = WordCode("relay-eu-1", (4821).to_bytes(2, "big"), ("lamp", "moss", "path"))
    text = code.encode()
    assert text == "relay-eu-1-4821-lamp-moss-path" and len(text) < 40
    assert is_word_code(text.upper()) and WordCode.decode(f"  {text.upper()} ") == code
    for bad in ("n1-4821-lamp-moss", "n1-x-lamp-moss-pine", "n1-70000-lamp-moss-pine",
                "n1-1-lamp-moss-zzzz", "wa1-abc"):
        with pytest.raises(LinkCodeError):
            WordCode.decode(bad)
    assert len(set(WORDS)) == 256
    new, primary = Pake(code.words, primary=False), Pake(code.words, primary=True)
    assert new.finish(primary.message) == primary.finish(new.message)
    wrong = Pake(("lamp", "moss", "peak"), primary=True)
    assert Pake(code.words, primary=False).finish(wrong.message) != wrong.finish(new.message)


async def test_a_word_code_links_and_a_wrong_one_changes_nothing(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            bob.contacts["alice"] = "a" * 52
            async with open_client(bob) as client:
                before = bob.own_list().version
                # a wrong word: the primary cannot open the device's answer, publishes nothing
                async with open_link(client.url, "intruder", short=True) as pending:
                    code = WordCode.decode(pending.code)
                    other = next(w for w in WORDS if w != code.words[2])
                    wrong = WordCode(code.node_id, code.mailbox_id, (*code.words[:2], other))
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(pending.wait)  # it answers, then waits in vain
                        with pytest.raises(LinkFailed, match="does not decrypt") as typo:
                            await client.approve_link(wrong.encode())
                        assert "run 'wa-cli link --short' again on the new device" in str(
                            typo.value)
                        # the code is spent: the right words now are refused as used
                        with pytest.raises(LinkFailed, match=re.escape(USED_MESSAGE)) as again:
                            await client.approve_link(pending.code)
                        assert again.value.reason == "link_code_used"
                        assert "mistyped words" in USED_MESSAGE
                        nursery.cancel_scope.cancel()
                assert bob.own_list().version == before and not bob.pending_withdrawals

                with new_home(tmp_path / "laptop") as fresh:
                    async with open_link(client.url, "laptop", short=True) as pending:
                        assert is_word_code(pending.code) and len(pending.code) < 32
                        result = {}
                        async with trio.open_nursery() as nursery:
                            async def join():
                                result["linked"] = await complete_link(pending, fresh,
                                                                       client.url)
                            nursery.start_soon(join)
                            done = await client.approve_link(pending.code.upper())
                    linked = result["linked"]
            assert (done.device_id, done.name, done.version) == (1, "laptop", before + 1)
            assert linked.device_id == 1 and linked.user_id == bob.user_id
            assert linked.material.contacts == {"alice": "a" * 52}
            assert linked.material.proof is None  # the PAKE key authenticates it instead
        with open_state(tmp_path / "laptop") as laptop:
            assert laptop.user_id == bob.user_id and laptop.contacts == {"alice": "a" * 52}


async def test_wa_cli_link_short_and_devices_approve(tmp_path) -> None:
    """The word code through real wa-cli processes: link --short, devices approve CODE."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            bob = tmp_path / "bob"
            made = await trio.run_process([sys.executable, "-m", "cli", "--home", str(bob),
                                           "--json", "init", "--trust-on-first-use", "--name", "bob", "--relay", relay],
                                          capture_stdout=True, stdin=subprocess.DEVNULL)
            user_id = json.loads(made.stdout)["user_id"]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "cli", "--home", str(tmp_path / "laptop"), "--json",
                 "link", "--relay", relay, "--name", "laptop", "--short"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                buf = b""
                while b"\n" not in buf:
                    buf += await proc.stdout.receive_some()
                code = json.loads(buf.split(b"\n")[0])["code"]
                assert is_word_code(code)
                approved = await trio.run_process(
                    [sys.executable, "-m", "cli", "--home", str(bob), "--json", "devices",
                     "approve", code, "--yes"], capture_stdout=True, capture_stderr=True,
                    stdin=subprocess.DEVNULL, check=False)
                assert approved.returncode == 0, approved.stderr.decode()
                assert json.loads(approved.stdout)["name"] == "laptop"
                while (rest := await proc.stdout.receive_some()):
                    buf += rest
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            linked = json.loads(buf.split(b"\n")[1])
            assert linked == {"user_id": user_id, "device_id": 1}
            # not approved in time: the advice is the same kind of code again
            late = await trio.run_process(
                [sys.executable, "-m", "cli", "--home", str(tmp_path / "tablet"), "link",
                 "--relay", relay, "--name", "tablet", "--short", "--timeout", "0.3"],
                capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL, check=False)
            assert late.returncode == 1
            assert "not approved within 0.3 s" in late.stderr.decode()
            assert "Run 'wa-cli link --short' again" in late.stderr.decode()


async def test_a_word_code_whose_exchange_began_elsewhere_is_used(tmp_path) -> None:
    """Another approval's PAKE message reached the mailbox first (its device has not
    answered yet, so the mailbox holds no reply): the node refuses ours ``already_used``
    instead of pushing it to the device (which would take it for its sealed answer: "the
    relay tampered"), and the approval fails ``link_code_used``, changing nothing."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(bob) as client:
                before = bob.own_list().version
                async with open_link(client.url, "laptop", short=True) as pending:
                    code = WordCode.decode(pending.code)
                    first = Pake(code.words, primary=True)
                    await client.connection.request(  # the exchange that came first
                        LinkComplete, node_id=code.node_id, mailbox_id=code.mailbox_id,
                        body=first.message, more=True)
                    with pytest.raises(LinkFailed) as used:
                        await client.approve_link(pending.code)
                    assert str(used.value) == USED_MESSAGE
                    assert used.value.reason == "link_code_used"
            assert bob.own_list().version == before and not bob.pending_withdrawals
