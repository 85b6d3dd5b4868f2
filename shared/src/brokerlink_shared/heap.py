"""The garbage collector, set for the shape of the process (figures in the README).

CPython collects its youngest generation every 700 new container objects and walks the whole
heap each time the long-lived part grew by a quarter. Two shapes of ours pay for that:

- A server worker's heap is mostly what start-up loaded (modules, the app and its routes), which
  lives as long as the process: `freeze_startup_heap` puts it out of the collector's reach, so a
  full collection walks only what came after. In account-api's workers a full collection took
  ~130 ms (the tail of the read API's latency), and the collector 10-15 % of a worker's CPU on
  the refresh pipeline.
- A bulk job churns through millions of short-lived rows: `for_bulk_work` collects the youngest
  generation less often and promotes less into the old one, which walks the heap far less
  often. At full size, the migrator's two processes spent ~9 CPU-seconds in the collector with
  the defaults and ~5.5 with these.

Both are for a process's entry point only, never for a process that runs tests: a frozen object
is never collected, and thresholds hold for the whole process."""

from __future__ import annotations

import gc

BULK_THRESHOLDS = (5_000, 20, 20)


def freeze_startup_heap() -> None:
    """Once start-up is done: collect what start-up left behind, then freeze the rest."""
    gc.collect()
    gc.freeze()


def for_bulk_work() -> None:
    gc.set_threshold(*BULK_THRESHOLDS)
