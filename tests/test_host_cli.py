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
