"""The cascade demo: its schedule, its summary, and one real quick run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilient_client.tools import _demo, _demo_command

ROOT = Path(__file__).resolve().parent.parent


def _table(output: str) -> tuple[list[str], dict[str, list[str]]]:
    """Parse the demo's final table: column labels and row name -> cells."""
    lines = output.splitlines()
    sep = next(i for i, line in enumerate(lines) if line and set(line) == {"-"})
    header = lines[sep - 1]
    labels = [c.strip() for c in header.strip().split("  ") if c.strip()]
    rows: dict[str, list[str]] = {}
    for line in lines[sep + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[cells[0]] = cells[1:]
    return labels, rows


class TestSchedule:
    def test_phases_follow_each_other(self):
        """Each phase starts where the previous one ended, and `at` finds the phase of a moment."""
        s = _demo.Schedule.of(("healthy", 1), ("hang", 2), ("recovered", 1))
        assert [(p.start, p.end) for p in s.phases] == [(0, 1), (1, 3), (3, 4)]
        assert (s.at(0.5), s.at(1.0), s.at(2.9), s.at(3.5), s.at(99)) == (
            "healthy", "hang", "hang", "recovered", "recovered")

    def test_quick_run_is_short_and_has_every_phase(self):
        """The quick schedule lasts at most 15 s and goes through the whole outage."""
        s = _demo.QUICK_SCHEDULE
        assert s.total <= 15
        assert [p.name for p in s.phases] == ["healthy", "hang", "drip", "503", "recovered"]


class TestSummary:
    def test_percentile_is_nearest_rank(self):
        """p50 and p99 are nearest-rank percentiles; no value gives None."""
        values = [i / 100 for i in range(1, 101)]
        assert _demo._percentile(values, 0.5) == 0.5
        assert _demo._percentile(values, 0.99) == 0.99
        assert _demo._percentile([], 0.5) is None

    def test_job_left_in_the_queue_is_answered_by_the_load_balancer(self):
        """A job nobody took within the queue timeout counts as a 503 from the queue, not as unanswered."""
        job = _demo._Job(arrived=1.0)
        late = 1.0 + _demo.QUEUE_TIMEOUT + 0.1
        assert _demo._outcome_at(job, cutoff=late) == ("queue", _demo.QUEUE_TIMEOUT)
        assert _demo._outcome_at(job, cutoff=1.5) == (None, None)


class TestQuickDemo:
    def test_resilient_client_contains_the_cascade(self, tmp_path):
        """The quick demo's table shows resilient_client serving fallbacks, few calls to the hung peer."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-m", "resilient_client", "demo", "--quick"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        labels, rows = _table(proc.stdout)
        assert labels == ["requests (no timeout)", "requests timeout=1,3", "resilient_client"]
        plain, timed, rc = (dict(zip(rows, col, strict=True)) for col in zip(*rows.values(), strict=True))
        arrived = int(rc["requests arrived"])
        # Contained: bounded calls to the hung peer (the bulkhead's 6, one retry that may slip in
        # before the breaker opens, a trial per second), fallbacks served, next to no errors.
        assert int(rc["while it hung"]) <= 12
        outage = ("while it hung", "while it drip-fed", "while it answered 503")
        assert sum(int(rc[k]) for k in outage) * 5 < sum(int(timed[k]) for k in outage)
        assert int(rc["fallbacks served"]) > arrived // 4
        assert int(rc["errors"]) <= arrived // 50
        assert rc["time to recover"] != "never"
        # ...where plain requests let it through.
        assert int(plain["errors"]) > arrived // 2
        assert plain["time to recover"] == "never"
        assert float(rc["throughput (answers/s)"]) > 2 * float(timed["throughput (answers/s)"])

    @pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
    def test_plot_needs_a_png_path_and_matplotlib(self, tmp_path, monkeypatch):
        """Asking for a plot without matplotlib fails at once with a hint, before any run."""
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        with pytest.raises(SystemExit) as exc:
            _demo_command.main(["--quick", "--plot", str(tmp_path / "x.png")])
        assert exc.value.code == 2
