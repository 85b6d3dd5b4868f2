"""`make deploy-smoke`: the compose file and the production Kubernetes overlay, started as local
processes exactly as they are written (see smoke.py), then used through the REST API."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "brokerlink_deploy_smoke", Path(__file__).with_name("smoke.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


smoke = _load()


@pytest.mark.slow
def test_compose_deployment_runs(tmp_path: Path) -> None:
    balances = smoke.run_compose(tmp_path)
    assert set(balances) == {"IB smoke", "Schwab smoke"}


@pytest.mark.slow
def test_kubernetes_production_overlay_runs(tmp_path: Path) -> None:
    balances = smoke.run_kubernetes(tmp_path)
    assert set(balances) == {"IB smoke", "Schwab smoke"}
