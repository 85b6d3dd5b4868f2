"""`make deploy-smoke`: the compose file and the production Kubernetes overlay, started as local
processes exactly as they are written (see smoke.py), then used through the REST API."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
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
    assert {"IB smoke", "Schwab smoke"} <= set(balances)


@pytest.mark.slow
def test_kubernetes_production_overlay_runs(tmp_path: Path) -> None:
    try:
        balances = smoke.run_kubernetes(tmp_path)
    except smoke.Unsupported as reason:
        pytest.skip(str(reason))
    assert {"IB smoke", "Schwab smoke"} <= set(balances)


# --- the smoke run's detectors, each shown catching the defect it is there for ---------------------


def test_an_empty_schwab_url_in_the_config_map_is_a_defect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = smoke.render_overlay()
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    config["data"]["SCHWAB_CONNECTOR_API_BASE_URL"] = ""
    monkeypatch.setattr(smoke, "render_overlay", lambda: objects)
    with pytest.raises(smoke.ManifestDefect) as defect:
        smoke.run_kubernetes(tmp_path)
    assert str(defect.value).startswith(
        "deploy/overlays/prod: ConfigMap/brokerlink-config: data.SCHWAB_CONNECTOR_API_BASE_URL:"
    )


def _serve_and_probe(bind_host: str) -> bool:
    """Start a server binding `bind_host` inside a "pod"; can the kubelet reach the pod's address?"""
    net = smoke.Addresses()
    ip = net.new()
    code = (
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({bind_host!r}, 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(30)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(smoke.SHIM),
        "BROKERLINK_SMOKE_NET": json.dumps({"hosts": {}, "pod_ip": ip}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        try:
            socket.create_connection((ip, port), timeout=2).close()
        except OSError:
            return False
        return True
    finally:
        proc.kill()
        proc.wait()


def test_a_server_on_loopback_is_unreachable_for_the_kubelet() -> None:
    assert _serve_and_probe("0.0.0.0") is True
    assert _serve_and_probe("127.0.0.1") is False


def test_a_nats_permission_violation_is_found(tmp_path: Path) -> None:
    import asyncio

    import nats

    ip = smoke.Addresses().new()
    conf = (smoke.REPO / "deploy/compose/nats.conf").read_text()
    store = re.search(r"store_dir:\s*(\S+)", conf)
    assert store
    local = tmp_path / "nats.conf"
    local.write_text(conf.replace(store.group(0), f'store_dir: "{tmp_path / "js"}"'))
    passwords = dict.fromkeys(re.findall(r"\$([A-Z_]+_PASSWORD)", conf), "pw")
    log = tmp_path / "nats.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(smoke.VENV_BIN / "nats-server"),
                "-c",
                str(local),
                "--addr",
                ip,
                "-p",
                "0",
                "-m",
                "0",
                "--ports_file_dir",
                str(tmp_path),
            ],
            env={**os.environ, **passwords},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ports_file = None
        for _ in range(200):
            found = list(tmp_path.glob("*.ports"))
            if found:
                ports_file = found[0]
                break
            time.sleep(0.05)
        assert ports_file, log.read_text()
        url = json.loads(ports_file.read_text())["nats"][0]

        async def offend() -> None:
            nc = await nats.connect(url, user="ib-connector", password="pw")
            await nc.publish(
                "brokerlink.balance.updated.schwab", b"{}"
            )  # not its subject
            await nc.flush()
            await nc.close()

        asyncio.run(offend())
        deadline = time.monotonic() + 10
        while not smoke.nats_violations([log]) and time.monotonic() < deadline:
            time.sleep(0.05)
        violations = smoke.nats_violations([log])
        assert any("brokerlink.balance.updated.schwab" in v for v in violations), (
            violations
        )
    finally:
        server.terminate()
        server.wait()


def test_a_dev_only_import_fails_in_an_image() -> None:
    blocked = smoke._blocked_modules(smoke._runtime_closure("brokerlink-account-api"))
    assert "pgserver" in blocked and "pytest" in blocked
    assert "fastapi" not in blocked and "account_api" not in blocked
