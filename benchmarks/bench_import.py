"""
Import time: ``import resilient_client`` against ``import requests``, each in
a fresh interpreter, interleaved, many runs.

    python benchmarks/bench_import.py [--runs N] [--smoke]

The figure is the import statement itself, timed inside the new process
(interpreter start-up, the same for both, is left out), as a ratio of
medians. Bytecode is compiled by a first run that is not counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import _util

CODE = "import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"


def _once(module: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(_util.ROOT)
    out = subprocess.run([sys.executable, "-c", CODE.format(m=module)], env=env, cwd=_util.ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    return float(out.stdout.strip())


def run(*, runs: int = 30, smoke: bool = False) -> list[_util.Row]:
    if smoke:
        runs = 2
    for m in ("requests", "resilient_client"):
        _once(m)  # compile bytecode, fill the disk cache
    cases = {m: (lambda m=m: _once(m)) for m in ("requests", "resilient_client")}
    samples = _util.interleaved(cases, runs)
    ratio = _util.median(samples["resilient_client"]) / _util.median(samples["requests"])
    return [_util.Row(
        "import time", "import resilient_client vs import requests", ratio, "x",
        target="<= 1.15x", met=ratio <= 1.15,
        note=f"medians of {runs}: {_util.median(samples['resilient_client']) * 1000:.0f} ms vs "
             f"{_util.median(samples['requests']) * 1000:.0f} ms",
    )]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    _util.print_rows(run(runs=a.runs, smoke=a.smoke))


if __name__ == "__main__":
    main()
