"""The one backoff policy (relay.net.backoff) used by peer links, the outbox and wa-cli."""

import itertools
import pathlib

import pytest

from relay.net.backoff import CLIENT_RECONNECT, PEER_BACKOFF, TRANSFER_RETRY, Backoff

ROOT = pathlib.Path(__file__).resolve().parents[2]


def take(policy: Backoff, n: int, draw: float) -> list[float]:
    return list(itertools.islice(policy.delays(rng=lambda: draw), n))


def test_client_reconnect_doubles_up_to_30_s_with_jitter():
    assert take(CLIENT_RECONNECT, 9, 1.0) == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert take(CLIENT_RECONNECT, 3, 0.0) == [0.25, 0.5, 1]


def test_peer_backoff_is_plus_minus_25_percent():
    assert take(PEER_BACKOFF, 3, 0.5) == pytest.approx([0.2, 0.4, 0.8])
    assert take(PEER_BACKOFF, 1, 0.0) == pytest.approx([0.15])
    assert take(PEER_BACKOFF, 1, 1.0) == pytest.approx([0.25])
    assert max(take(PEER_BACKOFF, 20, 1.0)) == pytest.approx(37.5)


def test_transfer_retry_has_no_jitter():
    assert take(TRANSFER_RETRY, 7, 0.3) == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5, 5])


@pytest.mark.parametrize("args", [(0, 1), (2, 1), (1, 2, 0, 1), (1, 2, 1.2, 1.1)])
def test_bad_policies_are_refused(args):
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(*args)


#: Doubling waits that are not retries after a failure: polling a pipe the reader has
#: not drained yet (cli.commands.linesink). Storage backends keep their own short reconnect
#: pauses: ``storage`` sits below ``relay`` and imports nothing of it.
NOT_RETRIES = {"cli/commands/linesink.py", "relay/net/backoff.py"}


def test_no_hand_written_backoff_left():
    """Every reconnect/retry loop of the relay and the client uses relay.net.backoff."""
    offenders = [
        rel for pkg in ("relay", "cli") for p in (ROOT / pkg).rglob("*.py")
        if (rel := p.relative_to(ROOT).as_posix()) not in NOT_RETRIES
        and "* 2," in p.read_text()
    ]
    assert offenders == []
