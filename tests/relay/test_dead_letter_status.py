"""Issue 15, "The outbox never deletes what it acknowledged. An entry that cannot be
sent or parsed is kept aside (dead-letter, visible in ``wa-relay status`` and the logs
with its count)": an outbox entry that no longer parses is moved to the dead letters
at the node's start; ``/metrics`` counts it (``wa_relay_outbox_dead_letters``), the
status line shows ``dead_letters=1``, and the log names the count. Two in-process
nodes (LMDB), n1 with its admin listener."""

from __future__ import annotations

import dataclasses
import logging
import os

import msgpack
import trio
from relay_harness import device_homed_at, publish

from relay.admin.status import cluster_status, format_status, http_get, summarize_metrics
from relay.testing import LocalCluster, free_ports, node_configs
from storage.lmdb import LmdbStorage


async def test_a_dead_letter_is_counted_in_metrics_status_and_logs(nursery, tmp_path,
                                                                   caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay")
    configs = node_configs(2, storage="lmdb", data_dir=tmp_path)
    (admin_port,) = free_ports(1)
    configs[0] = dataclasses.replace(configs[0], admin_port=admin_port)
    cluster = LocalCluster(nursery, configs)
    alice = device_homed_at(cluster.ring, "n1")
    # a stored forward that no longer parses (a field of the wrong type), as an older or
    # damaged node could have left it in n1's outbox
    junk = msgpack.packb({"t": "forward", "id": 0, "msg_id": os.urandom(16),
                          "sender_user": alice.user_id, "sender_device": 0, "ts": "bad",
                          "recipients": []}, use_bin_type=True)
    async with LmdbStorage.open(cluster.data_dir("n1")) as st:
        await st.outbox_put("n2", junk)
    with trio.fail_after(20):
        await cluster.start_all()
        await publish(cluster.url("n1"), alice)
        admin = configs[0].admin_url
        while True:  # the outbox moves it at start; the gauge is read at each scrape
            status, body = await http_get(admin + "/metrics", 10)
            assert status == 200
            summary = summarize_metrics(body.decode())
            if summary.get("dead_letters"):
                break
            await trio.sleep(0.05)
        assert summary["dead_letters"] == 1 and summary["outbox"] == 0
        (n1, _) = await cluster_status(configs[0].cluster, {"n1": admin},
                                       cluster.ring.version)
        line = format_status(n1)
        assert "dead_letters=1" in line and "outbox=0" in line, line
    logged = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert logged and "(1 this run)" in logged[0], logged
