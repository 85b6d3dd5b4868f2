"""The garbage collector, set for our processes (figures: README, "Performance").

CPython collects its youngest generation every 700 new container objects, and walks the whole
heap each time the long-lived part grew by a quarter. Our processes pay for both:

- Objects that live across an await (a request in flight, a refresh waiting on the gateway) or
  across a batch survive a few young collections, are promoted, and soon make the old
  generation grow by that quarter: then every object is walked. `collect_less_often` gives them
  time to die young. With it, during the refresh pipeline's paced phase, account-api's workers
  spend 1-2 % of their CPU in the collector and ib-connector 2 % with no full collection
  (defaults: 10-15 %, and full collections of ~0.5 s in a connector holding 1,000 sessions,
  which every refresh in flight waited out); the migrator's two processes, ~5.5 CPU-seconds at
  full size instead of ~9.
- A server's heap is mostly what start-up loaded (modules, the app and its routes), which lives
  as long as the process: `freeze_startup_heap` puts it out of the collector's reach, so a full
  collection walks only what came after (in account-api's workers: ~4 ms instead of ~130 ms,
  the tail of the read API's latency).

For a process's entry point only, never for a process that runs tests: thresholds hold for the
whole process, and a frozen object is never collected."""

from __future__ import annotations

import gc

THRESHOLDS = (5_000, 20, 20)


def collect_less_often() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_startup_heap() -> None:
    """Once start-up is done: collect what start-up left behind, then freeze the rest."""
    gc.collect()
    gc.freeze()


def prepare_server_heap() -> None:
    """A server's entry point, once its app is built and before it serves: both of the above."""
    collect_less_often()
    freeze_startup_heap()
