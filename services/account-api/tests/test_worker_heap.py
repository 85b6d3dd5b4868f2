"""A uvicorn worker's app (`app_factory`, what `account-api serve` runs) starts with its start-up
heap frozen and the collector's thresholds raised (`brokerlink_shared.heap`); checked in a process
of its own, as the worker is."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from brokerlink_shared.crypto import generate_key
from brokerlink_shared.heap import THRESHOLDS


def test_a_worker_freezes_what_start_up_loaded_and_collects_less_often() -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "ACCOUNT_API_JWT_SECRET": secrets.token_urlsafe(40),
        "BROKERLINK_ENCRYPTION_KEYS": generate_key(),
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc\n"
            "from account_api.main import app_factory\n"
            "before = gc.get_freeze_count()\n"
            "app = app_factory()\n"
            "print(before, gc.get_freeze_count(), *gc.get_threshold())",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    before, after, *thresholds = (int(v) for v in out)
    assert before == 0
    assert after > 100_000  # the modules, the app and its routes
    assert tuple(thresholds) == THRESHOLDS
