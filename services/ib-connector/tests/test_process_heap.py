"""`ib-connector` starts serving with its start-up heap frozen and the collector's thresholds
raised (`brokerlink_shared.heap`): checked in a process of its own, up to where it would serve."""

from __future__ import annotations

import os
import subprocess
import sys

from brokerlink_shared.heap import THRESHOLDS


def test_the_service_freezes_start_up_and_collects_less_often() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, gc\n"
            "asyncio.run = lambda coro: coro.close()  # up to serving, not serving\n"
            "from ib_connector.main import run\n"
            "run()\n"
            "print(gc.get_freeze_count(), *gc.get_threshold())",
        ],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    frozen, *thresholds = (int(v) for v in out)
    assert frozen > 10_000
    assert tuple(thresholds) == THRESHOLDS
