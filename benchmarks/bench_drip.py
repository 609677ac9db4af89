"""
Drip-feed: the peer sends its headers at once, then one byte every 100 ms of
a 3 s body. A read timeout never trips (every read gets a byte in time);
only a deadline on the whole call stops it.

    python benchmarks/bench_drip.py [--smoke]

resilient_client runs with ``total: 1.0``; the figure is how long after
that deadline `DeadlineExceeded` reached the caller (median and worst of
several calls). Plain requests with ``timeout=(1, 1)`` is shown for scale.
"""

from __future__ import annotations

import argparse
import time

import _util
import requests

import resilient_client

TOTAL = 1.0


def run(*, smoke: bool = False) -> list[_util.Row]:
    reps = 2 if smoke else 5
    bench = "drip-feed (1 byte / 100 ms)"
    rows = []
    with _util.peer("drip", drip_interval=0.1, drip_bytes=30) as p:
        rc = resilient_client.ResilientSession({"endpoints": [{
            "name": "drip", "match": p.url.rsplit("/", 1)[0] + "/",
            "timeout": {"connect": 1.0, "read": 1.0, "total": TOTAL}, "retry": None,
        }]})
        late = []
        for _ in range(reps):
            t = time.perf_counter()
            try:
                rc.get(p.url)
                late.append(float("inf"))
            except resilient_client.DeadlineExceeded:
                late.append(time.perf_counter() - t - TOTAL)
        rc.close()
        worst = max(late)
        rows.append(_util.Row(bench, f"resilient_client: stopped after the {TOTAL:g} s deadline by",
                              _util.median(late), "s", target="<= 0.2 s", met=worst <= 0.2,
                              note=f"worst of {reps}: {worst:.3f} s"))
        plain = requests.Session()
        t = time.perf_counter()
        plain.get(p.url, timeout=(1, 1))
        took = time.perf_counter() - t
        rows.append(_util.Row(bench, "requests timeout=(1, 1): the call took", took, "s",
                              note="the read timeout never trips"))
        plain.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    _util.print_rows(run(smoke=ap.parse_args().smoke))


if __name__ == "__main__":
    main()
