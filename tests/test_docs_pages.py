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
