"""
Every ```python block of the overview pages runs, and the site builds with
``mkdocs build --strict``.

Blocks run in order, one namespace per page (like a reader following it),
against a fake peer that answers every URL with 200 and a small JSON body
(`responses`), so that no block needs a network. A block preceded by
``<!-- peer: none -->`` runs without that fake peer (it brings its own), and
one preceded by ``<!-- no-run -->`` is skipped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import responses

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The pages whose blocks this file runs (testing.md and the configuration
#: pages are run by their own tests).
PAGES = ["index.md", "why.md", "quickstart.md", "migrating.md", "faq.md", "performance.md",
         "timeouts.md", "observability.md", "fallbacks.md"]
BLOCK = re.compile(r"(?:<!--\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)^```",
                   re.S | re.M)


def blocks(page: str) -> list[tuple[str, str, int]]:
    """(directive, code, line) of every python block of *page*."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [(m.group("directive") or "", m.group("code"), text.count("\n", 0, m.start()) + 1)
            for m in BLOCK.finditer(text)]


@contextlib.contextmanager
def fake_peer():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            rsps.add(method, re.compile(r"https?://.*"), json={"id": 42, "name": "widget", "items": []})
        yield rsps


class TestDocsBlocks:
    def test_pages_have_python_blocks(self):
        """The block finder finds blocks on the pages that have them (so the runner below is not vacuous)."""
        for page in ("index.md", "quickstart.md", "migrating.md", "faq.md"):
            assert blocks(page), page

    @pytest.mark.parametrize("page", PAGES)
    def test_every_block_runs(self, page, monkeypatch):
        """Each python block of the page runs without an error, in order, in one namespace."""
        monkeypatch.chdir(ROOT)
        # Blocks configure logging as a service would (a JSON handler at
        # INFO): put the library's logger back afterwards, so later tests do
        # not log every event through a page's handler.
        logger = logging.getLogger("resilient_client")
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)
        namespace: dict[str, object] = {"__name__": f"docs_{page[:-3]}"}
        for directive, code, line in blocks(page):
            if directive == "no-run":
                continue
            peer = contextlib.nullcontext() if directive == "peer: none" else fake_peer()
            with peer, contextlib.redirect_stdout(io.StringIO()):
                try:
                    exec(compile(code, f"{page}:{line}", "exec"), namespace)
                except Exception as exc:
                    pytest.fail(f"{page}, block at line {line}: {type(exc).__name__}: {exc}")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="needs the docs extra (mkdocs)")
class TestSiteBuilds:
    def test_mkdocs_build_strict(self, tmp_path):
        """`mkdocs build --strict` passes: no broken link, no missing page, no unresolved reference."""
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]


class TestDocsAgreeWithTheCode:
    """Statements made on several pages, checked against the code that decides them."""

    EVENT_ROW = re.compile(r"^\| `(\w+)` \(`\w+`\) \|.*\| (DEBUG|INFO|WARNING|ERROR) \|$", re.M)

    def test_every_log_level_in_the_event_table_is_the_one_logged(self):
        """The observability page's event table gives each event the level `log_event` uses."""
        import logging

        from resilient_client import _events

        rows = self.EVENT_ROW.findall((DOCS / "observability.md").read_text(encoding="utf-8"))
        assert len(rows) == len(_events._LEVELS)
        for name, level in rows:
            assert logging.getLevelName(_events._LEVELS[getattr(_events, name)]) == level, name

    def test_every_page_naming_the_fallback_log_level_names_the_real_one(self):
        """A page that says at which level a served fallback is logged says the level it is logged at."""
        import logging

        from resilient_client import _events

        real = logging.getLevelName(_events._LEVELS[_events.FallbackServed])
        stated = re.compile(r"`fallback_served` event,? \(?logged at (\w+)")
        found = {page.name: m.group(1) for page in DOCS.glob("*.md")
                 for m in stated.finditer(page.read_text(encoding="utf-8"))}
        assert found, "no page states the fallback_served log level any more"
        assert found == dict.fromkeys(found, real)

    def test_stale_is_described_as_get_and_head(self):
        """Pages describing `stale` name GET and HEAD, the methods whose answers the session stores."""
        # Where the session decides what the stale cache stores, wherever the front keeps it.
        stores = [path.name for path in (ROOT / "resilient_client").rglob("*.py")
                  if 'request.method in ("GET", "HEAD")' in path.read_text(encoding="utf-8")]
        assert stores, "the stale cache no longer stores GET and HEAD answers: update the docs"
        described = re.compile(r"last successful (?:\(2xx\) )?(GET[\w /]*?) response")
        found = [(page.name, m.group(1)) for page in DOCS.glob("*.md")
                 for m in described.finditer(page.read_text(encoding="utf-8"))]
        assert found and all(methods == "GET or HEAD" for _, methods in found), found

    def test_the_health_path_in_the_docs_is_health_app_s(self):
        """Every health-check path in the docs is the one `health_app` serves by default."""
        import inspect

        from resilient_client import health_app

        default = inspect.signature(health_app).parameters["path"].default
        paths = {m.group(1) for page in DOCS.glob("*.md")
                 for m in re.finditer(r"(?:option httpchk GET|uri) (/\S*)",
                                      page.read_text(encoding="utf-8"))}
        assert paths == {default}
