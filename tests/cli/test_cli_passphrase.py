"""The passphrase of a device home, with real ``wa-cli`` processes: ``WA_PASSPHRASE``,
the hidden prompt on a terminal (asked twice at ``init --passphrase``), and the OS
keyring (``init --keyring``) through keyring's file backend kept in the test's tmp
dir; no usable keyring is a clear error; the passphrase is never written in the home."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa
from cli_pty import OnTty

from cli.session.vault import KEY_FILE, MAGIC, MODE_PASSPHRASE, STATE_FILE

DEADLINE = 60
PLAIN_FILE = "keyrings.alt.file.PlaintextKeyring"


def environment(tmp_path: Path, **extra: str) -> dict:
    """This process's environment without WA_PASSPHRASE, keyring's directories in tmp."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WA_PASSPHRASE", "PYTHON_KEYRING_BACKEND")}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg-data"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"), **extra)
    return env


def home_bytes(home: Path) -> bytes:
    """Every file of ``home`` concatenated (to look for a secret in it)."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def passphrase_mode(home: Path) -> bool:
    data = (home / STATE_FILE).read_bytes()
    return data[:4] == MAGIC and data[4] == MODE_PASSPHRASE and not (home / KEY_FILE).exists()


async def test_prompt_on_a_terminal_and_wa_passphrase(tmp_path):
    home = tmp_path / "a"
    env = environment(tmp_path)
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            tty = await OnTty.start(home, "--json", "init", "--passphrase",
                                    "--trust-on-first-use", "--name", "alice", "--relay",
                                    cluster.urls["n1"], env=env, stdin_tty=True)
            try:
                await tty.expect("New passphrase for")
                await tty.send("tulip-anvil-42\n")
                await tty.expect("Repeat for confirmation")
                await tty.send("tulip-anvil-42\n")
                assert await tty.finish() == 0, tty.tty
            finally:
                await tty.aclose()
            assert "tulip-anvil-42" not in tty.tty  # hidden input: never echoed
            user_id = lines_of(tty.out)[0]["user_id"]
            assert passphrase_mode(home)
            assert b"tulip-anvil-42" not in home_bytes(home)
            # a later command on a terminal asks for it
            tty = await OnTty.start(home, "--json", "id", env=env, stdin_tty=True)
            try:
                await tty.expect(f"Passphrase of {home}")
                await tty.send("tulip-anvil-42\n")
                assert await tty.finish() == 0, tty.tty
            finally:
                await tty.aclose()
            assert lines_of(tty.out)[0]["user_id"] == user_id
            # a wrong one is refused
            tty = await OnTty.start(home, "id", env=env, stdin_tty=True)
            try:
                await tty.expect("Passphrase of")
                await tty.send("wrong\n")
                assert await tty.finish() == 1
            finally:
                await tty.aclose()
            assert "wrong key or passphrase" in tty.tty and "Traceback" not in tty.tty
            # no terminal, no WA_PASSPHRASE: a one-line error that says what to do
            none = await wa(home, "id", env=env, check=False)
            assert none.returncode == 1
            err = none.stderr.decode()
            assert "WA_PASSPHRASE" in err and "Traceback" not in err
            # an existing home cannot take up the keyring: no 'init --keyring' advice
            assert "keep it in the OS keyring ('wa-cli init" not in err
            assert "does not keep it in the OS keyring" in err
            # WA_PASSPHRASE, no terminal
            (ident,) = lines(await wa(home, "--json", "id",
                                      env={**env, "WA_PASSPHRASE": "tulip-anvil-42"}))
            assert ident["user_id"] == user_id
            # init --passphrase without a terminal needs WA_PASSPHRASE (usage error)
            usage = await wa(tmp_path / "c", "init", "--passphrase", "--trust-on-first-use",
                             "--name", "c", "--relay", cluster.urls["n1"], env=env, check=False)
            assert usage.returncode == 2 and "WA_PASSPHRASE" in usage.stderr.decode()


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_keyring_keeps_the_passphrase_outside_the_home(tmp_path):
    home = tmp_path / "a"
    env = environment(tmp_path, PYTHON_KEYRING_BACKEND=PLAIN_FILE)
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            (made,) = lines(await wa(home, "--json", "init", "--keyring", "--trust-on-first-use",
                                     "--name", "alice", "--relay", cluster.urls["n1"], env=env))
            assert passphrase_mode(home)
            # the keyring (a file under the test's XDG_DATA_HOME here) holds a random
            # passphrase; the home only names the entry
            assert (tmp_path / "xdg-data" / "python_keyring" / "keyring_pass.cfg").is_file()
            entry = json.loads((home / "keyring.json").read_text())
            assert entry == {"service": "wa-cli", "username": str(home)}
            got = await trio.run_process(
                [sys.executable, "-c", "import keyring, sys; "
                 "print(keyring.get_password('wa-cli', sys.argv[1]))", str(home)],
                capture_stdout=True, env=env)
            secret = got.stdout.decode().strip()
            assert len(secret) >= 32 and secret.encode() not in home_bytes(home)
            # later commands read it from the keyring: no WA_PASSPHRASE, no terminal
            (ident,) = lines(await wa(home, "--json", "id", env=env))
            assert ident["user_id"] == made["user_id"]
            # the keyring without the entry, or no keyring at all: a clear error
            gone = await wa(home, "id", env={**env, "XDG_DATA_HOME": str(tmp_path / "other")},
                            check=False)
            assert gone.returncode == 1 and "has no passphrase for" in gone.stderr.decode()
            failing = environment(tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
            none = await wa(home, "id", env=failing, check=False)
            err = none.stderr.decode()
            assert none.returncode == 1 and "no OS keyring" in err and "Traceback" not in err


async def test_a_linked_device_keeps_its_own_passphrase_in_the_keyring(tmp_path, monkeypatch):
    for key, value in environment(tmp_path, PYTHON_KEYRING_BACKEND=PLAIN_FILE).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WA_PASSPHRASE", raising=False)
    laptop = tmp_path / "laptop"
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            (made,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                                     "--name", "alice", "--relay", cluster.urls["n1"]))
            link = await Running.start(laptop, "--json", "link", "--keyring", "--relay",
                                       cluster.urls["n1"], "--name", "laptop")
            try:
                code = (await link.json())["code"]
                await wa(tmp_path / "a", "devices", "approve", code, "--yes")
                assert (await link.json()) == {"user_id": made["user_id"], "device_id": 1}
                status, err = await link.finish()
                assert status == 0, err
            finally:
                await link.aclose()
            assert passphrase_mode(laptop) and not passphrase_mode(tmp_path / "a")
            assert json.loads((laptop / "keyring.json").read_text())["username"] == str(laptop)
            (ident,) = lines(await wa(laptop, "--json", "id"))
            assert (ident["user_id"], ident["device_id"]) == (made["user_id"], 1)


async def test_init_keyring_without_a_usable_backend_creates_nothing(tmp_path):
    home = tmp_path / "a"
    with trio.fail_after(DEADLINE):
        failing = environment(tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
        proc = await wa(home, "init", "--keyring", "--trust-on-first-use", "--name", "alice",
                        "--relay", "ws://127.0.0.1:9", env=failing, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "no OS keyring is available" in err, err
        assert "Traceback" not in err and not (home / STATE_FILE).exists()


async def test_init_keyring_refuses_a_plain_file_backend_not_chosen_explicitly(tmp_path):
    home = tmp_path / "a"
    with trio.fail_after(DEADLINE):
        best = await trio.run_process(
            [sys.executable, "-c", "import keyring; print(keyring.get_keyring().priority)"],
            capture_stdout=True, env=environment(tmp_path))
        if float(best.stdout.decode().split()[-1]) >= 1:
            pytest.skip("a recommended keyring backend is installed here")
        # keyrings.alt (a test dependency) makes its plain-text file the only backend
        plain = await wa(home, "init", "--keyring", "--trust-on-first-use", "--name", "alice",
                         "--relay", "ws://127.0.0.1:9", env=environment(tmp_path), check=False)
        err = plain.stderr.decode()
        assert plain.returncode == 1 and "does not recommend" in err, err
        assert not (home / STATE_FILE).exists()
