"""`brokerlink-migrate` collects its young generation less often (`brokerlink_shared.heap`);
checked in a process of its own, as the command is."""

from __future__ import annotations

import subprocess
import sys

from brokerlink_shared.heap import THRESHOLDS


def test_the_command_collects_collect_less_often() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc\n"
            "from migrator import cli\n"
            "try:\n"
            "    cli.main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(*gc.get_threshold())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert tuple(int(v) for v in out[-1].split()) == THRESHOLDS
