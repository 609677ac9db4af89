"""
One endpoint's host-shared state: a small fixed-layout file in ``state_dir``.

Every process on a host that uses the same endpoint name and ``state_dir``
(``state: host``) opens the same file, and the breaker record, the retry
budget's counters and the bulkhead's leases live in it. `_host_state` puts
the breaker store, the bulkhead and the budget on top of it; this module
knows the bytes and the lock, nothing of breakers.

Decision record: the file
-------------------------
One file per endpoint name, ``<state_dir>/<name>-<sha1 of name>.state``:
endpoints never contend for one lock, and damage to one endpoint's file
leaves the others shared. The layout is 4096 bytes, little-endian::

    0    header   magic b"RCHOST\\0\\0", layout version u32, size u32, name (48 bytes)
    64   breaker  state u8, forced u8, failures u32, opened_at f64,
                  trial_until f64, trial pid i32, holder (48 bytes), crc32
    160  budget   bucket number i64, 10 x first tries u32, 10 x retries u32
    248  policy   crc32 of the first user's breaker, budget and bulkhead policies
    256  bulkhead count of lease rows in use u32, then 128 rows from 272:
                  (pid i32, calls held u32, lease expiry f64), one per process
    3584 redis    the Redis breaker's snapshot for ``state: redis://`` (`_host_redis`)

Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process
on a host). A file whose magic, version or size is not ours (an older
release, another program, a truncation) is never written: the process logs
once and keeps that endpoint's state in the process (`HostFileError`).
Bumping `VERSION` is how a layout change keeps old and new releases apart.

Decision record: atomicity and crashes
--------------------------------------
An update is ``flock(LOCK_EX)``, ``pread`` the section, decide, one
``pwrite`` per section, ``flock(LOCK_UN)``: a read-modify-write that no other
process interleaves with. The lock is held for microseconds, never across a
call or any other I/O. A process killed while holding it releases it (the
kernel drops a dead process's flocks), so nobody ever waits on a dead
process; a lock kept *in* shared memory would stay held for ever. Threads of
one process also take a `threading.Lock` first: flock is per open file, so
two threads on one descriptor would not exclude each other.

A signal cannot stop a ``pwrite`` half way (SIGKILL is delivered on the way
back to user space), so a writer's death leaves each section as it was
before or after its one write; the bulkhead's row count is written after the
row it counts, so a death between them leaves an unused row. The breaker
record is read *without* the lock on the hot path (one ``pread``), and a
read concurrent with a write may be torn: its crc32 catches that and the
read is done again under the lock. A bad crc under the lock is damage (not
a race): the record is reset to closed and that is logged.

Bulkhead rows are the exception: a process claims a row once, under the
lock (`claim_row`), then alone writes it, one ``pwrite`` and no lock (others
only clear a gone pid's row or zero a lapsed lease, under the lock). A count
is an aligned u32 in one 16-byte write, seen before or after it by a reader
summing the rows (`calls_held`). Such a write does not check the header: a
file damaged after it was opened may get one more row from each process
before the next acquire's read sees the damage.

Why ``pread``/``pwrite`` and not ``mmap``: a mapped file that another process
truncates kills the next reader with SIGBUS; ``pread`` returns short, which
is detected. The file lives on tmpfs (``/dev/shm`` or the runtime dir), so
the page cache is the shared memory and a ``pread`` is a memory copy.

Fork (gunicorn ``--preload``): a descriptor inherited across ``fork`` shares
its flock with the parent, so the child reopens the file on first use (the
pid, cached and refreshed by an ``os.register_at_fork`` hook, is compared on
every operation).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Iterator
from typing import cast

from . import _host_dir
from ._host_dir import STATE_DIR_ENV, default_state_dir, path_for, pid_alive, warn_once

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BREAKER", "BUCKETS", "BUDGET", "MAX_PROCESSES", "POLICY_AT", "ROW", "ROW_AT", "STATE_DIR_ENV",
    "BreakerFields", "HostFile", "HostFileError", "breaker_fields", "current_pid", "default_state_dir",
    "path_for",
]

logger = logging.getLogger("resilient_client")

MAGIC = b"RCHOST\0\0"
#: The layout's version: a file of another version is left alone.
VERSION = 1
SIZE = 4096
_HEADER = struct.Struct("<8sII48s")
BREAKER_AT = 64
#: state, forced, failures, opened_at, trial_until, trial pid, holder; then its crc32.
BREAKER = struct.Struct("<BB2xIddi4x48s")
_CRC = struct.Struct("<I")
#: The breaker record's fields as stored, in `BREAKER`'s order.
BreakerFields = tuple[int, int, int, float, float, int, bytes]
_ZERO: BreakerFields = (0, 0, 0, 0.0, 0.0, 0, b"")
BUDGET_AT = 160
BUCKETS = 10
BUDGET = struct.Struct(f"<q{BUCKETS}I{BUCKETS}I")
POLICY_AT = 248
_ROWS_AT = 256
_ROW0 = ROW_AT = 272
ROW = struct.Struct("<iId")
#: Processes that may hold bulkhead slots on one endpoint at once: 4-32
#: gunicorn workers, plus room for recycled ones whose rows are reclaimed.
MAX_PROCESSES = 128
_COUNT = struct.Struct("<I")
#: Rows read with the count in one pread: enough for 32 processes.
_ROWS_FIRST = 32
_ROWS_READ = _ROW0 + _ROWS_FIRST * ROW.size
_COUNTS: dict[int, struct.Struct] = {}  # structs reading the calls held of n rows, by n

#: What the first 16 bytes of a good file are: checked under every lock.
_HEAD16 = _HEADER.pack(MAGIC, VERSION, SIZE, b"")[:16]
_open_lock = threading.Lock()

#: This process's pid, kept up to date across forks: getpid() is a system
#: call (about 1 µs on this kind of host), and a call would make five.
_pid = os.getpid()


def current_pid() -> int:
    """``os.getpid()``, without the system call."""
    return _pid


def _after_fork() -> None:
    # A lock held by a parent thread at fork would never be released here.
    global _open_lock, _pid
    _open_lock = threading.Lock()
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class HostFileError(Exception):
    """The file cannot be used: damaged, foreign, or not writable."""


class HostFile:
    """
    The state file of one endpoint, opened lazily; `HostFileError` from any
    method means "use process-local state from now on".
    """

    def __init__(self, state_dir: str, name: str) -> None:
        self.name = name
        self.path = path_for(state_dir, name)
        self._dir = state_dir
        self._fd = -1
        self._pid = 0
        self._tlock = threading.Lock()

    # -- opening ---------------------------------------------------------------------

    def _open(self) -> int:
        if fcntl is None:  # pragma: no cover - Windows
            raise HostFileError("this platform has no fcntl (no kernel file locks)")
        read_only = _host_dir.READ_ONLY  # `resilient-client status`: create nothing
        try:
            if not read_only:
                os.makedirs(self._dir, mode=0o700, exist_ok=True)
            st = os.stat(self._dir)
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                # Anyone who can write here can forge our breakers.
                raise HostFileError(f"{self._dir} is not this user's own directory (mode 0700)")
            flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise HostFileError(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                if size == 0 or (size == SIZE and os.pread(fd, 16, 0) == bytes(16)):
                    # New (or its creator died between sizing it and writing
                    # the header): laid out under the lock, so a racing
                    # opener sees it whole.
                    os.ftruncate(fd, SIZE)
                    os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, SIZE, self.name.encode()[:48]), 0)
                else:
                    self._check_header(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, HostFileError) as exc:
            os.close(fd)
            if isinstance(exc, HostFileError):
                raise
            raise HostFileError(f"cannot set up {self.path}: {exc}") from exc
        return fd

    def _check_header(self, fd: int) -> None:
        raw = os.pread(fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size or os.fstat(fd).st_size != SIZE:
            raise HostFileError(f"{self.path} is truncated")
        magic, version, size, _ = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise HostFileError(f"{self.path} is not a resilient_client state file")
        if version != VERSION or size != SIZE:
            raise HostFileError(f"{self.path} has layout version {version}, this release reads {VERSION}")

    def fd(self) -> int:
        """The descriptor, (re)opened in this process: a forked child must not share the parent's lock."""
        pid = _pid
        if self._pid != pid:
            with _open_lock:
                if self._pid != pid:
                    # An inherited descriptor is the parent's (its flock is
                    # the parent's too): leave it open for the parent's sake.
                    self._tlock = threading.Lock()
                    self._fd = self._open()
                    self._pid = pid
                    # Closed with this object: states of forgotten origins
                    # must not leak a descriptor each.
                    weakref.finalize(self, os.close, self._fd)
        return self._fd

    # -- reading and writing -----------------------------------------------------------

    def lock(self, *, check: bool = True) -> int:
        """Take the file exclusively (thread lock, then flock) and return its descriptor.

        For one read-modify-write: never held across a call. Pair with `unlock`.
        With ``check=False`` the caller checks the header itself (`read_rows`
        reads it with the rows, saving a system call).
        """
        fd = self.fd()
        assert fcntl is not None
        tlock = self._tlock
        tlock.acquire()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            tlock.release()
            raise HostFileError(f"cannot lock {self.path}: {exc}") from exc
        try:
            # Checked under every lock: a file damaged mid-run stops being written at once.
            if check and os.pread(fd, 16, 0) != _HEAD16:
                self._check_header(fd)
                raise HostFileError(f"{self.path} header changed")
        except BaseException as exc:
            self.unlock(fd)
            if isinstance(exc, OSError):
                raise HostFileError(f"{self.path}: {exc}") from exc
            raise
        return fd

    def unlock(self, fd: int) -> None:
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass  # closed under us: the kernel dropped the lock with it
        finally:
            self._tlock.release()

    @contextlib.contextmanager
    def locked(self) -> Iterator[int]:
        """`lock` and `unlock` around a block; OSError inside becomes HostFileError."""
        fd = self.lock()
        try:
            yield fd
        except OSError as exc:
            raise HostFileError(f"{self.path}: {exc}") from exc
        finally:
            self.unlock(fd)

    def read(self, fd: int, at: int, size: int) -> bytes:
        raw = os.pread(fd, size, at)
        if len(raw) != size:
            raise HostFileError(f"{self.path} is truncated")
        return raw

    def write(self, fd: int, at: int, data: bytes) -> None:
        if os.pwrite(fd, data, at) != len(data):
            raise HostFileError(f"{self.path}: short write")

    # -- the breaker record --------------------------------------------------------------

    def read_breaker_unlocked(self) -> bytes:
        """The breaker record's bytes without the lock (`breaker_fields` decodes them)."""
        try:
            return os.pread(self.fd(), BREAKER.size + 4, BREAKER_AT)
        except OSError as exc:
            raise HostFileError(f"{self.path}: {exc}") from exc

    def read_breaker(self, fd: int) -> BreakerFields:
        """The breaker fields, under the lock; a bad checksum is damage: reset to zeros."""
        fields = breaker_fields(self.read(fd, BREAKER_AT, BREAKER.size + 4))
        if fields is None:
            warn_once(self.path + ":breaker", "host state %s: breaker record damaged; reset to closed",
                      self.path)
            self.write_breaker(fd, _ZERO)
            return _ZERO
        return fields

    def write_breaker(self, fd: int, fields: BreakerFields) -> None:
        body = BREAKER.pack(*fields)
        self.write(fd, BREAKER_AT, body + _CRC.pack(_crc(body)))

    # -- bulkhead rows ---------------------------------------------------------------------

    def read_rows(self, fd: int) -> list[list[int | float]]:
        """The lease rows in use, ``[pid, calls, expiry]`` each; checks the header too."""
        raw = self._rows_raw(fd)
        n = min(_COUNT.unpack_from(raw, _ROWS_AT)[0], MAX_PROCESSES)
        return [list(r) for r in ROW.iter_unpack(raw[_ROW0:_ROW0 + n * ROW.size])]

    def _rows_raw(self, fd: int) -> bytes:
        """Header to the rows in use, in one ``pread``; the header is checked."""
        raw = os.pread(fd, _ROWS_READ, 0)  # header, breaker, budget and 32 rows: one call
        if len(raw) != _ROWS_READ or raw[:16] != _HEAD16:
            self._check_header(fd)
            raise HostFileError(f"{self.path} header changed")
        (n,) = _COUNT.unpack_from(raw, _ROWS_AT)
        if n > _ROWS_FIRST:  # rare: more processes than one read covers
            # A damaged count must not make us read past the table.
            raw = self.read(fd, 0, _ROW0 + min(n, MAX_PROCESSES) * ROW.size)
        return raw

    def calls_held(self) -> int:
        """The calls in flight on the host: the rows summed, no flock (each row is one process's)."""
        try:
            raw = self._rows_raw(self.fd())
        except OSError as exc:
            raise HostFileError(f"{self.path}: {exc}") from exc
        n = min(_COUNT.unpack_from(raw, _ROWS_AT)[0], MAX_PROCESSES)
        counts = _COUNTS.get(n) or _COUNTS.setdefault(n, struct.Struct("<" + "4xI8x" * n))
        return sum(counts.unpack_from(raw, _ROW0))

    def claim_row(self, pid: int, expiry: float) -> int:
        """A row for *pid*, under the lock: its own, else a free one or a gone pid's, else a new one."""
        with self.locked() as fd:
            rows = self.read_rows(fd)
            mine = [i for i, r in enumerate(rows) if r[0] == pid]
            free = mine or [i for i, r in enumerate(rows) if r[0] <= 0 or not pid_alive(int(r[0]))]
            i = free[0] if free else len(rows)
            if i >= MAX_PROCESSES:
                raise HostFileError(f"more than {MAX_PROCESSES} live processes use {self.path}")
            self.write_row(fd, i, [pid, 0, expiry], len(rows))
            return i

    def write_row(self, fd: int, index: int, row: list[int | float], rows_in_use: int) -> None:
        self.write(fd, _ROW0 + index * ROW.size, ROW.pack(*row))
        if index >= rows_in_use:
            # After the row: a death between the two leaves an unused row, not a bad count.
            self.write(fd, _ROWS_AT, _COUNT.pack(index + 1))

    # -- all of it, for `status` and `reset` ---------------------------------------------------

    def clear(self) -> None:
        """
        Forget the breaker, the budget, the recorded policy and the rows of
        gone processes (``resilient-client reset``). A live process's row
        stays: it is that process's to write, and its calls are in flight.
        """
        with self.locked() as fd:
            rows = self.read_rows(fd)
            self.write(fd, BREAKER_AT, bytes(_ROWS_AT - BREAKER_AT))
            self.write_breaker(fd, _ZERO)
            for i, r in enumerate(rows):
                if not pid_alive(int(r[0])):
                    self.write(fd, _ROW0 + i * ROW.size, bytes(ROW.size))


def _crc(body: bytes) -> int:
    return zlib.crc32(body)


def breaker_fields(raw: bytes) -> BreakerFields | None:
    """The fields of a breaker record's bytes; ``None`` when its crc32 fails (torn or damaged)."""
    if len(raw) != BREAKER.size + 4:
        raise HostFileError("state file truncated")
    body = raw[: BREAKER.size]
    (crc,) = _CRC.unpack_from(raw, BREAKER.size)
    if crc != _crc(body):
        # A fresh file is all zeros: that is a closed breaker, not damage.
        if crc == 0 and body == bytes(BREAKER.size):
            return _ZERO
        return None
    return cast(BreakerFields, BREAKER.unpack(body))
