"""
Retry amplification under a full outage: every call to the peer answers 503.

    python benchmarks/bench_amplification.py [--smoke]

Amplification = calls that reached the peer / calls the application made,
with 8 threads sharing one session. Every client is set to 3 attempts with
a near-zero backoff (so the run is short; the budget does not depend on it).
resilient_client is measured with its default budget (ratio 0.2, plus 10
retries per second over a 10 s window), once with its breaker and once
without, so that the budget alone is visible.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable

import _util
import requests
import stamina
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import resilient_client

THREADS = 8
TINY_BACKOFF = {"initial": 0.001, "max": 0.002, "jitter": "none"}


class _ServerError(Exception):
    pass


def _run(call: Callable[[], object], calls: int) -> None:
    per = calls // THREADS

    def work() -> None:
        for _ in range(per):
            # Failures are the point here.
            with contextlib.suppress(Exception):
                call()

    pool = [threading.Thread(target=work) for _ in range(THREADS)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(300)


def clients(url: str) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one application call, how many calls to make)."""
    match = url.rsplit("/", 1)[0] + "/"
    out: dict[str, tuple[Callable[[], object], int]] = {}
    rc = resilient_client.ResilientSession(
        {"endpoints": [{"name": "down", "match": match,
                        "retry": {"attempts": 3, "backoff": TINY_BACKOFF}}]}
    )
    out["resilient_client (budget + breaker)"] = (lambda: rc.get(url), 4000)
    rc_nb = resilient_client.ResilientSession(
        {"endpoints": [{"name": "down", "match": match, "breaker": None,
                        "retry": {"attempts": 3, "backoff": TINY_BACKOFF}}]}
    )
    out["resilient_client (budget only, no breaker)"] = (lambda: rc_nb.get(url), 4000)

    ur = requests.Session()
    retry = Retry(total=2, backoff_factor=0, status_forcelist=[503], raise_on_status=False)
    ur.mount("http://", HTTPAdapter(max_retries=retry))
    out["requests + urllib3 Retry"] = (lambda: ur.get(url, timeout=(1, 5)), 400)

    ten = requests.Session()
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(3),
                                 wait=tenacity.wait_fixed(0.001),
                                 retry=tenacity.retry_if_exception_type(_ServerError), reraise=True)

    def ten_get() -> requests.Response:
        r = ten.get(url, timeout=(1, 5))
        if r.status_code >= 500:
            raise _ServerError(r.status_code)
        return r

    out["tenacity"] = (lambda: retrying(ten_get), 400)

    st = requests.Session()

    @stamina.retry(on=_ServerError, attempts=3, wait_initial=0.001, wait_max=0.002)
    def st_get() -> requests.Response:
        r = st.get(url, timeout=(1, 5))
        if r.status_code >= 500:
            raise _ServerError(r.status_code)
        return r

    out["stamina"] = (st_get, 400)
    # stamina logs every retry by default; this run makes a thousand of them.
    stamina.instrumentation.set_on_retry_hooks([])
    return out


def run(*, smoke: bool = False) -> list[_util.Row]:
    rows = []
    with _util.peer("503") as p:
        for name, (call, calls) in clients(p.url).items():
            if smoke:
                calls = 80
            before = p.count()
            _run(call, calls)
            made = calls // THREADS * THREADS
            reached = p.count() - before
            amp = reached / made
            row = _util.Row("retry amplification, full outage (503)", name, amp, "x",
                            note=f"{reached} calls reached the peer for {made} made")
            if name.startswith("resilient_client"):
                row.target, row.met = "<= 1.25x", amp <= 1.25
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    _util.print_rows(run(smoke=ap.parse_args().smoke))


if __name__ == "__main__":
    main()
