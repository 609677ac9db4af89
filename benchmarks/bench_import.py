"""
Import time: ``import resilient_client`` against ``import requests``, each in
a fresh interpreter, interleaved, many runs.

    python benchmarks/bench_import.py [--runs N] [--smoke]

The figure is the import statement itself, timed inside the new process
(interpreter start-up, the same for both, is left out), as a ratio of
medians. Bytecode is compiled by a first run that is not counted.

The package loads its names on first use (PEP 562), so a second row, with
no target, times ``from resilient_client import ResilientSession``: what a
service pays once it builds a session.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import _util

CODE = "import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
STATEMENTS = {
    "requests": "import requests",
    "resilient_client": "import resilient_client",
    "session": "from resilient_client import ResilientSession",
}


def _once(stmt: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(_util.ROOT)
    out = subprocess.run([sys.executable, "-c", CODE.format(stmt=stmt)], env=env, cwd=_util.ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    return float(out.stdout.strip())


def run(*, runs: int = 30, smoke: bool = False) -> list[_util.Row]:
    if smoke:
        runs = 2
    for stmt in STATEMENTS.values():
        _once(stmt)  # compile bytecode, fill the disk cache
    cases = {k: (lambda stmt=stmt: _once(stmt)) for k, stmt in STATEMENTS.items()}
    samples = _util.interleaved(cases, runs)
    base = _util.median(samples["requests"])
    ratio = _util.median(samples["resilient_client"]) / base
    session = _util.median(samples["session"]) / base
    return [
        _util.Row(
            "import time", "import resilient_client vs import requests", ratio, "x",
            target="<= 1.15x", met=ratio <= 1.15,
            note=f"medians of {runs}: {_util.median(samples['resilient_client']) * 1000:.0f} ms vs "
                 f"{base * 1000:.0f} ms",
        ),
        _util.Row(
            "import time", "from resilient_client import ResilientSession vs import requests",
            session, "x",
            note=f"medians of {runs}: {_util.median(samples['session']) * 1000:.0f} ms vs "
                 f"{base * 1000:.0f} ms; the session's own modules, loaded on first use",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    _util.print_rows(run(runs=a.runs, smoke=a.smoke))


if __name__ == "__main__":
    main()
