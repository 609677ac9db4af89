"""
Shared pieces of the benchmarks: peers in their own processes, interleaved
rounds, medians, and result rows.

Every peer listens on 127.0.0.1 only; every loop is bounded in count and
time; every peer dies with the benchmark (it serves until its stdin closes).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Benchmark the package of this checkout, not whichever one is installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import urllib3  # noqa: E402

BODY = b'{"ok": true, "items": [1, 2, 3]}'


@dataclass
class Row:
    """One measured figure, with its target when it has one."""

    bench: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        v = self.value
        if self.unit == "x":
            text = f"{v:.2f}x"
        elif self.unit in ("µs", "ms"):
            text = f"{v:.1f} {self.unit}"
        elif self.unit == "s":
            text = f"{v:.2f} s"
        else:
            text = f"{v:g} {self.unit}".strip()
        met = "" if self.met is None else ("met" if self.met else "NOT met")
        return [self.bench, self.name, text, self.target, met, self.note]


def print_rows(rows: list[Row], file=sys.stdout) -> None:
    head = ["benchmark", "measure", "value", "target", "", "note"]
    table = [head, *(r.cells() for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=file)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=file)


def markdown(rows: list[Row]) -> str:
    out = ["| benchmark | measure | value | target | met | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |")
    return "\n".join(out)


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved(
    cases: dict[str, Callable[[], float]], rounds: int, *, seed: int = 1
) -> dict[str, list[float]]:
    """Run every case once per round, in a shuffled order; each returns one sample."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(cases[name]())
    return samples


def ratios(samples: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of each case's ratio to *baseline* in the same round."""
    base = samples[baseline]
    return {k: median([a / b for a, b in zip(v, base, strict=True)]) for k, v in samples.items()}


# -- peers ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Peer:
    """A running peer: ``url``, ``count()`` (requests that reached it), ``kind``."""

    def __init__(self, url: str, kind: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.kind = kind
        self._proc = proc
        self._pool = urllib3.PoolManager()

    def count(self) -> int:
        url = self.url.rsplit("/", 1)[0] + "/__count"
        r = self._pool.request("GET", url, timeout=2.0, retries=False)
        return int(r.data)


@contextlib.contextmanager
def peer(mode: str, *, prefer_nginx: bool = False, drip_interval: float = 0.1,
         drip_bytes: int = 30) -> Iterator[Peer]:
    """Start a peer (nginx for ``ok`` when asked and on PATH, else the stdlib one)."""
    nginx = shutil.which("nginx") if prefer_nginx and mode == "ok" else None
    if nginx and os.environ.get("BENCH_NO_NGINX") != "1":
        with _nginx(nginx) as p:
            yield p
        return
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_peer.py"), mode, "--drip-interval", str(drip_interval),
         "--drip-bytes", str(drip_bytes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield Peer(f"http://127.0.0.1:{port}/items", "stdlib", proc)
    finally:
        _stop(proc)


@contextlib.contextmanager
def _nginx(binary: str) -> Iterator[Peer]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="rc-bench-nginx-") as d:
        conf = Path(d) / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
    uwsgi_temp_path {d}; scgi_temp_path {d};
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{BODY.decode()}'; }}
    }}
}}
""")
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", d, "-e", f"{d}/error.log"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            _wait_listening(port)
            p = Peer(f"http://127.0.0.1:{port}/items", "nginx", proc)
            p.count = lambda: -1  # type: ignore[method-assign]  # nginx does not count
            yield p
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)
