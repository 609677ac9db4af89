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
leaves the others shared. The layout (version 2) is 8192 bytes, little-endian::

    0    header   magic b"RCHOST\\0\\0", layout version u32, size u32, name (48 bytes)
    64   breaker  state u8, forced u8, failures u32, opened_at f64, trial_until f64,
                  the trial holder's pid i32, pid namespace u32, token u64,
                  holder (40 bytes), crc32
    160  budget   bucket number i64, 10 x first tries u32, 10 x retries u32
    256  meta     boot id (16 bytes), digest of the endpoint's match (16 bytes),
                  crc32 of the recorder's breaker, budget and bulkhead policies,
                  the recorder's pid i32 and namespace u32, reset epoch u32, token u64
    320  bulkhead count of lease rows in use u32, then 128 rows from 336: (pid i32,
                  calls held u32, lease expiry f64, token u64, pid namespace u32), one per process
    7680 redis    the Redis breaker's snapshot, for ``state: redis://`` (`_host_redis`)

A process is named by pid, token (its start time) and pid namespace: see
`_host_dir.alive`. Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one
clock for every process of a boot and time namespace); a file written
before this boot (its boot id) is cleared when opened, and an ``opened_at``
ahead of our clock is taken as "now" (`_host_state`). A file whose magic,
version or size is not ours (an older release, another program, a
truncation) is never written: the process logs once and keeps that
endpoint's state in the process (`HostFileError`), trying the file again
every `CHECK_EVERY` (``resilient-client reset`` lays it out afresh *in
place*: never unlinked, so no process is left on an old inode). Bumping
`VERSION` is how a layout change keeps old and new releases apart.

Why it is long: the bytes, the bounded lock, opening, fork and the
deleted-file check belong together (each depends on the others' invariants);
the process identity lives in `_host_dir`, the users in `_host_state`,
`_host_bulkhead`, `_host_budget` and `_host_redis`.

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

Fork (gunicorn ``--preload``, multiprocessing, celery prefork): a flock
belongs to the open file description, which ``fork`` shares, so a child
keeping the parent's descriptor would keep the parent's lock alive after
the parent dies. An ``os.register_at_fork`` hook closes every inherited
descriptor in the child (the parent's lock is untouched: it still has its
own), and the child reopens the file on first use; descriptors are
``O_CLOEXEC`` for an ``exec``. One `HostFile` per file per process
(`host_file`): sessions on one endpoint share its descriptor and locks.

The lock's wait is bounded (`LOCK_WAIT`): a holder stopped with it
(SIGSTOP, ``docker pause``, a debugger) makes callers decide in their
process (`HostFileBusy`) rather than stall past their deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from typing import cast

from . import _host_dir
from ._host_dir import (
    STATE_DIR_ENV,
    Identity,
    alive,
    boot_id,
    default_state_dir,
    path_for,
    pid_alive,
    warn_once,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BREAKER", "BUCKETS", "BUDGET", "MAX_PROCESSES", "META", "META_AT", "POLICY_AT", "ROW", "ROWS_AT",
    "ROW_AT", "STATE_DIR_ENV", "BreakerFields", "HostFile", "HostFileBusy", "HostFileError",
    "breaker_fields", "current_pid", "default_state_dir", "host_file", "path_for", "reset_in_place",
]

logger = logging.getLogger("resilient_client")

MAGIC = b"RCHOST\0\0"
#: The layout's version: a file of another version is left alone.
VERSION = 2
SIZE = 8192
_HEADER = struct.Struct("<8sII48s")
BREAKER_AT = 64
#: state, forced, failures, opened_at, trial_until, the trial holder's pid,
#: pid namespace and token, its holder string; then its crc32.
BREAKER = struct.Struct("<BB2xIddiIQ40s")
_CRC = struct.Struct("<I")
#: The breaker record's fields as stored, in `BREAKER`'s order.
BreakerFields = tuple[int, int, int, float, float, int, int, int, bytes]
_ZERO: BreakerFields = (0, 0, 0, 0.0, 0.0, 0, 0, 0, b"")
BUDGET_AT = 160
BUCKETS = 10
BUDGET = struct.Struct(f"<q{BUCKETS}I{BUCKETS}I")
META_AT = 256
#: boot id, digest of the endpoint's match, policy crc32, the recorder's pid
#: and namespace, the reset epoch, the recorder's token.
META = struct.Struct("<16s16sIiIIQ")
_EPOCH_AT = META_AT + 44
#: Where the recorded policy's crc32 is (`_host_state.recorded_policy`).
POLICY_AT = META_AT + 32
ROWS_AT = 320
ROW0 = ROW_AT = 336
#: A lease row: pid, calls held, lease expiry, the holder's token and pid namespace.
ROW = struct.Struct("<iIdQI4x")
#: Processes that may hold bulkhead slots on one endpoint at once: 4-32
#: gunicorn workers, plus room for recycled ones whose rows are reclaimed.
MAX_PROCESSES = 128
_COUNT = struct.Struct("<I")
#: Rows read with the count in one pread: enough for 32 processes.
_ROWS_FIRST = 32
_ROWS_READ = ROW0 + _ROWS_FIRST * ROW.size
_COUNTS: dict[int, struct.Struct] = {}  # structs reading the calls held of n rows, by n
#: The longest a call waits for another process's lock (held for microseconds
#: unless its holder is stopped: SIGSTOP, ``docker pause``, a debugger).
LOCK_WAIT = 0.25
#: After a wait that gave up, calls try the lock once without waiting for this long.
_BUSY_FOR = 1.0
#: How often a file in use is checked for having been deleted or replaced,
#: and a process that stopped sharing tries the file again.
CHECK_EVERY = 1.0

#: What the first 16 bytes of a good file are: checked under every lock.
_HEAD16 = _HEADER.pack(MAGIC, VERSION, SIZE, b"")[:16]
_open_lock = threading.Lock()
#: One HostFile per file in a process (`host_file`): two sessions on one
#: endpoint share its descriptor and its thread lock.
_files: weakref.WeakValueDictionary[str, HostFile] = weakref.WeakValueDictionary()
#: Every HostFile, so that a forked child closes what it inherited.
_every: weakref.WeakSet[HostFile] = weakref.WeakSet()

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
    for f in list(_every):
        f._tlock = threading.Lock()  # a parent thread may have held it at fork
        f._drop_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class HostFileError(Exception):
    """The file cannot be used: damaged, foreign, or not writable."""


class HostFileBusy(HostFileError):
    """Another process held the lock past `LOCK_WAIT`: decide this call in the process (fail open)."""


def host_file(state_dir: str, name: str) -> HostFile:
    """The process's one `HostFile` for endpoint *name* in *state_dir*."""
    path = os.path.abspath(path_for(state_dir, name))
    with _open_lock:
        f = _files.get(path)
        if f is None:
            f = _files[path] = HostFile(state_dir, name)
        return f


class HostFile:
    """
    The state file of one endpoint, opened lazily; `HostFileError` from any
    method means "use process-local state" (`revive` tries again later).
    """

    def __init__(self, state_dir: str, name: str) -> None:
        self.name = name
        self.path = path_for(state_dir, name)
        self._dir = state_dir
        self._fd = -1
        self._pid = 0
        self._tlock = threading.Lock()
        self._closer: weakref.finalize[..., None] | None = None
        self._busy_until = 0.0
        self._check_at = time.monotonic() + CHECK_EVERY
        self._epoch = b""  # the reset epoch last seen
        #: Bumped when the file is reopened (deleted or replaced under us),
        #: reset, or usable again: bulkheads then claim their row again.
        self.generation = 0
        _every.add(self)

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
            # O_CLOEXEC: a program exec'd by a worker must not keep the lock alive.
            flags = os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise HostFileError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._flock(fd)
            try:
                size = os.fstat(fd).st_size
                if size == 0 or (size == SIZE and os.pread(fd, 16, 0) == bytes(16)):
                    # New (or its creator died between sizing it and writing
                    # the header): laid out under the lock, so a racing
                    # opener sees it whole.
                    os.ftruncate(fd, SIZE)
                    os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, SIZE, self.name.encode()[:48]), 0)
                elif not read_only and self._upgrade_v1(fd, size):
                    pass  # laid out afresh: no live process of the older release uses it
                else:
                    self._check_header(fd)
                if not read_only:
                    self._check_boot(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, HostFileError) as exc:
            os.close(fd)
            if isinstance(exc, HostFileError):
                raise
            raise HostFileError(f"cannot set up {self.path}: {exc}") from exc
        return fd

    def _upgrade_v1(self, fd: int, size: int) -> bool:
        """
        A file of layout 1 (the release before) whose lease rows name no live
        process is laid out as ours (lock held): after a rolling upgrade the
        old file would otherwise keep every new worker process-local.
        """
        if size != 4096:
            return False
        raw = os.pread(fd, 4096, 0)
        magic, version, _, _ = _HEADER.unpack_from(raw)
        if magic != MAGIC or version != 1:
            return False
        (n,) = _COUNT.unpack_from(raw, 256)
        rows = struct.iter_unpack("<iId", raw[272:272 + 16 * min(n, 128)])
        if any(pid > 0 and pid_alive(pid) for pid, _, _ in rows):
            return False  # an older worker still runs: each keeps to itself until it is gone
        os.ftruncate(fd, SIZE)
        os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, SIZE, self.name.encode()[:48]) + bytes(SIZE - 64), 0)
        logger.info("host state %s: layout 1 of an older release, unused: laid out afresh", self.path)
        return True

    def _check_header(self, fd: int) -> None:
        raw = os.pread(fd, _HEADER.size, 0)
        if len(raw) < _HEADER.size or os.fstat(fd).st_size != SIZE:
            raise HostFileError(f"{self.path} is truncated")
        magic, version, size, _ = _HEADER.unpack(raw)
        if magic != MAGIC:
            raise HostFileError(f"{self.path} is not a resilient_client state file")
        if version != VERSION or size != SIZE:
            raise HostFileError(f"{self.path} has layout version {version}, this release reads {VERSION}")

    def _check_boot(self, fd: int) -> None:
        """A file written before a reboot (state_dir on disk) holds times of another clock: start afresh."""
        ours, recorded = boot_id(), os.pread(fd, 16, META_AT)
        if recorded == ours:
            return
        if recorded != bytes(16):
            logger.info("host state %s was written before this boot: cleared", self.path)
            os.pwrite(fd, bytes(SIZE - BREAKER_AT), BREAKER_AT)
        os.pwrite(fd, ours, META_AT)

    def fd(self) -> int:
        """The descriptor, (re)opened in this process: a forked child must not share the parent's lock."""
        pid = _pid
        if self._pid != pid:
            with _open_lock:
                if self._pid != pid:
                    self._drop_inherited()
                    fd = self._open()
                    # Closed with this object: states of forgotten endpoints
                    # must not leak a descriptor each.
                    self._closer = weakref.finalize(self, os.close, fd)  # type: ignore[arg-type]
                    self._fd, self._pid = fd, pid
                    self._epoch = os.pread(fd, 4, _EPOCH_AT)
        elif time.monotonic() >= self._check_at:
            self._check_replaced()
        return self._fd

    def _check_replaced(self) -> None:
        """Every ``CHECK_EVERY``: reopen the path if the file was deleted or replaced under us."""
        if not self._tlock.acquire(blocking=False):
            return  # in use (perhaps by this thread): checked on a later call
        try:
            self._check_at = time.monotonic() + CHECK_EVERY  # a module global: tests shorten it
            self._reopen_if_replaced(self._fd)
        finally:
            self._tlock.release()

    def _drop_inherited(self) -> None:
        """
        After a fork, in the child: close the parent's descriptor. A flock
        belongs to the open file description, which fork shares: a child
        keeping it would keep the parent's lock alive after the parent dies.
        Closing our copy leaves the parent's lock as it is.
        """
        if self._pid and self._pid != _pid and self._fd >= 0:
            if self._closer is not None:
                self._closer.detach()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd, self._pid, self._closer = -1, 0, None

    def _reopen_if_replaced(self, fd: int) -> None:
        """
        The file deleted or replaced under us (thread lock held): reopen the
        path onto the same descriptor number, and bump `generation` (our
        bulkhead row is claimed again in the new file).
        """
        try:
            st = os.fstat(fd)
            try:
                same = st.st_nlink > 0 and os.stat(self.path).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if same:
                epoch = os.pread(fd, 4, _EPOCH_AT)
                if epoch != self._epoch:  # reset (`clear`, `reset_in_place`): rows may be gone
                    self._epoch = epoch
                    self.generation += 1
                return
            new = self._open()
            try:
                # dup2 keeps the number: a thread reading without the lock
                # reads the new file, never a descriptor closed and reused.
                os.dup2(new, fd, inheritable=False)
            finally:
                os.close(new)
        except OSError as exc:
            raise HostFileError(f"cannot reopen {self.path}: {exc}") from exc
        self.generation += 1
        self._epoch = os.pread(fd, 4, _EPOCH_AT)
        logger.info("host state %s was deleted or replaced: reopened", self.path)

    def revive(self) -> bool:
        """Whether the file is usable again (reset in place, or recreated), for a degraded process."""
        self._check_at = 0.0  # deleted meanwhile? checked now
        try:
            fd = self.lock()
            self.unlock(fd)
        except HostFileError:
            return False
        self.generation += 1  # rows may have been rewritten meanwhile
        logger.info("host state %s usable again: shared from now on", self.path,
                    extra={"state_file": self.path})
        return True

    # -- the lock ------------------------------------------------------------------------

    def _flock(self, fd: int) -> None:
        """
        flock(LOCK_EX), waiting at most `LOCK_WAIT`; `HostFileBusy` when the
        holder does not let go. A holder seen stopped (``/proc/locks`` names
        it, its state is ``T``) is given up on at once: contention among
        running processes waits, a paused holder does not stall anyone.
        """
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        start = time.monotonic()
        if start >= self._busy_until:  # else: given up lately; no wait until that is over
            pause, look_at = 0.0001, start + 0.005
            for _ in range(1000):  # bounded: ends by time long before
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    now = time.monotonic()
                    if now >= start + LOCK_WAIT:
                        break
                    if now >= look_at:
                        look_at = now + 0.02
                        if _holder_stopped(fd):
                            break
            self._busy_until = time.monotonic() + _BUSY_FOR
            warn_once(self.path + ":busy", "host state %s: its lock is held by a stopped process (or for "
                      "more than %.0f ms); calls decide in their process until it is free", self.path,
                      LOCK_WAIT * 1000)
        raise HostFileBusy(f"{self.path} is locked by another process")

    def lock(self, *, check: bool = True) -> int:
        """Take the file exclusively (thread lock, then flock) and return its descriptor.

        For one read-modify-write: never held across a call. Pair with `unlock`.
        With ``check=False`` the caller checks the header itself (`read_rows`
        reads it with the rows, saving a system call).
        """
        fd = self.fd()
        tlock = self._tlock
        if not tlock.acquire(timeout=2 * LOCK_WAIT):
            raise HostFileBusy(f"{self.path} is locked by another thread")
        try:
            self._flock(fd)
        except BaseException as exc:
            tlock.release()
            if isinstance(exc, OSError):
                raise HostFileError(f"cannot lock {self.path}: {exc}") from exc
            raise
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

    # -- reading and writing -----------------------------------------------------------

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
        """The lease rows in use, ``[pid, calls, expiry, token, ns]`` each; checks the header too."""
        raw = self._rows_raw(fd)
        n = min(_COUNT.unpack_from(raw, ROWS_AT)[0], MAX_PROCESSES)
        return [list(r) for r in ROW.iter_unpack(raw[ROW0:ROW0 + n * ROW.size])]

    def _rows_raw(self, fd: int) -> bytes:
        """Header to the rows in use, in one ``pread``; the header is checked."""
        raw = os.pread(fd, _ROWS_READ, 0)  # header, breaker, budget and 32 rows: one call
        if len(raw) != _ROWS_READ or raw[:16] != _HEAD16:
            self._check_header(fd)
            raise HostFileError(f"{self.path} header changed")
        (n,) = _COUNT.unpack_from(raw, ROWS_AT)
        if n > _ROWS_FIRST:  # rare: more processes than one read covers
            # A damaged count must not make us read past the table.
            raw = self.read(fd, 0, ROW0 + min(n, MAX_PROCESSES) * ROW.size)
        return raw

    def calls_held(self) -> int:
        """The calls in flight on the host: the rows summed, no flock (each row is one process's)."""
        try:
            raw = self._rows_raw(self.fd())
        except OSError as exc:
            raise HostFileError(f"{self.path}: {exc}") from exc
        n = min(_COUNT.unpack_from(raw, ROWS_AT)[0], MAX_PROCESSES)
        counts = _COUNTS.get(n)
        if counts is None:
            counts = _COUNTS[n] = struct.Struct("<" + "4xI24x" * n)
        return sum(counts.unpack_from(raw, ROW0))

    def claim_row(self, ident: Identity, expiry: float) -> int:
        """
        A row for this process (*ident*), under the lock: its own, else a
        free one or one whose holder is dead (a predecessor with our pid
        included: `alive`), else a new one. A row of another pid namespace
        is never taken: its holder cannot be checked from here.
        """
        with self.locked() as fd:
            rows = self.read_rows(fd)
            mine = [i for i, r in enumerate(rows) if (r[0], r[3], r[4]) == (ident.pid, ident.token, ident.ns)]
            free = mine or [i for i, r in enumerate(rows)
                            if r[0] <= 0 or alive(int(r[0]), int(r[3]), int(r[4])) is False]
            i = free[0] if free else len(rows)
            if i >= MAX_PROCESSES:
                raise HostFileError(f"more than {MAX_PROCESSES} live processes use {self.path}")
            self.write_row(fd, i, [ident.pid, 0, expiry, ident.token, ident.ns], len(rows))
            return i

    def write_row(self, fd: int, index: int, row: list[int | float], rows_in_use: int) -> None:
        self.write(fd, ROW0 + index * ROW.size, ROW.pack(*row))
        if index >= rows_in_use:
            # After the row: a death between the two leaves an unused row, not a bad count.
            self.write(fd, ROWS_AT, _COUNT.pack(index + 1))

    # -- all of it, for `status` and `reset` ---------------------------------------------------

    def clear(self) -> None:
        """
        Forget the breaker, the budget, the recorded policy and the rows of
        gone processes (``resilient-client reset``). A live process's row
        stays: it is that process's to write, and its calls are in flight.
        """
        with self.locked() as fd:
            rows = self.read_rows(fd)
            (epoch,) = _COUNT.unpack(self.read(fd, _EPOCH_AT, 4))
            self.write(fd, BREAKER_AT, bytes(ROWS_AT - BREAKER_AT))
            self.write(fd, META_AT, boot_id())
            self.write(fd, _EPOCH_AT, _COUNT.pack((epoch + 1) & 0xFFFFFFFF))
            self.write_breaker(fd, _ZERO)
            for i, r in enumerate(rows):
                if alive(int(r[0]), int(r[3]), int(r[4])) is False:
                    self.write(fd, ROW0 + i * ROW.size, bytes(ROW.size))


def _holder_stopped(fd: int) -> bool:
    """Whether the process holding *fd*'s file's flock is stopped (SIGSTOP, a debugger); False: unknown."""
    try:
        st = os.fstat(fd)
        me = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", "rb") as f:
            lines = f.read(1 << 20).decode("ascii", "replace").splitlines()
        for line in lines[:10_000]:
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == me:
                with open(f"/proc/{int(parts[4])}/stat", "rb") as f:
                    raw = f.read(512)
                return raw[raw.rfind(b")") + 2:][:1] in (b"T", b"t")
    except (OSError, ValueError):
        pass
    return False


def reset_in_place(state_dir: str, name: str) -> None:
    """
    Lay endpoint *name*'s file out afresh in place, whatever it holds (a
    damaged or foreign file included): processes that have it open keep
    sharing the same inode, and those that stopped share it again (`revive`).
    """
    f = HostFile(state_dir, name)
    try:
        f.clear()
        return
    except HostFileBusy:
        raise
    except HostFileError:
        pass
    try:
        fd = os.open(f.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise HostFileError(f"cannot open {f.path}: {exc}") from exc
    try:
        f._flock(fd)
        os.ftruncate(fd, SIZE)
        os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, SIZE, name.encode()[:48]) + bytes(SIZE - 64), 0)
        os.pwrite(fd, boot_id(), META_AT)
        os.pwrite(fd, os.urandom(4), _EPOCH_AT)  # its processes claim their rows again
    except OSError as exc:
        raise HostFileError(f"cannot reset {f.path}: {exc}") from exc
    finally:
        os.close(fd)  # drops the lock with it


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
