"""The run report (JSON for `--report`) and the progress display (a bar on a terminal, plain
lines otherwise)."""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

LIST_CAP = 50_000  # entries per list in the JSON report; the counts are always complete
# What the stdlib's encoder wrote with `default=str`: dates, decimals and sets as their text.
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


@dataclass
class TableStats:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(
        default_factory=Counter
    )  # legacy integration tables: linked/pending/...

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"read": self.read}
        if self.outcomes:
            out["outcomes"] = dict(self.outcomes)
            out["migrated"] = self.outcomes.get("linked", 0)
            out["pending"] = self.outcomes.get("pending", 0)
            out["conflict"] = self.outcomes.get("conflict", 0)
            out["copied"] = {"inserted": self.inserted, "updated": self.updated}
            out["skipped"] = sum(self.skipped.values())
            out["skipped_by_reason"] = dict(self.skipped)
            return out
        return {
            "read": self.read,
            "migrated": self.inserted + self.updated + self.unchanged,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
        }


@dataclass
class Report:
    mode: str
    source: str
    target: str
    run_id: int | None = None
    resumed: bool = False
    tables: dict[str, TableStats] = field(
        default_factory=lambda: defaultdict(TableStats)
    )
    # Entries as the JSON they are written as: 50,000 pending links held as dicts were ~40 MB
    # of the run's peak memory, as JSON ~18 MB.
    skipped_rows: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    pending_links: list[str] = field(default_factory=list)
    integrations: Counter[str] = field(default_factory=Counter)
    events: int = 0
    checksums: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def skip(self, table: str, legacy_id: int | str, reason: str) -> None:
        key = reason if len(reason) < 80 else reason[:77] + "..."
        self.tables[table].skipped[_reason_class(key)] += 1
        if len(self.skipped_rows) < LIST_CAP:
            self.skipped_rows.append(
                _entry({"table": table, "legacy_id": legacy_id, "reason": reason})
            )

    def conflict(self, item: dict[str, Any]) -> None:
        if len(self.conflicts) < LIST_CAP:
            self.conflicts.append(_entry(item))

    def pending(self, item: dict[str, Any]) -> None:
        if len(self.pending_links) < LIST_CAP:
            self.pending_links.append(_entry(item))

    @property
    def changed(self) -> bool:
        return (
            any(t.inserted or t.updated for t in self.tables.values())
            or self.events > 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "run_id": self.run_id,
            "resumed": self.resumed,
            "source": self.source,
            "target": self.target,
            "seconds": round(time.monotonic() - self.started, 3),
            "changed": self.changed,
            "tables": {name: stats.as_dict() for name, stats in self.tables.items()},
            "integrations": dict(self.integrations),
            "events": self.events,
            "conflicts": [orjson.Fragment(e) for e in self.conflicts],
            "pending_links": [orjson.Fragment(e) for e in self.pending_links],
            "skipped_rows": [orjson.Fragment(e) for e in self.skipped_rows],
            "checksums": self.checksums,
            "verification": self.verification,
            "notes": self.notes,
        }


def _entry(item: dict[str, Any]) -> str:
    """An entry of the report's lists as JSON, kept as text: the bytes orjson returns keep
    its whole write buffer (~4 KB each; 50,000 of them were 200 MB)."""
    return orjson.dumps(item, default=str, option=JSON_OPTIONS).decode()


def _reason_class(reason: str) -> str:
    """Group reasons that differ only by ids ("target account #12 ...") in the counts."""
    words = [
        "#" if w.startswith("#") or w.lstrip("'\"").rstrip("'\")").isdigit() else w
        for w in reason.split()
    ]
    return " ".join(words)


class Progress:
    """`step(label, done, total)`: a redrawn bar on a terminal, a plain line every ~10 % otherwise."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._quiet = quiet
        self._last: dict[str, int] = {}

    def step(self, label: str, done: int, total: int) -> None:
        if self._quiet:
            return
        pct = 100 if total <= 0 else min(100, int(done * 100 / total))
        if self._tty:
            width = 30
            filled = int(width * pct / 100)
            self._stream.write(
                f"\r{label:<24} [{'#' * filled}{'.' * (width - filled)}] {pct:3d}% {done}/{total}"
            )
            if done >= total:
                self._stream.write("\n")
            self._stream.flush()
            return
        bucket = pct // 10
        if self._last.get(label) == bucket and done < total:
            return
        self._last[label] = bucket
        self._stream.write(f"{label}: {done}/{total} ({pct}%)\n")
        self._stream.flush()

    def line(self, text: str) -> None:
        if not self._quiet:
            self._stream.write(text + "\n")
            self._stream.flush()
