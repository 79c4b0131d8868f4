"""The admin listener of in-process nodes: /metrics (parsed with prometheus_client's own
parser, counters moving as messages flow), /health, /ready, and what it refuses."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import trio
from prometheus_client.parser import text_string_to_metric_families
from relay_harness import device_homed_at, publish, session

from relay.admin.status import http_get, summarize_metrics
from relay.protocol.frames import Ack, Deliver, Send, Sent, Sync
from relay.testing import LocalCluster, free_ports, node_configs


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    status, body = await http_get(url + "/metrics", 10)
    assert status == 200
    return _samples(body.decode())


def _admin_configs(n: int, tmp_path) -> list:
    configs = node_configs(n, storage="lmdb", data_dir=tmp_path)
    return [dataclasses.replace(c, admin_port=p)
            for c, p in zip(configs, free_ports(n), strict=True)]


async def test_metrics_health_ready_and_counters_that_move(nursery, tmp_path) -> None:
    cluster = LocalCluster(nursery, _admin_configs(2, tmp_path))
    with trio.fail_after(30):
        await cluster.start_all()
        admin = {c.id: c.admin_url for c in cluster.configs}
        before = await _metrics(admin["n2"])
        assert before[("wa_relay_envelopes_stored_total", ())] == 0
        info = [k for k in before if k[0] == "wa_relay_info"]
        assert dict(info[0][1])["node"] == "n2" and before[info[0]] == 1
        alice, bob = device_homed_at(cluster.ring, "n1"), device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        mid = os.urandom(16)
        async with session(cluster.url("n1"), alice) as a:
            sent = await a.request(Send(id=2, msg_id=mid, recipients=[bob.recipient(b"c" * 100)]))
            assert sent == Sent(id=2, status="stored")
        after = await _metrics(admin["n2"])
        assert after[("wa_relay_envelopes_stored_total", ())] == 1
        assert after[("wa_relay_envelope_bytes_stored_total", ())] >= 100
        assert after[("wa_relay_queued_envelopes", ())] == 1
        assert after[("wa_relay_queued_bytes", ())] >= 100  # the envelope, body included
        assert after[("wa_relay_users", ())] == 1  # bob's device list
        summary = summarize_metrics((await http_get(admin["n2"] + "/metrics", 10))[1].decode())
        assert (summary["users"], summary["queued"]) == (1, 1) and summary["queued_bytes"] >= 100
        assert after[("wa_relay_commit_batch_ops_count", ())] > before.get(
            ("wa_relay_commit_batch_ops_count", ()), 0)
        assert after[("wa_relay_commit_seconds_count", ())] >= 1
        assert after[("wa_relay_frames_received_total", ())] > before[
            ("wa_relay_frames_received_total", ())]  # the peer's forward
        assert after[("wa_relay_storage_bytes", (("kind", "file"),))] > 0
        assert after[("wa_relay_storage_bytes", (("kind", "disk_free"),))] > 0
        assert after[("wa_relay_peer_link_up", (("peer", "n1"),))] in (0, 1)
        n1 = await _metrics(admin["n1"])
        assert n1[("wa_relay_connections_accepted_total", ())] >= 2  # publish + session
        assert n1[("wa_relay_outbox_entries", (("peer", "n2"),))] == 0
        assert n1[("wa_relay_forwards_total", (("peer", "n2"), ("result", "stored")))] == 1
        async with session(cluster.url("n2"), bob) as b:
            live = await _metrics(admin["n2"])
            assert live[("wa_relay_connections", (("kind", "device"),))] == 1
            await b.send(Sync(id=2))
            frame = await b.recv()
            assert isinstance(frame, Deliver) and frame.items[0].envelope.msg_id == mid
            await b.send(Ack(id=3, seq=frame.items[-1].seq))
            while True:  # the ack has no answer: poll the counter (bounded by fail_after)
                done = await _metrics(admin["n2"])
                if done[("wa_relay_envelopes_acked_total", ())] == 1:
                    break
                await trio.sleep(0.02)
            assert done[("wa_relay_queued_envelopes", ())] == 0
            assert done[("wa_relay_queued_bytes", ())] == 0
            assert summarize_metrics((await http_get(admin["n2"] + "/metrics", 10))[1].decode())[
                "devices"] == 1
        status, body = await http_get(admin["n2"] + "/health", 10)
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["node"] == "n2"
        assert health["ring"] == cluster.ring.version and health["url"] == cluster.url("n2")
        status, body = await http_get(admin["n2"] + "/ready", 10)
        assert (status, json.loads(body)) == (200, {"node": "n2", "ready": True})
        status, _ = await http_get(admin["n2"] + "/nope", 10)
        assert status == 404


async def test_outbox_and_forward_counters_follow_a_peer_outage(nursery, tmp_path) -> None:
    """A forward to a stopped peer is counted ``queued``; once the peer is back the
    outbox delivers it and counts it ``delivered``."""
    cluster = LocalCluster(nursery, _admin_configs(2, tmp_path))
    with trio.fail_after(30):
        await cluster.start_all()
        admin = cluster.config("n1").admin_url
        alice, bob = device_homed_at(cluster.ring, "n1"), device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        async with session(cluster.url("n1"), alice) as a:
            cluster.stop("n2")
            sent = await a.request(Send(id=2, msg_id=os.urandom(16),
                                        recipients=[bob.recipient(b"c" * 10)]))
            assert sent == Sent(id=2, status="queued")
        queued = await _metrics(admin)
        assert queued[("wa_relay_forwards_total", (("peer", "n2"), ("result", "queued")))] == 1
        assert queued[("wa_relay_outbox_entries", (("peer", "n2"),))] == 1
        await cluster.start("n2")
        while True:  # the outbox retries by itself: poll the counter (bounded by fail_after)
            done = await _metrics(admin)
            if done.get(("wa_relay_outbox_done_total", (("how", "delivered"),))) == 1:
                break
            await trio.sleep(0.05)
        assert done[("wa_relay_outbox_entries", (("peer", "n2"),))] == 0


def test_the_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    from pathlib import Path

    from relay.admin.metrics import NodeMetrics

    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json")
                           .read_text())
    names = {s.name for family in NodeMetrics("n1", "0" * 64).registry.collect()
             for s in family.samples} | {
        "wa_relay_refusals_total", "wa_relay_storage_refusals_total",  # labelled: no sample yet
        "wa_relay_outbox_entries", "wa_relay_peer_link_up", "wa_relay_connections",
        "wa_relay_storage_bytes", "wa_relay_handoff_users_stuck"}
    used = {m for panel in dashboard["panels"] for t in panel["targets"]
            for m in re.findall(r"\bwa_relay_\w+", t["expr"])}
    assert len(dashboard["panels"]) >= 10 and used and used <= names, used - names
