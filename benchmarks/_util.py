"""
Shared pieces of the benchmarks: peers in their own processes, interleaved
rounds, medians, and result rows.

The peer is the test suite's one loopback server (tests/peers.py), run in a
child process by `peers.peer_process` so that its work does not share the
benchmark's interpreter lock. Every peer listens on 127.0.0.1 only; every
loop is bounded in count and time; every peer dies with the benchmark (it
stops when the benchmark exits, or after its lifetime).
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Benchmark the package of this checkout, not whichever one is installed; the
# peer is the test suite's server.
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import peers  # noqa: E402

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

JSON = {"Content-Type": "application/json"}
#: What a healthy peer answers, and an unavailable one.
OK = peers.answer(200, BODY, JSON)
UNAVAILABLE = peers.answer(503, b'{"error": "unavailable"}', JSON)


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class Peer:
    """
    A running peer: ``url`` (its ``/items``), ``count()`` (requests that
    reached it), ``connections()``, ``kind``, and `play` to change what it
    answers (`set_outage` for the usual 503/200 switch).
    """

    def __init__(self, url: str, kind: str, remote: peers.RemotePeer | None = None) -> None:
        self.url = url
        self.base = url.rsplit("/", 1)[0]
        self.kind = kind
        self._remote = remote

    def count(self) -> int:
        return self._remote.hits() if self._remote is not None else -1  # nginx does not count

    def connections(self) -> int:
        return self._remote.connections if self._remote is not None else -1

    def play(self, *behaviours: Any) -> None:
        """Answer every path with *behaviours* in turn (the last repeats) from now on."""
        if self._remote is None:
            raise RuntimeError("nginx plays one answer only")
        self._remote.on("*", *behaviours)

    def set_outage(self, on: bool) -> None:
        """503 to everything while *on*, else 200."""
        self.play(UNAVAILABLE if on else OK)


def behaviour(mode: str, *, drip_interval: float = 0.1, drip_bytes: int = 30) -> Any:
    """
    What a peer in *mode* answers: ``ok`` (200 at once), ``slow`` (200 after
    20 ms), ``hang`` (never), ``drip`` (headers, then a byte every interval),
    ``503`` (503 at once).
    """
    if mode == "ok":
        return OK
    if mode == "slow":
        return peers.delay(0.020, OK)
    if mode == "503":
        return UNAVAILABLE
    if mode == "hang":
        return peers.hang()
    if mode == "drip":
        return peers.sequence(
            peers.send(peers.head(200, {"Content-Type": "text/plain"}, length=drip_bytes)),
            peers.pause(drip_interval),
            peers.drip(b"." * drip_bytes, drip_interval),
        )
    raise ValueError(f"unknown peer mode {mode!r}")


@contextlib.contextmanager
def peer(mode: str = "ok", *, prefer_nginx: bool = False, drip_interval: float = 0.1,
         drip_bytes: int = 30, max_connections: int = 1024) -> Iterator[Peer]:
    """Start a peer (nginx for ``ok`` when asked and on PATH, else the test server in its own process)."""
    nginx = shutil.which("nginx") if prefer_nginx and mode == "ok" else None
    if nginx and os.environ.get("BENCH_NO_NGINX") != "1":
        with _nginx(nginx) as p:
            yield p
        return
    with peers.peer_process(record=False, max_connections=max_connections) as remote:
        remote.on("*", behaviour(mode, drip_interval=drip_interval, drip_bytes=drip_bytes))
        yield Peer(remote.url("/items"), "stdlib", remote)  # a pure-Python server, as before


@contextlib.contextmanager
def _nginx(binary: str) -> Iterator[Peer]:
    port = peers.free_port()
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
            yield Peer(f"http://127.0.0.1:{port}/items", "nginx")
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


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on loopback (its URL), or None when none is on PATH."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = peers.free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)
