"""Every long-running process starts with the collector set by `brokerlink_shared.heap`: each
service's entry point, checked in a process of its own up to where it would serve (thresholds
hold for the whole process, and a frozen object is never collected)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from brokerlink_shared.crypto import generate_key
from brokerlink_shared.heap import THRESHOLDS

# up to serving, not serving: the connectors' `run` ends in asyncio.run(app.run())
CONNECTOR = (
    "import asyncio\n"
    "asyncio.run = lambda coro: coro.close()\n"
    "from {module}.main import run\n"
    "run()\n"
)
ENTRY_POINTS = {
    "account-api worker": "from account_api.main import app_factory\napp = app_factory()\n",
    "ib-connector": CONNECTOR.format(module="ib_connector"),
    "schwab-connector": CONNECTOR.format(module="schwab_connector"),
    "ibflex-connector": CONNECTOR.format(module="ibflex_connector"),
}


def _after(code: str) -> tuple[int, tuple[int, ...]]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ACCOUNT_API_JWT_SECRET": secrets.token_urlsafe(40),
        "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc\nassert gc.get_freeze_count() == 0\n"
            + code
            + "print(gc.get_freeze_count(), *gc.get_threshold())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    frozen, *thresholds = (int(v) for v in out[-1].split())
    return frozen, tuple(thresholds)


@pytest.mark.parametrize("service", sorted(ENTRY_POINTS))
def test_a_service_freezes_its_start_up_heap_and_collects_less_often(
    service: str,
) -> None:
    frozen, thresholds = _after(ENTRY_POINTS[service])
    assert frozen > 10_000  # the modules and the app
    assert thresholds == THRESHOLDS


def test_the_migrator_collects_less_often() -> None:
    _frozen, thresholds = _after(
        "from migrator import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    assert thresholds == THRESHOLDS
