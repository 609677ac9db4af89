"""
``resilient-client status`` shows host-shared state; ``resilient-client
reset NAME`` clears it for every process at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resilient_client import ResilientSession
from resilient_client._host_file import path_for
from resilient_client.tools._cli import main

# The tests look at the files in the state_dir their config names.
pytestmark = pytest.mark.config_state_dir


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "rc.json"
    path.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "defaults": {"state": "host"},
        "endpoints": [{"name": "inventory", "match": "http://127.0.0.1:9/"}],
    }))
    return path


class TestHostCli:
    def test_status_shows_a_breaker_another_process_opened(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A breaker forced open by one session is open in the host table, and the endpoint is unhealthy."""
        config = _config(tmp_path)
        ResilientSession(str(config)).circuit("inventory").open()
        assert main(["status", "-c", str(config)]) == 1
        out = capsys.readouterr().out
        assert "Host-shared state" in out and "open (forced)" in out
        assert main(["status", "-c", str(config), "--json"]) == 1
        host = json.loads(capsys.readouterr().out)["host"]
        assert host[0]["name"] == "inventory" and host[0]["breaker"]["state"] == "open"

    def test_reset_clears_it_for_every_process(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After reset, a session that saw the breaker open sees it closed."""
        config = _config(tmp_path)
        session = ResilientSession(str(config))
        session.circuit("inventory").open()
        assert main(["reset", "inventory", "-c", str(config)]) == 0
        assert session.circuit("inventory").state == "closed"
        assert main(["reset", "billing", "-c", str(config)]) == 1
        assert "no host-shared state for 'billing'" in capsys.readouterr().err

    def test_a_damaged_file_is_shown_not_changed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """status lists a file that is not ours as unreadable and leaves its bytes alone."""
        config = _config(tmp_path)
        ResilientSession(str(config)).circuit("inventory").open()
        path = Path(path_for(str(tmp_path / "state"), "inventory"))
        path.write_bytes(b"junk" * 2048)
        main(["status", "-c", str(config)])
        assert "unreadable: not a" in capsys.readouterr().out
        assert path.read_bytes() == b"junk" * 2048

    def test_check_reports_a_policy_the_running_processes_do_not_share(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """check reads the state_dir: a file recorded under other thresholds is host-policy-mismatch."""
        config = _config(tmp_path)
        ResilientSession(str(config)).circuit("inventory")  # a running process records its policy
        assert main(["check", str(config)]) == 0
        assert "host-policy-mismatch" not in capsys.readouterr().out
        other = tmp_path / "other.json"
        doc = json.loads(config.read_text())
        doc["defaults"]["breaker"] = {"failure_threshold": 2}
        other.write_text(json.dumps(doc))
        assert main(["check", str(other)]) == 0  # a warning: the config itself is valid
        out = capsys.readouterr().out
        assert "endpoint 'inventory'" in out and "[host-policy-mismatch]" in out
        doc["state_dir"] = str(tmp_path / "own")  # its own state_dir: nothing shared, nothing to say
        other.write_text(json.dumps(doc))
        main(["check", str(other)])
        assert "host-policy-mismatch" not in capsys.readouterr().out

    def test_reset_stale_removes_only_forgotten_files(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--stale deletes a file idle for long with no live process's row, and keeps one in use."""
        import os

        from resilient_client._host_file import HostFile
        from resilient_client._host_state import HostBulkhead
        from resilient_client._policy import BulkheadPolicy

        state = tmp_path / "state"
        config = _config(tmp_path)
        HostFile(str(state), "http://forgotten:80").fd()  # an origin called once, long ago
        used = HostBulkhead("inventory", BulkheadPolicy(max_concurrent=2), HostFile(str(state), "inventory"))
        assert used.try_acquire()
        used.release()  # this process keeps its row: it is a live user
        for p in state.iterdir():
            os.utime(p, (1, 1))  # untouched since 1970
        assert main(["reset", "--stale", "-c", str(config)]) == 0
        assert "removed 1 state file" in capsys.readouterr().out
        assert [p.name for p in state.iterdir()] == [Path(path_for(str(state), "inventory")).name]
        assert main(["reset", "--stale", "inventory", "-c", str(config)]) == 2

class TestWhereStatusLooks:
    def test_status_creates_no_directory_and_no_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Read-only: a state_dir that does not exist is named and warned about, not made."""
        config = _config(tmp_path)
        assert main(["status", "-c", str(config)]) == 0
        out, err = capsys.readouterr()
        assert not (tmp_path / "state").exists()
        assert f"no state file in {tmp_path / 'state'}" in out
        assert "warning: no state file" in err and "inventory" in err

    def test_status_leaves_an_existing_file_unchanged(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Reading a file written by a service changes none of its bytes (not even the policy record)."""
        config = _config(tmp_path)
        ResilientSession(str(config)).circuit("inventory").open()
        path = Path(path_for(str(tmp_path / "state"), "inventory"))
        with open(path, "r+b") as f:  # as if laid out by a process that recorded no policy
            f.seek(248)
            f.write(bytes(4))
        before = path.read_bytes()
        assert main(["status", "-c", str(config)]) == 1
        assert path.read_bytes() == before
        assert f"in {tmp_path / 'state'} (the config's state_dir)" in capsys.readouterr().out

    def test_status_points_at_the_other_default_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A shell's default ($XDG_RUNTIME_DIR) is not a service's (/dev/shm): status says where they are."""
        from resilient_client import _host_dir

        service_dir = tmp_path / "shm" / "resilient_client-0"
        monkeypatch.setattr(_host_dir, "_shm_dir", lambda: str(service_dir))
        monkeypatch.delenv("RESILIENT_CLIENT_STATE_DIR", raising=False)
        monkeypatch.delenv("RESILIENT_CLIENT_TEST_STATE_DIR", raising=False)
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        config = tmp_path / "rc.json"
        config.write_text(json.dumps({"defaults": {"state": "host"},
                                      "endpoints": [{"name": "inventory", "match": "http://127.0.0.1:9/"}]}))
        ResilientSession(str(config)).circuit("inventory").open()  # the service, without $XDG_RUNTIME_DIR
        (tmp_path / "xdg").mkdir()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))  # the login shell
        assert main(["status", "-c", str(config)]) == 0
        err = capsys.readouterr().err
        assert f"no state file in {tmp_path / 'xdg' / 'resilient_client'}" in err
        assert f"{service_dir} has state files for inventory: pass --state-dir {service_dir}" in err
        assert not (tmp_path / "xdg" / "resilient_client").exists()
        assert main(["reset", "inventory"]) == 1
        err = capsys.readouterr().err
        assert f"{service_dir} has a state file for 'inventory'" in err and "-c FILE" in err

    def test_gone_processes_are_marked_and_budget_counts_decay(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A dead pid's slots say '(gone)'; first tries older than the window are not counted."""
        import subprocess
        import sys

        from resilient_client._host_dir import me
        from resilient_client._host_file import BUDGET, BUDGET_AT, HostFile

        config = _config(tmp_path)
        ResilientSession(str(config)).circuit("inventory").open()
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(timeout=10)
        f = HostFile(str(tmp_path / "state"), "inventory")
        with f.locked() as fd:
            f.write_row(fd, 0, [proc.pid, 2, 1e12, 0, me().ns], 0)  # a process of our pid namespace
            # 7 first tries, in a bucket that left the 10 s window long ago
            f.write(fd, BUDGET_AT, BUDGET.pack(1, 7, *([0] * 19)))
        main(["status", "-c", str(config)])
        out = capsys.readouterr().out
        assert f"{proc.pid} (gone)" in out and "0 (+2 gone)" in out
        assert "first tries (10s)" in out
        main(["status", "-c", str(config), "--json"])
        host = json.loads(capsys.readouterr().out)["host"][0]
        assert host["budget"]["first_tries"] == 0
        assert host["bulkhead"]["gone_processes"] == [proc.pid]

    def test_check_shows_the_resolved_state_dir(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """check names where host state lives, resolved, and breaker.storage follows state."""
        config = tmp_path / "rc.json"
        config.write_text(json.dumps({"state_dir": "run/state", "defaults": {"state": "host"},
                                      "endpoints": [{"name": "inventory", "match": "http://127.0.0.1:9/"}]}))
        assert main(["check", str(config)]) == 0
        out = capsys.readouterr().out
        assert f"Host-shared state (state: host) in: {tmp_path / 'run' / 'state'}" in out
        storage = next(line for line in out.splitlines() if line.strip().startswith("breaker.storage"))
        assert "memory" not in storage and "host" in storage
