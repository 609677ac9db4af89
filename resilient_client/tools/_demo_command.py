"""
The ``demo`` command: its options, and which demo they run (the in-process
cascade demo in `_demo`, or ``--fleet``, gunicorn workers behind HAProxy, in
`_demo_fleet`). ``resilient-client demo ARGS`` and ``python -m
resilient_client demo ARGS`` hand ``ARGS`` to `main` untouched.

This lives apart from both demos so that neither imports the other's
runner: `_demo_fleet` builds on `_demo`'s pieces, and this module sits above
the two (no import cycle, even a deferred one).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from . import _demo, _demo_fleet

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """
    Run the cascade demo; return the exit status.

    .. versionadded:: 0.1.0
    """
    parser = argparse.ArgumentParser(
        prog="resilient-client demo",
        description="A downstream hangs, drip-feeds, answers 503 and recovers, while an "
        "upstream calls it through plain requests (with and without a timeout) and through "
        "resilient_client. Loopback only.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="a ~15 s run (CI, tests) instead of ~35 s")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw latency and success rate over time (needs matplotlib)")
    parser.add_argument("--rate", type=float, default=None,
                        help="upstream requests per second (default 40; 20 with --fleet)")
    parser.add_argument("--fleet", action="store_true",
                        help="a ~1 min run (~20 s with --quick) with real gunicorn workers "
                        "behind HAProxy: plain requests, then state memory, host and (with "
                        "redis-server) Redis (needs the fleet extra and haproxy)")
    args = parser.parse_args(argv)
    if args.rate is None:
        args.rate = 20.0 if args.fleet else 40.0
    if args.rate <= 0 or args.rate > 500:
        parser.error("--rate must be in (0, 500]")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'resilient_client[plot]'")
    out = sys.stdout
    if args.fleet:
        if args.plot:
            parser.error("--plot is not available with --fleet")
        return _fleet_main(quick=args.quick, rate=args.rate, out=out)
    schedule = _demo.QUICK_SCHEDULE if args.quick else _demo.DEFAULT_SCHEDULE
    results = _demo.run(schedule, rate=args.rate, reset_timeout=1.0, out=out)
    print(file=out)
    print(_demo.render_table(results), file=out)
    print(file=out)
    print(_demo.verdict(results), file=out)
    if args.plot:
        _demo.plot(results, schedule, args.plot)
        print(f"plot written to {args.plot}", file=out)
    return 0


def _fleet_main(*, quick: bool, rate: float, out: TextIO) -> int:
    missing = _demo_fleet.missing_tools()
    if missing:
        print("demo --fleet needs, and could not find:", file=sys.stderr)
        for what in missing:
            print(f"  - {what}", file=sys.stderr)
        return 2
    schedule = _demo_fleet.QUICK_FLEET_SCHEDULE if quick else _demo_fleet.FLEET_SCHEDULE
    result = _demo_fleet.run_fleet(schedule, rate=rate, reset_timeout=1.0, out=out)
    print(file=out)
    print(_demo_fleet.render_fleet_table(result), file=out)
    print(file=out)
    print(_demo_fleet.fleet_verdict(result), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
