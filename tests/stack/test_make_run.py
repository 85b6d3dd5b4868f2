"""`make run`'s supervisor end to end: everything comes up healthy, connectors answer health on
the bus, SIGINT leaves no process behind, and a second start reuses the data."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psutil
import pytest
from brokerlink_devkit.devstack.embedded import free_port
from brokerlink_shared.contracts.events import HealthReply
from brokerlink_shared.subjects import Topology

ROOT = Path(__file__).resolve().parents[2]


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "BROKERLINK_NAMESPACE")
    }
    env.update(
        {
            "BROKERLINK_DATA_DIR": str(data_dir),
            "BROKERLINK_ROOT": str(ROOT),
            "API_PORT": str(port),
        }
    )
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "brokerlink-run")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        start_new_session=True,
    )


def _wait_up(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "supervisor exited during start-up"
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/auth/login", timeout=1)
            if r.status_code == 405:  # up; now wait for the demo user (seeded last)
                login = httpx.post(
                    f"http://127.0.0.1:{port}/api/auth/login",
                    json={
                        "email": "demo@example.com",
                        "password": "demo-password-2026",
                    },
                    timeout=5,
                )
                if login.status_code == 200:
                    # The demo accounts are seeded right after the user: wait for all four.
                    headers = {
                        "Authorization": f"Bearer {login.json()['access_token']}"
                    }
                    accounts = httpx.get(
                        f"http://127.0.0.1:{port}/api/accounts",
                        headers=headers,
                        timeout=5,
                    )
                    healthy = (
                        httpx.get(
                            f"http://127.0.0.1:{port}/healthz", timeout=5
                        ).status_code
                        == 200
                    )
                    if healthy and len(accounts.json()) == 4:
                        return dict(login.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError("stack did not come up")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert len(descendants) >= 5
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


@pytest.mark.slow
def test_make_run_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path / "data", port)
    try:
        tokens = _wait_up(proc, port)
        nats_url = (
            f"nats://127.0.0.1:{(tmp_path / 'data' / 'nats.port').read_text().strip()}"
        )
        assert asyncio.run(_connector_health(nats_url)) == [
            "ib-connector",
            "schwab-connector",
        ]
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        accounts = httpx.get(
            f"http://127.0.0.1:{port}/api/accounts", headers=headers, timeout=5
        ).json()
        assert len(accounts) == 4
    finally:
        if proc.poll() is None:
            _stop(proc)
    # Second run on the same data: the demo user and its accounts are still there, not re-created.
    proc = _start(tmp_path / "data", port)
    try:
        tokens = _wait_up(proc, port)
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert (
            len(
                httpx.get(
                    f"http://127.0.0.1:{port}/api/accounts", headers=headers, timeout=5
                ).json()
            )
            == 4
        )
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_taken_port_is_refused(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {
            **os.environ,
            "BROKERLINK_DATA_DIR": str(tmp_path),
            "API_PORT": str(port),
        }
        out = subprocess.run(
            [str(Path(sys.executable).parent / "brokerlink-run")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 1
    assert "already in use" in out.stdout
