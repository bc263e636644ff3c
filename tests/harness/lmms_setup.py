"""Where this checkout declares its lmms-eval entry point (shared by the harness tests and their fixtures)."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
ENTRY_GROUP = "lmms_eval.models"


def declared_entry_point() -> str:
    """``laco = "module:function"`` as this checkout's pyproject.toml declares it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["entry-points"][ENTRY_GROUP]["laco"]
