"""Scanning word-code mailbox numbers (attack9) against real nodes on 127.0.0.1.

A word code's mailbox id is 2 bytes (65,536 numbers), and ``link_fetch`` /
``link_complete`` were not rate-limited: one cheap account could probe every number
of a node in seconds, find each open word-code mailbox and spoil it with its own
``link_complete {more}`` (its owner's approval then fails ``already_used``). Misses
(``not_found``, ``already_used``) now cost a ``link_miss`` token per account and per
address, and a client with none left is refused before the mailbox is looked at, so
a scanner learns nothing more once it is out of tokens, while an honest primary
(one miss at most, and polls that hit) is not slowed down.
"""

from __future__ import annotations

import os

import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, session

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import Error, LinkComplete, LinkData, LinkFetch, LinkInfo, LinkOpen, Ok

INFO = b"\x84pake A message of the new device"
BURST = 5


async def test_a_scanner_of_word_code_numbers_is_stopped_before_it_finds_one(nursery) -> None:
    abuse = AbuseLimits(link_miss_rate=0.001, link_miss_burst=BURST)
    cluster = Cluster(nursery, make_configs(1, abuse=abuse))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(20):
        scanner, primary = UserDevice(), UserDevice()
        await publish(url, scanner)
        await publish(url, primary)
        async with connect(url, local_address="127.0.0.3") as new:
            await new.hello()
            opened = await new.request(LinkOpen(id=2, device_info=INFO, short=True))
            box = opened.mailbox_id
            assert len(box) == 2
            wrong = [n.to_bytes(2, "big") for n in range(300) if n.to_bytes(2, "big") != box]
            async with session(url, scanner) as s:
                answers = []
                for i, mailbox_id in enumerate(wrong[:2 * BURST]):
                    answers.append(await s.request(LinkFetch(id=10 + i, node_id="n1",
                                                             mailbox_id=mailbox_id)))
                codes = [a.code for a in answers if isinstance(a, Error)]
                assert codes == ["not_found"] * BURST + ["rate_limited"] * BURST, codes
                assert all(a.retry_after_ms > 0 for a in answers[BURST:])
                assert answers[BURST].message.startswith(
                    "too many wrong, used or expired linking codes; retry in "), answers[BURST]
                # out of tokens: the real number tells the scanner nothing, and its
                # link_complete {more} does not spoil the new device's code
                probe = await s.request(LinkFetch(id=40, node_id="n1", mailbox_id=box))
                assert isinstance(probe, Error) and probe.code == "rate_limited", probe
                spoil = await s.request(LinkComplete(id=41, node_id="n1", mailbox_id=box,
                                                     body=b"not a PAKE message", more=True))
                assert isinstance(spoil, Error) and spoil.code == "rate_limited", spoil
            # the honest primary (another account, another address) still links: its
            # fetch, its PAKE message, polls and final complete cost nothing
            async with session(url, primary) as p:
                for i in range(3 * BURST):
                    info = await p.request(LinkFetch(id=50 + i, node_id="n1", mailbox_id=box))
                    assert info == LinkInfo(id=50 + i, device_info=INFO)
                assert await p.request(LinkComplete(id=70, node_id="n1", mailbox_id=box,
                                                    body=b"B", more=True)) == Ok(id=70)
                assert await new.recv() == LinkData(id=0, body=b"B")
                sealed = os.urandom(64)
                assert await p.request(LinkComplete(id=71, node_id="n1", mailbox_id=box,
                                                    body=sealed)) == Ok(id=71)
                assert await new.recv() == LinkData(id=0, body=sealed)


async def test_misses_are_counted_per_address_too(nursery) -> None:
    """Fresh accounts from one address share the address's bucket
    (``address_rate_factor`` times an account's)."""
    abuse = AbuseLimits(link_miss_rate=0.001, link_miss_burst=2, address_rate_factor=2.0,
                        account_create_burst=100)
    cluster = Cluster(nursery, make_configs(1, abuse=abuse))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(20):
        codes = []
        for a in range(4):
            scanner = UserDevice()
            await publish(url, scanner)
            async with session(url, scanner) as s:
                for i in range(2):
                    answer = await s.request(LinkFetch(id=10 + i, node_id="n1",
                                                       mailbox_id=(a * 2 + i).to_bytes(2, "big")))
                    assert isinstance(answer, Error)
                    codes.append(answer.code)
        assert codes == ["not_found"] * 4 + ["rate_limited"] * 4, codes
