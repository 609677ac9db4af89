"""
One contract, every breaker store: memory, the host file, a damaged host
file (the local state it degrades to), Redis, and Redis while it is
unreachable, as pybreaker runs one suite against every storage. A new
backend joins by adding a parameter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resilient_client import _breaker_redis
from resilient_client._breaker_machine import (
    CLOSED,
    CLOSED_RECORD,
    HALF_OPEN,
    OPEN,
    BreakerMachine,
    Record,
)
from resilient_client._breaker_store import BreakerStore, MemoryStore
from resilient_client._host_file import HostFile, path_for
from resilient_client._host_state import HostStore
from resilient_client._policy import BreakerPolicy
from resilient_client.testing import FakeClock

MACHINE = BreakerMachine(BreakerPolicy(failure_threshold=3, reset_timeout=0.5), "me")
#: Nothing listens on the discard port: a Redis there is always down.
DEAD_REDIS = "redis://127.0.0.1:9/0"


def _set(rec: Record) -> Any:
    def step(old: Record, now: float) -> tuple[Record, Record]:
        return rec, old

    return step


def _fail(old: Record, now: float) -> tuple[Record, None]:
    return MACHINE.record(old, now, True, False, None), None


@pytest.fixture(
    params=[
        "memory",
        "host",
        "host-damaged",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-down", marks=pytest.mark.redis),
    ]
)
def make_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A factory of stores for one breaker name; stores it makes share state."""
    kind = request.param
    if kind == "memory":
        shared = MemoryStore(FakeClock(1000.0))
        yield lambda: shared
        return
    if kind.startswith("host"):
        state_dir = str(request.getfixturevalue("tmp_path") / "state")
        if kind == "host-damaged":
            HostFile(state_dir, "inventory").fd()  # lay the file out, then spoil it
            with open(path_for(state_dir, "inventory"), "r+b") as f:
                f.write(b"garbage!")
        yield lambda: HostStore(HostFile(state_dir, "inventory"))
        return
    url = request.getfixturevalue("redis_url") if kind == "redis" else DEAD_REDIS
    yield lambda: _breaker_redis.RedisStore(url, "inventory", MACHINE.reconcile)


@pytest.fixture
def store(make_store: Any) -> BreakerStore:
    s: BreakerStore = make_store()
    return s


class TestContract:
    def test_a_new_store_holds_a_closed_record(self, store: BreakerStore) -> None:
        """Nothing written yet reads as a closed breaker that never failed."""
        rec, _, changes = store.read()
        assert rec == CLOSED_RECORD
        assert changes == ()

    def test_apply_writes_what_the_step_returns(self, store: BreakerStore) -> None:
        """apply() writes the step's record, returns it with the step's result, and read() sees it."""
        rec, result, _, changes = store.apply(_fail)
        assert rec == Record(failures=1)
        assert result is None
        assert store.read()[0] == Record(failures=1)
        assert changes == ()

    def test_a_step_that_changes_nothing_writes_nothing(self, store: BreakerStore) -> None:
        """A step returning its own record is not a write, and reports no change."""
        store.apply(_fail)
        rec, verdict, _, changes = store.apply(MACHINE.admit)
        assert verdict.value == "allow"
        assert rec == Record(failures=1)
        assert changes == ()

    def test_state_changes_are_reported_once(self, store: BreakerStore) -> None:
        """The change a write makes is reported by that write, not again by the next read."""
        for _ in range(2):
            store.apply(_fail)
        rec, _, now, changes = store.apply(_fail)
        assert rec.state is OPEN
        assert changes == ((CLOSED, OPEN),)
        assert rec.opened_at == pytest.approx(now, abs=1e-3)
        assert store.read()[2] == ()
        assert store.apply(MACHINE.admit)[3] == ()

    def test_every_field_round_trips(self, store: BreakerStore) -> None:
        """Forced, sub-millisecond opened_at, count and trial lease come back as written."""
        now = store.read()[1]
        rec = Record(HALF_OPEN, True, now - 0.1234, 7, "pid:token", now + 30.0)
        store.apply(_set(rec))
        back = store.read()[0]
        assert back[:2] == rec[:2] and back.failures == 7 and back.trial == "pid:token"
        assert back.opened_at == pytest.approx(rec.opened_at, abs=1e-5)
        assert back.trial_until == pytest.approx(rec.trial_until, abs=0.05)

    def test_the_step_sees_the_latest_record(self, store: BreakerStore) -> None:
        """Each step is applied to what the previous one wrote."""
        store.apply(_set(Record(failures=2)))
        assert store.apply(_set(CLOSED_RECORD))[1] == Record(failures=2)

    def test_concurrent_steps_are_atomic(
        self, store: BreakerStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Four threads counting failures at once lose none of them."""
        monkeypatch.setattr(_breaker_redis, "_CAS_ATTEMPTS", 10_000)
        many = BreakerMachine(BreakerPolicy(failure_threshold=1000), "me")

        def count(old: Record, now: float) -> tuple[Record, None]:
            return many.record(old, now, True, False, None), None

        def work() -> None:
            for _ in range(25):
                store.apply(count)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert store.read()[0].failures == 100

    def test_reachable(self, store: BreakerStore) -> None:
        """None when process-local, else whether the shared store answers."""
        store.read()
        if isinstance(store, _breaker_redis.RedisStore):
            assert store.reachable() is (store.url != DEAD_REDIS)
        elif isinstance(store, HostStore):
            damaged = Path(store.file.path).read_bytes().startswith(b"garbage")
            assert store.reachable() is (not damaged)
        else:
            assert store.reachable() is None


@pytest.mark.redis
class TestShared:
    def test_two_stores_of_one_name_share_the_record(self, redis_url: str) -> None:
        """What one store writes, a second one (another process) reads, and builds on."""
        a = _breaker_redis.RedisStore(redis_url, "inventory", MACHINE.reconcile)
        b = _breaker_redis.RedisStore(redis_url, "inventory", MACHINE.reconcile)
        other = _breaker_redis.RedisStore(redis_url, "billing", MACHINE.reconcile)
        b.read()  # b caches the closed record
        a.apply(_fail)
        # b's cached view is stale, yet its write is checked against Redis:
        assert b.apply(_fail, fresh=False)[0].failures == 2
        assert a.apply(_fail)[0].state is OPEN
        assert other.read()[0] == CLOSED_RECORD

    def test_one_trial_lease_across_stores(self, redis_url: str) -> None:
        """Two parties claiming one breaker past reset_timeout: exactly one gets the lease."""
        mine = BreakerMachine(BreakerPolicy(failure_threshold=1, reset_timeout=0.001), "me")
        theirs = BreakerMachine(BreakerPolicy(failure_threshold=1, reset_timeout=0.001), "them")
        a = _breaker_redis.RedisStore(redis_url, "inventory", mine.reconcile)
        b = _breaker_redis.RedisStore(redis_url, "inventory", theirs.reconcile)
        now = a.read()[1]
        a.apply(_set(Record(OPEN, False, now - 1.0, 1)))  # opened a second ago
        b.read()
        verdicts = [a.apply(mine.admit)[1].value, b.apply(theirs.admit)[1].value]
        assert sorted(verdicts) == ["reject", "trial"]


class TestHostShared:
    def test_two_stores_of_one_name_share_the_record(self, tmp_path: Any) -> None:
        """What one store (another process) writes, a second reads and builds on; other names stay apart."""
        a = HostStore(HostFile(str(tmp_path), "inventory"))
        b = HostStore(HostFile(str(tmp_path), "inventory"))
        other = HostStore(HostFile(str(tmp_path), "billing"))
        b.read()
        a.apply(_fail)
        assert b.apply(_fail)[0].failures == 2
        assert a.apply(_fail)[0].state is OPEN
        assert b.read()[2] == ((CLOSED, OPEN),)  # b notices the change once...
        assert b.read()[0].state is OPEN and b.read()[2] == ()  # ...and not again
        assert other.read()[0] == CLOSED_RECORD

    def test_one_trial_lease_across_stores(self, tmp_path: Any) -> None:
        """Two parties claiming one breaker past reset_timeout: exactly one gets the lease."""
        mine = BreakerMachine(BreakerPolicy(failure_threshold=1, reset_timeout=0.001), "me")
        theirs = BreakerMachine(BreakerPolicy(failure_threshold=1, reset_timeout=0.001), "them")
        a = HostStore(HostFile(str(tmp_path), "inventory"))
        b = HostStore(HostFile(str(tmp_path), "inventory"))
        now = a.read()[1]
        a.apply(_set(Record(OPEN, False, now - 1.0, 1)))
        verdicts = [a.apply(mine.admit)[1].value, b.apply(theirs.admit)[1].value]
        assert sorted(verdicts) == ["reject", "trial"]

    def test_a_dead_holders_lease_reads_as_lapsed(
        self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A trial claimed by a process that is gone is free for the next caller at once."""
        from resilient_client import _host_state

        a = HostStore(HostFile(str(tmp_path), "inventory"))
        now = a.read()[1]
        a.apply(_set(Record(HALF_OPEN, False, now - 1.0, 1, "them", now + 30.0)))
        theirs = BreakerMachine(BreakerPolicy(failure_threshold=1, reset_timeout=0.001), "other")
        b = HostStore(HostFile(str(tmp_path), "inventory"))
        assert b.apply(theirs.admit)[1].value == "reject"  # the holder (us) is alive
        # Seen from another process, after the holder died:
        monkeypatch.setattr(_host_state, "alive", lambda pid, token, ns: False)
        c = HostStore(HostFile(str(tmp_path), "inventory"))
        assert c.read()[0].trial_until == 0.0
        assert c.apply(theirs.admit)[1].value == "trial"

    def test_a_torn_or_damaged_record_is_reset_not_trusted(self, tmp_path: Any) -> None:
        """A breaker record whose checksum fails reads as closed (and is rewritten), the file stays shared."""
        a = HostStore(HostFile(str(tmp_path), "inventory"))
        a.apply(_fail)
        with open(a.file.path, "r+b") as f:
            f.seek(64 + 4)
            f.write(b"\x07\x07")  # the failure count, without its crc
        b = HostStore(HostFile(str(tmp_path), "inventory"))
        assert b.read()[0] == CLOSED_RECORD
        assert b.reachable() is True
