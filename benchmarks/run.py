"""
Run every benchmark of resilient_client and print one table.

    python benchmarks/run.py                  # everything, several minutes
    python benchmarks/run.py --only happy     # one or more: happy breaker amplification
                                              #   storm retry observability cascade drip
                                              #   orphaned import pool host fleet tracing async
                                              #   overload hedge
    python benchmarks/run.py --smoke          # tiny counts: checks they run
    python benchmarks/run.py --markdown out.md --plot docs/img/happy.png

Each benchmark is also a script of its own, with its own options
(``python benchmarks/bench_happy.py``, ``python benchmarks/retry_storm.py
--rate 100``, ...): `BENCHES` names the script behind each. Everything runs
on 127.0.0.1 against the test suite's one loopback server (tests/peers.py,
in its own process); ratios come from interleaved rounds (medians), measured
side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict

import _util
import bench_amplification
import bench_async
import bench_breaker
import bench_cascade
import bench_drip
import bench_happy
import bench_hedge
import bench_host_fleet
import bench_host_state
import bench_import
import bench_overload
import bench_pool
import bench_tracing
import observability_overhead
import orphaned_work
import retry_overhead
import retry_storm

#: Every benchmark, by the name ``--only`` takes: each is a script's ``run(smoke=...)``.
BENCHES = {
    "happy": bench_happy.run,
    "breaker": bench_breaker.run,
    "amplification": bench_amplification.run,
    "storm": retry_storm.run,
    "retry": retry_overhead.run,
    "observability": observability_overhead.run,
    "cascade": bench_cascade.run,
    "drip": bench_drip.run,
    "pool": bench_pool.run,
    "orphaned": orphaned_work.run,
    "import": bench_import.run,
    "host": bench_host_state.run,
    "fleet": bench_host_fleet.run,
    "async": bench_async.run,
    "tracing": bench_tracing.run,
    "overload": bench_overload.run,
    "hedge": bench_hedge.run,
}


def machine() -> str:
    """nproc, CPU model, Python and library versions."""
    import os

    import requests
    import urllib3

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, requests {requests.__version__}, "
            f"urllib3 {urllib3.__version__}")


def plot_happy(rows: list[_util.Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    happy = [r for r in rows if r.bench.startswith("happy path")]
    benches = list(dict.fromkeys(r.bench for r in happy))
    names = list(dict.fromkeys(r.name.split(":")[0] for r in happy))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / max(1, len(benches))
    for j, bench in enumerate(benches):
        vals = {r.name.split(":")[0]: r.value for r in happy if r.bench == bench}
        xs = [i + j * width for i in range(len(names))]
        bars = ax.bar(xs, [vals.get(n, 0) for n in names], width, label=bench)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(benches) - 1) / 2 for i in range(len(names))], names,
                  rotation=15, fontsize=8)
    ax.set_ylabel("time per call / requests.Session")
    ax.set_title("Happy-path GET on loopback, relative to requests.Session (lower is faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny counts: check that each benchmark runs")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--plot", metavar="FILE.png",
                    help="bar chart of the happy-path ratios (matplotlib)")
    args = ap.parse_args()
    started = time.monotonic()
    rows: list[_util.Row] = []
    for name in args.only or list(BENCHES):
        t = time.monotonic()
        print(f"-- {name} ...", file=sys.stderr, flush=True)
        rows += BENCHES[name](smoke=args.smoke)
        print(f"   {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    desc = machine()
    print(f"\n{desc}\ncommand: python benchmarks/run.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"took {time.monotonic() - started:.0f} s\n")
    _util.print_rows(rows)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(f"Machine: {desc}\n\n{_util.markdown(rows)}\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": desc, "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.plot:
        plot_happy(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
