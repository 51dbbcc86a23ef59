from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


@pytest.fixture
def write(tmp_path: Path):
    """Write a dedented text file under tmp_path and return its path."""
    def _write(name: str, content: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
        return path
    return _write


MINIMAL = """
version: 1
reference_sets:
  hero: [https://example.com/hero.png]
rows:
  - prompt: "a hero walks"
    references: hero
"""
