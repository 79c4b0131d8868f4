"""Logging of a ``wa-relay`` process: the dictConfig set-up, JSON lines, SIGHUP reopening
(logrotate), Trio's accept errors (EMFILE) rate-limited into the node log."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import signal
import subprocess
import time

import pytest
import trio
from relay_harness import connect

from relay.admin.logs import JsonFormatter, RateLimitFilter, logging_dict
from relay.testing import LoggedProcess, free_base_port, node_configs, tool


def test_json_formatter_and_rate_limit_filter() -> None:
    record = logging.LogRecord("wa_relay.node.n1", logging.INFO, __file__, 1, "hello %s",
                               ("x",), None)
    obj = json.loads(JsonFormatter().format(record))
    assert obj["message"] == "hello x" and obj["level"] == "INFO"
    assert obj["logger"] == "wa_relay.node.n1" and obj["ts"].endswith("+00:00")
    limit = RateLimitFilter(interval=3600)
    records = [logging.LogRecord("trio.serve_listeners", logging.ERROR, __file__, 1,
                                 "accept returned %s", ("EMFILE",), None) for _ in range(5)]
    assert [limit.filter(r) for r in records] == [True, False, False, False, False]
    limit._last -= 3600  # the interval has passed
    late = logging.LogRecord("trio.serve_listeners", logging.ERROR, __file__, 1,
                             "accept returned %s", ("EMFILE",), None)
    assert limit.filter(late)
    assert late.getMessage() == "accept returned EMFILE (4 more like this in the last 3600 s)"


def test_log_level_override_applies_to_every_node() -> None:
    configs = node_configs(2)
    conf = logging_dict(configs, "debug")
    assert {conf["loggers"][f"wa_relay.node.{c.id}"]["level"] for c in configs} == {"DEBUG"}
    conf = logging_dict(configs)
    assert conf["loggers"]["wa_relay.node.n1"]["level"] == "INFO"


def _start(tmp_path, *, env=None, nofile: int | None = None) -> tuple[LoggedProcess, str]:
    base = free_base_port(2)
    subprocess.run([*tool("wa-relay"), "init-cluster", "--nodes", "1", "--base-port", str(base),
                    "--data", str(tmp_path / "data")], check=True, capture_output=True, timeout=60)
    argv = [*tool("wa-relay"), "serve", "--config", str(tmp_path / "data" / "n1" / "node.toml")]
    if nofile is not None:  # the node's descriptor limit, set by util-linux's prlimit
        argv = ["prlimit", f"--nofile={nofile}", *argv]
    proc = LoggedProcess(argv, stdout_log=tmp_path / "out", stderr_log=tmp_path / "err",
                         env=env, name="n1")
    ready = proc.next_ready(time.monotonic() + 30)
    assert ready is not None, proc.stderr_tail()
    return proc, ready[1]


async def _until_in(path, needle: str) -> str:
    while True:  # bounded by the caller's fail_after
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        await trio.sleep(0.02)


async def test_sighup_reopens_the_log_file_and_json_lines(tmp_path) -> None:
    from relay.testing import child_env

    env = child_env() | {"WA_RELAY_LOG_FORMAT": "json"}
    proc, url = _start(tmp_path, env=env)
    log = tmp_path / "data" / "n1" / "node.log"
    try:
        with trio.fail_after(30):
            await _until_in(log, "listening")
            log.rename(tmp_path / "node.log.1")  # what logrotate does
            proc.proc.send_signal(signal.SIGHUP)
            await _until_in(log, "log file reopened (SIGHUP)")
            async with connect(url) as raw:
                await raw.hello()
            await _until_in(log, "ended after")
    finally:
        assert proc.stop(30) == (0, False), proc.stderr_tail()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("ended after" in obj["message"] for obj in lines)
    assert all(set(obj) >= {"ts", "level", "logger", "message"} for obj in lines)
    old = (tmp_path / "node.log.1").read_text()
    assert "listening" in old and "ended after" not in old
    assert oct(log.stat().st_mode & 0o777) == "0o600"


async def test_accept_errors_are_rate_limited_into_the_node_log(tmp_path) -> None:
    if shutil.which("prlimit") is None:  # pragma: no cover - util-linux missing
        pytest.skip("needs prlimit (util-linux)")
    proc, url = _start(tmp_path, nofile=64)
    log = tmp_path / "data" / "n1" / "node.log"
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    streams = []
    try:
        with trio.fail_after(30):
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 200
            for _ in range(80):  # more than the node's 64 descriptors
                streams.append(await trio.open_tcp_stream(host, int(port)))
            text = await _until_in(log, "accept returned EMFILE")
            await trio.sleep(1.0)  # not waiting for an event: trio retries ~10 times meanwhile
            text = log.read_text()
    finally:
        for s in streams:
            await s.aclose()
        code, killed = proc.stop(30)
    assert (code, killed) == (0, False), proc.stderr_tail()
    assert text.count("accept returned EMFILE") == 1
    assert "Traceback" not in text and "Traceback" not in proc.stderr_tail(100_000)
    assert "file-descriptor limit (64" in text
