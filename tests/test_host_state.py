"""
The host file's bulkhead and budget, and how every piece degrades: several
`HostFile` objects on one file stand for several processes (each opens its
own descriptor, so flock excludes them as it does processes). Real
processes are in test_host_processes.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilient_client import _host_dir, _host_file
from resilient_client._host_file import ROW, STATE_DIR_ENV, HostFile, default_state_dir, path_for
from resilient_client._host_state import HostBudget, HostBulkhead, HostStore
from resilient_client._policy import BudgetPolicy, BulkheadPolicy
from resilient_client.testing import FakeClock


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _host_dir._warned.clear()


def _bulkhead(d: Path, cap: int = 3) -> HostBulkhead:
    return HostBulkhead("inv", BulkheadPolicy(max_concurrent=cap), HostFile(str(d), "inv"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    return proc.pid


def _plant_row(d: Path, index: int, pid: int, held: int, expiry: float, token: int = 0) -> None:
    """What a process (of our pid namespace) that held *held* slots left in the file."""
    f = HostFile(str(d), "inv")
    with f.locked() as fd:
        f.write_row(fd, index, [pid, held, expiry, token, _host_dir.me().ns], index)


class TestHostBulkhead:
    def test_the_cap_is_host_wide(self, tmp_path: Path) -> None:
        """Two processes' bulkheads of cap 3 hold 3 slots between them, not 6."""
        a, b = _bulkhead(tmp_path), _bulkhead(tmp_path)
        assert [a.try_acquire(), a.try_acquire(), b.try_acquire()] == [True, True, True]
        assert not b.try_acquire() and not a.try_acquire()
        assert a.host_in_flight() == 3 and a.in_flight == 2 and b.rejected == 1
        a.release()
        assert b.try_acquire()
        for bh in (a, b, b):
            bh.release()
        assert a.host_in_flight() == 0

    def test_a_dead_processes_slots_come_back(self, tmp_path: Path) -> None:
        """Slots held by a pid that is gone are reclaimed when the cap is reached."""
        _plant_row(tmp_path, 0, _dead_pid(), 3, time.monotonic() + 600)
        a = _bulkhead(tmp_path)
        assert a.try_acquire()
        assert a.host_in_flight() == 1

    def test_a_lapsed_lease_comes_back(self, tmp_path: Path) -> None:
        """A live pid (reused by another process) whose lease expired holds nothing."""
        _plant_row(tmp_path, 0, os.getppid(), 3, time.monotonic() - 1)
        assert _bulkhead(tmp_path).try_acquire()

    def test_a_live_lease_is_respected(self, tmp_path: Path) -> None:
        """Slots of a live process within its lease are not taken."""
        _plant_row(tmp_path, 0, os.getppid(), 3, time.monotonic() + 600)
        assert not _bulkhead(tmp_path).try_acquire()

    def test_release_after_a_reclaim_does_not_go_negative(self, tmp_path: Path) -> None:
        """A process whose row was cleared meanwhile gives back nothing, and no error."""
        a = _bulkhead(tmp_path)
        assert a.try_acquire()
        _plant_row(tmp_path, 0, os.getpid(), 0, 0.0)
        a.release()
        assert a.host_in_flight() == 0 and a.in_flight == 0


    def test_a_live_processes_idle_row_is_not_taken(self, tmp_path: Path) -> None:
        """A row is its process's while the pid lives, even holding nothing: a newcomer claims another."""
        _plant_row(tmp_path, 0, os.getppid(), 0, time.monotonic() - 1)
        a = _bulkhead(tmp_path)
        assert a.try_acquire()
        f = HostFile(str(tmp_path), "inv")
        with f.locked() as fd:
            rows = f.read_rows(fd)
        assert [int(r[0]) for r in rows] == [os.getppid(), os.getpid()] and rows[1][1] == 1

    def test_a_dead_processes_row_is_reused(self, tmp_path: Path) -> None:
        """A row left by a pid that is gone is claimed again, not a new one appended."""
        _plant_row(tmp_path, 0, _dead_pid(), 0, time.monotonic() + 600)
        a = _bulkhead(tmp_path)
        assert a.try_acquire()
        f = HostFile(str(tmp_path), "inv")
        with f.locked() as fd:
            assert [(int(r[0]), int(r[1])) for r in f.read_rows(fd)] == [(os.getpid(), 1)]

    def test_acquire_takes_no_file_lock(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Once the row is claimed, acquire and release are a pwrite and a pread: no flock."""
        a = _bulkhead(tmp_path)
        assert a.try_acquire()
        a.release()
        locks: list[int] = []
        real = _host_file.fcntl.flock

        def counting(fd: int, op: int) -> None:
            locks.append(op)
            real(fd, op)

        monkeypatch.setattr(_host_file.fcntl, "flock", counting)
        for _ in range(5):
            assert a.try_acquire()
            a.release()
        assert locks == []


class TestHostBudget:
    def test_the_budget_is_host_wide(self, tmp_path: Path) -> None:
        """Retries spent by one process count against another's: 10 in all over the window."""
        policy = BudgetPolicy(ratio=0.0, min_per_second=1, window=10.0)
        a = HostBudget(policy, FakeClock(), HostFile(str(tmp_path), "inv"))
        b = HostBudget(policy, FakeClock(), HostFile(str(tmp_path), "inv"))
        spent = [x.try_spend() for x in (a, b) * 6]
        assert spent.count(True) == 10 and spent[-2:] == [False, False]

    def test_first_tries_reach_the_file(self, tmp_path: Path) -> None:
        """First tries counted in one process are seen by another once flushed (at the latest by a retry)."""
        policy = BudgetPolicy(ratio=0.5, min_per_second=0, window=10.0)
        a = HostBudget(policy, FakeClock(), HostFile(str(tmp_path), "inv"))
        b = HostBudget(policy, FakeClock(), HostFile(str(tmp_path), "inv"))
        for _ in range(4):
            a.record_request()
        assert a.try_spend() and a.try_spend()  # 0.5 x 4 first tries
        assert not b.try_spend()
        assert b.snapshot() == (4, 2)


class TestDamage:
    def test_a_file_damaged_mid_run_degrades_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Overwritten in use: one warning, then bulkhead, budget and breaker carry on in the process."""
        f = HostFile(str(tmp_path), "inv")
        bulkhead = HostBulkhead("inv", BulkheadPolicy(max_concurrent=2), f)
        budget = HostBudget(BudgetPolicy(), FakeClock(), f)
        store = HostStore(f)
        assert bulkhead.try_acquire()
        Path(f.path).write_bytes(b"\xff" * 100)  # truncated and foreign at once
        with caplog.at_level(logging.WARNING, "resilient_client"):
            bulkhead.release()  # the slot taken before still comes back
            assert bulkhead.try_acquire() and bulkhead.try_acquire() and not bulkhead.try_acquire()
            assert budget.try_spend()
            assert store.read()[0].state == "closed" and store.reachable() is False
        assert len([r for r in caplog.records if "unusable" in r.getMessage()]) == 1

    @pytest.mark.parametrize("damage", [b"", b"RCHOST\0\0\x09\0\0\0" + bytes(4084)])
    def test_a_truncated_or_foreign_version_file_is_left_alone(self, tmp_path: Path, damage: bytes) -> None:
        """A file that is not our layout is never written: the process keeps its state to itself."""
        path = Path(path_for(str(tmp_path), "inv"))
        path.write_bytes(damage or b"RCHOST")
        bulkhead = _bulkhead(tmp_path, cap=1)
        assert bulkhead.try_acquire() and not bulkhead.try_acquire()
        assert path.read_bytes() == (damage or b"RCHOST")

    def test_a_state_dir_others_can_write_is_refused(self, tmp_path: Path) -> None:
        """Anyone who can write the directory could forge the breakers: process-local instead."""
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)
        store = HostStore(HostFile(str(shared), "inv"))
        assert store.read()[0].state == "closed" and store.reachable() is False

    def test_the_default_state_dir_is_per_user(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Under XDG_RUNTIME_DIR when there is one, else /dev/shm with the uid in the name; created 0700."""
        monkeypatch.delenv(STATE_DIR_ENV)  # the testing kit's, for this test
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        assert default_state_dir() == str(tmp_path / "resilient_client")
        HostFile(default_state_dir(), "inv").fd()
        assert (tmp_path / "resilient_client").stat().st_mode & 0o777 == 0o700
        monkeypatch.delenv("XDG_RUNTIME_DIR")
        assert default_state_dir().endswith(f"resilient_client-{os.getuid()}")

    def test_the_row_layout(self) -> None:
        """A lease row is 32 bytes: 128 of them fit the 8 KiB file after the header sections."""
        from resilient_client._host_redis import CACHE_AT

        assert ROW.size == 32 and _host_file.ROW0 + 128 * ROW.size <= CACHE_AT < _host_file.SIZE


_SEEN: set[str] = set()


class TestTestingKit:
    @pytest.mark.parametrize("n", [1, 2])
    def test_each_test_gets_its_own_state_dir(self, n: int, tmp_path_factory: pytest.TempPathFactory) -> None:
        """The kit points the default state_dir at a directory of this test's own, under pytest's temp dir."""
        from resilient_client import ResilientSession

        here = default_state_dir()
        assert here not in _SEEN
        _SEEN.add(here)
        assert Path(here).is_relative_to(tmp_path_factory.getbasetemp())
        session = ResilientSession({"defaults": {"state": "host", "bulkhead": {"max_concurrent": 1}},
                                    "endpoints": [{"name": "nine", "match": "http://127.0.0.1:9/"}]})
        session._route_for("GET", "http://127.0.0.1:9/").state.bulkhead.try_acquire()  # type: ignore[union-attr]
        assert [p.suffix for p in Path(here).iterdir()] == [".state"]


class TestDescriptors:
    def test_a_forgotten_endpoint_state_closes_its_file(self, tmp_path: Path) -> None:
        """Host states of evicted origins must not leak a descriptor each."""
        import gc

        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            _bulkhead(tmp_path).try_acquire()
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before + 1


class TestScopes:
    def test_each_state_builds_its_pieces(self, tmp_path: Path) -> None:
        """memory: all in the process; host: all in the file; redis: breaker in Redis, rest on the host."""
        from resilient_client._breaker_redis import RedisStore
        from resilient_client._breaker_store import MemoryStore
        from resilient_client._budget import RetryBudget
        from resilient_client._bulkhead import Bulkhead
        from resilient_client._clock import SYSTEM_CLOCK
        from resilient_client._endpoints import EndpointState
        from resilient_client._policy import Policy

        def pieces(state: str) -> tuple[type, type, type]:
            ep = EndpointState("inv", Policy(name="inv", state=state), SYSTEM_CLOCK, lambda *a: None,
                               str(tmp_path))
            assert ep.breaker is not None and ep.bulkhead is not None and ep.budget is not None
            return type(ep.breaker._store), type(ep.bulkhead), type(ep.budget)

        assert pieces("memory") == (MemoryStore, Bulkhead, RetryBudget)
        assert pieces("host") == (HostStore, HostBulkhead, HostBudget)
        # Nothing listens on the discard port; building the store does no I/O.
        assert pieces("redis://127.0.0.1:9/0") == (RedisStore, HostBulkhead, HostBudget)


class TestPolicyMismatch:
    def test_a_process_with_other_thresholds_is_reported_once(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The first process records its policy; a namesake with another one is logged, once."""
        from resilient_client._host_state import check_policy
        from resilient_client._policy import BreakerPolicy

        first = (BreakerPolicy(failure_threshold=5), None, None)
        other = (BreakerPolicy(failure_threshold=3), None, None)
        assert check_policy(HostFile(str(tmp_path), "inv"), first)
        assert check_policy(HostFile(str(tmp_path), "inv"), first)
        with caplog.at_level(logging.WARNING, "resilient_client"):
            assert not check_policy(HostFile(str(tmp_path), "inv"), other)
            assert not check_policy(HostFile(str(tmp_path), "inv"), other)
        assert len([r for r in caplog.records if "differs" in r.getMessage()]) == 1


class TestCreation:
    def test_a_creator_that_died_before_the_header_is_finished_for_it(self, tmp_path: Path) -> None:
        """A sized file whose header was never written is laid out by the next opener, not refused."""
        path = Path(path_for(str(tmp_path), "inv"))
        path.write_bytes(bytes(_host_file.SIZE))
        store = HostStore(HostFile(str(tmp_path), "inv"))
        assert store.read()[0].state == "closed" and store.reachable() is True
        assert path.read_bytes().startswith(b"RCHOST")


class TestRedisHostCache:
    def test_a_published_snapshot_is_fresh_for_one_interval_then_claimed_once(self, tmp_path: Path) -> None:
        """One process publishes; another reads it while fresh; once stale, one claim wins until published."""
        from resilient_client._host_redis import RedisHostCache

        a, b = RedisHostCache(HostFile(str(tmp_path), "inv")), RedisHostCache(HostFile(str(tmp_path), "inv"))
        assert a.fresh(0.02) is None and a.claim(0.02) and not b.claim(0.02)  # a refreshes, b waits
        values = ("open", "1234.000", "", "5", "")
        a.publish(values, 0.0, 1000.0, time.monotonic())
        assert b.fresh(10.0) == (values, 0.0, 1000.0, pytest.approx(time.monotonic(), abs=1.0))
        assert b.fresh(0.0) is None and b.claim(0.0)  # stale: b's turn
        a.publish(values, 0.0, 999.0, time.monotonic())  # older by Redis's clock: not over newer news
        assert b.fresh(10.0) is not None and b.fresh(10.0)[2] == 1000.0  # type: ignore[index]

    def test_a_torn_or_damaged_entry_reads_as_none(self, tmp_path: Path) -> None:
        """Bytes that fail the crc are no cache: the process reads Redis itself."""
        from resilient_client._host_redis import CACHE_AT, RedisHostCache

        cache = RedisHostCache(HostFile(str(tmp_path), "inv"))
        cache.publish(("", "", "", "", ""), 0.0, 1000.0, time.monotonic())
        assert cache.fresh(10.0) is not None
        with open(path_for(str(tmp_path), "inv"), "r+b") as f:
            f.seek(CACHE_AT + 41)  # inside the payload
            f.write(b"\xff\xff")
        assert cache.fresh(10.0) is None


class TestUpgrade:
    def _v1(self, path: Path, pid: int) -> None:
        """A layout-1 file (the release before) with one lease row of *pid*."""
        import struct

        raw = bytearray(4096)
        struct.pack_into("<8sII48s", raw, 0, b"RCHOST\0\0", 1, 4096, b"inv")
        struct.pack_into("<I", raw, 256, 1)
        struct.pack_into("<iId", raw, 272, pid, 1, time.monotonic() + 600)
        path.write_bytes(bytes(raw))

    def test_an_unused_file_of_the_older_layout_is_laid_out_afresh(self, tmp_path: Path) -> None:
        """After a rolling upgrade: no live process of the older release, so the new ones share it."""
        path = Path(path_for(str(tmp_path), "inv"))
        self._v1(path, _dead_pid())
        bulkhead = _bulkhead(tmp_path, cap=1)
        assert bulkhead.try_acquire() and bulkhead.host_in_flight() == 1 and bulkhead.scope == "host"
        assert path.stat().st_size == _host_file.SIZE

    def test_an_older_layout_in_use_is_left_alone(self, tmp_path: Path) -> None:
        """An older worker still runs: its file is not rewritten under it."""
        path = Path(path_for(str(tmp_path), "inv"))
        self._v1(path, os.getppid())
        bulkhead = _bulkhead(tmp_path, cap=1)
        assert bulkhead.try_acquire() and bulkhead.scope == "process"
        assert path.stat().st_size == 4096
