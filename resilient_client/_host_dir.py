"""
Where host-shared state files live, and the small helpers around them:
the default ``state_dir``, a file's name, who this process is and whether
another one is alive, and logging a damaged file once (see `_host_file` for
the file itself).

Decision record: who holds a lease
----------------------------------
A pid alone does not name a process: a container restarted after an OOM
kill starts its workers with the same pids, and processes in other pid
namespaces (containers sharing a ``state_dir``) have pids that mean nothing
here. A lease therefore records ``(pid, token, pid namespace)``: the token is
the process's start time (``/proc/<pid>/stat`` field 22, in clock ticks
since boot), or a random number where ``/proc`` is not ours to read, and the
namespace is the inode of ``/proc/self/ns/pid``. `alive` then says:

* another namespace: *unknown* (its pids cannot be checked from here; its
  leases are left to lapse on their own expiry);
* our pid with another token: *dead* (a predecessor that had our pid);
* a pid that does not exist, or exists with another start time: *dead*;
* otherwise alive.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from typing import NamedTuple

__all__ = [
    "STATE_DIR_ENV", "TEST_STATE_DIR_ENV", "Identity", "alive", "boot_id", "candidate_state_dirs",
    "default_state_dir", "effective_state_dir", "mark_warned", "me", "path_for", "pid_alive", "warn_once",
]

logger = logging.getLogger("resilient_client")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _after_fork() -> None:
    # A lock held by a parent thread at fork would never be released here.
    global _warned_lock, _me
    _warned_lock = threading.Lock()
    _me = _identity()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def warn_once(key: str, message: str, *args: object) -> None:
    """Log *message* once per process for *key*: a damaged file must not flood the log."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args, extra={"state_file": key})


def mark_warned(key: str) -> None:
    """Let `warn_once` stay silent for *key* (its caller reports the problem itself)."""
    with _warned_lock:
        _warned.add(key)


#: The default ``state_dir`` when set (the config names none).
STATE_DIR_ENV = "RESILIENT_CLIENT_STATE_DIR"
#: The ``state_dir`` of every endpoint when set, even one the config names:
#: the testing kit sets it per test, so that a test never shares host state
#: with the live services on the machine (or with another test).
TEST_STATE_DIR_ENV = "RESILIENT_CLIENT_TEST_STATE_DIR"


def effective_state_dir(configured: str | None) -> str:
    """The directory host state is kept in, for a config whose ``state_dir`` is *configured*."""
    return os.environ.get(TEST_STATE_DIR_ENV) or configured or default_state_dir()


#: Set by ``resilient-client status``: host files are opened read-only, and
#: neither a directory nor a file is created (one missing is not used).
READ_ONLY = False


def default_state_dir() -> str:
    """
    ``$RESILIENT_CLIENT_STATE_DIR``, else a per-user directory on tmpfs: the
    runtime dir, else /dev/shm, else the temp dir.
    """
    given = os.environ.get(STATE_DIR_ENV)
    if given:
        return given
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "resilient_client")
    return _shm_dir()


def _shm_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"resilient_client-{uid}")


def candidate_state_dirs() -> list[str]:
    """
    Every directory the default ``state_dir`` may be for this user, as other
    environments see it: a login shell has ``$XDG_RUNTIME_DIR``, a system
    service usually not (`resilient-client status` looks in each).
    """
    uid = os.getuid() if hasattr(os, "getuid") else 0
    out = [default_state_dir(), _shm_dir(), f"/run/user/{uid}/resilient_client"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        out.append(os.path.join(runtime, "resilient_client"))
    return list(dict.fromkeys(out))


def path_for(state_dir: str, name: str) -> str:
    """The file of endpoint *name*: readable in a listing, unique by its hash."""
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return os.path.join(state_dir, f"{_SAFE.sub('_', name)[:40]}-{digest}.state")


def pid_alive(pid: int) -> bool:
    """Whether *pid* exists (a zombie not yet reaped still does)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, as someone else
    return True




class Identity(NamedTuple):
    """Who holds a lease: pid, token (start time, else random), pid namespace (0: unknown)."""

    pid: int
    token: int
    ns: int


def _read_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(1024)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return raw[raw.rfind(b")") + 2:].decode("ascii", "replace").split()


def _start_time(pid: int | str) -> int:
    fields = _read_stat(pid)
    # Field 22 of the whole line is the 20th after the name (fields 3...).
    return int(fields[19]) if fields is not None and len(fields) > 19 and fields[19].isdigit() else 0


def _proc_is_ours() -> bool:
    """Whether ``/proc`` shows our pid namespace (an unshared namespace may still see the host's)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _identity() -> Identity:
    pid = os.getpid()
    token = _start_time("self") if _PROC_OURS else 0
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF
    except OSError:
        ns = 0
    return Identity(pid, token or int.from_bytes(os.urandom(8), "little") | 1 << 63, ns)


_PROC_OURS = _proc_is_ours()
_me = _identity()


def me() -> Identity:
    """This process's identity (kept up to date across forks)."""
    return _me


def alive(pid: int, token: int, ns: int) -> bool | None:
    """Whether the lease holder ``(pid, token, ns)`` is alive; None: unknowable from here (see above)."""
    mine = _me
    if ns != mine.ns:
        return None
    if pid == mine.pid:
        return token == mine.token or token == 0
    if not pid_alive(pid):
        return False
    if _PROC_OURS and token and not token >> 63:  # a start time, not a random token
        started = _start_time(pid)
        if started and started != token:
            return False  # the pid was reused
    return True


def boot_id() -> bytes:
    """This boot's id (16 bytes, zeros where unknown): CLOCK_MONOTONIC's times mean nothing across boots."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read(64).strip().decode().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)
