"""
Every YAML config shown in the docs and the README loads: a reader who
copies one gets a working config, not a ConfigError.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from resilient_client import Config

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```yaml\n(.*?)```", re.S)
TOP_KEYS = ("defaults:", "endpoints:", "secrets:")


def _config_blocks() -> list[Any]:
    blocks = []
    for page in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            block = m.group(1)
            # Only whole configs: fragments of one section are shown indented.
            if any(line.startswith(TOP_KEYS) for line in block.splitlines()):
                line = text.count("\n", 0, m.start()) + 1
                blocks.append(pytest.param(block, id=f"{page.name}:{line}"))
    return blocks


BLOCKS = _config_blocks()


def test_there_are_config_examples_to_check() -> None:
    """The docs do show configs (this guards the scan itself)."""
    assert len(BLOCKS) >= 5


#: The environment variables that the documented configs require (they show ``${VAR}``).
DOC_ENVIRONMENT = {"INVENTORY_URL": "https://inventory.internal/", "REDIS_PASSWORD": "pw"}


@pytest.mark.parametrize("block", BLOCKS)
def test_documented_config_loads(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config block from the docs loads as a file, as users would use it."""
    for name, value in DOC_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    # The callable fallback the docs name, as the reader's own package would hold it.
    myapp, fallbacks = types.ModuleType("myapp"), types.ModuleType("myapp.fallbacks")
    fallbacks.cached_profile = lambda request, failure: None  # type: ignore[attr-defined]
    myapp.fallbacks = fallbacks  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", myapp)
    monkeypatch.setitem(sys.modules, "myapp.fallbacks", fallbacks)
    f = tmp_path / "resilience.yaml"
    f.write_text(block, encoding="utf-8")
    assert isinstance(Config.load(f), Config)
    assert isinstance(yaml.safe_load(block), dict)
