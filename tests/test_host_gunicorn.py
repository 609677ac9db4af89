"""
`state: host` under real gunicorn workers (sync, gthread and gevent, with
``--preload``: the session is built before the fork; and workers recycled
by ``--max-requests``): a peer answering 503 sees at most
``failure_threshold`` calls plus those already in flight when the breaker
opened, whichever workers made them, not ``failure_threshold`` per worker
(4 x 3 = 12 here).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from peers import Peer, delay, free_port, server_error

from resilient_client._host_dir import effective_state_dir
from resilient_client._host_file import HostFile
from resilient_client.tools._host_status import host_state

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gunicorn") is None, reason="needs gunicorn")

WORKERS = 4


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"gunicorn did not listen on {port}")


_GEVENT = pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="needs gevent")


@pytest.mark.parametrize("worker_class", ["sync", "gthread", pytest.param("gevent", marks=_GEVENT)])
def test_workers_share_one_breaker(worker_class: str, tmp_path: Path) -> None:
    """Twenty calls, four at a time, through four workers: the failing peer sees at most 3 + 3."""
    # A gevent worker would take every connection at once: one each spreads them over the workers.
    options = ("--worker-connections", "1") if worker_class == "gevent" else ()
    outcomes, pids, hits = _serve(worker_class, tmp_path, *options)
    assert len(outcomes) == 20 and set(outcomes) == {"503", "open"}
    assert 3 <= hits == outcomes.count("503") <= 3 + 3
    assert len(pids) >= 2, "the calls all went to one worker: nothing shown"


def test_recycled_workers_keep_the_breaker_and_free_their_rows(tmp_path: Path) -> None:
    """
    --max-requests 2: workers die and new ones (new pids) take over; the
    breaker stays open for them, and the dead workers' bulkhead rows are
    reused rather than piling up.
    """
    outcomes, pids, hits = _serve("sync", tmp_path, "--max-requests", "2")
    assert len(outcomes) == 20 and set(outcomes) == {"503", "open"}
    assert 3 <= hits == outcomes.count("503") <= 3 + 3
    assert len(pids) > WORKERS, "no worker was recycled: nothing shown"
    state_dir = effective_state_dir(str(tmp_path))  # the testing kit's, inherited by the workers
    (entry,) = host_state(state_dir)  # the peer's origin: its one endpoint
    f = HostFile(state_dir, entry["name"])
    with f.locked() as fd:
        rows = f.read_rows(fd)
    assert sum(int(r[1]) for r in rows) == 0
    assert len(rows) <= WORKERS + 2 < len(pids), rows


def _serve(worker_class: str, tmp_path: Path, *options: str) -> tuple[list[str], set[str], int]:
    """Twenty calls, four at a time, through gunicorn: the outcomes, the worker pids, the peer's hits."""
    with Peer() as peer:
        peer.on("/down", delay(0.05, server_error(503)))
        port = free_port()
        env = {**os.environ, "RC_TEST_PEER": peer.url("/down"), "RC_TEST_STATE_DIR": str(tmp_path),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
             "--worker-class", worker_class, *options, "--graceful-timeout", "3",
             "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
             "host_gunicorn_app:app"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(port)
            outcomes: list[str] = []
            pids: set[str] = set()

            def call() -> None:
                # A new connection each time; four at once spread over the workers.
                r = requests.get(f"http://127.0.0.1:{port}/", timeout=10, headers={"Connection": "close"})
                outcomes.append(r.headers["X-Outcome"])
                pids.add(r.headers["X-Pid"])

            for _ in range(5):
                wave = [threading.Thread(target=call) for _ in range(4)]
                for t in wave:
                    t.start()
                for t in wave:
                    t.join(timeout=15)
        finally:
            os.killpg(proc.pid, signal.SIGQUIT)  # gunicorn's quick shutdown: no graceful wait
            proc.wait(timeout=15)
        return outcomes, pids, peer.hits("/down")
