"""``python -m demo [--data DIR]``: the wa-relay main job end to end, on real processes.

1. starts ``wa-relay cluster --nodes 3`` on free ports of 127.0.0.1;
2. creates accounts alice and bob (``wa-cli init``) whose home nodes differ;
3. adds each as the other's contact;
4. alice sends three messages while bob is offline (no wa-cli of bob's runs);
5. bob runs ``wa-cli recv``: his device gets, decrypts and acknowledges them;
6. checks the three texts arrived in order and that a second ``recv`` is empty;
7. stops the cluster (SIGTERM, SIGKILL after a deadline).

Every command is printed as ``$ wa-cli ...`` before it runs. Exit 0 on success,
1 if a step failed or the messages did not arrive as sent.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relay.config import load_cluster_doc
from relay.protocol.cluster import cluster_key_text

from .cluster import ClusterProcess, DemoError, child_env, free_base_port, tool

NODES = 3
READY_TIMEOUT = 30.0  # seconds for the cluster's ready lines
CLI_TIMEOUT = 60.0  # seconds for one wa-cli command
MESSAGES = [
    "Hi Bob, this is Alice. Are you around?",
    "Sending this while you are offline: your home node keeps it for you.",
    "Third and last: they should arrive in this order. 🙂",
]


def say(text: str = "") -> None:
    """Print one transcript line (flushed, so it interleaves with child output)."""
    print(text, flush=True)


def wa_cli(home: Path, *args: str, timeout: float = CLI_TIMEOUT) -> list[dict]:
    """Run ``wa-cli --home HOME --json ARGS``, print it, and parse its JSON lines.

    Raises:
        DemoError: non-zero exit, timeout or non-JSON output.
    """
    argv = [*tool("wa-cli"), "--home", str(home), "--json", *args]
    say(f"$ {shlex.join(['wa-cli', '--home', str(home), '--json', *args])}")
    try:
        run = subprocess.run(
            argv, capture_output=True, timeout=timeout, env=child_env(), check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"wa-cli {args[0]} did not finish within {timeout}s") from exc
    if run.returncode != 0:
        raise DemoError(
            f"wa-cli {args[0]} exited {run.returncode}:\n{run.stderr.decode(errors='replace')}"
        )
    try:
        return [json.loads(line) for line in run.stdout.decode().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DemoError(f"wa-cli {args[0]} printed non-JSON output: {run.stdout!r}") from exc


def one(lines: list[dict], what: str) -> dict:
    """The single JSON object a command printed."""
    if len(lines) != 1:
        raise DemoError(f"{what} printed {len(lines)} JSON objects, expected 1: {lines}")
    return lines[0]


def start_cluster(data: Path) -> ClusterProcess:
    """Start ``wa-relay cluster`` on a free port range (three tries if a port is taken)."""
    relays = data / "relays"
    for attempt in range(3):
        if relays.exists():
            shutil.rmtree(relays)  # fresh keys and data: the ports are new each run
        base = free_base_port(2 * NODES)  # node ports, then admin ports
        cluster = ClusterProcess.start(NODES, base, relays, data / "logs")
        say(f"$ {shlex.join(['wa-relay', *cluster.args])}")
        try:
            urls = cluster.wait_ready(NODES, READY_TIMEOUT)
        except DemoError as exc:
            cluster.stop()
            if attempt == 2:
                raise
            say(f"   (the cluster did not start: {str(exc).splitlines()[0]}; retrying on other ports)")
            continue
        for nid, url in sorted(urls.items()):
            say(f"   {nid} ready at {url}")
        say(f"   cluster key {cluster_key(data)} (wa-cli init --cluster-key pins it)")
        return cluster
    raise DemoError("unreachable")  # pragma: no cover


def node_of(urls: dict[str, str], url: str) -> str:
    """The node id whose URL is ``url``."""
    for nid, u in urls.items():
        if u.rstrip("/") == url.rstrip("/"):
            return nid
    raise DemoError(f"{url} is not one of the cluster's nodes {urls}")


def cluster_key(data: Path) -> str:
    """The cluster key that signed the local cluster's description (``wa-relay cluster``
    prints it too), which ``wa-cli init --cluster-key`` pins."""
    doc = load_cluster_doc(data / "relays" / "cluster.toml")
    if doc is None:
        raise DemoError("the cluster file is not signed")
    return cluster_key_text(doc.cluster_key)


def create_account(data: Path, name: str, relay: str, urls: dict[str, str], avoid: str | None) -> dict:
    """``wa-cli init`` for ``name``; if its home is ``avoid``, start over in a fresh
    --home (rendezvous hashing of the new user_id picks the home)."""
    home = data / name
    for _ in range(40):
        if home.exists():
            shutil.rmtree(home)
        acct = one(wa_cli(home, "init", "--name", name, "--relay", relay,
                          "--cluster-key", cluster_key(data)), "init")
        nid = node_of(urls, acct["home"])
        if nid != avoid:
            say(f"   {name}: user_id {acct['user_id']}, device {acct['device_id']}, home node {nid} ({acct['home']})")
            return {**acct, "node": nid, "dir": home}
        say(f"   {name}'s new user_id hashes to {nid}, alice's home too; creating a fresh account so the homes differ")
    raise DemoError(f"could not create {name} on a node other than {avoid}")


def run_demo(data: Path) -> int:
    """The whole scenario under ``data``; returns the exit code."""
    say("== wa-relay demo: 3 relay nodes, 2 accounts on different homes, offline delivery ==")
    say(f"   working directory: {data}")
    say("   (relay keys, LMDB data and logs under relays/ and logs/; device state under alice/ and bob/)")
    say()
    say("[1] start a local federation of three relay nodes")
    cluster = start_cluster(data)
    try:
        urls = dict(cluster.urls)
        entry = urls[sorted(urls)[0]]
        say()
        say("[2] create the accounts (each init generates the keys on the device and publishes")
        say("    the signed device list and one-time keys at the user's home node)")
        alice = create_account(data, "alice", entry, urls, avoid=None)
        bob = create_account(data, "bob", entry, urls, avoid=alice["node"])
        say()
        say("[3] exchange contacts (names are local aliases for the self-certifying user ids)")
        wa_cli(alice["dir"], "contacts", "add", "bob", bob["user_id"])
        wa_cli(bob["dir"], "contacts", "add", "alice", alice["user_id"])
        say()
        say("[4] alice sends three messages; bob is offline (no wa-cli process of his is running)")
        sent = []
        for text in MESSAGES:
            res = one(wa_cli(alice["dir"], "send", "bob", text), "send")
            sent.append(res)
            where = {
                "stored": f"written durably to bob's device queue on {bob['node']} (via {alice['node']})",
                "queued": f"kept in {alice['node']}'s outbox until {bob['node']} is reachable",
            }.get(res["status"], "unexpected status")
            say(f"   -> {res['status']}: message {res['id']} {where}")
        say(f"   queued for bob's device {bob['device_id']} on {bob['node']}: {len(sent)} envelopes (ciphertext only)")
        say()
        say(f"[5] bob comes online: his device connects to {bob['node']}, receives, decrypts, acknowledges")
        got = wa_cli(bob["dir"], "recv", "--timeout", "2")
        for i, msg in enumerate(got, 1):
            when = time.strftime("%H:%M:%S", time.localtime(msg["ts"] / 1000))
            say(f"   #{i} [{when}] decrypted, from {msg.get('from_name') or msg['from']} "
                f"(device {msg['from_device']}, {msg['direction']}, {msg['type']}): {msg['text']!r}")
        say()
        say("[6] verify")
        texts = [m["text"] for m in got]
        ok = texts == MESSAGES and all(m["from"] == alice["user_id"] for m in got)
        say(f"   {len(got)} delivered, expected {len(MESSAGES)} in order from alice: {'OK' if ok else 'MISMATCH'}")
        if not ok:
            say(f"   expected {MESSAGES!r}\n   got      {texts!r}")
        again = wa_cli(bob["dir"], "recv", "--timeout", "1")
        say(f"   second recv: {len(again)} messages (everything was acknowledged and deleted on {bob['node']})")
        ok = ok and again == []
    finally:
        say()
        say("[7] stop the cluster (SIGTERM)")
        code, killed = cluster.stop()
        say(f"   wa-relay cluster exited with {code}" + (" after SIGKILL" if killed else ""))
    say()
    say("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m demo``; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=None,
        help="keep relay data, logs and device homes here (default: a temporary directory, removed at exit)",
    )
    args = parser.parse_args(argv)
    try:
        if args.data is not None:
            args.data.mkdir(parents=True, exist_ok=True)
            return run_demo(args.data.resolve())
        with tempfile.TemporaryDirectory(prefix="wa-relay-demo-") as tmp:
            code = run_demo(Path(tmp))
            say(f"(removed the working directory {tmp}; keep it with: python -m demo --data DIR)")
            return code
    except DemoError as exc:
        say(f"demo FAILED: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
