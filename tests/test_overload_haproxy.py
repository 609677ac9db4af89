"""
``proxy_errors`` against a real HAProxy (the recipe of docs/overload.md), and
``resilient-client check --haproxy`` reporting a HAProxy that does not add
the header the client expects (`tools/_haproxy_errors.py`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import Peer, answer, delay, free_port

import resilient_client
from resilient_client import AttemptFinished, Config
from resilient_client.tools import check_haproxy

#: The recipe, as docs/overload.md gives it (a test there keeps the two equal).
RECIPE = """\
    http-error status 503 content-type text/plain string "no server available" hdr X-Proxy-Error 503
    http-error status 502 content-type text/plain string "bad gateway" hdr X-Proxy-Error 502
    http-error status 504 content-type text/plain string "server timeout" hdr X-Proxy-Error 504
"""


def haproxy_cfg(port: int, server_port: int, recipe: str = RECIPE, *, where: str = "defaults") -> str:
    """The recipe in ``defaults`` or in the ``frontend`` (HAProxy marks its backends' errors then too)."""
    return (
        "defaults\n    mode http\n    retries 0\n    timeout connect 1s\n    timeout client 5s\n"
        f"    timeout server 300ms\n    timeout queue 1s\n{recipe if where == 'defaults' else ''}\n"
        f"frontend fe\n    bind 127.0.0.1:{port}\n    default_backend app\n"
        f"{recipe if where == 'frontend' else ''}\n"
        f"backend app\n    server s1 127.0.0.1:{server_port}\n"
    )


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    """start(server_port) -> the URL of a real HAProxy in front of that port."""
    binary = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if binary is None:
        pytest.fail("haproxy is not installed (apt-get install haproxy); .ci/run installs it")
    procs: list[subprocess.Popen[bytes]] = []

    def start(server_port: int, where: str = "defaults") -> str:
        port = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_cfg(port, server_port, where=where))
        procs.append(subprocess.Popen([binary, "-f", str(cfg), "-db"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.02)
        pytest.fail("HAProxy did not listen within 5 s")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=5)


CONFIG = {"defaults": {"retry": {"attempts": 3, "backoff": {"initial": 0, "max": 0}},
                       "breaker": None, "proxy_errors": {"header": "X-Proxy-Error"}}}


def attempts_of(events: list[Any]) -> list[tuple[str, int | None, bool]]:
    return [(e.outcome, e.status, e.proxy_error) for e in events if isinstance(e, AttemptFinished)]


class TestRealHAProxy:
    def test_its_own_503_is_marked_and_retried_even_for_post(self, haproxy: Any) -> None:
        url = haproxy(free_port())  # no server listening: HAProxy answers 503 itself
        events: list[Any] = []
        with resilient_client.ResilientSession(CONFIG, listeners=[events.append]) as s:
            resp = s.post(url + "/orders", data=b"{}")
        assert resp.status_code == 503 and resp.headers["X-Proxy-Error"] == "503"
        assert resp.attempts == 3
        assert attempts_of(events) == [("connect_error", 503, True)] * 3

    def test_the_recipe_in_the_frontend_marks_the_backends_503_and_check_agrees(self, haproxy: Any) -> None:
        """Real HAProxy adds a frontend's http-error header to its backend's 503: no finding."""
        url = haproxy(free_port(), where="frontend")
        with resilient_client.ResilientSession(CONFIG) as s:
            resp = s.post(url + "/orders", data=b"{}")
        assert resp.headers.get("X-Proxy-Error") == "503" and resp.attempts == 3
        config = Config.load({"endpoints": [{"name": "app", "match": "http://app/", "proxy_errors": {}}]})
        text = haproxy_cfg(1, 2, where="frontend")
        assert [f for f in check_haproxy(config, text) if f.code == "proxy-error-header"] == []

    def test_the_peers_own_503_is_not_marked_nor_retried_for_post(self, haproxy: Any) -> None:
        with Peer().on("*", answer(503)) as peer:
            url = haproxy(peer.port)
            events: list[Any] = []
            with resilient_client.ResilientSession(CONFIG, listeners=[events.append]) as s:
                resp = s.post(url + "/orders", data=b"{}")
            assert "X-Proxy-Error" not in resp.headers
            assert resp.attempts == 1 and peer.hits() == 1
            assert attempts_of(events) == [("status", 503, False)]

    def test_its_504_is_marked_and_retried_only_as_the_method_allows(self, haproxy: Any) -> None:
        with Peer().on("*", delay(1.0)) as peer:  # slower than `timeout server 300ms`
            url = haproxy(peer.port)
            with resilient_client.ResilientSession(CONFIG) as s:
                post = s.post(url + "/orders", data=b"{}")
                get = s.get(url + "/items")
            assert (post.status_code, post.headers.get("X-Proxy-Error"), post.attempts) == (504, "504", 1)
            assert (get.status_code, get.attempts) == (504, 3)


class TestCheck:
    def cfg(self, **endpoint: Any) -> Config:
        return Config.load({"endpoints": [{"name": "app", "match": "http://app/",
                                           "proxy_errors": {}, **endpoint}]})

    def codes(self, text: str, config: Config | None = None) -> list[tuple[str, str]]:
        return [(f.severity, f.message) for f in check_haproxy(config or self.cfg(), text)
                if f.code == "proxy-error-header"]

    def test_the_recipe_passes(self) -> None:
        assert self.codes(haproxy_cfg(1, 2)) == []

    def test_a_haproxy_that_does_not_add_the_header_is_an_error(self) -> None:
        (finding,) = self.codes(haproxy_cfg(1, 2, recipe=""))
        assert finding[0] == "error" and "X-Proxy-Error" in finding[1] and "503" in finding[1]
        # The suggestion is the recipe's line (docs/overload.md), value 503 included.
        assert RECIPE.splitlines()[0].strip() in finding[1]

    def test_a_named_defaults_after_from_is_read(self) -> None:
        """``backend app from marked`` inherits ``marked``, not the last ``defaults`` (``plain``)."""
        text = (f"defaults marked\n    mode http\n{RECIPE}\ndefaults plain\n    mode http\n\n"
                "frontend fe from marked\n    bind :80\n    default_backend app\n\n"
                "backend app from marked\n    server s1 127.0.0.1:1\n")
        assert self.codes(text) == []
        assert [s for s, _ in self.codes(text.replace("backend app from marked", "backend app")
                                         .replace("frontend fe from marked", "frontend fe"))] == ["error"]

    def test_a_frontend_marks_only_the_backends_it_sends_to(self) -> None:
        text = (f"defaults\n    mode http\n\nfrontend fe\n    bind :80\n{RECIPE}    use_backend app\n\n"
                "frontend other\n    bind :81\n    default_backend app2\n\n"
                "backend app\n    server s1 127.0.0.1:1\n\nbackend app2\n    server s1 127.0.0.1:1\n")
        assert self.codes(text) == []
        config = Config.load({"endpoints": [{"name": "app2", "match": "http://app/", "proxy_errors": {}}]})
        assert [s for s, _ in self.codes(text, config)] == ["error"]

    def test_an_endpoint_and_the_defaults_it_inherits_are_reported_once(self) -> None:
        """The newcomer's config: proxy_errors in defaults, one endpoint named as its backend."""
        config = Config.load({"defaults": {"proxy_errors": {}},
                              "endpoints": [{"name": "app", "match": "http://app/"}]})
        findings = [f for f in check_haproxy(config, haproxy_cfg(1, 2, recipe=""))
                    if f.code == "proxy-error-header"]
        assert [(f.endpoint, f.backend) for f in findings] == [("app", "app")]

    def test_only_503_marked_is_a_hint(self) -> None:
        recipe = RECIPE.splitlines()[0] + "\n"
        (finding,) = self.codes(haproxy_cfg(1, 2, recipe=recipe))
        assert finding[0] == "info" and "502, 504" in finding[1]

    def test_a_header_on_every_response_is_reported(self) -> None:
        text = haproxy_cfg(1, 2, recipe="    http-after-response set-header X-Proxy-Error 1\n")
        (finding,) = self.codes(text)
        assert finding[0] == "error" and "every response" in finding[1]

    def test_quiet_when_the_client_does_not_expect_the_header(self) -> None:
        config = Config.load({"endpoints": [{"name": "app", "match": "http://app/"}]})
        assert self.codes(haproxy_cfg(1, 2, recipe=""), config) == []

    def test_the_cli_reports_it(self, tmp_path: Path) -> None:
        (tmp_path / "client.yaml").write_text(
            "endpoints:\n  - name: app\n    match: http://app/\n    proxy_errors: {header: X-Proxy-Error}\n")
        (tmp_path / "haproxy.cfg").write_text(haproxy_cfg(1, 2, recipe=""))
        import contextlib
        import io

        from resilient_client.tools._cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["check", str(tmp_path / "client.yaml"), "--haproxy", str(tmp_path / "haproxy.cfg")])
        assert "proxy-error-header" in out.getvalue() and code == 1  # a contradiction: exit 1


def test_the_docs_give_the_tested_recipe() -> None:
    page = (Path(__file__).parent.parent / "docs" / "overload.md").read_text(encoding="utf-8")
    for line in RECIPE.splitlines():
        assert line.strip() in page
