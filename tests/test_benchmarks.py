"""The benchmarks still run: a smoke run with tiny counts (the figures themselves are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TestBenchmarksSmoke:
    def test_run_py_smoke_prints_every_row(self, tmp_path):
        """`benchmarks/run.py --smoke` runs the in-process benchmarks and writes their rows as JSON."""
        out = tmp_path / "rows.json"
        env = {**os.environ, "BENCH_NO_NGINX": "1"}
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
             "--only", "happy", "breaker", "amplification", "--json", str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        for needle in ("happy path, 1 thread", "happy path, 8 threads", "open-breaker rejection",
                       "concurrency through one breaker", "retry amplification"):
            assert needle in text
        import json

        rows = json.loads(out.read_text())["rows"]
        clients = {r["name"].split(":")[0] for r in rows if r["bench"].startswith("happy path")}
        assert clients == {"urllib3 (floor)", "requests.Session", "requests + urllib3 Retry",
                           "tenacity + pybreaker", "stamina", "resilient_client",
                           "resilient_client, env cache off", "resilient_client, both shortcuts off"}
