"""`make run`'s supervisor end to end: everything comes up healthy, connectors answer health on
the bus, SIGINT leaves no process behind, a restart keeps the demo working (even when the
simulated gateway has to move to another port), two runs live side by side, and start-up
failures are explained in a few lines instead of a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psutil
import pytest
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.subjects import Topology

ROOT = Path(__file__).resolve().parents[2]
DEMO = {"email": "demo@example.com", "password": "demo-password-2026"}


def _start(data_dir: Path, **extra: str) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "BROKERLINK_NAMESPACE")
        and not k.endswith("_PORT")
    }
    # 0 = any free port: tests never take the well-known ones a developer's `make run` prefers
    env.update(
        {
            "BROKERLINK_DATA_DIR": str(data_dir),
            "BROKERLINK_ROOT": str(ROOT),
            "API_PORT": "0",
            "NATS_PORT": "0",
            **extra,
        }
    )
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "brokerlink-run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )


def _ports(data_dir: Path) -> dict[str, int]:
    return dict(json.loads((data_dir / "ports.json").read_text()))


def _wait_up(proc: subprocess.Popen[str], timeout_s: float = 300) -> list[str]:
    """Read the supervisor's output until its summary; returns the lines read."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "brokerlink is up" in line:
            # the summary is one block: read it to its last line
            for rest in proc.stdout:
                lines.append(rest.rstrip())
                if "stop" in rest and "Ctrl-C" in rest:
                    return lines
        assert time.monotonic() < deadline, "\n".join(lines)
    raise AssertionError("supervisor exited during start-up:\n" + "\n".join(lines))


def _login(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/api/auth/login", json=DEMO, timeout=10)
    token.raise_for_status()
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def _stop(proc: subprocess.Popen[str]) -> None:
    descendants = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 0
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive, f"left behind: {[p.pid for p in alive]}"


async def _connector_health(nats_url: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        answered = []
        for service in ("ib-connector", "schwab-connector"):
            reply = await nc.request(
                Topology("brokerlink").health_subject(service), b"", timeout=10
            )
            answered.append(HealthReply.model_validate_json(reply.data).service)
        return answered
    finally:
        await nc.close()


def _refresh_ib_accounts(base: str) -> list[str]:
    headers = _login(base)
    accounts = httpx.get(f"{base}/api/accounts", headers=headers, timeout=10).json()
    assert len(accounts) == 4
    statuses = []
    for account in accounts:
        if not account["name"].startswith("IB"):
            continue
        refresh = httpx.post(
            f"{base}/api/accounts/{account['id']}/integration/refresh",
            params={"wait": 30},
            headers=headers,
            timeout=40,
        )
        statuses.append(refresh.json().get("status", refresh.text))
    return statuses


@pytest.mark.slow
def test_two_runs_side_by_side_then_a_restart_with_a_working_demo(
    tmp_path: Path,
) -> None:
    first, second = _start(tmp_path / "a"), _start(tmp_path / "b")
    try:
        output = _wait_up(first)
        _wait_up(second)
        ports = _ports(tmp_path / "a")
        assert not set(ports.values()) & set(_ports(tmp_path / "b").values())
        base = f"http://127.0.0.1:{ports['api']}"
        assert f"open          {base}" in "\n".join(output)
        assert any("demo login    demo@example.com" in line for line in output)
        # quiet: no JSON log line reached the terminal
        assert not [line for line in output if '"level"' in line], output
        assert asyncio.run(_connector_health(f"nats://127.0.0.1:{ports['nats']}")) == [
            "ib-connector",
            "schwab-connector",
        ]
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200
        for name in ("ib-connector-health", "schwab-connector-health"):
            probe = httpx.get(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5)
            assert probe.status_code == 200, probe.text
        for data in ("a", "b"):
            other = f"http://127.0.0.1:{_ports(tmp_path / data)['api']}"
            assert _refresh_ib_accounts(other) == ["succeeded", "succeeded"]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                _stop(proc)

    # Restart on the same data with the gateway's last port taken: the simulated gateway moves,
    # the demo accounts follow it, nothing is created twice.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["ib-gateway-sim"]))
        squatter.listen()
        proc = _start(tmp_path / "a")
        try:
            _wait_up(proc)
            again = _ports(tmp_path / "a")
            assert again["ib-gateway-sim"] != ports["ib-gateway-sim"]
            base = f"http://127.0.0.1:{again['api']}"
            assert _refresh_ib_accounts(base) == ["succeeded", "succeeded"]
        finally:
            if proc.poll() is None:
                _stop(proc)


def test_taken_port_is_explained(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _start(tmp_path, API_PORT=str(port))
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"error: port {port} (API_PORT) is already in use by another program" in out
    assert "what to do: stop what uses it, or choose another port: API_PORT=" in out
    assert "Traceback" not in out


def test_a_child_that_dies_at_start_up_is_shown_with_its_last_lines(
    tmp_path: Path,
) -> None:
    # an invalid setting makes ib-connector exit at start-up
    proc = _start(
        tmp_path, IB_CONNECTOR_REPLICA_ID="not a valid id", BROKERLINK_DEMO="0"
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "error: ib-connector exited with code" in out
    assert "replica_id" in out  # from the child's last lines
    assert f"(full log: {tmp_path.resolve() / 'logs' / 'ib-connector.log'})" in out
    assert "what to do:" in out
    assert "all processes stopped" in out
