"""The benchmarks still run: a smoke run with tiny counts (the figures themselves are not checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TestBenchmarksSmoke:
    def test_run_py_smoke_prints_every_row(self, tmp_path):
        """`benchmarks/run.py --smoke` runs the happy, breaker and amplification benchmarks, rows as JSON."""
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
                       "concurrency through one breaker", "breaker storage on the happy path",
                       "retry amplification"):
            assert needle in text
        import json

        rows = json.loads(out.read_text())["rows"]
        clients = {r["name"].split(":")[0] for r in rows if r["bench"].startswith("happy path")}
        assert clients == {"urllib3 (floor)", "requests.Session", "requests + urllib3 Retry",
                           "tenacity + pybreaker", "stamina", "resilient_client",
                           "resilient_client, env cache off", "resilient_client, both shortcuts off"}

    def test_run_py_drives_every_benchmark_script(self):
        """Every script in benchmarks/ is one of run.py's: `python benchmarks/run.py` runs them all."""
        scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"run"}
        scripts = {s for s in scripts if not s.startswith("_")}
        source = (ROOT / "benchmarks" / "run.py").read_text(encoding="utf-8")
        benches = source[source.index("BENCHES = {"):]
        benches = benches[: benches.index("}")]
        driven = set(re.findall(r":\s*(\w+)\.run,", benches))
        assert driven == scripts


class TestHedgeBenchmark:
    def test_bench_hedge_quick_runs(self):
        """`bench_hedge.py --quick --no-haproxy` runs and prints a row per configuration."""
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_hedge.py"), "--quick", "--no-haproxy",
             "--calls", "48"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for name in ("no hedging: p99", "fixed 20 ms: p99", "p95: p99"):
            assert name in proc.stdout
