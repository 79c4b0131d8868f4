"""wa-cli commands through Click's CliRunner: usage errors exit 2, runtime failures exit 1,
offline commands print the CLI contract's JSON (no relay needed)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from cli.client import init_account
from cli.commands.root import main
from cli.session.state import create_state

BOB = "b" * 52  # syntactically valid user_id (base32 'b' = 1)


@pytest.fixture
def home(tmp_path):
    """An initialised (never published) home; no relay listens on its URL."""
    path = tmp_path / "alice"
    with create_state(path, name="alice", relay_url="ws://127.0.0.1:9") as state:
        init_account(state)
    return path


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


@pytest.mark.parametrize(
    "args",
    [
        ["init"],  # --name and --relay missing
        ["init", "--trust-on-first-use", "--name", "a"],
        ["init", "--trust-on-first-use", "--name", "a", "--relay", "http://127.0.0.1:1"],
        ["init", "--trust-on-first-use", "--name", "", "--relay", "ws://127.0.0.1:1"],
        ["contacts", "add", "bob", "not-a-user-id"],
        ["contacts", "add", "bob"],
        ["contacts", "add", BOB, BOB],
        ["send", "bob"],
        ["send", "bob", ""],
        ["send", "bob", " "],
        ["send", "--group", "team", ""],
        ["send", "bob", "--group", "team"],
        ["send", "bob", "--group=team"],
        ["send", BOB, "hi", "--group", "team"],
        ["send", "--json", "bob", "--group", "team", "--file", __file__],
        ["recv", "--timeout", "-1"],
        ["recv", "--timeout", "soon"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(tmp_path, args):
    result = run("--home", str(tmp_path / "h"), *args)
    assert result.exit_code == 2, result.output
    if "--json" in args:  # the error as a JSON object on stdout
        assert json.loads(result.stdout)["error"]["code"] == "usage"
    else:
        assert result.stdout == ""


def test_send_to_unknown_contact_is_a_usage_error(home):
    result = run("--home", str(home), "send", "nobody", "hi")
    assert result.exit_code == 2
    assert "unknown contact 'nobody'" in result.stderr


def test_send_of_oversized_text_is_a_usage_error(home):
    result = run("--home", str(home), "send", BOB, "x" * 60_001)
    assert result.exit_code == 2


def test_id_prints_the_contract_json(home):
    result = run("--home", str(home), "--json", "id")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert set(obj) == {"user_id", "device_id", "fingerprint", "home", "name"}
    assert obj["device_id"] == 0 and obj["name"] == "alice" and obj["home"] == "ws://127.0.0.1:9"
    assert len(obj["user_id"]) == 52
    assert len(obj["fingerprint"].split()) == 6
    human = run("--home", str(home), "id")
    assert obj["user_id"] in human.stdout and obj["fingerprint"] in human.stdout


def test_id_without_account_fails_with_exit_1(tmp_path):
    result = run("--home", str(tmp_path / "empty"), "id")
    assert result.exit_code == 1
    assert "wa-cli init" in result.stderr
    assert result.stdout == ""


def test_home_from_environment(home):
    result = run("--json", "id", env={"WA_HOME": str(home)})
    assert result.exit_code == 0 and json.loads(result.stdout)["name"] == "alice"


def test_contacts_add_and_list(home):
    assert run("--home", str(home), "contacts", "add", "bob", BOB).exit_code == 0
    result = run("--home", str(home), "--json", "contacts", "list")
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"name": "bob", "user_id": BOB}
    ]
    assert "bob\t" + BOB in run("--home", str(home), "contacts", "list").stdout


def test_unreachable_relay_is_a_runtime_failure(home):
    result = run("--home", str(home), "--json", "recv", "--timeout", "0")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "failed" and "cannot connect to ws://127.0.0.1:9" in error["message"]


def test_a_send_with_no_relay_reachable_waits_in_the_outbox(home):
    result = run("--home", str(home), "--json", "send", BOB, "hi")
    assert result.exit_code == 0, result.output
    sent = json.loads(result.stdout)
    assert (sent["status"], sent["to"]) == ("pending", BOB)
    listed = run("--home", str(home), "--json", "outbox")
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        {"id": sent["id"], "to": BOB, "group_id": None, "ts": listed_ts(listed)}]
    human = run("--home", str(home), "outbox").stdout
    assert f"id {sent['id']}" in human and BOB[:12] in human


def listed_ts(result) -> int:
    return json.loads(result.stdout.splitlines()[0])["ts"]


def test_init_on_an_unreachable_relay_fails_and_can_be_retried(tmp_path):
    h = tmp_path / "x"
    first = run("--home", str(h), "init", "--trust-on-first-use", "--name", "x", "--relay", "ws://127.0.0.1:9")
    assert first.exit_code == 1 and "cannot connect" in first.stderr
    again = run("--home", str(h), "init", "--trust-on-first-use", "--name", "x", "--relay", "ws://127.0.0.1:9")
    assert again.exit_code == 1 and "cannot connect" in again.stderr  # retried, not "exists"


def test_a_retried_init_uses_the_new_relay_and_name(tmp_path):
    h = str(tmp_path / "x")
    assert run("--home", h, "init", "--trust-on-first-use", "--name", "x", "--relay", "ws://127.0.0.1:9").exit_code == 1
    (before,) = [json.loads(run("--home", h, "--json", "id").stdout)]
    again = run("--home", h, "init", "--trust-on-first-use", "--name", "y", "--relay", "ws://127.0.0.1:7")
    assert again.exit_code == 1 and "cannot connect to ws://127.0.0.1:7" in again.stderr
    after = json.loads(run("--home", h, "--json", "id").stdout)
    assert (after["name"], after["home"]) == ("y", "ws://127.0.0.1:7")
    assert after["user_id"] == before["user_id"]  # the keys made the first time are kept


def test_json_flag_is_accepted_after_the_subcommand_too(home):
    result = run("--home", str(home), "id", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "alice"


def test_a_recipient_and_group_are_mutually_exclusive(home):
    result = run("--home", str(home), "send", "bob", "--group", "team")
    assert result.exit_code == 2 and result.stdout == ""
    assert "a recipient ('bob') and --group are mutually exclusive" in result.stderr
    # TEXT after --group is the text: this one gets as far as looking up the group,
    # which is unknown: a usage error too
    result = run("--home", str(home), "send", "--group", "team", "bob")
    assert result.exit_code == 2 and "unknown group 'team'" in result.stderr


CAROL = "c" * 52


def test_contacts_add_does_not_silently_rebind(home):
    assert run("--home", str(home), "contacts", "add", "bob", BOB).exit_code == 0
    assert run("--home", str(home), "contacts", "add", "bob", BOB).exit_code == 0  # same: fine
    result = run("--home", str(home), "contacts", "add", "bob", CAROL)
    assert result.exit_code == 1 and result.stdout == ""
    assert f"contact 'bob' already exists; to change it ({BOB} -> {CAROL})" in result.stderr
    assert "--force" in result.stderr
    result = run("--home", str(home), "contacts", "add", "robert", BOB)
    assert result.exit_code == 1 and "already your contact 'bob'" in result.stderr
    listed = run("--home", str(home), "--json", "contacts", "list").stdout
    assert [json.loads(line) for line in listed.splitlines()] == [{"name": "bob", "user_id": BOB}]

    assert run("--home", str(home), "contacts", "add", "--force", "bob", CAROL).exit_code == 0
    assert run("--home", str(home), "contacts", "add", "robert", BOB).exit_code == 0
    assert run("--home", str(home), "contacts", "add", "--force", "rob", BOB).exit_code == 0
    listed = run("--home", str(home), "--json", "contacts", "list").stdout
    assert [json.loads(line) for line in listed.splitlines()] == [
        {"name": "bob", "user_id": CAROL}, {"name": "rob", "user_id": BOB}]


def test_contacts_add_refuses_your_own_user_id(home):
    me = json.loads(run("--home", str(home), "--json", "id").stdout)["user_id"]
    result = run("--home", str(home), "contacts", "add", "me", me)
    assert result.exit_code == 2 and "that is your own user id" in result.stderr
    assert run("--home", str(home), "contacts", "list").stdout == ""


@pytest.mark.parametrize("args", [
    ["id"], ["contacts", "list"], ["contacts", "add", "bob", BOB], ["history"], ["group", "list"],
    ["devices", "list"], ["recv"], ["send", "bob", "hi"], ["verify", BOB],
])
def test_commands_on_a_home_without_account_create_nothing(tmp_path, args):
    home = tmp_path / "nonexist"
    result = run("--home", str(home), *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert f"no account here ({home}): run 'wa-cli init' or 'wa-cli link'" in result.stderr
    assert not home.exists()
    home.mkdir()
    assert run("--home", str(home), *args).exit_code == 1
    assert list(home.iterdir()) == []  # no lock file either


def test_home_is_accepted_after_the_subcommand_too(home, tmp_path):
    result = run("id", "--home", str(home), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "alice"
    assert run("contacts", "add", f"--home={home}", "bob", BOB).exit_code == 0
    assert run("--home", str(tmp_path / "other"), "contacts", "list", "--home", str(home)
               ).stdout == f"bob\t{BOB}\n"  # the later --home wins
    result = run("send", "bob", "hi", "--home", str(home))
    assert result.exit_code == 0 and "cannot connect to ws://127.0.0.1:9" in result.stderr
    assert "kept for bob in the local outbox (pending)" in result.stdout
    assert not (tmp_path / "other").exists()


def test_send_to_yourself_without_other_devices_says_so(home, tmp_path):
    me = json.loads(run("--home", str(home), "--json", "id").stdout)["user_id"]
    result = run("--home", str(home), "send", me, "note to self")
    assert result.exit_code == 1 and result.stdout == ""
    assert "you have no other devices; nothing to send to yourself" in result.stderr
    path = tmp_path / "f.txt"
    path.write_text("x")
    result = run("--home", str(home), "send", me, "--file", str(path))
    assert result.exit_code == 1 and "you have no other devices" in result.stderr


def _all_commands(group, path=()):
    for name, command in group.commands.items():
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from _all_commands(command, (*path, name))


@pytest.mark.parametrize("path", [(), *_all_commands(main)], ids=" ".join)
def test_help_is_plain_text(path):
    result = run(*path, "--help")
    assert result.exit_code == 0
    for markup in ("``", ":func:", ":class:", ":data:", ":meth:"):
        assert markup not in result.stdout


def test_a_home_in_use_says_to_stop_recv_follow_first(home, monkeypatch):
    from cli.commands import _common
    from cli.session.state import open_state

    monkeypatch.setattr(_common, "LOCK_TIMEOUT", 0.1)
    with open_state(home):  # e.g. a running 'wa-cli recv --follow'
        result = run("--home", str(home), "send", BOB, "hi")
        readonly = run("--home", str(home), "--json", "id")  # read-only: runs beside it
    assert result.exit_code == 1 and result.stdout == ""
    assert f"is in use by wa-cli process {os.getpid()}" in result.stderr  # the holder's pid
    assert "run 'wa-cli daemon' to share the device between commands" in result.stderr
    assert readonly.exit_code == 0 and json.loads(readonly.stdout)["name"] == "alice"
