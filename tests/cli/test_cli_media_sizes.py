"""A file message whose announced sizes disagree: the plaintext ``size`` is what the
automatic download limit of ``wa-cli recv`` was checked against, but the ciphertext
``ref.size`` is what is downloaded (any value at least ``size``). A contact could
announce a tiny file and have a receiver fetch up to its whole media quota by itself.
Real relay nodes on loopback, the sending client forging only its own payload."""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import trio
from cli_cluster import alice_and_bob, run_cluster

from cli.client import Message, open_client
from cli.commands.files import held_reason
from cli.features import media
from relay.net.backoff import Backoff

DEADLINE = 60
AUTO_MAX = 100_000


async def test_the_download_limit_counts_the_bytes_that_would_be_downloaded(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            bob.contacts["alice"] = alice.user_id  # a contact: only the size may hold it
            big = tmp_path / "big.bin"
            big.write_bytes(b"x" * (4 * AUTO_MAX))
            async with media.Reconnecting(alice, backoff=Backoff(0.05, 0.05)) as rc:
                att = await media.upload_file(rc, big)
                small = dataclasses.replace(att, size=10, name="small.txt")  # a lie
                await media.send_file(rc, bob.user_id, small, "", source=str(big))
            async with open_client(bob) as client:
                async for event in client.receive():
                    if isinstance(event, Message):
                        break
            entry = bob.find_history(event.msg_id.hex())
            assert entry["file"]["size"] == 10 and entry["file"]["ref"]["size"] > 4 * AUTO_MAX
            reason = held_reason(bob, entry, AUTO_MAX)
            assert reason is not None and "automatic download limit" in reason, reason
