"""The collector's settings per process shape, each checked in a process of its own (they hold
for the whole process, and a frozen object is never collected)."""

from __future__ import annotations

import subprocess
import sys

from brokerlink_shared.heap import THRESHOLDS


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_freezing_the_startup_heap_keeps_later_objects_collectable() -> None:
    out = _run(
        "import gc\n"
        "from brokerlink_shared.heap import freeze_startup_heap\n"
        "assert gc.get_freeze_count() == 0\n"
        "freeze_startup_heap()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"  # a cycle made after start-up
        "del a, b\n"
        "print(frozen, gc.collect() >= 2, gc.get_freeze_count() == frozen)"
    )
    frozen, cycle_collected, unchanged = out.split()
    assert int(frozen) > 1000
    assert cycle_collected == "True"
    assert unchanged == "True"


def test_collecting_less_often_raises_the_thresholds() -> None:
    out = _run(
        "import gc\n"
        "from brokerlink_shared.heap import collect_less_often\n"
        "before = gc.get_threshold()\n"
        "collect_less_often()\n"
        "print(*before, *gc.get_threshold())"
    )
    values = [int(v) for v in out.split()]
    assert tuple(values[:3]) == (700, 10, 10)
    assert tuple(values[3:]) == THRESHOLDS
    assert THRESHOLDS[0] > values[0]
