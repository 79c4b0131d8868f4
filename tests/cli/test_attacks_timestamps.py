"""Times that come from others: a message's ``ts`` is the sender's word (inside the
ciphertext, any int) and a device's "last seen" the relay's (the envelope's ``ts``).
A time no calendar shows broke ``wa-cli recv`` and ``history`` for good (``ValueError:
year ... is out of range``; the message stayed in the inbox and failed every next
``recv``): any stranger could do it. Real ``wa-cli`` processes for the receiver."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import cli_procs
import trio
from cli_cluster import make_account, publish, run_cluster

from cli.client import open_client
from cli.features import payload
from cli.features.sending import send_payload

DEADLINE = 60
TIMES = (10**17, -10**17, 2**63 - 1)  # ms: year 3 million, before year 1, the largest


async def test_a_sender_time_out_of_any_calendar_is_shown_not_fatal(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            made = await cli_procs.wa(tmp_path / "bob", "--json", "init", "--trust-on-first-use",
                                      "--name", "bob", "--relay", cluster.urls["n1"])
            bob = json.loads(made.stdout)["user_id"]
            await cli_procs.wa(tmp_path / "bob", "settings", "--requests", "show")
            mallory = make_account(tmp_path, "mallory", cluster, stack)
            await publish(mallory)
            async with open_client(mallory) as client:
                for ts in TIMES:
                    msg_id = os.urandom(16)
                    p = payload.TextPayload(msg_id, f"sent at {ts}", ts, "mallory", bob)
                    await send_payload(client, bob, msg_id, p.encode())

            got = await cli_procs.wa(tmp_path / "bob", "recv", "--timeout", "0.5")
            rows = got.stdout.decode().splitlines()
            assert [row.split("] ", 1)[0] for row in rows] == [f"[?ts={ts}" for ts in TIMES]
            assert all(row.endswith(f"sent at {ts}") for row, ts in zip(rows, TIMES, strict=True))
            shown = await cli_procs.wa(tmp_path / "bob", "history")
            assert shown.stdout.decode().splitlines()[-3:] == rows
            as_json = cli_procs.lines(await cli_procs.wa(tmp_path / "bob", "--json", "history"))
            assert [m["ts"] for m in as_json if m["type"] == "text"] == list(TIMES)
            again = await cli_procs.wa(tmp_path / "bob", "recv", "--timeout", "0.2")
            assert b"sent at" not in again.stdout  # shown once


def test_a_relay_time_out_of_any_calendar_in_devices_list():
    """``devices list`` shows the relay's ``ts`` of a device's last message."""
    from cli.commands.devices import _clock

    assert [_clock(ts) for ts in TIMES] == [f"?ts={ts}" for ts in TIMES]
    assert _clock(None) == "-"
