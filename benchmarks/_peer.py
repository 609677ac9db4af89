"""
A small HTTP/1.1 keep-alive peer on 127.0.0.1, run in its own process so its
work does not share the benchmark's interpreter lock.

    python benchmarks/_peer.py MODE [--drip-interval S] [--drip-bytes N]

It prints its port on the first line of stdout and serves until its standard
input closes (so it dies with the benchmark), or for at most 15 minutes.
Every request's arrival is counted; ``GET /__count`` answers the count
without adding to it.

Modes: ``ok`` (200 at once), ``slow`` (200 after 20 ms), ``hang`` (read the
request, never answer), ``drip`` (headers, then one byte every interval),
``503`` (503 at once).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

BODY = b'{"ok": true, "items": [1, 2, 3]}'
MAX_LIFETIME = 900.0


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


OK = _response(b"200 OK", BODY)
UNAVAILABLE = _response(b"503 Service Unavailable", b'{"error": "unavailable"}')


class Peer:
    def __init__(self, mode: str, drip_interval: float, drip_bytes: int) -> None:
        self.mode = mode
        self.drip_interval = drip_interval
        self.drip_bytes = drip_bytes
        self.count = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                # Skip a request body, if any (the benchmarks send none).
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        n = int(value)
                        while len(buf) < n:
                            data = conn.recv(65536)
                            if not data:
                                return
                            buf += data
                        buf = buf[n:]
                if head.startswith(b"GET /__count "):
                    with self.lock:
                        body = str(self.count).encode()
                    conn.sendall(_response(b"200 OK", body))
                    continue
                with self.lock:
                    self.count += 1
                if not self.answer(conn):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def answer(self, conn: socket.socket) -> bool:
        """Answer one request; False to close the connection."""
        mode = self.mode
        if mode == "ok":
            conn.sendall(OK)
        elif mode == "slow":
            time.sleep(0.020)
            conn.sendall(OK)
        elif mode == "503":
            conn.sendall(UNAVAILABLE)
        elif mode == "hang":
            self.stop.wait(MAX_LIFETIME)
            return False
        elif mode == "drip":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(self.drip_bytes).encode() + b"\r\n\r\n")
            for _ in range(self.drip_bytes):
                if self.stop.wait(self.drip_interval):
                    return False
                conn.sendall(b".")
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ok", "slow", "hang", "drip", "503"])
    parser.add_argument("--drip-interval", type=float, default=0.1)
    parser.add_argument("--drip-bytes", type=int, default=30)
    args = parser.parse_args()
    peer = Peer(args.mode, args.drip_interval, args.drip_bytes)
    threading.Thread(target=peer.serve, daemon=True).start()
    print(peer.sock.getsockname()[1], flush=True)
    # Serve until the parent goes away (stdin closes), bounded in time.
    waiter = threading.Thread(target=sys.stdin.read, daemon=True)
    waiter.start()
    waiter.join(MAX_LIFETIME)
    peer.stop.set()
    peer.sock.close()


if __name__ == "__main__":
    main()
