"""
`state: host` with real processes (forked, so a session built before the
fork, as with gunicorn ``--preload``, is covered too) calling a real
loopback peer: a breaker opened by one process is open for all, one trial
per ``reset_timeout`` host-wide, a host-wide bulkhead cap measured at the
peer, a SIGKILLed holder's slot and trial coming back, and a state file
corrupted mid-run.

Each process reports over a queue; every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import Peer, answer, delay, hang, server_error

from resilient_client import BulkheadFull, CircuitOpenError, ResilientSession
from resilient_client._breaker_machine import OPEN, Record
from resilient_client._host_file import HostFile
from resilient_client._host_state import HostStore

# The tests name the state_dir each process uses: keep it (the kit would give this test its own).
pytestmark = [pytest.mark.skipif(not hasattr(os, "fork"), reason="forks worker processes"),
              pytest.mark.config_state_dir]

CTX = multiprocessing.get_context("fork")


class InFlight:
    """A peer behaviour that answers 200 after *seconds*, counting requests in flight at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = self.most = 0
        self._lock = threading.Lock()

    def serve(self, conn: Any, request: Any) -> bool:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            conn.wait(self.seconds)
        finally:
            with self._lock:
                self.now -= 1
        return answer(200, b"ok").serve(conn, request)


def _config(peer: Peer, state_dir: Path, **sections: Any) -> dict[str, Any]:
    defaults = {"state": "host", "retry": None, "timeout": {"read": 3.0, "total": 5.0}, **sections}
    return {"state_dir": str(state_dir), "defaults": defaults,
            "endpoints": [{"name": "peer", "match": peer.url("/")}]}


def _run(n: int, target: Callable[..., None], *args: Any, timeout: float = 15.0) -> list[Any]:
    """Run *target(queue, *args)* in *n* processes; return what each put on the queue."""
    queue: Any = CTX.Queue()
    procs = [CTX.Process(target=target, args=(queue, *args), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=timeout)
    return results


def _outcomes(session: ResilientSession, url: str, until: float) -> dict[str, int]:
    """Call *url* until the monotonic time *until*; count the outcomes by kind."""
    counts: dict[str, int] = {}
    for _ in range(100_000):  # bounded; ends by time long before
        if time.monotonic() >= until:
            break
        try:
            kind = str(session.get(url).status_code)
        except Exception as exc:  # every kind is counted; the test says which it expects
            kind = type(exc).__name__
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(max_connections=64) as p:
        yield p


def _open_past_reset(state_dir: Path) -> None:
    """Open the shared breaker as if it opened a second ago (reset_timeout has passed)."""
    store = HostStore(HostFile(str(state_dir), "peer"))
    now = store.read()[1]
    store.apply(lambda rec, _now: (Record(OPEN, False, now - 1.0, 1), None))


class TestHostProcesses:
    def test_a_breaker_opened_by_one_process_is_open_for_all(self, peer: Peer, tmp_path: Path) -> None:
        """Three failures in the parent open the breaker of every worker, forked after (preload) or not."""
        peer.on("/bad", server_error(503))
        peer.on("/ok", answer(200, b"ok"))
        session = ResilientSession(_config(peer, tmp_path, breaker={"failure_threshold": 3}))
        assert session.get(peer.url("/ok")).status_code == 200  # the file is open before the fork

        def child(queue: Any) -> None:
            fresh = ResilientSession(_config(peer, tmp_path))
            results = []
            for s in (session, fresh):
                try:
                    results.append(s.get(peer.url("/ok")).status_code)
                except CircuitOpenError:
                    results.append("open")
            queue.put(results)

        for _ in range(3):
            session.get(peer.url("/bad"))
        assert _run(3, child) == [["open", "open"]] * 3
        assert peer.hits("/ok") == 1

    def test_one_trial_per_reset_timeout_across_processes(self, peer: Peer, tmp_path: Path) -> None:
        """Four workers hammering an open breaker send one trial at a time to the peer, not four."""
        peer.on("/bad", delay(0.1, server_error(503)))
        _open_past_reset(tmp_path)
        config = _config(peer, tmp_path, breaker={"failure_threshold": 1, "reset_timeout": 0.3})
        until = time.monotonic() + 1.0

        def child(queue: Any) -> None:
            queue.put(_outcomes(ResilientSession(config), peer.url("/bad"), until))

        results = _run(4, child)
        trials = sum(r.get("503", 0) for r in results)
        # Trials at about 0, 0.4 and 0.8 s (each 0.1 s long, then 0.3 s open):
        # one per reset_timeout host-wide; per process it would be 4 each time.
        assert 2 <= trials <= 4 and peer.hits("/bad") == trials
        assert all(set(r) <= {"503", "CircuitOpenError"} for r in results)

    def test_the_bulkhead_cap_is_host_wide_at_the_peer(self, peer: Peer, tmp_path: Path) -> None:
        """Four workers of three threads, max_concurrent 3: never more than 3 calls at the peer."""
        slow = InFlight(0.1)
        peer.on("/slow", slow)
        config = _config(peer, tmp_path, bulkhead={"max_concurrent": 3})
        until = time.monotonic() + 0.8

        def child(queue: Any) -> None:
            session = ResilientSession(config)
            out: list[dict[str, int]] = []
            url = peer.url("/slow")
            threads = [threading.Thread(target=lambda: out.append(_outcomes(session, url, until)))
                       for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=10)
            queue.put(out)

        results = [r for per_process in _run(4, child) for r in per_process]
        assert slow.most == 3  # the cap was reached, and never passed
        assert sum(r.get("BulkheadFull", 0) for r in results) > 0

    def test_a_sigkilled_holder_gives_back_its_slot_and_trial(self, peer: Peer, tmp_path: Path) -> None:
        """A worker killed while holding the only slot and the half-open trial leaks neither."""
        peer.on("/hang", hang())
        peer.on("/ok", answer(200, b"ok"))
        _open_past_reset(tmp_path)
        config = _config(peer, tmp_path, bulkhead={"max_concurrent": 1},
                         breaker={"failure_threshold": 1, "reset_timeout": 0.2})

        def child() -> None:
            ResilientSession(config).get(peer.url("/hang"))

        holder = CTX.Process(target=child, daemon=True)
        holder.start()
        _wait_for(lambda: peer.hits("/hang") == 1)
        session = ResilientSession(config)
        with pytest.raises(BulkheadFull):
            session.get(peer.url("/ok"))
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(timeout=5)  # reaped: its pid is gone, not a zombie
        # The trial lease (30 s) and the slot lease (600 s) are far off: only
        # the dead pid gives them back, at once.
        assert session.get(peer.url("/ok")).status_code == 200
        assert session.circuit("peer").state == "closed"

    def test_a_file_corrupted_mid_run_never_fails_a_call(self, peer: Peer, tmp_path: Path) -> None:
        """Workers calling while the state file is overwritten keep getting 200s."""
        peer.on("/ok", answer(200, b"ok"))
        config = _config(peer, tmp_path)
        ResilientSession(config).get(peer.url("/ok"))  # the file exists
        start = time.monotonic()

        def child(queue: Any) -> None:
            queue.put(_outcomes(ResilientSession(config), peer.url("/ok"), start + 0.6))

        def corrupt() -> None:
            time.sleep(0.3)
            for f in tmp_path.glob("*.state"):
                f.write_bytes(os.urandom(100))

        spoiler = threading.Thread(target=corrupt)
        spoiler.start()
        results = _run(3, child)
        spoiler.join(timeout=5)
        assert all(set(r) == {"200"} for r in results), results
        assert peer.hits("/ok") == 1 + sum(r["200"] for r in results)


def _hammer(queue: Any, state_dir: str, threads: int, rounds: int) -> None:
    """One worker: *threads* threads each counting *rounds* failures, slots and retries."""
    from resilient_client._breaker_machine import BreakerMachine
    from resilient_client._host_budget import HostBudget
    from resilient_client._host_state import HostBulkhead
    from resilient_client._policy import BreakerPolicy, BudgetPolicy, BulkheadPolicy
    from resilient_client.testing import FakeClock

    machine = BreakerMachine(BreakerPolicy(failure_threshold=1_000_000), "w")
    store = HostStore(HostFile(state_dir, "peer"))
    bulkhead = HostBulkhead("peer", BulkheadPolicy(max_concurrent=1_000), HostFile(state_dir, "peer"))
    budget = HostBudget(BudgetPolicy(ratio=0.0, min_per_second=1_000, window=10.0), FakeClock(),
                        HostFile(state_dir, "peer"))
    refused = []

    def work() -> None:
        for _ in range(rounds):
            store.apply(lambda rec, now: (machine.record(rec, now, True, False, None), None))
            if bulkhead.try_acquire():
                bulkhead.release()
            else:
                refused.append(1)
            budget.try_spend()

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    queue.put(len(refused))


class TestNoLostUpdates:
    def test_processes_and_threads_lose_no_update(self, tmp_path: Path) -> None:
        """4 processes x 4 threads x 50 rounds: every failure and retry counted exactly, every slot back."""
        refused = _run(4, _hammer, str(tmp_path), 4, 50, timeout=60)
        store = HostStore(HostFile(str(tmp_path), "peer"))
        assert store.read()[0].failures == 4 * 4 * 50
        from resilient_client._host_budget import HostBudget
        from resilient_client._policy import BudgetPolicy
        from resilient_client.testing import FakeClock

        budget = HostBudget(BudgetPolicy(), FakeClock(), HostFile(str(tmp_path), "peer"))
        assert budget.snapshot()[1] == 4 * 4 * 50
        bulkhead_file = HostFile(str(tmp_path), "peer")
        with bulkhead_file.locked() as fd:
            assert sum(int(r[1]) for r in bulkhead_file.read_rows(fd)) == 0
        assert refused == [0, 0, 0, 0]
