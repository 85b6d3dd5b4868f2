"""The pre-commit configuration: valid, local hooks only (no network at commit time), running
the locked tools through `uv run`, and type-checking what `make lint` type-checks."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from pre_commit.clientlib import load_config

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
UV_RUN = ["uv", "run", "--frozen", "--offline"]


def hooks() -> dict[str, dict[str, object]]:
    config = load_config(str(ROOT / ".pre-commit-config.yaml"))  # validates the schema
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def test_every_hook_runs_a_locked_tool_offline() -> None:
    found = hooks()
    assert set(found) == {"ruff-check", "ruff-format", "mypy", "lint-imports"}
    for hook in found.values():
        assert hook["language"] == "unsupported"  # i.e. `system`
        assert shlex.split(str(hook["entry"]))[:4] == UV_RUN


def test_mypy_checks_what_make_lint_checks() -> None:
    recipe = (ROOT / "Makefile").read_text(encoding="utf-8")
    [lint_targets] = re.findall(r"run --frozen mypy ([^&\n]+?)\s*&&", recipe)
    entry = shlex.split(str(hooks()["mypy"]["entry"]))
    assert entry[len(UV_RUN) :] == ["mypy", *lint_targets.split()]
