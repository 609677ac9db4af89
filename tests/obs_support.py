"""
Helpers for the observability tests: a scripted HTTP peer
on loopback.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator


class Peer:
    """
    A keep-alive HTTP/1.1 server on 127.0.0.1 answering from a script: each
    request takes the next item (a status, or ``"hang"`` to never answer);
    the last item repeats. Response headers come from ``headers``.
    """

    def __init__(self, script: list[int | str] | None = None, headers: dict[str, str] | None = None) -> None:
        self.script = list(script or [200])
        self.headers = dict(headers or {})
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # one segment per answer: no delayed-ACK stalls

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with peer._lock:
                    peer.requests.append((self.command, self.path, dict(self.headers)))
                    item = peer.script.pop(0) if len(peer.script) > 1 else peer.script[0]
                if item == "hang":
                    peer._release.wait(5.0)  # bounded: the test's client gives up long before
                    self.close_connection = True
                    return
                body = b'{"ok": true}' if item == 200 else b"nope"
                self.send_response(int(item))
                for k, v in peer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval: shutdown() waits for it.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> Peer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(script: list[int | str] | None = None, headers: dict[str, str] | None = None) -> Iterator[Peer]:
    """A `Peer` for the duration of a with block."""
    with Peer(script, headers) as peer:
        yield peer


#: What `record` received: a listener importable by dotted path, for the
#: config ``listeners`` tests.
RECORDED: list[object] = []


def record(event: object) -> None:
    """A listener named in configs as ``obs_support:record``."""
    RECORDED.append(event)


#: Not callable: a config naming it must be refused.
NOT_CALLABLE = 42
