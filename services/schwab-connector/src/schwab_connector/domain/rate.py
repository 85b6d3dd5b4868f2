"""Rate budget arithmetic: a per-minute limit split into time slices that replicas share.

The budget is counted per slice of `60 / n` seconds (a NATS KV counter per app key and slice,
shared by all replicas). Schwab (and the simulator) may count over any sliding 60 s window; such a
window, seen from the client with a little network delay added, overlaps at most `n + 2` slices, so
each slice may spend `limit // (n + 2)`. With the defaults (120/min, 12 slices) that is 8 requests per
5 s, 96/min sustained: never above the limit, whatever the alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RatePlan:
    """How a per-minute limit is spent slice by slice."""

    requests_per_minute: int
    slices_per_minute: int = 12

    @property
    def slice_s(self) -> float:
        return 60.0 / self.slices_per_minute

    @property
    def per_slice(self) -> int:
        return max(1, self.requests_per_minute // (self.slices_per_minute + 2))

    def slice_index(self, epoch_s: float) -> int:
        return math.floor(epoch_s / self.slice_s)

    def wait_for_next_slice(self, epoch_s: float) -> float:
        """Seconds from `epoch_s` until the next slice begins."""
        return (self.slice_index(epoch_s) + 1) * self.slice_s - epoch_s

    def worst_case_per_window(self, window_s: float = 60.0) -> int:
        """Most requests any `window_s` interval can see (for tests and docs)."""
        return (math.ceil(window_s / self.slice_s) + 1) * self.per_slice
