"""The command line, run as a subprocess: ``python -m resilient_client ...``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import types
from collections.abc import Iterator

import pytest
import requests
from peers import Peer, answer, drip_body, free_port, hang, wsgi

import resilient_client as rc
from resilient_client.tools._cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

SECRET_KEY = "KEY-cli-5678"
SECRET_TOKEN = "QTOK-cli-1234"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m resilient_client ARGS`` with this checkout's package first on the path."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "resilient_client", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def call(*args: str) -> subprocess.CompletedProcess[str]:
    """`main(ARGS)` in this process, output captured as `run` would: for the many variations that
    need no new interpreter (each one costs half a second)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's --version and usage errors
            code = int(e.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


YAML = """
defaults:
  timeout: {connect: 0.5, read: 2.0, total: 5.0}
  retry: {attempts: 3, backoff: {initial: 0.001, max: 0.002}}
secrets:
  headers: [X-Api-Key]
  query: [token]
endpoints:
  - name: inventory
    match: "http://127.0.0.1:9/"
    timeout: {read: 1.0}
    fallback: stale
  - name: search
    match: "https://search.internal/api/*"
    methods: [GET, HEAD]
    retry: null
    critical: false
    breaker: {storage: "redis://:hunter2pw@127.0.0.1:6390/0"}
"""


class TestCheck:
    def test_a_valid_file_prints_endpoints_and_resolved_policies(self, tmp_path):
        """check prints the rules, a table of every resolved policy next to the defaults, and exits 0."""
        out = run("check", write(tmp_path, "c.yaml", YAML))
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "c.yaml: valid" in text
        assert "0  inventory  http://127.0.0.1:9/" in text
        assert "1  search     https://search.internal/api/*  GET, HEAD" in text
        rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
                if line.startswith("  timeout.read") or line.startswith("  retry.attempts")
                or line.startswith("  critical")}
        assert rows["timeout.read"] == ["2", "1", "*", "2"]
        assert rows["retry.attempts"] == ["3", "3", "off", "*"]
        # Unset, critical follows the fallback (inventory has one); search says false itself.
        assert rows["critical"] == ["yes", "(no", "fallback)", "no", "(fallback)", "*", "no", "*"]
        assert "redis://:REDACTED@127.0.0.1:6390/0" in text and "hunter2pw" not in text
        assert ("Secrets: headers authorization, cookie, proxy-authorization, set-cookie, x-api-key; "
                "query token") in text

    @pytest.mark.parametrize(("name", "text"), [
        ("c.toml", '[defaults.retry]\nattempts = 5\n\n[[endpoints]]\nname = "a"\n'
                   'match = "http://a.test/"\nretry = false\n'),
        ("c.json", '{"defaults": {"retry": {"attempts": 5}}, '
                   '"endpoints": [{"name": "a", "match": "http://a.test/", "retry": null}]}'),
    ])
    def test_toml_and_json_are_read_too(self, tmp_path, name, text):
        """The same check works on TOML (false = off) and JSON files."""
        out = call("check", write(tmp_path, name, text))
        assert out.returncode == 0, out.stderr
        rows = [line.split()[:4] for line in out.stdout.splitlines()]
        assert ["retry.attempts", "5", "off", "*"] in rows

    @pytest.mark.parametrize(("text", "message"), [
        ("endpoints:\n  - match: 'http://a.test/'\n    retry: {attempts: 0}\n",
         "endpoints[0].retry.attempts: must be an integer >= 1, got 0"),
        ("defaults: {timeut: {}}\n", "defaults.timeut: unknown key"),
        ("defaults: [\n", "invalid YAML"),
        ("", "config file is empty"),
        ("listeners: ['no_such_module_xyz:listener']\n",
         "listeners[0]: cannot import 'no_such_module_xyz:listener': ModuleNotFoundError"),
    ])
    def test_a_bad_file_prints_the_config_error_and_exits_2(self, tmp_path, text, message):
        """A bad config prints its ConfigError (key path and value) on stderr and exits 2."""
        out = call("check", write(tmp_path, "bad.yaml", text))
        assert out.returncode == 2
        assert message in out.stderr and out.stderr.startswith("resilient-client: invalid config: ")
        assert out.stdout == ""

    def test_the_installed_command_exits_2_on_a_bad_file(self, tmp_path):
        """As a real process too, a bad file is exit status 2 with the error on stderr."""
        out = run("check", write(tmp_path, "bad.json", '{"defaults": {"retry": {"attempts": 0}}}'))
        assert out.returncode == 2
        assert out.stderr == ("resilient-client: invalid config: defaults.retry.attempts: "
                              "must be an integer >= 1, got 0\n")

    def test_a_missing_file_exits_2(self, tmp_path):
        """A path that does not exist is reported, not a traceback."""
        out = call("check", str(tmp_path / "nope.yaml"))
        assert out.returncode == 2 and "cannot read config file" in out.stderr
        assert "Traceback" not in out.stderr

    def test_the_built_in_defaults_pass_their_own_check(self, tmp_path):
        """An empty config, the built-in defaults, has nothing to report (3 x 6 s > 10 s is by design)."""
        out = call("check", write(tmp_path, "c.json", "{}"))
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith(
            "Coherence (client policy alone; --haproxy adds the proxy): nothing contradicts itself")

    def test_likely_mistakes_are_listed_after_the_tables(self, tmp_path):
        """Milliseconds typed as seconds and a critical endpoint without a fallback are warnings, exit 0."""
        text = ("defaults:\n  timeout: {read: 5000, total: 30000}\n"
                "endpoints:\n  - {name: orders, match: 'http://orders.test/'}\n")
        out = call("check", write(tmp_path, "c.yaml", text))
        assert out.returncode == 0, out.stderr
        findings = out.stdout.split("Coherence (client policy alone; --haproxy adds the proxy):\n")[1]
        assert [line.rsplit("[", 1)[1] for line in findings.splitlines()] == [
            "likely-milliseconds]", "likely-milliseconds]", "critical-without-fallback]"]
        assert "warning: endpoint 'default': timeout.read is 5000 s (83.3 minutes)" in findings
        assert "warning: endpoint 'orders': critical (the default for an endpoint without a" in findings

    def test_no_command_prints_help_and_exits_2(self):
        """Running with no command shows the commands."""
        out = call()
        assert out.returncode == 2 and "check" in out.stderr and "status" in out.stderr

    def test_version(self):
        """--version prints the package version."""
        out = run("--version")
        assert out.returncode == 0 and out.stdout.strip() == f"resilient-client {rc.__version__}"


class TestCheckWithHAProxy:
    HAPROXY = (
        "defaults\n    mode http\n    timeout connect 1s\n    timeout server 30s\n"
        "    timeout queue 30s\n    retries 3\n    retry-on all-retryable-errors\n"
        "backend inventory\n    server a 127.0.0.1:9000\n"
    )
    CONFIG = (
        "defaults:\n  timeout: {connect: 0.5, read: 2.0, total: 8.0}\n"
        "endpoints:\n  - name: inventory\n    match: \"https://inventory.internal/\"\n"
    )

    def test_stacked_retries_are_an_error_with_the_multiplier(self, tmp_path):
        """HAProxy retries under client retries are reported with the multiplier, and exit 1."""
        out = call("check", write(tmp_path, "c.yaml", self.CONFIG),
                   "--haproxy", write(tmp_path, "haproxy.cfg", self.HAPROXY))
        assert out.returncode == 1, out.stdout + out.stderr
        assert "[stacked-retries]" in out.stdout and "multiplier 12" in out.stdout
        assert "haproxy backend 'inventory'" in out.stdout

    def test_one_retry_layer_passes(self, tmp_path):
        """With HAProxy's retries off, the same pair has no error and exits 0."""
        haproxy = self.HAPROXY.replace("    retries 3\n    retry-on all-retryable-errors\n",
                                       "    retries 0\n")
        out = call("check", write(tmp_path, "c.yaml", self.CONFIG),
                   "--haproxy", write(tmp_path, "haproxy.cfg", haproxy))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[stacked-retries]" not in out.stdout

    def test_unreadable_haproxy_file_exits_2(self, tmp_path):
        """A missing haproxy.cfg is reported, exit 2."""
        out = call("check", write(tmp_path, "c.yaml", self.CONFIG), "--haproxy", str(tmp_path / "no.cfg"))
        assert out.returncode == 2 and "cannot read" in out.stderr


class TestGet:
    def test_prints_each_event_live_with_timings(self, tmp_path):
        """get shows the policy, each attempt, the backoff and the call's end, timed from its start."""
        cfg = write(tmp_path, "c.yaml", YAML)
        with Peer().on("*", answer(503, b"nope"), answer(200, b'{"ok": true}')) as peer:
            out = run("get", f"{peer.origin}/items?token={SECRET_TOKEN}", "--config", cfg,
                      "-H", f"X-Api-Key: {SECRET_KEY}")
            assert peer.requests[0].headers["x-api-key"] == SECRET_KEY
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == f"GET {peer.origin}/items?token=REDACTED"
        policy = f"  policy: no endpoint matched: defaults apply, state kept per origin {peer.origin}"
        assert lines[1] == policy
        assert lines[2] == "  timeouts: connect 0.5s, read 2s, total 5s; retry: 3 attempts"
        events = [line.split("s  ", 1)[1] for line in lines if line.startswith("  +")]
        assert events[0].startswith("attempt 1: status 503 in ")
        assert events[1].startswith("backoff: retry in ")
        assert events[1].endswith("after status 503 (attempt 1)")
        assert events[2].startswith("attempt 2: ok 200 in ")
        assert events[3].startswith("call finished: ok 200, 2 attempt(s), ")
        stamps = [float(line.split("s  ")[0].strip(" +")) for line in lines if line.startswith("  +")]
        assert stamps == sorted(stamps)
        assert lines[-1].startswith("=> 200 OK, 2 attempt(s), ")
        assert SECRET_TOKEN not in out.stdout + out.stderr and SECRET_KEY not in out.stdout + out.stderr

    def test_a_failed_call_shows_the_redacted_error_and_exits_1(self, tmp_path):
        """A refused call prints the attempts, the give-up and the error without secrets, exit 1."""
        cfg = write(tmp_path, "c.yaml", YAML.replace("attempts: 3", "attempts: 2"))
        out = call("get", f"http://127.0.0.1:{free_port()}/x?token={SECRET_TOKEN}", "-c", cfg)
        assert out.returncode == 1
        assert "attempt 1: connect_error (ConnectionError)" in out.stdout
        assert "gave up after 2 attempt(s): attempts, last outcome connect_error" in out.stdout
        assert "=> error: ConnectionError: " in out.stdout and "token=REDACTED" in out.stdout
        assert SECRET_TOKEN not in out.stdout + out.stderr

    def test_repeated_calls_show_the_breaker_opening_and_the_fallback(self, tmp_path):
        """With -n, the breaker's opening, the refusals and a static fallback appear as they happen."""
        port = free_port()
        cfg = write(tmp_path, "c.json", json.dumps({
            "defaults": {"retry": None},
            "endpoints": [{"name": "down", "match": f"http://127.0.0.1:{port}/",
                           "breaker": {"failure_threshold": 2, "reset_timeout": 60},
                           "fallback": {"status": 200, "json": {"items": []}}}],
        }))
        out = call("get", f"http://127.0.0.1:{port}/x", "-c", cfg, "-n", "3", "--body")
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout
        assert text.count("fallback (static) served instead of: ConnectionError") == 2
        assert "breaker 'down': closed -> open (2 consecutive failures)" in text
        assert "breaker 'down' is open: call refused without touching the network" in text
        assert "call finished: circuit_open 200, fallback, 0 attempt(s)" in text
        assert text.count("=> 200 OK (fallback)") == 3 and '{"items": []}' in text
        assert text.rstrip().endswith("3 calls, 3 ok, 0 failed")

    @pytest.mark.parametrize("behaviour", [drip_body(b"x" * 100, 0.05), hang()], ids=["body", "headers"])
    def test_an_attempt_cut_off_by_the_deadline_is_named_the_deadline(self, tmp_path, behaviour):
        """A body (or the headers) still coming when total runs out reads as DeadlineExceeded, not as
        the socket error the deadline was enforced with (a ConnectionError or a ReadTimeout)."""
        cfg = write(tmp_path, "c.json", json.dumps(
            {"defaults": {"timeout": {"connect": 1, "read": 2, "total": 0.4}}}))
        with Peer().on("/slow", behaviour) as peer:
            out = call("get", peer.url("/slow"), "-c", cfg)
        assert out.returncode == 1
        attempt = next(line for line in out.stdout.splitlines() if "attempt 1:" in line)
        assert "attempt 1: deadline (DeadlineExceeded: the call's total ran out) in 0.4" in attempt
        assert "Timeout" not in attempt and "ConnectionError" not in attempt
        assert "=> error: DeadlineExceeded: " in out.stdout

    def test_bad_headers_are_usage_errors(self):
        """A header without a colon is refused with exit 2."""
        out = call("get", "http://127.0.0.1:9/", "-H", "nocolon")
        assert out.returncode == 2 and "expected 'Name: value'" in out.stderr


@pytest.fixture
def health_server() -> Iterator[tuple[rc.ResilientSession, str]]:
    """A session of this process with its health app on the test server on loopback."""
    session = rc.ResilientSession({"endpoints": [{"name": "inventory", "match": "http://inv.test/"},
                                                 {"name": "search", "match": "http://search.test/",
                                                  "critical": False}]})
    with Peer().on("*", wsgi(rc.health_app(session))) as peer:
        yield session, peer.url("/health")


class TestStatus:
    def test_a_config_in_memory_shows_every_endpoint_closed(self, tmp_path):
        """status builds a session from the config and prints each breaker and bulkhead, exit 0."""
        out = call("status", "--config", write(tmp_path, "c.yaml", YAML))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[1].split() == ["endpoint", "critical", "breaker", "failures", "retry", "in",
                                    "storage", "bulkhead", "errors"]
        # inventory has a fallback: not critical unless it says so.
        assert lines[3].split() == ["inventory", "no", "closed", "0", "-", "memory", "0/50", "-"]
        assert lines[4].split()[:3] == ["search", "no", "closed"]
        assert "status: ok (healthy)" in out.stdout
        assert "'memory' breakers live inside each process" in out.stdout
        assert "hunter2pw" not in out.stdout

    def test_from_reads_a_running_service(self, health_server):
        """--from reads a live health view: an open critical breaker shows, and exit is 1."""
        session, url = health_server
        session.circuit("inventory").open()
        session.circuit("search").open()
        out = run("status", "--from", url)
        assert out.returncode == 1, out.stderr
        rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[3:5]}
        assert rows["inventory"][:3] == ["inventory", "yes", "open"]
        assert rows["search"][:3] == ["search", "no", "open"]
        assert "status: unhealthy (UNHEALTHY)" in out.stdout

    def test_json_output(self, health_server):
        """--json prints the health view as served, exit 0 when healthy."""
        session, url = health_server
        session.circuit("search").open()  # not critical: degraded only
        out = call("status", "--from", url, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert (data["healthy"], data["status"]) == (True, "degraded")

    def test_a_bare_status_says_what_it_looked_at(self):
        """With no --config and no --from, status explains why there is nothing to show and where to look."""
        out = call("status")
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())  # the explanation is wrapped to the terminal
        assert "endpoint critical breaker" not in text  # no empty table
        assert text.startswith("Nothing to show from the built-in defaults (no --config given): "
                               "- it configures no endpoint;")
        assert "this new session has called none" in text
        assert ("the defaults: timeouts connect 1s, read 5s, total 10s; retry 3 attempts; breaker "
                "opens after 5 failures for 30s, storage memory.") in text
        assert "status --from http://HOST:PORT/health" in text and "status --config FILE" in text
        assert text.endswith("status: ok (healthy)")

    def test_a_config_without_endpoints_names_the_file(self, tmp_path):
        """A config with defaults only is named as what was looked at, with its own defaults."""
        cfg = write(tmp_path, "d.yaml", "defaults:\n  retry: null\n  breaker: null\n")
        text = " ".join(call("status", "-c", cfg).stdout.split())
        assert text.startswith(f"Nothing to show from {cfg}: ")
        assert "retry off; breaker off." in text

    def test_a_service_with_no_endpoints_says_so(self):
        """--from a service whose view is empty says that, instead of an empty table."""
        with Peer().on("*", wsgi(rc.health_app(rc.ResilientSession()))) as peer:
            url = peer.url("/health")
            out = call("status", "--from", url)
        assert out.returncode == 0, out.stderr
        assert " ".join(out.stdout.split()).startswith(f"The service at {url} reports no endpoint")
        assert "endpoint critical" not in out.stdout

    def test_an_unreachable_service_exits_2(self):
        """A --from URL that refuses the connection is reported, exit 2."""
        out = call("status", "--from", f"http://127.0.0.1:{free_port()}/health")
        assert out.returncode == 2 and "cannot read the health view" in out.stderr


def test_status_reads_shared_breaker_state_from_redis(tmp_path, redis_url):
    """A breaker opened in this process with redis storage shows as open in a new `status` process,
    with the failures that opened it (counted in Redis), not the new process's own zero."""
    port = free_port()
    config = {"defaults": {"retry": None},
              "endpoints": [{"name": "shared", "match": f"http://127.0.0.1:{port}/",
                             "breaker": {"failure_threshold": 3, "storage": redis_url}}]}
    session = rc.ResilientSession(config)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError):
            session.get(f"http://127.0.0.1:{port}/x")
    assert session.circuit("shared").state == "open"
    out = run("status", "--config", write(tmp_path, "c.json", json.dumps(config)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.splitlines()[3].split()[:4] == ["shared", "yes", "open", "3"]
    assert rc.ResilientSession(config).health()["shared"].consecutive_failures == 3


class TestDemo:
    def test_a_missing_demo_is_a_clear_message_and_exit_2(self):
        """Without resilient_client/tools/_demo.py, `demo` says so and exits 2."""
        code = ("import sys; sys.modules['resilient_client.tools._demo'] = None\n"
                "from resilient_client.tools._cli import main; raise SystemExit(main(['demo']))")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=env, cwd=ROOT)
        assert out.returncode == 2
        assert "the demo is not part of this installation" in out.stderr and "Traceback" not in out.stderr

    def test_the_demo_gets_every_argument_after_its_name(self, monkeypatch):
        """Options after `demo` are the demo's own, passed to _demo_command.main untouched."""
        seen: list[list[str]] = []
        fake = types.ModuleType("resilient_client.tools._demo_command")
        fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "resilient_client.tools._demo_command", fake)
        assert main(["demo", "--plot", "out.png", "-v"]) == 7
        assert seen == [["--plot", "out.png", "-v"]]


class TestEntryPoints:
    def test_the_console_script_in_setup_py_is_the_command(self):
        """setup.py's `resilient-client` entry point names the command's main (read from setup.py:
        an editable install's metadata may predate a move)."""
        import ast
        import importlib

        tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
        scripts = [
            node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith("resilient-client=")
        ]
        assert len(scripts) == 1
        module, _, attr = scripts[0].removeprefix("resilient-client=").partition(":")
        assert getattr(importlib.import_module(module), attr) is main

    def test_python_dash_m_runs_the_command(self):
        """`python -m resilient_client --version` is the same command."""
        out = run("--version")
        assert out.returncode == 0 and out.stdout.strip() == f"resilient-client {rc.__version__}"
