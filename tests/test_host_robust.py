"""
`state: host` against what real hosts do to it (the findings of the fourth
review, each reproduced here with real processes and a loopback peer): two
sessions in one process, a pid reused after a restart, a lock holder that
is stopped, a worker's forked child, a lease table full of dead processes,
another pid namespace, another clock, a file deleted or reset under running
workers, namesakes with another match or an older policy, and origins.

Every wait is bounded; the file's recheck interval is shortened to 0.1 s.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import Peer, answer, delay, server_error

from resilient_client import BulkheadFull, ResilientSession, _host_dir, _host_file
from resilient_client._host_file import HostFile, path_for
from resilient_client.tools._host_status import reset_endpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks worker processes")

CTX = multiprocessing.get_context("fork")
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent


@pytest.fixture(autouse=True)
def _fast_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_host_file, "CHECK_EVERY", 0.1, raising=False)
    # These tests name their state_dir (tmp_path); the kit's per-test one would win.
    monkeypatch.delenv("RESILIENT_CLIENT_TEST_STATE_DIR", raising=False)
    _host_dir._warned.clear()


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(max_connections=64) as p:
        p.on("/ok", answer(200, b"ok")).on("/slow", delay(1.0, answer(200, b"ok")))
        p.on("/503", server_error(503))
        yield p


def _config(peer: Peer, state_dir: Path, cap: int | None = None, **sections: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"state": "host", "retry": None, "timeout": {"read": 5.0, "total": 5.0},
                                **sections}
    if cap is not None:
        defaults["bulkhead"] = {"max_concurrent": cap}
    return {"state_dir": str(state_dir), "defaults": defaults,
            "endpoints": [{"name": "peer", "match": peer.url("/")}]}


def _call(session: ResilientSession, url: str) -> str:
    try:
        return str(session.get(url).status_code)
    except BulkheadFull:
        return "full"
    except Exception as exc:  # the test says which kinds it expects
        return type(exc).__name__


def _held(state_dir: Path) -> int:
    """Calls the file counts in flight, read by a HostFile of our own."""
    f = HostFile(str(state_dir), "peer")
    with f.locked() as fd:
        return sum(int(r[1]) for r in f.read_rows(fd))


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.005)


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _lock_is_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _two_workers_at_once(peer: Peer, state_dir: Path, before: Callable[[], None],
                         cap: int = 1) -> list[str]:
    """
    An *old* worker (its session in use since before *before* ran) and a
    *new* one each make one slow call at the same moment; returns what they got.
    """
    config = _config(peer, state_dir, cap=cap)
    queue: Any = CTX.Queue()
    go = CTX.Event()
    ready = CTX.Event()

    def worker(old: bool) -> None:
        session = ResilientSession(config)
        if old:
            session.get(peer.url("/ok"))
            ready.set()
        go.wait(10)
        if old:
            session.get(peer.url("/ok"))  # notices the change (a degraded one retries the file)
        queue.put(_call(session, peer.url("/slow")))

    old = CTX.Process(target=worker, args=(True,), daemon=True)
    old.start()
    assert ready.wait(10)
    before()
    time.sleep(0.2)  # past the recheck interval
    new = CTX.Process(target=worker, args=(False,), daemon=True)
    new.start()
    go.set()
    try:
        return sorted(queue.get(timeout=15) for _ in range(2))
    finally:
        for p in (old, new):
            p.join(timeout=10)


def _unshare(*args: str) -> list[str]:
    """``unshare`` into a new pid namespace, running the helper with *args*."""
    return ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(_HERE / "host_ns_worker.py"),
            *args]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                          timeout=10).returncode == 0


def _env() -> dict[str, str]:
    """The environment of a helper process: this checkout's package first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for pid namespaces")


class TestOneProcess:
    def test_two_sessions_in_one_process_leak_no_slot(self, peer: Peer, tmp_path: Path) -> None:
        """Two sessions on one endpoint, three threads each: every slot taken is given back."""
        sessions = [ResilientSession(_config(peer, tmp_path, cap=4)) for _ in range(2)]
        bulkheads = [s._route_for("GET", peer.url("/ok")).state.bulkhead for s in sessions]
        until = time.monotonic() + 0.5

        def churn(bh: Any) -> None:
            for _ in range(1_000_000):  # bounded; ends by time long before
                if time.monotonic() >= until:
                    break
                if bh.try_acquire():
                    bh.release()

        threads = [threading.Thread(target=churn, args=(bh,)) for bh in bulkheads for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert _held(tmp_path) == 0
        assert [_call(sessions[0], peer.url("/ok")) for _ in range(3)] == ["200"] * 3

    def test_sessions_share_one_descriptor_per_file(self, peer: Peer, tmp_path: Path) -> None:
        """Ten sessions on one endpoint open its file once, not ten times."""
        sessions = [ResilientSession(_config(peer, tmp_path, cap=4)) for _ in range(10)]
        for s in sessions:
            s.get(peer.url("/ok"))
        state = path_for(str(tmp_path), "peer")
        fds = [fd for fd in os.listdir("/proc/self/fd") if _target(fd) == state]
        assert len(fds) == 1

    def test_unmatched_origins_keep_their_state_in_the_process(self, peer: Peer, tmp_path: Path) -> None:
        """``defaults: {state: host}`` makes no file per origin ever called."""
        session = ResilientSession({"state_dir": str(tmp_path), "defaults": {"state": "host", "retry": None}})
        assert session.get(peer.url("/ok")).status_code == 200
        assert list(tmp_path.iterdir()) == []


class TestDeadAndReused:
    @needs_unshare
    def test_a_reused_pid_does_not_inherit_a_dead_workers_slots(self, peer: Peer, tmp_path: Path) -> None:
        """A worker SIGKILLed mid-call whose pid comes back (same namespace): its successor is not refused."""
        proc = subprocess.run(_unshare("reuse", str(tmp_path), peer.url("/slow")), env=_env(),
                              capture_output=True, text=True, timeout=30)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["calls"] == ["200"] * 3, proc.stderr

    def test_a_full_lease_table_of_dead_processes_is_reclaimed(self, peer: Peer, tmp_path: Path) -> None:
        """128 workers that died holding a slot each: a newcomer still shares the file."""
        session = ResilientSession(_config(peer, tmp_path, cap=1000))
        bulkhead: Any = session._route_for("GET", peer.url("/ok")).state.bulkhead
        pids = []
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        for _ in range(_host_file.MAX_PROCESSES):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - a worker that dies mid-call, its slot taken
                try:
                    os.close(go_w)
                    bulkhead.try_acquire()
                    os.write(done_w, b"x")
                    select.select([go_r], [], [], 10)  # all alive at once: each has a row of its own
                finally:
                    os._exit(0)
            pids.append(pid)
        for _ in range(_host_file.MAX_PROCESSES):
            assert select.select([done_r], [], [], 10)[0] and os.read(done_r, 1) == b"x"
        os.close(go_w)
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (go_r, done_r, done_w):
            os.close(fd)
        assert _held(tmp_path) == _host_file.MAX_PROCESSES
        newcomer: Any = ResilientSession(_config(peer, tmp_path, cap=2))
        nb = newcomer._route_for("GET", peer.url("/ok")).state.bulkhead
        assert nb.try_acquire()  # a dead process's row is its row now; at the cap, the others are cleared
        assert nb.host_in_flight() == 1  # shared (not process-local)

    def test_a_forked_child_does_not_keep_the_lock_of_a_dead_parent(self, peer: Peer, tmp_path: Path) -> None:
        """A worker that forked a child (no exec) dies holding the lock: the lock dies with it."""
        config = _config(peer, tmp_path, cap=10)
        path = path_for(str(tmp_path), "peer")
        r, w = os.pipe()
        worker = os.fork()
        if worker == 0:  # pragma: no cover - the worker process
            try:
                session = ResilientSession(config)
                session.get(peer.url("/ok"))
                child = os.fork()
                if child == 0:  # a pool worker that never touches the session
                    time.sleep(20)
                    os._exit(0)
                session._route_for("GET", peer.url("/ok")).state.bulkhead._file.lock()  # type: ignore[union-attr]
                os.write(w, f"{child}\n".encode())
                time.sleep(20)
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as pipe:
            child = int(pipe.readline())
        try:
            assert not _lock_is_free(path)
            os.kill(worker, signal.SIGKILL)
            os.waitpid(worker, 0)
            _wait_for(lambda: _lock_is_free(path), timeout=2.0)
        finally:
            os.kill(child, signal.SIGKILL)

    def test_a_stopped_lock_holder_does_not_stall_other_processes(self, peer: Peer, tmp_path: Path) -> None:
        """A holder stopped with the lock (SIGSTOP, docker pause): calls elsewhere go on, on time."""
        session = ResilientSession(_config(peer, tmp_path, cap=10, breaker={"failure_threshold": 2}))
        session.get(peer.url("/ok"))
        holder = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, sys, time\n"
            f"fd = os.open({path_for(str(tmp_path), 'peer')!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nos.kill(os.getpid(), 19)\n"
            "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            results: list[str] = []
            took: list[float] = []

            def calls() -> None:
                for path in ("/ok", "/503", "/503", "/ok"):
                    t0 = time.monotonic()
                    results.append(_call(session, peer.url(path)))
                    took.append(time.monotonic() - t0)

            t = threading.Thread(target=calls, daemon=True)
            t.start()
            t.join(timeout=5)
            assert not t.is_alive(), "calls blocked on the stopped holder's lock"
            assert results == ["200", "503", "503", "200"] and max(took) < 0.5
        finally:
            holder.kill()
            holder.wait(timeout=10)


class TestNamespacesAndClocks:
    @needs_unshare
    def test_slots_of_another_pid_namespace_are_left_to_their_lease(self, peer: Peer, tmp_path: Path) -> None:
        """Two containers share a state_dir: B cannot check A's pid, so A's slot is left to its lease."""
        peer.on("/slow", delay(1.5, answer(200, b"ok")))
        a = subprocess.Popen(_unshare("hold", str(tmp_path), peer.url("/slow")), env=_env(),
                             stdout=subprocess.PIPE, text=True)
        try:
            _wait_for(lambda: peer.hits("/slow") == 1, timeout=10)
            b = subprocess.run(_unshare("probe", str(tmp_path), peer.url("/ok")), env=_env(),
                               capture_output=True, text=True, timeout=30)
            assert json.loads(b.stdout.strip().splitlines()[-1])["calls"] == ["full"], b.stderr
        finally:
            a.wait(timeout=15)

    @pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for time namespaces")
    def test_a_breaker_opened_on_another_clock_does_not_stay_open(self, peer: Peer, tmp_path: Path) -> None:
        """Opened by a process whose CLOCK_MONOTONIC is ahead: a reader behind still probes in time."""
        config = _config(peer, tmp_path, breaker={"failure_threshold": 1, "reset_timeout": 0.3})
        ResilientSession(config).get(peer.url("/503"))  # opened here
        script = ("import json, sys, time\nfrom resilient_client import ResilientSession\n"
                  "s = ResilientSession(json.loads(sys.argv[1]))\nout = []\n"
                  "for _ in range(3):\n"
                  "    try: out.append(s.get(sys.argv[2]).status_code)\n"
                  "    except Exception as e: out.append(type(e).__name__)\n"
                  "    time.sleep(0.4)\nprint(json.dumps(out))\n")
        behind = ["unshare", "--time", "--fork", "--monotonic", "-5000"]
        proc = subprocess.run([*behind, sys.executable, "-c", script, json.dumps(config), peer.url("/ok")],
                              env=_env(), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[-1] == 200

    def test_a_file_from_another_boot_starts_afresh(self, peer: Peer, tmp_path: Path) -> None:
        """state_dir on disk across a reboot: an open breaker of the last boot's clock is forgotten."""
        config = _config(peer, tmp_path, breaker={"failure_threshold": 1, "reset_timeout": 60})
        ResilientSession(config).get(peer.url("/503"))
        fd = os.open(path_for(str(tmp_path), "peer"), os.O_RDWR)
        os.pwrite(fd, b"another boot id!", _host_file.META_AT)
        os.close(fd)

        def fresh(queue: Any) -> None:
            queue.put(_call(ResilientSession(config), peer.url("/ok")))

        queue: Any = CTX.Queue()
        CTX.Process(target=fresh, args=(queue,), daemon=True).start()
        assert queue.get(timeout=10) == "200"


class TestDeletedAndReset:
    def test_a_deleted_file_does_not_split_the_host(self, peer: Peer, tmp_path: Path) -> None:
        """Deleted while a worker runs: it moves to the new file, so the cap still holds host-wide."""
        got = _two_workers_at_once(peer, tmp_path, lambda: os.unlink(path_for(str(tmp_path), "peer")))
        assert got == ["200", "full"]

    def test_reset_of_a_damaged_file_brings_degraded_workers_back(self, peer: Peer, tmp_path: Path) -> None:
        """Damaged (the worker falls back to its process), then reset: it shares the file again."""
        path = path_for(str(tmp_path), "peer")

        def damage_then_reset() -> None:
            fd = os.open(path, os.O_RDWR)
            os.pwrite(fd, b"XX", 0)
            os.close(fd)
            ResilientSession(_config(peer, tmp_path, cap=1)).get(peer.url("/ok"))  # sees the damage
            assert reset_endpoint(str(tmp_path), "peer")

        got = _two_workers_at_once(peer, tmp_path, damage_then_reset)
        assert got == ["200", "full"]
        assert Path(path).read_bytes().startswith(b"RCHOST")


class TestNamesakes:
    def _recorder(self, config: dict[str, Any]) -> tuple[Any, Any]:
        """A live process that opened *config*'s endpoint first; stop it with the returned event."""
        ready, stop = CTX.Event(), CTX.Event()

        def live() -> None:
            ResilientSession(config).circuit("peer")  # opens the endpoint's file
            ready.set()
            stop.wait(10)

        p = CTX.Process(target=live, daemon=True)
        p.start()
        assert ready.wait(10)
        return p, stop

    def test_another_services_namesake_is_reported(
        self, peer: Peer, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two services name different peers "peer" in one state_dir: the second says so, once."""
        other = _config(peer, tmp_path)
        other["endpoints"][0]["match"] = "http://auth.internal/"
        p, stop = self._recorder(other)
        try:
            with caplog.at_level(logging.WARNING, "resilient_client"):
                ResilientSession(_config(peer, tmp_path)).circuit("peer")
                ResilientSession(_config(peer, tmp_path)).circuit("peer")
        finally:
            stop.set()
            p.join(timeout=10)
        assert len([r for r in caplog.records if "another match" in r.getMessage()]) == 1

    def test_a_redeploy_with_new_thresholds_warns_only_while_old_workers_live(
        self, peer: Peer, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The recorded policy follows the live processes: once the old ones are gone, no warning."""
        old = _config(peer, tmp_path, breaker={"failure_threshold": 3})
        new = _config(peer, tmp_path, breaker={"failure_threshold": 7})
        p, stop = self._recorder(old)
        with caplog.at_level(logging.WARNING, "resilient_client"):
            ResilientSession(new).circuit("peer")
            assert [r for r in caplog.records if "differs" in r.getMessage()]  # during the rollout
            stop.set()
            p.join(timeout=10)
            _host_dir._warned.clear()  # as in a worker started after the rollout
            caplog.clear()
            ResilientSession(new).circuit("peer")
        assert [r.getMessage() for r in caplog.records if "differs" in r.getMessage()] == []
