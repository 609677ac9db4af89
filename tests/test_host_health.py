"""
The health view of a ``state: host`` endpoint reports what the host
shares, whichever worker answers: calls in flight on the whole host, the
shared breaker record's failure count, and when the endpoint has fallen
back to process-local state. Another `HostFile` on the same file stands
for another worker (each opens its own descriptor, as processes do; real
processes are in test_host_processes.py).
"""

from __future__ import annotations

from pathlib import Path

from resilient_client import ResilientSession
from resilient_client._breaker_machine import CLOSED, Record
from resilient_client._host_file import HostFile, default_state_dir, path_for
from resilient_client._host_state import HostBulkhead, HostStore
from resilient_client._policy import BulkheadPolicy

CONFIG = {
    "defaults": {"state": "host", "bulkhead": {"max_concurrent": 5}},
    "endpoints": [{"name": "inv", "match": "http://127.0.0.1:9/"}],
}


def _other_worker_file() -> HostFile:
    return HostFile(default_state_dir(), "inv")


class TestHostHealth:
    def test_in_flight_is_the_host_wide_count(self) -> None:
        """Two calls held by another worker show as 2 in flight here, where this process holds none."""
        session = ResilientSession(CONFIG)
        other = HostBulkhead("inv", BulkheadPolicy(max_concurrent=5), _other_worker_file())
        assert other.try_acquire() and other.try_acquire()
        health = session.health()["inv"]
        assert (health.in_flight, health.max_concurrent) == (2, 5)
        assert session.health().as_dict()["endpoints"][0]["bulkhead"]["in_flight"] == 2

    def test_consecutive_failures_are_the_shared_records(self) -> None:
        """Failures counted by other workers: the host record's 3, not this worker's 0."""
        session = ResilientSession(CONFIG)
        HostStore(_other_worker_file()).apply(lambda rec, now: (Record(CLOSED, False, 0.0, 3), None))
        assert session.health()["inv"].consecutive_failures == 3

    def test_a_degraded_endpoint_says_so(self) -> None:
        """Once the host file is unusable, storage no longer claims 'host'."""
        session = ResilientSession(CONFIG)
        assert session.health()["inv"].storage == "host"
        Path(path_for(default_state_dir(), "inv")).write_bytes(b"\xff" * 100)  # damaged under us
        session.circuit("inv").state  # noqa: B018 - the next read finds it out
        assert session.health()["inv"].storage == "host (degraded: process-local)"
