"""A word code serves one approval (docs/cli.md, ``link --short``), through real ``wa-cli``
processes and a real node: after ``echo n | wa-cli devices approve CODE`` the new
device's ``link --short`` said, and so did a second approve of the same code, "the
linking exchange does not decrypt: a wrong code, or the relay tampered with it", a
false tampering warning. Now the new device learns it was declined (under the PAKE key),
and a second approval, during the first one or after it, that the code was used
(``--json`` code ``link_code_used``). A relay that changes the PAKE messages or the
sealed answer is still called tampering."""

from __future__ import annotations

import json
import subprocess

import cli_procs
import trio
from cli_cluster import run_cluster
from cli_procs import Running
from wsmitm import Mitm, encode

from cli.features.wordcode import WORDS, Pake, is_word_code

DEADLINE = 60
COMMAND = 20  # seconds a command gets here
TAMPERED = "the relay tampered with it"


async def wa(home, *args, stdin: bytes | None = None):
    with trio.fail_after(COMMAND):  # a hang is a failure, not a stuck suite
        return await cli_procs.wa(home, *args, check=False, stdin=stdin)


async def start_link(home, relay: str, *args: str) -> tuple[Running, str]:
    """``wa-cli --json link --short`` at ``relay``; returns it and its word code."""
    new = await Running.start(home, "--json", "link", "--relay", relay, "--name", "laptop",
                              "--short", *args)
    code = (await new.json())["code"]
    assert is_word_code(code)
    return new, code


def error_of(proc) -> dict:
    """The ``{"code", "message"}`` of a ``--json`` error on stdout."""
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])["error"]


async def finished(new: Running) -> tuple[int, dict, str]:
    """The exit code, the last ``--json`` line and stderr of a finished ``link``."""
    out = b""
    while chunk := await new.proc.stdout.receive_some():
        out += chunk
    code, err = await new.finish()
    return code, json.loads(out.decode().strip().splitlines()[-1]), err


async def test_a_declined_word_code_is_declined_and_used_not_tampered(tmp_path):
    """Bob's approval shows the device and waits at its question; a second approval of
    the code meanwhile (another account's primary: bob's own home is locked by the
    first) is refused as used (its PAKE message never reaches the new device); bob
    answers "n": the new device says it was declined; bob's second approval after that
    is refused as used too. Nothing changed on either account."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            bob, carol, laptop = tmp_path / "bob", tmp_path / "carol", tmp_path / "laptop"
            await cli_procs.init_account(bob, "bob", relay)
            await cli_procs.init_account(carol, "carol", relay)
            new, code = await start_link(laptop, relay)
            first = await Running.start(bob, "devices", "approve", code,
                                        stdin=subprocess.PIPE)
            try:
                while not (await first.err_line()).startswith("key fingerprint:"):
                    pass  # the exchange is done; the question comes next

                during = await wa(carol, "--json", "devices", "approve", code, "--yes")
                assert during.returncode == 1, during.stderr
                assert error_of(during)["code"] == "link_code_used", during.stderr
                err = during.stderr.decode()
                assert "this code was already used; run 'wa-cli link --short' again" in err
                assert TAMPERED not in err

                await first.proc.stdin.send_all(b"n\n")
                status, err = await first.finish()
                assert status == 1
                assert "not approved; nothing changed (the new device was told it was " \
                       "declined)" in err

                status, last, err = await finished(new)
                assert status == 1, err
                assert last["error"]["code"] == "link_declined"
                assert "declined on the other device" in last["error"]["message"]
                assert TAMPERED not in err and "declined on the other device" in err
                assert not (laptop / "state.bin").exists()  # nothing saved

                after = await wa(bob, "--json", "devices", "approve", code, "--yes")
                assert after.returncode == 1 and error_of(after)["code"] == "link_code_used"
                assert TAMPERED not in after.stderr.decode()
            finally:
                await first.aclose()
                await new.aclose()
            for home in (bob, carol):
                listed = await wa(home, "--json", "devices", "list")
                assert [row["name"] for row in cli_procs.lines(listed)] == ["primary"]


def rewrite_link_data(mitm: Mitm, which: int, change) -> None:
    """Have ``mitm`` hand the new device ``change(body)`` in its ``which``-th ``link_data``
    (0: the primary's PAKE message, 1: the sealed answer)."""
    seen = [0]

    def to_client(frame, raw):
        if frame and frame.get("t") == "link_data":
            seen[0] += 1
            if seen[0] - 1 == which:
                return [encode({**frame, "body": change(frame["body"])})]
        return [raw]

    mitm.to_client = to_client


async def test_a_relay_changing_the_exchange_is_still_tampering(tmp_path):
    """A relay on the new device's path swaps the primary's SPAKE2 message for one of
    another password: the primary cannot open the device's answer and says so
    (tampering; ``--json`` code ``failed``, not ``link_code_used``), publishing nothing.
    Then, on a new code, it flips a bit of the sealed decline: the new device calls
    that tampering, not a decline."""
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
            relay = cluster.urls["n1"]
            mitm = Mitm(relay)
            await nursery.start(mitm.serve)
            bob = tmp_path / "bob"
            await cli_procs.init_account(bob, "bob", relay)

            other = Pake(tuple(WORDS[:3]), primary=True).message  # a well-formed forgery
            rewrite_link_data(mitm, 0, lambda body: other)
            new, code = await start_link(tmp_path / "laptop", mitm.url)
            try:
                approved = await wa(bob, "--json", "devices", "approve", code, "--yes")
                assert approved.returncode == 1
                assert error_of(approved)["code"] == "failed"
                assert TAMPERED in approved.stderr.decode()
                assert new.proc.returncode is None  # it heard nothing back: still waiting
            finally:
                await new.aclose()

            def flip(body: bytes) -> bytes:
                return body[:-1] + bytes([body[-1] ^ 1])

            rewrite_link_data(mitm, 1, flip)
            new, code = await start_link(tmp_path / "tablet", mitm.url)
            try:
                declined = await wa(bob, "devices", "approve", code, stdin=b"n\n")
                assert declined.returncode == 1
                assert "not approved; nothing changed" in declined.stderr.decode()
                status, last, err = await finished(new)
                assert status == 1 and last["error"]["code"] == "failed"
                assert TAMPERED in err and "declined" not in err
            finally:
                await new.aclose()
            listed = await wa(bob, "--json", "devices", "list")
            assert [row["name"] for row in cli_procs.lines(listed)] == ["primary"]
            assert not (tmp_path / "tablet" / "state.bin").exists()  # nothing saved
            nursery.cancel_scope.cancel()
