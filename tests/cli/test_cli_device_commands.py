"""The multi-device commands through Click's CliRunner without a relay: usage errors
exit 2, companion-only refusals exit 1, verify/history/devices list output."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.client import init_account
from cli.commands.root import main
from cli.features.linkcode import LinkCode
from cli.session import crypto
from cli.session.state import create_state, new_home, open_state

DEAD = "ws://127.0.0.1:9"
CODE = LinkCode("n1", b"\x01" * 16, b"\x02" * 32, b"\x03" * 16).encode()


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def homes(tmp_path):
    """bob's primary (knows alice) and a companion device 1 of bob; no relay."""
    with create_state(tmp_path / "alice", name="alice", relay_url=DEAD) as alice:
        init_account(alice)
    with create_state(tmp_path / "bob", name="bob", relay_url=DEAD) as bob:
        init_account(bob)
        bob.contacts["alice"] = alice.user_id
        companion = crypto.DeviceIdentity()
        me = bob.own_list().device(0)
        _, v2 = crypto.make_device_list(bob.account_key, 2, [
            crypto.DeviceEntry(0, me.ed25519, me.curve25519, "phone", 1),
            crypto.DeviceEntry(1, companion.ed25519, companion.curve25519, "laptop", 2)])
        bob.remember_device_list(v2, bob.user_id)
        bob.last_seen[(bob.user_id, 1)] = 1_700_000_000_000
        bob.history.append({"id": "ab" * 16, "direction": "in", "peer": alice.user_id,
                            "from": alice.user_id, "from_device": 0, "ts": 1_700_000_000_000,
                            "type": "text", "text": "hi bob", "from_name": "alice"})
        bob.save()
    with new_home(tmp_path / "laptop") as fresh:
        laptop = fresh.create(user_id=bob.user_id, device_id=1, name="bob", relay_url=DEAD,
                              identity=companion)
        laptop.remember_device_list(v2, bob.user_id)
        laptop.save()
    return {n: str(tmp_path / n) for n in ("alice", "bob", "laptop")}


@pytest.mark.parametrize("args", [
    ["devices", "approve", "nonsense"],
    ["devices", "approve", "wa1-!!"],
    ["devices", "approve"],
    ["devices", "remove", "-1"],
    ["devices", "remove", "x"],
    ["link", "--relay", "http://x", "--name", "l"],
    ["link", "--relay", DEAD],
    ["link", "--relay", DEAD, "--name", ""],
    ["link", "--relay", DEAD, "--name", "l", "--timeout", "0"],
    ["verify", "nobody"],
    ["history", "nobody"],
])
def test_usage_errors_exit_2(homes, args):
    result = run("--home", homes["bob"], *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


@pytest.mark.parametrize("args, what", [
    (["devices", "approve", CODE, "--yes"], "approve new devices"),
    (["devices", "remove", "0", "--yes"], "remove devices"),
])
def test_companions_cannot_change_the_device_list(homes, args, what):
    result = run("--home", homes["laptop"], *args)
    assert result.exit_code == 1
    assert f"only the primary device (the one holding the account key) can {what}" in result.stderr


def test_link_into_an_initialised_home_fails(homes):
    result = run("--home", homes["bob"], "link", "--relay", DEAD, "--name", "again")
    assert result.exit_code == 1 and "already holds an account" in result.stderr


def test_remove_asks_and_no_changes_nothing(homes):
    result = run("--home", homes["bob"], "devices", "remove", "1", input="n\n")
    assert result.exit_code == 1
    assert "Remove device 1 (laptop)?" in result.stderr and "nothing changed" in result.stderr
    with open_state(homes["bob"]) as state:
        assert state.own_list().version == 2


def test_verify_is_the_same_on_both_sides_and_on_the_companion(homes):
    numbers = []
    for home, contact in (("bob", "alice"), ("laptop", None), ("alice", None)):
        with open_state(homes[home]) as state:
            other = state.contacts.get(contact) if contact else None
        if other is None:
            with open_state(homes["bob" if home == "alice" else "alice"]) as state:
                other = state.user_id
        result = run("--home", homes[home], "--json", "verify", other)
        assert result.exit_code == 0, result.output
        numbers.append(json.loads(result.stdout)["safety_number"])
    assert len(set(numbers)) == 1 and len(numbers[0].split()) == 12
    human = run("--home", homes["bob"], "verify", "alice")
    assert human.stdout.splitlines()[0] == "safety number with alice:"
    assert " ".join(human.stdout.split()[4:]) == numbers[0]


def test_devices_list_falls_back_to_the_cached_list(homes):
    result = run("--home", homes["bob"], "--json", "devices", "list")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["device_id"], r["name"], r["this_device"], r["last_seen"]) for r in rows] == [
        (0, "phone", True, None), (1, "laptop", False, 1_700_000_000_000)]
    assert all(len(r["fingerprint"].split()) == 8 for r in rows)
    assert "showing the cached device list" in result.stderr
    human = run("--home", homes["laptop"], "devices", "list")
    assert human.exit_code == 0
    header, phone, laptop = human.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "KEY", "FINGERPRINT", "LAST", "SEEN"]
    assert header.index("LAST SEEN") == laptop.index("this device") == len(phone) - 1
    assert laptop.endswith("this device") and phone.endswith("-")


def test_history_prints_stored_messages(homes):
    result = run("--home", homes["bob"], "--json", "history", "alice")
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (row["text"], row["direction"], row["from_name"]) == ("hi bob", "in", "alice")
    assert set(row) == {"id", "from", "from_name", "from_device", "direction", "ts", "type",
                        "text"}
    empty = run("--home", homes["laptop"], "history")
    assert empty.exit_code == 0 and "no messages stored" in empty.stderr
