"""
Where host-shared state files live, and the small helpers around them:
the default ``state_dir``, a file's name, whether a pid is alive, and
logging a damaged file once (see `_host_file` for the file itself).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading

__all__ = [
    "STATE_DIR_ENV", "TEST_STATE_DIR_ENV", "candidate_state_dirs", "default_state_dir",
    "effective_state_dir", "mark_warned", "path_for", "pid_alive", "warn_once",
]

logger = logging.getLogger("resilient_client")

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _after_fork() -> None:
    # A lock held by a parent thread at fork would never be released here.
    global _warned_lock
    _warned_lock = threading.Lock()


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


