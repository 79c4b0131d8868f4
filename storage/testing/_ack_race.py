"""Conformance: a hypothesis state machine of cumulative acks racing new enqueues.

The machine drives one open store from a worker thread (hypothesis is synchronous;
each step calls into the test's Trio loop with ``trio.from_thread.run``). Each
example uses fresh user ids, so examples share the store without sharing state.

Model, per device: the envelopes whose enqueue was answered with seqs and that no
ack covered yet. A device only acknowledges seqs it was sent (known before the ack
started), as the relay does. Checked after every step:

* an ack never deletes an envelope with ``seq > up_to_seq`` (also while enqueues
  for that device run concurrently);
* nothing an enqueue answered is lost: the queue holds exactly the model;
* seqs of a device strictly increase, across batches, acks and races.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as hs
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ..base import EnqueueRequest, Storage
from ._base import ConformanceBase, uid

T0 = 1_800_000_000.0
_DEVICES = 4
_examples = itertools.count()

_enqueues = hs.lists(  # requests: each a list of target device indexes
    hs.lists(hs.integers(0, _DEVICES - 1), min_size=1, max_size=3), min_size=1, max_size=6)
_acks = hs.lists(  # (device index, which known seq to ack: a fraction of the way up)
    hs.tuples(hs.integers(0, _DEVICES - 1), hs.floats(0, 1)), min_size=1, max_size=4)


class AckRaceMachine(RuleBasedStateMachine):
    """See the module docstring. Construct with the open store."""

    def __init__(self, st: Storage) -> None:
        super().__init__()
        self.st = st
        n = next(_examples)
        users = [uid(f"ack-race-{n}-{u}") for u in range(2)]
        self.devs = [(users[i % 2], i // 2) for i in range(_DEVICES)]
        self.model: list[dict[int, bytes]] = [{} for _ in self.devs]
        self.last_seq = [0] * _DEVICES
        self.counter = 0
        self.tag = f"ack-race-{n}"  # every copy is charged to it: its bytes must follow

    # -- helpers

    def _call(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run(fn, *args)

    def _requests(self, spec: list[list[int]]) -> list[EnqueueRequest]:
        reqs = []
        for targets in spec:
            items = []
            for d in targets:
                self.counter += 1
                user, dev = self.devs[d]
                items.append((user, dev, b"env-%d" % self.counter))
            reqs.append(EnqueueRequest(items, now=T0, charges=(self.tag,)))
        return reqs

    def _record(self, reqs: list[EnqueueRequest], answers: list[Any]) -> None:
        assert len(answers) == len(reqs)
        for req, seqs in zip(reqs, answers, strict=True):
            assert isinstance(seqs, list), seqs
            assert len(seqs) == len(req.items)
            for (user, dev, env), seq in zip(req.items, seqs, strict=True):
                d = self.devs.index((user, dev))
                assert seq > self.last_seq[d], "seqs of a device strictly increase"
                self.last_seq[d] = seq
                self.model[d][seq] = env

    def _up_to(self, d: int, frac: float) -> int:
        """A seq the device was sent: one of the known ones (0 if none)."""
        known = sorted(self.model[d])
        if not known:
            return min(self.last_seq[d], int(frac * self.last_seq[d]))
        return known[min(int(frac * len(known)), len(known) - 1)]

    def _forget(self, acks: list[tuple[int, int]], counts: list[int]) -> None:
        """Drop what the acks covered; their counts must add up per device."""
        per_dev: dict[int, int] = {}
        for (d, _), n in zip(acks, counts, strict=True):
            per_dev[d] = per_dev.get(d, 0) + n
        for d, n in per_dev.items():
            top = max(up for dd, up in acks if dd == d)
            covered = [s for s in self.model[d] if s <= top]
            assert n == len(covered), f"device {d}: acks deleted {n}, expected {len(covered)}"
            for s in covered:
                del self.model[d][s]

    # -- rules

    @rule(spec=_enqueues)
    def enqueue(self, spec: list[list[int]]) -> None:
        reqs = self._requests(spec)
        self._record(reqs, self._call(self.st.enqueue_many, reqs))

    @rule(picks=_acks)
    def ack(self, picks: list[tuple[int, float]]) -> None:
        acks = [(d, self._up_to(d, f)) for d, f in picks]
        counts = self._call(self.st.ack_many, [(*self.devs[d], up) for d, up in acks])
        self._forget(acks, counts)

    @rule(spec=_enqueues, picks=_acks, singles=hs.booleans())
    def race(self, spec: list[list[int]], picks: list[tuple[int, float]], singles: bool) -> None:
        """Acks of sent seqs and new enqueues (to the same devices) at the same time."""
        acks = [(d, self._up_to(d, f)) for d, f in picks]
        reqs = self._requests(spec)
        st = self.st
        out: dict[str, Any] = {}

        async def run_acks() -> None:
            if singles:  # separate calls, so they interleave with the enqueues
                counts = [0] * len(acks)

                async def one(i: int, d: int, up: int) -> None:
                    counts[i] = await st.ack(*self.devs[d], up)

                async with trio.open_nursery() as nursery:
                    for i, (d, up) in enumerate(acks):
                        nursery.start_soon(one, i, d, up)
                out["counts"] = counts
            else:
                out["counts"] = await st.ack_many([(*self.devs[d], up) for d, up in acks])

        async def run_enqueues() -> None:
            out["answers"] = [await st.enqueue_many(reqs[:1])]
            out["answers"].append(await st.enqueue_many(reqs[1:]))

        async def both() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_enqueues)
                nursery.start_soon(run_acks)

        self._call(both)
        self._record(reqs, out["answers"][0] + out["answers"][1])
        self._forget(acks, out["counts"])

    @invariant()
    def queues_hold_exactly_what_was_not_acked(self) -> None:
        for d, (user, dev) in enumerate(self.devs):
            items = self._call(self.st.read_queue, user, dev, 0, 10_000)
            assert {i.seq: i.envelope for i in items} == self.model[d]
            assert [i.seq for i in items] == sorted(self.model[d])
            assert self._call(self.st.queue_length, user, dev) == len(self.model[d])
            held = sum(len(e) for e in self.model[d].values())
            assert self._call(self.st.queue_bytes, user, dev) == held
            assert self._call(self.st.charged_bytes, self.tag, user, dev) == held
        for user in {u for u, _ in self.devs}:
            assert self._call(self.st.queue_bytes, user) == sum(
                len(e) for d, (u, _) in enumerate(self.devs) if u == user
                for e in self.model[d].values())
        assert self._call(self.st.charged_bytes, self.tag) == sum(
            len(e) for m in self.model for e in m.values())


class AckRaceConformance(ConformanceBase):
    """Runs :class:`AckRaceMachine` (modest example counts: seconds, not minutes)."""

    #: hypothesis examples and steps per example; raise them for a longer soak.
    ack_race_examples = 20
    ack_race_steps = 10

    async def test_acks_racing_enqueues_state_machine(self) -> None:
        async with self.opened() as st:
            config = settings(
                max_examples=self.ack_race_examples, stateful_step_count=self.ack_race_steps,
                deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            await trio.to_thread.run_sync(
                lambda: run_state_machine_as_test(lambda: AckRaceMachine(st), settings=config))
