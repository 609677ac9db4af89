"""
A helper for tests/test_host_robust.py (not a test file), run as pid 1 of a
new pid namespace (``unshare --pid --fork --mount-proc``), so that its pids
are its own. Prints one JSON line.

* ``reuse STATE_DIR URL``: a worker (pid 2) dies holding a bulkhead slot;
  its successor gets pid 2 again (``ns_last_pid``) and makes 3 calls.
* ``hold STATE_DIR URL``: a worker (pid 2) makes one call (the test's slow URL).
* ``probe STATE_DIR URL``: a worker with another pid (3) makes one call.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from resilient_client import BulkheadFull, ResilientSession


def _session(state_dir: str, url: str) -> ResilientSession:
    return ResilientSession({
        "state_dir": state_dir,
        "defaults": {"state": "host", "retry": None, "bulkhead": {"max_concurrent": 1},
                     "timeout": {"read": 10, "total": 10}},
        "endpoints": [{"name": "peer", "match": url.rsplit("/", 1)[0] + "/"}],
    })


def _call(session: ResilientSession, url: str) -> str:
    try:
        return str(session.get(url).status_code)
    except BulkheadFull:
        return "full"


def _in_child(work: object) -> int:
    """Run *work* in a forked child; return its pid once it is done."""
    pid = os.fork()
    if pid == 0:
        try:
            work()  # type: ignore[operator]
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


def main() -> None:
    role, state_dir, url = sys.argv[1:4]
    out: dict[str, object] = {}
    if role == "reuse":
        def victim() -> None:
            session = _session(state_dir, url)
            threading.Thread(target=_call, args=(session, url), daemon=True).start()
            for _ in range(500):  # until the call holds its slot
                if session._route_for("GET", url).state.bulkhead.in_flight:  # type: ignore[union-attr]
                    break
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

        out["victim"] = _in_child(victim)
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(int(out["victim"]) - 1))  # type: ignore[call-overload]

        def successor() -> None:
            session = _session(state_dir, url.rsplit("/", 1)[0] + "/ok")
            calls = [_call(session, url.rsplit("/", 1)[0] + "/ok") for _ in range(3)]
            print(json.dumps({"pid": os.getpid(), "calls": calls}), flush=True)

        _in_child(successor)
        return
    if role == "probe":
        _in_child(lambda: None)  # another pid than the holder's
    _in_child(lambda: print(json.dumps({"pid": os.getpid(), "calls": [_call(_session(state_dir, url), url)]}),
                                  flush=True))


if __name__ == "__main__":
    main()
