"""``demo --fleet``: real gunicorn workers behind HAProxy; plain requests, state memory, host and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilient_client.tools import _demo_command, _demo_fleet

ROOT = Path(__file__).resolve().parent.parent


def _rows(output: str, column: int = -1) -> dict[str, str]:
    """The fleet table's rows: name -> the cell of one client (resilient_client, the last, by default)."""
    lines = output.splitlines()
    sep = next(i for i, line in enumerate(lines) if line and set(line) == {"-"})
    rows: dict[str, str] = {}
    for line in lines[sep + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[0]] = cells[column]
    return rows


class TestFleetTools:
    def test_missing_tools_exit_2_with_what_to_install(self, monkeypatch, capsys):
        """Without gunicorn/haproxy/redis-server the fleet demo says what to install and exits 2."""
        monkeypatch.setattr(_demo_fleet, "missing_tools",
                            lambda: ["haproxy (Debian/Ubuntu: apt-get install haproxy)"])
        assert _demo_command.main(["--fleet", "--quick"]) == 2
        err = capsys.readouterr().err
        assert "apt-get install haproxy" in err

    def test_plot_is_refused_with_fleet(self):
        """--plot with --fleet is a usage error, before anything starts."""
        with pytest.raises(SystemExit) as exc:
            _demo_command.main(["--fleet", "--plot", "x.png"])
        assert exc.value.code == 2


class TestQuickFleet:
    def test_shared_breaker_contains_the_outage(self, tmp_path):
        """The quick fleet run (~25 s) shows the shared breaker bounding calls to the failing peer."""
        missing = _demo_fleet.missing_tools()
        # Fail rather than skip: CI installs gunicorn, haproxy and redis-server.
        assert not missing, f"demo --fleet needs: {missing}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "resilient_client", "demo", "--fleet", "--quick"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        rc = _rows(proc.stdout)
        arrived = int(rc["requests arrived"])
        workers = _demo_fleet.FLEET_WORKERS
        # Shared: the calls already in flight in each worker (and one retry each) before
        # the failures of the whole fleet reach failure_threshold, not a threshold per worker.
        before = int(rc["calls before the shared breaker opened"])
        assert 1 <= before <= 2 * workers + _demo_fleet.FAILURE_THRESHOLD
        outage = ("while it hung", "while it drip-fed", "while it answered 503")
        outage_arrivals = arrived * 10 // 17  # 10 s of outage in the 17 s quick schedule
        assert sum(int(rc[k]) for k in outage) * 5 < outage_arrivals
        assert int(rc["fallbacks served"]) > arrived // 4
        assert int(rc["errors"]) <= arrived // 50
        assert rc["time to recover"] != "never"
        # The host fleet shares one breaker too: a threshold for the host, not per worker.
        host = _rows(proc.stdout, column=3)
        shared = int(host["calls before the shared breaker opened"])
        assert 1 <= shared <= 2 * workers + _demo_fleet.FAILURE_THRESHOLD
        assert host["failure_threshold"] == "whole host"
        # ...where the plain requests fleet behind the same HAProxy set-up turned it into errors.
        plain = _rows(proc.stdout, column=1)
        assert int(plain["errors"]) > arrived // 4
        assert float(rc["throughput (answers/s)"]) > 1.5 * float(plain["throughput (answers/s)"])
        # Every process the demo started is gone.
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
        assert "resilient_client.tools._demo_fleet_app" not in ps.stdout
